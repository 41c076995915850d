//! Kafka settings shared by `vtpga run --source kafka`, `vtpga produce`, `vtpga loadtest`
//! and `vtpga topics`: flags with `VTPGA_KAFKA_*` environment fallbacks, and topic
//! administration.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;

#[derive(Args, Clone, Debug)]
pub struct KafkaArgs {
    /// Bootstrap brokers, `host:port[,host:port...]`.
    #[arg(long, env = "VTPGA_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// The transactions topic (SPEC §3).
    #[arg(long, env = "VTPGA_KAFKA_TOPIC", default_value = "transacoes")]
    pub topic: String,
    /// Where decisions are produced.
    #[arg(
        long,
        env = "VTPGA_KAFKA_DECISIONS_TOPIC",
        default_value = "transacoes-decisoes"
    )]
    pub decisions_topic: String,
    /// Where invalid messages are produced (raw payload; error, partition, offset headers).
    #[arg(long, env = "VTPGA_KAFKA_DLQ_TOPIC", default_value = "transacoes-dlq")]
    pub dlq_topic: String,
    /// Consumer group id (used for naming only: partitions are assigned, never balanced).
    #[arg(long, env = "VTPGA_KAFKA_GROUP", default_value = "vtpga")]
    pub group: String,
    /// Extra librdkafka settings, `key=value` (repeatable, or comma-separated in the env).
    #[arg(
        short = 'X',
        long = "kafka-config",
        env = "VTPGA_KAFKA_CONFIG",
        value_delimiter = ','
    )]
    pub extra: Vec<String>,
}

impl KafkaArgs {
    /// The librdkafka settings of a consumer: [`KafkaArgs::settings`] with the group id.
    pub fn consumer_settings(&self) -> Result<Vec<(String, String)>> {
        let mut out = vec![("group.id".to_owned(), self.group.clone())];
        out.extend(self.settings()?);
        Ok(out)
    }

    /// The librdkafka settings: brokers, then every `-X` pair (which win).
    pub fn settings(&self) -> Result<Vec<(String, String)>> {
        let mut out = vec![("bootstrap.servers".to_owned(), self.brokers.clone())];
        for kv in &self.extra {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| anyhow!("-X {kv:?}: expected key=value"))?;
            out.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        Ok(out)
    }

    pub fn client_config(&self) -> Result<ClientConfig> {
        Ok(vtpga_ingest::kafka::client_config(&self.settings()?))
    }
}

/// Creates each topic that does not exist yet with `partitions` partitions (replication 1).
pub fn create_topics(args: &KafkaArgs, topics: &[&str], partitions: i32) -> Result<()> {
    if partitions < 1 {
        bail!("--partitions must be at least 1");
    }
    let admin: AdminClient<DefaultClientContext> = args
        .client_config()?
        .create()
        .context("creating the Kafka admin client")?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = futures_executor::block_on(admin.create_topics(&new, &options))
        .with_context(|| format!("creating topics on {}", args.brokers))?;
    for result in results {
        match result {
            Ok(name) => log::info!("created topic {name} with {partitions} partition(s)"),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                log::info!("topic {name} already exists")
            }
            Err((name, code)) => bail!("creating topic {name}: {code}"),
        }
    }
    Ok(())
}

/// The partitions of `topic`, waiting up to `timeout` for the broker to answer.
pub fn partition_count(args: &KafkaArgs, topic: &str, timeout: Duration) -> Result<i32> {
    let n = vtpga_ingest::kafka::partition_count(&args.settings()?, topic, timeout)
        .with_context(|| format!("reading the metadata of topic {topic} on {}", args.brokers))?;
    if n < 1 {
        bail!("topic {topic} has no partitions (does it exist?)");
    }
    Ok(n)
}

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
    /// The control topic (SPEC §11): live changes of users, regions and rule sets. Empty:
    /// read none.
    #[arg(
        long,
        env = "VTPGA_KAFKA_CONTROL_TOPIC",
        default_value = "transacoes-controle"
    )]
    pub control_topic: String,
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

/// A topic to create and its topic-level settings.
pub struct TopicSpec<'a> {
    pub name: &'a str,
    pub config: Vec<(&'static str, String)>,
}

impl<'a> TopicSpec<'a> {
    /// A topic with the broker's default settings.
    pub fn plain(name: &'a str) -> Self {
        TopicSpec {
            name,
            config: Vec::new(),
        }
    }

    /// An input topic (transactions, control): the broker itself refuses records stamped
    /// more than `max_clock_skew_ms` ahead of its clock (SPEC §4 clock guard; Kafka 3.6+).
    pub fn input(name: &'a str, max_clock_skew_ms: u64) -> Self {
        TopicSpec {
            name,
            config: vec![(
                "message.timestamp.after.max.ms",
                max_clock_skew_ms.to_string(),
            )],
        }
    }
}

/// Creates each topic that does not exist yet with `partitions` partitions, replication
/// factor 1 and its settings. A broker that refuses a setting (Kafka before 3.6 does not know
/// `message.timestamp.after.max.ms`) gets the topic without it, with a warning: the
/// pipeline's own clock guard still applies.
pub fn create_topics(args: &KafkaArgs, topics: &[TopicSpec<'_>], partitions: i32) -> Result<()> {
    if partitions < 1 {
        bail!("--partitions must be at least 1");
    }
    let admin: AdminClient<DefaultClientContext> = args
        .client_config()?
        .create()
        .context("creating the Kafka admin client")?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for spec in topics {
        let mut topic = NewTopic::new(spec.name, partitions, TopicReplication::Fixed(1));
        for (k, v) in &spec.config {
            topic = topic.set(k, v);
        }
        let mut result = create_one(&admin, &options, topic, &args.brokers)?;
        if !spec.config.is_empty()
            && matches!(result, Err(code) if code != RDKafkaErrorCode::TopicAlreadyExists)
        {
            log::warn!(
                "the broker refused topic {} with {:?} ({}); creating it without",
                spec.name,
                spec.config,
                result.err().map(|c| c.to_string()).unwrap_or_default()
            );
            let plain = NewTopic::new(spec.name, partitions, TopicReplication::Fixed(1));
            result = create_one(&admin, &options, plain, &args.brokers)?;
        }
        match result {
            Ok(()) => log::info!("created topic {} with {partitions} partition(s)", spec.name),
            Err(RDKafkaErrorCode::TopicAlreadyExists) => {
                log::info!("topic {} already exists", spec.name)
            }
            Err(code) => bail!("creating topic {}: {code}", spec.name),
        }
    }
    Ok(())
}

fn create_one(
    admin: &AdminClient<DefaultClientContext>,
    options: &AdminOptions,
    topic: NewTopic<'_>,
    brokers: &str,
) -> Result<std::result::Result<(), RDKafkaErrorCode>> {
    let results = futures_executor::block_on(admin.create_topics([&topic], options))
        .with_context(|| format!("creating topics on {brokers}"))?;
    Ok(results
        .into_iter()
        .next()
        .map_or(Ok(()), |r| r.map(|_| ()).map_err(|(_, code)| code)))
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

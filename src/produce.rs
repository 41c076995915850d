//! `vtpga produce`: the transaction generator of the original design, publishing SPEC §3
//! messages to Kafka keyed by payer, at a fixed rate or as fast as possible. With
//! `--capture` it publishes a capture file's payloads instead, each with its recorded
//! timestamp (to replay a recorded day through Kafka). With `--control-rate R` it also
//! publishes R generated control records (SPEC §11) per second to the control topic,
//! keyed by entity id; a capture's control-topic lines go there too.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use vtpga_dataflow::control::parse_control;
use vtpga_ingest::capture::capture_lines;
use vtpga_ingest::changes::{entity_key, ControlConfig, ControlGenerator};
use vtpga_ingest::generator::Generator;
use vtpga_ingest::live::now_us;
use vtpga_ingest::refdata::{read_regions, read_users};
use vtpga_sinks::kafka::send_with_backpressure;

use crate::generate::FaultArgs;
use vtpga::args::ControlRateArgs;
use vtpga::kafka::KafkaArgs;

#[derive(Args, Clone, Debug)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Regions CSV (id,uf,name,lat,lon).
    #[arg(long, env = "VTPGA_REGIONS", required_unless_present_any = ["capture", "postgres"])]
    pub regions: Option<PathBuf>,
    /// Users CSV (id,name,region_id,balance_cents,credit_limit_cents).
    #[arg(long, env = "VTPGA_USERS_CSV", required_unless_present_any = ["capture", "postgres"])]
    pub users: Option<PathBuf>,
    /// Read regions and users from PostgreSQL (as `vtpga seed` wrote them) instead.
    #[arg(long, env = "VTPGA_POSTGRES", conflicts_with_all = ["regions", "users"])]
    pub postgres: Option<String>,
    /// Publish this capture's payloads (with their recorded timestamps, each to its
    /// recorded partition when the topic has it) instead of generating messages.
    #[arg(long, conflicts_with_all = ["regions", "users"])]
    pub capture: Option<PathBuf>,
    /// Messages per second, or `max`.
    #[arg(long, default_value = "1000")]
    pub rate: String,
    /// Stop after this many messages.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this long (e.g. `30s`, `5m`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Seed of the generated messages. Default: a new one at every start, so a restarted
    /// producer (or a second one) never sends ids already sent; give one to repeat a run.
    #[arg(long, env = "VTPGA_PRODUCE_SEED")]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub faults: FaultArgs,
    #[command(flatten)]
    pub controls: ControlRateArgs,
    /// Producer acknowledgements: 0, 1 or all.
    #[arg(long, default_value = "all")]
    pub acks: String,
    /// Producer linger (ms): how long a batch waits to fill.
    #[arg(long, default_value_t = 1)]
    pub linger_ms: u64,
    /// Producer batch size in bytes.
    #[arg(long, default_value_t = 1_000_000)]
    pub batch_size: u64,
    /// No progress bar (logs and CI).
    #[arg(long)]
    pub quiet: bool,
}

/// What a producer run did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Produced {
    pub sent: u64,
    pub seconds: f64,
    /// Control records sent (SPEC §11), beyond the `sent` transactions.
    pub controls: u64,
}

pub fn parse_rate(rate: &str) -> Result<Option<f64>> {
    if rate.eq_ignore_ascii_case("max") {
        return Ok(None);
    }
    let r: f64 = rate
        .parse()
        .with_context(|| format!("rate must be a number or `max`, not {rate:?}"))?;
    if !(r.is_finite() && r > 0.0) {
        bail!("rate must be positive, not {rate}");
    }
    Ok(Some(r))
}

pub fn make_producer(
    kafka: &KafkaArgs,
    acks: &str,
    linger_ms: u64,
    batch_size: u64,
) -> Result<ThreadedProducer<DefaultProducerContext>> {
    producer_config(kafka, acks, linger_ms, batch_size)?
        .create()
        .context("creating the Kafka producer")
}

/// The settings of [`make_producer`]'s producer (for a producer with a context of its
/// own, e.g. `vtpga control`'s, which reports each record's partition and offset).
pub fn producer_config(
    kafka: &KafkaArgs,
    acks: &str,
    linger_ms: u64,
    batch_size: u64,
) -> Result<ClientConfig> {
    let mut config = kafka.client_config()?;
    config
        .set("acks", acks)
        .set("linger.ms", linger_ms.to_string())
        .set("batch.size", batch_size.to_string())
        // The Java client's partitioner, so keys land where other clients put them.
        .set("partitioner", "murmur2_random")
        .set("queue.buffering.max.messages", "1000000");
    if config.get("message.max.bytes").is_none() {
        config.set("message.max.bytes", "10000000");
    }
    Ok(config)
}

/// How long and how fast a producer runs.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// Messages per second; `None` for as fast as possible.
    pub rate: Option<f64>,
    pub count: u64,
    pub duration: Option<Duration>,
}

/// Generated control records to publish along with the transactions.
pub struct ControlStream<'a> {
    pub generator: &'a mut ControlGenerator,
    /// Records per second.
    pub rate: f64,
    /// The control topic.
    pub topic: &'a str,
}

/// Publishes generated messages at the pace given until its count or duration, or `stop`.
/// Each record's timestamp is its arrival time `t`.
pub fn produce_generated(
    producer: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    generator: &mut Generator,
    pace: Pace,
    stop: &AtomicBool,
    bar: &ProgressBar,
) -> Result<Produced> {
    produce_generated_with_controls(producer, topic, generator, None, pace, stop, bar)
}

/// [`produce_generated`], also publishing `controls`' records at their rate (from the
/// start, whatever the transactions' pace), each keyed by its entity id and stamped with
/// its arrival time; they stop when the transactions do.
pub fn produce_generated_with_controls(
    producer: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    generator: &mut Generator,
    mut controls: Option<ControlStream<'_>>,
    pace: Pace,
    stop: &AtomicBool,
    bar: &ProgressBar,
) -> Result<Produced> {
    let Pace {
        rate,
        count,
        duration,
    } = pace;
    let started = Instant::now();
    let mut sent = 0u64;
    let mut sent_controls = 0u64;
    while sent < count && !stop.load(Ordering::Relaxed) {
        let elapsed = started.elapsed();
        if duration.is_some_and(|d| elapsed >= d) {
            break;
        }
        if let Some(c) = controls.as_mut() {
            let due = ((elapsed.as_secs_f64() * c.rate) as u64).saturating_sub(sent_controls);
            if due > 0 {
                let t = now_us() / 1000;
                for _ in 0..due {
                    let g = c.generator.next_at(t);
                    let record = BaseRecord::to(c.topic)
                        .key(g.key.as_str())
                        .payload(&g.payload[..])
                        .timestamp(g.record_ts as i64);
                    send_with_backpressure(producer, record)
                        .context("producing a control record")?;
                }
                sent_controls += due;
            }
        }
        let due = match rate {
            Some(r) => ((elapsed.as_secs_f64() * r) as u64).saturating_sub(sent),
            None => 1024,
        }
        .min(count - sent);
        if due == 0 {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        let t = now_us() / 1000;
        for _ in 0..due {
            let m = generator.next_at(t);
            let record = BaseRecord::to(topic)
                .key(m.key.as_str())
                .payload(&m.payload[..])
                .timestamp(t as i64);
            send_with_backpressure(producer, record).context("producing a transaction")?;
        }
        sent += due;
        bar.inc(due);
    }
    Ok(Produced {
        sent,
        seconds: started.elapsed().as_secs_f64(),
        controls: sent_controls,
    })
}

pub fn produce(args: ProduceArgs) -> Result<()> {
    let rate = parse_rate(&args.rate)?;
    if args.capture.is_some() && args.controls.control_rate > 0.0 {
        bail!("--control-rate generates control records; with --capture the capture's own control lines are published");
    }
    if args.kafka.control_topic.is_empty() && args.controls.control_rate > 0.0 {
        bail!("--control-rate needs a control topic (--control-topic)");
    }
    let producer = make_producer(&args.kafka, &args.acks, args.linger_ms, args.batch_size)?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::Relaxed))
            .context("installing the Ctrl-C handler")?;
    }
    let count = args.count.unwrap_or(u64::MAX);
    if args.count.is_none() && args.duration.is_none() && args.capture.is_none() {
        log::info!("no --count or --duration: producing until Ctrl-C");
    }
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        let bar = match args.count {
            Some(n) => ProgressBar::new(n),
            None => ProgressBar::no_length(),
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} {wide_bar} {human_pos}/{human_len} msgs {per_sec} ({eta})",
            )
            .expect("a valid template"),
        );
        bar
    };
    let produced = match &args.capture {
        Some(path) => {
            let partitions = vtpga::kafka::partition_count(
                &args.kafka,
                &args.kafka.topic,
                Duration::from_secs(10),
            )?;
            // The control topic's partitions, asked once a capture has a control line.
            let mut control_partitions: Option<i32> = None;
            let started = Instant::now();
            let mut sent = 0u64;
            let mut controls = 0u64;
            for record in capture_lines(path) {
                if sent >= count || stop.load(Ordering::Relaxed) {
                    break;
                }
                let record = record.with_context(|| format!("reading {}", path.display()))?;
                if record.control {
                    let partitions = match control_partitions {
                        Some(n) => n,
                        None => *control_partitions.insert(vtpga::kafka::partition_count(
                            &args.kafka,
                            &args.kafka.control_topic,
                            Duration::from_secs(10),
                        )?),
                    };
                    // Keyed by its entity id, when it has one; a refused record as it is.
                    let key = parse_control(record.payload.as_bytes())
                        .ok()
                        .map(|c| entity_key(&c.change).to_owned());
                    let mut r = BaseRecord::to(&args.kafka.control_topic)
                        .payload(record.payload.as_str())
                        .timestamp(record.t as i64);
                    if record.partition >= 0 && record.partition < partitions {
                        r = r.partition(record.partition);
                    }
                    if let Some(k) = key.as_deref() {
                        r = r.key(k);
                    }
                    send_with_backpressure(&producer, r).context("producing a control record")?;
                    controls += 1;
                    continue;
                }
                let key = payer_of(record.payload.as_bytes());
                let mut r = BaseRecord::to(&args.kafka.topic)
                    .payload(record.payload.as_str())
                    .timestamp(record.t as i64);
                // The capture's own partition, so the topic reproduces it (keyless invalid
                // payloads would otherwise land on a random partition).
                if record.partition >= 0 && record.partition < partitions {
                    r = r.partition(record.partition);
                }
                if let Some(k) = key.as_deref() {
                    r = r.key(k);
                }
                send_with_backpressure(&producer, r).context("producing a transaction")?;
                sent += 1;
                bar.inc(1);
            }
            Produced {
                sent,
                seconds: started.elapsed().as_secs_f64(),
                controls,
            }
        }
        None => {
            let (regions, users) = match (&args.postgres, &args.regions, &args.users) {
                (Some(url), _, _) => {
                    let mut client = vtpga_sinks::postgres::connect_plain(url)
                        .context("connecting to PostgreSQL")?;
                    vtpga_sinks::postgres::load_reference(&mut client)?
                }
                (None, Some(regions), Some(users)) => (read_regions(regions)?, read_users(users)?),
                _ => bail!("--regions and --users (or --postgres) are required without --capture"),
            };
            if users.len() < 2 {
                bail!("at least 2 users are needed to generate transactions");
            }
            let seed = args.seed.unwrap_or_else(crate::fresh_seed);
            let cfg = args.faults.config(seed, 1)?;
            // Names tagged by the seed: a second producer never reuses a rule version.
            let mut controls = args
                .controls
                .config(seed, 0, ControlConfig::tag_for_seed(seed))
                .map(|c| ControlGenerator::new(c, &regions, &users));
            if controls.is_some() {
                log::info!(
                    "publishing {} control record(s) per second to {}",
                    args.controls.control_rate,
                    args.kafka.control_topic
                );
            }
            let mut generator = Generator::new(cfg, regions, users);
            produce_generated_with_controls(
                &producer,
                &args.kafka.topic,
                &mut generator,
                controls.as_mut().map(|generator| ControlStream {
                    generator,
                    rate: args.controls.control_rate,
                    topic: &args.kafka.control_topic,
                }),
                Pace {
                    rate,
                    count,
                    duration: args.duration,
                },
                &stop,
                &bar,
            )?
        }
    };
    bar.finish_and_clear();
    producer
        .flush(Duration::from_secs(60))
        .context("flushing the producer")?;
    println!(
        "produced {} messages to {} in {:.2} s ({:.0} msg/s)",
        produced.sent,
        args.kafka.topic,
        produced.seconds,
        produced.sent as f64 / produced.seconds.max(1e-9)
    );
    if produced.controls > 0 {
        println!(
            "produced {} control records to {}",
            produced.controls, args.kafka.control_topic
        );
    }
    Ok(())
}

/// The payer id of a payload, when it is a JSON object with a string payer (the key).
fn payer_of(payload: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Payer {
        id_usuario_pagador: String,
    }
    serde_json::from_slice::<Payer>(payload)
        .ok()
        .map(|p| p.id_usuario_pagador)
}

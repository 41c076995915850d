//! `vtpga loadtest`: drives a running pipeline (`vtpga run --source kafka`) through Kafka
//! at fixed rates, each for a bounded time, and reports the sustained decision
//! throughput and the decision latency: from the transaction record's timestamp (its
//! arrival time `t`) to the moment the pipeline handed the decision to its producer (the
//! decision record's `decided_us` header).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};

use vtpga_ingest::generator::Generator;
use vtpga_ingest::refdata::{read_regions, read_users};

use crate::generate::FaultArgs;
use crate::produce::{make_producer, parse_rate, produce_generated, Pace};
use vtpga::kafka::{partition_count, KafkaArgs};

#[derive(Args, Clone, Debug)]
pub struct LoadtestArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Regions CSV the pipeline was started with.
    #[arg(long, env = "VTPGA_REGIONS")]
    pub regions: PathBuf,
    /// Users CSV the pipeline was started with.
    #[arg(long, env = "VTPGA_USERS_CSV")]
    pub users: PathBuf,
    /// Producer rates to run, in order (`max` for as fast as possible).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,50000,max")]
    pub rates: Vec<String>,
    /// How long each rate runs.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// How long to wait, after producing stops, for the last decisions.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub drain: Duration,
    /// Upper bound on the messages of one step (bounds the `max` step).
    #[arg(long, default_value_t = 3_000_000)]
    pub max_messages: u64,
    /// Producer linger (ms). Part of the measured latency.
    #[arg(long, default_value_t = 0)]
    pub linger_ms: u64,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    #[command(flatten)]
    pub faults: FaultArgs,
}

/// One step's figures.
struct Step {
    rate: String,
    produced: u64,
    produce_seconds: f64,
    decided: u64,
    decide_seconds: f64,
    latency: Histogram<u64>,
}

/// The decisions topic's current end offsets: a step reads from there on.
fn end_offsets(consumer: &BaseConsumer, topic: &str, partitions: i32) -> Result<Vec<i64>> {
    (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .map(|(_, high)| high)
                .with_context(|| format!("watermarks of {topic}/{p}"))
        })
        .collect()
}

pub fn loadtest(args: LoadtestArgs) -> Result<()> {
    let regions = read_regions(&args.regions)?;
    let users = read_users(&args.users)?;
    let decision_partitions = partition_count(
        &args.kafka,
        &args.kafka.decisions_topic,
        Duration::from_secs(10),
    )?;
    let producer = make_producer(&args.kafka, "1", args.linger_ms, 1_000_000)?;
    let mut consumer_config = args.kafka.client_config()?;
    consumer_config
        .set("group.id", format!("{}-loadtest", args.kafka.group))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5");
    let consumer: BaseConsumer = consumer_config
        .create()
        .context("creating the decisions consumer")?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::Relaxed))
            .context("installing the Ctrl-C handler")?;
    }
    let mut steps = Vec::new();
    for (i, rate_text) in args.rates.iter().enumerate() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let rate = parse_rate(rate_text)?;
        let starts = end_offsets(&consumer, &args.kafka.decisions_topic, decision_partitions)?;
        let mut tpl = TopicPartitionList::new();
        for (p, &o) in starts.iter().enumerate() {
            tpl.add_partition_offset(&args.kafka.decisions_topic, p as i32, Offset::Offset(o))?;
        }
        consumer.assign(&tpl)?;
        let cfg = args
            .faults
            .config(args.seed.wrapping_add(i as u64 * 7919), 1)?;
        let mut generator = Generator::new(cfg, regions.clone(), users.clone());
        eprintln!("step {}: rate {} for {:?}", i + 1, rate_text, args.duration);
        // The producer runs on its own thread; this one reads decisions meanwhile.
        let produced = std::thread::scope(|s| -> Result<(crate::produce::Produced, Step)> {
            let topic = args.kafka.topic.clone();
            let duration = args.duration;
            let limit = args.max_messages;
            let producer = &producer;
            let stop_ref = &*stop;
            let mut handle = Some(s.spawn(move || {
                let bar = ProgressBar::hidden();
                let out = produce_generated(
                    producer,
                    &topic,
                    &mut generator,
                    Pace {
                        rate,
                        count: limit,
                        duration: Some(duration),
                    },
                    stop_ref,
                    &bar,
                );
                let _ = producer.flush(Duration::from_secs(30));
                out
            }));
            let started = Instant::now();
            let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)
                .map_err(|e| anyhow!("histogram: {e}"))?;
            let mut decided = 0u64;
            let mut last_decision = started;
            let mut first_decision: Option<Instant> = None;
            let mut produced: Option<crate::produce::Produced> = None;
            let mut drain_started: Option<Instant> = None;
            let mut seen: HashMap<(i32, i64), ()> = HashMap::new();
            loop {
                if handle.as_ref().is_some_and(|h| h.is_finished()) {
                    let p = handle
                        .take()
                        .expect("checked")
                        .join()
                        .map_err(|_| anyhow!("the producer thread panicked"))??;
                    produced = Some(p);
                    drain_started = Some(Instant::now());
                }
                if let Some(p) = produced {
                    if decided >= p.sent {
                        break;
                    }
                    if drain_started.is_some_and(|d| d.elapsed() > args.drain)
                        || stop.load(Ordering::Relaxed)
                    {
                        eprintln!(
                            "  gave up waiting: {} of {} decisions arrived",
                            decided, p.sent
                        );
                        break;
                    }
                }
                match consumer.poll(Duration::from_millis(50)) {
                    None => {}
                    Some(Err(e)) => log::warn!("decisions consumer: {e}"),
                    Some(Ok(msg)) => {
                        // Only count each source position once (a re-delivered decision
                        // would be counted twice otherwise).
                        let Some(record) = msg
                            .payload()
                            .and_then(|p| serde_json::from_slice::<DecisionTime>(p).ok())
                        else {
                            continue;
                        };
                        if seen.insert((record.partition, record.offset), ()).is_some() {
                            continue;
                        }
                        let decided_us = msg.headers().and_then(|h| {
                            h.iter()
                                .find(|h| h.key == "decided_us")
                                .and_then(|h| h.value)
                                .and_then(|v| std::str::from_utf8(v).ok())
                                .and_then(|v| v.parse::<u64>().ok())
                        });
                        if let Some(us) = decided_us {
                            latency.saturating_record(us.saturating_sub(record.t * 1000).max(1));
                        }
                        decided += 1;
                        last_decision = Instant::now();
                        first_decision.get_or_insert(last_decision);
                    }
                }
            }
            let produced = match (produced, handle) {
                (Some(p), _) => p,
                (None, None) => unreachable!("the producer result is kept once joined"),
                (None, Some(handle)) => handle
                    .join()
                    .map_err(|_| anyhow!("the producer thread panicked"))??,
            };
            Ok((
                produced,
                Step {
                    rate: rate_text.clone(),
                    produced: produced.sent,
                    produce_seconds: produced.seconds,
                    decided,
                    decide_seconds: (last_decision - first_decision.unwrap_or(started))
                        .as_secs_f64(),
                    latency,
                },
            ))
        })?;
        let (_, step) = produced;
        eprintln!("  {}", row(&step));
        steps.push(step);
    }
    println!("| producer rate | produced msg/s | decided | sustained tx/s | p50 ms | p99 ms | p99.9 ms | max ms |");
    println!("|---|---|---|---|---|---|---|---|");
    for step in &steps {
        println!("{}", row(step));
    }
    if steps.iter().any(|s| s.decided < s.produced) {
        bail!("some produced messages were not decided in time (see above)");
    }
    Ok(())
}

#[derive(serde::Deserialize)]
struct DecisionTime {
    partition: i32,
    offset: i64,
    t: u64,
}

fn row(s: &Step) -> String {
    let ms = |q: f64| s.latency.value_at_quantile(q) as f64 / 1000.0;
    format!(
        "| {} | {:.0} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} |",
        s.rate,
        s.produced as f64 / s.produce_seconds.max(1e-9),
        s.decided,
        s.decided as f64 / s.decide_seconds.max(1e-9),
        ms(0.5),
        ms(0.99),
        ms(0.999),
        s.latency.max() as f64 / 1000.0
    )
}

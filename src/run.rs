//! `vtpga run`: the main job. Reference data, a source (the in-process generator at a
//! fixed rate, or the Kafka topic), the decision graph, a live status line, and with the
//! Kafka source the decisions and dead-letter topics; with `--postgres` and `--redis` the
//! durable record and the cache. This file assembles the list of consumers; the write
//! path (`sinks::consumer`) runs them.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use vtpga_dataflow::analyses::{AnalysisKey, Tally};
use vtpga_ingest::generator::{Generator, GeneratorConfig};
use vtpga_ingest::kafka::{partitions_for, KafkaFeed, KafkaSourceConfig, KafkaStats, StartFrom};
use vtpga_ingest::live::{now_us, LiveFeed};
use vtpga_ingest::refdata::{generate_regions, generate_users, read_regions, read_users};
use vtpga_ingest::source::{Either, Stoppable};
use vtpga_sinks::consumer::{Consumer, Fault, WritePath};
use vtpga_sinks::kafka::{DecisionProducer, DeliveryStats, OutputTopics};
use vtpga_sinks::monitor::Monitor;
use vtpga_sinks::postgres::{self as pg, PgSink, PgStats, ResumePoint};
use vtpga_sinks::redis::{RedisOptions, RedisSink, RedisStats};
use vtpga_sinks::Batch;
use vtpga_sinks::Gather;
use vtpga_web::{LiveState, Observer};

use crate::produce::parse_rate;
use vtpga::args::ParamArgs;
use vtpga::cluster::ClusterArgs;
use vtpga::kafka::{partition_count, KafkaArgs};
use vtpga::pipeline::{self, PipelineSpec, Reference};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// The in-process generator (no services needed).
    Generator,
    /// The Kafka transactions topic; decisions go to the decisions and DLQ topics.
    Kafka,
}

#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    /// Where transactions come from.
    #[arg(long, env = "VTPGA_SOURCE", value_enum, default_value = "generator")]
    pub source: SourceKind,
    /// Regions CSV (default: generated, as `vtpga generate` does).
    #[arg(long, env = "VTPGA_REGIONS", requires = "users_csv")]
    pub regions: Option<std::path::PathBuf>,
    /// Users CSV (default: generated).
    #[arg(long = "users-csv", env = "VTPGA_USERS_CSV", requires = "regions")]
    pub users_csv: Option<std::path::PathBuf>,
    /// Kafka source: where each partition starts (until stored offsets exist).
    #[arg(long, env = "VTPGA_KAFKA_START", default_value = "latest")]
    pub start: StartFrom,
    /// Kafka source: an idle, caught-up partition's time follows the wall clock minus this.
    #[arg(long, env = "VTPGA_KAFKA_IDLE_SLACK_MS", default_value_t = 5)]
    pub idle_slack_ms: u64,
    /// Kafka source: stop once every partition has been read to its end.
    #[arg(long, env = "VTPGA_KAFKA_EXIT_AT_EOF")]
    pub exit_at_eof: bool,
    /// Kafka source: a resumed partition starts this many offsets before its stored offset
    /// and drops what it has already decided (tansu answers a fetch from inside a record
    /// batch with the next batch; see the README).
    #[arg(long, env = "VTPGA_KAFKA_RESUME_REWIND", default_value_t = 20_000)]
    pub resume_rewind: i64,
    /// Kafka source: after a broker outage, idle partitions' times are held for as long as
    /// the outage lasted, at most this, so records producers buffered meanwhile are not
    /// raised past their timestamps (and decided late).
    #[arg(long, env = "VTPGA_KAFKA_OUTAGE_GRACE_MS", default_value_t = 10_000)]
    pub outage_grace_ms: u64,
    /// Kafka source: the clock guard (SPEC §4). A record stamped more than this ahead of
    /// the wall clock when read is decided `invalid` and does not move its partition's time.
    #[arg(long, env = "VTPGA_MAX_CLOCK_SKEW_MS", default_value_t = 60_000)]
    pub max_clock_skew_ms: u64,
    /// Kafka source: messages buffered per partition before it is paused.
    #[arg(long, env = "VTPGA_KAFKA_MAX_BUFFERED", default_value_t = 50_000)]
    pub max_buffered: usize,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// PostgreSQL URL (e.g. postgres://vtpga@127.0.0.1:15432/vtpga): reference data comes
    /// from it, every batch is committed to it, and a restart resumes from it.
    #[arg(long, env = "VTPGA_POSTGRES")]
    pub postgres: Option<String>,
    /// Redis URL (e.g. redis://127.0.0.1:16379/): the low-latency cache of decisions and
    /// analyses. Deciding goes on while it is down.
    #[arg(long, env = "VTPGA_REDIS_URL")]
    pub redis: Option<String>,
    #[command(flatten)]
    pub web: vtpga::args::WebServeArgs,
    /// Do not serve the dashboard.
    #[arg(long, env = "VTPGA_NO_WEB")]
    pub no_web: bool,
    /// Do not log the operators' figures for the dashboard's dataflow view
    /// (`/api/dataflow`, the per-operator lines of `/metrics`): saves what the logging
    /// costs (see `vtpga bench --dataflow-view`).
    #[arg(long, env = "VTPGA_NO_DATAFLOW_VIEW")]
    pub no_dataflow_view: bool,
    /// When the source is exhausted, keep serving the dashboard until Ctrl-C.
    #[arg(long)]
    pub hold: bool,
    /// With PostgreSQL: batches merged into one database transaction, at most (decisions).
    #[arg(long, env = "VTPGA_PG_MAX_BATCH", default_value_t = 100_000)]
    pub pg_max_batch: usize,
    /// With PostgreSQL: writer connections. Each writes whole batches (one transaction
    /// each); with two, one copies its batch while the other commits. Commits stay in
    /// batch order.
    #[arg(long, env = "VTPGA_PG_WRITERS", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=8))]
    pub pg_writers: u32,
    /// Messages per second for the whole cluster, or `max` for as fast as the graph takes them.
    #[arg(long, env = "VTPGA_RATE", default_value = "5000")]
    pub rate: String,
    /// Stop after this many messages (default: run until Ctrl-C).
    #[arg(long, env = "VTPGA_COUNT")]
    pub count: Option<u64>,
    /// Generator: this share (0..=1) of the payments comes from `--hot-payers` users,
    /// e.g. to see a skewed worker in the dataflow view.
    #[arg(long, default_value_t = 0.0, requires = "hot_payers")]
    pub hot_share: f64,
    /// Generator: how many users the `--hot-share` of the payments comes from.
    #[arg(long, default_value_t = 0)]
    pub hot_payers: usize,
    /// Users to generate when no reference data is given (no `--postgres`, no
    /// `--users-csv`). Not `--users`: elsewhere (`replay`, `produce`) that is a CSV path.
    #[arg(long, env = "VTPGA_USERS", default_value_t = 10_000)]
    pub generated_users: usize,
    /// Generated regions beyond the 27 state capitals.
    #[arg(long, env = "VTPGA_EXTRA_REGIONS", default_value_t = 100)]
    pub extra_regions: usize,
    /// Seed of the generated reference data (users and regions).
    #[arg(long, env = "VTPGA_SEED", default_value_t = 42)]
    pub seed: u64,
    /// Seed of the generated messages. Default: a new one at every start, so a restarted
    /// run never sends the transaction ids of an earlier one again (they would be
    /// `duplicate`); give one to repeat a run.
    #[arg(long, env = "VTPGA_MESSAGE_SEED")]
    pub message_seed: Option<u64>,
    /// Messages a worker lets into the graph before waiting for them to be decided (at
    /// least 1: with none the source could never take a message).
    #[arg(long, env = "VTPGA_MAX_IN_FLIGHT", default_value_t = 200_000, value_parser = crate::at_least_one)]
    pub max_in_flight: usize,
    #[command(flatten)]
    pub params: ParamArgs,
    #[command(flatten)]
    pub shadows: vtpga::args::ShadowArgs,
    /// Where to write each shadow's outputs as `replay --shadow-out` does (`DIR/VERSION/`:
    /// decisions in the order the workers' batches arrive, analyses, balances, what-if
    /// rows), when the run ends.
    #[arg(long, value_name = "DIR", requires = "shadow")]
    pub shadow_out: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Live changes mixed into the generated stream (generator source only).
    #[command(flatten)]
    pub control: vtpga::args::ControlRateArgs,
}

pub fn run(args: RunArgs) -> Result<()> {
    let rate = parse_rate(&args.rate)?;
    GeneratorConfig {
        hot_share: args.hot_share,
        hot_payers: args.hot_payers,
        ..GeneratorConfig::default()
    }
    .validate()
    .map_err(|e| anyhow::anyhow!("--hot-share/--hot-payers: {e}"))?;
    let (params, mut rules) = args.params.params_and_rules()?;
    let shadows = args.shadows.sets()?;
    if !shadows.is_empty() && args.postgres.is_some() {
        // Not built yet: a shadow's ledger would start empty after every restart.
        anyhow::bail!(
            "--shadow with --postgres: shadow ledgers are not stored nor resumed yet; \
             run shadows without --postgres (live view, /api/whatif) or with `vtpga replay`"
        );
    }
    let config = args.cluster.config()?;
    let source_name = match args.source {
        SourceKind::Kafka => format!("kafka:{}", args.kafka.topic),
        SourceKind::Generator => "generator".to_owned(),
    };
    // The control topic's offsets are recorded under a source name of their own.
    let control_source = match args.source {
        SourceKind::Kafka if !args.kafka.control_topic.is_empty() => {
            Some(format!("kafka:{}", args.kafka.control_topic))
        }
        _ => None,
    };
    // The durable store first: with it, reference data and the resume point come from it.
    let mut resume_point = ResumePoint::default();
    let (regions, users) = match &args.postgres {
        Some(url) => {
            let mut client = pg::connect(url)
                .with_context(|| format!("connecting to PostgreSQL at {}", redact(url)))?;
            let (regions, users) = pg::load_reference(&mut client)?;
            if users.is_empty() {
                bail!(
                    "PostgreSQL at {} has no users: run `vtpga seed --postgres URL` first",
                    redact(url)
                );
            }
            // The rule set the database started with stays the initial one (SPEC §11).
            rules = pg::initial_rules(&mut client, &rules)?;
            resume_point = pg::load_resume(&mut client, &source_name, control_source.as_deref())?;
            if let Some(cut) = resume_point.cut_time {
                eprintln!(
                    "resuming after t = {cut}: {} account(s), {} id(s) in the duplicate window, {} analysis row(s), {} partition offset(s), {} rule change(s), {} scheduled change(s)",
                    resume_point.state.accounts.len(),
                    resume_point.state.seen.len(),
                    resume_point.state.analyses.len(),
                    resume_point.partitions.len() + resume_point.control_partitions.len(),
                    resume_point.state.rules.len(),
                    resume_point.state.scheduled.len()
                );
            }
            (regions, users)
        }
        None => match (&args.regions, &args.users_csv) {
            (Some(r), Some(u)) => (read_regions(r)?, read_users(u)?),
            _ => {
                let regions = generate_regions(args.extra_regions, args.seed);
                let users = generate_users(args.generated_users, &regions, args.seed);
                (regions, users)
            }
        },
    };
    // The parameters' rule values are those of the initial rule set.
    let params = rules.apply_to(&params);
    if users.len() < 2 {
        bail!("at least 2 users are needed, not {}", users.len());
    }
    let reference = Arc::new(Reference { regions, users });
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::Relaxed))
            .context("installing the Ctrl-C handler")?;
    }
    let local_workers = args.cluster.workers;
    let total_workers = local_workers * args.cluster.processes;
    let limit = args.count.unwrap_or(u64::MAX);
    let seed = args.message_seed.unwrap_or_else(crate::fresh_seed);
    eprintln!(
        "vtpga run: {} worker(s) x {} process(es), source {}, {} users, {} regions{}",
        local_workers,
        args.cluster.processes,
        source_name,
        reference.users.len(),
        reference.regions.len(),
        args.count
            .map(|n| format!(", {n} messages"))
            .unwrap_or_default()
    );
    let min_t = resume_point.cut_time.map_or(0, |cut| cut + 1);
    // The Kafka side: partitions to read, and the producer of decisions and dead letters.
    let kafka = match args.source {
        SourceKind::Generator => None,
        SourceKind::Kafka => {
            let partitions =
                partition_count(&args.kafka, &args.kafka.topic, Duration::from_secs(10))?;
            // Live changes (SPEC §11): the control topic's partitions, if it is there.
            let control = match args.kafka.control_topic.as_str() {
                "" => None,
                topic => match partition_count(&args.kafka, topic, Duration::from_secs(10)) {
                    Ok(n) => Some((topic.to_owned(), n)),
                    Err(e) => {
                        log::warn!(
                            "kafka: no control topic {topic} ({e:#}): reference data and rules \
                             will not change while running"
                        );
                        None
                    }
                },
            };
            let producer = DecisionProducer::new(
                args.kafka.client_config()?,
                OutputTopics {
                    decisions: args.kafka.decisions_topic.clone(),
                    dlq: args.kafka.dlq_topic.clone(),
                },
            )
            .context("creating the Kafka producer")?;
            let source = KafkaSourceConfig {
                client: args.kafka.consumer_settings()?,
                topic: args.kafka.topic.clone(),
                control_topic: control.as_ref().map(|(topic, _)| topic.clone()),
                control_offsets: resume_point
                    .control_partitions
                    .iter()
                    .map(|(p, r)| (*p, r.next_offset))
                    .collect(),
                control_last_t: resume_point
                    .control_partitions
                    .iter()
                    .map(|(p, r)| (*p, r.last_t))
                    .collect(),
                // Once the database holds this source's record, a partition without a
                // stored offset has had nothing decided yet: what arrived there while the
                // pipeline was down must be read, whatever `--start` says.
                start: if resume_point.cut_time.is_some() {
                    StartFrom::Earliest
                } else {
                    args.start
                },
                offsets: resume_point
                    .partitions
                    .iter()
                    .map(|(p, r)| (*p, r.next_offset))
                    .collect(),
                last_t: resume_point
                    .partitions
                    .iter()
                    .map(|(p, r)| (*p, r.last_t))
                    .collect(),
                min_t,
                resume_rewind: args.resume_rewind,
                idle_slack_ms: args.idle_slack_ms,
                exit_at_eof: args.exit_at_eof,
                max_buffered: args.max_buffered,
                max_clock_skew_ms: args.max_clock_skew_ms,
                outage_grace_ms: args.outage_grace_ms,
            };
            vtpga_ingest::kafka::check_consumer_settings(&source)
                .context("the Kafka consumer settings")?;
            eprintln!(
                "kafka: {} partition(s) of {} on {}, {}, decisions to {}, dead letters to {}",
                partitions,
                args.kafka.topic,
                args.kafka.brokers,
                if resume_point.partitions.is_empty() {
                    format!("starting from {:?}", args.start)
                } else {
                    "resuming from the stored offsets".to_owned()
                },
                args.kafka.decisions_topic,
                args.kafka.dlq_topic
            );
            let control_partitions = control.map_or(0, |(_, n)| n);
            Some(((partitions, control_partitions), source, producer))
        }
    };
    let kafka_stats = KafkaStats::new(local_workers);
    let (kafka_source, producer) = match kafka {
        Some((partitions, source, producer)) => {
            (Some((partitions, source)), Some(Arc::new(producer)))
        }
        None => (None, None),
    };
    let rows: BTreeMap<AnalysisKey, Tally> = resume_point.state.analyses.iter().cloned().collect();
    let mut followers: Vec<Box<dyn Consumer>> = Vec::new();
    // The durable record: `--pg-writers` connections, copying in parallel, committing in
    // order (sinks::consumer).
    let mut record = Vec::new();
    if let Some(url) = &args.postgres {
        let mut first = PgSink::new(url, &source_name)
            .with_context(|| format!("connecting the PostgreSQL sink to {}", redact(url)))?;
        if let Some(control) = &control_source {
            first = first.with_control_source(control);
        }
        for _ in 1..args.pg_writers {
            record.push(first.another().with_context(|| {
                format!("connecting another PostgreSQL writer to {}", redact(url))
            })?);
        }
        record.insert(0, first);
    }
    let pg_stats = record.first().map(|pg| pg.stats.clone());
    // In a cluster the Redis cache is written by process 0 alone, from batches gathered to
    // worker 0 (as with PostgreSQL): a sink per process would rebuild the cache from its
    // own share at start and delete what the others wrote.
    let clustered = args.cluster.processes > 1;
    let mut redis_stats = None;
    match &args.redis {
        Some(_) if clustered && args.cluster.process != 0 => {}
        Some(url) => {
            let options = RedisOptions {
                shadows: shadows.iter().map(|s| s.version.clone()).collect(),
                ..RedisOptions::default()
            };
            let mut sink = RedisSink::new(url, options)
                .with_context(|| format!("Redis URL {}", redact(url)))?;
            sink.seed(rows.clone());
            redis_stats = Some(sink.stats_handle());
            followers.push(Box::new(sink));
        }
        None => {}
    }
    // Where the workers publish their operator figures, when the dashboard shows them.
    let mut dataflow_view = None;
    let web = if args.no_web {
        None
    } else {
        let state = LiveState::new(total_workers);
        state.seed_analyses(rows);
        state.set_shadows(&shadows);
        // The rule set in force and what is still to take effect (SPEC §11).
        state.seed_rules(&rules, &resume_point.state.rules);
        let pending: Vec<_> = resume_point
            .state
            .scheduled
            .iter()
            .filter_map(|c| {
                let record = c.parsed.clone().ok()?;
                let from = record
                    .effective_from
                    .filter(|&f| f > 0)
                    .map_or(0, |f| f as u64);
                Some(vtpga_dataflow::graph::ControlOutcome {
                    pos: c.pos,
                    t: c.t,
                    at: c.t.max(from),
                    arrived: true,
                    kind: vtpga_dataflow::graph::OutcomeKind::Scheduled(record),
                })
            })
            .collect();
        state.seed_pending(&pending);
        if args.postgres.is_none() {
            state.seed_users(reference.users.clone());
        }
        match vtpga_web::spawn_embedded_with_limits(
            args.web.config(),
            args.web.limits.limits(),
            state.clone(),
            args.postgres.clone(),
        ) {
            Ok(server) => {
                eprintln!("dashboard: http://{}/", server.addr);
                if !args.no_dataflow_view {
                    let view = vtpga::dataflow_view::DataflowView::new(
                        args.cluster.process,
                        args.cluster.processes,
                        total_workers,
                    );
                    view.spawn_sampler();
                    state.set_dataflow_source(view.clone());
                    dataflow_view = Some(view.published());
                }
                followers.push(Box::new(Observer(state.clone())));
                Some((state, server))
            }
            Err(e) => {
                // The dashboard is a view: deciding does not depend on it.
                log::warn!("dashboard not served: binding {}: {e}", args.web.web_listen);
                None
            }
        }
    };
    let generator_offsets: HashMap<i32, i64> = resume_point
        .partitions
        .iter()
        .map(|(p, r)| (*p, r.next_offset))
        .collect();
    let gather = if !record.is_empty() || (args.redis.is_some() && clustered) {
        // One consistent cut of the whole cluster per batch: what the database needs, and
        // what one Redis writer for the cluster needs.
        Gather::ToWorkerZero
    } else {
        Gather::PerWorker
    };
    let mut monitor = Monitor::default();
    for (partition, r) in &resume_point.partitions {
        monitor.accounting.start_at(*partition, r.next_offset);
    }
    let monitor = Arc::new(Mutex::new(monitor));
    followers.push(Box::new(StatusLine {
        monitor: monitor.clone(),
        window: Instant::now(),
        kafka: kafka_source.as_ref().map(|_| kafka_stats.clone()),
        pg: pg_stats.clone(),
        redis: redis_stats.clone(),
        delivery: producer.as_ref().map(|p| p.stats.clone()),
        web: web.as_ref().map(|(state, _)| state.clone()),
    }));
    let ledgers = args.shadow_out.is_some();
    if let Some(dir) = &args.shadow_out {
        let names: Vec<(String, String)> = shadows
            .iter()
            .map(|s| {
                (
                    s.version.to_string(),
                    vtpga::args::shadow_dir_name(&s.version),
                )
            })
            .collect();
        let initial = vtpga_sinks::files::InitialReference {
            users: reference.users.clone(),
            regions: reference.regions.clone(),
            rules: rules.clone(),
        };
        let files =
            vtpga_sinks::files::ShadowFiles::create(dir, &names, &initial).map_err(|e| {
                anyhow::anyhow!("creating the shadows' outputs in {}: {e}", dir.display())
            })?;
        followers.push(Box::new(files));
    }
    let path = WritePath {
        record,
        producer: producer.clone(),
        followers,
        max_batch: args.pg_max_batch,
        stop: stop.clone(),
    };
    let feed_reference = reference.clone();
    let spec = PipelineSpec {
        config,
        reference,
        params,
        rules,
        // A control topic, or a generator of changes: reference data and rules may change.
        live_changes: kafka_source
            .as_ref()
            .is_some_and(|((_, control_partitions), _)| *control_partitions > 0)
            || (matches!(args.source, SourceKind::Generator) && args.control.control_rate > 0.0),
        gather,
        max_in_flight: args.max_in_flight,
        resume: Arc::new(resume_point.state),
        view: dataflow_view,
        // The live view shows the shadows' analyses and what-if rows only; their files
        // need their decisions and states too.
        shadows: vtpga_dataflow::graph::Shadows {
            sets: shadows,
            ledgers,
        },
    };
    let held = stop.clone();
    let started = Instant::now();
    let make_feed = {
        // The feeds' own handle on the same counters.
        let kafka_stats = kafka_stats.clone();
        move |index, peers| {
            let feed = match &kafka_source {
                Some(((partitions, control_partitions), source)) => Either::Right(
                    KafkaFeed::new(
                        source,
                        &partitions_for(*partitions, index, peers),
                        &partitions_for(*control_partitions, index, peers),
                        kafka_stats.clone(),
                        index % local_workers,
                    )
                    .expect("creating a Kafka consumer with settings already checked"),
                ),
                None => {
                    // Each worker is one source partition with its share of the rate and count.
                    let share = |total: u64| {
                        total / peers as u64 + u64::from((index as u64) < total % peers as u64)
                    };
                    let cfg = GeneratorConfig {
                        seed: seed.wrapping_add(index as u64),
                        partitions: total_workers as i32,
                        hot_share: args.hot_share,
                        hot_payers: args.hot_payers,
                        ..GeneratorConfig::default()
                    };
                    let generator = Generator::new(
                        cfg,
                        feed_reference.regions.clone(),
                        feed_reference.users.clone(),
                    );
                    let feed = LiveFeed::new(
                        generator,
                        rate.map(|r| r / peers as f64),
                        if limit == u64::MAX {
                            u64::MAX
                        } else {
                            share(limit)
                        },
                        stop.clone(),
                        index as i32,
                    )
                    .starting_at(
                        generator_offsets.get(&(index as i32)).copied().unwrap_or(0),
                        min_t,
                    );
                    // Live changes (SPEC §11) from one generator only (worker 0): one
                    // stream of changes, whose rule set versions are never reused; its
                    // names carry the message seed, so a restart makes new ones.
                    let control = args.control.config(
                        seed,
                        min_t,
                        vtpga_ingest::changes::ControlConfig::tag_for_seed(seed),
                    );
                    match (index, control) {
                        (0, Some(cfg)) => {
                            let changes = vtpga_ingest::changes::ControlGenerator::new(
                                cfg,
                                &feed_reference.regions,
                                &feed_reference.users,
                            );
                            let rate = args.control.control_rate;
                            Either::Left(feed.with_controls(changes, rate))
                        }
                        _ => Either::Left(feed),
                    }
                }
            };
            Stoppable {
                feed,
                stop: stop.clone(),
            }
        }
    };
    pipeline::run(spec, make_feed, path)?;
    let elapsed = started.elapsed();
    let monitor = monitor.lock().expect("monitor");
    println!("{}", monitor.summary(elapsed.as_secs_f64()));
    println!(
        "source offsets:{}",
        monitor.accounting.line().trim_start_matches(" |")
    );
    if let Some((_, server)) = web {
        if args.hold && !held.load(Ordering::Relaxed) {
            eprintln!("source exhausted; serving the dashboard until Ctrl-C");
            while !held.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        server.stop();
    }
    if let Some(pg) = &pg_stats {
        let (batches, decisions, retries, _) = pg.snapshot();
        println!(
            "postgres: {decisions} decision(s) in {batches} transaction(s), {retries} retried"
        );
    }
    if let Some(redis) = &redis_stats {
        let s = *redis.lock().expect("redis stats");
        println!(
            "redis: {} batch(es) written, {} failure(s), {} rebuild(s), connected {}",
            s.batches_written, s.failures, s.rebuilds, s.connected
        );
    }
    if let Some(p) = producer {
        p.flush(Duration::from_secs(30))
            .context("flushing the decisions to Kafka")?;
        println!(
            "kafka: {} record(s) delivered, {} failed; {} message time(s) raised by idle partitions; partitions held back {} time(s); {} re-delivered record(s) dropped; {} offset(s) skipped by the broker; {} record(s) stamped ahead of the clock decided invalid",
            p.stats.delivered.load(Ordering::Relaxed),
            p.stats.failed.load(Ordering::Relaxed),
            kafka_stats.raised.load(Ordering::Relaxed),
            kafka_stats.paused.load(Ordering::Relaxed),
            kafka_stats.redelivered.load(Ordering::Relaxed),
            kafka_stats.skipped.load(Ordering::Relaxed),
            kafka_stats.guarded.load(Ordering::Relaxed),
        );
        if p.stats.failed.load(Ordering::Relaxed) > 0 {
            bail!("some decisions could not be produced to Kafka");
        }
    }
    Ok(())
}

/// The live status line, once a second, and the offset accounting (a follower: it sees
/// what is committed).
struct StatusLine {
    monitor: Arc<Mutex<Monitor>>,
    window: Instant,
    kafka: Option<Arc<KafkaStats>>,
    pg: Option<Arc<PgStats>>,
    redis: Option<Arc<Mutex<RedisStats>>>,
    delivery: Option<Arc<DeliveryStats>>,
    web: Option<Arc<LiveState>>,
}

impl Consumer for StatusLine {
    fn name(&self) -> &'static str {
        "monitor"
    }

    fn batch(&mut self, batch: &Batch) -> Result<(), Fault> {
        self.monitor
            .lock()
            .expect("monitor")
            .observe(batch, now_us());
        Ok(())
    }

    fn tick(&mut self) {
        if self.window.elapsed() < Duration::from_secs(1) {
            return;
        }
        let mut monitor = self.monitor.lock().expect("monitor");
        let mut line = monitor.window_line(self.window.elapsed().as_secs_f64());
        if let Some(k) = &self.kafka {
            line.push_str(&format!(
                " | lag {} raised {} held {} guarded {}",
                k.total_lag()
                    .map_or_else(|| "unknown".to_owned(), |lag| lag.to_string()),
                k.raised.load(Ordering::Relaxed),
                k.paused.load(Ordering::Relaxed),
                k.guarded.load(Ordering::Relaxed)
            ));
        }
        if let Some(pg) = &self.pg {
            let (batches, _, retries, quarantined) = pg.snapshot();
            line.push_str(&format!(
                " | pg {batches} tx, {retries} retried, {quarantined} quarantined"
            ));
        }
        if let Some(redis) = &self.redis {
            let up = redis.lock().map(|s| s.connected).unwrap_or(false);
            line.push_str(&format!(" | redis {}", if up { "up" } else { "DOWN" }));
        }
        monitor.accounting.settle(Instant::now());
        line.push_str(&monitor.accounting.line());
        if let Some(web) = &self.web {
            web.set_health(self.kafka.as_ref().and_then(|k| k.total_lag()));
            web.set_pipeline_metrics(self.metrics(&monitor));
        }
        drop(monitor);
        eprintln!("{line}");
        self.window = Instant::now();
    }

    fn end(&mut self) -> Result<(), Fault> {
        self.monitor.lock().expect("monitor").accounting.finish();
        Ok(())
    }
}

impl StatusLine {
    /// The pipeline's own counters for `/metrics` (SPEC §10): offset accounting, records
    /// the clock guard refused, rows quarantined, decision records the broker did not take.
    fn metrics(&self, monitor: &Monitor) -> String {
        let mut out = monitor.accounting.metrics();
        let mut counter = |name: &str, help: &str, v: u64| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n"
            ));
        };
        counter(
            "vtpga_clock_guarded_total",
            "Records decided invalid because their timestamp was ahead of the clock (SPEC §4).",
            self.kafka
                .as_ref()
                .map_or(0, |k| k.guarded.load(Ordering::Relaxed)),
        );
        counter(
            "vtpga_quarantined_total",
            "Decisions PostgreSQL refused, written to the quarantine table (SPEC §10).",
            self.pg.as_ref().map_or(0, |pg| pg.snapshot().3),
        );
        counter(
            "vtpga_delivery_failures_total",
            "Decision or dead-letter records the broker refused for good.",
            self.delivery
                .as_ref()
                .map_or(0, |d| d.failed.load(Ordering::Relaxed)),
        );
        out
    }
}

/// A connection URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..scheme + 3], user, &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

//! `vtpga sinkbench`: how fast the durable path writes. Decides N generated messages in
//! memory first (one ordered batch per closed timestamp, as the sinks get them from the
//! pipeline), merges them into batches of `--batch` decisions, and then times only the
//! write path (`sinks::consumer::WritePath`, as `vtpga run` drives it): PostgreSQL alone
//! (into a scratch database it creates and drops on the server), Redis alone, and both.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;

use vtpga_dataflow::graph::{Body, Incoming};
use vtpga_dataflow::{Params, SourcePos};
use vtpga_ingest::generator::{Generator, GeneratorConfig};
use vtpga_ingest::refdata::{generate_regions, generate_users};
use vtpga_ingest::source::VecFeed;
use vtpga_sinks::consumer::{Consumer, WritePath};
use vtpga_sinks::postgres::{self as pg, PgSink};
use vtpga_sinks::redis::{RedisOptions, RedisSink};
use vtpga_sinks::{Batch, Gather};

use vtpga::cluster::ClusterArgs;
use vtpga::pipeline::{self, PipelineSpec, Reference};

#[derive(Args, Clone, Debug)]
pub struct SinkbenchArgs {
    /// PostgreSQL server URL; a scratch database `vtpga_sinkbench` is created and dropped.
    #[arg(long, env = "VTPGA_POSTGRES")]
    pub postgres: String,
    /// Also time the Redis sink against this URL (its `vtpga:*` keys are overwritten).
    #[arg(long)]
    pub redis: Option<String>,
    /// Messages to decide and write.
    #[arg(long, default_value_t = 500_000)]
    pub count: usize,
    /// Decisions per database transaction (the pipeline's `--pg-max-batch`).
    #[arg(long, default_value_t = 100_000)]
    pub batch: usize,
    /// PostgreSQL writer connections (the pipeline's `--pg-writers`).
    #[arg(long, default_value_t = 2)]
    pub pg_writers: u32,
    /// Nominal arrival rate of the generated messages.
    #[arg(long, default_value_t = 100_000.0)]
    pub arrival_rate: f64,
    #[arg(long, default_value_t = 10_000)]
    pub users: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

pub fn sinkbench(args: SinkbenchArgs) -> Result<()> {
    let regions = generate_regions(100, args.seed);
    let users = generate_users(args.users, &regions, args.seed);
    let reference = Arc::new(Reference { regions, users });
    let cfg = GeneratorConfig {
        seed: args.seed,
        rate_per_sec: args.arrival_rate,
        ..GeneratorConfig::default()
    };
    let mut generator = Generator::new(cfg, reference.regions.clone(), reference.users.clone());
    let mut offsets = [0i64; 4];
    let messages: Vec<Incoming> = (0..args.count)
        .map(|_| {
            let m = generator.next_message();
            let offset = &mut offsets[m.partition as usize];
            *offset += 1;
            Incoming {
                pos: SourcePos {
                    partition: m.partition,
                    offset: *offset - 1,
                },
                t: m.record_ts,
                ingest_us: 0,
                body: Body::Raw(m.payload),
            }
        })
        .collect();
    eprintln!("deciding {} messages in memory...", messages.len());
    let (sender, receiver) = crossbeam_channel::unbounded::<Batch>();
    let spec = PipelineSpec {
        config: ClusterArgs::single(1).config()?,
        reference: reference.clone(),
        params: Params::default(),
        rules: vtpga_dataflow::RuleSet::of(&Params::default(), "default"),
        live_changes: false,
        gather: Gather::ToWorkerZero,
        max_in_flight: 2_000_000,
        resume: Default::default(),
        view: None,
        shadows: Default::default(),
    };
    let messages = std::sync::Mutex::new(Some(messages));
    pipeline::execute(
        spec,
        move |_, _| {
            VecFeed::new(
                messages
                    .lock()
                    .ok()
                    .and_then(|mut m| m.take())
                    .unwrap_or_default(),
            )
        },
        sender,
    )?;
    // Batches of about `--batch` decisions, as the write path merges them.
    let mut batches: Vec<Batch> = Vec::new();
    for b in receiver.try_iter() {
        match batches.last_mut() {
            Some(last) if last.decisions.len() < args.batch => last.merge(b),
            _ => batches.push(b),
        }
    }
    let decisions: usize = batches.iter().map(|b| b.decisions.len()).sum();

    // A scratch database on the given server.
    let mut admin = pg::connect_plain(&args.postgres).context("connecting to PostgreSQL")?;
    let url = config_url(&args.postgres, "vtpga_sinkbench");
    let fresh_database = |admin: &mut postgres::Client| -> Result<()> {
        admin.batch_execute("DROP DATABASE IF EXISTS vtpga_sinkbench")?;
        admin.batch_execute("CREATE DATABASE vtpga_sinkbench")?;
        let mut client = pg::connect(&url)?;
        pg::seed_reference(&mut client, &reference.regions, &reference.users)?;
        Ok(())
    };
    // Each consumer alone, then (with Redis) both as `vtpga run` drives them: the
    // PostgreSQL writers first, Redis following each commit on its own thread.
    let mut runs: Vec<(&str, bool, bool)> = vec![("postgres", true, false)];
    if args.redis.is_some() {
        runs.push(("redis", false, true));
        runs.push(("postgres+redis", true, true));
    }
    for (label, with_pg, with_redis) in runs {
        let mut record = Vec::new();
        if with_pg {
            fresh_database(&mut admin)?;
            let first = PgSink::new(&url, "sinkbench")?;
            for _ in 1..args.pg_writers {
                record.push(first.another()?);
            }
            record.insert(0, first);
        }
        let mut followers: Vec<Box<dyn Consumer>> = Vec::new();
        let mut redis_stats = None;
        if let (true, Some(redis_url)) = (with_redis, &args.redis) {
            let mut sink = RedisSink::new(redis_url, RedisOptions::default())?;
            // The first write is the rebuild of an empty cache: done before the clock.
            sink.apply(&Batch::default());
            redis_stats = Some(sink.stats_handle());
            followers.push(Box::new(sink));
        }
        let (sender, receiver) = crossbeam_channel::bounded::<Batch>(batches.len() + 1);
        for b in &batches {
            sender.send(b.clone())?;
        }
        drop(sender);
        let path = WritePath {
            record,
            producer: None,
            followers,
            max_batch: args.batch,
            stop: Default::default(),
        };
        let started = Instant::now();
        path.drive(receiver)?;
        let seconds = started.elapsed().as_secs_f64();
        let failures = redis_stats
            .and_then(|s| s.lock().ok().map(|s| s.failures))
            .unwrap_or(0);
        println!(
            "{label}: {decisions} decisions in {} batches in {seconds:.2} s = {:.0} decisions/s{}",
            batches.len(),
            decisions as f64 / seconds,
            if with_redis {
                format!(" ({failures} Redis failures)")
            } else {
                String::new()
            }
        );
    }
    admin.batch_execute("DROP DATABASE IF EXISTS vtpga_sinkbench")?;
    Ok(())
}

/// `url` with its database name replaced by `db`.
fn config_url(url: &str, db: &str) -> String {
    // postgres://user@host:port/db?params → keep everything but the path.
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let base = match base.find("://").map(|i| i + 3) {
        Some(start) => match base[start..].find('/') {
            Some(slash) => &base[..start + slash],
            None => base,
        },
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

//! `vtpga run`: the embedded main job. Generated reference data, an in-process generator
//! per worker at a fixed rate, the decision graph, and a live status line. The batches
//! channel is the seam where the dashboard, Kafka and the database sinks plug in.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use vtpga_ingest::generator::{Generator, GeneratorConfig};
use vtpga_ingest::live::{now_us, LiveFeed};
use vtpga_ingest::refdata::{generate_regions, generate_users};
use vtpga_sinks::monitor::Monitor;
use vtpga_sinks::Gather;

use crate::ParamArgs;
use vtpga::cluster::ClusterArgs;
use vtpga::pipeline::{self, PipelineSpec, Reference};

#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    /// Messages per second for the whole cluster, or `max` for as fast as the graph takes them.
    #[arg(long, env = "VTPGA_RATE", default_value = "5000")]
    pub rate: String,
    /// Stop after this many messages (default: run until Ctrl-C).
    #[arg(long, env = "VTPGA_COUNT")]
    pub count: Option<u64>,
    /// Generated users.
    #[arg(long, env = "VTPGA_USERS", default_value_t = 10_000)]
    pub users: usize,
    /// Generated regions beyond the 27 state capitals.
    #[arg(long, env = "VTPGA_EXTRA_REGIONS", default_value_t = 100)]
    pub extra_regions: usize,
    /// Seed of the generated data and messages.
    #[arg(long, env = "VTPGA_SEED", default_value_t = 42)]
    pub seed: u64,
    /// Messages a worker lets into the graph before waiting for them to be decided.
    #[arg(long, env = "VTPGA_MAX_IN_FLIGHT", default_value_t = 200_000)]
    pub max_in_flight: usize,
    #[command(flatten)]
    pub params: ParamArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

fn parse_rate(rate: &str) -> Result<Option<f64>> {
    if rate.eq_ignore_ascii_case("max") {
        return Ok(None);
    }
    let r: f64 = rate
        .parse()
        .with_context(|| format!("--rate must be a number or `max`, not {rate:?}"))?;
    if !(r.is_finite() && r > 0.0) {
        bail!("--rate must be positive, not {rate}");
    }
    Ok(Some(r))
}

pub fn run(args: RunArgs) -> Result<()> {
    let rate = parse_rate(&args.rate)?;
    let params = args.params.params()?;
    let config = args.cluster.config()?;
    let regions = generate_regions(args.extra_regions, args.seed);
    let users = generate_users(args.users, &regions, args.seed);
    if users.len() < 2 {
        bail!("--users must be at least 2");
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
    let seed = args.seed;
    eprintln!(
        "vtpga run: {} worker(s) x {} process(es), rate {}, {} users, {} regions{}",
        local_workers,
        args.cluster.processes,
        args.rate,
        reference.users.len(),
        reference.regions.len(),
        args.count
            .map(|n| format!(", {n} messages"))
            .unwrap_or_default()
    );
    let (sender, receiver) = crossbeam_channel::bounded(4096);
    let monitor = std::thread::spawn(move || {
        let mut monitor = Monitor::default();
        let started = Instant::now();
        let mut window = Instant::now();
        loop {
            match receiver.recv_timeout(Duration::from_millis(100)) {
                Ok(batch) => monitor.observe(batch, now_us()),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            }
            if window.elapsed() >= Duration::from_secs(1) {
                eprintln!("{}", monitor.window_line(window.elapsed().as_secs_f64()));
                window = Instant::now();
            }
        }
        (monitor, started.elapsed())
    });
    let feed_reference = reference.clone();
    let spec = PipelineSpec {
        config,
        reference,
        params,
        gather: Gather::PerWorker,
        max_in_flight: args.max_in_flight,
    };
    pipeline::execute(
        spec,
        move |index, peers| {
            // Each worker is one source partition with its share of the rate and count.
            let share = |total: u64| {
                total / peers as u64 + u64::from((index as u64) < total % peers as u64)
            };
            let cfg = GeneratorConfig {
                seed: seed.wrapping_add(index as u64),
                partitions: total_workers as i32,
                ..GeneratorConfig::default()
            };
            let generator = Generator::new(
                cfg,
                feed_reference.regions.clone(),
                feed_reference.users.clone(),
            );
            LiveFeed::new(
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
        },
        sender,
    )?;
    let (monitor, elapsed) = monitor
        .join()
        .map_err(|_| anyhow::anyhow!("the monitor thread panicked"))?;
    println!("{}", monitor.summary(elapsed.as_secs_f64()));
    Ok(())
}

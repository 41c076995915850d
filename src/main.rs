//! `vtpga`: the VT.PGA transaction approval pipeline.

mod bench;
mod control;
mod generate;
mod loadtest;
mod produce;
mod replay;
mod run;
mod seed;
mod sinkbench;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

// Messages are allocated by one worker and often freed by another (or by a consumer thread);
// mimalloc handles such cross-thread frees far better than glibc's malloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (mimalloc.h): how long freed memory stays with the
/// process before it is returned to the OS; -1 keeps it.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// The pipeline allocates and frees message containers at a steady rate: keeping freed
/// pages for reuse, rather than returning them and faulting fresh zeroed pages back in,
/// is worth about 15% of throughput (`vtpga bench`). Memory stays at the working set's
/// peak, which `--max-in-flight` bounds. `MIMALLOC_PURGE_DELAY` in the environment wins.
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: called at the start of `main`, before any other thread exists.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

#[derive(Parser)]
#[command(
    name = "vtpga",
    version,
    about = "VT.PGA real-time transaction approval on timely dataflow",
    long_about = "VT.PGA real-time transaction approval on timely dataflow.\n\n\
        With no subcommand, `vtpga` is `vtpga run`: it takes run's options below \
        (`vtpga --count 1000`, `vtpga --workers 2`).",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// `run`'s options, for `vtpga` without a subcommand.
    #[command(flatten)]
    run: run::RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// The embedded main job: generated data, in-process generator, live status.
    Run(Box<run::RunArgs>),
    /// Decide a capture file (SPEC §9) and write decisions, analyses and balances.
    Replay(replay::ReplayArgs),
    /// Write reference CSVs and a capture file of generated messages.
    Generate(generate::GenerateArgs),
    /// Measure the dataflow's throughput against the sequential reference.
    Bench(bench::BenchArgs),
    /// Publish generated transactions (or a capture's payloads) to Kafka.
    Produce(produce::ProduceArgs),
    /// Drive a running `vtpga run --source kafka` at fixed rates; report throughput and latency.
    Loadtest(loadtest::LoadtestArgs),
    /// Measure the PostgreSQL (and Redis) sinks' write rate.
    Sinkbench(sinkbench::SinkbenchArgs),
    /// Serve the dashboard and the query API from Redis (live) and PostgreSQL (history).
    Web(WebArgs),
    /// Create the PostgreSQL schema and fill regions and users (idempotent).
    Seed(seed::SeedArgs),
    /// Create the transactions, decisions and dead-letter topics if they are missing.
    Topics(TopicsArgs),
    /// Publish control records (SPEC §11: rule sets, users, adjustments, regions) to the
    /// control topic.
    Control(control::ControlArgs),
}

#[derive(Args, Clone, Debug)]
struct WebArgs {
    #[command(flatten)]
    serve: vtpga::args::WebServeArgs,
    /// Redis the pipeline writes to (live analyses and recent transactions).
    #[arg(long, env = "VTPGA_REDIS_URL")]
    redis: String,
    /// PostgreSQL the pipeline writes to (history, users, transactions by id).
    #[arg(long, env = "VTPGA_POSTGRES")]
    postgres: Option<String>,
}

#[derive(Args, Clone, Debug)]
struct TopicsArgs {
    #[command(flatten)]
    kafka: vtpga::kafka::KafkaArgs,
    /// Partitions of each new topic.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// The transactions topic refuses records stamped more than this ahead of the broker's
    /// clock (`message.timestamp.after.max.ms`, SPEC §4; the pipeline's own guard uses
    /// `run --max-clock-skew-ms`).
    #[arg(long, env = "VTPGA_MAX_CLOCK_SKEW_MS", default_value_t = 60_000)]
    max_clock_skew_ms: u64,
}

/// A seed of its own for this start: clock and process id mixed (generated messages must
/// not repeat an earlier run's ids).
fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mixed = nanos ^ (u64::from(std::process::id()) << 32);
    // splitmix64's finaliser: nearby clocks give unrelated seeds.
    let z = (mixed ^ (mixed >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A count that must be at least 1 (clap value parser).
fn at_least_one(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn main() -> Result<()> {
    tune_allocator();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    // With no subcommand, `vtpga` is `vtpga run` with the options given (and environment).
    let cli = Cli::parse();
    let command = cli
        .command
        .unwrap_or_else(|| Command::Run(Box::new(cli.run)));
    match command {
        Command::Run(args) => run::run(*args),
        Command::Replay(args) => replay::replay(args),
        Command::Generate(args) => generate::generate(args),
        Command::Bench(args) => bench::bench(args),
        Command::Produce(args) => produce::produce(args),
        Command::Loadtest(args) => loadtest::loadtest(args),
        Command::Seed(args) => seed::seed(args),
        Command::Web(args) => vtpga_web::run_standalone_with_limits(
            args.serve.config(),
            args.serve.limits.limits(),
            args.redis,
            args.postgres,
        ),
        Command::Sinkbench(args) => sinkbench::sinkbench(args),
        Command::Control(args) => control::control(args),
        Command::Topics(args) => vtpga::kafka::create_topics(
            &args.kafka,
            &[
                vtpga::kafka::TopicSpec::input(&args.kafka.topic, args.max_clock_skew_ms),
                vtpga::kafka::TopicSpec::input(&args.kafka.control_topic, args.max_clock_skew_ms),
                vtpga::kafka::TopicSpec::plain(&args.kafka.decisions_topic),
                vtpga::kafka::TopicSpec::plain(&args.kafka.dlq_topic),
            ],
            args.partitions,
        ),
    }
}

#[cfg(test)]
mod tests {
    /// The option number is mimalloc's own: its default (1000 ms in mimalloc 3's
    /// `options.c`) reads back.
    #[test]
    fn purge_delay_option_is_the_one_mimalloc_documents() {
        // SAFETY: reads an option.
        let delay = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert!(
            delay == 1000 || std::env::var_os("MIMALLOC_PURGE_DELAY").is_some(),
            "{delay}"
        );
    }
}

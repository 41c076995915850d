//! `vtpga`: the VT.PGA transaction approval pipeline.

mod bench;
mod generate;
mod loadtest;
mod produce;
mod replay;
mod run;
mod seed;
mod sinkbench;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use vtpga_dataflow::Params;

// Messages are allocated by one worker and often freed by another (or by a sink thread);
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
    Run(run::RunArgs),
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
}

#[derive(Args, Clone, Debug)]
struct WebArgs {
    /// Where to listen.
    #[arg(long, env = "VTPGA_WEB_LISTEN", default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// Bearer token required on every route.
    #[arg(long, env = "VTPGA_WEB_TOKEN")]
    token: Option<String>,
    /// Redis the pipeline writes to (live analyses and recent transactions).
    #[arg(long, env = "VTPGA_REDIS_URL")]
    redis: String,
    /// PostgreSQL the pipeline writes to (history, users, transactions by id).
    #[arg(long, env = "VTPGA_POSTGRES")]
    postgres: Option<String>,
    #[command(flatten)]
    limits: WebLimitArgs,
}

/// Bounds of the dashboard's live state and answers (SPEC §10 "bounded memory").
#[derive(Args, Clone, Debug)]
pub struct WebLimitArgs {
    /// Event-time minutes whose per-minute rows (analyses 9 and 10) the live views keep
    /// (the newest; PostgreSQL keeps all).
    #[arg(long, env = "VTPGA_WEB_LIVE_MINUTES", default_value_t = vtpga_web::DEFAULT_LIVE_MINUTES)]
    pub web_live_minutes: usize,
    /// Event-stream clients served at once; one more gets 503.
    #[arg(long, env = "VTPGA_WEB_STREAM_CLIENTS", default_value_t = vtpga_web::DEFAULT_STREAM_CLIENTS)]
    pub web_stream_clients: usize,
}

impl WebLimitArgs {
    pub fn limits(&self) -> vtpga_web::WebLimits {
        vtpga_web::WebLimits {
            live_minutes: self.web_live_minutes,
            stream_clients: self.web_stream_clients,
        }
    }
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

/// The rule parameters of SPEC §5.
#[derive(Args, Clone, Debug)]
pub struct ParamArgs {
    /// Event time may trail arrival by at most this much (rule 2) or lead it by at most
    /// this much (rule 1).
    #[arg(long, env = "VTPGA_MAX_DELAY_MS", default_value_t = 1000)]
    pub max_delay_ms: u64,
    /// A transaction id seen again within this window is a duplicate (rule 3).
    #[arg(long, env = "VTPGA_DEDUP_WINDOW_MS", default_value_t = 300_000)]
    pub dedup_window_ms: u64,
    /// Transactions whose combined risk exceeds this are rejected (rule 7).
    #[arg(long, env = "VTPGA_RISK_THRESHOLD", default_value_t = 0.5)]
    pub risk_threshold: f64,
    /// Transaction ids the duplicate table is sized for at start (about the ids expected
    /// within the window, e.g. rate x window); it grows beyond as needed. Sizing it spares
    /// the pauses of growing a large table while deciding.
    #[arg(long, env = "VTPGA_DEDUP_CAPACITY", default_value_t = 0)]
    pub dedup_capacity: usize,
    /// The graph's time grid in ms (a power of two): a message enters at the start of its
    /// cell and its decision leaves at the cell's end, so the graph pays per cell rather
    /// than per millisecond. Decisions are the same for every value; only when they leave
    /// changes. Default: 1 for `run` (live latency), chosen from the capture for `replay`
    /// (cells of at most 16,384 messages).
    #[arg(long, env = "VTPGA_EPOCH_MS", value_parser = epoch_ms)]
    pub epoch_ms: Option<u64>,
}

/// A power of two from 1 ms to 2^30 ms.
fn epoch_ms(s: &str) -> Result<u64, String> {
    let v: u64 = s.parse().map_err(|e| format!("{e}"))?;
    if v == 0 || !v.is_power_of_two() || v > 1 << 30 {
        return Err("must be a power of two from 1 to 1073741824".into());
    }
    Ok(v)
}

impl ParamArgs {
    pub fn params(&self) -> Result<Params> {
        if !self.risk_threshold.is_finite() {
            anyhow::bail!("--risk-threshold must be a finite number");
        }
        Ok(Params {
            max_delay_ms: self.max_delay_ms,
            dedup_window_ms: self.dedup_window_ms,
            risk_threshold: self.risk_threshold,
            dedup_capacity: self.dedup_capacity,
            epoch_ms: self.epoch_ms.unwrap_or(1),
        })
    }
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
    let command = cli.command.unwrap_or(Command::Run(cli.run));
    match command {
        Command::Run(args) => run::run(args),
        Command::Replay(args) => replay::replay(args),
        Command::Generate(args) => generate::generate(args),
        Command::Bench(args) => bench::bench(args),
        Command::Produce(args) => produce::produce(args),
        Command::Loadtest(args) => loadtest::loadtest(args),
        Command::Seed(args) => seed::seed(args),
        Command::Web(args) => vtpga_web::run_standalone_with_limits(
            vtpga_web::WebConfig {
                listen: args.listen,
                token: args.token,
            },
            args.limits.limits(),
            args.redis,
            args.postgres,
        ),
        Command::Sinkbench(args) => sinkbench::sinkbench(args),
        Command::Topics(args) => vtpga::kafka::create_topics(
            &args.kafka,
            &[
                vtpga::kafka::TopicSpec::input(&args.kafka.topic, args.max_clock_skew_ms),
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

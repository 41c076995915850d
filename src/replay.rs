//! `vtpga replay` (SPEC §9): decides a capture file and writes the decisions (JSON Lines,
//! ordered by arrival time then source position), the analyses JSON and the balances CSV.
//! The output is identical for any number of workers and processes: every process reads
//! the capture, each worker feeds its partitions, and worker 0 writes the files.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;

use vtpga_ingest::capture::index_capture_parallel;
use vtpga_ingest::refdata::{read_regions, read_users};
use vtpga_ingest::replay::{prepare_lines, split_lines_for_workers, CaptureFeed};
use vtpga_sinks::consumer::{Consumer, WritePath};
use vtpga_sinks::files::{ReplayFiles, ShadowFiles};
use vtpga_sinks::Gather;

use vtpga::args::{shadow_dir_name, ParamArgs, ShadowArgs};
use vtpga::cluster::ClusterArgs;
use vtpga::pipeline::{self, PipelineSpec, Reference, AUTO_EPOCH_CELL, AUTO_EPOCH_LIMIT_MS};

#[derive(Args, Clone, Debug)]
pub struct ReplayArgs {
    /// Capture file: JSON Lines of {"t", "partition", "offset", "payload"}.
    #[arg(long)]
    pub input: PathBuf,
    /// Regions CSV (id,uf,name,lat,lon).
    #[arg(long)]
    pub regions: PathBuf,
    /// Users CSV (id,name,region_id,balance_cents,credit_limit_cents).
    #[arg(long)]
    pub users: PathBuf,
    /// Where to write the decisions (JSON Lines).
    #[arg(long)]
    pub decisions: PathBuf,
    /// Where to write the analyses (JSON).
    #[arg(long)]
    pub analyses: PathBuf,
    /// Where to write every user's balance and credit used (CSV).
    #[arg(long)]
    pub balances: Option<PathBuf>,
    /// A directory where to write the reference data and rule sets in force at the end
    /// (SPEC §11): users.csv, regions.csv, rule_sets.csv.
    #[arg(long)]
    pub reference_out: Option<PathBuf>,
    /// Messages a worker lets into the graph before waiting for them to be decided (at
    /// least 1: with none the source could never take a message). A cell is taken whole
    /// even when it holds more. The default, two of the replay's largest cells, keeps the
    /// memory a replay touches small: on this machine a fresh page costs more than the
    /// work done with it (1,000,000 messages: 6.8 s with 1,000,000 in flight, 4.1–4.4 s
    /// with 30,000).
    #[arg(long, env = "VTPGA_MAX_IN_FLIGHT", default_value_t = 32_768, value_parser = crate::at_least_one)]
    pub max_in_flight: usize,
    #[command(flatten)]
    pub params: ParamArgs,
    #[command(flatten)]
    pub shadows: ShadowArgs,
    /// Where to write each shadow's outputs (SPEC §12): `DIR/VERSION/` gets its
    /// `decisions.jsonl`, `analyses.json` and `balances.csv` (as `replay --rules` with its
    /// set writes them) and its `what_if.json`.
    #[arg(long, value_name = "DIR", requires = "shadow")]
    pub shadow_out: Option<PathBuf>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

pub fn replay(args: ReplayArgs) -> Result<()> {
    let (mut params, rules) = args.params.params_and_rules()?;
    let shadows = args.shadows.sets()?;
    if !shadows.is_empty() && args.shadow_out.is_none() {
        anyhow::bail!("--shadow needs --shadow-out DIR: where to write what the shadows decide");
    }
    let config = args.cluster.config()?;
    let regions = read_regions(&args.regions)?;
    let users = read_users(&args.users)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Every line is checked and placed here; each worker reads and decodes its own lines
    // as its source takes them.
    let lines = index_capture_parallel(&args.input, threads)
        .with_context(|| format!("reading capture {}", args.input.display()))?;
    let (lines, redelivered) = prepare_lines(lines);
    // Live changes are followed only if the capture has control records.
    let live_changes = lines.iter().any(|(l, _)| l.control);
    if args.params.epoch_ms.is_none() {
        let times: Vec<_> = lines.iter().map(|&(_, t)| t).collect();
        params.epoch_ms = vtpga_dataflow::epoch_for(&times, AUTO_EPOCH_CELL, AUTO_EPOCH_LIMIT_MS);
    }
    log::info!(
        "replaying {} messages ({} re-deliveries skipped) on {} worker(s) x {} process(es), epoch {} ms",
        lines.len(),
        redelivered,
        args.cluster.workers,
        args.cluster.processes,
        params.epoch_ms
    );
    // Each worker of this process gets its share of the lines, and the file to read them.
    let (workers, peers) = (
        args.cluster.workers,
        args.cluster.workers * args.cluster.processes,
    );
    let first = args.cluster.process * workers;
    let shares = split_lines_for_workers(lines, first..first + workers, peers)
        .into_iter()
        .map(|share| {
            let file = std::fs::File::open(&args.input)
                .with_context(|| format!("opening capture {}", args.input.display()))?;
            Ok(std::sync::Mutex::new(Some(CaptureFeed::new(
                file,
                args.input.clone(),
                share,
            ))))
        })
        .collect::<Result<Vec<_>>>()?;
    // Process 0 writes the files; the others only decide their share.
    let mut followers: Vec<Box<dyn Consumer>> = Vec::new();
    let mut counts = None;
    if args.cluster.process == 0 {
        let files = ReplayFiles::create(
            &args.decisions,
            &args.analyses,
            args.balances.as_deref(),
            &vtpga_sinks::files::InitialReference {
                users: users.clone(),
                regions: regions.clone(),
                rules: rules.clone(),
            },
            args.reference_out.as_deref(),
        )
        .with_context(|| format!("creating {}", args.decisions.display()))?;
        counts = Some(files.counts.clone());
        followers.push(Box::new(files));
        if let Some(dir) = &args.shadow_out {
            let names: Vec<(String, String)> = shadows
                .iter()
                .map(|s| (s.version.to_string(), shadow_dir_name(&s.version)))
                .collect();
            let initial = vtpga_sinks::files::InitialReference {
                users: users.clone(),
                regions: regions.clone(),
                rules: rules.clone(),
            };
            let files = ShadowFiles::create(dir, &names, &initial)
                .with_context(|| format!("creating the shadows' outputs in {}", dir.display()))?;
            followers.push(Box::new(files));
        }
    }
    let reference = Arc::new(Reference { regions, users });
    let spec = PipelineSpec {
        config,
        reference,
        params,
        rules,
        live_changes,
        gather: Gather::ToWorkerZero,
        max_in_flight: args.max_in_flight,
        resume: Default::default(),
        view: None,
        shadows: vtpga_dataflow::graph::Shadows {
            sets: shadows,
            ledgers: true,
        },
    };
    let path = WritePath {
        record: Vec::new(),
        producer: None,
        followers,
        max_batch: 0,
        stop: Default::default(),
    };
    pipeline::run(
        spec,
        move |index, _peers| {
            shares
                .get(index - first)
                .and_then(|s| s.lock().ok().and_then(|mut s| s.take()))
                .expect("one capture feed per worker of this process")
        },
        path,
    )?;
    if let Some(counts) = counts {
        let counts = *counts.lock().expect("counts");
        let summary: Vec<String> = vtpga_dataflow::Status::ALL
            .iter()
            .zip(counts)
            .map(|(s, n)| format!("{}={}", s.as_str(), n))
            .collect();
        log::info!(
            "decided {} messages: {}",
            counts.iter().sum::<u64>(),
            summary.join(" ")
        );
    }
    Ok(())
}

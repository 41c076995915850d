//! `vtpga generate`: reference CSVs and a capture of generated messages (SPEC §9 format).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use vtpga_ingest::capture::generate_dataset_with_controls;
use vtpga_ingest::generator::GeneratorConfig;

#[derive(Args, Clone, Debug)]
pub struct GenerateArgs {
    /// Directory for regions.csv, users.csv and capture.jsonl.
    #[arg(long)]
    pub out: PathBuf,
    /// Messages in the capture.
    #[arg(long, default_value_t = 200_000)]
    pub count: usize,
    #[command(flatten)]
    pub generated: vtpga::args::GeneratedRefArgs,
    /// Kafka partitions the messages are spread over (by payer).
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Hours of arrival time the capture spans (at least 24 gives every local hour).
    #[arg(long, default_value_t = 26.0)]
    pub span_hours: f64,
    #[command(flatten)]
    pub faults: FaultArgs,
    #[command(flatten)]
    pub controls: vtpga::args::ControlRateArgs,
}

/// The share of each kind of faulty message (`vtpga generate` and `vtpga produce`).
#[derive(Args, Clone, Debug)]
pub struct FaultArgs {
    /// Share of messages that arrive late (rule 2).
    #[arg(long, default_value_t = 0.01)]
    pub late_share: f64,
    /// Share of messages re-sent with an id already used (rule 3).
    #[arg(long, default_value_t = 0.01)]
    pub duplicate_share: f64,
    /// Share of messages with an event time before the payer's last approval (rule 5).
    #[arg(long, default_value_t = 0.005)]
    pub stale_share: f64,
    /// Share of messages with an event time in the future (rule 1).
    #[arg(long, default_value_t = 0.002)]
    pub future_share: f64,
    /// Share of malformed messages (rule 1).
    #[arg(long, default_value_t = 0.005)]
    pub invalid_share: f64,
    /// Share of messages with unknown references or payer = payee (rule 4).
    #[arg(long, default_value_t = 0.005)]
    pub unknown_share: f64,
}

impl FaultArgs {
    /// A generator configuration with these shares (and the defaults otherwise).
    pub fn config(&self, seed: u64, partitions: i32) -> Result<GeneratorConfig> {
        let cfg = GeneratorConfig {
            seed,
            partitions,
            late_share: self.late_share,
            duplicate_share: self.duplicate_share,
            stale_share: self.stale_share,
            future_share: self.future_share,
            invalid_share: self.invalid_share,
            unknown_share: self.unknown_share,
            ..GeneratorConfig::default()
        };
        cfg.validate().map_err(anyhow::Error::msg)?;
        Ok(cfg)
    }
}

pub fn generate(args: GenerateArgs) -> Result<()> {
    let cfg = args.faults.config(args.generated.seed, args.partitions)?;
    let cfg = cfg.spanning(args.count, (args.span_hours * 3_600_000.0) as u64);
    // The capture is reproducible: rule versions `gen-1`, … and users `un000001`, ….
    let controls = args
        .controls
        .config(args.generated.seed, cfg.start_ms, String::new());
    let summary = generate_dataset_with_controls(
        &args.out,
        args.count,
        args.generated.users,
        args.generated.extra_regions,
        cfg,
        controls,
    )?;
    let controls = if summary.controls > 0 {
        format!(" (and {} control records)", summary.controls)
    } else {
        String::new()
    };
    println!(
        "wrote {} regions, {} users and {} messages{controls} to {}",
        summary.regions,
        summary.users,
        summary.messages,
        args.out.display()
    );
    Ok(())
}

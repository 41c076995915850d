//! `vtpga seed`: the original design's db-seed container. Creates the schema (embedded,
//! versioned migrations) and fills regions and users — generated like `vtpga generate`
//! does, or read from CSVs — leaving rows that exist alone, so re-running changes nothing.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use vtpga_ingest::refdata::{
    generate_regions, generate_users, read_regions, read_users, write_regions, write_users,
};
use vtpga_sinks::postgres as pg;

#[derive(Args, Clone, Debug)]
pub struct SeedArgs {
    /// PostgreSQL URL, e.g. postgres://vtpga@127.0.0.1:15432/vtpga
    #[arg(long, env = "VTPGA_POSTGRES")]
    pub postgres: String,
    #[command(flatten)]
    pub generated: vtpga::args::GeneratedRefArgs,
    /// Load these regions instead of generating them (with --users-csv).
    #[arg(long, requires = "users_csv")]
    pub regions_csv: Option<PathBuf>,
    /// Load these users instead of generating them (with --regions-csv).
    #[arg(long, requires = "regions_csv")]
    pub users_csv: Option<PathBuf>,
    /// Also write regions.csv and users.csv (SPEC §2) to this directory.
    #[arg(long)]
    pub csv: Option<PathBuf>,
}

pub fn seed(args: SeedArgs) -> Result<()> {
    let (regions, users) = match (&args.regions_csv, &args.users_csv) {
        (Some(r), Some(u)) => (read_regions(r)?, read_users(u)?),
        _ => {
            let regions = generate_regions(args.generated.extra_regions, args.generated.seed);
            let users = generate_users(args.generated.users, &regions, args.generated.seed);
            (regions, users)
        }
    };
    let mut client = pg::connect(&args.postgres).context("connecting to PostgreSQL")?;
    let (r, u) = pg::seed_reference(&mut client, &regions, &users)?;
    println!(
        "schema ready; inserted {r} of {} regions and {u} of {} users",
        regions.len(),
        users.len()
    );
    if let Some(dir) = &args.csv {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        write_regions(&dir.join("regions.csv"), &regions)?;
        write_users(&dir.join("users.csv"), &users)?;
        println!("wrote regions.csv and users.csv to {}", dir.display());
    }
    Ok(())
}

//! Worker and process layout: builds the timely configuration from our own flags
//! (timely's `-h`, `-n`, `-p` would clash with clap's help).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

#[derive(Args, Clone, Debug)]
pub struct ClusterArgs {
    /// Worker threads in this process.
    #[arg(short = 'w', long, env = "VTPGA_WORKERS", default_value_t = 1)]
    pub workers: usize,
    /// Processes in the cluster (each runs `--workers` threads).
    #[arg(long, env = "VTPGA_PROCESSES", default_value_t = 1)]
    pub processes: usize,
    /// This process's index, 0 ..= processes − 1.
    #[arg(long, env = "VTPGA_PROCESS", default_value_t = 0)]
    pub process: usize,
    /// File with one `host:port` per line, one line per process (default: localhost
    /// ports from `--base-port`).
    #[arg(long, env = "VTPGA_HOSTFILE")]
    pub hostfile: Option<PathBuf>,
    /// First port of the default localhost cluster addresses.
    #[arg(long, env = "VTPGA_BASE_PORT", default_value_t = 24_100)]
    pub base_port: u16,
}

impl ClusterArgs {
    pub fn single(workers: usize) -> Self {
        ClusterArgs {
            workers,
            processes: 1,
            process: 0,
            hostfile: None,
            base_port: 24_100,
        }
    }

    pub fn config(&self) -> Result<timely::Config> {
        use timely::CommunicationConfig;
        if self.workers == 0 {
            bail!("--workers must be at least 1");
        }
        if self.processes == 0 || self.process >= self.processes {
            bail!(
                "--process {} is not within 0..{} (--processes)",
                self.process,
                self.processes
            );
        }
        let communication = if self.processes == 1 {
            CommunicationConfig::Process(self.workers)
        } else {
            let addresses = match &self.hostfile {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("reading hostfile {}", path.display()))?;
                    let hosts: Vec<String> = text
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                        .map(String::from)
                        .collect();
                    if hosts.len() != self.processes {
                        bail!(
                            "hostfile {} lists {} hosts for {} processes",
                            path.display(),
                            hosts.len(),
                            self.processes
                        );
                    }
                    hosts
                }
                None => (0..self.processes)
                    .map(|i| format!("127.0.0.1:{}", self.base_port as usize + i))
                    .collect(),
            };
            CommunicationConfig::Cluster {
                threads: self.workers,
                process: self.process,
                addresses,
                report: false,
                zerocopy: false,
            }
        };
        Ok(timely::Config {
            communication,
            worker: timely::WorkerConfig::default(),
        })
    }
}

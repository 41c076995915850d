//! Flag groups several subcommands share: the rule parameters of SPEC §5, the generated
//! reference data, where and how the dashboard is served, and the generated control
//! records of SPEC §11.

use anyhow::Result;
use clap::Args;

use vtpga_dataflow::Params;

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
    /// The rule set in force from the start (SPEC §11): a JSON `rules` object without
    /// `type` (`version`, `risk_threshold`, `max_delay_ms`, `dedup_window_ms`). It
    /// replaces the three flags above; without it they make the rule set `"default"`.
    #[arg(long, env = "VTPGA_RULES")]
    pub rules: Option<std::path::PathBuf>,
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

    /// The rule set in force from the start: `--rules FILE`, or the flags as `"default"`.
    pub fn rules(&self) -> Result<vtpga_dataflow::RuleSet> {
        match &self.rules {
            None => Ok(vtpga_dataflow::RuleSet::of(&self.params()?, "default")),
            Some(path) => {
                let bytes = std::fs::read(path)
                    .map_err(|e| anyhow::anyhow!("reading --rules {}: {e}", path.display()))?;
                vtpga_dataflow::control::parse_rule_set(&bytes)
                    .map_err(|e| anyhow::anyhow!("--rules {}: {e}", path.display()))
            }
        }
    }

    /// The parameters and the initial rule set, the parameters' rule values being the
    /// rule set's.
    pub fn params_and_rules(&self) -> Result<(Params, vtpga_dataflow::RuleSet)> {
        let rules = self.rules()?;
        Ok((rules.apply_to(&self.params()?), rules))
    }
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

/// The generated reference data of SPEC §2 (`vtpga generate`, `vtpga seed`): the same
/// flags give the same regions and users.
#[derive(Args, Clone, Debug)]
pub struct GeneratedRefArgs {
    /// Generated users.
    #[arg(long, default_value_t = 10_000)]
    pub users: usize,
    /// Generated regions beyond the 27 state capitals.
    #[arg(long, default_value_t = 100)]
    pub extra_regions: usize,
    /// Seed of the generated data (same seed, same data in `generate` and `seed`; for
    /// `generate` also the messages').
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// Where the dashboard and the query API listen, and their token (`vtpga run`, embedded;
/// `vtpga web`, standalone). `vtpga web` also takes `--listen` and `--token`.
#[derive(Args, Clone, Debug)]
pub struct WebServeArgs {
    /// Where the dashboard and the query API listen.
    #[arg(
        long = "web-listen",
        visible_alias = "listen",
        env = "VTPGA_WEB_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub web_listen: std::net::SocketAddr,
    /// Bearer token required on every dashboard and API route.
    #[arg(long = "web-token", visible_alias = "token", env = "VTPGA_WEB_TOKEN")]
    pub web_token: Option<String>,
    #[command(flatten)]
    pub limits: WebLimitArgs,
}

impl WebServeArgs {
    /// The server's configuration.
    pub fn config(&self) -> vtpga_web::WebConfig {
        vtpga_web::WebConfig {
            listen: self.web_listen,
            token: self.web_token.clone(),
        }
    }
}

/// Generated control records (SPEC §11) mixed into generated transactions: `vtpga
/// generate` (capture lines of the control topic), `vtpga produce` (published to the
/// control topic) and the embedded generator of `vtpga run`.
#[derive(Args, Clone, Debug)]
pub struct ControlRateArgs {
    /// Generated control records per second of arrival time (user creations, updates,
    /// deletions and re-creations, balance adjustments, region changes, new rule sets, a
    /// few invalid ones for the dead-letter path); 0 for none.
    #[arg(long, env = "VTPGA_CONTROL_RATE", default_value_t = 0.0, value_parser = control_rate)]
    pub control_rate: f64,
    /// Partitions of the control topic the generated control records are spread over, by
    /// entity id (`produce` lets the producer's partitioner place them by that key).
    #[arg(
        long,
        env = "VTPGA_CONTROL_PARTITIONS",
        default_value_t = vtpga_ingest::changes::DEFAULT_CONTROL_PARTITIONS,
        value_parser = clap::value_parser!(i32).range(1..=1024)
    )]
    pub control_partitions: i32,
}

/// A finite rate >= 0.
fn control_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if !(v.is_finite() && v >= 0.0) {
        return Err("must be a finite number >= 0".into());
    }
    Ok(v)
}

impl ControlRateArgs {
    /// The control generator's configuration (`None` at rate 0): seeded with `seed`,
    /// its own clock starting at `start_ms`, its names tagged with `tag` (empty for
    /// `gen-1`, `un000001`, …; a live source gives
    /// [`vtpga_ingest::changes::ControlConfig::tag_for_seed`]).
    pub fn config(
        &self,
        seed: u64,
        start_ms: u64,
        tag: String,
    ) -> Option<vtpga_ingest::changes::ControlConfig> {
        (self.control_rate > 0.0).then(|| vtpga_ingest::changes::ControlConfig {
            seed,
            rate_per_sec: self.control_rate,
            start_ms,
            partitions: self.control_partitions,
            tag,
            ..Default::default()
        })
    }
}

/// Shadow rule sets (SPEC §12).
#[derive(Args, Clone, Debug, Default)]
pub struct ShadowArgs {
    /// A shadow rule set (repeatable): a JSON `rules` object without `type`, as
    /// `--rules`, whose `version` names the shadow. The transaction messages are decided
    /// again under it, as if it had been in force from the start, by a ledger of its own
    /// that follows every control change except `rules` records; its decisions are never
    /// decisions of record.
    #[arg(long = "shadow", value_name = "FILE")]
    pub shadow: Vec<std::path::PathBuf>,
}

impl ShadowArgs {
    /// The shadow rule sets, in the order given; their versions must differ.
    pub fn sets(&self) -> Result<Vec<vtpga_dataflow::RuleSet>> {
        let mut sets: Vec<vtpga_dataflow::RuleSet> = Vec::new();
        for path in &self.shadow {
            let bytes = std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("reading --shadow {}: {e}", path.display()))?;
            let set = vtpga_dataflow::control::parse_rule_set(&bytes)
                .map_err(|e| anyhow::anyhow!("--shadow {}: {e}", path.display()))?;
            if sets.iter().any(|s| s.version == set.version) {
                anyhow::bail!(
                    "--shadow {}: another shadow is already named {:?}",
                    path.display(),
                    set.version
                );
            }
            sets.push(set);
        }
        Ok(sets)
    }
}

/// A shadow's version as a directory name: kept as it is when it is made of ASCII
/// letters, digits, `.`, `_` and `-` (and is not `.` or `..`); otherwise every other byte
/// percent-encoded (`%2F` for `/`).
pub fn shadow_dir_name(version: &str) -> String {
    let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.');
    let mut name: String = version
        .bytes()
        .map(|b| {
            if plain(b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    if name.is_empty() || name == "." || name == ".." {
        name = name.replace('.', "%2E");
        if name.is_empty() {
            name = "%".to_owned();
        }
    }
    name
}

#[cfg(test)]
mod shadow_tests {
    use super::shadow_dir_name;

    #[test]
    fn shadow_versions_become_safe_directory_names() {
        assert_eq!(shadow_dir_name("strict-0.4_v2"), "strict-0.4_v2");
        assert_eq!(shadow_dir_name("a/b c"), "a%2Fb%20c");
        assert_eq!(shadow_dir_name(".."), "%2E%2E");
        assert_eq!(shadow_dir_name("é"), "%C3%A9");
    }
}

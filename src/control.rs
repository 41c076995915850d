//! `vtpga control`: publishes control records (SPEC §11) to the control topic: a new rule
//! set, a user created or updated, deleted, a balance adjustment, a region created or
//! replaced, deleted, or the records of a JSON Lines file.
//!
//! Every record is checked with the pipeline's own parser (`parse_control`) before
//! anything is sent: one the pipeline would refuse is refused here, with its error, and
//! with `--file` a bad line sends nothing. Each record is keyed by its entity id (the
//! user, the region, the rule set's version) and the command prints the partition and
//! offset the broker gave it.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Message};

use vtpga_dataflow::control::{control_json, parse_control};
use vtpga_dataflow::model::{Change, ControlRecord, Params, Region, RuleSet, User};
use vtpga_dataflow::parse::parse_event_time;
use vtpga_ingest::changes::entity_key;
use vtpga_sinks::kafka::send_with_backpressure;

use vtpga::kafka::KafkaArgs;

#[derive(Args, Clone, Debug)]
pub struct ControlArgs {
    /// The brokers and, with `--control-topic`, the topic records go to.
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Publish the control records of this file instead: JSON Lines, one record per line
    /// (typed or Debezium), sent as they are once every line has been checked.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Check and print the records (with their keys) without publishing them.
    #[arg(long)]
    pub dry_run: bool,
    /// Producer acknowledgements: 0, 1 or all.
    #[arg(long, default_value = "all")]
    pub acks: String,
    /// How long to wait for the broker to acknowledge every record.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub timeout: Duration,
    #[command(subcommand)]
    pub record: Option<RecordArgs>,
}

/// When a change takes effect (SPEC §11: `T = max(t_c, effective_from)`).
#[derive(Args, Clone, Debug)]
pub struct WhenArgs {
    /// Take effect no earlier than this event time (SPEC §3 form, e.g.
    /// `2026-11-26T14:00:00-03:00`; without an offset, Brasília time).
    #[arg(long, value_parser = effective_from)]
    pub effective_from: Option<i64>,
}

/// The running pipeline's query API, read by `--from-shadow`.
#[derive(Args, Clone, Debug)]
pub struct ApiArgs {
    /// Its base URL (`vtpga run --web-listen`).
    #[arg(long = "api", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Its bearer token, if it wants one (`vtpga run --web-token`).
    #[arg(long = "api-token", env = "VTPGA_WEB_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl ApiArgs {
    /// `GET path` as JSON.
    fn get_json(&self, path: &str) -> Result<serde_json::Value> {
        let url = format!("{}{path}", self.url.trim_end_matches('/'));
        let mut request = ureq::get(&url);
        if let Some(token) = &self.token {
            request = request.header("Authorization", &format!("Bearer {token}"));
        }
        let mut response = request
            .call()
            .with_context(|| format!("GET {url} (is `vtpga run` serving there? --api)"))?;
        response
            .body_mut()
            .read_json()
            .with_context(|| format!("GET {url}: not the JSON expected"))
    }
}

/// The rule set of the shadow `version` in a `GET /api/whatif` answer.
pub fn shadow_rule_set(what_if: &serde_json::Value, version: &str) -> Result<RuleSet> {
    let shadows = what_if["shadows"]
        .as_array()
        .ok_or_else(|| anyhow!("not a /api/whatif answer: {what_if}"))?;
    let Some(shadow) = shadows.iter().find(|s| s["version"] == version) else {
        let known: Vec<String> = shadows.iter().map(|s| s["version"].to_string()).collect();
        bail!(
            "the pipeline has no shadow {version:?} (its shadows: {})",
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        );
    };
    let rules = &shadow["rules"];
    let number = |field: &str| {
        rules[field]
            .as_f64()
            .ok_or_else(|| anyhow!("shadow {version:?}: no {field} in {rules}"))
    };
    let whole = |field: &str| {
        rules[field]
            .as_u64()
            .ok_or_else(|| anyhow!("shadow {version:?}: no {field} in {rules}"))
    };
    Ok(RuleSet {
        version: version.to_owned(),
        risk_threshold: number("risk_threshold")?,
        max_delay_ms: whole("max_delay_ms")?,
        dedup_window_ms: whole("dedup_window_ms")?,
    })
}

/// The SPEC §3 event-time form, as ms since the Unix epoch.
fn effective_from(s: &str) -> Result<i64, String> {
    parse_event_time(s).map_err(|e| e.to_string())
}

/// One control record, from flags.
#[derive(Subcommand, Clone, Debug)]
pub enum RecordArgs {
    /// A new rule set (`rules`); values not given are SPEC §5's defaults.
    Rules {
        /// Its name, carried by every decision it decides; never used before. With
        /// `--from-shadow`, the shadow's version unless given.
        #[arg(long, required_unless_present = "from_shadow")]
        version: Option<String>,
        /// Rule 7: a higher combined risk is rejected.
        #[arg(long, allow_hyphen_values = true, default_value_t = Params::default().risk_threshold)]
        risk_threshold: f64,
        /// Rules 1–2: how far event time may trail or lead arrival.
        #[arg(long, default_value_t = Params::default().max_delay_ms)]
        max_delay_ms: u64,
        /// Rule 3: the duplicate window.
        #[arg(long, default_value_t = Params::default().dedup_window_ms)]
        dedup_window_ms: u64,
        /// Promote a shadow rule set (SPEC §12): publish the parameters of the running
        /// pipeline's shadow with this version, as its `GET /api/whatif` gives them
        /// (`--api`), instead of the three flags above.
        #[arg(long, conflicts_with_all = ["risk_threshold", "max_delay_ms", "dedup_window_ms"])]
        from_shadow: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
        #[command(flatten)]
        when: WhenArgs,
    },
    /// Create a user, or update an existing one's name, home region and credit limit
    /// (`user`; an existing user's balance is not changed by it).
    User {
        #[arg(long)]
        id: String,
        #[arg(long)]
        name: String,
        /// Home region.
        #[arg(long)]
        region_id: String,
        /// Opening balance of a new user (>= 0).
        #[arg(long, allow_hyphen_values = true)]
        balance_cents: i64,
        /// Credit limit (>= 0).
        #[arg(long, allow_hyphen_values = true)]
        credit_limit_cents: i64,
        #[command(flatten)]
        when: WhenArgs,
    },
    /// Delete a user and its state (`user_delete`).
    UserDelete {
        #[arg(long)]
        id: String,
        #[command(flatten)]
        when: WhenArgs,
    },
    /// Add to (or, negative, take from) a user's balance (`balance_adjustment`).
    Adjust {
        /// The user.
        #[arg(long)]
        user: String,
        /// Cents added; non-zero, either sign.
        #[arg(long, allow_hyphen_values = true)]
        amount_cents: i64,
        #[command(flatten)]
        when: WhenArgs,
    },
    /// Create or replace a region (`region`).
    Region {
        #[arg(long)]
        id: String,
        /// One of the 27 state codes (SP, RJ, …).
        #[arg(long)]
        uf: String,
        #[arg(long)]
        name: String,
        /// Latitude in degrees, -90 to 90.
        #[arg(long, allow_hyphen_values = true)]
        lat: f64,
        /// Longitude in degrees, -180 to 180.
        #[arg(long, allow_hyphen_values = true)]
        lon: f64,
        #[command(flatten)]
        when: WhenArgs,
    },
    /// Delete a region (`region_delete`): its users are unknown references until it is
    /// back.
    RegionDelete {
        #[arg(long)]
        id: String,
        #[command(flatten)]
        when: WhenArgs,
    },
}

impl RecordArgs {
    /// The control record these flags describe (`--from-shadow` reads the pipeline's API).
    pub fn record(&self) -> Result<ControlRecord> {
        let (change, when) = match self.clone() {
            RecordArgs::Rules {
                from_shadow: Some(shadow),
                version,
                api,
                when,
                ..
            } => {
                let set = shadow_rule_set(&api.get_json("/api/whatif")?, &shadow)?;
                (
                    Change::Rules(RuleSet {
                        version: version.unwrap_or(set.version),
                        ..set
                    }),
                    when,
                )
            }
            RecordArgs::Rules {
                version,
                risk_threshold,
                max_delay_ms,
                dedup_window_ms,
                when,
                ..
            } => (
                Change::Rules(RuleSet {
                    version: version.expect("clap requires --version without --from-shadow"),
                    risk_threshold,
                    max_delay_ms,
                    dedup_window_ms,
                }),
                when,
            ),
            RecordArgs::User {
                id,
                name,
                region_id,
                balance_cents,
                credit_limit_cents,
                when,
            } => (
                Change::User(User {
                    id,
                    name,
                    region_id,
                    balance_cents,
                    credit_limit_cents,
                }),
                when,
            ),
            RecordArgs::UserDelete { id, when } => (Change::UserDelete { id }, when),
            RecordArgs::Adjust {
                user,
                amount_cents,
                when,
            } => (
                Change::Adjust {
                    user_id: user,
                    amount_cents,
                },
                when,
            ),
            RecordArgs::Region {
                id,
                uf,
                name,
                lat,
                lon,
                when,
            } => (
                Change::Region(Region {
                    id,
                    uf,
                    name,
                    lat,
                    lon,
                }),
                when,
            ),
            RecordArgs::RegionDelete { id, when } => (Change::RegionDelete { id }, when),
        };
        Ok(ControlRecord {
            change,
            effective_from: when.effective_from,
        })
    }
}

/// A record ready to send: its key and its text.
#[derive(Clone, Debug, PartialEq)]
pub struct Outgoing {
    pub key: String,
    pub payload: String,
}

/// The typed JSON of `record`, checked as the pipeline will read it: refused with the
/// pipeline's error if it breaks a SPEC §11 field rule.
pub fn checked(record: &ControlRecord) -> Result<Outgoing> {
    let payload = control_json(record);
    let parsed = parse_control(payload.as_bytes()).map_err(|e| anyhow!("refused: {e}"))?;
    if &parsed != record {
        bail!("refused: {payload} reads back as {parsed:?}");
    }
    Ok(Outgoing {
        key: entity_key(&record.change).to_owned(),
        payload,
    })
}

/// The records of a JSON Lines file, each checked; the first bad line is an error naming
/// it. Blank lines are skipped; each line is sent as it is (without its line ending).
pub fn read_file(path: &std::path::Path) -> Result<Vec<Outgoing>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        let record = parse_control(line.as_bytes())
            .map_err(|e| anyhow!("{}: line {}: {e}", path.display(), i + 1))?;
        out.push(Outgoing {
            key: entity_key(&record.change).to_owned(),
            payload: line.to_owned(),
        });
    }
    if out.is_empty() {
        bail!("{}: no control record in it", path.display());
    }
    Ok(out)
}

/// Where each record went: (partition, offset), or the broker's error.
type Deliveries = Mutex<Vec<Option<Result<(i32, i64), String>>>>;

/// A producer context that notes each record's delivery by its index.
struct Reporter {
    deliveries: Deliveries,
}

impl ClientContext for Reporter {}

impl ProducerContext for Reporter {
    type DeliveryOpaque = usize;
    fn delivery(&self, result: &DeliveryResult<'_>, index: usize) {
        let outcome = match result {
            Ok(m) => Ok((m.partition(), m.offset())),
            Err((e, _)) => Err(e.to_string()),
        };
        if let Ok(mut d) = self.deliveries.lock() {
            if let Some(slot) = d.get_mut(index) {
                *slot = Some(outcome);
            }
        }
    }
}

pub fn control(args: ControlArgs) -> Result<()> {
    let records = match (&args.file, &args.record) {
        (Some(path), None) => read_file(path)?,
        (None, Some(record)) => vec![checked(&record.record()?)?],
        (Some(_), Some(_)) => bail!("give either --file or a record subcommand, not both"),
        (None, None) => bail!(
            "give a record (rules, user, user-delete, adjust, region, region-delete) or --file"
        ),
    };
    let topic = &args.kafka.control_topic;
    if topic.is_empty() && !args.dry_run {
        bail!("no control topic to publish to (--control-topic)");
    }
    if args.dry_run {
        for r in &records {
            println!("key {}: {}", r.key, r.payload);
        }
        eprintln!("{} record(s) checked, none sent (--dry-run)", records.len());
        return Ok(());
    }
    let producer: ThreadedProducer<Reporter> =
        crate::produce::producer_config(&args.kafka, &args.acks, 0, 1_000_000)?
            .create_with_context(Reporter {
                deliveries: Mutex::new(vec![None; records.len()]),
            })
            .context("creating the Kafka producer")?;
    for (i, r) in records.iter().enumerate() {
        let record = BaseRecord::with_opaque_to(topic, i)
            .key(r.key.as_str())
            .payload(r.payload.as_str());
        send_with_backpressure(&producer, record)
            .with_context(|| format!("producing a control record to {topic}"))?;
    }
    producer
        .flush(args.timeout)
        .with_context(|| format!("waiting for {} to acknowledge", args.kafka.brokers))?;
    let deliveries = std::mem::take(
        &mut *producer
            .context()
            .deliveries
            .lock()
            .map_err(|_| anyhow!("delivery reports lost"))?,
    );
    let mut failed = 0;
    for (r, d) in records.iter().zip(deliveries) {
        match d {
            Some(Ok((partition, offset))) => {
                println!(
                    "{topic} partition {partition} offset {offset} key {}: {}",
                    r.key, r.payload
                )
            }
            Some(Err(e)) => {
                failed += 1;
                eprintln!("not sent (key {}): {e}: {}", r.key, r.payload);
            }
            None => {
                failed += 1;
                eprintln!("no delivery report (key {}): {}", r.key, r.payload);
            }
        }
    }
    if failed > 0 {
        bail!(
            "{failed} of {} control record(s) not delivered",
            records.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ControlArgs,
    }

    fn parse(argv: &[&str]) -> ControlArgs {
        Cli::try_parse_from(std::iter::once("control").chain(argv.iter().copied()))
            .unwrap_or_else(|e| panic!("{argv:?}: {e}"))
            .args
    }

    fn record(argv: &[&str]) -> ControlRecord {
        parse(argv)
            .record
            .expect("a record subcommand")
            .record()
            .expect("a record from flags")
    }

    /// `--from-shadow` takes the shadow's parameters from `/api/whatif`, its version
    /// unless `--version` is given, and refuses a shadow the pipeline does not have.
    #[test]
    fn a_shadow_is_promoted_with_its_own_parameters() {
        let api = serde_json::json!({"shadows": [
            {"version": "loose", "rules": {"version": "loose", "risk_threshold": 0.9,
             "max_delay_ms": 5000, "dedup_window_ms": 60000}, "decided": 3, "what_if": []},
            {"version": "strict", "rules": {"version": "strict", "risk_threshold": 0.3,
             "max_delay_ms": 500, "dedup_window_ms": 3600000}, "decided": 3, "what_if": []},
        ]});
        let set = shadow_rule_set(&api, "strict").expect("strict is there");
        assert_eq!(
            set,
            RuleSet {
                version: "strict".to_owned(),
                risk_threshold: 0.3,
                max_delay_ms: 500,
                dedup_window_ms: 3_600_000,
            }
        );
        let err = shadow_rule_set(&api, "nope").expect_err("no such shadow");
        assert!(
            err.to_string().contains("\"loose\", \"strict\""),
            "names the shadows there are: {err}"
        );
        assert!(shadow_rule_set(&serde_json::json!({"shadows": []}), "x")
            .expect_err("none")
            .to_string()
            .contains("none"));
        // The flags: no --version needed, the parameters may not be given too.
        let args = parse(&[
            "rules",
            "--from-shadow",
            "strict",
            "--api",
            "http://127.0.0.1:1",
        ]);
        match args.record {
            Some(RecordArgs::Rules {
                from_shadow,
                version,
                api,
                ..
            }) => {
                assert_eq!(from_shadow.as_deref(), Some("strict"));
                assert_eq!(version, None);
                assert_eq!(api.url, "http://127.0.0.1:1");
            }
            other => panic!("parsed as {other:?}"),
        }
        assert!(Cli::try_parse_from([
            "control",
            "rules",
            "--from-shadow",
            "strict",
            "--risk-threshold",
            "0.4"
        ])
        .is_err());
        assert!(Cli::try_parse_from(["control", "rules", "--risk-threshold", "0.4"]).is_err());
        // Nothing serving there: a clear error, nothing published.
        let err = parse(&[
            "rules",
            "--from-shadow",
            "strict",
            "--api",
            "http://127.0.0.1:1",
        ])
        .record
        .expect("a record subcommand")
        .record()
        .expect_err("no pipeline there");
        assert!(
            format!("{err:#}").contains("is `vtpga run` serving there?"),
            "{err:#}"
        );
    }

    /// Flags → ControlRecord → JSON → parse_control gives the same record back, keyed by
    /// its entity id.
    #[test]
    fn flags_map_to_records_that_read_back() {
        let cases: Vec<(Vec<&str>, ControlRecord, &str)> = vec![
            (
                vec!["rules", "--version", "v2", "--risk-threshold", "0.4"],
                ControlRecord {
                    change: Change::Rules(RuleSet {
                        version: "v2".into(),
                        risk_threshold: 0.4,
                        max_delay_ms: 1000,
                        dedup_window_ms: 300_000,
                    }),
                    effective_from: None,
                },
                "v2",
            ),
            (
                vec![
                    "rules",
                    "--version",
                    "v3",
                    "--max-delay-ms",
                    "2000",
                    "--dedup-window-ms",
                    "60000",
                    "--effective-from",
                    "2026-11-26T10:00:00-03:00",
                ],
                ControlRecord {
                    change: Change::Rules(RuleSet {
                        version: "v3".into(),
                        risk_threshold: 0.5,
                        max_delay_ms: 2000,
                        dedup_window_ms: 60_000,
                    }),
                    // 13:00 UTC.
                    effective_from: Some(1_795_698_000_000),
                },
                "v3",
            ),
            (
                vec![
                    "user",
                    "--id",
                    "u1",
                    "--name",
                    "Ana Souza",
                    "--region-id",
                    "r025",
                    "--balance-cents",
                    "150000",
                    "--credit-limit-cents",
                    "0",
                    "--effective-from",
                    "2026-11-26 13:00:00.5",
                ],
                ControlRecord {
                    change: Change::User(User {
                        id: "u1".into(),
                        name: "Ana Souza".into(),
                        region_id: "r025".into(),
                        balance_cents: 150_000,
                        credit_limit_cents: 0,
                    }),
                    // Brasília time without an offset.
                    effective_from: Some(1_795_708_800_500),
                },
                "u1",
            ),
            (
                vec!["user-delete", "--id", "u1"],
                ControlRecord {
                    change: Change::UserDelete { id: "u1".into() },
                    effective_from: None,
                },
                "u1",
            ),
            (
                vec!["adjust", "--user", "u7", "--amount-cents", "-2500"],
                ControlRecord {
                    change: Change::Adjust {
                        user_id: "u7".into(),
                        amount_cents: -2500,
                    },
                    effective_from: None,
                },
                "u7",
            ),
            (
                vec![
                    "region",
                    "--id",
                    "r1",
                    "--uf",
                    "SP",
                    "--name",
                    "São Paulo",
                    "--lat",
                    "-23.55",
                    "--lon",
                    "-46.63",
                ],
                ControlRecord {
                    change: Change::Region(Region {
                        id: "r1".into(),
                        uf: "SP".into(),
                        name: "São Paulo".into(),
                        lat: -23.55,
                        lon: -46.63,
                    }),
                    effective_from: None,
                },
                "r1",
            ),
            (
                vec!["region-delete", "--id", "r1"],
                ControlRecord {
                    change: Change::RegionDelete { id: "r1".into() },
                    effective_from: None,
                },
                "r1",
            ),
        ];
        for (argv, want, key) in cases {
            let got = record(&argv);
            assert_eq!(got, want, "{argv:?}");
            let out = checked(&got).unwrap();
            assert_eq!(out.key, key);
            assert_eq!(parse_control(out.payload.as_bytes()).unwrap(), want);
        }
        // The typed form, exactly.
        let out = checked(&record(&["adjust", "--user", "u7", "--amount-cents=-2500"])).unwrap();
        assert_eq!(
            out.payload,
            r#"{"type":"balance_adjustment","user_id":"u7","amount_cents":-2500}"#
        );
    }

    /// What the pipeline would refuse is refused before anything is sent.
    #[test]
    fn records_the_pipeline_refuses_are_refused() {
        for (argv, error) in [
            (
                vec!["adjust", "--user", "u7", "--amount-cents", "0"],
                "amount_cents",
            ),
            (
                vec![
                    "user",
                    "--id",
                    "u1",
                    "--name",
                    "A",
                    "--region-id",
                    "r1",
                    "--balance-cents",
                    "-1",
                    "--credit-limit-cents",
                    "0",
                ],
                "balance_cents",
            ),
            (
                vec![
                    "region", "--id", "r1", "--uf", "XX", "--name", "N", "--lat", "0", "--lon", "0",
                ],
                "uf",
            ),
            (
                vec![
                    "region", "--id", "r1", "--uf", "SP", "--name", "N", "--lat", "91", "--lon",
                    "0",
                ],
                "lat",
            ),
            (vec!["rules", "--version", ""], "version"),
            (
                vec!["rules", "--version", "v", "--risk-threshold", "-0.1"],
                "risk_threshold",
            ),
            (vec!["user-delete", "--id", ""], "id"),
        ] {
            let e = checked(&record(&argv)).unwrap_err().to_string();
            assert!(
                e.starts_with("refused: ") && e.contains(error),
                "{argv:?}: {e}"
            );
        }
        // A bad effective time is a usage error.
        assert!(Cli::try_parse_from([
            "control",
            "user-delete",
            "--id",
            "u1",
            "--effective-from",
            "2026-13-01T00:00:00Z"
        ])
        .is_err());
    }

    #[test]
    fn a_file_is_checked_whole_and_sent_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("changes.jsonl");
        let lines = [
            r#"{"type": "rules", "version": "v9", "risk_threshold": 0.4, "max_delay_ms": 1000, "dedup_window_ms": 300000}"#,
            "",
            r#"{"op": "d", "source": {"table": "regions"}, "before": {"id": "r2"}}"#,
        ];
        std::fs::write(&path, lines.join("\r\n")).unwrap();
        let args = parse(&["--file", path.to_str().unwrap()]);
        assert!(args.record.is_none());
        let got = read_file(args.file.as_deref().unwrap()).unwrap();
        assert_eq!(
            got,
            vec![
                Outgoing {
                    key: "v9".into(),
                    payload: lines[0].into()
                },
                Outgoing {
                    key: "r2".into(),
                    payload: lines[2].into()
                },
            ]
        );
        std::fs::write(
            &path,
            format!("{}\n\n{}\n", lines[0], r#"{"type":"user","id":"Z"}"#),
        )
        .unwrap();
        let e = read_file(&path).unwrap_err().to_string();
        assert!(e.contains("line 3:") && e.contains("missing field"), "{e}");
    }
}

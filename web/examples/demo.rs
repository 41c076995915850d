//! A dashboard fed with synthetic decisions, for working on the page without the pipeline:
//!
//! ```sh
//! cargo run -p vtpga-web --example demo -- [LISTEN] [RATE]   # default 127.0.0.1:8080, 2000 tx/s
//! ```
//!
//! Event time runs 20 times faster than the wall clock, so the per-minute charts fill up
//! within a minute. The numbers are made up (statuses drawn at random); the rows are
//! accumulated with the real `TallyBatch` and fed as `count_total` changes. Every few
//! seconds a made-up control record (SPEC §11) is applied or refused, and every 30 s a new
//! rule set is announced, pending for 10 s, then in force.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use vtpga_dataflow::analyses::{AnalysisKey, Assessed, Tally, TallyBatch};
use vtpga_dataflow::graph::{ControlOutcome, Decision, OutcomeKind};
use vtpga_dataflow::model::{Change, ControlRecord, RuleSet, User};
use vtpga_dataflow::rules;
use vtpga_dataflow::{Mode, SourcePos, Status, Tx};
use vtpga_sinks::monitor::now_us;
use vtpga_sinks::Batch;
use vtpga_web::{LiveState, WebConfig};

const UFS: [&str; 27] = [
    "AC", "AL", "AP", "AM", "BA", "CE", "DF", "ES", "GO", "MA", "MT", "MS", "MG", "PA", "PB", "PR",
    "PE", "PI", "RJ", "RN", "RS", "RO", "RR", "SC", "SP", "SE", "TO",
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:8080".into())
        .parse()?;
    let rate: f64 = args.next().map_or(Ok(2000.0), |r| r.parse())?;
    let state = LiveState::new(2);
    let server = vtpga_web::spawn_embedded_with(
        WebConfig {
            listen,
            token: None,
        },
        state.clone(),
        None,
    )?;
    eprintln!("demo dashboard on http://{}/ ({rate} tx/s)", server.addr);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut rows: BTreeMap<AnalysisKey, Tally> = BTreeMap::new();
    let start = Instant::now();
    let start_ms = (now_us() / 1000) as i64 - 3 * 3_600_000;
    let mut offset = 0i64;
    let tick = Duration::from_millis(10);
    let mut control_offset = 0i64;
    let mut version = "default".to_owned();
    let mut next_rules: Option<(u64, RuleSet, SourcePos, u64)> = None;
    let mut ticks = 0u64;
    loop {
        std::thread::sleep(tick);
        ticks += 1;
        let n = (rate * tick.as_secs_f64() * (0.6 + 0.8 * rng.unit())).round() as usize;
        let now = now_us();
        let t = now / 1000;
        let event_base = start_ms + start.elapsed().as_millis() as i64 * 20;
        let mut tallies = TallyBatch::default();
        let mut decisions = Vec::with_capacity(n);
        for _ in 0..n {
            offset += 1;
            let event_ms = event_base - rng.below(900) as i64;
            let mode = Mode::ALL[rng.below(4)];
            let amount = (10f64.powf(0.5 + 4.2 * rng.unit().powf(1.6)) * 100.0) as i64 + 1;
            let hour = rules::local_hour(event_ms);
            let km = 2000.0 * rng.unit().powi(3);
            let scores = rules::scores(amount, hour, km);
            let u = rng.unit();
            let status = if u < 0.007 {
                Status::Invalid
            } else if u < 0.017 {
                Status::Late
            } else if u < 0.027 {
                Status::Duplicate
            } else if u < 0.032 {
                Status::UnknownReference
            } else if u < 0.035 {
                Status::Stale
            } else if scores.risk > 0.5 {
                Status::RejectedRisk
            } else if u < 0.21 + 0.1 * (amount as f64 / 1e6).min(1.0) {
                if mode.uses_credit() {
                    Status::InsufficientLimit
                } else {
                    Status::InsufficientBalance
                }
            } else {
                Status::Approved
            };
            tallies.add_status(status);
            let uf = UFS[(rng.below(27) + rng.below(27)) / 2];
            if status.is_assessed() {
                let a = Assessed {
                    approved: status == Status::Approved,
                    status,
                    amount_cents: amount,
                    mode,
                    local_hour: hour,
                    minute: event_ms.div_euclid(60_000),
                    value_risk: scores.value_risk,
                    hour_risk: scores.hour_risk,
                    home_band: rules::distance_band(km),
                };
                tallies.add_assessed(&a, uf);
            }
            decisions.push(Decision {
                pos: SourcePos {
                    partition: (offset % 4) as i32,
                    offset,
                },
                t,
                ingest_us: now - 800 - rng.below(1500) as u64,
                status,
                tx: (status != Status::Invalid).then(|| Tx {
                    id: format!("{:016x}", rng.next()).into(),
                    payer: format!("u{:06}", rng.below(10_000)).into(),
                    payee: format!("u{:06}", rng.below(10_000)).into(),
                    region: uf.into(),
                    mode,
                    amount_cents: amount,
                    event_ms,
                }),
                scores: status.is_assessed().then_some(scores),
                reason: None,
                raw: None,
                home_band: None,
                uf: None,
                rules_version: version.as_str().into(),
            });
        }
        let mut controls = Vec::new();
        let control = |kind: OutcomeKind, at: u64, offset: &mut i64| {
            *offset += 1;
            ControlOutcome {
                pos: SourcePos {
                    partition: 0,
                    offset: *offset,
                },
                t,
                at,
                arrived: true,
                kind,
            }
        };
        if let Some((at, rules, pos, arrived_t)) = next_rules.take() {
            if at <= t {
                version = rules.version.clone();
                controls.push(ControlOutcome {
                    pos,
                    t: arrived_t,
                    at,
                    arrived: false,
                    kind: OutcomeKind::Applied(Change::Rules(rules)),
                });
            } else {
                next_rules = Some((at, rules, pos, arrived_t));
            }
        }
        if ticks.is_multiple_of(3000) {
            let rules = RuleSet {
                version: format!("demo-{}", ticks / 3000),
                risk_threshold: [0.45, 0.5, 0.55, 0.6][rng.below(4)],
                max_delay_ms: 1000,
                dedup_window_ms: [60_000, 300_000][rng.below(2)],
            };
            let at = t + 10_000;
            let c = control(
                OutcomeKind::Scheduled(ControlRecord {
                    change: Change::Rules(rules.clone()),
                    effective_from: Some(at as i64),
                }),
                at,
                &mut control_offset,
            );
            next_rules = Some((at, rules, c.pos, t));
            controls.push(c);
        } else if ticks.is_multiple_of(250) {
            let id = format!("u{:06}", rng.below(10_000));
            let kind = match rng.below(5) {
                0 => OutcomeKind::Applied(Change::Adjust {
                    user_id: id,
                    amount_cents: rng.below(20_000) as i64 - 10_000,
                }),
                1 => OutcomeKind::Rejected {
                    raw: format!("{{\"type\":\"balance_adjustment\",\"user_id\":\"x{id}\",\"amount_cents\":500}}")
                        .into_bytes(),
                    error: "balance_adjustment of a user that does not exist at its effective time"
                        .into(),
                },
                2 => OutcomeKind::Applied(Change::UserDelete { id }),
                _ => OutcomeKind::Applied(Change::User(User {
                    name: format!("Cliente {}", &id[1..]),
                    id,
                    region_id: UFS[rng.below(27)].into(),
                    balance_cents: 100_000 + rng.below(1_000_000) as i64,
                    credit_limit_cents: 50_000,
                })),
            };
            controls.push(control(kind, t, &mut control_offset));
        }
        let mut deltas: Vec<(AnalysisKey, Tally)> = Vec::new();
        let mut by_state: Vec<(AnalysisKey, Tally)> = Vec::new();
        tallies.drain(
            |k, t| deltas.push((k, t)),
            |region, t| by_state.push((AnalysisKey::State(region), t)),
        );
        deltas.append(&mut by_state);
        let mut changes = Vec::new();
        for (key, delta) in deltas {
            let old = rows.get(&key).copied();
            let mut new = old.unwrap_or_default();
            differential_plus(&mut new, &delta);
            if let Some(old) = old {
                changes.push(((key.clone(), old), -1));
            }
            changes.push(((key.clone(), new), 1));
            rows.insert(key, new);
        }
        state.observe(
            &Batch {
                time: t,
                decisions,
                accounts: Vec::new(),
                analyses: changes,
                controls,
                shadows: Vec::new(),
            },
            now_us(),
        );
    }
}

fn differential_plus(a: &mut Tally, b: &Tally) {
    a.count += b.count;
    a.approved += b.approved;
    a.rejected += b.rejected;
    a.approved_amount_cents += b.approved_amount_cents;
    a.rejected_amount_cents += b.rejected_amount_cents;
}

//! The dataflow against the sequential reference (`vtpga-reference`, written from the SPEC
//! independently of the graph): random captures built to hit every rule and boundary,
//! decided by 1, 2 and 3 workers, must give the reference's decisions, scores, balances
//! and analyses.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::Value;

use vtpga::cluster::ClusterArgs;
use vtpga::pipeline::{self, PipelineSpec, Reference};
use vtpga_dataflow::analyses;
use vtpga_dataflow::calendar::format_utc_ms;
use vtpga_dataflow::control::{control_json, parse_control};
use vtpga_dataflow::graph::OutcomeKind;
use vtpga_dataflow::{Change, ControlRecord, RuleSet};
use vtpga_dataflow::{Params, Region, User};
use vtpga_ingest::capture::CaptureRecord;
use vtpga_ingest::replay::{for_worker, prepare};
use vtpga_ingest::source::VecFeed;
use vtpga_reference::{RefChange, RefControl, RefMsg, RefRegion, RefRules, RefTx, RefUser};
use vtpga_sinks::{Batch, Gather};

/// Small parameters so that random steps cross their boundaries often.
const MAX_DELAY: u64 = 3;
const WINDOW: u64 = 6;
/// 2026-11-26T08:59:59.990Z = 05:59:59.990 local: steps cross from hour_risk 1.0 to 0.5.
const BASE_T: u64 = 1_795_683_599_990;

fn regions() -> Vec<Region> {
    let r = |id: &str, uf: &str, lat: f64, lon: f64| Region {
        id: id.into(),
        uf: uf.into(),
        name: id.into(),
        lat,
        lon,
    };
    vec![
        r("r1", "SP", -23.55, -46.63),
        r("r2", "SP", -23.60, -46.70), // ~10 km from r1
        r("r3", "RJ", -22.90, -43.17), // ~360 km
        r("r4", "AM", -3.12, -60.02),  // ~2700 km
    ]
}

fn users() -> Vec<User> {
    let u = |id: &str, region: &str, balance: i64, limit: i64| User {
        id: id.into(),
        name: id.into(),
        region_id: region.into(),
        balance_cents: balance,
        credit_limit_cents: limit,
    };
    vec![
        u("A", "r1", 2_000_000, 0),
        u("B", "r1", 0, 1_500_000),
        u("C", "r3", 50_000, 100_000),
        u("D", "r4", 1_200_000, 2_000_000),
        u("E", "r2", 0, 0),
    ]
}

#[derive(Clone, Debug)]
struct Step {
    dt: u64,
    partition: i32,
    /// Replay an earlier position instead of a new message.
    redeliver: Option<usize>,
    invalid: bool,
    id: u8,
    payer: u8,
    payee: u8,
    region: u8,
    mode: u8,
    amount: i64,
    /// E − t.
    skew: i64,
    /// A control record (SPEC §11) instead of a message.
    ctl: Option<Ctl>,
}

/// A control record of the model: which change, about whom, with which values.
#[derive(Clone, Debug)]
struct Ctl {
    /// Control partition (its own clock, as a message partition has).
    partition: i32,
    kind: u8,
    who: u8,
    region: u8,
    cents: i64,
    limit: i64,
    version: u8,
    rules: (u8, u8, u8),
    /// `effective_from` relative to the record's timestamp.
    effective: Option<i64>,
}

fn ctl() -> impl Strategy<Value = Ctl> {
    (
        0..2i32,
        0..9u8,
        0..6u8,
        0..5u8,
        prop_oneof![
            Just(1i64),
            Just(-1),
            Just(40_000),
            Just(-50_000),
            Just(100_000),
            Just(0),
            -2_000_000..2_000_000i64
        ],
        prop_oneof![Just(0i64), Just(50_000), Just(1_500_000), 0..3_000_000i64],
        0..5u8,
        (0..4u8, 0..3u8, 0..4u8),
        prop::option::weighted(
            0.3,
            prop_oneof![
                Just(-3i64),
                Just(0),
                Just(1),
                Just(2),
                Just(WINDOW as i64),
                1..30i64
            ],
        ),
    )
        .prop_map(
            |(partition, kind, who, region, cents, limit, version, rules, effective)| Ctl {
                partition,
                kind,
                who,
                region,
                cents,
                limit,
                version,
                rules,
                effective,
            },
        )
}

/// A step that is a control record one time in `1 / p`.
fn live_step() -> impl Strategy<Value = Step> {
    (step(), prop::option::weighted(0.2, ctl())).prop_map(|(mut s, c)| {
        s.ctl = c;
        s
    })
}

fn step() -> impl Strategy<Value = Step> {
    (
        prop_oneof![
            Just(0u64),
            Just(0),
            Just(1),
            Just(2),
            Just(WINDOW),
            Just(WINDOW + 1),
            0..20u64
        ],
        0..4i32,
        prop::option::weighted(0.05, 0..1000usize),
        prop::bool::weighted(0.05),
        0..6u8,
        0..6u8,
        0..6u8,
        0..5u8,
        0..4u8,
        prop_oneof![
            Just(1i64),
            Just(50_000),
            Just(100_000),
            Just(100_001),
            Just(30_000),
            Just(40_000),
            Just(550_000),
            Just(1_000_000),
            Just(1_500_000),
            1..2_500_000i64
        ],
        prop_oneof![
            Just(0i64),
            Just(-(MAX_DELAY as i64)),
            Just(-(MAX_DELAY as i64) - 1),
            Just(MAX_DELAY as i64),
            Just(MAX_DELAY as i64 + 1),
            -5..5i64,
            -200..0i64
        ],
    )
        .prop_map(
            |(dt, partition, redeliver, invalid, id, payer, payee, region, mode, amount, skew)| {
                Step {
                    ctl: None,
                    dt,
                    partition,
                    redeliver,
                    invalid,
                    id,
                    payer,
                    payee,
                    region,
                    mode,
                    amount,
                    skew,
                }
            },
        )
}

const IDS: [&str; 6] = ["t-a", "t-b", "t-c", "t-d", "t-e", "T-a"];
const PEOPLE: [&str; 6] = ["A", "B", "C", "D", "E", "Z"];
const REGIONS: [&str; 5] = ["r1", "r2", "r3", "r4", "r9"];
const MODES: [&str; 4] = ["pix", "debito", "credito", "boleto"];

/// The control record of a step and the reference's reading of it (`None`: it does not
/// parse, so it is invalid), with its payload as the control topic would carry it.
fn control_payload(c: &Ctl, record_ts: u64) -> (String, Option<RefChange>, Option<i64>) {
    let who = PEOPLE[c.who as usize];
    let region = REGIONS[c.region as usize];
    let effective_from = c.effective.map(|d| record_ts as i64 + d);
    let user = |balance: i64| User {
        id: who.into(),
        name: format!("{who}-{}", c.version),
        region_id: region.into(),
        balance_cents: balance,
        credit_limit_cents: c.limit,
    };
    let change = match c.kind {
        0 => Some(Change::User(user(c.cents.abs()))),
        1 => Some(Change::UserDelete { id: who.into() }),
        2 => Some(Change::Adjust {
            user_id: who.into(),
            amount_cents: c.cents,
        }),
        3 => {
            let (uf, lat, lon) = [
                ("SP", -23.55, -46.63),
                ("RJ", -22.90, -43.17),
                ("AM", -3.12, -60.02),
                ("SP", -23.60, -46.70),
                ("RJ", -23.0, -43.5),
            ][c.version as usize];
            Some(Change::Region(Region {
                id: region.into(),
                uf: uf.into(),
                name: region.into(),
                lat,
                lon,
            }))
        }
        4 => Some(Change::RegionDelete { id: region.into() }),
        5 | 8 => Some(Change::Rules(RuleSet {
            version: ["v1", "v2", "v3", "default", "v1"][c.version as usize].into(),
            risk_threshold: [0.0, 0.3, 0.5, 0.9][c.rules.0 as usize],
            max_delay_ms: [1, 3, 10][c.rules.1 as usize],
            dedup_window_ms: [0, 2, 6, 20][c.rules.2 as usize],
        })),
        _ => None,
    };
    let payload = match (c.kind, change) {
        (_, Some(change)) => control_json(&ControlRecord {
            change,
            effective_from,
        }),
        // A Debezium change event of the users table (with the envelope one time in two).
        (7, None) => {
            let event = if c.cents < 0 {
                serde_json::json!({"op": "d", "source": {"table": "users"}, "before": {"id": who}})
            } else {
                let u = user(c.cents);
                serde_json::json!({"op": if c.limit % 2 == 0 { "c" } else { "u" },
                    "source": {"table": "users"},
                    "after": {"id": u.id, "name": u.name, "region_id": u.region_id,
                        "balance_cents": u.balance_cents, "credit_limit_cents": u.credit_limit_cents}})
            };
            if c.version.is_multiple_of(2) {
                serde_json::json!({"schema": {}, "payload": event}).to_string()
            } else {
                event.to_string()
            }
        }
        // A user record without its fields: invalid.
        _ => format!("{{\"type\": \"user\", \"id\": \"{who}\"}}"),
    };
    let parsed = parse_control(payload.as_bytes()).ok();
    let effective_from = parsed.as_ref().and_then(|r| r.effective_from);
    let change = parsed.map(|r| vtpga::oracle::ref_change(r.change));
    (payload, change, effective_from)
}

/// What a capture holds, for the reference: a message or a control record.
#[derive(Clone)]
enum Item {
    Msg(RefMsg),
    Ctl(RefControl),
}

/// The capture (as a Kafka consumer would have recorded it) and the same messages and
/// control records for the reference. Record timestamps go up and down a little per
/// partition, so clamping matters; positions are sometimes re-delivered.
fn capture(steps: &[Step]) -> (Vec<CaptureRecord>, Vec<RefMsg>) {
    let (records, msgs, _) = live_capture(steps);
    (records, msgs)
}

/// [`capture`] with the control records.
fn live_capture(steps: &[Step]) -> (Vec<CaptureRecord>, Vec<RefMsg>, Vec<RefControl>) {
    let mut records: Vec<CaptureRecord> = Vec::new();
    let mut items: Vec<Item> = Vec::new();
    let mut offsets = [0i64; 4];
    let mut ctl_offsets = [0i64; 2];
    let mut t = BASE_T;
    for s in steps {
        t += s.dt;
        if let Some(i) = s.redeliver.filter(|_| !records.is_empty()) {
            let i = i % records.len();
            records.push(records[i].clone());
            items.push(items[i].clone());
            continue;
        }
        if let Some(c) = &s.ctl {
            let record_ts = t - (c.partition as u64 % 2) * 2;
            let offset = ctl_offsets[c.partition as usize];
            ctl_offsets[c.partition as usize] += 1;
            let (payload, change, effective_from) = control_payload(c, record_ts);
            records.push(CaptureRecord {
                t: record_ts,
                partition: c.partition,
                offset,
                payload,
                refused: None,
                control: true,
            });
            items.push(Item::Ctl(RefControl {
                record_ts,
                partition: c.partition,
                offset,
                effective_from,
                change,
            }));
            continue;
        }
        // Partition clocks lag behind each other: record_ts may go backwards.
        let record_ts = t - (s.partition as u64 % 2) * 3;
        let offset = offsets[s.partition as usize];
        offsets[s.partition as usize] += 1;
        let tx = RefTx {
            id: IDS[s.id as usize].into(),
            payer: PEOPLE[s.payer as usize].into(),
            payee: PEOPLE[s.payee as usize].into(),
            region: REGIONS[s.region as usize].into(),
            mode: MODES[s.mode as usize].into(),
            amount_cents: s.amount,
            event_ms: record_ts as i64 + s.skew,
        };
        let payload = if s.invalid {
            "{\"id_transacao\": 1}".to_owned()
        } else {
            serde_json::json!({
                "id_transacao": tx.id,
                "id_usuario_pagador": tx.payer,
                "id_usuario_recebedor": tx.payee,
                "id_regiao": tx.region,
                "modalidade_pagamento": tx.mode,
                "data_horario": format_utc_ms(tx.event_ms),
                "valor_transacao": format!("{}.{:02}", tx.amount_cents / 100, tx.amount_cents % 100),
            })
            .to_string()
        };
        records.push(CaptureRecord {
            t: record_ts,
            partition: s.partition,
            offset,
            payload,
            refused: None,
            control: false,
        });
        items.push(Item::Msg(RefMsg {
            record_ts,
            partition: s.partition,
            offset,
            tx: (!s.invalid).then_some(tx),
        }));
    }
    let (mut msgs, mut controls) = (Vec::new(), Vec::new());
    for item in items {
        match item {
            Item::Msg(m) => msgs.push(m),
            Item::Ctl(c) => controls.push(c),
        }
    }
    (records, msgs, controls)
}

/// (t, status, scores, rules version) of one decision.
type Seen = (u64, String, Option<[f64; 4]>, String);

struct Observed {
    decisions: BTreeMap<(i32, i64), Seen>,
    balances: BTreeMap<String, (i64, i64)>,
    analyses: Value,
    /// Control positions that changed nothing.
    invalid_controls: BTreeSet<(i32, i64)>,
}

fn run_dataflow(records: Vec<CaptureRecord>, workers: usize, params: Params) -> Observed {
    run_with_shadows(records, workers, params, Vec::new(), true).0
}

/// What one ledger (of record, or a shadow's) produced, as batches bring it.
#[derive(Default)]
struct Ledger {
    decisions: BTreeMap<(i32, i64), Seen>,
    accounts: BTreeMap<String, (i64, i64)>,
    rows: BTreeMap<analyses::AnalysisKey, analyses::Tally>,
}

impl Ledger {
    fn add(
        &mut self,
        decisions: Vec<vtpga_dataflow::graph::Decision>,
        accounts: Vec<vtpga_dataflow::graph::Account>,
        changes: Vec<vtpga_sinks::AnalysisChange>,
    ) {
        for d in decisions {
            let scores = d
                .scores
                .map(|s| [s.value_risk, s.hour_risk, s.distance_risk, s.risk]);
            let previous = self.decisions.insert(
                (d.pos.partition, d.pos.offset),
                (
                    d.t,
                    d.status.as_str().to_owned(),
                    scores,
                    d.rules_version.to_string(),
                ),
            );
            assert!(previous.is_none(), "one decision per source position");
        }
        for a in accounts {
            if a.deleted {
                self.accounts.remove(&a.user);
            } else {
                self.accounts
                    .insert(a.user, (a.balance_cents, a.credit_used_cents));
            }
        }
        analyses::apply_changes(&mut self.rows, changes);
    }

    /// With the users that exist at the end (their opening balances).
    fn observed(
        self,
        users: &BTreeMap<String, i64>,
        invalid_controls: BTreeSet<(i32, i64)>,
    ) -> Observed {
        let balances = users
            .iter()
            .map(|(id, opening)| {
                let account = self.accounts.get(id).copied().unwrap_or((*opening, 0));
                (id.clone(), account)
            })
            .collect();
        Observed {
            decisions: self.decisions,
            balances,
            analyses: analyses::to_json(&self.rows),
            invalid_controls,
        }
    }
}

/// What-if rows as the graph maintains them.
type WhatIf = BTreeMap<analyses::WhatIfKey, analyses::WhatIfTally>;

/// The dataflow with `shadows` (SPEC §12): what the ledger of record produced, and each
/// shadow's, with its what-if rows; `live`: whether the graph follows control records
/// (without, the rule set of record never changes and shadows may share its rules 1–3).
fn run_with_shadows(
    records: Vec<CaptureRecord>,
    workers: usize,
    params: Params,
    shadows: Vec<RuleSet>,
    live: bool,
) -> (Observed, Vec<(Observed, WhatIf)>) {
    let messages = Arc::new(prepare(records).messages);
    let reference = Arc::new(Reference {
        regions: regions(),
        users: users(),
    });
    let (sender, receiver) = crossbeam_channel::unbounded::<Batch>();
    let count = shadows.len();
    let spec = PipelineSpec {
        config: ClusterArgs::single(workers).config().expect("config"),
        reference: reference.clone(),
        params,
        rules: vtpga_dataflow::RuleSet::of(&params, "default"),
        live_changes: live,
        gather: Gather::ToWorkerZero,
        max_in_flight: 1000,
        resume: Default::default(),
        view: None,
        shadows: vtpga_dataflow::graph::Shadows {
            sets: shadows,
            ledgers: true,
        },
    };
    pipeline::execute(
        spec,
        move |index, peers| VecFeed::new(for_worker(&messages, index, peers)),
        sender,
    )
    .expect("pipeline runs");
    // The users that exist, with their opening balances.
    let mut users: BTreeMap<String, i64> = reference
        .users
        .iter()
        .map(|u| (u.id.clone(), u.balance_cents))
        .collect();
    let mut invalid_controls = BTreeSet::new();
    let mut primary = Ledger::default();
    let mut shadowed: Vec<(Ledger, WhatIf)> = (0..count).map(|_| Default::default()).collect();
    let mut last_time = 0;
    for batch in receiver.try_iter() {
        assert!(batch.time >= last_time, "batches arrive in time order");
        last_time = batch.time;
        assert!(
            batch.shadows.len() <= count,
            "no more shadows than asked for"
        );
        for c in batch.controls {
            match c.kind {
                OutcomeKind::Applied(Change::User(u)) => {
                    users.insert(u.id, u.balance_cents);
                }
                OutcomeKind::Applied(Change::UserDelete { id }) => {
                    users.remove(&id);
                }
                OutcomeKind::Rejected { .. } => {
                    assert!(
                        invalid_controls.insert((c.pos.partition, c.pos.offset)),
                        "one outcome per control position"
                    );
                }
                _ => {}
            }
        }
        primary.add(batch.decisions, batch.accounts, batch.analyses);
        for (part, (ledger, what_if)) in batch.shadows.into_iter().zip(shadowed.iter_mut()) {
            ledger.add(part.decisions, part.accounts, part.analyses);
            analyses::apply_what_if(what_if, part.what_if);
        }
    }
    let shadows = shadowed
        .into_iter()
        .map(|(ledger, what_if)| (ledger.observed(&users, BTreeSet::new()), what_if))
        .collect();
    (primary.observed(&users, invalid_controls), shadows)
}

/// Rows in a canonical order, all-zero rows dropped (the SPEC lets either side omit them).
fn normalise(analyses: &Value) -> BTreeMap<String, Vec<String>> {
    let obj = analyses.as_object().expect("analyses is an object");
    obj.iter()
        .map(|(name, rows)| {
            let mut rows: Vec<String> = rows
                .as_array()
                .expect("rows")
                .iter()
                .filter(|row| {
                    name == "status_counts"
                        || row.as_object().expect("row").iter().any(|(k, v)| {
                            ["approved", "rejected", "count"].contains(&k.as_str())
                                && v.as_i64() != Some(0)
                        })
                })
                .map(|row| row.to_string())
                .collect();
            rows.sort();
            (name.clone(), rows)
        })
        .collect()
}

/// The model's parameters, with the graph's time grid of `epoch_ms`.
fn params(epoch_ms: u64) -> Params {
    Params {
        max_delay_ms: MAX_DELAY,
        dedup_window_ms: WINDOW,
        risk_threshold: 0.5,
        dedup_capacity: 0,
        epoch_ms,
    }
}

/// Cases per property: `VTPGA_MODEL_CASES`, 256 by default.
fn cases() -> u32 {
    std::env::var("VTPGA_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// [`check_with`] one millisecond per round only.
fn check(steps: &[Step]) -> Result<(), TestCaseError> {
    check_with(steps, 1)
}

/// The dataflow with 1, 2 and 3 workers, deciding one millisecond per cell and `epoch_ms`
/// per cell, against the reference.
fn check_with(steps: &[Step], epoch_ms: u64) -> Result<(), TestCaseError> {
    let (records, msgs, controls) = live_capture(steps);
    let (ref_regions, ref_users) = ref_reference();
    let expected =
        vtpga_reference::run_live(&ref_regions, &ref_users, &msgs, &controls, &default_rules());
    let epochs = if epoch_ms == 1 {
        vec![1]
    } else {
        vec![1, epoch_ms]
    };
    for (workers, epoch_ms) in [1, 2, 3]
        .into_iter()
        .flat_map(|w| epochs.iter().map(move |&e| (w, e)))
    {
        let got = run_dataflow(records.clone(), workers, params(epoch_ms));
        matches_reference(&got, &expected, workers, epoch_ms, true)?;
    }
    Ok(())
}

/// The model's rule set of record, as the reference takes it (the graph's is
/// `RuleSet::of(&params(_), "default")`).
fn default_rules() -> RefRules {
    RefRules {
        version: "default".into(),
        max_delay_ms: MAX_DELAY,
        dedup_window_ms: WINDOW,
        risk_threshold: 0.5,
    }
}

/// The model's reference data as the reference implementation takes it.
fn ref_reference() -> (Vec<RefRegion>, Vec<RefUser>) {
    let regions: Vec<RefRegion> = regions()
        .into_iter()
        .map(|r| {
            let Region {
                id, uf, lat, lon, ..
            } = r;
            RefRegion { id, uf, lat, lon }
        })
        .collect();
    let users: Vec<RefUser> = users()
        .into_iter()
        .map(|u| RefUser {
            id: u.id,
            region_id: u.region_id,
            balance_cents: u.balance_cents,
            credit_limit_cents: u.credit_limit_cents,
        })
        .collect();
    (regions, users)
}

/// The shadows of the properties below: one stricter in every rule, one looser, one
/// that differs from the rules of record in its threshold only (rules 1–3 shared when the
/// rules of record cannot change).
fn shadow_sets() -> Vec<RuleSet> {
    vec![
        RuleSet {
            version: "threshold".into(),
            risk_threshold: 0.4,
            max_delay_ms: MAX_DELAY,
            dedup_window_ms: WINDOW,
        },
        RuleSet {
            version: "strict".into(),
            risk_threshold: 0.3,
            max_delay_ms: MAX_DELAY - 1,
            dedup_window_ms: WINDOW * 2,
        },
        RuleSet {
            version: "loose".into(),
            risk_threshold: 0.8,
            max_delay_ms: MAX_DELAY + 2,
            dedup_window_ms: WINDOW / 2,
        },
    ]
}

/// The dataflow with three shadows (SPEC §12), with 1, 2 and 3 workers, one millisecond
/// and `epoch_ms` per cell: the ledger of record is the reference's run without shadows;
/// each shadow is the reference's run with its rule set from the start and the control
/// records, the `rules` ones changing nothing; its what-if rows are the pairs of statuses of record and
/// shadow statuses, with the amounts of the messages that parsed, counted here.
fn check_shadows(steps: &[Step], epoch_ms: u64) -> Result<(), TestCaseError> {
    let (records, msgs, controls) = live_capture(steps);
    // Without control records the graph need not follow them (as `replay` does not).
    let live = !controls.is_empty();
    let (ref_regions, ref_users) = ref_reference();
    let primary_expected =
        vtpga_reference::run_live(&ref_regions, &ref_users, &msgs, &controls, &default_rules());
    // A shadow ignores the change of a `rules` record, not the record: it still arrived,
    // so it still counts for the end of input and for its control partition's clock.
    // Here it changes nothing (the reference counts it invalid, which is not compared).
    let no_rules: Vec<RefControl> = controls
        .iter()
        .map(|c| match c.change {
            Some(RefChange::Rules(_)) => RefControl {
                change: None,
                ..c.clone()
            },
            _ => c.clone(),
        })
        .collect();
    let sets = shadow_sets();
    let expected: Vec<vtpga_reference::RefOutput> = sets
        .iter()
        .map(|set| {
            vtpga_reference::run_live(
                &ref_regions,
                &ref_users,
                &msgs,
                &no_rules,
                &RefRules {
                    version: set.version.clone(),
                    max_delay_ms: set.max_delay_ms,
                    dedup_window_ms: set.dedup_window_ms,
                    risk_threshold: set.risk_threshold,
                },
            )
        })
        .collect();
    // The amount of each position whose message parsed.
    let amounts: BTreeMap<(i32, i64), i64> = msgs
        .iter()
        .filter_map(|m| Some(((m.partition, m.offset), m.tx.as_ref()?.amount_cents)))
        .collect();
    for workers in [1, 2, 3] {
        for epoch_ms in [1, epoch_ms] {
            let (primary, shadows) = run_with_shadows(
                records.clone(),
                workers,
                params(epoch_ms),
                sets.clone(),
                live,
            );
            matches_reference(&primary, &primary_expected, workers, epoch_ms, true)?;
            prop_assert_eq!(shadows.len(), sets.len());
            for ((got, what_if), want) in shadows.iter().zip(&expected) {
                matches_reference(got, want, workers, epoch_ms, false)?;
                let mut pairs: BTreeMap<(String, String), (i64, i128)> = BTreeMap::new();
                for (pos, seen) in &primary.decisions {
                    let shadow = &got.decisions[pos];
                    let row = pairs.entry((seen.1.clone(), shadow.1.clone())).or_default();
                    row.0 += 1;
                    row.1 += i128::from(amounts.get(pos).copied().unwrap_or(0));
                }
                let rows: BTreeMap<(String, String), (i64, i128)> = what_if
                    .iter()
                    .map(|(k, t)| {
                        (
                            (k.primary.as_str().to_owned(), k.shadow.as_str().to_owned()),
                            (t.count, t.amount_cents),
                        )
                    })
                    .collect();
                prop_assert_eq!(
                    &rows,
                    &pairs,
                    "what-if rows, {} workers, epoch {} ms",
                    workers,
                    epoch_ms
                );
            }
        }
    }
    Ok(())
}

/// `got` is the reference's `expected`: decisions (time, status, scores, rules
/// version), balances, analyses and, `with_controls`, the invalid control records.
fn matches_reference(
    got: &Observed,
    expected: &vtpga_reference::RefOutput,
    workers: usize,
    epoch_ms: u64,
    with_controls: bool,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        got.decisions.len(),
        expected.decisions.len(),
        "decision count, {} workers, epoch {} ms",
        workers,
        epoch_ms
    );
    for (pos, want) in &expected.decisions {
        let (t, status, scores, version) = &got.decisions[pos];
        prop_assert_eq!(
            version.as_str(),
            want.rules_version.as_str(),
            "rules_version of {:?}, {} workers, epoch {} ms",
            pos,
            workers,
            epoch_ms
        );
        prop_assert_eq!(*t, want.t, "t of {:?}, {} workers", pos, workers);
        prop_assert_eq!(
            status.as_str(),
            want.status,
            "status of {:?}, {} workers, epoch {} ms",
            pos,
            workers,
            epoch_ms
        );
        let want_scores = want
            .scores
            .map(|s| [s.value_risk, s.hour_risk, s.distance_risk, s.risk]);
        prop_assert_eq!(scores.is_some(), want_scores.is_some());
        if let (Some(a), Some(b)) = (scores, want_scores) {
            for (x, y) in a.iter().zip(b) {
                prop_assert!(
                    (x - y).abs() < 1e-9,
                    "scores of {:?}: {:?} vs {:?}",
                    pos,
                    a,
                    b
                );
            }
        }
    }
    prop_assert_eq!(
        &got.balances,
        &expected.balances,
        "balances, {} workers, epoch {} ms",
        workers,
        epoch_ms
    );
    prop_assert_eq!(
        normalise(&got.analyses),
        normalise(&expected.analyses),
        "analyses, {} workers",
        workers
    );
    if with_controls {
        prop_assert_eq!(
            &got.invalid_controls,
            &expected.invalid_controls,
            "invalid control records, {} workers, epoch {} ms",
            workers,
            epoch_ms
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn dataflow_matches_reference(
        steps in prop::collection::vec(step(), 1..80),
        epoch_ms in prop_oneof![Just(2u64), Just(8), Just(64), Just(1024)],
    ) {
        check_with(&steps, epoch_ms)?;
    }

    /// The same with live changes (SPEC §11) among the messages: users created before
    /// and after their first payment, deleted with credits due at the same time and
    /// created again, adjusted at the exact time of a payment, limits lowered below the
    /// credit in use, regions moved and deleted, rule sets whose window boundary falls
    /// between two sightings of an id (and reused versions), `effective_from` in the past
    /// and the future, changes at one time on two control partitions, Debezium events.
    #[test]
    fn dataflow_matches_reference_with_live_changes(
        steps in prop::collection::vec(live_step(), 1..80),
        epoch_ms in prop_oneof![Just(2u64), Just(8), Just(64), Just(1024)],
    ) {
        check_with(&steps, epoch_ms)?;
    }

    /// Two shadow rule sets (SPEC §12) beside the rules of record, on captures with
    /// control records (rule sets among them, which the shadows do not follow).
    #[test]
    fn shadows_decide_as_replays_with_their_rules(
        steps in prop::collection::vec(live_step(), 1..80),
        epoch_ms in prop_oneof![Just(2u64), Just(8), Just(64), Just(1024)],
    ) {
        check_shadows(&steps, epoch_ms)?;
    }

    /// The same without control records: the graph does not follow them, and the shadow
    /// whose rules 1–3 agree with the record's shares them.
    #[test]
    fn shadows_without_live_changes_decide_as_replays_with_their_rules(
        steps in prop::collection::vec(step(), 1..80),
        epoch_ms in prop_oneof![Just(2u64), Just(8), Just(64), Just(1024)],
    ) {
        check_shadows(&steps, epoch_ms)?;
    }

    /// Credit chains that cross workers many times inside one cell: each payment of the
    /// walk pays the next payer, a few ms later, an amount it can pay only with what it
    /// just received (most of the people start with little), in pix, debit or credit.
    #[test]
    fn credit_chains_cross_workers_within_a_cell(
        walk in prop::collection::vec((0..6u8, 0..4u64, 0..4i32, 0..3u8, prop_oneof![Just(40_000i64), Just(50_000), Just(90_000), 1..1_000_000i64]), 2..60),
        epoch_ms in prop_oneof![Just(16u64), Just(256), Just(4096)],
    ) {
        let mut payer = 0u8;
        let steps: Vec<Step> = walk
            .into_iter()
            .enumerate()
            .map(|(i, (next, dt, partition, mode, amount))| {
                let payee = if next == payer { (next + 1) % 5 } else { next % 5 };
                let step = Step {
                    dt,
                    partition,
                    redeliver: None,
                    invalid: false,
                    id: (i % 5) as u8,
                    payer,
                    payee,
                    region: (i % 4) as u8,
                    mode: [0, 1, 2][mode as usize],
                    amount,
                    skew: 0,
                    ctl: None,
                };
                payer = payee;
                step
            })
            .collect();
        check_with(&steps, epoch_ms)?;
    }
}

/// Same-t chain A→B→C: B's credit from A is not spendable at the same t, is at t+1.
/// A valid pix payment in region r1, on partition `partition`, `dt` ms after the last.
fn pay(dt: u64, partition: i32, id: u8, payer: u8, payee: u8, amount: i64) -> Step {
    Step {
        dt,
        partition,
        redeliver: None,
        invalid: false,
        id,
        payer,
        payee,
        region: 0,
        mode: 0,
        amount,
        skew: 0,
        ctl: None,
    }
}

#[test]
fn credit_chain_across_workers() {
    let s = |dt, id, payer: u8, payee, amount| pay(dt, payer as i32 % 4, id, payer, payee, amount);
    // A (rich) pays E (0 balance); E pays B at the same t (refused) and at t+1 (approved).
    let steps = vec![
        s(0, 0, 0, 4, 10_000),
        s(0, 1, 4, 1, 5_000),
        s(1, 2, 4, 1, 5_000),
    ];
    check(&steps).expect("matches the reference");
    let (records, _) = capture(&steps);
    let got = run_dataflow(records, 3, params(1));
    let statuses: Vec<&str> = got.decisions.values().map(|d| d.1.as_str()).collect();
    assert!(statuses.contains(&"insufficient_balance"), "{statuses:?}");
    assert_eq!(
        statuses.iter().filter(|s| **s == "approved").count(),
        2,
        "{statuses:?}"
    );
}

/// Several same-t debits of one payer apply in ledger order (by id), not arrival order.
#[test]
fn same_t_debits_follow_ledger_order() {
    let s = |id, amount| Step {
        dt: 0,
        partition: 0,
        redeliver: None,
        invalid: false,
        id,
        payer: 2,
        payee: 0,
        region: 2,
        mode: 0,
        amount,
        skew: 0,
        ctl: None,
    };
    // C has 500.00: "t-b" (400.00) arrives first but "t-a" (300.00) is first in ledger order.
    let steps = vec![s(1, 40_000), s(0, 30_000)];
    check(&steps).expect("matches the reference");
    let (records, _) = capture(&steps);
    let got = run_dataflow(records, 2, params(1));
    let statuses: Vec<&str> = got.decisions.values().map(|d| d.1.as_str()).collect();
    assert_eq!(statuses, vec!["insufficient_balance", "approved"]);
}

/// A credit from another worker on which a later payment depends, at a grid of 4,096 ms:
/// whether it arrives before or after that payment was executed (and it is then decided
/// again) depends on the threads' timing; the result must not.
#[test]
fn a_payment_that_needs_another_workers_credit_gets_it() {
    // A (rich) pays E (nothing) 100.00 at t; E pays B 50.00 at t + 1, which only A's
    // credit makes possible.
    let steps = vec![pay(0, 0, 0, 0, 4, 10_000), pay(1, 1, 1, 4, 1, 5_000)];
    for _ in 0..20 {
        check_with(&steps, 4096).expect("matches the reference");
    }
}

/// A control step: `kind` as in [`control_payload`], about person `who`, `dt` ms after the
/// last step, on control partition 0.
fn change(dt: u64, kind: u8, who: u8, region: u8, cents: i64) -> Step {
    Step {
        ctl: Some(Ctl {
            partition: 0,
            kind,
            who,
            region,
            cents,
            limit: 0,
            version: 0,
            rules: (0, 0, 0),
            effective: None,
        }),
        ..pay(dt, 0, 0, 0, 1, 1)
    }
}

/// A credit from another worker that reaches a user after its owner executed past the
/// user's deletion: it changes the payments of the deleted user (the one at t + 1 is
/// approved with it), not those of the user created again with the same id (whose first
/// payment has only its opening balance). Whether the credit comes late depends on the
/// threads' timing; the result must not.
#[test]
fn a_late_credit_stops_at_its_users_deletion() {
    let steps = vec![
        // A (rich) pays E (nothing) 100.00 at t.
        pay(0, 0, 0, 0, 4, 10_000),
        // E pays B 50.00 at t + 1: only A's credit makes it possible.
        pay(1, 2, 1, 4, 1, 5_000),
        // E is deleted at t + 2 and created again at t + 3 with nothing.
        change(1, 1, 4, 1, 0),
        change(1, 0, 4, 1, 0),
        // The new E pays B 50.00 at t + 4: it has nothing.
        pay(1, 2, 2, 4, 1, 5_000),
    ];
    for _ in 0..30 {
        check_with(&steps, 4096).expect("matches the reference");
    }
    let (records, _) = capture(&steps);
    let got = run_dataflow(records, 3, params(4096));
    let statuses: Vec<&str> = got.decisions.values().map(|d| d.1.as_str()).collect();
    assert_eq!(statuses, ["approved", "approved", "insufficient_balance"]);
}

/// A credit that arrives late makes a payment approved whose payee its owner has never
/// touched and has executed past the payee's deletion: the payee's final state still
/// takes the credit before the deletion. (Found by the model check in CI: the owner
/// panicked for want of the payee's state, and the run then waited for ever.) Whether the
/// credit comes late depends on the threads' timing; the result must not.
#[test]
fn a_late_approval_credits_a_payee_deleted_since() {
    let steps = vec![
        // A (rich) pays E (nothing) 100.00 at t.
        pay(0, 0, 0, 0, 4, 10_000),
        // E pays C 50.00 at t + 1: only A's credit makes it possible.
        pay(1, 2, 1, 4, 2, 5_000),
        // C, touched by nothing else, is deleted at t + 2.
        change(1, 1, 2, 1, 0),
    ];
    for _ in 0..30 {
        check_with(&steps, 4096).expect("matches the reference");
    }
    let (records, _) = capture(&steps);
    let got = run_dataflow(records, 3, params(4096));
    let statuses: Vec<&str> = got.decisions.values().map(|d| d.1.as_str()).collect();
    assert_eq!(statuses, ["approved", "approved"]);
    assert!(!got.balances.contains_key("C"), "C is deleted");
}

/// A shadow ignores a `rules` record's change, not the record: its arrival time still
/// counts for the end of input and for its control partition's clock. Here user A's
/// deletion (effective at t + 1) takes effect because the `rules` record arrives at
/// t + 1; without that record the deletion would be after the end of input, pending.
#[test]
fn a_shadow_keeps_the_time_of_the_rules_records_it_ignores() {
    let ctl = |dt, kind, effective| Step {
        ctl: Some(Ctl {
            partition: 0,
            kind,
            who: 0,
            region: 0,
            cents: 1,
            limit: 0,
            version: 0,
            rules: (0, 0, 0),
            effective,
        }),
        ..pay(dt, 0, 0, 0, 0, 1)
    };
    let steps = vec![ctl(0, 1, Some(1)), ctl(1, 8, None)];
    for epoch_ms in [1, 2] {
        check_shadows(&steps, epoch_ms).expect("each shadow matches the reference");
    }
}

//! A small, sequential, obviously-correct implementation of SPEC §4–7 and §11.
//!
//! It is the oracle that the parallel timely dataflow is compared against,
//! and the single-threaded baseline of the benchmark. It is written directly
//! from the SPEC and depends on no other crate of the workspace.
//!
//! Algorithm (each step is one SPEC sentence):
//! 1. §4 source positions: walk `msgs` in input order; a (partition, offset)
//!    seen before is a re-delivery and is ignored entirely.
//! 2. §4 arrival time: `t = max(record_ts, previous t of that partition)`.
//! 3. §4 ledger order: sort the messages once by
//!    (`t`, `id_transacao`, (partition, offset)).
//! 4. §11 control records: the same two steps per control partition give
//!    `t_c`; the effective time is `T = max(t_c, effective_from)`; sort them
//!    once by (`T`, (partition, offset)).
//! 5. §11 walk the times τ in ascending order; at each τ: the credits due at τ,
//!    then the changes with `T = τ`, then the messages with `t = τ` in ledger
//!    order.
//! 6. §5 decide each message, first rule that applies, under the rule set in
//!    force at its `t` (§11); messages that failed §3 parsing (`tx == None`)
//!    are `invalid` and influence nothing else; §6 scores for those reaching
//!    rule 6; §7 analyses accumulated on the way.
//!
//! Cost: two sorts (O(n log n)) plus hash-map / B-tree look-ups per message,
//! and a scan of the rule-set history per rule 3 look-up.

#![warn(missing_docs)]

use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

// ---------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------

/// A region of SPEC §2 (only the fields §4–7 need).
#[derive(Clone, Debug, PartialEq)]
pub struct RefRegion {
    /// §2 `id`; §3 ids are compared exactly.
    pub id: String,
    /// §2 `uf`, the two-letter state code: the row key of analysis 6 (§7).
    pub uf: String,
    /// §2 `lat`, degrees (WGS84), for the §6 haversine distance.
    pub lat: f64,
    /// §2 `lon`, degrees (WGS84), for the §6 haversine distance.
    pub lon: f64,
}

/// A user of SPEC §2 (only the fields §4–7 need).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefUser {
    /// §2 `id`.
    pub id: String,
    /// §2 `region_id`, the home region: §6 distance risk (payer) and analysis 10 (payer
    /// and payee); rule 4 finds the user unknown while that region is unknown (§11).
    pub region_id: String,
    /// §2 `balance_cents`: the opening balance, in cents (rule 6 for `pix`, `debito`
    /// and `boleto`).
    pub balance_cents: i64,
    /// §2 `credit_limit_cents`, in cents: rule 6 for `credito` compares the amount with
    /// it minus the credit used (which starts at 0).
    pub credit_limit_cents: i64,
}

/// A message already past SPEC §3 parsing (parsing is not this crate's job).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefTx {
    /// §3 `id_transacao`: the rule 3 key and the second key of §4 ledger order.
    pub id: String,
    /// §3 `id_usuario_pagador`, the payer's user id.
    pub payer: String,
    /// §3 `id_usuario_recebedor`, the payee's user id.
    pub payee: String,
    /// §3 `id_regiao`, the transaction region's id.
    pub region: String,
    /// canonical: "pix" | "debito" | "credito" | "boleto"
    pub mode: String,
    /// §3 `valor_transacao` converted to integer cents.
    pub amount_cents: i64,
    /// E, ms since epoch UTC, may be negative
    pub event_ms: i64,
}

/// One consumed message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefMsg {
    /// Kafka record timestamp, before clamping.
    pub record_ts: u64,
    /// §4 source position: the Kafka partition (0 for sources without partitions).
    pub partition: i32,
    /// §4 source position: the offset within the partition (the sequence number for
    /// sources without partitions).
    pub offset: i64,
    /// None = failed §3 parsing → status invalid.
    pub tx: Option<RefTx>,
}

/// The parameters of §5.
#[derive(Clone, Debug, PartialEq)]
pub struct RefParams {
    /// §5 `max_delay` of rules 1 and 2, in ms (default 1000).
    pub max_delay_ms: u64,
    /// §5 `dedup_window` of rule 3, in ms (default 300,000).
    pub dedup_window_ms: u64,
    /// §5 `risk_threshold` of rule 7 (default 0.5): a risk strictly above it is rejected.
    pub risk_threshold: f64,
}

impl Default for RefParams {
    fn default() -> Self {
        RefParams {
            max_delay_ms: 1000,
            dedup_window_ms: 300_000,
            risk_threshold: 0.5,
        }
    }
}

/// The decision of one source position.
#[derive(Clone, Debug, PartialEq)]
pub struct RefDecision {
    /// Arrival time (clamped, §4).
    pub t: u64,
    /// One of [`STATUSES`].
    pub status: &'static str,
    /// Some exactly for assessed statuses.
    pub scores: Option<RefScores>,
    /// §11 `rules_version`: the version of the rule set in force at `t` (every
    /// decision has one, `invalid` ones included).
    pub rules_version: String,
}

/// The §6 risk scores.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RefScores {
    /// §6 `value_risk` of the amount, 0–1.
    pub value_risk: f64,
    /// §6 `hour_risk` of the local hour: 0.0, 0.5 or 1.0.
    pub hour_risk: f64,
    /// §6 `distance_risk` of the payer's home region ↔ transaction region distance, 0–1.
    pub distance_risk: f64,
    /// §6 combined `risk`, compared with `risk_threshold` by rule 7.
    pub risk: f64,
}

/// Everything §4–7 determine.
#[derive(Clone, Debug, PartialEq)]
pub struct RefOutput {
    /// Keyed by (partition, offset).
    pub decisions: BTreeMap<(i32, i64), RefDecision>,
    /// Every user existing at the end: (balance_cents, credit_used_cents). A deleted
    /// user is not here; a re-created one has the state of its new life (§11).
    pub balances: BTreeMap<String, (i64, i64)>,
    /// Users existing at the end that have one: last_approved_event_time (ms since
    /// epoch UTC).
    pub last_approved: BTreeMap<String, i64>,
    /// The SPEC §8 "Analyses JSON": one object whose keys are the ten analysis names.
    pub analyses: Value,
    /// §11: the source positions (control partition, offset) of the control records
    /// that were invalid and changed nothing.
    pub invalid_controls: BTreeSet<(i32, i64)>,
    /// §11: the users existing at the end, by id, with their home region and credit
    /// limit then; `balance_cents` is the balance at the end (as in `balances`), not
    /// the opening one.
    pub users: BTreeMap<String, RefUser>,
    /// §11: the regions existing at the end, by id.
    pub regions: BTreeMap<String, RefRegion>,
    /// §11: the rule sets in the order they came into force, as (T, version): the
    /// initial one first, at T = 0, then every valid `rules` change.
    pub rules: Vec<(u64, String)>,
}

/// A rule set of SPEC §11: the parameters of rules 1–3 and 7 under a version name.
#[derive(Clone, Debug, PartialEq)]
pub struct RefRules {
    /// §11 `version`: non-empty, never used before; carried by every decision it
    /// decides (`rules_version`).
    pub version: String,
    /// §5 `risk_threshold` of rule 7 (finite, >= 0).
    pub risk_threshold: f64,
    /// §5 `max_delay` of rules 1 and 2, in ms.
    pub max_delay_ms: u64,
    /// §5 `dedup_window` of rule 3, in ms.
    pub dedup_window_ms: u64,
}

/// What a control record of SPEC §11 changes (the `type` of its table), already past
/// parsing (typed or CDC form alike). A change that still breaks the §11 field rules
/// (an empty id, a negative opening balance or credit limit, an unknown `uf`, a
/// latitude or longitude out of range, a zero adjustment, an empty version, a risk
/// threshold not finite or below 0) is invalid like a record that failed parsing.
#[derive(Clone, Debug, PartialEq)]
pub enum RefChange {
    /// `user`: creates a user that does not exist (opening balance `balance_cents`,
    /// credit used 0, no last approval), or gives an existing one the new home region
    /// and credit limit (its `balance_cents` is then ignored).
    User(RefUser),
    /// `user_delete` of this id: the user and its state are gone. Deleting a user that
    /// does not exist changes nothing and is not invalid (the SPEC lists no such
    /// error; the same holds for [`RefChange::RegionDelete`]).
    UserDelete(String),
    /// `balance_adjustment`: balance += `amount_cents` (non-zero, either sign; the
    /// balance may go below zero). Invalid if the user does not exist at T. The SPEC is
    /// silent on a balance past the range of i64 cents: it stops at the bound (saturates),
    /// as the dataflow's does.
    Adjust {
        /// §11 `user_id`.
        user_id: String,
        /// §11 `amount_cents`, added to the balance.
        amount_cents: i64,
    },
    /// `region`: creates or replaces the region.
    Region(RefRegion),
    /// `region_delete` of this id: the region becomes unknown; users whose home it is
    /// keep existing with their state, but rule 4 finds them unknown meanwhile.
    RegionDelete(String),
    /// `rules`: becomes the rule set in force at T. Invalid if its version was used
    /// before (the initial one included), "before" meaning earlier in the order the
    /// changes apply: (T, partition, offset).
    Rules(RefRules),
}

/// One consumed control record (SPEC §11, the control topic).
#[derive(Clone, Debug, PartialEq)]
pub struct RefControl {
    /// Kafka record timestamp, before clamping (clamped per control partition as §4
    /// clamps messages: `t_c`).
    pub record_ts: u64,
    /// Control source position: the partition of the control topic.
    pub partition: i32,
    /// Control source position: the offset within that partition. A position seen
    /// again is a re-delivery and is ignored.
    pub offset: i64,
    /// `effective_from`, ms since epoch UTC, if given: T = max(t_c, effective_from).
    pub effective_from: Option<i64>,
    /// None = failed parsing (field rules, unknown type…) → the record is invalid.
    pub change: Option<RefChange>,
}

// Status names (§5).
/// §5 rule 1: breaks §3, or the event time is in the future (E > t + `max_delay`).
pub const INVALID: &str = "invalid";
/// §5 rule 2: t − E > `max_delay`.
pub const LATE: &str = "late";
/// §5 rule 3: the same `id_transacao` was last seen at most `dedup_window` earlier.
pub const DUPLICATE: &str = "duplicate";
/// §5 rule 4: payer, payee or region unknown, or payer = payee.
pub const UNKNOWN_REFERENCE: &str = "unknown_reference";
/// §5 rule 5: E < the payer's `last_approved_event_time`.
pub const STALE: &str = "stale";
/// §5 rule 6, modes `pix`, `debito` and `boleto`: amount > the payer's balance.
pub const INSUFFICIENT_BALANCE: &str = "insufficient_balance";
/// §5 rule 6, mode `credito`: amount > credit_limit − credit_used.
pub const INSUFFICIENT_LIMIT: &str = "insufficient_limit";
/// §5 rule 7: risk > `risk_threshold`.
pub const REJECTED_RISK: &str = "rejected_risk";
/// §5 rule 8: no earlier rule applies.
pub const APPROVED: &str = "approved";

/// The nine statuses, in the order of the §5 table.
pub const STATUSES: [&str; 9] = [
    INVALID,
    LATE,
    DUPLICATE,
    UNKNOWN_REFERENCE,
    STALE,
    INSUFFICIENT_BALANCE,
    INSUFFICIENT_LIMIT,
    REJECTED_RISK,
    APPROVED,
];

/// The ten analysis names of §7, in table order.
pub const ANALYSIS_NAMES: [&str; 10] = [
    "status_counts",
    "value_histogram",
    "hour_histogram",
    "value_risk_distribution",
    "hour_risk_outcome",
    "state_approval",
    "insufficient_funds",
    "mode_rejections",
    "minute_frequency",
    "distance_band_outcome",
];

/// Is this status one of the assessed ones (§5 "Outcome")?
pub fn is_assessed(status: &str) -> bool {
    matches!(
        status,
        APPROVED | INSUFFICIENT_BALANCE | INSUFFICIENT_LIMIT | REJECTED_RISK
    )
}

// ---------------------------------------------------------------------------
// §6 score helpers (public so that tests elsewhere can reuse the formulas)
// ---------------------------------------------------------------------------

const MS_PER_MINUTE: i64 = 60_000;
const MS_PER_HOUR: i64 = 3_600_000;
const MS_PER_DAY: i64 = 86_400_000;
/// UTC−03:00 in ms.
const BRASILIA_OFFSET_MS: i64 = 3 * MS_PER_HOUR;
/// 0001-01-01T00:00:00Z in ms since the Unix epoch (§3 lower bound of E).
pub const MIN_EVENT_MS: i64 = -62_135_596_800_000;
/// 9999-12-31T23:59:59.999 at offset −23:59 (the latest instant §3 can write).
pub const MAX_EVENT_MS: i64 = 253_402_300_799_999 + 23 * MS_PER_HOUR + 59 * MS_PER_MINUTE;
/// §3 amount range, in cents.
pub const MIN_AMOUNT_CENTS: i64 = 1;
/// §3 upper bound of the rounded amount, in cents (1,000,000,000.00 BRL), inclusive.
pub const MAX_AMOUNT_CENTS: i64 = 100_000_000_000;
/// Earth radius of §6, km.
pub const EARTH_RADIUS_KM: f64 = 6371.0;

/// Local hour (UTC−03:00) of the event time E, 0–23.
pub fn local_hour(event_ms: i64) -> u32 {
    let local_ms = event_ms as i128 - BRASILIA_OFFSET_MS as i128;
    local_ms.div_euclid(MS_PER_HOUR as i128).rem_euclid(24) as u32
}

/// §6 value_risk for an amount in cents.
pub fn value_risk(amount_cents: i64) -> f64 {
    let v = amount_cents as f64 / 100.0;
    if v <= 1000.0 {
        0.0
    } else {
        ((v - 1000.0) / 9000.0).min(1.0)
    }
}

/// §6 hour_risk for a local hour.
pub fn hour_risk(local_hour: u32) -> f64 {
    match local_hour {
        0..=5 => 1.0,
        6 => 0.5,
        7..=21 => 0.0,
        _ => 0.5, // 22, 23
    }
}

/// Great-circle distance in km (haversine, R = 6371.0 km, degrees → radians).
pub fn haversine_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let phi1 = lat1.to_radians();
    let phi2 = lat2.to_radians();
    let dphi = (lat2 - lat1).to_radians();
    let dlambda = (lon2 - lon1).to_radians();
    let a = (dphi / 2.0).sin().powi(2) + phi1.cos() * phi2.cos() * (dlambda / 2.0).sin().powi(2);
    // `min(1.0)` only guards asin against rounding just above 1 at antipodes.
    2.0 * EARTH_RADIUS_KM * a.sqrt().min(1.0).asin()
}

/// §6 distance_risk for a distance in km.
pub fn distance_risk(d_km: f64) -> f64 {
    if d_km < 50.0 {
        0.0
    } else if d_km >= 1000.0 {
        1.0
    } else {
        (d_km - 50.0) / 950.0
    }
}

/// §6 combined risk.
pub fn combined_risk(value_risk: f64, hour_risk: f64, distance_risk: f64) -> f64 {
    if value_risk == 0.0 {
        0.0
    } else {
        0.5 * value_risk + 0.25 * hour_risk + 0.25 * distance_risk
    }
}

/// All §6 scores of one transaction.
pub fn scores(amount_cents: i64, event_ms: i64, distance_km: f64) -> RefScores {
    let value_risk = value_risk(amount_cents);
    let hour_risk = hour_risk(local_hour(event_ms));
    let distance_risk = distance_risk(distance_km);
    RefScores {
        value_risk,
        hour_risk,
        distance_risk,
        risk: combined_risk(value_risk, hour_risk, distance_risk),
    }
}

// ---------------------------------------------------------------------------
// §7 key helpers
// ---------------------------------------------------------------------------

/// The eight §7 amount bands (BRL, lower bound inclusive), as
/// (lower bound in cents, label).
const VALUE_BANDS: [(i64, &str); 8] = [
    (0, "0-10"),
    (1_000, "10-50"),
    (5_000, "50-100"),
    (10_000, "100-500"),
    (50_000, "500-1000"),
    (100_000, "1000-5000"),
    (500_000, "5000-10000"),
    (1_000_000, "10000+"),
];

/// Index into [`VALUE_BANDS`] of an amount in cents.
fn value_band_index(amount_cents: i64) -> usize {
    VALUE_BANDS
        .iter()
        .rposition(|&(lower, _)| amount_cents >= lower)
        .unwrap_or(0)
}

/// §7 value band label of an amount in cents.
pub fn value_band(amount_cents: i64) -> &'static str {
    VALUE_BANDS[value_band_index(amount_cents)].1
}

/// §7 value_risk_distribution bucket: 0 if value_risk = 0, else ceil(10·value_risk).
pub fn value_risk_bucket(value_risk: f64) -> i64 {
    if value_risk == 0.0 {
        0
    } else {
        (10.0 * value_risk).ceil() as i64
    }
}

/// The four §7 distance bands, (lower bound in km, label), lower bound inclusive.
const DISTANCE_BANDS: [(f64, &str); 4] = [
    (0.0, "short"),
    (50.0, "medium_short"),
    (300.0, "medium_long"),
    (1000.0, "long"),
];

fn distance_band_index(d_km: f64) -> usize {
    DISTANCE_BANDS
        .iter()
        .rposition(|&(lower, _)| d_km >= lower)
        .unwrap_or(0)
}

/// §7 distance band label of a payer-home ↔ payee-home distance in km.
pub fn distance_band(d_km: f64) -> &'static str {
    DISTANCE_BANDS[distance_band_index(d_km)].1
}

/// Proleptic Gregorian (year, month, day) of a count of days since 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let d = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    (if m <= 2 { y + 1 } else { y }, m as u32, d as u32)
}

/// The event-time minute index (minutes since the epoch, floor).
fn minute_index(event_ms: i64) -> i64 {
    event_ms.div_euclid(MS_PER_MINUTE)
}

/// `YYYY-MM-DDTHH:MM:00Z` label of a minute index.
fn minute_index_label(minute: i64) -> String {
    let days = minute.div_euclid(24 * 60);
    let minute_of_day = minute.rem_euclid(24 * 60);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:00Z",
        y,
        m,
        d,
        minute_of_day / 60,
        minute_of_day % 60
    )
}

/// §7 minute label (`YYYY-MM-DDTHH:MM:00Z`, UTC) of an event time.
pub fn minute_label(event_ms: i64) -> String {
    debug_assert_eq!(MS_PER_DAY, 24 * 60 * MS_PER_MINUTE);
    minute_index_label(minute_index(event_ms))
}

// ---------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------

/// Mutable per-user state of §2.
struct Account {
    home_region: String,
    balance: i64,
    credit_limit: i64,
    credit_used: i64,
    last_approved: Option<i64>,
}

impl Account {
    /// §2 / §11: a user as it is created: its opening balance, credit used 0, no
    /// last approval.
    fn opened(u: &RefUser) -> Self {
        Account {
            home_region: u.region_id.clone(),
            balance: u.balance_cents,
            credit_limit: u.credit_limit_cents,
            credit_used: 0,
            last_approved: None,
        }
    }
}

/// The 27 codes of §2 `uf`.
const UFS: [&str; 27] = [
    "AC", "AL", "AP", "AM", "BA", "CE", "DF", "ES", "GO", "MA", "MT", "MS", "MG", "PA", "PB", "PR",
    "PE", "PI", "RJ", "RN", "RS", "RO", "RR", "SC", "SP", "SE", "TO",
];

/// Does this (already parsed) change still break the §11 field rules? A well-formed
/// [`RefChange`] never does; like [`breaks_section3`], this only keeps the oracle
/// literal: such a record is invalid.
fn breaks_field_rules(change: &RefChange) -> bool {
    match change {
        RefChange::User(u) => {
            u.id.is_empty()
                || u.region_id.is_empty()
                || u.balance_cents < 0
                || u.credit_limit_cents < 0
        }
        RefChange::UserDelete(id) | RefChange::RegionDelete(id) => id.is_empty(),
        RefChange::Adjust {
            user_id,
            amount_cents,
        } => user_id.is_empty() || *amount_cents == 0,
        RefChange::Region(r) => {
            r.id.is_empty()
                || !UFS.contains(&r.uf.as_str())
                || !(-90.0..=90.0).contains(&r.lat)
                || !(-180.0..=180.0).contains(&r.lon)
        }
        RefChange::Rules(r) => {
            r.version.is_empty() || !r.risk_threshold.is_finite() || r.risk_threshold < 0.0
        }
    }
}

/// A message in §4 ledger order: (t, id_transacao, source position, transaction).
type LedgerEntry<'a> = (u64, &'a str, (i32, i64), Option<&'a RefTx>);

/// §11: the rule set in force at `t`: the last one, in the order they came into
/// force, whose T <= t (changes at T = t apply before the messages at t).
fn rules_at(history: &[(u64, RefRules)], t: u64) -> &RefRules {
    &history
        .iter()
        .rev()
        .find(|(from, _)| *from <= t)
        .expect("the initial rule set is in force from T = 0")
        .1
}

/// §11: applies one control record's change at its effective time `at`, in the
/// order of the table. Returns false, having changed nothing, when the record is
/// invalid.
fn apply_change(
    change: Option<&RefChange>,
    at: u64,
    accounts: &mut HashMap<String, Account>,
    regions: &mut HashMap<String, RefRegion>,
    history: &mut Vec<(u64, RefRules)>,
) -> bool {
    // Failed parsing (field rules, unknown type): invalid.
    let Some(change) = change else {
        return false;
    };
    if breaks_field_rules(change) {
        return false;
    }
    match change {
        // `user`: an existing user gets the new home region and credit limit
        // (balance_cents ignored); otherwise it is created afresh.
        RefChange::User(u) => match accounts.get_mut(&u.id) {
            Some(a) => {
                a.home_region = u.region_id.clone();
                a.credit_limit = u.credit_limit_cents;
            }
            None => {
                accounts.insert(u.id.clone(), Account::opened(u));
            }
        },
        // `user_delete`: the user and its state are dropped (none: nothing to drop).
        RefChange::UserDelete(id) => {
            accounts.remove(id);
        }
        // `balance_adjustment`: invalid if the user does not exist at T.
        RefChange::Adjust {
            user_id,
            amount_cents,
        } => {
            let Some(a) = accounts.get_mut(user_id) else {
                return false;
            };
            a.balance = a.balance.saturating_add(*amount_cents);
        }
        // `region`: creates or replaces.
        RefChange::Region(r) => {
            regions.insert(r.id.clone(), r.clone());
        }
        // `region_delete`: the region becomes unknown; its users keep their state.
        RefChange::RegionDelete(id) => {
            regions.remove(id);
        }
        // `rules`: invalid if its version was used before (the initial one included).
        RefChange::Rules(r) => {
            if history.iter().any(|(_, used)| used.version == r.version) {
                return false;
            }
            history.push((at, r.clone()));
        }
    }
    true
}

/// Does this (already parsed) transaction still break §3? A well-formed
/// [`RefTx`] never does; this only keeps the oracle literal to rule 1.
fn breaks_section3(tx: &RefTx) -> bool {
    tx.id.is_empty()
        || tx.payer.is_empty()
        || tx.payee.is_empty()
        || tx.region.is_empty()
        || !matches!(tx.mode.as_str(), "pix" | "debito" | "credito" | "boleto")
        || !(MIN_AMOUNT_CENTS..=MAX_AMOUNT_CENTS).contains(&tx.amount_cents)
        || !(MIN_EVENT_MS..=MAX_EVENT_MS).contains(&tx.event_ms)
}

/// (approved, rejected) counters.
#[derive(Default, Clone, Copy)]
struct Outcome {
    approved: i64,
    rejected: i64,
}

impl Outcome {
    fn add(&mut self, approved: bool) {
        if approved {
            self.approved += 1;
        } else {
            self.rejected += 1;
        }
    }
}

/// The §7 accumulators. Each map is keyed by the row key.
#[derive(Default)]
struct Analyses {
    status_counts: BTreeMap<&'static str, i64>,
    value_histogram: BTreeMap<usize, Outcome>,
    hour_histogram: BTreeMap<u32, Outcome>,
    /// bucket → (outcome, approved_amount_cents, rejected_amount_cents)
    /// Sums of amounts are exact (SPEC §7): 128-bit.
    value_risk_distribution: BTreeMap<i64, (Outcome, i128, i128)>,
    /// key = 2·hour_risk (0, 1, 2) so it sorts as a number.
    hour_risk_outcome: BTreeMap<u8, Outcome>,
    state_approval: BTreeMap<String, Outcome>,
    /// reason → (count, amount_cents)
    insufficient_funds: BTreeMap<&'static str, (i64, i128)>,
    mode_rejections: BTreeMap<String, Outcome>,
    minute_frequency: BTreeMap<i64, i64>,
    distance_band_outcome: BTreeMap<(i64, usize), Outcome>,
}

/// What analyses 2–10 need about one assessed transaction.
struct Assessed<'a> {
    status: &'static str,
    amount_cents: i64,
    event_ms: i64,
    mode: &'a str,
    region_uf: &'a str,
    scores: RefScores,
    payer_payee_home_km: f64,
}

impl Analyses {
    fn count_status(&mut self, status: &'static str) {
        *self.status_counts.entry(status).or_insert(0) += 1;
    }

    fn add_assessed(&mut self, a: &Assessed<'_>) {
        let approved = a.status == APPROVED;
        self.value_histogram
            .entry(value_band_index(a.amount_cents))
            .or_default()
            .add(approved);
        self.hour_histogram
            .entry(local_hour(a.event_ms))
            .or_default()
            .add(approved);
        let vr = self
            .value_risk_distribution
            .entry(value_risk_bucket(a.scores.value_risk))
            .or_insert((Outcome::default(), 0, 0));
        vr.0.add(approved);
        if approved {
            vr.1 += i128::from(a.amount_cents);
        } else {
            vr.2 += i128::from(a.amount_cents);
        }
        self.hour_risk_outcome
            .entry((a.scores.hour_risk * 2.0) as u8)
            .or_default()
            .add(approved);
        self.state_approval
            .entry(a.region_uf.to_string())
            .or_default()
            .add(approved);
        if a.status == INSUFFICIENT_BALANCE || a.status == INSUFFICIENT_LIMIT {
            let f = self.insufficient_funds.entry(a.status).or_insert((0, 0));
            f.0 += 1;
            f.1 += i128::from(a.amount_cents);
        }
        self.mode_rejections
            .entry(a.mode.to_string())
            .or_default()
            .add(approved);
        let minute = minute_index(a.event_ms);
        *self.minute_frequency.entry(minute).or_insert(0) += 1;
        self.distance_band_outcome
            .entry((minute, distance_band_index(a.payer_payee_home_km)))
            .or_default()
            .add(approved);
    }

    fn into_json(self) -> Value {
        let nonzero = |o: &Outcome| o.approved != 0 || o.rejected != 0;
        let status_counts: Vec<Value> = STATUSES
            .iter()
            .map(|s| json!({"status": s, "count": self.status_counts.get(s).copied().unwrap_or(0)}))
            .collect();
        let value_histogram: Vec<Value> = self
            .value_histogram
            .iter()
            .filter(|(_, o)| nonzero(o))
            .map(|(&b, o)| {
                json!({"band": VALUE_BANDS[b].1, "approved": o.approved, "rejected": o.rejected})
            })
            .collect();
        let hour_histogram: Vec<Value> = self
            .hour_histogram
            .iter()
            .filter(|(_, o)| nonzero(o))
            .map(|(&h, o)| json!({"hour": h, "approved": o.approved, "rejected": o.rejected}))
            .collect();
        let value_risk_distribution: Vec<Value> = self
            .value_risk_distribution
            .iter()
            .filter(|(_, (o, _, _))| nonzero(o))
            .map(|(&b, (o, ac, rc))| {
                json!({"bucket": b, "approved": o.approved, "rejected": o.rejected,
                       "approved_amount_cents": ac, "rejected_amount_cents": rc})
            })
            .collect();
        let hour_risk_outcome: Vec<Value> = self
            .hour_risk_outcome
            .iter()
            .filter(|(_, o)| nonzero(o))
            .map(|(&k, o)| {
                json!({"hour_risk": f64::from(k) / 2.0, "approved": o.approved, "rejected": o.rejected})
            })
            .collect();
        let state_approval: Vec<Value> = self
            .state_approval
            .iter()
            .filter(|(_, o)| nonzero(o))
            .map(|(uf, o)| json!({"uf": uf, "approved": o.approved, "rejected": o.rejected}))
            .collect();
        let insufficient_funds: Vec<Value> = self
            .insufficient_funds
            .iter()
            .filter(|(_, (c, _))| *c != 0)
            .map(|(r, (c, a))| json!({"reason": r, "count": c, "amount_cents": a}))
            .collect();
        let mode_rejections: Vec<Value> = self
            .mode_rejections
            .iter()
            .filter(|(_, o)| nonzero(o))
            .map(|(m, o)| json!({"mode": m, "approved": o.approved, "rejected": o.rejected}))
            .collect();
        let minute_frequency: Vec<Value> = self
            .minute_frequency
            .iter()
            .filter(|(_, c)| **c != 0)
            .map(|(&m, c)| json!({"minute": minute_index_label(m), "count": c}))
            .collect();
        let distance_band_outcome: Vec<Value> = self
            .distance_band_outcome
            .iter()
            .filter(|(_, o)| nonzero(o))
            .map(|(&(m, b), o)| {
                json!({"minute": minute_index_label(m), "band": DISTANCE_BANDS[b].1,
                       "approved": o.approved, "rejected": o.rejected})
            })
            .collect();
        json!({
            "status_counts": status_counts,
            "value_histogram": value_histogram,
            "hour_histogram": hour_histogram,
            "value_risk_distribution": value_risk_distribution,
            "hour_risk_outcome": hour_risk_outcome,
            "state_approval": state_approval,
            "insufficient_funds": insufficient_funds,
            "mode_rejections": mode_rejections,
            "minute_frequency": minute_frequency,
            "distance_band_outcome": distance_band_outcome,
        })
    }
}

/// Decide every message (SPEC §4–5), score the assessed ones (§6) and build
/// the ten analyses (§7), with fixed reference data and rules: [`run_live`] without
/// control records, under the initial rule set `"default"` of these parameters.
pub fn run(
    regions: &[RefRegion],
    users: &[RefUser],
    msgs: &[RefMsg],
    params: &RefParams,
) -> RefOutput {
    let initial = RefRules {
        version: "default".to_string(),
        risk_threshold: params.risk_threshold,
        max_delay_ms: params.max_delay_ms,
        dedup_window_ms: params.dedup_window_ms,
    };
    run_live(regions, users, msgs, &[], &initial)
}

/// Decide every message (SPEC §4–5) while the reference data and rules change by
/// control records (§11), score the assessed ones (§6) and build the ten analyses
/// (§7). `initial` is the rule set in force from the start (T = 0).
pub fn run_live(
    regions: &[RefRegion],
    users: &[RefUser],
    msgs: &[RefMsg],
    controls: &[RefControl],
    initial: &RefRules,
) -> RefOutput {
    // Reference data in force from the start. A repeated id: the later row wins.
    let mut regions: HashMap<String, RefRegion> =
        regions.iter().map(|r| (r.id.clone(), r.clone())).collect();
    let mut accounts: HashMap<String, Account> = users
        .iter()
        .map(|u| (u.id.clone(), Account::opened(u)))
        .collect();

    let mut decisions: BTreeMap<(i32, i64), RefDecision> = BTreeMap::new();
    let mut analyses = Analyses::default();

    // §4: first occurrence of each source position, arrival-time clamping per
    // partition in input (= offset) order.
    let mut seen_positions: HashSet<(i32, i64)> = HashSet::new();
    let mut partition_t: HashMap<i32, u64> = HashMap::new();
    // (t, id, position, tx). An unparsed message has no id: it is put first among the
    // messages of its t, which changes nothing since it influences nothing.
    let mut ledger: Vec<LedgerEntry<'_>> = Vec::new();
    for m in msgs {
        let pos = (m.partition, m.offset);
        if !seen_positions.insert(pos) {
            continue; // re-delivery: decided once, from its first occurrence
        }
        let prev = partition_t.entry(m.partition).or_insert(0);
        let t = m.record_ts.max(*prev);
        *prev = t;
        let id = m.tx.as_ref().map_or("", |tx| tx.id.as_str());
        ledger.push((t, id, pos, m.tx.as_ref()));
    }
    // §4 ledger order: ascending (t, id_transacao [UTF-8 bytes], source position).
    ledger.sort_by(|a, b| (a.0, a.1.as_bytes(), a.2).cmp(&(b.0, b.1.as_bytes(), b.2)));

    // §11 control records: first occurrence of each control position, t_c clamped per
    // control partition in input order exactly as §4; T = max(t_c, effective_from).
    let mut seen_controls: HashSet<(i32, i64)> = HashSet::new();
    let mut control_partition_t: HashMap<i32, u64> = HashMap::new();
    // (T, position, change)
    let mut changes: Vec<(u64, (i32, i64), Option<&RefChange>)> = Vec::new();
    for c in controls {
        let pos = (c.partition, c.offset);
        if !seen_controls.insert(pos) {
            continue; // re-delivery: applied once, from its first occurrence
        }
        let prev = control_partition_t.entry(c.partition).or_insert(0);
        let t_c = c.record_ts.max(*prev);
        *prev = t_c;
        // A negative effective_from is before every t_c: it counts as 0.
        let from = c
            .effective_from
            .map_or(0, |ms| u64::try_from(ms).unwrap_or(0));
        changes.push((t_c.max(from), pos, c.change.as_ref()));
    }
    // §11: changes with the same T apply in the order of their control source
    // positions (partition, then offset).
    changes.sort_by_key(|&(at, pos, _)| (at, pos));
    // A change that takes effect after the end of the input (the greatest arrival time of
    // any record) changes no message: it is not applied, and stays pending (the SPEC is
    // silent; a durable pipeline keeps it for its next run).
    let end = ledger
        .iter()
        .map(|m| m.0)
        .chain(control_partition_t.values().copied())
        .max()
        .unwrap_or(0);
    changes.retain(|&(at, _, _)| at <= end);

    // The rule sets in the order they came into force: (T, rule set).
    let mut history: Vec<(u64, RefRules)> = vec![(0, initial.clone())];
    let mut invalid_controls: BTreeSet<(i32, i64)> = BTreeSet::new();
    // Duplicate memory: id → t of the last message with that id that passed rules 1–2.
    let mut last_seen: HashMap<&str, u64> = HashMap::new();
    // Approved payee credits by the time they are due (t + 1; u128 so that an approval
    // at t = u64::MAX has a due time too): (payee id, amount).
    let mut due_credits: BTreeMap<u128, Vec<(&str, i64)>> = BTreeMap::new();

    let mut next_change = 0;
    let mut next_msg = 0;
    loop {
        // τ: the earliest time at which something is left to happen.
        let tau = [
            due_credits.keys().next().copied(),
            changes.get(next_change).map(|c| u128::from(c.0)),
            ledger.get(next_msg).map(|m| u128::from(m.0)),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(tau) = tau else {
            break;
        };

        // 1. The credits due at τ, to the account that has the payee's id now; if no
        // user has it, the credit is dropped. (This cannot happen: the payee existed
        // at the approval at τ − 1, after that τ's changes, and no change comes between
        // the messages of τ − 1 and the credits of τ. The drop is kept literal.)
        for (payee, amount) in due_credits.remove(&tau).unwrap_or_default() {
            if let Some(account) = accounts.get_mut(payee) {
                account.balance += amount;
            }
        }

        // 2. The changes with T = τ, in (partition, offset) order.
        while let Some(&(at, pos, change)) = changes.get(next_change) {
            if u128::from(at) != tau {
                break;
            }
            next_change += 1;
            if !apply_change(change, at, &mut accounts, &mut regions, &mut history) {
                invalid_controls.insert(pos);
            }
        }

        // 3. The messages with t = τ, in ledger order.
        while let Some(&(t, id, pos, tx)) = ledger.get(next_msg) {
            if u128::from(t) != tau {
                break;
            }
            next_msg += 1;
            // §11: the rule set in force at t decides it.
            let rules = rules_at(&history, t);
            let (status, scores) = 'rules: {
                // Failed §3 parsing: invalid; it influences nothing else.
                let Some(tx) = tx else {
                    break 'rules (INVALID, None);
                };
                let e = tx.event_ms as i128;
                let t_wide = t as i128;
                let max_delay = rules.max_delay_ms as i128;

                // Rule 1: invalid (breaks §3, or event time in the future).
                if breaks_section3(tx) || e > t_wide + max_delay {
                    break 'rules (INVALID, None);
                }
                // Rule 2: late.
                if t_wide - e > max_delay {
                    break 'rules (LATE, None);
                }
                // Rule 3: duplicate iff t − t' <= dedup_window as of t' (§11). Every
                // message passing rules 1–2 refreshes last-seen.
                let previous = last_seen.insert(id, t);
                if let Some(t_prev) = previous {
                    let window = rules_at(&history, t_prev).dedup_window_ms as i128;
                    if t_wide - t_prev as i128 <= window {
                        break 'rules (DUPLICATE, None);
                    }
                }
                // Rule 4: unknown reference, looked up as of t (a user whose home
                // region is unknown counts as unknown).
                let region = regions.get(tx.region.as_str());
                let payer_home = accounts
                    .get(&tx.payer)
                    .and_then(|a| regions.get(a.home_region.as_str()));
                let payee_home = accounts
                    .get(&tx.payee)
                    .and_then(|a| regions.get(a.home_region.as_str()));
                let (region, payer_home, payee_home) = match (region, payer_home, payee_home) {
                    (Some(r), Some(ph), Some(qh)) if tx.payer != tx.payee => (r, ph, qh),
                    _ => break 'rules (UNKNOWN_REFERENCE, None),
                };
                let payer = accounts
                    .get_mut(&tx.payer)
                    .expect("payer checked in rule 4");
                // Rule 5: stale.
                if payer.last_approved.is_some_and(|last| tx.event_ms < last) {
                    break 'rules (STALE, None);
                }
                // §6 scores of every message reaching rule 6.
                let d_tx = haversine_km(payer_home.lat, payer_home.lon, region.lat, region.lon);
                let sc = scores(tx.amount_cents, tx.event_ms, d_tx);
                // Rules 6–8, rule 7 with the risk_threshold as of t.
                let is_credit = tx.mode == "credito";
                let status = if !is_credit && tx.amount_cents > payer.balance {
                    INSUFFICIENT_BALANCE
                } else if is_credit && tx.amount_cents > payer.credit_limit - payer.credit_used {
                    INSUFFICIENT_LIMIT
                } else if sc.risk > rules.risk_threshold {
                    REJECTED_RISK
                } else {
                    APPROVED
                };
                if status == APPROVED {
                    if is_credit {
                        payer.credit_used += tx.amount_cents;
                    } else {
                        payer.balance -= tx.amount_cents;
                    }
                    payer.last_approved = Some(tx.event_ms);
                    // The payee's credit is due at t + 1 (visible only to a greater t).
                    due_credits
                        .entry(u128::from(t) + 1)
                        .or_default()
                        .push((tx.payee.as_str(), tx.amount_cents));
                }
                analyses.add_assessed(&Assessed {
                    status,
                    amount_cents: tx.amount_cents,
                    event_ms: tx.event_ms,
                    mode: &tx.mode,
                    region_uf: &region.uf,
                    scores: sc,
                    payer_payee_home_km: haversine_km(
                        payer_home.lat,
                        payer_home.lon,
                        payee_home.lat,
                        payee_home.lon,
                    ),
                });
                (status, Some(sc))
            };
            analyses.count_status(status);
            decisions.insert(
                pos,
                RefDecision {
                    t,
                    status,
                    scores,
                    rules_version: rules.version.clone(),
                },
            );
        }
    }

    let balances = accounts
        .iter()
        .map(|(id, a)| (id.clone(), (a.balance, a.credit_used)))
        .collect();
    let last_approved = accounts
        .iter()
        .filter_map(|(id, a)| a.last_approved.map(|e| (id.clone(), e)))
        .collect();
    let users = accounts
        .iter()
        .map(|(id, a)| {
            (
                id.clone(),
                RefUser {
                    id: id.clone(),
                    region_id: a.home_region.clone(),
                    balance_cents: a.balance,
                    credit_limit_cents: a.credit_limit,
                },
            )
        })
        .collect();
    RefOutput {
        decisions,
        balances,
        last_approved,
        analyses: analyses.into_json(),
        invalid_controls,
        users,
        regions: regions.into_iter().collect(),
        rules: history.into_iter().map(|(at, r)| (at, r.version)).collect(),
    }
}

#[cfg(test)]
mod tests;

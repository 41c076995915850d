//! The ten analyses of SPEC §7: their keys, the counters they accumulate, the per-batch
//! pre-aggregation of decisions into keyed deltas, and the rendering of the accumulated
//! rows into the SPEC's JSON shapes.
//!
//! Every analysis row is a key ([`AnalysisKey`]) carrying a [`Tally`]. The tally is the
//! *difference type* of a differential collection, so `count_total` accumulates it per key
//! and emits, per timestamp, only the rows whose key that timestamp touched.

use std::collections::BTreeMap;

use differential_dataflow::difference::{Abelian, IsZero, Monoid, Multiply, Semigroup};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::calendar::format_minute;
use crate::model::{Mode, Status};
use crate::rules::{self, DISTANCE_BANDS, VALUE_BANDS};

/// The counters of one analysis row, and the difference type of the analyses collection:
/// differential adds tallies of the same key, so a row's tally is the sum of its deltas.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Tally {
    /// Messages counted (the `count` of analyses 1, 7 and 9).
    pub count: i64,
    /// Approved transactions counted.
    pub approved: i64,
    /// Rejected transactions counted (`insufficient_*` or `rejected_risk`).
    pub rejected: i64,
    /// Sum of the approved amounts, in cents.
    /// Sums of amounts are 128-bit (SPEC §7: exact, never wrapping): 64 bits hold only
    /// about 9·10^7 maximum amounts (10^11 cents each).
    pub approved_amount_cents: i128,
    /// Sum of the rejected amounts, in cents.
    pub rejected_amount_cents: i128,
}

impl IsZero for Tally {
    fn is_zero(&self) -> bool {
        *self == Tally::default()
    }
}

impl Semigroup for Tally {
    fn plus_equals(&mut self, rhs: &Self) {
        self.count += rhs.count;
        self.approved += rhs.approved;
        self.rejected += rhs.rejected;
        self.approved_amount_cents += rhs.approved_amount_cents;
        self.rejected_amount_cents += rhs.rejected_amount_cents;
    }
}

impl Monoid for Tally {
    fn zero() -> Self {
        Tally::default()
    }
}

impl Abelian for Tally {
    fn negate(&mut self) {
        *self = Tally {
            count: -self.count,
            approved: -self.approved,
            rejected: -self.rejected,
            approved_amount_cents: -self.approved_amount_cents,
            rejected_amount_cents: -self.rejected_amount_cents,
        };
    }
}

/// Multiplication by a reference collection's multiplicity (the regions join).
impl Multiply<i64> for Tally {
    type Output = Tally;
    fn multiply(self, rhs: &i64) -> Tally {
        Tally {
            count: self.count * rhs,
            approved: self.approved * rhs,
            rejected: self.rejected * rhs,
            approved_amount_cents: self.approved_amount_cents * i128::from(*rhs),
            rejected_amount_cents: self.rejected_amount_cents * i128::from(*rhs),
        }
    }
}

/// The names of the ten analyses, in SPEC order.
pub const NAMES: [&str; 10] = [
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

/// The key of one row of one analysis.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AnalysisKey {
    /// 1. `status_counts`
    Status(Status),
    /// 2. `value_histogram`, band index into [`VALUE_BANDS`].
    ValueBand(u8),
    /// 3. `hour_histogram`, local hour.
    Hour(u8),
    /// 4. `value_risk_distribution`, bucket 0–10.
    ValueRiskBucket(u8),
    /// 5. `hour_risk_outcome`, hour_risk in halves (0, 1, 2).
    HourRisk(u8),
    /// 6. `state_approval`, the transaction region's UF (joined from the regions arrangement).
    State(String),
    /// 7. `insufficient_funds`, `InsufficientBalance` or `InsufficientLimit`.
    Funds(Status),
    /// 8. `mode_rejections`
    Mode(Mode),
    /// 9. `minute_frequency`, event-time minute index.
    Minute(i64),
    /// 10. `distance_band_outcome`, (minute index, band index into [`DISTANCE_BANDS`]).
    DistanceMinute(i64, u8),
}

impl AnalysisKey {
    /// The SPEC §7 name of the analysis this row belongs to (one of [`NAMES`]): the one
    /// place a key's analysis is named.
    pub fn name(&self) -> &'static str {
        NAMES[match self {
            AnalysisKey::Status(_) => 0,
            AnalysisKey::ValueBand(_) => 1,
            AnalysisKey::Hour(_) => 2,
            AnalysisKey::ValueRiskBucket(_) => 3,
            AnalysisKey::HourRisk(_) => 4,
            AnalysisKey::State(_) => 5,
            AnalysisKey::Funds(_) => 6,
            AnalysisKey::Mode(_) => 7,
            AnalysisKey::Minute(_) => 8,
            AnalysisKey::DistanceMinute(..) => 9,
        }]
    }
}

/// What the analyses need of one decision. Built by the decision operator so that the
/// analysis operator does no rule arithmetic of its own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Assessed {
    /// Whether the status is `approved` (else the outcome is `rejected`).
    pub approved: bool,
    /// The decision's status, one of the four assessed ones.
    pub status: Status,
    /// The amount, in cents.
    pub amount_cents: i64,
    /// The payment mode.
    pub mode: Mode,
    /// Local hour (UTC−03:00) of the event time, 0–23.
    pub local_hour: u8,
    /// Event-time minute index (UTC), `floor(E / 60 s)`.
    pub minute: i64,
    /// The SPEC §6 value risk.
    pub value_risk: f64,
    /// The SPEC §6 hour risk (0.0, 0.5 or 1.0).
    pub hour_risk: f64,
    /// Band of the payer-home ↔ payee-home distance.
    pub home_band: u8,
}

/// Pre-aggregates the analysis deltas of a batch of decisions so that the differential
/// part of the graph sees a handful of keyed rows per timestamp rather than ten per decision.
/// Small key domains are plain arrays; minutes a short vector; regions a hash map.
#[derive(Default)]
pub struct TallyBatch {
    status: [i64; 9],
    value_band: [Tally; 8],
    hour: [Tally; 24],
    bucket: [Tally; 11],
    hour_risk: [Tally; 3],
    funds: [Tally; 2],
    mode: [Tally; 4],
    minutes: Vec<(i64, Tally, [Tally; 4])>,
    /// Analysis 6, by UF.
    regions: foldhash::HashMap<String, Tally>,
}

fn add(t: &mut Tally, approved: bool, amount: i64) {
    t.count += 1;
    if approved {
        t.approved += 1;
        t.approved_amount_cents += i128::from(amount);
    } else {
        t.rejected += 1;
        t.rejected_amount_cents += i128::from(amount);
    }
}

impl TallyBatch {
    /// Counts one decision of any status (analysis 1).
    pub fn add_status(&mut self, status: Status) {
        self.status[status as usize] += 1;
    }

    /// Adds an assessed decision to analyses 2–10; `uf` is its transaction region's UF at
    /// its time (analysis 6).
    pub fn add_assessed(&mut self, a: &Assessed, uf: &str) {
        let (ok, amt) = (a.approved, a.amount_cents);
        add(
            &mut self.value_band[rules::value_band(amt) as usize],
            ok,
            amt,
        );
        add(&mut self.hour[a.local_hour as usize], ok, amt);
        add(
            &mut self.bucket[rules::value_risk_bucket(a.value_risk) as usize],
            ok,
            amt,
        );
        add(
            &mut self.hour_risk[rules::hour_risk_halves(a.hour_risk) as usize],
            ok,
            amt,
        );
        match a.status {
            Status::InsufficientBalance => add(&mut self.funds[0], false, amt),
            Status::InsufficientLimit => add(&mut self.funds[1], false, amt),
            _ => {}
        }
        add(&mut self.mode[a.mode as usize], ok, amt);
        // Decisions of one batch mostly share a minute: search from the back.
        let slot = match self.minutes.iter().rposition(|m| m.0 == a.minute) {
            Some(i) => i,
            None => {
                self.minutes
                    .push((a.minute, Default::default(), Default::default()));
                self.minutes.len() - 1
            }
        };
        let m = &mut self.minutes[slot];
        add(&mut m.1, ok, amt);
        add(&mut m.2[a.home_band as usize], ok, amt);
        match self.regions.get_mut(uf) {
            Some(t) => add(t, ok, amt),
            None => {
                let mut t = Tally::default();
                add(&mut t, ok, amt);
                self.regions.insert(uf.to_owned(), t);
            }
        }
    }

    /// Empties the batch into keyed rows (all but analysis 6) and analysis 6's rows
    /// (keyed by UF).
    pub fn drain(
        &mut self,
        mut keyed: impl FnMut(AnalysisKey, Tally),
        mut by_uf: impl FnMut(String, Tally),
    ) {
        for (i, n) in self.status.iter_mut().enumerate() {
            if *n != 0 {
                keyed(
                    AnalysisKey::Status(Status::ALL[i]),
                    Tally {
                        count: *n,
                        ..Tally::default()
                    },
                );
                *n = 0;
            }
        }
        fn flush<const N: usize>(
            arr: &mut [Tally; N],
            key: impl Fn(usize) -> AnalysisKey,
            keyed: &mut impl FnMut(AnalysisKey, Tally),
        ) {
            for (i, t) in arr.iter_mut().enumerate() {
                if !t.is_zero() {
                    keyed(key(i), std::mem::take(t));
                }
            }
        }
        flush(
            &mut self.value_band,
            |i| AnalysisKey::ValueBand(i as u8),
            &mut keyed,
        );
        flush(&mut self.hour, |i| AnalysisKey::Hour(i as u8), &mut keyed);
        flush(
            &mut self.bucket,
            |i| AnalysisKey::ValueRiskBucket(i as u8),
            &mut keyed,
        );
        flush(
            &mut self.hour_risk,
            |i| AnalysisKey::HourRisk(i as u8),
            &mut keyed,
        );
        flush(
            &mut self.funds,
            |i| {
                AnalysisKey::Funds(if i == 0 {
                    Status::InsufficientBalance
                } else {
                    Status::InsufficientLimit
                })
            },
            &mut keyed,
        );
        flush(
            &mut self.mode,
            |i| AnalysisKey::Mode(Mode::ALL[i]),
            &mut keyed,
        );
        for (minute, total, mut bands) in self.minutes.drain(..) {
            keyed(AnalysisKey::Minute(minute), total);
            flush(
                &mut bands,
                |b| AnalysisKey::DistanceMinute(minute, b as u8),
                &mut keyed,
            );
        }
        for (uf, t) in self.regions.drain() {
            by_uf(uf, t);
        }
    }
}

/// Renders accumulated rows as the SPEC §8 analyses JSON: one object whose keys are the
/// ten names. Rows are in key order; all-zero rows are left out, except that
/// `status_counts` always lists the nine statuses.
pub fn to_json(rows: &BTreeMap<AnalysisKey, Tally>) -> Value {
    let mut out: BTreeMap<&str, Vec<Value>> = NAMES.iter().map(|n| (*n, Vec::new())).collect();
    for status in Status::ALL {
        let count = rows
            .get(&AnalysisKey::Status(status))
            .map_or(0, |t| t.count);
        out.get_mut("status_counts")
            .expect("name")
            .push(json!({"status": status.as_str(), "count": count}));
    }
    for (key, t) in rows {
        if t.is_zero() || matches!(key, AnalysisKey::Status(_)) {
            continue;
        }
        let (name, row) = row_json(key, t);
        out.get_mut(name).expect("name").push(row);
    }
    Value::Object(
        out.into_iter()
            .map(|(k, v)| (k.to_owned(), Value::Array(v)))
            .collect(),
    )
}

/// One analysis row in its SPEC §7 shape, with the name of its analysis.
pub fn row_json(key: &AnalysisKey, t: &Tally) -> (&'static str, Value) {
    let row = match key {
        AnalysisKey::Status(s) => json!({"status": s.as_str(), "count": t.count}),
        AnalysisKey::ValueBand(b) => {
            json!({"band": VALUE_BANDS[*b as usize], "approved": t.approved, "rejected": t.rejected})
        }
        AnalysisKey::Hour(h) => json!({"hour": h, "approved": t.approved, "rejected": t.rejected}),
        AnalysisKey::ValueRiskBucket(b) => {
            json!({"bucket": b, "approved": t.approved, "rejected": t.rejected,
                       "approved_amount_cents": t.approved_amount_cents, "rejected_amount_cents": t.rejected_amount_cents})
        }
        AnalysisKey::HourRisk(h) => {
            json!({"hour_risk": *h as f64 / 2.0, "approved": t.approved, "rejected": t.rejected})
        }
        AnalysisKey::State(uf) => json!({"uf": uf, "approved": t.approved, "rejected": t.rejected}),
        AnalysisKey::Funds(reason) => {
            json!({"reason": reason.as_str(), "count": t.count, "amount_cents": t.rejected_amount_cents})
        }
        AnalysisKey::Mode(m) => {
            json!({"mode": m.as_str(), "approved": t.approved, "rejected": t.rejected})
        }
        AnalysisKey::Minute(m) => json!({"minute": format_minute(*m), "count": t.count}),
        AnalysisKey::DistanceMinute(m, b) => {
            json!({"minute": format_minute(*m), "band": DISTANCE_BANDS[*b as usize],
                       "approved": t.approved, "rejected": t.rejected})
        }
    };
    (key.name(), row)
}

/// A row key as stored in a table: (analysis name, key text, minute index or −1).
/// [`key_from_parts`] is its inverse.
pub fn key_parts(key: &AnalysisKey) -> (&'static str, String, i64) {
    let (k, minute) = match key {
        AnalysisKey::Status(s) => (s.as_str().to_owned(), -1),
        AnalysisKey::ValueBand(b) => (VALUE_BANDS[*b as usize].to_owned(), -1),
        AnalysisKey::Hour(h) => (h.to_string(), -1),
        AnalysisKey::ValueRiskBucket(b) => (b.to_string(), -1),
        AnalysisKey::HourRisk(h) => (format!("{:.1}", *h as f64 / 2.0), -1),
        AnalysisKey::State(uf) => (uf.clone(), -1),
        AnalysisKey::Funds(s) => (s.as_str().to_owned(), -1),
        AnalysisKey::Mode(m) => (m.as_str().to_owned(), -1),
        AnalysisKey::Minute(m) => (String::new(), *m),
        AnalysisKey::DistanceMinute(m, b) => (DISTANCE_BANDS[*b as usize].to_owned(), *m),
    };
    (key.name(), k, minute)
}

/// The row key stored as `key_parts` gave it, or `None` for anything else.
pub fn key_from_parts(analysis: &str, k: &str, minute: i64) -> Option<AnalysisKey> {
    let index = |list: &[&str]| list.iter().position(|x| *x == k).map(|i| i as u8);
    Some(match analysis {
        "status_counts" => AnalysisKey::Status(Status::parse(k)?),
        "value_histogram" => AnalysisKey::ValueBand(index(&VALUE_BANDS)?),
        "hour_histogram" => AnalysisKey::Hour(k.parse().ok().filter(|h| *h < 24)?),
        "value_risk_distribution" => {
            AnalysisKey::ValueRiskBucket(k.parse().ok().filter(|b| *b <= 10)?)
        }
        "hour_risk_outcome" => AnalysisKey::HourRisk(index(&["0.0", "0.5", "1.0"])?),
        "state_approval" => AnalysisKey::State(k.to_owned()),
        "insufficient_funds" => match Status::parse(k)? {
            s @ (Status::InsufficientBalance | Status::InsufficientLimit) => AnalysisKey::Funds(s),
            _ => return None,
        },
        "mode_rejections" => AnalysisKey::Mode(*Mode::ALL.iter().find(|m| m.as_str() == k)?),
        "minute_frequency" => AnalysisKey::Minute(minute),
        "distance_band_outcome" => AnalysisKey::DistanceMinute(minute, index(&DISTANCE_BANDS)?),
        _ => return None,
    })
}

/// Applies one batch of `count_total` output (row, ±1) to accumulated rows.
/// Retractions and insertions of one timestamp may arrive in any order.
pub fn apply_changes(
    rows: &mut BTreeMap<AnalysisKey, Tally>,
    changes: impl IntoIterator<Item = ((AnalysisKey, Tally), isize)>,
) {
    let mut pending: Vec<((AnalysisKey, Tally), isize)> = changes.into_iter().collect();
    differential_dataflow::consolidation::consolidate(&mut pending);
    for ((key, tally), diff) in pending.iter().filter(|(_, d)| *d < 0) {
        debug_assert_eq!(*diff, -1);
        if rows.get(key) == Some(tally) {
            rows.remove(key);
        }
    }
    for ((key, tally), _) in pending.into_iter().filter(|(_, d)| *d > 0) {
        rows.insert(key, tally);
    }
}

/// A row of a shadow's what-if analysis (SPEC §12): what the rules of record decided
/// about a transaction message, and what the shadow rule set decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WhatIfKey {
    /// The status under the rules of record.
    pub primary: Status,
    /// The status under the shadow rule set.
    pub shadow: Status,
}

/// The counters of a what-if row, and the difference type of its collection: messages,
/// and the sum of the amounts of those that parsed (exact, 128-bit, as SPEC §7's sums).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct WhatIfTally {
    /// Messages.
    pub count: i64,
    /// Sum of the amounts of the messages that parsed, in cents.
    pub amount_cents: i128,
}

impl IsZero for WhatIfTally {
    fn is_zero(&self) -> bool {
        *self == WhatIfTally::default()
    }
}

impl Semigroup for WhatIfTally {
    fn plus_equals(&mut self, rhs: &Self) {
        self.count += rhs.count;
        self.amount_cents += rhs.amount_cents;
    }
}

impl Monoid for WhatIfTally {
    fn zero() -> Self {
        WhatIfTally::default()
    }
}

impl Abelian for WhatIfTally {
    fn negate(&mut self) {
        self.count = -self.count;
        self.amount_cents = -self.amount_cents;
    }
}

/// A change to a what-if row as it leaves `count_total`: row, +1 or −1.
pub type WhatIfChange = ((WhatIfKey, WhatIfTally), isize);

/// Applies what-if row changes (as [`apply_changes`] does the analyses').
pub fn apply_what_if(
    rows: &mut BTreeMap<WhatIfKey, WhatIfTally>,
    changes: impl IntoIterator<Item = WhatIfChange>,
) {
    let mut pending: Vec<WhatIfChange> = changes.into_iter().collect();
    differential_dataflow::consolidation::consolidate(&mut pending);
    for ((key, tally), _) in pending.iter().filter(|(_, d)| *d < 0) {
        if rows.get(key) == Some(tally) {
            rows.remove(key);
        }
    }
    for ((key, tally), _) in pending.into_iter().filter(|(_, d)| *d > 0) {
        rows.insert(key, tally);
    }
}

/// A shadow's what-if rows as SPEC §12 shapes them: `{"shadow", "primary_status",
/// "shadow_status", "count", "amount_cents"}`, in status order (sums as exact integers).
pub fn what_if_json(shadow: &str, rows: &BTreeMap<WhatIfKey, WhatIfTally>) -> Value {
    Value::Array(
        rows.iter()
            .map(|(k, t)| what_if_row(shadow, k, t))
            .collect(),
    )
}

/// One what-if row as SPEC §12 shapes it.
pub fn what_if_row(shadow: &str, k: &WhatIfKey, t: &WhatIfTally) -> Value {
    json!({
        "shadow": shadow,
        "primary_status": k.primary.as_str(),
        "shadow_status": k.shadow.as_str(),
        "count": t.count,
        "amount_cents": t.amount_cents,
    })
}

#[cfg(test)]
mod parts_tests {
    use super::*;

    #[test]
    fn key_parts_round_trip() {
        let keys = [
            AnalysisKey::Status(Status::Stale),
            AnalysisKey::ValueBand(7),
            AnalysisKey::Hour(23),
            AnalysisKey::ValueRiskBucket(10),
            AnalysisKey::HourRisk(1),
            AnalysisKey::State("SP".into()),
            AnalysisKey::Funds(Status::InsufficientLimit),
            AnalysisKey::Mode(Mode::Credito),
            AnalysisKey::Minute(29_400_000),
            AnalysisKey::DistanceMinute(29_400_001, 3),
        ];
        for key in keys {
            let (a, k, m) = key_parts(&key);
            assert_eq!(key_from_parts(a, &k, m), Some(key.clone()), "{a} {k} {m}");
        }
        assert_eq!(key_from_parts("insufficient_funds", "approved", -1), None);
        assert_eq!(key_from_parts("hour_histogram", "24", -1), None);
        assert_eq!(key_from_parts("nope", "x", -1), None);
    }

    /// SPEC §7 (revision 3): sums of amounts are exact past 64 bits — 10^8 maximum
    /// amounts (10^11 cents each) sum to 10^19, beyond i64 — and are written as JSON
    /// numbers with every digit.
    #[test]
    fn amount_sums_never_wrap() {
        let mut t = Tally::default();
        for _ in 0..3 {
            let mut batch = Tally::default();
            add(&mut batch, false, 100_000_000_000);
            for _ in 0..33 {
                let b = batch;
                batch.plus_equals(&b);
            }
            t.plus_equals(&batch);
        }
        // 3 · 2^33 · 10^11 = 2,576,980,377,600,000,000,000 > i64::MAX.
        let want: i128 = 3 * (1i128 << 33) * 100_000_000_000;
        assert!(want > i128::from(i64::MAX));
        assert_eq!(t.rejected_amount_cents, want);
        let mut rows = BTreeMap::new();
        rows.insert(AnalysisKey::Funds(Status::InsufficientBalance), t);
        let text = to_json(&rows).to_string();
        assert!(text.contains(&format!("\"amount_cents\":{want}")), "{text}");
        let back: Value = serde_json::from_str(&text).unwrap();
        let amount = &back["insufficient_funds"][0]["amount_cents"];
        assert_eq!(amount.to_string().parse::<i128>().unwrap(), want);
    }
}

//! The domain model of SPEC §2–5: reference data, the parsed transaction, statuses,
//! source positions and the pipeline parameters. Money is integer cents; times are
//! milliseconds since the Unix epoch.

use serde::{Deserialize, Serialize};

/// Arrival time `t` (SPEC §4), ms since the Unix epoch. It is also the timely timestamp.
pub type Time = u64;

/// An identifier carried by a message (transaction, user, region). Up to 24 bytes are
/// stored inline (user and region ids always are), so a message's ids cost no
/// allocation and comparing or hashing them reads no other memory.
pub type Id = compact_str::CompactString;

/// Integer cents.
pub type Cents = i64;

/// A payment mode, in its canonical (SPEC §3) spelling.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `pix`: instant payment; spends balance.
    /// (The default only fills a message taken out of a batch; it is never decided on.)
    #[default]
    Pix,
    /// `debito`: debit payment; spends balance.
    Debito,
    /// `credito`: credit payment; spends credit limit.
    Credito,
    /// `boleto`: bank slip payment; spends balance.
    Boleto,
}

impl Mode {
    /// The four modes, in declaration order (`mode as usize` indexes it).
    pub const ALL: [Mode; 4] = [Mode::Pix, Mode::Debito, Mode::Credito, Mode::Boleto];

    /// The canonical name, as in outputs (SPEC §3).
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Pix => "pix",
            Mode::Debito => "debito",
            Mode::Credito => "credito",
            Mode::Boleto => "boleto",
        }
    }

    /// `credito` spends credit limit; every other mode spends balance (SPEC §5 rule 6).
    pub fn uses_credit(self) -> bool {
        matches!(self, Mode::Credito)
    }
}

/// The status of a message: exactly one per message, the first rule of SPEC §5 that applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Rule 1: breaks SPEC §3, or the event time is in the future (E > t + max_delay).
    Invalid,
    /// Rule 2: t − E > max_delay.
    Late,
    /// Rule 3: the same `id_transacao` was last seen within `dedup_window`.
    Duplicate,
    /// Rule 4: payer, payee or region unknown, or payer = payee.
    UnknownReference,
    /// Rule 5: E is before the payer's last approved event time.
    Stale,
    /// Rule 6: a `pix`, `debito` or `boleto` amount above the payer's balance.
    InsufficientBalance,
    /// Rule 6: a `credito` amount above the payer's credit limit − credit used.
    InsufficientLimit,
    /// Rule 7: risk above `risk_threshold`.
    RejectedRisk,
    /// Rule 8: passed every rule; the only status with effects.
    Approved,
}

impl Status {
    /// The nine statuses in rule order (`status as usize` indexes it).
    pub const ALL: [Status; 9] = [
        Status::Invalid,
        Status::Late,
        Status::Duplicate,
        Status::UnknownReference,
        Status::Stale,
        Status::InsufficientBalance,
        Status::InsufficientLimit,
        Status::RejectedRisk,
        Status::Approved,
    ];

    /// The SPEC §5 name, as in outputs.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Invalid => "invalid",
            Status::Late => "late",
            Status::Duplicate => "duplicate",
            Status::UnknownReference => "unknown_reference",
            Status::Stale => "stale",
            Status::InsufficientBalance => "insufficient_balance",
            Status::InsufficientLimit => "insufficient_limit",
            Status::RejectedRisk => "rejected_risk",
            Status::Approved => "approved",
        }
    }

    /// The status whose [`Status::as_str`] name is `s`, if any.
    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Assessed = reached rule 6 (SPEC §5 "Outcome").
    pub fn is_assessed(self) -> bool {
        matches!(
            self,
            Status::InsufficientBalance
                | Status::InsufficientLimit
                | Status::RejectedRisk
                | Status::Approved
        )
    }
}

/// A transaction message that passed SPEC §3.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Tx {
    /// `id_transacao`, exactly as parsed.
    pub id: Id,
    /// `id_usuario_pagador`: the payer's user id.
    pub payer: Id,
    /// `id_usuario_recebedor`: the payee's user id.
    pub payee: Id,
    /// `id_regiao`: the region where the transaction happens.
    pub region: Id,
    /// `modalidade_pagamento`, canonical.
    pub mode: Mode,
    /// `valor_transacao` in integer cents, 1 to 100,000,000,000 (SPEC §3).
    pub amount_cents: Cents,
    /// Event time E, ms since the Unix epoch (negative before 1970).
    pub event_ms: i64,
}

/// Where a message came from: (partition, offset) in Kafka, (0, sequence) elsewhere.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct SourcePos {
    /// Kafka partition (0 for sources without partitions).
    pub partition: i32,
    /// Kafka offset, or the sequence number for sources without partitions.
    pub offset: i64,
}

/// A region of SPEC §2.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Region {
    /// Region id.
    pub id: String,
    /// Two-letter Brazilian state code (one of the 27).
    pub uf: String,
    /// Region name.
    pub name: String,
    /// Latitude in degrees (WGS84).
    pub lat: f64,
    /// Longitude in degrees (WGS84).
    pub lon: f64,
}

/// A user of SPEC §2, as loaded (runtime state lives in the decision operator).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// User id.
    pub id: String,
    /// User name.
    pub name: String,
    /// Id of the user's home region.
    pub region_id: String,
    /// Opening balance in cents (>= 0).
    pub balance_cents: Cents,
    /// Credit limit in cents (>= 0).
    pub credit_limit_cents: Cents,
}

/// A rule set of SPEC §11: the parameters of rules 1–3 and 7 under a version name. The
/// initial one is `"default"` (or the `--rules` file); `rules` control records replace it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuleSet {
    /// Its name, carried by every decision it decides (`rules_version`); never reused.
    pub version: String,
    /// `risk_threshold` of rule 7 (finite, >= 0).
    pub risk_threshold: f64,
    /// `max_delay` of rules 1–2, in ms.
    pub max_delay_ms: u64,
    /// `dedup_window` of rule 3, in ms.
    pub dedup_window_ms: u64,
}

impl RuleSet {
    /// The rule set of these parameters, under the name `version`.
    pub fn of(params: &Params, version: &str) -> Self {
        RuleSet {
            version: version.to_owned(),
            risk_threshold: params.risk_threshold,
            max_delay_ms: params.max_delay_ms,
            dedup_window_ms: params.dedup_window_ms,
        }
    }

    /// `params` with this rule set's three rule parameters.
    pub fn apply_to(&self, params: &Params) -> Params {
        Params {
            risk_threshold: self.risk_threshold,
            max_delay_ms: self.max_delay_ms,
            dedup_window_ms: self.dedup_window_ms,
            ..*params
        }
    }
}

/// What a control record (SPEC §11) changes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Change {
    /// `user`: creates the user, or updates an existing one's name, home region and
    /// credit limit (its `balance_cents` is then ignored).
    User(User),
    /// `user_delete`: the user no longer exists; its state is dropped.
    UserDelete {
        /// User id.
        id: String,
    },
    /// `balance_adjustment`: balance += amount (non-zero, either sign).
    Adjust {
        /// User id.
        user_id: String,
        /// Cents added (negative: an external debit).
        amount_cents: Cents,
    },
    /// `region`: creates or replaces the region.
    Region(Region),
    /// `region_delete`: the region becomes unknown.
    RegionDelete {
        /// Region id.
        id: String,
    },
    /// `rules`: becomes the rule set in force.
    Rules(RuleSet),
}

/// A parsed control record (SPEC §11): its change and optional `effective_from` (ms
/// since the Unix epoch, the §3 event-time form). It takes effect at
/// `T = max(t_c, effective_from)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ControlRecord {
    /// The change.
    pub change: Change,
    /// `effective_from`, if given.
    pub effective_from: Option<i64>,
}

/// The rule parameters of SPEC §5 and §9.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Params {
    /// `max_delay` of rules 1–2, in ms (default 1000).
    pub max_delay_ms: u64,
    /// `dedup_window` of rule 3, in ms (default 300,000).
    pub dedup_window_ms: u64,
    /// `risk_threshold` of rule 7: a higher risk is rejected (default 0.5).
    pub risk_threshold: f64,
    /// Not a rule: the number of transaction ids (across all workers) the duplicate table
    /// is sized for up front, so that it does not stop to grow while deciding. It grows
    /// beyond this as needed.
    pub dedup_capacity: usize,
    /// Not a rule: the grid of the graph's timestamps, in ms (a power of two). A message
    /// enters at the start of its cell of the grid and its outputs leave at the cell's
    /// end, so every operator, exchange and sink pays once per cell, not once per
    /// millisecond. Decisions do not depend on it; how soon they leave does (1 when live).
    pub epoch_ms: u64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            max_delay_ms: 1000,
            dedup_window_ms: 300_000,
            risk_threshold: 0.5,
            dedup_capacity: 0,
            epoch_ms: 1,
        }
    }
}

impl Params {
    /// The first millisecond of `t`'s cell: the timestamp a message at `t` enters at.
    pub fn cell_start(&self, t: Time) -> Time {
        t & !(self.epoch_ms.max(1) - 1)
    }

    /// The last millisecond of `t`'s cell: the timestamp `t`'s outputs leave at.
    pub fn cell_end(&self, t: Time) -> Time {
        t | (self.epoch_ms.max(1) - 1)
    }
}

/// The largest power of two, at most `limit`, whose cells of arrival times (`times`, any
/// order) each hold at most `per_cell` messages: the epoch for a feed known in advance (a
/// capture, the bench's messages).
pub fn epoch_for(times: &[Time], per_cell: usize, limit: u64) -> u64 {
    let mut times = times.to_vec();
    times.sort_unstable();
    let fits = |epoch: u64| {
        let mask = !(epoch - 1);
        let mut run = 0usize;
        let mut cell = None;
        for &t in &times {
            if cell == Some(t & mask) {
                run += 1;
            } else {
                cell = Some(t & mask);
                run = 1;
            }
            if run > per_cell {
                return false;
            }
        }
        true
    };
    let mut epoch = 1u64;
    while epoch < limit && fits(epoch * 2) {
        epoch *= 2;
    }
    epoch
}

/// The wall clock, µs since the Unix epoch: the stamps sources and consumers put on
/// records (`ingest_us`, `decided_us`, latencies). Nothing in the graph reads it.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_cells_hold_at_most_the_asked_messages() {
        // 1 message per ms over 100 ms, in any order.
        let times: Vec<Time> = (0..100).rev().collect();
        assert_eq!(epoch_for(&times, 16, 1 << 20), 16);
        assert_eq!(epoch_for(&times, 15, 1 << 20), 8);
        assert_eq!(epoch_for(&times, 1000, 32), 32);
        // A burst of 20 at one ms fits no cell of 16: the grid stays at 1 ms.
        let burst = vec![7; 20];
        assert_eq!(epoch_for(&burst, 16, 1 << 20), 1);
        let p = Params {
            epoch_ms: 16,
            ..Params::default()
        };
        assert_eq!((p.cell_start(37), p.cell_end(37)), (32, 47));
    }
}

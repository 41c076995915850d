//! The synthetic transaction generator: SPEC §3 messages with a controlled mix of
//! faults, deterministic for a seed. Used by `vtpga generate` (capture files), by
//! the embedded source of `vtpga run`, and by the Kafka producer.
//!
//! Timing. [`Generator::next_message`] runs its own arrival clock: each message's
//! record timestamp is the previous one plus `warp / rate_per_sec` seconds (with
//! ±50% jitter), starting at `start_ms`. [`Generator::next_at`] takes the arrival
//! time from the caller (live use). A message's event time E is derived from its
//! arrival time t only: on-time messages have E = t − 0..=300 ms, so the event
//! times of a run cover exactly the span of its arrival clock. Hence `warp`: live
//! sources keep it at 1.0, while `vtpga generate` uses
//! [`GeneratorConfig::spanning`] so that, e.g., 200,000 messages span 24 hours and
//! every local hour of the day occurs.
//!
//! Faults (each drawn per message with its share):
//! * `late`: E = t − 1,001..=60,000 ms;
//! * `future`: E = t + 1,001..=60,000 ms (invalid by SPEC §5 rule 1);
//! * `duplicate`: the exact payload of a recent on-time message, re-sent at a new
//!   position while it is still on time (if no recent message qualifies, the current
//!   message is a fresh one and its duplicate follows right after it);
//! * `stale`: a small, local `pix` "lead" payment by a well-funded payer, followed
//!   1+ ms later by another payment of that payer whose E lies before the lead's E
//!   but still within the on-time window, so it is `stale` if the lead was approved
//!   (best effort: the lead may be refused for lack of balance);
//! * `invalid`: a mix of SPEC §3 violations (see [`InvalidKind`]);
//! * `unknown`: an unknown payer, payee or region, or payer = payee.
//!
//! On-time messages of one payer get non-decreasing event times, so a payer never
//! turns `stale` by accident: every `stale` comes from the stale fault.
//!
//! Every payload is valid UTF-8 (so it fits a JSON string in a capture file, SPEC
//! §9); the "binary garbage" invalid messages are random control characters and
//! symbols, not arbitrary bytes.

use std::collections::{HashSet, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vtpga_dataflow::model::{Mode, Region, Status, User};

use crate::refdata::{cumulative, haversine_km, pick_weighted};

/// Configuration of a [`Generator`]. Shares are probabilities per message and must
/// sum to at most 1; the rest are ordinary messages.
#[derive(Clone, Debug, PartialEq)]
pub struct GeneratorConfig {
    /// Seed of every random choice: the same seed and reference data give the same
    /// messages.
    pub seed: u64,
    /// Nominal arrival rate (messages per second of the generator's clock).
    pub rate_per_sec: f64,
    /// Record timestamp of the first message (ms since the Unix epoch).
    pub start_ms: u64,
    /// Number of Kafka partitions messages are spread over (by payer id).
    pub partitions: i32,
    /// Share of `late` messages: E = t − 1,001..=60,000 ms.
    pub late_share: f64,
    /// Share of `duplicate` messages: the payload of a recent on-time message sent again.
    pub duplicate_share: f64,
    /// Share of stale pairs: a lead payment, then a payment of the same payer whose E lies
    /// before the lead's.
    pub stale_share: f64,
    /// Share of messages with E = t + 1,001..=60,000 ms (`invalid` by SPEC §5 rule 1).
    pub future_share: f64,
    /// Share of messages that break SPEC §3 (see [`InvalidKind`]).
    pub invalid_share: f64,
    /// Share of messages with an unknown payer, payee or region, or payer = payee (see
    /// [`UnknownKind`]).
    pub unknown_share: f64,
    /// Time warp of the internal clock: each message advances it by
    /// `warp / rate_per_sec` seconds. 1.0 for live use.
    pub warp: f64,
    /// Skewed traffic: this share of the payments comes from the first `hot_payers`
    /// users (0 for the usual spread).
    pub hot_share: f64,
    /// How many users the `hot_share` of the payments comes from.
    pub hot_payers: usize,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            seed: 42,
            rate_per_sec: 5000.0,
            // 2025-11-26T14:00:00Z (11:00 in Brasília).
            start_ms: 1_764_165_600_000,
            partitions: 4,
            late_share: 0.01,
            duplicate_share: 0.01,
            stale_share: 0.005,
            future_share: 0.002,
            invalid_share: 0.005,
            unknown_share: 0.005,
            warp: 1.0,
            hot_share: 0.0,
            hot_payers: 0,
        }
    }
}

impl GeneratorConfig {
    /// Checks the parameters; [`Generator::new`] panics with this message otherwise.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.rate_per_sec.is_finite() && self.rate_per_sec > 0.0) {
            return Err(format!(
                "rate_per_sec must be > 0, not {}",
                self.rate_per_sec
            ));
        }
        if !(self.warp.is_finite() && self.warp > 0.0) {
            return Err(format!("warp must be > 0, not {}", self.warp));
        }
        if self.partitions < 1 {
            return Err(format!("partitions must be >= 1, not {}", self.partitions));
        }
        let shares = [
            ("late_share", self.late_share),
            ("duplicate_share", self.duplicate_share),
            ("stale_share", self.stale_share),
            ("future_share", self.future_share),
            ("invalid_share", self.invalid_share),
            ("unknown_share", self.unknown_share),
        ];
        for (name, s) in shares {
            if !(0.0..=1.0).contains(&s) {
                return Err(format!("{name} must be within 0..=1, not {s}"));
            }
        }
        if !(0.0..=1.0).contains(&self.hot_share) {
            return Err(format!(
                "hot_share must be within 0..=1, not {}",
                self.hot_share
            ));
        }
        if self.hot_share > 0.0 && self.hot_payers == 0 {
            return Err("hot_share needs at least one hot payer".to_owned());
        }
        let sum: f64 = shares.iter().map(|(_, s)| s).sum();
        if sum > 1.0 + 1e-9 {
            return Err(format!("the fault shares sum to {sum}, more than 1"));
        }
        Ok(())
    }

    /// Sets `warp` so that `count` messages from [`Generator::next_message`] span
    /// about `span_ms` of arrival (and event) time. `vtpga generate` uses a span of
    /// at least 24 h so that every local hour occurs.
    pub fn spanning(mut self, count: usize, span_ms: u64) -> Self {
        let count = count.max(1) as f64;
        self.warp = (span_ms as f64 * self.rate_per_sec / (1000.0 * count)).max(f64::MIN_POSITIVE);
        self
    }

    /// Mean spacing of record timestamps in ms.
    pub fn interval_ms(&self) -> f64 {
        1000.0 / self.rate_per_sec * self.warp
    }
}

/// One generated Kafka message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenMessage {
    /// Record timestamp (ms since the Unix epoch): the arrival time t.
    pub record_ts: u64,
    /// The Kafka partition: [`partition_for`] of the key.
    pub partition: i32,
    /// The payer id as intended by the generator: the Kafka key.
    pub key: String,
    /// The raw message (always valid UTF-8, often but not always JSON).
    pub payload: Vec<u8>,
}

/// What the generator meant a message to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// An ordinary, well-formed, on-time message with known references
    /// (including the lead of a stale pair).
    Normal,
    /// E = t − 1,001..=60,000 ms: `late`.
    Late,
    /// The exact payload of a recent on-time message, sent again: `duplicate`.
    Duplicate,
    /// A payment whose E lies before that of its payer's lead payment just before it:
    /// `stale` if the lead was approved.
    Stale,
    /// E = t + 1,001..=60,000 ms: `invalid` (event time in the future).
    Future,
    /// A SPEC §3 violation of the given kind: `invalid`.
    Invalid(InvalidKind),
    /// An unknown reference of the given kind: `unknown_reference`.
    Unknown(UnknownKind),
}

impl MessageKind {
    /// The SPEC §5 status this message should get (`None` for ordinary messages,
    /// which are assessed). Stale is best effort (see the module doc).
    pub fn expected_status(self) -> Option<Status> {
        match self {
            MessageKind::Normal => None,
            MessageKind::Late => Some(Status::Late),
            MessageKind::Duplicate => Some(Status::Duplicate),
            MessageKind::Stale => Some(Status::Stale),
            MessageKind::Future | MessageKind::Invalid(_) => Some(Status::Invalid),
            MessageKind::Unknown(_) => Some(Status::UnknownReference),
        }
    }
}

/// The kinds of invalid message the generator produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InvalidKind {
    /// A valid message cut short.
    Truncated,
    /// `key=value` text instead of JSON.
    NotJson,
    /// Random control characters and symbols (valid UTF-8, not JSON).
    Garbage,
    /// One of the seven fields left out.
    MissingField,
    /// One field of the wrong JSON type (e.g. `null` for the id, `true` for the amount).
    WrongType,
    /// e.g. `"cash"`, `"pix "` (no trimming).
    BadMode,
    /// e.g. `"2026-13-01T00:00:00"`.
    BadTime,
    /// Zero, negative, rounding to 0 cents, too large, or a malformed string.
    BadAmount,
    /// One of the seven fields given twice.
    DuplicatedField,
    /// Valid JSON whose top level is not an object.
    NotObject,
    /// One of the four ids is the empty string.
    EmptyId,
    /// A leading byte order mark.
    Bom,
    /// A lone surrogate escape `\ud800` in a string.
    LoneSurrogate,
    /// More than 32 levels of nesting (in an extra field).
    TooDeep,
    /// More than 65,536 bytes.
    TooLarge,
}

/// The kinds of unknown-reference message the generator produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnknownKind {
    /// A payer id that no user has.
    Payer,
    /// A payee id that no user has.
    Payee,
    /// A region id that no region has.
    Region,
    /// The payee is the payer.
    SelfPayment,
}

/// 64-bit FNV-1a of `bytes`: a stable hash (unlike std's randomised hasher).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The partition of a key: FNV-1a of its bytes modulo `partitions` (>= 1).
pub fn partition_for(key: &str, partitions: i32) -> i32 {
    let p = partitions.max(1) as u64;
    (fnv1a64(key.as_bytes()) % p) as i32
}

/// How an event time is written.
#[derive(Clone, Copy)]
struct TimeStyle {
    /// Offset in minutes east of UTC written as `±hh:mm`; `None` with `zulu` false
    /// means no offset at all (Brasília time).
    offset_min: Option<i32>,
    zulu: bool,
    sep: char,
    /// Extra sub-millisecond digits (0..=999), written after the 3 ms digits.
    micros: Option<u32>,
}

fn format_time(e_ms: i64, style: TimeStyle) -> String {
    let shift = if style.zulu {
        0
    } else {
        style.offset_min.unwrap_or(-180)
    };
    let local = e_ms + shift as i64 * 60_000;
    let days = local.div_euclid(86_400_000);
    let ms_of_day = local.rem_euclid(86_400_000);
    let (y, mo, d) = vtpga_dataflow::calendar::civil_from_days(days);
    let (h, mi, s, ms) = (
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000,
    );
    let mut out = format!(
        "{y:04}-{mo:02}-{d:02}{}{h:02}:{mi:02}:{s:02}.{ms:03}",
        style.sep
    );
    if let Some(us) = style.micros {
        let _ = write!(out, "{us:03}");
    }
    if style.zulu {
        out.push('Z');
    } else if let Some(off) = style.offset_min {
        let sign = if off < 0 { '-' } else { '+' };
        let a = off.abs();
        let _ = write!(out, "{sign}{:02}:{:02}", a / 60, a % 60);
    }
    out
}

/// E in Brasília time with milliseconds, e.g. `2025-11-26T11:03:12.345-03:00`.
pub fn format_brasilia(e_ms: i64) -> String {
    format_time(
        e_ms,
        TimeStyle {
            offset_min: Some(-180),
            zulu: false,
            sep: 'T',
            micros: None,
        },
    )
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialise")
}

use vtpga_dataflow::parse::FIELDS;

/// A message in the making: the seven field values as JSON texts.
struct Draft {
    payer: Option<usize>,
    payer_id: String,
    e_ms: i64,
    /// JSON value texts in [`FIELDS`] order.
    values: [String; 7],
}

impl Draft {
    fn render_with(&self, extra: &str) -> String {
        let mut s = String::with_capacity(256);
        s.push('{');
        for (i, (name, value)) in FIELDS.iter().zip(&self.values).enumerate() {
            if i > 0 {
                s.push(',');
            }
            let _ = write!(s, "\"{name}\":{value}");
        }
        s.push_str(extra);
        s.push('}');
        s
    }
}

/// A message scheduled to follow the current one.
enum FollowUp {
    Duplicate { key: String, payload: Vec<u8> },
    Stale { payer: usize, lead_e: i64 },
}

/// A recent on-time message that may be re-sent as a duplicate.
struct Recent {
    e_ms: i64,
    key: String,
    payload: Vec<u8>,
}

const RECENT_CAP: usize = 64;
/// On-time delay of ordinary messages: E = t − 0..=MAX_ON_TIME_DELAY.
const MAX_ON_TIME_DELAY: i64 = 300;
/// Duplicates and stale messages keep t − E within this (max_delay is 1000 ms).
const ON_TIME_LIMIT: i64 = 900;
/// `modalidade_pagamento` values of [`InvalidKind::BadMode`] messages (JSON strings).
const BAD_MODES: [&str; 6] = ["cash", "dinheiro", "pix ", " pix", "ted", ""];
/// `data_horario` values of [`InvalidKind::BadTime`] messages (JSON strings).
const BAD_TIMES: [&str; 7] = [
    "2026-13-01T00:00:00",
    "2025-02-29T10:00:00-03:00",
    "26/11/2025 14:03:12",
    "2025-11-26T24:00:00Z",
    "2025-11-26T14:03:12+0300",
    "2025-11-26T14:03:60Z",
    " 2025-11-26T14:03:12Z",
];
/// `valor_transacao` values of [`InvalidKind::BadAmount`] messages, as raw JSON.
const BAD_AMOUNTS: [&str; 8] = [
    "0",
    "0.00",
    "\"0.004\"",
    "-15.50",
    "\"-3.00\"",
    "1000000000.01",
    "\"12,50\"",
    "\"R$ 10.00\"",
];

/// The transaction generator. See the module documentation.
pub struct Generator {
    cfg: GeneratorConfig,
    rng: ChaCha8Rng,
    regions: Arc<[Region]>,
    users: Arc<[User]>,
    /// Cumulative payer activity weights.
    payer_cum: Vec<f64>,
    /// Home region index of each user (None if its region is not in `regions`).
    home: Vec<Option<usize>>,
    /// Users by home region index.
    region_users: Vec<Vec<usize>>,
    /// Users with a comfortable balance, for stale leads.
    funded: Vec<usize>,
    user_ids: HashSet<String>,
    region_ids: HashSet<String>,
    /// Latest event time given to an on-time message of each user.
    last_e: Vec<i64>,
    recent: VecDeque<Recent>,
    pending: Option<FollowUp>,
    clock: f64,
    last_t: Option<u64>,
    last_kind: MessageKind,
    produced: u64,
}

impl Generator {
    /// A generator over the given reference data.
    ///
    /// Panics if the configuration is invalid ([`GeneratorConfig::validate`]), if
    /// there are fewer than two users or no regions.
    pub fn new(
        cfg: GeneratorConfig,
        regions: impl Into<Arc<[Region]>>,
        users: impl Into<Arc<[User]>>,
    ) -> Self {
        if let Err(e) = cfg.validate() {
            panic!("invalid generator configuration: {e}");
        }
        let regions: Arc<[Region]> = regions.into();
        let users: Arc<[User]> = users.into();
        assert!(
            !regions.is_empty(),
            "the generator needs at least one region"
        );
        assert!(users.len() >= 2, "the generator needs at least two users");
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let region_index: std::collections::HashMap<&str, usize> = regions
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id.as_str(), i))
            .collect();
        let home: Vec<Option<usize>> = users
            .iter()
            .map(|u| region_index.get(u.region_id.as_str()).copied())
            .collect();
        let mut region_users = vec![Vec::new(); regions.len()];
        for (ui, h) in home.iter().enumerate() {
            if let Some(r) = h {
                region_users[*r].push(ui);
            }
        }
        // Activity: a few users transact far more than most (weights 0.95..=20).
        let payer_cum = cumulative((0..users.len()).map(|_| 1.0 / (0.05 + rng.random::<f64>())));
        let mut funded: Vec<usize> = (0..users.len())
            .filter(|&i| users[i].balance_cents >= 50_000)
            .collect();
        if funded.is_empty() {
            funded = (0..users.len()).collect();
        }
        let user_ids = users.iter().map(|u| u.id.clone()).collect();
        let region_ids = regions.iter().map(|r| r.id.clone()).collect();
        let n = users.len();
        Generator {
            clock: cfg.start_ms as f64,
            cfg,
            rng,
            regions,
            users,
            payer_cum,
            home,
            region_users,
            funded,
            user_ids,
            region_ids,
            last_e: vec![i64::MIN; n],
            recent: VecDeque::with_capacity(RECENT_CAP),
            pending: None,
            last_t: None,
            last_kind: MessageKind::Normal,
            produced: 0,
        }
    }

    /// The configuration the generator was built with.
    pub fn config(&self) -> &GeneratorConfig {
        &self.cfg
    }

    /// What the last returned message was meant to be.
    pub fn last_kind(&self) -> MessageKind {
        self.last_kind
    }

    /// Number of messages produced so far.
    pub fn produced(&self) -> u64 {
        self.produced
    }

    /// The next message on the generator's own clock.
    pub fn next_message(&mut self) -> GenMessage {
        let t = match (&self.pending, self.last_t) {
            // A follow-up comes 1..=50 ms (at most about one interval) after its lead.
            (Some(_), Some(last)) => {
                let max_gap = self.cfg.interval_ms().ceil().clamp(1.0, 50.0) as u64;
                let t = last + self.rng.random_range(1..=max_gap);
                // It still takes its slot, so `count` messages span `count` intervals.
                let jitter = self.rng.random_range(0.5..1.5);
                self.clock = self.clock.max(t as f64) + self.cfg.interval_ms() * jitter;
                t
            }
            _ => {
                let t = (self.clock.floor() as u64).max(self.last_t.unwrap_or(0));
                let jitter = self.rng.random_range(0.5..1.5);
                self.clock += self.cfg.interval_ms() * jitter;
                t
            }
        };
        self.produce(t)
    }

    /// The next message, arriving at `t_ms` (live use: the caller's clock). A
    /// scheduled follow-up (see the module doc) that arrives much later than its
    /// lead may not get its intended status.
    pub fn next_at(&mut self, t_ms: u64) -> GenMessage {
        self.produce(t_ms)
    }

    fn produce(&mut self, t: u64) -> GenMessage {
        self.last_t = Some(t);
        self.produced += 1;
        let (kind, key, payload) = match self.pending.take() {
            Some(f) => self.follow_up(f, t),
            None => self.fresh(t),
        };
        self.last_kind = kind;
        GenMessage {
            record_ts: t,
            partition: partition_for(&key, self.cfg.partitions),
            key,
            payload: payload.into_bytes(),
        }
    }

    fn fresh(&mut self, t: u64) -> (MessageKind, String, String) {
        let c = &self.cfg;
        let thresholds = [
            c.late_share,
            c.duplicate_share,
            c.stale_share,
            c.future_share,
            c.invalid_share,
            c.unknown_share,
        ];
        let u = self.rng.random::<f64>();
        let mut acc = 0.0;
        let mut fault = usize::MAX;
        for (i, s) in thresholds.iter().enumerate() {
            acc += s;
            if u < acc {
                fault = i;
                break;
            }
        }
        let t_i = t as i64;
        match fault {
            0 => {
                let d = self.rng.random_range(1001..=60_000);
                let draft = self.draft(t, None, Some(t_i - d));
                let p = self.render(&draft);
                (MessageKind::Late, draft.payer_id, p)
            }
            1 => {
                let eligible: Vec<usize> = (0..self.recent.len())
                    .filter(|&i| t_i - self.recent[i].e_ms <= ON_TIME_LIMIT)
                    .collect();
                if eligible.is_empty() {
                    let (key, p) = self.normal(t);
                    self.pending = Some(FollowUp::Duplicate {
                        key: key.clone(),
                        payload: p.clone().into_bytes(),
                    });
                    (MessageKind::Normal, key, p)
                } else {
                    let r = &self.recent[eligible[self.rng.random_range(0..eligible.len())]];
                    let p = String::from_utf8(r.payload.clone()).expect("generated UTF-8");
                    (MessageKind::Duplicate, r.key.clone(), p)
                }
            }
            2 => {
                // The lead: small local pix payment by a well-funded payer, nearly no delay.
                let payer = self.funded[self.rng.random_range(0..self.funded.len())];
                let d = self.rng.random_range(0..=20);
                let mut draft = self.draft(t, Some(payer), Some(t_i - d));
                let e = draft.e_ms.max(self.last_e[payer]);
                draft.e_ms = e;
                draft.values[5] = json_str(&self.style_time(e));
                draft.values[4] = json_str("pix");
                if let Some(h) = self.home[payer] {
                    draft.values[3] = json_str(&self.regions[h].id);
                }
                let cents = self.rng.random_range(100..=5_000);
                draft.values[6] = format!("{}.{:02}", cents / 100, cents % 100);
                self.last_e[payer] = e;
                let p = self.render(&draft);
                self.remember(e, &draft.payer_id, &p);
                self.pending = Some(FollowUp::Stale { payer, lead_e: e });
                (MessageKind::Normal, draft.payer_id, p)
            }
            3 => {
                let d = self.rng.random_range(1001..=60_000);
                let draft = self.draft(t, None, Some(t_i + d));
                let p = self.render(&draft);
                (MessageKind::Future, draft.payer_id, p)
            }
            4 => self.invalid(t),
            5 => self.unknown(t),
            _ => {
                let (key, p) = self.normal(t);
                (MessageKind::Normal, key, p)
            }
        }
    }

    fn follow_up(&mut self, f: FollowUp, t: u64) -> (MessageKind, String, String) {
        match f {
            FollowUp::Duplicate { key, payload } => (
                MessageKind::Duplicate,
                key,
                String::from_utf8(payload).expect("generated UTF-8"),
            ),
            FollowUp::Stale { payer, lead_e } => {
                let t_i = t as i64;
                let lo = t_i - ON_TIME_LIMIT;
                let hi = lead_e - 1;
                let e = if lo <= hi {
                    self.rng.random_range(lo.max(hi - 500)..=hi)
                } else {
                    hi
                };
                let draft = self.draft(t, Some(payer), Some(e));
                let p = self.render(&draft);
                (MessageKind::Stale, draft.payer_id, p)
            }
        }
    }

    /// An ordinary on-time message; remembers it for duplicates.
    fn normal(&mut self, t: u64) -> (String, String) {
        let draft = self.draft(t, None, None);
        if let Some(p) = draft.payer {
            self.last_e[p] = self.last_e[p].max(draft.e_ms);
        }
        let payload = self.render(&draft);
        self.remember(draft.e_ms, &draft.payer_id, &payload);
        (draft.payer_id, payload)
    }

    fn remember(&mut self, e_ms: i64, key: &str, payload: &str) {
        if self.recent.len() == RECENT_CAP {
            self.recent.pop_front();
        }
        self.recent.push_back(Recent {
            e_ms,
            key: key.to_string(),
            payload: payload.as_bytes().to_vec(),
        });
    }

    fn pick_payer(&mut self) -> usize {
        // Without skew the random stream is what it always was (same seed, same messages).
        if self.cfg.hot_share > 0.0 && self.rng.random_bool(self.cfg.hot_share) {
            let hot = self.cfg.hot_payers.min(self.users.len()).max(1);
            return self.rng.random_range(0..hot);
        }
        pick_weighted(&mut self.rng, &self.payer_cum)
    }

    fn pick_payee(&mut self, payer: usize) -> usize {
        if self.rng.random_bool(0.5) {
            if let Some(h) = self.home[payer] {
                let local = &self.region_users[h];
                if local.len() >= 2 {
                    for _ in 0..4 {
                        let c = local[self.rng.random_range(0..local.len())];
                        if c != payer {
                            return c;
                        }
                    }
                }
            }
        }
        loop {
            let c = self.rng.random_range(0..self.users.len());
            if c != payer {
                return c;
            }
        }
    }

    fn pick_region(&mut self, payer: usize) -> usize {
        let n = self.regions.len();
        let home = match self.home[payer] {
            Some(h) if self.rng.random_bool(0.9) => return h,
            Some(h) => h,
            None => return self.rng.random_range(0..n),
        };
        if self.rng.random_bool(0.5) {
            return self.rng.random_range(0..n);
        }
        // Far away: the farthest of a few draws, stopping at the first >= 1000 km.
        let hr = &self.regions[home];
        let (mut best, mut best_d) = (home, 0.0);
        for _ in 0..8 {
            let c = self.rng.random_range(0..n);
            let r = &self.regions[c];
            let d = haversine_km(hr.lat, hr.lon, r.lat, r.lon);
            if d > best_d {
                best = c;
                best_d = d;
            }
            if d >= 1000.0 {
                break;
            }
        }
        best
    }

    fn mode_text(&mut self, mode: Mode) -> &'static str {
        if self.rng.random_bool(0.95) {
            return mode.as_str();
        }
        let variants: &[&'static str] = match mode {
            Mode::Pix => &["PIX", "Pix"],
            // "De\u{301}bito" is the decomposed (NFD) spelling.
            Mode::Debito => &["Débito", "DÉBITO", "débito", "De\u{301}bito"],
            Mode::Credito => &["Crédito", "CRÉDITO", "CREDITO"],
            Mode::Boleto => &["Boleto", "BOLETO"],
        };
        variants[self.rng.random_range(0..variants.len())]
    }

    fn pick_mode(&mut self) -> Mode {
        let u = self.rng.random::<f64>();
        if u < 0.45 {
            Mode::Pix
        } else if u < 0.65 {
            Mode::Debito
        } else if u < 0.90 {
            Mode::Credito
        } else {
            Mode::Boleto
        }
    }

    /// An amount in cents with a heavy tail: most 5–500 BRL, some 1,000–50,000.
    fn pick_amount(&mut self) -> i64 {
        let u = self.rng.random::<f64>();
        let (lo, hi) = if u < 0.03 {
            (1.0, 5.0)
        } else if u < 0.78 {
            (5.0, 500.0)
        } else if u < 0.90 {
            (500.0, 1_000.0)
        } else {
            (1_000.0, 50_000.0)
        };
        let brl = self.rng.random_range(f64::ln(lo)..f64::ln(hi)).exp();
        ((brl * 100.0).round() as i64).max(1)
    }

    /// The JSON text of an amount of `cents`, in one of several spellings that all
    /// convert back to exactly `cents`.
    fn amount_json(&mut self, cents: i64) -> String {
        let two = format!("{}.{:02}", cents / 100, cents % 100);
        let u = self.rng.random::<f64>();
        if u < 0.08 {
            json_str(&two)
        } else if u < 0.10 {
            // Three decimals, rounding back down to the same cent.
            let extra = self.rng.random_range(0..=4);
            format!("{two}{extra}")
        } else if u < 0.12 {
            format!("{cents}e-2")
        } else if u < 0.14 && cents % 100 == 0 {
            format!("{}", cents / 100)
        } else {
            two
        }
    }

    fn style_time(&mut self, e_ms: i64) -> String {
        let u = self.rng.random::<f64>();
        let mut style = TimeStyle {
            offset_min: Some(-180),
            zulu: false,
            sep: 'T',
            micros: None,
        };
        // 85%: the plain form above.
        if u >= 0.97 {
            style.micros = Some(self.rng.random_range(0..1000));
        } else if u >= 0.94 {
            style.sep = if self.rng.random_bool(0.5) { ' ' } else { 't' };
        } else if u >= 0.90 {
            style.offset_min = None;
        } else if u >= 0.85 {
            style.zulu = true;
        }
        format_time(e_ms, style)
    }

    fn uuid(&mut self) -> String {
        let a: u64 = self.rng.random();
        let b: u64 = self.rng.random();
        let a = (a & 0xffff_ffff_ffff_0fff) | 0x0000_0000_0000_4000;
        let b = (b & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
        format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xffff,
            b >> 48,
            b & 0xffff_ffff_ffff
        )
    }

    /// A well-formed message with known references. `e_ms` None: on time, and not
    /// before the payer's previous on-time event time.
    fn draft(&mut self, t: u64, payer: Option<usize>, e_ms: Option<i64>) -> Draft {
        let payer = payer.unwrap_or_else(|| self.pick_payer());
        let payee = self.pick_payee(payer);
        let region = self.pick_region(payer);
        let mode = self.pick_mode();
        let mode_text = self.mode_text(mode);
        let cents = self.pick_amount();
        let e_ms = e_ms.unwrap_or_else(|| {
            let d = self.rng.random_range(0..=MAX_ON_TIME_DELAY);
            (t as i64 - d).max(self.last_e[payer]).min(t as i64)
        });
        let id = self.uuid();
        let time = self.style_time(e_ms);
        let amount = self.amount_json(cents);
        let payer_id = self.users[payer].id.clone();
        Draft {
            payer: Some(payer),
            e_ms,
            values: [
                json_str(&id),
                json_str(&payer_id),
                json_str(&self.users[payee].id),
                json_str(&self.regions[region].id),
                json_str(mode_text),
                json_str(&time),
                amount,
            ],
            payer_id,
        }
    }

    /// Renders a draft, now and then with an unknown extra field (to be ignored).
    fn render(&mut self, d: &Draft) -> String {
        let u = self.rng.random::<f64>();
        if u < 0.02 {
            d.render_with(",\"canal\":\"app\"")
        } else if u < 0.025 {
            d.render_with(",\"dispositivo\":{\"os\":\"android\",\"versao\":[14,2],\"root\":false}")
        } else {
            d.render_with("")
        }
    }

    fn fresh_unknown_user(&mut self) -> String {
        loop {
            let n = self.users.len() + 1 + self.rng.random_range(0..1_000_000);
            let id = crate::refdata::user_id(n);
            if !self.user_ids.contains(&id) {
                return id;
            }
        }
    }

    fn fresh_unknown_region(&mut self) -> String {
        loop {
            let n = self.regions.len() + 1 + self.rng.random_range(0..1000);
            let id = format!("r{n:03}");
            if !self.region_ids.contains(&id) {
                return id;
            }
        }
    }

    fn unknown(&mut self, t: u64) -> (MessageKind, String, String) {
        let mut draft = self.draft(t, None, None);
        let kind = match self.rng.random_range(0..4) {
            0 => {
                let id = self.fresh_unknown_user();
                draft.values[1] = json_str(&id);
                draft.payer_id = id;
                UnknownKind::Payer
            }
            1 => {
                draft.values[2] = json_str(&self.fresh_unknown_user());
                UnknownKind::Payee
            }
            2 => {
                draft.values[3] = json_str(&self.fresh_unknown_region());
                UnknownKind::Region
            }
            _ => {
                draft.values[2] = draft.values[1].clone();
                UnknownKind::SelfPayment
            }
        };
        let p = self.render(&draft);
        (MessageKind::Unknown(kind), draft.payer_id, p)
    }

    /// One of `from`, drawn uniformly.
    fn pick(&mut self, from: &[&'static str]) -> &'static str {
        from[self.rng.random_range(0..from.len())]
    }

    fn invalid(&mut self, t: u64) -> (MessageKind, String, String) {
        use InvalidKind::*;
        // Each kind with its weight: TooLarge messages are big; make them a fifth as
        // frequent as the others.
        const KINDS: [(InvalidKind, f64); 15] = [
            (Truncated, 1.0),
            (NotJson, 1.0),
            (Garbage, 1.0),
            (MissingField, 1.0),
            (WrongType, 1.0),
            (BadMode, 1.0),
            (BadTime, 1.0),
            (BadAmount, 1.0),
            (DuplicatedField, 1.0),
            (NotObject, 1.0),
            (EmptyId, 1.0),
            (Bom, 1.0),
            (LoneSurrogate, 1.0),
            (TooDeep, 1.0),
            (TooLarge, 0.2),
        ];
        let weights = cumulative(KINDS.iter().map(|&(_, w)| w));
        let kind = KINDS[pick_weighted(&mut self.rng, &weights)].0;
        let mut d = self.draft(t, None, None);
        let key = d.payer_id.clone();
        let payload = match kind {
            Truncated => {
                let full = d.render_with("");
                let mut cut = self.rng.random_range(1..full.len() - 1);
                while !full.is_char_boundary(cut) {
                    cut -= 1;
                }
                full[..cut].to_string()
            }
            NotJson => format!(
                "id_transacao={};pagador={};valor={}",
                d.values[0].trim_matches('"'),
                key,
                d.values[6].trim_matches('"')
            ),
            Garbage => {
                const POOL: [char; 24] = [
                    '\u{2}', '\u{3}', '\u{7}', '\u{8}', '\u{b}', '\u{e}', '\u{f}', '\u{10}',
                    '\u{1b}', '\u{1f}', '\u{7f}', '#', '$', '%', '&', '*', '@', '~', '^', '|',
                    '\u{fffd}', 'ç', '€', '\u{2028}',
                ];
                let n = self.rng.random_range(8..=64);
                let mut s = String::from('\u{1}');
                for _ in 0..n {
                    s.push(POOL[self.rng.random_range(0..POOL.len())]);
                }
                s
            }
            MissingField => {
                let skip = self.rng.random_range(0..7);
                let mut s = String::from("{");
                let mut first = true;
                for (i, (name, value)) in FIELDS.iter().zip(&d.values).enumerate() {
                    if i == skip {
                        continue;
                    }
                    if !first {
                        s.push(',');
                    }
                    first = false;
                    let _ = write!(s, "\"{name}\":{value}");
                }
                s.push('}');
                s
            }
            WrongType => {
                match self.rng.random_range(0..6) {
                    0 => d.values[0] = "null".into(),
                    1 => {
                        d.values[1] = key
                            .trim_start_matches('u')
                            .parse::<u64>()
                            .unwrap_or(7)
                            .to_string()
                    }
                    2 => d.values[3] = "{}".into(),
                    3 => d.values[4] = "[\"pix\"]".into(),
                    4 => d.values[5] = d.e_ms.to_string(),
                    _ => d.values[6] = "true".into(),
                }
                d.render_with("")
            }
            BadMode => {
                d.values[4] = json_str(self.pick(&BAD_MODES));
                d.render_with("")
            }
            BadTime => {
                d.values[5] = json_str(self.pick(&BAD_TIMES));
                d.render_with("")
            }
            BadAmount => {
                d.values[6] = self.pick(&BAD_AMOUNTS).to_string();
                d.render_with("")
            }
            DuplicatedField => {
                let i = self.rng.random_range(0..7);
                d.render_with(&format!(",\"{}\":{}", FIELDS[i], d.values[i]))
            }
            NotObject => match self.rng.random_range(0..4) {
                0 => format!("[{}]", d.render_with("")),
                1 => json_str(&d.render_with("")),
                2 => "42".to_string(),
                _ => "null".to_string(),
            },
            EmptyId => {
                let i = self.rng.random_range(0..4);
                d.values[i] = "\"\"".into();
                d.render_with("")
            }
            Bom => format!("\u{feff}{}", d.render_with("")),
            LoneSurrogate => {
                if self.rng.random_bool(0.5) {
                    d.values[1] = format!("\"{key}\\ud800\"");
                    d.render_with("")
                } else {
                    d.render_with(",\"obs\":\"caf\\ud800\"")
                }
            }
            TooDeep => {
                let depth = self.rng.random_range(33..=40);
                let extra = format!(",\"meta\":{}1{}", "[".repeat(depth), "]".repeat(depth));
                d.render_with(&extra)
            }
            TooLarge => {
                let pad = "x".repeat(65_537);
                d.render_with(&format!(",\"obs\":\"{pad}\""))
            }
        };
        (MessageKind::Invalid(kind), key, payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::refdata::{generate_regions, generate_users};
    use std::collections::HashMap;
    use vtpga_dataflow::parse::parse_transaction;

    fn reference() -> (Vec<Region>, Vec<User>) {
        let regions = generate_regions(40, 42);
        let users = generate_users(2000, &regions, 42);
        (regions, users)
    }

    fn run(cfg: GeneratorConfig, n: usize) -> Vec<(GenMessage, MessageKind)> {
        let (regions, users) = reference();
        let mut g = Generator::new(cfg, regions, users);
        (0..n)
            .map(|_| {
                let m = g.next_message();
                (m, g.last_kind())
            })
            .collect()
    }

    #[test]
    fn fnv1a_is_the_reference_function() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(partition_for("u000001", 1), 0);
    }

    #[test]
    fn time_formatting() {
        // 2025-11-26T14:00:00Z = 11:00 in Brasília.
        assert_eq!(
            format_brasilia(1_764_165_600_000),
            "2025-11-26T11:00:00.000-03:00"
        );
        assert_eq!(
            format_brasilia(1_764_165_600_000 - 11 * 3_600_000 - 1),
            "2025-11-25T23:59:59.999-03:00"
        );
        assert_eq!(
            format_brasilia(951_782_400_000 + 3 * 3_600_000),
            "2000-02-29T00:00:00.000-03:00"
        );
        let z = TimeStyle {
            offset_min: None,
            zulu: true,
            sep: ' ',
            micros: Some(7),
        };
        assert_eq!(format_time(0, z), "1970-01-01 00:00:00.000007Z");
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let a = run(GeneratorConfig::default(), 3000);
        let b = run(GeneratorConfig::default(), 3000);
        assert_eq!(a, b);
        let c = run(
            GeneratorConfig {
                seed: 43,
                ..GeneratorConfig::default()
            },
            3000,
        );
        assert_ne!(
            a.iter().map(|x| &x.0).collect::<Vec<_>>(),
            c.iter().map(|x| &x.0).collect::<Vec<_>>()
        );
        // next_at is deterministic too.
        let (regions, users) = reference();
        let mut g1 = Generator::new(GeneratorConfig::default(), regions.clone(), users.clone());
        let mut g2 = Generator::new(GeneratorConfig::default(), regions, users);
        for i in 0..500u64 {
            assert_eq!(g1.next_at(1_000_000 + i * 3), g2.next_at(1_000_000 + i * 3));
        }
    }

    #[test]
    fn a_hot_share_of_payments_comes_from_the_hot_payers() {
        let (_, users) = reference();
        let hot: Vec<&str> = users[..2].iter().map(|u| u.id.as_str()).collect();
        let share = |cfg: GeneratorConfig| {
            let msgs = run(cfg, 20_000);
            let normal: Vec<_> = msgs
                .iter()
                .filter(|(_, k)| *k == MessageKind::Normal)
                .collect();
            let from_hot = normal
                .iter()
                .filter(|(m, _)| hot.contains(&m.key.as_str()))
                .count();
            from_hot as f64 / normal.len() as f64
        };
        let skewed = share(GeneratorConfig {
            hot_share: 0.9,
            hot_payers: 2,
            ..GeneratorConfig::default()
        });
        assert!(skewed > 0.85, "{skewed}");
        assert!(share(GeneratorConfig::default()) < 0.05);
        assert!(GeneratorConfig {
            hot_share: 0.5,
            ..GeneratorConfig::default()
        }
        .validate()
        .is_err());
        assert!(GeneratorConfig {
            hot_share: 1.5,
            hot_payers: 1,
            ..GeneratorConfig::default()
        }
        .validate()
        .is_err());
    }

    #[test]
    fn partitions_are_stable_per_payer() {
        let msgs = run(GeneratorConfig::default(), 20_000);
        let mut by_key: HashMap<&str, i32> = HashMap::new();
        let mut per_partition = [0usize; 4];
        for (m, _) in &msgs {
            assert_eq!(m.partition, partition_for(&m.key, 4));
            assert!((0..4).contains(&m.partition));
            let p = *by_key.entry(m.key.as_str()).or_insert(m.partition);
            assert_eq!(p, m.partition, "payer {} moved partition", m.key);
            per_partition[m.partition as usize] += 1;
        }
        assert!(per_partition.iter().all(|&n| n > 3000), "{per_partition:?}");
        // The key is the payer of every message that names a known payer.
        for (m, k) in &msgs {
            if let Ok(tx) = parse_transaction(&m.payload) {
                assert_eq!(tx.payer, m.key, "{k:?}");
            }
        }
    }

    #[test]
    fn record_timestamps_follow_rate_and_warp() {
        let msgs = run(GeneratorConfig::default(), 5000);
        assert_eq!(msgs[0].0.record_ts, 1_764_165_600_000);
        assert!(msgs
            .windows(2)
            .all(|w| w[0].0.record_ts <= w[1].0.record_ts));
        let span = msgs[4999].0.record_ts - msgs[0].0.record_ts;
        // 5000 messages at 5000/s: about one second (follow-ups add a few ms).
        assert!((900..=1300).contains(&span), "{span}");
        let cfg = GeneratorConfig::default().spanning(5000, 86_400_000);
        let msgs = run(cfg, 5000);
        let span = msgs[4999].0.record_ts - msgs[0].0.record_ts;
        assert!((84_000_000..=88_800_000).contains(&span), "{span}");
    }

    /// Replays the SPEC §5 rules 1–5 that do not depend on balances over the
    /// generated stream, in generation order (which is ledger order here).
    fn classify(
        msgs: &[(GenMessage, MessageKind)],
        users: &[User],
        regions: &[Region],
    ) -> HashMap<&'static str, usize> {
        let user_ids: HashSet<&str> = users.iter().map(|u| u.id.as_str()).collect();
        let region_ids: HashSet<&str> = regions.iter().map(|r| r.id.as_str()).collect();
        let mut seen: HashSet<vtpga_dataflow::Id> = HashSet::new();
        let mut last_e: HashMap<vtpga_dataflow::Id, i64> = HashMap::new();
        let mut counts: HashMap<&'static str, usize> = HashMap::new();
        for (m, kind) in msgs {
            let t = m.record_ts as i64;
            let status = match parse_transaction(&m.payload) {
                Err(_) => "invalid",
                Ok(tx) if tx.event_ms > t + 1000 => "future",
                Ok(tx) if t - tx.event_ms > 1000 => "late",
                Ok(tx) => {
                    if !seen.insert(tx.id.clone()) {
                        "duplicate"
                    } else if !user_ids.contains(tx.payer.as_str())
                        || !user_ids.contains(tx.payee.as_str())
                        || !region_ids.contains(tx.region.as_str())
                        || tx.payer == tx.payee
                    {
                        "unknown"
                    } else {
                        let prev = last_e.get(&tx.payer).copied().unwrap_or(i64::MIN);
                        if tx.event_ms < prev {
                            "stale"
                        } else {
                            last_e.insert(tx.payer.clone(), tx.event_ms);
                            "normal"
                        }
                    }
                }
            };
            // The intended kind and the observed one agree exactly.
            let want = match kind {
                MessageKind::Normal => "normal",
                MessageKind::Late => "late",
                MessageKind::Duplicate => "duplicate",
                MessageKind::Stale => "stale",
                MessageKind::Future => "future",
                MessageKind::Invalid(_) => "invalid",
                MessageKind::Unknown(_) => "unknown",
            };
            assert_eq!(
                status,
                want,
                "{kind:?}: {}",
                String::from_utf8_lossy(&m.payload)
            );
            *counts.entry(status).or_default() += 1;
        }
        counts
    }

    #[test]
    fn fault_shares_are_respected() {
        let (regions, users) = reference();
        for cfg in [
            GeneratorConfig::default(),
            // Warped: ~4.3 s between messages, follow-ups must still work.
            GeneratorConfig::default().spanning(20_000, 86_400_000),
        ] {
            let msgs = run(cfg, 20_000);
            let c = classify(&msgs, &users, &regions);
            let get = |k: &str| c.get(k).copied().unwrap_or(0);
            // Expected: late 200, duplicate 200, stale 100, future 40, invalid 100, unknown 100.
            assert!((150..=250).contains(&get("late")), "{c:?}");
            assert!((150..=250).contains(&get("duplicate")), "{c:?}");
            assert!((65..=135).contains(&get("stale")), "{c:?}");
            assert!((20..=60).contains(&get("future")), "{c:?}");
            assert!((65..=135).contains(&get("invalid")), "{c:?}");
            assert!((65..=135).contains(&get("unknown")), "{c:?}");
            assert_eq!(c.values().sum::<usize>(), 20_000);
        }
        // All shares zero: every message is ordinary.
        let msgs = run(no_faults(), 5000);
        let c = classify(&msgs, &users, &regions);
        assert_eq!(c.get("normal"), Some(&5000));
    }

    /// The default configuration with every fault share zero.
    fn no_faults() -> GeneratorConfig {
        GeneratorConfig {
            late_share: 0.0,
            duplicate_share: 0.0,
            stale_share: 0.0,
            future_share: 0.0,
            invalid_share: 0.0,
            unknown_share: 0.0,
            ..GeneratorConfig::default()
        }
    }

    #[test]
    fn every_invalid_kind_is_rejected_by_the_parser() {
        let cfg = GeneratorConfig {
            invalid_share: 1.0,
            ..no_faults()
        };
        let msgs = run(cfg, 3000);
        let mut kinds = HashSet::new();
        for (m, k) in &msgs {
            assert!(std::str::from_utf8(&m.payload).is_ok());
            assert!(
                parse_transaction(&m.payload).is_err(),
                "{k:?}: {}",
                String::from_utf8_lossy(&m.payload)
            );
            kinds.insert(*k);
        }
        assert_eq!(kinds.len(), 15, "{kinds:?}");
    }

    #[test]
    fn message_content_mix() {
        let (regions, users) = reference();
        let msgs = run(GeneratorConfig::default(), 20_000);
        let mut modes: HashMap<Mode, usize> = HashMap::new();
        let (mut non_canonical, mut string_amounts, mut big, mut away) = (0, 0, 0, 0);
        let home: HashMap<&str, &str> = users
            .iter()
            .map(|u| (u.id.as_str(), u.region_id.as_str()))
            .collect();
        let mut n = 0;
        for (m, k) in &msgs {
            if *k != MessageKind::Normal {
                continue;
            }
            n += 1;
            let tx = parse_transaction(&m.payload).unwrap();
            *modes.entry(tx.mode).or_default() += 1;
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            if v["modalidade_pagamento"].as_str() != Some(tx.mode.as_str()) {
                non_canonical += 1;
            }
            if v["valor_transacao"].is_string() {
                string_amounts += 1;
            }
            if tx.amount_cents >= 100_000 {
                big += 1;
            }
            if home[tx.payer.as_str()] != tx.region {
                away += 1;
            }
            assert_ne!(tx.payer, tx.payee);
        }
        let share = |x: usize| x as f64 / n as f64;
        for (mode, range) in [
            (Mode::Pix, 0.42..0.48),
            (Mode::Debito, 0.17..0.23),
            (Mode::Credito, 0.22..0.28),
            (Mode::Boleto, 0.08..0.12),
        ] {
            assert!(range.contains(&share(modes[&mode])), "{modes:?}");
        }
        assert!(
            (0.03..0.07).contains(&share(non_canonical)),
            "{non_canonical}"
        );
        assert!(
            (0.06..0.10).contains(&share(string_amounts)),
            "{string_amounts}"
        );
        assert!((0.08..0.12).contains(&share(big)), "{big}");
        assert!((0.07..0.13).contains(&share(away)), "{away}");
        let _ = regions;
    }

    #[test]
    fn a_day_long_run_covers_every_local_hour() {
        let cfg = GeneratorConfig::default().spanning(20_000, 86_400_000);
        let msgs = run(cfg, 20_000);
        let mut hours = [0usize; 24];
        for (m, _) in &msgs {
            if let Ok(tx) = parse_transaction(&m.payload) {
                let local = tx.event_ms - 3 * 3_600_000;
                hours[local.rem_euclid(86_400_000) as usize / 3_600_000] += 1;
            }
        }
        assert!(hours.iter().all(|&h| h > 500), "{hours:?}");
    }

    #[test]
    #[should_panic(expected = "sum to")]
    fn shares_above_one_are_refused() {
        let (regions, users) = reference();
        let cfg = GeneratorConfig {
            late_share: 0.6,
            invalid_share: 0.6,
            ..GeneratorConfig::default()
        };
        let _ = Generator::new(cfg, regions, users);
    }
}

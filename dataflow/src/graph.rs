//! The decision graph (SPEC §4–7) as an explicit timely dataflow.
//!
//! ```text
//! messages ─▶ Validate ─▶ Dedup ──────────▶ Decide ─────────────▶ decisions ─▶ Tally ─▶ CountTotal ─▶ analyses
//!  (t, pos)   invalid,    by id,           by payer; reads the     │              │          ▲
//!             late        dup, self-pay    regions and users        │              └ by region ⋈ regions ─▶ State(uf)
//!                                          arrangements (shared,    │
//!                                          replicated): rule 4–8    ├─▶ credits ─(+1 ms feedback, by payee)─▶ Decide
//!                                                                   └─▶ accounts
//! ```
//!
//! The timely timestamp is the arrival time `t` in ms. Every stage that must see messages
//! in ledger order (Dedup, Decide) processes a timestamp only once its input frontier has
//! passed it, sorting that timestamp's messages by `(id, source position)`. An approval's
//! credit is sent around a feedback edge whose summary is +1 ms, so it reaches the payee's
//! owner at `t + 1`: visible exactly to messages with a strictly greater `t`.

use std::collections::{BTreeMap, VecDeque};

use compact_str::CompactString;

// Per-worker maps keyed by ids: a fast hasher (their iteration order is never used).
use foldhash::{HashMap, HashMapExt};

use differential_dataflow::difference::Semigroup;
use differential_dataflow::operators::arrange::arrangement::arrange_core;
use differential_dataflow::operators::arrange::{Arranged, TraceAgent};
use differential_dataflow::operators::CountTotal;
use differential_dataflow::trace::cursor::Cursor;
use differential_dataflow::trace::implementations::{KeyBatcher, KeySpine, ValBatcher, ValSpine};
use differential_dataflow::trace::SpanOf;
use differential_dataflow::trace::TraceReader;
use differential_dataflow::{AsCollection, Hashable, VecCollection};
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Capability, ConnectLoop, Feedback, OkErr, ToStream};
use timely::dataflow::{Scope, StreamVec};
use timely::progress::frontier::{Antichain, MutableAntichain};

use crate::analyses::{AnalysisKey, Assessed, Tally, TallyBatch};
use crate::model::{Cents, Id, Params, Region, SourcePos, Status, Time, Tx, User};
use crate::parse::parse_transaction;
use crate::rules::{self, Scores, TimeVerdict};

/// The body of an incoming message: raw bytes from a source, an already-parsed
/// transaction (the bench's parsed-input mode, and tests), or a record its source already
/// refused (decided `invalid` with that error, whatever its bytes hold).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Body {
    Raw(Vec<u8>),
    Parsed(Tx),
    /// A record the source does not trust or could not read: the SPEC §4 clock guard
    /// ("record timestamp ahead of the clock"), a capture line whose payload is `null` or
    /// not UTF-8 (SPEC §9). Never parsed, never in rule 3's memory.
    Refused {
        raw: Vec<u8>,
        error: String,
    },
}

/// A message as it enters the graph, at timely time `t`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Incoming {
    pub pos: SourcePos,
    pub t: Time,
    /// Wall-clock µs when the source took the message in (0 in replay); for latency only.
    pub ingest_us: u64,
    pub body: Body,
}

/// Coordinates stored as their bit patterns, so that arranged values can be `Ord`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Geo {
    lat_bits: u64,
    lon_bits: u64,
}

impl Geo {
    pub fn new(lat: f64, lon: f64) -> Self {
        Geo {
            lat_bits: lat.to_bits(),
            lon_bits: lon.to_bits(),
        }
    }
    pub fn km_to(&self, other: &Geo) -> f64 {
        rules::haversine_km(
            f64::from_bits(self.lat_bits),
            f64::from_bits(self.lon_bits),
            f64::from_bits(other.lat_bits),
            f64::from_bits(other.lon_bits),
        )
    }
}

/// The value of the regions arrangement, keyed by region id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RegionVal {
    pub uf: String,
    pub geo: Geo,
}

/// The value of the users arrangement, keyed by user id: the user joined with its home region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UserVal {
    pub home: Geo,
    pub balance_cents: Cents,
    pub credit_limit_cents: Cents,
}

/// A message that passed rules 1–3 and is on its way to its payer's owner. (`Default`
/// is what stays behind when a message is taken out of a batch in order.)
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Pending {
    pub pos: SourcePos,
    pub t: Time,
    pub ingest_us: u64,
    pub tx: Tx,
}

/// The decision about one message: SPEC §8's decision record plus what the analyses need.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub pos: SourcePos,
    pub t: Time,
    pub ingest_us: u64,
    pub status: Status,
    pub tx: Option<Tx>,
    pub scores: Option<Scores>,
    /// Why: the parse error of an `invalid` message, or which reference is unknown.
    pub reason: Option<String>,
    /// The raw payload of an `invalid` message (for the dead-letter record).
    pub raw: Option<Vec<u8>>,
    /// For an assessed message: the band of the distance between the payer's and the
    /// payee's home regions (analysis 10; the other analyses need only what is above).
    pub home_band: Option<u8>,
}

impl Decision {
    fn new(pos: SourcePos, t: Time, ingest_us: u64, status: Status) -> Self {
        Decision {
            pos,
            t,
            ingest_us,
            status,
            tx: None,
            scores: None,
            reason: None,
            raw: None,
            home_band: None,
        }
    }

    /// What the analyses need of an assessed decision (SPEC §5 "Outcome"); `None` for
    /// the others.
    pub fn assessed(&self) -> Option<Assessed> {
        let (tx, scores, home_band) = (self.tx.as_ref()?, self.scores?, self.home_band?);
        Some(Assessed {
            approved: self.status == Status::Approved,
            status: self.status,
            amount_cents: tx.amount_cents,
            mode: tx.mode,
            local_hour: rules::local_hour(tx.event_ms),
            minute: rules::minute_of(tx.event_ms),
            value_risk: scores.value_risk,
            hour_risk: scores.hour_risk,
            home_band,
        })
    }

    fn of(p: Pending, status: Status, reason: Option<String>) -> Self {
        Decision {
            tx: Some(p.tx),
            reason,
            ..Decision::new(p.pos, p.t, p.ingest_us, status)
        }
    }
}

/// A user's runtime state after a timestamp that changed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub user: String,
    pub balance_cents: Cents,
    pub credit_used_cents: Cents,
    pub last_approved_ms: Option<i64>,
}

/// An approval's credit to its payee, applied at the payee's owner one ms later.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Credit {
    pub payee: Id,
    pub amount_cents: Cents,
    /// The payee's reference data, in case its owner has not yet touched its state.
    pub payee_ref: UserVal,
}

/// A reference collection arranged by id, shared by every operator that reads it.
pub type RefTrace<V> = TraceAgent<ValSpine<String, V, Time, i64>>;
pub type RefArranged<'s, V> = Arranged<'s, RefTrace<V>>;

/// What the graph produces.
pub struct Outputs<'s> {
    /// Every message's decision, at its arrival time.
    pub decisions: StreamVec<'s, Time, Decision>,
    /// Users whose state a timestamp changed, with their new state.
    pub accounts: StreamVec<'s, Time, Account>,
    /// The ten analyses as rows `(key, tally)`; each timestamp retracts and re-inserts
    /// only the rows it touched.
    pub analyses: VecCollection<'s, Time, (AnalysisKey, Tally), isize>,
}

/// The pipeline's state at a resume point (restored from the durable sink after a restart):
/// the ids seen within the duplicate window, every changed account, and the analyses.
/// Worker 0 injects it at time 0, before any message; it travels the same exchanges as the
/// state it seeds.
#[derive(Clone, Debug, Default)]
pub struct Resume {
    /// Transaction ids that passed rules 1–2, with the arrival time they were last seen.
    pub seen: Vec<(String, Time)>,
    pub accounts: Vec<Account>,
    pub analyses: Vec<(AnalysisKey, Tally)>,
}

/// A region as a reference-collection record: `(id, value)`.
pub type RegionRow = (String, RegionVal);
/// A user as a reference-collection record: `(id, home region id, balance, credit limit)`.
pub type UserRow = (String, String, Cents, Cents);

pub fn region_row(r: &Region) -> RegionRow {
    (
        r.id.clone(),
        RegionVal {
            uf: r.uf.clone(),
            geo: Geo::new(r.lat, r.lon),
        },
    )
}

pub fn user_row(u: &User) -> UserRow {
    (
        u.id.clone(),
        u.region_id.clone(),
        u.balance_cents,
        u.credit_limit_cents,
    )
}

/// Arranges the reference data: regions by id, and users joined with their home region
/// by id. A user whose home region is unknown is not in the arrangement (SPEC §6 needs it).
pub fn arrange_reference<'s>(
    regions: VecCollection<'s, Time, RegionRow, i64>,
    users: VecCollection<'s, Time, UserRow, i64>,
) -> (RefArranged<'s, RegionVal>, RefArranged<'s, UserVal>) {
    // Reference data is small and read by every message, so every worker arranges all of
    // it: `Decide` reads payer, payee and region where the payer's state is, with no
    // exchange, and a keyed collection joined with it (the analyses' region tallies)
    // still meets each key exactly once.
    let regions = replicated(regions, "ArrangeRegions");
    let users_by_region = replicated(
        users.map(|(id, region, balance, limit)| (region, (id, balance, limit))),
        "ArrangeUsersByRegion",
    );
    let users =
        users_by_region.join_core(regions.clone(), |_region, (id, balance, limit), home| {
            Some((
                id.clone(),
                UserVal {
                    home: home.geo,
                    balance_cents: *balance,
                    credit_limit_cents: *limit,
                },
            ))
        });
    // The join ran on every worker over all the data: arrange its output where it is.
    let users = arrange_core::<
        _,
        _,
        ValBatcher<String, UserVal, Time, i64>,
        ValSpine<String, UserVal, Time, i64>,
    >(users.inner, Pipeline, "ArrangeUsers", ValBatcher::new);
    (regions, users)
}

/// Arranges a keyed collection in full on every worker.
fn replicated<'s, V: differential_dataflow::ExchangeData>(
    collection: VecCollection<'s, Time, (String, V), i64>,
    name: &str,
) -> RefArranged<'s, V> {
    arrange_core::<_, _, ValBatcher<String, V, Time, i64>, ValSpine<String, V, Time, i64>>(
        collection.inner.broadcast(),
        Pipeline,
        name,
        ValBatcher::new,
    )
}

/// Builds the decision graph on `messages`, reading the shared reference arrangements.
pub fn build<'s>(
    messages: StreamVec<'s, Time, Incoming>,
    regions: RefArranged<'s, RegionVal>,
    users: RefArranged<'s, UserVal>,
    params: Params,
) -> Outputs<'s> {
    build_resumed(messages, regions, users, params, &Resume::default())
}

/// [`build`], starting from the state in `resume` rather than from the reference data alone.
pub fn build_resumed<'s>(
    messages: StreamVec<'s, Time, Incoming>,
    regions: RefArranged<'s, RegionVal>,
    users: RefArranged<'s, UserVal>,
    params: Params,
    resume: &Resume,
) -> Outputs<'s> {
    let admitted = validate(messages, params);
    build_admitted(admitted, regions, users, params, resume)
}

/// [`build_resumed`] on messages already through [`admit`] (rules 1–2) where they entered:
/// those on their way to the duplicate check, and the decided ones.
pub fn build_admitted<'s>(
    (pending, invalid_or_late): (StreamVec<'s, Time, Pending>, StreamVec<'s, Time, Decision>),
    regions: RefArranged<'s, RegionVal>,
    users: RefArranged<'s, UserVal>,
    params: Params,
    resume: &Resume,
) -> Outputs<'s> {
    let scope = pending.scope();
    // Only worker 0 injects the resume state; the exchanges take each part to its owner.
    let mine = scope.index() == 0;
    let seen = if mine {
        resume.seen.clone()
    } else {
        Vec::new()
    }
    .to_stream(scope);
    let seeded = if mine {
        resume.accounts.clone()
    } else {
        Vec::new()
    }
    .to_stream(scope);
    let prior = if mine {
        resume.analyses.clone()
    } else {
        Vec::new()
    }
    .into_iter()
    .map(|(key, tally)| ((key, ()), 0, tally))
    .to_stream(scope);
    let (pending, dup) = dedup(pending, seen, params);
    let (decided, accounts) = decide(scope, pending, seeded, regions.clone(), users, params);
    let (decisions, analyses) = analyses([decided, invalid_or_late, dup], regions, prior);
    Outputs {
        decisions,
        accounts,
        analyses,
    }
}

/// Rules 1–2 for one message: parse (§3), then the future/late time rules. `Ok` is on
/// its way to the duplicate check; `Err` is its decision.
// The `Err` side is the decision itself, moved straight into its stream: boxing it would
// only add an allocation per decided message.
#[allow(clippy::result_large_err)]
pub fn admit(m: Incoming, params: &Params) -> Result<Pending, Decision> {
    let (tx, raw) = match m.body {
        Body::Parsed(tx) => (tx, None),
        Body::Refused { raw, error } => {
            return Err(Decision {
                reason: Some(error),
                raw: Some(raw),
                ..Decision::new(m.pos, m.t, m.ingest_us, Status::Invalid)
            })
        }
        Body::Raw(bytes) => match parse_transaction(&bytes) {
            Ok(tx) => (tx, Some(bytes)),
            Err(e) => {
                return Err(Decision {
                    reason: Some(e.to_string()),
                    raw: Some(bytes),
                    ..Decision::new(m.pos, m.t, m.ingest_us, Status::Invalid)
                })
            }
        },
    };
    match rules::time_rule(m.t, tx.event_ms, params) {
        None => Ok(Pending {
            pos: m.pos,
            t: m.t,
            ingest_us: m.ingest_us,
            tx,
        }),
        Some(TimeVerdict::Future) => Err(Decision {
            reason: Some(format!(
                "event time is more than {} ms after arrival time",
                params.max_delay_ms
            )),
            raw,
            tx: Some(tx),
            ..Decision::new(m.pos, m.t, m.ingest_us, Status::Invalid)
        }),
        Some(TimeVerdict::Late) => Err(Decision {
            tx: Some(tx),
            ..Decision::new(m.pos, m.t, m.ingest_us, Status::Late)
        }),
    }
}

/// Rules 1–2 as an operator of their own (for a stream of messages not admitted at its
/// source).
#[allow(clippy::result_large_err)]
fn validate<'s>(
    messages: StreamVec<'s, Time, Incoming>,
    params: Params,
) -> (StreamVec<'s, Time, Pending>, StreamVec<'s, Time, Decision>) {
    messages.ok_err(move |m: Incoming| admit(m, &params))
}

/// Messages stashed at one timestamp, with a capability for each output.
struct Stash<D, const N: usize> {
    caps: [Capability<Time>; N],
    items: Vec<D>,
}

/// Moves `data` into the stash entry of its timestamp, taking a capability for every
/// output the first time that timestamp is seen.
fn stash_at<D, const N: usize>(
    stash: &mut BTreeMap<Time, Stash<D, N>>,
    cap: &timely::dataflow::operators::InputCapability<Time>,
    data: &mut Vec<D>,
) {
    if let Some(&t) = cap.least() {
        stash
            .entry(t)
            .or_insert_with(|| Stash {
                caps: std::array::from_fn(|port| cap.delayed(&t, port)),
                items: Vec::new(),
            })
            .items
            .append(data);
    }
}

/// Moves the items at the places of `order` (a permutation of `items`' indexes) out of
/// `items`, in that order, without moving the others around (messages are large: sorting
/// them would move each several times).
fn take_in_order<'a, T: Default, K>(
    items: &'a mut [T],
    order: &'a [(K, u32)],
) -> impl Iterator<Item = T> + 'a {
    order
        .iter()
        .map(|(_, i)| std::mem::take(&mut items[*i as usize]))
}

fn ready(frontiers: &[MutableAntichain<Time>], t: &Time) -> bool {
    frontiers.iter().all(|f| !f.less_equal(t))
}

/// Rule 3 (duplicates, memory bounded by `dedup_window`), then payer = payee (rule 4),
/// at the owner of the transaction id.
fn dedup<'s>(
    pending: StreamVec<'s, Time, Pending>,
    seen: StreamVec<'s, Time, (String, Time)>,
    params: Params,
) -> (StreamVec<'s, Time, Pending>, StreamVec<'s, Time, Decision>) {
    let peers = pending.scope().peers().max(1);
    let mut builder = OperatorBuilder::new("Dedup".to_owned(), pending.scope());
    let mut input = builder.new_input(pending, Exchange::new(|p: &Pending| p.tx.id.hashed()));
    let mut seen_in = builder.new_input(seen, Exchange::new(|s: &(String, Time)| s.0.hashed()));
    let (pass_out, pass) = builder.new_output();
    let (dup_out, dups) = builder.new_output();
    let mut pass_out =
        OutputBuilder::<_, timely::container::CapacityContainerBuilder<Vec<Pending>>>::from(
            pass_out,
        );
    let mut dup_out =
        OutputBuilder::<_, timely::container::CapacityContainerBuilder<Vec<Decision>>>::from(
            dup_out,
        );
    builder.build(move |_caps| {
        let mut stash: BTreeMap<Time, Stash<Pending, 2>> = BTreeMap::new();
        let mut seen_ids = SeenIds::with_capacity(params.dedup_capacity / peers);
        let mut order: Vec<(SourcePos, u32)> = Vec::new();
        move |frontiers| {
            // Resume state (time 0): ids seen before the restart, with when they were seen.
            seen_in.for_each(|_, data| seen_ids.seed(data.drain(..)));
            input.for_each(|cap, data| stash_at(&mut stash, &cap, data));
            let mut pass_h = pass_out.activate();
            let mut dup_h = dup_out.activate();
            while let Some(entry) = stash.first_entry() {
                let t = *entry.key();
                if !ready(frontiers, &t) {
                    break;
                }
                let Stash { caps, mut items } = entry.remove();
                seen_ids.forget_before(t, params.dedup_window_ms);
                // Only messages with the same id affect each other here, so source
                // position order is ledger order for every pair that matters.
                order.clear();
                order.extend(items.iter().enumerate().map(|(i, p)| (p.pos, i as u32)));
                order.sort_unstable();
                let mut pass_s = pass_h.session(&caps[0]);
                let mut dup_s = dup_h.session(&caps[1]);
                for p in take_in_order(&mut items, &order) {
                    let prev = seen_ids.see(&p.tx.id, t);
                    if rules::is_duplicate(t, prev, &params) {
                        dup_s.give(Decision::of(p, Status::Duplicate, None));
                    } else if p.tx.payer == p.tx.payee {
                        dup_s.give(Decision::of(
                            p,
                            Status::UnknownReference,
                            Some("payer and payee are the same user".to_owned()),
                        ));
                    } else {
                        pass_s.give(p);
                    }
                }
            }
        }
    });
    (pass, dups)
}

/// The transaction ids seen within the duplicate window, with the arrival time each was
/// last seen. An id is kept as its 128-bit SipHash-1-3 fingerprint under a key drawn at
/// random for each operator: 24 bytes per id whatever its length, no allocation, and two
/// different ids are taken for one with probability about 2^-128 per pair, which no
/// choice of ids can raise without the key. The expiry queue holds (time, fingerprint
/// half) in time order: an id leaves the table when the entry it was last seen with
/// leaves the window.
struct SeenIds {
    keys: (u64, u64),
    table: hashbrown::HashTable<([u64; 2], Time)>,
    expiry: VecDeque<(Time, u64)>,
}

impl Default for SeenIds {
    fn default() -> Self {
        SeenIds::with_capacity(0)
    }
}

impl SeenIds {
    fn with_capacity(ids: usize) -> Self {
        use std::hash::BuildHasher;
        let random = std::collections::hash_map::RandomState::new();
        SeenIds {
            keys: (random.hash_one(0u8), random.hash_one(1u8)),
            table: hashbrown::HashTable::with_capacity(ids),
            expiry: VecDeque::with_capacity(ids),
        }
    }

    fn fingerprint(&self, id: &str) -> [u64; 2] {
        use siphasher::sip128::Hasher128;
        use std::hash::Hasher;
        let mut hasher = siphasher::sip128::SipHasher13::new_with_keys(self.keys.0, self.keys.1);
        hasher.write(id.as_bytes());
        let h = hasher.finish128();
        [h.h1, h.h2]
    }

    /// Records `id` as seen at `t` (non-decreasing across calls); returns when it was
    /// last seen before.
    fn see(&mut self, id: &str, t: Time) -> Option<Time> {
        let fp = self.fingerprint(id);
        // The fingerprint is already uniformly distributed: its first half is the hash.
        match self.table.entry(fp[0], |(k, _)| *k == fp, |(k, _)| k[0]) {
            hashbrown::hash_table::Entry::Occupied(mut e) => {
                let prev = e.get().1;
                if prev < t {
                    e.get_mut().1 = t;
                    self.expiry.push_back((t, fp[0]));
                }
                Some(prev)
            }
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert((fp, t));
                self.expiry.push_back((t, fp[0]));
                None
            }
        }
    }

    /// Resume state: ids last seen, at the given times, before the restart (any order).
    fn seed(&mut self, seen: impl IntoIterator<Item = (String, Time)>) {
        for (id, t) in seen {
            self.see(&id, t);
        }
        self.expiry.make_contiguous().sort_unstable();
    }

    /// Forgets the ids last seen more than `window` before `t`.
    fn forget_before(&mut self, t: Time, window: u64) {
        while let Some(&(seen, hash)) = self.expiry.front() {
            if t.saturating_sub(seen) <= window {
                break;
            }
            self.expiry.pop_front();
            // An id seen again later has a later time in its entry and stays.
            if let Ok(e) = self
                .table
                .find_entry(hash, |(k, last)| k[0] == hash && *last == seen)
            {
                e.remove();
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.len()
    }
}

/// A cursor over all of a reference trace's batches, with the batches it reads.
type RefCursor<V> = (
    differential_dataflow::trace::cursor::CursorList<
        <<RefTrace<V> as TraceReader>::Batch as differential_dataflow::trace::Navigable>::Cursor,
    >,
    Vec<<RefTrace<V> as TraceReader>::Batch>,
);

/// A key's entry in a [`RefIndex`]: its current reference value, if it has one, and the
/// runtime state the reading operator keeps for it (users: balance and credit).
struct Slot<V, S> {
    val: Option<V>,
    state: S,
}

/// A worker's view of a replicated reference arrangement: a hash index of its contents
/// (refreshed whenever the arrangement publishes updates) for queries at or after its
/// latest update, and the trace itself for older queries (only possible while reference
/// data is changing). Each key's slot also holds the operator's state for that key, so
/// one probe finds both; refreshing the values keeps the states.
struct RefIndex<V: differential_dataflow::ExchangeData, S = ()> {
    trace: RefTrace<V>,
    /// Ids up to 24 bytes are stored inline, so a probe compares keys without a pointer chase.
    index: HashMap<CompactString, Slot<V, S>>,
    latest: Option<Time>,
    stale: bool,
    /// The reader will ask nothing more: the trace is released, and no longer read.
    released: bool,
}

impl<V: differential_dataflow::ExchangeData, S: Default> RefIndex<V, S> {
    fn new(trace: RefTrace<V>) -> Self {
        RefIndex {
            trace,
            index: HashMap::new(),
            latest: None,
            stale: true,
            released: false,
        }
    }

    /// Notes batches the arrangement published.
    fn observe(&mut self, spans: &[SpanOf<RefTrace<V>>]) {
        self.stale |= spans.iter().any(|span| span.has_updates());
    }

    fn cursor(&mut self) -> RefCursor<V> {
        let mut upper = Antichain::new();
        self.trace.read_upper(&mut upper);
        let batches = self
            .trace
            .batches_through(upper.borrow())
            .unwrap_or_default();
        differential_dataflow::trace::cursor::cursor_list(batches)
    }

    /// Reloads the current values if the arrangement changed since the last load.
    fn refresh(&mut self) {
        // A released trace may not be read (differential asserts it), and nothing would
        // read the values: the reference data can still be arriving when the reader is
        // done (its message input closed first).
        if !self.stale || self.released {
            return;
        }
        for slot in self.index.values_mut() {
            slot.val = None;
        }
        self.latest = None;
        let (mut cursor, storage) = self.cursor();
        while let Some(k) = cursor.get_key(&storage) {
            while let Some(v) = cursor.get_val(&storage) {
                let mut count = 0i64;
                let latest = &mut self.latest;
                cursor.map_times(&storage, |time, diff| {
                    count += *diff;
                    *latest = (*latest).max(Some(*time));
                });
                if count > 0 {
                    match self.index.get_mut(k.as_str()) {
                        Some(slot) => slot.val = Some(v.clone()),
                        None => {
                            self.index.insert(
                                CompactString::from(k.as_str()),
                                Slot {
                                    val: Some(v.clone()),
                                    state: S::default(),
                                },
                            );
                        }
                    }
                }
                cursor.step_val(&storage);
            }
            cursor.step_key(&storage);
        }
        self.stale = false;
    }

    /// The value of `key` as of time `t`, read from the trace (for `t` before the latest
    /// update, when the index's current values do not apply).
    fn value_at(&mut self, key: &str, t: Time) -> Option<V> {
        let (mut cursor, storage) = self.cursor();
        let key = key.to_owned();
        cursor.seek_key(&storage, &key);
        if cursor.get_key(&storage) != Some(&key) {
            return None;
        }
        while let Some(v) = cursor.get_val(&storage) {
            let mut count = 0i64;
            cursor.map_times(&storage, |time, diff| {
                if *time <= t {
                    count += *diff;
                }
            });
            if count > 0 {
                return Some(v.clone());
            }
            cursor.step_val(&storage);
        }
        None
    }

    /// `read` of the value of `key` as of time `t`; the caller has seen the arrangement's
    /// frontier pass `t`.
    fn get<R>(&mut self, key: &str, t: Time, read: impl FnOnce(&V) -> R) -> Option<R> {
        self.refresh();
        if self.latest.is_none_or(|latest| latest <= t) {
            return self.index.get(key)?.val.as_ref().map(read);
        }
        self.value_at(key, t).as_ref().map(read)
    }

    /// The value of `key` as of time `t` with the state kept for it: one probe when the
    /// current values apply. `None` (and no slot made) for a key without a value at `t`.
    fn get_with_state(&mut self, key: &str, t: Time) -> Option<(V, &mut S)>
    where
        V: Copy,
    {
        self.refresh();
        if self.latest.is_none_or(|latest| latest <= t) {
            let slot = self.index.get_mut(key)?;
            return Some((slot.val?, &mut slot.state));
        }
        let val = self.value_at(key, t)?;
        Some((val, self.state_of(key)))
    }

    /// The state kept for `key`, whether or not it has a value now.
    fn state_of(&mut self, key: &str) -> &mut S {
        if !self.index.contains_key(key) {
            self.index.insert(
                CompactString::from(key),
                Slot {
                    val: None,
                    state: S::default(),
                },
            );
        }
        &mut self.index.get_mut(key).expect("slot just ensured").state
    }

    /// No query will ask about a time before `least`; none at all if `None`.
    fn compact(&mut self, least: Option<Time>) {
        if self.released {
            return;
        }
        self.released = least.is_none();
        self.trace
            .set_logical_compaction(Antichain::from_iter(least).borrow());
    }
}

/// A user's runtime state (SPEC §2), owned by exactly one worker.
struct State {
    funds: rules::Funds,
    /// The last timestamp that changed this user (to report each change once).
    touched: Option<Time>,
}

impl State {
    /// A user's state from its reference data, or from its state at the resume point.
    fn resumed(r: &UserVal, resumed: Option<Account>) -> Self {
        match resumed {
            Some(a) => State {
                funds: rules::Funds {
                    balance_cents: a.balance_cents,
                    credit_limit_cents: r.credit_limit_cents,
                    credit_used_cents: a.credit_used_cents,
                    last_approved_ms: a.last_approved_ms,
                },
                touched: None,
            },
            None => State {
                funds: rules::Funds {
                    balance_cents: r.balance_cents,
                    credit_limit_cents: r.credit_limit_cents,
                    credit_used_cents: 0,
                    last_approved_ms: None,
                },
                touched: None,
            },
        }
    }
}

/// Memo of great-circle distances between coordinate pairs: homes and transaction
/// regions are regions, so few distinct pairs recur. Direct-mapped; the same value as
/// computing it (a pure function of the pair).
struct DistanceMemo {
    slots: Vec<Option<(Geo, Geo, f64)>>,
}

impl Default for DistanceMemo {
    fn default() -> Self {
        DistanceMemo {
            slots: vec![None; 1 << 12],
        }
    }
}

impl DistanceMemo {
    fn km(&mut self, a: &Geo, b: &Geo) -> f64 {
        let mix = (a.lat_bits ^ a.lon_bits.rotate_left(17)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (b.lat_bits.rotate_left(31) ^ b.lon_bits.rotate_left(47))
                .wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        let slot = &mut self.slots[(mix >> 52) as usize];
        match slot {
            Some((x, y, km)) if x == a && y == b => *km,
            _ => {
                let km = a.km_to(b);
                *slot = Some((*a, *b, km));
                km
            }
        }
    }
}

/// The first eight bytes of an id, big-endian, zero-padded: ordering by it agrees with
/// ordering ids by their bytes, except that equal prefixes need the whole ids compared.
fn id_prefix(id: &str) -> u64 {
    let mut bytes = [0u8; 8];
    let n = id.len().min(8);
    bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
    u64::from_be_bytes(bytes)
}

/// What `Decide` holds for a timestamp: a capability for each output, its messages and
/// its credits.
type DecideAt = ([Capability<Time>; 3], Vec<Pending>, Vec<Credit>);
type DecideStash = BTreeMap<Time, DecideAt>;

/// The stash entry of the timestamp of `cap`, made on first use.
fn decide_slot<'a>(
    stash: &'a mut DecideStash,
    cap: &timely::dataflow::operators::InputCapability<Time>,
) -> Option<&'a mut DecideAt> {
    let t = *cap.least()?;
    Some(stash.entry(t).or_insert_with(|| {
        (
            [cap.delayed(&t, 0), cap.delayed(&t, 1), cap.delayed(&t, 2)],
            Vec::new(),
            Vec::new(),
        )
    }))
}

/// Rules 5–8 at the payer's owner, with credits arriving around a +1 ms feedback edge.
fn decide<'s>(
    scope: Scope<'s, Time>,
    pending: StreamVec<'s, Time, Pending>,
    seeded: StreamVec<'s, Time, Account>,
    regions: RefArranged<'s, RegionVal>,
    users: RefArranged<'s, UserVal>,
    params: Params,
) -> (StreamVec<'s, Time, Decision>, StreamVec<'s, Time, Account>) {
    let (loop_handle, credits) = scope.feedback::<Vec<Credit>>(1);
    let mut builder = OperatorBuilder::new("Decide".to_owned(), scope);
    let mut msgs = builder.new_input(pending, Exchange::new(|p: &Pending| p.tx.payer.hashed()));
    let mut credit_in = builder.new_input(credits, Exchange::new(|c: &Credit| c.payee.hashed()));
    // The reference arrangements are replicated: read locally. Their frontiers (inputs 2
    // and 3) say when they are complete through a time.
    let mut region_batches = builder.new_input(regions.stream, Pipeline);
    let mut user_batches = builder.new_input(users.stream, Pipeline);
    let mut seeded_in = builder.new_input(seeded, Exchange::new(|a: &Account| a.user.hashed()));
    let mut region_index: RefIndex<RegionVal> = RefIndex::new(regions.trace);
    let mut user_index: RefIndex<UserVal, Option<State>> = RefIndex::new(users.trace);
    let (decision_out, decisions) = builder.new_output();
    let (credit_out, credit_stream) = builder.new_output();
    let (account_out, accounts) = builder.new_output();
    let mut decision_out = OutputBuilder::<
        _,
        timely::container::CapacityContainerBuilder<Vec<Decision>>,
    >::from(decision_out);
    let mut credit_out =
        OutputBuilder::<_, timely::container::CapacityContainerBuilder<Vec<Credit>>>::from(
            credit_out,
        );
    let mut account_out = OutputBuilder::<
        _,
        timely::container::CapacityContainerBuilder<Vec<Account>>,
    >::from(account_out);
    builder.build(move |_caps| {
        let mut stash = DecideStash::new();
        let mut changed: Vec<CompactString> = Vec::new();
        let mut order: Vec<(u64, u32)> = Vec::new();
        let mut km = DistanceMemo::default();
        // Resume state of users this worker owns, applied when each is first touched.
        let mut resumed: HashMap<CompactString, Account> = HashMap::new();
        move |frontiers| {
            seeded_in.for_each(|_, data| {
                for a in data.drain(..) {
                    resumed.insert(CompactString::from(a.user.as_str()), a);
                }
            });
            // Reference data is reloaded as soon as it changes, not when a message first
            // needs it.
            region_batches.for_each(|_, spans| region_index.observe(spans));
            user_batches.for_each(|_, spans| user_index.observe(spans));
            region_index.refresh();
            user_index.refresh();
            msgs.for_each(|cap, data| {
                if let Some((_, msgs_at, _)) = decide_slot(&mut stash, &cap) {
                    msgs_at.append(data);
                }
            });
            credit_in.for_each(|cap, data| {
                if let Some((_, _, credits_at)) = decide_slot(&mut stash, &cap) {
                    credits_at.append(data);
                }
            });
            let mut decision_h = decision_out.activate();
            let mut credit_h = credit_out.activate();
            let mut account_h = account_out.activate();
            while let Some(entry) = stash.first_entry() {
                let t = *entry.key();
                if !ready(frontiers, &t) {
                    break;
                }
                let (caps, mut msgs_at, credits_at) = entry.remove();
                // Credits first: they come from approvals at earlier timestamps.
                for c in credits_at {
                    let slot = user_index.state_of(&c.payee);
                    let s = slot.get_or_insert_with(|| {
                        State::resumed(&c.payee_ref, resumed.remove(c.payee.as_str()))
                    });
                    s.funds.balance_cents += c.amount_cents;
                    if s.touched != Some(t) {
                        s.touched = Some(t);
                        changed.push(CompactString::from(c.payee.as_str()));
                    }
                }
                // Ledger order (id, then source position) through an index sorted by a
                // prefix of the id: whole ids are compared only on equal prefixes.
                order.clear();
                order.extend(
                    msgs_at
                        .iter()
                        .enumerate()
                        .map(|(i, p)| (id_prefix(&p.tx.id), i as u32)),
                );
                order.sort_unstable_by(|(ka, ia), (kb, ib)| {
                    ka.cmp(kb).then_with(|| {
                        let (a, b) = (&msgs_at[*ia as usize], &msgs_at[*ib as usize]);
                        (&a.tx.id, a.pos).cmp(&(&b.tx.id, b.pos))
                    })
                });
                let mut decision_s = decision_h.session(&caps[0]);
                let mut credit_s = credit_h.session(&caps[1]);
                for p in take_in_order(&mut msgs_at, &order) {
                    // Rule 4: every reference must be known.
                    let region = region_index.get(&p.tx.region, t, |r| r.geo);
                    let payee = user_index.get(&p.tx.payee, t, |u| *u);
                    let known = match (region, payee) {
                        (Some(region), Some(payee)) => user_index
                            .get_with_state(&p.tx.payer, t)
                            .map(|(payer, slot)| (region, payee, payer, slot)),
                        _ => None,
                    };
                    let Some((region, payee, payer, slot)) = known else {
                        // Which reference, not its id: the id is in the record already,
                        // exactly as parsed (SPEC §8), however long or odd it is.
                        let what = match (region, payee) {
                            (None, _) => "unknown region",
                            (Some(_), None) => "unknown payee",
                            (Some(_), Some(_)) => "unknown payer",
                        };
                        decision_s.give(Decision::of(
                            p,
                            Status::UnknownReference,
                            Some(what.to_owned()),
                        ));
                        continue;
                    };
                    let s = slot.get_or_insert_with(|| {
                        State::resumed(&payer, resumed.remove(p.tx.payer.as_str()))
                    });
                    let tx = &p.tx;
                    if rules::is_stale(tx.event_ms, &s.funds) {
                        decision_s.give(Decision::of(p, Status::Stale, None));
                        continue;
                    }
                    let hour = rules::local_hour(tx.event_ms);
                    let scores = rules::scores(tx.amount_cents, hour, km.km(&payer.home, &region));
                    let status =
                        rules::assess(tx.mode, tx.amount_cents, scores.risk, &s.funds, &params);
                    if status == Status::Approved {
                        rules::approve(tx.mode, tx.amount_cents, tx.event_ms, &mut s.funds);
                        if s.touched != Some(t) {
                            s.touched = Some(t);
                            changed.push(CompactString::from(tx.payer.as_str()));
                        }
                        credit_s.give(Credit {
                            payee: tx.payee.clone(),
                            amount_cents: tx.amount_cents,
                            payee_ref: payee,
                        });
                    }
                    let home_band = rules::distance_band(km.km(&payer.home, &payee.home));
                    decision_s.give(Decision {
                        scores: Some(scores),
                        home_band: Some(home_band),
                        ..Decision::of(p, status, None)
                    });
                }
                if !changed.is_empty() {
                    let mut account_s = account_h.session(&caps[2]);
                    for user in changed.drain(..) {
                        let s = user_index
                            .state_of(&user)
                            .as_ref()
                            .expect("a changed user has state");
                        account_s.give(Account {
                            balance_cents: s.funds.balance_cents,
                            credit_used_cents: s.funds.credit_used_cents,
                            last_approved_ms: s.funds.last_approved_ms,
                            user: user.into(),
                        });
                    }
                }
            }
            // No message will ask about a time before both the frontier of the messages and
            // the stashed timestamps: the traces may forget distinctions before that.
            let least = frontiers[0]
                .frontier()
                .iter()
                .chain(stash.keys())
                .min()
                .copied();
            region_index.compact(least);
            user_index.compact(least);
        }
    });
    credit_stream.connect_loop(loop_handle);
    (decisions, accounts)
}

/// Pre-aggregates decisions per timestamp into analysis rows (`Tally`), and accumulates
/// them with `count_total`, which emits only the rows each timestamp touched. Per-region
/// rows take their UF from the shared regions arrangement, as of their timestamp. The
/// decisions of every stage meet here and pass through unchanged (no copy) to whoever
/// records them; the analyses restored at a resume point join the rows at time 0.
#[allow(clippy::type_complexity)]
fn analyses<'s>(
    decisions: [StreamVec<'s, Time, Decision>; 3],
    regions: RefArranged<'s, RegionVal>,
    prior: StreamVec<'s, Time, ((AnalysisKey, ()), Time, Tally)>,
) -> (
    StreamVec<'s, Time, Decision>,
    VecCollection<'s, Time, (AnalysisKey, Tally), isize>,
) {
    let mut builder = OperatorBuilder::new("Tally".to_owned(), regions.stream.scope());
    let mut inputs = decisions.map(|stream| builder.new_input(stream, Pipeline));
    let mut region_batches = builder.new_input(regions.stream, Pipeline);
    let mut prior_in = builder.new_input(prior, Pipeline);
    let mut region_index: RefIndex<RegionVal> = RefIndex::new(regions.trace);
    let (pass_out, passed) = builder.new_output();
    let (keyed_out, keyed) = builder.new_output();
    let mut pass_out =
        OutputBuilder::<_, timely::container::CapacityContainerBuilder<Vec<Decision>>>::from(
            pass_out,
        );
    let mut keyed_out = OutputBuilder::<
        _,
        timely::container::CapacityContainerBuilder<Vec<((AnalysisKey, ()), Time, Tally)>>,
    >::from(keyed_out);
    // Frontier indexes: the decision inputs, then the regions, then the prior rows.
    const REGIONS: usize = 3;
    builder.build(move |_caps| {
        let mut batches: BTreeMap<Time, (Capability<Time>, TallyBatch)> = BTreeMap::new();
        let mut states: Vec<(AnalysisKey, Tally)> = Vec::new();
        move |frontiers| {
            region_batches.for_each(|_, spans| region_index.observe(spans));
            region_index.refresh();
            let mut keyed_h = keyed_out.activate();
            prior_in.for_each(|cap, data| keyed_h.session(&cap).give_container(data));
            let mut pass_h = pass_out.activate();
            for input in inputs.iter_mut() {
                input.for_each(|cap, data| {
                    if let Some(&t) = cap.least() {
                        let (_, batch) = batches
                            .entry(t)
                            .or_insert_with(|| (cap.delayed(&t, 1), TallyBatch::default()));
                        for d in data.iter() {
                            batch.add_status(d.status);
                            if let (Some(a), Some(tx)) = (d.assessed(), &d.tx) {
                                batch.add_assessed(&a, &tx.region);
                            }
                        }
                    }
                    pass_h.session(&cap).give_container(data);
                });
            }
            // A batch can go once the regions are known through its time; more decisions
            // at that time may follow, and make another batch (tallies add up).
            while let Some(entry) = batches.first_entry() {
                let t = *entry.key();
                if !ready(&frontiers[REGIONS..REGIONS + 1], &t) {
                    break;
                }
                let (cap, mut batch) = entry.remove();
                let mut keyed_s = keyed_h.session(&cap);
                batch.drain(
                    |k, tally| keyed_s.give(((k, ()), t, tally)),
                    |region, tally| {
                        // Decide assessed the transaction only after finding its region
                        // in this same arrangement at this same time.
                        let uf = region_index
                            .get(&region, t, |r| r.uf.clone())
                            .expect("an assessed transaction's region is known at its time");
                        match states
                            .iter_mut()
                            .find(|(k, _)| matches!(k, AnalysisKey::State(u) if *u == uf))
                        {
                            Some((_, sum)) => sum.plus_equals(&tally),
                            None => states.push((AnalysisKey::State(uf), tally)),
                        }
                    },
                );
                for (k, tally) in states.drain(..) {
                    keyed_s.give(((k, ()), t, tally));
                }
            }
            let least_decision = frontiers[..REGIONS]
                .iter()
                .filter_map(|f| f.frontier().iter().min().copied())
                .min();
            region_index.compact(batches.keys().next().copied().or(least_decision));
        }
    });
    // Rows are already (key, ()) pairs: arranged by key as they come, then accumulated.
    let arranged = keyed
        .as_collection()
        .arrange_named::<KeyBatcher<AnalysisKey, Time, Tally>, KeySpine<AnalysisKey, Time, Tally>>(
            "Arrange: CountTotal",
            KeyBatcher::new,
        );
    (passed, arranged.count_total())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geo_distance_matches_haversine() {
        let a = Geo::new(-23.5505, -46.6333);
        let b = Geo::new(-22.9068, -43.1729);
        assert_eq!(
            a.km_to(&b),
            rules::haversine_km(-23.5505, -46.6333, -22.9068, -43.1729)
        );
    }

    proptest::proptest! {
        /// Ordering by the prefix, then by the whole id, is ordering by the whole id.
        #[test]
        fn id_prefix_order_agrees_with_byte_order(a in "[a\\x00-\\x02é]{0,10}", b in "[a\\x00-\\x02é]{0,10}") {
            let by_prefix = id_prefix(&a).cmp(&id_prefix(&b)).then_with(|| a.cmp(&b));
            proptest::prop_assert_eq!(by_prefix, a.as_bytes().cmp(b.as_bytes()));
        }
    }

    #[test]
    fn seen_ids_forget_only_what_left_the_window() {
        let mut seen = SeenIds::default();
        assert_eq!(seen.see("a", 10), None);
        assert_eq!(seen.see("b", 10), None);
        assert_eq!(seen.see("a", 10), Some(10));
        assert_eq!(seen.see("a", 20), Some(10));
        seen.forget_before(30, 15);
        // "b" was last seen at 10 (20 before 30): gone; "a" at 20: kept.
        assert_eq!(seen.len(), 1);
        assert_eq!(seen.see("b", 30), None);
        assert_eq!(seen.see("a", 30), Some(20));
        seen.seed([("c".to_owned(), 5), ("a".to_owned(), 25)]);
        assert_eq!(seen.see("c", 31), Some(5));
        seen.forget_before(1_000, 10);
        assert_eq!(seen.len(), 0);
    }

    #[test]
    fn ready_requires_every_frontier_past_t() {
        let mut a = MutableAntichain::new();
        a.update_iter([(5u64, 1i64)]);
        let mut b = MutableAntichain::new();
        b.update_iter([(3u64, 1i64)]);
        assert!(ready(&[a.clone()], &4));
        assert!(!ready(&[a.clone()], &5));
        assert!(!ready(&[a, b], &4));
    }

    /// The one region of the small graphs below.
    fn region_r() -> Region {
        Region {
            id: "r".into(),
            uf: "SP".into(),
            name: "r".into(),
            lat: 0.0,
            lon: 0.0,
        }
    }

    /// A user living in [`region_r`] with 10.00 of balance and no credit.
    fn user_in_r(id: &str) -> User {
        User {
            id: id.into(),
            name: id.into(),
            region_id: "r".into(),
            balance_cents: 1_000,
            credit_limit_cents: 0,
        }
    }

    /// Reference data that changes while messages flow: a user added at t = 10 is unknown
    /// to a message at t = 5 and known to one at t = 15, whichever order the work arrives
    /// in (the lookup of the older message must read the trace as of its own time).
    #[test]
    fn reference_updates_apply_from_their_time_on() {
        use differential_dataflow::input::Input;
        use std::sync::{Arc, Mutex};
        use timely::dataflow::operators::{Input as _, Inspect, Probe};
        use timely::dataflow::ProbeHandle;

        let seen: Arc<Mutex<Vec<(i64, Status)>>> = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        timely::execute(timely::Config::thread(), move |worker| {
            let probe = ProbeHandle::<Time>::new();
            let sink = sink.clone();
            let (mut regions_in, mut users_in, mut msgs) = worker.dataflow::<Time, _, _>(|scope| {
                let (regions_in, regions) = scope.new_collection::<RegionRow, i64>();
                let (users_in, users) = scope.new_collection::<UserRow, i64>();
                let (msgs, messages) = scope.new_input::<Vec<Incoming>>();
                let (regions, users) = arrange_reference(regions, users);
                let out = build(messages, regions, users, Params::default());
                out.decisions
                    .inspect(move |d: &Decision| {
                        sink.lock().unwrap().push((d.pos.offset, d.status));
                    })
                    .probe_with(&probe);
                (regions_in, users_in, msgs)
            });
            regions_in.update(region_row(&region_r()), 1);
            users_in.update(user_row(&user_in_r("a")), 1);
            regions_in.close();
            // Both messages are sent before the late user is, so both lookups happen
            // after the trace holds the update at t = 10.
            let msg = |offset: i64, t: Time| Incoming {
                pos: SourcePos {
                    partition: 0,
                    offset,
                },
                t,
                ingest_us: 0,
                body: Body::Parsed(Tx {
                    id: format!("x{offset}").into(),
                    payer: "b".into(),
                    payee: "a".into(),
                    region: "r".into(),
                    mode: crate::Mode::Pix,
                    amount_cents: 100,
                    event_ms: t as i64,
                }),
            };
            msgs.advance_to(5);
            msgs.send(msg(0, 5));
            msgs.advance_to(15);
            msgs.send(msg(1, 15));
            msgs.close();
            users_in.advance_to(10);
            users_in.update(user_row(&user_in_r("b")), 1);
            users_in.close();
            while probe.less_than(&16) {
                worker.step();
            }
        })
        .expect("timely runs");
        let mut seen = seen.lock().unwrap().clone();
        seen.sort();
        assert_eq!(
            seen,
            vec![(0, Status::UnknownReference), (1, Status::Approved)]
        );
    }

    /// A worker's message input can close before the reference data is arranged (a
    /// worker none of whose payers has messages; an empty feed): the operators then stop
    /// following the reference traces instead of reading traces they have released.
    #[test]
    fn reference_data_may_arrive_after_the_last_message() {
        use differential_dataflow::input::Input;
        use timely::dataflow::operators::{Input as _, Probe};
        use timely::dataflow::ProbeHandle;

        timely::execute(timely::Config::thread(), |worker| {
            let probe = ProbeHandle::<Time>::new();
            let (mut regions_in, mut users_in, msgs) = worker.dataflow::<Time, _, _>(|scope| {
                let (regions_in, regions) = scope.new_collection::<RegionRow, i64>();
                let (users_in, users) = scope.new_collection::<UserRow, i64>();
                let (msgs, messages) = scope.new_input::<Vec<Incoming>>();
                let (regions, users) = arrange_reference(regions, users);
                let out = build(messages, regions, users, Params::default());
                out.decisions.probe_with(&probe);
                out.analyses.inner.probe_with(&probe);
                (regions_in, users_in, msgs)
            });
            drop(msgs);
            for _ in 0..10 {
                worker.step();
            }
            regions_in.update(region_row(&region_r()), 1);
            users_in.update(user_row(&user_in_r("a")), 1);
            regions_in.close();
            users_in.close();
            while !probe.done() {
                worker.step();
            }
        })
        .expect("timely runs");
    }
}

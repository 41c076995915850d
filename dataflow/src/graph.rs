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

// Per-worker maps keyed by ids: a fast hasher (their iteration order is never used).

use differential_dataflow::operators::arrange::{Arranged, TraceAgent};
use differential_dataflow::trace::implementations::ValSpine;
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use timely::dataflow::operators::ToStream;
use timely::dataflow::StreamVec;

use crate::analyses::{AnalysisKey, Assessed, Tally};
use crate::model::{Cents, Id, Params, Region, RuleSet, SourcePos, Status, Time, Tx, User};
use crate::rules::{self, Scores};

mod admit;
mod control;
mod decide;
mod dedup;
mod frontier;
mod reference;
mod shadow;
mod tally;

pub use admit::admit;
pub use admit::validate;
pub use control::{
    ControlIn, ControlOutcome, OutcomeKind, RuleBook, RuleChange, UserEvent, UserEventKind,
};
use decide::decide;
pub use decide::{LATE_CREDITS, REDECIDED};
use dedup::dedup;
pub use reference::arrange_reference;
pub use shadow::{ShadowRecord, Shadowed};
use tally::analyses;

/// The body of an incoming message: raw bytes from a source, an already-parsed
/// transaction (the bench's parsed-input mode, and tests), or a record its source already
/// refused (decided `invalid` with that error, whatever its bytes hold).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Body {
    /// Raw message bytes from a source, to be parsed (SPEC §3).
    Raw(Vec<u8>),
    /// A transaction already parsed; only the time rules of rules 1–2 remain.
    Parsed(Tx),
    /// A record the source does not trust or could not read: the SPEC §4 clock guard
    /// ("record timestamp ahead of the clock"), a capture line whose payload is `null` or
    /// not UTF-8 (SPEC §9). Never parsed, never in rule 3's memory.
    Refused {
        /// The raw bytes, kept for the dead-letter record.
        raw: Vec<u8>,
        /// The `error` text of its `invalid` decision.
        error: String,
    },
    /// A control record (SPEC §11), raw, to be parsed.
    Control(Vec<u8>),
    /// A control record its source refused (the clock guard, a `null` payload): it
    /// changes nothing.
    ControlRefused {
        /// The raw bytes, kept for the dead-letter record.
        raw: Vec<u8>,
        /// Why.
        error: String,
    },
    /// Not a record: the end of a source's input; the message's `t` is the greatest
    /// arrival time the source gave.
    End,
}

/// What the source lets into the graph: a transaction message that parsed (on its way to
/// rules 1–3), or a control record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Admitted {
    /// A transaction message that parsed.
    Tx(Pending),
    /// A control record (SPEC §11).
    Control(ControlIn),
    /// The end of a source's input, with the greatest arrival time it gave.
    End(Time),
}

/// A message as it enters the graph, at timely time `t`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Incoming {
    /// Source position (SPEC §4).
    pub pos: SourcePos,
    /// Arrival time `t`, ms since the Unix epoch (SPEC §4).
    pub t: Time,
    /// Wall-clock µs when the source took the message in (0 in replay); for latency only.
    pub ingest_us: u64,
    /// The message itself.
    pub body: Body,
}

/// Coordinates stored as their bit patterns, so that arranged values can be `Ord`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Geo {
    lat_bits: u64,
    lon_bits: u64,
}

impl Geo {
    /// The point at `lat`, `lon` degrees.
    pub fn new(lat: f64, lon: f64) -> Self {
        Geo {
            lat_bits: lat.to_bits(),
            lon_bits: lon.to_bits(),
        }
    }
    /// Great-circle distance to `other`, in km (SPEC §6 haversine).
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
    /// The region's two-letter state code (analysis 6).
    pub uf: String,
    /// The region's coordinates.
    pub geo: Geo,
}

/// The value of the users arrangement, keyed by user id. The home region is kept by id
/// and read, as of each message's time, from the regions arrangement: a region's change
/// is one update, not one per user living there (SPEC §11), and a user whose home region
/// is unknown at `t` is unknown at `t` (SPEC §6).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UserVal {
    /// The user's home region id.
    pub home: Id,
    /// The opening balance and credit limit.
    pub opening: Opening,
}

/// What a user's state starts from: its opening balance and credit limit, from the
/// reference data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Opening {
    /// Opening balance in cents.
    pub balance_cents: Cents,
    /// Credit limit in cents.
    pub credit_limit_cents: Cents,
}

impl Opening {
    /// A user's opening balance and credit limit.
    pub fn new(balance_cents: Cents, credit_limit_cents: Cents) -> Self {
        Opening {
            balance_cents,
            credit_limit_cents,
        }
    }
}

/// A message that passed rules 1–3 and is on its way to its payer's owner. (`Default`
/// is what stays behind when a message is taken out of a batch in order.)
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Pending {
    /// Source position (SPEC §4).
    pub pos: SourcePos,
    /// Arrival time `t`, ms since the Unix epoch (SPEC §4).
    pub t: Time,
    /// Wall-clock µs when the source took the message in (0 in replay); for latency only.
    pub ingest_us: u64,
    /// The parsed transaction.
    pub tx: Tx,
    /// The raw payload, kept only while the message could still be decided `invalid` by
    /// the time rule (its event time is after its arrival time; boxed: rarely there).
    pub raw: Option<Box<Vec<u8>>>,
}

/// The decision about one message: SPEC §8's decision record plus what the analyses need.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// Source position (SPEC §4).
    pub pos: SourcePos,
    /// Arrival time `t`, ms since the Unix epoch (SPEC §4).
    pub t: Time,
    /// Wall-clock µs when the source took the message in (0 in replay); for latency only.
    pub ingest_us: u64,
    /// The SPEC §5 status.
    pub status: Status,
    /// The parsed transaction; `None` when the message did not parse or was refused.
    pub tx: Option<Tx>,
    /// The SPEC §6 scores, for an assessed message only.
    pub scores: Option<Scores>,
    /// Why: the parse error of an `invalid` message, or which reference is unknown.
    pub reason: Option<String>,
    /// The raw payload of an `invalid` message (for the dead-letter record).
    pub raw: Option<Vec<u8>>,
    /// For an assessed message: the band of the distance between the payer's and the
    /// payee's home regions (analysis 10; the other analyses need only what is above).
    pub home_band: Option<u8>,
    /// For an assessed message: the UF of its region at its time (analysis 6).
    pub uf: Option<Id>,
    /// The version of the rule set in force at its time (SPEC §11).
    pub rules_version: Id,
}

impl Decision {
    /// A decision with only its position, times and status.
    pub fn new(pos: SourcePos, t: Time, ingest_us: u64, status: Status) -> Self {
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
            uf: None,
            rules_version: Id::default(),
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
            raw: p.raw.map(|raw| *raw),
            reason,
            ..Decision::new(p.pos, p.t, p.ingest_us, status)
        }
    }
}

/// A user's runtime state after a timestamp that changed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// User id.
    pub user: String,
    /// Balance, in cents.
    pub balance_cents: Cents,
    /// Credit used, in cents.
    pub credit_used_cents: Cents,
    /// Event time E of the user's last approval, ms since the Unix epoch; `None` if none.
    pub last_approved_ms: Option<i64>,
    /// The user was deleted (SPEC §11): its account is gone (the other fields are 0).
    #[serde(default)]
    pub deleted: bool,
}

/// An approval's credit to its payee, applied at the payee's owner one ms later.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Credit {
    /// The payee's user id.
    pub payee: Id,
    /// The approved amount, in cents.
    pub amount_cents: Cents,
    /// The payee's reference data, in case its owner has not yet touched its state.
    pub payee_ref: Opening,
    /// When it applies: its approval's time + 1.
    pub at: Time,
    /// +1, or -1 when its approval's owner took it back (it decided that approval again
    /// and it was no longer one).
    pub diff: i64,
}

/// A reference collection arranged by id, shared by every operator that reads it.
pub type RefTrace<V> = TraceAgent<ValSpine<String, V, Time, i64>>;
/// A reference arrangement (of a [`RefTrace`]) in a scope.
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
    /// What became of each control record (SPEC §11), at the end of the cell of its
    /// effective time (a record scheduled beyond its arrival's cell also at that cell's end).
    pub controls: StreamVec<'s, Time, ControlOutcome>,
    /// What the shadow rule sets (SPEC §12) produce, tagged with the index of their set in
    /// `build`'s `shadows`; empty without shadows.
    pub shadows: StreamVec<'s, Time, Shadowed>,
}

/// Shadow rule sets to decide beside the rules of record (SPEC §12).
#[derive(Clone, Debug, Default)]
pub struct Shadows {
    /// The rule sets, each a shadow, in the order their records are tagged with.
    pub sets: Vec<RuleSet>,
    /// Whether their decisions and account states leave the graph (`replay` writes
    /// them); without, only their analyses and what-if rows do (what the live view shows).
    pub ledgers: bool,
}

/// The pipeline's state at a resume point (restored from the durable sink after a restart):
/// the ids seen within the duplicate window, every changed account, and the analyses.
/// Worker 0 injects it at time 0, before any message; it travels the same exchanges as the
/// state it seeds.
#[derive(Clone, Debug, Default)]
pub struct Resume {
    /// Transaction ids that passed rules 1–2, with the arrival time they were last seen.
    pub seen: Vec<(String, Time)>,
    /// Every account changed before the resume point, with its state there.
    pub accounts: Vec<Account>,
    /// The analysis rows accumulated up to the resume point.
    pub analyses: Vec<(AnalysisKey, Tally)>,
    /// The rule changes applied before the resume point, in the order they applied.
    pub rules: Vec<RuleChange>,
    /// Control records accepted before the resume point that take effect after it.
    pub scheduled: Vec<ControlIn>,
}

/// A region as a reference-collection record: `(id, value)`.
pub type RegionRow = (String, RegionVal);
/// A user as a reference-collection record: `(id, home region id, balance, credit limit)`.
pub type UserRow = (String, String, Cents, Cents);

/// A region as its reference-collection record.
pub fn region_row(r: &Region) -> RegionRow {
    (
        r.id.clone(),
        RegionVal {
            uf: r.uf.clone(),
            geo: Geo::new(r.lat, r.lon),
        },
    )
}

/// A user as its reference-collection record.
pub fn user_row(u: &User) -> UserRow {
    (
        u.id.clone(),
        u.region_id.clone(),
        u.balance_cents,
        u.credit_limit_cents,
    )
}

/// Builds the decision graph — the one entry point — on what the source admitted (see
/// [`admit`]: transaction messages that parsed and control records; the messages it
/// decided `invalid` beside them), the initial reference data (at time 0) and rule set,
/// starting from the state in `resume` (empty for a fresh start). A stream of raw
/// messages goes through [`validate`] first. Without `live` changes (no control topic,
/// no control records in a capture), the control records are not followed at all: the
/// reference data is then complete from the start, and the operators that read it do not
/// wait for its progress each round. Each of `shadows` is decided beside the rules of
/// record by a ledger of its own (SPEC §12; not resumed: a shadow starts with the graph).
#[allow(clippy::too_many_arguments)]
pub fn build<'s>(
    (admitted, invalid): (StreamVec<'s, Time, Admitted>, StreamVec<'s, Time, Decision>),
    regions: VecCollection<'s, Time, RegionRow, i64>,
    users: VecCollection<'s, Time, UserRow, i64>,
    params: Params,
    rules: &RuleSet,
    resume: &Resume,
    live: bool,
    shadows: &Shadows,
) -> Outputs<'s> {
    use timely::dataflow::operators::{Concat, OkErr};
    let scope = admitted.scope();
    // Only worker 0 injects the resume state; the exchanges take each part to its owner.
    let mine = scope.index() == 0;
    fn of_mine<T>(mine: bool, v: Vec<T>) -> Vec<T> {
        if mine {
            v
        } else {
            Vec::new()
        }
    }
    let seen = of_mine(mine, resume.seen.clone()).to_stream(scope);
    let seeded = of_mine(mine, resume.accounts.clone()).to_stream(scope);
    let prior = of_mine(mine, resume.analyses.clone())
        .into_iter()
        .map(|(key, tally)| ((key, ()), 0, tally))
        .to_stream(scope);
    let scheduled = of_mine(mine, resume.scheduled.clone()).to_stream(scope);
    // The control record moves straight into its stream (rare: not worth a box).
    #[allow(clippy::result_large_err)]
    let (pending, others): (_, StreamVec<'s, Time, Admitted>) = admitted.ok_err(|a| match a {
        Admitted::Tx(p) => Ok(p),
        other => Err(other),
    });
    #[allow(clippy::result_large_err)]
    let (controls, ends) = others.ok_err(|a| match a {
        Admitted::Control(c) => Ok(c),
        Admitted::End(t) => Err(t),
        Admitted::Tx(_) => unreachable!("transactions went the other way"),
    });
    let (controls, ends) = if live || !resume.scheduled.is_empty() {
        (controls.concat(scheduled), ends)
    } else {
        (
            Vec::<ControlIn>::new().to_stream(scope),
            Vec::<Time>::new().to_stream(scope),
        )
    };
    let changes = control::control(controls, ends, users, regions, rules, &resume.rules, params);
    let book = RuleBook::new(rules.clone(), &resume.rules);
    let (regions, users) = arrange_reference(changes.regions, changes.users);
    // What the shadows share with the ledger of record (only when there are shadows: a
    // stream read twice is copied).
    let shared = (!shadows.sets.is_empty()).then(|| {
        (
            pending.clone(),
            invalid.clone(),
            regions.clone(),
            users.clone(),
            changes.user_events.clone(),
        )
    });
    let (pending, decided_early) = dedup(
        pending,
        invalid,
        seen,
        changes.rules.clone(),
        book.clone(),
        params,
    );
    // Rules 1–3 of record, for the shadows whose parameters of those rules agree with
    // it: only while the rule set of record cannot change (no live changes).
    let record_dedup = (!live && resume.rules.is_empty() && !shadows.sets.is_empty())
        .then(|| (rules.clone(), pending.clone(), decided_early.clone()));
    let (decided, accounts) = decide(
        scope,
        pending,
        seeded,
        regions,
        users,
        changes.user_events,
        changes.rules,
        book,
        params,
    );
    let (decisions, analyses) = analyses([decided, decided_early], prior);
    let shadowed = match shared {
        Some((pending, invalid, regions, users, user_events)) => shadow::shadows(
            shadows,
            &decisions,
            record_dedup.as_ref(),
            &pending,
            &invalid,
            &regions,
            &users,
            &user_events,
            params,
        ),
        None => Vec::<Shadowed>::new().to_stream(scope),
    };
    Outputs {
        decisions,
        accounts,
        analyses,
        controls: changes.outcomes,
        shadows: shadowed,
    }
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

    /// The inputs of a small graph built with default parameters and no resume state:
    /// regions, users, raw messages (through [`validate`]), and what [`build`] returns.
    type SmallGraph<'s> = (
        differential_dataflow::input::InputSession<Time, RegionRow, i64>,
        differential_dataflow::input::InputSession<Time, UserRow, i64>,
        timely::dataflow::InputHandleVec<Time, Incoming>,
        Outputs<'s>,
    );

    /// Builds [`SmallGraph`] in `scope`.
    fn small_graph(scope: timely::dataflow::Scope<'_, Time>) -> SmallGraph<'_> {
        use differential_dataflow::input::Input;
        use timely::dataflow::operators::Input as _;

        let (regions_in, regions) = scope.new_collection::<RegionRow, i64>();
        let (users_in, users) = scope.new_collection::<UserRow, i64>();
        let (msgs, messages) = scope.new_input::<Vec<Incoming>>();
        let out = build(
            validate(messages),
            regions,
            users,
            Params::default(),
            &RuleSet::of(&Params::default(), "default"),
            &Resume::default(),
            true,
            &Shadows::default(),
        );
        (regions_in, users_in, msgs, out)
    }

    /// Reference data that changes while messages flow: a user added at t = 10 is unknown
    /// to a message at t = 5 and known to one at t = 15, whichever order the work arrives
    /// in (the lookup of the older message must read the trace as of its own time).
    #[test]
    fn reference_updates_apply_from_their_time_on() {
        use std::sync::{Arc, Mutex};
        use timely::dataflow::operators::{Inspect, Probe};
        use timely::dataflow::ProbeHandle;

        let seen: Arc<Mutex<Vec<(i64, Status)>>> = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        timely::execute(timely::Config::thread(), move |worker| {
            let probe = ProbeHandle::<Time>::new();
            let sink = sink.clone();
            let (mut regions_in, mut users_in, mut msgs) = worker.dataflow::<Time, _, _>(|scope| {
                let (regions_in, users_in, msgs, out) = small_graph(scope);
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
        use timely::dataflow::operators::Probe;
        use timely::dataflow::ProbeHandle;

        timely::execute(timely::Config::thread(), |worker| {
            let probe = ProbeHandle::<Time>::new();
            let (mut regions_in, mut users_in, msgs) = worker.dataflow::<Time, _, _>(|scope| {
                let (regions_in, users_in, msgs, out) = small_graph(scope);
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

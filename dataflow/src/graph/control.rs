//! Live changes (SPEC §11): control records become updates of the reference collections,
//! events of a user's state for `Decide`, and rule changes for the operators that read
//! the rules.
//!
//! ```text
//! control ─▶ Route ─┬─ users   (by user id) ─▶ Users   ─▶ users collection, user events, outcomes
//!  records   T = max(t_c, effective_from)    ◀─ initial users (time 0)
//!                   ├─ regions (by region id) ─▶ Regions ─▶ regions collection, outcomes
//!                   │                        ◀─ initial regions (time 0)
//!                   └─ rules   (worker 0)   ─▶ Rules   ─▶ rule changes (broadcast), outcomes
//! ```
//!
//! Each keyed operator applies the changes of one key in `(T, source position)` order once
//! its inputs have passed `T` (a change enters at or before its arrival time `t_c <= T`),
//! and emits what they do at `T` exactly: a lookup as of `t` sees the changes with
//! `T <= t`. Validity that depends on the state at `T` (an adjustment of a user that does
//! not exist then, a rule set version used before) is decided there.

use std::collections::BTreeSet;

use differential_dataflow::Hashable;
use foldhash::{HashMap, HashMapExt};
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Capability, Concatenate};
use timely::dataflow::StreamVec;
use timely::progress::frontier::MutableAntichain;

use crate::model::{Cents, Change, ControlRecord, Id, Params, RuleSet, SourcePos, Time};

use super::{region_row, RegionRow, RegionVal, UserRow};

/// A control record as it enters the graph: its bytes, and what parsing made of them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ControlIn {
    /// Its position on the control topic (partition, offset).
    pub pos: SourcePos,
    /// Its arrival time `t_c` (clamped per control partition as SPEC §4 clamps messages).
    pub t: Time,
    /// The raw record (for the dead-letter record if it changes nothing).
    pub raw: Vec<u8>,
    /// The record, or why it is not one.
    pub parsed: Result<ControlRecord, String>,
    /// Accepted before a restart and still to take effect (from the durable store): its
    /// arrival was recorded then, so it is not reported as `Scheduled` again.
    #[serde(default)]
    pub resumed: bool,
}

/// What became of a control record (SPEC §11), for the stores and the dashboard.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ControlOutcome {
    /// Its position on the control topic.
    pub pos: SourcePos,
    /// Its arrival time `t_c`.
    pub t: Time,
    /// Its effective time `T` (`t_c` for a record that did not parse).
    pub at: Time,
    /// This outcome is at the end of the record's arrival cell: a store that commits the
    /// control topic's offsets counts the record as consumed with it. (Each record has
    /// exactly one such outcome: `Scheduled`, or its final one when `T` is in the same
    /// cell as `t_c`.)
    pub arrived: bool,
    /// What happened.
    pub kind: OutcomeKind,
}

/// See [`ControlOutcome`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum OutcomeKind {
    /// Applied at `at`. A `user` change carries what the user's reference row became (an
    /// update keeps the opening balance the user was created with).
    Applied(Change),
    /// Accepted, and to take effect at `at`, after the end of its arrival's cell: a
    /// durable store keeps it until it is applied (or rejected) there.
    Scheduled(ControlRecord),
    /// Changed nothing: the dead-letter topic and the invalid-messages table get it.
    Rejected {
        /// The raw record.
        raw: Vec<u8>,
        /// Why.
        error: String,
    },
}

/// A rule set coming into force at `at`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuleChange {
    /// Its effective time `T`.
    pub at: Time,
    /// The position of its control record (the order of changes at one `T`).
    pub pos: SourcePos,
    /// The rule set.
    pub rules: RuleSet,
}

/// A change of one user's state, applied by its owner at `at` after the credits due then.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserEvent {
    /// Its effective time `T`.
    pub at: Time,
    /// The position of its control record (the order of changes at one `T`).
    pub pos: SourcePos,
    /// The user.
    pub user: Id,
    /// What changes.
    pub kind: UserEventKind,
}

/// See [`UserEvent`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum UserEventKind {
    /// The user and its state are gone.
    Delete,
    /// Balance += `amount_cents`; the user's opening balance and limit make its state if
    /// it has none yet.
    Adjust {
        /// Cents added.
        amount_cents: Cents,
        /// The opening balance of the user's current incarnation.
        opening_cents: Cents,
        /// The user's credit limit.
        limit_cents: Cents,
    },
}

/// The rule sets in force over time: the initial one, then the changes in `(T, position)`
/// order.
#[derive(Clone, Debug)]
pub struct RuleBook {
    initial: RuleSet,
    changes: Vec<RuleChange>,
}

impl RuleBook {
    /// The book of `initial` and the changes already applied (after a restart).
    pub fn new(initial: RuleSet, history: &[RuleChange]) -> Self {
        let mut book = RuleBook {
            initial,
            changes: Vec::new(),
        };
        for c in history {
            book.insert(c.clone());
        }
        book
    }

    /// Adds a change (in any order).
    pub fn insert(&mut self, change: RuleChange) {
        let key = (change.at, change.pos);
        let i = self.changes.partition_point(|c| (c.at, c.pos) <= key);
        self.changes.insert(i, change);
    }

    /// The rule set in force at `t` (the changes with `T <= t` applied).
    pub fn as_of(&self, t: Time) -> &RuleSet {
        let i = self.changes.partition_point(|c| c.at <= t);
        match i.checked_sub(1) {
            Some(i) => &self.changes[i].rules,
            None => &self.initial,
        }
    }

    /// The rule parameters in force at `t`, on top of `params` (which holds the rest).
    pub fn params_at(&self, t: Time, params: &Params) -> Params {
        self.as_of(t).apply_to(params)
    }

    /// Forgets changes that no time at or after `t` can see (all but the one in force at
    /// `t` and those after).
    pub fn forget_before(&mut self, t: Time) {
        let i = self.changes.partition_point(|c| c.at <= t);
        if i > 1 {
            self.changes.drain(..i - 1);
        }
    }
}

/// A parsed control record on its way to the operator of its key.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Keyed {
    at: Time,
    pos: SourcePos,
    t: Time,
    raw: Vec<u8>,
    change: Change,
}

/// What [`control`] makes of the control records.
pub struct Live<'s> {
    /// The users collection: the initial users and every change, at its `T`.
    pub users: differential_dataflow::VecCollection<'s, Time, UserRow, i64>,
    /// The regions collection: the initial regions and every change, at its `T`.
    pub regions: differential_dataflow::VecCollection<'s, Time, RegionRow, i64>,
    /// Events of users' states, at their `T` (not yet at their owners).
    pub user_events: StreamVec<'s, Time, UserEvent>,
    /// The rule changes, at their `T`, on every worker.
    pub rules: StreamVec<'s, Time, RuleChange>,
    /// What became of each control record.
    pub outcomes: StreamVec<'s, Time, ControlOutcome>,
}

/// The least time of a set of frontiers, `Time::MAX` once all are empty.
fn bound(frontiers: &[MutableAntichain<Time>]) -> Time {
    frontiers
        .iter()
        .filter_map(|f| f.frontier().iter().min().copied())
        .min()
        .unwrap_or(Time::MAX)
}

/// Builds the live-change part of the graph: control records in; the initial reference
/// data (at time 0, or the state at a resume point) and the rule sets known at the start
/// (`initial`, and the `history` applied before a resume point) beside them.
pub fn control<'s>(
    controls: StreamVec<'s, Time, ControlIn>,
    ends: StreamVec<'s, Time, Time>,
    initial_users: differential_dataflow::VecCollection<'s, Time, UserRow, i64>,
    initial_regions: differential_dataflow::VecCollection<'s, Time, RegionRow, i64>,
    initial: &RuleSet,
    history: &[RuleChange],
    params: Params,
) -> Live<'s> {
    let scope = controls.scope();
    let end = end_of_input(ends).broadcast();
    let (user_keyed, region_keyed, rule_keyed, parse_outcomes) = route(controls, params);
    let (users, user_events, user_outcomes) =
        users_op(user_keyed, initial_users, end.clone(), params);
    let (regions, region_outcomes) = regions_op(region_keyed, initial_regions, end.clone(), params);
    let mut used: BTreeSet<String> = history.iter().map(|c| c.rules.version.clone()).collect();
    used.insert(initial.version.clone());
    let (rules, rule_outcomes) = rules_op(rule_keyed, used, end, params);
    let outcomes = scope.concatenate([
        parse_outcomes,
        user_outcomes,
        region_outcomes,
        rule_outcomes,
    ]);
    Live {
        users,
        regions,
        user_events,
        rules: rules.broadcast(),
        outcomes,
    }
}

type Out<D> = timely::dataflow::operators::generic::OutputBuilder<
    Time,
    timely::container::CapacityContainerBuilder<Vec<D>>,
>;

/// Parses nothing (the source did): computes each record's `T`, refuses what did not
/// parse, notes what takes effect beyond its arrival's cell, and sends each change to
/// the operator of its key.
#[allow(clippy::type_complexity)]
fn route<'s>(
    controls: StreamVec<'s, Time, ControlIn>,
    params: Params,
) -> (
    StreamVec<'s, Time, Keyed>,
    StreamVec<'s, Time, Keyed>,
    StreamVec<'s, Time, Keyed>,
    StreamVec<'s, Time, ControlOutcome>,
) {
    let mut builder = OperatorBuilder::new("RouteControl".to_owned(), controls.scope());
    let mut input = builder.new_input(controls, Pipeline);
    let (users_out, users) = builder.new_output();
    let (regions_out, regions) = builder.new_output();
    let (rules_out, rules) = builder.new_output();
    let (outcome_out, outcomes) = builder.new_output();
    let mut users_out: Out<Keyed> = OutputBuilder::from(users_out);
    let mut regions_out: Out<Keyed> = OutputBuilder::from(regions_out);
    let mut rules_out: Out<Keyed> = OutputBuilder::from(rules_out);
    let mut outcome_out: Out<ControlOutcome> = OutputBuilder::from(outcome_out);
    builder.build(move |_caps| {
        move |_frontiers| {
            let mut users_h = users_out.activate();
            let mut regions_h = regions_out.activate();
            let mut rules_h = rules_out.activate();
            let mut outcome_h = outcome_out.activate();
            input.for_each(|cap, data| {
                let Some(&entered) = cap.least() else { return };
                for c in data.drain(..) {
                    let end = params.cell_end(c.t);
                    let record = match c.parsed {
                        Ok(record) => record,
                        Err(error) => {
                            let at = cap.delayed(&end, 3);
                            outcome_h.session(&at).give(ControlOutcome {
                                pos: c.pos,
                                t: c.t,
                                at: c.t,
                                arrived: true,
                                kind: OutcomeKind::Rejected { raw: c.raw, error },
                            });
                            continue;
                        }
                    };
                    let at = match record.effective_from {
                        Some(from) if from > 0 && from as u64 > c.t => from as u64,
                        _ => c.t,
                    };
                    if at > end && !c.resumed {
                        let out = cap.delayed(&end, 3);
                        outcome_h.session(&out).give(ControlOutcome {
                            pos: c.pos,
                            t: c.t,
                            at,
                            arrived: true,
                            kind: OutcomeKind::Scheduled(record.clone()),
                        });
                    }
                    let keyed = Keyed {
                        at,
                        pos: c.pos,
                        t: c.t,
                        raw: c.raw,
                        change: record.change,
                    };
                    match &keyed.change {
                        Change::User(_) | Change::UserDelete { .. } | Change::Adjust { .. } => {
                            users_h.session(&cap.delayed(&entered, 0)).give(keyed)
                        }
                        Change::Region(_) | Change::RegionDelete { .. } => {
                            regions_h.session(&cap.delayed(&entered, 1)).give(keyed)
                        }
                        Change::Rules(_) => rules_h.session(&cap.delayed(&entered, 2)).give(keyed),
                    }
                }
            });
        }
    });
    (users, regions, rules, outcomes)
}

/// The end of the input: the greatest arrival time over every source, once every source
/// has ended (on worker 0; nothing while any source runs).
fn end_of_input<'s>(ends: StreamVec<'s, Time, Time>) -> StreamVec<'s, Time, Time> {
    let mut builder = OperatorBuilder::new("EndOfInput".to_owned(), ends.scope());
    let mut input = builder.new_input(ends, Exchange::new(|_: &Time| 0));
    let (out, stream) = builder.new_output();
    let mut out: Out<Time> = OutputBuilder::from(out);
    builder.build(move |_caps| {
        let mut held: Option<Capability<Time>> = None;
        let mut last: Option<Time> = None;
        move |frontiers| {
            input.for_each(|cap, data| {
                if let Some(&t) = cap.least() {
                    if held.as_ref().is_none_or(|h| *h.time() > t) {
                        held = Some(cap.delayed(&t, 0));
                    }
                }
                last = data.iter().copied().chain(last).max();
            });
            if frontiers[0].is_empty() {
                if let (Some(cap), Some(t)) = (held.take(), last) {
                    out.activate().session(&cap).give(t);
                }
            }
        }
    });
    stream
}

/// The id a keyed change is about.
fn key_of(change: &Change) -> &str {
    match change {
        Change::User(u) => &u.id,
        Change::UserDelete { id } | Change::RegionDelete { id } => id,
        Change::Adjust { user_id, .. } => user_id,
        Change::Region(r) => &r.id,
        Change::Rules(r) => &r.version,
    }
}

/// Changes buffered until their `T` is passed, with capabilities (one per output) at the
/// earliest time one of them entered at, or later: never after the earliest `T` left.
struct Buffered<const N: usize> {
    items: Vec<Keyed>,
    held: Option<[Capability<Time>; N]>,
}

impl<const N: usize> Buffered<N> {
    fn new() -> Self {
        Buffered {
            items: Vec::new(),
            held: None,
        }
    }

    fn take(
        &mut self,
        cap: &timely::dataflow::operators::InputCapability<Time>,
        data: &mut Vec<Keyed>,
    ) {
        let Some(&t) = cap.least() else { return };
        if self.held.as_ref().is_none_or(|h| *h[0].time() > t) {
            self.held = Some(std::array::from_fn(|i| cap.delayed(&t, i)));
        }
        self.items.append(data);
    }

    /// The changes whose `T` is before `bound`, in `(T, position)` order. Once every
    /// input has ended (`bound` is `Time::MAX`), those that take effect after the end of
    /// the input (`end`, the greatest arrival time of any source, if known) change no
    /// message: they are not applied (they stay pending in a durable store, and a run
    /// that ends is not moved to their time).
    fn ready_at(&mut self, bound: Time, end: Option<Time>) -> Vec<Keyed> {
        if bound == Time::MAX {
            let limit = end.map_or(Time::MAX, |e| e.saturating_add(1));
            let ready = self.ready(limit);
            self.items.clear();
            return ready;
        }
        self.ready(bound)
    }

    /// The changes whose `T` is before `bound`, in `(T, position)` order.
    fn ready(&mut self, bound: Time) -> Vec<Keyed> {
        let mut ready: Vec<Keyed> = Vec::new();
        let mut i = 0;
        while i < self.items.len() {
            if self.items[i].at < bound {
                ready.push(self.items.swap_remove(i));
            } else {
                i += 1;
            }
        }
        ready.sort_by_key(|k| (k.at, k.pos));
        ready
    }

    /// Moves the held capabilities to the earliest `T` left (or lets them go).
    fn settle(&mut self) {
        match self.items.iter().map(|k| k.at).min() {
            Some(least) => {
                if let Some(h) = self.held.as_mut() {
                    for c in h.iter_mut() {
                        if *c.time() < least {
                            c.downgrade(&least);
                        }
                    }
                }
            }
            None => self.held = None,
        }
    }
}

/// The users operator, at the owner of each user id.
#[allow(clippy::type_complexity)]
fn users_op<'s>(
    keyed: StreamVec<'s, Time, Keyed>,
    initial: differential_dataflow::VecCollection<'s, Time, UserRow, i64>,
    end: StreamVec<'s, Time, Time>,
    params: Params,
) -> (
    differential_dataflow::VecCollection<'s, Time, UserRow, i64>,
    StreamVec<'s, Time, UserEvent>,
    StreamVec<'s, Time, ControlOutcome>,
) {
    use differential_dataflow::AsCollection;
    let mut builder = OperatorBuilder::new("Users".to_owned(), keyed.scope());
    let mut changes =
        builder.new_input(keyed, Exchange::new(|k: &Keyed| key_of(&k.change).hashed()));
    let mut rows = builder.new_input(
        initial.inner,
        Exchange::new(|(row, _, _): &(UserRow, Time, i64)| row.0.hashed()),
    );
    let mut end_in = builder.new_input(end, Pipeline);
    let (rows_out, rows_stream) = builder.new_output();
    let (events_out, events) = builder.new_output();
    let (outcome_out, outcomes) = builder.new_output();
    let mut rows_out: Out<(UserRow, Time, i64)> = OutputBuilder::from(rows_out);
    let mut events_out: Out<UserEvent> = OutputBuilder::from(events_out);
    let mut outcome_out: Out<ControlOutcome> = OutputBuilder::from(outcome_out);
    builder.build(move |_caps| {
        // Each existing user's reference row: (home region, opening balance, limit).
        let mut users: HashMap<String, (String, Cents, Cents)> = HashMap::new();
        let mut buffer: Buffered<3> = Buffered::new();
        let mut last: Option<Time> = None;
        move |frontiers| {
            end_in.for_each(|_, data| last = data.iter().copied().chain(last).max());
            let mut rows_h = rows_out.activate();
            rows.for_each(|cap, data| {
                for ((id, region, opening, limit), _, diff) in data.iter() {
                    if *diff > 0 {
                        users.insert(id.clone(), (region.clone(), *opening, *limit));
                    } else if users.get(id).is_some_and(|u| u.0 == *region) {
                        users.remove(id);
                    }
                }
                if let Some(&t) = cap.least() {
                    rows_h.session(&cap.delayed(&t, 0)).give_container(data);
                }
            });
            changes.for_each(|cap, data| buffer.take(&cap, data));
            let bound = bound(frontiers);
            let ready = buffer.ready_at(bound, last);
            if !ready.is_empty() {
                let held = buffer.held.as_ref().expect("changes are buffered");
                let mut events_h = events_out.activate();
                let mut outcome_h = outcome_out.activate();
                for k in ready {
                    let at_cap = held[0].delayed(&k.at);
                    let out = held[2].delayed(&params.cell_end(k.at));
                    let outcome = |kind| ControlOutcome {
                        pos: k.pos,
                        t: k.t,
                        at: k.at,
                        arrived: params.cell_end(k.at) == params.cell_end(k.t),
                        kind,
                    };
                    match k.change {
                        Change::User(u) => {
                            let opening = match users.get(&u.id) {
                                Some(old) => {
                                    let (region, opening, limit) = old.clone();
                                    if region != u.region_id || limit != u.credit_limit_cents {
                                        rows_h.session(&at_cap).give_iterator(
                                            [
                                                ((u.id.clone(), region, opening, limit), k.at, -1),
                                                (
                                                    (
                                                        u.id.clone(),
                                                        u.region_id.clone(),
                                                        opening,
                                                        u.credit_limit_cents,
                                                    ),
                                                    k.at,
                                                    1,
                                                ),
                                            ]
                                            .into_iter(),
                                        );
                                    }
                                    opening
                                }
                                None => {
                                    rows_h.session(&at_cap).give((
                                        (
                                            u.id.clone(),
                                            u.region_id.clone(),
                                            u.balance_cents,
                                            u.credit_limit_cents,
                                        ),
                                        k.at,
                                        1,
                                    ));
                                    u.balance_cents
                                }
                            };
                            users.insert(
                                u.id.clone(),
                                (u.region_id.clone(), opening, u.credit_limit_cents),
                            );
                            let applied = crate::model::User {
                                balance_cents: opening,
                                ..u
                            };
                            outcome_h
                                .session(&out)
                                .give(outcome(OutcomeKind::Applied(Change::User(applied))));
                        }
                        Change::UserDelete { id } => {
                            if let Some((region, opening, limit)) = users.remove(&id) {
                                rows_h
                                    .session(&at_cap)
                                    .give(((id.clone(), region, opening, limit), k.at, -1));
                                events_h.session(&held[1].delayed(&k.at)).give(UserEvent {
                                    at: k.at,
                                    pos: k.pos,
                                    user: Id::from(id.as_str()),
                                    kind: UserEventKind::Delete,
                                });
                            }
                            outcome_h
                                .session(&out)
                                .give(outcome(OutcomeKind::Applied(Change::UserDelete { id })));
                        }
                        Change::Adjust {
                            user_id,
                            amount_cents,
                        } => match users.get(&user_id) {
                            Some((_, opening, limit)) => {
                                events_h.session(&held[1].delayed(&k.at)).give(UserEvent {
                                    at: k.at,
                                    pos: k.pos,
                                    user: Id::from(user_id.as_str()),
                                    kind: UserEventKind::Adjust {
                                        amount_cents,
                                        opening_cents: *opening,
                                        limit_cents: *limit,
                                    },
                                });
                                outcome_h.session(&out).give(outcome(OutcomeKind::Applied(
                                    Change::Adjust {
                                        user_id,
                                        amount_cents,
                                    },
                                )));
                            }
                            None => outcome_h.session(&out).give(outcome(OutcomeKind::Rejected {
                                raw: k.raw,
                                error: "balance_adjustment of a user that does not exist at its effective time"
                                    .to_owned(),
                            })),
                        },
                        other => unreachable!("a {other:?} routed to the users"),
                    }
                }
            }
            buffer.settle();
        }
    });
    (rows_stream.as_collection(), events, outcomes)
}

/// The regions operator, at the owner of each region id.
#[allow(clippy::type_complexity)]
fn regions_op<'s>(
    keyed: StreamVec<'s, Time, Keyed>,
    initial: differential_dataflow::VecCollection<'s, Time, RegionRow, i64>,
    end: StreamVec<'s, Time, Time>,
    params: Params,
) -> (
    differential_dataflow::VecCollection<'s, Time, RegionRow, i64>,
    StreamVec<'s, Time, ControlOutcome>,
) {
    use differential_dataflow::AsCollection;
    let mut builder = OperatorBuilder::new("Regions".to_owned(), keyed.scope());
    let mut changes =
        builder.new_input(keyed, Exchange::new(|k: &Keyed| key_of(&k.change).hashed()));
    let mut rows = builder.new_input(
        initial.inner,
        Exchange::new(|(row, _, _): &(RegionRow, Time, i64)| row.0.hashed()),
    );
    let mut end_in = builder.new_input(end, Pipeline);
    let (rows_out, rows_stream) = builder.new_output();
    let (outcome_out, outcomes) = builder.new_output();
    let mut rows_out: Out<(RegionRow, Time, i64)> = OutputBuilder::from(rows_out);
    let mut outcome_out: Out<ControlOutcome> = OutputBuilder::from(outcome_out);
    builder.build(move |_caps| {
        let mut regions: HashMap<String, RegionVal> = HashMap::new();
        let mut buffer: Buffered<2> = Buffered::new();
        let mut last: Option<Time> = None;
        move |frontiers| {
            end_in.for_each(|_, data| last = data.iter().copied().chain(last).max());
            let mut rows_h = rows_out.activate();
            rows.for_each(|cap, data| {
                for ((id, val), _, diff) in data.iter() {
                    if *diff > 0 {
                        regions.insert(id.clone(), val.clone());
                    } else if regions.get(id) == Some(val) {
                        regions.remove(id);
                    }
                }
                if let Some(&t) = cap.least() {
                    rows_h.session(&cap.delayed(&t, 0)).give_container(data);
                }
            });
            changes.for_each(|cap, data| buffer.take(&cap, data));
            let ready = buffer.ready_at(bound(frontiers), last);
            if !ready.is_empty() {
                let held = buffer.held.as_ref().expect("changes are buffered");
                let mut outcome_h = outcome_out.activate();
                for k in ready {
                    let at_cap = held[0].delayed(&k.at);
                    let out = held[1].delayed(&params.cell_end(k.at));
                    let change = match k.change {
                        Change::Region(r) => {
                            let (id, val) = region_row(&r);
                            if let Some(old) = regions.insert(id.clone(), val.clone()) {
                                rows_h.session(&at_cap).give(((id.clone(), old), k.at, -1));
                            }
                            rows_h.session(&at_cap).give(((id, val), k.at, 1));
                            Change::Region(r)
                        }
                        Change::RegionDelete { id } => {
                            if let Some(old) = regions.remove(&id) {
                                rows_h.session(&at_cap).give(((id.clone(), old), k.at, -1));
                            }
                            Change::RegionDelete { id }
                        }
                        other => unreachable!("a {other:?} routed to the regions"),
                    };
                    outcome_h.session(&out).give(ControlOutcome {
                        pos: k.pos,
                        t: k.t,
                        at: k.at,
                        arrived: params.cell_end(k.at) == params.cell_end(k.t),
                        kind: OutcomeKind::Applied(change),
                    });
                }
            }
            buffer.settle();
        }
    });
    (rows_stream.as_collection(), outcomes)
}

/// The rules operator, on worker 0: a version used before (the initial one included)
/// changes nothing.
fn rules_op<'s>(
    keyed: StreamVec<'s, Time, Keyed>,
    mut used: BTreeSet<String>,
    end: StreamVec<'s, Time, Time>,
    params: Params,
) -> (
    StreamVec<'s, Time, RuleChange>,
    StreamVec<'s, Time, ControlOutcome>,
) {
    let mut builder = OperatorBuilder::new("Rules".to_owned(), keyed.scope());
    let mut changes = builder.new_input(keyed, Exchange::new(|_: &Keyed| 0));
    let mut end_in = builder.new_input(end, Pipeline);
    let (rules_out, rules) = builder.new_output();
    let (outcome_out, outcomes) = builder.new_output();
    let mut rules_out: Out<RuleChange> = OutputBuilder::from(rules_out);
    let mut outcome_out: Out<ControlOutcome> = OutputBuilder::from(outcome_out);
    builder.build(move |_caps| {
        let mut buffer: Buffered<2> = Buffered::new();
        let mut last: Option<Time> = None;
        move |frontiers| {
            end_in.for_each(|_, data| last = data.iter().copied().chain(last).max());
            changes.for_each(|cap, data| buffer.take(&cap, data));
            let ready = buffer.ready_at(bound(frontiers), last);
            if !ready.is_empty() {
                let held = buffer.held.as_ref().expect("changes are buffered");
                let mut rules_h = rules_out.activate();
                let mut outcome_h = outcome_out.activate();
                for k in ready {
                    let out = held[1].delayed(&params.cell_end(k.at));
                    let Change::Rules(rules) = k.change else {
                        unreachable!("only rule sets are routed to the rules")
                    };
                    let kind = if used.insert(rules.version.clone()) {
                        rules_h.session(&held[0].delayed(&k.at)).give(RuleChange {
                            at: k.at,
                            pos: k.pos,
                            rules: rules.clone(),
                        });
                        OutcomeKind::Applied(Change::Rules(rules))
                    } else {
                        OutcomeKind::Rejected {
                            raw: k.raw,
                            error: format!(
                                "rules version {:?} was used before",
                                rules.version.chars().take(64).collect::<String>()
                            ),
                        }
                    };
                    outcome_h.session(&out).give(ControlOutcome {
                        pos: k.pos,
                        t: k.t,
                        at: k.at,
                        arrived: params.cell_end(k.at) == params.cell_end(k.t),
                        kind,
                    });
                }
            }
            buffer.settle();
        }
    });
    (rules, outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(at: Time, offset: i64, version: &str) -> RuleChange {
        RuleChange {
            at,
            pos: SourcePos {
                partition: 0,
                offset,
            },
            rules: RuleSet {
                version: version.into(),
                ..RuleSet::of(&Params::default(), version)
            },
        }
    }

    #[test]
    fn rule_book_answers_as_of_a_time() {
        let mut book = RuleBook::new(RuleSet::of(&Params::default(), "default"), &[]);
        book.insert(change(10, 1, "b"));
        book.insert(change(5, 0, "a"));
        book.insert(change(10, 0, "a2"));
        assert_eq!(book.as_of(4).version, "default");
        assert_eq!(book.as_of(5).version, "a");
        assert_eq!(book.as_of(9).version, "a");
        // Two changes at one T: the later position wins.
        assert_eq!(book.as_of(10).version, "b");
        book.forget_before(12);
        assert_eq!(book.as_of(12).version, "b");
        assert_eq!(book.changes.len(), 1);
    }
}

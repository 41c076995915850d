//! `Decide`: rules 4–8 at the payer's owner, many milliseconds per round.
//!
//! The law is the sequential ledger of SPEC §4–5: messages in `(t, id, position)` order,
//! each decided against the state left by everything before it, an approval's credit to
//! its payee visible only to messages with a strictly greater `t`. The credits travel to
//! the payee's owner around a feedback edge whose summary is +1 ms.
//!
//! The operator does not wait for that loop one millisecond at a time. It *executes*
//! every message whose time the message, reference and resume inputs have passed (all
//! its messages up to there are in), in ledger order, with the credits it knows: its own
//! payees' credits at once, other workers' as they arrive. It sends the credits for other
//! workers' payees as soon as they are produced. A credit that arrives for a time it has
//! already executed past re-decides that payee's payments after that time, from the
//! funds recorded before each (a payer's funds change only by its own payments and the
//! credits it receives); a payment whose decision changes changes its credit, sent as a
//! difference (a retraction has `diff = -1`) or, for a payee of this worker, re-deciding
//! that payee in turn. A decision is *final*, and only then leaves the operator, when no
//! credit for an earlier time can arrive any more: when the credits input's frontier has
//! passed its time, as before. Causality runs forward in time (a credit at `t` changes
//! nothing at or before `t`), so after the k-th exchange of differences every decision
//! whose chain of cross-worker credits is at most k long is right, and when the loop is
//! quiet every decision is the sequential ledger's: the result cannot depend on how many
//! milliseconds one round takes, on the number of workers, or on the order credits
//! arrive in. The cost of a round is paid per batch of milliseconds, not per millisecond.
//!
//! Outputs leave at the end of their time's cell of the epoch grid (`Params::epoch_ms`),
//! a decision's user changes once per cell, so a sink's cut is always whole cells.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};

use timely::progress::frontier::MutableAntichain;

use compact_str::CompactString;

// Per-worker maps keyed by ids: a fast hasher (their iteration order is never used).
use foldhash::{HashMap, HashMapExt};

use differential_dataflow::Hashable;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::{Capability, ConnectLoop, Feedback};
use timely::dataflow::{Scope, StreamVec};

use crate::model::{Params, SourcePos, Status, Time};
use crate::rules;

use super::reference::*;
use super::*;

/// A user's funds before its first change: from the state at the resume point if it has
/// one, else from its reference data (the credit limit is always the reference's).
fn initial_funds(r: &Opening, resumed: Option<Account>) -> rules::Funds {
    match resumed.filter(|a| !a.deleted) {
        Some(a) => rules::Funds {
            balance_cents: a.balance_cents,
            credit_limit_cents: r.credit_limit_cents,
            credit_used_cents: a.credit_used_cents,
            last_approved_ms: a.last_approved_ms,
        },
        None => rules::Funds {
            balance_cents: r.balance_cents,
            credit_limit_cents: r.credit_limit_cents,
            credit_used_cents: 0,
            last_approved_ms: None,
        },
    }
}

/// Memo of great-circle distances between coordinate pairs: homes and transaction
/// regions are regions, so few distinct pairs recur. Direct-mapped; the same value as
/// computing it (a pure function of the pair).
pub(super) struct DistanceMemo {
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
    pub(super) fn km(&mut self, a: &Geo, b: &Geo) -> f64 {
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
pub(super) fn id_prefix(id: &str) -> u64 {
    let mut bytes = [0u8; 8];
    let n = id.len().min(8);
    bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
    u64::from_be_bytes(bytes)
}

/// Credits that reached a payer after its messages at their time were executed (from
/// another worker, or from a decision that changed), and decisions that such a credit
/// changed. Process-wide; printed by `vtpga bench`.
pub static LATE_CREDITS: AtomicU64 = AtomicU64::new(0);
/// See [`LATE_CREDITS`].
pub static REDECIDED: AtomicU64 = AtomicU64::new(0);

/// The worker that owns a payer (or payee) id: the same function the exchanges use.
fn owner_hash(id: &str) -> u64 {
    id.hashed()
}

/// What execution found for one message (what its decision record needs besides the
/// message itself).
#[derive(Clone, Debug)]
struct Outcome {
    status: Status,
    scores: Option<Scores>,
    home_band: Option<u8>,
    reason: Option<&'static str>,
    /// The payer's funds just before this message, as executed (for a message that read
    /// them): what a late credit to the payer is checked against.
    before: Option<rules::Funds>,
    /// The UF of the message's region at its time (for an assessed message).
    uf: Option<Id>,
}

impl Final {
    fn new(funds: rules::Funds) -> Self {
        Final {
            funds: Some(funds),
            exec: Some(funds),
            touched: None,
        }
    }
}

impl Outcome {
    fn plain(status: Status) -> Self {
        Outcome {
            status,
            scores: None,
            home_band: None,
            reason: None,
            before: None,
            uf: None,
        }
    }

    fn decision(self, p: Pending, rules_version: &str) -> Decision {
        // A stale message is not assessed (SPEC §5): no scores in its record.
        let assessed = self.status != Status::Stale;
        Decision {
            scores: self.scores.filter(|_| assessed),
            home_band: self.home_band.filter(|_| assessed),
            uf: self.uf.filter(|_| assessed),
            rules_version: Id::from(rules_version),
            ..Decision::of(p, self.status, self.reason.map(str::to_owned))
        }
    }
}

/// A credit to one of this worker's own payees, applied at `at` (its approval's time + 1).
#[derive(Clone, Debug)]
struct Due {
    at: Time,
    payee: Id,
    amount_cents: Cents,
    payee_ref: Opening,
}

/// A credit to one of this worker's payees from a final approval, not yet final itself.
/// Execution has applied it already, so its payee has state.
struct FinalDue {
    at: Time,
    payee: Id,
    amount_cents: Cents,
}

/// A user's final state (SPEC §2), owned by exactly one worker. `None` while the user
/// has no state there: deleted (SPEC §11) and not yet touched since it was created again.
struct Final {
    /// As of `final_upto`.
    funds: Option<rules::Funds>,
    /// As of `exec_upto`: what execution decides with.
    exec: Option<rules::Funds>,
    /// The last finalization (its number) that changed this user: reported once each.
    touched: Option<u64>,
}

/// What [`Ledger::finalize`] returns: decisions and changed accounts, each at the time it
/// leaves at.
type Finalized = (Vec<(Time, Decision)>, Vec<(Time, Account)>);

/// Late changes of balance still to take into account: by (time, user), the user's
/// reference data and the sum of the changes.
type Work = BTreeMap<(Time, CompactString), (Opening, Cents)>;

/// One worker's ledger: the final state, the messages executed but not yet final, and
/// what is needed to execute them again.
struct Ledger {
    regions: RefIndex<RegionVal>,
    /// Each user's funds as of `final_upto` (all events before it applied).
    users: RefIndex<UserVal, Option<Final>>,
    params: Params,
    me: u64,
    peers: u64,
    /// Resume state of users this worker owns, taken when each is first touched.
    resumed: HashMap<CompactString, Account>,
    /// Messages received whose time the inputs have not passed yet.
    pend: Vec<Pending>,
    /// Messages executed and not final, in ledger order, with what execution found.
    window: VecDeque<(Pending, Outcome)>,
    /// Every event before this time is final (in `users`).
    final_upto: Time,
    /// Every event before this time is executed (in each user's `Final::exec`).
    exec_upto: Time,
    /// Credits from other workers, by the time they apply (at or after `final_upto`), each
    /// with its multiplicity (a retraction is -1).
    incoming: BTreeMap<Time, Vec<(Credit, i64)>>,
    /// Credits to this worker's payees from final approvals, not yet applied to the final
    /// state (their time is `final_upto` or later).
    final_due: VecDeque<FinalDue>,
    /// Credits to this worker's payees from executed approvals, not yet applied in
    /// execution (their time is `exec_upto` or later).
    exec_due: VecDeque<Due>,
    /// Late changes of balance not yet taken into account (see `settle`).
    work: Work,
    /// Changes to the credits for other workers' payees, not sent yet: `(approval time,
    /// credit)`, a retraction having `diff = -1`.
    outbox: Vec<(Time, Credit)>,
    /// Counts the groups of changes reported together (a cell within one finalization).
    marks: u64,
    /// The number of messages made final so far: `window[i]` is message `base + i`.
    base: u64,
    /// Each payer's messages in `window` that read its funds, in ledger order (by number).
    payer_msgs: HashMap<CompactString, VecDeque<u64>>,
    km: DistanceMemo,
    order: Vec<(Time, u64, u32)>,
    /// The rule sets in force over time.
    book: RuleBook,
    /// Changes of this worker's users' states (SPEC §11) not final yet, in the order they
    /// apply; those before `exec_upto` are applied in execution.
    events: BTreeMap<(Time, SourcePos), UserEvent>,
    /// The times of the deletions among `events`, by user: a late credit re-decides only
    /// the payments of the user it reached, not those of a later one with its id.
    deletions: HashMap<CompactString, Vec<Time>>,
}

impl Ledger {
    fn owns(&self, id: &str) -> bool {
        owner_hash(id) % self.peers == self.me
    }

    /// The executed funds of `user` (made from `reference` if it has none).
    fn exec_funds(&mut self, user: &str, reference: &Opening) -> &mut rules::Funds {
        Self::exec_of(&mut self.users, &mut self.resumed, user, reference)
    }

    fn exec_of<'a>(
        users: &'a mut RefIndex<UserVal, Option<Final>>,
        resumed: &mut HashMap<CompactString, Account>,
        user: &str,
        reference: &Opening,
    ) -> &'a mut rules::Funds {
        let slot = users.state_of(user);
        match slot {
            None => {
                let f = Final::new(initial_funds(reference, resumed.remove(user)));
                slot.insert(f).exec.as_mut().expect("just made")
            }
            Some(f) => f.exec.get_or_insert_with(|| initial_funds(reference, None)),
        }
    }

    /// The first deletion of `user` at or after `at` that is not final.
    fn deleted_from(&self, user: &str, at: Time) -> Option<Time> {
        self.deletions
            .get(user)?
            .iter()
            .copied()
            .filter(|&d| d >= at)
            .min()
    }

    /// Applies, in execution, the change `e` of a user's state.
    fn apply_exec_event(&mut self, e: &UserEvent) {
        match e.kind {
            UserEventKind::Delete => {
                let resumed = self.resumed.remove(e.user.as_str());
                let before =
                    e.at.checked_sub(1)
                        .and_then(|t| self.users.get(&e.user, t, |u| u.opening));
                match self.users.state_of(&e.user) {
                    Some(f) => f.exec = None,
                    // Not touched here yet: its final state, which a late credit may still
                    // reach before the deletion, is what it was up to the deletion.
                    slot @ None => {
                        if let Some(reference) = before {
                            *slot = Some(Final {
                                funds: Some(initial_funds(&reference, resumed)),
                                exec: None,
                                touched: None,
                            });
                        }
                    }
                }
            }
            UserEventKind::Adjust {
                amount_cents,
                opening_cents,
                limit_cents,
            } => {
                let reference = Opening::new(opening_cents, limit_cents);
                let funds = self.exec_funds(&e.user, &reference);
                // Past the range of i64 cents a balance stops at the bound (SPEC silent).
                funds.balance_cents = funds.balance_cents.saturating_add(amount_cents);
            }
        }
    }

    /// Applies, in execution and in time order, the credits and the changes of users'
    /// states at times from `from` through `upto` (at one time, the credits first).
    fn apply_exec_through(&mut self, mut from: Time, upto: Time) {
        while let Some(at) = self
            .events
            .range((from, SourcePos::default())..)
            .map(|((at, _), _)| *at)
            .next()
            .filter(|&at| at <= upto)
        {
            self.apply_exec_credits(from, at);
            let due: Vec<UserEvent> = self
                .events
                .range((at, SourcePos::default())..(at + 1, SourcePos::default()))
                .map(|(_, e)| e.clone())
                .collect();
            for e in &due {
                self.apply_exec_event(e);
            }
            from = at + 1;
        }
        self.apply_exec_credits(from, upto);
    }

    /// A credit from another worker, applying at `at`.
    fn receive(&mut self, at: Time, credit: Credit, diff: i64) {
        debug_assert!(at >= self.final_upto, "a credit for a final time");
        if at < self.exec_upto {
            // Already executed past: its payee's later payments are decided again (in
            // `settle`, with every late credit of this round).
            let delta = credit.amount_cents * diff as Cents;
            self.work
                .entry((at, CompactString::from(credit.payee.as_str())))
                .or_insert((credit.payee_ref, 0))
                .1 += delta;
        }
        self.incoming.entry(at).or_default().push((credit, diff));
    }

    /// Takes the late changes of balance into account: in time order, the changes to one
    /// user at one time summed. What a change causes is strictly later, so each is taken
    /// once everything before it is known (taken in another order, one change could
    /// re-decide the same payments again and again).
    fn settle(&mut self) {
        let mut work = std::mem::take(&mut self.work);
        while let Some(((at, user), (reference, delta))) = work.pop_first() {
            if delta == 0 {
                continue;
            }
            LATE_CREDITS.fetch_add(1, Ordering::Relaxed);
            self.redecide(&user, &reference, at, delta, &mut work);
        }
    }

    /// `user`'s executed payments at or after `at`, decided again with `delta` more
    /// balance from `at` on. Its funds before each are those recorded plus what changed
    /// before it: the delta, and the payments whose decision changed (a payer's funds
    /// change only by its own payments and the credits it receives). Changed approvals
    /// change credits: another worker's payee gets the difference sent; this worker's
    /// joins `work`, or the credits due next if not executed yet.
    fn redecide(
        &mut self,
        user: &str,
        reference: &Opening,
        at: Time,
        delta: Cents,
        work: &mut Work,
    ) {
        let (mut shift_balance, mut shift_credit) = (delta, 0 as Cents);
        let mut last: Option<Option<i64>> = None;
        // The change reaches the user's payments up to its deletion, if it was deleted.
        let deleted = self.deleted_from(user, at);
        let numbers: Vec<u64> = match self.payer_msgs.get(user) {
            Some(list) => {
                let base = self.base;
                let first = list.partition_point(|&n| self.window[(n - base) as usize].0.t < at);
                list.range(first..)
                    .copied()
                    .take_while(|&n| {
                        deleted.is_none_or(|d| self.window[(n - base) as usize].0.t < d)
                    })
                    .collect()
            }
            None => Vec::new(),
        };
        let mut newest_approval: Option<i64> = None;
        for n in numbers {
            let i = (n - self.base) as usize;
            let (p, o) = &mut self.window[i];
            let (Some(mut funds), Some(scores)) = (o.before, o.scores) else {
                continue;
            };
            let started_with = *last.get_or_insert(funds.last_approved_ms);
            funds.balance_cents += shift_balance;
            funds.credit_used_cents += shift_credit;
            funds.last_approved_ms = newest_approval.or(started_with);
            o.before = Some(funds);
            let status = if rules::is_stale(p.tx.event_ms, &funds) {
                Status::Stale
            } else {
                rules::assess(
                    p.tx.mode,
                    p.tx.amount_cents,
                    scores.risk,
                    &funds,
                    &self.book.params_at(p.t, &self.params),
                )
            };
            let was = o.status == Status::Approved;
            let is = status == Status::Approved;
            o.status = status;
            if is {
                newest_approval = Some(p.tx.event_ms);
            }
            if was == is {
                continue;
            }
            REDECIDED.fetch_add(1, Ordering::Relaxed);
            let sign: Cents = if is { 1 } else { -1 };
            let amount = p.tx.amount_cents;
            if p.tx.mode.uses_credit() {
                shift_credit += sign * amount;
            } else {
                shift_balance -= sign * amount;
            }
            let (t, payee) = (p.t, p.tx.payee.clone());
            let payee_ref = self
                .users
                .get(&payee, t, |u| u.opening)
                .expect("a payee decided once is known at its time");
            if self.owns(&payee) {
                if t + 1 >= self.exec_upto {
                    // Not applied in execution yet: the credits due next change.
                    if is {
                        self.exec_due.push_front(Due {
                            at: t + 1,
                            payee,
                            amount_cents: amount,
                            payee_ref,
                        });
                    } else if let Some(k) = self
                        .exec_due
                        .iter()
                        .position(|d| d.at == t + 1 && d.payee == payee && d.amount_cents == amount)
                    {
                        self.exec_due.remove(k);
                    }
                } else {
                    work.entry((t + 1, CompactString::from(payee.as_str())))
                        .or_insert((payee_ref, 0))
                        .1 += sign * amount;
                }
            } else {
                self.outbox.push((
                    t,
                    Credit {
                        payee,
                        amount_cents: amount,
                        payee_ref,
                        at: t + 1,
                        diff: sign as i64,
                    },
                ));
            }
        }
        if deleted.is_some_and(|d| d < self.exec_upto) {
            // Executed past its deletion: the state it changed is gone in execution. The
            // final state still takes the credit before the deletion, so the user needs a
            // slot even if execution never touched it before it was deleted.
            let slot = self.users.state_of(user);
            if slot.is_none() {
                *slot = Some(Final {
                    funds: Some(initial_funds(reference, None)),
                    exec: None,
                    touched: None,
                });
            }
            return;
        }
        let funds = self.exec_funds(user, reference);
        funds.balance_cents += shift_balance;
        funds.credit_used_cents += shift_credit;
        if let Some(started_with) = last {
            funds.last_approved_ms = newest_approval.or(started_with).or(funds.last_approved_ms);
        }
    }

    /// Applies, in execution, the credits that apply at or before `upto`.
    fn apply_exec_credits(&mut self, from: Time, upto: Time) {
        while self.exec_due.front().is_some_and(|d| d.at <= upto) {
            let d = self.exec_due.pop_front().expect("front checked");
            self.exec_funds(&d.payee, &d.payee_ref).balance_cents += d.amount_cents;
        }
        if from > upto {
            return;
        }
        // Borrow split: the incoming credits are read while the executed funds change.
        let incoming = std::mem::take(&mut self.incoming);
        for (_, credits) in incoming.range(from..=upto) {
            for (c, diff) in credits {
                self.exec_funds(&c.payee, &c.payee_ref).balance_cents +=
                    c.amount_cents * *diff as Cents;
            }
        }
        self.incoming = incoming;
    }

    /// Executes the messages the inputs have passed (those before `bound`), and again from
    /// the final state those already executed if a late credit asked for it.
    fn execute(&mut self, bound: Time) {
        let start = self.window.len();
        let from = self.exec_upto;
        // Newly executable messages join the window in ledger order.
        if bound > self.exec_upto {
            self.order.clear();
            self.order.extend(
                self.pend
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.t < bound)
                    .map(|(i, p)| (p.t, id_prefix(&p.tx.id), i as u32)),
            );
            let pend = &self.pend;
            self.order.sort_unstable_by(|(ta, ka, ia), (tb, kb, ib)| {
                (ta, ka).cmp(&(tb, kb)).then_with(|| {
                    let (a, b) = (&pend[*ia as usize], &pend[*ib as usize]);
                    (&a.tx.id, a.pos).cmp(&(&b.tx.id, b.pos))
                })
            });
            for &(_, _, i) in &self.order {
                let p = std::mem::take(&mut self.pend[i as usize]);
                self.window.push_back((p, Outcome::plain(Status::Invalid)));
            }
            self.pend.retain(|p| p.t >= bound);
        }
        let mut applied_through = from; // credits and changes before this time are applied
        for i in start..self.window.len() {
            let t = self.window[i].0.t;
            if t >= applied_through {
                self.apply_exec_through(applied_through, t);
                applied_through = t + 1;
            }
            let outcome = self.decide_one(i);
            self.window[i].1 = outcome;
        }
        let end = bound.max(self.exec_upto);
        if end > applied_through {
            self.apply_exec_through(applied_through, end - 1);
        }
        self.exec_upto = end;
    }

    /// Rules 4–8 for the window's message `i`, against the executed state.
    fn decide_one(&mut self, i: usize) -> Outcome {
        let (t, region_id, payee_id, payer_id) = {
            let p = &self.window[i].0;
            (
                p.t,
                p.tx.region.clone(),
                p.tx.payee.clone(),
                p.tx.payer.clone(),
            )
        };
        // Rule 4: two users, and every reference known.
        if payer_id == payee_id {
            return Outcome {
                reason: Some("payer and payee are the same user"),
                ..Outcome::plain(Status::UnknownReference)
            };
        }
        // A user is known at `t` when it and its home region are (SPEC §6).
        let regions = &mut self.regions;
        let region = regions.get(&region_id, t, |r| (r.geo, Id::from(r.uf.as_str())));
        let payee = self
            .users
            .get(&payee_id, t, |u| {
                regions.get(&u.home, t, |home| (home.geo, u.opening))
            })
            .flatten();
        let payer = match (&region, &payee) {
            (Some(_), Some(_)) => self
                .users
                .get_with_state(&payer_id, t)
                .and_then(|(u, slot)| {
                    Some((regions.get(&u.home, t, |home| home.geo)?, u.opening, slot))
                }),
            _ => None,
        };
        let known = (region.is_some(), payee.is_some());
        let (Some((region, uf)), Some((payee_home, payee)), Some((payer_home, payer, slot))) =
            (region, payee, payer)
        else {
            // Which reference, not its id: the id is in the record already, exactly as
            // parsed (SPEC §8), however long or odd it is.
            let what = match known {
                (false, _) => "unknown region",
                (true, false) => "unknown payee",
                (true, true) => "unknown payer",
            };
            return Outcome {
                reason: Some(what),
                ..Outcome::plain(Status::UnknownReference)
            };
        };
        let params = self.book.params_at(t, &self.params);
        let (mode, amount_cents, event_ms) = {
            let tx = &self.window[i].0.tx;
            (tx.mode, tx.amount_cents, tx.event_ms)
        };
        // The scores are kept even for a stale message: a late credit may change which
        // approval was the payer's last, and so whether it is stale.
        let hour = rules::local_hour(event_ms);
        let scores = rules::scores(amount_cents, hour, self.km.km(&payer_home, &region));
        let home_band = rules::distance_band(self.km.km(&payer_home, &payee_home));
        let funds = match slot {
            None => slot
                .insert(Final::new(initial_funds(
                    &payer,
                    self.resumed.remove(payer_id.as_str()),
                )))
                .exec
                .as_mut()
                .expect("just made"),
            Some(f) => f.exec.get_or_insert_with(|| initial_funds(&payer, None)),
        };
        // The credit limit is the user's as of now (SPEC §11: a `user` record changes it).
        funds.credit_limit_cents = payer.credit_limit_cents;
        let before = Some(*funds);
        let status = if rules::is_stale(event_ms, funds) {
            Status::Stale
        } else {
            rules::assess(mode, amount_cents, scores.risk, funds, &params)
        };
        if status == Status::Approved {
            rules::approve(mode, amount_cents, event_ms, funds);
        }
        // Only credits from other workers arrive late: alone, a worker needs no list.
        if self.peers > 1 {
            let number = self.base + i as u64;
            match self.payer_msgs.get_mut(payer_id.as_str()) {
                Some(list) => list.push_back(number),
                None => {
                    self.payer_msgs.insert(
                        CompactString::from(payer_id.as_str()),
                        VecDeque::from([number]),
                    );
                }
            }
        }
        if status == Status::Approved {
            if self.owns(&payee_id) {
                self.exec_due.push_back(Due {
                    at: t + 1,
                    payee: payee_id,
                    amount_cents,
                    payee_ref: payee,
                });
            } else {
                self.outbox.push((
                    t,
                    Credit {
                        payee: payee_id,
                        amount_cents,
                        payee_ref: payee,
                        at: t + 1,
                        diff: 1,
                    },
                ));
            }
        }
        Outcome {
            status,
            scores: Some(scores),
            home_band: Some(home_band),
            reason: None,
            before,
            uf: Some(uf),
        }
    }

    /// Makes final every event before `bound` (the inputs, credits included, have passed
    /// it): applies them to the final state and returns the decisions and the changed
    /// accounts, at their times, in time order.
    fn finalize(&mut self, bound: Time) -> Finalized {
        let bound = bound.min(self.exec_upto);
        let (mut decisions, mut accounts) = (Vec::new(), Vec::new());
        if bound <= self.final_upto {
            return (decisions, accounts);
        }
        let mut touched: Vec<CompactString> = Vec::new();
        let mut current: Option<Time> = None;
        loop {
            let next_msg = self.window.front().map(|(p, _)| p.t).filter(|&t| t < bound);
            let next_credit = [
                self.final_due.front().map(|d| d.at),
                self.incoming.keys().next().copied(),
                self.events.keys().next().map(|(at, _)| *at),
            ]
            .into_iter()
            .flatten()
            .min()
            .filter(|&t| t < bound);
            let Some(t) = [next_msg, next_credit].into_iter().flatten().min() else {
                break;
            };
            // A user's state is reported once per cell (its last), at the cell's end.
            let cell = self.params.cell_end(t);
            if current != Some(cell) {
                self.flush_accounts(current, &mut touched, &mut accounts);
                current = Some(cell);
                self.marks += 1;
            }
            let mark = self.marks;
            // Credits first: they come from approvals at earlier times.
            while self.final_due.front().is_some_and(|d| d.at == t) {
                let d = self.final_due.pop_front().expect("front checked");
                let fresh = self
                    .users
                    .state_of(&d.payee)
                    .as_ref()
                    .expect("execution applied this credit: its payee has state")
                    .funds
                    .is_none();
                if fresh {
                    // A payee created again after a deletion: the credit is due to the
                    // user that has its id at the approval's time (SPEC §11).
                    let r = self
                        .users
                        .get(&d.payee, t - 1, |u| u.opening)
                        .expect("an approved payee is known at its time");
                    let f = self.users.state_of(&d.payee).as_mut().expect("just seen");
                    Self::final_funds(f, &r);
                }
                let f = self
                    .users
                    .state_of(&d.payee)
                    .as_mut()
                    .expect("execution applied this credit: its payee has state");
                f.funds.as_mut().expect("made above").balance_cents += d.amount_cents;
                Self::touch(f, mark, &d.payee, &mut touched);
            }
            if let Some(credits) = self.incoming.remove(&t) {
                for (c, diff) in credits {
                    let f = Self::final_slot(
                        &mut self.users,
                        &mut self.resumed,
                        &c.payee,
                        &c.payee_ref,
                    );
                    Self::final_funds(f, &c.payee_ref).balance_cents +=
                        c.amount_cents * diff as Cents;
                    Self::touch(f, mark, &c.payee, &mut touched);
                }
            }
            // Then the changes of users' states at this time, in source order.
            while let Some(entry) = self.events.first_entry() {
                if entry.key().0 != t {
                    break;
                }
                let e = entry.remove();
                match e.kind {
                    UserEventKind::Delete => {
                        if let Some(times) = self.deletions.get_mut(e.user.as_str()) {
                            times.retain(|&d| d != t);
                            if times.is_empty() {
                                self.deletions.remove(e.user.as_str());
                            }
                        }
                        // Reported even for a user never touched here: its account may be
                        // in a store from before a restart.
                        let f = self.users.state_of(&e.user).get_or_insert(Final {
                            funds: None,
                            exec: None,
                            touched: None,
                        });
                        f.funds = None;
                        Self::touch(f, mark, &e.user, &mut touched);
                    }
                    UserEventKind::Adjust {
                        amount_cents,
                        opening_cents,
                        limit_cents,
                    } => {
                        let reference = Opening::new(opening_cents, limit_cents);
                        let f = Self::final_slot(
                            &mut self.users,
                            &mut self.resumed,
                            &e.user,
                            &reference,
                        );
                        let funds = Self::final_funds(f, &reference);
                        funds.balance_cents = funds.balance_cents.saturating_add(amount_cents);
                        Self::touch(f, mark, &e.user, &mut touched);
                    }
                }
            }
            while self.window.front().is_some_and(|(p, _)| p.t == t) {
                let (p, outcome) = self.window.pop_front().expect("front checked");
                if outcome.before.is_some() {
                    // Its payer's list starts with it: it leaves the list with the window.
                    if let Some(list) = self.payer_msgs.get_mut(p.tx.payer.as_str()) {
                        list.pop_front();
                        if list.is_empty() {
                            self.payer_msgs.remove(p.tx.payer.as_str());
                        }
                    }
                }
                self.base += 1;
                if outcome.status == Status::Approved {
                    let f = self
                        .users
                        .state_of(&p.tx.payer)
                        .as_mut()
                        .expect("an approved payer has state");
                    if f.funds.is_none() {
                        // A payer created again after a deletion (SPEC §11): its state
                        // starts from its reference data, as execution's did.
                        let r = self
                            .users
                            .get(&p.tx.payer, t, |u| u.opening)
                            .expect("an approved payer is known at its time");
                        let f = self
                            .users
                            .state_of(&p.tx.payer)
                            .as_mut()
                            .expect("just seen");
                        Self::final_funds(f, &r);
                    }
                    let f = self
                        .users
                        .state_of(&p.tx.payer)
                        .as_mut()
                        .expect("an approved payer has state");
                    let funds = f.funds.as_mut().expect("an approved payer has final state");
                    rules::approve(p.tx.mode, p.tx.amount_cents, p.tx.event_ms, funds);
                    Self::touch(f, mark, &p.tx.payer, &mut touched);
                    if self.owns(&p.tx.payee) {
                        self.final_due.push_back(FinalDue {
                            at: t + 1,
                            payee: p.tx.payee.clone(),
                            amount_cents: p.tx.amount_cents,
                        });
                    }
                }
                let version = self.book.as_of(p.t).version.clone();
                decisions.push((cell, outcome.decision(p, &version)));
            }
        }
        self.flush_accounts(current, &mut touched, &mut accounts);
        self.final_upto = bound;
        (decisions, accounts)
    }

    fn final_slot<'a>(
        users: &'a mut RefIndex<UserVal, Option<Final>>,
        resumed: &mut HashMap<CompactString, Account>,
        user: &str,
        reference: &Opening,
    ) -> &'a mut Final {
        users
            .state_of(user)
            .get_or_insert_with(|| Final::new(initial_funds(reference, resumed.remove(user))))
    }

    /// The final funds of a user that has state in execution: made from `reference` if
    /// the user was deleted and created again since (a new user starts from its opening
    /// balance; execution made its state the same way).
    fn final_funds<'a>(f: &'a mut Final, reference: &Opening) -> &'a mut rules::Funds {
        f.funds
            .get_or_insert_with(|| initial_funds(reference, None))
    }

    fn touch(f: &mut Final, mark: u64, user: &str, touched: &mut Vec<CompactString>) {
        if f.touched != Some(mark) {
            f.touched = Some(mark);
            touched.push(CompactString::from(user));
        }
    }

    fn flush_accounts(
        &mut self,
        at: Option<Time>,
        touched: &mut Vec<CompactString>,
        accounts: &mut Vec<(Time, Account)>,
    ) {
        let Some(t) = at else { return };
        for user in touched.drain(..) {
            let f = self
                .users
                .state_of(&user)
                .as_ref()
                .expect("a changed user has state");
            let account = match &f.funds {
                Some(funds) => Account {
                    balance_cents: funds.balance_cents,
                    credit_used_cents: funds.credit_used_cents,
                    last_approved_ms: funds.last_approved_ms,
                    user: user.into(),
                    deleted: false,
                },
                None => Account {
                    balance_cents: 0,
                    credit_used_cents: 0,
                    last_approved_ms: None,
                    user: user.into(),
                    deleted: true,
                },
            };
            accounts.push((t, account));
        }
    }

    /// The earliest time of anything not final (an output may still be made at it).
    fn earliest_open(&self) -> Option<Time> {
        [
            self.window.front().map(|(p, _)| p.t),
            self.pend.iter().map(|p| p.t).min(),
            self.incoming.keys().next().copied(),
            self.final_due.front().map(|d| d.at),
            self.events.keys().next().map(|(at, _)| *at),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// The least time of a frontier over a totally ordered time, `Time::MAX` once empty.
fn frontier_time(f: &MutableAntichain<Time>) -> Time {
    f.frontier().iter().min().copied().unwrap_or(Time::MAX)
}

/// Lowers `held` to `t` on `port`, from `cap`, unless it already is at or before `t`.
fn hold_at(
    held: &mut Option<Capability<Time>>,
    cap: &timely::dataflow::operators::InputCapability<Time>,
    t: Time,
    port: usize,
) {
    if held.as_ref().is_none_or(|h| *h.time() > t) {
        *held = Some(cap.delayed(&t, port));
    }
}

/// Moves `held` to `t`, or lets it go if nothing is open.
fn follow(held: &mut Option<Capability<Time>>, t: Option<Time>) {
    match t {
        Some(t) => {
            if let Some(h) = held.as_mut() {
                if *h.time() < t {
                    h.downgrade(&t);
                }
            }
        }
        None => *held = None,
    }
}

/// Rules 4–8 at the payer's owner; credits go around a +1 ms feedback edge (see the
/// module's documentation for how many milliseconds one round decides).
// Each input is a stream of its own (their frontiers say what is complete).
#[allow(clippy::too_many_arguments)]
pub(super) fn decide<'s>(
    scope: Scope<'s, Time>,
    pending: StreamVec<'s, Time, Pending>,
    seeded: StreamVec<'s, Time, Account>,
    regions: RefArranged<'s, RegionVal>,
    users: RefArranged<'s, UserVal>,
    user_events: StreamVec<'s, Time, UserEvent>,
    rule_changes: StreamVec<'s, Time, RuleChange>,
    book: RuleBook,
    params: Params,
) -> (StreamVec<'s, Time, Decision>, StreamVec<'s, Time, Account>) {
    let (loop_handle, credits) = scope.feedback::<Vec<Credit>>(1);
    let (me, peers) = (scope.index() as u64, scope.peers().max(1) as u64);
    let mut builder = OperatorBuilder::new("Decide".to_owned(), scope);
    let mut msgs = builder.new_input(
        pending,
        Exchange::new(|p: &Pending| owner_hash(&p.tx.payer)),
    );
    let mut credit_in =
        builder.new_input(credits, Exchange::new(|c: &Credit| owner_hash(&c.payee)));
    // The reference arrangements are replicated: read locally. Their frontiers (inputs 2
    // and 3) say when they are complete through a time.
    let mut region_batches = builder.new_input(regions.stream, Pipeline);
    let mut user_batches = builder.new_input(users.stream, Pipeline);
    let mut seeded_in = builder.new_input(seeded, Exchange::new(|a: &Account| a.user.hashed()));
    let mut events_in = builder.new_input(
        user_events,
        Exchange::new(|e: &UserEvent| owner_hash(&e.user)),
    );
    let mut rules_in = builder.new_input(rule_changes, Pipeline);
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
    let mut ledger = Ledger {
        regions: RefIndex::new(regions.trace),
        users: RefIndex::new(users.trace),
        params,
        me,
        peers,
        resumed: HashMap::new(),
        pend: Vec::new(),
        window: VecDeque::new(),
        final_upto: 0,
        exec_upto: 0,
        incoming: BTreeMap::new(),
        final_due: VecDeque::new(),
        exec_due: VecDeque::new(),
        outbox: Vec::new(),
        work: BTreeMap::new(),
        base: 0,
        marks: 0,
        payer_msgs: HashMap::new(),
        km: DistanceMemo::default(),
        order: Vec::new(),
        book,
        events: BTreeMap::new(),
        deletions: HashMap::new(),
    };
    // Frontier indexes: messages, credits, regions, users, resume accounts, user events,
    // rule changes.
    const CREDITS: usize = 1;
    builder.build(move |_caps| {
        // Capabilities: for decisions and accounts at the earliest time not final; for
        // credits at the earliest message not executed (never more: holding one longer
        // would hold the loop back to one millisecond per round).
        let mut outputs: Option<Capability<Time>> = None;
        let mut account_cap: Option<Capability<Time>> = None;
        let mut credit_cap: Option<Capability<Time>> = None;
        move |frontiers| {
            seeded_in.for_each(|_, data| {
                for a in data.drain(..) {
                    ledger
                        .resumed
                        .insert(CompactString::from(a.user.as_str()), a);
                }
            });
            rules_in.for_each(|_, data| {
                for c in data.drain(..) {
                    ledger.book.insert(c);
                }
            });
            events_in.for_each(|cap, data| {
                if let Some(&t) = cap.least() {
                    // Its change may be reported as an account at its time.
                    hold_at(&mut outputs, &cap, t, 0);
                    hold_at(&mut account_cap, &cap, t, 2);
                    for e in data.drain(..) {
                        if e.kind == UserEventKind::Delete {
                            ledger
                                .deletions
                                .entry(CompactString::from(e.user.as_str()))
                                .or_default()
                                .push(e.at);
                        }
                        ledger.events.insert((e.at, e.pos), e);
                    }
                }
            });
            // Reference data is reloaded as soon as it changes, not when a message first
            // needs it.
            region_batches.for_each(|_, spans| ledger.regions.observe(spans));
            user_batches.for_each(|_, spans| ledger.users.observe(spans));
            ledger.regions.refresh();
            ledger.users.refresh();
            msgs.for_each(|cap, data| {
                if let Some(&t) = cap.least() {
                    hold_at(&mut outputs, &cap, t, 0);
                    hold_at(&mut account_cap, &cap, t, 2);
                    hold_at(&mut credit_cap, &cap, t, 1);
                    ledger.pend.append(data);
                }
            });
            // What may send credits this time: the messages not executed yet, and the
            // credits that arrive now (whatever they change is at or after their time).
            let mut emit = credit_cap.clone();
            credit_in.for_each(|cap, data| {
                if let Some(&arrived) = cap.least() {
                    hold_at(&mut outputs, &cap, arrived, 0);
                    hold_at(&mut account_cap, &cap, arrived, 2);
                    hold_at(&mut emit, &cap, arrived, 1);
                    for mut c in data.drain(..) {
                        let diff = std::mem::replace(&mut c.diff, 1);
                        ledger.receive(c.at, c, diff);
                    }
                }
            });
            ledger.settle();
            let bound = [0, 2, 3, 4, 5, 6]
                .into_iter()
                .map(|i| frontier_time(&frontiers[i]))
                .min()
                .unwrap_or(Time::MAX);
            if bound > ledger.exec_upto {
                ledger.execute(bound);
            }
            {
                let changes = consolidate(std::mem::take(&mut ledger.outbox));
                if !changes.is_empty() {
                    // All at once, at the earliest approval among them (each says when it
                    // applies). Not at the cause's time: a receiver stamping its new credits
                    // with the time of the credits it just received would walk the loop's
                    // frontier forward one millisecond per exchange while messages keep
                    // coming. Causality runs forward: the cause is at or before them all.
                    let emit = emit.as_ref().expect("credits change only after a cause");
                    let earliest = changes.iter().map(|(t, _)| *t).min().expect("not empty");
                    assert!(
                        *emit.time() <= earliest,
                        "a credit changed before its cause"
                    );
                    let at = emit.delayed(&earliest);
                    credit_out
                        .activate()
                        .session(&at)
                        .give_iterator(changes.into_iter().map(|(_, c)| c));
                }
            }
            drop(emit);
            follow(&mut credit_cap, ledger.pend.iter().map(|p| p.t).min());
            let bound = bound.min(frontier_time(&frontiers[CREDITS]));
            let (decided, changed) = ledger.finalize(bound);
            // Outputs leave at the end of their time's cell of the epoch grid.
            if let Some(cap) = outputs.as_ref() {
                let mut decision_h = decision_out.activate();
                for_each_time(decided, |t, items| {
                    let at = cap.delayed(&params.cell_end(t));
                    decision_h.session(&at).give_iterator(items);
                });
            }
            if let Some(cap) = account_cap.as_ref() {
                let mut account_h = account_out.activate();
                for_each_time(changed, |t, items| {
                    let at = cap.delayed(&params.cell_end(t));
                    account_h.session(&at).give_iterator(items);
                });
            }
            let open = ledger.earliest_open();
            follow(&mut outputs, open);
            follow(&mut account_cap, open);
            // No message will ask about a time before both the frontier of the messages and
            // those not final: the traces may forget distinctions before that.
            // (A credit due to one of this worker's payees may read the payee as of its
            // approval's time, for a payee created again after a deletion.)
            let least = [
                frontiers[0].frontier().iter().min().copied(),
                ledger.window.front().map(|(p, _)| p.t),
                ledger.pend.iter().map(|p| p.t).min(),
                ledger.final_due.front().map(|d| d.at.saturating_sub(1)),
            ]
            .into_iter()
            .flatten()
            .min();
            ledger.regions.compact(least);
            ledger.users.compact(least);
            if let Some(least) = least {
                ledger.book.forget_before(least.min(ledger.final_upto));
            }
        }
    });
    credit_stream.connect_loop(loop_handle);
    (decisions, accounts)
}

/// Credit changes with those to one payee, of one amount, from one approval time summed
/// (a payment re-decided twice in a round can take a credit back and give it again), in
/// time order; none that sum to nothing.
fn consolidate(mut changes: Vec<(Time, Credit)>) -> Vec<(Time, Credit)> {
    changes.sort_by(|(ta, a), (tb, b)| {
        (ta, &a.payee, a.amount_cents).cmp(&(tb, &b.payee, b.amount_cents))
    });
    let mut out: Vec<(Time, Credit)> = Vec::with_capacity(changes.len());
    for (t, c) in changes {
        match out.last_mut() {
            Some((u, last))
                if *u == t && last.payee == c.payee && last.amount_cents == c.amount_cents =>
            {
                last.diff += c.diff
            }
            _ => out.push((t, c)),
        }
    }
    out.retain(|(_, c)| c.diff != 0);
    out
}

/// Calls `give` once per run of equal times in `items` (sorted by time).
fn for_each_time<D>(
    items: Vec<(Time, D)>,
    mut give: impl FnMut(Time, &mut dyn Iterator<Item = D>),
) {
    let mut items = items.into_iter().peekable();
    while let Some(&(t, _)) = items.peek() {
        // The run is handed over as it is read: no second copy of each item.
        let mut run = std::iter::from_fn(|| items.next_if(|(u, _)| *u == t).map(|(_, d)| d));
        give(t, &mut run);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Ordering by the prefix, then by the whole id, is ordering by the whole id.
        #[test]
        fn id_prefix_order_agrees_with_byte_order(a in "[a\\x00-\\x02é]{0,10}", b in "[a\\x00-\\x02é]{0,10}") {
            let by_prefix = id_prefix(&a).cmp(&id_prefix(&b)).then_with(|| a.cmp(&b));
            proptest::prop_assert_eq!(by_prefix, a.as_bytes().cmp(b.as_bytes()));
        }
    }
}

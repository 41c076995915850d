//! `Dedup`: rule 3 (duplicates within the window) and payer = payee, at the id's owner.

use std::collections::VecDeque;

use timely::dataflow::operators::Capability;

// Per-worker maps keyed by ids: a fast hasher (their iteration order is never used).

use differential_dataflow::Hashable;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::StreamVec;

use crate::model::{Id, Params, SourcePos, Status, Time};
use crate::rules::{self, TimeVerdict};

use super::*;

/// Rules 1–2 (the time rules, with the rule set in force at each message's time), rule 3
/// (duplicates, each id remembered until the window in force when it was seen ends), at
/// the owner of the transaction id: what passes goes on to `Decide` (rules 4–8). The decisions of messages
/// that did not parse pass through here too, to be stamped with their rule set's version.
pub(super) fn dedup<'s>(
    pending: StreamVec<'s, Time, Pending>,
    invalid: StreamVec<'s, Time, Decision>,
    seen: StreamVec<'s, Time, (String, Time)>,
    rule_changes: StreamVec<'s, Time, RuleChange>,
    mut book: RuleBook,
    params: Params,
) -> (StreamVec<'s, Time, Pending>, StreamVec<'s, Time, Decision>) {
    let peers = pending.scope().peers().max(1);
    let mut builder = OperatorBuilder::new("Dedup".to_owned(), pending.scope());
    let mut input = builder.new_input(pending, Exchange::new(|p: &Pending| p.tx.id.hashed()));
    let mut seen_in = builder.new_input(seen, Exchange::new(|s: &(String, Time)| s.0.hashed()));
    let mut rules_in = builder.new_input(rule_changes, Pipeline);
    let mut invalid_in = builder.new_input(invalid, Pipeline);
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
        // Messages not yet checked (their time is not passed by the inputs), and
        // capabilities at the earliest time one of them entered at.
        let mut pend: Vec<Pending> = Vec::new();
        let mut caps: Option<[Capability<Time>; 2]> = None;
        // Decisions of messages that did not parse, waiting for the rules of their time.
        let mut unstamped: Vec<(Capability<Time>, Vec<Decision>)> = Vec::new();
        let mut seen_ids = SeenIds::with_capacity(params.dedup_capacity / peers);
        let mut seed: Vec<(String, Time)> = Vec::new();
        let mut order: Vec<(Time, SourcePos, u32)> = Vec::new();
        let mut ready: Vec<Pending> = Vec::new();
        move |frontiers| {
            rules_in.for_each(|_, data| {
                for c in data.drain(..) {
                    book.insert(c);
                }
            });
            // Resume state (time 0): ids seen before the restart, with when they were seen.
            seen_in.for_each(|_, data| seed.append(data));
            input.for_each(|cap, data| {
                if let Some(&at) = cap.least() {
                    if caps.as_ref().is_none_or(|c| *c[0].time() > at) {
                        caps = Some([cap.delayed(&at, 0), cap.delayed(&at, 1)]);
                    }
                    pend.append(data);
                }
            });
            invalid_in.for_each(|cap, data| {
                if let Some(&at) = cap.least() {
                    unstamped.push((cap.delayed(&at, 1), std::mem::take(data)));
                }
            });
            // The rule sets are known through this time.
            let rules_known = frontiers[2]
                .frontier()
                .iter()
                .min()
                .copied()
                .unwrap_or(Time::MAX);
            if !seed.is_empty() && frontiers[1].is_empty() && rules_known > 0 {
                seen_ids.seed(seed.drain(..).map(|(id, t)| {
                    let window = book.as_of(t).dedup_window_ms;
                    (id, t, window)
                }));
            }
            if !unstamped.is_empty() {
                let mut dup_h = dup_out.activate();
                unstamped.retain_mut(|(cap, decisions)| {
                    if decisions.iter().any(|d| d.t >= rules_known) {
                        return true;
                    }
                    for d in decisions.iter_mut() {
                        d.rules_version = Id::from(book.as_of(d.t).version.as_str());
                    }
                    dup_h.session(&*cap).give_container(decisions);
                    false
                });
            }
            // Every message before the inputs' frontier is here (a message enters at or
            // before its own time): those are checked, in ledger order for each id.
            let bound = frontiers[..3]
                .iter()
                .filter_map(|f| f.frontier().iter().min().copied())
                .min()
                .unwrap_or(Time::MAX);
            let Some(held) = caps.as_ref() else { return };
            order.clear();
            order.extend(
                pend.iter()
                    .enumerate()
                    .filter(|(_, p)| p.t < bound)
                    .map(|(i, p)| (p.t, p.pos, i as u32)),
            );
            if !order.is_empty() {
                // Only messages with the same id affect each other here, so (time, source
                // position) order is ledger order for every pair that matters.
                order.sort_unstable();
                ready.clear();
                ready.extend(
                    order
                        .iter()
                        .map(|&(_, _, i)| std::mem::take(&mut pend[i as usize])),
                );
                pend.retain(|p| p.t >= bound);
                let mut pass_h = pass_out.activate();
                let mut dup_h = dup_out.activate();
                let mut pass_s = pass_h.session(&held[0]);
                let mut dup_at: Option<(Capability<Time>, Vec<Decision>)> = None;
                for mut p in ready.drain(..) {
                    let t = p.t;
                    let rules = book.as_of(t);
                    let decided = match rules::time_rule(t, p.tx.event_ms, rules.max_delay_ms) {
                        Some(TimeVerdict::Future) => {
                            let reason = format!(
                                "event time is more than {} ms after arrival time",
                                rules.max_delay_ms
                            );
                            Decision::of(p, Status::Invalid, Some(reason))
                        }
                        Some(TimeVerdict::Late) => {
                            p.raw = None;
                            Decision::of(p, Status::Late, None)
                        }
                        None => {
                            p.raw = None;
                            seen_ids.forget_before(t);
                            let last_expiry = seen_ids.see(&p.tx.id, t, rules.dedup_window_ms);
                            if last_expiry.is_some_and(|expiry| t <= expiry) {
                                Decision::of(p, Status::Duplicate, None)
                            } else {
                                pass_s.give(p);
                                continue;
                            }
                        }
                    };
                    let decided = Decision {
                        rules_version: Id::from(rules.version.as_str()),
                        ..decided
                    };
                    // A decision leaves at the end of its time's cell.
                    let end = params.cell_end(t);
                    if dup_at.as_ref().is_none_or(|(c, _)| *c.time() != end) {
                        if let Some((c, items)) = dup_at.take() {
                            dup_h.session(&c).give_iterator(items.into_iter());
                        }
                        dup_at = Some((held[1].delayed(&end), Vec::new()));
                    }
                    dup_at.as_mut().expect("just made").1.push(decided);
                }
                if let Some((c, items)) = dup_at.take() {
                    dup_h.session(&c).give_iterator(items.into_iter());
                }
                let oldest = pend.iter().map(|p| p.t).min().unwrap_or(bound);
                book.forget_before(
                    oldest.min(bound).min(
                        unstamped
                            .iter()
                            .flat_map(|(_, d)| d.iter().map(|d| d.t))
                            .min()
                            .unwrap_or(Time::MAX),
                    ),
                );
            }
            match pend.iter().map(|p| p.t).min() {
                Some(t) => {
                    for c in caps.as_mut().expect("held").iter_mut() {
                        if *c.time() < t {
                            c.downgrade(&t);
                        }
                    }
                }
                None => caps = None,
            }
        }
    });
    (pass, dups)
}

/// The transaction ids seen within their duplicate window, with when that window ends
/// (the time last seen plus the window in force then, SPEC §11). An id is kept as its
/// 128-bit SipHash-1-3 fingerprint under a key drawn at random for each operator: 24
/// bytes per id whatever its length, no allocation, and two different ids are taken for
/// one with probability about 2^-128 per pair, which no choice of ids can raise without
/// the key. The expiry queues hold (expiry, fingerprint half) in expiry order, one queue
/// per window length (sightings come in time order, so each queue is sorted): an id leaves
/// the table when the entry it was last seen with expires.
pub(super) struct SeenIds {
    keys: (u64, u64),
    table: hashbrown::HashTable<([u64; 2], Time)>,
    expiry: Vec<(u64, VecDeque<(Time, u64)>)>,
}

impl Default for SeenIds {
    fn default() -> Self {
        SeenIds::with_capacity(0)
    }
}

impl SeenIds {
    pub(super) fn with_capacity(ids: usize) -> Self {
        use std::hash::BuildHasher;
        let random = std::collections::hash_map::RandomState::new();
        SeenIds {
            keys: (random.hash_one(0u8), random.hash_one(1u8)),
            table: hashbrown::HashTable::with_capacity(ids),
            expiry: vec![(0, VecDeque::with_capacity(ids))],
        }
    }

    pub(super) fn fingerprint(&self, id: &str) -> [u64; 2] {
        use siphasher::sip128::Hasher128;
        use std::hash::Hasher;
        let mut hasher = siphasher::sip128::SipHasher13::new_with_keys(self.keys.0, self.keys.1);
        hasher.write(id.as_bytes());
        let h = hasher.finish128();
        [h.h1, h.h2]
    }

    fn queue(&mut self, window: u64) -> &mut VecDeque<(Time, u64)> {
        // The queue of the window most recently used is first: one comparison, usually.
        if self.expiry[0].0 != window {
            match self.expiry.iter().position(|(w, _)| *w == window) {
                Some(i) => self.expiry.swap(0, i),
                None => {
                    let empty = self.expiry.iter().position(|(_, q)| q.is_empty());
                    match empty {
                        Some(i) => {
                            self.expiry[i].0 = window;
                            self.expiry.swap(0, i);
                        }
                        None => {
                            self.expiry.push((window, VecDeque::new()));
                            let last = self.expiry.len() - 1;
                            self.expiry.swap(0, last);
                        }
                    }
                }
            }
        }
        &mut self.expiry[0].1
    }

    /// Records `id` as seen at `t` (non-decreasing across calls) under a window of
    /// `window` ms; returns when the window of its previous sighting ended.
    pub(super) fn see(&mut self, id: &str, t: Time, window: u64) -> Option<Time> {
        let fp = self.fingerprint(id);
        let expiry = t.saturating_add(window);
        // The fingerprint is already uniformly distributed: its first half is the hash.
        let prev = match self.table.entry(fp[0], |(k, _)| *k == fp, |(k, _)| k[0]) {
            hashbrown::hash_table::Entry::Occupied(mut e) => {
                let prev = e.get().1;
                if prev == expiry {
                    return Some(prev);
                }
                e.get_mut().1 = expiry;
                Some(prev)
            }
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert((fp, expiry));
                None
            }
        };
        self.queue(window).push_back((expiry, fp[0]));
        prev
    }

    /// Resume state: ids last seen, at the given times under the given windows, before
    /// the restart (any order).
    pub(super) fn seed(&mut self, seen: impl IntoIterator<Item = (String, Time, u64)>) {
        let mut seen: Vec<(String, Time, u64)> = seen.into_iter().collect();
        seen.sort_unstable_by_key(|(_, t, _)| *t);
        for (id, t, window) in seen {
            self.see(&id, t, window);
        }
    }

    /// Forgets the ids whose window ended before `t`.
    pub(super) fn forget_before(&mut self, t: Time) {
        for (_, queue) in self.expiry.iter_mut() {
            while let Some(&(expiry, hash)) = queue.front() {
                if expiry >= t {
                    break;
                }
                queue.pop_front();
                // An id seen again later has another expiry in its entry and stays.
                if let Ok(e) = self
                    .table
                    .find_entry(hash, |(k, end)| k[0] == hash && *end == expiry)
                {
                    e.remove();
                }
            }
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.table.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn seen_ids_forget_only_what_left_the_window() {
        let mut seen = SeenIds::default();
        assert_eq!(seen.see("a", 10, 15), None);
        assert_eq!(seen.see("b", 10, 15), None);
        assert_eq!(seen.see("a", 10, 15), Some(25));
        assert_eq!(seen.see("a", 20, 15), Some(25));
        seen.forget_before(30);
        // "b" was last seen at 10 (window ended at 25): gone; "a" at 20 (35): kept.
        assert_eq!(seen.len(), 1);
        assert_eq!(seen.see("b", 30, 15), None);
        assert_eq!(seen.see("a", 30, 15), Some(35));
        seen.seed([("c".to_owned(), 5, 100), ("a".to_owned(), 25, 10)]);
        assert_eq!(seen.see("c", 31, 10), Some(105));
        // A shorter window later: the last sighting's window is the one that counts.
        assert_eq!(seen.see("d", 40, 1_000), None);
        assert_eq!(seen.see("d", 41, 1), Some(1_040));
        seen.forget_before(43);
        assert_eq!(seen.see("d", 43, 1), None);
        seen.forget_before(10_000);
        assert_eq!(seen.len(), 0);
    }
}

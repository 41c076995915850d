//! `Dedup`: rule 3 (duplicates within the window) and payer = payee, at the id's owner.

use std::collections::VecDeque;

use timely::dataflow::operators::Capability;

// Per-worker maps keyed by ids: a fast hasher (their iteration order is never used).

use differential_dataflow::Hashable;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::StreamVec;

use crate::model::{Params, SourcePos, Status, Time};
use crate::rules;

use super::*;

/// Rule 3 (duplicates, memory bounded by `dedup_window`), then payer = payee (rule 4),
/// at the owner of the transaction id.
pub(super) fn dedup<'s>(
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
        // Messages not yet checked (their time is not passed by the inputs), and
        // capabilities at the earliest time one of them entered at.
        let mut pend: Vec<Pending> = Vec::new();
        let mut caps: Option<[Capability<Time>; 2]> = None;
        let mut seen_ids = SeenIds::with_capacity(params.dedup_capacity / peers);
        let mut order: Vec<(Time, SourcePos, u32)> = Vec::new();
        let mut ready: Vec<Pending> = Vec::new();
        move |frontiers| {
            // Resume state (time 0): ids seen before the restart, with when they were seen.
            seen_in.for_each(|_, data| seen_ids.seed(data.drain(..)));
            input.for_each(|cap, data| {
                if let Some(&at) = cap.least() {
                    if caps.as_ref().is_none_or(|c| *c[0].time() > at) {
                        caps = Some([cap.delayed(&at, 0), cap.delayed(&at, 1)]);
                    }
                    pend.append(data);
                }
            });
            // Every message before the inputs' frontier is here (a message enters at or
            // before its own time): those are checked, in ledger order for each id.
            let bound = frontiers
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
                for p in ready.drain(..) {
                    let t = p.t;
                    seen_ids.forget_before(t, params.dedup_window_ms);
                    let prev = seen_ids.see(&p.tx.id, t);
                    let decided = if rules::is_duplicate(t, prev, &params) {
                        Decision::of(p, Status::Duplicate, None)
                    } else if p.tx.payer == p.tx.payee {
                        Decision::of(
                            p,
                            Status::UnknownReference,
                            Some("payer and payee are the same user".to_owned()),
                        )
                    } else {
                        pass_s.give(p);
                        continue;
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

/// The transaction ids seen within the duplicate window, with the arrival time each was
/// last seen. An id is kept as its 128-bit SipHash-1-3 fingerprint under a key drawn at
/// random for each operator: 24 bytes per id whatever its length, no allocation, and two
/// different ids are taken for one with probability about 2^-128 per pair, which no
/// choice of ids can raise without the key. The expiry queue holds (time, fingerprint
/// half) in time order: an id leaves the table when the entry it was last seen with
/// leaves the window.
pub(super) struct SeenIds {
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
    pub(super) fn with_capacity(ids: usize) -> Self {
        use std::hash::BuildHasher;
        let random = std::collections::hash_map::RandomState::new();
        SeenIds {
            keys: (random.hash_one(0u8), random.hash_one(1u8)),
            table: hashbrown::HashTable::with_capacity(ids),
            expiry: VecDeque::with_capacity(ids),
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

    /// Records `id` as seen at `t` (non-decreasing across calls); returns when it was
    /// last seen before.
    pub(super) fn see(&mut self, id: &str, t: Time) -> Option<Time> {
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
    pub(super) fn seed(&mut self, seen: impl IntoIterator<Item = (String, Time)>) {
        for (id, t) in seen {
            self.see(&id, t);
        }
        self.expiry.make_contiguous().sort_unstable();
    }

    /// Forgets the ids last seen more than `window` before `t`.
    pub(super) fn forget_before(&mut self, t: Time, window: u64) {
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
}

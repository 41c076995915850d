//! What the ledger-order operators share: a per-timestamp stash with a capability for each
//! output, moving items out in a given order, and the readiness test on input frontiers.

use std::collections::BTreeMap;

// Per-worker maps keyed by ids: a fast hasher (their iteration order is never used).

use timely::dataflow::operators::Capability;
use timely::progress::frontier::MutableAntichain;

use crate::model::Time;

/// Messages stashed at one timestamp, with a capability for each output.
pub(super) struct Stash<D, const N: usize> {
    pub(super) caps: [Capability<Time>; N],
    pub(super) items: Vec<D>,
}

/// Moves `data` into the stash entry of its timestamp, taking a capability for every
/// output the first time that timestamp is seen.
pub(super) fn stash_at<D, const N: usize>(
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
pub(super) fn take_in_order<'a, T: Default, K>(
    items: &'a mut [T],
    order: &'a [(K, u32)],
) -> impl Iterator<Item = T> + 'a {
    order
        .iter()
        .map(|(_, i)| std::mem::take(&mut items[*i as usize]))
}

pub(super) fn ready(frontiers: &[MutableAntichain<Time>], t: &Time) -> bool {
    frontiers.iter().all(|f| !f.less_equal(t))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}

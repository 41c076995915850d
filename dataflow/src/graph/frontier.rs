//! The readiness test on input frontiers, shared by the operators.

use timely::progress::frontier::MutableAntichain;

use crate::model::Time;

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

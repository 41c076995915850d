//! Turns a capture (SPEC §9) into the graph's messages: drops re-deliveries of a source
//! position (decided once, from the first occurrence), clamps each partition's record
//! timestamps to be non-decreasing in file order (SPEC §4), and splits the result among
//! workers by partition.

use std::collections::{HashMap, HashSet};

use vtpga_dataflow::graph::{Body, Incoming};
use vtpga_dataflow::{SourcePos, Time};

use crate::capture::CaptureRecord;

/// The ledger inputs of a capture, in file order, with arrival times clamped.
#[derive(Default)]
pub struct Prepared {
    pub messages: Vec<Incoming>,
    /// Records skipped because their source position had been seen before.
    pub redelivered: u64,
}

pub fn prepare(records: impl IntoIterator<Item = CaptureRecord>) -> Prepared {
    let mut seen: HashSet<SourcePos> = HashSet::new();
    let mut clock: HashMap<i32, Time> = HashMap::new();
    let mut out = Prepared::default();
    for r in records {
        let pos = r.source_pos();
        if !seen.insert(pos) {
            out.redelivered += 1;
            continue;
        }
        let t = clock.entry(pos.partition).or_insert(0);
        *t = (*t).max(r.t);
        out.messages.push(Incoming {
            pos,
            t: *t,
            ingest_us: 0,
            body: Body::Raw(r.payload.into_bytes()),
        });
    }
    out
}

/// The worker that owns a partition: the same for every process of the cluster.
pub fn owner(partition: i32, peers: usize) -> usize {
    partition.rem_euclid(peers as i32) as usize
}

/// The messages of the partitions worker `index` of `peers` owns, sorted by arrival time
/// (stable, so each partition keeps its offset order).
pub fn for_worker(messages: &[Incoming], index: usize, peers: usize) -> Vec<Incoming> {
    let mut mine: Vec<Incoming> = messages
        .iter()
        .filter(|m| owner(m.pos.partition, peers) == index)
        .cloned()
        .collect();
    mine.sort_by_key(|m| m.t);
    mine
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(t: u64, partition: i32, offset: i64) -> CaptureRecord {
        CaptureRecord {
            t,
            partition,
            offset,
            payload: format!("{t}"),
        }
    }

    #[test]
    fn clamps_per_partition_and_drops_redeliveries() {
        let p = prepare([
            rec(100, 0, 0),
            rec(90, 0, 1),
            rec(50, 1, 0),
            rec(500, 0, 0),
            rec(95, 0, 2),
        ]);
        let got: Vec<(i32, i64, u64)> = p
            .messages
            .iter()
            .map(|m| (m.pos.partition, m.pos.offset, m.t))
            .collect();
        assert_eq!(got, vec![(0, 0, 100), (0, 1, 100), (1, 0, 50), (0, 2, 100)]);
        assert_eq!(p.redelivered, 1);
    }

    #[test]
    fn workers_split_by_partition_and_sort_by_time() {
        let p = prepare([rec(30, 0, 0), rec(10, 1, 0), rec(20, 2, 0), rec(5, 3, 0)]);
        let w0: Vec<i32> = for_worker(&p.messages, 0, 2)
            .iter()
            .map(|m| m.pos.partition)
            .collect();
        let w1: Vec<i32> = for_worker(&p.messages, 1, 2)
            .iter()
            .map(|m| m.pos.partition)
            .collect();
        assert_eq!(w0, vec![2, 0]);
        assert_eq!(w1, vec![3, 1]);
        assert_eq!(owner(-3, 2), 1);
    }
}

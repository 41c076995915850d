//! Turns a capture (SPEC §9) into the graph's messages: drops re-deliveries of a source
//! position (decided once, from its first line), clamps each partition's record
//! timestamps to be non-decreasing in offset order whatever the order of the lines
//! (SPEC §4), and splits the result among workers by partition.

use vtpga_dataflow::graph::{Body, Incoming};
use vtpga_dataflow::{SourcePos, Time};

use crate::capture::CaptureRecord;

/// The ledger inputs of a capture, each partition in offset order, with arrival times
/// clamped.
#[derive(Default)]
pub struct Prepared {
    /// The messages, by partition then offset, each with its clamped arrival time `t`.
    pub messages: Vec<Incoming>,
    /// Records skipped because their source position had been seen before.
    pub redelivered: u64,
}

/// Sorts the records by source position, keeps the first line of each position and
/// clamps each partition's record timestamps to be non-decreasing in offset order.
pub fn prepare(records: impl IntoIterator<Item = CaptureRecord>) -> Prepared {
    // Per partition, by offset: the first line of each position (a stable sort keeps the
    // lines of one position in file order).
    // Source positions, and the clamping of arrival times, are per topic. The lines go
    // to one list per (topic, partition), in file order, and each list is sorted by
    // offset: a capture's partitions are interleaved but each is usually in offset order
    // already, which the stable sort only checks.
    let mut lists: std::collections::BTreeMap<(bool, i32), Vec<CaptureRecord>> = Default::default();
    let mut total = 0;
    for r in records {
        total += 1;
        lists.entry((r.control, r.partition)).or_default().push(r);
    }
    let mut out = Prepared::default();
    out.messages.reserve(total);
    let mut last: Option<(bool, i32, i64)> = None;
    let mut t: Time = 0;
    let records = lists.into_values().flat_map(|mut list| {
        list.sort_by_key(|r| r.offset);
        list
    });
    for r in records {
        if last == Some((r.control, r.partition, r.offset)) {
            out.redelivered += 1;
            continue;
        }
        if last.map(|(c, p, _)| (c, p)) != Some((r.control, r.partition)) {
            t = 0;
        }
        last = Some((r.control, r.partition, r.offset));
        t = t.max(r.t);
        let raw = r.payload.into_bytes();
        let body = match (r.refused, r.control) {
            (Some(error), false) => Body::Refused { raw, error },
            (None, false) => Body::Raw(raw),
            (Some(error), true) => Body::ControlRefused { raw, error },
            (None, true) => Body::Control(raw),
        };
        out.messages.push(Incoming {
            pos: SourcePos {
                partition: r.partition,
                offset: r.offset,
            },
            t,
            ingest_us: 0,
            body,
        });
    }
    out
}

/// The messages of every worker of the processes' workers `mine` (global indexes) of
/// `peers`, taken out of `messages` (no copies), each sorted by arrival time as
/// [`for_worker`] sorts them; the others' are dropped.
pub fn split_for_workers(
    messages: Vec<Incoming>,
    mine: std::ops::Range<usize>,
    peers: usize,
) -> Vec<Vec<Incoming>> {
    let mut shares: Vec<Vec<Incoming>> = mine.clone().map(|_| Vec::new()).collect();
    for m in messages {
        let w = owner(m.pos.partition, peers);
        if mine.contains(&w) {
            shares[w - mine.start].push(m);
        }
    }
    for share in shares.iter_mut() {
        share.sort_by_key(|m| m.t);
    }
    shares
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
            refused: None,
            control: false,
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
        assert_eq!(got, vec![(0, 0, 100), (0, 1, 100), (0, 2, 100), (1, 0, 50)]);
        assert_eq!(p.redelivered, 1);
    }

    /// SPEC §4/§9: the clamp follows offset order, not the order of the file's lines.
    #[test]
    fn clamps_in_offset_order_whatever_the_line_order() {
        let p = prepare([rec(90, 0, 1), rec(100, 0, 0), rec(95, 0, 2), rec(80, 0, 1)]);
        let got: Vec<(i64, u64)> = p.messages.iter().map(|m| (m.pos.offset, m.t)).collect();
        assert_eq!(got, vec![(0, 100), (1, 100), (2, 100)]);
        assert_eq!(p.redelivered, 1);
        let p = prepare([rec(95, 0, 2), rec(90, 0, 1), rec(10, 0, 0)]);
        let got: Vec<(i64, u64)> = p.messages.iter().map(|m| (m.pos.offset, m.t)).collect();
        assert_eq!(got, vec![(0, 10), (1, 90), (2, 95)]);
    }

    /// SPEC §9: a null or non-UTF-8 payload is a record decided `invalid`, not an error.
    #[test]
    fn refused_records_keep_their_reason() {
        let mut r = rec(5, 0, 0);
        r.refused = Some(crate::capture::NO_VALUE.to_owned());
        let p = prepare([r]);
        assert!(matches!(
            &p.messages[0].body,
            Body::Refused { error, .. } if error == crate::capture::NO_VALUE
        ));
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

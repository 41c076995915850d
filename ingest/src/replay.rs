//! Turns a capture (SPEC §9) into the graph's messages: drops re-deliveries of a source
//! position (decided once, from its first line), clamps each partition's record
//! timestamps to be non-decreasing in offset order whatever the order of the lines
//! (SPEC §4), and splits the result among workers by partition.

use vtpga_dataflow::graph::{Body, Incoming};
use vtpga_dataflow::{SourcePos, Time};

use crate::capture::{decode_payload, CaptureRecord, LineRef};
use crate::source::{Feed, Polled};

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
    let (ordered, redelivered) = order(records, |r| (r.control, r.partition, r.offset, r.t));
    Prepared {
        messages: ordered.into_iter().map(|(r, t)| incoming(r, t)).collect(),
        redelivered,
    }
}

/// [`prepare`] for lines not read yet: each with its clamped arrival time, and the number
/// of re-deliveries dropped.
pub fn prepare_lines(lines: Vec<LineRef>) -> (Vec<(LineRef, Time)>, u64) {
    order(lines, |l| (l.control, l.partition, l.offset, l.t))
}

/// The message a capture record is, at its clamped time `t`.
fn incoming(r: CaptureRecord, t: Time) -> Incoming {
    let raw = r.payload.into_bytes();
    let body = match (r.refused, r.control) {
        (Some(error), false) => Body::Refused { raw, error },
        (None, false) => Body::Raw(raw),
        (Some(error), true) => Body::ControlRefused { raw, error },
        (None, true) => Body::Control(raw),
    };
    Incoming {
        pos: SourcePos {
            partition: r.partition,
            offset: r.offset,
        },
        t,
        ingest_us: 0,
        body,
    }
}

/// Per topic and partition, by offset, the first line of each position with its arrival
/// time clamped to be non-decreasing in offset order; and the number of re-deliveries
/// dropped. `key`: (control topic, partition, offset, record timestamp).
fn order<R>(
    records: impl IntoIterator<Item = R>,
    key: impl Fn(&R) -> (bool, i32, i64, u64),
) -> (Vec<(R, Time)>, u64) {
    // Source positions, and the clamping of arrival times, are per topic. The lines go
    // to one list per (topic, partition), in file order, and each list is sorted by
    // offset (stable: the lines of one position stay in file order, the first one first).
    // A capture's partitions are interleaved but each is usually in offset order already,
    // which the stable sort only checks.
    let mut lists: std::collections::BTreeMap<(bool, i32), Vec<R>> = Default::default();
    let mut total = 0;
    for r in records {
        total += 1;
        let (control, partition, _, _) = key(&r);
        lists.entry((control, partition)).or_default().push(r);
    }
    let mut out = Vec::with_capacity(total);
    let mut redelivered = 0;
    for mut list in lists.into_values() {
        list.sort_by_key(|r| key(r).2);
        let (mut last, mut t): (Option<i64>, Time) = (None, 0);
        for r in list {
            let (_, _, offset, record_t) = key(&r);
            if last == Some(offset) {
                redelivered += 1;
                continue;
            }
            last = Some(offset);
            t = t.max(record_t);
            out.push((r, t));
        }
    }
    (out, redelivered)
}

/// The messages of every worker of the processes' workers `mine` (global indexes) of
/// `peers`, taken out of `messages` (no copies), each sorted by arrival time as
/// [`for_worker`] sorts them; the others' are dropped.
pub fn split_for_workers(
    messages: Vec<Incoming>,
    mine: std::ops::Range<usize>,
    peers: usize,
) -> Vec<Vec<Incoming>> {
    split(messages, mine, peers, |m| (m.pos.partition, m.t))
}

/// [`split_for_workers`] for lines not read yet.
pub fn split_lines_for_workers(
    lines: Vec<(LineRef, Time)>,
    mine: std::ops::Range<usize>,
    peers: usize,
) -> Vec<Vec<(LineRef, Time)>> {
    split(lines, mine, peers, |(l, t)| (l.partition, *t))
}

fn split<T>(
    items: Vec<T>,
    mine: std::ops::Range<usize>,
    peers: usize,
    key: impl Fn(&T) -> (i32, Time),
) -> Vec<Vec<T>> {
    let mut shares: Vec<Vec<T>> = mine.clone().map(|_| Vec::new()).collect();
    for m in items {
        let w = owner(key(&m).0, peers);
        if mine.contains(&w) {
            shares[w - mine.start].push(m);
        }
    }
    for share in shares.iter_mut() {
        share.sort_by_key(|m| key(m).1);
    }
    shares
}

/// Lines of a capture file farther apart than this are read apart.
const READ_GAP: u64 = 1 << 16;

/// A worker's share of a capture file, read as the source takes it: each poll reads the
/// lines it gives (those close together in the file in one read), decodes them and hands
/// them over, so a replay holds only the messages in flight, in memory that the messages
/// already decided freed.
pub struct CaptureFeed {
    file: std::fs::File,
    path: std::path::PathBuf,
    lines: std::vec::IntoIter<(LineRef, Time)>,
    batch: Vec<(LineRef, Time)>,
    /// Where each line of the batch is in `buf`.
    at: Vec<usize>,
    buf: Vec<u8>,
}

impl CaptureFeed {
    /// `lines` (sorted by `t`) of the capture open as `file`, named `path` in errors.
    pub fn new(file: std::fs::File, path: std::path::PathBuf, lines: Vec<(LineRef, Time)>) -> Self {
        debug_assert!(lines.windows(2).all(|w| w[0].1 <= w[1].1));
        CaptureFeed {
            file,
            path,
            lines: lines.into_iter(),
            batch: Vec::new(),
            at: Vec::new(),
            buf: Vec::new(),
        }
    }

    /// Reads the batch's payloads into `buf`, runs of nearby lines in one read each.
    fn read_batch(&mut self) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let mut by_start: Vec<usize> = (0..self.batch.len()).collect();
        by_start.sort_unstable_by_key(|&i| self.batch[i].0.start);
        // Runs: (first byte, end byte, first index in by_start).
        let mut runs: Vec<(u64, u64, usize)> = Vec::new();
        for (k, &i) in by_start.iter().enumerate() {
            let l = &self.batch[i].0;
            let end = l.start + u64::from(l.len);
            match runs.last_mut() {
                Some(run) if l.start <= run.1 + READ_GAP => run.1 = run.1.max(end),
                _ => runs.push((l.start, end, k)),
            }
        }
        let total: u64 = runs.iter().map(|r| r.1 - r.0).sum();
        self.buf.resize(total as usize, 0);
        self.at.clear();
        self.at.resize(self.batch.len(), 0);
        let mut into = 0usize;
        for (n, &(first, end, k)) in runs.iter().enumerate() {
            let size = (end - first) as usize;
            self.file
                .read_exact_at(&mut self.buf[into..into + size], first)?;
            let next_k = runs.get(n + 1).map_or(by_start.len(), |r| r.2);
            for &i in &by_start[k..next_k] {
                self.at[i] = into + (self.batch[i].0.start - first) as usize;
            }
            into += size;
        }
        Ok(())
    }
}

impl Feed for CaptureFeed {
    fn poll(&mut self, out: &mut Vec<Incoming>, max: usize) -> Polled {
        self.batch.clear();
        self.batch.extend(self.lines.by_ref().take(max));
        let read = self.read_batch();
        let (mut unreadable, mut first_error) = (0usize, String::new());
        for (i, &(line, t)) in self.batch.iter().enumerate() {
            // The line was checked when the file was indexed: only its payload is read
            // again, and decoded.
            let record = match &read {
                Ok(()) => {
                    let bytes = &self.buf[self.at[i]..self.at[i] + line.len as usize];
                    match std::str::from_utf8(bytes) {
                        Ok(raw) if raw == "null" || raw.starts_with('"') && raw.ends_with('"') => {
                            let (payload, refused) = decode_payload(raw);
                            Ok(CaptureRecord {
                                t: line.t,
                                partition: line.partition,
                                offset: line.offset,
                                payload,
                                refused,
                                control: line.control,
                            })
                        }
                        _ => Err("not the payload it was".to_owned()),
                    }
                }
                Err(e) => Err(e.to_string()),
            };
            let record = record.unwrap_or_else(|e| {
                // The line was checked when the file was indexed: the file changed since.
                // Its position is decided `invalid` with the reason (logged once a poll).
                if unreadable == 0 {
                    first_error =
                        format!("partition {} offset {}: {e}", line.partition, line.offset);
                }
                unreadable += 1;
                CaptureRecord {
                    t: line.t,
                    partition: line.partition,
                    offset: line.offset,
                    payload: String::new(),
                    refused: Some(format!("the capture line changed during the replay: {e}")),
                    control: line.control,
                }
            });
            out.push(incoming(record, t));
        }
        if unreadable > 0 {
            log::error!(
                "{}: {unreadable} line(s) cannot be read again, the file changed during the replay (first: {first_error}); decided invalid",
                self.path.display()
            );
        }
        match self.lines.as_slice().first() {
            Some(&(_, frontier)) => Polled::Open {
                frontier,
                idle: false,
            },
            None => Polled::Done,
        }
    }
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

    /// The lines of a capture read by each worker's [`CaptureFeed`], in polls of any size,
    /// are the messages [`prepare`] and [`split_for_workers`] make of the whole file:
    /// lines out of offset order, re-deliveries, refused payloads, control lines, blank
    /// lines and a long stretch of the file between two lines of one poll among them.
    #[test]
    fn a_capture_read_line_by_line_equals_the_capture_read_whole() {
        let dir = crate::testutil::tmpdir("replay", "feed");
        let path = dir.join("capture.jsonl");
        let mut text = String::new();
        for i in 0..400i64 {
            let (partition, offset) = (i % 5, i / 5);
            // Offsets 10..20 of partition 0 come again at the end, and 30 before 29.
            let offset = match (partition, offset) {
                (0, 29) => 30,
                (0, 30) => 29,
                _ => offset,
            };
            let payload = if i % 13 == 0 {
                "null".to_owned()
            } else {
                format!("\"m{i}\\n\"")
            };
            let topic = if i % 9 == 0 {
                r#","topic":"transacoes-controle""#
            } else {
                ""
            };
            let t = 1000 + (i * 7919) % 50;
            text.push_str(&format!(
                "{{\"t\":{t},\"partition\":{partition},\"offset\":{offset}{topic},\"payload\":{payload}}}\n"
            ));
            if i == 200 {
                text.push_str(&format!("{}\n\r\n", " ".repeat(200_000)));
            }
        }
        for offset in 10..20 {
            text.push_str(&format!(
                "{{\"t\":1,\"partition\":0,\"offset\":{offset},\"payload\":\"again\"}}\r\n"
            ));
        }
        std::fs::write(&path, &text).unwrap();
        let whole = prepare(crate::capture::read_capture(&path).unwrap());
        assert!(whole.redelivered >= 9, "{}", whole.redelivered);
        let (lines, redelivered) =
            prepare_lines(crate::capture::index_capture_parallel(&path, 3).unwrap());
        assert_eq!(redelivered, whole.redelivered);
        for peers in [1, 2, 3] {
            let want = split_for_workers(whole.messages.clone(), 0..peers, peers);
            let shares = split_lines_for_workers(lines.clone(), 0..peers, peers);
            for (share, want) in shares.into_iter().zip(want) {
                for max in [1, 7, 1000] {
                    let file = std::fs::File::open(&path).unwrap();
                    let mut feed = CaptureFeed::new(file, path.clone(), share.clone());
                    let mut got = Vec::new();
                    while let Polled::Open { .. } = feed.poll(&mut got, max) {}
                    let key = |m: &Incoming| format!("{:?} {} {:?}", m.pos, m.t, m.body);
                    let got: Vec<String> = got.iter().map(key).collect();
                    let want: Vec<String> = want.iter().map(key).collect();
                    assert_eq!(got, want, "{peers} workers, polls of {max}");
                }
            }
        }
    }

    /// A capture that changes after it was indexed (cut short, or rewritten) does not stop
    /// the replay: the lines that cannot be read again are decided `invalid`, with the
    /// reason, and the others as they are.
    #[test]
    fn a_capture_changed_during_the_replay_gives_invalid_messages() {
        let dir = crate::testutil::tmpdir("replay", "changed");
        let path = dir.join("capture.jsonl");
        let line = |offset: i64, payload: &str| {
            format!("{{\"t\":{offset},\"partition\":0,\"offset\":{offset},\"payload\":\"{payload}\"}}\n")
        };
        let text: String = (0..10).map(|o| line(o, "abc")).collect();
        std::fs::write(&path, &text).unwrap();
        let (lines, _) = prepare_lines(crate::capture::index_capture_parallel(&path, 2).unwrap());
        // Rewritten with other payloads (first half), then cut short.
        let changed: String = (0..10).map(|o| line(o, "x")).collect();
        std::fs::write(&path, &changed[..changed.len() / 2]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let mut feed = CaptureFeed::new(file, path.clone(), lines);
        let mut got = Vec::new();
        while let Polled::Open { .. } = feed.poll(&mut got, 3) {}
        assert_eq!(got.len(), 10, "every position is decided");
        let refused = got
            .iter()
            .filter(|m| {
                matches!(&m.body, Body::Refused { error, .. } if error.contains("changed during the replay"))
            })
            .count();
        assert!(refused >= 5, "{refused} refused: {got:?}");
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

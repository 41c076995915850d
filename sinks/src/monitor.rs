//! The live view of a running pipeline: counts by status, throughput, decision latency
//! (from the source taking a message in to its batch being committed, or leaving the
//! graph without a durable record) and the accounting of source offsets. `vtpga run`
//! prints it once a second.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;

use vtpga_dataflow::Status;

use crate::Batch;

pub use vtpga_dataflow::now_us;

/// SPEC §10 "every offset is accounted for": per source partition, every offset from the
/// first one decided (or the resume point) up to the latest decided is a decision. A gap
/// is an offset that is neither decided nor a dropped re-delivery (those lie below what
/// was decided, so they never show here): the broker skipped it, or it was lost.
///
/// Batches gathered to worker 0 arrive in offset order per partition; per-worker batches
/// do not (a partition's messages are decided on their payers' workers, whose batches
/// interleave). So an offset missing above the contiguous prefix is first only awaited,
/// and counted as unaccounted once it has been missing for [`SETTLE`] (or at the end).
#[derive(Debug, Default)]
pub struct Accounting {
    partitions: BTreeMap<i32, PartitionAccount>,
    /// Offsets found missing (gaps that did not fill), over all partitions.
    pub unaccounted: u64,
    /// Positions seen decided more than once (never expected).
    pub repeated: u64,
}

/// How long an offset may be missing above decided ones before it counts as lost.
pub const SETTLE: std::time::Duration = std::time::Duration::from_secs(5);

/// A partition's decided offsets as disjoint ranges `start → end` (end exclusive); more
/// than one range means a gap is awaited between them.
#[derive(Debug, Default)]
struct PartitionAccount {
    ranges: BTreeMap<i64, i64>,
    /// Resumed at a stored offset: nothing below it is decided again.
    floor: Option<i64>,
    /// Since when a gap has been awaited.
    gap_since: Option<std::time::Instant>,
}

impl PartitionAccount {
    /// Adds offset `o`; false if it was decided already.
    fn add(&mut self, o: i64) -> bool {
        if self.floor.is_some_and(|f| o < f) {
            return false;
        }
        let before = self.ranges.range(..=o).next_back().map(|(s, e)| (*s, *e));
        if let Some((_, end)) = before {
            if o < end {
                return false;
            }
        }
        let mut start = o;
        let mut end = o + 1;
        if let Some((s, e)) = before {
            if e == o {
                start = s;
                self.ranges.remove(&s);
            }
        }
        if let Some(e) = self.ranges.remove(&end) {
            end = e;
        }
        self.ranges.insert(start, end);
        true
    }

    /// Declares every awaited gap lost: returns how many offsets they held.
    fn give_up_gaps(&mut self) -> u64 {
        let (Some((&first, _)), Some((_, &last))) =
            (self.ranges.iter().next(), self.ranges.iter().next_back())
        else {
            return 0;
        };
        let held: i64 = self.ranges.iter().map(|(s, e)| e - s).sum();
        self.ranges.clear();
        self.ranges.insert(first, last);
        self.gap_since = None;
        (last - first - held) as u64
    }

    /// The offset after the contiguous prefix accounted for.
    fn next(&self) -> i64 {
        self.ranges
            .iter()
            .next()
            .map(|(_, e)| *e)
            .or(self.floor)
            .unwrap_or(0)
    }
}

impl Accounting {
    /// Partitions resume at their stored offsets: the accounting starts there too.
    pub fn start_at(&mut self, partition: i32, next_offset: i64) {
        let mut part = PartitionAccount {
            floor: Some(next_offset),
            ..PartitionAccount::default()
        };
        part.ranges.insert(next_offset, next_offset);
        self.partitions.insert(partition, part);
    }

    /// Accounts for a batch's decisions, seen at `now`.
    pub fn observe(
        &mut self,
        decisions: &[vtpga_dataflow::graph::Decision],
        now: std::time::Instant,
    ) {
        for d in decisions {
            let part = self.partitions.entry(d.pos.partition).or_default();
            if !part.add(d.pos.offset) {
                self.repeated += 1;
            }
        }
        self.settle(now);
    }

    /// Counts gaps awaited for longer than [`SETTLE`] as unaccounted.
    pub fn settle(&mut self, now: std::time::Instant) {
        for part in self.partitions.values_mut() {
            match (part.ranges.len() > 1, part.gap_since) {
                (false, _) => part.gap_since = None,
                (true, None) => part.gap_since = Some(now),
                (true, Some(since)) if now.duration_since(since) >= SETTLE => {
                    self.unaccounted += part.give_up_gaps();
                }
                (true, Some(_)) => {}
            }
        }
    }

    /// Every output has arrived: whatever is still missing is lost.
    pub fn finish(&mut self) {
        for part in self.partitions.values_mut() {
            self.unaccounted += part.give_up_gaps();
        }
    }

    /// Whether every offset so far is accounted for.
    pub fn ok(&self) -> bool {
        self.unaccounted == 0 && self.repeated == 0
    }

    /// Per partition, the offset after the contiguous prefix accounted for.
    pub fn partitions(&self) -> impl Iterator<Item = (i32, i64)> + '_ {
        self.partitions.iter().map(|(p, a)| (*p, a.next()))
    }

    /// For the status line.
    pub fn line(&self) -> String {
        if self.ok() {
            format!(
                " | offsets accounted ({} partition(s))",
                self.partitions.len()
            )
        } else {
            format!(
                " | OFFSETS UNACCOUNTED {} repeated {}",
                self.unaccounted, self.repeated
            )
        }
    }

    /// Prometheus lines.
    pub fn metrics(&self) -> String {
        let mut out = format!(
            "# HELP vtpga_offsets_unaccounted_total Source offsets neither decided nor dropped as re-deliveries (SPEC §10; 0 when all is well).\n# TYPE vtpga_offsets_unaccounted_total counter\nvtpga_offsets_unaccounted_total {}\n# HELP vtpga_positions_repeated_total Source positions decided twice (0 when all is well).\n# TYPE vtpga_positions_repeated_total counter\nvtpga_positions_repeated_total {}\n# HELP vtpga_partition_accounted_offset The offset after the last one accounted for, per source partition.\n# TYPE vtpga_partition_accounted_offset gauge\n",
            self.unaccounted, self.repeated
        );
        for (p, o) in self.partitions() {
            out.push_str(&format!(
                "vtpga_partition_accounted_offset{{partition=\"{p}\"}} {o}\n"
            ));
        }
        out
    }
}

/// Counts by status, decision latency and offset accounting of the decisions observed,
/// for the status line, the end-of-run summary and the metrics.
pub struct Monitor {
    /// The offset accounting of every decision observed.
    pub accounting: Accounting,
    /// Decisions by status, indexed by [`Status`] as `usize` (the SPEC §5 order).
    pub counts: [u64; 9],
    window_counts: u64,
    /// Latency in µs, whole run and the current window.
    pub latency: Histogram<u64>,
    window_latency: Histogram<u64>,
}

impl Default for Monitor {
    fn default() -> Self {
        let hist = || Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
        Monitor {
            accounting: Accounting::default(),
            counts: [0; 9],
            window_counts: 0,
            latency: hist(),
            window_latency: hist(),
        }
    }
}

impl Monitor {
    /// Counts a batch's decisions, accounts for their offsets and records, as of `now_us`
    /// (wall-clock µs), the latency of those taken in by a source (`ingest_us` > 0).
    pub fn observe(&mut self, batch: &Batch, now_us: u64) {
        self.accounting
            .observe(&batch.decisions, std::time::Instant::now());
        for d in &batch.decisions {
            self.counts[d.status as usize] += 1;
            if d.ingest_us > 0 {
                let lat = now_us.saturating_sub(d.ingest_us).max(1);
                self.latency.saturating_record(lat);
                self.window_latency.saturating_record(lat);
            }
        }
        self.window_counts += batch.decisions.len() as u64;
    }

    /// Decisions observed so far.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    fn statuses(&self) -> String {
        Status::ALL
            .iter()
            .zip(self.counts)
            .filter(|(_, n)| *n > 0)
            .map(|(s, n)| format!("{}={}", s.as_str(), n))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// One status line for the window since the previous call, which it then resets.
    pub fn window_line(&mut self, seconds: f64) -> String {
        let rate = self.window_counts as f64 / seconds.max(1e-9);
        let line = format!(
            "{:>9.0} tx/s | p50 {:>7.2} ms p99 {:>7.2} ms | total {} | {}",
            rate,
            self.window_latency.value_at_quantile(0.5) as f64 / 1000.0,
            self.window_latency.value_at_quantile(0.99) as f64 / 1000.0,
            self.total(),
            self.statuses()
        );
        self.window_counts = 0;
        self.window_latency.reset();
        line
    }

    /// The end-of-run report: total, throughput over `seconds`, latency percentiles (ms)
    /// and counts by status.
    pub fn summary(&self, seconds: f64) -> String {
        format!(
            "decided {} messages in {:.2} s ({:.0} tx/s); latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms\nby status: {}",
            self.total(),
            seconds,
            self.total() as f64 / seconds.max(1e-9),
            self.latency.value_at_quantile(0.5) as f64 / 1000.0,
            self.latency.value_at_quantile(0.99) as f64 / 1000.0,
            self.latency.value_at_quantile(0.999) as f64 / 1000.0,
            self.latency.max() as f64 / 1000.0,
            Status::ALL
                .iter()
                .zip(self.counts)
                .map(|(s, n)| format!("{}={}", s.as_str(), n))
                .collect::<Vec<_>>()
                .join(" ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vtpga_dataflow::graph::Decision;
    use vtpga_dataflow::SourcePos;

    fn d(partition: i32, offset: i64) -> Decision {
        Decision {
            pos: SourcePos { partition, offset },
            t: 0,
            ingest_us: 0,
            status: Status::Invalid,
            tx: None,
            scores: None,
            reason: None,
            raw: None,
            home_band: None,
            uf: None,
            rules_version: "default".into(),
        }
    }

    /// SPEC §10: contiguous offsets per partition are accounted for, in any order (batches
    /// of different workers interleave); a gap that does not fill within SETTLE, or is
    /// still open at the end, and a repeat are reported.
    #[test]
    fn offsets_are_accounted_for_and_gaps_reported() {
        let t0 = std::time::Instant::now();
        let mut a = Accounting::default();
        a.start_at(1, 10);
        a.observe(&[d(0, 5), d(1, 11), d(0, 4)], t0);
        a.observe(&[d(1, 10), d(0, 6), d(1, 12)], t0);
        assert!(a.ok(), "{a:?}");
        assert_eq!(a.partitions().collect::<Vec<_>>(), vec![(0, 7), (1, 13)]);
        // 7 and 8 missing: awaited, then filled in part, then given up.
        a.observe(&[d(0, 9)], t0);
        assert!(a.ok());
        a.observe(&[d(0, 7)], t0 + SETTLE / 2);
        assert!(a.ok());
        a.settle(t0 + SETTLE);
        assert_eq!(a.unaccounted, 1);
        assert_eq!(a.partitions().collect::<Vec<_>>(), vec![(0, 10), (1, 13)]);
        a.observe(&[d(1, 12)], t0 + SETTLE);
        assert_eq!(a.repeated, 1);
        a.observe(&[d(1, 15)], t0 + SETTLE);
        a.finish();
        assert_eq!(a.unaccounted, 3);
        // A resumed partition whose first decision lies above its stored offset.
        a.start_at(2, 100);
        a.observe(&[d(2, 102)], t0);
        a.observe(&[d(2, 99)], t0);
        a.finish();
        assert_eq!((a.unaccounted, a.repeated), (5, 2));
        assert!(!a.ok());
        assert!(a.line().contains("UNACCOUNTED 5 repeated 2"));
        assert!(a
            .metrics()
            .contains("vtpga_partition_accounted_offset{partition=\"1\"} 16"));
    }
}

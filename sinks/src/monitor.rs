//! The live view of a running pipeline: counts by status, throughput and decision
//! latency (from the source taking a message in to its batch leaving the graph), and the
//! current analyses. The embedded job prints it once a second; the dashboard will read it.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;

use vtpga_dataflow::analyses::{self, AnalysisKey, Tally};
use vtpga_dataflow::Status;

use crate::Batch;

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// SPEC §10 "every offset is accounted for": per source partition, every offset from the
/// first one decided (or the resume point) up to the latest decided is a decision. A gap
/// is an offset that is neither decided nor a dropped re-delivery (those lie below what
/// was decided, so they never show here): the broker skipped it, or it was lost.
#[derive(Debug, Default)]
pub struct Accounting {
    /// Per partition: the offset after the last one accounted for.
    next: BTreeMap<i32, i64>,
    /// Offsets found missing (gaps), over all partitions.
    pub unaccounted: u64,
    /// Positions seen decided more than once (never expected).
    pub repeated: u64,
}

impl Accounting {
    /// Partitions resume at their stored offsets: the accounting starts there too.
    pub fn start_at(&mut self, partition: i32, next_offset: i64) {
        self.next.insert(partition, next_offset);
    }

    /// Accounts for a batch's decisions. Per partition, times rise with offsets and a
    /// batch closes every time up to its own, so a partition's offsets in later batches
    /// lie above those in earlier ones; within a batch they may come in any order.
    pub fn observe(&mut self, decisions: &[vtpga_dataflow::graph::Decision]) {
        let mut by_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
        for d in decisions {
            by_partition
                .entry(d.pos.partition)
                .or_default()
                .push(d.pos.offset);
        }
        for (partition, mut offsets) in by_partition {
            offsets.sort_unstable();
            let next = self.next.entry(partition).or_insert(offsets[0]);
            for o in offsets {
                if o < *next {
                    self.repeated += 1;
                } else {
                    self.unaccounted += (o - *next) as u64;
                    *next = o + 1;
                }
            }
        }
    }

    /// Whether every offset so far is accounted for.
    pub fn ok(&self) -> bool {
        self.unaccounted == 0 && self.repeated == 0
    }

    /// Per partition, the offset after the last one accounted for.
    pub fn partitions(&self) -> impl Iterator<Item = (i32, i64)> + '_ {
        self.next.iter().map(|(p, o)| (*p, *o))
    }

    /// For the status line.
    pub fn line(&self) -> String {
        if self.ok() {
            format!(" | offsets accounted ({} partition(s))", self.next.len())
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

pub struct Monitor {
    /// The offset accounting of every decision observed.
    pub accounting: Accounting,
    pub counts: [u64; 9],
    window_counts: u64,
    /// Latency in µs, whole run and the current window.
    pub latency: Histogram<u64>,
    window_latency: Histogram<u64>,
    pub rows: BTreeMap<AnalysisKey, Tally>,
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
            rows: BTreeMap::new(),
        }
    }
}

impl Monitor {
    pub fn observe(&mut self, batch: Batch, now_us: u64) {
        self.accounting.observe(&batch.decisions);
        for d in &batch.decisions {
            self.counts[d.status as usize] += 1;
            if d.ingest_us > 0 {
                let lat = now_us.saturating_sub(d.ingest_us).max(1);
                self.latency.saturating_record(lat);
                self.window_latency.saturating_record(lat);
            }
        }
        self.window_counts += batch.decisions.len() as u64;
        analyses::apply_changes(&mut self.rows, batch.analyses);
    }

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
        }
    }

    /// SPEC §10: contiguous offsets per partition are accounted for, in any order within
    /// a batch; a gap or a repeat is reported.
    #[test]
    fn offsets_are_accounted_for_and_gaps_reported() {
        let mut a = Accounting::default();
        a.start_at(1, 10);
        a.observe(&[d(0, 5), d(1, 11), d(0, 4), d(1, 10)]);
        a.observe(&[d(0, 6), d(1, 12)]);
        assert!(a.ok(), "{a:?}");
        assert_eq!(a.partitions().collect::<Vec<_>>(), vec![(0, 7), (1, 13)]);
        a.observe(&[d(0, 9)]);
        assert_eq!(a.unaccounted, 2);
        a.observe(&[d(1, 12)]);
        assert_eq!(a.repeated, 1);
        assert!(!a.ok());
        assert!(a.line().contains("UNACCOUNTED 2"));
        assert!(a
            .metrics()
            .contains("vtpga_partition_accounted_offset{partition=\"0\"} 10"));
    }
}

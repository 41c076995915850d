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

pub struct Monitor {
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

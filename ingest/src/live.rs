//! The embedded generator as a live feed: arrival time is the wall clock, and messages
//! come at a fixed rate (or as fast as the graph takes them).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use vtpga_dataflow::graph::{Body, Incoming};
use vtpga_dataflow::{SourcePos, Time};

use crate::generator::Generator;
use crate::source::{Feed, Polled};

pub use vtpga_dataflow::now_us;

/// The embedded generator as one worker's [`Feed`]: `t` is the wall clock in ms (never
/// decreasing), the source position (`partition`, sequence number).
pub struct LiveFeed {
    generator: Generator,
    /// Messages per second for this feed; `None` for as fast as possible.
    rate: Option<f64>,
    limit: u64,
    stop: Arc<AtomicBool>,
    partition: i32,
    started: Instant,
    produced: u64,
    last_t: Time,
    first_offset: i64,
}

impl LiveFeed {
    /// A feed that acts as source partition `partition`, produces at most `limit`
    /// messages, and ends early when `stop` is set.
    pub fn new(
        generator: Generator,
        rate: Option<f64>,
        limit: u64,
        stop: Arc<AtomicBool>,
        partition: i32,
    ) -> Self {
        LiveFeed {
            generator,
            rate,
            limit,
            stop,
            partition,
            started: Instant::now(),
            produced: 0,
            last_t: 0,
            first_offset: 0,
        }
    }

    /// Numbers this feed's messages from `offset` on (a restart continues the sequence).
    pub fn starting_at(mut self, offset: i64, min_t: Time) -> Self {
        self.first_offset = offset.max(0);
        self.last_t = min_t;
        self
    }
}

impl Feed for LiveFeed {
    fn poll(&mut self, out: &mut Vec<Incoming>, max: usize) -> Polled {
        if self.produced >= self.limit || self.stop.load(Ordering::Relaxed) {
            return Polled::Done;
        }
        let now = now_us();
        let t = (now / 1000).max(self.last_t);
        self.last_t = t;
        let due = match self.rate {
            Some(rate) => {
                ((self.started.elapsed().as_secs_f64() * rate) as u64).saturating_sub(self.produced)
            }
            None => max as u64,
        };
        let n = due.min(max as u64).min(self.limit - self.produced);
        for _ in 0..n {
            let m = self.generator.next_at(t);
            out.push(Incoming {
                pos: SourcePos {
                    partition: self.partition,
                    offset: self.first_offset + self.produced as i64,
                },
                t,
                ingest_us: now,
                body: Body::Raw(m.payload),
            });
            self.produced += 1;
        }
        Polled::Open {
            frontier: t,
            idle: self.rate.is_some() && n == due,
        }
    }
}

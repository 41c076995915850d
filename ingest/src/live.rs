//! The embedded generator as a live feed: arrival time is the wall clock, and messages
//! come at a fixed rate (or as fast as the graph takes them). With
//! [`LiveFeed::with_controls`] it also yields generated control records (SPEC §11) at
//! their own rate, on their own control-topic positions.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use vtpga_dataflow::graph::{Body, Incoming};
use vtpga_dataflow::{SourcePos, Time};

use crate::changes::ControlGenerator;
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
    controls: Option<LiveControls>,
}

/// The control records a [`LiveFeed`] mixes in.
struct LiveControls {
    generator: ControlGenerator,
    /// Records per second of the wall clock.
    rate: f64,
    produced: u64,
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
            controls: None,
        }
    }

    /// Also yields `generator`'s control records, `rate_per_sec` of them per second of
    /// the wall clock (from the feed's start), each as a [`Body::Control`] at its own
    /// control-topic position (`generator`'s partitions and offsets) and at the feed's
    /// current `t`, before the transactions of that poll. They stop when the feed does.
    ///
    /// Give them to one worker's feed only (the control records of a cluster are one
    /// stream: versions, created users and deletions follow one another). A rate that
    /// is not a positive number adds nothing.
    pub fn with_controls(mut self, generator: ControlGenerator, rate_per_sec: f64) -> Self {
        self.controls = (rate_per_sec.is_finite() && rate_per_sec > 0.0).then_some(LiveControls {
            generator,
            rate: rate_per_sec,
            produced: 0,
        });
        self
    }

    /// Control records yielded so far.
    pub fn controls_produced(&self) -> u64 {
        self.controls.as_ref().map_or(0, |c| c.produced)
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
        let elapsed = self.started.elapsed().as_secs_f64();
        let due = match self.rate {
            Some(rate) => ((elapsed * rate) as u64).saturating_sub(self.produced),
            None => max as u64,
        };
        let mut max = max;
        if let Some(c) = self.controls.as_mut() {
            let due = ((elapsed * c.rate) as u64)
                .saturating_sub(c.produced)
                .min(max as u64);
            for _ in 0..due {
                let g = c.generator.next_at(t);
                out.push(Incoming {
                    pos: SourcePos {
                        partition: g.partition,
                        offset: g.offset,
                    },
                    t,
                    ingest_us: now,
                    body: Body::Control(g.payload),
                });
            }
            c.produced += due;
            max -= due as usize;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changes::{ControlConfig, ControlGenerator};
    use crate::generator::GeneratorConfig;
    use crate::refdata::{generate_regions, generate_users};
    use std::collections::BTreeMap;

    #[test]
    fn controls_come_at_their_rate_on_their_own_positions() {
        let regions = generate_regions(5, 1);
        let users = generate_users(200, &regions, 1);
        // Before the feed's own start: the feed's elapsed time never exceeds the test's.
        let started = Instant::now();
        let generator = Generator::new(GeneratorConfig::default(), regions.clone(), users.clone());
        let controls = ControlGenerator::new(ControlConfig::default(), &regions, &users);
        let mut feed = LiveFeed::new(
            generator,
            Some(2_000.0),
            u64::MAX,
            Arc::new(AtomicBool::new(false)),
            3,
        )
        .with_controls(controls, 200.0);
        let mut got = Vec::new();
        let mut frontier = 0;
        while started.elapsed().as_millis() < 300 {
            let before = got.len();
            match feed.poll(&mut got, 64) {
                Polled::Open { frontier: f, .. } => {
                    assert!(got[before..].iter().all(|m| m.t >= frontier));
                    frontier = f;
                }
                Polled::Done => unreachable!(),
            }
            assert!(got.len() - before <= 64);
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let elapsed = started.elapsed().as_secs_f64();
        assert!(got.windows(2).all(|w| w[0].t <= w[1].t));
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        let mut controls = 0u64;
        let mut txs = 0u64;
        for m in &got {
            match &m.body {
                Body::Control(raw) => {
                    if let Err(e) = vtpga_dataflow::control::parse_control(raw) {
                        assert!(e.to_string().contains("missing field"), "{e}");
                    }
                    let n = next.entry(m.pos.partition).or_insert(0);
                    assert_eq!(m.pos.offset, *n);
                    *n += 1;
                    controls += 1;
                }
                Body::Raw(_) => {
                    assert_eq!((m.pos.partition, m.pos.offset), (3, txs as i64));
                    txs += 1;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(controls, feed.controls_produced());
        // 200 control records and 2,000 transactions a second: about 60 and 600 in the
        // 300 ms (never more than the time taken allows; a busy machine may poll late).
        assert!(
            controls >= 20 && controls as f64 <= 200.0 * elapsed + 1.0,
            "{controls} in {elapsed} s"
        );
        assert!(
            txs >= 100 && txs as f64 <= 2_000.0 * elapsed + 1.0,
            "{txs} in {elapsed} s"
        );
        assert!(next.keys().all(|p| (0..2).contains(p)));
    }
}

//! The output side's one shape: a [`Consumer`] takes the pipeline's batches, and the
//! [`WritePath`] decides which thread gives which consumer which batch, in which order.
//!
//! ```text
//!  BatchSink (graph) ──channel──▶ dispatcher ──▶ decisions topic (sent at once, in order)
//!                                    │
//!                                    ├─ batch 0, 2, 4 … ──▶ PostgreSQL writer A ─┐ COPY in parallel,
//!                                    └─ batch 1, 3, 5 … ──▶ PostgreSQL writer B ─┘ commit in order
//!                                                                  │ after each commit, in order
//!                                    ┌────────────────┬────────────┴──┬──────────────┐
//!                                    ▼                ▼               ▼              ▼
//!                                  Redis          dashboard        monitor        (files)
//!                                (own thread)    (own thread)   (own thread)
//! ```
//!
//! What each consumer may assume:
//!
//! * **PostgreSQL** (the durable record, when there is one) sees every batch first, each
//!   exactly once and committed in batch order: a writer copies its batch's decisions while
//!   the other writer's batch is still being written or committed, but it writes accounts,
//!   analysis rows, offsets and the cut only after the batch before it has committed (the
//!   baton), so the record's cut only moves forward and a later account state is never
//!   overwritten by an earlier one.
//! * **The decisions topic** is sent each batch as soon as the dispatcher has it, and every
//!   batch is flushed to the broker before its PostgreSQL commit: once a cut is committed
//!   (a restart resumes after it) its decisions are on the topic (at least once; a restart
//!   sends what came after the cut again, identically). Without PostgreSQL it is one more
//!   follower.
//! * **Followers** (Redis, the dashboard, the monitor, replay files) get every batch, in
//!   batch order, only after it is committed (with a durable record), each on its own
//!   thread with a bounded queue: a follower may be behind PostgreSQL, never ahead of it. A
//!   slow follower fills its queue and then holds the writers back (memory stays bounded);
//!   Redis never is slow for long (it caches in memory while Redis is away and rebuilds
//!   from the pipeline's state when it is back).
//!
//! A consumer that fails for good stops the pipeline taking input (the stop flag) and the
//! write path ends with its error; batches already committed stay committed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::kafka::DecisionProducer;
use crate::postgres::PgSink;
use crate::Batch;

/// Why a consumer could not take a batch.
#[derive(Debug, thiserror::Error)]
pub enum Fault {
    /// Worth trying the same batch again after a pause (e.g. a lost connection).
    #[error("{0} (retrying)")]
    Retry(String),
    /// Nothing more can be taken: the pipeline stops.
    #[error("{0}")]
    Fatal(String),
}

/// Whatever takes the pipeline's batches: one verb ([`Consumer::batch`]), framed by
/// [`Consumer::start`] and [`Consumer::end`]. Runs on a thread of its own.
pub trait Consumer: Send {
    /// For messages: which consumer failed.
    fn name(&self) -> &'static str;
    /// Before the first batch.
    fn start(&mut self) -> Result<(), Fault> {
        Ok(())
    }
    /// One batch; batches come in the order the write path promises (module doc).
    fn batch(&mut self, batch: &Batch) -> Result<(), Fault>;
    /// About every 100 ms, batches or not (status lines, reconnections).
    fn tick(&mut self) {}
    /// After the last batch.
    fn end(&mut self) -> Result<(), Fault> {
        Ok(())
    }
}

/// Where batches go: the durable record's writers, the decisions topic and the followers.
pub struct WritePath {
    /// PostgreSQL writers, one connection each (two let one copy while the other commits);
    /// none when there is no durable record.
    pub record: Vec<PgSink>,
    /// The decisions and dead-letter topics.
    pub producer: Option<Arc<DecisionProducer>>,
    /// Everything else, each on its own thread.
    pub followers: Vec<Box<dyn Consumer>>,
    /// With a durable record, batches that come while every writer is busy are merged
    /// into one database transaction of at most about this many decisions; beyond that
    /// the dispatcher waits for a writer (and so holds the graph back).
    pub max_batch: usize,
    /// Set when a consumer fails for good: the sources stop taking input.
    pub stop: Arc<AtomicBool>,
}

/// Batches a follower's queue holds before the writers wait for it.
const FOLLOWER_QUEUE: usize = 16;
/// How often a follower's `tick` runs.
const TICK: Duration = Duration::from_millis(100);

/// Commits in batch order: the sequence number whose turn it is, or a failure.
struct Baton {
    state: Mutex<(u64, bool)>,
    turn: Condvar,
}

impl Baton {
    /// Waits until it is `seq`'s turn; false if a writer failed meanwhile.
    fn wait_for(&self, seq: u64) -> bool {
        let mut s = self.state.lock().expect("baton");
        while s.0 != seq && !s.1 {
            s = self.turn.wait(s).expect("baton");
        }
        !s.1
    }

    fn pass(&self, seq: u64) {
        self.state.lock().expect("baton").0 = seq + 1;
        self.turn.notify_all();
    }

    fn fail(&self) {
        self.state.lock().expect("baton").1 = true;
        self.turn.notify_all();
    }
}

impl WritePath {
    /// Takes batches from `batches` until it is closed and every consumer has ended.
    pub fn drive(self, batches: Receiver<Batch>) -> Result<(), Fault> {
        let WritePath {
            record,
            producer,
            mut followers,
            max_batch,
            stop,
        } = self;
        let durable = !record.is_empty();
        if let (Some(p), false) = (&producer, durable) {
            followers.insert(0, Box::new(ProducerFollower(p.clone())));
        }
        let failure: Mutex<Option<Fault>> = Mutex::new(None);
        let fail = |e: Fault| {
            log::error!("{e}");
            stop.store(true, Ordering::Relaxed);
            let mut f = failure.lock().expect("failure");
            if f.is_none() {
                *f = Some(e);
            }
        };
        let baton = Baton {
            state: Mutex::new((0, false)),
            turn: Condvar::new(),
        };
        let (to_followers, from_dispatch): (Vec<_>, Vec<_>) = (0..followers.len())
            .map(|_| crossbeam_channel::bounded::<Arc<Batch>>(FOLLOWER_QUEUE))
            .unzip();
        // Whichever writer is free takes the next batch (a rendezvous: the dispatcher keeps
        // merging while both are busy).
        let (to_writers, writer_queue) = crossbeam_channel::bounded::<(u64, Arc<Batch>)>(0);
        std::thread::scope(|scope| {
            let (fail, baton, producer) = (&fail, &baton, &producer);
            for (mut follower, queue) in followers.into_iter().zip(from_dispatch) {
                std::thread::Builder::new()
                    .name(format!("vtpga-{}", follower.name()))
                    .spawn_scoped(scope, move || {
                        if let Err(e) = follow(follower.as_mut(), queue) {
                            fail(e);
                        }
                    })
                    .expect("spawning a consumer thread");
            }
            for mut sink in record {
                let followers = to_followers.clone();
                let queue = writer_queue.clone();
                std::thread::Builder::new()
                    .name("vtpga-postgres".into())
                    .spawn_scoped(scope, move || {
                        for (seq, batch) in queue {
                            let mut turn = || {
                                if !baton.wait_for(seq) {
                                    return false;
                                }
                                if let Some(p) = producer {
                                    // At least once on the topics: nothing of a cut may be
                                    // undelivered once the cut is committed.
                                    p.wait_delivered(seq);
                                }
                                true
                            };
                            match sink.write_in_turn(&batch, &|| false, &mut turn) {
                                Ok(true) => {
                                    forward(&followers, &batch);
                                    baton.pass(seq);
                                }
                                Ok(false) => return,
                                Err(e) => {
                                    baton.fail();
                                    fail(Fault::Fatal(format!(
                                        "writing a batch to PostgreSQL: {e}"
                                    )));
                                    return;
                                }
                            }
                        }
                    })
                    .expect("spawning a PostgreSQL writer");
            }
            drop(writer_queue);
            // The dispatcher: this thread. Each batch goes to the topic as soon as it
            // comes; for the durable record, batches that come while both writers are busy
            // are merged into the one waiting (at most about `max_batch` decisions; beyond
            // that it waits for a writer and so holds the graph back).
            let mut seq = 0u64;
            let mut waiting: Option<Batch> = None;
            let mut open = true;
            while open || waiting.is_some() {
                let full = waiting
                    .as_ref()
                    .is_some_and(|w| w.decisions.len() >= max_batch);
                let mut sel = crossbeam_channel::Select::new();
                let take = (open && !full).then(|| sel.recv(&batches));
                let give = waiting.is_some().then(|| sel.send(&to_writers));
                let op = match sel.select_timeout(TICK) {
                    Ok(op) => op,
                    Err(_) => continue,
                };
                if Some(op.index()) == give {
                    let batch = Arc::new(waiting.take().expect("a batch waits"));
                    if op.send(&to_writers, (seq, batch)).is_err() {
                        // Every writer has ended: one failed and said why.
                        break;
                    }
                    seq += 1;
                    continue;
                }
                debug_assert_eq!(Some(op.index()), take);
                let batch = match op.recv(&batches) {
                    Ok(b) => b,
                    Err(_) => {
                        open = false;
                        continue;
                    }
                };
                if !durable {
                    forward(&to_followers, &Arc::new(batch));
                    continue;
                }
                if let Some(p) = producer {
                    // Numbered as the writers will number the batch it joins.
                    if let Err(e) = p.send_batch(&batch, Some(seq)) {
                        fail(Fault::Fatal(format!("producing decisions: {e}")));
                        break;
                    }
                }
                match waiting.as_mut() {
                    Some(w) => w.merge(batch),
                    None => waiting = Some(batch),
                }
            }
            // Closing the queues ends the writers, then (with the writers' copies of the
            // followers' queues gone) the followers.
            drop(to_writers);
            drop(to_followers);
        });
        // Whatever the graph still sends after a failure is dropped, so its workers end.
        for _ in batches {}
        match failure.into_inner().expect("failure") {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Gives `batch` to every follower, in turn (a follower that ended has said why).
fn forward(followers: &[Sender<Arc<Batch>>], batch: &Arc<Batch>) {
    for f in followers {
        let _ = f.send(batch.clone());
    }
}

/// A follower's loop: batches as they come, a tick now and then, retries on `Retry`.
fn follow(c: &mut dyn Consumer, batches: Receiver<Arc<Batch>>) -> Result<(), Fault> {
    let name = c.name();
    let named = |e: Fault| match e {
        Fault::Retry(m) | Fault::Fatal(m) => Fault::Fatal(format!("{name}: {m}")),
    };
    c.start().map_err(named)?;
    let mut last_tick = std::time::Instant::now();
    loop {
        match batches.recv_timeout(TICK) {
            Ok(batch) => {
                let mut backoff = Duration::from_millis(100);
                loop {
                    match c.batch(&batch) {
                        Ok(()) => break,
                        Err(Fault::Retry(m)) => {
                            log::warn!("{name}: {m}; retrying in {backoff:?}");
                            std::thread::sleep(backoff);
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                        }
                        Err(e) => return Err(named(e)),
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if last_tick.elapsed() >= TICK {
            c.tick();
            last_tick = std::time::Instant::now();
        }
    }
    c.end().map_err(named)
}

/// The decisions topic as a follower (no durable record to wait for it).
struct ProducerFollower(Arc<DecisionProducer>);

impl Consumer for ProducerFollower {
    fn name(&self) -> &'static str {
        "kafka"
    }
    fn batch(&mut self, batch: &Batch) -> Result<(), Fault> {
        // Nobody waits for deliveries by batch.
        self.0
            .send_batch(batch, None)
            .map_err(|e| Fault::Fatal(format!("producing decisions: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vtpga_dataflow::graph::{Account, Decision};
    use vtpga_dataflow::{SourcePos, Status};

    /// Records the times of the batches it is given, and fails at a chosen one.
    struct Recorder {
        times: Arc<Mutex<Vec<u64>>>,
        fail_at: Option<u64>,
        retries_left: u32,
    }

    impl Consumer for Recorder {
        fn name(&self) -> &'static str {
            "recorder"
        }
        fn batch(&mut self, batch: &Batch) -> Result<(), Fault> {
            if self.retries_left > 0 {
                self.retries_left -= 1;
                return Err(Fault::Retry("not yet".into()));
            }
            if self.fail_at == Some(batch.time) {
                return Err(Fault::Fatal("refused".into()));
            }
            self.times.lock().unwrap().push(batch.time);
            Ok(())
        }
    }

    fn decision(offset: i64, t: u64) -> Decision {
        Decision {
            pos: SourcePos {
                partition: 0,
                offset,
            },
            t,
            ingest_us: 0,
            status: Status::Invalid,
            tx: None,
            scores: None,
            reason: Some("bad".into()),
            raw: Some(b"x".to_vec()),
            home_band: None,
            uf: None,
            rules_version: "default".into(),
        }
    }

    /// Batch `t` (1-based): `per` decisions and the account of one user with balance `t`.
    fn batch(t: u64, per: i64) -> Batch {
        Batch {
            time: t,
            decisions: (0..per)
                .map(|i| decision((t as i64 - 1) * per + i, t))
                .collect(),
            accounts: vec![Account {
                user: "u1".into(),
                balance_cents: t as i64,
                credit_used_cents: 0,
                last_approved_ms: None,
                deleted: false,
            }],
            analyses: Vec::new(),
            controls: Vec::new(),
            shadows: Vec::new(),
        }
    }

    fn recorder(fail_at: Option<u64>, retries_left: u32) -> (Recorder, Arc<Mutex<Vec<u64>>>) {
        let times = Arc::new(Mutex::new(Vec::new()));
        (
            Recorder {
                times: times.clone(),
                fail_at,
                retries_left,
            },
            times,
        )
    }

    /// Without a durable record every follower sees every batch, in order; a `Retry` is
    /// tried again.
    #[test]
    fn followers_see_every_batch_in_order() {
        let (a, a_times) = recorder(None, 0);
        let (b, b_times) = recorder(None, 2);
        let (tx, rx) = crossbeam_channel::unbounded();
        for t in 1..=50 {
            tx.send(batch(t, 3)).unwrap();
        }
        drop(tx);
        let path = WritePath {
            record: Vec::new(),
            producer: None,
            followers: vec![Box::new(a), Box::new(b)],
            max_batch: 10,
            stop: Default::default(),
        };
        path.drive(rx).expect("drives");
        let all: Vec<u64> = (1..=50).collect();
        assert_eq!(*a_times.lock().unwrap(), all);
        assert_eq!(*b_times.lock().unwrap(), all);
    }

    /// A follower that fails for good stops the pipeline (the stop flag) and the path ends
    /// with its error, after taking every batch the graph still sends.
    #[test]
    fn a_failing_follower_stops_the_pipeline() {
        let (a, _) = recorder(Some(7), 0);
        let (tx, rx) = crossbeam_channel::unbounded();
        for t in 1..=20 {
            tx.send(batch(t, 1)).unwrap();
        }
        drop(tx);
        let stop = Arc::new(AtomicBool::new(false));
        let path = WritePath {
            record: Vec::new(),
            producer: None,
            followers: vec![Box::new(a)],
            max_batch: 10,
            stop: stop.clone(),
        };
        let err = path.drive(rx).expect_err("fails");
        assert!(err.to_string().contains("recorder: refused"), "{err}");
        assert!(stop.load(Ordering::Relaxed));
    }

    /// Two PostgreSQL writers copy in parallel but commit in batch order: the account
    /// ends with the last batch's state and the cut with the last time, every decision is
    /// there once, and the follower sees the batches in order, each after its commit.
    #[test]
    fn writers_commit_in_batch_order_and_followers_follow() {
        let pg = vtpga_testkit::Postgres::start();
        let first = PgSink::new(&pg.url, "test").expect("sink");
        let second = first.another().expect("second writer");
        let committed = Arc::new(Mutex::new(Vec::new()));
        struct Checker {
            url: String,
            seen: Arc<Mutex<Vec<(u64, i64)>>>,
        }
        impl Consumer for Checker {
            fn name(&self) -> &'static str {
                "checker"
            }
            fn batch(&mut self, batch: &Batch) -> Result<(), Fault> {
                // The record's cut when the follower gets the batch.
                let mut client = crate::postgres::connect(&self.url).expect("connect");
                let cut: i64 = client
                    .query_one("SELECT cut_time FROM pipeline_state", &[])
                    .expect("cut")
                    .get(0);
                self.seen.lock().unwrap().push((batch.time, cut));
                Ok(())
            }
        }
        let (tx, rx) = crossbeam_channel::bounded(4);
        let feeder = std::thread::spawn(move || {
            for t in 1..=60 {
                tx.send(batch(t, 500)).unwrap();
                if t % 7 == 0 {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        });
        let path = WritePath {
            record: vec![first, second],
            producer: None,
            followers: vec![Box::new(Checker {
                url: pg.url.clone(),
                seen: committed.clone(),
            })],
            max_batch: 1_000,
            stop: Default::default(),
        };
        path.drive(rx).expect("drives");
        feeder.join().unwrap();
        let mut client = pg.client();
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM transactions),
                        (SELECT count(DISTINCT (partition, \"offset\")) FROM transactions),
                        (SELECT balance_cents FROM accounts WHERE user_id = 'u1'),
                        (SELECT cut_time FROM pipeline_state)",
                &[],
            )
            .unwrap();
        let (rows, distinct, balance, cut): (i64, i64, i64, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        assert_eq!((rows, distinct), (30_000, 30_000));
        assert_eq!(balance, 60, "the last batch's account state wins");
        assert_eq!(cut, 60);
        let seen = committed.lock().unwrap();
        assert_eq!(seen.last().map(|s| s.0), Some(60));
        for pair in seen.windows(2) {
            assert!(pair[0].0 < pair[1].0, "in order: {seen:?}");
        }
        for (time, cut) in seen.iter() {
            assert!(*cut >= *time as i64, "followed before its commit: {seen:?}");
        }
    }
}

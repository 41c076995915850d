//! The timely source operator that every feed (replay file, embedded generator, and later
//! Kafka) plugs into. It owns a capability, gives each message at its arrival time `t`,
//! and downgrades the capability to the feed's promise about future arrival times.
//! It stops polling while too many messages are in flight (bounded memory).

use std::collections::VecDeque;
use std::time::Duration;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::Capability;
use timely::dataflow::{ProbeHandle, Scope, StreamVec};

use vtpga_dataflow::graph::{Body, Incoming};
use vtpga_dataflow::{SourcePos, Time};

/// What a poll found.
pub enum Polled {
    /// Every future message will have `t >= frontier`. `idle` asks to be polled again
    /// only after a short pause (a live feed with nothing due yet).
    Open {
        /// No later message of the feed has a smaller `t` (ms).
        frontier: Time,
        /// Poll again only after a short pause.
        idle: bool,
    },
    /// The feed is exhausted.
    Done,
}

/// A source of messages for one worker.
pub trait Feed {
    /// Appends at most `max` messages to `out`. Each has `t` at least the frontier of the
    /// previous poll, and messages come in non-decreasing `t`.
    fn poll(&mut self, out: &mut Vec<Incoming>, max: usize) -> Polled;
}

/// How many messages one activation takes from its feed.
const POLL_BATCH: usize = 16_384;

/// Distinct arrival times a source lets into the graph before waiting for the oldest to
/// come out. Progress tracking costs grow with the number of outstanding timestamps, so a
/// sparse timeline (a replay spanning hours) must not put thousands in flight at once.
const MAX_TIMES_IN_FLIGHT: usize = 4096;

/// Builds the source operator for `feed`. `probe` tells how far the whole graph has got;
/// the source pauses while more than `max_in_flight` of its messages are not yet through.
/// It takes nothing from its feed until `start_after` is complete (the reference data is
/// arranged): messages could not be decided before, only pile up. Each message goes
/// through `admit` on its way out: its `Ok` on the first stream, its `Err` on the second
/// (the graph's rules 1–2, applied where the message enters rather than in an operator
/// of their own).
#[allow(clippy::type_complexity)]
pub fn feed_source<'s, F, A, B, Admit>(
    scope: Scope<'s, Time>,
    mut feed: F,
    probe: ProbeHandle<Time>,
    max_in_flight: usize,
    start_after: ProbeHandle<Time>,
    epoch_ms: u64,
    mut admit: Admit,
) -> (StreamVec<'s, Time, A>, StreamVec<'s, Time, B>)
where
    F: Feed + 'static,
    A: Clone + 'static,
    B: Clone + 'static,
    Admit: FnMut(Incoming) -> Result<A, B> + 'static,
{
    let mut builder = OperatorBuilder::new("FeedSource".to_owned(), scope);
    let activator = scope.activator_for(builder.operator_info().address);
    let (ok_out, ok_stream) = builder.new_output();
    let (err_out, err_stream) = builder.new_output();
    let mut ok_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<A>>>::from(ok_out);
    let mut err_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<B>>>::from(err_out);
    let mask = epoch_ms.max(1).next_power_of_two() - 1;
    let cell_start = move |t: Time| t & !mask;
    builder.build(move |capabilities| {
        let mut capabilities: Option<Vec<Capability<Time>>> = Some(capabilities);
        let mut polled = Vec::with_capacity(POLL_BATCH);
        // Messages taken from the feed and not yet given (beyond the timestamp budget).
        let mut buffer: VecDeque<Incoming> = VecDeque::new();
        let mut feed_frontier: Time = 0;
        let mut feed_idle = false;
        let mut feed_done = false;
        // The greatest arrival time given (for the end-of-input marker).
        let mut last_t: Time = 0;
        // (time, count) of messages given and not yet known to be through the graph.
        let mut in_flight: VecDeque<(Time, usize)> = VecDeque::new();
        let mut in_flight_count = 0usize;
        // The decisions of rules 1-2 of one poll, with the time each leaves at.
        let mut refused: Vec<(Time, B)> = Vec::new();
        // The end of the cell of the last message given. Until the feed has passed it the
        // source goes on taking messages even when full: the graph cannot close a cell
        // while some of its messages wait in the feed, so stopping there would wait for
        // ever (a cell may hold more messages than `max_in_flight`).
        let mut open_cell_end: Option<Time> = None;
        move |_frontiers| {
            let Some(caps) = capabilities.as_mut() else {
                return;
            };
            if !start_after.done() {
                activator.activate_after(Duration::from_millis(1));
                return;
            }
            while let Some(&(t, n)) = in_flight.front() {
                if probe.less_equal(&t) {
                    break;
                }
                in_flight.pop_front();
                in_flight_count -= n;
            }
            let full = |in_flight: &VecDeque<(Time, usize)>, count: usize| {
                count >= max_in_flight || in_flight.len() >= MAX_TIMES_IN_FLIGHT
            };
            let floor = *caps[0].time();
            // Whether a feed at `frontier` may still hold messages of the cell begun.
            let mid_cell = move |open_cell_end: Option<Time>, frontier: Time| {
                open_cell_end.is_some_and(|end| frontier.max(floor) <= end)
            };
            if buffer.is_empty()
                && !feed_done
                && (mid_cell(open_cell_end, feed_frontier) || !full(&in_flight, in_flight_count))
            {
                let budget = if full(&in_flight, in_flight_count) {
                    POLL_BATCH
                } else {
                    POLL_BATCH.min(max_in_flight - in_flight_count)
                };
                match feed.poll(&mut polled, budget) {
                    Polled::Open { frontier, idle } => {
                        feed_frontier = frontier;
                        feed_idle = idle;
                    }
                    Polled::Done => feed_done = true,
                }
                buffer.extend(polled.drain(..));
            }
            let mut ok_h = ok_out.activate();
            let mut err_h = err_out.activate();
            while let Some(first) = buffer.front() {
                let in_open_cell = Some(first.t.max(floor) | mask) == open_cell_end;
                if full(&in_flight, in_flight_count) && !in_open_cell {
                    break;
                }
                // Feeds promise non-decreasing t; anything earlier than the capability would
                // be a feed bug, so it is raised to the capability's time rather than lost.
                // Everything taken enters at once, at the start of the first message's
                // cell (a message may enter at or before its own time: the ordering
                // operators go by each message's `t`): a backlog costs one timestamp per
                // poll, not one per millisecond. Decisions made here leave at the end of
                // their own time's cell, as every decision does.
                let enter = cell_start(first.t.max(floor)).max(floor);
                let ok_cap = caps[0].delayed(&enter);
                let mut ok_s = ok_h.session(&ok_cap);
                let mut n = 0;
                let mut last_end = enter | mask;
                refused.clear();
                while let Some(mut m) = buffer.pop_front() {
                    m.t = m.t.max(floor);
                    last_t = last_t.max(m.t);
                    let end = m.t | mask;
                    last_end = end;
                    match admit(m) {
                        Ok(a) => ok_s.give(a),
                        Err(b) => refused.push((end, b)),
                    }
                    n += 1;
                    // Full: stop, but never inside a cell (the graph could not finish the
                    // cell's outputs while some of its messages wait here).
                    let next_cell = buffer.front().map(|m| m.t.max(floor) | mask);
                    if full(&in_flight, in_flight_count + n) && next_cell != Some(end) {
                        break;
                    }
                }
                drop(ok_s);
                while let Some(&(end, _)) = refused.first() {
                    let k = refused.iter().take_while(|(e, _)| *e == end).count();
                    let cap = caps[1].delayed(&end);
                    err_h
                        .session(&cap)
                        .give_iterator(refused.drain(..k).map(|(_, b)| b));
                }
                match in_flight.back_mut() {
                    Some((last, count)) if *last == last_end => *count += n,
                    _ => in_flight.push_back((last_end, n)),
                }
                in_flight_count += n;
                open_cell_end = Some(last_end);
            }
            let next = match buffer.front() {
                Some(m) => cell_start(m.t.max(floor)),
                None if feed_done => {
                    // The end of this source's input, with the greatest arrival time it
                    // gave: changes that take effect after the input's end stay pending
                    // (SPEC §11; see `graph::control`).
                    let end = Incoming {
                        pos: SourcePos {
                            partition: -1,
                            offset: -1,
                        },
                        t: last_t,
                        ingest_us: 0,
                        body: Body::End,
                    };
                    if let Ok(a) = admit(end) {
                        ok_h.session(&caps[0]).give(a);
                    }
                    capabilities = None;
                    return;
                }
                None => cell_start(feed_frontier),
            };
            if next > floor {
                for cap in caps.iter_mut() {
                    cap.downgrade(&next);
                }
            }
            if buffer.is_empty() && feed_idle {
                activator.activate_after(Duration::from_millis(1));
            } else if full(&in_flight, in_flight_count)
                && !(buffer.is_empty() && mid_cell(open_cell_end, feed_frontier))
            {
                // Waiting for the graph: let the worker park (or do other work) rather than
                // spin, which starves the other workers when threads outnumber cores.
                activator.activate_after(Duration::from_micros(50));
            } else {
                activator.activate();
            }
        }
    });
    (ok_stream, err_stream)
}

/// A feed over messages already in memory, sorted by `t` (bench and replay).
pub struct VecFeed {
    items: std::vec::IntoIter<Incoming>,
    next_t: Option<Time>,
}

impl VecFeed {
    /// `items` must be sorted by `t`.
    pub fn new(items: Vec<Incoming>) -> Self {
        debug_assert!(items.windows(2).all(|w| w[0].t <= w[1].t));
        let next_t = items.first().map(|m| m.t);
        VecFeed {
            items: items.into_iter(),
            next_t,
        }
    }
}

impl Feed for VecFeed {
    fn poll(&mut self, out: &mut Vec<Incoming>, max: usize) -> Polled {
        out.extend(self.items.by_ref().take(max));
        self.next_t = self.items.as_slice().first().map(|m| m.t);
        match self.next_t {
            Some(frontier) => Polled::Open {
                frontier,
                idle: false,
            },
            None => Polled::Done,
        }
    }
}

/// Ends a feed early when `stop` is set (Ctrl-C).
pub struct Stoppable<F> {
    /// The feed that is wrapped.
    pub feed: F,
    /// Once set, every poll answers [`Polled::Done`].
    pub stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl<F: Feed> Feed for Stoppable<F> {
    fn poll(&mut self, out: &mut Vec<Incoming>, max: usize) -> Polled {
        if self.stop.load(std::sync::atomic::Ordering::Relaxed) {
            return Polled::Done;
        }
        self.feed.poll(out, max)
    }
}

/// One of two feeds, chosen at run time.
pub enum Either<A, B> {
    /// A feed of the first kind.
    Left(A),
    /// A feed of the second kind.
    Right(B),
}

impl<A: Feed, B: Feed> Feed for Either<A, B> {
    fn poll(&mut self, out: &mut Vec<Incoming>, max: usize) -> Polled {
        match self {
            Either::Left(a) => a.poll(out, max),
            Either::Right(b) => b.poll(out, max),
        }
    }
}

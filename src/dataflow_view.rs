//! The live operator graph (issue 16), from timely's own event log (operators, channels,
//! schedules, messages) and differential's arrangement log: each worker sums its events
//! in the worker ([`install`]) and publishes its totals to the process at most every
//! [`PUBLISH_EVERY`]; a [`DataflowView`] merges the workers of its process, keeps a short
//! history, and answers with figures over a sliding window beside the totals.
//! `VTPGA_PROFILE=1` prints the same sums per worker when it ends.
//!
//! Busy time is exclusive: the time an operator's children (a scope's operators) took is
//! not counted again in the scope. Records are what the channels carried (timely's
//! `MessagesEvent` record counts): an operator's records in are what it pulled from its
//! input channels, its records out what it pushed on each output port (once per port,
//! however many operators read it).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use differential_dataflow::logging::{DifferentialEvent, DifferentialEventBuilder};
use serde::Serialize;
use serde_json::Value;
use timely::logging::{StartStop, TimelyEvent, TimelyEventBuilder};

/// How often a worker copies its sums out for the process (it also does at its end).
pub const PUBLISH_EVERY: Duration = Duration::from_millis(100);
/// How often the process samples its workers' sums for the sliding window.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// The sliding window when the caller names none.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(1);
/// The longest window kept.
pub const MAX_WINDOW: Duration = Duration::from_secs(60);
/// The name timely gives the operator of a loop's feedback edge (`Feedback::feedback`).
const FEEDBACK: &str = "Feedback";

/// One operator as a worker saw it.
#[derive(Clone, Debug, Default)]
struct OperatorFig {
    addr: Vec<usize>,
    name: String,
    activations: u64,
    busy_ns: u64,
    /// Batches and records held, for an arrangement (differential's log).
    arrangement: Option<(i64, i64)>,
}

/// One channel as a worker saw it.
#[derive(Clone, Debug, Default)]
struct ChannelFig {
    scope: Vec<usize>,
    source: (usize, usize),
    target: (usize, usize),
    /// Records this worker pushed on it.
    sent: u64,
    /// Records this worker pulled from it.
    received: u64,
    /// Some record on it moved between two workers (timely does not log the pact: a
    /// channel is known to exchange once data crossed on it).
    crossed: bool,
}

/// A worker's sums, indexed by timely's identifiers (operators and channels share one
/// dense counter).
#[derive(Clone, Debug, Default)]
pub struct WorkerFigures {
    operators: Vec<Option<OperatorFig>>,
    channels: Vec<Option<ChannelFig>>,
}

/// The sums of the workers of this process, by worker index.
#[derive(Default)]
pub struct Published {
    workers: Mutex<BTreeMap<usize, WorkerFigures>>,
}

impl Published {
    fn put(&self, worker: usize, figures: &WorkerFigures) {
        self.workers
            .lock()
            .expect("dataflow figures")
            .insert(worker, figures.clone());
    }

    fn snapshot(&self) -> BTreeMap<usize, WorkerFigures> {
        self.workers.lock().expect("dataflow figures").clone()
    }
}

/// What one worker's loggers share.
struct WorkerLog {
    worker: usize,
    figures: WorkerFigures,
    /// Operators being scheduled, innermost last: id, start, time their children took.
    stack: Vec<(usize, Duration, Duration)>,
    last_publish: Option<Duration>,
    published: Option<Arc<Published>>,
}

fn slot<T: Default>(v: &mut Vec<Option<T>>, id: usize) -> &mut T {
    if v.len() <= id {
        v.resize_with(id + 1, || None);
    }
    v[id].get_or_insert_with(T::default)
}

impl WorkerLog {
    fn timely(&mut self, at: Duration, event: &TimelyEvent) {
        let f = &mut self.figures;
        match event {
            TimelyEvent::Operates(o) => {
                let op = slot(&mut f.operators, o.id);
                op.addr.clone_from(&o.addr);
                op.name.clone_from(&o.name);
            }
            TimelyEvent::Channels(c) => {
                let ch = slot(&mut f.channels, c.id);
                ch.scope.clone_from(&c.scope_addr);
                ch.source = c.source;
                ch.target = c.target;
            }
            TimelyEvent::Schedule(s) => match s.start_stop {
                StartStop::Start => self.stack.push((s.id, at, Duration::ZERO)),
                StartStop::Stop => {
                    if let Some((id, start, children)) = self.stack.pop() {
                        let total = at.saturating_sub(start);
                        let op = slot(&mut f.operators, id);
                        op.activations += 1;
                        op.busy_ns += total.saturating_sub(children).as_nanos() as u64;
                        if let Some(parent) = self.stack.last_mut() {
                            parent.2 += total;
                        }
                    }
                }
            },
            TimelyEvent::Messages(m) => {
                let ch = slot(&mut f.channels, m.channel);
                let n = m.record_count.max(0) as u64;
                if m.is_send {
                    ch.sent += n;
                } else {
                    ch.received += n;
                }
                ch.crossed |= m.source != m.target;
            }
            _ => {}
        }
    }

    fn differential(&mut self, event: &DifferentialEvent) {
        let ops = &mut self.figures.operators;
        let (op, batches, records) = match event {
            DifferentialEvent::Batch(b) => (b.operator, 1, b.length as i64),
            DifferentialEvent::Merge(m) => match m.complete {
                Some(done) => (
                    m.operator,
                    -1,
                    done as i64 - m.length1 as i64 - m.length2 as i64,
                ),
                None => return,
            },
            DifferentialEvent::Drop(d) => (d.operator, -1, -(d.length as i64)),
            _ => return,
        };
        let held = slot(ops, op).arrangement.get_or_insert((0, 0));
        held.0 += batches;
        held.1 += records;
    }

    /// Copies the sums out if the last copy is older than [`PUBLISH_EVERY`] (or `now`).
    fn publish(&mut self, at: Duration, now: bool) {
        let Some(published) = &self.published else {
            return;
        };
        if now
            || self
                .last_publish
                .is_none_or(|l| at >= l.saturating_add(PUBLISH_EVERY))
        {
            published.put(self.worker, &self.figures);
            self.last_publish = Some(at);
        }
    }
}

/// A worker's handle on its sums: publish them at its end, print them (`VTPGA_PROFILE`).
pub struct Installed {
    log: std::rc::Rc<std::cell::RefCell<WorkerLog>>,
    profile: bool,
}

/// Installs the loggers on `worker` when there is somewhere to publish to or
/// `VTPGA_PROFILE` is set; call before building dataflows.
pub fn install(
    worker: &mut timely::worker::Worker,
    published: Option<Arc<Published>>,
) -> Option<Installed> {
    let profile = std::env::var_os("VTPGA_PROFILE").is_some();
    if published.is_none() && !profile {
        return None;
    }
    let log = std::rc::Rc::new(std::cell::RefCell::new(WorkerLog {
        worker: worker.index(),
        figures: WorkerFigures::default(),
        stack: Vec::new(),
        last_publish: None,
        published,
    }));
    let mut register = worker.log_register()?;
    let sink = log.clone();
    register.insert::<TimelyEventBuilder, _>("timely", move |time, data| {
        let mut log = sink.borrow_mut();
        match data {
            Some(data) => {
                for (at, event) in data.iter() {
                    log.timely(*at, event);
                }
            }
            // A flush (each step of the worker).
            None => log.publish(*time, false),
        }
    });
    let sink = log.clone();
    register.insert::<DifferentialEventBuilder, _>("differential/arrange", move |_, data| {
        if let Some(data) = data {
            let mut log = sink.borrow_mut();
            for (_, event) in data.iter() {
                log.differential(event);
            }
        }
    });
    Some(Installed { log, profile })
}

impl Installed {
    /// The worker ended: its last sums go out, and the profile is printed if asked for.
    pub fn finish(self) {
        let mut log = self.log.borrow_mut();
        let at = log.last_publish.unwrap_or_default();
        log.publish(at, true);
        if self.profile {
            eprint!("{}", profile_text(log.worker, &log.figures));
        }
    }
}

/// The operators of one worker by busy time, largest first.
fn profile_text(worker: usize, f: &WorkerFigures) -> String {
    let mut rows: Vec<(usize, &OperatorFig)> = f
        .operators
        .iter()
        .enumerate()
        .filter_map(|(id, o)| Some((id, o.as_ref()?)))
        .collect();
    rows.sort_by_key(|(_, o)| std::cmp::Reverse(o.busy_ns));
    let total: u64 = rows.iter().map(|(_, o)| o.busy_ns).sum();
    let mut out = format!(
        "profile of worker {worker}: {:?} in operators\n",
        Duration::from_nanos(total)
    );
    for (id, o) in rows.iter().take(25) {
        let _ = writeln!(
            out,
            "  {:>10.1} ms {:>5.1}% {:>8} runs  {} (#{id})",
            o.busy_ns as f64 / 1e6,
            100.0 * o.busy_ns as f64 / (total.max(1) as f64),
            o.activations,
            o.name
        );
    }
    out
}

/// Cumulative counters of one operator on one worker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Counters {
    pub activations: u64,
    pub elapsed_us: u64,
    pub records_in: u64,
    pub records_out: u64,
}

impl Counters {
    fn minus(self, o: Counters) -> Counters {
        Counters {
            activations: self.activations.saturating_sub(o.activations),
            elapsed_us: self.elapsed_us.saturating_sub(o.elapsed_us),
            records_in: self.records_in.saturating_sub(o.records_in),
            records_out: self.records_out.saturating_sub(o.records_out),
        }
    }
}

/// One operator's figures on one worker: totals, and over the window.
#[derive(Clone, Debug, Serialize)]
pub struct WorkerRow {
    pub worker: usize,
    pub activations: u64,
    pub elapsed_us: u64,
    pub records_in: u64,
    pub records_out: u64,
    pub window: Counters,
}

#[derive(Clone, Debug, Serialize)]
pub struct Arrangement {
    pub batches: i64,
    pub records: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct OperatorRow {
    pub id: usize,
    pub name: String,
    /// The address of the scope holding it (timely's `addr` without its own index).
    pub scope: Vec<usize>,
    pub addr: Vec<usize>,
    pub workers: Vec<WorkerRow>,
    /// Summed over this process's workers, over the window.
    pub window: Counters,
    /// Summed over this process's workers, since the start.
    pub totals: Counters,
    /// Batches and records held (summed over the workers), for an arrangement.
    pub arrangement: Option<Arrangement>,
}

#[derive(Clone, Debug, Serialize)]
pub struct EdgeRow {
    /// Timely's channel identifier.
    pub id: usize,
    pub from: usize,
    pub from_port: usize,
    pub to: usize,
    pub to_port: usize,
    pub exchange: bool,
    /// The edge back into a loop (out of timely's `Feedback` operator).
    pub feedback: bool,
    /// Records pushed on it by this process's workers, since the start.
    pub records: u64,
    /// Over the window.
    pub window_records: u64,
    pub records_per_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct View {
    pub operators: Vec<OperatorRow>,
    pub edges: Vec<EdgeRow>,
    /// The window the `window` figures cover (the samples nearest the one asked for).
    pub window_ms: u64,
    /// The process answering, of how many, and the workers whose figures it has: a
    /// process reports its own workers; each process of a cluster serves its own view.
    pub process: usize,
    pub processes: usize,
    pub workers_reported: Vec<usize>,
    pub workers_total: usize,
}

/// The merged, cumulative figures at one moment.
#[derive(Clone, Default)]
struct Sample {
    /// (operator, worker) → counters.
    operators: BTreeMap<(usize, usize), Counters>,
    /// channel → records pushed.
    channels: BTreeMap<usize, u64>,
}

/// The graph of one process, as [`install`]ed workers publish it.
pub struct DataflowView {
    published: Arc<Published>,
    history: Mutex<VecDeque<(Instant, Sample)>>,
    process: usize,
    processes: usize,
    workers_total: usize,
}

/// The structure and figures merged from the workers' sums.
struct Merged {
    sample: Sample,
    /// operator → (name, address, arrangement).
    operators: BTreeMap<usize, (String, Vec<usize>, Option<Arrangement>)>,
    /// channel → (from, from port, to, to port, exchange, feedback).
    edges: BTreeMap<usize, (usize, usize, usize, usize, bool, bool)>,
    workers: Vec<usize>,
}

impl DataflowView {
    pub fn new(process: usize, processes: usize, workers_total: usize) -> Arc<Self> {
        Arc::new(DataflowView {
            published: Arc::new(Published::default()),
            history: Mutex::new(VecDeque::new()),
            process,
            processes,
            workers_total,
        })
    }

    /// Where this process's workers publish (give it to [`install`]).
    pub fn published(&self) -> Arc<Published> {
        self.published.clone()
    }

    /// Takes a sample for the sliding window; call every [`SAMPLE_EVERY`]
    /// ([`DataflowView::spawn_sampler`] does).
    pub fn sample(&self) {
        let merged = self.merge();
        let now = Instant::now();
        let mut history = self.history.lock().expect("dataflow history");
        history.push_back((now, merged.sample));
        while history
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > MAX_WINDOW + SAMPLE_EVERY)
        {
            history.pop_front();
        }
    }

    /// Samples every [`SAMPLE_EVERY`] on a thread of its own, while anything but the
    /// thread holds the view.
    pub fn spawn_sampler(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let _ = std::thread::Builder::new()
            .name("vtpga-dataflow-view".into())
            .spawn(move || {
                while let Some(view) = weak.upgrade() {
                    view.sample();
                    drop(view);
                    std::thread::sleep(SAMPLE_EVERY);
                }
            });
    }

    fn merge(&self) -> Merged {
        let workers = self.published.snapshot();
        let mut merged = Merged {
            sample: Sample::default(),
            operators: BTreeMap::new(),
            edges: BTreeMap::new(),
            workers: workers.keys().copied().collect(),
        };
        for (&worker, f) in &workers {
            let ops: Vec<(usize, &OperatorFig)> = f
                .operators
                .iter()
                .enumerate()
                .filter_map(|(id, o)| Some((id, o.as_ref().filter(|o| !o.addr.is_empty())?)))
                .collect();
            // A scope (a dataflow) is drawn as what it holds.
            let scopes: std::collections::HashSet<&[usize]> = ops
                .iter()
                .filter_map(|(_, o)| o.addr.split_last().map(|(_, s)| s))
                .collect();
            let by_addr: HashMap<&[usize], usize> = ops
                .iter()
                .filter(|(_, o)| !scopes.contains(o.addr.as_slice()))
                .map(|(id, o)| (o.addr.as_slice(), *id))
                .collect();
            for (id, o) in &ops {
                if !by_addr.contains_key(o.addr.as_slice()) {
                    continue;
                }
                let entry = merged
                    .operators
                    .entry(*id)
                    .or_insert_with(|| (o.name.clone(), o.addr.clone(), None));
                if let Some((batches, records)) = o.arrangement {
                    let a = entry.2.get_or_insert(Arrangement {
                        batches: 0,
                        records: 0,
                    });
                    a.batches += batches;
                    a.records += records;
                }
                merged.sample.operators.insert(
                    (*id, worker),
                    Counters {
                        activations: o.activations,
                        elapsed_us: o.busy_ns / 1_000,
                        ..Counters::default()
                    },
                );
            }
            // Records out once per output port: every channel of a port carries the same.
            let mut port_out: HashMap<(usize, usize), u64> = HashMap::new();
            for (cid, c) in f
                .channels
                .iter()
                .enumerate()
                .filter_map(|(id, c)| Some((id, c.as_ref()?)))
            {
                let node = |n: usize| {
                    let mut addr = c.scope.clone();
                    addr.push(n);
                    by_addr.get(addr.as_slice()).copied()
                };
                // Node 0 of a scope is its boundary: not an operator.
                let (Some(from), Some(to)) = (
                    (c.source.0 != 0).then(|| node(c.source.0)).flatten(),
                    (c.target.0 != 0).then(|| node(c.target.0)).flatten(),
                ) else {
                    continue;
                };
                let feedback = f.operators[from]
                    .as_ref()
                    .is_some_and(|o| o.name == FEEDBACK);
                let edge = merged
                    .edges
                    .entry(cid)
                    .or_insert((from, c.source.1, to, c.target.1, false, feedback));
                edge.4 |= c.crossed;
                *merged.sample.channels.entry(cid).or_default() += c.sent;
                let out = port_out.entry((from, c.source.1)).or_default();
                *out = (*out).max(c.sent);
                if let Some(counters) = merged.sample.operators.get_mut(&(to, worker)) {
                    counters.records_in += c.received;
                }
            }
            for ((op, _), n) in port_out {
                if let Some(counters) = merged.sample.operators.get_mut(&(op, worker)) {
                    counters.records_out += n;
                }
            }
        }
        merged
    }

    /// The view, with figures over the window nearest `window` (at most [`MAX_WINDOW`]).
    pub fn view(&self, window: Duration) -> View {
        let merged = self.merge();
        let now = Instant::now();
        let window = window.min(MAX_WINDOW);
        let (base, covered) = {
            let history = self.history.lock().expect("dataflow history");
            // The newest sample at least `window` old, or the oldest there is.
            let pick = history
                .iter()
                .rev()
                .find(|(at, _)| now.duration_since(*at) >= window)
                .or_else(|| history.front());
            match pick {
                Some((at, s)) => (s.clone(), now.duration_since(*at)),
                None => (Sample::default(), Duration::ZERO),
            }
        };
        let secs = covered.as_secs_f64();
        let operators = merged
            .operators
            .into_iter()
            .map(|(id, (name, addr, arrangement))| {
                let workers: Vec<WorkerRow> = merged
                    .workers
                    .iter()
                    .filter_map(|&w| {
                        let c = *merged.sample.operators.get(&(id, w))?;
                        let then = base.operators.get(&(id, w)).copied().unwrap_or_default();
                        Some(WorkerRow {
                            worker: w,
                            activations: c.activations,
                            elapsed_us: c.elapsed_us,
                            records_in: c.records_in,
                            records_out: c.records_out,
                            window: c.minus(then),
                        })
                    })
                    .collect();
                let sum = |f: &dyn Fn(&WorkerRow) -> Counters| {
                    workers
                        .iter()
                        .map(f)
                        .fold(Counters::default(), |a, b| Counters {
                            activations: a.activations + b.activations,
                            elapsed_us: a.elapsed_us + b.elapsed_us,
                            records_in: a.records_in + b.records_in,
                            records_out: a.records_out + b.records_out,
                        })
                };
                OperatorRow {
                    id,
                    name,
                    scope: addr[..addr.len().saturating_sub(1)].to_vec(),
                    addr,
                    window: sum(&|w| w.window),
                    totals: sum(&|w| Counters {
                        activations: w.activations,
                        elapsed_us: w.elapsed_us,
                        records_in: w.records_in,
                        records_out: w.records_out,
                    }),
                    workers,
                    arrangement,
                }
            })
            .collect();
        let edges = merged
            .edges
            .iter()
            .map(
                |(&id, &(from, from_port, to, to_port, exchange, feedback))| {
                    let records = merged.sample.channels.get(&id).copied().unwrap_or(0);
                    let window_records =
                        records.saturating_sub(base.channels.get(&id).copied().unwrap_or(0));
                    EdgeRow {
                        id,
                        from,
                        from_port,
                        to,
                        to_port,
                        exchange,
                        feedback,
                        records,
                        window_records,
                        records_per_s: if secs > 0.0 {
                            window_records as f64 / secs
                        } else {
                            0.0
                        },
                    }
                },
            )
            .collect();
        View {
            operators,
            edges,
            window_ms: covered.as_millis() as u64,
            process: self.process,
            processes: self.processes,
            workers_reported: merged.workers,
            workers_total: self.workers_total,
        }
    }

    /// The view as JSON.
    pub fn json(&self, window: Duration) -> Value {
        serde_json::to_value(self.view(window)).unwrap_or(Value::Null)
    }

    /// Per-operator counters for `/metrics` (labels: operator, id, worker).
    pub fn metrics(&self) -> String {
        let view = self.view(DEFAULT_WINDOW);
        let mut out = String::new();
        let families: [MetricFamily; 4] = [
            (
                "vtpga_operator_busy_seconds_total",
                "Time a worker spent in the operator (timely's schedule log, children excluded).",
                "counter",
                |w| w.elapsed_us as f64 / 1e6,
            ),
            (
                "vtpga_operator_activations_total",
                "Times a worker scheduled the operator.",
                "counter",
                |w| w.activations as f64,
            ),
            (
                "vtpga_operator_records_in_total",
                "Records the operator pulled from its input channels.",
                "counter",
                |w| w.records_in as f64,
            ),
            (
                "vtpga_operator_records_out_total",
                "Records the operator pushed, once per output port.",
                "counter",
                |w| w.records_out as f64,
            ),
        ];
        for (name, help, kind, value) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for op in &view.operators {
                for w in &op.workers {
                    let _ = writeln!(
                        out,
                        "{name}{{operator=\"{}\",id=\"{}\",worker=\"{}\"}} {}",
                        label(&op.name),
                        op.id,
                        w.worker,
                        value(w)
                    );
                }
            }
        }
        out
    }
}

/// A metric of the per-operator figures: name, help, type, value of a worker's row.
type MetricFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&WorkerRow) -> f64,
);

/// A Prometheus label value: backslash, quote and newline escaped.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl vtpga_web::DataflowSource for DataflowView {
    fn view(&self, window: Duration) -> Value {
        self.json(window)
    }

    fn metrics(&self) -> String {
        DataflowView::metrics(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use differential_dataflow::input::Input as _;
    use timely::dataflow::channels::pact::Exchange;
    use timely::dataflow::operators::vec::{Filter, Map};
    use timely::dataflow::operators::{Concat, ConnectLoop, Feedback, Input, Operator, Probe};

    /// Two workers: 100 records each pushed through an exchange into a named operator,
    /// and a loop around it; a small arrangement beside it. The view names the operators
    /// as the graph did, counts the records on each edge, and sees the exchange, the
    /// feedback edge and the arrangement.
    #[test]
    fn the_view_counts_what_timely_logged() {
        let view = DataflowView::new(0, 1, 2);
        let published = view.published();
        timely::execute(timely::Config::process(2), move |worker| {
            let logged = install(worker, Some(published.clone())).expect("installed");
            let probe = timely::dataflow::ProbeHandle::new();
            let (mut input, mut pairs, trace) = worker.dataflow::<u64, _, _>(|scope| {
                let (input, stream) = scope.new_input::<Vec<u64>>();
                let (handle, cycle) = scope.feedback::<Vec<u64>>(1);
                let named =
                    stream
                        .concat(cycle)
                        .unary(Exchange::new(|x: &u64| *x / 2), "Named", |_, _| {
                            |input, output| {
                                input.for_each(|time, data| {
                                    output.session(&time).give_container(data);
                                });
                            }
                        });
                // One trip around the loop: each record comes back once, as x + 1000.
                named
                    .clone()
                    .filter(|x| *x < 1000)
                    .map(|x| x + 1000)
                    .connect_loop(handle);
                named.probe_with(&probe);
                let (pairs, collection) = scope.new_collection::<(u64, u64), isize>();
                let arranged = collection.arrange_by_key();
                arranged.stream.clone().probe_with(&probe);
                (input, pairs, arranged.trace)
            });
            for x in 0..100u64 {
                input.send(x * 2 + worker.index() as u64);
                pairs.update((x, x), 1);
            }
            drop(input);
            drop(pairs);
            // Past the loop's second round (records come back once, at time 1).
            while probe.less_than(&2) {
                worker.step();
            }
            logged.finish();
            drop(trace);
        })
        .expect("timely runs");
        let v = view.view(DEFAULT_WINDOW);
        assert_eq!(v.workers_reported, vec![0, 1]);
        let named = v
            .operators
            .iter()
            .find(|o| o.name == "Named")
            .expect("the named operator");
        // 200 records in, 200 back around the loop; each worker took half.
        assert_eq!(named.totals.records_in, 400);
        assert_eq!(named.totals.records_out, 400);
        assert_eq!(named.workers.len(), 2);
        for w in &named.workers {
            assert_eq!(w.records_in, 200, "worker {}", w.worker);
            assert!(w.activations > 0);
        }
        let name_of = |id: usize| {
            v.operators
                .iter()
                .find(|o| o.id == id)
                .map(|o| o.name.as_str())
        };
        let into_named: Vec<&EdgeRow> = v.edges.iter().filter(|e| e.to == named.id).collect();
        assert_eq!(into_named.len(), 1, "{into_named:?}");
        assert!(into_named[0].exchange && into_named[0].records == 400);
        let concat = into_named[0].from;
        let mut into_concat: Vec<(Option<&str>, bool, bool, u64)> = v
            .edges
            .iter()
            .filter(|e| e.to == concat)
            .map(|e| (name_of(e.from), e.feedback, e.exchange, e.records))
            .collect();
        into_concat.sort();
        assert_eq!(
            into_concat,
            vec![
                (Some(FEEDBACK), true, false, 200),
                (Some("Input"), false, false, 200)
            ]
        );
        let arranged: Vec<&Arrangement> = v
            .operators
            .iter()
            .filter_map(|o| o.arrangement.as_ref())
            .collect();
        // Both workers added the same 100 pairs: 100 records, each with diff 2.
        assert_eq!(arranged.len(), 1, "{arranged:?}");
        assert_eq!(arranged[0].records, 100);
        let metrics = view.metrics();
        assert!(
            metrics.contains(&format!(
                "vtpga_operator_records_in_total{{operator=\"Named\",id=\"{}\",worker=\"1\"}} 200",
                named.id
            )),
            "{metrics}"
        );
    }

    /// While the dataflow runs, an arrangement reports the records it holds.
    #[test]
    fn an_arrangement_reports_what_it_holds() {
        timely::execute(timely::Config::thread(), |worker| {
            let published = Arc::new(Published::default());
            let logged = install(worker, Some(published.clone())).expect("installed");
            let probe = timely::dataflow::ProbeHandle::new();
            // The trace is held (an arrangement nobody reads keeps no batches).
            let (mut pairs, _trace) = worker.dataflow::<u64, _, _>(|scope| {
                let (pairs, collection) = scope.new_collection::<(u64, u64), isize>();
                let arranged = collection.arrange_by_key_named("Held");
                arranged.stream.clone().probe_with(&probe);
                (pairs, arranged.trace)
            });
            for x in 0..150u64 {
                pairs.update((x, x), 1);
            }
            pairs.advance_to(1);
            pairs.flush();
            while probe.less_than(&1) {
                worker.step();
            }
            let log = logged.log.borrow();
            let held = log
                .figures
                .operators
                .iter()
                .flatten()
                .find(|o| o.name == "Held")
                .and_then(|o| o.arrangement)
                .expect("the arrangement's figures");
            assert_eq!(held.1, 150);
            assert!(held.0 >= 1);
        })
        .expect("timely runs");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}

//! The live state the dashboard and the API read: the accumulated analysis rows, the newest
//! decision records (with an index by transaction id), counters by status, the decision
//! latency and batch size histograms, the figures of the pipeline's health, and the live
//! changes of SPEC §11 (rule sets, reference changes, users as of now: `crate::controls`).
//!
//! In embedded mode the pipeline's write path feeds it (a consumer thread) ([`LiveState::observe`] for every
//! batch); in standalone mode a follower thread mirrors Redis into it (`crate::follow`).
//! Readers take a short lock; the pusher task of the server turns what changed since its
//! previous push into one Server-Sent Event ([`LiveState::take_change`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};
use tokio::sync::Notify;

use vtpga_dataflow::analyses::{self, AnalysisKey, Tally, WhatIfKey, WhatIfTally, NAMES};
use vtpga_dataflow::graph::{ControlOutcome, Decision, RuleChange};
use vtpga_dataflow::model::{RuleSet, User};
use vtpga_dataflow::record::DecisionRecord;
use vtpga_dataflow::Status;
use vtpga_sinks::Batch;

use crate::controls::{self, Controls, RuleEntry, UserLookup};

/// How many of the newest decision records the state keeps (and indexes by id).
pub const RECENT_LIMIT: usize = 500;

/// Default of how many event-time minutes of per-minute rows the live views keep
/// (`WebLimits::live_minutes`): a day.
pub const DEFAULT_LIVE_MINUTES: usize = 1_440;

/// Upper bounds (seconds) of the decision latency histogram of `/metrics`.
pub const LATENCY_BUCKETS_S: [f64; 15] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Upper bounds (decisions) of the batch size histogram of `/metrics`.
pub const BATCH_BUCKETS: [u64; 7] = [1, 10, 100, 1_000, 10_000, 100_000, 1_000_000];

/// Seconds of throughput the health figures average over.
const RATE_WINDOW_S: u64 = 5;
/// The latency quantiles of the health figures cover the last 5–10 seconds.
const LATENCY_WINDOW: Duration = Duration::from_secs(5);

/// Whether the state is fed by the pipeline in this process or mirrors Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Embedded,
    Standalone,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Embedded => "embedded",
            Mode::Standalone => "standalone",
        }
    }
}

/// One kept decision record: the decision as observed (rendered as JSON on first use,
/// so that a fast pipeline pays for the few records anyone reads), or a record read
/// from Redis.
struct Entry {
    seq: u64,
    id: Option<String>,
    /// Standalone: the recent-set member `{partition}:{offset}`.
    member: Option<String>,
    source: Source,
    rendered: OnceLock<Arc<Value>>,
}

enum Source {
    Decision(Box<Decision>, u64),
    Json,
}

impl Entry {
    fn record(&self) -> Arc<Value> {
        self.rendered
            .get_or_init(|| match &self.source {
                Source::Decision(d, decided_at_ms) => {
                    let mut v = serde_json::to_value(DecisionRecord::of(d)).unwrap_or(Value::Null);
                    if let Value::Object(m) = &mut v {
                        m.insert("decided_at_ms".into(), (*decided_at_ms).into());
                    }
                    Arc::new(v)
                }
                Source::Json => Arc::new(Value::Null),
            })
            .clone()
    }
}

/// A cumulative-by-bucket histogram for Prometheus (counts per bucket, not cumulative).
#[derive(Clone, Debug, Default)]
struct Buckets {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Buckets {
    fn new(n: usize) -> Self {
        Buckets {
            counts: vec![0; n + 1],
            sum: 0.0,
            count: 0,
        }
    }

    fn record(&mut self, index: usize, value: f64) {
        self.counts[index] += 1;
        self.sum += value;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, bounds: &[String]) {
        let mut cumulative = 0;
        for (i, b) in bounds.iter().enumerate() {
            cumulative += self.counts[i];
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        cumulative += self.counts[bounds.len()];
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

fn latency_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 2).expect("valid bounds")
}

struct Inner {
    mode: Mode,
    rows: BTreeMap<AnalysisKey, Tally>,
    /// How many event-time minutes of per-minute rows `rows` keeps (SPEC §10).
    minute_limit: usize,
    /// The minutes that have rows, of `minute_frequency` and of `distance_band_outcome`
    /// (an emptied minute may linger until it is the oldest: the bound still holds).
    minutes: [BTreeSet<i64>; 2],
    /// The newest minute dropped by the bound, of each: ranges reaching it are incomplete
    /// here.
    dropped_through: [Option<i64>; 2],
    recent: VecDeque<Arc<Entry>>,
    next_seq: u64,
    by_id: HashMap<String, Vec<u64>>,
    by_member: HashMap<String, u64>,
    counts: [u64; 9],
    latency: Buckets,
    batches: Buckets,
    /// Latency (µs) of the current and the previous window, for the health quantiles.
    window_cur: Histogram<u64>,
    window_prev: Histogram<u64>,
    window_started: Instant,
    /// Decisions per second since `started` (second index, count), the last few seconds.
    per_second: VecDeque<(u64, u64)>,
    consumer_lag: Option<i64>,
    /// Prometheus lines about the pipeline itself (offset accounting, guarded clocks,
    /// quarantined rows, delivery failures), rendered by its monitor thread.
    pipeline_metrics: String,
    closed_time: Option<u64>,
    last_batch_at: Option<Instant>,
    /// Standalone: whether the follower reaches Redis. Its errors go to the log only
    /// (issue 12: no internal error text reaches clients).
    redis: Option<bool>,
    // What changed since the last push.
    changed: BTreeSet<AnalysisKey>,
    changed_all: bool,
    /// The last record sequence number a change event carried.
    pushed_seq: u64,
    /// The number of the last change event taken (snapshots carry it).
    event_seq: u64,
    /// Rule sets, reference changes, users (SPEC §11).
    controls: Controls,
}

/// Live state, fed by the pipeline's write path (embedded) or by the Redis follower
/// (standalone). Share it as an `Arc`; every method takes `&self`.
pub struct LiveState {
    inner: Mutex<Inner>,
    notify: Notify,
    started: Instant,
    workers: usize,
    /// The operator graph of the pipeline in this process, when it logs one (issue 16).
    dataflow: std::sync::OnceLock<Arc<dyn DataflowSource>>,
    /// The shadow rule sets' analyses and what-if rows (SPEC §12), in the graph's order.
    shadows: Mutex<Vec<ShadowLive>>,
}

/// What the live state keeps of one shadow rule set.
struct ShadowLive {
    rules: RuleSet,
    rows: BTreeMap<AnalysisKey, Tally>,
    what_if: BTreeMap<WhatIfKey, WhatIfTally>,
}

impl ShadowLive {
    /// Keeps the per-minute rows of the newest `minutes` event-time minutes only, once
    /// there are clearly more (SPEC §10: bounded, as the rows of record are).
    fn bound_minutes(&mut self, minutes: usize) {
        if self.rows.len() <= minutes * 6 + 256 {
            return;
        }
        let minute_of = |k: &AnalysisKey| match k {
            AnalysisKey::Minute(m) | AnalysisKey::DistanceMinute(m, _) => Some(*m),
            _ => None,
        };
        let mut seen: Vec<i64> = self.rows.keys().filter_map(minute_of).collect();
        seen.sort_unstable();
        seen.dedup();
        if seen.len() <= minutes {
            return;
        }
        let cutoff = seen[seen.len() - minutes];
        self.rows
            .retain(|k, _| minute_of(k).is_none_or(|m| m >= cutoff));
    }
}

/// The live operator graph of the pipeline running in this process (issue 16): what
/// `GET /api/dataflow`, the `dataflow` stream event and the per-operator lines of
/// `/metrics` show.
pub trait DataflowSource: Send + Sync {
    /// The graph, with figures over the `window` nearest the one asked for.
    fn view(&self, window: std::time::Duration) -> Value;
    /// Prometheus lines (`# HELP`, `# TYPE`, samples) of the per-operator figures.
    fn metrics(&self) -> String;
}

/// The change event the pusher sends: what changed since the previous one.
pub(crate) struct Change {
    pub seq: u64,
    pub json: String,
}

impl LiveState {
    /// An empty state of a pipeline with `workers` workers (shown on the health panel).
    pub fn new(workers: usize) -> Arc<Self> {
        Self::with_mode(workers, Mode::Embedded)
    }

    pub(crate) fn with_mode(workers: usize, mode: Mode) -> Arc<Self> {
        Arc::new(LiveState {
            inner: Mutex::new(Inner {
                mode,
                rows: BTreeMap::new(),
                minute_limit: DEFAULT_LIVE_MINUTES,
                minutes: [BTreeSet::new(), BTreeSet::new()],
                dropped_through: [None, None],
                recent: VecDeque::with_capacity(RECENT_LIMIT + 1),
                next_seq: 0,
                by_id: HashMap::new(),
                by_member: HashMap::new(),
                counts: [0; 9],
                latency: Buckets::new(LATENCY_BUCKETS_S.len()),
                batches: Buckets::new(BATCH_BUCKETS.len()),
                window_cur: latency_hist(),
                window_prev: latency_hist(),
                window_started: Instant::now(),
                per_second: VecDeque::new(),
                consumer_lag: None,
                pipeline_metrics: String::new(),
                closed_time: None,
                last_batch_at: None,
                redis: if mode == Mode::Standalone {
                    Some(false)
                } else {
                    None
                },
                changed: BTreeSet::new(),
                changed_all: false,
                pushed_seq: 0,
                event_seq: 0,
                controls: Controls::new(),
            }),
            notify: Notify::new(),
            started: Instant::now(),
            workers,
            dataflow: std::sync::OnceLock::new(),
            shadows: Mutex::new(Vec::new()),
        })
    }

    /// The shadow rule sets the pipeline decides beside the rules of record (SPEC §12),
    /// in the order of the graph's shadow indexes.
    pub fn set_shadows(&self, sets: &[RuleSet]) {
        *self.shadows.lock().unwrap_or_else(|e| e.into_inner()) = sets
            .iter()
            .map(|rules| ShadowLive {
                rules: rules.clone(),
                rows: BTreeMap::new(),
                what_if: BTreeMap::new(),
            })
            .collect();
    }

    /// Takes in the shadows' part of a batch.
    fn observe_shadows(&self, batch: &Batch, minutes: usize) {
        if batch.shadows.is_empty() {
            return;
        }
        let mut shadows = self.shadows.lock().unwrap_or_else(|e| e.into_inner());
        for (shadow, part) in shadows.iter_mut().zip(&batch.shadows) {
            analyses::apply_changes(&mut shadow.rows, part.analyses.iter().cloned());
            analyses::apply_what_if(&mut shadow.what_if, part.what_if.iter().cloned());
            shadow.bound_minutes(minutes);
        }
    }

    /// `GET /api/whatif`: each shadow's rule set, the messages it decided, and its
    /// what-if rows (SPEC §12) as of the last batch.
    pub fn what_if_json(&self) -> Value {
        let copies: Vec<(RuleSet, BTreeMap<WhatIfKey, WhatIfTally>)> = self
            .shadows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|s| (s.rules.clone(), s.what_if.clone()))
            .collect();
        self.rendering();
        let shadows: Vec<Value> = copies
            .into_iter()
            .map(|(rules, rows)| {
                // Every message decided is in one row.
                let decided: i64 = rows.values().map(|t| t.count).sum();
                json!({
                    "version": rules.version,
                    "rules": {
                        "version": rules.version,
                        "risk_threshold": rules.risk_threshold,
                        "max_delay_ms": rules.max_delay_ms,
                        "dedup_window_ms": rules.dedup_window_ms,
                    },
                    "decided": decided,
                    "what_if": analyses::what_if_json(&rules.version, &rows),
                })
            })
            .collect();
        json!({ "shadows": shadows })
    }

    /// `GET /api/shadows/{version}/analyses`: the shadow's ten analyses as SPEC §8 JSON;
    /// `None` when no shadow has that version.
    pub fn shadow_analyses_json(&self, version: &str) -> Option<Value> {
        let rows = self
            .shadows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|s| s.rules.version == version)?
            .rows
            .clone();
        self.rendering();
        Some(analyses::to_json(&rows))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps the per-minute rows of the newest `minutes` event-time minutes only (at least
    /// one), per analysis (SPEC §10: bounded live state).
    pub fn set_live_minutes(&self, minutes: usize) {
        let mut inner = self.lock();
        inner.minute_limit = minutes.max(1);
        inner.bound_minutes();
        drop(inner);
        self.notify.notify_one();
    }

    /// Whether rows of analysis `name` at or after minute `from` (from the first when
    /// `None`) were dropped by the bound: the live answer to that range is incomplete.
    pub(crate) fn dropped_from(&self, name: &str, from: Option<i64>) -> bool {
        let Some(i) = minute_index(name) else {
            return false;
        };
        self.lock().dropped_through[i].is_some_and(|d| from.is_none_or(|f| f <= d))
    }

    /// Test builds: fails when called with the state's lock held (rendering JSON under it
    /// would stall the consumer thread).
    fn rendering(&self) {
        #[cfg(test)]
        assert!(
            self.inner.try_lock().is_ok(),
            "JSON rendered while holding the state lock"
        );
    }

    /// Replaces the analysis rows (after a restart: the rows the pipeline resumed from).
    pub fn seed_analyses(&self, rows: BTreeMap<AnalysisKey, Tally>) {
        let mut inner = self.lock();
        inner.rows = rows;
        inner.changed_all = true;
        inner.rebuild_minutes();
        inner.bound_minutes();
        drop(inner);
        self.notify.notify_one();
    }

    /// The rule set in force from the start (`--rules`, or the defaults under version
    /// `"default"`: what a new state assumes) and the rule changes applied before a resume
    /// point (the `history` the graph is given), replacing the rule history the state
    /// holds. The initial set is listed first, with effective time 0 and no position.
    pub fn seed_rules(&self, initial: &RuleSet, history: &[RuleChange]) {
        self.lock().controls.seed_rules(initial, history);
        self.notify.notify_one();
    }

    /// The control records accepted before a restart and still to take effect, as
    /// `Scheduled` outcomes: the graph does not report a resumed record as scheduled again
    /// (its arrival was recorded before), so the live view lists them as pending from
    /// here until their final outcome arrives.
    pub fn seed_pending(&self, scheduled: &[ControlOutcome]) {
        let json: Vec<Arc<Value>> = scheduled.iter().map(controls::outcome_json).collect();
        let mut inner = self.lock();
        inner.controls.observe(scheduled, json, &[], 0);
        drop(inner);
        self.notify.notify_one();
    }

    /// Users in force from the start (the initial reference data), so that
    /// `/api/users/{id}` answers for them without PostgreSQL. At most `live_users` (see
    /// [`LiveState::set_live_users`]) are kept, users changed by control records
    /// included: seeding more keeps only some of them (a user changed by a control record
    /// later is kept again).
    pub fn seed_users(&self, users: impl IntoIterator<Item = User>) {
        self.lock().controls.seed_users(users);
    }

    /// Keeps the reference values of at most `n` users (changed by control records, or
    /// seeded) and the account states of at most `n` users seen in batches, the least
    /// recently changed forgotten first (SPEC §10: bounded live state). Default
    /// [`crate::DEFAULT_LIVE_USERS`] (100,000: a few tens of MB at most). PostgreSQL, when configured,
    /// answers for every user.
    pub fn set_live_users(&self, n: usize) {
        self.lock().controls.set_live_users(n);
    }

    /// The bound of [`LiveState::set_live_users`].
    pub(crate) fn live_users(&self) -> usize {
        self.lock().controls.live_users()
    }

    /// The rule history (oldest first; the last is in force) and the pending rule sets.
    pub(crate) fn rules(&self) -> (Vec<Arc<RuleEntry>>, Vec<Arc<RuleEntry>>) {
        self.lock().controls.rules()
    }

    /// The latest reference changes (newest first) and the pending control records.
    pub(crate) fn controls(&self) -> (Vec<Arc<Value>>, Vec<Arc<Value>>) {
        self.lock().controls.changes()
    }

    /// What the live view knows of user `id`.
    pub(crate) fn user(&self, id: &str) -> UserLookup {
        self.lock().controls.user(id)
    }

    /// Takes in one batch of the pipeline's sink, in order: what became of its control
    /// records and its account states (SPEC §11: the rule set in force, the latest
    /// reference changes, users as of now), its decisions (the newest [`RECENT_LIMIT`]
    /// kept as SPEC §8 records), its analysis changes, counters by status, and the latency
    /// of each decision from `ingest_us` to `now_us`.
    pub fn observe(&self, batch: &Batch, now_us: u64) {
        let n = batch.decisions.len();
        // Only the newest RECENT_LIMIT decisions of a batch can stay: render only those.
        let skip = n.saturating_sub(RECENT_LIMIT);
        let decided_at_ms = now_us / 1000;
        let fresh: Vec<(Option<String>, Source)> = batch.decisions[skip..]
            .iter()
            .map(|d| {
                // Everything the record shows; not the raw payload nor the analysis inputs.
                let kept = Decision {
                    pos: d.pos,
                    t: d.t,
                    ingest_us: d.ingest_us,
                    status: d.status,
                    tx: d.tx.clone(),
                    scores: d.scores,
                    reason: d.reason.clone(),
                    raw: None,
                    home_band: None,
                    uf: None,
                    rules_version: d.rules_version.clone(),
                };
                (
                    d.tx.as_ref().map(|tx| tx.id.to_string()),
                    Source::Decision(Box::new(kept), decided_at_ms),
                )
            })
            .collect();
        let control_json: Vec<Arc<Value>> =
            batch.controls.iter().map(controls::outcome_json).collect();
        let mut inner = self.lock();
        let now = Instant::now();
        inner
            .controls
            .observe(&batch.controls, control_json, &batch.accounts, batch.time);
        for d in &batch.decisions {
            inner.counts[d.status as usize] += 1;
            if d.ingest_us > 0 {
                let us = now_us.saturating_sub(d.ingest_us).max(1);
                inner.record_latency(us, now);
            }
        }
        inner.count_decisions(n as u64, self.started, now);
        let size_bucket = BATCH_BUCKETS
            .iter()
            .position(|b| n as u64 <= *b)
            .unwrap_or(BATCH_BUCKETS.len());
        inner.batches.record(size_bucket, n as f64);
        for ((key, _), _) in &batch.analyses {
            if !inner.changed.contains(key) {
                inner.changed.insert(key.clone());
            }
        }
        analyses::apply_changes(&mut inner.rows, batch.analyses.iter().cloned());
        for ((key, _), _) in &batch.analyses {
            if inner.rows.contains_key(key) {
                inner.note_minute(key);
            }
        }
        inner.bound_minutes();
        for (id, source) in fresh {
            inner.push_record(id, None, source, OnceLock::new());
        }
        inner.closed_time = Some(inner.closed_time.map_or(batch.time, |t| t.max(batch.time)));
        inner.last_batch_at = Some(now);
        let minutes = inner.minute_limit;
        drop(inner);
        self.observe_shadows(batch, minutes);
        self.notify.notify_one();
    }

    /// The consumer lag (messages behind the end of the source), shown on the health panel
    /// and in `/metrics`.
    pub fn set_health(&self, consumer_lag: Option<i64>) {
        self.lock().consumer_lag = consumer_lag;
    }

    /// Prometheus text the pipeline adds to `/metrics` (complete `# HELP`/`# TYPE`/sample
    /// lines), replacing what it set before.
    pub fn set_pipeline_metrics(&self, text: String) {
        self.lock().pipeline_metrics = text;
    }

    /// Serves the operator graph of this process's pipeline (set once; later calls are
    /// ignored).
    pub fn set_dataflow_source(&self, source: Arc<dyn DataflowSource>) {
        let _ = self.dataflow.set(source);
    }

    /// The operator graph, if this process runs the pipeline and logs it.
    pub fn dataflow(&self) -> Option<&Arc<dyn DataflowSource>> {
        self.dataflow.get()
    }

    /// The analyses as SPEC §8 JSON.
    pub fn analyses_json(&self) -> Value {
        // A copy (bounded: SPEC §10) taken quickly; rendered without the lock.
        let rows = self.lock().rows.clone();
        self.rendering();
        analyses::to_json(&rows)
    }

    /// The current rows (a copy).
    pub fn rows(&self) -> BTreeMap<AnalysisKey, Tally> {
        self.lock().rows.clone()
    }

    /// One analysis's rows, optionally only the minutes in `from..=to` (minute indexes).
    pub fn analysis_rows(&self, name: &str, from: Option<i64>, to: Option<i64>) -> Vec<Value> {
        let rows: Vec<(AnalysisKey, Tally)> = self
            .lock()
            .rows
            .iter()
            .filter(|(k, _)| analysis_name(k) == name)
            .map(|(k, t)| (k.clone(), *t))
            .collect();
        self.rendering();
        render_rows(name, rows.iter().map(|(k, t)| (k, t)), from, to)
    }

    /// The newest `limit` records, newest first.
    pub fn recent(&self, limit: usize) -> Vec<Arc<Value>> {
        let entries: Vec<Arc<Entry>> = self
            .lock()
            .recent
            .iter()
            .rev()
            .take(limit)
            .cloned()
            .collect();
        entries.iter().map(|e| e.record()).collect()
    }

    /// The kept records of transaction `id`, oldest first.
    pub fn by_id(&self, id: &str) -> Vec<Arc<Value>> {
        let inner = self.lock();
        let Some(seqs) = inner.by_id.get(id) else {
            return Vec::new();
        };
        let Some(front) = inner.recent.front().map(|e| e.seq) else {
            return Vec::new();
        };
        let entries: Vec<Arc<Entry>> = seqs
            .iter()
            .filter_map(|s| inner.recent.get((s - front) as usize))
            .cloned()
            .collect();
        drop(inner);
        entries.iter().map(|e| e.record()).collect()
    }

    /// Counts of the decisions observed by this process, by status (SPEC order).
    pub fn counts(&self) -> [u64; 9] {
        self.lock().counts
    }

    pub(crate) fn mode(&self) -> Mode {
        self.lock().mode
    }

    /// The health figures (JSON).
    pub fn health(&self) -> Value {
        let inner = self.lock();
        self.health_of(&inner)
    }

    fn health_of(&self, inner: &Inner) -> Value {
        let now = Instant::now();
        let uptime = now.duration_since(self.started);
        let rate = inner.rate(self.started, now);
        let mut window = inner.window_prev.clone();
        let _ = window.add(&inner.window_cur);
        let latency = if window.is_empty() {
            Value::Null
        } else {
            json!({
                "p50": window.value_at_quantile(0.5) as f64 / 1000.0,
                "p99": window.value_at_quantile(0.99) as f64 / 1000.0,
                "max": window.max() as f64 / 1000.0,
            })
        };
        let redis = inner.redis.map(|connected| json!({"connected": connected}));
        json!({
            "mode": inner.mode.as_str(),
            "uptime_s": (uptime.as_secs_f64() * 10.0).round() / 10.0,
            "workers": if self.workers > 0 { json!(self.workers) } else { Value::Null },
            "decisions": inner.counts.iter().sum::<u64>(),
            "tx_per_s": (rate * 10.0).round() / 10.0,
            "latency_ms": latency,
            "consumer_lag": inner.consumer_lag,
            "closed_time_ms": inner.closed_time,
            "last_batch_age_ms": inner.last_batch_at.map(|t| now.duration_since(t).as_millis() as u64),
            "redis": redis,
            "now_ms": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
        })
    }

    /// Prometheus text exposition of the counters and histograms.
    pub fn metrics(&self, extra_gauges: &[(&str, &str, f64)]) -> String {
        let inner = self.lock();
        let now = Instant::now();
        let rate = inner.rate(self.started, now);
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP vtpga_decisions_total Decisions observed by the dashboard's process, by status.\n# TYPE vtpga_decisions_total counter\n");
        for (s, n) in Status::ALL.iter().zip(inner.counts) {
            let _ = writeln!(
                out,
                "vtpga_decisions_total{{status=\"{}\"}} {n}",
                s.as_str()
            );
        }
        out.push_str("# HELP vtpga_decision_latency_seconds Decision latency, from the source taking a message in to its batch reaching the sink.\n# TYPE vtpga_decision_latency_seconds histogram\n");
        let bounds: Vec<String> = LATENCY_BUCKETS_S.iter().map(|b| b.to_string()).collect();
        inner
            .latency
            .render(&mut out, "vtpga_decision_latency_seconds", &bounds);
        out.push_str("# HELP vtpga_batch_decisions Decisions per batch leaving the graph.\n# TYPE vtpga_batch_decisions histogram\n");
        let bounds: Vec<String> = BATCH_BUCKETS.iter().map(|b| b.to_string()).collect();
        inner
            .batches
            .render(&mut out, "vtpga_batch_decisions", &bounds);
        if let Some(lag) = inner.consumer_lag {
            let _ = writeln!(out, "# HELP vtpga_consumer_lag Messages behind the end of the source topic.\n# TYPE vtpga_consumer_lag gauge\nvtpga_consumer_lag {lag}");
        }
        let mut gauges: Vec<(&str, &str, f64)> = vec![
            (
                "vtpga_decisions_per_second",
                "Decisions per second over the last 5 s.",
                rate,
            ),
            (
                "vtpga_uptime_seconds",
                "Seconds since the dashboard state was created.",
                now.duration_since(self.started).as_secs_f64(),
            ),
            (
                "vtpga_analysis_rows",
                "Analysis rows held.",
                inner.rows.len() as f64,
            ),
        ];
        if self.workers > 0 {
            gauges.push((
                "vtpga_workers",
                "Timely workers of the pipeline.",
                self.workers as f64,
            ));
        }
        if let Some(t) = inner.closed_time {
            gauges.push((
                "vtpga_closed_time_ms",
                "Latest closed arrival time (ms since the epoch).",
                t as f64,
            ));
        }
        if let Some(connected) = inner.redis {
            gauges.push((
                "vtpga_redis_connected",
                "Whether the dashboard reaches Redis.",
                if connected { 1.0 } else { 0.0 },
            ));
        }
        gauges.extend_from_slice(extra_gauges);
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        out.push_str(&inner.pipeline_metrics);
        drop(inner);
        if let Some(dataflow) = self.dataflow() {
            out.push_str(&dataflow.metrics());
        }
        out
    }

    /// The snapshot event: everything a new client needs, and the number of the last
    /// change event it already includes.
    pub(crate) fn snapshot(&self) -> (u64, String) {
        let inner = self.lock();
        let health = self.health_of(&inner);
        let entries: Vec<Arc<Entry>> = inner.recent.iter().rev().cloned().collect();
        let rows = inner.rows.clone();
        let seq = inner.event_seq;
        // Standalone, the state sees no control records: the page asks `/api/rules`.
        let rules = (inner.mode == Mode::Embedded).then(|| inner.controls.rules_brief());
        let (changes, _) = inner.controls.changes();
        drop(inner);
        self.rendering();
        let analyses = analyses::to_json(&rows);
        let rules = rules.map_or(Value::Null, |(f, p)| controls::rules_event_json(&f, &p));
        let json = event_json(
            json!({
                "seq": seq,
                "analyses": analyses,
                "health": health,
                "rules": rules,
                "controls": changes.iter().map(|v| &**v).collect::<Vec<&Value>>(),
            }),
            &entries,
        );
        (seq, json)
    }

    /// Takes what changed since the previous change event, as the next one: the analyses
    /// that changed (whole, except the two per-minute ones, whose changed rows are sent,
    /// a row of zeros meaning removed), the records added (newest first), the rule set in
    /// force and the pending ones (`rules`, when they changed), the reference changes
    /// added (`controls`, newest first), and health. Health alone when nothing else
    /// changed.
    pub(crate) fn take_change(&self) -> Change {
        // Under the lock: copies of the rows the event needs (bounded: the non-minute
        // analyses are small, the minute rows bounded by `minute_limit` and the changed
        // set by `changed_cap`); rendered once the lock is released.
        let mut inner = self.lock();
        inner.event_seq += 1;
        let seq = inner.event_seq;
        let health = self.health_of(&inner);
        let mut all = None;
        let mut whole: Vec<(AnalysisKey, Tally)> = Vec::new();
        let mut minute_changes: Vec<(AnalysisKey, Tally)> = Vec::new();
        let mut names: BTreeSet<&'static str> = BTreeSet::new();
        if inner.changed_all {
            all = Some(inner.rows.clone());
        } else if !inner.changed.is_empty() {
            let changed = std::mem::take(&mut inner.changed);
            names = changed
                .iter()
                .map(analysis_name)
                .filter(|n| !is_minute_analysis(n))
                .collect();
            whole = inner
                .rows
                .iter()
                .filter(|(k, _)| names.contains(analysis_name(k)))
                .map(|(k, t)| (k.clone(), *t))
                .collect();
            minute_changes = changed
                .into_iter()
                .filter(|k| minute_index(analysis_name(k)).is_some())
                .map(|k| {
                    let t = inner.rows.get(&k).copied().unwrap_or_default();
                    (k, t)
                })
                .collect();
        }
        inner.changed.clear();
        inner.changed_all = false;
        let pushed = inner.pushed_seq;
        let entries: Vec<Arc<Entry>> = inner
            .recent
            .iter()
            .rev()
            .take_while(|e| e.seq >= pushed)
            .cloned()
            .collect();
        inner.pushed_seq = inner.next_seq;
        let (rules, control_changes) = inner.controls.take_change();
        drop(inner);

        self.rendering();
        let mut analyses_out = Map::new();
        let mut minute_rows = Map::new();
        if let Some(all) = all {
            if let Value::Object(m) = analyses::to_json(&all) {
                analyses_out = m;
            }
        }
        for name in names {
            analyses_out.insert(
                name.to_owned(),
                Value::Array(render_rows(
                    name,
                    whole.iter().map(|(k, t)| (k, t)),
                    None,
                    None,
                )),
            );
        }
        for (key, t) in &minute_changes {
            let (name, row) = analyses::row_json(key, t);
            if let Value::Array(rows) = minute_rows
                .entry(name)
                .or_insert_with(|| Value::Array(Vec::new()))
            {
                rows.push(row);
            }
        }
        let mut event = json!({
            "seq": seq,
            "analyses": analyses_out,
            "minute_rows": minute_rows,
            "health": health,
            "controls": control_changes.iter().map(|v| &**v).collect::<Vec<&Value>>(),
        });
        if let Some((in_force, pending)) = rules {
            event["rules"] = controls::rules_event_json(&in_force, &pending);
        }
        let json = event_json(event, &entries);
        Change { seq, json }
    }

    /// Forgets what changed (nobody listens; a new client starts from a snapshot).
    pub(crate) fn discard_changes(&self) {
        let mut inner = self.lock();
        inner.changed.clear();
        inner.changed_all = false;
        inner.pushed_seq = inner.next_seq;
        inner.controls.discard_changes();
    }

    /// Whether anything but health changed since the previous change event.
    pub(crate) fn has_changes(&self) -> bool {
        let inner = self.lock();
        inner.changed_all
            || !inner.changed.is_empty()
            || inner.pushed_seq < inner.next_seq
            || inner.controls.has_changes()
    }

    /// Resolves when `observe` (or the follower) has added something since the last wait.
    pub(crate) async fn changed(&self) {
        self.notify.notified().await;
    }

    // ----- the standalone follower's side -----

    /// Replaces every row of analysis `name` (standalone: as read from Redis).
    pub(crate) fn replace_analysis(&self, name: &str, rows: Vec<(AnalysisKey, Tally)>) {
        let mut inner = self.lock();
        let old: Vec<AnalysisKey> = inner
            .rows
            .keys()
            .filter(|k| analysis_name(k) == name)
            .cloned()
            .collect();
        if name == NAMES[0] {
            // Throughput in standalone mode: the growth of the status counts.
            let before: i64 = old.iter().map(|k| inner.rows[k].count).sum();
            let after: i64 = rows.iter().map(|(_, t)| t.count).sum();
            let grown = after - before;
            if grown > 0 && before > 0 {
                let now = Instant::now();
                inner.count_decisions(grown as u64, self.started, now);
                inner.last_batch_at = Some(now);
            }
        }
        for k in old {
            let t = inner.rows.remove(&k);
            if rows.iter().all(|(k2, t2)| *k2 != k || Some(*t2) != t) {
                inner.changed.insert(k);
            }
        }
        for (k, t) in rows {
            if !inner.changed.contains(&k) && inner.rows.get(&k) != Some(&t) {
                inner.changed.insert(k.clone());
            }
            inner.rows.insert(k, t);
        }
        if minute_index(name).is_some() {
            inner.rebuild_minutes();
            inner.bound_minutes();
        }
        drop(inner);
        self.notify.notify_one();
    }

    /// Adds records read from Redis (oldest first), skipping those already kept. Returns
    /// how many were new.
    pub(crate) fn add_records(&self, records: Vec<(String, Value)>) -> usize {
        let mut inner = self.lock();
        let now = Instant::now();
        let mut added = 0;
        for (member, record) in records {
            if inner.by_member.contains_key(&member) {
                continue;
            }
            if let (Some(t), Some(at)) = (
                record.get("t").and_then(Value::as_u64),
                record.get("decided_at_ms").and_then(Value::as_u64),
            ) {
                inner.record_latency(at.saturating_sub(t).max(1) * 1000, now);
            }
            if let Some(s) = record
                .get("status")
                .and_then(Value::as_str)
                .and_then(Status::parse)
            {
                inner.counts[s as usize] += 1;
            }
            if let Some(t) = record.get("t").and_then(Value::as_u64) {
                inner.closed_time = Some(inner.closed_time.map_or(t, |c| c.max(t)));
            }
            let id = record.get("id").and_then(Value::as_str).map(str::to_owned);
            let rendered = OnceLock::from(Arc::new(record));
            inner.push_record(id, Some(member), Source::Json, rendered);
            added += 1;
        }
        drop(inner);
        if added > 0 {
            self.notify.notify_one();
        }
        added
    }

    /// Whether the follower reaches Redis; `_error` is for the caller's log, and is not
    /// kept: health is shown to clients.
    pub(crate) fn set_redis(&self, connected: bool, _error: Option<String>) {
        self.lock().redis = Some(connected);
    }

    pub(crate) fn set_closed_time(&self, t: u64) {
        let mut inner = self.lock();
        inner.closed_time = Some(inner.closed_time.map_or(t, |c| c.max(t)));
    }
}

/// An event's JSON text: the object `event` with the records of `entries`, in their
/// order, as `transactions`.
fn event_json(mut event: Value, entries: &[Arc<Entry>]) -> String {
    let records: Vec<Arc<Value>> = entries.iter().map(|e| e.record()).collect();
    let transactions: Vec<&Value> = records.iter().map(|v| &**v).collect();
    event["transactions"] = json!(transactions);
    event.to_string()
}

/// Which of the two per-minute analyses `name` is (index into `Inner::minutes`).
fn minute_index(name: &str) -> Option<usize> {
    match name {
        "minute_frequency" => Some(0),
        "distance_band_outcome" => Some(1),
        _ => None,
    }
}

impl Inner {
    /// Records that `key`'s minute has rows (when it is a per-minute key).
    fn note_minute(&mut self, key: &AnalysisKey) {
        match key {
            AnalysisKey::Minute(m) => self.minutes[0].insert(*m),
            AnalysisKey::DistanceMinute(m, _) => self.minutes[1].insert(*m),
            _ => false,
        };
    }

    /// The minutes with rows, read again from `rows` (after they were replaced).
    fn rebuild_minutes(&mut self) {
        self.minutes = [BTreeSet::new(), BTreeSet::new()];
        let keys: Vec<AnalysisKey> = self
            .rows
            .keys()
            .filter(|k| matches!(k, AnalysisKey::Minute(_) | AnalysisKey::DistanceMinute(..)))
            .cloned()
            .collect();
        for k in &keys {
            self.note_minute(k);
        }
    }

    /// Drops the rows of the oldest minutes beyond `minute_limit`, of each per-minute
    /// analysis (SPEC §10: bounded live state; PostgreSQL keeps them). Their keys join the
    /// changes, so that a client drops them too (a row of zeros means removed).
    fn bound_minutes(&mut self) {
        for i in 0..2 {
            while self.minutes[i].len() > self.minute_limit {
                let Some(m) = self.minutes[i].pop_first() else {
                    break;
                };
                let range = if i == 0 {
                    AnalysisKey::Minute(m)..=AnalysisKey::Minute(m)
                } else {
                    AnalysisKey::DistanceMinute(m, u8::MIN)
                        ..=AnalysisKey::DistanceMinute(m, u8::MAX)
                };
                let gone: Vec<AnalysisKey> =
                    self.rows.range(range).map(|(k, _)| k.clone()).collect();
                for k in gone {
                    self.rows.remove(&k);
                    self.changed.insert(k);
                }
                self.dropped_through[i] = Some(self.dropped_through[i].map_or(m, |d| d.max(m)));
            }
        }
        // Changes pile up between two events (100 ms); keys of minutes dropped at once
        // could make them many: past a bound, send everything instead (bounded too).
        if self.changed.len() > self.changed_cap() {
            self.changed.clear();
            self.changed_all = true;
        }
    }

    /// The most changed keys an event lists one by one: every kept row and some more.
    fn changed_cap(&self) -> usize {
        self.minute_limit.saturating_mul(5).saturating_add(1024)
    }

    fn record_latency(&mut self, us: u64, now: Instant) {
        let s = us as f64 / 1e6;
        let i = LATENCY_BUCKETS_S
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(LATENCY_BUCKETS_S.len());
        self.latency.record(i, s);
        if now.duration_since(self.window_started) >= LATENCY_WINDOW {
            std::mem::swap(&mut self.window_cur, &mut self.window_prev);
            self.window_cur.reset();
            if now.duration_since(self.window_started) >= 2 * LATENCY_WINDOW {
                self.window_prev.reset();
            }
            self.window_started = now;
        }
        self.window_cur.saturating_record(us);
    }

    fn count_decisions(&mut self, n: u64, started: Instant, now: Instant) {
        let sec = now.duration_since(started).as_secs();
        match self.per_second.back_mut() {
            Some((s, c)) if *s == sec => *c += n,
            _ => self.per_second.push_back((sec, n)),
        }
        while self
            .per_second
            .front()
            .is_some_and(|(s, _)| *s + RATE_WINDOW_S < sec)
        {
            self.per_second.pop_front();
        }
    }

    /// Decisions per second over the last [`RATE_WINDOW_S`] seconds (the current one
    /// partly).
    fn rate(&self, started: Instant, now: Instant) -> f64 {
        let elapsed = now.duration_since(started);
        let sec = elapsed.as_secs();
        let from = sec.saturating_sub(RATE_WINDOW_S - 1);
        let n: u64 = self
            .per_second
            .iter()
            .filter(|(s, _)| *s >= from)
            .map(|(_, c)| c)
            .sum();
        let span = (elapsed.as_secs_f64() - from as f64).max(0.25);
        n as f64 / span
    }

    fn push_record(
        &mut self,
        id: Option<String>,
        member: Option<String>,
        source: Source,
        rendered: OnceLock<Arc<Value>>,
    ) {
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(id) = &id {
            self.by_id.entry(id.clone()).or_default().push(seq);
        }
        if let Some(m) = &member {
            self.by_member.insert(m.clone(), seq);
        }
        self.recent.push_back(Arc::new(Entry {
            seq,
            id,
            member,
            source,
            rendered,
        }));
        while self.recent.len() > RECENT_LIMIT {
            let old = self.recent.pop_front().expect("non-empty");
            if let Some(id) = &old.id {
                if let Some(seqs) = self.by_id.get_mut(id) {
                    seqs.retain(|s| *s != old.seq);
                    if seqs.is_empty() {
                        self.by_id.remove(id);
                    }
                }
            }
            if let Some(m) = &old.member {
                if self.by_member.get(m) == Some(&old.seq) {
                    self.by_member.remove(m);
                }
            }
        }
    }
}

/// Whether the analysis is one of the two per-minute ones (`from`/`to` apply to them).
pub fn is_minute_analysis(name: &str) -> bool {
    name == "minute_frequency" || name == "distance_band_outcome"
}

/// Renders the rows of analysis `name` among `rows` (in key order) as SPEC JSON rows:
/// all-zero rows left out except status counts (all nine always), minutes limited to
/// `from..=to`.
pub(crate) fn render_rows<'a>(
    name: &str,
    rows: impl Iterator<Item = (&'a AnalysisKey, &'a Tally)>,
    from: Option<i64>,
    to: Option<i64>,
) -> Vec<Value> {
    if name == NAMES[0] {
        let counts: BTreeMap<Status, i64> = rows
            .filter_map(|(k, t)| match k {
                AnalysisKey::Status(s) => Some((*s, t.count)),
                _ => None,
            })
            .collect();
        return Status::ALL
            .iter()
            .map(|s| json!({"status": s.as_str(), "count": counts.get(s).copied().unwrap_or(0)}))
            .collect();
    }
    let in_range = |m: i64| from.is_none_or(|f| m >= f) && to.is_none_or(|t| m <= t);
    rows.filter(|(k, t)| {
        !t.is_zero_tally()
            && analysis_name(k) == name
            && match k {
                AnalysisKey::Minute(m) | AnalysisKey::DistanceMinute(m, _) => in_range(*m),
                _ => true,
            }
    })
    .map(|(k, t)| analyses::row_json(k, t).1)
    .collect()
}

/// The name of the analysis a row key belongs to.
pub fn analysis_name(key: &AnalysisKey) -> &'static str {
    key.name()
}

trait ZeroTally {
    fn is_zero_tally(&self) -> bool;
}

impl ZeroTally for Tally {
    fn is_zero_tally(&self) -> bool {
        *self == Tally::default()
    }
}

/// The dashboard's state as a consumer of the pipeline's batches (the embedded server).
pub struct Observer(pub Arc<LiveState>);

impl vtpga_sinks::consumer::Consumer for Observer {
    fn name(&self) -> &'static str {
        "dashboard"
    }
    fn batch(&mut self, batch: &Batch) -> Result<(), vtpga_sinks::consumer::Fault> {
        self.0.observe(batch, vtpga_sinks::monitor::now_us());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(n: i64) -> Tally {
        Tally {
            count: n,
            approved: n,
            ..Tally::default()
        }
    }

    /// A batch that adds one assessed transaction to `minute` in both per-minute analyses
    /// (as `count_total` would: the new row; the old one retracted when `old` is given).
    fn minute_batch(minute: i64, old: Option<i64>, new: i64) -> Batch {
        let mut analyses = vec![
            ((AnalysisKey::Minute(minute), tally(new)), 1),
            ((AnalysisKey::DistanceMinute(minute, 2), tally(new)), 1),
            ((AnalysisKey::Status(Status::Approved), tally(new)), 1),
        ];
        if let Some(o) = old {
            analyses.push(((AnalysisKey::Minute(minute), tally(o)), -1));
            analyses.push(((AnalysisKey::DistanceMinute(minute, 2), tally(o)), -1));
            analyses.push(((AnalysisKey::Status(Status::Approved), tally(o)), -1));
        }
        Batch {
            time: 1,
            decisions: Vec::new(),
            accounts: Vec::new(),
            analyses,
            controls: Vec::new(),
            shadows: Vec::new(),
        }
    }

    fn minutes_held(state: &LiveState) -> (Vec<i64>, Vec<i64>) {
        let rows = state.rows();
        let mut per_minute = Vec::new();
        let mut distance = Vec::new();
        for k in rows.keys() {
            match k {
                AnalysisKey::Minute(m) => per_minute.push(*m),
                AnalysisKey::DistanceMinute(m, _) => distance.push(*m),
                _ => {}
            }
        }
        (per_minute, distance)
    }

    /// SPEC §10 (bounded live state), issue 12 item 9: the per-minute rows of only the
    /// newest `live_minutes` event-time minutes stay; a late event of an older minute does
    /// not bring one back; clients are told (a row of zeros) to drop the minutes that left.
    #[test]
    fn per_minute_rows_are_bounded() {
        let state = LiveState::new(1);
        state.set_live_minutes(3);
        let mut count = 0;
        for m in 100..110 {
            state.observe(&minute_batch(m, (count > 0).then_some(count), count + 1), 1);
            count += 1;
        }
        let (per_minute, distance) = minutes_held(&state);
        assert_eq!(per_minute, [107, 108, 109]);
        assert_eq!(distance, [107, 108, 109]);
        // A late event of minute 50: older than every kept minute, so not kept.
        state.observe(&minute_batch(50, Some(count), count + 1), 1);
        assert_eq!(minutes_held(&state).0, [107, 108, 109]);
        // The status counts are not per-minute: untouched by the bound.
        assert_eq!(state.counts().len(), 9);
        let analyses = state.analyses_json();
        assert_eq!(
            analyses["minute_frequency"].as_array().map(Vec::len),
            Some(3)
        );
        assert_eq!(
            analyses["distance_band_outcome"].as_array().map(Vec::len),
            Some(3)
        );
        // The change event removes the minutes that left from a client's view.
        let change: Value = serde_json::from_str(&state.take_change().json).unwrap();
        let rows = change["minute_rows"]["minute_frequency"]
            .as_array()
            .unwrap();
        for r in rows {
            let kept = [
                "1970-01-01T01:47:00Z",
                "1970-01-01T01:48:00Z",
                "1970-01-01T01:49:00Z",
            ];
            let zero = r["count"] == 0;
            assert_eq!(!zero, kept.contains(&r["minute"].as_str().unwrap()), "{r}");
        }
        // A smaller bound applies at once.
        state.set_live_minutes(1);
        assert_eq!(minutes_held(&state), (vec![109], vec![109]));
    }

    /// SPEC §10 (bounded answers), issue 12 item 9: answers and events are rendered after
    /// the state's lock is released, so that the consumer thread never waits for a client.
    #[test]
    fn rendering_happens_outside_the_lock() {
        let state = LiveState::new(1);
        state.observe(&minute_batch(100, None, 1), 1);
        let _ = state.analyses_json();
        let _ = state.analysis_rows("minute_frequency", None, None);
        let _ = state.snapshot();
        let _ = state.take_change();
        state.seed_analyses(state.rows());
        let _ = state.take_change();
    }

    /// Issue 12 item 12 (internal error text): the health figures say whether Redis is
    /// reached, never the error's text (addresses, the driver's wording); the follower
    /// logs that.
    #[test]
    fn health_names_no_redis_error_text() {
        let state = LiveState::with_mode(0, Mode::Standalone);
        state.set_redis(false, Some("Connection refused at 10.1.2.3:6379".into()));
        let h = state.health();
        assert_eq!(h["redis"]["connected"], false);
        let text = h.to_string();
        assert!(
            !text.contains("10.1.2.3") && !text.contains("refused"),
            "{text}"
        );
    }
}

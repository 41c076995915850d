//! The Redis sink (SPEC §8): a cache of the pipeline's outputs for the dashboard.
//!
//! # Key layout (`P` is [`RedisOptions::key_prefix`], default `vtpga`)
//!
//! | key | type | content |
//! |---|---|---|
//! | `P:tx` | hash | one field per cached transaction: field `{partition}:{offset}`, value its SPEC §8 decision record as JSON ([`DecisionRecord`], the same text as a replay decision line, ids escaped reversibly by JSON) with `decided_at_ms` added (wall clock when the sink received its batch). Holds exactly the members of `P:recent` |
//! | `P:recent` | sorted set | members `{partition}:{offset}`, score = arrival time `t` (ms); the newest [`RedisOptions::recent_limit`] transactions the sink wrote |
//! | `P:analysis:{name}` | hash | one per SPEC §7 analysis; field `{k}\|{minute}` from [`analyses::key_parts`] (minute −1 for analyses without one), value = the row's SPEC JSON. Rows whose tally is zero are absent, except that `status_counts` always holds all nine statuses |
//! | `P:shadow:{version}:analysis:{name}` | hash | a shadow rule set's (SPEC §12) ten analyses, laid out as `P:analysis:{name}` |
//! | `P:shadow:{version}:what_if` | hash | the shadow's what-if rows: field `{primary_status}\|{shadow_status}`, value the row's SPEC §12 JSON; rows of zero are absent |
//! | `P:time` | string | the latest closed arrival time (ms) the cache reflects (the maximum over batches) |
//! | `P:analyses` | pub/sub channel | after each write, `{"time": t, "changed": [names of the analyses that changed]}`, with `"shadows": [versions]` when shadows' rows changed |
//!
//! [`read_analyses`] reads the analysis hashes back as the SPEC §8 analyses JSON;
//! [`read_shadow_analyses`] and [`read_what_if`] a shadow's.
//!
//! # Writing
//!
//! [`RedisSink::apply`] writes one batch as ONE atomic pipeline (`MULTI`/`EXEC`), so a
//! reader never sees half a batch, of a handful of commands whatever the batch's size: one
//! `HSET P:tx` and one `ZADD P:recent` with all the batch's transactions that stay among
//! the newest `recent_limit`, one `HDEL` and one `ZREM` of those that fall out, an `HSET`
//! or `HDEL` per analysis row the batch changed, `SET` of the time and a `PUBLISH`. The
//! sink never rewrites rows the batch did not touch. (A hash and an expiry per
//! transaction, as before, cost four commands per decision and held the sink to about a
//! fifth of the speed: README, "Durable path". The durable record of every transaction is
//! PostgreSQL; Redis keeps what the dashboard reads, bounded by count.)
//!
//! # Redis is a cache
//!
//! Redis must never hold deciding up, so `apply` never fails and never blocks for long:
//! connecting, reading and writing have short timeouts (500 ms, longer only in proportion
//! to a very large pipeline). When a pipeline fails (refused, reset, timed out, or an error
//! reply), the sink drops the connection, counts the failure, and tries to reconnect on
//! later `apply` calls, the first time 1 s later, then backing off up to 5 s between
//! attempts; between attempts `apply` does no I/O at all.
//!
//! The sink always keeps, in memory, the accumulated analysis rows and a ring buffer of the
//! newest `recent_limit` decision records. Whenever it (re)connects — including the very
//! first connection, so that a restarted pipeline overwrites whatever an older run left —
//! and after [`RedisSink::seed`], the next write is a REBUILD: one atomic pipeline that
//! deletes the ten analysis hashes and the recent set, rewrites every analysis from the
//! accumulated rows, re-adds the ring buffer's transactions and recent entries, sets the
//! time and publishes all ten names as changed. A cache that comes back after an outage is
//! therefore never left stale. A failed `EXEC` may or may not have been applied by Redis;
//! the rebuild that follows makes the difference moot. (The ring buffer holds the last
//! `recent_limit` decisions *applied*; with per-worker batches, whose times interleave,
//! the rebuilt recent set may differ slightly from the incremental one at its old end.)
//!
//! Replies are read by `exec_atomic`, which stops at the first error: a hung Redis costs
//! one read timeout, not one per queued command as `Pipeline::exec` would.
//!
//! # Use
//!
//! On the thread that consumes the sink's batches: [`RedisSink::new`] once,
//! [`RedisSink::seed`] with the accumulated rows when resuming from PostgreSQL, then
//! [`RedisSink::apply`] for every batch, in order. `P:time` is the maximum batch time seen.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use redis::{Client, Connection, Pipeline};
use serde_json::{json, Value};

use vtpga_dataflow::analyses::{self, AnalysisKey, Tally, WhatIfKey, WhatIfTally, NAMES};
use vtpga_dataflow::graph::Decision;
use vtpga_dataflow::Status;

use crate::Batch;
use vtpga_dataflow::record::DecisionRecord;

pub use redis::RedisError;

/// Timeout of a connection attempt, and of a normal pipeline's reads and writes.
const IO_TIMEOUT: Duration = Duration::from_millis(500);
/// Extra read/write time allowed per command of a large pipeline (a rebuild, a huge batch).
const PER_COMMAND: Duration = Duration::from_micros(10);
/// The longest a pipeline may wait for Redis, however large.
const MAX_IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Wait before the first reconnection attempt after a failure.
const MIN_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How the sink lays out and bounds what it writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisOptions {
    /// How many of the most recent transactions `P:tx`, the recent set and the in-memory
    /// ring buffer used to rebuild them keep.
    pub recent_limit: usize,
    /// Every key and the channel start with `{key_prefix}:`.
    pub key_prefix: String,
    /// The versions of the shadow rule sets (SPEC §12), in the order of
    /// [`Batch::shadows`]: their analyses and what-if rows are cached too.
    pub shadows: Vec<String>,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            recent_limit: 10_000,
            key_prefix: "vtpga".to_owned(),
            shadows: Vec::new(),
        }
    }
}

/// What the sink has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RedisStats {
    /// Whether the sink holds a connection (it may still fail on the next write).
    pub connected: bool,
    /// Batches that reached Redis, by an incremental write or as part of a rebuild.
    pub batches_written: u64,
    /// Pipelines and connection attempts that failed.
    pub failures: u64,
    /// Full rewrites of the cache (on every (re)connection and after a seed).
    pub rebuilds: u64,
}

/// One decided transaction as cached: its member, score and JSON record.
struct CachedTx {
    /// `{partition}:{offset}`
    member: String,
    /// Arrival time `t` in ms.
    score: u64,
    record: String,
}

impl CachedTx {
    fn of(d: &Decision, decided_at_ms: u64) -> Self {
        let mut record =
            serde_json::to_string(&DecisionRecord::of(d)).expect("a decision record serializes");
        // `{...}` → `{...,"decided_at_ms":N}`
        record.pop();
        record.push_str(",\"decided_at_ms\":");
        record.push_str(&decided_at_ms.to_string());
        record.push('}');
        CachedTx {
            member: format!("{}:{}", d.pos.partition, d.pos.offset),
            score: d.t,
            record,
        }
    }
}

/// The keys of one prefix.
struct Keys {
    tx: String,
    recent: String,
    time: String,
    channel: String,
    analyses: BTreeMap<&'static str, String>,
    shadows: Vec<ShadowKeys>,
}

/// The keys of one shadow rule set.
struct ShadowKeys {
    version: String,
    analyses: BTreeMap<&'static str, String>,
    what_if: String,
}

impl Keys {
    fn new(prefix: &str, shadows: &[String]) -> Self {
        Keys {
            tx: format!("{prefix}:tx"),
            recent: format!("{prefix}:recent"),
            time: format!("{prefix}:time"),
            channel: format!("{prefix}:analyses"),
            analyses: NAMES
                .iter()
                .map(|n| (*n, analysis_key(prefix, n)))
                .collect(),
            shadows: shadows
                .iter()
                .map(|version| ShadowKeys {
                    version: version.clone(),
                    analyses: NAMES
                        .iter()
                        .map(|n| (*n, shadow_analysis_key(prefix, version, n)))
                        .collect(),
                    what_if: what_if_key(prefix, version),
                })
                .collect(),
        }
    }

    fn analysis(&self, name: &str) -> &str {
        &self.analyses[name]
    }
}

fn analysis_key(prefix: &str, name: &str) -> String {
    format!("{prefix}:analysis:{name}")
}

fn shadow_analysis_key(prefix: &str, version: &str, name: &str) -> String {
    format!("{prefix}:shadow:{version}:analysis:{name}")
}

fn what_if_key(prefix: &str, version: &str) -> String {
    format!("{prefix}:shadow:{version}:what_if")
}

/// The hash field of a what-if row: `{primary_status}|{shadow_status}`.
fn what_if_field(key: &WhatIfKey) -> String {
    format!("{}|{}", key.primary.as_str(), key.shadow.as_str())
}

/// A shadow rule set's accumulated rows.
#[derive(Default)]
struct ShadowRows {
    rows: BTreeMap<AnalysisKey, Tally>,
    what_if: BTreeMap<WhatIfKey, WhatIfTally>,
}

/// The rows of one shadow a batch changed.
type ShadowChanged<'b> = (BTreeSet<&'b AnalysisKey>, BTreeSet<&'b WhatIfKey>);

/// Writes the changed analysis rows of `rows` to the hashes `hash_of` names (a row of zero
/// is deleted, except a status count, always present); returns the names changed.
fn write_changed_rows(
    pipe: &mut Pipeline,
    rows: &BTreeMap<AnalysisKey, Tally>,
    changed: &BTreeSet<&AnalysisKey>,
    hash_of: impl Fn(&str) -> String,
) -> BTreeSet<&'static str> {
    let mut names: BTreeSet<&'static str> = BTreeSet::new();
    for key in changed {
        let (name, field) = row_field(key);
        names.insert(name);
        let hash = hash_of(name);
        match rows.get(*key).filter(|t| **t != Tally::default()) {
            Some(t) => {
                let row = analyses::row_json(key, t).1.to_string();
                pipe.cmd("HSET").arg(&hash).arg(field).arg(row).ignore();
            }
            None if matches!(key, AnalysisKey::Status(_)) => {
                let row = analyses::row_json(key, &Tally::default()).1.to_string();
                pipe.cmd("HSET").arg(&hash).arg(field).arg(row).ignore();
            }
            None => {
                pipe.cmd("HDEL").arg(&hash).arg(field).ignore();
            }
        }
    }
    names
}

/// Writes every row of `rows` to the (deleted) hashes `hash_of` names: all nine status
/// counts, the other rows that are not zero.
fn write_all_rows(
    pipe: &mut Pipeline,
    rows: &BTreeMap<AnalysisKey, Tally>,
    hash_of: impl Fn(&str) -> String,
) {
    let mut hashes: BTreeMap<&'static str, Vec<(String, String)>> = BTreeMap::new();
    for status in Status::ALL {
        let key = AnalysisKey::Status(status);
        let tally = rows.get(&key).copied().unwrap_or_default();
        let (name, field) = row_field(&key);
        let row = analyses::row_json(&key, &tally).1.to_string();
        hashes.entry(name).or_default().push((field, row));
    }
    for (key, tally) in rows {
        if *tally == Tally::default() || matches!(key, AnalysisKey::Status(_)) {
            continue;
        }
        let (name, field) = row_field(key);
        let row = analyses::row_json(key, tally).1.to_string();
        hashes.entry(name).or_default().push((field, row));
    }
    for (name, fields) in &hashes {
        let hset = pipe.cmd("HSET").arg(hash_of(name));
        for (f, v) in fields {
            hset.arg(f).arg(v);
        }
        hset.ignore();
    }
}

/// The hash field of an analysis row: `{k}|{minute}`.
fn row_field(key: &AnalysisKey) -> (&'static str, String) {
    let (name, k, minute) = analyses::key_parts(key);
    (name, format!("{k}|{minute}"))
}

/// Writes the pipeline's outputs to Redis; see the module documentation.
pub struct RedisSink {
    client: Client,
    options: RedisOptions,
    keys: Keys,
    conn: Option<Connection>,
    /// The read/write timeout currently set on `conn`.
    conn_timeout: Duration,
    /// Accumulated analysis rows (all batches, plus a seed).
    rows: BTreeMap<AnalysisKey, Tally>,
    /// Each shadow's accumulated rows, in the order of `options.shadows`.
    shadows: Vec<ShadowRows>,
    /// The newest `recent_limit` transactions, oldest first.
    ring: VecDeque<CachedTx>,
    time: u64,
    needs_rebuild: bool,
    next_attempt: Instant,
    backoff: Duration,
    stats: RedisStats,
    /// [`RedisSink::stats`] as of the last batch, for other threads.
    published: std::sync::Arc<std::sync::Mutex<RedisStats>>,
}

impl RedisSink {
    /// A sink writing to the Redis at `url` (`redis://host:port/db`). A malformed URL is an
    /// error; an unreachable Redis is not (a warning; the sink starts disconnected and
    /// tries again on later batches).
    pub fn new(url: &str, options: RedisOptions) -> Result<Self, RedisError> {
        let client = Client::open(url)?;
        let keys = Keys::new(&options.key_prefix, &options.shadows);
        let shadows = options
            .shadows
            .iter()
            .map(|_| ShadowRows::default())
            .collect();
        let mut sink = RedisSink {
            shadows,
            client,
            options,
            keys,
            conn: None,
            conn_timeout: IO_TIMEOUT,
            rows: BTreeMap::new(),
            ring: VecDeque::new(),
            time: 0,
            needs_rebuild: true,
            next_attempt: Instant::now(),
            backoff: MIN_BACKOFF,
            stats: RedisStats::default(),
            published: Default::default(),
        };
        match sink.connect() {
            Ok(conn) => sink.conn = Some(conn),
            Err(e) => {
                log::warn!(
                    "redis at {url} unreachable ({e}); starting disconnected, retrying every {}–{} s",
                    MIN_BACKOFF.as_secs(),
                    MAX_BACKOFF.as_secs()
                );
                sink.stats.failures += 1;
                sink.next_attempt = Instant::now() + MIN_BACKOFF;
            }
        }
        Ok(sink)
    }

    /// Accumulated analysis rows at a resume point (after a restart from PostgreSQL):
    /// they replace the sink's rows, and the next write rebuilds the cache from them.
    pub fn seed(&mut self, rows: BTreeMap<AnalysisKey, Tally>) {
        self.rows = rows;
        self.needs_rebuild = true;
    }

    /// What the sink has done so far, and whether it holds a connection now.
    pub fn stats(&self) -> RedisStats {
        RedisStats {
            connected: self.conn.is_some(),
            ..self.stats
        }
    }

    /// A handle on [`RedisSink::stats`] as of the last batch, readable from other threads
    /// while the sink runs on its own.
    pub fn stats_handle(&self) -> std::sync::Arc<std::sync::Mutex<RedisStats>> {
        self.published.clone()
    }

    fn publish_stats(&self) {
        if let Ok(mut s) = self.published.lock() {
            *s = self.stats();
        }
    }

    /// The accumulated analysis rows.
    pub fn rows(&self) -> &BTreeMap<AnalysisKey, Tally> {
        &self.rows
    }

    /// Writes one batch (or, after a (re)connection or a seed, rebuilds the whole cache).
    /// Never fails: a Redis that is down only costs a failure count and a rebuild later.
    pub fn apply(&mut self, batch: &Batch) {
        let decided_at_ms = crate::monitor::now_us() / 1000;
        // Only the newest `recent_limit` of a batch can stay: render only those.
        let skip = batch
            .decisions
            .len()
            .saturating_sub(self.options.recent_limit);
        let txs: Vec<CachedTx> = batch.decisions[skip..]
            .iter()
            .map(|d| CachedTx::of(d, decided_at_ms))
            .collect();
        analyses::apply_changes(&mut self.rows, batch.analyses.iter().cloned());
        let changed: BTreeSet<&AnalysisKey> = batch.analyses.iter().map(|((k, _), _)| k).collect();
        let mut shadows_changed: Vec<ShadowChanged> = Vec::new();
        for (shadow, part) in self.shadows.iter_mut().zip(&batch.shadows) {
            analyses::apply_changes(&mut shadow.rows, part.analyses.iter().cloned());
            analyses::apply_what_if(&mut shadow.what_if, part.what_if.iter().cloned());
            shadows_changed.push((
                part.analyses.iter().map(|((k, _), _)| k).collect(),
                part.what_if.iter().map(|((k, _), _)| k).collect(),
            ));
        }
        self.time = self.time.max(batch.time);

        if self.ensure_connected() && !self.needs_rebuild {
            let evicted = self.evicted_by(txs.len());
            let pipe = self.batch_pipeline(&txs, &evicted, &changed, &shadows_changed);
            self.remember(txs);
            if self.run(&pipe).is_ok() {
                self.stats.batches_written += 1;
            }
            return;
        }
        self.remember(txs);
        if self.conn.is_some() && self.rebuild().is_ok() {
            self.stats.batches_written += 1;
        }
    }

    /// Rewrites the whole cache now, if connected (or reconnection is due); returns whether
    /// Redis now reflects everything applied. `apply` does this by itself when needed.
    pub fn flush(&mut self) -> bool {
        if !self.ensure_connected() {
            return false;
        }
        self.rebuild().is_ok()
    }

    /// The members that `n` new transactions push out of the ring.
    fn evicted_by(&self, n: usize) -> Vec<&str> {
        let over = (self.ring.len() + n).saturating_sub(self.options.recent_limit);
        self.ring
            .iter()
            .take(over)
            .map(|tx| tx.member.as_str())
            .collect()
    }

    fn remember(&mut self, txs: Vec<CachedTx>) {
        let limit = self.options.recent_limit;
        for tx in txs {
            if self.ring.len() >= limit {
                self.ring.pop_front();
            }
            if limit > 0 {
                self.ring.push_back(tx);
            }
        }
    }

    fn connect(&self) -> Result<Connection, RedisError> {
        let conn = self.client.get_connection_with_timeout(IO_TIMEOUT)?;
        conn.set_read_timeout(Some(IO_TIMEOUT))?;
        conn.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(conn)
    }

    /// Whether there is a connection; reconnects when the backoff allows it.
    fn ensure_connected(&mut self) -> bool {
        if self.conn.is_some() {
            return true;
        }
        let now = Instant::now();
        if now < self.next_attempt {
            return false;
        }
        match self.connect() {
            Ok(conn) => {
                log::info!("redis reconnected; rebuilding the cache");
                self.conn = Some(conn);
                self.conn_timeout = IO_TIMEOUT;
                self.backoff = MIN_BACKOFF;
                self.needs_rebuild = true;
                true
            }
            Err(e) => {
                self.stats.failures += 1;
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                self.next_attempt = Instant::now() + self.backoff;
                log::debug!(
                    "redis still unreachable ({e}); next attempt in {:?}",
                    self.backoff
                );
                false
            }
        }
    }

    /// Runs a pipeline; on any error drops the connection and schedules a reconnection.
    fn run(&mut self, pipe: &Pipeline) -> Result<(), ()> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(());
        };
        let timeout = (IO_TIMEOUT + PER_COMMAND * pipe.len() as u32).min(MAX_IO_TIMEOUT);
        let result = (|| {
            if timeout != self.conn_timeout {
                conn.set_read_timeout(Some(timeout))?;
                conn.set_write_timeout(Some(timeout))?;
                self.conn_timeout = timeout;
            }
            exec_atomic(conn, pipe)
        })();
        match result {
            Ok(()) => Ok(()),
            Err(e) => {
                log::warn!(
                    "redis write failed ({e}); caching in memory, reconnecting in {MIN_BACKOFF:?}"
                );
                self.conn = None;
                self.stats.failures += 1;
                self.needs_rebuild = true;
                self.backoff = MIN_BACKOFF;
                self.next_attempt = Instant::now() + MIN_BACKOFF;
                Err(())
            }
        }
    }

    /// Adds `txs` to `P:tx` and the recent set, and takes `evicted` out of both.
    fn add_recent<'a>(
        &self,
        pipe: &mut Pipeline,
        txs: impl ExactSizeIterator<Item = &'a CachedTx> + Clone,
        evicted: &[&str],
    ) {
        // HSET, ZADD, HDEL and ZREM without members are syntax errors.
        if txs.len() > 0 {
            let hset = pipe.cmd("HSET").arg(&self.keys.tx);
            for tx in txs.clone() {
                hset.arg(&tx.member).arg(&tx.record);
            }
            hset.ignore();
            let zadd = pipe.cmd("ZADD").arg(&self.keys.recent);
            for tx in txs {
                zadd.arg(tx.score).arg(&tx.member);
            }
            zadd.ignore();
        }
        if !evicted.is_empty() {
            pipe.cmd("HDEL").arg(&self.keys.tx).arg(evicted).ignore();
            pipe.cmd("ZREM")
                .arg(&self.keys.recent)
                .arg(evicted)
                .ignore();
        }
    }

    fn add_time_and_publish(&self, pipe: &mut Pipeline, changed: &[&str], shadows: &[&str]) {
        pipe.cmd("SET").arg(&self.keys.time).arg(self.time).ignore();
        let mut message = json!({"time": self.time, "changed": changed});
        if !shadows.is_empty() {
            message["shadows"] = json!(shadows);
        }
        let message = message.to_string();
        pipe.cmd("PUBLISH")
            .arg(&self.keys.channel)
            .arg(message)
            .ignore();
    }

    fn batch_pipeline(
        &self,
        txs: &[CachedTx],
        evicted: &[&str],
        changed: &BTreeSet<&AnalysisKey>,
        shadows_changed: &[ShadowChanged],
    ) -> Pipeline {
        let mut pipe = redis::pipe();
        pipe.atomic();
        self.add_recent(&mut pipe, txs.iter(), evicted);
        let names = write_changed_rows(&mut pipe, &self.rows, changed, |name| {
            self.keys.analysis(name).to_owned()
        });
        let mut shadows: Vec<&str> = Vec::new();
        for ((keys, shadow), (rows_changed, what_if_changed)) in self
            .keys
            .shadows
            .iter()
            .zip(&self.shadows)
            .zip(shadows_changed)
        {
            if rows_changed.is_empty() && what_if_changed.is_empty() {
                continue;
            }
            shadows.push(&keys.version);
            write_changed_rows(&mut pipe, &shadow.rows, rows_changed, |name| {
                keys.analyses[name].clone()
            });
            for key in what_if_changed {
                let field = what_if_field(key);
                match shadow
                    .what_if
                    .get(*key)
                    .filter(|t| **t != WhatIfTally::default())
                {
                    Some(t) => {
                        let row = analyses::what_if_row(&keys.version, key, t).to_string();
                        pipe.cmd("HSET")
                            .arg(&keys.what_if)
                            .arg(field)
                            .arg(row)
                            .ignore();
                    }
                    None => {
                        pipe.cmd("HDEL").arg(&keys.what_if).arg(field).ignore();
                    }
                }
            }
        }
        // The SPEC order of the names, not their alphabetical order.
        let names: Vec<&str> = NAMES
            .iter()
            .copied()
            .filter(|n| names.contains(n))
            .collect();
        self.add_time_and_publish(&mut pipe, &names, &shadows);
        pipe
    }

    fn rebuild_pipeline(&self) -> Pipeline {
        let mut pipe = redis::pipe();
        pipe.atomic();
        let del = pipe.cmd("DEL").arg(&self.keys.recent).arg(&self.keys.tx);
        for name in NAMES {
            del.arg(self.keys.analysis(name));
        }
        for keys in &self.keys.shadows {
            del.arg(&keys.what_if);
            for name in NAMES {
                del.arg(&keys.analyses[name]);
            }
        }
        del.ignore();
        write_all_rows(&mut pipe, &self.rows, |name| {
            self.keys.analysis(name).to_owned()
        });
        for (keys, shadow) in self.keys.shadows.iter().zip(&self.shadows) {
            write_all_rows(&mut pipe, &shadow.rows, |name| keys.analyses[name].clone());
            let rows: Vec<(String, String)> = shadow
                .what_if
                .iter()
                .filter(|(_, t)| **t != WhatIfTally::default())
                .map(|(k, t)| {
                    let row = analyses::what_if_row(&keys.version, k, t).to_string();
                    (what_if_field(k), row)
                })
                .collect();
            if !rows.is_empty() {
                let hset = pipe.cmd("HSET").arg(&keys.what_if);
                for (f, v) in &rows {
                    hset.arg(f).arg(v);
                }
                hset.ignore();
            }
        }
        self.add_recent(&mut pipe, self.ring.iter(), &[]);
        let shadows: Vec<&str> = self
            .keys
            .shadows
            .iter()
            .map(|k| k.version.as_str())
            .collect();
        self.add_time_and_publish(&mut pipe, &NAMES, &shadows);
        pipe
    }

    fn rebuild(&mut self) -> Result<(), ()> {
        let pipe = self.rebuild_pipeline();
        self.run(&pipe)?;
        self.needs_rebuild = false;
        self.stats.rebuilds += 1;
        log::info!(
            "redis cache rebuilt: {} analysis rows, {} recent transactions, time {}",
            self.rows.len(),
            self.ring.len(),
            self.time
        );
        Ok(())
    }
}

impl crate::consumer::Consumer for RedisSink {
    fn name(&self) -> &'static str {
        "redis"
    }
    fn start(&mut self) -> Result<(), crate::consumer::Fault> {
        self.publish_stats();
        Ok(())
    }
    /// Never fails (module doc).
    fn batch(&mut self, batch: &Batch) -> Result<(), crate::consumer::Fault> {
        self.apply(batch);
        self.publish_stats();
        Ok(())
    }
    /// A Redis that came back is rebuilt now, not at the next batch (there may be none
    /// for a while).
    fn tick(&mut self) {
        if self.is_stale() {
            self.flush();
            self.publish_stats();
        }
    }
    /// The last chance to leave an up-to-date cache: a Redis that is back (or comes back
    /// within about 5 s) is rebuilt. Never fails: a cache left stale is said in the log
    /// and the stats.
    fn end(&mut self) -> Result<(), crate::consumer::Fault> {
        let deadline = Instant::now() + MAX_BACKOFF;
        while self.is_stale() && !self.flush() && Instant::now() < deadline {
            std::thread::sleep(
                self.next_attempt
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(50)),
            );
        }
        if self.is_stale() {
            log::warn!(
                "redis is still unreachable: the cache is behind PostgreSQL until the next run"
            );
        }
        self.publish_stats();
        Ok(())
    }
}

impl RedisSink {
    /// Whether Redis lacks something the sink has (down, or a rebuild pending).
    fn is_stale(&self) -> bool {
        self.conn.is_none() || self.needs_rebuild
    }
}

/// Sends an atomic pipeline and reads its replies, giving up at the first error.
///
/// Unlike `Pipeline::exec`, which goes on reading one reply per queued command after an
/// error (so a hung Redis would cost one read timeout per command), a single timeout ends
/// it. The caller drops the connection after any error, so unread replies do not matter.
fn exec_atomic(conn: &mut Connection, pipe: &Pipeline) -> redis::RedisResult<()> {
    debug_assert!(pipe.is_transaction());
    conn.send_packed_command(&pipe.get_packed_pipeline())?;
    // MULTI's OK, one QUEUED per command, then EXEC's array of results.
    let replies = pipe.len() + 2;
    let mut read = 0;
    while read < replies {
        match conn.recv_response()? {
            redis::Value::Push { .. } => continue,
            redis::Value::ServerError(e) => return Err(e.into()),
            redis::Value::Array(results) if read + 1 == replies => {
                if let Some(redis::Value::ServerError(e)) = results
                    .into_iter()
                    .find(|v| matches!(v, redis::Value::ServerError(_)))
                {
                    return Err(e.into());
                }
            }
            redis::Value::Nil if read + 1 == replies => {
                return Err(RedisError::from((
                    redis::ErrorKind::Client,
                    "transaction aborted",
                )));
            }
            _ => {}
        }
        read += 1;
    }
    Ok(())
}

/// Reads the ten analysis hashes under `prefix` as the SPEC §8 analyses JSON: one object
/// whose keys are the ten names, each an array of row objects sorted by hash field.
pub fn read_analyses(conn: &mut Connection, prefix: &str) -> redis::RedisResult<Value> {
    read_analyses_at(conn, |name| analysis_key(prefix, name))
}

/// Reads a shadow's ten analysis hashes as [`read_analyses`] reads those of record.
pub fn read_shadow_analyses(
    conn: &mut Connection,
    prefix: &str,
    version: &str,
) -> redis::RedisResult<Value> {
    read_analyses_at(conn, |name| shadow_analysis_key(prefix, version, name))
}

/// Reads a shadow's what-if rows: the SPEC §12 row objects, sorted by hash field.
pub fn read_what_if(
    conn: &mut Connection,
    prefix: &str,
    version: &str,
) -> redis::RedisResult<Vec<Value>> {
    let fields: BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(what_if_key(prefix, version))
        .query(conn)?;
    fields
        .into_iter()
        .map(|(field, v)| {
            serde_json::from_str(&v).map_err(|e| {
                RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "what-if row is not JSON",
                    format!("{field}: {e}"),
                ))
            })
        })
        .collect()
}

fn read_analyses_at(
    conn: &mut Connection,
    key_of: impl Fn(&str) -> String,
) -> redis::RedisResult<Value> {
    let mut out = serde_json::Map::new();
    for name in NAMES {
        let fields: BTreeMap<String, String> =
            redis::cmd("HGETALL").arg(key_of(name)).query(conn)?;
        let rows = fields
            .into_iter()
            .map(|(field, v)| {
                serde_json::from_str(&v).map_err(|e| {
                    RedisError::from((
                        redis::ErrorKind::UnexpectedReturnType,
                        "analysis row is not JSON",
                        format!("{name} {field}: {e}"),
                    ))
                })
            })
            .collect::<Result<Vec<Value>, _>>()?;
        out.insert(name.to_owned(), Value::Array(rows));
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::process::{Child, Command, Stdio};
    use std::thread::sleep;

    use vtpga_dataflow::rules::Scores;
    use vtpga_dataflow::{Mode, SourcePos, Tx};

    /// A private redis-server on loopback, killed (by its handle) when dropped.
    struct Server {
        child: Child,
        port: u16,
        dir: tempfile::TempDir,
    }

    fn free_port() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        listener.local_addr().expect("local addr").port()
    }

    impl Server {
        fn start(port: u16) -> Server {
            let dir = tempfile::tempdir().expect("temp dir");
            let log = std::fs::File::create(dir.path().join("redis.log")).expect("log file");
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(dir.path())
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("redis-server must be installed (scripts/setup.sh)");
            let mut server = Server { child, port, dir };
            let client = Client::open(server.url()).expect("url");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(mut c) = client.get_connection_with_timeout(Duration::from_millis(200)) {
                    if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                        return server;
                    }
                }
                if let Ok(Some(status)) = server.child.try_wait() {
                    let log = std::fs::read_to_string(server.dir.path().join("redis.log"));
                    panic!("redis-server exited ({status}): {log:?}");
                }
                assert!(
                    Instant::now() < deadline,
                    "redis-server did not answer on {port}"
                );
                sleep(Duration::from_millis(50));
            }
        }

        fn url(&self) -> String {
            format!("redis://127.0.0.1:{}/", self.port)
        }

        fn conn(&self) -> Connection {
            let c = Client::open(self.url())
                .expect("url")
                .get_connection_with_timeout(Duration::from_secs(2))
                .expect("connect to the test redis");
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            c
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Builds batches by hand and keeps the rows they should accumulate to.
    #[derive(Default)]
    struct Gen {
        rows: BTreeMap<AnalysisKey, Tally>,
        offset: i64,
        t: u64,
    }

    fn tally(approved: i64, rejected: i64) -> Tally {
        Tally {
            count: approved + rejected,
            approved,
            rejected,
            approved_amount_cents: i128::from(approved * 1000),
            rejected_amount_cents: i128::from(rejected * 700),
        }
    }

    fn count(n: i64) -> Tally {
        Tally {
            count: n,
            ..Tally::default()
        }
    }

    impl Gen {
        fn decision(&mut self) -> Decision {
            self.offset += 1;
            self.t += 10;
            let n = self.offset;
            let tx = Tx {
                id: format!("tx{n}").into(),
                payer: format!("u{}", n % 3).into(),
                payee: format!("u{}", n % 3 + 1).into(),
                region: "r1".into(),
                mode: Mode::ALL[n as usize % 4],
                amount_cents: 100 * n,
                event_ms: 1_700_000_000_000 + n,
            };
            let (status, tx, scores, reason) = match n % 3 {
                0 => (
                    Status::Approved,
                    Some(tx),
                    Some(Scores {
                        value_risk: 0.25,
                        hour_risk: 0.5,
                        distance_risk: 0.0,
                        risk: 0.3,
                    }),
                    None,
                ),
                1 => (Status::Invalid, None, None, Some("bad json".to_owned())),
                _ => (Status::Late, Some(tx), None, None),
            };
            Decision {
                pos: SourcePos {
                    partition: (n % 2) as i32,
                    offset: n,
                },
                t: self.t,
                ingest_us: 0,
                status,
                tx,
                scores,
                reason,
                raw: None,
                home_band: None,
                uf: None,
                rules_version: "default".into(),
            }
        }

        /// `n` decisions and the given row changes (None: the row goes away).
        fn batch(&mut self, n: usize, changes: &[(AnalysisKey, Option<Tally>)]) -> Batch {
            let decisions: Vec<Decision> = (0..n).map(|_| self.decision()).collect();
            let mut analyses = Vec::new();
            for (key, new) in changes {
                // Retractions after insertions: the sink must not depend on the order.
                if let Some(new) = new {
                    analyses.push(((key.clone(), *new), 1));
                }
                if let Some(old) = self.rows.get(key) {
                    analyses.push(((key.clone(), *old), -1));
                }
                match new {
                    Some(new) => self.rows.insert(key.clone(), *new),
                    None => self.rows.remove(key),
                };
            }
            if n == 0 {
                self.t += 10;
            }
            Batch {
                time: self.t,
                decisions,
                accounts: Vec::new(),
                analyses,
                controls: Vec::new(),
                shadows: Vec::new(),
            }
        }
    }

    fn member(d: &Decision) -> String {
        format!("{}:{}", d.pos.partition, d.pos.offset)
    }

    /// The analyses JSON as, per name, the set of its rows.
    fn as_sets(v: &Value) -> BTreeMap<String, BTreeSet<String>> {
        let obj = v.as_object().expect("analyses object");
        obj.iter()
            .map(|(name, rows)| {
                let rows = rows.as_array().expect("rows array");
                (name.clone(), rows.iter().map(|r| r.to_string()).collect())
            })
            .collect()
    }

    fn assert_analyses(conn: &mut Connection, prefix: &str, rows: &BTreeMap<AnalysisKey, Tally>) {
        let got = read_analyses(conn, prefix).expect("read analyses");
        assert_eq!(got.as_object().unwrap().len(), 10);
        assert_eq!(as_sets(&got), as_sets(&analyses::to_json(rows)));
    }

    /// `d` is cached in `P:tx` as its decision record plus `decided_at_ms`.
    fn assert_tx(conn: &mut Connection, prefix: &str, d: &Decision) {
        let got: Option<String> = hash_cmd(conn, "HGET", format!("{prefix}:tx"), &member(d));
        let mut got: Value = serde_json::from_str(&got.expect("cached")).expect("JSON record");
        let decided_at = got
            .as_object_mut()
            .unwrap()
            .remove("decided_at_ms")
            .expect("decided_at_ms")
            .as_u64()
            .expect("decided_at_ms is a number");
        let now_ms = crate::monitor::now_us() / 1000;
        assert!(decided_at <= now_ms && decided_at + 60_000 > now_ms);
        let want = serde_json::to_value(DecisionRecord::of(d)).unwrap();
        assert_eq!(got, want, "{}", member(d));
    }

    /// `P:tx` holds exactly the members of the recent set.
    fn assert_tx_matches_recent(conn: &mut Connection, prefix: &str) {
        let mut fields: Vec<String> = redis::cmd("HKEYS")
            .arg(format!("{prefix}:tx"))
            .query(conn)
            .unwrap();
        fields.sort();
        let mut members: Vec<String> = recent(conn, prefix).into_iter().map(|(m, _)| m).collect();
        members.sort();
        assert_eq!(fields, members);
    }

    /// Runs `cmd` (`HGET`, `HDEL`, ...) on hash `key`'s `field`.
    fn hash_cmd<T: redis::FromRedisValue>(
        conn: &mut Connection,
        cmd: &str,
        key: String,
        field: &str,
    ) -> T {
        redis::cmd(cmd).arg(key).arg(field).query(conn).unwrap()
    }

    /// `P:time` holds `t`.
    fn assert_time(conn: &mut Connection, prefix: &str, t: u64) {
        let time: u64 = redis::cmd("GET")
            .arg(format!("{prefix}:time"))
            .query(conn)
            .unwrap();
        assert_eq!(time, t);
    }

    /// A server on a free port, a sink writing to it under `prefix` (recent limit 100)
    /// that has applied one batch of `n` decisions with `changes`, and its generator.
    fn started(
        prefix: &str,
        n: usize,
        changes: &[(AnalysisKey, Option<Tally>)],
    ) -> (Server, RedisSink, Gen) {
        let server = Server::start(free_port());
        let mut sink = RedisSink::new(&server.url(), options(prefix, 100)).unwrap();
        let mut gen = Gen::default();
        sink.apply(&gen.batch(n, changes));
        (server, sink, gen)
    }

    /// Applies a one-decision batch every 250 ms until the sink is connected again (15 s
    /// at most); returns how many it applied.
    fn until_connected(sink: &mut RedisSink, gen: &mut Gen) -> i64 {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut i = 0;
        while !sink.stats().connected && Instant::now() < deadline {
            i += 1;
            sleep(Duration::from_millis(250));
            sink.apply(&gen.batch(1, &[(AnalysisKey::Hour(2), Some(tally(i, 0)))]));
        }
        i
    }

    fn recent(conn: &mut Connection, prefix: &str) -> Vec<(String, u64)> {
        redis::cmd("ZRANGE")
            .arg(format!("{prefix}:recent"))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query(conn)
            .unwrap()
    }

    fn options(prefix: &str, recent_limit: usize) -> RedisOptions {
        RedisOptions {
            recent_limit,
            key_prefix: prefix.to_owned(),
            shadows: Vec::new(),
        }
    }

    fn rows_set(rows: &[Value]) -> BTreeSet<String> {
        rows.iter().map(|r| r.to_string()).collect()
    }

    fn what_if_rows(version: &str, pairs: &BTreeMap<WhatIfKey, WhatIfTally>) -> Vec<Value> {
        analyses::what_if_json(version, pairs)
            .as_array()
            .expect("rows")
            .clone()
    }

    /// A shadow's analysis rows and what-if rows.
    type ShadowWant = (
        BTreeMap<AnalysisKey, Tally>,
        BTreeMap<WhatIfKey, WhatIfTally>,
    );

    /// Each shadow's rows in Redis (under prefix `p`) are `want`'s.
    fn assert_shadows(conn: &mut Connection, p: &str, versions: &[String], want: &[ShadowWant]) {
        for (version, (rows, pairs)) in versions.iter().zip(want) {
            let got = read_shadow_analyses(conn, p, version).expect("read");
            assert_eq!(
                as_sets(&got),
                as_sets(&analyses::to_json(rows)),
                "{version}"
            );
            let got = read_what_if(conn, p, version).expect("read");
            assert_eq!(
                rows_set(&got),
                rows_set(&what_if_rows(version, pairs)),
                "{version}"
            );
        }
    }

    /// A shadow's analyses and what-if rows (SPEC §12) are cached beside those of record,
    /// each under its version: incrementally (a row back to zero is deleted, a status
    /// count stays), and again whole by a rebuild.
    #[test]
    fn redis_caches_each_shadows_analyses_and_what_if() {
        use crate::ShadowBatch;
        let server = Server::start(free_port());
        let mut conn = server.conn();
        let p = "t9";
        let versions = ["strict".to_owned(), "loose:1".to_owned()];
        let mut sink = RedisSink::new(
            &server.url(),
            RedisOptions {
                shadows: versions.to_vec(),
                ..options(p, 10)
            },
        )
        .unwrap();
        let mut gen = Gen::default();
        let pair = |primary, shadow| WhatIfKey { primary, shadow };
        let wt = |count, amount_cents| WhatIfTally {
            count,
            amount_cents,
        };
        // What the sink should hold, per shadow: analysis rows and what-if rows.
        let mut want: Vec<ShadowWant> = vec![Default::default(), Default::default()];
        // Per batch: (shadow, its new analysis row, its new what-if row).
        type Step = (
            usize,
            Option<(AnalysisKey, Tally)>,
            Option<(WhatIfKey, WhatIfTally)>,
        );
        let steps: Vec<Vec<Step>> = vec![
            vec![
                (
                    0,
                    Some((AnalysisKey::Status(Status::RejectedRisk), count(2))),
                    Some((pair(Status::Approved, Status::RejectedRisk), wt(2, 700))),
                ),
                (
                    0,
                    Some((AnalysisKey::ValueBand(1), tally(2, 0))),
                    Some((pair(Status::Approved, Status::Approved), wt(5, 1_000))),
                ),
                (
                    1,
                    Some((AnalysisKey::Status(Status::Approved), count(7))),
                    Some((pair(Status::RejectedRisk, Status::Approved), wt(1, 300))),
                ),
            ],
            vec![
                // The first shadow's rejected count and changed pair go back to zero.
                (
                    0,
                    Some((AnalysisKey::Status(Status::RejectedRisk), count(0))),
                    Some((pair(Status::Approved, Status::RejectedRisk), wt(0, 0))),
                ),
                (0, Some((AnalysisKey::ValueBand(1), tally(0, 0))), None),
                (
                    1,
                    None,
                    Some((pair(Status::Approved, Status::Approved), wt(4, 222))),
                ),
            ],
        ];
        for step in steps {
            let mut batch = gen.batch(2, &[(AnalysisKey::Hour(3), Some(count(1)))]);
            batch.shadows = vec![ShadowBatch::default(), ShadowBatch::default()];
            for (i, row, what_if) in step {
                let (rows, pairs) = &mut want[i];
                if let Some((k, t)) = row {
                    if let Some(old) = rows.get(&k) {
                        batch.shadows[i].analyses.push(((k.clone(), *old), -1));
                    }
                    if t != Tally::default() {
                        batch.shadows[i].analyses.push(((k.clone(), t), 1));
                        rows.insert(k, t);
                    } else {
                        rows.remove(&k);
                    }
                }
                if let Some((k, t)) = what_if {
                    if let Some(old) = pairs.get(&k) {
                        batch.shadows[i].what_if.push(((k, *old), -1));
                    }
                    if t != WhatIfTally::default() {
                        batch.shadows[i].what_if.push(((k, t), 1));
                        pairs.insert(k, t);
                    } else {
                        pairs.remove(&k);
                    }
                }
            }
            sink.apply(&batch);
            assert_shadows(&mut conn, p, &versions, &want);
            // The analyses of record are not the shadows'.
            assert_analyses(&mut conn, p, &gen.rows);
        }
        // Zero rows are gone, a status count stays at zero.
        let rejected = read_shadow_analyses(&mut conn, p, "strict").expect("read")["status_counts"]
            .as_array()
            .expect("rows")
            .iter()
            .find(|r| r["status"] == "rejected_risk")
            .cloned()
            .expect("every status is there");
        assert_eq!(rejected["count"], 0);
        assert_eq!(read_what_if(&mut conn, p, "strict").expect("read").len(), 1);
        // A rebuild writes them whole again.
        redis::cmd("DEL")
            .arg(format!("{p}:shadow:loose:1:what_if"))
            .arg(format!("{p}:shadow:strict:analysis:status_counts"))
            .exec(&mut conn)
            .unwrap();
        assert!(sink.flush(), "rebuilt");
        assert_shadows(&mut conn, p, &versions, &want);
    }

    #[test]
    fn redis_writes_batches_incrementally() {
        let server = Server::start(free_port());
        let mut conn = server.conn();
        let p = "t1";
        // What an older run left: the first write must replace it.
        redis::pipe()
            .cmd("HSET")
            .arg(format!("{p}:analysis:value_histogram"))
            .arg("stale|-1")
            .arg("{}")
            .cmd("ZADD")
            .arg(format!("{p}:recent"))
            .arg(1)
            .arg("9:9")
            .exec(&mut conn)
            .unwrap();

        let mut sink = RedisSink::new(&server.url(), options(p, 5)).unwrap();
        assert!(sink.stats().connected);
        let mut gen = Gen::default();
        let mut all = Vec::new();

        let b1 = gen.batch(
            3,
            &[
                (AnalysisKey::Status(Status::Approved), Some(count(1))),
                (AnalysisKey::Status(Status::Invalid), Some(count(1))),
                (AnalysisKey::Status(Status::Late), Some(count(1))),
                (AnalysisKey::ValueBand(1), Some(tally(1, 1))),
                (AnalysisKey::State("SP".into()), Some(tally(1, 0))),
                (AnalysisKey::Minute(28_333_333), Some(count(2))),
                (
                    AnalysisKey::DistanceMinute(28_333_333, 2),
                    Some(tally(1, 1)),
                ),
                (AnalysisKey::HourRisk(1), Some(tally(1, 1))),
            ],
        );
        sink.apply(&b1);
        all.extend(b1.decisions.iter());
        let s = sink.stats();
        assert_eq!((s.batches_written, s.rebuilds, s.failures), (1, 1, 0));
        assert_analyses(&mut conn, p, &gen.rows);
        assert_eq!(
            recent(&mut conn, p),
            b1.decisions
                .iter()
                .map(|d| (member(d), d.t))
                .collect::<Vec<_>>()
        );

        // A field nobody writes: an incremental write must leave untouched rows alone.
        redis::cmd("HSET")
            .arg(format!("{p}:analysis:hour_risk_outcome"))
            .arg("marker|-1")
            .arg("{}")
            .exec(&mut conn)
            .unwrap();
        let b2 = gen.batch(
            4,
            &[
                (AnalysisKey::Status(Status::Approved), Some(count(3))),
                // Retracted rows: status_counts keeps the status with count 0, the others go.
                (AnalysisKey::Status(Status::Invalid), None),
                (AnalysisKey::State("SP".into()), None),
                (AnalysisKey::ValueBand(1), Some(tally(3, 1))),
                (AnalysisKey::Hour(5), Some(tally(0, 2))),
                (AnalysisKey::Mode(Mode::Pix), Some(tally(2, 0))),
                (
                    AnalysisKey::Funds(Status::InsufficientLimit),
                    Some(tally(0, 1)),
                ),
            ],
        );
        sink.apply(&b2);
        all.extend(b2.decisions.iter());
        let s = sink.stats();
        assert_eq!((s.batches_written, s.rebuilds, s.failures), (2, 1, 0));
        let removed: bool = hash_cmd(
            &mut conn,
            "HDEL",
            format!("{p}:analysis:hour_risk_outcome"),
            "marker|-1",
        );
        assert!(
            removed,
            "an incremental write rewrote an untouched analysis"
        );
        let sp: bool = hash_cmd(
            &mut conn,
            "HEXISTS",
            format!("{p}:analysis:state_approval"),
            "SP|-1",
        );
        assert!(!sp, "a retracted row is still cached");
        let invalid: String = hash_cmd(
            &mut conn,
            "HGET",
            format!("{p}:analysis:status_counts"),
            "invalid|-1",
        );
        assert_eq!(
            serde_json::from_str::<Value>(&invalid).unwrap(),
            json!({"status": "invalid", "count": 0})
        );
        assert_analyses(&mut conn, p, &gen.rows);
        assert_eq!(sink.rows(), &gen.rows);

        // 7 decisions so far, the recent set keeps the newest 5.
        let newest: Vec<(String, u64)> = all[all.len() - 5..]
            .iter()
            .map(|d| (member(d), d.t))
            .collect();
        assert_eq!(recent(&mut conn, p), newest);

        // A batch larger than the limit.
        let b3 = gen.batch(8, &[(AnalysisKey::Hour(5), Some(tally(1, 2)))]);
        sink.apply(&b3);
        all.extend(b3.decisions.iter());
        let newest: Vec<(String, u64)> =
            b3.decisions[3..].iter().map(|d| (member(d), d.t)).collect();
        assert_eq!(recent(&mut conn, p), newest);
        assert_analyses(&mut conn, p, &gen.rows);
        for d in &all[all.len() - 5..] {
            assert_tx(&mut conn, p, d);
        }
        assert_tx_matches_recent(&mut conn, p);
        assert_time(&mut conn, p, gen.t);
        assert_eq!(sink.stats().batches_written, 3);

        // A seed replaces the rows and rebuilds: the cache follows.
        let mut seeded = BTreeMap::new();
        seeded.insert(AnalysisKey::Status(Status::Stale), count(7));
        seeded.insert(AnalysisKey::ValueRiskBucket(3), tally(2, 5));
        sink.seed(seeded.clone());
        gen.rows = seeded;
        let b4 = gen.batch(1, &[(AnalysisKey::Hour(1), Some(tally(1, 0)))]);
        sink.apply(&b4);
        assert_eq!(sink.stats().rebuilds, 2);
        assert_analyses(&mut conn, p, &gen.rows);
        assert_eq!(recent(&mut conn, p).len(), 5);
        assert_tx_matches_recent(&mut conn, p);
    }

    #[test]
    fn redis_outage_then_rebuild() {
        let port = free_port();
        let server = Server::start(port);
        let p = "t2";
        let mut sink = RedisSink::new(&server.url(), options(p, 100)).unwrap();
        let mut gen = Gen::default();
        let b1 = gen.batch(
            2,
            &[
                (AnalysisKey::Status(Status::Approved), Some(count(2))),
                (AnalysisKey::ValueBand(0), Some(tally(2, 0))),
                (AnalysisKey::State("RJ".into()), Some(tally(2, 0))),
            ],
        );
        sink.apply(&b1);
        assert_eq!(sink.stats().batches_written, 1);
        drop(server);

        let mut down = Vec::new();
        let changes: [&[(AnalysisKey, Option<Tally>)]; 3] = [
            &[
                (AnalysisKey::Status(Status::Approved), Some(count(4))),
                (AnalysisKey::ValueBand(0), Some(tally(4, 0))),
            ],
            &[
                (AnalysisKey::State("RJ".into()), None),
                (AnalysisKey::State("MG".into()), Some(tally(0, 3))),
            ],
            &[(AnalysisKey::Minute(28_000_000), Some(count(9)))],
        ];
        for c in changes {
            let b = gen.batch(3, c);
            let start = Instant::now();
            sink.apply(&b);
            assert!(
                start.elapsed() < Duration::from_millis(1500),
                "apply blocked {:?} while redis was down",
                start.elapsed()
            );
            down.extend(b.decisions.iter().map(|d| (member(d), d.t)));
        }
        let s = sink.stats();
        assert!(!s.connected, "{s:?}");
        assert!(s.failures >= 1, "{s:?}");
        assert_eq!(s.batches_written, 1);

        let server = Server::start(port);
        let mut reconnected = false;
        let deadline = Instant::now() + Duration::from_secs(15);
        for i in 0..40 {
            let b = gen.batch(1, &[(AnalysisKey::Hour(i % 24), Some(tally(i as i64, 1)))]);
            let start = Instant::now();
            sink.apply(&b);
            assert!(start.elapsed() < Duration::from_millis(1500));
            if sink.stats().connected {
                reconnected = true;
                break;
            }
            if Instant::now() > deadline {
                break;
            }
            sleep(Duration::from_millis(250));
        }
        assert!(reconnected, "no reconnection: {:?}", sink.stats());
        let s = sink.stats();
        assert_eq!(s.rebuilds, 2, "{s:?}");

        let mut conn = server.conn();
        assert_analyses(&mut conn, p, &gen.rows);
        let cached: BTreeSet<(String, u64)> = recent(&mut conn, p).into_iter().collect();
        for entry in &down {
            assert!(cached.contains(entry), "{entry:?} missing from {cached:?}");
        }
        assert_tx_matches_recent(&mut conn, p);
        assert_time(&mut conn, p, gen.t);

        // And it goes on incrementally.
        let b = gen.batch(1, &[(AnalysisKey::Mode(Mode::Boleto), Some(tally(0, 1)))]);
        sink.apply(&b);
        assert_eq!(sink.stats().rebuilds, 2);
        assert_analyses(&mut conn, p, &gen.rows);
    }

    #[test]
    fn redis_hung_server_times_out() {
        let p = "t5";
        let (server, mut sink, mut gen) =
            started(p, 2, &[(AnalysisKey::Hour(1), Some(tally(1, 1)))]);
        assert_eq!(sink.stats().batches_written, 1);
        let signal = |sig: &str| {
            let status = Command::new("kill")
                .arg(sig)
                .arg(server.child.id().to_string())
                .status()
                .expect("kill");
            assert!(status.success());
        };
        // A Redis that accepts but never answers: the write must time out, not hang.
        signal("-STOP");
        let b = gen.batch(2, &[(AnalysisKey::Hour(1), Some(tally(2, 1)))]);
        let start = Instant::now();
        sink.apply(&b);
        let took = start.elapsed();
        signal("-CONT");
        assert!(took < Duration::from_millis(1500), "apply blocked {took:?}");
        let s = sink.stats();
        assert!(!s.connected && s.failures == 1, "{s:?}");

        let i = until_connected(&mut sink, &mut gen);
        assert!(sink.stats().connected, "{:?}", sink.stats());
        assert_eq!(sink.stats().rebuilds, 2);
        let mut conn = server.conn();
        assert_analyses(&mut conn, p, &gen.rows);
        assert_eq!(recent(&mut conn, p).len() as i64, 4 + i);
    }

    #[test]
    fn redis_error_reply_heals_by_rebuild() {
        let p = "t6";
        let (server, mut sink, mut gen) =
            started(p, 1, &[(AnalysisKey::Hour(1), Some(tally(1, 0)))]);
        let mut conn = server.conn();
        // Someone overwrote the recent set with a string: ZADD fails inside EXEC.
        redis::cmd("SET")
            .arg(format!("{p}:recent"))
            .arg("oops")
            .exec(&mut conn)
            .unwrap();
        sink.apply(&gen.batch(1, &[(AnalysisKey::Hour(1), Some(tally(2, 0)))]));
        let s = sink.stats();
        assert!(!s.connected && s.failures == 1, "{s:?}");
        let i = until_connected(&mut sink, &mut gen);
        assert_eq!(sink.stats().rebuilds, 2, "{:?}", sink.stats());
        assert_analyses(&mut conn, p, &gen.rows);
        assert_eq!(recent(&mut conn, p).len() as i64, 2 + i);
    }

    #[test]
    fn redis_publishes_changes() {
        let server = Server::start(free_port());
        let p = "t3";
        let mut sub_conn = server.conn();
        let mut sub = sub_conn.as_pubsub();
        sub.subscribe(format!("{p}:analyses")).unwrap();
        sub.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut sink = RedisSink::new(
            &server.url(),
            RedisOptions {
                key_prefix: p.to_owned(),
                ..RedisOptions::default()
            },
        )
        .unwrap();
        let mut gen = Gen::default();

        let b1 = gen.batch(1, &[(AnalysisKey::Status(Status::Late), Some(count(1)))]);
        sink.apply(&b1);
        let msg = sub.get_message().expect("a message after the first batch");
        assert_eq!(msg.get_channel_name(), format!("{p}:analyses"));
        let v: Value = serde_json::from_str(&msg.get_payload::<String>().unwrap()).unwrap();
        // The first write is a rebuild: every analysis changed.
        assert_eq!(v, json!({"time": b1.time, "changed": NAMES}));

        let b2 = gen.batch(
            2,
            &[
                (AnalysisKey::ValueBand(4), Some(tally(1, 0))),
                (AnalysisKey::Status(Status::Approved), Some(count(1))),
            ],
        );
        sink.apply(&b2);
        let msg = sub.get_message().expect("a message after the second batch");
        let v: Value = serde_json::from_str(&msg.get_payload::<String>().unwrap()).unwrap();
        assert_eq!(
            v,
            json!({"time": b2.time, "changed": ["status_counts", "value_histogram"]})
        );
    }

    #[test]
    fn redis_unreachable_at_start_is_not_an_error() {
        assert!(RedisSink::new("not a url", RedisOptions::default()).is_err());
        assert!(RedisSink::new("http://127.0.0.1:1/", RedisOptions::default()).is_err());
        let url = format!("redis://127.0.0.1:{}/", free_port());
        let mut sink = RedisSink::new(&url, RedisOptions::default()).unwrap();
        let s = sink.stats();
        assert!(!s.connected);
        assert_eq!(s.failures, 1);
        let mut gen = Gen::default();
        for _ in 0..3 {
            let b = gen.batch(2, &[(AnalysisKey::Hour(3), Some(tally(1, 1)))]);
            let start = Instant::now();
            sink.apply(&b);
            assert!(start.elapsed() < Duration::from_millis(1500));
        }
        assert_eq!(sink.stats().batches_written, 0);
        assert_eq!(sink.rows(), &gen.rows);
    }
}

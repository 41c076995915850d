//! The live dashboard and the query API of VT.PGA (issue 5): a warp server with the
//! dashboard page (static HTML/JS/CSS embedded in the binary, charts drawn in SVG), a
//! read-only JSON API, Prometheus metrics, and Server-Sent Events that push every change.
//!
//! Depends on `vtpga-dataflow` and `vtpga-sinks` (the batch type, the consumer trait, the
//! stored-record readers); may not depend on `vtpga-ingest`: the dashboard shows what
//! came out, whatever it came from.
//!
//! * **Embedded** ([`spawn_embedded`]): `vtpga run` feeds a [`LiveState`] from a consumer
//!   thread of its write path ([`Observer`], [`LiveState::observe`] for every committed
//!   batch); the server reads it.
//! * **Standalone** ([`run_standalone`]): a follower thread mirrors the Redis cache into a
//!   `LiveState` (analyses, recent transactions, pushed on every `P:analyses`
//!   notification); PostgreSQL, when given, answers minute ranges, transactions by id
//!   beyond the recent ones, and users.
//!
//! # Routes
//!
//! All read-only (`GET`). When a token is set, every route that answers with data needs
//! `Authorization: Bearer <token>`, the token exactly (issue 12); otherwise 401 with a JSON
//! error. Never in a query string: URLs end up in histories, logs and `Referer` headers.
//! Three routes need no token: the page and its assets, which hold no data (the page's
//! sign-in form keeps the token for the tab in `sessionStorage` and sends it as a header,
//! the event stream included: it reads it with `fetch`, since `EventSource` cannot send
//! headers), and `/healthz`, for load balancers, which cannot send one and learn nothing
//! from it but that the server answers.
//!
//! | route | answer |
//! |---|---|
//! | `/` | the dashboard page (CSS and JS inline) |
//! | `/assets/app.js`, `/assets/style.css`, `/assets/favicon.svg` | the static assets |
//! | `/api/analyses` | SPEC §8 analyses JSON |
//! | `/api/analyses/{name}` | `{"name", "source", "from"?, "to"?, "rows"}`; `from`/`to` (RFC 3339 times with an offset, e.g. `2026-11-26T14:03:00Z`, inclusive minutes) only on `minute_frequency` and `distance_band_outcome` |
//! | `/api/transactions/recent?limit=N` | the newest N (1–500, default 50) decision records, newest first |
//! | `/api/transactions/{id}` | `{"id", "source", "decisions": [records in ledger order]}` (a transaction id can be carried by several messages: duplicates); `id` exactly as parsed (SPEC §8) |
//! | `/api/users/{id}` | the user's reference values and account as of now: `{"id", "name", "region_id", "opening_balance_cents", "credit_limit_cents", "balance_cents", "credit_used_cents", "credit_available_cents", "last_approved_ms", "last_approved_event_time", "source"}`; with PostgreSQL (`users` left-joined with `accounts`) also `uf` and `last_approvals` (the newest 20 as payer); without it, from the live state (`crate::controls`: users changed by control records or seeded, `account_source` `batch` or `opening`); 404 when the user does not exist (deleted) or is not known to the live view |
//! | `/api/rules` | `{"source", "in_force", "history" (in the order they applied, the initial set first), "pending"}`, each rule set `{"version", "risk_threshold", "max_delay_ms", "dedup_window_ms", "effective_ms", "partition", "offset"}` (no position: the initial set); with PostgreSQL from table `rule_sets` |
//! | `/api/whatif` | `{"shadows": [{"version", "rules": {"version", "risk_threshold", "max_delay_ms", "dedup_window_ms"}, "decided", "what_if": [{"shadow", "primary_status", "shadow_status", "count", "amount_cents"}]}]}`: each shadow rule set (SPEC §12) of the pipeline in this process, live (embedded); `[]` without shadows |
//! | `/api/shadows/{version}/analyses` | a shadow's ten analyses, as `/api/analyses`; 404 for an unknown version |
//! | `/api/controls` | `{"changes": [the latest reference changes and rejected control records, newest first], "pending": [control records accepted for a later effective time]}`, live (embedded) |
//! | `/healthz` | `{"status": "ok"}`, without the token: liveness, nothing else |
//! | `/api/health` | health figures (503 when standalone and Redis is unreachable) |
//! | `/metrics` | Prometheus text |
//! | `/api/stream` | Server-Sent Events: `snapshot` on connect, then `change` events; 503 beyond [`WebLimits::stream_clients`] clients |
//!
//! An `{id}` is percent-encoded UTF-8 and decoded exactly: any character, U+0000 included
//! (`%00`); a malformed escape or bytes that are not UTF-8 get 400, never a guess. The id
//! `recent` is written `%72ecent` (the literal segment is the route of the recent
//! decisions). A URI holds at most 65,534 bytes (the `http` crate), so the longest ids
//! (SPEC §8: up to 60 KB) are reachable only when their encoding fits.
//!
//! # The event stream
//!
//! `snapshot`: `{"seq", "analyses" (SPEC JSON), "transactions" (newest first, ≤ 500),
//! "rules": {"in_force", "pending"} (`null` standalone: the page asks `/api/rules`),
//! "controls" (the latest reference changes, newest first, ≤ 200), "health"}`. `change`:
//! `{"seq", "analyses": {name: rows} (only the analyses that changed, whole, except the two
//! per-minute ones), "minute_rows": {name: rows} (their changed rows; a row of zeros means
//! removed), "transactions" (new records, newest first), "rules" (only when the rule set in
//! force or the pending ones changed), "controls" (new reference changes, newest first),
//! "health"}`. Records and reference changes are identified by their source position.
//! A change event goes out at most 100 ms after the batch that caused it and at most one
//! every 100 ms (bursts coalesce); with nothing new, one with health alone every second.
//! Change events whose `seq` is not above the snapshot's are already in it. A client that
//! falls behind (64 events) gets a fresh snapshot.
//!
//! # Bounds (SPEC §10)
//!
//! The live state keeps the per-minute rows of the newest [`WebLimits::live_minutes`]
//! event-time minutes (default a day) and the newest [`RECENT_LIMIT`] decisions; at most
//! [`WebLimits::stream_clients`] event streams are served at once. Of the live changes it
//! keeps the newest [`RULES_HISTORY_LIMIT`] rule sets, [`CHANGES_LIMIT`] reference changes,
//! [`PENDING_LIMIT`] pending records, and users and accounts of at most
//! [`DEFAULT_LIVE_USERS`] users ([`LiveState::set_live_users`]). PostgreSQL keeps
//! everything. Answers and events are rendered from copies taken under the state's lock,
//! after it is released: the consumer thread never waits for a client.

#![warn(missing_docs)]

mod assets;
mod controls;
mod follow;
mod pg;
mod state;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use serde_json::{json, Value};
use tokio::sync::broadcast;
use warp::http::{header, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use vtpga_dataflow::analyses::NAMES;
use vtpga_dataflow::parse::parse_event_time;

pub use controls::{
    default_rules, CHANGES_LIMIT, DEFAULT_LIVE_USERS, PENDING_LIMIT, RULES_HISTORY_LIMIT,
};
pub use state::{
    analysis_name, is_minute_analysis, DataflowSource, LiveState, Observer, BATCH_BUCKETS,
    DEFAULT_LIVE_MINUTES, LATENCY_BUCKETS_S, RECENT_LIMIT,
};

use controls::UserLookup;
use state::Mode;

/// Coalescing interval of pushed changes: at most one change event per interval.
pub const PUSH_INTERVAL: Duration = Duration::from_millis(100);
/// With nothing new, a health-only event this often.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// How often the operator graph is pushed (the `dataflow` event), and its default window.
pub const DATAFLOW_INTERVAL: Duration = Duration::from_secs(1);
/// The longest window `/api/dataflow?window_ms=` takes.
const DATAFLOW_MAX_WINDOW_MS: u64 = 60_000;
/// Events a slow client may fall behind before it gets a fresh snapshot instead.
const STREAM_BACKLOG: usize = 64;
/// Default `limit` of `/api/transactions/recent`.
const DEFAULT_RECENT: usize = 50;

/// Where the server listens and whether it wants a bearer token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebConfig {
    /// Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// When set, every route requires `Authorization: Bearer <token>`.
    pub token: Option<String>,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            token: None,
        }
    }
}

/// What the server holds and answers for the live views is bounded (SPEC §10 "Bounded
/// memory and bounded answers"); the durable record in PostgreSQL keeps everything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WebLimits {
    /// The per-minute rows (analyses 9 `minute_frequency` and 10
    /// `distance_band_outcome`) of this many event-time minutes are kept live: the newest
    /// distinct minutes seen, per analysis (at least 1). Default [`DEFAULT_LIVE_MINUTES`]
    /// (1,440: a day, about 7,200 rows). Older minutes leave `/api/analyses` and the event
    /// stream; with PostgreSQL, `/api/analyses/{name}?from=` reaching before the kept
    /// minutes reads them from there.
    pub live_minutes: usize,
    /// Event-stream clients (`/api/stream`) served at once; one more gets 503 with a JSON
    /// error. Default [`DEFAULT_STREAM_CLIENTS`] (64).
    pub stream_clients: usize,
}

/// Default of [`WebLimits::stream_clients`].
pub const DEFAULT_STREAM_CLIENTS: usize = 64;

impl Default for WebLimits {
    fn default() -> Self {
        WebLimits {
            live_minutes: DEFAULT_LIVE_MINUTES,
            stream_clients: DEFAULT_STREAM_CLIENTS,
        }
    }
}

/// Everything the routes read. Cheap to clone.
#[derive(Clone)]
pub struct App {
    state: Arc<LiveState>,
    pg: Option<Arc<pg::Pg>>,
    token: Option<Arc<str>>,
    events: broadcast::Sender<Arc<Event>>,
    clients: Arc<AtomicUsize>,
    max_clients: usize,
}

/// One pushed event, shared by every client.
pub struct Event {
    kind: &'static str,
    seq: u64,
    data: String,
}

impl App {
    /// An app over `state`, with PostgreSQL for history when `postgres_url` is given.
    pub fn new(state: Arc<LiveState>, token: Option<String>, postgres_url: Option<String>) -> Self {
        let (events, _) = broadcast::channel(STREAM_BACKLOG);
        App {
            state,
            pg: postgres_url.map(|u| Arc::new(pg::Pg::new(u))),
            token: token.map(Arc::from),
            events,
            clients: Arc::new(AtomicUsize::new(0)),
            max_clients: DEFAULT_STREAM_CLIENTS,
        }
    }

    /// The app with `limits` instead of the defaults (they bound its state too).
    pub fn with_limits(mut self, limits: WebLimits) -> Self {
        self.state.set_live_minutes(limits.live_minutes);
        self.max_clients = limits.stream_clients;
        self
    }

    /// The state the app reads.
    pub fn state(&self) -> &Arc<LiveState> {
        &self.state
    }

    /// The task that turns changes into events; [`App::routes`] spawns it.
    async fn push_loop(self) {
        loop {
            let _ = tokio::time::timeout(HEALTH_INTERVAL, self.state.changed()).await;
            let has_changes = self.state.has_changes();
            if self.events.receiver_count() == 0 {
                // Nobody listens: a new client starts from a snapshot anyway.
                if has_changes {
                    self.state.discard_changes();
                    tokio::time::sleep(PUSH_INTERVAL).await;
                }
                continue;
            }
            let change = self.state.take_change();
            let kind = if has_changes { "change" } else { "health" };
            let _ = self.events.send(Arc::new(Event {
                kind,
                seq: change.seq,
                data: change.json,
            }));
            if has_changes {
                tokio::time::sleep(PUSH_INTERVAL).await;
            }
        }
    }

    /// The operator graph, once a [`DATAFLOW_INTERVAL`], while anyone listens.
    async fn dataflow_loop(self) {
        let mut seq = 0;
        loop {
            tokio::time::sleep(DATAFLOW_INTERVAL).await;
            let Some(source) = self.state.dataflow() else {
                continue;
            };
            if self.events.receiver_count() == 0 {
                continue;
            }
            seq += 1;
            let data = source.view(DATAFLOW_INTERVAL).to_string();
            let _ = self.events.send(Arc::new(Event {
                kind: "dataflow",
                seq,
                data,
            }));
        }
    }

    /// `GET /api/dataflow`: the operator graph with figures over `window_ms` (default
    /// [`DATAFLOW_INTERVAL`]).
    fn dataflow(&self, q: &HashMap<String, String>) -> Response {
        let Some(source) = self.state.dataflow() else {
            return error(
                StatusCode::NOT_FOUND,
                "no dataflow runs in this process (a standalone dashboard, or --no-dataflow-view)",
            );
        };
        let window = match q.get("window_ms").map(|w| w.parse::<u64>()) {
            None => DATAFLOW_INTERVAL,
            Some(Ok(ms)) if (1..=DATAFLOW_MAX_WINDOW_MS).contains(&ms) => Duration::from_millis(ms),
            Some(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("window_ms must be a whole number from 1 to {DATAFLOW_MAX_WINDOW_MS}"),
                )
            }
        };
        json_reply(StatusCode::OK, &source.view(window))
    }

    /// All routes, with the token check and JSON errors. Spawns the push task on the
    /// current tokio runtime (call it inside one).
    pub fn routes(self) -> warp::filters::BoxedFilter<(Response,)> {
        tokio::spawn(self.clone().push_loop());
        tokio::spawn(self.clone().dataflow_loop());
        let app = self;
        let with_app = {
            let app = app.clone();
            warp::any().map(move || app.clone())
        };
        let query = warp::query::<HashMap<String, String>>();

        let index = warp::path::end().map(assets::index);
        let asset = warp::path!("assets" / String).map(|name: String| assets::asset(&name));
        let analyses = warp::path!("api" / "analyses")
            .and(with_app.clone())
            .map(|app: App| json_reply(StatusCode::OK, &app.state.analyses_json()));
        let analysis = warp::path!("api" / "analyses" / String)
            .and(with_app.clone())
            .and(query)
            .then(|name: String, app: App, q| async move { app.analysis(&name, q).await });
        let recent = warp::path!("api" / "transactions" / "recent")
            .and(with_app.clone())
            .and(query)
            .map(|app: App, q: HashMap<String, String>| app.recent(&q));
        let by_id = warp::path!("api" / "transactions" / String)
            .and(with_app.clone())
            .then(|id: String, app: App| async move { app.transaction(&id).await });
        let user = warp::path!("api" / "users" / String)
            .and(with_app.clone())
            .then(|id: String, app: App| async move { app.user(&id).await });
        let rules = warp::path!("api" / "rules")
            .and(with_app.clone())
            .then(|app: App| async move { app.rules().await });
        let controls = warp::path!("api" / "controls")
            .and(with_app.clone())
            .map(|app: App| app.controls());
        let what_if = warp::path!("api" / "whatif")
            .and(with_app.clone())
            .map(|app: App| json_reply(StatusCode::OK, &app.state.what_if_json()));
        let shadow_analyses = warp::path!("api" / "shadows" / String / "analyses")
            .and(with_app.clone())
            .map(|version: String, app: App| app.shadow_analyses(&version));
        let dataflow = warp::path!("api" / "dataflow")
            .and(with_app.clone())
            .and(query)
            .map(|app: App, q: HashMap<String, String>| app.dataflow(&q));
        let healthz =
            warp::path!("healthz").map(|| json_reply(StatusCode::OK, &json!({"status": "ok"})));
        let health = warp::path!("api" / "health")
            .and(with_app.clone())
            .map(|app: App| app.health());
        let metrics = warp::path!("metrics")
            .and(with_app.clone())
            .map(|app: App| app.metrics());
        let stream = warp::path!("api" / "stream")
            .and(with_app.clone())
            .map(|app: App| app.stream());

        // What needs no token: nothing here holds data.
        let public = index.or(asset).unify().or(healthz).unify();
        let data = analyses
            .or(analysis)
            .unify()
            .or(recent)
            .unify()
            .or(by_id)
            .unify()
            .or(user)
            .unify()
            .or(rules)
            .unify()
            .or(controls)
            .unify()
            .or(dataflow)
            .unify()
            .or(what_if)
            .unify()
            .or(shadow_analyses)
            .unify()
            .or(health)
            .unify()
            .or(metrics)
            .unify()
            .or(stream)
            .unify();
        let token = app.token.clone();
        let auth = warp::header::headers_cloned()
            .and_then(move |headers: warp::http::HeaderMap| {
                let token = token.clone();
                async move {
                    match &token {
                        None => Ok(()),
                        Some(t) if bearer_is(headers.get(header::AUTHORIZATION), t) => Ok(()),
                        Some(_) => Err(warp::reject::custom(Unauthorized)),
                    }
                }
            })
            .untuple_one();
        // An unknown route without the token is 401 like a known one (the rejection of
        // `auth` outranks "not found"): nothing tells which routes exist.
        warp::get()
            .and(public.or(auth.and(data)).unify())
            .recover(recover)
            .unify()
            .boxed()
    }

    async fn analysis(&self, name: &str, q: HashMap<String, String>) -> Response {
        if !NAMES.contains(&name) {
            return error(StatusCode::NOT_FOUND, &format!("unknown analysis {name:?}"));
        }
        if let Some(bad) = q.keys().find(|k| !["from", "to"].contains(&k.as_str())) {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("unknown parameter {bad:?}"),
            );
        }
        let (from, to) = match (minute_param(&q, "from"), minute_param(&q, "to")) {
            (Ok(f), Ok(t)) => (f, t),
            (Err(e), _) | (_, Err(e)) => return error(StatusCode::BAD_REQUEST, &e),
        };
        if (from.is_some() || to.is_some()) && !is_minute_analysis(name) {
            return error(
                StatusCode::BAD_REQUEST,
                "from/to apply only to minute_frequency and distance_band_outcome",
            );
        }
        if let (Some(f), Some(t)) = (from, to) {
            if f > t {
                return error(StatusCode::BAD_REQUEST, "from is after to");
            }
        }
        let ranged = from.is_some() || to.is_some();
        let mut source = "live";
        let mut rows = None;
        // Standalone mode keeps no history; embedded mode drops the oldest minutes (SPEC
        // §10): PostgreSQL, when given, answers a range that reaches beyond memory.
        let beyond_memory =
            self.state.mode() == Mode::Standalone || self.state.dropped_from(name, from);
        if ranged && beyond_memory {
            if let Some(pg) = &self.pg {
                let (pg, n) = (pg.clone(), name.to_owned());
                match tokio::task::spawn_blocking(move || pg.minute_rows(&n, from, to)).await {
                    Ok(Ok(r)) => {
                        rows = Some(r);
                        source = "postgres";
                    }
                    Ok(Err(e)) => log::warn!("dashboard: PostgreSQL: {e:#}"),
                    Err(e) => log::warn!("dashboard: PostgreSQL query task: {e}"),
                }
            }
        }
        let rows = rows.unwrap_or_else(|| self.state.analysis_rows(name, from, to));
        let mut body = json!({"name": name, "source": source, "rows": rows});
        if let Some(f) = from {
            body["from"] = vtpga_dataflow::calendar::format_minute(f).into();
        }
        if let Some(t) = to {
            body["to"] = vtpga_dataflow::calendar::format_minute(t).into();
        }
        json_reply(StatusCode::OK, &body)
    }

    fn recent(&self, q: &HashMap<String, String>) -> Response {
        let limit = match q.get("limit") {
            None => DEFAULT_RECENT,
            Some(s) => match s.parse::<usize>() {
                Ok(n) if (1..=RECENT_LIMIT).contains(&n) => n,
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        &format!("limit must be an integer from 1 to {RECENT_LIMIT}, not {s:?}"),
                    )
                }
            },
        };
        let rows = self.state.recent(limit);
        let rows: Vec<&Value> = rows.iter().map(|r| &**r).collect();
        json_reply(StatusCode::OK, &json!(rows))
    }

    /// `GET /api/transactions/{id}`, with `encoded` as the path gives it (percent-encoded).
    async fn transaction(&self, encoded: &str) -> Response {
        let Some(id) = decode(encoded) else {
            return bad_id();
        };
        let id = id.as_str();
        let live = self.state.by_id(id);
        if !live.is_empty() {
            let live: Vec<&Value> = live.iter().map(|r| &**r).collect();
            return json_reply(
                StatusCode::OK,
                &json!({"id": id, "source": "live", "decisions": live}),
            );
        }
        if let Some(pg) = &self.pg {
            let (pg, key) = (pg.clone(), id.to_owned());
            match tokio::task::spawn_blocking(move || pg.by_id(&key)).await {
                Ok(Ok(rows)) if !rows.is_empty() => {
                    return json_reply(
                        StatusCode::OK,
                        &json!({"id": id, "source": "postgres", "decisions": rows}),
                    )
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return pg_error(e),
                Err(e) => return task_error(e),
            }
        }
        error(
            StatusCode::NOT_FOUND,
            &format!("unknown transaction id {id:?}"),
        )
    }

    /// `GET /api/users/{id}`, with `encoded` as the path gives it (percent-encoded): from
    /// PostgreSQL when configured (every user), else from the live state.
    async fn user(&self, encoded: &str) -> Response {
        let Some(id) = decode(encoded) else {
            return bad_id();
        };
        let id = id.as_str();
        let Some(pg) = &self.pg else {
            return match self.state.user(id) {
                UserLookup::Known(user, at, account) => json_reply(
                    StatusCode::OK,
                    &UserLookup::json(&user, at, account.as_ref()),
                ),
                UserLookup::Deleted(at) => error(
                    StatusCode::NOT_FOUND,
                    &format!("user {id:?} does not exist: deleted (effective {at} ms)"),
                ),
                UserLookup::Unknown => error(
                    StatusCode::NOT_FOUND,
                    &format!(
                        "user {id:?} is not known to the live view: without PostgreSQL \
                         (--postgres) it knows only the users changed by control records \
                         since it started, and those the pipeline gave it (at most {})",
                        self.state.live_users()
                    ),
                ),
            };
        };
        let (pg, key) = (pg.clone(), id.to_owned());
        match tokio::task::spawn_blocking(move || pg.user(&key)).await {
            Ok(Ok(Some(u))) => json_reply(StatusCode::OK, &u),
            Ok(Ok(None)) => error(
                StatusCode::NOT_FOUND,
                &format!("unknown user {id:?}: no user has this id (never created, or deleted)"),
            ),
            Ok(Err(e)) => pg_error(e),
            Err(e) => task_error(e),
        }
    }

    /// `GET /api/rules`: the rule set in force, the history and the pending rule sets;
    /// from `rule_sets` with PostgreSQL, else (or, embedded, when the database has no such
    /// table yet) from the live state.
    async fn rules(&self) -> Response {
        let standalone = self.state.mode() == Mode::Standalone;
        let (live_history, live_pending) = self.state.rules();
        let live_history: Vec<Value> = live_history.iter().map(|r| r.json()).collect();
        let live_pending: Vec<Value> = live_pending.iter().map(|r| r.json()).collect();
        let stored = match &self.pg {
            Some(pg) => {
                let pg = pg.clone();
                match tokio::task::spawn_blocking(move || pg.rules()).await {
                    Ok(Ok(rows)) => rows,
                    Ok(Err(e)) => return pg_error(e),
                    Err(e) => return task_error(e),
                }
            }
            None => None,
        };
        let (source, history, pending) = match stored {
            Some(rows) if !rows.history.is_empty() => {
                // What the database lists, then what this process saw scheduled and the
                // database does not list yet.
                let mut pending = rows.pending;
                let listed =
                    |v: &Value, list: &[Value]| list.iter().any(|r| r["version"] == v["version"]);
                for p in live_pending {
                    if !listed(&p, &pending) && !listed(&p, &rows.history) {
                        pending.push(p);
                    }
                }
                ("postgres", rows.history, pending)
            }
            // Standalone, the live state sees no control records: it knows nothing.
            _ if standalone => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the rule sets are read from PostgreSQL (table rule_sets), which is not \
                     configured or holds none yet",
                )
            }
            _ => ("live", live_history, live_pending),
        };
        let in_force = history.last().cloned().unwrap_or(Value::Null);
        json_reply(
            StatusCode::OK,
            &json!({"source": source, "in_force": in_force, "history": history, "pending": pending}),
        )
    }

    /// `GET /api/controls`: the latest reference changes and the pending control records.
    /// `GET /api/shadows/{version}/analyses`, the version percent-encoded as an id is.
    fn shadow_analyses(&self, encoded: &str) -> Response {
        let Some(version) = decode(encoded) else {
            return error(
                StatusCode::BAD_REQUEST,
                "the version must be percent-encoded UTF-8 (each % followed by two hex digits)",
            );
        };
        match self.state.shadow_analyses_json(&version) {
            Some(analyses) => json_reply(StatusCode::OK, &analyses),
            None => error(
                StatusCode::NOT_FOUND,
                &format!("no shadow rule set {version:?}"),
            ),
        }
    }

    fn controls(&self) -> Response {
        let (changes, pending) = self.state.controls();
        let changes: Vec<&Value> = changes.iter().map(|v| &**v).collect();
        let pending: Vec<&Value> = pending.iter().map(|v| &**v).collect();
        json_reply(
            StatusCode::OK,
            &json!({"source": "live", "changes": changes, "pending": pending}),
        )
    }

    /// The health figures (behind the token: they describe the pipeline).
    fn health(&self) -> Response {
        let mut h = self.state.health();
        h["sse_clients"] = self.clients.load(Ordering::Relaxed).into();
        h["postgres"] = self.pg.is_some().into();
        let down = h["redis"]["connected"] == false;
        h["status"] = if down { "degraded" } else { "ok" }.into();
        json_reply(
            if down {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            },
            &h,
        )
    }

    fn metrics(&self) -> Response {
        let clients = self.clients.load(Ordering::Relaxed) as f64;
        let body = self.state.metrics(&[(
            "vtpga_dashboard_stream_clients",
            "Connected Server-Sent Events clients.",
            clients,
        )]);
        let mut r = Response::new(body.into());
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        r
    }

    fn stream(&self) -> Response {
        // Each client costs a snapshot and a task: their number is bounded (SPEC §10).
        let Some(guard) = ClientGuard::try_new(self.clients.clone(), self.max_clients) else {
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many event-stream clients; try again later",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
            return r;
        };
        let rx = self.events.subscribe();
        let (seq, snapshot) = self.state.snapshot();
        let stream = event_stream(self.state.clone(), rx, seq, snapshot, guard);
        let mut r = warp::sse::reply(
            warp::sse::keep_alive()
                .interval(Duration::from_secs(15))
                .stream(stream),
        )
        .into_response();
        r.headers_mut().insert(
            header::HeaderName::from_static("x-accel-buffering"),
            header::HeaderValue::from_static("no"),
        );
        r
    }
}

/// Counts connected stream clients while alive.
struct ClientGuard(Arc<AtomicUsize>);

impl ClientGuard {
    /// A place among at most `max` clients, or `None` when they are all taken.
    fn try_new(n: Arc<AtomicUsize>, max: usize) -> Option<Self> {
        n.fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
            (c < max).then_some(c + 1)
        })
        .ok()?;
        Some(ClientGuard(n))
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn event_stream(
    state: Arc<LiveState>,
    rx: broadcast::Receiver<Arc<Event>>,
    seq: u64,
    snapshot: String,
    guard: ClientGuard,
) -> impl Stream<Item = Result<warp::sse::Event, Infallible>> + Send + 'static {
    let first = warp::sse::Event::default()
        .event("snapshot")
        .retry(Duration::from_secs(2))
        .data(snapshot);
    let rest = futures_util::stream::unfold(
        (state, rx, seq, guard),
        |(state, mut rx, mut seen, guard)| async move {
            loop {
                match rx.recv().await {
                    Ok(ev) => {
                        if ev.kind == "change" && ev.seq <= seen {
                            continue;
                        }
                        seen = seen.max(ev.seq);
                        let out = warp::sse::Event::default()
                            .event(ev.kind)
                            .data(ev.data.clone());
                        return Some((Ok(out), (state, rx, seen, guard)));
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let (s, snapshot) = state.snapshot();
                        seen = s;
                        let out = warp::sse::Event::default().event("snapshot").data(snapshot);
                        return Some((Ok(out), (state, rx, seen, guard)));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        },
    );
    futures_util::stream::once(async move { Ok(first) }).chain(rest)
}

/// Whether an `Authorization` header carries exactly `token` (issue 12): the scheme is
/// case-insensitive (RFC 7235 §2.1), then one space, then the token byte for byte. Nothing
/// is trimmed: ` tok`, `tok ` and `tok\t` are other tokens, so that a token the operator
/// did not write is never accepted. The header is taken as bytes, so that one that is not
/// text is a wrong token, not an error.
fn bearer_is(value: Option<&header::HeaderValue>, token: &str) -> bool {
    const SCHEME: &[u8] = b"bearer ";
    let Some(v) = value.map(header::HeaderValue::as_bytes) else {
        return false;
    };
    v.len() >= SCHEME.len()
        && v[..SCHEME.len()].eq_ignore_ascii_case(SCHEME)
        && same(&v[SCHEME.len()..], token.as_bytes())
}

/// Constant-time comparison (the token): the time taken says nothing of how much of it
/// matched; only its length shows.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Percent-decodes a path segment exactly (RFC 3986 §2.1), or `None`: every `%` must start
/// two hex digits, and the bytes must be UTF-8. Nothing is guessed (SPEC §8: an id is
/// looked up exactly as parsed): `%+1` is not U+0001, and `%FF` is not the text `%FF`.
fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let hex = |i: usize| b.get(i).and_then(|c| char::from(*c).to_digit(16));
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push((hex(i + 1)? * 16 + hex(i + 2)?) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The answer to an id that [`decode`] refuses.
fn bad_id() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "the id must be percent-encoded UTF-8 (each % followed by two hex digits; write % itself as %25)",
    )
}

/// A `from`/`to` parameter: an RFC 3339 time with an explicit offset, to its minute index.
fn minute_param(q: &HashMap<String, String>, name: &str) -> Result<Option<i64>, String> {
    let Some(s) = q.get(name) else {
        return Ok(None);
    };
    let b = s.as_bytes();
    let explicit_offset = matches!(b.last(), Some(b'Z' | b'z'))
        || (b.len() > 6 && matches!(b[b.len() - 6], b'+' | b'-') && b[b.len() - 3] == b':');
    match parse_event_time(s) {
        Ok(ms) if explicit_offset => Ok(Some(ms.div_euclid(60_000))),
        _ => Err(format!(
            "{name} must be an RFC 3339 time with an offset, like 2026-11-26T14:03:00Z, not {s:?}"
        )),
    }
}

fn json_reply(status: StatusCode, body: &Value) -> Response {
    let mut r = Response::new(body.to_string().into());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

pub(crate) fn error_response(status: StatusCode, message: &str) -> Response {
    json_reply(
        status,
        &json!({"error": message, "status": status.as_u16()}),
    )
}

fn error(status: StatusCode, message: &str) -> Response {
    error_response(status, message)
}

/// A failure of ours, not the client's (issue 12): the client gets `public` (a fixed text),
/// the status and a short request id; the log gets the id and the whole `detail`, which
/// can name hosts, databases and the driver's wording, and stays there.
fn internal_error(status: StatusCode, public: &str, detail: &dyn std::fmt::Display) -> Response {
    let id = request_id();
    log::warn!("dashboard: request {id}: {public}: {detail}");
    json_reply(
        status,
        &json!({"error": public, "status": status.as_u16(), "request_id": id}),
    )
}

/// A short id for one failed request, to find its log line: a counter, mixed so that the
/// ids of two runs seldom meet (the counter starts from the clock).
fn request_id() -> String {
    static NEXT: OnceLock<AtomicU64> = OnceLock::new();
    let next = NEXT.get_or_init(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        AtomicU64::new(now)
    });
    let n = next.fetch_add(1, Ordering::Relaxed);
    // A multiplication by an odd constant is a bijection: distinct counters, distinct ids.
    format!("{:016x}", n.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

fn pg_error(e: anyhow::Error) -> Response {
    internal_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the history store is not available; try again later",
        &format_args!("PostgreSQL: {e:#}"),
    )
}

/// The blocking task of a query panicked or was cancelled.
fn task_error(e: tokio::task::JoinError) -> Response {
    internal_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error",
        &format_args!("query task: {e}"),
    )
}

#[derive(Debug)]
struct Unauthorized;
impl warp::reject::Reject for Unauthorized {}

async fn recover(r: Rejection) -> Result<Response, Infallible> {
    if r.find::<Unauthorized>().is_some() {
        let mut resp = error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (Authorization: Bearer <token>)",
        );
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return Ok(resp);
    }
    if r.is_not_found() {
        return Ok(error(StatusCode::NOT_FOUND, "no such route"));
    }
    if r.find::<warp::reject::MethodNotAllowed>().is_some() {
        return Ok(error(
            StatusCode::METHOD_NOT_ALLOWED,
            "read-only API: GET only",
        ));
    }
    if r.find::<warp::reject::InvalidQuery>().is_some() {
        return Ok(error(StatusCode::BAD_REQUEST, "malformed query string"));
    }
    // Any other rejection of a GET is the request's fault; warp's debug text of it names
    // internals and is for the log only.
    Ok(internal_error(
        StatusCode::BAD_REQUEST,
        "bad request",
        &format_args!("{r:?}"),
    ))
}

/// A running server: its address and its thread. [`Server::stop`] ends it.
pub struct Server {
    /// The address the server is bound to (the actual port when `listen` asked for 0).
    pub addr: SocketAddr,
    /// The thread that runs the server's runtime; [`Server::stop`] joins it.
    pub thread: JoinHandle<()>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Server {
    /// Stops accepting, closes the event streams and waits for the thread.
    pub fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.thread.join();
    }
}

/// Binds `config.listen` (errors reported here) and serves `app`'s routes on a tokio
/// runtime of two threads, on a thread of its own.
pub fn spawn_app(
    config: &WebConfig,
    make_app: impl FnOnce() -> App + Send + 'static,
) -> std::io::Result<Server> {
    let listener = std::net::TcpListener::bind(config.listen)?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("vtpga-web")
        .enable_all()
        .build()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let thread = std::thread::Builder::new()
        .name("vtpga-web".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        log::error!("dashboard: {e}");
                        return;
                    }
                };
                let routes = make_app().routes();
                let mut stopped = stop_rx.clone();
                let server = warp::serve(routes)
                    .incoming(listener)
                    .graceful(async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    })
                    .run();
                // Event streams never end by themselves: after a stop, give the other
                // requests a second, then leave.
                let mut stopped = stop_rx;
                tokio::select! {
                    _ = server => {}
                    _ = async move {
                        let _ = stopped.wait_for(|s| *s).await;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    } => {}
                }
            });
            runtime.shutdown_timeout(Duration::from_millis(100));
        })?;
    Ok(Server {
        addr,
        thread,
        stop: stop_tx,
    })
}

/// Serves the dashboard and the API from `state` (embedded mode), on a thread and tokio
/// runtime of its own, until the process ends. A binding error is returned.
pub fn spawn_embedded(config: WebConfig, state: Arc<LiveState>) -> std::io::Result<JoinHandle<()>> {
    spawn_embedded_with(config, state, None).map(|s| s.thread)
}

/// [`spawn_embedded`] with PostgreSQL for users and transactions older than the recent
/// ones, returning the [`Server`] (its bound address, a way to stop it).
pub fn spawn_embedded_with(
    config: WebConfig,
    state: Arc<LiveState>,
    postgres_url: Option<String>,
) -> std::io::Result<Server> {
    spawn_embedded_with_limits(config, WebLimits::default(), state, postgres_url)
}

/// [`spawn_embedded_with`] with `limits` instead of the defaults.
pub fn spawn_embedded_with_limits(
    config: WebConfig,
    limits: WebLimits,
    state: Arc<LiveState>,
    postgres_url: Option<String>,
) -> std::io::Result<Server> {
    let token = config.token.clone();
    spawn_app(&config, move || {
        App::new(state, token, postgres_url).with_limits(limits)
    })
}

/// The standalone server's parts: its state mirrors Redis (key prefix `prefix`).
pub fn standalone_app(
    token: Option<String>,
    redis_url: &str,
    prefix: &str,
    postgres_url: Option<String>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<App> {
    let client = redis::Client::open(redis_url).map_err(|e| anyhow::anyhow!("Redis URL: {e}"))?;
    let state = LiveState::with_mode(0, Mode::Standalone);
    follow::spawn(state.clone(), client, prefix.to_owned(), stop)?;
    Ok(App::new(state, token, postgres_url))
}

/// Serves the dashboard and the API from Redis (live analyses and recent transactions,
/// key prefix `vtpga`) and PostgreSQL (minute ranges, transactions by id, users), until
/// the process ends. Blocks.
pub fn run_standalone(
    config: WebConfig,
    redis_url: String,
    postgres_url: Option<String>,
) -> anyhow::Result<()> {
    run_standalone_with_limits(config, WebLimits::default(), redis_url, postgres_url)
}

/// [`run_standalone`] with `limits` instead of the defaults.
pub fn run_standalone_with_limits(
    config: WebConfig,
    limits: WebLimits,
    redis_url: String,
    postgres_url: Option<String>,
) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let token = config.token.clone();
    let app =
        standalone_app(token, &redis_url, "vtpga", postgres_url, stop.clone())?.with_limits(limits);
    let server = spawn_app(&config, move || app)
        .map_err(|e| anyhow::anyhow!("dashboard: binding {}: {e}", config.listen))?;
    log::info!("dashboard on http://{}", server.addr);
    let result = server.thread.join();
    stop.store(true, Ordering::Relaxed);
    result.map_err(|_| anyhow::anyhow!("the dashboard's thread panicked"))
}

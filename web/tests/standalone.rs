//! The standalone server against a private Redis and PostgreSQL written by the real sinks:
//! analyses and recent transactions mirrored from Redis (and pushed), minute ranges,
//! transactions beyond the recent ones and users from PostgreSQL, health when Redis dies.
//!
//! Needs `redis-server` and PostgreSQL 15 (`scripts/setup.sh` installs both), like the
//! workspace's recovery tests.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use warp::http::StatusCode;

use support::{all_kinds, decision, Feeder, SseClient, MINUTE0};
use vtpga_dataflow::analyses::to_json;
use vtpga_dataflow::graph::{Account, Decision};
use vtpga_dataflow::record::DecisionRecord;
use vtpga_dataflow::{Region, Status, User};
use vtpga_sinks::postgres::{self as pg, PgSink};
use vtpga_sinks::redis::{RedisOptions, RedisSink};
use vtpga_testkit::{Postgres, Redis};
use vtpga_web::{App, WebConfig};

type Routes = warp::filters::BoxedFilter<(warp::reply::Response,)>;

/// The test's runtime: the synchronous PostgreSQL client must not run inside one, so the
/// test is synchronous and enters the runtime for the requests only.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn get_json(rt: &tokio::runtime::Runtime, routes: &Routes, path: &str) -> (StatusCode, Value) {
    let resp = rt.block_on(warp::test::request().path(path).reply(routes));
    let body = serde_json::from_slice(resp.body()).expect("JSON body");
    (resp.status(), body)
}

/// Decisions with distinct arrival times (the recent set is ordered by `t`), payers
/// u000..u006, every fourth one credito.
fn decisions(from: i64, to: i64) -> Vec<Decision> {
    (from..to)
        .map(|i| {
            let status = match i % 5 {
                0..=2 => Status::Approved,
                3 => Status::InsufficientBalance,
                _ => Status::Late,
            };
            decision(i, 1000 + i as u64, status, &format!("s-{i}"), 100 + i, 0)
        })
        .collect()
}

/// What a dashboard keeps from the event stream, applied as the page's script does.
#[derive(Default)]
struct Model {
    analyses: serde_json::Map<String, Value>,
    /// Per-minute rows by their key.
    minutes: BTreeMap<String, BTreeMap<String, Value>>,
    transactions: Vec<Value>,
    seq: u64,
}

fn minute_key(row: &Value) -> String {
    format!("{}|{}", row["minute"], row["band"])
}

impl Model {
    fn set(&mut self, name: &str, rows: &Value) {
        if name == "minute_frequency" || name == "distance_band_outcome" {
            let m = self.minutes.entry(name.to_owned()).or_default();
            m.clear();
            for r in rows.as_array().unwrap() {
                m.insert(minute_key(r), r.clone());
            }
        } else {
            self.analyses.insert(name.to_owned(), rows.clone());
        }
    }

    fn apply(&mut self, e: &support::SseEvent) {
        let seq = e.data["seq"].as_u64().unwrap_or(0);
        match e.kind.as_str() {
            "snapshot" => {
                self.seq = seq;
                for (name, rows) in e.data["analyses"].as_object().unwrap() {
                    self.set(name, rows);
                }
                self.transactions = e.data["transactions"].as_array().unwrap().clone();
            }
            "change" if seq > self.seq => {
                self.seq = seq;
                for (name, rows) in e.data["analyses"].as_object().unwrap() {
                    self.set(name, rows);
                }
                for (name, rows) in e.data["minute_rows"].as_object().unwrap() {
                    let m = self.minutes.entry(name.clone()).or_default();
                    for r in rows.as_array().unwrap() {
                        let zero = ["count", "approved", "rejected"]
                            .iter()
                            .all(|f| r[*f].as_i64().unwrap_or(0) == 0);
                        if zero {
                            m.remove(&minute_key(r));
                        } else {
                            m.insert(minute_key(r), r.clone());
                        }
                    }
                }
                // A record observed just before the snapshot may come again: keep it once,
                // as the page does.
                let pos = |t: &Value| (t["partition"].clone(), t["offset"].clone());
                let mut fresh: Vec<Value> = e.data["transactions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|t| self.transactions.iter().all(|k| pos(k) != pos(t)))
                    .cloned()
                    .collect();
                fresh.append(&mut self.transactions);
                self.transactions = fresh;
            }
            _ => {}
        }
    }

    /// The analyses as SPEC JSON (per-minute rows in key order, as `to_json` gives them).
    fn analyses(&self) -> Value {
        let mut out = self.analyses.clone();
        for name in ["minute_frequency", "distance_band_outcome"] {
            let mut rows: Vec<Value> = self
                .minutes
                .get(name)
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default();
            let band = |r: &Value| {
                ["short", "medium_short", "medium_long", "long"]
                    .iter()
                    .position(|b| r["band"] == *b)
            };
            rows.sort_by(|a, b| {
                (a["minute"].as_str(), band(a)).cmp(&(b["minute"].as_str(), band(b)))
            });
            out.insert(name.to_owned(), Value::Array(rows));
        }
        Value::Object(out)
    }
}

/// A record as the embedded server renders it, without `decided_at_ms`.
fn record(d: &Decision) -> Value {
    serde_json::to_value(DecisionRecord::of(d)).unwrap()
}

fn without_decided_at(v: &Value) -> Value {
    let mut v = v.clone();
    v.as_object_mut().unwrap().remove("decided_at_ms");
    v
}

fn wait_for<F: Fn(&Value) -> bool>(
    rt: &tokio::runtime::Runtime,
    routes: &Routes,
    path: &str,
    ok: F,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, body) = get_json(rt, routes, path);
        if ok(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path} never matched; last {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn standalone_reads_redis_and_postgres() {
    let rt = runtime();
    let postgres = Postgres::start();
    let mut redis = Redis::start();
    {
        let mut client = pg::connect(&postgres.url).expect("connect and migrate");
        let regions = [Region {
            id: "r001".into(),
            uf: "SP".into(),
            name: "São Paulo".into(),
            lat: -23.55,
            lon: -46.63,
        }];
        let users: Vec<User> = (0..7)
            .map(|i| User {
                id: format!("u{i:03}"),
                name: format!("User {i}"),
                region_id: "r001".into(),
                balance_cents: 1_000_000,
                credit_limit_cents: 50_000,
            })
            .collect();
        pg::seed_reference(&mut client, &regions, &users).expect("seed");
        // The rule sets (SPEC §11): the initial one, in force from the start.
        support::create_rule_sets(&mut client, &vtpga_web::default_rules());
    }
    let mut pg_sink = PgSink::new(&postgres.url, "test").expect("pg sink");
    let mut redis_sink = RedisSink::new(&redis.url, RedisOptions::default()).expect("redis sink");
    let mut feeder = Feeder::default();
    let mut deltas = all_kinds(MINUTE0, 300, 120);
    deltas.extend(all_kinds(MINUTE0 + 5, 60, 0));
    let first = decisions(0, 600);
    let mut batch = feeder.batch(1599, first.clone(), deltas);
    batch.accounts = vec![Account {
        user: "u001".into(),
        balance_cents: 987_654,
        credit_used_cents: 1_234,
        last_approved_ms: Some(MINUTE0 * 60_000 + 59_000),
        deleted: false,
    }];
    pg_sink.write(&batch, &|| false).expect("pg write");
    redis_sink.apply(&batch);
    assert!(redis_sink.stats().connected);

    let stop = Arc::new(AtomicBool::new(false));
    let app = vtpga_web::standalone_app(
        None,
        &redis.url,
        "vtpga",
        Some(postgres.url.clone()),
        stop.clone(),
    )
    .expect("standalone app");
    let routes: Routes = rt.block_on(async { App::routes(app) });
    let expected = to_json(&feeder.rows);
    let analyses = wait_for(&rt, &routes, "/api/analyses", |b| *b == expected);
    assert_eq!(analyses["status_counts"][8]["count"], 360);

    // The newest 500 of the 600, newest first, exactly as the embedded server renders them.
    let recent = wait_for(&rt, &routes, "/api/transactions/recent?limit=500", |b| {
        b.as_array().unwrap().len() == 500
    });
    let recent = recent.as_array().unwrap();
    for (i, r) in recent.iter().enumerate() {
        let d = &first[599 - i];
        assert_eq!(without_decided_at(r), record(d), "recent[{i}]");
        assert!(r["decided_at_ms"].as_u64().unwrap() > 1_700_000_000_000);
    }

    // By id: the mirror for recent ones, PostgreSQL for the older ones, 404 otherwise.
    let (status, body) = get_json(&rt, &routes, "/api/transactions/s-550");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["source"], "live");
    assert_eq!(
        without_decided_at(&body["decisions"][0]),
        record(&first[550])
    );
    let (status, body) = get_json(&rt, &routes, "/api/transactions/s-5");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["source"], "postgres");
    assert_eq!(body["decisions"].as_array().unwrap().len(), 1);
    assert_eq!(without_decided_at(&body["decisions"][0]), record(&first[5]));
    let (status, body) = get_json(&rt, &routes, "/api/transactions/none-such");
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].is_string());

    // Users: the account written by the sink, the reference limit, the last approvals.
    let (status, user) = get_json(&rt, &routes, "/api/users/u001");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(user["balance_cents"], 987_654);
    assert_eq!(user["credit_used_cents"], 1_234);
    assert_eq!(user["credit_limit_cents"], 50_000);
    assert_eq!(user["credit_available_cents"], 50_000 - 1_234);
    assert_eq!(user["uf"], "SP");
    assert_eq!(user["last_approved_event_time"], "2026-11-26T17:03:59.000Z");
    assert_eq!(user["last_approved_ms"], MINUTE0 * 60_000 + 59_000);
    assert_eq!(user["opening_balance_cents"], 1_000_000);
    assert_eq!(
        (&user["id"], &user["name"]),
        (&json!("u001"), &json!("User 1"))
    );
    assert_eq!(user["region_id"], "r001");
    let approvals = user["last_approvals"].as_array().unwrap();
    let mut expected_approvals: Vec<&Decision> = first
        .iter()
        .filter(|d| d.status == Status::Approved && d.tx.as_ref().unwrap().payer == "u001")
        .collect();
    expected_approvals.reverse();
    assert_eq!(approvals.len(), 20);
    for (a, d) in approvals.iter().zip(expected_approvals) {
        assert_eq!(without_decided_at(a), record(d));
    }
    let (status, _) = get_json(&rt, &routes, "/api/users/nobody");
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The rule sets: from PostgreSQL (standalone sees no control records).
    let (status, rules) = get_json(&rt, &routes, "/api/rules");
    assert_eq!(status, StatusCode::OK, "{rules}");
    assert_eq!(rules["source"], "postgres");
    assert_eq!(rules["in_force"]["version"], "default");
    assert_eq!(rules["history"].as_array().map(Vec::len), Some(1));

    // Minute ranges come from PostgreSQL.
    let (status, body) = get_json(
        &rt,
        &routes,
        "/api/analyses/minute_frequency?from=2026-11-26T17:04:00Z",
    );
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["source"], "postgres");
    assert_eq!(
        body["rows"],
        json!([{"minute": "2026-11-26T17:08:00Z", "count": 60}])
    );
    let (_, body) = get_json(
        &rt,
        &routes,
        "/api/analyses/distance_band_outcome?from=2026-11-26T17:00:00Z&to=2026-11-26T17:10:00Z",
    );
    assert_eq!(body["source"], "postgres");
    assert_eq!(body["rows"], expected["distance_band_outcome"]);
    let (_, body) = get_json(&rt, &routes, "/api/analyses/distance_band_outcome");
    assert_eq!(body["source"], "live");
    assert_eq!(body["rows"], expected["distance_band_outcome"]);

    let (status, health) = get_json(&rt, &routes, "/api/health");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["mode"], "standalone");
    assert_eq!(health["redis"]["connected"], true);
    assert_eq!(health["closed_time_ms"], 1599);

    // Pushed: a server of its own, a snapshot, then the change of a batch written to Redis.
    let app2 = vtpga_web::standalone_app(None, &redis.url, "vtpga", None, stop.clone()).unwrap();
    let config = WebConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        token: None,
    };
    let server = vtpga_web::spawn_app(&config, move || app2).expect("bind");
    let mut sse = SseClient::connect(server.addr, "/api/stream");
    let mut model = Model::default();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(model.analyses() == expected && model.transactions.len() == 500) {
        let e = sse.next(deadline).unwrap_or_else(|| {
            panic!(
                "the stream never showed the data; model {}",
                model.analyses()
            )
        });
        model.apply(&e);
    }
    assert_eq!(
        without_decided_at(&model.transactions[0]),
        record(&first[599])
    );
    let second = decisions(600, 603);
    let batch = feeder.batch(1602, second.clone(), all_kinds(MINUTE0 + 6, 3, 0));
    let sent = Instant::now();
    redis_sink.apply(&batch);
    let expected = to_json(&feeder.rows);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(model.analyses() == expected && model.transactions.len() == 503) {
        let e = sse.next(deadline).expect("the change of the second batch");
        model.apply(&e);
    }
    let took = sent.elapsed();
    assert!(took < Duration::from_millis(500), "change after {took:?}");
    assert_eq!(
        without_decided_at(&model.transactions[0]),
        record(&second[2])
    );
    server.stop();

    // Redis gone: health says so.
    redis.kill();
    let health = wait_for(&rt, &routes, "/api/health", |h| h["status"] == "degraded");
    assert_eq!(health["redis"]["connected"], false);
    let resp = rt.block_on(warp::test::request().path("/api/health").reply(&routes));
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
}

//! Every route of the embedded server through `warp::test`, fed with hand-built batches;
//! the event stream through a real socket.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use warp::http::StatusCode;

use support::{all_kinds, decision, Feeder, SseClient, MINUTE0};
use vtpga_dataflow::analyses::{to_json, AnalysisKey, NAMES};
use vtpga_dataflow::Status;
use vtpga_web::{App, LiveState, WebConfig, WebLimits};

type Routes = warp::filters::BoxedFilter<(warp::reply::Response,)>;

async fn get(routes: &Routes, path: &str) -> (StatusCode, String, String) {
    get_with(routes, path, None).await
}

async fn get_with(routes: &Routes, path: &str, auth: Option<&str>) -> (StatusCode, String, String) {
    let mut req = warp::test::request().method("GET").path(path);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let resp = req.reply(routes).await;
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (
        resp.status(),
        ct,
        String::from_utf8(resp.body().to_vec()).unwrap(),
    )
}

async fn get_json(routes: &Routes, path: &str) -> (StatusCode, Value) {
    let (status, ct, body) = get(routes, path).await;
    assert_eq!(ct, "application/json", "{path}");
    (status, serde_json::from_str(&body).expect("JSON body"))
}

/// GETs `path`, checks that it answers `status` with JSON, and returns the body.
async fn get_json_as(routes: &Routes, path: &str, status: StatusCode) -> Value {
    let (got, body) = get_json(routes, path).await;
    assert_eq!(got, status, "{path}: {body}");
    body
}

/// GETs `path` and checks that it answers `status`.
async fn assert_status(routes: &Routes, path: &str, status: StatusCode) {
    let (got, _, _) = get(routes, path).await;
    assert_eq!(got, status, "{path}");
}

/// GETs `/api/analyses` with each of `auths` as the Authorization header and checks
/// that it answers `status`.
async fn analyses_with(routes: &Routes, auths: &[&str], status: StatusCode) {
    for auth in auths {
        let (got, _, _) = get_with(routes, "/api/analyses", Some(auth)).await;
        assert_eq!(got, status, "{auth:?}");
    }
}

/// [`assert_status`] for each of `paths`.
async fn assert_statuses(routes: &Routes, status: StatusCode, paths: &[&str]) {
    for path in paths {
        assert_status(routes, path, status).await;
    }
}

/// A state fed with two batches (the second changes rows of the first), and the feeder
/// holding the expected rows.
fn fed_state() -> (Arc<LiveState>, Feeder) {
    let state = LiveState::new(2);
    let mut feeder = Feeder::default();
    let mut deltas = all_kinds(MINUTE0 + 1, 2, 0);
    deltas.extend(all_kinds(MINUTE0 + 3, 0, 1));
    deltas.push((AnalysisKey::Hour(14), support::tally(1, 1, 0, 1000, 0)));
    // (time, decisions, row deltas, when observed)
    let batches = [
        (
            1000,
            vec![
                decision(0, 1000, Status::Approved, "tx-a", 12_345, 1),
                decision(1, 1000, Status::InsufficientBalance, "tx-b", 500, 1),
                decision(2, 1000, Status::Invalid, "", 0, 0),
            ],
            all_kinds(MINUTE0, 1, 1),
            5_000,
        ),
        (
            1001,
            vec![
                decision(3, 1001, Status::Approved, "tx-c", 99, 2_000),
                decision(4, 1001, Status::Duplicate, "tx-a", 12_345, 2_000),
                decision(5, 1001, Status::Approved, "tx-d", 1, 2_000),
            ],
            deltas,
            3_000 + 2_000,
        ),
    ];
    for (time, decisions, deltas, now) in batches {
        state.observe(&feeder.batch(time, decisions, deltas), now);
    }
    (state, feeder)
}

fn routes(state: Arc<LiveState>, token: Option<&str>) -> Routes {
    App::new(state, token.map(str::to_owned), None).routes()
}

/// The routes (with `token`) over [`fed_state`], and its feeder.
fn fed_routes(token: Option<&str>) -> (Routes, Feeder) {
    let (state, feeder) = fed_state();
    (routes(state, token), feeder)
}

/// The routes (no token) with `limits` over [`fed_state`], and its feeder.
fn fed_routes_with(limits: WebLimits) -> (Routes, Feeder) {
    let (state, feeder) = fed_state();
    (
        App::new(state, None, None).with_limits(limits).routes(),
        feeder,
    )
}

/// The text field `field` of each row of the JSON array `rows`.
fn texts<'a>(rows: &'a Value, field: &str) -> Vec<&'a str> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| r[field].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn analyses_equal_the_rows_fed() {
    let (routes, feeder) = fed_routes(None);
    let body = get_json_as(&routes, "/api/analyses", StatusCode::OK).await;
    let expected = to_json(&feeder.rows);
    assert_eq!(body, expected);
    // Real numbers: two approvals, one duplicate, the Hour(14) row summed over batches.
    assert_eq!(
        body["status_counts"][8],
        json!({"status": "approved", "count": 3})
    );
    assert_eq!(
        body["hour_histogram"],
        json!([{"hour": 14, "approved": 4, "rejected": 2}])
    );
    assert_eq!(body["minute_frequency"].as_array().unwrap().len(), 3);
    for name in NAMES {
        let (status, one) = get_json(&routes, &format!("/api/analyses/{name}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(one["name"], name);
        assert_eq!(one["source"], "live");
        assert_eq!(one["rows"], expected[name], "{name}");
        assert!(
            !one["rows"].as_array().unwrap().is_empty(),
            "{name} has rows"
        );
    }
}

#[tokio::test]
async fn analysis_errors_and_minute_ranges() {
    let (routes, feeder) = fed_routes(None);
    let body = get_json_as(&routes, "/api/analyses/nope", StatusCode::NOT_FOUND).await;
    assert!(body["error"].as_str().unwrap().contains("nope"));

    // 17:04 to 17:05 inclusive: only the minute 17:04 has rows.
    let body = get_json_as(
        &routes,
        "/api/analyses/minute_frequency?from=2026-11-26T17:04:00Z&to=2026-11-26T17:05:00Z",
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        body["rows"],
        json!([{"minute": "2026-11-26T17:04:00Z", "count": 2}])
    );
    assert_eq!(body["from"], "2026-11-26T17:04:00Z");
    assert_eq!(body["to"], "2026-11-26T17:05:00Z");
    // An offset, seconds inside the minute, and only one bound.
    let body = get_json_as(
        &routes,
        "/api/analyses/distance_band_outcome?from=2026-11-26T14:05:59.9-03:00",
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        body["rows"],
        json!([{"minute": "2026-11-26T17:06:00Z", "band": "medium_short", "approved": 0, "rejected": 1}])
    );
    let all = to_json(&feeder.rows);
    let (_, body) = get_json(
        &routes,
        "/api/analyses/distance_band_outcome?to=2026-11-26T17:06:00Z",
    )
    .await;
    assert_eq!(body["rows"], all["distance_band_outcome"]);

    for bad in [
        "/api/analyses/minute_frequency?from=yesterday",
        "/api/analyses/minute_frequency?from=2026-11-26T17:04:00",
        "/api/analyses/minute_frequency?to=2026-13-26T17:04:00Z",
        "/api/analyses/minute_frequency?from=2026-11-26T17:05:00Z&to=2026-11-26T17:04:00Z",
        "/api/analyses/status_counts?from=2026-11-26T17:04:00Z",
        "/api/analyses/minute_frequency?since=2026-11-26T17:04:00Z",
    ] {
        let body = get_json_as(&routes, bad, StatusCode::BAD_REQUEST).await;
        assert!(body["error"].is_string(), "{bad}");
    }
}

#[tokio::test]
async fn recent_transactions_and_limits() {
    let (state, _) = fed_state();
    let routes = routes(state.clone(), None);
    let body = get_json_as(&routes, "/api/transactions/recent", StatusCode::OK).await;
    let ids: Vec<i64> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["offset"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![5, 4, 3, 2, 1, 0], "newest first");
    assert_eq!(
        body[3],
        json!({"partition": 2, "offset": 2, "t": 1000, "status": "invalid", "error": "not JSON",
               "rules_version": "default", "decided_at_ms": 5})
    );
    let first = &body[5];
    assert_eq!(first["id"], "tx-a");
    assert_eq!(first["amount_cents"], 12_345);
    assert_eq!(first["mode"], "pix");
    assert_eq!(first["event_time"], "2026-11-26T17:03:00.000Z");
    assert_eq!(first["risk"], 0.28125);
    let (_, body) = get_json(&routes, "/api/transactions/recent?limit=2").await;
    assert_eq!(body.as_array().unwrap().len(), 2);
    assert_eq!(body[0]["offset"], 5);
    for bad in ["0", "501", "abc", "-1", "2.5", ""] {
        let (status, body) =
            get_json(&routes, &format!("/api/transactions/recent?limit={bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "limit={bad}");
        assert!(body["error"].as_str().unwrap().contains("limit"));
    }

    // 600 more: only the newest 500 are kept, and the index forgets the others.
    let mut feeder = Feeder::default();
    let decisions = (10..610)
        .map(|i| decision(i, 2000, Status::Approved, &format!("bulk-{i}"), 100, 0))
        .collect();
    state.observe(&feeder.batch(2000, decisions, Vec::new()), 9_000);
    let (_, body) = get_json(&routes, "/api/transactions/recent?limit=500").await;
    let rows = body.as_array().unwrap();
    assert_eq!(rows.len(), 500);
    assert_eq!(rows[0]["offset"], 609);
    assert_eq!(rows[499]["offset"], 110);
    let (status, _) = get_json(&routes, "/api/transactions/bulk-109").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let body = get_json_as(&routes, "/api/transactions/bulk-110", StatusCode::OK).await;
    assert_eq!(body["decisions"][0]["offset"], 110);
}

#[tokio::test]
async fn transaction_by_id() {
    let (routes, _) = fed_routes(None);
    // tx-a: approved, then seen again as a duplicate.
    let body = get_json_as(&routes, "/api/transactions/tx-a", StatusCode::OK).await;
    assert_eq!(body["id"], "tx-a");
    assert_eq!(body["source"], "live");
    let statuses = texts(&body["decisions"], "status");
    assert_eq!(statuses, ["approved", "duplicate"]);
    let body = get_json_as(
        &routes,
        "/api/transactions/unknown-id",
        StatusCode::NOT_FOUND,
    )
    .await;
    assert!(body["error"].as_str().unwrap().contains("unknown-id"));
    // Percent-encoded ids are decoded.
    let state = LiveState::new(1);
    let mut feeder = Feeder::default();
    state.observe(
        &feeder.batch(
            1,
            vec![decision(0, 1, Status::Approved, "a b/ç", 5, 0)],
            vec![],
        ),
        1,
    );
    let routes2 = App::new(state, None, None).routes();
    let (status, body) = get_json(&routes2, "/api/transactions/a%20b%2F%C3%A7").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["decisions"][0]["id"], "a b/ç");
}

/// Without PostgreSQL, a user no control record changed (and the caller did not seed) is
/// not known to the live view: 404, saying so (tests/live_changes.rs has the known ones).
#[tokio::test]
async fn users_unknown_to_the_live_view_without_postgres() {
    let (routes, _) = fed_routes(None);
    let body = get_json_as(&routes, "/api/users/u001", StatusCode::NOT_FOUND).await;
    let message = body["error"].as_str().unwrap();
    assert!(message.contains("not known to the live view"), "{message}");
    assert!(message.contains("PostgreSQL"), "{message}");
}

#[tokio::test]
async fn healthz_and_metrics() {
    let (state, _) = fed_state();
    state.set_health(Some(42));
    let routes = routes(state, None);
    let (status, h) = get_json(&routes, "/api/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h["status"], "ok");
    assert_eq!(h["mode"], "embedded");
    assert_eq!(h["workers"], 2);
    assert_eq!(h["decisions"], 6);
    assert_eq!(h["consumer_lag"], 42);
    assert_eq!(h["closed_time_ms"], 1001);
    assert_eq!(h["postgres"], false);
    assert!(h["tx_per_s"].as_f64().unwrap() > 0.0);
    // Latencies fed: 4,999 µs, 4,999 µs, then 3 × 3,000 µs (the invalid one has no ingest time).
    assert!((h["latency_ms"]["p50"].as_f64().unwrap() - 3.0).abs() < 0.05);
    assert!((h["latency_ms"]["p99"].as_f64().unwrap() - 5.0).abs() < 0.1);

    let (status, ct, text) = get(&routes, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    for line in [
        "vtpga_decisions_total{status=\"approved\"} 3",
        "vtpga_decisions_total{status=\"insufficient_balance\"} 1",
        "vtpga_decisions_total{status=\"invalid\"} 1",
        "vtpga_decisions_total{status=\"duplicate\"} 1",
        "vtpga_decisions_total{status=\"late\"} 0",
        "vtpga_decision_latency_seconds_bucket{le=\"0.002\"} 0",
        "vtpga_decision_latency_seconds_bucket{le=\"0.005\"} 5",
        "vtpga_decision_latency_seconds_bucket{le=\"+Inf\"} 5",
        "vtpga_decision_latency_seconds_count 5",
        "vtpga_batch_decisions_bucket{le=\"1\"} 0",
        "vtpga_batch_decisions_bucket{le=\"10\"} 2",
        "vtpga_batch_decisions_count 2",
        "vtpga_batch_decisions_sum 6",
        "vtpga_consumer_lag 42",
        "vtpga_workers 2",
        "# TYPE vtpga_decision_latency_seconds histogram",
        "# TYPE vtpga_decisions_total counter",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
}

#[tokio::test]
async fn page_and_assets() {
    let routes = routes(LiveState::new(1), None);
    let (status, ct, page) = get(&routes, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ct, "text/html; charset=utf-8");
    for name in NAMES {
        assert!(
            page.contains(&format!("id=\"chart-{name}\"")),
            "chart-{name}"
        );
    }
    assert!(page.contains("id=\"approved-count\""));
    // Self-contained: the script and style are inline, nothing comes from elsewhere.
    assert!(page.contains("fetch(\"/api/stream\""));
    assert!(page.contains("--approved:"));
    assert!(!page.contains("/*SCRIPT*/") && !page.contains("/*STYLE*/"));
    assert!(!page.contains("src=\"http") && !page.contains("href=\"http"));
    assert!(!page.contains("</script>\n</script>"));
    let (status, ct, js) = get(&routes, "/assets/app.js").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ct, "text/javascript; charset=utf-8");
    assert!(js.contains("data-drawn"));
    let (status, ct, _) = get(&routes, "/assets/style.css").await;
    assert_eq!(
        (status, ct.as_str()),
        (StatusCode::OK, "text/css; charset=utf-8")
    );
    let (status, ct, _) = get(&routes, "/assets/favicon.svg").await;
    assert_eq!((status, ct.as_str()), (StatusCode::OK, "image/svg+xml"));
    let body = get_json_as(&routes, "/assets/nope.js", StatusCode::NOT_FOUND).await;
    assert!(body["error"].is_string());
    let body = get_json_as(&routes, "/no/such/route", StatusCode::NOT_FOUND).await;
    assert_eq!(body["status"], 404);
    let resp = warp::test::request()
        .method("POST")
        .path("/api/analyses")
        .reply(&routes)
        .await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn token_is_required_on_every_route() {
    let (routes, feeder) = fed_routes(Some("s3cret"));
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("s3cret"),
        Some("Basic s3cret"),
    ] {
        for path in [
            "/api/analyses",
            "/api/analyses/status_counts",
            "/api/analyses/nope",
            "/api/transactions/recent?limit=1",
            "/api/transactions/tx-a",
            "/api/users/u001",
            "/api/rules",
            "/api/controls",
            "/api/health",
            "/metrics",
            "/api/stream",
            "/no/such/route",
        ] {
            let (status, ct, body) = get_with(&routes, path, auth).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path} {auth:?}");
            assert_eq!(ct, "application/json");
            let body: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(body["status"], 401);
        }
    }
    let resp = warp::test::request()
        .path("/api/analyses")
        .reply(&routes)
        .await;
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    let (status, _, body) = get_with(&routes, "/api/analyses", Some("Bearer s3cret")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        to_json(&feeder.rows)
    );
    let (status, _, _) = get_with(&routes, "/no/such/route", Some("Bearer s3cret")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn stream_route_is_an_event_stream() {
    let (routes, _) = fed_routes(None);
    // `filter` gives the response without waiting for the (endless) body.
    let resp = warp::test::request()
        .path("/api/stream")
        .filter(&routes)
        .await
        .expect("the stream route answers");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
}

fn local() -> WebConfig {
    WebConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        token: None,
    }
}

/// The real server: a snapshot on connect, then a change within 250 ms of each batch,
/// with bursts coalesced.
#[test]
fn stream_pushes_snapshot_then_changes() {
    let (state, mut feeder) = fed_state();
    let server = vtpga_web::spawn_embedded_with(local(), state.clone(), None).expect("bind");
    // Let the push task drop the changes observed before anyone listened.
    std::thread::sleep(Duration::from_millis(100));
    let mut sse = SseClient::connect(server.addr, "/api/stream");
    assert!(sse.head.starts_with("HTTP/1.0 200"), "{}", sse.head);
    assert!(sse
        .head
        .to_ascii_lowercase()
        .contains("content-type: text/event-stream"));
    let deadline = || Instant::now() + Duration::from_secs(5);
    let snap = sse.next(deadline()).expect("a snapshot");
    assert_eq!(snap.kind, "snapshot");
    assert_eq!(snap.data["analyses"], to_json(&feeder.rows));
    assert_eq!(snap.data["transactions"].as_array().unwrap().len(), 6);
    assert_eq!(snap.data["transactions"][0]["offset"], 5);
    assert_eq!(snap.data["health"]["workers"], 2);

    // One batch: its change arrives within 250 ms.
    let mut deltas = all_kinds(MINUTE0 + 1, 1, 0);
    deltas.truncate(3);
    let b = feeder.batch(
        3000,
        vec![decision(100, 3000, Status::Approved, "tx-new", 777, 0)],
        deltas,
    );
    let sent = Instant::now();
    state.observe(&b, 10_000);
    let change = sse.next_of("change", deadline()).expect("a change");
    let took = sent.elapsed();
    assert!(took < Duration::from_millis(250), "change after {took:?}");
    let expected = to_json(&feeder.rows);
    assert!(change.data["seq"].as_u64().unwrap() > snap.data["seq"].as_u64().unwrap());
    assert_eq!(change.data["transactions"].as_array().unwrap().len(), 1);
    assert_eq!(change.data["transactions"][0]["id"], "tx-new");
    let changed: Vec<&String> = change.data["analyses"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(
        changed,
        [
            "hour_histogram",
            "status_counts",
            "value_histogram",
            "value_risk_distribution"
        ]
    );
    for name in changed {
        assert_eq!(change.data["analyses"][name], expected[name], "{name}");
    }
    assert_eq!(change.data["minute_rows"], json!({}));

    // A burst of 40 batches over ~200 ms: a few coalesced changes carry all of it.
    let start = Instant::now();
    for i in 0..40 {
        let b = feeder.batch(
            4000 + i,
            vec![decision(
                200 + i as i64,
                4000 + i,
                Status::Approved,
                &format!("burst-{i}"),
                1,
                0,
            )],
            vec![(
                AnalysisKey::Minute(MINUTE0 + 10),
                support::tally(1, 1, 0, 1, 0),
            )],
        );
        state.observe(&b, 20_000);
        std::thread::sleep(Duration::from_millis(5));
    }
    let burst_end = Instant::now();
    let mut changes = 0;
    let mut txs = 0;
    let mut last_minute_row = None;
    while txs < 40 {
        let c = sse
            .next_of("change", deadline())
            .expect("the burst's changes");
        changes += 1;
        txs += c.data["transactions"].as_array().unwrap().len();
        if let Some(rows) = c.data["minute_rows"]["minute_frequency"].as_array() {
            last_minute_row = rows.last().cloned();
        }
    }
    assert!(
        burst_end.elapsed() < Duration::from_millis(250),
        "last change {:?} after the burst",
        burst_end.elapsed()
    );
    let spent = start.elapsed().as_millis() as usize;
    assert!(
        changes <= spent / 100 + 2,
        "{changes} change events in {spent} ms"
    );
    assert_eq!(
        last_minute_row,
        Some(json!({"minute": "2026-11-26T17:13:00Z", "count": 40}))
    );
    // With nothing new, health events keep coming.
    let health = sse.next_of("health", deadline()).expect("a health event");
    assert_eq!(health.data["health"]["decisions"], 47);
    server.stop();
}

#[test]
fn binding_errors_are_reported() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = WebConfig {
        listen: taken.local_addr().unwrap(),
        token: None,
    };
    let err = vtpga_web::spawn_embedded(config, LiveState::new(1)).expect_err("address in use");
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    assert_eq!(
        WebConfig::default().listen,
        SocketAddr::from(([127, 0, 0, 1], 8080))
    );
}

#[test]
fn seeded_analyses_are_served() {
    let mut feeder = Feeder::default();
    let _ = feeder.batch(1, vec![], all_kinds(MINUTE0, 3, 2));
    let state = LiveState::new(1);
    state.seed_analyses(feeder.rows.clone());
    assert_eq!(state.analyses_json(), to_json(&feeder.rows));
    // A batch after the seed builds on it.
    let b = feeder.batch(
        2,
        vec![decision(0, 2, Status::Approved, "x", 1, 0)],
        all_kinds(MINUTE0, 1, 0),
    );
    state.observe(&b, 3);
    assert_eq!(state.analyses_json(), to_json(&feeder.rows));
}

/// Issue 12 item 12 (web token): the token is compared exactly; whitespace around it, a
/// second space or a tab is another token, not a careless spelling of the right one.
#[tokio::test]
async fn token_with_surrounding_whitespace_is_refused() {
    let (routes, _) = fed_routes(Some("s3cret"));
    analyses_with(
        &routes,
        &[
            "Bearer s3cret ",
            "Bearer  s3cret",
            "Bearer s3cret\t",
            "Bearer \ts3cret",
            " Bearer s3cret",
            "Bearer s3cret\u{a0}",
            "Bearer s3cre",
            "Bearer s3crett",
            "Bearers3cret",
        ],
        StatusCode::UNAUTHORIZED,
    )
    .await;
    // The scheme is case-insensitive (RFC 7235 §2.1); the token is not.
    analyses_with(
        &routes,
        &["Bearer s3cret", "bearer s3cret", "BEARER s3cret"],
        StatusCode::OK,
    )
    .await;
    let (status, _, _) = get_with(&routes, "/api/analyses", Some("Bearer S3CRET")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// Issue 12 item 12 (internal error text): an Authorization header that is not text is a
/// wrong token (401), not a 400 carrying warp's debug text of the rejection.
#[tokio::test]
async fn a_header_that_is_not_text_is_a_wrong_token() {
    let (routes, _) = fed_routes(Some("s3cret"));
    let resp = warp::test::request()
        .path("/api/analyses")
        .header(
            "authorization",
            warp::http::HeaderValue::from_bytes(b"Bearer s3cret\xff").unwrap(),
        )
        .reply(&routes)
        .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body = String::from_utf8_lossy(resp.body());
    assert!(
        !body.contains("Rejection") && !body.contains("Invalid"),
        "{body}"
    );
}

/// A PostgreSQL that cannot be reached (a closed port): the API's history queries fail.
fn unreachable_postgres(state: Arc<LiveState>) -> Routes {
    App::new(
        state,
        None,
        Some("postgres://vtpga:pw-not-for-clients@127.0.0.1:1/secretdb".into()),
    )
    .routes()
}

/// Issue 12 item 12 (internal error text): PostgreSQL's error text (host, port, database,
/// the driver's wording) stays in the log; the client gets a generic JSON error with the
/// status and a request id to quote.
#[tokio::test]
async fn postgres_errors_do_not_reach_clients() {
    let routes = unreachable_postgres(LiveState::new(1));
    for path in ["/api/transactions/not-in-memory", "/api/users/u001"] {
        let (status, ct, body) = get(&routes, path).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(ct, "application/json");
        for leak in [
            "127.0.0.1",
            "secretdb",
            "pw-not",
            "refused",
            "PostgreSQL:",
            "Error {",
        ] {
            assert!(!body.contains(leak), "{path}: {leak:?} in {body}");
        }
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["status"], 503);
        assert!(body["error"].is_string());
        let id = body["request_id"].as_str().expect("a request id");
        assert!(!id.is_empty() && id.len() <= 16, "{id}");
    }
}

/// A state holding one decision for each id.
fn state_with_ids(ids: &[&str]) -> Arc<LiveState> {
    let state = LiveState::new(1);
    let mut feeder = Feeder::default();
    let decisions = ids
        .iter()
        .enumerate()
        .map(|(i, id)| decision(i as i64, 1, Status::Approved, id, 5, 0))
        .collect();
    state.observe(&feeder.batch(1, decisions, vec![]), 1);
    state
}

/// Every byte of `s` percent-encoded (what a careful client may send).
fn encode_all(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

/// SPEC §8 (ids exact, any character, U+0000 included, up to 60 KB): the id of
/// `/api/transactions/{id}` is percent-decoded whole, and the answer carries it exactly as
/// parsed, from memory.
#[tokio::test]
async fn transaction_ids_are_exact() {
    let long = "x".repeat(60_000);
    let ids = [
        "nul\0inside",
        "\0",
        "ç✓😀 mixed/slash",
        "100%",
        "a+b",
        "recent",
        "\u{1}",
        "%+1",
        long.as_str(),
    ];
    let routes = routes(state_with_ids(&ids), None);
    for id in ids {
        // Only what must be escaped escaped, in lower case.
        let light: String = id
            .chars()
            .map(|c| match c {
                'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '.' | '_' | '~' | '+' => c.to_string(),
                _ => c.to_string().bytes().map(|b| format!("%{b:02x}")).collect(),
            })
            .collect();
        let mut paths = Vec::new();
        if light != "recent" {
            // The literal segment `recent` is the route of the recent decisions; that id
            // is asked for with an escape.
            paths.push(format!("/api/transactions/{light}"));
        }
        if id.len() < 100 {
            // A URI holds at most 65,534 bytes (the `http` crate): the long id fits only
            // as it is.
            paths.push(format!("/api/transactions/{}", encode_all(id)));
        }
        for path in paths {
            let (status, ct, body) = get(&routes, &path).await;
            assert_eq!(status, StatusCode::OK, "{id:?} via {:.80}", path);
            assert_eq!(ct, "application/json");
            let body: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(body["id"].as_str(), Some(id), "{id:.80?}");
            assert_eq!(body["source"], "live");
            assert_eq!(body["decisions"][0]["id"].as_str(), Some(id), "{id:.80?}");
            assert_eq!(body["decisions"].as_array().unwrap().len(), 1, "{id:.80?}");
        }
    }
    // serde_json writes U+0000 as an escape: the JSON text itself holds no NUL byte.
    let (_, _, raw) = get(&routes, "/api/transactions/nul%00inside").await;
    assert!(
        raw.contains("nul\\u0000inside") && !raw.contains('\0'),
        "{raw}"
    );
    // The route of the recent decisions keeps its literal name.
    let (_, body) = get_json(&routes, "/api/transactions/recent").await;
    assert!(body.is_array());
}

/// SPEC §8: a malformed escape is an error, never a guess: `%+1` is not U+0001 (a sign
/// that `u8::from_str_radix` accepts), and bytes that are not UTF-8 are not looked up
/// under the raw text instead.
#[tokio::test]
async fn malformed_escapes_in_ids_are_refused() {
    let routes = routes(state_with_ids(&["\u{1}", "%FF", "%4", "%zz"]), None);
    for path in [
        "/api/transactions/%+1",
        "/api/transactions/%FF",
        "/api/transactions/%4",
        "/api/transactions/%zz",
        "/api/transactions/%C3",
        "/api/users/%FF",
    ] {
        let body = get_json_as(&routes, path, StatusCode::BAD_REQUEST).await;
        assert_eq!(body["status"], 400);
    }
    // Written with their escapes escaped, those ids are found.
    for (path, id) in [
        ("/api/transactions/%25FF", "%FF"),
        ("/api/transactions/%254", "%4"),
        ("/api/transactions/%25zz", "%zz"),
        ("/api/transactions/%01", "\u{1}"),
    ] {
        let body = get_json_as(&routes, path, StatusCode::OK).await;
        assert_eq!(body["id"], id);
    }
}

/// Issue 12 item 12 (`/healthz`): load balancers cannot send a token, so `/healthz`
/// answers without one, and with nothing but liveness; the figures moved behind the token
/// to `/api/health`.
#[tokio::test]
async fn healthz_is_a_token_free_liveness_answer() {
    let (routes, _) = fed_routes(Some("s3cret"));
    let (status, ct, body) = get(&routes, "/healthz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ct, "application/json");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"status": "ok"})
    );
    let (status, _, _) = get(&routes, "/api/health").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, body) = get_with(&routes, "/api/health", Some("Bearer s3cret")).await;
    assert_eq!(status, StatusCode::OK);
    let h: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (h["mode"].as_str(), h["decisions"].as_u64()),
        (Some("embedded"), Some(6))
    );
}

/// Issue 12 item 12 (sign-in): the page and its assets hold no data and load without the
/// token, so that the sign-in form can; every data route still needs it.
#[tokio::test]
async fn the_page_loads_without_the_token_and_the_data_does_not() {
    let (routes, _) = fed_routes(Some("s3cret"));
    assert_statuses(
        &routes,
        StatusCode::OK,
        &[
            "/",
            "/assets/app.js",
            "/assets/style.css",
            "/assets/favicon.svg",
        ],
    )
    .await;
    assert_statuses(
        &routes,
        StatusCode::UNAUTHORIZED,
        &[
            "/api/analyses",
            "/api/analyses/status_counts",
            "/api/transactions/recent",
            "/api/transactions/tx-a",
            "/api/users/u001",
            "/api/health",
            "/api/stream",
            "/metrics",
        ],
    )
    .await;
}

/// Issue 12 item 12 (sign-in): a token in a URL ends up in history, proxy and server
/// logs and Referer headers: the query form is not accepted any more.
#[tokio::test]
async fn the_token_is_not_taken_from_the_query() {
    let (routes, _) = fed_routes(Some("s3cret"));
    for path in [
        "/api/analyses?access_token=s3cret",
        "/api/analyses/status_counts?access_token=s3cret",
        "/api/stream?access_token=s3cret",
        "/metrics?access_token=s3cret",
    ] {
        assert_status(&routes, path, StatusCode::UNAUTHORIZED).await;
    }
}

/// Issue 12 item 12 (sign-in): the page signs in with a form that keeps the token for the
/// tab (sessionStorage) and sends it as a header, the event stream included (read with
/// fetch, since EventSource cannot send headers); nothing puts it in a URL.
#[tokio::test]
async fn the_page_signs_in_without_putting_the_token_in_urls() {
    let routes = routes(LiveState::new(1), Some("s3cret"));
    let (_, _, page) = get(&routes, "/").await;
    assert!(page.contains("id=\"signin\""), "a sign-in form");
    // Without a name, the field is never part of a form submission (a URL or a body).
    assert!(page.contains("id=\"signin-token\"") && !page.contains("name=\"token\""));
    assert!(page.contains("sessionStorage"));
    assert!(page.contains("\"Bearer \" + token") || page.contains("'Bearer ' + token"));
    assert!(page.contains("getReader()"), "the stream read with fetch");
    assert!(!page.contains("EventSource(") && !page.contains("access_token"));
}

/// The real server: the event stream takes the token as a header, like every route.
#[test]
fn stream_takes_the_token_in_the_header() {
    let state = LiveState::new(1);
    let config = WebConfig {
        token: Some("tok".into()),
        ..local()
    };
    let server = vtpga_web::spawn_embedded_with(config, state, None).expect("bind");
    for (path, headers) in [
        ("/api/stream", ""),
        ("/api/stream?access_token=tok", ""),
        ("/api/stream", "Authorization: Bearer wrong\r\n"),
    ] {
        let denied = SseClient::connect_with(server.addr, path, headers);
        assert!(
            denied.head.starts_with("HTTP/1.0 401"),
            "{path} {headers:?}: {}",
            denied.head
        );
    }
    let mut sse =
        SseClient::connect_with(server.addr, "/api/stream", "Authorization: Bearer tok\r\n");
    assert!(sse.head.starts_with("HTTP/1.0 200"), "{}", sse.head);
    let snap = sse
        .next(Instant::now() + Duration::from_secs(5))
        .expect("snapshot");
    assert_eq!(snap.kind, "snapshot");
    server.stop();
}

/// SPEC §10 (bounded answers), issue 12 item 9: the number of event-stream clients is
/// bounded; one more gets 503 with a JSON error, and a client leaving frees its place.
#[tokio::test]
async fn stream_clients_are_bounded() {
    let (routes, _) = fed_routes_with(WebLimits {
        stream_clients: 2,
        ..WebLimits::default()
    });
    let open = || warp::test::request().path("/api/stream").filter(&routes);
    // `filter` hands the response over with its endless body: the client stays connected
    // until it is dropped.
    let first = open().await.expect("answered");
    let second = open().await.expect("answered");
    assert_eq!(
        (first.status(), second.status()),
        (StatusCode::OK, StatusCode::OK)
    );
    let refused = open().await.expect("answered");
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["content-type"], "application/json");
    drop(first);
    let third = open().await.expect("answered");
    assert_eq!(third.status(), StatusCode::OK);
    assert_eq!(WebLimits::default().stream_clients, 64);
}

/// SPEC §10 (bounded memory), issue 12 item 9: the live answers hold the per-minute rows
/// of the newest `live_minutes` minutes only (fed: minutes 0, 1 and 3 after MINUTE0).
#[tokio::test]
async fn live_minutes_bound_the_answers() {
    let (routes, feeder) = fed_routes_with(WebLimits {
        live_minutes: 2,
        ..WebLimits::default()
    });
    let (_, body) = get_json(&routes, "/api/analyses").await;
    let minutes = texts(&body["minute_frequency"], "minute");
    assert_eq!(minutes, ["2026-11-26T17:04:00Z", "2026-11-26T17:06:00Z"]);
    let all = to_json(&feeder.rows);
    assert_eq!(body["status_counts"], all["status_counts"]);
    assert_eq!(body["hour_histogram"], all["hour_histogram"]);
    assert_eq!(WebLimits::default().live_minutes, 1_440);
}

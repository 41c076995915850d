//! Live changes (SPEC §11) on the dashboard and the API: batches whose control outcomes
//! change the rule set and the reference data → `/api/rules`, `/api/controls`,
//! `/api/users/{id}` and the event stream, from the live state; then the same answers
//! from a private PostgreSQL.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use warp::http::StatusCode;

use support::{decision, SseClient};
use vtpga_dataflow::graph::{Account, ControlOutcome, OutcomeKind, RuleChange};
use vtpga_dataflow::model::{Change, ControlRecord, Params, Region, RuleSet, User};
use vtpga_dataflow::{SourcePos, Status};
use vtpga_sinks::postgres::{self as pg, PgSink};
use vtpga_sinks::Batch;
use vtpga_testkit::Postgres;
use vtpga_web::{App, LiveState, WebConfig};

type Routes = warp::filters::BoxedFilter<(warp::reply::Response,)>;

async fn get_json(routes: &Routes, path: &str) -> (StatusCode, Value) {
    get_json_with(routes, path, None).await
}

async fn get_json_with(routes: &Routes, path: &str, auth: Option<&str>) -> (StatusCode, Value) {
    let mut req = warp::test::request().path(path);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let resp = req.reply(routes).await;
    assert_eq!(resp.headers()["content-type"], "application/json", "{path}");
    let body = serde_json::from_slice(resp.body()).expect("JSON body");
    (resp.status(), body)
}

async fn ok_json(routes: &Routes, path: &str) -> Value {
    let (status, body) = get_json(routes, path).await;
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    body
}

fn rules(version: &str, risk_threshold: f64, max_delay_ms: u64, dedup_window_ms: u64) -> RuleSet {
    RuleSet {
        version: version.into(),
        risk_threshold,
        max_delay_ms,
        dedup_window_ms,
    }
}

fn user(id: &str, name: &str, opening: i64, limit: i64) -> User {
    User {
        id: id.into(),
        name: name.into(),
        region_id: "r001".into(),
        balance_cents: opening,
        credit_limit_cents: limit,
    }
}

fn pos(partition: i32, offset: i64) -> SourcePos {
    SourcePos { partition, offset }
}

fn applied(p: SourcePos, t: u64, at: u64, change: Change) -> ControlOutcome {
    ControlOutcome {
        pos: p,
        t,
        at,
        // With 1 ms cells: the outcome at its arrival's cell iff it applied on arrival.
        arrived: at == t,
        kind: OutcomeKind::Applied(change),
    }
}

fn scheduled(p: SourcePos, t: u64, at: u64, change: Change) -> ControlOutcome {
    ControlOutcome {
        pos: p,
        t,
        at,
        arrived: true,
        kind: OutcomeKind::Scheduled(ControlRecord {
            change,
            effective_from: Some(at as i64),
        }),
    }
}

fn rejected(p: SourcePos, t: u64, raw: &str, error: &str) -> ControlOutcome {
    ControlOutcome {
        pos: p,
        t,
        at: t,
        arrived: true,
        kind: OutcomeKind::Rejected {
            raw: raw.as_bytes().to_vec(),
            error: error.into(),
        },
    }
}

fn batch(time: u64, controls: Vec<ControlOutcome>) -> Batch {
    Batch {
        time,
        controls,
        ..Batch::default()
    }
}

fn account(id: &str, balance: i64, used: i64, last: Option<i64>) -> Account {
    Account {
        user: id.into(),
        balance_cents: balance,
        credit_used_cents: used,
        last_approved_ms: last,
        deleted: false,
    }
}

/// The `/api/rules` row of a rule set.
fn rule_row(r: &RuleSet, effective_ms: u64, p: Option<SourcePos>) -> Value {
    json!({
        "version": r.version,
        "risk_threshold": r.risk_threshold,
        "max_delay_ms": r.max_delay_ms,
        "dedup_window_ms": r.dedup_window_ms,
        "effective_ms": effective_ms,
        "partition": p.map(|p| p.partition),
        "offset": p.map(|p| p.offset),
    })
}

/// An id with characters that need escaping in a path, and U+0000.
const ODD_ID: &str = "ü s/e%r\u{0}?#";

fn encode_all(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

/// The rule changes and reference changes of the tests, as the graph reports them.
struct Story {
    v0: RuleSet,
    v1: RuleSet,
    v2: RuleSet,
}

impl Story {
    fn new() -> Self {
        Story {
            v0: rules("v0-initial", 0.6, 1_500, 120_000),
            v1: rules("v1", 0.7, 2_000, 60_000),
            v2: rules("v2", 0.4, 500, 600_000),
        }
    }

    /// Time 1000: v2 accepted for 5000 (pending); a user created, one adjusted; a region;
    /// a record that did not parse, and one that adjusts a user that does not exist.
    fn first(&self) -> Batch {
        let mut b = batch(
            1_000,
            vec![
                scheduled(pos(0, 5), 1_000, 5_000, Change::Rules(self.v2.clone())),
                applied(
                    pos(1, 0),
                    1_000,
                    1_000,
                    Change::User(user("u-new", "Nova", 10_000, 5_000)),
                ),
                applied(
                    pos(1, 1),
                    1_000,
                    1_000,
                    Change::User(user(ODD_ID, "Odd", 1, 2)),
                ),
                applied(
                    pos(1, 2),
                    1_000,
                    1_000,
                    Change::Region(Region {
                        id: "r009".into(),
                        uf: "RJ".into(),
                        name: "Niterói".into(),
                        lat: -22.88,
                        lon: -43.1,
                    }),
                ),
                rejected(pos(2, 0), 1_000, "not json {", "not JSON"),
                rejected(
                    pos(2, 1),
                    1_000,
                    r#"{"type":"balance_adjustment","user_id":"ghost","amount_cents":5}"#,
                    "balance_adjustment of a user that does not exist at its effective time",
                ),
            ],
        );
        b.decisions = vec![decision(0, 1_000, Status::Approved, "tx-1", 100, 0)];
        b
    }

    /// Time 1500: v1 applied; v0's version used again (rejected); u-new's account moves;
    /// u-new renamed (its opening balance kept).
    fn second(&self) -> Batch {
        let mut b = batch(
            1_500,
            vec![
                applied(pos(0, 3), 1_400, 1_500, Change::Rules(self.v1.clone())),
                rejected(
                    pos(0, 4),
                    1_500,
                    r#"{"type":"rules","version":"v0-initial","risk_threshold":1,"max_delay_ms":1,"dedup_window_ms":1}"#,
                    "rules version \"v0-initial\" was used before",
                ),
                applied(
                    pos(1, 3),
                    1_500,
                    1_500,
                    Change::User(user("u-new", "Nova Renamed", 10_000, 8_000)),
                ),
            ],
        );
        b.accounts = vec![account("u-new", 7_000, 1_200, Some(1_700_000_000_123))];
        let mut d = decision(1, 1_500, Status::Approved, "tx-2", 200, 0);
        d.rules_version = "v1".into();
        b.decisions = vec![d];
        b
    }

    /// Time 5000: v2 applied (no longer pending); u-new deleted.
    fn third(&self) -> Batch {
        let mut b = batch(
            5_000,
            vec![
                applied(pos(0, 5), 1_000, 5_000, Change::Rules(self.v2.clone())),
                applied(
                    pos(1, 4),
                    5_000,
                    5_000,
                    Change::UserDelete { id: "u-new".into() },
                ),
            ],
        );
        b.accounts = vec![Account {
            deleted: true,
            ..account("u-new", 0, 0, None)
        }];
        b
    }
}

fn live_routes(state: Arc<LiveState>) -> Routes {
    App::new(state, None, None).routes()
}

/// A new state knows the default rule set only.
#[tokio::test]
async fn a_new_state_has_the_default_rule_set() {
    let routes = live_routes(LiveState::new(1));
    let body = ok_json(&routes, "/api/rules").await;
    let default = rule_row(&RuleSet::of(&Params::default(), "default"), 0, None);
    assert_eq!(
        body,
        json!({"source": "live", "in_force": default, "history": [default], "pending": []})
    );
    assert_eq!(body["in_force"]["risk_threshold"], 0.5);
    assert_eq!(body["in_force"]["max_delay_ms"], 1000);
    assert_eq!(body["in_force"]["dedup_window_ms"], 300_000);
    let body = ok_json(&routes, "/api/controls").await;
    assert_eq!(body["changes"], json!([]));
    assert_eq!(body["pending"], json!([]));
}

#[tokio::test]
async fn rules_follow_the_control_outcomes() {
    let s = Story::new();
    let state = LiveState::new(1);
    // A resumed pipeline: its initial set, and a change applied before the resume point.
    let before = rules("v-before", 0.55, 1_000, 300_000);
    state.seed_rules(
        &s.v0,
        &[RuleChange {
            at: 700,
            pos: pos(0, 1),
            rules: before.clone(),
        }],
    );
    let routes = live_routes(state.clone());
    let v0 = rule_row(&s.v0, 0, None);
    let vb = rule_row(&before, 700, Some(pos(0, 1)));
    let v1 = rule_row(&s.v1, 1_500, Some(pos(0, 3)));
    let v2 = rule_row(&s.v2, 5_000, Some(pos(0, 5)));

    state.observe(&s.first(), 1);
    let body = ok_json(&routes, "/api/rules").await;
    assert_eq!(body["in_force"], vb);
    assert_eq!(body["history"], json!([v0, vb]));
    assert_eq!(body["pending"], json!([v2]), "v2 is accepted for later");

    state.observe(&s.second(), 2);
    let body = ok_json(&routes, "/api/rules").await;
    assert_eq!(body["in_force"], v1);
    assert_eq!(body["in_force"]["effective_ms"], 1_500);
    assert_eq!(
        body["history"],
        json!([v0, vb, v1]),
        "in the order they applied"
    );
    assert_eq!(body["pending"], json!([v2]));

    state.observe(&s.third(), 3);
    let body = ok_json(&routes, "/api/rules").await;
    assert_eq!(body["in_force"], v2);
    assert_eq!(body["history"], json!([v0, vb, v1, v2]));
    assert_eq!(body["pending"], json!([]), "applied: no longer pending");

    // The decisions carry the version in force at their t.
    let recent = ok_json(&routes, "/api/transactions/recent").await;
    assert_eq!(recent[0]["id"], "tx-2");
    assert_eq!(recent[0]["rules_version"], "v1");
    assert_eq!(recent[1]["rules_version"], "default");
    let one = ok_json(&routes, "/api/transactions/tx-2").await;
    assert_eq!(one["decisions"][0]["rules_version"], "v1");
}

/// After a restart the graph does not report a resumed record as scheduled again: the
/// caller gives the still-pending ones, listed until their outcome arrives.
#[tokio::test]
async fn pending_records_survive_a_restart_when_seeded() {
    let s = Story::new();
    let state = LiveState::new(1);
    let routes = live_routes(state.clone());
    state.seed_pending(&[scheduled(
        pos(0, 5),
        1_000,
        5_000,
        Change::Rules(s.v2.clone()),
    )]);
    let body = ok_json(&routes, "/api/rules").await;
    assert_eq!(body["pending"][0]["version"], "v2");
    assert_eq!(body["in_force"]["version"], "default");
    state.observe(&s.third(), 1);
    let body = ok_json(&routes, "/api/rules").await;
    assert_eq!(body["pending"], json!([]));
    assert_eq!(body["in_force"]["version"], "v2");
}

/// Batches of different workers interleave: a `Scheduled` outcome seen after its record
/// was applied is not listed as pending.
#[tokio::test]
async fn a_late_scheduled_outcome_is_not_pending() {
    let s = Story::new();
    let state = LiveState::new(2);
    let routes = live_routes(state.clone());
    state.observe(
        &batch(
            5_000,
            vec![applied(
                pos(0, 5),
                1_000,
                5_000,
                Change::Rules(s.v2.clone()),
            )],
        ),
        1,
    );
    state.observe(
        &batch(
            1_000,
            vec![scheduled(
                pos(0, 5),
                1_000,
                5_000,
                Change::Rules(s.v2.clone()),
            )],
        ),
        1,
    );
    let body = ok_json(&routes, "/api/rules").await;
    assert_eq!(body["in_force"]["version"], "v2");
    assert_eq!(body["pending"], json!([]));
    // And an earlier rule change seen later does not replace the one in force.
    state.observe(
        &batch(
            1_500,
            vec![applied(
                pos(0, 3),
                1_400,
                1_500,
                Change::Rules(s.v1.clone()),
            )],
        ),
        1,
    );
    let body = ok_json(&routes, "/api/rules").await;
    assert_eq!(body["in_force"]["version"], "v2");
    let versions: Vec<&str> = body["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["default", "v1", "v2"]);
}

#[tokio::test]
async fn reference_changes_and_rejected_records_are_listed() {
    let s = Story::new();
    let state = LiveState::new(1);
    let routes = live_routes(state.clone());
    state.observe(&s.first(), 1);
    state.observe(&s.second(), 2);
    let body = ok_json(&routes, "/api/controls").await;
    let changes = body["changes"].as_array().unwrap();
    // Newest first: the second batch's three, then the first batch's five (the
    // scheduled one is pending, not a change yet).
    let summary: Vec<(String, Value, Value)> = changes
        .iter()
        .map(|c| {
            (
                c["outcome"].as_str().unwrap().to_owned(),
                c["type"].clone(),
                c["id"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("applied".into(), json!("user"), json!("u-new")),
            ("rejected".into(), json!("rules"), json!("v0-initial")),
            ("applied".into(), json!("rules"), json!("v1")),
            (
                "rejected".into(),
                json!("balance_adjustment"),
                json!("ghost")
            ),
            ("rejected".into(), Value::Null, Value::Null),
            ("applied".into(), json!("region"), json!("r009")),
            ("applied".into(), json!("user"), json!(ODD_ID)),
            ("applied".into(), json!("user"), json!("u-new")),
        ]
    );
    let not_json = &changes[4];
    assert_eq!(not_json["error"], "not JSON");
    assert_eq!(not_json["raw"], "not json {");
    assert_eq!(
        (not_json["partition"].clone(), not_json["offset"].clone()),
        (json!(2), json!(0))
    );
    assert_eq!(not_json["t"], 1_000);
    assert_eq!(
        changes[3]["error"],
        "balance_adjustment of a user that does not exist at its effective time"
    );
    assert_eq!(
        changes[1]["error"],
        "rules version \"v0-initial\" was used before"
    );
    assert_eq!(changes[2]["effective_ms"], 1_500);
    assert_eq!(changes[2]["t"], 1_400);
    assert_eq!(changes[2]["values"]["risk_threshold"], 0.7);
    assert_eq!(changes[5]["values"]["uf"], "RJ");
    assert!(changes
        .iter()
        .all(|c| c.get("error").is_none() || c["outcome"] == "rejected"));
    // The pending record, whatever its type.
    assert_eq!(body["pending"].as_array().unwrap().len(), 1);
    assert_eq!(body["pending"][0]["outcome"], "scheduled");
    assert_eq!(body["pending"][0]["id"], "v2");
    assert_eq!(body["pending"][0]["effective_ms"], 5_000);
}

#[tokio::test]
async fn reference_changes_are_bounded() {
    let state = LiveState::new(1);
    let routes = live_routes(state.clone());
    let many: Vec<ControlOutcome> = (0..250)
        .map(|i| rejected(pos(0, i), 1_000 + i as u64, "x", &format!("bad {i}")))
        .collect();
    state.observe(&batch(2_000, many), 1);
    let body = ok_json(&routes, "/api/controls").await;
    let changes = body["changes"].as_array().unwrap();
    assert_eq!(changes.len(), vtpga_web::CHANGES_LIMIT);
    assert_eq!(changes[0]["error"], "bad 249");
    assert_eq!(changes[199]["error"], "bad 50");
}

#[tokio::test]
async fn users_as_of_now_from_the_live_state() {
    let s = Story::new();
    let state = LiveState::new(1);
    state.seed_users([user("u-seed", "Seeded", 50_000, 1_000)]);
    let routes = live_routes(state.clone());
    state.observe(&s.first(), 1);
    // Created by a control record, no account seen: its opening values.
    let body = ok_json(&routes, "/api/users/u-new").await;
    assert_eq!(
        body,
        json!({
            "id": "u-new", "name": "Nova", "region_id": "r001",
            "opening_balance_cents": 10_000, "credit_limit_cents": 5_000,
            "balance_cents": 10_000, "credit_used_cents": 0, "credit_available_cents": 5_000,
            "last_approved_ms": null, "last_approved_event_time": null,
            "changed_at_ms": 1_000, "account_source": "opening", "source": "live",
        })
    );
    // Renamed, new limit; its account moved in the same batch.
    state.observe(&s.second(), 2);
    let body = ok_json(&routes, "/api/users/u-new").await;
    assert_eq!(body["name"], "Nova Renamed");
    assert_eq!(body["opening_balance_cents"], 10_000);
    assert_eq!(body["credit_limit_cents"], 8_000);
    assert_eq!(body["balance_cents"], 7_000);
    assert_eq!(body["credit_used_cents"], 1_200);
    assert_eq!(body["credit_available_cents"], 6_800);
    assert_eq!(body["last_approved_ms"], 1_700_000_000_123i64);
    assert_eq!(body["last_approved_event_time"], "2023-11-14T22:13:20.123Z");
    assert_eq!(body["account_source"], "batch");
    // The id exactly, U+0000 and all.
    let body = ok_json(&routes, &format!("/api/users/{}", encode_all(ODD_ID))).await;
    assert_eq!(body["id"], ODD_ID);
    assert_eq!(body["name"], "Odd");
    // Seeded by the caller.
    let body = ok_json(&routes, "/api/users/u-seed").await;
    assert_eq!(body["balance_cents"], 50_000);
    // Deleted: 404, and says so.
    state.observe(&s.third(), 3);
    let (status, body) = get_json(&routes, "/api/users/u-new").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body["error"].as_str().unwrap().contains("deleted"),
        "{body}"
    );
    // Created again: a new user, from its opening balance.
    state.observe(
        &batch(
            6_000,
            vec![applied(
                pos(1, 9),
                6_000,
                6_000,
                Change::User(user("u-new", "Nova II", 3_000, 0)),
            )],
        ),
        4,
    );
    let body = ok_json(&routes, "/api/users/u-new").await;
    assert_eq!(body["name"], "Nova II");
    assert_eq!(body["balance_cents"], 3_000);
    assert_eq!(body["credit_used_cents"], 0);
    // Never seen: 404, and the live view says what it knows.
    let (status, body) = get_json(&routes, "/api/users/u-never").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let message = body["error"].as_str().unwrap();
    assert!(message.contains("not known to the live view"), "{message}");
    assert!(message.contains("PostgreSQL"), "{message}");
    let (status, _) = get_json(&routes, "/api/users/%FF").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// SPEC §10: the users the live view keeps are bounded; the least recently changed go.
#[tokio::test]
async fn live_users_are_bounded() {
    let state = LiveState::new(1);
    state.set_live_users(8);
    let routes = live_routes(state.clone());
    let created: Vec<ControlOutcome> = (0..100)
        .map(|i| {
            applied(
                pos(0, i),
                1_000,
                1_000,
                Change::User(user(&format!("u{i}"), "n", 1, 1)),
            )
        })
        .collect();
    state.observe(&batch(1_000, created), 1);
    let mut known = 0;
    for i in 0..100 {
        let (status, _) = get_json(&routes, &format!("/api/users/u{i}")).await;
        known += usize::from(status == StatusCode::OK);
    }
    assert!((1..=8).contains(&known), "{known} kept");
    let (status, _) = get_json(&routes, "/api/users/u99").await;
    assert_eq!(status, StatusCode::OK, "the newest is kept");
    let (status, _) = get_json(&routes, "/api/users/u0").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "the oldest is not");
}

#[tokio::test]
async fn the_new_routes_need_the_token() {
    let state = LiveState::new(1);
    let routes = App::new(state, Some("tok".into()), None).routes();
    for path in ["/api/rules", "/api/controls", "/api/users/u-new"] {
        for auth in [None, Some("Bearer nope")] {
            let (status, body) = get_json_with(&routes, path, auth).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path} {auth:?}");
            assert_eq!(body["status"], 401);
        }
        let (status, _) = get_json_with(&routes, path, Some("Bearer tok")).await;
        assert_ne!(status, StatusCode::UNAUTHORIZED, "{path}");
    }
}

/// The dashboard shows the rule set in force and the reference changes, and the
/// decisions table has the rules version.
#[tokio::test]
async fn the_page_has_the_rules_panel() {
    let routes = live_routes(LiveState::new(1));
    let resp = warp::test::request().path("/").reply(&routes).await;
    let page = String::from_utf8(resp.body().to_vec()).unwrap();
    for id in [
        "id=\"rules-version\"",
        "id=\"rules-threshold\"",
        "id=\"rules-delay\"",
        "id=\"rules-window\"",
        "id=\"rules-since\"",
        "id=\"controls\"",
    ] {
        assert!(page.contains(id), "{id}");
    }
    assert!(page.contains("<th class=\"hide-sm\">rules</th>"));
    assert!(page.contains("t.rules_version"));
    assert!(page.contains("d.controls") && page.contains("d.rules"));
}

/// The event stream: the snapshot holds the rule set in force and the changes; a batch
/// with a rule change pushes the new one and its change entries.
#[test]
fn the_stream_pushes_rules_and_reference_changes() {
    let s = Story::new();
    let state = LiveState::new(1);
    state.observe(&s.first(), 1);
    let config = WebConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        token: None,
    };
    let server = vtpga_web::spawn_embedded_with(config, state.clone(), None).expect("bind");
    std::thread::sleep(Duration::from_millis(150));
    let mut sse = SseClient::connect(server.addr, "/api/stream");
    let deadline = || Instant::now() + Duration::from_secs(5);
    let snap = sse.next(deadline()).expect("a snapshot");
    assert_eq!(snap.kind, "snapshot");
    assert_eq!(snap.data["rules"]["in_force"]["version"], "default");
    assert_eq!(snap.data["rules"]["pending"][0]["version"], "v2");
    assert_eq!(snap.data["controls"].as_array().unwrap().len(), 5);
    assert_eq!(snap.data["transactions"][0]["rules_version"], "default");

    state.observe(&s.second(), 2);
    let change = loop {
        let e = sse.next_of("change", deadline()).expect("a change");
        if e.data["controls"].as_array().is_some_and(|c| !c.is_empty()) {
            break e;
        }
    };
    assert_eq!(change.data["rules"]["in_force"]["version"], "v1");
    assert_eq!(change.data["rules"]["in_force"]["effective_ms"], 1_500);
    let ids: Vec<&Value> = change.data["controls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["id"])
        .collect();
    assert_eq!(ids, [&json!("u-new"), &json!("v0-initial"), &json!("v1")]);
    assert_eq!(change.data["transactions"][0]["rules_version"], "v1");
    server.stop();
}

// ----- with PostgreSQL -----

/// The test's runtime: the synchronous PostgreSQL client must not run inside one.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn pg_get(rt: &tokio::runtime::Runtime, routes: &Routes, path: &str) -> (StatusCode, Value) {
    rt.block_on(get_json(routes, path))
}

#[test]
fn the_same_answers_from_postgres() {
    let rt = runtime();
    let postgres = Postgres::start();
    let s = Story::new();
    let v1a = rules("v1a", 0.65, 1_000, 60_000);
    {
        let mut client = pg::connect(&postgres.url).expect("connect and migrate");
        let regions = [Region {
            id: "r001".into(),
            uf: "SP".into(),
            name: "São Paulo".into(),
            lat: -23.55,
            lon: -46.63,
        }];
        let users = [
            user("u-new", "Nova", 10_000, 5_000),
            user("u-quiet", "Quiet", 2_500, 700),
            user(ODD_ID.trim_end_matches(['\0', '?', '#']), "Odd", 1, 2),
        ];
        pg::seed_reference(&mut client, &regions, &users).expect("seed");
        support::create_rule_sets(&mut client, &s.v0);
        // Out of order on purpose: the answer is ordered by (effective_ms, position).
        support::insert_rule_set(&mut client, &s.v2, 5_000, Some((0, 7)));
        support::insert_rule_set(&mut client, &s.v1, 1_500, Some((1, 0)));
        support::insert_rule_set(&mut client, &v1a, 1_500, Some((0, 3)));
    }
    // Decisions at 1000 (v0 in force) and 1600 (v1 in force), committed through 2000.
    let mut sink = PgSink::new(&postgres.url, "test").expect("pg sink");
    let mut first = decision(0, 1_000, Status::Approved, "tx-1", 100, 0);
    first.rules_version = s.v0.version.as_str().into();
    let mut second = decision(1, 1_600, Status::Approved, "tx-2", 200, 0);
    second.rules_version = "v1".into();
    let b = Batch {
        time: 2_000,
        decisions: vec![first, second],
        accounts: vec![account("u-new", 7_000, 1_200, Some(1_700_000_000_123))],
        ..Batch::default()
    };
    sink.write(&b, &|| false).expect("pg write");

    // Embedded with PostgreSQL: the live state has seen nothing; the database answers.
    let state = LiveState::new(1);
    let routes: Routes =
        rt.block_on(async { App::new(state.clone(), None, Some(postgres.url.clone())).routes() });
    let (status, body) = pg_get(&rt, &routes, "/api/rules");
    assert_eq!(status, StatusCode::OK, "{body}");
    let v0 = rule_row(&s.v0, 0, None);
    let v1a = rule_row(&v1a, 1_500, Some(pos(0, 3)));
    let v1 = rule_row(&s.v1, 1_500, Some(pos(1, 0)));
    let v2 = rule_row(&s.v2, 5_000, Some(pos(0, 7)));
    assert_eq!(
        body,
        json!({"source": "postgres", "in_force": v1, "history": [v0, v1a, v1], "pending": [v2]})
    );

    // Users: reference values joined with the account.
    let (status, u) = pg_get(&rt, &routes, "/api/users/u-new");
    assert_eq!(status, StatusCode::OK, "{u}");
    for (k, v) in [
        ("id", json!("u-new")),
        ("name", json!("Nova")),
        ("region_id", json!("r001")),
        ("opening_balance_cents", json!(10_000)),
        ("credit_limit_cents", json!(5_000)),
        ("balance_cents", json!(7_000)),
        ("credit_used_cents", json!(1_200)),
        ("last_approved_ms", json!(1_700_000_000_123i64)),
        ("source", json!("postgres")),
    ] {
        assert_eq!(u[k], v, "{k}: {u}");
    }
    // No account row: the opening values.
    let (status, u) = pg_get(&rt, &routes, "/api/users/u-quiet");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(u["balance_cents"], 2_500);
    assert_eq!(u["opening_balance_cents"], 2_500);
    assert_eq!(u["credit_used_cents"], 0);
    assert_eq!(u["last_approved_ms"], Value::Null);
    let odd = ODD_ID.trim_end_matches(['\0', '?', '#']);
    let (status, u) = pg_get(&rt, &routes, &format!("/api/users/{}", encode_all(odd)));
    assert_eq!(status, StatusCode::OK);
    assert_eq!(u["id"], odd);
    // U+0000 is in no PostgreSQL text: no such user.
    let (status, _) = pg_get(&rt, &routes, &format!("/api/users/{}", encode_all(ODD_ID)));
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Deleted (the sink removes the row): 404.
    postgres
        .client()
        .execute("DELETE FROM users WHERE id = 'u-new'", &[])
        .expect("delete");
    let (status, body) = pg_get(&rt, &routes, "/api/users/u-new");
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    // The decisions from the database carry the version in force at their t.
    let (status, body) = pg_get(&rt, &routes, "/api/transactions/tx-1");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["source"], "postgres");
    assert_eq!(body["decisions"][0]["rules_version"], s.v0.version.as_str());
    let (_, body) = pg_get(&rt, &routes, "/api/transactions/tx-2");
    assert_eq!(body["decisions"][0]["rules_version"], "v1");

    // Standalone with the same database answers the rules the same way.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let app = vtpga_web::standalone_app(
        None,
        "redis://127.0.0.1:1/",
        "vtpga",
        Some(postgres.url.clone()),
        stop.clone(),
    )
    .expect("standalone app");
    let standalone: Routes = rt.block_on(async { App::routes(app) });
    let (status, body) = pg_get(&rt, &standalone, "/api/rules");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["in_force"], v1);
    assert_eq!(body["history"], json!([v0, v1a, v1]));
    // Without a database, standalone knows no rule sets.
    let app = vtpga_web::standalone_app(None, "redis://127.0.0.1:1/", "vtpga", None, stop.clone())
        .expect("standalone app");
    let bare: Routes = rt.block_on(async { App::routes(app) });
    let (status, body) = pg_get(&rt, &bare, "/api/rules");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
}

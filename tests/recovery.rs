//! Exactly-once with PostgreSQL, and Redis as a rebuilt cache (SPEC §8), end to end
//! against a private broker, PostgreSQL and Redis:
//!
//! * the pipeline is killed with SIGKILL at random moments at least ten times while it
//!   works through 200,000 messages from Kafka, and restarted each time; at the end the
//!   `transactions` rows (one per source position), the balances and the analyses in
//!   PostgreSQL equal `vtpga replay` of the same messages, and Redis's analyses equal
//!   PostgreSQL's. The stream includes live changes (SPEC §11) on the control topic:
//!   users, regions and rule sets in PostgreSQL equal the replay's at the end too;
//! * PostgreSQL is restarted mid-run: same equalities;
//! * Redis is killed mid-run and started again: same equalities;
//! * the pipeline is killed while its consumers are at different cuts (Redis frozen behind
//!   PostgreSQL, a second PostgreSQL writer mid-batch, decisions sent to the topic ahead of
//!   the commit): same equalities, and every decision on the decisions topic.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::{
    by_position, generate, parse_decisions, path_str, pipeline_command, position, read_topic,
    replay, topic_decisions, vtpga, write_live_capture, Broker, Postgres, Redis, BIN,
};
use vtpga_dataflow::analyses::{to_json, AnalysisKey, Tally};

/// Generated data in `dir`, its capture produced to a 4-partition topic, and the database
/// seeded with the same reference data.
fn setup(dir: &Path, count: usize, broker: &Broker, pg: &Postgres) {
    // Live changes among the messages: about 2 per second of arrival time.
    generate(
        dir,
        count,
        2000,
        &["--span-hours", "0.05", "--control-rate", "2"],
    );
    broker.create_topics(4);
    broker.produce_capture(&dir.join("capture.jsonl"));
    vtpga(
        &[
            "seed",
            "--postgres",
            &pg.url,
            "--regions-csv",
            path_str(&dir.join("regions.csv")),
            "--users-csv",
            path_str(&dir.join("users.csv")),
        ],
        &[],
    );
}

/// A temporary directory with generated data, a private broker with its messages on a
/// 4-partition topic, a private PostgreSQL seeded with the same reference data, and a
/// private Redis.
fn scene(total: usize) -> (tempfile::TempDir, Broker, Postgres, Redis) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let broker = Broker::start();
    let pg = Postgres::start();
    let redis = Redis::start();
    setup(tmp.path(), total, &broker, &pg);
    (tmp, broker, pg, redis)
}

/// The pipeline on the scene's services; `piped` keeps its output for [`finish`].
fn spawn(broker: &Broker, pg: &Postgres, redis: &Redis, piped: bool) -> Child {
    let out = || if piped { Stdio::piped() } else { Stdio::null() };
    pipeline_command(broker, pg, redis)
        .stdout(out())
        .stderr(out())
        .spawn()
        .expect("pipeline starts")
}

fn finish(child: Child) -> String {
    let out = child.wait_with_output().expect("pipeline runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "pipeline failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The replay of the messages as consumed: (decisions by position, analyses, balances).
type Expected = (
    BTreeMap<(i64, i64), Value>,
    Value,
    HashMap<String, (i64, i64)>,
);

fn expected(dir: &Path, broker: &Broker) -> Expected {
    let consumed = read_topic(broker, "transacoes");
    let controls = read_topic(broker, "transacoes-controle");
    assert!(!controls.is_empty(), "the stream has live changes");
    let capture = dir.join("consumed.jsonl");
    write_live_capture(&consumed, &controls, &capture);
    let lines = replay(
        &capture,
        dir,
        &dir.join("replay.jsonl"),
        &dir.join("replay-analyses.json"),
        &[
            "--balances",
            path_str(&dir.join("replay-balances.csv")),
            "--reference-out",
            path_str(&dir.join("replay-reference")),
        ],
    );
    let decisions = by_position(parse_decisions(&lines));
    let analyses: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("replay-analyses.json")).expect("replay analyses"),
    )
    .expect("analyses JSON");
    let balances = std::fs::read_to_string(dir.join("replay-balances.csv"))
        .expect("balances")
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (
                f[0].to_owned(),
                (f[1].parse().unwrap(), f[2].parse().unwrap()),
            )
        })
        .collect();
    (decisions, analyses, balances)
}

/// Analyses as sets: every analysis's rows sorted by their JSON text.
fn normalized(analyses: &Value) -> BTreeMap<String, Vec<String>> {
    analyses
        .as_object()
        .expect("analyses object")
        .iter()
        .map(|(name, rows)| {
            let mut rows: Vec<String> = rows
                .as_array()
                .expect("rows")
                .iter()
                .map(Value::to_string)
                .collect();
            rows.sort();
            (name.clone(), rows)
        })
        .collect()
}

/// Checks PostgreSQL and Redis against the replay.
fn check_against_replay(dir: &Path, broker: &Broker, pg: &Postgres, redis: &Redis, total: usize) {
    let (decisions, analyses, balances) = expected(dir, broker);
    assert_eq!(decisions.len(), total, "the replay decides every message");
    let mut client = pg.client();
    let count: i64 = client
        .query_one("SELECT count(*) FROM transactions", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        count as usize, total,
        "one row per source position, none missing"
    );
    let rows = vtpga_sinks::postgres::decision_records(&mut client).expect("decision rows");
    let stored = by_position(rows);
    assert_eq!(stored.len(), total);
    let mut differing = stored
        .iter()
        .filter(|(pos, v)| decisions.get(pos) != Some(v))
        .map(|(pos, v)| format!("{pos:?}: stored {v} replayed {:?}", decisions.get(pos)));
    if let Some(first) = differing.next() {
        panic!("decisions in PostgreSQL differ from the replay, e.g. {first}");
    }
    let stored_balances: HashMap<String, (i64, i64)> = client
        .query(
            "SELECT id, balance_cents, credit_used_cents FROM balances",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    assert_eq!(stored_balances.len(), balances.len());
    for (id, b) in &balances {
        assert_eq!(stored_balances.get(id), Some(b), "balance of {id}");
    }
    let rows: BTreeMap<AnalysisKey, Tally> = vtpga_sinks::postgres::analysis_rows(&mut client)
        .expect("analysis rows")
        .into_iter()
        .collect();
    let pg_analyses = to_json(&rows);
    assert_eq!(
        normalized(&pg_analyses),
        normalized(&analyses),
        "analyses in PostgreSQL equal the replay's"
    );
    // The reference data and rule sets the live changes left (SPEC §11).
    let lines_of = |name: &str| -> Vec<String> {
        let mut lines: Vec<String> =
            std::fs::read_to_string(dir.join("replay-reference").join(name))
                .expect("replayed reference data")
                .lines()
                .skip(1)
                .map(str::to_owned)
                .collect();
        lines.sort();
        lines
    };
    let mut users: Vec<String> = client
        .query(
            "SELECT id, name, region_id, balance_cents, credit_limit_cents FROM users",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| {
            let (id, name, region): (String, String, String) = (r.get(0), r.get(1), r.get(2));
            format!(
                "{id},{name},{region},{},{}",
                r.get::<_, i64>(3),
                r.get::<_, i64>(4)
            )
        })
        .collect();
    users.sort();
    assert_eq!(
        users,
        lines_of("users.csv"),
        "users in PostgreSQL equal the replay's"
    );
    let mut regions: Vec<String> = client
        .query("SELECT id, uf, name, lat, lon FROM regions", &[])
        .unwrap()
        .iter()
        .map(|r| {
            let (id, uf, name): (String, String, String) = (r.get(0), r.get(1), r.get(2));
            format!(
                "{id},{uf},{name},{},{}",
                r.get::<_, f64>(3),
                r.get::<_, f64>(4)
            )
        })
        .collect();
    regions.sort();
    assert_eq!(
        regions,
        lines_of("regions.csv"),
        "regions in PostgreSQL equal the replay's"
    );
    let mut rule_sets: Vec<String> = client
        .query(
            "SELECT version, risk_threshold, max_delay_ms, dedup_window_ms, effective_ms, partition, \"offset\" FROM rule_sets",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| {
            let version: String = r.get(0);
            let partition: Option<i32> = r.get(5);
            let offset: Option<i64> = r.get(6);
            format!(
                "{version},{},{},{},{},{},{}",
                r.get::<_, f64>(1),
                r.get::<_, i64>(2),
                r.get::<_, i64>(3),
                r.get::<_, i64>(4),
                partition.map(|p| p.to_string()).unwrap_or_default(),
                offset.map(|o| o.to_string()).unwrap_or_default()
            )
        })
        .collect();
    rule_sets.sort();
    assert!(rule_sets.len() > 1, "rule sets changed: {rule_sets:?}");
    assert_eq!(
        rule_sets,
        lines_of("rule_sets.csv"),
        "rule sets in PostgreSQL equal the replay's"
    );
    let mut conn = redis.connection();
    let redis_analyses =
        vtpga_sinks::redis::read_analyses(&mut conn, "vtpga").expect("read Redis analyses");
    assert_eq!(
        normalized(&redis_analyses),
        normalized(&pg_analyses),
        "analyses in Redis equal PostgreSQL's"
    );
}

/// A small deterministic generator of kill delays (printed, so a failure can be replayed).
struct Lcg(u64);

impl Lcg {
    fn next_ms(&mut self, low: u64, high: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        low + (self.0 >> 33) % (high - low)
    }
}

#[test]
fn sigkill_at_random_moments_loses_nothing_and_counts_nothing_twice() {
    const TOTAL: usize = 200_000;
    let (tmp, broker, pg, redis) = scene(TOTAL);
    let dir = tmp.path();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    eprintln!("kill delays from seed {seed}");
    let mut rng = Lcg(seed);
    let mut kills = 0;
    let mut finished = false;
    let deadline = Instant::now() + Duration::from_secs(600);
    while kills < 10 {
        assert!(Instant::now() < deadline, "the crash loop took too long");
        let mut child = spawn(&broker, &pg, &redis, false);
        std::thread::sleep(Duration::from_millis(rng.next_ms(500, 2500)));
        match child.try_wait().expect("status") {
            Some(status) => {
                assert!(status.success(), "the pipeline failed by itself: {status}");
                finished = true;
                break;
            }
            None => {
                child.kill().expect("SIGKILL");
                child.wait().expect("reaped");
                kills += 1;
            }
        }
    }
    let done: i64 = pg
        .client()
        .query_one("SELECT count(*) FROM transactions", &[])
        .unwrap()
        .get(0);
    assert!(
        kills >= 10 && !finished,
        "the pipeline must be killed at least 10 times mid-run (killed {kills}, finished {finished}, {done} rows)"
    );
    assert!((done as usize) < TOTAL, "the kills came before the end");
    // The last run goes to the end.
    let summary = finish(spawn(&broker, &pg, &redis, true));
    eprintln!("{kills} kills, {done} rows committed before the last run\n{summary}");
    check_against_replay(dir, &broker, &pg, &redis, TOTAL);
}

/// Waits until PostgreSQL holds at least `rows` decisions (bounded).
fn wait_for_rows(pg: &Postgres, rows: i64, child: &mut Child) {
    let mut client = pg.client();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n: i64 = client
            .query_one("SELECT count(*) FROM transactions", &[])
            .unwrap()
            .get(0);
        if n >= rows {
            return;
        }
        assert!(
            child.try_wait().expect("status").is_none(),
            "the pipeline ended before {rows} rows"
        );
        assert!(Instant::now() < deadline, "no progress to {rows} rows");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Messages of the tests that disturb a run midway.
const MID_RUN_TOTAL: usize = 120_000;

/// A [`scene`] of [`MID_RUN_TOTAL`] messages and the pipeline on it (`piped` as for
/// [`spawn`]), once it has committed 5,000 rows.
fn mid_run(piped: bool) -> (tempfile::TempDir, Broker, Postgres, Redis, Child) {
    let (tmp, broker, pg, redis) = scene(MID_RUN_TOTAL);
    let mut child = spawn(&broker, &pg, &redis, piped);
    wait_for_rows(&pg, 5_000, &mut child);
    (tmp, broker, pg, redis, child)
}

#[test]
fn postgres_restart_mid_run_loses_nothing() {
    const TOTAL: usize = MID_RUN_TOTAL;
    let (tmp, broker, pg, redis, child) = mid_run(true);
    let dir = tmp.path();
    pg.restart(Duration::from_millis(1500));
    let summary = finish(child);
    let retried: u64 = summary
        .split(" retried")
        .next()
        .and_then(|s| s.rsplit(", ").next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no retry count in:\n{summary}"));
    assert!(retried > 0, "the sink saw PostgreSQL go away:\n{summary}");
    check_against_replay(dir, &broker, &pg, &redis, TOTAL);
}

#[test]
fn redis_outage_mid_run_is_rebuilt() {
    const TOTAL: usize = MID_RUN_TOTAL;
    let (tmp, broker, pg, mut redis, mut child) = mid_run(true);
    let dir = tmp.path();
    redis.kill();
    // Down until at least one more batch is committed (and so given to the Redis sink).
    let committed: i64 = pg
        .client()
        .query_one("SELECT count(*) FROM transactions", &[])
        .unwrap()
        .get(0);
    wait_for_rows(&pg, committed + 1, &mut child);
    std::thread::sleep(Duration::from_millis(1000));
    redis.start_server();
    let summary = finish(child);
    let line = summary
        .lines()
        .find(|l| l.starts_with("redis: "))
        .unwrap_or_else(|| panic!("no redis summary in:\n{summary}"));
    assert!(
        !line.contains(" 0 failure(s)"),
        "the sink saw Redis go away: {line}"
    );
    assert!(line.contains("connected true"), "{line}");
    check_against_replay(dir, &broker, &pg, &redis, TOTAL);
}

#[test]
fn killed_while_consumers_are_at_different_cuts() {
    const TOTAL: usize = MID_RUN_TOTAL;
    let (tmp, broker, pg, redis, mut child) = mid_run(false);
    let dir = tmp.path();
    // Redis stops answering: its consumer falls behind (then caches in memory) while
    // PostgreSQL goes on committing and the topic goes on taking decisions.
    redis.pause();
    let mut client = pg.client();
    let cut_at_pause: i64 = client
        .query_one("SELECT cut_time FROM pipeline_state", &[])
        .unwrap()
        .get(0);
    wait_for_rows(&pg, 40_000, &mut child);
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    redis.resume();
    let cut: i64 = client
        .query_one("SELECT cut_time FROM pipeline_state", &[])
        .unwrap()
        .get(0);
    let cached: i64 = redis::cmd("GET")
        .arg("vtpga:time")
        .query(&mut redis.connection())
        .expect("Redis time");
    assert!(
        cached <= cut_at_pause && cut_at_pause < cut,
        "the consumers were at different cuts when killed: Redis at t = {cached}, PostgreSQL at t = {cut}"
    );
    let summary = finish(spawn(&broker, &pg, &redis, true));
    eprintln!("killed with Redis at t = {cached}, PostgreSQL at t = {cut}\n{summary}");
    check_against_replay(dir, &broker, &pg, &redis, TOTAL);
    // The decisions topic has every decision at least once, each repeat identical.
    let (replayed, _, _) = expected(dir, &broker);
    let mut on_topic: BTreeMap<(i64, i64), Value> = BTreeMap::new();
    for v in topic_decisions(&broker, "transacoes-decisoes") {
        let pos = position(&v);
        if let Some(earlier) = on_topic.insert(pos, v.clone()) {
            assert_eq!(earlier, v, "a repeated decision differs at {pos:?}");
        }
    }
    assert_eq!(on_topic.len(), TOTAL, "every decision is on the topic");
    for (pos, v) in &on_topic {
        assert_eq!(
            replayed.get(pos),
            Some(v),
            "decision on the topic at {pos:?}"
        );
    }
}

#[test]
fn bad_postgres_settings_fail_at_start_with_a_clear_error() {
    let out = Command::new(BIN)
        .args([
            "run",
            "--count",
            "10",
            "--postgres",
            "postgres://vtpga@127.0.0.1:1/nowhere",
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("vtpga runs");
    assert!(!out.status.success(), "must exit non-zero");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("connecting to PostgreSQL at postgres://vtpga@127.0.0.1:1/nowhere"),
        "{stderr}"
    );
    let out = Command::new(BIN)
        .args(["run", "--count", "10", "--postgres", "not a url at all"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("vtpga runs");
    assert!(!out.status.success(), "must exit non-zero");
}

//! The pipeline from Kafka, end to end, against a private broker: decisions on the
//! decisions topic equal `vtpga replay` of the messages as consumed (1 and 2 workers), bad
//! messages land in the dead-letter topic with a reason while their neighbours are
//! decided, and a third-party client (Python `confluent-kafka`) talks to it both ways.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use serde_json::Value;

use common::{
    generate, path_str, read_topic, replay, run_ok, topic_decisions, users_in, vtpga,
    write_capture, write_live_capture, Broker, KAFKA_TO_EOF,
};

const TOPIC: &str = "transacoes";
const DECISIONS: &str = "transacoes-decisoes";
const DLQ: &str = "transacoes-dlq";
const CONTROL: &str = "transacoes-controle";

fn run_pipeline(broker: &Broker, dir: &std::path::Path, workers: usize) -> String {
    run_pipeline_with(broker, dir, workers, &[])
}

fn run_pipeline_with(
    broker: &Broker,
    dir: &std::path::Path,
    workers: usize,
    extra: &[&str],
) -> String {
    let w = workers.to_string();
    let regions = dir.join("regions.csv");
    let users = dir.join("users.csv");
    let mut args = vec!["run"];
    args.extend_from_slice(&KAFKA_TO_EOF);
    args.extend_from_slice(&[
        "--regions",
        path_str(&regions),
        "--users-csv",
        path_str(&users),
        "--workers",
        &w,
    ]);
    args.extend_from_slice(extra);
    let out = vtpga(&args, &[("VTPGA_KAFKA_BROKERS", &broker.addr)]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `extra`: flags of the pipeline run (the two-worker run uses tiny buffers, so that
/// partitions are held back and the graph's in-flight budget is hit all the time).
fn decisions_equal_replay(workers: usize, extra: &[&str]) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    generate(
        dir,
        12000,
        800,
        &["--span-hours", "1", "--seed", &(100 + workers).to_string()],
    );
    let broker = Broker::start();
    broker.create_topics(4);
    broker.produce_capture(&dir.join("capture.jsonl"));
    let summary = run_pipeline_with(&broker, dir, workers, extra);
    // SPEC §10: every offset is accounted for (per-worker batches interleave; a false gap
    // would show here).
    assert!(
        summary.contains("source offsets: offsets accounted"),
        "{summary}"
    );
    if !extra.is_empty() {
        let held: u64 = summary
            .split("partitions held back ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no held-back count in the summary:\n{summary}"));
        assert!(
            held > 0,
            "tiny buffers must hold partitions back:\n{summary}"
        );
    }

    // The capture as the pipeline consumed it, replayed from the file.
    let consumed = read_topic(&broker, TOPIC);
    assert_eq!(
        consumed.len(),
        12000,
        "every produced message is in the topic"
    );
    let partitions: std::collections::BTreeSet<i32> =
        consumed.iter().map(|r| r.partition).collect();
    assert!(partitions.len() > 1, "messages are spread over partitions");
    let capture = dir.join("consumed.jsonl");
    write_capture(&consumed, &capture);
    let mut expected = replay(
        &capture,
        dir,
        &dir.join("replayed.jsonl"),
        &dir.join("replayed-analyses.json"),
        &[],
    );
    let records = read_topic(&broker, DECISIONS);
    let mut got: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8(r.payload.clone()).expect("decisions are JSON text"))
        .collect();
    assert_eq!(
        got.len(),
        consumed.len(),
        "one decision per message\n{summary}"
    );
    expected.sort();
    got.sort();
    assert!(
        got == expected,
        "decisions from Kafka differ from the replay of the consumed messages ({workers} workers): first difference {:?}",
        got.iter().zip(&expected).find(|(a, b)| a != b)
    );
    // Decisions are keyed by transaction id; every invalid message is also in the DLQ.
    let mut invalid = 0;
    for r in &records {
        let v: Value = serde_json::from_slice(&r.payload).expect("decision JSON");
        match v.get("id").and_then(Value::as_str) {
            Some(id) => assert_eq!(r.key.as_deref(), Some(id.as_bytes()), "keyed by id"),
            None => assert_eq!(v["status"], "invalid"),
        }
        assert!(r.header("decided_us").is_some());
        if v["status"] == "invalid" {
            invalid += 1;
        }
    }
    let statuses: std::collections::BTreeSet<String> = got
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["status"].to_string())
        .collect();
    assert!(
        statuses.len() >= 7,
        "a realistic mix of statuses: {statuses:?}"
    );
    assert!(invalid > 0, "the capture holds invalid messages");
    assert_eq!(read_topic(&broker, DLQ).len(), invalid);
}

#[test]
fn kafka_decisions_equal_replay_one_worker() {
    decisions_equal_replay(1, &[]);
}

#[test]
fn kafka_decisions_equal_replay_two_workers() {
    decisions_equal_replay(2, &["--max-buffered", "50", "--max-in-flight", "300"]);
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[test]
fn bad_messages_go_to_the_dead_letter_topic() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    generate(dir, 10, 50, &[]);
    let users = users_in(dir);
    let broker = Broker::start();
    broker.create_topics(2);
    let producer: ThreadedProducer<DefaultProducerContext> = broker
        .config()
        .set("message.max.bytes", "5000000")
        .create()
        .expect("producer");
    let huge = format!("{{\"pad\":\"{}\"}}", "a".repeat(1 << 20));
    let bad: Vec<(&str, Option<Vec<u8>>)> = vec![
        ("not JSON", Some(b"this is not json".to_vec())),
        ("binary garbage", Some(vec![0xff, 0x00, 0xfe, 0x80, 0xc3, 0x28, 0x01])),
        ("1 MB payload", Some(huge.into_bytes())),
        (
            "wrong types",
            Some(
                br#"{"id_transacao": 5, "id_usuario_pagador": true, "id_usuario_recebedor": null,
                "id_regiao": [], "modalidade_pagamento": 1, "data_horario": 0, "valor_transacao": "x"}"#
                    .to_vec(),
            ),
        ),
        ("empty", Some(Vec::new())),
        ("no value at all", None),
    ];
    // good, bad, good, bad, ..., good: all on partition 0, in this order.
    let t = now_ms();
    let event = chrono_like_utc(t);
    let good = |i: usize| {
        format!(
            r#"{{"id_transacao":"good-{i}","id_usuario_pagador":"{}","id_usuario_recebedor":"{}","id_regiao":"{}","modalidade_pagamento":"Pix","data_horario":"{event}","valor_transacao":1.25}}"#,
            users[0].0, users[1].0, users[0].1
        )
    };
    let mut expected_kind: Vec<(&str, Option<Vec<u8>>)> = Vec::new();
    for (i, (name, payload)) in bad.iter().enumerate() {
        expected_kind.push(("good", Some(good(i).into_bytes())));
        expected_kind.push((name, payload.clone()));
    }
    expected_kind.push(("good", Some(good(bad.len()).into_bytes())));
    for (_, payload) in &expected_kind {
        let mut record: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(TOPIC).partition(0).timestamp(t);
        if let Some(p) = payload {
            record = record.payload(&p[..]);
        }
        producer.send(record).map_err(|(e, _)| e).expect("send");
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
    let consumed = read_topic(&broker, TOPIC);
    assert_eq!(
        consumed.len(),
        expected_kind.len(),
        "the broker took every message"
    );

    run_pipeline(&broker, dir, 2);

    let decisions: HashMap<i64, Value> = topic_decisions(&broker, DECISIONS)
        .into_iter()
        .map(|v| (v["offset"].as_i64().expect("offset"), v))
        .collect();
    let dlq: HashMap<i64, common::Consumed> = read_topic(&broker, DLQ)
        .into_iter()
        .map(|r| {
            let offset: i64 = r
                .header("offset")
                .expect("offset header")
                .parse()
                .expect("numeric offset");
            (offset, r)
        })
        .collect();
    assert_eq!(
        decisions.len(),
        expected_kind.len(),
        "one decision per message"
    );
    assert_eq!(dlq.len(), bad.len(), "each bad message, once, in the DLQ");
    for (offset, (kind, payload)) in expected_kind.iter().enumerate() {
        let offset = offset as i64;
        let d = &decisions[&offset];
        if *kind == "good" {
            assert_ne!(d["status"], "invalid", "{d}");
            assert_ne!(d["status"], "late", "{d}");
            assert!(!dlq.contains_key(&offset));
        } else {
            assert_eq!(d["status"], "invalid", "{kind}: {d}");
            assert!(d["error"].as_str().is_some_and(|e| !e.is_empty()), "{kind}");
            let dead = &dlq[&offset];
            assert_eq!(
                &dead.payload,
                payload.as_ref().unwrap_or(&Vec::new()),
                "{kind}"
            );
            assert_eq!(dead.header("partition"), Some("0"));
            let error = dead.header("error").expect("error header");
            assert!(!error.is_empty(), "{kind}");
            assert_eq!(Some(error), d["error"].as_str(), "{kind}");
        }
    }
}

/// `t` (ms) as RFC 3339 UTC with milliseconds, without a date library.
fn chrono_like_utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms.rem_euclid(1000)
    )
}

#[test]
fn interoperates_with_python_confluent_kafka() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    generate(dir, 10, 200, &[]);
    let broker = Broker::start();
    broker.create_topics(3);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/confluent_client.py"
    );
    let (users, ids) = (dir.join("users.csv"), dir.join("ids.txt"));
    let python = |mode: &str| {
        let out = run_ok(
            Command::new("python3").args([
                script,
                mode,
                "--brokers",
                &broker.addr,
                "--users",
                path_str(&users),
                "--ids",
                path_str(&ids),
                "--count",
                "400",
            ]),
            &format!("confluent_client.py {mode}"),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    python("produce");
    run_pipeline(&broker, dir, 2);
    let report = python("verify");
    // The script checked the decisions itself; check its report too.
    let counts: BTreeMap<String, u64> = report
        .lines()
        .filter_map(|l| l.strip_prefix("status "))
        .filter_map(|l| l.split_once('='))
        .map(|(s, n)| (s.to_owned(), n.trim().parse().expect("count")))
        .collect();
    assert_eq!(counts.values().sum::<u64>(), 400, "{report}");
    assert!(!counts.contains_key("invalid"), "{report}");
}

/// SPEC §11 through Kafka: control records on the control topic (typed ones from this
/// test, Debezium change events from the third-party Python client) change users, regions
/// and the rule set while transactions flow; the decisions topic equals `vtpga replay` of
/// the transactions and control records as consumed, every invalid control record is on
/// the dead-letter topic with its error, and the Debezium events took effect.
#[test]
fn live_changes_through_kafka_equal_replay() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    generate(dir, 6000, 300, &["--span-hours", "1", "--seed", "31"]);
    let users = users_in(dir);
    let broker = Broker::start();
    broker.create_topics(3);
    let capture = dir.join("capture.jsonl");
    broker.produce_capture(&capture);
    // The record timestamps the capture spans: the changes fall among its messages.
    let times: Vec<i64> = std::fs::read_to_string(&capture)
        .expect("capture")
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("line")["t"]
                .as_i64()
                .expect("t")
        })
        .collect();
    let (first, last) = (
        *times.iter().min().expect("messages"),
        *times.iter().max().expect("messages"),
    );
    let at = |fraction: f64| first + ((last - first) as f64 * fraction) as i64;
    let (u0, r0) = (&users[0].0, &users[0].1);
    let (u3, u4) = (&users[3].0, &users[4].0);
    let valid: Vec<(i64, String)> = vec![
        (at(0.1), r#"{"type":"rules","version":"kafka-v2","risk_threshold":0.3,"max_delay_ms":1000,"dedup_window_ms":300000}"#.to_owned()),
        (at(0.2), format!(r#"{{"type":"balance_adjustment","user_id":"{u0}","amount_cents":-100000}}"#)),
        (at(0.3), format!(r#"{{"type":"user","id":"kafka-new","name":"N","region_id":"{r0}","balance_cents":900000,"credit_limit_cents":0}}"#)),
        (at(0.4), format!(r#"{{"type":"user_delete","id":"{u3}"}}"#)),
        (at(0.5), format!(r#"{{"type":"user","id":"{u4}","name":"x","region_id":"{r0}","balance_cents":1,"credit_limit_cents":0}}"#)),
        (at(0.6), format!(r#"{{"type":"region","id":"{r0}","uf":"AC","name":"moved","lat":-9.97,"lon":-67.81}}"#)),
        (at(0.7), r#"{"type":"rules","version":"kafka-v3","risk_threshold":0.8,"max_delay_ms":2000,"dedup_window_ms":1000,"effective_from":"2099-01-01T00:00:00.000Z"}"#.to_owned()),
    ];
    let invalid: Vec<(i64, String)> = vec![
        (at(0.15), r#"{"type":"balance_adjustment","user_id":"nobody-at-all","amount_cents":5}"#.to_owned()),
        (at(0.25), r#"{"type":"rules","version":"default","risk_threshold":0.1,"max_delay_ms":1,"dedup_window_ms":1}"#.to_owned()),
        (at(0.35), r#"{"type":"user","id":"half"}"#.to_owned()),
        (at(0.45), r#"{"type":"teleport","id":"x"}"#.to_owned()),
        (at(0.55), "not json at all".to_owned()),
    ];
    let producer: ThreadedProducer<DefaultProducerContext> =
        broker.config().create().expect("producer");
    let mut all: Vec<&(i64, String)> = valid.iter().chain(&invalid).collect();
    all.sort();
    for (i, (ts, payload)) in all.iter().enumerate() {
        let record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(CONTROL)
            .partition((i % 2) as i32)
            .timestamp(*ts)
            .payload(payload.as_bytes());
        producer.send(record).map_err(|(e, _)| e).expect("send");
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/confluent_client.py"
    );
    let ids = dir.join("ids.txt");
    let users_csv = dir.join("users.csv");
    let stamp = at(0.65).to_string();
    run_ok(
        Command::new("python3").args([
            script,
            "debezium",
            "--brokers",
            &broker.addr,
            "--users",
            path_str(&users_csv),
            "--ids",
            path_str(&ids),
            "--timestamp-ms",
            &stamp,
        ]),
        "confluent_client.py debezium",
    );

    // A shadow rule set (SPEC §12) decides beside the rules of record; it does not follow
    // the `rules` records.
    let shadow = dir.join("shadow.json");
    std::fs::write(
        &shadow,
        r#"{"version": "kafka-shadow", "risk_threshold": 0.9, "max_delay_ms": 2000, "dedup_window_ms": 60000}"#,
    )
    .expect("shadow file");
    let live_shadows = dir.join("shadows-live");
    // The shadow's analyses and what-if rows are cached in Redis too.
    let redis = common::Redis::start();
    let summary = run_pipeline_with(
        &broker,
        dir,
        2,
        &[
            "--shadow",
            path_str(&shadow),
            "--shadow-out",
            path_str(&live_shadows),
            "--redis",
            &redis.url,
        ],
    );

    let consumed = read_topic(&broker, TOPIC);
    let controls = read_topic(&broker, CONTROL);
    assert_eq!(controls.len(), valid.len() + invalid.len() + 4, "{summary}");
    let live = dir.join("consumed-live.jsonl");
    write_live_capture(&consumed, &controls, &live);
    let balances = dir.join("replayed-balances.csv");
    let replayed_shadows = dir.join("shadows-replayed");
    let mut expected = replay(
        &live,
        dir,
        &dir.join("replayed.jsonl"),
        &dir.join("replayed-analyses.json"),
        &[
            "--balances",
            path_str(&balances),
            "--shadow",
            path_str(&shadow),
            "--shadow-out",
            path_str(&replayed_shadows),
        ],
    );
    // The shadow's outputs of the live run are the replay's (its decisions in the order
    // the workers' batches came: compared as a set).
    for file in ["analyses.json", "balances.csv", "what_if.json"] {
        let live = std::fs::read(live_shadows.join("kafka-shadow").join(file)).expect(file);
        let replayed = std::fs::read(replayed_shadows.join("kafka-shadow").join(file)).expect(file);
        assert!(
            live == replayed,
            "the shadow's {file} from Kafka differs from the replay's"
        );
    }
    // Redis holds the replay's rows for the shadow (each analysis and the what-if rows
    // compared as sets: Redis orders a hash by field).
    let as_sets = |v: &serde_json::Value| -> BTreeMap<String, BTreeSet<String>> {
        v.as_object()
            .expect("analyses object")
            .iter()
            .map(|(name, rows)| {
                let rows = rows.as_array().expect("rows");
                (name.clone(), rows.iter().map(|r| r.to_string()).collect())
            })
            .collect()
    };
    let file_json = |file: &str| -> serde_json::Value {
        serde_json::from_slice(
            &std::fs::read(replayed_shadows.join("kafka-shadow").join(file)).expect(file),
        )
        .expect(file)
    };
    let mut conn = redis::Client::open(redis.url.as_str())
        .and_then(|c| c.get_connection())
        .expect("redis connection");
    let cached = vtpga_sinks::redis::read_shadow_analyses(&mut conn, "vtpga", "kafka-shadow")
        .expect("shadow analyses in redis");
    assert_eq!(
        as_sets(&cached),
        as_sets(&file_json("analyses.json")),
        "the shadow's analyses in Redis are the replay's"
    );
    let cached: BTreeSet<String> =
        vtpga_sinks::redis::read_what_if(&mut conn, "vtpga", "kafka-shadow")
            .expect("what-if rows in redis")
            .iter()
            .map(|r| r.to_string())
            .collect();
    let replayed_what_if: BTreeSet<String> = file_json("what_if.json")
        .as_array()
        .expect("what-if rows")
        .iter()
        .map(|r| r.to_string())
        .collect();
    assert!(!cached.is_empty());
    assert_eq!(
        cached, replayed_what_if,
        "the shadow's what-if rows in Redis are the replay's"
    );
    let lines = |root: &std::path::Path| -> Vec<String> {
        let mut l: Vec<String> = std::fs::read_to_string(root.join("kafka-shadow/decisions.jsonl"))
            .expect("shadow decisions")
            .lines()
            .map(str::to_owned)
            .collect();
        l.sort();
        l
    };
    let shadow_decisions = lines(&replayed_shadows);
    assert_eq!(lines(&live_shadows), shadow_decisions);
    assert_eq!(
        shadow_decisions.len(),
        consumed.len(),
        "a shadow decision per message"
    );
    assert!(
        shadow_decisions
            .iter()
            .all(|d| d.contains("\"rules_version\":\"kafka-shadow\"")),
        "the shadow follows no rules record"
    );
    let mut got: Vec<String> = read_topic(&broker, DECISIONS)
        .iter()
        .map(|r| String::from_utf8(r.payload.clone()).expect("decisions are JSON text"))
        .collect();
    assert_eq!(
        got.len(),
        consumed.len(),
        "one decision per message\n{summary}"
    );
    expected.sort();
    got.sort();
    assert!(
        got == expected,
        "decisions from Kafka differ from the replay of the consumed records: first difference {:?}",
        got.iter().zip(&expected).find(|(a, b)| a != b)
    );
    // The rule sets decided what they were in force for.
    let versions: std::collections::BTreeSet<String> = got
        .iter()
        .map(|d| {
            serde_json::from_str::<Value>(d).expect("record")["rules_version"]
                .as_str()
                .expect("rules_version")
                .to_owned()
        })
        .collect();
    assert_eq!(
        versions,
        ["default", "kafka-v2"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        "kafka-v3 takes effect in 2099"
    );
    // Every invalid control record is a dead letter, with its error; nothing else of the
    // control topic is.
    let dead: Vec<common::Consumed> = read_topic(&broker, DLQ)
        .into_iter()
        .filter(|r| r.header("topic") == Some(CONTROL))
        .collect();
    let mut dead_payloads: Vec<String> = dead
        .iter()
        .map(|r| String::from_utf8(r.payload.clone()).expect("text"))
        .collect();
    let mut want: Vec<String> = invalid.iter().map(|(_, p)| p.clone()).collect();
    dead_payloads.sort();
    want.sort();
    assert_eq!(dead_payloads, want);
    for r in &dead {
        assert!(
            r.header("error").is_some_and(|e| !e.is_empty()),
            "a dead letter says why"
        );
    }
    // The Debezium events took effect: the user they created exists, the one they
    // deleted does not (and neither does the one the typed record deleted).
    let balances = std::fs::read_to_string(&balances).expect("balances");
    let ids: Vec<&str> = balances
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().expect("id"))
        .collect();
    assert!(
        ids.contains(&"dbz-new") && ids.contains(&"kafka-new"),
        "{ids:?}"
    );
    assert!(!ids.contains(&users[2].0.as_str()), "deleted by Debezium");
    assert!(
        !ids.contains(&u3.as_str()),
        "deleted by a user_delete record"
    );
}

//! `scripts/cluster.sh` on localhost: 2 processes × 2 workers started by the script consume
//! a 4-partition topic and produce exactly the decisions of 1 process × 1 worker on the same
//! messages, one per message; the script reports a failed process and stops a running
//! cluster by its PIDs.

mod common;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use serde_json::Value;

use common::{
    generate, output_text as text, path_str, read_topic, vtpga, Broker, Consumed, BIN, KAFKA_TO_EOF,
};

const TOPIC: &str = "transacoes";
const DECISIONS: &str = "transacoes-decisoes";
const MESSAGES: usize = 8000;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cluster.sh")
}

/// `scripts/cluster.sh ARGS` with this test's binary and state directory.
fn cluster_sh(state: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new("bash")
        .arg(script())
        .args(args)
        .env("VTPGA_BIN", BIN)
        .env("VTPGA_CLUSTER_DIR", state)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("bash runs scripts/cluster.sh")
}

/// Stops whatever the script started from `state` when the test ends, passed or not.
struct Stopper(PathBuf);

impl Drop for Stopper {
    fn drop(&mut self) {
        let _ = cluster_sh(&self.0, &["stop"], &[]);
    }
}

/// The first of `n` consecutive free loopback ports.
fn free_ports(n: u16) -> u16 {
    for _ in 0..100 {
        let first = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        if first > u16::MAX - n {
            continue;
        }
        let held: Vec<_> = (first..first + n)
            .map_while(|p| TcpListener::bind(("127.0.0.1", p)).ok())
            .collect();
        if held.len() == n as usize {
            return first;
        }
    }
    panic!("no {n} consecutive free loopback ports");
}

/// The remembered processes of a cluster state directory: (index, host, pid).
fn remembered(state: &Path) -> Vec<(usize, String, u32)> {
    std::fs::read_to_string(state.join("processes"))
        .expect("the state file lists the processes")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].parse().expect("index"),
                f[1].to_owned(),
                f[2].parse().expect("pid"),
            )
        })
        .collect()
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                !s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(false)
}

/// Every message of the transactions topic: (partition, offset, timestamp, payload).
type Topic = BTreeSet<(i64, i64, i64, Vec<u8>)>;

fn messages_of(records: &[Consumed]) -> Topic {
    records
        .iter()
        .map(|r| {
            (
                i64::from(r.partition),
                r.offset,
                r.timestamp,
                r.payload.clone(),
            )
        })
        .collect()
}

/// A fresh broker with 4-partition topics holding the capture, produced by `vtpga
/// produce`; returns the broker and the records of its transactions topic.
fn broker_with_capture(capture: &Path) -> (Broker, Vec<Consumed>) {
    let broker = Broker::start();
    broker.create_topics(4);
    broker.produce_capture(capture);
    let records = read_topic(&broker, TOPIC);
    assert_eq!(records.len(), MESSAGES, "every message is in the topic");
    let partitions: BTreeSet<i32> = records.iter().map(|r| r.partition).collect();
    assert_eq!(
        partitions.len(),
        4,
        "messages are spread over all 4 partitions"
    );
    (broker, records)
}

/// A fresh broker with 4-partition topics holding a copy of `records`: same partitions,
/// same order (so same offsets), same timestamps, keys and payloads. (`vtpga produce`
/// sends the few messages without a payer key to a random partition, so producing the
/// capture again would not give the same positions.)
fn broker_with_copy(records: &[Consumed]) -> Broker {
    let broker = Broker::start();
    broker.create_topics(4);
    let producer: ThreadedProducer<DefaultProducerContext> = broker
        .config()
        .set("linger.ms", "5")
        // Order within a partition is kept even if a request were retried.
        .set("max.in.flight.requests.per.connection", "1")
        .set("message.max.bytes", "10000000")
        .create()
        .expect("producer");
    let mut sorted: Vec<&Consumed> = records.iter().collect();
    sorted.sort_by_key(|r| (r.partition, r.offset));
    for r in sorted {
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(TOPIC)
            .partition(r.partition)
            .timestamp(r.timestamp)
            .payload(&r.payload[..]);
        if let Some(k) = &r.key {
            record = record.key(&k[..]);
        }
        producer.send(record).map_err(|(e, _)| e).expect("send");
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
    broker
}

/// The decision records of the decisions topic, as sorted JSON lines, after checking that
/// there is exactly one per message position.
fn decisions(broker: &Broker, messages: &Topic, what: &str, logs: &str) -> Vec<String> {
    let positions: BTreeSet<(i64, i64)> = messages.iter().map(|m| (m.0, m.1)).collect();
    let mut lines: Vec<String> = read_topic(broker, DECISIONS)
        .iter()
        .map(|r| String::from_utf8(r.payload.clone()).expect("decisions are JSON text"))
        .collect();
    let decided: Vec<(i64, i64)> = lines
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("a decision is JSON");
            (
                v["partition"].as_i64().expect("partition"),
                v["offset"].as_i64().expect("offset"),
            )
        })
        .collect();
    let unique: BTreeSet<(i64, i64)> = decided.iter().copied().collect();
    assert_eq!(
        decided.len(),
        unique.len(),
        "{what}: a message was decided more than once"
    );
    assert!(
        unique == positions,
        "{what}: {} decision(s) for {} message(s); undecided: {:?}\n{logs}",
        unique.len(),
        positions.len(),
        positions.difference(&unique).take(5).collect::<Vec<_>>()
    );
    lines.sort();
    lines
}

#[test]
fn two_processes_of_two_workers_decide_like_one_worker() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    generate(dir, MESSAGES, 500, &["--span-hours", "0.2"]);
    let capture = dir.join("capture.jsonl");
    let regions = dir.join("regions.csv");
    let users = dir.join("users.csv");
    let mut run_args = KAFKA_TO_EOF.to_vec();
    run_args.extend_from_slice(&[
        "--regions",
        path_str(&regions),
        "--users-csv",
        path_str(&users),
    ]);

    // 1 process × 1 worker.
    let (single_broker, records) = broker_with_capture(&capture);
    let messages = messages_of(&records);
    let mut args = vec!["run"];
    args.extend_from_slice(&run_args);
    let single = vtpga(&args, &[("VTPGA_KAFKA_BROKERS", &single_broker.addr)]);
    let expected = decisions(
        &single_broker,
        &messages,
        "1 process x 1 worker",
        &String::from_utf8_lossy(&single.stderr),
    );
    drop(single_broker);

    // 2 processes × 2 workers through the script, on a fresh broker with the same messages.
    let broker = broker_with_copy(&records);
    let copied = messages_of(&read_topic(&broker, TOPIC));
    assert!(
        copied == messages,
        "both brokers hold the same messages at the same positions: first difference {:?}",
        copied
            .iter()
            .zip(&messages)
            .find(|(a, b)| a != b)
            .map(|(a, b)| ((a.0, a.1, a.2), (b.0, b.1, b.2)))
    );
    let state = dir.join("cluster");
    let _stopper = Stopper(state.clone());
    let port = free_ports(2).to_string();
    let mut args = vec!["start", "2", "2", "--"];
    args.extend_from_slice(&run_args);
    args.extend_from_slice(&["--base-port", &port]);
    let env = [("VTPGA_KAFKA_BROKERS", broker.addr.as_str())];
    let out = cluster_sh(&state, &args, &env);
    assert!(out.status.success(), "cluster.sh start: {}", text(&out));
    let procs = remembered(&state);
    assert_eq!(
        procs.iter().map(|p| p.0).collect::<Vec<_>>(),
        vec![0, 1],
        "two processes remembered: {procs:?}"
    );
    assert!(procs.iter().all(|p| p.1 == "local"));
    let out = cluster_sh(&state, &["wait", "--timeout", "120"], &env);
    let logs: String = (0..2)
        .map(|i| {
            let log =
                std::fs::read_to_string(state.join(format!("process-{i}.log"))).unwrap_or_default();
            format!("--- process {i}:\n{log}\n")
        })
        .collect();
    assert!(
        out.status.success(),
        "cluster.sh wait: {}\n{logs}",
        text(&out)
    );
    for i in 0..2 {
        let log = std::fs::read_to_string(state.join(format!("process-{i}.log")))
            .expect("a log per process");
        assert!(
            log.contains("2 worker(s) x 2 process(es)"),
            "process {i} ran as part of a 2 x 2 cluster:\n{log}"
        );
        assert!(
            log.contains("partition(s) of transacoes"),
            "process {i} read the topic:\n{log}"
        );
    }
    let got = decisions(&broker, &messages, "2 processes x 2 workers", &logs);
    assert_eq!(got.len(), expected.len());
    assert!(
        got == expected,
        "2 x 2 decisions differ from 1 x 1: first difference {:?}",
        got.iter().zip(&expected).find(|(a, b)| a != b)
    );
    let statuses: BTreeSet<String> = got
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["status"].to_string())
        .collect();
    assert!(statuses.len() >= 6, "a mix of statuses: {statuses:?}");
}

#[test]
fn cluster_script_reports_failures_and_stops_by_pid() {
    let tmp = tempfile::tempdir().expect("temp dir");

    // A process that fails at once fails `start`, and `wait` reports it.
    let state = tmp.path().join("bad");
    let _stop_bad = Stopper(state.clone());
    let out = cluster_sh(&state, &["start", "2", "1", "--", "--no-such-flag"], &[]);
    assert!(
        !out.status.success(),
        "start with a failing process: {}",
        text(&out)
    );
    let out = cluster_sh(&state, &["wait", "--timeout", "30"], &[]);
    assert!(
        !out.status.success(),
        "wait after a failure: {}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("failed (exit status 2)"),
        "{}",
        text(&out)
    );

    // A running cluster (the embedded generator, no end) is stopped by its PIDs.
    let state = tmp.path().join("running");
    let _stop_running = Stopper(state.clone());
    let port = free_ports(2).to_string();
    let out = cluster_sh(
        &state,
        &[
            "start",
            "2",
            "1",
            "--base-port",
            &port,
            "--",
            "--rate",
            "200",
            "--generated-users",
            "200",
        ],
        &[],
    );
    assert!(out.status.success(), "cluster.sh start: {}", text(&out));
    let procs = remembered(&state);
    assert_eq!(procs.len(), 2);
    assert!(procs.iter().all(|p| pid_alive(p.2)), "both run: {procs:?}");
    let out = cluster_sh(&state, &["status"], &[]);
    assert!(out.status.success(), "status while running: {}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .matches(": running;")
            .count(),
        2,
        "{}",
        text(&out)
    );
    let out = cluster_sh(&state, &["wait", "--timeout", "2"], &[]);
    assert_eq!(
        out.status.code(),
        Some(124),
        "wait times out: {}",
        text(&out)
    );
    let out = cluster_sh(&state, &["stop"], &[]);
    assert!(out.status.success(), "cluster.sh stop: {}", text(&out));
    assert!(
        procs.iter().all(|p| !pid_alive(p.2)),
        "both stopped: {procs:?}"
    );
    // SIGINT is a clean stop: both processes printed their summary and exited 0.
    let out = cluster_sh(&state, &["wait", "--timeout", "10"], &[]);
    assert!(
        out.status.success(),
        "exit statuses after stop: {}",
        text(&out)
    );
    for i in 0..2 {
        let log = std::fs::read_to_string(state.join(format!("process-{i}.log"))).unwrap();
        assert!(log.contains("decided "), "process {i} summary:\n{log}");
    }
}

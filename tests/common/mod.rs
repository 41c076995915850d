//! Shared fixtures of the integration tests: a private Kafka-protocol broker (tansu, memory
//! storage) on a free loopback port, stopped by PID when the test ends; running the
//! `vtpga` binary; reading a whole topic back.

#![allow(dead_code)]

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

// Each test crate includes this module and uses a part of it.
#[allow(unused_imports)]
pub use vtpga_testkit::{free_port, path_str, Postgres, Redis};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_vtpga");

/// The tansu binary: `$VTPGA_TANSU`, else on `PATH`, else in cargo's bin directory.
fn tansu_path() -> PathBuf {
    if let Ok(p) = std::env::var("VTPGA_TANSU") {
        return PathBuf::from(p);
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("tansu");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo")
        });
    let candidate = home.join("bin/tansu");
    assert!(
        candidate.is_file(),
        "tansu is not installed: run scripts/setup.sh (or scripts/kafka.sh install)"
    );
    candidate
}

/// A broker of this test's own. Dropping it kills the process it started.
pub struct Broker {
    child: Child,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Broker {
    pub fn start() -> Broker {
        let port = free_port();
        Broker::spawn(port, port)
    }

    /// tansu listening on `port` and telling clients to connect to `advertised`; returns
    /// once it accepts connections.
    fn spawn(port: u16, advertised: u16) -> Broker {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = std::fs::File::create(dir.path().join("tansu.log")).expect("log file");
        let child = Command::new(tansu_path())
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{port}"),
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{advertised}"),
                "--storage-engine",
                "memory://tansu/",
            ])
            .current_dir(dir.path())
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("starting tansu");
        let broker = Broker {
            child,
            addr: format!("127.0.0.1:{advertised}"),
            _dir: dir,
        };
        wait_port(port, "tansu");
        broker
    }

    /// `vtpga produce` of the SPEC §9 capture at `capture` into the transactions topic.
    pub fn produce_capture(&self, capture: &Path) {
        vtpga(
            &["produce", "--capture", path_str(capture), "--quiet"],
            &[("VTPGA_KAFKA_BROKERS", &self.addr)],
        );
    }

    /// Creates the three topics (default names) with `partitions` partitions.
    pub fn create_topics(&self, partitions: i32) {
        vtpga(
            &["topics", "--partitions", &partitions.to_string()],
            &[("VTPGA_KAFKA_BROKERS", &self.addr)],
        );
    }

    pub fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.addr);
        c
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (at most 30 s) until something listens on loopback `port`; `what` names it.
pub fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not open port {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A process's exit status and output, for a failure message.
pub fn output_text(out: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `command` to its end; panics with its output unless it succeeds (`what` names it
/// in the message).
pub fn run_ok(command: &mut Command, what: &str) -> Output {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{what} runs: {e}"));
    assert!(out.status.success(), "{what} failed: {}", output_text(&out));
    out
}

/// Runs `vtpga` with `args` and extra environment; panics with its output if it fails.
pub fn vtpga(args: &[&str], env: &[(&str, &str)]) -> Output {
    run_ok(
        Command::new(BIN)
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null()),
        &format!("vtpga {args:?}"),
    )
}

/// A process of the test's own, killed (by PID) when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `command` with `RUST_LOG=warn`, no input and its output discarded; `what` is
/// the panic message if it cannot start.
pub fn spawn_quiet(command: &mut Command, what: &str) -> Child {
    command
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect(what)
}

/// `vtpga generate` into `dir`: `count` messages of `users` users, and `extra` flags.
pub fn generate(dir: &Path, count: usize, users: usize, extra: &[&str]) {
    let (count, users) = (count.to_string(), users.to_string());
    let mut args = vec![
        "generate",
        "--out",
        path_str(dir),
        "--count",
        &count,
        "--users",
        &users,
    ];
    args.extend_from_slice(extra);
    vtpga(&args, &[]);
}

/// `vtpga replay` of the capture at `input` with the reference data (`regions.csv`,
/// `users.csv`) of `ref_dir`, writing its decisions to `decisions` and its analyses to
/// `analyses`, with `extra` flags; returns the decisions' lines.
pub fn replay(
    input: &Path,
    ref_dir: &Path,
    decisions: &Path,
    analyses: &Path,
    extra: &[&str],
) -> Vec<String> {
    let regions = ref_dir.join("regions.csv");
    let users = ref_dir.join("users.csv");
    let mut args = vec![
        "replay",
        "--input",
        path_str(input),
        "--regions",
        path_str(&regions),
        "--users",
        path_str(&users),
        "--decisions",
        path_str(decisions),
        "--analyses",
        path_str(analyses),
    ];
    args.extend_from_slice(extra);
    vtpga(&args, &[]);
    std::fs::read_to_string(decisions)
        .expect("replay decisions")
        .lines()
        .map(String::from)
        .collect()
}

/// A decision's source position: (partition, offset).
pub fn position(decision: &serde_json::Value) -> (i64, i64) {
    (
        decision["partition"].as_i64().expect("partition"),
        decision["offset"].as_i64().expect("offset"),
    )
}

/// Decisions keyed by their source position.
pub fn by_position(
    decisions: impl IntoIterator<Item = serde_json::Value>,
) -> std::collections::BTreeMap<(i64, i64), serde_json::Value> {
    decisions.into_iter().map(|v| (position(&v), v)).collect()
}

/// Decision lines (JSON text) as values.
pub fn parse_decisions(lines: &[String]) -> Vec<serde_json::Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("decision JSON"))
        .collect()
}

/// Every record of `topic` (a decisions topic), its payload parsed as JSON.
pub fn topic_decisions(broker: &Broker, topic: &str) -> Vec<serde_json::Value> {
    read_topic(broker, topic)
        .iter()
        .map(|r| serde_json::from_slice(&r.payload).expect("decision JSON"))
        .collect()
}

/// One record as consumed.
#[derive(Debug, Clone)]
pub struct Consumed {
    pub partition: i32,
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Consumed {
    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

/// Every record of `topic`, from the beginning to the current end of each partition.
pub fn read_topic(broker: &Broker, topic: &str) -> Vec<Consumed> {
    // tansu can leave records out of a fetch (README, "Where tansu differs"): a read whose
    // offsets do not cover every partition from its low to its high watermark is the
    // reader's loss, not the writer's, and is read again.
    let mut missing = Vec::new();
    for _ in 0..3 {
        let (records, ranges) = read_topic_once(broker, topic);
        missing = ranges
            .iter()
            .filter_map(|&(p, low, high)| {
                let got: std::collections::BTreeSet<i64> = records
                    .iter()
                    .filter(|r| r.partition == p)
                    .map(|r| r.offset)
                    .collect();
                let gaps: Vec<i64> = (low..high).filter(|o| !got.contains(o)).take(5).collect();
                (!gaps.is_empty()).then_some((p, gaps))
            })
            .collect();
        if missing.is_empty() {
            return records;
        }
        eprintln!("reading {topic}: the broker left out offsets {missing:?}; reading again");
    }
    panic!("reading {topic}: the broker left out offsets {missing:?} in three reads");
}

/// One read of every partition of `topic`, with each partition's (low, high) watermarks.
fn read_topic_once(broker: &Broker, topic: &str) -> (Vec<Consumed>, Vec<(i32, i64, i64)>) {
    let mut config = broker.config();
    config
        .set("group.id", "vtpga-test-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true");
    let consumer: BaseConsumer = config.create().expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions = metadata.topics()[0].partitions().len() as i32;
    assert!(partitions > 0, "topic {topic} has no partitions");
    let mut tpl = TopicPartitionList::new();
    let mut open = std::collections::HashSet::new();
    let mut ranges = Vec::new();
    for p in 0..partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .expect("watermarks");
        if high > low {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .expect("partition");
            open.insert(p);
            ranges.push((p, low, high));
        }
    }
    let mut out = Vec::new();
    if open.is_empty() {
        return (out, ranges);
    }
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !open.is_empty() {
        assert!(Instant::now() < deadline, "reading {topic} took too long");
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            Some(Ok(m)) => out.push(Consumed {
                partition: m.partition(),
                offset: m.offset(),
                timestamp: m.timestamp().to_millis().unwrap_or(-1),
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().unwrap_or_default().to_vec(),
                headers: m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default(),
            }),
        }
    }
    (out, ranges)
}

/// Writes records as a SPEC §9 capture (record timestamps as consumed).
pub fn write_capture(records: &[Consumed], path: &Path) {
    write_live_capture(records, &[], path);
}

/// [`write_capture`] of the transactions and, as `"topic": "transacoes-controle"` lines
/// (SPEC §9), the control records consumed.
pub fn write_live_capture(records: &[Consumed], controls: &[Consumed], path: &Path) {
    let mut text = String::new();
    let lines = records
        .iter()
        .map(|r| (None, r))
        .chain(controls.iter().map(|r| (Some("transacoes-controle"), r)));
    for (topic, r) in lines {
        let payload =
            String::from_utf8(r.payload.clone()).expect("the capture format holds text payloads");
        let mut line = serde_json::json!({
            "t": r.timestamp,
            "partition": r.partition,
            "offset": r.offset,
            "payload": payload,
        });
        if let Some(topic) = topic {
            line["topic"] = topic.into();
        }
        text.push_str(&line.to_string());
        text.push('\n');
    }
    std::fs::write(path, text).expect("writing the capture");
}

/// A TCP proxy on loopback that can cut every connection (a broker outage as the
/// clients see it: connections reset, new ones closed at once) and restore service.
pub struct Proxy {
    pub port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    /// Forwards 127.0.0.1:`port` to 127.0.0.1:`target`.
    pub fn start(port: u16, target: u16) -> Proxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("proxy port");
        let cut = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (c, s, o) = (cut.clone(), stop.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                if c.load(Ordering::SeqCst) {
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let mut conns = o.lock().expect("lock");
                for stream in [&client, &server] {
                    if let Ok(s) = stream.try_clone() {
                        conns.push(s);
                    }
                }
                for (mut from, mut to) in [
                    (
                        client.try_clone().expect("clone"),
                        server.try_clone().expect("clone"),
                    ),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy {
            port,
            cut,
            stop,
            open,
        }
    }

    /// Resets every connection and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for s in self.open.lock().expect("lock").drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.cut();
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

impl Broker {
    /// A broker whose clients all reach it through a [`Proxy`] (it advertises the proxy's
    /// address), so that the test can cut the connection and restore it.
    pub fn start_behind_proxy() -> (Broker, Proxy) {
        let port = free_port();
        let proxy = Proxy::start(free_port(), port);
        (Broker::spawn(port, proxy.port), proxy)
    }
}

/// Users and their home regions, from a SPEC §2 users CSV in `dir`.
pub fn users_in(dir: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(dir.join("users.csv"))
        .expect("users CSV")
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].to_owned(), f[2].to_owned())
        })
        .collect()
}

/// The `vtpga run` flags that read Kafka from the earliest offsets to the topic's end.
pub const KAFKA_TO_EOF: [&str; 5] = ["--source", "kafka", "--start", "earliest", "--exit-at-eof"];

/// `vtpga run` from Kafka (from the earliest offsets) into PostgreSQL and Redis with 2
/// workers and no dashboard, until the topic is read to its end.
pub fn pipeline_command(broker: &Broker, pg: &Postgres, redis: &Redis) -> Command {
    let mut c = Command::new(BIN);
    c.arg("run")
        .args(KAFKA_TO_EOF)
        .args([
            "--workers",
            "2",
            "--no-web",
            "--postgres",
            &pg.url,
            "--redis",
            &redis.url,
        ])
        .env("VTPGA_KAFKA_BROKERS", &broker.addr)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    c
}

/// Runs [`pipeline_command`] to the end of the topic; panics with its output unless it
/// exits 0 without a panic. Returns its stdout.
pub fn decide_topic(broker: &Broker, pg: &Postgres, redis: &Redis) -> String {
    let out = pipeline_command(broker, pg, redis)
        .output()
        .expect("pipeline runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("panicked"),
        "the pipeline stopped: {}\n{stdout}\n{stderr}",
        out.status
    );
    stdout
}

/// `vtpga seed`: the schema, and `users` generated users with the regions, written as
/// CSVs into `dir` too.
pub fn seed(pg: &Postgres, users: usize, dir: &Path) {
    vtpga(
        &[
            "seed",
            "--postgres",
            &pg.url,
            "--users",
            &users.to_string(),
            "--csv",
            path_str(dir),
        ],
        &[],
    );
}

/// The sum of the `status_counts` rows Redis holds: every decision the cache counted.
pub fn redis_status_total(redis: &Redis) -> i64 {
    let mut conn = redis.connection();
    let rows: Vec<String> = redis::cmd("HVALS")
        .arg("vtpga:analysis:status_counts")
        .query(&mut conn)
        .expect("HVALS");
    rows.iter()
        .map(|r| {
            serde_json::from_str::<serde_json::Value>(r).expect("row JSON")["count"]
                .as_i64()
                .expect("count")
        })
        .sum()
}

/// A private broker with `partitions`-partition topics, a private PostgreSQL seeded with
/// generated users (their CSVs in `ref_dir`, in a temporary directory), and a private
/// Redis.
pub struct Services {
    pub broker: Broker,
    pub pg: Postgres,
    pub redis: Redis,
    /// The seeded users: (id, home region).
    pub users: Vec<(String, String)>,
    pub ref_dir: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Services {
    pub fn start(partitions: i32, users: usize) -> Services {
        let dir = tempfile::tempdir().expect("temp dir");
        let ref_dir = dir.path().join("ref");
        let broker = Broker::start();
        let pg = Postgres::start();
        let redis = Redis::start();
        broker.create_topics(partitions);
        seed(&pg, users, &ref_dir);
        let users = users_in(&ref_dir);
        Services {
            broker,
            pg,
            redis,
            users,
            ref_dir,
            dir,
        }
    }
}

/// One HTTP/1.1 request on a fresh connection; returns (status, body).
pub fn http(port: u16, method: &str, path: &str, body: Option<&Value>) -> (u16, Vec<u8>) {
    try_http(port, method, path, body).unwrap_or_else(|e| panic!("{e}"))
}

/// [`http`], with what went wrong instead of a panic (for a test that waits for a server
/// to answer at all).
pub fn try_http(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Vec<u8>), String> {
    let fail = |what: &str, e: std::io::Error| format!("{method} {path}: {what}: {e}");
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| fail("connect", e))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| fail("timeout", e))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| fail("write request", e))?;
    // Read the head, then exactly Content-Length bytes (servers may keep the connection).
    let mut response = Vec::new();
    let mut buf = [0u8; 65536];
    let split = loop {
        if let Some(p) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = stream
            .read(&mut buf)
            .map_err(|e| fail("read response", e))?;
        if n == 0 {
            return Err(format!(
                "{method} {path}: connection closed before the headers"
            ));
        }
        response.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{method} {path}: no status code in {head:?}"))?;
    let lower = head.to_ascii_lowercase();
    let length = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let mut body = response[split + 4..].to_vec();
    match length {
        Some(length) => {
            while body.len() < length {
                let n = stream.read(&mut buf).map_err(|e| fail("read body", e))?;
                if n == 0 {
                    return Err(format!("{method} {path}: connection closed mid-body"));
                }
                body.extend_from_slice(&buf[..n]);
            }
            body.truncate(length);
        }
        None => {
            let _ = stream.read_to_end(&mut body);
            if lower.contains("transfer-encoding: chunked") {
                body = dechunk(&body);
            }
        }
    }
    Ok((status, body))
}

/// The body of a chunked transfer, joined.
pub fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&data[..line_end])
                .split(';')
                .next()
                .unwrap_or("0")
                .trim(),
            16,
        )
        .unwrap_or(0);
        if size == 0 {
            return out;
        }
        let start = line_end + 2;
        out.extend_from_slice(&data[start..start + size]);
        data = &data[start + size + 2..];
    }
}

/// A JSON answer of a request that must succeed (status below 300).
pub fn json_of(port: u16, method: &str, path: &str, body: Option<&Value>) -> Value {
    let (status, body) = http(port, method, path, body);
    let v: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{path}: {e}: {}", String::from_utf8_lossy(&body)));
    assert!(status < 300, "{method} {path}: {status} {v}");
    v
}

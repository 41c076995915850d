//! Hostile records through the real services (SPEC §3, §4 clock guard, §8 ids kept
//! exactly, §9, §10 "no message stops the pipeline"): a topic holding, between ordinary
//! messages, ids with U+0000 in each of the four id fields, a 60,000-character id, a
//! 5,000-character payer id, a record without a value and a record stamped a year ahead is
//! decided to its end by `vtpga run --source kafka --postgres --redis --exit-at-eof`:
//! exit status 0, one PostgreSQL row per record, the ids read back byte for byte (SQL,
//! Redis and the API), the future record `invalid`, and every other record equal to
//! `vtpga replay` of the trusted records.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::{json, Value};

use common::{
    by_position, decide_topic, free_port, parse_decisions, read_topic, replay, spawn_quiet,
    wait_port, Killed, Services, BIN,
};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// `ms` as a SPEC §3 event time (UTC, with milliseconds).
fn event_time(ms: i64) -> String {
    vtpga_dataflow::calendar::format_utc_ms(ms)
}

/// What a record carries besides its payload: (id, payer, stamped a year ahead).
type Meta = (Option<String>, Option<String>, bool);

/// What the test produced at one position, to check it afterwards.
struct Sent {
    payload: Option<Vec<u8>>,
    id: Option<String>,
    payer: Option<String>,
    future: bool,
}

/// A GET on the web server; returns (status, body).
fn http_get(port: u16, path: &str) -> (u16, Vec<u8>) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("response");
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("headers");
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let mut body = response[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size");
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..line_end]).unwrap().trim(), 16)
                .expect("hex size");
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[line_end + 2..line_end + 2 + size]);
        data = &data[line_end + 2 + size + 2..];
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn hostile_records_are_decided_and_recorded_exactly() {
    let services = Services::start(2, 300);
    let (broker, pg, redis) = (&services.broker, &services.pg, &services.redis);
    let (users, ref_dir, dir) = (&services.users, &services.ref_dir, &services.dir);
    let producer: BaseProducer = broker
        .config()
        .set("linger.ms", "5")
        .set("message.max.bytes", "2000000")
        .create()
        .expect("producer");
    let mut sent: BTreeMap<(i32, i64), Sent> = BTreeMap::new();
    let mut next_offset = [0i64; 2];
    let mut send = |partition: i32, ts: i64, payload: Option<Vec<u8>>, meta: Meta| {
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to("transacoes")
            .partition(partition)
            .timestamp(ts);
        if let Some(p) = &payload {
            record = record.payload(&p[..]);
        }
        producer.send(record).map_err(|(e, _)| e).expect("send");
        producer.flush(Duration::from_secs(30)).expect("flush");
        let offset = next_offset[partition as usize];
        next_offset[partition as usize] += 1;
        sent.insert(
            (partition, offset),
            Sent {
                payload,
                id: meta.0,
                payer: meta.1,
                future: meta.2,
            },
        );
    };
    let message = |id: &str, payer: &str, payee: &str, region: &str, ts: i64| -> Vec<u8> {
        json!({
            "id_transacao": id,
            "id_usuario_pagador": payer,
            "id_usuario_recebedor": payee,
            "id_regiao": region,
            "modalidade_pagamento": "pix",
            "data_horario": event_time(ts - 5),
            "valor_transacao": 12.34,
        })
        .to_string()
        .into_bytes()
    };
    // A message of (id, payer, payee, region) at `ts`, sent to `partition`.
    let send_message = |send: &mut dyn FnMut(i32, i64, Option<Vec<u8>>, Meta),
                        partition: i32,
                        ts: i64,
                        (id, payer, payee, region): (String, String, String, String),
                        future: bool| {
        send(
            partition,
            ts,
            Some(message(&id, &payer, &payee, &region, ts)),
            (Some(id), Some(payer), future),
        );
    };
    let ordinary = |i: usize| {
        let (payer, region) = &users[i % users.len()];
        let (payee, _) = &users[(i * 7 + 3) % users.len()];
        (
            format!("tx-{i:05}"),
            payer.clone(),
            payee.clone(),
            region.clone(),
        )
    };
    let mut i = 0;
    let mut ordinary_batch = |send: &mut dyn FnMut(i32, i64, Option<Vec<u8>>, Meta), n: usize| {
        for _ in 0..n {
            send_message(send, (i % 2) as i32, now_ms(), ordinary(i), false);
            i += 1;
        }
    };
    ordinary_batch(&mut send, 40);
    // U+0000 in each of the four ids (a known payer, payee and region otherwise).
    let (p0, r0) = users[1].clone();
    let (q0, _) = users[2].clone();
    let hostile: Vec<(String, String, String, String)> = vec![
        ("nul\u{0}id".into(), p0.clone(), q0.clone(), r0.clone()),
        (
            "nul-payer".into(),
            format!("{p0}\u{0}"),
            q0.clone(),
            r0.clone(),
        ),
        (
            "nul-payee".into(),
            p0.clone(),
            format!("\u{0}{q0}"),
            r0.clone(),
        ),
        (
            "nul-region".into(),
            p0.clone(),
            q0.clone(),
            format!("r\u{0}{r0}"),
        ),
        ("x".repeat(60_000), p0.clone(), q0.clone(), r0.clone()),
        (
            "long-payer".into(),
            "p".repeat(5_000),
            q0.clone(),
            r0.clone(),
        ),
        (
            "odd \u{feff}\u{202e}\u{1F600}\\\"'".into(),
            p0.clone(),
            q0.clone(),
            r0.clone(),
        ),
    ];
    for (n, tx) in hostile.into_iter().enumerate() {
        send_message(&mut send, (n % 2) as i32, now_ms(), tx, false);
        ordinary_batch(&mut send, 3);
    }
    // A record without a value, and one stamped a year ahead.
    send(0, now_ms(), None, (None, None, false));
    ordinary_batch(&mut send, 3);
    let year = 365 * 24 * 3_600_000i64;
    let future = ("future-1".to_owned(), p0.clone(), q0.clone(), r0.clone());
    send_message(&mut send, 1, now_ms() + year, future, true);
    ordinary_batch(&mut send, 40);
    drop(producer);
    let records = sent.len();

    // The pipeline decides the topic to its end and exits 0.
    decide_topic(broker, pg, redis);

    // One PostgreSQL row per record, nothing quarantined, ids byte for byte.
    let mut client = pg.client();
    let stored: i64 = client
        .query_one("SELECT count(*) FROM transactions", &[])
        .unwrap()
        .get(0);
    let quarantined: i64 = client
        .query_one("SELECT count(*) FROM quarantine", &[])
        .unwrap()
        .get(0);
    assert_eq!((stored + quarantined) as usize, records);
    assert_eq!(quarantined, 0, "nothing here needs the quarantine");
    for ((partition, offset), s) in &sent {
        let row = client
            .query_one(
                "SELECT status, tx_id, payer_id, error FROM transactions
                 WHERE partition = $1 AND \"offset\" = $2",
                &[partition, offset],
            )
            .unwrap_or_else(|e| panic!("position {partition}:{offset}: {e}"));
        let status: String = row.get(0);
        let tx_id: Option<Vec<u8>> = row.get(1);
        let payer: Option<Vec<u8>> = row.get(2);
        if s.future {
            assert_eq!(status, "invalid");
            assert_eq!(
                row.get::<_, Option<String>>(3).as_deref(),
                Some("record timestamp ahead of the clock")
            );
            assert_eq!(tx_id, None, "a guarded record is not parsed");
        } else if s.payload.is_none() {
            assert_eq!(status, "invalid");
        } else {
            assert_eq!(tx_id.as_deref(), s.id.as_ref().map(|x| x.as_bytes()));
            assert_eq!(payer.as_deref(), s.payer.as_ref().map(|x| x.as_bytes()));
        }
    }

    // Every other record equals the replay of the trusted records as consumed.
    let consumed = read_topic(broker, "transacoes");
    assert_eq!(consumed.len(), records);
    let mut capture = String::new();
    for r in &consumed {
        let s = &sent[&(r.partition, r.offset)];
        if s.future {
            continue;
        }
        let payload = match &s.payload {
            Some(_) => Value::String(String::from_utf8(r.payload.clone()).expect("text")),
            None => Value::Null,
        };
        capture.push_str(
            &json!({"t": r.timestamp, "partition": r.partition, "offset": r.offset, "payload": payload})
                .to_string(),
        );
        capture.push('\n');
    }
    let capture_path = dir.path().join("trusted.jsonl");
    std::fs::write(&capture_path, capture).expect("capture");
    let replayed = replay(
        &capture_path,
        ref_dir,
        &dir.path().join("replay.jsonl"),
        &dir.path().join("replay-analyses.json"),
        &[],
    );
    let expected = by_position(parse_decisions(&replayed));
    assert_eq!(expected.len(), records - 1);
    let mut actual = by_position(
        vtpga_sinks::postgres::decision_records(&mut client).expect("stored decisions"),
    );
    actual.retain(|k, _| !sent[&(k.0 as i32, k.1)].future);
    assert_eq!(actual.len(), expected.len());
    for (pos, want) in &expected {
        assert_eq!(&actual[pos], want, "decision at {pos:?}");
    }
    let statuses: Vec<&str> = actual
        .values()
        .filter_map(|v| v["status"].as_str())
        .collect();
    assert!(statuses.contains(&"approved"), "{statuses:?}");

    // Redis keeps the ids exactly too.
    let mut conn = redis.connection();
    for ((partition, offset), s) in &sent {
        let Some(id) = &s.id else { continue };
        if s.future {
            continue;
        }
        // The record is JSON: U+0000 and every other character come back exactly.
        let got: Option<String> = redis::cmd("HGET")
            .arg("vtpga:tx")
            .arg(format!("{partition}:{offset}"))
            .query(&mut conn)
            .expect("HGET");
        let got: Option<String> = got.map(|json| {
            let record: serde_json::Value = serde_json::from_str(&json).expect("JSON record");
            record["id"].as_str().expect("id").to_owned()
        });
        assert_eq!(
            got.as_deref().map(str::as_bytes),
            Some(id.as_bytes()),
            "Redis id at {partition}:{offset}"
        );
    }

    // The API answers with the ids as parsed (standalone: from PostgreSQL).
    let port = free_port();
    let _web = Killed(spawn_quiet(
        Command::new(BIN).args([
            "web",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--redis",
            &redis.url,
            "--postgres",
            &pg.url,
        ]),
        "web starts",
    ));
    wait_port(port, "web");
    for s in sent.values() {
        let Some(id) = &s.id else { continue };
        if s.future {
            continue;
        }
        let (status, body) = http_get(port, &format!("/api/transactions/{}", percent_encode(id)));
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let v: Value = serde_json::from_slice(&body).expect("JSON");
        let text = v.to_string();
        let found = v
            .as_array()
            .or_else(|| v["decisions"].as_array())
            .unwrap_or_else(|| panic!("an array of decisions: {text:.200}"));
        assert!(
            found.iter().any(|d| d["id"].as_str() == Some(id.as_str())),
            "id {:?} not answered as parsed: {text:.300}",
            &id[..id.len().min(40)]
        );
    }
}

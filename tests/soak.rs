//! Hostile-input soak through the real services (SPEC §3, §10 "no message stops the
//! pipeline", §8 "every decision is recorded"): 200,000 random and mutated payloads —
//! valid messages with one field mutated, odd Unicode and U+0000 in ids, huge numbers,
//! deep nesting, invalid UTF-8, truncations, empty and missing values — produced to a
//! private broker and decided by `vtpga run --source kafka --postgres --redis
//! --exit-at-eof`: no panic, no stop, exactly one recorded row per record (in
//! `transactions` or `quarantine`), every invalid one in `invalid_messages`, and Redis's
//! status counts adding up to the records.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::{json, Value};

use common::{decide_topic, redis_status_total, Services};

const RECORDS: usize = 200_000;

/// A small deterministic generator (xorshift64*): the soak is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

const FIELDS: [&str; 7] = [
    "id_transacao",
    "id_usuario_pagador",
    "id_usuario_recebedor",
    "id_regiao",
    "modalidade_pagamento",
    "data_horario",
    "valor_transacao",
];

/// JSON values a hostile producer might put in any field.
fn hostile_value(rng: &mut Rng) -> Value {
    let deep = (0..40).fold(json!(1), |v, _| json!([v]));
    let choices: Vec<Value> = vec![
        json!(null),
        json!(""),
        json!("\u{0}"),
        json!("a\u{0}b"),
        json!("x".repeat(3_000)),
        json!("\u{202e}\u{feff}\u{1F600}\u{10FFFF}"),
        json!("D\u{e9}bito"),
        json!("Cre\u{301}dito"),
        json!("PIX"),
        json!(1e300),
        json!(-1),
        json!(0),
        json!(u64::MAX),
        json!("1e400"),
        json!("123456789012345678901234567890.005"),
        json!("0.005"),
        json!("-0.01"),
        json!("9999-12-31T23:59:59.999+23:59"),
        json!("0001-01-01T00:00:00Z"),
        json!("2026-02-29T12:00:00Z"),
        json!("2026-11-26 14:03:12.345678901"),
        json!(true),
        json!([1, 2]),
        json!({"a": {"b": {}}}),
        deep,
    ];
    rng.pick(&choices).clone()
}

fn payload(rng: &mut Rng, i: usize, users: &[(String, String)], now_ms: i64) -> Option<Vec<u8>> {
    let (payer, region) = rng.pick(users).clone();
    let (payee, _) = rng.pick(users).clone();
    let mut msg = serde_json::Map::new();
    let values = [
        json!(format!("soak-{i}")),
        json!(payer),
        json!(payee),
        json!(region),
        json!(*rng.pick(&["pix", "debito", "credito", "boleto"])),
        json!(vtpga_dataflow::calendar::format_utc_ms(now_ms)),
        json!((rng.below(500_000) as f64) / 100.0 + 0.01),
    ];
    for (f, v) in FIELDS.iter().zip(values) {
        msg.insert((*f).to_owned(), v);
    }
    let kind = rng.below(12);
    match kind {
        0..=2 => {}
        3 | 4 => {
            let f = *rng.pick(&FIELDS);
            msg.insert(f.to_owned(), hostile_value(rng));
        }
        5 => {
            let f = *rng.pick(&FIELDS);
            msg.remove(f);
        }
        6 => {
            msg.insert("extra".to_owned(), hostile_value(rng));
        }
        _ => {}
    }
    let mut bytes = Value::Object(msg).to_string().into_bytes();
    match kind {
        7 => {
            // Raw byte damage: invalid UTF-8, NUL, truncation, a flipped byte.
            let at = rng.below(bytes.len());
            match rng.below(4) {
                0 => bytes.insert(at, 0xff),
                1 => bytes.insert(at, 0),
                2 => bytes.truncate(at),
                _ => bytes[at] ^= 1 << rng.below(8),
            }
        }
        8 => {
            let mut with = b"\xef\xbb\xbf".to_vec();
            with.extend_from_slice(&bytes);
            bytes = with;
        }
        9 => {
            // A field given twice.
            let text = String::from_utf8(bytes).expect("JSON text");
            bytes = text
                .replacen('{', "{\"valor_transacao\":1.00,", 1)
                .into_bytes();
        }
        10 => {
            let choices: [&[u8]; 8] = [
                b"",
                b"null",
                b"[]",
                b"\"x\"",
                b"{",
                b"{\"a\":\"\\ud800\"}",
                b"\xc3\x28",
                b" {} ",
            ];
            bytes = rng.pick(&choices).to_vec();
        }
        11 if i.is_multiple_of(97) => return None,
        11 if i.is_multiple_of(101) => {
            // Larger than the SPEC's 65,536 bytes.
            bytes = format!("{{\"pad\":\"{}\"}}", "y".repeat(70_000)).into_bytes();
        }
        _ => {}
    }
    Some(bytes)
}

#[test]
fn two_hundred_thousand_hostile_payloads_are_all_decided_and_recorded() {
    let services = Services::start(4, 500);
    let (broker, pg, redis) = (&services.broker, &services.pg, &services.redis);
    let users = &services.users;
    let producer: BaseProducer = broker
        .config()
        .set("linger.ms", "20")
        .set("message.max.bytes", "2000000")
        .set("queue.buffering.max.messages", "200000")
        .create()
        .expect("producer");
    let mut rng = Rng(0x005e_ed0f_5041_u64);
    let start_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    for i in 0..RECORDS {
        // Event times follow the record timestamps, so most valid messages are on time.
        let ts = start_ms + (i / 200) as i64;
        let value = payload(&mut rng, i, users, ts);
        loop {
            let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to("transacoes")
                .partition((i % 4) as i32)
                .timestamp(ts);
            if let Some(v) = &value {
                record = record.payload(&v[..]);
            }
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => panic!("producing: {e}"),
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(120)).expect("flush");
    drop(producer);

    decide_topic(broker, pg, redis);

    let mut client = pg.client();
    let mut count = |sql: &str| -> i64 { client.query_one(sql, &[]).expect(sql).get(0) };
    let stored = count("SELECT count(*) FROM transactions");
    let quarantined = count("SELECT count(*) FROM quarantine");
    let positions = count(
        "SELECT count(*) FROM (SELECT partition, \"offset\" FROM transactions
         UNION SELECT partition, \"offset\" FROM quarantine) p",
    );
    assert_eq!(stored + quarantined, RECORDS as i64);
    assert_eq!(positions, RECORDS as i64, "one row per source position");
    let invalid = count("SELECT count(*) FROM transactions WHERE status = 'invalid'");
    let invalid_rows = count("SELECT count(*) FROM invalid_messages");
    assert_eq!(invalid, invalid_rows);
    assert!(
        invalid > (RECORDS / 10) as i64 && invalid < RECORDS as i64,
        "the mix holds both invalid and valid messages: {invalid} invalid"
    );
    let approved = count("SELECT count(*) FROM transactions WHERE status = 'approved'");
    assert!(approved > 1_000, "{approved} approved");

    // Redis's status counts cover every record.
    assert_eq!(redis_status_total(redis), RECORDS as i64);
}

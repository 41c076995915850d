//! Hand-built batches for the dashboard's tests: decisions like the sink's, and analysis
//! changes as `count_total` emits them (the old row −1, the new row +1), with the expected
//! rows accumulated independently of the code under test.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

use vtpga_dataflow::analyses::{AnalysisKey, Tally};
use vtpga_dataflow::graph::Decision;
use vtpga_dataflow::rules::Scores;
use vtpga_dataflow::{Mode, SourcePos, Status, Tx};
use vtpga_sinks::Batch;

/// 2026-11-26T17:03:00Z, a minute index.
pub const MINUTE0: i64 = 29_928_543;

pub fn decision(
    offset: i64,
    t: u64,
    status: Status,
    id: &str,
    amount_cents: i64,
    ingest_us: u64,
) -> Decision {
    let parsed = status != Status::Invalid;
    Decision {
        pos: SourcePos {
            partition: (offset % 3) as i32,
            offset,
        },
        t,
        ingest_us,
        status,
        tx: parsed.then(|| Tx {
            id: id.into(),
            payer: format!("u{:03}", offset % 7).into(),
            payee: format!("u{:03}", (offset + 1) % 7).into(),
            region: "r001".into(),
            mode: [Mode::Pix, Mode::Debito, Mode::Credito, Mode::Boleto][(offset % 4) as usize],
            amount_cents,
            event_ms: MINUTE0 * 60_000 + offset * 100,
        }),
        scores: status.is_assessed().then_some(Scores {
            value_risk: 0.25,
            hour_risk: 0.5,
            distance_risk: 0.125,
            risk: 0.28125,
        }),
        reason: (status == Status::Invalid).then(|| "not JSON".to_owned()),
        raw: None,
        home_band: None,
        uf: None,
        rules_version: "default".into(),
    }
}

/// Accumulates the expected analysis rows and turns row deltas into `count_total` changes.
#[derive(Default)]
pub struct Feeder {
    pub rows: BTreeMap<AnalysisKey, Tally>,
}

/// A tally; the amounts convert into whatever width `Tally` sums in (SPEC §7: exact sums).
pub fn tally(count: i64, approved: i64, rejected: i64, a_amt: i64, r_amt: i64) -> Tally {
    Tally {
        count,
        approved,
        rejected,
        approved_amount_cents: a_amt.into(),
        rejected_amount_cents: r_amt.into(),
    }
}

fn plus(a: Tally, b: Tally) -> Tally {
    Tally {
        count: a.count + b.count,
        approved: a.approved + b.approved,
        rejected: a.rejected + b.rejected,
        approved_amount_cents: a.approved_amount_cents + b.approved_amount_cents,
        rejected_amount_cents: a.rejected_amount_cents + b.rejected_amount_cents,
    }
}

impl Feeder {
    /// A batch of `decisions` at `time` whose analyses add `deltas` (and one status count
    /// per decision). The changes come retractions last, to check order does not matter.
    pub fn batch(
        &mut self,
        time: u64,
        decisions: Vec<Decision>,
        mut deltas: Vec<(AnalysisKey, Tally)>,
    ) -> Batch {
        for d in &decisions {
            deltas.push((AnalysisKey::Status(d.status), tally(1, 0, 0, 0, 0)));
        }
        let mut summed: BTreeMap<AnalysisKey, Tally> = BTreeMap::new();
        for (k, t) in deltas {
            let e = summed.entry(k).or_default();
            *e = plus(*e, t);
        }
        let mut adds = Vec::new();
        let mut retracts = Vec::new();
        for (k, delta) in summed {
            let old = self.rows.get(&k).copied();
            let new = plus(old.unwrap_or_default(), delta);
            if let Some(old) = old {
                retracts.push(((k.clone(), old), -1isize));
            }
            if new == Tally::default() {
                self.rows.remove(&k);
            } else {
                adds.push(((k.clone(), new), 1isize));
                self.rows.insert(k, new);
            }
        }
        adds.extend(retracts);
        Batch {
            time,
            decisions,
            accounts: Vec::new(),
            analyses: adds,
            controls: Vec::new(),
            shadows: Vec::new(),
        }
    }
}

/// Deltas that give each of the ten analyses rows.
pub fn all_kinds(minute: i64, approved: i64, rejected: i64) -> Vec<(AnalysisKey, Tally)> {
    let t = tally(
        approved + rejected,
        approved,
        rejected,
        approved * 1000,
        rejected * 500,
    );
    vec![
        (AnalysisKey::ValueBand(3), t),
        (AnalysisKey::Hour(14), t),
        (AnalysisKey::ValueRiskBucket(0), t),
        (AnalysisKey::HourRisk(0), t),
        (AnalysisKey::State("SP".into()), t),
        (
            AnalysisKey::Funds(Status::InsufficientBalance),
            tally(rejected, 0, rejected, 0, rejected * 500),
        ),
        (AnalysisKey::Mode(Mode::Pix), t),
        (AnalysisKey::Minute(minute), t),
        (AnalysisKey::DistanceMinute(minute, 1), t),
    ]
}

/// A Server-Sent Events client over a plain socket (HTTP/1.0, so no chunking).
pub struct SseClient {
    reader: BufReader<TcpStream>,
    pub head: String,
}

#[derive(Debug)]
pub struct SseEvent {
    pub kind: String,
    pub data: Value,
}

impl SseClient {
    pub fn connect(addr: SocketAddr, path: &str) -> SseClient {
        Self::connect_with(addr, path, "")
    }

    /// [`SseClient::connect`] with more request header lines (each ending in `\r\n`).
    pub fn connect_with(addr: SocketAddr, path: &str, headers: &str) -> SseClient {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        write!(
            stream,
            "GET {path} HTTP/1.0\r\nHost: localhost\r\nAccept: text/event-stream\r\n{headers}\r\n"
        )
        .expect("request");
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).expect("header line") == 0 {
                break;
            }
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        SseClient { reader, head }
    }

    /// The next event (comments and keep-alives skipped), or `None` at the deadline.
    pub fn next(&mut self, deadline: Instant) -> Option<SseEvent> {
        let mut kind = String::new();
        let mut data = String::new();
        loop {
            if Instant::now() >= deadline {
                return None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            self.reader
                .get_ref()
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .ok()?;
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(_) => return None,
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if !data.is_empty() {
                    let data = serde_json::from_str(&data).expect("event data is JSON");
                    return Some(SseEvent { kind, data });
                }
                kind.clear();
                continue;
            }
            if let Some(v) = line.strip_prefix("event:") {
                kind = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim_start());
            }
        }
    }

    /// The next event of `kind`, skipping others.
    pub fn next_of(&mut self, kind: &str, deadline: Instant) -> Option<SseEvent> {
        loop {
            let e = self.next(deadline)?;
            if e.kind == kind {
                return Some(e);
            }
        }
    }
}

/// The `rule_sets` table the API reads (SPEC §11), created when the sinks' migrations did
/// not (yet) create it: exactly the columns `/api/rules` reads. The initial set is a row
/// without a position; `ON CONFLICT` in case a sink already wrote it.
pub fn create_rule_sets(client: &mut postgres::Client, initial: &vtpga_dataflow::RuleSet) {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS rule_sets (
                version          text PRIMARY KEY,
                risk_threshold   double precision,
                max_delay_ms     bigint,
                dedup_window_ms  bigint,
                effective_ms     bigint,
                partition        integer NULL,
                \"offset\"       bigint NULL
            )",
        )
        .expect("rule_sets");
    insert_rule_set(client, initial, 0, None);
}

/// One `rule_sets` row.
pub fn insert_rule_set(
    client: &mut postgres::Client,
    rules: &vtpga_dataflow::RuleSet,
    effective_ms: i64,
    pos: Option<(i32, i64)>,
) {
    client
        .execute(
            "INSERT INTO rule_sets
                 (version, risk_threshold, max_delay_ms, dedup_window_ms, effective_ms, partition, \"offset\")
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (version) DO NOTHING",
            &[
                &rules.version,
                &rules.risk_threshold,
                &(rules.max_delay_ms as i64),
                &(rules.dedup_window_ms as i64),
                &effective_ms,
                &pos.map(|p| p.0),
                &pos.map(|p| p.1),
            ],
        )
        .expect("insert rule set");
}

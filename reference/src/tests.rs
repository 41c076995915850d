//! Unit tests of the reference implementation: exact expected values from the SPEC.

use super::*;
use serde_json::{json, Value};

/// 2026-01-15T15:00:00Z = 12:00 local (UTC−03:00), hour_risk 0.
const T0: u64 = 1_768_489_200_000;
const HOUR: u64 = 3_600_000;

fn regions() -> Vec<RefRegion> {
    let r = |id: &str, uf: &str, lat: f64, lon: f64| RefRegion {
        id: id.into(),
        uf: uf.into(),
        lat,
        lon,
    };
    vec![
        r("r_sp", "SP", -23.55, -46.63),
        r("r_sp2", "SP", -23.55, -46.0), // 64.2 km from r_sp
        r("r_rj", "RJ", -22.91, -43.17), // 360.6 km from r_sp
        r("r_am", "AM", -3.10, -60.02),  // 2691.3 km from r_sp
    ]
}

fn users(list: &[(&str, &str, i64, i64)]) -> Vec<RefUser> {
    list.iter()
        .map(|&(id, region, balance, limit)| RefUser {
            id: id.into(),
            region_id: region.into(),
            balance_cents: balance,
            credit_limit_cents: limit,
        })
        .collect()
}

/// Three users at home in r_sp with `balance` each, no credit.
fn abc(balance: i64) -> Vec<RefUser> {
    users(&[
        ("a", "r_sp", balance, 0),
        ("b", "r_sp", balance, 0),
        ("c", "r_sp", balance, 0),
    ])
}

#[allow(clippy::too_many_arguments)]
fn txe(id: &str, payer: &str, payee: &str, region: &str, mode: &str, amount: i64, e: i64) -> RefTx {
    RefTx {
        id: id.into(),
        payer: payer.into(),
        payee: payee.into(),
        region: region.into(),
        mode: mode.into(),
        amount_cents: amount,
        event_ms: e,
    }
}

/// A pix in r_sp.
fn pix(id: &str, payer: &str, payee: &str, amount: i64, e: u64) -> RefTx {
    txe(id, payer, payee, "r_sp", "pix", amount, e as i64)
}

fn m(partition: i32, offset: i64, record_ts: u64, tx: RefTx) -> RefMsg {
    RefMsg {
        record_ts,
        partition,
        offset,
        tx: Some(tx),
    }
}

fn unparsed(partition: i32, offset: i64, record_ts: u64) -> RefMsg {
    RefMsg {
        record_ts,
        partition,
        offset,
        tx: None,
    }
}

fn go(users: &[RefUser], msgs: &[RefMsg]) -> RefOutput {
    run(&regions(), users, msgs, &RefParams::default())
}

fn st(out: &RefOutput, partition: i32, offset: i64) -> &'static str {
    out.decisions[&(partition, offset)].status
}

fn statuses(out: &RefOutput) -> Vec<&'static str> {
    out.decisions.values().map(|d| d.status).collect()
}

fn bal(out: &RefOutput, user: &str) -> (i64, i64) {
    out.balances[user]
}

#[test]
fn default_params() {
    let p = RefParams::default();
    assert_eq!(p.max_delay_ms, 1000);
    assert_eq!(p.dedup_window_ms, 300_000);
    assert_eq!(p.risk_threshold, 0.5);
}

#[test]
fn credit_visible_only_at_strictly_greater_t() {
    // A→B at t, B→C at the same t cannot spend it, B→C at t+1 can.
    let us = users(&[
        ("a", "r_sp", 1000, 0),
        ("b", "r_sp", 0, 0),
        ("c", "r_sp", 0, 0),
    ]);
    let out = go(
        &us,
        &[
            m(0, 0, T0, pix("1", "a", "b", 1000, T0)),
            m(0, 1, T0, pix("2", "b", "c", 1000, T0)),
            m(0, 2, T0 + 1, pix("3", "b", "c", 1000, T0 + 1)),
        ],
    );
    assert_eq!(statuses(&out), [APPROVED, INSUFFICIENT_BALANCE, APPROVED]);
    assert_eq!(bal(&out, "a"), (0, 0));
    assert_eq!(bal(&out, "b"), (0, 0));
    assert_eq!(bal(&out, "c"), (1000, 0)); // pending credit applied at end of input
}

#[test]
fn credit_not_visible_at_same_t_even_when_payee_id_sorts_later() {
    // B's message sorts before A's at the same t ("0" < "1"): still insufficient;
    // and a same-t chain A→B→C with the ids in chain order fails as well.
    let us = users(&[
        ("a", "r_sp", 500, 0),
        ("b", "r_sp", 0, 0),
        ("c", "r_sp", 0, 0),
    ]);
    let out = go(
        &us,
        &[
            m(0, 0, T0, pix("1", "a", "b", 500, T0)),
            m(1, 0, T0, pix("0", "b", "c", 500, T0)),
            m(1, 1, T0, pix("2", "b", "c", 500, T0)),
        ],
    );
    assert_eq!(st(&out, 0, 0), APPROVED);
    assert_eq!(st(&out, 1, 0), INSUFFICIENT_BALANCE);
    assert_eq!(st(&out, 1, 1), INSUFFICIENT_BALANCE);
    assert_eq!(bal(&out, "b"), (500, 0));
}

#[test]
fn same_t_debits_of_one_payer_apply_in_ledger_order_by_id() {
    // Input order is x2 then x1 (different partitions), ledger order is x1 then x2.
    let us = users(&[
        ("a", "r_sp", 100, 0),
        ("b", "r_sp", 0, 0),
        ("c", "r_sp", 0, 0),
    ]);
    let out = go(
        &us,
        &[
            m(1, 0, T0, pix("x2", "a", "b", 60, T0)),
            m(0, 0, T0, pix("x1", "a", "c", 60, T0)),
        ],
    );
    assert_eq!(st(&out, 0, 0), APPROVED);
    assert_eq!(st(&out, 1, 0), INSUFFICIENT_BALANCE);
    assert_eq!(bal(&out, "a"), (40, 0));
    assert_eq!(bal(&out, "b"), (0, 0));
    assert_eq!(bal(&out, "c"), (60, 0));
}

#[test]
fn ids_ordered_by_utf8_bytes() {
    // "B" (0x42) < "a" (0x61) < "é" (0xC3 0xA9): the first one gets the money.
    let us = users(&[("p", "r_sp", 100, 0), ("q", "r_sp", 0, 0)]);
    let out = go(
        &us,
        &[
            m(0, 0, T0, pix("é", "p", "q", 100, T0)),
            m(1, 0, T0, pix("a", "p", "q", 100, T0)),
            m(2, 0, T0, pix("B", "p", "q", 100, T0)),
        ],
    );
    assert_eq!(st(&out, 2, 0), APPROVED);
    assert_eq!(st(&out, 1, 0), INSUFFICIENT_BALANCE);
    assert_eq!(st(&out, 0, 0), INSUFFICIENT_BALANCE);
}

#[test]
fn same_t_same_id_ordered_by_source_position() {
    let out = go(
        &abc(1000),
        &[
            m(1, 0, T0, pix("d", "a", "b", 10, T0)),
            m(0, 5, T0, pix("d", "a", "b", 10, T0)),
            m(0, 7, T0, pix("d", "a", "b", 10, T0)),
        ],
    );
    assert_eq!(st(&out, 0, 5), APPROVED);
    assert_eq!(st(&out, 0, 7), DUPLICATE);
    assert_eq!(st(&out, 1, 0), DUPLICATE);
}

#[test]
fn duplicate_window_boundary() {
    let exactly = go(
        &abc(1000),
        &[
            m(0, 0, T0, pix("d", "a", "b", 10, T0)),
            m(0, 1, T0 + 300_000, pix("d", "a", "b", 10, T0 + 300_000)),
        ],
    );
    assert_eq!(statuses(&exactly), [APPROVED, DUPLICATE]);
    assert_eq!(bal(&exactly, "a"), (990, 0));

    let beyond = go(
        &abc(1000),
        &[
            m(0, 0, T0, pix("d", "a", "b", 10, T0)),
            m(0, 1, T0 + 300_001, pix("d", "a", "b", 10, T0 + 300_001)),
        ],
    );
    assert_eq!(statuses(&beyond), [APPROVED, APPROVED]);
    assert_eq!(bal(&beyond, "a"), (980, 0));
}

#[test]
fn custom_dedup_window_and_max_delay() {
    let p = RefParams {
        max_delay_ms: 10,
        dedup_window_ms: 50,
        risk_threshold: 0.5,
    };
    let out = run(
        &regions(),
        &abc(1000),
        &[
            m(0, 0, T0, pix("d", "a", "b", 10, T0)),
            m(0, 1, T0 + 50, pix("d", "a", "b", 10, T0 + 50)),
            m(0, 2, T0 + 101, pix("d", "a", "b", 10, T0 + 101)),
            m(0, 3, T0 + 200, pix("e", "a", "b", 10, T0 + 189)),
            m(0, 4, T0 + 300, pix("f", "a", "b", 10, T0 + 311)),
        ],
        &p,
    );
    assert_eq!(
        statuses(&out),
        [APPROVED, DUPLICATE, APPROVED, LATE, INVALID]
    );
}

#[test]
fn duplicate_refreshes_last_seen() {
    let out = go(
        &abc(1000),
        &[
            m(0, 0, T0, pix("d", "a", "b", 10, T0)),
            m(0, 1, T0 + 200_000, pix("d", "a", "b", 10, T0 + 200_000)),
            m(0, 2, T0 + 400_000, pix("d", "a", "b", 10, T0 + 400_000)),
            m(0, 3, T0 + 700_000, pix("d", "a", "b", 10, T0 + 700_000)),
            m(0, 4, T0 + 1_000_001, pix("d", "a", "b", 10, T0 + 1_000_001)),
        ],
    );
    // 400_000 − 0 > window but 400_000 − 200_000 <= window: refreshed by a duplicate.
    assert_eq!(
        statuses(&out),
        [APPROVED, DUPLICATE, DUPLICATE, DUPLICATE, APPROVED]
    );
}

#[test]
fn unknown_reference_updates_last_seen() {
    let out = go(
        &abc(1000),
        &[
            m(0, 0, T0, pix("u", "a", "a", 10, T0)),
            m(0, 1, T0 + 1000, pix("u", "a", "b", 10, T0 + 1000)),
        ],
    );
    assert_eq!(statuses(&out), [UNKNOWN_REFERENCE, DUPLICATE]);
}

#[test]
fn late_and_invalid_do_not_update_last_seen_and_late_precedes_duplicate() {
    let out = go(
        &abc(1000),
        &[
            m(0, 0, T0, pix("d", "a", "b", 10, T0)),
            // same id within the window but late: rule 2 before rule 3
            m(
                0,
                1,
                T0 + 200_000,
                pix("d", "a", "b", 10, T0 + 200_000 - 1001),
            ),
            // 400_000 after the last message that passed rules 1–2: not a duplicate
            m(0, 2, T0 + 400_000, pix("d", "a", "b", 10, T0 + 400_000)),
            m(1, 0, T0, pix("e", "a", "b", 10, T0)),
            // future event time: invalid, rule 1 before rule 3
            m(
                1,
                1,
                T0 + 200_000,
                pix("e", "a", "b", 10, T0 + 200_000 + 1001),
            ),
            m(1, 2, T0 + 400_000, pix("e", "a", "b", 10, T0 + 400_000)),
        ],
    );
    assert_eq!(st(&out, 0, 0), APPROVED);
    assert_eq!(st(&out, 0, 1), LATE);
    assert_eq!(st(&out, 0, 2), APPROVED);
    assert_eq!(st(&out, 1, 0), APPROVED);
    assert_eq!(st(&out, 1, 1), INVALID);
    assert_eq!(st(&out, 1, 2), APPROVED);
    assert_eq!(bal(&out, "a"), (960, 0));
}

#[test]
fn future_event_time_invalid_and_late_boundaries() {
    let out = go(
        &abc(1000),
        &[
            m(0, 0, T0, pix("a1", "a", "b", 10, T0 + 1001)),
            m(0, 1, T0, pix("b1", "a", "b", 10, T0 + 1000)),
            m(0, 2, T0 + 5000, pix("c1", "b", "a", 10, T0 + 4000)),
            m(0, 3, T0 + 5000, pix("d1", "c", "a", 10, T0 + 3999)),
        ],
    );
    assert_eq!(statuses(&out), [INVALID, APPROVED, APPROVED, LATE]);
    assert_eq!(out.decisions[&(0, 0)].scores, None);
    assert!(out.decisions[&(0, 1)].scores.is_some());
    assert_eq!(out.decisions[&(0, 3)].scores, None);
}

#[test]
fn very_old_event_time_is_late_without_overflow() {
    // E = 0001-01-01T00:00:00Z, t near u64::MAX.
    let out = go(
        &abc(1000),
        &[
            m(
                0,
                0,
                T0,
                txe("old", "a", "b", "r_sp", "pix", 10, MIN_EVENT_MS),
            ),
            m(1, 0, u64::MAX, pix("big", "a", "b", 10, T0)),
        ],
    );
    assert_eq!(st(&out, 0, 0), LATE);
    assert_eq!(st(&out, 1, 0), LATE);
    assert_eq!(out.decisions[&(1, 0)].t, u64::MAX);
}

#[test]
fn stale_only_by_payer_last_approved_event_time() {
    let out = go(
        &abc(1000),
        &[
            m(0, 0, T0, pix("s1", "a", "b", 100, T0)),
            m(0, 1, T0 + 500, pix("s2", "a", "b", 100, T0 - 1)),
            m(0, 2, T0 + 600, pix("s3", "a", "b", 100, T0)), // equal E: not stale
            // b was only a payee: its own older event is fine
            m(0, 3, T0 + 700, pix("s4", "b", "a", 100, T0 - 200)),
            m(0, 4, T0 + 750, pix("s5", "b", "a", 100, T0 - 201)),
        ],
    );
    assert_eq!(statuses(&out), [APPROVED, STALE, APPROVED, APPROVED, STALE]);
    assert_eq!(out.last_approved.get("a"), Some(&(T0 as i64)));
    assert_eq!(out.last_approved.get("b"), Some(&(T0 as i64 - 200)));
    assert_eq!(out.last_approved.get("c"), None);
    assert_eq!(bal(&out, "a"), (900, 0));
    assert_eq!(bal(&out, "b"), (1100, 0));
}

#[test]
fn unknown_references() {
    let mut us = abc(1000);
    us.push(RefUser {
        id: "homeless".into(),
        region_id: "nowhere".into(),
        balance_cents: 1000,
        credit_limit_cents: 0,
    });
    let out = go(
        &us,
        &[
            m(0, 0, T0, pix("1", "a", "a", 10, T0)),  // payer = payee
            m(0, 1, T0, pix("2", "zz", "b", 10, T0)), // unknown payer
            m(0, 2, T0, pix("3", "a", "zz", 10, T0)), // unknown payee
            m(0, 3, T0, txe("4", "a", "b", "r_xx", "pix", 10, T0 as i64)), // unknown region
            m(0, 4, T0, pix("5", "A", "b", 10, T0)),  // case-sensitive ids
            m(0, 5, T0, pix("6", "homeless", "b", 10, T0)), // payer home region unknown
            m(0, 6, T0, pix("7", "a", "homeless", 10, T0)), // payee home region unknown
            m(0, 7, T0, pix("8", "a", "b", 10, T0)),
        ],
    );
    assert_eq!(
        statuses(&out),
        [
            UNKNOWN_REFERENCE,
            UNKNOWN_REFERENCE,
            UNKNOWN_REFERENCE,
            UNKNOWN_REFERENCE,
            UNKNOWN_REFERENCE,
            UNKNOWN_REFERENCE,
            UNKNOWN_REFERENCE,
            APPROVED
        ]
    );
    assert!(out.decisions[&(0, 0)].scores.is_none());
    assert_eq!(bal(&out, "a"), (990, 0));
}

#[test]
fn redelivered_position_ignored_entirely() {
    let out = go(
        &abc(1000),
        &[
            m(0, 0, T0, pix("r1", "a", "b", 100, T0)),
            // re-deliveries of (0,0): other content, later timestamp; all ignored
            m(0, 0, T0 + 100_000, pix("r9", "a", "b", 900, T0 + 100_000)),
            unparsed(0, 0, T0 + 100_000),
            m(0, 1, T0 + 5, pix("r2", "a", "b", 100, T0 + 5)),
            m(0, 1, T0 + 6, pix("r2", "a", "b", 100, T0 + 6)),
        ],
    );
    assert_eq!(out.decisions.len(), 2);
    assert_eq!(
        out.decisions[&(0, 0)],
        RefDecision {
            t: T0,
            status: APPROVED,
            scores: Some(RefScores {
                value_risk: 0.0,
                hour_risk: 0.0,
                distance_risk: 0.0,
                risk: 0.0
            }),
            rules_version: "default".into(),
        }
    );
    // the clamp was not raised by the ignored re-delivery's timestamp
    assert_eq!(out.decisions[&(0, 1)].t, T0 + 5);
    assert_eq!(out.decisions[&(0, 1)].status, APPROVED);
    assert_eq!(bal(&out, "a"), (800, 0));
    assert_eq!(bal(&out, "b"), (1200, 0));
    let counts = &out.analyses["status_counts"];
    assert_eq!(counts[8], json!({"status": "approved", "count": 2}));
    assert_eq!(counts[0], json!({"status": "invalid", "count": 0}));
    assert_eq!(counts[2], json!({"status": "duplicate", "count": 0}));
}

#[test]
fn unparsed_first_occurrence_wins_over_later_parsed_redelivery() {
    let out = go(
        &abc(1000),
        &[unparsed(3, 9, T0), m(3, 9, T0, pix("x", "a", "b", 10, T0))],
    );
    assert_eq!(out.decisions.len(), 1);
    assert_eq!(
        out.decisions[&(3, 9)],
        RefDecision {
            t: T0,
            status: INVALID,
            scores: None,
            rules_version: "default".into(),
        }
    );
    assert_eq!(bal(&out, "a"), (1000, 0));
}

#[test]
fn partition_clamping() {
    let out = go(
        &abc(1000),
        &[
            m(0, 0, T0 + 5000, pix("p1", "a", "b", 10, T0 + 5000)),
            // record_ts goes back: t is clamped to T0+5000, so t − E = 2000 → late
            m(0, 1, T0 + 3000, pix("p2", "a", "b", 10, T0 + 3000)),
            // another partition has its own clock
            m(1, 0, T0 + 3000, pix("p3", "b", "a", 10, T0 + 3000)),
            m(0, 2, T0 + 6000, pix("p4", "a", "b", 10, T0 + 6000)),
            // unparsed messages take part in the clamp
            unparsed(1, 1, T0 + 9000),
            m(1, 2, T0 + 4000, pix("p5", "b", "a", 10, T0 + 4000)),
        ],
    );
    let ts: Vec<u64> = out.decisions.values().map(|d| d.t).collect();
    assert_eq!(
        ts,
        [
            T0 + 5000,
            T0 + 5000,
            T0 + 6000,
            T0 + 3000,
            T0 + 9000,
            T0 + 9000
        ]
    );
    assert_eq!(
        statuses(&out),
        [APPROVED, LATE, APPROVED, APPROVED, INVALID, LATE]
    );
}

#[test]
fn credit_limit_and_credit_used() {
    let us = users(&[("a", "r_sp", 0, 1000), ("b", "r_sp", 0, 0)]);
    let out = go(
        &us,
        &[
            m(
                0,
                0,
                T0,
                txe("c1", "a", "b", "r_sp", "credito", 600, T0 as i64),
            ),
            m(
                0,
                1,
                T0 + 1,
                txe("c2", "a", "b", "r_sp", "credito", 500, T0 as i64 + 1),
            ),
            m(
                0,
                2,
                T0 + 2,
                txe("c3", "a", "b", "r_sp", "credito", 400, T0 as i64 + 2),
            ),
            m(
                0,
                3,
                T0 + 3,
                txe("c4", "a", "b", "r_sp", "debito", 1, T0 as i64 + 3),
            ),
            m(
                0,
                4,
                T0 + 4,
                txe("c5", "a", "b", "r_sp", "boleto", 1, T0 as i64 + 4),
            ),
            m(
                0,
                5,
                T0 + 5,
                txe("c6", "b", "a", "r_sp", "boleto", 1000, T0 as i64 + 5),
            ),
            m(
                0,
                6,
                T0 + 6,
                txe("c7", "b", "a", "r_sp", "credito", 1, T0 as i64 + 6),
            ),
        ],
    );
    assert_eq!(
        statuses(&out),
        [
            APPROVED,
            INSUFFICIENT_LIMIT,
            APPROVED,
            INSUFFICIENT_BALANCE,
            INSUFFICIENT_BALANCE,
            APPROVED,
            INSUFFICIENT_LIMIT
        ]
    );
    assert_eq!(bal(&out, "a"), (1000, 1000));
    assert_eq!(bal(&out, "b"), (0, 0));
    assert_eq!(
        out.analyses["insufficient_funds"],
        json!([
            {"reason": "insufficient_balance", "count": 2, "amount_cents": 2},
            {"reason": "insufficient_limit", "count": 2, "amount_cents": 501},
        ])
    );
}

#[test]
fn tx_still_breaking_section3_is_invalid() {
    let out = go(
        &abc(1000),
        &[
            m(
                0,
                0,
                T0,
                txe("1", "a", "b", "r_sp", "Débito", 10, T0 as i64),
            ),
            m(0, 1, T0, pix("2", "a", "b", 0, T0)),
            m(0, 2, T0, pix("3", "a", "b", 100_000_000_001, T0)),
            m(0, 3, T0, pix("", "a", "b", 10, T0)),
        ],
    );
    assert_eq!(statuses(&out), [INVALID; 4]);
}

#[test]
fn score_helpers() {
    // value_risk
    assert_eq!(value_risk(100_000), 0.0); // v = 1000
    assert_eq!(value_risk(550_000), 0.5); // v = 5500
    assert_eq!(value_risk(1_000_000), 1.0); // v = 10000
    assert_eq!(value_risk(10_000_000), 1.0); // capped
    assert_eq!(value_risk(100_001), (1000.01 - 1000.0) / 9000.0); // v = 1000.01
                                                                  // local hour: E = 0 is 1969-12-31T21:00 local
    assert_eq!(local_hour(0), 21);
    assert_eq!(local_hour(-1), 20);
    assert_eq!(local_hour(3 * HOUR as i64), 0);
    assert_eq!(local_hour(3 * HOUR as i64 - 1), 23);
    assert_eq!(local_hour(MIN_EVENT_MS), 21);
    assert_eq!(local_hour(T0 as i64), 12);
    let table: Vec<f64> = (0..24).map(hour_risk).collect();
    let mut expected = vec![1.0; 6];
    expected.push(0.5);
    expected.extend(std::iter::repeat_n(0.0, 15));
    expected.extend([0.5, 0.5]);
    assert_eq!(table, expected);
    // haversine: one degree of latitude = 6371·π/180 km
    let one_degree = haversine_km(10.0, 20.0, 11.0, 20.0);
    assert!(
        (one_degree - 111.194_926_644_558_73).abs() < 1e-9,
        "{one_degree}"
    );
    let sp_rj = haversine_km(-23.55, -46.63, -22.91, -43.17);
    assert!((sp_rj - 360.623_880_988_091_5).abs() < 1e-9, "{sp_rj}");
    let sp_am = haversine_km(-23.55, -46.63, -3.10, -60.02);
    assert!((sp_am - 2_691.318_358_155_604_5).abs() < 1e-9, "{sp_am}");
    assert_eq!(haversine_km(-23.55, -46.63, -23.55, -46.63), 0.0);
    // distance_risk
    assert_eq!(distance_risk(49.999), 0.0);
    assert_eq!(distance_risk(50.0), 0.0);
    assert_eq!(distance_risk(525.0), 0.5);
    assert_eq!(distance_risk(999.999), (999.999 - 50.0) / 950.0);
    assert_eq!(distance_risk(1000.0), 1.0);
    // risk
    assert_eq!(combined_risk(0.0, 1.0, 1.0), 0.0);
    assert_eq!(combined_risk(0.5, 1.0, 1.0), 0.75);
    assert_eq!(combined_risk(1.0, 0.0, 0.0), 0.5);
}

#[test]
fn risk_formula_in_run() {
    // 03:00 local = 06:00Z; T0 is 12:00 local, so T0 + 15 h is 03:00 local next day.
    let night = T0 + 15 * HOUR;
    assert_eq!(local_hour(night as i64), 3);
    let us = users(&[("a", "r_sp", 10_000_000, 0), ("b", "r_sp", 0, 0)]);
    let out = go(
        &us,
        &[
            // v = 5500, 03:00, SP home → AM: 0.5·0.5 + 0.25·1 + 0.25·1 = 0.75
            m(
                0,
                0,
                night,
                txe("1", "a", "b", "r_am", "pix", 550_000, night as i64),
            ),
            // v = 1000: value_risk 0 shields it
            m(
                0,
                1,
                night,
                txe("2", "a", "b", "r_am", "pix", 100_000, night as i64),
            ),
            // v = 1000.01: just above the shield → 0.50000055… > 0.5
            m(
                0,
                2,
                night,
                txe("3", "a", "b", "r_am", "pix", 100_001, night as i64),
            ),
            // v = 10000 at noon at home: exactly 0.5, not > 0.5
            m(
                0,
                3,
                night + 9 * HOUR,
                pix("4", "a", "b", 1_000_000, night + 9 * HOUR),
            ),
            // v = 5500 at noon, SP → RJ (360.6 km): 0.25 + 0.25·(310.62…/950)
            m(
                0,
                4,
                night + 10 * HOUR,
                txe(
                    "5",
                    "a",
                    "b",
                    "r_rj",
                    "pix",
                    550_000,
                    (night + 10 * HOUR) as i64,
                ),
            ),
        ],
    );
    assert_eq!(
        out.decisions[&(0, 0)],
        RefDecision {
            t: night,
            status: REJECTED_RISK,
            scores: Some(RefScores {
                value_risk: 0.5,
                hour_risk: 1.0,
                distance_risk: 1.0,
                risk: 0.75
            }),
            rules_version: "default".into(),
        }
    );
    assert_eq!(
        out.decisions[&(0, 1)].scores,
        Some(RefScores {
            value_risk: 0.0,
            hour_risk: 1.0,
            distance_risk: 1.0,
            risk: 0.0
        })
    );
    assert_eq!(st(&out, 0, 1), APPROVED);
    assert_eq!(st(&out, 0, 2), REJECTED_RISK);
    let s2 = out.decisions[&(0, 2)].scores.unwrap();
    assert_eq!(
        s2.risk,
        0.5 * ((1000.01 - 1000.0) / 9000.0) + 0.25 * 1.0 + 0.25 * 1.0
    );
    assert_eq!(st(&out, 0, 3), APPROVED);
    assert_eq!(out.decisions[&(0, 3)].scores.unwrap().risk, 0.5);
    let s5 = out.decisions[&(0, 4)].scores.unwrap();
    let d = haversine_km(-23.55, -46.63, -22.91, -43.17);
    assert_eq!(s5.distance_risk, (d - 50.0) / 950.0);
    assert_eq!(s5.risk, 0.25 + 0.25 * ((d - 50.0) / 950.0));
    assert_eq!(st(&out, 0, 4), APPROVED);
    assert_eq!(
        bal(&out, "a"),
        (10_000_000 - 100_000 - 1_000_000 - 550_000, 0)
    );
    // custom threshold
    let strict = run(
        &regions(),
        &us,
        &[m(0, 0, T0, pix("1", "a", "b", 1_000_000, T0))],
        &RefParams {
            risk_threshold: 0.49,
            ..RefParams::default()
        },
    );
    assert_eq!(st(&strict, 0, 0), REJECTED_RISK);
}

#[test]
fn bands_and_buckets() {
    assert_eq!(value_band(1), "0-10");
    assert_eq!(value_band(999), "0-10");
    assert_eq!(value_band(1_000), "10-50");
    assert_eq!(value_band(4_999), "10-50");
    assert_eq!(value_band(5_000), "50-100");
    assert_eq!(value_band(10_000), "100-500");
    assert_eq!(value_band(50_000), "500-1000");
    assert_eq!(value_band(100_000), "1000-5000");
    assert_eq!(value_band(500_000), "5000-10000");
    assert_eq!(value_band(999_999), "5000-10000");
    assert_eq!(value_band(1_000_000), "10000+");
    assert_eq!(value_band(MAX_AMOUNT_CENTS), "10000+");

    assert_eq!(value_risk_bucket(0.0), 0);
    assert_eq!(value_risk_bucket(1e-9), 1);
    assert_eq!(value_risk_bucket(0.1), 1);
    assert_eq!(value_risk_bucket(0.100_000_1), 2);
    assert_eq!(value_risk_bucket(0.55), 6);
    assert_eq!(value_risk_bucket(1.0), 10);
    assert_eq!(value_risk_bucket(value_risk(190_000)), 1); // v = 1900 → 0.1

    assert_eq!(distance_band(0.0), "short");
    assert_eq!(distance_band(49.999), "short");
    assert_eq!(distance_band(50.0), "medium_short");
    assert_eq!(distance_band(299.999), "medium_short");
    assert_eq!(distance_band(300.0), "medium_long");
    assert_eq!(distance_band(999.999), "medium_long");
    assert_eq!(distance_band(1000.0), "long");
}

#[test]
fn minute_labels_and_civil_dates() {
    assert_eq!(civil_from_days(0), (1970, 1, 1));
    assert_eq!(civil_from_days(-1), (1969, 12, 31));
    assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    assert_eq!(civil_from_days(-719_162), (1, 1, 1));
    assert_eq!(civil_from_days(2_932_896), (9999, 12, 31));
    assert_eq!(minute_label(0), "1970-01-01T00:00:00Z");
    assert_eq!(minute_label(-1000), "1969-12-31T23:59:00Z");
    assert_eq!(minute_label(1_795_712_592_345), "2026-11-26T17:03:00Z");
    assert_eq!(minute_label(951_868_740_000), "2000-02-29T23:59:00Z");
    assert_eq!(minute_label(951_868_799_999), "2000-02-29T23:59:00Z");
    assert_eq!(minute_label(951_868_800_000), "2000-03-01T00:00:00Z");
    assert_eq!(minute_label(MIN_EVENT_MS), "0001-01-01T00:00:00Z");
    assert_eq!(minute_label(253_402_300_799_999), "9999-12-31T23:59:00Z");
    assert_eq!(minute_label(T0 as i64), "2026-01-15T15:00:00Z");
}

#[test]
fn empty_input_has_all_nine_status_rows() {
    let out = go(&abc(5), &[]);
    assert!(out.decisions.is_empty());
    assert_eq!(out.balances.len(), 3);
    assert_eq!(bal(&out, "c"), (5, 0));
    assert!(out.last_approved.is_empty());
    let obj = out.analyses.as_object().unwrap();
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort();
    let mut names = ANALYSIS_NAMES.to_vec();
    names.sort();
    assert_eq!(keys, names);
    assert_eq!(
        out.analyses["status_counts"],
        json!(STATUSES
            .iter()
            .map(|s| json!({"status": s, "count": 0}))
            .collect::<Vec<_>>())
    );
    for name in &ANALYSIS_NAMES[1..] {
        assert_eq!(out.analyses[*name], json!([]), "{name}");
    }
}

#[test]
fn analysis_shapes() {
    let us = users(&[
        ("a", "r_sp", 1_000_000, 500_000),
        ("b", "r_rj", 0, 0),
        ("c", "r_am", 5_000, 0),
    ]);
    let night = T0 + 15 * HOUR; // 03:00 local, 2026-01-16T06:00:00Z
    let e = |t: u64| t as i64;
    let msgs = [
        // approved: 20 BRL, SP, pix; a(SP)→b(RJ) medium_long
        m(0, 0, T0, txe("t1", "a", "b", "r_sp", "pix", 2_000, e(T0))),
        // insufficient_limit: 6000 BRL credito in AM; a(SP)→c(AM) long; bucket 6
        m(
            0,
            1,
            T0 + 1000,
            txe("t2", "a", "c", "r_am", "credito", 600_000, e(T0 + 1000)),
        ),
        // approved: 2000 BRL credito in AM, risk 0.3055…; bucket 2
        m(
            0,
            2,
            T0 + 2000,
            txe("t3", "a", "c", "r_am", "credito", 200_000, e(T0 + 2000)),
        ),
        // insufficient_balance: 100 BRL pix by c(AM)→a(SP) long; bucket 0
        // (same t as t3: c cannot yet spend t3's credit)
        m(
            0,
            3,
            T0 + 2000,
            txe("t4", "c", "a", "r_am", "pix", 10_000, e(T0 + 2000)),
        ),
        unparsed(0, 4, T0 + 3500),
        m(
            0,
            5,
            T0 + 4000,
            txe("t1", "a", "b", "r_sp", "pix", 2_000, e(T0 + 4000)),
        ),
        m(
            1,
            0,
            T0 + 5000,
            txe("t5", "a", "b", "r_sp", "pix", 2_000, e(T0)),
        ),
        m(
            1,
            1,
            T0 + 6000,
            txe("t6", "a", "a", "r_sp", "pix", 2_000, e(T0 + 6000)),
        ),
        m(
            2,
            0,
            T0 + 2500,
            txe("t7", "a", "b", "r_sp", "pix", 2_000, e(T0 + 1900)),
        ),
        // rejected_risk: 9000 BRL pix in AM at 03:00 local; a(SP)→b(RJ) medium_long; bucket 9
        m(
            2,
            1,
            night,
            txe("t8", "a", "b", "r_am", "pix", 900_000, e(night)),
        ),
    ];
    let out = go(&us, &msgs);
    assert_eq!(
        statuses(&out),
        [
            APPROVED,
            INSUFFICIENT_LIMIT,
            APPROVED,
            INSUFFICIENT_BALANCE,
            INVALID,
            DUPLICATE,
            LATE,
            UNKNOWN_REFERENCE,
            STALE,
            REJECTED_RISK
        ]
    );
    assert_eq!(bal(&out, "a"), (998_000, 200_000));
    assert_eq!(bal(&out, "b"), (2_000, 0));
    assert_eq!(bal(&out, "c"), (205_000, 0));
    assert_eq!(out.last_approved.len(), 1);
    assert_eq!(out.last_approved["a"], e(T0 + 2000));

    let expected = json!({
        "status_counts": [
            {"status": "invalid", "count": 1},
            {"status": "late", "count": 1},
            {"status": "duplicate", "count": 1},
            {"status": "unknown_reference", "count": 1},
            {"status": "stale", "count": 1},
            {"status": "insufficient_balance", "count": 1},
            {"status": "insufficient_limit", "count": 1},
            {"status": "rejected_risk", "count": 1},
            {"status": "approved", "count": 2},
        ],
        "value_histogram": [
            {"band": "10-50", "approved": 1, "rejected": 0},
            {"band": "100-500", "approved": 0, "rejected": 1},
            {"band": "1000-5000", "approved": 1, "rejected": 0},
            {"band": "5000-10000", "approved": 0, "rejected": 2},
        ],
        "hour_histogram": [
            {"hour": 3, "approved": 0, "rejected": 1},
            {"hour": 12, "approved": 2, "rejected": 2},
        ],
        "value_risk_distribution": [
            {"bucket": 0, "approved": 1, "rejected": 1, "approved_amount_cents": 2_000, "rejected_amount_cents": 10_000},
            {"bucket": 2, "approved": 1, "rejected": 0, "approved_amount_cents": 200_000, "rejected_amount_cents": 0},
            {"bucket": 6, "approved": 0, "rejected": 1, "approved_amount_cents": 0, "rejected_amount_cents": 600_000},
            {"bucket": 9, "approved": 0, "rejected": 1, "approved_amount_cents": 0, "rejected_amount_cents": 900_000},
        ],
        "hour_risk_outcome": [
            {"hour_risk": 0.0, "approved": 2, "rejected": 2},
            {"hour_risk": 1.0, "approved": 0, "rejected": 1},
        ],
        "state_approval": [
            {"uf": "AM", "approved": 1, "rejected": 3},
            {"uf": "SP", "approved": 1, "rejected": 0},
        ],
        "insufficient_funds": [
            {"reason": "insufficient_balance", "count": 1, "amount_cents": 10_000},
            {"reason": "insufficient_limit", "count": 1, "amount_cents": 600_000},
        ],
        "mode_rejections": [
            {"mode": "credito", "approved": 1, "rejected": 1},
            {"mode": "pix", "approved": 1, "rejected": 2},
        ],
        "minute_frequency": [
            {"minute": "2026-01-15T15:00:00Z", "count": 4},
            {"minute": "2026-01-16T06:00:00Z", "count": 1},
        ],
        "distance_band_outcome": [
            {"minute": "2026-01-15T15:00:00Z", "band": "medium_long", "approved": 1, "rejected": 0},
            {"minute": "2026-01-15T15:00:00Z", "band": "long", "approved": 1, "rejected": 2},
            {"minute": "2026-01-16T06:00:00Z", "band": "medium_long", "approved": 0, "rejected": 1},
        ],
    });
    assert_eq!(out.analyses, expected);
    // JSON number kinds: integers are integers, hour_risk is a float.
    assert!(out.analyses["hour_histogram"][0]["hour"].is_u64());
    assert!(out.analyses["value_risk_distribution"][0]["bucket"].is_i64());
    assert!(out.analyses["hour_risk_outcome"][0]["hour_risk"].is_f64());
    assert!(out.analyses["status_counts"][0]["count"].is_i64());
    // Scores present exactly for assessed statuses.
    for d in out.decisions.values() {
        assert_eq!(d.scores.is_some(), is_assessed(d.status), "{d:?}");
    }
    let s3 = out.decisions[&(0, 2)].scores.unwrap();
    assert_eq!(s3.value_risk, 1000.0 / 9000.0);
    assert_eq!(s3.risk, 0.5 * (1000.0 / 9000.0) + 0.25);
}

#[test]
fn deterministic_under_input_interleaving_of_partitions() {
    // The same per-partition sequences, interleaved differently, give the same output.
    let us = users(&[
        ("a", "r_sp", 300, 0),
        ("b", "r_sp", 0, 0),
        ("c", "r_sp", 100, 0),
    ]);
    let p0 = [
        m(0, 0, T0, pix("k1", "a", "b", 200, T0)),
        m(0, 1, T0 + 10, pix("k3", "b", "c", 150, T0 + 10)),
    ];
    let p1 = [
        m(1, 0, T0, pix("k2", "a", "c", 200, T0)),
        m(1, 1, T0 + 10, pix("k0", "c", "b", 150, T0 + 10)),
    ];
    let one: Vec<RefMsg> = p0.iter().chain(p1.iter()).cloned().collect();
    let two: Vec<RefMsg> = vec![p1[0].clone(), p0[0].clone(), p1[1].clone(), p0[1].clone()];
    let a = go(&us, &one);
    let b = go(&us, &two);
    assert_eq!(a, b);
    assert_eq!(
        statuses(&a),
        [
            APPROVED,
            APPROVED,
            INSUFFICIENT_BALANCE,
            INSUFFICIENT_BALANCE
        ]
    );
    // k2: a has 100 left after k1; k0: c has 100 (k2 was rejected) < 150;
    // k3: b sees k1's 200 at the later t and pays 150.
    assert_eq!(bal(&a, "a"), (100, 0));
    assert_eq!(bal(&a, "b"), (50, 0));
    assert_eq!(bal(&a, "c"), (250, 0));
}

// ---------------------------------------------------------------------------
// SPEC §11: live changes
// ---------------------------------------------------------------------------

fn rules(version: &str, risk_threshold: f64, max_delay_ms: u64, dedup_window_ms: u64) -> RefRules {
    RefRules {
        version: version.into(),
        risk_threshold,
        max_delay_ms,
        dedup_window_ms,
    }
}

/// The rule set of `RefParams::default()` under the name "default".
fn default_rules() -> RefRules {
    rules("default", 0.5, 1000, 300_000)
}

fn ctl(partition: i32, offset: i64, record_ts: u64, change: RefChange) -> RefControl {
    RefControl {
        record_ts,
        partition,
        offset,
        effective_from: None,
        change: Some(change),
    }
}

fn ctl_from(
    partition: i32,
    offset: i64,
    record_ts: u64,
    effective_from: i64,
    change: RefChange,
) -> RefControl {
    RefControl {
        effective_from: Some(effective_from),
        ..ctl(partition, offset, record_ts, change)
    }
}

fn user(id: &str, region: &str, balance: i64, limit: i64) -> RefChange {
    RefChange::User(RefUser {
        id: id.into(),
        region_id: region.into(),
        balance_cents: balance,
        credit_limit_cents: limit,
    })
}

fn adjust(user_id: &str, amount_cents: i64) -> RefChange {
    RefChange::Adjust {
        user_id: user_id.into(),
        amount_cents,
    }
}

fn region(id: &str, uf: &str, lat: f64, lon: f64) -> RefChange {
    RefChange::Region(RefRegion {
        id: id.into(),
        uf: uf.into(),
        lat,
        lon,
    })
}

fn new_rules(version: &str, risk_threshold: f64, max_delay_ms: u64, window: u64) -> RefChange {
    RefChange::Rules(rules(version, risk_threshold, max_delay_ms, window))
}

fn live(users: &[RefUser], msgs: &[RefMsg], controls: &[RefControl]) -> RefOutput {
    run_live(&regions(), users, msgs, controls, &default_rules())
}

fn ver(out: &RefOutput, partition: i32, offset: i64) -> &str {
    &out.decisions[&(partition, offset)].rules_version
}

fn rule_log(list: &[(u64, &str)]) -> Vec<(u64, String)> {
    list.iter().map(|&(at, v)| (at, v.to_string())).collect()
}

fn positions(list: &[(i32, i64)]) -> BTreeSet<(i32, i64)> {
    list.iter().copied().collect()
}

// --- reading the SPEC's hand-computed example (tests/data/live_changes) ---

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`, the inverse of [`civil_from_days`]).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400); // [0, 399]
    let mp = i64::from((m + 9) % 12); // March = 0
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// ms since the epoch of `YYYY-MM-DDTHH:MM:SS.mmmZ`, the only §3 form the example uses.
fn iso_ms(s: &str) -> i64 {
    let b = s.as_bytes();
    assert!(
        b.len() == 24
            && [
                (4, b'-'),
                (7, b'-'),
                (10, b'T'),
                (13, b':'),
                (16, b':'),
                (19, b'.'),
                (23, b'Z')
            ]
            .iter()
            .all(|&(i, c)| b[i] == c),
        "not YYYY-MM-DDTHH:MM:SS.mmmZ: {s}"
    );
    let n = |from: usize, to: usize| -> i64 {
        assert!(b[from..to].iter().all(u8::is_ascii_digit), "{s}");
        s[from..to].parse().unwrap()
    };
    let (y, mo, d) = (n(0, 4), n(5, 7) as u32, n(8, 10) as u32);
    let days = days_from_civil(y, mo, d);
    assert_eq!(civil_from_days(days), (y, mo, d), "not a real date: {s}");
    let (h, mi, sec) = (n(11, 13), n(14, 16), n(17, 19));
    assert!(h < 24 && mi < 60 && sec < 60, "{s}");
    ((days * 24 + h) * 60 + mi) * 60_000 + sec * 1000 + n(20, 23)
}

/// §3 amount in cents from the decimal text of a plain non-negative decimal (the
/// example's form), rounding half away from zero; None if out of the §3 range.
fn amount_cents(v: &Value) -> Option<i64> {
    // The workspace's serde_json keeps a number's text (arbitrary_precision).
    let text = match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        _ => return None,
    };
    let (int, frac) = text.split_once('.').unwrap_or((&text, ""));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    assert!(digits(int) && (frac.is_empty() || digits(frac)), "{text}");
    let digit = |i: usize| frac.as_bytes().get(i).map_or(0, |c| i64::from(c - b'0'));
    let truncated = int.parse::<i64>().ok()? * 100 + digit(0) * 10 + digit(1);
    let cents = truncated + i64::from(digit(2) >= 5);
    (MIN_AMOUNT_CENTS..=MAX_AMOUNT_CENTS)
        .contains(&cents)
        .then_some(cents)
}

/// A §3 transaction payload; None if it is not one.
fn parse_tx(payload: &str) -> Option<RefTx> {
    let v: Value = serde_json::from_str(payload).ok()?;
    let id = |k: &str| {
        v.get(k)?
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let mode = id("modalidade_pagamento")?;
    if !matches!(mode.as_str(), "pix" | "debito" | "credito" | "boleto") {
        return None;
    }
    Some(RefTx {
        id: id("id_transacao")?,
        payer: id("id_usuario_pagador")?,
        payee: id("id_usuario_recebedor")?,
        region: id("id_regiao")?,
        mode,
        amount_cents: amount_cents(v.get("valor_transacao")?)?,
        event_ms: iso_ms(v.get("data_horario")?.as_str()?),
    })
}

/// A §11 change of the given `type` from the object holding its fields; None if a
/// required field is missing or of the wrong type, or the type is unknown.
fn typed_change(ty: &str, v: &Value) -> Option<RefChange> {
    let id = |k: &str| {
        v.get(k)?
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let int = |k: &str| v.get(k)?.as_i64();
    let uint = |k: &str| v.get(k)?.as_u64();
    let num = |k: &str| v.get(k)?.as_f64();
    let has_name = || v.get("name").is_some_and(Value::is_string);
    Some(match ty {
        "user" if has_name() => RefChange::User(RefUser {
            id: id("id")?,
            region_id: id("region_id")?,
            balance_cents: int("balance_cents").filter(|&c| c >= 0)?,
            credit_limit_cents: int("credit_limit_cents").filter(|&c| c >= 0)?,
        }),
        "user_delete" => RefChange::UserDelete(id("id")?),
        "balance_adjustment" => RefChange::Adjust {
            user_id: id("user_id")?,
            amount_cents: int("amount_cents").filter(|&c| c != 0)?,
        },
        "region" if has_name() => RefChange::Region(RefRegion {
            id: id("id")?,
            uf: id("uf")?,
            lat: num("lat")?,
            lon: num("lon")?,
        }),
        "region_delete" => RefChange::RegionDelete(id("id")?),
        "rules" => RefChange::Rules(RefRules {
            version: id("version")?,
            risk_threshold: num("risk_threshold")?,
            max_delay_ms: uint("max_delay_ms")?,
            dedup_window_ms: uint("dedup_window_ms")?,
        }),
        _ => return None,
    })
}

/// A §11 control payload, typed or Debezium form (with or without the
/// `schema`/`payload` envelope): (effective_from, change).
fn parse_control(payload: &str) -> (Option<i64>, Option<RefChange>) {
    let Ok(v) = serde_json::from_str::<Value>(payload) else {
        return (None, None);
    };
    let effective_from = v.get("effective_from").and_then(Value::as_str).map(iso_ms);
    let cdc = match v.get("payload") {
        Some(inner) if inner.get("op").is_some() => inner,
        _ => &v,
    };
    let change = match cdc.get("op").and_then(Value::as_str) {
        Some(op) => {
            let table = cdc
                .get("source")
                .and_then(|s| s.get("table"))
                .and_then(Value::as_str);
            let (ty, delete) = match table {
                Some("users") => ("user", "user_delete"),
                Some("regions") => ("region", "region_delete"),
                _ => ("", ""),
            };
            match op {
                "c" | "u" | "r" => cdc.get("after").and_then(|a| typed_change(ty, a)),
                "d" => cdc.get("before").and_then(|b| typed_change(delete, b)),
                _ => None,
            }
        }
        None => v
            .get("type")
            .and_then(Value::as_str)
            .and_then(|ty| typed_change(ty, &v)),
    };
    (effective_from, change)
}

/// The rows of a CSV file without quoting, header checked and dropped.
fn csv_rows(text: &str, header: &str) -> Vec<Vec<String>> {
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(header));
    lines
        .filter(|l| !l.is_empty())
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

#[test]
fn live_changes_hand_computed_example() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/live_changes");
    let read = |file: &str| {
        std::fs::read_to_string(format!("{dir}/{file}"))
            .unwrap_or_else(|e| panic!("{dir}/{file}: {e}"))
    };
    let regions: Vec<RefRegion> = csv_rows(&read("regions.csv"), "id,uf,name,lat,lon")
        .into_iter()
        .map(|r| RefRegion {
            id: r[0].clone(),
            uf: r[1].clone(),
            lat: r[3].parse().unwrap(),
            lon: r[4].parse().unwrap(),
        })
        .collect();
    let users: Vec<RefUser> = csv_rows(
        &read("users.csv"),
        "id,name,region_id,balance_cents,credit_limit_cents",
    )
    .into_iter()
    .map(|u| RefUser {
        id: u[0].clone(),
        region_id: u[2].clone(),
        balance_cents: u[3].parse().unwrap(),
        credit_limit_cents: u[4].parse().unwrap(),
    })
    .collect();
    let mut msgs = Vec::new();
    let mut controls = Vec::new();
    let mut ids: BTreeMap<(i32, i64), String> = BTreeMap::new();
    for line in read("capture.jsonl")
        .lines()
        .filter(|l| !l.trim().is_empty())
    {
        let rec: Value = serde_json::from_str(line).unwrap();
        let record_ts = rec["t"].as_u64().unwrap();
        let partition = i32::try_from(rec["partition"].as_i64().unwrap()).unwrap();
        let offset = rec["offset"].as_i64().unwrap();
        let payload = rec["payload"].as_str();
        match rec.get("topic").and_then(Value::as_str) {
            Some("transacoes-controle") => {
                let (effective_from, change) = payload.map_or((None, None), parse_control);
                controls.push(RefControl {
                    record_ts,
                    partition,
                    offset,
                    effective_from,
                    change,
                });
            }
            None | Some("transacoes") => {
                let tx = payload.and_then(parse_tx);
                if let Some(tx) = &tx {
                    ids.insert((partition, offset), tx.id.clone());
                }
                msgs.push(RefMsg {
                    record_ts,
                    partition,
                    offset,
                    tx,
                });
            }
            Some(other) => panic!("unknown topic {other}"),
        }
    }
    assert_eq!((msgs.len(), controls.len()), (17, 17));

    let out = run_live(&regions, &users, &msgs, &controls, &default_rules());

    let expected: Value = serde_json::from_str(&read("expected.json")).unwrap();
    let decisions = expected["decisions"].as_array().unwrap();
    assert_eq!(out.decisions.len(), decisions.len());
    for d in decisions {
        let pos = (
            i32::try_from(d["partition"].as_i64().unwrap()).unwrap(),
            d["offset"].as_i64().unwrap(),
        );
        assert_eq!(
            ids.get(&pos).map(String::as_str),
            d["id"].as_str(),
            "{pos:?}"
        );
        let got = &out.decisions[&pos];
        assert_eq!(
            (got.status, got.rules_version.as_str()),
            (
                d["status"].as_str().unwrap(),
                d["rules_version"].as_str().unwrap()
            ),
            "decision {pos:?} ({})",
            d["id"]
        );
    }
    let balances: BTreeMap<String, (i64, i64)> = expected["balances"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(id, b)| (id.clone(), (b[0].as_i64().unwrap(), b[1].as_i64().unwrap())))
        .collect();
    assert_eq!(out.balances, balances);
    // Row order carries no meaning (§8): compare by uf.
    let by_uf = |rows: &Value| -> BTreeMap<String, (i64, i64)> {
        rows.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["uf"].as_str().unwrap().to_string(),
                    (
                        r["approved"].as_i64().unwrap(),
                        r["rejected"].as_i64().unwrap(),
                    ),
                )
            })
            .collect()
    };
    assert_eq!(
        by_uf(&out.analyses["state_approval"]),
        by_uf(&expected["analyses"]["state_approval"])
    );
    assert_eq!(
        out.invalid_controls,
        positions(&[(0, 10), (0, 11), (0, 12)])
    );
    // The users at the end are those of the balances (E was deleted last).
    assert!(out.users.keys().eq(balances.keys()));
}

// --- focused tests ---

#[test]
fn run_is_run_live_without_controls_under_default() {
    let us = abc(1000);
    let msgs = [
        m(0, 0, T0, pix("1", "a", "b", 100, T0)),
        unparsed(0, 1, T0 + 1),
        m(0, 2, T0 + 2, pix("1", "a", "b", 100, T0 + 2)),
    ];
    let out = go(&us, &msgs);
    assert_eq!(out, live(&us, &msgs, &[]));
    assert_eq!(statuses(&out), [APPROVED, INVALID, DUPLICATE]);
    assert!(out.decisions.values().all(|d| d.rules_version == "default"));
    assert_eq!(out.rules, rule_log(&[(0, "default")]));
    assert!(out.invalid_controls.is_empty());
    let regions_in: BTreeMap<String, RefRegion> =
        regions().into_iter().map(|r| (r.id.clone(), r)).collect();
    assert_eq!(out.regions, regions_in);
    assert_eq!(out.users.len(), 3);
    assert_eq!(
        out.users["a"],
        RefUser {
            id: "a".into(),
            region_id: "r_sp".into(),
            balance_cents: 900,
            credit_limit_cents: 0
        }
    );
    // Another initial rule set names every decision.
    let named = run_live(
        &regions(),
        &us,
        &msgs,
        &[],
        &rules("mine", 0.5, 1000, 300_000),
    );
    assert!(named.decisions.values().all(|d| d.rules_version == "mine"));
    assert_eq!(statuses(&named), statuses(&out));
}

#[test]
fn delete_with_a_credit_due_at_the_same_time_lands_the_credit_then_wipes() {
    // a → b approved at T0: b's credit is due at T0 + 1. At T0 + 1 b is deleted and
    // created again (offsets 0, 1). The credit lands first, on the old b, which the
    // delete then wipes: the new b has its opening balance only.
    let msgs = [m(0, 0, T0, pix("1", "a", "b", 300, T0))];
    let out = live(
        &abc(1000),
        &msgs,
        &[
            ctl(0, 0, T0 + 1, RefChange::UserDelete("b".into())),
            ctl(0, 1, T0 + 1, user("b", "r_sp", 0, 0)),
        ],
    );
    assert_eq!(st(&out, 0, 0), APPROVED);
    assert_eq!(bal(&out, "a"), (700, 0));
    assert_eq!(bal(&out, "b"), (0, 0));
    assert!(out.invalid_controls.is_empty());

    // Without the re-creation b is gone, and its money with it.
    let gone = live(
        &abc(1000),
        &msgs,
        &[ctl(0, 0, T0 + 1, RefChange::UserDelete("b".into()))],
    );
    assert!(!gone.balances.contains_key("b"));
    assert!(!gone.users.contains_key("b"));
    assert_eq!(gone.balances.len(), 2);
}

#[test]
fn a_credit_is_never_due_to_a_missing_user() {
    // §11 drops a credit whose payee does not exist when it is due. With credits due
    // at t + 1 this cannot happen: the changes at t apply before the messages at t
    // (so an approval at t had its payee existing after all of t's changes), and the
    // credits due at t + 1 apply before the changes at t + 1; no change comes in
    // between. What can be tested is either side of that gap:
    // a delete at t makes the payee unknown to the payment at t (no credit at all) …
    let at_t = live(
        &abc(1000),
        &[m(0, 0, T0, pix("1", "a", "b", 300, T0))],
        &[ctl(0, 0, T0, RefChange::UserDelete("b".into()))],
    );
    assert_eq!(st(&at_t, 0, 0), UNKNOWN_REFERENCE);
    assert_eq!(bal(&at_t, "a"), (1000, 0));
    // … the same with an effective_from landing exactly on t …
    let from_t = live(
        &abc(1000),
        &[m(0, 0, T0, pix("1", "a", "b", 300, T0))],
        &[ctl_from(
            0,
            0,
            T0 - 500,
            T0 as i64,
            RefChange::UserDelete("b".into()),
        )],
    );
    assert_eq!(st(&from_t, 0, 0), UNKNOWN_REFERENCE);
    // … and a credit due after the last input still lands on the payee, which exists.
    let end = live(
        &abc(1000),
        &[m(0, 0, T0, pix("1", "a", "b", 300, T0))],
        &[ctl(0, 0, T0 - 10, adjust("c", 1))],
    );
    assert_eq!(bal(&end, "b"), (1300, 0));
    assert_eq!(bal(&end, "c"), (1001, 0));
}

#[test]
fn recreation_starts_fresh() {
    let us = users(&[("a", "r_sp", 1000, 500), ("b", "r_sp", 0, 0)]);
    let out = live(
        &us,
        &[
            m(
                0,
                0,
                T0,
                txe("1", "a", "b", "r_sp", "credito", 200, T0 as i64),
            ),
            m(0, 1, T0 + 1, pix("2", "a", "b", 100, T0 + 1)),
            // After re-creation: no last approval (an older E is not stale), a new
            // opening balance, credit used 0 under the new limit.
            m(0, 2, T0 + 20, pix("3", "a", "b", 50, T0 - 100)),
            m(
                0,
                3,
                T0 + 21,
                txe("4", "a", "b", "r_sp", "credito", 71, T0 as i64 + 21),
            ),
            m(
                0,
                4,
                T0 + 22,
                txe("5", "a", "b", "r_sp", "credito", 70, T0 as i64 + 22),
            ),
        ],
        &[
            ctl(0, 0, T0 + 10, RefChange::UserDelete("a".into())),
            ctl(0, 1, T0 + 10, user("a", "r_rj", 50, 70)),
        ],
    );
    assert_eq!(
        statuses(&out),
        [APPROVED, APPROVED, APPROVED, INSUFFICIENT_LIMIT, APPROVED]
    );
    assert_eq!(bal(&out, "a"), (0, 70));
    assert_eq!(out.last_approved["a"], T0 as i64 + 22);
    assert_eq!(
        out.users["a"],
        RefUser {
            id: "a".into(),
            region_id: "r_rj".into(),
            balance_cents: 0,
            credit_limit_cents: 70
        }
    );
    // b got 200 (credito), 100, 50 and 70.
    assert_eq!(bal(&out, "b"), (420, 0));
}

#[test]
fn adjustments_of_either_sign_apply_before_a_payment_at_the_same_t() {
    let us = users(&[
        ("a", "r_sp", 100, 0),
        ("b", "r_sp", 0, 0),
        ("c", "r_sp", 0, 0),
    ]);
    let out = live(
        &us,
        &[
            // a has 100 + 50 at T0.
            m(0, 0, T0, pix("1", "a", "b", 150, T0)),
            // b has 150 (credit at T0 + 1) − 60 = 90 at T0 + 10.
            m(0, 1, T0 + 10, pix("2", "b", "a", 91, T0 + 10)),
            m(0, 2, T0 + 10, pix("3", "b", "a", 90, T0 + 10)),
            // b has 0 − 5 at T0 + 20: below zero, an external debit.
            m(0, 3, T0 + 20, pix("4", "b", "a", 1, T0 + 20)),
        ],
        &[
            ctl(0, 0, T0, adjust("a", 50)),
            ctl(0, 1, T0 + 10, adjust("b", -60)),
            ctl(0, 2, T0 + 20, adjust("b", -5)),
            // invalid: unknown user, zero amount; a balance past i64 stops at the bound
            ctl(0, 3, T0 + 30, adjust("zz", 5)),
            ctl(0, 4, T0 + 30, adjust("a", 0)),
            ctl(0, 5, T0 + 30, adjust("c", i64::MAX)),
            ctl(0, 6, T0 + 30, adjust("c", 1)),
            // created earlier at the same T (partition order): valid
            ctl(0, 7, T0 + 40, user("n", "r_sp", 0, 0)),
            ctl(1, 0, T0 + 40, adjust("n", 7)),
            // deleted earlier at the same T: invalid
            ctl(0, 8, T0 + 50, RefChange::UserDelete("n".into())),
            ctl(1, 1, T0 + 50, adjust("n", 1)),
        ],
    );
    assert_eq!(
        statuses(&out),
        [
            APPROVED,
            INSUFFICIENT_BALANCE,
            APPROVED,
            INSUFFICIENT_BALANCE
        ]
    );
    assert_eq!(bal(&out, "a"), (90, 0));
    assert_eq!(bal(&out, "b"), (-5, 0));
    assert_eq!(bal(&out, "c"), (i64::MAX, 0));
    assert!(!out.balances.contains_key("n"));
    assert_eq!(out.invalid_controls, positions(&[(0, 3), (0, 4), (1, 1)]));
}

#[test]
fn limit_lowered_below_the_credit_in_use() {
    let us = users(&[("a", "r_sp", 1000, 1000), ("b", "r_sp", 0, 0)]);
    let cr = |id: &str, amount: i64, t: u64| txe(id, "a", "b", "r_sp", "credito", amount, t as i64);
    let out = live(
        &us,
        &[
            m(0, 0, T0, cr("1", 800, T0)),
            // limit 500 < 800 used: no credit left
            m(0, 1, T0 + 5, cr("2", 1, T0 + 5)),
            // the record's balance_cents (999,999) is ignored: a still has 1000
            m(0, 2, T0 + 6, pix("3", "a", "b", 1000, T0 + 6)),
            m(0, 3, T0 + 7, pix("4", "a", "b", 1, T0 + 7)),
            // limit 900: 100 left
            m(0, 4, T0 + 8, cr("5", 101, T0 + 8)),
            m(0, 5, T0 + 9, cr("6", 100, T0 + 9)),
        ],
        &[
            ctl(0, 0, T0 + 5, user("a", "r_sp", 999_999, 500)),
            ctl(0, 1, T0 + 8, user("a", "r_sp", 0, 900)),
        ],
    );
    assert_eq!(
        statuses(&out),
        [
            APPROVED,
            INSUFFICIENT_LIMIT,
            APPROVED,
            INSUFFICIENT_BALANCE,
            INSUFFICIENT_LIMIT,
            APPROVED
        ]
    );
    assert_eq!(bal(&out, "a"), (0, 900));
    assert_eq!(out.users["a"].credit_limit_cents, 900);
    assert_eq!(out.users["a"].balance_cents, 0);
}

#[test]
fn region_move_changes_uf_and_distances_from_its_t() {
    let us = users(&[("a", "r_sp", 10_000_000, 0), ("b", "r_sp", 0, 0)]);
    // 2000 BRL: value risk 1/9 > 0, so the distance risk shows in the risk.
    let big = |id: &str, t: u64| txe(id, "a", "b", "r_sp2", "pix", 200_000, t as i64);
    let out = live(
        &us,
        &[
            m(0, 0, T0 + 9, big("1", T0 + 9)),
            m(0, 1, T0 + 10, big("2", T0 + 10)),
            m(0, 2, T0 + 20, big("3", T0 + 20)),
        ],
        &[
            // r_sp2 moves to Rio (replaced, same id) at T0 + 10 …
            ctl(0, 0, T0 + 10, region("r_sp2", "RJ", -22.91, -43.17)),
            // … and a's home moves to r_rj at T0 + 20.
            ctl(0, 1, T0 + 20, user("a", "r_rj", 0, 0)),
        ],
    );
    assert_eq!(statuses(&out), [APPROVED; 3]);
    let dr = |p: i32, o: i64| out.decisions[&(p, o)].scores.unwrap().distance_risk;
    assert_eq!(
        dr(0, 0),
        distance_risk(haversine_km(-23.55, -46.63, -23.55, -46.0))
    );
    assert_eq!(
        dr(0, 1),
        distance_risk(haversine_km(-23.55, -46.63, -22.91, -43.17))
    );
    assert_eq!(
        dr(0, 2),
        distance_risk(haversine_km(-22.91, -43.17, -22.91, -43.17))
    );
    assert!(dr(0, 0) > 0.0 && dr(0, 1) > dr(0, 0) && dr(0, 2) == 0.0);
    assert_eq!(
        out.analyses["state_approval"],
        json!([
            {"uf": "RJ", "approved": 2, "rejected": 0},
            {"uf": "SP", "approved": 1, "rejected": 0},
        ])
    );
    // Analysis 10 uses the payer's home as of t: r_sp ↔ r_sp, then r_rj ↔ r_sp.
    assert_eq!(
        out.analyses["distance_band_outcome"],
        json!([
            {"minute": minute_label(T0 as i64), "band": "short", "approved": 2, "rejected": 0},
            {"minute": minute_label(T0 as i64), "band": "medium_long", "approved": 1, "rejected": 0},
        ])
    );
    assert_eq!(out.regions["r_sp2"].uf, "RJ");
    assert_eq!(out.users["a"].region_id, "r_rj");
}

#[test]
fn region_delete_then_recreate_keeps_the_users_state() {
    let us = users(&[
        ("a", "r_sp", 1000, 0),
        ("c", "r_sp", 0, 0),
        ("d", "r_rj", 1000, 100),
    ]);
    let cr = |id: &str, amount: i64, t: u64| txe(id, "d", "a", "r_sp", "credito", amount, t as i64);
    let out = live(
        &us,
        &[
            m(0, 0, T0, cr("1", 40, T0)),
            // r_rj unknown: d as payer, d as payee, a transaction in r_rj
            m(0, 1, T0 + 10, pix("2", "d", "a", 10, T0 + 10)),
            m(0, 2, T0 + 11, pix("3", "a", "d", 10, T0 + 11)),
            m(
                0,
                3,
                T0 + 12,
                txe("4", "a", "c", "r_rj", "pix", 10, T0 as i64 + 12),
            ),
            // r_rj back: d's last approval and credit used are still there
            m(0, 4, T0 + 20, pix("5", "d", "a", 10, T0 - 1)),
            m(0, 5, T0 + 21, cr("6", 61, T0 + 21)),
            m(0, 6, T0 + 22, cr("7", 60, T0 + 22)),
            m(0, 7, T0 + 23, pix("8", "a", "d", 10, T0 + 23)),
        ],
        &[
            ctl(0, 0, T0 + 10, RefChange::RegionDelete("r_rj".into())),
            // deleting a region that does not exist: nothing, not invalid
            ctl(0, 1, T0 + 15, RefChange::RegionDelete("r_nowhere".into())),
            ctl(0, 2, T0 + 20, region("r_rj", "RJ", -22.91, -43.17)),
        ],
    );
    assert_eq!(
        statuses(&out),
        [
            APPROVED,
            UNKNOWN_REFERENCE,
            UNKNOWN_REFERENCE,
            UNKNOWN_REFERENCE,
            STALE,
            INSUFFICIENT_LIMIT,
            APPROVED,
            APPROVED
        ]
    );
    assert_eq!(bal(&out, "d"), (1010, 100));
    assert_eq!(out.last_approved["d"], T0 as i64 + 22);
    assert!(out.regions.contains_key("r_rj"));
    assert!(out.invalid_controls.is_empty());

    // Still deleted at the end: the region is gone, the user is not.
    let deleted = live(
        &us,
        &[],
        &[ctl(0, 0, T0, RefChange::RegionDelete("r_rj".into()))],
    );
    assert!(!deleted.regions.contains_key("r_rj"));
    assert_eq!(deleted.users["d"].region_id, "r_rj");
    assert_eq!(bal(&deleted, "d"), (1000, 0));
}

#[test]
fn rules_as_of_t_for_delay_threshold_and_version() {
    let us = users(&[
        ("a", "r_sp", 10_000_000, 0),
        ("b", "r_sp", 0, 0),
        ("c", "r_sp", 1000, 0),
    ]);
    // 2000 BRL at noon at home: risk 1/18 > 0.
    let big = |id: &str, t: u64| txe(id, "a", "b", "r_sp", "pix", 200_000, t as i64);
    let out = live(
        &us,
        &[
            m(0, 0, T0 + 9, pix("1", "c", "b", 1, T0 + 9 - 500)),
            m(0, 1, T0 + 10, pix("2", "c", "b", 1, T0 + 10 - 500)),
            m(0, 2, T0 + 10, pix("3", "c", "b", 1, T0 + 10 + 11)),
            m(0, 3, T0 + 10, pix("4", "c", "b", 1, T0 + 10 + 10)),
            unparsed(1, 0, T0 + 9),
            unparsed(1, 1, T0 + 10),
            m(2, 0, T0 + 9, big("5", T0 + 9)),
            m(2, 1, T0 + 11, big("6", T0 + 11)),
        ],
        &[ctl(0, 0, T0 + 10, new_rules("v2", 0.0, 10, 300_000))],
    );
    assert_eq!(st(&out, 0, 0), APPROVED);
    assert_eq!(st(&out, 0, 1), LATE);
    assert_eq!(st(&out, 0, 2), INVALID);
    assert_eq!(st(&out, 0, 3), APPROVED);
    assert_eq!(st(&out, 1, 0), INVALID);
    assert_eq!(st(&out, 1, 1), INVALID);
    assert_eq!(st(&out, 2, 0), APPROVED);
    assert_eq!(st(&out, 2, 1), REJECTED_RISK);
    let versions: Vec<&str> = [
        (0, 0),
        (0, 1),
        (0, 2),
        (0, 3),
        (1, 0),
        (1, 1),
        (2, 0),
        (2, 1),
    ]
    .iter()
    .map(|&(p, o)| ver(&out, p, o))
    .collect();
    assert_eq!(
        versions,
        ["default", "v2", "v2", "v2", "default", "v2", "default", "v2"]
    );
    assert_eq!(out.rules, rule_log(&[(0, "default"), (T0 + 10, "v2")]));
}

#[test]
fn rule_3_window_is_the_one_in_force_at_the_earlier_sighting() {
    let x = |id: &str, t: u64| pix(id, "a", "b", 1, t);
    let out = run_live(
        &regions(),
        &abc(1000),
        &[
            // x first seen under a 100 ms window; v2 (10 ms) comes between.
            m(0, 0, T0, x("x", T0)),
            m(0, 1, T0 + 100, x("x", T0 + 100)), // 100 <= 100 (as of T0): duplicate
            m(0, 2, T0 + 111, x("x", T0 + 111)), // 11 > 10 (as of T0 + 100)
            // y first seen under v2.
            m(1, 0, T0 + 60, x("y", T0 + 60)),
            m(1, 1, T0 + 70, x("y", T0 + 70)), // 10 <= 10
            m(1, 2, T0 + 81, x("y", T0 + 81)), // 11 > 10
            // z last seen under v2 at T0 + 150; v3 (1000 ms) in force at T0 + 200
            m(2, 0, T0 + 150, x("z", T0 + 150)),
            m(2, 1, T0 + 200, x("z", T0 + 200)), // 50 > 10 (as of T0 + 150)
            m(2, 2, T0 + 700, x("z", T0 + 700)), // 500 <= 1000 (as of T0 + 200)
        ],
        &[
            ctl(0, 0, T0 + 50, new_rules("v2", 0.5, 1000, 10)),
            ctl(0, 1, T0 + 200, new_rules("v3", 0.5, 1000, 1000)),
        ],
        &rules("default", 0.5, 1000, 100),
    );
    let got: Vec<&str> = [
        (0, 0),
        (0, 1),
        (0, 2),
        (1, 0),
        (1, 1),
        (1, 2),
        (2, 0),
        (2, 1),
        (2, 2),
    ]
    .iter()
    .map(|&(p, o)| st(&out, p, o))
    .collect();
    assert_eq!(
        got,
        [
            APPROVED, DUPLICATE, APPROVED, APPROVED, DUPLICATE, APPROVED, APPROVED, APPROVED,
            DUPLICATE
        ]
    );
    assert_eq!(ver(&out, 0, 1), "v2");
    assert_eq!(ver(&out, 2, 1), "v3");
}

#[test]
fn effective_from_in_the_past_and_in_the_future() {
    let us = users(&[("a", "r_sp", 0, 0), ("b", "r_sp", 0, 0)]);
    let out = live(
        &us,
        &[
            unparsed(0, 0, T0 + 9),
            unparsed(0, 1, T0 + 10),
            unparsed(0, 2, T0 + 20),
            unparsed(0, 3, T0 + 99),
            unparsed(0, 4, T0 + 100),
            m(1, 0, T0 + 49, pix("1", "a", "b", 100, T0 + 49)),
            m(1, 1, T0 + 50, pix("2", "a", "b", 100, T0 + 50)),
        ],
        &[
            // in the past: T = t_c
            ctl_from(
                0,
                0,
                T0 + 10,
                T0 as i64 - 1000,
                new_rules("v2", 0.5, 1000, 300_000),
            ),
            // negative: T = t_c
            ctl_from(0, 1, T0 + 20, -5, new_rules("v3", 0.5, 1000, 300_000)),
            // in the future: T = effective_from, after v3 although published earlier
            // than the message at T0 + 99
            ctl_from(
                0,
                2,
                T0 + 30,
                T0 as i64 + 100,
                new_rules("v4", 0.5, 1000, 300_000),
            ),
            // a future adjustment: a has no money until T0 + 50
            ctl_from(1, 0, T0, T0 as i64 + 50, adjust("a", 100)),
        ],
    );
    let versions: Vec<&str> = (0..5).map(|o| ver(&out, 0, o)).collect();
    assert_eq!(versions, ["default", "v2", "v3", "v3", "v4"]);
    assert_eq!(
        out.rules,
        rule_log(&[
            (0, "default"),
            (T0 + 10, "v2"),
            (T0 + 20, "v3"),
            (T0 + 100, "v4")
        ])
    );
    assert_eq!(st(&out, 1, 0), INSUFFICIENT_BALANCE);
    assert_eq!(st(&out, 1, 1), APPROVED);
    assert_eq!(bal(&out, "a"), (0, 0));
}

#[test]
fn same_t_changes_on_two_partitions_apply_in_partition_then_offset_order() {
    // Input order: partition 1 first; application order: partition 0 first.
    let out = live(
        &abc(1000),
        &[
            m(0, 0, T0 + 10, pix("1", "a", "b", 1, T0 + 10)),
            m(0, 1, T0 + 20, pix("2", "a", "n", 1, T0 + 20)),
            m(0, 2, T0 + 30, pix("3", "a", "c", 1, T0 + 30)),
        ],
        &[
            ctl(1, 0, T0 + 10, RefChange::UserDelete("b".into())),
            ctl(1, 1, T0 + 20, user("n", "r_sp", 5, 0)),
            ctl(1, 2, T0 + 30, new_rules("v3", 0.5, 1000, 300_000)),
            ctl(0, 7, T0 + 10, user("b", "r_rj", 5, 0)),
            // deleting n before it exists: nothing, and not invalid
            ctl(0, 8, T0 + 20, RefChange::UserDelete("n".into())),
            ctl(0, 9, T0 + 30, new_rules("v2", 0.5, 1000, 300_000)),
            ctl(0, 10, T0 + 30, new_rules("v4", 0.5, 1000, 300_000)),
        ],
    );
    // b: updated by (0, 7), then deleted by (1, 0).
    assert_eq!(st(&out, 0, 0), UNKNOWN_REFERENCE);
    assert!(!out.balances.contains_key("b"));
    // n: (0, 8) deletes nothing, then (1, 1) creates it.
    assert_eq!(st(&out, 0, 1), APPROVED);
    assert_eq!(bal(&out, "n"), (6, 0));
    // rules: (0, 9) v2, (0, 10) v4, (1, 2) v3.
    assert_eq!(ver(&out, 0, 2), "v3");
    assert_eq!(
        out.rules,
        rule_log(&[
            (0, "default"),
            (T0 + 30, "v2"),
            (T0 + 30, "v4"),
            (T0 + 30, "v3")
        ])
    );
    assert!(out.invalid_controls.is_empty());
}

#[test]
fn a_reused_version_is_invalid() {
    let us = users(&[("a", "r_sp", 10_000_000, 0), ("b", "r_sp", 0, 0)]);
    // 2000 BRL at noon at home: risk 1/18, approved under 0.5, rejected under 0.0.
    let big = |id: &str, t: u64| txe(id, "a", "b", "r_sp", "pix", 200_000, t as i64);
    let out = live(
        &us,
        &[
            m(0, 0, T0 + 10, big("1", T0 + 10)),
            m(0, 1, T0 + 30, big("2", T0 + 30)),
            m(0, 2, T0 + 100, big("3", T0 + 100)),
        ],
        &[
            // the initial version reused
            ctl(0, 0, T0 + 10, new_rules("default", 0.0, 1000, 300_000)),
            ctl(0, 1, T0 + 20, new_rules("v2", 0.5, 1000, 300_000)),
            // v2 reused, with other parameters: they do not apply
            ctl(0, 2, T0 + 30, new_rules("v2", 0.0, 1000, 300_000)),
            // invalid for its threshold: v3 is not used by it …
            ctl(0, 3, T0 + 40, new_rules("v3", -1.0, 1000, 300_000)),
            // … so this v3 is valid
            ctl(0, 4, T0 + 50, new_rules("v3", 0.5, 1000, 300_000)),
            // "before" is application order: published first (t_c = T0 + 5) but
            // effective at T0 + 100, after (2, 0)'s v9 at T0 + 60
            ctl_from(
                1,
                0,
                T0 + 5,
                T0 as i64 + 100,
                new_rules("v9", 0.5, 1000, 300_000),
            ),
            ctl(2, 0, T0 + 60, new_rules("v9", 0.0, 1000, 300_000)),
        ],
    );
    assert_eq!(
        out.invalid_controls,
        positions(&[(0, 0), (0, 2), (0, 3), (1, 0)])
    );
    assert_eq!(
        out.rules,
        rule_log(&[
            (0, "default"),
            (T0 + 20, "v2"),
            (T0 + 50, "v3"),
            (T0 + 60, "v9")
        ])
    );
    assert_eq!((st(&out, 0, 0), ver(&out, 0, 0)), (APPROVED, "default"));
    assert_eq!((st(&out, 0, 1), ver(&out, 0, 1)), (APPROVED, "v2"));
    assert_eq!((st(&out, 0, 2), ver(&out, 0, 2)), (REJECTED_RISK, "v9"));
}

#[test]
fn invalid_control_records_change_nothing() {
    let nan_rules = new_rules("vn", f64::NAN, 1000, 300_000);
    let out = live(
        &abc(1000),
        &[m(0, 0, T0 + 100, pix("1", "a", "b", 1000, T0 + 100))],
        &[
            RefControl {
                change: None,
                ..ctl(0, 0, T0, RefChange::UserDelete("a".into()))
            },
            ctl(0, 1, T0, region("r_new", "XX", 0.0, 0.0)),
            ctl(0, 2, T0, region("r_sp", "SP", 91.0, 0.0)),
            ctl(0, 3, T0, region("r_sp", "SP", 0.0, -180.5)),
            ctl(0, 4, T0, user("n", "r_sp", -1, 0)),
            ctl(0, 5, T0, user("a", "r_sp", 0, -1)),
            ctl(0, 6, T0, user("", "r_sp", 0, 0)),
            ctl(0, 7, T0, RefChange::UserDelete(String::new())),
            ctl(0, 8, T0, RefChange::RegionDelete(String::new())),
            ctl(0, 9, T0, nan_rules),
            ctl(0, 10, T0, new_rules("", 0.5, 1000, 300_000)),
        ],
    );
    assert_eq!(out.invalid_controls, (0..=10).map(|o| (0, o)).collect());
    // Everything else is as without the control records.
    let mut without = go(
        &abc(1000),
        &[m(0, 0, T0 + 100, pix("1", "a", "b", 1000, T0 + 100))],
    );
    assert_eq!(st(&without, 0, 0), APPROVED);
    without.invalid_controls = out.invalid_controls.clone();
    assert_eq!(out, without);
}

#[test]
fn control_arrival_times_are_clamped_per_partition_and_redeliveries_ignored() {
    let out = live(
        &abc(1000),
        &[
            // control positions are apart from message positions
            unparsed(0, 0, T0),
            unparsed(0, 1, T0 + 99),
            unparsed(0, 2, T0 + 100),
        ],
        &[
            ctl(0, 0, T0 + 100, adjust("a", 10)),
            // record_ts goes back: t_c is clamped to T0 + 100
            ctl(0, 1, T0, new_rules("v2", 0.5, 1000, 300_000)),
            // a re-delivery of (0, 0), other content and timestamp: ignored
            ctl(0, 0, T0 + 200, adjust("a", 1000)),
            RefControl {
                change: None,
                ..ctl(0, 1, T0 + 300, adjust("a", 1))
            },
            // another control partition has its own clock
            ctl(1, 0, T0, new_rules("v3", 0.5, 1000, 300_000)),
        ],
    );
    assert_eq!(
        out.rules,
        rule_log(&[(0, "default"), (T0, "v3"), (T0 + 100, "v2")])
    );
    let versions: Vec<&str> = (0..3).map(|o| ver(&out, 0, o)).collect();
    assert_eq!(versions, ["v3", "v3", "v2"]);
    assert_eq!(bal(&out, "a"), (1010, 0));
    assert!(out.invalid_controls.is_empty());
}

/// A change that takes effect after the end of the input (the greatest arrival time of any
/// record) is not applied, and is not judged: it stays pending. One at the last arrival
/// time is applied.
#[test]
fn changes_after_the_end_of_the_input_stay_pending() {
    let us = users(&[("a", "r_sp", 100, 0), ("b", "r_sp", 0, 0)]);
    let out = live(
        &us,
        &[m(0, 0, T0 + 10, pix("1", "a", "b", 50, T0 + 10))],
        &[
            // at the last arrival time (T0 + 10): applied
            ctl_from(0, 0, T0, (T0 + 10) as i64, adjust("a", 7)),
            // after it: neither applied nor invalid
            ctl_from(0, 1, T0, (T0 + 11) as i64, adjust("a", 1_000)),
            ctl_from(0, 2, T0, (T0 + 99) as i64, adjust("nobody", 1)),
        ],
    );
    assert_eq!(bal(&out, "a"), (57, 0));
    assert!(out.invalid_controls.is_empty());
}

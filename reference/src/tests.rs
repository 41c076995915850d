//! Unit tests of the reference implementation: exact expected values from the SPEC.

use super::*;
use serde_json::json;

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
            })
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
            scores: None
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
            })
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

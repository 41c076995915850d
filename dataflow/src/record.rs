//! The SPEC §8 decision record: the one shape in which a decision leaves the pipeline,
//! whatever the store (replay's decision lines, the decisions topic, Redis, PostgreSQL's
//! quarantine, the query API).

use serde::Serialize;

use crate::graph::Decision;
use crate::parse::format_utc_ms;
use crate::Status;

/// The SPEC §8 decision record, as one JSON object.
#[derive(Serialize)]
pub struct DecisionRecord<'a> {
    /// Source partition (SPEC §4 source position).
    pub partition: i32,
    /// Source offset, or sequence number for sources without partitions.
    pub offset: i64,
    /// Arrival time `t`, ms since the Unix epoch (SPEC §4).
    pub t: u64,
    /// The SPEC §5 status name.
    pub status: &'static str,
    /// `id_transacao`, when the message parsed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a str>,
    /// The payer's user id, when the message parsed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payer_id: Option<&'a str>,
    /// The payee's user id, when the message parsed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payee_id: Option<&'a str>,
    /// The transaction region's id, when the message parsed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region_id: Option<&'a str>,
    /// The canonical payment mode, when the message parsed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<&'static str>,
    /// The amount in integer cents, when the message parsed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount_cents: Option<i64>,
    /// The event time E in RFC 3339 UTC with ms, when the message parsed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_time: Option<String>,
    /// The SPEC §6 value risk, when assessed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_risk: Option<f64>,
    /// The SPEC §6 hour risk, when assessed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hour_risk: Option<f64>,
    /// The SPEC §6 distance risk, when assessed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distance_risk: Option<f64>,
    /// The combined SPEC §6 risk, when assessed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub risk: Option<f64>,
    /// Why an `invalid` message is invalid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
    /// Which reference is unknown, for `unknown_reference`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
}

impl<'a> DecisionRecord<'a> {
    /// The record of decision `d`, borrowing its ids and texts.
    pub fn of(d: &'a Decision) -> Self {
        let tx = d.tx.as_ref();
        let (error, reason) = match d.status {
            Status::Invalid => (d.reason.as_deref(), None),
            _ => (None, d.reason.as_deref()),
        };
        DecisionRecord {
            partition: d.pos.partition,
            offset: d.pos.offset,
            t: d.t,
            status: d.status.as_str(),
            id: tx.map(|tx| tx.id.as_str()),
            payer_id: tx.map(|tx| tx.payer.as_str()),
            payee_id: tx.map(|tx| tx.payee.as_str()),
            region_id: tx.map(|tx| tx.region.as_str()),
            mode: tx.map(|tx| tx.mode.as_str()),
            amount_cents: tx.map(|tx| tx.amount_cents),
            event_time: tx.map(|tx| format_utc_ms(tx.event_ms)),
            value_risk: d.scores.map(|s| s.value_risk),
            hour_risk: d.scores.map(|s| s.hour_risk),
            distance_risk: d.scores.map(|s| s.distance_risk),
            risk: d.scores.map(|s| s.risk),
            error,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Mode, SourcePos, Tx};

    #[test]
    fn record_has_spec_fields() {
        let d = Decision {
            pos: SourcePos {
                partition: 2,
                offset: 7,
            },
            t: 1000,
            ingest_us: 0,
            status: Status::Late,
            tx: Some(Tx {
                id: "x".into(),
                payer: "a".into(),
                payee: "b".into(),
                region: "r".into(),
                mode: Mode::Debito,
                amount_cents: 123,
                event_ms: 0,
            }),
            scores: None,
            reason: None,
            raw: None,
            home_band: None,
        };
        let v: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&DecisionRecord::of(&d)).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"partition": 2, "offset": 7, "t": 1000, "status": "late",
                "id": "x", "payer_id": "a", "payee_id": "b", "region_id": "r", "mode": "debito",
                "amount_cents": 123, "event_time": "1970-01-01T00:00:00.000Z"})
        );
    }
}

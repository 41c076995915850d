//! The SPEC §8 decision record: the one shape in which a decision leaves the pipeline,
//! whatever the store (replay's decision lines, the decisions topic, Redis, PostgreSQL's
//! quarantine, the query API).

use serde::Serialize;

use crate::calendar::format_utc_ms;
use crate::graph::Decision;
use crate::rules::Scores;
use crate::Status;

/// The SPEC §8 decision record, as one JSON object. The transaction's fields are there
/// when the message parsed, the scores when it was assessed: each group whole or not at
/// all.
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
    /// The parsed transaction's fields.
    #[serde(flatten)]
    pub tx: Option<TxFields<'a>>,
    /// The SPEC §6 scores (`value_risk`, `hour_risk`, `distance_risk`, `risk`).
    #[serde(flatten)]
    pub scores: Option<Scores>,
    /// Why an `invalid` message is invalid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
    /// Which reference is unknown, for `unknown_reference`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    /// The version of the rule set in force at `t` (SPEC §11).
    pub rules_version: &'a str,
}

/// The fields of a parsed transaction in a [`DecisionRecord`].
#[derive(Serialize)]
pub struct TxFields<'a> {
    /// `id_transacao`, exactly as parsed.
    pub id: &'a str,
    /// The payer's user id.
    pub payer_id: &'a str,
    /// The payee's user id.
    pub payee_id: &'a str,
    /// The transaction region's id.
    pub region_id: &'a str,
    /// The canonical payment mode.
    pub mode: &'static str,
    /// The amount in integer cents.
    pub amount_cents: i64,
    /// The event time E in RFC 3339 UTC with ms.
    pub event_time: String,
}

impl<'a> DecisionRecord<'a> {
    /// The record of decision `d`, borrowing its ids and texts.
    pub fn of(d: &'a Decision) -> Self {
        let (error, reason) = match d.status {
            Status::Invalid => (d.reason.as_deref(), None),
            _ => (None, d.reason.as_deref()),
        };
        DecisionRecord {
            partition: d.pos.partition,
            offset: d.pos.offset,
            t: d.t,
            status: d.status.as_str(),
            tx: d.tx.as_ref().map(|tx| TxFields {
                id: tx.id.as_str(),
                payer_id: tx.payer.as_str(),
                payee_id: tx.payee.as_str(),
                region_id: tx.region.as_str(),
                mode: tx.mode.as_str(),
                amount_cents: tx.amount_cents,
                event_time: format_utc_ms(tx.event_ms),
            }),
            scores: d.scores,
            error,
            reason,
            rules_version: d.rules_version.as_str(),
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
            uf: None,
            rules_version: "v7".into(),
        };
        let v: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&DecisionRecord::of(&d)).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"partition": 2, "offset": 7, "t": 1000, "status": "late",
                "id": "x", "payer_id": "a", "payee_id": "b", "region_id": "r", "mode": "debito",
                "amount_cents": 123, "event_time": "1970-01-01T00:00:00.000Z",
                "rules_version": "v7"})
        );
    }
}

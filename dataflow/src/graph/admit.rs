//! What a source lets in: SPEC §3 parsing of a transaction message, or a control record
//! (SPEC §11) parsed. The time rules (1–2) need the rule set in force at the message's
//! time: they are `Dedup`'s.

use timely::dataflow::operators::OkErr;
use timely::dataflow::StreamVec;

use crate::control::parse_control;
use crate::model::{Status, Time};
use crate::parse::parse_transaction;

use super::*;

/// Parses one message (§3): `Ok` is on its way to rules 1–3 (a transaction that parsed)
/// or to the live changes (a control record, whatever parsing made of it); `Err` is the
/// decision of a message that did not parse or that its source refused.
// The `Err` side is the decision itself, moved straight into its stream: boxing it would
// only add an allocation per decided message.
#[allow(clippy::result_large_err)]
pub fn admit(m: Incoming) -> Result<Admitted, Decision> {
    let (tx, raw) = match m.body {
        Body::Parsed(tx) => (tx, None),
        Body::Refused { raw, error } => {
            return Err(Decision {
                reason: Some(error),
                raw: Some(raw),
                ..Decision::new(m.pos, m.t, m.ingest_us, Status::Invalid)
            })
        }
        Body::Raw(bytes) => match parse_transaction(&bytes) {
            Ok(tx) => (tx, Some(bytes)),
            Err(e) => {
                return Err(Decision {
                    reason: Some(e.to_string()),
                    raw: Some(bytes),
                    ..Decision::new(m.pos, m.t, m.ingest_us, Status::Invalid)
                })
            }
        },
        Body::Control(raw) => {
            let parsed = parse_control(&raw).map_err(|e| e.to_string());
            return Ok(Admitted::Control(ControlIn {
                pos: m.pos,
                t: m.t,
                raw,
                parsed,
                resumed: false,
            }));
        }
        Body::End => return Ok(Admitted::End(m.t)),
        Body::ControlRefused { raw, error } => {
            return Ok(Admitted::Control(ControlIn {
                pos: m.pos,
                t: m.t,
                raw,
                parsed: Err(error),
                resumed: false,
            }))
        }
    };
    // Only a message whose event time is after its arrival time can be found in the
    // future by rule 1: only its payload is kept for the dead-letter record.
    let raw = raw.filter(|_| tx.event_ms > m.t as i64).map(Box::new);
    Ok(Admitted::Tx(Pending {
        pos: m.pos,
        t: m.t,
        ingest_us: m.ingest_us,
        tx,
        raw,
    }))
}

/// [`admit`] as an operator of its own (for a stream of messages not admitted at its
/// source).
#[allow(clippy::result_large_err)]
pub fn validate<'s>(
    messages: StreamVec<'s, Time, Incoming>,
) -> (StreamVec<'s, Time, Admitted>, StreamVec<'s, Time, Decision>) {
    messages.ok_err(admit)
}

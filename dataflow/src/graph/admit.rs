//! Rules 1–2 (SPEC §3–4): parse, then the future/late time rules.

// Per-worker maps keyed by ids: a fast hasher (their iteration order is never used).

use timely::dataflow::operators::OkErr;
use timely::dataflow::StreamVec;

use crate::model::{Params, Status, Time};
use crate::parse::parse_transaction;
use crate::rules::{self, TimeVerdict};

use super::*;

/// Rules 1–2 for one message: parse (§3), then the future/late time rules. `Ok` is on
/// its way to the duplicate check; `Err` is its decision.
// The `Err` side is the decision itself, moved straight into its stream: boxing it would
// only add an allocation per decided message.
#[allow(clippy::result_large_err)]
pub fn admit(m: Incoming, params: &Params) -> Result<Pending, Decision> {
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
    };
    match rules::time_rule(m.t, tx.event_ms, params) {
        None => Ok(Pending {
            pos: m.pos,
            t: m.t,
            ingest_us: m.ingest_us,
            tx,
        }),
        Some(TimeVerdict::Future) => Err(Decision {
            reason: Some(format!(
                "event time is more than {} ms after arrival time",
                params.max_delay_ms
            )),
            raw,
            tx: Some(tx),
            ..Decision::new(m.pos, m.t, m.ingest_us, Status::Invalid)
        }),
        Some(TimeVerdict::Late) => Err(Decision {
            tx: Some(tx),
            ..Decision::new(m.pos, m.t, m.ingest_us, Status::Late)
        }),
    }
}

/// Rules 1–2 as an operator of their own (for a stream of messages not admitted at its
/// source).
#[allow(clippy::result_large_err)]
pub fn validate<'s>(
    messages: StreamVec<'s, Time, Incoming>,
    params: Params,
) -> (StreamVec<'s, Time, Pending>, StreamVec<'s, Time, Decision>) {
    messages.ok_err(move |m: Incoming| admit(m, &params))
}

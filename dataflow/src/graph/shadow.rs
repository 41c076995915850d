//! Shadow rule sets (SPEC §12): the same transaction messages decided again under another
//! rule set, as if it had been in force from the start, by a second ledger of its own
//! (`Dedup` and `Decide` with their own rule 3 memory, balances, credit used and last
//! approvals) that shares with the ledger of record what does not depend on the rules:
//! the parsed messages, the reference arrangements and the user events of the live
//! changes. Its `rules` are fixed: it follows every control change but those. The
//! **what-if** analysis pairs each message's decision of record with the shadow's.

use std::collections::{BTreeMap, HashMap};

use differential_dataflow::operators::CountTotal;
use differential_dataflow::trace::implementations::{KeyBatcher, KeySpine};
use differential_dataflow::AsCollection;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Capability, Concat};

use crate::analyses::{WhatIfKey, WhatIfTally};

use super::frontier::ready;
use super::*;

/// What a shadow's ledger produces, as it leaves the graph (tagged with the shadow's
/// index in [`Outputs::shadow_versions`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ShadowRecord {
    /// A shadow decision (never a decision of record).
    Decision(Decision),
    /// A user's state in the shadow's ledger after a timestamp that changed it.
    Account(Account),
    /// A change to one of the shadow's ten analyses, at the time it carries.
    Analysis((AnalysisKey, Tally), Time, isize),
    /// A change to the shadow's what-if analysis, at the time it carries.
    WhatIf((WhatIfKey, WhatIfTally), Time, isize),
}

/// The rule set of record, what passed its rules 1–3 and what they decided.
pub(super) type RecordDedup<'s> = (
    RuleSet,
    StreamVec<'s, Time, Pending>,
    StreamVec<'s, Time, Decision>,
);

/// A shadow record with its shadow's index.
pub type Shadowed = (u16, ShadowRecord);

/// Builds one ledger per shadow rule set beside the ledger of record, and the what-if
/// analysis of each against the `primary` decisions; what the shadows produce (their
/// decisions and account states only if `spec.ledgers`), in one stream.
#[allow(clippy::too_many_arguments)]
pub(super) fn shadows<'s>(
    spec: &Shadows,
    primary: &StreamVec<'s, Time, Decision>,
    record_dedup: Option<&RecordDedup<'s>>,
    pending: &StreamVec<'s, Time, Pending>,
    invalid: &StreamVec<'s, Time, Decision>,
    regions: &RefArranged<'s, RegionVal>,
    users: &RefArranged<'s, UserVal>,
    user_events: &StreamVec<'s, Time, UserEvent>,
    params: Params,
) -> StreamVec<'s, Time, Shadowed> {
    let scope = primary.scope();
    let mut out: StreamVec<'s, Time, Shadowed> = Vec::<Shadowed>::new().to_stream(scope);
    for (index, set) in spec.sets.iter().enumerate() {
        let index = u16::try_from(index).expect("at most 65,536 shadows");
        // Its own rule set, in force from the start, never changed: no rule changes, no
        // resume state.
        let book = RuleBook::new(set.clone(), &[]);
        let no_rules = Vec::<RuleChange>::new().to_stream(scope);
        let (passed, decided_early) = match record_dedup {
            // Rules 1–3 decide as the record's do: what passed them is shared, and what
            // they decided is the shadow's too, under its version.
            Some((record, passed, early))
                if record.max_delay_ms == set.max_delay_ms
                    && record.dedup_window_ms == set.dedup_window_ms =>
            {
                let version = Id::from(set.version.as_str());
                (
                    passed.clone(),
                    early.clone().map(move |mut d| {
                        d.rules_version.clone_from(&version);
                        d
                    }),
                )
            }
            _ => dedup(
                pending.clone(),
                invalid.clone(),
                Vec::<(String, Time)>::new().to_stream(scope),
                no_rules.clone(),
                book.clone(),
                params,
            ),
        };
        let (decided, accounts) = decide(
            scope,
            passed,
            Vec::<Account>::new().to_stream(scope),
            regions.clone(),
            users.clone(),
            user_events.clone(),
            no_rules,
            book,
            params,
        );
        let (decisions, analyses) = tally::analyses(
            [decided, decided_early],
            Vec::<((AnalysisKey, ()), Time, Tally)>::new().to_stream(scope),
        );
        if spec.ledgers {
            let what_if = what_if(primary.clone(), decisions.clone());
            out = out
                .concat(decisions.map(move |d| (index, ShadowRecord::Decision(d))))
                .concat(accounts.map(move |a| (index, ShadowRecord::Account(a))))
                .concat(
                    what_if
                        .inner
                        .map(move |(row, t, diff)| (index, ShadowRecord::WhatIf(row, t, diff))),
                );
        } else {
            let what_if = what_if(primary.clone(), decisions);
            out = out.concat(
                what_if
                    .inner
                    .map(move |(row, t, diff)| (index, ShadowRecord::WhatIf(row, t, diff))),
            );
        }
        out = out.concat(
            analyses
                .inner
                .map(move |(row, t, diff)| (index, ShadowRecord::Analysis(row, t, diff))),
        );
    }
    out
}

/// Where a message's two decisions meet: a hash of its source position.
fn pos_hash(pos: &SourcePos) -> u64 {
    let x = (pos.offset as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (pos.partition as u64);
    x ^ (x >> 29)
}

/// One side's decision of a message, waiting for the other side's.
type Seen = (Status, Option<Cents>);

/// The what-if analysis of one shadow: each message's decision of record and shadow
/// decision meet at the owner of its source position; once both inputs have passed a
/// time, the pairs completed there are counted at that time (the later of the two
/// decisions' times: the same for any number of workers), then accumulated by key.
fn what_if<'s>(
    primary: StreamVec<'s, Time, Decision>,
    shadow: StreamVec<'s, Time, Decision>,
) -> VecCollection<'s, Time, (WhatIfKey, WhatIfTally), isize> {
    let mut builder = OperatorBuilder::new("WhatIf".to_owned(), primary.scope());
    let mut primary_in = builder.new_input(primary, Exchange::new(|d: &Decision| pos_hash(&d.pos)));
    let mut shadow_in = builder.new_input(shadow, Exchange::new(|d: &Decision| pos_hash(&d.pos)));
    let (rows_out, rows) = builder.new_output();
    let mut rows_out = OutputBuilder::<
        _,
        timely::container::CapacityContainerBuilder<Vec<((WhatIfKey, ()), Time, WhatIfTally)>>,
    >::from(rows_out);
    builder.build(move |_caps| {
        // Decisions by the time they came at: (side, position, status, amount); side 0 is
        // the primary.
        type Stash = Vec<(u8, SourcePos, Status, Option<Cents>)>;
        let mut stash: BTreeMap<Time, (Capability<Time>, Stash)> = BTreeMap::new();
        let mut waiting: [HashMap<SourcePos, Seen>; 2] = [HashMap::new(), HashMap::new()];
        let mut counted: BTreeMap<WhatIfKey, WhatIfTally> = BTreeMap::new();
        move |frontiers| {
            for (side, input) in [&mut primary_in, &mut shadow_in].into_iter().enumerate() {
                input.for_each(|cap, data| {
                    let Some(&t) = cap.least() else { return };
                    let (_, stashed) = stash
                        .entry(t)
                        .or_insert_with(|| (cap.delayed(&t, 0), Vec::new()));
                    stashed.extend(data.drain(..).map(|d| {
                        (
                            side as u8,
                            d.pos,
                            d.status,
                            d.tx.as_ref().map(|tx| tx.amount_cents),
                        )
                    }));
                });
            }
            let mut rows_h = rows_out.activate();
            while let Some(entry) = stash.first_entry() {
                let t = *entry.key();
                if !ready(frontiers, &t) {
                    break;
                }
                let (cap, stashed) = entry.remove();
                for (side, pos, status, amount) in stashed {
                    let side = usize::from(side);
                    let Some((other, _)) = waiting[1 - side].remove(&pos) else {
                        waiting[side].insert(pos, (status, amount));
                        continue;
                    };
                    let key = if side == 0 {
                        WhatIfKey {
                            primary: status,
                            shadow: other,
                        }
                    } else {
                        WhatIfKey {
                            primary: other,
                            shadow: status,
                        }
                    };
                    let row = counted.entry(key).or_default();
                    row.count += 1;
                    row.amount_cents += i128::from(amount.unwrap_or(0));
                }
                if !counted.is_empty() {
                    let mut session = rows_h.session(&cap);
                    for (key, tally) in std::mem::take(&mut counted) {
                        session.give(((key, ()), t, tally));
                    }
                }
            }
        }
    });
    rows.as_collection()
        .arrange_named::<KeyBatcher<WhatIfKey, Time, WhatIfTally>, KeySpine<WhatIfKey, Time, WhatIfTally>>(
            "Arrange: WhatIf",
            KeyBatcher::new,
        )
        .count_total()
}

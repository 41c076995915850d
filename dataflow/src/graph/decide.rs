//! `Decide`: rules 4–8 at the payer's owner, with the credits loop.

use std::collections::BTreeMap;

use compact_str::CompactString;

// Per-worker maps keyed by ids: a fast hasher (their iteration order is never used).
use foldhash::{HashMap, HashMapExt};

use differential_dataflow::Hashable;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::{Capability, ConnectLoop, Feedback};
use timely::dataflow::{Scope, StreamVec};

use crate::model::{Params, Status, Time};
use crate::rules;

use super::reference::*;
use super::stash::*;
use super::*;

/// A user's runtime state (SPEC §2), owned by exactly one worker.
pub(super) struct State {
    funds: rules::Funds,
    /// The last timestamp that changed this user (to report each change once).
    touched: Option<Time>,
}

impl State {
    /// A user's state from its reference data, or from its state at the resume point.
    pub(super) fn resumed(r: &UserVal, resumed: Option<Account>) -> Self {
        match resumed {
            Some(a) => State {
                funds: rules::Funds {
                    balance_cents: a.balance_cents,
                    credit_limit_cents: r.credit_limit_cents,
                    credit_used_cents: a.credit_used_cents,
                    last_approved_ms: a.last_approved_ms,
                },
                touched: None,
            },
            None => State {
                funds: rules::Funds {
                    balance_cents: r.balance_cents,
                    credit_limit_cents: r.credit_limit_cents,
                    credit_used_cents: 0,
                    last_approved_ms: None,
                },
                touched: None,
            },
        }
    }
}

/// Memo of great-circle distances between coordinate pairs: homes and transaction
/// regions are regions, so few distinct pairs recur. Direct-mapped; the same value as
/// computing it (a pure function of the pair).
pub(super) struct DistanceMemo {
    slots: Vec<Option<(Geo, Geo, f64)>>,
}

impl Default for DistanceMemo {
    fn default() -> Self {
        DistanceMemo {
            slots: vec![None; 1 << 12],
        }
    }
}

impl DistanceMemo {
    pub(super) fn km(&mut self, a: &Geo, b: &Geo) -> f64 {
        let mix = (a.lat_bits ^ a.lon_bits.rotate_left(17)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (b.lat_bits.rotate_left(31) ^ b.lon_bits.rotate_left(47))
                .wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        let slot = &mut self.slots[(mix >> 52) as usize];
        match slot {
            Some((x, y, km)) if x == a && y == b => *km,
            _ => {
                let km = a.km_to(b);
                *slot = Some((*a, *b, km));
                km
            }
        }
    }
}

/// The first eight bytes of an id, big-endian, zero-padded: ordering by it agrees with
/// ordering ids by their bytes, except that equal prefixes need the whole ids compared.
pub(super) fn id_prefix(id: &str) -> u64 {
    let mut bytes = [0u8; 8];
    let n = id.len().min(8);
    bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
    u64::from_be_bytes(bytes)
}

/// What `Decide` holds for a timestamp: a capability for each output, its messages and
/// its credits.
pub(super) type DecideAt = ([Capability<Time>; 3], Vec<Pending>, Vec<Credit>);
pub(super) type DecideStash = BTreeMap<Time, DecideAt>;

/// The stash entry of the timestamp of `cap`, made on first use.
pub(super) fn decide_slot<'a>(
    stash: &'a mut DecideStash,
    cap: &timely::dataflow::operators::InputCapability<Time>,
) -> Option<&'a mut DecideAt> {
    let t = *cap.least()?;
    Some(stash.entry(t).or_insert_with(|| {
        (
            [cap.delayed(&t, 0), cap.delayed(&t, 1), cap.delayed(&t, 2)],
            Vec::new(),
            Vec::new(),
        )
    }))
}

/// Rules 5–8 at the payer's owner, with credits arriving around a +1 ms feedback edge.
pub(super) fn decide<'s>(
    scope: Scope<'s, Time>,
    pending: StreamVec<'s, Time, Pending>,
    seeded: StreamVec<'s, Time, Account>,
    regions: RefArranged<'s, RegionVal>,
    users: RefArranged<'s, UserVal>,
    params: Params,
) -> (StreamVec<'s, Time, Decision>, StreamVec<'s, Time, Account>) {
    let (loop_handle, credits) = scope.feedback::<Vec<Credit>>(1);
    let mut builder = OperatorBuilder::new("Decide".to_owned(), scope);
    let mut msgs = builder.new_input(pending, Exchange::new(|p: &Pending| p.tx.payer.hashed()));
    let mut credit_in = builder.new_input(credits, Exchange::new(|c: &Credit| c.payee.hashed()));
    // The reference arrangements are replicated: read locally. Their frontiers (inputs 2
    // and 3) say when they are complete through a time.
    let mut region_batches = builder.new_input(regions.stream, Pipeline);
    let mut user_batches = builder.new_input(users.stream, Pipeline);
    let mut seeded_in = builder.new_input(seeded, Exchange::new(|a: &Account| a.user.hashed()));
    let mut region_index: RefIndex<RegionVal> = RefIndex::new(regions.trace);
    let mut user_index: RefIndex<UserVal, Option<State>> = RefIndex::new(users.trace);
    let (decision_out, decisions) = builder.new_output();
    let (credit_out, credit_stream) = builder.new_output();
    let (account_out, accounts) = builder.new_output();
    let mut decision_out = OutputBuilder::<
        _,
        timely::container::CapacityContainerBuilder<Vec<Decision>>,
    >::from(decision_out);
    let mut credit_out =
        OutputBuilder::<_, timely::container::CapacityContainerBuilder<Vec<Credit>>>::from(
            credit_out,
        );
    let mut account_out = OutputBuilder::<
        _,
        timely::container::CapacityContainerBuilder<Vec<Account>>,
    >::from(account_out);
    builder.build(move |_caps| {
        let mut stash = DecideStash::new();
        let mut changed: Vec<CompactString> = Vec::new();
        let mut order: Vec<(u64, u32)> = Vec::new();
        let mut km = DistanceMemo::default();
        // Resume state of users this worker owns, applied when each is first touched.
        let mut resumed: HashMap<CompactString, Account> = HashMap::new();
        move |frontiers| {
            seeded_in.for_each(|_, data| {
                for a in data.drain(..) {
                    resumed.insert(CompactString::from(a.user.as_str()), a);
                }
            });
            // Reference data is reloaded as soon as it changes, not when a message first
            // needs it.
            region_batches.for_each(|_, spans| region_index.observe(spans));
            user_batches.for_each(|_, spans| user_index.observe(spans));
            region_index.refresh();
            user_index.refresh();
            msgs.for_each(|cap, data| {
                if let Some((_, msgs_at, _)) = decide_slot(&mut stash, &cap) {
                    msgs_at.append(data);
                }
            });
            credit_in.for_each(|cap, data| {
                if let Some((_, _, credits_at)) = decide_slot(&mut stash, &cap) {
                    credits_at.append(data);
                }
            });
            let mut decision_h = decision_out.activate();
            let mut credit_h = credit_out.activate();
            let mut account_h = account_out.activate();
            while let Some(entry) = stash.first_entry() {
                let t = *entry.key();
                if !ready(frontiers, &t) {
                    break;
                }
                let (caps, mut msgs_at, credits_at) = entry.remove();
                // Credits first: they come from approvals at earlier timestamps.
                for c in credits_at {
                    let slot = user_index.state_of(&c.payee);
                    let s = slot.get_or_insert_with(|| {
                        State::resumed(&c.payee_ref, resumed.remove(c.payee.as_str()))
                    });
                    s.funds.balance_cents += c.amount_cents;
                    if s.touched != Some(t) {
                        s.touched = Some(t);
                        changed.push(CompactString::from(c.payee.as_str()));
                    }
                }
                // Ledger order (id, then source position) through an index sorted by a
                // prefix of the id: whole ids are compared only on equal prefixes.
                order.clear();
                order.extend(
                    msgs_at
                        .iter()
                        .enumerate()
                        .map(|(i, p)| (id_prefix(&p.tx.id), i as u32)),
                );
                order.sort_unstable_by(|(ka, ia), (kb, ib)| {
                    ka.cmp(kb).then_with(|| {
                        let (a, b) = (&msgs_at[*ia as usize], &msgs_at[*ib as usize]);
                        (&a.tx.id, a.pos).cmp(&(&b.tx.id, b.pos))
                    })
                });
                let mut decision_s = decision_h.session(&caps[0]);
                let mut credit_s = credit_h.session(&caps[1]);
                for p in take_in_order(&mut msgs_at, &order) {
                    // Rule 4: every reference must be known.
                    let region = region_index.get(&p.tx.region, t, |r| r.geo);
                    let payee = user_index.get(&p.tx.payee, t, |u| *u);
                    let known = match (region, payee) {
                        (Some(region), Some(payee)) => user_index
                            .get_with_state(&p.tx.payer, t)
                            .map(|(payer, slot)| (region, payee, payer, slot)),
                        _ => None,
                    };
                    let Some((region, payee, payer, slot)) = known else {
                        // Which reference, not its id: the id is in the record already,
                        // exactly as parsed (SPEC §8), however long or odd it is.
                        let what = match (region, payee) {
                            (None, _) => "unknown region",
                            (Some(_), None) => "unknown payee",
                            (Some(_), Some(_)) => "unknown payer",
                        };
                        decision_s.give(Decision::of(
                            p,
                            Status::UnknownReference,
                            Some(what.to_owned()),
                        ));
                        continue;
                    };
                    let s = slot.get_or_insert_with(|| {
                        State::resumed(&payer, resumed.remove(p.tx.payer.as_str()))
                    });
                    let tx = &p.tx;
                    if rules::is_stale(tx.event_ms, &s.funds) {
                        decision_s.give(Decision::of(p, Status::Stale, None));
                        continue;
                    }
                    let hour = rules::local_hour(tx.event_ms);
                    let scores = rules::scores(tx.amount_cents, hour, km.km(&payer.home, &region));
                    let status =
                        rules::assess(tx.mode, tx.amount_cents, scores.risk, &s.funds, &params);
                    if status == Status::Approved {
                        rules::approve(tx.mode, tx.amount_cents, tx.event_ms, &mut s.funds);
                        if s.touched != Some(t) {
                            s.touched = Some(t);
                            changed.push(CompactString::from(tx.payer.as_str()));
                        }
                        credit_s.give(Credit {
                            payee: tx.payee.clone(),
                            amount_cents: tx.amount_cents,
                            payee_ref: payee,
                        });
                    }
                    let home_band = rules::distance_band(km.km(&payer.home, &payee.home));
                    decision_s.give(Decision {
                        scores: Some(scores),
                        home_band: Some(home_band),
                        ..Decision::of(p, status, None)
                    });
                }
                if !changed.is_empty() {
                    let mut account_s = account_h.session(&caps[2]);
                    for user in changed.drain(..) {
                        let s = user_index
                            .state_of(&user)
                            .as_ref()
                            .expect("a changed user has state");
                        account_s.give(Account {
                            balance_cents: s.funds.balance_cents,
                            credit_used_cents: s.funds.credit_used_cents,
                            last_approved_ms: s.funds.last_approved_ms,
                            user: user.into(),
                        });
                    }
                }
            }
            // No message will ask about a time before both the frontier of the messages and
            // the stashed timestamps: the traces may forget distinctions before that.
            let least = frontiers[0]
                .frontier()
                .iter()
                .chain(stash.keys())
                .min()
                .copied();
            region_index.compact(least);
            user_index.compact(least);
        }
    });
    credit_stream.connect_loop(loop_handle);
    (decisions, accounts)
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Ordering by the prefix, then by the whole id, is ordering by the whole id.
        #[test]
        fn id_prefix_order_agrees_with_byte_order(a in "[a\\x00-\\x02é]{0,10}", b in "[a\\x00-\\x02é]{0,10}") {
            let by_prefix = id_prefix(&a).cmp(&id_prefix(&b)).then_with(|| a.cmp(&b));
            proptest::prop_assert_eq!(by_prefix, a.as_bytes().cmp(b.as_bytes()));
        }
    }
}

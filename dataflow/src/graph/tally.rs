//! `Tally`: decisions pre-aggregated into analysis rows, accumulated by `count_total`.

use std::collections::BTreeMap;

// Per-worker maps keyed by ids: a fast hasher (their iteration order is never used).

use differential_dataflow::difference::Semigroup;
use differential_dataflow::operators::CountTotal;
use differential_dataflow::trace::implementations::{KeyBatcher, KeySpine};
use differential_dataflow::{AsCollection, VecCollection};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;

use crate::analyses::{AnalysisKey, Tally, TallyBatch};
use crate::model::Time;

use super::frontier::ready;
use super::*;

/// Pre-aggregates decisions per timestamp into analysis rows (`Tally`), and accumulates
/// them with `count_total`, which emits only the rows each timestamp touched. Per-region
/// rows take their UF from the shared regions arrangement, as of their timestamp. The
/// decisions of every stage meet here and pass through unchanged (no copy) to whoever
/// records them; the analyses restored at a resume point join the rows at time 0.
#[allow(clippy::type_complexity)]
pub(super) fn analyses<'s>(
    decisions: [StreamVec<'s, Time, Decision>; 2],
    prior: StreamVec<'s, Time, ((AnalysisKey, ()), Time, Tally)>,
) -> (
    StreamVec<'s, Time, Decision>,
    VecCollection<'s, Time, (AnalysisKey, Tally), isize>,
) {
    let mut builder = OperatorBuilder::new("Tally".to_owned(), prior.scope());
    let mut inputs = decisions.map(|stream| builder.new_input(stream, Pipeline));
    let mut prior_in = builder.new_input(prior, Pipeline);
    let (pass_out, passed) = builder.new_output();
    let (keyed_out, keyed) = builder.new_output();
    let mut pass_out =
        OutputBuilder::<_, timely::container::CapacityContainerBuilder<Vec<Decision>>>::from(
            pass_out,
        );
    let mut keyed_out = OutputBuilder::<
        _,
        timely::container::CapacityContainerBuilder<Vec<((AnalysisKey, ()), Time, Tally)>>,
    >::from(keyed_out);
    // Frontier indexes: the decision inputs, then the prior rows.
    const PRIOR: usize = 2;
    builder.build(move |_caps| {
        let mut batches: BTreeMap<Time, (Capability<Time>, TallyBatch)> = BTreeMap::new();
        let mut states: Vec<(AnalysisKey, Tally)> = Vec::new();
        move |frontiers| {
            let mut keyed_h = keyed_out.activate();
            prior_in.for_each(|cap, data| keyed_h.session(&cap).give_container(data));
            let mut pass_h = pass_out.activate();
            for input in inputs.iter_mut() {
                input.for_each(|cap, data| {
                    if let Some(&t) = cap.least() {
                        let (_, batch) = batches
                            .entry(t)
                            .or_insert_with(|| (cap.delayed(&t, 1), TallyBatch::default()));
                        for d in data.iter() {
                            batch.add_status(d.status);
                            if let (Some(a), Some(uf)) = (d.assessed(), &d.uf) {
                                batch.add_assessed(&a, uf);
                            }
                        }
                    }
                    pass_h.session(&cap).give_container(data);
                });
            }
            // A batch can go at once; more decisions at that time may follow, and make
            // another batch (tallies add up).
            while let Some(entry) = batches.first_entry() {
                let t = *entry.key();
                if !ready(&frontiers[PRIOR..PRIOR + 1], &t) {
                    break;
                }
                let (cap, mut batch) = entry.remove();
                let mut keyed_s = keyed_h.session(&cap);
                batch.drain(
                    |k, tally| keyed_s.give(((k, ()), t, tally)),
                    |uf, tally| {
                        // Decide found the UF of the transaction's region as of its time.
                        match states
                            .iter_mut()
                            .find(|(k, _)| matches!(k, AnalysisKey::State(u) if *u == uf))
                        {
                            Some((_, sum)) => sum.plus_equals(&tally),
                            None => states.push((AnalysisKey::State(uf), tally)),
                        }
                    },
                );
                for (k, tally) in states.drain(..) {
                    keyed_s.give(((k, ()), t, tally));
                }
            }
        }
    });
    // Rows are already (key, ()) pairs: arranged by key as they come, then accumulated.
    let arranged = keyed
        .as_collection()
        .arrange_named::<KeyBatcher<AnalysisKey, Time, Tally>, KeySpine<AnalysisKey, Time, Tally>>(
            "Arrange: CountTotal",
            KeyBatcher::new,
        );
    (passed, arranged.count_total())
}

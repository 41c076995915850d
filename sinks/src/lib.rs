//! Where decisions, account states and analyses leave the pipeline.
//!
//! The graph's outputs meet in one timely operator, [`batch_sink`], which waits until a
//! timestamp is closed (every output's frontier has passed it) and hands that timestamp's
//! outputs, as one [`Batch`], to a channel. Everything that does I/O — the replay files,
//! PostgreSQL, Redis, Kafka, the monitor and the dashboard — lives on the other side of
//! that channel, outside the workers, and consumes whole batches: every consumer implements
//! [`consumer::Consumer`], and [`consumer::WritePath`] decides which thread gives which
//! consumer which batch, in which order.
//!
//! Depends on `vtpga-dataflow` only (of the workspace); may not depend on `vtpga-ingest`
//! or `vtpga-web` (the dashboard is a consumer that implements this crate's trait, not
//! the other way round).

#![warn(missing_docs)]

pub mod consumer;
pub mod files;
pub mod kafka;
pub mod monitor;
pub mod postgres;
pub mod redis;

use std::collections::BTreeMap;

use crossbeam_channel::Sender;
use differential_dataflow::VecCollection;
use timely::dataflow::channels::pact::{Exchange, ParallelizationContract, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::{ProbeHandle, StreamVec};

use vtpga_dataflow::analyses::{AnalysisKey, Tally, WhatIfChange};
use vtpga_dataflow::graph::{Account, ControlOutcome, Decision, Outputs, ShadowRecord, Shadowed};
use vtpga_dataflow::Time;

/// One change to an analysis row, as `count_total` emits it: the row, and +1 or −1.
pub type AnalysisChange = ((AnalysisKey, Tally), isize);

/// The outputs of the timestamps that closed together, from one worker. Consumers apply
/// a batch as a whole (one database transaction, one Redis pipeline).
#[derive(Clone, Debug, Default)]
pub struct Batch {
    /// The latest timestamp in the batch: everything up to it is closed.
    pub time: Time,
    /// Sorted by arrival time, then source position, when gathered to worker 0; in the
    /// order the worker decided them otherwise (batches of different workers interleave).
    pub decisions: Vec<Decision>,
    /// In timestamp order: a later state of a user replaces an earlier one.
    pub accounts: Vec<Account>,
    /// The changes to analysis rows (SPEC §7) of the batch's timestamps.
    pub analyses: Vec<AnalysisChange>,
    /// What became of the control records whose outcome is at these times (SPEC §11).
    pub controls: Vec<ControlOutcome>,
    /// What each shadow rule set produced at these times (SPEC §12), by the shadow's
    /// index; shorter than the shadows (or empty) when the last ones produced nothing.
    pub shadows: Vec<ShadowBatch>,
}

/// A shadow rule set's part of a [`Batch`]: never decisions of record.
#[derive(Clone, Debug, Default)]
pub struct ShadowBatch {
    /// Its decisions, ordered as the batch's own.
    pub decisions: Vec<Decision>,
    /// Its users' states, in timestamp order.
    pub accounts: Vec<Account>,
    /// The changes to its ten analyses.
    pub analyses: Vec<AnalysisChange>,
    /// The changes to its what-if analysis.
    pub what_if: Vec<WhatIfChange>,
}

impl ShadowBatch {
    fn append(&mut self, later: &mut ShadowBatch) {
        self.decisions.append(&mut later.decisions);
        self.accounts.append(&mut later.accounts);
        self.analyses.append(&mut later.analyses);
        self.what_if.append(&mut later.what_if);
    }
}

impl Batch {
    /// Appends a later batch: the result covers every timestamp up to `later.time`.
    pub fn merge(&mut self, mut later: Batch) {
        self.time = self.time.max(later.time);
        self.decisions.append(&mut later.decisions);
        self.accounts.append(&mut later.accounts);
        self.analyses.append(&mut later.analyses);
        self.controls.append(&mut later.controls);
        if self.shadows.len() < later.shadows.len() {
            self.shadows
                .resize_with(later.shadows.len(), ShadowBatch::default);
        }
        for (mine, theirs) in self.shadows.iter_mut().zip(later.shadows.iter_mut()) {
            mine.append(theirs);
        }
    }

    /// The batches, in time order, as one batch (`None` for none), each list allocated
    /// once.
    pub fn concat(batches: Vec<Batch>) -> Option<Batch> {
        let mut batches = batches.into_iter();
        let mut out = batches.next()?;
        let rest: Vec<Batch> = batches.collect();
        out.decisions
            .reserve(rest.iter().map(|b| b.decisions.len()).sum());
        out.accounts
            .reserve(rest.iter().map(|b| b.accounts.len()).sum());
        out.analyses
            .reserve(rest.iter().map(|b| b.analyses.len()).sum());
        out.controls
            .reserve(rest.iter().map(|b| b.controls.len()).sum());
        for batch in rest {
            out.merge(batch);
        }
        Some(out)
    }

    /// The part of shadow `index`, made if it is not there yet.
    pub fn shadow_mut(&mut self, index: usize) -> &mut ShadowBatch {
        if self.shadows.len() <= index {
            self.shadows.resize_with(index + 1, ShadowBatch::default);
        }
        &mut self.shadows[index]
    }
}

/// Where a worker's batches go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gather {
    /// Each worker sends its own batches (live consumers that merge them).
    PerWorker,
    /// Everything is exchanged to worker 0, which sends one batch per timestamp: a
    /// single ordered record, identical for any number of workers and processes.
    ToWorkerZero,
}

/// Attaches the sink to the graph's outputs; `probe` observes everything the sink observed.
pub fn batch_sink(
    outputs: Outputs<'_>,
    gather: Gather,
    sender: Sender<Batch>,
    probe: &ProbeHandle<Time>,
) {
    match gather {
        // A worker's own outputs stay where they are: no per-record copy into an exchange.
        Gather::PerWorker => sink_with(
            outputs,
            (Pipeline, Pipeline, Pipeline, Pipeline, Pipeline),
            false,
            sender,
            probe,
        ),
        Gather::ToWorkerZero => sink_with(
            outputs,
            (
                Exchange::new(|_: &Decision| 0),
                Exchange::new(|_: &Account| 0),
                Exchange::new(|_: &AnalysisRecord| 0),
                Exchange::new(|_: &ControlOutcome| 0),
                Exchange::new(|_: &Shadowed| 0),
            ),
            true,
            sender,
            probe,
        ),
    }
}

/// An analysis change as it leaves `count_total`: row, time, +1 or −1.
type AnalysisRecord = ((AnalysisKey, Tally), Time, isize);

/// The sink, with how each of its three inputs reaches it, and whether it sorts each
/// batch's decisions.
fn sink_with<D, A, X, C, S>(
    outputs: Outputs<'_>,
    (d_pact, a_pact, x_pact, c_pact, s_pact): (D, A, X, C, S),
    sort: bool,
    sender: Sender<Batch>,
    probe: &ProbeHandle<Time>,
) where
    D: ParallelizationContract<Time, Vec<Decision>>,
    A: ParallelizationContract<Time, Vec<Account>>,
    X: ParallelizationContract<Time, Vec<AnalysisRecord>>,
    C: ParallelizationContract<Time, Vec<ControlOutcome>>,
    S: ParallelizationContract<Time, Vec<Shadowed>>,
{
    let Outputs {
        decisions,
        accounts,
        analyses,
        controls,
        shadows,
    } = outputs;
    let scope = decisions.scope();
    let analyses: StreamVec<'_, Time, AnalysisRecord> = analyses_stream(analyses);
    let mut builder = OperatorBuilder::new("BatchSink".to_owned(), scope);
    let mut d_in = builder.new_input(decisions, d_pact);
    let mut a_in = builder.new_input(accounts, a_pact);
    let mut x_in = builder.new_input(analyses, x_pact);
    let mut c_in = builder.new_input(controls, c_pact);
    let mut s_in = builder.new_input(shadows, s_pact);
    // An output that carries no data: its frontier is that of the three inputs, so one
    // probe on it observes everything the sink observed.
    let (_done_out, done) = builder.new_output::<Vec<()>>();
    timely::dataflow::operators::Probe::probe_with(done, probe);
    builder.build(move |_caps| {
        // The sink holds no capabilities: the frontier of its inputs alone says when a
        // timestamp is closed.
        let mut pending: BTreeMap<Time, Batch> = BTreeMap::new();
        move |frontiers| {
            let mut slot =
                |cap: &timely::dataflow::operators::InputCapability<Time>| -> Option<Time> {
                    let t = *cap.least()?;
                    pending.entry(t).or_insert_with(|| Batch {
                        time: t,
                        ..Batch::default()
                    });
                    Some(t)
                };
            let mut staged_d = Vec::new();
            d_in.for_each(|cap, data| {
                if let Some(t) = slot(&cap) {
                    staged_d.push((t, std::mem::take(data)));
                }
            });
            let mut staged_a = Vec::new();
            a_in.for_each(|cap, data| {
                if let Some(t) = slot(&cap) {
                    staged_a.push((t, std::mem::take(data)));
                }
            });
            let mut staged_x = Vec::new();
            x_in.for_each(|cap, data| {
                if let Some(t) = slot(&cap) {
                    staged_x.push((t, std::mem::take(data)));
                }
            });
            let mut staged_c = Vec::new();
            c_in.for_each(|cap, data| {
                if let Some(t) = slot(&cap) {
                    staged_c.push((t, std::mem::take(data)));
                }
            });
            let mut staged_s = Vec::new();
            s_in.for_each(|cap, data| {
                if let Some(t) = slot(&cap) {
                    staged_s.push((t, std::mem::take(data)));
                }
            });
            // A shadow's analysis changes, as the analyses', go with the time they carry.
            for (t, data) in staged_s {
                for (index, record) in data {
                    let at = match &record {
                        ShadowRecord::Analysis(_, at, _) | ShadowRecord::WhatIf(_, at, _) => *at,
                        ShadowRecord::Decision(_) | ShadowRecord::Account(_) => t,
                    };
                    let part = pending
                        .entry(at)
                        .or_insert_with(|| Batch {
                            time: at,
                            ..Batch::default()
                        })
                        .shadow_mut(usize::from(index));
                    match record {
                        ShadowRecord::Decision(d) => part.decisions.push(d),
                        ShadowRecord::Account(a) => part.accounts.push(a),
                        ShadowRecord::Analysis(row, _, diff) => part.analyses.push((row, diff)),
                        ShadowRecord::WhatIf(row, _, diff) => part.what_if.push((row, diff)),
                    }
                }
            }
            for (t, mut data) in staged_c {
                let batch = pending.get_mut(&t).expect("slot");
                batch.controls.append(&mut data);
            }
            for (t, mut data) in staged_d {
                let batch = pending.get_mut(&t).expect("slot");
                batch.decisions.append(&mut data);
            }
            for (t, mut data) in staged_a {
                let batch = pending.get_mut(&t).expect("slot");
                batch.accounts.append(&mut data);
            }
            // An analysis change goes with the time it carries, which may be later than
            // its container's: `count_total` emits the changes of several times under one
            // capability when its input closes several at once.
            for (_, data) in staged_x {
                for (row, t, diff) in data {
                    pending
                        .entry(t)
                        .or_insert_with(|| Batch {
                            time: t,
                            ..Batch::default()
                        })
                        .analyses
                        .push((row, diff));
                }
            }
            // Every closed timestamp goes out in one batch (its lists sized once: grown by
            // doubling, a backlog's batch was copied again and again into fresh pages).
            let mut closed: Vec<Batch> = Vec::new();
            while let Some(entry) = pending.first_entry() {
                if frontiers.iter().any(|f| f.less_equal(entry.key())) {
                    break;
                }
                let mut batch = entry.remove();
                if sort {
                    batch.decisions.sort_unstable_by_key(|d| (d.t, d.pos));
                    batch.controls.sort_unstable_by_key(|c| (c.at, c.pos));
                    for part in &mut batch.shadows {
                        part.decisions.sort_unstable_by_key(|d| (d.t, d.pos));
                    }
                }
                closed.push(batch);
            }
            if let Some(batch) = Batch::concat(closed) {
                // A consumer that has gone away (the process is shutting down) is not a
                // reason to stop deciding.
                let _ = sender.send(batch);
            }
        }
    });
}

fn analyses_stream<'s>(
    analyses: VecCollection<'s, Time, (AnalysisKey, Tally), isize>,
) -> StreamVec<'s, Time, ((AnalysisKey, Tally), Time, isize)> {
    analyses.inner
}

#[cfg(test)]
mod tests {
    use super::*;
    use differential_dataflow::AsCollection;
    use timely::dataflow::operators::Input;

    /// An analysis change is cut with the time it carries, not with its container's
    /// capability: `count_total` emits several times' changes under one capability when
    /// its input closes several at once, and a cut holding a later time's change would
    /// count those messages again after a restart from it.
    #[test]
    fn analysis_changes_go_with_their_own_time() {
        let (sender, receiver) = crossbeam_channel::unbounded::<Batch>();
        timely::execute(timely::Config::thread(), move |worker| {
            let sender = sender.clone();
            let probe = ProbeHandle::<Time>::new();
            let (mut decisions, mut accounts, mut analyses) =
                worker.dataflow::<Time, _, _>(|scope| {
                    let (d_in, decisions) = scope.new_input::<Vec<Decision>>();
                    let (a_in, accounts) = scope.new_input::<Vec<Account>>();
                    let (x_in, analyses) =
                        scope.new_input::<Vec<((AnalysisKey, Tally), Time, isize)>>();
                    let (_, controls) = scope.new_input::<Vec<ControlOutcome>>();
                    let (_, shadows) = scope.new_input::<Vec<Shadowed>>();
                    let outputs = Outputs {
                        decisions,
                        accounts,
                        analyses: analyses.as_collection(),
                        controls,
                        shadows,
                    };
                    batch_sink(outputs, Gather::PerWorker, sender, &probe);
                    (d_in, a_in, x_in)
                });
            // One container at time 1 with changes at times 1 and 7.
            let row = |count| {
                (
                    AnalysisKey::Status(vtpga_dataflow::Status::Approved),
                    Tally {
                        count,
                        ..Tally::default()
                    },
                )
            };
            analyses.advance_to(1);
            decisions.advance_to(1);
            accounts.advance_to(1);
            analyses.send((row(1), 1, 1));
            analyses.send((row(7), 7, 1));
            for t in [5u64, 10] {
                analyses.advance_to(t);
                decisions.advance_to(t);
                accounts.advance_to(t);
                while probe.less_than(&t) {
                    worker.step();
                }
            }
        })
        .expect("timely runs");
        let batches: Vec<(Time, usize)> = receiver
            .try_iter()
            .map(|b| (b.time, b.analyses.len()))
            .collect();
        assert_eq!(batches, vec![(1, 1), (7, 1)]);
    }
}

//! Runs the decision graph on a timely cluster: reference data in, a feed per worker,
//! the graph, and a batch sink whose batches go to the caller's [`WritePath`] (its
//! consumers, each on its own thread, in the order `sinks::consumer` describes).

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Result};
use crossbeam_channel::Sender;
use differential_dataflow::input::Input;
use timely::dataflow::ProbeHandle;

use vtpga_dataflow::graph::{self, region_row, user_row, RegionRow, Resume, UserRow};
use vtpga_dataflow::{Params, Region, RuleSet, Time, User};
use vtpga_ingest::source::{feed_source, Feed};
use vtpga_sinks::consumer::WritePath;
use vtpga_sinks::{batch_sink, Batch, Gather};

/// Messages per cell when the epoch is chosen from a known feed (`replay`, `bench`): about
/// what one round of the graph decides at once.
pub const AUTO_EPOCH_CELL: usize = 16_384;
/// The largest epoch chosen from a known feed (about 18.6 hours).
pub const AUTO_EPOCH_LIMIT_MS: u64 = 1 << 26;

/// Reference data, shared by all workers of the process (only worker 0 inserts it).
pub struct Reference {
    pub regions: Vec<Region>,
    pub users: Vec<User>,
}

pub struct PipelineSpec {
    pub config: timely::Config,
    pub reference: Arc<Reference>,
    pub params: Params,
    /// The rule set in force from the start (SPEC §11: `"default"`, or `--rules`).
    pub rules: RuleSet,
    /// Control records may come (a control topic, control lines in a capture, a
    /// generator of changes): without them the graph does not follow live changes.
    pub live_changes: bool,
    pub gather: Gather,
    /// Messages a source lets into the graph before waiting for them to come out.
    pub max_in_flight: usize,
    /// State to start from (after a restart); empty for a fresh start.
    pub resume: Arc<Resume>,
    /// Where the workers publish their operator figures (the dataflow view), if anywhere.
    pub view: Option<Arc<crate::dataflow_view::Published>>,
    /// Shadow rule sets decided beside the rules of record (SPEC §12).
    pub shadows: graph::Shadows,
}

/// Runs the graph and its write path until every feed is exhausted and every consumer has
/// taken every batch.
pub fn run<F, M>(spec: PipelineSpec, make_feed: M, path: WritePath) -> Result<()>
where
    F: Feed + 'static,
    M: Fn(usize, usize) -> F + Send + Sync + 'static,
{
    let (sender, receiver) = crossbeam_channel::bounded::<Batch>(1024);
    let writer = std::thread::Builder::new()
        .name("vtpga-dispatch".into())
        .spawn(move || path.drive(receiver))
        .map_err(|e| anyhow!("starting the write path: {e}"))?;
    let ran = execute(spec, make_feed, sender);
    let wrote = writer
        .join()
        .map_err(|_| anyhow!("the write path panicked"))?;
    // The write path's own failure first: it is why the graph was stopped.
    wrote?;
    ran
}

/// Runs until every feed is exhausted and every output has left the graph; batches go to
/// `sender` ([`run`] gives them to a write path).
pub fn execute<F, M>(spec: PipelineSpec, make_feed: M, sender: Sender<Batch>) -> Result<()>
where
    F: Feed + 'static,
    M: Fn(usize, usize) -> F + Send + Sync + 'static,
{
    let PipelineSpec {
        config,
        reference,
        params,
        rules,
        live_changes,
        gather,
        max_in_flight,
        resume,
        view,
        shadows,
    } = spec;
    // A worker that panics leaves its peers waiting for its progress for ever: every worker
    // of the process stops when one fails, and the failure is the run's error.
    let failed = Arc::new(AtomicBool::new(false));
    let guards = timely::execute(config, move |worker| {
        let failed = failed.clone();
        let run_worker = |worker: &mut timely::worker::Worker, failed: &AtomicBool| -> bool {
            let index = worker.index();
            let peers = worker.peers();
            let probe = ProbeHandle::<Time>::new();
            let feed = make_feed(index, peers);
            let logged = crate::dataflow_view::install(worker, view.clone());
            let sender = sender.clone();
            let (mut regions_in, mut users_in) = worker.dataflow::<Time, _, _>(|scope| {
                let (regions_in, regions) = scope.new_collection::<RegionRow, i64>();
                let (users_in, users) = scope.new_collection::<UserRow, i64>();
                // The initial reference data is loaded (the live changes come later, with the
                // messages).
                let reference_ready = ProbeHandle::<Time>::new();
                timely::dataflow::operators::Probe::probe_with(
                    regions.inner.clone(),
                    &reference_ready,
                );
                timely::dataflow::operators::Probe::probe_with(
                    users.inner.clone(),
                    &reference_ready,
                );
                // The decision moves straight into its stream: boxing it would only add an
                // allocation per decided message.
                #[allow(clippy::result_large_err)]
                let admit = graph::admit;
                let admitted = feed_source(
                    scope,
                    feed,
                    probe.clone(),
                    max_in_flight,
                    reference_ready,
                    params.epoch_ms,
                    admit,
                );
                let outputs = graph::build(
                    admitted,
                    regions,
                    users,
                    params,
                    &rules,
                    &resume,
                    live_changes,
                    &shadows,
                );
                batch_sink(outputs, gather, sender, &probe);
                (regions_in, users_in)
            });
            if index == 0 {
                for r in &reference.regions {
                    regions_in.update(region_row(r), 1);
                }
                for u in &reference.users {
                    users_in.update(user_row(u), 1);
                }
            }
            // Reference data is complete: closing the inputs lets `Decide` read it for any time.
            drop(regions_in);
            drop(users_in);
            while !failed.load(Ordering::SeqCst)
                && worker.step_or_park(Some(Duration::from_millis(1)))
            {}
            if failed.load(Ordering::SeqCst) {
                return false;
            }
            if let Some(logged) = logged {
                logged.finish();
            }
            true
        };
        let ran = std::panic::catch_unwind(AssertUnwindSafe(|| run_worker(worker, &failed)));
        let outcome = match ran {
            Ok(true) => Ok(()),
            Ok(false) => Err(STOPPED.to_owned()),
            Err(payload) => {
                failed.store(true, Ordering::SeqCst);
                Err(panic_message(payload.as_ref()))
            }
        };
        if outcome.is_err() {
            // Nothing more is scheduled: timely would otherwise step an unfinished
            // dataflow for ever.
            for id in worker.installed_dataflows() {
                worker.drop_dataflow(id);
            }
        }
        outcome
    })
    .map_err(|e| anyhow!("starting timely: {e}"))?;
    let mut errors: Vec<(bool, String)> = Vec::new();
    for (index, result) in guards.join().into_iter().enumerate() {
        if let Ok(Err(why)) | Err(why) = result {
            errors.push((why.starts_with(STOPPED), format!("worker {index}: {why}")));
        }
    }
    // The worker that failed says why; those it stopped say less.
    errors.sort_by_key(|(stopped, _)| *stopped);
    match errors.into_iter().next() {
        Some((_, error)) => Err(anyhow!("a worker failed: {error}")),
        None => Ok(()),
    }
}

const STOPPED: &str = "stopped: another worker of this process failed";

/// The text of a panic's payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a worker panicked".to_owned()
    }
}

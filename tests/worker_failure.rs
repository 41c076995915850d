//! A worker that fails must fail the run, with its reason, instead of leaving its peers
//! waiting for its progress for ever (seen as a hung model check in CI).

use std::sync::Arc;
use std::time::Duration;

use vtpga::cluster::ClusterArgs;
use vtpga::pipeline::{self, PipelineSpec, Reference};
use vtpga_dataflow::graph::Incoming;
use vtpga_dataflow::{Params, RuleSet};
use vtpga_ingest::source::{Feed, Polled};
use vtpga_sinks::{Batch, Gather};

/// Worker 0's feed breaks on its first poll; the others stay open for ever, as a live
/// feed does.
struct Breaking {
    index: usize,
}

impl Feed for Breaking {
    fn poll(&mut self, _out: &mut Vec<Incoming>, _max: usize) -> Polled {
        if self.index == 0 {
            panic!("the feed of worker 0 broke");
        }
        Polled::Open {
            frontier: 1,
            idle: true,
        }
    }
}

fn spec(workers: usize) -> PipelineSpec {
    let params = Params {
        max_delay_ms: 5_000,
        dedup_window_ms: 60_000,
        risk_threshold: 0.5,
        dedup_capacity: 0,
        epoch_ms: 1,
    };
    PipelineSpec {
        config: ClusterArgs::single(workers).config().expect("config"),
        reference: Arc::new(Reference {
            regions: Vec::new(),
            users: Vec::new(),
        }),
        params,
        rules: RuleSet::of(&params, "default"),
        live_changes: false,
        gather: Gather::ToWorkerZero,
        max_in_flight: 1000,
        resume: Default::default(),
        view: None,
        shadows: Default::default(),
    }
}

#[test]
fn a_worker_that_panics_fails_the_run_with_its_reason() {
    for workers in [1, 2, 3] {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (sender, _receiver) = crossbeam_channel::unbounded::<Batch>();
            let ran = pipeline::execute(spec(workers), |index, _peers| Breaking { index }, sender);
            let _ = done_tx.send(ran);
        });
        let ran = done_rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("{workers} workers: the run still waits after 60 s"));
        let error = ran.expect_err("a worker panicked: the run fails");
        let text = format!("{error:#}");
        assert!(
            text.contains("worker 0") && text.contains("the feed of worker 0 broke"),
            "{workers} workers: {text}"
        );
    }
}

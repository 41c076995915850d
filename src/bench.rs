//! `vtpga bench`: pushes pre-generated messages through the graph with 1 and 2 workers,
//! (a) already parsed and (b) as raw JSON, and runs the sequential reference on the
//! same input, printing messages per second for each. With `--control-every N` one
//! generated control record (SPEC §11) comes after every N messages, in the graph's input
//! and in the reference's (`run_live`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;

use vtpga_dataflow::control::parse_control;
use vtpga_dataflow::graph::{Body, Incoming};
use vtpga_dataflow::parse::parse_transaction;
use vtpga_dataflow::{Params, SourcePos};
use vtpga_ingest::changes::{ControlConfig, ControlGenerator, GenControl};
use vtpga_ingest::generator::{Generator, GeneratorConfig};
use vtpga_ingest::refdata::{generate_regions, generate_users};
use vtpga_ingest::source::{Feed, Polled, VecFeed};
use vtpga_sinks::consumer::{Consumer, Fault, WritePath};
use vtpga_sinks::Gather;

use vtpga::cluster::ClusterArgs;
use vtpga::pipeline::{self, PipelineSpec, Reference};

#[derive(Args, Clone, Debug)]
pub struct BenchArgs {
    /// Messages per run.
    #[arg(long, env = "VTPGA_BENCH_COUNT", default_value_t = 1_000_000)]
    pub count: usize,
    /// Worker counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub workers: Vec<usize>,
    /// Nominal arrival rate of the generated messages (spaces their timestamps): the
    /// load the measured system would be under.
    #[arg(long, default_value_t = 1_000_000.0)]
    pub arrival_rate: f64,
    /// Generated users.
    #[arg(long, default_value_t = 100_000)]
    pub users: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Repetitions of each measurement; the best is reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Skip the raw-JSON runs (b), e.g. to profile (a) alone.
    #[arg(long)]
    pub parsed_only: bool,
    /// The graph's time grid in ms (a power of two; see `vtpga run --help`). Default:
    /// chosen from the generated messages, as `replay` does (1 gives the live timing).
    #[arg(long)]
    pub epoch_ms: Option<u64>,
    /// One generated control record (SPEC §11: user, region and rule changes, a few
    /// invalid) after every N messages, in the graph's input and the reference's; 0 for
    /// none.
    #[arg(long, default_value_t = 0)]
    pub control_every: usize,
    /// Log every operator's figures as `run` does for its dashboard (`/api/dataflow`,
    /// sampled as there), to measure what the dataflow view costs.
    #[arg(long)]
    pub dataflow_view: bool,
    #[command(flatten)]
    pub shadows: vtpga::args::ShadowArgs,
    /// Measure the plain graph and, taking turns with it repetition by repetition, each
    /// variant asked for: with the control records of `--control-every` (the plain graph
    /// then gets the same messages without them), with the operator figures logged
    /// (`--dataflow-view`), with the first 1, 2, ... of the `--shadow` sets; a row for
    /// each.
    #[arg(long)]
    pub interleave: bool,
}

struct Input {
    raw: Vec<Incoming>,
    parsed: Vec<Incoming>,
    reference_msgs: Vec<vtpga_reference::RefMsg>,
    reference_controls: Vec<vtpga_reference::RefControl>,
    /// Control records meant to be refused (the dead-letter path).
    invalid_controls: usize,
}

/// A generated control record as the sequential reference takes it.
fn ref_control(c: &GenControl) -> vtpga_reference::RefControl {
    let parsed = parse_control(&c.payload).ok();
    vtpga_reference::RefControl {
        record_ts: c.record_ts,
        partition: c.partition,
        offset: c.offset,
        effective_from: parsed.as_ref().and_then(|p| p.effective_from),
        change: parsed.map(|p| vtpga::oracle::ref_change(p.change)),
    }
}

fn build_input(args: &BenchArgs, reference: &Reference) -> Input {
    let cfg = GeneratorConfig {
        seed: args.seed,
        rate_per_sec: args.arrival_rate,
        ..GeneratorConfig::default()
    };
    let partitions = cfg.partitions;
    let mut controls = (args.control_every > 0).then(|| {
        ControlGenerator::new(
            ControlConfig {
                seed: args.seed,
                ..ControlConfig::default()
            },
            &reference.regions,
            &reference.users,
        )
    });
    let mut generator = Generator::new(cfg, reference.regions.clone(), reference.users.clone());
    let mut offsets = vec![0i64; partitions as usize];
    let mut raw = Vec::with_capacity(args.count);
    let mut parsed = Vec::with_capacity(args.count);
    let mut reference_msgs = Vec::with_capacity(args.count);
    let mut reference_controls = Vec::new();
    let mut invalid_controls = 0;
    for i in 0..args.count {
        let m = generator.next_message();
        // A control record at the time of every N-th message, before it.
        if let Some(g) = controls.as_mut() {
            if (i + 1) % args.control_every == 0 {
                let c = g.next_at(m.record_ts);
                invalid_controls += usize::from(c.kind.is_invalid());
                reference_controls.push(ref_control(&c));
                let control = Incoming {
                    pos: SourcePos {
                        partition: c.partition,
                        offset: c.offset,
                    },
                    t: c.record_ts,
                    ingest_us: 0,
                    body: Body::Control(c.payload),
                };
                parsed.push(control.clone());
                raw.push(control);
            }
        }
        let offset = &mut offsets[m.partition as usize];
        let pos = SourcePos {
            partition: m.partition,
            offset: *offset,
        };
        *offset += 1;
        let tx = parse_transaction(&m.payload).ok();
        reference_msgs.push(vtpga_reference::RefMsg {
            record_ts: m.record_ts,
            partition: pos.partition,
            offset: pos.offset,
            tx: tx.as_ref().map(|tx| vtpga_reference::RefTx {
                id: tx.id.to_string(),
                payer: tx.payer.to_string(),
                payee: tx.payee.to_string(),
                region: tx.region.to_string(),
                mode: tx.mode.as_str().to_owned(),
                amount_cents: tx.amount_cents,
                event_ms: tx.event_ms,
            }),
        });
        let incoming = |body| Incoming {
            pos,
            t: m.record_ts,
            ingest_us: 0,
            body,
        };
        parsed.push(incoming(match tx {
            Some(tx) => Body::Parsed(tx),
            None => Body::Raw(m.payload.clone()),
        }));
        raw.push(incoming(Body::Raw(m.payload)));
    }
    Input {
        raw,
        parsed,
        reference_msgs,
        reference_controls,
        invalid_controls,
    }
}

/// A feed that notes when a worker first took messages from it.
struct TimedFeed {
    inner: VecFeed,
    first_poll: Arc<std::sync::Mutex<Option<Instant>>>,
    polled: bool,
}

impl Feed for TimedFeed {
    fn poll(&mut self, out: &mut Vec<Incoming>, max: usize) -> Polled {
        if !self.polled {
            self.polled = true;
            let now = Instant::now();
            if let Ok(mut first) = self.first_poll.lock() {
                *first = Some(first.map_or(now, |f| f.min(now)));
            }
        }
        self.inner.poll(out, max)
    }
}

/// The timings of one run.
#[derive(Clone)]
struct Run {
    /// From the start to the moment the first source took messages: workers started,
    /// reference data arranged.
    setup: f64,
    /// From then until every decision and analysis has left the graph.
    messages: f64,
    decided: u64,
}

/// Counts the decisions it is given.
struct Count(Arc<AtomicU64>);

impl Consumer for Count {
    fn name(&self) -> &'static str {
        "count"
    }
    fn batch(&mut self, batch: &vtpga_sinks::Batch) -> Result<(), Fault> {
        self.0
            .fetch_add(batch.decisions.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// One run of the graph over `messages`.
fn run_graph(
    workers: usize,
    reference: &Arc<Reference>,
    messages: &[Incoming],
    epoch_ms: u64,
    logged: bool,
    shadows: &[vtpga_dataflow::RuleSet],
) -> Result<Run> {
    // Sampled while the graph runs, as the dashboard's process does.
    let view = logged.then(|| {
        let view = vtpga::dataflow_view::DataflowView::new(0, 1, workers);
        view.spawn_sampler();
        view
    });
    let decided = Arc::new(AtomicU64::new(0));
    let path = WritePath {
        record: Vec::new(),
        producer: None,
        followers: vec![Box::new(Count(decided.clone()))],
        max_batch: 0,
        stop: Default::default(),
    };
    // Each worker's share is split off before the clock starts, and handed over whole.
    let shares: Vec<std::sync::Mutex<Option<Vec<Incoming>>>> = (0..workers)
        .map(|index| {
            std::sync::Mutex::new(Some(
                messages
                    .iter()
                    .filter(|m| vtpga_ingest::replay::owner(m.pos.partition, workers) == index)
                    .cloned()
                    .collect(),
            ))
        })
        .collect();
    let spec = PipelineSpec {
        config: ClusterArgs::single(workers).config()?,
        reference: reference.clone(),
        // The duplicate table is sized for the ids the run will see, as an operator
        // sizes it for rate x window (`--dedup-capacity`).
        params: Params {
            dedup_capacity: messages.len(),
            epoch_ms,
            ..Params::default()
        },
        rules: vtpga_dataflow::RuleSet::of(&Params::default(), "default"),
        live_changes: messages
            .iter()
            .any(|m| matches!(m.body, Body::Control(_) | Body::ControlRefused { .. })),
        gather: Gather::PerWorker,
        max_in_flight: 2_000_000,
        resume: Default::default(),
        view: view.as_ref().map(|v| v.published()),
        // As `run` decides them: analyses and what-if rows out, not their ledgers.
        shadows: vtpga_dataflow::graph::Shadows {
            sets: shadows.to_vec(),
            ledgers: false,
        },
    };
    let first_poll = Arc::new(std::sync::Mutex::new(None));
    let feeds_first_poll = first_poll.clone();
    let started = Instant::now();
    pipeline::run(
        spec,
        move |index, _peers| {
            let share = shares[index].lock().map(|mut s| s.take()).ok().flatten();
            TimedFeed {
                inner: VecFeed::new(share.unwrap_or_default()),
                first_poll: feeds_first_poll.clone(),
                polled: false,
            }
        },
        path,
    )?;
    let ended = Instant::now();
    let decided = decided.load(Ordering::Relaxed);
    let first_poll = first_poll.lock().ok().and_then(|f| *f).unwrap_or(started);
    Ok(Run {
        setup: (first_poll - started).as_secs_f64(),
        messages: (ended - first_poll).as_secs_f64(),
        decided,
    })
}

pub fn bench(args: BenchArgs) -> Result<()> {
    if args.count == 0 || args.repeat == 0 {
        bail!("--count and --repeat must be positive");
    }
    let regions = generate_regions(100, args.seed);
    let users = generate_users(args.users, &regions, args.seed);
    let reference = Arc::new(Reference { regions, users });
    eprintln!(
        "generating {} messages at a nominal {} tx/s ...",
        args.count, args.arrival_rate
    );
    let input = build_input(&args, &reference);
    let n = args.count as f64;

    let ref_regions: Vec<_> = reference
        .regions
        .iter()
        .map(|r| vtpga_reference::RefRegion {
            id: r.id.clone(),
            uf: r.uf.clone(),
            lat: r.lat,
            lon: r.lon,
        })
        .collect();
    let ref_users: Vec<_> = reference
        .users
        .iter()
        .map(|u| vtpga_reference::RefUser {
            id: u.id.clone(),
            region_id: u.region_id.clone(),
            balance_cents: u.balance_cents,
            credit_limit_cents: u.credit_limit_cents,
        })
        .collect();
    let initial_rules = {
        let p = vtpga_reference::RefParams::default();
        vtpga_reference::RefRules {
            version: "default".to_owned(),
            risk_threshold: p.risk_threshold,
            max_delay_ms: p.max_delay_ms,
            dedup_window_ms: p.dedup_window_ms,
        }
    };
    let mut reference_best = f64::MAX;
    for _ in 0..args.repeat {
        let started = Instant::now();
        let out = vtpga_reference::run_live(
            &ref_regions,
            &ref_users,
            &input.reference_msgs,
            &input.reference_controls,
            &initial_rules,
        );
        reference_best = reference_best.min(started.elapsed().as_secs_f64());
        std::hint::black_box(out);
    }
    let reference_rate = n / reference_best;

    let epoch_ms = args.epoch_ms.unwrap_or_else(|| {
        let times: Vec<_> = input.parsed.iter().map(|m| m.t).collect();
        vtpga_dataflow::epoch_for(
            &times,
            vtpga::pipeline::AUTO_EPOCH_CELL,
            vtpga::pipeline::AUTO_EPOCH_LIMIT_MS,
        )
    });
    let controls = match input.reference_controls.len() {
        0 => "no control records".to_owned(),
        n => format!(
            "{n} control records (one per {} messages, {} of them invalid)",
            args.control_every, input.invalid_controls
        ),
    };
    let shadows = args.shadows.sets()?;
    println!(
        "vtpga bench: {} messages, {controls}, nominal arrival {} tx/s, {} users, epoch {} ms, best of {}{}{}",
        args.count,
        args.arrival_rate,
        args.users,
        epoch_ms,
        args.repeat,
        if args.dataflow_view {
            ", operator figures logged (dataflow view)"
        } else {
            ""
        },
        match shadows.len() {
            0 => String::new(),
            n => format!(
                ", {n} shadow rule set(s) decided too ({})",
                shadows
                    .iter()
                    .map(|s| s.version.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    );
    println!(
        "{:<38} {:>7} {:>12} {:>10} {:>20} {:>12}",
        "input", "workers", "tx/s", "setup ms", "tx/s (with setup)", "x reference"
    );
    // What each row measures. With --interleave, the plain graph and each variant take
    // turns, repetition by repetition.
    #[derive(Clone)]
    struct Variant {
        suffix: String,
        /// With the control records (if any were generated).
        controls: bool,
        /// Operator figures logged.
        logged: bool,
        shadows: Vec<vtpga_dataflow::RuleSet>,
    }
    let variants: Vec<Variant> = if args.interleave {
        let plain = Variant {
            suffix: String::new(),
            controls: false,
            logged: false,
            shadows: Vec::new(),
        };
        let mut v = Vec::new();
        if !input.reference_controls.is_empty() {
            v.push(Variant {
                suffix: " + changes".to_owned(),
                controls: true,
                ..plain.clone()
            });
        }
        if args.dataflow_view {
            v.push(Variant {
                suffix: " + view".to_owned(),
                logged: true,
                ..plain.clone()
            });
        }
        for k in 1..=shadows.len() {
            v.push(Variant {
                suffix: format!(" + {k} shadow(s)"),
                shadows: shadows[..k].to_vec(),
                ..plain.clone()
            });
        }
        v.insert(0, plain);
        v
    } else {
        vec![Variant {
            suffix: String::new(),
            controls: true,
            logged: args.dataflow_view,
            shadows: shadows.clone(),
        }]
    };
    let without_controls = |messages: &[Incoming]| -> Vec<Incoming> {
        messages
            .iter()
            .filter(|m| !matches!(m.body, Body::Control(_)))
            .cloned()
            .collect()
    };
    let plain_parsed = Arc::new(without_controls(&input.parsed));
    let plain_raw = Arc::new(without_controls(&input.raw));
    let parsed = Arc::new(input.parsed);
    let raw = Arc::new(input.raw);
    for (label, messages, plain_messages) in [
        (
            "(a) parsed, decisions + 10 analyses",
            &parsed,
            &plain_parsed,
        ),
        ("(b) raw JSON, decisions + 10 analyses", &raw, &plain_raw),
    ] {
        if args.parsed_only && label.starts_with("(b)") {
            continue;
        }
        for &workers in &args.workers {
            let mut best: Vec<Option<Run>> = vec![None; variants.len()];
            for _ in 0..args.repeat {
                for (index, variant) in variants.iter().enumerate() {
                    use std::sync::atomic::Ordering::Relaxed;
                    use vtpga_dataflow::graph::{LATE_CREDITS, REDECIDED};
                    let (redone, absorbed) = (REDECIDED.load(Relaxed), LATE_CREDITS.load(Relaxed));
                    let run = run_graph(
                        workers,
                        &reference,
                        if variant.controls {
                            messages.as_slice()
                        } else {
                            plain_messages.as_slice()
                        },
                        epoch_ms,
                        variant.logged,
                        &variant.shadows,
                    )?;
                    eprintln!(
                        "{label}, {workers} worker(s): {} late credit(s), {} decision(s) changed by one",
                        LATE_CREDITS.load(Relaxed) - absorbed,
                        REDECIDED.load(Relaxed) - redone
                    );
                    if run.decided != args.count as u64 {
                        bail!(
                            "{label}: {} decisions for {} messages",
                            run.decided,
                            args.count
                        );
                    }
                    let slot = &mut best[index];
                    if slot.as_ref().is_none_or(|b| run.messages < b.messages) {
                        *slot = Some(run);
                    }
                }
            }
            for (Variant { suffix, .. }, best) in variants.iter().zip(best) {
                let best = best.expect("repeat is positive");
                println!(
                    "{:<38} {:>7} {:>12.0} {:>10.0} {:>20.0} {:>12.2}",
                    format!("{label}{suffix}"),
                    workers,
                    n / best.messages,
                    best.setup * 1e3,
                    n / (best.setup + best.messages),
                    (n / best.messages) / reference_rate
                );
            }
        }
    }
    println!(
        "{:<38} {:>7} {:>12.0} {:>10} {:>20} {:>12.2}",
        "sequential reference (parsed)", 1, reference_rate, "-", "-", 1.0
    );
    Ok(())
}

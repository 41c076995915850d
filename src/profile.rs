//! Opt-in per-operator time profile of a worker (`VTPGA_PROFILE=1`): timely's own schedule
//! log, summed per operator and printed to stderr when the worker ends. Time spent in an
//! operator's children (a dataflow's subgraph) is not counted again in the parent.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use timely::logging::{StartStop, TimelyEvent, TimelyEventBuilder};

#[derive(Default)]
pub struct Profile {
    names: HashMap<usize, String>,
    /// Exclusive time and schedule count per operator id.
    spent: HashMap<usize, (Duration, u64)>,
    /// Operators being scheduled, innermost last, with when they started and the time
    /// their children took.
    stack: Vec<(usize, Duration, Duration)>,
}

/// Installs the profile on `worker` if `VTPGA_PROFILE` is set; call before building
/// dataflows. Returns a handle to print with [`report`].
pub fn install(worker: &mut timely::worker::Worker) -> Option<Rc<RefCell<Profile>>> {
    std::env::var_os("VTPGA_PROFILE")?;
    let profile = Rc::new(RefCell::new(Profile::default()));
    let sink = profile.clone();
    worker
        .log_register()?
        .insert::<TimelyEventBuilder, _>("timely", move |_time, data| {
            let Some(data) = data else { return };
            let mut p = sink.borrow_mut();
            for (at, event) in data.iter() {
                match event {
                    TimelyEvent::Operates(o) => {
                        p.names.insert(o.id, o.name.clone());
                    }
                    TimelyEvent::Schedule(s) => match s.start_stop {
                        StartStop::Start => p.stack.push((s.id, *at, Duration::ZERO)),
                        StartStop::Stop => {
                            if let Some((id, start, children)) = p.stack.pop() {
                                let total = at.saturating_sub(start);
                                let entry = p.spent.entry(id).or_default();
                                entry.0 += total.saturating_sub(children);
                                entry.1 += 1;
                                if let Some(parent) = p.stack.last_mut() {
                                    parent.2 += total;
                                }
                            }
                        }
                    },
                    _ => {}
                }
            }
        });
    Some(profile)
}

/// Prints the operators of worker `index` by exclusive time, largest first.
pub fn report(index: usize, profile: &Rc<RefCell<Profile>>) {
    let p = profile.borrow();
    let mut rows: Vec<_> = p.spent.iter().collect();
    rows.sort_by_key(|(_, (spent, _))| std::cmp::Reverse(*spent));
    let total: Duration = rows.iter().map(|(_, (d, _))| *d).sum();
    let mut out = format!("profile of worker {index}: {total:?} in operators\n");
    for (id, (spent, count)) in rows.iter().take(25) {
        let name = p.names.get(id).map_or("?", String::as_str);
        out.push_str(&format!(
            "  {:>10.1} ms {:>5.1}% {:>8} runs  {name} (#{id})\n",
            spent.as_secs_f64() * 1e3,
            100.0 * spent.as_secs_f64() / total.as_secs_f64().max(1e-9),
            count
        ));
    }
    eprint!("{out}");
}

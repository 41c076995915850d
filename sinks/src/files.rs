//! The replay outputs of SPEC §8–9: decisions as JSON Lines, the analyses JSON, and the
//! balances CSV.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use vtpga_dataflow::analyses::{self, AnalysisKey, Tally, WhatIfKey, WhatIfTally};
use vtpga_dataflow::graph::{Account, ControlOutcome, Decision, OutcomeKind};
use vtpga_dataflow::record::DecisionRecord;
use vtpga_dataflow::Change;
use vtpga_dataflow::{Region, RuleSet, SourcePos, Time, User};

use crate::Batch;

/// Accumulates batches into the replay outputs.
pub struct ReplayWriter {
    decisions: BufWriter<File>,
    rows: BTreeMap<AnalysisKey, Tally>,
    accounts: HashMap<String, (i64, i64)>,
    /// The users that exist, with their opening balances (the initial ones, then as the
    /// live changes create, update and delete them, SPEC §11).
    users: BTreeMap<String, User>,
    /// The regions that exist.
    regions: BTreeMap<String, Region>,
    /// The rule sets in the order they came into force: the initial one (no position),
    /// then each applied change with its effective time and position.
    rules: Vec<(RuleSet, Time, Option<SourcePos>)>,
    counts: [u64; 9],
}

impl ReplayWriter {
    /// Creates (or truncates) the decisions file at `decisions`; [`ReplayWriter::finish`]
    /// writes the other outputs.
    pub fn create(decisions: &Path, reference: &InitialReference) -> io::Result<Self> {
        Ok(ReplayWriter {
            decisions: BufWriter::with_capacity(1 << 20, File::create(decisions)?),
            rows: BTreeMap::new(),
            accounts: HashMap::new(),
            users: reference
                .users
                .iter()
                .map(|u| (u.id.clone(), u.clone()))
                .collect(),
            regions: reference
                .regions
                .iter()
                .map(|r| (r.id.clone(), r.clone()))
                .collect(),
            rules: vec![(reference.rules.clone(), 0, None)],
            counts: [0; 9],
        })
    }

    /// Batches must come in timestamp order (the sink's `ToWorkerZero` mode).
    pub fn write_batch(&mut self, batch: &Batch) -> io::Result<()> {
        self.write_parts(
            &batch.decisions,
            &batch.controls,
            &batch.accounts,
            &batch.analyses,
        )
    }

    /// [`ReplayWriter::write_batch`] of a batch's parts (a shadow's decisions, accounts
    /// and analyses with the control outcomes of record).
    pub fn write_parts(
        &mut self,
        decisions: &[Decision],
        controls: &[ControlOutcome],
        accounts: &[Account],
        analyses: &[crate::AnalysisChange],
    ) -> io::Result<()> {
        self.write_records(decisions)?;
        for d in decisions {
            self.counts[d.status as usize] += 1;
        }
        for c in controls {
            match &c.kind {
                OutcomeKind::Applied(Change::User(u)) => {
                    self.users.insert(u.id.clone(), u.clone());
                }
                OutcomeKind::Applied(Change::UserDelete { id }) => {
                    self.users.remove(id);
                }
                OutcomeKind::Applied(Change::Region(r)) => {
                    self.regions.insert(r.id.clone(), r.clone());
                }
                OutcomeKind::Applied(Change::RegionDelete { id }) => {
                    self.regions.remove(id);
                }
                OutcomeKind::Applied(Change::Rules(r)) => {
                    self.rules.push((r.clone(), c.at, Some(c.pos)));
                }
                _ => {}
            }
        }
        for a in accounts {
            if a.deleted {
                self.accounts.remove(&a.user);
                continue;
            }
            match self.accounts.get_mut(&a.user) {
                Some(v) => *v = (a.balance_cents, a.credit_used_cents),
                None => {
                    self.accounts
                        .insert(a.user.clone(), (a.balance_cents, a.credit_used_cents));
                }
            }
        }
        analyses::apply_changes(&mut self.rows, analyses.iter().cloned());
        Ok(())
    }

    /// One JSON line per decision, in order. A large batch is rendered in parts on as many
    /// threads as there are cores (rendering is most of a replay's writing), then written
    /// in order.
    fn write_records(&mut self, decisions: &[Decision]) -> io::Result<()> {
        const PART: usize = 8_192;
        let render = |part: &[Decision], out: &mut Vec<u8>| {
            for d in part {
                serde_json::to_writer(&mut *out, &DecisionRecord::of(d))
                    .expect("a decision record serializes");
                out.push(b'\n');
            }
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if decisions.len() < 2 * PART || cores < 2 {
            let mut out = Vec::with_capacity(decisions.len() * 256);
            render(decisions, &mut out);
            return self.decisions.write_all(&out);
        }
        let size = decisions.len().div_ceil(cores.min(8));
        let parts: Vec<Vec<u8>> = std::thread::scope(|scope| {
            let handles: Vec<_> = decisions
                .chunks(size)
                .map(|part| {
                    scope.spawn(move || {
                        let mut out = Vec::with_capacity(part.len() * 256);
                        render(part, &mut out);
                        out
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("rendering decisions"))
                .collect()
        });
        for part in parts {
            self.decisions.write_all(&part)?;
        }
        Ok(())
    }

    /// Writes the analyses JSON and, if asked, the balances of every user that exists at
    /// the end (in the byte order of ids), and returns the count of decisions by status.
    pub fn finish(
        mut self,
        analyses_path: &Path,
        balances_path: Option<&Path>,
    ) -> io::Result<[u64; 9]> {
        self.decisions.flush()?;
        let mut out = BufWriter::new(File::create(analyses_path)?);
        serde_json::to_writer_pretty(&mut out, &analyses::to_json(&self.rows))?;
        out.write_all(b"\n")?;
        out.flush()?;
        if let Some(path) = balances_path {
            let mut out = BufWriter::new(File::create(path)?);
            writeln!(out, "id,balance_cents,credit_used_cents")?;
            for (id, user) in &self.users {
                let (balance, used) = self
                    .accounts
                    .get(id)
                    .copied()
                    .unwrap_or((user.balance_cents, 0));
                writeln!(out, "{},{},{}", csv_field(id), balance, used)?;
            }
            out.flush()?;
        }
        Ok(self.counts)
    }

    /// Writes the reference data and rule sets in force at the end (SPEC §11) under
    /// `dir`: `users.csv` (opening balances, as the initial CSV), `regions.csv`, and
    /// `rule_sets.csv` (`version,risk_threshold,max_delay_ms,dedup_window_ms,effective_ms,
    /// partition,offset`, in the order they came into force; the initial set has no
    /// position).
    pub fn write_reference(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut out = BufWriter::new(File::create(dir.join("users.csv"))?);
        writeln!(out, "id,name,region_id,balance_cents,credit_limit_cents")?;
        for u in self.users.values() {
            writeln!(
                out,
                "{},{},{},{},{}",
                csv_field(&u.id),
                csv_field(&u.name),
                csv_field(&u.region_id),
                u.balance_cents,
                u.credit_limit_cents
            )?;
        }
        out.flush()?;
        let mut out = BufWriter::new(File::create(dir.join("regions.csv"))?);
        writeln!(out, "id,uf,name,lat,lon")?;
        for r in self.regions.values() {
            writeln!(
                out,
                "{},{},{},{},{}",
                csv_field(&r.id),
                r.uf,
                csv_field(&r.name),
                r.lat,
                r.lon
            )?;
        }
        out.flush()?;
        let mut out = BufWriter::new(File::create(dir.join("rule_sets.csv"))?);
        writeln!(
            out,
            "version,risk_threshold,max_delay_ms,dedup_window_ms,effective_ms,partition,offset"
        )?;
        for (r, at, pos) in &self.rules {
            let (p, o) = pos.map_or((String::new(), String::new()), |p| {
                (p.partition.to_string(), p.offset.to_string())
            });
            writeln!(
                out,
                "{},{},{},{},{},{},{}",
                csv_field(&r.version),
                r.risk_threshold,
                r.max_delay_ms,
                r.dedup_window_ms,
                at,
                p,
                o
            )?;
        }
        out.flush()
    }
}

/// The reference data and rule set a replay starts from.
#[derive(Clone, Debug)]
pub struct InitialReference {
    /// The initial users.
    pub users: Vec<User>,
    /// The initial regions.
    pub regions: Vec<Region>,
    /// The initial rule set.
    pub rules: RuleSet,
}

/// The replay outputs as a consumer of batches: the decisions file as batches come, the
/// analyses and balances files at the end.
pub struct ReplayFiles {
    writer: Option<ReplayWriter>,
    analyses: std::path::PathBuf,
    balances: Option<std::path::PathBuf>,
    reference_out: Option<std::path::PathBuf>,
    /// Decisions by status, once ended.
    pub counts: std::sync::Arc<std::sync::Mutex<[u64; 9]>>,
}

impl ReplayFiles {
    /// Creates the decisions file now; the initial users give the balances of users no
    /// decision touched; with `reference_out`, the reference data and rule sets in force
    /// at the end are written there too.
    pub fn create(
        decisions: &Path,
        analyses: &Path,
        balances: Option<&Path>,
        reference: &InitialReference,
        reference_out: Option<&Path>,
    ) -> io::Result<Self> {
        Ok(ReplayFiles {
            writer: Some(ReplayWriter::create(decisions, reference)?),
            analyses: analyses.to_owned(),
            balances: balances.map(Path::to_owned),
            reference_out: reference_out.map(Path::to_owned),
            counts: Default::default(),
        })
    }
}

impl crate::consumer::Consumer for ReplayFiles {
    fn name(&self) -> &'static str {
        "replay-files"
    }
    fn batch(&mut self, batch: &Batch) -> Result<(), crate::consumer::Fault> {
        let writer = self.writer.as_mut().expect("not ended");
        writer
            .write_batch(batch)
            .map_err(|e| crate::consumer::Fault::Fatal(format!("writing decisions: {e}")))
    }
    fn end(&mut self) -> Result<(), crate::consumer::Fault> {
        let writer = self.writer.take().expect("ended once");
        if let Some(dir) = &self.reference_out {
            writer.write_reference(dir).map_err(|e| {
                crate::consumer::Fault::Fatal(format!("writing the reference data: {e}"))
            })?;
        }
        let counts = writer
            .finish(&self.analyses, self.balances.as_deref())
            .map_err(|e| crate::consumer::Fault::Fatal(format!("writing the outputs: {e}")))?;
        if let Ok(mut c) = self.counts.lock() {
            *c = counts;
        }
        Ok(())
    }
}

/// The outputs of the shadow rule sets (SPEC §12) as a consumer of batches: under
/// `DIR/NAME/` for each shadow (NAME: its version as a directory name), its decisions
/// (`decisions.jsonl`), analyses (`analyses.json`) and balances (`balances.csv`) as a
/// replay with `--rules` writes them, and its what-if rows (`what_if.json`).
pub struct ShadowFiles {
    shadows: Vec<ShadowFile>,
}

struct ShadowFile {
    version: String,
    dir: std::path::PathBuf,
    writer: Option<ReplayWriter>,
    what_if: BTreeMap<WhatIfKey, WhatIfTally>,
}

impl ShadowFiles {
    /// Creates each shadow's directory and decisions file now: `shadows` are the
    /// versions with their directory names, in the order the graph numbers them; the
    /// initial users and regions give the balances no decision touched.
    pub fn create(
        dir: &Path,
        shadows: &[(String, String)],
        reference: &InitialReference,
    ) -> io::Result<Self> {
        let mut out = Vec::new();
        for (version, name) in shadows {
            let dir = dir.join(name);
            std::fs::create_dir_all(&dir)?;
            out.push(ShadowFile {
                version: version.clone(),
                writer: Some(ReplayWriter::create(
                    &dir.join("decisions.jsonl"),
                    reference,
                )?),
                dir,
                what_if: BTreeMap::new(),
            });
        }
        Ok(ShadowFiles { shadows: out })
    }
}

impl crate::consumer::Consumer for ShadowFiles {
    fn name(&self) -> &'static str {
        "shadow-files"
    }
    fn batch(&mut self, batch: &Batch) -> Result<(), crate::consumer::Fault> {
        let empty = crate::ShadowBatch::default();
        for (index, shadow) in self.shadows.iter_mut().enumerate() {
            let part = batch.shadows.get(index).unwrap_or(&empty);
            let writer = shadow.writer.as_mut().expect("not ended");
            writer
                .write_parts(
                    &part.decisions,
                    &batch.controls,
                    &part.accounts,
                    &part.analyses,
                )
                .map_err(|e| {
                    crate::consumer::Fault::Fatal(format!(
                        "writing shadow {:?}: {e}",
                        shadow.version
                    ))
                })?;
            analyses::apply_what_if(&mut shadow.what_if, part.what_if.iter().cloned());
        }
        Ok(())
    }
    fn end(&mut self) -> Result<(), crate::consumer::Fault> {
        for shadow in &mut self.shadows {
            let writer = shadow.writer.take().expect("ended once");
            let fault = |e: io::Error| {
                crate::consumer::Fault::Fatal(format!("writing shadow {:?}: {e}", shadow.version))
            };
            writer
                .finish(
                    &shadow.dir.join("analyses.json"),
                    Some(&shadow.dir.join("balances.csv")),
                )
                .map_err(fault)?;
            let mut out =
                BufWriter::new(File::create(shadow.dir.join("what_if.json")).map_err(fault)?);
            serde_json::to_writer_pretty(
                &mut out,
                &analyses::what_if_json(&shadow.version, &shadow.what_if),
            )
            .map_err(|e| fault(e.into()))?;
            out.write_all(b"\n").map_err(fault)?;
            out.flush().map_err(fault)?;
        }
        Ok(())
    }
}

/// Quotes a CSV field when it needs it (RFC 4180).
fn csv_field(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\"")).into()
    } else {
        s.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quoting() {
        assert_eq!(csv_field("u1"), "u1");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("a\"b"), "\"a\"\"b\"");
    }
}

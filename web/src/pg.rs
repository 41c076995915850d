//! The PostgreSQL queries of the API: minute ranges of the per-minute analyses, the
//! decisions of one transaction id, one user's reference values and account with its last
//! approvals, and the rule sets (SPEC §11).
//!
//! One connection, behind a mutex, used from tokio's blocking pool; it is opened on first
//! use (connect timeout 5 s), gets a 5 s statement timeout, and is dropped after any error
//! so that the next query reconnects.
//!
//! Tables newer than the first schema are looked up, not assumed ([`Schema`]): the rule
//! sets (`rule_sets`) and a decision's stored `rules_version` may not exist yet in a
//! database an older pipeline wrote. A decision read from a database without the column
//! gets the version in force at its `t` from `rule_sets` (SPEC §11: the last rule set, in
//! `(effective_ms, position)` order, with `effective_ms <= t`), or none without that table.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use postgres::types::ToSql;
use postgres::{Client, Row};
use serde_json::{json, Value};

use vtpga_dataflow::analyses::{key_from_parts, AnalysisKey, Tally};
use vtpga_dataflow::calendar::format_utc_ms;
use vtpga_dataflow::SourcePos;
use vtpga_sinks::postgres::{decision_record, tally_at, DECISION_COLUMNS, TALLY_COLUMNS};

use crate::controls::{rule_json, RULES_HISTORY_LIMIT};
use crate::state::render_rows;

/// How many of a user's last approvals `/api/users/{id}` lists.
pub const LAST_APPROVALS: i64 = 20;
/// At most this many decisions of one transaction id are returned.
const MAX_BY_ID: i64 = 100;

/// How often a schema that lacks something is looked at again (a pipeline may migrate the
/// database while the server runs).
const SCHEMA_RECHECK: Duration = Duration::from_secs(10);

/// What the database holds beyond the first schema.
#[derive(Clone, Copy, Debug)]
pub struct Schema {
    /// The table `rule_sets` exists.
    pub rule_sets: bool,
    /// `transactions` has a `rules_version` column.
    pub tx_rules_version: bool,
    checked: Instant,
}

impl Schema {
    fn read(c: &mut Client) -> Result<Schema, postgres::Error> {
        let r = c.query_one(
            "SELECT to_regclass('rule_sets') IS NOT NULL,
                    EXISTS (SELECT 1 FROM information_schema.columns
                            WHERE table_schema = current_schema() AND table_name = 'transactions'
                              AND column_name = 'rules_version')",
            &[],
        )?;
        Ok(Schema {
            rule_sets: r.get(0),
            tx_rules_version: r.get(1),
            checked: Instant::now(),
        })
    }

    fn stale(&self) -> bool {
        !(self.rule_sets && self.tx_rules_version) && self.checked.elapsed() >= SCHEMA_RECHECK
    }

    /// The decisions' query: [`DECISION_COLUMNS`], then `decided_at` in ms and what gives
    /// the rules version, by name (so that the stored record's own columns may grow).
    /// `rest` follows `FROM transactions tr`.
    fn decisions_sql(&self, rest: &str) -> String {
        let stored = if self.tx_rules_version {
            "tr.rules_version"
        } else {
            "NULL::text"
        };
        let derived = if self.rule_sets {
            "(SELECT rs.version FROM rule_sets rs WHERE rs.effective_ms <= tr.t
              ORDER BY rs.effective_ms DESC, rs.partition DESC NULLS LAST, rs.\"offset\" DESC
              LIMIT 1)"
        } else {
            "NULL::text"
        };
        format!(
            "SELECT {DECISION_COLUMNS}, (extract(epoch FROM tr.decided_at) * 1000)::bigint AS web_decided_at_ms,
                    {stored} AS web_rules_version, {derived} AS web_rules_version_in_force
             FROM transactions tr {rest}"
        )
    }
}

/// The rule sets as `rule_sets` holds them: those in force by the pipeline's committed
/// time (the newest [`RULES_HISTORY_LIMIT`], oldest first) and those after it.
pub struct RuleRows {
    pub history: Vec<Value>,
    pub pending: Vec<Value>,
}

pub struct Pg {
    url: String,
    client: Mutex<Option<(Client, Schema)>>,
}

impl Pg {
    pub fn new(url: String) -> Self {
        Pg {
            url,
            client: Mutex::new(None),
        }
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Client, Schema) -> Result<T, postgres::Error>,
    ) -> anyhow::Result<T> {
        let mut slot = self.client.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_none_or(|(c, _)| c.is_closed()) {
            let mut client = vtpga_sinks::postgres::connect_plain(&self.url)?;
            client.batch_execute("SET statement_timeout = '5s'")?;
            let schema = Schema::read(&mut client)?;
            *slot = Some((client, schema));
        }
        let (client, schema) = slot.as_mut().expect("connected");
        let result = match schema.stale() {
            true => Schema::read(client).map(|s| *schema = s),
            false => Ok(()),
        };
        match result.and_then(|()| f(client, *schema)) {
            Ok(v) => Ok(v),
            Err(e) => {
                *slot = None;
                Err(e.into())
            }
        }
    }

    /// The rows of a per-minute analysis whose minute is in `from..=to`, rendered exactly as
    /// the live rows are. Reads `analysis_rows` (what the views `minute_frequency` and
    /// `distance_band_outcome` show) by its primary key.
    pub fn minute_rows(
        &self,
        name: &str,
        from: Option<i64>,
        to: Option<i64>,
    ) -> anyhow::Result<Vec<Value>> {
        let (from_m, to_m) = (from.unwrap_or(i64::MIN), to.unwrap_or(i64::MAX));
        let rows = self.with(|c, _| {
            c.query(
                format!(
                    "SELECT k, minute, {TALLY_COLUMNS}
                     FROM analysis_rows WHERE analysis = $1 AND minute BETWEEN $2 AND $3"
                )
                .as_str(),
                &[&name, &from_m, &to_m],
            )
        })?;
        let mut out: BTreeMap<AnalysisKey, Tally> = BTreeMap::new();
        for r in rows {
            let k: String = r.get(0);
            if let Some(key) = key_from_parts(name, &k, r.get(1)) {
                out.insert(key, tally_at(&r, 2));
            }
        }
        Ok(render_rows(name, out.iter(), from, to))
    }

    /// The decisions of the messages that carried transaction id `id`, in ledger order.
    pub fn by_id(&self, id: &str) -> anyhow::Result<Vec<Value>> {
        // Ids are stored as their UTF-8 bytes (SPEC §8: U+0000 and any length kept).
        let id = id.as_bytes();
        let rows = self.with(|c, schema| {
            let sql = schema.decisions_sql(&format!(
                "WHERE tx_id = $1 ORDER BY t, partition, \"offset\" LIMIT {MAX_BY_ID}"
            ));
            c.query(sql.as_str(), &[&id as &(dyn ToSql + Sync)])
        })?;
        Ok(rows.iter().map(record).collect())
    }

    /// A user's reference values (SPEC §11: as the latest change left them; `users`),
    /// current account (`accounts`, or the opening values when no decision changed it)
    /// and last approvals as payer, or `None` when no user has that id (never created, or
    /// deleted).
    pub fn user(&self, id: &str) -> anyhow::Result<Option<Value>> {
        if id.contains('\0') {
            // PostgreSQL's text cannot hold U+0000, so no user (a text id) has one.
            return Ok(None);
        }
        let payer = id.as_bytes();
        let (user, approvals) = self.with(|c, schema| {
            // The `balances` view's join, with the opening balance beside the current one.
            let user = c.query_opt(
                "SELECT u.id, u.name, u.region_id, r.uf, u.balance_cents, u.credit_limit_cents,
                        coalesce(a.balance_cents, u.balance_cents), coalesce(a.credit_used_cents, 0),
                        a.last_approved_ms
                 FROM users u LEFT JOIN accounts a ON a.user_id = u.id
                 LEFT JOIN regions r ON r.id = u.region_id
                 WHERE u.id = $1",
                &[&id],
            )?;
            let sql = schema.decisions_sql(&format!(
                "WHERE substring(payer_id FROM 1 FOR 256) = substring($1::bytea FROM 1 FOR 256)
                   AND payer_id = $1::bytea AND status = 'approved'
                 ORDER BY t DESC LIMIT {LAST_APPROVALS}"
            ));
            let approvals = match &user {
                Some(_) => c.query(sql.as_str(), &[&payer as &(dyn ToSql + Sync)])?,
                None => Vec::new(),
            };
            Ok((user, approvals))
        })?;
        Ok(user.map(|u| {
            let limit: i64 = u.get(5);
            let used: i64 = u.get(7);
            let last: Option<i64> = u.get(8);
            json!({
                "id": u.get::<_, String>(0),
                "name": u.get::<_, String>(1),
                "region_id": u.get::<_, String>(2),
                "uf": u.get::<_, Option<String>>(3),
                "opening_balance_cents": u.get::<_, i64>(4),
                "credit_limit_cents": limit,
                "balance_cents": u.get::<_, i64>(6),
                "credit_used_cents": used,
                "credit_available_cents": limit.saturating_sub(used),
                "last_approved_ms": last,
                "last_approved_event_time": last.map(format_utc_ms),
                "last_approvals": approvals.iter().map(record).collect::<Vec<_>>(),
                "source": "postgres",
            })
        }))
    }

    /// The rule sets of `rule_sets` in `(effective_ms, position)` order, the initial set
    /// (no position) first: those in force by the pipeline's committed time
    /// (`pipeline_state.cut_time`; all when there is none) and those after it. `None` when
    /// the database has no `rule_sets` table.
    pub fn rules(&self) -> anyhow::Result<Option<RuleRows>> {
        const COLUMNS: &str =
            "version, risk_threshold, max_delay_ms, dedup_window_ms, effective_ms, partition, \"offset\"";
        self.with(|c, schema| {
            if !schema.rule_sets {
                return Ok(None);
            }
            let cut: i64 = c
                .query_opt("SELECT cut_time FROM pipeline_state WHERE id = 1", &[])?
                .map_or(i64::MAX, |r| r.get(0));
            let mut history = c.query(
                format!(
                    "SELECT {COLUMNS} FROM rule_sets WHERE effective_ms <= $1 OR partition IS NULL
                     ORDER BY effective_ms DESC, partition DESC NULLS LAST, \"offset\" DESC
                     LIMIT {RULES_HISTORY_LIMIT}"
                )
                .as_str(),
                &[&cut],
            )?;
            history.reverse();
            let pending = c.query(
                format!(
                    "SELECT {COLUMNS} FROM rule_sets WHERE effective_ms > $1 AND partition IS NOT NULL
                     ORDER BY effective_ms, partition, \"offset\" LIMIT {RULES_HISTORY_LIMIT}"
                )
                .as_str(),
                &[&cut],
            )?;
            Ok(Some(RuleRows {
                history: history.iter().filter_map(rule_row).collect(),
                pending: pending.iter().filter_map(rule_row).collect(),
            }))
        })
    }
}

/// A `rule_sets` row as its `/api/rules` JSON, or `None` (logged) when it lacks a value:
/// a malformed row is left out, never a failed answer.
fn rule_row(r: &Row) -> Option<Value> {
    // Integers as the sink declares them: bigint, or a narrower integer.
    let int = |i: usize| -> Option<i64> {
        r.try_get::<_, Option<i64>>(i)
            .or_else(|_| r.try_get::<_, Option<i32>>(i).map(|v| v.map(i64::from)))
            .ok()
            .flatten()
    };
    let version = r.try_get::<_, Option<String>>(0).ok().flatten();
    let threshold = r.try_get::<_, Option<f64>>(1).ok().flatten();
    let pos = match (r.try_get::<_, Option<i32>>(5).ok().flatten(), int(6)) {
        (Some(partition), Some(offset)) => Some(SourcePos { partition, offset }),
        _ => None,
    };
    match (version, threshold, int(2), int(3), int(4)) {
        (Some(v), Some(risk), Some(delay), Some(window), Some(at)) => {
            Some(rule_json(&v, risk, delay, window, at, pos))
        }
        (v, ..) => {
            log::warn!("dashboard: rule_sets row {v:?} lacks a value; left out of /api/rules");
            None
        }
    }
}

/// A `transactions` row (selected by [`Schema::decisions_sql`]) as its SPEC §8 decision
/// record, with its `rules_version` (stored, or the version in force at its `t`), plus
/// `decided_at_ms`.
fn record(r: &Row) -> Value {
    let mut m = decision_record(r);
    if !m.contains_key("rules_version") {
        // The stored column's type is the sink's choice: text, or bytes like the ids.
        let stored = r
            .try_get::<_, Option<String>>("web_rules_version")
            .ok()
            .flatten()
            .or_else(|| {
                r.try_get::<_, Option<Vec<u8>>>("web_rules_version")
                    .ok()
                    .flatten()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
            });
        let version = stored.or_else(|| {
            r.try_get::<_, Option<String>>("web_rules_version_in_force")
                .ok()
                .flatten()
        });
        if let Some(v) = version {
            m.insert("rules_version".into(), v.into());
        }
    }
    m.insert(
        "decided_at_ms".into(),
        r.get::<_, i64>("web_decided_at_ms").into(),
    );
    Value::Object(m)
}

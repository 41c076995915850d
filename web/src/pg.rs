//! The PostgreSQL queries of the API: minute ranges of the per-minute analyses, the
//! decisions of one transaction id, and one user's account with its last approvals.
//!
//! One connection, behind a mutex, used from tokio's blocking pool; it is opened on first
//! use (connect timeout 5 s), gets a 5 s statement timeout, and is dropped after any error
//! so that the next query reconnects.

use std::collections::BTreeMap;
use std::sync::Mutex;

use postgres::types::ToSql;
use postgres::{Client, Row};
use serde_json::{json, Value};

use vtpga_dataflow::analyses::{key_from_parts, AnalysisKey, Tally};
use vtpga_dataflow::calendar::format_utc_ms;
use vtpga_sinks::postgres::{decision_record, tally_at, DECISION_COLUMNS, TALLY_COLUMNS};

use crate::state::render_rows;

/// How many of a user's last approvals `/api/users/{id}` lists.
pub const LAST_APPROVALS: i64 = 20;
/// At most this many decisions of one transaction id are returned.
const MAX_BY_ID: i64 = 100;

pub struct Pg {
    url: String,
    client: Mutex<Option<Client>>,
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
        f: impl FnOnce(&mut Client) -> Result<T, postgres::Error>,
    ) -> anyhow::Result<T> {
        let mut slot = self.client.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_none_or(|c| c.is_closed()) {
            let mut client = vtpga_sinks::postgres::connect_plain(&self.url)?;
            client.batch_execute("SET statement_timeout = '5s'")?;
            *slot = Some(client);
        }
        let client = slot.as_mut().expect("connected");
        match f(client) {
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
        let rows = self.with(|c| {
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
        let sql = format!(
            "SELECT {DECISION_COLUMNS} FROM transactions WHERE tx_id = $1
             ORDER BY t, partition, \"offset\" LIMIT {MAX_BY_ID}"
        );
        // Ids are stored as their UTF-8 bytes (SPEC §8: U+0000 and any length kept).
        let id = id.as_bytes();
        let rows = self.with(|c| c.query(sql.as_str(), &[&id as &(dyn ToSql + Sync)]))?;
        Ok(rows.iter().map(record).collect())
    }

    /// A user's reference data, current account and last approvals as payer, or `None`.
    pub fn user(&self, id: &str) -> anyhow::Result<Option<Value>> {
        let sql = format!(
            "SELECT {DECISION_COLUMNS} FROM transactions
             WHERE substring(payer_id FROM 1 FOR 256) = substring($1::bytea FROM 1 FOR 256)
               AND payer_id = $1::bytea AND status = 'approved'
             ORDER BY t DESC LIMIT {LAST_APPROVALS}"
        );
        if id.contains('\0') {
            // PostgreSQL's text cannot hold U+0000, so no user (a text id) has one.
            return Ok(None);
        }
        let payer = id.as_bytes();
        let (user, approvals) = self.with(|c| {
            let user = c.query_opt(
                "SELECT u.id, u.name, u.region_id, r.uf, b.balance_cents, b.credit_used_cents,
                        b.credit_limit_cents, b.last_approved_ms
                 FROM balances b JOIN users u ON u.id = b.id
                 LEFT JOIN regions r ON r.id = u.region_id
                 WHERE b.id = $1",
                &[&id],
            )?;
            let approvals = match &user {
                Some(_) => c.query(sql.as_str(), &[&payer as &(dyn ToSql + Sync)])?,
                None => Vec::new(),
            };
            Ok((user, approvals))
        })?;
        Ok(user.map(|u| {
            let limit: i64 = u.get(6);
            let used: i64 = u.get(5);
            let last: Option<i64> = u.get(7);
            json!({
                "id": u.get::<_, String>(0),
                "name": u.get::<_, String>(1),
                "region_id": u.get::<_, String>(2),
                "uf": u.get::<_, Option<String>>(3),
                "balance_cents": u.get::<_, i64>(4),
                "credit_used_cents": used,
                "credit_limit_cents": limit,
                "credit_available_cents": limit - used,
                "last_approved_event_time": last.map(format_utc_ms),
                "last_approvals": approvals.iter().map(record).collect::<Vec<_>>(),
            })
        }))
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        // The synchronous client closes its connection on a runtime of its own, which
        // panics on a thread that drives tokio tasks (where the last App may be dropped).
        let client = self
            .client
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(client) = client {
            let _ = std::thread::Builder::new()
                .name("vtpga-web-pg-close".into())
                .spawn(move || drop(client));
        }
    }
}

/// A `transactions` row (selected as [`DECISION_COLUMNS`]) as its SPEC §8 decision record,
/// plus `decided_at_ms`.
fn record(r: &Row) -> Value {
    let mut m = decision_record(r);
    m.insert("decided_at_ms".into(), r.get::<_, i64>(17).into());
    Value::Object(m)
}

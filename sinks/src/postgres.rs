//! PostgreSQL: the durable record (SPEC §8).
//!
//! * Schema: versioned migrations embedded in the binary (`sinks/migrations/*.sql`),
//!   applied once each and recorded in `schema_migrations`.
//! * The sink writes each batch — every closed timestamp up to `batch.time`, from the whole
//!   cluster — in ONE database transaction: the decisions and invalid payloads by binary
//!   COPY, the changed accounts and analysis rows by `unnest` upserts, the next offset and
//!   last arrival time of every source partition the batch touched, and the cut time.
//!   Live changes (SPEC §11) go in the same transaction, before the accounts: `users` and
//!   `regions` follow every applied change, `rule_sets` gains each rule set applied,
//!   `control_pending` keeps the records accepted for a later effective time until their
//!   outcome, refused records join `invalid_messages` (topic [`CONTROL_TOPIC`]), a deleted
//!   user's `accounts` row goes, and the control topic's consumed offsets are recorded
//!   under their own source name ([`PgSink::with_control_source`]).
//!   After a crash, the pipeline resumes from exactly that cut ([`load_resume`]): nothing
//!   is lost and nothing counted twice.
//! * Connection failures are retried with bounded backoff (100 ms doubling to 5 s), the
//!   same batch again, so deciding waits (backpressure through the bounded batch channel)
//!   rather than losing anything. A connection lost during COMMIT leaves the outcome
//!   unknown: before writing a batch again the sink asks whether its cut is already there.
//! * No record stops the sink (SPEC §10). Ids are stored as their UTF-8 bytes (`bytea`:
//!   U+0000 and any length survive), error texts escape U+0000, and a decision a table
//!   still refuses is written to `quarantine` with its record, payload and the store's
//!   error: when a batch fails for a reason other than the connection, it is written
//!   again with each chunk of decisions under a savepoint, halving the chunks that fail
//!   down to the single refused rows. The batch commits; [`PgStats::quarantined`] counts.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{ToSql, Type};
use postgres::{Client, NoTls, Transaction};

use vtpga_dataflow::analyses::{key_from_parts, key_parts, AnalysisKey, Tally};
use vtpga_dataflow::calendar::format_utc_ms;
use vtpga_dataflow::control::{control_json, parse_control};
use vtpga_dataflow::graph::{
    Account, ControlIn, ControlOutcome, Decision, OutcomeKind, Resume, RuleChange,
};
use vtpga_dataflow::{Change, Region, RuleSet, SourcePos, Status, Time, User};

use crate::Batch;

/// The migrations, in order: (version, SQL).
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../migrations/0001_schema.sql")),
    (
        2,
        include_str!("../migrations/0002_exact_ids_quarantine.sql"),
    ),
    (3, include_str!("../migrations/0003_exact_sums.sql")),
    (4, include_str!("../migrations/0004_lean_indexes.sql")),
    (5, include_str!("../migrations/0005_live_changes.sql")),
];

/// The `topic` of the `invalid_messages` rows of control records that changed nothing
/// (SPEC §11); the transaction messages' rows have the column's default, `transacoes`.
pub const CONTROL_TOPIC: &str = "transacoes-controle";

/// An error of the PostgreSQL store.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The client or the server failed (connection, SQL); a new connection may cure some.
    #[error("PostgreSQL: {}", describe(.0))]
    Db(#[from] postgres::Error),
    /// Anything else: TLS setup, a record of another source, a row or record that cannot
    /// be converted. A new connection does not cure it.
    #[error("{0}")]
    Data(String),
}

/// The result of a PostgreSQL operation.
pub type PgResult<T> = Result<T, PgError>;

/// The server's own words for an error (code, message, detail), or the client's.
fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut text = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
            if let Some(detail) = db.detail() {
                text.push_str(&format!(" ({detail})"));
            }
            text
        }
        None => e.to_string(),
    }
}

/// Connects, with a connect timeout, and applies any missing migration.
pub fn connect(url: &str) -> PgResult<Client> {
    let mut client = connect_plain(url)?;
    migrate(&mut client)?;
    Ok(client)
}

/// Connects, with a connect timeout, and does nothing else.
///
/// TLS follows the URL's `sslmode`: `prefer` (the default) uses TLS when the server
/// offers it, `require` refuses to go on without it, `disable` never asks. The server's
/// certificate and host name are verified against the system's trust store, or against
/// the CA file named by `VTPGA_POSTGRES_CA` (e.g. the RDS bundle).
pub fn connect_plain(url: &str) -> PgResult<Client> {
    let mut config: postgres::Config = url.parse()?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    if config.get_ssl_mode() == postgres::config::SslMode::Disable {
        return Ok(config.connect(NoTls)?);
    }
    let ca = std::env::var_os("VTPGA_POSTGRES_CA").map(std::path::PathBuf::from);
    Ok(config.connect(tls_connector(ca.as_deref())?)?)
}

/// The TLS connector of [`connect_plain`]: the system's trust store, or only `ca`.
fn tls_connector(ca: Option<&std::path::Path>) -> PgResult<postgres_openssl::MakeTlsConnector> {
    let tls = |e: openssl::error::ErrorStack| PgError::Data(format!("TLS setup: {e}"));
    let mut builder =
        openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls()).map_err(tls)?;
    if let Some(ca) = ca {
        builder
            .set_ca_file(ca)
            .map_err(|e| PgError::Data(format!("VTPGA_POSTGRES_CA {}: {e}", ca.display())))?;
    }
    Ok(postgres_openssl::MakeTlsConnector::new(builder.build()))
}

/// Applies the embedded migrations that are not yet recorded.
pub fn migrate(client: &mut Client) -> PgResult<()> {
    client.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
    )?;
    for (version, sql) in MIGRATIONS {
        let mut tx = client.transaction()?;
        // One migrator at a time (several processes may start together).
        tx.execute("LOCK TABLE schema_migrations IN EXCLUSIVE MODE", &[])?;
        let done = tx
            .query_opt(
                "SELECT 1 FROM schema_migrations WHERE version = $1",
                &[version],
            )?
            .is_some();
        if !done {
            tx.batch_execute(sql)?;
            tx.execute(
                "INSERT INTO schema_migrations (version) VALUES ($1)",
                &[version],
            )?;
            log::info!("applied migration {version}");
        }
        tx.commit()?;
    }
    Ok(())
}

/// Writes regions and users that are not there yet (re-running changes nothing).
/// Returns how many rows were inserted.
pub fn seed_reference(
    client: &mut Client,
    regions: &[Region],
    users: &[User],
) -> PgResult<(u64, u64)> {
    let mut tx = client.transaction()?;
    let ids: Vec<&str> = regions.iter().map(|r| r.id.as_str()).collect();
    let ufs: Vec<&str> = regions.iter().map(|r| r.uf.as_str()).collect();
    let names: Vec<&str> = regions.iter().map(|r| r.name.as_str()).collect();
    let lats: Vec<f64> = regions.iter().map(|r| r.lat).collect();
    let lons: Vec<f64> = regions.iter().map(|r| r.lon).collect();
    let r = tx.execute(
        "INSERT INTO regions (id, uf, name, lat, lon)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[], $5::float8[])
         ON CONFLICT (id) DO NOTHING",
        &[&ids, &ufs, &names, &lats, &lons],
    )?;
    let ids: Vec<&str> = users.iter().map(|u| u.id.as_str()).collect();
    let names: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
    let regions_of: Vec<&str> = users.iter().map(|u| u.region_id.as_str()).collect();
    let balances: Vec<i64> = users.iter().map(|u| u.balance_cents).collect();
    let limits: Vec<i64> = users.iter().map(|u| u.credit_limit_cents).collect();
    let u = tx.execute(
        "INSERT INTO users (id, name, region_id, balance_cents, credit_limit_cents)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[])
         ON CONFLICT (id) DO NOTHING",
        &[&ids, &names, &regions_of, &balances, &limits],
    )?;
    tx.commit()?;
    Ok((r, u))
}

/// The reference data as stored (with the texts a live change wrote escaped read back as
/// they were: see [`from_pg_text`]).
pub fn load_reference(client: &mut Client) -> PgResult<(Vec<Region>, Vec<User>)> {
    let regions = client
        .query(
            "SELECT id, uf, name, lat, lon FROM regions ORDER BY id",
            &[],
        )?
        .iter()
        .map(|r| Region {
            id: from_pg_text(r.get(0)),
            uf: from_pg_text(r.get(1)),
            name: from_pg_text(r.get(2)),
            lat: r.get(3),
            lon: r.get(4),
        })
        .collect();
    let users = client
        .query(
            "SELECT id, name, region_id, balance_cents, credit_limit_cents FROM users ORDER BY id",
            &[],
        )?
        .iter()
        .map(|r| User {
            id: from_pg_text(r.get(0)),
            name: from_pg_text(r.get(1)),
            region_id: from_pg_text(r.get(2)),
            balance_cents: r.get(3),
            credit_limit_cents: r.get(4),
        })
        .collect();
    Ok((regions, users))
}

/// Where a source partition resumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionResume {
    /// The next offset to read: one past the highest committed decision's.
    pub next_offset: i64,
    /// The last arrival time given in the partition, ms (the SPEC §4 clamp goes on from it).
    pub last_t: Time,
}

/// Everything a restarted pipeline needs.
#[derive(Debug, Default)]
pub struct ResumePoint {
    /// The latest committed cut (every arrival time up to it is fully recorded).
    pub cut_time: Option<Time>,
    /// The graph's state at the cut: rule 3 memory, accounts and analysis rows.
    pub state: Resume,
    /// Where each source partition with committed offsets resumes, by partition.
    pub partitions: HashMap<i32, PartitionResume>,
    /// Where each partition of the control topic (SPEC §11) resumes: its records up to
    /// there have arrived (applied, rejected, or kept in `state.scheduled`).
    pub control_partitions: HashMap<i32, PartitionResume>,
}

/// The rule set the pipeline starts from (SPEC §11): the one stored in `rule_sets` (no
/// position, effective from 0) if there is one, else `wanted`, stored now. A restart keeps
/// the rule set its database started with (the decisions already recorded were decided
/// by it, and its version may not be used again); a different `wanted` is logged and
/// ignored. Call it before [`load_resume`], which reads the rule sets' widest window.
pub fn initial_rules(client: &mut Client, wanted: &RuleSet) -> PgResult<RuleSet> {
    let mut tx = client.transaction()?;
    // The unique index of the initial row makes processes starting together insert one.
    tx.execute(
        "INSERT INTO rule_sets (version, risk_threshold, max_delay_ms, dedup_window_ms,
             effective_ms, partition, \"offset\")
         VALUES ($1, $2, $3, $4, 0, NULL, NULL) ON CONFLICT DO NOTHING",
        &[
            &pg_text(&wanted.version).as_ref(),
            &wanted.risk_threshold,
            &ms_i64(wanted.max_delay_ms),
            &ms_i64(wanted.dedup_window_ms),
        ],
    )?;
    let row = tx.query_opt(
        "SELECT version, risk_threshold, max_delay_ms, dedup_window_ms FROM rule_sets
         WHERE partition IS NULL",
        &[],
    )?;
    tx.commit()?;
    let Some(row) = row else {
        return Err(PgError::Data(format!(
            "no initial rule set could be recorded: version {:?} is already a later rule set's",
            wanted.version
        )));
    };
    let stored = rule_set_at(&row, 0);
    if stored != *wanted {
        log::warn!(
            "this database started with rule set {stored:?}: it stays the initial one \
             (not {wanted:?}, given now)"
        );
    }
    Ok(stored)
}

/// A `u64` count of ms as `bigint` (saturating).
fn ms_i64(ms: u64) -> i64 {
    ms.min(i64::MAX as u64) as i64
}

/// The rule set of columns `first..first + 4` of a row: version, risk threshold, maximum
/// delay, duplicate window.
fn rule_set_at(r: &postgres::Row, first: usize) -> RuleSet {
    RuleSet {
        version: from_pg_text(r.get(first)),
        risk_threshold: r.get(first + 1),
        max_delay_ms: r.get::<_, i64>(first + 2).max(0) as u64,
        dedup_window_ms: r.get::<_, i64>(first + 3).max(0) as u64,
    }
}

/// Loads the state at the last committed cut, for `source` (its offsets) and, if given,
/// the control topic's source `control_source` (its offsets, as the sink's
/// [`PgSink::with_control_source`] wrote them). The rule changes applied before the cut
/// and the control records still to take effect come with the state; rule 3's memory
/// looks back the widest duplicate window of every rule set (so [`initial_rules`] must
/// have recorded the initial one). The credits of approvals at the cut time itself (due at
/// cut + 1, so not yet in any committed account) are applied to their payees here, and
/// written back once (recorded in `pipeline_state.credits_through`), so that a payee
/// nothing else touches still ends with the right balance.
pub fn load_resume(
    client: &mut Client,
    source: &str,
    control_source: Option<&str>,
) -> PgResult<ResumePoint> {
    let mut tx = client.transaction()?;
    // Every process of a cluster resumes at once: the row lock makes the cut-time credits
    // below apply once (the others wait, then see `credits_through` already set).
    let row = tx.query_opt(
        "SELECT cut_time, credits_through, source FROM pipeline_state WHERE id = 1 FOR UPDATE",
        &[],
    )?;
    let Some(row) = row else {
        tx.commit()?;
        return Ok(ResumePoint::default());
    };
    let cut: i64 = row.get(0);
    let credits_through: Option<i64> = row.get(1);
    let recorded: String = row.get(2);
    if recorded != source {
        // Source positions are the identity of the rows: two sources cannot share them.
        return Err(PgError::Data(format!(
            "this database holds the record of source {recorded:?}, not {source:?}: use another database"
        )));
    }
    if credits_through != Some(cut) {
        // Approvals at the cut time credit their payees at cut + 1: apply them now, once.
        tx.execute(
            "INSERT INTO accounts (user_id, balance_cents, credit_used_cents, last_approved_ms)
             SELECT u.id, coalesce(a.balance_cents, u.balance_cents) + c.amount,
                    coalesce(a.credit_used_cents, 0), a.last_approved_ms
             FROM (SELECT payee_id, sum(amount_cents)::bigint AS amount FROM transactions
                   WHERE t = $1 AND status = 'approved' GROUP BY payee_id) c
             JOIN users u ON convert_to(u.id, 'UTF8') = c.payee_id
             LEFT JOIN accounts a ON a.user_id = u.id
             ON CONFLICT (user_id) DO UPDATE SET balance_cents = excluded.balance_cents",
            &[&cut],
        )?;
        tx.execute(
            "UPDATE pipeline_state SET credits_through = cut_time WHERE id = 1",
            &[],
        )?;
    }
    let accounts = tx
        .query(
            "SELECT user_id, balance_cents, credit_used_cents, last_approved_ms FROM accounts",
            &[],
        )?
        .iter()
        .map(|r| Account {
            user: from_pg_text(r.get(0)),
            balance_cents: r.get(1),
            credit_used_cents: r.get(2),
            last_approved_ms: r.get(3),
            deleted: false,
        })
        .collect();
    // Rule 3 looks back `dedup_window` from any later message (t > cut), the window in
    // force when the id was seen: the widest of all is enough (the graph keeps each id
    // only as long as its own window says).
    let widest: Option<i64> = tx
        .query_one("SELECT max(dedup_window_ms) FROM rule_sets", &[])?
        .get(0);
    let Some(widest) = widest else {
        return Err(PgError::Data(
            "no rule set is recorded: initial_rules must run before load_resume".to_owned(),
        ));
    };
    let since = cut.saturating_sub(widest.max(0));
    let seen = tx
        .query(
            "SELECT tx_id, max(t) FROM transactions
             WHERE t >= $1 AND tx_id IS NOT NULL AND status NOT IN ('invalid', 'late')
             GROUP BY tx_id",
            &[&since],
        )?
        .iter()
        .map(|r| (id_text(r.get(0)), r.get::<_, i64>(1) as Time))
        .collect();
    let analyses = analysis_rows(&mut tx)?;
    let partitions = source_offsets(&mut tx, source)?;
    let control_partitions = match control_source {
        Some(control) => source_offsets(&mut tx, control)?,
        None => HashMap::new(),
    };
    let rules = tx
        .query(
            "SELECT version, risk_threshold, max_delay_ms, dedup_window_ms, effective_ms,
                    partition, \"offset\"
             FROM rule_sets WHERE partition IS NOT NULL
             ORDER BY effective_ms, partition, \"offset\"",
            &[],
        )?
        .iter()
        .map(|r| RuleChange {
            at: r.get::<_, i64>(4).max(0) as Time,
            pos: SourcePos {
                partition: r.get(5),
                offset: r.get(6),
            },
            rules: rule_set_at(r, 0),
        })
        .collect();
    let scheduled = tx
        .query(
            "SELECT partition, \"offset\", t, record FROM control_pending
             ORDER BY partition, \"offset\"",
            &[],
        )?
        .iter()
        .map(|r| {
            let raw = r.get::<_, String>(3).into_bytes();
            ControlIn {
                pos: SourcePos {
                    partition: r.get(0),
                    offset: r.get(1),
                },
                t: r.get::<_, i64>(2).max(0) as Time,
                parsed: parse_control(&raw).map_err(|e| e.to_string()),
                raw,
                resumed: true,
            }
        })
        .collect();
    tx.commit()?;
    Ok(ResumePoint {
        cut_time: Some(cut as Time),
        state: Resume {
            seen,
            accounts,
            analyses,
            rules,
            scheduled,
        },
        partitions,
        control_partitions,
    })
}

/// Where each partition of `source` resumes.
fn source_offsets(
    tx: &mut Transaction<'_>,
    source: &str,
) -> PgResult<HashMap<i32, PartitionResume>> {
    Ok(tx
        .query(
            "SELECT partition, next_offset, last_t FROM source_offsets WHERE source = $1",
            &[&source],
        )?
        .iter()
        .map(|r| {
            (
                r.get::<_, i32>(0),
                PartitionResume {
                    next_offset: r.get(1),
                    last_t: r.get::<_, i64>(2) as Time,
                },
            )
        })
        .collect())
}

/// The five tally columns of an `analysis_rows` row (count, approved, rejected,
/// approved and rejected amounts), starting at column `first`, as [`TALLY_COLUMNS`]
/// selects them (the two numeric sums as text: the client has no 128-bit integers).
pub fn tally_at(r: &postgres::Row, first: usize) -> Tally {
    let sum = |i: usize| -> i128 {
        let text: String = r.get(i);
        // A numeric(40, 0) column holds integers that fit in 128 bits (written from them).
        text.parse()
            .unwrap_or_else(|_| panic!("amount sum {text:?} is not an integer"))
    };
    Tally {
        count: r.get(first),
        approved: r.get(first + 1),
        rejected: r.get(first + 2),
        approved_amount_cents: sum(first + 3),
        rejected_amount_cents: sum(first + 4),
    }
}

/// The tally columns of `analysis_rows`, in the order [`tally_at`] reads them.
pub const TALLY_COLUMNS: &str =
    "count, approved, rejected, approved_amount_cents::text, rejected_amount_cents::text";

/// Every stored analysis row.
pub fn analysis_rows(
    client: &mut impl postgres::GenericClient,
) -> PgResult<Vec<(AnalysisKey, Tally)>> {
    let mut analyses = Vec::new();
    for r in client.query(
        format!("SELECT analysis, k, minute, {TALLY_COLUMNS} FROM analysis_rows").as_str(),
        &[],
    )? {
        let (name, k, minute): (String, String, i64) = (r.get(0), r.get(1), r.get(2));
        let key = key_from_parts(&name, &k, minute)
            .ok_or_else(|| PgError::Data(format!("unknown analysis row {name}/{k}/{minute}")))?;
        analyses.push((key, tally_at(&r, 3)));
    }
    Ok(analyses)
}

/// What the sink (all its writers) has done so far.
#[derive(Debug, Default)]
pub struct PgStats {
    /// Committed transactions.
    pub batches: AtomicU64,
    /// Decisions committed.
    pub decisions: AtomicU64,
    /// Attempts retried after a lost connection.
    pub retries: AtomicU64,
    /// Decisions written to `quarantine` because `transactions` refused them.
    pub quarantined: AtomicU64,
}

impl PgStats {
    /// (transactions, decisions, retries, quarantined) now.
    pub fn snapshot(&self) -> (u64, u64, u64, u64) {
        (
            self.batches.load(Ordering::Relaxed),
            self.decisions.load(Ordering::Relaxed),
            self.retries.load(Ordering::Relaxed),
            self.quarantined.load(Ordering::Relaxed),
        )
    }
}

/// Writes batches; see the module doc.
pub struct PgSink {
    url: String,
    client: Option<Client>,
    source: String,
    /// The control topic's source name, under which its offsets are recorded.
    control_source: Option<String>,
    /// Shared by every writer of one pipeline ([`PgSink::another`]).
    pub stats: Arc<PgStats>,
    /// The previous attempt at the current batch lost its connection: it may have
    /// committed.
    uncertain: bool,
}

fn ms_time(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

/// Is this the kind of error that a new connection may cure?
fn is_connection_error(e: &PgError) -> bool {
    match e {
        PgError::Db(e) => {
            e.is_closed()
                || e.as_db_error().is_none_or(|db| {
                    // admin_shutdown, crash_shutdown, cannot_connect_now, connection_failure...
                    db.code().code().starts_with("57P") || db.code().code().starts_with("08")
                })
        }
        PgError::Data(_) => false,
    }
}

impl PgSink {
    /// A sink for `source` (e.g. `kafka:transacoes`).
    pub fn new(url: &str, source: &str) -> PgResult<Self> {
        let client = connect(url)?;
        Ok(PgSink {
            url: url.to_owned(),
            client: Some(client),
            source: source.to_owned(),
            control_source: None,
            stats: Arc::new(PgStats::default()),
            uncertain: false,
        })
    }

    /// Records the control topic's consumed offsets (SPEC §11; each control outcome with
    /// `arrived`) under the source name `control_source` (e.g.
    /// `kafka:transacoes-controle`), which [`load_resume`] is then given. Without it the
    /// sink records no control offsets. [`PgSink::another`] keeps it.
    pub fn with_control_source(mut self, control_source: &str) -> Self {
        self.control_source = Some(control_source.to_owned());
        self
    }

    /// A second writer for the same source, on its own connection, sharing the counters.
    pub fn another(&self) -> PgResult<Self> {
        Ok(PgSink {
            url: self.url.clone(),
            client: Some(connect(&self.url)?),
            source: self.source.clone(),
            control_source: self.control_source.clone(),
            stats: self.stats.clone(),
            uncertain: false,
        })
    }

    /// Writes `batch` in one transaction, retrying connection failures with bounded
    /// backoff until it is committed (or `give_up` says to stop).
    pub fn write(&mut self, batch: &Batch, give_up: &dyn Fn() -> bool) -> PgResult<()> {
        self.write_in_turn(batch, give_up, &mut || true).map(|_| ())
    }

    /// [`PgSink::write`], with `turn` called after the decisions are copied and before
    /// anything else of the batch is written: it waits until the batch before this one is
    /// committed (and may flush the decisions topic). When `turn` says false the
    /// transaction is rolled back and this returns `Ok(false)`.
    pub fn write_in_turn(
        &mut self,
        batch: &Batch,
        give_up: &dyn Fn() -> bool,
        turn: &mut dyn FnMut() -> bool,
    ) -> PgResult<bool> {
        // count_total retracts a touched row's old value and inserts its new one, so the
        // batch's own changes give every touched row's value after it (absent: deleted).
        let mut rows = BTreeMap::new();
        let touched = apply_touched(&mut rows, &batch.analyses);
        let mut backoff = Duration::from_millis(100);
        let mut careful = false;
        loop {
            let uncertain = std::mem::take(&mut self.uncertain);
            let source = self.source.clone();
            let control_source = self.control_source.clone();
            let attempt = self.client().and_then(|client| {
                if uncertain && already_committed(client, batch)? {
                    log::warn!(
                        "the batch up to t = {} was committed before the connection was lost",
                        batch.time
                    );
                    // Its turn came before it committed: nothing to wait for.
                    return Ok(Some(0));
                }
                let mode = if careful { Mode::Careful } else { Mode::Fast };
                let sources = (source.as_str(), control_source.as_deref());
                write_batch(client, sources, batch, &rows, &touched, mode, turn)
            });
            match attempt {
                Ok(None) => return Ok(false),
                Ok(Some(quarantined)) => {
                    self.stats.batches.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .decisions
                        .fetch_add(batch.decisions.len() as u64, Ordering::Relaxed);
                    self.stats
                        .quarantined
                        .fetch_add(quarantined, Ordering::Relaxed);
                    return Ok(true);
                }
                Err(e) if is_connection_error(&e) && !give_up() => {
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    log::warn!("PostgreSQL unavailable ({e}); retrying in {backoff:?}");
                    self.client = None;
                    self.uncertain = true;
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) if !careful && !is_connection_error(&e) => {
                    // A row the tables refuse: write the batch again, row by row where
                    // needed, quarantining what is still refused.
                    log::warn!(
                        "PostgreSQL refused the batch up to t = {} ({e}); writing it again with refused rows quarantined",
                        batch.time
                    );
                    careful = true;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The connection, opened again if it was lost.
    fn client(&mut self) -> PgResult<&mut Client> {
        if self.client.is_none() {
            self.client = Some(connect(&self.url)?);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }
}

/// One writer as a plain consumer: each batch in one transaction, retried until committed.
/// (The write path drives its writers through [`PgSink::write_in_turn`] instead, so that
/// two of them can copy at once and still commit in order.)
impl crate::consumer::Consumer for PgSink {
    fn name(&self) -> &'static str {
        "postgres"
    }
    fn batch(&mut self, batch: &Batch) -> Result<(), crate::consumer::Fault> {
        self.write(batch, &|| false).map_err(|e| {
            crate::consumer::Fault::Fatal(format!("writing a batch to PostgreSQL: {e}"))
        })
    }
}

/// Is `batch` already in the database? (A connection lost during COMMIT leaves that
/// unknown.) Its decisions are all written in one transaction, so one of them tells; a
/// batch without decisions only moves analysis rows, accounts, reference rows, control
/// rows and the offsets and cut, which writing again leaves as they are (the same final
/// rows, inserts that do nothing on conflict, offsets that only grow).
fn already_committed(client: &mut Client, batch: &Batch) -> PgResult<bool> {
    let Some(d) = batch.decisions.first() else {
        return Ok(false);
    };
    let found = client.query_opt(
        "SELECT 1 FROM transactions WHERE partition = $1 AND \"offset\" = $2
         UNION ALL
         SELECT 1 FROM quarantine WHERE partition = $1 AND \"offset\" = $2",
        &[&d.pos.partition, &d.pos.offset],
    )?;
    Ok(found.is_some())
}

/// How a batch's decisions are copied.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// One COPY of all of them.
    Fast,
    /// Chunks under savepoints, refused rows to `quarantine`.
    Careful,
}

/// An id as stored (`bytea`, its UTF-8 bytes) back as text. Ids are written from parsed
/// JSON strings, so they are UTF-8; anything else stored by hand is shown lossily.
pub fn id_text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// A text for a `text` column: PostgreSQL's text cannot hold U+0000, written `\u0000`.
fn pg_text(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') {
        std::borrow::Cow::Owned(s.replace('\0', "\\u0000"))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// A text written by [`pg_text`] as it was: `\u0000` back to U+0000. (Ids and names of
/// live changes, account ids and rule set versions are read back so; nothing written
/// otherwise holds that six-character text.)
pub fn from_pg_text(s: String) -> String {
    if s.contains("\\u0000") {
        s.replace("\\u0000", "\0")
    } else {
        s
    }
}

/// Writes what the batch's control records did (SPEC §11), in their order: the reference
/// tables follow each change (a key changed several times ends with its last change), a
/// rule set applied joins `rule_sets`, a record accepted for later is kept in
/// `control_pending` until its final outcome, and a record that changed nothing goes to
/// `invalid_messages`. Writing the same outcomes again leaves the same rows.
fn write_controls(tx: &mut Transaction<'_>, controls: &[ControlOutcome]) -> PgResult<()> {
    if controls.is_empty() {
        return Ok(());
    }
    // The last change of each user and region (None: deleted).
    let mut users: BTreeMap<&str, Option<&User>> = BTreeMap::new();
    let mut regions: BTreeMap<&str, Option<&Region>> = BTreeMap::new();
    let mut rules: Vec<(&RuleSet, &ControlOutcome)> = Vec::new();
    // Records accepted for later; the positions of records with a final outcome.
    let mut pending: BTreeMap<SourcePos, (&ControlOutcome, String)> = BTreeMap::new();
    let mut done: Vec<SourcePos> = Vec::new();
    let mut refused: Vec<(&ControlOutcome, &[u8], &str)> = Vec::new();
    for c in controls {
        match &c.kind {
            OutcomeKind::Scheduled(record) => {
                pending.insert(c.pos, (c, control_json(record)));
                continue;
            }
            OutcomeKind::Applied(change) => match change {
                Change::User(u) => {
                    users.insert(&u.id, Some(u));
                }
                Change::UserDelete { id } => {
                    users.insert(id, None);
                }
                Change::Region(r) => {
                    regions.insert(&r.id, Some(r));
                }
                Change::RegionDelete { id } => {
                    regions.insert(id, None);
                }
                Change::Rules(r) => rules.push((r, c)),
                // Its effect is the account row it changed.
                Change::Adjust { .. } => {}
            },
            OutcomeKind::Rejected { raw, error } => refused.push((c, raw, error)),
        }
        done.push(c.pos);
    }
    // A record's final outcome comes after its `Scheduled` (a later cell), whatever the
    // order the batch holds them in.
    for pos in &done {
        pending.remove(pos);
    }

    let (up, gone): (Vec<_>, Vec<_>) = users.into_iter().partition(|(_, u)| u.is_some());
    if !up.is_empty() {
        let users: Vec<&User> = up.into_iter().filter_map(|(_, u)| u).collect();
        let ids: Vec<_> = users.iter().map(|u| pg_text(&u.id)).collect();
        let names: Vec<_> = users.iter().map(|u| pg_text(&u.name)).collect();
        let homes: Vec<_> = users.iter().map(|u| pg_text(&u.region_id)).collect();
        let balances: Vec<i64> = users.iter().map(|u| u.balance_cents).collect();
        let limits: Vec<i64> = users.iter().map(|u| u.credit_limit_cents).collect();
        tx.execute(
            "INSERT INTO users (id, name, region_id, balance_cents, credit_limit_cents)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[])
             ON CONFLICT (id) DO UPDATE SET name = excluded.name,
                 region_id = excluded.region_id, balance_cents = excluded.balance_cents,
                 credit_limit_cents = excluded.credit_limit_cents",
            &[
                &strs(&ids),
                &strs(&names),
                &strs(&homes),
                &balances,
                &limits,
            ],
        )?;
    }
    if !gone.is_empty() {
        let ids: Vec<_> = gone.iter().map(|(id, _)| pg_text(id)).collect();
        tx.execute(
            "DELETE FROM users WHERE id = ANY($1::text[])",
            &[&strs(&ids)],
        )?;
    }

    let (up, gone): (Vec<_>, Vec<_>) = regions.into_iter().partition(|(_, r)| r.is_some());
    if !up.is_empty() {
        let regions: Vec<&Region> = up.into_iter().filter_map(|(_, r)| r).collect();
        let ids: Vec<_> = regions.iter().map(|r| pg_text(&r.id)).collect();
        let ufs: Vec<_> = regions.iter().map(|r| pg_text(&r.uf)).collect();
        let names: Vec<_> = regions.iter().map(|r| pg_text(&r.name)).collect();
        let lats: Vec<f64> = regions.iter().map(|r| r.lat).collect();
        let lons: Vec<f64> = regions.iter().map(|r| r.lon).collect();
        tx.execute(
            "INSERT INTO regions (id, uf, name, lat, lon)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[], $5::float8[])
             ON CONFLICT (id) DO UPDATE SET uf = excluded.uf, name = excluded.name,
                 lat = excluded.lat, lon = excluded.lon",
            &[&strs(&ids), &strs(&ufs), &strs(&names), &lats, &lons],
        )?;
    }
    if !gone.is_empty() {
        let ids: Vec<_> = gone.iter().map(|(id, _)| pg_text(id)).collect();
        tx.execute(
            "DELETE FROM regions WHERE id = ANY($1::text[])",
            &[&strs(&ids)],
        )?;
    }

    if !rules.is_empty() {
        let versions: Vec<_> = rules.iter().map(|(r, _)| pg_text(&r.version)).collect();
        let thresholds: Vec<f64> = rules.iter().map(|(r, _)| r.risk_threshold).collect();
        let delays: Vec<i64> = rules.iter().map(|(r, _)| ms_i64(r.max_delay_ms)).collect();
        let windows: Vec<i64> = rules
            .iter()
            .map(|(r, _)| ms_i64(r.dedup_window_ms))
            .collect();
        let at: Vec<i64> = rules.iter().map(|(_, c)| ms_i64(c.at)).collect();
        let partitions: Vec<i32> = rules.iter().map(|(_, c)| c.pos.partition).collect();
        let offsets: Vec<i64> = rules.iter().map(|(_, c)| c.pos.offset).collect();
        // A version is never applied twice: a row already there is this one, again.
        tx.execute(
            "INSERT INTO rule_sets (version, risk_threshold, max_delay_ms, dedup_window_ms,
                 effective_ms, partition, \"offset\")
             SELECT * FROM unnest($1::text[], $2::float8[], $3::int8[], $4::int8[],
                                  $5::int8[], $6::int4[], $7::int8[])
             ON CONFLICT DO NOTHING",
            &[
                &strs(&versions),
                &thresholds,
                &delays,
                &windows,
                &at,
                &partitions,
                &offsets,
            ],
        )?;
    }

    if !done.is_empty() {
        let partitions: Vec<i32> = done.iter().map(|p| p.partition).collect();
        let offsets: Vec<i64> = done.iter().map(|p| p.offset).collect();
        tx.execute(
            "DELETE FROM control_pending p USING unnest($1::int4[], $2::int8[]) d(pa, o)
             WHERE p.partition = d.pa AND p.\"offset\" = d.o",
            &[&partitions, &offsets],
        )?;
    }
    if !pending.is_empty() {
        let partitions: Vec<i32> = pending.keys().map(|p| p.partition).collect();
        let offsets: Vec<i64> = pending.keys().map(|p| p.offset).collect();
        let t: Vec<i64> = pending.values().map(|(c, _)| ms_i64(c.t)).collect();
        let at: Vec<i64> = pending.values().map(|(c, _)| ms_i64(c.at)).collect();
        let records: Vec<&str> = pending.values().map(|(_, r)| r.as_str()).collect();
        tx.execute(
            "INSERT INTO control_pending (partition, \"offset\", t, effective_ms, record)
             SELECT * FROM unnest($1::int4[], $2::int8[], $3::int8[], $4::int8[], $5::text[])
             ON CONFLICT (partition, \"offset\") DO UPDATE SET t = excluded.t,
                 effective_ms = excluded.effective_ms, record = excluded.record",
            &[&partitions, &offsets, &t, &at, &records],
        )?;
    }

    if !refused.is_empty() {
        let partitions: Vec<i32> = refused.iter().map(|(c, ..)| c.pos.partition).collect();
        let offsets: Vec<i64> = refused.iter().map(|(c, ..)| c.pos.offset).collect();
        let t: Vec<i64> = refused.iter().map(|(c, ..)| ms_i64(c.t)).collect();
        let payloads: Vec<&[u8]> = refused.iter().map(|(_, raw, _)| *raw).collect();
        let errors: Vec<_> = refused.iter().map(|(.., e)| pg_text(e)).collect();
        tx.execute(
            "INSERT INTO invalid_messages (topic, partition, \"offset\", t, payload, error)
             SELECT $1, * FROM unnest($2::int4[], $3::int8[], $4::int8[], $5::bytea[], $6::text[])
             ON CONFLICT DO NOTHING",
            &[
                &CONTROL_TOPIC,
                &partitions,
                &offsets,
                &t,
                &payloads,
                &strs(&errors),
            ],
        )?;
    }
    Ok(())
}

/// Borrowed texts, for a `text[]` parameter.
fn strs<'a>(texts: &'a [std::borrow::Cow<'a, str>]) -> Vec<&'a str> {
    texts.iter().map(|t| t.as_ref()).collect()
}

/// Applies count_total's changes to `rows`; returns the keys touched.
fn apply_touched(
    rows: &mut BTreeMap<AnalysisKey, Tally>,
    changes: &[((AnalysisKey, Tally), isize)],
) -> Vec<AnalysisKey> {
    let mut touched: Vec<AnalysisKey> = changes.iter().map(|((k, _), _)| k.clone()).collect();
    touched.sort();
    touched.dedup();
    vtpga_dataflow::analyses::apply_changes(rows, changes.iter().cloned());
    touched
}

/// Writes `batch` in one transaction: the decisions (COPY), then, in its turn, the control
/// outcomes (reference tables, rule sets, pending records, refused records), the accounts,
/// the analysis rows, the offsets of `sources` (the transactions' and the control topic's)
/// and the cut.
fn write_batch(
    client: &mut Client,
    (source, control_source): (&str, Option<&str>),
    batch: &Batch,
    rows: &BTreeMap<AnalysisKey, Tally>,
    touched: &[AnalysisKey],
    mode: Mode,
    turn: &mut dyn FnMut() -> bool,
) -> PgResult<Option<u64>> {
    log::debug!(
        "batch up to t = {}: {} decision(s), {} account(s), {} analysis change(s), {} control outcome(s)",
        batch.time,
        batch.decisions.len(),
        batch.accounts.len(),
        batch.analyses.len(),
        batch.controls.len()
    );
    let started = std::time::Instant::now();
    let mut tx = client.transaction()?;
    let decisions: Vec<&Decision> = batch.decisions.iter().collect();
    let quarantined = match mode {
        Mode::Fast => {
            copy_decisions(&mut tx, &decisions)?;
            0
        }
        Mode::Careful => copy_carefully(&mut tx, &decisions)?,
    };
    let copied = started.elapsed();
    if !turn() {
        return Ok(None);
    }
    let waited = started.elapsed();
    write_controls(&mut tx, &batch.controls)?;
    upsert_accounts(&mut tx, &batch.accounts)?;
    let accounts = started.elapsed();
    upsert_analyses(&mut tx, rows, touched)?;
    upsert_offsets(
        &mut tx,
        source,
        batch.decisions.iter().map(|d| (d.pos, d.t)),
    )?;
    if let Some(control) = control_source {
        let arrived = batch.controls.iter().filter(|c| c.arrived);
        upsert_offsets(&mut tx, control, arrived.map(|c| (c.pos, c.t)))?;
    }
    let rest = started.elapsed();
    tx.execute(
        // A restart re-states the analyses at time 0: the cut never moves back.
        "INSERT INTO pipeline_state (id, source, cut_time, credits_through, updated_at)
         VALUES (1, $2, $1, NULL, now())
         ON CONFLICT (id) DO UPDATE SET
             cut_time = greatest(pipeline_state.cut_time, excluded.cut_time),
             credits_through = CASE WHEN excluded.cut_time > pipeline_state.cut_time
                                    THEN NULL ELSE pipeline_state.credits_through END,
             updated_at = now()",
        &[&(batch.time as i64), &source],
    )?;
    tx.commit()?;
    log::debug!(
        "timings: copy {:?}, turn {:?}, accounts {:?}, analyses+offsets {:?}, commit {:?}",
        copied,
        waited - copied,
        accounts - waited,
        rest - accounts,
        started.elapsed() - rest
    );
    Ok(Some(quarantined))
}

/// Copies `decisions` in chunks, each under a savepoint; a chunk the tables refuse is
/// halved until the refused rows stand alone, and those go to `quarantine`. Returns how
/// many were quarantined. Only used after a fast copy failed, so its cost is paid rarely.
fn copy_carefully(tx: &mut Transaction<'_>, decisions: &[&Decision]) -> PgResult<u64> {
    let mut quarantined = 0;
    let mut todo: Vec<&[&Decision]> = decisions.chunks(1024).rev().collect();
    while let Some(chunk) = todo.pop() {
        let mut sp = tx.transaction()?;
        match copy_decisions(&mut sp, chunk) {
            Ok(()) => sp.commit()?,
            Err(e) if is_connection_error(&e) => return Err(e),
            Err(e) => {
                drop(sp); // rolls the savepoint back
                if chunk.len() > 1 {
                    let (a, b) = chunk.split_at(chunk.len() / 2);
                    todo.push(b);
                    todo.push(a);
                } else {
                    quarantine(tx, chunk[0], &e)?;
                    quarantined += 1;
                }
            }
        }
    }
    Ok(quarantined)
}

/// Writes a refused decision to `quarantine`: its SPEC §8 record and raw payload as bytes
/// (nothing in them can be refused) and the store's error.
fn quarantine(tx: &mut Transaction<'_>, d: &Decision, e: &PgError) -> PgResult<()> {
    let record = serde_json::to_vec(&vtpga_dataflow::record::DecisionRecord::of(d))
        .map_err(|e| PgError::Data(format!("serialising a decision record: {e}")))?;
    let error = e.to_string();
    log::error!(
        "decision at partition {} offset {} quarantined: {error}",
        d.pos.partition,
        d.pos.offset
    );
    tx.execute(
        "INSERT INTO quarantine (partition, \"offset\", t, record, payload, error)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        &[
            &d.pos.partition,
            &d.pos.offset,
            &(d.t as i64),
            &record,
            &d.raw.as_deref(),
            &pg_text(&error).as_ref(),
        ],
    )?;
    Ok(())
}

fn copy_decisions(tx: &mut Transaction<'_>, decisions: &[&Decision]) -> PgResult<()> {
    if decisions.is_empty() {
        return Ok(());
    }
    let now = SystemTime::now();
    {
        let sink = tx.copy_in(
            "COPY transactions (partition, \"offset\", t, status, tx_id, payer_id, payee_id,
                region_id, mode, amount_cents, event_time, value_risk, hour_risk,
                distance_risk, risk, error, reason, decided_at, rules_version) FROM STDIN BINARY",
        )?;
        let types = [
            Type::INT4,
            Type::INT8,
            Type::INT8,
            Type::TEXT,
            Type::BYTEA,
            Type::BYTEA,
            Type::BYTEA,
            Type::BYTEA,
            Type::TEXT,
            Type::INT8,
            Type::TIMESTAMPTZ,
            Type::FLOAT8,
            Type::FLOAT8,
            Type::FLOAT8,
            Type::FLOAT8,
            Type::TEXT,
            Type::TEXT,
            Type::TIMESTAMPTZ,
            Type::TEXT,
        ];
        let mut writer = BinaryCopyInWriter::new(sink, &types);
        for d in decisions {
            let tx_ = d.tx.as_ref();
            let (error, reason) = match d.status {
                Status::Invalid => (d.reason.as_deref().map(pg_text), None),
                _ => (None, d.reason.as_deref().map(pg_text)),
            };
            let t = d.t as i64;
            let event = tx_.map(|x| ms_time(x.event_ms));
            let s = d.scores;
            let version = pg_text(&d.rules_version);
            let values: [&(dyn ToSql + Sync); 19] = [
                &d.pos.partition,
                &d.pos.offset,
                &t,
                &d.status.as_str(),
                &tx_.map(|x| x.id.as_bytes()),
                &tx_.map(|x| x.payer.as_bytes()),
                &tx_.map(|x| x.payee.as_bytes()),
                &tx_.map(|x| x.region.as_bytes()),
                &tx_.map(|x| x.mode.as_str()),
                &tx_.map(|x| x.amount_cents),
                &event,
                &s.map(|s| s.value_risk),
                &s.map(|s| s.hour_risk),
                &s.map(|s| s.distance_risk),
                &s.map(|s| s.risk),
                &error.as_deref(),
                &reason.as_deref(),
                &now,
                &version.as_ref(),
            ];
            writer.write(&values)?;
        }
        writer.finish()?;
    }
    let invalid: Vec<_> = decisions
        .iter()
        .filter(|d| d.status == Status::Invalid)
        .collect();
    if !invalid.is_empty() {
        let sink = tx.copy_in(
            "COPY invalid_messages (partition, \"offset\", t, payload, error) FROM STDIN BINARY",
        )?;
        let mut writer = BinaryCopyInWriter::new(
            sink,
            &[Type::INT4, Type::INT8, Type::INT8, Type::BYTEA, Type::TEXT],
        );
        for d in invalid {
            let t = d.t as i64;
            let payload: &[u8] = d.raw.as_deref().unwrap_or_default();
            let error = pg_text(d.reason.as_deref().unwrap_or("invalid"));
            writer.write(&[
                &d.pos.partition,
                &d.pos.offset,
                &t,
                &payload,
                &error.as_ref(),
            ])?;
        }
        writer.finish()?;
    }
    Ok(())
}

fn upsert_accounts(tx: &mut Transaction<'_>, accounts: &[Account]) -> PgResult<()> {
    if accounts.is_empty() {
        return Ok(());
    }
    // Accounts come in timestamp order: the last state of a user wins (a deleted user's:
    // no row).
    let mut last: HashMap<&str, &Account> = HashMap::new();
    for a in accounts {
        last.insert(a.user.as_str(), a);
    }
    let (gone, kept): (Vec<&Account>, Vec<&Account>) = last.into_values().partition(|a| a.deleted);
    if !gone.is_empty() {
        let ids: Vec<_> = gone.iter().map(|a| pg_text(&a.user)).collect();
        tx.execute(
            "DELETE FROM accounts WHERE user_id = ANY($1::text[])",
            &[&strs(&ids)],
        )?;
    }
    if kept.is_empty() {
        return Ok(());
    }
    let ids: Vec<_> = kept.iter().map(|a| pg_text(&a.user)).collect();
    let balances: Vec<i64> = kept.iter().map(|a| a.balance_cents).collect();
    let used: Vec<i64> = kept.iter().map(|a| a.credit_used_cents).collect();
    let approved: Vec<Option<i64>> = kept.iter().map(|a| a.last_approved_ms).collect();
    tx.execute(
        "INSERT INTO accounts (user_id, balance_cents, credit_used_cents, last_approved_ms)
         SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int8[])
         ON CONFLICT (user_id) DO UPDATE SET balance_cents = excluded.balance_cents,
             credit_used_cents = excluded.credit_used_cents,
             last_approved_ms = excluded.last_approved_ms",
        &[&strs(&ids), &balances, &used, &approved],
    )?;
    Ok(())
}

fn upsert_analyses(
    tx: &mut Transaction<'_>,
    rows: &BTreeMap<AnalysisKey, Tally>,
    touched: &[AnalysisKey],
) -> PgResult<()> {
    if touched.is_empty() {
        return Ok(());
    }
    let mut up = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        [(); 3].map(|_| Vec::<i64>::new()),
        [(); 2].map(|_| Vec::<String>::new()),
    );
    let mut del = (Vec::new(), Vec::new(), Vec::new());
    for key in touched {
        let (name, k, minute) = key_parts(key);
        match rows.get(key) {
            Some(t) => {
                up.0.push(name);
                up.1.push(k);
                up.2.push(minute);
                up.3[0].push(t.count);
                up.3[1].push(t.approved);
                up.3[2].push(t.rejected);
                up.4[0].push(t.approved_amount_cents.to_string());
                up.4[1].push(t.rejected_amount_cents.to_string());
            }
            None => {
                del.0.push(name);
                del.1.push(k);
                del.2.push(minute);
            }
        }
    }
    if !up.0.is_empty() {
        tx.execute(
            "INSERT INTO analysis_rows (analysis, k, minute, count, approved, rejected,
                 approved_amount_cents, rejected_amount_cents)
             SELECT a, k, m, c, ap, re, apa::numeric, rea::numeric
             FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::int8[],
                         $6::int8[], $7::text[], $8::text[]) AS u(a, k, m, c, ap, re, apa, rea)
             ON CONFLICT (analysis, k, minute) DO UPDATE SET count = excluded.count,
                 approved = excluded.approved, rejected = excluded.rejected,
                 approved_amount_cents = excluded.approved_amount_cents,
                 rejected_amount_cents = excluded.rejected_amount_cents",
            &[
                &up.0, &up.1, &up.2, &up.3[0], &up.3[1], &up.3[2], &up.4[0], &up.4[1],
            ],
        )?;
    }
    if !del.0.is_empty() {
        tx.execute(
            "DELETE FROM analysis_rows r USING unnest($1::text[], $2::text[], $3::int8[]) d(a, k, m)
             WHERE r.analysis = d.a AND r.k = d.k AND r.minute = d.m",
            &[&del.0, &del.1, &del.2],
        )?;
    }
    Ok(())
}

/// Records what `source` consumed: per partition, the offset after the last record of
/// `consumed` (positions and arrival times) and the latest arrival time; never backwards.
fn upsert_offsets(
    tx: &mut Transaction<'_>,
    source: &str,
    consumed: impl Iterator<Item = (SourcePos, Time)>,
) -> PgResult<()> {
    // Per partition: the offset after the last decided message, and its arrival time.
    let mut last: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
    for (SourcePos { partition, offset }, t) in consumed {
        let t = t as i64;
        let e = last.entry(partition).or_insert((offset + 1, t));
        e.0 = e.0.max(offset + 1);
        e.1 = e.1.max(t);
    }
    if last.is_empty() {
        return Ok(());
    }
    let partitions: Vec<i32> = last.keys().copied().collect();
    let next: Vec<i64> = last.values().map(|v| v.0).collect();
    let last_t: Vec<i64> = last.values().map(|v| v.1).collect();
    tx.execute(
        "INSERT INTO source_offsets (source, partition, next_offset, last_t)
         SELECT $1, * FROM unnest($2::int4[], $3::int8[], $4::int8[])
         ON CONFLICT (source, partition) DO UPDATE
         SET next_offset = greatest(source_offsets.next_offset, excluded.next_offset),
             last_t = greatest(source_offsets.last_t, excluded.last_t)",
        &[&source, &partitions, &next, &last_t],
    )?;
    Ok(())
}

/// The columns of a stored decision, in the order [`decision_record`] reads them; the
/// last (17) is `decided_at` in ms. (Those of every schema version: `rules_version`,
/// migration 5's, is read by name when the query selects it, as [`decision_records`]
/// does.)
pub const DECISION_COLUMNS: &str =
    "partition, \"offset\", t, status, tx_id, payer_id, payee_id, region_id, mode,
     amount_cents, (extract(epoch FROM event_time) * 1000)::bigint, value_risk, hour_risk,
     distance_risk, risk, error, reason, (extract(epoch FROM decided_at) * 1000)::bigint";

/// A row of [`DECISION_COLUMNS`] as its SPEC §8 JSON record: the same fields and
/// formatting as the replay's decision lines (`vtpga_dataflow::record::DecisionRecord`),
/// `rules_version` included when the row has a column of that name.
pub fn decision_record(r: &postgres::Row) -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    m.insert("partition".into(), r.get::<_, i32>(0).into());
    m.insert("offset".into(), r.get::<_, i64>(1).into());
    m.insert("t".into(), r.get::<_, i64>(2).into());
    m.insert("status".into(), r.get::<_, String>(3).into());
    let text = |i: usize| r.get::<_, Option<String>>(i);
    for (name, i) in [
        ("id", 4),
        ("payer_id", 5),
        ("payee_id", 6),
        ("region_id", 7),
    ] {
        if let Some(v) = r.get::<_, Option<Vec<u8>>>(i) {
            m.insert(name.into(), id_text(v).into());
        }
    }
    if let Some(v) = text(8) {
        m.insert("mode".into(), v.into());
    }
    if let Some(v) = r.get::<_, Option<i64>>(9) {
        m.insert("amount_cents".into(), v.into());
    }
    if let Some(ms) = r.get::<_, Option<i64>>(10) {
        m.insert("event_time".into(), format_utc_ms(ms).into());
    }
    for (name, i) in [
        ("value_risk", 11),
        ("hour_risk", 12),
        ("distance_risk", 13),
        ("risk", 14),
    ] {
        if let Some(v) = r.get::<_, Option<f64>>(i) {
            m.insert(name.into(), v.into());
        }
    }
    for (name, i) in [("error", 15), ("reason", 16)] {
        if let Some(v) = text(i) {
            m.insert(name.into(), v.into());
        }
    }
    if let Ok(Some(v)) = r.try_get::<_, Option<String>>("rules_version") {
        m.insert("rules_version".into(), from_pg_text(v).into());
    }
    m
}

/// Every stored decision as its SPEC §8 JSON record, in ledger-time order (tests and tools
/// that compare the database with a replay).
pub fn decision_records(client: &mut Client) -> PgResult<Vec<serde_json::Value>> {
    let sql = format!(
        "SELECT {DECISION_COLUMNS}, rules_version FROM transactions
         ORDER BY t, partition, \"offset\""
    );
    Ok(client
        .query(sql.as_str(), &[])?
        .iter()
        .map(|r| serde_json::Value::Object(decision_record(r)))
        .collect())
}

#[cfg(test)]
mod tests {
    //! Fault tests against a private PostgreSQL (SPEC §8, §10; issue 12 items 1, 3, 5).

    use super::*;
    use vtpga_dataflow::{ControlRecord, Mode, Tx};
    use vtpga_testkit::Postgres;

    const SOURCE: &str = "kafka:transacoes";

    fn decision(offset: i64, t: Time, id: &str, payer: &str) -> Decision {
        Decision {
            pos: SourcePos {
                partition: 0,
                offset,
            },
            t,
            ingest_us: 0,
            status: Status::UnknownReference,
            tx: Some(Tx {
                id: id.into(),
                payer: payer.into(),
                payee: "u2".into(),
                region: "r1".into(),
                mode: Mode::Pix,
                amount_cents: 100,
                event_ms: t as i64,
            }),
            scores: None,
            reason: Some("payer".into()),
            raw: None,
            home_band: None,
            uf: None,
            rules_version: "default".into(),
        }
    }

    fn count(client: &mut Client, sql: &str) -> i64 {
        client.query_one(sql, &[]).expect(sql).get(0)
    }

    const CONTROL: &str = "kafka:transacoes-controle";
    /// 2026-11-26T17:03:12.000Z: control records' times (effective_from must be a §3 time).
    const T0: Time = 1_795_712_592_000;

    fn pos(partition: i32, offset: i64) -> SourcePos {
        SourcePos { partition, offset }
    }

    fn outcome(
        p: SourcePos,
        t: Time,
        at: Time,
        arrived: bool,
        kind: OutcomeKind,
    ) -> ControlOutcome {
        ControlOutcome {
            pos: p,
            t,
            at,
            arrived,
            kind,
        }
    }

    fn user(id: &str, region: &str, balance: i64, limit: i64) -> User {
        User {
            id: id.into(),
            name: format!("name of {id}"),
            region_id: region.into(),
            balance_cents: balance,
            credit_limit_cents: limit,
        }
    }

    fn region(id: &str, uf: &str) -> Region {
        Region {
            id: id.into(),
            uf: uf.into(),
            name: format!("name of {id}"),
            lat: -23.5,
            lon: -46.25,
        }
    }

    fn rules(version: &str, window: u64) -> RuleSet {
        RuleSet {
            version: version.into(),
            risk_threshold: 0.75,
            max_delay_ms: 2_000,
            dedup_window_ms: window,
        }
    }

    fn account(user: &str, balance: i64, deleted: bool) -> Account {
        Account {
            user: user.into(),
            balance_cents: balance,
            credit_used_cents: 0,
            last_approved_ms: None,
            deleted,
        }
    }

    /// Every row of the tables live changes write, as text, in a stable order.
    fn snapshot(client: &mut Client) -> Vec<String> {
        let mut rows = Vec::new();
        for sql in [
            "SELECT id || '|' || name || '|' || region_id || '|' || balance_cents || '|' || credit_limit_cents FROM users ORDER BY id",
            "SELECT id || '|' || uf || '|' || name || '|' || lat || '|' || lon FROM regions ORDER BY id",
            "SELECT version || '|' || risk_threshold || '|' || max_delay_ms || '|' || dedup_window_ms || '|' || effective_ms || '|' || coalesce(partition::text, '-') || '|' || coalesce(\"offset\"::text, '-') FROM rule_sets ORDER BY version",
            "SELECT partition || '|' || \"offset\" || '|' || t || '|' || effective_ms || '|' || record FROM control_pending ORDER BY 1",
            "SELECT topic || '|' || partition || '|' || \"offset\" || '|' || t || '|' || encode(payload, 'escape') || '|' || error FROM invalid_messages ORDER BY 1",
            "SELECT user_id || '|' || balance_cents || '|' || credit_used_cents FROM accounts ORDER BY user_id",
            "SELECT source || '|' || partition || '|' || next_offset || '|' || last_t FROM source_offsets ORDER BY 1",
        ] {
            let table = sql.split(" FROM ").nth(1).unwrap().split(' ').next().unwrap();
            for r in client.query(sql, &[]).expect(sql) {
                rows.push(format!("{table}: {}", r.get::<_, String>(0)));
            }
        }
        rows
    }

    /// SPEC §11 with PostgreSQL: every kind of control outcome lands, in the batch's
    /// transaction, in the table that follows it; a deleted user's account row goes; the
    /// same batch again changes nothing; a restart gets the rule history, the records still
    /// to apply, the control topic's offsets and the widest duplicate window; the decision
    /// record read back carries its `rules_version`.
    #[test]
    fn live_changes_follow_in_the_batch_transaction_and_resume() {
        let pg = Postgres::start();
        let mut sink = PgSink::new(&pg.url, SOURCE)
            .expect("sink")
            .with_control_source(CONTROL);
        let mut client = connect(&pg.url).expect("schema");
        seed_reference(
            &mut client,
            &[region("r1", "SP")],
            &[user("u1", "r1", 100, 0), user("u2", "r1", 50, 0)],
        )
        .unwrap();
        let initial = rules("default", 300_000);
        assert_eq!(initial_rules(&mut client, &initial).unwrap(), initial);
        // A restart with other rules keeps the stored ones.
        assert_eq!(
            initial_rules(&mut client, &rules("other", 1)).unwrap(),
            initial
        );

        // Batch 0: u2 and u5 have accounts.
        let batch = Batch {
            time: T0,
            accounts: vec![account("u2", 60, false), account("u5", 9, false)],
            ..Batch::default()
        };
        sink.write(&batch, &|| false).expect("batch 0");

        let v2 = rules("v2", 600_000);
        let v3 = rules("v3", 1_000);
        let scheduled_rules = ControlRecord {
            change: Change::Rules(v3.clone()),
            effective_from: Some((T0 + 100) as i64),
        };
        let scheduled_user = ControlRecord {
            change: Change::User(user("u4", "r2", 400, 40)),
            effective_from: Some((T0 + 200) as i64),
        };
        let nul = "n\u{0}ul";
        let applied = |p, t, change| outcome(p, t, t, true, OutcomeKind::Applied(change));
        let batch1 = Batch {
            time: T0 + 10,
            controls: vec![
                applied(pos(0, 0), T0 + 5, Change::User(user("u3", "r1", 700, 70))),
                // An update: the opening balance stays the one u1 was created with.
                applied(pos(0, 1), T0 + 5, Change::User(user("u1", "r2", 100, 10))),
                applied(pos(0, 2), T0 + 6, Change::UserDelete { id: "u2".into() }),
                applied(pos(1, 0), T0 + 6, Change::Region(region("r2", "RJ"))),
                applied(pos(1, 1), T0 + 7, Change::RegionDelete { id: "r1".into() }),
                applied(pos(0, 3), T0 + 7, Change::Rules(v2.clone())),
                applied(
                    pos(0, 4),
                    T0 + 8,
                    Change::Adjust {
                        user_id: "u1".into(),
                        amount_cents: 50,
                    },
                ),
                outcome(
                    pos(1, 2),
                    T0 + 8,
                    T0 + 100,
                    true,
                    OutcomeKind::Scheduled(scheduled_rules.clone()),
                ),
                outcome(
                    pos(1, 3),
                    T0 + 9,
                    T0 + 200,
                    true,
                    OutcomeKind::Scheduled(scheduled_user.clone()),
                ),
                // Accepted for later and applied within the same (merged) batch.
                outcome(
                    pos(1, 4),
                    T0 + 9,
                    T0 + 9,
                    true,
                    OutcomeKind::Scheduled(ControlRecord {
                        change: Change::UserDelete { id: "u3".into() },
                        effective_from: Some((T0 + 9) as i64),
                    }),
                ),
                outcome(
                    pos(0, 5),
                    T0 + 9,
                    T0 + 9,
                    true,
                    OutcomeKind::Rejected {
                        raw: b"{\"type\":\"nope\"}".to_vec(),
                        error: "unknown control record type \"nope\"".into(),
                    },
                ),
                applied(pos(0, 6), T0 + 9, Change::User(user(nul, "r2", 5, 0))),
                outcome(
                    pos(1, 4),
                    T0 + 9,
                    T0 + 9,
                    false,
                    OutcomeKind::Applied(Change::UserDelete { id: "u3".into() }),
                ),
                // u3 is created again after its delete: the last change wins.
                applied(pos(0, 7), T0 + 10, Change::User(user("u3", "r2", 30, 0))),
            ],
            accounts: vec![
                account("u1", 150, false),
                account("u2", 61, false),
                account("u2", 0, true),
                account("u5", 0, true),
                account("u5", 3, false),
                account(nul, 6, false),
            ],
            ..Batch::default()
        };
        sink.write(&batch1, &|| false).expect("batch 1");
        let after = snapshot(&mut client);
        let json_rules = vtpga_dataflow::control::control_json(&scheduled_rules);
        let json_user = vtpga_dataflow::control::control_json(&scheduled_user);
        let expected: Vec<String> = [
            "users: n\\u0000ul|name of n\\u0000ul|r2|5|0".to_owned(),
            "users: u1|name of u1|r2|100|10".to_owned(),
            "users: u3|name of u3|r2|30|0".to_owned(),
            "regions: r2|RJ|name of r2|-23.5|-46.25".to_owned(),
            "rule_sets: default|0.75|2000|300000|0|-|-".to_owned(),
            format!("rule_sets: v2|0.75|2000|600000|{}|0|3", T0 + 7),
            format!("control_pending: 1|2|{}|{}|{json_rules}", T0 + 8, T0 + 100),
            format!("control_pending: 1|3|{}|{}|{json_user}", T0 + 9, T0 + 200),
            format!(
                "invalid_messages: transacoes-controle|0|5|{}|{{\"type\":\"nope\"}}|unknown control record type \"nope\"",
                T0 + 9
            ),
            "accounts: n\\u0000ul|6|0".to_owned(),
            "accounts: u1|150|0".to_owned(),
            "accounts: u5|3|0".to_owned(),
            format!("source_offsets: {CONTROL}|0|8|{}", T0 + 10),
            format!("source_offsets: {CONTROL}|1|5|{}", T0 + 9),
        ]
        .into_iter()
        .collect();
        assert_eq!(after, expected);
        let (regions, users) = load_reference(&mut client).unwrap();
        assert_eq!(regions, vec![region("r2", "RJ")]);
        assert!(
            users.contains(&user(nul, "r2", 5, 0)),
            "an id with U+0000 reads back as written: {users:?}"
        );

        // Re-delivery: the same batch again changes nothing.
        sink.write(&batch1, &|| false).expect("batch 1 again");
        assert_eq!(snapshot(&mut client), after);

        // The scheduled rule set applies (not at its arrival: `arrived` is false); the
        // decisions of its time carry its version.
        let mut old = decision(0, T0 + 300, "old", "u1");
        old.rules_version = "v3".into();
        let batch2 = Batch {
            time: T0 + 300,
            decisions: vec![old],
            controls: vec![outcome(
                pos(1, 2),
                T0 + 8,
                T0 + 100,
                false,
                OutcomeKind::Applied(Change::Rules(v3.clone())),
            )],
            ..Batch::default()
        };
        sink.write(&batch2, &|| false).expect("batch 2");
        assert_eq!(
            count(&mut client, "SELECT count(*) FROM control_pending"),
            1
        );
        // Rule 3's memory after a restart: "mid" is older than the initial window (300 s)
        // before the cut but within v2's (600 s); "old" is beyond both.
        let cut = T0 + 800_000;
        let mut mid = decision(1, T0 + 400_000, "mid", "u1");
        mid.rules_version = "v3".into();
        let mut new = decision(2, cut, "new", "u1");
        new.rules_version = "v3".into();
        let batch3 = Batch {
            time: cut,
            decisions: vec![mid, new],
            ..Batch::default()
        };
        sink.write(&batch3, &|| false).expect("batch 3");

        let records = decision_records(&mut client).unwrap();
        assert_eq!(records.len(), 3);
        for r in &records {
            assert_eq!(r["rules_version"], "v3", "{r}");
        }
        // Byte for byte the replay's record (SPEC §8), `rules_version` included.
        let mut expected = decision(0, T0 + 300, "old", "u1");
        expected.rules_version = "v3".into();
        let replay =
            serde_json::to_value(vtpga_dataflow::record::DecisionRecord::of(&expected)).unwrap();
        assert_eq!(records[0], replay);

        let resumed = load_resume(&mut client, SOURCE, Some(CONTROL)).expect("resume");
        assert_eq!(resumed.cut_time, Some(cut));
        assert_eq!(
            resumed.state.rules,
            vec![
                RuleChange {
                    at: T0 + 7,
                    pos: pos(0, 3),
                    rules: v2,
                },
                RuleChange {
                    at: T0 + 100,
                    pos: pos(1, 2),
                    rules: v3,
                },
            ]
        );
        assert_eq!(resumed.state.scheduled.len(), 1);
        let s = &resumed.state.scheduled[0];
        assert_eq!((s.pos, s.t, s.resumed), (pos(1, 3), T0 + 9, true));
        assert_eq!(s.raw, json_user.as_bytes());
        assert_eq!(s.parsed, Ok(scheduled_user));
        let control: BTreeMap<i32, (i64, Time)> = resumed
            .control_partitions
            .iter()
            .map(|(p, r)| (*p, (r.next_offset, r.last_t)))
            .collect();
        assert_eq!(
            control,
            BTreeMap::from([(0, (8, T0 + 10)), (1, (5, T0 + 9))])
        );
        assert_eq!(resumed.partitions[&0].next_offset, 3);
        let mut seen: Vec<(String, Time)> = resumed.state.seen.clone();
        seen.sort();
        assert_eq!(
            seen,
            vec![("mid".to_owned(), T0 + 400_000), ("new".to_owned(), cut)]
        );
        let mut accounts: Vec<(String, i64)> = resumed
            .state
            .accounts
            .iter()
            .map(|a| (a.user.clone(), a.balance_cents))
            .collect();
        accounts.sort();
        assert_eq!(
            accounts,
            vec![
                (nul.to_owned(), 6),
                ("u1".to_owned(), 150),
                ("u5".to_owned(), 3)
            ]
        );
        // Without a control source: no control offsets.
        assert!(load_resume(&mut client, SOURCE, None)
            .unwrap()
            .control_partitions
            .is_empty());
    }

    /// A restart before any rule set is recorded (a database of an older pipeline that
    /// did not run `initial_rules`) is refused rather than resumed with a guessed window.
    #[test]
    fn resuming_needs_the_initial_rule_set() {
        let pg = Postgres::start();
        let mut sink = PgSink::new(&pg.url, SOURCE).expect("sink");
        let batch = Batch {
            time: 10,
            decisions: vec![decision(0, 10, "a", "p")],
            ..Batch::default()
        };
        sink.write(&batch, &|| false).expect("written");
        let mut client = pg.client();
        let err = load_resume(&mut client, SOURCE, None).unwrap_err();
        assert!(err.to_string().contains("initial_rules"), "{err}");
        initial_rules(&mut client, &rules("default", 5)).unwrap();
        let resumed = load_resume(&mut client, SOURCE, None).expect("resumed");
        assert_eq!(resumed.state.seen, vec![("a".to_owned(), 10)]);
        assert!(resumed.state.rules.is_empty() && resumed.state.scheduled.is_empty());
    }

    /// Item 5: a connection lost during a COMMIT that did succeed leaves the outcome
    /// unknown; writing the batch again must neither fail on the primary key nor record
    /// anything twice.
    #[test]
    fn a_batch_whose_commit_outcome_is_unknown_is_not_written_twice() {
        let pg = Postgres::start();
        let mut sink = PgSink::new(&pg.url, SOURCE).expect("sink");
        let batch = Batch {
            time: 10,
            decisions: vec![decision(0, 10, "a", "p"), decision(1, 10, "b", "p")],
            ..Batch::default()
        };
        sink.write(&batch, &|| false).expect("first write");
        // As after a connection error during COMMIT.
        sink.uncertain = true;
        sink.write(&batch, &|| false).expect("the same batch again");
        let mut client = pg.client();
        assert_eq!(count(&mut client, "SELECT count(*) FROM transactions"), 2);
        assert_eq!(count(&mut client, "SELECT count(*) FROM quarantine"), 0);
        assert_eq!(sink.stats.snapshot().3, 0);
    }

    /// Item 1 (SPEC §8, §10): ids with U+0000 and of 60,000 characters are stored exactly;
    /// a row the table still refuses goes to `quarantine` and its batch commits.
    #[test]
    fn odd_ids_are_stored_exactly_and_a_refused_row_is_quarantined() {
        let pg = Postgres::start();
        let mut sink = PgSink::new(&pg.url, SOURCE).expect("sink");
        let long = "x".repeat(60_000);
        let nul = "a\u{0}b";
        let batch = Batch {
            time: 10,
            decisions: vec![
                decision(0, 10, nul, "p"),
                decision(1, 10, &long, &"p".repeat(5_000)),
            ],
            ..Batch::default()
        };
        sink.write(&batch, &|| false).expect("written");
        let mut client = pg.client();
        let ids: Vec<Vec<u8>> = client
            .query("SELECT tx_id FROM transactions ORDER BY \"offset\"", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(ids, vec![nul.as_bytes().to_vec(), long.as_bytes().to_vec()]);
        // A constraint the rows cannot meet stands for any refusal the store may make.
        client
            .batch_execute(
                "ALTER TABLE transactions ADD CONSTRAINT no_bad CHECK (tx_id <> 'bad'::bytea)",
            )
            .unwrap();
        let batch = Batch {
            time: 20,
            decisions: (2..40)
                .map(|o| decision(o, 20, if o == 17 { "bad" } else { "ok" }, "p"))
                .collect(),
            ..Batch::default()
        };
        sink.write(&batch, &|| false).expect("the batch commits");
        assert_eq!(sink.stats.snapshot().3, 1);
        assert_eq!(count(&mut client, "SELECT count(*) FROM transactions"), 39);
        let q = client
            .query_one("SELECT \"offset\", record, error FROM quarantine", &[])
            .unwrap();
        assert_eq!(q.get::<_, i64>(0), 17);
        let record: serde_json::Value = serde_json::from_slice(&q.get::<_, Vec<u8>>(1)).unwrap();
        assert_eq!(record["id"], "bad");
        assert!(
            q.get::<_, String>(2).contains("no_bad"),
            "{}",
            q.get::<_, String>(2)
        );
        let next: i64 = client
            .query_one("SELECT next_offset FROM source_offsets", &[])
            .unwrap()
            .get(0);
        assert_eq!(next, 40, "the offsets of the batch are committed with it");
    }

    /// Item 13: TLS to PostgreSQL. With `sslmode=require` the connection is encrypted
    /// and the server's certificate verified (here against the test's own CA file);
    /// without that CA the certificate is refused; a server without TLS is refused.
    #[test]
    fn tls_is_used_and_verified_when_required() {
        let pg = Postgres::start();
        let require = format!("{}?sslmode=require", pg.url);
        let connect = |ca: Option<&std::path::Path>| -> PgResult<Client> {
            let config: postgres::Config = require.parse()?;
            Ok(config.connect(tls_connector(ca)?)?)
        };
        assert!(connect(None).is_err(), "a server without TLS is refused");
        let data = pg.data_dir();
        let made = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
                "-keyout",
            ])
            .arg(data.join("server.key"))
            .arg("-out")
            .arg(data.join("server.crt"))
            .output()
            .expect("openssl runs");
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        let _ = std::process::Command::new("chown")
            .arg("postgres:")
            .arg(data.join("server.key"))
            .arg(data.join("server.crt"))
            .status();
        let _ = std::process::Command::new("chmod")
            .arg("600")
            .arg(data.join("server.key"))
            .status();
        let mut admin = pg.client();
        admin.batch_execute("ALTER SYSTEM SET ssl = on").unwrap();
        admin.query_one("SELECT pg_reload_conf()", &[]).unwrap();
        let ca = data.join("server.crt");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut client = loop {
            match connect(Some(&ca)) {
                Ok(c) => break c,
                Err(e) if std::time::Instant::now() < deadline => {
                    log::debug!("waiting for TLS: {e}");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("TLS connection: {e}"),
            }
        };
        let ssl: bool = client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .unwrap()
            .get(0);
        assert!(ssl, "the connection is encrypted");
        assert!(connect(None).is_err(), "an unknown CA is refused");
    }

    /// Item 3 (SPEC §10: "a restart of any number of processes ... counts no credit
    /// twice"). Another process's resume holds the state row and applies the cut-time
    /// credit; this one's resume starts meanwhile. Its statements that write accounts
    /// are held (a table lock) until the other commits, the interleaving in which an
    /// unlocked read of `credits_through` would apply the credit a second time.
    #[test]
    fn processes_resuming_together_apply_the_cut_time_credit_once() {
        let pg = Postgres::start();
        let mut client = connect(&pg.url).expect("schema");
        client
            .batch_execute(
                "INSERT INTO regions VALUES ('r1', 'SP', 'Sao Paulo', -23.5, -46.6);
                 INSERT INTO users VALUES ('u1', 'A', 'r1', 100, 0), ('u2', 'B', 'r1', 50, 0);
                 INSERT INTO transactions (partition, \"offset\", t, status, tx_id, payer_id,
                     payee_id, region_id, mode, amount_cents, decided_at)
                 VALUES (0, 0, 1000, 'approved', 't1', 'u1', 'u2', 'r1', 'pix', 30, now());
                 INSERT INTO accounts VALUES ('u1', 70, 0, 1000);
                 INSERT INTO pipeline_state VALUES (1, 'kafka:transacoes', 1000, NULL, now());",
            )
            .unwrap();
        initial_rules(&mut client, &RuleSet::of(&Default::default(), "default")).unwrap();
        let mut other = pg.client();
        let mut tx = other.transaction().unwrap();
        tx.query_one(
            "SELECT credits_through FROM pipeline_state WHERE id = 1 FOR UPDATE",
            &[],
        )
        .unwrap();
        tx.batch_execute("LOCK TABLE accounts IN SHARE ROW EXCLUSIVE MODE")
            .unwrap();
        let url = pg.url.clone();
        let this = std::thread::spawn(move || {
            let mut client = connect_plain(&url).unwrap();
            load_resume(&mut client, SOURCE, None).map(|r| r.state.accounts.len())
        });
        std::thread::sleep(Duration::from_millis(700));
        tx.batch_execute(
            "INSERT INTO accounts VALUES ('u2', 80, 0, NULL);
             UPDATE pipeline_state SET credits_through = cut_time WHERE id = 1;",
        )
        .unwrap();
        tx.commit().unwrap();
        this.join().unwrap().expect("resumed");
        let balance: i64 = client
            .query_one(
                "SELECT balance_cents FROM accounts WHERE user_id = 'u2'",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(balance, 80, "50 + one credit of 30");
    }
}

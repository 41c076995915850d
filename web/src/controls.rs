//! The live changes of SPEC §11 as the dashboard sees them: the rule set in force and the
//! history of rule changes, the latest reference changes (and the control records that
//! changed nothing, with their error), the changes accepted for a later effective time
//! (pending), and users' reference values and accounts as of now.
//!
//! [`crate::LiveState::observe`] feeds it from each batch's `controls` (what became of each
//! control record: `Applied`, `Scheduled`, `Rejected`) and `accounts`, under the state's
//! lock; everything it shows is rendered from copies, after the lock is released. The JSON
//! of an outcome is made once, before the lock is taken ([`outcome_json`]).
//!
//! # Bounds (SPEC §10)
//!
//! | what | kept |
//! |---|---|
//! | rule sets | the newest [`RULES_HISTORY_LIMIT`] in `(effective time, position)` order (the initial one first, while it is among them); the last is the one in force |
//! | reference changes | the newest [`CHANGES_LIMIT`] applied or rejected control records |
//! | pending | the [`PENDING_LIMIT`] earliest by effective time; later ones are not listed |
//! | users | the users changed by control records since the state was made, and those the caller seeds ([`crate::LiveState::seed_users`]): at most `live_users` ([`DEFAULT_LIVE_USERS`]) of them, a deleted one included (so that it answers "deleted"); the least recently changed are forgotten first |
//! | accounts | the account states seen in batches, of at most `live_users` users, the least recently changed forgotten first |
//!
//! At the default bound, users and accounts take a few tens of MB at most.
//!
//! A user outside these bounds is not known to the live view: `/api/users/{id}` says so
//! (404) and PostgreSQL, when configured, answers for every user. A user whose account was
//! not seen since the state was made shows its opening values (balance = opening balance,
//! no credit used, no approval), which are right for a user no decision or adjustment
//! changed since: the answer says which (`account_source`).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use serde_json::{json, Map, Value};

use vtpga_dataflow::calendar::format_utc_ms;
use vtpga_dataflow::graph::{Account, ControlOutcome, OutcomeKind, RuleChange};
use vtpga_dataflow::model::{Change, RuleSet, SourcePos, Time, User};

/// How many rule sets `/api/rules` lists as history (the newest).
pub const RULES_HISTORY_LIMIT: usize = 1_000;
/// How many of the latest reference changes (applied or rejected control records) are kept.
pub const CHANGES_LIMIT: usize = 200;
/// How many control records accepted for a later effective time are listed as pending.
pub const PENDING_LIMIT: usize = 1_000;
/// Default bound of the users (and of the accounts) the live view keeps.
pub const DEFAULT_LIVE_USERS: usize = 100_000;
/// Bytes of a rejected record's raw text kept to show (the record may be 64 KiB).
const RAW_SHOWN: usize = 1_024;
/// Positions of resolved control records remembered, so that a `Scheduled` outcome that
/// arrives after its own resolution (batches of different workers interleave) is not
/// listed as pending forever.
const RESOLVED_MEMORY: usize = 4_096;

/// The order of rule sets: effective time, then control position, the initial set (no
/// position) first (PostgreSQL's `ORDER BY effective_ms, partition NULLS FIRST, "offset"`).
type RuleKey = (Time, Option<SourcePos>);

/// A rule set and when it came into force.
#[derive(Clone, Debug)]
pub(crate) struct RuleEntry {
    rules: RuleSet,
    /// Its effective time `T` (0 for the initial set: in force from the start).
    at: Time,
    /// Its control record's position; `None` for the initial set.
    pos: Option<SourcePos>,
}

impl RuleEntry {
    fn key(&self) -> RuleKey {
        (self.at, self.pos)
    }

    /// The `/api/rules` row: the shape of a `rule_sets` row.
    pub(crate) fn json(&self) -> Value {
        rule_json(
            &self.rules.version,
            self.rules.risk_threshold,
            self.rules.max_delay_ms as i64,
            self.rules.dedup_window_ms as i64,
            self.at as i64,
            self.pos,
        )
    }
}

/// One `/api/rules` row (live or from PostgreSQL).
pub(crate) fn rule_json(
    version: &str,
    risk_threshold: f64,
    max_delay_ms: i64,
    dedup_window_ms: i64,
    effective_ms: i64,
    pos: Option<SourcePos>,
) -> Value {
    json!({
        "version": version,
        "risk_threshold": risk_threshold,
        "max_delay_ms": max_delay_ms,
        "dedup_window_ms": dedup_window_ms,
        "effective_ms": effective_ms,
        "partition": pos.map(|p| p.partition),
        "offset": pos.map(|p| p.offset),
    })
}

/// The JSON of what became of a control record, as `/api/controls` and the event stream
/// show it: `outcome` (`applied`, `scheduled`, `rejected`), `type` (the SPEC §11 record
/// type; for a rejected record, its `"type"` field when it has one, else `null`), `id`
/// (the entity's id, the version of a rule set), its position, arrival time `t`, effective
/// time `effective_ms`, `values` (the change's fields) or `error` and `raw` (a rejected
/// record's text, its first 1 KiB, invalid UTF-8 replaced).
pub(crate) fn outcome_json(o: &ControlOutcome) -> Arc<Value> {
    let mut m = Map::new();
    let (outcome, change) = match &o.kind {
        OutcomeKind::Applied(c) => ("applied", Some(c)),
        OutcomeKind::Scheduled(r) => ("scheduled", Some(&r.change)),
        OutcomeKind::Rejected { .. } => ("rejected", None),
    };
    m.insert("outcome".into(), outcome.into());
    match change {
        Some(c) => {
            let (kind, id, values) = change_parts(c);
            m.insert("type".into(), kind.into());
            m.insert("id".into(), id.into());
            m.insert("values".into(), values);
        }
        None => {
            let OutcomeKind::Rejected { raw, error } = &o.kind else {
                unreachable!("only a rejected record has no change")
            };
            let (kind, id) = guess_type_and_id(raw);
            m.insert("type".into(), kind.map_or(Value::Null, Value::from));
            m.insert("id".into(), id.map_or(Value::Null, Value::from));
            m.insert("error".into(), error.as_str().into());
            m.insert("raw".into(), shown_raw(raw).into());
        }
    }
    m.insert("partition".into(), o.pos.partition.into());
    m.insert("offset".into(), o.pos.offset.into());
    m.insert("t".into(), o.t.into());
    m.insert("effective_ms".into(), o.at.into());
    Arc::new(Value::Object(m))
}

/// A change's SPEC §11 type, the id it concerns and its fields.
fn change_parts(c: &Change) -> (&'static str, String, Value) {
    let values = |v: Result<Value, serde_json::Error>| v.unwrap_or(Value::Null);
    match c {
        Change::User(u) => ("user", u.id.clone(), values(serde_json::to_value(u))),
        Change::UserDelete { id } => ("user_delete", id.clone(), json!({"id": id})),
        Change::Adjust {
            user_id,
            amount_cents,
        } => (
            "balance_adjustment",
            user_id.clone(),
            json!({"user_id": user_id, "amount_cents": amount_cents}),
        ),
        Change::Region(r) => ("region", r.id.clone(), values(serde_json::to_value(r))),
        Change::RegionDelete { id } => ("region_delete", id.clone(), json!({"id": id})),
        Change::Rules(r) => ("rules", r.version.clone(), values(serde_json::to_value(r))),
    }
}

/// What a rejected record says it is, when it is a JSON object that says so: its `"type"`
/// and its `"id"` (`"user_id"`, `"version"`), strings only. For display: nothing is
/// decided on it.
fn guess_type_and_id(raw: &[u8]) -> (Option<String>, Option<String>) {
    // The SPEC §3 limit: a larger record was refused for its size; not parsed here either.
    if raw.len() > 65_536 {
        return (None, None);
    }
    let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(raw) else {
        return (None, None);
    };
    let text = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_owned);
    let id = text("id")
        .or_else(|| text("user_id"))
        .or_else(|| text("version"));
    (text("type"), id)
}

/// The first [`RAW_SHOWN`] bytes of a record as text (cut at a character boundary).
fn shown_raw(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(&raw[..raw.len().min(RAW_SHOWN * 4)]);
    if text.len() <= RAW_SHOWN {
        return text.into_owned();
    }
    let mut end = RAW_SHOWN;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// A map of at most `cap` entries that forgets the least recently written first, in two
/// generations: writes go to the young one; when it holds half the bound, the old one is
/// dropped and the young one becomes old. Constant time per write and no bookkeeping per
/// entry: the consumer thread pays little for every account of every batch.
struct Recent<V> {
    young: HashMap<String, V>,
    old: HashMap<String, V>,
    cap: usize,
}

impl<V> Recent<V> {
    fn new(cap: usize) -> Self {
        Recent {
            young: HashMap::new(),
            old: HashMap::new(),
            cap: cap.max(1),
        }
    }

    fn half(&self) -> usize {
        (self.cap / 2).max(1)
    }

    fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    fn get(&self, k: &str) -> Option<&V> {
        self.young.get(k).or_else(|| self.old.get(k))
    }

    /// The entry of `k`, made the most recent.
    fn get_mut(&mut self, k: &str) -> Option<&mut V> {
        if !self.young.contains_key(k) {
            let (k, v) = self.old.remove_entry(k)?;
            self.young.insert(k, v);
            self.rotate();
        }
        if self.young.contains_key(k) {
            self.young.get_mut(k)
        } else {
            self.old.get_mut(k)
        }
    }

    fn insert(&mut self, k: String, v: V) {
        self.old.remove(&k);
        self.young.insert(k, v);
        self.rotate();
    }

    fn remove(&mut self, k: &str) {
        self.young.remove(k);
        self.old.remove(k);
    }

    fn rotate(&mut self) {
        if self.young.len() >= self.half() {
            self.old = std::mem::take(&mut self.young);
        }
    }

    /// A new bound; a smaller one may forget more than it must (it drops generations).
    fn set_cap(&mut self, cap: usize) {
        self.cap = cap.max(1);
        if self.len() > self.cap {
            self.old.clear();
        }
        self.rotate();
        if self.old.len() > self.cap {
            self.old.clear();
        }
    }
}

/// A user's reference row as of its last change, or its deletion.
#[derive(Clone, Debug)]
struct UserRef {
    /// `None`: deleted.
    user: Option<User>,
    /// When the change took effect (seeded users: `(0, None)`).
    key: RuleKey,
}

/// A user's account as the last batch that changed it left it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AccountState {
    balance_cents: i64,
    credit_used_cents: i64,
    last_approved_ms: Option<i64>,
    /// The batch's time: a later state replaces an earlier one.
    time: Time,
}

/// What the live view knows of a user (a copy, rendered without the lock).
pub(crate) enum UserLookup {
    /// Reference values, and the account if one was seen.
    Known(User, Time, Option<AccountState>),
    /// Deleted at this effective time.
    Deleted(Time),
    /// Not among the users the live view keeps.
    Unknown,
}

impl UserLookup {
    /// The `/api/users/{id}` answer of a known user.
    pub(crate) fn json(user: &User, changed_at: Time, account: Option<&AccountState>) -> Value {
        let (balance, used, last, source) = match account {
            Some(a) => (
                a.balance_cents,
                a.credit_used_cents,
                a.last_approved_ms,
                "batch",
            ),
            None => (user.balance_cents, 0, None, "opening"),
        };
        json!({
            "id": user.id,
            "name": user.name,
            "region_id": user.region_id,
            "opening_balance_cents": user.balance_cents,
            "credit_limit_cents": user.credit_limit_cents,
            "balance_cents": balance,
            "credit_used_cents": used,
            "credit_available_cents": user.credit_limit_cents.saturating_sub(used),
            "last_approved_ms": last,
            "last_approved_event_time": last.map(format_utc_ms),
            "changed_at_ms": changed_at,
            "account_source": source,
            "source": "live",
        })
    }
}

/// A control record accepted for a later effective time.
#[derive(Clone)]
struct Pending {
    json: Arc<Value>,
    rules: Option<Arc<RuleEntry>>,
}

/// The live changes: see the module documentation.
pub(crate) struct Controls {
    /// Sorted by [`RuleEntry::key`]; never empty (the initial set, or the newest ones).
    history: VecDeque<Arc<RuleEntry>>,
    pending: BTreeMap<(Time, SourcePos), Pending>,
    resolved: VecDeque<SourcePos>,
    resolved_set: HashSet<SourcePos>,
    /// Newest last, each with its sequence number.
    changes: VecDeque<(u64, Arc<Value>)>,
    next_seq: u64,
    /// The first change not yet carried by a change event.
    pushed_seq: u64,
    /// The rule set in force or the pending rule sets changed since the last event.
    rules_changed: bool,
    users: Recent<UserRef>,
    accounts: Recent<AccountState>,
}

/// The rule set a state starts with: SPEC §5's defaults, version `"default"`.
pub fn default_rules() -> RuleSet {
    RuleSet::of(&vtpga_dataflow::model::Params::default(), "default")
}

impl Controls {
    pub(crate) fn new() -> Self {
        let mut c = Controls {
            history: VecDeque::new(),
            pending: BTreeMap::new(),
            resolved: VecDeque::new(),
            resolved_set: HashSet::new(),
            changes: VecDeque::new(),
            next_seq: 0,
            pushed_seq: 0,
            rules_changed: false,
            users: Recent::new(DEFAULT_LIVE_USERS),
            accounts: Recent::new(DEFAULT_LIVE_USERS),
        };
        c.seed_rules(&default_rules(), &[]);
        // What every state starts with is no news to a client.
        c.rules_changed = false;
        c
    }

    /// The initial rule set (in force from the start, effective time 0) and the changes
    /// applied before a resume point, replacing the rule history.
    pub(crate) fn seed_rules(&mut self, initial: &RuleSet, history: &[RuleChange]) {
        self.history.clear();
        self.insert_rules(RuleEntry {
            rules: initial.clone(),
            at: 0,
            pos: None,
        });
        for c in history {
            self.insert_rules(RuleEntry {
                rules: c.rules.clone(),
                at: c.at,
                pos: Some(c.pos),
            });
        }
        self.rules_changed = true;
    }

    /// Users whose reference rows are in force from the start (the initial data).
    pub(crate) fn seed_users(&mut self, users: impl IntoIterator<Item = User>) {
        for u in users {
            let key = (0, None);
            if self.users.get(&u.id).is_some_and(|r| r.key > key) {
                continue;
            }
            self.users
                .insert(u.id.clone(), UserRef { user: Some(u), key });
        }
    }

    pub(crate) fn live_users(&self) -> usize {
        self.users.cap
    }

    pub(crate) fn set_live_users(&mut self, n: usize) {
        self.users.set_cap(n);
        self.accounts.set_cap(n);
    }

    fn insert_rules(&mut self, e: RuleEntry) {
        let key = e.key();
        let i = self.history.partition_point(|h| h.key() <= key);
        self.history.insert(i, Arc::new(e));
        while self.history.len() > RULES_HISTORY_LIMIT {
            self.history.pop_front();
        }
    }

    /// Takes in a batch's control outcomes (with their JSON, from [`outcome_json`], in the
    /// same order) and account states.
    pub(crate) fn observe(
        &mut self,
        outcomes: &[ControlOutcome],
        rendered: Vec<Arc<Value>>,
        accounts: &[Account],
        time: Time,
    ) {
        for (o, json) in outcomes.iter().zip(rendered) {
            match &o.kind {
                OutcomeKind::Scheduled(record) => {
                    if self.resolved_set.contains(&o.pos) {
                        continue;
                    }
                    let rules = match &record.change {
                        Change::Rules(r) => Some(Arc::new(RuleEntry {
                            rules: r.clone(),
                            at: o.at,
                            pos: Some(o.pos),
                        })),
                        _ => None,
                    };
                    self.rules_changed |= rules.is_some();
                    self.pending.insert((o.at, o.pos), Pending { json, rules });
                    while self.pending.len() > PENDING_LIMIT {
                        self.pending.pop_last();
                    }
                }
                OutcomeKind::Applied(change) => {
                    self.resolve(o);
                    let key = (o.at, Some(o.pos));
                    match change {
                        Change::User(u) => self.change_user(&u.id, Some(u.clone()), key),
                        Change::UserDelete { id } => self.change_user(id, None, key),
                        Change::Rules(r) => {
                            self.insert_rules(RuleEntry {
                                rules: r.clone(),
                                at: o.at,
                                pos: Some(o.pos),
                            });
                            self.rules_changed = true;
                        }
                        // An adjustment moves a balance: the account states say how.
                        Change::Adjust { .. } | Change::Region(_) | Change::RegionDelete { .. } => {
                        }
                    }
                    self.push_change(json);
                }
                OutcomeKind::Rejected { .. } => {
                    self.resolve(o);
                    self.push_change(json);
                }
            }
        }
        for a in accounts {
            let newer = |s: &AccountState| s.time <= time;
            if a.deleted {
                if self.accounts.get(&a.user).is_some_and(newer) {
                    self.accounts.remove(&a.user);
                }
                continue;
            }
            let state = AccountState {
                balance_cents: a.balance_cents,
                credit_used_cents: a.credit_used_cents,
                last_approved_ms: a.last_approved_ms,
                time,
            };
            match self.accounts.get_mut(&a.user) {
                Some(s) if s.time <= time => *s = state,
                Some(_) => {}
                None => self.accounts.insert(a.user.clone(), state),
            }
        }
    }

    fn change_user(&mut self, id: &str, user: Option<User>, key: RuleKey) {
        // Batches of different workers interleave: an older change never replaces a newer.
        if self.users.get(id).is_some_and(|r| r.key > key) {
            return;
        }
        self.users.insert(id.to_owned(), UserRef { user, key });
    }

    /// The record at `o.pos` is applied or rejected: no longer pending.
    fn resolve(&mut self, o: &ControlOutcome) {
        if let Some(p) = self.pending.remove(&(o.at, o.pos)) {
            self.rules_changed |= p.rules.is_some();
        } else if self.pending.keys().any(|(_, pos)| *pos == o.pos) {
            // Not expected (the effective time is decided once), but never listed twice.
            let before = self.pending.len();
            self.pending.retain(|(_, pos), _| *pos != o.pos);
            self.rules_changed |= self.pending.len() != before;
        }
        if self.resolved_set.insert(o.pos) {
            self.resolved.push_back(o.pos);
            while self.resolved.len() > RESOLVED_MEMORY {
                if let Some(p) = self.resolved.pop_front() {
                    self.resolved_set.remove(&p);
                }
            }
        }
    }

    fn push_change(&mut self, json: Arc<Value>) {
        self.changes.push_back((self.next_seq, json));
        self.next_seq += 1;
        while self.changes.len() > CHANGES_LIMIT {
            self.changes.pop_front();
        }
    }

    /// The rule history, oldest first (the last is in force), and the pending rule sets in
    /// effective-time order: copies.
    pub(crate) fn rules(&self) -> (Vec<Arc<RuleEntry>>, Vec<Arc<RuleEntry>>) {
        let pending = self
            .pending
            .values()
            .filter_map(|p| p.rules.clone())
            .collect();
        (self.history.iter().cloned().collect(), pending)
    }

    /// The rule set in force and the pending rule sets (for the event stream): copies.
    pub(crate) fn rules_brief(&self) -> (Arc<RuleEntry>, Vec<Arc<RuleEntry>>) {
        let pending = self
            .pending
            .values()
            .filter_map(|p| p.rules.clone())
            .collect();
        (self.in_force(), pending)
    }

    fn in_force(&self) -> Arc<RuleEntry> {
        self.history.back().cloned().unwrap_or_else(|| {
            Arc::new(RuleEntry {
                rules: default_rules(),
                at: 0,
                pos: None,
            })
        })
    }

    /// The kept changes, newest first, and every pending record in effective-time order.
    pub(crate) fn changes(&self) -> (Vec<Arc<Value>>, Vec<Arc<Value>>) {
        (
            self.changes.iter().rev().map(|(_, v)| v.clone()).collect(),
            self.pending.values().map(|p| p.json.clone()).collect(),
        )
    }

    pub(crate) fn user(&self, id: &str) -> UserLookup {
        match self.users.get(id) {
            None => UserLookup::Unknown,
            Some(UserRef { user: None, key }) => UserLookup::Deleted(key.0),
            Some(UserRef { user: Some(u), key }) => {
                UserLookup::Known(u.clone(), key.0, self.accounts.get(id).copied())
            }
        }
    }

    /// Whether anything a change event carries changed since the last one.
    pub(crate) fn has_changes(&self) -> bool {
        self.rules_changed || self.pushed_seq < self.next_seq
    }

    /// What the next change event carries: the rule set in force and the pending rule
    /// sets when they changed, and the changes since the previous event, newest first.
    #[allow(clippy::type_complexity)]
    pub(crate) fn take_change(
        &mut self,
    ) -> (
        Option<(Arc<RuleEntry>, Vec<Arc<RuleEntry>>)>,
        Vec<Arc<Value>>,
    ) {
        let rules = std::mem::take(&mut self.rules_changed).then(|| self.rules_brief());
        let pushed = self.pushed_seq;
        let fresh = self
            .changes
            .iter()
            .rev()
            .take_while(|(s, _)| *s >= pushed)
            .map(|(_, v)| v.clone())
            .collect();
        self.pushed_seq = self.next_seq;
        (rules, fresh)
    }

    /// Forgets what changed (nobody listens).
    pub(crate) fn discard_changes(&mut self) {
        self.rules_changed = false;
        self.pushed_seq = self.next_seq;
    }
}

/// The events' `rules` object: `{"in_force", "pending"}`.
pub(crate) fn rules_event_json(in_force: &RuleEntry, pending: &[Arc<RuleEntry>]) -> Value {
    json!({
        "in_force": in_force.json(),
        "pending": pending.iter().map(|p| p.json()).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_keeps_at_most_its_bound_and_forgets_the_oldest_first() {
        let mut r: Recent<u32> = Recent::new(10);
        for i in 0..100u32 {
            r.insert(format!("k{i}"), i);
            assert!(r.len() <= 10, "{}", r.len());
        }
        assert_eq!(r.get("k99"), Some(&99));
        assert_eq!(r.get("k0"), None);
        // A write keeps an entry: k95 written again outlives the others of its time.
        *r.get_mut("k95").unwrap() = 1;
        for i in 100..104u32 {
            r.insert(format!("k{i}"), i);
        }
        assert_eq!(r.get("k95"), Some(&1));
        r.set_cap(2);
        assert!(r.len() <= 2);
    }

    #[test]
    fn shown_raw_is_cut_at_a_character_boundary() {
        let raw = "é".repeat(RAW_SHOWN);
        let shown = shown_raw(raw.as_bytes());
        assert!(shown.ends_with('…'));
        assert!(shown.len() <= RAW_SHOWN + '…'.len_utf8());
        assert_eq!(shown_raw(b"\xff{}"), "\u{fffd}{}");
    }
}

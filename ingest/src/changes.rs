//! Synthetic control records (SPEC §11): live changes of the reference data and of the
//! rule set, deterministic for a seed, to mix into a transaction stream. Used by
//! `vtpga generate --control-rate` (capture lines on the control topic), by the embedded
//! generator feed of `vtpga run` ([`crate::live::LiveFeed::with_controls`]), by
//! `vtpga produce --control-rate` and by `vtpga bench --control-every`.
//!
//! What comes (each fresh record drawn with its share; see [`ControlKind`]):
//! * `user` records creating users with fresh ids (`un000001`, …; with a tag,
//!   `un{tag}000001`) at home in an existing region, and updating existing users
//!   (credit limit changes, some below what the user may already have used; home
//!   region moves; new names);
//! * `user_delete` of an existing user, followed 2–10 s later by its re-creation (a new
//!   life: a fresh opening balance);
//! * `balance_adjustment` of either sign to an existing user;
//! * `region` updates (coordinates moved by up to 0.05°, rarely a new UF) and a
//!   `region_delete` followed 2–8 s later by the region's re-creation;
//! * `rules` with fresh versions `gen-1`, `gen-2`, … (with a tag, `gen-{tag}1`, …):
//!   risk threshold 0.35–0.65, max delay 500–2,000 ms, dedup window 60–600 s; about a
//!   third take effect 1–5 s in the future (`effective_from`);
//! * user and region records in Debezium form now and then (tables `users` and
//!   `regions`, op `c`, `u` or `d`, bare or in the `schema`/`payload` envelope);
//! * a small share of records meant to be invalid ([`InvalidControl`]): an adjustment of
//!   a user that never exists, a `rules` record reusing a version already in force, a
//!   record with a required field missing.
//!
//! Deletions are rare and bounded (at most one region and about one user in 500 deleted
//! at a time), so most transactions still find their users and regions.
//!
//! Every valid record is valid by construction: the generator follows which users and
//! regions exist and which versions were used, in the order the changes apply (SPEC §11:
//! effective time `T = max(t_c, effective_from)`, then control position). Records about
//! one user (or region, or version) share a key, so they share a partition and keep
//! their order; only `rules` records carry an `effective_from`, and a version is reused
//! only once the record that used it is in force.
//!
//! Positions: partitions `0..partitions` of the control topic, chosen by
//! [`partition_for`] of the record's key (its entity id); offsets contiguous from 0 in
//! each partition. Arrival times never decrease.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use vtpga_dataflow::control::{control_json, UFS};
use vtpga_dataflow::model::{Change, ControlRecord, Region, RuleSet, User};

use crate::generator::partition_for;

/// Partitions of the control topic the generated records are spread over by default.
pub const DEFAULT_CONTROL_PARTITIONS: i32 = 2;

/// Configuration of a [`ControlGenerator`].
#[derive(Clone, Debug, PartialEq)]
pub struct ControlConfig {
    /// Seed of every choice: the same seed and reference data give the same records.
    pub seed: u64,
    /// Records per second of arrival time on the generator's own clock
    /// ([`ControlGenerator::next_message`]).
    pub rate_per_sec: f64,
    /// Arrival time of the first record on the generator's own clock (ms since the
    /// Unix epoch). The first record comes one interval after it.
    pub start_ms: u64,
    /// Partitions of the control topic (>= 1).
    pub partitions: i32,
    /// Part of every generated name (rule versions, created and unknown user ids): empty
    /// for `gen-1`, `un000001`; a live source that may restart gives a tag of its own
    /// (e.g. from its seed), so a version of an earlier run is never reused by accident.
    pub tag: String,
    /// Share of records meant to be invalid (see [`InvalidControl`]).
    pub invalid_share: f64,
    /// Share of user and region records written in Debezium form.
    pub debezium_share: f64,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            seed: 42,
            rate_per_sec: 1.0,
            // The transaction generator's default start: 2025-11-26T14:00:00Z.
            start_ms: 1_764_165_600_000,
            partitions: DEFAULT_CONTROL_PARTITIONS,
            tag: String::new(),
            invalid_share: 0.03,
            debezium_share: 0.15,
        }
    }
}

impl ControlConfig {
    /// Checks the parameters; [`ControlGenerator::new`] panics with this message
    /// otherwise.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.rate_per_sec.is_finite() && self.rate_per_sec > 0.0) {
            return Err(format!(
                "the control rate must be > 0, not {}",
                self.rate_per_sec
            ));
        }
        if self.partitions < 1 {
            return Err(format!(
                "control partitions must be >= 1, not {}",
                self.partitions
            ));
        }
        for (name, s) in [
            ("invalid_share", self.invalid_share),
            ("debezium_share", self.debezium_share),
        ] {
            if !(0.0..=1.0).contains(&s) {
                return Err(format!("{name} must be within 0..=1, not {s}"));
            }
        }
        Ok(())
    }

    /// A tag of its own for a source started with `seed` (six hex digits and a dash):
    /// a restarted live source, with a fresh seed, never reuses an earlier run's rule
    /// versions.
    pub fn tag_for_seed(seed: u64) -> String {
        format!("{:06x}-", seed & 0xff_ffff)
    }

    /// Mean spacing of arrival times in ms on the generator's own clock.
    pub fn interval_ms(&self) -> f64 {
        1000.0 / self.rate_per_sec
    }
}

/// What a generated control record was meant to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ControlKind {
    /// `user` creating a user with a fresh id.
    CreateUser,
    /// `user` updating an existing user (credit limit, home region, name).
    UpdateUser,
    /// `user_delete` of an existing user (re-created later).
    DeleteUser,
    /// `user` re-creating a user deleted a few seconds before.
    RecreateUser,
    /// `balance_adjustment` of an existing user, either sign.
    Adjust,
    /// `region` replacing an existing region (moved a little, rarely a new UF).
    UpdateRegion,
    /// `region_delete` of an existing region (re-created later).
    DeleteRegion,
    /// `region` re-creating a region deleted a few seconds before.
    RecreateRegion,
    /// `rules` with a fresh version (perhaps with an `effective_from`).
    Rules,
    /// Meant to change nothing: the dead-letter path.
    Invalid(InvalidControl),
}

impl ControlKind {
    /// Whether the record is meant to be refused (SPEC §11: it changes nothing).
    pub fn is_invalid(self) -> bool {
        matches!(self, ControlKind::Invalid(_))
    }

    /// Whether the record passes `parse_control` (the invalid ones that are refused only
    /// when applied, an unknown user or a reused version, do).
    pub fn parses(self) -> bool {
        self != ControlKind::Invalid(InvalidControl::MissingField)
    }
}

/// The kinds of invalid control record the generator produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InvalidControl {
    /// A `balance_adjustment` of a user id that never exists.
    UnknownUser,
    /// A `rules` record whose version is already in force.
    ReusedVersion,
    /// A typed record (user, region, adjustment or rules) with a required field left out.
    MissingField,
}

/// How a record is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ControlForm {
    /// A typed record (SPEC §11 `type`).
    Typed,
    /// A bare Debezium change event.
    Debezium,
    /// A Debezium change event inside the `schema`/`payload` envelope.
    DebeziumEnvelope,
}

/// One generated control record, at its position on the control topic.
#[derive(Clone, Debug, PartialEq)]
pub struct GenControl {
    /// Record timestamp (ms since the Unix epoch): the arrival time `t_c`.
    pub record_ts: u64,
    /// Control topic partition: [`partition_for`] of the key.
    pub partition: i32,
    /// Offset in that partition (contiguous from 0, or from where the generator was
    /// told to start).
    pub offset: i64,
    /// The Kafka key: the entity id (user id, region id, or the rule set's version).
    pub key: String,
    /// The record as sent (UTF-8 JSON).
    pub payload: Vec<u8>,
    /// What it was meant to be.
    pub kind: ControlKind,
    /// How it is written.
    pub form: ControlForm,
}

/// A user the generator knows of.
struct UserSlot {
    user: User,
    alive: bool,
}

/// A region the generator knows of.
struct RegionSlot {
    region: Region,
    alive: bool,
}

/// A record due once the clock reaches a time.
enum FollowUp {
    RecreateUser(usize),
    RecreateRegion(usize),
}

/// The fresh kinds (beyond invalid ones) and their weights.
#[derive(Clone, Copy)]
enum Pick {
    Adjust,
    UpdateUser,
    CreateUser,
    Rules,
    UpdateRegion,
    DeleteUser,
    DeleteRegion,
}

const WEIGHTS: [(Pick, f64); 7] = [
    (Pick::Adjust, 0.30),
    (Pick::UpdateUser, 0.22),
    (Pick::CreateUser, 0.12),
    (Pick::Rules, 0.10),
    (Pick::UpdateRegion, 0.08),
    (Pick::DeleteUser, 0.04),
    (Pick::DeleteRegion, 0.02),
];

/// Share of `rules` records with an `effective_from` 1–5 s ahead.
const EFFECTIVE_FROM_SHARE: f64 = 0.3;
/// Share of region updates that change the UF.
const UF_CHANGE_SHARE: f64 = 0.1;

/// The control record generator. See the module documentation.
pub struct ControlGenerator {
    cfg: ControlConfig,
    rng: ChaCha8Rng,
    users: Vec<UserSlot>,
    regions: Vec<RegionSlot>,
    /// Users deleted and not yet re-created.
    users_deleted: usize,
    /// Regions deleted and not yet re-created.
    regions_deleted: usize,
    /// Versions used by generated `rules` records, with their effective time.
    versions: Vec<(String, u64)>,
    follow_ups: Vec<(u64, FollowUp)>,
    next_offset: Vec<i64>,
    created: u64,
    ghosts: u64,
    broken: u64,
    clock: f64,
    last_t: u64,
    produced: u64,
}

impl ControlGenerator {
    /// A generator over the reference data in force at the start.
    ///
    /// Panics if the configuration is invalid ([`ControlConfig::validate`]) or there is
    /// no region.
    pub fn new(cfg: ControlConfig, regions: &[Region], users: &[User]) -> Self {
        if let Err(e) = cfg.validate() {
            panic!("invalid control generator configuration: {e}");
        }
        assert!(
            !regions.is_empty(),
            "the control generator needs at least one region"
        );
        ControlGenerator {
            rng: ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x434f_4e54_524f_4c53),
            users: users
                .iter()
                .map(|u| UserSlot {
                    user: u.clone(),
                    alive: true,
                })
                .collect(),
            regions: regions
                .iter()
                .map(|r| RegionSlot {
                    region: r.clone(),
                    alive: true,
                })
                .collect(),
            users_deleted: 0,
            regions_deleted: 0,
            versions: Vec::new(),
            follow_ups: Vec::new(),
            next_offset: vec![0; cfg.partitions as usize],
            created: 0,
            ghosts: 0,
            broken: 0,
            clock: cfg.start_ms as f64 + cfg.interval_ms(),
            last_t: 0,
            produced: 0,
            cfg,
        }
    }

    /// Numbers each partition's records from the given offset on (a restarted source
    /// continues its partitions); partitions not named start at 0.
    pub fn starting_at(mut self, offsets: impl IntoIterator<Item = (i32, i64)>) -> Self {
        for (p, o) in offsets {
            if let Some(next) = self.next_offset.get_mut(p.max(0) as usize) {
                *next = o.max(0);
            }
        }
        self
    }

    /// The configuration the generator was built with.
    pub fn config(&self) -> &ControlConfig {
        &self.cfg
    }

    /// Records produced so far.
    pub fn produced(&self) -> u64 {
        self.produced
    }

    /// The arrival time of the next record on the generator's own clock.
    pub fn next_due(&self) -> u64 {
        (self.clock.floor() as u64).max(self.last_t)
    }

    /// The next record on the generator's own clock: one every `1 / rate_per_sec`
    /// seconds (±50% jitter).
    pub fn next_message(&mut self) -> GenControl {
        let t = self.next_due();
        let jitter = self.rng.random_range(0.5..1.5);
        self.clock += self.cfg.interval_ms() * jitter;
        self.produce(t)
    }

    /// The next record, arriving at `t_ms` (live use: the caller's clock; an earlier
    /// time than the last record's is raised to it).
    pub fn next_at(&mut self, t_ms: u64) -> GenControl {
        self.produce(t_ms.max(self.last_t))
    }

    fn produce(&mut self, t: u64) -> GenControl {
        self.last_t = t;
        self.produced += 1;
        let due = self
            .follow_ups
            .iter()
            .enumerate()
            .filter(|(_, (at, _))| *at <= t)
            .min_by_key(|(_, (at, _))| *at)
            .map(|(i, _)| i);
        let (kind, key, form, payload) = match due {
            Some(i) => {
                let (_, f) = self.follow_ups.swap_remove(i);
                self.follow_up(f)
            }
            None => self.fresh(t),
        };
        let partition = partition_for(&key, self.cfg.partitions);
        let next = &mut self.next_offset[partition as usize];
        let offset = *next;
        *next += 1;
        GenControl {
            record_ts: t,
            partition,
            offset,
            key,
            payload: payload.into_bytes(),
            kind,
            form,
        }
    }

    fn follow_up(&mut self, f: FollowUp) -> (ControlKind, String, ControlForm, String) {
        match f {
            FollowUp::RecreateUser(i) => {
                let region_id = self.alive_region().region.id.clone();
                let balance_cents = self.opening_balance();
                let credit_limit_cents = self.credit_limit();
                let slot = &mut self.users[i];
                slot.alive = true;
                slot.user.region_id = region_id;
                slot.user.balance_cents = balance_cents;
                slot.user.credit_limit_cents = credit_limit_cents;
                self.users_deleted -= 1;
                let user = self.users[i].user.clone();
                let (form, payload) = self.user_record(&user, "c");
                (ControlKind::RecreateUser, user.id, form, payload)
            }
            FollowUp::RecreateRegion(i) => {
                self.regions[i].alive = true;
                self.regions_deleted -= 1;
                let region = self.regions[i].region.clone();
                let (form, payload) = self.region_record(&region, "c");
                (ControlKind::RecreateRegion, region.id, form, payload)
            }
        }
    }

    fn fresh(&mut self, t: u64) -> (ControlKind, String, ControlForm, String) {
        if self.rng.random_bool(self.cfg.invalid_share) {
            return self.invalid(t);
        }
        let total: f64 = WEIGHTS.iter().map(|(_, w)| w).sum();
        let mut u = self.rng.random::<f64>() * total;
        let mut pick = Pick::Adjust;
        for (p, w) in WEIGHTS {
            if u < w {
                pick = p;
                break;
            }
            u -= w;
        }
        // What cannot be done now becomes something that can.
        let alive_users = self.users.len() - self.users_deleted;
        let alive_regions = self.regions.len() - self.regions_deleted;
        if alive_users == 0 {
            pick = Pick::CreateUser;
        }
        if matches!(pick, Pick::DeleteUser) && self.users_deleted >= (alive_users / 500).max(1) {
            pick = Pick::UpdateUser;
        }
        if matches!(pick, Pick::DeleteRegion) && (self.regions_deleted >= 1 || alive_regions < 2) {
            pick = Pick::UpdateRegion;
        }
        match pick {
            Pick::Adjust => {
                let i = self.alive_user();
                let id = self.users[i].user.id.clone();
                let amount_cents = self.adjustment();
                let record = typed(Change::Adjust {
                    user_id: id.clone(),
                    amount_cents,
                });
                (ControlKind::Adjust, id, ControlForm::Typed, record)
            }
            Pick::UpdateUser => {
                let i = self.alive_user();
                let mut user = self.users[i].user.clone();
                let what = self.rng.random::<f64>();
                if what < 0.45 {
                    // A new credit limit; often below what the user may already have used.
                    user.credit_limit_cents = if self.rng.random_bool(0.4) {
                        self.rng.random_range(0..=user.credit_limit_cents / 10)
                    } else {
                        self.credit_limit()
                    };
                } else if what < 0.80 {
                    user.region_id = self.alive_region().region.id.clone();
                } else {
                    user.name = format!("{} (atualizado)", base_name(&user.name));
                }
                self.users[i].user = user.clone();
                let (form, payload) = self.user_record(&user, "u");
                (ControlKind::UpdateUser, user.id, form, payload)
            }
            Pick::CreateUser => {
                self.created += 1;
                let user = User {
                    id: format!("un{}{:06}", self.cfg.tag, self.created),
                    name: format!("Cliente Novo {}", self.created),
                    region_id: self.alive_region().region.id.clone(),
                    balance_cents: self.opening_balance(),
                    credit_limit_cents: self.credit_limit(),
                };
                self.users.push(UserSlot {
                    user: user.clone(),
                    alive: true,
                });
                let (form, payload) = self.user_record(&user, "c");
                (ControlKind::CreateUser, user.id, form, payload)
            }
            Pick::Rules => {
                let version = format!("gen-{}{}", self.cfg.tag, self.versions.len() + 1);
                let effective_from = self
                    .rng
                    .random_bool(EFFECTIVE_FROM_SHARE)
                    .then(|| t + self.rng.random_range(1_000..=5_000u64));
                let rules = self.rule_set(version.clone());
                self.versions
                    .push((version.clone(), effective_from.unwrap_or(t).max(t)));
                let record = control_json(&ControlRecord {
                    change: Change::Rules(rules),
                    effective_from: effective_from.map(|ms| ms as i64),
                });
                (ControlKind::Rules, version, ControlForm::Typed, record)
            }
            Pick::UpdateRegion => {
                let i = self.alive_region_index();
                let mut region = self.regions[i].region.clone();
                region.lat = (region.lat + self.rng.random_range(-0.05..=0.05)).clamp(-90.0, 90.0);
                region.lon =
                    (region.lon + self.rng.random_range(-0.05..=0.05)).clamp(-180.0, 180.0);
                region.lat = round4(region.lat);
                region.lon = round4(region.lon);
                if self.rng.random_bool(UF_CHANGE_SHARE) {
                    let others: Vec<&str> =
                        UFS.iter().copied().filter(|uf| *uf != region.uf).collect();
                    region.uf = others[self.rng.random_range(0..others.len())].to_owned();
                }
                self.regions[i].region = region.clone();
                let (form, payload) = self.region_record(&region, "u");
                (ControlKind::UpdateRegion, region.id, form, payload)
            }
            Pick::DeleteUser => {
                let i = self.alive_user();
                self.users[i].alive = false;
                self.users_deleted += 1;
                let due = t + self.rng.random_range(2_000..=10_000u64);
                self.follow_ups.push((due, FollowUp::RecreateUser(i)));
                let user = self.users[i].user.clone();
                let (form, payload) = self.user_delete_record(&user);
                (ControlKind::DeleteUser, user.id, form, payload)
            }
            Pick::DeleteRegion => {
                let i = self.alive_region_index();
                self.regions[i].alive = false;
                self.regions_deleted += 1;
                let due = t + self.rng.random_range(2_000..=8_000u64);
                self.follow_ups.push((due, FollowUp::RecreateRegion(i)));
                let region = self.regions[i].region.clone();
                let (form, payload) = self.region_delete_record(&region);
                (ControlKind::DeleteRegion, region.id, form, payload)
            }
        }
    }

    fn invalid(&mut self, t: u64) -> (ControlKind, String, ControlForm, String) {
        let mut which = self.rng.random_range(0..3);
        // A version may be reused only once the record that used it is in force
        // (strictly earlier, whatever the partitions).
        let reusable: Vec<usize> = (0..self.versions.len())
            .filter(|&i| self.versions[i].1 < t)
            .collect();
        if which == 1 && reusable.is_empty() {
            which = 2;
        }
        let kind = |k| ControlKind::Invalid(k);
        match which {
            0 => {
                self.ghosts += 1;
                let id = format!("ghost-{}{}", self.cfg.tag, self.ghosts);
                let amount_cents = self.adjustment();
                let record = typed(Change::Adjust {
                    user_id: id.clone(),
                    amount_cents,
                });
                (
                    kind(InvalidControl::UnknownUser),
                    id,
                    ControlForm::Typed,
                    record,
                )
            }
            1 => {
                let version = self.versions[reusable[self.rng.random_range(0..reusable.len())]]
                    .0
                    .clone();
                let rules = self.rule_set(version.clone());
                (
                    kind(InvalidControl::ReusedVersion),
                    version,
                    ControlForm::Typed,
                    typed(Change::Rules(rules)),
                )
            }
            _ => {
                self.broken += 1;
                // Without a user alive, a region or a rule set.
                let entity = if self.users_deleted == self.users.len() {
                    self.rng.random_range(1..3)
                } else {
                    self.rng.random_range(0..4)
                };
                let (key, change, fields): (String, Change, &[&str]) = match entity {
                    0 => {
                        let i = self.alive_user();
                        let user = self.users[i].user.clone();
                        (
                            user.id.clone(),
                            Change::User(user),
                            &["name", "region_id", "balance_cents", "credit_limit_cents"][..],
                        )
                    }
                    1 => {
                        let region = self.alive_region().region.clone();
                        (
                            region.id.clone(),
                            Change::Region(region),
                            &["uf", "name", "lat", "lon"][..],
                        )
                    }
                    2 => {
                        let version = format!("gen-{}broken-{}", self.cfg.tag, self.broken);
                        let rules = self.rule_set(version.clone());
                        (
                            version,
                            Change::Rules(rules),
                            &["risk_threshold", "max_delay_ms", "dedup_window_ms"][..],
                        )
                    }
                    _ => {
                        let i = self.alive_user();
                        let user_id = self.users[i].user.id.clone();
                        let amount_cents = self.adjustment();
                        (
                            user_id.clone(),
                            Change::Adjust {
                                user_id,
                                amount_cents,
                            },
                            &["amount_cents"][..],
                        )
                    }
                };
                let drop = fields[self.rng.random_range(0..fields.len())];
                let mut value: Value =
                    serde_json::from_str(&typed(change)).expect("control_json writes JSON");
                if let Some(object) = value.as_object_mut() {
                    object.remove(drop);
                }
                (
                    kind(InvalidControl::MissingField),
                    key,
                    ControlForm::Typed,
                    value.to_string(),
                )
            }
        }
    }

    /// An alive user's index (one not deleted). There is one: callers check.
    fn alive_user(&mut self) -> usize {
        let n = self.users.len();
        for _ in 0..32 {
            let i = self.rng.random_range(0..n);
            if self.users[i].alive {
                return i;
            }
        }
        let start = self.rng.random_range(0..n);
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| self.users[i].alive)
            .expect("an alive user")
    }

    fn alive_region_index(&mut self) -> usize {
        let n = self.regions.len();
        loop {
            let i = self.rng.random_range(0..n);
            if self.regions[i].alive {
                return i;
            }
        }
    }

    fn alive_region(&mut self) -> &RegionSlot {
        let i = self.alive_region_index();
        &self.regions[i]
    }

    fn opening_balance(&mut self) -> i64 {
        if self.rng.random_bool(0.1) {
            0
        } else {
            self.rng.random_range(1_000..=500_000)
        }
    }

    fn credit_limit(&mut self) -> i64 {
        [0, 50_000, 100_000, 200_000, 500_000, 1_000_000][self.rng.random_range(0..6)]
    }

    fn adjustment(&mut self) -> i64 {
        let magnitude = self.rng.random_range(100..=200_000i64);
        if self.rng.random_bool(0.6) {
            magnitude
        } else {
            -magnitude
        }
    }

    fn rule_set(&mut self, version: String) -> RuleSet {
        RuleSet {
            version,
            risk_threshold: self.rng.random_range(35..=65u32) as f64 / 100.0,
            max_delay_ms: self.rng.random_range(10..=40u64) * 50,
            dedup_window_ms: self.rng.random_range(60..=600u64) * 1_000,
        }
    }

    /// The form of the next user or region record.
    fn form(&mut self) -> ControlForm {
        if !self.rng.random_bool(self.cfg.debezium_share) {
            ControlForm::Typed
        } else if self.rng.random_bool(0.5) {
            ControlForm::Debezium
        } else {
            ControlForm::DebeziumEnvelope
        }
    }

    fn user_record(&mut self, user: &User, op: &str) -> (ControlForm, String) {
        let form = self.form();
        let text = match form {
            ControlForm::Typed => typed(Change::User(user.clone())),
            _ => debezium(form, "users", op, None, Some(user_row(user)), self.last_t),
        };
        (form, text)
    }

    fn user_delete_record(&mut self, user: &User) -> (ControlForm, String) {
        let form = self.form();
        let text = match form {
            ControlForm::Typed => typed(Change::UserDelete {
                id: user.id.clone(),
            }),
            _ => debezium(form, "users", "d", Some(user_row(user)), None, self.last_t),
        };
        (form, text)
    }

    fn region_record(&mut self, region: &Region, op: &str) -> (ControlForm, String) {
        let form = self.form();
        let text = match form {
            ControlForm::Typed => typed(Change::Region(region.clone())),
            _ => debezium(
                form,
                "regions",
                op,
                None,
                Some(region_row(region)),
                self.last_t,
            ),
        };
        (form, text)
    }

    fn region_delete_record(&mut self, region: &Region) -> (ControlForm, String) {
        let form = self.form();
        let text = match form {
            ControlForm::Typed => typed(Change::RegionDelete {
                id: region.id.clone(),
            }),
            _ => debezium(
                form,
                "regions",
                "d",
                Some(region_row(region)),
                None,
                self.last_t,
            ),
        };
        (form, text)
    }
}

/// The Kafka key of a change (SPEC §11 "keyed by the entity id"): the user's id (of an
/// adjustment too), the region's id, or the rule set's version.
pub fn entity_key(change: &Change) -> &str {
    match change {
        Change::User(u) => &u.id,
        Change::UserDelete { id } | Change::RegionDelete { id } => id,
        Change::Adjust { user_id, .. } => user_id,
        Change::Region(r) => &r.id,
        Change::Rules(r) => &r.version,
    }
}

/// The typed record of a change, without `effective_from`.
fn typed(change: Change) -> String {
    control_json(&ControlRecord {
        change,
        effective_from: None,
    })
}

fn user_row(u: &User) -> Value {
    json!({
        "id": u.id,
        "name": u.name,
        "region_id": u.region_id,
        "balance_cents": u.balance_cents,
        "credit_limit_cents": u.credit_limit_cents,
    })
}

fn region_row(r: &Region) -> Value {
    json!({"id": r.id, "uf": r.uf, "name": r.name, "lat": r.lat, "lon": r.lon})
}

/// A Debezium change event of `table` (PostgreSQL connector layout).
fn debezium(
    form: ControlForm,
    table: &str,
    op: &str,
    before: Option<Value>,
    after: Option<Value>,
    ts_ms: u64,
) -> String {
    let event = json!({
        "before": before,
        "after": after,
        "source": {
            "connector": "postgresql",
            "name": "vtpga",
            "db": "vtpga",
            "schema": "public",
            "table": table,
            "ts_ms": ts_ms,
        },
        "op": op,
        "ts_ms": ts_ms,
    });
    match form {
        ControlForm::DebeziumEnvelope => json!({
            "schema": {
                "type": "struct",
                "optional": false,
                "name": format!("vtpga.public.{table}.Envelope"),
            },
            "payload": event,
        })
        .to_string(),
        _ => event.to_string(),
    }
}

/// A name without the suffix earlier updates added.
fn base_name(name: &str) -> &str {
    name.strip_suffix(" (atualizado)").unwrap_or(name)
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::refdata::{generate_regions, generate_users};
    use std::collections::{BTreeMap, HashMap, HashSet};
    use vtpga_dataflow::control::parse_control;

    fn reference() -> (Vec<Region>, Vec<User>) {
        let regions = generate_regions(20, 7);
        let users = generate_users(1000, &regions, 7);
        (regions, users)
    }

    fn run(cfg: ControlConfig, n: usize) -> Vec<GenControl> {
        let (regions, users) = reference();
        let mut g = ControlGenerator::new(cfg, &regions, &users);
        (0..n).map(|_| g.next_message()).collect()
    }

    /// A config with a high rate of records, so follow-ups and effective times overlap
    /// many other records.
    fn busy() -> ControlConfig {
        ControlConfig {
            rate_per_sec: 50.0,
            invalid_share: 0.05,
            debezium_share: 0.3,
            ..ControlConfig::default()
        }
    }

    #[test]
    fn same_seed_same_records_other_seed_other_records() {
        let a = run(busy(), 3000);
        let b = run(busy(), 3000);
        assert_eq!(a, b);
        let c = run(ControlConfig { seed: 43, ..busy() }, 3000);
        assert_ne!(a, c);
        // next_at is deterministic too.
        let (regions, users) = reference();
        let mut g1 = ControlGenerator::new(busy(), &regions, &users);
        let mut g2 = ControlGenerator::new(busy(), &regions, &users);
        for i in 0..1000u64 {
            assert_eq!(g1.next_at(1_000_000 + i * 7), g2.next_at(1_000_000 + i * 7));
        }
    }

    #[test]
    fn offsets_are_contiguous_per_partition_and_times_never_decrease() {
        for partitions in [1, 2, 5] {
            let recs = run(
                ControlConfig {
                    partitions,
                    ..busy()
                },
                5000,
            );
            let mut next: BTreeMap<i32, i64> = BTreeMap::new();
            for r in &recs {
                assert!((0..partitions).contains(&r.partition));
                assert_eq!(r.partition, partition_for(&r.key, partitions));
                let n = next.entry(r.partition).or_insert(0);
                assert_eq!(r.offset, *n, "{r:?}");
                *n += 1;
            }
            assert_eq!(next.len(), partitions as usize, "{next:?}");
            assert!(recs.windows(2).all(|w| w[0].record_ts <= w[1].record_ts));
        }
        // The own clock: about rate records per second.
        let recs = run(busy(), 5000);
        let span = recs[4999].record_ts - recs[0].record_ts;
        assert!((90_000..=110_000).contains(&span), "{span}");
        // next_at never goes back either.
        let (regions, users) = reference();
        let mut g = ControlGenerator::new(busy(), &regions, &users);
        assert_eq!(g.next_at(100).record_ts, 100);
        assert_eq!(g.next_at(50).record_ts, 100);
        // A restarted generator continues its partitions.
        let mut g = ControlGenerator::new(busy(), &regions, &users).starting_at([(1, 40)]);
        let recs: Vec<_> = (0..200).map(|_| g.next_message()).collect();
        let first = |p| recs.iter().find(|r| r.partition == p).unwrap().offset;
        assert_eq!((first(0), first(1)), (0, 40));
    }

    /// SPEC §11 as it concerns validity, applied in effective order: which records
    /// change nothing.
    /// Which positions are refused, and how many of each kind.
    type Refused = (BTreeMap<(i32, i64), bool>, HashMap<&'static str, usize>);

    fn refused(recs: &[GenControl], users: &[User]) -> Refused {
        let mut order: Vec<(u64, i32, i64, Option<ControlRecord>)> = recs
            .iter()
            .map(|r| {
                let parsed = parse_control(&r.payload).ok();
                let at = parsed
                    .as_ref()
                    .and_then(|p| p.effective_from)
                    .map_or(r.record_ts, |e| (e.max(0) as u64).max(r.record_ts));
                (at, r.partition, r.offset, parsed)
            })
            .collect();
        order.sort_by_key(|(at, p, o, _)| (*at, *p, *o));
        let mut exists: HashSet<String> = users.iter().map(|u| u.id.clone()).collect();
        let mut versions: HashSet<String> = HashSet::from(["default".to_owned()]);
        let mut out = BTreeMap::new();
        let mut changes: HashMap<&'static str, usize> = HashMap::new();
        for (_, p, o, parsed) in order {
            let ok = match parsed.map(|p| p.change) {
                None => false,
                Some(Change::User(u)) => {
                    let new = exists.insert(u.id);
                    *changes
                        .entry(if new { "created" } else { "updated" })
                        .or_default() += 1;
                    true
                }
                Some(Change::UserDelete { id }) => {
                    assert!(exists.remove(&id), "deleting {id}, which does not exist");
                    true
                }
                Some(Change::Adjust { user_id, .. }) => exists.contains(&user_id),
                Some(Change::Region(_)) | Some(Change::RegionDelete { .. }) => true,
                Some(Change::Rules(r)) => versions.insert(r.version),
            };
            out.insert((p, o), !ok);
        }
        (out, changes)
    }

    #[test]
    fn exactly_the_intended_records_are_invalid() {
        let (_, users) = reference();
        for cfg in [
            busy(),
            ControlConfig {
                rate_per_sec: 0.5,
                partitions: 3,
                tag: "t1-".to_owned(),
                ..ControlConfig::default()
            },
        ] {
            let recs = run(cfg, 6000);
            for r in &recs {
                let text = std::str::from_utf8(&r.payload).unwrap();
                assert_eq!(
                    parse_control(&r.payload).is_ok(),
                    r.kind.parses(),
                    "{:?}: {text}",
                    r.kind
                );
            }
            for r in &recs {
                if let Ok(rec) = parse_control(&r.payload) {
                    assert_eq!(entity_key(&rec.change), r.key);
                }
            }
            let (refused, changes) = refused(&recs, &users);
            for r in &recs {
                assert_eq!(
                    refused[&(r.partition, r.offset)],
                    r.kind.is_invalid(),
                    "{:?} {:?}: {}",
                    r.kind,
                    r.form,
                    String::from_utf8_lossy(&r.payload)
                );
            }
            // Every kind and form occurs.
            let kinds: HashSet<ControlKind> = recs.iter().map(|r| r.kind).collect();
            assert_eq!(kinds.len(), 12, "{kinds:?}");
            let forms: HashSet<ControlForm> = recs.iter().map(|r| r.form).collect();
            assert_eq!(forms.len(), 3);
            let invalid = recs.iter().filter(|r| r.kind.is_invalid()).count();
            let share = invalid as f64 / recs.len() as f64;
            assert!(invalid > 0 && share < 0.08, "{share}");
            assert!(
                changes["created"] > 100 && changes["updated"] > 500,
                "{changes:?}"
            );
        }
    }

    #[test]
    fn content_of_the_changes() {
        let (regions, users) = reference();
        let recs = run(busy(), 20_000);
        let mut counts: HashMap<ControlKind, usize> = HashMap::new();
        let mut effective_from = 0;
        let mut uf_changes = 0;
        let mut deleted_users: HashSet<String> = HashSet::new();
        let mut max_deleted_users = 0;
        let mut deleted_regions: HashMap<String, u64> = HashMap::new();
        let region_uf: HashMap<&str, &str> = regions
            .iter()
            .map(|r| (r.id.as_str(), r.uf.as_str()))
            .collect();
        let initial: HashMap<&str, &User> = users.iter().map(|u| (u.id.as_str(), u)).collect();
        let mut lowered = 0;
        for r in &recs {
            *counts.entry(r.kind).or_default() += 1;
            let Ok(rec) = parse_control(&r.payload) else {
                continue;
            };
            match (&rec.change, r.kind) {
                (Change::Rules(rules), ControlKind::Rules) => {
                    assert!(rules.version.starts_with("gen-"));
                    assert!((0.35..=0.65).contains(&rules.risk_threshold));
                    assert!((500..=2000).contains(&rules.max_delay_ms));
                    assert!((60_000..=600_000).contains(&rules.dedup_window_ms));
                    if let Some(e) = rec.effective_from {
                        let ahead = e - r.record_ts as i64;
                        assert!((1_000..=5_000).contains(&ahead), "{ahead}");
                        effective_from += 1;
                    }
                }
                (Change::Region(reg), ControlKind::UpdateRegion)
                    if region_uf[reg.id.as_str()] != reg.uf =>
                {
                    uf_changes += 1;
                }
                (Change::Region(_), ControlKind::UpdateRegion) => {}
                (Change::RegionDelete { id }, ControlKind::DeleteRegion) => {
                    assert!(deleted_regions.is_empty(), "two regions deleted at once");
                    deleted_regions.insert(id.clone(), r.record_ts);
                }
                (Change::Region(reg), ControlKind::RecreateRegion) => {
                    let since = deleted_regions.remove(&reg.id).expect("deleted before");
                    assert!(r.record_ts - since >= 2_000);
                }
                (Change::UserDelete { id }, ControlKind::DeleteUser) => {
                    deleted_users.insert(id.clone());
                    max_deleted_users = max_deleted_users.max(deleted_users.len());
                }
                (Change::User(u), ControlKind::RecreateUser) => {
                    assert!(deleted_users.remove(&u.id));
                }
                (Change::User(u), ControlKind::CreateUser) => {
                    assert!(u.id.starts_with("un") && !initial.contains_key(u.id.as_str()));
                    assert!(region_uf.contains_key(u.region_id.as_str()));
                }
                (Change::User(u), ControlKind::UpdateUser) => {
                    if let Some(old) = initial.get(u.id.as_str()) {
                        if u.credit_limit_cents < old.credit_limit_cents / 5 {
                            lowered += 1;
                        }
                    }
                }
                (Change::Adjust { amount_cents, .. }, _) => assert_ne!(*amount_cents, 0),
                _ => {}
            }
        }
        let n = |k| counts.get(&k).copied().unwrap_or(0);
        // Deletions are rare and bounded; each is followed by its re-creation.
        assert!(n(ControlKind::DeleteUser) > 50, "{counts:?}");
        // About one user in 500 at most (1,000 users, a few thousand created).
        assert!(max_deleted_users <= 10, "{max_deleted_users}");
        assert!(n(ControlKind::DeleteRegion) > 20, "{counts:?}");
        assert!(
            n(ControlKind::RecreateRegion) + 1 >= n(ControlKind::DeleteRegion),
            "{counts:?}"
        );
        assert!(effective_from > 200, "{effective_from}");
        assert!(uf_changes > 20, "{uf_changes}");
        assert!(lowered > 50, "{lowered}");
        assert!(n(ControlKind::Adjust) > 4000, "{counts:?}");
    }

    #[test]
    fn debezium_records_read_as_their_typed_change() {
        let recs = run(busy(), 4000);
        let mut seen = HashSet::new();
        for r in recs.iter().filter(|r| r.form != ControlForm::Typed) {
            let v: Value = serde_json::from_slice(&r.payload).unwrap();
            let event = match r.form {
                ControlForm::DebeziumEnvelope => {
                    assert!(v.get("schema").is_some());
                    &v["payload"]
                }
                _ => &v,
            };
            let op = event["op"].as_str().unwrap();
            let table = event["source"]["table"].as_str().unwrap();
            seen.insert((r.form, table.to_owned(), op.to_owned()));
            let rec = parse_control(&r.payload).unwrap();
            let id = match (&rec.change, op) {
                (Change::User(u), "c" | "u") => &u.id,
                (Change::Region(g), "c" | "u") => &g.id,
                (Change::UserDelete { id }, "d") | (Change::RegionDelete { id }, "d") => id,
                other => panic!("{other:?}"),
            };
            assert_eq!(id, &r.key);
        }
        for form in [ControlForm::Debezium, ControlForm::DebeziumEnvelope] {
            for op in ["c", "u", "d"] {
                assert!(
                    seen.contains(&(form, "users".to_owned(), op.to_owned())),
                    "{form:?} users {op}: {seen:?}"
                );
            }
            assert!(seen.contains(&(form, "regions".to_owned(), "u".to_owned())));
        }
    }
}

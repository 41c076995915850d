//! SPEC §11 control records: parsing, field rules and the canonical JSON form.
//!
//! A control record is one JSON object, in one of two forms:
//!
//! * **typed**: `"type"` names the change (`user`, `user_delete`, `balance_adjustment`,
//!   `region`, `region_delete`, `rules`) and the object carries that change's fields,
//!   plus an optional `"effective_from"` in the §3 event-time form;
//! * **CDC**: a Debezium change event of the `users` or `regions` table, bare or inside
//!   the `{"schema": …, "payload": …}` envelope.
//!
//! The SPEC §3 limits apply as they do to transactions (size, byte order mark, UTF-8,
//! nesting depth, lone surrogates, a field given twice), through the same checks as
//! [`crate::parse`]: every top-level value is captured as raw text and scanned once, so
//! nested objects (`payload`, `after`, `before`, `source`) are read from text already
//! checked. A field given twice is an error in every object the record's form reads
//! (the top level, `payload`, `after`, `before`, `source`) when it is one of the fields
//! read there; unknown fields are ignored, whatever valid JSON they hold, repeated or not.
//!
//! [`parse_rule_set`] reads a `--rules` / `--shadow` file (a `rules` object without
//! `type`), and [`control_json`] writes the canonical typed form of a record.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::Deserializer as _;
use serde_json::value::RawValue;

use crate::calendar::format_utc_ms;
use crate::model::{Cents, Change, ControlRecord, Region, RuleSet, User};
use crate::parse::{
    check_raw, decode_string, excerpt, json_kind, object_text, parse_event_time, ParseError,
};

/// The 27 Brazilian federative units (26 states and the Federal District): the values
/// a region's `uf` may take (SPEC §2), in alphabetical order of their names.
pub const UFS: [&str; 27] = [
    "AC", "AL", "AP", "AM", "BA", "CE", "DF", "ES", "GO", "MA", "MT", "MS", "MG", "PA", "PB", "PR",
    "PE", "PI", "RJ", "RN", "RS", "RO", "RR", "SC", "SP", "SE", "TO",
];

/// The six `type`s of a typed control record (SPEC §11).
pub const TYPES: [&str; 6] = [
    "user",
    "user_delete",
    "balance_adjustment",
    "region",
    "region_delete",
    "rules",
];

/// Why a control record (or a rule set file) is refused. Display gives a clear one-line
/// reason: the error text of the dead-letter record and of the invalid-messages table.
/// It names fields by their path (`after.balance_cents`) and quotes at most a short
/// excerpt of any value taken from the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The payload breaks a SPEC §3 limit (size, byte order mark, UTF-8, JSON grammar,
    /// not an object, depth, lone surrogate).
    #[error(transparent)]
    Payload(#[from] ParseError),
    /// A field read by the record's form is given more than once in its object; holds
    /// its path.
    #[error("field {0} given more than once")]
    RepeatedField(String),
    /// `type` is none of the six [`TYPES`]; holds an excerpt of it.
    #[error("unknown control record type {0:?} (expected user, user_delete, balance_adjustment, region, region_delete or rules)")]
    UnknownType(String),
    /// A rule set file whose `type` is present and not `rules`; holds an excerpt of it.
    #[error("a rule set must be a rules object, found type {0:?}")]
    NotARuleSet(String),
    /// A required field is missing; holds its path.
    #[error("missing field {0}")]
    MissingField(String),
    /// A field of the wrong JSON type or with a value its rule refuses.
    #[error("field {field}: {reason}")]
    BadField {
        /// The field's path.
        field: String,
        /// What is wrong with it (with at most a short excerpt of the value).
        reason: String,
    },
    /// A Debezium event whose `op` is not `c`, `u`, `r` or `d`; holds an excerpt of it.
    #[error("unknown debezium op {0:?} (expected c, u, r or d)")]
    UnknownOp(String),
    /// A Debezium event of a table other than `users` and `regions`; holds an excerpt.
    #[error("unknown debezium table {0:?} (expected users or regions)")]
    UnknownTable(String),
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

/// Parse and validate one control record (SPEC §11), typed or Debezium. Never panics
/// on any input.
///
/// `effective_from` may be absent or `null` (no effective time). A Debezium event may
/// carry one at its top level (or, in the envelope, inside `payload`; not both).
pub fn parse_control(payload: &[u8]) -> Result<ControlRecord, ControlError> {
    let top = Object::top(payload)?;
    if top.get("type")?.is_some() {
        let ty = top.string("type")?;
        let change = typed(&top, &ty)?;
        let effective_from = effective_from(&top)?;
        return Ok(ControlRecord {
            change,
            effective_from,
        });
    }
    if top.get("op")?.is_some() {
        let change = debezium(&top)?;
        let effective_from = effective_from(&top)?;
        return Ok(ControlRecord {
            change,
            effective_from,
        });
    }
    if top.get("payload")?.is_some() {
        let event = top.object("payload")?;
        if event.get("op")?.is_none() {
            return Err(ControlError::MissingField(event.path("op")));
        }
        let change = debezium(&event)?;
        let effective_from = match (effective_from(&top)?, effective_from(&event)?) {
            (Some(_), Some(_)) => {
                return Err(top.bad(
                    "effective_from",
                    "given both outside and inside payload".to_owned(),
                ))
            }
            (outer, inner) => outer.or(inner),
        };
        return Ok(ControlRecord {
            change,
            effective_from,
        });
    }
    Err(ControlError::MissingField("type".to_owned()))
}

/// Parse and validate a rule set file (`--rules FILE`, `--shadow FILE`; SPEC §11–12):
/// a `rules` object without `type` (`"type": "rules"` is accepted, any other type
/// refused), with the field rules of a `rules` record and the SPEC §3 limits. Unknown
/// fields (`effective_from` included) are ignored.
pub fn parse_rule_set(payload: &[u8]) -> Result<RuleSet, ControlError> {
    let top = Object::top(payload)?;
    if top.get("type")?.is_some() {
        let ty = top.string("type")?;
        if ty != "rules" {
            return Err(ControlError::NotARuleSet(excerpt(&ty)));
        }
    }
    rule_set(&top)
}

/// The change of a typed record of type `ty`.
fn typed(obj: &Object, ty: &str) -> Result<Change, ControlError> {
    Ok(match ty {
        "user" => Change::User(user(obj)?),
        "user_delete" => Change::UserDelete { id: obj.id("id")? },
        "balance_adjustment" => {
            let user_id = obj.id("user_id")?;
            let amount_cents = obj.cents("amount_cents")?;
            if amount_cents == 0 {
                return Err(obj.bad("amount_cents", "must not be zero".to_owned()));
            }
            Change::Adjust {
                user_id,
                amount_cents,
            }
        }
        "region" => Change::Region(region(obj)?),
        "region_delete" => Change::RegionDelete { id: obj.id("id")? },
        "rules" => Change::Rules(rule_set(obj)?),
        other => return Err(ControlError::UnknownType(excerpt(other))),
    })
}

/// The change of a Debezium event (the object holding `op`, `source`, `before`,
/// `after`).
fn debezium(event: &Object) -> Result<Change, ControlError> {
    let op = event.string("op")?;
    let row = match op.as_str() {
        "c" | "u" | "r" => "after",
        "d" => "before",
        other => return Err(ControlError::UnknownOp(excerpt(other))),
    };
    let source = event.object("source")?;
    let table = source.string("table")?;
    let users = match table.as_str() {
        "users" => true,
        "regions" => false,
        other => return Err(ControlError::UnknownTable(excerpt(other))),
    };
    let row = event.object(row)?;
    Ok(match (op.as_str(), users) {
        ("d", true) => Change::UserDelete { id: row.id("id")? },
        ("d", false) => Change::RegionDelete { id: row.id("id")? },
        (_, true) => Change::User(user(&row)?),
        (_, false) => Change::Region(region(&row)?),
    })
}

/// A user's five fields (SPEC §2).
fn user(obj: &Object) -> Result<User, ControlError> {
    Ok(User {
        id: obj.id("id")?,
        name: obj.string("name")?,
        region_id: obj.id("region_id")?,
        balance_cents: obj.nonnegative_cents("balance_cents")?,
        credit_limit_cents: obj.nonnegative_cents("credit_limit_cents")?,
    })
}

/// A region's five fields (SPEC §2).
fn region(obj: &Object) -> Result<Region, ControlError> {
    let id = obj.id("id")?;
    let uf = obj.string("uf")?;
    if !UFS.contains(&uf.as_str()) {
        return Err(obj.bad(
            "uf",
            format!(
                "unknown state code {:?} (expected one of the 27 Brazilian codes, such as SP)",
                excerpt(&uf)
            ),
        ));
    }
    let name = obj.string("name")?;
    let lat = obj.number_within("lat", 90.0)?;
    let lon = obj.number_within("lon", 180.0)?;
    Ok(Region {
        id,
        uf,
        name,
        lat,
        lon,
    })
}

/// A rule set's four fields (SPEC §11).
fn rule_set(obj: &Object) -> Result<RuleSet, ControlError> {
    let version = obj.string("version")?;
    if version.is_empty() {
        return Err(obj.bad("version", "must not be empty".to_owned()));
    }
    let (risk_threshold, raw) = obj.number("risk_threshold")?;
    if risk_threshold < 0.0 {
        return Err(obj.bad(
            "risk_threshold",
            format!("must be >= 0, found {}", excerpt(raw)),
        ));
    }
    Ok(RuleSet {
        version,
        risk_threshold,
        max_delay_ms: obj.unsigned("max_delay_ms")?,
        dedup_window_ms: obj.unsigned("dedup_window_ms")?,
    })
}

/// `effective_from` of this object: absent or `null` is none; otherwise a string of
/// the §3 event-time form.
fn effective_from(obj: &Object) -> Result<Option<i64>, ControlError> {
    match obj.get("effective_from")? {
        None => Ok(None),
        Some(raw) if raw.get() == "null" => Ok(None),
        Some(_) => {
            let text = obj.string("effective_from")?;
            parse_event_time(&text).map(Some).map_err(|e| match e {
                ParseError::BadTime { value, reason } => obj.bad(
                    "effective_from",
                    format!("invalid event time {value:?}: {reason}"),
                ),
                other => other.into(),
            })
        }
    }
}

// ---------------------------------------------------------------------------
// Objects read as raw members
// ---------------------------------------------------------------------------

/// One member of an object: its decoded key and its value's exact text.
type Member<'a> = (Cow<'a, str>, &'a RawValue);

/// A JSON object read as its members in document order, and where it sits in the
/// record (`""` at the top level, `"payload.after."` …) for error messages.
struct Object<'a> {
    members: Vec<Member<'a>>,
    prefix: String,
}

impl<'a> Object<'a> {
    /// The top-level object of a payload, after the SPEC §3 checks (size, byte order
    /// mark, UTF-8, grammar, depth, lone surrogates anywhere in it).
    fn top(payload: &'a [u8]) -> Result<Self, ControlError> {
        let text = object_text(payload)?;
        Ok(Object {
            members: read_members(text, true)?,
            prefix: String::new(),
        })
    }

    /// The path of member `name`, for error messages.
    fn path(&self, name: &str) -> String {
        format!("{}{}", self.prefix, name)
    }

    /// A field-rule error of member `name`.
    fn bad(&self, name: &str, reason: String) -> ControlError {
        ControlError::BadField {
            field: self.path(name),
            reason,
        }
    }

    /// A wrong-JSON-type error of member `name` whose value is `raw`.
    fn wrong_type(&self, name: &str, expected: &str, raw: &str) -> ControlError {
        self.bad(
            name,
            format!(
                "expected {expected}, found {}",
                json_kind(raw.as_bytes().first().copied())
            ),
        )
    }

    /// The value of member `name`, if present; an error if it is given twice.
    fn get(&self, name: &str) -> Result<Option<&'a RawValue>, ControlError> {
        let mut found = None;
        for (key, value) in &self.members {
            if key == name {
                if found.is_some() {
                    return Err(ControlError::RepeatedField(self.path(name)));
                }
                found = Some(*value);
            }
        }
        Ok(found)
    }

    /// The text of required member `name`.
    fn require(&self, name: &str) -> Result<&'a str, ControlError> {
        match self.get(name)? {
            Some(v) => Ok(v.get()),
            None => Err(ControlError::MissingField(self.path(name))),
        }
    }

    /// Member `name`, a JSON string: its content.
    fn string(&self, name: &str) -> Result<String, ControlError> {
        let raw = self.require(name)?;
        if !raw.starts_with('"') {
            return Err(self.wrong_type(name, "a string", raw));
        }
        Ok(decode_string(raw)?.into_owned())
    }

    /// Member `name`, an id: a non-empty JSON string, kept exactly.
    fn id(&self, name: &str) -> Result<String, ControlError> {
        let id = self.string(name)?;
        if id.is_empty() {
            return Err(self.bad(name, "id must not be empty".to_owned()));
        }
        Ok(id)
    }

    /// Member `name`, a JSON integer (no fraction, no exponent): its literal text.
    fn integer_text(&self, name: &str) -> Result<&'a str, ControlError> {
        let raw = self.require(name)?;
        if !matches!(raw.as_bytes().first(), Some(b'-' | b'0'..=b'9')) {
            return Err(self.wrong_type(name, "an integer", raw));
        }
        if raw.bytes().any(|b| matches!(b, b'.' | b'e' | b'E')) {
            return Err(self.bad(
                name,
                format!(
                    "expected an integer, found {} (a fraction or an exponent)",
                    excerpt(raw)
                ),
            ));
        }
        Ok(raw)
    }

    /// Member `name`, cents: a JSON integer within i64.
    fn cents(&self, name: &str) -> Result<Cents, ControlError> {
        let raw = self.integer_text(name)?;
        raw.parse::<i64>().map_err(|_| {
            self.bad(
                name,
                format!("integer {} is out of range (beyond i64)", excerpt(raw)),
            )
        })
    }

    /// Member `name`, cents >= 0: a JSON integer within i64.
    fn nonnegative_cents(&self, name: &str) -> Result<Cents, ControlError> {
        let cents = self.cents(name)?;
        if cents < 0 {
            return Err(self.bad(name, format!("must be >= 0, found {cents}")));
        }
        Ok(cents)
    }

    /// Member `name`, a JSON integer within u64 (so >= 0; `-0` is 0).
    fn unsigned(&self, name: &str) -> Result<u64, ControlError> {
        let raw = self.integer_text(name)?;
        if let Some(magnitude) = raw.strip_prefix('-') {
            if magnitude.bytes().all(|b| b == b'0') {
                return Ok(0);
            }
            return Err(self.bad(name, format!("must be >= 0, found {}", excerpt(raw))));
        }
        raw.parse::<u64>().map_err(|_| {
            self.bad(
                name,
                format!("integer {} is out of range (beyond u64)", excerpt(raw)),
            )
        })
    }

    /// Member `name`, a JSON number whose value is a finite f64 (the nearest to its
    /// decimal text); the value and its text.
    fn number(&self, name: &str) -> Result<(f64, &'a str), ControlError> {
        let raw = self.require(name)?;
        if !matches!(raw.as_bytes().first(), Some(b'-' | b'0'..=b'9')) {
            return Err(self.wrong_type(name, "a number", raw));
        }
        match raw.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok((v, raw)),
            _ => Err(self.bad(
                name,
                format!("number {} is out of range (not a finite f64)", excerpt(raw)),
            )),
        }
    }

    /// Member `name`, a JSON number in [-limit, limit].
    fn number_within(&self, name: &str, limit: f64) -> Result<f64, ControlError> {
        let (v, raw) = self.number(name)?;
        if !(-limit..=limit).contains(&v) {
            return Err(self.bad(
                name,
                format!(
                    "must be between -{limit} and {limit}, found {}",
                    excerpt(raw)
                ),
            ));
        }
        Ok(v)
    }

    /// Member `name`, a JSON object (its text was scanned with the top level's).
    fn object(&self, name: &str) -> Result<Object<'a>, ControlError> {
        let raw = self.require(name)?;
        if !raw.starts_with('{') {
            return Err(self.wrong_type(name, "an object", raw));
        }
        Ok(Object {
            members: read_members(raw, false)?,
            prefix: format!("{}.", self.path(name)),
        })
    }
}

/// The members of the JSON object `text` (whose first byte is `{`). With `scan`, the
/// object is a payload's top level: its keys and values are checked for depth and lone
/// surrogates as [`crate::parse`] does; without, `text` is a value already scanned.
fn read_members(text: &str, scan: bool) -> Result<Vec<Member<'_>>, ParseError> {
    let mut failure = None;
    let mut de = serde_json::Deserializer::from_str(text);
    let members = de.deserialize_map(MembersVisitor {
        failure: &mut failure,
        scan,
    });
    let members = match members {
        Ok(members) => members,
        Err(e) => return Err(failure.unwrap_or_else(|| ParseError::Json(e.to_string()))),
    };
    de.end().map_err(|e| ParseError::Json(e.to_string()))?;
    Ok(members)
}

/// An object's members captured as raw text (the generic twin of the transaction
/// parser's top-level visitor).
struct MembersVisitor<'f> {
    /// The precise reason when the visitor itself rejects the document.
    failure: &'f mut Option<ParseError>,
    /// Check depth and lone surrogates (top level only).
    scan: bool,
}

impl<'de> Visitor<'de> for MembersVisitor<'_> {
    type Value = Vec<Member<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members = Vec::new();
        let failure = self.failure;
        let scan = self.scan;
        let mut fail = |e: ParseError| -> A::Error {
            let msg = e.to_string();
            *failure = Some(e);
            de::Error::custom(msg)
        };
        while let Some(key) = map.next_key::<&'de RawValue>()? {
            let key = key.get();
            if scan && key.as_bytes().contains(&b'\\') {
                check_raw(key.as_bytes(), 1).map_err(&mut fail)?;
            }
            let name = decode_string(key).map_err(&mut fail)?;
            let value: &'de RawValue = map.next_value()?;
            if scan {
                let v = value.get().as_bytes();
                // Strings without escapes and scalars cannot break the depth or
                // surrogate rules; everything else is scanned.
                let needs_scan = match v.first() {
                    Some(b'"') => v.contains(&b'\\'),
                    Some(b'{' | b'[') => true,
                    _ => false,
                };
                if needs_scan {
                    check_raw(v, 1).map_err(&mut fail)?;
                }
            }
            members.push((name, value));
        }
        Ok(members)
    }
}

// ---------------------------------------------------------------------------
// The canonical typed form
// ---------------------------------------------------------------------------

/// The last instant [`format_utc_ms`] writes with a 4-digit year:
/// 9999-12-31T23:59:59.999Z.
const MAX_UTC_MS: i64 = 253_402_300_799_999;
/// The offset (minutes) an `effective_from` after [`MAX_UTC_MS`] is written with: its
/// local time is then still in year 9999, as the §3 form requires.
const LATE_OFFSET_MIN: i64 = -(23 * 60 + 59);

/// The canonical typed JSON of a control record (SPEC §11): one line, `type` first,
/// then the fields of that type in the §11 table's order, then `effective_from` (if
/// any) as `YYYY-MM-DDTHH:MM:SS.mmmZ`. For every record [`parse_control`] accepts,
/// `parse_control(control_json(r)) == r` (an `effective_from` after
/// 9999-12-31T23:59:59.999Z, which the §3 form reaches only with a negative offset, is
/// written with the offset `-23:59`). A record breaking the field rules is written as
/// it is and refused when read back (a non-finite number is written `null`).
pub fn control_json(record: &ControlRecord) -> String {
    let mut out = JsonObject::default();
    match &record.change {
        Change::User(u) => {
            out.string("type", "user");
            out.string("id", &u.id);
            out.string("name", &u.name);
            out.string("region_id", &u.region_id);
            out.raw("balance_cents", u.balance_cents);
            out.raw("credit_limit_cents", u.credit_limit_cents);
        }
        Change::UserDelete { id } => {
            out.string("type", "user_delete");
            out.string("id", id);
        }
        Change::Adjust {
            user_id,
            amount_cents,
        } => {
            out.string("type", "balance_adjustment");
            out.string("user_id", user_id);
            out.raw("amount_cents", amount_cents);
        }
        Change::Region(r) => {
            out.string("type", "region");
            out.string("id", &r.id);
            out.string("uf", &r.uf);
            out.string("name", &r.name);
            out.float("lat", r.lat);
            out.float("lon", r.lon);
        }
        Change::RegionDelete { id } => {
            out.string("type", "region_delete");
            out.string("id", id);
        }
        Change::Rules(rules) => {
            out.string("type", "rules");
            out.string("version", &rules.version);
            out.float("risk_threshold", rules.risk_threshold);
            out.raw("max_delay_ms", rules.max_delay_ms);
            out.raw("dedup_window_ms", rules.dedup_window_ms);
        }
    }
    if let Some(ms) = record.effective_from {
        out.string("effective_from", &format_effective_from(ms));
    }
    out.finish()
}

/// `effective_from` in the §3 event-time form.
fn format_effective_from(ms: i64) -> String {
    if ms <= MAX_UTC_MS {
        return format_utc_ms(ms);
    }
    let local = format_utc_ms(ms + LATE_OFFSET_MIN * 60_000);
    let local = local.strip_suffix('Z').unwrap_or(&local);
    let off = LATE_OFFSET_MIN.unsigned_abs();
    format!("{local}-{:02}:{:02}", off / 60, off % 60)
}

/// A JSON object written member by member.
#[derive(Default)]
struct JsonObject {
    text: String,
}

impl JsonObject {
    fn key(&mut self, key: &str) {
        self.text.push(if self.text.is_empty() { '{' } else { ',' });
        self.text.push_str(&json_string(key));
        self.text.push(':');
    }

    fn string(&mut self, key: &str, value: &str) {
        self.key(key);
        self.text.push_str(&json_string(value));
    }

    fn raw(&mut self, key: &str, value: impl fmt::Display) {
        self.key(key);
        self.text.push_str(&value.to_string());
    }

    fn float(&mut self, key: &str, value: f64) {
        // serde_json writes the shortest text that reads back as the same f64.
        self.key(key);
        self.text
            .push_str(&serde_json::Value::from(value).to_string());
    }

    fn finish(mut self) -> String {
        if self.text.is_empty() {
            self.text.push('{');
        }
        self.text.push('}');
        self.text
    }
}

/// A JSON string literal of `s`.
fn json_string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::MIN_EVENT_MS;

    /// 2026-11-26T17:03:12.345Z
    const E0: i64 = 1_795_712_592_345;

    fn parse(s: &str) -> Result<ControlRecord, ControlError> {
        parse_control(s.as_bytes())
    }

    fn record(change: Change) -> ControlRecord {
        ControlRecord {
            change,
            effective_from: None,
        }
    }

    fn ana() -> User {
        User {
            id: "u1".into(),
            name: "Ana".into(),
            region_id: "r017".into(),
            balance_cents: 1000,
            credit_limit_cents: 500,
        }
    }

    fn sao_paulo() -> Region {
        Region {
            id: "r017".into(),
            uf: "SP".into(),
            name: "São Paulo".into(),
            lat: -23.55,
            lon: -46.63,
        }
    }

    fn rules_v2() -> RuleSet {
        RuleSet {
            version: "v2".into(),
            risk_threshold: 0.7,
            max_delay_ms: 2000,
            dedup_window_ms: 60_000,
        }
    }

    const USER: [(&str, &str); 5] = [
        ("id", r#""u1""#),
        ("name", r#""Ana""#),
        ("region_id", r#""r017""#),
        ("balance_cents", "1000"),
        ("credit_limit_cents", "500"),
    ];
    const REGION: [(&str, &str); 5] = [
        ("id", r#""r017""#),
        ("uf", r#""SP""#),
        ("name", r#""São Paulo""#),
        ("lat", "-23.55"),
        ("lon", "-46.63"),
    ];
    const RULES: [(&str, &str); 4] = [
        ("version", r#""v2""#),
        ("risk_threshold", "0.7"),
        ("max_delay_ms", "2000"),
        ("dedup_window_ms", "60000"),
    ];

    /// Members of a JSON object: names and raw JSON values.
    type Members = Vec<(&'static str, &'static str)>;

    /// The base fields (raw JSON) of each type and the change they make.
    fn bases() -> Vec<(&'static str, Members, Change)> {
        vec![
            ("user", USER.to_vec(), Change::User(ana())),
            (
                "user_delete",
                vec![("id", r#""u1""#)],
                Change::UserDelete { id: "u1".into() },
            ),
            (
                "balance_adjustment",
                vec![("user_id", r#""u1""#), ("amount_cents", "-250")],
                Change::Adjust {
                    user_id: "u1".into(),
                    amount_cents: -250,
                },
            ),
            ("region", REGION.to_vec(), Change::Region(sao_paulo())),
            (
                "region_delete",
                vec![("id", r#""r017""#)],
                Change::RegionDelete { id: "r017".into() },
            ),
            ("rules", RULES.to_vec(), Change::Rules(rules_v2())),
        ]
    }

    /// An object of these members (raw JSON values), in order.
    fn object(members: &[(&str, &str)]) -> String {
        let members: Vec<String> = members
            .iter()
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect();
        format!("{{{}}}", members.join(","))
    }

    /// A typed record of type `ty`: its base fields with some values (raw JSON)
    /// replaced, `None` removing the field, and `extra` members (raw JSON) appended.
    fn typed_doc(ty: &str, overrides: &[(&str, Option<&str>)], extra: &str) -> String {
        let (_, fields, _) = bases().into_iter().find(|(t, _, _)| *t == ty).unwrap();
        let quoted = format!("\"{ty}\"");
        let mut members = vec![];
        for (k, v) in [("type", quoted.as_str())].into_iter().chain(fields) {
            match overrides.iter().find(|(o, _)| *o == k) {
                Some((_, Some(nv))) => members.push((k, *nv)),
                Some((_, None)) => {}
                None => members.push((k, v)),
            }
        }
        let mut text = object(&members);
        if !extra.is_empty() {
            text.pop();
            text = format!("{text},{extra}}}");
        }
        text
    }

    fn with(ty: &str, field: &str, raw: &str) -> Result<ControlRecord, ControlError> {
        parse(&typed_doc(ty, &[(field, Some(raw))], ""))
    }

    /// `result` is a field-rule error of `field` whose reason mentions `why`.
    #[track_caller]
    fn assert_bad_field(result: Result<ControlRecord, ControlError>, field: &str, why: &str) {
        match result {
            Err(e @ ControlError::BadField { .. }) => {
                let text = e.to_string();
                let ControlError::BadField { field: f, reason } = e else {
                    unreachable!()
                };
                assert_eq!(f, field, "{text}");
                assert!(reason.contains(why), "{text:?} should say {why:?}");
                assert!(text.starts_with(&format!("field {field}: ")), "{text}");
            }
            other => panic!("expected a bad {field} ({why}), got {other:?}"),
        }
    }

    // --- the typed form ---------------------------------------------------------

    #[test]
    fn every_type_parses() {
        let types: Vec<_> = bases().iter().map(|b| b.0).collect();
        assert_eq!(types, TYPES);
        for (ty, fields, change) in bases() {
            assert_eq!(
                parse(&typed_doc(ty, &[], "")),
                Ok(record(change.clone())),
                "{ty}"
            );
            // Member order and whitespace do not matter.
            let mut reversed = fields.clone();
            reversed.reverse();
            let quoted = format!("\"{ty}\"");
            reversed.push(("type", &quoted));
            let spaced = format!(" \n{}\t\r\n", object(&reversed).replace(',', " , "));
            assert_eq!(parse(&spaced), Ok(record(change)), "{ty}");
        }
    }

    #[test]
    fn field_values_at_their_limits_are_accepted() {
        let user = |field: &str, raw: &str| match with("user", field, raw) {
            Ok(ControlRecord {
                change: Change::User(u),
                ..
            }) => u,
            other => panic!("{field}={raw}: {other:?}"),
        };
        assert_eq!(user("balance_cents", "0").balance_cents, 0);
        assert_eq!(user("balance_cents", "-0").balance_cents, 0);
        assert_eq!(
            user("balance_cents", "9223372036854775807").balance_cents,
            i64::MAX
        );
        assert_eq!(user("credit_limit_cents", "0").credit_limit_cents, 0);
        // A name may be empty; ids are kept exactly (case, spaces, escapes).
        assert_eq!(user("name", r#""""#).name, "");
        assert_eq!(user("id", r#"" U1 ""#).id, " U1 ");
        assert_eq!(user("id", r#""\u00e9\ud83d\ude00""#).id, "é😀");

        let amount = |raw: &str| match with("balance_adjustment", "amount_cents", raw) {
            Ok(ControlRecord {
                change: Change::Adjust { amount_cents, .. },
                ..
            }) => amount_cents,
            other => panic!("{raw}: {other:?}"),
        };
        assert_eq!(amount("1"), 1);
        assert_eq!(amount("-1"), -1);
        assert_eq!(amount("-9223372036854775808"), i64::MIN);
        assert_eq!(amount("9223372036854775807"), i64::MAX);

        let region = |field: &str, raw: &str| match with("region", field, raw) {
            Ok(ControlRecord {
                change: Change::Region(r),
                ..
            }) => r,
            other => panic!("{field}={raw}: {other:?}"),
        };
        for (raw, v) in [("90", 90.0), ("-90", -90.0), ("-90.0", -90.0), ("0", 0.0)] {
            assert_eq!(region("lat", raw).lat, v);
        }
        for (raw, v) in [("180", 180.0), ("-180e0", -180.0), ("1.8E2", 180.0)] {
            assert_eq!(region("lon", raw).lon, v);
        }
        for uf in UFS {
            assert_eq!(region("uf", &format!("\"{uf}\"")).uf, uf);
        }

        let rules = |field: &str, raw: &str| match with("rules", field, raw) {
            Ok(ControlRecord {
                change: Change::Rules(r),
                ..
            }) => r,
            other => panic!("{field}={raw}: {other:?}"),
        };
        assert_eq!(rules("risk_threshold", "0").risk_threshold, 0.0);
        assert_eq!(rules("risk_threshold", "1e300").risk_threshold, 1e300);
        assert_eq!(rules("max_delay_ms", "0").max_delay_ms, 0);
        assert_eq!(rules("max_delay_ms", "-0").max_delay_ms, 0);
        assert_eq!(
            rules("dedup_window_ms", "18446744073709551615").dedup_window_ms,
            u64::MAX
        );
        assert_eq!(rules("version", r#""default""#).version, "default");
    }

    #[test]
    fn every_field_rule_violated() {
        #[rustfmt::skip]
        let cases: &[(&str, &str, &str, &str)] = &[
            // (type, field, raw value, what the reason says)
            ("user", "id", r#""""#, "must not be empty"),
            ("user", "id", "5", "expected a string, found a number"),
            ("user", "id", "null", "expected a string, found null"),
            ("user", "name", "5", "expected a string"),
            ("user", "name", r#"["Ana"]"#, "expected a string, found an array"),
            ("user", "region_id", r#""""#, "must not be empty"),
            ("user", "region_id", "{}", "expected a string, found an object"),
            ("user", "balance_cents", "-1", "must be >= 0, found -1"),
            ("user", "balance_cents", "5.0", "expected an integer, found 5.0"),
            ("user", "balance_cents", "1e3", "expected an integer"),
            ("user", "balance_cents", r#""5""#, "expected an integer, found a string"),
            ("user", "balance_cents", "true", "expected an integer, found a boolean"),
            ("user", "balance_cents", "9223372036854775808", "out of range"),
            ("user", "credit_limit_cents", "-5", "must be >= 0"),
            ("user", "credit_limit_cents", "0.5", "expected an integer"),
            ("user", "credit_limit_cents", "-9223372036854775809", "out of range"),
            ("user_delete", "id", r#""""#, "must not be empty"),
            ("user_delete", "id", "1", "expected a string"),
            ("balance_adjustment", "user_id", r#""""#, "must not be empty"),
            ("balance_adjustment", "user_id", "false", "expected a string"),
            ("balance_adjustment", "amount_cents", "0", "must not be zero"),
            ("balance_adjustment", "amount_cents", "-0", "must not be zero"),
            ("balance_adjustment", "amount_cents", "5.0", "expected an integer"),
            ("balance_adjustment", "amount_cents", "-2.5", "expected an integer"),
            ("balance_adjustment", "amount_cents", r#""100""#, "expected an integer"),
            ("balance_adjustment", "amount_cents", "9223372036854775808", "out of range"),
            ("balance_adjustment", "amount_cents", "-9223372036854775809", "out of range"),
            ("region", "id", r#""""#, "must not be empty"),
            ("region", "uf", r#""sp""#, "unknown state code \"sp\""),
            ("region", "uf", r#""XX""#, "unknown state code"),
            ("region", "uf", r#"" SP""#, "unknown state code"),
            ("region", "uf", "35", "expected a string"),
            ("region", "name", "null", "expected a string"),
            ("region", "lat", "90.0001", "must be between -90 and 90, found 90.0001"),
            ("region", "lat", "-91", "must be between -90 and 90"),
            ("region", "lat", "1e400", "not a finite"),
            ("region", "lat", r#""-23.55""#, "expected a number, found a string"),
            ("region", "lon", "180.5", "must be between -180 and 180"),
            ("region", "lon", "-1e400", "not a finite"),
            ("region", "lon", "null", "expected a number"),
            ("region_delete", "id", r#""""#, "must not be empty"),
            ("rules", "version", r#""""#, "must not be empty"),
            ("rules", "version", "2", "expected a string"),
            ("rules", "risk_threshold", "-0.1", "must be >= 0, found -0.1"),
            ("rules", "risk_threshold", "1e999", "not a finite"),
            ("rules", "risk_threshold", r#""0.5""#, "expected a number"),
            ("rules", "max_delay_ms", "-1", "must be >= 0"),
            ("rules", "max_delay_ms", "1.5", "expected an integer"),
            ("rules", "max_delay_ms", "18446744073709551616", "out of range"),
            ("rules", "dedup_window_ms", "-60000", "must be >= 0"),
            ("rules", "dedup_window_ms", "6e4", "expected an integer"),
            ("rules", "dedup_window_ms", "[]", "expected an integer, found an array"),
        ];
        for &(ty, field, raw, why) in cases {
            assert_bad_field(with(ty, field, raw), field, why);
        }
        // Every field of every type is covered.
        for (ty, fields, _) in bases() {
            for (field, _) in fields {
                assert!(
                    cases.iter().any(|c| c.0 == ty && c.1 == field),
                    "{ty}.{field} untested"
                );
            }
        }
    }

    #[test]
    fn missing_fields() {
        for (ty, fields, _) in bases() {
            for (field, _) in fields {
                let r = parse(&typed_doc(ty, &[(field, None)], ""));
                assert_eq!(r, Err(ControlError::MissingField(field.into())), "{ty}");
                assert_eq!(r.unwrap_err().to_string(), format!("missing field {field}"));
            }
        }
    }

    #[test]
    fn unknown_and_missing_type() {
        let r = parse(&typed_doc("user", &[("type", None)], r#""type":"usr""#));
        assert_eq!(r, Err(ControlError::UnknownType("usr".into())));
        assert_eq!(
            r.unwrap_err().to_string(),
            "unknown control record type \"usr\" (expected user, user_delete, \
             balance_adjustment, region, region_delete or rules)"
        );
        // Exact, case-sensitive names.
        for ty in ["User", "USER", "user ", "", "balance-adjustment", "delete"] {
            let r = parse(&format!(r#"{{"type":"{ty}","id":"u1"}}"#));
            assert_eq!(r, Err(ControlError::UnknownType(ty.into())), "{ty:?}");
        }
        // A hostile type is quoted only in part.
        let long = "x".repeat(10_000);
        let e = parse(&format!(r#"{{"type":"{long}"}}"#)).unwrap_err();
        assert!(matches!(e, ControlError::UnknownType(_)));
        assert!(e.to_string().len() < 200, "{e}");
        // Not a string.
        assert_bad_field(
            parse(r#"{"type":1,"id":"u1"}"#),
            "type",
            "expected a string",
        );
        assert_bad_field(parse(r#"{"type":null}"#), "type", "expected a string");
        // No type and no Debezium event.
        let missing = Err(ControlError::MissingField("type".into()));
        assert_eq!(parse("{}"), missing);
        assert_eq!(parse(&object(&USER)), missing);
        assert_eq!(parse(r#"{"Type":"user","TYPE":"user"}"#), missing);
    }

    #[test]
    fn unknown_extra_fields_ignored() {
        let extra = r#""x":{"a":[1e400,true,null,{"b":"\u00e9"}]},"ID":5,"Type":"zzz","effective_fro":5,"y":-1e-99999,"x":"again","op":null"#;
        for (ty, _, change) in bases() {
            assert_eq!(
                parse(&typed_doc(ty, &[], extra)),
                Ok(record(change)),
                "{ty}"
            );
        }
        assert_eq!(
            parse(&typed_doc(
                "user",
                &[],
                &format!("\"n\":{}", "9".repeat(1000))
            )),
            Ok(record(Change::User(ana())))
        );
        // Fields of other types are unknown fields of this one.
        let r = typed_doc("user_delete", &[], r#""name":5,"amount_cents":0,"uf":"??""#);
        assert_eq!(
            parse(&r),
            Ok(record(Change::UserDelete { id: "u1".into() }))
        );
    }

    #[test]
    fn effective_from() {
        let eff = |raw: &str| {
            parse(&typed_doc(
                "user_delete",
                &[],
                &format!("\"effective_from\":{raw}"),
            ))
        };
        let at = |ms| {
            Ok(ControlRecord {
                change: Change::UserDelete { id: "u1".into() },
                effective_from: Some(ms),
            })
        };
        assert_eq!(eff(r#""2026-11-26T14:03:12.345-03:00""#), at(E0));
        assert_eq!(eff(r#""2026-11-26T17:03:12.345Z""#), at(E0));
        assert_eq!(eff(r#""2026-11-26 17:03:12.345678z""#), at(E0));
        // Without an offset: Brasília time.
        assert_eq!(eff(r#""2026-11-26T14:03:12.345""#), at(E0));
        assert_eq!(eff(r#""0001-01-01T00:00:00Z""#), at(MIN_EVENT_MS));
        // null is no effective time.
        assert_eq!(
            eff("null"),
            Ok(record(Change::UserDelete { id: "u1".into() }))
        );
        for bad in [
            r#""2026-13-01T00:00:00Z""#,
            r#""2026-02-29T00:00:00Z""#,
            r#""2026-11-26T24:00:00Z""#,
            r#""2026-11-26T17:03:12+0300""#,
            r#"" 2026-11-26T17:03:12Z""#,
            r#""""#,
        ] {
            assert_bad_field(eff(bad), "effective_from", "invalid event time");
        }
        assert_bad_field(eff("1795712592345"), "effective_from", "expected a string");
        // The reason names effective_from, never data_horario.
        let e = eff(r#""yesterday""#).unwrap_err().to_string();
        assert!(!e.contains("data_horario"), "{e}");
        // Every type takes one.
        for (ty, _, change) in bases() {
            let r = parse(&typed_doc(
                ty,
                &[],
                r#""effective_from":"2026-11-26T17:03:12.345Z""#,
            ));
            assert_eq!(
                r,
                Ok(ControlRecord {
                    change,
                    effective_from: Some(E0)
                })
            );
        }
    }

    // --- the Debezium form ------------------------------------------------------

    const USER_ROW: &str = r#"{"id":"u1","name":"Ana","region_id":"r017","balance_cents":1000,"credit_limit_cents":500}"#;
    const REGION_ROW: &str =
        r#"{"id":"r017","uf":"SP","name":"São Paulo","lat":-23.55,"lon":-46.63}"#;
    /// A delete's `before` under the default replica identity: the key, nulls.
    const USER_KEY: &str = r#"{"id":"u1","name":null,"region_id":null,"balance_cents":null,"credit_limit_cents":null}"#;
    const REGION_KEY: &str = r#"{"id":"r017","uf":null,"name":null,"lat":null,"lon":null}"#;

    /// A Debezium change event (no envelope) as the PostgreSQL connector writes it.
    fn event(op: &str, table: &str, before: &str, after: &str) -> String {
        format!(
            r#"{{"before":{before},"after":{after},"source":{{"version":"2.7.3.Final","connector":"postgresql","name":"vtpga","ts_ms":1732600000000,"snapshot":"false","db":"vtpga","sequence":"[null,\"23456\"]","schema":"public","table":"{table}","txId":771,"lsn":23456,"xmin":null}},"op":"{op}","ts_ms":1732600000123,"transaction":null}}"#
        )
    }

    /// The event inside the `schema`/`payload` envelope.
    fn envelope(event: &str) -> String {
        format!(
            r#"{{"schema":{{"type":"struct","fields":[{{"type":"struct","fields":[{{"type":"string","optional":false,"field":"id"}}],"optional":true,"field":"before"}}],"optional":false,"name":"vtpga.public.users.Envelope","version":2}},"payload":{event}}}"#
        )
    }

    /// The event of (op, table) with the usual rows.
    fn usual(op: &str, table: &str) -> String {
        let (row, key) = if table == "users" {
            (USER_ROW, USER_KEY)
        } else {
            (REGION_ROW, REGION_KEY)
        };
        match op {
            "c" | "r" => event(op, table, "null", row),
            "u" => event(op, table, key, row),
            _ => event(op, table, key, "null"),
        }
    }

    #[test]
    fn debezium_changes_with_and_without_envelope() {
        let cases = [
            ("c", "users", Change::User(ana())),
            ("u", "users", Change::User(ana())),
            ("r", "users", Change::User(ana())),
            ("d", "users", Change::UserDelete { id: "u1".into() }),
            ("c", "regions", Change::Region(sao_paulo())),
            ("u", "regions", Change::Region(sao_paulo())),
            ("r", "regions", Change::Region(sao_paulo())),
            ("d", "regions", Change::RegionDelete { id: "r017".into() }),
        ];
        for (op, table, change) in cases {
            let bare = usual(op, table);
            assert_eq!(parse(&bare), Ok(record(change.clone())), "{op} {table}");
            assert_eq!(
                parse(&envelope(&bare)),
                Ok(record(change)),
                "{op} {table} (envelope)"
            );
        }
        // An update reads only `after`; a delete only `before`'s id.
        let u = event("u", "users", r#"{"id":"old","name":5}"#, USER_ROW);
        assert_eq!(parse(&u), Ok(record(Change::User(ana()))));
        let d = event("d", "users", r#"{"id":"u1"}"#, r#"{"junk":[1]}"#);
        assert_eq!(
            parse(&d),
            Ok(record(Change::UserDelete { id: "u1".into() }))
        );
        // Extra columns and members are ignored.
        let wide = event(
            "c",
            "users",
            "null",
            r#"{"created_at":1,"id":"u1","name":"Ana","region_id":"r017","balance_cents":1000,"credit_limit_cents":500,"x":1e400}"#,
        );
        assert_eq!(parse(&wide), Ok(record(Change::User(ana()))));
        // An envelope with a null schema (schemas.enable with no schema) is fine too.
        assert_eq!(
            parse(&format!(
                r#"{{"schema":null,"payload":{}}}"#,
                usual("c", "users")
            )),
            Ok(record(Change::User(ana())))
        );
    }

    #[test]
    fn debezium_bad_events() {
        for env in [false, true] {
            let wrap = |e: String| if env { envelope(&e) } else { e };
            let p = if env { "payload." } else { "" };
            for op in ["t", "m", "x", "C", ""] {
                assert_eq!(
                    parse(&wrap(event(op, "users", "null", USER_ROW))),
                    Err(ControlError::UnknownOp(op.into())),
                    "{op:?}"
                );
            }
            for table in ["accounts", "Users", "public.users", "transactions"] {
                let e = parse(&wrap(usual("c", table))).unwrap_err();
                assert_eq!(e, ControlError::UnknownTable(table.into()), "{table}");
                assert!(e.to_string().starts_with("unknown debezium table"));
            }
            let op_field = format!("{p}op");
            assert_bad_field(
                parse(&wrap(
                    usual("c", "users").replace(r#""op":"c""#, r#""op":1"#),
                )),
                &op_field,
                "expected a string",
            );
            // A row that is missing or null.
            assert_bad_field(
                parse(&wrap(event("c", "users", "null", "null"))),
                &format!("{p}after"),
                "expected an object, found null",
            );
            assert_bad_field(
                parse(&wrap(event("d", "regions", "null", "null"))),
                &format!("{p}before"),
                "expected an object, found null",
            );
            assert_eq!(
                parse(&wrap(r#"{"op":"c","source":{"table":"users"}}"#.to_owned())),
                Err(ControlError::MissingField(format!("{p}after")))
            );
            // The source.
            assert_eq!(
                parse(&wrap(format!(r#"{{"op":"c","after":{USER_ROW}}}"#))),
                Err(ControlError::MissingField(format!("{p}source")))
            );
            assert_eq!(
                parse(&wrap(format!(
                    r#"{{"op":"c","after":{USER_ROW},"source":{{"schema":"public"}}}}"#
                ))),
                Err(ControlError::MissingField(format!("{p}source.table")))
            );
            assert_bad_field(
                parse(&wrap(format!(
                    r#"{{"op":"c","after":{USER_ROW},"source":"users"}}"#
                ))),
                &format!("{p}source"),
                "expected an object, found a string",
            );
            // Row fields follow the field rules, named by their path; an update's
            // balance_cents is checked although it is then ignored.
            let cases = [
                ("users", "balance_cents", "-1", "must be >= 0"),
                ("users", "balance_cents", "10.5", "expected an integer"),
                ("users", "credit_limit_cents", "null", "expected an integer"),
                ("users", "id", r#""""#, "must not be empty"),
                ("users", "name", "null", "expected a string"),
                ("users", "region_id", "7", "expected a string"),
                ("regions", "uf", r#""ZZ""#, "unknown state code"),
                ("regions", "lat", "-90.5", "between -90 and 90"),
                ("regions", "lon", "200", "between -180 and 180"),
                ("regions", "name", "1", "expected a string"),
            ];
            for (table, field, raw, why) in cases {
                let row = if table == "users" {
                    USER_ROW
                } else {
                    REGION_ROW
                };
                let row: serde_json::Value = serde_json::from_str(row).unwrap();
                let mut row = row.as_object().unwrap().clone();
                row.insert(field.into(), serde_json::from_str(raw).unwrap());
                let row = serde_json::Value::Object(row).to_string();
                for op in ["c", "u", "r"] {
                    assert_bad_field(
                        parse(&wrap(event(op, table, "null", &row))),
                        &format!("{p}after.{field}"),
                        why,
                    );
                }
            }
            for table in ["users", "regions"] {
                assert_bad_field(
                    parse(&wrap(event("d", table, r#"{"id":""}"#, "null"))),
                    &format!("{p}before.id"),
                    "must not be empty",
                );
                assert_eq!(
                    parse(&wrap(event("d", table, r#"{"name":"x"}"#, "null"))),
                    Err(ControlError::MissingField(format!("{p}before.id")))
                );
            }
        }
        // An envelope whose payload is no event.
        assert_bad_field(
            parse(r#"{"schema":null,"payload":null}"#),
            "payload",
            "expected an object, found null",
        );
        assert_eq!(
            parse(r#"{"schema":null,"payload":{"after":{}}}"#),
            Err(ControlError::MissingField("payload.op".into()))
        );
    }

    #[test]
    fn debezium_effective_from() {
        let eff = r#""effective_from":"2026-11-26T17:03:12.345Z""#;
        let at_e0 = Ok(ControlRecord {
            change: Change::User(ana()),
            effective_from: Some(E0),
        });
        let bare = usual("c", "users");
        let add = |obj: &str| format!("{},{eff}}}", &obj[..obj.len() - 1]);
        assert_eq!(parse(&bare), Ok(record(Change::User(ana()))));
        assert_eq!(parse(&add(&bare)), at_e0);
        // In the envelope: outside or inside payload, not both.
        assert_eq!(parse(&add(&envelope(&bare))), at_e0);
        assert_eq!(parse(&envelope(&add(&bare))), at_e0);
        assert_bad_field(
            parse(&add(&envelope(&add(&bare)))),
            "effective_from",
            "both outside and inside payload",
        );
        assert_bad_field(
            parse(&add(&bare).replace("2026-11-26T17", "2026-11-26X17")),
            "effective_from",
            "invalid event time",
        );
        assert_bad_field(
            parse(&envelope(
                &add(&bare).replace("2026-11-26T17", "2026-11-26X17"),
            )),
            "payload.effective_from",
            "invalid event time",
        );
    }

    #[test]
    fn typed_form_wins_over_debezium_members() {
        // `type` decides the form; `op`, `after`, `payload` are then unknown fields.
        let doc = typed_doc(
            "user_delete",
            &[],
            &format!(r#""op":"c","after":{REGION_ROW},"payload":5"#),
        );
        assert_eq!(
            parse(&doc),
            Ok(record(Change::UserDelete { id: "u1".into() }))
        );
    }

    // --- the SPEC §3 limits -----------------------------------------------------

    #[test]
    fn size_limit() {
        let base = typed_doc("user", &[], r#""pad":"""#);
        let padded =
            |n: usize| base.replace(r#""pad":"""#, &format!("\"pad\":\"{}\"", "a".repeat(n)));
        let fits = padded(65_536 - base.len());
        assert_eq!(fits.len(), 65_536);
        assert_eq!(parse(&fits), Ok(record(Change::User(ana()))));
        let over = padded(65_537 - base.len());
        let e = parse(&over).unwrap_err();
        assert_eq!(e, ControlError::Payload(ParseError::TooLarge(65_537)));
        assert_eq!(
            e.to_string(),
            "payload too large: 65537 bytes (at most 65536 allowed)"
        );
        assert_eq!(
            parse_rule_set(padded(100_000).as_bytes()),
            Err(ControlError::Payload(ParseError::TooLarge(
                base.len() + 100_000
            )))
        );
    }

    #[test]
    fn encoding_limits() {
        let doc = typed_doc("user", &[], "");
        let mut bom = b"\xEF\xBB\xBF".to_vec();
        bom.extend_from_slice(doc.as_bytes());
        assert_eq!(
            parse_control(&bom),
            Err(ControlError::Payload(ParseError::ByteOrderMark))
        );
        let mut bad = doc.clone().into_bytes();
        let at = doc.find("Ana").unwrap();
        bad[at] = 0xFF;
        assert_eq!(
            parse_control(&bad),
            Err(ControlError::Payload(ParseError::NotUtf8 {
                valid_up_to: at
            }))
        );
        // Overlong encoding and a raw surrogate in UTF-8 are not UTF-8 either.
        for junk in [&b"\xC0\xAF"[..], b"\xED\xA0\x80"] {
            let mut b = doc.clone().into_bytes();
            b.splice(at..at + 1, junk.iter().copied());
            assert!(matches!(
                parse_control(&b),
                Err(ControlError::Payload(ParseError::NotUtf8 { .. }))
            ));
        }
    }

    #[test]
    fn json_and_object_limits() {
        for (text, kind) in [
            ("[]", "an array"),
            (r#""user""#, "a string"),
            ("5", "a number"),
            ("null", "null"),
        ] {
            assert_eq!(
                parse(text),
                Err(ControlError::Payload(ParseError::NotObject(kind))),
                "{text}"
            );
        }
        for text in [
            "",
            " ",
            "{",
            r#"{"type":"user""#,
            "{} {}",
            "{}x",
            r#"{"type":'user'}"#,
            r#"{"a":01}"#,
        ] {
            assert!(
                matches!(parse(text), Err(ControlError::Payload(ParseError::Json(_)))),
                "{text:?}: {:?}",
                parse(text)
            );
        }
    }

    #[test]
    fn depth_limit() {
        // The top-level object is depth 1: 31 nested arrays in a member reach 32.
        let nest = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let user = |extra: &str| parse(&typed_doc("user", &[], extra));
        assert_eq!(
            user(&format!("\"x\":{}", nest(31))),
            Ok(record(Change::User(ana())))
        );
        let too_deep = Err(ControlError::Payload(ParseError::TooDeep));
        assert_eq!(user(&format!("\"x\":{}", nest(32))), too_deep);
        assert_eq!(user(&format!("\"x\":{}", nest(500))), too_deep);
        assert_eq!(with("user", "name", &nest(32)), too_deep);
        // Inside a Debezium row: `after` is depth 2, or 3 in the envelope.
        let row = |n: usize| USER_ROW.replacen('{', &format!("{{\"deep\":{},", nest(n)), 1);
        assert_eq!(
            parse(&event("c", "users", "null", &row(30))),
            Ok(record(Change::User(ana())))
        );
        assert_eq!(parse(&event("c", "users", "null", &row(31))), too_deep);
        assert_eq!(
            parse(&envelope(&event("c", "users", "null", &row(29)))),
            Ok(record(Change::User(ana())))
        );
        assert_eq!(
            parse(&envelope(&event("c", "users", "null", &row(30)))),
            too_deep
        );
        assert_eq!(
            parse_rule_set(format!(r#"{{"x":{},{}"#, nest(40), &object(&RULES)[1..]).as_bytes()),
            Err(ControlError::Payload(ParseError::TooDeep))
        );
    }

    #[test]
    fn lone_surrogates_rejected_anywhere() {
        let lone = Err(ControlError::Payload(ParseError::LoneSurrogate));
        assert_eq!(with("user", "id", r#""\ud800""#), lone);
        assert_eq!(with("user", "name", r#""Ana\udc00""#), lone);
        assert_eq!(
            parse(&typed_doc("user", &[], r#""x":{"a":["\uDBFF"]}"#)),
            lone
        );
        assert_eq!(parse(&typed_doc("user", &[], r#""\ud800":1"#)), lone);
        assert_eq!(parse(r#"{"type":"\ud800"}"#), lone);
        let row = USER_ROW.replace("Ana", r"Ana\ud800");
        assert_eq!(parse(&event("c", "users", "null", &row)), lone);
        assert_eq!(parse(&envelope(&event("c", "users", "null", &row))), lone);
        // Even in a part no rule reads: `before` of a create, the schema.
        assert_eq!(
            parse(&event("c", "users", r#"{"x":"\udfff"}"#, USER_ROW)),
            lone
        );
        assert_eq!(
            parse(&format!(
                r#"{{"schema":"\ud800","payload":{}}}"#,
                usual("c", "users")
            )),
            lone
        );
        // Pairs are fine.
        assert_eq!(
            with("user", "name", r#""\ud83d\ude00""#).map(|r| r.change),
            Ok(Change::User(User {
                name: "😀".into(),
                ..ana()
            }))
        );
    }

    #[test]
    fn repeated_fields_rejected() {
        let repeated = |f: &str| Err(ControlError::RepeatedField(f.into()));
        // Top level, typed.
        for (ty, fields, _) in bases() {
            for (field, raw) in fields {
                let doc = typed_doc(ty, &[], &format!("\"{field}\":{raw}"));
                let r = parse(&doc);
                assert_eq!(r, repeated(field), "{ty}");
                assert_eq!(
                    r.unwrap_err().to_string(),
                    format!("field {field} given more than once")
                );
            }
        }
        assert_eq!(
            parse(&typed_doc("user", &[], r#""type":"user""#)),
            repeated("type")
        );
        assert_eq!(
            parse(&typed_doc("user", &[], r#""type":"rules""#)),
            repeated("type")
        );
        // Spelled with an escape, it is still the same key.
        assert_eq!(
            parse(&typed_doc("user", &[], r#""\u0069d":"u1""#)),
            repeated("id")
        );
        let eff = r#""effective_from":null,"effective_from":"2026-11-26T17:03:12Z""#;
        assert_eq!(
            parse(&typed_doc("user", &[], eff)),
            repeated("effective_from")
        );
        // In a Debezium event, its envelope and its row.
        let bare = usual("c", "users");
        let twice = bare.replace(r#""op":"c""#, r#""op":"c","op":"c""#);
        assert_eq!(parse(&twice), repeated("op"));
        assert_eq!(parse(&envelope(&twice)), repeated("payload.op"));
        let twice = bare.replace(r#""table":"users""#, r#""table":"users","table":"users""#);
        assert_eq!(parse(&twice), repeated("source.table"));
        let row = USER_ROW.replace(r#""id":"u1""#, r#""id":"u1","id":"u2""#);
        assert_eq!(
            parse(&event("c", "users", "null", &row)),
            repeated("after.id")
        );
        assert_eq!(
            parse(&envelope(&event("u", "users", "null", &row))),
            repeated("payload.after.id")
        );
        let row = REGION_KEY.replace(r#""id":"r017""#, r#""id":"r017","id":"r017""#);
        assert_eq!(
            parse(&event("d", "regions", &row, "null")),
            repeated("before.id")
        );
        let twice = format!(r#"{{"schema":null,"payload":{bare},"payload":{bare}}}"#);
        assert_eq!(parse(&twice), repeated("payload"));
        // Fields no rule reads may repeat, as unknown fields do.
        let ok = bare.replace(r#""ts_ms":1732600000123"#, r#""ts_ms":1,"ts_ms":2"#);
        assert_eq!(parse(&ok), Ok(record(Change::User(ana()))));
        let ok = typed_doc("user_delete", &[], r#""name":"a","name":"b""#);
        assert_eq!(
            parse(&ok),
            Ok(record(Change::UserDelete { id: "u1".into() }))
        );
    }

    // --- rule set files ---------------------------------------------------------

    #[test]
    fn rule_set_files() {
        let rules = |s: &str| parse_rule_set(s.as_bytes());
        let file = format!("{}\n", object(&RULES));
        assert_eq!(rules(&file), Ok(rules_v2()));
        let pretty = "{\n  \"version\": \"v2\",\n  \"risk_threshold\": 0.7,\n  \"max_delay_ms\": 2000,\n  \"dedup_window_ms\": 60000\n}\n";
        assert_eq!(rules(pretty), Ok(rules_v2()));
        // `"type": "rules"` (a control record's own text) is accepted.
        assert_eq!(rules(&typed_doc("rules", &[], "")), Ok(rules_v2()));
        assert_eq!(
            rules(&typed_doc(
                "rules",
                &[],
                r#""effective_from":"2026-11-26T17:03:12Z","x":[1]"#
            )),
            Ok(rules_v2())
        );
        // Any other type is refused.
        let e = rules(&typed_doc("user", &[], "")).unwrap_err();
        assert_eq!(e, ControlError::NotARuleSet("user".into()));
        assert_eq!(
            e.to_string(),
            "a rule set must be a rules object, found type \"user\""
        );
        assert_eq!(
            rules(&typed_doc("rules", &[("type", Some(r#""Rules""#))], "")),
            Err(ControlError::NotARuleSet("Rules".into()))
        );
        match rules(r#"{"type":null,"version":"v2"}"#) {
            Err(ControlError::BadField { field, .. }) => assert_eq!(field, "type"),
            other => panic!("{other:?}"),
        }
        // The field rules of a rules record.
        for (field, _) in RULES {
            let missing: Vec<_> = RULES.iter().copied().filter(|(f, _)| *f != field).collect();
            assert_eq!(
                rules(&object(&missing)),
                Err(ControlError::MissingField(field.into()))
            );
        }
        for (field, raw, why) in [
            ("version", r#""""#, "must not be empty"),
            ("risk_threshold", "-1", "must be >= 0"),
            ("risk_threshold", "1e400", "not a finite"),
            ("max_delay_ms", "1000.0", "expected an integer"),
            ("dedup_window_ms", "-1", "must be >= 0"),
        ] {
            let bad: Vec<_> = RULES
                .iter()
                .map(|&(f, v)| (f, if f == field { raw } else { v }))
                .collect();
            match rules(&object(&bad)) {
                Err(ControlError::BadField { field: f, reason }) => {
                    assert_eq!(f, field);
                    assert!(reason.contains(why), "{reason}");
                }
                other => panic!("{field}={raw}: {other:?}"),
            }
        }
        // And the SPEC §3 limits.
        let mut bom = b"\xEF\xBB\xBF".to_vec();
        bom.extend_from_slice(file.as_bytes());
        assert_eq!(
            parse_rule_set(&bom),
            Err(ControlError::Payload(ParseError::ByteOrderMark))
        );
        assert_eq!(
            rules(&format!(
                "{},\"version\":\"v3\"}}",
                &object(&RULES)[..object(&RULES).len() - 1]
            )),
            Err(ControlError::RepeatedField("version".into()))
        );
        assert_eq!(
            rules("[]"),
            Err(ControlError::Payload(ParseError::NotObject("an array")))
        );
    }

    // --- the canonical form ---------------------------------------------------------

    #[test]
    fn control_json_texts() {
        let at = |change| ControlRecord {
            change,
            effective_from: Some(E0),
        };
        let cases = [
            (
                at(Change::User(ana())),
                r#"{"type":"user","id":"u1","name":"Ana","region_id":"r017","balance_cents":1000,"credit_limit_cents":500,"effective_from":"2026-11-26T17:03:12.345Z"}"#,
            ),
            (
                record(Change::UserDelete {
                    id: "u\"1\\".into(),
                }),
                r#"{"type":"user_delete","id":"u\"1\\"}"#,
            ),
            (
                record(Change::Adjust {
                    user_id: "u1".into(),
                    amount_cents: -250,
                }),
                r#"{"type":"balance_adjustment","user_id":"u1","amount_cents":-250}"#,
            ),
            (
                record(Change::Region(sao_paulo())),
                r#"{"type":"region","id":"r017","uf":"SP","name":"São Paulo","lat":-23.55,"lon":-46.63}"#,
            ),
            (
                record(Change::RegionDelete { id: "r017".into() }),
                r#"{"type":"region_delete","id":"r017"}"#,
            ),
            (
                record(Change::Rules(RuleSet {
                    risk_threshold: 1.0,
                    ..rules_v2()
                })),
                r#"{"type":"rules","version":"v2","risk_threshold":1.0,"max_delay_ms":2000,"dedup_window_ms":60000}"#,
            ),
        ];
        for (r, text) in cases {
            assert_eq!(control_json(&r), text);
            assert_eq!(parse(text), Ok(r));
        }
    }

    #[test]
    fn control_json_effective_from_at_the_ends() {
        let last = parse_event_time("9999-12-31T23:59:59.999-23:59").unwrap();
        for ms in [MIN_EVENT_MS, -1, 0, E0, MAX_UTC_MS, MAX_UTC_MS + 1, last] {
            let r = ControlRecord {
                change: Change::RegionDelete { id: "r".into() },
                effective_from: Some(ms),
            };
            let text = control_json(&r);
            assert_eq!(parse(&text), Ok(r), "{text}");
        }
        assert_eq!(
            format_effective_from(MAX_UTC_MS),
            "9999-12-31T23:59:59.999Z"
        );
        assert_eq!(format_effective_from(last), "9999-12-31T23:59:59.999-23:59");
    }

    #[test]
    fn error_texts_are_clear_and_short() {
        let hostile = format!("\"{}\"", "é".repeat(20_000));
        for doc in [
            typed_doc("region", &[("uf", Some(&hostile))], ""),
            typed_doc("user", &[("balance_cents", Some(&"9".repeat(20_000)))], ""),
            typed_doc(
                "rules",
                &[("risk_threshold", Some(&format!("1e{}", "9".repeat(20_000))))],
                "",
            ),
            typed_doc("user", &[("type", Some(&hostile))], ""),
            event(&"t".repeat(20_000), "users", "null", "null"),
            usual("c", &"x".repeat(20_000)),
            typed_doc("user", &[], &format!("\"effective_from\":{hostile}")),
        ] {
            let e = parse(&doc).unwrap_err().to_string();
            assert!(e.len() < 300, "{} bytes: {e}", e.len());
            assert!(!e.contains('\n'), "{e}");
            assert!(e.starts_with(|c: char| c.is_ascii_lowercase()), "{e}");
        }
    }

    // --- properties -----------------------------------------------------------------

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// Any string, escapes and control characters included; never empty.
        fn id() -> impl Strategy<Value = String> {
            any::<String>().prop_map(|s| if s.is_empty() { "x".to_owned() } else { s })
        }

        fn coordinate(limit: f64) -> impl Strategy<Value = f64> {
            prop_oneof![
                -limit..=limit,
                Just(limit),
                Just(-limit),
                Just(0.0),
                Just(-0.0),
                any::<f64>().prop_map(move |v| if v.is_finite() { v % limit } else { 1.5 }),
            ]
        }

        fn change() -> impl Strategy<Value = Change> {
            prop_oneof![
                (id(), any::<String>(), id(), 0..=i64::MAX, 0..=i64::MAX).prop_map(
                    |(id, name, region_id, balance_cents, credit_limit_cents)| {
                        Change::User(User {
                            id,
                            name,
                            region_id,
                            balance_cents,
                            credit_limit_cents,
                        })
                    }
                ),
                id().prop_map(|id| Change::UserDelete { id }),
                (id(), any::<i64>().prop_filter("non-zero", |a| *a != 0)).prop_map(
                    |(user_id, amount_cents)| Change::Adjust {
                        user_id,
                        amount_cents
                    }
                ),
                (
                    id(),
                    proptest::sample::select(&UFS[..]),
                    any::<String>(),
                    coordinate(90.0),
                    coordinate(180.0)
                )
                    .prop_map(|(id, uf, name, lat, lon)| Change::Region(Region {
                        id,
                        uf: uf.to_owned(),
                        name,
                        lat,
                        lon
                    })),
                id().prop_map(|id| Change::RegionDelete { id }),
                (
                    id(),
                    prop_oneof![
                        0.0..=1.0f64,
                        any::<f64>().prop_map(|v| if v.is_finite() { v.abs() } else { 0.25 })
                    ],
                    any::<u64>(),
                    any::<u64>()
                )
                    .prop_map(
                        |(version, risk_threshold, max_delay_ms, dedup_window_ms)| {
                            Change::Rules(RuleSet {
                                version,
                                risk_threshold,
                                max_delay_ms,
                                dedup_window_ms,
                            })
                        }
                    ),
            ]
        }

        proptest! {
            #[test]
            fn control_json_round_trips(
                change in change(),
                effective_from in proptest::option::of(
                    MIN_EVENT_MS..=MAX_UTC_MS - LATE_OFFSET_MIN * 60_000
                ),
            ) {
                let r = ControlRecord { change, effective_from };
                let text = control_json(&r);
                prop_assert_eq!(parse_control(text.as_bytes()), Ok(r.clone()), "{}", text);
                if let Change::Rules(rules) = &r.change {
                    prop_assert_eq!(parse_rule_set(text.as_bytes()), Ok(rules.clone()));
                }
            }

            #[test]
            fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..300)) {
                let _ = parse_control(&b);
                let _ = parse_rule_set(&b);
            }

            #[test]
            fn json_ish_never_panics(s in "[{}\\[\\]\"\\\\u0-9a-fA-F:,.eE+ -]{0,120}") {
                let _ = parse_control(s.as_bytes());
                let _ = parse_rule_set(s.as_bytes());
            }
        }
    }
}

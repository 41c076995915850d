//! SPEC §3: parsing and validating one raw transaction message.
//!
//! The document is walked once by serde_json (grammar, no trailing garbage) with a
//! custom top-level map visitor. Every top-level key and value is captured as a
//! borrowed [`RawValue`] (its exact text), so nothing depends on serde_json's
//! conversions: numbers keep their literal text (exact money), numbers too large
//! for an `f64` in unknown fields stay valid JSON, and the depth and lone-surrogate
//! rules are checked by one small byte scanner (`check_raw`) over each value
//! that can contain them. Known fields are then validated in a fixed order.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::Deserializer as _;
use serde_json::value::RawValue;
use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

use crate::calendar::days_from_civil;
use crate::model::{Cents, Id, Mode, Tx};

/// Largest accepted payload, in bytes (SPEC §3).
pub const MAX_PAYLOAD_BYTES: usize = 65_536;
/// Deepest accepted nesting: the top-level object is depth 1, each nested object or
/// array adds 1 (SPEC §3).
pub const MAX_DEPTH: usize = 32;

/// Smallest and largest accepted amounts, in cents (SPEC §3).
const MIN_CENTS: Cents = 1;
const MAX_CENTS: Cents = 100_000_000_000;

/// 0001-01-01T00:00:00Z in ms since the Unix epoch.
pub(crate) const MIN_EVENT_MS: i64 = -62_135_596_800_000;
/// Offset assumed when `data_horario` has none: Brasília, UTC−03:00 (minutes).
const DEFAULT_OFFSET_MIN: i64 = -180;

const F_ID: usize = 0;
const F_PAYER: usize = 1;
const F_PAYEE: usize = 2;
const F_REGION: usize = 3;
const F_MODE: usize = 4;
const F_TIME: usize = 5;
const F_AMOUNT: usize = 6;
/// The seven known top-level fields, indexed by the `F_*` constants.
pub const FIELDS: [&str; 7] = [
    "id_transacao",
    "id_usuario_pagador",
    "id_usuario_recebedor",
    "id_regiao",
    "modalidade_pagamento",
    "data_horario",
    "valor_transacao",
];

/// Why a payload is `invalid`. Display gives a clear one-line reason (it is stored as
/// the `error` text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// More than [`MAX_PAYLOAD_BYTES`] bytes; holds the size.
    #[error("payload too large: {0} bytes (at most 65536 allowed)")]
    TooLarge(usize),
    /// Not UTF-8.
    #[error("payload is not valid UTF-8 (bad byte at offset {valid_up_to})")]
    NotUtf8 {
        /// Offset of the first bad byte.
        valid_up_to: usize,
    },
    /// Starts with a byte order mark.
    #[error("payload starts with a byte order mark")]
    ByteOrderMark,
    /// Not JSON text, or trailing garbage; holds the JSON error.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// The top-level value is not an object; holds its kind.
    #[error("top-level JSON value is {0}, expected an object")]
    NotObject(&'static str),
    /// Nested more than [`MAX_DEPTH`] levels.
    #[error("JSON nested more than 32 levels deep")]
    TooDeep,
    /// A string holds an unpaired surrogate escape.
    #[error("JSON string contains a lone surrogate escape (unpaired \\uD800-\\uDFFF)")]
    LoneSurrogate,
    /// One of the seven [`FIELDS`] given more than once.
    #[error("field {0} given more than once")]
    DuplicateField(&'static str),
    /// One of the seven [`FIELDS`] is missing.
    #[error("missing field {0}")]
    MissingField(&'static str),
    /// A known field of the wrong JSON type.
    #[error("field {field}: expected {expected}, found {found}")]
    WrongType {
        /// The field's name.
        field: &'static str,
        /// The JSON type it must have.
        expected: &'static str,
        /// The JSON type it has.
        found: &'static str,
    },
    /// An id field holds the empty string.
    #[error("field {0}: id must not be empty")]
    EmptyId(&'static str),
    /// `modalidade_pagamento` is none of the four modes after normalisation; holds an excerpt.
    #[error("field modalidade_pagamento: unknown payment mode {0:?} (expected pix, debito, credito or boleto)")]
    UnknownMode(String),
    /// `data_horario` breaks the SPEC §3 form or range.
    #[error("field data_horario: invalid event time {value:?}: {reason}")]
    BadTime {
        /// The offending text, shortened.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `valor_transacao` is neither a JSON number nor a decimal string of the SPEC §3 form.
    #[error("field valor_transacao: invalid amount {value:?}: {reason}")]
    BadAmount {
        /// The offending text, shortened.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The rounded amount is outside 1 to 100,000,000,000 cents; holds an excerpt of it as given.
    #[error("field valor_transacao: amount {0} is not between 0.01 and 1000000000.00 BRL after rounding to the cent")]
    AmountOutOfRange(String),
}

/// At most this many chars of an offending value are quoted in an error.
const EXCERPT_CHARS: usize = 48;

/// The offending value, shortened for an error message.
pub(crate) fn excerpt(s: &str) -> String {
    match s.char_indices().nth(EXCERPT_CHARS) {
        None => s.to_owned(),
        Some((i, _)) => format!("{}…", &s[..i]),
    }
}

fn bad_time(value: &str, reason: &'static str) -> ParseError {
    ParseError::BadTime {
        value: excerpt(value),
        reason,
    }
}

fn bad_amount(value: &str, reason: &'static str) -> ParseError {
    ParseError::BadAmount {
        value: excerpt(value),
        reason,
    }
}

// ---------------------------------------------------------------------------
// The document
// ---------------------------------------------------------------------------

/// Parse and validate one raw message value (SPEC §3). Never panics on any input.
pub fn parse_transaction(payload: &[u8]) -> Result<Tx, ParseError> {
    let text = object_text(payload)?;

    let mut failure = None;
    let mut de = serde_json::Deserializer::from_str(text);
    let raw = de.deserialize_map(TopVisitor {
        failure: &mut failure,
    });
    let raw = match raw {
        Ok(raw) => raw,
        Err(e) => return Err(failure.unwrap_or_else(|| ParseError::Json(e.to_string()))),
    };
    de.end().map_err(|e| ParseError::Json(e.to_string()))?;

    let mut present = [""; 7];
    for (i, field) in raw.iter().enumerate() {
        match field {
            Some(v) => present[i] = v.get(),
            None => return Err(ParseError::MissingField(FIELDS[i])),
        }
    }

    let id = id_field(F_ID, present[F_ID])?;
    let payer = id_field(F_PAYER, present[F_PAYER])?;
    let payee = id_field(F_PAYEE, present[F_PAYEE])?;
    let region = id_field(F_REGION, present[F_REGION])?;

    let mode_text = string_field(F_MODE, present[F_MODE])?;
    let mode =
        normalize_mode(&mode_text).ok_or_else(|| ParseError::UnknownMode(excerpt(&mode_text)))?;

    let time_text = string_field(F_TIME, present[F_TIME])?;
    let event_ms = parse_event_time(&time_text)?;

    let amount_raw = present[F_AMOUNT];
    let amount_cents = match amount_raw.as_bytes().first() {
        Some(b'"') => parse_amount_cents(&decode_string(amount_raw)?, true)?,
        Some(b'-' | b'0'..=b'9') => parse_amount_cents(amount_raw, false)?,
        _ => {
            return Err(ParseError::WrongType {
                field: FIELDS[F_AMOUNT],
                expected: "a number or a numeric string",
                found: json_kind(amount_raw.as_bytes().first().copied()),
            })
        }
    };

    Ok(Tx {
        id: Id::from(id),
        payer: Id::from(payer),
        payee: Id::from(payee),
        region: Id::from(region),
        mode,
        amount_cents,
        event_ms,
    })
}

/// The checks of SPEC §3 that come before the JSON grammar, shared by every payload
/// read as a JSON object (transactions, control records): at most
/// [`MAX_PAYLOAD_BYTES`] bytes, no byte order mark, UTF-8, and a top level that starts
/// as an object. Yields the text.
#[inline]
pub(crate) fn object_text(payload: &[u8]) -> Result<&str, ParseError> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(ParseError::TooLarge(payload.len()));
    }
    if payload.starts_with(&[0xEF, 0xBB, 0xBF]) {
        return Err(ParseError::ByteOrderMark);
    }
    let text = std::str::from_utf8(payload).map_err(|e| ParseError::NotUtf8 {
        valid_up_to: e.valid_up_to(),
    })?;

    let first = text
        .bytes()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first != Some(b'{') {
        return Err(not_an_object(text, first));
    }
    Ok(text)
}

/// The reason for a payload whose first non-whitespace byte is not `{`.
#[cold]
fn not_an_object(text: &str, first: Option<u8>) -> ParseError {
    // Report bad JSON as such; only well-formed non-objects are `NotObject`.
    match serde_json::from_str::<IgnoredAny>(text) {
        Err(e) => ParseError::Json(e.to_string()),
        Ok(_) => ParseError::NotObject(json_kind(first)),
    }
}

/// The JSON type starting with this byte, for error messages.
pub(crate) fn json_kind(first: Option<u8>) -> &'static str {
    match first {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        Some(b'-' | b'0'..=b'9') => "a number",
        _ => "nothing",
    }
}

/// One of the four ids: a non-empty JSON string, kept exactly.
fn id_field(f: usize, raw: &str) -> Result<Cow<'_, str>, ParseError> {
    let s = string_field(f, raw)?;
    if s.is_empty() {
        return Err(ParseError::EmptyId(FIELDS[f]));
    }
    Ok(s)
}

/// A known field that must be a JSON string: its decoded content.
fn string_field(f: usize, raw: &str) -> Result<Cow<'_, str>, ParseError> {
    match raw.as_bytes().first() {
        Some(b'"') => decode_string(raw),
        other => Err(ParseError::WrongType {
            field: FIELDS[f],
            expected: "a string",
            found: json_kind(other.copied()),
        }),
    }
}

/// The content of a JSON string literal (with its quotes, already checked by
/// serde_json and by `check_raw`). Borrowed unless it has escapes.
pub(crate) fn decode_string(raw: &str) -> Result<Cow<'_, str>, ParseError> {
    let inner = raw
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .ok_or_else(|| ParseError::Json("malformed string".to_owned()))?;
    if !inner.as_bytes().contains(&b'\\') {
        // No escapes: the text between the quotes is the string (serde_json already
        // rejected raw control characters).
        return Ok(Cow::Borrowed(inner));
    }
    decode_escaped(raw).map(Cow::Owned)
}

#[cold]
fn decode_escaped(raw: &str) -> Result<String, ParseError> {
    serde_json::from_str::<String>(raw).map_err(|e| {
        // Lone surrogates are normally caught earlier by `check_raw`.
        let msg = e.to_string();
        if msg.contains("surrogate") || msg.contains("end of hex escape") {
            ParseError::LoneSurrogate
        } else {
            ParseError::Json(msg)
        }
    })
}

/// The top level: a map whose keys and values are captured as raw text.
struct TopVisitor<'a> {
    /// The precise reason when the visitor itself rejects the document.
    failure: &'a mut Option<ParseError>,
}

impl<'de> Visitor<'de> for TopVisitor<'_> {
    type Value = [Option<&'de RawValue>; 7];

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields: [Option<&'de RawValue>; 7] = [None; 7];
        let failure = self.failure;
        let mut fail = |e: ParseError| -> A::Error {
            let msg = e.to_string();
            *failure = Some(e);
            de::Error::custom(msg)
        };
        while let Some(key) = map.next_key::<&'de RawValue>()? {
            let key = key.get();
            if key.as_bytes().contains(&b'\\') {
                check_raw(key.as_bytes(), 1).map_err(&mut fail)?;
            }
            let name = decode_string(key).map_err(&mut fail)?;
            let value: &'de RawValue = map.next_value()?;
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
            if let Some(i) = field_index(&name) {
                if fields[i].is_some() {
                    return Err(fail(ParseError::DuplicateField(FIELDS[i])));
                }
                fields[i] = Some(value);
            }
        }
        Ok(fields)
    }
}

/// The index in [`FIELDS`] of a known top-level key.
fn field_index(name: &str) -> Option<usize> {
    Some(match name {
        "id_transacao" => F_ID,
        "id_usuario_pagador" => F_PAYER,
        "id_usuario_recebedor" => F_PAYEE,
        "id_regiao" => F_REGION,
        "modalidade_pagamento" => F_MODE,
        "data_horario" => F_TIME,
        "valor_transacao" => F_AMOUNT,
        _ => return None,
    })
}

/// Checks the text of one well-formed JSON value (as validated by serde_json) that
/// sits at nesting depth `depth` (its enclosing container's depth): no object or array
/// deeper than [`MAX_DEPTH`], no string with a lone surrogate escape (keys included).
pub(crate) fn check_raw(raw: &[u8], mut depth: usize) -> Result<(), ParseError> {
    let n = raw.len();
    let mut i = 0;
    while i < n {
        match raw[i] {
            b'"' => {
                i += 1;
                while i < n {
                    match raw[i] {
                        b'"' => break,
                        b'\\' => {
                            if raw.get(i + 1) != Some(&b'u') {
                                i += 2;
                                continue;
                            }
                            let unit = hex4(raw, i + 2)?;
                            i += 6;
                            if (0xDC00..=0xDFFF).contains(&unit) {
                                return Err(ParseError::LoneSurrogate);
                            }
                            if (0xD800..=0xDBFF).contains(&unit) {
                                let paired = raw.get(i) == Some(&b'\\')
                                    && raw.get(i + 1) == Some(&b'u')
                                    && matches!(hex4(raw, i + 2), Ok(0xDC00..=0xDFFF));
                                if !paired {
                                    return Err(ParseError::LoneSurrogate);
                                }
                                i += 6;
                            }
                        }
                        _ => i += 1,
                    }
                }
                i += 1;
            }
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(ParseError::TooDeep);
                }
                i += 1;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// The UTF-16 code unit of the four hex digits at `at`.
fn hex4(raw: &[u8], at: usize) -> Result<u32, ParseError> {
    let digits = raw
        .get(at..at + 4)
        .ok_or_else(|| ParseError::Json("truncated \\u escape".to_owned()))?;
    let mut v = 0u32;
    for &d in digits {
        let h = (d as char)
            .to_digit(16)
            .ok_or_else(|| ParseError::Json("invalid \\u escape".to_owned()))?;
        v = v * 16 + h;
    }
    Ok(v)
}

// ---------------------------------------------------------------------------
// modalidade_pagamento
// ---------------------------------------------------------------------------

/// Longest canonical mode name, in bytes (`credito`, `debito`…).
const MAX_MODE_LEN: usize = 7;

/// Mode normalisation: NFKD, drop every char of General Category M (Mn, Mc, Me),
/// lowercase (no trimming); then one of the four names.
pub fn normalize_mode(s: &str) -> Option<Mode> {
    let mut buf = [0u8; MAX_MODE_LEN];
    let len;
    if s.is_ascii() {
        // ASCII is its own NFKD and has no marks.
        if s.len() > MAX_MODE_LEN {
            return None;
        }
        for (d, b) in buf.iter_mut().zip(s.bytes()) {
            *d = b.to_ascii_lowercase();
        }
        len = s.len();
    } else {
        let mut n = 0;
        for c in s.nfkd().filter(|&c| !is_combining_mark(c)) {
            for l in c.to_lowercase() {
                // Output only grows, so anything longer than a name is no name; a
                // non-ASCII char is never part of one either.
                if !l.is_ascii() || n == MAX_MODE_LEN {
                    return None;
                }
                buf[n] = l as u8;
                n += 1;
            }
        }
        len = n;
    }
    match &buf[..len] {
        b"pix" => Some(Mode::Pix),
        b"debito" => Some(Mode::Debito),
        b"credito" => Some(Mode::Credito),
        b"boleto" => Some(Mode::Boleto),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// data_horario
// ---------------------------------------------------------------------------

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        2 => 28,
        _ => 0,
    }
}

/// The value of the ASCII digits `b[from..from + len]`, if they all are digits.
fn digits(b: &[u8], from: usize, len: usize) -> Option<i64> {
    let mut v = 0i64;
    for &d in b.get(from..from + len)? {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v * 10 + i64::from(d - b'0');
    }
    Some(v)
}

/// Event time (`data_horario`) to ms since the Unix epoch (UTC). Without an offset the
/// time is UTC-03:00.
pub fn parse_event_time(s: &str) -> Result<i64, ParseError> {
    const FORM: &str = "not in the form YYYY-MM-DDThh:mm:ss[.fff][Z|±hh:mm]";
    let b = s.as_bytes();
    let field = |from, len| digits(b, from, len).ok_or_else(|| bad_time(s, FORM));
    let sep = |at: usize, ok: &[u8]| match b.get(at) {
        Some(c) if ok.contains(c) => Ok(()),
        _ => Err(bad_time(s, FORM)),
    };
    let year = field(0, 4)?;
    sep(4, b"-")?;
    let month = field(5, 2)?;
    sep(7, b"-")?;
    let day = field(8, 2)?;
    sep(10, b"Tt ")?;
    let hour = field(11, 2)?;
    sep(13, b":")?;
    let minute = field(14, 2)?;
    sep(16, b":")?;
    let second = field(17, 2)?;
    let mut i = 19;

    let mut millis = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while let Some(d) = b.get(i).filter(|d| d.is_ascii_digit()) {
            if i - start < 3 {
                millis = millis * 10 + i64::from(d - b'0');
            }
            i += 1;
        }
        match i - start {
            0 => return Err(bad_time(s, "a fraction needs at least one digit")),
            1 => millis *= 100,
            2 => millis *= 10,
            _ => {} // truncated to ms
        }
    }

    let offset_min = match b.get(i) {
        None => DEFAULT_OFFSET_MIN,
        Some(b'Z' | b'z') => {
            i += 1;
            0
        }
        Some(&sign @ (b'+' | b'-')) => {
            let oh = field(i + 1, 2)?;
            sep(i + 3, b":")?;
            let om = field(i + 4, 2)?;
            i += 6;
            if oh > 23 || om > 59 {
                return Err(bad_time(s, "offset out of range (at most ±23:59)"));
            }
            let off = oh * 60 + om;
            if sign == b'-' {
                -off
            } else {
                off
            }
        }
        Some(_) => return Err(bad_time(s, FORM)),
    };
    if i != b.len() {
        return Err(bad_time(s, FORM));
    }

    if !(1..=9999).contains(&year) {
        return Err(bad_time(s, "year must be 0001-9999"));
    }
    if !(1..=12).contains(&month) {
        return Err(bad_time(s, "month must be 01-12"));
    }
    if day < 1 || day > days_in_month(year, month) {
        return Err(bad_time(s, "no such day in that month"));
    }
    if hour > 23 {
        return Err(bad_time(s, "hour must be 00-23"));
    }
    if minute > 59 {
        return Err(bad_time(s, "minute must be 00-59"));
    }
    if second > 59 {
        return Err(bad_time(s, "second must be 00-59"));
    }

    let days = days_from_civil(year, month, day);
    let local_s = ((days * 24 + hour) * 60 + minute) * 60 + second;
    let utc_ms = (local_s - offset_min * 60) * 1000 + millis;
    if utc_ms < MIN_EVENT_MS {
        return Err(bad_time(s, "before 0001-01-01T00:00:00Z"));
    }
    Ok(utc_ms)
}

// ---------------------------------------------------------------------------
// valor_transacao
// ---------------------------------------------------------------------------

/// Exponents are clamped to this magnitude: beyond it every amount is either zero or
/// far above the range, whatever the number of digits a text can hold.
const EXP_CLAMP: i128 = 1_000_000_000_000_000_000;

/// Amount text (the JSON number's literal text, or the string's content) to integer
/// cents, exactly, rounding half away from zero; checks the 1..=100_000_000_000 range.
///
/// `from_string` selects the grammar: a string must match
/// `-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?`; a number literal follows RFC 8259 (no
/// leading zeros).
pub fn parse_amount_cents(text: &str, from_string: bool) -> Result<Cents, ParseError> {
    let expected = if from_string {
        "expected a decimal number such as 152.37 or 1.5e2"
    } else {
        "not a JSON number"
    };
    let b = text.as_bytes();
    let mut i = 0;
    let negative = b.first() == Some(&b'-');
    if negative {
        i += 1;
    }
    let int_start = i;
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    let int_digits = &b[int_start..i];
    if int_digits.is_empty() {
        return Err(bad_amount(text, expected));
    }
    if !from_string && int_digits.len() > 1 && int_digits[0] == b'0' {
        return Err(bad_amount(text, expected));
    }
    let mut frac_digits: &[u8] = &[];
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        frac_digits = &b[start..i];
        if frac_digits.is_empty() {
            return Err(bad_amount(text, expected));
        }
    }
    let mut exp: i128 = 0;
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        let exp_negative = match b.get(i) {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        let start = i;
        while let Some(d) = b.get(i).filter(|d| d.is_ascii_digit()) {
            exp = (exp * 10 + i128::from(d - b'0')).min(EXP_CLAMP);
            i += 1;
        }
        if i == start {
            return Err(bad_amount(text, expected));
        }
        if exp_negative {
            exp = -exp;
        }
    }
    if i != b.len() {
        return Err(bad_amount(text, expected));
    }

    // The digits D = int ++ frac, leading zeros dropped, are a whole number of
    // 10^k cents with k = exp - |frac| + 2, so their first q = |D| + k digits are
    // whole cents and the next one decides the rounding.
    let digit_at = |p: usize| -> u8 {
        match int_digits.get(p) {
            Some(d) => *d,
            None => frac_digits
                .get(p - int_digits.len())
                .copied()
                .unwrap_or(b'0'),
        }
    };
    let total = int_digits.len() + frac_digits.len();
    let lead = (0..total).find(|&p| digit_at(p) != b'0').unwrap_or(total);
    let sig_len = (total - lead) as i128;
    let k = exp - frac_digits.len() as i128 + 2;
    let q = sig_len + k;
    let magnitude: i64 = if sig_len == 0 || q < 0 {
        0
    } else if q > 12 {
        // At least 10^12 cents: above the maximum whatever the sign.
        return Err(ParseError::AmountOutOfRange(excerpt(text)));
    } else {
        let q = q as usize; // 0..=12
        let sig = |p: usize| {
            if p < total - lead {
                digit_at(lead + p)
            } else {
                b'0'
            }
        };
        let mut whole = 0i64;
        for p in 0..q {
            whole = whole * 10 + i64::from(sig(p) - b'0');
        }
        // Half away from zero on the magnitude: the first dropped digit decides.
        whole + i64::from(sig(q) >= b'5')
    };
    let cents = if negative { -magnitude } else { magnitude };
    if !(MIN_CENTS..=MAX_CENTS).contains(&cents) {
        return Err(ParseError::AmountOutOfRange(excerpt(text)));
    }
    Ok(cents)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calendar::{civil_from_days, format_minute, format_utc_ms};

    /// 2026-11-26T17:03:12.345Z
    const E0: i64 = 1_795_712_592_345;

    const BASE: [(&str, &str); 7] = [
        ("id_transacao", r#""t1""#),
        ("id_usuario_pagador", r#""u000123""#),
        ("id_usuario_recebedor", r#""u004567""#),
        ("id_regiao", r#""r017""#),
        ("modalidade_pagamento", r#""pix""#),
        ("data_horario", r#""2026-11-26T14:03:12.345-03:00""#),
        ("valor_transacao", "152.37"),
    ];

    /// The base message with some field values (raw JSON) replaced, `None` removing
    /// the field, and `extra` members (raw JSON) appended.
    fn doc(overrides: &[(&str, Option<&str>)], extra: &str) -> String {
        let mut members = Vec::new();
        for (k, v) in BASE {
            let v = match overrides.iter().find(|(o, _)| *o == k) {
                Some((_, Some(nv))) => *nv,
                Some((_, None)) => continue,
                None => v,
            };
            members.push(format!("\"{k}\":{v}"));
        }
        if !extra.is_empty() {
            members.push(extra.to_owned());
        }
        format!("{{{}}}", members.join(","))
    }

    fn parse(s: &str) -> Result<Tx, ParseError> {
        parse_transaction(s.as_bytes())
    }

    fn with(field: &str, raw: &str) -> Result<Tx, ParseError> {
        parse(&doc(&[(field, Some(raw))], ""))
    }

    fn amount(raw: &str) -> Result<Cents, ParseError> {
        with("valor_transacao", raw).map(|t| t.amount_cents)
    }

    fn time(raw: &str) -> Result<i64, ParseError> {
        with("data_horario", &format!("\"{raw}\"")).map(|t| t.event_ms)
    }

    fn mode(raw: &str) -> Result<Mode, ParseError> {
        with("modalidade_pagamento", raw).map(|t| t.mode)
    }

    fn extra(extra: &str) -> Result<Tx, ParseError> {
        parse(&doc(&[], extra))
    }

    fn base_tx() -> Tx {
        Tx {
            id: "t1".into(),
            payer: "u000123".into(),
            payee: "u004567".into(),
            region: "r017".into(),
            mode: Mode::Pix,
            amount_cents: 15_237,
            event_ms: E0,
        }
    }

    fn is_bad_time(r: Result<i64, ParseError>) -> bool {
        matches!(r, Err(ParseError::BadTime { .. }))
    }

    /// Each of `texts` is refused as an event time.
    fn assert_bad_times(texts: &[&str]) {
        for s in texts {
            assert!(is_bad_time(parse_event_time(s)), "{s:?}");
        }
    }

    /// Each raw `valor_transacao` of `cases` reads as its cents.
    fn assert_amounts(cases: &[(&str, Cents)]) {
        for &(raw, cents) in cases {
            assert_eq!(amount(raw), Ok(cents), "{raw}");
        }
    }

    // --- the whole message -------------------------------------------------

    #[test]
    fn spec_example_parses() {
        assert_eq!(parse(&doc(&[], "")), Ok(base_tx()));
    }

    #[test]
    fn spec_example_verbatim() {
        let s = r#"{"id_transacao": "7f1c", "id_usuario_pagador": "u000123",
 "id_usuario_recebedor": "u004567", "id_regiao": "r017",
 "modalidade_pagamento": "pix", "data_horario": "2026-11-26T14:03:12.345-03:00",
 "valor_transacao": 152.37}"#;
        let tx = parse(s).unwrap();
        assert_eq!(tx.id, "7f1c");
        assert_eq!(tx.amount_cents, 15_237);
        assert_eq!(tx.event_ms, E0);
        assert_eq!(format_utc_ms(tx.event_ms), "2026-11-26T17:03:12.345Z");
    }

    #[test]
    fn field_order_and_whitespace_do_not_matter() {
        let s = " \n\t{ \"valor_transacao\" : \"1\" , \"data_horario\":\"2026-11-26T17:03:12.345Z\",\
                 \"modalidade_pagamento\":\"boleto\",\"id_regiao\":\"r\",\"id_usuario_recebedor\":\"b\",\
                 \"id_usuario_pagador\":\"a\",\"id_transacao\":\"x\" } \r\n";
        let tx = parse(s).unwrap();
        assert_eq!(
            tx,
            Tx {
                id: "x".into(),
                payer: "a".into(),
                payee: "b".into(),
                region: "r".into(),
                mode: Mode::Boleto,
                amount_cents: 100,
                event_ms: E0,
            }
        );
    }

    #[test]
    fn missing_fields() {
        for f in FIELDS {
            assert_eq!(
                parse(&doc(&[(f, None)], "")),
                Err(ParseError::MissingField(f)),
                "{f}"
            );
        }
        assert_eq!(parse("{}"), Err(ParseError::MissingField("id_transacao")));
    }

    #[test]
    fn non_objects_rejected() {
        assert_eq!(parse("[]"), Err(ParseError::NotObject("an array")));
        assert_eq!(parse("[1,{}]"), Err(ParseError::NotObject("an array")));
        assert_eq!(parse(r#""{}""#), Err(ParseError::NotObject("a string")));
        assert_eq!(parse(" 12.5 "), Err(ParseError::NotObject("a number")));
        assert_eq!(parse("1e400"), Err(ParseError::NotObject("a number")));
        assert_eq!(parse("null"), Err(ParseError::NotObject("null")));
        assert_eq!(parse("true"), Err(ParseError::NotObject("a boolean")));
    }

    #[test]
    fn empty_and_whitespace_only_rejected() {
        assert!(matches!(parse(""), Err(ParseError::Json(_))));
        assert!(matches!(parse(" \n\t\r "), Err(ParseError::Json(_))));
    }

    #[test]
    fn malformed_json_rejected() {
        let good = doc(&[], "");
        for bad in [
            format!("{good}x"),
            format!("{good}{{}}"),
            good[..good.len() - 1].to_owned(),
            good.replacen(',', ",,", 1),
            good.replacen('}', ",}", 1),
            "{'id_transacao':'t1'}".to_owned(),
            "[1,2".to_owned(),
            "nul".to_owned(),
        ] {
            assert!(matches!(parse(&bad), Err(ParseError::Json(_))), "{bad}");
        }
        // A raw control character inside a string.
        assert!(matches!(
            with("id_transacao", "\"a\tb\""),
            Err(ParseError::Json(_))
        ));
        // Bad number grammar in an unknown field.
        assert!(matches!(extra(r#""x":01"#), Err(ParseError::Json(_))));
        assert!(matches!(extra(r#""x":1."#), Err(ParseError::Json(_))));
    }

    #[test]
    fn byte_order_mark_rejected() {
        let mut b = vec![0xEF, 0xBB, 0xBF];
        b.extend_from_slice(doc(&[], "").as_bytes());
        assert_eq!(parse_transaction(&b), Err(ParseError::ByteOrderMark));
    }

    #[test]
    fn invalid_utf8_rejected() {
        let mut b = doc(&[], "").into_bytes();
        b.insert(20, 0xFF);
        assert_eq!(
            parse_transaction(&b),
            Err(ParseError::NotUtf8 { valid_up_to: 20 })
        );
        // A truncated multi-byte sequence inside a string.
        let b = b"{\"id_transacao\":\"\xC3\"}";
        assert!(matches!(
            parse_transaction(b),
            Err(ParseError::NotUtf8 { .. })
        ));
    }

    #[test]
    fn size_limit() {
        let base = doc(&[], "");
        // Exactly 65,536 bytes (padded with trailing whitespace) is accepted...
        let mut s = base.clone();
        s.push_str(&" ".repeat(MAX_PAYLOAD_BYTES - base.len()));
        assert_eq!(s.len(), 65_536);
        assert_eq!(parse(&s), Ok(base_tx()));
        // ...and the same with an unknown string field of the right length.
        let pad = MAX_PAYLOAD_BYTES - base.len() - r#","p":"""#.len();
        let s = doc(&[], &format!("\"p\":\"{}\"", "a".repeat(pad)));
        assert_eq!(s.len(), 65_536);
        assert_eq!(parse(&s), Ok(base_tx()));
        // One byte more is not.
        let s = format!("{s} ");
        assert_eq!(s.len(), 65_537);
        assert_eq!(parse(&s), Err(ParseError::TooLarge(65_537)));
    }

    #[test]
    fn depth_limit() {
        // Top-level object = depth 1, so 31 nested arrays = depth 32.
        let nest = |n: usize| format!("\"x\":{}{}", "[".repeat(n), "]".repeat(n));
        assert_eq!(extra(&nest(31)), Ok(base_tx()));
        assert_eq!(extra(&nest(32)), Err(ParseError::TooDeep));
        // Deeper than serde_json's own limit of 128 is still TooDeep.
        assert_eq!(extra(&nest(500)), Err(ParseError::TooDeep));
        // Objects count too.
        let objs = |n: usize| format!("\"x\":{}1{}", r#"{"a":"#.repeat(n), "}".repeat(n));
        assert_eq!(extra(&objs(31)), Ok(base_tx()));
        assert_eq!(extra(&objs(32)), Err(ParseError::TooDeep));
        // Brackets inside strings do not.
        assert_eq!(
            extra(&format!("\"x\":[\"{}\"]", "[{".repeat(100))),
            Ok(base_tx())
        );
        // Siblings do not add up.
        let wide = format!("\"x\":[{}]", vec!["[[]]"; 100].join(","));
        assert_eq!(extra(&wide), Ok(base_tx()));
        // Depth inside a known field also counts.
        assert_eq!(
            with(
                "id_regiao",
                &format!("{}{}", "[".repeat(32), "]".repeat(32))
            ),
            Err(ParseError::TooDeep)
        );
    }

    #[test]
    fn duplicate_known_field_rejected() {
        assert_eq!(
            extra(r#""valor_transacao":152.37"#),
            Err(ParseError::DuplicateField("valor_transacao"))
        );
        assert_eq!(
            extra(r#""id_transacao":"t1""#),
            Err(ParseError::DuplicateField("id_transacao"))
        );
        // Spelled with an escape, it is still the same key.
        assert_eq!(
            extra(r#""\u0069d_regiao":"r017""#),
            Err(ParseError::DuplicateField("id_regiao"))
        );
    }

    #[test]
    fn escaped_known_key_is_the_field() {
        let s = doc(&[("id_regiao", None)], r#""id_regi\u0061o":"r\u00e9""#);
        assert_eq!(parse(&s).unwrap().region, "r\u{e9}");
    }

    #[test]
    fn unknown_fields_ignored_whatever_they_hold() {
        assert_eq!(
            extra(r#""x":1,"x":{"a":[1,true,null]},"x":"s""#),
            Ok(base_tx())
        );
        // Numbers outside f64's range are valid JSON.
        assert_eq!(extra(r#""x":1e400,"y":-1e-99999"#), Ok(base_tx()));
        assert_eq!(extra(&format!("\"x\":{}", "9".repeat(1000))), Ok(base_tx()));
        // Keys differing only in case are unknown fields.
        assert_eq!(
            extra(r#""ID_TRANSACAO":5,"Valor_transacao":null"#),
            Ok(base_tx())
        );
        // Escapes of every kind.
        assert_eq!(extra(r#""x":"\"\\\/\b\f\n\r\t\u00e9""#), Ok(base_tx()));
    }

    #[test]
    fn lone_surrogates_rejected_anywhere() {
        for e in [
            r#""x":"\ud800""#,
            r#""x":"\udc00""#,
            r#""x":"a\ud800b""#,
            r#""x":"\ud800\n""#,
            r#""x":"\ud800\ud800\udc00""#,
            r#""x":"\udc00\ud800""#,
            r#""x":{"a":[1,{"b":"\uDBFF"}]}"#,
            r#""x":{"\udc00":1}"#,
            r#""\ud800":1"#,
        ] {
            assert_eq!(extra(e), Err(ParseError::LoneSurrogate), "{e}");
        }
        assert_eq!(
            with("id_transacao", r#""\ud800""#),
            Err(ParseError::LoneSurrogate)
        );
        assert_eq!(
            with("valor_transacao", r#""1\udfff""#),
            Err(ParseError::LoneSurrogate)
        );
        assert_eq!(
            with("valor_transacao", r#"["\udfff"]"#),
            Err(ParseError::LoneSurrogate)
        );
    }

    #[test]
    fn surrogate_pairs_accepted() {
        assert_eq!(
            extra(r#""x":"\ud83d\ude00","y":{"\uD83D\uDE00":"\udbff\udfff"}"#),
            Ok(base_tx())
        );
        assert_eq!(
            with("id_transacao", r#""a\ud83d\ude00""#).unwrap().id,
            "a\u{1F600}"
        );
    }

    // --- ids ----------------------------------------------------------------

    #[test]
    fn ids_must_be_non_empty_strings() {
        for (i, f) in FIELDS[..4].iter().enumerate() {
            assert_eq!(with(f, r#""""#), Err(ParseError::EmptyId(FIELDS[i])));
            assert_eq!(
                with(f, "17"),
                Err(ParseError::WrongType {
                    field: FIELDS[i],
                    expected: "a string",
                    found: "a number"
                })
            );
            assert_eq!(
                with(f, "null"),
                Err(ParseError::WrongType {
                    field: FIELDS[i],
                    expected: "a string",
                    found: "null"
                })
            );
        }
        assert!(matches!(
            with("id_usuario_pagador", "[\"u1\"]"),
            Err(ParseError::WrongType {
                found: "an array",
                ..
            })
        ));
        assert!(matches!(
            with("id_usuario_pagador", "{}"),
            Err(ParseError::WrongType {
                found: "an object",
                ..
            })
        ));
        assert!(matches!(
            with("id_regiao", "false"),
            Err(ParseError::WrongType {
                found: "a boolean",
                ..
            })
        ));
    }

    #[test]
    fn ids_kept_exactly() {
        let tx = parse(&doc(
            &[
                ("id_transacao", Some(r#"" T1 ""#)),
                ("id_usuario_pagador", Some(r#""U000123""#)),
                ("id_usuario_recebedor", Some(r#""u\u0030\n""#)),
                ("id_regiao", Some(r#""  ""#)),
            ],
            "",
        ))
        .unwrap();
        assert_eq!(tx.id, " T1 ");
        assert_eq!(tx.payer, "U000123");
        assert_eq!(tx.payee, "u0\n");
        assert_eq!(tx.region, "  ");
    }

    // --- mode -----------------------------------------------------------------

    #[test]
    fn modes() {
        assert_eq!(mode(r#""pix""#), Ok(Mode::Pix));
        assert_eq!(mode(r#""PIX""#), Ok(Mode::Pix));
        assert_eq!(mode(r#""Débito""#), Ok(Mode::Debito));
        // Decomposed: e + U+0301.
        assert_eq!(mode("\"De\u{301}bito\""), Ok(Mode::Debito));
        assert_eq!(mode(r#""D\u00e9bito""#), Ok(Mode::Debito));
        assert_eq!(mode(r#""CRÉDITO""#), Ok(Mode::Credito));
        assert_eq!(mode(r#""credito""#), Ok(Mode::Credito));
        assert_eq!(mode(r#""Boleto""#), Ok(Mode::Boleto));
        // Fullwidth letters: NFKD maps them to ASCII.
        assert_eq!(mode(r#""ＰＩＸ""#), Ok(Mode::Pix));
        // A mark anywhere is dropped, also an enclosing one (Me) or a spacing one (Mc).
        assert_eq!(mode("\"p\u{20DD}ix\""), Ok(Mode::Pix));
        assert_eq!(mode("\"pi\u{0903}x\""), Ok(Mode::Pix));
    }

    #[test]
    fn bad_modes() {
        for m in [
            r#"" pix""#,
            r#""pix ""#,
            r#""""#,
            r#""cartao""#,
            r#""pixx""#,
            r#""débito2""#,
            "\"p\u{200B}ix\"",
        ] {
            assert!(matches!(mode(m), Err(ParseError::UnknownMode(_))), "{m}");
        }
        assert_eq!(
            mode(r#"" pix""#),
            Err(ParseError::UnknownMode(" pix".into()))
        );
        assert!(matches!(
            mode("1"),
            Err(ParseError::WrongType {
                field: "modalidade_pagamento",
                ..
            })
        ));
    }

    #[test]
    fn normalize_mode_direct() {
        assert_eq!(normalize_mode("DEBITO"), Some(Mode::Debito));
        assert_eq!(normalize_mode("débito"), Some(Mode::Debito));
        // U+212A KELVIN SIGN is not a letter here; U+0130 decomposes to I + mark.
        assert_eq!(normalize_mode("Boleto\u{0301}"), Some(Mode::Boleto));
        assert_eq!(normalize_mode("\u{0130}"), None);
        assert_eq!(normalize_mode("Pİx"), Some(Mode::Pix));
        assert_eq!(normalize_mode("creditos"), None);
        assert_eq!(normalize_mode("crédito\u{a0}"), None);
        assert_eq!(normalize_mode("p\u{0131}x"), None); // dotless i stays non-ASCII
    }

    #[test]
    fn combining_mark_means_general_category_m() {
        // Mn, Mc, Me are marks; letters, format chars and symbols are not.
        for c in ['\u{0301}', '\u{0903}', '\u{20DD}', '\u{0488}', '\u{1AB0}'] {
            assert!(is_combining_mark(c), "{c:?}");
        }
        for c in ['e', 'é', '\u{200D}', '\u{00B4}', '\u{02C6}', '\u{FF30}'] {
            assert!(!is_combining_mark(c), "{c:?}");
        }
    }

    // --- event time -----------------------------------------------------------

    #[test]
    fn event_time_offsets_and_forms() {
        assert_eq!(parse_event_time("2026-11-26T17:03:12.345Z"), Ok(E0));
        assert_eq!(parse_event_time("2026-11-26t17:03:12.345z"), Ok(E0));
        assert_eq!(parse_event_time("2026-11-26 17:03:12.345Z"), Ok(E0));
        assert_eq!(parse_event_time("2026-11-26T14:03:12.345-03:00"), Ok(E0));
        assert_eq!(parse_event_time("2026-11-26T19:33:12.345+02:30"), Ok(E0));
        assert_eq!(parse_event_time("2026-11-26T17:03:12.345+00:00"), Ok(E0));
        assert_eq!(parse_event_time("2026-11-26T17:03:12.345-00:00"), Ok(E0));
        assert_eq!(parse_event_time("2026-11-27T17:02:12.345+23:59"), Ok(E0));
        assert_eq!(parse_event_time("2026-11-25T17:04:12.345-23:59"), Ok(E0));
        assert_eq!(time("2026-11-26t14:03:12.345-03:00"), Ok(E0));
    }

    #[test]
    fn event_time_without_offset_is_brasilia() {
        assert_eq!(parse_event_time("2026-11-26T14:03:12.345"), Ok(E0));
        assert_eq!(parse_event_time("2026-11-26 14:03:12.345"), Ok(E0));
        assert_eq!(
            parse_event_time("2026-11-26T14:03:12"),
            Ok(1_795_712_592_000)
        );
        assert_eq!(time("2026-11-26T14:03:12.345"), Ok(E0));
    }

    #[test]
    fn event_time_fractions_truncate() {
        assert_eq!(parse_event_time("2026-11-26T17:03:12Z"), Ok(E0 - 345));
        assert_eq!(parse_event_time("2026-11-26T17:03:12.3Z"), Ok(E0 - 45));
        assert_eq!(parse_event_time("2026-11-26T17:03:12.34Z"), Ok(E0 - 5));
        assert_eq!(parse_event_time("2026-11-26T17:03:12.345999999Z"), Ok(E0));
        assert_eq!(
            parse_event_time("2026-11-26T17:03:12.345999999-00:00"),
            Ok(E0)
        );
        assert_eq!(
            parse_event_time(&format!("2026-11-26T17:03:12.345{}Z", "9".repeat(27))),
            Ok(E0)
        );
        assert_eq!(parse_event_time("1969-12-31T23:59:59.9999Z"), Ok(-1));
        assert_bad_times(&[
            "2026-11-26T17:03:12.Z",
            "2026-11-26T17:03:12.",
            "2026-11-26T17:03:12,5Z",
        ]);
    }

    #[test]
    fn event_time_calendar() {
        assert_eq!(
            parse_event_time("2000-02-29T00:00:00Z"),
            Ok(951_782_400_000)
        );
        assert_eq!(
            parse_event_time("2024-02-29T12:00:00Z"),
            Ok(1_709_208_000_000)
        );
        assert_eq!(
            parse_event_time("1900-03-01T00:00:00Z"),
            Ok(-2_203_891_200_000)
        );
        assert_bad_times(&[
            "1900-02-29T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2100-02-29T00:00:00Z",
            "2024-02-30T00:00:00Z",
            "2024-04-31T00:00:00Z",
            "2024-00-10T00:00:00Z",
            "2024-13-10T00:00:00Z",
            "2024-01-00T00:00:00Z",
            "2024-01-32T00:00:00Z",
        ]);
        assert_eq!(
            parse_event_time("9999-12-31T23:59:59.999Z"),
            Ok(253_402_300_799_999)
        );
    }

    #[test]
    fn event_time_clock_limits() {
        assert_eq!(
            parse_event_time("2026-11-26T23:59:59Z"),
            Ok(E0 - 345 + ((6 * 60 + 56) * 60 + 47) * 1000)
        );
        assert_bad_times(&[
            "2026-11-26T24:00:00Z",
            "2026-11-26T23:60:00Z",
            "2026-11-26T23:59:60Z",
            "2016-12-31T23:59:60Z",
        ]);
    }

    #[test]
    fn event_time_years() {
        assert_bad_times(&["0000-01-01T00:00:00Z", "0000-12-31T23:00:00-03:00"]);
        assert_eq!(
            parse_event_time("0001-01-01T00:00:00Z"),
            Ok(-62_135_596_800_000)
        );
        assert_eq!(
            parse_event_time("0001-01-01T00:00:00-00:01"),
            Ok(-62_135_596_740_000)
        );
        // Before 0001-01-01T00:00:00Z once converted to UTC.
        assert_bad_times(&["0001-01-01T00:30:00+01:00", "0001-01-01T00:00:00+00:01"]);
        // Naive = -03:00, so the earliest naive instant is 03:00 UTC.
        assert_eq!(
            parse_event_time("0001-01-01T00:00:00"),
            Ok(-62_135_596_800_000 + 3 * 3_600_000)
        );
        assert_bad_times(&[
            "10000-01-01T00:00:00Z",
            "999-01-01T00:00:00Z",
            "-001-01-01T00:00:00Z",
            "+2026-11-26T17:03:12Z",
        ]);
    }

    #[test]
    fn event_time_strict_syntax() {
        for s in [
            "",
            " 2026-11-26T17:03:12Z",
            "2026-11-26T17:03:12Z ",
            "2026-11-26T17:03:12 ",
            "2026-11-26T17:03Z",
            "2026-11-26",
            "2026-11-26X17:03:12Z",
            "2026-11-26T17:03:12+0300",
            "2026-11-26T17:03:12+03",
            "2026-11-26T17:03:12+3:00",
            "2026-11-26T17:03:12+03:0",
            "2026-11-26T17:03:12+24:00",
            "2026-11-26T17:03:12-03:60",
            "2026-11-26T17:03:12ZZ",
            "2026-11-26T17:03:12Z+01:00",
            "2026-11-26T17:03:12+03:00Z",
            "2026/11/26T17:03:12Z",
            "2026-1-26T17:03:12Z",
            "2026-11-6T17:03:12Z",
            "2026-11-26T7:03:12Z",
            "2026-11-26T17:3:12Z",
            "2026-11-26T17:03:2Z",
            "2026-11-26T17:03:12UTC",
            "2026-11-26T17:03:12.５Z",
            "２026-11-26T17:03:12Z",
            "2026-11-26T17:03:12\u{2212}03:00",
            "2026-11-26T17:03:12.-5Z",
            "2026-11-26T17:03:+1Z",
        ] {
            assert!(is_bad_time(parse_event_time(s)), "{s:?}");
        }
        assert!(matches!(
            with("data_horario", "1795712592345"),
            Err(ParseError::WrongType {
                field: "data_horario",
                found: "a number",
                ..
            })
        ));
    }

    #[test]
    fn days_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(1, 1, 1), -719_162);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        for z in (-800_000..3_000_000).step_by(997) {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
            assert!((1..=days_in_month(y, m)).contains(&d));
        }
    }

    // --- amount ---------------------------------------------------------------

    #[test]
    fn amounts_from_numbers() {
        assert_amounts(&[
            ("152.37", 15_237),
            ("1", 100),
            ("0.01", 1),
            ("1e3", 100_000),
            ("1E+3", 100_000),
            ("1.5e2", 15_000),
            ("15237e-2", 15_237),
            ("0.0001e4", 100),
            ("1000000000", 100_000_000_000),
            ("1000000000.00", 100_000_000_000),
            ("1.000000000000000000000000001", 100),
        ]);
    }

    #[test]
    fn amounts_from_strings() {
        assert_amounts(&[
            (r#""152.37""#, 15_237),
            (r#""1e3""#, 100_000),
            (r#""007.50""#, 750),
            (r#""\u0031\u0030""#, 1000),
        ]);
        for s in [
            r#""""#,
            r#"" 1""#,
            r#""1 ""#,
            r#""+1""#,
            r#"".5""#,
            r#""5.""#,
            r#""1,50""#,
            r#""1e""#,
            r#""1e+""#,
            r#""0x10""#,
            r#""1.2.3""#,
            r#""NaN""#,
            r#""Infinity""#,
            r#""R$ 10""#,
            r#""１""#,
        ] {
            assert!(
                matches!(amount(s), Err(ParseError::BadAmount { .. })),
                "{s}"
            );
        }
    }

    #[test]
    fn amounts_wrong_type() {
        for (raw, found) in [
            ("true", "a boolean"),
            ("false", "a boolean"),
            ("null", "null"),
            ("[1]", "an array"),
            (r#"{"v":1}"#, "an object"),
        ] {
            assert_eq!(
                amount(raw),
                Err(ParseError::WrongType {
                    field: "valor_transacao",
                    expected: "a number or a numeric string",
                    found
                })
            );
        }
    }

    #[test]
    fn amounts_round_half_away_from_zero() {
        assert_eq!(amount("0.005"), Ok(1));
        assert_eq!(
            amount("0.00499999"),
            Err(ParseError::AmountOutOfRange("0.00499999".into()))
        );
        assert_amounts(&[
            ("1.234999", 123),
            ("1.235", 124),
            ("2.675", 268),
            ("2.665", 267),
            ("10.994", 1099),
            ("10.995", 1100),
            (r#""2.675""#, 268),
            ("5e-3", 1),
        ]);
        assert_eq!(
            amount("4.9e-3"),
            Err(ParseError::AmountOutOfRange("4.9e-3".into()))
        );
        assert_eq!(parse_amount_cents("0.015", false), Ok(2));
        // Negative side: half away from zero makes -0.005 into -1 cent (out of range).
        assert_eq!(
            parse_amount_cents("-0.005", false),
            Err(ParseError::AmountOutOfRange("-0.005".into()))
        );
        assert_eq!(
            parse_amount_cents("-0.004", false),
            Err(ParseError::AmountOutOfRange("-0.004".into()))
        );
        assert_eq!(
            parse_amount_cents("-2.675", true),
            Err(ParseError::AmountOutOfRange("-2.675".into()))
        );
    }

    #[test]
    fn amounts_out_of_range() {
        for raw in [
            "0",
            "0.0",
            "-0",
            "-1",
            "-152.37",
            "0.001",
            "0e999999999999999999",
            "1000000000.01",
            "1000000000.005",
            "100000000000",
            "1e10",
            "1e999999999999999999",
            "1e99999999999999999999999999999999999999999",
            "1e-99999999999999",
            "1e-99999999999999999999999999999999999999999",
            r#""-5""#,
            r#""1e999999999999999999""#,
        ] {
            assert!(
                matches!(amount(raw), Err(ParseError::AmountOutOfRange(_))),
                "{raw}"
            );
        }
        assert_amounts(&[
            ("1000000000.004", 100_000_000_000),
            ("999999999.995", 100_000_000_000),
            ("9.99999999995e8", 100_000_000_000),
        ]);
        // 10^-5001 × 10^5003 = 100 BRL.
        let long = format!("0.{}1e{}", "0".repeat(5000), 5003);
        assert_eq!(parse_amount_cents(&long, false), Ok(10_000));
        let long = format!("{}e-{}", "1".repeat(30_000), 29_989);
        // 111…1 (30,000 ones) × 10^-29,989 = 11,111,111,111.1… BRL: out of range.
        assert!(matches!(
            parse_amount_cents(&long, false),
            Err(ParseError::AmountOutOfRange(_))
        ));
        let long = format!("{}e-{}", "1".repeat(30_000), 29_991);
        assert_eq!(parse_amount_cents(&long, false), Ok(11_111_111_111));
    }

    #[test]
    fn amount_grammar_number_vs_string() {
        assert!(matches!(
            parse_amount_cents("01", false),
            Err(ParseError::BadAmount { .. })
        ));
        assert_eq!(parse_amount_cents("01", true), Ok(100));
        assert!(matches!(
            parse_amount_cents("", false),
            Err(ParseError::BadAmount { .. })
        ));
        assert!(matches!(
            parse_amount_cents("-", true),
            Err(ParseError::BadAmount { .. })
        ));
    }

    // --- formatting -------------------------------------------------------------

    #[test]
    fn format_utc_ms_values() {
        assert_eq!(format_utc_ms(E0), "2026-11-26T17:03:12.345Z");
        assert_eq!(format_utc_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_utc_ms(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(format_utc_ms(-86_400_001), "1969-12-30T23:59:59.999Z");
        assert_eq!(format_utc_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(format_utc_ms(MIN_EVENT_MS), "0001-01-01T00:00:00.000Z");
        assert_eq!(
            format_utc_ms(MIN_EVENT_MS + 10_800_007),
            "0001-01-01T03:00:00.007Z"
        );
        assert_eq!(
            format_utc_ms(253_402_300_799_999),
            "9999-12-31T23:59:59.999Z"
        );
        // Never panics, even far outside the event range.
        let _ = format_utc_ms(i64::MIN);
        let _ = format_utc_ms(i64::MAX);
    }

    #[test]
    fn format_minute_values() {
        assert_eq!(format_minute(E0.div_euclid(60_000)), "2026-11-26T17:03:00Z");
        assert_eq!(format_minute(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_minute(-1), "1969-12-31T23:59:00Z");
        assert_eq!(
            format_minute(MIN_EVENT_MS.div_euclid(60_000)),
            "0001-01-01T00:00:00Z"
        );
        assert_eq!(format_minute(1439), "1970-01-01T23:59:00Z");
        let _ = format_minute(i64::MIN);
        let _ = format_minute(i64::MAX);
    }

    #[test]
    fn round_trip_time_through_format() {
        for s in [
            "2026-11-26T17:03:12.345Z",
            "0001-01-01T00:00:00.000Z",
            "1969-12-31T23:59:59.999Z",
            "2000-02-29T23:59:59.000Z",
        ] {
            assert_eq!(format_utc_ms(parse_event_time(s).unwrap()), s);
        }
    }

    // --- error texts ------------------------------------------------------------

    #[test]
    fn error_texts_are_clear() {
        let texts = [
            (
                amount("true").unwrap_err(),
                "field valor_transacao: expected a number or a numeric string, found a boolean",
            ),
            (
                extra(r#""valor_transacao":1"#).unwrap_err(),
                "field valor_transacao given more than once",
            ),
            (
                parse(&doc(&[("data_horario", None)], "")).unwrap_err(),
                "missing field data_horario",
            ),
            (
                time("2026-11-26T24:00:00Z").unwrap_err(),
                "field data_horario: invalid event time \"2026-11-26T24:00:00Z\": hour must be 00-23",
            ),
            (
                mode(r#""cartao""#).unwrap_err(),
                "field modalidade_pagamento: unknown payment mode \"cartao\" (expected pix, debito, credito or boleto)",
            ),
            (
                amount("0").unwrap_err(),
                "field valor_transacao: amount 0 is not between 0.01 and 1000000000.00 BRL after rounding to the cent",
            ),
            (
                parse("[]").unwrap_err(),
                "top-level JSON value is an array, expected an object",
            ),
        ];
        for (e, text) in texts {
            assert_eq!(e.to_string(), text);
        }
        let long = mode(&format!("\"{}\"", "x".repeat(1000)))
            .unwrap_err()
            .to_string();
        assert!(long.len() < 200, "{long}");
        for e in [parse("{\"a\":\n"), parse("")] {
            let text = e.unwrap_err().to_string();
            assert!(text.starts_with("invalid JSON: "), "{text}");
            assert!(!text.contains('\n'));
        }
    }

    #[test]
    fn never_panics_on_odd_inputs() {
        let base = doc(&[], "");
        // Every prefix of a valid message, and every single-byte corruption.
        for cut in 0..base.len() {
            assert!(parse(&base[..cut]).is_err());
        }
        let bytes = base.as_bytes();
        for i in 0..bytes.len() {
            for b in [b'"', b'\\', b'{', b'[', b'}', b']', 0u8, 0xC3, b'u'] {
                let mut m = bytes.to_vec();
                m[i] = b;
                let _ = parse_transaction(&m);
            }
        }
        for s in [
            "\\",
            "\"\\u",
            "{\"\\u",
            "{\"\\ud800\\u",
            "{\"a\":\"\\ud800\\",
            "{\"a\":[[[[[",
        ] {
            assert!(parse(s).is_err(), "{s}");
        }
    }

    // --- properties -------------------------------------------------------------

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// `n / 10^scale` BRL as decimal text, in plain or exponent form.
        fn decimal(n: u64, scale: u32, exp_shift: i32) -> String {
            let digits = format!("{:0>width$}", n, width = scale as usize + 1);
            let (int, frac) = digits.split_at(digits.len() - scale as usize);
            let mantissa = if frac.is_empty() {
                int.to_owned()
            } else {
                format!("{int}.{frac}")
            };
            if exp_shift == 0 {
                return mantissa;
            }
            // Move the point by exp_shift and compensate with the exponent.
            let all = format!("{int}{frac}");
            let point = int.len() as i32 - exp_shift;
            let body = if point <= 0 {
                format!("0.{}{}", "0".repeat((-point) as usize), all)
            } else if point as usize >= all.len() {
                format!("{}{}", all, "0".repeat(point as usize - all.len()))
            } else {
                format!("{}.{}", &all[..point as usize], &all[point as usize..])
            };
            format!("{body}e{exp_shift}")
        }

        proptest! {
            // Issue 12 asks for a fuzzing of the parser alone: many cases here, cheap ones.
            #![proptest_config(ProptestConfig::with_cases(
                std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(4_000)
            ))]

            #[test]
            fn amount_matches_integer_arithmetic(
                n in 0u64..10_000_000_000_000_000,
                scale in 0u32..8,
                exp_shift in -6i32..6,
            ) {
                let text = decimal(n, scale, exp_shift);
                // cents = n * 100 / 10^scale, half away from zero.
                let num = u128::from(n) * 100;
                let den = 10u128.pow(scale);
                let expected = (num + den / 2) / den;
                let got = parse_amount_cents(&text, true);
                if (1..=100_000_000_000u128).contains(&expected) {
                    prop_assert_eq!(got, Ok(expected as i64), "{}", text);
                } else {
                    prop_assert!(matches!(got, Err(ParseError::AmountOutOfRange(_))), "{}", text);
                }
                // A negative amount is never accepted.
                let neg = parse_amount_cents(&format!("-{text}"), true);
                prop_assert!(matches!(neg, Err(ParseError::AmountOutOfRange(_))));
            }

            #[test]
            fn time_round_trips(ms in MIN_EVENT_MS..=253_402_300_799_999i64) {
                let s = format_utc_ms(ms);
                prop_assert_eq!(parse_event_time(&s), Ok(ms));
                prop_assert_eq!(
                    format_minute(ms.div_euclid(60_000)),
                    format!("{}:00Z", &s[..16])
                );
            }

            #[test]
            fn naive_is_three_hours_behind(ms in MIN_EVENT_MS..=253_402_300_799_999i64) {
                let s = format_utc_ms(ms);
                let naive = &s[..s.len() - 1];
                prop_assert_eq!(parse_event_time(naive), Ok(ms + 3 * 3_600_000));
            }

            #[test]
            fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..300)) {
                let _ = parse_transaction(&b);
            }

            /// Fuzz (issue 12, SPEC §3/§8): a valid message with one id replaced by any
            /// string (U+0000, any plane, any length up to a few KB) and a few raw bytes
            /// spliced in somewhere: parsing never panics, and a message that still parses
            /// keeps the id exactly.
            #[test]
            fn mutated_messages_never_panic_and_keep_ids_exactly(
                field in 0usize..4,
                id in "(?s).{1,64}|\\x00{1,4}|[a-z]{2000,3000}",
                splice_at in any::<prop::sample::Index>(),
                splice in proptest::collection::vec(any::<u8>(), 0..4),
            ) {
                let names = ["id_transacao", "id_usuario_pagador", "id_usuario_recebedor", "id_regiao"];
                let mut msg = serde_json::json!({
                    "id_transacao": "t1", "id_usuario_pagador": "u1",
                    "id_usuario_recebedor": "u2", "id_regiao": "r1",
                    "modalidade_pagamento": "pix",
                    "data_horario": "2026-11-26T14:03:12.345-03:00",
                    "valor_transacao": 152.37,
                });
                msg[names[field]] = serde_json::Value::String(id.clone());
                let text = msg.to_string().into_bytes();
                let tx = parse_transaction(&text).expect("a valid message with an odd id");
                let got = [tx.id.as_str(), tx.payer.as_str(), tx.payee.as_str(), tx.region.as_str()];
                prop_assert_eq!(got[field], id.as_str());
                let mut damaged = text.clone();
                let at = splice_at.index(damaged.len() + 1);
                for (k, b) in splice.iter().enumerate() {
                    damaged.insert(at + k, *b);
                }
                let _ = parse_transaction(&damaged);
            }

            #[test]
            fn arbitrary_json_ish_never_panics(s in "[{}\\[\\]\"\\\\u0-9a-fA-F:,.eE+ -]{0,120}") {
                let _ = parse_transaction(s.as_bytes());
                let _ = parse_amount_cents(&s, true);
                let _ = parse_event_time(&s);
                let _ = normalize_mode(&s);
            }
        }
    }
}

//! Calendar arithmetic and the time formats of the outputs: the proleptic Gregorian
//! calendar by day count (Howard Hinnant's algorithms), RFC 3339 UTC with milliseconds
//! (the record's `event_time`, SPEC §8) and event-time minute labels (analyses 9 and 10,
//! SPEC §7). Parsing `data_horario` (SPEC §3) is the parser's and uses these.

use std::fmt;

/// Milliseconds in a day.
pub const MS_PER_DAY: i64 = 86_400_000;

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`). `m` in 1..=12, `d` in 1..=31.
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // [0, 399]
    let mp = (m + 9) % 12; // March = 0
    let doy = (153 * mp + 2) / 5 + d - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date (y, m, d) of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`). Valid for any `z` up to `i64::MAX - 719_468`.
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let d = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A year as 4 digits (years outside 0000–9999, never an event time, get a sign or
/// more digits).
struct Year(i64);

impl fmt::Display for Year {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.0 < 0 {
            write!(f, "-{:04}", self.0.unsigned_abs())
        } else {
            write!(f, "{:04}", self.0)
        }
    }
}

/// RFC 3339 UTC with milliseconds, e.g. "2026-11-26T17:03:12.345Z" (years 0001-9999,
/// 4 digits always).
pub fn format_utc_ms(ms: i64) -> String {
    let days = ms.div_euclid(MS_PER_DAY);
    let in_day = ms.rem_euclid(MS_PER_DAY);
    let (y, m, d) = civil_from_days(days);
    let s = in_day / 1000;
    format!(
        "{}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        Year(y),
        m,
        d,
        s / 3600,
        s / 60 % 60,
        s % 60,
        in_day % 1000
    )
}

/// Event-time minute label "YYYY-MM-DDTHH:MM:00Z" for minute index
/// m = ms.div_euclid(60_000).
pub fn format_minute(minute: i64) -> String {
    let days = minute.div_euclid(1440);
    let in_day = minute.rem_euclid(1440);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{}-{:02}-{:02}T{:02}:{:02}:00Z",
        Year(y),
        m,
        d,
        in_day / 60,
        in_day % 60
    )
}

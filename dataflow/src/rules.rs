//! The per-message arithmetic of SPEC §5–7: time rules, risk scores, bands and buckets.
//! Everything here is a pure function of its arguments, so the operators stay thin.

use serde::{Deserialize, Serialize};

use crate::model::{Cents, Mode, Params, Status, Time};

const HOUR_MS: i64 = 3_600_000;
const BRASILIA_OFFSET_MS: i64 = -3 * HOUR_MS;

/// Rules 1 (future part) and 2 of SPEC §5, for a message that parsed.
/// `None` means the message passes both.
pub fn time_rule(t: Time, event_ms: i64, max_delay_ms: u64) -> Option<TimeVerdict> {
    let t = t as i128;
    let e = event_ms as i128;
    let max_delay = max_delay_ms as i128;
    if e > t + max_delay {
        Some(TimeVerdict::Future)
    } else if t - e > max_delay {
        Some(TimeVerdict::Late)
    } else {
        None
    }
}

/// Why a parsed message fails the time rules (see [`time_rule`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeVerdict {
    /// E > t + max_delay: invalid.
    Future,
    /// t − E > max_delay: late.
    Late,
}

/// Rule 3: is a message at `t` a duplicate of one last seen at `last_seen`?
pub fn is_duplicate(t: Time, last_seen: Option<Time>, params: &Params) -> bool {
    matches!(last_seen, Some(prev) if t.saturating_sub(prev) <= params.dedup_window_ms)
}

/// Local hour (UTC−03:00) of an event time.
pub fn local_hour(event_ms: i64) -> u8 {
    (event_ms + BRASILIA_OFFSET_MS)
        .div_euclid(HOUR_MS)
        .rem_euclid(24) as u8
}

/// Event-time minute index (UTC), `floor(E / 60 s)`.
pub fn minute_of(event_ms: i64) -> i64 {
    event_ms.div_euclid(60_000)
}

/// Great-circle distance in km (haversine, R = 6371.0 km).
pub fn haversine_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    const R: f64 = 6371.0;
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = (lat2 - lat1).to_radians();
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * R * a.sqrt().asin()
}

/// The four scores of SPEC §6.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// 0 if v <= 1000 BRL, else min(1, (v − 1000) / 9000).
    pub value_risk: f64,
    /// By local hour: 1.0 for 0–5, 0.5 for 6 and 22–23, 0.0 for 7–21.
    pub hour_risk: f64,
    /// By payer-home ↔ transaction-region distance: 0 below 50 km, 1 from 1000 km, linear between.
    pub distance_risk: f64,
    /// 0 if `value_risk` is 0, else 0.5·value + 0.25·hour + 0.25·distance.
    pub risk: f64,
}

/// SPEC §6 value risk of an amount: 0 up to 1000 BRL, rising linearly to 1 at 10,000 BRL.
pub fn value_risk(amount_cents: Cents) -> f64 {
    let v = amount_cents as f64 / 100.0;
    if v <= 1000.0 {
        0.0
    } else {
        ((v - 1000.0) / 9000.0).min(1.0)
    }
}

/// SPEC §6 hour risk of a local hour: 1.0 for 0–5, 0.5 for 6 and 22–23, 0.0 for 7–21.
pub fn hour_risk(hour: u8) -> f64 {
    match hour {
        0..=5 => 1.0,
        6 => 0.5,
        7..=21 => 0.0,
        _ => 0.5,
    }
}

/// SPEC §6 distance risk of `km`: 0 below 50, 1 from 1000, else (km − 50) / 950.
pub fn distance_risk(km: f64) -> f64 {
    if km < 50.0 {
        0.0
    } else if km >= 1000.0 {
        1.0
    } else {
        (km - 50.0) / 950.0
    }
}

/// Scores of a transaction of `amount_cents` at local `hour`, `km` from the payer's home.
pub fn scores(amount_cents: Cents, hour: u8, km: f64) -> Scores {
    let value_risk = value_risk(amount_cents);
    let hour_risk = hour_risk(hour);
    let distance_risk = distance_risk(km);
    let risk = if value_risk == 0.0 {
        0.0
    } else {
        0.5 * value_risk + 0.25 * hour_risk + 0.25 * distance_risk
    };
    Scores {
        value_risk,
        hour_risk,
        distance_risk,
        risk,
    }
}

/// Analysis 2 bands, in BRL, lower bound inclusive.
pub const VALUE_BANDS: [&str; 8] = [
    "0-10",
    "10-50",
    "50-100",
    "100-500",
    "500-1000",
    "1000-5000",
    "5000-10000",
    "10000+",
];

/// Analysis 2 band of an amount: its index into [`VALUE_BANDS`].
pub fn value_band(amount_cents: Cents) -> u8 {
    const UPPER_CENTS: [Cents; 7] = [1_000, 5_000, 10_000, 50_000, 100_000, 500_000, 1_000_000];
    UPPER_CENTS
        .iter()
        .position(|&upper| amount_cents < upper)
        .unwrap_or(7) as u8
}

/// Analysis 4 bucket: 0 if value_risk = 0, else ceil(10·value_risk).
pub fn value_risk_bucket(value_risk: f64) -> u8 {
    if value_risk == 0.0 {
        0
    } else {
        (10.0 * value_risk).ceil() as u8
    }
}

/// Analysis 5 key: hour_risk 0.0, 0.5, 1.0 as 0, 1, 2 halves.
pub fn hour_risk_halves(hour_risk: f64) -> u8 {
    (hour_risk * 2.0) as u8
}

/// Analysis 10 bands of the payer-home ↔ payee-home distance.
pub const DISTANCE_BANDS: [&str; 4] = ["short", "medium_short", "medium_long", "long"];

/// Analysis 10 band of a distance in km: its index into [`DISTANCE_BANDS`].
pub fn distance_band(km: f64) -> u8 {
    if km < 50.0 {
        0
    } else if km < 300.0 {
        1
    } else if km < 1000.0 {
        2
    } else {
        3
    }
}

/// What rules 5–8 read of a payer, and what an approval changes (SPEC §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Funds {
    /// Balance, in cents.
    pub balance_cents: Cents,
    /// Credit limit, in cents.
    pub credit_limit_cents: Cents,
    /// Credit used by approved `credito` payments, in cents.
    pub credit_used_cents: Cents,
    /// Event time E of the last approval, ms since the Unix epoch; `None` before the first.
    pub last_approved_ms: Option<i64>,
}

/// Rule 5: an event before the payer's last approved event is stale.
pub fn is_stale(event_ms: i64, funds: &Funds) -> bool {
    matches!(funds.last_approved_ms, Some(last) if event_ms < last)
}

/// Rules 6–8 for a message that is not stale: insufficient balance (or limit, for
/// `credito`), then risk above the threshold, else approved.
pub fn assess(
    mode: Mode,
    amount_cents: Cents,
    risk: f64,
    funds: &Funds,
    params: &Params,
) -> Status {
    let short = if mode.uses_credit() {
        amount_cents > funds.credit_limit_cents - funds.credit_used_cents
    } else {
        amount_cents > funds.balance_cents
    };
    if short {
        if mode.uses_credit() {
            Status::InsufficientLimit
        } else {
            Status::InsufficientBalance
        }
    } else if risk > params.risk_threshold {
        Status::RejectedRisk
    } else {
        Status::Approved
    }
}

/// The payer's side of an approval (SPEC §5): the amount leaves its balance, or is added
/// to its credit used for `credito`, and the event becomes its last approved one. (The
/// payee's credit is applied one ms later, by its owner.)
pub fn approve(mode: Mode, amount_cents: Cents, event_ms: i64, funds: &mut Funds) {
    if mode.uses_credit() {
        funds.credit_used_cents += amount_cents;
    } else {
        funds.balance_cents -= amount_cents;
    }
    funds.last_approved_ms = Some(event_ms);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_rules_order_future_late() {
        let p = Params::default().max_delay_ms;
        assert_eq!(time_rule(10_000, 11_000, p), None);
        assert_eq!(time_rule(10_000, 11_001, p), Some(TimeVerdict::Future));
        assert_eq!(time_rule(10_000, 9_000, p), None);
        assert_eq!(time_rule(10_000, 8_999, p), Some(TimeVerdict::Late));
        assert_eq!(time_rule(10_000, i64::MIN / 2, p), Some(TimeVerdict::Late));
    }

    #[test]
    fn duplicate_window_is_inclusive() {
        let p = Params::default();
        assert!(is_duplicate(400_000, Some(100_000), &p));
        assert!(!is_duplicate(400_001, Some(100_000), &p));
        assert!(!is_duplicate(400_000, None, &p));
    }

    #[test]
    fn local_hour_is_utc_minus_3() {
        // 2026-11-26T02:59:59.999Z is 23:59 local on the 25th.
        assert_eq!(local_hour(1_795_661_999_999), 23);
        assert_eq!(local_hour(1_795_662_000_000), 0);
        assert_eq!(local_hour(-1), 20);
    }

    #[test]
    fn scores_follow_spec() {
        let s = scores(550_000, 3, 1200.0);
        assert_eq!(s.value_risk, 0.5);
        assert_eq!(s.hour_risk, 1.0);
        assert_eq!(s.distance_risk, 1.0);
        assert_eq!(s.risk, 0.75);
        let low = scores(100_000, 3, 5000.0);
        assert_eq!(low.risk, 0.0);
        assert_eq!(scores(1_000_001, 12, 0.0).value_risk, 1.0);
        assert_eq!(distance_risk(525.0), 0.5);
        assert_eq!(hour_risk(6), 0.5);
        assert_eq!(hour_risk(22), 0.5);
        assert_eq!(hour_risk(21), 0.0);
    }

    #[test]
    fn bands_and_buckets() {
        for (cents, band) in [(999, 0), (1_000, 1), (999_999, 6), (1_000_000, 7)] {
            assert_eq!(value_band(cents), band, "{cents}");
        }
        for (risk, bucket) in [(0.0, 0), (0.0001, 1), (0.1, 1), (1.0, 10)] {
            assert_eq!(value_risk_bucket(risk), bucket, "{risk}");
        }
        for (km, band) in [(49.9, 0), (50.0, 1), (300.0, 2), (1000.0, 3)] {
            assert_eq!(distance_band(km), band, "{km}");
        }
    }

    #[test]
    fn haversine_known_distance() {
        // São Paulo ↔ Rio de Janeiro is about 361 km.
        let d = haversine_km(-23.5505, -46.6333, -22.9068, -43.1729);
        assert!((d - 361.0).abs() < 5.0, "{d}");
        assert_eq!(haversine_km(1.0, 2.0, 1.0, 2.0), 0.0);
    }

    fn funds(balance: Cents, limit: Cents, used: Cents) -> Funds {
        Funds {
            balance_cents: balance,
            credit_limit_cents: limit,
            credit_used_cents: used,
            last_approved_ms: None,
        }
    }

    /// SPEC §5 rules 6–8 at their boundaries: spending exactly the balance or the credit
    /// left is allowed, a cent more is not; a risk equal to the threshold is approved; the
    /// balance check comes before the risk check.
    #[test]
    fn assess_follows_rules_6_to_8_at_their_boundaries() {
        let p = Params {
            risk_threshold: 0.5,
            ..Params::default()
        };
        let f = funds(1_000, 500, 200);
        let cases = [
            (Mode::Pix, 1_000, 0.0, Status::Approved),
            (Mode::Debito, 1_001, 0.0, Status::InsufficientBalance),
            (Mode::Boleto, 1_001, 0.9, Status::InsufficientBalance),
            (Mode::Credito, 300, 0.0, Status::Approved),
            (Mode::Credito, 301, 0.0, Status::InsufficientLimit),
            (Mode::Credito, 2_000, 0.0, Status::InsufficientLimit),
            (Mode::Pix, 10, 0.5, Status::Approved),
            (Mode::Pix, 10, 0.51, Status::RejectedRisk),
            (Mode::Credito, 10, 0.51, Status::RejectedRisk),
        ];
        for (mode, cents, risk, want) in cases {
            assert_eq!(
                assess(mode, cents, risk, &f, &p),
                want,
                "{mode:?} {cents} {risk}"
            );
        }
    }

    /// Rule 5 and the effects of an approval (SPEC §5).
    #[test]
    fn stale_and_approval_effects() {
        let mut f = funds(1_000, 500, 0);
        assert!(!is_stale(5, &f));
        approve(Mode::Pix, 300, 100, &mut f);
        assert_eq!((f.balance_cents, f.credit_used_cents), (700, 0));
        approve(Mode::Credito, 200, 150, &mut f);
        assert_eq!((f.balance_cents, f.credit_used_cents), (700, 200));
        assert_eq!(f.last_approved_ms, Some(150));
        assert!(is_stale(149, &f));
        assert!(!is_stale(150, &f));
    }
}

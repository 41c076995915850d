//! The sequential reference's reading of what the pipeline parses: used where the
//! pipeline is compared with `vtpga-reference` (the bench's baseline, the model check).

use vtpga_dataflow::Change;
use vtpga_reference::{RefChange, RefRegion, RefRules, RefUser};

/// A parsed control record's change as the reference takes it (SPEC §11).
pub fn ref_change(change: Change) -> RefChange {
    match change {
        Change::User(u) => RefChange::User(RefUser {
            id: u.id,
            region_id: u.region_id,
            balance_cents: u.balance_cents,
            credit_limit_cents: u.credit_limit_cents,
        }),
        Change::UserDelete { id } => RefChange::UserDelete(id),
        Change::Adjust {
            user_id,
            amount_cents,
        } => RefChange::Adjust {
            user_id,
            amount_cents,
        },
        Change::Region(r) => RefChange::Region(RefRegion {
            id: r.id,
            uf: r.uf,
            lat: r.lat,
            lon: r.lon,
        }),
        Change::RegionDelete { id } => RefChange::RegionDelete(id),
        Change::Rules(r) => RefChange::Rules(RefRules {
            version: r.version,
            risk_threshold: r.risk_threshold,
            max_delay_ms: r.max_delay_ms,
            dedup_window_ms: r.dedup_window_ms,
        }),
    }
}

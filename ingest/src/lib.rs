//! How bytes come in. This crate owns everything between the outside world and the
//! pure decision graph of `vtpga-dataflow`: the SPEC §2 reference data (reading and
//! writing `regions.csv` / `users.csv`, the 27 state capitals, synthetic regions and
//! users), the synthetic transaction generator that produces SPEC §3 messages with a
//! controlled mix of faults (used by `vtpga generate`, the embedded source of
//! `vtpga run` and the Kafka producer), the synthetic control records of SPEC §11 that
//! go with it (`changes`), and the SPEC §9 capture file that replay reads, with
//! per-partition offsets assigned as a broker would.
//!
//! Depends on `vtpga-dataflow` only (of the workspace); may not depend on `vtpga-sinks`
//! or `vtpga-web`: what comes in knows nothing of where it goes.

#![warn(missing_docs)]

pub mod capture;
pub mod changes;
pub mod generator;
pub mod kafka;
pub mod live;
pub mod refdata;
pub mod replay;
pub mod source;
#[cfg(test)]
mod testutil;

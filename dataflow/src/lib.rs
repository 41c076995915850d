//! The pure heart of VT.PGA: the domain model (SPEC §2–5), message parsing (§3),
//! the rules and scores (§5–6), and the timely/differential graph that decides
//! transactions and maintains the ten analyses (§7). No sockets, databases or clocks.

#![warn(missing_docs)]

pub mod analyses;
pub mod calendar;
pub mod control;
pub mod graph;
pub mod model;
pub mod parse;
pub mod record;
pub mod rules;

pub use model::*;

//! The `vtpga` library: how the decision graph is run on a timely cluster. The binary's
//! subcommands and the integration tests both build on it.

pub mod args;
pub mod cluster;
pub mod kafka;
pub mod pipeline;
pub mod profile;

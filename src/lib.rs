//! The `vtpga` library: how the decision graph is run on a timely cluster (the graph, its
//! sources and its write path together: `pipeline`), the cluster and Kafka settings, and
//! the flag groups subcommands share. The binary's subcommands and the integration tests
//! both build on it. It may depend on every crate of the workspace; none depends on it.

pub mod args;
pub mod cluster;
pub mod dataflow_view;
pub mod kafka;
pub mod oracle;
pub mod pipeline;

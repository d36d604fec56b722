//! The `squall` binary as a library: configuration, the managed
//! nats-server of `squall up`, the node bootstrap, the REST API and the CLI.
//! The binary (`bin/squall/`) only parses the command line and calls in
//! here, so tests start whole nodes in-process.

pub mod api;
pub mod cli;
pub mod config;
pub mod managed_nats;
pub mod node;
pub mod telemetry;

//! Squall's pure domain model: what a pack, an action, a rule, a trigger and
//! an execution are, how criteria match a trigger payload, and how Jinja
//! templates render action parameters.
//!
//! Nothing here knows about NATS, HTTP or actors: every function is a plain
//! computation on values (the pack loader also reads files), so the whole
//! crate is unit-tested in isolation.

pub mod actionchain;
pub mod aliases;
pub mod criteria;
pub mod execution;
pub mod ids;
pub mod loader;
pub mod model;
pub mod notify;
pub mod orquesta;
pub mod pack_config;
pub mod params;
pub mod policies;
pub mod registration;
pub mod runner_types;
pub mod schedule;
pub mod schema;
pub mod secrets;
pub mod template;
pub mod time;
pub mod triggers;
pub mod yaql;

/// Lowercase hex of the first `n` bytes of `bytes`.
fn hex_prefix(bytes: &[u8], n: usize) -> String {
    hex::encode(&bytes[..n.min(bytes.len())])
}

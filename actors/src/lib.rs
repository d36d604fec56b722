//! Squall's engine: the node's actors (ractor) wired to NATS JetStream.
//!
//! - [`bus`]: the transport — the connection, the streams and buckets every
//!   module declares (created from the node's [`bus::Layout`]), typed
//!   buckets, deduplicated publish.
//! - [`store`]: the execution store — execution and enforcement records,
//!   their lifecycle, and what a record's write sets off.
//! - [`instances`]: trigger instances, published and read back.
//! - [`flow_events`]: the workflow-events protocol, between the execution
//!   store and the workflow engine.
//! - [`content`]: pack registration and the catalog watcher.
//! - [`rules`]: rule partitions — trigger in, enforcement and execution
//!   request out.
//! - [`executions`]: building and submitting execution requests.
//! - [`history`]: the in-memory index behind execution lists.
//! - [`inquiries`]: executions waiting on a person, and their expiry.
//! - [`mirror`]: a bucket kept in memory by a watch.
//! - [`runners`]: runner pools pulling the work queue.
//! - [`policies`]: concurrency slots and retries (StackStorm's action
//!   policies), enforced across the cluster.
//! - [`notifier`]: what an execution's end announces (actiontrigger,
//!   notify) and sets off (retry).
//! - [`orphans`]: the sweep that requests again executions no runner
//!   works on any more.
//! - [`sensors`]: built-in timers.
//! - [`sensor_host`]: Python pack sensors, a process each.
//! - [`workflows`]: the Orquesta workflow engine, one partition actor per
//!   partition.
//! - [`cluster`]: membership heartbeats and partition leases.
//! - [`supervision`]: what the supervisor and the coordinator say to each
//!   other.
//! - [`audit`]: the AUDIT stream, its emitter and its exporters (Splunk
//!   HEC, syslog).
//! - [`node`]: the supervisor that starts and restarts all of the above.
//! - [`retention`]: the garbage collector and purges (StackStorm's TTLs).
//!
//! Invariant: nothing is acknowledged on JetStream before its effect is
//! persisted, and every effect's id derives from its cause.

pub mod action_tokens;
pub mod announce;
pub mod audit;
pub mod audit_event;
pub mod auth;
pub mod bus;
pub mod catalog;
pub mod chains;
pub mod cluster;
pub mod configs;
pub mod consumer;
pub mod content;
pub mod error;
pub mod executions;
pub mod flow_common;
pub mod flow_events;
pub mod history;
pub mod inquiries;
pub mod instances;
pub mod keys;
pub mod lease;
pub mod logins;
pub mod metrics;
pub mod mirror;
pub mod node;
pub mod notifier;
pub mod orphans;
pub mod pack_files;
pub mod pack_install;
pub mod policies;
pub mod pump;
pub mod record_index;
pub mod retention;
pub mod rule_history;
pub mod rules;
pub mod runners;
pub mod sensor_host;
pub mod sensors;
pub mod snapshot;
pub mod store;
pub mod supervision;
pub mod telemetry;
pub mod timing;
pub mod virtualenvs;
pub mod workflows;

pub use error::EngineError;

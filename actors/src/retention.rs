//! Retention: StackStorm's garbage collector (`st2garbagecollector`) and
//! its purge tools (`st2-purge-executions`, `st2-purge-trigger-instances`,
//! `st2-purge-rule-enforcements`).
//!
//! The [`Collector`] runs on the node that owns sensors partition 0 (one
//! node of the cluster, by lease, as a timer runs), every
//! `collection_interval`, and removes what is older than each configured
//! TTL (days): finished executions with their output and workflow state,
//! execution output, trigger instances and rule enforcements. It checks its
//! lease before every batch, so a node that lost it stops within a batch.
//!
//! An execution goes only when it has finished (`succeeded`, `failed`,
//! `timeout`, `canceled`, `abandoned`) and both its request and its end are
//! older than the cut. Executions go by workflow: a root (a top-level
//! execution, or one whose parent is gone) is removed with all its
//! descendants, and only when every one of them has finished, so nothing
//! of a running workflow is touched. The root is removed first: a pass cut
//! short leaves at worst children whose parent is gone, which lists of
//! top-level executions never show and the next pass removes as roots.
//! Executions are purged from the bucket (the history indexes on every
//! node follow the purge markers) in batches, with a pause between
//! batches to leave the bus to the hot path.
//!
//! Output, trigger instances and enforcements are stored in time order (a
//! stream, or a bucket written once per key), so each TTL is one request:
//! the stream is purged below its first message at or after the cut.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use futures::StreamExt;
use serde::Deserialize;
use squall_domain::time::{self, Timestamp};

use crate::bus::{Bus, ENFORCEMENTS_BUCKET, OUTPUT_STREAM, TRIGGERS_STREAM, WORKFLOWS_BUCKET};
use crate::error::{bus_err, EngineError};
use crate::history::{HistoryHandle, PurgeFilter};
use crate::lease::LeaseValidity;

/// Executions whose roots are examined per batch.
const BATCH_ROOTS: usize = 200;
/// Deletions in flight at once.
const IN_FLIGHT: usize = 16;

/// StackStorm's `[garbagecollector]` settings. A TTL of `None` keeps
/// that kind of object for ever (StackStorm's default for all of them
/// but output, which our `OUTPUT` stream bounds to 7 days anyway).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Between passes (StackStorm: 600 s).
    pub collection_interval: Duration,
    /// Between object types within a pass (StackStorm: 2 s).
    pub sleep_delay: Duration,
    /// Days an execution (with its output and workflow state) is kept.
    pub action_executions_ttl: Option<u32>,
    /// Days execution output is kept.
    pub action_executions_output_ttl: Option<u32>,
    /// Days a trigger instance is kept.
    pub trigger_instances_ttl: Option<u32>,
    /// Days a rule enforcement is kept.
    pub rule_enforcements_ttl: Option<u32>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            collection_interval: Duration::from_secs(600),
            sleep_delay: Duration::from_secs(2),
            action_executions_ttl: None,
            action_executions_output_ttl: None,
            trigger_instances_ttl: None,
            rule_enforcements_ttl: None,
        }
    }
}

impl Settings {
    /// Whether any TTL is set.
    pub fn enabled(&self) -> bool {
        self.action_executions_ttl.is_some()
            || self.action_executions_output_ttl.is_some()
            || self.trigger_instances_ttl.is_some()
            || self.rule_enforcements_ttl.is_some()
    }
}

/// StackStorm's smallest TTL, in days (`MINIMUM_TTL_DAYS`).
pub const MINIMUM_TTL_DAYS: u32 = 1;

/// What one pass or purge removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Removed {
    pub executions: u64,
    /// Old finished roots kept because part of their workflow still runs.
    pub kept_running: u64,
    pub output_messages: u64,
    pub trigger_instances: u64,
    pub rule_enforcements: u64,
}

static PASSES: AtomicU64 = AtomicU64::new(0);
static REMOVED_EXECUTIONS: AtomicU64 = AtomicU64::new(0);
static REMOVED_OUTPUT: AtomicU64 = AtomicU64::new(0);
static REMOVED_TRIGGER_INSTANCES: AtomicU64 = AtomicU64::new(0);
static REMOVED_ENFORCEMENTS: AtomicU64 = AtomicU64::new(0);
static LAST_PASS_MS: AtomicU64 = AtomicU64::new(0);

fn count(removed: &Removed) {
    REMOVED_EXECUTIONS.fetch_add(removed.executions, Ordering::Relaxed);
    REMOVED_OUTPUT.fetch_add(removed.output_messages, Ordering::Relaxed);
    REMOVED_TRIGGER_INSTANCES.fetch_add(removed.trigger_instances, Ordering::Relaxed);
    REMOVED_ENFORCEMENTS.fetch_add(removed.rule_enforcements, Ordering::Relaxed);
}

/// Retention's counts on this node, observed by the node's metrics
/// ([`crate::metrics`]: `squall_retention_passes_total`,
/// `squall_retention_removed_total{kind}` (by collection passes and
/// manual purges) and `squall_retention_last_pass_seconds`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    pub passes: u64,
    /// Removed, by kind: `executions`, `output_messages`,
    /// `trigger_instances`, `rule_enforcements`.
    pub removed: [(&'static str, u64); 4],
    pub last_pass: std::time::Duration,
}

/// The counts now.
pub fn counts() -> Counts {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    Counts {
        passes: load(&PASSES),
        removed: [
            ("executions", load(&REMOVED_EXECUTIONS)),
            ("output_messages", load(&REMOVED_OUTPUT)),
            ("trigger_instances", load(&REMOVED_TRIGGER_INSTANCES)),
            ("rule_enforcements", load(&REMOVED_ENFORCEMENTS)),
        ],
        last_pass: std::time::Duration::from_millis(load(&LAST_PASS_MS)),
    }
}

/// Removes the executions `filter` names (StackStorm's
/// `purge_executions` without `purge_incomplete`), by workflow, while
/// `may_continue` holds (checked before each batch).
pub async fn purge_executions(
    bus: &Bus,
    history: &HistoryHandle,
    filter: &PurgeFilter,
    may_continue: &(dyn Fn() -> bool + Sync),
) -> Result<Removed, EngineError> {
    let mut removed = Removed::default();
    let mut cursor: Option<String> = None;
    loop {
        if !may_continue() {
            break;
        }
        let (roots, doomed) = {
            let h = history.read();
            let roots = h.purgeable(filter, cursor.as_deref(), BATCH_ROOTS);
            let mut doomed: Vec<Vec<(String, String)>> = Vec::new();
            for root in &roots {
                let mut group = vec![root.clone()];
                group.extend(h.descendants(root, None));
                let infos: Vec<_> = group.iter().map(|id| h.info(id)).collect();
                if infos
                    .iter()
                    .any(|i| !i.as_ref().is_some_and(|i| i.status.is_completed()))
                {
                    removed.kept_running += 1;
                    continue;
                }
                doomed.push(
                    group
                        .into_iter()
                        .zip(infos)
                        .map(|(id, i)| (id, i.map(|i| i.runner).unwrap_or_default()))
                        .collect(),
                );
            }
            (roots, doomed)
        };
        let Some(last) = roots.last() else { break };
        cursor = Some(last.clone());
        let results: Vec<Result<u64, EngineError>> = futures::stream::iter(doomed)
            .map(|group| remove_group(bus, group))
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        for r in results {
            removed.executions += r?;
        }
        tokio::time::sleep(crate::timing::PURGE_BATCH_PAUSE).await;
    }
    count(&Removed {
        executions: removed.executions,
        ..Removed::default()
    });
    Ok(removed)
}

/// Removes one workflow (or lone execution): the root first, then its
/// descendants, each with its output and workflow state.
async fn remove_group(bus: &Bus, group: Vec<(String, String)>) -> Result<u64, EngineError> {
    let mut n = 0;
    for (id, runner) in group {
        bus.executions
            .raw()
            .purge(&id)
            .await
            .map_err(|e| bus_err(&format!("purge execution {id}"), e))?;
        n += 1;
        bus.output
            .purge()
            .filter(format!("squall.output.{id}"))
            .await
            .map_err(|e| bus_err(&format!("purge the output of {id}"), e))?;
        if runner == "orquesta" || runner == "action-chain" {
            let workflows = bus.workflows.stream.clone();
            for subject in [
                format!("$KV.{WORKFLOWS_BUCKET}.{id}"),
                format!("$KV.{WORKFLOWS_BUCKET}.{id}.>"),
            ] {
                workflows
                    .purge()
                    .filter(subject)
                    .await
                    .map_err(|e| bus_err(&format!("purge the workflow state of {id}"), e))?;
            }
        }
    }
    Ok(n)
}

#[derive(Debug, Deserialize)]
struct MsgGet {
    message: MsgSeq,
}

#[derive(Debug, Deserialize)]
struct MsgSeq {
    seq: u64,
}

/// JetStream's "no message found".
const NO_MESSAGE_FOUND: u64 = 10037;

/// Purges every message of `stream` stored before `cut`; how many went.
pub async fn purge_stream_before(
    bus: &Bus,
    stream_name: &str,
    cut: Timestamp,
) -> Result<u64, EngineError> {
    let op = format!("purge {stream_name} before {}", time::format(&cut));
    let request = serde_json::json!({ "start_time": time::format(&cut) });
    let first_kept: jetstream::response::Response<MsgGet> = bus
        .js
        .request(format!("STREAM.MSG.GET.{stream_name}"), &request)
        .await
        .map_err(|e| bus_err(&op, e))?;
    let mut stream: stream::Stream = bus
        .js
        .get_stream(stream_name)
        .await
        .map_err(|e| bus_err(&op, e))?;
    let purge = match first_kept {
        jetstream::response::Response::Ok(found) => {
            stream.purge().sequence(found.message.seq).await
        }
        jetstream::response::Response::Err { error }
            if error.error_code().0 == NO_MESSAGE_FOUND =>
        {
            // Nothing at or after the cut: all of it is older.
            let empty = stream
                .info()
                .await
                .map_err(|e| bus_err(&op, e))?
                .state
                .messages
                == 0;
            if empty {
                return Ok(0);
            }
            stream.purge().await
        }
        jetstream::response::Response::Err { error } => return Err(bus_err(&op, error)),
    };
    Ok(purge.map_err(|e| bus_err(&op, e))?.purged)
}

/// Purges trigger instances stored before `cut`.
pub async fn purge_trigger_instances(bus: &Bus, cut: Timestamp) -> Result<u64, EngineError> {
    let n = purge_stream_before(bus, TRIGGERS_STREAM, cut).await?;
    REMOVED_TRIGGER_INSTANCES.fetch_add(n, Ordering::Relaxed);
    Ok(n)
}

/// Purges rule enforcements written before `cut`.
pub async fn purge_rule_enforcements(bus: &Bus, cut: Timestamp) -> Result<u64, EngineError> {
    let n = purge_stream_before(bus, &format!("KV_{ENFORCEMENTS_BUCKET}"), cut).await?;
    REMOVED_ENFORCEMENTS.fetch_add(n, Ordering::Relaxed);
    Ok(n)
}

/// Purges execution output stored before `cut`.
pub async fn purge_output(bus: &Bus, cut: Timestamp) -> Result<u64, EngineError> {
    let n = purge_stream_before(bus, OUTPUT_STREAM, cut).await?;
    REMOVED_OUTPUT.fetch_add(n, Ordering::Relaxed);
    Ok(n)
}

/// The garbage collector of one node, run while it owns sensors
/// partition 0.
#[derive(Debug, Clone)]
pub struct Collector {
    pub bus: Bus,
    pub history: HistoryHandle,
    pub settings: Settings,
    /// Until when this node's leases hold: checked before every batch.
    pub lease: LeaseValidity,
}

fn days_before(now: Timestamp, days: u32) -> Timestamp {
    now - chrono::Duration::days(i64::from(days))
}

impl Collector {
    /// Runs a pass every `collection_interval`, for as long as the task
    /// lives (its partition actor aborts it when the partition goes).
    pub async fn run(self) {
        let mut every = tokio::time::interval(self.settings.collection_interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if !self.history.is_ready() || !self.lease.valid() {
                continue;
            }
            self.pass().await;
        }
    }

    /// One collection pass: each configured kind in turn, logged and
    /// counted.
    pub async fn pass(&self) -> Removed {
        let started = Instant::now();
        let now = time::now();
        let s = &self.settings;
        let mut removed = Removed::default();
        let mut failed = Vec::new();
        let lease = self.lease.clone();
        let may_continue = move || lease.valid();
        if let Some(days) = s.action_executions_ttl {
            let filter = PurgeFilter {
                before: days_before(now, days),
                action: None,
                status: None,
            };
            match purge_executions(&self.bus, &self.history, &filter, &may_continue).await {
                Ok(r) => {
                    removed.executions = r.executions;
                    removed.kept_running = r.kept_running;
                }
                Err(e) => failed.push(("executions", e)),
            }
            tokio::time::sleep(s.sleep_delay).await;
        }
        let by_time: [(Option<u32>, &str); 3] = [
            (s.action_executions_output_ttl, "output"),
            (s.trigger_instances_ttl, "trigger_instances"),
            (s.rule_enforcements_ttl, "rule_enforcements"),
        ];
        for (ttl, kind) in by_time {
            let Some(days) = ttl else { continue };
            if !self.lease.valid() {
                break;
            }
            let cut = days_before(now, days);
            let result = match kind {
                "output" => purge_output(&self.bus, cut).await,
                "trigger_instances" => purge_trigger_instances(&self.bus, cut).await,
                _ => purge_rule_enforcements(&self.bus, cut).await,
            };
            match result {
                Ok(n) if kind == "output" => removed.output_messages = n,
                Ok(n) if kind == "trigger_instances" => removed.trigger_instances = n,
                Ok(n) => removed.rule_enforcements = n,
                Err(e) => failed.push((kind, e)),
            }
            tokio::time::sleep(s.sleep_delay).await;
        }
        let took = started.elapsed();
        PASSES.fetch_add(1, Ordering::Relaxed);
        LAST_PASS_MS.store(took.as_millis() as u64, Ordering::Relaxed);
        tracing::info!(
            executions = removed.executions,
            kept_running = removed.kept_running,
            output_messages = removed.output_messages,
            trigger_instances = removed.trigger_instances,
            rule_enforcements = removed.rule_enforcements,
            took_ms = took.as_millis() as u64,
            "garbage collection pass done"
        );
        for (kind, e) in failed {
            tracing::warn!(kind, error = %e, "garbage collection of {kind} failed; next pass retries");
        }
        removed
    }
}

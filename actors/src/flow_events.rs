//! The workflow-events protocol: what happens to a workflow (started,
//! canceled, paused, a task run ended...), as messages on the `WORKFLOWS`
//! stream, `squall.wf.<partition>.<workflow id>`. Producers (the runner
//! that claims a workflow execution, the API, the execution store when a
//! task's record changes) publish here; the workflow engine
//! ([`crate::workflows`], [`crate::chains`]) consumes. Neither side needs
//! the other: this module knows the bus and the records only.

use async_nats::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use squall_domain::execution::{ExecutionRecord, Status};

use crate::bus::{to_bytes, Bus};
use crate::error::EngineError;

/// The runner type whose executions are Orquesta workflows.
pub const ORQUESTA_RUNNER: &str = "orquesta";

/// The runner type whose executions are ActionChains.
pub const CHAIN_RUNNER: &str = "action-chain";

/// Whether executions of runner `name` run on the workflow engine
/// (Orquesta workflows and ActionChains) rather than on a runner: they
/// are the ones this protocol's events are about.
pub fn is_workflow_runner(name: &str) -> bool {
    name == ORQUESTA_RUNNER || name == CHAIN_RUNNER
}

/// Subject of a workflow's events.
pub fn subject(partition: u32, workflow_id: &str) -> String {
    format!("squall.wf.{partition}.{workflow_id}")
}

/// Something that happened to a workflow.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum FlowEvent {
    /// Its execution was claimed: run it.
    Start {
        definition: String,
        input: Map<String, Value>,
    },
    /// An ActionChain's execution was claimed: run it ([`crate::chains`]).
    StartChain {
        definition: String,
        input: Map<String, Value>,
    },
    /// Someone asked to cancel it.
    Cancel,
    /// Someone (or its parent) asked to pause it.
    Pause,
    /// Someone (or its parent) asked to resume it.
    Resume,
    /// One of its task runs paused (a child workflow paused, or an
    /// inquiry waits for its answer).
    TaskPaused {
        run_id: String,
        execution_id: String,
        /// It is `pending` (an inquiry waits), not a paused workflow.
        #[serde(default)]
        pending: bool,
    },
    /// One of its paused task runs runs again.
    TaskResumed {
        run_id: String,
        execution_id: String,
    },
    /// One of its task runs ended.
    TaskDone {
        run_id: String,
        execution_id: String,
        succeeded: bool,
        /// It was canceled: as in Orquesta, that cancels the workflow.
        #[serde(default)]
        canceled: bool,
        /// Its final status (a chain tells `timeout` from `failed`).
        #[serde(default)]
        status: Option<Status>,
        result: Value,
    },
}

/// An event on the bus.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowEventMsg {
    #[serde(default)]
    pub v: u32,
    pub workflow_id: String,
    #[serde(flatten)]
    pub event: FlowEvent,
}

/// Publishes `event` for `workflow_id`; `msg_id` makes a repeat a no-op.
pub async fn publish(
    bus: &Bus,
    workflow_id: &str,
    msg_id: &str,
    event: FlowEvent,
) -> Result<(), EngineError> {
    publish_traced(bus, workflow_id, msg_id, event, None).await
}

/// [`publish`], in the trace `traceparent` names (a task's, kept with its
/// record) rather than the current span's.
async fn publish_traced(
    bus: &Bus,
    workflow_id: &str,
    msg_id: &str,
    event: FlowEvent,
    traceparent: Option<&str>,
) -> Result<(), EngineError> {
    let msg = FlowEventMsg {
        v: 1,
        workflow_id: workflow_id.to_string(),
        event,
    };
    let subject = subject(bus.partition_of(workflow_id), workflow_id);
    let mut headers = HeaderMap::new();
    crate::telemetry::inject(&mut headers, traceparent, workflow_id);
    bus.publish(subject, msg_id, headers, to_bytes(&msg)?).await
}

/// When `record` is a workflow's task run that has ended, paused (or gone
/// `pending`) or runs again after a pause, tells the workflow. Idempotent:
/// the message id is the execution's, with its status log's length for
/// the changes that can happen more than once.
pub async fn notify_parent(bus: &Bus, record: &ExecutionRecord) -> Result<(), EngineError> {
    // Every write passes here: read, do not copy, the context.
    let orquesta = record.context.get("orquesta");
    let field = |name: &str| orquesta.and_then(|o| o.get(name)).and_then(Value::as_str);
    // A chain's node: its chain is its parent; the chain matches the end
    // by execution id.
    let chain = || {
        let node = record.context.get("chain")?.get("name")?.as_str()?;
        let parent = record
            .context
            .get("parent")?
            .get("execution_id")?
            .as_str()?;
        Some((parent, node))
    };
    let (workflow_id, run_id) = match (field("workflow_execution_id"), field("task_id")) {
        (Some(workflow), Some(run)) => (workflow, run),
        _ => match chain() {
            Some(found) => found,
            None => return Ok(()),
        },
    };
    let (run_id, execution_id, n) = (run_id.to_string(), record.id.clone(), record.log.len());
    let (event, msg_id) = match record.status {
        s if s.is_completed() => (
            FlowEvent::TaskDone {
                run_id,
                execution_id,
                succeeded: s == Status::Succeeded,
                canceled: s == Status::Canceled,
                status: Some(s),
                result: record.result.clone(),
            },
            format!("wfdone-{}", record.id),
        ),
        Status::Paused | Status::Pending => (
            FlowEvent::TaskPaused {
                run_id,
                execution_id,
                pending: record.status == Status::Pending,
            },
            format!("wfpaused-{}-{n}", record.id),
        ),
        Status::Running if resumed(record) => (
            FlowEvent::TaskResumed {
                run_id,
                execution_id,
            },
            format!("wfresumed-{}-{n}", record.id),
        ),
        _ => return Ok(()),
    };
    publish_traced(
        bus,
        workflow_id,
        &msg_id,
        event,
        record.traceparent.as_deref(),
    )
    .await
}

/// Whether `record` just went back to `running` after a pause.
fn resumed(record: &ExecutionRecord) -> bool {
    let mut statuses = record.log.iter().rev().map(|e| e.status);
    statuses.next() == Some(Status::Running)
        && matches!(
            statuses.next(),
            Some(Status::Paused | Status::Pausing | Status::Resuming)
        )
}

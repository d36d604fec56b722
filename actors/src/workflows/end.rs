//! A workflow execution's own record: its end, its pause and resume, and
//! the spans of the workflow and its tasks.

use serde_json::Value;
use squall_domain::execution::{ExecutionRecord, Status};
use squall_domain::orquesta::conductor::FlowStatus;

use crate::bus::Bus;
use crate::error::EngineError;
use crate::flow_common::{end_execution, workflow_span};

/// Writes a workflow execution's end (once; later calls only announce the
/// end again, in case a crash came between the write and its announcement).
pub(super) async fn finish_execution(
    bus: &Bus,
    id: &str,
    status: FlowStatus,
    result: Value,
) -> Result<(), EngineError> {
    let status = match status {
        FlowStatus::Succeeded => Status::Succeeded,
        FlowStatus::Failed => Status::Failed,
        FlowStatus::Canceled => Status::Canceled,
        _ => return Ok(()),
    };
    end_execution(bus, id, status, result).await
}

/// The `traceparent` of the `workflow.task` span of the task run whose
/// execution is `execution_id`, a child of its workflow's span.
pub(super) fn task_span(workflow: &ExecutionRecord, execution_id: &str) -> Option<String> {
    crate::telemetry::derived(&workflow_span(workflow)?, &format!("task:{execution_id}"))
}

/// Records the `workflow.task` span of a task run that ended (when spans
/// are on): from its request to now, under the span of `workflow` (its
/// execution record as the partition keeps it: the trace never changes).
pub(super) async fn record_task_span(
    bus: &Bus,
    workflow: &ExecutionRecord,
    execution_id: &str,
    status: Status,
) -> Result<(), EngineError> {
    if !crate::telemetry::on() {
        return Ok(());
    }
    let Some((task, _)) = bus.execution(execution_id).await? else {
        return Ok(());
    };
    let (Some(parent), Some(me)) = (workflow_span(workflow), task_span(workflow, execution_id))
    else {
        return Ok(());
    };
    let name = task
        .context
        .get("orquesta")
        .and_then(|o| o.get("task_name"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    crate::telemetry::record(crate::telemetry::Finished {
        name: "workflow.task",
        traceparent: &me,
        parent: &parent,
        start: task.start_timestamp.into(),
        attributes: vec![
            opentelemetry::KeyValue::new("squall.task.name", name),
            opentelemetry::KeyValue::new("squall.execution.id", execution_id.to_string()),
            opentelemetry::KeyValue::new("squall.action.ref", task.action.action_ref.clone()),
            opentelemetry::KeyValue::new("squall.execution.status", status.as_str()),
            opentelemetry::KeyValue::new(
                "squall.trace_tag",
                crate::executions::trace_tag(workflow).to_string(),
            ),
        ],
    });
    Ok(())
}

/// Writes a workflow execution's pause or resume: `pausing`, `paused`, or
/// `running` again. An execution that has ended or is being canceled, or
/// already says so, is left alone.
pub(super) async fn set_status(bus: &Bus, id: &str, status: FlowStatus) -> Result<(), EngineError> {
    let (to, from): (Status, &[Status]) = match status {
        FlowStatus::Pausing => (Status::Pausing, &[Status::Running]),
        FlowStatus::Paused => (Status::Paused, &[Status::Running, Status::Pausing]),
        FlowStatus::Running => (
            Status::Running,
            &[Status::Pausing, Status::Paused, Status::Resuming],
        ),
        _ => return Ok(()),
    };
    crate::flow_common::write_own_status(bus, id, to, from, None).await
}

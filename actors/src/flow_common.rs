//! What both workflow engines share: the context of a workflow partition,
//! which runs Orquesta workflows ([`crate::workflows`]) and ActionChains
//! ([`crate::chains`]) alike, and the write of a workflow execution's end.
//! It sits below both, so the chain engine needs nothing of Orquesta's
//! and `workflows` dispatches to `chains` without a cycle.

use serde_json::Value;
use squall_domain::execution::{ExecutionRecord, Status};
use squall_domain::secrets::Cipher;
use squall_domain::time;

use crate::bus::Bus;
use crate::error::{bus_err, EngineError};
use crate::keys::KeyCache;

/// Everything a workflow partition needs.
#[derive(Debug, Clone)]
pub struct WorkflowContext {
    pub bus: Bus,
    pub catalog: crate::catalog::CatalogHandle,
    /// Renders task actions' parameters.
    pub renderer: std::sync::Arc<squall_domain::template::Renderer>,
    /// Renders the workflows' own Jinja (`use_none`'s marker kept, as
    /// Orquesta keeps it).
    pub expressions: std::sync::Arc<squall_domain::template::Renderer>,
    pub kv: KeyCache,
    /// Pack configs, for `config_context` in task actions' parameters.
    pub configs: crate::configs::ConfigCache,
    /// Opens secrets for `st2kv(key, decrypt=true)`.
    pub cipher: Cipher,
    /// The public API URL, for `ctx().st2.api_url`.
    pub api_url: String,
}

/// The `traceparent` of workflow execution `workflow`'s `workflow.run`
/// span: derived from its record's, so every node knows it, before the
/// span is recorded at the workflow's end.
pub(crate) fn workflow_span(workflow: &ExecutionRecord) -> Option<String> {
    crate::telemetry::derived(
        workflow.traceparent.as_deref()?,
        &format!("workflow:{}", workflow.id),
    )
}

/// Writes the end of a workflow execution (Orquesta or ActionChain) with
/// `status` (once; later calls change nothing).
pub(crate) async fn end_execution(
    bus: &Bus,
    id: &str,
    status: Status,
    result: Value,
) -> Result<(), EngineError> {
    for _ in 0..10 {
        let Some((mut rec, rev)) = bus.execution(id).await? else {
            return Ok(());
        };
        if rec.status.is_completed() {
            return crate::notifier::ended(bus, &rec).await;
        }
        rec.result = result.clone();
        let now = time::now();
        rec.transition(status, now);
        if bus.update_execution(&rec, rev).await?.is_some() {
            crate::metrics::workflow_finished(
                status,
                (now - rec.start_timestamp).to_std().unwrap_or_default(),
            );
            if let (Some(me), Some(parent)) = (workflow_span(&rec), rec.traceparent.as_deref()) {
                crate::telemetry::record(crate::telemetry::Finished {
                    name: "workflow.run",
                    traceparent: &me,
                    parent,
                    start: rec.start_timestamp.into(),
                    attributes: vec![
                        opentelemetry::KeyValue::new("squall.execution.id", id.to_string()),
                        opentelemetry::KeyValue::new(
                            "squall.action.ref",
                            rec.action.action_ref.clone(),
                        ),
                        opentelemetry::KeyValue::new("squall.execution.status", status.as_str()),
                        opentelemetry::KeyValue::new(
                            "squall.trace_tag",
                            crate::executions::trace_tag(&rec).to_string(),
                        ),
                    ],
                });
            }
            tracing::info!(workflow = %id, status = %status, "workflow finished");
            return Ok(());
        }
    }
    Err(bus_err("finish workflow", "too many concurrent changes"))
}

/// Writes a workflow's or chain's own status `to` (`pausing`, `paused`,
/// `running` again), with `result` when given, if its execution is in one
/// of `from`; in any other status (ended, being canceled, already `to`) it
/// is left alone.
pub(crate) async fn write_own_status(
    bus: &Bus,
    id: &str,
    to: Status,
    from: &[Status],
    result: Option<&Value>,
) -> Result<(), EngineError> {
    for _ in 0..10 {
        let Some((mut rec, rev)) = bus.execution(id).await? else {
            return Ok(());
        };
        if !from.contains(&rec.status) {
            return Ok(());
        }
        if let Some(result) = result {
            rec.result = result.clone();
        }
        rec.transition(to, time::now());
        if bus.update_execution(&rec, rev).await?.is_some() {
            tracing::info!(execution = %id, status = %to, runner = %rec.runner.name, "workflow status");
            return Ok(());
        }
    }
    Err(bus_err(
        "set workflow status",
        "too many concurrent changes",
    ))
}

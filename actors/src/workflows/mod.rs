//! The workflow engine: Orquesta workflows, durable and partitioned.
//!
//! A workflow execution is claimed by a runner like any other; for the
//! `orquesta` runner the runner reads the definition and publishes a
//! `start` event instead of running a process. Every event of a workflow
//! goes to `squall.wf.<partition>.<workflow id>` on the `WORKFLOWS` stream;
//! one [`WorkflowPartition`] actor per partition consumes them in order.
//! For each event it takes the workflow's record from its memory (or the
//! `workflows` bucket), applies the pure [`conductor`], carries out the
//! commands it produced, then stores the new state with one
//! compare-and-swap and acknowledges. Commands are idempotent — a task
//! run's execution id derives from the workflow id and the run id — so a
//! crash before the write replays the event, which decides the same
//! commands again, without running a task twice. (A record stored with a
//! non-empty `outbox`, by an older version, has it carried out first.)
//! A definition is parsed and inspected once per partition and content
//! ([`cache::SpecCache`]), not per event. A task's final record publishes
//! a `task done` event to its workflow (from [`Bus::update_execution`],
//! through [`crate::flow_events`]); nothing polls.
//!
//! Its parts: [`partition`] (the consumer's handler, which hands each
//! event to Orquesta or to [`crate::chains`]), [`events`] (applying one
//! event and carrying out its commands), [`sweep`] (reconciling running
//! workflows with their tasks), [`cache`] (records and definitions kept
//! between events), [`record`] (the stored record) and [`end`] (the
//! execution's end, pause and resume, and its spans).

mod cache;
mod end;
mod events;
mod partition;
mod record;
mod sweep;

use std::sync::Arc;

use serde_json::{json, Map};
use squall_domain::execution::{ExecutionRecord, Status};
use squall_domain::orquesta::conductor::{self, Flow, FlowStatus};
use squall_domain::orquesta::WorkflowSpec;

use crate::bus::Bus;
use crate::error::EngineError;
use crate::flow_common::end_execution;
use crate::flow_events::{publish, FlowEvent};
use cache::spec_of;
use end::finish_execution;
use record::{read_entry, read_record};

pub use crate::flow_common::WorkflowContext;

pub use crate::flow_events::is_workflow_runner;
/// The runner type whose executions are workflows.
pub use crate::flow_events::ORQUESTA_RUNNER as RUNNER;

pub use partition::WorkflowPartition;
pub use record::WorkflowRecord;

/// Durable consumer name of a workflow partition.
pub fn consumer_name(partition: u32) -> String {
    format!("workflows-{partition}")
}

/// Called by the runner that claimed a workflow execution: reads its
/// definition and starts it. A definition that cannot be read ends the
/// execution `failed`.
pub async fn start(
    bus: &Bus,
    record: &ExecutionRecord,
    definition: Result<String, String>,
) -> Result<(), EngineError> {
    match definition {
        Ok(definition) => {
            let input = record.parameters.clone();
            let event = if record.runner.name == crate::chains::RUNNER {
                FlowEvent::StartChain { definition, input }
            } else {
                FlowEvent::Start { definition, input }
            };
            publish(bus, &record.id, &format!("wfstart-{}", record.id), event).await
        }
        Err(message) if record.runner.name == crate::chains::RUNNER => {
            end_execution(bus, &record.id, Status::Failed, json!({ "error": message })).await
        }
        Err(message) => {
            finish_execution(
                bus,
                &record.id,
                FlowStatus::Failed,
                json!({"errors": [{"type": "error", "message": message}]}),
            )
            .await
        }
    }
}

impl WorkflowContext {
    /// `spec` with this node's datastore for `st2kv()`; the secrets its
    /// expressions open are audited for `audit`'s workflow execution.
    fn flow<'a>(
        &'a self,
        spec: &'a WorkflowSpec,
        audit: &'a crate::audit::decrypt::Workflow<'_>,
    ) -> Flow<'a> {
        Flow::new(spec)
            .with_datastore(
                &self.expressions,
                Arc::new(self.kv.clone()),
                Some(self.cipher.clone()),
            )
            .with_secret_scope(audit)
    }
}

/// Whether workflow execution `id` can be re-run from `tasks`: `Err(why)`
/// when it cannot (it has not finished, or a task never ran).
pub async fn check_rerun(
    bus: &Bus,
    id: &str,
    tasks: &[String],
) -> Result<Result<(), String>, EngineError> {
    let Some((record, _)) = read_record(bus, id).await? else {
        return Ok(Err(format!(
            "workflow execution {id} never started, so it has no tasks to re-run"
        )));
    };
    let spec = match spec_of(&record.definition) {
        Ok(spec) => spec,
        Err(_) => {
            return Ok(Err(format!(
                "workflow execution {id}'s definition is invalid"
            )))
        }
    };
    Ok(conductor::rerun(&Flow::new(&spec), &record.state, tasks, &[], Map::new()).map(|_| ()))
}

/// The definition workflow execution `id` runs, as it was when it started
/// (`None` if it never started).
pub async fn definition_of(bus: &Bus, id: &str) -> Result<Option<String>, EngineError> {
    Ok(read_entry::<WorkflowRecord>(bus, id)
        .await?
        .map(|(record, _)| record.definition))
}

//! What a partition keeps in memory between events: workflow records as it
//! last stored them, their execution records, and parsed definitions.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use squall_domain::execution::ExecutionRecord;
use squall_domain::orquesta::{self, WorkflowSpec};

use super::record::WorkflowRecord;
use crate::bus::Bus;
use crate::error::{bus_err, EngineError};

/// Workflow records as this partition last stored them, with their
/// revisions: an event on a workflow in progress neither reads its record
/// nor its items' values back. A record someone else changed since fails
/// its compare-and-swap and is read afresh. Beside them, each workflow's
/// execution record as first read (what commands use of it — id, start,
/// user, parent, trace — never changes), and the parsed definitions.
#[derive(Debug, Default)]
pub(super) struct RecordCache {
    pub(super) records: HashMap<String, (WorkflowRecord, u64)>,
    pub(super) executions: HashMap<String, Arc<ExecutionRecord>>,
    pub(super) specs: SpecCache,
}

/// Definitions parsed and inspected, by their text (the content is the
/// key: a workflow keeps the definition it started with, so two versions
/// of one action are two entries). Bounded: cleared when full.
#[derive(Debug, Default)]
pub(super) struct SpecCache(HashMap<String, Arc<WorkflowSpec>>);

/// Definitions a partition keeps parsed at most.
pub(super) const CACHED_SPECS: usize = 256;

impl SpecCache {
    /// The parsed definition, or Orquesta's inspection errors (not kept:
    /// a workflow with them fails at its start).
    pub(super) fn get(&mut self, definition: &str) -> Result<Arc<WorkflowSpec>, Vec<Value>> {
        if let Some(spec) = self.0.get(definition) {
            return Ok(spec.clone());
        }
        let spec = Arc::new(spec_of(definition)?);
        if self.0.len() >= CACHED_SPECS {
            self.0.clear();
        }
        self.0.insert(definition.to_string(), spec.clone());
        Ok(spec)
    }
}

/// Workflows a partition keeps in memory at most (in-flight ones; finished
/// ones leave at once).
pub(super) const CACHED_RECORDS: usize = 4096;

impl RecordCache {
    pub(super) fn take(&mut self, id: &str) -> Option<(WorkflowRecord, u64)> {
        self.records.remove(id)
    }

    pub(super) fn contains(&self, id: &str) -> bool {
        self.records.contains_key(id)
    }

    pub(super) fn keep(&mut self, record: WorkflowRecord, revision: u64) {
        if record.state.status.is_finished() {
            self.executions.remove(&record.id);
            return;
        }
        if self.records.len() >= CACHED_RECORDS {
            self.records.clear();
            self.executions.clear();
        }
        self.records.insert(record.id.clone(), (record, revision));
    }

    /// Workflow `id`'s execution record read afresh from the leader (and
    /// kept): at its start, whose status tells whether a pause, resume or
    /// cancel came first.
    pub(super) async fn fresh_execution(
        &mut self,
        bus: &Bus,
        id: &str,
    ) -> Result<Arc<ExecutionRecord>, EngineError> {
        let found = bus.execution_from_leader(id).await?;
        self.keep_execution(id, found)
    }

    /// Workflow `id`'s execution record: from memory, else read once.
    pub(super) async fn execution(
        &mut self,
        bus: &Bus,
        id: &str,
    ) -> Result<Arc<ExecutionRecord>, EngineError> {
        if let Some(execution) = self.executions.get(id) {
            return Ok(execution.clone());
        }
        let found = bus.execution(id).await?;
        self.keep_execution(id, found)
    }

    /// Keeps the execution record just read for workflow `id`; one not
    /// found is not visible yet (a start is published only for a stored
    /// execution), so the event is retried.
    fn keep_execution(
        &mut self,
        id: &str,
        found: Option<(ExecutionRecord, u64)>,
    ) -> Result<Arc<ExecutionRecord>, EngineError> {
        let Some((execution, _)) = found else {
            return Err(bus_err("read workflow execution", "not visible yet"));
        };
        let execution = Arc::new(execution);
        self.executions.insert(id.to_string(), execution.clone());
        Ok(execution)
    }
}

/// The spec of a stored definition; Orquesta's inspection errors in
/// StackStorm's shape when it has any.
pub(super) fn spec_of(definition: &str) -> Result<WorkflowSpec, Vec<Value>> {
    let (spec, issues) = orquesta::inspect(definition);
    match spec {
        Some(spec) if issues.is_empty() => Ok(spec),
        _ => Err(orquesta::inspection_errors(&issues, Vec::new())),
    }
}

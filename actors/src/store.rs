//! The execution store: execution records and rule enforcements in their
//! buckets, and the record's lifecycle — created once, requested on the
//! `EXECUTIONS` work queue, then changed only by compare-and-swap. Every
//! write of a record passes [`Bus::update_execution`], which owns what a
//! write sets off: an end gives back concurrency slots and announces the
//! execution ([`crate::notifier::ended`]); a workflow task's end, pause or
//! resume tells its workflow ([`crate::flow_events::notify_parent`]).

use async_nats::HeaderMap;
use futures::StreamExt;
use squall_domain::execution::{ExecutionRecord, RuleEnforcement};

use crate::bus::{execution_subject, to_bytes, Bus, LIST_TIMEOUT};
use crate::error::{bus_err, EngineError};

pub use squall_domain::execution::{CreatedRecord, ExecutionRequest};

impl Bus {
    /// Every rule enforcement id, newest first (ids begin with their
    /// second).
    /// A listing that does not finish within [`LIST_TIMEOUT`] (its consumer
    /// stalled: a server went away) is an error to retry, not a hang.
    pub async fn enforcement_ids(&self) -> Result<Vec<String>, EngineError> {
        let list = async {
            let mut keys = self
                .enforcements
                .raw()
                .keys()
                .await
                .map_err(|e| bus_err("list enforcements", e))?;
            let mut ids = Vec::new();
            while let Some(k) = keys.next().await {
                ids.push(k.map_err(|e| bus_err("list enforcements", e))?);
            }
            Ok::<_, EngineError>(ids)
        };
        let mut ids = tokio::time::timeout(LIST_TIMEOUT, list)
            .await
            .map_err(|_| bus_err("list enforcements", "no answer in time; try again"))??;
        ids.sort_unstable_by(|a, b| b.cmp(a));
        Ok(ids)
    }

    /// One rule enforcement.
    pub async fn enforcement(&self, id: &str) -> Result<Option<RuleEnforcement>, EngineError> {
        if !is_key(id) {
            return Ok(None);
        }
        Ok(self.enforcements.get(id).await?.map(|(e, _)| e))
    }

    /// Requests a run of an execution whose record is already stored, with
    /// `msg_id` as its `Nats-Msg-Id` (the execution id for the first
    /// request): a repeat within the duplicate window is dropped. Its trace
    /// is the record's (`context.trace_context`).
    /// `created_revision` is the revision the record's creation returned,
    /// for the first request.
    pub async fn request_execution(
        &self,
        record: &ExecutionRecord,
        msg_id: &str,
        created_revision: Option<u64>,
    ) -> Result<(), EngineError> {
        let request = ExecutionRequest {
            v: 1,
            execution_id: record.id.clone(),
            created: created_revision.map(|revision| {
                Box::new(CreatedRecord {
                    revision,
                    record: record.clone(),
                })
            }),
        };
        let trace_id = record
            .context
            .get("trace_context")
            .and_then(|t| t.get("id_"))
            .and_then(serde_json::Value::as_str)
            .unwrap_or(&record.id);
        let mut headers = HeaderMap::new();
        crate::telemetry::inject(&mut headers, record.traceparent.as_deref(), trace_id);
        self.publish(
            execution_subject(&record.pool),
            msg_id,
            headers,
            to_bytes(&request)?,
        )
        .await
    }

    /// Reads an execution record and its revision.
    pub async fn execution(&self, id: &str) -> Result<Option<(ExecutionRecord, u64)>, EngineError> {
        if !is_key(id) {
            return Ok(None);
        }
        self.executions.get(id).await
    }

    /// [`Bus::execution`] read from the leader of the bucket's stream: it
    /// sees every write acknowledged before (a workflow's start reads the
    /// status a pause or cancel wrote before publishing its event).
    pub async fn execution_from_leader(
        &self,
        id: &str,
    ) -> Result<Option<(ExecutionRecord, u64)>, EngineError> {
        if !is_key(id) {
            return Ok(None);
        }
        self.executions.get_from_leader(id).await
    }

    /// Stores a new execution record and returns its revision; `None` when
    /// one with that id exists.
    pub async fn create_execution(
        &self,
        record: &ExecutionRecord,
    ) -> Result<Option<u64>, EngineError> {
        let created = self.executions.create(&record.id, record).await?;
        if created.is_some() {
            self.audit.emit(crate::audit::execution_requested(record));
        }
        Ok(created)
    }

    /// Replaces an execution record if it is still at `revision`; returns
    /// the new revision, or `None` when someone else changed it first. A
    /// workflow task's end, pause and resume also tell its workflow, and an
    /// end gives back the execution's concurrency slots and publishes its
    /// `core.st2.generic.actiontrigger` (every such write passes here:
    /// runners, cancels, inquiries, expiry, workflows).
    pub async fn update_execution(
        &self,
        record: &ExecutionRecord,
        revision: u64,
    ) -> Result<Option<u64>, EngineError> {
        let Some(rev) = self.executions.update(&record.id, record, revision).await? else {
            return Ok(None);
        };
        if let Some(event) = crate::audit::execution_changed(record) {
            self.audit.emit(event);
        }
        crate::notifier::ended(self, record).await?;
        // A workflow's task that ended, paused or resumed tells its workflow.
        crate::flow_events::notify_parent(self, record).await?;
        Ok(Some(rev))
    }

    /// Stores a rule enforcement (idempotent: same id, same content).
    pub async fn put_enforcement(&self, enforcement: &RuleEnforcement) -> Result<(), EngineError> {
        self.enforcements.put(&enforcement.id, enforcement).await?;
        self.audit.emit(crate::audit::rule_enforced(enforcement));
        Ok(())
    }
}

/// Whether `id` can be a record's key (ids come from users through the
/// API: one that cannot be a key names no record).
fn is_key(id: &str) -> bool {
    !id.is_empty() && !id.contains(['.', '*', '>', ' '])
}

//! One partition of the `WORKFLOWS` stream: the consumer's handler, which
//! hands each event to Orquesta's engine or the chain engine, and starts
//! the sweeps.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use super::cache::RecordCache;
use super::events::handle_event;
use super::record::read_entry;
use super::sweep::{sweep, SweepSnapshot};
use super::{consumer_name, WorkflowContext};
use crate::bus::{to_bytes, BusOp, WORKFLOWS_STREAM};
use crate::consumer::{ConsumerSpec, Handler, Settle};
use crate::error::{bus_err, EngineError};
use crate::flow_events::{FlowEvent, FlowEventMsg};
use crate::timing::{ACK_WAIT, RETRY_DELAY, WORKFLOW_SWEEP_EVERY};

/// Events a partition may hold unacknowledged.
pub(super) const MAX_IN_FLIGHT: i64 = 256;

/// Key of the ids of a partition's running workflows.
pub(super) fn active_key(partition: u32) -> String {
    format!("active.{partition}")
}

/// Drives one partition of the `WORKFLOWS` stream, as the handler of a
/// [`Consumer`](crate::consumer::Consumer) that handles one event at a
/// time (a workflow's events change one record, in order).
#[derive(Debug)]
pub struct WorkflowPartition {
    ctx: WorkflowContext,
    partition: u32,
    memory: tokio::sync::Mutex<PartitionMemory>,
}

/// What a partition keeps between events.
#[derive(Debug)]
pub(super) struct PartitionMemory {
    pub(super) cache: RecordCache,
    /// The same for ActionChains.
    pub(super) chains: crate::chains::ChainCache,
    /// The running workflows of this partition, stored under
    /// [`active_key`] whenever one starts (finished ones leave at the next
    /// sweep), so the sweep finds them after a restart or a takeover.
    pub(super) active: BTreeSet<String>,
    /// A sweep's reads are under way.
    pub(super) sweeping: bool,
    /// What the last sweep found finished, for the next tick to remove.
    pub(super) swept_finished: Vec<String>,
}

impl WorkflowPartition {
    /// Reads the partition's running workflows.
    pub async fn open(ctx: WorkflowContext, partition: u32) -> Result<Self, EngineError> {
        let active = read_entry::<BTreeSet<String>>(&ctx.bus, &active_key(partition))
            .await?
            .map(|(ids, _)| ids)
            .unwrap_or_default();
        Ok(WorkflowPartition {
            ctx,
            partition,
            memory: tokio::sync::Mutex::new(PartitionMemory {
                cache: RecordCache::default(),
                chains: crate::chains::ChainCache::default(),
                active,
                sweeping: false,
                swept_finished: Vec::new(),
            }),
        })
    }

    /// Where the partition reads: one event at a time.
    pub fn consumer_spec(partition: u32) -> ConsumerSpec {
        ConsumerSpec {
            stream: WORKFLOWS_STREAM,
            name: consumer_name(partition),
            filter: format!("squall.wf.{partition}.>"),
            max_ack_pending: MAX_IN_FLIGHT,
            concurrency: 1,
            ack_wait: ACK_WAIT,
        }
    }

    async fn store_active(&self, active: &BTreeSet<String>) -> Result<(), EngineError> {
        self.ctx.bus.ops.count(BusOp::Put);
        self.ctx
            .bus
            .workflows
            .put(active_key(self.partition), to_bytes(active)?)
            .await
            .map_err(|e| bus_err("store running workflows", e))?;
        Ok(())
    }
}

impl Handler for WorkflowPartition {
    type Event = FlowEventMsg;
    const WHAT: &'static str = "workflow events";

    async fn handle(self: Arc<Self>, event: FlowEventMsg, _delivered: i64) -> Settle {
        let mut memory = self.memory.lock().await;
        let memory = &mut *memory;
        let span = if crate::telemetry::on() {
            tracing::info_span!("workflow", otel.name = "workflow.event", otel.kind = "consumer",
                workflow = %event.workflow_id, squall.execution.id = %event.workflow_id)
        } else {
            tracing::info_span!("workflow", workflow = %event.workflow_id)
        };
        let handled =
            tracing::Instrument::instrument(handle_any(&self.ctx, &mut *memory, &event), span)
                .await;
        let handled = match handled {
            // A workflow that starts is recorded as running before its
            // start is acknowledged.
            Ok(Some(running))
                if matches!(
                    event.event,
                    FlowEvent::Start { .. } | FlowEvent::StartChain { .. }
                ) && running
                    && memory.active.insert(event.workflow_id.clone()) =>
            {
                self.store_active(&memory.active).await
            }
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        match handled {
            Ok(()) => Settle::Done,
            Err(e) => {
                tracing::warn!(workflow = %event.workflow_id, error = %e, "workflow event will be redelivered");
                Settle::Later(RETRY_DELAY)
            }
        }
    }

    fn tick_every(&self) -> Option<Duration> {
        Some(WORKFLOW_SWEEP_EVERY)
    }

    /// Reconciles first (a predecessor may have died mid-way), then every
    /// [`WORKFLOW_SWEEP_EVERY`]. The tick only takes the workflows the last
    /// sweep found finished out of the running set and copies what the next
    /// sweep needs; the sweep's reads run on a task of their own, so the
    /// partition's events never wait for them (the consumer handles one
    /// event or tick at a time).
    async fn tick(self: Arc<Self>) {
        let mut memory = self.memory.lock().await;
        let finished = std::mem::take(&mut memory.swept_finished);
        let before = memory.active.len();
        for id in finished {
            memory.active.remove(&id);
        }
        if memory.active.len() != before {
            if let Err(e) = self.store_active(&memory.active).await {
                tracing::warn!(partition = self.partition, error = %e, "running workflows not stored; next sweep retries");
            }
        }
        if memory.sweeping {
            return;
        }
        memory.sweeping = true;
        let snapshot = SweepSnapshot::of(&memory);
        drop(memory);
        let partition = self.clone();
        tokio::spawn(async move {
            let swept = sweep(&partition.ctx.bus, snapshot).await;
            let mut memory = partition.memory.lock().await;
            memory.sweeping = false;
            match swept {
                Ok(finished) => memory.swept_finished = finished,
                Err(e) => {
                    tracing::warn!(partition = partition.partition, error = %e, "workflow sweep failed; next one retries");
                }
            }
        });
    }
}

/// Hands `event` to the chain engine when its workflow is an ActionChain,
/// else to Orquesta's; whether the workflow still runs afterwards
/// (`None`: it has no record).
pub(super) async fn handle_any(
    ctx: &WorkflowContext,
    memory: &mut PartitionMemory,
    event: &FlowEventMsg,
) -> Result<Option<bool>, EngineError> {
    let id = &event.workflow_id;
    let chain = match &event.event {
        FlowEvent::StartChain { .. } => true,
        FlowEvent::Start { .. } => false,
        _ if memory.cache.contains(id) => false,
        _ if memory.chains.contains_key(id) => true,
        _ => crate::chains::is_chain(&ctx.bus, id).await?,
    };
    if chain {
        let status = crate::chains::handle_event(ctx, &mut memory.chains, event).await?;
        return Ok(status.map(|s| !s.is_completed()));
    }
    let status = handle_event(ctx, &mut memory.cache, event).await?;
    Ok(status.map(|s| !s.is_finished()))
}

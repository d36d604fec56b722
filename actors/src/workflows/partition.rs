//! One partition of the `WORKFLOWS` stream: the consumer's handler, which
//! hands each event to Orquesta's engine or the chain engine, and starts
//! the sweeps. Events that wait in a row are taken together: a run of task
//! ends of one Orquesta workflow is applied with one record write.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use super::cache::RecordCache;
use super::events::handle_events;
use super::record::read_entry;
use super::sweep::{sweep, SweepSnapshot};
use super::{consumer_name, WorkflowContext};
use crate::bus::{to_bytes, BusOp, WORKFLOWS_STREAM};
use crate::consumer::{ConsumerSpec, Delivery, Handler, Settle};
use crate::error::{bus_err, EngineError};
use crate::flow_events::{FlowEvent, FlowEventMsg};
use crate::timing::{ACK_WAIT, RETRY_DELAY, WORKFLOW_SWEEP_EVERY};

/// Events a partition may hold unacknowledged.
pub(super) const MAX_IN_FLIGHT: i64 = 256;

/// Events waiting in a row that a partition takes at once: the task ends
/// of one workflow among them are applied together, with one record write
/// and their next tasks requested at once.
const EVENT_BATCH: usize = 64;

/// Key of the ids of a partition's running workflows.
pub(super) fn active_key(partition: u32) -> String {
    format!("active.{partition}")
}

/// Drives one partition of the `WORKFLOWS` stream, as the handler of a
/// [`Consumer`](crate::consumer::Consumer) that handles one event, or one
/// batch, at a time (a workflow's events change one record, in order).
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

impl WorkflowPartition {
    /// Handles one event, under a span continuing `parent`'s trace.
    async fn handle_one(
        &self,
        memory: &mut PartitionMemory,
        event: &FlowEventMsg,
        parent: Option<opentelemetry::Context>,
    ) -> Settle {
        let handled = within_span(event, parent, handle_any(&self.ctx, memory, event)).await;
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
        settle(event, handled)
    }

    /// Handles task ends of one cached Orquesta workflow together, under
    /// the first one's span.
    async fn handle_task_ends(
        &self,
        memory: &mut PartitionMemory,
        ends: &[&Delivery<FlowEventMsg>],
    ) -> Settle {
        let events: Vec<&FlowEventMsg> = ends.iter().map(|d| &d.event).collect();
        let first = events[0];
        let handled = within_span(
            first,
            ends[0].parent.clone(),
            handle_events(&self.ctx, &mut memory.cache, &events),
        )
        .await;
        settle(first, handled.map(|_| ()))
    }
}

/// Runs `work` for `event` under its `workflow.event` span, continuing
/// `parent`'s trace.
async fn within_span<T>(
    event: &FlowEventMsg,
    parent: Option<opentelemetry::Context>,
    work: impl std::future::Future<Output = T>,
) -> T {
    // The span is made inside the future, where `parent` is current.
    let traced = async move {
        let span = if crate::telemetry::on() {
            tracing::info_span!("workflow", otel.name = "workflow.event", otel.kind = "consumer",
                workflow = %event.workflow_id, squall.execution.id = %event.workflow_id)
        } else {
            tracing::info_span!("workflow", workflow = %event.workflow_id)
        };
        tracing::Instrument::instrument(work, span).await
    };
    match parent {
        Some(cx) => opentelemetry::context::FutureExt::with_context(traced, cx).await,
        None => traced.await,
    }
}

/// Acknowledged when handled, else delivered again after a while.
fn settle(event: &FlowEventMsg, handled: Result<(), EngineError>) -> Settle {
    match handled {
        Ok(()) => Settle::Done,
        Err(e) => {
            tracing::warn!(workflow = %event.workflow_id, error = %e, "workflow event will be redelivered");
            Settle::Later(RETRY_DELAY)
        }
    }
}

impl Handler for WorkflowPartition {
    type Event = FlowEventMsg;
    const WHAT: &'static str = "workflow events";
    const BATCH: usize = EVENT_BATCH;

    async fn handle(self: Arc<Self>, event: FlowEventMsg, _delivered: i64) -> Settle {
        let mut memory = self.memory.lock().await;
        self.handle_one(&mut memory, &event, None).await
    }

    /// Each workflow's events in order, the workflows one after another;
    /// a run of task ends of a workflow whose record the partition holds
    /// is applied at once, anything else alone.
    async fn handle_batch(self: Arc<Self>, batch: Vec<Delivery<FlowEventMsg>>) -> Vec<Settle> {
        let mut memory = self.memory.lock().await;
        let mut workflows: Vec<Vec<usize>> = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (i, delivery) in batch.iter().enumerate() {
            let at = *index
                .entry(delivery.event.workflow_id.as_str())
                .or_insert_with(|| {
                    workflows.push(Vec::new());
                    workflows.len() - 1
                });
            workflows[at].push(i);
        }
        // A task end of a workflow whose record is in memory.
        let together = |memory: &PartitionMemory, p: &usize| {
            let event = &batch[*p].event;
            matches!(event.event, FlowEvent::TaskDone { .. })
                && memory.cache.contains(&event.workflow_id)
        };
        let mut settles = vec![None; batch.len()];
        for positions in workflows {
            let mut k = 0;
            while k < positions.len() {
                let run = positions[k..]
                    .iter()
                    .take_while(|p| together(&memory, p))
                    .count()
                    .max(1);
                let settle = if run == 1 {
                    let delivery = &batch[positions[k]];
                    self.handle_one(&mut memory, &delivery.event, delivery.parent.clone())
                        .await
                } else {
                    let ends: Vec<&Delivery<FlowEventMsg>> =
                        positions[k..k + run].iter().map(|p| &batch[*p]).collect();
                    self.handle_task_ends(&mut memory, &ends).await
                };
                for p in &positions[k..k + run] {
                    settles[*p] = Some(settle.clone());
                }
                k += run;
            }
        }
        settles
            .into_iter()
            .map(|s| s.unwrap_or(Settle::Later(RETRY_DELAY)))
            .collect()
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
    let status = handle_events(ctx, &mut memory.cache, &[event]).await?;
    Ok(status.map(|s| !s.is_finished()))
}

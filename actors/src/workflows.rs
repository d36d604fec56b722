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
//! ([`SpecCache`]), not per event. A task's final record publishes a `task done` event to its
//! workflow (from [`Bus::update_execution`], through
//! [`crate::flow_events`]); nothing polls.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use squall_domain::execution::{ExecutionRecord, Status};
use squall_domain::orquesta::conductor::{
    self, Command, Flow, FlowState, FlowStatus, ItemResult, TaskStatus,
};
use squall_domain::orquesta::{self, WorkflowSpec};
use squall_domain::secrets::Cipher;
use squall_domain::{ids, runner_types, time};

use crate::bus::{from_bytes, to_bytes, Bus, BusOp, WORKFLOWS_STREAM};
use crate::consumer::{ConsumerSpec, Handler, Settle};
use crate::error::{bus_err, EngineError};
use crate::executions::{self, ExecutionSpec};
use crate::flow_events::{notify_parent, publish, FlowEvent, FlowEventMsg};
use crate::keys::KeyCache;
use crate::timing::{ACK_WAIT, RETRY_DELAY, WORKFLOW_SWEEP_EVERY};

pub use crate::flow_events::is_workflow_runner;
/// The runner type whose executions are workflows.
pub use crate::flow_events::ORQUESTA_RUNNER as RUNNER;

/// Events a partition may hold unacknowledged.
const MAX_IN_FLIGHT: i64 = 256;

/// Durable consumer name of a workflow partition.
pub fn consumer_name(partition: u32) -> String {
    format!("workflows-{partition}")
}

/// A workflow's durable record in the `workflows` bucket.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkflowRecord {
    #[serde(default)]
    pub v: u32,
    pub id: String,
    /// The definition as it was when the workflow started: later pack
    /// changes do not touch a running workflow, and any node can resume it.
    pub definition: String,
    pub state: FlowState,
    /// Commands decided but perhaps not yet carried out.
    #[serde(default)]
    pub outbox: Vec<Command>,
    /// Where the stored copy's parts are, when it is stored in parts.
    #[serde(skip)]
    parts: Option<Parts>,
}

/// A record bigger than [`PART_BYTES`] (a workflow passing large values)
/// is stored in parts, `<id>.part.<generation>.<n>`, written before the
/// record's own entry, which then holds only this (by compare-and-swap, as
/// always). Each write uses a new generation, so a writer that loses the
/// compare-and-swap never touches the parts of the one that won.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Parts {
    generation: String,
    count: usize,
}

/// The entry of a record stored in parts.
#[derive(Debug, Serialize, Deserialize)]
struct PartsHead {
    parts: Parts,
}

/// Bytes of a record stored in one entry at most, and of each part of a
/// bigger one: well below NATS's default message limit (1 MiB).
const PART_BYTES: usize = 512 * 1024;

fn part_key(id: &str, parts: &Parts, n: usize) -> String {
    format!("{id}.part.{}.{n}", parts.generation)
}

/// Deletes the parts of a stored copy that is no longer the record (the
/// one replaced, or one that lost its compare-and-swap). Left behind, a
/// part is only wasted space: a failure is logged, not returned.
async fn drop_parts(bus: &Bus, id: &str, parts: &Parts) {
    for n in 0..parts.count {
        if let Err(e) = bus.workflows.purge(part_key(id, parts, n)).await {
            tracing::warn!(workflow = %id, error = %e, "could not delete an old part of a workflow record");
        }
    }
}

/// Reads a workflow's record, from its parts when it is stored in parts.
async fn read_record(bus: &Bus, id: &str) -> Result<Option<(WorkflowRecord, u64)>, EngineError> {
    let Some((value, revision)) = read_entry::<Value>(bus, id).await? else {
        return Ok(None);
    };
    if value.get("state").is_some() || value.get("parts").is_none() {
        let record = serde_json::from_value(value).map_err(|e| EngineError::Corrupt {
            key: id.to_string(),
            message: e.to_string(),
        })?;
        return Ok(Some((record, revision)));
    }
    let head: PartsHead = serde_json::from_value(value).map_err(|e| EngineError::Corrupt {
        key: id.to_string(),
        message: e.to_string(),
    })?;
    let mut bytes = Vec::new();
    for n in 0..head.parts.count {
        let key = part_key(id, &head.parts, n);
        bus.ops.count(BusOp::Get);
        let part = bus
            .workflows
            .get(&key)
            .await
            .map_err(|e| bus_err("read workflow part", e))?
            .ok_or_else(|| EngineError::Corrupt {
                key: key.clone(),
                message: "a part of the workflow record is missing".into(),
            })?;
        bytes.extend_from_slice(&part);
    }
    let mut record: WorkflowRecord = from_bytes(id, &bytes)?;
    record.parts = Some(head.parts);
    Ok(Some((record, revision)))
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

impl WorkflowContext {
    /// `spec` with this node's datastore for `st2kv()`.
    fn flow<'a>(&'a self, spec: &'a WorkflowSpec) -> Flow<'a> {
        Flow::new(spec).with_datastore(
            &self.expressions,
            Arc::new(self.kv.clone()),
            Some(self.cipher.clone()),
        )
    }
}

/// Key of the ids of a partition's running workflows.
fn active_key(partition: u32) -> String {
    format!("active.{partition}")
}

/// Workflow records as this partition last stored them, with their
/// revisions: an event on a workflow in progress neither reads its record
/// nor its items' values back. A record someone else changed since fails
/// its compare-and-swap and is read afresh. Beside them, each workflow's
/// execution record as first read (what commands use of it — id, start,
/// user, parent, trace — never changes), and the parsed definitions.
#[derive(Debug, Default)]
struct RecordCache {
    records: HashMap<String, (WorkflowRecord, u64)>,
    executions: HashMap<String, Arc<ExecutionRecord>>,
    specs: SpecCache,
}

/// Definitions parsed and inspected, by their text (the content is the
/// key: a workflow keeps the definition it started with, so two versions
/// of one action are two entries). Bounded: cleared when full.
#[derive(Debug, Default)]
struct SpecCache(HashMap<String, Arc<WorkflowSpec>>);

/// Definitions a partition keeps parsed at most.
const CACHED_SPECS: usize = 256;

impl SpecCache {
    /// The parsed definition, or Orquesta's inspection errors (not kept:
    /// a workflow with them fails at its start).
    fn get(&mut self, definition: &str) -> Result<Arc<WorkflowSpec>, Vec<Value>> {
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
const CACHED_RECORDS: usize = 4096;

impl RecordCache {
    fn take(&mut self, id: &str) -> Option<(WorkflowRecord, u64)> {
        self.records.remove(id)
    }

    fn contains(&self, id: &str) -> bool {
        self.records.contains_key(id)
    }

    fn keep(&mut self, record: WorkflowRecord, revision: u64) {
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

    /// Workflow `id`'s execution record: from memory, else read once.
    async fn execution(
        &mut self,
        bus: &Bus,
        id: &str,
    ) -> Result<Arc<ExecutionRecord>, EngineError> {
        if let Some(execution) = self.executions.get(id) {
            return Ok(execution.clone());
        }
        let Some((execution, _)) = bus.execution(id).await? else {
            return Err(bus_err("read workflow execution", "not visible yet"));
        };
        let execution = Arc::new(execution);
        self.executions.insert(id.to_string(), execution.clone());
        Ok(execution)
    }
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
struct PartitionMemory {
    cache: RecordCache,
    /// The same for ActionChains.
    chains: crate::chains::ChainCache,
    /// The running workflows of this partition, stored under
    /// [`active_key`] whenever one starts (finished ones leave at the next
    /// sweep), so the sweep finds them after a restart or a takeover.
    active: BTreeSet<String>,
    /// A sweep's reads are under way.
    sweeping: bool,
    /// What the last sweep found finished, for the next tick to remove.
    swept_finished: Vec<String>,
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
async fn handle_any(
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

/// What a sweep needs of a partition's memory: the running workflows, and
/// the states of those it keeps in memory.
struct SweepSnapshot {
    active: Vec<String>,
    flows: HashMap<String, FlowState>,
    chains: crate::chains::ChainCache,
}

impl SweepSnapshot {
    fn of(memory: &PartitionMemory) -> SweepSnapshot {
        let mut flows = HashMap::new();
        let mut chains = crate::chains::ChainCache::new();
        for id in &memory.active {
            if let Some((record, _)) = memory.cache.records.get(id) {
                flows.insert(id.clone(), record.state.clone());
            } else if let Some(chain) = memory.chains.get(id) {
                chains.insert(id.clone(), chain.clone());
            }
        }
        SweepSnapshot {
            active: memory.active.iter().cloned().collect(),
            flows,
            chains,
        }
    }
}

/// Reconciles the partition's running workflows with their tasks'
/// records: a task whose record says it ended (or paused) without its
/// workflow having heard — its writer died between the write and the
/// publish — is reported again (same message ids: a report that was not
/// lost changes nothing). Returns the workflows that finished, to leave
/// the running set.
async fn sweep(bus: &Bus, snapshot: SweepSnapshot) -> Result<Vec<String>, EngineError> {
    let mut finished = Vec::new();
    for id in &snapshot.active {
        if !snapshot.flows.contains_key(id) {
            if let Some((ended, waited)) =
                crate::chains::sweep_view(bus, &snapshot.chains, id).await?
            {
                if ended {
                    finished.push(id.clone());
                } else if let Some(child) = waited {
                    match bus.execution(&child).await? {
                        Some((record, _)) if record.status.is_completed() => {
                            notify_parent(bus, &record).await?;
                        }
                        _ => {}
                    }
                }
                continue;
            }
        }
        let record = match snapshot.flows.get(id) {
            Some(state) => Some(state.clone()),
            None => read_record(bus, id).await?.map(|(r, _)| r.state),
        };
        let Some(flow) = record.filter(|f| !f.status.is_finished()) else {
            finished.push(id.clone());
            continue;
        };
        let Some((workflow, _)) = bus.execution(id).await? else {
            finished.push(id.clone());
            continue;
        };
        for (run_id, waiting) in outstanding_runs(&flow) {
            let child = ids::derived(&workflow.start_timestamp, &[&workflow.id, &run_id]);
            let Some((record, _)) = bus.execution(&child).await? else {
                continue;
            };
            // Ended, or paused while its workflow thinks it runs.
            let unheard = record.status.is_completed()
                || (waiting == TaskStatus::Running
                    && matches!(record.status, Status::Paused | Status::Pending));
            if unheard {
                notify_parent(bus, &record).await?;
            }
        }
    }
    Ok(finished)
}

/// Task runs (items included) a workflow still waits on, with what it
/// believes of each (items count as paused: only their end is reported).
fn outstanding_runs(flow: &FlowState) -> Vec<(String, TaskStatus)> {
    let mut runs = Vec::new();
    for run in &flow.runs {
        if !matches!(run.status, TaskStatus::Running | TaskStatus::Paused) {
            continue;
        }
        match &run.items {
            Some(items) => runs.extend(
                items
                    .in_flight_indexes()
                    .map(|i| (format!("{}.{i}", run.id), TaskStatus::Paused)),
            ),
            None => runs.push((run.id.clone(), run.status)),
        }
    }
    runs
}

/// Key of the values of with-items run `run_id` of workflow `id`, beside
/// the workflow's record.
fn items_key(id: &str, run_id: &str) -> String {
    format!("{id}.items.{run_id}")
}

/// Reads a workflow's record and the item values of its `with` runs.
async fn load(bus: &Bus, id: &str) -> Result<Option<(WorkflowRecord, u64)>, EngineError> {
    let Some((mut record, revision)) = read_record(bus, id).await? else {
        return Ok(None);
    };
    for run in &mut record.state.runs {
        let Some(items) = run.items.as_mut() else {
            continue;
        };
        if items.values.len() == items.count || run.status != TaskStatus::Running {
            continue;
        }
        match read_entry::<Vec<Value>>(bus, &items_key(id, &run.id)).await? {
            Some((values, _)) => items.values = values,
            None => {
                return Err(bus_err(
                    "read workflow items",
                    format!("the items of {} in workflow {id} are missing", run.id),
                ))
            }
        }
    }
    Ok(Some((record, revision)))
}

async fn read_entry<T: serde::de::DeserializeOwned>(
    bus: &Bus,
    key: &str,
) -> Result<Option<(T, u64)>, EngineError> {
    bus.ops.count(BusOp::Get);
    match bus
        .workflows
        .entry(key)
        .await
        .map_err(|e| bus_err("read workflow", e))?
    {
        Some(e) if e.operation == async_nats::jetstream::kv::Operation::Put => {
            Ok(Some((from_bytes(key, &e.value)?, e.revision)))
        }
        _ => Ok(None),
    }
}

/// Stores `record` over `revision` (0: create); its new revision, or
/// `None` when someone else wrote first. Item values of `with` runs that
/// started since the last write are stored first, beside the record, once.
async fn store(
    bus: &Bus,
    record: &mut WorkflowRecord,
    revision: u64,
) -> Result<Option<u64>, EngineError> {
    use async_nats::jetstream::kv::{CreateErrorKind, UpdateErrorKind};
    for run in &mut record.state.runs {
        if let Some(items) = run.items.as_mut().filter(|i| !i.values_stored) {
            bus.ops.count(BusOp::Put);
            bus.workflows
                .put(items_key(&record.id, &run.id), to_bytes(&items.values)?)
                .await
                .map_err(|e| bus_err("store workflow items", e))?;
            items.values_stored = true;
        }
    }
    let mut bytes = to_bytes(&*record)?;
    let mut parts = None;
    if bytes.len() > PART_BYTES {
        let new = Parts {
            generation: ids::fresh(&time::now()),
            count: bytes.len().div_ceil(PART_BYTES),
        };
        for (n, chunk) in bytes.chunks(PART_BYTES).enumerate() {
            bus.ops.count(BusOp::Put);
            bus.workflows
                .put(part_key(&record.id, &new, n), chunk.to_vec().into())
                .await
                .map_err(|e| bus_err("store workflow part", e))?;
        }
        bytes = to_bytes(&PartsHead { parts: new.clone() })?;
        parts = Some(new);
    }
    bus.ops.count(if revision == 0 {
        BusOp::Create
    } else {
        BusOp::Update
    });
    let stored = if revision == 0 {
        match bus.workflows.create(&record.id, bytes).await {
            Ok(r) => Some(r),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => None,
            Err(e) => return Err(bus_err("store workflow", e)),
        }
    } else {
        match bus.workflows.update(&record.id, bytes, revision).await {
            Ok(r) => Some(r),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => None,
            Err(e) => return Err(bus_err("store workflow", e)),
        }
    };
    let stale = match stored {
        Some(_) => std::mem::replace(&mut record.parts, parts),
        None => parts,
    };
    if let Some(stale) = stale {
        drop_parts(bus, &record.id, &stale).await;
    }
    Ok(stored)
}

/// The spec of a stored definition; Orquesta's inspection errors in
/// StackStorm's shape when it has any.
fn spec_of(definition: &str) -> Result<WorkflowSpec, Vec<Value>> {
    let (spec, issues) = orquesta::inspect(definition);
    match spec {
        Some(spec) if issues.is_empty() => Ok(spec),
        _ => Err(orquesta::inspection_errors(&issues, Vec::new())),
    }
}

/// What a re-run from tasks asks for (`context.re_run` of its execution).
#[derive(Debug, Deserialize)]
struct ReRun {
    #[serde(rename = "ref")]
    original: String,
    #[serde(default)]
    tasks: Vec<String>,
    /// With-items tasks whose items all run again (the others re-run only
    /// their items that did not succeed).
    #[serde(default)]
    reset: Vec<String>,
}

/// The state a workflow starts in, and what to do first: from its input,
/// or, for a re-run from tasks, from the failed workflow it re-runs.
async fn begin(
    ctx: &WorkflowContext,
    specs: &mut SpecCache,
    execution: &ExecutionRecord,
    definition: &str,
    input: &Map<String, Value>,
) -> Result<Result<(String, FlowState, Vec<Command>), Vec<Value>>, EngineError> {
    let error = |message: String| Ok(Err(vec![json!({"type": "error", "message": message})]));
    let rerun: Option<ReRun> = execution
        .context
        .get("re_run")
        .and_then(|r| serde_json::from_value(r.clone()).ok())
        .filter(|r: &ReRun| !r.tasks.is_empty());
    let Some(rerun) = rerun else {
        // StackStorm inspects the definition and checks the tasks' actions
        // and inputs before the workflow starts, and reports both at once.
        let catalog = ctx.catalog.load();
        let contents = |spec: &WorkflowSpec| {
            orquesta::check_contents(spec, |reference| {
                let action = &catalog.actions.get(reference)?.def;
                let mut params = runner_types::lookup(&action.runner_type)
                    .map(|r| r.runner_parameters.clone())
                    .unwrap_or_default();
                params.extend(action.parameters.clone());
                Some(params)
            })
        };
        let spec = match specs.get(definition) {
            Ok(s) => s,
            Err(_) => {
                let (spec, issues) = orquesta::inspect(definition);
                let found = spec.as_ref().map_or_else(Vec::new, contents);
                return Ok(Err(orquesta::inspection_errors(&issues, found)));
            }
        };
        let found = contents(&spec);
        if !found.is_empty() {
            return Ok(Err(orquesta::inspection_errors(&[], found)));
        }
        let (state, commands) =
            conductor::start(&ctx.flow(&spec), input, runtime_context(ctx, execution));
        return Ok(Ok((definition.to_string(), state, commands)));
    };
    // The re-run continues the original: its definition and its state.
    let Some((original, _)) = load(&ctx.bus, &rerun.original).await? else {
        return error(format!(
            "workflow execution {} has no stored state to re-run from",
            rerun.original
        ));
    };
    let spec = match specs.get(&original.definition) {
        Ok(s) => s,
        Err(errors) => return Ok(Err(errors)),
    };
    match conductor::rerun(
        &ctx.flow(&spec),
        &original.state,
        &rerun.tasks,
        &rerun.reset,
        runtime_context(ctx, execution),
    ) {
        Ok((state, commands)) => Ok(Ok((original.definition, state, commands))),
        Err(message) => error(message),
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

/// Applies one event and carries out what it decides.
/// Returns the workflow's status afterwards (`None`: it has no record).
async fn handle_event(
    ctx: &WorkflowContext,
    cache: &mut RecordCache,
    event: &FlowEventMsg,
) -> Result<Option<FlowStatus>, EngineError> {
    let id = &event.workflow_id;
    for attempt in 0..10 {
        let cached = if attempt == 0 { cache.take(id) } else { None };
        let found = match cached {
            Some(found) => Some(found),
            None => load(&ctx.bus, id).await?,
        };
        // Whether the record must be written: it is new, or an event
        // changed it (a start that finds its record changes nothing).
        let mut write = !matches!(event.event, FlowEvent::Start { .. });
        let (mut record, revision) = match (found, &event.event) {
            (Some(found), _) => found,
            (None, FlowEvent::Start { definition, input }) => {
                // A start is published only for a stored execution: one not
                // found was read from a server not caught up yet; retry.
                let execution = cache.execution(&ctx.bus, id).await?;
                let (definition, state, outbox) =
                    match begin(ctx, &mut cache.specs, &execution, definition, input).await? {
                        Ok(begun) => begun,
                        Err(errors) => {
                            finish_execution(
                                &ctx.bus,
                                id,
                                FlowStatus::Failed,
                                json!({"errors": errors, "output": null}),
                            )
                            .await?;
                            return Ok(Some(FlowStatus::Failed));
                        }
                    };
                write = true;
                let record = WorkflowRecord {
                    v: 1,
                    id: id.clone(),
                    definition,
                    state,
                    outbox,
                    parts: None,
                };
                (record, 0)
            }
            (None, FlowEvent::Cancel) => {
                // Canceled before it started: nothing ran.
                finish_execution(&ctx.bus, id, FlowStatus::Canceled, json!({"output": null}))
                    .await?;
                return Ok(Some(FlowStatus::Canceled));
            }
            (None, _) => {
                tracing::warn!(workflow = %id, "event for a workflow with no record; dropped");
                return Ok(None);
            }
        };
        let Ok(spec) = cache.specs.get(&record.definition) else {
            return Ok(Some(record.state.status));
        };
        let flow = ctx.flow(&spec);
        let state = &mut record.state;
        let commands = match &event.event {
            FlowEvent::Start { .. } | FlowEvent::StartChain { .. } => Vec::new(),
            FlowEvent::Cancel => conductor::cancel(&flow, state),
            FlowEvent::Pause => {
                let mut commands = conductor::pause(&flow, state);
                if commands.is_empty() && state.status.is_paused() {
                    // Already pausing or paused: make sure the execution says so.
                    commands.push(Command::Status {
                        status: state.status,
                    });
                }
                commands
            }
            FlowEvent::Resume => {
                let mut commands = conductor::resume(&flow, state);
                if commands.is_empty() && state.status == FlowStatus::Running {
                    commands.push(Command::Status {
                        status: FlowStatus::Running,
                    });
                }
                commands
            }
            FlowEvent::TaskPaused {
                run_id,
                pending: true,
                ..
            } => conductor::task_pending(&flow, state, run_id),
            FlowEvent::TaskPaused { run_id, .. } => conductor::task_paused(&flow, state, run_id),
            FlowEvent::TaskResumed { run_id, .. } => conductor::task_resumed(&flow, state, run_id),
            FlowEvent::TaskDone {
                run_id,
                succeeded,
                canceled,
                result,
                ..
            } => {
                // A task canceled on its own cancels its workflow, as in
                // Orquesta (one canceled with it changes nothing).
                let mut commands = if *canceled {
                    conductor::cancel(&flow, state)
                } else {
                    Vec::new()
                };
                commands.extend(conductor::task_finished(
                    &flow,
                    state,
                    run_id,
                    *succeeded,
                    result.clone(),
                ));
                commands
            }
        };
        record.outbox.extend(commands);
        if !record.outbox.is_empty() {
            write = true;
            let execution = cache.execution(&ctx.bus, id).await?;
            carry_out(ctx, &flow, &mut record, &execution).await?;
        }
        // One write per event, after its commands: stored even without
        // commands (an item's end alone is progress). Losing the
        // compare-and-swap, or a crash before it, replays the event from
        // the stored state: the same commands, repeated idempotently.
        let revision = if write {
            match store(&ctx.bus, &mut record, revision).await? {
                Some(r) => r,
                None => continue,
            }
        } else {
            revision
        };
        if let FlowEvent::TaskDone {
            execution_id,
            succeeded,
            status,
            ..
        } = &event.event
        {
            let status = status.unwrap_or(if *succeeded {
                Status::Succeeded
            } else {
                Status::Failed
            });
            crate::metrics::workflow_task(status);
            record_task_span(&ctx.bus, id, execution_id, status).await?;
        }
        let status = record.state.status;
        cache.keep(record, revision);
        return Ok(Some(status));
    }
    Err(bus_err("update workflow", "too many concurrent changes"))
}

/// `ctx().st2` and friends, as Orquesta's runner sets them.
fn runtime_context(ctx: &WorkflowContext, execution: &ExecutionRecord) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(
        "st2".into(),
        json!({
            "action_execution_id": execution.id,
            "api_url": ctx.api_url,
            "user": execution.context.get("user").cloned().unwrap_or(Value::Null),
            "pack": execution.action.pack,
            "action": execution.action.action_ref,
            "runner": execution.runner.name,
        }),
    );
    if let Some(parent) = execution.context.get("parent") {
        m.insert("parent".into(), parent.clone());
    }
    m
}

/// Carries out the outbox until it is empty (a task whose execution cannot
/// even be requested — an unknown action, bad parameters — fails at once,
/// and gathered item results end their task, either of which may decide
/// more); the caller stores the record afterwards. `execution` is the
/// workflow's execution record.
async fn carry_out(
    ctx: &WorkflowContext,
    flow: &Flow<'_>,
    record: &mut WorkflowRecord,
    execution: &ExecutionRecord,
) -> Result<(), EngineError> {
    let child_id =
        |run_id: &str| ids::derived(&execution.start_timestamp, &[&execution.id, run_id]);
    let mut i = 0;
    while i < record.outbox.len() {
        match record.outbox[i].clone() {
            Command::Run {
                run_id,
                task,
                action,
                input,
                attempt,
                delay,
            } => {
                if let Err(message) = run_task(
                    ctx, execution, &run_id, &task, &action, input, attempt, delay,
                )
                .await?
                {
                    let more = conductor::run_failed_to_start(
                        flow,
                        &mut record.state,
                        &run_id,
                        json!({"error": message}),
                    );
                    record.outbox.extend(more);
                }
            }
            Command::Cancel { run_id } => cancel_task(&ctx.bus, &child_id(&run_id)).await?,
            Command::CancelParent => cancel_parent(&ctx.bus, execution).await?,
            Command::Pause { run_id } => {
                executions::pause(&ctx.bus, &child_id(&run_id), "the workflow's pause").await?;
            }
            Command::Resume { run_id } => {
                executions::resume(&ctx.bus, &child_id(&run_id), "the workflow's resume").await?;
            }
            Command::Gather { run_id } => {
                let results = gather(ctx, execution, &record.state, &run_id).await?;
                let more = conductor::items_gathered(flow, &mut record.state, &run_id, results);
                record.outbox.extend(more);
            }
            Command::Status { status } => set_status(&ctx.bus, &record.id, status).await?,
            Command::Finish { status, result } => {
                finish_execution(&ctx.bus, &record.id, status, result).await?
            }
        }
        i += 1;
    }
    record.outbox.clear();
    Ok(())
}

/// Cancels a task run's execution if it is a workflow (which then cancels
/// its own tasks the same way) or has not started; an action under way is
/// left to end, as StackStorm's `task_cancelable` does: a running
/// remediation step cut in half is worse than one that completes.
async fn cancel_task(bus: &Bus, id: &str) -> Result<(), EngineError> {
    let Some((child, _)) = bus.execution(id).await? else {
        return Ok(());
    };
    let not_started = matches!(
        child.status,
        Status::Requested | Status::Scheduled | Status::Delayed | Status::Pending
    );
    if is_workflow_runner(&child.runner.name) || not_started {
        executions::cancel(bus, id, "the workflow's cancel").await?;
    }
    Ok(())
}

/// Cancels the workflow `workflow` is a task of, unless it is already
/// being canceled or has ended (StackStorm cascades a cancel up to the
/// root; the parent's cancel reaches the other child workflows).
async fn cancel_parent(bus: &Bus, workflow: &ExecutionRecord) -> Result<(), EngineError> {
    let Some(parent) = &workflow.parent else {
        return Ok(());
    };
    let Some((record, _)) = bus.execution(parent).await? else {
        return Ok(());
    };
    let canceling = matches!(record.status, Status::Canceling | Status::Canceled);
    if is_workflow_runner(&record.runner.name) && !canceling && !record.status.is_completed() {
        executions::cancel(bus, parent, "its child workflow's cancel").await?;
    }
    Ok(())
}

/// Item executions read at once while gathering a `with` task's results.
const GATHER_CONCURRENCY: usize = 64;

/// The results of a `with` task run's items, in item order, read from the
/// items' executions (their ids derive from the workflow and the item).
async fn gather(
    ctx: &WorkflowContext,
    workflow: &ExecutionRecord,
    state: &FlowState,
    run_id: &str,
) -> Result<Vec<Value>, EngineError> {
    use futures::{StreamExt, TryStreamExt};
    let Some(items) = state
        .runs
        .iter()
        .find(|r| r.id == run_id)
        .and_then(|r| r.items.as_ref())
    else {
        return Ok(Vec::new());
    };
    // Known results, or the id of the execution holding one.
    let slots: Vec<Result<Value, String>> = items
        .results(run_id)
        .map(|slot| match slot {
            ItemResult::Local(v) => Ok(v.clone()),
            ItemResult::NotStarted => Ok(Value::Null),
            ItemResult::Execution(item_run) => Err(ids::derived(
                &workflow.start_timestamp,
                &[&workflow.id, &item_run],
            )),
        })
        .collect();
    futures::stream::iter(slots)
        .map(|slot| async move {
            match slot {
                Ok(v) => Ok::<_, EngineError>(v),
                Err(id) => Ok(ctx
                    .bus
                    .execution(&id)
                    .await?
                    .map_or(Value::Null, |(rec, _)| rec.result)),
            }
        })
        .buffered(GATHER_CONCURRENCY)
        .try_collect()
        .await
}

/// Requests one task run's execution; `Ok(Err(why))` when it cannot run.
#[allow(clippy::too_many_arguments)]
async fn run_task(
    ctx: &WorkflowContext,
    workflow: &ExecutionRecord,
    run_id: &str,
    task: &str,
    action: &str,
    input: Value,
    attempt: u32,
    delay: Option<f64>,
) -> Result<Result<(), String>, EngineError> {
    let Value::Object(parameters) = input else {
        return Ok(Err(format!(
            "the input of task {task} must be a dict, got {input}"
        )));
    };
    let mut orquesta = json!({
        "workflow_execution_id": workflow.id,
        "task_name": task,
        "task_id": run_id,
        "attempt": attempt,
    });
    if let Some(d) = delay {
        orquesta["delay"] = json!(d);
    }
    let spec = ExecutionSpec {
        action_ref: action.to_string(),
        parameters,
        user: workflow
            .context
            .get("user")
            .and_then(Value::as_str)
            .map(str::to_string),
        id: Some(ids::derived(
            &workflow.start_timestamp,
            &[&workflow.id, run_id],
        )),
        parent: Some(workflow.id.clone()),
        context: Map::from_iter([
            ("parent".to_string(), json!({"execution_id": workflow.id})),
            ("orquesta".to_string(), orquesta),
        ]),
        ..ExecutionSpec::default()
    };
    let catalog = ctx.catalog.load();
    match executions::prepare(&catalog, &ctx.renderer, &ctx.kv, &ctx.configs, spec) {
        Ok(record) => {
            // The run's request hangs under its task's span.
            let task = task_span(workflow, &record.id).and_then(|t| crate::telemetry::remote(&t));
            let submitted = executions::submit(&ctx.bus, record);
            match task {
                Some(cx) => {
                    use opentelemetry::context::FutureExt;
                    submitted.with_context(cx).await?
                }
                None => submitted.await?,
            };
            Ok(Ok(()))
        }
        Err(e) if e.is_retryable() => Err(e),
        Err(e) => Ok(Err(e.to_string())),
    }
}

/// Writes a workflow execution's end (once; later calls only announce the
/// end again, in case a crash came between the write and its announcement).
async fn finish_execution(
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

/// The `traceparent` of workflow execution `workflow`'s `workflow.run`
/// span: derived from its record's, so every node knows it, before the
/// span is recorded at the workflow's end.
fn workflow_span(workflow: &ExecutionRecord) -> Option<String> {
    crate::telemetry::derived(
        workflow.traceparent.as_deref()?,
        &format!("workflow:{}", workflow.id),
    )
}

/// The `traceparent` of the `workflow.task` span of the task run whose
/// execution is `execution_id`, a child of its workflow's span.
fn task_span(workflow: &ExecutionRecord, execution_id: &str) -> Option<String> {
    crate::telemetry::derived(&workflow_span(workflow)?, &format!("task:{execution_id}"))
}

/// Records the `workflow.task` span of a task run that ended (when spans
/// are on): from its request to now, under its workflow's span.
async fn record_task_span(
    bus: &Bus,
    workflow_id: &str,
    execution_id: &str,
    status: Status,
) -> Result<(), EngineError> {
    if !crate::telemetry::on() {
        return Ok(());
    }
    let (Some((workflow, _)), Some((task, _))) = (
        bus.execution(workflow_id).await?,
        bus.execution(execution_id).await?,
    ) else {
        return Ok(());
    };
    let (Some(parent), Some(me)) = (workflow_span(&workflow), task_span(&workflow, execution_id))
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
                crate::executions::trace_tag(&workflow).to_string(),
            ),
        ],
    });
    Ok(())
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

/// Writes a workflow execution's pause or resume: `pausing`, `paused`, or
/// `running` again. An execution that has ended or is being canceled, or
/// already says so, is left alone.
async fn set_status(bus: &Bus, id: &str, status: FlowStatus) -> Result<(), EngineError> {
    let (to, from): (Status, &[Status]) = match status {
        FlowStatus::Pausing => (Status::Pausing, &[Status::Running]),
        FlowStatus::Paused => (Status::Paused, &[Status::Running, Status::Pausing]),
        FlowStatus::Running => (
            Status::Running,
            &[Status::Pausing, Status::Paused, Status::Resuming],
        ),
        _ => return Ok(()),
    };
    for _ in 0..10 {
        let Some((mut rec, rev)) = bus.execution(id).await? else {
            return Ok(());
        };
        if !from.contains(&rec.status) {
            return Ok(());
        }
        rec.transition(to, time::now());
        if bus.update_execution(&rec, rev).await?.is_some() {
            tracing::info!(workflow = %id, status = %to, "workflow status");
            return Ok(());
        }
    }
    Err(bus_err(
        "set workflow status",
        "too many concurrent changes",
    ))
}

/// The definition workflow execution `id` runs, as it was when it started
/// (`None` if it never started).
pub async fn definition_of(bus: &Bus, id: &str) -> Result<Option<String>, EngineError> {
    Ok(read_entry::<WorkflowRecord>(bus, id)
        .await?
        .map(|(record, _)| record.definition))
}

//! ActionChain executions on the workflow engine. A chain's execution is
//! claimed by a runner like an Orquesta workflow's, which publishes a
//! `start_chain` event to the workflow's subject; the same
//! [`WorkflowPartition`](crate::workflows::WorkflowPartition) consumes it.
//! Each event loads the chain's record from the `workflows` bucket (key:
//! the execution id, `kind: action-chain`), applies the pure conductor
//! ([`squall_domain::actionchain`]), stores the new state with its commands
//! (the outbox) by compare-and-swap, carries them out, empties the outbox,
//! then the event is acknowledged. A node's execution id derives from the
//! chain's id and the run id (`<node>.<n>`), so a replay never runs a node
//! twice, and a node's end reaches the chain through
//! [`crate::flow_events::notify_parent`] like an Orquesta task's, as do its
//! pause (or `pending` inquiry) and its resume. Pause and resume reach the
//! chain as the `pause` and `resume` events `PUT /executions/{id}` publishes
//! ([`crate::executions::pause`]); the chain passes them on to its node
//! through the same call, and writes its own `pausing`, `paused` and
//! `running` from its outbox. A pause, resume or cancel that came before
//! the start is read from the execution's status when the chain starts.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use squall_domain::actionchain::{self, ChainCommand, ChainEnv, ChainSpec, ChainState};
use squall_domain::execution::{ExecutionRecord, Status};
use squall_domain::time::Timestamp;
use squall_domain::{ids, time};

use crate::audit::decrypt;
use crate::bus::{from_bytes, to_bytes, Bus};
use crate::error::{bus_err, EngineError};
use crate::executions::{self, ExecutionSpec};
use crate::flow_common::{end_execution, write_own_status, WorkflowContext};
use crate::flow_events::{FlowEvent, FlowEventMsg};

/// The runner type whose executions are action chains.
pub use crate::flow_events::CHAIN_RUNNER as RUNNER;

/// The `kind` that tells a chain's record from an Orquesta workflow's.
const KIND: &str = "action-chain";

/// Runner parameters of `action-chain`: not the chain's own parameters.
const RUNNER_PARAMETERS: [&str; 2] = ["display_published", "skip_notify"];

/// A chain's durable record in the `workflows` bucket.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChainRecord {
    #[serde(default)]
    pub v: u32,
    pub kind: String,
    pub id: String,
    /// The definition as it was when the chain started.
    pub definition: String,
    /// The action's name, for the definition's error messages.
    pub name: String,
    /// The chain execution's start: its nodes' execution ids derive from
    /// it.
    #[serde(with = "squall_domain::time::serde_ts")]
    pub start: Timestamp,
    pub state: ChainState,
    /// Commands decided but perhaps not yet carried out.
    #[serde(default)]
    pub outbox: Vec<ChainCommand>,
}

/// Chain records a partition keeps in memory, with their revisions.
pub type ChainCache = HashMap<String, (ChainRecord, u64)>;

/// Chains a partition keeps in memory at most.
const CACHED_CHAINS: usize = 4096;

/// Whether a stored `workflows` entry is a chain's.
pub fn is_chain_entry(value: &Value) -> bool {
    value.get("kind").and_then(Value::as_str) == Some(KIND)
}

/// Reads the chain record `id`, if the entry is one.
async fn load(bus: &Bus, id: &str) -> Result<Option<(ChainRecord, u64)>, EngineError> {
    match bus
        .workflows
        .entry(id)
        .await
        .map_err(|e| bus_err("read chain", e))?
    {
        Some(e) if e.operation == async_nats::jetstream::kv::Operation::Put => {
            let value: Value = from_bytes(id, &e.value)?;
            if !is_chain_entry(&value) {
                return Ok(None);
            }
            Ok(Some((from_bytes(id, &e.value)?, e.revision)))
        }
        _ => Ok(None),
    }
}

/// Whether workflow `id` is a chain: its record says so or, before it
/// has one (an event that came before its start), its execution's runner.
pub async fn is_chain(bus: &Bus, id: &str) -> Result<bool, EngineError> {
    let entry = bus
        .workflows
        .entry(id)
        .await
        .map_err(|e| bus_err("read chain", e))?;
    match entry {
        Some(e) if e.operation == async_nats::jetstream::kv::Operation::Put => {
            Ok(is_chain_entry(&from_bytes::<Value>(id, &e.value)?))
        }
        _ => Ok(bus
            .execution(id)
            .await?
            .is_some_and(|(execution, _)| execution.runner.name == RUNNER)),
    }
}

/// Stores `record` over `revision` (0: create); `None` when someone else
/// wrote first.
async fn store(bus: &Bus, record: &ChainRecord, revision: u64) -> Result<Option<u64>, EngineError> {
    use async_nats::jetstream::kv::{CreateErrorKind, UpdateErrorKind};
    let bytes = to_bytes(record)?;
    if revision == 0 {
        return match bus.workflows.create(&record.id, bytes).await {
            Ok(r) => Ok(Some(r)),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(bus_err("store chain", e)),
        };
    }
    match bus.workflows.update(&record.id, bytes, revision).await {
        Ok(r) => Ok(Some(r)),
        Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(None),
        Err(e) => Err(bus_err("store chain", e)),
    }
}

/// What a chain's rendering (its `vars`, its nodes' parameters) is
/// audited as: the secrets it opens are the chain execution's.
const PURPOSE: &str = "chain_parameters";

fn audited_for(execution: &ExecutionRecord) -> decrypt::For {
    decrypt::For::execution(execution, PURPOSE)
}

fn env<'a>(ctx: &'a WorkflowContext) -> ChainEnv<'a> {
    ChainEnv {
        renderer: &ctx.renderer,
        kv: &ctx.kv,
        now: time::format(&time::now()),
    }
}

/// The chain's own parameters and whether it shows `published`.
fn chain_input(input: &Map<String, Value>) -> (Map<String, Value>, bool) {
    let display = input
        .get("display_published")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let mut params = input.clone();
    for name in RUNNER_PARAMETERS {
        params.remove(name);
    }
    (params, display)
}

/// What children see as their `parent` (StackStorm's `parent_context`):
/// the chain's execution id and its context.
fn parent_context(execution: &ExecutionRecord) -> Map<String, Value> {
    let mut parent = Map::from_iter([("execution_id".to_string(), json!(execution.id))]);
    parent.extend(execution.context.clone());
    parent
}

/// Applies one event to chain `event.workflow_id` and carries out what it
/// decides; the chain's status afterwards (`None`: it has no record).
pub async fn handle_event(
    ctx: &WorkflowContext,
    cache: &mut ChainCache,
    event: &FlowEventMsg,
) -> Result<Option<Status>, EngineError> {
    let id = &event.workflow_id;
    for attempt in 0..10 {
        let cached = if attempt == 0 { cache.remove(id) } else { None };
        let found = match cached {
            Some(found) => Some(found),
            None => load(&ctx.bus, id).await?,
        };
        let (mut record, mut revision) = match (found, &event.event) {
            (Some(found), _) => found,
            (None, FlowEvent::StartChain { definition, input }) => {
                let Some((execution, _)) = ctx.bus.execution_from_leader(id).await? else {
                    return Err(bus_err("read chain execution", "not visible yet"));
                };
                // A cancel, pause or resume may have come before the start
                // (the runner's claim and its start are two steps): its
                // event found no record, but the execution's status says
                // what was asked.
                match execution.status {
                    s if s.is_completed() => {
                        tracing::info!(chain = %id, status = %s, "start of a chain that already ended; nothing runs");
                        return Ok(None);
                    }
                    Status::Canceling => {
                        let result = actionchain::result(&empty_state());
                        end_execution(&ctx.bus, id, Status::Canceled, result).await?;
                        return Ok(Some(Status::Canceled));
                    }
                    _ => {}
                }
                let name = execution.action.action_ref.clone();
                let spec = match ChainSpec::parse(definition, &name) {
                    Ok(spec) => spec,
                    Err(error) => {
                        end_execution(&ctx.bus, id, Status::Failed, json!({ "error": error }))
                            .await?;
                        return Ok(Some(Status::Failed));
                    }
                };
                let (params, display) = chain_input(input);
                let held = matches!(execution.status, Status::Pausing | Status::Paused);
                let begin = if held {
                    actionchain::start_held
                } else {
                    actionchain::start
                };
                let (state, mut outbox) =
                    decrypt::audited(&ctx.kv, audited_for(&execution), || {
                        begin(
                            &spec,
                            &env(ctx),
                            params,
                            parent_context(&execution),
                            display,
                        )
                    });
                // Paused and resumed before the start: it runs, and says so.
                if execution.status == Status::Resuming && state.status == Status::Running {
                    outbox.insert(
                        0,
                        ChainCommand::Status {
                            status: Status::Running,
                            result: None,
                        },
                    );
                }
                let record = ChainRecord {
                    v: 1,
                    kind: KIND.into(),
                    id: id.clone(),
                    definition: definition.clone(),
                    name,
                    start: execution.start_timestamp,
                    state,
                    outbox,
                };
                let Some(revision) = store(&ctx.bus, &record, 0).await? else {
                    continue;
                };
                (record, revision)
            }
            (None, FlowEvent::Cancel) => {
                end_execution(
                    &ctx.bus,
                    id,
                    Status::Canceled,
                    actionchain::result(&empty_state()),
                )
                .await?;
                return Ok(Some(Status::Canceled));
            }
            (None, _) => {
                // A pause or resume before the start: the start reads the
                // execution's status, which the request wrote first.
                tracing::info!(chain = %id, "event for a chain with no record yet; its start reads what was asked from the execution");
                return Ok(None);
            }
        };
        let spec = match ChainSpec::parse(&record.definition, &record.name) {
            Ok(spec) => spec,
            Err(_) => return Ok(Some(record.state.status)),
        };
        // The run a node's event is about, when it is the one the chain
        // waits on (else the event was already taken into account).
        let current_run = |execution_id: &str| {
            record
                .state
                .current
                .as_ref()
                .map(|c| c.run_id.clone())
                .filter(|run| ids::derived(&record.start, &[&record.id, run]) == execution_id)
        };
        let run_id = match &event.event {
            FlowEvent::TaskDone { execution_id, .. }
            | FlowEvent::TaskPaused { execution_id, .. }
            | FlowEvent::TaskResumed { execution_id, .. } => match current_run(execution_id) {
                Some(run_id) => run_id,
                None => {
                    let status = record.state.status;
                    cache_keep(cache, record, revision);
                    return Ok(Some(status));
                }
            },
            _ => String::new(),
        };
        let who = audited_as(&record);
        let state = &mut record.state;
        let commands = match &event.event {
            FlowEvent::StartChain { .. } | FlowEvent::Start { .. } => Vec::new(),
            FlowEvent::Cancel => actionchain::cancel(state),
            FlowEvent::Pause => actionchain::pause(state),
            FlowEvent::Resume => decrypt::audited(&ctx.kv, who, || {
                actionchain::resume(&spec, &env(ctx), state)
            }),
            FlowEvent::TaskPaused {
                execution_id,
                pending,
                ..
            } => actionchain::task_paused(state, &run_id, execution_id, *pending),
            FlowEvent::TaskResumed { .. } => actionchain::task_resumed(state, &run_id),
            FlowEvent::TaskDone {
                execution_id,
                succeeded,
                canceled,
                status,
                result,
                ..
            } => {
                let status = status.unwrap_or(if *succeeded {
                    Status::Succeeded
                } else if *canceled {
                    Status::Canceled
                } else {
                    Status::Failed
                });
                decrypt::audited(&ctx.kv, who, || {
                    actionchain::task_finished(
                        &spec,
                        &env(ctx),
                        state,
                        execution_id,
                        &run_id,
                        status,
                        result.clone(),
                    )
                })
            }
        };
        if !matches!(event.event, FlowEvent::StartChain { .. }) {
            if commands.is_empty() {
                let status = record.state.status;
                cache_keep(cache, record, revision);
                return Ok(Some(status));
            }
            record.outbox.extend(commands);
            match store(&ctx.bus, &record, revision).await? {
                Some(r) => revision = r,
                None => continue,
            }
        }
        let revision = carry_out(ctx, &spec, &mut record, revision).await?;
        let status = record.state.status;
        cache_keep(cache, record, revision);
        return Ok(Some(status));
    }
    Err(bus_err("update chain", "too many concurrent changes"))
}

/// Whom a chain's rendering after its start is audited as: the chain's
/// user, as its children get it.
fn audited_as(record: &ChainRecord) -> decrypt::For {
    let user = record.state.parent.get("user").and_then(Value::as_str);
    decrypt::For {
        user: user.unwrap_or(executions::SYSTEM_USER).to_string(),
        execution: Some(record.id.clone()),
        action: Some(record.name.clone()),
        purpose: PURPOSE,
    }
}

/// A chain record that never started, for a cancel before the start.
fn empty_state() -> ChainState {
    ChainState {
        status: Status::Canceled,
        parameters: Map::new(),
        parent: Map::new(),
        vars: Map::new(),
        results: Map::new(),
        tasks: Vec::new(),
        published: Some(Map::new()),
        current: None,
        runs: 0,
        last: Status::Canceled,
        error: None,
        canceling: false,
        held: false,
        staged: None,
    }
}

fn cache_keep(cache: &mut ChainCache, record: ChainRecord, revision: u64) {
    if record.state.status.is_completed() {
        return;
    }
    if cache.len() >= CACHED_CHAINS {
        cache.clear();
    }
    cache.insert(record.id.clone(), (record, revision));
}

/// Carries out the outbox until it is empty (a node that cannot even be
/// requested decides more at once), then stores the emptied outbox.
async fn carry_out(
    ctx: &WorkflowContext,
    spec: &ChainSpec,
    record: &mut ChainRecord,
    revision: u64,
) -> Result<u64, EngineError> {
    if record.outbox.is_empty() {
        return Ok(revision);
    }
    let Some((execution, _)) = ctx.bus.execution(&record.id).await? else {
        return Err(bus_err("read chain execution", "not visible yet"));
    };
    let mut i = 0;
    while i < record.outbox.len() {
        match record.outbox[i].clone() {
            ChainCommand::Run {
                run_id,
                action,
                parameters,
                chain,
                ..
            } => {
                if let Err((unknown, message)) = run_node(
                    ctx,
                    &execution,
                    &record.state,
                    &run_id,
                    &action,
                    parameters,
                    chain,
                )
                .await?
                {
                    let more = decrypt::audited(&ctx.kv, audited_for(&execution), || {
                        actionchain::run_failed_to_start(
                            spec,
                            &env(ctx),
                            &mut record.state,
                            &run_id,
                            unknown,
                            &message,
                        )
                    });
                    record.outbox.extend(more);
                }
            }
            ChainCommand::Cancel { run_id } => {
                let child = ids::derived(&execution.start_timestamp, &[&execution.id, &run_id]);
                executions::cancel(&ctx.bus, &child, "the chain's cancel").await?;
            }
            // A child that is no chain or workflow, or not in a state to
            // change, answers so; nothing more is asked of it.
            ChainCommand::Pause { run_id } => {
                let child = ids::derived(&execution.start_timestamp, &[&execution.id, &run_id]);
                executions::pause(&ctx.bus, &child, "the chain's pause").await?;
            }
            ChainCommand::Resume { run_id } => {
                let child = ids::derived(&execution.start_timestamp, &[&execution.id, &run_id]);
                executions::resume(&ctx.bus, &child, "the chain's resume").await?;
            }
            ChainCommand::Status { status, result } => {
                set_status(&ctx.bus, &record.id, status, result).await?;
            }
            ChainCommand::Finish { status, result } => {
                end_execution(&ctx.bus, &record.id, status, result).await?;
            }
        }
        i += 1;
    }
    record.outbox.clear();
    if let Some(r) = store(&ctx.bus, record, revision).await? {
        return Ok(r);
    }
    for _ in 0..10 {
        let Some((_, latest)) = load(&ctx.bus, &record.id).await? else {
            return Ok(revision);
        };
        if let Some(r) = store(&ctx.bus, record, latest).await? {
            return Ok(r);
        }
    }
    Err(bus_err("update chain", "too many concurrent changes"))
}

/// Writes the chain execution's `pausing`, `paused` (with its result so
/// far) or `running` again. An execution that has ended or is being
/// canceled, or already says so, is left alone; a `resuming` one whose
/// node still waits on a person goes back to `paused`.
async fn set_status(
    bus: &Bus,
    id: &str,
    to: Status,
    result: Option<Value>,
) -> Result<(), EngineError> {
    let from: &[Status] = match to {
        Status::Pausing => &[Status::Running],
        Status::Paused => &[Status::Running, Status::Pausing, Status::Resuming],
        Status::Running => &[Status::Pausing, Status::Paused, Status::Resuming],
        _ => return Ok(()),
    };
    write_own_status(bus, id, to, from, result.as_ref()).await
}

/// Requests one node's execution: `Ok(Err((unknown action, why)))` when it
/// cannot run.
async fn run_node(
    ctx: &WorkflowContext,
    chain: &ExecutionRecord,
    state: &ChainState,
    run_id: &str,
    action: &str,
    parameters: Map<String, Value>,
    node: Value,
) -> Result<Result<(), (bool, String)>, EngineError> {
    let node_value = node.clone();
    let spec = ExecutionSpec {
        action_ref: action.to_string(),
        parameters,
        user: chain
            .context
            .get("user")
            .and_then(Value::as_str)
            .map(str::to_string),
        id: Some(ids::derived(&chain.start_timestamp, &[&chain.id, run_id])),
        parent: Some(chain.id.clone()),
        context: Map::from_iter([
            ("parent".to_string(), Value::Object(state.parent.clone())),
            ("chain".to_string(), node),
        ]),
        ..ExecutionSpec::default()
    };
    let notify = node_notify(chain, &node_value);
    let catalog = ctx.catalog.load();
    match executions::prepare(&catalog, &ctx.renderer, &ctx.kv, &ctx.configs, spec) {
        Ok(mut record) => {
            if let Some(notify) = notify {
                record.notify = notify;
            }
            executions::submit(&ctx.bus, record).await?;
            Ok(Ok(()))
        }
        Err(e) if e.is_retryable() => Err(e),
        Err(e @ EngineError::UnknownAction(_)) => Ok(Err((true, e.to_string()))),
        Err(e) => Ok(Err((false, e.to_string()))),
    }
}

/// The notify settings of a node's execution, as StackStorm's runner
/// picks them: none for a node named in `skip_notify`, else the node's
/// own `notify`, else the chain's; `None`: keep the action's.
fn node_notify(chain: &ExecutionRecord, node: &Value) -> Option<Option<Value>> {
    let name = node.get("name").and_then(Value::as_str).unwrap_or_default();
    let skipped = chain
        .parameters
        .get("skip_notify")
        .and_then(Value::as_array)
        .is_some_and(|skip| skip.iter().any(|n| n.as_str() == Some(name)));
    if skipped {
        return Some(None);
    }
    node.get("notify")
        .filter(|n| !n.is_null())
        .cloned()
        .or_else(|| chain.notify.clone())
        .map(Some)
}

/// What the partition's sweep needs of a chain.
pub struct SweepView {
    /// The chain has ended.
    pub ended: bool,
    /// The execution id of the node it waits on.
    pub waited: Option<String>,
    /// The chain knows that node paused (or waits on a person).
    pub waited_paused: bool,
}

/// What the partition's sweep needs of workflow `id` when it is a chain
/// (`None`: it is not).
pub async fn sweep_view(
    bus: &Bus,
    cache: &ChainCache,
    id: &str,
) -> Result<Option<SweepView>, EngineError> {
    let record = match cache.get(id) {
        Some((record, _)) => Some(record.clone()),
        None => load(bus, id).await?.map(|(r, _)| r),
    };
    Ok(record.map(|r| {
        let current = r.state.current.as_ref();
        SweepView {
            ended: r.state.status.is_completed(),
            waited: current.map(|c| ids::derived(&r.start, &[&r.id, &c.run_id])),
            waited_paused: current.is_some_and(|c| c.paused.is_some()),
        }
    }))
}

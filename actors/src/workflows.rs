//! The workflow engine: Orquesta workflows, durable and partitioned.
//!
//! A workflow execution is claimed by a runner like any other; for the
//! `orquesta` runner the runner reads the definition and publishes a
//! `start` event instead of running a process. Every event of a workflow
//! goes to `squall.wf.<partition>.<workflow id>` on the `WORKFLOWS` stream;
//! one [`WorkflowPartition`] actor per partition consumes them in order.
//! For each event it loads the workflow's record from the `workflows`
//! bucket, applies the pure [`conductor`], stores the new state together
//! with the commands it produced (the outbox) by compare-and-swap, carries
//! the commands out, then empties the outbox and acknowledges. Commands
//! are idempotent — a task run's execution id derives from the workflow id
//! and the run id — so a crash anywhere replays them without running a
//! task twice. A task's final record publishes a `task done` event to its
//! workflow (from [`Bus::update_execution`]); nothing polls.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, AckKind};
use async_nats::HeaderMap;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use squall_domain::execution::{ExecutionRecord, Status};
use squall_domain::orquesta::conductor::{self, Command, FlowState, FlowStatus};
use squall_domain::orquesta::{self, WorkflowSpec};
use squall_domain::{ids, runner_types, time};

use crate::bus::{from_bytes, to_bytes, Bus, WORKFLOWS_STREAM};
use crate::error::{bus_err, EngineError};
use crate::executions::{self, ExecutionSpec};
use crate::keys::KeyCache;
use crate::pump::Pump;
use crate::rules::pull_messages;

/// The runner type whose executions are workflows.
pub const RUNNER: &str = "orquesta";

/// Events a partition may hold unacknowledged.
const MAX_IN_FLIGHT: i64 = 256;
/// Delay before an event whose handling hit a bus error is retried.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// Subject of a workflow's events.
pub fn subject(partition: u32, workflow_id: &str) -> String {
    format!("squall.wf.{partition}.{workflow_id}")
}

/// Durable consumer name of a workflow partition.
pub fn consumer_name(partition: u32) -> String {
    format!("workflows-{partition}")
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
    /// Someone asked to cancel it.
    Cancel,
    /// One of its task runs ended.
    TaskDone {
        run_id: String,
        execution_id: String,
        succeeded: bool,
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
}

/// Publishes `event` for `workflow_id`; `msg_id` makes a repeat a no-op.
pub async fn publish(
    bus: &Bus,
    workflow_id: &str,
    msg_id: &str,
    event: FlowEvent,
) -> Result<(), EngineError> {
    let msg = FlowEventMsg {
        v: 1,
        workflow_id: workflow_id.to_string(),
        event,
    };
    let subject = subject(bus.partition_of(workflow_id), workflow_id);
    crate::bus::publish(&bus.js, subject, msg_id, HeaderMap::new(), to_bytes(&msg)?).await
}

/// When `record` is a workflow's task run that has ended, tells the
/// workflow (idempotent: the message id is the execution's).
pub async fn notify_parent(bus: &Bus, record: &ExecutionRecord) -> Result<(), EngineError> {
    // Every final write passes here: read, do not copy, the context.
    let orquesta = record.context.get("orquesta");
    let field = |name: &str| orquesta.and_then(|o| o.get(name)).and_then(Value::as_str);
    let (Some(workflow_id), Some(run_id)) = (field("workflow_execution_id"), field("task_id"))
    else {
        return Ok(());
    };
    if !record.status.is_completed() {
        return Ok(());
    }
    let event = FlowEvent::TaskDone {
        run_id: run_id.to_string(),
        execution_id: record.id.clone(),
        succeeded: record.status == Status::Succeeded,
        result: record.result.clone(),
    };
    publish(bus, workflow_id, &format!("wfdone-{}", record.id), event).await
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
            let event = FlowEvent::Start {
                definition,
                input: record.parameters.clone(),
            };
            publish(bus, &record.id, &format!("wfstart-{}", record.id), event).await
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
    pub renderer: std::sync::Arc<squall_domain::template::Renderer>,
    pub kv: KeyCache,
    /// The public API URL, for `ctx().st2.api_url`.
    pub api_url: String,
}

/// Consumes one partition of the `WORKFLOWS` stream.
#[derive(Debug)]
pub struct WorkflowPartition;

/// Messages of [`WorkflowPartition`].
#[derive(Debug)]
pub enum WorkflowMsg {
    Event(Box<Result<jetstream::Message, consumer::pull::MessagesError>>),
    StreamEnded,
}

/// State of [`WorkflowPartition`].
#[derive(Debug)]
pub struct WorkflowPartitionState {
    ctx: WorkflowContext,
    _pump: Pump,
}

impl Actor for WorkflowPartition {
    type Msg = WorkflowMsg;
    type State = WorkflowPartitionState;
    type Arguments = (WorkflowContext, u32);

    async fn pre_start(
        &self,
        myself: ActorRef<WorkflowMsg>,
        (ctx, partition): (WorkflowContext, u32),
    ) -> Result<WorkflowPartitionState, ActorProcessingErr> {
        let messages = pull_messages(
            &ctx.bus,
            WORKFLOWS_STREAM,
            consumer_name(partition),
            format!("squall.wf.{partition}.>"),
            MAX_IN_FLIGHT,
        )
        .await?;
        let pump = Pump::start(
            messages,
            myself,
            |m| WorkflowMsg::Event(Box::new(m)),
            WorkflowMsg::StreamEnded,
        );
        Ok(WorkflowPartitionState { ctx, _pump: pump })
    }

    async fn handle(
        &self,
        _myself: ActorRef<WorkflowMsg>,
        msg: WorkflowMsg,
        state: &mut WorkflowPartitionState,
    ) -> Result<(), ActorProcessingErr> {
        let msg = match msg {
            WorkflowMsg::Event(m) => match *m {
                Ok(m) => m,
                Err(e) => return Err(Box::new(bus_err("consume workflow events", e))),
            },
            WorkflowMsg::StreamEnded => {
                return Err(Box::new(bus_err("consume workflow events", "stream ended")))
            }
        };
        let event: FlowEventMsg = match from_bytes(&msg.subject, &msg.payload) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(subject = %msg.subject, error = %e, "dropping unreadable workflow event");
                msg.ack_with(AckKind::Term)
                    .await
                    .map_err(|e| bus_err("term", e))?;
                return Ok(());
            }
        };
        let span = tracing::info_span!("workflow", workflow = %event.workflow_id);
        let handled = tracing::Instrument::instrument(handle_event(&state.ctx, &event), span).await;
        match handled {
            Ok(()) => msg.ack().await.map_err(|e| bus_err("ack", e))?,
            Err(e) => {
                tracing::warn!(workflow = %event.workflow_id, error = %e, "workflow event will be redelivered");
                msg.ack_with(AckKind::Nak(Some(RETRY_DELAY)))
                    .await
                    .map_err(|e| bus_err("nak", e))?;
            }
        }
        Ok(())
    }
}

async fn load(bus: &Bus, id: &str) -> Result<Option<(WorkflowRecord, u64)>, EngineError> {
    match bus
        .workflows
        .entry(id)
        .await
        .map_err(|e| bus_err("read workflow", e))?
    {
        Some(e) if e.operation == async_nats::jetstream::kv::Operation::Put => {
            Ok(Some((from_bytes(id, &e.value)?, e.revision)))
        }
        _ => Ok(None),
    }
}

/// Stores `record` over `revision` (0: create); its new revision, or
/// `None` when someone else wrote first.
async fn store(
    bus: &Bus,
    record: &WorkflowRecord,
    revision: u64,
) -> Result<Option<u64>, EngineError> {
    use async_nats::jetstream::kv::{CreateErrorKind, UpdateErrorKind};
    let bytes = to_bytes(record)?;
    if revision == 0 {
        return match bus.workflows.create(&record.id, bytes).await {
            Ok(r) => Ok(Some(r)),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(bus_err("store workflow", e)),
        };
    }
    match bus.workflows.update(&record.id, bytes, revision).await {
        Ok(r) => Ok(Some(r)),
        Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(None),
        Err(e) => Err(bus_err("store workflow", e)),
    }
}

fn spec_of(definition: &str) -> Result<WorkflowSpec, Vec<Value>> {
    let (spec, issues) = orquesta::inspect(definition);
    match spec {
        Some(spec) if issues.is_empty() => Ok(spec),
        // Orquesta's inspection errors: type, message, spec_path, and the
        // expression with its language.
        _ => Err(issues
            .into_iter()
            .map(|i| {
                let mut e = json!({"type": i.kind, "message": i.message, "spec_path": i.spec_path});
                if let Some(x) = i.expression {
                    e["language"] = json!(if x.contains("<%") { "yaql" } else { "jinja" });
                    e["expression"] = json!(x);
                }
                e
            })
            .collect()),
    }
}

/// Applies one event and carries out what it decides.
async fn handle_event(ctx: &WorkflowContext, event: &FlowEventMsg) -> Result<(), EngineError> {
    let id = &event.workflow_id;
    for _ in 0..10 {
        let (mut record, mut revision) = match (load(&ctx.bus, id).await?, &event.event) {
            (Some(found), _) => found,
            (None, FlowEvent::Start { definition, input }) => {
                let Some((execution, _)) = ctx.bus.execution(id).await? else {
                    tracing::warn!(workflow = %id, "start of a workflow whose execution does not exist");
                    return Ok(());
                };
                let spec = match spec_of(definition) {
                    Ok(s) => s,
                    Err(errors) => {
                        return finish_execution(
                            &ctx.bus,
                            id,
                            FlowStatus::Failed,
                            json!({"errors": errors, "output": null}),
                        )
                        .await;
                    }
                };
                // StackStorm checks the tasks' actions and inputs before
                // the workflow starts.
                let catalog = ctx.catalog.load();
                let contents = orquesta::check_contents(&spec, |reference| {
                    let action = &catalog.actions.get(reference)?.def;
                    let mut params = runner_types::lookup(&action.runner_type)
                        .map(|r| r.runner_parameters.clone())
                        .unwrap_or_default();
                    params.extend(action.parameters.clone());
                    Some(params)
                });
                if !contents.is_empty() {
                    return finish_execution(
                        &ctx.bus,
                        id,
                        FlowStatus::Failed,
                        json!({"errors": contents, "output": null}),
                    )
                    .await;
                }
                let (state, outbox) =
                    conductor::start(&spec, input, runtime_context(ctx, &execution));
                let record = WorkflowRecord {
                    v: 1,
                    id: id.clone(),
                    definition: definition.clone(),
                    state,
                    outbox,
                };
                let Some(revision) = store(&ctx.bus, &record, 0).await? else {
                    continue;
                };
                (record, revision)
            }
            (None, FlowEvent::Cancel) => {
                // Canceled before it started: nothing ran.
                return finish_execution(
                    &ctx.bus,
                    id,
                    FlowStatus::Canceled,
                    json!({"output": null}),
                )
                .await;
            }
            (None, FlowEvent::TaskDone { .. }) => {
                tracing::warn!(workflow = %id, "task done for a workflow with no record; dropped");
                return Ok(());
            }
        };
        let Ok(spec) = spec_of(&record.definition) else {
            return Ok(());
        };
        if let FlowEvent::Cancel = &event.event {
            let commands = conductor::cancel(&spec, &mut record.state);
            if !commands.is_empty() {
                record.outbox.extend(commands);
                match store(&ctx.bus, &record, revision).await? {
                    Some(r) => revision = r,
                    None => continue,
                }
            }
        }
        if let FlowEvent::TaskDone {
            run_id,
            succeeded,
            result,
            ..
        } = &event.event
        {
            let before = record.state.clone();
            let commands = conductor::task_finished(
                &spec,
                &mut record.state,
                run_id,
                *succeeded,
                result.clone(),
            );
            // Any change is stored, with or without commands: an item's
            // result alone is progress.
            if record.state != before || !commands.is_empty() {
                record.outbox.extend(commands);
                match store(&ctx.bus, &record, revision).await? {
                    Some(r) => revision = r,
                    None => continue,
                }
            }
        }
        return carry_out(ctx, &spec, record, revision).await;
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
/// which may decide more), then stores the emptied outbox.
async fn carry_out(
    ctx: &WorkflowContext,
    spec: &WorkflowSpec,
    mut record: WorkflowRecord,
    revision: u64,
) -> Result<(), EngineError> {
    if record.outbox.is_empty() {
        return Ok(());
    }
    let Some((execution, _)) = ctx.bus.execution(&record.id).await? else {
        return Ok(());
    };
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
                    ctx, &execution, &run_id, &task, &action, input, attempt, delay,
                )
                .await?
                {
                    let more = conductor::task_finished(
                        spec,
                        &mut record.state,
                        &run_id,
                        false,
                        json!({"error": message}),
                    );
                    record.outbox.extend(more);
                }
            }
            Command::Cancel { run_id } => {
                let child = ids::derived(&execution.start_timestamp, &[&execution.id, &run_id]);
                executions::cancel(&ctx.bus, &child, "the workflow's cancel").await?;
            }
            Command::Finish { status, result } => {
                finish_execution(&ctx.bus, &record.id, status, result).await?
            }
        }
        i += 1;
    }
    record.outbox.clear();
    // Usually nobody wrote since this event's own write; otherwise the
    // latest revision is read (this partition is the record's only writer).
    if store(&ctx.bus, &record, revision).await?.is_some() {
        return Ok(());
    }
    for _ in 0..10 {
        let Some((_, latest)) = load(&ctx.bus, &record.id).await? else {
            return Ok(());
        };
        if store(&ctx.bus, &record, latest).await?.is_some() {
            return Ok(());
        }
    }
    Err(bus_err("update workflow", "too many concurrent changes"))
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
    match executions::prepare(&catalog, &ctx.renderer, &ctx.kv, spec) {
        Ok(record) => {
            executions::submit(&ctx.bus, record).await?;
            Ok(Ok(()))
        }
        Err(e) if e.is_retryable() => Err(e),
        Err(e) => Ok(Err(e.to_string())),
    }
}

/// Writes a workflow execution's end (once; later calls change nothing).
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
        FlowStatus::Running | FlowStatus::Canceling => return Ok(()),
    };
    for _ in 0..10 {
        let Some((mut rec, rev)) = bus.execution(id).await? else {
            return Ok(());
        };
        if rec.status.is_completed() {
            return Ok(());
        }
        rec.result = result.clone();
        rec.transition(status, time::now());
        if bus.update_execution(&rec, rev).await?.is_some() {
            tracing::info!(workflow = %id, status = %status, "workflow finished");
            return Ok(());
        }
    }
    Err(bus_err("finish workflow", "too many concurrent changes"))
}

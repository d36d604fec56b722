//! Applying one event to an Orquesta workflow: the conductor decides, the
//! commands it produced are carried out (task runs requested, cancels,
//! pauses, item results gathered), then the record is stored once.

use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use squall_domain::execution::{ExecutionRecord, Status};
use squall_domain::orquesta::conductor::{self, Command, Flow, FlowState, FlowStatus, ItemResult};
use squall_domain::orquesta::{self, WorkflowSpec};
use squall_domain::{ids, runner_types};

use super::cache::{RecordCache, SpecCache};
use super::end::{finish_execution, record_task_span, set_status, task_span};
use super::record::{load, store, WorkflowRecord};
use super::WorkflowContext;
use crate::bus::Bus;
use crate::error::{bus_err, EngineError};
use crate::executions::{self, ExecutionSpec};
use crate::flow_events::{is_workflow_runner, FlowEvent, FlowEventMsg};

/// What a re-run from tasks asks for (`context.re_run` of its execution).
#[derive(Debug, Deserialize)]
pub(super) struct ReRun {
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
pub(super) async fn begin(
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
        let audit = crate::audit::decrypt::Workflow {
            execution,
            kv: &ctx.kv,
        };
        let (state, commands) = conductor::start(
            &ctx.flow(&spec, &audit),
            input,
            runtime_context(ctx, execution),
        );
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
        &ctx.flow(
            &spec,
            &crate::audit::decrypt::Workflow {
                execution,
                kv: &ctx.kv,
            },
        ),
        &original.state,
        &rerun.tasks,
        &rerun.reset,
        runtime_context(ctx, execution),
    ) {
        Ok((state, commands)) => Ok(Ok((original.definition, state, commands))),
        Err(message) => error(message),
    }
}

/// Applies events of one workflow, in order, carries out what they decide
/// and stores the record once. A start, or any event for a workflow not
/// cached, comes alone (the partition batches the task ends of a workflow
/// it holds). Returns the workflow's status afterwards (`None`: it has no
/// record).
pub(super) async fn handle_events(
    ctx: &WorkflowContext,
    cache: &mut RecordCache,
    events: &[&FlowEventMsg],
) -> Result<Option<FlowStatus>, EngineError> {
    let Some(event) = events.first() else {
        return Ok(None);
    };
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
                let execution = cache.fresh_execution(&ctx.bus, id).await?;
                // A cancel, pause or resume may have come before the start
                // (the runner's claim and its start are two steps): its
                // event found no record, but the execution's status says
                // what was asked.
                match execution.status {
                    s if s.is_completed() => {
                        tracing::info!(workflow = %id, status = %s, "start of a workflow that already ended; nothing runs");
                        return Ok(None);
                    }
                    Status::Canceling => {
                        finish_execution(
                            &ctx.bus,
                            id,
                            FlowStatus::Canceled,
                            json!({"output": null}),
                        )
                        .await?;
                        return Ok(Some(FlowStatus::Canceled));
                    }
                    _ => {}
                }
                let (definition, mut state, mut outbox) =
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
                match execution.status {
                    Status::Pausing | Status::Paused => {
                        if let Ok(spec) = cache.specs.get(&definition) {
                            let audit = crate::audit::decrypt::Workflow {
                                execution: &execution,
                                kv: &ctx.kv,
                            };
                            let flow = ctx.flow(&spec, &audit);
                            outbox = conductor::pause_at_start(&flow, &mut state, outbox);
                        }
                    }
                    // Paused and resumed before the start: it runs, and says so.
                    Status::Resuming if state.status == FlowStatus::Running => {
                        outbox.push(Command::Status {
                            status: FlowStatus::Running,
                        });
                    }
                    _ => {}
                }
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
                // A pause or resume before the start: the start reads the
                // execution's status, which the request wrote first.
                tracing::info!(workflow = %id, "event for a workflow with no record yet; its start reads what was asked from the execution");
                return Ok(None);
            }
        };
        let Ok(spec) = cache.specs.get(&record.definition) else {
            return Ok(Some(record.state.status));
        };
        let execution = cache.execution(&ctx.bus, id).await?;
        let audit = crate::audit::decrypt::Workflow {
            execution: &execution,
            kv: &ctx.kv,
        };
        let flow = ctx.flow(&spec, &audit);
        for event in events {
            let commands = decide(&flow, &mut record.state, &event.event);
            let only_runs = commands.iter().all(|c| matches!(c, Command::Run { .. }));
            record.outbox.extend(commands);
            // Task runs requested together wait for the batch's last
            // event; anything else is carried out before the next event
            // is applied, as if each came alone.
            if !only_runs {
                write = true;
                carry_out(ctx, &flow, &mut record, &execution).await?;
            }
        }
        if !record.outbox.is_empty() {
            write = true;
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
        for event in events {
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
                record_task_span(&ctx.bus, &execution, execution_id, status).await?;
            }
        }
        let status = record.state.status;
        cache.keep(record, revision);
        return Ok(Some(status));
    }
    Err(bus_err("update workflow", "too many concurrent changes"))
}

/// What the conductor decides for one event of a workflow that has a
/// record.
fn decide(flow: &Flow<'_>, state: &mut FlowState, event: &FlowEvent) -> Vec<Command> {
    match event {
        FlowEvent::Start { .. } | FlowEvent::StartChain { .. } => Vec::new(),
        FlowEvent::Cancel => conductor::cancel(flow, state),
        FlowEvent::Pause => {
            let mut commands = conductor::pause(flow, state);
            if commands.is_empty() && state.status.is_paused() {
                // Already pausing or paused: make sure the execution says so.
                commands.push(Command::Status {
                    status: state.status,
                });
            }
            commands
        }
        FlowEvent::Resume => {
            let mut commands = conductor::resume(flow, state);
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
        } => conductor::task_pending(flow, state, run_id),
        FlowEvent::TaskPaused { run_id, .. } => conductor::task_paused(flow, state, run_id),
        FlowEvent::TaskResumed { run_id, .. } => conductor::task_resumed(flow, state, run_id),
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
                conductor::cancel(flow, state)
            } else {
                Vec::new()
            };
            commands.extend(conductor::task_finished(
                flow,
                state,
                run_id,
                *succeeded,
                result.clone(),
            ));
            commands
        }
    }
}

/// `ctx().st2` and friends, as Orquesta's runner sets them.
pub(super) fn runtime_context(
    ctx: &WorkflowContext,
    execution: &ExecutionRecord,
) -> Map<String, Value> {
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
pub(super) async fn carry_out(
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
            Command::Run { .. } => {
                // Task runs one after another are requested at once; what
                // a run that cannot start decides comes after them all, as
                // it would one by one (a request reads no state).
                let runs: Vec<_> = record.outbox[i..]
                    .iter()
                    .map_while(|c| match c {
                        Command::Run {
                            run_id,
                            task,
                            action,
                            input,
                            attempt,
                            delay,
                        } => Some((
                            run_id.clone(),
                            task.clone(),
                            action.clone(),
                            input.clone(),
                            *attempt,
                            *delay,
                        )),
                        _ => None,
                    })
                    .collect();
                i += runs.len();
                let requested: Vec<_> = futures::stream::iter(runs)
                    .map(|(run_id, task, action, input, attempt, delay)| async move {
                        let outcome = run_task(
                            ctx, execution, &run_id, &task, &action, input, attempt, delay,
                        )
                        .await;
                        (run_id, outcome)
                    })
                    .buffered(RUN_CONCURRENCY)
                    .collect()
                    .await;
                for (run_id, outcome) in requested {
                    if let Err(message) = outcome? {
                        let more = conductor::run_failed_to_start(
                            flow,
                            &mut record.state,
                            &run_id,
                            json!({"error": message}),
                        );
                        record.outbox.extend(more);
                    }
                }
                continue;
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

/// Task runs requested at once while carrying out an outbox.
const RUN_CONCURRENCY: usize = 64;

/// Cancels a task run's execution if it is a workflow (which then cancels
/// its own tasks the same way) or has not started; an action under way is
/// left to end, as StackStorm's `task_cancelable` does: a running
/// remediation step cut in half is worse than one that completes.
pub(super) async fn cancel_task(bus: &Bus, id: &str) -> Result<(), EngineError> {
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
pub(super) async fn cancel_parent(
    bus: &Bus,
    workflow: &ExecutionRecord,
) -> Result<(), EngineError> {
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
pub(super) const GATHER_CONCURRENCY: usize = 64;

/// The results of a `with` task run's items, in item order, read from the
/// items' executions (their ids derive from the workflow and the item).
pub(super) async fn gather(
    ctx: &WorkflowContext,
    workflow: &ExecutionRecord,
    state: &FlowState,
    run_id: &str,
) -> Result<Vec<Value>, EngineError> {
    use futures::TryStreamExt;
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
pub(super) async fn run_task(
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

//! Scheduling task runs: a run per task and attempt, with-items runs and
//! their items as concurrency allows.

use super::*;

/// Hands a task run to the engine, or keeps it for the resume while the
/// workflow is pausing or paused.
pub(super) fn emit_run(state: &mut FlowState, commands: &mut Vec<Command>, run: Command) {
    if matches!(state.status, FlowStatus::Pausing | FlowStatus::Paused) {
        state.staged.push(run);
    } else {
        commands.push(run);
    }
}

/// Runs `task` (or, without an action, passes straight through it);
/// `retry_delay` overrides the task's own `delay`.
pub(super) fn schedule(
    flow: &Flow<'_>,
    state: &mut FlowState,
    task: &str,
    attempt: u32,
    retry_delay: Option<f64>,
    route: usize,
    commands: &mut Vec<Command>,
) {
    schedule_keeping(
        flow,
        state,
        task,
        attempt,
        retry_delay,
        route,
        BTreeMap::new(),
        commands,
    );
}

/// [`schedule`], where a `with` task's items in `kept` (by index) do not
/// run again: they end at once with the result given.
#[allow(clippy::too_many_arguments)]
pub(super) fn schedule_keeping(
    flow: &Flow<'_>,
    state: &mut FlowState,
    task: &str,
    attempt: u32,
    retry_delay: Option<f64>,
    route: usize,
    kept: BTreeMap<usize, Value>,
    commands: &mut Vec<Command>,
) {
    let Some(def) = flow.spec.tasks.get(task) else {
        return;
    };
    let n = state.counts.entry(task.to_string()).or_insert(0);
    let run_id = format!("{task}.{n}");
    *n += 1;
    let items = items_of(flow, def, state).map(|items| {
        items.map(|mut items| {
            let count = items.count;
            items
                .local
                .extend(kept.into_iter().filter(|(i, _)| *i < count));
            items
        })
    });
    let prepared = match &items {
        Ok(None) => prepare(
            def,
            &Scope::plain(flow, state).in_task(task).on_route(route),
        ),
        Ok(Some(_)) => Ok((None, Value::Null, None)),
        Err(e) => Err(e.clone()),
    };
    let is_items = matches!(items, Ok(Some(_)));
    state.runs.push(TaskRun {
        id: run_id.clone(),
        task: task.to_string(),
        status: TaskStatus::Running,
        result: Value::Null,
        attempt,
        route,
        items: items.ok().flatten(),
    });
    match prepared {
        _ if is_items => start_items(flow, state, &run_id, commands),
        Ok((Some(action), input, delay)) => emit_run(
            state,
            commands,
            Command::Run {
                run_id,
                task: task.to_string(),
                action,
                input,
                attempt,
                delay: retry_delay.or(delay),
            },
        ),
        // A task without an action only routes: it succeeds at once.
        Ok((None, _, _)) => finish_run(
            flow,
            state,
            &run_id,
            TaskStatus::Succeeded,
            Value::Null,
            commands,
        ),
        // As in Orquesta, a task that cannot be rendered fails with the
        // error alone: no transition is taken.
        Err(e) => {
            state.errors.push(expression_error(e, Some((task, route))));
            if let Some(run) = state.runs.iter_mut().find(|r| r.id == run_id) {
                run.status = TaskStatus::Failed;
            }
        }
    }
}

/// Starts items of `run_id` up to its concurrency (only while the workflow
/// runs); asks for the results when every item has ended (or, after a
/// failure, when the running ones have).
pub(super) fn start_items(
    flow: &Flow<'_>,
    state: &mut FlowState,
    run_id: &str,
    commands: &mut Vec<Command>,
) {
    let Some(i) = state.runs.iter().position(|r| r.id == run_id) else {
        return;
    };
    let (task, attempt, route) = (
        state.runs[i].task.clone(),
        state.runs[i].attempt,
        state.runs[i].route,
    );
    let Some(def) = flow.spec.tasks.get(&task) else {
        return;
    };
    loop {
        let Some(items) = &state.runs[i].items else {
            return;
        };
        if items.gathering {
            return;
        }
        if items.ended_count == items.count || (items.failed() && items.in_flight() == 0) {
            if items.local.range(..items.started).count() == items.started {
                // No item ran an execution: the results are all here.
                let results = items
                    .results(run_id)
                    .map(|r| match r {
                        ItemResult::Local(v) => v.clone(),
                        _ => Value::Null,
                    })
                    .collect();
                let status = if items.failed() {
                    TaskStatus::Failed
                } else {
                    TaskStatus::Succeeded
                };
                finish_run(flow, state, run_id, status, Value::Array(results), commands);
                return;
            }
            if let Some(items) = state.runs[i].items.as_mut() {
                items.gathering = true;
            }
            commands.push(Command::Gather {
                run_id: run_id.to_string(),
            });
            return;
        }
        if state.status != FlowStatus::Running
            || items.failed()
            || items.started >= items.count
            || items.in_flight() >= items.concurrency
        {
            return;
        }
        let index = items.started;
        // A result already there for an item not started yet is one a
        // re-run kept (the item succeeded before): it ends at once.
        if let Some(kept) = items.local.get(&index).cloned() {
            if let Some(items) = state.runs[i].items.as_mut() {
                items.started += 1;
            }
            end_item(state, i, index, true, Some(kept));
            continue;
        }
        let value = items.values.get(index).cloned();
        let prepared = match &value {
            Some(value) => prepare(
                def,
                &Scope {
                    flow,
                    state,
                    task: Some(&task),
                    current: None,
                    item: Some(value),
                    route,
                },
            ),
            None => Err(format!("the value of item {index} was not loaded")),
        };
        let item_run = format!("{run_id}.{index}");
        if let Some(items) = state.runs[i].items.as_mut() {
            items.started += 1;
        }
        match prepared {
            Ok((Some(action), input, delay)) => commands.push(Command::Run {
                run_id: item_run,
                task: task.clone(),
                action,
                input,
                attempt,
                delay,
            }),
            Ok((None, _, _)) => end_item(state, i, index, true, Some(Value::Null)),
            Err(e) => {
                state.errors.push(expression_error(e, Some((&task, route))));
                end_item(state, i, index, false, Some(Value::Null));
            }
        }
    }
}

/// Item `index` of run `run` has ended; `local` is its result when no
/// execution holds it.
pub(super) fn end_item(
    state: &mut FlowState,
    run: usize,
    index: usize,
    succeeded: bool,
    local: Option<Value>,
) {
    if let Some(items) = state.runs[run].items.as_mut() {
        items.end(index, succeeded);
        if let Some(v) = local {
            items.local.insert(index, v);
        }
    }
}

/// The run and item index of an item run id (`<task>.<n>.<i>`).
pub(super) fn item_of(state: &FlowState, run_id: &str) -> Option<(usize, usize)> {
    let (parent, index) = run_id.rsplit_once('.')?;
    let index: usize = index.parse().ok()?;
    let run = state
        .runs
        .iter()
        .position(|r| r.id == parent && r.items.is_some())?;
    Some((run, index))
}

/// Every run id (items included) that is executing and not paused.
pub(super) fn active_run_ids(state: &FlowState) -> Vec<String> {
    let mut ids = Vec::new();
    for run in state
        .runs
        .iter()
        .filter(|r| r.status == TaskStatus::Running)
    {
        match &run.items {
            Some(items) => ids.extend(
                (0..items.started)
                    .filter(|i| items.is_in_flight(*i) && !items.paused.contains(*i))
                    .map(|i| format!("{}.{i}", run.id)),
            ),
            None => ids.push(run.id.clone()),
        }
    }
    ids
}

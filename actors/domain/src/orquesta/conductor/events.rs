//! A task's run ended: retry, transitions and publish, joins and the
//! routes of split tasks, then settling the workflow's status.

use super::*;

/// A task run has finished: retries, then transitions, then maybe the end.
/// For an item of a `with` task `result` is not kept (the engine reads it
/// back from the item's execution, see [`Command::Gather`]).
pub fn task_finished(
    flow: &Flow<'_>,
    state: &mut FlowState,
    run_id: &str,
    succeeded: bool,
    result: Value,
) -> Vec<Command> {
    ended(flow, state, run_id, succeeded, result, false)
}

/// A task run could not even start (its execution could not be created):
/// it fails with `error` as its result.
pub fn run_failed_to_start(
    flow: &Flow<'_>,
    state: &mut FlowState,
    run_id: &str,
    error: Value,
) -> Vec<Command> {
    ended(flow, state, run_id, false, error, true)
}

pub(super) fn ended(
    flow: &Flow<'_>,
    state: &mut FlowState,
    run_id: &str,
    succeeded: bool,
    result: Value,
    keep_item_result: bool,
) -> Vec<Command> {
    let mut commands = Vec::new();
    let status = if succeeded {
        TaskStatus::Succeeded
    } else {
        TaskStatus::Failed
    };
    let local = keep_item_result.then(|| result.clone());
    if state.status == FlowStatus::Canceling {
        // Record the end; no transition runs while canceling.
        match item_of(state, run_id) {
            Some((run, index)) => {
                let Some(items) = state.runs[run].items.as_ref() else {
                    return commands;
                };
                if items.is_in_flight(index) {
                    end_item(state, run, index, succeeded, local);
                    if state.runs[run]
                        .items
                        .as_ref()
                        .is_some_and(|i| i.in_flight() == 0 && !i.gathering)
                    {
                        state.runs[run].status = TaskStatus::Failed;
                    }
                }
            }
            None => {
                if let Some(run) = state.runs.iter_mut().find(|r| {
                    r.id == run_id && matches!(r.status, TaskStatus::Running | TaskStatus::Paused)
                }) {
                    run.status = status;
                    run.result = result;
                }
            }
        }
        settle(flow, state, &mut commands);
        return commands;
    }
    if !matches!(
        state.status,
        FlowStatus::Running | FlowStatus::Pausing | FlowStatus::Paused
    ) {
        return commands;
    }
    // One item of a `with` task.
    if let Some((run, index)) = item_of(state, run_id) {
        let Some(items) = state.runs[run].items.as_ref() else {
            return commands;
        };
        if state.runs[run].status == TaskStatus::Running && items.is_in_flight(index) {
            let was_paused = items.paused.contains(index);
            end_item(state, run, index, succeeded, local);
            let parent = state.runs[run].id.clone();
            start_items(flow, state, &parent, &mut commands);
            if was_paused {
                commands.extend(resume(flow, state));
            }
            settle(flow, state, &mut commands);
        }
        return commands;
    }
    let Some(was_paused) = state
        .runs
        .iter()
        .find(|r| r.id == run_id && matches!(r.status, TaskStatus::Running | TaskStatus::Paused))
        .map(|r| r.status == TaskStatus::Paused)
    else {
        // A replayed or late event: already applied.
        return commands;
    };
    finish_run(flow, state, run_id, status, result, &mut commands);
    // An answered inquiry (or a child workflow that ended while paused)
    // resumes its workflow, as StackStorm's inquiry response does.
    if was_paused {
        commands.extend(resume(flow, state));
    }
    settle(flow, state, &mut commands);
    commands
}

/// The results of a `with` task run's items, in item order, as asked for
/// by [`Command::Gather`]: the task ends with them as its result.
pub fn items_gathered(
    flow: &Flow<'_>,
    state: &mut FlowState,
    run_id: &str,
    results: Vec<Value>,
) -> Vec<Command> {
    let mut commands = Vec::new();
    let Some(run) = state.runs.iter().position(|r| {
        r.id == run_id
            && r.status == TaskStatus::Running
            && r.items.as_ref().is_some_and(|i| i.gathering)
    }) else {
        return commands;
    };
    let status = if state.runs[run].items.as_ref().is_some_and(Items::failed) {
        TaskStatus::Failed
    } else {
        TaskStatus::Succeeded
    };
    if state.status == FlowStatus::Canceling {
        state.runs[run].status = status;
        state.runs[run].result = Value::Array(results);
    } else {
        finish_run(
            flow,
            state,
            run_id,
            status,
            Value::Array(results),
            &mut commands,
        );
    }
    settle(flow, state, &mut commands);
    commands
}

pub(super) fn finish_run(
    flow: &Flow<'_>,
    state: &mut FlowState,
    run_id: &str,
    status: TaskStatus,
    result: Value,
    commands: &mut Vec<Command>,
) {
    let Some(i) = state.runs.iter().position(|r| r.id == run_id) else {
        return;
    };
    state.runs[i].status = status;
    state.runs[i].result = result.clone();
    let (task, attempt, route) = (
        state.runs[i].task.clone(),
        state.runs[i].attempt,
        state.runs[i].route,
    );
    let def: TaskSpec = flow.spec.tasks.get(&task).cloned().unwrap_or_default();
    let failed = status == TaskStatus::Failed;
    if failed {
        state.errors.push(json!({
            "type": "error",
            "message": "Execution failed. See result for details.",
            "task_id": task,
            "result": result,
        }));
    }
    // `retry`: run the same task again while `when` holds.
    if let Some(retry) = &def.retry {
        let scope = Scope::after(flow, state, &status, &result)
            .in_task(&task)
            .on_route(route);
        let wanted = match &retry.when {
            Some(w) => render(&json!(w), &scope).map(|v| yaql::truthy(&v)),
            None => Ok(status == TaskStatus::Failed),
        };
        let count = render(&retry.count, &scope).map(|c| c.as_u64().unwrap_or(0) as u32);
        match (wanted, count) {
            (Ok(true), Ok(count)) if attempt < count => {
                state.remediated += usize::from(failed);
                let delay = retry.delay.as_ref().and_then(Value::as_f64);
                schedule(flow, state, &task, attempt + 1, delay, route, commands);
                return;
            }
            (Err(e), _) | (_, Err(e)) => {
                state.errors.push(expression_error(e, Some((&task, route))))
            }
            _ => {}
        }
    }
    let mut remediated = !failed;
    let mut manual_fail = false;
    let first_new = commands.len();
    // A task named by several taken transitions is staged once: one run
    // (or one arrival at its join) per event, as in Orquesta.
    let mut staged: Vec<&str> = Vec::new();
    for (transition, t) in def.next.iter().enumerate() {
        let when = match &t.when {
            Some(w) => render(
                &json!(w),
                &Scope::after(flow, state, &status, &result)
                    .in_task(&task)
                    .on_route(route),
            )
            .map(|v| yaql::truthy(&v)),
            None => Ok(true),
        };
        match when {
            Ok(false) => continue,
            Ok(true) => {}
            Err(e) => {
                transition_errors(state, (&task, route), transition, &t.next, &e);
                continue;
            }
        }
        for (name, v) in &t.publish {
            match render(
                v,
                &Scope::after(flow, state, &status, &result)
                    .in_task(&task)
                    .on_route(route),
            ) {
                Ok(v) => {
                    state.ctx.insert(name.clone(), v);
                }
                Err(e) => transition_errors(state, (&task, route), transition, &t.next, &e),
            }
        }
        for target in &t.next {
            match target.as_str() {
                "noop" => remediated = true,
                "continue" => {}
                "fail" => {
                    remediated = true;
                    manual_fail = true;
                }
                "retry" if attempt < ENGINE_RETRIES => {
                    state.remediated += usize::from(failed);
                    schedule(flow, state, &task, attempt + 1, None, route, commands);
                    return;
                }
                next if !ENGINE_COMMANDS.contains(&next) => {
                    remediated |= failed;
                    if !staged.contains(&next) {
                        staged.push(next);
                        let via = format!("{task}__t{transition}");
                        arrive(flow, state, next, &via, route, commands);
                    }
                }
                _ => {}
            }
        }
    }
    if failed && remediated {
        state.remediated += 1;
    }
    if manual_fail {
        // Orquesta logs the command as a failed task named `fail`.
        state.errors.push(json!({
            "type": "error",
            "message": "Execution failed. See result for details.",
            "task_id": "fail",
        }));
        for c in &commands[first_new..] {
            if let Command::Run { run_id, .. } = c {
                state.run_on_fail.push(run_id.clone());
            }
        }
    }
}

/// A transition (`via`, `<task>__t<n>`, taken on route `route`) arrives
/// at `task`: run it, or count it toward its join.
pub(super) fn arrive(
    flow: &Flow<'_>,
    state: &mut FlowState,
    task: &str,
    via: &str,
    route: usize,
    commands: &mut Vec<Command>,
) {
    let Some(def) = flow.spec.tasks.get(task) else {
        return;
    };
    let inbound = flow
        .spec
        .tasks
        .values()
        .flat_map(|t| t.next.iter())
        .filter(|n| n.next.iter().any(|x| x == task))
        .count() as u32;
    match def.join {
        None => {
            let route = if inbound > 1 && !in_cycle(flow.spec, task) {
                split_route(state, route, via)
            } else {
                route
            };
            schedule(flow, state, task, 0, None, route, commands)
        }
        Some(join) => {
            let inbound = flow
                .spec
                .tasks
                .values()
                .filter(|t| t.next.iter().any(|n| n.next.iter().any(|x| x == task)))
                .count() as u32;
            let needed = match join {
                Join::All => inbound,
                Join::Count(n) => n.min(inbound.max(1)),
            };
            let arrived = state.joins.entry(task.to_string()).or_insert(0);
            *arrived += 1;
            if *arrived == needed {
                schedule(flow, state, task, 0, None, route, commands);
            }
        }
    }
}

/// The route a split task reached by `via` from route `route` runs on
/// (Orquesta's `_evaluate_route`): `route` plus `via`, a new route unless
/// `via` is already on it.
pub(super) fn split_route(state: &mut FlowState, route: usize, via: &str) -> usize {
    let mut details = route_details(&state.routes, route).to_vec();
    if details.iter().any(|t| t == via) {
        return route;
    }
    details.push(via.to_string());
    state.routes.push(details);
    state.routes.len()
}

/// Whether `task` can reach itself (a loop): a split in a loop stays on
/// its route, as in Orquesta.
pub(super) fn in_cycle(spec: &WorkflowSpec, task: &str) -> bool {
    let next = |name: &str| -> Vec<String> {
        spec.tasks
            .get(name)
            .map(|t| t.next.iter().flat_map(|n| n.next.iter().cloned()).collect())
            .unwrap_or_default()
    };
    let mut seen: Vec<String> = Vec::new();
    let mut queue = next(task);
    while let Some(name) = queue.pop() {
        if name == task {
            return true;
        }
        if !seen.contains(&name) {
            queue.extend(next(&name));
            seen.push(name);
        }
    }
    false
}

/// Whether a run (or an item) is under way and not paused; runs staged
/// for the resume do not count.
pub(super) fn active(state: &FlowState) -> bool {
    let staged: Vec<&str> = state
        .staged
        .iter()
        .filter_map(|c| match c {
            Command::Run { run_id, .. } => Some(run_id.as_str()),
            _ => None,
        })
        .collect();
    state.runs.iter().any(|r| {
        r.status == TaskStatus::Running
            && !staged.contains(&r.id.as_str())
            && r.items
                .as_ref()
                .is_none_or(|i| i.active() > 0 || i.gathering)
    })
}

/// Moves the workflow on when nothing it waits for is left: `paused` once
/// a pausing workflow has nothing active, the end once nothing is
/// unfinished. Once an error is recorded the workflow fails fast: runs
/// this step (or the pause) would have started are dropped, and the end
/// waits only for runs already under way.
pub(super) fn settle(flow: &Flow<'_>, state: &mut FlowState, commands: &mut Vec<Command>) {
    if state.status == FlowStatus::Canceling {
        if !state
            .runs
            .iter()
            .any(|r| matches!(r.status, TaskStatus::Running | TaskStatus::Paused))
        {
            state.status = FlowStatus::Canceled;
            commands.push(Command::Finish {
                status: FlowStatus::Canceled,
                result: json!({"output": null}),
            });
        }
        return;
    }
    if !matches!(
        state.status,
        FlowStatus::Running | FlowStatus::Pausing | FlowStatus::Paused
    ) {
        return;
    }
    if state.failing() {
        let mut dropped = Vec::new();
        let run_on_fail = &state.run_on_fail;
        commands.retain(|c| match c {
            Command::Run { run_id, .. } if !run_on_fail.contains(run_id) => {
                dropped.push(run_id.clone());
                false
            }
            _ => true,
        });
        dropped.extend(state.staged.drain(..).filter_map(run_id_of));
        for id in &dropped {
            // An item that will not start after all.
            if let Some((run, _)) = item_of(state, id) {
                if let Some(items) = state.runs[run].items.as_mut() {
                    items.started -= 1;
                }
            }
        }
        state.runs.retain(|r| !dropped.contains(&r.id));
        fail_idle_with_tasks(state);
    }
    let unfinished = state
        .runs
        .iter()
        .any(|r| matches!(r.status, TaskStatus::Running | TaskStatus::Paused));
    let pausing = matches!(state.status, FlowStatus::Pausing | FlowStatus::Paused);
    // Orquesta: a pausing workflow whose last run ends is `paused`, not
    // over (the resume ends it); a failure ends it.
    if pausing && (unfinished || !state.staged.is_empty() || !state.failing()) {
        if state.status == FlowStatus::Pausing && !active(state) {
            state.status = FlowStatus::Paused;
            commands.push(Command::Status {
                status: FlowStatus::Paused,
            });
        }
        return;
    }
    if unfinished {
        // Orquesta: a running workflow with a paused run (a child
        // workflow paused on its own) is `paused` once no other is active.
        let paused = state.runs.iter().any(|r| {
            r.status == TaskStatus::Paused || r.items.as_ref().is_some_and(|i| i.paused_count > 0)
        });
        if state.status == FlowStatus::Running && paused && !active(state) {
            state.status = FlowStatus::Paused;
            commands.push(Command::Status {
                status: FlowStatus::Paused,
            });
        }
        return;
    }
    // Each output sees the ones before it (Orquesta renders them in order
    // into a rolling context), and no output at all is `null`.
    let mut output = Map::new();
    let mut rolling = state.clone();
    // Orquesta renders outputs in its terminal tasks' context: when no
    // task ever ran (each one that started failed to render: failed with
    // no result), that context is empty.
    if rolling
        .runs
        .iter()
        .all(|r| r.status == TaskStatus::Failed && r.result.is_null())
    {
        rolling.ctx.clear();
    }
    for (name, v) in &flow.spec.output {
        match render(v, &Scope::plain(flow, &rolling)) {
            Ok(v) => {
                rolling.ctx.insert(name.clone(), v.clone());
                output.insert(name.clone(), v);
            }
            Err(e) => state.errors.push(expression_error(e, None)),
        }
    }
    let output = if output.is_empty() {
        Value::Null
    } else {
        Value::Object(output)
    };
    let (status, result) = if !state.failing() {
        (FlowStatus::Succeeded, json!({"output": output}))
    } else {
        (
            FlowStatus::Failed,
            json!({"errors": state.errors, "output": output}),
        )
    };
    state.status = status;
    commands.push(Command::Finish { status, result });
}

/// Fails each running `with` task that has no item in flight: it will hear
/// of nothing more and start nothing more.
pub(super) fn fail_idle_with_tasks(state: &mut FlowState) {
    for run in &mut state.runs {
        if run.status == TaskStatus::Running
            && run
                .items
                .as_ref()
                .is_some_and(|i| i.in_flight() == 0 && !i.gathering)
        {
            run.status = TaskStatus::Failed;
        }
    }
}

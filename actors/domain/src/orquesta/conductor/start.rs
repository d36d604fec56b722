//! Starting a workflow (input, vars, the start tasks) and re-running one
//! from tasks; rendering a task's action and input, and its items.

use super::*;

/// Starts a workflow: input (given values over defaults), vars, then the
/// tasks no transition leads to.
pub fn start(
    flow: &Flow<'_>,
    given: &Map<String, Value>,
    runtime: Map<String, Value>,
) -> (FlowState, Vec<Command>) {
    let mut state = FlowState {
        status: FlowStatus::Running,
        user: runtime_user(&runtime).unwrap_or_default(),
        ctx: runtime,
        runs: Vec::new(),
        joins: BTreeMap::new(),
        errors: Vec::new(),
        counts: BTreeMap::new(),
        staged: Vec::new(),
        remediated: 0,
        run_on_fail: Vec::new(),
        routes: Vec::new(),
    };
    let mut commands = Vec::new();
    for (name, default) in &flow.spec.input {
        let value = match (given.get(name), default) {
            (Some(v), _) => Ok(v.clone()),
            (None, Some(d)) => render(d, &Scope::plain(flow, &state)),
            // Orquesta: an input with no value and no default is null.
            (None, None) => Ok(Value::Null),
        };
        match value {
            Ok(v) => {
                state.ctx.insert(name.clone(), v);
            }
            Err(e) => state.errors.push(expression_error(e, None)),
        }
    }
    for (name, v) in &flow.spec.vars {
        match render(v, &Scope::plain(flow, &state)) {
            Ok(v) => {
                state.ctx.insert(name.clone(), v);
            }
            Err(e) => state.errors.push(expression_error(e, None)),
        }
    }
    if state.failing() {
        // Orquesta fails such a workflow before it starts: no output.
        state.status = FlowStatus::Failed;
        commands.push(Command::Finish {
            status: FlowStatus::Failed,
            result: json!({"errors": state.errors, "output": null}),
        });
        return (state, commands);
    }
    let targets: Vec<&String> = flow
        .spec
        .tasks
        .values()
        .flat_map(|t| t.next.iter().flat_map(|n| n.next.iter()))
        .collect();
    let starts: Vec<String> = flow
        .spec
        .tasks
        .keys()
        .filter(|t| !targets.contains(t))
        .cloned()
        .collect();
    for task in starts {
        schedule(flow, &mut state, &task, 0, None, 0, &mut commands);
    }
    settle(flow, &mut state, &mut commands);
    (state, commands)
}

/// Re-runs a finished workflow from `tasks` (StackStorm's `re_run` with
/// `tasks`, Orquesta's `request_workflow_rerun`): the workflow continues
/// with its context and finished runs, and runs the named tasks again
/// (each must have run); what they lead to runs as usual. A `with` task
/// named in `reset` runs all its items again; otherwise only the items
/// that did not succeed run again, and the others keep their results.
/// `runtime` replaces the old run's `st2` context.
pub fn rerun(
    flow: &Flow<'_>,
    previous: &FlowState,
    tasks: &[String],
    reset: &[String],
    runtime: Map<String, Value>,
) -> Result<(FlowState, Vec<Command>), String> {
    if !previous.status.is_finished() {
        return Err(format!(
            "only a finished workflow can be re-run from tasks; this one is {}",
            json!(previous.status).as_str().unwrap_or_default()
        ));
    }
    for task in tasks {
        if !previous.runs.iter().any(|r| &r.task == task) {
            return Err(format!(
                "task {task:?} never ran in the workflow being re-run (tasks that ran: {})",
                ran_tasks(previous).join(", ")
            ));
        }
    }
    let mut state = FlowState {
        status: FlowStatus::Running,
        errors: Vec::new(),
        staged: Vec::new(),
        remediated: 0,
        run_on_fail: Vec::new(),
        ..previous.clone()
    };
    if let Some(user) = runtime_user(&runtime) {
        state.user = user;
    }
    state.ctx.extend(runtime);
    let mut commands = Vec::new();
    for task in tasks {
        let kept = if reset.contains(task) {
            BTreeMap::new()
        } else {
            succeeded_items(previous, task)
        };
        let route = previous
            .runs
            .iter()
            .rev()
            .find(|r| &r.task == task)
            .map_or(0, |r| r.route);
        schedule_keeping(flow, &mut state, task, 0, None, route, kept, &mut commands);
    }
    settle(flow, &mut state, &mut commands);
    Ok((state, commands))
}

/// The user a run's `st2` context names.
fn runtime_user(runtime: &Map<String, Value>) -> Option<String> {
    runtime
        .get("st2")
        .and_then(|s| s.get("user"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// The names of the tasks that ran, in the order they first ran.
pub(super) fn ran_tasks(state: &FlowState) -> Vec<&str> {
    let mut names: Vec<&str> = Vec::new();
    for run in &state.runs {
        if !names.contains(&run.task.as_str()) {
            names.push(&run.task);
        }
    }
    names
}

/// The results of the items that succeeded in `task`'s latest run, by
/// index (none when it is not a `with` task).
pub(super) fn succeeded_items(state: &FlowState, task: &str) -> BTreeMap<usize, Value> {
    let Some(run) = state.runs.iter().rev().find(|r| r.task == task) else {
        return BTreeMap::new();
    };
    let Some(items) = &run.items else {
        return BTreeMap::new();
    };
    let results = run.result.as_array();
    (0..items.count)
        .filter(|i| items.ended.contains(*i) && !items.failed.contains(*i))
        .map(|i| {
            let result = results.and_then(|r| r.get(i)).cloned();
            (i, result.unwrap_or(Value::Null))
        })
        .collect()
}

/// The action, input and delay of one run of `def` (or of one item).
pub(super) fn prepare(
    def: &TaskSpec,
    scope: &Scope<'_>,
) -> Result<(Option<String>, Value, Option<f64>), String> {
    let action = match &def.action {
        Some(a) => Some(match render(&json!(a), scope)? {
            Value::String(s) => s,
            other => return Err(format!("action must be a ref, got {other}")),
        }),
        None => None,
    };
    let input = render(&def.input, scope)?;
    let delay = match &def.delay {
        Some(d) => Some(
            render(d, scope)?
                .as_f64()
                .ok_or("delay must be a number of seconds")?,
        ),
        None => None,
    };
    Ok((action, input, delay))
}

/// The items of a `with` task and how many may run at once.
pub(super) fn items_of(
    flow: &Flow<'_>,
    def: &TaskSpec,
    state: &FlowState,
) -> Result<Option<Items>, String> {
    let Some(with) = &def.with else {
        return Ok(None);
    };
    let scope = Scope::plain(flow, state);
    let values = match render(&json!(with.items), &scope)? {
        Value::Array(items) => items,
        other => return Err(format!("with items must be a list, got {other}")),
    };
    // `x, y in <% zip(a, b) %>`: each item is a dict of the names.
    let values: Vec<Value> = if with.vars.len() > 1 {
        values
            .into_iter()
            .map(|v| match v {
                Value::Array(parts) => Value::Object(
                    with.vars
                        .iter()
                        .cloned()
                        .zip(parts.into_iter().chain(std::iter::repeat(Value::Null)))
                        .collect(),
                ),
                other => Value::Object(Map::from_iter([(with.vars[0].clone(), other)])),
            })
            .collect()
    } else {
        values
    };
    let concurrency = match &with.concurrency {
        None => values.len().max(1),
        // As Orquesta: none is no limit, and below 1 is 1.
        Some(c) => match render(c, &scope)? {
            Value::Null => values.len().max(1),
            v => v
                .as_f64()
                .ok_or("with concurrency must be a number")?
                .max(1.0) as usize,
        },
    };
    Ok(Some(Items::new(values, concurrency)))
}

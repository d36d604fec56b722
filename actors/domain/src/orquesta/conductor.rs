//! The conductor: Orquesta's semantics as a pure state machine. Given a
//! workflow's state and one event (started, or a task finished), it
//! returns the new state and the commands to carry out (run a task's
//! action, finish the workflow). No I/O: the engine persists the state and
//! carries the commands out idempotently (every task run has an id derived
//! from the workflow, the task and its attempt), so replaying an event
//! after a crash cannot run anything twice.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::spec::{Join, TaskSpec, WorkflowSpec, ENGINE_COMMANDS};
use crate::yaql::{self, Host};

/// Where a workflow is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowStatus {
    Running,
    Succeeded,
    Failed,
}

/// Where one task run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Running,
    Succeeded,
    Failed,
}

/// One run of a task (a task can run more than once: retries, or several
/// inbound transitions without a join).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRun {
    /// `<task>.<n>`: unique within the workflow, stable across replays.
    pub id: String,
    pub task: String,
    pub status: TaskStatus,
    #[serde(default)]
    pub result: Value,
    /// 0 for the first run, then one more per retry.
    pub attempt: u32,
}

/// A workflow's whole state, as the engine stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowState {
    pub status: FlowStatus,
    pub ctx: Map<String, Value>,
    pub runs: Vec<TaskRun>,
    /// Inbound transitions that have arrived at each join task.
    #[serde(default)]
    pub joins: BTreeMap<String, u32>,
    #[serde(default)]
    pub errors: Vec<Value>,
    /// Runs per task name so far, for run ids.
    #[serde(default)]
    pub counts: BTreeMap<String, u32>,
}

/// Something the engine must do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Run `action` with `input` as task run `run_id`.
    Run {
        run_id: String,
        task: String,
        action: String,
        input: Value,
        attempt: u32,
        /// Seconds to wait first.
        delay: Option<f64>,
    },
    /// The workflow is over; `result` is its execution result
    /// (`{output}` or `{errors, output}`).
    Finish { status: FlowStatus, result: Value },
}

/// How many times `retry` (the engine command) re-runs a task.
const ENGINE_RETRIES: u32 = 3;

/// Functions Orquesta adds to expressions, for one evaluation.
struct Scope<'a> {
    state: &'a FlowState,
    /// The current task run's status and result, inside `next`.
    current: Option<(&'a TaskStatus, &'a Value)>,
}

impl Host for Scope<'_> {
    fn call(&self, name: &str, args: &[Value]) -> Option<Result<Value, String>> {
        let status = self.current.map(|(s, _)| *s);
        Some(Ok(match name {
            "ctx" => match args.first() {
                None => Value::Object(
                    self.state
                        .ctx
                        .iter()
                        .filter(|(k, _)| !k.starts_with("__"))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                ),
                Some(Value::String(k)) => match self.state.ctx.get(k) {
                    Some(v) => v.clone(),
                    None => return Some(Err(format!("variable {k:?} is not in the context"))),
                },
                Some(other) => return Some(Err(format!("ctx() takes a name, not {other}"))),
            },
            "result" => self.current.map_or(Value::Null, |(_, r)| r.clone()),
            "succeeded" => json!(status == Some(TaskStatus::Succeeded)),
            "failed" => json!(status == Some(TaskStatus::Failed)),
            "completed" => json!(matches!(
                status,
                Some(TaskStatus::Succeeded | TaskStatus::Failed)
            )),
            "task_status" => {
                let task = args.first().and_then(Value::as_str).unwrap_or_default();
                self.state
                    .runs
                    .iter()
                    .rev()
                    .find(|r| r.task == task)
                    .map_or(json!("null"), |r| json!(r.status))
            }
            _ => return None,
        }))
    }
}

/// Evaluates the expressions in `v` (YAQL `<% %>`).
fn render(v: &Value, scope: &Scope<'_>) -> Result<Value, String> {
    if let Some(s) = first_jinja(v) {
        return Err(format!(
            "Jinja expressions in workflows are not evaluated yet (found {s:?}); write it in YAQL (<% %>)"
        ));
    }
    yaql::render(v, &Value::Object(scope.state.ctx.clone()), scope).map_err(|e| e.to_string())
}

fn first_jinja(v: &Value) -> Option<&str> {
    match v {
        Value::String(s) if s.contains("{{") || s.contains("{%") => Some(s),
        Value::Array(items) => items.iter().find_map(first_jinja),
        Value::Object(m) => m.values().find_map(first_jinja),
        _ => None,
    }
}

fn expression_error(message: String, task_id: Option<&str>) -> Value {
    let mut e = json!({"type": "error", "message": message});
    if let Some(t) = task_id {
        e["task_id"] = json!(t);
    }
    e
}

/// Starts a workflow: input (given values over defaults), vars, then the
/// tasks no transition leads to.
pub fn start(
    spec: &WorkflowSpec,
    given: &Map<String, Value>,
    runtime: Map<String, Value>,
) -> (FlowState, Vec<Command>) {
    let mut state = FlowState {
        status: FlowStatus::Running,
        ctx: runtime,
        runs: Vec::new(),
        joins: BTreeMap::new(),
        errors: Vec::new(),
        counts: BTreeMap::new(),
    };
    let mut commands = Vec::new();
    for (name, default) in &spec.input {
        let value = match (given.get(name), default) {
            (Some(v), _) => Ok(v.clone()),
            (None, Some(d)) => render(
                d,
                &Scope {
                    state: &state,
                    current: None,
                },
            ),
            (None, None) => Err(format!("input {name:?} is required")),
        };
        match value {
            Ok(v) => {
                state.ctx.insert(name.clone(), v);
            }
            Err(e) => state.errors.push(expression_error(e, None)),
        }
    }
    for (name, v) in &spec.vars {
        match render(
            v,
            &Scope {
                state: &state,
                current: None,
            },
        ) {
            Ok(v) => {
                state.ctx.insert(name.clone(), v);
            }
            Err(e) => state.errors.push(expression_error(e, None)),
        }
    }
    if state.errors.is_empty() {
        let targets: Vec<&String> = spec
            .tasks
            .values()
            .flat_map(|t| t.next.iter().flat_map(|n| n.next.iter()))
            .collect();
        let starts: Vec<String> = spec
            .tasks
            .keys()
            .filter(|t| !targets.contains(t))
            .cloned()
            .collect();
        for task in starts {
            schedule(spec, &mut state, &task, 0, &mut commands);
        }
    }
    settle(spec, &mut state, &mut commands);
    (state, commands)
}

/// Runs `task` (or, without an action, passes straight through it).
fn schedule(
    spec: &WorkflowSpec,
    state: &mut FlowState,
    task: &str,
    attempt: u32,
    commands: &mut Vec<Command>,
) {
    let Some(def) = spec.tasks.get(task) else {
        return;
    };
    let n = state.counts.entry(task.to_string()).or_insert(0);
    let run_id = format!("{task}.{n}");
    *n += 1;
    let scope = Scope {
        state,
        current: None,
    };
    let prepared = (|| -> Result<(Option<String>, Value, Option<f64>), String> {
        let action = match &def.action {
            Some(a) => Some(match render(&json!(a), &scope)? {
                Value::String(s) => s,
                other => return Err(format!("action must be a ref, got {other}")),
            }),
            None => None,
        };
        let input = render(&def.input, &scope)?;
        let delay = match &def.delay {
            Some(d) => Some(
                render(d, &scope)?
                    .as_f64()
                    .ok_or("delay must be a number of seconds")?,
            ),
            None => None,
        };
        Ok((action, input, delay))
    })();
    state.runs.push(TaskRun {
        id: run_id.clone(),
        task: task.to_string(),
        status: TaskStatus::Running,
        result: Value::Null,
        attempt,
    });
    match prepared {
        Ok((Some(action), input, delay)) => commands.push(Command::Run {
            run_id,
            task: task.to_string(),
            action,
            input,
            attempt,
            delay,
        }),
        // A task without an action only routes: it succeeds at once.
        Ok((None, _, _)) => finish_run(
            spec,
            state,
            &run_id,
            TaskStatus::Succeeded,
            Value::Null,
            commands,
        ),
        Err(e) => {
            state.errors.push(expression_error(e, Some(task)));
            finish_run(
                spec,
                state,
                &run_id,
                TaskStatus::Failed,
                Value::Null,
                commands,
            );
        }
    }
}

/// A task run has finished: retries, then transitions, then maybe the end.
pub fn task_finished(
    spec: &WorkflowSpec,
    state: &mut FlowState,
    run_id: &str,
    succeeded: bool,
    result: Value,
) -> Vec<Command> {
    let mut commands = Vec::new();
    let still_running = state
        .runs
        .iter()
        .any(|r| r.id == run_id && r.status == TaskStatus::Running);
    if state.status != FlowStatus::Running || !still_running {
        // A replayed or late event: already applied.
        return commands;
    }
    let status = if succeeded {
        TaskStatus::Succeeded
    } else {
        TaskStatus::Failed
    };
    finish_run(spec, state, run_id, status, result, &mut commands);
    settle(spec, state, &mut commands);
    commands
}

fn finish_run(
    spec: &WorkflowSpec,
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
    let (task, attempt) = (state.runs[i].task.clone(), state.runs[i].attempt);
    let def: TaskSpec = spec.tasks.get(&task).cloned().unwrap_or_default();
    // `retry`: run the same task again while `when` holds.
    if let Some(retry) = &def.retry {
        let scope = Scope {
            state,
            current: Some((&status, &result)),
        };
        let wanted = match &retry.when {
            Some(w) => render(&json!(w), &scope).map(|v| yaql::truthy(&v)),
            None => Ok(status == TaskStatus::Failed),
        };
        let count = render(&retry.count, &scope).map(|c| c.as_u64().unwrap_or(0) as u32);
        match (wanted, count) {
            (Ok(true), Ok(count)) if attempt < count => {
                schedule_retry(
                    spec,
                    state,
                    &task,
                    attempt + 1,
                    retry.delay.as_ref(),
                    commands,
                );
                return;
            }
            (Err(e), _) | (_, Err(e)) => state.errors.push(expression_error(e, Some(&task))),
            _ => {}
        }
    }
    let mut remediated = status == TaskStatus::Succeeded;
    for (route, t) in def.next.iter().enumerate() {
        let scope = Scope {
            state,
            current: Some((&status, &result)),
        };
        let when = match &t.when {
            Some(w) => render(&json!(w), &scope).map(|v| yaql::truthy(&v)),
            None => Ok(true),
        };
        match when {
            Ok(false) => continue,
            Ok(true) => {}
            Err(e) => {
                state.errors.push(expression_error(e, Some(&task)));
                continue;
            }
        }
        for (name, v) in &t.publish {
            let scope = Scope {
                state,
                current: Some((&status, &result)),
            };
            match render(v, &scope) {
                Ok(v) => {
                    state.ctx.insert(name.clone(), v);
                }
                Err(e) => state.errors.push(expression_error(e, Some(&task))),
            }
        }
        for target in &t.next {
            match target.as_str() {
                "noop" => remediated = true,
                "continue" => {}
                "fail" => {
                    remediated = true;
                    state.errors.push(json!({
                        "type": "error",
                        "message": format!("Execution failed: task {task} ran the fail command."),
                        "task_id": task,
                        "route": route,
                    }));
                }
                "retry" if attempt < ENGINE_RETRIES => {
                    schedule_retry(spec, state, &task, attempt + 1, None, commands);
                    return;
                }
                next if !ENGINE_COMMANDS.contains(&next) => {
                    remediated |= status == TaskStatus::Failed;
                    arrive(spec, state, next, commands);
                }
                _ => {}
            }
        }
    }
    if !remediated {
        state.errors.push(json!({
            "type": "error",
            "message": "Execution failed. See result for details.",
            "task_id": task,
            "result": result,
        }));
    }
}

fn schedule_retry(
    spec: &WorkflowSpec,
    state: &mut FlowState,
    task: &str,
    attempt: u32,
    delay: Option<&Value>,
    commands: &mut Vec<Command>,
) {
    let before = commands.len();
    schedule(spec, state, task, attempt, commands);
    if let (Some(d), Some(Command::Run { delay: slot, .. })) = (delay, commands.get_mut(before)) {
        *slot = d.as_f64();
    }
}

/// A transition arrives at `task`: run it, or count it toward its join.
fn arrive(spec: &WorkflowSpec, state: &mut FlowState, task: &str, commands: &mut Vec<Command>) {
    let Some(def) = spec.tasks.get(task) else {
        return;
    };
    match def.join {
        None => schedule(spec, state, task, 0, commands),
        Some(join) => {
            let inbound = spec
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
                schedule(spec, state, task, 0, commands);
            }
        }
    }
}

/// Ends the workflow when nothing runs any more. Once an error is
/// recorded the workflow fails fast: runs this step would have started are
/// dropped, and the end waits only for runs already under way.
fn settle(spec: &WorkflowSpec, state: &mut FlowState, commands: &mut Vec<Command>) {
    if state.status != FlowStatus::Running {
        return;
    }
    if !state.errors.is_empty() {
        let dropped: Vec<String> = commands
            .iter()
            .filter_map(|c| match c {
                Command::Run { run_id, .. } => Some(run_id.clone()),
                Command::Finish { .. } => None,
            })
            .collect();
        commands.retain(|c| !matches!(c, Command::Run { .. }));
        state.runs.retain(|r| !dropped.contains(&r.id));
    }
    if state.runs.iter().any(|r| r.status == TaskStatus::Running) {
        return;
    }
    let mut output = Map::new();
    let mut output_errors = Vec::new();
    for (name, v) in &spec.output {
        match render(
            v,
            &Scope {
                state,
                current: None,
            },
        ) {
            Ok(v) => {
                output.insert(name.clone(), v);
            }
            Err(e) => output_errors.push(expression_error(e, None)),
        }
    }
    state.errors.extend(output_errors);
    let (status, result) = if state.errors.is_empty() {
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

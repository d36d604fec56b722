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
    /// Cancel asked: no new task starts; ends `canceled` once the running
    /// ones have ended.
    Canceling,
    Canceled,
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
    /// A `with` task's items and their progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<Items>,
}

/// The items of one run of a `with` task. Item `i` runs as
/// `<run id>.<i>`; at most `concurrency` at once; the task's result is the
/// list of the items' results, in item order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Items {
    /// What `item()` is for each item.
    pub values: Vec<Value>,
    pub results: Vec<Option<(bool, Value)>>,
    /// Items started so far (they start in order).
    pub started: usize,
    pub concurrency: usize,
}

impl Items {
    fn running(&self) -> usize {
        self.started - self.results.iter().filter(|r| r.is_some()).count()
    }

    fn failed(&self) -> bool {
        self.results.iter().any(|r| matches!(r, Some((false, _))))
    }
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
    /// How many entries of `errors` are failed runs that a transition or a
    /// retry took on. Orquesta logs every failed run; these fail nothing,
    /// and the log is shown only if something else fails the workflow.
    #[serde(default)]
    pub remediated: usize,
    /// Runs started next to a `fail` command: they run although the
    /// workflow is failing (Orquesta's `run_on_fail`), so a task can
    /// remediate and fail in one transition.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub run_on_fail: Vec<String>,
}

impl FlowState {
    /// Whether an error fails the workflow: nothing new starts.
    pub fn failing(&self) -> bool {
        self.errors.len() > self.remediated
    }
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
    /// Stop task run `run_id` (the workflow is being canceled).
    Cancel { run_id: String },
    /// The workflow is over; `result` is its execution result
    /// (`{output}` or `{errors, output}`).
    Finish { status: FlowStatus, result: Value },
}

/// How many times `retry` (the engine command) re-runs a task.
const ENGINE_RETRIES: u32 = 3;

static RENDERER: std::sync::LazyLock<crate::template::Renderer> =
    std::sync::LazyLock::new(crate::template::Renderer::orquesta);

/// The StackStorm filter a workflow function name calls, if it is one
/// (Orquesta's `json_parse`, `json_dump`, `yaml_parse` and `yaml_dump`
/// are other names for the JSON and YAML ones).
fn filter_function(name: &str) -> Option<&'static str> {
    let alias = match name {
        "json_parse" => "from_json_string",
        "json_dump" => "to_json_string",
        "yaml_parse" => "from_yaml_string",
        "yaml_dump" => "to_yaml_string",
        other => other,
    };
    crate::template::ORQUESTA_FUNCTIONS
        .iter()
        .copied()
        .find(|f| *f == alias)
}

/// Functions Orquesta adds to expressions, for one evaluation.
struct Scope<'a> {
    state: &'a FlowState,
    /// The task being run or routed, for `task()` without a name.
    task: Option<&'a str>,
    /// The current task run's status and result, inside `next`.
    current: Option<(&'a TaskStatus, &'a Value)>,
    /// The current item, in a `with` task's input.
    item: Option<&'a Value>,
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
            "item" => match (self.item, args.first()) {
                (None, _) => return Some(Err("item() is only defined in a `with` task".into())),
                (Some(item), None) => item.clone(),
                // `x, y in ...` items are dicts of the names; with one name
                // (`x in ...`), `item(x)` is the element itself.
                (Some(item), Some(Value::String(name))) => {
                    item.get(name).cloned().unwrap_or_else(|| item.clone())
                }
                (Some(_), Some(other)) => {
                    return Some(Err(format!("item() takes a name, not {other}")))
                }
            },
            "succeeded" => json!(status == Some(TaskStatus::Succeeded)),
            "failed" => json!(status == Some(TaskStatus::Failed)),
            "completed" => json!(matches!(
                status,
                Some(TaskStatus::Succeeded | TaskStatus::Failed)
            )),
            "task" => {
                let name = match (args.first(), self.task) {
                    (Some(Value::String(name)), _) => name.as_str(),
                    (None, Some(current)) => current,
                    (None, None) => return Some(Err("task() needs a task name here".into())),
                    (Some(other), _) => {
                        return Some(Err(format!("task() takes a task name, not {other}")))
                    }
                };
                match task_record(self.state, name) {
                    Some(record) => record,
                    None => return Some(Err(no_task_execution(name))),
                }
            }
            "task_status" => {
                let task = args.first().and_then(Value::as_str).unwrap_or_default();
                self.state
                    .runs
                    .iter()
                    .rev()
                    .find(|r| r.task == task)
                    .map_or(json!("null"), |r| json!(r.status))
            }
            other => return filter_function(other).map(|f| RENDERER.call_filter(f, args)),
        }))
    }
}

/// What `task(name)` gives, as st2's Orquesta runner builds it from the
/// task's latest run: a `with` task's result is `{"items": [{status,
/// result}, ...]}`.
fn task_record(state: &FlowState, name: &str) -> Option<Value> {
    let run = state.runs.iter().rev().find(|r| r.task == name)?;
    let result = match &run.items {
        Some(items) => json!({"items": items.results.iter().map(|r| match r {
            Some((ok, result)) => json!({
                "status": if *ok { "succeeded" } else { "failed" },
                "result": result,
            }),
            None => Value::Null,
        }).collect::<Vec<_>>()}),
        None => run.result.clone(),
    };
    let workflow = state
        .ctx
        .get("st2")
        .and_then(|st2| st2.get("action_execution_id"))
        .cloned()
        .unwrap_or(Value::Null);
    Some(json!({
        "workflow_execution_id": workflow,
        "task_name": name,
        "task_id": name,
        "route": 0,
        "result": result,
        "status": run.status,
    }))
}

fn no_task_execution(name: &str) -> String {
    format!("ExpressionEvaluationException: Unable to find task execution for \"{name}\".")
}

/// Evaluates the expressions in `v`: YAQL (`<% %>`) or Jinja (`{{ }}`),
/// one language per string, with Orquesta's functions.
fn render(v: &Value, scope: &Scope<'_>) -> Result<Value, String> {
    match v {
        Value::String(s) if s.contains("<%") => {
            yaql::render(v, &Value::Object(scope.state.ctx.clone()), scope)
                .map_err(|e| yaql_message(s, &e))
        }
        Value::String(s) if crate::template::is_template(s) => render_jinja(v, scope),
        Value::Array(items) => items
            .iter()
            .map(|i| render(i, scope))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, item) in m {
                let key = match render(&Value::String(k.clone()), scope)? {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                out.insert(key, render(item, scope)?);
            }
            Ok(Value::Object(out))
        }
        other => Ok(other.clone()),
    }
}

/// One Jinja string, with `ctx()`, `result()`, `succeeded()`, `failed()`,
/// `completed()`, `item()` and `task_status()` as Orquesta defines them.
fn render_jinja(v: &Value, scope: &Scope<'_>) -> Result<Value, String> {
    use minijinja::value::Value as J;
    use minijinja::{Error, ErrorKind};
    let visible: Map<String, Value> = scope
        .state
        .ctx
        .iter()
        .filter(|(k, _)| !k.starts_with("__"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let status = scope.current.map(|(s, _)| *s);
    let result = scope.current.map_or(Value::Null, |(_, r)| r.clone());
    let item = scope.item.cloned();
    let statuses: BTreeMap<String, String> = scope
        .state
        .runs
        .iter()
        .map(|r| {
            (
                r.task.clone(),
                json!(r.status).as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let mut extra = crate::template::Extras::new();
    let ctx_map = visible.clone();
    extra.insert(
        "ctx".into(),
        J::from_function(move |name: Option<String>| -> Result<J, Error> {
            match name {
                None => Ok(J::from_serialize(&ctx_map)),
                Some(n) => ctx_map.get(&n).map(J::from_serialize).ok_or_else(|| {
                    Error::new(
                        ErrorKind::UndefinedError,
                        format!("variable {n:?} is not in the context"),
                    )
                }),
            }
        }),
    );
    extra.insert(
        "result".into(),
        J::from_function(move || J::from_serialize(&result)),
    );
    for (name, want) in [
        ("succeeded", Some(TaskStatus::Succeeded)),
        ("failed", Some(TaskStatus::Failed)),
    ] {
        extra.insert(
            name.into(),
            J::from_function(move || status.is_some() && status == want),
        );
    }
    extra.insert(
        "completed".into(),
        J::from_function(move || {
            matches!(status, Some(TaskStatus::Succeeded | TaskStatus::Failed))
        }),
    );
    extra.insert(
        "item".into(),
        J::from_function(move |name: Option<String>| -> Result<J, Error> {
            let Some(item) = &item else {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "item() is only defined in a `with` task",
                ));
            };
            Ok(J::from_serialize(
                name.and_then(|n| item.get(&n).cloned())
                    .as_ref()
                    .unwrap_or(item),
            ))
        }),
    );
    // Built only when asked for: a `with` task's record holds every item.
    let mut records: BTreeMap<String, Value> = BTreeMap::new();
    if v.as_str().is_some_and(|s| s.contains("task(")) {
        for run in &scope.state.runs {
            if !records.contains_key(&run.task) {
                if let Some(record) = task_record(scope.state, &run.task) {
                    records.insert(run.task.clone(), record);
                }
            }
        }
    }
    let current = scope.task.map(str::to_string);
    extra.insert(
        "task".into(),
        J::from_function(move |name: Option<String>| -> Result<J, Error> {
            let name = name.or_else(|| current.clone()).unwrap_or_default();
            records
                .get(&name)
                .map(J::from_serialize)
                .ok_or_else(|| Error::new(ErrorKind::InvalidOperation, no_task_execution(&name)))
        }),
    );
    for name in ["json_parse", "json_dump", "yaml_parse", "yaml_dump"]
        .into_iter()
        .chain(crate::template::ORQUESTA_FUNCTIONS.iter().copied())
    {
        let Some(filter) = filter_function(name) else {
            continue;
        };
        extra.insert(
            name.into(),
            J::from_function(move |args: minijinja::value::Rest<J>| -> Result<J, Error> {
                let args: Vec<Value> = args
                    .iter()
                    .map(serde_json::to_value)
                    .collect::<Result<_, _>>()
                    .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
                RENDERER
                    .call_filter(filter, &args)
                    .map(|v| J::from_serialize(&v))
                    .map_err(|e| Error::new(ErrorKind::InvalidOperation, e))
            }),
        );
    }
    extra.insert(
        "task_status".into(),
        J::from_function(move |task: String| {
            statuses
                .get(&task)
                .cloned()
                .unwrap_or_else(|| "null".into())
        }),
    );
    RENDERER
        .render_value_with(
            v,
            &Value::Object(visible),
            &extra,
            &crate::template::NoKeyValues,
        )
        .map_err(|e| jinja_message(&e))
}

/// A YAQL error as Orquesta words it (its `YaqlEvaluationException`,
/// quoting the failing expression), so that clients comparing results
/// see the same text.
fn yaql_message(source: &str, e: &yaql::YaqlError) -> String {
    let expr = expression_at(source, e.position);
    let missing_key = e
        .message
        .strip_prefix("Unable to resolve key '")
        .and_then(|k| k.strip_suffix('\''));
    match missing_key {
        Some(key) => format!(
            "YaqlEvaluationException: Unable to resolve key '{key}' in expression '{expr}' from context."
        ),
        None => {
            let class = if e.message.starts_with("Unknown function") {
                "NoFunctionRegisteredException: "
            } else {
                ""
            };
            format!(
                "YaqlEvaluationException: Unable to evaluate expression '{expr}'. {class}{}",
                e.message
            )
        }
    }
}

/// The `<% %>` expression of `source` around `position` (the first one
/// when none is).
fn expression_at(source: &str, position: usize) -> &str {
    let mut first = None;
    let mut from = 0;
    while let Some(start) = source[from..].find("<%").map(|i| i + from) {
        let end = source[start..]
            .find("%>")
            .map_or(source.len(), |i| start + i + 2);
        if (start..end).contains(&position) {
            return &source[start..end];
        }
        first.get_or_insert(&source[start..end]);
        from = end;
    }
    first.unwrap_or(source)
}

/// A Jinja error as Orquesta words it (its `JinjaEvaluationException`).
fn jinja_message(e: &crate::template::TemplateError) -> String {
    let detail = e
        .message
        .strip_prefix("invalid operation: ")
        .unwrap_or(&e.message);
    format!(
        "JinjaEvaluationException: Unable to evaluate expression '{}'. {detail}",
        e.template
    )
}

/// An error entry; one about a task names it and its route (always 0:
/// Squall does not number routes).
fn expression_error(message: String, task_id: Option<&str>) -> Value {
    let mut e = json!({"type": "error", "message": message});
    if let Some(t) = task_id {
        e["task_id"] = json!(t);
        e["route"] = json!(0);
    }
    e
}

/// The errors of transition `index` of `task`: Orquesta evaluates a
/// transition once per task it names (`continue` when it names none), so
/// it logs one entry per target, each with its `<target>__t<index>`.
fn transition_errors(state: &mut FlowState, task: &str, index: usize, targets: &[String], e: &str) {
    let continue_ = ["continue".to_string()];
    let targets = if targets.is_empty() {
        &continue_[..]
    } else {
        targets
    };
    for target in targets {
        let mut entry = expression_error(e.to_string(), Some(task));
        entry["task_transition_id"] = json!(format!("{target}__t{index}"));
        state.errors.push(entry);
    }
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
        remediated: 0,
        run_on_fail: Vec::new(),
    };
    let mut commands = Vec::new();
    for (name, default) in &spec.input {
        let value = match (given.get(name), default) {
            (Some(v), _) => Ok(v.clone()),
            (None, Some(d)) => render(
                d,
                &Scope {
                    state: &state,
                    task: None,
                    current: None,
                    item: None,
                },
            ),
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
    for (name, v) in &spec.vars {
        match render(
            v,
            &Scope {
                state: &state,
                task: None,
                current: None,
                item: None,
            },
        ) {
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
    settle(spec, &mut state, &mut commands);
    (state, commands)
}

/// The action, input and delay of one run of `def` (or of one item).
fn prepare(
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
fn items_of(def: &TaskSpec, state: &FlowState) -> Result<Option<Items>, String> {
    let Some(with) = &def.with else {
        return Ok(None);
    };
    let scope = Scope {
        state,
        task: None,
        current: None,
        item: None,
    };
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
    Ok(Some(Items {
        results: vec![None; values.len()],
        values,
        started: 0,
        concurrency,
    }))
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
    let items = items_of(def, state);
    let prepared = match &items {
        Ok(None) => prepare(
            def,
            &Scope {
                state,
                task: Some(task),
                current: None,
                item: None,
            },
        ),
        Ok(Some(_)) => Ok((None, Value::Null, None)),
        Err(e) => Err(e.clone()),
    };
    state.runs.push(TaskRun {
        id: run_id.clone(),
        task: task.to_string(),
        status: TaskStatus::Running,
        result: Value::Null,
        attempt,
        items: items.clone().ok().flatten(),
    });
    match (items, prepared) {
        (Ok(Some(_)), _) => start_items(spec, state, &run_id, commands),
        (_, Ok((Some(action), input, delay))) => commands.push(Command::Run {
            run_id,
            task: task.to_string(),
            action,
            input,
            attempt,
            delay,
        }),
        // A task without an action only routes: it succeeds at once.
        (_, Ok((None, _, _))) => finish_run(
            spec,
            state,
            &run_id,
            TaskStatus::Succeeded,
            Value::Null,
            commands,
        ),
        // As in Orquesta, a task that cannot be rendered fails with the
        // error alone: no transition is taken.
        (_, Err(e)) => {
            state.errors.push(expression_error(e, Some(task)));
            if let Some(run) = state.runs.iter_mut().find(|r| r.id == run_id) {
                run.status = TaskStatus::Failed;
            }
        }
    }
}

/// Starts items of `run_id` up to its concurrency; ends the task when every
/// item has ended (or, after a failure, when the running ones have).
fn start_items(
    spec: &WorkflowSpec,
    state: &mut FlowState,
    run_id: &str,
    commands: &mut Vec<Command>,
) {
    let Some(i) = state.runs.iter().position(|r| r.id == run_id) else {
        return;
    };
    let (task, attempt) = (state.runs[i].task.clone(), state.runs[i].attempt);
    let Some(def) = spec.tasks.get(&task) else {
        return;
    };
    loop {
        let Some(items) = &state.runs[i].items else {
            return;
        };
        let done =
            items.results.iter().all(Option::is_some) || (items.failed() && items.running() == 0);
        if done {
            let failed = items.failed();
            let result = Value::Array(
                items
                    .results
                    .iter()
                    .map(|r| r.as_ref().map_or(Value::Null, |(_, v)| v.clone()))
                    .collect(),
            );
            let status = if failed {
                TaskStatus::Failed
            } else {
                TaskStatus::Succeeded
            };
            finish_run(spec, state, run_id, status, result, commands);
            return;
        }
        if items.failed()
            || items.started >= items.values.len()
            || items.running() >= items.concurrency
        {
            return;
        }
        let index = items.started;
        let value = items.values[index].clone();
        let prepared = prepare(
            def,
            &Scope {
                state,
                task: Some(&task),
                current: None,
                item: Some(&value),
            },
        );
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
            Ok((None, _, _)) => record_item(state, i, index, true, Value::Null),
            Err(e) => {
                state.errors.push(expression_error(e, Some(&task)));
                record_item(state, i, index, false, Value::Null);
            }
        }
    }
}

fn record_item(state: &mut FlowState, run: usize, index: usize, succeeded: bool, result: Value) {
    if let Some(slot) = state.runs[run]
        .items
        .as_mut()
        .and_then(|items| items.results.get_mut(index))
    {
        *slot = Some((succeeded, result));
    }
}

/// The run and item index of an item run id (`<task>.<n>.<i>`).
fn item_of(state: &FlowState, run_id: &str) -> Option<(usize, usize)> {
    let (parent, index) = run_id.rsplit_once('.')?;
    let index: usize = index.parse().ok()?;
    let run = state
        .runs
        .iter()
        .position(|r| r.id == parent && r.items.is_some())?;
    Some((run, index))
}

/// Cancels the workflow: every running task run is told to stop, nothing
/// new starts, and it ends `canceled` when the last run has ended.
pub fn cancel(spec: &WorkflowSpec, state: &mut FlowState) -> Vec<Command> {
    let mut commands = Vec::new();
    if state.status != FlowStatus::Running {
        return commands;
    }
    state.status = FlowStatus::Canceling;
    for run in state
        .runs
        .iter()
        .filter(|r| r.status == TaskStatus::Running)
    {
        match &run.items {
            Some(items) => {
                for (i, result) in items.results.iter().enumerate().take(items.started) {
                    if result.is_none() {
                        commands.push(Command::Cancel {
                            run_id: format!("{}.{i}", run.id),
                        });
                    }
                }
            }
            None => commands.push(Command::Cancel {
                run_id: run.id.clone(),
            }),
        }
    }
    settle(spec, state, &mut commands);
    commands
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
    if state.status == FlowStatus::Canceling {
        // Record the end; no transition runs while canceling.
        let run = item_of(state, run_id)
            .map(|(run, _)| run)
            .or_else(|| state.runs.iter().position(|r| r.id == run_id));
        if let Some(run) = run {
            match item_of(state, run_id) {
                Some((_, index)) => {
                    record_item(state, run, index, succeeded, result);
                    let items = state.runs[run].items.as_ref();
                    if items.is_some_and(|i| i.running() == 0) {
                        state.runs[run].status = TaskStatus::Failed;
                    }
                }
                None => {
                    state.runs[run].status = if succeeded {
                        TaskStatus::Succeeded
                    } else {
                        TaskStatus::Failed
                    };
                    state.runs[run].result = result;
                }
            }
        }
        settle(spec, state, &mut commands);
        return commands;
    }
    if state.status != FlowStatus::Running {
        return commands;
    }
    // One item of a `with` task.
    if let Some((run, index)) = item_of(state, run_id) {
        let pending = state.runs[run].status == TaskStatus::Running
            && state.runs[run].items.as_ref().is_some_and(|items| {
                index < items.started && items.results.get(index).is_some_and(Option::is_none)
            });
        if pending {
            record_item(state, run, index, succeeded, result);
            let parent = state.runs[run].id.clone();
            start_items(spec, state, &parent, &mut commands);
            settle(spec, state, &mut commands);
        }
        return commands;
    }
    let still_running = state
        .runs
        .iter()
        .any(|r| r.id == run_id && r.status == TaskStatus::Running);
    if !still_running {
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
        let scope = Scope {
            state,
            task: Some(&task),
            current: Some((&status, &result)),
            item: None,
        };
        let wanted = match &retry.when {
            Some(w) => render(&json!(w), &scope).map(|v| yaql::truthy(&v)),
            None => Ok(status == TaskStatus::Failed),
        };
        let count = render(&retry.count, &scope).map(|c| c.as_u64().unwrap_or(0) as u32);
        match (wanted, count) {
            (Ok(true), Ok(count)) if attempt < count => {
                state.remediated += usize::from(failed);
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
    let mut remediated = !failed;
    let mut manual_fail = false;
    let first_new = commands.len();
    // A task named by several taken transitions is staged once: one run
    // (or one arrival at its join) per event, as in Orquesta.
    let mut staged: Vec<&str> = Vec::new();
    for (route, t) in def.next.iter().enumerate() {
        let scope = Scope {
            state,
            task: Some(&task),
            current: Some((&status, &result)),
            item: None,
        };
        let when = match &t.when {
            Some(w) => render(&json!(w), &scope).map(|v| yaql::truthy(&v)),
            None => Ok(true),
        };
        match when {
            Ok(false) => continue,
            Ok(true) => {}
            Err(e) => {
                transition_errors(state, &task, route, &t.next, &e);
                continue;
            }
        }
        for (name, v) in &t.publish {
            let scope = Scope {
                state,
                task: Some(&task),
                current: Some((&status, &result)),
                item: None,
            };
            match render(v, &scope) {
                Ok(v) => {
                    state.ctx.insert(name.clone(), v);
                }
                Err(e) => transition_errors(state, &task, route, &t.next, &e),
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
                    schedule_retry(spec, state, &task, attempt + 1, None, commands);
                    return;
                }
                next if !ENGINE_COMMANDS.contains(&next) => {
                    remediated |= status == TaskStatus::Failed;
                    if !staged.contains(&next) {
                        staged.push(next);
                        arrive(spec, state, next, commands);
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
    if state.status == FlowStatus::Canceling {
        if !state.runs.iter().any(|r| r.status == TaskStatus::Running) {
            state.status = FlowStatus::Canceled;
            commands.push(Command::Finish {
                status: FlowStatus::Canceled,
                result: json!({"output": null}),
            });
        }
        return;
    }
    if state.status != FlowStatus::Running {
        return;
    }
    if state.failing() {
        let dropped: Vec<String> = commands
            .iter()
            .filter_map(|c| match c {
                Command::Run { run_id, .. } if !state.run_on_fail.contains(run_id) => {
                    Some(run_id.clone())
                }
                _ => None,
            })
            .collect();
        commands.retain(|c| !matches!(c, Command::Run { run_id, .. } if dropped.contains(run_id)));
        for id in &dropped {
            // An item that will not start after all.
            if let Some((run, _)) = item_of(state, id) {
                if let Some(items) = state.runs[run].items.as_mut() {
                    items.started -= 1;
                }
            }
        }
        state.runs.retain(|r| !dropped.contains(&r.id));
        // A `with` task with nothing left running will start nothing more.
        for run in &mut state.runs {
            if run.status == TaskStatus::Running
                && run.items.as_ref().is_some_and(|i| i.running() == 0)
            {
                run.status = TaskStatus::Failed;
            }
        }
    }
    if state.runs.iter().any(|r| r.status == TaskStatus::Running) {
        return;
    }
    // Each output sees the ones before it (Orquesta renders them in order
    // into a rolling context), and no output at all is `null`.
    let mut output = Map::new();
    let mut rolling = state.clone();
    for (name, v) in &spec.output {
        match render(
            v,
            &Scope {
                state: &rolling,
                task: None,
                current: None,
                item: None,
            },
        ) {
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

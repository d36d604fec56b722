//! The conductor: Orquesta's semantics as a pure state machine. Given a
//! workflow's state and one event (started, or a task finished), it
//! returns the new state and the commands to carry out (run a task's
//! action, finish the workflow). No I/O: the engine persists the state and
//! carries the commands out idempotently (every task run has an id derived
//! from the workflow, the task and its attempt), so replaying an event
//! after a crash cannot run anything twice.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::spec::{Join, TaskSpec, WorkflowSpec, ENGINE_COMMANDS};
use crate::secrets::Cipher;
use crate::template::{KeyValueLookup, KvScope, NoKeyValues, Renderer};
use crate::yaql::{self, Host};

/// Where a workflow is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowStatus {
    Running,
    /// Pause asked: nothing new starts; ends `paused` once no task is
    /// active (paused child workflows and pending inquiries do not count).
    Pausing,
    Paused,
    Succeeded,
    Failed,
    /// Cancel asked: no new task starts; ends `canceled` once the running
    /// ones have ended.
    Canceling,
    Canceled,
}

impl FlowStatus {
    /// Succeeded, failed or canceled: nothing more happens.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            FlowStatus::Succeeded | FlowStatus::Failed | FlowStatus::Canceled
        )
    }

    /// Pausing or paused.
    pub fn is_paused(self) -> bool {
        matches!(self, FlowStatus::Pausing | FlowStatus::Paused)
    }
}

/// Where one task run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Running,
    /// Its execution is a paused workflow or a pending inquiry.
    Paused,
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
    /// Orquesta's route: 0, or a branch a split task was reached on (see
    /// [`FlowState::routes`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub route: usize,
    /// A `with` task's items and their progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<Items>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// A set of item indexes, one bit each: 10,000 items take 1,250 bytes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Marks(Vec<u64>);

impl Marks {
    pub fn contains(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// Adds `i`; false when it was there already.
    fn insert(&mut self, i: usize) -> bool {
        if self.0.len() <= i / 64 {
            self.0.resize(i / 64 + 1, 0);
        }
        let (word, bit) = (&mut self.0[i / 64], 1 << (i % 64));
        let fresh = *word & bit == 0;
        *word |= bit;
        fresh
    }

    fn remove(&mut self, i: usize) -> bool {
        let Some(word) = self.0.get_mut(i / 64) else {
            return false;
        };
        let bit = 1 << (i % 64);
        let had = *word & bit != 0;
        *word &= !bit;
        had
    }
}

/// The items of one run of a `with` task. Item `i` runs as
/// `<run id>.<i>`; at most `concurrency` at once; the task's result is the
/// list of the items' results, in item order.
///
/// The state keeps no item results: each item's end only sets a mark, so
/// the record written per item stays small however many items there are.
/// When the last item ends the conductor asks for the results
/// ([`Command::Gather`]); whoever drives it reads them (the engine, from
/// the items' executions) and hands them to [`items_gathered`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Items {
    /// What `item()` is for each item. Never serialized: they never change
    /// after the task starts, so the engine stores them once, beside the
    /// workflow's record (see `values_stored`), instead of in every write.
    #[serde(skip)]
    pub values: Vec<Value>,
    /// How many items there are.
    pub count: usize,
    /// Whether the engine has stored `values`.
    #[serde(default)]
    pub values_stored: bool,
    /// Items started so far (they start in order).
    pub started: usize,
    pub concurrency: usize,
    #[serde(default)]
    ended: Marks,
    #[serde(default)]
    failed: Marks,
    /// Items whose execution is paused (a child workflow, an inquiry).
    #[serde(default)]
    paused: Marks,
    #[serde(default)]
    ended_count: usize,
    #[serde(default)]
    failed_count: usize,
    #[serde(default)]
    paused_count: usize,
    /// Results of items that ran no execution (no action, or the item
    /// could not start), by index.
    #[serde(default)]
    pub local: BTreeMap<usize, Value>,
    /// The results have been asked for.
    #[serde(default)]
    gathering: bool,
}

/// Where one item's result is, for [`Command::Gather`].
#[derive(Debug, Clone, PartialEq)]
pub enum ItemResult<'a> {
    /// In the execution of task run `<run id>.<index>`.
    Execution(String),
    /// Known already (the item ran no execution).
    Local(&'a Value),
    /// The item never started.
    NotStarted,
}

impl Items {
    fn new(values: Vec<Value>, concurrency: usize) -> Items {
        Items {
            count: values.len(),
            values,
            values_stored: false,
            started: 0,
            concurrency,
            ended: Marks::default(),
            failed: Marks::default(),
            paused: Marks::default(),
            ended_count: 0,
            failed_count: 0,
            paused_count: 0,
            local: BTreeMap::new(),
            gathering: false,
        }
    }

    /// Items started and not ended.
    fn in_flight(&self) -> usize {
        self.started - self.ended_count
    }

    /// Items started, not ended and not paused.
    fn active(&self) -> usize {
        self.in_flight() - self.paused_count
    }

    fn failed(&self) -> bool {
        self.failed_count > 0
    }

    /// Items started and not ended, by index.
    pub fn in_flight_indexes(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.started).filter(|i| !self.ended.contains(*i))
    }

    /// Whether item `index` has started and not ended.
    fn is_in_flight(&self, index: usize) -> bool {
        index < self.started && !self.ended.contains(index)
    }

    /// Marks in-flight item `index` paused; false if it was already.
    fn pause(&mut self, index: usize) -> bool {
        let fresh = self.is_in_flight(index) && self.paused.insert(index);
        self.paused_count += usize::from(fresh);
        fresh
    }

    /// Marks item `index` running again; false if it was not paused.
    fn unpause(&mut self, index: usize) -> bool {
        let had = self.paused.remove(index);
        self.paused_count -= usize::from(had);
        had
    }

    fn end(&mut self, index: usize, succeeded: bool) {
        if self.ended.insert(index) {
            self.ended_count += 1;
            if !succeeded && self.failed.insert(index) {
                self.failed_count += 1;
            }
            if self.paused.remove(index) {
                self.paused_count -= 1;
            }
        }
    }

    /// Where each item's result is, in item order (`run_id` is the task
    /// run's id).
    pub fn results<'a>(&'a self, run_id: &'a str) -> impl Iterator<Item = ItemResult<'a>> + 'a {
        (0..self.count).map(move |i| match self.local.get(&i) {
            Some(v) => ItemResult::Local(v),
            None if i < self.started => ItemResult::Execution(format!("{run_id}.{i}")),
            None => ItemResult::NotStarted,
        })
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
    /// Task runs decided while pausing or paused: they start on resume.
    #[serde(default)]
    pub staged: Vec<Command>,
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
    /// Orquesta's routes 1, 2, ...: a task reached by several transitions
    /// without a join (a split) runs once per arrival, each on a route of
    /// its own, named by the transitions (`<task>__t<n>`) that led there;
    /// what follows it stays on that route. Route 0 is the start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Vec<String>>,
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
    /// The workflow is being canceled: cancel task run `run_id` if it is
    /// a workflow or has not started yet; an action under way runs to its
    /// end (StackStorm's `task_cancelable`), and the workflow waits for it.
    Cancel { run_id: String },
    /// The workflow is being canceled: so is the workflow it is a task of,
    /// if any (StackStorm cascades a cancel up to the root, whose cancel
    /// then reaches the other child workflows).
    CancelParent,
    /// Pause task run `run_id` if it is a workflow (others run on).
    Pause { run_id: String },
    /// Resume task run `run_id` if it is a paused workflow.
    Resume { run_id: String },
    /// The items of `with` task run `run_id` have all ended: read their
    /// results ([`Items::results`]) and hand them to [`items_gathered`].
    Gather { run_id: String },
    /// The workflow is now `status` (pausing, paused, or running again).
    Status { status: FlowStatus },
    /// The workflow is over; `result` is its execution result
    /// (`{output}` or `{errors, output}`).
    Finish { status: FlowStatus, result: Value },
}

/// A workflow definition and what its expressions may read besides the
/// workflow's own state: the datastore for `st2kv()`.
pub struct Flow<'a> {
    pub spec: &'a WorkflowSpec,
    renderer: &'a Renderer,
    kv: Arc<dyn KeyValueLookup>,
    cipher: Option<Cipher>,
}

static PLAIN: std::sync::LazyLock<Renderer> = std::sync::LazyLock::new(Renderer::new);

impl<'a> Flow<'a> {
    /// `spec` with an empty datastore.
    pub fn new(spec: &'a WorkflowSpec) -> Flow<'a> {
        Flow {
            spec,
            renderer: &PLAIN,
            kv: Arc::new(NoKeyValues),
            cipher: None,
        }
    }

    /// Expressions read the datastore `kv` (`st2kv()`); `cipher` opens
    /// secrets for `st2kv(key, decrypt=true)`; Jinja renders with
    /// `renderer`.
    pub fn with_datastore(
        self,
        renderer: &'a Renderer,
        kv: Arc<dyn KeyValueLookup>,
        cipher: Option<Cipher>,
    ) -> Flow<'a> {
        Flow {
            renderer,
            kv,
            cipher,
            ..self
        }
    }
}

/// Orquesta's `st2kv(key, decrypt=false)`: `system.<key>` is a system key,
/// anything else a key of the workflow's user. A key that does not exist
/// is an error, as in StackStorm, unless a `default` is given (even null).
fn st2kv(
    kv: &dyn KeyValueLookup,
    cipher: Option<&Cipher>,
    user: &str,
    args: &[Value],
    default: Option<&Value>,
) -> Result<Value, String> {
    let Some(Value::String(key)) = args.first() else {
        return Err("st2kv() takes a key name".into());
    };
    let decrypt = args.get(1).is_some_and(yaql::truthy);
    let (scope, name) = match key.strip_prefix("system.") {
        Some(name) => (KvScope::System, name),
        None => (KvScope::User(user.to_string()), key.as_str()),
    };
    let Some(value) = kv.get(scope, name) else {
        return default.cloned().ok_or_else(|| {
            format!("The key \"{name}\" does not exist in the StackStorm datastore.")
        });
    };
    if !decrypt {
        return Ok(Value::String(value));
    }
    let cipher =
        cipher.ok_or("st2kv(decrypt=true) needs the datastore's key, which is not configured")?;
    cipher
        .decrypt(&value)
        .map(Value::String)
        .map_err(|e| format!("st2kv(\"{key}\", decrypt=true): {e}; is the item secret?"))
}

/// The workflow's user (`ctx().st2.user`), whose keys `st2kv()` reads.
fn user_of(state: &FlowState) -> &str {
    state
        .ctx
        .get("st2")
        .and_then(|s| s.get("user"))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

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

/// How many times `retry` (the engine command) re-runs a task.
const ENGINE_RETRIES: u32 = 3;

/// Functions Orquesta adds to expressions, for one evaluation.
struct Scope<'a> {
    flow: &'a Flow<'a>,
    state: &'a FlowState,
    /// The task being run or routed, for `task()` without a name.
    task: Option<&'a str>,
    /// The current task run's status and result, inside `next`.
    current: Option<(&'a TaskStatus, &'a Value)>,
    /// The current item, in a `with` task's input.
    item: Option<&'a Value>,
    /// The route of the task being run or routed.
    route: usize,
}

impl<'a> Scope<'a> {
    fn plain(flow: &'a Flow<'a>, state: &'a FlowState) -> Scope<'a> {
        Scope {
            flow,
            state,
            task: None,
            current: None,
            item: None,
            route: 0,
        }
    }

    /// Inside task `task` (its input, its `next`).
    fn in_task(self, task: &'a str) -> Scope<'a> {
        Scope {
            task: Some(task),
            ..self
        }
    }

    /// On route `route`.
    fn on_route(self, route: usize) -> Scope<'a> {
        Scope { route, ..self }
    }

    /// Inside a task's `next`, `retry`: its status and result are known.
    fn after(
        flow: &'a Flow<'a>,
        state: &'a FlowState,
        status: &'a TaskStatus,
        result: &'a Value,
    ) -> Scope<'a> {
        Scope {
            current: Some((status, result)),
            ..Scope::plain(flow, state)
        }
    }
}

impl Scope<'_> {
    /// Orquesta's `task(name, route)`: without a name the current task,
    /// without a route the current one (or the one it split from).
    fn task(&self, name: Option<&Value>, route: Option<&Value>) -> Result<Value, String> {
        let name = match (name, self.task) {
            (Some(Value::String(name)), _) => name.as_str(),
            (None | Some(Value::Null), Some(current)) => current,
            (None | Some(Value::Null), None) => return Err("task() needs a task name here".into()),
            (Some(other), _) => return Err(format!("task() takes a task name, not {other}")),
        };
        let route = match route {
            None | Some(Value::Null) => self.route,
            Some(r) => r
                .as_u64()
                .ok_or_else(|| format!("task() takes a route number, not {r}"))?
                as usize,
        };
        task_record(self.state, name, route).ok_or_else(|| no_task_execution(name))
    }
}

impl Host for Scope<'_> {
    /// `st2kv(key, decrypt => bool, default => value)` takes named
    /// arguments, as in Orquesta.
    fn call_named(
        &self,
        name: &str,
        args: &[Value],
        named: &Map<String, Value>,
    ) -> Option<Result<Value, String>> {
        if name == "task" && !named.is_empty() {
            return Some(self.task(args.first(), named.get("route")));
        }
        if name != "st2kv" || named.is_empty() {
            return self.call(name, args);
        }
        let key = args.first().cloned().unwrap_or(Value::Null);
        let decrypt = named.get("decrypt").or(args.get(1)).cloned();
        let args = [key, decrypt.unwrap_or(Value::Bool(false))];
        Some(st2kv(
            self.flow.kv.as_ref(),
            self.flow.cipher.as_ref(),
            user_of(self.state),
            &args,
            named.get("default"),
        ))
    }

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
            "st2kv" => {
                return Some(st2kv(
                    self.flow.kv.as_ref(),
                    self.flow.cipher.as_ref(),
                    user_of(self.state),
                    args,
                    None,
                ))
            }
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
            "task" => return Some(self.task(args.first(), args.get(1))),
            "task_status" => {
                let task = args.first().and_then(Value::as_str).unwrap_or_default();
                self.state
                    .runs
                    .iter()
                    .rev()
                    .find(|r| r.task == task)
                    .map_or(json!("null"), |r| json!(r.status))
            }
            other => return filter_function(other).map(|f| PLAIN.call_filter(f, args)),
        }))
    }
}

/// What `task(name)` gives, as st2's Orquesta runner builds it from the
/// task's latest run: a `with` task's result is `{"items": [{status,
/// result}, ...]}`.
fn task_record(state: &FlowState, name: &str, route: usize) -> Option<Value> {
    let ran = |route: usize| {
        state
            .runs
            .iter()
            .any(|r| r.task == name && r.route == route)
    };
    let route = resolve_route(&state.routes, route, ran)?;
    let run = state
        .runs
        .iter()
        .rev()
        .find(|r| r.task == name && r.route == route)?;
    let result = match &run.items {
        // The items' results are the run's once gathered.
        Some(items) => {
            let results = run.result.as_array();
            let each = (0..items.count).map(|i| {
                if !items.ended.contains(i) {
                    return Value::Null;
                }
                json!({
                    "status": if items.failed.contains(i) { "failed" } else { "succeeded" },
                    "result": results.and_then(|r| r.get(i)).cloned().unwrap_or(Value::Null),
                })
            });
            json!({ "items": each.collect::<Vec<_>>() })
        }
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
        "route": run.route,
        "result": result,
        "status": run.status,
    }))
}

/// What route `route` (`routes` holds routes 1, 2, ...) names.
fn route_details(routes: &[Vec<String>], route: usize) -> &[String] {
    match route {
        0 => &[],
        r => routes.get(r - 1).map_or(&[], Vec::as_slice),
    }
}

/// The route on which a task `ran` as seen from `route`: `route` itself,
/// else the latest earlier route that `route` split from (Orquesta's
/// `task()` looks there for a task before the split).
fn resolve_route(
    routes: &[Vec<String>],
    route: usize,
    ran: impl Fn(usize) -> bool,
) -> Option<usize> {
    if ran(route) {
        return Some(route);
    }
    let current = route_details(routes, route);
    let earlier = (0..route).rev().find(|prev| {
        route_details(routes, *prev)
            .iter()
            .all(|t| current.contains(t))
    })?;
    resolve_route(routes, earlier, ran)
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
    let mut records: BTreeMap<(String, usize), Value> = BTreeMap::new();
    if v.as_str().is_some_and(|s| s.contains("task(")) {
        for run in &scope.state.runs {
            if let std::collections::btree_map::Entry::Vacant(slot) =
                records.entry((run.task.clone(), run.route))
            {
                if let Some(record) = task_record(scope.state, &run.task, run.route) {
                    slot.insert(record);
                }
            }
        }
    }
    let (current, current_route) = (scope.task.map(str::to_string), scope.route);
    let routes = scope.state.routes.clone();
    extra.insert(
        "task".into(),
        J::from_function(
            move |name: Option<String>, kwargs: minijinja::value::Kwargs| -> Result<J, Error> {
                let name = name.or_else(|| current.clone()).unwrap_or_default();
                let route = kwargs
                    .get::<Option<usize>>("route")?
                    .unwrap_or(current_route);
                kwargs.assert_all_used()?;
                let ran = |r: usize| records.contains_key(&(name.clone(), r));
                resolve_route(&routes, route, ran)
                    .and_then(|r| records.get(&(name.clone(), r)))
                    .map(J::from_serialize)
                    .ok_or_else(|| {
                        Error::new(ErrorKind::InvalidOperation, no_task_execution(&name))
                    })
            },
        ),
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
                PLAIN
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
    let (kv, cipher, user) = (
        Arc::clone(&scope.flow.kv),
        scope.flow.cipher.clone(),
        user_of(scope.state).to_string(),
    );
    extra.insert(
        "st2kv".into(),
        J::from_function(
            move |key: String,
                  decrypt: Option<bool>,
                  kwargs: minijinja::value::Kwargs|
                  -> Result<J, Error> {
                let decrypt = match decrypt {
                    Some(d) => d,
                    None => kwargs.get::<Option<bool>>("decrypt")?.unwrap_or(false),
                };
                let default: Option<Value> = if kwargs.has("default") {
                    Some(
                        serde_json::to_value(kwargs.get::<J>("default")?)
                            .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?,
                    )
                } else {
                    None
                };
                kwargs.assert_all_used()?;
                let args = [json!(key), json!(decrypt)];
                st2kv(kv.as_ref(), cipher.as_ref(), &user, &args, default.as_ref())
                    .map(|v| J::from_serialize(&v))
                    .map_err(|e| Error::new(ErrorKind::InvalidOperation, e))
            },
        ),
    );
    scope
        .flow
        .renderer
        .render_value_with(v, &Value::Object(visible), &extra, scope.flow.kv.as_ref())
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

/// An error entry; one about a task names it and the route it ran on.
fn expression_error(message: String, task: Option<(&str, usize)>) -> Value {
    let mut e = json!({"type": "error", "message": message});
    if let Some((t, route)) = task {
        e["task_id"] = json!(t);
        e["route"] = json!(route);
    }
    e
}

/// The errors of transition `index` of `task`: Orquesta evaluates a
/// transition once per task it names (`continue` when it names none), so
/// it logs one entry per target, each with its `<target>__t<index>`.
fn transition_errors(
    state: &mut FlowState,
    (task, route): (&str, usize),
    index: usize,
    targets: &[String],
    e: &str,
) {
    let continue_ = ["continue".to_string()];
    let targets = if targets.is_empty() {
        &continue_[..]
    } else {
        targets
    };
    for target in targets {
        let mut entry = expression_error(e.to_string(), Some((task, route)));
        entry["task_transition_id"] = json!(format!("{target}__t{index}"));
        state.errors.push(entry);
    }
}

/// Starts a workflow: input (given values over defaults), vars, then the
/// tasks no transition leads to.
pub fn start(
    flow: &Flow<'_>,
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

/// The names of the tasks that ran, in the order they first ran.
fn ran_tasks(state: &FlowState) -> Vec<&str> {
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
fn succeeded_items(state: &FlowState, task: &str) -> BTreeMap<usize, Value> {
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
fn items_of(flow: &Flow<'_>, def: &TaskSpec, state: &FlowState) -> Result<Option<Items>, String> {
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

/// Hands a task run to the engine, or keeps it for the resume while the
/// workflow is pausing or paused.
fn emit_run(state: &mut FlowState, commands: &mut Vec<Command>, run: Command) {
    if matches!(state.status, FlowStatus::Pausing | FlowStatus::Paused) {
        state.staged.push(run);
    } else {
        commands.push(run);
    }
}

/// Runs `task` (or, without an action, passes straight through it);
/// `retry_delay` overrides the task's own `delay`.
fn schedule(
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
fn schedule_keeping(
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
fn start_items(flow: &Flow<'_>, state: &mut FlowState, run_id: &str, commands: &mut Vec<Command>) {
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
fn end_item(
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
fn item_of(state: &FlowState, run_id: &str) -> Option<(usize, usize)> {
    let (parent, index) = run_id.rsplit_once('.')?;
    let index: usize = index.parse().ok()?;
    let run = state
        .runs
        .iter()
        .position(|r| r.id == parent && r.items.is_some())?;
    Some((run, index))
}

/// Every run id (items included) that is executing and not paused.
fn active_run_ids(state: &FlowState) -> Vec<String> {
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

/// Cancels the workflow: every running task run is told to stop, nothing
/// new starts, and it ends `canceled` when the last run has ended.
pub fn cancel(flow: &Flow<'_>, state: &mut FlowState) -> Vec<Command> {
    let mut commands = Vec::new();
    if !matches!(
        state.status,
        FlowStatus::Running | FlowStatus::Pausing | FlowStatus::Paused
    ) {
        return commands;
    }
    state.status = FlowStatus::Canceling;
    commands.push(Command::CancelParent);
    // Runs kept for the resume never started.
    let staged: Vec<String> = state.staged.drain(..).filter_map(run_id_of).collect();
    state.runs.retain(|r| !staged.contains(&r.id));
    for run in state
        .runs
        .iter()
        .filter(|r| matches!(r.status, TaskStatus::Running | TaskStatus::Paused))
    {
        match &run.items {
            Some(items) => commands.extend(
                (0..items.started)
                    .filter(|i| items.is_in_flight(*i))
                    .map(|i| Command::Cancel {
                        run_id: format!("{}.{i}", run.id),
                    }),
            ),
            None => commands.push(Command::Cancel {
                run_id: run.id.clone(),
            }),
        }
    }
    // A `with` task with nothing in flight will hear of nothing more.
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
    settle(flow, state, &mut commands);
    commands
}

fn run_id_of(command: Command) -> Option<String> {
    match command {
        Command::Run { run_id, .. } => Some(run_id),
        _ => None,
    }
}

/// Pauses the workflow: nothing new starts, child workflows are asked to
/// pause, actions under way run to their end; it is `paused` once nothing
/// is active.
pub fn pause(flow: &Flow<'_>, state: &mut FlowState) -> Vec<Command> {
    let mut commands = Vec::new();
    if state.status != FlowStatus::Running {
        return commands;
    }
    state.status = FlowStatus::Pausing;
    commands.push(Command::Status {
        status: FlowStatus::Pausing,
    });
    commands.extend(
        active_run_ids(state)
            .into_iter()
            .map(|run_id| Command::Pause { run_id }),
    );
    settle(flow, state, &mut commands);
    commands
}

/// Resumes a pausing or paused workflow: paused child workflows are asked
/// to resume and the runs decided meanwhile start.
pub fn resume(flow: &Flow<'_>, state: &mut FlowState) -> Vec<Command> {
    resume_with(flow, state, true)
}

/// [`resume`]; `children`: also ask paused child workflows (and paused
/// items) to resume.
fn resume_with(flow: &Flow<'_>, state: &mut FlowState, children: bool) -> Vec<Command> {
    let mut commands = Vec::new();
    if !matches!(state.status, FlowStatus::Pausing | FlowStatus::Paused) {
        return commands;
    }
    state.status = FlowStatus::Running;
    commands.push(Command::Status {
        status: FlowStatus::Running,
    });
    let mut with_items = Vec::new();
    for run in &state.runs {
        match (&run.items, run.status) {
            (None, TaskStatus::Paused) if children => commands.push(Command::Resume {
                run_id: run.id.clone(),
            }),
            (Some(items), TaskStatus::Running) => {
                if children {
                    commands.extend(
                        (0..items.started)
                            .filter(|i| items.paused.contains(*i))
                            .map(|i| Command::Resume {
                                run_id: format!("{}.{i}", run.id),
                            }),
                    );
                }
                with_items.push(run.id.clone());
            }
            _ => {}
        }
    }
    commands.append(&mut state.staged);
    for run_id in with_items {
        start_items(flow, state, &run_id, &mut commands);
    }
    settle(flow, state, &mut commands);
    commands
}

/// A task run's execution, a child workflow, paused: as in Orquesta the
/// workflow runs on while other runs are active, and is `paused` once
/// none is (the other branches are not asked to pause).
pub fn task_paused(flow: &Flow<'_>, state: &mut FlowState, run_id: &str) -> Vec<Command> {
    if !mark_paused(state, run_id, true) {
        return Vec::new();
    }
    let mut commands = Vec::new();
    settle(flow, state, &mut commands);
    commands
}

/// A task run's execution went `pending` (an inquiry waits for its
/// answer): the workflow pauses, as StackStorm's does for an inquiry.
pub fn task_pending(flow: &Flow<'_>, state: &mut FlowState, run_id: &str) -> Vec<Command> {
    if !mark_paused(state, run_id, true) {
        return Vec::new();
    }
    if state.status == FlowStatus::Running {
        return pause(flow, state);
    }
    let mut commands = Vec::new();
    settle(flow, state, &mut commands);
    commands
}

/// A paused task run's execution runs again (a child workflow resumed on
/// its own): a paused workflow runs again too, as Orquesta's does; its
/// other paused children stay paused.
pub fn task_resumed(flow: &Flow<'_>, state: &mut FlowState, run_id: &str) -> Vec<Command> {
    if !mark_paused(state, run_id, false) {
        return Vec::new();
    }
    resume_with(flow, state, false)
}

/// Marks task run (or item) `run_id` paused or running again; false when
/// it already was (a replay) or is not under way.
fn mark_paused(state: &mut FlowState, run_id: &str, paused: bool) -> bool {
    if let Some((run, index)) = item_of(state, run_id) {
        return state.runs[run].items.as_mut().is_some_and(|items| {
            if paused {
                items.pause(index)
            } else {
                items.unpause(index)
            }
        });
    }
    let (from, to) = if paused {
        (TaskStatus::Running, TaskStatus::Paused)
    } else {
        (TaskStatus::Paused, TaskStatus::Running)
    };
    match state
        .runs
        .iter_mut()
        .find(|r| r.id == run_id && r.status == from)
    {
        Some(run) => {
            run.status = to;
            true
        }
        None => false,
    }
}

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

fn ended(
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

fn finish_run(
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
fn arrive(
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
fn split_route(state: &mut FlowState, route: usize, via: &str) -> usize {
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
fn in_cycle(spec: &WorkflowSpec, task: &str) -> bool {
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
fn active(state: &FlowState) -> bool {
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
fn settle(flow: &Flow<'_>, state: &mut FlowState, commands: &mut Vec<Command>) {
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
        // A `with` task with nothing in flight will start nothing more.
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

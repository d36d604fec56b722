//! The conductor's expressions: the scope YAQL and Jinja see (`ctx()`,
//! `task()`, `result()`, `item()`, `st2kv()` and the routes of split tasks),
//! rendering a value in it, and Orquesta's wording of errors and error
//! entries.

use super::*;

/// Orquesta's `st2kv(key, decrypt=false)`: `system.<key>` is a system key,
/// anything else a key of the workflow's user. A key that does not exist
/// is an error, as in StackStorm, unless a `default` is given (even null).
pub(super) fn st2kv(
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

/// The workflow's user, whose keys `st2kv()` reads. A state stored
/// before it kept its user has it only in its context (`ctx().st2.user`).
pub(super) fn user_of(state: &FlowState) -> &str {
    if !state.user.is_empty() {
        return &state.user;
    }
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
pub(super) fn filter_function(name: &str) -> Option<&'static str> {
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
pub(super) const ENGINE_RETRIES: u32 = 3;

/// Functions Orquesta adds to expressions, for one evaluation.
pub(super) struct Scope<'a> {
    pub(super) flow: &'a Flow<'a>,
    pub(super) state: &'a FlowState,
    /// The task being run or routed, for `task()` without a name.
    pub(super) task: Option<&'a str>,
    /// The current task run's status and result, inside `next`.
    pub(super) current: Option<(&'a TaskStatus, &'a Value)>,
    /// The current item, in a `with` task's input.
    pub(super) item: Option<&'a Value>,
    /// The route of the task being run or routed.
    pub(super) route: usize,
}

impl<'a> Scope<'a> {
    pub(super) fn plain(flow: &'a Flow<'a>, state: &'a FlowState) -> Scope<'a> {
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
    pub(super) fn in_task(self, task: &'a str) -> Scope<'a> {
        Scope {
            task: Some(task),
            ..self
        }
    }

    /// On route `route`.
    pub(super) fn on_route(self, route: usize) -> Scope<'a> {
        Scope { route, ..self }
    }

    /// Inside a task's `next`, `retry`: its status and result are known.
    pub(super) fn after(
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
    pub(super) fn task(
        &self,
        name: Option<&Value>,
        route: Option<&Value>,
    ) -> Result<Value, String> {
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
pub(super) fn task_record(state: &FlowState, name: &str, route: usize) -> Option<Value> {
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
pub(super) fn route_details(routes: &[Vec<String>], route: usize) -> &[String] {
    match route {
        0 => &[],
        r => routes.get(r - 1).map_or(&[], Vec::as_slice),
    }
}

/// The route on which a task `ran` as seen from `route`: `route` itself,
/// else the latest earlier route that `route` split from (Orquesta's
/// `task()` looks there for a task before the split).
pub(super) fn resolve_route(
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

pub(super) fn no_task_execution(name: &str) -> String {
    format!("ExpressionEvaluationException: Unable to find task execution for \"{name}\".")
}

/// Evaluates the expressions in `v`: YAQL (`<% %>`) or Jinja (`{{ }}`),
/// one language per string, with Orquesta's functions; inside the flow's
/// [`SecretScope`] when they may open a secret.
pub(super) fn render(v: &Value, scope: &Scope<'_>) -> Result<Value, String> {
    let Some(secrets) = scope.flow.secrets.filter(|_| may_open_secrets(v)) else {
        return evaluate(v, scope);
    };
    let mut out = None;
    secrets.around(scope.task, &mut || out = Some(evaluate(v, scope)));
    out.unwrap_or_else(|| {
        Err("the engine did not evaluate an expression reading the datastore".into())
    })
}

/// Whether an expression in `v` may open a secret: `st2kv()` (both
/// languages), `st2kv.system.x` or `| decrypt_kv` (Jinja).
fn may_open_secrets(v: &Value) -> bool {
    match v {
        Value::String(s) => crate::template::may_open_secrets(s),
        Value::Array(items) => items.iter().any(may_open_secrets),
        Value::Object(m) => m
            .iter()
            .any(|(k, item)| crate::template::may_open_secrets(k) || may_open_secrets(item)),
        _ => false,
    }
}

fn evaluate(v: &Value, scope: &Scope<'_>) -> Result<Value, String> {
    match v {
        Value::String(s) if s.contains("<%") => {
            yaql::render(v, &Value::Object(scope.state.ctx.clone()), scope)
                .map_err(|e| yaql_message(s, &e))
        }
        Value::String(s) if crate::template::is_template(s) => render_jinja(v, scope),
        Value::Array(items) => items
            .iter()
            .map(|i| evaluate(i, scope))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, item) in m {
                let key = match evaluate(&Value::String(k.clone()), scope)? {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                out.insert(key, evaluate(item, scope)?);
            }
            Ok(Value::Object(out))
        }
        other => Ok(other.clone()),
    }
}

/// One Jinja string, with `ctx()`, `result()`, `succeeded()`, `failed()`,
/// `completed()`, `item()` and `task_status()` as Orquesta defines them.
pub(super) fn render_jinja(v: &Value, scope: &Scope<'_>) -> Result<Value, String> {
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
pub(super) fn yaql_message(source: &str, e: &yaql::YaqlError) -> String {
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
pub(super) fn expression_at(source: &str, position: usize) -> &str {
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
pub(super) fn jinja_message(e: &crate::template::TemplateError) -> String {
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
pub(super) fn expression_error(message: String, task: Option<(&str, usize)>) -> Value {
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
pub(super) fn transition_errors(
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

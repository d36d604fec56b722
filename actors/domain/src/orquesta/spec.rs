//! The Orquesta workflow definition (version 1.0): the model, and reading
//! it from YAML with every shape Orquesta accepts (`input` items as names
//! or one-key dicts, `do` as a name, a comma list or a list, inline
//! `action` parameters and `publish` strings, `with` as a string or a
//! dict, `join: all` or a count). Problems are collected, not thrown.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use serde_yaml::Value as Yaml;

use super::{Issue, IssueKind, TASK_SCHEMA};

/// A whole workflow.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowSpec {
    pub version: String,
    pub description: String,
    /// Names and defaults (`None`: required).
    pub input: Vec<(String, Option<Value>)>,
    pub vars: Vec<(String, Value)>,
    pub output: Vec<(String, Value)>,
    pub tasks: BTreeMap<String, TaskSpec>,
    /// The task names in the order the definition lists them (the order
    /// StackStorm checks and reports their contents in).
    pub task_order: Vec<String>,
}

/// One task.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TaskSpec {
    /// An action ref or an expression; `None` for a routing-only task.
    pub action: Option<String>,
    /// A dict of parameters, or one expression for all of them.
    pub input: Value,
    pub next: Vec<Transition>,
    pub join: Option<Join>,
    pub with: Option<WithItems>,
    pub retry: Option<Retry>,
    /// Seconds, or an expression.
    pub delay: Option<Value>,
}

/// `join: all` or `join: N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Join {
    All,
    Count(u32),
}

/// `with: x in <% ... %>` or `{items, concurrency}`.
#[derive(Debug, Clone, PartialEq)]
pub struct WithItems {
    /// Names bound per item (`x`, or `x, y` over zipped lists); empty for
    /// the bare form, where `item()` is the whole item.
    pub vars: Vec<String>,
    /// The expression giving the items.
    pub items: String,
    pub concurrency: Option<Value>,
}

/// `retry: {when, count, delay}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Retry {
    pub when: Option<String>,
    pub count: Value,
    pub delay: Option<Value>,
}

/// One entry of `next`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Transition {
    pub when: Option<String>,
    pub publish: Vec<(String, Value)>,
    /// Task names and engine commands; `["continue"]` when none given.
    pub next: Vec<String>,
}

/// Task names the engine reserves as commands.
pub const ENGINE_COMMANDS: [&str; 4] = ["continue", "fail", "noop", "retry"];

/// The top-level keys, Orquesta's metadata (`name`, `tags`) included.
const TOP_KEYS: [&str; 8] = [
    "version",
    "description",
    "input",
    "vars",
    "output",
    "tasks",
    "name",
    "tags",
];
const TASK_KEYS: [&str; 7] = ["action", "input", "next", "join", "with", "retry", "delay"];
const NEXT_KEYS: [&str; 3] = ["when", "publish", "do"];

fn to_json(y: &Yaml) -> Value {
    serde_json::to_value(y).unwrap_or(Value::Null)
}

/// Python's `repr()` of a value, as jsonschema quotes an instance in its
/// messages (`[{'cmd': 'echo'}]`).
fn py_repr(v: &Value) -> String {
    // Inside a list a string is written as its repr; drop the brackets.
    let text = crate::template::python_text(&Value::Array(vec![v.clone()]));
    text[1..text.len() - 1].to_string()
}

/// Collects syntax issues worded as the JSON schema validator Orquesta
/// uses (jsonschema, Draft 4) words them.
struct Reader {
    issues: Vec<Issue>,
}

impl Reader {
    fn syntax(
        &mut self,
        path: impl Into<String>,
        schema: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.issues
            .push(Issue::new(IssueKind::Syntax, path, schema, message));
    }

    /// `5 is not of type 'string'`.
    fn not_of_type(&mut self, path: &str, schema: &str, v: &Yaml, ty: &str) {
        let message = format!("{} is not of type '{ty}'", py_repr(&to_json(v)));
        self.syntax(path, join(schema, "type"), message);
    }

    /// A value that matches none of a `oneOf`.
    fn none_of(&mut self, path: &str, schema: &str, v: &Yaml) {
        let message = format!(
            "{} is not valid under any of the given schemas",
            py_repr(&to_json(v))
        );
        self.syntax(path, join(schema, "oneOf"), message);
    }

    fn unknown_keys(
        &mut self,
        at: &str,
        schema: &str,
        map: &serde_yaml::Mapping,
        allowed: &[&str],
    ) {
        let extra: Vec<String> = map
            .keys()
            .map(|k| k.as_str().unwrap_or_default())
            .filter(|name| !allowed.contains(name))
            .map(|name| py_repr(&Value::String(name.to_string())))
            .collect();
        if extra.is_empty() {
            return;
        }
        let verb = if extra.len() == 1 { "was" } else { "were" };
        self.syntax(
            at,
            join(schema, "additionalProperties"),
            format!(
                "Additional properties are not allowed ({} {verb} unexpected)",
                extra.join(", ")
            ),
        );
    }

    /// A list of one-key dicts (`vars`, `output`, `publish`). Where it is
    /// one choice of a `oneOf` (`publish`), any problem is one error on
    /// the whole value.
    fn pairs(&mut self, at: &str, schema: &str, v: &Yaml, one_of: bool) -> Vec<(String, Value)> {
        let Yaml::Sequence(items) = v else {
            if one_of {
                self.none_of(at, schema, v);
            } else {
                self.not_of_type(at, schema, v, "array");
            }
            return Vec::new();
        };
        let mut out = Vec::new();
        let items_schema = join(schema, "items");
        for (i, item) in items.iter().enumerate() {
            match item {
                Yaml::Mapping(m) if m.len() == 1 => {
                    let (k, v) = m.iter().next().expect("one entry");
                    out.push((k.as_str().unwrap_or_default().to_string(), to_json(v)));
                }
                _ if one_of => {
                    self.none_of(at, schema, v);
                    return Vec::new();
                }
                Yaml::Mapping(m) => {
                    let (check, problem) = if m.is_empty() {
                        ("minProperties", "does not have enough properties")
                    } else {
                        ("maxProperties", "has too many properties")
                    };
                    self.syntax(
                        format!("{at}[{i}]"),
                        join(&items_schema, check),
                        format!("{} {problem}", py_repr(&to_json(item))),
                    );
                }
                _ => self.not_of_type(&format!("{at}[{i}]"), &items_schema, item, "object"),
            }
        }
        out
    }
}

fn join(at: &str, key: &str) -> String {
    if at.is_empty() {
        key.to_string()
    } else {
        format!("{at}.{key}")
    }
}

/// Splits `a=1 b="two words", c=<% ctx(x) %>` into ordered pairs; values are
/// YAML scalars (so `1` is a number), quotes removed.
pub fn inline_params(text: &str) -> Result<Vec<(String, Value)>, String> {
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        while i < chars.len() && (chars[i].is_whitespace() || chars[i] == ',' || chars[i] == ';') {
            i += 1;
        }
        if i >= chars.len() {
            break;
        }
        let key_start = i;
        while i < chars.len() && chars[i] != '=' && !chars[i].is_whitespace() {
            i += 1;
        }
        let key: String = chars[key_start..i].iter().collect();
        if chars.get(i) != Some(&'=') || key.is_empty() {
            return Err(format!("{key:?} is not key=value"));
        }
        i += 1;
        let mut value = String::new();
        let quoted = matches!(chars.get(i), Some('"' | '\''));
        if quoted {
            let q = chars[i];
            i += 1;
            while i < chars.len() && chars[i] != q {
                value.push(chars[i]);
                i += 1;
            }
            i += 1;
            out.push((key, Value::String(value)));
            continue;
        }
        // Unquoted: up to the next separator outside `<% %>` / `{{ }}`.
        let mut depth = 0;
        while i < chars.len() {
            let two: String = chars[i..chars.len().min(i + 2)].iter().collect();
            if two == "<%" || two == "{{" {
                depth += 1;
            } else if two == "%>" || two == "}}" {
                depth -= 1;
            }
            if depth == 0 && (chars[i].is_whitespace() || chars[i] == ',' || chars[i] == ';') {
                break;
            }
            value.push(chars[i]);
            i += 1;
        }
        let parsed = if value.contains("<%") || value.contains("{{") {
            Value::String(value)
        } else {
            serde_yaml::from_str::<Yaml>(&value)
                .map(|y| to_json(&y))
                .unwrap_or(Value::String(value))
        };
        out.push((key, parsed));
    }
    Ok(out)
}

/// Reads a workflow definition; the spec (as far as it could be read) and
/// every syntax problem found.
pub fn read(text: &str) -> (Option<WorkflowSpec>, Vec<Issue>) {
    let mut r = Reader { issues: Vec::new() };
    let doc: Yaml = match serde_yaml::from_str(text) {
        Ok(d) => d,
        Err(e) => {
            let mut issue = Issue::new(IssueKind::Syntax, "", "", format!("not valid YAML: {e}"));
            issue.line = e.location().map(|l| l.line());
            return (None, vec![issue]);
        }
    };
    let Yaml::Mapping(top) = doc else {
        r.not_of_type("", "", &doc, "object");
        return (None, r.issues);
    };
    r.unknown_keys("", "", &top, &TOP_KEYS);
    let get = |k: &str| top.get(Yaml::String(k.into()));
    let version = match get("version") {
        Some(Yaml::Number(n)) if n.as_f64() == Some(1.0) => "1.0".to_string(),
        Some(Yaml::String(s)) if s == "1.0" => s.clone(),
        Some(other) => {
            r.syntax(
                "version",
                "properties.version",
                format!("must be 1.0, not {}", to_json(other)),
            );
            String::new()
        }
        None => {
            r.syntax("", "required", "'version' is a required property");
            String::new()
        }
    };
    let description = get("description")
        .and_then(Yaml::as_str)
        .unwrap_or_default()
        .to_string();
    let mut input = Vec::new();
    if let Some(v) = get("input") {
        match v {
            Yaml::Sequence(items) => {
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Yaml::String(name) => input.push((name.clone(), None)),
                        Yaml::Mapping(m) if m.len() == 1 => {
                            let (k, v) = m.iter().next().expect("one entry");
                            input.push((
                                k.as_str().unwrap_or_default().to_string(),
                                Some(to_json(v)),
                            ));
                        }
                        _ => r.none_of(&format!("input[{i}]"), "properties.input.items", item),
                    }
                }
            }
            _ => r.not_of_type("input", "properties.input", v, "array"),
        }
    }
    let vars = get("vars")
        .map(|v| r.pairs("vars", "properties.vars", v, false))
        .unwrap_or_default();
    let output = get("output")
        .map(|v| r.pairs("output", "properties.output", v, false))
        .unwrap_or_default();
    let mut tasks = BTreeMap::new();
    let mut task_order = Vec::new();
    match get("tasks") {
        Some(Yaml::Mapping(m)) if !m.is_empty() => {
            for (name, body) in m {
                let name = name.as_str().unwrap_or_default().to_string();
                let at = format!("tasks.{name}");
                if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
                    r.syntax(
                        &at,
                        "properties.tasks.patternProperties",
                        format!("The task name \"{name}\" must be letters, digits and _."),
                    );
                }
                if ENGINE_COMMANDS.contains(&name.as_str()) {
                    r.issues.push(Issue::new(
                        IssueKind::Semantic,
                        &at,
                        TASK_SCHEMA,
                        format!("The task name \"{name}\" is reserved with special function."),
                    ));
                }
                task_order.push(name.clone());
                tasks.insert(name, read_task(&mut r, &at, body));
            }
        }
        Some(Yaml::Mapping(_)) => r.syntax(
            "tasks",
            "properties.tasks.minProperties",
            "{} does not have enough properties",
        ),
        Some(other) => r.not_of_type("tasks", "properties.tasks", other, "object"),
        None => r.syntax("", "required", "'tasks' is a required property"),
    }
    let spec = WorkflowSpec {
        version,
        description,
        input,
        vars,
        output,
        tasks,
        task_order,
    };
    (Some(spec), r.issues)
}

fn read_task(r: &mut Reader, at: &str, body: &Yaml) -> TaskSpec {
    let mut task = TaskSpec {
        input: Value::Object(Map::new()),
        ..TaskSpec::default()
    };
    let m = match body {
        Yaml::Mapping(m) => m,
        Yaml::Null => return task,
        _ => {
            r.not_of_type(at, TASK_SCHEMA, body, "object");
            return task;
        }
    };
    let prop = |name: &str| format!("{TASK_SCHEMA}.properties.{name}");
    r.unknown_keys(at, TASK_SCHEMA, m, &TASK_KEYS);
    let get = |k: &str| m.get(Yaml::String(k.into()));
    if let Some(action) = get("action") {
        match action.as_str() {
            Some(text) => {
                let text = text.trim();
                match text.split_once(char::is_whitespace) {
                    // Inline parameters: `action: core.echo message=hi`.
                    Some((reference, params))
                        if !text.starts_with("<%") && !text.starts_with("{{") =>
                    {
                        task.action = Some(reference.to_string());
                        match inline_params(params) {
                            Ok(pairs) => task.input = Value::Object(pairs.into_iter().collect()),
                            Err(e) => r.syntax(
                                join(at, "action"),
                                prop("action"),
                                format!("inline parameters: {e}"),
                            ),
                        }
                    }
                    _ => task.action = Some(text.to_string()),
                }
            }
            None => r.not_of_type(&join(at, "action"), &prop("action"), action, "string"),
        }
    }
    if let Some(input) = get("input") {
        match input {
            Yaml::Mapping(_) => task.input = to_json(input),
            Yaml::String(s) => match inline_params(s) {
                Ok(pairs)
                    if !s.trim_start().starts_with("<%") && !s.trim_start().starts_with("{{") =>
                {
                    task.input = Value::Object(pairs.into_iter().collect())
                }
                _ => task.input = Value::String(s.clone()),
            },
            Yaml::Null => {}
            _ => {
                r.none_of(&join(at, "input"), &prop("input"), input);
                // Kept as written: StackStorm's content checks skip an
                // input that is not a dict.
                task.input = to_json(input);
            }
        }
    }
    if let Some(next) = get("next") {
        match next {
            Yaml::Sequence(items) => {
                for (i, item) in items.iter().enumerate() {
                    task.next
                        .push(read_transition(r, &format!("{at}.next[{i}]"), item));
                }
            }
            _ => r.not_of_type(&join(at, "next"), &prop("next"), next, "array"),
        }
    }
    task.join = match get("join") {
        None => None,
        Some(Yaml::String(s)) if s == "all" => Some(Join::All),
        Some(Yaml::Number(n)) if n.as_u64().is_some_and(|n| n > 0) => Some(Join::Count(
            u32::try_from(n.as_u64().unwrap_or(1)).unwrap_or(u32::MAX),
        )),
        Some(other) => {
            r.none_of(&join(at, "join"), &prop("join"), other);
            None
        }
    };
    task.with = match get("with") {
        None => None,
        Some(Yaml::String(s)) => read_items(r, &join(at, "with"), s, None),
        Some(Yaml::Mapping(w)) => {
            r.unknown_keys(
                &join(at, "with"),
                &prop("with"),
                w,
                &["items", "concurrency"],
            );
            match w.get(Yaml::String("items".into())).and_then(Yaml::as_str) {
                Some(items) => read_items(
                    r,
                    &join(at, "with"),
                    items,
                    w.get(Yaml::String("concurrency".into())).map(to_json),
                ),
                None => {
                    r.syntax(
                        join(at, "with"),
                        format!("{}.required", prop("with")),
                        "'items' is a required property",
                    );
                    None
                }
            }
        }
        Some(other) => {
            r.not_of_type(&join(at, "with"), &prop("with"), other, "object");
            None
        }
    };
    task.retry = match get("retry") {
        None => None,
        Some(Yaml::Mapping(rm)) => {
            r.unknown_keys(
                &join(at, "retry"),
                &prop("retry"),
                rm,
                &["when", "count", "delay"],
            );
            let g = |k: &str| rm.get(Yaml::String(k.into()));
            match g("count") {
                Some(count) => Some(Retry {
                    when: g("when").and_then(Yaml::as_str).map(str::to_string),
                    count: to_json(count),
                    delay: g("delay").map(to_json),
                }),
                None => {
                    r.syntax(
                        join(at, "retry"),
                        format!("{}.required", prop("retry")),
                        "'count' is a required property",
                    );
                    None
                }
            }
        }
        Some(other) => {
            r.not_of_type(&join(at, "retry"), &prop("retry"), other, "object");
            None
        }
    };
    task.delay = get("delay").map(to_json);
    task
}

fn read_items(
    r: &mut Reader,
    at: &str,
    text: &str,
    concurrency: Option<Value>,
) -> Option<WithItems> {
    let text = text.trim();
    // `x in <% ... %>`, `x, y in <% zip(...) %>`, or the bare expression.
    let (vars, items) = match text.split_once(" in ") {
        Some((names, expr)) if !names.contains("<%") && !names.contains("{{") => (
            names
                .split(',')
                .map(|n| n.trim().to_string())
                .collect::<Vec<_>>(),
            expr.trim().to_string(),
        ),
        _ => (Vec::new(), text.to_string()),
    };
    if vars
        .iter()
        .any(|v| v.is_empty() || !v.chars().all(|c| c.is_alphanumeric() || c == '_'))
    {
        r.syntax(
            format!("{at}.items"),
            format!("{TASK_SCHEMA}.properties.with.properties.items.pattern"),
            format!(
                "{} does not match 'x in <expression>' (item names must be words)",
                py_repr(&Value::String(text.to_string()))
            ),
        );
        return None;
    }
    Some(WithItems {
        vars,
        items,
        concurrency,
    })
}

fn read_transition(r: &mut Reader, at: &str, v: &Yaml) -> Transition {
    let schema = format!("{TASK_SCHEMA}.properties.next.items");
    let Yaml::Mapping(m) = v else {
        r.not_of_type(at, &schema, v, "object");
        return Transition::default();
    };
    r.unknown_keys(at, &schema, m, &NEXT_KEYS);
    let prop = |name: &str| format!("{schema}.properties.{name}");
    let g = |k: &str| m.get(Yaml::String(k.into()));
    let when = match g("when") {
        None => None,
        Some(Yaml::String(s)) => Some(s.clone()),
        Some(other) => Some(to_json(other).to_string()),
    };
    let publish = match g("publish") {
        None => Vec::new(),
        Some(Yaml::String(s)) => match inline_params(s) {
            Ok(p) => p,
            Err(e) => {
                r.syntax(join(at, "publish"), prop("publish"), e);
                Vec::new()
            }
        },
        Some(p) => r.pairs(&join(at, "publish"), &prop("publish"), p, true),
    };
    let next = match g("do") {
        None => vec!["continue".to_string()],
        Some(Yaml::String(s)) => s
            .split(',')
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect(),
        Some(Yaml::Sequence(items)) => items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_string))
            .collect(),
        Some(other) => {
            r.none_of(&join(at, "do"), &prop("do"), other);
            Vec::new()
        }
    };
    Transition {
        when,
        publish,
        next,
    }
}

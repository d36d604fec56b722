//! Orquesta, StackStorm's workflow language: the definition ([`spec`]) and
//! its inspection ([`inspect`]), which reports every problem a workflow
//! has before it runs — syntax (shapes, unknown keys), expressions (YAQL
//! and Jinja that do not parse), context (variables used but never set)
//! and semantics (transitions to unknown tasks, tasks nothing reaches).

pub mod conductor;
mod contents;
pub mod spec;

use std::collections::{BTreeSet, VecDeque};

use serde::Serialize;
use serde_json::{json, Value};

use crate::template::Renderer;
use crate::yaql::{self, Expr};
pub use contents::check_contents;
pub use spec::{Join, Retry, TaskSpec, Transition, WithItems, WorkflowSpec, ENGINE_COMMANDS};

/// What kind of problem an [`Issue`] is, with Orquesta's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IssueKind {
    Context,
    Expression,
    Semantic,
    Syntax,
}

/// One problem in a workflow definition, in Orquesta's shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Issue {
    #[serde(rename = "type")]
    pub kind: IssueKind,
    pub message: String,
    /// Orquesta's path in the definition (`tasks.t1.next[0].do`); empty
    /// for the whole definition.
    pub spec_path: String,
    /// Orquesta's path in its JSON schema
    /// (`properties.tasks.patternProperties.^\w+$.properties.next.items.properties.do`).
    pub schema_path: String,
    /// 1-based line in the definition, when it can be found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// The expression of a context or expression issue.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
    /// Its language (`yaql`, `jinja`; none when it mixes both).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language: Option<&'static str>,
}

impl Issue {
    pub(crate) fn new(
        kind: IssueKind,
        spec_path: impl Into<String>,
        schema_path: impl Into<String>,
        message: impl Into<String>,
    ) -> Issue {
        Issue {
            kind,
            message: message.into(),
            spec_path: spec_path.into(),
            schema_path: schema_path.into(),
            line: None,
            expression: None,
            language: None,
        }
    }

    /// The entry StackStorm's workflow service gives for it (its
    /// `format_inspection_result`): `type`, `message`, `spec_path` and
    /// `schema_path` (`null` when empty), and for context and expression
    /// issues the `expression` and its `language`.
    pub fn to_st2(&self) -> Value {
        let path = |p: &str| {
            if p.is_empty() {
                Value::Null
            } else {
                Value::String(p.to_string())
            }
        };
        let mut e = json!({
            "type": self.kind,
            "message": self.message,
            "spec_path": path(&self.spec_path),
            "schema_path": path(&self.schema_path),
        });
        if matches!(self.kind, IssueKind::Context | IssueKind::Expression) {
            e["language"] = json!(self.language);
            e["expression"] = json!(self.expression);
        }
        e
    }
}

/// The errors StackStorm reports when a workflow fails inspection before
/// it starts (st2's `workflows.inspect`): Orquesta's issues and the
/// content errors of [`check_contents`], sorted by type, then schema path
/// (a stable sort: Orquesta's own order, by spec path, and the content
/// errors' task order stay within one schema path).
pub fn inspection_errors(issues: &[Issue], contents: Vec<Value>) -> Vec<Value> {
    let mut errors: Vec<Value> = issues.iter().map(Issue::to_st2).collect();
    errors.extend(contents);
    errors.sort_by(|a, b| {
        let key = |e: &Value| {
            (
                e["type"].as_str().unwrap_or_default().to_string(),
                e["schema_path"].as_str().unwrap_or_default().to_string(),
            )
        };
        key(a).cmp(&key(b))
    });
    errors
}

/// Orquesta's schema path of a task (`tasks.<name>`).
pub(crate) const TASK_SCHEMA: &str = "properties.tasks.patternProperties.^\\w+$";

/// Names the runtime sets in every workflow's context.
const RUNTIME_NAMES: [&str; 2] = ["st2", "parent"];

/// Reads and inspects a workflow definition: the spec when it could be
/// read, and every problem found (none means it is valid), in Orquesta's
/// order: by type, schema path, then spec path.
pub fn inspect(text: &str) -> (Option<WorkflowSpec>, Vec<Issue>) {
    let (spec, mut issues) = spec::read(text);
    if let Some(spec) = &spec {
        check_semantics(spec, &mut issues);
        check_expressions(spec, &mut issues);
    }
    for issue in &mut issues {
        if issue.line.is_none() {
            // `next[0].do` is the YAML path `next.0.do`.
            let field = issue.spec_path.replace('[', ".").replace(']', "");
            issue.line = crate::loader::line_of(text, &field);
        }
    }
    issues.sort_by(|a, b| {
        (a.kind, &a.schema_path, &a.spec_path).cmp(&(b.kind, &b.schema_path, &b.spec_path))
    });
    (spec, issues)
}

fn check_semantics(spec: &WorkflowSpec, issues: &mut Vec<Issue>) {
    let do_schema = format!("{TASK_SCHEMA}.properties.next.items.properties.do");
    let mut targets = BTreeSet::new();
    for (name, task) in &spec.tasks {
        for (i, t) in task.next.iter().enumerate() {
            for target in &t.next {
                if ENGINE_COMMANDS.contains(&target.as_str()) {
                    continue;
                }
                if spec.tasks.contains_key(target) {
                    targets.insert(target.clone());
                } else {
                    issues.push(Issue::new(
                        IssueKind::Semantic,
                        format!("tasks.{name}.next[{i}].do"),
                        do_schema.clone(),
                        format!("The task \"{target}\" is not defined."),
                    ));
                }
            }
        }
    }
    let starts: Vec<&String> = spec
        .tasks
        .keys()
        .filter(|t| !targets.contains(*t))
        .collect();
    if starts.is_empty() && !spec.tasks.is_empty() {
        issues.push(Issue::new(
            IssueKind::Semantic,
            "tasks",
            "properties.tasks",
            "Unable to identify any tasks to start the workflow. If the workflow has a loop, \
             please add a task that serves as an entry point (or lead) into the loop.",
        ));
        return;
    }
    let mut reached: BTreeSet<&String> = starts.iter().copied().collect();
    let mut queue: VecDeque<&String> = starts.into_iter().collect();
    while let Some(t) = queue.pop_front() {
        for target in spec.tasks[t].next.iter().flat_map(|n| n.next.iter()) {
            if let Some((name, _)) = spec.tasks.get_key_value(target) {
                if reached.insert(name) {
                    queue.push_back(name);
                }
            }
        }
    }
    for name in spec.tasks.keys().filter(|t| !reached.contains(t)) {
        issues.push(Issue::new(
            IssueKind::Semantic,
            format!("tasks.{name}"),
            TASK_SCHEMA,
            format!("The task \"{name}\" can never run: no path from a start task reaches it."),
        ));
    }
}

/// Every string in `v`.
fn strings<'v>(v: &'v Value, out: &mut Vec<&'v str>) {
    match v {
        Value::String(s) => out.push(s),
        Value::Array(items) => items.iter().for_each(|i| strings(i, out)),
        Value::Object(m) => m.iter().for_each(|(k, i)| {
            out.push(k);
            strings(i, out);
        }),
        _ => {}
    }
}

/// One string of the workflow that may hold expressions, with where
/// Orquesta reports its problems: expression errors at the property
/// (`spec_path`, `schema_path`), context errors at `ctx_path` (a list's
/// item; none where Orquesta does not check the context, as in `retry`).
struct Checked {
    spec_path: String,
    schema_path: String,
    ctx_path: Option<String>,
    text: String,
}

/// Every expression-bearing string of the workflow, in Orquesta's order
/// of evaluation.
fn all_strings(spec: &WorkflowSpec) -> Vec<Checked> {
    let mut out = Vec::new();
    let mut add = |spec_path: &str, schema_path: &str, ctx_path: Option<String>, v: &Value| {
        let mut found = Vec::new();
        strings(v, &mut found);
        out.extend(found.into_iter().map(|text| Checked {
            spec_path: spec_path.to_string(),
            schema_path: schema_path.to_string(),
            ctx_path: ctx_path.clone(),
            text: text.to_string(),
        }));
    };
    for (i, (_, default)) in spec.input.iter().enumerate() {
        if let Some(d) = default {
            add("input", "properties.input", Some(format!("input[{i}]")), d);
        }
    }
    for (section, pairs) in [("vars", &spec.vars), ("output", &spec.output)] {
        for (i, (_, v)) in pairs.iter().enumerate() {
            let schema = format!("properties.{section}");
            add(section, &schema, Some(format!("{section}[{i}]")), v);
        }
    }
    for (name, task) in &spec.tasks {
        let at = format!("tasks.{name}");
        let mut prop = |path: &str, v: &Value, context: bool| {
            let spec_path = format!("{at}.{path}");
            let schema = format!(
                "{TASK_SCHEMA}.properties.{}",
                path.replace('.', ".properties.")
            );
            add(&spec_path, &schema, context.then(|| spec_path.clone()), v);
        };
        if let Some(v) = &task.delay {
            prop("delay", v, true);
        }
        if let Some(w) = &task.with {
            prop("with.items", &Value::String(w.items.clone()), true);
            if let Some(c) = &w.concurrency {
                prop("with.concurrency", c, true);
            }
        }
        if let Some(a) = &task.action {
            prop("action", &Value::String(a.clone()), true);
        }
        prop("input", &task.input, true);
        if let Some(r) = &task.retry {
            if let Some(w) = &r.when {
                prop("retry.when", &Value::String(w.clone()), false);
            }
            prop("retry.count", &r.count, false);
            if let Some(d) = &r.delay {
                prop("retry.delay", d, false);
            }
        }
        for (i, t) in task.next.iter().enumerate() {
            let next = format!("{at}.next[{i}]");
            let schema = format!("{TASK_SCHEMA}.properties.next.items.properties");
            if let Some(w) = &t.when {
                let path = format!("{next}.when");
                add(
                    &path,
                    &format!("{schema}.when"),
                    Some(path.clone()),
                    &Value::String(w.clone()),
                );
            }
            for (j, (_, v)) in t.publish.iter().enumerate() {
                add(
                    &format!("{next}.publish"),
                    &format!("{schema}.publish"),
                    Some(format!("{next}.publish[{j}]")),
                    v,
                );
            }
        }
    }
    out
}

/// YAQL's and Jinja's expressions in a text, as Orquesta finds them.
fn find_all<'t>(re: &str, text: &'t str) -> Vec<&'t str> {
    regex::Regex::new(re)
        .expect("valid regex")
        .find_iter(text)
        .map(|m| m.as_str())
        .collect()
}

/// A YAQL parse error as YAQL words it (`Parse error: unexpected '<' at
/// position 0 of expression '...'`); `expr` is the expression without its
/// delimiters.
fn yaql_parse_message(expr: &str, e: &yaql::YaqlError) -> String {
    let rest = expr.get(e.position..).unwrap_or_default();
    let Some(c) = rest.chars().next() else {
        return "Parse error: unexpected end of statement".to_string();
    };
    if e.message.starts_with("unexpected character") || e.message == "unterminated string" {
        // YAQL's parser reads tokens as it goes: a grammar error before the
        // bad character is what it reports.
        if let Err(earlier) = yaql::parse::parse(&expr[..e.position]) {
            if earlier.position < e.position {
                return yaql_parse_message(expr, &earlier);
            }
        }
        return format!(
            "Lexical error: illegal character '{c}' at position {}",
            e.position
        );
    }
    let token: String = if c.is_alphanumeric() || c == '_' || c == '$' {
        let word = rest[c.len_utf8()..]
            .find(|x: char| !(x.is_alphanumeric() || x == '_'))
            .map_or(rest, |end| &rest[..end + c.len_utf8()]);
        word.to_string()
    } else if c == '\'' || c == '"' {
        rest[1..].split(c).next().unwrap_or_default().to_string()
    } else {
        ["<=", ">=", "!=", "=~", "!~", "=>", "?.", "->"]
            .into_iter()
            .find(|op| rest.starts_with(op))
            .map_or_else(|| c.to_string(), str::to_string)
    };
    format!(
        "Parse error: unexpected '{token}' at position {} of expression '{expr}'",
        e.position
    )
}

/// Context variables a YAQL expression reads: `ctx().x`, `ctx(x)`,
/// `ctx('x')` and `$.x` outside lambdas.
fn yaql_refs(e: &Expr, in_lambda: bool, out: &mut BTreeSet<String>) {
    match e {
        Expr::Member(target, name, _) => {
            match target.as_ref() {
                Expr::Var(None) if !in_lambda => {
                    out.insert(name.clone());
                }
                Expr::Call {
                    name: f,
                    receiver: None,
                    args,
                    ..
                } if f == "ctx" && args.is_empty() => {
                    out.insert(name.clone());
                }
                _ => {}
            }
            yaql_refs(target, in_lambda, out);
        }
        Expr::Call {
            name,
            receiver,
            args,
            ..
        } => {
            if name == "ctx" && receiver.is_none() {
                if let [yaql::parse::Arg::Positional(
                    Expr::Name(n) | Expr::Literal(Value::String(n)),
                )] = args.as_slice()
                {
                    out.insert(n.clone());
                }
            }
            let lambda = yaql::LAMBDA_FUNCTIONS.contains(&name.as_str());
            if let Some(r) = receiver {
                yaql_refs(r, in_lambda, out);
            }
            for (i, a) in args.iter().enumerate() {
                let (yaql::parse::Arg::Positional(x) | yaql::parse::Arg::Named(_, x)) = a;
                // A lambda's collection is its receiver or first argument.
                let is_lambda_arg = lambda && (receiver.is_some() || i > 0);
                yaql_refs(x, in_lambda || is_lambda_arg, out);
            }
        }
        Expr::List(items) => items.iter().for_each(|i| yaql_refs(i, in_lambda, out)),
        Expr::Dict(pairs) => pairs.iter().for_each(|(k, v)| {
            yaql_refs(k, in_lambda, out);
            yaql_refs(v, in_lambda, out);
        }),
        Expr::Index(a, b) | Expr::Binary(_, a, b, _) => {
            yaql_refs(a, in_lambda, out);
            yaql_refs(b, in_lambda, out);
        }
        Expr::Unary(_, a) => yaql_refs(a, in_lambda, out),
        Expr::Literal(_) | Expr::Var(_) | Expr::Name(_) => {}
    }
}

/// Context variables a Jinja expression reads (`ctx().x`, `ctx('x')`).
fn jinja_refs(s: &str, out: &mut BTreeSet<String>) {
    let re =
        regex::Regex::new(r#"ctx\(\)\.(\w+)|ctx\(\s*['"](\w+)['"]\s*\)"#).expect("valid regex");
    for c in re.captures_iter(s) {
        if let Some(m) = c.get(1).or_else(|| c.get(2)) {
            out.insert(m.as_str().to_string());
        }
    }
}

fn check_expressions(spec: &WorkflowSpec, issues: &mut Vec<Issue>) {
    let mut defined: BTreeSet<String> = RUNTIME_NAMES.iter().map(|s| s.to_string()).collect();
    defined.extend(spec.input.iter().map(|(n, _)| n.clone()));
    defined.extend(spec.vars.iter().map(|(n, _)| n.clone()));
    // An output may use the outputs rendered before it (Orquesta renders
    // them in order into a rolling context).
    defined.extend(spec.output.iter().map(|(n, _)| n.clone()));
    for task in spec.tasks.values() {
        for t in &task.next {
            defined.extend(t.publish.iter().map(|(n, _)| n.clone()));
        }
    }
    let renderer = Renderer::new();
    for c in all_strings(spec) {
        let yaql_exprs = find_all(r"<%.*?%>", &c.text);
        let jinja_exprs = find_all(r"\{\{.*?\}\}|\{%.*?%\}", &c.text);
        let issue = |kind, language, expression: &str, message: String| Issue {
            expression: Some(expression.to_string()),
            language,
            ..Issue::new(kind, c.spec_path.clone(), c.schema_path.clone(), message)
        };
        if !yaql_exprs.is_empty() && !jinja_exprs.is_empty() {
            issues.push(issue(
                IssueKind::Expression,
                None,
                &c.text,
                "Expression with multiple types is not supported.".into(),
            ));
            continue;
        }
        // Each expression with the variables it reads.
        let mut reads: Vec<(&'static str, &str, BTreeSet<String>)> = Vec::new();
        for expr in yaql_exprs {
            let stripped = expr.trim_matches(|c| matches!(c, '<' | '%' | '>')).trim();
            match yaql::parse::parse(stripped) {
                Ok(e) => {
                    let mut refs = BTreeSet::new();
                    yaql_refs(&e, false, &mut refs);
                    reads.push(("yaql", expr, refs));
                }
                Err(e) => issues.push(issue(
                    IssueKind::Expression,
                    Some("yaql"),
                    expr,
                    yaql_parse_message(stripped, &e),
                )),
            }
        }
        if !jinja_exprs.is_empty() {
            if let Err(e) = renderer.check_syntax(&c.text) {
                issues.push(issue(
                    IssueKind::Expression,
                    Some("jinja"),
                    &c.text,
                    e.to_string(),
                ));
            }
            for expr in jinja_exprs {
                let mut refs = BTreeSet::new();
                jinja_refs(expr, &mut refs);
                reads.push(("jinja", expr, refs));
            }
        }
        let Some(ctx_path) = &c.ctx_path else {
            continue;
        };
        for (language, expr, refs) in reads {
            for name in refs {
                let mut problems = Vec::new();
                if name.starts_with("__") {
                    problems.push(format!(
                        "Variable \"{name}\" that is prefixed with double underscores is \
                         considered a private variable and cannot be referenced."
                    ));
                }
                if !defined.contains(&name) {
                    problems.push(format!(
                        "Variable \"{name}\" is referenced before assignment."
                    ));
                }
                for message in problems {
                    issues.push(Issue {
                        spec_path: ctx_path.clone(),
                        ..issue(IssueKind::Context, Some(language), expr, message)
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;

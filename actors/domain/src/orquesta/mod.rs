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
use serde_json::Value;

use crate::template::Renderer;
use crate::yaql::{self, Expr};
pub use contents::check_contents;
pub use spec::{Join, Retry, TaskSpec, Transition, WithItems, WorkflowSpec, ENGINE_COMMANDS};

/// What kind of problem an [`Issue`] is, with Orquesta's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IssueKind {
    Syntax,
    Expression,
    Context,
    Semantic,
}

/// One problem in a workflow definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Issue {
    #[serde(rename = "type")]
    pub kind: IssueKind,
    pub message: String,
    /// Dotted path in the definition (`tasks.t1.next.0.do`).
    pub spec_path: String,
    /// 1-based line in the definition, when it can be found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
}

impl Issue {
    pub(crate) fn new(
        kind: IssueKind,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Issue {
        Issue {
            kind,
            message: message.into(),
            spec_path: path.into(),
            line: None,
            expression: None,
        }
    }
}

/// Names the runtime sets in every workflow's context.
const RUNTIME_NAMES: [&str; 2] = ["st2", "parent"];

/// Reads and inspects a workflow definition: the spec when it could be
/// read, and every problem found (none means it is valid).
pub fn inspect(text: &str) -> (Option<WorkflowSpec>, Vec<Issue>) {
    let (spec, mut issues) = spec::read(text);
    if let Some(spec) = &spec {
        check_semantics(spec, &mut issues);
        check_expressions(spec, &mut issues);
    }
    for issue in &mut issues {
        if issue.line.is_none() {
            issue.line = crate::loader::line_of(text, &issue.spec_path);
        }
    }
    (spec, issues)
}

fn check_semantics(spec: &WorkflowSpec, issues: &mut Vec<Issue>) {
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
                        format!("tasks.{name}.next.{i}.do"),
                        format!(
                            "task {target:?} is not defined (tasks: {})",
                            spec.tasks.keys().cloned().collect::<Vec<_>>().join(", ")
                        ),
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
            "no task can start the workflow: every task is the target of a transition",
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
            format!("task {name:?} can never run: no path from a start task reaches it"),
        ));
    }
}

/// Every string in `v` with its path below `at`.
fn strings<'v>(v: &'v Value, at: &str, out: &mut Vec<(String, &'v str)>) {
    match v {
        Value::String(s) => out.push((at.to_string(), s)),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                strings(item, &format!("{at}.{i}"), out);
            }
        }
        Value::Object(m) => {
            for (k, item) in m {
                strings(item, &format!("{at}.{k}"), out);
            }
        }
        _ => {}
    }
}

/// Every expression-bearing string of the workflow, with its path.
fn all_strings(spec: &WorkflowSpec) -> Vec<(String, String)> {
    let mut out: Vec<(String, &str)> = Vec::new();
    for (i, (name, default)) in spec.input.iter().enumerate() {
        if let Some(d) = default {
            strings(d, &format!("input.{i}.{name}"), &mut out);
        }
    }
    for (section, pairs) in [("vars", &spec.vars), ("output", &spec.output)] {
        for (i, (name, v)) in pairs.iter().enumerate() {
            strings(v, &format!("{section}.{i}.{name}"), &mut out);
        }
    }
    let mut owned: Vec<(String, String)> =
        out.into_iter().map(|(p, s)| (p, s.to_string())).collect();
    for (name, task) in &spec.tasks {
        let at = format!("tasks.{name}");
        let mut found: Vec<(String, &str)> = Vec::new();
        strings(&task.input, &format!("{at}.input"), &mut found);
        for (field, v) in [("delay", &task.delay)] {
            if let Some(v) = v {
                strings(v, &format!("{at}.{field}"), &mut found);
            }
        }
        owned.extend(found.into_iter().map(|(p, s)| (p, s.to_string())));
        if let Some(a) = &task.action {
            owned.push((format!("{at}.action"), a.clone()));
        }
        if let Some(w) = &task.with {
            owned.push((format!("{at}.with.items"), w.items.clone()));
            if let Some(Value::String(c)) = &w.concurrency {
                owned.push((format!("{at}.with.concurrency"), c.clone()));
            }
        }
        if let Some(r) = &task.retry {
            if let Some(w) = &r.when {
                owned.push((format!("{at}.retry.when"), w.clone()));
            }
            for (field, v) in [("count", Some(&r.count)), ("delay", r.delay.as_ref())] {
                if let Some(Value::String(s)) = v {
                    owned.push((format!("{at}.retry.{field}"), s.clone()));
                }
            }
        }
        for (i, t) in task.next.iter().enumerate() {
            if let Some(w) = &t.when {
                owned.push((format!("{at}.next.{i}.when"), w.clone()));
            }
            for (j, (pname, v)) in t.publish.iter().enumerate() {
                let mut found = Vec::new();
                strings(v, &format!("{at}.next.{i}.publish.{j}.{pname}"), &mut found);
                owned.extend(found.into_iter().map(|(p, s)| (p, s.to_string())));
            }
        }
    }
    owned
}

/// The YAQL expressions (`<% %>`) of a string, with their offsets.
fn yaql_parts(s: &str) -> Result<Vec<(usize, &str)>, usize> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(start) = s[from..].find("<%").map(|i| i + from) {
        let end = s[start..].find("%>").map(|i| i + start).ok_or(start)?;
        out.push((start + 2, &s[start + 2..end]));
        from = end + 2;
    }
    Ok(out)
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
    for (path, s) in all_strings(spec) {
        let has_yaql = s.contains("<%");
        let has_jinja = s.contains("{{") || s.contains("{%");
        let issue = |kind, message: String| Issue {
            expression: Some(s.clone()),
            ..Issue::new(kind, path.clone(), message)
        };
        if has_yaql && has_jinja {
            issues.push(issue(
                IssueKind::Expression,
                "YAQL (<% %>) and Jinja ({{ }}) cannot be mixed in one value".into(),
            ));
            continue;
        }
        let mut refs = BTreeSet::new();
        if has_yaql {
            match yaql_parts(&s) {
                Err(at) => issues.push(issue(
                    IssueKind::Expression,
                    format!("`<%` at position {at} has no closing `%>`"),
                )),
                Ok(parts) => {
                    for (offset, part) in parts {
                        match yaql::parse::parse(part) {
                            Ok(e) => yaql_refs(&e, false, &mut refs),
                            Err(e) => issues.push(issue(
                                IssueKind::Expression,
                                format!(
                                    "YAQL error at position {}: {}",
                                    e.position + offset,
                                    e.message
                                ),
                            )),
                        }
                    }
                }
            }
        }
        if has_jinja {
            match renderer.check_syntax(&s) {
                Ok(()) => jinja_refs(&s, &mut refs),
                Err(e) => issues.push(issue(IssueKind::Expression, format!("Jinja error: {e}"))),
            }
        }
        for name in refs.difference(&defined) {
            issues.push(issue(
                IssueKind::Context,
                format!("variable {name:?} is used but never set (by input, vars or a publish)"),
            ));
        }
    }
}

#[cfg(test)]
mod tests;

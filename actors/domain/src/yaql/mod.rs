//! YAQL, the expression language of Orquesta workflows (`<% ... %>`): our
//! own grammar ([`parse`]) and evaluator over JSON values. `$` is the data
//! an expression sees (a workflow's context); inside a lambda argument
//! (`select`, `where`, `any`, `all`, `orderBy`...) `$` is the element.
//! Functions a host adds (Orquesta's `ctx()`, `result()`, `item()`,
//! `task_status()`, `st2kv()`...) come from a [`Host`]. Errors carry the
//! position (0-based character offset) in the expression.

mod eval;
pub mod parse;

use std::fmt;

use serde_json::Value;

pub use parse::Expr;

/// Functions whose arguments after the collection are lambdas: evaluated
/// per element with `$` bound to it.
pub const LAMBDA_FUNCTIONS: [&str; 8] = [
    "select",
    "where",
    "filter",
    "any",
    "all",
    "orderBy",
    "sortBy",
    "selectMany",
];

/// A parse or evaluation failure, at a character offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YaqlError {
    pub position: usize,
    pub message: String,
}

impl YaqlError {
    pub(crate) fn new(position: usize, message: impl Into<String>) -> YaqlError {
        YaqlError {
            position,
            message: message.into(),
        }
    }
}

impl fmt::Display for YaqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at position {}: {}", self.position, self.message)
    }
}

impl std::error::Error for YaqlError {}

/// Functions the embedding adds to YAQL's own.
pub trait Host {
    /// Calls `name` with evaluated arguments; `None` when the host has no
    /// such function (then it is an unknown function).
    fn call(&self, name: &str, args: &[Value]) -> Option<Result<Value, String>>;

    /// [`Host::call`] with the call's named arguments too (`f(x, key =>
    /// value)`); by default they are not the host's business.
    fn call_named(
        &self,
        name: &str,
        args: &[Value],
        _named: &serde_json::Map<String, Value>,
    ) -> Option<Result<Value, String>> {
        self.call(name, args)
    }
}

/// A host with no functions of its own.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHost;

impl Host for NoHost {
    fn call(&self, _: &str, _: &[Value]) -> Option<Result<Value, String>> {
        None
    }
}

/// Parses and evaluates `src` against `data`.
pub fn evaluate(src: &str, data: &Value, host: &dyn Host) -> Result<Value, YaqlError> {
    let expr = parse::parse(src)?;
    eval::Evaluator { host }.eval(&expr, data)
}

/// Python's truthiness, which YAQL (and so Orquesta's `when`) uses.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

#[cfg(test)]
mod tests;

/// Orquesta's handling of YAQL in workflow values: a string that is one
/// `<% expr %>` becomes the expression's value (any type); a string with
/// `<% %>` among text has each replaced by its value as text; lists and
/// dicts are rendered item by item; anything else is kept.
pub fn render(value: &Value, data: &Value, host: &dyn Host) -> Result<Value, YaqlError> {
    match value {
        Value::String(s) => render_str(s, data, host),
        Value::Array(items) => items
            .iter()
            .map(|v| render(v, data, host))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Value::Object(m) => {
            let mut out = serde_json::Map::new();
            for (k, v) in m {
                let key = match render_str(k, data, host)? {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                out.insert(key, render(v, data, host)?);
            }
            Ok(Value::Object(out))
        }
        other => Ok(other.clone()),
    }
}

fn render_str(s: &str, data: &Value, host: &dyn Host) -> Result<Value, YaqlError> {
    let trimmed = s.trim();
    if let Some(inner) = trimmed
        .strip_prefix("<%")
        .and_then(|t| t.strip_suffix("%>"))
    {
        if !inner.contains("<%") && !inner.contains("%>") {
            let offset = s.find("<%").unwrap_or(0) + 2;
            return evaluate(inner, data, host).map_err(|e| YaqlError {
                position: e.position + offset,
                message: e.message,
            });
        }
    }
    let mut out = String::new();
    let mut rest = s;
    let mut consumed = 0;
    while let Some(start) = rest.find("<%") {
        let end = rest[start..]
            .find("%>")
            .ok_or_else(|| YaqlError::new(consumed + start, "`<%` without its closing `%>`"))?
            + start;
        out.push_str(&rest[..start]);
        let value = evaluate(&rest[start + 2..end], data, host).map_err(|e| YaqlError {
            position: e.position + consumed + start + 2,
            message: e.message,
        })?;
        // As Orquesta: Python's `str()` of the value (`False`, `None`,
        // `{'a': 1}`).
        out.push_str(&crate::template::python_text(&value));
        consumed += end + 2;
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    Ok(Value::String(out))
}

//! Jinja rendering (minijinja) with StackStorm's filters and semantics.
//!
//! StackStorm renders rule criteria patterns, rule action parameters and
//! parameter defaults with a sandboxed Jinja2 environment using
//! `StrictUndefined`, `trim_blocks` and `lstrip_blocks`, plus its own
//! filters (`st2common/st2common/util/jinja.py`). [`Renderer`] is that
//! environment on minijinja:
//!
//! - an undefined variable is an error that names the expression;
//! - values print the way Python prints them (`True`, `None`,
//!   `{'a': 1}`), so a command line renders as it does on StackStorm;
//! - Python string, list and dict methods (`.split()`, `.items()`...) work;
//! - `st2kv.system.<key>` and `st2kv.user.<key>` read the datastore through
//!   a [`KeyValueLookup`], only the keys a template actually reads. The user
//!   of `st2kv.user` is the context's `action_context.api_user`, else
//!   `action_context.user` (StackStorm's order); without either,
//!   `st2kv.user` is undefined. A key that does not exist renders as an empty
//!   string, as on StackStorm.
//!
//! The module also holds [`JsonPath`], the jsonpath-rw subset used by
//! criteria keys and the `jsonpath_query` filter.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use minijinja::{Environment, Error, ErrorKind, UndefinedBehavior, Value};
use serde_json::Value as Json;

use crate::secrets::Cipher;

mod compiled;
mod filters;
mod jsonpath;
mod kv;
mod python;
#[cfg(test)]
mod tests;

pub use compiled::CompiledValue;
use compiled::{cached_source, Key, Node, EXPRESSION_VALUE};
pub use jsonpath::{JsonPath, PathError};
use kv::with_datastore;
pub use kv::{Extras, KeyValueLookup, KvScope, NoKeyValues};
pub(crate) use python::{python_float, python_regex, python_text, RegexFlags};
use python::{python_str, to_json};

/// A template failed to parse or to render.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "{message}{} in template {template:?}",
    .line.map(|l| format!(" (line {l})")).unwrap_or_default()
)]
pub struct TemplateError {
    /// The template text as written.
    pub template: String,
    /// What went wrong, from minijinja, naming the undefined expression
    /// where there is one.
    pub message: String,
    /// 1-based line of the template where it went wrong, when known.
    pub line: Option<usize>,
}

impl TemplateError {
    /// `source` is the text minijinja parsed (the template, or the
    /// expression inside `{{ }}`), used to quote the failing expression.
    fn new(template: &str, source: &str, err: &Error) -> Self {
        let mut message = err.kind().to_string();
        if let Some(detail) = err.detail() {
            write!(message, ": {detail}").ok();
        }
        if err.kind() == ErrorKind::UndefinedError {
            if let Some(expr) = err.range().and_then(|r| failing_expression(source, r)) {
                write!(message, ": `{expr}` is undefined").ok();
            }
        }
        Self {
            template: template.to_string(),
            message,
            line: err.line(),
        }
    }
}

/// The expression at `range` of `source`, widened to the left over the
/// variable the attribute lookup starts from: minijinja's span of
/// `trigger.body.nmae` starts at `.body`.
fn failing_expression(source: &str, range: std::ops::Range<usize>) -> Option<&str> {
    let head = source.get(..range.start)?;
    let start = head
        .char_indices()
        .rev()
        .find(|(_, c)| !(c.is_alphanumeric() || "_.[]'\"".contains(*c)))
        .map_or(0, |(i, c)| i + c.len_utf8());
    source.get(start..range.end)
}

/// StackStorm's magic string for `None` (`use_none` filter): a template
/// rendering exactly this renders `null`.
pub const NONE_MAGIC_VALUE: &str = "%*****__%NONE%__*****%";

/// A minijinja environment configured once with StackStorm's semantics and
/// filters. Cheap to share; rendering takes `&self`.
#[derive(Debug, Clone)]
pub struct Renderer {
    env: Environment<'static>,
    /// Whether a value rendering to [`NONE_MAGIC_VALUE`] becomes `null`
    /// (StackStorm's parameter rendering); Orquesta keeps the marker.
    none_marker_is_null: bool,
    /// What `decrypt_kv` opens secrets with, if anything.
    cipher: Option<Cipher>,
}

impl Default for Renderer {
    fn default() -> Self {
        Self::new()
    }
}

impl Renderer {
    pub fn new() -> Self {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_formatter(|out, _state, value| {
            out.write_str(&python_str(value))
                .map_err(|_| Error::from(ErrorKind::WriteFailure))
        });
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_loader(|name| Ok(cached_source(name)));
        filters::register(&mut env);
        Self {
            env,
            none_marker_is_null: true,
            cipher: None,
        }
    }

    /// This renderer for Orquesta workflow expressions: `use_none`'s
    /// marker stays a string, as Orquesta leaves it.
    pub fn keeping_none_marker(self) -> Self {
        Self {
            none_marker_is_null: false,
            ..self
        }
    }

    /// A renderer whose `decrypt_kv` opens secret datastore values sealed
    /// with `cipher`. The datastore hands templates secrets sealed, as
    /// StackStorm does, so a secret reaches a rendered value only through
    /// an explicit `| decrypt_kv`.
    pub fn with_cipher(cipher: Cipher) -> Self {
        let mut renderer = Self::new();
        renderer.cipher = Some(cipher.clone());
        renderer
            .env
            .add_filter("decrypt_kv", move |value: Value| -> Result<Value, Error> {
                filters::missing_kv(&value)?;
                let sealed = python_str(&value);
                cipher.decrypt(&sealed).map(Value::from).map_err(|e| {
                    Error::new(
                        ErrorKind::InvalidOperation,
                        format!("decrypt_kv: {e}; is the datastore item marked secret?"),
                    )
                })
            });
        renderer
    }

    /// The cipher this renderer's `decrypt_kv` opens secrets with
    /// ([`Renderer::with_cipher`]), for other readers of sealed values
    /// (a pack config's `secret: true` items).
    pub fn cipher(&self) -> Option<&Cipher> {
        self.cipher.as_ref()
    }

    /// Renders `template` to text with `ctx` (a JSON object whose keys are
    /// the template's variables) plus `st2kv`.
    pub fn render_str(
        &self,
        template: &str,
        ctx: &Json,
        kv: &dyn KeyValueLookup,
    ) -> Result<String, TemplateError> {
        self.render_str_with(template, ctx, &Extras::new(), kv)
    }

    fn render_str_with(
        &self,
        template: &str,
        ctx: &Json,
        extra: &Extras,
        kv: &dyn KeyValueLookup,
    ) -> Result<String, TemplateError> {
        let compiled = self
            .env
            .template_from_str(template)
            .map_err(|e| TemplateError::new(template, template, &e))?;
        with_datastore(ctx, extra, kv, |root| compiled.render(root))
            .map_err(|e| TemplateError::new(template, template, &e))
    }

    /// Renders every string inside `value` recursively (map keys included).
    /// A string that is exactly one expression `{{ expr }}` keeps the native
    /// type of the result (number, bool, list, dict); other strings render
    /// to strings (then, like StackStorm, a rendered string that is a
    /// JSON/Python-literal list or dict stays a string unless cast later).
    /// A string rendering to [`NONE_MAGIC_VALUE`] becomes `null`.
    pub fn render_value(
        &self,
        value: &Json,
        ctx: &Json,
        kv: &dyn KeyValueLookup,
    ) -> Result<Json, TemplateError> {
        self.render_value_with(value, ctx, &Extras::new(), kv)
    }

    /// [`Renderer::render_value`] with `extra` names in scope besides
    /// `ctx`'s (callables such as Orquesta's `ctx()` and `result()`).
    pub fn render_value_with(
        &self,
        value: &Json,
        ctx: &Json,
        extra: &Extras,
        kv: &dyn KeyValueLookup,
    ) -> Result<Json, TemplateError> {
        match value {
            Json::String(s) => self.render_string_value(s, ctx, extra, kv),
            Json::Array(items) => items
                .iter()
                .map(|item| self.render_value_with(item, ctx, extra, kv))
                .collect::<Result<_, _>>()
                .map(Json::Array),
            Json::Object(map) => map
                .iter()
                .map(|(k, v)| {
                    Ok((
                        self.render_text(k, ctx, extra, kv)?,
                        self.render_value_with(v, ctx, extra, kv)?,
                    ))
                })
                .collect::<Result<_, _>>()
                .map(Json::Object),
            other => Ok(other.clone()),
        }
    }

    /// Renders a [`CompiledValue`]: the same result as
    /// [`Renderer::render_value`] on its source, but each template is parsed
    /// once (kept in this renderer's environment, keyed by its source), the
    /// context is converted once for the whole value, and parts without
    /// Jinja markup are copied as they are.
    pub fn render_compiled(
        &self,
        value: &CompiledValue,
        ctx: &Json,
        kv: &dyn KeyValueLookup,
    ) -> Result<Json, TemplateError> {
        if let Node::Literal(literal) = &value.node {
            return Ok(literal.clone());
        }
        let extra = Extras::new();
        // Any failure renders the source again the reference way, whose
        // error message is the one to report.
        with_datastore(ctx, &extra, kv, |root| self.render_node(&value.node, root))
            .or_else(|_| self.render_value_with(&value.source, ctx, &extra, kv))
    }

    fn render_node(&self, node: &Node, root: &Value) -> Result<Json, Error> {
        match node {
            Node::Literal(literal) => Ok(literal.clone()),
            Node::Text(name) => {
                let rendered = self.env.get_template(name)?.render(root)?;
                Ok(self.none_marker_to_null(rendered))
            }
            Node::Expression(name) => {
                let captured = self.env.get_template(name)?.render_captured(root)?;
                let value = captured
                    .state()
                    .lookup(EXPRESSION_VALUE)
                    .filter(|v| !v.is_undefined())
                    .ok_or_else(|| Error::from(ErrorKind::UndefinedError))?;
                match to_json(&value)? {
                    Json::String(s) => Ok(self.none_marker_to_null(s)),
                    other => Ok(other),
                }
            }
            Node::Unparsable => Err(Error::from(ErrorKind::SyntaxError)),
            Node::Array(items) => items
                .iter()
                .map(|item| self.render_node(item, root))
                .collect::<Result<_, _>>()
                .map(Json::Array),
            Node::Object(entries) => entries
                .iter()
                .map(|(key, value)| {
                    let key = match key {
                        Key::Literal(key) => key.clone(),
                        Key::Text(name) => self.env.get_template(name)?.render(root)?,
                    };
                    Ok((key, self.render_node(value, root)?))
                })
                .collect::<Result<_, _>>()
                .map(Json::Object),
        }
    }

    /// A rendered string, or `null` for StackStorm's `None` marker.
    fn none_marker_to_null(&self, rendered: String) -> Json {
        if self.none_marker_is_null && rendered == NONE_MAGIC_VALUE {
            Json::Null
        } else {
            Json::String(rendered)
        }
    }

    /// Applies filter `name` to `args[0]` with the other `args` as its
    /// arguments: Orquesta offers StackStorm's filters (see
    /// [`ORQUESTA_FUNCTIONS`]) as functions too, in YAQL and in Jinja
    /// (`from_json_string(x)` is `x | from_json_string`). The result is
    /// kept as it is (`use_none` gives its marker string, as in Orquesta).
    pub fn call_filter(&self, name: &str, args: &[Json]) -> Result<Json, String> {
        let names: Vec<String> = (0..args.len()).map(|i| format!("a{i}")).collect();
        let expr = match names.split_first() {
            Some((first, rest)) => format!("{first} | {name}({})", rest.join(", ")),
            None => return Err(format!("{name}() needs a value")),
        };
        let vars: BTreeMap<&str, &Json> = names.iter().map(String::as_str).zip(args).collect();
        let value = self
            .env
            .compile_expression(&expr)
            .and_then(|e| e.eval(Value::from_serialize(&vars)))
            .map_err(|e| format!("{name}(): {e}"))?;
        to_json(&value).map_err(|e| format!("{name}(): {e}"))
    }

    /// Checks that `template` parses.
    pub fn check_syntax(&self, template: &str) -> Result<(), TemplateError> {
        self.env
            .template_from_str(template)
            .map(|_| ())
            .map_err(|e| TemplateError::new(template, template, &e))
    }

    /// The top-level variables `template` reads and does not assign itself
    /// (`{{ message }}` reads `message`, `{{ st2kv.system.x }}` reads
    /// `st2kv`).
    pub fn variables(&self, template: &str) -> Result<BTreeSet<String>, TemplateError> {
        let compiled = self
            .env
            .template_from_str(template)
            .map_err(|e| TemplateError::new(template, template, &e))?;
        Ok(compiled.undeclared_variables(false).into_iter().collect())
    }

    /// Renders a string without Jinja markup as itself, without compiling.
    fn render_text(
        &self,
        text: &str,
        ctx: &Json,
        extra: &Extras,
        kv: &dyn KeyValueLookup,
    ) -> Result<String, TemplateError> {
        if is_template(text) {
            self.render_str_with(text, ctx, extra, kv)
        } else {
            Ok(text.to_string())
        }
    }

    fn render_string_value(
        &self,
        text: &str,
        ctx: &Json,
        extra: &Extras,
        kv: &dyn KeyValueLookup,
    ) -> Result<Json, TemplateError> {
        let Some(expr) = single_expression(text) else {
            let rendered = self.render_text(text, ctx, extra, kv)?;
            return Ok(
                if self.none_marker_is_null && rendered == NONE_MAGIC_VALUE {
                    Json::Null
                } else {
                    Json::String(rendered)
                },
            );
        };
        let compiled = self
            .env
            .compile_expression(expr)
            .map_err(|e| TemplateError::new(text, expr, &e))?;
        let value = with_datastore(ctx, extra, kv, |root| compiled.eval(root))
            .map_err(|e| TemplateError::new(text, expr, &e))?;
        if value.is_undefined() {
            return Err(TemplateError {
                template: text.to_string(),
                message: format!("undefined value: `{}` is undefined", expr.trim()),
                line: None,
            });
        }
        let json = to_json(&value).map_err(|e| TemplateError::new(text, expr, &e))?;
        Ok(match json {
            Json::String(s) if self.none_marker_is_null && s == NONE_MAGIC_VALUE => Json::Null,
            other => other,
        })
    }
}

/// StackStorm's filters that Orquesta workflows also call as functions.
pub const ORQUESTA_FUNCTIONS: &[&str] = &[
    "from_json_string",
    "from_yaml_string",
    "to_json_string",
    "to_yaml_string",
    "json_escape",
    "jsonpath_query",
    "to_complex",
    "use_none",
    "regex_match",
    "regex_replace",
    "regex_search",
    "regex_substring",
    "to_human_time_from_seconds",
    "version_compare",
    "version_more_than",
    "version_less_than",
    "version_equal",
    "version_match",
    "version_bump_major",
    "version_bump_minor",
    "version_bump_patch",
    "version_strip_patch",
    "basename",
    "dirname",
];

/// Whether evaluating `text` may open a secret: it reads the datastore
/// (`st2kv`, which `decrypt=true` opens) or decrypts a value it is given
/// (`decrypt_kv`). What the engine audits the secrets opened in.
pub fn may_open_secrets(text: &str) -> bool {
    text.contains("st2kv") || text.contains("decrypt_kv")
}

/// Whether `text` holds Jinja markup (`{{`, `{%` or `{#`).
pub fn is_template(text: &str) -> bool {
    text.contains("{{") || text.contains("{%") || text.contains("{#")
}

/// The expression of a string that is exactly one `{{ expr }}` and nothing
/// else.
fn single_expression(text: &str) -> Option<&str> {
    let inner = text.strip_prefix("{{")?.strip_suffix("}}")?;
    let inner = inner.strip_prefix('-').unwrap_or(inner);
    let inner = inner.strip_suffix('-').unwrap_or(inner);
    let has_markup = ["{{", "}}", "{%", "%}", "{#", "#}"]
        .iter()
        .any(|m| inner.contains(m));
    (!has_markup && !inner.trim().is_empty()).then_some(inner)
}

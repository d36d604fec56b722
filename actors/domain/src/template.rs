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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::{self, Write as _};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use minijinja::value::{Kwargs, Object, ObjectRepr, ValueKind};
use minijinja::{Environment, Error, ErrorKind, UndefinedBehavior, Value};
use serde_json::Value as Json;

use crate::secrets::Cipher;

// ---------------------------------------------------------------------------
// Datastore lookups
// ---------------------------------------------------------------------------

/// Scope of a datastore key, as templates name it (`st2kv.system.x`,
/// `st2kv.user.x`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KvScope {
    System,
    /// Keys of one user (StackStorm stores them as `<user>:<key>`).
    User(String),
}

/// Read access to the datastore for templates.
pub trait KeyValueLookup: Send + Sync {
    /// The value of `name` in `scope` as stored (a secret stays sealed;
    /// `| decrypt_kv` with [`Renderer::with_cipher`] opens it); `None` when
    /// the key does not exist.
    fn get(&self, scope: KvScope, name: &str) -> Option<String>;
}

/// A datastore with no keys.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoKeyValues;

impl KeyValueLookup for NoKeyValues {
    fn get(&self, _scope: KvScope, _name: &str) -> Option<String> {
        None
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// The renderer
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Values compiled once
// ---------------------------------------------------------------------------

/// Prefix of the name under which a renderer's environment compiles and
/// keeps a template given by its source.
const CACHED_TEMPLATE: &str = "\u{0}squall.template:";
/// Prefix of the name under which a renderer's environment compiles and
/// keeps a single expression given by its source, as a template that
/// assigns it to [`EXPRESSION_VALUE`].
const CACHED_EXPRESSION: &str = "\u{0}squall.expression:";
/// The variable a cached expression's template assigns.
const EXPRESSION_VALUE: &str = "__squall_value";
/// Parses expressions to check them before they are cached: a cached
/// expression is parsed inside parentheses, which would accept some that
/// do not parse on their own (`a) + (b`).
static EXPRESSION_SYNTAX: LazyLock<Environment<'static>> = LazyLock::new(Environment::empty);

/// The renderer's loader: the source of a cached template or expression,
/// from its name. Any other name is not found, as without a loader.
fn cached_source(name: &str) -> Option<String> {
    if let Some(source) = name.strip_prefix(CACHED_TEMPLATE) {
        return Some(source.to_string());
    }
    name.strip_prefix(CACHED_EXPRESSION)
        .map(|expr| format!("{{% set {EXPRESSION_VALUE} = ({expr}) %}}"))
}

/// A JSON value whose strings may be Jinja templates, prepared once for
/// [`Renderer::render_compiled`]: strings without markup (and subtrees
/// without any) are kept as they are; the others are named by their
/// source, which the renderer parses the first time and keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledValue {
    /// The value as written, rendered the reference way to report an error.
    source: Json,
    node: Node,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    /// Renders to itself.
    Literal(Json),
    /// A template rendering to a string (the name of the cached template).
    Text(String),
    /// Exactly one `{{ expr }}`, keeping the result's type (the name of the
    /// cached expression).
    Expression(String),
    /// `{{ expr }}` whose expression does not parse: left to the
    /// reference rendering, which reports it.
    Unparsable,
    Array(Vec<Node>),
    Object(Vec<(Key, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
enum Key {
    Literal(String),
    /// A key with markup (the name of the cached template).
    Text(String),
}

impl CompiledValue {
    pub fn new(value: &Json) -> Self {
        Self {
            source: value.clone(),
            node: Node::of(value),
        }
    }

    /// The value as written.
    pub fn source(&self) -> &Json {
        &self.source
    }
}

impl Node {
    fn of(value: &Json) -> Node {
        match value {
            // StackStorm's `None` marker has no markup, but renders to
            // `null` with a renderer that says so.
            Json::String(s) if !is_template(s) && s != NONE_MAGIC_VALUE => {
                Node::Literal(value.clone())
            }
            Json::String(s) => match single_expression(s) {
                Some(expr) if EXPRESSION_SYNTAX.compile_expression(expr).is_ok() => {
                    Node::Expression(format!("{CACHED_EXPRESSION}{expr}"))
                }
                Some(_) => Node::Unparsable,
                None => Node::Text(format!("{CACHED_TEMPLATE}{s}")),
            },
            Json::Array(items) => {
                let nodes: Vec<Node> = items.iter().map(Node::of).collect();
                if nodes.iter().all(|n| matches!(n, Node::Literal(_))) {
                    Node::Literal(value.clone())
                } else {
                    Node::Array(nodes)
                }
            }
            Json::Object(map) => {
                let entries: Vec<(Key, Node)> = map
                    .iter()
                    .map(|(k, v)| {
                        let key = if is_template(k) {
                            Key::Text(format!("{CACHED_TEMPLATE}{k}"))
                        } else {
                            Key::Literal(k.clone())
                        };
                        (key, Node::of(v))
                    })
                    .collect();
                let literal = entries
                    .iter()
                    .all(|(k, v)| matches!((k, v), (Key::Literal(_), Node::Literal(_))));
                if literal {
                    Node::Literal(value.clone())
                } else {
                    Node::Object(entries)
                }
            }
            other => Node::Literal(other.clone()),
        }
    }
}

// ---------------------------------------------------------------------------
// `st2kv`: datastore reads during a render
// ---------------------------------------------------------------------------

/// Runs `render` with `ctx` plus `st2kv` as the root context.
///
/// minijinja values must be `'static`, so the borrowed `kv` cannot be called
/// from inside a render. Rendering therefore runs in rounds: a key the
/// template reads that is not known yet reads as missing and is recorded;
/// after the round those keys are looked up and the template rendered
/// again. A round that reads nothing new is the result. Templates that don't
/// use `st2kv` render once; each round only adds keys, so this ends.
/// Names besides the context's that a render sees (e.g. callables).
pub type Extras = BTreeMap<String, Value>;

fn with_datastore<T>(
    ctx: &Json,
    extra: &Extras,
    kv: &dyn KeyValueLookup,
    render: impl Fn(&Value) -> Result<T, Error>,
) -> Result<T, Error> {
    let reads = Arc::new(KvReads::default());
    let root = root_context(ctx, extra, &reads);
    loop {
        let result = render(&root);
        let wanted = reads.take_wanted();
        if wanted.is_empty() {
            return result;
        }
        reads.learn(wanted, kv);
    }
}

fn root_context(ctx: &Json, extra: &Extras, reads: &Arc<KvReads>) -> Value {
    let mut vars: BTreeMap<String, Value> = match ctx {
        Json::Object(map) => map
            .iter()
            .map(|(k, v)| (k.clone(), Value::from_serialize(v)))
            .collect(),
        _ => BTreeMap::new(),
    };
    let action_context = ctx.get("action_context");
    let user = ["api_user", "user"]
        .iter()
        .find_map(|k| action_context?.get(k)?.as_str())
        .map(str::to_string);
    vars.insert(
        "st2kv".to_string(),
        Value::from_object(St2Kv {
            reads: Arc::clone(reads),
            user,
        }),
    );
    vars.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    Value::from(vars)
}

type KvKey = (KvScope, String);

/// What one render learnt from the datastore, and what it asked for that
/// is not known yet.
#[derive(Debug, Default)]
struct KvReads {
    state: Mutex<KvReadsState>,
}

#[derive(Debug, Default)]
struct KvReadsState {
    known: HashMap<KvKey, Option<String>>,
    wanted: BTreeSet<KvKey>,
}

impl KvReads {
    /// `Some(value)` when the key has been looked up (`value` is `None` for a
    /// missing key); `None` when it has not, recording it as wanted.
    fn read(&self, key: KvKey) -> Option<Option<String>> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match state.known.get(&key) {
            Some(value) => Some(value.clone()),
            None => {
                state.wanted.insert(key);
                None
            }
        }
    }

    fn take_wanted(&self) -> BTreeSet<KvKey> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::take(&mut state.wanted)
    }

    fn learn(&self, keys: BTreeSet<KvKey>, kv: &dyn KeyValueLookup) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        for (scope, name) in keys {
            let value = kv.get(scope.clone(), &name);
            state.known.insert((scope, name), value);
        }
    }
}

/// `st2kv`: `.system` and `.user` scopes.
#[derive(Debug)]
struct St2Kv {
    reads: Arc<KvReads>,
    user: Option<String>,
}

impl Object for St2Kv {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let scope = match key.as_str()? {
            "system" => KvScope::System,
            "user" => KvScope::User(self.user.clone()?),
            _ => return None,
        };
        Some(Value::from_object(KvNode {
            reads: Arc::clone(&self.reads),
            scope,
            key: None,
        }))
    }
}

/// A datastore scope, or a key in it that has no value. Like StackStorm's
/// `KeyValueLookup`, attribute access extends the key with a dot
/// (`st2kv.system.a.b` reads key `a.b`), and a missing key renders as an
/// empty string. A key that exists reads as its string value.
#[derive(Debug)]
struct KvNode {
    reads: Arc<KvReads>,
    scope: KvScope,
    /// `None` for the scope itself.
    key: Option<String>,
}

impl Object for KvNode {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn get_value(self: &Arc<Self>, name: &Value) -> Option<Value> {
        let name = name.as_str()?;
        let key = match &self.key {
            Some(prefix) => format!("{prefix}.{name}"),
            None => name.to_string(),
        };
        match self.reads.read((self.scope.clone(), key.clone())) {
            Some(Some(value)) => Some(Value::from(value)),
            Some(None) | None => Some(Value::from_object(KvNode {
                reads: Arc::clone(&self.reads),
                scope: self.scope.clone(),
                key: Some(key),
            })),
        }
    }

    fn render(self: &Arc<Self>, _f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Values: Python-style text and conversion to JSON
// ---------------------------------------------------------------------------

/// [`python_str`] of a JSON value: how Orquesta's YAQL writes a value
/// into the text around its expression.
pub(crate) fn python_text(value: &serde_json::Value) -> String {
    python_str(&Value::from_serialize(value))
}

/// `str(value)` as Python writes it: strings as themselves, `None`,
/// `True`/`False`, Python float repr, lists and dicts as Python literals.
fn python_str(value: &Value) -> String {
    match value.kind() {
        ValueKind::Undefined => String::new(),
        ValueKind::String => value.as_str().unwrap_or_default().to_string(),
        _ => {
            let mut out = String::new();
            write_python_repr(&mut out, value);
            out
        }
    }
}

fn write_python_repr(out: &mut String, value: &Value) {
    match value.kind() {
        ValueKind::Undefined => {}
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number => match f64::try_from(value.clone()) {
            Ok(f) if !value.is_integer() => out.push_str(&python_float(f)),
            _ => write!(out, "{value}").unwrap_or_default(),
        },
        ValueKind::String => python_quote(out, value.as_str().unwrap_or_default()),
        ValueKind::Bytes => python_quote(
            out,
            &String::from_utf8_lossy(value.as_bytes().unwrap_or_default()),
        ),
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            for (i, item) in value.try_iter().into_iter().flatten().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_python_repr(out, &item);
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            for (i, key) in value.try_iter().into_iter().flatten().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_python_repr(out, &key);
                out.push_str(": ");
                write_python_repr(out, &value.get_item(&key).unwrap_or_default());
            }
            out.push('}');
        }
        _ => write!(out, "{value}").unwrap_or_default(),
    }
}

/// Python's `repr()` of a string.
fn python_quote(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() && (c as u32) < 0x100 => {
                write!(out, "\\x{:02x}", c as u32).unwrap_or_default()
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// Python's `repr()` of a float: `1.0`, `0.1`, `1e+16`, `1.5e-05`.
pub(crate) fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "nan".to_string();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.to_string();
    }
    let abs = f.abs();
    if abs != 0.0 && !(1e-4..1e16).contains(&abs) {
        let s = format!("{f:e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let (sign, digits) = exp.strip_prefix('-').map_or(("+", exp), |d| ("-", d));
        format!("{mantissa}e{sign}{digits:0>2}")
    } else {
        let s = f.to_string();
        if s.contains('.') {
            s
        } else {
            format!("{s}.0")
        }
    }
}

/// Converts a rendered value to JSON. A missing datastore key becomes `""`
/// (StackStorm's `str()` of it); an undefined value is an error.
fn to_json(value: &Value) -> Result<Json, Error> {
    Ok(match value.kind() {
        ValueKind::Undefined => return Err(Error::from(ErrorKind::UndefinedError)),
        ValueKind::None => Json::Null,
        ValueKind::Bool => Json::Bool(value.is_true()),
        ValueKind::Number => number_to_json(value)?,
        ValueKind::String => Json::String(value.as_str().unwrap_or_default().to_string()),
        ValueKind::Bytes => {
            Json::String(String::from_utf8_lossy(value.as_bytes().unwrap_or_default()).into_owned())
        }
        ValueKind::Seq | ValueKind::Iterable => Json::Array(
            value
                .try_iter()?
                .map(|item| to_json(&item))
                .collect::<Result<_, _>>()?,
        ),
        ValueKind::Map => {
            let mut map = serde_json::Map::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                map.insert(python_str(&key), to_json(&item)?);
            }
            Json::Object(map)
        }
        ValueKind::Invalid => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("invalid value: {value}"),
            ))
        }
        _ => Json::String(value.to_string()),
    })
}

/// An integer stays an integer and a float a float (`5.0` is not `5`).
fn number_to_json(value: &Value) -> Result<Json, Error> {
    if value.is_integer() {
        if let Ok(i) = i64::try_from(value.clone()) {
            return Ok(Json::from(i));
        }
        if let Ok(u) = u64::try_from(value.clone()) {
            return Ok(Json::from(u));
        }
    }
    f64::try_from(value.clone())
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map(Json::Number)
        .ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidOperation,
                format!("{value} is not a JSON number"),
            )
        })
}

// ---------------------------------------------------------------------------
// Python `re` on fancy-regex
// ---------------------------------------------------------------------------

/// Flags of a Python regular expression.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RegexFlags {
    /// `re.match`: the match must start at the beginning of the text.
    pub anchored: bool,
    /// `re.IGNORECASE`.
    pub ignore_case: bool,
    /// `re.DOTALL`: `.` also matches a newline.
    pub dot_all: bool,
}

/// Compiles a Python `re` pattern. fancy-regex supports what Python
/// patterns use beyond the `regex` crate: look-around and backreferences.
pub(crate) fn python_regex(
    pattern: &str,
    flags: RegexFlags,
) -> Result<fancy_regex::Regex, fancy_regex::Error> {
    let mut full = String::new();
    if flags.ignore_case {
        full.push_str("(?i)");
    }
    if flags.dot_all {
        full.push_str("(?s)");
    }
    if flags.anchored {
        write!(full, r"\A(?:{pattern})").unwrap_or_default();
    } else {
        full.push_str(pattern);
    }
    fancy_regex::Regex::new(&full)
}

// ---------------------------------------------------------------------------
// Filters
// ---------------------------------------------------------------------------

mod filters {
    use super::*;

    pub(super) fn register(env: &mut Environment<'static>) {
        env.add_filter("decrypt_kv", decrypt_kv);
        env.add_filter("from_json_string", from_json_string);
        env.add_filter("from_yaml_string", from_yaml_string);
        env.add_filter("to_json_string", to_json_string);
        env.add_filter("to_yaml_string", to_yaml_string);
        env.add_filter("json_escape", json_escape);
        env.add_filter("jsonpath_query", jsonpath_query);
        env.add_filter("to_complex", to_complex);
        env.add_filter("use_none", use_none);
        env.add_filter("regex_match", regex_match);
        env.add_filter("regex_replace", regex_replace);
        env.add_filter("regex_search", regex_search);
        env.add_filter("regex_substring", regex_substring);
        env.add_filter("to_human_time_from_seconds", to_human_time_from_seconds);
        env.add_filter("version_compare", version_compare);
        env.add_filter("version_more_than", version_more_than);
        env.add_filter("version_less_than", version_less_than);
        env.add_filter("version_equal", version_equal);
        env.add_filter("version_match", version_match);
        env.add_filter("version_bump_major", version_bump_major);
        env.add_filter("version_bump_minor", version_bump_minor);
        env.add_filter("version_bump_patch", version_bump_patch);
        env.add_filter("version_strip_patch", version_strip_patch);
        env.add_filter("basename", basename);
        env.add_filter("dirname", dirname);
        // Python's `str()`, so `{{ x | string }}` prints as `{{ x }}` does.
        env.add_filter("string", |v: Value| python_str(&v));
    }

    fn invalid(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::InvalidOperation, message.into())
    }

    /// An optional argument given by position or by keyword.
    fn arg<'a, T>(
        positional: Option<T>,
        kwargs: &'a Kwargs,
        name: &'a str,
    ) -> Result<Option<T>, Error>
    where
        T: minijinja::value::ArgType<'a, Output = T>,
    {
        match positional {
            Some(v) => Ok(Some(v)),
            None => kwargs.get::<Option<T>>(name),
        }
    }

    /// Without a cipher (see [`Renderer::with_cipher`]) there is nothing to
    /// open: passes a value through and reports a key that does not exist,
    /// as StackStorm does.
    fn decrypt_kv(value: Value) -> Result<Value, Error> {
        missing_kv(&value)?;
        Ok(value)
    }

    /// StackStorm's error for `decrypt_kv` on a key that does not exist.
    pub(super) fn missing_kv(value: &Value) -> Result<(), Error> {
        match value.downcast_object_ref::<KvNode>() {
            Some(node) => Err(invalid(format!(
                "Referenced datastore item \"{}\" doesn't exist or it contains an empty string",
                node.key.as_deref().unwrap_or_default()
            ))),
            None => Ok(()),
        }
    }

    fn from_json_string(value: Value) -> Result<Value, Error> {
        let json: Json = serde_json::from_str(&python_str(&value))
            .map_err(|e| invalid(format!("from_json_string: {e}")))?;
        Ok(Value::from_serialize(&json))
    }

    fn from_yaml_string(value: Value) -> Result<Value, Error> {
        let json: Json = serde_yaml::from_str(&python_str(&value))
            .map_err(|e| invalid(format!("from_yaml_string: {e}")))?;
        Ok(Value::from_serialize(&json))
    }

    /// `json.dumps(value, indent=indent, sort_keys=sort_keys,
    /// separators=(",", ": "))`, StackStorm's defaults.
    fn to_json_string(
        value: Value,
        indent: Option<u8>,
        sort_keys: Option<bool>,
        kwargs: Kwargs,
    ) -> Result<String, Error> {
        let style = JsonStyle {
            indent: arg(indent, &kwargs, "indent")?,
            sort_keys: arg(sort_keys, &kwargs, "sort_keys")?.unwrap_or(false),
            item_separator: ",",
        };
        kwargs.assert_all_used()?;
        Ok(style.dumps(&to_json(&value)?))
    }

    /// `yaml.safe_dump(value, default_flow_style=False)`. The block style
    /// and indentation are serde_yaml's; `indent` and `allow_unicode` are
    /// accepted for compatibility and don't change the output.
    fn to_yaml_string(
        value: Value,
        _indent: Option<Value>,
        _allow_unicode: Option<Value>,
        kwargs: Kwargs,
    ) -> Result<String, Error> {
        for name in ["indent", "allow_unicode"] {
            kwargs.get::<Option<Value>>(name)?;
        }
        kwargs.assert_all_used()?;
        serde_yaml::to_string(&to_json(&value)?)
            .map_err(|e| invalid(format!("to_yaml_string: {e}")))
    }

    /// `json.dumps(value)` without the surrounding quotes: escapes a string
    /// for embedding in JSON.
    fn json_escape(value: Value) -> Result<String, Error> {
        let dumped = JsonStyle::PYTHON_DEFAULT.dumps(&to_json(&value)?);
        Ok(dumped.trim_matches('"').to_string())
    }

    /// The list of values `query` selects in `value`, or `None` when it
    /// selects nothing.
    fn jsonpath_query(value: Value, query: &str) -> Result<Value, Error> {
        let path = JsonPath::parse(query).map_err(|e| invalid(e.to_string()))?;
        let json = to_json(&value)?;
        let found = path.find(&json);
        Ok(if found.is_empty() {
            Value::from(())
        } else {
            Value::from_serialize(&found)
        })
    }

    /// `json.dumps(value)`.
    fn to_complex(value: Value) -> Result<String, Error> {
        Ok(JsonStyle::PYTHON_DEFAULT.dumps(&to_json(&value)?))
    }

    fn use_none(value: Value) -> Value {
        if value.is_none() {
            Value::from(NONE_MAGIC_VALUE)
        } else {
            value
        }
    }

    fn compile(pattern: &str, flags: RegexFlags) -> Result<fancy_regex::Regex, Error> {
        python_regex(pattern, flags).map_err(|e| invalid(format!("invalid regex {pattern:?}: {e}")))
    }

    fn regex_failed(e: fancy_regex::Error) -> Error {
        invalid(format!("regex: {e}"))
    }

    /// `bool(re.match(pattern, value))`.
    fn regex_match(
        value: Value,
        pattern: &str,
        ignorecase: Option<bool>,
        kwargs: Kwargs,
    ) -> Result<bool, Error> {
        let flags = RegexFlags {
            anchored: true,
            ignore_case: arg(ignorecase, &kwargs, "ignorecase")?.unwrap_or(false),
            dot_all: false,
        };
        kwargs.assert_all_used()?;
        compile(pattern, flags)?
            .is_match(&python_str(&value))
            .map_err(regex_failed)
    }

    /// `bool(re.search(pattern, value))`.
    fn regex_search(
        value: Value,
        pattern: &str,
        ignorecase: Option<bool>,
        kwargs: Kwargs,
    ) -> Result<bool, Error> {
        let flags = RegexFlags {
            ignore_case: arg(ignorecase, &kwargs, "ignorecase")?.unwrap_or(false),
            ..RegexFlags::default()
        };
        kwargs.assert_all_used()?;
        compile(pattern, flags)?
            .is_match(&python_str(&value))
            .map_err(regex_failed)
    }

    /// `re.sub(pattern, replacement, value)`, with Python's replacement
    /// syntax (`\1`, `\g<name>`).
    fn regex_replace(
        value: Value,
        pattern: &str,
        replacement: &str,
        ignorecase: Option<bool>,
        kwargs: Kwargs,
    ) -> Result<String, Error> {
        let flags = RegexFlags {
            ignore_case: arg(ignorecase, &kwargs, "ignorecase")?.unwrap_or(false),
            ..RegexFlags::default()
        };
        kwargs.assert_all_used()?;
        let regex = compile(pattern, flags)?;
        let pieces = parse_replacement(replacement, &regex)?;
        let text = python_str(&value);
        let mut out = String::new();
        let mut last = 0;
        for caps in regex.captures_iter(&text) {
            let caps = caps.map_err(regex_failed)?;
            let Some(whole) = caps.get(0) else { continue };
            out.push_str(&text[last..whole.start()]);
            for piece in &pieces {
                match piece {
                    Piece::Literal(s) => out.push_str(s),
                    Piece::Group(i) => out.push_str(caps.get(*i).map_or("", |m| m.as_str())),
                }
            }
            last = whole.end();
        }
        out.push_str(&text[last..]);
        Ok(out)
    }

    #[derive(Debug)]
    enum Piece {
        Literal(String),
        /// A capture group by index; one that did not take part in the
        /// match inserts nothing.
        Group(usize),
    }

    /// Parses a Python `re.sub` replacement for `regex`: `\1`..`\99`,
    /// `\g<1>`, `\g<name>`, and the escapes `\n \t \r \f \v \a \\`; any
    /// other backslash stays as written. Like Python, a reference to a group
    /// the pattern doesn't have is an error even when nothing matches.
    fn parse_replacement(
        replacement: &str,
        regex: &fancy_regex::Regex,
    ) -> Result<Vec<Piece>, Error> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut chars = replacement.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '\\' {
                literal.push(c);
                continue;
            }
            let group = match chars.next() {
                Some(d) if d.is_ascii_digit() => {
                    let mut digits = d.to_string();
                    if let Some(&d2) = chars.peek().filter(|c| c.is_ascii_digit()) {
                        digits.push(d2);
                        chars.next();
                    }
                    digits
                }
                Some('g') => {
                    if chars.next() != Some('<') {
                        return Err(invalid("regex_replace: missing < after \\g"));
                    }
                    chars.by_ref().take_while(|&c| c != '>').collect()
                }
                Some(e) => {
                    match e {
                        'n' => literal.push('\n'),
                        't' => literal.push('\t'),
                        'r' => literal.push('\r'),
                        'f' => literal.push('\x0c'),
                        'v' => literal.push('\x0b'),
                        'a' => literal.push('\x07'),
                        '\\' => literal.push('\\'),
                        other => {
                            literal.push('\\');
                            literal.push(other);
                        }
                    }
                    continue;
                }
                None => {
                    literal.push('\\');
                    continue;
                }
            };
            let index = match group.parse::<usize>() {
                Ok(i) => Some(i).filter(|i| *i < regex.captures_len()),
                Err(_) => regex
                    .capture_names()
                    .position(|n| n == Some(group.as_str())),
            }
            .ok_or_else(|| invalid(format!("regex_replace: invalid group reference {group}")))?;
            if !literal.is_empty() {
                pieces.push(Piece::Literal(std::mem::take(&mut literal)));
            }
            pieces.push(Piece::Group(index));
        }
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        Ok(pieces)
    }

    /// `re.findall(pattern, value)[result_index]`: the whole match without
    /// groups, the group with one, the list of groups with several.
    fn regex_substring(
        value: Value,
        pattern: &str,
        result_index: Option<i64>,
        ignorecase: Option<bool>,
        kwargs: Kwargs,
    ) -> Result<Value, Error> {
        let index = arg(result_index, &kwargs, "result_index")?.unwrap_or(0);
        let flags = RegexFlags {
            ignore_case: arg(ignorecase, &kwargs, "ignorecase")?.unwrap_or(false),
            ..RegexFlags::default()
        };
        kwargs.assert_all_used()?;
        let regex = compile(pattern, flags)?;
        let text = python_str(&value);
        let groups = regex.captures_len() - 1;
        let mut found = Vec::new();
        for caps in regex.captures_iter(&text) {
            let caps = caps.map_err(regex_failed)?;
            let group = |i| Value::from(caps.get(i).map_or("", |m| m.as_str()));
            found.push(match groups {
                0 => group(0),
                1 => group(1),
                n => Value::from((1..=n).map(group).collect::<Vec<_>>()),
            });
        }
        python_index(&found, index)
            .cloned()
            .ok_or_else(|| invalid(format!("regex_substring: no match at index {index}")))
    }

    /// `10` → `10s`, `3725` → `1h2m5s`, `0.5` → `0.5μs`. StackStorm reads
    /// the day of the month here, which drops whole months past 31 days;
    /// this counts the days of the year instead.
    fn to_human_time_from_seconds(seconds: Value) -> Result<String, Error> {
        if !seconds.is_number() {
            return Err(invalid(format!(
                "to_human_time_from_seconds expects a number, got {}",
                python_str(&seconds)
            )));
        }
        let as_float = f64::try_from(seconds.clone())?;
        if as_float == 0.0 {
            return Ok("0s".to_string());
        }
        if as_float < 1.0 {
            return Ok(format!("{}\u{3bc}s", python_str(&seconds)));
        }
        let total = if seconds.is_integer() {
            i64::try_from(seconds)?
        } else {
            // Python's round(): half to even; far beyond any duration anyway.
            as_float.round_ties_even() as i64
        };
        let parts = [
            total / (365 * 86400),
            total % (365 * 86400) / 86400,
            total % 86400 / 3600,
            total % 3600 / 60,
            total % 60,
        ];
        let labels = ["y", "d", "h", "m", "s"];
        let first = parts.iter().position(|&p| p != 0).unwrap_or(4);
        Ok(parts[first..]
            .iter()
            .zip(&labels[first..])
            .map(|(p, l)| format!("{p}{l}"))
            .collect())
    }

    fn version(value: &str) -> Result<semver::Version, Error> {
        semver::Version::parse(value)
            .map_err(|e| invalid(format!("{value:?} is not a valid semantic version: {e}")))
    }

    /// `-1`, `0` or `1`, ignoring build metadata like Python's semver.
    fn version_compare(value: &str, other: &str) -> Result<i64, Error> {
        Ok(match version(value)?.cmp_precedence(&version(other)?) {
            std::cmp::Ordering::Less => -1,
            std::cmp::Ordering::Equal => 0,
            std::cmp::Ordering::Greater => 1,
        })
    }

    fn version_more_than(value: &str, other: &str) -> Result<bool, Error> {
        Ok(version_compare(value, other)? == 1)
    }

    fn version_less_than(value: &str, other: &str) -> Result<bool, Error> {
        Ok(version_compare(value, other)? == -1)
    }

    fn version_equal(value: &str, other: &str) -> Result<bool, Error> {
        Ok(version_compare(value, other)? == 0)
    }

    /// Python semver's `match`: `>=1.2.3`, `<=`, `==`, `!=`, `>`, `<`, or a
    /// bare version meaning `==`.
    fn version_match(value: &str, expr: &str) -> Result<bool, Error> {
        let (op, other) = ["==", "!=", ">=", "<=", ">", "<"]
            .iter()
            .find_map(|op| expr.strip_prefix(op).map(|rest| (*op, rest)))
            .or_else(|| {
                expr.starts_with(|c: char| c.is_ascii_digit())
                    .then_some(("==", expr))
            })
            .ok_or_else(|| invalid(format!("version_match: invalid match expression {expr:?}")))?;
        let cmp = version_compare(value, other.trim())?;
        Ok(match op {
            "==" => cmp == 0,
            "!=" => cmp != 0,
            ">=" => cmp >= 0,
            "<=" => cmp <= 0,
            ">" => cmp > 0,
            _ => cmp < 0,
        })
    }

    fn bump(n: u64) -> Result<u64, Error> {
        n.checked_add(1)
            .ok_or_else(|| invalid("version number too large to bump"))
    }

    fn version_bump_major(value: &str) -> Result<String, Error> {
        let v = version(value)?;
        Ok(semver::Version::new(bump(v.major)?, 0, 0).to_string())
    }

    fn version_bump_minor(value: &str) -> Result<String, Error> {
        let v = version(value)?;
        Ok(semver::Version::new(v.major, bump(v.minor)?, 0).to_string())
    }

    fn version_bump_patch(value: &str) -> Result<String, Error> {
        let v = version(value)?;
        Ok(semver::Version::new(v.major, v.minor, bump(v.patch)?).to_string())
    }

    fn version_strip_patch(value: &str) -> Result<String, Error> {
        let v = version(value)?;
        Ok(format!("{}.{}", v.major, v.minor))
    }

    /// Python's `os.path.basename`: everything after the last `/`.
    fn basename(path: &str) -> String {
        path.rsplit_once('/')
            .map_or(path, |(_, tail)| tail)
            .to_string()
    }

    /// Python's `os.path.dirname`: everything before the last `/`, without
    /// trailing slashes unless it is all slashes.
    fn dirname(path: &str) -> String {
        let Some((head, _)) = path.rsplit_once('/') else {
            return String::new();
        };
        let trimmed = head.trim_end_matches('/');
        if trimmed.is_empty() {
            format!("{head}/")
        } else {
            trimmed.to_string()
        }
    }
}

/// Python list indexing: negative counts from the end.
fn python_index<T>(items: &[T], index: i64) -> Option<&T> {
    let len = i64::try_from(items.len()).ok()?;
    let i = if index < 0 { len + index } else { index };
    usize::try_from(i).ok().and_then(|i| items.get(i))
}

/// Python's `json.dumps` output.
struct JsonStyle {
    indent: Option<u8>,
    sort_keys: bool,
    item_separator: &'static str,
}

impl JsonStyle {
    /// `json.dumps(value)` with no options.
    const PYTHON_DEFAULT: JsonStyle = JsonStyle {
        indent: None,
        sort_keys: false,
        item_separator: ", ",
    };

    fn dumps(&self, value: &Json) -> String {
        let mut out = String::new();
        self.write(&mut out, value, 0);
        out
    }

    fn write(&self, out: &mut String, value: &Json, depth: usize) {
        match value {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Number(n) => match n.as_f64() {
                Some(f) if n.is_f64() => out.push_str(&python_float(f)),
                _ => write!(out, "{n}").unwrap_or_default(),
            },
            Json::String(s) => json_quote_ascii(out, s),
            Json::Array(items) => {
                self.write_items(out, '[', ']', depth, items.iter(), |out, item| {
                    self.write(out, item, depth + 1)
                })
            }
            Json::Object(map) => {
                let mut entries: Vec<_> = map.iter().collect();
                if self.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(b.0));
                }
                self.write_items(out, '{', '}', depth, entries.into_iter(), |out, (k, v)| {
                    json_quote_ascii(out, k);
                    out.push_str(": ");
                    self.write(out, v, depth + 1);
                })
            }
        }
    }

    fn write_items<T>(
        &self,
        out: &mut String,
        open: char,
        close: char,
        depth: usize,
        items: impl ExactSizeIterator<Item = T>,
        mut write_item: impl FnMut(&mut String, T),
    ) {
        out.push(open);
        if items.len() == 0 {
            out.push(close);
            return;
        }
        let newline = |out: &mut String, depth: usize| {
            if let Some(indent) = self.indent {
                out.push('\n');
                out.push_str(&" ".repeat(usize::from(indent) * depth));
            }
        };
        for (i, item) in items.enumerate() {
            if i > 0 {
                out.push_str(if self.indent.is_some() {
                    self.item_separator.trim_end()
                } else {
                    self.item_separator
                });
            }
            newline(out, depth + 1);
            write_item(out, item);
        }
        newline(out, depth);
        out.push(close);
    }
}

/// A JSON string with every non-ASCII character escaped (`ensure_ascii`).
fn json_quote_ascii(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            c if c.is_ascii() && !c.is_ascii_control() => out.push(c),
            c => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(out, "\\u{unit:04x}").unwrap_or_default();
                }
            }
        }
    }
    out.push('"');
}

// ---------------------------------------------------------------------------
// JSON paths
// ---------------------------------------------------------------------------

/// A path that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid path {path:?}: {reason}")]
pub struct PathError {
    pub path: String,
    pub reason: String,
}

/// A jsonpath-rw style path, the subset StackStorm content uses: an
/// optional `$`, dotted fields (`body.name`, hyphens allowed as in
/// `headers.X-GitHub-Event`), quoted fields (`'weird key'`, `["a.b"]`),
/// indexes (`[0]`, `[-1]`), wildcards (`*`, `[*]`) and descendants
/// (`..name`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath {
    steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Step {
    /// `..`: apply the selector to every node below as well.
    descend: bool,
    selector: Selector,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Selector {
    Field(String),
    Index(i64),
    /// Every value of an object or item of a list.
    Wildcard,
}

impl JsonPath {
    pub fn parse(path: &str) -> Result<Self, PathError> {
        let fail = |reason: &str| PathError {
            path: path.to_string(),
            reason: reason.to_string(),
        };
        let mut rest = path.trim();
        rest = rest.strip_prefix('$').unwrap_or(rest);
        let mut steps = Vec::new();
        let mut first = true;
        while !rest.is_empty() {
            let descend = rest.starts_with("..");
            if descend {
                rest = &rest[2..];
            } else if let Some(r) = rest.strip_prefix('.') {
                rest = r;
            } else if !first && !rest.starts_with('[') {
                return Err(fail("expected `.` or `[`"));
            }
            first = false;
            let (selector, r) = if let Some(r) = rest.strip_prefix('[') {
                let (inner, r) = r.split_once(']').ok_or_else(|| fail("unclosed `[`"))?;
                (
                    parse_bracket(inner.trim()).ok_or_else(|| fail("bad `[...]`"))?,
                    r,
                )
            } else {
                parse_dotted(rest).ok_or_else(|| fail("expected a field name"))?
            };
            steps.push(Step { descend, selector });
            rest = r;
        }
        Ok(Self { steps })
    }

    /// Every value the path selects in `root`, in document order.
    pub fn find<'a>(&self, root: &'a Json) -> Vec<&'a Json> {
        walk(&self.steps, vec![root])
    }

    /// What [`JsonPath::find`] selects in the object `{name: value}`,
    /// without building it; `None` for the path that selects that object
    /// itself (no step).
    pub fn find_in<'a>(&self, name: &str, value: &'a Json) -> Option<Vec<&'a Json>> {
        let (first, rest) = self.steps.split_first()?;
        let mut current = Vec::new();
        let selects_value = match &first.selector {
            Selector::Field(field) => field == name,
            Selector::Wildcard => true,
            Selector::Index(_) => false,
        };
        if selects_value {
            current.push(value);
        }
        if first.descend {
            let mut below = Vec::new();
            descendants_or_self(value, &mut below);
            for node in below {
                first.selector.apply(node, &mut current);
            }
        }
        Some(walk(rest, current))
    }
}

/// Applies `steps` to every node of `current`, in order.
fn walk<'a>(steps: &[Step], mut current: Vec<&'a Json>) -> Vec<&'a Json> {
    for step in steps {
        let mut next = Vec::new();
        for node in current {
            if step.descend {
                let mut below = Vec::new();
                descendants_or_self(node, &mut below);
                for n in below {
                    step.selector.apply(n, &mut next);
                }
            } else {
                step.selector.apply(node, &mut next);
            }
        }
        current = next;
    }
    current
}

impl Selector {
    fn apply<'a>(&self, node: &'a Json, out: &mut Vec<&'a Json>) {
        match (self, node) {
            (Selector::Field(name), Json::Object(map)) => out.extend(map.get(name)),
            (Selector::Index(i), Json::Array(items)) => out.extend(python_index(items, *i)),
            (Selector::Wildcard, Json::Object(map)) => out.extend(map.values()),
            (Selector::Wildcard, Json::Array(items)) => out.extend(items),
            _ => {}
        }
    }
}

fn descendants_or_self<'a>(node: &'a Json, out: &mut Vec<&'a Json>) {
    out.push(node);
    match node {
        Json::Object(map) => map.values().for_each(|v| descendants_or_self(v, out)),
        Json::Array(items) => items.iter().for_each(|v| descendants_or_self(v, out)),
        _ => {}
    }
}

/// A quoted string at the start of `s` and what follows it.
fn parse_quoted(s: &str) -> Option<(String, &str)> {
    let quote = s.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let end = s[1..].find(quote)? + 1;
    Some((s[1..end].to_string(), &s[end + 1..]))
}

fn parse_dotted(s: &str) -> Option<(Selector, &str)> {
    if let Some(r) = s.strip_prefix('*') {
        return Some((Selector::Wildcard, r));
    }
    if let Some((name, r)) = parse_quoted(s) {
        return Some((Selector::Field(name), r));
    }
    let end = s
        .find(|c: char| matches!(c, '.' | '[' | ']' | '\'' | '"') || c.is_whitespace())
        .unwrap_or(s.len());
    (end > 0).then(|| (Selector::Field(s[..end].to_string()), &s[end..]))
}

fn parse_bracket(inner: &str) -> Option<Selector> {
    if inner == "*" {
        return Some(Selector::Wildcard);
    }
    if let Some((name, rest)) = parse_quoted(inner) {
        return rest.is_empty().then_some(Selector::Field(name));
    }
    inner.parse().ok().map(Selector::Index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A datastore held in memory.
    #[derive(Default)]
    struct MapKv(BTreeMap<KvKey, String>);

    impl MapKv {
        fn with(mut self, scope: KvScope, name: &str, value: &str) -> Self {
            self.0.insert((scope, name.to_string()), value.to_string());
            self
        }
    }

    impl KeyValueLookup for MapKv {
        fn get(&self, scope: KvScope, name: &str) -> Option<String> {
            self.0.get(&(scope, name.to_string())).cloned()
        }
    }

    fn render(template: &str, ctx: Json) -> String {
        Renderer::new()
            .render_str(template, &ctx, &NoKeyValues)
            .unwrap_or_else(|e| panic!("{template}: {e}"))
    }

    fn value(template: &str, ctx: Json) -> Json {
        Renderer::new()
            .render_value(&json!(template), &ctx, &NoKeyValues)
            .unwrap_or_else(|e| panic!("{template}: {e}"))
    }

    #[test]
    fn renders_trigger_fields() {
        let ctx = json!({"trigger": {"body": {"name": "st2"}}});
        assert_eq!(render("hello {{ trigger.body.name }}", ctx), "hello st2");
    }

    #[test]
    fn strict_undefined_names_the_expression() {
        let err = Renderer::new()
            .render_str(
                "a\n{{ trigger.body.nmae }}",
                &json!({"trigger": {"body": {}}}),
                &NoKeyValues,
            )
            .unwrap_err();
        assert!(err.message.contains("undefined"), "{err}");
        assert!(err.message.contains("trigger.body.nmae"), "{err}");
        assert_eq!(err.line, Some(2));
        assert_eq!(err.template, "a\n{{ trigger.body.nmae }}");
        let err = Renderer::new()
            .render_value(&json!("{{ nope }}"), &json!({}), &NoKeyValues)
            .unwrap_err();
        assert!(err.message.contains("`nope`"), "{err}");
    }

    #[test]
    fn syntax_errors_are_reported() {
        let r = Renderer::new();
        assert!(r.check_syntax("{{ a }}").is_ok());
        let err = r.check_syntax("{% if a %}").unwrap_err();
        assert!(err.message.contains("syntax"), "{err}");
        assert!(r.render_str("{{ a ", &json!({}), &NoKeyValues).is_err());
    }

    #[test]
    fn trims_and_strips_blocks() {
        let t = "x\n    {% if true %}\n  y\n    {% endif %}\nz";
        assert_eq!(render(t, json!({})), "x\n  y\nz");
    }

    #[test]
    fn prints_values_like_python() {
        let ctx = json!({"t": true, "f": false, "n": null, "i": 3, "x": 1.0, "l": ["a", 1],
                         "d": {"k": "it's"}});
        assert_eq!(
            render("{{t}} {{f}} {{n}} {{i}} {{x}} {{l}} {{d}}", ctx.clone()),
            "True False None 3 1.0 ['a', 1] {'k': \"it's\"}"
        );
        assert_eq!(render("{{ t | string }}", ctx), "True");
        assert_eq!(python_float(1e20), "1e+20");
        assert_eq!(python_float(1.5e-7), "1.5e-07");
        assert_eq!(python_float(0.1), "0.1");
        assert_eq!(python_float(-0.0), "-0.0");
    }

    #[test]
    fn native_types_for_single_expressions() {
        let ctx = json!({"trigger": {"n": 5, "b": true, "l": [1, 2], "d": {"a": 1}, "s": "x"}});
        assert_eq!(value("{{ trigger.n }}", ctx.clone()), json!(5));
        assert_eq!(value("{{trigger.b}}", ctx.clone()), json!(true));
        assert_eq!(value("{{ trigger.l }}", ctx.clone()), json!([1, 2]));
        assert_eq!(value("{{- trigger.d -}}", ctx.clone()), json!({"a": 1}));
        assert_eq!(value("{{ trigger.n + 1 }}", ctx.clone()), json!(6));
        assert_eq!(value("{{ trigger.s }}", ctx.clone()), json!("x"));
        assert_eq!(value("{{ none }}", ctx.clone()), json!(null));
        assert!(value("{{ 5.0 }}", ctx.clone()).is_f64());
        assert_eq!(value("{{ 2 ** 70 }}", ctx.clone()), json!(2f64.powi(70)));
        // Anything else renders to text; a list in text stays text.
        assert_eq!(value("n={{ trigger.n }}", ctx.clone()), json!("n=5"));
        assert_eq!(value(" {{ trigger.n }}", ctx.clone()), json!(" 5"));
        assert_eq!(
            value("{{ trigger.n }}{{ trigger.n }}", ctx.clone()),
            json!("55")
        );
        assert_eq!(value("{{ trigger.l }} ", ctx.clone()), json!("[1, 2] "));
        assert_eq!(value("plain", ctx.clone()), json!("plain"));
    }

    #[test]
    fn renders_nested_values_and_keys() {
        let r = Renderer::new();
        let ctx = json!({"a": 1, "k": "key"});
        let v = json!({"x": ["{{ a }}", "a={{ a }}", 2, null], "{{ k }}": {"y": "{{ a > 0 }}"}});
        assert_eq!(
            r.render_value(&v, &ctx, &NoKeyValues).unwrap(),
            json!({"x": [1, "a=1", 2, null], "key": {"y": true}})
        );
    }

    #[test]
    fn datastore_values_are_read_lazily() {
        let kv = MapKv::default()
            .with(KvScope::System, "greeting", "hi")
            .with(KvScope::System, "a.b", "nested")
            .with(KvScope::System, "which", "greeting")
            .with(KvScope::User("alice".into()), "token", "s3cr3t");
        let r = Renderer::new();
        let ctx = json!({"action_context": {"user": "alice"}});
        let out = r
            .render_str(
                "{{ st2kv.system.greeting }} {{ st2kv.system.a.b }} [{{ st2kv.system.missing }}] \
                 {{ st2kv.user.token | decrypt_kv }} {{ st2kv.system[st2kv.system.which] }}",
                &ctx,
                &kv,
            )
            .unwrap();
        assert_eq!(out, "hi nested [] s3cr3t hi");
        assert_eq!(
            r.render_value(&json!("{{ st2kv.system.missing }}"), &ctx, &kv)
                .unwrap(),
            json!("")
        );
        // api_user wins over user.
        let ctx = json!({"action_context": {"user": "bob", "api_user": "alice"}});
        assert_eq!(
            r.render_str("{{ st2kv.user.token }}", &ctx, &kv).unwrap(),
            "s3cr3t"
        );
        // Without a user, st2kv.user is undefined.
        assert!(r
            .render_str("{{ st2kv.user.token }}", &json!({}), &kv)
            .is_err());
        // decrypt_kv on a missing key names it.
        let err = r
            .render_str("{{ st2kv.system.nope | decrypt_kv }}", &ctx, &kv)
            .unwrap_err();
        assert!(err.message.contains("\"nope\" doesn't exist"), "{err}");
    }

    #[test]
    fn lists_variables() {
        let vars = Renderer::new()
            .variables("echo {{ message }} {% set x = 1 %}{{ x }} {{ st2kv.system.k }}")
            .unwrap();
        assert_eq!(vars, ["message", "st2kv"].map(String::from).into());
    }

    #[test]
    fn json_and_yaml_filters() {
        let ctx =
            json!({"d": {"b": [1, 2.5], "a": "é\"x"}, "s": "{\"k\": [1]}", "y": "k: [1, two]"});
        assert_eq!(
            render("{{ (s | from_json_string).k[0] }}", ctx.clone()),
            "1"
        );
        assert_eq!(
            render("{{ (y | from_yaml_string).k[1] }}", ctx.clone()),
            "two"
        );
        assert_eq!(
            render("{{ d | to_json_string(sort_keys=True) }}", ctx.clone()),
            r#"{"a": "\u00e9\"x","b": [1,2.5]}"#
        );
        assert_eq!(
            render("{{ d.b | to_json_string(2) }}", ctx.clone()),
            "[\n  1,\n  2.5\n]"
        );
        assert_eq!(render("{{ d.b | to_complex }}", ctx.clone()), "[1, 2.5]");
        assert_eq!(
            render("{{ d.a | json_escape }}", ctx.clone()),
            r#"\u00e9\"x"#
        );
        assert_eq!(
            render("{{ d.b | to_yaml_string }}", ctx.clone()),
            "- 1\n- 2.5\n"
        );
        assert_eq!(
            render("{{ d | to_yaml_string(indent=4) }}", ctx.clone()),
            "a: é\"x\nb:\n- 1\n- 2.5\n"
        );
        assert!(Renderer::new()
            .render_str("{{ 'nope' | from_json_string }}", &ctx, &NoKeyValues)
            .is_err());
    }

    #[test]
    fn jsonpath_query_filter() {
        let ctx = json!({"d": {"hosts": [{"name": "a"}, {"name": "b"}]}});
        assert_eq!(
            value("{{ d | jsonpath_query('hosts[*].name') }}", ctx.clone()),
            json!(["a", "b"])
        );
        assert_eq!(
            value("{{ d | jsonpath_query('$.hosts[1].name') }}", ctx.clone()),
            json!(["b"])
        );
        assert_eq!(value("{{ d | jsonpath_query('nope') }}", ctx), json!(null));
    }

    #[test]
    fn use_none_renders_null() {
        let ctx = json!({"n": null, "v": 1});
        assert_eq!(value("{{ n | use_none }}", ctx.clone()), json!(null));
        assert_eq!(value("{{ v | use_none }}", ctx.clone()), json!(1));
        assert_eq!(render("{{ n | use_none }}", ctx), NONE_MAGIC_VALUE);
    }

    #[test]
    fn regex_filters() {
        let ctx = json!({"s": "v1.2.3-rc", "n": 42});
        assert_eq!(render("{{ s | regex_match('v\\d') }}", ctx.clone()), "True");
        assert_eq!(render("{{ s | regex_match('\\d') }}", ctx.clone()), "False");
        assert_eq!(
            render("{{ s | regex_match('V1', ignorecase=True) }}", ctx.clone()),
            "True"
        );
        assert_eq!(
            render("{{ s | regex_search('\\d\\.\\d') }}", ctx.clone()),
            "True"
        );
        assert_eq!(render("{{ n | regex_search('^4') }}", ctx.clone()), "True");
        assert_eq!(
            render(r"{{ s | regex_replace('(\d)\.', '\\1_') }}", ctx.clone()),
            "v1_2_3-rc"
        );
        assert_eq!(
            render(
                r"{{ s | regex_replace('(?P<x>rc)', '[\\g<x>]') }}",
                ctx.clone()
            ),
            "v1.2.3-[rc]"
        );
        assert_eq!(render("{{ s | regex_substring('\\d') }}", ctx.clone()), "1");
        assert_eq!(
            render("{{ s | regex_substring('\\d', -1) }}", ctx.clone()),
            "3"
        );
        assert_eq!(
            render("{{ s | regex_substring('(\\d)\\.(\\d)') }}", ctx.clone()),
            "['1', '2']"
        );
        assert_eq!(
            render("{{ s | regex_substring('(?<=-)\\w+') }}", ctx.clone()),
            "rc",
            "look-behind, as Python supports"
        );
        let r = Renderer::new();
        assert!(r
            .render_str("{{ s | regex_substring('x') }}", &ctx, &NoKeyValues)
            .is_err());
        assert!(r
            .render_str("{{ s | regex_search('(') }}", &ctx, &NoKeyValues)
            .is_err());
        assert!(r
            .render_str(r"{{ s | regex_replace('x', '\\2') }}", &ctx, &NoKeyValues)
            .is_err());
    }

    #[test]
    fn human_time_filter() {
        for (input, expected) in [
            ("0", "0s"),
            ("0.5", "0.5\u{3bc}s"),
            ("10", "10s"),
            ("65", "1m5s"),
            ("3725", "1h2m5s"),
            ("90061", "1d1h1m1s"),
            ("31626061", "1y1d1h1m1s"),
            ("59.6", "1m0s"),
        ] {
            assert_eq!(
                render(
                    &format!("{{{{ {input} | to_human_time_from_seconds }}}}"),
                    json!({})
                ),
                expected
            );
        }
        assert!(Renderer::new()
            .render_str(
                "{{ 'x' | to_human_time_from_seconds }}",
                &json!({}),
                &NoKeyValues
            )
            .is_err());
    }

    #[test]
    fn version_filters() {
        let ctx = json!({});
        assert_eq!(
            render("{{ '1.2.3' | version_compare('1.10.0') }}", ctx.clone()),
            "-1"
        );
        assert_eq!(
            render(
                "{{ '1.2.3' | version_compare('1.2.3+build') }}",
                ctx.clone()
            ),
            "0"
        );
        assert_eq!(
            render("{{ '2.0.0' | version_more_than('1.9.9') }}", ctx.clone()),
            "True"
        );
        assert_eq!(
            render(
                "{{ '1.0.0-rc.1' | version_less_than('1.0.0') }}",
                ctx.clone()
            ),
            "True"
        );
        assert_eq!(
            render("{{ '1.0.0' | version_equal('1.0.0') }}", ctx.clone()),
            "True"
        );
        assert_eq!(
            render("{{ '1.5.0' | version_match('>=1.2.0') }}", ctx.clone()),
            "True"
        );
        assert_eq!(
            render("{{ '1.5.0' | version_match('<1.2.0') }}", ctx.clone()),
            "False"
        );
        assert_eq!(
            render("{{ '1.5.0' | version_match('1.5.0') }}", ctx.clone()),
            "True"
        );
        assert_eq!(
            render("{{ '1.5.0' | version_match('!=1.5.0') }}", ctx.clone()),
            "False"
        );
        assert_eq!(
            render("{{ '1.2.3' | version_bump_major }}", ctx.clone()),
            "2.0.0"
        );
        assert_eq!(
            render("{{ '1.2.3' | version_bump_minor }}", ctx.clone()),
            "1.3.0"
        );
        assert_eq!(
            render("{{ '1.2.3-rc' | version_bump_patch }}", ctx.clone()),
            "1.2.4"
        );
        assert_eq!(
            render("{{ '1.2.3' | version_strip_patch }}", ctx.clone()),
            "1.2"
        );
        let r = Renderer::new();
        assert!(r
            .render_str("{{ '1.2' | version_bump_major }}", &ctx, &NoKeyValues)
            .is_err());
        assert!(r
            .render_str("{{ '1.2.0' | version_match('~1') }}", &ctx, &NoKeyValues)
            .is_err());
    }

    #[test]
    fn path_filters() {
        for (path, base, dir) in [
            ("/a/b/c.txt", "c.txt", "/a/b"),
            ("/a/b/", "", "/a/b"),
            ("c.txt", "c.txt", ""),
            ("/c", "c", "/"),
            ("a//b", "b", "a"),
        ] {
            let ctx = json!({ "p": path });
            assert_eq!(render("{{ p | basename }}", ctx.clone()), base, "{path}");
            assert_eq!(render("{{ p | dirname }}", ctx), dir, "{path}");
        }
    }

    #[test]
    fn python_methods_and_in_test() {
        let ctx = json!({"s": " a,b ", "d": {"k": 1}});
        assert_eq!(
            render("{{ s.strip().split(',') }}", ctx.clone()),
            "['a', 'b']"
        );
        assert_eq!(
            render(
                "{% for k, v in d.items() %}{{k}}={{v}}{% endfor %}",
                ctx.clone()
            ),
            "k=1"
        );
        assert_eq!(render("{{ d.get('x', 'dflt') }}", ctx.clone()), "dflt");
        assert_eq!(render("{{ 'a' is in ['a', 'b'] }}", ctx), "True");
    }

    #[test]
    fn json_paths() {
        let doc = json!({"trigger": {"body": {"name": "st2", "X-Hub": "h", "a b": 1},
                                     "items": [{"x": 1}, {"x": 2}]}});
        let find = |p: &str| {
            JsonPath::parse(p)
                .unwrap_or_else(|e| panic!("{e}"))
                .find(&doc)
                .into_iter()
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(find("trigger.body.name"), vec![json!("st2")]);
        assert_eq!(find("$.trigger.body.X-Hub"), vec![json!("h")]);
        assert_eq!(find("trigger.body['a b']"), vec![json!(1)]);
        assert_eq!(find("trigger.body.'a b'"), vec![json!(1)]);
        assert_eq!(find("trigger[\"body\"].name"), vec![json!("st2")]);
        assert_eq!(find("trigger.items[0].x"), vec![json!(1)]);
        assert_eq!(find("trigger.items[-1].x"), vec![json!(2)]);
        assert_eq!(find("trigger.items[*].x"), vec![json!(1), json!(2)]);
        assert_eq!(find("trigger..x"), vec![json!(1), json!(2)]);
        assert_eq!(find("trigger.body.*").len(), 3);
        assert!(find("trigger.nope.name").is_empty());
        assert!(find("trigger.items[5]").is_empty());
        assert!(find("trigger.body[0]").is_empty());
        for bad in ["trigger.", "trigger[0", "trigger[x]", "a b"] {
            assert!(JsonPath::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn decrypt_kv_opens_sealed_secrets_only_when_asked() {
        let cipher = Cipher::from_hex(&Cipher::generate_hex()).unwrap();
        let sealed = cipher.encrypt("s3cr3t");
        let kv = MapKv(BTreeMap::from([(
            (KvScope::System, "pw".to_string()),
            sealed.clone(),
        )]));
        let r = Renderer::with_cipher(cipher);
        let ctx = json!({});
        assert_eq!(
            r.render_str("{{ st2kv.system.pw }}", &ctx, &kv).unwrap(),
            sealed
        );
        assert_eq!(
            r.render_str("{{ st2kv.system.pw | decrypt_kv }}", &ctx, &kv)
                .unwrap(),
            "s3cr3t"
        );
        let missing = r.render_str("{{ st2kv.system.nope | decrypt_kv }}", &ctx, &kv);
        assert!(missing.unwrap_err().to_string().contains("doesn't exist"));
        let plain = MapKv(BTreeMap::from([(
            (KvScope::System, "pw".to_string()),
            "open".to_string(),
        )]));
        let err = r
            .render_str("{{ st2kv.system.pw | decrypt_kv }}", &ctx, &plain)
            .unwrap_err();
        assert!(err.to_string().contains("marked secret"), "{err}");
    }

    /// `render_compiled` of `value` gives what `render_value` gives,
    /// results and errors alike.
    fn assert_compiled_agrees(r: &Renderer, value: &Json, ctx: &Json, kv: &dyn KeyValueLookup) {
        let compiled = CompiledValue::new(value);
        assert_eq!(compiled.source(), value);
        let reference = r.render_value(value, ctx, kv);
        if let Ok(expected) = &reference {
            // Rendered by the compiled templates, not by the fallback.
            let direct = with_datastore(ctx, &Extras::new(), kv, |root| {
                r.render_node(&compiled.node, root)
            });
            assert_eq!(direct.as_ref().ok(), Some(expected), "{value}: {direct:?}");
        }
        // Twice: the second render reads the templates the first one cached.
        for _ in 0..2 {
            assert_eq!(r.render_compiled(&compiled, ctx, kv), reference, "{value}");
        }
    }

    #[test]
    fn compiled_values_render_as_the_reference() {
        let ctx = json!({
            "trigger": {"body": {"name": "st2", "count": 3, "tags": ["a", "b"],
                                 "nested": {"k": [1, {"x": null}]}, "flag": true, "f": 1.5},
                        "headers": {"X-Event": "push"}},
            "rule": {"ref": "p.r", "name": "r", "pack": "p"},
        });
        let kv = MapKv::default().with(KvScope::System, "env", "prod").with(
            KvScope::System,
            "count",
            "7",
        );
        let renderers = [Renderer::new(), Renderer::new().keeping_none_marker()];
        let cases = [
            json!("plain text"),
            json!(""),
            json!(12),
            json!(null),
            json!(true),
            json!({"a": [1, "x", {"b": null}]}),
            json!(NONE_MAGIC_VALUE),
            json!("{{ trigger.body.name }}"),
            json!("{{trigger.body.count}}"),
            json!("{{- trigger.body.count -}}"),
            json!("{{ trigger.body.count + 1 }}"),
            json!("{{ trigger.body.tags }}"),
            json!("{{ trigger.body.nested }}"),
            json!("{{ trigger.body.flag }}"),
            json!("{{ trigger.body.f }}"),
            json!("{{ trigger.body.nested.k[1].x }}"),
            json!("{{ trigger.headers['X-Event'] }}"),
            json!("{{ trigger.body.name if trigger.body.flag else 'no' }}"),
            json!("{{ trigger.body.tags | join(',') }}"),
            json!("{{ trigger.body.tags | length > 1 }}"),
            json!("{{ '' | use_none }}"),
            json!("x {{ '' | use_none }}"),
            json!("{{ st2kv.system.env }}"),
            json!("{{ st2kv.system.count | int + 1 }}"),
            json!("{{ st2kv.system.missing }}"),
            json!("{{ st2kv.system.env }}-{{ st2kv.system.count }}"),
            json!("{{ trigger.body.name }} has {{ trigger.body.count }} {% if trigger.body.flag %}yes{% endif %}"),
            json!("{% for t in trigger.body.tags %}{{ t }}{% endfor %}"),
            json!("{# a comment #}"),
            json!("{{ [1, 2] }}"),
            json!("{{ (1, 2) }}"),
            json!("{{ {'a': trigger.body.count} }}"),
            json!("{{ rule.ref }}"),
            json!({"{{ trigger.body.name }}": "{{ trigger.body.count }}", "fixed": "x", "n": 1}),
            json!(["{{ trigger.body.count }}", "x", 1, ["{{ rule.name }}"]]),
            json!({"same": "{{ 1 }}", "{{ 'same' }}": 2}),
            json!({"deep": {"deeper": ["{{ trigger.body.tags[0] }}", {"k": "{{ st2kv.system.env }}"}]}}),
            // Errors: the same messages as the reference.
            json!("{{ trigger.body.nope }}"),
            json!("{{ trigger.nope.deeper }}"),
            json!("x {{ trigger.body.nope }} y"),
            json!("{{ nope }}"),
            json!("{{ trigger.body. }}"),
            json!("{{ a) + (b }}"),
            json!("{{ 1, 2 }}"),
            json!("{{ trigger.body.count | no_such_filter }}"),
            json!("{% if %}"),
            json!("{{ trigger.body.name }"),
            json!({"ok": "{{ trigger.body.count }}", "bad": "{{ trigger.body.nope }}"}),
            json!(["{{ 1 }}", "{{ missing }}"]),
        ];
        for r in &renderers {
            for case in &cases {
                assert_compiled_agrees(r, case, &ctx, &kv);
            }
        }
    }

    #[test]
    fn compiled_values_without_markup_are_literals() {
        for value in [
            json!("text"),
            json!({"a": ["b", 1, null], "c": {"d": true}}),
            json!([]),
        ] {
            assert_eq!(CompiledValue::new(&value).node, Node::Literal(value));
        }
        assert!(!matches!(
            CompiledValue::new(&json!(NONE_MAGIC_VALUE)).node,
            Node::Literal(_)
        ));
        assert!(!matches!(
            CompiledValue::new(&json!({"{{ k }}": 1})).node,
            Node::Literal(_)
        ));
    }

    #[test]
    fn the_loader_serves_only_cached_names() {
        let r = Renderer::new();
        let err = r
            .render_str("{% include 'x' %}", &json!({}), &NoKeyValues)
            .unwrap_err();
        assert!(err.message.contains("not found"), "{err}");
    }

    #[test]
    fn find_in_selects_what_find_selects_in_the_built_object() {
        let value = json!({"a": {"b": [1, {"c": 2}], "c": 3}, "c": [4], "x-y": 5});
        let root = json!({"trigger": value});
        for path in [
            "",
            "$",
            "trigger",
            "trigger.a",
            "trigger.a.b[1].c",
            "trigger.a.b[-1]",
            "trigger['x-y']",
            "trigger.x-y",
            "trigger.*",
            "*",
            "*.a",
            "[0]",
            "other",
            "other.a",
            "..c",
            "$..c",
            "trigger..c",
            "..trigger",
            "..*",
            "trigger.a.*",
            "[*]",
            "$[*].c",
            "trigger.nope",
        ] {
            let path = JsonPath::parse(path).unwrap();
            match path.find_in("trigger", &value) {
                Some(found) => assert_eq!(found, path.find(&root), "{path:?}"),
                None => assert_eq!(path.find(&root), vec![&root], "{path:?}"),
            }
        }
    }
}

//! Values compiled once: every template inside a JSON value parsed when the
//! value is, and kept in the renderer's environment.

use std::sync::LazyLock;

use minijinja::Environment;
use serde_json::Value as Json;

use super::{is_template, single_expression, NONE_MAGIC_VALUE};
/// Prefix of the name under which a renderer's environment compiles and
/// keeps a template given by its source.
const CACHED_TEMPLATE: &str = "\u{0}squall.template:";
/// Prefix of the name under which a renderer's environment compiles and
/// keeps a single expression given by its source, as a template that
/// assigns it to [`EXPRESSION_VALUE`].
const CACHED_EXPRESSION: &str = "\u{0}squall.expression:";
/// The variable a cached expression's template assigns.
pub(super) const EXPRESSION_VALUE: &str = "__squall_value";
/// Parses expressions to check them before they are cached: a cached
/// expression is parsed inside parentheses, which would accept some that
/// do not parse on their own (`a) + (b`).
static EXPRESSION_SYNTAX: LazyLock<Environment<'static>> = LazyLock::new(Environment::empty);

/// The renderer's loader: the source of a cached template or expression,
/// from its name. Any other name is not found, as without a loader.
pub(super) fn cached_source(name: &str) -> Option<String> {
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
    pub(super) source: Json,
    pub(super) node: Node,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Node {
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
pub(super) enum Key {
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

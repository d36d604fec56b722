//! Resolving an execution's parameters from runner and action parameter
//! specs, caller-provided values and Jinja-templated defaults.
//!
//! Follows StackStorm (`st2common/util/param.py`, `util/casts.py`,
//! `services/action.py`):
//!
//! - the schema is the runner's parameters overlaid field by field with the
//!   action's ([`merged_specs`]), so `core.echo` makes the runner's `cmd`
//!   immutable with a templated default and it stays a string;
//! - a provided parameter outside the schema, or one that is immutable, is
//!   rejected; a provided `null` means "not provided";
//! - every value, provided or default, may be a Jinja template reading other
//!   parameters (`echo "{{message}}"`) and the context (`action_context`,
//!   `config_context`, `st2kv`...). Templates render in dependency order; a
//!   cycle is an error. A parameter with no value renders as `None` in
//!   another's template, as on StackStorm, and is left out of the result;
//! - a string parameter renders to text; any other renders with
//!   [`Renderer::render_value`], so `"{{ trigger.count }}"` stays a number;
//! - values are then cast to the declared type (`"5"` → `5`, `"true"` →
//!   `true`, a JSON or Python-literal string → object or array, a number →
//!   string) and checked against `enum`.

use std::collections::BTreeMap;

use serde_json::{Map, Number, Value};

use crate::model::{ActionDef, ParamSpec};
use crate::runner_types::RunnerType;
use crate::template::{
    is_template, python_float, KeyValueLookup, Renderer, TemplateError, NONE_MAGIC_VALUE,
};

/// What a secret parameter shows instead of its value.
pub const MASK: &str = "********";

/// Why an execution's parameters could not be resolved. Each names the
/// parameter(s).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParamError {
    #[error(
        "unknown parameter(s) {}: not in the action or runner schema",
        .names.join(", ")
    )]
    Unknown { names: Vec<String> },
    #[error("Override of immutable parameter(s) {} is unsupported", .names.join(", "))]
    ImmutableOverride { names: Vec<String> },
    #[error("missing required parameter(s) {}", .names.join(", "))]
    MissingRequired { names: Vec<String> },
    #[error(
        "cyclic dependency between parameters {}: a parameter's template refers back to itself",
        .names.join(", ")
    )]
    Cycle { names: Vec<String> },
    #[error("failed to render parameter {name:?}: {source}")]
    Render {
        name: String,
        #[source]
        source: TemplateError,
    },
    #[error("parameter {name:?}: {value} is not a valid {expected}")]
    Cast {
        name: String,
        expected: String,
        value: String,
    },
    #[error("parameter {name:?}: {value} is not one of {allowed}")]
    NotAllowed {
        name: String,
        value: String,
        allowed: String,
    },
}

/// The runner's parameters overlaid with the action's, field by field: a
/// field the action sets wins, flags (`required`, `secret`, `immutable`)
/// are set when either sets them, and other schema keywords merge.
pub fn merged_specs(runner: &RunnerType, action: &ActionDef) -> BTreeMap<String, ParamSpec> {
    let mut specs = runner.runner_parameters.clone();
    for (name, over) in &action.parameters {
        let merged = match specs.remove(name) {
            Some(base) => overlay(base, over),
            None => over.clone(),
        };
        specs.insert(name.clone(), merged);
    }
    specs
}

fn overlay(base: ParamSpec, over: &ParamSpec) -> ParamSpec {
    let mut schema = base.schema;
    schema.extend(over.schema.clone());
    ParamSpec {
        kind: over.kind.clone().or(base.kind),
        description: over.description.clone().or(base.description),
        default: over.default.clone().or(base.default),
        required: over.required || base.required,
        secret: over.secret || base.secret,
        immutable: over.immutable || base.immutable,
        position: over.position.or(base.position),
        allowed: over.allowed.clone().or(base.allowed),
        schema,
    }
}

/// `params` with every secret parameter's value replaced by [`MASK`].
pub fn mask_secrets(
    specs: &BTreeMap<String, ParamSpec>,
    params: &Map<String, Value>,
) -> Map<String, Value> {
    params
        .iter()
        .map(|(name, value)| {
            let secret = specs.get(name).is_some_and(|spec| spec.secret);
            let shown = if secret {
                Value::from(MASK)
            } else {
                value.clone()
            };
            (name.clone(), shown)
        })
        .collect()
}

/// The final parameters of an execution of `action`: `provided` values and
/// defaults, rendered with `ctx` (extra variables such as `action_context`
/// and `config_context`) and each other, cast to their declared types.
/// Parameters with neither a value nor a default are absent.
pub fn resolve(
    runner: &RunnerType,
    action: &ActionDef,
    provided: &Map<String, Value>,
    ctx: &Value,
    renderer: &Renderer,
    kv: &dyn KeyValueLookup,
) -> Result<Map<String, Value>, ParamError> {
    let specs = merged_specs(runner, action);
    let unknown: Vec<String> = provided
        .keys()
        .filter(|name| !specs.contains_key(*name))
        .cloned()
        .collect();
    if !unknown.is_empty() {
        return Err(ParamError::Unknown { names: unknown });
    }
    let immutable: Vec<String> = provided
        .keys()
        .filter(|name| specs.get(*name).is_some_and(|spec| spec.immutable))
        .cloned()
        .collect();
    if !immutable.is_empty() {
        return Err(ParamError::ImmutableOverride { names: immutable });
    }
    let pending: BTreeMap<&str, (&ParamSpec, &Value)> = specs
        .iter()
        .filter_map(|(name, spec)| {
            let given = provided.get(name).filter(|v| !v.is_null());
            let value = given.or(spec.default.as_ref().filter(|v| !v.is_null()))?;
            Some((name.as_str(), (spec, value)))
        })
        .collect();
    let missing: Vec<String> = specs
        .iter()
        .filter(|(name, spec)| spec.required && !pending.contains_key(name.as_str()))
        .map(|(name, _)| name.clone())
        .collect();
    if !missing.is_empty() {
        return Err(ParamError::MissingRequired { names: missing });
    }
    let mut resolver = Resolver {
        specs: &specs,
        pending: &pending,
        ctx,
        renderer,
        kv,
        resolved: Map::new(),
    };
    for name in pending.keys() {
        resolver.resolve(name, &mut Vec::new())?;
    }
    Ok(resolver.resolved)
}

/// Resolves parameters depth-first, each after the ones its templates read.
struct Resolver<'a> {
    specs: &'a BTreeMap<String, ParamSpec>,
    /// The spec and value (provided or default) of every parameter that
    /// has a value.
    pending: &'a BTreeMap<&'a str, (&'a ParamSpec, &'a Value)>,
    ctx: &'a Value,
    renderer: &'a Renderer,
    kv: &'a dyn KeyValueLookup,
    resolved: Map<String, Value>,
}

impl Resolver<'_> {
    /// Resolves `name` after its dependencies; `path` holds the parameters
    /// being resolved above it, to report a cycle.
    fn resolve(&mut self, name: &str, path: &mut Vec<String>) -> Result<(), ParamError> {
        if self.resolved.contains_key(name) {
            return Ok(());
        }
        if let Some(start) = path.iter().position(|p| p == name) {
            let mut names = path[start..].to_vec();
            names.sort();
            return Err(ParamError::Cycle { names });
        }
        let Some(&(spec, value)) = self.pending.get(name) else {
            return Ok(());
        };
        path.push(name.to_string());
        for dependency in self.dependencies(name, value)? {
            self.resolve(&dependency, path)?;
        }
        path.pop();
        let rendered = self.render(name, spec, value)?;
        let value = cast(name, spec, rendered)?;
        check_allowed(name, spec, &value)?;
        self.resolved.insert(name.to_string(), value);
        Ok(())
    }

    /// The parameters with a value that `value`'s templates read.
    fn dependencies(&self, name: &str, value: &Value) -> Result<Vec<String>, ParamError> {
        let mut templates = Vec::new();
        collect_templates(value, &mut templates);
        let mut dependencies = Vec::new();
        for template in templates {
            let variables = self
                .renderer
                .variables(template)
                .map_err(|source| render_error(name, source))?;
            dependencies.extend(
                variables
                    .into_iter()
                    .filter(|v| self.pending.contains_key(v.as_str())),
            );
        }
        Ok(dependencies)
    }

    fn render(&self, name: &str, spec: &ParamSpec, value: &Value) -> Result<Value, ParamError> {
        let mut templates = Vec::new();
        collect_templates(value, &mut templates);
        if templates.is_empty() {
            return Ok(value.clone());
        }
        let context = self.context();
        let rendered = match (spec.kind.as_deref(), value) {
            (Some("string"), Value::String(template)) => self
                .renderer
                .render_str(template, &context, self.kv)
                .map(|text| {
                    if text == NONE_MAGIC_VALUE {
                        Value::Null
                    } else {
                        Value::String(text)
                    }
                }),
            _ => self.renderer.render_value(value, &context, self.kv),
        };
        rendered.map_err(|source| render_error(name, source))
    }

    /// `ctx` plus every parameter: its resolved value, or `null`.
    fn context(&self) -> Value {
        let mut context = match self.ctx {
            Value::Object(map) => map.clone(),
            _ => Map::new(),
        };
        for name in self.specs.keys() {
            let value = self.resolved.get(name).cloned().unwrap_or(Value::Null);
            context.insert(name.clone(), value);
        }
        Value::Object(context)
    }
}

fn render_error(name: &str, source: TemplateError) -> ParamError {
    ParamError::Render {
        name: name.to_string(),
        source,
    }
}

/// Every string in `value` (map keys included) that holds Jinja markup.
fn collect_templates<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::String(s) if is_template(s) => out.push(s),
        Value::Array(items) => items.iter().for_each(|item| collect_templates(item, out)),
        Value::Object(map) => {
            for (key, item) in map {
                if is_template(key) {
                    out.push(key);
                }
                collect_templates(item, out);
            }
        }
        _ => {}
    }
}

/// Casts `value` to the parameter's declared type, as StackStorm's casts do
/// before validation. `null` stays `null`; an unknown type leaves the value
/// as it is.
fn cast(name: &str, spec: &ParamSpec, value: Value) -> Result<Value, ParamError> {
    let Some(kind) = spec.kind.as_deref() else {
        return Ok(value);
    };
    if value.is_null() {
        return Ok(value);
    }
    let cast = match (kind, &value) {
        ("string", Value::String(_))
        | ("integer", Value::Number(_))
        | ("number", Value::Number(_))
        | ("boolean", Value::Bool(_))
        | ("object", Value::Object(_))
        | ("array", Value::Array(_)) => Some(value.clone()),
        ("string", Value::Number(n)) => Some(Value::String(number_text(n))),
        ("integer", Value::Bool(b)) | ("number", Value::Bool(b)) => Some(Value::from(u8::from(*b))),
        ("integer", Value::String(s)) => s.trim().parse::<i64>().ok().map(Value::from),
        ("number", Value::String(s)) => s
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map(Value::Number),
        ("boolean", Value::String(s)) => match s.to_lowercase().as_str() {
            "true" => Some(Value::Bool(true)),
            "false" => Some(Value::Bool(false)),
            _ => None,
        },
        ("object", Value::String(s)) => parse_structured(s).filter(Value::is_object),
        ("array", Value::String(s)) => parse_structured(s).filter(Value::is_array),
        ("string" | "integer" | "number" | "boolean" | "object" | "array" | "null", _) => None,
        _ => Some(value.clone()),
    };
    let cast = match (kind, cast) {
        // Python's int() truncates a float.
        ("integer", Some(Value::Number(n))) if !n.is_i64() && !n.is_u64() => n
            .as_f64()
            .filter(|f| f.is_finite() && f.abs() < 9.2e18)
            .map(|f| Value::from(f.trunc() as i64)),
        (_, cast) => cast,
    };
    cast.ok_or_else(|| ParamError::Cast {
        name: name.to_string(),
        expected: kind.to_string(),
        value: value.to_string(),
    })
}

/// Python's `str()` of a number.
fn number_text(n: &Number) -> String {
    match n.as_f64() {
        Some(f) if n.is_f64() => python_float(f),
        _ => n.to_string(),
    }
}

fn check_allowed(name: &str, spec: &ParamSpec, value: &Value) -> Result<(), ParamError> {
    match &spec.allowed {
        Some(allowed) if !value.is_null() && !allowed.contains(value) => {
            Err(ParamError::NotAllowed {
                name: name.to_string(),
                value: value.to_string(),
                allowed: Value::Array(allowed.clone()).to_string(),
            })
        }
        _ => Ok(()),
    }
}

/// `text` as JSON, else as a Python literal (`ast.literal_eval`): what
/// StackStorm's object and array casts accept, e.g. a rendered
/// `{'a': True}`.
fn parse_structured(text: &str) -> Option<Value> {
    serde_json::from_str(text)
        .ok()
        .or_else(|| PythonLiteral::parse(text))
}

/// A parser for Python literals: strings, numbers, `True`, `False`, `None`,
/// lists, tuples (as lists) and dicts.
struct PythonLiteral<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> PythonLiteral<'a> {
    fn parse(text: &'a str) -> Option<Value> {
        let mut parser = Self { text, pos: 0 };
        let value = parser.value()?;
        parser.skip_whitespace();
        (parser.pos == text.len()).then_some(value)
    }

    fn peek(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn skip_whitespace(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.bump();
        }
    }

    /// Consumes `c` (after whitespace) if it comes next.
    fn eat(&mut self, c: char) -> bool {
        self.skip_whitespace();
        let found = self.peek() == Some(c);
        if found {
            self.bump();
        }
        found
    }

    fn value(&mut self) -> Option<Value> {
        self.skip_whitespace();
        match self.peek()? {
            '[' | '(' => {
                let close = if self.bump()? == '[' { ']' } else { ')' };
                self.sequence(close).map(Value::Array)
            }
            '{' => {
                self.bump();
                self.dict()
            }
            '\'' | '"' => self.string().map(Value::String),
            _ => self.atom(),
        }
    }

    fn sequence(&mut self, close: char) -> Option<Vec<Value>> {
        let mut items = Vec::new();
        loop {
            if self.eat(close) {
                return Some(items);
            }
            items.push(self.value()?);
            if !self.eat(',') {
                return self.eat(close).then_some(items);
            }
        }
    }

    fn dict(&mut self) -> Option<Value> {
        let mut map = Map::new();
        loop {
            if self.eat('}') {
                return Some(Value::Object(map));
            }
            let key = match self.value()? {
                Value::String(s) => s,
                other => other.to_string(),
            };
            if !self.eat(':') {
                return None;
            }
            map.insert(key, self.value()?);
            if !self.eat(',') {
                return self.eat('}').then_some(Value::Object(map));
            }
        }
    }

    fn string(&mut self) -> Option<String> {
        let quote = self.bump()?;
        let mut out = String::new();
        loop {
            match self.bump()? {
                c if c == quote => return Some(out),
                '\\' => match self.bump()? {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    c @ ('\\' | '\'' | '"') => out.push(c),
                    'x' => out.push(self.hex_char(2)?),
                    'u' => out.push(self.hex_char(4)?),
                    other => {
                        out.push('\\');
                        out.push(other);
                    }
                },
                c => out.push(c),
            }
        }
    }

    fn hex_char(&mut self, digits: usize) -> Option<char> {
        let hex = self.text.get(self.pos..self.pos + digits)?;
        self.pos += digits;
        char::from_u32(u32::from_str_radix(hex, 16).ok()?)
    }

    fn atom(&mut self) -> Option<Value> {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|c| c.is_alphanumeric() || matches!(c, '+' | '-' | '.'))
        {
            self.bump();
        }
        match &self.text[start..self.pos] {
            "True" => Some(Value::Bool(true)),
            "False" => Some(Value::Bool(false)),
            "None" => Some(Value::Null),
            word => word.parse::<i64>().map(Value::from).ok().or_else(|| {
                word.parse::<f64>()
                    .ok()
                    .and_then(Number::from_f64)
                    .map(Value::Number)
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner_types;
    use crate::template::{KvScope, NoKeyValues};
    use serde_json::json;

    fn action(runner: &str, parameters: Value) -> ActionDef {
        serde_json::from_value(json!({
            "name": "act", "pack": "test", "runner_type": runner, "parameters": parameters
        }))
        .expect("action")
    }

    fn runner(name: &str) -> RunnerType {
        runner_types::lookup(name).expect("runner").clone()
    }

    /// `core.echo` as shipped with StackStorm.
    fn echo() -> ActionDef {
        action(
            "local-shell-cmd",
            json!({
                "message": {"type": "string", "required": true},
                "cmd": {"default": "echo \"{{message}}\"", "immutable": true},
                "kwarg_op": {"immutable": true},
                "sudo": {"default": false, "immutable": true},
                "sudo_password": {"immutable": true}
            }),
        )
    }

    fn resolve_with(
        action: &ActionDef,
        provided: Value,
        ctx: Value,
    ) -> Result<Map<String, Value>, ParamError> {
        let Value::Object(provided) = provided else {
            panic!("provided must be an object")
        };
        resolve(
            &runner(&action.runner_type),
            action,
            &provided,
            &ctx,
            &Renderer::new(),
            &NoKeyValues,
        )
    }

    fn noop(parameters: Value) -> ActionDef {
        action("noop", parameters)
    }

    #[test]
    fn core_echo_renders_its_immutable_cmd() {
        let params = resolve_with(&echo(), json!({"message": "hi there"}), json!({})).unwrap();
        assert_eq!(
            Value::Object(params),
            json!({
                "message": "hi there",
                "cmd": "echo \"hi there\"",
                "kwarg_op": "--",
                "sudo": false,
                "timeout": 60
            })
        );
    }

    #[test]
    fn merged_specs_overlay_action_fields_on_runner_fields() {
        let specs = merged_specs(&runner("local-shell-cmd"), &echo());
        let cmd = &specs["cmd"];
        assert_eq!(
            cmd.kind.as_deref(),
            Some("string"),
            "type kept from the runner"
        );
        assert_eq!(cmd.default, Some(json!("echo \"{{message}}\"")));
        assert!(cmd.immutable);
        assert!(specs["sudo_password"].secret && specs["sudo_password"].immutable);
        assert!(specs["message"].required);
        assert_eq!(specs["timeout"].default, Some(json!(60)));
    }

    #[test]
    fn missing_required_parameters_are_named() {
        let act = noop(json!({"a": {"required": true}, "b": {"required": true},
                              "c": {"required": true, "default": 1}}));
        assert_eq!(
            resolve_with(&act, json!({"b": null}), json!({})).unwrap_err(),
            ParamError::MissingRequired {
                names: vec!["a".into(), "b".into()]
            }
        );
    }

    #[test]
    fn immutable_parameters_cannot_be_overridden() {
        let err = resolve_with(
            &echo(),
            json!({"message": "x", "cmd": "rm -rf /"}),
            json!({}),
        )
        .unwrap_err();
        assert_eq!(
            err,
            ParamError::ImmutableOverride {
                names: vec!["cmd".into()]
            }
        );
        assert_eq!(
            err.to_string(),
            "Override of immutable parameter(s) cmd is unsupported"
        );
    }

    #[test]
    fn unknown_parameters_are_rejected() {
        assert_eq!(
            resolve_with(
                &echo(),
                json!({"message": "x", "bogus": 1, "other": 2}),
                json!({})
            )
            .unwrap_err(),
            ParamError::Unknown {
                names: vec!["bogus".into(), "other".into()]
            }
        );
    }

    #[test]
    fn null_means_unset_and_unset_parameters_are_absent() {
        let act = noop(json!({"a": {"type": "string", "default": "dflt"},
                              "b": {"type": "string"}}));
        let params = resolve_with(&act, json!({"a": null, "b": null}), json!({})).unwrap();
        assert_eq!(Value::Object(params), json!({"a": "dflt"}));
    }

    #[test]
    fn values_are_cast_to_declared_types() {
        let act = noop(json!({
            "i": {"type": "integer"}, "n": {"type": "number"}, "b": {"type": "boolean"},
            "o": {"type": "object"}, "a": {"type": "array"}, "s": {"type": "string"},
            "t": {"type": "integer"}, "p": {"type": "array"}, "f": {"type": "boolean"},
            "any": {}
        }));
        let params = resolve_with(
            &act,
            json!({"i": " 5 ", "n": "2.5", "b": "True", "o": "{\"k\": [1]}",
                   "a": "[1, \"x\"]", "s": 7, "t": 3.9,
                   "p": "['a', {'k': None, 'v': (1, 2.5, True)}]", "f": "false",
                   "any": "5"}),
            json!({}),
        )
        .unwrap();
        assert_eq!(
            Value::Object(params),
            json!({"i": 5, "n": 2.5, "b": true, "o": {"k": [1]}, "a": [1, "x"], "s": "7",
                   "t": 3, "p": ["a", {"k": null, "v": [1, 2.5, true]}], "f": false,
                   "any": "5"})
        );
    }

    #[test]
    fn uncastable_values_are_errors() {
        for (kind, value) in [
            ("integer", json!("five")),
            ("integer", json!([1])),
            ("number", json!("x")),
            ("boolean", json!("yes")),
            ("boolean", json!(1)),
            ("object", json!("[1]")),
            ("array", json!("not a list")),
            ("string", json!({"a": 1})),
            ("null", json!(1)),
        ] {
            let act = noop(json!({ "p": {"type": kind} }));
            let err = resolve_with(&act, json!({ "p": value }), json!({})).unwrap_err();
            assert!(
                matches!(&err, ParamError::Cast { name, expected, .. } if name == "p" && expected == kind),
                "{kind} {value}: {err}"
            );
        }
    }

    #[test]
    fn enum_is_checked_after_casting() {
        let act = noop(json!({"level": {"type": "integer", "enum": [1, 2]}}));
        assert_eq!(
            resolve_with(&act, json!({"level": "2"}), json!({})).unwrap()["level"],
            json!(2)
        );
        let err = resolve_with(&act, json!({"level": 3}), json!({})).unwrap_err();
        assert!(matches!(err, ParamError::NotAllowed { ref name, .. } if name == "level"));
    }

    #[test]
    fn templates_render_in_dependency_order_with_native_types() {
        let act = noop(json!({
            "c": {"type": "string", "default": "{{ b }}-{{ a }}"},
            "b": {"type": "integer", "default": "{{ a + 1 }}"},
            "a": {"type": "integer"},
            "flag": {"type": "boolean", "default": "{{ b > 1 }}"},
            "env": {"type": "object", "default": {"N": "{{ b }}", "S": "x{{ a }}"}},
            "shown": {"type": "string", "default": "{{ flag }}"}
        }));
        let params = resolve_with(&act, json!({"a": "1"}), json!({})).unwrap();
        assert_eq!(
            Value::Object(params),
            json!({"a": 1, "b": 2, "c": "2-1", "flag": true, "env": {"N": 2, "S": "x1"},
                   "shown": "True"})
        );
    }

    #[test]
    fn templates_read_the_context_and_the_datastore() {
        struct Kv;
        impl KeyValueLookup for Kv {
            fn get(&self, scope: KvScope, name: &str) -> Option<String> {
                match (scope, name) {
                    (KvScope::System, "host") => Some("db1".into()),
                    (KvScope::User(user), "token") if user == "stanley" => Some("t0k".into()),
                    _ => None,
                }
            }
        }
        let act = noop(json!({
            "who": {"type": "string", "default": "{{ action_context.user }}"},
            "host": {"type": "string", "default": "{{ st2kv.system.host }}"},
            "token": {"type": "string", "secret": true,
                      "default": "{{ st2kv.user.token | decrypt_kv }}"},
            "region": {"type": "string", "default": "{{ config_context.region }}"},
            "body": {"type": "object"}
        }));
        let Value::Object(provided) = json!({"body": "{{ trigger.body }}"}) else {
            unreachable!()
        };
        let ctx = json!({"action_context": {"user": "stanley"},
                         "config_context": {"region": "eu"},
                         "trigger": {"body": {"k": [1]}}});
        let params = resolve(
            &runner("noop"),
            &act,
            &provided,
            &ctx,
            &Renderer::new(),
            &Kv,
        )
        .unwrap();
        assert_eq!(
            Value::Object(params.clone()),
            json!({"who": "stanley", "host": "db1", "token": "t0k", "region": "eu",
                   "body": {"k": [1]}})
        );
        let masked = mask_secrets(&merged_specs(&runner("noop"), &act), &params);
        assert_eq!(masked["token"], json!(MASK));
        assert_eq!(masked["host"], json!("db1"));
    }

    #[test]
    fn unset_parameters_render_as_none() {
        let act = noop(json!({
            "cmd": {"type": "string", "default": "ls {{ path }}"},
            "path": {"type": "string"}
        }));
        let params = resolve_with(&act, json!({}), json!({})).unwrap();
        assert_eq!(Value::Object(params), json!({"cmd": "ls None"}));
    }

    #[test]
    fn use_none_gives_null() {
        let act = noop(json!({
            "x": {"type": "string", "default": "{{ y | use_none }}"},
            "y": {"type": "string"}
        }));
        let params = resolve_with(&act, json!({}), json!({})).unwrap();
        assert_eq!(Value::Object(params), json!({"x": null}));
    }

    #[test]
    fn cycles_are_errors() {
        let act = noop(json!({
            "a": {"type": "string", "default": "{{ b }}"},
            "b": {"type": "string", "default": "{{ c }}"},
            "c": {"type": "string", "default": "{{ a }}"},
            "d": {"type": "string", "default": "{{ d }}!"}
        }));
        assert_eq!(
            resolve_with(&act, json!({"d": "fine"}), json!({})).unwrap_err(),
            ParamError::Cycle {
                names: vec!["a".into(), "b".into(), "c".into()]
            }
        );
        let self_ref = noop(json!({"d": {"type": "string", "default": "{{ d }}!"}}));
        assert_eq!(
            resolve_with(&self_ref, json!({}), json!({})).unwrap_err(),
            ParamError::Cycle {
                names: vec!["d".into()]
            }
        );
    }

    #[test]
    fn render_errors_name_the_parameter() {
        let act = noop(json!({"a": {"type": "string", "default": "{{ nope.x }}"}}));
        let err = resolve_with(&act, json!({}), json!({})).unwrap_err();
        assert!(
            matches!(&err, ParamError::Render { name, .. } if name == "a"),
            "{err}"
        );
        let act = noop(json!({"a": {"type": "string", "default": "{% if %}"}}));
        let err = resolve_with(&act, json!({}), json!({})).unwrap_err();
        assert!(
            matches!(&err, ParamError::Render { name, .. } if name == "a"),
            "{err}"
        );
    }

    #[test]
    fn python_literals() {
        assert_eq!(
            PythonLiteral::parse(r#" {'a': "it's", 'b': [1, -2.5e3, None, False], 3: ()} "#),
            Some(json!({"a": "it's", "b": [1, -2500.0, null, false], "3": []}))
        );
        assert_eq!(
            PythonLiteral::parse(r"['\x41\u00e9\n']"),
            Some(json!(["Aé\n"]))
        );
        assert_eq!(PythonLiteral::parse("[1, 2,]"), Some(json!([1, 2])));
        for bad in ["[1, 2", "{'a' 1}", "nope", "[1] x", "'open"] {
            assert_eq!(PythonLiteral::parse(bad), None, "{bad}");
        }
    }
}

//! Pack config: the values a pack's `config.schema.yaml` describes, as
//! StackStorm checks and resolves them.
//!
//! - [`validate`] checks values against a schema the way StackStorm's
//!   `validate_config_against_schema` does: defaults are filled first, keys
//!   the schema does not name pass, `required: true` works at every depth,
//!   and an item that is not required (or whose default is null) also
//!   accepts null. It returns the values with the defaults filled, which is
//!   what is stored.
//! - [`read_file`] reads `<configs dir>/<pack>.yaml` at registration and
//!   reports every problem with file, line and field.
//! - [`resolve`] is StackStorm's `ContentPackConfigLoader.get_config`: the
//!   stored values are checked against the current schema, every string
//!   holding `{{` or `{%` is rendered with `st2kv.system` / `st2kv.user`
//!   (the execution's user), a `secret: true` item's rendered value is
//!   decrypted, an empty rendering becomes null, and defaults are filled.
//! - [`mask`] hides `secret: true` items from API output.
//!
//! The schema itself is read by the pack loader
//! ([`crate::loader::load_pack`], `config_schema`).

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::loader::{self, LoadError};
use crate::secrets::{Cipher, SecretError};
use crate::template::{KeyValueLookup, Renderer};

/// The schema file in a pack's root.
pub const SCHEMA_FILE: &str = "config.schema.yaml";

/// What a secret shows as in API output (StackStorm's
/// `MASKED_ATTRIBUTE_VALUE`).
pub const MASK: &str = "********";

/// Why a pack's config could not be used for a run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The stored values do not match the pack's schema (it changed since
    /// they were stored, or they were never checked).
    #[error("config for pack \"{pack}\" does not match its schema: {}", join(.problems))]
    Invalid {
        pack: String,
        /// `(dotted field, message)` for every problem.
        problems: Vec<(String, String)>,
    },
    /// A literal secret stored sealed could not be opened (the cluster's
    /// datastore key changed, or this reader has none).
    #[error("config for pack \"{pack}\": the secret item \"{field}\" cannot be opened: {message}")]
    Sealed {
        pack: String,
        field: String,
        message: String,
    },
    /// A dynamic value failed to render or decrypt.
    #[error(
        "Failed to render dynamic configuration value for key \"{field}\" with value \"{value}\" for pack \"{pack}\" config: {message}"
    )]
    Render {
        pack: String,
        field: String,
        value: String,
        message: String,
    },
}

fn join(problems: &[(String, String)]) -> String {
    problems
        .iter()
        .map(|(f, m)| format!("{f}: {m}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The schema StackStorm validates a config with: the items as properties,
/// anything else allowed; an item that is not required, or whose default is
/// null, also accepts null.
fn object_schema(schema: &Map<String, Value>) -> Value {
    json!({
        "type": "object",
        "properties": Value::Object(schema.iter().map(|(k, v)| (k.clone(), nullable(v))).collect()),
        "additionalProperties": true,
    })
}

fn nullable(item: &Value) -> Value {
    let Some(obj) = item.as_object() else {
        return item.clone();
    };
    let mut out = obj.clone();
    let required = obj.get("required") == Some(&Value::Bool(true));
    let null_default = obj.get("default") == Some(&Value::Null);
    if let Some(Value::String(t)) = obj.get("type") {
        if !required || null_default {
            out.insert("type".into(), json!([t, "null"]));
        }
    }
    if let Some(Value::Object(props)) = obj.get("properties") {
        out.insert(
            "properties".into(),
            Value::Object(
                props
                    .iter()
                    .map(|(k, v)| (k.clone(), nullable(v)))
                    .collect(),
            ),
        );
    }
    if let Some(items @ Value::Object(_)) = obj.get("items") {
        out.insert("items".into(), nullable(items));
    }
    Value::Object(out)
}

/// Checks `values` against `schema` (item name → parameter schema). Returns
/// the values with defaults filled, or every problem as `(dotted field,
/// message)`.
pub fn validate(
    values: &Map<String, Value>,
    schema: &Map<String, Value>,
) -> Result<Map<String, Value>, Vec<(String, String)>> {
    let mut filled = values.clone();
    fill_defaults(&mut filled, schema);
    let mut problems: Vec<(String, String)> =
        crate::schema::validate(&Value::Object(filled.clone()), &object_schema(schema), "")
            .into_iter()
            .map(|line| {
                let (path, message) = line.split_once(": ").unwrap_or(("", line.as_str()));
                (
                    path.trim_start_matches('.').to_string(),
                    message.to_string(),
                )
            })
            .collect();
    // A secret's value never shows in a message.
    let root = json!({ "properties": schema });
    for (field, message) in &mut problems {
        if is_secret(&root, field) {
            *message = without_value(message);
        }
    }
    for (name, item) in schema {
        let secret = item.get("secret") == Some(&Value::Bool(true));
        if let (true, Some(Value::String(s))) = (secret, values.get(name)) {
            if s.contains("decrypt_kv") {
                problems.push((
                    name.clone(),
                    "a secret item is decrypted already; reference the encrypted key without `| decrypt_kv`"
                        .into(),
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(filled)
    } else {
        Err(problems)
    }
}

/// Whether the item at dotted `field` (or one containing it) is
/// `secret: true`.
fn is_secret(root: &Value, field: &str) -> bool {
    let mut schema = Some(root);
    for segment in field.split('.').filter(|s| !s.is_empty()) {
        schema = schema.and_then(|s| match segment.parse::<usize>() {
            Ok(i) if s.get("items").is_some() => item_schema(s, i),
            _ => property_schema(s, segment),
        });
        if schema.is_some_and(|s| s.get("secret") == Some(&Value::Bool(true))) {
            return true;
        }
    }
    false
}

/// A validation message with the offending value left out.
fn without_value(message: &str) -> String {
    let what = if let Some((kind, _)) = message.split_once(", got ") {
        kind.to_string()
    } else if message.contains(" is not one of ") {
        "is not one of the allowed values".to_string()
    } else if message == "is required" {
        return message.to_string();
    } else {
        "does not satisfy the schema".to_string()
    };
    format!("{what} (the value is secret and not shown)")
}

/// Fills defaults for missing items; nested objects with properties are
/// created and filled, as StackStorm's `_assign_default_values` does.
pub fn fill_defaults(values: &mut Map<String, Value>, schema: &Map<String, Value>) {
    for (name, item) in schema {
        if !values.contains_key(name) {
            if let Some(default) = item.get("default") {
                values.insert(name.clone(), default.clone());
            }
        }
        let props = item.get("properties").and_then(Value::as_object);
        if item.get("type").and_then(Value::as_str) == Some("object") {
            if let Some(props) = props.filter(|p| !p.is_empty()) {
                let slot = values
                    .entry(name.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if slot.is_null() {
                    *slot = Value::Object(Map::new());
                }
                if let Value::Object(inner) = slot {
                    fill_defaults(inner, props);
                }
            }
        }
    }
}

/// The sub-schema of key `key` inside an object schema: `properties`, then
/// `patternProperties`, then an `additionalProperties` schema.
fn property_schema<'a>(object: &'a Value, key: &str) -> Option<&'a Value> {
    if let Some(s) = object.get("properties").and_then(|p| p.get(key)) {
        return Some(s);
    }
    if let Some(patterns) = object.get("patternProperties").and_then(Value::as_object) {
        for (pattern, s) in patterns {
            if regex::Regex::new(pattern).is_ok_and(|re| re.is_match(key)) {
                return Some(s);
            }
        }
    }
    object.get("additionalProperties").filter(|s| s.is_object())
}

/// The sub-schema of item `index` inside an array schema.
fn item_schema(array: &Value, index: usize) -> Option<&Value> {
    match array.get("items") {
        Some(s @ Value::Object(_)) => Some(s),
        Some(Value::Array(list)) => list
            .get(index)
            .or_else(|| array.get("additionalItems").filter(|s| s.is_object())),
        _ => None,
    }
}

/// `values` with every `secret: true` item (at any depth the schema
/// describes) replaced by [`MASK`].
pub fn mask(values: &Map<String, Value>, schema: &Map<String, Value>) -> Map<String, Value> {
    let root = json!({ "properties": schema });
    match mask_value(&Value::Object(values.clone()), Some(&root)) {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn mask_value(value: &Value, schema: Option<&Value>) -> Value {
    if schema.is_some_and(|s| s.get("secret") == Some(&Value::Bool(true))) && !value.is_null() {
        return json!(MASK);
    }
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let sub = schema.and_then(|s| property_schema(s, k));
                    (k.clone(), mask_value(v, sub))
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| mask_value(v, schema.and_then(|s| item_schema(s, i))))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The config a run gets: the stored `values` checked against `schema`,
/// dynamic values rendered as `user` sees the datastore, secret items
/// decrypted with the renderer's cipher, defaults filled. A pack with no
/// stored config (`None`) gets its defaults, unchecked, as in StackStorm
/// (a missing required item shows when the action reads it).
pub fn resolve(
    pack: &str,
    schema: &Map<String, Value>,
    values: Option<&Map<String, Value>>,
    user: &str,
    renderer: &Renderer,
    kv: &dyn KeyValueLookup,
) -> Result<Map<String, Value>, ConfigError> {
    let none = Map::new();
    let values = match values {
        Some(values) => {
            if let Err(problems) = validate(values, schema) {
                return Err(ConfigError::Invalid {
                    pack: pack.to_string(),
                    problems,
                });
            }
            values
        }
        None => &none,
    };
    let resolver = Resolver {
        pack,
        ctx: json!({ "action_context": { "user": user } }),
        renderer,
        kv,
    };
    let root = json!({ "properties": schema });
    let mut out = match resolver.walk(&Value::Object(values.clone()), Some(&root), "")? {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    fill_defaults(&mut out, schema);
    Ok(out)
}

struct Resolver<'a> {
    pack: &'a str,
    ctx: Value,
    renderer: &'a Renderer,
    kv: &'a dyn KeyValueLookup,
}

impl Resolver<'_> {
    fn walk(&self, value: &Value, schema: Option<&Value>, at: &str) -> Result<Value, ConfigError> {
        let key = |k: &str| {
            if at.is_empty() {
                k.to_string()
            } else {
                format!("{at}.{k}")
            }
        };
        match value {
            Value::Object(map) => map
                .iter()
                .map(|(k, v)| {
                    let sub = schema.and_then(|s| property_schema(s, k));
                    Ok((k.clone(), self.walk(v, sub, &key(k))?))
                })
                .collect::<Result<Map<_, _>, _>>()
                .map(Value::Object),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    self.walk(
                        v,
                        schema.and_then(|s| item_schema(s, i)),
                        &key(&i.to_string()),
                    )
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            Value::String(s) if s.contains("{{") || s.contains("{%") => {
                let secret = schema.is_some_and(|s| s.get("secret") == Some(&Value::Bool(true)));
                self.render(s, secret, at)
            }
            other => Ok(other.clone()),
        }
    }

    fn render(&self, template: &str, secret: bool, field: &str) -> Result<Value, ConfigError> {
        let failed = |message: String| ConfigError::Render {
            pack: self.pack.to_string(),
            field: field.to_string(),
            value: template.to_string(),
            message,
        };
        let text = self
            .renderer
            .render_str(template, &self.ctx, self.kv)
            .map_err(|e| failed(e.to_string()))?;
        if text.is_empty() {
            return Ok(Value::Null);
        }
        if !secret {
            return Ok(Value::String(text));
        }
        let Some(cipher) = self.renderer.cipher() else {
            return Err(failed(
                "no datastore key to decrypt secret items with".into(),
            ));
        };
        cipher.decrypt(&text).map(Value::String).map_err(|e| {
            failed(format!(
                "{e}; a secret config item must reference a secret (encrypted) datastore key"
            ))
        })
    }
}

/// Reads `<dir>/<pack>.yaml`, the pack's config values, and checks them
/// against `schema` (none: anything goes). `Ok(None)` when there is no such
/// file; the values with defaults filled otherwise.
pub fn read_file(
    dir: &Path,
    pack: &str,
    schema: Option<&Map<String, Value>>,
) -> Result<Option<Map<String, Value>>, Vec<LoadError>> {
    let file = config_file(dir, pack);
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(vec![error(&file, None, None, format!("cannot read: {e}"))]),
    };
    let values =
        parse_values(&text).map_err(|(line, message)| vec![error(&file, line, None, message)])?;
    let Some(schema) = schema else {
        return Ok(Some(values));
    };
    validate(&values, schema).map(Some).map_err(|problems| {
        problems
            .into_iter()
            .map(|(field, message)| {
                let line = loader::line_of(&text, &field);
                error(&file, line, Some(field), message)
            })
            .collect()
    })
}

/// The values of a config file's text: a mapping (an empty file is no
/// values). Errors carry the line when the YAML parser gives one.
pub fn parse_values(text: &str) -> Result<Map<String, Value>, (Option<usize>, String)> {
    let yaml: serde_yaml::Value = serde_yaml::from_str(text)
        .map_err(|e| (e.location().map(|l| l.line()), format!("invalid YAML: {e}")))?;
    match serde_json::to_value(yaml) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(Value::Null) => Ok(Map::new()),
        Ok(_) => Err((Some(1), "expected a mapping of config items".into())),
        Err(e) => Err((None, format!("not representable as JSON: {e}"))),
    }
}

/// `values` with every literal string of a `secret: true` item (one with
/// no Jinja markup; a template is a reference, not a secret) sealed with
/// `cipher`, and the paths of the sealed values, for storing at rest.
pub fn seal(
    values: &Map<String, Value>,
    schema: &Map<String, Value>,
    cipher: &Cipher,
) -> (Map<String, Value>, Vec<Vec<String>>) {
    fn walk(
        map: &mut Map<String, Value>,
        schema: &Value,
        at: &mut Vec<String>,
        cipher: &Cipher,
        sealed: &mut Vec<Vec<String>>,
    ) {
        for (key, value) in map.iter_mut() {
            let Some(sub) = property_schema(schema, key) else {
                continue;
            };
            at.push(key.clone());
            let secret = sub.get("secret") == Some(&Value::Bool(true));
            match value {
                Value::String(s) if secret && !s.contains("{{") && !s.contains("{%") => {
                    *s = cipher.encrypt(s);
                    sealed.push(at.clone());
                }
                Value::Object(inner) => walk(inner, sub, at, cipher, sealed),
                _ => {}
            }
            at.pop();
        }
    }
    let mut out = values.clone();
    let mut sealed = Vec::new();
    let root = json!({ "properties": schema });
    walk(&mut out, &root, &mut Vec::new(), cipher, &mut sealed);
    (out, sealed)
}

/// `values` with the values at `sealed` paths opened again.
pub fn unseal(
    values: &Map<String, Value>,
    sealed: &[Vec<String>],
    cipher: &Cipher,
) -> Result<Map<String, Value>, (String, SecretError)> {
    fn open_at(
        map: &mut Map<String, Value>,
        path: &[String],
        cipher: &Cipher,
    ) -> Result<(), SecretError> {
        match path {
            [last] => {
                if let Some(Value::String(s)) = map.get_mut(last) {
                    *s = cipher.decrypt(s)?;
                }
            }
            [first, rest @ ..] => {
                if let Some(Value::Object(inner)) = map.get_mut(first) {
                    open_at(inner, rest, cipher)?;
                }
            }
            [] => {}
        }
        Ok(())
    }
    let mut out = values.clone();
    for path in sealed {
        open_at(&mut out, path, cipher).map_err(|e| (path.join("."), e))?;
    }
    Ok(out)
}

/// The text of a config file holding `values`.
pub fn file_text(values: &Map<String, Value>) -> Result<String, String> {
    serde_yaml::to_string(values).map_err(|e| e.to_string())
}

/// `<dir>/<pack>.yaml`.
pub fn config_file(dir: &Path, pack: &str) -> PathBuf {
    dir.join(format!("{pack}.yaml"))
}

fn error(file: &Path, line: Option<usize>, field: Option<String>, message: String) -> LoadError {
    LoadError {
        file: file.to_path_buf(),
        line,
        field,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::KvScope;

    /// StackStorm's `contrib/examples/config.schema.yaml`, plus a nested
    /// object and an integer.
    fn schema() -> Map<String, Value> {
        let v = json!({
            "api_key": {"type": "string", "secret": true, "required": true},
            "api_secret": {"type": "string", "secret": true, "required": true},
            "region": {"type": "string", "required": true, "default": "us-east-1"},
            "private_key_path": {"type": "string", "required": false},
            "port": {"type": "integer", "default": 22},
            "auth": {"type": "object", "properties": {
                "user": {"type": "string", "default": "stanley"},
                "token": {"type": "string", "secret": true}}}
        });
        v.as_object().cloned().unwrap_or_default()
    }

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn defaults_fill_and_unknown_keys_pass() {
        let out = validate(
            &map(json!({"api_key": "k", "api_secret": "s", "extra": 1})),
            &schema(),
        )
        .unwrap();
        assert_eq!(out["region"], "us-east-1");
        assert_eq!(out["port"], 22);
        assert_eq!(out["auth"], json!({"user": "stanley"}));
        assert_eq!(out["extra"], 1);
    }

    #[test]
    fn every_problem_is_named() {
        let problems = validate(
            &map(json!({"api_key": 5, "port": "x", "private_key_path": null,
                        "auth": {"user": 3}})),
            &schema(),
        )
        .unwrap_err();
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["api_key", "auth.user", "port", "api_secret"]);
        assert!(problems[0].1.contains("must be string"), "{problems:?}");
        assert_eq!(problems[3].1, "is required");
    }

    #[test]
    fn a_secret_value_never_shows_in_an_error() {
        let problems = validate(
            &map(json!({"api_key": 40417, "api_secret": "s", "auth": {"token": ["t0k3n"]}})),
            &schema(),
        )
        .unwrap_err();
        assert_eq!(
            problems,
            [
                (
                    "api_key".to_string(),
                    "must be string (the value is secret and not shown)".to_string()
                ),
                (
                    "auth.token".to_string(),
                    "must be string or null (the value is secret and not shown)".to_string()
                ),
            ]
        );
    }

    #[test]
    fn literal_secrets_are_sealed_at_rest_and_opened_again() {
        let cipher = Cipher::from_hex(&Cipher::generate_hex()).unwrap();
        let values = map(
            json!({"api_key": "plain", "api_secret": "{{ st2kv.system.s }}",
                                "region": "eu", "auth": {"token": "t0k3n", "user": "u"}}),
        );
        let (stored, sealed) = seal(&values, &schema(), &cipher);
        assert_eq!(
            sealed,
            [
                vec!["api_key".to_string()],
                vec!["auth".into(), "token".into()]
            ]
        );
        let text = Value::Object(stored.clone()).to_string();
        assert!(!text.contains("plain") && !text.contains("t0k3n"), "{text}");
        assert_eq!(stored["api_secret"], "{{ st2kv.system.s }}");
        assert_eq!(stored["region"], "eu");
        assert_eq!(unseal(&stored, &sealed, &cipher).unwrap(), values);
        let other = Cipher::from_hex(&Cipher::generate_hex()).unwrap();
        assert_eq!(unseal(&stored, &sealed, &other).unwrap_err().0, "api_key");
    }

    #[test]
    fn secret_item_with_decrypt_kv_is_refused() {
        let problems = validate(
            &map(json!({"api_key": "{{ st2kv.system.k | decrypt_kv }}", "api_secret": "s"})),
            &schema(),
        )
        .unwrap_err();
        assert_eq!(problems[0].0, "api_key");
    }

    #[test]
    fn secrets_are_masked_at_any_depth() {
        let masked = mask(
            &map(json!({"api_key": "k", "region": "r", "auth": {"token": "t", "user": "u"}})),
            &schema(),
        );
        assert_eq!(
            Value::Object(masked),
            json!({"api_key": MASK, "region": "r", "auth": {"token": MASK, "user": "u"}})
        );
    }

    struct Kv(Cipher);

    impl KeyValueLookup for Kv {
        fn get(&self, scope: KvScope, name: &str) -> Option<String> {
            match (scope, name) {
                (KvScope::System, "key") => Some(self.0.encrypt("opened")),
                (KvScope::System, "region") => Some("eu-west-1".into()),
                (KvScope::User(u), "token") if u == "alice" => Some(self.0.encrypt("alice's")),
                _ => None,
            }
        }
    }

    #[test]
    fn resolve_renders_decrypts_and_fills() {
        let cipher = Cipher::from_hex(&Cipher::generate_hex()).unwrap();
        let kv = Kv(cipher.clone());
        let renderer = Renderer::with_cipher(cipher.clone());
        let values = map(json!({
            "api_key": "{{ st2kv.system.key }}",
            "api_secret": "{{ st2kv.user.token | decrypt_kv }}",
            "region": "{{ st2kv.system.region }}",
            "private_key_path": "{{ st2kv.system.nothing }}",
            "auth": {"token": "{{ st2kv.system.key }}"}
        }));
        let out = resolve(
            "examples",
            &schema(),
            Some(&values),
            "alice",
            &renderer,
            &kv,
        );
        // A secret item takes no `decrypt_kv`; a non-secret one needs it.
        let Err(ConfigError::Invalid { problems, .. }) = out else {
            panic!("{out:?}")
        };
        assert_eq!(problems[0].0, "api_secret");
        let schema = {
            let mut s = schema();
            s.insert(
                "api_secret".into(),
                json!({"type": "string", "required": true}),
            );
            s
        };
        let out = resolve("examples", &schema, Some(&values), "alice", &renderer, &kv).unwrap();
        assert_eq!(
            Value::Object(out),
            json!({"api_key": "opened", "api_secret": "alice's", "region": "eu-west-1",
                   "private_key_path": null, "port": 22,
                   "auth": {"token": "opened", "user": "stanley"}})
        );
    }

    #[test]
    fn resolve_failures_name_pack_and_field() {
        let cipher = Cipher::from_hex(&Cipher::generate_hex()).unwrap();
        let renderer = Renderer::with_cipher(cipher.clone());
        let kv = Kv(cipher.clone());
        let values = map(json!({"api_key": "k", "api_secret": "s",
                                "region": "{{ st2kv.system.gone | decrypt_kv }}"}));
        let err = resolve("examples", &schema(), Some(&values), "u", &renderer, &kv).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("key \"region\""), "{text}");
        assert!(text.contains("pack \"examples\""), "{text}");
        assert!(
            text.contains("Referenced datastore item \"gone\" doesn't exist"),
            "{text}"
        );
        // A secret item whose value is not sealed.
        let values = map(json!({"api_key": "{{ st2kv.system.region }}", "api_secret": "s"}));
        let err = resolve("examples", &schema(), Some(&values), "u", &renderer, &kv).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Render { field, .. } if field == "api_key"),
            "{err}"
        );
        // A stored value the schema no longer accepts.
        let values = map(json!({"api_key": "k", "api_secret": "s", "port": "twenty-two"}));
        let err = resolve("examples", &schema(), Some(&values), "u", &renderer, &kv).unwrap_err();
        assert!(err.to_string().contains("port: must be integer"), "{err}");
        // No stored config: the defaults, unchecked (a required item shows
        // missing only when the action reads it).
        let out = resolve("examples", &schema(), None, "u", &renderer, &kv).unwrap();
        assert_eq!(
            Value::Object(out),
            json!({"region": "us-east-1", "port": 22, "auth": {"user": "stanley"}})
        );
    }

    #[test]
    fn config_files_report_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_file(dir.path(), "examples", Some(&schema())), Ok(None));
        std::fs::write(
            dir.path().join("examples.yaml"),
            "---\napi_key: abc\nport: not-a-number\n",
        )
        .unwrap();
        let errs = read_file(dir.path(), "examples", Some(&schema())).unwrap_err();
        let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
        let file = dir.path().join("examples.yaml").display().to_string();
        assert_eq!(
            shown,
            [
                format!("{file}:3: port: must be integer or null, got \"not-a-number\""),
                format!("{file}: api_secret: is required"),
            ]
        );
    }
}

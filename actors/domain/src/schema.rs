//! JSON Schema validation of the parts StackStorm content uses: `type`
//! (one or a list), `properties`, `required` (draft 4's list and draft 3's
//! `required: true` on a property, which StackStorm's schemas mix),
//! `additionalProperties: false`, `enum`, `items`, `minimum`/`maximum`,
//! `minLength`/`maxLength`, `pattern`. Errors name the failing path.

use serde_json::Value;

/// Problems of `value` against `schema`, each `path: message` (the root is
/// `response`, or whatever `root` says).
pub fn validate(value: &Value, schema: &Value, root: &str) -> Vec<String> {
    let mut errors = Vec::new();
    check(value, schema, root, &mut errors);
    errors
}

fn type_matches(value: &Value, name: &str) -> bool {
    match name {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        _ => true,
    }
}

fn check(value: &Value, schema: &Value, path: &str, errors: &mut Vec<String>) {
    let Some(schema) = schema.as_object() else {
        return;
    };
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    if !types.is_empty() && !types.iter().any(|t| type_matches(value, t)) {
        errors.push(format!(
            "{path}: must be {}, got {value}",
            types.join(" or ")
        ));
        return;
    }
    if let Some(Value::Array(choices)) = schema.get("enum") {
        if !choices.contains(value) {
            let shown: Vec<String> = choices.iter().map(Value::to_string).collect();
            errors.push(format!(
                "{path}: {value} is not one of {}",
                shown.join(", ")
            ));
        }
    }
    if let Some(n) = value.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
            if n < min {
                errors.push(format!("{path}: {n} is less than the minimum {min}"));
            }
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
            if n > max {
                errors.push(format!("{path}: {n} is more than the maximum {max}"));
            }
        }
    }
    if let Some(s) = value.as_str() {
        let len = s.chars().count() as u64;
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
            if len < min {
                errors.push(format!("{path}: shorter than {min} characters"));
            }
        }
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
            if len > max {
                errors.push(format!("{path}: longer than {max} characters"));
            }
        }
        if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
            match regex::Regex::new(pattern) {
                Ok(re) if !re.is_match(s) => {
                    errors.push(format!("{path}: {s:?} does not match {pattern:?}"))
                }
                Ok(_) => {}
                Err(e) => errors.push(format!("{path}: the schema's pattern is invalid: {e}")),
            }
        }
    }
    if let Some(items) = value.as_array() {
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                check(item, item_schema, &format!("{path}.{i}"), errors);
            }
        }
    }
    if let Some(obj) = value.as_object() {
        let props = schema.get("properties").and_then(Value::as_object);
        let mut required: Vec<&str> = match schema.get("required") {
            Some(Value::Array(names)) => names.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        if let Some(props) = props {
            for (name, prop) in props {
                if prop.get("required") == Some(&Value::Bool(true)) {
                    required.push(name);
                }
                if let Some(v) = obj.get(name) {
                    check(v, prop, &format!("{path}.{name}"), errors);
                }
            }
        }
        for name in required {
            if !obj.contains_key(name) {
                errors.push(format!("{path}.{name}: is required"));
            }
        }
        if schema.get("additionalProperties") == Some(&Value::Bool(false)) {
            for name in obj.keys() {
                if !props.is_some_and(|p| p.contains_key(name)) {
                    errors.push(format!("{path}.{name}: is not allowed by the schema"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `core.ask`'s default schema, as StackStorm ships it (draft 3 style).
    fn ask() -> Value {
        json!({"title": "response_data", "type": "object", "properties": {
            "continue": {"type": "boolean", "description": "Would you like to continue the workflow?", "required": true}}})
    }

    #[test]
    fn stackstorm_default_ask_schema() {
        assert!(validate(&json!({"continue": true}), &ask(), "response").is_empty());
        assert_eq!(
            validate(&json!({}), &ask(), "response"),
            vec!["response.continue: is required"]
        );
        assert_eq!(
            validate(&json!({"continue": "yes"}), &ask(), "response"),
            vec!["response.continue: must be boolean, got \"yes\""]
        );
    }

    #[test]
    fn draft4_keywords() {
        let schema = json!({"type": "object", "required": ["n"], "additionalProperties": false,
            "properties": {
                "n": {"type": "integer", "minimum": 1, "maximum": 3},
                "tags": {"type": "array", "items": {"type": "string", "pattern": "^[a-z]+$"}},
                "mode": {"enum": ["a", "b"]},
                "name": {"type": ["string", "null"], "minLength": 2}}});
        assert!(validate(
            &json!({"n": 2, "tags": ["x"], "mode": "a", "name": null}),
            &schema,
            "r"
        )
        .is_empty());
        let errors = validate(
            &json!({"n": 9, "tags": ["X"], "mode": "c", "name": "z", "extra": 1}),
            &schema,
            "r",
        );
        assert_eq!(
            errors,
            vec![
                "r.mode: \"c\" is not one of \"a\", \"b\"",
                "r.n: 9 is more than the maximum 3",
                "r.name: shorter than 2 characters",
                "r.tags.0: \"X\" does not match \"^[a-z]+$\"",
                "r.extra: is not allowed by the schema",
            ]
        );
    }
}

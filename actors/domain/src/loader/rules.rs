//! Rules: trigger, trigger parameters, criteria and the Jinja in them.

use serde_json::Value;
use serde_yaml::{Mapping, Value as Yaml};

use crate::criteria;
use crate::model::RuleDef;
use crate::template::Renderer;
use crate::triggers;

use super::doc::{check_name_with, claim_pack, join, yaml_key, Doc};
use super::Problem;

const RULE_FIELDS: &[&str] = &[
    "name",
    "pack",
    "description",
    "enabled",
    "type",
    "trigger",
    "criteria",
    "action",
    "context",
    "tags",
    "metadata_file",
    "id",
    "ref",
    "uid",
];

pub(super) fn check_rule(pack: Option<&str>, mut doc: Doc<'_>) -> Result<RuleDef, Vec<Problem>> {
    let top = doc.map.clone();
    doc.unknown_fields("", &top, RULE_FIELDS);
    // Rules' names may hold dots too (the `fixtures` pack of StackStorm's
    // tests has `tests.interval_timer`): a ref splits at its first dot.
    check_name_with(&mut doc, true);
    claim_pack(&mut doc, pack);
    for derived in ["id", "ref", "uid"] {
        doc.map.remove(derived);
    }
    let renderer = Renderer::new();

    match doc.get("type").cloned() {
        None => {}
        Some(Yaml::Mapping(t)) => {
            doc.unknown_fields("type", &t, &["ref", "parameters"]);
            match t.get("ref").and_then(Yaml::as_str) {
                Some("standard" | "backstop") | None => {}
                Some(other) => doc.problem(
                    "type.ref",
                    format!("rule type {other:?} is not one of standard, backstop"),
                ),
            }
        }
        Some(_) => doc.problem(
            "type",
            "must be a mapping with `ref: standard` or `ref: backstop`",
        ),
    }

    match doc.get("trigger").cloned() {
        Some(Yaml::Mapping(t)) => check_rule_trigger(&mut doc, &t),
        Some(_) => doc.problem("trigger", "must be a mapping with `type` and `parameters`"),
        None => doc.problem("", "missing required field `trigger`"),
    }

    match doc.get("criteria").cloned() {
        None | Some(Yaml::Null) => {
            doc.map.remove("criteria");
        }
        Some(Yaml::Mapping(c)) => check_criteria(&mut doc, "criteria", &c, &renderer),
        Some(_) => doc.problem(
            "criteria",
            "must be a mapping of payload paths to {type, pattern}",
        ),
    }

    match doc.get("action").cloned() {
        Some(Yaml::Mapping(a)) => {
            doc.unknown_fields("action", &a, &["ref", "parameters"]);
            doc.action_ref(
                "action.ref",
                a.get("ref"),
                ("action", "missing required field `ref`"),
            );
            match a.get("parameters") {
                None | Some(Yaml::Null) | Some(Yaml::Mapping(_)) => {}
                Some(_) => doc.problem("action.parameters", "must be a mapping"),
            }
            if let Some(Yaml::Mapping(params)) = a.get("parameters") {
                for (k, v) in params {
                    let at = format!("action.parameters.{}", yaml_key(k));
                    check_templates(&mut doc, &at, v, &renderer);
                }
            }
        }
        Some(_) => doc.problem("action", "must be a mapping with `ref` and `parameters`"),
        None => doc.problem("", "missing required field `action`"),
    }
    // A rule that names no `enabled` is disabled, as in StackStorm's API.
    doc.into_model()
}

fn check_rule_trigger(doc: &mut Doc<'_>, t: &Mapping) {
    doc.unknown_fields("trigger", t, &["type", "parameters", "ref", "description"]);
    let kind = match t.get("type") {
        Some(Yaml::String(k)) if k.contains('.') => k.clone(),
        Some(Yaml::String(k)) => {
            let k = k.clone();
            doc.problem(
                "trigger.type",
                format!("{k:?} is not a trigger type ref of the form pack.name"),
            );
            return;
        }
        Some(_) => {
            doc.problem("trigger.type", "must be a string such as core.st2.webhook");
            return;
        }
        None => {
            doc.problem("trigger", "missing required field `type`");
            return;
        }
    };
    let params = match t.get("parameters") {
        None | Some(Yaml::Null) => Mapping::new(),
        Some(Yaml::Mapping(p)) => p.clone(),
        Some(_) => {
            doc.problem("trigger.parameters", "must be a mapping");
            return;
        }
    };
    if let Some(schema) = triggers::builtin()
        .into_iter()
        .find(|tt| tt.reference() == kind)
        .and_then(|tt| tt.parameters_schema)
    {
        let params: Value = match serde_json::to_value(&params) {
            Ok(v) => v,
            Err(e) => {
                doc.problem(
                    "trigger.parameters",
                    format!("not representable as JSON: {e}"),
                );
                return;
            }
        };
        for (field, message) in check_trigger_parameters(&kind, &schema, &params) {
            doc.problem(&format!("trigger.parameters{field}"), message);
        }
    }
}

/// Checks trigger parameters against a built-in trigger type's
/// `parameters_schema` (required properties, additional properties, types
/// and enums). Returns `(".field", message)` pairs.
fn check_trigger_parameters(kind: &str, schema: &Value, params: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let props = schema["properties"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let given = params.as_object().cloned().unwrap_or_default();
    for (name, spec) in &props {
        if spec["required"] == Value::Bool(true) && !given.contains_key(name) {
            out.push((
                String::new(),
                format!("trigger type {kind} needs parameter `{name}`"),
            ));
        }
    }
    for (name, value) in &given {
        let Some(spec) = props.get(name) else {
            if schema["additionalProperties"] == Value::Bool(false) {
                let known: Vec<&str> = props.keys().map(String::as_str).collect();
                out.push((
                    format!(".{name}"),
                    format!(
                        "trigger type {kind} has no parameter {name:?}; it takes: {}",
                        known.join(", ")
                    ),
                ));
            }
            continue;
        };
        if let Some(allowed) = spec["enum"].as_array() {
            if !allowed.contains(value) {
                out.push((
                    format!(".{name}"),
                    format!("{value} is not one of {}", Value::Array(allowed.clone())),
                ));
            }
        }
        let types: Vec<&str> = match (&spec["type"], spec["anyOf"].as_array()) {
            (Value::String(t), _) => vec![t.as_str()],
            (_, Some(any)) => any.iter().filter_map(|s| s["type"].as_str()).collect(),
            _ => vec![],
        };
        if !types.is_empty() && !types.iter().any(|t| json_type_matches(t, value)) {
            out.push((
                format!(".{name}"),
                format!("must be of type {}", types.join(" or ")),
            ));
        }
    }
    // A timer whose parameters have the right shape must also make a
    // schedule (a cron field in range, a date that parses...).
    if out.is_empty() {
        if let Some(Err(problems)) = crate::schedule::Schedule::of(kind, &given) {
            out.extend(
                problems
                    .into_iter()
                    .map(|(field, m)| (format!(".{field}"), m)),
            );
        }
    }
    out
}

fn json_type_matches(kind: &str, value: &Value) -> bool {
    match kind {
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        "null" => value.is_null(),
        _ => true,
    }
}

fn check_criteria(doc: &mut Doc<'_>, at: &str, criteria: &Mapping, renderer: &Renderer) {
    for (key, criterion) in criteria {
        let key = yaml_key(key);
        let here = join(at, &key);
        let Yaml::Mapping(c) = criterion else {
            doc.problem(&here, "must be a mapping with `type` and `pattern`");
            continue;
        };
        doc.unknown_fields(&here, c, &["type", "pattern", "condition"]);
        let op = match c.get("type") {
            Some(Yaml::String(op)) => op.clone(),
            Some(_) => {
                doc.problem(&format!("{here}.type"), "must be an operator name");
                continue;
            }
            None => {
                doc.problem(&here, "missing required field `type` (the operator)");
                continue;
            }
        };
        if !criteria::is_known_operator(&op) {
            doc.problem(
                &format!("{here}.type"),
                format!("unknown criteria operator {op:?}"),
            );
            continue;
        }
        if op.eq_ignore_ascii_case("search") {
            match c.get("condition").and_then(Yaml::as_str) {
                Some("any" | "all" | "any2any" | "all2any") => {}
                Some(other) => doc.problem(
                    &format!("{here}.condition"),
                    format!("{other:?} is not one of any, all, any2any, all2any"),
                ),
                None => doc.problem(
                    &here,
                    "a search criterion needs `condition`: any, all, any2any or all2any",
                ),
            }
            match c.get("pattern") {
                Some(Yaml::Mapping(children)) => {
                    check_criteria(doc, &format!("{here}.pattern"), children, renderer);
                }
                _ => doc.problem(
                    &format!("{here}.pattern"),
                    "a search pattern maps item paths (item.x) to criteria",
                ),
            }
        } else if let Some(pattern) = c.get("pattern") {
            check_templates(doc, &format!("{here}.pattern"), pattern, renderer);
        }
    }
}

/// Reports Jinja syntax errors in every string inside `value`.
pub(super) fn check_templates(doc: &mut Doc<'_>, at: &str, value: &Yaml, renderer: &Renderer) {
    match value {
        Yaml::String(s) => {
            if let Err(e) = renderer.check_syntax(s) {
                doc.problem(at, format!("template error: {e}"));
            }
        }
        Yaml::Sequence(items) => {
            for item in items {
                check_templates(doc, at, item, renderer);
            }
        }
        Yaml::Mapping(map) => {
            for (k, v) in map {
                check_templates(doc, &join(at, &yaml_key(k)), v, renderer);
            }
        }
        _ => {}
    }
}

//! Action metadata: fields, entry points, notify, parameter schemas.

use std::collections::BTreeMap;
use std::path::Path;

use serde_yaml::{Mapping, Value as Yaml};

use crate::model::ActionDef;
use crate::runner_types;

use super::doc::{check_name, claim_pack, yaml_key, Doc};
use super::Problem;

/// Fields StackStorm's action schema allows (`contrib/schemas/action.json`).
const ACTION_FIELDS: &[&str] = &[
    "name",
    "runner_type",
    "description",
    "enabled",
    "entry_point",
    "pack",
    "parameters",
    "output_schema",
    "output_key",
    "tags",
    "notify",
    "metadata_file",
    "id",
    "ref",
    "uid",
];

/// Keys a parameter definition may use: JSON-schema draft 4 plus
/// StackStorm's `required`, `secret`, `immutable`, `position`.
const PARAM_FIELDS: &[&str] = &[
    "type",
    "description",
    "default",
    "required",
    "secret",
    "immutable",
    "position",
    "enum",
    "items",
    "additionalItems",
    "properties",
    "patternProperties",
    "additionalProperties",
    "dependencies",
    "pattern",
    "format",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "anyOf",
    "oneOf",
    "allOf",
    "not",
    "title",
    "$schema",
    "id",
];

const PARAM_TYPES: &[&str] = &[
    "array", "boolean", "integer", "null", "number", "object", "string",
];

/// Runners whose `entry_point` names a file under `actions/`.
const FILE_RUNNERS: &[&str] = &[
    "local-shell-script",
    "remote-shell-script",
    "python-script",
    "orquesta",
    "action-chain",
    "winrm-ps-script",
];

pub(super) fn check_action(
    pack_dir: &Path,
    pack: Option<&str>,
    mut doc: Doc<'_>,
) -> Result<ActionDef, Vec<Problem>> {
    let top = doc.map.clone();
    doc.unknown_fields("", &top, ACTION_FIELDS);
    check_name(&mut doc);
    claim_pack(&mut doc, pack);
    for derived in ["id", "ref", "uid"] {
        doc.map.remove(derived);
    }
    let runner = match doc.get("runner_type").cloned() {
        Some(Yaml::String(r)) => match runner_types::lookup(&r) {
            Some(rt) => Some(rt),
            None => {
                let known: Vec<&str> = runner_types::all().iter().map(|r| r.name).collect();
                doc.problem(
                    "runner_type",
                    format!("unknown runner type {r:?}; known: {}", known.join(", ")),
                );
                None
            }
        },
        Some(_) => {
            doc.problem("runner_type", "must be a string");
            None
        }
        None => {
            doc.problem("", "missing required field `runner_type`");
            None
        }
    };
    if let Some(rt) = &runner {
        doc.map
            .insert("runner_type".into(), Yaml::String(rt.name.into()));
        let entry = doc.str_field("entry_point").unwrap_or_default().to_string();
        if FILE_RUNNERS.contains(&rt.name) {
            if entry.is_empty() {
                doc.problem(
                    "entry_point",
                    format!(
                        "runner {} needs an entry_point file under actions/",
                        rt.name
                    ),
                );
            } else if !pack_dir.join("actions").join(&entry).is_file() {
                doc.problem(
                    "entry_point",
                    format!("file actions/{entry} does not exist in the pack"),
                );
            }
        }
    }
    match doc.get("parameters").cloned() {
        None | Some(Yaml::Null) => {
            doc.map.remove("parameters");
        }
        Some(Yaml::Mapping(params)) => check_params(&mut doc, &params),
        Some(_) => doc.problem(
            "parameters",
            "must be a mapping of parameter names to definitions",
        ),
    }
    match doc.get("notify").cloned() {
        None | Some(Yaml::Null) => {
            doc.map.remove("notify");
        }
        Some(Yaml::Mapping(notify)) => check_notify(&mut doc, &notify),
        Some(_) => doc.problem(
            "notify",
            "must be a mapping of on-complete, on-success, on-failure",
        ),
    }
    doc.into_model()
}

/// StackStorm's notify schema: sections `on-complete`, `on-success`,
/// `on-failure`, each `{message: string, data: mapping, routes: [string]}`
/// (`channels`, the old name of `routes`, is accepted).
fn check_notify(doc: &mut Doc<'_>, notify: &Mapping) {
    const SECTIONS: &[&str] = &["on-complete", "on-success", "on-failure"];
    const FIELDS: &[&str] = &["message", "data", "routes", "channels"];
    doc.unknown_fields("notify", notify, SECTIONS);
    for (key, section) in notify {
        let at = format!("notify.{}", yaml_key(key));
        let Yaml::Mapping(section) = section else {
            doc.problem(&at, "must be a mapping with message, data and routes");
            continue;
        };
        doc.unknown_fields(&at, section, FIELDS);
        if section.get("message").is_some_and(|m| !m.is_string()) {
            doc.problem(&format!("{at}.message"), "must be a string");
        }
        if section.get("data").is_some_and(|d| !d.is_mapping()) {
            doc.problem(&format!("{at}.data"), "must be a mapping");
        }
        for list in ["routes", "channels"] {
            let ok = section.get(list).is_none_or(|r| {
                r.as_sequence()
                    .is_some_and(|items| items.iter().all(Yaml::is_string))
            });
            if !ok {
                doc.problem(&format!("{at}.{list}"), "must be a list of route names");
            }
        }
    }
}

fn check_params(doc: &mut Doc<'_>, params: &Mapping) {
    let mut positions: BTreeMap<u64, String> = BTreeMap::new();
    for (key, spec) in params {
        let name = yaml_key(key);
        let at = format!("parameters.{name}");
        if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
            doc.problem(
                &at,
                format!("parameter name {name:?} may only contain letters, digits and underscores"),
            );
        }
        let Yaml::Mapping(spec) = spec else {
            doc.problem(&at, "must be a mapping (type, description, default...)");
            continue;
        };
        check_param_keywords(doc, &at, spec);
        match spec.get("position") {
            None => {}
            Some(Yaml::Number(n)) if n.as_u64().is_some() => {
                let p = n.as_u64().unwrap_or_default();
                if let Some(other) = positions.insert(p, name.clone()) {
                    doc.problem(
                        &format!("{at}.position"),
                        format!("position {p} is also used by parameter {other:?}"),
                    );
                }
            }
            Some(_) => doc.problem(&format!("{at}.position"), "must be an integer >= 0"),
        }
        if let Some(allowed) = spec.get("enum") {
            if !allowed.is_sequence() {
                doc.problem(&format!("{at}.enum"), "must be a list of allowed values");
            }
        }
    }
}

/// The keywords of one parameter schema: only known ones, one simple
/// `type`, boolean `required` / `secret` / `immutable`.
pub(super) fn check_param_keywords(doc: &mut Doc<'_>, at: &str, spec: &Mapping) {
    doc.unknown_fields(at, spec, PARAM_FIELDS);
    match spec.get("type") {
        None => {}
        Some(Yaml::String(t)) if PARAM_TYPES.contains(&t.as_str()) => {}
        Some(Yaml::Sequence(ts))
            if ts
                .iter()
                .all(|t| t.as_str().is_some_and(|t| PARAM_TYPES.contains(&t))) =>
        {
            doc.problem(
                &format!("{at}.type"),
                "a list of types is not supported; use anyOf",
            );
        }
        Some(other) => doc.problem(
            &format!("{at}.type"),
            format!(
                "{:?} is not one of {}",
                yaml_key(other),
                PARAM_TYPES.join(", ")
            ),
        ),
    }
    for flag in ["required", "secret", "immutable"] {
        if let Some(v) = spec.get(flag) {
            if !v.is_bool() {
                doc.problem(&format!("{at}.{flag}"), "must be true or false");
            }
        }
    }
}

//! The pack's own files: `pack.yaml` and `config.schema.yaml`.

use std::path::Path;

use serde_json::{Map, Value};
use serde_yaml::Value as Yaml;

use crate::model::PackMeta;
use crate::pack_config;

use super::actions::check_param_keywords;
use super::doc::{read_file, yaml_key, Doc, Errors};
use super::Problem;

fn is_pack_ref(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

pub(super) fn read_manifest(dir: &Path, errs: &mut Errors) -> Option<PackMeta> {
    let file = dir.join("pack.yaml");
    if !file.is_file() {
        errs.push(
            &file,
            None,
            None,
            "missing: every pack needs a pack.yaml manifest with at least `name`".into(),
        );
        return None;
    }
    read_file(&file, errs, check_manifest)
}

fn check_manifest(mut doc: Doc<'_>) -> Result<PackMeta, Vec<Problem>> {
    match doc.get("name") {
        Some(Yaml::String(_)) => {}
        Some(_) => doc.problem("name", "must be a string"),
        None => doc.problem("", "missing required field `name`"),
    }
    let name = doc.str_field("name").unwrap_or_default().to_string();
    match doc.get("ref").cloned() {
        Some(Yaml::String(r)) if !is_pack_ref(&r) => doc.problem(
            "ref",
            format!("{r:?} may only contain lowercase letters, digits and underscores"),
        ),
        Some(Yaml::String(_)) => {}
        Some(_) => doc.problem("ref", "must be a string"),
        None if !name.is_empty() && !is_pack_ref(&name) => doc.problem(
            "name",
            format!(
                "{name:?} is not a valid pack ref; add `ref:` with lowercase letters, digits and underscores only"
            ),
        ),
        None => {
            doc.map.insert("ref".into(), Yaml::String(name.clone()));
        }
    }
    match doc.get("version").cloned() {
        None => doc.problem(
            "version",
            "missing required field `version`: StackStorm requires a semantic version such as 1.0.0",
        ),
        Some(v) => {
        let text = match &v {
            Yaml::String(s) => s.clone(),
            Yaml::Number(n) => n.to_string(),
            _ => String::new(),
        };
        match normalize_version(&text) {
            Some(norm) => {
                doc.map.insert("version".into(), Yaml::String(norm));
            }
            None => doc.problem(
                "version",
                format!("{text:?} is not a semantic version such as 1.0.0"),
            ),
        }
        }
    }
    doc.into_model()
}

/// StackStorm accepts `1` and `1.2` and means `1.0.0` / `1.2.0`.
fn normalize_version(text: &str) -> Option<String> {
    let parts = text.split('.').count();
    let full = match parts {
        1 => format!("{text}.0.0"),
        2 => format!("{text}.0"),
        _ => text.to_string(),
    };
    semver::Version::parse(&full).ok().map(|_| full)
}

/// Reads the pack's `config.schema.yaml`, if it has one.
pub(super) fn read_config_schema(dir: &Path, errs: &mut Errors) -> Option<Map<String, Value>> {
    let file = dir.join(pack_config::SCHEMA_FILE);
    if !file.is_file() {
        return None;
    }
    let empty = std::fs::read_to_string(&file)
        .is_ok_and(|text| serde_yaml::from_str::<Yaml>(&text).is_ok_and(|y| y.is_null()));
    if empty {
        errs.push(
            &file,
            None,
            None,
            "the config schema is empty and invalid (as in StackStorm): define its items, or delete the file".into(),
        );
        return None;
    }
    read_file(&file, errs, check_config_schema)
}

/// A config schema: item name (`^\w+$`) → parameter schema in StackStorm's
/// dialect, nested schemas checked the same way.
fn check_config_schema(mut doc: Doc<'_>) -> Result<Map<String, Value>, Vec<Problem>> {
    let top = doc.map.clone();
    for (key, spec) in &top {
        let name = yaml_key(key);
        if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
            doc.problem(
                &name,
                format!("item name {name:?} may only contain letters, digits and underscores"),
            );
        }
        check_schema_item(&mut doc, &name, spec);
    }
    if !doc.problems.is_empty() {
        return Err(doc.problems);
    }
    match serde_json::to_value(Yaml::Mapping(top)) {
        Ok(Value::Object(schema)) => Ok(schema),
        Ok(_) => Err(vec![Problem {
            line: Some(1),
            field: None,
            message: "expected a mapping of config items".into(),
        }]),
        Err(e) => Err(vec![Problem {
            line: None,
            field: None,
            message: format!("not representable as JSON: {e}"),
        }]),
    }
}

fn check_schema_item(doc: &mut Doc<'_>, at: &str, spec: &Yaml) {
    let Yaml::Mapping(spec) = spec else {
        doc.problem(at, "must be a mapping (type, description, default...)");
        return;
    };
    check_param_keywords(doc, at, spec);
    match spec.get("properties") {
        None => {}
        Some(Yaml::Mapping(props)) => {
            for (k, v) in props {
                check_schema_item(doc, &format!("{at}.properties.{}", yaml_key(k)), v);
            }
        }
        Some(_) => doc.problem(
            &format!("{at}.properties"),
            "must be a mapping of property names to schemas",
        ),
    }
    match spec.get("patternProperties") {
        None => {}
        Some(Yaml::Mapping(props)) => {
            for (k, v) in props {
                let pattern = yaml_key(k);
                if let Err(e) = regex::Regex::new(&pattern) {
                    doc.problem(
                        &format!("{at}.patternProperties"),
                        format!("{pattern:?} is not a valid regular expression: {e}"),
                    );
                }
                check_schema_item(doc, &format!("{at}.patternProperties.{pattern}"), v);
            }
        }
        Some(_) => doc.problem(
            &format!("{at}.patternProperties"),
            "must be a mapping of patterns to schemas",
        ),
    }
    for key in ["additionalProperties", "additionalItems"] {
        match spec.get(key) {
            None | Some(Yaml::Bool(_)) => {}
            Some(s @ Yaml::Mapping(_)) => check_schema_item(doc, &format!("{at}.{key}"), s),
            Some(_) => doc.problem(&format!("{at}.{key}"), "must be true, false or a schema"),
        }
    }
    match spec.get("items") {
        None => {}
        Some(s @ Yaml::Mapping(_)) => check_schema_item(doc, &format!("{at}.items"), s),
        Some(Yaml::Sequence(list)) => {
            for (i, s) in list.iter().enumerate() {
                check_schema_item(doc, &format!("{at}.items.{i}"), s);
            }
        }
        Some(_) => doc.problem(
            &format!("{at}.items"),
            "must be a schema or a list of schemas",
        ),
    }
}

//! Trigger types and sensors (with the trigger types a sensor declares).

use std::path::Path;

use serde_yaml::Value as Yaml;

use crate::model::{SensorDef, TriggerTypeDef};

use super::doc::{check_name_with, claim_pack, join, Doc};
use super::Problem;

const TRIGGER_TYPE_FIELDS: &[&str] = &[
    "name",
    "pack",
    "description",
    "payload_schema",
    "parameters_schema",
    "tags",
    "metadata_file",
    "id",
    "ref",
    "uid",
];

const SENSOR_FIELDS: &[&str] = &[
    "name",
    "pack",
    "class_name",
    "entry_point",
    "description",
    "enabled",
    "poll_interval",
    "trigger_types",
    "artifact_uri",
    "metadata_file",
    "id",
    "ref",
    "uid",
];

pub(super) fn check_trigger_type(
    pack: Option<&str>,
    mut doc: Doc<'_>,
    at: &str,
) -> Result<TriggerTypeDef, Vec<Problem>> {
    let top = doc.map.clone();
    doc.unknown_fields(at, &top, TRIGGER_TYPE_FIELDS);
    // StackStorm's own trigger types have dots (`linux.file_watch.line`).
    check_name_with(&mut doc, true);
    claim_pack(&mut doc, pack);
    for derived in ["id", "ref", "uid"] {
        doc.map.remove(derived);
    }
    for schema in ["payload_schema", "parameters_schema"] {
        if let Some(v) = doc.get(schema) {
            if !v.is_mapping() && !v.is_null() {
                doc.problem(&join(at, schema), "must be a JSON schema (a mapping)");
            }
        }
    }
    doc.into_model()
}

/// Shortest poll interval StackStorm accepts.
const MIN_POLL_INTERVAL: u64 = 4;

/// A sensor's metadata: the sensor, and the trigger types it declares.
/// `dir` is the directory of the metadata file, where `entry_point` is.
pub(super) fn check_sensor(
    pack: Option<&str>,
    dir: &Path,
    mut doc: Doc<'_>,
) -> Result<(SensorDef, Vec<TriggerTypeDef>), Vec<Problem>> {
    let top = doc.map.clone();
    doc.unknown_fields("", &top, SENSOR_FIELDS);
    let trigger_types = match doc.get("trigger_types").cloned() {
        None | Some(Yaml::Null) => Vec::new(),
        Some(Yaml::Sequence(items)) => items,
        Some(_) => {
            doc.problem(
                "trigger_types",
                "must be a list of trigger type definitions",
            );
            Vec::new()
        }
    };
    let mut out = Vec::new();
    for (i, item) in trigger_types.into_iter().enumerate() {
        let at = format!("trigger_types.{i}");
        let Yaml::Mapping(map) = item else {
            doc.problem(&at, "must be a mapping with `name`");
            continue;
        };
        let sub = Doc {
            text: doc.text,
            map,
            problems: Vec::new(),
        };
        match check_trigger_type(pack, sub, "trigger_types") {
            Ok(t) => out.push(t),
            Err(problems) => doc.problems.extend(problems.into_iter().map(|p| Problem {
                field: Some(match p.field {
                    Some(f) if f.starts_with("trigger_types") => f,
                    Some(f) => format!("{at}.{f}"),
                    None => at.clone(),
                }),
                ..p
            })),
        }
    }
    let class_name = match doc.str_field("class_name") {
        Some(c) if is_python_name(c) => c.to_string(),
        Some(c) => {
            let c = c.to_string();
            doc.problem("class_name", format!("{c:?} is not a Python class name"));
            String::new()
        }
        None => {
            doc.problem("class_name", "missing: the sensor's Python class");
            String::new()
        }
    };
    let entry_point = match doc.str_field("entry_point") {
        Some(e) if dir.join(e).is_file() => e.to_string(),
        Some(e) => {
            let e = e.to_string();
            doc.problem(
                "entry_point",
                format!("{e:?}: no such file next to the metadata file"),
            );
            String::new()
        }
        None => {
            doc.problem(
                "entry_point",
                "missing: the .py file holding the sensor class",
            );
            String::new()
        }
    };
    let poll_interval = match doc.get("poll_interval") {
        None | Some(Yaml::Null) => None,
        Some(v) => match v.as_f64() {
            // StackStorm casts to an integer.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Some(n) if n >= MIN_POLL_INTERVAL as f64 => Some(n as u64),
            Some(_) => {
                doc.problem(
                    "poll_interval",
                    format!("Minimum possible poll_interval is {MIN_POLL_INTERVAL} seconds"),
                );
                None
            }
            None => {
                doc.problem("poll_interval", "must be a number of seconds");
                None
            }
        },
    };
    let enabled = match doc.get("enabled") {
        None | Some(Yaml::Null) => true,
        Some(Yaml::Bool(b)) => *b,
        Some(_) => {
            doc.problem("enabled", "must be true or false");
            true
        }
    };
    claim_pack(&mut doc, pack);
    let sensor_pack = doc.str_field("pack").unwrap_or_default().to_string();
    let description = doc.str_field("description").unwrap_or_default().to_string();
    if !doc.problems.is_empty() {
        return Err(doc.problems);
    }
    let sensor = SensorDef {
        class_name,
        pack: sensor_pack,
        description,
        enabled,
        entry_point,
        poll_interval,
        trigger_types: out.iter().map(TriggerTypeDef::reference).collect(),
        metadata_file: String::new(),
    };
    Ok((sensor, out))
}

/// Whether `s` can name a Python class.
fn is_python_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

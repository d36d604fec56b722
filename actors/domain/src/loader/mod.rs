//! Reading packs from disk in StackStorm's layout, reporting every problem
//! with file, line and field.
//!
//! A pack is read whole: `pack.yaml`, `actions/*.yaml`, `rules/*.yaml`,
//! `triggers/*.yaml`, `policies/*.yaml` and the trigger types declared in
//! `sensors/*.yaml` (the sensors and the trigger types they declare).
//! Every file is checked and every problem collected, so a user fixes a
//! broken pack in one pass instead of one error at a time; a pack with any
//! error yields no [`PackBundle`] at all. `config.schema.yaml` is read and
//! checked in StackStorm's dialect (see [`crate::pack_config`]), and
//! `aliases/*.yaml`, whose format strings must compile and must not repeat
//! another alias's of the same pack (see [`crate::aliases`]).
//!
//! User YAML is strict: unknown fields are errors (StackStorm's schemas
//! forbid them too), while `pack.yaml` keeps extra fields as StackStorm
//! allows. Lines are found from the YAML text: syntax errors carry the
//! parser's position, and field errors point at the line of that field's
//! key.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::aliases::AliasDef;
use crate::model::{
    ActionDef, PackBundle, PolicyDef, RuleDef, SensorDef, TriggerTypeDef, BUNDLE_VERSION,
};

mod actions;
mod aliases;
mod doc;
mod manifest;
mod policies;
mod rules;
mod sensors;
#[cfg(test)]
mod tests;

use actions::check_action;
use aliases::{check_alias, check_alias_formats};
pub(crate) use doc::line_of;
use doc::{parse_doc, read_file, yaml_files, Errors};
use manifest::{read_config_schema, read_manifest};
use policies::check_policy;
use rules::check_rule;
use sensors::{check_sensor, check_trigger_type};

/// One problem in a pack: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    /// The file, as a path inside the pack directory's parent when possible
    /// (`mypack/rules/x.yaml`), else absolute.
    pub file: PathBuf,
    /// 1-based line of the problem, when it can be located.
    pub line: Option<usize>,
    /// Dotted path of the offending field (`criteria.trigger.body.x.type`).
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in one pack.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct LoadErrors {
    /// The pack directory as given.
    pub pack: PathBuf,
    pub errors: Vec<LoadError>,
}

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        write!(
            f,
            "pack {} has {n} error{}:",
            self.pack.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

/// Inspects the Orquesta workflows of a loaded pack: every problem of every
/// workflow, filed under its file and line. They are warnings, not errors:
/// as in StackStorm, a workflow with problems still registers (StackStorm's
/// own examples ship deliberately broken ones) and its execution fails with
/// them when it runs; registration reports them so nobody finds out at 2 a.m.
pub fn inspect_workflows(dir: &Path, bundle: &PackBundle) -> Vec<LoadError> {
    let mut errs = Errors::new(dir);
    let actions = dir.join("actions");
    for action in bundle
        .actions
        .iter()
        .filter(|a| a.runner_type == "orquesta")
    {
        let file = actions.join(&action.entry_point);
        // A missing file is already an error against the action's entry_point.
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for issue in crate::orquesta::inspect(&text).1 {
            let field = (!issue.spec_path.is_empty()).then(|| issue.spec_path.clone());
            errs.push(&file, issue.line, field, issue.message);
        }
    }
    errs.list
}

/// Loads and validates the pack in `dir`.
pub fn load_pack(dir: &Path) -> Result<PackBundle, LoadErrors> {
    let mut errs = Errors::new(dir);
    let path = match dir.canonicalize() {
        Ok(p) => p,
        Err(e) => {
            errs.push(dir, None, None, format!("cannot open pack directory: {e}"));
            return Err(errs.finish());
        }
    };
    let meta = read_manifest(&path, &mut errs);
    let pack_ref = meta.as_ref().map(|m| m.pack_ref.clone());
    let config_schema = read_config_schema(&path, &mut errs);

    let mut actions = Vec::new();
    for file in yaml_files(&path.join("actions"), &mut errs) {
        if let Some(a) = read_file(&file, &mut errs, |doc| {
            check_action(&path, pack_ref.as_deref(), doc)
        }) {
            actions.push(ActionDef {
                metadata_file: metadata_file(&path, &file),
                ..a
            });
        }
    }
    let mut rules = Vec::new();
    for file in yaml_files(&path.join("rules"), &mut errs) {
        if let Some(r) = read_file(&file, &mut errs, |doc| check_rule(pack_ref.as_deref(), doc)) {
            rules.push(RuleDef {
                metadata_file: metadata_file(&path, &file),
                ..r
            });
        }
    }
    let mut trigger_types = Vec::new();
    for file in yaml_files(&path.join("triggers"), &mut errs) {
        if let Some(t) = read_file(&file, &mut errs, |doc| {
            check_trigger_type(pack_ref.as_deref(), doc, "")
        }) {
            trigger_types.push(TriggerTypeDef {
                metadata_file: metadata_file(&path, &file),
                ..t
            });
        }
    }
    let mut sensors = Vec::new();
    let sensors_dir = path.join("sensors");
    for file in yaml_files(&sensors_dir, &mut errs) {
        if let Some((sensor, ts)) = read_file(&file, &mut errs, |doc| {
            check_sensor(pack_ref.as_deref(), &sensors_dir, doc)
        }) {
            let file = metadata_file(&path, &file);
            trigger_types.extend(ts.into_iter().map(|t| TriggerTypeDef {
                metadata_file: file.clone(),
                ..t
            }));
            sensors.push(SensorDef {
                metadata_file: file,
                ..sensor
            });
        }
    }

    let mut policies = Vec::new();
    for file in yaml_files(&path.join("policies"), &mut errs) {
        if let Some(p) = read_file(&file, &mut errs, |doc| {
            check_policy(pack_ref.as_deref(), doc)
        }) {
            policies.push(PolicyDef {
                metadata_file: metadata_file(&path, &file),
                ..p
            });
        }
    }

    let mut aliases = Vec::new();
    for file in yaml_files(&path.join("aliases"), &mut errs) {
        if let Some(a) = read_file(&file, &mut errs, |doc| {
            check_alias(pack_ref.as_deref(), doc)
        }) {
            aliases.push(AliasDef {
                metadata_file: metadata_file(&path, &file),
                ..a
            });
        }
    }

    let pack_root = &path;
    check_unique(
        &mut errs,
        pack_root,
        aliases.iter().map(|a| (&a.name, &a.metadata_file)),
        "alias",
    );
    check_alias_formats(&mut errs, pack_root, &aliases);
    check_unique(
        &mut errs,
        pack_root,
        policies.iter().map(|p| (&p.name, &p.metadata_file)),
        "policy",
    );
    check_unique(
        &mut errs,
        pack_root,
        actions.iter().map(|a| (&a.name, &a.metadata_file)),
        "action",
    );
    check_unique(
        &mut errs,
        pack_root,
        rules.iter().map(|r| (&r.name, &r.metadata_file)),
        "rule",
    );
    check_unique(
        &mut errs,
        pack_root,
        sensors.iter().map(|s| (&s.class_name, &s.metadata_file)),
        "sensor",
    );
    check_unique(
        &mut errs,
        pack_root,
        trigger_types.iter().map(|t| (&t.name, &t.metadata_file)),
        "trigger type",
    );

    match meta {
        Some(pack) if errs.is_empty() => Ok(PackBundle {
            version: BUNDLE_VERSION,
            pack,
            path: path.display().to_string(),
            actions,
            rules,
            trigger_types,
            policies,
            config_schema,
            sensors,
            aliases,
            registered: BTreeMap::new(),
            files: None,
        }),
        _ => Err(errs.finish()),
    }
}

/// Parses one action metadata document; `pack` is the owning pack's ref.
/// `pack_dir` is where `entry_point` files are looked up.
pub fn parse_action(pack_dir: &Path, pack: &str, text: &str) -> Result<ActionDef, Vec<Problem>> {
    parse_doc(text, |doc| check_action(pack_dir, Some(pack), doc))
}

/// Parses one rule document; `pack` is the pack it must belong to, or
/// `None` to take the document's own `pack` (default `default`).
pub fn parse_rule(pack: Option<&str>, text: &str) -> Result<RuleDef, Vec<Problem>> {
    parse_doc(text, |doc| check_rule(pack, doc))
}

/// Parses one action alias document; `pack` is the pack it must belong
/// to, or `None` to take the document's own `pack` (default `default`).
pub fn parse_alias(pack: Option<&str>, text: &str) -> Result<AliasDef, Vec<Problem>> {
    parse_doc(text, |doc| check_alias(pack, doc))
}

/// A problem in one document, without its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: Option<usize>,
    pub field: Option<String>,
    pub message: String,
}

impl Problem {
    /// Problems of a document that has no file of its own (an API body),
    /// as one line: `field: message; field: message`.
    pub fn join(problems: &[Problem]) -> String {
        problems
            .iter()
            .map(|p| match &p.field {
                Some(f) => format!("{f}: {}", p.message),
                None => p.message.clone(),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Reports names used by more than one file of the same kind.
fn check_unique<'a>(
    errs: &mut Errors,
    pack_dir: &Path,
    items: impl Iterator<Item = (&'a String, &'a String)>,
    kind: &str,
) {
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    for (name, file) in items {
        match seen.get(name.as_str()) {
            Some(first) => {
                let path = pack_dir.join(file);
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                errs.push(
                    &path,
                    line_of(&text, "name"),
                    Some("name".into()),
                    format!("{kind} {name:?} is also defined in {first}"),
                );
            }
            None => {
                seen.insert(name, file);
            }
        }
    }
}

/// `file` relative to the pack root, as StackStorm's `metadata_file`.
fn metadata_file(pack_dir: &Path, file: &Path) -> String {
    file.strip_prefix(pack_dir)
        .unwrap_or(file)
        .display()
        .to_string()
}

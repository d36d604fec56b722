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

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use serde_yaml::{Mapping, Value as Yaml};

use crate::aliases::{AliasDef, CompiledFormat};
use crate::criteria;
use crate::model::{
    ActionDef, PackBundle, PackMeta, PolicyDef, RuleDef, SensorDef, TriggerTypeDef, BUNDLE_VERSION,
};
use crate::pack_config;
use crate::runner_types;
use crate::template::Renderer;
use crate::triggers;

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

const POLICY_FIELDS: &[&str] = &[
    "name",
    "pack",
    "description",
    "enabled",
    "resource_ref",
    "policy_type",
    "parameters",
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

/// Runners whose `entry_point` names a file under `actions/`.
const FILE_RUNNERS: &[&str] = &[
    "local-shell-script",
    "remote-shell-script",
    "python-script",
    "orquesta",
    "action-chain",
    "winrm-ps-script",
];

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

// ---------------------------------------------------------------------------
// Collecting errors
// ---------------------------------------------------------------------------

struct Errors {
    pack: PathBuf,
    /// Files are shown relative to this (the pack directory's parent).
    base: Option<PathBuf>,
    list: Vec<LoadError>,
}

impl Errors {
    fn new(pack: &Path) -> Self {
        let base = pack
            .canonicalize()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf));
        Self {
            pack: pack.to_path_buf(),
            base,
            list: Vec::new(),
        }
    }

    fn push(&mut self, file: &Path, line: Option<usize>, field: Option<String>, message: String) {
        let file = self
            .base
            .as_ref()
            .and_then(|b| file.strip_prefix(b).ok())
            .map_or_else(|| file.to_path_buf(), Path::to_path_buf);
        self.list.push(LoadError {
            file,
            line,
            field,
            message,
        });
    }

    fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    fn finish(self) -> LoadErrors {
        LoadErrors {
            pack: self.pack,
            errors: self.list,
        }
    }
}

/// One YAML document being checked: its text (for line lookups), its
/// parsed mapping, and the problems found so far.
struct Doc<'a> {
    text: &'a str,
    map: Mapping,
    problems: Vec<Problem>,
}

impl Doc<'_> {
    /// Records a problem at `field` (a dotted path), locating its line.
    fn problem(&mut self, field: &str, message: impl Into<String>) {
        let line = line_of(self.text, field);
        self.problems.push(Problem {
            line,
            field: (!field.is_empty()).then(|| field.to_string()),
            message: message.into(),
        });
    }

    fn get(&self, key: &str) -> Option<&Yaml> {
        self.map.get(key)
    }

    fn str_field(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Yaml::as_str)
    }

    /// Reports every key of the mapping at `at` (`""` for the top) that is
    /// not in `allowed`.
    fn unknown_fields(&mut self, at: &str, map: &Mapping, allowed: &[&str]) {
        for key in map.keys() {
            let name = yaml_key(key);
            if !allowed.contains(&name.as_str()) {
                let field = join(at, &name);
                self.problem(
                    &field,
                    format!(
                        "unknown field {name:?}; expected one of: {}",
                        allowed.join(", ")
                    ),
                );
            }
        }
    }

    /// Deserialises the (checked and completed) mapping into `T`, turning a
    /// type error into a problem at the field it concerns.
    fn into_model<T: DeserializeOwned>(mut self) -> Result<T, Vec<Problem>> {
        if !self.problems.is_empty() {
            return Err(self.problems);
        }
        let value = Yaml::Mapping(std::mem::take(&mut self.map));
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => Ok(v),
            Err(e) => {
                let path = e.path().to_string();
                let field = if path == "." { String::new() } else { path };
                self.problem(&field, e.into_inner().to_string());
                Err(self.problems)
            }
        }
    }
}

fn join(at: &str, key: &str) -> String {
    if at.is_empty() {
        key.to_string()
    } else {
        format!("{at}.{key}")
    }
}

fn yaml_key(key: &Yaml) -> String {
    match key {
        Yaml::String(s) => s.clone(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

/// Parses `text` as a YAML mapping and hands it to `check`.
fn parse_doc<T>(
    text: &str,
    check: impl FnOnce(Doc<'_>) -> Result<T, Vec<Problem>>,
) -> Result<T, Vec<Problem>> {
    let yaml: Yaml = match serde_yaml::from_str(text) {
        Ok(y) => y,
        Err(e) => {
            return Err(vec![Problem {
                line: e.location().map(|l| l.line()),
                field: None,
                message: format!("invalid YAML: {}", strip_location(&e.to_string())),
            }])
        }
    };
    match yaml {
        Yaml::Mapping(map) => check(Doc {
            text,
            map,
            problems: Vec::new(),
        }),
        Yaml::Null => Err(vec![Problem {
            line: None,
            field: None,
            message: "the file is empty".into(),
        }]),
        _ => Err(vec![Problem {
            line: Some(1),
            field: None,
            message: "expected a mapping of fields at the top level".into(),
        }]),
    }
}

/// Drops serde_yaml's " at line L column C" (the line is reported apart).
fn strip_location(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// Reads one file, checks it, and files its problems under its path.
fn read_file<T>(
    file: &Path,
    errs: &mut Errors,
    check: impl FnOnce(Doc<'_>) -> Result<T, Vec<Problem>>,
) -> Option<T> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            errs.push(file, None, None, format!("cannot read: {e}"));
            return None;
        }
    };
    match parse_doc(&text, check) {
        Ok(v) => Some(v),
        Err(problems) => {
            for p in problems {
                errs.push(file, p.line, p.field, p.message);
            }
            None
        }
    }
}

/// The `*.yaml` / `*.yml` files directly in `dir`, sorted; none if the
/// directory does not exist.
fn yaml_files(dir: &Path, errs: &mut Errors) -> Vec<PathBuf> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            errs.push(dir, None, None, format!("cannot list directory: {e}"));
            return Vec::new();
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                && p.extension().is_some_and(|x| x == "yaml" || x == "yml")
        })
        .collect();
    files.sort();
    files
}

/// Finds the line of a dotted field path by walking the YAML text: each
/// segment is searched as a key indented deeper than its parent. Falls back
/// to the deepest segment found. Keys containing dots (criteria keys such as
/// `trigger.body.x`) are matched greedily.
pub(crate) fn line_of(text: &str, field: &str) -> Option<usize> {
    if field.is_empty() {
        return None;
    }
    let lines: Vec<&str> = text.lines().collect();
    let segments: Vec<&str> = field.split('.').collect();
    let mut found = None;
    let mut start = 0;
    let mut min_indent = 0;
    let mut i = 0;
    while i < segments.len() {
        // Try the longest dotted key first.
        let mut hit = None;
        for end in (i + 1..=segments.len()).rev() {
            let key = segments[i..end].join(".");
            if let Some((n, indent)) = find_key(&lines, start, min_indent, &key) {
                hit = Some((n, indent, end));
                break;
            }
        }
        // A list index: the N-th `- ` item of the block; its keys may sit
        // on the item's own line.
        if hit.is_none() {
            if let Ok(index) = segments[i].parse::<usize>() {
                hit = find_item(&lines, start, min_indent, index)
                    .map(|(n, indent)| (n, indent, i + 1));
            }
        }
        match hit {
            Some((n, indent, end)) => {
                found = Some(n + 1);
                // Keys of a list item may start on the item's own line.
                start = if segments[i].parse::<usize>().is_ok() {
                    n
                } else {
                    n + 1
                };
                min_indent = indent + 1;
                i = end;
            }
            None => break,
        }
    }
    found
}

/// The line of the `index`-th list item (`- `) from `start`, in the block
/// indented at least `min_indent`; with the indent of its dash.
fn find_item(
    lines: &[&str],
    start: usize,
    min_indent: usize,
    index: usize,
) -> Option<(usize, usize)> {
    let mut seen = 0;
    let mut item_indent = None;
    for (n, line) in lines.iter().enumerate().skip(start) {
        let body = line.trim_start();
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        let indent = line.len() - body.len();
        if indent < min_indent.saturating_sub(1) && n > start {
            return None;
        }
        if body.starts_with("- ") || body == "-" {
            match item_indent {
                None => item_indent = Some(indent),
                Some(i) if i != indent => continue,
                Some(_) => {}
            }
            if seen == index {
                return Some((n, indent));
            }
            seen += 1;
        } else if item_indent.is_some_and(|i| indent <= i) {
            return None;
        }
    }
    None
}

fn find_key(lines: &[&str], start: usize, min_indent: usize, key: &str) -> Option<(usize, usize)> {
    for (n, line) in lines.iter().enumerate().skip(start) {
        let body = line.trim_start();
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        let indent = line.len() - body.len();
        if indent < min_indent && n > start {
            // Left the parent's block.
            return None;
        }
        let body = body.trim_start_matches("- ");
        for quoted in [key.to_string(), format!("\"{key}\""), format!("'{key}'")] {
            if let Some(rest) = body.strip_prefix(&quoted) {
                if rest.trim_start().starts_with(':') {
                    return Some((n, indent));
                }
            }
        }
    }
    None
}

// ---------------------------------------------------------------------------
// pack.yaml
// ---------------------------------------------------------------------------

fn is_pack_ref(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn read_manifest(dir: &Path, errs: &mut Errors) -> Option<PackMeta> {
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

// ---------------------------------------------------------------------------
// Actions
// ---------------------------------------------------------------------------

/// Fills `pack` (checking it matches) and reports a mismatch.
fn claim_pack(doc: &mut Doc<'_>, pack: Option<&str>) {
    match (doc.get("pack").cloned(), pack) {
        (Some(Yaml::String(own)), Some(pack)) if own != pack => doc.problem(
            "pack",
            format!("says {own:?} but the file is in pack {pack:?}"),
        ),
        (Some(Yaml::String(_)), _) => {}
        (Some(_), _) => doc.problem("pack", "must be a string"),
        (None, pack) => {
            doc.map.insert(
                "pack".into(),
                Yaml::String(pack.unwrap_or("default").into()),
            );
        }
    }
}

fn check_name(doc: &mut Doc<'_>) {
    check_name_with(doc, false);
}

/// Policies' and rules' names may hold dots (StackStorm's own
/// `http.retry`).
fn check_name_with(doc: &mut Doc<'_>, dots_allowed: bool) {
    match doc.get("name") {
        Some(Yaml::String(n)) if n.trim().is_empty() => doc.problem("name", "must not be empty"),
        Some(Yaml::String(n)) if n.contains('.') && !dots_allowed => {
            let n = n.clone();
            doc.problem("name", format!("{n:?} must not contain dots"));
        }
        Some(Yaml::String(_)) => {}
        Some(_) => doc.problem("name", "must be a string"),
        None => doc.problem("", "missing required field `name`"),
    }
}

fn check_action(
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
fn check_param_keywords(doc: &mut Doc<'_>, at: &str, spec: &Mapping) {
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

// ---------------------------------------------------------------------------
// config.schema.yaml
// ---------------------------------------------------------------------------

/// Reads the pack's `config.schema.yaml`, if it has one.
fn read_config_schema(dir: &Path, errs: &mut Errors) -> Option<Map<String, Value>> {
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

// ---------------------------------------------------------------------------
// Rules
// ---------------------------------------------------------------------------

fn check_rule(pack: Option<&str>, mut doc: Doc<'_>) -> Result<RuleDef, Vec<Problem>> {
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
            match a.get("ref") {
                Some(Yaml::String(r))
                    if r.split_once('.')
                        .is_some_and(|(p, n)| !p.is_empty() && !n.is_empty()) => {}
                Some(Yaml::String(r)) => {
                    let r = r.clone();
                    doc.problem(
                        "action.ref",
                        format!("{r:?} is not an action ref of the form pack.action"),
                    );
                }
                Some(_) => doc.problem("action.ref", "must be a string such as core.local"),
                None => doc.problem("action", "missing required field `ref`"),
            }
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
fn check_templates(doc: &mut Doc<'_>, at: &str, value: &Yaml, renderer: &Renderer) {
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

// ---------------------------------------------------------------------------
// Trigger types and sensors
// ---------------------------------------------------------------------------

fn check_trigger_type(
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

fn check_policy(pack: Option<&str>, mut doc: Doc<'_>) -> Result<PolicyDef, Vec<Problem>> {
    let top = doc.map.clone();
    doc.unknown_fields("", &top, POLICY_FIELDS);
    check_name_with(&mut doc, true);
    claim_pack(&mut doc, pack);
    for derived in ["id", "ref", "uid"] {
        doc.map.remove(derived);
    }
    match doc.get("resource_ref").and_then(Yaml::as_str) {
        Some(r)
            if r.split_once('.')
                .is_some_and(|(p, n)| !p.is_empty() && !n.is_empty()) => {}
        Some(r) => {
            let r = r.to_string();
            doc.problem(
                "resource_ref",
                format!("{r:?} is not an action ref of the form pack.name"),
            )
        }
        None => doc.problem(
            "resource_ref",
            "missing: the action (pack.name) the policy applies to",
        ),
    }
    let params: serde_json::Map<String, Value> = match doc.get("parameters") {
        None | Some(Yaml::Null) => serde_json::Map::new(),
        Some(p) => match serde_json::to_value(p) {
            Ok(Value::Object(m)) => m,
            _ => {
                doc.problem(
                    "parameters",
                    "must be a mapping of parameter names to values",
                );
                serde_json::Map::new()
            }
        },
    };
    match doc
        .get("policy_type")
        .and_then(Yaml::as_str)
        .map(str::to_string)
    {
        Some(t) => match crate::policies::lookup(&t) {
            Some(policy_type) => {
                for (name, message) in crate::policies::check_parameters(&policy_type, &params) {
                    doc.problem(&format!("parameters.{name}"), message);
                }
            }
            None => {
                let known: Vec<_> = crate::policies::all().iter().map(|t| t.reference).collect();
                doc.problem(
                    "policy_type",
                    format!("{t:?} is not a policy type ({})", known.join(", ")),
                )
            }
        },
        None => doc.problem(
            "policy_type",
            "missing: one of action.concurrency, action.concurrency.attr, action.retry",
        ),
    }
    doc.into_model()
}

/// Shortest poll interval StackStorm accepts.
const MIN_POLL_INTERVAL: u64 = 4;

/// A sensor's metadata: the sensor, and the trigger types it declares.
/// `dir` is the directory of the metadata file, where `entry_point` is.
fn check_sensor(
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

// ---------------------------------------------------------------------------
// Action aliases
// ---------------------------------------------------------------------------

/// Fields of StackStorm's action alias schema (`ActionAliasAPI`).
const ALIAS_FIELDS: &[&str] = &[
    "name",
    "pack",
    "description",
    "enabled",
    "action_ref",
    "formats",
    "ack",
    "result",
    "extra",
    "immutable_parameters",
    "metadata_file",
    "id",
    "ref",
    "uid",
];

fn check_alias(pack: Option<&str>, mut doc: Doc<'_>) -> Result<AliasDef, Vec<Problem>> {
    let top = doc.map.clone();
    doc.unknown_fields("", &top, ALIAS_FIELDS);
    check_name(&mut doc);
    claim_pack(&mut doc, pack);
    for derived in ["id", "ref", "uid"] {
        doc.map.remove(derived);
    }
    match doc.get("action_ref") {
        Some(Yaml::String(r))
            if r.split_once('.')
                .is_some_and(|(p, n)| !p.is_empty() && !n.is_empty()) => {}
        Some(Yaml::String(r)) => {
            let r = r.clone();
            doc.problem(
                "action_ref",
                format!("{r:?} is not an action ref of the form pack.action"),
            );
        }
        Some(_) => doc.problem("action_ref", "must be a string such as core.local"),
        None => doc.problem("", "missing required field `action_ref`"),
    }
    let renderer = Renderer::new();
    match doc.get("formats").cloned() {
        Some(Yaml::Sequence(formats)) if !formats.is_empty() => {
            for (i, f) in formats.iter().enumerate() {
                check_alias_format(&mut doc, &format!("formats.{i}"), f);
            }
        }
        Some(Yaml::Sequence(_)) => doc.problem("formats", "must list at least one format"),
        Some(_) => doc.problem("formats", "must be a list of format strings"),
        None => doc.problem("", "missing required field `formats`"),
    }
    for (section, allowed) in [
        ("ack", &["enabled", "format", "extra", "append_url"][..]),
        ("result", &["enabled", "format", "extra"][..]),
    ] {
        match doc.get(section).cloned() {
            None | Some(Yaml::Null) => {
                doc.map.remove(section);
            }
            Some(Yaml::Mapping(m)) => {
                doc.unknown_fields(section, &m, allowed);
                for flag in ["enabled", "append_url"] {
                    if m.get(flag).is_some_and(|v| !v.is_bool()) {
                        doc.problem(&format!("{section}.{flag}"), "must be true or false");
                    }
                }
                match m.get("format") {
                    None => {}
                    Some(Yaml::String(t)) => {
                        if let Err(e) = renderer.check_syntax(t) {
                            doc.problem(
                                &format!("{section}.format"),
                                format!("template error: {e}"),
                            );
                        }
                    }
                    Some(_) => doc.problem(&format!("{section}.format"), "must be a string"),
                }
                if m.get("extra").is_some_and(|v| !v.is_mapping()) {
                    doc.problem(&format!("{section}.extra"), "must be a mapping");
                }
            }
            Some(_) => doc.problem(section, "must be a mapping"),
        }
    }
    for section in ["extra", "immutable_parameters"] {
        match doc.get(section).cloned() {
            None | Some(Yaml::Null) => {
                doc.map.remove(section);
            }
            Some(Yaml::Mapping(m)) => {
                if section == "immutable_parameters" {
                    for (k, v) in &m {
                        check_templates(&mut doc, &join(section, &yaml_key(k)), v, &renderer);
                    }
                }
            }
            Some(_) => doc.problem(section, "must be a mapping"),
        }
    }
    doc.into_model()
}

/// One entry of `formats`: a format string, or `{display, representation,
/// match_multiple}`; every format string must compile.
fn check_alias_format(doc: &mut Doc<'_>, at: &str, f: &Yaml) {
    let check = |doc: &mut Doc<'_>, at: &str, text: &str| {
        if let Err(e) = CompiledFormat::new(text) {
            doc.problem(at, e.to_string());
        }
    };
    match f {
        Yaml::String(s) => check(doc, at, s),
        Yaml::Mapping(m) => {
            doc.unknown_fields(at, m, &["display", "representation", "match_multiple"]);
            if m.get("display").is_some_and(|v| !v.is_string()) {
                doc.problem(&join(at, "display"), "must be a string");
            }
            if m.get("match_multiple").is_some_and(|v| !v.is_bool()) {
                doc.problem(&join(at, "match_multiple"), "must be true or false");
            }
            match m.get("representation") {
                None | Some(Yaml::Null) if m.get("display").is_some() => {}
                None | Some(Yaml::Null) => {
                    doc.problem(at, "needs a `display` or a `representation`")
                }
                Some(Yaml::String(s)) => check(doc, &join(at, "representation"), s),
                Some(Yaml::Sequence(items)) => {
                    for (i, item) in items.iter().enumerate() {
                        let at = format!("{at}.representation.{i}");
                        match item.as_str() {
                            Some(s) => check(doc, &at, s),
                            None => doc.problem(&at, "must be a format string"),
                        }
                    }
                }
                Some(_) => doc.problem(
                    &join(at, "representation"),
                    "must be a format string or a list of them",
                ),
            }
        }
        _ => doc.problem(
            at,
            "must be a format string or a mapping with `display` and `representation`",
        ),
    }
}

/// Reports a format string that another alias of the pack already has:
/// every command it matches would be ambiguous.
fn check_alias_formats(errs: &mut Errors, pack_dir: &Path, aliases: &[AliasDef]) {
    let mut seen: BTreeMap<String, &AliasDef> = BTreeMap::new();
    for alias in aliases {
        for p in alias.patterns() {
            if p.representation.is_empty() {
                continue;
            }
            let key = p
                .representation
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            match seen.get(&key) {
                Some(first) if first.name != alias.name => {
                    let path = pack_dir.join(&alias.metadata_file);
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    let field = format!("formats.{}", p.format_index);
                    errs.push(
                        &path,
                        line_of(&text, &field),
                        Some(field),
                        format!(
                            "format {:?} is also a format of alias {} ({}): every command it matches would be ambiguous",
                            p.representation,
                            first.reference(),
                            first.metadata_file
                        ),
                    );
                }
                Some(_) => {}
                None => {
                    seen.insert(key, alias);
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    const PACK: &str = "name: ops\ndescription: d\nversion: 0.1\nauthor: me\n";

    fn pack(files: &[(&str, &str)]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for (rel, text) in files {
            let path = root.path().join("ops").join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        root
    }

    fn errors(files: &[(&str, &str)]) -> Vec<LoadError> {
        let root = pack(files);
        load_pack(&root.path().join("ops")).unwrap_err().errors
    }

    /// The single error of `file`, asserting there is exactly one.
    fn only_error(files: &[(&str, &str)]) -> LoadError {
        let mut errs = errors(files);
        assert_eq!(errs.len(), 1, "{errs:?}");
        errs.remove(0)
    }

    #[test]
    fn aliases_are_checked_with_file_line_and_field() {
        let root = pack(&[
            ("pack.yaml", PACK),
            (
                "aliases/run.yaml",
                "name: run\naction_ref: core.local\nformats:\n  - display: run <cmd>\n    representation:\n      - run {{cmd}}\nack:\n  format: 'ran {{ execution.id }}'\n",
            ),
        ]);
        let bundle = load_pack(&root.path().join("ops")).unwrap();
        let alias = &bundle.aliases[0];
        assert_eq!(
            (
                alias.reference(),
                alias.metadata_file.as_str(),
                alias.enabled
            ),
            ("ops.run".to_string(), "aliases/run.yaml", true)
        );
        assert_eq!(alias.patterns()[0].representation, "run {{cmd}}");

        let errs = errors(&[
            ("pack.yaml", PACK),
            (
                "aliases/a.yaml",
                "name: a\naction_ref: core.local\nformats:\n  - run {{cmd}}\n  - broken {{x}} (\n",
            ),
            (
                "aliases/b.yaml",
                "name: b\naction_ref: core.local\ncolour: red\nformats:\n  - run {{command}}\n",
            ),
            (
                "aliases/c.yaml",
                "name: c\naction_ref: nodot\nformats:\n  - run  {{cmd}}\nack:\n  enabled: maybe\n",
            ),
        ]);
        let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
        let find = |needle: &str| {
            shown
                .iter()
                .find(|e| e.contains(needle))
                .unwrap_or_else(|| panic!("no error with {needle:?} in {shown:#?}"))
        };
        assert!(find("formats.1").starts_with("ops/aliases/a.yaml:5: formats.1: format string"));
        assert!(find("colour").starts_with("ops/aliases/b.yaml:3: colour: unknown field"));
        assert!(find("\"nodot\"").starts_with("ops/aliases/c.yaml:2: action_ref:"));
        assert!(find("ack.enabled").starts_with("ops/aliases/c.yaml:6: ack.enabled:"));
        assert_eq!(errs.len(), 4, "{shown:#?}");

        // The same format in two aliases (whitespace aside): ambiguous.
        let e = only_error(&[
            ("pack.yaml", PACK),
            (
                "aliases/a.yaml",
                "name: a\naction_ref: core.local\nformats:\n  - run {{cmd}}\n",
            ),
            (
                "aliases/b.yaml",
                "name: b\naction_ref: core.local\nformats:\n  - \"run   {{cmd}}\"\n",
            ),
        ]);
        assert_eq!(
            e.to_string(),
            "ops/aliases/b.yaml:4: formats.0: format \"run   {{cmd}}\" is also a format of alias ops.a (aliases/a.yaml): every command it matches would be ambiguous"
        );
    }

    #[test]
    fn loads_a_complete_pack() {
        let root = pack(&[
            ("pack.yaml", PACK),
            (
                "actions/hello.yaml",
                "name: hello\nrunner_type: local-shell-script\nentry_point: hello.sh\n\
                 parameters:\n  who:\n    type: string\n    position: 0\n    default: world\n",
            ),
            ("actions/hello.sh", "#!/bin/sh\necho hi $1\n"),
            (
                "rules/on_hook.yaml",
                "name: on_hook\npack: ops\nenabled: true\ntrigger:\n  type: core.st2.webhook\n  parameters:\n    url: hook\n\
                 criteria:\n  trigger.body.x:\n    type: eq\n    pattern: '{{ 1 + 1 }}'\naction:\n  ref: ops.hello\n  parameters:\n    who: '{{ trigger.body.who }}'\n",
            ),
            ("triggers/event.yaml", "name: event\npayload_schema:\n  type: object\n"),
            (
                "sensors/watch.yaml",
                "class_name: Watch\nentry_point: watch.py\npoll_interval: 20\ntrigger_types:\n  - name: watched\n    description: seen\n",
            ),
            ("sensors/watch.py", "class Watch: pass\n"),
            (
                "aliases/hello.yaml",
                "name: hello\naction_ref: ops.hello\nformats:\n  - greet {{who=world}}\n",
            ),
            ("README.md", "not yaml"),
        ]);
        let bundle = load_pack(&root.path().join("ops")).unwrap();
        assert_eq!(bundle.pack.pack_ref, "ops", "ref defaults to a valid name");
        assert_eq!(bundle.pack.version, "0.1.0");
        assert!(Path::new(&bundle.path).is_absolute());
        let action = &bundle.actions[0];
        assert_eq!(action.reference(), "ops.hello");
        assert!(action.enabled);
        assert_eq!(action.metadata_file, "actions/hello.yaml");
        assert_eq!(action.parameters["who"].position, Some(0));
        let rule = &bundle.rules[0];
        assert_eq!(rule.reference(), "ops.on_hook");
        assert_eq!(rule.trigger.parameters["url"], "hook");
        assert_eq!(rule.criteria["trigger.body.x"].operator, "eq");
        let names: Vec<&str> = bundle
            .trigger_types
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(names, ["event", "watched"]);
        assert_eq!(bundle.trigger_types[1].metadata_file, "sensors/watch.yaml");
        let sensor = &bundle.sensors[0];
        assert_eq!(sensor.reference(), "ops.Watch");
        assert!(sensor.enabled);
        assert_eq!(sensor.poll_interval, Some(20));
        assert_eq!(sensor.trigger_types, ["ops.watched"]);
        assert_eq!(
            sensor.file(Path::new(&bundle.path)),
            Path::new(&bundle.path).join("sensors/watch.py")
        );
    }

    #[test]
    fn sensor_metadata_is_checked() {
        let errs = errors(&[
            ("pack.yaml", PACK),
            (
                "sensors/s.yaml",
                "class_name: 9S\nentry_point: gone.py\npoll_interval: 1\n",
            ),
            ("sensors/t.yaml", "entry_point: t.py\n"),
            ("sensors/t.py", ""),
        ]);
        let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(errs.len(), 4, "{shown:#?}");
        assert!(shown[0].contains("s.yaml:1: class_name: \"9S\" is not a Python class name"));
        assert!(shown[1].contains("s.yaml:2: entry_point: \"gone.py\": no such file"));
        assert!(shown[2]
            .contains("s.yaml:3: poll_interval: Minimum possible poll_interval is 4 seconds"));
        assert!(shown[3].contains("t.yaml: class_name: missing"));
    }

    #[test]
    fn notify_is_checked_against_stackstorms_schema() {
        let action =
            |notify: &str| format!("name: a\nrunner_type: local-shell-cmd\nnotify:\n{notify}");
        let good = action("  on-failure:\n    message: m\n    data: {x: 1}\n    routes: [ops]\n");
        let root = pack(&[("pack.yaml", PACK), ("actions/a.yaml", &good)]);
        let bundle = load_pack(&root.path().join("ops")).unwrap();
        assert_eq!(
            bundle.actions[0].notify.as_ref().unwrap()["on-failure"]["routes"][0],
            "ops"
        );
        let fields = |notify: &str| -> Vec<String> {
            errors(&[("pack.yaml", PACK), ("actions/a.yaml", &action(notify))])
                .into_iter()
                .map(|e| e.field.unwrap_or_default())
                .collect()
        };
        assert_eq!(fields("  on-fail:\n    routes: [x]\n"), ["notify.on-fail"]);
        assert_eq!(
            fields("  on-success:\n    message: [1]\n    data: 2\n    routes: ops\n    via: x\n"),
            [
                "notify.on-success.via",
                "notify.on-success.message",
                "notify.on-success.data",
                "notify.on-success.routes"
            ]
        );
    }

    #[test]
    fn a_workflow_with_inspection_errors_registers_and_its_problems_are_reported() {
        // As in StackStorm the workflow registers (its execution fails with
        // the problems when it runs); registration reports them as warnings.
        let root = pack(&[
            ("pack.yaml", PACK),
            (
                "actions/flow.yaml",
                "name: flow\nrunner_type: orquesta\nentry_point: workflows/flow.yaml\n",
            ),
            (
                "actions/workflows/flow.yaml",
                "version: 1.0\ntasks:\n  a:\n    action: core.noop\n    next:\n      - do: b\n",
            ),
        ]);
        let dir = root.path().join("ops");
        let bundle = load_pack(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(bundle.actions[0].name, "flow");
        let warnings = inspect_workflows(&dir, &bundle);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(
            warnings[0].file,
            Path::new("ops/actions/workflows/flow.yaml")
        );
        assert_eq!(warnings[0].line, Some(6));
        assert_eq!(warnings[0].field.as_deref(), Some("tasks.a.next.0.do"));
        assert!(
            warnings[0].message.contains("\"b\" is not defined"),
            "{warnings:?}"
        );
    }

    #[test]
    fn a_rule_without_enabled_is_disabled() {
        let rule = parse_rule(
            Some("ops"),
            "name: r\ntrigger:\n  type: ops.event\naction:\n  ref: core.noop\n",
        )
        .unwrap();
        assert!(!rule.enabled);
        assert_eq!(rule.pack, "ops");
    }

    #[test]
    fn the_shipped_packs_load() {
        let packs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packs");
        for name in ["core", "examples"] {
            let bundle = load_pack(&packs.join(name)).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(bundle.pack.pack_ref, name);
            assert!(!bundle.actions.is_empty());
        }
    }

    #[test]
    fn reports_every_error_of_every_file_at_once() {
        let errs = errors(&[
            ("pack.yaml", PACK),
            ("rules/broken.yaml", "name: broken\ntrigger: [unclosed\n"),
            (
                "actions/bad.yaml",
                "name: bad\nrunner_type: teleport\ncolour: blue\nparameters:\n  bad-name:\n    type: str\n",
            ),
        ]);
        let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(errs.len(), 5, "{text:#?}");
        assert!(text
            .iter()
            .any(|t| t.starts_with("ops/rules/broken.yaml:") && t.contains("invalid YAML")));
        for (field, line, needle) in [
            ("runner_type", 2, "teleport"),
            ("colour", 3, "unknown field"),
            ("parameters.bad-name", 5, "letters, digits"),
            ("parameters.bad-name.type", 6, "\"str\" is not one of"),
        ] {
            let e = errs
                .iter()
                .find(|e| e.field.as_deref() == Some(field))
                .unwrap_or_else(|| panic!("no error for {field}: {text:#?}"));
            assert_eq!(e.file, Path::new("ops/actions/bad.yaml"));
            assert_eq!(e.line, Some(line), "{e}");
            assert!(e.message.contains(needle), "{e}");
        }
    }

    #[test]
    fn the_summary_names_the_pack_and_counts() {
        let root = pack(&[("actions/a.yaml", "name: a\nrunner_type: noop\n")]);
        let err = load_pack(&root.path().join("ops")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("has 1 error:"), "{text}");
        assert!(text.contains("ops/pack.yaml: missing"), "{text}");
    }

    #[test]
    fn yaml_syntax_errors_carry_the_parser_line() {
        let e = only_error(&[
            ("pack.yaml", PACK),
            ("rules/r.yaml", "name: r\n\ntrigger:\n  type: [x\n"),
        ]);
        assert_eq!(e.line, Some(5), "{e}");
        assert!(e.message.starts_with("invalid YAML"), "{e}");
    }

    #[test]
    fn action_checks() {
        let cases: &[(&str, &str, &str)] = &[
            ("name: a\nrunner_type: local-shell-script\nentry_point: gone.sh\n", "entry_point", "actions/gone.sh does not exist"),
            ("name: a\nrunner_type: local-shell-script\n", "entry_point", "needs an entry_point"),
            ("name: a\npack: other\nrunner_type: noop\n", "pack", "in pack \"ops\""),
            ("runner_type: noop\n", "", "missing required field `name`"),
            ("name: a.b\nrunner_type: noop\n", "name", "dots"),
            ("name: a\n", "", "`runner_type`"),
            ("name: a\nrunner_type: noop\nparameters:\n  x:\n    type: string\n    secret: maybe\n", "parameters.x.secret", "true or false"),
            ("name: a\nrunner_type: noop\nparameters:\n  x:\n    position: 0\n  y:\n    position: 0\n", "parameters.y.position", "also used"),
            ("name: a\nrunner_type: noop\nparameters:\n  x:\n    tpye: string\n", "parameters.x.tpye", "unknown field"),
            ("name: a\nrunner_type: noop\nenabled: sometimes\n", "enabled", "invalid type"),
        ];
        for (text, field, needle) in cases {
            let e = only_error(&[("pack.yaml", PACK), ("actions/a.yaml", text)]);
            assert_eq!(e.field.as_deref().unwrap_or(""), *field, "{text}: {e}");
            assert!(e.message.contains(needle), "{text}: {e}");
        }
    }

    fn rule_with(trigger: &str, criteria: &str) -> String {
        format!("name: r\ntrigger:\n{trigger}\ncriteria:\n{criteria}\naction:\n  ref: core.noop\n")
    }

    #[test]
    fn rule_checks() {
        let hook = "  type: core.st2.webhook\n  parameters:\n    url: x";
        let cases: Vec<(String, &str, &str)> = vec![
            (rule_with(hook, "  trigger.x:\n    type: roughly"), "criteria.trigger.x.type", "roughly"),
            (rule_with(hook, "  trigger.x:\n    pattern: 1"), "criteria.trigger.x", "`type`"),
            (rule_with(hook, "  trigger.x:\n    type: search\n    pattern:\n      item.a:\n        type: equals\n        pattern: 1"), "criteria.trigger.x", "condition"),
            (rule_with(hook, "  trigger.x:\n    type: search\n    condition: any\n    pattern:\n      item.a:\n        type: nearly"), "criteria.trigger.x.pattern.item.a.type", "nearly"),
            (rule_with(hook, "  trigger.x:\n    type: eq\n    pattern: '{{ oops'"), "criteria.trigger.x.pattern", "template error"),
            (rule_with("  type: core.st2.webhook", "  {}"), "trigger.parameters", "needs parameter `url`"),
            (rule_with("  type: core.st2.IntervalTimer\n  parameters:\n    unit: fortnights\n    delta: 1", "  {}"), "trigger.parameters.unit", "not one of"),
            (rule_with("  type: core.st2.IntervalTimer\n  parameters:\n    unit: seconds\n    delta: 0", "  {}"), "trigger.parameters.delta", "positive"),
            (rule_with("  type: core.st2.IntervalTimer\n  parameters:\n    unit: seconds\n    delta: soon", "  {}"), "trigger.parameters.delta", "integer"),
            (rule_with("  type: core.st2.CronTimer\n  parameters:\n    hour: 25", "  {}"), "trigger.parameters.hour", "out of range 0-23"),
            (rule_with("  type: core.st2.CronTimer\n  parameters:\n    day_of_week: funday", "  {}"), "trigger.parameters.day_of_week", "funday"),
            (rule_with("  type: core.st2.DateTimer\n  parameters:\n    date: tomorrow", "  {}"), "trigger.parameters.date", "not a date"),
            (rule_with("  type: core.st2.CronTimer\n  parameters:\n    hour: 1\n    timezone: Mars/Olympus", "  {}"), "trigger.parameters.timezone", "time zone"),
            (rule_with("  type: core.st2.webhook\n  parameters:\n    url: x\n    port: 1", "  {}"), "trigger.parameters.port", "no parameter"),
            (rule_with("  type: webhook", "  {}"), "trigger.type", "pack.name"),
            ("name: r\ntrigger:\n  type: a.b\naction:\n  ref: nodot\n".into(), "action.ref", "pack.action"),
            ("name: r\ntrigger:\n  type: a.b\naction:\n  ref: core.local\n  parameters:\n    cmd: '{% if %}'\n".into(), "action.parameters.cmd", "template error"),
            ("name: r\ntrigger:\n  type: a.b\n".into(), "", "`action`"),
            ("name: r\ntype:\n  ref: sometimes\ntrigger:\n  type: a.b\naction:\n  ref: a.b\n".into(), "type.ref", "standard, backstop"),
        ];
        for (text, field, needle) in &cases {
            let e = only_error(&[("pack.yaml", PACK), ("rules/r.yaml", text)]);
            assert_eq!(e.field.as_deref().unwrap_or(""), *field, "{text}\n{e}");
            assert!(e.message.contains(needle), "{text}\n{e}");
        }
    }

    /// StackStorm's test `fixtures` pack names a rule `tests.interval_timer`:
    /// its ref is `<pack>.tests.interval_timer`.
    #[test]
    fn a_rule_name_may_hold_dots() {
        let text = "name: tests.interval_timer\ntrigger:\n  type: a.b\naction:\n  ref: core.noop\n";
        let root = pack(&[("pack.yaml", PACK), ("rules/r.yaml", text)]);
        let bundle = load_pack(&root.path().join("ops")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(bundle.rules[0].reference(), "ops.tests.interval_timer");
    }

    #[test]
    fn criteria_errors_point_at_the_operator_line() {
        let text = rule_with(
            "  type: core.st2.webhook\n  parameters:\n    url: x",
            "  trigger.a:\n    type: eq\n    pattern: 1\n  trigger.b:\n    type: roughly",
        );
        let e = only_error(&[("pack.yaml", PACK), ("rules/r.yaml", &text)]);
        let line = text.lines().position(|l| l.contains("roughly")).unwrap() + 1;
        assert_eq!(e.line, Some(line), "{e}");
    }

    #[test]
    fn manifest_checks() {
        let cases = [
            ("name: My Pack\nversion: 1.0.0\n", "name", "add `ref:`"),
            (
                "name: x\nref: Bad-Ref\nversion: 1.0.0\n",
                "ref",
                "lowercase",
            ),
            ("name: x\nversion: one\n", "version", "semantic version"),
            (
                "name: x\ndescription: d\n",
                "version",
                "missing required field `version`",
            ),
            ("description: no name\nversion: 1.0.0\n", "", "`name`"),
        ];
        for (text, field, needle) in cases {
            let e = only_error(&[("pack.yaml", text)]);
            assert_eq!(e.field.as_deref().unwrap_or(""), field, "{text}: {e}");
            assert!(e.message.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn duplicate_names_are_rejected() {
        let e = only_error(&[
            ("pack.yaml", PACK),
            ("actions/a.yaml", "name: same\nrunner_type: noop\n"),
            ("actions/b.yaml", "\nname: same\nrunner_type: noop\n"),
        ]);
        assert_eq!(e.file, Path::new("ops/actions/b.yaml"));
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("also defined in actions/a.yaml"), "{e}");
    }

    #[test]
    fn sensor_trigger_types_are_checked() {
        let e = only_error(&[
            ("pack.yaml", PACK),
            (
                "sensors/s.yaml",
                "class_name: S\nentry_point: s.py\ntrigger_types:\n  - description: no name\n",
            ),
            ("sensors/s.py", ""),
        ]);
        assert!(e.message.contains("`name`"), "{e}");
        assert_eq!(e.field.as_deref(), Some("trigger_types.0"));
    }

    #[test]
    fn config_schemas_load_in_stackstorms_dialect() {
        let schema = "---\napi_key:\n  type: string\n  secret: true\n  required: true\n\
                      hosts:\n  type: array\n  items:\n    type: object\n    properties:\n\
                      \x20     name:\n        type: string\n        required: true\n";
        let root = pack(&[("pack.yaml", PACK), ("config.schema.yaml", schema)]);
        let bundle = load_pack(&root.path().join("ops")).unwrap();
        let loaded = bundle.config_schema.unwrap();
        assert_eq!(loaded["api_key"]["secret"], true);
        assert_eq!(
            loaded["hosts"]["items"]["properties"]["name"]["required"],
            true
        );
        // StackStorm's own examples pack schema loads.
        let examples = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/st2-examples/examples");
        let schema = load_pack(&examples).unwrap().config_schema.unwrap();
        assert_eq!(schema["region"]["default"], "us-east-1");
    }

    #[test]
    fn config_schema_errors_come_all_at_once() {
        let schema = "api_key:\n  type: str\n  secret: yes please\n\
                      region:\n  type: [string, integer]\n  requried: true\n\
                      nested:\n  type: object\n  properties:\n    inner:\n      typo: 1\n\
                      bad-name:\n  type: string\n";
        let errs = errors(&[("pack.yaml", PACK), ("config.schema.yaml", schema)]);
        let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "ops/config.schema.yaml:2: api_key.type: \"str\" is not one of array, boolean, integer, null, number, object, string",
                "ops/config.schema.yaml:3: api_key.secret: must be true or false",
                "ops/config.schema.yaml:6: region.requried: unknown field \"requried\"; expected one of: type, description, default, required, secret, immutable, position, enum, items, additionalItems, properties, patternProperties, additionalProperties, dependencies, pattern, format, minimum, maximum, exclusiveMinimum, exclusiveMaximum, multipleOf, minLength, maxLength, minItems, maxItems, uniqueItems, minProperties, maxProperties, anyOf, oneOf, allOf, not, title, $schema, id",
                "ops/config.schema.yaml:5: region.type: a list of types is not supported; use anyOf",
                "ops/config.schema.yaml:11: nested.properties.inner.typo: unknown field \"typo\"; expected one of: type, description, default, required, secret, immutable, position, enum, items, additionalItems, properties, patternProperties, additionalProperties, dependencies, pattern, format, minimum, maximum, exclusiveMinimum, exclusiveMaximum, multipleOf, minLength, maxLength, minItems, maxItems, uniqueItems, minProperties, maxProperties, anyOf, oneOf, allOf, not, title, $schema, id",
                "ops/config.schema.yaml:12: bad-name: item name \"bad-name\" may only contain letters, digits and underscores",
            ]
        );
    }

    #[test]
    fn an_empty_config_schema_is_an_error() {
        for text in ["", "---\n", "# nothing\n"] {
            let err = only_error(&[("pack.yaml", PACK), ("config.schema.yaml", text)]);
            assert_eq!(err.file, Path::new("ops/config.schema.yaml"));
            assert!(err.message.contains("empty and invalid"), "{err}");
        }
    }

    #[test]
    fn line_lookup_follows_nesting_and_dotted_keys() {
        let text =
            "name: x\naction:\n  name: inner\ncriteria:\n  trigger.body.name:\n    type: eq\n";
        assert_eq!(line_of(text, "name"), Some(1));
        assert_eq!(line_of(text, "action.name"), Some(3));
        assert_eq!(line_of(text, "criteria.trigger.body.name.type"), Some(6));
        assert_eq!(line_of(text, "criteria.missing"), Some(4));
        assert_eq!(line_of(text, ""), None);
    }
}

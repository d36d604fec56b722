//! One YAML document being checked, and the problems of a pack collected:
//! parsing with positions, the line of a field, the checks every kind of
//! document shares (`pack`, `name`).

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_yaml::{Mapping, Value as Yaml};

use super::{LoadError, LoadErrors, Problem};

pub(super) struct Errors {
    pack: PathBuf,
    /// Files are shown relative to this (the pack directory's parent).
    base: Option<PathBuf>,
    pub(super) list: Vec<LoadError>,
}

impl Errors {
    pub(super) fn new(pack: &Path) -> Self {
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

    pub(super) fn push(
        &mut self,
        file: &Path,
        line: Option<usize>,
        field: Option<String>,
        message: String,
    ) {
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

    pub(super) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub(super) fn finish(self) -> LoadErrors {
        LoadErrors {
            pack: self.pack,
            errors: self.list,
        }
    }
}

/// One YAML document being checked: its text (for line lookups), its
/// parsed mapping, and the problems found so far.
pub(super) struct Doc<'a> {
    pub(super) text: &'a str,
    pub(super) map: Mapping,
    pub(super) problems: Vec<Problem>,
}

impl Doc<'_> {
    /// Records a problem at `field` (a dotted path), locating its line.
    pub(super) fn problem(&mut self, field: &str, message: impl Into<String>) {
        let line = line_of(self.text, field);
        self.problems.push(Problem {
            line,
            field: (!field.is_empty()).then(|| field.to_string()),
            message: message.into(),
        });
    }

    /// Checks `value`, the action reference at `field`: a string of the
    /// form `pack.action`. None is the problem `missing` (its field and
    /// message).
    pub(super) fn action_ref(&mut self, field: &str, value: Option<&Yaml>, missing: (&str, &str)) {
        match value {
            Some(Yaml::String(r))
                if r.split_once('.')
                    .is_some_and(|(p, n)| !p.is_empty() && !n.is_empty()) => {}
            Some(Yaml::String(r)) => self.problem(
                field,
                format!("{r:?} is not an action ref of the form pack.action"),
            ),
            Some(_) => self.problem(field, "must be a string such as core.local"),
            None => self.problem(missing.0, missing.1),
        }
    }

    pub(super) fn get(&self, key: &str) -> Option<&Yaml> {
        self.map.get(key)
    }

    pub(super) fn str_field(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Yaml::as_str)
    }

    /// Reports every key of the mapping at `at` (`""` for the top) that is
    /// not in `allowed`.
    pub(super) fn unknown_fields(&mut self, at: &str, map: &Mapping, allowed: &[&str]) {
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
    pub(super) fn into_model<T: DeserializeOwned>(mut self) -> Result<T, Vec<Problem>> {
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

pub(super) fn join(at: &str, key: &str) -> String {
    if at.is_empty() {
        key.to_string()
    } else {
        format!("{at}.{key}")
    }
}

pub(super) fn yaml_key(key: &Yaml) -> String {
    match key {
        Yaml::String(s) => s.clone(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

/// Parses `text` as a YAML mapping and hands it to `check`.
pub(super) fn parse_doc<T>(
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
pub(super) fn read_file<T>(
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
pub(super) fn yaml_files(dir: &Path, errs: &mut Errors) -> Vec<PathBuf> {
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

/// Fills `pack` (checking it matches) and reports a mismatch.
pub(super) fn claim_pack(doc: &mut Doc<'_>, pack: Option<&str>) {
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

pub(super) fn check_name(doc: &mut Doc<'_>) {
    check_name_with(doc, false);
}

/// Policies' and rules' names may hold dots (StackStorm's own
/// `http.retry`).
pub(super) fn check_name_with(doc: &mut Doc<'_>, dots_allowed: bool) {
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

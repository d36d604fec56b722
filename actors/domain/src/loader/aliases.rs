//! Action aliases: fields, formats that compile, formats no other alias of
//! the pack repeats.

use std::collections::BTreeMap;
use std::path::Path;

use serde_yaml::Value as Yaml;

use crate::aliases::{AliasDef, CompiledFormat};
use crate::template::Renderer;

use super::doc::{check_name, claim_pack, join, line_of, yaml_key, Doc, Errors};
use super::rules::check_templates;
use super::Problem;

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

pub(super) fn check_alias(pack: Option<&str>, mut doc: Doc<'_>) -> Result<AliasDef, Vec<Problem>> {
    let top = doc.map.clone();
    doc.unknown_fields("", &top, ALIAS_FIELDS);
    check_name(&mut doc);
    claim_pack(&mut doc, pack);
    for derived in ["id", "ref", "uid"] {
        doc.map.remove(derived);
    }
    let action_ref = doc.get("action_ref").cloned();
    doc.action_ref(
        "action_ref",
        action_ref.as_ref(),
        ("", "missing required field `action_ref`"),
    );
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
pub(super) fn check_alias_formats(errs: &mut Errors, pack_dir: &Path, aliases: &[AliasDef]) {
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

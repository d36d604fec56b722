//! Action aliases: StackStorm's ChatOps commands (`aliases/*.yaml`), the
//! format-string parser that turns a chat command into action parameters,
//! and the matcher that finds the alias a command names.
//!
//! The parser follows StackStorm's `ActionAliasFormatParser`
//! (`st2common/models/utils/action_alias_utils.py`): a format such as
//! `run {{cmd}} on {{hosts=localhost}}` becomes a regular expression with
//! one named group per placeholder (`{{ name }}` required, `{{ name=default
//! }}` optional), the text around placeholders is itself a regular
//! expression, `key=value` pairs at the end of a command add parameters the
//! format does not name, and values may be quoted (`"..."`, `'...'`) or a
//! `{...}` object. The matcher follows `actionalias_matching.py`: every
//! representation of every enabled alias is tried; several matches are
//! settled by specificity (the representation with the most literal text
//! wins), and a tie is reported as ambiguous, as StackStorm reports any
//! second match. Aliases whose formats say `match_multiple` are tried only
//! when no other alias matches, and yield one parameter set per match.

use std::collections::BTreeMap;
use std::fmt;

use fancy_regex::Regex;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// An action alias, in StackStorm's shape (`ActionAliasAPI`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AliasDef {
    pub name: String,
    pub pack: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The action it runs, `pack.name`.
    pub action_ref: String,
    #[serde(default)]
    pub formats: Vec<AliasFormat>,
    /// The message sent back when the execution is requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack: Option<Map<String, Value>>,
    /// How the execution's result is posted back (`chatops.post_result`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<Map<String, Value>>,
    /// Parameters every execution gets, rendered with Jinja; a command may
    /// not set them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub immutable_parameters: Option<Map<String, Value>>,
    /// Path of the metadata file relative to the pack root.
    #[serde(default)]
    pub metadata_file: String,
}

fn default_true() -> bool {
    true
}

impl AliasDef {
    /// `pack.name`.
    pub fn reference(&self) -> String {
        format!("{}.{}", self.pack, self.name)
    }

    /// Every (display, representation, match_multiple) of the alias, as
    /// StackStorm's `list_format_strings_from_aliases` lists them.
    pub fn patterns(&self) -> Vec<Pattern> {
        let mut out = Vec::new();
        for (index, f) in self.formats.iter().enumerate() {
            match f {
                AliasFormat::Text(s) => out.push(Pattern {
                    format_index: index,
                    display: Some(s.clone()),
                    representation: s.clone(),
                    match_multiple: false,
                }),
                AliasFormat::Detailed(d) => {
                    if d.representation.is_empty() {
                        if let Some(display) = &d.display {
                            out.push(Pattern {
                                format_index: index,
                                display: Some(display.clone()),
                                representation: String::new(),
                                match_multiple: d.match_multiple,
                            });
                        }
                    }
                    for r in &d.representation {
                        out.push(Pattern {
                            format_index: index,
                            display: d.display.clone(),
                            representation: r.clone(),
                            match_multiple: d.match_multiple,
                        });
                    }
                }
            }
        }
        out
    }

    /// The help strings of the alias: each format's display.
    pub fn displays(&self) -> Vec<String> {
        self.formats
            .iter()
            .filter_map(|f| match f {
                AliasFormat::Text(s) => Some(s.clone()),
                AliasFormat::Detailed(d) => d.display.clone(),
            })
            .collect()
    }
}

/// One entry of `formats`: a format string, or a help string with the
/// format strings it stands for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AliasFormat {
    Text(String),
    Detailed(DetailedFormat),
}

/// `{display, representation, match_multiple}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetailedFormat {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    pub representation: Vec<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub match_multiple: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
        Null(()),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
        OneOrMany::Null(()) => Vec::new(),
    })
}

/// One format string of an alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    /// Index of the entry in `formats`.
    pub format_index: usize,
    pub display: Option<String>,
    pub representation: String,
    pub match_multiple: bool,
}

/// Why a command could not be turned into parameters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AliasError {
    /// The format string does not compile (StackStorm fails the same
    /// format when a command is matched against it).
    #[error("format string {format:?} is not valid: {reason}")]
    BadFormat { format: String, reason: String },
    #[error("Command \"{command}\" doesn't match format string \"{format}\"")]
    NoMatch { command: String, format: String },
    #[error("No value supplied and no default value found.")]
    NoValue,
    /// Several aliases match equally well.
    #[error("Command '{command}' matched more than 1 pattern: {}", candidates.join(", "))]
    Ambiguous {
        command: String,
        /// `alias ref: representation` of each.
        candidates: Vec<String>,
    },
    #[error("Command '{command}' matched no patterns")]
    NoPatterns { command: String },
}

/// Placeholder with a default: `{{ key = default }}` (StackStorm's
/// `optional` snippet; the default may be quoted or a `{...}` object).
const OPTIONAL: &str = r#"\{\{\s*(\S+?)\s*\s*=\s*(?:""|''|"(.+?)"|'(.+?)'|(\{.+?\})|(.+?))\s*\}\}"#;
/// Placeholder without a default: `{{ key }}`.
const REQUIRED: &str = r"\{\{\s*(\S+?)\s*\}\}";
/// A `key=value` pair of the command's ending.
const PAIR: &str = r#"(?:^|\s+)\s*(\S+?)\s*=(""|''|"(.+?)"|'(.+?)'|(\{.+?\})|(\S+))"#;

/// The group a placeholder becomes: optionally quoted, a quoted value
/// without its quotes, a `{...}` object, or (shortest) text.
fn param_group(ws: &str, key: &str) -> String {
    format!(r#"{ws}["']?(?P<{key}>(?:(?<=').+?(?=')|(?<=").+?(?=")|\{{.+?\}}|.+?))["']?"#)
}

fn compile(pattern: &str) -> Regex {
    Regex::new(pattern).unwrap_or_else(|e| panic!("built-in alias regex {pattern:?}: {e}"))
}

/// A format string compiled once: its regular expression and its optional
/// parameters with their defaults.
#[derive(Debug, Clone)]
pub struct CompiledFormat {
    format: String,
    regex: Regex,
    optional: Vec<(String, String)>,
    /// Literal text of the format (placeholders removed, whitespace
    /// ignored): how specific it is.
    specificity: usize,
}

impl CompiledFormat {
    /// Compiles `format` as StackStorm's parser transforms it.
    pub fn new(format: &str) -> Result<Self, AliasError> {
        let bad = |reason: String| AliasError::BadFormat {
            format: format.to_string(),
            reason,
        };
        let optional_re = compile(&format!(r"(?s)(\s*){OPTIONAL}"));
        let required_re = compile(&format!(r"(?s)(\s*){REQUIRED}"));
        let mut optional = Vec::new();
        let mut names = Vec::new();
        let mut reg = String::new();
        let mut last = 0;
        for caps in optional_re.captures_iter(format) {
            let caps = caps.map_err(|e| bad(e.to_string()))?;
            let whole = caps.get(0).expect("group 0");
            let key = caps.get(2).map_or("", |m| m.as_str()).to_string();
            let default: String = (3..=7)
                .filter_map(|i| caps.get(i).map(|m| m.as_str()))
                .collect();
            reg.push_str(&format[last..whole.start()]);
            let ws = caps.get(1).map_or("", |m| m.as_str());
            reg.push_str(&format!("(?:{})?", param_group(ws, &key)));
            last = whole.end();
            names.push(key.clone());
            optional.push((key, default));
        }
        reg.push_str(&format[last..]);
        let mut out = String::new();
        let mut last = 0;
        for caps in required_re.captures_iter(&reg) {
            let caps = caps.map_err(|e| bad(e.to_string()))?;
            let whole = caps.get(0).expect("group 0");
            let key = caps.get(2).map_or("", |m| m.as_str()).to_string();
            out.push_str(&reg[last..whole.start()]);
            out.push_str(&param_group(caps.get(1).map_or("", |m| m.as_str()), &key));
            last = whole.end();
            names.push(key);
        }
        out.push_str(&reg[last..]);
        let mut seen = std::collections::BTreeSet::new();
        for name in &names {
            if !is_group_name(name) {
                return Err(bad(format!(
                    "parameter name {name:?} must be letters, digits and underscores, not starting with a digit"
                )));
            }
            if !seen.insert(name) {
                return Err(bad(format!("parameter {name:?} appears more than once")));
            }
        }
        let trimmed = out.trim_start();
        let anchored_start = trimmed.starts_with('^') || trimmed.starts_with(r"\A");
        let t = out.trim_end();
        let anchored_end = (t.ends_with('$') && !t.ends_with(r"\$")) || t.ends_with(r"\Z");
        let mut full = String::from("(?s)");
        if !anchored_start {
            full.push_str(r"^\s*");
        }
        full.push_str(&out);
        if !anchored_end {
            full.push_str(r"\s*$");
        }
        let regex = Regex::new(&full).map_err(|e| bad(e.to_string()))?;
        let literal = optional_re.replace_all(format, "");
        let literal = required_re.replace_all(&literal, "");
        Ok(CompiledFormat {
            format: format.to_string(),
            regex,
            optional,
            specificity: literal.chars().filter(|c| !c.is_whitespace()).count(),
        })
    }

    /// The format string.
    pub fn format(&self) -> &str {
        &self.format
    }

    /// How specific the format is: its literal text, placeholders
    /// removed and whitespace ignored.
    pub fn specificity(&self) -> usize {
        self.specificity
    }

    /// The parameters `command` gives (StackStorm's
    /// `get_extracted_param_value`).
    pub fn extract(&self, command: &str) -> Result<Map<String, Value>, AliasError> {
        let (pairs, stream) = split_pairs(command);
        let caps = self
            .regex
            .captures(stream.as_str())
            .ok()
            .flatten()
            .ok_or_else(|| AliasError::NoMatch {
                command: command.to_string(),
                format: self.format.clone(),
            })?;
        self.params(&caps, &pairs, &stream)
    }

    /// Every parameter set `command` gives, one per match
    /// (`match_multiple`).
    pub fn extract_multiple(&self, command: &str) -> Result<Vec<Map<String, Value>>, AliasError> {
        let (pairs, stream) = split_pairs(command);
        let mut out = Vec::new();
        for caps in self.regex.captures_iter(stream.as_str()) {
            let Ok(caps) = caps else { break };
            out.push(self.params(&caps, &pairs, &stream)?);
        }
        if out.is_empty() {
            return Err(AliasError::NoMatch {
                command: command.to_string(),
                format: self.format.clone(),
            });
        }
        Ok(out)
    }

    fn params(
        &self,
        caps: &fancy_regex::Captures<'_, str>,
        pairs: &[(String, String)],
        stream: &str,
    ) -> Result<Map<String, Value>, AliasError> {
        // Every named group: the placeholders', and any the format's own
        // regular expression names (`(?P<key>...)`), as StackStorm's
        // `groupdict()`.
        let mut result: BTreeMap<String, Option<String>> = self
            .regex
            .capture_names()
            .flatten()
            .map(|n| (n.to_string(), caps.name(n).map(|m| m.as_str().to_string())))
            .collect();
        for (name, default) in &self.optional {
            let matched = result
                .get(name)
                .cloned()
                .flatten()
                .filter(|v| !v.is_empty());
            result.insert(
                name.clone(),
                Some(matched.unwrap_or_else(|| default.clone())),
            );
        }
        for (k, v) in pairs {
            result.insert(k.clone(), Some(v.clone()));
        }
        let any_value = result
            .values()
            .any(|v| v.as_deref().is_some_and(|s| !s.is_empty()));
        if !self.format.is_empty() && stream.trim().is_empty() && !any_value {
            return Err(AliasError::NoValue);
        }
        Ok(result
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, Value::String(v))))
            .collect())
    }
}

fn is_group_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Cuts the `key=value` pairs off the end of `command` (StackStorm's
/// `match_kv_pairs_at_end`): the pairs, and the rest padded with spaces.
fn split_pairs(command: &str) -> (Vec<(String, String)>, String) {
    let ending = compile(&format!(r"(?s)^.*?((?:{PAIR}\s*)*)$"));
    let pair = compile(&format!("(?s){PAIR}"));
    let mut stream = command.to_string();
    let mut pairs = Vec::new();
    if let Ok(Some(caps)) = ending.captures(command) {
        if let Some(end) = caps.get(1).filter(|m| !m.as_str().is_empty()) {
            let end = end.as_str();
            for p in pair.captures_iter(end).flatten() {
                let key = p.get(1).map_or("", |m| m.as_str()).to_string();
                let value: String = (3..=6)
                    .filter_map(|i| p.get(i).map(|m| m.as_str()))
                    .collect();
                pairs.push((key, value));
            }
            stream = stream.replace(end, "");
        }
    }
    (pairs, format!(" {stream} "))
}

/// An alias with its formats compiled, as the matcher uses it.
#[derive(Debug, Clone)]
pub struct CompiledAlias {
    pub def: AliasDef,
    /// Each pattern with its compiled format (`None`: it does not compile,
    /// and never matches).
    pub patterns: Vec<(Pattern, Option<CompiledFormat>)>,
}

impl CompiledAlias {
    pub fn new(def: AliasDef) -> Self {
        let patterns = def
            .patterns()
            .into_iter()
            .map(|p| {
                let compiled = CompiledFormat::new(&p.representation).ok();
                (p, compiled)
            })
            .collect();
        CompiledAlias { def, patterns }
    }
}

/// The alias and format a command matched.
#[derive(Debug, Clone)]
pub struct AliasMatch<'a> {
    pub alias: &'a CompiledAlias,
    pub pattern: &'a Pattern,
    pub format: &'a CompiledFormat,
}

impl AliasMatch<'_> {
    /// The parameter sets of the command: one, or one per match for a
    /// `match_multiple` format.
    pub fn parameters(&self, command: &str) -> Result<Vec<Map<String, Value>>, AliasError> {
        if self.pattern.match_multiple {
            self.format.extract_multiple(command)
        } else {
            self.format.extract(command).map(|p| vec![p])
        }
    }
}

impl fmt::Display for AliasMatch<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}",
            self.alias.def.reference(),
            self.pattern.representation
        )
    }
}

/// Finds the alias `command` names among the enabled `aliases`
/// (StackStorm's `get_matching_alias`, with the most specific format
/// winning over less specific ones).
pub fn match_command<'a>(
    command: &str,
    aliases: impl IntoIterator<Item = &'a CompiledAlias> + Clone,
) -> Result<AliasMatch<'a>, AliasError> {
    for multiple in [false, true] {
        let mut found: Vec<AliasMatch<'a>> = Vec::new();
        for alias in aliases.clone().into_iter().filter(|a| a.def.enabled) {
            for (pattern, format) in &alias.patterns {
                let Some(format) = format else { continue };
                if pattern.match_multiple != multiple {
                    continue;
                }
                if format.extract(command).is_ok() {
                    found.push(AliasMatch {
                        alias,
                        pattern,
                        format,
                    });
                }
            }
        }
        if found.is_empty() {
            continue;
        }
        let best = found
            .iter()
            .map(|m| m.format.specificity())
            .max()
            .unwrap_or(0);
        found.retain(|m| m.format.specificity() == best);
        if found.len() > 1 {
            return Err(AliasError::Ambiguous {
                command: command.to_string(),
                candidates: found.iter().map(ToString::to_string).collect(),
            });
        }
        return Ok(found.remove(0));
    }
    Err(AliasError::NoPatterns {
        command: command.to_string(),
    })
}

/// One help string (`GET /actionalias/help`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HelpString {
    pub pack: String,
    pub display: String,
    pub description: Option<String>,
}

/// StackStorm's `generate_helpstring_result`: the displays of the enabled
/// aliases (of `pack`, matching the case-insensitive regular expression
/// `filter`), `limit` of them from `offset` (0: no limit), and how many
/// there are in all.
pub fn help<'a>(
    aliases: impl IntoIterator<Item = &'a AliasDef>,
    filter: Option<&str>,
    pack: Option<&str>,
    limit: usize,
    offset: usize,
) -> Result<(usize, Vec<HelpString>), AliasError> {
    let filter = Regex::new(&format!("(?i){}", filter.unwrap_or(""))).map_err(|e| {
        AliasError::BadFormat {
            format: filter.unwrap_or("").to_string(),
            reason: e.to_string(),
        }
    })?;
    let mut count = 0;
    let mut out = Vec::new();
    for alias in aliases {
        if !alias.enabled || pack.is_some_and(|p| p != alias.pack) {
            continue;
        }
        for display in alias.displays() {
            if !filter.is_match(&display).unwrap_or(false) {
                continue;
            }
            let in_range = count >= offset && (limit == 0 || count < offset + limit);
            if in_range {
                out.push(HelpString {
                    pack: alias.pack.clone(),
                    display,
                    description: alias.description.clone(),
                });
            }
            count += 1;
        }
    }
    Ok((count, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn extract(format: &str, command: &str) -> Result<Value, AliasError> {
        CompiledFormat::new(format)?
            .extract(command)
            .map(Value::Object)
    }

    // Cases from StackStorm's st2common/tests/unit/test_action_alias_utils.py.
    #[test]
    fn placeholders_defaults_pairs_and_quotes_as_stackstorm() {
        assert_eq!(
            extract("foo bar {{param1}}", "foo bar some").unwrap(),
            json!({"param1": "some"})
        );
        assert_eq!(
            extract("foo bar {{param1}} {{param2=default}}", "foo bar some").unwrap(),
            json!({"param1": "some", "param2": "default"})
        );
        assert_eq!(
            extract(
                "foo bar {{param1}} {{param2=\"an example\"}}",
                "foo bar some"
            )
            .unwrap(),
            json!({"param1": "some", "param2": "an example"})
        );
        assert_eq!(
            extract(
                "run {{cmd}} on {{hosts}}",
                "run \"ls -la /tmp\" on web-1 timeout=30 sudo='yes please'"
            )
            .unwrap(),
            json!({"cmd": "ls -la /tmp", "hosts": "web-1", "timeout": "30", "sudo": "yes please"})
        );
        assert_eq!(
            extract("foo {{p}}", "foo {\"a\": 1}").unwrap(),
            json!({"p": "{\"a\": 1}"})
        );
        assert_eq!(
            extract("(run|execute) {{cmd}}", "execute date").unwrap(),
            json!({"cmd": "date"})
        );
        assert!(matches!(
            extract("foo bar {{param1}}", "baz bar some"),
            Err(AliasError::NoMatch { .. })
        ));
        assert_eq!(
            extract("{{p=x}}", "").unwrap(),
            json!({"p": "x"}),
            "an empty command takes the defaults"
        );
        assert_eq!(
            extract("{{p=\"\"}}", "").unwrap_err(),
            AliasError::NoValue,
            "an empty command and empty defaults"
        );
    }

    /// StackStorm's own cases (test_action_alias_utils.py), verbatim.
    #[test]
    fn stackstorms_parser_cases() {
        let cases = [
            ("", "", json!({})),
            ("", "a=foobar1", json!({"a": "foobar1"})),
            (
                "foo",
                "foo a=\"foobar2 poonies bar\"",
                json!({"a": "foobar2 poonies bar"}),
            ),
            (
                "foo",
                "foo a='foobar2 poonies bar'",
                json!({"a": "foobar2 poonies bar"}),
            ),
            (
                "foo",
                "foo a={\"foobar2\": \"poonies\"}",
                json!({"a": "{\"foobar2\": \"poonies\"}"}),
            ),
            (
                "",
                "a=foobar1 b=\"boobar2 3 4\" c='coobar3 4' d={\"a\": \"b\"}",
                json!({"a": "foobar1", "b": "boobar2 3 4", "c": "coobar3 4", "d": "{\"a\": \"b\"}"}),
            ),
            (
                "{{ captain }} is my captain",
                "Malcolm Reynolds is my captain weirdo=\"River Tam\"",
                json!({"captain": "Malcolm Reynolds", "weirdo": "River Tam"}),
            ),
            (
                "skip {{a}} more skip {{b}} and skip more.",
                "skip a1 more skip b1 and skip more.",
                json!({"a": "a1", "b": "b1"}),
            ),
            (
                "skip {{a}} more skip {{b}}",
                "skip a1 more skip b1",
                json!({"a": "a1", "b": "b1"}),
            ),
            (
                "skip {{a}} more skip {{b}} and skip more.",
                "skip \"a1 a2\" more skip b1 and skip more.",
                json!({"a": "a1 a2", "b": "b1"}),
            ),
            (
                "acl {{a}} {{b}} {{c}} {{d=1}}",
                "acl \"a1 a2\" \"b1\" \"c1\"",
                json!({"a": "a1 a2", "b": "b1", "c": "c1", "d": "1"}),
            ),
            ("acl {{a=test}}", "acl", json!({"a": "test"})),
            (
                "skip {{a}} more skip.",
                "skip {\"a\": \"b\", \"c\": \"d\"} more skip.",
                json!({"a": "{\"a\": \"b\", \"c\": \"d\"}"}),
            ),
            (
                "skip {{a}} more skip {{b}}.",
                "skip {\"a\": \"b\", \"c\": \"d\"} more skip x.",
                json!({"a": "{\"a\": \"b\", \"c\": \"d\"}", "b": "x"}),
            ),
            (
                "s {{a}} more {{ b }} more {{ c=99 }} more {{ d = 99 }}",
                "s one more two more three more",
                json!({"a": "one", "b": "two", "c": "three", "d": "99"}),
            ),
            (
                "skip {{ a = value }} more",
                "skip one more",
                json!({"a": "one"}),
            ),
            (
                "skip {{ a = value }} more",
                "skip more",
                json!({"a": "value"}),
            ),
            (
                "two by two hands of {{ color = {{ colors.default_color }} }}",
                "two by two hands of",
                json!({"color": "{{ colors.default_color }}"}),
            ),
            (
                "testing {{ a }}",
                "testing value b=value2",
                json!({"a": "value", "b": "value2"}),
            ),
            (
                "testing {{ a=new }}",
                "testing b=\"another value\"",
                json!({"a": "new", "b": "another value"}),
            ),
            (
                "testing {{ b=abc }} {{ c=xyz }}",
                "testing newvalue d={\"1\": \"2\"} e=\"long value\"",
                json!({"b": "newvalue", "c": "xyz", "d": "{\"1\": \"2\"}", "e": "long value"}),
            ),
            (
                "skip {{d=test1}} more skip {{e=test1}}.",
                "skip more skip",
                json!({"d": "test1", "e": "test1"}),
            ),
            (
                "skip {{d=test}} more skip {{e=test}}",
                "skip ponies more skip",
                json!({"d": "ponies", "e": "test"}),
            ),
            (
                "{{ p0='http' }} g {{ p1=p }} a {{ url }} {{ p2={'a':'b'} }} {{ p3={{ e.i }} }}",
                "g a http://google.com {{ execution.id }} p4='testing' p5={'a':'c'}",
                json!({"p0": "http", "p1": "p", "url": "http://google.com", "p2": "{{ execution.id }}",
                       "p3": "{{ e.i }}", "p4": "testing", "p5": "{'a':'c'}"}),
            ),
            (
                "foo bar",
                "foo bar pony1=foo pony2=bar",
                json!({"pony1": "foo", "pony2": "bar"}),
            ),
            (
                r"^\s*foo (?P<issue_key>[A-Z][A-Z0-9]+-[0-9]+)",
                "foo ASDF-1234",
                json!({"issue_key": "ASDF-1234"}),
            ),
            (
                r"foo (?P<issue_key>[A-Z][A-Z0-9]+-[0-9]+)\s*$",
                "foo ASDF-1234",
                json!({"issue_key": "ASDF-1234"}),
            ),
            (
                r"^\s*foo (?P<issue_key>[A-Z][A-Z0-9]+-[0-9]+) bar\s*$",
                "foo ASDF-1234 bar",
                json!({"issue_key": "ASDF-1234"}),
            ),
        ];
        for (format, command, want) in cases {
            assert_eq!(
                extract(format, command).ok(),
                Some(want),
                "{format:?} / {command:?}"
            );
        }
        for (format, command) in [
            ("skip {{d}} more skip {{e}}.", ""),
            ("foo bar ponies", "foo lulz ponies"),
            (
                r"^\s*foo (?P<issue_key>[A-Z][A-Z0-9]+-[0-9]+)",
                "bar foo ASDF-1234",
            ),
            (
                r"foo (?P<issue_key>[A-Z][A-Z0-9]+-[0-9]+)\s*$",
                "foo ASDF-1234 bar",
            ),
            (
                r"^\s*foo (?P<issue_key>[A-Z][A-Z0-9]+-[0-9]+)\s*$",
                "bar ASDF-1234",
            ),
        ] {
            assert!(
                matches!(extract(format, command), Err(AliasError::NoMatch { .. })),
                "{format:?} / {command:?}"
            );
        }
    }

    #[test]
    fn malformed_formats_are_rejected() {
        for f in ["run {{cmd}} (", "run {{cmd}} on {{cmd}}", "run {{my-cmd}}"] {
            assert!(
                matches!(CompiledFormat::new(f), Err(AliasError::BadFormat { .. })),
                "{f}"
            );
        }
    }

    fn alias(name: &str, formats: &[&str]) -> CompiledAlias {
        CompiledAlias::new(AliasDef {
            name: name.into(),
            pack: "p".into(),
            description: Some(format!("{name} things")),
            enabled: true,
            action_ref: "core.local".into(),
            formats: formats
                .iter()
                .map(|f| AliasFormat::Text(f.to_string()))
                .collect(),
            ack: None,
            result: None,
            extra: None,
            immutable_parameters: None,
            metadata_file: String::new(),
        })
    }

    #[test]
    fn the_most_specific_format_wins_and_ties_are_ambiguous() {
        let aliases = [
            alias("run", &["run {{cmd}}"]),
            alias("run_on", &["run {{cmd}} on {{hosts}}"]),
            alias("same", &["deploy {{app}}"]),
            alias("same2", &["deploy {{service}}"]),
        ];
        let m = match_command("run date on web-1", aliases.iter()).unwrap();
        assert_eq!(m.alias.def.name, "run_on");
        assert_eq!(
            m.parameters("run date on web-1").unwrap(),
            vec![json!({"cmd": "date", "hosts": "web-1"})
                .as_object()
                .unwrap()
                .clone()]
        );
        assert_eq!(
            match_command("run date", aliases.iter())
                .unwrap()
                .alias
                .def
                .name,
            "run"
        );
        match match_command("deploy x", aliases.iter()) {
            Err(AliasError::Ambiguous { candidates, .. }) => assert_eq!(candidates.len(), 2),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            match_command("reboot", aliases.iter()),
            Err(AliasError::NoPatterns { .. })
        ));
    }

    #[test]
    fn help_filters_pages_and_counts() {
        let aliases = [
            alias("a", &["run {{cmd}}", "execute {{cmd}}"]),
            alias("b", &["show executions"]),
        ];
        let defs: Vec<_> = aliases.iter().map(|a| a.def.clone()).collect();
        let (n, all) = help(&defs, None, None, 0, 0).unwrap();
        assert_eq!((n, all.len()), (3, 3));
        let (n, page) = help(&defs, Some("RUN|show"), None, 1, 1).unwrap();
        assert_eq!(n, 2);
        assert_eq!(page[0].display, "show executions");
    }
}

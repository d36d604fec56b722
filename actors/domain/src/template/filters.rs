//! StackStorm's Jinja filters (`st2common/st2common/util/jinja.py`) and
//! Python's `json.dumps` output they use.

use std::fmt::Write as _;

use minijinja::value::Kwargs;
use minijinja::{Environment, Error, ErrorKind, Value};
use serde_json::Value as Json;

use super::jsonpath::JsonPath;
use super::kv::KvNode;
use super::python::{python_float, python_index, python_regex, python_str, to_json, RegexFlags};
use super::NONE_MAGIC_VALUE;
pub(super) fn register(env: &mut Environment<'static>) {
    env.add_filter("decrypt_kv", decrypt_kv);
    env.add_filter("from_json_string", from_json_string);
    env.add_filter("from_yaml_string", from_yaml_string);
    env.add_filter("to_json_string", to_json_string);
    env.add_filter("to_yaml_string", to_yaml_string);
    env.add_filter("json_escape", json_escape);
    env.add_filter("jsonpath_query", jsonpath_query);
    env.add_filter("to_complex", to_complex);
    env.add_filter("use_none", use_none);
    env.add_filter("regex_match", regex_match);
    env.add_filter("regex_replace", regex_replace);
    env.add_filter("regex_search", regex_search);
    env.add_filter("regex_substring", regex_substring);
    env.add_filter("to_human_time_from_seconds", to_human_time_from_seconds);
    env.add_filter("version_compare", version_compare);
    env.add_filter("version_more_than", version_more_than);
    env.add_filter("version_less_than", version_less_than);
    env.add_filter("version_equal", version_equal);
    env.add_filter("version_match", version_match);
    env.add_filter("version_bump_major", version_bump_major);
    env.add_filter("version_bump_minor", version_bump_minor);
    env.add_filter("version_bump_patch", version_bump_patch);
    env.add_filter("version_strip_patch", version_strip_patch);
    env.add_filter("basename", basename);
    env.add_filter("dirname", dirname);
    // Python's `str()`, so `{{ x | string }}` prints as `{{ x }}` does.
    env.add_filter("string", |v: Value| python_str(&v));
}

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidOperation, message.into())
}

/// An optional argument given by position or by keyword.
fn arg<'a, T>(positional: Option<T>, kwargs: &'a Kwargs, name: &'a str) -> Result<Option<T>, Error>
where
    T: minijinja::value::ArgType<'a, Output = T>,
{
    match positional {
        Some(v) => Ok(Some(v)),
        None => kwargs.get::<Option<T>>(name),
    }
}

/// Without a cipher (see [`Renderer::with_cipher`]) there is nothing to
/// open: passes a value through and reports a key that does not exist,
/// as StackStorm does.
pub(super) fn decrypt_kv(value: Value) -> Result<Value, Error> {
    missing_kv(&value)?;
    Ok(value)
}

/// StackStorm's error for `decrypt_kv` on a key that does not exist.
pub(super) fn missing_kv(value: &Value) -> Result<(), Error> {
    match value.downcast_object_ref::<KvNode>() {
        Some(node) => Err(invalid(format!(
            "Referenced datastore item \"{}\" doesn't exist or it contains an empty string",
            node.key.as_deref().unwrap_or_default()
        ))),
        None => Ok(()),
    }
}

fn from_json_string(value: Value) -> Result<Value, Error> {
    let json: Json = serde_json::from_str(&python_str(&value))
        .map_err(|e| invalid(format!("from_json_string: {e}")))?;
    Ok(Value::from_serialize(&json))
}

fn from_yaml_string(value: Value) -> Result<Value, Error> {
    let json: Json = serde_yaml::from_str(&python_str(&value))
        .map_err(|e| invalid(format!("from_yaml_string: {e}")))?;
    Ok(Value::from_serialize(&json))
}

/// `json.dumps(value, indent=indent, sort_keys=sort_keys,
/// separators=(",", ": "))`, StackStorm's defaults.
fn to_json_string(
    value: Value,
    indent: Option<u8>,
    sort_keys: Option<bool>,
    kwargs: Kwargs,
) -> Result<String, Error> {
    let style = JsonStyle {
        indent: arg(indent, &kwargs, "indent")?,
        sort_keys: arg(sort_keys, &kwargs, "sort_keys")?.unwrap_or(false),
        item_separator: ",",
    };
    kwargs.assert_all_used()?;
    Ok(style.dumps(&to_json(&value)?))
}

/// `yaml.safe_dump(value, default_flow_style=False)`. The block style
/// and indentation are serde_yaml's; `indent` and `allow_unicode` are
/// accepted for compatibility and don't change the output.
fn to_yaml_string(
    value: Value,
    _indent: Option<Value>,
    _allow_unicode: Option<Value>,
    kwargs: Kwargs,
) -> Result<String, Error> {
    for name in ["indent", "allow_unicode"] {
        kwargs.get::<Option<Value>>(name)?;
    }
    kwargs.assert_all_used()?;
    serde_yaml::to_string(&to_json(&value)?).map_err(|e| invalid(format!("to_yaml_string: {e}")))
}

/// `json.dumps(value)` without the surrounding quotes: escapes a string
/// for embedding in JSON.
fn json_escape(value: Value) -> Result<String, Error> {
    let dumped = JsonStyle::PYTHON_DEFAULT.dumps(&to_json(&value)?);
    Ok(dumped.trim_matches('"').to_string())
}

/// The list of values `query` selects in `value`, or `None` when it
/// selects nothing.
fn jsonpath_query(value: Value, query: &str) -> Result<Value, Error> {
    let path = JsonPath::parse(query).map_err(|e| invalid(e.to_string()))?;
    let json = to_json(&value)?;
    let found = path.find(&json);
    Ok(if found.is_empty() {
        Value::from(())
    } else {
        Value::from_serialize(&found)
    })
}

/// `json.dumps(value)`.
fn to_complex(value: Value) -> Result<String, Error> {
    Ok(JsonStyle::PYTHON_DEFAULT.dumps(&to_json(&value)?))
}

fn use_none(value: Value) -> Value {
    if value.is_none() {
        Value::from(NONE_MAGIC_VALUE)
    } else {
        value
    }
}

fn compile(pattern: &str, flags: RegexFlags) -> Result<fancy_regex::Regex, Error> {
    python_regex(pattern, flags).map_err(|e| invalid(format!("invalid regex {pattern:?}: {e}")))
}

/// The regex of a `regex_*` filter: `pattern`, with its `ignorecase`
/// argument (positional or keyword), once every keyword argument is used;
/// `anchored` for `re.match`.
fn filter_regex(
    pattern: &str,
    ignorecase: Option<bool>,
    kwargs: &Kwargs,
    anchored: bool,
) -> Result<fancy_regex::Regex, Error> {
    let flags = RegexFlags {
        anchored,
        ignore_case: arg(ignorecase, kwargs, "ignorecase")?.unwrap_or(false),
        dot_all: false,
    };
    kwargs.assert_all_used()?;
    compile(pattern, flags)
}

fn regex_failed(e: fancy_regex::Error) -> Error {
    invalid(format!("regex: {e}"))
}

/// `bool(re.match(pattern, value))`.
fn regex_match(
    value: Value,
    pattern: &str,
    ignorecase: Option<bool>,
    kwargs: Kwargs,
) -> Result<bool, Error> {
    filter_regex(pattern, ignorecase, &kwargs, true)?
        .is_match(&python_str(&value))
        .map_err(regex_failed)
}

/// `bool(re.search(pattern, value))`.
fn regex_search(
    value: Value,
    pattern: &str,
    ignorecase: Option<bool>,
    kwargs: Kwargs,
) -> Result<bool, Error> {
    filter_regex(pattern, ignorecase, &kwargs, false)?
        .is_match(&python_str(&value))
        .map_err(regex_failed)
}

/// `re.sub(pattern, replacement, value)`, with Python's replacement
/// syntax (`\1`, `\g<name>`).
fn regex_replace(
    value: Value,
    pattern: &str,
    replacement: &str,
    ignorecase: Option<bool>,
    kwargs: Kwargs,
) -> Result<String, Error> {
    let regex = filter_regex(pattern, ignorecase, &kwargs, false)?;
    let pieces = parse_replacement(replacement, &regex)?;
    let text = python_str(&value);
    let mut out = String::new();
    let mut last = 0;
    for caps in regex.captures_iter(&text) {
        let caps = caps.map_err(regex_failed)?;
        let Some(whole) = caps.get(0) else { continue };
        out.push_str(&text[last..whole.start()]);
        for piece in &pieces {
            match piece {
                Piece::Literal(s) => out.push_str(s),
                Piece::Group(i) => out.push_str(caps.get(*i).map_or("", |m| m.as_str())),
            }
        }
        last = whole.end();
    }
    out.push_str(&text[last..]);
    Ok(out)
}

#[derive(Debug)]
enum Piece {
    Literal(String),
    /// A capture group by index; one that did not take part in the
    /// match inserts nothing.
    Group(usize),
}

/// Parses a Python `re.sub` replacement for `regex`: `\1`..`\99`,
/// `\g<1>`, `\g<name>`, and the escapes `\n \t \r \f \v \a \\`; any
/// other backslash stays as written. Like Python, a reference to a group
/// the pattern doesn't have is an error even when nothing matches.
fn parse_replacement(replacement: &str, regex: &fancy_regex::Regex) -> Result<Vec<Piece>, Error> {
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut chars = replacement.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            literal.push(c);
            continue;
        }
        let group = match chars.next() {
            Some(d) if d.is_ascii_digit() => {
                let mut digits = d.to_string();
                if let Some(&d2) = chars.peek().filter(|c| c.is_ascii_digit()) {
                    digits.push(d2);
                    chars.next();
                }
                digits
            }
            Some('g') => {
                if chars.next() != Some('<') {
                    return Err(invalid("regex_replace: missing < after \\g"));
                }
                chars.by_ref().take_while(|&c| c != '>').collect()
            }
            Some(e) => {
                match e {
                    'n' => literal.push('\n'),
                    't' => literal.push('\t'),
                    'r' => literal.push('\r'),
                    'f' => literal.push('\x0c'),
                    'v' => literal.push('\x0b'),
                    'a' => literal.push('\x07'),
                    '\\' => literal.push('\\'),
                    other => {
                        literal.push('\\');
                        literal.push(other);
                    }
                }
                continue;
            }
            None => {
                literal.push('\\');
                continue;
            }
        };
        let index = match group.parse::<usize>() {
            Ok(i) => Some(i).filter(|i| *i < regex.captures_len()),
            Err(_) => regex
                .capture_names()
                .position(|n| n == Some(group.as_str())),
        }
        .ok_or_else(|| invalid(format!("regex_replace: invalid group reference {group}")))?;
        if !literal.is_empty() {
            pieces.push(Piece::Literal(std::mem::take(&mut literal)));
        }
        pieces.push(Piece::Group(index));
    }
    if !literal.is_empty() {
        pieces.push(Piece::Literal(literal));
    }
    Ok(pieces)
}

/// `re.findall(pattern, value)[result_index]`: the whole match without
/// groups, the group with one, the list of groups with several.
fn regex_substring(
    value: Value,
    pattern: &str,
    result_index: Option<i64>,
    ignorecase: Option<bool>,
    kwargs: Kwargs,
) -> Result<Value, Error> {
    let index = arg(result_index, &kwargs, "result_index")?.unwrap_or(0);
    let regex = filter_regex(pattern, ignorecase, &kwargs, false)?;
    let text = python_str(&value);
    let groups = regex.captures_len() - 1;
    let mut found = Vec::new();
    for caps in regex.captures_iter(&text) {
        let caps = caps.map_err(regex_failed)?;
        let group = |i| Value::from(caps.get(i).map_or("", |m| m.as_str()));
        found.push(match groups {
            0 => group(0),
            1 => group(1),
            n => Value::from((1..=n).map(group).collect::<Vec<_>>()),
        });
    }
    python_index(&found, index)
        .cloned()
        .ok_or_else(|| invalid(format!("regex_substring: no match at index {index}")))
}

/// `10` → `10s`, `3725` → `1h2m5s`, `0.5` → `0.5μs`. StackStorm reads
/// the day of the month here, which drops whole months past 31 days;
/// this counts the days of the year instead.
fn to_human_time_from_seconds(seconds: Value) -> Result<String, Error> {
    if !seconds.is_number() {
        return Err(invalid(format!(
            "to_human_time_from_seconds expects a number, got {}",
            python_str(&seconds)
        )));
    }
    let as_float = f64::try_from(seconds.clone())?;
    if as_float == 0.0 {
        return Ok("0s".to_string());
    }
    if as_float < 1.0 {
        return Ok(format!("{}\u{3bc}s", python_str(&seconds)));
    }
    let total = if seconds.is_integer() {
        i64::try_from(seconds)?
    } else {
        // Python's round(): half to even; far beyond any duration anyway.
        as_float.round_ties_even() as i64
    };
    let parts = [
        total / (365 * 86400),
        total % (365 * 86400) / 86400,
        total % 86400 / 3600,
        total % 3600 / 60,
        total % 60,
    ];
    let labels = ["y", "d", "h", "m", "s"];
    let first = parts.iter().position(|&p| p != 0).unwrap_or(4);
    Ok(parts[first..]
        .iter()
        .zip(&labels[first..])
        .map(|(p, l)| format!("{p}{l}"))
        .collect())
}

fn version(value: &str) -> Result<semver::Version, Error> {
    semver::Version::parse(value)
        .map_err(|e| invalid(format!("{value:?} is not a valid semantic version: {e}")))
}

/// `-1`, `0` or `1`, ignoring build metadata like Python's semver.
fn version_compare(value: &str, other: &str) -> Result<i64, Error> {
    Ok(match version(value)?.cmp_precedence(&version(other)?) {
        std::cmp::Ordering::Less => -1,
        std::cmp::Ordering::Equal => 0,
        std::cmp::Ordering::Greater => 1,
    })
}

fn version_more_than(value: &str, other: &str) -> Result<bool, Error> {
    Ok(version_compare(value, other)? == 1)
}

fn version_less_than(value: &str, other: &str) -> Result<bool, Error> {
    Ok(version_compare(value, other)? == -1)
}

fn version_equal(value: &str, other: &str) -> Result<bool, Error> {
    Ok(version_compare(value, other)? == 0)
}

/// Python semver's `match`: `>=1.2.3`, `<=`, `==`, `!=`, `>`, `<`, or a
/// bare version meaning `==`.
fn version_match(value: &str, expr: &str) -> Result<bool, Error> {
    let (op, other) = ["==", "!=", ">=", "<=", ">", "<"]
        .iter()
        .find_map(|op| expr.strip_prefix(op).map(|rest| (*op, rest)))
        .or_else(|| {
            expr.starts_with(|c: char| c.is_ascii_digit())
                .then_some(("==", expr))
        })
        .ok_or_else(|| invalid(format!("version_match: invalid match expression {expr:?}")))?;
    let cmp = version_compare(value, other.trim())?;
    Ok(match op {
        "==" => cmp == 0,
        "!=" => cmp != 0,
        ">=" => cmp >= 0,
        "<=" => cmp <= 0,
        ">" => cmp > 0,
        _ => cmp < 0,
    })
}

fn bump(n: u64) -> Result<u64, Error> {
    n.checked_add(1)
        .ok_or_else(|| invalid("version number too large to bump"))
}

fn version_bump_major(value: &str) -> Result<String, Error> {
    let v = version(value)?;
    Ok(semver::Version::new(bump(v.major)?, 0, 0).to_string())
}

fn version_bump_minor(value: &str) -> Result<String, Error> {
    let v = version(value)?;
    Ok(semver::Version::new(v.major, bump(v.minor)?, 0).to_string())
}

fn version_bump_patch(value: &str) -> Result<String, Error> {
    let v = version(value)?;
    Ok(semver::Version::new(v.major, v.minor, bump(v.patch)?).to_string())
}

fn version_strip_patch(value: &str) -> Result<String, Error> {
    let v = version(value)?;
    Ok(format!("{}.{}", v.major, v.minor))
}

/// Python's `os.path.basename`: everything after the last `/`.
fn basename(path: &str) -> String {
    path.rsplit_once('/')
        .map_or(path, |(_, tail)| tail)
        .to_string()
}

/// Python's `os.path.dirname`: everything before the last `/`, without
/// trailing slashes unless it is all slashes.
fn dirname(path: &str) -> String {
    let Some((head, _)) = path.rsplit_once('/') else {
        return String::new();
    };
    let trimmed = head.trim_end_matches('/');
    if trimmed.is_empty() {
        format!("{head}/")
    } else {
        trimmed.to_string()
    }
}

/// Python's `json.dumps` output.
struct JsonStyle {
    indent: Option<u8>,
    sort_keys: bool,
    item_separator: &'static str,
}

impl JsonStyle {
    /// `json.dumps(value)` with no options.
    const PYTHON_DEFAULT: JsonStyle = JsonStyle {
        indent: None,
        sort_keys: false,
        item_separator: ", ",
    };

    fn dumps(&self, value: &Json) -> String {
        let mut out = String::new();
        self.write(&mut out, value, 0);
        out
    }

    fn write(&self, out: &mut String, value: &Json, depth: usize) {
        match value {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Number(n) => match n.as_f64() {
                Some(f) if n.is_f64() => out.push_str(&python_float(f)),
                _ => write!(out, "{n}").unwrap_or_default(),
            },
            Json::String(s) => json_quote_ascii(out, s),
            Json::Array(items) => {
                self.write_items(out, '[', ']', depth, items.iter(), |out, item| {
                    self.write(out, item, depth + 1)
                })
            }
            Json::Object(map) => {
                let mut entries: Vec<_> = map.iter().collect();
                if self.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(b.0));
                }
                self.write_items(out, '{', '}', depth, entries.into_iter(), |out, (k, v)| {
                    json_quote_ascii(out, k);
                    out.push_str(": ");
                    self.write(out, v, depth + 1);
                })
            }
        }
    }

    fn write_items<T>(
        &self,
        out: &mut String,
        open: char,
        close: char,
        depth: usize,
        items: impl ExactSizeIterator<Item = T>,
        mut write_item: impl FnMut(&mut String, T),
    ) {
        out.push(open);
        if items.len() == 0 {
            out.push(close);
            return;
        }
        let newline = |out: &mut String, depth: usize| {
            if let Some(indent) = self.indent {
                out.push('\n');
                out.push_str(&" ".repeat(usize::from(indent) * depth));
            }
        };
        for (i, item) in items.enumerate() {
            if i > 0 {
                out.push_str(if self.indent.is_some() {
                    self.item_separator.trim_end()
                } else {
                    self.item_separator
                });
            }
            newline(out, depth + 1);
            write_item(out, item);
        }
        newline(out, depth);
        out.push(close);
    }
}

/// A JSON string with every non-ASCII character escaped (`ensure_ascii`).
fn json_quote_ascii(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            c if c.is_ascii() && !c.is_ascii_control() => out.push(c),
            c => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(out, "\\u{unit:04x}").unwrap_or_default();
                }
            }
        }
    }
    out.push('"');
}

//! Python's semantics for values: how they print, their conversion to JSON,
//! list indexing, and Python `re` on fancy-regex.

use std::fmt::Write as _;

use minijinja::value::ValueKind;
use minijinja::{Error, ErrorKind, Value};
use serde_json::Value as Json;

/// [`python_str`] of a JSON value: how Orquesta's YAQL writes a value
/// into the text around its expression.
pub(crate) fn python_text(value: &serde_json::Value) -> String {
    python_str(&Value::from_serialize(value))
}

/// `str(value)` as Python writes it: strings as themselves, `None`,
/// `True`/`False`, Python float repr, lists and dicts as Python literals.
pub(super) fn python_str(value: &Value) -> String {
    match value.kind() {
        ValueKind::Undefined => String::new(),
        ValueKind::String => value.as_str().unwrap_or_default().to_string(),
        _ => {
            let mut out = String::new();
            write_python_repr(&mut out, value);
            out
        }
    }
}

fn write_python_repr(out: &mut String, value: &Value) {
    match value.kind() {
        ValueKind::Undefined => {}
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number => match f64::try_from(value.clone()) {
            Ok(f) if !value.is_integer() => out.push_str(&python_float(f)),
            _ => write!(out, "{value}").unwrap_or_default(),
        },
        ValueKind::String => python_quote(out, value.as_str().unwrap_or_default()),
        ValueKind::Bytes => python_quote(
            out,
            &String::from_utf8_lossy(value.as_bytes().unwrap_or_default()),
        ),
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            for (i, item) in value.try_iter().into_iter().flatten().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_python_repr(out, &item);
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            for (i, key) in value.try_iter().into_iter().flatten().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_python_repr(out, &key);
                out.push_str(": ");
                write_python_repr(out, &value.get_item(&key).unwrap_or_default());
            }
            out.push('}');
        }
        _ => write!(out, "{value}").unwrap_or_default(),
    }
}

/// Python's `repr()` of a string.
fn python_quote(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() && (c as u32) < 0x100 => {
                write!(out, "\\x{:02x}", c as u32).unwrap_or_default()
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// Python's `repr()` of a float: `1.0`, `0.1`, `1e+16`, `1.5e-05`.
pub(crate) fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "nan".to_string();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.to_string();
    }
    let abs = f.abs();
    if abs != 0.0 && !(1e-4..1e16).contains(&abs) {
        let s = format!("{f:e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let (sign, digits) = exp.strip_prefix('-').map_or(("+", exp), |d| ("-", d));
        format!("{mantissa}e{sign}{digits:0>2}")
    } else {
        let s = f.to_string();
        if s.contains('.') {
            s
        } else {
            format!("{s}.0")
        }
    }
}

/// Converts a rendered value to JSON. A missing datastore key becomes `""`
/// (StackStorm's `str()` of it); an undefined value is an error.
pub(super) fn to_json(value: &Value) -> Result<Json, Error> {
    Ok(match value.kind() {
        ValueKind::Undefined => return Err(Error::from(ErrorKind::UndefinedError)),
        ValueKind::None => Json::Null,
        ValueKind::Bool => Json::Bool(value.is_true()),
        ValueKind::Number => number_to_json(value)?,
        ValueKind::String => Json::String(value.as_str().unwrap_or_default().to_string()),
        ValueKind::Bytes => {
            Json::String(String::from_utf8_lossy(value.as_bytes().unwrap_or_default()).into_owned())
        }
        ValueKind::Seq | ValueKind::Iterable => Json::Array(
            value
                .try_iter()?
                .map(|item| to_json(&item))
                .collect::<Result<_, _>>()?,
        ),
        ValueKind::Map => {
            let mut map = serde_json::Map::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                map.insert(python_str(&key), to_json(&item)?);
            }
            Json::Object(map)
        }
        ValueKind::Invalid => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("invalid value: {value}"),
            ))
        }
        _ => Json::String(value.to_string()),
    })
}

/// An integer stays an integer and a float a float (`5.0` is not `5`).
fn number_to_json(value: &Value) -> Result<Json, Error> {
    if value.is_integer() {
        if let Ok(i) = i64::try_from(value.clone()) {
            return Ok(Json::from(i));
        }
        if let Ok(u) = u64::try_from(value.clone()) {
            return Ok(Json::from(u));
        }
    }
    f64::try_from(value.clone())
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map(Json::Number)
        .ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidOperation,
                format!("{value} is not a JSON number"),
            )
        })
}

/// Flags of a Python regular expression.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RegexFlags {
    /// `re.match`: the match must start at the beginning of the text.
    pub anchored: bool,
    /// `re.IGNORECASE`.
    pub ignore_case: bool,
    /// `re.DOTALL`: `.` also matches a newline.
    pub dot_all: bool,
}

/// Compiles a Python `re` pattern. fancy-regex supports what Python
/// patterns use beyond the `regex` crate: look-around and backreferences.
pub(crate) fn python_regex(
    pattern: &str,
    flags: RegexFlags,
) -> Result<fancy_regex::Regex, fancy_regex::Error> {
    let mut full = String::new();
    if flags.ignore_case {
        full.push_str("(?i)");
    }
    if flags.dot_all {
        full.push_str("(?s)");
    }
    if flags.anchored {
        write!(full, r"\A(?:{pattern})").unwrap_or_default();
    } else {
        full.push_str(pattern);
    }
    fancy_regex::Regex::new(&full)
}

/// Python list indexing: negative counts from the end.
pub(super) fn python_index<T>(items: &[T], index: i64) -> Option<&T> {
    let len = i64::try_from(items.len()).ok()?;
    let i = if index < 0 { len + index } else { index };
    usize::try_from(i).ok().and_then(|i| items.get(i))
}

//! [`JsonPath`]: the jsonpath-rw subset used by criteria keys and the
//! `jsonpath_query` filter.

use serde_json::Value as Json;

use super::python::python_index;
/// A path that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid path {path:?}: {reason}")]
pub struct PathError {
    pub path: String,
    pub reason: String,
}

/// A jsonpath-rw style path, the subset StackStorm content uses: an
/// optional `$`, dotted fields (`body.name`, hyphens allowed as in
/// `headers.X-GitHub-Event`), quoted fields (`'weird key'`, `["a.b"]`),
/// indexes (`[0]`, `[-1]`), wildcards (`*`, `[*]`) and descendants
/// (`..name`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath {
    steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Step {
    /// `..`: apply the selector to every node below as well.
    descend: bool,
    selector: Selector,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Selector {
    Field(String),
    Index(i64),
    /// Every value of an object or item of a list.
    Wildcard,
}

impl JsonPath {
    pub fn parse(path: &str) -> Result<Self, PathError> {
        let fail = |reason: &str| PathError {
            path: path.to_string(),
            reason: reason.to_string(),
        };
        let mut rest = path.trim();
        rest = rest.strip_prefix('$').unwrap_or(rest);
        let mut steps = Vec::new();
        let mut first = true;
        while !rest.is_empty() {
            let descend = rest.starts_with("..");
            if descend {
                rest = &rest[2..];
            } else if let Some(r) = rest.strip_prefix('.') {
                rest = r;
            } else if !first && !rest.starts_with('[') {
                return Err(fail("expected `.` or `[`"));
            }
            first = false;
            let (selector, r) = if let Some(r) = rest.strip_prefix('[') {
                let (inner, r) = r.split_once(']').ok_or_else(|| fail("unclosed `[`"))?;
                (
                    parse_bracket(inner.trim()).ok_or_else(|| fail("bad `[...]`"))?,
                    r,
                )
            } else {
                parse_dotted(rest).ok_or_else(|| fail("expected a field name"))?
            };
            steps.push(Step { descend, selector });
            rest = r;
        }
        Ok(Self { steps })
    }

    /// Every value the path selects in `root`, in document order.
    pub fn find<'a>(&self, root: &'a Json) -> Vec<&'a Json> {
        walk(&self.steps, vec![root])
    }

    /// What [`JsonPath::find`] selects in the object `{name: value}`,
    /// without building it; `None` for the path that selects that object
    /// itself (no step).
    pub fn find_in<'a>(&self, name: &str, value: &'a Json) -> Option<Vec<&'a Json>> {
        let (first, rest) = self.steps.split_first()?;
        let mut current = Vec::new();
        let selects_value = match &first.selector {
            Selector::Field(field) => field == name,
            Selector::Wildcard => true,
            Selector::Index(_) => false,
        };
        if selects_value {
            current.push(value);
        }
        if first.descend {
            let mut below = Vec::new();
            descendants_or_self(value, &mut below);
            for node in below {
                first.selector.apply(node, &mut current);
            }
        }
        Some(walk(rest, current))
    }
}

impl JsonPath {
    /// The first value [`JsonPath::find_in`] selects (`Some(None)`: none),
    /// without collecting the others; `None` for the path with no step. A
    /// path of plain fields and indexes (most criteria keys) selects at
    /// most one node per step and is followed without allocating.
    pub fn first_in<'a>(&self, name: &str, value: &'a Json) -> Option<Option<&'a Json>> {
        let (first, rest) = self.steps.split_first()?;
        let plain = self
            .steps
            .iter()
            .all(|s| !s.descend && !matches!(s.selector, Selector::Wildcard));
        if !plain {
            return self
                .find_in(name, value)
                .map(|found| found.first().copied());
        }
        let mut node = match &first.selector {
            Selector::Field(field) if field == name => value,
            _ => return Some(None),
        };
        for step in rest {
            let next = match (&step.selector, node) {
                (Selector::Field(field), Json::Object(map)) => map.get(field),
                (Selector::Index(i), Json::Array(items)) => python_index(items, *i),
                _ => None,
            };
            match next {
                Some(n) => node = n,
                None => return Some(None),
            }
        }
        Some(Some(node))
    }
}

/// Applies `steps` to every node of `current`, in order.
fn walk<'a>(steps: &[Step], mut current: Vec<&'a Json>) -> Vec<&'a Json> {
    for step in steps {
        let mut next = Vec::new();
        for node in current {
            if step.descend {
                let mut below = Vec::new();
                descendants_or_self(node, &mut below);
                for n in below {
                    step.selector.apply(n, &mut next);
                }
            } else {
                step.selector.apply(node, &mut next);
            }
        }
        current = next;
    }
    current
}

impl Selector {
    fn apply<'a>(&self, node: &'a Json, out: &mut Vec<&'a Json>) {
        match (self, node) {
            (Selector::Field(name), Json::Object(map)) => out.extend(map.get(name)),
            (Selector::Index(i), Json::Array(items)) => out.extend(python_index(items, *i)),
            (Selector::Wildcard, Json::Object(map)) => out.extend(map.values()),
            (Selector::Wildcard, Json::Array(items)) => out.extend(items),
            _ => {}
        }
    }
}

fn descendants_or_self<'a>(node: &'a Json, out: &mut Vec<&'a Json>) {
    out.push(node);
    match node {
        Json::Object(map) => map.values().for_each(|v| descendants_or_self(v, out)),
        Json::Array(items) => items.iter().for_each(|v| descendants_or_self(v, out)),
        _ => {}
    }
}

/// A quoted string at the start of `s` and what follows it.
fn parse_quoted(s: &str) -> Option<(String, &str)> {
    let quote = s.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let end = s[1..].find(quote)? + 1;
    Some((s[1..end].to_string(), &s[end + 1..]))
}

fn parse_dotted(s: &str) -> Option<(Selector, &str)> {
    if let Some(r) = s.strip_prefix('*') {
        return Some((Selector::Wildcard, r));
    }
    if let Some((name, r)) = parse_quoted(s) {
        return Some((Selector::Field(name), r));
    }
    let end = s
        .find(|c: char| matches!(c, '.' | '[' | ']' | '\'' | '"') || c.is_whitespace())
        .unwrap_or(s.len());
    (end > 0).then(|| (Selector::Field(s[..end].to_string()), &s[end..]))
}

fn parse_bracket(inner: &str) -> Option<Selector> {
    if inner == "*" {
        return Some(Selector::Wildcard);
    }
    if let Some((name, rest)) = parse_quoted(inner) {
        return rest.is_empty().then_some(Selector::Field(name));
    }
    inner.parse().ok().map(Selector::Index)
}

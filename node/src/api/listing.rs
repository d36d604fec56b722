//! What every list route shares: `limit`/`offset` paging with
//! `X-Total-Count` and `X-Limit`, `sort`, and `include_attributes` /
//! `exclude_attributes` (dotted paths such as `action.ref`), as StackStorm's
//! API takes them.

use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::error::ApiError;

/// Default page size, as StackStorm's.
const DEFAULT_LIMIT: usize = 100;

/// The query parameters every list takes. Filters are read separately.
#[derive(Debug, Default, Deserialize)]
pub struct ListParams {
    #[serde(default)]
    pub limit: Option<i64>,
    #[serde(default)]
    pub offset: Option<usize>,
    /// A field to sort by, `-field` for descending.
    #[serde(default)]
    pub sort: Option<String>,
    #[serde(default)]
    pub include_attributes: Option<String>,
    #[serde(default)]
    pub exclude_attributes: Option<String>,
}

impl ListParams {
    /// The page size asked for: default 100, `-1` for all.
    pub fn limit(&self) -> Result<usize, ApiError> {
        match self.limit {
            None => Ok(DEFAULT_LIMIT),
            Some(-1) => Ok(usize::MAX),
            Some(n) if n > 0 => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
            Some(n) => Err(ApiError::BadRequest(format!(
                "limit must be a positive number or -1 for all, got {n}"
            ))),
        }
    }

    /// How many to skip.
    pub fn offset(&self) -> usize {
        self.offset.unwrap_or(0)
    }

    /// The attribute selection; both kinds at once is a 400.
    pub fn projection(&self) -> Result<Projection, ApiError> {
        let paths = |text: &Option<String>| -> Vec<Vec<String>> {
            text.as_deref()
                .unwrap_or("")
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|p| p.split('.').map(str::to_string).collect())
                .collect()
        };
        let include = paths(&self.include_attributes);
        let exclude = paths(&self.exclude_attributes);
        match (include.is_empty(), exclude.is_empty()) {
            (false, false) => Err(ApiError::BadRequest(
                "include_attributes and exclude_attributes are mutually exclusive; give one".into(),
            )),
            (false, true) => Ok(Projection::Include(include)),
            (true, false) => Ok(Projection::Exclude(exclude)),
            (true, true) => Ok(Projection::All),
        }
    }

    /// Sorts (when asked), pages and projects a whole list held in memory.
    pub fn respond(&self, mut items: Vec<Value>) -> Result<Listed, ApiError> {
        let limit = self.limit()?;
        let projection = self.projection()?;
        if let Some(sort) = self.sort.as_deref().filter(|s| !s.is_empty()) {
            let (descending, field) = match sort.strip_prefix('-') {
                Some(f) => (true, f),
                None => (false, sort),
            };
            let path: Vec<&str> = field.split('.').collect();
            items.sort_by(|a, b| {
                let order = compare(lookup(a, &path), lookup(b, &path));
                if descending {
                    order.reverse()
                } else {
                    order
                }
            });
        }
        let total = items.len();
        let page = items
            .into_iter()
            .skip(self.offset())
            .take(limit)
            .map(|v| projection.apply(v))
            .collect();
        Ok(Listed::new(page, total, limit))
    }
}

fn lookup<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, key| v.get(key))
}

fn compare(a: Option<&Value>, b: Option<&Value>) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        _ => Ordering::Equal,
    }
}

/// Which attributes of each item a response carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Projection {
    All,
    /// Only these paths (and `id`, which StackStorm always returns).
    Include(Vec<Vec<String>>),
    /// Everything but these paths.
    Exclude(Vec<Vec<String>>),
}

impl Projection {
    /// `item` with the selection applied.
    pub fn apply(&self, item: Value) -> Value {
        match self {
            Projection::All => item,
            Projection::Include(paths) => {
                let mut out = Map::new();
                if let Some(id) = item.get("id") {
                    out.insert("id".into(), id.clone());
                }
                for path in paths {
                    copy_path(&item, path, &mut out);
                }
                Value::Object(out)
            }
            Projection::Exclude(paths) => {
                let mut item = item;
                for path in paths {
                    remove_path(&mut item, path);
                }
                item
            }
        }
    }
}

fn copy_path(from: &Value, path: &[String], to: &mut Map<String, Value>) {
    let Some((head, rest)) = path.split_first() else {
        return;
    };
    let Some(value) = from.get(head) else {
        return;
    };
    if rest.is_empty() || !value.is_object() {
        to.insert(head.clone(), value.clone());
        return;
    }
    let slot = to
        .entry(head.clone())
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(inner) = slot {
        copy_path(value, rest, inner);
    }
}

fn remove_path(item: &mut Value, path: &[String]) {
    match path {
        [] => {}
        [last] => {
            if let Value::Object(o) = item {
                o.remove(last);
            }
        }
        [head, rest @ ..] => {
            if let Some(inner) = item.get_mut(head) {
                remove_path(inner, rest);
            }
        }
    }
}

/// A page of a list with StackStorm's paging headers.
#[derive(Debug)]
pub struct Listed {
    items: Vec<Value>,
    total: usize,
    limit: usize,
}

impl Listed {
    /// `items` shown of `total` matching, with page size `limit`.
    pub fn new(items: Vec<Value>, total: usize, limit: usize) -> Listed {
        Listed {
            items,
            total,
            limit,
        }
    }
}

impl IntoResponse for Listed {
    fn into_response(self) -> Response {
        let mut headers = HeaderMap::new();
        headers.insert("X-Total-Count", HeaderValue::from(self.total));
        if self.limit != usize::MAX {
            headers.insert("X-Limit", HeaderValue::from(self.limit));
        }
        (headers, Json(self.items)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(q: &str) -> ListParams {
        serde_urlencoded::from_str(q).unwrap()
    }

    #[test]
    fn include_keeps_dotted_paths_and_id() {
        let p = params("include_attributes=status,action.ref")
            .projection()
            .unwrap();
        let item =
            json!({"id": "1", "status": "ok", "action": {"ref": "a.b", "name": "b"}, "result": 1});
        assert_eq!(
            p.apply(item),
            json!({"id": "1", "status": "ok", "action": {"ref": "a.b"}})
        );
    }

    #[test]
    fn exclude_removes_dotted_paths() {
        let p = params("exclude_attributes=result,action.name")
            .projection()
            .unwrap();
        let item = json!({"id": "1", "action": {"ref": "a.b", "name": "b"}, "result": 1});
        assert_eq!(p.apply(item), json!({"id": "1", "action": {"ref": "a.b"}}));
    }

    #[test]
    fn both_selections_are_rejected() {
        let err = params("include_attributes=a&exclude_attributes=b")
            .projection()
            .unwrap_err();
        assert!(err.to_string().contains("mutually exclusive"));
    }

    #[test]
    fn sorts_pages_and_counts() {
        let items = vec![json!({"n": 2}), json!({"n": 3}), json!({"n": 1})];
        let listed = params("sort=-n&limit=2&offset=1").respond(items).unwrap();
        assert_eq!(listed.items, vec![json!({"n": 2}), json!({"n": 1})]);
        assert_eq!(listed.total, 3);
        assert!(params("limit=0").limit().is_err());
        assert_eq!(params("limit=-1").limit().unwrap(), usize::MAX);
    }
}

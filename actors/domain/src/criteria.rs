//! Rule criteria: StackStorm's operators evaluated against a trigger
//! payload.
//!
//! Semantics follow `st2reactor/rules/filter.py` and
//! `st2common/operators.py`: every criterion must match (AND, in key
//! order), a rule with criteria never matches an empty payload, the key is a
//! [`JsonPath`] into `{"trigger": payload}` (anything after `#` dropped, a
//! missing value reads as `null`), and a string pattern is Jinja-rendered
//! first, keeping the native type of a single `{{ expr }}`. Operators compare
//! the way Python does: `1 == 1.0 == True`, `contains` means `in` (substring,
//! list membership or dict key), `lt`/`gt` order numbers or strings, and
//! where Python would raise a `TypeError` the criterion simply does not
//! match. All operators live in one table, `OPERATORS`.

use std::cell::OnceCell;
use std::cmp::Ordering;
use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::template::{
    is_template, python_regex, CompiledValue, JsonPath, KeyValueLookup, PathError, RegexFlags,
    Renderer, TemplateError, NONE_MAGIC_VALUE,
};

/// The `criteria:` map of a rule: a jsonpath-like key (`trigger.body.name`,
/// optionally with a `#suffix`) to the test applied to the value it selects.
pub type Criteria = BTreeMap<String, Criterion>;

/// One criterion: `{type, pattern, condition}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Criterion {
    /// Operator name or alias (`equals`, `eq`, `search`...), any case.
    #[serde(rename = "type")]
    pub operator: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<Value>,
    /// Only for `search`: `any`, `all`, `any2any` or `all2any`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
}

/// Why criteria could not be evaluated (as opposed to not matching). Each
/// names the criterion's key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CriteriaError {
    #[error("criterion {key:?}: unknown operator {operator:?}")]
    UnknownOperator { key: String, operator: String },
    #[error(
        "criterion {key:?}: search condition {} is not one of any, all, any2any, all2any",
        .condition.as_deref().map_or_else(|| "(missing)".to_string(), |c| format!("{c:?}"))
    )]
    UnknownCondition {
        key: String,
        condition: Option<String>,
    },
    #[error("criterion {key:?}: a search pattern must map item keys to criteria: {reason}")]
    InvalidSearchPattern { key: String, reason: String },
    /// The pattern is not a valid regular expression, or matching it
    /// exceeded the backtracking limit.
    #[error("criterion {key:?}: regular expression {pattern:?}: {message}")]
    InvalidRegex {
        key: String,
        pattern: String,
        message: String,
    },
    #[error("criterion {key:?}: {source}")]
    InvalidKey {
        key: String,
        #[source]
        source: PathError,
    },
    #[error("criterion {key:?}: failed to render pattern: {source}")]
    Render {
        key: String,
        #[source]
        source: TemplateError,
    },
}

/// Whether `name` is a criteria operator or alias, in any case.
pub fn is_known_operator(name: &str) -> bool {
    operator(name).is_some()
}

/// How one criterion fared against a payload: what was read, what it was
/// compared with, and the verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CriterionCheck {
    /// The criterion's key as written (`trigger.body.name#2`).
    pub key: String,
    /// The path read: the key without its `#suffix`.
    pub path: String,
    /// The operator as written.
    pub operator: String,
    /// The pattern after rendering; `None` when evaluation failed before.
    pub pattern: Option<Value>,
    /// The value the path selected (`null` when missing); `None` when
    /// evaluation failed before reading it.
    pub value: Option<Value>,
    pub matched: bool,
    /// Why the criterion could not be evaluated (it does not match then).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Why criteria match a payload or not, criterion by criterion.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    /// What [`matches`] answers: every criterion evaluated and matched.
    pub matched: bool,
    /// The payload is empty, and a rule with criteria never matches an
    /// empty payload: no criterion was evaluated.
    pub empty_payload: bool,
    /// Every criterion, in the order they are evaluated (key order).
    pub criteria: Vec<CriterionCheck>,
}

impl Explanation {
    /// The first criterion that did not match, the one that decides.
    pub fn first_failure(&self) -> Option<&CriterionCheck> {
        self.criteria.iter().find(|c| !c.matched)
    }
}

/// Explains [`matches`]: evaluates every criterion (not only up to the first
/// that fails) and reports each one's value, rendered pattern and verdict.
pub fn explain(
    criteria: &Criteria,
    payload: &Value,
    renderer: &Renderer,
    kv: &dyn KeyValueLookup,
) -> Explanation {
    if !criteria.is_empty() && !python_truthy(payload) {
        return Explanation {
            matched: false,
            empty_payload: true,
            criteria: Vec::new(),
        };
    }
    let matcher = Matcher { renderer, kv };
    let context = json!({ "trigger": payload });
    let checks: Vec<CriterionCheck> = criteria
        .iter()
        .map(|(key, criterion)| {
            let evaluation = matcher.evaluate(key, criterion, &context);
            CriterionCheck {
                key: key.clone(),
                path: key_path(key).to_string(),
                operator: criterion.operator.clone(),
                pattern: evaluation.pattern,
                value: evaluation.value.cloned(),
                matched: evaluation.result == Ok(true),
                error: evaluation.result.err().map(|e| e.to_string()),
            }
        })
        .collect();
    Explanation {
        matched: checks.iter().all(|c| c.matched),
        empty_payload: false,
        criteria: checks,
    }
}

/// Whether `payload` satisfies every criterion: the reference evaluation,
/// which works out everything about each criterion (operator, key,
/// pattern, regular expression) for this one evaluation. Patterns render
/// with `renderer`, reading `st2kv.system` through `kv`. The rules engine
/// evaluates [`CompiledCriteria`] instead, which must agree with this.
pub fn matches(
    criteria: &Criteria,
    payload: &Value,
    renderer: &Renderer,
    kv: &dyn KeyValueLookup,
) -> Result<bool, CriteriaError> {
    if criteria.is_empty() {
        return Ok(true);
    }
    if !python_truthy(payload) {
        return Ok(false);
    }
    let matcher = Matcher { renderer, kv };
    let context = json!({ "trigger": payload });
    all_or_any(
        true,
        criteria
            .iter()
            .map(|(key, criterion)| matcher.check(key, criterion, &context)),
    )
}

/// Criteria compiled once, when a rule is loaded: operators looked up,
/// keys parsed, and patterns that are the same for every event prepared
/// (regular expressions compiled, lower-cased, parsed as numbers or as
/// child criteria). A pattern with Jinja markup is rendered, then
/// prepared, per evaluation; its template is parsed once. A criterion that
/// cannot be compiled reports its error when it is reached, as the
/// reference evaluation ([`matches`]) does.
#[derive(Debug, Clone)]
pub struct CompiledCriteria {
    criteria: Vec<Result<CompiledCriterion, CriteriaError>>,
    /// Whether a pattern may open a secret
    /// ([`crate::template::may_open_secrets`]).
    may_open_secrets: bool,
}

#[derive(Debug, Clone)]
struct CompiledCriterion {
    key: String,
    op: &'static Operator,
    path: JsonPath,
    pattern: Pattern,
    condition: Option<String>,
}

#[derive(Debug, Clone)]
enum Pattern {
    /// No pattern, a pattern that is not a string, or a string without
    /// markup: the same for every event, prepared once.
    Fixed { value: Value, prepared: Prepared },
    /// A string with markup (or StackStorm's `None` marker, which renders
    /// to `null`): rendered per evaluation.
    Rendered(CompiledValue),
}

impl CompiledCriteria {
    pub fn compile(criteria: &Criteria) -> Self {
        Self {
            criteria: criteria
                .iter()
                .map(|(key, criterion)| CompiledCriterion::compile(key, criterion))
                .collect(),
            may_open_secrets: criteria.values().any(|c| {
                c.pattern
                    .as_ref()
                    .is_some_and(|p| crate::template::may_open_secrets(&p.to_string()))
            }),
        }
    }

    /// Whether evaluating may open a secret (a pattern reads the
    /// datastore or decrypts): what the engine audits secrets opened in.
    pub fn may_open_secrets(&self) -> bool {
        self.may_open_secrets
    }

    /// Whether `payload` satisfies every criterion, as [`matches`] decides.
    pub fn matches(
        &self,
        payload: &Value,
        renderer: &Renderer,
        kv: &dyn KeyValueLookup,
    ) -> Result<bool, CriteriaError> {
        if self.criteria.is_empty() {
            return Ok(true);
        }
        if !python_truthy(payload) {
            return Ok(false);
        }
        self.check(
            true,
            &Scope::new("trigger", payload),
            &Matcher { renderer, kv },
        )
    }

    /// Every criterion (`every`) or some criterion holds in `scope`.
    fn check(
        &self,
        every: bool,
        scope: &Scope<'_>,
        matcher: &Matcher<'_>,
    ) -> Result<bool, CriteriaError> {
        all_or_any(
            every,
            self.criteria.iter().map(|criterion| match criterion {
                Ok(criterion) => criterion.check(scope, matcher),
                Err(e) => Err(e.clone()),
            }),
        )
    }
}

impl CompiledCriterion {
    fn compile(key: &str, criterion: &Criterion) -> Result<Self, CriteriaError> {
        let op = lookup(key, &criterion.operator)?;
        let path = parse_key(key)?;
        let pattern = match &criterion.pattern {
            Some(pattern @ Value::String(s)) if is_template(s) || s == NONE_MAGIC_VALUE => {
                Pattern::Rendered(CompiledValue::new(pattern))
            }
            pattern => {
                let value = pattern.clone().unwrap_or(Value::Null);
                Pattern::Fixed {
                    prepared: (op.prepare)(&value),
                    value,
                }
            }
        };
        Ok(Self {
            key: key.to_string(),
            op,
            path,
            pattern,
            condition: criterion.condition.clone(),
        })
    }

    fn check(&self, scope: &Scope<'_>, matcher: &Matcher<'_>) -> Result<bool, CriteriaError> {
        let value = scope.find(&self.path);
        let condition = self.condition.as_deref();
        match &self.pattern {
            Pattern::Fixed {
                value: pattern,
                prepared,
            } => evaluate(
                self.op, &self.key, value, pattern, prepared, condition, matcher,
            ),
            Pattern::Rendered(template) => {
                let pattern = matcher
                    .renderer
                    .render_compiled(template, scope.context(), matcher.kv)
                    .map_err(|source| CriteriaError::Render {
                        key: self.key.clone(),
                        source,
                    })?;
                let prepared = prepare(self.op, &pattern);
                evaluate(
                    self.op, &self.key, value, &pattern, &prepared, condition, matcher,
                )
            }
        }
    }
}

/// One name bound to a value, the root criteria keys select from and
/// patterns render with: `trigger` (the payload) or, inside `search`,
/// `item`.
struct Scope<'a> {
    name: &'static str,
    value: &'a Value,
    /// `{name: value}`, built the first time a pattern renders.
    context: OnceCell<Value>,
}

impl<'a> Scope<'a> {
    fn new(name: &'static str, value: &'a Value) -> Self {
        Self {
            name,
            value,
            context: OnceCell::new(),
        }
    }

    /// The first value `path` selects, `null` when none.
    fn find(&self, path: &JsonPath) -> &Value {
        let found = path
            .first_in(self.name, self.value)
            .unwrap_or_else(|| path.find(self.context()).first().copied());
        found.unwrap_or(&Value::Null)
    }

    fn context(&self) -> &Value {
        self.context
            .get_or_init(|| json!({ self.name: self.value }))
    }
}

fn lookup(key: &str, name: &str) -> Result<&'static Operator, CriteriaError> {
    operator(name).ok_or_else(|| CriteriaError::UnknownOperator {
        key: key.to_string(),
        operator: name.to_string(),
    })
}

/// The path of a criterion's key.
fn parse_key(key: &str) -> Result<JsonPath, CriteriaError> {
    JsonPath::parse(key_path(key)).map_err(|source| CriteriaError::InvalidKey {
        key: key.to_string(),
        source,
    })
}

/// What `op` needs from `pattern`, unless the operator will not look at it.
fn prepare(op: &Operator, pattern: &Value) -> Prepared {
    if op.needs_pattern && pattern.is_null() {
        Prepared::Nothing
    } else {
        (op.prepare)(pattern)
    }
}

/// `op` applied to the payload's `value` and the rendered `pattern`.
fn evaluate(
    op: &Operator,
    key: &str,
    value: &Value,
    pattern: &Value,
    prepared: &Prepared,
    condition: Option<&str>,
    matcher: &Matcher<'_>,
) -> Result<bool, CriteriaError> {
    if op.needs_pattern && pattern.is_null() {
        return Ok(false);
    }
    (op.test)(&Operands {
        key,
        value,
        pattern,
        prepared,
        condition,
        matcher,
    })
}

// ---------------------------------------------------------------------------
// Operators
// ---------------------------------------------------------------------------

/// One criteria operator.
#[derive(Debug)]
struct Operator {
    /// Name and aliases, lower case.
    names: &'static [&'static str],
    /// StackStorm's `if criteria_pattern is None: return False`: with this
    /// set, a `null` pattern never matches and `test` is not called.
    needs_pattern: bool,
    /// What `test` needs from the pattern alone: derived once for a
    /// pattern that is the same for every event.
    prepare: fn(&Value) -> Prepared,
    test: fn(&Operands<'_>) -> Result<bool, CriteriaError>,
}

/// What an operator derives from its pattern alone.
#[derive(Debug, Clone)]
enum Prepared {
    /// The operator reads the pattern as it is.
    Nothing,
    /// A string pattern in lower case.
    Lower(Option<String>),
    /// A string pattern compiled as a regular expression, or why it is not
    /// one.
    Regex(Option<Result<fancy_regex::Regex, String>>),
    /// `fnmatch`'s regular expression for a string pattern.
    Wildcard(Option<regex::Regex>),
    /// `float(pattern)`.
    Seconds(Option<f64>),
    /// `search`'s child criteria, or why the pattern is not criteria.
    Search(Result<CompiledCriteria, String>),
}

fn nothing(_: &Value) -> Prepared {
    Prepared::Nothing
}

fn lower(pattern: &Value) -> Prepared {
    Prepared::Lower(pattern.as_str().map(str::to_lowercase))
}

fn regex(pattern: &Value, flags: RegexFlags) -> Prepared {
    Prepared::Regex(
        pattern
            .as_str()
            .map(|p| python_regex(p, flags).map_err(|e| e.to_string())),
    )
}

fn wildcard(pattern: &Value) -> Prepared {
    Prepared::Wildcard(
        pattern
            .as_str()
            .and_then(|p| regex::Regex::new(&fnmatch_regex(p)).ok()),
    )
}

fn seconds(pattern: &Value) -> Prepared {
    Prepared::Seconds(python_float(pattern))
}

fn children(pattern: &Value) -> Prepared {
    Prepared::Search(
        serde_json::from_value::<Criteria>(pattern.clone())
            .map(|children| CompiledCriteria::compile(&children))
            .map_err(|e| e.to_string()),
    )
}

/// What an operator tests: the payload `value` against the rendered
/// `pattern`.
struct Operands<'a> {
    key: &'a str,
    value: &'a Value,
    pattern: &'a Value,
    prepared: &'a Prepared,
    condition: Option<&'a str>,
    matcher: &'a Matcher<'a>,
}

impl Operands<'_> {
    /// Both sides as strings, or `None` (Python would raise on `.lower()`,
    /// `.startswith()`, `re.search()`...).
    fn strings(&self) -> Option<(&str, &str)> {
        Some((self.value.as_str()?, self.pattern.as_str()?))
    }

    /// Both sides as lower-case strings.
    fn lower(&self) -> Option<(String, &str)> {
        let Prepared::Lower(Some(pattern)) = self.prepared else {
            return None;
        };
        Some((self.value.as_str()?.to_lowercase(), pattern))
    }

    fn regex(&self) -> Result<bool, CriteriaError> {
        let Some((text, pattern)) = self.strings() else {
            return Ok(false);
        };
        let invalid = |message: String| CriteriaError::InvalidRegex {
            key: self.key.to_string(),
            pattern: pattern.to_string(),
            message,
        };
        match self.prepared {
            Prepared::Regex(Some(Ok(re))) => re.is_match(text).map_err(|e| invalid(e.to_string())),
            Prepared::Regex(Some(Err(message))) => Err(invalid(message.clone())),
            _ => Ok(false),
        }
    }

    /// Python's `fnmatch.fnmatch(value, pattern)` on POSIX
    /// (case-sensitive): `*`, `?`, `[seq]`, `[!seq]`; `*` also matches `/`.
    fn wildcard(&self) -> bool {
        match (self.value.as_str(), self.prepared) {
            (Some(name), Prepared::Wildcard(Some(re))) => re.is_match(name),
            _ => false,
        }
    }

    /// How the seconds elapsed since the timestamp `value` compare with
    /// `float(pattern)`.
    fn seconds_since(&self) -> Option<Ordering> {
        let then = parse_timestamp(self.value.as_str()?)?;
        let Prepared::Seconds(limit) = self.prepared else {
            return None;
        };
        let elapsed = Utc::now().signed_duration_since(then);
        let seconds = elapsed
            .num_microseconds()
            .map_or(elapsed.num_seconds() as f64, |us| us as f64 / 1e6);
        seconds.partial_cmp(&(*limit)?)
    }
}

/// Every operator StackStorm defines, with its aliases.
static OPERATORS: &[Operator] = &[
    Operator {
        names: &["equals", "eq"],
        needs_pattern: true,
        prepare: nothing,
        test: |o| Ok(py_eq(o.value, o.pattern)),
    },
    Operator {
        names: &["nequals", "neq"],
        needs_pattern: false,
        prepare: nothing,
        test: |o| Ok(!py_eq(o.value, o.pattern)),
    },
    Operator {
        names: &["iequals", "ieq"],
        needs_pattern: true,
        prepare: lower,
        test: |o| Ok(o.lower().is_some_and(|(v, p)| v == p)),
    },
    Operator {
        names: &["contains"],
        needs_pattern: true,
        prepare: nothing,
        test: |o| Ok(py_in(o.pattern, o.value) == Some(true)),
    },
    Operator {
        names: &["icontains"],
        needs_pattern: true,
        prepare: lower,
        test: |o| Ok(o.lower().is_some_and(|(v, p)| v.contains(p))),
    },
    Operator {
        names: &["ncontains"],
        needs_pattern: true,
        prepare: nothing,
        test: |o| Ok(py_in(o.pattern, o.value) == Some(false)),
    },
    Operator {
        names: &["incontains"],
        needs_pattern: true,
        prepare: lower,
        test: |o| Ok(o.lower().is_some_and(|(v, p)| !v.contains(p))),
    },
    Operator {
        names: &["startswith"],
        needs_pattern: true,
        prepare: nothing,
        test: |o| Ok(o.strings().is_some_and(|(v, p)| v.starts_with(p))),
    },
    Operator {
        names: &["istartswith"],
        needs_pattern: true,
        prepare: lower,
        test: |o| Ok(o.lower().is_some_and(|(v, p)| v.starts_with(p))),
    },
    Operator {
        names: &["endswith"],
        needs_pattern: true,
        prepare: nothing,
        test: |o| Ok(o.strings().is_some_and(|(v, p)| v.ends_with(p))),
    },
    Operator {
        names: &["iendswith"],
        needs_pattern: true,
        prepare: lower,
        test: |o| Ok(o.lower().is_some_and(|(v, p)| v.ends_with(p))),
    },
    Operator {
        names: &["lessthan", "lt"],
        needs_pattern: true,
        prepare: nothing,
        test: |o| Ok(py_cmp(o.value, o.pattern) == Some(Ordering::Less)),
    },
    Operator {
        names: &["greaterthan", "gt"],
        needs_pattern: true,
        prepare: nothing,
        test: |o| Ok(py_cmp(o.value, o.pattern) == Some(Ordering::Greater)),
    },
    Operator {
        names: &["matchwildcard"],
        needs_pattern: true,
        prepare: wildcard,
        test: |o| Ok(o.wildcard()),
    },
    Operator {
        // Deprecated in StackStorm: `re.match` (anchored at the start) with
        // DOTALL.
        names: &["matchregex"],
        needs_pattern: true,
        prepare: |p| {
            regex(
                p,
                RegexFlags {
                    anchored: true,
                    dot_all: true,
                    ..RegexFlags::default()
                },
            )
        },
        test: |o| o.regex(),
    },
    Operator {
        names: &["regex"],
        needs_pattern: true,
        prepare: |p| regex(p, RegexFlags::default()),
        test: |o| o.regex(),
    },
    Operator {
        names: &["iregex"],
        needs_pattern: true,
        prepare: |p| {
            regex(
                p,
                RegexFlags {
                    ignore_case: true,
                    ..RegexFlags::default()
                },
            )
        },
        test: |o| o.regex(),
    },
    Operator {
        names: &["timediff_lt", "td_lt"],
        needs_pattern: true,
        prepare: seconds,
        test: |o| Ok(o.seconds_since() == Some(Ordering::Less)),
    },
    Operator {
        names: &["timediff_gt", "td_gt"],
        needs_pattern: true,
        prepare: seconds,
        test: |o| Ok(o.seconds_since() == Some(Ordering::Greater)),
    },
    Operator {
        names: &["exists"],
        needs_pattern: false,
        prepare: nothing,
        test: |o| Ok(!o.value.is_null()),
    },
    Operator {
        names: &["nexists"],
        needs_pattern: false,
        prepare: nothing,
        test: |o| Ok(o.value.is_null()),
    },
    Operator {
        names: &["inside", "in"],
        needs_pattern: true,
        prepare: nothing,
        test: |o| Ok(py_in(o.value, o.pattern) == Some(true)),
    },
    Operator {
        names: &["ninside", "nin"],
        needs_pattern: true,
        prepare: nothing,
        test: |o| Ok(py_in(o.value, o.pattern) == Some(false)),
    },
    Operator {
        names: &["search"],
        needs_pattern: false,
        prepare: children,
        test: search,
    },
];

fn operator(name: &str) -> Option<&'static Operator> {
    OPERATORS
        .iter()
        .find(|op| op.names.iter().any(|n| n.eq_ignore_ascii_case(name)))
}

/// `search`: the pattern maps `item.<path>` keys to child criteria, tested
/// against each element of the value (a dict counts as a one-element list).
/// `any`: some item matches every child; `all`: every item matches every
/// child; `any2any`: some item matches some child; `all2any`: every item
/// matches some child.
fn search(o: &Operands<'_>) -> Result<bool, CriteriaError> {
    let (every_item, every_child) = match o.condition {
        Some("any") => (false, true),
        Some("all") => (true, true),
        Some("any2any") => (false, false),
        Some("all2any") => (true, false),
        other => {
            return Err(CriteriaError::UnknownCondition {
                key: o.key.to_string(),
                condition: other.map(str::to_string),
            })
        }
    };
    let children = match o.prepared {
        Prepared::Search(Ok(children)) => children,
        Prepared::Search(Err(reason)) => {
            return Err(CriteriaError::InvalidSearchPattern {
                key: o.key.to_string(),
                reason: reason.clone(),
            })
        }
        _ => return Ok(false),
    };
    let items = match o.value {
        Value::Array(items) => items.as_slice(),
        Value::Object(_) => std::slice::from_ref(o.value),
        _ => return Ok(false),
    };
    all_or_any(
        every_item,
        items
            .iter()
            .map(|item| children.check(every_child, &Scope::new("item", item), o.matcher)),
    )
}

/// Python's `all()` (`every`) or `any()` over fallible tests, stopping at
/// the first result that decides it.
fn all_or_any<E>(
    every: bool,
    results: impl IntoIterator<Item = Result<bool, E>>,
) -> Result<bool, E> {
    for result in results {
        if result? != every {
            return Ok(!every);
        }
    }
    Ok(every)
}

// ---------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------

struct Matcher<'a> {
    renderer: &'a Renderer,
    kv: &'a dyn KeyValueLookup,
}

impl Matcher<'_> {
    /// One criterion against `context` (`{"trigger": ...}`), everything
    /// worked out afresh.
    fn check(
        &self,
        key: &str,
        criterion: &Criterion,
        context: &Value,
    ) -> Result<bool, CriteriaError> {
        self.evaluate(key, criterion, context).result
    }

    /// One criterion against `context`, with what it read and compared.
    fn evaluate<'v>(&self, key: &str, criterion: &Criterion, context: &'v Value) -> Evaluation<'v> {
        let failed = |error| Evaluation {
            value: None,
            pattern: None,
            result: Err(error),
        };
        let op = match lookup(key, &criterion.operator) {
            Ok(op) => op,
            Err(e) => return failed(e),
        };
        let path = match parse_key(key) {
            Ok(path) => path,
            Err(e) => return failed(e),
        };
        let value = path.find(context).first().copied().unwrap_or(&Value::Null);
        let pattern = match &criterion.pattern {
            Some(pattern @ Value::String(_)) => {
                match self.renderer.render_value(pattern, context, self.kv) {
                    Ok(rendered) => rendered,
                    Err(source) => {
                        return Evaluation {
                            value: Some(value),
                            pattern: None,
                            result: Err(CriteriaError::Render {
                                key: key.to_string(),
                                source,
                            }),
                        }
                    }
                }
            }
            Some(pattern) => pattern.clone(),
            None => Value::Null,
        };
        let prepared = prepare(op, &pattern);
        let condition = criterion.condition.as_deref();
        let result = evaluate(op, key, value, &pattern, &prepared, condition, self);
        Evaluation {
            value: Some(value),
            pattern: Some(pattern),
            result,
        }
    }
}

/// What evaluating one criterion read, compared and decided.
struct Evaluation<'v> {
    value: Option<&'v Value>,
    pattern: Option<Value>,
    result: Result<bool, CriteriaError>,
}

/// The path part of a criterion's key: anything after `#` is dropped.
fn key_path(key: &str) -> &str {
    key.split_once('#').map_or(key, |(path, _)| path)
}

// ---------------------------------------------------------------------------
// Python semantics on JSON values
// ---------------------------------------------------------------------------

/// Python's `bool(value)`.
fn python_truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(items) => !items.is_empty(),
        Value::Object(map) => !map.is_empty(),
    }
}

/// A number as Python compares it: `bool` is an int, ints compare exactly.
#[derive(Clone, Copy)]
enum Num {
    Int(i128),
    Float(f64),
}

fn number(value: &Value) -> Option<Num> {
    match value {
        Value::Bool(b) => Some(Num::Int(i128::from(*b))),
        Value::Number(n) => n
            .as_i64()
            .map(|i| Num::Int(i128::from(i)))
            .or_else(|| n.as_u64().map(|u| Num::Int(i128::from(u))))
            .or_else(|| n.as_f64().map(Num::Float)),
        _ => None,
    }
}

fn compare_numbers(a: Num, b: Num) -> Option<Ordering> {
    let float = |n| match n {
        Num::Int(i) => i as f64,
        Num::Float(f) => f,
    };
    match (a, b) {
        (Num::Int(x), Num::Int(y)) => Some(x.cmp(&y)),
        _ => float(a).partial_cmp(&float(b)),
    }
}

/// Python's `a == b`.
fn py_eq(a: &Value, b: &Value) -> bool {
    if let (Some(x), Some(y)) = (number(a), number(b)) {
        return compare_numbers(x, y) == Some(Ordering::Equal);
    }
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| py_eq(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| py_eq(v, w)))
        }
        _ => false,
    }
}

/// Python's ordering of `a` and `b`; `None` where Python raises a
/// `TypeError` (mixed types, `None`, dicts).
fn py_cmp(a: &Value, b: &Value) -> Option<Ordering> {
    if let (Some(x), Some(y)) = (number(a), number(b)) {
        return compare_numbers(x, y);
    }
    match (a, b) {
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Array(x), Value::Array(y)) => match x.iter().zip(y).find(|(x, y)| !py_eq(x, y)) {
            Some((x, y)) => py_cmp(x, y),
            None => Some(x.len().cmp(&y.len())),
        },
        _ => None,
    }
}

/// Python's `needle in haystack`; `None` where Python raises a `TypeError`
/// (a non-string in a string, an unhashable dict key, a haystack that is
/// not a container).
fn py_in(needle: &Value, haystack: &Value) -> Option<bool> {
    match haystack {
        Value::String(s) => needle.as_str().map(|n| s.contains(n)),
        Value::Array(items) => Some(items.iter().any(|item| py_eq(needle, item))),
        Value::Object(map) => match needle {
            Value::String(k) => Some(map.contains_key(k)),
            Value::Array(_) | Value::Object(_) => None,
            _ => Some(false),
        },
        _ => None,
    }
}

/// Python's `float(value)`.
fn python_float(value: &Value) -> Option<f64> {
    match value {
        Value::String(s) => s.trim().parse().ok(),
        other => number(other).map(|n| match n {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }),
    }
}

/// The common forms `dateutil.parser.parse` reads: ISO 8601 with `T` or a
/// space, with or without fraction and offset, RFC 2822, or a bare date. A
/// time without an offset is UTC.
fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    let with_offset = ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%d %H:%M:%S%.f%z"];
    let naive = [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ];
    DateTime::parse_from_rfc3339(text)
        .or_else(|_| DateTime::parse_from_rfc2822(text))
        .ok()
        .or_else(|| {
            with_offset
                .iter()
                .find_map(|f| DateTime::parse_from_str(text, f).ok())
        })
        .map(|t| t.with_timezone(&Utc))
        .or_else(|| {
            naive
                .iter()
                .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
                .or_else(|| {
                    NaiveDate::parse_from_str(text, "%Y-%m-%d")
                        .ok()
                        .and_then(|d| d.and_hms_opt(0, 0, 0))
                })
                .map(|t| t.and_utc())
        })
}

/// Python's `fnmatch.translate`, for the `regex` crate.
fn fnmatch_regex(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::from(r"\A(?s:");
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match c {
            '*' => {
                out.push_str(".*");
                while chars.get(i) == Some(&'*') {
                    i += 1;
                }
            }
            '?' => out.push('.'),
            '[' => {
                let mut j = i;
                if chars.get(j) == Some(&'!') {
                    j += 1;
                }
                if chars.get(j) == Some(&']') {
                    j += 1;
                }
                while j < chars.len() && chars[j] != ']' {
                    j += 1;
                }
                if j >= chars.len() {
                    out.push_str(r"\[");
                    continue;
                }
                let mut body = &chars[i..j];
                i = j + 1;
                out.push('[');
                if let Some(rest) = body.strip_prefix(&['!']) {
                    out.push('^');
                    body = rest;
                }
                for &ch in body {
                    if matches!(ch, '\\' | '[' | ']' | '^' | '&' | '~' | '|') {
                        out.push('\\');
                    }
                    out.push(ch);
                }
                out.push(']');
            }
            c => out.push_str(&regex::escape(c.encode_utf8(&mut [0; 4]))),
        }
    }
    out.push_str(r")\z");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::{KvScope, NoKeyValues};
    use proptest::prelude::*;

    fn criteria(spec: Value) -> Criteria {
        serde_json::from_value(spec).expect("criteria")
    }

    fn eval(spec: Value, payload: Value) -> Result<bool, CriteriaError> {
        matches(&criteria(spec), &payload, &Renderer::new(), &NoKeyValues)
    }

    /// `trigger.v <op> pattern` with `value` as `v`.
    fn op(name: &str, value: Value, pattern: Value) -> bool {
        eval(
            json!({"trigger.v": {"type": name, "pattern": pattern}}),
            json!({"v": value, "other": 1}),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    #[test]
    fn every_operator_name_and_alias_is_known_in_any_case() {
        for name in [
            "equals",
            "eq",
            "nequals",
            "neq",
            "iequals",
            "ieq",
            "contains",
            "icontains",
            "ncontains",
            "incontains",
            "startswith",
            "istartswith",
            "endswith",
            "iendswith",
            "lessthan",
            "lt",
            "greaterthan",
            "gt",
            "matchwildcard",
            "matchregex",
            "regex",
            "iregex",
            "timediff_lt",
            "td_lt",
            "timediff_gt",
            "td_gt",
            "exists",
            "nexists",
            "inside",
            "in",
            "ninside",
            "nin",
            "search",
        ] {
            assert!(is_known_operator(name), "{name}");
            assert!(is_known_operator(&name.to_uppercase()), "{name}");
        }
        assert!(!is_known_operator("like"));
        assert!(!is_known_operator(""));
    }

    #[test]
    fn unknown_operator_is_an_error_naming_the_key() {
        let err = eval(
            json!({"trigger.v": {"type": "like", "pattern": 1}}),
            json!({"v": 1}),
        )
        .unwrap_err();
        assert_eq!(
            err,
            CriteriaError::UnknownOperator {
                key: "trigger.v".into(),
                operator: "like".into()
            }
        );
        assert!(err.to_string().contains("trigger.v"));
    }

    #[test]
    fn operators_are_case_insensitive() {
        assert!(op("EQUALS", json!("a"), json!("a")));
        assert!(op("Eq", json!("a"), json!("a")));
        assert!(op("MatchWildcard", json!("abc"), json!("a*")));
    }

    #[test]
    fn equals_and_aliases() {
        assert!(op("equals", json!("st2"), json!("st2")));
        assert!(op("eq", json!(5), json!(5.0)));
        assert!(op("eq", json!(1), json!(true)), "Python: 1 == True");
        assert!(op("eq", json!({"a": [1, 2]}), json!({"a": [1.0, 2]})));
        assert!(!op("equals", json!("5"), json!(5)));
        assert!(!op("equals", json!("st2"), json!("ST2")));
        assert!(!op("equals", json!(null), json!(null)), "None pattern");
    }

    #[test]
    fn nequals_and_alias() {
        assert!(op("nequals", json!("a"), json!("b")));
        assert!(!op("neq", json!("a"), json!("a")));
        assert!(op("neq", json!("a"), json!(null)));
        assert!(!op("neq", json!(null), json!(null)));
    }

    #[test]
    fn iequals_and_alias() {
        assert!(op("iequals", json!("StackStorm"), json!("stackstorm")));
        assert!(op("ieq", json!("ÄB"), json!("äb")));
        assert!(!op("ieq", json!("a"), json!("b")));
        assert!(!op("ieq", json!(1), json!(1)), "not strings");
    }

    #[test]
    fn contains_family() {
        assert!(op("contains", json!("hello world"), json!("lo w")));
        assert!(op("contains", json!(["a", 2]), json!(2.0)));
        assert!(op("contains", json!({"k": 1}), json!("k")));
        assert!(!op("contains", json!({"k": 1}), json!("v")));
        assert!(!op("contains", json!("abc"), json!(1)), "TypeError");
        assert!(!op("contains", json!(null), json!("a")), "TypeError");
        assert!(op("icontains", json!("Hello"), json!("ELL")));
        assert!(!op("icontains", json!(["A"]), json!("a")));
        assert!(op("ncontains", json!("abc"), json!("x")));
        assert!(!op("ncontains", json!("abc"), json!("b")));
        assert!(op("ncontains", json!([1, 2]), json!(3)));
        assert!(
            !op("ncontains", json!(null), json!("x")),
            "TypeError: no match"
        );
        assert!(op("incontains", json!("ABC"), json!("x")));
        assert!(!op("incontains", json!("ABC"), json!("b")));
    }

    #[test]
    fn prefix_and_suffix() {
        assert!(op("startswith", json!("st2.webhook"), json!("st2.")));
        assert!(!op("startswith", json!("st2.webhook"), json!("ST2")));
        assert!(op("istartswith", json!("st2.webhook"), json!("ST2")));
        assert!(op("endswith", json!("file.txt"), json!(".txt")));
        assert!(!op("endswith", json!("file.txt"), json!(".TXT")));
        assert!(op("iendswith", json!("file.txt"), json!(".TXT")));
        assert!(!op("startswith", json!(["a"]), json!("a")));
    }

    #[test]
    fn ordering() {
        assert!(op("lessthan", json!(3), json!(5)));
        assert!(op("lt", json!(3.5), json!(4)));
        assert!(!op("lt", json!(5), json!(5)));
        assert!(op("greaterthan", json!(10), json!(5)));
        assert!(
            op("gt", json!("b"), json!("a")),
            "strings order lexicographically"
        );
        assert!(op("gt", json!([1, 3]), json!([1, 2])));
        assert!(!op("gt", json!("10"), json!(5)), "TypeError");
        assert!(!op("lt", json!(null), json!(5)), "TypeError");
    }

    #[test]
    fn matchwildcard_is_fnmatch() {
        assert!(op(
            "matchwildcard",
            json!("webhook/sample"),
            json!("webhook*")
        ));
        assert!(op("matchwildcard", json!("a/b/c"), json!("a*c")));
        assert!(op("matchwildcard", json!("file1.log"), json!("file?.log")));
        assert!(op("matchwildcard", json!("b"), json!("[abc]")));
        assert!(!op("matchwildcard", json!("d"), json!("[abc]")));
        assert!(op("matchwildcard", json!("d"), json!("[!abc]")));
        assert!(
            op("matchwildcard", json!("a[b"), json!("a[b")),
            "unclosed [ is literal"
        );
        assert!(op("matchwildcard", json!("a.b"), json!("a.b")));
        assert!(!op("matchwildcard", json!("axb"), json!("a.b")));
        assert!(
            !op("matchwildcard", json!("ABC"), json!("abc")),
            "case-sensitive"
        );
        assert!(
            !op("matchwildcard", json!("abc\nx"), json!("abc")),
            "whole string"
        );
    }

    #[test]
    fn regex_operators() {
        assert!(
            op("matchregex", json!("foo\nbar"), json!("foo.bar")),
            "DOTALL"
        );
        assert!(!op("matchregex", json!("xfoo"), json!("foo")), "anchored");
        assert!(op("regex", json!("xfoo"), json!("fo+")), "search");
        assert!(!op("regex", json!("FOO"), json!("foo")));
        assert!(op("iregex", json!("FOO"), json!("foo")));
        assert!(
            op("regex", json!("prod-1"), json!("^(?!test).*-\\d$")),
            "look-ahead"
        );
        assert!(!op("regex", json!(12), json!("1")), "not a string");
        let err = eval(
            json!({"trigger.v": {"type": "regex", "pattern": "(unclosed"}}),
            json!({"v": "x"}),
        )
        .unwrap_err();
        assert!(
            matches!(&err, CriteriaError::InvalidRegex { key, .. } if key == "trigger.v"),
            "{err}"
        );
    }

    #[test]
    fn timediff() {
        let ago = |s: i64| (Utc::now() - chrono::Duration::seconds(s)).to_rfc3339();
        assert!(op("timediff_lt", json!(ago(10)), json!(60)));
        assert!(op("td_lt", json!(ago(10)), json!("60")));
        assert!(!op("td_lt", json!(ago(120)), json!(60)));
        assert!(op("timediff_gt", json!(ago(120)), json!(60)));
        assert!(op("td_gt", json!(ago(120)), json!(60.5)));
        assert!(!op("td_gt", json!(ago(10)), json!(60)));
        assert!(
            op("td_gt", json!("2020-01-01 10:00:00"), json!(60)),
            "naive is UTC"
        );
        assert!(op("td_gt", json!("2020-01-01"), json!(60)));
        assert!(op("td_gt", json!("2020-01-01T10:00:00.5+0200"), json!(60)));
        assert!(!op("td_gt", json!("not a date"), json!(60)));
        assert!(!op("td_gt", json!(ago(120)), json!("x")));
        assert!(parse_timestamp("Wed, 01 Jan 2020 10:00:00 +0000").is_some());
        assert_eq!(
            parse_timestamp("2020-01-01T10:00:00.5+02:00"),
            parse_timestamp("2020-01-01 08:00:00.5")
        );
    }

    #[test]
    fn exists_and_nexists() {
        assert!(op("exists", json!(0), json!(null)));
        assert!(!op("exists", json!(null), json!(null)));
        assert!(op("nexists", json!(null), json!("ignored")));
        assert!(eval(
            json!({"trigger.missing": {"type": "nexists"}}),
            json!({"v": 1})
        )
        .unwrap());
        assert!(!eval(
            json!({"trigger.missing": {"type": "exists"}}),
            json!({"v": 1})
        )
        .unwrap());
    }

    #[test]
    fn inside_family() {
        assert!(op("inside", json!("b"), json!(["a", "b"])));
        assert!(op("in", json!("ell"), json!("hello")));
        assert!(op("in", json!("k"), json!({"k": 1})));
        assert!(!op("in", json!("x"), json!(["a"])));
        assert!(op("ninside", json!("x"), json!(["a"])));
        assert!(op("nin", json!(3), json!([1, 2])));
        assert!(!op("nin", json!("a"), json!(["a"])));
        assert!(!op("nin", json!(1), json!("abc")), "TypeError: no match");
        assert!(!op("in", json!("a"), json!(null)), "None pattern");
    }

    fn search_payload() -> Value {
        json!({"issue_fields": [
            {"field_name": "Status", "to_value": "Approved"},
            {"field_name": "Assignee", "to_value": "Stanley"}
        ]})
    }

    fn search(condition: &str, children: Value) -> bool {
        eval(
            json!({"trigger.issue_fields": {"type": "search", "condition": condition,
                                             "pattern": children}}),
            search_payload(),
        )
        .unwrap_or_else(|e| panic!("{condition}: {e}"))
    }

    #[test]
    fn search_conditions() {
        let both_on_one = json!({
            "item.field_name": {"type": "equals", "pattern": "Status"},
            "item.to_value": {"type": "equals", "pattern": "Approved"}
        });
        let one_each = json!({
            "item.field_name": {"type": "equals", "pattern": "Status"},
            "item.field_name#2": {"type": "equals", "pattern": "Assignee"}
        });
        let all_have_a_value = json!({
            "item.to_value": {"type": "exists"},
            "item.field_name": {"type": "startswith", "pattern": "Nope"}
        });
        assert!(search("any", both_on_one.clone()));
        assert!(!search("all", both_on_one.clone()));
        assert!(!search("any", one_each.clone()));
        assert!(search("any2any", one_each.clone()));
        assert!(search("all2any", one_each.clone()));
        assert!(!search("all", all_have_a_value.clone()));
        assert!(search("all2any", all_have_a_value));
        assert!(!search(
            "any2any",
            json!({"item.field_name": {"type": "equals", "pattern": "Priority"}})
        ));
        assert!(search(
            "all",
            json!({"item.to_value": {"type": "exists"}, "item.field_name": {"type": "exists"}})
        ));
    }

    #[test]
    fn search_treats_a_dict_as_one_item_and_rejects_bad_conditions() {
        let spec = json!({"trigger.obj": {"type": "search", "condition": "all",
            "pattern": {"item.k": {"type": "eq", "pattern": 1}}}});
        assert!(eval(spec.clone(), json!({"obj": {"k": 1}})).unwrap());
        assert!(!eval(spec.clone(), json!({"obj": "k"})).unwrap());
        let err = eval(
            json!({"trigger.obj": {"type": "search", "condition": "most", "pattern": {}}}),
            json!({"obj": []}),
        )
        .unwrap_err();
        assert!(
            matches!(&err, CriteriaError::UnknownCondition { key, condition }
                if key == "trigger.obj" && condition.as_deref() == Some("most")),
            "{err}"
        );
        let err = eval(
            json!({"trigger.obj": {"type": "search", "pattern": {}}}),
            json!({"obj": []}),
        )
        .unwrap_err();
        assert!(matches!(
            err,
            CriteriaError::UnknownCondition {
                condition: None,
                ..
            }
        ));
        let err = eval(
            json!({"trigger.obj": {"type": "search", "condition": "any", "pattern": "x"}}),
            json!({"obj": []}),
        )
        .unwrap_err();
        assert!(matches!(err, CriteriaError::InvalidSearchPattern { .. }));
        // `all` over no items holds, as Python's all([]) does.
        assert!(eval(spec, json!({"obj": []})).unwrap());
    }

    #[test]
    fn all_criteria_must_match() {
        let spec = json!({
            "trigger.body.name": {"type": "equals", "pattern": "st2"},
            "trigger.body.count#1": {"type": "gt", "pattern": 1},
            "trigger.body.count#2": {"type": "lt", "pattern": 10}
        });
        assert!(eval(spec.clone(), json!({"body": {"name": "st2", "count": 5}})).unwrap());
        assert!(!eval(spec.clone(), json!({"body": {"name": "st2", "count": 50}})).unwrap());
        assert!(!eval(spec, json!({"body": {"name": "x", "count": 5}})).unwrap());
    }

    #[test]
    fn empty_payload_and_empty_criteria() {
        let spec = json!({"trigger.x": {"type": "nexists"}});
        assert!(!eval(spec.clone(), json!({})).unwrap());
        assert!(!eval(spec, json!(null)).unwrap());
        assert!(eval(json!({}), json!({})).unwrap());
    }

    #[test]
    fn keys_are_json_paths() {
        let payload = json!({"items": [{"x": 1}, {"x": 2}], "weird key": "w",
                             "headers": {"X-GitHub-Event": "push"}});
        let eq = |key: &str, pattern: Value| {
            eval(
                json!({ key: {"type": "eq", "pattern": pattern} }),
                payload.clone(),
            )
            .unwrap()
        };
        assert!(eq("trigger.items[1].x", json!(2)));
        assert!(eq("trigger['weird key']", json!("w")));
        assert!(eq("trigger.headers.X-GitHub-Event", json!("push")));
        assert!(eq("trigger.items[*].x", json!(1)), "first match is used");
        let err = eval(json!({"trigger[": {"type": "exists"}}), payload).unwrap_err();
        assert!(matches!(err, CriteriaError::InvalidKey { .. }));
    }

    #[test]
    fn patterns_are_rendered_keeping_their_type() {
        let payload = json!({"limit": 5, "count": 7, "name": "st2", "allowed": ["st2", "x"]});
        let check = |name: &str, pattern: &str| {
            eval(
                json!({"trigger.count": {"type": name, "pattern": pattern}}),
                payload.clone(),
            )
            .unwrap()
        };
        assert!(check("gt", "{{ trigger.limit }}"), "5 stays a number");
        assert!(check("eq", "{{ trigger.limit + 2 }}"));
        assert!(!check("eq", "{{ trigger.limit }}"));
        let name_in = eval(
            json!({"trigger.name": {"type": "in", "pattern": "{{ trigger.allowed }}"}}),
            payload.clone(),
        )
        .unwrap();
        assert!(name_in, "list pattern");
        let text = eval(
            json!({"trigger.name": {"type": "eq", "pattern": "s{{ 't' }}2"}}),
            payload.clone(),
        )
        .unwrap();
        assert!(text);
        let err = eval(
            json!({"trigger.name": {"type": "eq", "pattern": "{{ trigger.nope }}"}}),
            payload,
        )
        .unwrap_err();
        assert!(
            matches!(&err, CriteriaError::Render { key, .. } if key == "trigger.name"),
            "{err}"
        );
    }

    #[test]
    fn patterns_read_the_datastore() {
        struct Kv;
        impl KeyValueLookup for Kv {
            fn get(&self, scope: KvScope, name: &str) -> Option<String> {
                (scope == KvScope::System && name == "env").then(|| "prod".to_string())
            }
        }
        let spec = criteria(json!({"trigger.env": {"type": "eq",
                                    "pattern": "{{ st2kv.system.env }}"}}));
        let renderer = Renderer::new();
        assert!(matches(&spec, &json!({"env": "prod"}), &renderer, &Kv).unwrap());
        assert!(!matches(&spec, &json!({"env": "dev"}), &renderer, &Kv).unwrap());
    }

    #[test]
    fn search_children_render_against_the_item() {
        let spec = json!({"trigger.items": {"type": "search", "condition": "any", "pattern": {
            "item.a": {"type": "eq", "pattern": "{{ item.b }}"}
        }}});
        assert!(eval(
            spec.clone(),
            json!({"items": [{"a": 1, "b": 2}, {"a": 3, "b": 3}]})
        )
        .unwrap());
        assert!(!eval(spec, json!({"items": [{"a": 1, "b": 2}]})).unwrap());
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            (-1e6..1e6f64).prop_map(Value::from),
            "[a-z ]{0,6}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z]{1,3}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn explain_json(spec: Value, payload: Value) -> Explanation {
        explain(&criteria(spec), &payload, &Renderer::new(), &NoKeyValues)
    }

    #[test]
    fn explanation_names_the_failing_criterion_with_both_values() {
        let e = explain_json(
            json!({
                "trigger.body.severity": {"type": "equals", "pattern": "critical"},
                "trigger.body.host#1": {"type": "startswith", "pattern": "web-"},
            }),
            json!({"body": {"severity": "warning", "host": "web-3"}}),
        );
        assert!(!e.matched);
        assert!(!e.empty_payload);
        assert_eq!(e.criteria.len(), 2, "every criterion is evaluated");
        let host = &e.criteria[0];
        assert_eq!(host.key, "trigger.body.host#1");
        assert_eq!(host.path, "trigger.body.host");
        assert!(host.matched);
        let failed = e.first_failure().expect("one failed");
        assert_eq!(failed.key, "trigger.body.severity");
        assert_eq!(failed.operator, "equals");
        assert_eq!(failed.value, Some(json!("warning")));
        assert_eq!(failed.pattern, Some(json!("critical")));
        assert_eq!(failed.error, None);
    }

    #[test]
    fn explanation_shows_rendered_patterns_and_missing_values() {
        let e = explain_json(
            json!({
                "trigger.limit": {"type": "gt", "pattern": "{{ trigger.floor }}"},
                "trigger.absent": {"type": "exists"},
            }),
            json!({"limit": 7, "floor": 5}),
        );
        assert!(!e.matched);
        let limit = e
            .criteria
            .iter()
            .find(|c| c.key == "trigger.limit")
            .unwrap();
        assert!(limit.matched);
        assert_eq!(limit.pattern, Some(json!(5)), "native type kept");
        let absent = e.first_failure().unwrap();
        assert_eq!(absent.key, "trigger.absent");
        assert_eq!(absent.value, Some(Value::Null));
        assert_eq!(absent.pattern, Some(Value::Null));
    }

    #[test]
    fn explanation_reports_errors_per_criterion() {
        let e = explain_json(
            json!({
                "trigger.a": {"type": "like", "pattern": 1},
                "trigger.b": {"type": "eq", "pattern": "{{ nope( }}"},
                "trigger.c": {"type": "eq", "pattern": 1},
            }),
            json!({"a": 1, "b": 2, "c": 1}),
        );
        assert!(!e.matched);
        let a = &e.criteria[0];
        assert!(!a.matched);
        assert_eq!((a.value.clone(), a.pattern.clone()), (None, None));
        assert!(
            a.error.as_deref().unwrap().contains("unknown operator"),
            "{a:?}"
        );
        let b = &e.criteria[1];
        assert_eq!(b.value, Some(json!(2)), "read before the pattern failed");
        assert!(
            b.error.as_deref().unwrap().contains("failed to render"),
            "{b:?}"
        );
        assert!(e.criteria[2].matched);
    }

    #[test]
    fn explanation_of_an_empty_payload_and_of_no_criteria() {
        let e = explain_json(json!({"trigger.a": {"type": "exists"}}), json!({}));
        assert!(!e.matched && e.empty_payload && e.criteria.is_empty());
        let e = explain_json(json!({}), json!({}));
        assert!(e.matched && !e.empty_payload && e.criteria.is_empty());
    }

    fn operator_name() -> impl Strategy<Value = &'static str> {
        proptest::sample::select(vec![
            "eq",
            "neq",
            "contains",
            "ncontains",
            "lt",
            "gt",
            "exists",
            "nexists",
            "in",
            "nin",
            "startswith",
            "iequals",
        ])
    }

    proptest! {
        #[test]
        fn equals_and_nequals_are_complementary(value in json_value(), pattern in json_value()) {
            prop_assume!(!pattern.is_null());
            prop_assert_ne!(
                op("equals", value.clone(), pattern.clone()),
                op("nequals", value, pattern)
            );
        }

        #[test]
        fn explanation_agrees_with_matching(
            first in operator_name(),
            second in operator_name(),
            a in json_value(),
            b in json_value(),
            pa in json_value(),
            pb in json_value(),
        ) {
            let spec = criteria(json!({
                "trigger.a": {"type": first, "pattern": pa},
                "trigger.b": {"type": second, "pattern": pb},
            }));
            let payload = json!({"a": a, "b": b});
            let r = Renderer::new();
            let e = explain(&spec, &payload, &r, &NoKeyValues);
            prop_assert_eq!(e.matched, matches(&spec, &payload, &r, &NoKeyValues) == Ok(true));
            prop_assert_eq!(e.first_failure().is_none(), e.matched);
        }

        #[test]
        fn equals_is_reflexive(value in json_value()) {
            prop_assume!(!value.is_null());
            prop_assert!(op("eq", value.clone(), value));
        }

        #[test]
        fn contains_on_strings_is_substring(haystack in "[^{]{0,12}", needle in "[^{]{0,4}") {
            prop_assert_eq!(
                op("contains", json!(haystack), json!(needle)),
                haystack.contains(&needle)
            );
            prop_assert_eq!(
                op("ncontains", json!(haystack), json!(needle)),
                !haystack.contains(&needle)
            );
        }

        #[test]
        fn lt_and_gt_agree_with_number_order(a in any::<i32>(), b in any::<i32>()) {
            prop_assert_eq!(op("lt", json!(a), json!(b)), a < b);
            prop_assert_eq!(op("gt", json!(a), json!(f64::from(b))), a > b);
        }
    }

    /// Every operator name, as [`OPERATORS`] lists them.
    fn every_operator_name() -> Vec<&'static str> {
        OPERATORS
            .iter()
            .flat_map(|op| op.names.iter().copied())
            .collect()
    }

    /// The compiled criteria decide as the reference evaluation does,
    /// errors included; the result.
    fn agree(
        spec: &Value,
        payload: &Value,
        kv: &dyn KeyValueLookup,
    ) -> Result<bool, CriteriaError> {
        let spec = criteria(spec.clone());
        let renderer = Renderer::new();
        let reference = matches(&spec, payload, &renderer, kv);
        let compiled = CompiledCriteria::compile(&spec);
        assert_eq!(
            compiled.matches(payload, &renderer, kv),
            reference,
            "criteria {spec:?} on {payload}"
        );
        reference
    }

    #[test]
    fn criteria_that_may_open_a_secret_are_known_when_compiled() {
        let compiled = |pattern: &str| {
            let criteria: Criteria = serde_json::from_value(
                json!({"trigger.pw": {"type": "equals", "pattern": pattern}}),
            )
            .unwrap();
            CompiledCriteria::compile(&criteria).may_open_secrets()
        };
        assert!(compiled("{{ st2kv.system.pw | decrypt_kv }}"));
        assert!(compiled("{{ st2kv.system.region }}"));
        // A sealed value the event carries, opened in the pattern.
        assert!(compiled("{{ trigger.sealed | decrypt_kv }}"));
        assert!(!compiled("{{ trigger.expected }}"));
        assert!(!compiled("plain"));
    }

    #[test]
    fn compiled_criteria_agree_with_the_reference_for_every_operator() {
        struct Kv;
        impl KeyValueLookup for Kv {
            fn get(&self, scope: KvScope, name: &str) -> Option<String> {
                (scope == KvScope::System && name == "env").then(|| "prod".to_string())
            }
        }
        let ago = (Utc::now() - chrono::Duration::seconds(120)).to_rfc3339();
        let values = [
            json!(null),
            json!("prod"),
            json!("Prod-1"),
            json!("hello world"),
            json!(""),
            json!(5),
            json!(5.0),
            json!(true),
            json!(["a", 2, "prod"]),
            json!({"k": 1, "prod": 2}),
            json!(ago),
            json!("2020-01-01"),
            json!("foo\nbar"),
            json!("a/b.txt"),
            json!([{"k": 1, "n": "x"}, {"k": 2, "n": "prod"}]),
        ];
        let patterns = [
            None,
            Some(json!(null)),
            Some(json!("prod")),
            Some(json!("PROD")),
            Some(json!("o")),
            Some(json!(5)),
            Some(json!(60)),
            Some(json!("60")),
            Some(json!(["prod", 5])),
            Some(json!({"prod": 1})),
            Some(json!("^p.*\\d$")),
            Some(json!("(unclosed")),
            Some(json!("p*")),
            Some(json!("[!a]*")),
            Some(json!("foo.bar")),
            Some(json!(NONE_MAGIC_VALUE)),
            Some(json!("{{ trigger.other }}")),
            Some(json!("{{ trigger.list }}")),
            Some(json!("{{ st2kv.system.env }}")),
            Some(json!("p{{ 'r' }}od")),
            Some(json!("{{ trigger.nope }}")),
            Some(json!("{{ '' | use_none }}")),
            Some(json!("{{ trigger.other | upper }}.*")),
            Some(json!({"item.k": {"type": "gt", "pattern": 1}})),
            Some(json!({"item.n": {"type": "eq", "pattern": "{{ item.n }}"},
                        "item.k": {"type": "nope"}})),
            Some(json!({"item.k": "not a criterion"})),
            Some(json!("{{ {'item.k': {'type': 'eq', 'pattern': 2}} }}")),
        ];
        let conditions = [
            None,
            Some("any"),
            Some("all"),
            Some("any2any"),
            Some("all2any"),
            Some("most"),
        ];
        let mut checked = 0;
        for name in every_operator_name() {
            for pattern in &patterns {
                for condition in conditions {
                    if condition.is_some() && name != "search" {
                        continue;
                    }
                    let mut criterion = json!({"type": name});
                    if let Some(p) = pattern {
                        criterion["pattern"] = p.clone();
                    }
                    if let Some(c) = condition {
                        criterion["condition"] = json!(c);
                    }
                    for value in &values {
                        let payload = json!({"v": value, "other": "prod", "list": ["prod"]});
                        agree(&json!({ "trigger.v": criterion }), &payload, &Kv).ok();
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 1000, "{checked}");
    }

    #[test]
    fn compiled_criteria_report_errors_in_the_reference_order() {
        let payload = json!({"v": 1, "w": "x"});
        for spec in [
            json!({"trigger.v": {"type": "like"}, "trigger.w": {"type": "eq", "pattern": "x"}}),
            json!({"trigger.v": {"type": "eq", "pattern": 2}, "trigger.w": {"type": "like"}}),
            json!({"trigger.v": {"type": "eq", "pattern": 1}, "trigger.w": {"type": "like"}}),
            json!({"trigger[": {"type": "exists"}}),
            json!({"trigger[": {"type": "like"}}),
            json!({"trigger.w": {"type": "regex", "pattern": "(x"}}),
            json!({"trigger.v": {"type": "regex", "pattern": "(x"}}),
            json!({"trigger.v": {"type": "eq", "pattern": "{{ nope }}"},
                   "trigger.w": {"type": "like"}}),
            json!({"#only-a-comment": {"type": "exists"}}),
            json!({"$": {"type": "eq", "pattern": {"trigger": {"v": 1, "w": "x"}}}}),
            json!({"..w": {"type": "eq", "pattern": "x"}}),
            json!({"trigger.v": {"type": "search", "pattern": {}}}),
            json!({"trigger.v": {"type": "search", "condition": "any", "pattern": 3}}),
        ] {
            agree(&spec, &payload, &NoKeyValues).ok();
        }
        agree(&json!({}), &json!(null), &NoKeyValues).unwrap();
        agree(
            &json!({"trigger.v": {"type": "nexists"}}),
            &json!({}),
            &NoKeyValues,
        )
        .unwrap();
    }

    fn criterion() -> impl Strategy<Value = Value> {
        let names = every_operator_name();
        let pattern = prop_oneof![
            json_value(),
            "[a-z ]{0,4}".prop_map(|s| json!(format!("{{{{ trigger.{s} }}}}"))),
            Just(json!("{{ trigger.a }}")),
            Just(json!("x{{ trigger.b }}")),
        ];
        (
            prop::sample::select(names),
            prop::option::of(pattern),
            prop::option::of(prop::sample::select(vec![
                "any", "all", "any2any", "all2any",
            ])),
        )
            .prop_map(|(name, pattern, condition)| {
                let mut c = json!({"type": name});
                if let Some(p) = pattern {
                    c["pattern"] = p;
                }
                if let Some(cond) = condition {
                    c["condition"] = json!(cond);
                }
                c
            })
    }

    proptest! {
        #[test]
        fn compiled_criteria_agree_with_the_reference(
            criteria in prop::collection::btree_map(
                prop::sample::select(vec!["trigger.a", "trigger.b", "trigger.a#2", "trigger.c[0]",
                                          "trigger..a", "trigger.*"]),
                criterion(),
                0..4,
            ),
            payload in json_value(),
        ) {
            let spec = Value::Object(criteria.into_iter().map(|(k, v)| (k.to_string(), v)).collect());
            agree(&spec, &payload, &NoKeyValues).ok();
        }
    }
}

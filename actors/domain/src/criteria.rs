//! Rule criteria: StackStorm's operators evaluated against a trigger
//! payload.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

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

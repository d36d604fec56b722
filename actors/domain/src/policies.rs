//! Policy types StackStorm defines, the checks a policy's parameters must
//! pass (`policies/*.yaml` in a pack), and a registered policy read as what
//! the engine enforces ([`Enforced`]).

use serde::Serialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::model::PolicyDef;

/// Kind of value a policy parameter takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Integer,
    Number,
    String,
    Array,
}

/// One parameter of a policy type.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyParam {
    pub name: &'static str,
    #[serde(rename = "type")]
    pub kind: Kind,
    pub required: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    #[serde(rename = "enum", skip_serializing_if = "<[_]>::is_empty")]
    pub choices: &'static [&'static str],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minimum: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maximum: Option<f64>,
    pub description: &'static str,
}

/// A policy type: `action.concurrency`, `action.concurrency.attr`,
/// `action.retry`.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyType {
    #[serde(rename = "ref")]
    pub reference: &'static str,
    pub resource_type: &'static str,
    pub name: &'static str,
    pub description: &'static str,
    pub parameters: Vec<PolicyParam>,
}

fn param(name: &'static str, kind: Kind, description: &'static str) -> PolicyParam {
    PolicyParam {
        name,
        kind,
        required: false,
        default: None,
        choices: &[],
        minimum: None,
        maximum: None,
        description,
    }
}

/// Every policy type.
pub fn all() -> Vec<PolicyType> {
    let threshold = PolicyParam {
        required: true,
        minimum: Some(0.0),
        ..param(
            "threshold",
            Kind::Integer,
            "How many executions of the action may run at once.",
        )
    };
    let over = PolicyParam {
        default: Some(json!("delay")),
        choices: &["delay", "cancel"],
        ..param(
            "action",
            Kind::String,
            "What happens to an execution over the threshold.",
        )
    };
    vec![
        PolicyType {
            reference: "action.concurrency",
            resource_type: "action",
            name: "concurrency",
            description: "Limits how many executions of an action run at once.",
            parameters: vec![threshold.clone(), over.clone()],
        },
        PolicyType {
            reference: "action.concurrency.attr",
            resource_type: "action",
            name: "concurrency.attr",
            description: "Limits concurrent executions per group of parameter values.",
            parameters: vec![
                threshold,
                over,
                PolicyParam {
                    required: true,
                    ..param(
                        "attributes",
                        Kind::Array,
                        "Parameters whose values form a group.",
                    )
                },
            ],
        },
        PolicyType {
            reference: "action.retry",
            resource_type: "action",
            name: "retry",
            description: "Re-runs an execution that failed or timed out.",
            parameters: vec![
                PolicyParam {
                    required: true,
                    choices: &["failure", "timeout"],
                    ..param("retry_on", Kind::String, "Which outcome is retried.")
                },
                PolicyParam {
                    required: true,
                    default: Some(json!(2)),
                    minimum: Some(1.0),
                    maximum: Some(5.0),
                    ..param("max_retry_count", Kind::Integer, "Most retries.")
                },
                PolicyParam {
                    minimum: Some(0.0),
                    maximum: Some(120.0),
                    ..param("delay", Kind::Number, "Seconds to wait before a retry.")
                },
            ],
        },
    ]
}

/// The policy type named `reference`.
pub fn lookup(reference: &str) -> Option<PolicyType> {
    all().into_iter().find(|t| t.reference == reference)
}

/// Problems with a policy's `parameters` for its type, as
/// `(parameter, message)`.
pub fn check_parameters(
    policy_type: &PolicyType,
    params: &Map<String, Value>,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for name in params.keys() {
        if !policy_type.parameters.iter().any(|p| p.name == name) {
            let known: Vec<_> = policy_type.parameters.iter().map(|p| p.name).collect();
            out.push((
                name.clone(),
                format!(
                    "unknown parameter of {} (it takes {})",
                    policy_type.reference,
                    known.join(", ")
                ),
            ));
        }
    }
    for p in &policy_type.parameters {
        let Some(v) = params.get(p.name) else {
            if p.required && p.default.is_none() {
                out.push((p.name.to_string(), "is required".into()));
            }
            continue;
        };
        let fits = match p.kind {
            Kind::Integer => v.is_i64() || v.is_u64(),
            Kind::Number => v.is_number(),
            Kind::String => v.is_string(),
            Kind::Array => v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
        };
        if !fits {
            let what = match p.kind {
                Kind::Integer => "an integer",
                Kind::Number => "a number",
                Kind::String => "a string",
                Kind::Array => "a list of parameter names",
            };
            out.push((p.name.to_string(), format!("must be {what}, got {v}")));
            continue;
        }
        if let Some(s) = v.as_str() {
            if !p.choices.is_empty() && !p.choices.contains(&s) {
                out.push((
                    p.name.to_string(),
                    format!("{s:?} is not one of {}", p.choices.join(", ")),
                ));
            }
        }
        if let Some(n) = v.as_f64() {
            if p.minimum.is_some_and(|m| n < m) || p.maximum.is_some_and(|m| n > m) {
                out.push((
                    p.name.to_string(),
                    format!(
                        "{n} is out of range ({}..{})",
                        p.minimum.map_or("".into(), |m| m.to_string()),
                        p.maximum.map_or("".into(), |m| m.to_string())
                    ),
                ));
            }
        }
    }
    out
}

/// What happens to an execution over a concurrency threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    /// It waits, `delayed`, for a slot.
    Delay,
    /// It ends `canceled` without running.
    Cancel,
}

/// Which outcome a retry policy re-runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOn {
    Failure,
    Timeout,
}

/// A registered, enabled policy, as the engine enforces it.
#[derive(Debug, Clone, PartialEq)]
pub enum Enforced {
    /// `action.concurrency` (no `attributes`) or `action.concurrency.attr`.
    Concurrency {
        threshold: u64,
        over: Over,
        attributes: Vec<String>,
    },
    /// `action.retry`.
    Retry {
        on: RetryOn,
        max_retry_count: u64,
        /// Seconds before the new execution runs.
        delay: f64,
    },
}

/// What `def` enforces; `None` when disabled (or malformed, which the loader
/// rejects before anything is stored).
pub fn enforced(def: &PolicyDef) -> Option<Enforced> {
    if !def.enabled {
        return None;
    }
    let p = &def.parameters;
    match def.policy_type.as_str() {
        "action.concurrency" | "action.concurrency.attr" => Some(Enforced::Concurrency {
            threshold: p.get("threshold")?.as_u64()?,
            over: match p.get("action").and_then(Value::as_str) {
                Some("cancel") => Over::Cancel,
                _ => Over::Delay,
            },
            attributes: match def.policy_type.as_str() {
                "action.concurrency.attr" => p
                    .get("attributes")?
                    .as_array()?
                    .iter()
                    .filter_map(|a| a.as_str().map(str::to_string))
                    .collect(),
                _ => Vec::new(),
            },
        }),
        "action.retry" => Some(Enforced::Retry {
            on: match p.get("retry_on")?.as_str()? {
                "timeout" => RetryOn::Timeout,
                _ => RetryOn::Failure,
            },
            max_retry_count: p
                .get("max_retry_count")
                .and_then(Value::as_u64)
                .unwrap_or(2),
            delay: p.get("delay").and_then(Value::as_f64).unwrap_or(0.0),
        }),
        _ => None,
    }
}

/// The key of the slot set a concurrency policy keeps for an execution
/// with `parameters`: the policy's reference (characters a NATS key cannot
/// hold become `_`), and for `action.concurrency.attr` a hash of the named
/// parameters' values, so each distinct combination has its own slots (a
/// parameter not given counts as `null`, as StackStorm's filter leaves it
/// out).
pub fn slot_key(
    policy_ref: &str,
    attributes: &[String],
    parameters: &Map<String, Value>,
) -> String {
    let safe: String = policy_ref
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if attributes.is_empty() {
        return safe;
    }
    let mut names: Vec<&String> = attributes.iter().collect();
    names.sort();
    names.dedup();
    let values: Vec<Value> = names
        .iter()
        .map(|n| json!([n, parameters.get(n.as_str()).unwrap_or(&Value::Null)]))
        .collect();
    let digest = Sha256::digest(Value::Array(values).to_string().as_bytes());
    format!("{safe}.{}", crate::hex_prefix(&digest, 8))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(kind: &str, params: Value) -> Vec<(String, String)> {
        let Value::Object(map) = params else {
            panic!("not an object")
        };
        check_parameters(&lookup(kind).unwrap(), &map)
    }

    fn def(policy_type: &str, parameters: Value) -> PolicyDef {
        PolicyDef {
            name: "p".into(),
            pack: "pk".into(),
            description: String::new(),
            enabled: true,
            resource_ref: "pk.a".into(),
            policy_type: policy_type.into(),
            parameters: parameters.as_object().cloned().unwrap_or_default(),
            metadata_file: String::new(),
        }
    }

    #[test]
    fn policies_read_as_what_is_enforced() {
        assert_eq!(
            enforced(&def("action.concurrency", json!({"threshold": 2}))),
            Some(Enforced::Concurrency {
                threshold: 2,
                over: Over::Delay,
                attributes: vec![]
            })
        );
        assert_eq!(
            enforced(&def(
                "action.concurrency.attr",
                json!({"threshold": 1, "action": "cancel", "attributes": ["host"]})
            )),
            Some(Enforced::Concurrency {
                threshold: 1,
                over: Over::Cancel,
                attributes: vec!["host".into()]
            })
        );
        assert_eq!(
            enforced(&def(
                "action.retry",
                json!({"retry_on": "timeout", "max_retry_count": 3, "delay": 0.5})
            )),
            Some(Enforced::Retry {
                on: RetryOn::Timeout,
                max_retry_count: 3,
                delay: 0.5
            })
        );
        let mut off = def("action.concurrency", json!({"threshold": 2}));
        off.enabled = false;
        assert_eq!(enforced(&off), None);
    }

    #[test]
    fn slot_keys_group_by_the_named_values_only() {
        let params = |v: Value| v.as_object().cloned().unwrap();
        let attrs = vec!["host".to_string()];
        let a = slot_key("pk.limit", &attrs, &params(json!({"host": "a", "x": 1})));
        let a2 = slot_key("pk.limit", &attrs, &params(json!({"x": 2, "host": "a"})));
        let b = slot_key("pk.limit", &attrs, &params(json!({"host": "b"})));
        assert_eq!(a, a2);
        assert_ne!(a, b);
        assert!(a.starts_with("pk.limit."), "{a}");
        assert_eq!(slot_key("pk.my limit", &[], &Map::new()), "pk.my_limit");
    }

    #[test]
    fn stackstorm_retry_example_passes() {
        assert!(check(
            "action.retry",
            json!({"retry_on": "timeout", "max_retry_count": 2, "delay": 2})
        )
        .is_empty());
        assert!(check("action.concurrency", json!({"threshold": 10})).is_empty());
    }

    #[test]
    fn each_rejection_names_the_parameter() {
        let bad = check(
            "action.retry",
            json!({"retry_on": "sometimes", "max_retry_count": 9, "delay": "2", "x": 1}),
        );
        let fields: Vec<_> = bad.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, vec!["x", "retry_on", "max_retry_count", "delay"]);
        let missing = check("action.concurrency.attr", json!({"threshold": 1}));
        assert_eq!(missing, vec![("attributes".into(), "is required".into())]);
    }
}

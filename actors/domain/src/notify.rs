//! What an execution's end announces, in StackStorm's shapes (its
//! notifier, `st2actions/notifier/notifier.py`): the
//! `core.st2.generic.actiontrigger` payload every ended execution emits,
//! and the `core.st2.generic.notifytrigger` payloads of an action's
//! `notify` (`on-complete`, `on-success`, `on-failure`; one per route).
//! Rendering `message` and `data` is the caller's (it has the datastore).

use std::collections::HashSet;

use serde_json::{json, Map, Value};

use crate::execution::{ExecutionRecord, Status};
use crate::time::Timestamp;

/// `core.st2.generic.actiontrigger`.
pub const ACTION_TRIGGER: &str = "core.st2.generic.actiontrigger";
/// `core.st2.generic.notifytrigger`.
pub const NOTIFY_TRIGGER: &str = "core.st2.generic.notifytrigger";

/// Who can react to an execution's end: its actiontrigger is published
/// only when something would consume it. An instance nothing reads would
/// double the trigger traffic of every execution (one more publish, one
/// more delivery to a rule partition) for no effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndListeners {
    /// Some enabled rule listens to `core.st2.generic.actiontrigger`.
    pub rules: bool,
    /// Actions with an `action.retry` policy (their retry is decided when
    /// the actiontrigger is handled).
    pub retried: HashSet<String>,
    /// Nothing is known yet (no catalog loaded): every end is announced.
    pub unknown: bool,
}

impl Default for EndListeners {
    fn default() -> Self {
        EndListeners {
            rules: false,
            retried: HashSet::new(),
            unknown: true,
        }
    }
}

impl EndListeners {
    /// Whether `record`'s end is to be announced: a rule may match it,
    /// its `notify` is sent, or its retry policy decides.
    pub fn want(&self, record: &ExecutionRecord) -> bool {
        self.unknown
            || self.rules
            || record.notify.is_some()
            || self.retried.contains(&record.action.action_ref)
    }
}

/// One `notify` section that applies to an ended execution.
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    /// `on-complete`, `on-success` or `on-failure`.
    pub name: &'static str,
    /// The message template (StackStorm's default when none is given).
    pub message: String,
    /// The data template (a mapping).
    pub data: Map<String, Value>,
    pub routes: Vec<String>,
}

/// Whether `status` is in StackStorm's FAILED group (failed, timeout,
/// abandoned): what `on-failure` fires for.
pub fn is_failure(status: Status) -> bool {
    matches!(status, Status::Failed | Status::Timeout | Status::Abandoned)
}

/// The sections of `notify` that fire for an execution of `action_ref`
/// that ended with `status`, in StackStorm's order (complete, success,
/// failure). A section without routes sends nothing, as in StackStorm.
pub fn sections(notify: &Value, action_ref: &str, status: Status) -> Vec<Section> {
    let fires = [
        ("on-complete", "completed.", true),
        ("on-success", "succeeded.", status == Status::Succeeded),
        ("on-failure", "failed.", is_failure(status)),
    ];
    let mut out = Vec::new();
    for (name, suffix, applies) in fires {
        let Some(section) = notify.get(name).filter(|s| applies && s.is_object()) else {
            continue;
        };
        let routes: Vec<String> = section
            .get("routes")
            .filter(|r| r.as_array().is_some_and(|a| !a.is_empty()))
            .or_else(|| section.get("channels"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|r| r.as_str().map(str::to_string))
            .collect();
        if routes.is_empty() {
            continue;
        }
        out.push(Section {
            name,
            message: section
                .get("message")
                .and_then(Value::as_str)
                .filter(|m| !m.is_empty())
                .map_or_else(|| format!("Action {action_ref} {suffix}"), str::to_string),
            data: section
                .get("data")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
            routes,
        });
    }
    out
}

/// The variables `message` and `data` render with: StackStorm's
/// `action_parameters` (given `masked`, so a secret never reaches a
/// trigger instance), `action_context` and `action_results`.
pub fn template_context(record: &ExecutionRecord, masked: Map<String, Value>) -> Value {
    json!({
        "action_parameters": masked,
        "action_context": record.context,
        "action_results": record.result,
    })
}

/// The notifytrigger payload for one route, with `message` and `data`
/// already rendered; `data.result` is the result as a JSON string, as
/// StackStorm sends it.
pub fn notify_payload(
    record: &ExecutionRecord,
    message: &str,
    mut data: Map<String, Value>,
    route: &str,
) -> Value {
    data.insert("result".into(), json!(record.result.to_string()));
    let end = record.end_timestamp.unwrap_or(record.start_timestamp);
    json!({
        "message": message,
        "data": data,
        "execution_id": record.id,
        "status": record.status,
        "start_timestamp": iso(&record.start_timestamp),
        "end_timestamp": iso(&end),
        "action_ref": record.action.action_ref,
        "runner_ref": record.runner.name,
        "route": route,
        "channel": route,
    })
}

/// The actiontrigger payload, with `parameters` masked by `masked`.
pub fn action_trigger_payload(record: &ExecutionRecord, masked: Map<String, Value>) -> Value {
    json!({
        "execution_id": record.id,
        "status": record.status,
        "start_timestamp": python_str(&record.start_timestamp),
        "action_name": record.action.action_ref,
        "action_ref": record.action.action_ref,
        "runner_ref": record.runner.name,
        "parameters": masked,
        "result": record.result,
    })
}

/// StackStorm's `isotime.format`: `2026-01-31T12:00:00.000000+00:00`.
fn iso(ts: &Timestamp) -> String {
    format!("{}+00:00", ts.format("%Y-%m-%dT%H:%M:%S%.6f"))
}

/// Python's `str()` of an aware UTC datetime, which the actiontrigger's
/// `start_timestamp` is: `2026-01-31 12:00:00.123456+00:00`, without the
/// fraction when it is zero.
fn python_str(ts: &Timestamp) -> String {
    use chrono::Timelike;
    if ts.nanosecond() / 1000 == 0 {
        format!("{}+00:00", ts.format("%Y-%m-%d %H:%M:%S"))
    } else {
        format!("{}+00:00", ts.format("%Y-%m-%d %H:%M:%S%.6f"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_fire_by_status_and_need_routes() {
        let notify = json!({
            "on-complete": {"routes": ["a"]},
            "on-success": {"message": "yay", "routes": ["b"]},
            "on-failure": {"message": "{{action_results.stderr}}", "data": {"x": 1}, "channels": ["c"]},
        });
        let names = |status| -> Vec<_> {
            sections(&notify, "pk.act", status)
                .into_iter()
                .map(|s| (s.name, s.routes))
                .collect()
        };
        assert_eq!(
            names(Status::Succeeded),
            vec![
                ("on-complete", vec!["a".to_string()]),
                ("on-success", vec!["b".to_string()])
            ]
        );
        assert_eq!(
            names(Status::Timeout),
            vec![
                ("on-complete", vec!["a".to_string()]),
                ("on-failure", vec!["c".to_string()])
            ]
        );
        assert_eq!(names(Status::Canceled).len(), 1);
        let complete = &sections(&notify, "pk.act", Status::Canceled)[0];
        assert_eq!(complete.message, "Action pk.act completed.");
        assert!(sections(
            &json!({"on-complete": {"message": "x"}}),
            "a.b",
            Status::Failed
        )
        .is_empty());
    }

    #[test]
    fn timestamps_are_written_as_stackstorm_writes_them() {
        let ts = crate::time::parse("2026-01-31T12:00:00.5Z").unwrap();
        assert_eq!(iso(&ts), "2026-01-31T12:00:00.500000+00:00");
        assert_eq!(python_str(&ts), "2026-01-31 12:00:00.500000+00:00");
        let whole = crate::time::parse("2026-01-31T12:00:00Z").unwrap();
        assert_eq!(python_str(&whole), "2026-01-31 12:00:00+00:00");
    }
}

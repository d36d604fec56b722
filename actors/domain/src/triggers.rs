//! Built-in trigger types (pack `core`) and trigger references.
//!
//! A *trigger* is a trigger type with parameters (a webhook type with
//! `url: deploy`); rules name the type and the parameters, and a trigger
//! instance fires for one trigger.

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::model::{TriggerTypeDef, SYSTEM_PACK};

/// `core.st2.webhook`.
pub const WEBHOOK: &str = "core.st2.webhook";
/// `core.st2.IntervalTimer`.
pub const INTERVAL_TIMER: &str = "core.st2.IntervalTimer";
/// `core.st2.DateTimer`.
pub const DATE_TIMER: &str = "core.st2.DateTimer";
/// `core.st2.CronTimer`.
pub const CRON_TIMER: &str = "core.st2.CronTimer";
/// Fired when an inquiry starts waiting for a response.
pub const INQUIRY: &str = "core.st2.generic.inquiry";

fn tt(
    name: &str,
    description: &str,
    parameters: Option<Value>,
    payload: Option<Value>,
) -> TriggerTypeDef {
    TriggerTypeDef {
        name: name.into(),
        pack: SYSTEM_PACK.into(),
        description: description.into(),
        payload_schema: payload,
        parameters_schema: parameters,
        tags: vec![],
        metadata_file: String::new(),
    }
}

/// The trigger types every Squall cluster has, with StackStorm's schemas.
pub fn builtin() -> Vec<TriggerTypeDef> {
    let timer_payload = json!({"type": "object", "properties": {
        "executed_at": {"type": "string", "format": "date-time"},
        "schedule": {"type": "object"}}});
    let timezone = json!({"type": "string"});
    let obj = Some(json!({"type": "object"}));
    vec![
        tt(
            "st2.webhook",
            "Trigger type for registering webhooks that can consume arbitrary payload.",
            Some(json!({"type": "object", "properties": {"url": {"type": "string", "required": true}},
                "additionalProperties": false})),
            Some(json!({"type": "object", "properties": {
                "headers": {"type": "object"}, "body": {"anyOf": [{"type": "array"}, {"type": "object"}]}}})),
        ),
        tt(
            "st2.IntervalTimer",
            "Triggers on specified intervals. e.g. every 30s, 1week etc.",
            Some(json!({"type": "object", "properties": {
                "timezone": timezone,
                "unit": {"enum": ["weeks", "days", "hours", "minutes", "seconds"], "required": true},
                "delta": {"type": "integer", "required": true}},
                "additionalProperties": false})),
            Some(timer_payload.clone()),
        ),
        tt(
            "st2.DateTimer",
            "Triggers exactly once when the current time matches the specified time.",
            Some(json!({"type": "object", "properties": {
                "timezone": timezone,
                "date": {"type": "string", "format": "date-time", "required": true}},
                "additionalProperties": false})),
            Some(timer_payload.clone()),
        ),
        tt(
            "st2.CronTimer",
            "Triggers whenever current time matches the specified time constaints like a UNIX cron scheduler.",
            Some(json!({"type": "object", "properties": {
                "timezone": timezone, "year": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                "month": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                "day": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                "week": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                "day_of_week": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                "hour": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                "minute": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                "second": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
                "additionalProperties": false})),
            Some(timer_payload),
        ),
        tt(
            "st2.generic.actiontrigger",
            "Trigger encapsulating the completion of an action execution.",
            None,
            Some(json!({"type": "object", "properties": {
                "execution_id": {}, "status": {}, "start_timestamp": {}, "action_name": {},
                "action_ref": {}, "runner_ref": {}, "parameters": {}, "result": {}}})),
        ),
        tt(
            "st2.generic.notifytrigger",
            "Notification trigger.",
            None,
            Some(json!({"type": "object", "properties": {
                "execution_id": {}, "status": {}, "start_timestamp": {}, "end_timestamp": {},
                "action_ref": {}, "runner_ref": {}, "channel": {}, "route": {}, "message": {}, "data": {}}})),
        ),
        tt(
            "st2.generic.inquiry",
            "Trigger indicating a new \"inquiry\" has entered \"pending\" status",
            None,
            Some(json!({"type": "object", "properties": {
                "id": {"type": "string", "required": true}, "route": {"type": "string", "required": true}}})),
        ),
        tt("st2.action.file_written", "Trigger encapsulating action file being written on disk.", None,
            Some(json!({"type": "object", "properties": {"ref": {}, "file_path": {}, "host_info": {}}}))),
        tt("st2.key_value_pair.create", "Trigger encapsulating datastore item creation.", None, obj.clone()),
        tt("st2.key_value_pair.update", "Trigger encapsulating datastore set action.", None, obj.clone()),
        tt("st2.key_value_pair.value_change", "Trigger encapsulating a change of datastore item value.", None,
            Some(json!({"type": "object", "properties": {"old_object": {}, "new_object": {}}}))),
        tt("st2.key_value_pair.delete", "Trigger encapsulating datastore item deletion.", None, obj.clone()),
        tt("st2.sensor.process_spawn", "Trigger indicating sensor process is started up.", None, obj.clone()),
        tt("st2.sensor.process_exit", "Trigger indicating sensor process is stopped.", None, obj),
    ]
}

/// The reference of a trigger: the type itself when it takes no
/// parameters, else `<type>.<12 hex of the parameters' hash>` (stable for
/// equal parameters, whatever their key order).
pub fn trigger_ref(trigger_type: &str, parameters: &Map<String, Value>) -> String {
    if parameters.is_empty() {
        return trigger_type.to_string();
    }
    let canonical =
        serde_json::to_string(&sorted(&Value::Object(parameters.clone()))).unwrap_or_default();
    let digest = Sha256::digest(canonical.as_bytes());
    format!("{trigger_type}.{}", &crate::hex_prefix(&digest, 6))
}

fn sorted(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<_> = m.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), sorted(&m[k])))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_types_have_stackstorm_refs() {
        let refs: Vec<_> = builtin().iter().map(|t| t.reference()).collect();
        for r in [
            WEBHOOK,
            INTERVAL_TIMER,
            DATE_TIMER,
            CRON_TIMER,
            "core.st2.key_value_pair.create",
        ] {
            assert!(refs.contains(&r.to_string()), "{r}");
        }
    }

    #[test]
    fn trigger_refs_are_stable_and_parameter_sensitive() {
        let a: Map<String, Value> = serde_json::from_value(json!({"url": "x", "b": 1})).unwrap();
        let b: Map<String, Value> = serde_json::from_value(json!({"b": 1, "url": "x"})).unwrap();
        let c: Map<String, Value> = serde_json::from_value(json!({"url": "y"})).unwrap();
        assert_eq!(trigger_ref(WEBHOOK, &a), trigger_ref(WEBHOOK, &b));
        assert_ne!(trigger_ref(WEBHOOK, &a), trigger_ref(WEBHOOK, &c));
        assert_eq!(trigger_ref(WEBHOOK, &Map::new()), WEBHOOK);
    }
}

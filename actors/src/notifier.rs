//! What an execution's end announces and sets off, as StackStorm's
//! notifier does (`st2actions/notifier/notifier.py`).
//!
//! - [`ended`], on every write of an end (`Bus::update_execution`): the
//!   execution's concurrency slots are given back and its
//!   `core.st2.generic.actiontrigger` is published, with an instance id
//!   (its `Nats-Msg-Id`) derived from the execution id, so writing or
//!   re-announcing one end publishes one instance.
//! - [`follow_up`], when the rule partition owning that actiontrigger
//!   instance handles it, before its rules: the action's `notify`
//!   (`core.st2.generic.notifytrigger`, one per route, `message` and `data`
//!   rendered) and its `action.retry` policy (a new execution). The
//!   instance is acknowledged after these are stored, and each has an id
//!   derived from the execution's, so a redelivery repeats nothing and a
//!   crash loses nothing.
//!
//! Trigger instances are not executions: neither trigger emits an
//! actiontrigger of its own. An execution a rule on them starts emits one
//! when it ends, as in StackStorm (a rule matching its own action's
//! actiontrigger loops there too).

use serde_json::{json, Map, Value};
use squall_domain::execution::{ExecutionRecord, Status, TriggerInstance, RECORD_VERSION};
use squall_domain::notify::{self, ACTION_TRIGGER, NOTIFY_TRIGGER};
use squall_domain::params::MASK;
use squall_domain::policies::Enforced;
use squall_domain::template::{KeyValueLookup, Renderer};
use squall_domain::{ids, runner_types};

use crate::bus::Bus;
use crate::catalog::Catalog;
use crate::error::{bus_err, EngineError};

/// Gives back `record`'s concurrency slots when its status frees them,
/// and publishes its actiontrigger when it has ended and something reacts
/// to it ([`EndListeners`](squall_domain::notify::EndListeners)). Idempotent.
pub async fn ended(bus: &Bus, record: &ExecutionRecord) -> Result<(), EngineError> {
    if !record.slots.is_empty() && crate::policies::releases_at(record.status) {
        crate::policies::release(bus, &record.id, &record.slots).await?;
    }
    if record.status.is_completed() && bus.wants_end(record) {
        bus.publish_trigger(&action_trigger(record)).await?;
    }
    Ok(())
}

/// The trace tag of the cause of `record`, for the instances it emits.
fn trace_tag(record: &ExecutionRecord) -> Option<String> {
    record
        .context
        .get("trace_context")
        .and_then(|t| t.get("trace_tag"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn instance(
    record: &ExecutionRecord,
    trigger: &str,
    id: String,
    payload: Value,
) -> TriggerInstance {
    TriggerInstance {
        v: RECORD_VERSION,
        id,
        trigger: trigger.into(),
        trigger_type: trigger.into(),
        trigger_parameters: Map::new(),
        payload,
        // The end, not the time of publishing: a repeat is the same instance.
        occurrence_time: record.end_timestamp.unwrap_or(record.start_timestamp),
        trace_tag: trace_tag(record),
    }
}

/// The actiontrigger instance of an ended execution.
pub fn action_trigger(record: &ExecutionRecord) -> TriggerInstance {
    let at = record.end_timestamp.unwrap_or(record.start_timestamp);
    let payload = notify::action_trigger_payload(record, masked_parameters(record));
    let id = ids::derived(&at, &[&record.id, ACTION_TRIGGER]);
    instance(record, ACTION_TRIGGER, id, payload)
}

/// `record`'s parameters with the runner's and the action's secret ones
/// masked, as the API shows them.
fn masked_parameters(record: &ExecutionRecord) -> Map<String, Value> {
    let runner_secret = |name: &str| {
        runner_types::lookup(&record.runner.name)
            .and_then(|r| r.runner_parameters.get(name))
            .is_some_and(|spec| spec.secret)
    };
    let action_secret = |name: &str| {
        record
            .action
            .parameters
            .get(name)
            .and_then(|spec| spec.get("secret"))
            .and_then(Value::as_bool)
            == Some(true)
    };
    record
        .parameters
        .iter()
        .map(|(name, value)| {
            let shown = if runner_secret(name) || action_secret(name) {
                json!(MASK)
            } else {
                value.clone()
            };
            (name.clone(), shown)
        })
        .collect()
}

/// Applies the execution's `notify` (its action's, or the one it was run
/// with) and its action's retry policy to the execution an actiontrigger
/// instance announces. The record is read for each: an actiontrigger is
/// published only when something reacts to it ([`EndListeners`](squall_domain::notify::EndListeners)).
pub async fn follow_up(
    bus: &Bus,
    renderer: &Renderer,
    catalog: &Catalog,
    announced: &TriggerInstance,
    kv: &crate::keys::KeyCache,
) -> Result<(), EngineError> {
    let payload = &announced.payload;
    let (Some(id), Some(action_ref), Some(status)) = (
        payload["execution_id"].as_str(),
        payload["action_ref"].as_str(),
        payload["status"].as_str().and_then(Status::parse),
    ) else {
        return Ok(());
    };
    let retry = catalog
        .policies_for(action_ref)
        .iter()
        .find(|(_, e)| matches!(e, Enforced::Retry { .. }))
        .filter(|_| matches!(status, Status::Failed | Status::Timeout));
    // Records are never deleted: one not found is on a server that has not
    // caught up yet, so the instance comes back later.
    let Some((record, _)) = bus.execution(id).await? else {
        return Err(bus_err(
            "read an ended execution",
            format!("the record of {id} is not visible yet"),
        ));
    };
    if let Some(spec) = &record.notify {
        // Secrets its templates open are audited for the execution.
        let who = crate::audit::decrypt::For::execution(&record, "notify");
        let instances =
            crate::audit::decrypt::audited(kv, who, || notifications(renderer, &record, spec, kv));
        for instance in instances {
            bus.publish_trigger(&instance).await?;
        }
    }
    if let Some((
        policy,
        Enforced::Retry {
            on,
            max_retry_count,
            delay,
        },
    )) = retry
    {
        if let Some(again) =
            crate::policies::retry_of(&record, policy, *on, *max_retry_count, *delay)
        {
            tracing::info!(execution = %record.id, retry = %again.id, policy = %policy,
                status = %record.status, "retrying the execution as its policy asks");
            crate::executions::submit(bus, again).await?;
        }
    }
    Ok(())
}

/// The notifytrigger instances of `record`'s end: one per route of each
/// section that fires. A template that fails to render is sent as written
/// (StackStorm logs it and goes on).
fn notifications(
    renderer: &Renderer,
    record: &ExecutionRecord,
    spec: &Value,
    kv: &dyn KeyValueLookup,
) -> Vec<TriggerInstance> {
    let vars = notify::template_context(record, masked_parameters(record));
    let at = record.end_timestamp.unwrap_or(record.start_timestamp);
    let mut out = Vec::new();
    for section in notify::sections(spec, &record.action.action_ref, record.status) {
        let message = renderer
            .render_str(&section.message, &vars, kv)
            .unwrap_or_else(|e| {
                tracing::warn!(execution = %record.id, error = %e, "notify message did not render");
                section.message.clone()
            });
        let data = match renderer.render_value(&Value::Object(section.data.clone()), &vars, kv) {
            Ok(Value::Object(data)) => data,
            Ok(_) => section.data.clone(),
            Err(e) => {
                tracing::warn!(execution = %record.id, error = %e, "notify data did not render");
                section.data.clone()
            }
        };
        for route in &section.routes {
            let payload = notify::notify_payload(record, &message, data.clone(), route);
            let id = ids::derived(&at, &[&record.id, NOTIFY_TRIGGER, section.name, route]);
            out.push(instance(record, NOTIFY_TRIGGER, id, payload));
        }
    }
    out
}

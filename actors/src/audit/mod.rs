//! The audit trail: one event per state change and per security-relevant
//! act, on the `AUDIT` JetStream stream (which refuses delete and purge),
//! exported to Splunk HEC and syslog by durable consumers.
//!
//! - [`AuditEvent`]: the record (schema 1), with a deterministic id that is
//!   its `Nats-Msg-Id`, so a retried publish is stored once.
//! - [`Audit`]: the node's emitter. [`Audit::emit`] never waits: it queues
//!   the event for a task that publishes with many acks in flight and
//!   retries with the same id until the stream has it.
//! - [`config`]: the `audit` section of node.yaml.
//! - [`decrypt`]: audits the secrets the engine opens in templates and
//!   pack configs.
//! - [`export`]: the exporter loop (one durable consumer per destination),
//!   with its sinks [`hec`] and [`syslog`] (TCP, TLS, or [`relp`]).

pub mod config;
pub mod decrypt;
pub mod export;
pub mod hec;
pub mod relp;
pub mod syslog;

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use serde_json::{Map, Value};
use squall_domain::execution::{
    EnforcementStatus, ExecutionRecord, RuleEnforcement, Status, TriggerInstance,
};
use squall_domain::time;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::EngineError;
use crate::timing::AUDIT_DRAIN_GRACE;

use crate::audit_event::Emitter;
pub use crate::audit_event::{Actor, Audit, AuditEvent, Object, Outcome, SCHEMA};
pub use config::AuditConfig;

/// The stream of audit events.
pub const AUDIT_STREAM: &str = "AUDIT";
/// Events an exporter's receiver refused for good, with the reason.
pub const DEAD_LETTER_STREAM: &str = "AUDIT_DLQ";
/// What replaces a secret value in an event's data.
pub const MASKED: &str = "********";
/// Events waiting to be published on one node; beyond, an event is
/// dropped and counted (`squall_audit_dropped_total`), never blocking the
/// caller.
pub const QUEUE_CAPACITY: usize = 100_000;
/// Publishes awaiting their stream ack at once.
const MAX_IN_FLIGHT: usize = 512;

/// Subject of an event: `squall.audit.<action>` (the action's dots make
/// the levels: `squall.audit.execution.finished`).
pub fn subject(action: &str) -> String {
    format!("squall.audit.{action}")
}

/// Names whose values are secrets wherever they appear in an event's data
/// (as StackStorm's `mask_secrets_blacklist` defaults, plus ours).
const SECRET_NAMES: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "auth_token",
    "api_key",
    "st2-api-key",
    "x-auth-token",
    "private_key",
    "sudo_password",
    "authorization",
    "value",
];

/// Masks, at any depth, the values of keys that name secrets.
pub fn mask_secrets(data: &mut Value) {
    match data {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                let key = k.to_ascii_lowercase();
                if SECRET_NAMES.iter().any(|s| key == *s || key.ends_with(s)) && !v.is_null() {
                    *v = Value::String(MASKED.into());
                } else {
                    mask_secrets(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(mask_secrets),
        _ => {}
    }
}

/// The W3C trace id of work caused by `cause_id` (the trace part of
/// [`crate::bus::traceparent`]).
pub fn trace_id_of(cause_id: &str) -> String {
    crate::bus::traceparent(cause_id)
        .split('-')
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

/// `(trace id, trace tag)` of an execution, from its `trace_context`.
fn execution_trace(record: &ExecutionRecord) -> (String, Option<String>) {
    let tc = record.context.get("trace_context");
    let cause = tc
        .and_then(|t| t.get("id_"))
        .and_then(Value::as_str)
        .unwrap_or(&record.id);
    let tag = tc
        .and_then(|t| t.get("trace_tag"))
        .and_then(Value::as_str)
        .map(str::to_string);
    (trace_id_of(cause), tag)
}

/// `execution.requested`, for a record just created.
pub fn execution_requested(record: &ExecutionRecord) -> AuditEvent {
    execution_event(record, "requested", "requested".into())
}

/// The event a stored change of an execution's status stands for, if any:
/// started, finished, canceled, paused, resumed, pending (an inquiry).
pub fn execution_changed(record: &ExecutionRecord) -> Option<AuditEvent> {
    let verb = match record.status {
        Status::Running
            if record
                .log
                .iter()
                .rev()
                .nth(1)
                .is_some_and(|e| matches!(e.status, Status::Paused | Status::Resuming)) =>
        {
            "resumed"
        }
        Status::Running => "started",
        Status::Canceled => "canceled",
        s if s.is_completed() => "finished",
        Status::Paused => "paused",
        Status::Pending => "pending",
        _ => return None,
    };
    // A status can be reached again (a rerun after a lost runner, a second
    // pause): the log's length tells those writes apart.
    let discriminator = format!("{verb}.{}", record.log.len());
    Some(execution_event(record, verb, discriminator))
}

fn execution_event(record: &ExecutionRecord, verb: &str, discriminator: String) -> AuditEvent {
    let is_workflow = matches!(
        record.runner.name.as_str(),
        "orquesta" | "action-chain" | "mistral-v2"
    );
    let kind = if is_workflow && matches!(verb, "paused" | "resumed") {
        "workflow"
    } else {
        "execution"
    };
    let (trace_id, trace_tag) = execution_trace(record);
    let user = record
        .context
        .get("user")
        .and_then(Value::as_str)
        .map(str::to_string);
    let method = if record.rule.is_some() {
        "rule"
    } else if record.parent.is_some() {
        "workflow"
    } else {
        "api"
    };
    let mut event = AuditEvent::new(
        format!("execution:{}:{discriminator}", record.id),
        &format!("{kind}.{verb}"),
        Object {
            kind: "execution".into(),
            id: Some(record.id.clone()),
            reference: Some(record.action.action_ref.clone()),
        },
        record.status.as_str(),
    )
    .by(Actor {
        user,
        method: Some(method.into()),
        remote_addr: None,
    })
    .with_data(serde_json::json!({
        "runner": record.runner.name,
        "node": record.node,
        "parent": record.parent,
        "rule": record.rule.as_ref().map(|r| &r.rule_ref),
        "trigger_instance": record.trigger_instance.as_ref().map(|t| &t.id),
    }));
    event.trace_id = Some(trace_id);
    event.trace_tag = trace_tag;
    event
}

/// `trigger.received`, for an instance just stored.
pub fn trigger_received(instance: &TriggerInstance) -> AuditEvent {
    let mut event = AuditEvent::new(
        format!("trigger_instance:{}", instance.id),
        "trigger.received",
        Object {
            kind: "trigger_instance".into(),
            id: Some(instance.id.clone()),
            reference: Some(instance.trigger.clone()),
        },
        "received",
    )
    .by(Actor {
        method: Some(instance.trigger_type.clone()),
        ..Actor::default()
    })
    .with_data(serde_json::json!({"trigger_type": instance.trigger_type}));
    event.trace_id = Some(trace_id_of(&instance.id));
    event.trace_tag = instance.trace_tag.clone();
    event
}

/// `rule.enforced` or `rule.enforce_failed`, for an enforcement stored.
pub fn rule_enforced(enforcement: &RuleEnforcement) -> AuditEvent {
    let (action, status) = match enforcement.status {
        EnforcementStatus::Succeeded => ("rule.enforced", "success"),
        EnforcementStatus::Failed => ("rule.enforce_failed", "failure"),
    };
    let mut event = AuditEvent::new(
        format!("rule_enforcement:{}", enforcement.id),
        action,
        Object {
            kind: "rule_enforcement".into(),
            id: Some(enforcement.id.clone()),
            reference: Some(enforcement.rule.rule_ref.clone()),
        },
        status,
    )
    .by(Actor {
        method: Some("rule".into()),
        ..Actor::default()
    })
    .because(enforcement.failure_reason.clone())
    .with_data(serde_json::json!({
        "trigger_instance": enforcement.trigger_instance_id,
        "execution": enforcement.execution_id,
    }));
    event.trace_id = Some(trace_id_of(&enforcement.trigger_instance_id));
    event
}

/// The `AUDIT` stream: limits retention by age and size, no delete, no
/// purge, duplicates dropped by `Nats-Msg-Id` within the window.
pub fn stream_config(cfg: &AuditConfig, replicas: usize) -> stream::Config {
    stream::Config {
        name: AUDIT_STREAM.into(),
        description: Some("Audit events: who did what. Delete and purge are denied.".into()),
        subjects: vec!["squall.audit.>".into()],
        retention: stream::RetentionPolicy::Limits,
        max_age: cfg.retention(),
        max_bytes: cfg.max_bytes,
        discard: stream::DiscardPolicy::Old,
        deny_delete: true,
        deny_purge: true,
        duplicate_window: crate::timing::DUPLICATE_WINDOW,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// The dead-letter stream: the events a receiver refused for good.
pub fn dead_letter_config(cfg: &AuditConfig, replicas: usize) -> stream::Config {
    stream::Config {
        name: DEAD_LETTER_STREAM.into(),
        description: Some("Audit events a receiver refused for good, with why.".into()),
        subjects: vec!["squall.audit_dlq.>".into()],
        retention: stream::RetentionPolicy::Limits,
        max_age: cfg.retention(),
        deny_delete: true,
        deny_purge: true,
        duplicate_window: crate::timing::DUPLICATE_WINDOW,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// Both audit streams, for the node's layout.
pub fn streams(cfg: &AuditConfig, replicas: usize) -> Vec<stream::Config> {
    vec![
        stream_config(cfg, replicas),
        dead_letter_config(cfg, replicas),
    ]
}

impl Audit {
    /// Starts publishing for node `node`: returns the publishing task,
    /// which ends once `stop` is cancelled and what was queued is
    /// published (or [`DRAIN_GRACE`] has passed).
    pub fn start(
        &self,
        js: jetstream::Context,
        node: &str,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let _ = self.0.set(Emitter {
            node: node.to_string(),
            tx,
        });
        tokio::spawn(publish_loop(js, rx, stop))
    }

    /// Records `event` (its data masked, node and time filled in) without
    /// waiting: the publish happens on the emitter's task.
    pub fn emit(&self, mut event: AuditEvent) {
        let Some(emitter) = self.0.get() else { return };
        if event.node.is_empty() {
            event.node.clone_from(&emitter.node);
        }
        mask_secrets(&mut event.data);
        if let Err(e) = emitter.tx.try_send(event) {
            crate::metrics::audit_dropped();
            let event = match e {
                mpsc::error::TrySendError::Full(ev) | mpsc::error::TrySendError::Closed(ev) => ev,
            };
            tracing::error!(audit_id = %event.audit_id, action = %event.action,
                "audit event dropped: the publish queue is full or closed");
        }
    }
}

async fn publish_loop(
    js: jetstream::Context,
    mut rx: mpsc::Receiver<AuditEvent>,
    stop: CancellationToken,
) {
    let mut in_flight = FuturesUnordered::new();
    let mut draining: Option<tokio::time::Instant> = None;
    loop {
        if draining.is_some_and(|d| tokio::time::Instant::now() > d) {
            if !in_flight.is_empty() || !rx.is_empty() {
                tracing::error!(
                    queued = rx.len(),
                    in_flight = in_flight.len(),
                    "node stopping: audit events not published in time"
                );
            }
            return;
        }
        let room = in_flight.len() < MAX_IN_FLIGHT;
        tokio::select! {
            () = stop.cancelled(), if draining.is_none() => {
                draining = Some(tokio::time::Instant::now() + AUDIT_DRAIN_GRACE);
                rx.close();
            }
            event = rx.recv(), if room => match event {
                Some(event) => in_flight.push(publish_one(js.clone(), event, 0)),
                None if in_flight.is_empty() => return,
                None => {
                    if draining.is_none() {
                        draining = Some(tokio::time::Instant::now() + AUDIT_DRAIN_GRACE);
                    }
                }
            },
            Some(failed) = in_flight.next(), if !in_flight.is_empty() => {
                if let Some((event, attempt)) = failed {
                    in_flight.push(publish_one(js.clone(), event, attempt + 1));
                }
            }
            () = tokio::time::sleep(Duration::from_millis(100)), if draining.is_some() => {}
        }
    }
}

/// Publishes one event; `Some((event, attempt))` when it must be tried
/// again (after a back-off, same `Nats-Msg-Id`).
async fn publish_one(
    js: jetstream::Context,
    event: AuditEvent,
    attempt: u32,
) -> Option<(AuditEvent, u32)> {
    if attempt > 0 {
        let backoff = Duration::from_millis(100 * 2u64.pow(attempt.min(6)));
        tokio::time::sleep(backoff).await;
    }
    let payload = match crate::bus::to_bytes(&event) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(audit_id = %event.audit_id, error = %e, "audit event not serialisable");
            return None;
        }
    };
    let msg = jetstream::message::PublishMessage::build()
        .payload(payload)
        .message_id(&event.audit_id);
    let sent = match js.send_publish(subject(&event.action), msg).await {
        Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match sent {
        Ok(()) => {
            crate::metrics::audit_published();
            None
        }
        Err(error) => {
            if attempt.is_multiple_of(10) {
                tracing::warn!(audit_id = %event.audit_id, attempt, %error,
                    "audit publish failed; retrying with the same id");
            }
            Some((event, attempt))
        }
    }
}

/// An API act: `action` on `object` by `actor`, with a fresh id (one
/// request, one event; the emitter's retries keep that id).
pub fn api_act(
    action: &str,
    object: Object,
    actor: Actor,
    outcome: &str,
    reason: Option<String>,
    data: Map<String, Value>,
) -> AuditEvent {
    let now = time::now();
    AuditEvent::new(
        format!("api:{}", squall_domain::ids::fresh(&now)),
        action,
        object,
        outcome,
    )
    .by(actor)
    .because(reason)
    .with_data(Value::Object(data))
}

/// The exporters this node runs, by destination name.
#[derive(Debug, Default)]
pub struct Exporters {
    pub states: std::collections::BTreeMap<String, export::StateHandle>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Exporters {
    /// Starts one exporter per configured destination; each runs until
    /// `stop` (or until a fatal error, which it logs and shows in its
    /// state).
    pub fn start(js: &jetstream::Context, cfg: &AuditConfig, stop: &CancellationToken) -> Self {
        let mut out = Exporters::default();
        for dest in &cfg.exporters {
            let name = dest.name().to_string();
            let state = export::StateHandle::default();
            out.states.insert(name.clone(), state.clone());
            out.tasks.push(tokio::spawn(export::watch_lag(
                js.clone(),
                name.clone(),
                stop.clone(),
            )));
            let (js, stop, dest) = (js.clone(), stop.clone(), dest.clone());
            out.tasks.push(tokio::spawn(async move {
                let ran = match dest {
                    config::ExporterConfig::SplunkHec(h) => {
                        let settings = export::ExportSettings {
                            name: name.clone(),
                            batch_size: h.batch_size,
                            ack_wait: Duration::from_secs(
                                h.ack_timeout_secs + 2 * h.request_timeout_secs + 30,
                            ),
                        };
                        let in_flight = h.in_flight;
                        match hec::HecSink::new(h) {
                            Ok(sink) => {
                                let sinks = vec![sink; in_flight];
                                export::run(js, settings, sinks, state, stop).await
                            }
                            Err(e) => Err(EngineError::Config(format!(
                                "audit destination {name}: {e}"
                            ))),
                        }
                    }
                    config::ExporterConfig::Syslog(s) => {
                        let settings = export::ExportSettings {
                            name: name.clone(),
                            batch_size: s.batch_size,
                            ack_wait: Duration::from_secs(60),
                        };
                        let sink = syslog::SyslogSink::new(s);
                        export::run(js, settings, vec![sink], state, stop).await
                    }
                };
                if let Err(e) = ran {
                    tracing::error!(destination = %name, error = %e, "audit exporter ended");
                }
            }));
        }
        out
    }

    /// Waits for every exporter to end (after its `stop`).
    pub async fn join(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_at_any_depth() {
        let mut data = serde_json::json!({
            "name": "k", "value": "s3cret",
            "nested": [{"password": "p", "ok": 1, "db_password": "x"}],
        });
        mask_secrets(&mut data);
        assert_eq!(data["value"], MASKED);
        assert_eq!(data["nested"][0]["password"], MASKED);
        assert_eq!(data["nested"][0]["db_password"], MASKED);
        assert_eq!(data["nested"][0]["ok"], 1);
        assert_eq!(data["name"], "k");
    }

    #[test]
    fn audit_stream_denies_delete_and_purge() {
        let cfg = AuditConfig::default();
        let s = stream_config(&cfg, 3);
        assert!(s.deny_delete && s.deny_purge);
        assert_eq!(s.max_age, Duration::from_secs(30 * 24 * 3600));
        assert_eq!(s.num_replicas, 3);
        let d = dead_letter_config(&cfg, 1);
        assert!(d.deny_delete && d.deny_purge);
    }

    #[test]
    fn subjects_follow_the_action() {
        assert_eq!(
            subject("execution.finished"),
            "squall.audit.execution.finished"
        );
        assert_eq!(trace_id_of("6740f0aa0123456789abcdef").len(), 32);
    }
}

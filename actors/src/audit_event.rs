//! The audit trail's record ([`AuditEvent`], schema [`SCHEMA`]) and the
//! handle of the node's emitter ([`Audit`]): what the bus carries, so every
//! write can record its event without waiting. Starting the emitter and
//! publishing its queue belong to [`crate::audit`], above the bus; this
//! module depends on no other of the engine, so the bus stays below both.

use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use squall_domain::time::{self, Timestamp};
use tokio::sync::mpsc;

/// Version of [`AuditEvent`]'s layout.
pub const SCHEMA: u32 = 1;

/// Who did it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Actor {
    /// The user (StackStorm's `context.user`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// How: `token`, `api_key`, `password`, `rule`, `webhook`, `system`...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The client's address (`X-Forwarded-For` first), for API acts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_addr: Option<String>,
}

/// What it was done to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Object {
    /// `execution`, `trigger_instance`, `rule_enforcement`, `key`, `user`,
    /// `api_key`, `action`, `rule`, `pack`, `inquiry`, `token`...
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// A reference (`pack.name`) or name, when the object has one.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

/// How it went.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// `success`, `failure`, `denied`, or the object's new status.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One audit event as stored on the stream and exported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub schema: u32,
    /// Deterministic: the same act always gets the same id (the stream's
    /// `Nats-Msg-Id`, and the exporters' `audit_id`).
    pub audit_id: String,
    #[serde(with = "squall_domain::time::serde_ts")]
    pub time: Timestamp,
    /// The node that recorded it.
    pub node: String,
    /// `<object kind>.<verb>`: `execution.finished`, `auth.login_failed`...
    pub action: String,
    pub actor: Actor,
    pub object: Object,
    pub outcome: Outcome,
    /// The W3C trace id of the work (as in the `traceparent` headers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// StackStorm's trace tag, when the cause had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_tag: Option<String>,
    /// Details, secrets masked ([`mask_secrets`]).
    #[serde(default)]
    pub data: Value,
}

impl AuditEvent {
    /// An event of `action` on `object` with its deterministic `audit_id`;
    /// the node and time are filled in by [`Audit::emit`] when left empty.
    pub fn new(audit_id: impl Into<String>, action: &str, object: Object, status: &str) -> Self {
        AuditEvent {
            schema: SCHEMA,
            audit_id: audit_id.into(),
            time: time::now(),
            node: String::new(),
            action: action.to_string(),
            actor: Actor::default(),
            object,
            outcome: Outcome {
                status: status.to_string(),
                reason: None,
            },
            trace_id: None,
            trace_tag: None,
            data: Value::Null,
        }
    }

    /// With `actor`.
    pub fn by(mut self, actor: Actor) -> Self {
        self.actor = actor;
        self
    }

    /// With a reason for the outcome.
    pub fn because(mut self, reason: Option<String>) -> Self {
        self.outcome.reason = reason;
        self
    }

    /// With `data` (masked when emitted).
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = data;
        self
    }
}

/// A node's audit emitter, shared through the [`crate::bus::Bus`]. Until
/// `Audit::start` ([`crate::audit`]) it records nothing (a bus opened by a tool or a test).
#[derive(Clone, Default)]
pub struct Audit(pub(crate) Arc<OnceLock<Emitter>>);

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("started", &self.0.get().is_some())
            .finish()
    }
}

/// What a started [`Audit`] holds: its node, and the queue its publishing
/// task reads ([`crate::audit`]).
pub(crate) struct Emitter {
    pub(crate) node: String,
    pub(crate) tx: mpsc::Sender<AuditEvent>,
}

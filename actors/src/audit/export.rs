//! The exporter loop shared by every destination: one durable pull
//! consumer (`audit-<name>`) on the `AUDIT` stream, a batch fetched, handed
//! to the destination's [`Sink`], and each event acknowledged only once
//! the sink reports the receiver confirmed it. A refused event goes to
//! `AUDIT_DLQ` first (its publish awaited), then is acknowledged here. A
//! failure to retry keeps the batch and tries again with back-off; a fatal
//! one (bad credentials) stops the exporter and acknowledges nothing.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, AckKind};
use futures::StreamExt;
use serde::Serialize;
use squall_domain::time::{self, Timestamp};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use super::{AuditEvent, AUDIT_STREAM, DEAD_LETTER_STREAM};
use crate::error::{bus_err, EngineError};

/// One event of a batch, with its stream sequence.
#[derive(Debug, Clone)]
pub struct Pending {
    pub seq: u64,
    pub event: AuditEvent,
}

/// What became of one event of a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Fate {
    /// The receiver confirmed it.
    Delivered,
    /// The receiver refused it for good, for this reason.
    Rejected(String),
    /// Not delivered by this attempt (the part of a batch after a busy
    /// answer): sent again after the back-off.
    Again(SinkError),
}

/// Why a batch was not delivered.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum SinkError {
    /// Worth trying again (busy, 5xx, network); `after` when the receiver
    /// said when.
    #[error("{reason}")]
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// Needs a person (bad credentials, an index that does not exist):
    /// the exporter stops.
    #[error("{0}")]
    Fatal(String),
}

/// A destination: delivers a batch (in stream order) and reports each
/// event's fate, or why none was delivered.
pub trait Sink: Send {
    fn deliver(
        &mut self,
        batch: &[Pending],
    ) -> impl Future<Output = Result<Vec<Fate>, SinkError>> + Send;
}

/// The durable consumer's name for destination `name`.
pub fn consumer_name(name: &str) -> String {
    format!("audit-{name}")
}

/// An exporter's state as this node sees it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ExporterState {
    /// `running`, `retrying` or `stopped`.
    pub state: String,
    /// The last error, if the exporter is retrying or stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub delivered: u64,
    pub dead_lettered: u64,
}

/// Shared view of an exporter's state.
pub type StateHandle = Arc<Mutex<ExporterState>>;

fn set_state(handle: &StateHandle, f: impl FnOnce(&mut ExporterState)) {
    f(&mut handle
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner));
}

/// Lag of one destination, read from its durable consumer.
#[derive(Debug, Clone, Serialize)]
pub struct Lag {
    pub destination: String,
    /// Events stored but not confirmed (pending + in flight).
    pub lag: u64,
    /// Age in seconds of the oldest event not confirmed.
    pub oldest_unexported_age_secs: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_unexported: Option<String>,
}

/// Reads destination `name`'s lag; `None` when its consumer does not exist
/// yet (no node has started that exporter).
pub async fn lag(js: &jetstream::Context, name: &str) -> Result<Option<Lag>, EngineError> {
    let stream = js
        .get_stream(AUDIT_STREAM)
        .await
        .map_err(|e| bus_err("open stream AUDIT", e))?;
    let info = match stream.consumer_info(consumer_name(name)).await {
        Ok(i) => i,
        Err(e) if e.to_string().contains("not found") => return Ok(None),
        Err(e) => return Err(bus_err("audit consumer info", e)),
    };
    let lag = info.num_pending + info.num_ack_pending as u64;
    let mut oldest = None;
    if lag > 0 {
        // The first unconfirmed event follows the ack floor (sequences the
        // stream no longer holds, past retention, are skipped).
        let mut seq = info.ack_floor.stream_sequence + 1;
        let last = info.delivered.stream_sequence.max(seq) + info.num_pending;
        while seq <= last {
            match stream.get_raw_message(seq).await {
                Ok(m) => {
                    oldest = Some(m.time);
                    break;
                }
                Err(_) => seq += 1,
            }
        }
    }
    let age = oldest
        .map(|t| {
            let t: Timestamp = chrono::DateTime::from_timestamp(t.unix_timestamp(), t.nanosecond())
                .unwrap_or_default();
            (time::now() - t).to_std().unwrap_or_default()
        })
        .unwrap_or_default();
    Ok(Some(Lag {
        destination: name.to_string(),
        lag,
        oldest_unexported_age_secs: age.as_secs_f64(),
        oldest_unexported: oldest.map(|t| {
            time::format(
                &chrono::DateTime::from_timestamp(t.unix_timestamp(), t.nanosecond())
                    .unwrap_or_default(),
            )
        }),
    }))
}

/// Settings of one exporter run.
#[derive(Debug, Clone)]
pub struct ExportSettings {
    pub name: String,
    pub batch_size: usize,
    /// How long one delivery may take before the events come back
    /// (JetStream's ack wait; progress acks extend it between attempts).
    pub ack_wait: Duration,
}

/// Runs destination `settings.name` until `stop` with one delivery loop
/// per sink in `sinks` (each fetches its own batches from the one durable
/// consumer, so that many batches are in flight): returns `Err` with the
/// reason when a sink failed fatally (nothing of that batch acked; the
/// other loops end with it, their batches unacked and so delivered again
/// later).
pub async fn run<S: Sink>(
    js: jetstream::Context,
    settings: ExportSettings,
    sinks: Vec<S>,
    state: StateHandle,
    stop: CancellationToken,
) -> Result<(), EngineError> {
    let name = settings.name.clone();
    let stream = js
        .get_stream(AUDIT_STREAM)
        .await
        .map_err(|e| bus_err("open stream AUDIT", e))?;
    let durable = consumer_name(&name);
    let in_flight = sinks.len().max(1);
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            &durable,
            consumer::pull::Config {
                durable_name: Some(durable.clone()),
                description: Some(format!("Audit export to {name}")),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: settings.ack_wait,
                max_deliver: -1,
                max_ack_pending: (settings.batch_size * in_flight.max(2) * 2) as i64,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| bus_err(&format!("create consumer {durable}"), e))?;
    set_state(&state, |s| s.state = "running".into());
    crate::metrics::audit_destination_started(&name);
    crate::metrics::audit_exporter_stopped(&name, false);
    let loops = sinks
        .into_iter()
        .map(|sink| deliver_loop(&js, &settings, &consumer, sink, &state, &stop));
    futures::future::try_join_all(loops).await.map(|_| ())
}

/// Refreshes destination `name`'s lag and oldest unconfirmed age (the
/// `squall_audit_export_*` gauges) every two seconds until `stop`,
/// whatever its delivery loops are doing (a receiver that is down is when
/// the lag matters most).
pub async fn watch_lag(js: jetstream::Context, name: String, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        if let Ok(Some(l)) = lag(&js, &name).await {
            crate::metrics::audit_export(
                &name,
                l.lag,
                Duration::from_secs_f64(l.oldest_unexported_age_secs),
            );
        }
    }
}

/// One delivery loop: fetch a batch, deliver it, ack what was confirmed,
/// retry the rest with back-off.
async fn deliver_loop<S: Sink>(
    js: &jetstream::Context,
    settings: &ExportSettings,
    consumer: &consumer::PullConsumer,
    mut sink: S,
    state: &StateHandle,
    stop: &CancellationToken,
) -> Result<(), EngineError> {
    let js = js.clone();
    let name = settings.name.clone();
    let state = state.clone();
    while !stop.is_cancelled() {
        let fetched = consumer
            .fetch()
            .max_messages(settings.batch_size)
            .expires(Duration::from_secs(1))
            .messages()
            .await;
        let mut messages = match fetched {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(destination = %name, error = %e, "audit fetch failed");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let mut batch = Vec::new();
        let mut msgs = Vec::new();
        while let Some(m) = messages.next().await {
            let Ok(m) = m else { break };
            let seq = m.info().map(|i| i.stream_sequence).unwrap_or_default();
            match serde_json::from_slice::<AuditEvent>(&m.payload) {
                Ok(event) => {
                    batch.push(Pending { seq, event });
                    msgs.push(m);
                }
                Err(e) => {
                    // Not an event anyone can read: keep it aside, whole.
                    let reason = format!("unreadable audit event: {e}");
                    dead_letter_raw(&js, &name, seq, m.payload.clone(), &reason).await?;
                    crate::metrics::audit_dead_lettered(&name);
                    let _ = m.ack().await;
                }
            }
        }
        if batch.is_empty() {
            continue;
        }
        let mut attempt = 0u32;
        let mut delivered = 0;
        let mut rejected = 0;
        while !batch.is_empty() {
            let fates = match sink.deliver(&batch).await {
                Ok(fates) => fates,
                Err(SinkError::Fatal(reason)) => {
                    tracing::error!(destination = %name, error = %reason,
                        "audit exporter stopped: fix the destination's settings and restart the node; nothing of the batch was acknowledged");
                    set_state(&state, |s| {
                        s.state = "stopped".into();
                        s.error = Some(reason.clone());
                    });
                    crate::metrics::audit_exporter_stopped(&name, true);
                    return Err(EngineError::Config(format!(
                        "audit destination {name}: {reason}"
                    )));
                }
                Err(again) => vec![Fate::Again(again); batch.len()],
            };
            let mut retry = None;
            let before = delivered + rejected;
            let mut left = Vec::new();
            let mut left_msgs = Vec::new();
            for ((m, p), fate) in msgs.into_iter().zip(batch).zip(fates) {
                match fate {
                    Fate::Delivered => {
                        delivered += 1;
                        m.ack().await.map_err(|e| bus_err("ack audit event", e))?;
                    }
                    Fate::Rejected(reason) => {
                        dead_letter(&js, &name, &p, &reason).await?;
                        crate::metrics::audit_dead_lettered(&name);
                        tracing::error!(destination = %name, audit_id = %p.event.audit_id, %reason,
                            "audit event refused for good; kept in AUDIT_DLQ");
                        rejected += 1;
                        m.ack().await.map_err(|e| bus_err("ack audit event", e))?;
                    }
                    Fate::Again(e) => {
                        retry.get_or_insert(e);
                        left.push(p);
                        left_msgs.push(m);
                    }
                }
            }
            batch = left;
            msgs = left_msgs;
            let Some(again) = retry else { break };
            let (reason, after) = match again {
                SinkError::Retry { reason, after } => (reason, after),
                SinkError::Fatal(reason) => (reason, None),
            };
            // Back-off grows while nothing gets through, and starts over
            // once something did.
            attempt = if delivered + rejected > before {
                1
            } else {
                attempt + 1
            };
            let backoff = after.unwrap_or_else(|| {
                Duration::from_millis(100 * 2u64.pow(attempt.min(7))).min(Duration::from_secs(10))
            });
            if attempt == 1 || attempt.is_multiple_of(10) {
                tracing::warn!(destination = %name, attempt, error = %reason,
                    retry_in = ?backoff, "audit delivery failed; retrying");
            }
            set_state(&state, |s| {
                s.state = "retrying".into();
                s.error = Some(reason);
            });
            for m in &msgs {
                let _ = m.ack_with(AckKind::Progress).await;
            }
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(backoff) => {}
            }
        }
        set_state(&state, |s| {
            s.state = "running".into();
            s.error = None;
            s.delivered += delivered;
            s.dead_lettered += rejected;
        });
    }
    Ok(())
}

/// Subject of a dead-lettered event of destination `name`.
pub fn dead_letter_subject(name: &str) -> String {
    format!("squall.audit_dlq.{name}")
}

async fn dead_letter(
    js: &jetstream::Context,
    name: &str,
    p: &Pending,
    reason: &str,
) -> Result<(), EngineError> {
    let body = serde_json::json!({
        "destination": name,
        "reason": reason,
        "stream_seq": p.seq,
        "event": p.event,
    });
    let payload = crate::bus::to_bytes(&body)?;
    publish_dlq(js, name, &p.event.audit_id, payload).await
}

async fn dead_letter_raw(
    js: &jetstream::Context,
    name: &str,
    seq: u64,
    raw: bytes::Bytes,
    reason: &str,
) -> Result<(), EngineError> {
    let body = serde_json::json!({
        "destination": name,
        "reason": reason,
        "stream_seq": seq,
        "raw": String::from_utf8_lossy(&raw),
    });
    let payload = crate::bus::to_bytes(&body)?;
    publish_dlq(js, name, &format!("seq:{seq}"), payload).await
}

async fn publish_dlq(
    js: &jetstream::Context,
    name: &str,
    id: &str,
    payload: bytes::Bytes,
) -> Result<(), EngineError> {
    let msg = jetstream::message::PublishMessage::build()
        .payload(payload)
        .message_id(format!("{name}:{id}"));
    js.send_publish(dead_letter_subject(name), msg)
        .await
        .map_err(|e| bus_err(&format!("publish to {DEAD_LETTER_STREAM}"), e))?
        .await
        .map_err(|e| bus_err(&format!("publish to {DEAD_LETTER_STREAM}"), e))?;
    Ok(())
}

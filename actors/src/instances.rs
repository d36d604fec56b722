//! Trigger instances: published to their rule partition on the
//! `TRIGGERS` stream (the instance id is the `Nats-Msg-Id`) and read back
//! for the API, with whether their partition's rules have processed them.

use std::collections::HashMap;

use async_nats::jetstream::stream;
use async_nats::HeaderMap;
use futures::StreamExt;
use squall_domain::execution::TriggerInstance;
use squall_domain::ids;
use squall_domain::time::Timestamp;
use tracing::Instrument;

use crate::bus::{from_bytes, to_bytes, trigger_subject, Bus, LIST_TIMEOUT};
use crate::error::{bus_err, EngineError};

impl Bus {
    /// Publishes a trigger instance to its partition; the instance id is the
    /// `Nats-Msg-Id`, so publishing the same instance twice stores it once.
    pub async fn publish_trigger(&self, instance: &TriggerInstance) -> Result<(), EngineError> {
        let subject = trigger_subject(self.partition_of(&instance.id), &instance.id);
        let span = crate::telemetry::span(|| {
            tracing::info_span!("trigger.publish", otel.kind = "producer",
                messaging.system = "nats", messaging.destination.name = %subject,
                squall.trigger.type = %instance.trigger_type,
                squall.trigger_instance.id = %instance.id,
                squall.trace_tag = instance.trace_tag.as_deref().unwrap_or(""))
        });
        async {
            let payload = to_bytes(instance)?;
            let mut headers = HeaderMap::new();
            crate::telemetry::inject(&mut headers, None, &instance.id);
            self.publish(subject.clone(), &instance.id, headers, payload)
                .await
        }
        .instrument(span)
        .await?;
        crate::metrics::trigger_published(&instance.trigger_type);
        self.audit.emit(crate::audit::trigger_received(instance));
        Ok(())
    }

    /// Reads one stored trigger instance by id, with whether its partition's
    /// rules consumer has processed it.
    pub async fn trigger_instance(
        &self,
        id: &str,
    ) -> Result<Option<(TriggerInstance, bool)>, EngineError> {
        if !ids::is_id(id) {
            return Ok(None);
        }
        let partition = self.partition_of(id);
        let msg = match self
            .triggers
            .direct_get_last_for_subject(trigger_subject(partition, id))
            .await
        {
            Ok(msg) => msg,
            Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(bus_err("read trigger instance", e)),
        };
        let instance = from_bytes(id, &msg.payload)?;
        let processed = match self
            .triggers
            .consumer_info(crate::rules::consumer_name(partition))
            .await
        {
            Ok(info) => info.ack_floor.stream_sequence >= msg.sequence,
            Err(_) => false,
        };
        Ok(Some((instance, processed)))
    }

    /// The newest trigger instances, newest first, skipping `offset`, with
    /// whether each has been processed; and how many the stream holds.
    pub async fn recent_trigger_instances(
        &self,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<(TriggerInstance, bool)>, u64), EngineError> {
        let state = stream_state(&self.triggers).await?;
        let mut floors = HashMap::new();
        let mut out = Vec::new();
        let mut skipped = 0;
        let mut seq = state.last_sequence;
        while seq >= state.first_sequence.max(1) && out.len() < limit {
            let msg = match self.triggers.direct_get(seq).await {
                Ok(m) => m,
                Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => {
                    seq -= 1;
                    continue;
                }
                Err(e) => return Err(bus_err("read trigger instance", e)),
            };
            seq -= 1;
            if skipped < offset {
                skipped += 1;
                continue;
            }
            let instance: TriggerInstance = from_bytes(&msg.subject, &msg.payload)?;
            let partition = self.partition_of(&instance.id);
            let floor = self.ack_floor(&mut floors, partition).await;
            out.push((instance, floor >= msg.sequence));
        }
        Ok((out, state.messages))
    }

    /// The trigger instances `filter` keeps, newest first, skipping
    /// `offset`, with whether each has been processed; and how many match.
    /// One forward pass over the stream with an ordered consumer (batched
    /// reads), keeping only the newest `offset + limit` matches in memory.
    pub async fn find_trigger_instances(
        &self,
        filter: &TriggerInstanceFilter,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<(TriggerInstance, bool)>, u64), EngineError> {
        use async_nats::jetstream::consumer::{pull, DeliverPolicy};
        let consumer = self
            .triggers
            .create_consumer(pull::OrderedConfig {
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| bus_err("read trigger instances", e))?;
        let stored = consumer.cached_info().num_pending;
        let keep = offset.saturating_add(limit);
        let mut newest = std::collections::VecDeque::new();
        let mut total = 0u64;
        if stored == 0 || keep == 0 {
            return Ok((Vec::new(), 0));
        }
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| bus_err("read trigger instances", e))?;
        let mut floors = HashMap::new();
        for _ in 0..stored {
            let next = tokio::time::timeout(LIST_TIMEOUT, messages.next())
                .await
                .map_err(|_| bus_err("read trigger instances", "no answer in time; try again"))?;
            let Some(msg) = next else { break };
            let msg = msg.map_err(|e| bus_err("read trigger instances", e))?;
            let seq = msg
                .info()
                .map_err(|e| bus_err("read trigger instances", e))?
                .stream_sequence;
            let instance: TriggerInstance = from_bytes(&msg.subject, &msg.payload)?;
            if !filter.keeps(&instance) {
                continue;
            }
            let partition = self.partition_of(&instance.id);
            let floor = self.ack_floor(&mut floors, partition).await;
            let processed = floor >= seq;
            if filter.processed.is_some_and(|p| p != processed) {
                continue;
            }
            total += 1;
            newest.push_back((instance, processed));
            if newest.len() > keep {
                newest.pop_front();
            }
        }
        let page = newest.into_iter().rev().skip(offset).take(limit).collect();
        Ok((page, total))
    }

    /// The stream sequence up to which the rule partition `partition` has
    /// processed trigger instances, read once per listing into `floors`.
    async fn ack_floor(&self, floors: &mut HashMap<u32, u64>, partition: u32) -> u64 {
        if let Some(f) = floors.get(&partition) {
            return *f;
        }
        let f = self
            .triggers
            .consumer_info(crate::rules::consumer_name(partition))
            .await
            .map(|i| i.ack_floor.stream_sequence)
            .unwrap_or(0);
        floors.insert(partition, f);
        f
    }
}

/// The state of the `TRIGGERS` stream (first and last sequence, count).
pub async fn stream_state(triggers: &stream::Stream) -> Result<stream::State, EngineError> {
    Ok(triggers
        .clone()
        .info()
        .await
        .map_err(|e| bus_err("trigger stream info", e))?
        .state
        .clone())
}

/// What a trigger-instance list may be narrowed to (StackStorm's
/// `trigger`, `timestamp_gt`, `timestamp_lt` and `status` filters).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TriggerInstanceFilter {
    /// The trigger's reference.
    pub trigger: Option<String>,
    /// Occurred strictly after this.
    pub after: Option<Timestamp>,
    /// Occurred strictly before this.
    pub before: Option<Timestamp>,
    /// Processed by its rules partition (`true`) or still pending.
    pub processed: Option<bool>,
}

impl TriggerInstanceFilter {
    /// Whether nothing is filtered.
    pub fn is_empty(&self) -> bool {
        *self == TriggerInstanceFilter::default()
    }

    /// Whether `instance` passes every filter but `processed` (which needs
    /// the stream's state).
    pub fn keeps(&self, instance: &TriggerInstance) -> bool {
        self.trigger
            .as_deref()
            .is_none_or(|t| instance.trigger == t)
            && self.after.is_none_or(|a| instance.occurrence_time > a)
            && self.before.is_none_or(|b| instance.occurrence_time < b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_instance_filters_keep_what_they_name() {
        let at = |s: &str| squall_domain::time::parse(s).unwrap();
        let instance = TriggerInstance {
            v: squall_domain::execution::RECORD_VERSION,
            id: "6740f0aa0123456789abcdef".into(),
            trigger: "examples.hook".into(),
            trigger_type: "core.st2.webhook".into(),
            trigger_parameters: serde_json::Map::new(),
            payload: serde_json::json!({}),
            occurrence_time: at("2026-01-01T12:00:00Z"),
            trace_tag: None,
        };
        assert!(TriggerInstanceFilter::default().is_empty());
        let f = |trigger: Option<&str>, after: Option<&str>, before: Option<&str>| {
            TriggerInstanceFilter {
                trigger: trigger.map(str::to_string),
                after: after.map(at),
                before: before.map(at),
                processed: None,
            }
        };
        assert!(f(Some("examples.hook"), None, None).keeps(&instance));
        assert!(!f(Some("examples.other"), None, None).keeps(&instance));
        assert!(f(
            None,
            Some("2026-01-01T11:59:59Z"),
            Some("2026-01-01T12:00:01Z")
        )
        .keeps(&instance));
        assert!(
            !f(None, Some("2026-01-01T12:00:00Z"), None).keeps(&instance),
            "strictly after"
        );
        assert!(
            !f(None, None, Some("2026-01-01T12:00:00Z")).keeps(&instance),
            "strictly before"
        );
    }
}

//! The sensors partition actor. [`Timers`] fires StackStorm's timer
//! triggers (`core.st2.IntervalTimer`, `DateTimer`, `CronTimer`, scheduled
//! by [`Schedule`]) for every timer some enabled rule listens to, one
//! actor per owned sensor partition: a timer belongs to the partition of
//! its trigger reference, so exactly one node fires it. The same actor
//! runs the partition's Python pack sensors through its
//! [`SensorHost`] (a sensor belongs to the partition of its reference).
//!
//! A tick's trigger instance id is derived from the trigger and the tick's
//! time, and published with that id as `Nats-Msg-Id`: however many nodes
//! fire the same tick, JetStream stores it once.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::kv;
use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::{json, Value};
use squall_domain::execution::{TriggerInstance, RECORD_VERSION};
use squall_domain::schedule::Schedule;
use squall_domain::{ids, triggers};
use tokio::task::JoinHandle;

use crate::bus::{Bus, SENSORS_BUCKET, TIMERS_BUCKET};
use crate::catalog::{CatalogHandle, Trigger};
use crate::error::bus_err;
use crate::pump::Pump;
use crate::retention::Collector;
use crate::sensor_host::{HostContext, SensorHost};
use crate::timing::{TIMER_CATCH_UP, TIMER_RESUME_WINDOW};

/// The timer trigger types, and the names StackStorm tags their traces
/// with.
const TIMER_TYPES: [(&str, &str); 3] = [
    (triggers::INTERVAL_TIMER, "IntervalTimer"),
    (triggers::DATE_TIMER, "DateTimer"),
    (triggers::CRON_TIMER, "CronTimer"),
];

/// The trigger instance of a timer's tick due at `at`.
pub fn tick_instance(trigger: &Trigger, at: DateTime<Utc>) -> TriggerInstance {
    let kind = TIMER_TYPES
        .iter()
        .find(|(t, _)| *t == trigger.trigger_type)
        .map_or("Timer", |(_, name)| name);
    TriggerInstance {
        v: RECORD_VERSION,
        id: ids::derived(
            &at,
            &[
                "timer",
                &trigger.reference,
                &at.timestamp_millis().to_string(),
            ],
        ),
        trigger: trigger.reference.clone(),
        trigger_type: trigger.trigger_type.clone(),
        trigger_parameters: trigger.parameters.clone(),
        // StackStorm writes Python's str(datetime.utcnow()).
        payload: json!({
            "executed_at": at.format("%Y-%m-%d %H:%M:%S%.6f").to_string(),
            "schedule": Value::Null,
        }),
        occurrence_time: at,
        trace_tag: Some(format!("{kind}-{}", trigger.reference)),
    }
}

/// Runs one task per active timer of one partition, following catalog
/// changes.
#[derive(Debug)]
pub struct Timers;

/// Messages of [`Timers`].
#[derive(Debug)]
pub enum TimerMsg {
    CatalogChanged,
}

/// State of [`Timers`].
#[derive(Debug)]
pub struct TimerState {
    bus: Bus,
    /// The `timers` bucket: the last tick each timer fired.
    fired: kv::Store,
    catalog: CatalogHandle,
    partition: u32,
    running: HashMap<String, JoinHandle<()>>,
    /// The partition's Python sensors; dropping it stops them.
    sensors: SensorHost,
    /// The garbage collector, on partition 0 when retention is on.
    collector: Option<JoinHandle<()>>,
    _pump: Pump,
}

impl Drop for TimerState {
    fn drop(&mut self) {
        for (_, task) in self.running.drain() {
            task.abort();
        }
        if let Some(collector) = self.collector.take() {
            collector.abort();
        }
    }
}

impl Actor for Timers {
    type Msg = TimerMsg;
    type State = TimerState;
    type Arguments = (Bus, CatalogHandle, u32, HostContext, Option<Collector>);

    async fn pre_start(
        &self,
        myself: ActorRef<TimerMsg>,
        (bus, catalog, partition, host, collector): (
            Bus,
            CatalogHandle,
            u32,
            HostContext,
            Option<Collector>,
        ),
    ) -> Result<TimerState, ActorProcessingErr> {
        let changes = tokio_stream_of(catalog.subscribe());
        let fired = bus
            .js
            .get_key_value(TIMERS_BUCKET)
            .await
            .map_err(|e| bus_err("open bucket timers", e))?;
        let states = bus
            .js
            .get_key_value(SENSORS_BUCKET)
            .await
            .map_err(|e| bus_err("open bucket sensors", e))?;
        myself.cast(TimerMsg::CatalogChanged)?;
        Ok(TimerState {
            bus,
            fired,
            catalog,
            partition,
            running: HashMap::new(),
            sensors: SensorHost::new(host, states, partition),
            collector: collector
                .filter(|_| partition == 0)
                .map(|c| tokio::spawn(c.run())),
            _pump: Pump::start(
                changes,
                myself,
                |_| TimerMsg::CatalogChanged,
                TimerMsg::CatalogChanged,
            ),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<TimerMsg>,
        TimerMsg::CatalogChanged: TimerMsg,
        state: &mut TimerState,
    ) -> Result<(), ActorProcessingErr> {
        let catalog = state.catalog.load();
        let wanted: HashMap<String, (Trigger, Schedule)> = TIMER_TYPES
            .iter()
            .flat_map(|(kind, _)| catalog.triggers_of_type(kind))
            .filter(|t| state.bus.partition_of(&t.reference) == state.partition)
            .filter_map(|t| match Schedule::of(&t.trigger_type, &t.parameters)? {
                Ok(schedule) => Some((t.reference.clone(), (t, schedule))),
                // Registration rejects these; an older node's content may
                // still hold one.
                Err(problems) => {
                    tracing::warn!(trigger = %t.reference, ?problems, "timer not scheduled");
                    None
                }
            })
            .collect();
        state.running.retain(|reference, task| {
            let keep = wanted.contains_key(reference);
            if !keep {
                task.abort();
            }
            keep
        });
        for (reference, (trigger, schedule)) in wanted {
            if !state.running.contains_key(&reference) {
                let bus = state.bus.clone();
                state.running.insert(
                    reference,
                    tokio::spawn(fire(bus, state.fired.clone(), trigger, schedule)),
                );
            }
        }
        state.sensors.reconcile(&catalog);
        Ok(())
    }
}

/// Key of a timer's last fired tick in the `timers` bucket.
fn fired_key(reference: &str) -> String {
    reference
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_=.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Fires `trigger` at every time of its schedule; all nodes agree on the
/// times (intervals are counted from the Unix epoch). Every tick due while
/// some rule listened fires exactly once:
/// - a timer whose partition moved continues after the last tick its
///   previous owner recorded (a tick fired but not recorded is fired again
///   with the same instance id, which JetStream and the rules drop);
/// - a loop woken late (a busy node) fires the ticks it missed at once,
///   with their own times, and a tick whose publish fails is retried;
/// - only ticks older than [`TIMER_CATCH_UP`] are given up, with a warning.
///
/// A `DateTimer` ends after its one tick.
async fn fire(bus: Bus, fired: kv::Store, trigger: Trigger, schedule: Schedule) {
    let key = fired_key(&trigger.reference);
    let last = match fired.get(&key).await {
        Ok(v) => v
            .and_then(|b| std::str::from_utf8(&b).ok()?.parse().ok())
            .and_then(DateTime::<Utc>::from_timestamp_millis),
        Err(e) => {
            tracing::warn!(trigger = %trigger.reference, error = %e, "last tick unknown; starting from now");
            None
        }
    };
    let now = Utc::now();
    // A takeover's gap is seconds; after a longer stop (the whole cluster
    // down) the missed ticks are not fired in a burst.
    let resume_from = now - TIMER_RESUME_WINDOW;
    let from = last.map_or(now, |last| last.max(resume_from));
    // Nor are ticks from before any rule listened (a rule just created or
    // enabled again starts a fresh schedule, as in StackStorm): only a
    // takeover, with rules listening all along, fires what the previous
    // owner missed.
    let from = from.max(trigger.listening_since.unwrap_or(from));
    let mut due = schedule.next_after(from);
    while let Some(at) = due {
        let now = Utc::now();
        let oldest = now - TIMER_CATCH_UP;
        if at <= oldest {
            let next = schedule.next_after(oldest);
            tracing::warn!(trigger = %trigger.reference, missed = %at,
                "timer ticks older than the catch-up window were not fired");
            due = next;
            continue;
        }
        if let Ok(wait) = (at - now).to_std() {
            tokio::time::sleep(wait).await;
        }
        let instance = tick_instance(&trigger, at);
        match bus.publish_trigger(&instance).await {
            Ok(()) => {
                tracing::debug!(trigger = %trigger.reference, %at, "timer fired");
                let stamp = at.timestamp_millis().to_string();
                if let Err(e) = fired.put(&key, stamp.into()).await {
                    tracing::warn!(trigger = %trigger.reference, %at, error = %e, "fired tick not recorded");
                }
                due = schedule.next_after(at);
            }
            Err(e) => {
                tracing::warn!(trigger = %trigger.reference, %at, error = %e, "timer tick not published; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// A stream that yields once per change of a watch channel.
fn tokio_stream_of<T: Send + Sync + 'static>(
    rx: tokio::sync::watch::Receiver<T>,
) -> impl futures::Stream<Item = ()> + Send {
    futures::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok()?;
        Some(((), rx))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tick_has_one_id_whoever_fires_it() {
        let t = Trigger {
            reference: "core.st2.CronTimer.abc".into(),
            trigger_type: triggers::CRON_TIMER.into(),
            parameters: json!({"minute": "*/5"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            listening_since: None,
        };
        let at = Utc::now();
        let later = at + chrono::Duration::minutes(5);
        assert_eq!(tick_instance(&t, at).id, tick_instance(&t, at).id);
        assert_ne!(tick_instance(&t, at).id, tick_instance(&t, later).id);
        assert_eq!(
            tick_instance(&t, at).trace_tag.as_deref(),
            Some("CronTimer-core.st2.CronTimer.abc")
        );
    }
}

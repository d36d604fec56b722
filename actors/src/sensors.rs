//! Sensors built into the node. [`IntervalTimers`] fires
//! `core.st2.IntervalTimer` triggers for every timer some enabled rule
//! listens to, one actor per owned sensor partition: a timer belongs to
//! the partition of its trigger reference, so exactly one node fires it.
//!
//! A tick's trigger instance id is derived from the trigger and the tick
//! number, and published with that id as `Nats-Msg-Id`: however many nodes
//! fire the same tick, JetStream stores it once.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::kv;
use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::{json, Map, Value};
use squall_domain::execution::{TriggerInstance, RECORD_VERSION};
use squall_domain::{ids, triggers};
use tokio::task::JoinHandle;

use crate::bus::{Bus, TIMERS_BUCKET};
use crate::catalog::{CatalogHandle, Trigger};
use crate::error::bus_err;
use crate::pump::Pump;

/// Seconds between ticks of an IntervalTimer trigger, from its parameters.
pub fn interval_of(parameters: &Map<String, Value>) -> Option<Duration> {
    let delta = parameters.get("delta")?.as_u64().filter(|d| *d > 0)?;
    let unit = match parameters.get("unit")?.as_str()? {
        "seconds" => 1,
        "minutes" => 60,
        "hours" => 3600,
        "days" => 86_400,
        "weeks" => 604_800,
        _ => return None,
    };
    Some(Duration::from_secs(delta.checked_mul(unit)?))
}

/// The trigger instance of tick number `tick` of a timer.
pub fn tick_instance(trigger: &Trigger, tick: u64, at: DateTime<Utc>) -> TriggerInstance {
    TriggerInstance {
        v: RECORD_VERSION,
        id: ids::derived(&at, &["timer", &trigger.reference, &tick.to_string()]),
        trigger: trigger.reference.clone(),
        trigger_type: trigger.trigger_type.clone(),
        trigger_parameters: trigger.parameters.clone(),
        // StackStorm writes Python's str(datetime.utcnow()).
        payload: json!({
            "executed_at": at.format("%Y-%m-%d %H:%M:%S%.6f").to_string(),
            "schedule": Value::Null,
        }),
        occurrence_time: at,
        trace_tag: Some(format!("IntervalTimer-{}", trigger.reference)),
    }
}

/// Runs one task per active interval timer of one partition, following
/// catalog changes.
#[derive(Debug)]
pub struct IntervalTimers;

/// Messages of [`IntervalTimers`].
#[derive(Debug)]
pub enum TimerMsg {
    CatalogChanged,
}

/// State of [`IntervalTimers`].
#[derive(Debug)]
pub struct TimerState {
    bus: Bus,
    /// The `timers` bucket: the last tick each timer fired.
    fired: kv::Store,
    catalog: CatalogHandle,
    partition: u32,
    running: HashMap<String, JoinHandle<()>>,
    _pump: Pump,
}

impl Drop for TimerState {
    fn drop(&mut self) {
        for (_, task) in self.running.drain() {
            task.abort();
        }
    }
}

impl Actor for IntervalTimers {
    type Msg = TimerMsg;
    type State = TimerState;
    type Arguments = (Bus, CatalogHandle, u32);

    async fn pre_start(
        &self,
        myself: ActorRef<TimerMsg>,
        (bus, catalog, partition): (Bus, CatalogHandle, u32),
    ) -> Result<TimerState, ActorProcessingErr> {
        let changes = tokio_stream_of(catalog.subscribe());
        let fired = bus
            .js
            .get_key_value(TIMERS_BUCKET)
            .await
            .map_err(|e| bus_err("open bucket timers", e))?;
        myself.cast(TimerMsg::CatalogChanged)?;
        Ok(TimerState {
            bus,
            fired,
            catalog,
            partition,
            running: HashMap::new(),
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
        let wanted: HashMap<String, (Trigger, Duration)> = state
            .catalog
            .load()
            .triggers_of_type(triggers::INTERVAL_TIMER)
            .into_iter()
            .filter(|t| state.bus.partition_of(&t.reference) == state.partition)
            .filter_map(|t| interval_of(&t.parameters).map(|i| (t.reference.clone(), (t, i))))
            .collect();
        state.running.retain(|reference, task| {
            let keep = wanted.contains_key(reference);
            if !keep {
                task.abort();
            }
            keep
        });
        for (reference, (trigger, every)) in wanted {
            if !state.running.contains_key(&reference) {
                let bus = state.bus.clone();
                state.running.insert(
                    reference,
                    tokio::spawn(fire_every(bus, state.fired.clone(), trigger, every)),
                );
            }
        }
        Ok(())
    }
}

/// How far back a late timer (or a timer's new owner) still fires the
/// ticks it missed.
const CATCH_UP: Duration = Duration::from_secs(60);

/// How far back a timer's new owner fires the ticks its previous owner did
/// not (a takeover takes seconds).
const RESUME_WINDOW: Duration = Duration::from_secs(20);

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

/// Fires `trigger` at every multiple of `every` since the Unix epoch, so all
/// nodes agree on tick numbers. Every tick fires exactly once:
/// - a timer whose partition moved continues after the last tick its
///   previous owner recorded (a tick fired but not recorded is fired again
///   with the same instance id, which JetStream and the rules drop);
/// - a loop woken late (a busy node) fires the ticks it missed at once,
///   with their own times, and a tick whose publish fails is retried;
/// - only ticks older than [`CATCH_UP`] are given up, with a warning.
async fn fire_every(bus: Bus, fired: kv::Store, trigger: Trigger, every: Duration) {
    let period = every.as_millis().max(1) as i64;
    let key = fired_key(&trigger.reference);
    let last: Option<i64> = match fired.get(&key).await {
        Ok(v) => v.and_then(|b| std::str::from_utf8(&b).ok()?.parse().ok()),
        Err(e) => {
            tracing::warn!(trigger = %trigger.reference, error = %e, "last tick unknown; starting from now");
            None
        }
    };
    let now = Utc::now().timestamp_millis();
    let mut tick = match last {
        // A takeover's gap is seconds; after a longer stop (the whole
        // cluster down) the missed ticks are not fired in a burst.
        Some(last) => (last + 1).max((now - RESUME_WINDOW.as_millis() as i64) / period + 1),
        None => now / period + 1,
    };
    loop {
        let now = Utc::now().timestamp_millis();
        let oldest = (now - CATCH_UP.as_millis() as i64) / period + 1;
        if tick < oldest {
            tracing::warn!(trigger = %trigger.reference, skipped = oldest - tick,
                "timer ticks older than the catch-up window were not fired");
            tick = oldest;
        }
        let wait = (tick * period - now).max(0) as u64;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let at = DateTime::from_timestamp_millis(tick * period).unwrap_or_else(Utc::now);
        let instance = tick_instance(&trigger, tick as u64, at);
        match bus.publish_trigger(&instance).await {
            Ok(()) => {
                tracing::debug!(trigger = %trigger.reference, tick, "timer fired");
                if let Err(e) = fired.put(&key, tick.to_string().into()).await {
                    tracing::warn!(trigger = %trigger.reference, tick, error = %e, "fired tick not recorded");
                }
                tick += 1;
            }
            Err(e) => {
                tracing::warn!(trigger = %trigger.reference, tick, error = %e, "timer tick not published; retrying");
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

    fn params(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn intervals_follow_unit_and_delta() {
        assert_eq!(
            interval_of(&params(json!({"unit": "seconds", "delta": 5}))),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            interval_of(&params(json!({"unit": "minutes", "delta": 2}))),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            interval_of(&params(json!({"unit": "fortnights", "delta": 1}))),
            None
        );
        assert_eq!(
            interval_of(&params(json!({"unit": "seconds", "delta": 0}))),
            None
        );
    }

    #[test]
    fn a_tick_has_one_id_whoever_fires_it() {
        let t = Trigger {
            reference: "core.st2.IntervalTimer.abc".into(),
            trigger_type: triggers::INTERVAL_TIMER.into(),
            parameters: params(json!({"unit": "seconds", "delta": 5})),
        };
        let at = Utc::now();
        assert_eq!(tick_instance(&t, 7, at).id, tick_instance(&t, 7, at).id);
        assert_ne!(tick_instance(&t, 7, at).id, tick_instance(&t, 8, at).id);
    }
}

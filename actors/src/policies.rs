//! Action policies enforced across the cluster: StackStorm's
//! `action.concurrency` and `action.concurrency.attr` (slots in the
//! `concurrency` bucket) and `action.retry` (a new execution when one fails
//! or times out).
//!
//! Each concurrency policy (or, for `action.concurrency.attr`, each
//! distinct combination of the named parameters' values) has one entry,
//! [`Slots`]: the executions holding a slot and those waiting for one,
//! changed by compare-and-swap only. A runner takes a slot ([`admit`])
//! before its claim writes `running`, and the slot is given back
//! ([`release`]) by the write of the execution's end (every such write
//! passes through `Bus::update_execution`); so no more than `threshold`
//! executions of one entry are ever past their claim and not yet ended, on
//! all nodes together. An execution over the threshold is `canceled`, or
//! waits `delayed` (no node, no request in flight) in the entry's list; a
//! release requests the first waiters again, and [`sweep`] repeats any
//! wake-up that was lost and frees slots whose holder's end was written but
//! not released (a crash between the two).

use std::collections::HashMap;

use async_nats::jetstream::kv;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use squall_domain::execution::{ExecutionRecord, ExecutionRequest, LogEntry, Status};
use squall_domain::policies::{slot_key, Enforced, Over, RetryOn};
use squall_domain::{ids, time};

use crate::bus::{execution_subject, from_bytes, to_bytes, Bus};
use crate::catalog::CatalogHandle;
use crate::error::{bus_err, EngineError};
use crate::timing::{LIST_TIMEOUT, POLICY_SWEEP_EVERY};

/// KV bucket of concurrency slots: `<policy ref>[.<values hash>]` →
/// [`Slots`].
pub const CONCURRENCY_BUCKET: &str = "concurrency";

/// The bucket this module keeps, as created with `replicas` replicas.
pub fn buckets(replicas: usize) -> Vec<kv::Config> {
    vec![crate::bus::bucket(
        CONCURRENCY_BUCKET,
        "Concurrency policies' slots: executions holding one, executions waiting.",
        1,
        replicas,
    )]
}

/// Compare-and-swap attempts on one entry before giving up (the request
/// then comes back and tries again).
const CAS_ATTEMPTS: usize = 100;

/// One slot set: who runs, who waits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Slots {
    #[serde(default)]
    pub v: u32,
    /// The policy's reference.
    pub policy: String,
    /// The policy's threshold when a slot was last taken.
    pub threshold: u64,
    /// The runner pool of the action, where waiters are requested again.
    pub pool: String,
    /// Executions past admission and not yet ended, oldest first.
    #[serde(default)]
    pub holders: Vec<String>,
    /// Executions `delayed` for a slot, in arrival order.
    #[serde(default)]
    pub waiting: Vec<String>,
}

/// A concurrency limit that applies to an action.
#[derive(Debug, Clone)]
pub struct Limit<'a> {
    pub policy: &'a str,
    pub threshold: u64,
    pub over: Over,
    pub attributes: &'a [String],
}

/// The concurrency limits among an action's policies.
pub fn limits(policies: &[(String, Enforced)]) -> Vec<Limit<'_>> {
    policies
        .iter()
        .filter_map(|(policy, e)| match e {
            Enforced::Concurrency {
                threshold,
                over,
                attributes,
            } => Some(Limit {
                policy,
                threshold: *threshold,
                over: *over,
                attributes,
            }),
            Enforced::Retry { .. } => None,
        })
        .collect()
}

/// The slot keys of `limits` for an execution with `parameters`.
pub fn keys(limits: &[Limit<'_>], parameters: &serde_json::Map<String, Value>) -> Vec<String> {
    limits
        .iter()
        .map(|l| slot_key(l.policy, l.attributes, parameters))
        .collect()
}

/// What admission decided.
#[derive(Debug, PartialEq)]
pub enum Admission {
    /// A slot of every limit is held, under these keys: run.
    Run(Vec<String>),
    /// A limit is reached. Slots taken of other limits were given back;
    /// with [`Over::Delay`] the execution now waits in `key`'s list.
    Full {
        policy: String,
        threshold: u64,
        over: Over,
        key: String,
    },
}

fn store(bus: &Bus) -> Result<&kv::Store, EngineError> {
    bus.bucket(CONCURRENCY_BUCKET)
}

/// The entry of `key` (empty when there is none) and the key's last
/// revision (a deletion's included; `None` when it never existed).
async fn read(bus: &Bus, key: &str) -> Result<(Slots, Option<u64>), EngineError> {
    match store(bus)?
        .entry(key)
        .await
        .map_err(|e| bus_err("read concurrency slots", e))?
    {
        Some(e) if e.operation == kv::Operation::Put => {
            Ok((from_bytes(key, &e.value)?, Some(e.revision)))
        }
        Some(e) => Ok((Slots::default(), Some(e.revision))),
        None => Ok((Slots::default(), None)),
    }
}

/// Writes `slots` over revision `rev` (`None`: the key never existed),
/// deleting the entry when nobody is listed. The new revision (0 once
/// deleted: nobody waits to be woken), or `None` when someone else wrote
/// first.
async fn write(
    bus: &Bus,
    key: &str,
    slots: &Slots,
    rev: Option<u64>,
) -> Result<Option<u64>, EngineError> {
    let kv = store(bus)?;
    if slots.holders.is_empty() && slots.waiting.is_empty() {
        let Some(rev) = rev else { return Ok(Some(0)) };
        return match kv.delete_expect_revision(key, Some(rev)).await {
            Ok(()) => Ok(Some(0)),
            Err(e) if e.kind() == kv::DeleteErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(bus_err("free concurrency slots", e)),
        };
    }
    let bytes = to_bytes(slots)?;
    let written = match rev {
        None => kv.create(key, bytes).await.map_err(|e| {
            (
                e.kind() == kv::CreateErrorKind::AlreadyExists,
                e.to_string(),
            )
        }),
        Some(rev) => kv.update(key, bytes, rev).await.map_err(|e| {
            (
                e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                e.to_string(),
            )
        }),
    };
    match written {
        Ok(r) => Ok(Some(r)),
        Err((true, _)) => Ok(None),
        Err((false, e)) => Err(bus_err("take a concurrency slot", e)),
    }
}

/// Takes a slot of every limit for `record` (one it already holds counts),
/// in policy order. When one is full, the slots taken are given back and,
/// for [`Over::Delay`], the execution joins that entry's waiting list.
pub async fn admit(
    bus: &Bus,
    record: &ExecutionRecord,
    limits: &[Limit<'_>],
) -> Result<Admission, EngineError> {
    let mut taken = Vec::new();
    for limit in limits {
        let key = slot_key(limit.policy, limit.attributes, &record.parameters);
        if take(bus, &key, limit, record).await? {
            taken.push(key);
            continue;
        }
        release(bus, &record.id, &taken).await?;
        return Ok(Admission::Full {
            policy: limit.policy.to_string(),
            threshold: limit.threshold,
            over: limit.over,
            key,
        });
    }
    Ok(Admission::Run(taken))
}

/// Takes a slot of `key` for `record`: true when it holds one.
async fn take(
    bus: &Bus,
    key: &str,
    limit: &Limit<'_>,
    record: &ExecutionRecord,
) -> Result<bool, EngineError> {
    let id = &record.id;
    for _ in 0..CAS_ATTEMPTS {
        let (mut slots, rev) = read(bus, key).await?;
        if slots.holders.contains(id) {
            return Ok(true);
        }
        slots.v = 1;
        slots.policy = limit.policy.to_string();
        slots.threshold = limit.threshold;
        slots.pool.clone_from(&record.pool);
        let free = (slots.holders.len() as u64) < limit.threshold;
        if free {
            slots.holders.push(id.clone());
            slots.waiting.retain(|w| w != id);
        } else if limit.over == Over::Delay && !slots.waiting.contains(id) {
            slots.waiting.push(id.clone());
        } else {
            return Ok(false);
        }
        if write(bus, key, &slots, rev).await?.is_some() {
            return Ok(free);
        }
    }
    Err(bus_err(
        "take a concurrency slot",
        format!("{key} kept changing"),
    ))
}

/// Gives back execution `id`'s place (slot or wait) in each of `keys`,
/// then requests again the first waiters of each entry for the slots now
/// free. Idempotent: an execution no longer listed changes nothing.
pub async fn release(bus: &Bus, id: &str, keys: &[String]) -> Result<(), EngineError> {
    for key in keys {
        remove(bus, key, id, true).await?;
    }
    Ok(())
}

/// Removes `id` from `key`'s waiting list, and from its holders when
/// `holding`; wakes waiters for freed slots.
async fn remove(bus: &Bus, key: &str, id: &str, holding: bool) -> Result<(), EngineError> {
    for _ in 0..CAS_ATTEMPTS {
        let (mut slots, rev) = read(bus, key).await?;
        let before = slots.holders.len() + slots.waiting.len();
        if holding {
            slots.holders.retain(|h| h != id);
        }
        slots.waiting.retain(|w| w != id);
        if slots.holders.len() + slots.waiting.len() == before {
            return Ok(());
        }
        if let Some(new_rev) = write(bus, key, &slots, rev).await? {
            let free = slots.threshold.saturating_sub(slots.holders.len() as u64);
            wake(bus, &slots, free, new_rev).await?;
            return Ok(());
        }
    }
    Err(bus_err(
        "free a concurrency slot",
        format!("{key} kept changing"),
    ))
}

/// Requests the first `free` waiters of `slots` again; the message id
/// names the entry's revision, so several nodes waking for one state send
/// each request once.
async fn wake(bus: &Bus, slots: &Slots, free: u64, rev: u64) -> Result<(), EngineError> {
    for waiter in slots.waiting.iter().take(free as usize) {
        request_again(bus, waiter, &slots.pool, &format!("{waiter}.wake.{rev}")).await?;
    }
    Ok(())
}

/// Publishes a request for execution `id` (read afresh by its runner).
async fn request_again(bus: &Bus, id: &str, pool: &str, msg_id: &str) -> Result<(), EngineError> {
    let request = ExecutionRequest {
        v: 1,
        execution_id: id.to_string(),
        created: None,
    };
    let mut headers = async_nats::HeaderMap::new();
    crate::telemetry::inject(&mut headers, None, id);
    bus.publish(
        execution_subject(pool),
        msg_id,
        headers,
        to_bytes(&request)?,
    )
    .await
}

/// Whether an execution's slots are given back when it reaches `status`:
/// when it ends, or waits on a person (StackStorm counts only `scheduled`
/// and `running` executions).
pub fn releases_at(status: Status) -> bool {
    status.is_completed() || status == Status::Pending
}

/// Checks every entry with waiters: holders whose end was written but not
/// released (the entry unchanged since the previous sweep, as `seen`
/// remembers) are removed; waiters that ended or run are dropped from the
/// list; the first waiters that still wait are requested again for the
/// slots free (all of them when the policy is gone). Returns how many
/// requests it sent.
pub async fn sweep(
    bus: &Bus,
    catalog: &CatalogHandle,
    seen: &mut HashMap<String, u64>,
) -> Result<usize, EngineError> {
    let keys = tokio::time::timeout(LIST_TIMEOUT, async {
        let mut keys = store(bus)?
            .keys()
            .await
            .map_err(|e| bus_err("list concurrency slots", e))?;
        let mut out = Vec::new();
        while let Some(k) = keys.next().await {
            out.push(k.map_err(|e| bus_err("list concurrency slots", e))?);
        }
        Ok::<_, EngineError>(out)
    })
    .await
    .map_err(|_| bus_err("list concurrency slots", "no answer in time"))??;
    seen.retain(|k, _| keys.contains(k));
    let mut woken = 0;
    for key in keys {
        let (slots, Some(rev)) = read(bus, &key).await? else {
            continue;
        };
        if slots.waiting.is_empty() {
            seen.remove(&key);
            continue;
        }
        if seen.insert(key.clone(), rev) == Some(rev) {
            for holder in &slots.holders {
                if let Some((record, _)) = bus.execution(holder).await? {
                    if releases_at(record.status) {
                        tracing::warn!(execution = %holder, slots = %key, "freeing the concurrency slot of an execution that ended");
                        remove(bus, &key, holder, true).await?;
                    }
                }
            }
        }
        let (slots, Some(rev)) = read(bus, &key).await? else {
            continue;
        };
        let enforced = catalog.load().enforces(&slots.policy);
        let mut free = if enforced {
            slots.threshold.saturating_sub(slots.holders.len() as u64)
        } else {
            u64::MAX
        };
        for waiter in &slots.waiting {
            if free == 0 {
                break;
            }
            match bus.execution(waiter).await? {
                Some((record, _))
                    if matches!(record.status, Status::Delayed | Status::Requested) =>
                {
                    request_again(bus, waiter, &slots.pool, &format!("{waiter}.wake.{rev}"))
                        .await?;
                    woken += 1;
                    free -= 1;
                }
                Some(_) => remove(bus, &key, waiter, false).await?,
                None => {}
            }
        }
    }
    Ok(woken)
}

/// Sweeps every [`POLICY_SWEEP_EVERY`] until `stop`; a failed sweep is
/// logged and tried next period.
pub async fn sweep_until(
    bus: Bus,
    catalog: CatalogHandle,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut seen = HashMap::new();
    let mut every = tokio::time::interval(POLICY_SWEEP_EVERY);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        if let Err(e) = sweep(&bus, &catalog, &mut seen).await {
            tracing::warn!(error = %e, "concurrency policy sweep failed");
        }
    }
}

/// The retry an `action.retry` policy asks for after `record` ended: a new
/// execution of the same action and parameters, with StackStorm's
/// `context.policies.retry` (`applied_policy`, `retry_count`,
/// `retried_liveaction_id`) and the policy's delay. `None` when the
/// policy does not apply: another outcome, the retries used up, or a
/// workflow's task (workflows retry their own tasks, as in StackStorm).
pub fn retry_of(
    record: &ExecutionRecord,
    policy: &str,
    on: RetryOn,
    max_retry_count: u64,
    delay: f64,
) -> Option<ExecutionRecord> {
    let applies = matches!(
        (record.status, on),
        (Status::Failed, RetryOn::Failure) | (Status::Timeout, RetryOn::Timeout)
    );
    let in_workflow = record.parent.is_some()
        || record
            .context
            .get("parent")
            .is_some_and(|p| p.as_object().is_some_and(|o| !o.is_empty()));
    let count = record
        .context
        .get("policies")
        .and_then(|p| p.get("retry"))
        .and_then(|r| r.get("retry_count"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if !applies || in_workflow || count + 1 > max_retry_count {
        return None;
    }
    let ended = record.end_timestamp.unwrap_or(record.start_timestamp);
    let now = time::now();
    let mut context = record.context.clone();
    context.remove("runner_losses");
    context.insert(
        "policies".into(),
        json!({"retry": {
            "applied_policy": policy,
            "retry_count": count + 1,
            "retried_liveaction_id": record.id,
        }}),
    );
    Some(ExecutionRecord {
        id: ids::derived(&ended, &[&record.id, "retry"]),
        status: Status::Requested,
        result: json!({}),
        context,
        start_timestamp: now,
        end_timestamp: None,
        log: vec![LogEntry {
            timestamp: now,
            status: Status::Requested,
        }],
        children: vec![],
        node: None,
        slots: vec![],
        delay: Some((delay * 1000.0).round() as u64).filter(|d| *d > 0),
        ..record.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(status: Status, context: Value) -> ExecutionRecord {
        let at = time::parse("2026-01-31T12:00:00Z").unwrap();
        serde_json::from_value(json!({
            "id": "679cbc40aaaaaaaaaaaaaaaa",
            "action": {"ref": "pk.act", "name": "act", "pack": "pk", "runner_type": "local-shell-cmd"},
            "runner": {"name": "local-shell-cmd"},
            "status": status,
            "parameters": {"cmd": "false"},
            "context": context,
            "start_timestamp": time::format(&at),
            "end_timestamp": time::format(&at),
            "slots": ["pk.limit"],
            "node": "n1",
        }))
        .unwrap()
    }

    #[test]
    fn a_retry_carries_stackstorms_context_and_the_delay() {
        let first = ended(Status::Timeout, json!({"user": "ann"}));
        let retry = retry_of(&first, "pk.retry", RetryOn::Timeout, 2, 1.5).unwrap();
        assert_ne!(retry.id, first.id);
        assert_eq!(retry.status, Status::Requested);
        assert_eq!(retry.parameters, first.parameters);
        assert_eq!(retry.delay, Some(1500));
        assert!(retry.slots.is_empty() && retry.node.is_none() && retry.end_timestamp.is_none());
        assert_eq!(retry.context["user"], "ann");
        assert_eq!(
            retry.context["policies"],
            json!({"retry": {"applied_policy": "pk.retry", "retry_count": 1,
                "retried_liveaction_id": first.id}})
        );
        let again = retry_of(&first, "pk.retry", RetryOn::Timeout, 2, 1.5).unwrap();
        assert_eq!(again.id, retry.id, "the same end asks for the same retry");
    }

    #[test]
    fn a_retry_stops_at_the_count_and_skips_other_outcomes_and_tasks() {
        let counted = |n: u64| json!({"policies": {"retry": {"retry_count": n}}});
        assert!(retry_of(
            &ended(Status::Failed, counted(1)),
            "p",
            RetryOn::Failure,
            2,
            0.0
        )
        .is_some());
        assert!(retry_of(
            &ended(Status::Failed, counted(2)),
            "p",
            RetryOn::Failure,
            2,
            0.0
        )
        .is_none());
        assert!(retry_of(
            &ended(Status::Failed, json!({})),
            "p",
            RetryOn::Timeout,
            2,
            0.0
        )
        .is_none());
        assert!(retry_of(
            &ended(Status::Succeeded, json!({})),
            "p",
            RetryOn::Failure,
            2,
            0.0
        )
        .is_none());
        let task = json!({"parent": {"execution_id": "679cbc40bbbbbbbbbbbbbbbb"}});
        assert!(retry_of(&ended(Status::Failed, task), "p", RetryOn::Failure, 2, 0.0).is_none());
        let retried = retry_of(
            &ended(Status::Failed, json!({})),
            "p",
            RetryOn::Failure,
            2,
            0.0,
        )
        .unwrap();
        assert_eq!(retried.delay, None);
    }
}

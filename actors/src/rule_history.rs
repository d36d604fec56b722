//! What triggers fired and what rules did with them, indexed for their
//! lists (`GET /triggerinstances`, `GET /ruleenforcements`): each API node
//! follows the `TRIGGERS` stream and the `enforcements` bucket into a
//! [`RecordIndex`] apiece, so a list filters and counts in memory and reads
//! only its page's records, in one batched direct get.
//!
//! Trigger instances are followed with an ordered consumer from the
//! stream's start ([`InstanceHistory`]); enforcements with the bucket's
//! mirror ([`EnforcementHistory`]). Neither stream reports what its age
//! limit or a retention purge removed, so each list first reads the
//! stream's first sequence and drops what lies below it. A trigger
//! instance is `processed` once its rules partition's consumer has
//! acknowledged it (the stream sequence is at or below that consumer's ack
//! floor), so the `status` filter is the index's partition postings cut
//! at each partition's floor. Until an index has caught up with its stream
//! it says so ([`InstanceHistory::is_ready`]) and the API answers by
//! scanning the stream, as before the index. A list first lets its index
//! reach the stream's last sequence (briefly), so what was stored before
//! the request is listed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::kv;
use futures::StreamExt;
use roaring::RoaringBitmap;
use serde::Deserialize;
use squall_domain::execution::{RuleEnforcement, TriggerInstance};
use squall_domain::time::{serde_ts, Timestamp};

use crate::bus::{
    bucket_state, from_bytes, trigger_subject, Bus, ENFORCEMENTS_BUCKET, TRIGGERS_STREAM,
};
use crate::error::{bus_err, EngineError};
use crate::history::read_last;
use crate::instances::TriggerInstanceFilter;
use crate::mirror::{Mirror, Mirrored};
use crate::record_index::{Entry, Query, RecordIndex};
use crate::timing::{REWATCH_DELAY, STALL_CHECK};

/// The trigger-instance index's fields.
const TRIGGER: usize = 0;
const PARTITION: usize = 1;

/// The enforcement index's fields.
const RULE_REF: usize = 0;
const RULE_ID: usize = 1;
const EXECUTION: usize = 2;
const INSTANCE: usize = 3;

/// The fields of a trigger instance its index keeps (the payload is
/// skipped).
#[derive(Debug, Deserialize)]
struct InstanceSummary {
    id: String,
    trigger: String,
    #[serde(with = "serde_ts")]
    occurrence_time: Timestamp,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The node's index of the `TRIGGERS` stream.
#[derive(Clone)]
pub struct InstanceHistory {
    state: Arc<RwLock<RecordIndex>>,
    ready: Arc<AtomicBool>,
    /// The last stream sequence folded in.
    applied: Arc<AtomicU64>,
    _follow: Arc<AbortOnDrop>,
}

impl std::fmt::Debug for InstanceHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceHistory")
            .field("ready", &self.is_ready())
            .finish_non_exhaustive()
    }
}

/// Which trigger instances a list shows, and in which order.
#[derive(Debug, Clone, Default)]
pub struct InstanceList {
    pub filter: TriggerInstanceFilter,
    /// Oldest first (`sort=occurrence_time`).
    pub ascending: bool,
    pub offset: usize,
    pub limit: usize,
}

impl InstanceHistory {
    /// Starts following the stream from its start; returns at once.
    pub fn start(bus: &Bus) -> InstanceHistory {
        let state = Arc::new(RwLock::new(RecordIndex::default()));
        let ready = Arc::new(AtomicBool::new(false));
        let applied = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(follow_instances(
            bus.triggers.clone(),
            Arc::clone(&state),
            Arc::clone(&ready),
            Arc::clone(&applied),
        ));
        InstanceHistory {
            state,
            ready,
            applied,
            _follow: Arc::new(AbortOnDrop(task)),
        }
    }

    /// Whether the index has caught up with the stream.
    pub fn is_ready(&self) -> bool {
        self.ready.load(AtomicOrdering::Acquire)
    }

    fn read(&self) -> RwLockReadGuard<'_, RecordIndex> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, RecordIndex> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// One page of trigger instances with whether each was processed, and
    /// how many match. Reads the stream's state, the rules partitions'
    /// ack floors it needs and the page's records; nothing else.
    pub async fn page(
        &self,
        bus: &Bus,
        list: &InstanceList,
    ) -> Result<(Vec<(TriggerInstance, bool)>, usize), EngineError> {
        let mut stream = bus.triggers.clone();
        let state = stream
            .info()
            .await
            .map_err(|e| bus_err("trigger stream info", e))?
            .state
            .clone();
        let first = state.first_sequence;
        catch_up_to(state.last_sequence, || {
            self.applied.load(AtomicOrdering::Acquire)
        })
        .await;
        if self.read().stale_before(first) {
            self.write().forget_before(first);
        }
        let mut floors = HashMap::new();
        let f = &list.filter;
        let mut query = Query {
            after: f.after,
            before: f.before,
            ..Query::default()
        };
        query.fields[TRIGGER] = f.trigger.as_deref();
        if let Some(processed) = f.processed {
            let partitions = self.read().values(PARTITION);
            let wanted: Vec<u32> = partitions.iter().filter_map(|p| p.parse().ok()).collect();
            fetch_floors(bus, &mut floors, &wanted).await;
            let pending = {
                let index = self.read();
                let mut pending = RoaringBitmap::new();
                for p in &partitions {
                    let floor = p
                        .parse()
                        .ok()
                        .and_then(|p: u32| floors.get(&p).copied())
                        .unwrap_or(0);
                    pending |= index.with_value_from(PARTITION, p, index.first_after(floor));
                }
                pending
            };
            if processed {
                query.without = Some(pending);
            } else {
                query.within = Some(pending);
            }
        }
        let page = self
            .read()
            .page(&query, list.ascending, list.offset, list.limit);
        let located: Vec<(String, u32)> = page
            .hits
            .iter()
            .filter_map(|h| Some((h.id.clone(), h.fields[PARTITION].as_deref()?.parse().ok()?)))
            .collect();
        let subjects: Vec<String> = located
            .iter()
            .map(|(id, p)| trigger_subject(*p, id))
            .collect();
        let mut records = read_last(bus, TRIGGERS_STREAM, &subjects).await?;
        let partitions: Vec<u32> = located.iter().map(|(_, p)| *p).collect();
        fetch_floors(bus, &mut floors, &partitions).await;
        let mut out = Vec::with_capacity(page.hits.len());
        for ((hit, subject), (_, partition)) in page.hits.iter().zip(&subjects).zip(&located) {
            let Some(bytes) = records.remove(subject) else {
                continue;
            };
            let instance: TriggerInstance = from_bytes(subject, &bytes)?;
            let processed = floors.get(partition).is_some_and(|f| *f >= hit.seq);
            out.push((instance, processed));
        }
        Ok((out, page.total))
    }
}

/// How long a list waits for its index to reach what the stream held
/// when the list was asked for (so a record stored just before is shown).
const CATCH_UP: std::time::Duration = std::time::Duration::from_secs(1);

/// Waits until `applied()` reaches `last` (a stream's last sequence), at
/// most [`CATCH_UP`]; a sequence the stream no longer holds never comes,
/// so the wait is bounded, not an error.
async fn catch_up_to(last: u64, applied: impl Fn() -> u64) {
    let deadline = tokio::time::Instant::now() + CATCH_UP;
    while applied() < last && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

/// Reads the ack floors of the rules partitions `partitions` not yet in
/// `floors`, at once; a partition without a consumer has processed
/// nothing.
async fn fetch_floors(bus: &Bus, floors: &mut HashMap<u32, u64>, partitions: &[u32]) {
    let mut missing: Vec<u32> = partitions
        .iter()
        .copied()
        .filter(|p| !floors.contains_key(p))
        .collect();
    missing.sort_unstable();
    missing.dedup();
    let read: Vec<(u32, u64)> = futures::stream::iter(missing)
        .map(|p| async move {
            let floor = bus
                .triggers
                .consumer_info(crate::rules::consumer_name(p))
                .await
                .map(|i| i.ack_floor.stream_sequence)
                .unwrap_or(0);
            (p, floor)
        })
        .buffer_unordered(16)
        .collect()
        .await;
    floors.extend(read);
}

/// Follows the `TRIGGERS` stream into `state` for ever: loads what it
/// holds (then `ready`), and goes on from the last sequence seen after an
/// error.
async fn follow_instances(
    stream: async_nats::jetstream::stream::Stream,
    state: Arc<RwLock<RecordIndex>>,
    ready: Arc<AtomicBool>,
    applied: Arc<AtomicU64>,
) {
    let mut next = 1;
    loop {
        if let Err(e) = follow_from(&stream, &state, &ready, &applied, &mut next).await {
            tracing::warn!(stream = TRIGGERS_STREAM, error = %e, "following trigger instances failed; again shortly");
        }
        tokio::time::sleep(REWATCH_DELAY).await;
    }
}

async fn follow_from(
    stream: &async_nats::jetstream::stream::Stream,
    state: &RwLock<RecordIndex>,
    ready: &AtomicBool,
    applied: &AtomicU64,
    next: &mut u64,
) -> Result<(), EngineError> {
    let write = || state.write().unwrap_or_else(PoisonError::into_inner);
    let info = stream
        .clone()
        .info()
        .await
        .map_err(|e| bus_err("trigger stream info", e))?
        .state
        .clone();
    *next = (*next).max(info.first_sequence);
    let loaded = |state: &RwLock<RecordIndex>| {
        if !ready.load(AtomicOrdering::Acquire) {
            state
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .loaded();
            ready.store(true, AtomicOrdering::Release);
            tracing::info!(stream = TRIGGERS_STREAM, "trigger instance index loaded");
        }
    };
    let loading = !ready.load(AtomicOrdering::Acquire);
    if loading {
        if *next > info.last_sequence {
            loaded(state);
        } else {
            write().loading();
        }
    }
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: *next,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| bus_err("follow trigger instances", e))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| bus_err("follow trigger instances", e))?;
    loop {
        let msg = match tokio::time::timeout(STALL_CHECK, messages.next()).await {
            Ok(Some(msg)) => msg.map_err(|e| bus_err("follow trigger instances", e))?,
            Ok(None) => return Ok(()),
            Err(_) => {
                // Nothing more arrives: what was there (what did not age
                // out meanwhile) is loaded.
                loaded(state);
                continue;
            }
        };
        let seq = msg
            .info()
            .map_err(|e| bus_err("follow trigger instances", e))?
            .stream_sequence;
        *next = seq + 1;
        let partition = msg.subject.split('.').nth(2).unwrap_or_default();
        match serde_json::from_slice::<InstanceSummary>(&msg.payload) {
            Ok(s) => write().insert(Entry {
                id: &s.id,
                time: s.occurrence_time,
                seq,
                fields: [Some(&s.trigger), Some(partition), None, None],
            }),
            Err(e) => {
                tracing::warn!(subject = %msg.subject, error = %e, "unreadable trigger instance")
            }
        }
        applied.store(seq, AtomicOrdering::Release);
        if seq >= info.last_sequence {
            loaded(state);
        }
    }
}

/// The enforcement index, kept by the bucket's mirror, and the last
/// revision it folded in.
#[derive(Debug, Default)]
pub struct Enforcements(RecordIndex, u64);

/// The fields of an enforcement its index keeps.
#[derive(Debug, Deserialize)]
struct EnforcementSummary {
    id: String,
    trigger_instance_id: String,
    #[serde(default)]
    execution_id: Option<String>,
    rule: RuleIds,
    #[serde(with = "serde_ts")]
    enforced_at: Timestamp,
}

#[derive(Debug, Deserialize)]
struct RuleIds {
    #[serde(rename = "ref")]
    reference: String,
    #[serde(default)]
    id: Option<String>,
}

impl Mirror for Enforcements {
    fn apply(&mut self, entry: &kv::Entry) {
        self.1 = self.1.max(entry.revision);
        match entry.operation {
            kv::Operation::Put => {
                match serde_json::from_slice::<EnforcementSummary>(&entry.value) {
                    Ok(s) => self.0.insert(Entry {
                        id: &s.id,
                        time: s.enforced_at,
                        seq: entry.revision,
                        fields: [
                            Some(&s.rule.reference),
                            s.rule.id.as_deref(),
                            s.execution_id.as_deref(),
                            Some(&s.trigger_instance_id),
                        ],
                    }),
                    Err(e) => {
                        tracing::warn!(key = %entry.key, error = %e, "unreadable rule enforcement")
                    }
                }
            }
            kv::Operation::Delete | kv::Operation::Purge => self.0.remove(&entry.key),
        }
    }

    fn loading(&mut self) {
        self.0.loading();
    }

    fn loaded(&mut self) {
        self.0.loaded();
    }
}

/// The node's index of the `enforcements` bucket.
pub type EnforcementHistory = Mirrored<Enforcements>;

/// Starts following the `enforcements` bucket; returns at once.
pub fn start_enforcements(bus: &Bus) -> EnforcementHistory {
    Mirrored::start_from(
        bus.enforcements.raw(),
        "enforcements",
        Enforcements::default(),
        0,
    )
}

/// Which enforcements a list shows (StackStorm's `rule_ref`, `rule_id`,
/// `execution`, `trigger_instance`, `enforced_at`, `enforced_at_gt`,
/// `enforced_at_lt`), and in which order.
#[derive(Debug, Clone, Default)]
pub struct EnforcementList {
    pub rule_ref: Option<String>,
    pub rule_id: Option<String>,
    pub execution: Option<String>,
    pub trigger_instance: Option<String>,
    pub at: Option<Timestamp>,
    pub after: Option<Timestamp>,
    pub before: Option<Timestamp>,
    /// Oldest first (`sort=enforced_at`).
    pub ascending: bool,
    pub offset: usize,
    pub limit: usize,
}

impl EnforcementList {
    /// Whether `e` is shown: the filter read over one record.
    pub fn keeps(&self, e: &RuleEnforcement) -> bool {
        let eq = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| have == Some(w))
        };
        eq(&self.rule_ref, Some(&e.rule.rule_ref))
            && eq(&self.rule_id, Some(&e.rule.id))
            && eq(&self.execution, e.execution_id.as_deref())
            && eq(&self.trigger_instance, Some(&e.trigger_instance_id))
            && self.at.is_none_or(|t| e.enforced_at == t)
            && self.after.is_none_or(|t| e.enforced_at > t)
            && self.before.is_none_or(|t| e.enforced_at < t)
    }
}

/// One page of enforcements and how many match, from `history`; reads
/// the bucket's state and the page's records.
pub async fn enforcement_page(
    bus: &Bus,
    history: &EnforcementHistory,
    list: &EnforcementList,
) -> Result<(Vec<RuleEnforcement>, usize), EngineError> {
    let state = bucket_state(bus.enforcements.raw()).await?;
    let first = state.first_sequence;
    catch_up_to(state.last_sequence, || history.read().1).await;
    if history.read().0.stale_before(first) {
        history.write().0.forget_before(first);
    }
    let mut query = Query {
        after: list.after,
        before: list.before,
        at: list.at,
        ..Query::default()
    };
    query.fields[RULE_REF] = list.rule_ref.as_deref();
    query.fields[RULE_ID] = list.rule_id.as_deref();
    query.fields[EXECUTION] = list.execution.as_deref();
    query.fields[INSTANCE] = list.trigger_instance.as_deref();
    let page = history
        .read()
        .0
        .page(&query, list.ascending, list.offset, list.limit);
    let prefix = format!("$KV.{ENFORCEMENTS_BUCKET}.");
    let subjects: Vec<String> = page
        .hits
        .iter()
        .map(|h| format!("{prefix}{}", h.id))
        .collect();
    let mut records = read_last(bus, &format!("KV_{ENFORCEMENTS_BUCKET}"), &subjects).await?;
    let mut out = Vec::with_capacity(subjects.len());
    for subject in &subjects {
        if let Some(bytes) = records.remove(subject) {
            out.push(from_bytes(subject, &bytes)?);
        }
    }
    Ok((out, page.total))
}

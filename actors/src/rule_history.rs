//! What triggers fired and what rules did with them, indexed for their
//! lists (`GET /triggerinstances`, `GET /ruleenforcements`): each API node
//! follows the `TRIGGERS` stream and the `enforcements` bucket into a
//! [`RecordIndex`] apiece, so a list filters and counts in memory and reads
//! only its page's records, in one batched direct get.
//!
//! Trigger instances are followed with an ordered consumer
//! ([`InstanceHistory`]); enforcements with the bucket's mirror
//! ([`EnforcementHistory`]). Both are saved to snapshot files
//! ([`keep_snapshots`]) and start from them when they match the stream,
//! else from the stream's start. Neither stream reports what its age
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
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::kv;
use futures::StreamExt;
use roaring::RoaringBitmap;
use serde::Deserialize;
use squall_domain::execution::{RuleEnforcement, TriggerInstance};
use squall_domain::time::{serde_ts, Timestamp};
use tokio::sync::watch;

use crate::bus::{
    bucket_state, from_bytes, trigger_subject, Bus, ENFORCEMENTS_BUCKET, TRIGGERS_STREAM,
};
use crate::error::{bus_err, EngineError};
use crate::history::read_last;
use crate::instances::{stream_state, TriggerInstanceFilter};
use crate::mirror::{reach, Mirror, Mirrored};
use crate::record_index::{Entry, Query, RecordIndex};
use crate::snapshot::{self, Origin};
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
    applied: watch::Receiver<u64>,
    /// The sequence of the snapshot it was loaded from.
    loaded: Arc<OnceLock<u64>>,
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
    /// Starts following the stream: from the snapshot at `snapshot` when
    /// it is sound and of this stream (then only what came since is
    /// read), else from the stream's start; returns at once.
    pub fn start(bus: &Bus, snapshot: Option<PathBuf>) -> InstanceHistory {
        let state = Arc::new(RwLock::new(RecordIndex::default()));
        let ready = Arc::new(AtomicBool::new(false));
        let (applied_tx, applied) = watch::channel(0);
        let loaded = Arc::new(OnceLock::new());
        let stream = bus.triggers.clone();
        let (live, caught_up, loaded_at) =
            (Arc::clone(&state), Arc::clone(&ready), Arc::clone(&loaded));
        let task = tokio::spawn(async move {
            let mut next = 1;
            if let Some(path) = snapshot {
                if let Some((index, seq)) = load_index(&stream, path, INSTANCES_MAGIC).await {
                    *live.write().unwrap_or_else(PoisonError::into_inner) = index;
                    applied_tx.send_replace(seq);
                    let _ = loaded_at.set(seq);
                    next = seq + 1;
                }
            }
            follow_instances(stream, live, caught_up, applied_tx, next).await;
        });
        InstanceHistory {
            state,
            ready,
            applied,
            loaded,
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
        let state = stream_state(&bus.triggers).await?;
        let first = state.first_sequence;
        reach(
            &self.applied,
            state.last_sequence,
            crate::timing::LIST_CATCH_UP,
        )
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

/// Follows the `TRIGGERS` stream into `state` for ever from sequence
/// `next`: loads what it holds (then `ready`), and goes on from the last
/// sequence seen after an error.
async fn follow_instances(
    stream: async_nats::jetstream::stream::Stream,
    state: Arc<RwLock<RecordIndex>>,
    ready: Arc<AtomicBool>,
    applied: watch::Sender<u64>,
    mut next: u64,
) {
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
    applied: &watch::Sender<u64>,
    next: &mut u64,
) -> Result<(), EngineError> {
    let write = || state.write().unwrap_or_else(PoisonError::into_inner);
    let info = stream_state(stream).await?;
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
        applied.send_replace(seq);
        if seq >= info.last_sequence {
            loaded(state);
        }
    }
}

/// The enforcement index, kept by the bucket's mirror.
#[derive(Debug, Default)]
pub struct Enforcements {
    index: RecordIndex,
    /// The last revision folded in.
    revision: u64,
    /// The revision of the snapshot it was loaded from.
    loaded: Option<u64>,
}

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
        self.revision = self.revision.max(entry.revision);
        match entry.operation {
            kv::Operation::Put => {
                match serde_json::from_slice::<EnforcementSummary>(&entry.value) {
                    Ok(s) => self.index.insert(Entry {
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
            kv::Operation::Delete | kv::Operation::Purge => self.index.remove(&entry.key),
        }
    }

    fn loading(&mut self) {
        self.index.loading();
    }

    fn loaded(&mut self) {
        self.index.loaded();
    }
}

/// The node's index of the `enforcements` bucket.
pub type EnforcementHistory = Mirrored<Enforcements>;

/// Starts following the `enforcements` bucket, from the snapshot at
/// `snapshot` when it is sound and of this bucket (then only what changed
/// since is replayed); returns at once.
pub fn start_enforcements(bus: &Bus, snapshot: Option<PathBuf>) -> EnforcementHistory {
    let stream = bus.enforcements.raw().stream.clone();
    Mirrored::start_with(bus.enforcements.raw(), "enforcements", async move {
        let loaded = match snapshot {
            Some(path) => load_index(&stream, path, ENFORCEMENTS_MAGIC).await,
            None => None,
        };
        match loaded {
            Some((index, revision)) => (
                Enforcements {
                    index,
                    revision,
                    loaded: Some(revision),
                },
                revision,
            ),
            None => (Enforcements::default(), 0),
        }
    })
}

/// The kinds of the two indexes' snapshot files.
const INSTANCES_MAGIC: &[u8; 8] = b"SQTRIG01";
const ENFORCEMENTS_MAGIC: &[u8; 8] = b"SQENFO01";

/// The snapshot files of the trigger-instance and enforcement indexes
/// under a node's data directory.
pub fn snapshot_paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    let dir = data_dir.join("history");
    (
        dir.join("triggerinstances.snapshot"),
        dir.join("enforcements.snapshot"),
    )
}

/// The index saved at `path` (a snapshot of kind `magic`) and the
/// sequence it reflects, when it is sound and was taken from `stream` as
/// it is now (not another stream of that name, not ahead of it).
async fn load_index(
    stream: &async_nats::jetstream::stream::Stream,
    path: PathBuf,
    magic: &'static [u8; 8],
) -> Option<(RecordIndex, u64)> {
    let now = match snapshot::origin_of(stream).await {
        Ok(now) => now,
        Err(e) => {
            tracing::warn!(error = %e, "cannot check an index snapshot; rebuilding the index");
            return None;
        }
    };
    let shown = path.display().to_string();
    let decoded = tokio::task::spawn_blocking(move || {
        snapshot::read_file(&path).map(|bytes| RecordIndex::decode(&bytes, magic))
    })
    .await
    .ok()
    .flatten()?;
    match decoded.and_then(|(index, origin)| {
        origin.check(&now.stream, now.seq)?;
        Ok((index, origin.seq))
    }) {
        Ok((index, seq)) => {
            tracing::info!(path = %shown, records = index.len(), seq, "index loaded from its snapshot");
            Some((index, seq))
        }
        Err(e) => {
            tracing::warn!(path = %shown, error = %e, "index snapshot not used; rebuilding the index");
            None
        }
    }
}

/// Saves both indexes to their snapshot files under `data_dir` every
/// `period` while they change, and once more at `stop`.
pub async fn keep_snapshots(
    bus: Bus,
    instances: InstanceHistory,
    enforcements: EnforcementHistory,
    data_dir: PathBuf,
    period: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let (instances_path, enforcements_path) = snapshot_paths(&data_dir);
    let triggers = bus.triggers.clone();
    let saving_instances = snapshot::keep(period, stop.clone(), "triggerinstances", |saved| {
        let seq = *instances.applied.borrow();
        let changed =
            instances.is_ready() && saved != Some(seq) && instances.loaded.get() != Some(&seq);
        let (instances, triggers, path) =
            (instances.clone(), triggers.clone(), instances_path.clone());
        async move {
            if !changed {
                return Ok(None);
            }
            let stream = snapshot::origin_of(&triggers).await?.stream;
            let bytes = instances
                .read()
                .snapshot(INSTANCES_MAGIC, &Origin { stream, seq });
            snapshot::save(&path, bytes).await.map(|()| Some(seq))
        }
    });
    let bucket = bus.enforcements.raw().stream.clone();
    let saving_enforcements = snapshot::keep(period, stop, "enforcements", |saved| {
        let (revision, loaded) = {
            let e = enforcements.read();
            (e.revision, e.loaded)
        };
        let changed =
            enforcements.is_ready() && saved != Some(revision) && loaded != Some(revision);
        let (enforcements, bucket, path) = (
            enforcements.clone(),
            bucket.clone(),
            enforcements_path.clone(),
        );
        async move {
            if !changed {
                return Ok(None);
            }
            let stream = snapshot::origin_of(&bucket).await?.stream;
            let (bytes, seq) = {
                let e = enforcements.read();
                let origin = Origin {
                    stream,
                    seq: e.revision,
                };
                (e.index.snapshot(ENFORCEMENTS_MAGIC, &origin), origin.seq)
            };
            snapshot::save(&path, bytes).await.map(|()| Some(seq))
        }
    });
    futures::join!(saving_instances, saving_enforcements);
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
    history
        .reach(state.last_sequence, crate::timing::LIST_CATCH_UP)
        .await;
    if history.read().index.stale_before(first) {
        history.write().index.forget_before(first);
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
        .index
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

//! The bus: every JetStream stream and KV bucket Squall uses, defined in
//! code and created idempotently, plus the few publish/read helpers the
//! actors share.
//!
//! | name | kind | subjects / keys |
//! | --- | --- | --- |
//! | `TRIGGERS` | limits stream | `squall.trigger.<partition>.<instance id>` |
//! | `EXECUTIONS` | work-queue stream | `squall.exec.<pool>` |
//! | `OUTPUT` | limits stream | `squall.output.<execution id>`: stdout/stderr chunks |
//! | `WORKFLOWS` | work-queue stream | `squall.wf.<partition>.<workflow id>`: workflow events |
//! | `workflows` | KV | `<workflow execution id>` → workflow state: see [`crate::workflows`] |
//! | `content` | KV | `packs.<pack ref>` → [`PackBundle`](squall_domain::model::PackBundle) |
//! | `executions` | KV | `<execution id>` → [`ExecutionRecord`] |
//! | `enforcements` | KV | `<enforcement id>` → [`RuleEnforcement`] |
//! | `cluster` | KV | `partitions` → the partition count fixed at creation |
//! | `nodes` | KV, entries expire | `<node name>` → heartbeat: see [`crate::cluster`] |
//! | `partitions` | KV | `<role>.<partition>` → lease: see [`crate::cluster`] |
//! | `auth`, `tokens` | KV | users, API keys and tokens: see [`crate::auth`] |
//! | `keys` | KV | the datastore: see [`crate::keys`] |
//! | `configs` | KV | `<pack>` → pack config values: see [`crate::configs`] |
//! | `concurrency` | KV | concurrency policies' slots: see [`crate::policies`] |

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use squall_domain::execution::{ExecutionRecord, RuleEnforcement, TriggerInstance};
use squall_domain::ids;
use squall_domain::time::Timestamp;

use crate::auth;
use crate::cluster;
use crate::error::{bus_err, EngineError};
use crate::keys;
use crate::timing::DUPLICATE_WINDOW;

/// Stream of trigger instances.
pub const TRIGGERS_STREAM: &str = "TRIGGERS";
/// Work-queue stream of execution requests.
pub const EXECUTIONS_STREAM: &str = "EXECUTIONS";
/// Stream of executions' output chunks, as runners produce them.
pub const OUTPUT_STREAM: &str = "OUTPUT";
/// How long output chunks are kept (the final result keeps all output).
pub const OUTPUT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most bytes of output chunks kept; the oldest go first.
pub const OUTPUT_MAX_BYTES: i64 = 1 << 30;
/// Work-queue stream of workflow events, partitioned by workflow id.
pub const WORKFLOWS_STREAM: &str = "WORKFLOWS";
/// KV bucket of workflow states.
pub const WORKFLOWS_BUCKET: &str = "workflows";
/// KV bucket of registered content.
pub const CONTENT_BUCKET: &str = "content";
/// KV bucket of execution records.
pub const EXECUTIONS_BUCKET: &str = "executions";
/// KV bucket of rule enforcements.
pub const ENFORCEMENTS_BUCKET: &str = "enforcements";
/// KV bucket of cluster-wide settings.
pub const CLUSTER_BUCKET: &str = "cluster";
/// KV bucket: the last tick each interval timer fired.
pub const TIMERS_BUCKET: &str = "timers";
/// KV bucket of Python sensors' states, by sensor reference.
pub const SENSORS_BUCKET: &str = "sensors";

/// How long trigger instances are kept.
pub const TRIGGER_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Largest value the content bucket accepts (one whole pack).
pub const MAX_PACK_BYTES: i32 = 8 * 1024 * 1024;

/// A bucket's current stream state. (`kv::Store::status` answers from the
/// info cached when the bucket was opened, which may predate every entry.)
pub async fn bucket_state(store: &kv::Store) -> Result<stream::State, EngineError> {
    Ok(store
        .stream
        .clone()
        .info()
        .await
        .map_err(|e| bus_err(&format!("{} status", store.name), e))?
        .state
        .clone())
}

/// How long listing a bucket's keys may take before it is given up.
const LIST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Header carrying W3C trace context across the bus.
pub const TRACEPARENT: &str = "traceparent";

/// Subject of one trigger instance.
pub fn trigger_subject(partition: u32, instance_id: &str) -> String {
    format!("squall.trigger.{partition}.{instance_id}")
}

/// Subjects of every trigger instance of one partition.
pub fn trigger_partition_filter(partition: u32) -> String {
    format!("squall.trigger.{partition}.>")
}

/// Core NATS subject asking the node running an execution to cancel it.
pub fn cancel_subject(execution_id: &str) -> String {
    format!("squall.cancel.{execution_id}")
}

/// Core NATS subject asking node `node` whether it still runs an
/// execution; it answers [`STILL_RUNNING`] or anything else for "no".
pub fn running_subject(execution_id: &str, node: &str) -> String {
    format!("squall.running.{execution_id}.{node}")
}

/// The answer of a node that runs the execution it was asked about.
pub const STILL_RUNNING: &[u8] = b"running";

/// Core NATS subject of an execution's live output chunks.
pub fn output_subject(execution_id: &str) -> String {
    format!("squall.output.{execution_id}")
}

/// Subject of execution requests for a runner pool.
pub fn execution_subject(pool: &str) -> String {
    format!("squall.exec.{pool}")
}

/// The streams, as created on a cluster with `replicas` JetStream servers
/// per stream.
pub fn stream_configs(replicas: usize) -> Vec<stream::Config> {
    // A message is removed once acknowledged; repeats within the window
    // are dropped by their `Nats-Msg-Id`.
    let work_queue = |name: &str, description: &str, subjects: &str| stream::Config {
        name: name.into(),
        description: Some(description.into()),
        subjects: vec![subjects.into()],
        retention: stream::RetentionPolicy::WorkQueue,
        duplicate_window: DUPLICATE_WINDOW,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    };
    vec![
        stream::Config {
            name: TRIGGERS_STREAM.into(),
            description: Some("Every trigger instance, partitioned by id.".into()),
            subjects: vec!["squall.trigger.>".into()],
            retention: stream::RetentionPolicy::Limits,
            max_age: TRIGGER_RETENTION,
            duplicate_window: DUPLICATE_WINDOW,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            allow_direct: true,
            ..Default::default()
        },
        work_queue(
            EXECUTIONS_STREAM,
            "Execution requests, pulled by runner pools.",
            "squall.exec.>",
        ),
        work_queue(
            WORKFLOWS_STREAM,
            "Workflow events (start, task done, cancel), by partition.",
            "squall.wf.>",
        ),
        stream::Config {
            name: OUTPUT_STREAM.into(),
            description: Some("Executions' stdout/stderr chunks, by execution id.".into()),
            subjects: vec!["squall.output.>".into()],
            retention: stream::RetentionPolicy::Limits,
            max_age: OUTPUT_RETENTION,
            max_bytes: OUTPUT_MAX_BYTES,
            discard: stream::DiscardPolicy::Old,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        },
    ]
}

/// The KV buckets, as created with `replicas` replicas.
pub fn kv_configs(replicas: usize) -> Vec<kv::Config> {
    let bucket = |name: &str, description: &str, history: i64| kv::Config {
        bucket: name.into(),
        description: description.into(),
        history,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    };
    vec![
        kv::Config {
            max_value_size: MAX_PACK_BYTES,
            ..bucket(CONTENT_BUCKET, "Registered packs, one value per pack.", 5)
        },
        bucket(EXECUTIONS_BUCKET, "Execution records by id.", 1),
        bucket(ENFORCEMENTS_BUCKET, "Rule enforcements by id.", 1),
        kv::Config {
            max_value_size: MAX_PACK_BYTES,
            ..bucket(
                WORKFLOWS_BUCKET,
                "Workflow states by workflow execution id.",
                1,
            )
        },
        bucket(CLUSTER_BUCKET, "Cluster-wide settings.", 1),
        bucket(
            TIMERS_BUCKET,
            "The last tick each interval timer fired, for its next owner.",
            1,
        ),
        bucket(
            SENSORS_BUCKET,
            "Python sensors' states (running, restarting, failed...), by sensor reference.",
            1,
        ),
        kv::Config {
            max_age: crate::timing::NODE_ENTRY_MAX_AGE,
            ..bucket(
                cluster::NODES_BUCKET,
                "Node heartbeats: roles, pools, partitions owned.",
                1,
            )
        },
        bucket(
            cluster::LEASES_BUCKET,
            "Partition leases by role and partition (compare-and-swap only).",
            1,
        ),
        bucket(keys::KEYS_BUCKET, "The datastore; secret values sealed.", 1),
        bucket(
            crate::configs::CONFIGS_BUCKET,
            "Pack config values by pack.",
            1,
        ),
        bucket(
            crate::policies::CONCURRENCY_BUCKET,
            "Concurrency policies' slots: executions holding one, executions waiting.",
            1,
        ),
        bucket(
            auth::AUTH_BUCKET,
            "Users (hashed passwords) and API keys (hashed).",
            1,
        ),
        kv::Config {
            max_age: auth::MAX_TOKEN_TTL,
            ..bucket(
                auth::TOKENS_BUCKET,
                "Access tokens by hash; entries expire.",
                1,
            )
        },
    ]
}

/// A request to run an execution, as carried by the `EXECUTIONS` stream.
/// The record in the `executions` bucket is the source of truth.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecutionRequest {
    #[serde(default)]
    pub v: u32,
    pub execution_id: String,
    /// The record as its creation stored it, with that revision, on the
    /// first request only: a runner claims it with one compare-and-swap
    /// without reading it first (a record changed since fails the swap and
    /// is read afresh).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<Box<CreatedRecord>>,
}

/// An execution record and the revision its creation returned.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedRecord {
    pub revision: u64,
    pub record: ExecutionRecord,
}

/// Handles on every stream and bucket, shared by all actors of a node.
/// Cheap to clone (one reference count): actors and request handlers each
/// hold one, and the handles inside carry whole stream descriptions.
#[derive(Clone)]
pub struct Bus(Arc<BusHandles>);

impl std::ops::Deref for Bus {
    type Target = BusHandles;

    fn deref(&self) -> &BusHandles {
        &self.0
    }
}

/// What a [`Bus`] holds.
pub struct BusHandles {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub content: kv::Store,
    pub executions: kv::Store,
    pub enforcements: kv::Store,
    pub workflows: kv::Store,
    pub configs: kv::Store,
    /// Concurrency policies' slots ([`crate::policies`]).
    pub concurrency: kv::Store,
    pub triggers: stream::Stream,
    pub output: stream::Stream,
    /// Number of partitions, fixed when the cluster was created.
    pub partitions: u32,
    /// Who reacts to an execution's end, as this node's catalog knows it
    /// ([`crate::notifier::EndListeners`]); kept by the content watcher.
    pub end_listeners: std::sync::RwLock<Arc<crate::notifier::EndListeners>>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

impl Bus {
    /// Creates (or updates) every stream and bucket, then fixes or reads
    /// the cluster's partition count. `partitions` is what this node asks
    /// for; a cluster created with another count is an error.
    pub async fn open(
        client: async_nats::Client,
        replicas: usize,
        partitions: u32,
    ) -> Result<Bus, EngineError> {
        let js = jetstream::new(client.clone());
        for cfg in stream_configs(replicas) {
            let name = cfg.name.clone();
            js.create_or_update_stream(cfg)
                .await
                .map_err(|e| bus_err(&format!("create stream {name}"), e))?;
        }
        for cfg in kv_configs(replicas) {
            let name = cfg.bucket.clone();
            js.create_or_update_key_value(cfg)
                .await
                .map_err(|e| bus_err(&format!("create bucket {name}"), e))?;
        }
        let kv = |name: &'static str| {
            let js = js.clone();
            async move {
                js.get_key_value(name)
                    .await
                    .map_err(|e| bus_err(&format!("open bucket {name}"), e))
            }
        };
        let cluster = kv(CLUSTER_BUCKET).await?;
        let partitions = fix_partitions(&cluster, partitions).await?;
        let triggers = js
            .get_stream(TRIGGERS_STREAM)
            .await
            .map_err(|e| bus_err("open stream TRIGGERS", e))?;
        let output = js
            .get_stream(OUTPUT_STREAM)
            .await
            .map_err(|e| bus_err("open stream OUTPUT", e))?;
        Ok(Bus(Arc::new(BusHandles {
            output,
            content: kv(CONTENT_BUCKET).await?,
            executions: kv(EXECUTIONS_BUCKET).await?,
            enforcements: kv(ENFORCEMENTS_BUCKET).await?,
            workflows: kv(WORKFLOWS_BUCKET).await?,
            configs: kv(crate::configs::CONFIGS_BUCKET).await?,
            concurrency: kv(crate::policies::CONCURRENCY_BUCKET).await?,
            triggers,
            partitions,
            end_listeners: Default::default(),
            js,
            client,
        })))
    }

    /// Whether an ended `record`'s actiontrigger has anyone to react to it.
    pub fn wants_end(&self, record: &ExecutionRecord) -> bool {
        self.end_listeners
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .want(record)
    }

    /// Takes who reacts to ends from a new catalog.
    pub fn set_end_listeners(&self, catalog: &crate::catalog::Catalog) {
        let listeners = Arc::new(crate::notifier::EndListeners::of(catalog));
        *self
            .end_listeners
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = listeners;
    }

    /// The partition that owns a trigger instance or execution id.
    pub fn partition_of(&self, id: &str) -> u32 {
        ids::partition_of(id, self.partitions)
    }

    /// Publishes a trigger instance to its partition; the instance id is the
    /// `Nats-Msg-Id`, so publishing the same instance twice stores it once.
    pub async fn publish_trigger(&self, instance: &TriggerInstance) -> Result<(), EngineError> {
        let subject = trigger_subject(self.partition_of(&instance.id), &instance.id);
        let payload = to_bytes(instance)?;
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, traceparent(&instance.id).as_str());
        publish(&self.js, subject, &instance.id, headers, payload).await?;
        crate::metrics::trigger_published();
        Ok(())
    }

    /// An execution's output chunks (the JSON bodies runners publish) with
    /// their stream sequence, from the first one on and then live as they
    /// come; with how many were stored when the read began.
    pub async fn output_chunks(
        &self,
        execution_id: &str,
    ) -> Result<(u64, futures::stream::BoxStream<'static, (u64, Bytes)>), EngineError> {
        use async_nats::jetstream::consumer::{pull, DeliverPolicy};
        if !ids::is_id(execution_id) {
            return Ok((0, futures::stream::empty().boxed()));
        }
        let consumer = self
            .output
            .create_consumer(pull::OrderedConfig {
                filter_subject: output_subject(execution_id),
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| bus_err("read output", e))?;
        let stored = consumer.cached_info().num_pending;
        let chunks = consumer
            .messages()
            .await
            .map_err(|e| bus_err("read output", e))?
            .filter_map(|m| async move {
                let m = m.ok()?;
                let seq = m.info().ok()?.stream_sequence;
                Some((seq, m.message.payload))
            })
            .boxed();
        Ok((stored, chunks))
    }

    /// Stream sequence of an execution's last stored output chunk, if any.
    pub async fn last_output_sequence(
        &self,
        execution_id: &str,
    ) -> Result<Option<u64>, EngineError> {
        if !ids::is_id(execution_id) {
            return Ok(None);
        }
        match self
            .output
            .get_last_raw_message_by_subject(&output_subject(execution_id))
            .await
        {
            Ok(msg) => Ok(Some(msg.sequence)),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(bus_err("read output", e)),
        }
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
        let mut stream = self.triggers.clone();
        let state = stream
            .info()
            .await
            .map_err(|e| bus_err("trigger stream info", e))?
            .state
            .clone();
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

    /// Every rule enforcement id, newest first (ids begin with their
    /// second).
    /// A listing that does not finish within [`LIST_TIMEOUT`] (its consumer
    /// stalled: a server went away) is an error to retry, not a hang.
    pub async fn enforcement_ids(&self) -> Result<Vec<String>, EngineError> {
        let list = async {
            let mut keys = self
                .enforcements
                .keys()
                .await
                .map_err(|e| bus_err("list enforcements", e))?;
            let mut ids = Vec::new();
            while let Some(k) = keys.next().await {
                ids.push(k.map_err(|e| bus_err("list enforcements", e))?);
            }
            Ok::<_, EngineError>(ids)
        };
        let mut ids = tokio::time::timeout(LIST_TIMEOUT, list)
            .await
            .map_err(|_| bus_err("list enforcements", "no answer in time; try again"))??;
        ids.sort_unstable_by(|a, b| b.cmp(a));
        Ok(ids)
    }

    /// One rule enforcement.
    pub async fn enforcement(&self, id: &str) -> Result<Option<RuleEnforcement>, EngineError> {
        match self
            .enforcements
            .get(id)
            .await
            .map_err(|e| bus_err("read enforcement", e))?
        {
            Some(bytes) => Ok(Some(from_bytes(id, &bytes)?)),
            None => Ok(None),
        }
    }

    /// Asks whichever node runs `execution_id` to stop it (core NATS: a
    /// node that is gone misses it, and its executions end `abandoned`).
    pub async fn request_cancel(&self, execution_id: &str) -> Result<(), EngineError> {
        self.client
            .publish(cancel_subject(execution_id), Bytes::new())
            .await
            .map_err(|e| bus_err("publish cancel", e))?;
        self.client
            .flush()
            .await
            .map_err(|e| bus_err("publish cancel", e))
    }

    /// Requests a run of an execution whose record is already stored, with
    /// `msg_id` as its `Nats-Msg-Id` (the execution id for the first
    /// request): a repeat within the duplicate window is dropped. Its trace
    /// is the record's (`context.trace_context`).
    /// `created_revision` is the revision the record's creation returned,
    /// for the first request.
    pub async fn request_execution(
        &self,
        record: &ExecutionRecord,
        msg_id: &str,
        created_revision: Option<u64>,
    ) -> Result<(), EngineError> {
        let request = ExecutionRequest {
            v: 1,
            execution_id: record.id.clone(),
            created: created_revision.map(|revision| {
                Box::new(CreatedRecord {
                    revision,
                    record: record.clone(),
                })
            }),
        };
        let trace_id = record
            .context
            .get("trace_context")
            .and_then(|t| t.get("id_"))
            .and_then(serde_json::Value::as_str)
            .unwrap_or(&record.id);
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, traceparent(trace_id).as_str());
        publish(
            &self.js,
            execution_subject(&record.pool),
            msg_id,
            headers,
            to_bytes(&request)?,
        )
        .await
    }

    /// Reads an execution record and its revision.
    pub async fn execution(&self, id: &str) -> Result<Option<(ExecutionRecord, u64)>, EngineError> {
        if id.is_empty() || id.contains(['.', '*', '>', ' ']) {
            return Ok(None);
        }
        match self
            .executions
            .entry(id)
            .await
            .map_err(|e| bus_err("read execution", e))?
        {
            Some(e) if e.operation == kv::Operation::Put => {
                Ok(Some((from_bytes(id, &e.value)?, e.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Stores a new execution record and returns its revision; `None` when
    /// one with that id exists.
    pub async fn create_execution(
        &self,
        record: &ExecutionRecord,
    ) -> Result<Option<u64>, EngineError> {
        match self.executions.create(&record.id, to_bytes(record)?).await {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(bus_err("create execution", e)),
        }
    }

    /// Replaces an execution record if it is still at `revision`; returns
    /// the new revision, or `None` when someone else changed it first. A
    /// workflow task's end, pause and resume also tell its workflow, and an
    /// end gives back the execution's concurrency slots and publishes its
    /// `core.st2.generic.actiontrigger` (every such write passes here:
    /// runners, cancels, inquiries, expiry, workflows).
    pub async fn update_execution(
        &self,
        record: &ExecutionRecord,
        revision: u64,
    ) -> Result<Option<u64>, EngineError> {
        match self
            .executions
            .update(&record.id, to_bytes(record)?, revision)
            .await
        {
            Ok(rev) => {
                crate::notifier::ended(self, record).await?;
                // A workflow's task that ended, paused or resumed tells
                // its workflow.
                crate::workflows::notify_parent(self, record).await?;
                Ok(Some(rev))
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(bus_err("update execution", e)),
        }
    }

    /// Stores a rule enforcement (idempotent: same id, same content).
    pub async fn put_enforcement(&self, enforcement: &RuleEnforcement) -> Result<(), EngineError> {
        self.enforcements
            .put(&enforcement.id, to_bytes(enforcement)?)
            .await
            .map(|_| ())
            .map_err(|e| bus_err("store enforcement", e))
    }
}

/// The W3C `traceparent` for work caused by `cause_id`: the trace id is
/// derived from the originating trigger instance (or execution) id, so every
/// hop of one cause shares a trace.
pub fn traceparent(cause_id: &str) -> String {
    let trace = format!("{:0>32}", cause_id);
    let span: String = cause_id.chars().rev().take(16).collect();
    format!("00-{}-{:0>16}-01", &trace[trace.len() - 32..], span)
}

pub(crate) async fn publish(
    js: &jetstream::Context,
    subject: String,
    msg_id: &str,
    headers: HeaderMap,
    payload: Bytes,
) -> Result<(), EngineError> {
    let publish = jetstream::message::PublishMessage::build()
        .payload(payload)
        .headers(headers)
        .message_id(msg_id);
    js.send_publish(subject, publish)
        .await
        .map_err(|e| bus_err("publish", e))?
        .await
        .map_err(|e| bus_err("publish ack", e))?;
    Ok(())
}

async fn fix_partitions(cluster: &kv::Store, wanted: u32) -> Result<u32, EngineError> {
    let wanted = wanted.max(1);
    if let Ok(_rev) = cluster
        .create("partitions", Bytes::from(wanted.to_string()))
        .await
    {
        return Ok(wanted);
    }
    let stored = cluster
        .get("partitions")
        .await
        .map_err(|e| bus_err("read partition count", e))?
        .ok_or_else(|| EngineError::Bus {
            op: "read partition count".into(),
            message: "the cluster bucket has no partition count".into(),
        })?;
    let stored: u32 = std::str::from_utf8(&stored)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| EngineError::Corrupt {
            key: "cluster/partitions".into(),
            message: "not a number".into(),
        })?;
    if stored != wanted {
        return Err(EngineError::Config(format!(
            "this cluster was created with {stored} partitions and the count is fixed; \
             set `partitions: {stored}` in the node config (asked for {wanted})"
        )));
    }
    Ok(stored)
}

/// Serialises a record for the bus.
pub fn to_bytes<T: Serialize>(value: &T) -> Result<Bytes, EngineError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| EngineError::Corrupt {
            key: "serialise".into(),
            message: e.to_string(),
        })
}

/// Parses a record read from the bus; `key` names it in the error.
pub fn from_bytes<T: for<'de> Deserialize<'de>>(key: &str, bytes: &[u8]) -> Result<T, EngineError> {
    serde_json::from_slice(bytes).map_err(|e| EngineError::Corrupt {
        key: key.to_string(),
        message: e.to_string(),
    })
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
    fn streams_are_defined_with_dedup_and_work_queue() {
        let streams = stream_configs(3);
        let exec = streams
            .iter()
            .find(|s| s.name == EXECUTIONS_STREAM)
            .unwrap();
        assert_eq!(exec.retention, stream::RetentionPolicy::WorkQueue);
        assert_eq!(exec.num_replicas, 3);
        let trig = streams.iter().find(|s| s.name == TRIGGERS_STREAM).unwrap();
        assert!(trig.allow_direct, "trigger instances are read by id");
        assert_eq!(trig.duplicate_window, DUPLICATE_WINDOW);
        assert!(kv_configs(1).iter().any(|b| b.bucket == EXECUTIONS_BUCKET));
    }

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

    #[test]
    fn subjects_carry_partition_and_id() {
        assert_eq!(trigger_subject(7, "abc"), "squall.trigger.7.abc");
        assert_eq!(trigger_partition_filter(7), "squall.trigger.7.>");
        assert_eq!(execution_subject("default"), "squall.exec.default");
    }

    #[test]
    fn traceparent_is_w3c_shaped() {
        let tp = traceparent("6740f0aa0123456789abcdef");
        let parts: Vec<_> = tp.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(parts[1].len(), 32);
        assert_eq!(parts[2].len(), 16);
    }
}

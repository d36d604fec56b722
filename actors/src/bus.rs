//! The bus: the transport every module shares — the NATS connection, the
//! streams and buckets the node's [`Layout`] declares (created
//! idempotently, each bucket opened once), typed buckets ([`Bucket`]),
//! deduplicated publish, and the subjects of the spine. It knows no
//! module of the engine: each module declares its own buckets (`auth`,
//! `keys`, `cluster`, `configs`, `policies`, `sensors`...) and the node
//! assembles them ([`crate::node::layout`]); what a record's write sets
//! off belongs to the execution store ([`crate::store`]).
//!
//! The spine, declared here because every stage of an execution shares it:
//!
//! | name | kind | subjects / keys |
//! | --- | --- | --- |
//! | `TRIGGERS` | limits stream | `squall.trigger.<partition>.<instance id>` |
//! | `EXECUTIONS` | work-queue stream | `squall.exec.<pool>` |
//! | `OUTPUT` | limits stream | `squall.output.<execution id>`: stdout/stderr chunks |
//! | `WORKFLOWS` | work-queue stream | `squall.wf.<partition>.<workflow id>`: workflow events |
//! | `workflows` | KV | `<workflow execution id>` → workflow state: see [`crate::workflows`] |
//! | `content` | KV | `packs.<pack ref>` → [`PackBundle`](squall_domain::model::PackBundle) |
//! | `executions` | KV | `<execution id>` → [`ExecutionRecord`](squall_domain::execution::ExecutionRecord) |
//! | `enforcements` | KV | `<enforcement id>` → [`RuleEnforcement`](squall_domain::execution::RuleEnforcement) |
//! | `cluster` | KV | `partitions` → the partition count fixed at creation |
//! | `timers`, `sensors` | KV | timers' last ticks, sensors' states: see [`crate::sensors`] |

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use squall_domain::execution::{ExecutionRecord, RuleEnforcement};
use squall_domain::ids;
use squall_domain::notify::EndListeners;

use crate::error::{bus_err, EngineError};
use crate::timing::{CONFLICT_ATTEMPTS, DUPLICATE_WINDOW, OUTPUT_RETENTION, TRIGGER_RETENTION};

/// Stream of trigger instances.
pub const TRIGGERS_STREAM: &str = "TRIGGERS";
/// Work-queue stream of execution requests.
pub const EXECUTIONS_STREAM: &str = "EXECUTIONS";
/// Stream of executions' output chunks, as runners produce them.
pub const OUTPUT_STREAM: &str = "OUTPUT";
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

pub(crate) use crate::timing::LIST_TIMEOUT;

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

/// A bucket's configuration: file storage, `replicas` replicas, `history`
/// values kept per key. Modules declare theirs with it.
pub fn bucket(name: &str, description: &str, history: i64, replicas: usize) -> kv::Config {
    kv::Config {
        bucket: name.into(),
        description: description.into(),
        history,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// The spine's buckets, as created with `replicas` replicas.
pub fn kv_configs(replicas: usize) -> Vec<kv::Config> {
    let bucket =
        |name: &str, description: &str, history: i64| bucket(name, description, history, replicas);
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
    ]
}

/// Every stream and bucket a node uses, as its modules declare them;
/// [`Bus::open`] creates them all.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    pub streams: Vec<stream::Config>,
    pub buckets: Vec<kv::Config>,
}

impl Layout {
    /// The spine's streams and buckets, with `replicas` replicas.
    pub fn spine(replicas: usize) -> Layout {
        Layout {
            streams: stream_configs(replicas),
            buckets: kv_configs(replicas),
        }
    }

    /// Adds a module's buckets.
    pub fn with_buckets(mut self, buckets: impl IntoIterator<Item = kv::Config>) -> Layout {
        self.buckets.extend(buckets);
        self
    }

    /// Adds a module's streams.
    pub fn with_streams(mut self, streams: impl IntoIterator<Item = stream::Config>) -> Layout {
        self.streams.extend(streams);
        self
    }
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
    pub executions: Bucket<ExecutionRecord>,
    pub enforcements: Bucket<RuleEnforcement>,
    pub workflows: kv::Store,
    pub triggers: stream::Stream,
    pub output: stream::Stream,
    /// Every declared bucket, opened once ([`Bus::bucket`]).
    buckets: HashMap<String, kv::Store>,
    /// Number of partitions, fixed when the cluster was created.
    pub partitions: u32,
    /// Who reacts to an execution's end, as this node's catalog knows it;
    /// kept by the content watcher.
    pub end_listeners: std::sync::RwLock<Arc<EndListeners>>,
    /// The node's audit emitter (records nothing until started).
    pub audit: crate::audit_event::Audit,
    /// The bus operations this node awaited, by kind.
    pub ops: Arc<BusOps>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

impl Bus {
    /// Creates (or updates) every stream and bucket of `layout` and opens
    /// the buckets, then fixes or reads the cluster's partition count.
    /// `partitions` is what this node asks for; a cluster created with
    /// another count is an error.
    pub async fn open(
        client: async_nats::Client,
        layout: Layout,
        partitions: u32,
    ) -> Result<Bus, EngineError> {
        let js = jetstream::new(client.clone());
        for cfg in layout.streams {
            let name = cfg.name.clone();
            js.create_or_update_stream(cfg)
                .await
                .map_err(|e| bus_err(&format!("create stream {name}"), e))?;
        }
        let mut buckets = HashMap::new();
        for cfg in layout.buckets {
            let name = cfg.bucket.clone();
            let store = js
                .create_or_update_key_value(cfg)
                .await
                .map_err(|e| bus_err(&format!("create bucket {name}"), e))?;
            buckets.insert(name, store);
        }
        let kv = |name: &str| {
            buckets.get(name).cloned().ok_or_else(|| {
                EngineError::Config(format!("bucket {name} is not in the node's layout"))
            })
        };
        let partitions = fix_partitions(&kv(CLUSTER_BUCKET)?, partitions).await?;
        let triggers = js
            .get_stream(TRIGGERS_STREAM)
            .await
            .map_err(|e| bus_err("open stream TRIGGERS", e))?;
        let output = js
            .get_stream(OUTPUT_STREAM)
            .await
            .map_err(|e| bus_err("open stream OUTPUT", e))?;
        let ops = Arc::new(BusOps::default());
        Ok(Bus(Arc::new(BusHandles {
            output,
            content: kv(CONTENT_BUCKET)?,
            executions: Bucket::counted(kv(EXECUTIONS_BUCKET)?, &ops),
            enforcements: Bucket::counted(kv(ENFORCEMENTS_BUCKET)?, &ops),
            ops,
            workflows: kv(WORKFLOWS_BUCKET)?,
            triggers,
            buckets,
            partitions,
            end_listeners: Default::default(),
            audit: Default::default(),
            js,
            client,
        })))
    }

    /// A bucket the node's layout declared, opened when the bus was.
    pub fn bucket(&self, name: &str) -> Result<&kv::Store, EngineError> {
        self.buckets.get(name).ok_or_else(|| {
            EngineError::Config(format!("bucket {name} is not in the node's layout"))
        })
    }

    /// Whether an ended `record`'s actiontrigger has anyone to react to it.
    pub fn wants_end(&self, record: &ExecutionRecord) -> bool {
        self.end_listeners
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .want(record)
    }

    /// Takes who reacts to ends (from a new catalog).
    pub fn set_end_listeners(&self, listeners: EndListeners) {
        let listeners = Arc::new(listeners);
        *self
            .end_listeners
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = listeners;
    }

    /// The partition that owns a trigger instance or execution id.
    pub fn partition_of(&self, id: &str) -> u32 {
        ids::partition_of(id, self.partitions)
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
}

/// A KV bucket whose values are `T`, as JSON. Reads give the value with
/// its revision; writes are create-once, compare-and-swap, or [`modify`]
/// (read, change, swap; retried on conflicts by one policy,
/// [`CONFLICT_ATTEMPTS`]).
///
/// [`modify`]: Bucket::modify
pub struct Bucket<T> {
    store: kv::Store,
    /// Where its operations are counted, for a bucket of the spine.
    ops: Option<Arc<BusOps>>,
    values: PhantomData<fn() -> T>,
}

impl<T> Clone for Bucket<T> {
    fn clone(&self) -> Self {
        Bucket {
            store: self.store.clone(),
            ops: self.ops.clone(),
            values: PhantomData,
        }
    }
}

/// What a [`Bucket::modify`] step decides for the value it read.
#[derive(Debug)]
pub enum Change<T, R> {
    /// Store this value (created when there was none), then answer `R`.
    Write(T, R),
    /// Store nothing; answer `R`.
    Keep(R),
}

impl<T: Serialize + DeserializeOwned> Bucket<T> {
    pub fn new(store: kv::Store) -> Bucket<T> {
        Bucket {
            store,
            ops: None,
            values: PhantomData,
        }
    }

    /// A bucket whose operations are counted in `ops`.
    pub fn counted(store: kv::Store, ops: &Arc<BusOps>) -> Bucket<T> {
        Bucket {
            store,
            ops: Some(ops.clone()),
            values: PhantomData,
        }
    }

    fn count(&self, op: BusOp) {
        if let Some(ops) = &self.ops {
            ops.count(op);
        }
    }

    /// The untyped bucket (for watches and key listings).
    pub fn raw(&self) -> &kv::Store {
        &self.store
    }

    /// The value of `key` and its revision; `None` when there is none (or
    /// it was deleted).
    pub async fn get(&self, key: &str) -> Result<Option<(T, u64)>, EngineError> {
        self.count(BusOp::Get);
        match self
            .store
            .entry(key)
            .await
            .map_err(|e| bus_err(&format!("read {}", self.store.name), e))?
        {
            Some(e) if e.operation == kv::Operation::Put => {
                Ok(Some((from_bytes(key, &e.value)?, e.revision)))
            }
            _ => Ok(None),
        }
    }

    /// [`Bucket::get`] answered by the stream's leader: never by a replica
    /// that has not applied the latest write yet (a bucket's reads may be
    /// served by any replica), for a read that must see a write
    /// acknowledged before the message that led to it.
    pub async fn get_from_leader(&self, key: &str) -> Result<Option<(T, u64)>, EngineError> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        self.count(BusOp::Get);
        let subject = format!("{}{key}", self.store.prefix);
        match self
            .store
            .stream
            .get_last_raw_message_by_subject(&subject)
            .await
        {
            Ok(m) if m.headers.get("KV-Operation").is_none() => {
                Ok(Some((from_bytes(key, &m.payload)?, m.sequence)))
            }
            Ok(_) => Ok(None),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(bus_err(&format!("read {}", self.store.name), e)),
        }
    }

    /// Stores `value` under a new `key` and returns its revision; `None`
    /// when the key exists.
    pub async fn create(&self, key: &str, value: &T) -> Result<Option<u64>, EngineError> {
        self.count(BusOp::Create);
        match self.store.create(key, to_bytes(value)?).await {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(bus_err(&format!("create in {}", self.store.name), e)),
        }
    }

    /// Replaces `key` if it is still at `revision`; the new revision, or
    /// `None` when someone changed it first.
    pub async fn update(
        &self,
        key: &str,
        value: &T,
        revision: u64,
    ) -> Result<Option<u64>, EngineError> {
        self.count(BusOp::Update);
        match self.store.update(key, to_bytes(value)?, revision).await {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(bus_err(&format!("update {}", self.store.name), e)),
        }
    }

    /// Stores `value` under `key` whatever was there.
    pub async fn put(&self, key: &str, value: &T) -> Result<u64, EngineError> {
        self.count(BusOp::Put);
        self.store
            .put(key, to_bytes(value)?)
            .await
            .map_err(|e| bus_err(&format!("store in {}", self.store.name), e))
    }

    /// Reads `key`, lets `change` decide, and writes by compare-and-swap;
    /// answers what `change` answered and the revision that holds the
    /// result (0 when there is no entry). A conflict reads again and asks
    /// again after a short random pause (writers racing on one key take
    /// turns instead of colliding again at once), up to
    /// [`CONFLICT_ATTEMPTS`] times: `change` must depend only on what it
    /// is given.
    pub async fn modify<R>(
        &self,
        key: &str,
        mut change: impl FnMut(Option<T>) -> Change<T, R>,
    ) -> Result<(R, u64), EngineError> {
        for attempt in 0..CONFLICT_ATTEMPTS {
            if attempt > 0 {
                let pause = rand::random_range(1..=(2 * attempt).min(20) as u64);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            let (current, revision) = match self.get(key).await? {
                Some((value, revision)) => (Some(value), Some(revision)),
                None => (None, None),
            };
            let (value, answer) = match change(current) {
                Change::Keep(answer) => return Ok((answer, revision.unwrap_or(0))),
                Change::Write(value, answer) => (value, answer),
            };
            let written = match revision {
                Some(revision) => self.update(key, &value, revision).await?,
                None => self.create(key, &value).await?,
            };
            if let Some(revision) = written {
                return Ok((answer, revision));
            }
            tracing::debug!(bucket = %self.store.name, key, "changed underneath; retrying");
        }
        Err(bus_err(
            &format!("change {key} in {}", self.store.name),
            "it kept changing underneath; try again",
        ))
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

impl Bus {
    /// Publishes `payload` to a stream with `msg_id` as its `Nats-Msg-Id`
    /// (a repeat within the duplicate window is dropped) and waits for the
    /// stream's acknowledgement.
    pub(crate) async fn publish(
        &self,
        subject: String,
        msg_id: &str,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<(), EngineError> {
        self.ops.count(BusOp::Publish);
        let publish = jetstream::message::PublishMessage::build()
            .payload(payload)
            .headers(headers)
            .message_id(msg_id);
        self.js
            .send_publish(subject, publish)
            .await
            .map_err(|e| bus_err("publish", e))?
            .await
            .map_err(|e| bus_err("publish ack", e))?;
        Ok(())
    }
}

/// Prometheus name of the bus operations a node awaited, by `op`.
pub const BUS_OPERATIONS: &str = "squall_bus_operations_total";

/// A kind of bus operation: one request to NATS whose answer is awaited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusOp {
    /// A deduplicated publish to a stream (trigger instance, execution
    /// request, workflow event).
    Publish,
    /// A read of a spine bucket's entry, or one batched read of the last
    /// entries of many keys.
    Get,
    /// A create (the key must not exist).
    Create,
    /// A compare-and-swap.
    Update,
    /// An unconditional put.
    Put,
    /// A purge (an action's API token revoked).
    Delete,
}

impl BusOp {
    /// Every kind, in the order of [`BusOps`]' counters.
    pub const ALL: [BusOp; 6] = [
        BusOp::Publish,
        BusOp::Get,
        BusOp::Create,
        BusOp::Update,
        BusOp::Put,
        BusOp::Delete,
    ];

    /// Its `op` label.
    pub fn label(self) -> &'static str {
        match self {
            BusOp::Publish => "publish",
            BusOp::Get => "get",
            BusOp::Create => "create",
            BusOp::Update => "update",
            BusOp::Put => "put",
            BusOp::Delete => "delete",
        }
    }
}

/// The bus operations one node awaited, by kind: every publish (an
/// action's output too), every operation on the spine's `executions`,
/// `enforcements` and `workflows` buckets, and every token stored or
/// revoked (an action's API token) — what an execution costs the bus. Per node (not a process
/// global), so nodes sharing a process count apart. Rendered on
/// `/metrics` as [`BUS_OPERATIONS`]; the load tool divides them by the
/// executions of a run, so a regression in the count shows.
#[derive(Debug, Default)]
pub struct BusOps([AtomicU64; BusOp::ALL.len()]);

impl BusOps {
    /// One more operation of kind `op`.
    pub fn count(&self, op: BusOp) {
        self.0[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Operations of kind `op` so far.
    pub fn get(&self, op: BusOp) -> u64 {
        self.0[op as usize].load(Ordering::Relaxed)
    }

    /// The counters in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut out = format!(
            "# HELP {BUS_OPERATIONS} Bus operations this node awaited, by kind.\n# TYPE {BUS_OPERATIONS} counter\n"
        );
        for op in BusOp::ALL {
            out.push_str(&format!(
                "{BUS_OPERATIONS}{{op=\"{}\"}} {}\n",
                op.label(),
                self.get(op)
            ));
        }
        out
    }
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

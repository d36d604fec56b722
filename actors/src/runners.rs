//! Running executions: a [`RunnerPool`] per served pool handles requests
//! from the `EXECUTIONS` work queue as a competing consumer. Each run claims
//! the record (`requested` → `scheduled` → `running`, one compare-and-swap),
//! runs the action through its `squall-runners` runner, stores the final
//! status and result, and only then is the request acknowledged.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use squall_domain::execution::{
    ExecutionRecord, RunnerLoss, Status, TriggerInstance, RECORD_VERSION,
};
use squall_domain::policies::Over;
use squall_domain::template::Renderer;
use squall_domain::{ids, time, triggers};
use squall_runners::{ActionEnv, RunRequest, Runner as ActionRunner};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::action_tokens;
use crate::auth::AuthStore;
use crate::bus::{execution_subject, Bus, EXECUTIONS_STREAM};
use crate::catalog::CatalogHandle;
use crate::configs::ConfigCache;
use crate::consumer::{ConsumerSpec, Handler, Settle};
use crate::error::{bus_err, EngineError};
use crate::keys::KeyCache;
use crate::metrics::LostRun;
use crate::policies::Admission;
use crate::store::ExecutionRequest;
use crate::timing::{ACK_WAIT, CHECK_AGAIN_AFTER, CLAIM_CHECK_TIMEOUT, OUTPUT_BATCH_WINDOW};

/// Durable consumer name of a runner pool.
pub fn consumer_name(pool: &str) -> String {
    format!("runners-{pool}")
}

/// What every runner of a node shares.
#[derive(Clone)]
pub struct RunnerContext {
    pub bus: Bus,
    pub catalog: CatalogHandle,
    pub node: String,
    /// Public URL of the v1 API (ending in `/v1`), given to actions as
    /// `ST2_ACTION_API_URL`.
    pub api_url: String,
    /// Where actions' tokens (`ST2_ACTION_AUTH_TOKEN`) are issued and revoked.
    pub auth: AuthStore,
    pub runners: Arc<HashMap<&'static str, Arc<dyn ActionRunner>>>,
    /// Cancelled when the node shuts down: running actions are stopped and
    /// recorded as `abandoned`.
    pub shutdown: CancellationToken,
    /// Runs in progress; shutdown waits for them to record their end.
    pub in_flight: TaskTracker,
    /// Cancel tokens of the executions this node is running, by id.
    pub cancels: CancelRegistry,
    /// Renders pack configs' dynamic values and opens their secrets.
    pub renderer: Arc<Renderer>,
    /// The datastore pack configs read (`st2kv.system.x`).
    pub kv: KeyCache,
    /// Pack config values, for Python actions' `self.config`.
    pub configs: ConfigCache,
}

/// The cancel tokens of the executions a node runs, so that a cancel
/// request (`squall.cancel.<id>`) reaches the right process and a question
/// about a run (`squall.running.<id>.<node>`) gets its answer.
#[derive(Debug, Clone, Default)]
pub struct CancelRegistry(Arc<std::sync::Mutex<Registrations>>);

#[derive(Debug, Default)]
struct Registrations {
    /// Numbers the registrations, so that a guard only removes its own.
    last: u64,
    tokens: HashMap<String, (u64, CancellationToken)>,
}

impl CancelRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Registrations> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers `id`; the token is removed when the guard drops.
    fn register(&self, id: &str, token: CancellationToken) -> CancelGuard {
        let mut reg = self.lock();
        reg.last += 1;
        let serial = reg.last;
        reg.tokens.insert(id.to_string(), (serial, token));
        CancelGuard {
            registry: self.clone(),
            id: id.to_string(),
            serial,
        }
    }

    /// Whether execution `id` runs here (or waits for its delay).
    pub fn runs(&self, id: &str) -> bool {
        self.lock().tokens.contains_key(id)
    }

    /// Cancels execution `id` if it runs here; whether it did.
    pub fn cancel(&self, id: &str) -> bool {
        match self.lock().tokens.get(id) {
            Some((_, token)) => {
                token.cancel();
                true
            }
            None => false,
        }
    }
}

struct CancelGuard {
    registry: CancelRegistry,
    id: String,
    serial: u64,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        let mut reg = self.registry.lock();
        if reg.tokens.get(&self.id).map(|(s, _)| *s) == Some(self.serial) {
            reg.tokens.remove(&self.id);
        }
    }
}

impl std::fmt::Debug for RunnerContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunnerContext")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// Runs one pool's execution requests, as the handler of a
/// [`Consumer`](crate::consumer::Consumer) whose concurrency is the node's
/// `runners.concurrency`: runs are tasks of that consumer, no actor each.
#[derive(Debug)]
pub struct RunnerPool {
    pub ctx: RunnerContext,
}

impl RunnerPool {
    /// Where the runners of `pool` read, `concurrency` runs at a time.
    pub fn consumer_spec(pool: &str, concurrency: i64) -> ConsumerSpec {
        ConsumerSpec {
            stream: EXECUTIONS_STREAM,
            name: consumer_name(pool),
            filter: execution_subject(pool),
            max_ack_pending: concurrency,
            concurrency: usize::try_from(concurrency).unwrap_or(1),
            ack_wait: ACK_WAIT,
        }
    }
}

impl Handler for RunnerPool {
    type Event = ExecutionRequest;
    const WHAT: &'static str = "execution requests";

    async fn handle(self: Arc<Self>, request: ExecutionRequest, delivered: i64) -> Settle {
        let _in_flight = self.ctx.in_flight.token();
        match run_request(&self.ctx, request, delivered).await {
            Ok(Delivery::Done) => Settle::Done,
            Ok(Delivery::Later(after)) => Settle::Later(after),
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, "execution request will be redelivered");
                Settle::Later(Duration::from_secs(1))
            }
            Err(e) => Settle::Drop(e.to_string()),
        }
    }
}

/// Deliveries of a request whose record cannot be read before the request
/// is dropped as broken (one second apart).
const MISSING_RECORD_DELIVERIES: i64 = 30;

/// What to do with a request once handled.
#[derive(Debug, PartialEq, Eq)]
enum Delivery {
    /// Handled: acknowledge it.
    Done,
    /// Deliver it again after this long. It stays on the work queue while
    /// someone else runs its execution, as that run's watchdog: whoever
    /// finishes the run acknowledges it.
    Later(Duration),
}

impl Delivery {
    /// The record changed under this runner (another claimed it, or a
    /// cancel came): look again shortly.
    const LOOK_AGAIN: Delivery = Delivery::Later(Duration::from_secs(1));
}

/// What a request found claimed by a runner comes to.
#[derive(Debug)]
enum Claim {
    /// The runner is alive.
    Alive,
    /// Its runner is gone and the record now says how it ended.
    Ended,
    /// Its runner is gone and nothing of it runs: run it here.
    RunHere,
}

async fn run_request(
    ctx: &RunnerContext,
    request: ExecutionRequest,
    delivered: i64,
) -> Result<Delivery, EngineError> {
    let id = request.execution_id;
    let span = if crate::telemetry::on() {
        tracing::info_span!("execution", otel.name = "execution.run",
            otel.kind = "consumer", execution = %id, node = %ctx.node,
            squall.execution.id = %id, squall.action.ref = tracing::field::Empty,
            squall.runner.type = tracing::field::Empty, squall.trace_tag = tracing::field::Empty)
    } else {
        tracing::info_span!("execution", execution = %id, node = %ctx.node)
    };
    async {
        // A first delivery carries the record as created: no read needed.
        let created = request
            .created
            .filter(|c| delivered == 1 && c.record.id == id)
            .map(|c| (c.record, c.revision));
        let read = match created {
            Some(record) => Some(record),
            None => ctx.bus.execution(&id).await?,
        };
        let Some((mut record, rev)) = read else {
            // A request is published only after its record is stored, so a
            // record not found was read from a server that has not caught
            // up yet (a replica, just after another server died): ask
            // again, for a while, before calling the request broken.
            if delivered < MISSING_RECORD_DELIVERIES {
                return Err(crate::error::bus_err(
                    "read execution",
                    format!("the record of {id} is not visible yet"),
                ));
            }
            return Err(EngineError::Corrupt {
                key: id.clone(),
                message: "execution requested but its record does not exist".into(),
            });
        };
        if crate::telemetry::on() {
            let span = tracing::Span::current();
            span.record("squall.action.ref", record.action.action_ref.as_str());
            span.record("squall.runner.type", record.runner.name.as_str());
            span.record("squall.trace_tag", crate::executions::trace_tag(&record));
        }
        // Waiting for a concurrency slot (no node claimed it): woken by a
        // release or the policy sweep, it is admitted again.
        let policy_delayed = record.status == Status::Delayed && record.node.is_none();
        match record.status {
            Status::Requested => {}
            _ if policy_delayed => {}
            // Already finished: its slots, actiontrigger and workflow may
            // have been missed (the node died between the write and them),
            // so do them again; repeats are dropped.
            s if s.is_completed() => {
                // Ended before its claim (a cancel), it may hold slots its
                // record does not list.
                let catalog = ctx.catalog.load();
                let limits =
                    crate::policies::limits(catalog.policies_for(&record.action.action_ref));
                let keys = crate::policies::keys(&limits, &record.parameters);
                crate::policies::release(&ctx.bus, &record.id, &keys).await?;
                crate::notifier::ended(&ctx.bus, &record).await?;
                crate::flow_events::notify_parent(&ctx.bus, &record).await?;
                return Ok(Delivery::Done);
            }
            // A workflow that started belongs to the workflow engine; its
            // start is repeated in case it was lost (a repeat changes
            // nothing).
            _ if !settled_by_runners(&record) => {
                if record.status == Status::Running {
                    let definition = workflow_definition(ctx, &record);
                    crate::workflows::start(&ctx.bus, &record, definition).await?;
                }
                return Ok(Delivery::Done);
            }
            // Claimed by a runner, yet delivered again: the delivery count
            // cannot tell why (a NATS restart may forget it), so ask.
            Status::Delayed | Status::Scheduled | Status::Running | Status::Canceling => {
                match reclaim(ctx, &mut record, rev).await? {
                    Claim::Alive => return Ok(Delivery::Later(CHECK_AGAIN_AFTER)),
                    Claim::Ended => return Ok(Delivery::Done),
                    Claim::RunHere => {}
                }
            }
            _ => return Ok(Delivery::Done),
        }
        // Registered before the claim, so a cancel sent once the record
        // says `running` always finds the token.
        let cancel = ctx.shutdown.child_token();
        let _registered = ctx.cancels.register(&id, cancel.clone());
        record.node = Some(ctx.node.clone());
        let mut rev = rev;
        // A workflow task with `delay` is `delayed` until its time comes,
        // as in StackStorm (where the scheduler holds it); the claim is the
        // write of `delayed`, and nothing has run if its node dies.
        if let Some(delay) = task_delay(&record).filter(|_| !policy_delayed) {
            record.transition(Status::Delayed, time::now());
            let Some(r) = ctx.bus.update_execution(&record, rev).await? else {
                return Ok(Delivery::LOOK_AGAIN);
            };
            rev = r;
            if !wait_delay(delay, &cancel).await {
                if ctx.shutdown.is_cancelled() {
                    let reason = format!(
                        "node {} shut down while the task waited for its delay",
                        ctx.node
                    );
                    finish(
                        ctx,
                        &mut record,
                        rev,
                        Status::Abandoned,
                        json!({"error": reason}),
                    )
                    .await?;
                }
                // Otherwise a cancel: it wrote the record's end.
                return Ok(Delivery::Done);
            }
        }
        // Concurrency policies: a slot of each, taken before the claim (an
        // action without policies skips this: one map lookup).
        let catalog = ctx.catalog.load();
        let limits = crate::policies::limits(catalog.policies_for(&record.action.action_ref));
        if !limits.is_empty() {
            match crate::policies::admit(&ctx.bus, &record, &limits).await? {
                Admission::Run(keys) => record.slots = keys,
                Admission::Full {
                    policy,
                    threshold,
                    over,
                    key,
                } => return over_threshold(ctx, record, rev, &policy, threshold, over, key).await,
            }
        }
        drop(catalog);
        // The claim: scheduled and running in one compare-and-swap (the
        // log keeps both steps, as StackStorm's statuses do).
        let now = time::now();
        record.transition(Status::Scheduled, now);
        record.transition(Status::Running, now);
        // The action's API token is stored while the claim is written (a
        // token never handed out is revoked when `token` drops).
        let token = ctx
            .runners
            .get(record.runner.name.as_str())
            .filter(|runner| runner.calls_api())
            .map(|_| {
                let ttl = action_tokens::ttl(&record.parameters);
                action_tokens::Pending::start(
                    &ctx.auth,
                    &ctx.in_flight,
                    execution_user(&record),
                    ttl,
                )
            });
        let Some(rev) = ctx.bus.update_execution(&record, rev).await? else {
            // Another runner claimed it first, it was canceled, or the
            // record carried by the request is no longer the stored one.
            // The slots stay: they are the execution's, whoever claimed it
            // (a canceled one gives them back when looked at again).
            return Ok(Delivery::LOOK_AGAIN);
        };
        if crate::workflows::is_workflow_runner(&record.runner.name) {
            // The workflow engine runs it from here and records its end.
            let definition = workflow_definition(ctx, &record);
            crate::workflows::start(&ctx.bus, &record, definition).await?;
            return Ok(Delivery::Done);
        }
        let queued = (now - record.start_timestamp).to_std().unwrap_or_default();
        crate::metrics::execution_started(&record.runner.name, queued);
        let began = std::time::Instant::now();
        let process = crate::telemetry::span(|| {
            tracing::info_span!("runner.process", squall.execution.id = %record.id,
                squall.runner.type = %record.runner.name,
                squall.execution.status = tracing::field::Empty)
        });
        let (status, result) = run_action(ctx, &record, cancel, token)
            .instrument(process.clone())
            .await;
        process.record("squall.execution.status", status.as_str());
        drop(process);
        crate::metrics::execution_finished(&record.runner.name, status, began.elapsed());
        finish(ctx, &mut record, rev, status, result).await?;
        if status == Status::Pending {
            announce_inquiry(ctx, &record).await?;
        }
        Ok(Delivery::Done)
    }
    .instrument(span)
    .await
}

/// An execution over a concurrency policy's threshold: `canceled` (its
/// end, written like any other, announces it), or `delayed` with no node,
/// waiting in the slot entry `key` to be requested again. Nothing ran.
async fn over_threshold(
    ctx: &RunnerContext,
    mut record: ExecutionRecord,
    rev: u64,
    policy: &str,
    threshold: u64,
    over: Over,
    key: String,
) -> Result<Delivery, EngineError> {
    let action = record.action.action_ref.clone();
    match over {
        Over::Cancel => {
            record.slots = Vec::new();
            record.result = json!({"error": format!(
                "canceled by policy {policy}: {threshold} executions of {action} already run at once"
            )});
            record.transition(Status::Canceled, time::now());
        }
        Over::Delay => {
            if record.status == Status::Delayed
                && record.node.is_none()
                && record.slots == [key.clone()]
            {
                return Ok(Delivery::Done);
            }
            record.node = None;
            record.slots = vec![key];
            record.transition(Status::Delayed, time::now());
        }
    }
    if ctx.bus.update_execution(&record, rev).await?.is_none() {
        return Ok(Delivery::LOOK_AGAIN);
    }
    tracing::info!(execution = %record.id, policy = %policy, status = %record.status,
        "concurrency threshold of {threshold} reached");
    Ok(Delivery::Done)
}

/// Whether runners, rather than the workflow engine, settle `record` while
/// it waits: a workflow that started (`running`, `canceling`) is the
/// engine's.
pub fn settled_by_runners(record: &ExecutionRecord) -> bool {
    !crate::workflows::is_workflow_runner(&record.runner.name)
        || !matches!(record.status, Status::Running | Status::Canceling)
}

/// Settles a request whose record a runner claimed: asks whether that
/// runner still runs it and, when nobody does, ends or re-runs it as the
/// claim's status and the action's [`RunnerLoss`] say.
async fn reclaim(
    ctx: &RunnerContext,
    record: &mut ExecutionRecord,
    rev: u64,
) -> Result<Claim, EngineError> {
    if claim_is_alive(ctx, record).await? {
        return Ok(Claim::Alive);
    }
    let node = record.node.clone().unwrap_or_else(|| "?".into());
    let (status, reason) = match record.status {
        // Claimed but not started: nothing ran, so it runs here.
        Status::Delayed | Status::Scheduled => {
            crate::metrics::runner_lost(LostRun::Started);
            return Ok(Claim::RunHere);
        }
        Status::Canceling => (
            Status::Canceled,
            format!("the runner on node {node} stopped while the execution was being canceled"),
        ),
        _ => {
            let losses = record
                .context
                .entry("runner_losses")
                .or_insert_with(|| json!([]));
            let earlier = losses.as_array().map_or(0, Vec::len);
            if record.runner_loss == RunnerLoss::Rerun && earlier < RunnerLoss::MAX_RERUNS {
                if let Some(list) = losses.as_array_mut() {
                    list.push(json!(node));
                }
                tracing::warn!(execution = %record.id, node = %node, "runner lost; running the action again");
                crate::metrics::runner_lost(LostRun::Rerun);
                return Ok(Claim::RunHere);
            }
            let reason = if earlier > 0 {
                format!("the runner on node {node} stopped before the execution finished, after {earlier} reruns on lost runners")
            } else {
                format!("the runner on node {node} stopped before the execution finished")
            };
            (Status::Abandoned, reason)
        }
    };
    // No merge with concurrent writes here: a record that changed since it
    // was read is looked at again.
    record.result = json!({"error": reason});
    record.transition(status, time::now());
    match ctx.bus.update_execution(record, rev).await? {
        Some(_) => {
            tracing::warn!(execution = %record.id, status = %status, "{reason}");
            crate::metrics::runner_lost(if status == Status::Canceled {
                LostRun::Canceled
            } else {
                LostRun::Abandoned
            });
            Ok(Claim::Ended)
        }
        None => Err(bus_err(
            "end an execution whose runner was lost",
            "the record changed meanwhile",
        )),
    }
}

/// Whether the node that claimed `record` still runs it: this node looks
/// in its registry, another is asked on [`crate::bus::running_subject`]
/// (a dead node does not answer). An answer that cannot be had because this
/// node is cut off from NATS is an error, never a "no".
pub async fn claim_is_alive(
    ctx: &RunnerContext,
    record: &ExecutionRecord,
) -> Result<bool, EngineError> {
    let node = match record.node.as_deref() {
        None => return Ok(false),
        Some(node) if node == ctx.node => return Ok(ctx.cancels.runs(&record.id)),
        Some(node) => node,
    };
    let ask = ctx.bus.client.request(
        crate::bus::running_subject(&record.id, node),
        bytes::Bytes::new(),
    );
    let answer = tokio::time::timeout(CLAIM_CHECK_TIMEOUT, ask).await;
    let connected = ctx.bus.client.connection_state() == async_nats::connection::State::Connected;
    match answer {
        Ok(Ok(reply)) => Ok(reply.payload.as_ref() == crate::bus::STILL_RUNNING),
        Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders && connected => {
            Ok(false)
        }
        Err(_) if connected => Ok(false),
        Ok(Err(e)) => Err(bus_err("ask which node runs an execution", e)),
        Err(_) => Err(bus_err(
            "ask which node runs an execution",
            "disconnected from NATS",
        )),
    }
}

/// The `delay` of a workflow task's execution, or of the execution itself
/// (a retry policy's), in seconds.
fn task_delay(record: &ExecutionRecord) -> Option<f64> {
    record
        .context
        .get("orquesta")
        .and_then(|o| o["delay"].as_f64())
        .or_else(|| record.delay.map(|ms| ms as f64 / 1000.0))
        .filter(|d| *d > 0.0)
}

/// Waits `delay` seconds, telling JetStream the request is still being
/// worked on; false when `cancel` ends the wait.
async fn wait_delay(delay: f64, cancel: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(Duration::from_secs_f64(delay)) => true,
        () = cancel.cancelled() => false,
    }
}

/// The text of a workflow action's definition (its `entry_point`).
fn workflow_definition(ctx: &RunnerContext, record: &ExecutionRecord) -> Result<String, String> {
    let catalog = ctx.catalog.load();
    let action = catalog
        .actions
        .get(&record.action.action_ref)
        .ok_or_else(|| {
            format!(
                "action {} is no longer registered",
                record.action.action_ref
            )
        })?;
    let path = action
        .pack_path
        .join("actions")
        .join(&action.def.entry_point);
    std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "cannot read the workflow definition {}: {e}",
            path.display()
        )
    })
}

async fn run_action(
    ctx: &RunnerContext,
    record: &ExecutionRecord,
    cancel: CancellationToken,
    token: Option<action_tokens::Pending>,
) -> (Status, serde_json::Value) {
    let catalog = ctx.catalog.load();
    let Some(action) = catalog.actions.get(&record.action.action_ref) else {
        return (
            Status::Failed,
            json!({"error": format!("action {} is no longer registered", record.action.action_ref)}),
        );
    };
    let Some(runner) = ctx.runners.get(record.runner.name.as_str()) else {
        return (
            Status::Failed,
            json!({"error": format!("runner {} is not available on node {}", record.runner.name, ctx.node)}),
        );
    };
    // Only Python actions get their pack's config, as in StackStorm. It is
    // resolved per run (the datastore may have changed) and stored nowhere.
    let config = if record.runner.name == "python-script" {
        // Its secrets opened are audited for this execution.
        let who = || crate::audit::decrypt::For {
            user: execution_user(record).to_string(),
            execution: Some(record.id.clone()),
            action: Some(record.action.action_ref.clone()),
            purpose: "pack_config",
        };
        match crate::audit::decrypt::within(&ctx.kv, who, || {
            crate::configs::resolve(
                &ctx.configs,
                &catalog,
                &record.action.pack,
                execution_user(record),
                &ctx.renderer,
                &ctx.kv,
            )
        }) {
            Ok(config) => config,
            Err(e) => return (Status::Failed, json!({"error": e.to_string()})),
        }
    } else {
        serde_json::Map::new()
    };
    let token = match token {
        Some(pending) => match pending.issued().await {
            Ok(token) => Some(token),
            Err(e) => {
                return (
                    Status::Failed,
                    json!({"error": format!("could not issue the action's API token: {e}")}),
                )
            }
        },
        None => None,
    };
    let env = ActionEnv {
        pack: record.action.pack.clone(),
        execution_id: record.id.clone(),
        api_url: ctx.api_url.clone(),
        auth_token: token.as_ref().map(|t| t.value().to_string()),
    };
    // Only runners that start a process write output; in-process ones
    // (noop, inquirer) get no forwarder.
    let (output, forwarder) = if runner.calls_api() {
        let (output, forwarder) = forward_output(ctx, record);
        (Some(output), Some(forwarder))
    } else {
        (None, None)
    };
    let run = runner.run(RunRequest {
        execution_id: record.id.clone(),
        action: action.def.clone(),
        pack_path: action.pack_path.clone(),
        parameters: record.parameters.clone(),
        config,
        env,
        output,
        cancel: cancel.clone(),
    });
    // The consumer reports progress on the request while the run lasts.
    let outcome = run.await;
    // The process has ended: its token is revoked in the background,
    // while the output is flushed and the final record written.
    drop(token);
    // The runner has dropped its sender: every chunk is out before the
    // final record is written.
    if let Some(forwarder) = forwarder {
        let _ = forwarder.await;
    }
    if ctx.shutdown.is_cancelled() {
        let mut result = outcome.result;
        if let Some(obj) = result.as_object_mut() {
            obj.insert(
                "error".into(),
                json!(format!("node {} shut down while the action ran", ctx.node)),
            );
        }
        return (Status::Abandoned, result);
    }
    (outcome.status, outcome.result)
}

/// The user an execution runs as.
fn execution_user(record: &ExecutionRecord) -> &str {
    record
        .context
        .get("user")
        .and_then(serde_json::Value::as_str)
        .unwrap_or(crate::executions::SYSTEM_USER)
}

/// Most output one `OUTPUT` message carries: a batch is published once
/// this much has gathered, even within [`OUTPUT_BATCH_WINDOW`].
const OUTPUT_BATCH_BYTES: usize = 64 * 1024;

/// Publishes an execution's output on `squall.output.<id>`: live viewers
/// (`/stream`) follow the subject, and the `OUTPUT` stream keeps it for
/// `/executions/{id}/output`. The result keeps the whole output too.
///
/// At most one message per [`OUTPUT_BATCH_WINDOW`]: the first chunk goes
/// out at once, and the chunks of one stream that arrive within a window
/// of the last publish go out together (in order; a chunk of the other
/// stream starts the next message), so chatty output is not a publish per
/// line. The output's end flushes at once.
fn forward_output(
    ctx: &RunnerContext,
    record: &ExecutionRecord,
) -> (
    tokio::sync::mpsc::UnboundedSender<squall_runners::OutputChunk>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<squall_runners::OutputChunk>();
    let (js, ops) = (ctx.bus.js.clone(), ctx.bus.ops.clone());
    let subject = crate::bus::output_subject(&record.id);
    let (id, action_ref, runner_ref) = (
        record.id.clone(),
        record.action.action_ref.clone(),
        record.runner.name.clone(),
    );
    let task = tokio::spawn(async move {
        // Acks are awaited once the output ends, so batches flow without a
        // round trip each, yet all are stored before the final record.
        let mut acks = Vec::new();
        let mut next = None;
        let mut published: Option<tokio::time::Instant> = None;
        loop {
            let first = match next.take() {
                Some(chunk) => chunk,
                None => match rx.recv().await {
                    Some(chunk) => chunk,
                    None => break,
                },
            };
            let (stream, mut data) = (first.stream, first.data);
            // A window already over still takes what is queued.
            let until =
                published.map_or_else(tokio::time::Instant::now, |at| at + OUTPUT_BATCH_WINDOW);
            while data.len() < OUTPUT_BATCH_BYTES {
                match tokio::time::timeout_at(until, rx.recv()).await {
                    Ok(Some(chunk)) if chunk.stream == stream => data.push_str(&chunk.data),
                    Ok(Some(chunk)) => {
                        next = Some(chunk);
                        break;
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            let output_type = match stream {
                squall_runners::OutputStream::Stdout => "stdout",
                squall_runners::OutputStream::Stderr => "stderr",
            };
            let body = json!({
                "execution_id": id,
                "action_ref": action_ref,
                "runner_ref": runner_ref,
                "output_type": output_type,
                "data": data,
                "timestamp": time::format(&time::now()),
            });
            published = Some(tokio::time::Instant::now());
            ops.count(crate::bus::BusOp::Publish);
            match js.publish(subject.clone(), body.to_string().into()).await {
                Ok(ack) => acks.push(ack),
                Err(e) => tracing::warn!(error = %e, "output not published"),
            }
        }
        for ack in acks {
            if let Err(e) = ack.await {
                tracing::warn!(error = %e, "output not stored");
            }
        }
    });
    (tx, task)
}

/// Writes `record` over revision `rev`, re-reading and retrying when the
/// record changed underneath. Only this runner changes a claimed record's
/// status, except a cancel request (`canceling`): its log entries are kept,
/// so the record tells the whole story.
async fn put(
    ctx: &RunnerContext,
    record: &mut ExecutionRecord,
    rev: u64,
) -> Result<u64, EngineError> {
    let mut rev = rev;
    for _ in 0..5 {
        if let Some(new) = ctx.bus.update_execution(record, rev).await? {
            return Ok(new);
        }
        rev = match ctx.bus.execution(&record.id).await? {
            Some((stored, r)) => {
                // Entries written by others have statuses this runner never
                // wrote (stored timestamps are rounded to microseconds, so
                // compare statuses, not whole entries).
                for entry in stored.log {
                    if !record.log.iter().any(|e| e.status == entry.status) {
                        record.log.push(entry);
                    }
                }
                record.log.sort_by_key(|e| e.timestamp);
                r
            }
            None => 0,
        };
    }
    Err(bus_err("update execution", "too many concurrent changes"))
}

/// Fires `core.st2.generic.inquiry` for an execution now waiting on a
/// response; its instance id derives from the execution's, so a repeat is
/// stored once.
async fn announce_inquiry(
    ctx: &RunnerContext,
    record: &ExecutionRecord,
) -> Result<(), EngineError> {
    let at = time::now();
    let instance = TriggerInstance {
        v: RECORD_VERSION,
        id: ids::derived(&record.start_timestamp, &[&record.id, "inquiry"]),
        trigger: triggers::INQUIRY.into(),
        trigger_type: triggers::INQUIRY.into(),
        trigger_parameters: serde_json::Map::new(),
        payload: json!({"id": record.id, "route": record.result["route"]}),
        occurrence_time: at,
        trace_tag: None,
    };
    ctx.bus.publish_trigger(&instance).await
}

async fn finish(
    ctx: &RunnerContext,
    record: &mut ExecutionRecord,
    rev: u64,
    status: Status,
    result: serde_json::Value,
) -> Result<(), EngineError> {
    record.result = result;
    record.transition(status, time::now());
    put(ctx, record, rev).await?;
    tracing::info!(execution = %record.id, action = %record.action.action_ref, status = %status, "execution finished");
    Ok(())
}

//! Requesting executions: resolving parameters, writing the `requested`
//! record and putting the request on the runner pool's work queue. The API
//! (a user's run) and the rules engine (a rule's match) both come here.

use serde_json::{json, Map, Value};
use squall_domain::execution::{
    ActionSnapshot, ExecutionRecord, LogEntry, RuleSummary, RunnerLoss, RunnerSnapshot, Status,
    TriggerInstanceSummary, DEFAULT_POOL, RECORD_VERSION,
};
use squall_domain::model::ActionDef;
use squall_domain::template::Renderer;
use squall_domain::{ids, params, runner_types, time};

use crate::bus::Bus;
use crate::catalog::Catalog;
use crate::configs::ConfigCache;
use crate::error::EngineError;

pub use squall_domain::execution::SYSTEM_USER;

/// The action tag that sends an action's runs to a runner pool:
/// `tags: [{name: squall.pool, value: gpu}]` runs it only on nodes serving
/// pool `gpu`. Without it, runs go to the `default` pool.
pub const POOL_TAG: &str = "squall.pool";

/// The runner pool an action's tags ask for.
pub fn pool_of(tags: &[Value]) -> Result<String, EngineError> {
    match tag_value(tags, POOL_TAG) {
        None => Ok(DEFAULT_POOL.to_string()),
        Some(Some(pool)) if is_pool_name(pool) => Ok(pool.to_string()),
        Some(other) => Err(EngineError::NotRunnable(format!(
            "tag {POOL_TAG}: {other:?} is not a pool name (letters, digits, - and _)"
        ))),
    }
}

/// The action tag that says what happens when a run's runner is lost:
/// `tags: [{name: squall.runner_loss, value: rerun}]` runs an idempotent
/// action again on another runner; `abandon` (the default) ends the run
/// `abandoned`.
pub const RUNNER_LOSS_TAG: &str = "squall.runner_loss";

/// What an action's tags ask for when its runner is lost.
pub fn runner_loss_of(tags: &[Value]) -> Result<RunnerLoss, EngineError> {
    match tag_value(tags, RUNNER_LOSS_TAG) {
        None => Ok(RunnerLoss::default()),
        Some(value) => value.and_then(RunnerLoss::parse).ok_or_else(|| {
            EngineError::NotRunnable(format!(
                "tag {RUNNER_LOSS_TAG}: {value:?} is neither \"abandon\" nor \"rerun\""
            ))
        }),
    }
}

/// The value of tag `name`: `None` without the tag, `Some(None)` when its
/// value is not a string.
fn tag_value<'a>(tags: &'a [Value], name: &str) -> Option<Option<&'a str>> {
    tags.iter()
        .find(|t| t.get("name").and_then(Value::as_str) == Some(name))
        .map(|t| t.get("value").and_then(Value::as_str))
}

/// Whether `name` can name a runner pool (it becomes a subject token).
pub fn is_pool_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// What to run, and why.
#[derive(Debug, Clone, Default)]
pub struct ExecutionSpec {
    pub action_ref: String,
    /// Parameters as given by the caller or rendered by the rule.
    pub parameters: Map<String, Value>,
    pub user: Option<String>,
    /// A deterministic id derived from the cause; a fresh one if `None`.
    pub id: Option<String>,
    pub rule: Option<RuleSummary>,
    pub trigger_instance: Option<TriggerInstanceSummary>,
    /// The trace tag of the cause (a webhook's `St2-Trace-Tag`).
    pub trace_tag: Option<String>,
    /// Extra context merged into the record's `context`.
    pub context: Map<String, Value>,
    pub parent: Option<String>,
    /// The caller's `notify`, in place of the action's.
    pub notify: Option<Value>,
}

/// Builds the `requested` record for `spec`: the action must exist, be
/// enabled and have a runner this build can run, and the parameters must
/// resolve. `config_context` is the pack's config as the execution's user
/// gets it (from `configs`), resolved only when a parameter mentions it.
pub fn prepare(
    catalog: &Catalog,
    renderer: &Renderer,
    kv: &crate::keys::KeyCache,
    configs: &ConfigCache,
    spec: ExecutionSpec,
) -> Result<ExecutionRecord, EngineError> {
    let action = catalog
        .actions
        .get(&spec.action_ref)
        .ok_or_else(|| EngineError::UnknownAction(spec.action_ref.clone()))?;
    let def = &action.def;
    if !def.enabled {
        return Err(EngineError::NotRunnable(format!(
            "action {} is disabled; enable it before running it",
            spec.action_ref
        )));
    }
    let runner = runner_types::lookup(&def.runner_type)
        .filter(|r| r.available)
        .ok_or_else(|| {
            EngineError::NotRunnable(format!(
                "action {} uses runner {:?}, which this version of Squall cannot run yet",
                spec.action_ref, def.runner_type
            ))
        })?;
    let now = time::now();
    let id = spec.id.unwrap_or_else(|| ids::fresh(&now));
    let user = spec.user.unwrap_or_else(|| SYSTEM_USER.to_string());
    let mut context = spec.context;
    context.insert("user".into(), json!(user));
    context.insert("pack".into(), json!(def.pack));
    if runner.name == crate::flow_events::ORQUESTA_RUNNER {
        // StackStorm's id of the workflow execution behind an Orquesta
        // action execution: its own, unless it continues another one (a
        // re-run from tasks).
        context
            .entry("workflow_execution")
            .or_insert_with(|| json!(id));
    }
    if let Some(ti) = &spec.trigger_instance {
        context.insert(
            "trigger_instance".into(),
            json!({"id": ti.id, "name": Value::Null}),
        );
        context
            .entry("trace_context")
            .or_insert_with(|| json!({"id_": ti.id, "trace_tag": spec.trace_tag}));
    }
    if let Some(r) = &spec.rule {
        context.insert("rule".into(), json!({"id": r.id, "name": r.name}));
    }
    // Secrets opened while rendering are audited for this execution, or
    // for the work this preparation is part of (the rule tester's preview).
    let who = crate::audit::decrypt::For {
        user: user.clone(),
        execution: Some(id.clone()),
        action: Some(def.reference()),
        purpose: "parameters",
    };
    let parameters = crate::audit::decrypt::within(
        kv,
        || who,
        || {
            let config_context = if mentions_config_context(def, &spec.parameters) {
                Value::Object(crate::configs::resolve(
                    configs, catalog, &def.pack, &user, renderer, kv,
                )?)
            } else {
                json!({})
            };
            let render_ctx = json!({
                "action_context": Value::Object(context.clone()),
                "config_context": config_context,
            });
            Ok::<_, EngineError>(params::resolve(
                runner,
                def,
                &spec.parameters,
                &render_ctx,
                renderer,
                kv,
            )?)
        },
    )?;
    Ok(ExecutionRecord {
        v: RECORD_VERSION,
        id,
        action: ActionSnapshot {
            action_ref: def.reference(),
            name: def.name.clone(),
            pack: def.pack.clone(),
            runner_type: def.runner_type.clone(),
            entry_point: def.entry_point.clone(),
            description: def.description.clone(),
            parameters: serde_json::to_value(&def.parameters)
                .ok()
                .and_then(|v| v.as_object().cloned())
                .unwrap_or_default(),
        },
        runner: RunnerSnapshot {
            name: runner.name.to_string(),
        },
        status: Status::Requested,
        parameters,
        result: json!({}),
        context,
        start_timestamp: now,
        end_timestamp: None,
        log: vec![LogEntry {
            timestamp: now,
            status: Status::Requested,
        }],
        rule: spec.rule,
        trigger_instance: spec.trigger_instance,
        parent: spec.parent,
        children: vec![],
        pool: pool_of(&def.tags)?,
        node: None,
        runner_loss: runner_loss_of(&def.tags)?,
        notify: spec.notify.or_else(|| def.notify.clone()),
        delay: None,
        slots: Vec::new(),
        traceparent: None,
    })
}

/// Whether an action's parameter defaults or the given parameters read
/// `config_context` (resolving a config costs renders and decryptions, so
/// only executions that use it pay).
fn mentions_config_context(def: &ActionDef, given: &Map<String, Value>) -> bool {
    fn mentions(v: &Value) -> bool {
        match v {
            Value::String(s) => s.contains("config_context"),
            Value::Array(items) => items.iter().any(mentions),
            Value::Object(map) => map.values().any(mentions),
            _ => false,
        }
    }
    def.parameters
        .values()
        .filter_map(|p| p.default.as_ref())
        .any(mentions)
        || given.values().any(mentions)
}

/// Stores `record` and requests its run. Idempotent: when a record with the
/// same id exists (a redelivered cause), the stored one is returned and the
/// request is repeated only if it may have been lost (still `requested`);
/// the work queue drops a repeat within its duplicate window and runners
/// skip records that already moved on.
pub async fn submit(bus: &Bus, record: ExecutionRecord) -> Result<ExecutionRecord, EngineError> {
    let span = crate::telemetry::span(|| {
        tracing::info_span!("execution.request", otel.kind = "producer",
            messaging.system = "nats", squall.execution.id = %record.id,
            squall.action.ref = %record.action.action_ref,
            squall.runner.type = %record.runner.name,
            squall.trace_tag = trace_tag(&record))
    });
    tracing::Instrument::instrument(submit_traced(bus, record), span).await
}

/// StackStorm's trace tag of an execution (`context.trace_context`).
pub fn trace_tag(record: &ExecutionRecord) -> &str {
    record
        .context
        .get("trace_context")
        .and_then(|t| t.get("trace_tag"))
        .and_then(Value::as_str)
        .unwrap_or("")
}

async fn submit_traced(
    bus: &Bus,
    mut record: ExecutionRecord,
) -> Result<ExecutionRecord, EngineError> {
    if record.traceparent.is_none() {
        record.traceparent = crate::telemetry::current();
    }
    let (stored, created) = match bus.create_execution(&record).await? {
        Some(revision) => (record, Some(revision)),
        None => match bus.execution(&record.id).await? {
            Some((existing, _)) => (existing, None),
            None => (record, None),
        },
    };
    if stored.status == Status::Requested {
        bus.request_execution(&stored, &stored.id, created).await?;
        crate::metrics::execution_requested(&stored.runner.name);
    }
    Ok(stored)
}

/// What a cancel request found.
#[derive(Debug, Clone)]
pub enum CancelOutcome {
    /// Canceled (not started yet) or canceling (running): the record now.
    Requested(Box<ExecutionRecord>),
    /// It had already ended with this status.
    AlreadyFinished(Status),
    NotFound,
}

/// Cancels an execution on behalf of `by`: one that has not started is
/// `canceled` at once; a running one becomes `canceling` and the node
/// running it kills its process group (a workflow cancels its running
/// tasks first), then records `canceled`.
pub async fn cancel(bus: &Bus, id: &str, by: &str) -> Result<CancelOutcome, EngineError> {
    for _ in 0..5 {
        let Some((mut rec, rev)) = bus.execution(id).await? else {
            return Ok(CancelOutcome::NotFound);
        };
        let now = time::now();
        // A delayed task's runner is waiting on it: it must stop waiting.
        let waiting = rec.status == Status::Delayed;
        match rec.status {
            s if s.is_completed() => return Ok(CancelOutcome::AlreadyFinished(s)),
            Status::Requested | Status::Scheduled | Status::Delayed | Status::Pending => {
                rec.result = json!({"error": format!("canceled by {by} before it started")});
                rec.transition(Status::Canceled, now);
            }
            Status::Canceling => {
                ask_to_stop(bus, &rec).await?;
                return Ok(CancelOutcome::Requested(Box::new(rec)));
            }
            _ => rec.transition(Status::Canceling, now),
        }
        if bus.update_execution(&rec, rev).await?.is_some() {
            if rec.status == Status::Canceling || waiting {
                ask_to_stop(bus, &rec).await?;
            }
            tracing::info!(execution = %id, user = %by, status = %rec.status, "cancel requested");
            return Ok(CancelOutcome::Requested(Box::new(rec)));
        }
    }
    Err(crate::error::bus_err(
        "cancel execution",
        "the execution kept changing while being canceled",
    ))
}

/// What a pause or resume request found.
#[derive(Debug, Clone)]
pub enum PauseOutcome {
    /// Asked (or already under way): the record now.
    Requested(Box<ExecutionRecord>),
    /// Only workflows (Orquesta and ActionChains) pause; this execution
    /// runs on this runner.
    NotAWorkflow(String),
    /// It cannot pause or resume from this status.
    Not(Status),
    NotFound,
}

/// Pauses a running workflow or ActionChain execution on behalf of `by`:
/// it becomes `pausing`, and `paused` once its running tasks (a chain's
/// one node) have ended or paused (child workflows and chains pause too;
/// actions run to their end).
pub async fn pause(bus: &Bus, id: &str, by: &str) -> Result<PauseOutcome, EngineError> {
    change_pause(bus, id, by, Status::Pausing).await
}

/// Resumes a paused (or pausing) workflow or ActionChain execution on
/// behalf of `by`: it becomes `resuming`, then `running` once its workflow
/// has resumed.
pub async fn resume(bus: &Bus, id: &str, by: &str) -> Result<PauseOutcome, EngineError> {
    change_pause(bus, id, by, Status::Resuming).await
}

async fn change_pause(
    bus: &Bus,
    id: &str,
    by: &str,
    to: Status,
) -> Result<PauseOutcome, EngineError> {
    let (from, already): (&[Status], &[Status]) = match to {
        Status::Pausing => (&[Status::Running], &[Status::Pausing, Status::Paused]),
        _ => (&[Status::Paused, Status::Pausing], &[Status::Resuming]),
    };
    for _ in 0..5 {
        let Some((mut rec, rev)) = bus.execution(id).await? else {
            return Ok(PauseOutcome::NotFound);
        };
        if !crate::flow_events::is_workflow_runner(&rec.runner.name) {
            return Ok(PauseOutcome::NotAWorkflow(rec.runner.name));
        }
        if already.contains(&rec.status) {
            return Ok(PauseOutcome::Requested(Box::new(rec)));
        }
        if !from.contains(&rec.status) {
            return Ok(PauseOutcome::Not(rec.status));
        }
        rec.transition(to, time::now());
        if bus.update_execution(&rec, rev).await?.is_some() {
            let (event, name) = match to {
                Status::Pausing => (crate::flow_events::FlowEvent::Pause, "pause"),
                _ => (crate::flow_events::FlowEvent::Resume, "resume"),
            };
            let msg_id = format!("wf{name}-{}-{}", rec.id, rec.log.len());
            crate::flow_events::publish(bus, &rec.id, &msg_id, event).await?;
            tracing::info!(execution = %id, user = %by, status = %to, "{name} requested");
            return Ok(PauseOutcome::Requested(Box::new(rec)));
        }
    }
    Err(crate::error::bus_err(
        "pause or resume execution",
        "the execution kept changing",
    ))
}

/// Tells whoever runs `rec` to stop: its runner's node, or its workflow.
async fn ask_to_stop(bus: &Bus, rec: &ExecutionRecord) -> Result<(), EngineError> {
    if crate::flow_events::is_workflow_runner(&rec.runner.name) {
        let event = crate::flow_events::FlowEvent::Cancel;
        return crate::flow_events::publish(bus, &rec.id, &format!("wfcancel-{}", rec.id), event)
            .await;
    }
    bus.request_cancel(&rec.id).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_tag_picks_the_pool() {
        assert_eq!(pool_of(&[]).unwrap(), DEFAULT_POOL);
        let tags = [
            json!({"name": "other", "value": "x"}),
            json!({"name": POOL_TAG, "value": "gpu"}),
        ];
        assert_eq!(pool_of(&tags).unwrap(), "gpu");
        assert!(pool_of(&[json!({"name": POOL_TAG, "value": "a.b"})]).is_err());
        assert!(pool_of(&[json!({"name": POOL_TAG})]).is_err());
    }

    #[test]
    fn the_runner_loss_tag_picks_abandon_or_rerun() {
        assert_eq!(runner_loss_of(&[]).unwrap(), RunnerLoss::Abandon);
        let tag = |v: Value| [json!({"name": RUNNER_LOSS_TAG, "value": v})];
        assert_eq!(
            runner_loss_of(&tag(json!("rerun"))).unwrap(),
            RunnerLoss::Rerun
        );
        assert_eq!(
            runner_loss_of(&tag(json!("abandon"))).unwrap(),
            RunnerLoss::Abandon
        );
        let err = runner_loss_of(&tag(json!("retry")))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("squall.runner_loss") && err.contains("retry"),
            "{err}"
        );
        assert!(runner_loss_of(&tag(json!(1))).is_err());
    }
}

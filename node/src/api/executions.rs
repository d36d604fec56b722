//! `/executions`: run an action, list and read executions.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use squall_actors::auth::{Principal, Role};
use squall_actors::executions::{self, CancelOutcome, ExecutionSpec, PauseOutcome};
use squall_actors::history::Filter;
use squall_actors::workflows;
use squall_domain::execution::{ExecutionRecord, Status};
use squall_domain::params::MASK;
use squall_domain::{runner_types, time};

use super::error::{ApiError, ApiJson, ApiQuery};
use super::listing::{ListParams, Listed};
use super::query::flag;
use super::ApiState;

/// Body of `POST /executions`.
#[derive(Debug, Deserialize)]
pub struct RunBody {
    action: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    context: Map<String, Value>,
    /// StackStorm's `notify` for this execution, in place of the action's.
    #[serde(default)]
    notify: Option<NotifyBody>,
}

/// `notify` of `POST /executions`, in StackStorm's schema.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyBody {
    #[serde(
        rename = "on-complete",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    on_complete: Option<NotifySection>,
    #[serde(
        rename = "on-success",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    on_success: Option<NotifySection>,
    #[serde(
        rename = "on-failure",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    on_failure: Option<NotifySection>,
}

/// One section of `notify`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    routes: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    channels: Option<Vec<String>>,
}

/// Runs an action: 201 with the `requested` execution.
pub async fn create(
    State(st): State<ApiState>,
    Extension(me): Extension<Principal>,
    ApiJson(body): ApiJson<RunBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if let Some(user) = body.user.as_ref().filter(|u| **u != me.user) {
        if me.role < Role::Admin {
            return Err(ApiError::Forbidden(format!(
                "user: only an admin may run an action as another user ({user:?})"
            )));
        }
    }
    if body.action.trim().is_empty() {
        return Err(ApiError::BadRequest(
            "action: a pack.action reference is required".into(),
        ));
    }
    // A child names its parent in its context, as StackStorm's workflow
    // runners do (`context.parent.execution_id`).
    let parent = match body.context.get("parent").map(|p| &p["execution_id"]) {
        None => None,
        Some(Value::String(id)) => match st.bus.execution(id).await? {
            Some(_) => Some(id.clone()),
            None => {
                return Err(ApiError::BadRequest(format!(
                    "context.parent.execution_id: execution {id} not found"
                )))
            }
        },
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "context.parent.execution_id: must be an execution id, got {other}"
            )))
        }
    };
    let catalog = st.catalog.load();
    let spec = ExecutionSpec {
        action_ref: body.action,
        parameters: body.parameters,
        user: Some(body.user.unwrap_or(me.user)),
        context: body.context,
        parent,
        notify: body.notify.map(|n| json!(n)),
        ..ExecutionSpec::default()
    };
    let record = executions::prepare(&catalog, &st.renderer, &st.kv, &st.configs, spec)?;
    let stored = executions::submit(&st.bus, record).await?;
    Ok((StatusCode::CREATED, Json(view(&stored, false))))
}

/// Filters of `GET /executions`, as StackStorm names them.
#[derive(Debug, Default, Deserialize)]
pub struct ListFilters {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    runner: Option<String>,
    #[serde(default)]
    rule: Option<String>,
    #[serde(default)]
    trigger_instance: Option<String>,
    #[serde(default)]
    trigger: Option<String>,
    #[serde(default)]
    trigger_type: Option<String>,
    /// An execution id, or `null` for top-level executions only.
    #[serde(default)]
    parent: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    liveaction: Option<String>,
    #[serde(default)]
    timestamp_gt: Option<String>,
    #[serde(default)]
    timestamp_lt: Option<String>,
    #[serde(default, deserialize_with = "flag")]
    sort_asc: Option<bool>,
    #[serde(default, deserialize_with = "flag")]
    sort_desc: Option<bool>,
}

/// `show_secrets`, honoured for admins only.
#[derive(Debug, Default, Deserialize)]
pub struct Secrets {
    #[serde(default, deserialize_with = "flag")]
    show_secrets: Option<bool>,
}

impl Secrets {
    fn shown(&self, me: &Principal) -> bool {
        me.role >= Role::Admin && self.show_secrets == Some(true)
    }
}

fn timestamp(field: &str, text: &Option<String>) -> Result<Option<time::Timestamp>, ApiError> {
    text.as_deref()
        .map(|t| {
            time::parse(t).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "{field}: {t:?} is not an ISO 8601 timestamp (e.g. 2026-01-31T12:00:00Z)"
                ))
            })
        })
        .transpose()
}

impl ListFilters {
    fn filter(&self) -> Result<Filter, ApiError> {
        let status = match self.status.as_deref() {
            None => None,
            Some(s) => Some(Status::parse(s).ok_or_else(|| {
                ApiError::BadRequest(format!("status: {s:?} is not an execution status"))
            })?),
        };
        Ok(Filter {
            id: self.liveaction.clone(),
            status,
            action: self.action.clone(),
            runner: self.runner.clone(),
            rule: self.rule.clone(),
            trigger_instance: self.trigger_instance.clone(),
            trigger: self.trigger.clone(),
            trigger_type: self.trigger_type.clone(),
            parent: self.parent.as_deref().map(|p| match p {
                "null" | "None" | "" => None,
                id => Some(id.to_string()),
            }),
            user: self.user.clone(),
            after: timestamp("timestamp_gt", &self.timestamp_gt)?,
            before: timestamp("timestamp_lt", &self.timestamp_lt)?,
        })
    }

    /// Oldest first only when asked (`sort_asc` or `sort=start_timestamp`).
    fn ascending(&self, list: &ListParams) -> Result<bool, ApiError> {
        if self.sort_asc == Some(true) {
            return Ok(true);
        }
        if self.sort_desc == Some(true) {
            return Ok(false);
        }
        match list.sort.as_deref() {
            None | Some("") | Some("-start_timestamp") => Ok(false),
            Some("start_timestamp") => Ok(true),
            Some(other) => Err(ApiError::BadRequest(format!(
                "sort: executions sort by start_timestamp or -start_timestamp, not {other:?}"
            ))),
        }
    }
}

/// Lists executions, newest first, from the node's history index; reads
/// only the records on the page.
pub async fn list(
    State(st): State<ApiState>,
    Extension(me): Extension<Principal>,
    ApiQuery(list): ApiQuery<ListParams>,
    ApiQuery(q): ApiQuery<ListFilters>,
    ApiQuery(secrets): ApiQuery<Secrets>,
) -> Result<Listed, ApiError> {
    let limit = list.limit()?;
    let projection = list.projection()?;
    let filter = q.filter()?;
    history_ready(&st)?;
    let page = st
        .history
        .read()
        .page(&filter, q.ascending(&list)?, list.offset(), limit);
    let show = secrets.shown(&me);
    let records = read_records(&st, page.ids).await?;
    let items = records
        .iter()
        .map(|rec| projection.apply(view(rec, show)))
        .collect();
    Ok(Listed::new(items, page.total, limit))
}

/// Lists wait until the history index has caught up with the bucket
/// (after a start): answering from a partial index would be wrong.
pub fn history_ready(st: &ApiState) -> Result<(), ApiError> {
    if st.history.is_ready() {
        Ok(())
    } else {
        Err(ApiError::Unavailable(
            "the execution history is loading after a start; try again in a few seconds".into(),
        ))
    }
}

/// The records of `ids`, in order: the newest from the history's copies,
/// the others from the bucket in one batched read; ones deleted meanwhile
/// are left out.
async fn read_records(st: &ApiState, ids: Vec<String>) -> Result<Vec<ExecutionRecord>, ApiError> {
    let cached: Vec<(String, Option<bytes::Bytes>)> = {
        let history = st.history.read();
        ids.into_iter()
            .map(|id| {
                let bytes = history.record_bytes(&id);
                (id, bytes)
            })
            .collect()
    };
    let missing: Vec<String> = cached
        .iter()
        .filter(|(_, b)| b.is_none())
        .map(|(id, _)| id.clone())
        .collect();
    let mut fetched = squall_actors::history::read_records(&st.bus, &missing).await?;
    let mut out = Vec::with_capacity(cached.len());
    for (id, bytes) in cached {
        let Some(bytes) = bytes.or_else(|| fetched.remove(&id)) else {
            continue;
        };
        match serde_json::from_slice::<ExecutionRecord>(&bytes) {
            Ok(record) => out.push(record),
            Err(e) => tracing::warn!(id = %id, error = %e, "unreadable execution record"),
        }
    }
    Ok(out)
}

/// Query of `GET /executions/{id}/children`.
#[derive(Debug, Default, Deserialize)]
pub struct ChildrenQuery {
    /// Levels down; `-1` (the default) for all.
    #[serde(default)]
    depth: Option<i64>,
}

/// `GET /executions/{id}/children`: the descendants, parents first.
pub async fn children(
    State(st): State<ApiState>,
    Extension(me): Extension<Principal>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ChildrenQuery>,
    ApiQuery(secrets): ApiQuery<Secrets>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let depth = match q.depth {
        None | Some(-1) => None,
        Some(d) if d >= 0 => Some(d as usize),
        Some(d) => {
            return Err(ApiError::BadRequest(format!(
                "depth must be -1 (all levels) or a level count, got {d}"
            )))
        }
    };
    history_ready(&st)?;
    let (known, ids) = {
        let history = st.history.read();
        (history.contains(&id), history.descendants(&id, depth))
    };
    if !known && st.bus.execution(&id).await?.is_none() {
        return Err(ApiError::NotFound(format!("execution {id} not found")));
    }
    let show = secrets.shown(&me);
    let records = read_records(&st, ids).await?;
    Ok(Json(records.iter().map(|r| view(r, show)).collect()))
}

/// Query of `GET /executions/{id}/output`.
#[derive(Debug, Default, Deserialize)]
pub struct OutputQuery {
    /// `all` (default), `stdout` or `stderr`.
    #[serde(default)]
    pub output_type: Option<String>,
}

impl OutputQuery {
    /// The stream asked for, `None` for both.
    pub fn wanted(&self) -> Result<Option<&str>, ApiError> {
        match self.output_type.as_deref() {
            None | Some("all") | Some("") => Ok(None),
            Some(t @ ("stdout" | "stderr")) => Ok(Some(t)),
            Some(other) => Err(ApiError::BadRequest(format!(
                "output_type must be all, stdout or stderr, not {other:?}"
            ))),
        }
    }
}

/// `GET /executions/{id}/output`: the output so far as plain text, in the
/// order it was produced.
pub async fn output(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<OutputQuery>,
) -> Result<([(axum::http::HeaderName, &'static str); 1], String), ApiError> {
    let wanted = q.wanted()?;
    let Some((rec, _)) = st.bus.execution(&id).await? else {
        return Err(ApiError::NotFound(format!("execution {id} not found")));
    };
    let (stored, chunks) = st.bus.output_chunks(&id).await?;
    let mut text = String::new();
    if stored > 0 {
        let chunks: Vec<_> = chunks.take(stored as usize).collect().await;
        for (_, chunk) in chunks {
            let Ok(chunk) = serde_json::from_slice::<Value>(&chunk) else {
                continue;
            };
            if wanted.is_none_or(|w| chunk["output_type"] == w) {
                text.push_str(chunk["data"].as_str().unwrap_or_default());
            }
        }
    } else {
        // Output kept only in the result (older than the output stream's
        // retention, or produced by a runner that does not stream).
        for name in ["stdout", "stderr"] {
            if wanted.is_none_or(|w| w == name) {
                if let Some(part) = rec.result.get(name).and_then(Value::as_str) {
                    text.push_str(part);
                }
            }
        }
    }
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        text,
    ))
}

/// Body of `PUT /executions/{id}`.
#[derive(Debug, Deserialize)]
pub struct UpdateBody {
    status: String,
    #[serde(default)]
    result: Option<Value>,
}

/// `PUT /executions/{id}`: `canceling`/`canceled` cancel; `pausing`,
/// `paused` and `resuming` pause and resume workflows; a final status with
/// a `result` completes an execution waiting on something outside (a
/// `pending` one).
pub async fn update(
    st: State<ApiState>,
    me: Extension<Principal>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateBody>,
) -> Result<Json<Value>, ApiError> {
    let status = Status::parse(&body.status).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "status: {:?} is not an execution status",
            body.status
        ))
    })?;
    match status {
        Status::Canceling | Status::Canceled => return cancel(st, me, Path(id)).await,
        Status::Pausing | Status::Paused => {
            let outcome = executions::pause(&st.bus, &id, &me.user).await?;
            return pause_response(&id, outcome, "pause");
        }
        Status::Resuming | Status::Running => {
            let outcome = executions::resume(&st.bus, &id, &me.user).await?;
            return pause_response(&id, outcome, "resume");
        }
        s if !s.is_completed() => {
            return Err(ApiError::BadRequest(format!(
                "status: an execution can be set only to a final status \
                 (succeeded, failed, timeout, canceled, abandoned), not {s}"
            )))
        }
        _ => {}
    }
    for _ in 0..5 {
        let Some((mut rec, rev)) = st.bus.execution(&id).await? else {
            return Err(ApiError::NotFound(format!("execution {id} not found")));
        };
        if rec.status != Status::Pending {
            return Err(ApiError::Conflict(format!(
                "execution {id} is {}; only a pending execution (waiting on something \
                 outside Squall) takes a status and result from the API",
                rec.status
            )));
        }
        if let Some(result) = body.result.clone() {
            rec.result = result;
        }
        rec.transition(status, time::now());
        if st.bus.update_execution(&rec, rev).await?.is_some() {
            tracing::info!(execution = %id, user = %me.user, status = %status, "status set through the API");
            return Ok(Json(view(&rec, false)));
        }
    }
    Err(ApiError::Unavailable(format!(
        "execution {id} kept changing while being updated; try again"
    )))
}

/// The answer to a pause or resume request.
fn pause_response(id: &str, outcome: PauseOutcome, what: &str) -> Result<Json<Value>, ApiError> {
    match outcome {
        PauseOutcome::Requested(rec) => Ok(Json(view(&rec, false))),
        PauseOutcome::NotAWorkflow(runner) => Err(ApiError::BadRequest(format!(
            "status: execution {id} runs on runner {runner:?}, which cannot {what}; \
             only workflow executions can"
        ))),
        PauseOutcome::Not(status) => Err(ApiError::Conflict(format!(
            "execution {id} is {status}; only a running workflow can pause and only a \
             paused or pausing one can resume"
        ))),
        PauseOutcome::NotFound => Err(ApiError::NotFound(format!("execution {id} not found"))),
    }
}

/// Body of `POST /executions/{id}/re_run`.
#[derive(Debug, Default, Deserialize)]
pub struct ReRunBody {
    #[serde(default)]
    parameters: Map<String, Value>,
    /// Workflow tasks to re-run from (each must have run in the finished
    /// workflow); the workflow execution continues with the original's
    /// context and finished tasks.
    #[serde(default)]
    tasks: Vec<String>,
    /// With-items tasks whose items all run again; the others run again
    /// only their items that did not succeed.
    #[serde(default)]
    reset: Vec<String>,
}

/// `POST /executions/{id}/re_run`: a new execution of the same action with
/// the original parameters, `parameters` overriding them; 201.
pub async fn re_run(
    State(st): State<ApiState>,
    Extension(me): Extension<Principal>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ReRunBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Some((original, _)) = st.bus.execution(&id).await? else {
        return Err(ApiError::NotFound(format!("execution {id} not found")));
    };
    if let Some(task) = body.reset.iter().find(|t| !body.tasks.contains(t)) {
        return Err(ApiError::BadRequest(format!(
            "reset: task {task:?} is not one of the tasks to re-run"
        )));
    }
    if !body.tasks.is_empty() {
        if original.runner.name != workflows::RUNNER {
            return Err(ApiError::BadRequest(format!(
                "tasks: execution {id} runs on runner {:?}; only workflow executions re-run \
                 from tasks",
                original.runner.name
            )));
        }
        workflows::check_rerun(&st.bus, &id, &body.tasks)
            .await?
            .map_err(|why| ApiError::BadRequest(format!("tasks: {why}")))?;
    }
    let catalog = st.catalog.load();
    let action = catalog
        .actions
        .get(&original.action.action_ref)
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "action {:?} is no longer registered",
                original.action.action_ref
            ))
        })?;
    // The stored parameters are resolved: leave out what the caller could
    // not have given (immutable ones), then lay the overrides on top.
    let specs = runner_types::lookup(&action.def.runner_type)
        .map(|rt| squall_domain::params::merged_specs(rt, &action.def))
        .unwrap_or_default();
    let mut parameters: Map<String, Value> = original
        .parameters
        .iter()
        .filter(|(name, _)| !specs.get(*name).is_some_and(|s| s.immutable))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let context = rerun_context(&original, &id, &body);
    parameters.extend(body.parameters);
    let spec = ExecutionSpec {
        action_ref: original.action.action_ref.clone(),
        parameters,
        user: Some(me.user),
        context,
        ..ExecutionSpec::default()
    };
    let record = executions::prepare(&catalog, &st.renderer, &st.kv, &st.configs, spec)?;
    let stored = executions::submit(&st.bus, record).await?;
    Ok((StatusCode::CREATED, Json(view(&stored, false))))
}

/// The context of a re-run of `original`: what to re-run and, for a
/// re-run from tasks, the workflow execution it continues (a whole
/// re-run is a new one).
fn rerun_context(original: &ExecutionRecord, id: &str, body: &ReRunBody) -> Map<String, Value> {
    let mut context = Map::from_iter([(
        "re_run".to_string(),
        json!({"ref": id, "tasks": body.tasks, "reset": body.reset}),
    )]);
    if !body.tasks.is_empty() {
        let continued = original
            .context
            .get("workflow_execution")
            .cloned()
            .unwrap_or_else(|| json!(id));
        context.insert("workflow_execution".to_string(), continued);
    }
    context
}

/// `DELETE /executions/{id}`: cancels. An execution that has not started
/// is `canceled` at once; a running one becomes `canceling` and its node
/// kills the action (its whole process group), then records `canceled`.
pub async fn cancel(
    State(st): State<ApiState>,
    Extension(me): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    match executions::cancel(&st.bus, &id, &me.user).await? {
        CancelOutcome::Requested(rec) => Ok(Json(view(&rec, false))),
        CancelOutcome::AlreadyFinished(s) => Err(ApiError::Conflict(format!(
            "execution {id} is already {s}; only unfinished executions can be canceled"
        ))),
        CancelOutcome::NotFound => Err(ApiError::NotFound(format!("execution {id} not found"))),
    }
}

/// Reads one execution.
pub async fn get_one(
    State(st): State<ApiState>,
    Extension(me): Extension<Principal>,
    Path(id): Path<String>,
    ApiQuery(list): ApiQuery<ListParams>,
    ApiQuery(secrets): ApiQuery<Secrets>,
) -> Result<Json<Value>, ApiError> {
    let projection = list.projection()?;
    match st.bus.execution(&id).await? {
        Some((rec, _)) => Ok(Json(projection.apply(view(&rec, secrets.shown(&me))))),
        None => Err(ApiError::NotFound(format!("execution {id} not found"))),
    }
}

/// The API view of an execution: the record, `elapsed_seconds`, and secret
/// parameters masked unless `show_secrets`.
pub fn view(rec: &ExecutionRecord, show_secrets: bool) -> Value {
    let mut v = serde_json::to_value(rec).unwrap_or_else(|_| json!({}));
    if let Some(obj) = v.as_object_mut() {
        obj.insert(
            "elapsed_seconds".into(),
            json!(rec.elapsed_seconds(time::now())),
        );
        obj.insert("liveaction".into(), json!({"id": rec.id}));
        if let Some(Value::Object(params)) = obj.get_mut("parameters").filter(|_| !show_secrets) {
            let runner_secrets = runner_types::lookup(&rec.runner.name)
                .into_iter()
                .flat_map(|r| r.runner_parameters.iter())
                .filter(|(_, spec)| spec.secret)
                .map(|(name, _)| name);
            let action_secrets = rec
                .action
                .parameters
                .iter()
                .filter(|(_, spec)| spec.get("secret").and_then(Value::as_bool) == Some(true))
                .map(|(name, _)| name);
            for name in runner_secrets.chain(action_secrets) {
                if let Some(p) = params.get_mut(name) {
                    *p = json!(MASK);
                }
            }
        }
    }
    v
}

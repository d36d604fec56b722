//! `/executions`: run an action, list and read executions.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::{Extension, Json};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use squall_actors::auth::{Principal, Role};
use squall_actors::executions::{self, ExecutionSpec};
use squall_domain::execution::{ExecutionRecord, Status};
use squall_domain::params::MASK;
use squall_domain::{runner_types, time};

use super::error::{ApiError, ApiJson};
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
    let catalog = st.catalog.load();
    let spec = ExecutionSpec {
        action_ref: body.action,
        parameters: body.parameters,
        user: Some(body.user.unwrap_or(me.user)),
        context: body.context,
        ..ExecutionSpec::default()
    };
    let record = executions::prepare(&catalog, &st.renderer, &st.kv, spec)?;
    let stored = executions::submit(&st.bus, record).await?;
    Ok((StatusCode::CREATED, Json(view(&stored))))
}

/// Query of `GET /executions`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    limit: Option<i64>,
    #[serde(default)]
    offset: Option<usize>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    action: Option<String>,
}

/// Lists executions, newest first, with `X-Total-Count`.
pub async fn list(
    State(st): State<ApiState>,
    Query(q): Query<ListQuery>,
) -> Result<(HeaderMap, Json<Vec<Value>>), ApiError> {
    let limit = super::page_limit(q.limit)?;
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| {
            ApiError::BadRequest(format!("status: {s:?} is not an execution status"))
        })?),
    };
    let mut keys = st
        .bus
        .executions
        .keys()
        .await
        .map_err(|e| ApiError::Unavailable(format!("listing executions failed: {e}")))?;
    let mut ids = Vec::new();
    while let Some(k) = keys.next().await {
        ids.push(k.map_err(|e| ApiError::Unavailable(format!("listing executions failed: {e}")))?);
    }
    // Ids begin with their creation second: sorting them sorts by time.
    ids.sort_unstable_by(|a, b| b.cmp(a));
    let filtered = q.status.is_some() || q.action.is_some();
    let mut total = ids.len();
    let mut page = Vec::new();
    let mut matched = 0usize;
    let offset = q.offset.unwrap_or(0);
    for id in &ids {
        if !filtered && (matched < offset || page.len() >= limit) {
            matched += 1;
            continue;
        }
        let Some((rec, _)) = st.bus.execution(id).await? else {
            continue;
        };
        if status.is_some_and(|s| rec.status != s)
            || q.action
                .as_deref()
                .is_some_and(|a| rec.action.action_ref != a)
        {
            continue;
        }
        if matched >= offset && page.len() < limit {
            page.push(view(&rec));
        }
        matched += 1;
    }
    if filtered {
        total = matched;
    }
    let mut headers = HeaderMap::new();
    headers.insert("X-Total-Count", HeaderValue::from(total));
    if limit != usize::MAX {
        headers.insert("X-Limit", HeaderValue::from(limit));
    }
    Ok((headers, Json(page)))
}

/// Body of `POST /executions/{id}/re_run`.
#[derive(Debug, Default, Deserialize)]
pub struct ReRunBody {
    #[serde(default)]
    parameters: Map<String, Value>,
    /// Workflow tasks to re-run from; workflows are not runnable yet.
    #[serde(default)]
    tasks: Vec<String>,
}

/// `POST /executions/{id}/re_run`: a new execution of the same action with
/// the original parameters, `parameters` overriding them; 201.
pub async fn re_run(
    State(st): State<ApiState>,
    Extension(me): Extension<Principal>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ReRunBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if !body.tasks.is_empty() {
        return Err(ApiError::BadRequest(
            "tasks: re-running from workflow tasks needs a workflow execution".into(),
        ));
    }
    let Some((original, _)) = st.bus.execution(&id).await? else {
        return Err(ApiError::NotFound(format!("execution {id} not found")));
    };
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
        .map(|rt| squall_domain::params::merged_specs(&rt, &action.def))
        .unwrap_or_default();
    let mut parameters: Map<String, Value> = original
        .parameters
        .iter()
        .filter(|(name, _)| !specs.get(*name).is_some_and(|s| s.immutable))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    parameters.extend(body.parameters);
    let spec = ExecutionSpec {
        action_ref: original.action.action_ref.clone(),
        parameters,
        user: Some(me.user),
        context: Map::from_iter([("re_run".to_string(), json!({"ref": id}))]),
        ..ExecutionSpec::default()
    };
    let record = executions::prepare(&catalog, &st.renderer, &st.kv, spec)?;
    let stored = executions::submit(&st.bus, record).await?;
    Ok((StatusCode::CREATED, Json(view(&stored))))
}

/// `DELETE /executions/{id}`: cancels. An execution that has not started
/// is `canceled` at once; a running one becomes `canceling` and its node
/// kills the action (its whole process group), then records `canceled`.
pub async fn cancel(
    State(st): State<ApiState>,
    Extension(me): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    for _ in 0..5 {
        let Some((mut rec, rev)) = st.bus.execution(&id).await? else {
            return Err(ApiError::NotFound(format!("execution {id} not found")));
        };
        let now = time::now();
        match rec.status {
            s if s.is_completed() => {
                return Err(ApiError::Conflict(format!(
                    "execution {id} is already {s}; only unfinished executions can be canceled"
                )))
            }
            Status::Requested | Status::Scheduled | Status::Delayed | Status::Pending => {
                rec.result = json!({"error": format!("canceled by {} before it started", me.user)});
                rec.transition(Status::Canceled, now);
            }
            Status::Canceling => {
                st.bus.request_cancel(&id).await?;
                return Ok(Json(view(&rec)));
            }
            _ => rec.transition(Status::Canceling, now),
        }
        if st.bus.update_execution(&rec, rev).await?.is_some() {
            if rec.status == Status::Canceling {
                st.bus.request_cancel(&id).await?;
            }
            tracing::info!(execution = %id, user = %me.user, status = %rec.status, "cancel requested");
            return Ok(Json(view(&rec)));
        }
    }
    Err(ApiError::Unavailable(format!(
        "execution {id} kept changing while being canceled; try again"
    )))
}

/// Reads one execution.
pub async fn get_one(
    State(st): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    match st.bus.execution(&id).await? {
        Some((rec, _)) => Ok(Json(view(&rec))),
        None => Err(ApiError::NotFound(format!("execution {id} not found"))),
    }
}

/// The API view of an execution: the record, `elapsed_seconds`, and secret
/// parameters masked.
pub fn view(rec: &ExecutionRecord) -> Value {
    let mut v = serde_json::to_value(rec).unwrap_or_else(|_| json!({}));
    if let Some(obj) = v.as_object_mut() {
        obj.insert(
            "elapsed_seconds".into(),
            json!(rec.elapsed_seconds(time::now())),
        );
        obj.insert("liveaction".into(), json!({"id": rec.id}));
        if let Some(Value::Object(params)) = obj.get_mut("parameters") {
            let runner_secrets = runner_types::lookup(&rec.runner.name)
                .map(|r| r.runner_parameters)
                .unwrap_or_default()
                .into_iter()
                .filter(|(_, spec)| spec.secret)
                .map(|(name, _)| name);
            let action_secrets = rec
                .action
                .parameters
                .iter()
                .filter(|(_, spec)| spec.get("secret").and_then(Value::as_bool) == Some(true))
                .map(|(name, _)| name.clone());
            for name in runner_secrets.chain(action_secrets) {
                if let Some(p) = params.get_mut(&name) {
                    *p = json!(MASK);
                }
            }
        }
    }
    v
}

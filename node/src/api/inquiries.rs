//! `/inquiries`: questions actions (`core.ask`) put to people. An inquiry
//! is its execution: listed while `pending`, answered by `PUT` with a
//! response that must satisfy the inquiry's JSON schema, from a user or
//! role the inquiry allows; the answer completes the execution.

use axum::extract::{Path, State};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};
use squall_actors::auth::{Principal, Role};
use squall_actors::inquiries;
use squall_domain::execution::{ExecutionRecord, Status};
use squall_domain::{schema, time};

use super::error::{ApiError, ApiJson, ApiQuery};
use super::listing::{ListParams, Listed};
use super::ApiState;

fn view(record: &ExecutionRecord) -> Value {
    let r = &record.result;
    json!({
        "id": record.id,
        "route": r["route"],
        "ttl": r["ttl"],
        "users": r["users"],
        "roles": r["roles"],
        "schema": r["schema"],
        "status": record.status,
        "parent": record.parent,
        "start_timestamp": time::format(&record.start_timestamp),
    })
}

/// `GET /inquiries`: the open ones, newest first.
pub async fn list(
    State(st): State<ApiState>,
    ApiQuery(list): ApiQuery<ListParams>,
) -> Result<Listed, ApiError> {
    let mut items = Vec::new();
    for id in inquiries::open_ids(&st.history) {
        if let Some((record, _)) = st.bus.execution(&id).await? {
            if inquiries::is_open(&record) {
                items.push(view(&record));
            }
        }
    }
    list.respond(items)
}

async fn inquiry(st: &ApiState, id: &str) -> Result<(ExecutionRecord, u64), ApiError> {
    match st.bus.execution(id).await? {
        Some((record, rev)) if record.runner.name == inquiries::RUNNER => Ok((record, rev)),
        Some(_) => Err(ApiError::NotFound(format!(
            "execution {id} is not an inquiry (its runner is not {})",
            inquiries::RUNNER
        ))),
        None => Err(ApiError::NotFound(format!("inquiry {id} not found"))),
    }
}

/// `GET /inquiries/{id}`.
pub async fn get_one(
    State(st): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(view(&inquiry(&st, &id).await?.0)))
}

/// Body of `PUT /inquiries/{id}`.
#[derive(Debug, Deserialize)]
pub struct Respond {
    /// Echo of the inquiry id, as StackStorm's clients send it.
    #[serde(default)]
    id: Option<String>,
    response: Value,
}

/// Whether `me` may answer: anyone when the inquiry names no users and no
/// roles; else a named user, or a role at least as high as a named one.
fn may_answer(me: &Principal, result: &Value) -> bool {
    let names = |key: &str| -> Vec<String> {
        result[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let (users, roles) = (names("users"), names("roles"));
    if users.is_empty() && roles.is_empty() {
        return true;
    }
    users.contains(&me.user)
        || roles
            .iter()
            .filter_map(|r| r.parse::<Role>().ok())
            .any(|r| me.role >= r)
}

/// `PUT /inquiries/{id}`: answers; 200 with `{id, response}`.
pub async fn respond(
    State(st): State<ApiState>,
    Extension(me): Extension<Principal>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Respond>,
) -> Result<Json<Value>, ApiError> {
    if body.id.as_deref().is_some_and(|b| b != id) {
        return Err(ApiError::BadRequest(format!(
            "id: the body names inquiry {:?} but the URL names {id}",
            body.id.unwrap_or_default()
        )));
    }
    if !body.response.is_object() {
        return Err(ApiError::BadRequest(
            "response: must be an object of the fields the inquiry's schema asks for".into(),
        ));
    }
    for _ in 0..5 {
        let (mut record, rev) = inquiry(&st, &id).await?;
        if !inquiries::is_open(&record) {
            return Err(ApiError::Conflict(format!(
                "inquiry {id} is {} and takes no more responses",
                record.status
            )));
        }
        if !may_answer(&me, &record.result) {
            return Err(ApiError::Forbidden(format!(
                "user {:?} may not answer inquiry {id}: it asks users {} or roles {}",
                me.user, record.result["users"], record.result["roles"]
            )));
        }
        let problems = schema::validate(&body.response, &record.result["schema"], "response");
        if !problems.is_empty() {
            return Err(ApiError::BadRequest(format!(
                "the response does not satisfy inquiry {id}'s schema: {}",
                problems.join("; ")
            )));
        }
        if let Some(obj) = record.result.as_object_mut() {
            obj.insert("response".into(), body.response.clone());
        }
        record.transition(Status::Succeeded, time::now());
        if st.bus.update_execution(&record, rev).await?.is_some() {
            tracing::info!(inquiry = %id, user = %me.user, "inquiry answered");
            return Ok(Json(json!({"id": id, "response": body.response})));
        }
    }
    Err(ApiError::Unavailable(format!(
        "inquiry {id} kept changing while being answered; try again"
    )))
}

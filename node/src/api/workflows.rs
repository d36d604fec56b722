//! `POST /workflows/inspect`: an Orquesta definition in, every problem out
//! (an empty list when it is valid), as StackStorm's route answers; and
//! `GET /executions/{id}/workflow`, a workflow execution's task graph.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};
use squall_actors::workflows;
use squall_domain::orquesta::spec::Join;

use super::error::ApiError;
use super::ApiState;

/// Inspects the definition sent as the body (YAML text).
pub async fn inspect(body: Bytes) -> Result<Json<Value>, ApiError> {
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::BadRequest("the workflow definition must be UTF-8 text".into()))?;
    if text.trim().is_empty() {
        return Err(ApiError::BadRequest(
            "send the workflow definition (YAML) as the request body".into(),
        ));
    }
    let (_, issues) = squall_domain::orquesta::inspect(text);
    Ok(Json(serde_json::to_value(issues).unwrap_or_default()))
}

/// `GET /executions/{id}/workflow`: the task graph of a workflow
/// execution, from the definition it runs: `{tasks: [{name, action, join,
/// next: [{when, to}]}]}`, tasks by name. Task states are the
/// execution's children (their `context.orquesta.task_name`).
pub async fn graph(
    State(st): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let Some(definition) = workflows::definition_of(&st.bus, &id).await? else {
        return Err(ApiError::NotFound(format!(
            "execution {id} is not a workflow that has started"
        )));
    };
    let (spec, issues) = squall_domain::orquesta::inspect(&definition);
    let Some(spec) = spec else {
        return Err(ApiError::Conflict(format!(
            "the definition of workflow execution {id} is invalid: {}",
            serde_json::to_string(&issues).unwrap_or_default()
        )));
    };
    let tasks: Vec<Value> = spec
        .tasks
        .iter()
        .map(|(name, task)| {
            let join = match task.join {
                None => Value::Null,
                Some(Join::All) => json!("all"),
                Some(Join::Count(n)) => json!(n),
            };
            json!({
                "name": name,
                "action": task.action,
                "join": join,
                "next": task.next.iter().map(|t| json!({"when": t.when, "to": t.next})).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Json(json!({"tasks": tasks})))
}

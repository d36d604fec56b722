//! Manual purges, StackStorm's `st2-purge-executions`,
//! `st2-purge-trigger-instances` and `st2-purge-rule-enforcements` as
//! routes (admins only): `POST /executions/purge`,
//! `POST /triggerinstances/purge`, `POST /ruleenforcements/purge`.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use squall_actors::history::PurgeFilter;
use squall_actors::retention;
use squall_domain::execution::Status;
use squall_domain::time::{self, Timestamp};

use super::error::{ApiError, ApiJson};
use super::executions::history_ready;
use super::ApiState;

/// Body of `POST /executions/purge`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutionsPurge {
    /// Executions requested and ended before this time go (StackStorm's
    /// `--timestamp`).
    before: String,
    /// Only executions of this action (StackStorm's `--action-ref`).
    #[serde(default)]
    action: Option<String>,
    /// Only executions that ended with this status.
    #[serde(default)]
    status: Option<String>,
}

/// Body of the other purges.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Purge {
    /// Objects stored before this time go.
    before: String,
}

/// A purge's cut: a timestamp, not in the future.
fn cut(text: &str) -> Result<Timestamp, ApiError> {
    let at = time::parse(text).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "before: {text:?} is not an ISO 8601 timestamp (e.g. 2026-01-31T12:00:00Z)"
        ))
    })?;
    if at > time::now() {
        return Err(ApiError::BadRequest(format!(
            "before: {text:?} is in the future; a purge removes what is older than a past time"
        )));
    }
    Ok(at)
}

/// `POST /executions/purge`: removes finished executions requested and
/// ended before `before` (with their output and workflow state; a
/// workflow with its tasks, and never one still running).
pub async fn executions(
    State(st): State<ApiState>,
    ApiJson(body): ApiJson<ExecutionsPurge>,
) -> Result<Json<Value>, ApiError> {
    let before = cut(&body.before)?;
    let status = match body.status.as_deref() {
        None => None,
        Some(s) => match Status::parse(s) {
            Some(st) if st.is_completed() => Some(st),
            Some(_) => {
                return Err(ApiError::BadRequest(format!(
                    "status: {s:?} is not a finished status; only finished executions \
                     (succeeded, failed, timeout, canceled, abandoned) are purged"
                )))
            }
            None => {
                return Err(ApiError::BadRequest(format!(
                    "status: {s:?} is not an execution status"
                )))
            }
        },
    };
    history_ready(&st)?;
    let filter = PurgeFilter {
        before,
        action: body.action,
        status,
    };
    let removed = retention::purge_executions(&st.bus, &st.history, &filter, &|| true).await?;
    tracing::info!(before = %time::format(&before), action = ?filter.action, status = ?filter.status,
        executions = removed.executions, kept_running = removed.kept_running, "executions purged");
    Ok(Json(json!({
        "deleted": removed.executions,
        "kept_running": removed.kept_running,
    })))
}

/// `POST /triggerinstances/purge`.
pub async fn trigger_instances(
    State(st): State<ApiState>,
    ApiJson(body): ApiJson<Purge>,
) -> Result<Json<Value>, ApiError> {
    let before = cut(&body.before)?;
    let n = retention::purge_trigger_instances(&st.bus, before).await?;
    tracing::info!(before = %time::format(&before), trigger_instances = n, "trigger instances purged");
    Ok(Json(json!({ "deleted": n })))
}

/// `POST /ruleenforcements/purge`.
pub async fn rule_enforcements(
    State(st): State<ApiState>,
    ApiJson(body): ApiJson<Purge>,
) -> Result<Json<Value>, ApiError> {
    let before = cut(&body.before)?;
    let n = retention::purge_rule_enforcements(&st.bus, before).await?;
    tracing::info!(before = %time::format(&before), rule_enforcements = n, "rule enforcements purged");
    Ok(Json(json!({ "deleted": n })))
}

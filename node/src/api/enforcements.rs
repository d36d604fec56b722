//! `/ruleenforcements`: what each rule did with each trigger instance.

use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use serde_json::Value;
use squall_domain::execution::RuleEnforcement;

use super::error::{ApiError, ApiQuery};
use super::listing::{ListParams, Listed};
use super::ApiState;

/// Query of `GET /ruleenforcements`.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    /// Only this rule's (`pack.name`).
    #[serde(default)]
    rule_ref: Option<String>,
    #[serde(default)]
    trigger_instance: Option<String>,
    #[serde(default)]
    execution: Option<String>,
}

fn keep(q: &ListQuery, e: &RuleEnforcement) -> bool {
    q.rule_ref.as_deref().is_none_or(|r| e.rule.rule_ref == r)
        && q.trigger_instance
            .as_deref()
            .is_none_or(|t| e.trigger_instance_id == t)
        && q.execution
            .as_deref()
            .is_none_or(|x| e.execution_id.as_deref() == Some(x))
}

/// `GET /ruleenforcements`: newest first, with `X-Total-Count`.
pub async fn list(
    State(st): State<ApiState>,
    ApiQuery(list): ApiQuery<ListParams>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Listed, ApiError> {
    let mut matched = Vec::new();
    for id in st.bus.enforcement_ids().await? {
        if let Some(e) = st.bus.enforcement(&id).await?.filter(|e| keep(&q, e)) {
            matched.push(e);
        }
    }
    matched.sort_by_key(|e| std::cmp::Reverse(e.enforced_at));
    list.respond(
        matched
            .iter()
            .map(|e| serde_json::to_value(e).unwrap_or_default())
            .collect(),
    )
}

/// `GET /ruleenforcements/{id}`.
pub async fn get_one(
    State(st): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    match st.bus.enforcement(&id).await? {
        Some(e) => Ok(Json(serde_json::to_value(&e).unwrap_or_default())),
        None => Err(ApiError::NotFound(format!(
            "rule enforcement {id} not found"
        ))),
    }
}

//! `/ruleenforcements`: what each rule did with each trigger instance.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::Json;
use serde::Deserialize;
use serde_json::Value;
use squall_domain::execution::RuleEnforcement;

use super::error::ApiError;
use super::ApiState;

/// Query of `GET /ruleenforcements`.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    limit: Option<i64>,
    #[serde(default)]
    offset: Option<usize>,
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
    Query(q): Query<ListQuery>,
) -> Result<(HeaderMap, Json<Vec<Value>>), ApiError> {
    let limit = super::page_limit(q.limit)?;
    let offset = q.offset.unwrap_or(0);
    let mut matched = 0usize;
    let mut page = Vec::new();
    for id in st.bus.enforcement_ids().await? {
        let Some(e) = st.bus.enforcement(&id).await? else {
            continue;
        };
        if !keep(&q, &e) {
            continue;
        }
        if matched >= offset && page.len() < limit {
            page.push(serde_json::to_value(&e).unwrap_or_default());
        }
        matched += 1;
    }
    let mut headers = HeaderMap::new();
    headers.insert("X-Total-Count", HeaderValue::from(matched));
    Ok((headers, Json(page)))
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

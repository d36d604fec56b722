//! `/ruleenforcements`: what each rule did with each trigger instance.

use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use serde_json::Value;
use squall_actors::rule_history::{enforcement_page, EnforcementList};

use super::error::{ApiError, ApiQuery};
use super::listing::{ListParams, Listed};
use super::triggers::timestamp;
use super::ApiState;

/// Query of `GET /ruleenforcements`: StackStorm's filters.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    /// Only this rule's (`pack.name`).
    #[serde(default)]
    rule_ref: Option<String>,
    #[serde(default)]
    rule_id: Option<String>,
    #[serde(default)]
    trigger_instance: Option<String>,
    #[serde(default)]
    execution: Option<String>,
    #[serde(default)]
    enforced_at: Option<String>,
    #[serde(default)]
    enforced_at_gt: Option<String>,
    #[serde(default)]
    enforced_at_lt: Option<String>,
}

impl ListQuery {
    fn list(&self, params: &ListParams) -> Result<EnforcementList, ApiError> {
        let ascending = match params.sort.as_deref() {
            None | Some("") | Some("-enforced_at") => false,
            Some("enforced_at") => true,
            Some(other) => {
                return Err(ApiError::BadRequest(format!(
                    "sort: rule enforcements sort by enforced_at or -enforced_at, not {other:?}"
                )))
            }
        };
        let given = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
        Ok(EnforcementList {
            rule_ref: given(&self.rule_ref),
            rule_id: given(&self.rule_id),
            execution: given(&self.execution),
            trigger_instance: given(&self.trigger_instance),
            at: timestamp("enforced_at", self.enforced_at.as_deref())?,
            after: timestamp("enforced_at_gt", self.enforced_at_gt.as_deref())?,
            before: timestamp("enforced_at_lt", self.enforced_at_lt.as_deref())?,
            ascending,
            offset: params.offset(),
            limit: params.limit()?,
        })
    }
}

/// `GET /ruleenforcements`: newest first (`sort=enforced_at` for oldest
/// first), with `X-Total-Count`. Answered from the node's index of the
/// bucket; while that loads after a start, by reading the bucket.
pub async fn list(
    State(st): State<ApiState>,
    ApiQuery(params): ApiQuery<ListParams>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Listed, ApiError> {
    let projection = params.projection()?;
    let list = q.list(&params)?;
    let (found, total) = if st.enforcements.is_ready() {
        enforcement_page(&st.bus, &st.enforcements, &list).await?
    } else {
        let mut matched = Vec::new();
        for id in st.bus.enforcement_ids().await? {
            if let Some(e) = st.bus.enforcement(&id).await?.filter(|e| list.keeps(e)) {
                matched.push(e);
            }
        }
        matched.sort_by(|a, b| (a.enforced_at, &a.id).cmp(&(b.enforced_at, &b.id)));
        if !list.ascending {
            matched.reverse();
        }
        let total = matched.len();
        let page = matched
            .into_iter()
            .skip(list.offset)
            .take(list.limit)
            .collect();
        (page, total)
    };
    let items = found
        .iter()
        .map(|e| projection.apply(serde_json::to_value(e).unwrap_or_default()))
        .collect();
    Ok(Listed::new(items, total, list.limit))
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

//! StackStorm's trace API: `GET /traces` and `GET /traces/{id}`, so that
//! `st2 trace list` and `st2 trace get` show which trigger instance caused
//! which rule enforcement caused which executions, across workflows.
//!
//! A trace is not stored: it is derived from the records that already say
//! all of it. Its root is a trigger instance (the trace id is the
//! instance's id, its tag the instance's `trace_tag`, else the id) or, for
//! an execution requested without one, that execution. Its rules and
//! executions are the executions the instance caused (the history index's
//! `trigger_instance` filter) and their descendants, each with StackStorm's
//! `caused_by`. While the index loads after a start, both answer 503
//! with `Retry-After`, as execution lists do: a partial index would give
//! partial traces.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use squall_actors::history::{Filter, History, Summary};
use squall_domain::execution::TriggerInstance;
use squall_domain::time::{self, Timestamp};

use super::error::{ApiError, ApiQuery};
use super::executions::history_ready;
use super::listing::{ListParams, Listed};
use super::ApiState;

/// Most traces one filter may gather before paging.
const MAX_GATHERED: usize = 10_000;

/// Filters of `GET /traces` (StackStorm's `supported_filters`).
#[derive(Debug, Default, Deserialize)]
pub struct TraceQuery {
    #[serde(default)]
    trace_tag: Option<String>,
    #[serde(default)]
    execution: Option<String>,
    #[serde(default)]
    rule: Option<String>,
    #[serde(default)]
    trigger_instance: Option<String>,
    #[serde(default)]
    sort_asc: Option<String>,
    #[serde(default)]
    sort_desc: Option<String>,
}

/// Where a trace starts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Root {
    Instance(String),
    Execution(String),
}

/// The root of the trace `execution_id` belongs to: its top-level
/// ancestor's trigger instance, or that ancestor.
fn root_of(history: &History, execution_id: &str) -> Option<Root> {
    let mut s = history.summary(execution_id)?;
    while let Some(parent) = s.parent.as_deref().and_then(|p| history.summary(p)) {
        s = parent;
    }
    Some(match &s.trigger_instance {
        Some(ti) => Root::Instance(ti.id.clone()),
        None => Root::Execution(s.id.clone()),
    })
}

fn component(id: &str, reference: &str, at: &Timestamp, caused_by: Value) -> Value {
    json!({
        "object_id": id,
        "ref": reference,
        "updated_at": time::format(at),
        "caused_by": caused_by,
    })
}

/// The executions under `top` (itself first), with their `caused_by`.
fn executions_under(history: &History, top: &Summary, caused_by: Value, out: &mut Vec<Value>) {
    out.push(component(
        &top.id,
        &top.action.action_ref,
        &top.start_timestamp,
        caused_by,
    ));
    for child in history.descendants(&top.id, None) {
        if let Some(c) = history.summary(&child) {
            out.push(component(
                &c.id,
                &c.action.action_ref,
                &c.start_timestamp,
                json!({"type": "action_execution", "id": c.parent}),
            ));
        }
    }
}

/// A whole trace as StackStorm shows it; `None` when its root is gone.
async fn build(st: &ApiState, root: &Root) -> Result<Option<Value>, ApiError> {
    match root {
        Root::Instance(id) => {
            let Some((ti, _)) = st.bus.trigger_instance(id).await? else {
                return Ok(None);
            };
            Ok(Some(instance_trace(&st.history.read(), &ti)))
        }
        Root::Execution(id) => {
            let Some((record, _)) = st.bus.execution(id).await? else {
                return Ok(None);
            };
            let history = st.history.read();
            let Some(top) = history.summary(id) else {
                return Ok(None);
            };
            let mut executions = Vec::new();
            executions_under(&history, &top, json!({}), &mut executions);
            let tag = record
                .context
                .get("trace_context")
                .and_then(|t| t.get("trace_tag"))
                .and_then(Value::as_str)
                .unwrap_or(id);
            Ok(Some(trace(
                id,
                tag,
                &record.start_timestamp,
                executions,
                Vec::new(),
                Vec::new(),
            )))
        }
    }
}

fn instance_trace(history: &History, ti: &TriggerInstance) -> Value {
    let page = history.page(
        &Filter {
            trigger_instance: Some(ti.id.clone()),
            ..Filter::default()
        },
        true,
        0,
        MAX_GATHERED,
    );
    let mut executions = Vec::new();
    let mut rules = BTreeMap::new();
    for id in &page.ids {
        let Some(s) = history.summary(id) else {
            continue;
        };
        let caused_by = match &s.rule {
            Some(rule) => {
                rules.entry(rule.id.clone()).or_insert_with(|| {
                    component(
                        &rule.id,
                        &rule.reference,
                        &s.start_timestamp,
                        json!({"type": "trigger_instance", "id": ti.id}),
                    )
                });
                json!({"type": "rule", "id": format!("{}:{}", rule.id, ti.id)})
            }
            None => json!({"type": "trigger_instance", "id": ti.id}),
        };
        executions_under(history, &s, caused_by, &mut executions);
    }
    let instances = vec![component(
        &ti.id,
        &ti.trigger,
        &ti.occurrence_time,
        json!({}),
    )];
    trace(
        &ti.id,
        ti.trace_tag.as_deref().unwrap_or(&ti.id),
        &ti.occurrence_time,
        executions,
        rules.into_values().collect(),
        instances,
    )
}

fn trace(
    id: &str,
    tag: &str,
    start: &Timestamp,
    executions: Vec<Value>,
    rules: Vec<Value>,
    instances: Vec<Value>,
) -> Value {
    json!({
        "id": id,
        "uid": format!("trace:{id}"),
        "trace_tag": tag,
        "action_executions": executions,
        "rules": rules,
        "trigger_instances": instances,
        "start_timestamp": time::format(start),
    })
}

/// `GET /traces/{id}`.
pub async fn get_one(
    State(st): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    history_ready(&st)?;
    let not_found = || ApiError::NotFound(format!("Resource with a id of \"{id}\" not found"));
    let root = if st.bus.trigger_instance(&id).await?.is_some() {
        Root::Instance(id.clone())
    } else if st
        .history
        .read()
        .summary(&id)
        .is_some_and(|s| s.parent.is_none())
    {
        Root::Execution(id.clone())
    } else {
        return Err(not_found());
    };
    build(&st, &root).await?.map(Json).ok_or_else(not_found)
}

/// `GET /traces`: newest first (or `sort_asc=True`), filtered by
/// `trace_tag`, `execution`, `rule` or `trigger_instance`.
pub async fn list(
    State(st): State<ApiState>,
    ApiQuery(list): ApiQuery<ListParams>,
    ApiQuery(q): ApiQuery<TraceQuery>,
) -> Result<Listed, ApiError> {
    history_ready(&st)?;
    let mut roots = Vec::new();
    if let Some(ti) = &q.trigger_instance {
        roots.push(Root::Instance(ti.clone()));
    }
    if let Some(e) = &q.execution {
        let found = root_of(&st.history.read(), e);
        match found {
            Some(r) => roots.push(r),
            None => return list.respond(Vec::new()),
        }
    }
    if let Some(rule) = &q.rule {
        let history = st.history.read();
        let page = history.page(
            &Filter {
                rule: Some(rule.clone()),
                ..Filter::default()
            },
            false,
            0,
            MAX_GATHERED,
        );
        let mut found: Vec<Root> = page
            .ids
            .iter()
            .filter_map(|id| root_of(&history, id))
            .collect();
        found.sort();
        found.dedup();
        if roots.is_empty() {
            roots = found;
        } else {
            roots.retain(|r| found.contains(r));
        }
    }
    let filtered = q.trigger_instance.is_some() || q.execution.is_some() || q.rule.is_some();
    if !filtered {
        let wanted = list
            .offset()
            .saturating_add(list.limit()?)
            .min(MAX_GATHERED);
        let tagged = q.trace_tag.is_some();
        let (instances, _) = if tagged {
            st.bus
                .find_trigger_instances(&Default::default(), 0, MAX_GATHERED)
                .await?
        } else {
            st.bus.recent_trigger_instances(0, wanted).await?
        };
        roots.extend(instances.into_iter().map(|(ti, _)| Root::Instance(ti.id)));
        // Executions requested without a trigger instance start their own.
        let history = st.history.read();
        let top = history.page(
            &Filter {
                parent: Some(None),
                ..Filter::default()
            },
            false,
            0,
            if tagged { MAX_GATHERED } else { wanted },
        );
        roots.extend(
            top.ids
                .iter()
                .filter(|id| {
                    history
                        .summary(id)
                        .is_some_and(|s| s.trigger_instance.is_none())
                })
                .map(|id| Root::Execution(id.clone())),
        );
    }
    let mut traces = Vec::new();
    for root in &roots {
        if let Some(t) = build(&st, root).await? {
            if q.trace_tag
                .as_deref()
                .is_none_or(|tag| t["trace_tag"] == tag)
            {
                traces.push(t);
            }
        }
    }
    let ascending =
        q.sort_asc.as_deref().is_some_and(is_true) && !q.sort_desc.as_deref().is_some_and(is_true);
    traces.sort_by(|a, b| {
        let order = a["start_timestamp"]
            .as_str()
            .cmp(&b["start_timestamp"].as_str())
            .then_with(|| a["trace_tag"].as_str().cmp(&b["trace_tag"].as_str()));
        if ascending {
            order
        } else {
            order.reverse()
        }
    });
    list.respond(traces)
}

fn is_true(v: &str) -> bool {
    matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes")
}

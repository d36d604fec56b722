//! Webhooks and trigger instances.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use squall_actors::catalog::{content_id, Trigger};
use squall_actors::instances::TriggerInstanceFilter;
use squall_actors::rule_history::InstanceList;
use squall_domain::execution::{TriggerInstance, RECORD_VERSION};
use squall_domain::{ids, time, triggers};

use super::content::find_by_ref;
use super::error::{ApiError, ApiQuery};
use super::listing::{ListParams, Listed};
use super::ApiState;

/// Header that sets the trace tag of the trigger instances a webhook fires.
const TRACE_TAG_HEADER: &str = "st2-trace-tag";

fn webhook_view(t: &Trigger) -> Value {
    json!({"ref": t.reference, "type": t.trigger_type, "parameters": t.parameters})
}

/// `GET /webhooks`: the webhook triggers rules listen to.
pub async fn list_webhooks(State(st): State<ApiState>) -> Json<Vec<Value>> {
    let catalog = st.catalog.load();
    Json(
        catalog
            .triggers_of_type(triggers::WEBHOOK)
            .iter()
            .map(webhook_view)
            .collect(),
    )
}

/// `GET /webhooks/{url}`: the webhook registered at `url`.
pub async fn get_webhook(
    State(st): State<ApiState>,
    Path(url): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let url = url.trim_matches('/');
    let catalog = st.catalog.load();
    catalog
        .webhooks_at(url)
        .first()
        .map(|t| Json(webhook_view(t)))
        .ok_or_else(|| ApiError::NotFound(format!("no webhook is registered at {url:?}")))
}

fn trigger_view(t: &Trigger) -> Value {
    let (pack, name) = t.reference.split_once('.').unwrap_or(("", &t.reference));
    json!({
        "id": content_id("trigger", &t.reference),
        "ref": t.reference,
        "uid": format!("trigger:{pack}:{name}"),
        "pack": pack,
        "name": name,
        "type": t.trigger_type,
        "parameters": t.parameters,
    })
}

/// `GET /triggers`: the triggers enabled rules listen to (a trigger is a
/// trigger type with parameters, e.g. a webhook's `url`).
pub async fn list_triggers(
    State(st): State<ApiState>,
    ApiQuery(list): ApiQuery<ListParams>,
) -> Result<Listed, ApiError> {
    let catalog = st.catalog.load();
    list.respond(catalog.triggers().iter().map(trigger_view).collect())
}

/// `GET /triggers/{ref or id}`.
pub async fn get_trigger(
    State(st): State<ApiState>,
    Path(reference): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let catalog = st.catalog.load();
    find_by_ref(
        catalog.triggers().iter(),
        "trigger",
        &reference,
        |t| t.reference.clone(),
        trigger_view,
    )
}

/// `POST /triggerinstances/{id}/re_emit`: sends the instance's trigger and
/// payload again as a new instance, its payload's `__context.original_id`
/// naming the first, as StackStorm does. 200 with the payload sent.
pub async fn re_emit(
    State(st): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (original, _) = st
        .bus
        .trigger_instance(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("trigger instance {id} not found")))?;
    let mut payload = original.payload.clone();
    if let Some(obj) = payload.as_object_mut() {
        obj.insert("__context".into(), json!({"original_id": original.id}));
    }
    let now = time::now();
    let instance = TriggerInstance {
        id: ids::fresh(&now),
        payload: payload.clone(),
        occurrence_time: now,
        ..original
    };
    st.bus.publish_trigger(&instance).await?;
    tracing::info!(trigger_instance = %instance.id, original = %id, "trigger instance re-emitted");
    Ok(Json(json!({
        "message": format!("Trigger instance {id} successfully re-sent."),
        "id": instance.id,
        "payload": payload,
    })))
}

/// The body of a webhook as StackStorm's router reads it, by
/// `Content-Type`: JSON (the default; an empty body is `{}`), a form
/// (`application/x-www-form-urlencoded`: each field a list of its values,
/// blank values left out, as Python's `parse_qs`), or `text/plain` holding
/// JSON. The result must be an object or an array.
pub fn webhook_body(content_type: Option<&str>, raw: &[u8]) -> Result<Value, ApiError> {
    let media = content_type
        .and_then(|c| c.split(';').next())
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "application/json".into());
    let failed = |why: String| ApiError::BadRequest(format!("Failed to parse request body: {why}"));
    let body = match media.as_str() {
        "application/json" | "text/plain" if raw.iter().all(u8::is_ascii_whitespace) => {
            json!({})
        }
        "application/json" => serde_json::from_slice(raw).map_err(|e| failed(e.to_string()))?,
        "text/plain" => serde_json::from_slice(raw).map_err(|e| {
            failed(format!(
                "a text/plain webhook body must hold JSON ({e}); send fields as application/x-www-form-urlencoded"
            ))
        })?,
        "application/x-www-form-urlencoded" => {
            let pairs: Vec<(String, String)> =
                serde_urlencoded::from_bytes(raw).map_err(|e| failed(e.to_string()))?;
            let mut fields = Map::new();
            for (name, value) in pairs.into_iter().filter(|(_, v)| !v.is_empty()) {
                if let Value::Array(values) = fields.entry(name).or_insert_with(|| json!([])) {
                    values.push(Value::String(value));
                }
            }
            Value::Object(fields)
        }
        other => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "Failed to parse request body: Unsupported Content-Type: {other:?}; send application/json, application/x-www-form-urlencoded or text/plain (JSON)"
            )))
        }
    };
    match body {
        Value::Object(_) | Value::Array(_) => Ok(body),
        other => Err(ApiError::BadRequest(format!(
            "Webhook body needs to be an object or an array, got: {}",
            json_type(&other)
        ))),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// `POST /webhooks/{url}`: fires the webhook trigger registered at `url`
/// (202, body echoed), or for `st2`, any trigger named in the body.
pub async fn fire_webhook(
    State(st): State<ApiState>,
    Path(url): Path<String>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let body = webhook_body(content_type, &raw?)?;
    let url = url.trim_matches('/').to_string();
    let trace_tag = headers
        .get(TRACE_TAG_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let now = time::now();
    let instances = if url == "st2" {
        vec![generic_instance(&body, now, trace_tag)?]
    } else {
        let catalog = st.catalog.load();
        let matching = catalog.webhooks_at(&url);
        if matching.is_empty() {
            return Err(ApiError::NotFound(format!(
                "no webhook is registered at {url:?}: no enabled rule has trigger core.st2.webhook with url {url:?}"
            )));
        }
        let (headers_obj, headers_lower) = header_maps(&headers);
        matching
            .iter()
            .map(|t| TriggerInstance {
                v: RECORD_VERSION,
                id: ids::fresh(&now),
                trigger: t.reference.clone(),
                trigger_type: t.trigger_type.clone(),
                trigger_parameters: t.parameters.clone(),
                payload: json!({"headers": headers_obj, "headers_lower": headers_lower, "body": body}),
                occurrence_time: now,
                trace_tag: trace_tag.clone(),
            })
            .collect()
    };
    for instance in &instances {
        st.bus.publish_trigger(instance).await?;
        tracing::info!(trigger_instance = %instance.id, trigger = %instance.trigger, "webhook accepted");
    }
    Ok((StatusCode::ACCEPTED, Json(body)))
}

fn generic_instance(
    body: &Value,
    now: time::Timestamp,
    trace_tag: Option<String>,
) -> Result<TriggerInstance, ApiError> {
    if !body.is_object() {
        return Err(ApiError::BadRequest(format!(
            "Webhook body needs to be an object, got: {}",
            json_type(body)
        )));
    }
    let trigger = body
        .get("trigger")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::BadRequest(
                "trigger: the st2 webhook needs a body {\"trigger\": \"pack.type\", \"payload\": {...}}".into(),
            )
        })?;
    let payload = body.get("payload").cloned().unwrap_or_else(|| json!({}));
    if !payload.is_object() {
        return Err(ApiError::BadRequest("payload: must be an object".into()));
    }
    Ok(TriggerInstance {
        v: RECORD_VERSION,
        id: ids::fresh(&now),
        trigger: trigger.to_string(),
        trigger_type: trigger.to_string(),
        trigger_parameters: Map::new(),
        payload,
        occurrence_time: now,
        trace_tag,
    })
}

/// Headers that carry the caller's credentials: never copied into a
/// trigger instance (rules, logs and the API would show them), as
/// StackStorm filters them too.
const CREDENTIAL_HEADERS: [&str; 4] = ["x-auth-token", "st2-api-key", "cookie", "authorization"];

fn header_maps(headers: &HeaderMap) -> (Map<String, Value>, Map<String, Value>) {
    let mut as_sent = Map::new();
    let mut lower = Map::new();
    for (name, value) in headers {
        if CREDENTIAL_HEADERS.contains(&name.as_str()) {
            continue;
        }
        let v = json!(String::from_utf8_lossy(value.as_bytes()));
        // HeaderMap names are lowercase already; StackStorm shows them as the
        // client sent them, which HTTP/1 clients title-case by convention.
        as_sent.insert(title_case(name.as_str()), v.clone());
        lower.insert(name.as_str().to_string(), v);
    }
    (as_sent, lower)
}

fn title_case(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut c = part.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// Filters of `GET /triggerinstances`, as StackStorm's controller takes
/// them.
#[derive(Debug, Default, Deserialize)]
pub struct InstanceFilters {
    #[serde(default)]
    trigger: Option<String>,
    #[serde(default)]
    timestamp_gt: Option<String>,
    #[serde(default)]
    timestamp_lt: Option<String>,
    #[serde(default)]
    status: Option<String>,
}

/// A trigger instance's statuses in StackStorm; Squall's are `pending`
/// (its rules partition has not acknowledged it) and `processed`.
const INSTANCE_STATUSES: [&str; 4] = ["pending", "processing", "processed", "processing_failed"];

impl InstanceFilters {
    /// The filter, or `None` when the status asked for is one no instance
    /// has here (`processing`, `processing_failed`).
    fn filter(&self) -> Result<Option<TriggerInstanceFilter>, ApiError> {
        let processed = match self.status.as_deref().filter(|s| !s.is_empty()) {
            None => None,
            Some("pending") => Some(false),
            Some("processed") => Some(true),
            Some(s) if INSTANCE_STATUSES.contains(&s) => return Ok(None),
            Some(s) => {
                return Err(ApiError::BadRequest(format!(
                    "status: {s:?} is not a trigger instance status: use one of {}",
                    INSTANCE_STATUSES.join(", ")
                )))
            }
        };
        Ok(Some(TriggerInstanceFilter {
            trigger: self.trigger.clone().filter(|t| !t.is_empty()),
            after: timestamp("timestamp_gt", self.timestamp_gt.as_deref())?,
            before: timestamp("timestamp_lt", self.timestamp_lt.as_deref())?,
            processed,
        }))
    }
}

pub(super) fn timestamp(
    field: &str,
    text: Option<&str>,
) -> Result<Option<time::Timestamp>, ApiError> {
    text.filter(|t| !t.is_empty())
        .map(|t| {
            time::parse(t).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "{field}: {t:?} is not an ISO 8601 timestamp (e.g. 2026-01-31T12:00:00Z)"
                ))
            })
        })
        .transpose()
}

/// `GET /triggerinstances` (`trigger`, `timestamp_gt`, `timestamp_lt`,
/// `status` filter; `sort` by `occurrence_time`): newest first, with
/// `X-Total-Count`. Answered from the node's index of the stream; while
/// that loads after a start, by scanning the stream.
pub async fn list_instances(
    State(st): State<ApiState>,
    ApiQuery(list): ApiQuery<ListParams>,
    ApiQuery(filters): ApiQuery<InstanceFilters>,
) -> Result<Listed, ApiError> {
    let limit = list.limit()?;
    let projection = list.projection()?;
    let ascending = match list.sort.as_deref() {
        None | Some("") | Some("-occurrence_time") => false,
        Some("occurrence_time") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "sort: trigger instances sort by occurrence_time or -occurrence_time, not {other:?}"
            )))
        }
    };
    let (found, total) =
        match filters.filter()? {
            None => (Vec::new(), 0),
            Some(filter) if st.instances.is_ready() => {
                let wanted = InstanceList {
                    filter,
                    ascending,
                    offset: list.offset(),
                    limit,
                };
                st.instances.page(&st.bus, &wanted).await?
            }
            Some(_) if ascending => return Err(ApiError::Unavailable(
                "the trigger instance index is loading after a start; try again in a few seconds"
                    .into(),
            )),
            Some(f) if f.is_empty() => {
                let (found, total) = st
                    .bus
                    .recent_trigger_instances(list.offset(), limit)
                    .await?;
                (found, usize::try_from(total).unwrap_or(usize::MAX))
            }
            Some(f) => {
                let (found, total) = st
                    .bus
                    .find_trigger_instances(&f, list.offset(), limit)
                    .await?;
                (found, usize::try_from(total).unwrap_or(usize::MAX))
            }
        };
    let items = found
        .iter()
        .map(|(i, done)| projection.apply(instance_view(i, *done)))
        .collect();
    Ok(Listed::new(items, total, limit))
}

fn instance_view(instance: &TriggerInstance, processed: bool) -> Value {
    let mut v = serde_json::to_value(instance).unwrap_or_else(|_| json!({}));
    if let Some(o) = v.as_object_mut() {
        let status = if processed { "processed" } else { "pending" };
        o.insert("status".into(), json!(status));
    }
    v
}

/// The timer trigger types (`?timer_type=` takes one of them).
const TIMER_TYPES: [&str; 3] = [
    triggers::INTERVAL_TIMER,
    triggers::DATE_TIMER,
    triggers::CRON_TIMER,
];

/// Query of `GET /timers`.
#[derive(Debug, Default, Deserialize)]
pub struct TimerQuery {
    #[serde(default)]
    timer_type: Option<String>,
}

fn timers(st: &ApiState) -> Vec<Trigger> {
    let catalog = st.catalog.load();
    TIMER_TYPES
        .iter()
        .flat_map(|t| catalog.triggers_of_type(t))
        .collect()
}

/// `GET /timers`: the timer triggers enabled rules use, with their
/// parameters (`timer_type` filters).
pub async fn list_timers(
    State(st): State<ApiState>,
    ApiQuery(list): ApiQuery<ListParams>,
    ApiQuery(q): ApiQuery<TimerQuery>,
) -> Result<Listed, ApiError> {
    let timer_type = q.timer_type.as_deref().filter(|t| !t.is_empty());
    if let Some(t) = timer_type.filter(|t| !TIMER_TYPES.contains(t)) {
        return Err(ApiError::BadRequest(format!(
            "timer_type: {t:?} is not a timer type: use one of {}",
            TIMER_TYPES.join(", ")
        )));
    }
    let items = timers(&st)
        .iter()
        .filter(|t| timer_type.is_none_or(|k| t.trigger_type == k))
        .map(trigger_view)
        .collect();
    list.respond(items)
}

/// `GET /timers/{ref or id}`: one timer trigger.
pub async fn get_timer(
    State(st): State<ApiState>,
    Path(reference): Path<String>,
) -> Result<Json<Value>, ApiError> {
    timers(&st)
        .iter()
        .find(|t| t.reference == reference || content_id("trigger", &t.reference) == reference)
        .map(|t| Json(trigger_view(t)))
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "no timer {reference:?}: no enabled rule uses a timer trigger with that ref or id"
            ))
        })
}

/// `GET /triggerinstances/{id}`.
pub async fn get_instance(
    State(st): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (instance, processed) = st
        .bus
        .trigger_instance(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("trigger instance {id} not found")))?;
    Ok(Json(instance_view(&instance, processed)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_bodies_are_read_by_content_type() {
        let form = webhook_body(
            Some("application/x-www-form-urlencoded; charset=UTF-8"),
            b"name=st2&tag=a&tag=b+c&blank=",
        )
        .unwrap();
        assert_eq!(form, json!({"name": ["st2"], "tag": ["a", "b c"]}));
        assert_eq!(webhook_body(None, b"").unwrap(), json!({}));
        assert_eq!(webhook_body(None, b"[1]").unwrap(), json!([1]));
        assert_eq!(
            webhook_body(Some("text/plain"), br#"{"a": 1}"#).unwrap(),
            json!({"a": 1})
        );
        assert!(matches!(
            webhook_body(Some("text/plain"), b"hi"),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            webhook_body(Some("application/json"), b"12"),
            Err(ApiError::BadRequest(m)) if m.contains("got: number")
        ));
        assert!(matches!(
            webhook_body(Some("foo/invalid"), b"{}"),
            Err(ApiError::UnsupportedMediaType(m)) if m.contains("\"foo/invalid\"")
        ));
    }

    #[test]
    fn header_names_are_title_cased() {
        assert_eq!(title_case("content-type"), "Content-Type");
        assert_eq!(title_case("x-github-event"), "X-Github-Event");
    }
}

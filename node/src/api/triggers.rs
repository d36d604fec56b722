//! Webhooks and trigger instances.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Map, Value};
use squall_actors::catalog::{content_id, Trigger};
use squall_domain::execution::{TriggerInstance, RECORD_VERSION};
use squall_domain::{ids, time, triggers};

use super::content::find_by_ref;
use super::error::{ApiError, ApiJson, ApiQuery};
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

/// The `url` parameter of a webhook trigger, without surrounding slashes.
fn webhook_url(t: &Trigger) -> Option<&str> {
    t.parameters
        .get("url")
        .and_then(Value::as_str)
        .map(|u| u.trim_matches('/'))
}

/// `GET /webhooks/{url}`: the webhook registered at `url`.
pub async fn get_webhook(
    State(st): State<ApiState>,
    Path(url): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let url = url.trim_matches('/');
    let catalog = st.catalog.load();
    catalog
        .triggers_of_type(triggers::WEBHOOK)
        .iter()
        .find(|t| webhook_url(t) == Some(url))
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

/// `POST /webhooks/{url}`: fires the webhook trigger registered at `url`
/// (202, body echoed), or for `st2`, any trigger named in the body.
pub async fn fire_webhook(
    State(st): State<ApiState>,
    Path(url): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
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
        let matching: Vec<_> = catalog
            .triggers_of_type(triggers::WEBHOOK)
            .into_iter()
            .filter(|t| webhook_url(t) == Some(url.as_str()))
            .collect();
        if matching.is_empty() {
            return Err(ApiError::NotFound(format!(
                "no webhook is registered at {url:?}: no enabled rule has trigger core.st2.webhook with url {url:?}"
            )));
        }
        let (headers_obj, headers_lower) = header_maps(&headers);
        matching
            .into_iter()
            .map(|t| TriggerInstance {
                v: RECORD_VERSION,
                id: ids::fresh(&now),
                trigger: t.reference,
                trigger_type: t.trigger_type,
                trigger_parameters: t.parameters,
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

/// `GET /triggerinstances`: newest first, with `X-Total-Count`.
pub async fn list_instances(
    State(st): State<ApiState>,
    ApiQuery(list): ApiQuery<ListParams>,
) -> Result<Listed, ApiError> {
    let limit = list.limit()?;
    let projection = list.projection()?;
    let (found, total) = st
        .bus
        .recent_trigger_instances(list.offset(), limit)
        .await?;
    let items = found
        .iter()
        .map(|(i, done)| projection.apply(instance_view(i, *done)))
        .collect();
    Ok(Listed::new(
        items,
        usize::try_from(total).unwrap_or(usize::MAX),
        limit,
    ))
}

fn instance_view(instance: &TriggerInstance, processed: bool) -> Value {
    let mut v = serde_json::to_value(instance).unwrap_or_else(|_| json!({}));
    if let Some(o) = v.as_object_mut() {
        let status = if processed { "processed" } else { "pending" };
        o.insert("status".into(), json!(status));
    }
    v
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
    fn header_names_are_title_cased() {
        assert_eq!(title_case("content-type"), "Content-Type");
        assert_eq!(title_case("x-github-event"), "X-Github-Event");
    }
}

//! Rule changes through the API: `POST /rules`, `PUT /rules/{ref}` (how
//! StackStorm's CLI enables and disables a rule), `DELETE /rules/{ref}`.
//!
//! A rule is validated exactly as the pack loader validates `rules/*.yaml`
//! (JSON is YAML), and stored in its pack's bundle, so every node's catalog
//! picks it up from the `content` bucket. Registering the pack from disk
//! again replaces what was changed here, as in StackStorm.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::Value;
use squall_actors::catalog::{content_id, CatalogRule};
use squall_actors::content;
use squall_domain::loader;
use squall_domain::model::RuleDef;
use squall_domain::triggers;

use super::content::rule_view;
use super::error::{ApiError, ApiJson};
use super::ApiState;

/// The pack of rules that name none, as in StackStorm.
const DEFAULT_PACK: &str = "default";

fn parse(body: &Value, pack: &str) -> Result<RuleDef, ApiError> {
    let mut body = body.clone();
    let Some(obj) = body.as_object_mut() else {
        return Err(ApiError::BadRequest("a rule must be a JSON object".into()));
    };
    // What StackStorm's API adds to a rule it returns, a client sends back.
    for derived in ["id", "ref", "uid", "metadata_file"] {
        obj.remove(derived);
    }
    if let Some(Value::Object(trigger)) = obj.get_mut("trigger") {
        for derived in ["ref", "description", "uid"] {
            trigger.remove(derived);
        }
    }
    let text = serde_json::to_string(&body).unwrap_or_default();
    loader::parse_rule(Some(pack), &text).map_err(|problems| {
        ApiError::BadRequest(
            problems
                .iter()
                .map(|p| match &p.field {
                    Some(f) => format!("{f}: {}", p.message),
                    None => p.message.clone(),
                })
                .collect::<Vec<_>>()
                .join("; "),
        )
    })
}

fn view(rule: &RuleDef) -> Value {
    rule_view(&CatalogRule {
        id: content_id("rule", &rule.reference()),
        trigger_ref: triggers::trigger_ref(&rule.trigger.kind, &rule.trigger.parameters),
        def: rule.clone(),
    })
}

/// `POST /rules`: 201 with the rule; 409 if it exists.
pub async fn create(
    State(st): State<ApiState>,
    ApiJson(body): ApiJson<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let pack = body["pack"].as_str().unwrap_or(DEFAULT_PACK).to_string();
    let rule = parse(&body, &pack)?;
    let stored = content::modify_pack(&st.bus, &pack, |bundle| {
        if bundle.rules.iter().any(|r| r.name == rule.name) {
            return Err(ApiError::Conflict(format!(
                "rule {} already exists; PUT /rules/{} changes it",
                rule.reference(),
                rule.reference()
            )));
        }
        bundle.rules.push(rule.clone());
        Ok(())
    })
    .await?;
    stored?;
    Ok((StatusCode::CREATED, Json(view(&rule))))
}

/// `pack.name`, or a rule's id as StackStorm's CLI sends it, as a
/// reference.
fn resolve(st: &ApiState, ref_or_id: String) -> String {
    if ref_or_id.contains('.') {
        return ref_or_id;
    }
    let catalog = st.catalog.load();
    catalog
        .rules
        .values()
        .find(|r| r.id == ref_or_id)
        .map_or(ref_or_id, |r| r.def.reference())
}

fn split_ref(reference: &str) -> Result<(&str, &str), ApiError> {
    reference
        .split_once('.')
        .filter(|(p, n)| !p.is_empty() && !n.is_empty())
        .ok_or_else(|| ApiError::NotFound(format!("rule {reference} not found: use pack.name")))
}

/// `PUT /rules/{ref or id}`: replaces the rule (the body's name and pack must
/// match the reference).
pub async fn update(
    State(st): State<ApiState>,
    Path(reference): Path<String>,
    ApiJson(mut body): ApiJson<Value>,
) -> Result<Json<Value>, ApiError> {
    let reference = resolve(&st, reference);
    let (pack, name) = split_ref(&reference)?;
    if let Some(obj) = body.as_object_mut() {
        obj.entry("name").or_insert_with(|| name.into());
        obj.entry("pack").or_insert_with(|| pack.into());
    }
    let rule = parse(&body, pack)?;
    if rule.name != name {
        return Err(ApiError::BadRequest(format!(
            "name: the body says {:?} but the URL names rule {reference}",
            rule.name
        )));
    }
    content::modify_pack(&st.bus, pack, |bundle| {
        match bundle.rules.iter_mut().find(|r| r.name == name) {
            Some(existing) => {
                *existing = RuleDef {
                    metadata_file: existing.metadata_file.clone(),
                    ..rule.clone()
                };
                Ok(())
            }
            None => Err(ApiError::NotFound(format!("rule {reference} not found"))),
        }
    })
    .await??;
    Ok(Json(view(&rule)))
}

/// `DELETE /rules/{ref}`: 204.
pub async fn delete(
    State(st): State<ApiState>,
    Path(reference): Path<String>,
) -> Result<StatusCode, ApiError> {
    let reference = resolve(&st, reference);
    let (pack, name) = split_ref(&reference)?;
    content::modify_pack(&st.bus, pack, |bundle| {
        let before = bundle.rules.len();
        bundle.rules.retain(|r| r.name != name);
        if bundle.rules.len() == before {
            return Err(ApiError::NotFound(format!("rule {reference} not found")));
        }
        Ok(())
    })
    .await??;
    Ok(StatusCode::NO_CONTENT)
}

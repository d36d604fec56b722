//! `POST /rules/test`: StackStorm's `st2-rule-tester` as a route. A rule
//! (registered, enabled or not, or a definition as in a rule file) is
//! checked against a stored trigger instance or a payload by the rules
//! engine's own code; nothing is written and nothing runs.

use std::sync::LazyLock;

use axum::extract::State;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::Value;
use squall_actors::auth::{Principal, Role};
use squall_actors::rules::{self, RuleTest, TestEvent};
use squall_domain::loader::{self, Problem};
use squall_domain::model::RuleDef;
use squall_domain::template::Renderer;

use super::error::{ApiError, ApiJson};
use super::ApiState;

/// Renders for callers who may not open secrets: `decrypt_kv` leaves
/// sealed datastore values sealed.
static SEALED: LazyLock<Renderer> = LazyLock::new(Renderer::new);

/// Body of `POST /rules/test`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestRequest {
    /// A registered rule's ref or id, or a rule definition (the contents
    /// of a rule file, as JSON).
    rule: Value,
    /// The id of a stored trigger instance...
    #[serde(default)]
    trigger_instance: Option<String>,
    /// ...or a payload, taken as an instance of the rule's trigger.
    #[serde(default)]
    payload: Option<Value>,
}

/// `POST /rules/test`.
pub async fn test(
    State(st): State<ApiState>,
    Extension(me): Extension<Principal>,
    ApiJson(req): ApiJson<TestRequest>,
) -> Result<Json<RuleTest>, ApiError> {
    let catalog = st.catalog.load();
    let (rule, rule_id) = match &req.rule {
        Value::String(reference) => {
            let found = catalog
                .rules
                .values()
                .find(|r| r.def.reference() == *reference || r.id == *reference)
                .ok_or_else(|| ApiError::NotFound(format!("rule {reference} not found")))?;
            (found.def.clone(), found.id.clone())
        }
        Value::Object(_) => (parse_rule(&req.rule)?, String::new()),
        _ => {
            return Err(ApiError::BadRequest(
                "rule: give a rule's ref or id, or a rule definition".into(),
            ))
        }
    };
    let event = match (req.trigger_instance, req.payload) {
        (Some(id), None) => {
            let (instance, _) =
                st.bus.trigger_instance(&id).await?.ok_or_else(|| {
                    ApiError::NotFound(format!("trigger instance {id} not found"))
                })?;
            TestEvent::Instance(instance)
        }
        (None, Some(payload)) => TestEvent::Payload(payload),
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "give either trigger_instance or payload, not both".into(),
            ))
        }
        (None, None) => {
            return Err(ApiError::BadRequest(
                "give trigger_instance (an id) or payload to test the rule against".into(),
            ))
        }
    };
    // Only those who may read every secret see them opened.
    let renderer = if me.role >= Role::Admin {
        &*st.renderer
    } else {
        &*SEALED
    };
    // What it opens is audited as the caller's (`rule_test`).
    let who = squall_actors::audit::decrypt::For {
        user: me.user.clone(),
        purpose: "rule_test",
        ..Default::default()
    };
    Ok(Json(squall_actors::audit::decrypt::audited(
        &st.kv,
        who,
        || {
            rules::test_rule(
                &catalog,
                renderer,
                &st.kv,
                &st.configs,
                &rule,
                &rule_id,
                event,
            )
        },
    )))
}

/// A rule definition checked as a pack's rule file is (a missing `pack`
/// is `default`).
fn parse_rule(body: &Value) -> Result<RuleDef, ApiError> {
    let text = serde_json::to_string(body).unwrap_or_default();
    loader::parse_rule(None, &text)
        .map_err(|problems| ApiError::BadRequest(format!("rule: {}", Problem::join(&problems))))
}

//! `/keys`: StackStorm's datastore API. Secret values are stored sealed
//! and shown sealed unless `decrypt=true` by a user allowed to read them;
//! every change fires a `core.st2.key_value_pair.*` trigger.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use squall_actors::auth::{Principal, Role};
use squall_actors::keys::{Change, KeyRecord, Scope};
use squall_domain::execution::{TriggerInstance, RECORD_VERSION};
use squall_domain::{ids, time};

use super::error::{ApiError, ApiJson, ApiQuery};
use super::query::flag;
use super::ApiState;

/// Longest key name accepted.
const MAX_NAME_LEN: usize = 1024;

/// Query of the `/keys` routes.
#[derive(Debug, Default, Deserialize)]
pub struct KeyQuery {
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default, deserialize_with = "flag")]
    decrypt: Option<bool>,
}

/// Which scopes a request means.
enum Scopes {
    One(Scope),
    /// `scope=all`: system plus the caller's own (admins: every user's).
    All,
}

fn scopes(q_scope: Option<&str>, user: Option<&str>, me: &Principal) -> Result<Scopes, ApiError> {
    let user_scope = || -> Result<Scope, ApiError> {
        let user = user.unwrap_or(&me.user);
        if user != me.user && me.role < Role::Admin {
            return Err(ApiError::Forbidden(format!(
                "user {:?} may not use the datastore scope of user {user:?}",
                me.user
            )));
        }
        Ok(Scope::User(user.to_string()))
    };
    match q_scope.unwrap_or("system") {
        "system" | "st2kv.system" => {
            if user.is_some() {
                return Err(ApiError::BadRequest(
                    "user: only meaningful with scope=user".into(),
                ));
            }
            Ok(Scopes::One(Scope::System))
        }
        "user" | "st2kv.user" => Ok(Scopes::One(user_scope()?)),
        "all" | "st2kv.all" => Ok(Scopes::All),
        other => Err(ApiError::BadRequest(format!(
            "scope: {other:?} is not one of system, user, all (or st2kv.system, st2kv.user)"
        ))),
    }
}

/// Whether `me` may see the plaintext of secrets in `scope`.
fn may_decrypt(me: &Principal, scope: &Scope) -> bool {
    match scope {
        Scope::System => me.role >= Role::Admin,
        Scope::User(u) => me.role >= Role::Admin || (me.role >= Role::Operator && *u == me.user),
    }
}

fn view(st: &ApiState, record: &KeyRecord, decrypt: bool) -> Result<Value, ApiError> {
    let decrypted = decrypt && record.secret;
    let value = if decrypted {
        st.keys.plaintext(record)?
    } else {
        record.value.clone()
    };
    let mut v = json!({
        "id": format!("{}:{}", record.scope.st2_name(), record.name),
        "uid": format!("key_value_pair:{}:{}", record.scope.st2_name(), record.name),
        "name": record.name,
        "value": value,
        "secret": record.secret,
        "encrypted": record.secret && !decrypted,
        "scope": record.scope.st2_name(),
    });
    if let Scope::User(u) = &record.scope {
        v["user"] = json!(u);
    }
    if let Some(t) = &record.expire_timestamp {
        v["expire_timestamp"] = json!(time::format(t));
    }
    Ok(v)
}

fn check_decrypt(me: &Principal, scope: &Scope, decrypt: bool) -> Result<(), ApiError> {
    if decrypt && !may_decrypt(me, scope) {
        return Err(ApiError::Forbidden(format!(
            "user {:?} ({}) may not decrypt secrets of the {scope} scope",
            me.user, me.role
        )));
    }
    Ok(())
}

/// `GET /keys`.
pub async fn list(
    State(st): State<ApiState>,
    Extension(me): Extension<Principal>,
    ApiQuery(q): ApiQuery<KeyQuery>,
) -> Result<Json<Value>, ApiError> {
    let decrypt = q.decrypt.unwrap_or(false);
    let prefix = q.prefix.as_deref().unwrap_or("");
    let records = match scopes(q.scope.as_deref(), q.user.as_deref(), &me)? {
        Scopes::One(scope) => {
            check_decrypt(&me, &scope, decrypt)?;
            st.keys.list(&scope, prefix).await?
        }
        Scopes::All => {
            let mut all = st.keys.list(&Scope::System, prefix).await?;
            if me.role >= Role::Admin {
                all.extend(st.keys.list_all_users(prefix).await?);
            } else {
                all.extend(st.keys.list(&Scope::User(me.user.clone()), prefix).await?);
            }
            all
        }
    };
    let mut out = Vec::with_capacity(records.len());
    for r in &records {
        // With scope=all, decrypt only what this user may open.
        out.push(view(&st, r, decrypt && may_decrypt(&me, &r.scope))?);
    }
    Ok(Json(Value::Array(out)))
}

fn one_scope(q: &KeyQuery, me: &Principal) -> Result<Scope, ApiError> {
    match scopes(q.scope.as_deref(), q.user.as_deref(), me)? {
        Scopes::One(s) => Ok(s),
        Scopes::All => Err(ApiError::BadRequest(
            "scope: name one scope (system or user) for a single key".into(),
        )),
    }
}

/// `GET /keys/{name}`.
pub async fn get_one(
    State(st): State<ApiState>,
    Extension(me): Extension<Principal>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<KeyQuery>,
) -> Result<Json<Value>, ApiError> {
    let scope = one_scope(&q, &me)?;
    let decrypt = q.decrypt.unwrap_or(false);
    check_decrypt(&me, &scope, decrypt)?;
    match st.keys.get(&scope, &name).await? {
        Some(r) => Ok(Json(view(&st, &r, decrypt)?)),
        None => Err(ApiError::NotFound(format!(
            "no key {name:?} in the {scope} scope"
        ))),
    }
}

/// Body of `PUT /keys/{name}`. Unknown fields are ignored, as StackStorm's
/// clients send the whole object back.
#[derive(Debug, Deserialize)]
pub struct SetBody {
    #[serde(default)]
    name: Option<String>,
    value: Value,
    #[serde(default)]
    secret: bool,
    /// The value is already sealed with this cluster's key.
    #[serde(default)]
    encrypted: bool,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    ttl: Option<i64>,
}

/// `PUT /keys/{name}`: 200 with the stored pair.
pub async fn set(
    State(st): State<ApiState>,
    Extension(me): Extension<Principal>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<SetBody>,
) -> Result<Json<Value>, ApiError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(format!(
            "name: use 1 to {MAX_NAME_LEN} characters without control characters"
        )));
    }
    if let Some(n) = body.name.as_ref().filter(|n| **n != name) {
        return Err(ApiError::BadRequest(format!(
            "name: the body says {n:?} but the URL says {name:?}"
        )));
    }
    let Value::String(value) = body.value else {
        return Err(ApiError::BadRequest(
            "value: must be a string (store structured data as a JSON string)".into(),
        ));
    };
    let ttl = match body.ttl {
        None => None,
        Some(t) if t > 0 => Some(t.unsigned_abs()),
        Some(t) => {
            return Err(ApiError::BadRequest(format!(
                "ttl: {t} is not a positive number of seconds"
            )))
        }
    };
    let q = KeyQuery {
        scope: body.scope,
        user: body.user,
        ..KeyQuery::default()
    };
    let scope = one_scope(&q, &me)?;
    let (plaintext, secret) = if body.encrypted {
        let plain = st
            .keys
            .cipher()
            .decrypt(&value)
            .map_err(|e| ApiError::BadRequest(format!("value: marked encrypted but {e}")))?;
        (plain, true)
    } else {
        (value, body.secret)
    };
    let change = st.keys.set(scope, &name, &plaintext, secret, ttl).await?;
    let stored = match &change {
        Change::Created(r) => {
            emit(&st, "create", view(&st, r, false)?).await?;
            r
        }
        Change::Updated { old, new } => {
            let (old_view, new_view) = (view(&st, old, false)?, view(&st, new, false)?);
            emit(&st, "update", new_view.clone()).await?;
            if st.keys.plaintext(old)? != plaintext || old.secret != new.secret {
                emit(
                    &st,
                    "value_change",
                    json!({"old_object": old_view, "new_object": new_view}),
                )
                .await?;
            }
            new
        }
    };
    Ok(Json(view(&st, stored, false)?))
}

/// `DELETE /keys/{name}`: 204.
pub async fn delete(
    State(st): State<ApiState>,
    Extension(me): Extension<Principal>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<KeyQuery>,
) -> Result<StatusCode, ApiError> {
    let scope = one_scope(&q, &me)?;
    match st.keys.delete(&scope, &name).await? {
        Some(old) => {
            emit(&st, "delete", view(&st, &old, false)?).await?;
            Ok(StatusCode::NO_CONTENT)
        }
        None => Err(ApiError::NotFound(format!(
            "no key {name:?} in the {scope} scope"
        ))),
    }
}

/// Fires `core.st2.key_value_pair.<event>` with `payload`.
async fn emit(st: &ApiState, event: &str, payload: Value) -> Result<(), ApiError> {
    let now = time::now();
    let trigger = format!("core.st2.key_value_pair.{event}");
    let instance = TriggerInstance {
        v: RECORD_VERSION,
        id: ids::fresh(&now),
        trigger: trigger.clone(),
        trigger_type: trigger,
        trigger_parameters: Map::new(),
        payload,
        occurrence_time: now,
        trace_tag: None,
    };
    st.bus.publish_trigger(&instance).await?;
    Ok(())
}

//! Authentication and authorisation: `POST /auth/v1/tokens`, API keys,
//! users, and the middleware that guards every other route.
//!
//! A request proves who it is with a token (`X-Auth-Token` header,
//! `x-auth-token` query parameter or `auth-token` cookie) or an API key
//! (`St2-Api-Key` header or `st2-api-key` query parameter), as StackStorm
//! accepts them. [`required_role`] is the one table of what each role may
//! do.

use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::{Extension, Json};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use squall_actors::auth::{ApiKey, AuthError, Principal, Role, Token, User, MAX_TOKEN_TTL};
use squall_domain::time;

use super::error::{ApiError, ApiJson};
use super::ApiState;

/// StackStorm's answer when no credentials came with a request.
const NO_CREDENTIALS: &str = "Unauthorized - One of Token or API key required.";

/// The least role that may make this request. `path` is inside the v1
/// prefix (`/executions`), `query` the raw query string.
pub fn required_role(method: &Method, path: &str, query: &str) -> Role {
    let flag = |name: &str| {
        query.split('&').any(|kv| {
            kv.split_once('=')
                .is_some_and(|(k, v)| k == name && matches!(v, "true" | "True" | "1"))
        })
    };
    let asks_for_secrets = flag("show_secrets");
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    let reading = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    match first {
        // As in StackStorm: the service registry is for admins.
        "users" | "service_registry" => Role::Admin,
        _ if asks_for_secrets => Role::Admin,
        // Whose secrets may be opened is checked by the datastore handlers.
        _ if flag("decrypt") => Role::Operator,
        "packs" if !reading => Role::Admin,
        // Everyone may manage their own API keys; the handlers check whose.
        "apikeys" => Role::Operator,
        // Testing a rule writes and runs nothing (secrets stay sealed for
        // all but admins).
        "rules" if path == "/rules/test" => Role::Observer,
        _ if reading => Role::Observer,
        _ => Role::Operator,
    }
}

/// Finds the credentials of a request, checks them and the caller's role,
/// and hands the [`Principal`] to the handler.
pub async fn guard(
    State(st): State<ApiState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    // The version document is public, for load balancers' health checks,
    // and so is the API's description.
    if matches!(req.uri().path(), "" | "/" | "/openapi.json") && req.method() == Method::GET {
        return Ok(next.run(req).await);
    }
    let principal = authenticate(&st, req.headers(), req.uri().query().unwrap_or("")).await?;
    let needed = required_role(
        req.method(),
        req.uri().path(),
        req.uri().query().unwrap_or(""),
    );
    if principal.role < needed {
        return Err(ApiError::Forbidden(format!(
            "user {:?} has role {} but {} {} needs role {needed} or higher",
            principal.user,
            principal.role,
            req.method(),
            req.uri().path()
        )));
    }
    req.extensions_mut().insert(principal);
    Ok(next.run(req).await)
}

async fn authenticate(
    st: &ApiState,
    headers: &HeaderMap,
    query: &str,
) -> Result<Principal, ApiError> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let query_param = |name: &str| {
        query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            k.eq_ignore_ascii_case(name).then(|| v.to_string())
        })
    };
    let cookie = || {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| c.trim().strip_prefix("auth-token=").map(str::to_string))
    };
    if let Some(token) = header("x-auth-token")
        .or_else(|| query_param("x-auth-token"))
        .or_else(cookie)
    {
        return st.auth.resolve_token(&token).await?.ok_or_else(|| {
            ApiError::Unauthorized("Unauthorized - Token has expired or is invalid.".into())
        });
    }
    if let Some(key) = header("st2-api-key").or_else(|| query_param("st2-api-key")) {
        return st.auth.resolve_api_key(&key).await?.ok_or_else(|| {
            ApiError::Unauthorized("Unauthorized - API key is disabled or invalid.".into())
        });
    }
    Err(ApiError::Unauthorized(NO_CREDENTIALS.into()))
}

/// Body of `POST /auth/v1/tokens` (optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBody {
    #[serde(default)]
    ttl: Option<i64>,
}

/// `POST /auth/v1/tokens` with HTTP Basic credentials: 201 and a token.
pub async fn create_token(
    State(st): State<ApiState>,
    headers: HeaderMap,
    raw: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body: TokenBody = if raw.iter().all(u8::is_ascii_whitespace) {
        TokenBody::default()
    } else {
        serde_json::from_slice(&raw)
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?
    };
    let (user, password) = basic_credentials(&headers).ok_or_else(|| {
        ApiError::Unauthorized(
            "Invalid or missing credentials: use HTTP Basic auth with your user name and password"
                .into(),
        )
    })?;
    let ttl = match body.ttl {
        None => st.token_ttl,
        Some(t) if t > 0 && t.unsigned_abs() <= MAX_TOKEN_TTL.as_secs() => {
            Duration::from_secs(t.unsigned_abs())
        }
        Some(t) => {
            return Err(ApiError::BadRequest(format!(
                "ttl: {t} is out of range: give 1 to {} seconds",
                MAX_TOKEN_TTL.as_secs()
            )))
        }
    };
    let Some(user) = st.auth.check_password(&user, &password).await? else {
        return Err(ApiError::Unauthorized(
            "Invalid or missing credentials".into(),
        ));
    };
    let (value, token) = st.auth.issue_token(&user.name, ttl).await?;
    Ok((StatusCode::CREATED, Json(token_view(&token, Some(&value)))))
}

fn token_view(token: &Token, value: Option<&str>) -> Value {
    json!({
        "id": token.id,
        "user": token.user,
        "token": value,
        "expiry": time::format(&token.expiry),
        "metadata": {},
    })
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

fn key_view(key: &ApiKey, value: Option<&str>) -> Value {
    let mut v = json!({
        "id": key.id,
        "uid": format!("api_key:{}", key.key_hash),
        "user": key.user,
        "key_hash": key.key_hash,
        "created_at": time::format(&key.created_at),
        "enabled": key.enabled,
        "metadata": key.metadata,
    });
    if let Some(value) = value {
        v["key"] = json!(value);
    }
    v
}

/// Body of `POST /apikeys`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyBody {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    metadata: Map<String, Value>,
}

/// `POST /apikeys`: 201 with the key, shown this once.
pub async fn create_api_key(
    State(st): State<ApiState>,
    Extension(me): Extension<Principal>,
    ApiJson(body): ApiJson<ApiKeyBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let user = body.user.unwrap_or_else(|| me.user.clone());
    if user != me.user && me.role < Role::Admin {
        return Err(ApiError::Forbidden(format!(
            "only an admin may create API keys for another user ({user:?})"
        )));
    }
    if st.auth.user(&user).await?.is_none() {
        return Err(ApiError::BadRequest(format!("user: no user {user:?}")));
    }
    let (value, key) = st.auth.create_api_key(&user, body.metadata).await?;
    Ok((StatusCode::CREATED, Json(key_view(&key, Some(&value)))))
}

/// `GET /apikeys`: an admin sees every key, others their own.
pub async fn list_api_keys(
    State(st): State<ApiState>,
    Extension(me): Extension<Principal>,
) -> Result<Json<Value>, ApiError> {
    let keys = st.auth.api_keys().await?;
    Ok(Json(Value::Array(
        keys.iter()
            .filter(|k| me.role == Role::Admin || k.user == me.user)
            .map(|k| key_view(k, None))
            .collect(),
    )))
}

/// `DELETE /apikeys/{id}`: 204.
pub async fn delete_api_key(
    State(st): State<ApiState>,
    Extension(me): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let keys = st.auth.api_keys().await?;
    let Some(key) = keys.iter().find(|k| k.id == id || k.key_hash == id) else {
        return Err(ApiError::NotFound(format!("no API key {id:?}")));
    };
    if key.user != me.user && me.role < Role::Admin {
        return Err(ApiError::Forbidden(format!(
            "API key {id:?} belongs to another user"
        )));
    }
    st.auth.delete_api_key(&key.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn user_view(user: &User) -> Value {
    json!({
        "name": user.name,
        "role": user.role,
        "created_at": time::format(&user.created_at),
    })
}

/// Body of `POST /users`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserBody {
    name: String,
    password: String,
    role: String,
}

/// `POST /users` (admin): 201 with the user, without the password.
pub async fn create_user(
    State(st): State<ApiState>,
    ApiJson(body): ApiJson<UserBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let role: Role = body
        .role
        .parse()
        .map_err(|e| ApiError::BadRequest(format!("role: {e}")))?;
    match st.auth.create_user(&body.name, &body.password, role).await {
        Ok(user) => Ok((StatusCode::CREATED, Json(user_view(&user)))),
        Err(e @ AuthError::UserExists(_)) => Err(ApiError::Conflict(e.to_string())),
        Err(e @ AuthError::BadUserName(_)) => Err(ApiError::BadRequest(format!("name: {e}"))),
        Err(e @ AuthError::WeakPassword) => Err(ApiError::BadRequest(format!("password: {e}"))),
        Err(AuthError::Engine(e)) => Err(e.into()),
        Err(e @ AuthError::Hash(_)) => Err(ApiError::Internal(e.to_string())),
    }
}

/// `GET /users` (admin).
pub async fn list_users(State(st): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let users = st.auth.users().await?;
    Ok(Json(Value::Array(users.iter().map(user_view).collect())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_needed_per_route() {
        let cases = [
            (Method::GET, "/executions", "", Role::Observer),
            (
                Method::GET,
                "/executions/abc",
                "show_secrets=true",
                Role::Admin,
            ),
            (Method::POST, "/executions", "", Role::Operator),
            (Method::DELETE, "/executions/abc", "", Role::Operator),
            (Method::POST, "/webhooks/deploy", "", Role::Operator),
            (Method::GET, "/packs", "", Role::Observer),
            (Method::POST, "/packs/register", "", Role::Admin),
            (Method::GET, "/users", "", Role::Admin),
            (Method::POST, "/users", "", Role::Admin),
            (Method::GET, "/apikeys", "", Role::Operator),
            (Method::PUT, "/rules/a.b", "", Role::Operator),
            (Method::POST, "/rules", "", Role::Operator),
            (Method::POST, "/rules/test", "", Role::Observer),
            (Method::GET, "/keys", "prefix=a", Role::Observer),
            (Method::GET, "/keys/x", "decrypt=true", Role::Operator),
            (Method::PUT, "/keys/x", "", Role::Operator),
        ];
        for (method, path, query, role) in cases {
            assert_eq!(
                required_role(&method, path, query),
                role,
                "{method} {path}?{query}"
            );
        }
    }

    #[test]
    fn basic_credentials_are_decoded() {
        let mut headers = HeaderMap::new();
        let encoded = base64::engine::general_purpose::STANDARD.encode("alice:pa:ss");
        headers.insert(
            header::AUTHORIZATION,
            format!("Basic {encoded}").parse().unwrap(),
        );
        assert_eq!(
            basic_credentials(&headers),
            Some(("alice".into(), "pa:ss".into()))
        );
        headers.insert(header::AUTHORIZATION, "Bearer x".parse().unwrap());
        assert_eq!(basic_credentials(&headers), None);
    }
}

//! Authentication and authorisation: `POST /auth/v1/tokens`, API keys,
//! users, and the middleware that guards every other route.
//!
//! A request proves who it is with a token (`X-Auth-Token` header,
//! `x-auth-token` query parameter or `auth-token` cookie) or an API key
//! (`St2-Api-Key` header or `st2-api-key` query parameter), as StackStorm
//! accepts them. [`required_role`] is the one table of what each role may
//! do.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::{Extension, Json};
use base64::Engine as _;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use squall_actors::auth::{ApiKey, AuthError, Principal, Role, Token, User, MAX_TOKEN_TTL};
use squall_actors::logins::{Refusal, Subject};
use squall_domain::{ids, time};

use super::error::{ApiError, ApiJson, ApiQuery};
use super::listing::{ListParams, Listed};
use super::query::{flag, query_flag};
use super::ApiState;

/// StackStorm's answer when no credentials came with a request.
const NO_CREDENTIALS: &str = "Unauthorized - One of Token or API key required.";

/// The least role that may make this request. `path` is inside the v1
/// prefix (`/executions`), `query` the raw query string.
pub fn required_role(method: &Method, path: &str, query: &str) -> Role {
    let flag = |name: &str| query_flag(query, name);
    let asks_for_secrets = flag("show_secrets");
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    let reading = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    match first {
        // As in StackStorm: the service registry is for admins.
        "users" | "service_registry" | "lockouts" | "audit" => Role::Admin,
        _ if asks_for_secrets => Role::Admin,
        // Whose secrets may be opened is checked by the datastore handlers.
        _ if flag("decrypt") => Role::Operator,
        "packs" if !reading => Role::Admin,
        // As StackStorm's `pack_config` permission: setting a pack's
        // config (its secrets included) is for admins.
        "configs" if !reading => Role::Admin,
        // Purges delete history: for admins, as StackStorm's purge tools
        // need the database's credentials.
        _ if !reading && path.ends_with("/purge") => Role::Admin,
        // Everyone may manage their own API keys; the handlers check whose.
        "apikeys" => Role::Operator,
        // Testing a rule writes and runs nothing (secrets stay sealed for
        // all but admins).
        "rules" if path == "/rules/test" => Role::Observer,
        // Matching a command against the aliases runs nothing.
        "actionalias" if path == "/actionalias/match" => Role::Observer,
        // Who am I, and the timers rules use: anyone signed in may read.
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
    let (principal, how) =
        authenticate(&st, req.headers(), req.uri().query().unwrap_or("")).await?;
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
    req.extensions_mut().insert(principal.clone());
    req.extensions_mut().insert(how);
    let mut resp = next.run(req).await;
    // For the audit trail: who made the request.
    resp.extensions_mut().insert(principal);
    Ok(resp)
}

/// How a request proved who it is, as `GET /user` reports it.
#[derive(Debug, Clone)]
pub struct AuthInfo {
    /// `authentication token` or `API key` (StackStorm's words).
    pub method: &'static str,
    /// `header`, `query` or `cookie`.
    pub location: &'static str,
    /// When the token expires (tokens only).
    pub token_expire: Option<time::Timestamp>,
}

async fn authenticate(
    st: &ApiState,
    headers: &HeaderMap,
    query: &str,
) -> Result<(Principal, AuthInfo), ApiError> {
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
    let token = header("x-auth-token")
        .map(|t| (t, "header"))
        .or_else(|| query_param("x-auth-token").map(|t| (t, "query")))
        .or_else(|| cookie().map(|t| (t, "cookie")));
    if let Some((token, location)) = token {
        let (principal, expiry) = st.auth.resolve_token(&token).await?.ok_or_else(|| {
            ApiError::Unauthorized("Unauthorized - Token has expired or is invalid.".into())
        })?;
        let how = AuthInfo {
            method: "authentication token",
            location,
            token_expire: Some(expiry),
        };
        return Ok((principal, how));
    }
    let key = header("st2-api-key")
        .map(|k| (k, "header"))
        .or_else(|| query_param("st2-api-key").map(|k| (k, "query")));
    if let Some((key, location)) = key {
        let principal = st.auth.resolve_api_key(&key).await?.ok_or_else(|| {
            ApiError::Unauthorized("Unauthorized - API key is disabled or invalid.".into())
        })?;
        let how = AuthInfo {
            method: "API key",
            location,
            token_expire: None,
        };
        return Ok((principal, how));
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
    client: ClientAddr,
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
    let user = login(&st, &user, &password, &client).await?;
    let (value, token) = st.auth.issue_token(&user.name, ttl).await?;
    Ok((StatusCode::CREATED, Json(token_view(&token, Some(&value)))))
}

/// The client's address as its connection shows it (absent when the
/// router is called without a server, as unit tests do).
pub type ClientAddr = Option<Extension<ConnectInfo<SocketAddr>>>;

/// Checks `name`'s password under the login throttle: refused with 429
/// while the user or the client's address is held back after failures,
/// 401 for a wrong password (counted), the user otherwise.
pub(super) async fn login(
    st: &ApiState,
    name: &str,
    password: &str,
    client: &ClientAddr,
) -> Result<User, ApiError> {
    let address = client.as_ref().map(|Extension(c)| c.0.ip().to_string());
    let attempt = match st.logins.begin(name, address.as_deref()).await? {
        Ok(attempt) => attempt,
        Err(refusal) => {
            tracing::warn!(user = name, address = ?address, held = %refusal.subject, "login refused: too many failures");
            return Err(refused(&refusal));
        }
    };
    match st.auth.check_password(name, password).await? {
        Some(user) => {
            st.logins.succeeded(attempt).await?;
            Ok(user)
        }
        None => {
            tracing::warn!(user = name, address = ?address, "failed login");
            Err(ApiError::Unauthorized(
                "Invalid or missing credentials".into(),
            ))
        }
    }
}

/// The 429 of a held-back login, saying why, until when and who can lift it.
fn refused(refusal: &Refusal) -> ApiError {
    let secs = refusal.retry_after();
    let (kind, name) = match &refusal.subject {
        Subject::User(n) => ("user", n.as_str()),
        Subject::Address(a) => ("address", a.as_str()),
    };
    let why = if refusal.locked {
        format!(
            "{} is locked after {} failed logins; try again in {secs} s",
            refusal.subject, refusal.failures
        )
    } else {
        format!(
            "too many failed logins for {} ({}); try again in {secs} s",
            refusal.subject, refusal.failures
        )
    };
    ApiError::TooManyRequests {
        message: format!(
            "{why}, or ask an admin to lift it (`squall lockout clear {kind} {name}`, or DELETE /api/v1/lockouts/{kind}/{name})"
        ),
        retry_after: secs,
    }
}

/// `GET /lockouts` (admin): users and client addresses with recent failed
/// logins, and until when each is held back.
pub async fn list_lockouts(State(st): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let now = time::now();
    let rows = st
        .logins
        .list()
        .await?
        .into_iter()
        .map(|(subject, f)| {
            let mut row = serde_json::to_value(&subject).unwrap_or(Value::Null);
            row["failures"] = json!(f.count);
            row["last_failure"] = json!(time::format(&f.last));
            row["held_until"] = json!(f.until.filter(|u| *u > now).map(|u| time::format(&u)));
            row
        })
        .collect();
    Ok(Json(Value::Array(rows)))
}

/// `DELETE /lockouts/{kind}/{name}` (admin): forgets the failed logins of a
/// user or a client address, lifting its hold. 204, or 404 if it had none.
pub async fn clear_lockout(
    State(st): State<ApiState>,
    Extension(me): Extension<Principal>,
    Path((kind, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let subject = match kind.as_str() {
        "user" => Subject::User(name),
        "address" => Subject::Address(name),
        other => {
            return Err(ApiError::BadRequest(format!(
                "kind: {other:?} is neither \"user\" nor \"address\""
            )))
        }
    };
    if !st.logins.clear(&subject).await? {
        return Err(ApiError::NotFound(format!(
            "{subject} has no recent failed logins"
        )));
    }
    tracing::info!(subject = %subject, by = %me.user, "login lockout lifted");
    Ok(StatusCode::NO_CONTENT)
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

/// What StackStorm shows in place of a secret attribute.
const MASKED: &str = "********";

/// An API key as StackStorm shows it: the hash (and the uid, which holds
/// it) masked unless an admin asked for secrets.
fn key_view(key: &ApiKey, show_hash: bool) -> Value {
    let (uid, hash) = if show_hash {
        (format!("api_key:{}", key.key_hash), key.key_hash.clone())
    } else {
        (MASKED.to_string(), MASKED.to_string())
    };
    json!({
        "id": key.id,
        "uid": uid,
        "user": key.user,
        "key_hash": hash,
        "created_at": time::format(&key.created_at),
        "enabled": key.enabled,
        "metadata": key.metadata,
    })
}

/// `show_secrets`, honoured for admins only (as StackStorm's
/// `_get_mask_secrets`).
#[derive(Debug, Default, Deserialize)]
pub struct ShowSecrets {
    #[serde(default, deserialize_with = "flag")]
    show_secrets: Option<bool>,
}

impl ShowSecrets {
    pub(super) fn shown(&self, me: &Principal) -> bool {
        me.role >= Role::Admin && self.show_secrets == Some(true)
    }
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
    // The creator sees the key this once, and its hash, as StackStorm's
    // create response shows it.
    let mut view = key_view(&key, true);
    view["key"] = json!(value);
    Ok((StatusCode::CREATED, Json(view)))
}

/// Filter of `GET /apikeys`.
#[derive(Debug, Default, Deserialize)]
pub struct ApiKeyFilter {
    #[serde(default)]
    user: Option<String>,
}

/// `GET /apikeys` (`user` filters): an admin sees every key, others their
/// own; hashes masked unless an admin asks with `show_secrets`.
pub async fn list_api_keys(
    State(st): State<ApiState>,
    Extension(me): Extension<Principal>,
    ApiQuery(list): ApiQuery<ListParams>,
    ApiQuery(filter): ApiQuery<ApiKeyFilter>,
    ApiQuery(secrets): ApiQuery<ShowSecrets>,
) -> Result<Listed, ApiError> {
    let keys = st.auth.api_keys().await?;
    let show = secrets.shown(&me);
    list.respond(
        keys.iter()
            .filter(|k| me.role == Role::Admin || k.user == me.user)
            .filter(|k| filter.user.as_deref().is_none_or(|u| k.user == u))
            .map(|k| key_view(k, show))
            .collect(),
    )
}

/// How a key named in a path is shown in messages: its id, never a key.
fn key_name(id_or_key: &str) -> String {
    if ids::is_id(id_or_key) {
        format!("{id_or_key:?}")
    } else {
        "(the key given)".into()
    }
}

/// The API key a path names (its id or the key itself, as StackStorm's
/// `get_by_key_or_id`) with its revision, if `me` may see it.
async fn owned_key(
    st: &ApiState,
    me: &Principal,
    id_or_key: &str,
) -> Result<(ApiKey, u64), ApiError> {
    let Some((key, revision)) = st.auth.api_key(id_or_key).await? else {
        return Err(ApiError::NotFound(format!(
            "no API key has the id or key {}",
            key_name(id_or_key)
        )));
    };
    if key.user != me.user && me.role < Role::Admin {
        return Err(ApiError::Forbidden(format!(
            "API key {} belongs to another user",
            key_name(id_or_key)
        )));
    }
    Ok((key, revision))
}

/// `GET /apikeys/{id or key}`.
pub async fn get_api_key(
    State(st): State<ApiState>,
    Extension(me): Extension<Principal>,
    Path(id): Path<String>,
    ApiQuery(secrets): ApiQuery<ShowSecrets>,
) -> Result<Json<Value>, ApiError> {
    let (key, _) = owned_key(&st, &me, &id).await?;
    Ok(Json(key_view(&key, secrets.shown(&me))))
}

/// Body of `PUT /apikeys/{id}`: the key as `GET` shows it, changed. The
/// hash cannot change (masked or absent means unchanged), and, as in
/// StackStorm, a body without `enabled` enables the key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyUpdate {
    #[serde(default)]
    id: Option<String>,
    /// Shown by `GET` and sent back by clients; derived, never changed.
    #[serde(default, rename = "uid")]
    _uid: Option<IgnoredAny>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    key_hash: Option<String>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
    /// Sent back by clients; the creation time never changes.
    #[serde(default, rename = "created_at")]
    _created_at: Option<IgnoredAny>,
    #[serde(default)]
    enabled: Option<bool>,
}

/// `PUT /apikeys/{id or key}`: 200 with the key. `enabled: false` revokes
/// it at once on every node (each request reads the key's record).
pub async fn update_api_key(
    State(st): State<ApiState>,
    Extension(me): Extension<Principal>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ApiKeyUpdate>,
) -> Result<Json<Value>, ApiError> {
    let (mut key, revision) = owned_key(&st, &me, &id).await?;
    if let Some(given) = body.id.as_deref().filter(|i| *i != key.id) {
        return Err(ApiError::BadRequest(format!(
            "id: the body names API key {given:?} but the URL names {:?}",
            key.id
        )));
    }
    if body
        .key_hash
        .as_deref()
        .is_some_and(|h| !h.is_empty() && h != MASKED && h != key.key_hash)
    {
        return Err(ApiError::BadRequest(
            "key_hash: update of key_hash is not allowed; create a new key instead".into(),
        ));
    }
    if let Some(user) = body.user.filter(|u| !u.is_empty() && *u != key.user) {
        if me.role < Role::Admin {
            return Err(ApiError::Forbidden(format!(
                "only an admin may give an API key to another user ({user:?})"
            )));
        }
        if st.auth.user(&user).await?.is_none() {
            return Err(ApiError::BadRequest(format!("user: no user {user:?}")));
        }
        key.user = user;
    }
    key.enabled = body.enabled.unwrap_or(true);
    key.metadata = body.metadata.unwrap_or_default();
    if !st.auth.update_api_key(&key, revision).await? {
        return Err(ApiError::Conflict(format!(
            "API key {} changed or was deleted meanwhile; read it again and retry",
            key_name(&id)
        )));
    }
    tracing::info!(api_key = %key.id, user = %key.user, enabled = key.enabled, by = %me.user, "API key updated");
    Ok(Json(key_view(&key, false)))
}

/// `DELETE /apikeys/{id or key}`: 204.
pub async fn delete_api_key(
    State(st): State<ApiState>,
    Extension(me): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (key, _) = owned_key(&st, &me, &id).await?;
    st.auth.delete_api_key(&key.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /user`: who the caller is and how they signed in, in StackStorm's
/// shape (`st2 whoami`). Roles are always enforced here, so RBAC is on.
pub async fn whoami(
    Extension(me): Extension<Principal>,
    Extension(how): Extension<AuthInfo>,
) -> Json<Value> {
    let mut authentication = json!({"method": how.method, "location": how.location});
    if let Some(expiry) = &how.token_expire {
        authentication["token_expire"] = json!(expiry.format("%Y-%m-%dT%H:%M:%SZ").to_string());
    }
    Json(json!({
        "username": me.user,
        "authentication": authentication,
        "rbac": {
            "enabled": true,
            "roles": [me.role.as_str()],
            "is_admin": me.role >= Role::Admin,
        },
    }))
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
            (Method::GET, "/lockouts", "", Role::Admin),
            (Method::DELETE, "/lockouts/user/bob", "", Role::Admin),
            (Method::POST, "/users", "", Role::Admin),
            (Method::GET, "/apikeys", "", Role::Operator),
            (Method::GET, "/apikeys/abc", "", Role::Operator),
            (Method::PUT, "/apikeys/abc", "", Role::Operator),
            (Method::GET, "/user", "", Role::Observer),
            (
                Method::GET,
                "/timers",
                "timer_type=core.st2.CronTimer",
                Role::Observer,
            ),
            (Method::GET, "/timers/core.x", "", Role::Observer),
            (Method::GET, "/keys/x", "decrypt=True", Role::Operator),
            (Method::GET, "/executions", "show_secrets=TRUE", Role::Admin),
            (
                Method::GET,
                "/executions",
                "show_secrets=False",
                Role::Observer,
            ),
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

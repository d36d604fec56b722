//! The web UI: `GET /` and `/ui/<file>` serve the assets under `node/ui/`
//! (compiled into the binary, no build step), `POST /ui/login` and
//! `POST /ui/logout` put the API token in, and take it out of, an
//! `HttpOnly`, `SameSite=Strict` cookie (`auth-token`, which the API's
//! guard accepts), so the page's scripts never hold it.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use squall_domain::time;

use super::auth::{login as check_login, ClientAddr};
use super::error::{ApiError, ApiJson};
use super::ApiState;

/// Every asset: name, content type, bytes.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/api.js"),
    ),
    (
        "history.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/history.js"),
    ),
    (
        "execution.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/execution.js"),
    ),
    (
        "graph.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/graph.js"),
    ),
    (
        "dom.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/dom.js"),
    ),
    (
        "forms.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/forms.js"),
    ),
    (
        "actions.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/actions.js"),
    ),
    (
        "rules.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/rules.js"),
    ),
    (
        "inquiries.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/inquiries.js"),
    ),
    (
        "packs.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/packs.js"),
    ),
    (
        "triggers.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/triggers.js"),
    ),
    (
        "keys.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/keys.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../ui/style.css"),
    ),
];

const INDEX: &str = include_str!("../../ui/index.html");

/// Name of the cookie the API's guard reads a token from.
const COOKIE: &str = "auth-token";

/// The UI's routes, merged into the API's router.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/", get(index))
        .route("/ui/{file}", get(asset))
        .route("/ui/login", post(login))
        .route("/ui/logout", post(logout))
}

/// Pages are answered with the app's shell; the script routes by path.
async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
            ),
        ],
        INDEX,
    )
        .into_response()
}

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                // Assets change with the binary: never kept stale.
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *body,
        )
            .into_response(),
        None => ApiError::NotFound(format!("the UI has no file {file:?}")).into_response(),
    }
}

/// Body of `POST /ui/login`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    username: String,
    password: String,
}

/// Checks the password (throttled as `POST /auth/v1/tokens` is), issues a
/// token and sets it as the cookie. Answers who signed in and their role.
async fn login(
    State(st): State<ApiState>,
    client: ClientAddr,
    request_headers: HeaderMap,
    ApiJson(body): ApiJson<LoginBody>,
) -> Result<Response, ApiError> {
    if body.username.is_empty() || body.password.is_empty() {
        return Err(ApiError::BadRequest(
            "username and password: both are required".into(),
        ));
    }
    let user = check_login(&st, &body.username, &body.password, &client).await?;
    let (value, token) = st.auth.issue_token(&user.name, st.token_ttl).await?;
    let cookie = format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        st.token_ttl.as_secs(),
        secure(&request_headers)
    );
    let mut headers = HeaderMap::new();
    headers.insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie)
            .map_err(|e| ApiError::Internal(format!("cookie header: {e}")))?,
    );
    let body = json!({
        "username": user.name,
        "role": user.role,
        "expiry": time::format(&token.expiry),
    });
    Ok((StatusCode::OK, headers, Json(body)).into_response())
}

/// `; Secure` when the page came over HTTPS through a proxy that says so
/// (`X-Forwarded-Proto: https`), so the browser never sends the cookie in
/// the clear.
fn secure(headers: &HeaderMap) -> &'static str {
    let https = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"));
    if https {
        "; Secure"
    } else {
        ""
    }
}

/// Revokes the cookie's token (on every node) and clears the cookie.
async fn logout(State(st): State<ApiState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let token = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix("auth-token=").map(str::to_string));
    if let Some(token) = token {
        st.auth.revoke_token(&token).await?;
    }
    let clear = format!(
        "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        secure(&headers)
    );
    Ok((
        StatusCode::OK,
        [(header::SET_COOKIE, clear)],
        Json(json!({"logged_out": true}) as Value),
    )
        .into_response())
}

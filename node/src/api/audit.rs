//! The API's part of the audit trail: the middleware that records every
//! security-relevant request (logins and failed logins, rejected tokens
//! and keys, denied requests, API keys and users created or deleted,
//! datastore writes and decryptions, content created, edited or deleted,
//! packs registered or installed, inquiries answered, executions canceled,
//! paused or resumed) with who made it and from where; and
//! `GET /api/v1/audit/status`, each destination's export lag.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::Json;
use serde_json::{json, Map, Value};
use squall_actors::audit::{self, Actor, Object};
use squall_actors::auth::Principal;

use super::error::ApiError;
use super::query::query_flag;
use super::ApiState;

/// What an API request stands for in the trail, if anything.
fn act(method: &Method, path: &str, query: &str) -> Option<(String, Object)> {
    let path = path
        .strip_prefix("/api/v1")
        .or_else(|| path.strip_prefix("/v1"))
        .or_else(|| path.strip_prefix("/auth/v1"))
        .unwrap_or(path);
    let mut parts = path.trim_matches('/').splitn(2, '/');
    let first = parts.next().unwrap_or("");
    let rest = parts.next().filter(|r| !r.is_empty());
    let decrypting = query_flag(query, "decrypt");
    let showing_secrets = query_flag(query, "show_secrets");
    let object = |kind: &str| Object {
        kind: kind.into(),
        id: None,
        reference: rest.map(str::to_string),
    };
    let verb = match *method {
        Method::POST => "created",
        Method::PUT => "updated",
        Method::DELETE => "deleted",
        _ => "",
    };
    let (action, obj) = match (first, rest) {
        ("tokens", None) | ("ui", Some("login")) if *method == Method::POST => {
            ("auth.login".to_string(), object("token"))
        }
        // The web UI's pages and its logout are not acts on the trail.
        ("ui", _) => return None,
        ("keys", _) if *method == Method::GET && decrypting => {
            ("key.decrypted".into(), object("key"))
        }
        // Secrets shown to an admin: a pack config's opened, or a record's
        // secret parameters unmasked.
        ("configs", _) if *method == Method::GET && showing_secrets => {
            ("pack_config.decrypted".into(), object("pack_config"))
        }
        (kind, _) if *method == Method::GET && showing_secrets => {
            let kind = kind.trim_end_matches('s');
            (format!("{kind}.secrets_shown"), object(kind))
        }
        (_, _) if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) => return None,
        // The trigger instance is the webhook's record (`trigger.received`).
        ("webhooks", _) => return None,
        ("packs", Some(r @ ("register" | "install" | "uninstall"))) => {
            let verb = match r {
                "register" => "registered",
                "install" => "installed",
                _ => "uninstalled",
            };
            (
                format!("pack.{verb}"),
                Object {
                    kind: "pack".into(),
                    ..Object::default()
                },
            )
        }
        ("inquiries", Some(_)) if *method == Method::PUT => {
            ("inquiry.answered".into(), object("inquiry"))
        }
        ("executions", Some(_)) if *method == Method::DELETE => {
            ("execution.cancel_requested".into(), object("execution"))
        }
        ("executions", Some(_)) if *method == Method::PUT => {
            ("execution.state_requested".into(), object("execution"))
        }
        ("executions", Some(r)) if r.ends_with("/re_run") => {
            ("execution.rerun_requested".into(), object("execution"))
        }
        // Requested executions have their own event, from the record.
        ("executions", None) => return None,
        // Tests that write nothing.
        ("rules", Some("test")) | ("workflows", Some("inspect")) => return None,
        ("keys", _) => (
            format!("key.{}", if verb == "created" { "updated" } else { verb }),
            object("key"),
        ),
        ("apikeys", _) => (format!("api_key.{verb}"), object("api_key")),
        ("users", _) => (format!("user.{verb}"), object("user")),
        ("configs", _) => (format!("config.{verb}"), object("config")),
        ("triggerinstances", Some(_)) => (
            "trigger_instance.re_emitted".into(),
            object("trigger_instance"),
        ),
        (kind, _) => {
            let kind = kind.trim_end_matches('s');
            (format!("{kind}.{verb}"), object(kind))
        }
    };
    Some((action, obj))
}

/// Records the request in the audit trail when it is one of the acts
/// above, or when its credentials were refused or its role too low.
pub async fn record(State(st): State<ApiState>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let remote = remote_addr(&req);
    let presented = credentials_kind(&req);
    let basic_user = basic_user(&req);
    let resp = next.run(req).await;
    let status = resp.status();
    let principal = resp.extensions().get::<Principal>().cloned();
    let act = act(&method, &path, &query);
    let (action, object) = match (status, act) {
        (StatusCode::UNAUTHORIZED | StatusCode::TOO_MANY_REQUESTS, Some((a, o)))
            if a == "auth.login" =>
        {
            ("auth.login_failed".to_string(), o)
        }
        (StatusCode::UNAUTHORIZED, _) => (
            "auth.credentials_rejected".to_string(),
            Object {
                kind: presented.unwrap_or("credentials").into(),
                ..Object::default()
            },
        ),
        (StatusCode::FORBIDDEN, _) => (
            "auth.denied".to_string(),
            Object {
                kind: "request".into(),
                ..Object::default()
            },
        ),
        (_, Some(found)) => found,
        (_, None) => return resp,
    };
    let outcome = if status.is_success() {
        "success"
    } else if matches!(
        status,
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS
    ) {
        "denied"
    } else {
        "failure"
    };
    let (user, how) = match (&principal, &basic_user) {
        (Some(p), _) => (Some(p.user.clone()), presented.unwrap_or("token")),
        (None, Some(u)) if action.starts_with("auth.login") => (Some(u.clone()), "password"),
        _ => (None, presented.unwrap_or("none")),
    };
    let mut data = Map::new();
    data.insert("http_method".into(), json!(method.as_str()));
    data.insert("path".into(), json!(path));
    data.insert("status_code".into(), json!(status.as_u16()));
    if !query.is_empty() {
        data.insert("query".into(), json!(mask_query(&query)));
    }
    let event = audit::api_act(
        &action,
        object,
        Actor {
            user,
            method: Some(how.into()),
            remote_addr: remote,
        },
        outcome,
        (!status.is_success()).then(|| status.to_string()),
        data,
    );
    st.bus.audit.emit(event);
    resp
}

/// The client's address: the first `X-Forwarded-For` hop, else the peer.
fn remote_addr(req: &Request) -> Option<String> {
    req.headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .or_else(|| {
            req.extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip().to_string())
        })
}

/// Which kind of credentials came with the request, never their value.
fn credentials_kind(req: &Request) -> Option<&'static str> {
    let h = req.headers();
    let q = req.uri().query().unwrap_or("").to_ascii_lowercase();
    if h.contains_key("x-auth-token") || q.contains("x-auth-token=") {
        Some("token")
    } else if h.contains_key("st2-api-key") || q.contains("st2-api-key=") {
        Some("api_key")
    } else if h
        .get_all(header::COOKIE)
        .iter()
        .any(|c| c.to_str().is_ok_and(|c| c.contains("auth-token=")))
    {
        Some("token")
    } else if h.contains_key(header::AUTHORIZATION) {
        Some("password")
    } else {
        None
    }
}

/// The user name of HTTP Basic credentials (never the password).
fn basic_user(req: &Request) -> Option<String> {
    use base64::Engine as _;
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    Some(text.split_once(':')?.0.to_string())
}

/// The query string with credentials masked.
fn mask_query(query: &str) -> String {
    query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _))
                if matches!(
                    k.to_ascii_lowercase().as_str(),
                    "x-auth-token" | "st2-api-key" | "token" | "password"
                ) =>
            {
                format!("{k}={}", audit::MASKED)
            }
            _ => kv.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// `GET /api/v1/audit/status`: the `AUDIT` stream and, per destination
/// configured on this node, its lag, the age of its oldest unexported
/// event and (when this node runs it) its exporter's state.
pub async fn status(State(st): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let mut stream = st
        .bus
        .js
        .get_stream(audit::AUDIT_STREAM)
        .await
        .map_err(|e| ApiError::Internal(format!("cannot open the AUDIT stream: {e}")))?;
    let info = stream
        .info()
        .await
        .map_err(|e| ApiError::Internal(format!("cannot read the AUDIT stream: {e}")))?
        .clone();
    let dlq = match st.bus.js.get_stream(audit::DEAD_LETTER_STREAM).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    };
    let mut destinations = Vec::new();
    for name in &st.audit_destinations {
        let lag = audit::export::lag(&st.bus.js, name)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let mut v = match lag {
            Some(l) => serde_json::to_value(l).unwrap_or_default(),
            None => json!({"destination": name, "lag": info.state.messages,
                           "oldest_unexported_age_secs": null}),
        };
        if let Some(state) = st.audit_exporters.get(name) {
            let state = state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            v["exporter"] = serde_json::to_value(state).unwrap_or_default();
        }
        destinations.push(v);
    }
    Ok(Json(json!({
        "stream": {
            "name": audit::AUDIT_STREAM,
            "events": info.state.messages,
            "bytes": info.state.bytes,
            "max_age_secs": info.config.max_age.as_secs(),
            "max_bytes": info.config.max_bytes,
            "deny_delete": info.config.deny_delete,
            "deny_purge": info.config.deny_purge,
        },
        "dead_lettered": dlq,
        "destinations": destinations,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_map_to_acts() {
        let a = |m: Method, p: &str, q: &str| act(&m, p, q).map(|(a, _)| a);
        assert_eq!(
            a(Method::POST, "/auth/v1/tokens", ""),
            Some("auth.login".into())
        );
        assert_eq!(a(Method::POST, "/tokens", ""), Some("auth.login".into()));
        assert_eq!(a(Method::POST, "/ui/login", ""), Some("auth.login".into()));
        assert_eq!(a(Method::POST, "/ui/logout", ""), None);
        assert_eq!(
            a(Method::GET, "/api/v1/keys/x", "decrypt=true"),
            Some("key.decrypted".into())
        );
        assert_eq!(a(Method::GET, "/api/v1/keys/x", ""), None);
        // Every spelling the handler honours.
        assert_eq!(
            a(Method::GET, "/api/v1/keys", "scope=all&decrypt=y"),
            Some("key.decrypted".into())
        );
        assert_eq!(
            a(Method::GET, "/api/v1/configs/p", "show_secrets=True"),
            Some("pack_config.decrypted".into())
        );
        assert_eq!(
            a(Method::GET, "/api/v1/executions", "limit=5&show_secrets=1"),
            Some("execution.secrets_shown".into())
        );
        assert_eq!(
            a(Method::GET, "/api/v1/executions", "show_secrets=no"),
            None
        );
        assert_eq!(
            a(Method::PUT, "/api/v1/keys/x", ""),
            Some("key.updated".into())
        );
        assert_eq!(
            a(Method::DELETE, "/v1/apikeys/1", ""),
            Some("api_key.deleted".into())
        );
        assert_eq!(
            a(Method::POST, "/api/v1/users", ""),
            Some("user.created".into())
        );
        assert_eq!(
            a(Method::POST, "/api/v1/actions", ""),
            Some("action.created".into())
        );
        assert_eq!(
            a(Method::PUT, "/api/v1/rules/p.r", ""),
            Some("rule.updated".into())
        );
        assert_eq!(
            a(Method::POST, "/api/v1/packs/install", ""),
            Some("pack.installed".into())
        );
        assert_eq!(
            a(Method::PUT, "/api/v1/inquiries/1", ""),
            Some("inquiry.answered".into())
        );
        assert_eq!(a(Method::POST, "/api/v1/webhooks/x", ""), None);
        assert_eq!(a(Method::POST, "/api/v1/executions", ""), None);
        assert_eq!(
            mask_query("a=1&x-auth-token=s3"),
            "a=1&x-auth-token=********"
        );
    }
}

//! Query strings as StackStorm's clients write them: booleans in any case
//! (`decrypt=True` from the Python client, `true`, `1`, `yes`), and every
//! error the framework itself produces (a bad path, a wrong method, a body
//! it could not read) answered as `{"faultstring": ...}` like ours.

use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Deserializer};
use serde_json::json;

/// The boolean a query value means, as StackStorm's router reads it
/// (`true/1/yes/y`, `false/0/no/n`, any case); `None` for anything else.
pub fn parse_flag(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "y" => Some(true),
        "false" | "0" | "no" | "n" => Some(false),
        _ => None,
    }
}

/// Whether the raw query string `query` sets flag `name` true (in any of
/// [`parse_flag`]'s spellings), as the handler reading it will.
pub fn query_flag(query: &str, name: &str) -> bool {
    query.split('&').any(|kv| {
        kv.split_once('=')
            .is_some_and(|(k, v)| k == name && parse_flag(v) == Some(true))
    })
}

/// Serde helper for an optional boolean query parameter:
/// `#[serde(default, deserialize_with = "flag")]`.
pub fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    let Some(text) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    parse_flag(&text).map(Some).ok_or_else(|| {
        serde::de::Error::custom(format!("{text:?} is not a boolean: use true or false"))
    })
}

/// Largest framework error body rewritten (they are one line of text).
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Rewrites error responses that are not JSON (axum's own rejections: a
/// path that does not decode, a method the route does not have, a body
/// over the limit) into the API's error format, keeping their status.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let response = next.run(req).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_ERROR_BODY)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if status == StatusCode::METHOD_NOT_ALLOWED {
        // The router adds the `Allow` header outside this layer.
        format!(
            "{method} is not allowed on {path}: see the Allow header for the methods it answers"
        )
    } else if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_string()
    } else {
        text
    };
    let mut rewritten = (status, Json(json!({"faultstring": message}))).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rewritten.headers_mut().insert(name, value.clone());
        }
    }
    rewritten
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::HeaderValue;
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;

    /// A plain-text error, as axum's rejections are.
    fn plain(status: StatusCode, text: &'static str) -> Response {
        let mut r = Response::new(Body::from(text));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    }

    #[test]
    fn flags_read_as_stackstorm_reads_them() {
        for yes in ["true", "True", "TRUE", "1", "yes", "Y"] {
            assert_eq!(parse_flag(yes), Some(true), "{yes}");
        }
        for no in ["false", "False", "0", "no", "N"] {
            assert_eq!(parse_flag(no), Some(false), "{no}");
        }
        assert_eq!(parse_flag("maybe"), None);
        assert_eq!(parse_flag(""), None);
    }

    #[derive(Debug, Deserialize)]
    struct Q {
        #[serde(default, deserialize_with = "flag")]
        decrypt: Option<bool>,
    }

    #[test]
    fn flag_fields_deserialize_from_query_strings() {
        let q: Q = serde_urlencoded::from_str("decrypt=True").unwrap();
        assert_eq!(q.decrypt, Some(true));
        let q: Q = serde_urlencoded::from_str("").unwrap();
        assert_eq!(q.decrypt, None);
        let e = serde_urlencoded::from_str::<Q>("decrypt=maybe").unwrap_err();
        assert!(e.to_string().contains("not a boolean"), "{e}");
    }

    #[tokio::test]
    async fn plain_text_errors_become_json() {
        let app = Router::new()
            .route(
                "/plain",
                get(|| async { plain(StatusCode::BAD_REQUEST, "bad thing") }),
            )
            .route("/ok", get(|| async { "fine" }))
            .layer(axum::middleware::from_fn(json_errors));
        let call = |method: &str, uri: &str| {
            axum::http::Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .unwrap()
        };
        let r = app.clone().oneshot(call("GET", "/plain")).await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let body = axum::body::to_bytes(r.into_body(), 1024).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["faultstring"], "bad thing");

        let r = app.clone().oneshot(call("DELETE", "/ok")).await.unwrap();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert!(r.headers().get(header::ALLOW).is_some());
        let body = axum::body::to_bytes(r.into_body(), 1024).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let text = v["faultstring"].as_str().unwrap();
        assert!(text.contains("DELETE is not allowed on /ok"), "{text}");

        let r = app.oneshot(call("GET", "/ok")).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let body = axum::body::to_bytes(r.into_body(), 1024).await.unwrap();
        assert_eq!(&body[..], b"fine");
    }
}

//! `http-request` (`core.http`): one HTTP request, as StackStorm's
//! `http_runner` makes it. The result is `{status_code, body, parsed,
//! headers}` (the body parsed when the response says `application/json`);
//! the execution succeeds only for statuses 200–206, times out as `timeout`
//! with `{error}`, and fails with `{error}` when the request cannot be
//! made (a bad `url`, a refused connection, a host not allowed).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{json, Map, Value};
use squall_domain::execution::Status;

use crate::{RunOutcome, RunRequest, Runner};

/// StackStorm's default request timeout, in seconds.
const DEFAULT_TIMEOUT: f64 = 60.0;

/// Statuses StackStorm counts as success (`SUCCESS_STATUS_CODES`).
const SUCCESS: std::ops::RangeInclusive<u16> = 200..=206;

/// The HTTP runner. Clients are kept per connection setting (redirects,
/// certificate checks, proxies), so repeated requests reuse connections.
#[derive(Debug, Default)]
pub struct HttpRequest {
    clients: Arc<Mutex<HashMap<ClientKey, reqwest::Client>>>,
}

/// What a client is built from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    allow_redirects: bool,
    verify_ssl_cert: bool,
    http_proxy: Option<String>,
    https_proxy: Option<String>,
}

/// Why a request could not be made; each names the parameter at fault.
#[derive(Debug, thiserror::Error)]
enum HttpError {
    #[error("url: {0:?} is not a valid URL: {1}")]
    Url(String, String),
    #[error("url: {0:?} is not an http or https URL")]
    Scheme(String),
    #[error("url: URL \"{0}\" is blacklisted (url_hosts_blacklist)")]
    Blacklisted(String),
    #[error("url: URL \"{0}\" is not whitelisted (url_hosts_whitelist)")]
    NotWhitelisted(String),
    #[error("\"url_hosts_blacklist\" and \"url_hosts_whitelist\" parameters are mutually exclusive. Only one should be provided.")]
    BothLists,
    #[error("{0}: {1}")]
    Param(&'static str, String),
    #[error("body: Request body ({0}) can't be parsed as JSON")]
    JsonBody(String),
    #[error("body: a request with file_content is sent as multipart/form-data and cannot have a body too")]
    BodyWithFile,
    #[error("could not build the HTTP client: {0}")]
    Client(String),
}

impl Runner for HttpRequest {
    fn name(&self) -> &'static str {
        "http-request"
    }

    fn run(&self, req: RunRequest) -> BoxFuture<'static, RunOutcome> {
        let clients = self.clients.clone();
        Box::pin(async move {
            let prepared = match prepare(&clients, &req) {
                Ok(p) => p,
                Err(e) => return failed(e.to_string()),
            };
            let url = prepared.url.clone();
            tokio::select! {
                outcome = send(prepared) => outcome,
                () = req.cancel.cancelled() => RunOutcome {
                    status: Status::Canceled,
                    result: json!({"error": format!("the request to {url} was canceled")}),
                },
            }
        })
    }
}

fn failed(error: String) -> RunOutcome {
    RunOutcome {
        status: Status::Failed,
        result: json!({ "error": error }),
    }
}

/// A request ready to send.
struct Prepared {
    url: reqwest::Url,
    request: reqwest::RequestBuilder,
    timeout: f64,
}

fn string_param<'a>(p: &'a Map<String, Value>, name: &'static str) -> Option<&'a str> {
    p.get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn object_param<'a>(
    p: &'a Map<String, Value>,
    name: &'static str,
) -> Result<Option<&'a Map<String, Value>>, HttpError> {
    match p.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(other) => Err(HttpError::Param(
            name,
            format!("expected an object, got {other}"),
        )),
    }
}

fn hosts_param(p: &Map<String, Value>, name: &'static str) -> Vec<String> {
    p.get(name)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// A header, query or cookie value as text (strings unquoted).
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn prepare(
    clients: &Mutex<HashMap<ClientKey, reqwest::Client>>,
    req: &RunRequest,
) -> Result<Prepared, HttpError> {
    let p = &req.parameters;
    let raw_url = string_param(p, "url").unwrap_or_default();
    let url = reqwest::Url::parse(raw_url)
        .map_err(|e| HttpError::Url(raw_url.to_string(), e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(HttpError::Scheme(raw_url.to_string()));
    }
    let blacklist = hosts_param(p, "url_hosts_blacklist");
    let whitelist = hosts_param(p, "url_hosts_whitelist");
    if !blacklist.is_empty() && !whitelist.is_empty() {
        return Err(HttpError::BothLists);
    }
    // StackStorm compares the network location without port or brackets.
    let host = url
        .host_str()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if blacklist.contains(&host) {
        return Err(HttpError::Blacklisted(raw_url.to_string()));
    }
    if !whitelist.is_empty() && !whitelist.contains(&host) {
        return Err(HttpError::NotWhitelisted(raw_url.to_string()));
    }
    let timeout = match p.get("timeout") {
        None | Some(Value::Null) => DEFAULT_TIMEOUT,
        Some(v) => v
            .as_f64()
            .filter(|t| *t > 0.0 && t.is_finite())
            .ok_or_else(|| {
                HttpError::Param("timeout", format!("expected a positive number, got {v}"))
            })?,
    };
    let body = match p.get("body") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(v) => Some(text(v)),
    };
    let file = upload(p)?;
    if file.is_some() && body.is_some() {
        return Err(HttpError::BodyWithFile);
    }
    let method = match string_param(p, "method") {
        Some(m) => reqwest::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
            .map_err(|_| HttpError::Param("method", format!("{m:?} is not an HTTP method")))?,
        None if body.is_some() || file.is_some() => reqwest::Method::POST,
        None => reqwest::Method::GET,
    };
    let key = ClientKey {
        allow_redirects: p
            .get("allow_redirects")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        verify_ssl_cert: p
            .get("verify_ssl_cert")
            .and_then(Value::as_bool)
            .unwrap_or(true),
        http_proxy: string_param(p, "http_proxy").map(str::to_string),
        https_proxy: string_param(p, "https_proxy").map(str::to_string),
    };
    let client = client(clients, &key)?;

    let mut headers = reqwest::header::HeaderMap::new();
    let mut header = |name: &str, value: &str, param: &'static str| -> Result<(), HttpError> {
        let n = reqwest::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| HttpError::Param(param, format!("{name:?} is not a header name")))?;
        let v = reqwest::header::HeaderValue::from_str(value).map_err(|_| {
            HttpError::Param(
                param,
                format!("the value of {name:?} is not a header value"),
            )
        })?;
        headers.insert(n, v);
        Ok(())
    };
    let mut json_content = false;
    if let Some(given) = object_param(p, "headers")? {
        for (name, value) in given {
            let value = text(value);
            if name.eq_ignore_ascii_case("content-type") && value == "application/json" {
                json_content = true;
            }
            header(name, &value, "headers")?;
        }
    }
    header(
        "User-Agent",
        concat!("squall/v", env!("CARGO_PKG_VERSION")),
        "headers",
    )?;
    header("X-Stanley-Action", &req.action.name, "headers")?;
    if let Some(cookies) = object_param(p, "cookies")? {
        let line = cookies
            .iter()
            .map(|(k, v)| format!("{k}={}", text(v)))
            .collect::<Vec<_>>()
            .join("; ");
        if !line.is_empty() {
            header("Cookie", &line, "cookies")?;
        }
    }
    // `auth` is a header given as `name=value` (`x-auth-token=XYZ`).
    if let Some(auth) = string_param(p, "auth") {
        let (name, value) = auth
            .split_once('=')
            .ok_or_else(|| HttpError::Param("auth", "expected \"<header>=<value>\"".to_string()))?;
        header(name.trim(), value.trim(), "auth")?;
    }

    let mut request = client
        .request(method, url.clone())
        .headers(headers)
        .timeout(Duration::from_secs_f64(timeout));
    if let Some(query) = object_param(p, "params")? {
        let pairs: Vec<(String, String)> = query
            .iter()
            .flat_map(|(k, v)| match v {
                // A list repeats the name, as requests encodes it.
                Value::Array(items) => items.iter().map(|i| (k.clone(), text(i))).collect(),
                other => vec![(k.clone(), text(other))],
            })
            .collect();
        request = request.query(&pairs);
    }
    let username = string_param(p, "username");
    let password = string_param(p, "password");
    if username.is_some() || password.is_some() {
        request = request.basic_auth(username.unwrap_or_default(), password);
    }
    if let Some(body) = body {
        let body = if json_content {
            let parsed: Value =
                serde_json::from_str(&body).map_err(|_| HttpError::JsonBody(body.clone()))?;
            parsed.to_string()
        } else {
            body
        };
        request = request.body(body);
    }
    if let Some(form) = file {
        request = request.multipart(form);
    }
    Ok(Prepared {
        url,
        request,
        timeout,
    })
}

/// The file StackStorm's `file_name` and `file_content` upload (the `st2`
/// CLI fills them from `@file_path=…`): one multipart/form-data part named
/// and filed as `file_name`, typed `file_content_type` when given; `None`
/// unless both are given, as in StackStorm.
fn upload(p: &Map<String, Value>) -> Result<Option<reqwest::multipart::Form>, HttpError> {
    let (Some(name), Some(content)) = (
        string_param(p, "file_name"),
        string_param(p, "file_content"),
    ) else {
        return Ok(None);
    };
    let mut part = reqwest::multipart::Part::text(content.to_string()).file_name(name.to_string());
    if let Some(kind) = string_param(p, "file_content_type") {
        part = part.mime_str(kind).map_err(|_| {
            HttpError::Param(
                "file_content_type",
                format!("{kind:?} is not a content type"),
            )
        })?;
    }
    Ok(Some(
        reqwest::multipart::Form::new().part(name.to_string(), part),
    ))
}

fn client(
    clients: &Mutex<HashMap<ClientKey, reqwest::Client>>,
    key: &ClientKey,
) -> Result<reqwest::Client, HttpError> {
    let mut clients = clients.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(c) = clients.get(key) {
        return Ok(c.clone());
    }
    // Only the proxies the action names: never the node's environment.
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .redirect(if key.allow_redirects {
            reqwest::redirect::Policy::limited(30)
        } else {
            reqwest::redirect::Policy::none()
        })
        .danger_accept_invalid_certs(!key.verify_ssl_cert);
    if let Some(proxy) = &key.http_proxy {
        builder = builder.proxy(
            reqwest::Proxy::http(proxy)
                .map_err(|e| HttpError::Param("http_proxy", e.to_string()))?,
        );
    }
    if let Some(proxy) = &key.https_proxy {
        builder = builder.proxy(
            reqwest::Proxy::https(proxy)
                .map_err(|e| HttpError::Param("https_proxy", e.to_string()))?,
        );
    }
    let built = builder
        .build()
        .map_err(|e| HttpError::Client(e.to_string()))?;
    clients.insert(key.clone(), built.clone());
    Ok(built)
}

async fn send(prepared: Prepared) -> RunOutcome {
    let Prepared {
        url,
        request,
        timeout,
    } = prepared;
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => return request_error(&url, timeout, &e),
    };
    let status_code = response.status().as_u16();
    let mut headers = Map::new();
    for (name, value) in response.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        // Repeated headers join with ", ", as requests shows them.
        match headers.get_mut(name.as_str()) {
            Some(Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(&value);
            }
            _ => {
                headers.insert(name.as_str().to_string(), Value::String(value));
            }
        }
    }
    let json_body = headers
        .get("content-type")
        .and_then(Value::as_str)
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|ct| ct.trim() == "application/json");
    let text = match response.text().await {
        Ok(t) => t,
        Err(e) => return request_error(&url, timeout, &e),
    };
    let (body, parsed) = match json_body.then(|| serde_json::from_str::<Value>(&text)) {
        Some(Ok(v)) => (v, true),
        _ => (Value::String(text), false),
    };
    RunOutcome {
        status: if SUCCESS.contains(&status_code) {
            Status::Succeeded
        } else {
            Status::Failed
        },
        result: json!({
            "status_code": status_code,
            "body": body,
            "parsed": parsed,
            "headers": headers,
        }),
    }
}

fn request_error(url: &reqwest::Url, timeout: f64, e: &reqwest::Error) -> RunOutcome {
    if e.is_timeout() {
        return RunOutcome {
            status: Status::Timeout,
            result: json!({
                "error": format!("the request to {url} timed out after {timeout} s (timeout)")
            }),
        };
    }
    // reqwest's own text is terse; its sources say why.
    let mut why = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        why.push_str(": ");
        why.push_str(&s.to_string());
        source = s.source();
    }
    failed(format!("the request to {url} failed: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(params: Value) -> RunRequest {
        RunRequest {
            execution_id: "e".into(),
            action: squall_domain::model::ActionDef {
                name: "http".into(),
                pack: "core".into(),
                description: String::new(),
                enabled: true,
                runner_type: "http-request".into(),
                entry_point: String::new(),
                parameters: Default::default(),
                output_schema: None,
                tags: vec![],
                notify: None,
                metadata_file: String::new(),
            },
            pack_path: Default::default(),
            parameters: params.as_object().cloned().unwrap_or_default(),
            config: Default::default(),
            env: Default::default(),
            output: None,
            cancel: Default::default(),
        }
    }

    async fn error_of(params: Value) -> String {
        let out = HttpRequest::default().run(request(params)).await;
        assert_eq!(out.status, Status::Failed, "{}", out.result);
        out.result["error"].as_str().unwrap().to_string()
    }

    #[tokio::test]
    async fn bad_input_fails_naming_the_parameter() {
        let e = error_of(json!({"url": "not a url"})).await;
        assert!(
            e.starts_with("url: \"not a url\" is not a valid URL"),
            "{e}"
        );
        let e = error_of(json!({"url": "ftp://127.0.0.1/x"})).await;
        assert!(e.starts_with("url: "), "{e}");
        let e = error_of(json!({"url": "http://127.0.0.1/", "method": "NO PE"})).await;
        assert!(e.starts_with("method: "), "{e}");
        let e = error_of(json!({"url": "http://127.0.0.1/", "headers": {"Content-Type": "application/json"}, "body": "{nope"})).await;
        assert!(e.starts_with("body: "), "{e}");
        let e = error_of(json!({"url": "http://127.0.0.1/", "auth": "nothing"})).await;
        assert!(e.starts_with("auth: "), "{e}");
        let e = error_of(json!({"url": "http://127.0.0.1/", "timeout": -1})).await;
        assert!(e.starts_with("timeout: "), "{e}");
    }

    #[tokio::test]
    async fn host_lists_are_checked_before_anything_is_sent() {
        let e =
            error_of(json!({"url": "http://127.0.0.1:9/", "url_hosts_blacklist": ["127.0.0.1"]}))
                .await;
        assert!(e.contains("is blacklisted"), "{e}");
        let e = error_of(json!({"url": "http://[::1]:9/", "url_hosts_whitelist": ["example.com"]}))
            .await;
        assert!(e.contains("is not whitelisted"), "{e}");
        let e = error_of(json!({"url": "http://[::1]:9/", "url_hosts_whitelist": ["a"], "url_hosts_blacklist": ["b"]})).await;
        assert!(e.contains("mutually exclusive"), "{e}");
    }
}

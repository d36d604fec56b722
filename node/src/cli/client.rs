//! The REST API's client: the settings file, credentials, requests and
//! their errors.

use serde_json::Value;
use thiserror::Error;

/// Failures of a client command.
#[derive(Debug, Error)]
pub enum CliError {
    #[error("cannot reach Squall at {url}: {message}. Is `squall up` running? (set SQUALL_URL or --url)")]
    Unreachable { url: String, message: String },
    #[error("{0}")]
    Api(String),
    #[error("{0}")]
    Usage(String),
}

/// How the client proves who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    Token(String),
    ApiKey(String),
    None,
}

/// Where the client talks to when nothing says otherwise.
pub const DEFAULT_URL: &str = "http://127.0.0.1:9101";

/// The client's settings file (YAML): `$SQUALL_CONFIG`, else
/// `$XDG_CONFIG_HOME/squall/config.yaml` (`~/.config/squall/config.yaml`).
/// Flags and environment variables win over it.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CliConfig {
    /// API URL, e.g. `https://squall.example.com:9101`.
    #[serde(default)]
    pub url: Option<String>,
    /// An access token.
    #[serde(default)]
    pub token: Option<String>,
    /// An API key (`squall apikey create`).
    #[serde(default)]
    pub api_key: Option<String>,
}

impl CliConfig {
    /// Where the settings file is looked for.
    pub fn path() -> Option<std::path::PathBuf> {
        if let Some(p) = std::env::var_os("SQUALL_CONFIG") {
            return Some(p.into());
        }
        config_dir().map(|d| d.join("config.yaml"))
    }

    /// The settings file's contents; none when it does not exist (unless
    /// `SQUALL_CONFIG` names it). A broken file is an error naming it.
    pub fn load() -> Result<CliConfig, CliError> {
        let Some(path) = CliConfig::path() else {
            return Ok(CliConfig::default());
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && std::env::var_os("SQUALL_CONFIG").is_none() =>
            {
                return Ok(CliConfig::default())
            }
            Err(e) => {
                return Err(CliError::Usage(format!(
                    "cannot read the client settings {}: {e}",
                    path.display()
                )))
            }
        };
        CliConfig::parse(&text).map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))
    }

    /// Parses a settings file's text; errors carry line and field.
    pub fn parse(text: &str) -> Result<CliConfig, String> {
        if text.trim().is_empty() {
            return Ok(CliConfig::default());
        }
        serde_yaml::from_str(text).map_err(|e| match e.location() {
            Some(at) => format!("line {}: {e}", at.line()),
            None => e.to_string(),
        })
    }
}

impl Credentials {
    /// From flags/env first, then the settings file, else the token
    /// `squall login` saved.
    pub fn resolve(
        token: Option<String>,
        api_key: Option<String>,
        config: &CliConfig,
    ) -> Credentials {
        let token = token.or_else(|| config.token.clone());
        let api_key = api_key.or_else(|| config.api_key.clone());
        if let Some(t) = token.filter(|t| !t.is_empty()) {
            return Credentials::Token(t);
        }
        if let Some(k) = api_key.filter(|k| !k.is_empty()) {
            return Credentials::ApiKey(k);
        }
        saved_token_file()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .map_or(Credentials::None, Credentials::Token)
    }
}

/// `$XDG_CONFIG_HOME/squall` or `~/.config/squall`.
fn config_dir() -> Option<std::path::PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".config"))
        })?;
    Some(base.join("squall"))
}

/// Where `squall login` keeps the token: `$XDG_CONFIG_HOME/squall/token`
/// or `~/.config/squall/token`.
pub fn saved_token_file() -> Option<std::path::PathBuf> {
    config_dir().map(|d| d.join("token"))
}

/// A REST client for one node.
#[derive(Debug, Clone)]
pub struct Client {
    pub(super) base: String,
    pub(super) http: reqwest::Client,
    credentials: Credentials,
}

impl Client {
    /// A client for the API at `url` (e.g. `http://127.0.0.1:9101`).
    pub fn new(url: &str, credentials: Credentials) -> Client {
        Client {
            base: url.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
            credentials,
        }
    }

    /// Adds this client's credentials to a request.
    pub(super) fn authorize(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.credentials {
            Credentials::Token(t) => req.header("X-Auth-Token", t),
            Credentials::ApiKey(k) => req.header("St2-Api-Key", k),
            Credentials::None => req,
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<(Value, Option<u64>), CliError> {
        let req = self.authorize(req);
        let resp = req.send().await.map_err(|e| CliError::Unreachable {
            url: self.base.clone(),
            message: e.to_string(),
        })?;
        let status = resp.status();
        let total = resp
            .headers()
            .get("X-Total-Count")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let msg = body
                .get("faultstring")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| body.to_string());
            if status == reqwest::StatusCode::UNAUTHORIZED {
                return Err(CliError::Api(format!(
                    "{status}: {msg}\nLog in with `squall login --user NAME` (squall up writes the admin's password to .squall/admin-password), or set SQUALL_AUTH_TOKEN or SQUALL_API_KEY"
                )));
            }
            return Err(CliError::Api(format!("{status}: {msg}")));
        }
        Ok((body, total))
    }

    /// `GET /api/v1/<path>`.
    pub async fn get(&self, path: &str) -> Result<(Value, Option<u64>), CliError> {
        self.send(self.http.get(format!("{}/api/v1/{path}", self.base)))
            .await
    }

    /// `POST /api/v1/<path>` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, CliError> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    /// `<method> /api/v1/<path>`, with a JSON body if given.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, CliError> {
        let mut req = self
            .http
            .request(method, format!("{}/api/v1/{path}", self.base));
        if let Some(body) = body {
            req = req.json(body);
        }
        self.send(req).await.map(|(v, _)| v)
    }
}

/// `path?k=v&...` with the given pairs URL-encoded, `None`s left out.
pub fn with_query(path: &str, pairs: &[(&str, Option<String>)]) -> String {
    let present: Vec<(&str, &str)> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (*k, v)))
        .collect();
    if present.is_empty() {
        return path.to_string();
    }
    let query = serde_urlencoded::to_string(&present).unwrap_or_default();
    format!("{path}?{query}")
}

//! Client subcommands: talk to a node's REST API, print tables for people
//! and JSON (`--json`) for scripts.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use serde_json::{json, Map, Value};
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
    base: String,
    http: reqwest::Client,
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
    fn authorize(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
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

/// One column of a listing: its header and where its value is.
pub type Column = (&'static str, &'static str);

/// `GET <path>` printed as a table of `columns`, or as JSON.
pub async fn list_table(
    client: &Client,
    path: &str,
    columns: &[Column],
    as_json: bool,
) -> Result<(), CliError> {
    let (list, _) = client.get(path).await?;
    if as_json {
        println!("{}", pretty(&list));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .as_array()
        .into_iter()
        .flatten()
        .map(|item| columns.iter().map(|(_, p)| field(item, p)).collect())
        .collect();
    let headers: Vec<&str> = columns.iter().map(|(h, _)| *h).collect();
    print_table(&headers, &rows);
    Ok(())
}

/// Prints one object: YAML for people, JSON for scripts.
pub fn show(value: &Value, as_json: bool) {
    if as_json {
        println!("{}", pretty(value));
    } else {
        print_yaml(value, 0);
    }
}

/// `squall execution tail`: prints an execution's output, from its start
/// and then live, until it has finished; false if it did not succeed.
pub async fn execution_tail(client: &Client, id: &str) -> Result<bool, CliError> {
    // The output stream replays what is stored, follows the rest, and ends
    // with `EOF` once the execution has finished.
    let url = format!("{}/stream/v1/executions/{id}/output", client.base);
    let mut resp = client
        .authorize(client.http.get(url))
        .send()
        .await
        .map_err(|e| CliError::Unreachable {
            url: client.base.clone(),
            message: e.to_string(),
        })?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let msg = body["faultstring"]
            .as_str()
            .unwrap_or("cannot follow the output");
        return Err(CliError::Api(format!("{status}: {msg}")));
    }
    let mut buf = String::new();
    'stream: while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| CliError::Api(e.to_string()))?
    {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            if block.lines().any(|l| l == "event: EOF") {
                break 'stream;
            }
            let data: String = block
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim_start)
                .collect();
            if let Ok(event) = serde_json::from_str::<Value>(&data) {
                if let Some(text) = event.get("data").and_then(Value::as_str) {
                    print!("{text}");
                    let _ = std::io::stdout().flush();
                }
            }
        }
    }
    let (exec, _) = client.get(&format!("executions/{id}")).await?;
    let status = exec["status"].as_str().unwrap_or_default();
    println!("\nExecution {id} has completed (status={status}).");
    Ok(status == "succeeded")
}

/// `squall login`: trades a user name and password for a token and saves
/// it (mode 0600) for the next commands.
pub async fn login(
    client: &Client,
    user: &str,
    password: &str,
    as_json: bool,
) -> Result<(), CliError> {
    let resp = client
        .http
        .post(format!("{}/auth/v1/tokens", client.base))
        .basic_auth(user, Some(password))
        .send()
        .await
        .map_err(|e| CliError::Unreachable {
            url: client.base.clone(),
            message: e.to_string(),
        })?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let msg = body["faultstring"].as_str().unwrap_or("login failed");
        return Err(CliError::Api(format!("{status}: {msg}")));
    }
    let token = body["token"].as_str().unwrap_or_default();
    let file = saved_token_file().ok_or_else(|| {
        CliError::Usage("cannot tell where to save the token: set HOME or XDG_CONFIG_HOME".into())
    })?;
    crate::node::write_secret_file(&file, token).map_err(|e| {
        CliError::Usage(format!("cannot save the token to {}: {e}", file.display()))
    })?;
    if as_json {
        println!("{}", pretty(&body));
    } else {
        println!(
            "Logged in as {user} until {}; token saved to {}",
            body["expiry"].as_str().unwrap_or("?"),
            file.display()
        );
    }
    Ok(())
}

/// Parses `key=value` pairs. Values stay strings unless they are JSON
/// objects or arrays; the server casts them to the action's declared types.
pub fn parse_params(pairs: &[String]) -> Result<Map<String, Value>, CliError> {
    let mut out = Map::new();
    for pair in pairs {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| CliError::Usage(format!("parameter {pair:?} is not key=value")))?;
        let value = match serde_json::from_str::<Value>(v) {
            Ok(j @ (Value::Object(_) | Value::Array(_))) => j,
            _ => Value::String(v.to_string()),
        };
        out.insert(k.to_string(), value);
    }
    Ok(out)
}

/// How `squall run` waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    /// Until the execution has finished, then print it.
    Wait,
    /// Not at all: print the id.
    Detach,
    /// Printing its output live until it has finished.
    Tail,
}

/// `squall run`: starts an action; unless `detach`, waits for it to finish
/// (with a spinner on a terminal) and prints the result.
pub async fn run(
    client: &Client,
    action: &str,
    params: &[String],
    mode: RunMode,
    as_json: bool,
) -> Result<bool, CliError> {
    let body = json!({"action": action, "parameters": run_params(params)?});
    let created = client.post("executions", &body).await?;
    follow(client, &created, mode, as_json).await
}

/// `squall run`'s arguments as StackStorm's CLI reads them: `key=value`
/// pairs until the first word without `=`; that word and every one after
/// it are joined with spaces into `cmd` (`squall run core.local -- ls -la`).
pub fn run_params(args: &[String]) -> Result<Map<String, Value>, CliError> {
    let pairs = args.iter().take_while(|a| a.contains('=')).count();
    let mut params = parse_params(&args[..pairs])?;
    if pairs < args.len() {
        params.insert("cmd".into(), json!(args[pairs..].join(" ")));
    }
    Ok(params)
}

/// Follows an execution just requested (`created`): prints its id
/// (`Detach`), its output live (`Tail`) or, once it has finished, the
/// execution (`Wait`, with a spinner on a terminal). False if it did not
/// succeed.
pub async fn follow(
    client: &Client,
    created: &Value,
    mode: RunMode,
    as_json: bool,
) -> Result<bool, CliError> {
    let id = created
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let action = field(created, "/action/ref");
    if mode == RunMode::Tail {
        return execution_tail(client, &id).await;
    }
    if mode == RunMode::Detach {
        if as_json {
            println!("{}", pretty(created));
        } else {
            println!("execution {id} requested\nTo get the results, execute:\n squall execution get {id}");
        }
        return Ok(true);
    }
    let spinner = std::io::stderr().is_terminal() && !as_json;
    let frames = ['|', '/', '-', '\\'];
    let mut n = 0usize;
    let done = loop {
        let (exec, _) = client.get(&format!("executions/{id}")).await?;
        let status = exec.get("status").and_then(Value::as_str).unwrap_or("");
        if is_completed(status) {
            break exec;
        }
        if spinner {
            eprint!("\r{} {action} {status}   ", frames[n % frames.len()]);
            let _ = std::io::stderr().flush();
            n += 1;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    };
    if spinner {
        eprint!("\r{:width$}\r", "", width = action.len() + 20);
    }
    print_execution(&done, as_json);
    Ok(done.get("status").and_then(Value::as_str) == Some("succeeded"))
}

/// `squall execution cancel`: one line saying what became of it.
pub async fn execution_cancel(client: &Client, id: &str, as_json: bool) -> Result<(), CliError> {
    let exec = client
        .call(reqwest::Method::DELETE, &format!("executions/{id}"), None)
        .await?;
    if as_json {
        println!("{}", pretty(&exec));
    } else if exec["status"] == "canceled" {
        println!("execution {id} canceled");
    } else {
        println!(
            "execution {id} is {}: cancellation requested",
            field(&exec, "/status")
        );
    }
    Ok(())
}

/// `squall action get`: the action, then its parameters as a table
/// (required ones first).
pub async fn action_get(client: &Client, reference: &str, as_json: bool) -> Result<(), CliError> {
    let (action, _) = client.get(&format!("actions/{reference}")).await?;
    if as_json {
        println!("{}", pretty(&action));
        return Ok(());
    }
    for (label, pointer) in [
        ("ref", "/ref"),
        ("description", "/description"),
        ("runner_type", "/runner_type"),
        ("entry_point", "/entry_point"),
        ("enabled", "/enabled"),
    ] {
        println!("{label}: {}", field(&action, pointer));
    }
    let mut params: Vec<(&String, &Value)> = action["parameters"]
        .as_object()
        .into_iter()
        .flatten()
        .collect();
    if params.is_empty() {
        println!("parameters: None");
        return Ok(());
    }
    params.sort_by_key(|(name, spec)| (spec["required"] != true, *name));
    let rows: Vec<Vec<String>> = params
        .iter()
        .map(|(name, spec)| {
            vec![
                (*name).clone(),
                field(spec, "/type"),
                (spec["required"] == true).to_string(),
                field(spec, "/default"),
                field(spec, "/description"),
            ]
        })
        .collect();
    println!("parameters:");
    print_table(
        &["name", "type", "required", "default", "description"],
        &rows,
    );
    Ok(())
}

/// The rule `squall rule test` tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleToTest {
    /// A registered rule's ref or id.
    Registered(String),
    /// A rule file (YAML or JSON).
    File(std::path::PathBuf),
}

impl RuleToTest {
    /// From `squall rule test`'s arguments: a ref or `--rule-file`.
    pub fn from_args(
        reference: Option<String>,
        file: Option<std::path::PathBuf>,
    ) -> Result<RuleToTest, CliError> {
        match (reference, file) {
            (Some(reference), None) => Ok(RuleToTest::Registered(reference)),
            (None, Some(file)) => Ok(RuleToTest::File(file)),
            (Some(_), Some(_)) => Err(CliError::Usage(
                "give a rule's ref or --rule-file, not both".into(),
            )),
            (None, None) => Err(CliError::Usage(
                "give the rule to test: its ref, or --rule-file FILE".into(),
            )),
        }
    }
}

/// What `squall rule test` tests the rule against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestEvent {
    /// A stored trigger instance's id.
    TriggerInstance(String),
    /// A file (YAML or JSON) holding a payload.
    PayloadFile(std::path::PathBuf),
}

impl TestEvent {
    /// From `--trigger-instance` and `--payload`: exactly one of them.
    pub fn from_args(
        trigger_instance: Option<String>,
        payload: Option<std::path::PathBuf>,
    ) -> Result<TestEvent, CliError> {
        match (trigger_instance, payload) {
            (Some(id), None) => Ok(TestEvent::TriggerInstance(id)),
            (None, Some(file)) => Ok(TestEvent::PayloadFile(file)),
            (Some(_), Some(_)) => Err(CliError::Usage(
                "give either --trigger-instance or --payload, not both".into(),
            )),
            (None, None) => Err(CliError::Usage(
                "give --trigger-instance ID or --payload FILE to test the rule against".into(),
            )),
        }
    }
}

/// A YAML or JSON file's contents.
fn read_document(file: &std::path::Path) -> Result<Value, CliError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", file.display())))?;
    serde_yaml::from_str(&text)
        .map_err(|e| CliError::Usage(format!("{}: not YAML or JSON: {e}", file.display())))
}

/// `squall rule test`: asks the API (`POST /rules/test`) and prints the
/// verdict, each criterion, and the parameters the action would get. True
/// when the rule matches.
pub async fn rule_test(
    client: &Client,
    rule: &RuleToTest,
    event: &TestEvent,
    as_json: bool,
) -> Result<bool, CliError> {
    let mut body = json!({
        "rule": match rule {
            RuleToTest::Registered(reference) => json!(reference),
            RuleToTest::File(file) => read_document(file)?,
        }
    });
    match event {
        TestEvent::TriggerInstance(id) => body["trigger_instance"] = json!(id),
        TestEvent::PayloadFile(file) => body["payload"] = read_document(file)?,
    }
    let test = client.post("rules/test", &body).await?;
    let matched = test["matched"] == true;
    if as_json {
        println!("{}", pretty(&test));
        return Ok(matched);
    }
    let rule_ref = field(&test, "/rule");
    println!(
        "rule {rule_ref} {}",
        if matched { "MATCHES" } else { "DOES NOT MATCH" }
    );
    let trigger = &test["trigger"];
    if trigger["matched"] == true {
        println!("trigger: {} (the rule's)", field(trigger, "/actual"));
    } else {
        println!(
            "trigger: {} {} is not the rule's {} {}",
            field(trigger, "/actual"),
            field(trigger, "/actual_parameters"),
            field(trigger, "/expected"),
            field(trigger, "/expected_parameters"),
        );
    }
    let criteria = &test["criteria"];
    if criteria["empty_payload"] == true {
        println!("criteria: not checked: the payload is empty, and a rule with criteria never matches an empty payload");
    } else if criteria["criteria"].as_array().is_some_and(Vec::is_empty) {
        println!("criteria: none (every payload matches)");
    } else {
        let rows: Vec<Vec<String>> = criteria["criteria"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                let verdict = match c["error"].as_str() {
                    Some(error) => format!("error: {error}"),
                    None if c["matched"] == true => "matched".to_string(),
                    None => "FAILED".to_string(),
                };
                vec![
                    field(c, "/key"),
                    field(c, "/operator"),
                    shown(&c["pattern"]),
                    shown(&c["value"]),
                    verdict,
                ]
            })
            .collect();
        println!("criteria:");
        print_table(&["key", "operator", "pattern", "value", "result"], &rows);
    }
    if let Some(action) = test.get("action").filter(|a| a.is_object()) {
        println!("action: {}", field(action, "/ref"));
        match action["error"].as_str() {
            Some(error) => println!("the enforcement would fail: {error}"),
            None => {
                println!("parameters:");
                print_yaml(&action["parameters"], 2);
            }
        }
    }
    Ok(matched)
}

/// A JSON value in a table cell: strings quoted, so that `"5"` and `5`
/// and an empty string stay distinguishable.
fn shown(v: &Value) -> String {
    match v {
        Value::Null => "null".to_string(),
        other => other.to_string(),
    }
}

/// What a shell reports for a command killed by `SIGPIPE` (128 + 13).
const CLOSED_PIPE_EXIT: i32 = 141;

/// Makes a client command end quietly, as Unix tools do, when whoever
/// reads its output has gone (`squall execution list | head`): printing
/// to a closed pipe panics in Rust, and this hook turns that panic into
/// exit status 141 without a message. Other panics are reported as usual.
pub fn exit_quietly_when_stdout_closes() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if stdout_closed() {
            std::process::exit(CLOSED_PIPE_EXIT);
        }
        report(info);
    }));
}

/// Whether standard output is a pipe nobody reads any more.
fn stdout_closed() -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let stdout = std::io::stdout();
    let mut fds = [PollFd::new(stdout.as_fd(), PollFlags::POLLOUT)];
    poll(&mut fds, PollTimeout::ZERO).is_ok()
        && fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLERR))
}

fn is_completed(status: &str) -> bool {
    matches!(
        status,
        "succeeded" | "failed" | "timeout" | "abandoned" | "canceled"
    )
}

/// `squall execution get`.
/// For a workflow, its task tree follows, as StackStorm's CLI shows it.
pub async fn execution_get(client: &Client, id: &str, as_json: bool) -> Result<(), CliError> {
    let (exec, _) = client.get(&format!("executions/{id}")).await?;
    print_execution(&exec, as_json);
    if !as_json && exec["runner"]["name"] == "orquesta" {
        let (children, _) = client.get(&format!("executions/{id}/children")).await?;
        if children.as_array().is_some_and(|c| !c.is_empty()) {
            println!("+ tasks:");
            print_executions(&children, Some(id));
        }
    }
    Ok(())
}

/// Filters of `squall execution list`, as the API names them.
#[derive(Debug, Default, Clone)]
pub struct ExecutionFilters {
    pub action: Option<String>,
    pub status: Option<String>,
    pub rule: Option<String>,
    pub trigger_instance: Option<String>,
    pub parent: Option<String>,
    pub user: Option<String>,
    pub timestamp_gt: Option<String>,
    pub timestamp_lt: Option<String>,
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

/// `squall execution list`.
pub async fn execution_list(
    client: &Client,
    limit: u32,
    filters: &ExecutionFilters,
    as_json: bool,
) -> Result<(), CliError> {
    let f = filters.clone();
    let path = with_query(
        "executions",
        &[
            ("limit", Some(limit.to_string())),
            ("action", f.action),
            ("status", f.status),
            ("rule", f.rule),
            ("trigger_instance", f.trigger_instance),
            ("parent", f.parent),
            ("user", f.user),
            ("timestamp_gt", f.timestamp_gt),
            ("timestamp_lt", f.timestamp_lt),
        ],
    );
    let (list, total) = client.get(&path).await?;
    if as_json {
        println!("{}", pretty(&list));
        return Ok(());
    }
    let shown = print_executions(&list, None);
    if let Some(t) = total {
        if t as usize > shown {
            println!("Note: only the first {shown} of {t} executions are shown; use --limit.");
        }
    }
    Ok(())
}

/// `squall execution children`: the tree under an execution.
pub async fn execution_children(
    client: &Client,
    id: &str,
    depth: Option<i64>,
    as_json: bool,
) -> Result<(), CliError> {
    let path = with_query(
        &format!("executions/{id}/children"),
        &[("depth", depth.map(|d| d.to_string()))],
    );
    let (list, _) = client.get(&path).await?;
    if as_json {
        println!("{}", pretty(&list));
    } else {
        print_executions(&list, Some(id));
    }
    Ok(())
}

/// Prints executions as a table; under `root`, ids are indented by depth
/// as StackStorm's CLI shows a workflow's tasks. Returns how many.
fn print_executions(list: &Value, root: Option<&str>) -> usize {
    let items: Vec<&Value> = list.as_array().into_iter().flatten().collect();
    let depth_of = |e: &Value| {
        let mut depth = 0;
        let mut parent = e["parent"].as_str();
        while let Some(p) = parent.filter(|p| Some(*p) != root) {
            depth += 1;
            parent = items
                .iter()
                .find(|x| x["id"].as_str() == Some(p))
                .and_then(|x| x["parent"].as_str());
        }
        depth
    };
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|e| {
            let indent = if root.is_some() {
                "  ".repeat(depth_of(e))
            } else {
                String::new()
            };
            let mut row = vec![
                format!("{indent}{}", field(e, "/id")),
                field(e, "/action/ref"),
                field(e, "/context/user"),
                status_with_elapsed(e),
                field(e, "/start_timestamp"),
                field(e, "/end_timestamp"),
            ];
            if root.is_some() {
                row.insert(1, field(e, "/context/orquesta/task_name"));
            }
            row
        })
        .collect();
    let mut headers = vec![
        "id",
        "action.ref",
        "context.user",
        "status",
        "start_timestamp",
        "end_timestamp",
    ];
    if root.is_some() {
        headers.insert(1, "task");
    }
    print_table(&headers, &rows);
    rows.len()
}

/// `squall rule create FILE`: a rule from a YAML or JSON file, validated
/// by the server as a pack's rule file would be.
pub async fn rule_create(
    client: &Client,
    file: &std::path::Path,
    as_json: bool,
) -> Result<(), CliError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", file.display())))?;
    let body: Value = serde_yaml::from_str(&text)
        .map_err(|e| CliError::Usage(format!("{}: not YAML or JSON: {e}", file.display())))?;
    let created = client.post("rules", &body).await?;
    show(&created, as_json);
    Ok(())
}

/// `squall rule enable|disable REF`.
pub async fn rule_set_enabled(
    client: &Client,
    reference: &str,
    enabled: bool,
    as_json: bool,
) -> Result<(), CliError> {
    let (mut rule, _) = client.get(&format!("rules/{reference}")).await?;
    rule["enabled"] = json!(enabled);
    let updated = client
        .call(
            reqwest::Method::PUT,
            &format!("rules/{reference}"),
            Some(&rule),
        )
        .await?;
    show(&updated, as_json);
    Ok(())
}

/// `squall inquiry respond ID key=value...` (or `--response JSON`).
pub async fn inquiry_respond(
    client: &Client,
    id: &str,
    pairs: &[String],
    response: Option<&str>,
    as_json: bool,
) -> Result<(), CliError> {
    let response = match response {
        Some(text) => serde_json::from_str::<Value>(text)
            .map_err(|e| CliError::Usage(format!("--response is not JSON: {e}")))?,
        None if pairs.is_empty() => {
            return Err(CliError::Usage(
                "give the response as key=value pairs or --response '{...}'".into(),
            ))
        }
        // Values are JSON when they parse (`approve=true` is a boolean).
        None => Value::Object(
            parse_params(pairs)?
                .into_iter()
                .map(|(k, v)| match v {
                    Value::String(text) => (
                        k,
                        serde_json::from_str(&text).unwrap_or(Value::String(text)),
                    ),
                    other => (k, other),
                })
                .collect(),
        ),
    };
    let answered = client
        .call(
            reqwest::Method::PUT,
            &format!("inquiries/{id}"),
            Some(&json!({"id": id, "response": response})),
        )
        .await?;
    show(&answered, as_json);
    Ok(())
}

/// `squall pack register`.
pub async fn pack_register(
    client: &Client,
    packs: &[String],
    as_json: bool,
) -> Result<(), CliError> {
    let counts = client
        .post("packs/register", &json!({"packs": packs}))
        .await?;
    if as_json {
        println!("{}", pretty(&counts));
    } else {
        let rows: Vec<Vec<String>> = counts
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, v)| v.is_number())
            .map(|(k, v)| vec![k.clone(), v.to_string()])
            .collect();
        print_table(&["content", "registered"], &rows);
        for (label, list) in [("changed", "changes"), ("warning", "warnings")] {
            for line in counts[list].as_array().into_iter().flatten() {
                println!("{label}: {}", line.as_str().unwrap_or_default());
            }
        }
    }
    Ok(())
}

/// `squall pack install` and `squall pack uninstall`: starts the
/// `packs.install` (`packs.uninstall`) execution and follows it to its end,
/// as `st2 pack install` does. False if it did not succeed.
pub async fn pack_manage(
    client: &Client,
    path: &str,
    body: &Value,
    action: &str,
    as_json: bool,
) -> Result<bool, CliError> {
    let started = client.post(path, body).await?;
    let id = field(&started, "/execution_id");
    let created = json!({"id": id, "action": {"ref": action}});
    follow(client, &created, RunMode::Wait, as_json).await
}

fn field(v: &Value, pointer: &str) -> String {
    match v.pointer(pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn status_with_elapsed(e: &Value) -> String {
    let status = field(e, "/status");
    match e.get("elapsed_seconds").and_then(Value::as_f64) {
        Some(s) => format!("{status} ({s:.0}s elapsed)"),
        None => status,
    }
}

fn print_execution(exec: &Value, as_json: bool) {
    if as_json {
        println!("{}", pretty(exec));
        return;
    }
    println!("id: {}", field(exec, "/id"));
    println!("action.ref: {}", field(exec, "/action/ref"));
    let params = exec.get("parameters").cloned().unwrap_or(json!({}));
    if params.as_object().is_some_and(|p| !p.is_empty()) {
        println!("parameters:");
        print_yaml(&params, 2);
    } else {
        println!("parameters: None");
    }
    println!("status: {}", status_with_elapsed(exec));
    println!("start_timestamp: {}", field(exec, "/start_timestamp"));
    println!("end_timestamp: {}", field(exec, "/end_timestamp"));
    println!("result:");
    print_yaml(exec.get("result").unwrap_or(&Value::Null), 2);
}

fn print_yaml(v: &Value, indent: usize) {
    let text = serde_yaml::to_string(v).unwrap_or_default();
    for line in text.lines() {
        println!("{:indent$}{line}", "");
    }
}

/// `squall node list`: every live node once, merged from the service
/// registry's groups (one per role).
pub async fn node_list(client: &Client, as_json: bool) -> Result<(), CliError> {
    let (groups, _) = client.get("service_registry/groups").await?;
    let mut nodes: std::collections::BTreeMap<String, Value> = Default::default();
    for group in groups["groups"].as_array().into_iter().flatten() {
        let Some(group) = group.as_str() else {
            continue;
        };
        let (members, _) = client
            .get(&format!("service_registry/groups/{group}/members"))
            .await?;
        for m in members["members"].as_array().into_iter().flatten() {
            if let Some(id) = m["member_id"].as_str() {
                nodes.insert(id.to_string(), m["capabilities"].clone());
            }
        }
    }
    if as_json {
        println!("{}", pretty(&json!(nodes)));
        return Ok(());
    }
    let join = |v: &Value| {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(",")
    };
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|(name, c)| {
            let partitions = c["partitions"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(role, ps)| format!("{role}:{}", ps.as_array().map_or(0, Vec::len)))
                .collect::<Vec<_>>()
                .join(" ");
            vec![
                name.clone(),
                join(&c["roles"]),
                join(&c["pools"]),
                partitions,
                field(c, "/last_heartbeat"),
            ]
        })
        .collect();
    print_table(
        &["node", "roles", "pools", "partitions", "last heartbeat"],
        &rows,
    );
    Ok(())
}

/// `squall audit status`: the AUDIT stream, then one row per destination
/// (lag, oldest unexported age, the exporter's state and last error).
pub async fn audit_status(client: &Client, as_json: bool) -> Result<(), CliError> {
    let (status, _) = client.get("audit/status").await?;
    if as_json {
        println!("{}", pretty(&status));
        return Ok(());
    }
    let s = &status["stream"];
    println!(
        "AUDIT stream: {} events, {} bytes (keeps {} days, at most {} bytes; delete and purge denied: {}); dead-lettered: {}",
        s["events"],
        s["bytes"],
        s["max_age_secs"].as_u64().unwrap_or(0) / 86_400,
        s["max_bytes"],
        s["deny_delete"].as_bool() == Some(true) && s["deny_purge"].as_bool() == Some(true),
        status["dead_lettered"],
    );
    let rows: Vec<Vec<String>> = status["destinations"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            vec![
                field(d, "/destination"),
                field(d, "/lag"),
                d["oldest_unexported_age_secs"]
                    .as_f64()
                    .map(|a| format!("{a:.1}s"))
                    .unwrap_or_else(|| "-".into()),
                field(d, "/exporter/state"),
                field(d, "/exporter/error"),
            ]
        })
        .collect();
    print_table(
        &[
            "destination",
            "lag",
            "oldest unexported",
            "exporter",
            "error",
        ],
        &rows,
    );
    Ok(())
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// Prints rows under headers, columns padded to their widest cell.
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    println!("{}", line(headers.iter().map(|h| h.to_string()).collect()));
    println!("{}", line(widths.iter().map(|w| "-".repeat(*w)).collect()));
    for row in rows {
        println!("{}", line(row.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_strings_unless_structured() {
        let p = parse_params(&[
            "cmd=echo a=b".into(),
            "n=5".into(),
            "env={\"A\":\"1\"}".into(),
        ])
        .unwrap();
        assert_eq!(p["cmd"], json!("echo a=b"));
        assert_eq!(p["n"], json!("5"));
        assert_eq!(p["env"], json!({"A": "1"}));
        assert!(parse_params(&["novalue".into()]).is_err());
    }

    #[test]
    fn run_joins_the_words_after_the_pairs_into_cmd() {
        let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let p = run_params(&words(&["timeout=5", "ls", "-la", "a=b"])).unwrap();
        assert_eq!(p["timeout"], json!("5"));
        assert_eq!(p["cmd"], json!("ls -la a=b"));
        let p = run_params(&words(&["cmd=date"])).unwrap();
        assert_eq!(p["cmd"], json!("date"));
        assert!(run_params(&[]).unwrap().is_empty());
    }

    #[test]
    fn rule_test_arguments_need_exactly_one_of_each() {
        use std::path::PathBuf;
        assert_eq!(
            TestEvent::from_args(Some("i".into()), None).unwrap(),
            TestEvent::TriggerInstance("i".into())
        );
        assert!(TestEvent::from_args(Some("i".into()), Some(PathBuf::from("p"))).is_err());
        assert!(TestEvent::from_args(None, None).is_err());
        assert_eq!(
            RuleToTest::from_args(None, Some(PathBuf::from("r.yaml"))).unwrap(),
            RuleToTest::File("r.yaml".into())
        );
        assert!(RuleToTest::from_args(Some("a.b".into()), Some(PathBuf::from("f"))).is_err());
        assert!(RuleToTest::from_args(None, None).is_err());
    }
}

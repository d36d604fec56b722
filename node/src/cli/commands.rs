//! The client commands: each one request (or a few) to the REST API and
//! what it prints.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Map, Value};

use super::client::{saved_token_file, with_query, CliError, Client};
use super::render::{
    field, pretty, print_execution, print_executions, print_table, print_yaml, show, shown, Column,
};
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

/// `squall <kind> get`: the object at `path`, shown.
pub async fn get_show(client: &Client, path: &str, as_json: bool) -> Result<(), CliError> {
    let (v, _) = client.get(path).await?;
    show(&v, as_json);
    Ok(())
}

/// `squall <kind> delete`: deletes the object at `path`.
pub async fn delete(client: &Client, path: &str) -> Result<(), CliError> {
    client.call(Method::DELETE, path, None).await?;
    Ok(())
}

/// `squall execution pause|resume`: asks execution `id` to go to `status`
/// (`pausing` or `resuming`) and shows the answer.
pub async fn execution_set_status(
    client: &Client,
    id: &str,
    status: &str,
    as_json: bool,
) -> Result<(), CliError> {
    let body = json!({ "status": status });
    let v = client
        .call(Method::PUT, &format!("executions/{id}"), Some(&body))
        .await?;
    show(&v, as_json);
    Ok(())
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
        Ok(
            match exactly_one(
                reference,
                file,
                "give a rule's ref or --rule-file, not both",
                "give the rule to test: its ref, or --rule-file FILE",
            )? {
                Ok(reference) => RuleToTest::Registered(reference),
                Err(file) => RuleToTest::File(file),
            },
        )
    }
}

/// Exactly one of two arguments: the first as `Ok`, the second as `Err`;
/// both or neither is a usage error saying `both` or `neither`.
fn exactly_one<A, B>(
    a: Option<A>,
    b: Option<B>,
    both: &str,
    neither: &str,
) -> Result<Result<A, B>, CliError> {
    match (a, b) {
        (Some(a), None) => Ok(Ok(a)),
        (None, Some(b)) => Ok(Err(b)),
        (Some(_), Some(_)) => Err(CliError::Usage(both.into())),
        (None, None) => Err(CliError::Usage(neither.into())),
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
        Ok(
            match exactly_one(
                trigger_instance,
                payload,
                "give either --trigger-instance or --payload, not both",
                "give --trigger-instance ID or --payload FILE to test the rule against",
            )? {
                Ok(id) => TestEvent::TriggerInstance(id),
                Err(file) => TestEvent::PayloadFile(file),
            },
        )
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

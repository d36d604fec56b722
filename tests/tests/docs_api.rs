//! A StackStorm user following StackStorm's own documentation: API keys
//! through the official CLI, webhooks fed by `curl --data`, query strings
//! as the Python client writes them, `st2 whoami`, `st2 timer`, the
//! trigger-instance filters, and pack metadata as StackStorm validates it.

use std::time::Duration;

use anyhow::{Context, Result};
use reqwest::Method;
use serde_json::{json, Value};
use squall_domain::time;
use squall_tests::{poll, st2, st2_json, st2_login, start_node, write_pack, TestNode};

/// A client that sends `key` as `St2-Api-Key`.
fn key_client(key: &str) -> Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("St2-Api-Key", key.parse()?);
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .build()?)
}

/// `GET <root>/api/v1/<path>` with `client` → status.
async fn status_at(client: &reqwest::Client, root: &str, path: &str) -> Result<u16> {
    Ok(client
        .get(format!("{root}/api/v1/{path}"))
        .send()
        .await?
        .status()
        .as_u16())
}

/// Waits until `GET <root>/api/v1/<path>` answers `status`: a key's change
/// reaches every node's principal cache within a second.
async fn answers_within_a_second(
    client: &reqwest::Client,
    root: &str,
    path: &str,
    status: u16,
) -> Result<()> {
    poll(Duration::from_secs(1), || async {
        Ok((status_at(client, root, path).await? == status).then_some(()))
    })
    .await
    .with_context(|| format!("GET {path} on {root} did not answer {status} within 1 s"))
}

/// A raw request → (status, content type, JSON body or `Null`).
async fn raw(
    client: &reqwest::Client,
    method: Method,
    url: &str,
    content_type: Option<&str>,
    body: &str,
) -> Result<(u16, String, Value)> {
    let mut req = client.request(method, url).body(body.to_string());
    if let Some(ct) = content_type {
        req = req.header("Content-Type", ct);
    }
    let r = req.send().await?;
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = r.text().await?;
    Ok((
        status,
        ct,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    ))
}

/// An error answer: JSON with a `faultstring` containing `needle`.
fn assert_fault(status: u16, want: u16, ct: &str, body: &Value, needle: &str) {
    assert_eq!(status, want, "{body}");
    assert!(ct.starts_with("application/json"), "content type {ct}");
    let fault = body["faultstring"].as_str().unwrap_or_default();
    assert!(fault.contains(needle), "{fault:?} lacks {needle:?}");
}

#[tokio::test]
async fn api_keys_are_read_disabled_enabled_and_deleted_with_the_st2_cli() -> Result<()> {
    let node = TestNode::start(vec![]).await?;
    let home = tempfile::tempdir()?;
    let home = home.path();
    st2_login(&node, home).await?;

    let created = st2_json(&node, home, &["apikey", "create", "-m", r#"{"for":"ci"}"#]).await?;
    let key = created["key"]
        .as_str()
        .context("key shown once")?
        .to_string();
    let id = created["id"].as_str().context("id")?.to_string();

    // Read back as StackStorm shows it: never the key, the hash masked.
    let got = st2_json(&node, home, &["apikey", "get", &id]).await?;
    assert_eq!(got["id"], json!(id));
    assert_eq!(got["user"], "admin");
    assert_eq!(got["enabled"], true);
    assert_eq!(got["metadata"], json!({"for": "ci"}));
    assert_eq!(got["key_hash"], "********");
    assert_eq!(got["uid"], "********");
    assert!(got.get("key").is_none(), "{got}");
    let listed = st2_json(&node, home, &["apikey", "list"]).await?;
    assert!(listed.to_string().contains(&id), "{listed}");
    assert!(!listed.to_string().contains(&key));
    let (_, listed) = node.get("apikeys").await?;
    assert!(listed
        .as_array()
        .is_some_and(|l| l.iter().all(|k| k["key_hash"] == "********")));
    // The key itself names it too (StackStorm's `get_by_key_or_id`).
    let (status, by_key) = node.get(&format!("apikeys/{key}")).await?;
    assert_eq!((status, &by_key["id"]), (200, &json!(id)));
    // An admin may ask for the hash.
    let (_, shown) = node.get(&format!("apikeys/{id}?show_secrets=True")).await?;
    assert_eq!(shown["key_hash"].as_str().map(str::len), Some(64));

    // A second node on the same cluster: the key works there too.
    let mut second = node.config.clone();
    second.name = "test-node-2".into();
    let other = start_node(&second).await?;
    let other_root = format!("http://{}", other.api_addr.context("API address")?);
    let with_key = key_client(&key)?;
    answers_within_a_second(&with_key, &node.root, "actions", 200).await?;
    answers_within_a_second(&with_key, &other_root, "actions", 200).await?;

    // Disabled: refused at once, here and on the other node.
    let disabled = st2_json(&node, home, &["apikey", "disable", &id]).await?;
    assert_eq!(disabled["enabled"], false, "{disabled}");
    assert_eq!(disabled["key_hash"], "********");
    answers_within_a_second(&with_key, &node.root, "actions", 401).await?;
    answers_within_a_second(&with_key, &other_root, "actions", 401).await?;
    let (_, got) = node.get(&format!("apikeys/{id}")).await?;
    assert_eq!(got["enabled"], false);

    // Enabled again: accepted again.
    let enabled = st2_json(&node, home, &["apikey", "enable", &id]).await?;
    assert_eq!(enabled["enabled"], true, "{enabled}");
    answers_within_a_second(&with_key, &node.root, "actions", 200).await?;
    answers_within_a_second(&with_key, &other_root, "actions", 200).await?;

    // Rejections: a new hash, a body naming another key, unknown fields,
    // another user's key, an unknown key.
    let put = |body: Value| {
        let path = format!("apikeys/{id}");
        let node = &node;
        async move { node.call(&node.http, Method::PUT, &path, Some(&body)).await }
    };
    let (status, body) = put(json!({"key_hash": "0".repeat(64), "enabled": true})).await?;
    assert_eq!(status, 400, "{body}");
    assert!(body["faultstring"]
        .as_str()
        .unwrap_or("")
        .contains("key_hash"));
    let (status, body) = put(json!({"id": "000000000000000000000000"})).await?;
    assert_eq!(status, 400, "{body}");
    let (status, body) = put(json!({"enabled": false, "colour": "red"})).await?;
    assert_eq!(status, 400, "{body}");
    assert!(body["faultstring"]
        .as_str()
        .unwrap_or("")
        .contains("colour"));
    let operator = node.user("otto", "operator").await?;
    let (status, body) = node
        .call(
            &operator,
            Method::PUT,
            &format!("apikeys/{id}"),
            Some(&json!({"enabled": false})),
        )
        .await?;
    assert_eq!(status, 403, "{body}");
    let (status, _) = node
        .call(&operator, Method::GET, &format!("apikeys/{id}"), None)
        .await?;
    assert_eq!(status, 403);
    answers_within_a_second(&with_key, &node.root, "actions", 200).await?;
    let (status, body) = node.get("apikeys/000000000000000000000000").await?;
    assert_eq!(status, 404, "{body}");
    let (status, body) = node.get("apikeys/not-a-key").await?;
    assert_eq!(status, 404);
    assert!(
        !body["faultstring"]
            .as_str()
            .unwrap_or("")
            .contains("not-a-key"),
        "a key given in the path is never echoed: {body}"
    );

    // Deleted with the CLI: gone, and the key stops working everywhere.
    let (ok, out, err) = st2(&node, home, &["apikey", "delete", &id]).await?;
    assert!(ok, "{out}{err}");
    let (status, _) = node.get(&format!("apikeys/{id}")).await?;
    assert_eq!(status, 404);
    answers_within_a_second(&with_key, &node.root, "actions", 401).await?;
    answers_within_a_second(&with_key, &other_root, "actions", 401).await?;
    other.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn webhooks_take_form_and_text_bodies_as_stackstorm_does() -> Result<()> {
    let node = TestNode::start(vec![]).await?;
    let (_, hook) = node.get("webhooks/sample").await?;
    let trigger = hook["ref"].as_str().context("webhook ref")?.to_string();
    let url = format!("{}/webhooks/sample", node.base);

    // `curl --data 'name=st2&tag=a&tag=b&empty='`: each field a list of its
    // values, blank ones left out (Python's parse_qs, as StackStorm).
    let (status, _, echoed) = raw(
        &node.http,
        Method::POST,
        &url,
        Some("application/x-www-form-urlencoded"),
        "name=st2&tag=a&tag=b&empty=",
    )
    .await?;
    assert_eq!(status, 202, "{echoed}");
    let form = json!({"name": ["st2"], "tag": ["a", "b"]});
    assert_eq!(echoed, form);
    let instance = poll(Duration::from_secs(10), || async {
        let (_, found) = node
            .get(&format!("triggerinstances?trigger={trigger}"))
            .await?;
        Ok(found.as_array().and_then(|l| l.first().cloned()))
    })
    .await?;
    assert_eq!(instance["payload"]["body"], form);
    assert_eq!(
        instance["payload"]["headers_lower"]["content-type"],
        "application/x-www-form-urlencoded"
    );

    // text/plain holding JSON (StackStorm reads it as JSON), and an empty
    // JSON body (`{}`).
    let (status, _, echoed) = raw(
        &node.http,
        Method::POST,
        &url,
        Some("text/plain"),
        r#"{"name": "st2"}"#,
    )
    .await?;
    assert_eq!((status, echoed), (202, json!({"name": "st2"})));
    let (status, _, echoed) =
        raw(&node.http, Method::POST, &url, Some("application/json"), "").await?;
    assert_eq!((status, echoed), (202, json!({})));

    // Rejections, all JSON.
    let (s, ct, b) = raw(&node.http, Method::POST, &url, Some("text/plain"), "hello").await?;
    assert_fault(s, 400, &ct, &b, "text/plain webhook body must hold JSON");
    let (s, ct, b) = raw(
        &node.http,
        Method::POST,
        &url,
        Some("application/xml"),
        "<a/>",
    )
    .await?;
    assert_fault(
        s,
        415,
        &ct,
        &b,
        "Unsupported Content-Type: \"application/xml\"",
    );
    let (s, ct, b) = raw(
        &node.http,
        Method::POST,
        &url,
        Some("multipart/form-data; boundary=x"),
        "--x--",
    )
    .await?;
    assert_fault(s, 415, &ct, &b, "Unsupported Content-Type");
    let (s, ct, b) = raw(
        &node.http,
        Method::POST,
        &url,
        Some("application/json"),
        "{",
    )
    .await?;
    assert_fault(s, 400, &ct, &b, "Failed to parse request body");
    let (s, ct, b) = raw(&node.http, Method::POST, &url, None, "\"text\"").await?;
    assert_fault(
        s,
        400,
        &ct,
        &b,
        "needs to be an object or an array, got: string",
    );
    let st2_url = format!("{}/webhooks/st2", node.base);
    let (s, ct, b) = raw(&node.http, Method::POST, &st2_url, None, "[1]").await?;
    assert_fault(s, 400, &ct, &b, "needs to be an object, got: array");
    let (s, ct, b) = raw(
        &node.http,
        Method::POST,
        &st2_url,
        Some("application/x-www-form-urlencoded"),
        "trigger=examples.x",
    )
    .await?;
    assert_fault(s, 400, &ct, &b, "trigger");
    Ok(())
}

#[tokio::test]
async fn query_strings_are_read_as_stackstorm_clients_write_them() -> Result<()> {
    let node = TestNode::start(vec![]).await?;
    let (status, _) = node
        .call(
            &node.http,
            Method::PUT,
            "keys/db_password",
            Some(&json!({"value": "hunter22", "secret": true})),
        )
        .await?;
    assert_eq!(status, 200);
    // The Python client's spelling, and any other case.
    for spelling in ["True", "true", "TRUE", "1"] {
        let (status, got) = node
            .get(&format!("keys/db_password?decrypt={spelling}"))
            .await?;
        assert_eq!(status, 200, "{spelling}: {got}");
        assert_eq!(got["value"], "hunter22", "{spelling}");
    }
    let (_, sealed) = node.get("keys/db_password?decrypt=False").await?;
    assert_ne!(sealed["value"], "hunter22");

    // Every rejection is JSON a person can act on.
    let get = |path: &str| {
        let url = format!("{}/{path}", node.base);
        let http = node.http.clone();
        async move { raw(&http, Method::GET, &url, None, "").await }
    };
    let (s, ct, b) = get("keys/db_password?decrypt=maybe").await?;
    assert_fault(
        s,
        400,
        &ct,
        &b,
        "\"maybe\" is not a boolean: use true or false",
    );
    let (s, ct, b) = get("executions?show_secrets=perhaps").await?;
    assert_fault(s, 400, &ct, &b, "show_secrets");
    let (s, ct, b) = get("actions?limit=ten").await?;
    assert_fault(s, 400, &ct, &b, "limit");
    let (s, ct, b) = get("actions/%FF%FE").await?;
    assert_eq!(s, 400, "{b}");
    assert!(ct.starts_with("application/json"), "{ct}");
    assert!(
        b["faultstring"].as_str().is_some_and(|f| !f.is_empty()),
        "{b}"
    );
    let (s, ct, b) = raw(
        &node.http,
        Method::PATCH,
        &format!("{}/actions", node.base),
        None,
        "",
    )
    .await?;
    assert_fault(s, 405, &ct, &b, "PATCH is not allowed on /api/v1/actions");
    Ok(())
}

const TIMERS_PACK: &str = "name: clocks\ndescription: timers\nversion: 0.1.0\nauthor: tests\n";
const HOURLY: &str = "
name: hourly
pack: clocks
enabled: true
trigger:
  type: core.st2.IntervalTimer
  parameters: {unit: hours, delta: 1}
action:
  ref: core.noop
";
const NIGHTLY: &str = "
name: nightly
pack: clocks
enabled: true
trigger:
  type: core.st2.CronTimer
  parameters: {hour: 3, minute: 0, second: 0}
action:
  ref: core.noop
";

#[tokio::test]
async fn whoami_timers_and_trigger_instance_filters_work_from_the_cli() -> Result<()> {
    let packs = tempfile::tempdir()?;
    write_pack(
        packs.path(),
        "clocks",
        &[
            ("pack.yaml", TIMERS_PACK),
            ("rules/hourly.yaml", HOURLY),
            ("rules/nightly.yaml", NIGHTLY),
        ],
    )?;
    let node = TestNode::start(vec![packs.path().to_path_buf()]).await?;
    let home = tempfile::tempdir()?;
    let home = home.path();
    st2_login(&node, home).await?;

    // st2 whoami
    let (ok, out, err) = st2(&node, home, &["whoami"]).await?;
    assert!(ok, "{out}{err}");
    assert!(out.contains("Currently logged in as \"admin\""), "{out}");
    assert!(
        out.contains("Authentication method: authentication token"),
        "{out}"
    );
    assert!(out.contains("Authentication token expire time: "), "{out}");
    assert!(out.contains("Roles: admin"), "{out}");
    let (_, created) = node.post("apikeys", &json!({})).await?;
    let with_key = key_client(created["key"].as_str().context("key")?)?;
    let (_, me) = node.call(&with_key, Method::GET, "user", None).await?;
    assert_eq!(me["username"], "admin");
    assert_eq!(
        me["authentication"],
        json!({"method": "API key", "location": "header"})
    );
    assert_eq!(me["rbac"]["is_admin"], true);
    let observer = node.user("olive", "observer").await?;
    let (status, me) = node.call(&observer, Method::GET, "user", None).await?;
    assert_eq!(status, 200);
    assert_eq!(me["rbac"]["roles"], json!(["observer"]));
    assert_eq!(me["rbac"]["is_admin"], false);

    // st2 timer list / get
    let timers = st2_json(&node, home, &["timer", "list"]).await?;
    let types: Vec<&str> = timers
        .as_array()
        .context("list")?
        .iter()
        .filter_map(|t| t["type"].as_str())
        .collect();
    assert!(types.contains(&"core.st2.IntervalTimer"), "{timers}");
    assert!(types.contains(&"core.st2.CronTimer"), "{timers}");
    let cron = st2_json(
        &node,
        home,
        &["timer", "list", "--timer-type", "core.st2.CronTimer"],
    )
    .await?;
    let cron = cron.as_array().context("list")?;
    assert!(
        cron.iter().all(|t| t["type"] == "core.st2.CronTimer") && !cron.is_empty(),
        "{cron:?}"
    );
    let nightly = cron
        .iter()
        .find(|t| t["parameters"]["hour"] == 3)
        .context("the nightly timer")?;
    let id = nightly["id"].as_str().context("id")?;
    let got = st2_json(&node, home, &["timer", "get", id]).await?;
    assert_eq!(got["id"], nightly["id"]);
    assert_eq!(got["type"], "core.st2.CronTimer");
    assert_eq!(
        got["parameters"],
        json!({"hour": 3, "minute": 0, "second": 0})
    );
    let reference = got["ref"].as_str().context("ref")?;
    let (status, by_ref) = node.get(&format!("timers/{reference}")).await?;
    assert_eq!((status, &by_ref["id"]), (200, &nightly["id"]));
    let (status, b) = node.get("timers?timer_type=core.st2.webhook").await?;
    assert_eq!(status, 400);
    assert!(b["faultstring"]
        .as_str()
        .unwrap_or("")
        .contains("core.st2.IntervalTimer"));
    let (status, _) = node.get("timers/clocks.nope").await?;
    assert_eq!(status, 404);

    // st2 trigger-instance list --trigger, and the other filters.
    let (_, hook) = node.get("webhooks/sample").await?;
    let sample = hook["ref"].as_str().context("ref")?.to_string();
    let (_, hook) = node.get("webhooks/alerts").await?;
    let alerts = hook["ref"].as_str().context("ref")?.to_string();
    node.post("webhooks/sample", &json!({"n": 1})).await?;
    node.post("webhooks/alerts", &json!({"n": 2})).await?;
    let (_, all) = node.get("triggerinstances").await?;
    let newest = all
        .as_array()
        .context("list")?
        .iter()
        .filter_map(|i| i["occurrence_time"].as_str().and_then(time::parse))
        .max()
        .context("no occurrence times")?;
    // A moment strictly between the first two instances and the third.
    let margin = chrono::Duration::milliseconds(1);
    let between = poll(Duration::from_secs(5), || async {
        let now = time::now();
        Ok((now > newest + margin).then_some(now))
    })
    .await?;
    poll(Duration::from_secs(5), || async {
        Ok((time::now() > between + margin).then_some(()))
    })
    .await?;
    let between = time::format(&between);
    node.post("webhooks/sample", &json!({"n": 3})).await?;
    let listed = st2_json(
        &node,
        home,
        &["trigger-instance", "list", "--trigger", &sample],
    )
    .await?;
    let listed = listed.as_array().context("list")?;
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed.iter().all(|i| i["trigger"] == json!(sample)));
    let (_, newer) = node
        .get(&format!(
            "triggerinstances?trigger={sample}&timestamp_gt={between}"
        ))
        .await?;
    assert_eq!(newer.as_array().map(Vec::len), Some(1), "{newer}");
    assert_eq!(newer[0]["payload"]["body"]["n"], 3);
    let (_, older) = node
        .get(&format!(
            "triggerinstances?timestamp_lt={between}&trigger={alerts}"
        ))
        .await?;
    assert_eq!(older.as_array().map(Vec::len), Some(1), "{older}");
    let processed = poll(Duration::from_secs(10), || async {
        let (_, done) = node
            .get(&format!(
                "triggerinstances?trigger={sample}&status=processed"
            ))
            .await?;
        Ok((done.as_array().map(Vec::len) == Some(2)).then_some(done))
    })
    .await?;
    assert!(processed
        .as_array()
        .is_some_and(|l| l.iter().all(|i| i["status"] == "processed")));
    let r = node
        .http
        .get(format!(
            "{}/triggerinstances?trigger={sample}&limit=1",
            node.base
        ))
        .send()
        .await?;
    assert_eq!(
        r.headers()
            .get("X-Total-Count")
            .and_then(|v| v.to_str().ok()),
        Some("2")
    );
    let (_, none) = node
        .get("triggerinstances?status=processing_failed")
        .await?;
    assert_eq!(none, json!([]));
    let (status, b) = node.get("triggerinstances?status=done").await?;
    assert_eq!(status, 400);
    assert!(b["faultstring"].as_str().unwrap_or("").contains("pending"));
    let (status, b) = node.get("triggerinstances?timestamp_gt=yesterday").await?;
    assert_eq!(status, 400);
    assert!(b["faultstring"]
        .as_str()
        .unwrap_or("")
        .contains("timestamp_gt"));
    Ok(())
}

#[tokio::test]
async fn a_pack_without_a_version_is_rejected_with_file_and_field() -> Result<()> {
    let packs = tempfile::tempdir()?;
    let node = TestNode::start(vec![packs.path().to_path_buf()]).await?;
    write_pack(
        packs.path(),
        "unversioned",
        &[(
            "pack.yaml",
            "name: unversioned\ndescription: d\nauthor: me\n",
        )],
    )?;
    let (status, body) = node
        .post("packs/register", &json!({"packs": ["unversioned"]}))
        .await?;
    assert_eq!(status, 400, "{body}");
    let fault = body["faultstring"].as_str().unwrap_or_default();
    assert!(fault.contains("unversioned/pack.yaml"), "{fault}");
    assert!(fault.contains("version"), "{fault}");
    assert!(
        fault.contains("missing required field `version`"),
        "{fault}"
    );
    let (status, _) = node.get("packs/unversioned").await?;
    assert_eq!(status, 404, "nothing registered");

    // Every pack Squall ships, and StackStorm's own examples, have one.
    let root = squall_tests::repo_root();
    for dir in [
        root.join("packs/core"),
        root.join("packs/examples"),
        root.join("tests/fixtures/st2-examples/examples"),
    ] {
        let bundle = squall_domain::loader::load_pack(&dir)
            .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        assert!(!bundle.pack.version.is_empty(), "{}", dir.display());
    }
    Ok(())
}

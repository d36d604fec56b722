//! Nothing created through the API is lost, and timers feed only rules that
//! listen: registration from disk merges into what is stored, a restart
//! undoes no API edit, and a timer rule never gets ticks from before it was
//! created or enabled.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use reqwest::Method;
use serde_json::{json, Value};
use squall_tests::{login, poll, squall_binary, st2, st2_json, st2_login, write_pack, TestNode};

const PACK_YAML: &str = "ref: mine\nname: mine\nversion: 1.0.0\nauthor: ops\n";

fn disk_rule(enabled: bool, description: &str) -> String {
    format!(
        "name: disk_rule\npack: mine\ndescription: {description}\nenabled: {enabled}\n\
         trigger:\n  type: core.st2.webhook\n  parameters:\n    url: disk\n\
         action:\n  ref: core.noop\n"
    )
}

/// A pack on disk with one rule and one action.
fn mine(root: &Path) -> Result<std::path::PathBuf> {
    write_pack(
        root,
        "mine",
        &[
            ("pack.yaml", PACK_YAML),
            ("rules/disk_rule.yaml", &disk_rule(true, "from disk")),
            (
                "actions/disk_action.yaml",
                "name: disk_action\npack: mine\nrunner_type: noop\n",
            ),
        ],
    )
}

async fn exists(node: &TestNode, path: &str) -> Result<bool> {
    let (status, body) = node.get(path).await?;
    anyhow::ensure!(
        status == 200 || status == 404,
        "GET {path}: {status} {body}"
    );
    Ok(status == 200)
}

async fn enabled(node: &TestNode, rule: &str) -> Result<bool> {
    let (status, body) = node.get(&format!("rules/{rule}")).await?;
    anyhow::ensure!(status == 200, "GET rules/{rule}: {status} {body}");
    body["enabled"].as_bool().context("no enabled flag")
}

/// `POST /packs/register` for `mine`: the lines of `changes`.
async fn register(node: &TestNode) -> Result<Vec<String>> {
    let (status, body) = node
        .post("packs/register", &json!({"packs": ["mine"]}))
        .await?;
    anyhow::ensure!(status == 200, "register: {status} {body}");
    Ok(body["changes"]
        .as_array()
        .context("no changes in the answer")?
        .iter()
        .filter_map(|c| c.as_str().map(str::to_string))
        .collect())
}

#[tokio::test]
async fn api_content_and_edits_survive_registration_and_restarts() -> Result<()> {
    let packs = tempfile::tempdir()?;
    let pack_dir = mine(packs.path())?;
    let mut node = TestNode::start(vec![packs.path().to_path_buf()]).await?;
    let home = tempfile::tempdir()?;
    st2_login(&node, home.path()).await?;

    // A rule and an action made through the API in the pack that lives on
    // disk; the disk rule disabled with the official CLI.
    let rule_file = home.path().join("api_rule.json");
    std::fs::write(
        &rule_file,
        json!({
            "name": "api_rule", "pack": "mine", "enabled": true,
            "trigger": {"type": "core.st2.webhook", "parameters": {"url": "api"}},
            "action": {"ref": "core.noop"}
        })
        .to_string(),
    )?;
    let created = st2_json(
        &node,
        home.path(),
        &["rule", "create", &rule_file.display().to_string()],
    )
    .await?;
    assert_eq!(created["ref"], "mine.api_rule");
    let (status, body) = node
        .post(
            "actions",
            &json!({"name": "api_action", "pack": "mine", "runner_type": "noop"}),
        )
        .await?;
    assert_eq!(status, 201, "{body}");
    let (ok, out, err) = st2(&node, home.path(), &["rule", "disable", "mine.disk_rule"]).await?;
    assert!(ok, "st2 rule disable: {out}{err}");
    assert!(!enabled(&node, "mine.disk_rule").await?);

    // A restart registers the packs again: nothing of that is undone.
    node.restart().await?;
    assert!(exists(&node, "rules/mine.api_rule").await?);
    assert!(exists(&node, "actions/mine.api_action").await?);
    assert!(
        !enabled(&node, "mine.disk_rule").await?,
        "a restart enabled a rule disabled through the API"
    );
    let (_, rule) = node.get("rules/mine.api_rule").await?;
    assert!(
        rule.get("enabled_since").is_none(),
        "Squall's bookkeeping shown: {rule}"
    );
    // Nor can a client set it: it is not a field of a rule.
    let mut forged = disk_rule_body(true, "forged");
    forged["name"] = json!("forged");
    forged["enabled_since"] = json!("2020-01-01T00:00:00Z");
    let (status, body) = node.post("rules", &forged).await?;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["faultstring"]
            .as_str()
            .is_some_and(|m| m.contains("enabled_since")),
        "{body}"
    );

    // `st2 pack register` (all packs) writes what the file says over the
    // edit, says so, and keeps the API's content.
    let (ok, out, err) = st2(&node, home.path(), &["pack", "register"]).await?;
    assert!(ok, "st2 pack register: {out}{err}");
    assert!(enabled(&node, "mine.disk_rule").await?);
    assert!(exists(&node, "rules/mine.api_rule").await?);
    assert!(exists(&node, "actions/mine.api_action").await?);
    // Registering again changes nothing, and says nothing changed.
    assert_eq!(register(&node).await?, Vec::<String>::new());

    // An API edit of the disk rule survives a restart too.
    let (status, body) = node
        .call(
            &node.http,
            Method::PUT,
            "rules/mine.disk_rule",
            Some(&disk_rule_body(false, "edited through the API")),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    node.restart().await?;
    let (_, rule) = node.get("rules/mine.disk_rule").await?;
    assert_eq!(rule["description"], "edited through the API");

    // A file changed on disk is taken at the next start, and the start
    // says what it changed; one deleted on disk goes.
    std::fs::write(
        pack_dir.join("rules/disk_rule.yaml"),
        disk_rule(true, "changed on disk"),
    )?;
    std::fs::remove_file(pack_dir.join("actions/disk_action.yaml"))?;
    node.restart().await?;
    let (_, rule) = node.get("rules/mine.disk_rule").await?;
    assert_eq!(rule["description"], "changed on disk");
    assert_eq!(rule["enabled"], true);
    assert!(!exists(&node, "actions/mine.disk_action").await?);
    assert!(exists(&node, "rules/mine.api_rule").await?);
    assert!(exists(&node, "actions/mine.api_action").await?);

    // An explicit registration answers with exactly what it changed.
    put_disk_rule_disabled(&node).await?;
    let said = "rule mine.disk_rule updated from rules/disk_rule.yaml (enabled as the file says)";
    assert_eq!(register(&node).await?, [said]);
    // `squall pack register` prints it.
    put_disk_rule_disabled(&node).await?;
    let out = tokio::process::Command::new(squall_binary()?)
        .args(["pack", "register", "mine"])
        .env("SQUALL_URL", &node.root)
        .env(
            "SQUALL_AUTH_TOKEN",
            login(&node.root, "admin", &node.admin_password).await?,
        )
        .env_remove("SQUALL_API_KEY")
        .output()
        .await?;
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{printed}");
    assert!(
        printed.contains(&format!("changed: {said}")),
        "squall pack register printed: {printed}"
    );
    Ok(())
}

async fn put_disk_rule_disabled(node: &TestNode) -> Result<()> {
    let (status, body) = node
        .call(
            &node.http,
            Method::PUT,
            "rules/mine.disk_rule",
            Some(&disk_rule_body(false, "changed on disk")),
        )
        .await?;
    anyhow::ensure!(status == 200, "PUT disk rule: {status} {body}");
    Ok(())
}

/// The disk rule as a JSON body, as the API takes it.
fn disk_rule_body(enabled: bool, description: &str) -> Value {
    json!({
        "name": "disk_rule", "pack": "mine", "enabled": enabled,
        "description": description,
        "trigger": {"type": "core.st2.webhook", "parameters": {"url": "disk"}},
        "action": {"ref": "core.noop"}
    })
}

/// An IntervalTimer rule (every `delta` seconds) as a JSON body.
fn timer_rule(name: &str, delta: u32, enabled: bool) -> Value {
    json!({
        "name": name, "pack": "timers", "enabled": enabled,
        "trigger": {"type": "core.st2.IntervalTimer",
                    "parameters": {"unit": "seconds", "delta": delta}},
        "action": {"ref": "core.noop"}
    })
}

/// The tick times of the executions `rule` started, in order.
async fn ticks(node: &TestNode, rule: &str) -> Result<Vec<DateTime<Utc>>> {
    let mut out = Vec::new();
    for e in node.executions().await? {
        if e["rule"]["ref"] != rule {
            continue;
        }
        let at = e["trigger_instance"]["occurrence_time"]
            .as_str()
            .context("no occurrence time")?;
        out.push(DateTime::parse_from_rfc3339(at)?.with_timezone(&Utc));
    }
    out.sort();
    Ok(out)
}

/// Waits until the `timers.clock` rule (every second, always enabled) has
/// fired `n` more times: real time passing, measured by the node itself.
async fn clock_ticks(node: &TestNode, n: usize) -> Result<()> {
    let start = ticks(node, "timers.clock").await?.len();
    poll(Duration::from_secs(30), || async {
        Ok((ticks(node, "timers.clock").await?.len() >= start + n).then_some(()))
    })
    .await
}

async fn put_rule(node: &TestNode, body: &Value) -> Result<()> {
    let name = body["name"].as_str().context("rule name")?;
    let (status, answer) = node
        .call(
            &node.http,
            Method::PUT,
            &format!("rules/timers.{name}"),
            Some(body),
        )
        .await?;
    anyhow::ensure!(status == 200, "PUT rule {name}: {status} {answer}");
    Ok(())
}

/// Ticks strictly between `from` and `to`.
fn between(ticks: &[DateTime<Utc>], from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<String> {
    ticks
        .iter()
        .filter(|t| **t > from && **t < to)
        .map(ToString::to_string)
        .collect()
}

#[tokio::test]
async fn timer_rules_get_no_ticks_from_before_they_listened() -> Result<()> {
    let node = TestNode::start(vec![]).await?;
    // A clock (every second) and the rule under test (every 2 seconds, so
    // another trigger than the clock's).
    for body in [timer_rule("clock", 1, true), timer_rule("beat", 2, true)] {
        let (status, answer) = node.post("rules", &body).await?;
        anyhow::ensure!(status == 201, "{status} {answer}");
    }
    poll(Duration::from_secs(30), || async {
        Ok((ticks(&node, "timers.beat").await?.len() >= 2).then_some(()))
    })
    .await?;

    // Disabled for several ticks, then enabled again: none of the ticks due
    // while it was disabled is fired afterwards.
    let disabled_at = Utc::now();
    put_rule(&node, &timer_rule("beat", 2, false)).await?;
    clock_ticks(&node, 5).await?;
    let enabled_at = Utc::now();
    put_rule(&node, &timer_rule("beat", 2, true)).await?;
    clock_ticks(&node, 5).await?;
    node.rules_idle().await?;
    let beats = ticks(&node, "timers.beat").await?;
    // A tick due as the disable was being stored may still have fired.
    let grace = disabled_at + chrono::Duration::seconds(1);
    assert_eq!(
        between(&beats, grace, enabled_at),
        Vec::<String>::new(),
        "ticks from while the rule was disabled were fired: {beats:?}"
    );
    assert!(
        beats.iter().any(|t| *t >= enabled_at),
        "the re-enabled rule never fired again: {beats:?}"
    );

    // Disabled, then deleted: it fires no more.
    let disabled_at = Utc::now();
    put_rule(&node, &timer_rule("beat", 2, false)).await?;
    let (status, _) = node
        .call(&node.http, Method::DELETE, "rules/timers.beat", None)
        .await?;
    assert_eq!(status, 204);
    // A new rule on a timer that fired before (its last tick is recorded)
    // starts a fresh schedule: no tick from before it existed.
    clock_ticks(&node, 3).await?;
    let created_at = Utc::now();
    let (status, answer) = node.post("rules", &timer_rule("again", 2, true)).await?;
    anyhow::ensure!(status == 201, "{status} {answer}");
    poll(Duration::from_secs(30), || async {
        Ok((!ticks(&node, "timers.again").await?.is_empty()).then_some(()))
    })
    .await?;
    clock_ticks(&node, 3).await?;
    node.rules_idle().await?;
    let again = ticks(&node, "timers.again").await?;
    assert!(
        again.iter().all(|t| *t >= created_at),
        "a new rule got ticks from before it existed (created {created_at}): {again:?}"
    );
    let beats = ticks(&node, "timers.beat").await?;
    let grace = disabled_at + chrono::Duration::seconds(1);
    assert!(
        beats.iter().all(|t| *t <= grace),
        "a disabled and deleted rule fired again: {beats:?}"
    );
    Ok(())
}

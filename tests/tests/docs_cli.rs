//! What a StackStorm user following StackStorm's own documentation does:
//! actions calling the API back with the token of their run, testing a
//! rule before enabling it (`st2-rule-tester`), and the `squall` CLI used
//! as the `st2` CLI is (`action list|get`, `run ACTION -- words`, re-run,
//! cancel, piping into `head`).

use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use squall_tests::{
    client_with_token, free_port, login, poll, repo_root, squall_binary, write_pack, TestNode,
};
use tokio::process::Command;

/// Runs `squall ARGS` against `node` with `token`. Awaited, not blocking:
/// the node serves from this test's runtime.
async fn squall(node: &TestNode, token: &str, args: &[&str]) -> Result<Output> {
    Ok(Command::new(squall_binary()?)
        .args(["--url", &node.root, "--token", token])
        .args(args)
        .env_remove("SQUALL_API_KEY")
        .env("XDG_CONFIG_HOME", node.dir.path())
        .stdin(Stdio::null())
        .output()
        .await?)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

async fn admin_token(node: &TestNode) -> Result<String> {
    login(&node.root, "admin", &node.admin_password).await
}

/// A node whose API listens where its public URL says.
async fn node_with_public_api(extra: Vec<std::path::PathBuf>) -> Result<TestNode> {
    let port = free_port()?;
    let mut dirs = vec![repo_root().join("packs")];
    dirs.extend(extra);
    TestNode::start_with(dirs, |cfg| {
        cfg.api.listen = format!("127.0.0.1:{port}").parse().expect("address");
    })
    .await
}

/// What the callback script does: saves its token where the test can try
/// it afterwards, then reads its own execution and the action list with it.
const CALLBACK: &str = r#"
import json, os, sys, urllib.request
api = os.environ["ST2_ACTION_API_URL"]
token = os.environ["ST2_ACTION_AUTH_TOKEN"]
with open(sys.argv[1], "w") as f:
    f.write(token)
def get(path):
    req = urllib.request.Request(api + path, headers={"X-Auth-Token": token})
    with urllib.request.urlopen(req) as r:
        return json.load(r)
me = get("/executions/" + os.environ["ST2_ACTION_EXECUTION_ID"])
print(json.dumps({
    "status": me["status"],
    "user": me["context"]["user"],
    "pack": os.environ["ST2_ACTION_PACK_NAME"],
    "actions": len(get("/actions")),
    "api": api,
}))
"#;

#[tokio::test]
async fn shell_actions_call_the_api_back_with_a_token_revoked_when_they_end() -> Result<()> {
    let node = node_with_public_api(vec![]).await?;
    let token = admin_token(&node).await?;
    let work = tempfile::tempdir()?;
    let script = work.path().join("callback.py");
    std::fs::write(&script, CALLBACK)?;
    let saved = work.path().join("token");

    let out = squall(
        &node,
        &token,
        &[
            "--json",
            "run",
            "core.local",
            "--",
            "python3",
            script.to_str().context("path")?,
            saved.to_str().context("path")?,
        ],
    )
    .await?;
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let exec: Value = serde_json::from_str(&stdout(&out))?;
    let reply = &exec["result"]["stdout"];
    assert_eq!(reply["status"], "running", "{exec}");
    assert_eq!(reply["user"], "admin");
    assert_eq!(reply["pack"], "core");
    assert!(reply["actions"].as_u64() > Some(0), "{exec}");
    assert_eq!(reply["api"], format!("{}/api/v1", node.root));

    // The token is nowhere in what Squall shows of the run...
    let action_token = std::fs::read_to_string(&saved)?;
    assert_eq!(action_token.len(), 64);
    let id = exec["id"].as_str().context("id")?;
    let (_, shown) = node
        .get(&format!("executions/{id}?show_secrets=true"))
        .await?;
    assert!(!shown.to_string().contains(&action_token), "{shown}");
    let output = node
        .http
        .get(format!("{}/executions/{id}/output", node.base))
        .send()
        .await?
        .text()
        .await?;
    assert!(!output.contains(&action_token), "{output}");

    // ...and refused once the run has ended.
    let with_action_token = client_with_token(&action_token)?;
    let status = poll(Duration::from_secs(10), || async {
        let r = with_action_token
            .get(format!("{}/actions", node.base))
            .send()
            .await?;
        Ok((r.status().as_u16() == 401).then_some(401))
    })
    .await?;
    assert_eq!(status, 401);
    Ok(())
}

#[tokio::test]
async fn python_actions_started_by_rules_call_the_api_as_the_system_user() -> Result<()> {
    let packs = tempfile::tempdir()?;
    write_pack(
        packs.path(),
        "cb",
        &[
            ("pack.yaml", "name: cb\nversion: 0.1.0\ndescription: calls back\n"),
            (
                "actions/whoami.yaml",
                "name: whoami\nrunner_type: python-script\nentry_point: whoami.py\nenabled: true\n",
            ),
            (
                "actions/whoami.py",
                "import json, os, urllib.request\nfrom st2common.runners.base_action import Action\n\nclass WhoAmI(Action):\n    def run(self):\n        api = os.environ['ST2_API_URL']\n        req = urllib.request.Request(api + '/executions/' + os.environ['ST2_ACTION_EXECUTION_ID'], headers={'X-Auth-Token': os.environ['ST2_AUTH_TOKEN']})\n        with urllib.request.urlopen(req) as r:\n            return json.load(r)['context']['user']\n",
            ),
            (
                "rules/on_hook.yaml",
                "name: on_hook\npack: cb\nenabled: true\ntrigger:\n  type: core.st2.webhook\n  parameters:\n    url: cb\naction:\n  ref: cb.whoami\n",
            ),
        ],
    )?;
    let node = node_with_public_api(vec![packs.path().to_path_buf()]).await?;
    let (status, body) = node.post("webhooks/cb", &json!({"go": true})).await?;
    assert_eq!(status, 202, "{body}");
    let exec = poll(Duration::from_secs(30), || async {
        let list = node.executions().await?;
        Ok(list
            .into_iter()
            .find(|e| e["action"]["ref"] == "cb.whoami")
            .filter(|e| e["status"] == "succeeded" || e["status"] == "failed"))
    })
    .await?;
    assert_eq!(exec["status"], "succeeded", "{exec}");
    assert_eq!(exec["result"]["result"], "stanley", "{exec}");
    Ok(())
}

/// Writes `text` to `dir/name` and returns the path as a string.
fn file(dir: &Path, name: &str, text: &str) -> Result<String> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path.to_str().context("path")?.to_string())
}

/// How many executions and enforcements exist: a rule test adds none.
async fn written(node: &TestNode) -> Result<(usize, usize)> {
    let (_, enforcements) = node.get("ruleenforcements?limit=-1").await?;
    Ok((
        node.executions().await?.len(),
        enforcements.as_array().map_or(0, Vec::len),
    ))
}

#[tokio::test]
async fn a_rule_is_tested_against_payloads_and_trigger_instances_without_effects() -> Result<()> {
    let node = TestNode::start(vec![]).await?;
    let token = admin_token(&node).await?;
    let work = tempfile::tempdir()?;
    let warning = file(
        work.path(),
        "warning.json",
        r#"{"body": {"severity": "warning", "host": "web-3"}}"#,
    )?;
    let critical = file(
        work.path(),
        "critical.yaml",
        "body:\n  severity: CRITICAL\n  host: web-3\n",
    )?;
    let before = written(&node).await?;

    // Not matching: which criterion failed, with both values; exit 2.
    let out = squall(
        &node,
        &token,
        &[
            "rule",
            "test",
            "examples.alert_diagnose",
            "--payload",
            &warning,
        ],
    )
    .await?;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("rule examples.alert_diagnose DOES NOT MATCH"),
        "{text}"
    );
    let failed = text
        .lines()
        .find(|l| l.contains("trigger.body.severity"))
        .context("criterion row")?;
    for part in ["iequals", "\"critical\"", "\"warning\"", "FAILED"] {
        assert!(failed.contains(part), "{failed}");
    }
    assert!(!text.contains("parameters:"), "{text}");

    // Matching: the parameters the execution would get; exit 0.
    let out = squall(
        &node,
        &token,
        &[
            "--json",
            "rule",
            "test",
            "examples.alert_diagnose",
            "--payload",
            &critical,
        ],
    )
    .await?;
    assert!(out.status.success(), "{}", stderr(&out));
    let test: Value = serde_json::from_str(&stdout(&out))?;
    assert_eq!(test["matched"], true, "{test}");
    assert_eq!(test["trigger"]["matched"], true);
    assert_eq!(test["criteria"]["criteria"][0]["key"], "trigger.body.host");
    assert_eq!(test["criteria"]["criteria"][1]["value"], "CRITICAL");
    assert_eq!(test["criteria"]["criteria"][1]["pattern"], "critical");
    assert_eq!(test["action"]["ref"], "examples.diagnose");
    assert_eq!(test["action"]["parameters"]["host"], "web-3");
    assert_eq!(test["action"]["parameters"]["check"], "disk");

    // A stored trigger instance: the rule's own trigger matches, another
    // rule's trigger (another webhook URL) does not.
    let (status, body) = node
        .post(
            "webhooks/alerts",
            &json!({"severity": "critical", "host": "db-1"}),
        )
        .await?;
    assert_eq!(status, 202, "{body}");
    node.rules_idle().await?;
    // The webhook's instance (the execution's actiontrigger may be newer).
    let (_, instances) = node.get("triggerinstances?limit=5").await?;
    let instance = instances
        .as_array()
        .and_then(|l| l.iter().find(|i| i["trigger_type"] == "core.st2.webhook"))
        .and_then(|i| i["id"].as_str())
        .context("instance id")?
        .to_string();
    let out = squall(
        &node,
        &token,
        &[
            "rule",
            "test",
            "examples.alert_diagnose",
            "--trigger-instance",
            &instance,
        ],
    )
    .await?;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("MATCHES") && text.contains("host: db-1"),
        "{text}"
    );
    let out = squall(
        &node,
        &token,
        &[
            "rule",
            "test",
            "examples.sample_rule_with_webhook",
            "--trigger-instance",
            &instance,
        ],
    )
    .await?;
    assert_eq!(out.status.code(), Some(2));
    let text = stdout(&out);
    assert!(text.contains("is not the rule's"), "{text}");

    // A rule file, disabled and in no pack, like st2-rule-tester's.
    let rule = file(
        work.path(),
        "rule.yaml",
        "name: big\nenabled: false\ntrigger:\n  type: core.st2.webhook\n  parameters: {url: big}\ncriteria:\n  trigger.body.n:\n    type: gt\n    pattern: 3\naction:\n  ref: core.local\n  parameters:\n    cmd: \"echo {{ trigger.body.n }}\"\n",
    )?;
    let five = file(work.path(), "five.json", r#"{"body": {"n": 5}}"#)?;
    let out = squall(
        &node,
        &token,
        &[
            "--json",
            "rule",
            "test",
            "--rule-file",
            &rule,
            "--payload",
            &five,
        ],
    )
    .await?;
    assert!(out.status.success(), "{}", stderr(&out));
    let test: Value = serde_json::from_str(&stdout(&out))?;
    assert_eq!(test["rule"], "default.big");
    assert_eq!(test["action"]["parameters"]["cmd"], "echo 5", "{test}");
    assert_eq!(
        test["action"]["parameters"]["timeout"], 60,
        "resolved against the action's runner"
    );

    // The webhook's own execution and enforcement are the only writes.
    node.rules_idle().await?;
    let after = written(&node).await?;
    assert_eq!(after, (before.0 + 1, before.1 + 1));
    Ok(())
}

#[tokio::test]
async fn rule_tests_that_cannot_be_answered_say_why() -> Result<()> {
    let node = TestNode::start(vec![]).await?;
    let token = admin_token(&node).await?;
    let work = tempfile::tempdir()?;
    let payload = file(work.path(), "p.json", r#"{"body": {}}"#)?;
    let broken = file(work.path(), "broken.json", "{\"body\": [unclosed")?;
    let no_trigger = file(
        work.path(),
        "no_trigger.yaml",
        "name: x\naction:\n  ref: core.local\n",
    )?;
    let missing = work.path().join("missing.json");
    let missing = missing.to_str().context("path")?;
    let cases: [(&[&str], &str); 7] = [
        (
            &["rule", "test", "nope.nope", "--payload", &payload],
            "rule nope.nope not found",
        ),
        (
            &[
                "rule",
                "test",
                "examples.alert_diagnose",
                "--payload",
                &payload,
                "--trigger-instance",
                "0123456789abcdef01234567",
            ],
            "not both",
        ),
        (
            &["rule", "test", "examples.alert_diagnose"],
            "--trigger-instance ID or --payload FILE",
        ),
        (
            &[
                "rule",
                "test",
                "examples.alert_diagnose",
                "--payload",
                &broken,
            ],
            "not YAML or JSON",
        ),
        (
            &[
                "rule",
                "test",
                "examples.alert_diagnose",
                "--payload",
                missing,
            ],
            "cannot read",
        ),
        (
            &[
                "rule",
                "test",
                "examples.alert_diagnose",
                "--trigger-instance",
                "0123456789abcdef01234567",
            ],
            "trigger instance 0123456789abcdef01234567 not found",
        ),
        (
            &[
                "rule",
                "test",
                "--rule-file",
                &no_trigger,
                "--payload",
                &payload,
            ],
            "trigger",
        ),
    ];
    for (args, needle) in cases {
        let out = squall(&node, &token, args).await?;
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stdout(&out));
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
    let out = squall(&node, &token, &["rule", "test", "--payload", &payload]).await?;
    assert!(
        stderr(&out).contains("give the rule to test"),
        "{}",
        stderr(&out)
    );

    // The API says the same, and lets observers test (nothing is written).
    for (body, status, needle) in [
        (
            json!({"rule": "examples.alert_diagnose"}),
            400,
            "give trigger_instance",
        ),
        (
            json!({"rule": "examples.alert_diagnose", "payload": {}, "trigger_instance": "x"}),
            400,
            "not both",
        ),
        (json!({"rule": 5, "payload": {}}), 400, "rule's ref or id"),
        (
            json!({"rule": "a.b", "payload": {}, "extra": 1}),
            400,
            "extra",
        ),
    ] {
        let (got, answer) = node.post("rules/test", &body).await?;
        assert_eq!(got, status, "{body}: {answer}");
        assert!(
            answer["faultstring"]
                .as_str()
                .unwrap_or_default()
                .contains(needle),
            "{answer}"
        );
    }
    let observer = node.user("olive", "observer").await?;
    let (got, answer) = node
        .call(
            &observer,
            reqwest::Method::POST,
            "rules/test",
            Some(&json!({"rule": "examples.alert_diagnose", "payload": {"body": {}}})),
        )
        .await?;
    assert_eq!(got, 200, "{answer}");
    assert_eq!(answer["matched"], false);
    assert_eq!(answer["criteria"]["criteria"][0]["value"], Value::Null);
    Ok(())
}

/// A pipe whose reading end is already closed.
fn closed_pipe() -> Result<OwnedFd> {
    let (read, write) = nix::unistd::pipe()?;
    drop(read);
    Ok(write)
}

#[tokio::test]
async fn the_cli_works_as_stackstorms_does() -> Result<()> {
    let node = TestNode::start(vec![]).await?;
    let token = admin_token(&node).await?;

    // `squall execution list | head`: whoever reads has gone; no panic.
    // (Not `output()`, which would pipe stdout again.)
    let out = Command::new(squall_binary()?)
        .args(["--url", &node.root, "--token", &token, "execution", "list"])
        .stdout(Stdio::from(closed_pipe()?))
        .stderr(Stdio::piped())
        .spawn()?
        .wait_with_output()
        .await?;
    assert_eq!(out.status.code(), Some(141), "{}", stderr(&out));
    assert_eq!(stderr(&out), "");

    // `action list --pack`, `action get` with its parameters as a table.
    let out = squall(&node, &token, &["action", "list", "--pack", "examples"]).await?;
    let text = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(text.contains("examples.diagnose"), "{text}");
    assert!(!text.contains("core.local"), "{text}");
    let out = squall(&node, &token, &["action", "get", "examples.diagnose"]).await?;
    let text = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(text.contains("runner_type: local-shell-script"), "{text}");
    let rows: Vec<&str> = text.lines().skip_while(|l| *l != "parameters:").collect();
    assert!(
        rows[1].starts_with("name") && rows[1].contains("default"),
        "{text}"
    );
    assert!(
        rows[3].starts_with("host") && rows[3].contains("true"),
        "required first: {text}"
    );
    assert!(
        rows[4].starts_with("check") && rows[4].contains("disk"),
        "{text}"
    );
    let out = squall(&node, &token, &["action", "get", "examples.nope"]).await?;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));

    // `run ACTION -- words`: the words are the command.
    let out = squall(
        &node,
        &token,
        &["--json", "run", "core.local", "--", "echo", "hello", "a=b"],
    )
    .await?;
    assert!(out.status.success(), "{}", stderr(&out));
    let first: Value = serde_json::from_str(&stdout(&out))?;
    assert_eq!(first["parameters"]["cmd"], "echo hello a=b");
    assert_eq!(first["result"]["stdout"], "hello a=b");

    // `execution re-run` waits and prints the result; `--async` does not.
    let id = first["id"].as_str().context("id")?;
    let out = squall(&node, &token, &["execution", "re-run", id]).await?;
    let text = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(text.contains("status: succeeded"), "{text}");
    assert!(text.contains("stdout: hello a=b"), "{text}");
    let out = squall(&node, &token, &["execution", "re-run", "--async", id]).await?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("requested"), "{}", stdout(&out));

    // `execution cancel` answers in one line.
    let (status, started) = node
        .post(
            "executions",
            &json!({"action": "core.local", "parameters": {"cmd": "sleep 30"}}),
        )
        .await?;
    assert_eq!(status, 201, "{started}");
    let long = started["id"].as_str().context("id")?.to_string();
    poll(Duration::from_secs(30), || async {
        let (_, e) = node.get(&format!("executions/{long}")).await?;
        Ok((e["status"] == "running").then_some(()))
    })
    .await?;
    let out = squall(&node, &token, &["execution", "cancel", &long]).await?;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.starts_with(&format!("execution {long} ")), "{text}");
    let canceled = node.finished(&long).await?;
    assert_eq!(canceled["status"], "canceled");
    Ok(())
}

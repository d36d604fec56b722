//! The official StackStorm CLI (`st2` from PyPI st2client 3.9) against a
//! Squall node: a migrating team's muscle memory keeps working.

use anyhow::{Context, Result};
use serde_json::Value;
use squall_tests::{st2, st2_json, TestNode};

/// The execution id `st2 run --async` prints.
fn async_id(out: &str) -> Result<String> {
    out.split_once("st2 execution get ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .map(str::to_string)
        .with_context(|| format!("no execution id in: {out}"))
}

#[tokio::test]
async fn the_st2_cli_logs_in_runs_actions_and_uses_the_datastore() -> Result<()> {
    let node = TestNode::start(vec![]).await?;
    let home = tempfile::tempdir()?;
    let home = home.path();

    // Not logged in: refused, with the reason.
    let (ok, out, err) = st2(&node, home, &["action", "list"]).await?;
    assert!(
        format!("{out}{err}").contains("Unauthorized"),
        "{ok} {out}{err}"
    );

    let (ok, out, err) = st2(&node, home, &["login", "admin", "-p", &node.admin_password]).await?;
    assert!(ok, "{out}{err}");
    assert!(out.contains("Logged in as admin"), "{out}");

    let actions = st2_json(&node, home, &["action", "list"]).await?;
    let refs: Vec<&str> = actions
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["ref"].as_str())
        .collect();
    assert!(
        refs.contains(&"core.local") && refs.contains(&"examples.diagnose"),
        "{refs:?}"
    );
    let runners = st2_json(&node, home, &["runner", "list"]).await?;
    assert!(runners.to_string().contains("local-shell-script"));
    let rules = st2_json(&node, home, &["rule", "list"]).await?;
    assert!(
        rules.to_string().contains("examples.alert_diagnose"),
        "{rules}"
    );

    // `st2 run` waits for the result and shows StackStorm's shape.
    let run = st2_json(&node, home, &["run", "core.local", "cmd=echo compat"]).await?;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["result"]["stdout"], "compat");
    assert_eq!(run["context"]["user"], "admin");
    let id = run["id"].as_str().context("execution id")?.to_string();
    let got = st2_json(&node, home, &["execution", "get", &id]).await?;
    assert_eq!(got["id"], id.as_str());
    let listed = st2_json(&node, home, &["execution", "list"]).await?;
    assert!(listed.to_string().contains(&id), "{listed}");
    // st2 exits non-zero when the action failed; its JSON is still printed.
    let (_, out, _) = st2(&node, home, &["run", "core.local", "cmd=exit 4", "-j"]).await?;
    let failed: Value = serde_json::from_str(&out).with_context(|| out.clone())?;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["result"]["return_code"], 4);

    let rerun = st2_json(&node, home, &["execution", "re-run", &id]).await?;
    let rerun_id = rerun["id"].as_str().context("re-run id")?;
    assert_ne!(rerun_id, id);
    let (_, record) = node.get(&format!("executions/{rerun_id}")).await?;
    assert_eq!(record["context"]["re_run"]["ref"], id.as_str(), "{record}");
    let (ok, out, err) = st2(&node, home, &["trigger-instance", "list"]).await?;
    assert!(ok, "{out}{err}");
    let (ok, out, err) = st2(&node, home, &["rule-enforcement", "list"]).await?;
    assert!(ok, "{out}{err}");

    // `st2 rule disable` / `enable` go through GET + PUT.
    let (ok, out, err) = st2(&node, home, &["rule", "disable", "examples.alert_diagnose"]).await?;
    assert!(ok, "{out}{err}");
    squall_tests::poll(std::time::Duration::from_secs(10), || async {
        let (_, r) = node.get("rules/examples.alert_diagnose").await?;
        Ok((r["enabled"] == false).then_some(()))
    })
    .await?;
    let (ok, out, err) = st2(&node, home, &["rule", "enable", "examples.alert_diagnose"]).await?;
    assert!(ok, "{out}{err}");

    // Content from files, as `st2 action create` / `st2 rule create` send it.
    let action_file = home.join("hello.yaml");
    std::fs::write(
        &action_file,
        "name: hello\npack: default\nrunner_type: local-shell-cmd\nparameters:\n  cmd:\n    default: echo hello from st2\n",
    )?;
    let created = st2_json(
        &node,
        home,
        &["action", "create", action_file.to_str().unwrap()],
    )
    .await?;
    assert_eq!(created["ref"], "default.hello", "{created}");
    let rule_file = home.join("rule.yaml");
    std::fs::write(
        &rule_file,
        "name: st2_rule\npack: default\ntrigger:\n  type: core.st2.webhook\n  parameters:\n    url: st2hook\naction:\n  ref: default.hello\n",
    )?;
    let created = st2_json(
        &node,
        home,
        &["rule", "create", rule_file.to_str().unwrap()],
    )
    .await?;
    assert_eq!(created["ref"], "default.st2_rule", "{created}");
    let rules = st2_json(&node, home, &["rule", "list", "-p", "default"]).await?;
    assert_eq!(rules[0]["ref"], "default.st2_rule", "{rules}");
    let triggers = st2_json(&node, home, &["trigger", "list"]).await?;
    assert!(
        triggers.to_string().contains("core.st2.webhook"),
        "{triggers}"
    );
    let (ok, out, err) = st2(&node, home, &["policy-type", "list"]).await?;
    assert!(ok && out.contains("concurrency.attr"), "{out}{err}");
    let (ok, out, err) = st2(&node, home, &["policy", "list"]).await?;
    assert!(ok, "{out}{err}");

    // An inquiry answered with `st2 inquiry respond -r`.
    let (_, out, _) = st2(&node, home, &["run", "core.ask", "--async"]).await?;
    let asked = async_id(&out)?;
    squall_tests::poll(std::time::Duration::from_secs(30), || async {
        let (_, e) = node.get(&format!("executions/{asked}")).await?;
        Ok((e["status"] == "pending").then_some(()))
    })
    .await?;
    let (ok, out, err) = st2(&node, home, &["inquiry", "list"]).await?;
    assert!(ok && out.contains(&asked), "{out}{err}");
    let (ok, out, err) = st2(
        &node,
        home,
        &["inquiry", "respond", "-r", r#"{"continue": true}"#, &asked],
    )
    .await?;
    assert!(ok, "{out}{err}");
    assert_eq!(node.finished(&asked).await?["status"], "succeeded");

    // A workflow waiting on a person is paused; `st2 execution pause` and
    // `resume` drive it; the answer finishes it.
    let (_, out, _) = st2(&node, home, &["run", "examples.orquesta-ask", "--async"]).await?;
    let flow = async_id(&out)?;
    squall_tests::poll(std::time::Duration::from_secs(30), || async {
        let (_, e) = node.get(&format!("executions/{flow}")).await?;
        Ok((e["status"] == "paused").then_some(()))
    })
    .await?;
    let (ok, out, err) = st2(&node, home, &["execution", "pause", &flow]).await?;
    assert!(ok && out.contains("paused"), "{out}{err}");
    let (ok, out, err) = st2(&node, home, &["execution", "resume", &flow]).await?;
    assert!(ok && out.contains("resuming"), "{out}{err}");
    let (_, open) = node.get("inquiries").await?;
    let inquiry = open[0]["id"]
        .as_str()
        .context("the workflow's inquiry")?
        .to_string();
    let (ok, out, err) = st2(
        &node,
        home,
        &[
            "inquiry",
            "respond",
            "-r",
            r#"{"approved": false}"#,
            &inquiry,
        ],
    )
    .await?;
    assert!(ok, "{out}{err}");
    let done = node.finished(&flow).await?;
    assert_eq!(
        done["result"]["output"]["outcome"], "left web-1 alone",
        "{done}"
    );

    // `st2 execution tail` follows live output over the event stream. The
    // action prints only once the CLI is connected (live output is not
    // replayed): it waits for a file the test creates then.
    let go = home.join("go");
    let cmd = format!(
        "cmd=while [ ! -f {} ]; do sleep 0.05; done; echo tailed",
        go.display()
    );
    let (_, out, _) = st2(&node, home, &["run", "core.local", &cmd, "--async"]).await?;
    let tailed = async_id(&out)?;
    squall_tests::poll(std::time::Duration::from_secs(30), || async {
        let (_, e) = node.get(&format!("executions/{tailed}")).await?;
        Ok((e["status"] == "running").then_some(()))
    })
    .await?;
    let tail = {
        let (node, home, tailed) = (&node, home, tailed.clone());
        async move { st2(node, home, &["execution", "tail", &tailed]).await }
    };
    let connected = async {
        squall_tests::poll(std::time::Duration::from_secs(30), || async {
            let text = reqwest::get(format!("{}/metrics", node.root))
                .await?
                .text()
                .await?;
            Ok(text
                .lines()
                .any(|l| l.starts_with("squall_stream_clients ") && !l.ends_with(" 0"))
                .then_some(()))
        })
        .await?;
        std::fs::write(&go, "")?;
        anyhow::Ok(())
    };
    let ((ok, out, err), ()) = tokio::try_join!(tail, connected)?;
    assert!(ok, "{out}{err}");
    assert!(out.contains("tailed"), "{out}");
    assert!(out.contains("status=succeeded"), "{out}");

    // `st2 execution cancel` stops a running action.
    let (_, out, _) = st2(
        &node,
        home,
        &["run", "core.local", "cmd=sleep 300", "--async"],
    )
    .await?;
    let sleeper = async_id(&out)?;
    squall_tests::poll(std::time::Duration::from_secs(30), || async {
        let (_, e) = node.get(&format!("executions/{sleeper}")).await?;
        Ok((e["status"] == "running").then_some(()))
    })
    .await?;
    let (ok, out, err) = st2(&node, home, &["execution", "cancel", &sleeper]).await?;
    assert!(ok, "{out}{err}");
    assert_eq!(node.finished(&sleeper).await?["status"], "canceled");

    // The datastore, plain and encrypted.
    let (ok, out, err) = st2(&node, home, &["key", "set", "region", "eu-west-1"]).await?;
    assert!(ok, "{out}{err}");
    assert_eq!(
        st2_json(&node, home, &["key", "get", "region"]).await?["value"],
        "eu-west-1"
    );
    let (ok, out, err) = st2(
        &node,
        home,
        &["key", "set", "api_token", "t0ps3cret", "--encrypt"],
    )
    .await?;
    assert!(ok, "{out}{err}");
    let sealed = st2_json(&node, home, &["key", "get", "api_token"]).await?;
    assert_eq!(sealed["encrypted"], true);
    assert_ne!(sealed["value"], "t0ps3cret");
    let opened = st2_json(&node, home, &["key", "get", "api_token", "--decrypt"]).await?;
    assert_eq!(opened["value"], "t0ps3cret");
    let keys = st2_json(&node, home, &["key", "list"]).await?;
    assert_eq!(keys.as_array().map(Vec::len), Some(2), "{keys}");
    let (ok, out, err) = st2(&node, home, &["key", "delete", "region"]).await?;
    assert!(ok, "{out}{err}");
    let (_, after) = node.get("keys/region").await?;
    assert!(after["faultstring"].as_str().is_some(), "deleted: {after}");
    Ok(())
}

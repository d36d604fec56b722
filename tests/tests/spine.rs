//! The spine end to end: webhook → rule → execution → runner, each step
//! persisted in JetStream, against a real nats-server.

use std::time::Duration;

use anyhow::Result;
use serde_json::{json, Value};
use squall_actors::bus::Bus;
use squall_tests::{poll, write_pack, TestNode};

const PACK: &str = "
ref: ops
name: ops
description: Test pack
version: 0.1.0
author: tests
";

fn rule(name: &str, url: &str, criteria: &str, cmd: &str) -> String {
    format!(
        "name: {name}
pack: ops
enabled: true
trigger:
  type: core.st2.webhook
  parameters:
    url: {url}
criteria:
{criteria}
action:
  ref: core.local
  parameters:
    cmd: {cmd}
"
    )
}

async fn node_with(rules: &[(&str, String)]) -> Result<(TestNode, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let mut files: Vec<(String, String)> = vec![("pack.yaml".into(), PACK.into())];
    for (name, body) in rules {
        files.push((format!("rules/{name}.yaml"), body.clone()));
    }
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    write_pack(dir.path(), "ops", &refs)?;
    let node = TestNode::start(vec![dir.path().to_path_buf()]).await?;
    Ok((node, dir))
}

async fn only_execution(node: &TestNode) -> Result<Value> {
    let id = poll(Duration::from_secs(20), || async {
        let list = node.executions().await?;
        Ok(list
            .first()
            .and_then(|e| e["id"].as_str().map(str::to_string)))
    })
    .await?;
    node.finished(&id).await
}

#[tokio::test]
async fn webhook_rule_with_criteria_runs_local_command() -> Result<()> {
    let (node, _dir) = node_with(&[(
        "greet",
        rule(
            "greet",
            "hello",
            "  trigger.body.name:\n    type: equals\n    pattern: squall",
            "'echo hello {{ trigger.body.name }}'",
        ),
    )])
    .await?;
    let (status, body) = node
        .post("webhooks/hello", &json!({"name": "squall"}))
        .await?;
    assert_eq!(status, 202);
    assert_eq!(
        body,
        json!({"name": "squall"}),
        "StackStorm echoes the body"
    );

    let exec = only_execution(&node).await?;
    assert_eq!(exec["status"], "succeeded", "{exec}");
    assert_eq!(exec["result"]["stdout"], "hello squall");
    assert_eq!(exec["result"]["return_code"], 0);
    assert_eq!(exec["action"]["ref"], "core.local");
    assert_eq!(exec["rule"]["ref"], "ops.greet");
    let statuses: Vec<&str> = exec["log"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["status"].as_str())
        .collect();
    assert_eq!(statuses, ["requested", "scheduled", "running", "succeeded"]);

    // The trigger instance is stored and readable by id.
    let ti = exec["trigger_instance"]["id"].as_str().unwrap();
    let (status, instance) = node.get(&format!("triggerinstances/{ti}")).await?;
    assert_eq!(status, 200);
    assert_eq!(instance["payload"]["body"]["name"], "squall");
    assert_eq!(instance["trigger_type"], "core.st2.webhook");
    Ok(())
}

#[tokio::test]
async fn criteria_that_do_not_match_start_nothing() -> Result<()> {
    let (node, _dir) = node_with(&[(
        "critical_only",
        rule(
            "critical_only",
            "alerts",
            "  trigger.body.severity:\n    type: iequals\n    pattern: critical",
            "'echo ran'",
        ),
    )])
    .await?;
    for severity in ["warning", "info", "minor"] {
        let (status, _) = node
            .post("webhooks/alerts", &json!({"severity": severity}))
            .await?;
        assert_eq!(status, 202);
    }
    node.rules_idle().await?;
    assert!(node.executions().await?.is_empty());

    // The same rule does fire for a match, so the silence above is real.
    node.post("webhooks/alerts", &json!({"severity": "CRITICAL"}))
        .await?;
    let exec = only_execution(&node).await?;
    assert_eq!(exec["status"], "succeeded");
    assert_eq!(node.executions().await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn non_zero_exit_fails_the_execution() -> Result<()> {
    let node = TestNode::start(vec![]).await?;
    let (status, created) = node
        .post(
            "executions",
            &json!({"action": "core.local", "parameters": {"cmd": "echo oops >&2; exit 3"}}),
        )
        .await?;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["status"], "requested", "never finished at creation");
    let exec = node.finished(created["id"].as_str().unwrap()).await?;
    assert_eq!(exec["status"], "failed");
    assert_eq!(exec["result"]["return_code"], 3);
    assert_eq!(exec["result"]["stderr"], "oops");
    assert_eq!(exec["result"]["succeeded"], false);
    Ok(())
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() -> Result<()> {
    let node = TestNode::start(vec![]).await?;
    let pids = tempfile::tempdir()?;
    let pidfile = pids.path().join("child.pid");
    let cmd = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
    let (_, created) = node
        .post(
            "executions",
            &json!({"action": "core.local", "parameters": {"cmd": cmd, "timeout": 1}}),
        )
        .await?;
    let exec = node.finished(created["id"].as_str().unwrap()).await?;
    assert_eq!(exec["status"], "timeout", "{exec}");
    assert_eq!(exec["result"]["return_code"], -9);
    let pid: i32 = std::fs::read_to_string(&pidfile)?.trim().parse()?;
    poll(Duration::from_secs(10), || async move {
        Ok((!std::path::Path::new(&format!("/proc/{pid}")).exists()).then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn cancel_stops_a_running_action_and_its_children() -> Result<()> {
    let node = TestNode::start(vec![]).await?;
    let pids = tempfile::tempdir()?;
    let pidfile = pids.path().join("child.pid");
    let cmd = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
    let (_, created) = node
        .post(
            "executions",
            &json!({"action": "core.local", "parameters": {"cmd": cmd}}),
        )
        .await?;
    let id = created["id"].as_str().unwrap_or_default().to_string();
    poll(Duration::from_secs(30), || async {
        let (_, e) = node.get(&format!("executions/{id}")).await?;
        Ok((e["status"] == "running" && pidfile.exists()).then_some(()))
    })
    .await?;
    let (status, canceling) = node
        .call(
            &node.http,
            reqwest::Method::DELETE,
            &format!("executions/{id}"),
            None,
        )
        .await?;
    assert_eq!(status, 200, "{canceling}");
    assert_eq!(canceling["status"], "canceling");
    let exec = node.finished(&id).await?;
    assert_eq!(exec["status"], "canceled", "{exec}");
    assert_eq!(exec["result"]["error"], "Action was canceled");
    let statuses: Vec<&str> = exec["log"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["status"].as_str())
        .collect();
    assert_eq!(
        statuses,
        ["requested", "scheduled", "running", "canceling", "canceled"]
    );
    let pid: i32 = std::fs::read_to_string(&pidfile)?.trim().parse()?;
    poll(Duration::from_secs(10), || async move {
        Ok((!std::path::Path::new(&format!("/proc/{pid}")).exists()).then_some(()))
    })
    .await?;

    // Finished executions cannot be canceled; unknown ones are not found.
    let (status, body) = node
        .call(
            &node.http,
            reqwest::Method::DELETE,
            &format!("executions/{id}"),
            None,
        )
        .await?;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["faultstring"]
            .as_str()
            .unwrap_or_default()
            .contains("already canceled"),
        "{body}"
    );
    let (status, _) = node
        .call(
            &node.http,
            reqwest::Method::DELETE,
            "executions/0123456789abcdef01234567",
            None,
        )
        .await?;
    assert_eq!(status, 404);
    Ok(())
}

#[tokio::test]
async fn a_redelivered_trigger_does_not_double_the_action() -> Result<()> {
    let out = tempfile::tempdir()?;
    let marker = out.path().join("runs.txt");
    let (node, _dir) = node_with(&[(
        "once",
        rule(
            "once",
            "once",
            "  trigger.body.go:\n    type: exists",
            &format!("'echo run >> {}'", marker.display()),
        ),
    )])
    .await?;
    node.post("webhooks/once", &json!({"go": 1})).await?;
    let first = only_execution(&node).await?;
    assert_eq!(first["status"], "succeeded");

    // Deliver the very same trigger instance again, as JetStream does after
    // a lost ack: publish it raw, without the Nats-Msg-Id that would let
    // the stream drop it, so the rules engine really sees it twice.
    let bus = node.node.as_ref().unwrap().bus.clone();
    let ti = first["trigger_instance"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (instance, _) = bus.trigger_instance(&ti).await?.expect("stored instance");
    let subject = squall_actors::bus::trigger_subject(bus.partition_of(&ti), &ti);
    bus.js
        .publish(subject, serde_json::to_vec(&instance)?.into())
        .await?
        .await?;
    node.rules_idle().await?;

    let execs = node.executions().await?;
    assert_eq!(
        execs.len(),
        1,
        "one execution for one trigger instance and rule"
    );
    let runs = std::fs::read_to_string(&marker)?;
    assert_eq!(runs.lines().count(), 1, "the action ran once");
    Ok(())
}

#[tokio::test]
async fn a_broken_pack_reports_every_error_and_registers_nothing() -> Result<()> {
    let (node, dir) = node_with(&[(
        "good",
        rule(
            "good",
            "good",
            "  trigger.body.x:\n    type: exists",
            "'true'",
        ),
    )])
    .await?;
    let (_, before) = node.get("rules/ops.good").await?;
    assert_eq!(before["ref"], "ops.good");

    // Break the pack three ways in three files.
    write_pack(
        dir.path(),
        "ops",
        &[
            (
                "rules/good.yaml",
                "name: good\npack: ops\nenabled: true\ntrigger: [unclosed\n",
            ),
            (
                "rules/bad_op.yaml",
                &rule(
                    "bad_op",
                    "x",
                    "  trigger.body.x:\n    type: roughly",
                    "'true'",
                ),
            ),
            ("actions/bad.yaml", "name: bad\nrunner_type: teleport\n"),
        ],
    )?;
    let (status, err) = node
        .post("packs/register", &json!({"packs": ["ops"]}))
        .await?;
    assert_eq!(status, 400, "{err}");
    let msg = err["faultstring"].as_str().unwrap_or_default();
    for needle in [
        "rules/good.yaml",
        "rules/bad_op.yaml",
        "roughly",
        "actions/bad.yaml",
        "teleport",
    ] {
        assert!(msg.contains(needle), "missing {needle:?} in: {msg}");
    }

    // Nothing changed: the old rule is still there and nothing new appeared.
    let (_, after) = node.get("rules/ops.good").await?;
    assert_eq!(after, before);
    let (status, _) = node.get("rules/ops.bad_op").await?;
    assert_eq!(status, 404);
    let (status, _) = node.get("actions/ops.bad").await?;
    assert_eq!(status, 404);
    Ok(())
}

#[tokio::test]
async fn interval_timer_fires_its_rule_once_per_tick() -> Result<()> {
    let timer_rule = "name: tick
pack: ops
enabled: true
trigger:
  type: core.st2.IntervalTimer
  parameters:
    unit: seconds
    delta: 1
action:
  ref: core.noop
";
    let (node, _dir) = node_with(&[("tick", timer_rule.to_string())]).await?;
    let execs = poll(Duration::from_secs(20), || async {
        let list = node.executions().await?;
        Ok((list.len() >= 3).then_some(list))
    })
    .await?;
    let mut ticks: Vec<String> = execs
        .iter()
        .map(|e| {
            e["trigger_instance"]["occurrence_time"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    let n = ticks.len();
    ticks.sort();
    ticks.dedup();
    assert_eq!(ticks.len(), n, "one execution per tick");
    for t in &ticks {
        assert!(t.contains(".000000Z"), "ticks fall on whole seconds: {t}");
    }
    let ti = execs[0]["trigger_instance"]["id"].as_str().unwrap();
    let (_, instance) = node.get(&format!("triggerinstances/{ti}")).await?;
    assert_eq!(instance["trigger_type"], "core.st2.IntervalTimer");
    assert!(instance["payload"]["executed_at"].is_string());
    Ok(())
}

#[tokio::test]
async fn cron_and_date_timers_fire_on_their_schedule() -> Result<()> {
    let cron_rule = "name: cron
pack: ops
enabled: true
trigger:
  type: core.st2.CronTimer
  parameters:
    second: '*/2'
    timezone: Europe/Paris
action:
  ref: core.noop
";
    let date = (chrono::Utc::now() + chrono::Duration::seconds(8)).format("%Y-%m-%d %H:%M:%S");
    let date_rule = format!(
        "name: once
pack: ops
enabled: true
trigger:
  type: core.st2.DateTimer
  parameters:
    date: '{date}'
action:
  ref: core.noop
"
    );
    let (node, _dir) = node_with(&[("cron", cron_rule.to_string()), ("once", date_rule)]).await?;
    let times = |rule: &'static str| {
        let node = &node;
        async move {
            let (_, list) = node
                .get(&format!("executions?limit=-1&rule=ops.{rule}"))
                .await?;
            let mut times: Vec<chrono::DateTime<chrono::Utc>> = list
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| {
                    squall_domain::time::parse(e["trigger_instance"]["occurrence_time"].as_str()?)
                })
                .collect();
            times.sort();
            anyhow::Ok(times)
        }
    };
    let fired_at = poll(Duration::from_secs(30), || async {
        Ok(times("once").await?.first().copied())
    })
    .await?;
    assert_eq!(
        fired_at.format("%Y-%m-%d %H:%M:%S").to_string(),
        date.to_string()
    );
    // Two more cron ticks after the date: it fired once and is done.
    let cron = poll(Duration::from_secs(20), || async {
        let cron = times("cron").await?;
        Ok((cron.iter().filter(|t| **t > fired_at).count() >= 2).then_some(cron))
    })
    .await?;
    assert_eq!(times("once").await?.len(), 1, "a DateTimer fires once");
    for pair in cron.windows(2) {
        assert_eq!((pair[1] - pair[0]).num_milliseconds(), 2000, "{cron:?}");
    }
    for t in &cron {
        assert_eq!(t.timestamp_subsec_millis(), 0, "{t}");
        assert_eq!(t.timestamp() % 2, 0, "even seconds: {t}");
    }
    let (_, e) = node.get("executions?limit=1&rule=ops.cron").await?;
    let ti = e[0]["trigger_instance"]["id"].as_str().unwrap_or_default();
    let (_, instance) = node.get(&format!("triggerinstances/{ti}")).await?;
    assert_eq!(instance["trigger_type"], "core.st2.CronTimer", "{instance}");
    Ok(())
}

/// Rewrites execution `id` as waiting in `status`, claimed by node `ghost`
/// (which runs nothing).
async fn claim_for_ghost(bus: &Bus, id: &str, status: &str) -> Result<()> {
    let (mut record, rev) = bus.execution(id).await?.expect("stored execution");
    record.transition(
        serde_json::from_value(json!(status))?,
        squall_domain::time::now(),
    );
    record.end_timestamp = None;
    record.result = json!({});
    record.node = Some("ghost".into());
    bus.update_execution(&record, rev)
        .await?
        .expect("no concurrent change");
    Ok(())
}

/// Delivers the request of execution `id` again as a first delivery, as
/// JetStream does when a server restart forgot the earlier one (without the
/// `Nats-Msg-Id` that would let the stream drop it).
async fn request_again(bus: &Bus, id: &str) -> Result<()> {
    let request = squall_actors::store::ExecutionRequest {
        v: 1,
        execution_id: id.to_string(),
        created: None,
    };
    bus.js
        .publish(
            squall_actors::bus::execution_subject("default"),
            serde_json::to_vec(&request)?.into(),
        )
        .await?
        .await?;
    Ok(())
}

/// Execution `id` claimed by a runner that is gone, and its request again.
async fn claim_by_a_lost_runner(node: &TestNode, id: &str, status: &str) -> Result<()> {
    let bus = &node.node.as_ref().unwrap().bus;
    claim_for_ghost(bus, id, status).await?;
    request_again(bus, id).await
}

#[tokio::test]
async fn a_run_whose_runner_is_lost_ends_or_runs_again_as_its_action_says() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let marker = dir.path().join("runs");
    let action = |name: &str, tags: &str| {
        format!(
            "name: {name}\nrunner_type: local-shell-cmd\nparameters:\n  cmd:\n    type: string\n    default: 'echo {name} >> {}'\n{tags}",
            marker.display()
        )
    };
    let once = action("once", "");
    let again = action(
        "again",
        "tags:\n  - name: squall.runner_loss\n    value: rerun\n",
    );
    let unsure = action(
        "unsure",
        "tags:\n  - name: squall.runner_loss\n    value: retry\n",
    );
    write_pack(
        dir.path(),
        "ops",
        &[
            ("pack.yaml", PACK),
            ("actions/once.yaml", &once),
            ("actions/again.yaml", &again),
            ("actions/unsure.yaml", &unsure),
        ],
    )?;
    let node = TestNode::start(vec![dir.path().to_path_buf()]).await?;
    let run = |action: &'static str| {
        let node = &node;
        async move {
            let (status, e) = node.post("executions", &json!({"action": action})).await?;
            anyhow::ensure!(status == 201, "{status} {e}");
            let id = e["id"].as_str().unwrap().to_string();
            anyhow::ensure!(node.finished(&id).await?["status"] == "succeeded");
            anyhow::Ok(id)
        }
    };
    let runs = |name: &str| {
        std::fs::read_to_string(&marker)
            .unwrap_or_default()
            .lines()
            .filter(|l| *l == name)
            .count()
    };
    let settled = |id: String, status: &'static str| {
        let node = &node;
        async move {
            poll(Duration::from_secs(30), || async {
                let (_, e) = node.get(&format!("executions/{id}")).await?;
                Ok((e["status"] == status).then_some(e))
            })
            .await
        }
    };

    // A policy Squall does not know is refused, naming the tag and value.
    let (status, e) = node
        .post("executions", &json!({"action": "ops.unsure"}))
        .await?;
    assert_eq!(status, 400, "{e}");
    let message = e["faultstring"].as_str().unwrap_or_default();
    assert!(
        message.contains("squall.runner_loss") && message.contains("retry"),
        "{e}"
    );

    // Running on a lost runner, by default: abandoned, not run again.
    let id = run("ops.once").await?;
    claim_by_a_lost_runner(&node, &id, "running").await?;
    let e = settled(id, "abandoned").await?;
    let error = e["result"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("node ghost"), "{e}");
    assert_eq!(runs("once"), 1);

    // Tagged `rerun`: it runs again, and the record names the lost runner.
    let id = run("ops.again").await?;
    claim_by_a_lost_runner(&node, &id, "running").await?;
    let e = settled(id, "succeeded").await?;
    assert_eq!(e["context"]["runner_losses"], json!(["ghost"]), "{e}");
    assert_eq!(e["node"], "test-node", "{e}");
    assert_eq!(runs("again"), 2);

    // Claimed but not started on a lost runner: nothing ran, so it runs.
    let id = run("ops.once").await?;
    claim_by_a_lost_runner(&node, &id, "scheduled").await?;
    settled(id, "succeeded").await?;
    assert_eq!(runs("once"), 3);

    // Being canceled when its runner was lost: canceled.
    let id = run("ops.once").await?;
    claim_by_a_lost_runner(&node, &id, "canceling").await?;
    let e = settled(id, "canceled").await?;
    assert!(
        e["result"]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("node ghost"),
        "{e}"
    );
    assert_eq!(runs("once"), 4);
    Ok(())
}

#[tokio::test]
async fn a_repeated_request_leaves_a_live_run_alone() -> Result<()> {
    let (node, _dir) = node_with(&[]).await?;
    let (status, e) = node
        .post(
            "executions",
            &json!({"action": "core.local", "parameters": {"cmd": "sleep 2; echo done"}}),
        )
        .await?;
    assert_eq!(status, 201, "{e}");
    let id = e["id"].as_str().unwrap().to_string();
    poll(Duration::from_secs(20), || async {
        let (_, e) = node.get(&format!("executions/{id}")).await?;
        Ok((e["status"] == "running").then_some(()))
    })
    .await?;
    // The node answers for the runs it has; others ask before they call
    // a run lost.
    let bus = node.node.as_ref().unwrap().bus.clone();
    let ask = |id: String| {
        let client = bus.client.clone();
        async move {
            let subject = squall_actors::bus::running_subject(&id, "test-node");
            let answer = client.request(subject, "".into()).await?;
            anyhow::Ok(answer.payload.as_ref() == squall_actors::bus::STILL_RUNNING)
        }
    };
    assert!(ask(id.clone()).await?, "the node says it runs {id}");
    assert!(!ask("not-a-run".into()).await?);
    // The same request again while it runs, as after a NATS restart.
    request_again(&bus, &id).await?;
    let e = node.finished(&id).await?;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(e["result"]["stdout"], "done", "{e}");
    assert!(!ask(id.clone()).await?, "a finished run is nobody's");
    Ok(())
}

#[tokio::test]
async fn the_sweep_requests_again_what_no_runner_works_on() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let marker = dir.path().join("runs");
    let action = format!(
        "name: once\nrunner_type: local-shell-cmd\nparameters:\n  cmd:\n    type: string\n    default: 'echo once >> {}'\n",
        marker.display()
    );
    write_pack(
        dir.path(),
        "ops",
        &[("pack.yaml", PACK), ("actions/once.yaml", &action)],
    )?;
    let node = TestNode::start(vec![dir.path().to_path_buf()]).await?;
    let engine = node.node.as_ref().unwrap().engine();
    let (bus, runners) = (engine.shared.bus.clone(), engine.shared.runners.clone());
    let history = engine
        .shared
        .history
        .clone()
        .expect("an API node's history");
    let runs = || {
        std::fs::read_to_string(&marker)
            .unwrap_or_default()
            .lines()
            .count()
    };
    let run = |action: &'static str, cmd: Option<&'static str>| {
        let node = &node;
        async move {
            let mut body = json!({"action": action});
            if let Some(cmd) = cmd {
                body["parameters"] = json!({"cmd": cmd});
            }
            let (status, e) = node.post("executions", &body).await?;
            anyhow::ensure!(status == 201, "{status} {e}");
            anyhow::Ok(e["id"].as_str().unwrap().to_string())
        }
    };
    let indexed = |id: String, status: &'static str| {
        let history = history.clone();
        poll(Duration::from_secs(10), move || {
            let history = history.clone();
            let id = id.clone();
            async move {
                let filter = squall_actors::history::Filter {
                    id: Some(id),
                    status: Some(serde_json::from_value(json!(status))?),
                    ..Default::default()
                };
                Ok((history.read().page(&filter, true, 0, 1).total == 1).then_some(()))
            }
        })
    };
    let later = squall_domain::time::now() + chrono::Duration::minutes(3);

    // Finished records rewritten as waiting, with no request left on the
    // queue: a lost final write, a lost request.
    let lost = run("ops.once", None).await?;
    node.finished(&lost).await?;
    claim_for_ghost(&bus, &lost, "running").await?;
    let forgotten = run("ops.once", None).await?;
    node.finished(&forgotten).await?;
    claim_for_ghost(&bus, &forgotten, "requested").await?;
    indexed(lost.clone(), "running").await?;
    indexed(forgotten.clone(), "requested").await?;
    assert_eq!(runs(), 2);

    // Recently changed records are left to the work queue.
    let now = squall_domain::time::now();
    assert_eq!(
        squall_actors::orphans::sweep(&runners, &history, now).await?,
        0
    );
    // Quiet for long: both are requested again and settled.
    assert_eq!(
        squall_actors::orphans::sweep(&runners, &history, later).await?,
        2
    );
    let e = node.finished(&lost).await?;
    assert_eq!(e["status"], "abandoned", "{e}");
    let e = node.finished(&forgotten).await?;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(runs(), 3, "the forgotten request ran, the lost run did not");

    // A long run on a live runner is left alone, however quiet.
    let long = run("core.local", Some("sleep 3")).await?;
    poll(Duration::from_secs(20), || async {
        let (_, e) = node.get(&format!("executions/{long}")).await?;
        Ok((e["status"] == "running").then_some(()))
    })
    .await?;
    indexed(long.clone(), "running").await?;
    assert_eq!(
        squall_actors::orphans::sweep(&runners, &history, later).await?,
        0
    );
    assert_eq!(node.finished(&long).await?["status"], "succeeded");
    Ok(())
}

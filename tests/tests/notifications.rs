//! An execution's end announced as StackStorm announces it: every ended
//! execution emits `core.st2.generic.actiontrigger`, which rules can match,
//! and an action's `notify` emits `core.st2.generic.notifytrigger` with its
//! message and data rendered. Against a real nats-server and real local
//! commands.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use squall_tests::{poll, write_pack, TestNode};

const PACK: &str =
    "ref: notes\nname: notes\ndescription: notify tests\nversion: 0.1.0\nauthor: tests\n";

const FAILS: &str = "name: fails
pack: notes
runner_type: local-shell-cmd
parameters:
  cmd:
    default: \"echo broken >&2; exit 4\"
  who:
    type: string
    default: nobody
  token:
    type: string
    secret: true
    default: hunter2
notify:
  on-failure:
    message: \"{{ action_parameters.who }} failed with {{ action_results.return_code }}\"
    data:
      who: \"{{ action_parameters.who }}\"
      stderr: \"{{ action_results.stderr }}\"
    routes: [ops, chat]
  on-success:
    routes: [never]
";

const WORKS: &str = "name: works
pack: notes
runner_type: local-shell-cmd
parameters:
  cmd:
    default: \"true\"
";

/// Reacts to any failed action by echoing its execution id.
const ON_FAILURE: &str = "name: on_failure
pack: notes
enabled: true
trigger:
  type: core.st2.generic.actiontrigger
criteria:
  trigger.status:
    type: equals
    pattern: failed
  trigger.action_ref:
    type: startswith
    pattern: notes.
action:
  ref: core.local
  parameters:
    cmd: \"echo reacting to {{ trigger.execution_id }} {{ trigger.runner_ref }}\"
";

async fn node() -> Result<(TestNode, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    write_pack(
        dir.path(),
        "notes",
        &[
            ("pack.yaml", PACK),
            ("actions/fails.yaml", FAILS),
            ("actions/works.yaml", WORKS),
            ("rules/on_failure.yaml", ON_FAILURE),
        ],
    )?;
    let node = TestNode::start(vec![dir.path().to_path_buf()]).await?;
    Ok((node, dir))
}

async fn run(node: &TestNode, action: &str, parameters: Value) -> Result<Value> {
    let (status, created) = node
        .post(
            "executions",
            &json!({"action": action, "parameters": parameters}),
        )
        .await?;
    anyhow::ensure!(status == 201, "{status} {created}");
    node.finished(created["id"].as_str().context("id")?).await
}

/// The instances of trigger `trigger` about execution `id`.
async fn instances_about(node: &TestNode, trigger: &str, id: &str) -> Result<Vec<Value>> {
    let (_, list) = node
        .get(&format!("triggerinstances?trigger={trigger}&limit=100"))
        .await?;
    Ok(list
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|i| i["payload"]["execution_id"] == id)
        .collect())
}

#[tokio::test]
async fn a_rule_on_the_actiontrigger_reacts_to_a_failed_action_only() -> Result<()> {
    let (node, _dir) = node().await?;
    let failed = run(&node, "notes.fails", json!({})).await?;
    assert_eq!(failed["status"], "failed");
    let failed_id = failed["id"].as_str().context("id")?;
    let ok = run(&node, "notes.works", json!({})).await?;
    assert_eq!(ok["status"], "succeeded");

    // The failure's actiontrigger started the rule's action.
    let reaction = poll(Duration::from_secs(30), || async {
        let found = node
            .executions()
            .await?
            .into_iter()
            .find(|e| e["rule"]["ref"] == "notes.on_failure");
        Ok(found)
    })
    .await?;
    let reaction = node
        .finished(reaction["id"].as_str().context("id")?)
        .await?;
    assert_eq!(
        reaction["result"]["stdout"],
        format!("reacting to {failed_id} local-shell-cmd")
    );

    // StackStorm's payload.
    let announced = poll(Duration::from_secs(10), || async {
        let list = instances_about(&node, "core.st2.generic.actiontrigger", failed_id).await?;
        Ok(list.into_iter().next())
    })
    .await?;
    let payload = &announced["payload"];
    assert_eq!(payload["status"], "failed");
    assert_eq!(payload["action_ref"], "notes.fails");
    assert_eq!(payload["action_name"], "notes.fails");
    assert_eq!(payload["runner_ref"], "local-shell-cmd");
    assert_eq!(payload["parameters"]["who"], "nobody");
    assert_eq!(payload["parameters"]["token"], "********", "secrets masked");
    assert!(!announced.to_string().contains("hunter2"));
    assert_eq!(payload["result"]["return_code"], 4);
    assert!(payload["start_timestamp"]
        .as_str()
        .is_some_and(|t| t.ends_with("+00:00") && t.contains(' ')));

    // Every trigger handled: the success, and the reaction's own success,
    // started nothing more, and each end was announced once.
    node.rules_idle().await?;
    let by_rule = node
        .executions()
        .await?
        .into_iter()
        .filter(|e| e["rule"]["ref"] == "notes.on_failure")
        .count();
    assert_eq!(by_rule, 1);
    for id in [failed_id, ok["id"].as_str().context("id")?] {
        let n = instances_about(&node, "core.st2.generic.actiontrigger", id)
            .await?
            .len();
        assert_eq!(n, 1, "one actiontrigger for {id}");
    }
    Ok(())
}

#[tokio::test]
async fn notify_on_failure_emits_a_rendered_notifytrigger_per_route() -> Result<()> {
    let (node, _dir) = node().await?;
    let failed = run(&node, "notes.fails", json!({"who": "deploy-bot"})).await?;
    let id = failed["id"].as_str().context("id")?;
    poll(Duration::from_secs(30), || async {
        let list = instances_about(&node, "core.st2.generic.notifytrigger", id).await?;
        Ok((list.len() >= 2).then_some(()))
    })
    .await?;
    node.rules_idle().await?;
    let notes = instances_about(&node, "core.st2.generic.notifytrigger", id).await?;
    let mut routes: Vec<_> = notes
        .iter()
        .filter_map(|n| n["payload"]["route"].as_str())
        .collect();
    routes.sort_unstable();
    assert_eq!(routes, ["chat", "ops"], "on-failure only, one per route");
    for note in &notes {
        let p = &note["payload"];
        assert_eq!(p["message"], "deploy-bot failed with 4");
        assert_eq!(p["data"]["who"], "deploy-bot");
        assert_eq!(p["data"]["stderr"], "broken");
        assert_eq!(p["channel"], p["route"]);
        assert_eq!(p["status"], "failed");
        assert_eq!(p["action_ref"], "notes.fails");
        assert_eq!(p["runner_ref"], "local-shell-cmd");
        let result: Value = serde_json::from_str(p["data"]["result"].as_str().context("result")?)?;
        assert_eq!(
            result["return_code"], 4,
            "data.result is the result as JSON text"
        );
        assert!(p["end_timestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with("+00:00")));
    }
    // A success sends nothing: its section fires on success only, and the
    // failure section does not apply.
    let works = run(&node, "notes.works", json!({})).await?;
    node.rules_idle().await?;
    let none = instances_about(
        &node,
        "core.st2.generic.notifytrigger",
        works["id"].as_str().context("id")?,
    )
    .await?;
    assert!(none.is_empty(), "{none:?}");
    Ok(())
}

/// An end nothing reacts to is not announced (it would double every
/// execution's trigger traffic for no effect); once a rule listens to the
/// actiontrigger, every end is.
#[tokio::test]
async fn ends_are_announced_only_while_something_listens() -> Result<()> {
    let node = TestNode::start(Vec::new()).await?;
    let unheard = run(&node, "core.local", json!({"cmd": "true"})).await?;
    let unheard_id = unheard["id"].as_str().context("id")?;

    let (status, created) = node
        .post(
            "rules",
            &json!({
                "name": "on_any_end",
                "pack": "core",
                "enabled": true,
                "trigger": {"type": "core.st2.generic.actiontrigger"},
                "criteria": {"trigger.action_ref": {"type": "equals", "pattern": "core.noop"}},
                "action": {"ref": "core.noop"},
            }),
        )
        .await?;
    anyhow::ensure!(status == 201, "{status} {created}");
    let heard = run(&node, "core.local", json!({"cmd": "true"})).await?;
    let heard_id = heard["id"].as_str().context("id")?;
    poll(Duration::from_secs(10), || async {
        let list = instances_about(&node, "core.st2.generic.actiontrigger", heard_id).await?;
        Ok(list.into_iter().next())
    })
    .await?;
    let before = instances_about(&node, "core.st2.generic.actiontrigger", unheard_id).await?;
    assert!(
        before.is_empty(),
        "the end before any listener was not announced: {before:?}"
    );
    Ok(())
}

/// A `notify` given with `POST /executions` applies to that execution, in
/// place of the action's; a malformed one is refused naming the field.
#[tokio::test]
async fn an_executions_own_notify_is_sent_and_a_bad_one_refused() -> Result<()> {
    let node = TestNode::start(Vec::new()).await?;
    let (status, created) = node
        .post(
            "executions",
            &json!({
                "action": "core.local",
                "parameters": {"cmd": "echo fine"},
                "notify": {"on-success": {
                    "message": "{{ action_results.stdout }} on demand",
                    "routes": ["pager"],
                }},
            }),
        )
        .await?;
    anyhow::ensure!(status == 201, "{status} {created}");
    let id = created["id"].as_str().context("id")?;
    let note = poll(Duration::from_secs(30), || async {
        let list = instances_about(&node, "core.st2.generic.notifytrigger", id).await?;
        Ok(list.into_iter().next())
    })
    .await?;
    assert_eq!(note["payload"]["message"], "fine on demand");
    assert_eq!(note["payload"]["route"], "pager");

    let (status, refused) = node
        .post(
            "executions",
            &json!({
                "action": "core.local",
                "parameters": {"cmd": "true"},
                "notify": {"on-succes": {"routes": ["pager"]}},
            }),
        )
        .await?;
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["faultstring"]
            .as_str()
            .is_some_and(|m| m.contains("on-succes")),
        "{refused}"
    );
    Ok(())
}

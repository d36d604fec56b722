//! StackStorm's trace API, checked with the official `st2 trace list` and
//! `st2 trace get`: a webhook with a `St2-Trace-Tag` starts a rule whose
//! action is a two-task workflow; the trace shows the trigger instance,
//! the rule and all three executions with their causes, and every filter
//! finds it.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use squall_tests::{poll, st2, st2_json, st2_login, write_pack, TestNode};

const PACK: &str = "name: ops\nref: ops\ndescription: traces\nversion: 0.1.0\nauthor: tests\n";
const RULE: &str = "name: on_deploy
pack: ops
enabled: true
trigger:
  type: core.st2.webhook
  parameters:
    url: deploy
action:
  ref: ops.wf
";
const ACTION: &str = "name: wf
runner_type: orquesta
entry_point: workflows/wf.yaml
enabled: true
";
const WORKFLOW: &str = "version: 1.0
tasks:
  first:
    action: core.noop
    next:
      - do: second
  second:
    action: core.noop
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn st2_trace_list_and_get_follow_a_webhook_through_a_workflow() -> Result<()> {
    let dir = tempfile::tempdir()?;
    write_pack(
        dir.path(),
        "ops",
        &[
            ("pack.yaml", PACK),
            ("rules/on_deploy.yaml", RULE),
            ("actions/wf.yaml", ACTION),
            ("actions/workflows/wf.yaml", WORKFLOW),
        ],
    )?;
    let node = TestNode::start(vec![dir.path().to_path_buf()]).await?;
    let fired = node
        .http
        .post(format!("{}/webhooks/deploy", node.base))
        .header("St2-Trace-Tag", "deploy-42")
        .json(&json!({"v": 1}))
        .send()
        .await?;
    anyhow::ensure!(fired.status().is_success(), "webhook: {}", fired.status());
    let wf = poll(Duration::from_secs(60), || async {
        let list = node.executions().await?;
        let Some(id) = list
            .iter()
            .find(|e| e["action"]["ref"] == "ops.wf" && e["status"] == "succeeded")
            .and_then(|e| e["id"].as_str())
        else {
            return Ok(None);
        };
        let (_, wf) = node.get(&format!("executions/{id}")).await?;
        let (_, children) = node.get(&format!("executions/{id}/children")).await?;
        let children = children.as_array().cloned().unwrap_or_default();
        Ok((children.len() == 2).then_some((wf, children)))
    })
    .await?;
    let (wf, children) = wf;
    let wf_id = wf["id"].as_str().context("wf id")?.to_string();
    let ti_id = wf["trigger_instance"]["id"]
        .as_str()
        .context("ti")?
        .to_string();
    let child = children[1]["id"].as_str().context("child")?.to_string();
    // An execution requested through the API starts its own trace.
    let (code, run) = node
        .post("executions", &json!({"action": "core.noop"}))
        .await?;
    anyhow::ensure!(code == 201, "run: {code} {run}");
    let run_id = run["id"].as_str().context("run id")?.to_string();

    let home = tempfile::tempdir()?;
    let home = home.path();
    st2_login(&node, home).await?;

    let all = st2_json(&node, home, &["trace", "list"]).await?;
    let ids: Vec<&str> = all
        .as_array()
        .with_context(|| format!("st2 trace list printed {all}"))?
        .iter()
        .filter_map(|t| t["id"].as_str())
        .collect();
    assert!(ids.contains(&ti_id.as_str()), "{all}");
    assert!(ids.contains(&run_id.as_str()), "{all}");

    let trace = st2_json(&node, home, &["trace", "get", &ti_id]).await?;
    assert_eq!(trace["trace_tag"], "deploy-42", "{trace}");
    assert_eq!(trace["trigger_instances"][0]["object_id"], ti_id.as_str());
    let rules = trace["rules"].as_array().context("rules")?;
    assert_eq!(rules.len(), 1, "{trace}");
    assert_eq!(rules[0]["ref"], "ops.on_deploy");
    assert_eq!(rules[0]["caused_by"]["type"], "trigger_instance");
    let rule_id = rules[0]["object_id"]
        .as_str()
        .context("rule id")?
        .to_string();
    let executions = trace["action_executions"]
        .as_array()
        .context("executions")?;
    assert_eq!(executions.len(), 3, "{trace}");
    assert_eq!(executions[0]["object_id"], wf_id.as_str());
    assert_eq!(executions[0]["caused_by"]["type"], "rule");
    assert_eq!(
        executions[0]["caused_by"]["id"],
        format!("{rule_id}:{ti_id}").as_str()
    );
    for e in &executions[1..] {
        assert_eq!(e["ref"], "core.noop");
        assert_eq!(
            e["caused_by"],
            json!({"type": "action_execution", "id": wf_id})
        );
        assert!(e["updated_at"].as_str().is_some());
    }

    // Every filter finds it.
    for args in [
        vec!["trace", "list", "-c", "deploy-42"],
        vec!["trace", "list", "-e", child.as_str()],
        vec!["trace", "list", "-r", rule_id.as_str()],
        vec!["trace", "list", "-g", ti_id.as_str()],
    ] {
        // One match is shown as that trace, as `st2 trace get` would.
        let found = st2_json(&node, home, &args).await?;
        assert_eq!(found["id"], ti_id.as_str(), "{args:?}: {found}");
        assert_eq!(found["action_executions"].as_array().map(Vec::len), Some(3));
    }
    let (ok, out, err) = st2(&node, home, &["trace", "list", "-c", "no-such-tag"]).await?;
    assert!(ok && out.contains("No matching items found"), "{out}{err}");

    // The people's view: a table of components.
    let (ok, out, err) = st2(&node, home, &["trace", "get", &ti_id]).await?;
    anyhow::ensure!(ok, "st2 trace get: {out}{err}");
    assert!(
        out.contains(&child) && out.contains("ops.on_deploy"),
        "{out}"
    );
    let api_trace = st2_json(&node, home, &["trace", "get", &run_id]).await?;
    assert_eq!(
        api_trace["action_executions"][0]["object_id"],
        run_id.as_str()
    );
    assert_eq!(api_trace["trigger_instances"], json!([]));

    let (code, body) = node.get("traces/0123456789abcdef01234567").await?;
    assert_eq!(code, 404, "{body}");
    assert!(body["faultstring"]
        .as_str()
        .is_some_and(|f| f.contains("not found")));
    let body: Value = node.get("traces?trace_tag=deploy-42").await?.1;
    assert_eq!(body.as_array().map(Vec::len), Some(1));
    Ok(())
}

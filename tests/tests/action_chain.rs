//! ActionChain (`action-chain` runner) end to end: StackStorm's `examples`
//! pack's chains, unchanged (`tests/fixtures/st2-examples`), checked
//! against the semantics of StackStorm's runner (`action_chain_runner.py`:
//! a chain ends with its last node's status; a failed node follows its
//! `on-failure`, or ends the chain `failed`; an action that does not exist
//! stops the chain with a top-level `error`; a definition naming a node it
//! does not define fails before anything runs); publish and vars; children as
//! real executions; a chain surviving its node's restart; bad definitions.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use squall_tests::{poll, repo_root, write_pack, TestNode};

/// The repository's `core` pack, StackStorm's `examples` pack and a pack
/// of our own chains.
fn pack_dirs(root: &std::path::Path, files: &[(&str, &str)]) -> Result<Vec<PathBuf>> {
    std::os::unix::fs::symlink(repo_root().join("packs/core"), root.join("core"))?;
    write_pack(root, "chains", files)?;
    Ok(vec![
        root.to_path_buf(),
        repo_root().join("tests/fixtures/st2-examples"),
    ])
}

async fn start(files: &[(&str, &str)]) -> Result<(TestNode, tempfile::TempDir)> {
    let packs = tempfile::tempdir()?;
    let dirs = pack_dirs(packs.path(), files)?;
    let node = TestNode::start_with(dirs, |_| {}).await?;
    Ok((node, packs))
}

async fn run(node: &TestNode, action: &str, parameters: Value) -> Result<Value> {
    let (status, body) = node
        .post(
            "executions",
            &json!({"action": action, "parameters": parameters}),
        )
        .await?;
    anyhow::ensure!(status == 201, "{status} {body}");
    let id = body["id"].as_str().context("execution id")?;
    node.finished(id).await
}

fn task_names(e: &Value) -> Vec<String> {
    e["result"]["tasks"]
        .as_array()
        .map(|t| {
            t.iter()
                .map(|t| t["name"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn stdout_of(e: &Value, task: usize) -> String {
    e["result"]["tasks"][task]["result"]["stdout"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn stackstorms_example_chains_run_unchanged() -> Result<()> {
    let (node, _packs) = start(&[("pack.yaml", "name: chains\nversion: 0.1.0\n")]).await?;

    // echochain: c1 → c2 → c3, c2 reads the chain's execution id through
    // `action_context.parent`.
    let e = run(&node, "examples.echochain", json!({})).await?;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(task_names(&e), ["c1", "c2", "c3"]);
    let id = e["id"].as_str().context("id")?;
    assert_eq!(stdout_of(&e, 1), format!("c2: parent exec is {id}."));
    assert_eq!(e["result"]["published"], json!({}));
    for task in e["result"]["tasks"].as_array().context("tasks")? {
        assert_eq!(task["state"], "succeeded", "{task}");
        assert_eq!(task["workflow"], Value::Null);
        assert_eq!(task["execution_id"], task["liveaction_id"]);
    }

    // The nodes are real executions: children of the chain, with
    // StackStorm's `chain` and `parent` context.
    let (status, children) = node.get(&format!("executions?parent={id}")).await?;
    assert_eq!(status, 200, "{children}");
    let children = children.as_array().context("list")?;
    assert_eq!(children.len(), 3, "{children:?}");
    for child in children {
        assert_eq!(child["parent"], json!(id), "{child}");
        assert_eq!(child["context"]["parent"]["execution_id"], json!(id));
        assert!(child["context"]["chain"]["name"].is_string(), "{child}");
        assert_eq!(child["status"], "succeeded");
    }
    let first = &e["result"]["tasks"][0]["execution_id"];
    let (status, c1) = node
        .get(&format!(
            "executions/{}",
            first.as_str().unwrap_or_default()
        ))
        .await?;
    assert_eq!(status, 200);
    assert_eq!(c1["context"]["chain"]["name"], "c1");
    assert_eq!(c1["context"]["chain"]["ref"], "core.local");

    // echochain-param: the chain's input and the previous node's result.
    let e = run(&node, "examples.echochain-param", json!({"input1": "hi"})).await?;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(stdout_of(&e, 0), "c1, input hi");
    assert_eq!(stdout_of(&e, 1), "c2 c1, input hi");
    assert_eq!(stdout_of(&e, 2), "c3 c2 c1, input hi");

    // echochain_task_failure and echochain_top_level_failure both name a
    // node `c4` they do not define (c1's on-failure): StackStorm's runner
    // checks the definition before it starts (`ChainHolder.validate`) and
    // fails with this error, nothing run; so does Squall.
    for action in [
        "examples.echochain_task_failure",
        "examples.echochain_top_level_failure",
    ] {
        let e = run(&node, action, json!({})).await?;
        assert_eq!(e["status"], "failed", "{e}");
        assert_eq!(
            e["result"]["error"],
            "Unable to find node with name \"c4\" referenced in \"on-failure\" in task \"c1\".",
            "{e}"
        );
        let (_, children) = node
            .get(&format!(
                "executions?parent={}",
                e["id"].as_str().unwrap_or_default()
            ))
            .await?;
        assert_eq!(children, json!([]), "{action}");
    }

    // chain-sequential: `params` (the old name), publish carried forward.
    let e = run(&node, "examples.chain-sequential", json!({})).await?;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(task_names(&e), ["task1", "task2", "task3"]);
    assert_eq!(stdout_of(&e, 0), "Lakshmi");
    assert_eq!(stdout_of(&e, 2), "Lakshmi, All your base are belong to us!");
    assert_eq!(
        e["result"]["published"],
        json!({"greeting": "Lakshmi, All your base are belong to us!"})
    );
    Ok(())
}

const VARS_CHAIN: &str = r#"
vars:
  greeting: "hello {{ who }}"
  count: 2
chain:
  - name: first
    ref: core.local
    parameters:
      cmd: "echo {{ greeting }} {{ count + 1 }}"
    publish:
      said: "{{ first.stdout }}"
      doubled: "{{ count * 2 }}"
    on-success: breaks
  - name: breaks
    ref: core.local
    parameters:
      cmd: "echo broke >&2; exit 3"
    notify:
      on-failure:
        routes: [ops]
    on-success: never
    on-failure: recover
  - name: never
    ref: core.local
    parameters:
      cmd: "echo never"
  - name: recover
    ref: core.local
    parameters:
      cmd: "echo {{ said }} / {{ __results.breaks.return_code }} / {{ doubled }}"
"#;

const MISSING_CHAIN: &str = r#"
chain:
  - name: fine
    ref: core.noop
    on-success: ghost
  - name: ghost
    ref: chains.does_not_exist
"#;

const SLOW_CHAIN: &str = r#"
chain:
  - name: wait
    ref: core.local
    parameters:
      cmd: "sleep 30"
    on-success: never
    on-failure: never
  - name: never
    ref: core.noop
"#;

const BROKEN_CHAIN: &str = r#"
chain:
  - name: only
    ref: core.noop
    on-success: nowhere
"#;

const LONG_CHAIN: &str = r#"
chain:
  - name: before
    ref: core.local
    parameters:
      cmd: "echo before >> {{ log }}"
    on-success: approve
  - name: approve
    ref: core.ask
    on-success: after
  - name: after
    ref: core.local
    parameters:
      cmd: "echo after >> {{ log }}"
"#;

fn chain_action(name: &str, params: &str) -> String {
    format!("name: {name}\nrunner_type: action-chain\nentry_point: chains/{name}.yaml\nparameters:\n{params}")
}

#[tokio::test]
async fn chains_publish_branch_and_fail_clearly() -> Result<()> {
    let vars = chain_action("vars", "  who:\n    type: string\n    default: world\n");
    let missing = chain_action("missing", "  {}\n");
    let broken = chain_action("broken", "  {}\n");
    let slow = chain_action("slow", "  {}\n");
    let (node, _packs) = start(&[
        ("pack.yaml", "name: chains\nversion: 0.1.0\n"),
        ("actions/vars.yaml", &vars),
        ("actions/chains/vars.yaml", VARS_CHAIN),
        ("actions/missing.yaml", &missing),
        ("actions/chains/missing.yaml", MISSING_CHAIN),
        ("actions/broken.yaml", &broken),
        ("actions/chains/broken.yaml", BROKEN_CHAIN),
        ("actions/slow.yaml", &slow),
        ("actions/chains/slow.yaml", SLOW_CHAIN),
    ])
    .await?;

    // vars rendered from the input, publish, and the on-failure branch;
    // the chain ends with the last node's status.
    let e = run(&node, "chains.vars", json!({})).await?;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(task_names(&e), ["first", "breaks", "recover"]);
    assert_eq!(stdout_of(&e, 0), "hello world 3");
    assert_eq!(e["result"]["tasks"][1]["state"], "failed");
    assert_eq!(stdout_of(&e, 2), "hello world 3 / 3 / 4");
    assert_eq!(
        e["result"]["published"],
        json!({"said": "hello world 3", "doubled": 4})
    );
    // A node's `notify` goes to its execution.
    let bus = node.node.as_ref().context("node")?.bus.clone();
    let breaks = e["result"]["tasks"][1]["execution_id"]
        .as_str()
        .context("breaks' execution")?;
    let (record, _) = bus.execution(breaks).await?.context("breaks' record")?;
    assert_eq!(
        record.notify,
        Some(json!({"on-failure": {"routes": ["ops"]}}))
    );

    // An action that does not exist: the chain fails naming task and action.
    let e = run(&node, "chains.missing", json!({})).await?;
    assert_eq!(e["status"], "failed", "{e}");
    assert_eq!(task_names(&e), ["fine"]);
    let error = e["result"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("task \"ghost\"") && error.contains("chains.does_not_exist"),
        "{e}"
    );

    // A definition naming a node that does not exist fails before anything
    // runs, saying which.
    let e = run(&node, "chains.broken", json!({})).await?;
    assert_eq!(e["status"], "failed", "{e}");
    assert_eq!(
        e["result"]["error"],
        "Unable to find node with name \"nowhere\" referenced in \"on-success\" in task \"only\"."
    );
    let (_, children) = node
        .get(&format!(
            "executions?parent={}",
            e["id"].as_str().unwrap_or_default()
        ))
        .await?;
    assert_eq!(children, json!([]));

    // Cancel: the running node is canceled, nothing more starts, and the
    // chain ends `canceled`.
    let (status, body) = node
        .post("executions", &json!({"action": "chains.slow"}))
        .await?;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().context("id")?.to_string();
    let child = poll(Duration::from_secs(30), || async {
        let (_, list) = node.get(&format!("executions?parent={id}")).await?;
        let running = list[0]["status"] == "running";
        Ok(running
            .then(|| list[0]["id"].as_str().map(str::to_string))
            .flatten())
    })
    .await?;
    let (status, body) = node
        .call(
            &node.http.clone(),
            reqwest::Method::DELETE,
            &format!("executions/{id}"),
            None,
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    let e = node.finished(&id).await?;
    assert_eq!(e["status"], "canceled", "{e}");
    assert_eq!(task_names(&e), ["wait"]);
    let (_, c) = node.get(&format!("executions/{child}")).await?;
    assert_eq!(c["status"], "canceled", "{c}");
    let (_, children) = node.get(&format!("executions?parent={id}")).await?;
    assert_eq!(children.as_array().map(Vec::len), Some(1), "{children}");
    Ok(())
}

#[tokio::test]
async fn a_chain_survives_its_node_restarting() -> Result<()> {
    let long = chain_action("long", "  log:\n    type: string\n    required: true\n");
    let (mut node, packs) = start(&[
        ("pack.yaml", "name: chains\nversion: 0.1.0\n"),
        ("actions/long.yaml", &long),
        ("actions/chains/long.yaml", LONG_CHAIN),
    ])
    .await?;
    let log = packs.path().join("runs.log");
    let (status, body) = node
        .post(
            "executions",
            &json!({"action": "chains.long", "parameters": {"log": log}}),
        )
        .await?;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().context("id")?.to_string();

    // The chain waits on a person; the node restarts meanwhile.
    let inquiry = poll(Duration::from_secs(30), || async {
        let (_, open) = node.get("inquiries").await?;
        Ok(open[0]["id"].as_str().map(str::to_string))
    })
    .await?;
    node.restart().await?;
    let (status, running) = node.get(&format!("executions/{id}")).await?;
    assert_eq!(status, 200);
    assert_eq!(running["status"], "running", "{running}");
    let answered = node
        .call(
            &node.http.clone(),
            reqwest::Method::PUT,
            &format!("inquiries/{inquiry}"),
            Some(&json!({"response": {"continue": true}})),
        )
        .await?;
    assert_eq!(answered.0, 200, "{}", answered.1);
    let e = node.finished(&id).await?;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(task_names(&e), ["before", "approve", "after"]);
    // Every node ran once.
    assert_eq!(std::fs::read_to_string(&log)?, "before\nafter\n");
    Ok(())
}

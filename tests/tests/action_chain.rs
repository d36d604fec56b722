//! ActionChain (`action-chain` runner) end to end: StackStorm's `examples`
//! pack's chains, unchanged (`tests/fixtures/st2-examples`), checked
//! against the semantics of StackStorm's runner (`action_chain_runner.py`:
//! a chain ends with its last node's status; a failed node follows its
//! `on-failure`, or ends the chain `failed`; an action that does not exist
//! stops the chain with a top-level `error`; a definition naming a node it
//! does not define fails before anything runs); publish and vars; children as
//! real executions; a chain surviving its node's restart; bad definitions;
//! pause and resume as `test_actionchain_pause_resume.py` and StackStorm's
//! `chain-test-pause-resume*` and `chain-test-inquiry*` examples show them
//! (the node under way ends, nothing more starts, the pause cascades to a
//! child chain or workflow, an inquiry pauses the chain until answered).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use squall_tests::{poll, repo_root, st2, st2_login, write_pack, TestNode};

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

    // StackStorm's chain-test-inquiry-parent: a chain whose child chain
    // asks.
    let (status, body) = node
        .post(
            "executions",
            &json!({"action": "examples.chain-test-inquiry-parent"}),
        )
        .await?;
    assert_eq!(status, 201, "{body}");
    let parent = body["id"].as_str().context("id")?.to_string();

    // A chain waiting on a person is `paused`, as StackStorm's is, and
    // lists the node as `pending`; the node restarts meanwhile.
    let inquiry = poll(Duration::from_secs(30), || async {
        let (_, open) = node.get("inquiries").await?;
        Ok(open
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["parent"] == json!(id))
            .and_then(|i| i["id"].as_str().map(str::to_string)))
    })
    .await?;
    let paused = reaches(&node, &id, "paused").await?;
    assert_eq!(task_names(&paused), ["before", "approve"]);
    assert_eq!(paused["result"]["tasks"][1]["state"], "pending", "{paused}");
    // Its parent chain pauses with it.
    reaches(&node, &parent, "paused").await?;
    let child = children(&node, &parent).await?;
    let child = child[0]["id"].as_str().context("child chain")?.to_string();
    reaches(&node, &child, "paused").await?;
    node.restart().await?;
    let (status, e) = node.get(&format!("executions/{id}")).await?;
    assert_eq!(status, 200);
    assert_eq!(e["status"], "paused", "{e}");
    // Resuming cannot answer a person: the chain goes back to `paused`.
    let (status, body) = set_status(&node, &id, "resuming").await?;
    assert_eq!((status, body["status"].clone()), (200, json!("resuming")));
    poll(Duration::from_secs(30), || async {
        let (_, e) = node.get(&format!("executions/{id}")).await?;
        let log = e["log"].as_array().cloned().unwrap_or_default();
        Ok(
            (e["status"] == "paused" && log.iter().any(|l| l["status"] == "resuming"))
                .then_some(()),
        )
    })
    .await?;
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

    // The answer to the child chain's inquiry resumes it, and its parent.
    // The example's task2 reads `task1.result.response`, which an
    // inquiry's result (`response` at its top) does not have: it fails to
    // render, in StackStorm as here, and both chains fail on it.
    let inquiry = children(&node, &child).await?[0]["id"]
        .as_str()
        .context("the child chain's inquiry")?
        .to_string();
    let answered = node
        .call(
            &node.http.clone(),
            reqwest::Method::PUT,
            &format!("inquiries/{inquiry}"),
            Some(&json!({"response": {"secondfactor": "s3cret"}})),
        )
        .await?;
    assert_eq!(answered.0, 200, "{}", answered.1);
    for id in [&child, &parent] {
        let e = node.finished(id).await?;
        assert_eq!(e["status"], "failed", "{e}");
        let statuses: Vec<&str> = e["log"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["status"].as_str())
            .collect();
        assert!(
            statuses.ends_with(&["paused", "running", "failed"]),
            "{statuses:?}"
        );
    }
    let e = node.finished(&child).await?;
    assert_eq!(task_names(&e), ["task1"]);
    assert_eq!(
        e["result"]["tasks"][0]["result"]["response"],
        json!({"secondfactor": "s3cret"})
    );
    let error = e["result"]["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("Failed to run task \"task2\". Parameter rendering failed.")
            && error.contains("task1.result.response"),
        "{e}"
    );
    Ok(())
}

/// An Orquesta workflow whose first task is StackStorm's pausable chain.
const FLOW_ACTION: &str = "name: flow\nrunner_type: orquesta\nentry_point: workflows/flow.yaml\nparameters:\n  tempfile:\n    type: string\n  message:\n    type: string\n";

const FLOW: &str = r#"
version: 1.0
input:
  - tempfile
  - message
output:
  - said: <% ctx().said %>
tasks:
  chain:
    action: examples.chain-test-pause-resume
    input:
      tempfile: <% ctx().tempfile %>
      message: <% ctx().message %>
    next:
      - when: <% succeeded() %>
        publish: said=<% result().tasks[1].result.stdout %>
"#;

/// `PUT /executions/{id}` with `{"status": status}`.
async fn set_status(node: &TestNode, id: &str, status: &str) -> Result<(u16, Value)> {
    node.call(
        &node.http.clone(),
        reqwest::Method::PUT,
        &format!("executions/{id}"),
        Some(&json!({ "status": status })),
    )
    .await
}

/// Waits until execution `id` is `status`, and returns it.
async fn reaches(node: &TestNode, id: &str, status: &str) -> Result<Value> {
    poll(Duration::from_secs(30), || async {
        let (_, e) = node.get(&format!("executions/{id}")).await?;
        Ok((e["status"] == status).then_some(e))
    })
    .await
    .with_context(|| format!("execution {id} never became {status}"))
}

/// Execution `id`'s children, oldest first.
async fn children(node: &TestNode, id: &str) -> Result<Vec<Value>> {
    let (_, list) = node.get(&format!("executions?parent={id}")).await?;
    let mut list = list.as_array().cloned().unwrap_or_default();
    list.reverse();
    Ok(list)
}

/// Waits until execution `id` has one child, `running`, and returns its id.
async fn running_child(node: &TestNode, id: &str) -> Result<String> {
    poll(Duration::from_secs(30), || async {
        let list = children(node, id).await?;
        Ok(match &list[..] {
            [only] if only["status"] == "running" => only["id"].as_str().map(str::to_string),
            _ => None,
        })
    })
    .await
    .with_context(|| format!("execution {id} never ran its first node"))
}

#[tokio::test]
async fn chains_pause_resume_and_cancel_as_stackstorms_do() -> Result<()> {
    let (mut node, packs) = start(&[
        ("pack.yaml", "name: chains\nversion: 0.1.0\n"),
        ("actions/flow.yaml", FLOW_ACTION),
        ("actions/workflows/flow.yaml", FLOW),
    ])
    .await?;
    let home = packs.path().join("home");
    std::fs::create_dir_all(&home)?;
    st2_login(&node, &home).await?;

    // Five chains from StackStorm's examples, each first node waiting on a
    // file of its own: plain, with a child chain, with a child Orquesta
    // workflow, one to cancel once paused, one to cancel while pausing;
    // and an Orquesta workflow whose task is such a chain.
    let mut chains = Vec::new();
    for (name, action) in [
        ("plain", "examples.chain-test-pause-resume"),
        ("subchain", "examples.chain-test-pause-resume-with-subchain"),
        (
            "subworkflow",
            "examples.chain-test-pause-resume-with-subworkflow",
        ),
        ("cancel-paused", "examples.chain-test-pause-resume"),
        ("in-workflow", "chains.flow"),
        ("cancel-pausing", "examples.chain-test-pause-resume"),
    ] {
        let file = packs.path().join(name);
        std::fs::write(&file, "")?;
        let (status, body) = node
            .post(
                "executions",
                &json!({"action": action,
                        "parameters": {"tempfile": file, "message": format!("{name} done")}}),
            )
            .await?;
        assert_eq!(status, 201, "{body}");
        chains.push((body["id"].as_str().context("id")?.to_string(), file));
    }
    let ids: Vec<String> = chains.iter().map(|(id, _)| id.clone()).collect();
    let [plain, subchain, subworkflow, cancel_paused, in_workflow, cancel_pausing] = &ids[..]
    else {
        unreachable!()
    };
    let mut first = HashMap::new();
    for id in &ids {
        first.insert(id.clone(), running_child(&node, id).await?);
    }
    // The children of the child chain and workflow run too.
    let sub_task1 = running_child(&node, &first[subchain]).await?;
    running_child(&node, &first[subworkflow]).await?;
    running_child(&node, &first[in_workflow]).await?;

    // Rejections, as clear as Orquesta's: a running chain does not resume,
    // and an action that is no workflow does not pause.
    let (status, body) = set_status(&node, plain, "resuming").await?;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        body["faultstring"],
        format!("execution {plain} is running; only a running workflow can pause and only a paused or pausing one can resume")
    );
    let task1 = &first[plain];
    let (status, body) = set_status(&node, task1, "pausing").await?;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["faultstring"],
        format!("status: execution {task1} runs on runner \"local-shell-cmd\", which cannot pause; only workflow executions can")
    );

    // `st2 execution pause`, and the API for the others: `pausing` while
    // the node runs on; a child chain or workflow is asked to pause too.
    let (ok, out, err) = st2(&node, &home, &["execution", "pause", plain]).await?;
    assert!(ok && out.contains("pausing"), "{out}{err}");
    for id in [
        subchain,
        subworkflow,
        cancel_paused,
        in_workflow,
        cancel_pausing,
    ] {
        let (status, body) = set_status(&node, id, "pausing").await?;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "pausing", "{body}");
    }
    reaches(&node, &first[subchain], "pausing").await?;
    reaches(&node, &first[subworkflow], "pausing").await?;
    // A workflow's pause reaches its chain task the same way.
    reaches(&node, &first[in_workflow], "pausing").await?;
    let (_, e) = node.get(&format!("executions/{task1}")).await?;
    assert_eq!(e["status"], "running", "the node is not stopped: {e}");

    // Canceled while pausing: its node is canceled, then the chain.
    let (status, body) = node
        .call(
            &node.http.clone(),
            reqwest::Method::DELETE,
            &format!("executions/{cancel_pausing}"),
            None,
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    let e = node.finished(cancel_pausing).await?;
    assert_eq!(e["status"], "canceled", "{e}");
    assert_eq!(task_names(&e), ["task1"]);
    let (_, c) = node
        .get(&format!("executions/{}", first[cancel_pausing]))
        .await?;
    assert_eq!(c["status"], "canceled", "{c}");

    // The nodes end: every chain is `paused`, with its result so far, and
    // no next node has started.
    for (id, file) in &chains[..5] {
        let (_, e) = node.get(&format!("executions/{id}")).await?;
        assert_eq!(e["status"], "pausing", "while its node runs: {e}");
        std::fs::remove_file(file)?;
    }
    for id in [plain, subchain, subworkflow, cancel_paused] {
        let e = reaches(&node, id, "paused").await?;
        assert_eq!(task_names(&e), ["task1"], "{e}");
        assert_eq!(children(&node, id).await?.len(), 1, "{id}");
    }
    let e = reaches(&node, plain, "paused").await?;
    assert_eq!(e["result"]["tasks"][0]["state"], "succeeded", "{e}");
    assert_eq!(e["result"]["published"], json!({}), "{e}");
    // The child chain and workflow paused after their own first task; the
    // chains list them as `paused`, as StackStorm's do.
    for id in [subchain, subworkflow] {
        let child = &first[id];
        reaches(&node, child, "paused").await?;
        assert_eq!(children(&node, child).await?.len(), 1, "{child}");
        let e = reaches(&node, id, "paused").await?;
        assert_eq!(e["result"]["tasks"][0]["state"], "paused", "{e}");
        assert_eq!(e["result"]["tasks"][0]["execution_id"], json!(child));
    }
    reaches(&node, &first[in_workflow], "paused").await?;
    reaches(&node, in_workflow, "paused").await?;
    let (_, t) = node.get(&format!("executions/{sub_task1}")).await?;
    assert_eq!(t["status"], "succeeded", "{t}");
    // Asked again, a paused chain says it is paused.
    let (status, body) = set_status(&node, plain, "pausing").await?;
    assert_eq!((status, body["status"].clone()), (200, json!("paused")));

    // Canceled once paused: at once, with what ran.
    let (status, body) = node
        .call(
            &node.http.clone(),
            reqwest::Method::DELETE,
            &format!("executions/{cancel_paused}"),
            None,
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    let e = node.finished(cancel_paused).await?;
    assert_eq!(e["status"], "canceled", "{e}");
    assert_eq!(task_names(&e), ["task1"]);
    assert_eq!(children(&node, cancel_paused).await?.len(), 1);

    // A pause survives the node restarting.
    node.restart().await?;
    for id in [plain, subchain, subworkflow, in_workflow] {
        let (_, e) = node.get(&format!("executions/{id}")).await?;
        assert_eq!(e["status"], "paused", "{e}");
    }

    // `st2 execution resume`, and the API: the chains go on with their
    // next node as if nothing had happened; the resume goes down to the
    // paused child chain and workflow.
    let (ok, out, err) = st2(&node, &home, &["execution", "resume", plain]).await?;
    assert!(
        ok && (out.contains("resuming") || out.contains("running")),
        "{out}{err}"
    );
    for id in [subchain, subworkflow, in_workflow] {
        let (status, body) = set_status(&node, id, "resuming").await?;
        assert_eq!(status, 200, "{body}");
    }
    let e = node.finished(plain).await?;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(task_names(&e), ["task1", "task2"]);
    assert_eq!(stdout_of(&e, 1), "plain done");
    assert_eq!(e["result"]["published"], json!({}));
    assert_eq!(
        children(&node, plain).await?.len(),
        2,
        "every node ran once"
    );
    for id in [subchain, subworkflow] {
        let e = node.finished(id).await?;
        assert_eq!(e["status"], "succeeded", "{e}");
        assert_eq!(task_names(&e), ["task1", "task2"]);
        assert_eq!(stdout_of(&e, 1), "foobar");
    }
    let sub = node.finished(&first[subchain]).await?;
    assert_eq!(task_names(&sub), ["task1", "task2"]);
    assert_eq!(stdout_of(&sub, 1), "subchain done");
    let sub = node.finished(&first[subworkflow]).await?;
    assert_eq!(sub["status"], "succeeded", "{sub}");
    assert_eq!(children(&node, &first[subworkflow]).await?.len(), 2);
    let e = node.finished(in_workflow).await?;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(e["result"]["output"]["said"], "in-workflow done", "{e}");

    // A chain that has ended neither pauses nor resumes.
    for (what, status) in [("pause", "pausing"), ("resume", "resuming")] {
        let (code, body) = set_status(&node, plain, status).await?;
        assert_eq!(code, 409, "{what}: {body}");
        assert_eq!(
            body["faultstring"],
            format!("execution {plain} is succeeded; only a running workflow can pause and only a paused or pausing one can resume")
        );
    }
    Ok(())
}

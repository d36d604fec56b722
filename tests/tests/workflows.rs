//! Orquesta workflows run through the API on a real node: data passing,
//! error handling, children, and a definition that cannot run.

use std::time::Duration;

use anyhow::Result;
use serde_json::{json, Value};
use squall_tests::{poll, write_pack, TestNode};

/// The children of `id` once there are `n` (the list index follows the
/// records by milliseconds).
async fn children(node: &TestNode, id: &str, n: usize) -> Result<Vec<Value>> {
    poll(Duration::from_secs(10), || async {
        let (_, list) = node.get(&format!("executions/{id}/children")).await?;
        let list = list.as_array().cloned().unwrap_or_default();
        Ok((list.len() == n).then_some(list))
    })
    .await
}

async fn run(node: &TestNode, action: &str, parameters: Value) -> Result<(Value, Value)> {
    let (status, created) = node
        .post(
            "executions",
            &json!({"action": action, "parameters": parameters}),
        )
        .await?;
    anyhow::ensure!(status == 201, "{status} {created}");
    let id = created["id"].as_str().unwrap_or_default().to_string();
    let done = poll(Duration::from_secs(60), || async {
        let (_, e) = node.get(&format!("executions/{id}")).await?;
        let finished = matches!(
            e["status"].as_str(),
            Some("succeeded" | "failed" | "canceled" | "timeout")
        );
        Ok(finished.then_some(e))
    })
    .await?;
    Ok((created, done))
}

#[tokio::test]
async fn a_sequential_workflow_passes_data_between_tasks() -> Result<()> {
    let node = TestNode::start(vec![]).await?;
    let (created, done) = run(
        &node,
        "examples.orquesta-sequential",
        json!({"name": "Squall"}),
    )
    .await?;
    // Created through the API, a workflow is never finished at creation.
    assert_eq!(created["status"], "requested");
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        done["result"],
        json!({"output": {"greeting": "Squall, All your base are belong to us!"}})
    );
    let id = done["id"].as_str().unwrap();
    let children = children(&node, id, 3).await?;
    let tasks: Vec<&str> = children
        .iter()
        .map(|c| {
            c["context"]["orquesta"]["task_name"]
                .as_str()
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(tasks, vec!["task1", "task2", "task3"]);
    for child in &children {
        assert_eq!(child["status"], "succeeded");
        assert_eq!(child["parent"], id);
        assert_eq!(child["action"]["ref"], "core.echo");
    }
    assert_eq!(children[0]["parameters"]["message"], "Squall");
    Ok(())
}

#[tokio::test]
async fn a_failed_task_publishes_stderr_remediates_and_fails() -> Result<()> {
    let node = TestNode::start(vec![]).await?;
    let (_, done) = run(
        &node,
        "examples.orquesta-remediate",
        json!({"host": "db-3"}),
    )
    .await?;
    assert_eq!(done["status"], "failed", "{done}");
    let result = &done["result"];
    assert_eq!(result["output"], json!({"problem": "checking db-3"}));
    // Orquesta logs the failed run, then `fail` as a failed task of its own.
    assert_eq!(result["errors"][0]["task_id"], "verify", "{result}");
    assert_eq!(result["errors"][1]["task_id"], "fail", "{result}");
    let id = done["id"].as_str().unwrap();
    let children = children(&node, id, 2).await?;
    let seen: Vec<(&str, &str)> = children
        .iter()
        .map(|c| {
            (
                c["context"]["orquesta"]["task_name"]
                    .as_str()
                    .unwrap_or_default(),
                c["status"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(seen, vec![("verify", "failed"), ("cleanup", "succeeded")]);
    Ok(())
}

#[tokio::test]
async fn a_task_that_cannot_run_fails_its_workflow_with_the_reason() -> Result<()> {
    let packs = tempfile::tempdir()?;
    write_pack(
        packs.path(),
        "flows",
        &[
            ("pack.yaml", "name: flows\nversion: 0.1.0\n"),
            (
                "actions/broken.yaml",
                "name: broken\nrunner_type: orquesta\nentry_point: workflows/broken.yaml\n",
            ),
            (
                "actions/workflows/broken.yaml",
                "version: 1.0\ntasks:\n  first:\n    action: nowhere.nothing\n    next:\n      - when: <% succeeded() %>\n        do: second\n  second:\n    action: core.noop\n",
            ),
        ],
    )?;
    let node = TestNode::start(vec![packs.path().to_path_buf()]).await?;
    let (_, done) = run(&node, "flows.broken", json!({})).await?;
    assert_eq!(done["status"], "failed", "{done}");
    // As StackStorm, the tasks' actions are checked before the start.
    assert_eq!(
        done["result"]["errors"][0]["message"],
        "The action \"nowhere.nothing\" is not registered in the database.",
        "{done}"
    );
    let id = done["id"].as_str().unwrap();
    let (_, none) = node.get(&format!("executions/{id}/children")).await?;
    assert_eq!(none, json!([]), "nothing ran");
    Ok(())
}

#[tokio::test]
async fn a_workflow_runs_another_as_a_task() -> Result<()> {
    let packs = tempfile::tempdir()?;
    write_pack(
        packs.path(),
        "nest",
        &[
            ("pack.yaml", "name: nest\nversion: 0.1.0\n"),
            (
                "actions/outer.yaml",
                "name: outer\nrunner_type: orquesta\nentry_point: workflows/outer.yaml\n",
            ),
            (
                "actions/workflows/outer.yaml",
                "version: 1.0\ntasks:\n  inner:\n    action: examples.orquesta-sequential\n    input:\n      name: nested\n    next:\n      - when: <% succeeded() %>\n        publish: said=<% result().output.greeting %>\noutput:\n  - said: <% ctx(said) %>\n",
            ),
        ],
    )?;
    let node = TestNode::start(vec![packs.path().to_path_buf()]).await?;
    let (_, done) = run(&node, "nest.outer", json!({})).await?;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        done["result"]["output"]["said"],
        "nested, All your base are belong to us!"
    );
    // The tree: outer → inner workflow → its three tasks.
    let id = done["id"].as_str().unwrap();
    let all = children(&node, id, 4).await?;
    assert_eq!(all[0]["action"]["ref"], "examples.orquesta-sequential");
    assert!(all[1..].iter().all(|c| c["parent"] == all[0]["id"]));
    Ok(())
}

#[tokio::test]
async fn with_items_runs_each_item_and_keeps_their_order() -> Result<()> {
    let node = TestNode::start(vec![]).await?;
    let members = json!(["a", "b", "c", "d", "e"]);
    let (_, done) = run(
        &node,
        "examples.orquesta-with-items",
        json!({"members": members}),
    )
    .await?;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        done["result"]["output"]["greetings"],
        json!([
            "a, resistance is futile!",
            "b, resistance is futile!",
            "c, resistance is futile!",
            "d, resistance is futile!",
            "e, resistance is futile!"
        ])
    );
    let id = done["id"].as_str().unwrap();
    let kids = children(&node, id, 5).await?;
    assert!(kids
        .iter()
        .all(|k| k["context"]["orquesta"]["task_name"] == "greet"));
    Ok(())
}

#[tokio::test]
async fn canceling_a_workflow_stops_its_running_task_and_starts_nothing_more() -> Result<()> {
    let packs = tempfile::tempdir()?;
    write_pack(
        packs.path(),
        "long",
        &[
            ("pack.yaml", "name: long\nversion: 0.1.0\n"),
            (
                "actions/wait.yaml",
                "name: wait\nrunner_type: orquesta\nentry_point: workflows/wait.yaml\n",
            ),
            (
                "actions/workflows/wait.yaml",
                "version: 1.0\ntasks:\n  sleep:\n    action: core.local cmd=\"sleep 120\" timeout=300\n    next:\n      - do: after\n  after:\n    action: core.noop\n",
            ),
        ],
    )?;
    let node = TestNode::start(vec![packs.path().to_path_buf()]).await?;
    let (status, created) = node
        .post("executions", &json!({"action": "long.wait"}))
        .await?;
    assert_eq!(status, 201);
    let id = created["id"].as_str().unwrap().to_string();
    let task = poll(Duration::from_secs(30), || async {
        let (_, kids) = node.get(&format!("executions/{id}/children")).await?;
        Ok(kids
            .as_array()
            .and_then(|k| k.first().cloned())
            .filter(|k| k["status"] == "running"))
    })
    .await?;
    let r = node
        .http
        .delete(format!("{}/executions/{id}", node.base))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await?;
    assert_eq!(answer["status"], "canceling");
    let done = node.finished(&id).await?;
    assert_eq!(done["status"], "canceled", "{done}");
    let task_id = task["id"].as_str().unwrap();
    let (_, stopped) = node.get(&format!("executions/{task_id}")).await?;
    assert_eq!(stopped["status"], "canceled", "{stopped}");
    let (_, kids) = node.get(&format!("executions/{id}/children")).await?;
    assert_eq!(
        kids.as_array().map(Vec::len),
        Some(1),
        "`after` never started"
    );
    Ok(())
}

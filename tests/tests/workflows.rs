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

/// As in StackStorm, a canceled workflow lets its running action finish
/// (it stays `canceling` until then) and starts nothing more.
#[tokio::test]
async fn canceling_a_workflow_lets_its_running_task_finish_and_starts_nothing_more() -> Result<()> {
    let packs = tempfile::tempdir()?;
    let flag = packs.path().join("flag");
    std::fs::write(&flag, "")?;
    let workflow = format!(
        "version: 1.0\ntasks:\n  wait:\n    action: core.local cmd=\"while [ -e {} ]; do sleep 0.1; done\" timeout=300\n    next:\n      - do: after\n  after:\n    action: core.noop\n",
        flag.display()
    );
    write_pack(
        packs.path(),
        "long",
        &[
            ("pack.yaml", "name: long\nversion: 0.1.0\n"),
            (
                "actions/wait.yaml",
                "name: wait\nrunner_type: orquesta\nentry_point: workflows/wait.yaml\n",
            ),
            ("actions/workflows/wait.yaml", &workflow),
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
    let task_id = task["id"].as_str().unwrap();
    let (_, running) = node.get(&format!("executions/{task_id}")).await?;
    assert_eq!(running["status"], "running", "not killed: {running}");
    std::fs::remove_file(&flag)?;
    let done = node.finished(&id).await?;
    assert_eq!(done["status"], "canceled", "{done}");
    let (_, ended) = node.get(&format!("executions/{task_id}")).await?;
    assert_eq!(ended["status"], "succeeded", "{ended}");
    let (_, kids) = node.get(&format!("executions/{id}/children")).await?;
    assert_eq!(
        kids.as_array().map(Vec::len),
        Some(1),
        "`after` never started"
    );
    Ok(())
}

/// Task name and status of each task of workflow `id`, in the order they
/// ran.
async fn tasks_of(node: &TestNode, id: &str) -> Result<Vec<(String, String)>> {
    let (_, kids) = node
        .get(&format!("executions/{id}/children?depth=1"))
        .await?;
    Ok(kids
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|k| {
            (
                k["context"]["orquesta"]["task_name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                k["status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect())
}

/// Waits until execution `id` has `status`.
async fn reaches(node: &TestNode, id: &str, status: &str) -> Result<Value> {
    poll(Duration::from_secs(30), || async {
        let (_, e) = node.get(&format!("executions/{id}")).await?;
        Ok((e["status"] == status).then_some(e))
    })
    .await
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[tokio::test]
async fn branches_run_in_parallel_and_join_before_the_report() -> Result<()> {
    let node = TestNode::start(vec![]).await?;
    let (_, done) = run(
        &node,
        "examples.orquesta-branching",
        json!({"host": "db-1"}),
    )
    .await?;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        done["result"]["output"]["summary"],
        "disk ok on db-1; memory ok on db-1"
    );
    let id = done["id"].as_str().unwrap();
    let mut ran: Vec<String> = tasks_of(&node, id)
        .await?
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    ran.sort();
    assert_eq!(
        ran,
        vec!["disk", "done", "memory", "report", "start"],
        "report once"
    );
    // The other branch of `when`.
    let (_, quick) = run(
        &node,
        "examples.orquesta-branching",
        json!({"host": "db-1", "deep": false}),
    )
    .await?;
    assert_eq!(
        quick["result"],
        json!({"output": {"summary": "quick look at db-1"}})
    );
    Ok(())
}

#[tokio::test]
async fn a_flaky_step_is_retried_until_it_passes() -> Result<()> {
    let node = TestNode::start(vec![]).await?;
    let (_, done) = run(&node, "examples.orquesta-retry", json!({"failures": 2})).await?;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["result"]["output"]["attempts"], "attempt 3");
    let id = done["id"].as_str().unwrap();
    assert_eq!(
        tasks_of(&node, id).await?,
        owned(&[
            ("flaky", "failed"),
            ("flaky", "failed"),
            ("flaky", "succeeded"),
            ("cleanup", "succeeded")
        ])
    );
    // More failures than retries: the workflow fails after 1 + 3 attempts.
    let (_, failed) = run(&node, "examples.orquesta-retry", json!({"failures": 9})).await?;
    assert_eq!(failed["status"], "failed", "{failed}");
    let id = failed["id"].as_str().unwrap();
    assert_eq!(tasks_of(&node, id).await?.len(), 4);
    Ok(())
}

#[tokio::test]
async fn the_nested_example_uses_its_child_workflows_output() -> Result<()> {
    let node = TestNode::start(vec![]).await?;
    let (_, done) = run(&node, "examples.orquesta-nested", json!({"name": "ops"})).await?;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        done["result"]["output"]["shouted"],
        "OPS, ALL YOUR BASE ARE BELONG TO US!"
    );
    let id = done["id"].as_str().unwrap();
    // greet (a workflow) with its three tasks, then shout.
    children(&node, id, 5).await?;
    Ok(())
}

#[tokio::test]
async fn an_inquiry_pauses_its_workflow_until_answered_then_it_resumes() -> Result<()> {
    let node = TestNode::start(vec![]).await?;
    let (status, created) = node
        .post(
            "executions",
            &json!({"action": "examples.orquesta-ask", "parameters": {"host": "db-7"}}),
        )
        .await?;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    reaches(&node, &id, "paused").await?;
    let (_, open) = node.get("inquiries").await?;
    let inquiry = open[0]["id"].as_str().unwrap().to_string();
    assert_eq!(open[0]["parent"], id, "{open}");
    // A response that does not fit the schema is refused; the workflow
    // stays paused.
    let path = format!("inquiries/{inquiry}");
    let (status, _) = node
        .call(
            &node.http,
            reqwest::Method::PUT,
            &path,
            Some(&json!({"response": {"approved": "maybe"}})),
        )
        .await?;
    assert_eq!(status, 400);
    let (status, body) = node
        .call(
            &node.http,
            reqwest::Method::PUT,
            &path,
            Some(&json!({"response": {"approved": true}})),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    let done = node.finished(&id).await?;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["result"]["output"]["outcome"], "draining db-7");
    let statuses: Vec<&str> = done["log"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["status"].as_str())
        .collect();
    assert_eq!(
        statuses,
        vec![
            "requested",
            "scheduled",
            "running",
            "pausing",
            "paused",
            "running",
            "succeeded"
        ]
    );
    Ok(())
}

/// A pack whose `outer` workflow runs `inner` (a workflow whose first task
/// waits for a file) beside a plain task; `inner`'s second task follows.
fn gated_pack(root: &std::path::Path, gate: &std::path::Path) -> Result<()> {
    let gate = gate.display();
    write_pack(
        root,
        "gated",
        &[
            ("pack.yaml", "name: gated\nversion: 0.1.0\n"),
            (
                "actions/outer.yaml",
                "name: outer\nrunner_type: orquesta\nentry_point: workflows/outer.yaml\n",
            ),
            (
                "actions/inner.yaml",
                "name: inner\nrunner_type: orquesta\nentry_point: workflows/inner.yaml\n",
            ),
            (
                "actions/workflows/outer.yaml",
                "version: 1.0\ntasks:\n  inner:\n    action: gated.inner\n    next:\n      - when: <% succeeded() %>\n        do: after\n  side:\n    action: core.noop\n  after:\n    action: core.noop\n",
            ),
            (
                "actions/workflows/inner.yaml",
                &format!("version: 1.0\ntasks:\n  wait:\n    action: core.local\n    input:\n      cmd: while [ ! -f {gate} ]; do sleep 0.05; done\n      timeout: 120\n    next:\n      - when: <% succeeded() %>\n        do: second\n  second:\n    action: core.noop\n"),
            ),
        ],
    )?;
    Ok(())
}

#[tokio::test]
async fn pause_reaches_child_workflows_and_resume_finishes_every_task_once() -> Result<()> {
    let packs = tempfile::tempdir()?;
    let gate = packs.path().join("gate");
    gated_pack(packs.path(), &gate)?;
    let node = TestNode::start(vec![packs.path().to_path_buf()]).await?;
    let (_, created) = node
        .post("executions", &json!({"action": "gated.outer"}))
        .await?;
    let id = created["id"].as_str().unwrap().to_string();
    // `inner` is running its gated task.
    let inner = poll(Duration::from_secs(30), || async {
        let (_, kids) = node
            .get(&format!("executions/{id}/children?depth=1"))
            .await?;
        Ok(kids.as_array().and_then(|k| {
            k.iter()
                .find(|c| c["action"]["ref"] == "gated.inner")
                .cloned()
        }))
    })
    .await?;
    let inner_id = inner["id"].as_str().unwrap().to_string();
    poll(Duration::from_secs(30), || async {
        Ok((tasks_of(&node, &inner_id).await? == owned(&[("wait", "running")])).then_some(()))
    })
    .await?;
    // Only workflows pause.
    let (_, plain) = node
        .post("executions", &json!({"action": "core.noop"}))
        .await?;
    let plain_id = plain["id"].as_str().unwrap();
    let put = |id: String, status: &'static str| {
        let node = &node;
        async move {
            node.call(
                &node.http,
                reqwest::Method::PUT,
                &format!("executions/{id}"),
                Some(&json!({"status": status})),
            )
            .await
        }
    };
    let (status, body) = put(plain_id.to_string(), "pausing").await?;
    assert_eq!(status, 400, "{body}");
    assert!(body["faultstring"]
        .as_str()
        .unwrap()
        .contains("only workflow"));

    let (status, body) = put(id.clone(), "pausing").await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "pausing");
    reaches(&node, &inner_id, "pausing").await?;
    // The gated action runs to its end; then the child pauses before its
    // next task, and the parent once its child has.
    std::fs::write(&gate, "open")?;
    reaches(&node, &inner_id, "paused").await?;
    reaches(&node, &id, "paused").await?;
    assert_eq!(
        tasks_of(&node, &inner_id).await?,
        owned(&[("wait", "succeeded")]),
        "`second` waits for the resume"
    );
    let (status, body) = put(id.clone(), "pausing").await?;
    assert_eq!(
        status, 200,
        "pausing a paused workflow changes nothing: {body}"
    );

    let (status, body) = put(id.clone(), "resuming").await?;
    assert_eq!(status, 200, "{body}");
    let done = node.finished(&id).await?;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        tasks_of(&node, &inner_id).await?,
        owned(&[("wait", "succeeded"), ("second", "succeeded")])
    );
    let mut outer: Vec<String> = tasks_of(&node, &id)
        .await?
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    outer.sort();
    assert_eq!(outer, vec!["after", "inner", "side"]);
    let (status, body) = put(id.clone(), "resuming").await?;
    assert_eq!(status, 409, "a finished workflow: {body}");
    Ok(())
}

#[tokio::test]
async fn a_failed_workflow_re_runs_from_its_failed_task_with_its_context() -> Result<()> {
    let packs = tempfile::tempdir()?;
    let flag = packs.path().join("flag");
    write_pack(
        packs.path(),
        "again",
        &[
            ("pack.yaml", "name: again\nversion: 0.1.0\n"),
            (
                "actions/flow.yaml",
                "name: flow\nrunner_type: orquesta\nentry_point: workflows/flow.yaml\n",
            ),
            (
                "actions/workflows/flow.yaml",
                &format!("version: 1.0\ntasks:\n  first:\n    action: core.local cmd=\"echo from-first\"\n    next:\n      - when: <% succeeded() %>\n        publish: got=<% result().stdout %>\n        do: check\n  check:\n    action: core.local cmd=\"test -f {}\"\n    next:\n      - when: <% succeeded() %>\n        do: last\n  last:\n    action: core.echo message=<% ctx(got) %>\n    next:\n      - publish: said=<% result().stdout %>\noutput:\n  - said: <% ctx(said) %>\n", flag.display()),
            ),
        ],
    )?;
    let node = TestNode::start(vec![packs.path().to_path_buf()]).await?;
    let (_, failed) = run(&node, "again.flow", json!({})).await?;
    assert_eq!(failed["status"], "failed", "{failed}");
    let id = failed["id"].as_str().unwrap();
    for (body, says) in [
        (json!({"tasks": ["last"]}), "never ran"),
        (json!({"tasks": ["nope"]}), "never ran"),
        (json!({"tasks": ["check"], "reset": ["last"]}), "reset"),
    ] {
        let (status, err) = node.post(&format!("executions/{id}/re_run"), &body).await?;
        assert_eq!(status, 400, "{body}: {err}");
        assert!(err["faultstring"].as_str().unwrap().contains(says), "{err}");
    }
    std::fs::write(&flag, "")?;
    let (status, again) = node
        .post(
            &format!("executions/{id}/re_run"),
            &json!({"tasks": ["check"]}),
        )
        .await?;
    assert_eq!(status, 201, "{again}");
    assert_eq!(again["context"]["re_run"]["ref"], id);
    assert_eq!(
        again["context"]["workflow_execution"], failed["context"]["workflow_execution"],
        "a re-run from tasks continues the same workflow execution"
    );
    let again_id = again["id"].as_str().unwrap();
    let done = node.finished(again_id).await?;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["result"], json!({"output": {"said": "from-first"}}));
    assert_eq!(
        tasks_of(&node, again_id).await?,
        owned(&[("check", "succeeded"), ("last", "succeeded")]),
        "`first` is not run again"
    );
    Ok(())
}

#[tokio::test]
async fn workflow_expressions_read_the_datastore() -> Result<()> {
    let packs = tempfile::tempdir()?;
    write_pack(
        packs.path(),
        "kv",
        &[
            ("pack.yaml", "name: kv\nversion: 0.1.0\n"),
            (
                "actions/flow.yaml",
                "name: flow\nrunner_type: orquesta\nentry_point: workflows/flow.yaml\n",
            ),
            (
                "actions/workflows/flow.yaml",
                "version: 1.0\ntasks:\n  t:\n    action: core.noop\noutput:\n  - region: <% st2kv('system.region') %>\n  - token: \"{{ st2kv('system.token', decrypt=true) }}\"\n  - sealed: <% st2kv('system.token') != 'hunter2' %>\n",
            ),
        ],
    )?;
    let node = TestNode::start(vec![packs.path().to_path_buf()]).await?;
    for (name, value, secret) in [("region", "eu-west", false), ("token", "hunter2", true)] {
        let (status, body) = node
            .call(
                &node.http,
                reqwest::Method::PUT,
                &format!("keys/{name}"),
                Some(&json!({"name": name, "value": value, "secret": secret})),
            )
            .await?;
        assert_eq!(status, 200, "{body}");
    }
    let done = poll(Duration::from_secs(30), || async {
        let (_, done) = run(&node, "kv.flow", json!({})).await?;
        // The node's datastore copy follows writes within milliseconds.
        Ok((done["status"] == "succeeded").then_some(done))
    })
    .await?;
    assert_eq!(
        done["result"]["output"],
        json!({"region": "eu-west", "token": "hunter2", "sealed": true})
    );
    Ok(())
}

#[tokio::test]
async fn a_task_end_whose_report_was_lost_is_found_by_the_sweep_after_a_restart() -> Result<()> {
    let mut node = TestNode::start(vec![]).await?;
    let (_, created) = node
        .post(
            "executions",
            &json!({"action": "examples.orquesta-ask", "parameters": {"host": "db-2"}}),
        )
        .await?;
    let id = created["id"].as_str().unwrap().to_string();
    reaches(&node, &id, "paused").await?;
    let (_, open) = node.get("inquiries").await?;
    let inquiry = open[0]["id"].as_str().unwrap().to_string();
    node.stop().await;
    // The inquiry's answer is stored, but its writer dies before telling
    // the workflow: the record is written without `Bus::update_execution`.
    let config = node.config.clone();
    let client = async_nats::connect(node.nats.url()).await?;
    let layout = squall_actors::node::layout(1);
    let bus = squall_actors::bus::Bus::open(client, layout, config.cluster.partitions).await?;
    let (mut answered, _) = bus.execution(&inquiry).await?.expect("the inquiry");
    answered.result = json!({"response": {"approved": true}});
    answered.transition(
        squall_domain::execution::Status::Succeeded,
        squall_domain::time::now(),
    );
    bus.executions.put(&inquiry, &answered).await?;
    // A restarted node's workflow partition reconciles on start.
    let restarted = squall_tests::start_node(&config).await?;
    let done = poll(Duration::from_secs(30), || async {
        let (rec, _) = restarted.bus.execution(&id).await?.expect("the workflow");
        Ok(rec.status.is_completed().then_some(rec))
    })
    .await?;
    assert_eq!(done.status, squall_domain::execution::Status::Succeeded);
    assert_eq!(done.result["output"]["outcome"], "draining db-2");
    restarted.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_task_past_its_timeout_is_stopped_and_its_workflow_handles_it() -> Result<()> {
    let packs = tempfile::tempdir()?;
    write_pack(
        packs.path(),
        "slow",
        &[
            ("pack.yaml", "name: slow\nversion: 0.1.0\n"),
            (
                "actions/flow.yaml",
                "name: flow\nrunner_type: orquesta\nentry_point: workflows/flow.yaml\n",
            ),
            (
                "actions/workflows/flow.yaml",
                "version: 1.0\ntasks:\n  hang:\n    action: core.local cmd=\"sleep 60\" timeout=1\n    next:\n      - when: <% failed() %>\n        publish: why=<% result().error %>\n        do: page\n  page:\n    action: core.echo\n    input:\n      message: \"paging - <% ctx(why) %>\"\n    next:\n      - publish: paged=<% result().stdout %>\noutput:\n  - paged: <% ctx(paged) %>\n",
            ),
        ],
    )?;
    let node = TestNode::start(vec![packs.path().to_path_buf()]).await?;
    let (_, done) = run(&node, "slow.flow", json!({})).await?;
    assert_eq!(done["status"], "succeeded", "remediated: {done}");
    assert_eq!(
        done["result"]["output"]["paged"],
        "paging - Action failed to complete in 1 seconds"
    );
    let id = done["id"].as_str().unwrap();
    assert_eq!(
        tasks_of(&node, id).await?,
        owned(&[("hang", "timeout"), ("page", "succeeded")])
    );
    Ok(())
}

/// A child workflow, `lost.child`, whose two tasks each wait for a file in
/// `dir`, under an Orquesta parent and under a chain.
fn lost_notice_pack(root: &std::path::Path) -> Result<()> {
    let wait = |name: &str| {
        format!("    action: core.local\n    input:\n      cmd: while [ ! -f <% ctx().dir %>/{name} ]; do sleep 0.05; done\n      timeout: 120\n")
    };
    write_pack(
        root,
        "lost",
        &[
            ("pack.yaml", "name: lost\nversion: 0.1.0\n"),
            (
                "actions/child.yaml",
                "name: child\nrunner_type: orquesta\nentry_point: workflows/child.yaml\nparameters:\n  dir: {type: string, required: true}\n",
            ),
            (
                "actions/workflows/child.yaml",
                &format!(
                    "version: 1.0\ninput:\n  - dir\ntasks:\n  first:\n{}    next:\n      - when: <% succeeded() %>\n        do: second\n  second:\n{}",
                    wait("first"),
                    wait("second")
                ),
            ),
            (
                "actions/parent.yaml",
                "name: parent\nrunner_type: orquesta\nentry_point: workflows/parent.yaml\nparameters:\n  dir: {type: string, required: true}\n",
            ),
            (
                "actions/workflows/parent.yaml",
                "version: 1.0\ninput:\n  - dir\ntasks:\n  child:\n    action: lost.child\n    input:\n      dir: <% ctx().dir %>\n",
            ),
            (
                "actions/chain.yaml",
                "name: chain\nrunner_type: action-chain\nentry_point: chains/chain.yaml\nparameters:\n  dir: {type: string, required: true}\n",
            ),
            (
                "actions/chains/chain.yaml",
                "chain:\n  - name: child\n    ref: lost.child\n    parameters:\n      dir: \"{{ dir }}\"\n",
            ),
        ],
    )?;
    Ok(())
}

/// A paused child resumed on its own tells its parent, which runs again.
/// When that notice is lost (the child's `running` was written, and its
/// writer died before telling the parent), the sweep finds the parent
/// `paused` over a running child after the node restarts and tells it
/// again: an Orquesta parent and a chain parent both run again while their
/// child still runs, and end once it has, each task having run once.
#[tokio::test]
async fn a_child_resumed_whose_notice_was_lost_resumes_its_parent_after_a_restart() -> Result<()> {
    use squall_domain::execution::Status;
    let packs = tempfile::tempdir()?;
    lost_notice_pack(packs.path())?;
    let mut node = TestNode::start(vec![packs.path().to_path_buf()]).await?;
    let mut parents = Vec::new();
    for action in ["lost.parent", "lost.chain"] {
        let dir = packs.path().join(action);
        std::fs::create_dir(&dir)?;
        let (status, created) = node
            .post(
                "executions",
                &json!({"action": action, "parameters": {"dir": dir.display().to_string()}}),
            )
            .await?;
        anyhow::ensure!(status == 201, "{status} {created}");
        let id = created["id"].as_str().unwrap().to_string();
        let child = direct_child(&node, &id).await?;
        poll(Duration::from_secs(30), || async {
            Ok((tasks_of(&node, &child).await? == owned(&[("first", "running")])).then_some(()))
        })
        .await?;
        parents.push((id, child, dir));
    }
    // Each child is paused on its own (not through its parent): it pauses
    // once `first` has ended, and so does its parent.
    for (id, child, dir) in &parents {
        let (status, body) = node
            .call(
                &node.http,
                reqwest::Method::PUT,
                &format!("executions/{child}"),
                Some(&json!({"status": "pausing"})),
            )
            .await?;
        assert_eq!(status, 200, "{body}");
        std::fs::write(dir.join("first"), "go")?;
        reaches(&node, child, "paused").await?;
        reaches(&node, id, "paused").await?;
    }
    node.stop().await;
    // Each child is resumed, and its `running` written by a writer that
    // dies before telling the parent: the record is written without
    // `Bus::update_execution`.
    let client = async_nats::connect(node.nats.url()).await?;
    let layout = squall_actors::node::layout(1);
    let bus = squall_actors::bus::Bus::open(client, layout, node.config.cluster.partitions).await?;
    for (_, child, _) in &parents {
        squall_actors::executions::resume(&bus, child, "test").await?;
        let (mut running, _) = bus.execution(child).await?.expect("the child");
        assert_eq!(running.status, Status::Resuming);
        running.transition(Status::Running, squall_domain::time::now());
        bus.executions.put(child, &running).await?;
    }
    // After the restart the parents run again while their children do.
    node.restart().await?;
    for (id, child, _) in &parents {
        reaches(&node, id, "running").await?;
        poll(Duration::from_secs(30), || async {
            Ok((tasks_of(&node, child).await?
                == owned(&[("first", "succeeded"), ("second", "running")]))
            .then_some(()))
        })
        .await?;
        let (_, parent) = node.get(&format!("executions/{id}")).await?;
        assert_eq!(parent["status"], "running", "{parent}");
    }
    for (id, child, dir) in &parents {
        std::fs::write(dir.join("second"), "go")?;
        let done = node.finished(id).await?;
        assert_eq!(done["status"], "succeeded", "{done}");
        assert_eq!(
            tasks_of(&node, child).await?,
            owned(&[("first", "succeeded"), ("second", "succeeded")])
        );
        let (_, kids) = node
            .get(&format!("executions/{id}/children?depth=1"))
            .await?;
        assert_eq!(kids.as_array().map(Vec::len), Some(1), "{kids}");
    }
    Ok(())
}

/// The id of `id`'s one direct child, once it has one.
async fn direct_child(node: &TestNode, id: &str) -> Result<String> {
    poll(Duration::from_secs(30), || async {
        let (_, kids) = node
            .get(&format!("executions/{id}/children?depth=1"))
            .await?;
        Ok(kids[0]["id"].as_str().map(str::to_string))
    })
    .await
}

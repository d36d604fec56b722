//! The v1 routes beyond the basics: execution filters, sorting, attribute
//! selection, children and output; actions CRUD; triggers and re-emit;
//! policies; inquiries; `PUT /executions/{id}`.

use std::time::Duration;

use anyhow::Result;
use reqwest::Method;
use serde_json::{json, Value};
use squall_tests::{poll, write_pack, TestNode};

fn fault(body: &Value) -> &str {
    body["faultstring"].as_str().unwrap_or_default()
}

fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|e| e["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

async fn run(node: &TestNode, body: Value) -> Result<String> {
    let (status, e) = node.post("executions", &body).await?;
    anyhow::ensure!(status == 201, "{status} {e}");
    let id = e["id"].as_str().unwrap_or_default().to_string();
    node.finished(&id).await?;
    Ok(id)
}

async fn total(node: &TestNode, path: &str) -> Result<(String, Vec<String>)> {
    let r = node
        .http
        .get(format!("{}/{path}", node.base))
        .send()
        .await?;
    anyhow::ensure!(r.status() == 200, "{path}: {}", r.status());
    let count = r.headers()["X-Total-Count"].to_str()?.to_string();
    let body: Value = r.json().await?;
    Ok((count, ids(&body)))
}

#[tokio::test]
async fn execution_lists_filter_sort_select_and_nest() -> Result<()> {
    let node = TestNode::start(vec![]).await?;
    let a = run(&node, json!({"action": "core.noop"})).await?;
    let b = run(
        &node,
        json!({"action": "core.local", "parameters": {"cmd": "echo hi"}}),
    )
    .await?;
    let c = run(
        &node,
        json!({"action": "core.noop", "context": {"parent": {"execution_id": a}}}),
    )
    .await?;
    let d = run(
        &node,
        json!({"action": "core.noop", "context": {"parent": {"execution_id": c}}}),
    )
    .await?;

    assert_eq!(
        total(&node, "executions").await?,
        ("4".into(), vec![d.clone(), c.clone(), b.clone(), a.clone()])
    );
    assert_eq!(
        total(&node, "executions?sort_asc=True").await?.1,
        vec![a.clone(), b.clone(), c.clone(), d.clone()]
    );
    assert_eq!(
        total(&node, "executions?sort=start_timestamp&limit=1&offset=1").await?,
        ("4".into(), vec![b.clone()])
    );
    assert_eq!(
        total(&node, "executions?action=core.local").await?,
        ("1".into(), vec![b.clone()])
    );
    assert_eq!(
        total(&node, "executions?parent=null").await?,
        ("2".into(), vec![b.clone(), a.clone()])
    );
    assert_eq!(
        total(&node, &format!("executions?parent={a}")).await?.1,
        vec![c.clone()]
    );
    assert_eq!(
        total(&node, "executions?status=succeeded&runner=noop&user=admin")
            .await?
            .0,
        "3"
    );
    assert_eq!(total(&node, "executions?user=nobody").await?.0, "0");
    let (_, first) = node.get(&format!("executions/{a}")).await?;
    let (_, last) = node.get(&format!("executions/{d}")).await?;
    let window = format!(
        "executions?timestamp_gt={}&timestamp_lt={}",
        first["start_timestamp"].as_str().unwrap(),
        last["start_timestamp"].as_str().unwrap()
    );
    assert_eq!(total(&node, &window).await?.1, vec![c.clone(), b.clone()]);

    // Attribute selection, dotted paths included.
    let (_, picked) = node
        .get("executions?limit=1&include_attributes=status,action.ref")
        .await?;
    assert_eq!(
        picked[0],
        json!({"id": d, "status": "succeeded", "action": {"ref": "core.noop"}})
    );
    let (_, trimmed) = node
        .get(&format!("executions/{b}?exclude_attributes=result,action"))
        .await?;
    assert!(trimmed.get("result").is_none() && trimmed.get("action").is_none());
    assert_eq!(trimmed["status"], "succeeded");

    // Children, all levels or some.
    let (_, kids) = node.get(&format!("executions/{a}/children")).await?;
    assert_eq!(ids(&kids), vec![c.clone(), d.clone()]);
    let (_, kids) = node
        .get(&format!("executions/{a}/children?depth=1"))
        .await?;
    assert_eq!(ids(&kids), vec![c.clone()]);
    let (_, none) = node.get(&format!("executions/{b}/children")).await?;
    assert_eq!(none, json!([]));

    // Each bad query is a 400 naming what to fix; unknown ids are 404s.
    for (path, says) in [
        (
            "executions?include_attributes=a&exclude_attributes=b",
            "mutually exclusive",
        ),
        ("executions?status=done", "status"),
        ("executions?timestamp_gt=yesterday", "timestamp_gt"),
        ("executions?sort=status", "sort"),
        ("executions?limit=many", "limit"),
        ("executions/x/children?depth=-2", "depth"),
    ] {
        let (status, body) = node.get(path).await?;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(fault(&body).contains(says), "{path}: {body}");
    }
    let (status, _) = node
        .get("executions/00000000ffffffffffffffff/children")
        .await?;
    assert_eq!(status, 404);
    let (status, body) = node
        .post(
            "executions",
            &json!({"action": "core.noop", "context": {"parent": {"execution_id": "nope"}}}),
        )
        .await?;
    assert_eq!(status, 400, "{body}");
    assert!(
        fault(&body).contains("context.parent.execution_id"),
        "{body}"
    );
    assert_eq!(total(&node, "executions").await?.0, "4");
    Ok(())
}

/// The stream's last event is `EOF`, after every output event.
fn ends_with_eof(events: &str) -> bool {
    let eof = events.rfind("event: EOF");
    eof.is_some() && eof > events.rfind("output__create")
}

#[tokio::test]
async fn output_is_served_as_text_and_followed_live() -> Result<()> {
    let node = TestNode::start(vec![]).await?;
    let (status, e) = node
        .post(
            "executions",
            &json!({"action": "core.local", "parameters": {
                "cmd": "echo out; echo err >&2; sleep 1; echo late"}}),
        )
        .await?;
    assert_eq!(status, 201);
    let id = e["id"].as_str().unwrap().to_string();

    // Follow it while it runs: every chunk, then EOF once it has finished.
    let stream = node
        .http
        .get(format!("{}/v1/executions/{id}/output", node.stream_root()?))
        .timeout(Duration::from_secs(30))
        .send()
        .await?;
    assert_eq!(stream.status(), 200);
    let events = stream.text().await?;
    assert!(
        events.contains("event: st2.execution.output__create"),
        "{events}"
    );
    for line in ["out", "err", "late"] {
        assert!(
            events.contains(&format!("\"data\":\"{line}\\n\"")),
            "{line} in {events}"
        );
    }
    assert!(ends_with_eof(&events), "{events}");
    node.finished(&id).await?;

    let text = |q: &'static str| {
        let url = format!("{}/executions/{id}/output{q}", node.base);
        let http = node.http.clone();
        async move {
            let r = http.get(url).send().await?;
            anyhow::ensure!(r.status() == 200, "{}", r.status());
            Ok::<_, anyhow::Error>(r.text().await?)
        }
    };
    let all = text("").await?;
    assert!(all.ends_with("late\n"), "{all:?}");
    assert!(all.contains("out\n") && all.contains("err\n"), "{all:?}");
    assert_eq!(text("?output_type=stdout").await?, "out\nlate\n");
    assert_eq!(text("?output_type=stderr").await?, "err\n");

    // A finished execution's stream replays and ends at once.
    let replay = node
        .http
        .get(format!(
            "{}/stream/v1/executions/{id}/output?output_type=stderr",
            node.root
        ))
        .timeout(Duration::from_secs(30))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        replay.contains("err") && !replay.contains("late"),
        "{replay}"
    );
    assert!(ends_with_eof(&replay), "{replay}");

    let (status, body) = node
        .get(&format!("executions/{id}/output?output_type=both"))
        .await?;
    assert_eq!(status, 400, "{body}");
    let (status, _) = node
        .get("executions/00000000ffffffffffffffff/output")
        .await?;
    assert_eq!(status, 404);
    Ok(())
}

#[tokio::test]
async fn actions_are_created_changed_run_and_deleted() -> Result<()> {
    let node = TestNode::start(vec![]).await?;
    let action = json!({
        "name": "hello", "pack": "default", "runner_type": "local-shell-cmd",
        "description": "Says hello.",
        "parameters": {"cmd": {"type": "string", "default": "echo hello {{ who }}"},
                       "who": {"type": "string", "default": "world"}}
    });
    let (status, created) = node.post("actions", &action).await?;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["ref"], "default.hello");
    let id = created["id"].as_str().unwrap().to_string();

    let ran = run(
        &node,
        json!({"action": "default.hello", "parameters": {"who": "ops"}}),
    )
    .await?;
    let (_, done) = node.get(&format!("executions/{ran}")).await?;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["result"]["stdout"], "hello ops");

    let (status, body) = node.post("actions", &action).await?;
    assert_eq!(status, 409, "{body}");
    let mut unknown = action.clone();
    unknown["colour"] = json!("red");
    let (status, body) = node.post("actions", &unknown).await?;
    assert_eq!(status, 400, "{body}");
    assert!(fault(&body).contains("colour"), "{body}");
    let (status, body) = node
        .post(
            "actions",
            &json!({"name": "x", "pack": "default", "runner_type": "teleport"}),
        )
        .await?;
    assert_eq!(status, 400, "{body}");
    assert!(fault(&body).contains("runner_type"), "{body}");

    // Replace by id (as StackStorm's CLI sends it) and by ref.
    let mut changed = created.clone();
    changed["description"] = json!("Says hello, politely.");
    let (status, body) = node
        .call(
            &node.http,
            Method::PUT,
            &format!("actions/{id}"),
            Some(&changed),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    let (_, got) = node.get("actions/default.hello").await?;
    assert_eq!(got["description"], "Says hello, politely.");
    let mut renamed = changed.clone();
    renamed["name"] = json!("other");
    let (status, body) = node
        .call(
            &node.http,
            Method::PUT,
            "actions/default.hello",
            Some(&renamed),
        )
        .await?;
    assert_eq!(status, 400, "{body}");
    let (_, listed) = node.get("actions?pack=default").await?;
    assert_eq!(ids(&listed), vec![id.clone()]);

    let observer = node.user("otto", "observer").await?;
    let (status, _) = node
        .call(&observer, Method::POST, "actions", Some(&action))
        .await?;
    assert_eq!(status, 403);
    let (status, _) = node
        .call(&observer, Method::DELETE, "actions/default.hello", None)
        .await?;
    assert_eq!(status, 403);

    let (status, _) = node
        .call(&node.http, Method::DELETE, "actions/default.hello", None)
        .await?;
    assert_eq!(status, 204);
    poll(Duration::from_secs(10), || async {
        Ok((node.get("actions/default.hello").await?.0 == 404).then_some(()))
    })
    .await?;
    let (status, _) = node
        .call(&node.http, Method::DELETE, "actions/default.hello", None)
        .await?;
    assert_eq!(status, 404);
    Ok(())
}

const RETRY_POLICY: &str = "name: http.retry\nresource_ref: ops.ping\npolicy_type: action.retry\nparameters:\n  retry_on: timeout\n  max_retry_count: 2\n  delay: 2\n";

#[tokio::test]
async fn triggers_policies_and_re_emitted_instances() -> Result<()> {
    let packs = tempfile::tempdir()?;
    write_pack(
        packs.path(),
        "ops",
        &[
            ("pack.yaml", "name: ops\nversion: 0.1.0\n"),
            ("actions/ping.yaml", "name: ping\nrunner_type: noop\n"),
            ("policies/retry.yaml", RETRY_POLICY),
        ],
    )?;
    let node = TestNode::start(vec![packs.path().to_path_buf()]).await?;

    // Triggers: what rules listen to (the examples pack's alert webhook).
    let (_, triggers) = node.get("triggers").await?;
    let hook = triggers
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == "core.st2.webhook")
        .cloned()
        .unwrap_or_else(|| panic!("no webhook trigger in {triggers}"));
    assert_eq!(hook["parameters"]["url"], "alerts");
    let (status, webhook) = node.get("webhooks/alerts").await?;
    assert_eq!(
        (status, &webhook["type"]),
        (200, &json!("core.st2.webhook"))
    );
    let (status, body) = node.get("webhooks/nowhere").await?;
    assert_eq!(status, 404, "{body}");
    let (status, one) = node
        .get(&format!("triggers/{}", hook["id"].as_str().unwrap()))
        .await?;
    assert_eq!((status, &one["ref"]), (200, &hook["ref"]));

    // Policies and their types.
    let (_, policies) = node.get("policies?resource_ref=ops.ping").await?;
    assert_eq!(policies[0]["ref"], "ops.http.retry", "{policies}");
    assert_eq!(policies[0]["parameters"]["max_retry_count"], 2);
    let (status, _) = node.get("policies/ops.http.retry").await?;
    assert_eq!(status, 200);
    let (_, types) = node.get("policytypes").await?;
    assert_eq!(types.as_array().map(Vec::len), Some(3));
    let (_, retry) = node.get("policytypes/action.retry").await?;
    assert_eq!(
        retry["parameters"]["retry_on"]["enum"],
        json!(["failure", "timeout"])
    );

    // A policy with a bad parameter stops its pack, naming file and field.
    write_pack(
        packs.path(),
        "broken",
        &[
            ("pack.yaml", "name: broken\nversion: 0.1.0\n"),
            (
                "policies/retry.yaml",
                &RETRY_POLICY.replace("max_retry_count: 2", "max_retry_count: 9"),
            ),
        ],
    )?;
    let (status, body) = node
        .post("packs/register", &json!({"packs": ["broken"]}))
        .await?;
    assert_eq!(status, 400, "{body}");
    assert!(
        fault(&body).contains("broken/policies/retry.yaml:6: parameters.max_retry_count"),
        "{body}"
    );

    // A workflow with problems registers (as in StackStorm); the answer
    // lists its problems with file, line and field.
    write_pack(
        packs.path(),
        "shaky",
        &[
            ("pack.yaml", "name: shaky\nversion: 0.1.0\n"),
            (
                "actions/flow.yaml",
                "name: flow\nrunner_type: orquesta\nentry_point: workflows/flow.yaml\n",
            ),
            (
                "actions/workflows/flow.yaml",
                "version: 1.0\ntasks:\n  a:\n    action: core.noop\n    next:\n      - do: nowhere\n",
            ),
        ],
    )?;
    let (status, body) = node
        .post("packs/register", &json!({"packs": ["shaky"]}))
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["actions"], 1);
    let warnings = body["warnings"].as_array().cloned().unwrap_or_default();
    assert_eq!(warnings.len(), 1, "{body}");
    let warning = warnings[0].as_str().unwrap_or_default();
    assert!(
        warning.starts_with("shaky/actions/workflows/flow.yaml:6: tasks.a.next[0].do:")
            && warning.contains("nowhere"),
        "{warning}"
    );

    // Re-emit: the same trigger and payload again, as a new instance.
    let fired = node
        .http
        .post(format!("{}/webhooks/alerts", node.base))
        .header("St2-Trace-Tag", "ticket-42")
        .json(&json!({"severity": "critical", "host": "db-2"}))
        .send()
        .await?;
    assert_eq!(fired.status(), 202);
    node.rules_idle().await?;
    // The webhook's instance (the execution's actiontrigger may be newer).
    let (_, instances) = node.get("triggerinstances?limit=5").await?;
    let original = instances
        .as_array()
        .and_then(|l| l.iter().find(|i| i["trigger_type"] == "core.st2.webhook"))
        .and_then(|i| i["id"].as_str())
        .unwrap()
        .to_string();
    let (status, body) = node
        .post(&format!("triggerinstances/{original}/re_emit"), &json!({}))
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["payload"]["__context"]["original_id"], original);
    let again = body["id"].as_str().unwrap().to_string();
    node.rules_idle().await?;
    let (_, copy) = node.get(&format!("triggerinstances/{again}")).await?;
    assert_eq!(copy["payload"]["body"]["host"], "db-2");
    assert_eq!(
        total(&node, "executions?rule=examples.alert_diagnose")
            .await?
            .0,
        "2"
    );
    let (_, by_instance) = node
        .get(&format!("executions?trigger_instance={again}"))
        .await?;
    assert_eq!(by_instance.as_array().map(Vec::len), Some(1));
    // The trace tag travels from the webhook into the execution's context.
    assert_eq!(
        by_instance[0]["context"]["trace_context"]["trace_tag"],
        "ticket-42"
    );
    let (status, _) = node
        .post(
            "triggerinstances/00000000ffffffffffffffff/re_emit",
            &json!({}),
        )
        .await?;
    assert_eq!(status, 404);
    Ok(())
}

async fn ask(node: &TestNode, parameters: Value) -> Result<String> {
    let (status, e) = node
        .post(
            "executions",
            &json!({"action": "core.ask", "parameters": parameters}),
        )
        .await?;
    anyhow::ensure!(status == 201, "{status} {e}");
    let id = e["id"].as_str().unwrap().to_string();
    poll(Duration::from_secs(30), || async {
        let (_, e) = node.get(&format!("executions/{id}")).await?;
        Ok((e["status"] == "pending").then_some(()))
    })
    .await?;
    Ok(id)
}

#[tokio::test]
async fn inquiries_wait_validate_answer_and_expire() -> Result<()> {
    let node = TestNode::start(vec![]).await?;
    let schema = json!({"type": "object", "properties": {
        "approve": {"type": "boolean", "required": true},
        "reason": {"type": "string"}}});
    let id = ask(&node, json!({"schema": schema, "route": "ops"})).await?;

    let (_, open) = node.get("inquiries").await?;
    assert_eq!(ids(&open), vec![id.clone()]);
    assert_eq!(open[0]["schema"], schema);
    assert_eq!(open[0]["route"], "ops");
    assert_eq!(open[0]["ttl"], 1440);
    node.rules_idle().await?;
    let (_, instances) = node.get("triggerinstances").await?;
    assert!(
        instances
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["trigger_type"] == "core.st2.generic.inquiry"
                && i["payload"] == json!({"id": id, "route": "ops"})),
        "{instances}"
    );

    let path = format!("inquiries/{id}");
    for (body, says) in [
        (json!({"response": {"approve": "yes"}}), "response.approve"),
        (json!({"response": {}}), "response.approve: is required"),
        (json!({"response": "yes"}), "response: must be an object"),
        (json!({"id": "other", "response": {"approve": true}}), "id"),
    ] {
        let (status, err) = node
            .call(&node.http, Method::PUT, &path, Some(&body))
            .await?;
        assert_eq!(status, 400, "{body}: {err}");
        assert!(fault(&err).contains(says), "{body}: {err}");
    }
    let observer = node.user("otto", "observer").await?;
    let answer = json!({"id": id, "response": {"approve": true}});
    let (status, _) = node
        .call(&observer, Method::PUT, &path, Some(&answer))
        .await?;
    assert_eq!(status, 403);
    let (status, body) = node
        .call(&node.http, Method::PUT, &path, Some(&answer))
        .await?;
    assert_eq!(status, 200, "{body}");
    let (_, done) = node.get(&format!("executions/{id}")).await?;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["result"]["response"], json!({"approve": true}));
    let (status, body) = node
        .call(&node.http, Method::PUT, &path, Some(&answer))
        .await?;
    assert_eq!(status, 409, "{body}");
    assert_eq!(node.get("inquiries").await?.1, json!([]));

    // Only the users (or roles) an inquiry names may answer it.
    let for_bob = ask(&node, json!({"users": ["bob"]})).await?;
    let carol = node.user("carol", "operator").await?;
    let bob = node.user("bob", "operator").await?;
    let path = format!("inquiries/{for_bob}");
    let yes = json!({"response": {"continue": true}});
    let (status, body) = node.call(&carol, Method::PUT, &path, Some(&yes)).await?;
    assert_eq!(status, 403, "{body}");
    assert!(fault(&body).contains("bob"), "{body}");
    let (status, body) = node.call(&bob, Method::PUT, &path, Some(&yes)).await?;
    assert_eq!(status, 200, "{body}");

    // Not every execution is an inquiry.
    let noop = run(&node, json!({"action": "core.noop"})).await?;
    let (status, body) = node.get(&format!("inquiries/{noop}")).await?;
    assert_eq!(status, 404, "{body}");

    // Expiry: past its ttl (minutes) an inquiry times out; ttl 0 never does.
    let short = ask(&node, json!({"ttl": 1})).await?;
    let forever = ask(&node, json!({"ttl": 0})).await?;
    let bus = node.node.as_ref().unwrap().bus.clone();
    let history = node.node.as_ref().unwrap().engine().shared.history.clone();
    let history = history.expect("an API node's history");
    let later = chrono::Utc::now() + chrono::Duration::minutes(2);
    assert_eq!(
        squall_actors::inquiries::open_ids(&history),
        vec![forever.clone(), short.clone()]
    );
    let expired = squall_actors::inquiries::expire_due(&bus, &history, later).await?;
    assert_eq!(expired, 1);
    let (_, timed_out) = node.get(&format!("executions/{short}")).await?;
    assert_eq!(timed_out["status"], "timeout");
    assert!(timed_out["result"]["error"]
        .as_str()
        .unwrap()
        .contains("ttl"));
    let (_, waiting) = node.get(&format!("executions/{forever}")).await?;
    assert_eq!(waiting["status"], "pending");
    Ok(())
}

#[tokio::test]
async fn execution_status_updates_through_put() -> Result<()> {
    let node = TestNode::start(vec![]).await?;
    let noop = run(&node, json!({"action": "core.noop"})).await?;
    let put = |id: String, body: Value| {
        let node = &node;
        async move {
            node.call(
                &node.http,
                Method::PUT,
                &format!("executions/{id}"),
                Some(&body),
            )
            .await
        }
    };
    let (status, body) = put(noop.clone(), json!({"status": "paused"})).await?;
    assert_eq!(status, 400, "{body}");
    assert!(fault(&body).contains("cannot pause"), "{body}");
    let (status, body) = put(noop.clone(), json!({"status": "finished"})).await?;
    assert_eq!(status, 400, "{body}");
    let (status, body) = put(noop.clone(), json!({"status": "running"})).await?;
    assert_eq!(status, 400, "{body}");
    let (status, body) = put(noop.clone(), json!({"status": "failed"})).await?;
    assert_eq!(status, 409, "{body}");

    // A pending execution takes its outcome from outside.
    let waiting = ask(&node, json!({})).await?;
    let (status, body) = put(
        waiting.clone(),
        json!({"status": "failed", "result": {"error": "nobody answered"}}),
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    let (_, done) = node.get(&format!("executions/{waiting}")).await?;
    assert_eq!(done["status"], "failed");
    assert_eq!(done["result"]["error"], "nobody answered");
    let (status, _) = put(
        "00000000ffffffffffffffff".into(),
        json!({"status": "failed"}),
    )
    .await?;
    assert_eq!(status, 404);
    Ok(())
}

#[tokio::test]
async fn every_documented_route_is_served_and_guarded() -> Result<()> {
    let node = TestNode::start(vec![]).await?;
    // The document itself needs no credentials.
    let r = reqwest::get(format!("{}/api/v1/openapi.json", node.root)).await?;
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().await?;
    let anonymous = reqwest::Client::new();
    let observer = node.user("olive", "observer").await?;
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        // Path parameters get values no route treats specially.
        let concrete: String = path
            .split('/')
            .map(|part| {
                if part.starts_with('{') {
                    "00000000ffffffffffffffff"
                } else {
                    part
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        for method in ["get", "post", "put", "delete"] {
            let Some(operation) = item.get(method) else {
                continue;
            };
            let public = operation["security"] == json!([]);
            let method = Method::from_bytes(method.to_uppercase().as_bytes())?;
            let url = format!("{}{concrete}", node.root);
            // Credentials first: none is a 401; an observer may only read,
            // and what the document says observers may do.
            if !public {
                let r = anonymous.request(method.clone(), &url).send().await?;
                assert_eq!(r.status(), 401, "anonymous {method} {path}");
            }
            let for_observers = operation["x-required-role"] == "observer";
            if !public && method != Method::GET && path != "/auth/v1/tokens" {
                let r = observer
                    .request(method.clone(), &url)
                    .json(&json!({}))
                    .send()
                    .await?;
                let status = r.status();
                if for_observers {
                    assert!(status != 403 && status != 401, "observer {method} {path}");
                } else {
                    assert_eq!(status, 403, "observer {method} {path}");
                }
            }
            let mut req = node.http.request(method.clone(), &url);
            if method == Method::POST || method == Method::PUT {
                req = req.json(&json!({}));
            }
            // Headers are enough (event streams never end by themselves).
            let r = req.send().await?;
            let status = r.status().as_u16();
            assert_ne!(status, 405, "{method} {path}");
            if status == 404 {
                let body: Value = r.json().await.unwrap_or(Value::Null);
                assert!(
                    !fault(&body).starts_with("no route"),
                    "{method} {path}: {body}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 50, "checked only {checked} operations");
    Ok(())
}

#[tokio::test]
async fn concurrent_changes_to_one_pack_all_land() -> Result<()> {
    let node = TestNode::start(vec![]).await?;
    let creates = (0..24).map(|i| {
        let rule = json!({
            "name": format!("r{i}"), "pack": "busy",
            "trigger": {"type": "core.st2.webhook", "parameters": {"url": format!("busy{i}")}},
            "action": {"ref": "core.noop"},
        });
        let node = &node;
        async move { node.post("rules", &rule).await }
    });
    for (status, body) in futures::future::try_join_all(creates).await? {
        assert_eq!(status, 201, "{body}");
    }
    let (_, rules) = node.get("rules?pack=busy&limit=-1").await?;
    assert_eq!(rules.as_array().map(Vec::len), Some(24));
    Ok(())
}

#[tokio::test]
async fn workflows_are_inspected_through_the_api() -> Result<()> {
    let node = TestNode::start(vec![]).await?;
    let inspect = |body: &'static str| {
        let http = node.http.clone();
        let url = format!("{}/workflows/inspect", node.base);
        async move {
            let r = http
                .post(url)
                .header("content-type", "text/plain")
                .body(body)
                .send()
                .await?;
            let status = r.status().as_u16();
            Ok::<_, anyhow::Error>((status, r.json::<Value>().await?))
        }
    };
    let (status, found) = inspect("version: 1.0\ntasks:\n  a:\n    action: core.noop\n").await?;
    assert_eq!((status, found), (200, json!([])));
    let (status, found) = inspect(
        "version: 1.0\ntasks:\n  a:\n    action: core.noop\n    next:\n      - when: <% ctx(x) %>\n        do: b\n",
    )
    .await?;
    assert_eq!(status, 200);
    let kinds: Vec<&str> = found
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["type"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(kinds, vec!["context", "semantic"], "{found}");
    assert_eq!(found[1]["spec_path"], "tasks.a.next[0].do");
    assert_eq!(
        found[1]["schema_path"],
        "properties.tasks.patternProperties.^\\w+$.properties.next.items.properties.do"
    );
    assert_eq!(found[1]["line"], 7);
    let (status, body) = inspect("").await?;
    assert_eq!(status, 400, "{body}");
    Ok(())
}

//! REST API shapes and rejections: every bad input gets a JSON error a
//! person can act on, and nothing stored changes.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use squall_tests::{poll, TestNode};

fn fault(body: &Value) -> &str {
    body["faultstring"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn rejections_are_json_with_actionable_messages() -> Result<()> {
    let node = TestNode::start(vec![]).await?;

    // Malformed JSON.
    let r = node
        .http
        .post(format!("{}/executions", node.base))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 400);
    let body: Value = r.json().await?;
    assert!(fault(&body).contains("invalid JSON"), "{body}");

    // Wrong type for a field.
    let (status, body) = node.post("executions", &json!({"action": 5})).await?;
    assert_eq!(status, 400, "{body}");
    assert!(fault(&body).contains("action"), "{body}");

    // Unknown action.
    let (status, body) = node
        .post("executions", &json!({"action": "nope.nothing"}))
        .await?;
    assert_eq!(status, 404);
    assert!(fault(&body).contains("nope.nothing"), "{body}");

    // Missing required parameter, named.
    let (status, body) = node
        .post("executions", &json!({"action": "core.local"}))
        .await?;
    assert_eq!(status, 400);
    assert!(fault(&body).contains("cmd"), "{body}");

    // Overriding an immutable parameter.
    let (status, body) = node
        .post(
            "executions",
            &json!({"action": "core.echo", "parameters": {"message": "hi", "cmd": "rm -rf /"}}),
        )
        .await?;
    assert_eq!(status, 400);
    assert!(fault(&body).contains("cmd"), "{body}");

    // Unknown parameter.
    let (status, body) = node
        .post(
            "executions",
            &json!({"action": "core.noop", "parameters": {"bogus": 1}}),
        )
        .await?;
    assert_eq!(status, 400);
    assert!(fault(&body).contains("bogus"), "{body}");

    // A webhook nobody listens to.
    let (status, body) = node.post("webhooks/nobody-home", &json!({})).await?;
    assert_eq!(status, 404);
    assert!(fault(&body).contains("nobody-home"), "{body}");

    // The generic webhook without a trigger.
    let (status, body) = node.post("webhooks/st2", &json!({"payload": {}})).await?;
    assert_eq!(status, 400);
    assert!(fault(&body).contains("trigger"), "{body}");

    // A body over the limit.
    let big = "x".repeat(squall::api::MAX_BODY_BYTES + 1);
    let (status, body) = node
        .post(
            "webhooks/st2",
            &json!({"trigger": "a.b", "payload": {"x": big}}),
        )
        .await?;
    assert_eq!(status, 413, "{body}");

    // Bad query values.
    let (status, body) = node.get("executions?limit=0").await?;
    assert_eq!(status, 400);
    assert!(fault(&body).contains("limit"), "{body}");
    let (status, body) = node.get("executions?status=sleepy").await?;
    assert_eq!(status, 400);
    assert!(fault(&body).contains("sleepy"), "{body}");

    // Unknown things.
    for path in [
        "executions/0123456789abcdef01234567",
        "actions/core.nope",
        "rules/x.y",
        "triggerinstances/abc",
        "no/such/route",
    ] {
        let (status, body) = node.get(path).await?;
        assert_eq!(status, 404, "{path}");
        assert!(!fault(&body).is_empty(), "{path}: {body}");
    }

    // None of that stored anything.
    assert!(node.executions().await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn listing_is_newest_first_with_total_count_and_paging() -> Result<()> {
    let node = TestNode::start(vec![]).await?;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (status, e) = node
            .post("executions", &json!({"action": "core.noop"}))
            .await?;
        assert_eq!(status, 201);
        ids.push(e["id"].as_str().unwrap().to_string());
        node.finished(ids.last().unwrap()).await?;
    }
    let r = node
        .http
        .get(format!("{}/executions?limit=2", node.base))
        .send()
        .await?;
    assert_eq!(r.headers()["X-Total-Count"], "3");
    let page: Vec<Value> = r.json().await?;
    assert_eq!(page.len(), 2);
    let (_, rest) = node.get("executions?limit=2&offset=2").await?;
    assert_eq!(rest.as_array().unwrap().len(), 1);
    let listed: Vec<String> = page
        .iter()
        .chain(rest.as_array().unwrap())
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(listed, newest_first);
    let noop = &page[0];
    assert_eq!(noop["status"], "succeeded");
    assert_eq!(
        noop["result"],
        json!({"failed": false, "succeeded": true, "return_code": 0})
    );
    assert!(noop["start_timestamp"].as_str().unwrap().ends_with('Z'));

    // The same routes answer under StackStorm's per-service prefix.
    let addr = node.base.trim_end_matches("/api/v1");
    let r = node
        .http
        .get(format!("{addr}/v1/executions/{}", ids[0]))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 200);
    Ok(())
}

#[tokio::test]
async fn secret_parameters_are_masked_in_api_output() -> Result<()> {
    let node = TestNode::start(vec![]).await?;
    let (status, e) = node
        .post("executions", &json!({"action": "core.local", "parameters": {"cmd": "true", "sudo_password": "hunter2"}}))
        .await?;
    // core.local makes sudo immutable but leaves sudo_password settable.
    assert_eq!(status, 201, "{e}");
    assert_eq!(e["parameters"]["sudo_password"], "********");
    let id = e["id"].as_str().unwrap();
    let done = node.finished(id).await?;
    assert!(!done.to_string().contains("hunter2"));
    let (_, listed) = node.get("executions?limit=1").await?;
    assert_eq!(listed[0]["parameters"]["sudo_password"], "********");

    // Admins may ask to see them; anyone else asking is refused.
    let (status, shown) = node
        .get(&format!("executions/{id}?show_secrets=true"))
        .await?;
    assert_eq!(status, 200);
    assert_eq!(shown["parameters"]["sudo_password"], "hunter2");
    let operator = node.user("olga", "operator").await?;
    let (status, body) = node
        .call(
            &operator,
            reqwest::Method::GET,
            &format!("executions/{id}?show_secrets=true"),
            None,
        )
        .await?;
    assert_eq!(status, 403, "{body}");
    assert!(fault(&body).contains("admin"), "{body}");
    let (_, masked) = node
        .call(
            &operator,
            reqwest::Method::GET,
            &format!("executions/{id}"),
            None,
        )
        .await?;
    assert_eq!(masked["parameters"]["sudo_password"], "********");
    Ok(())
}

#[tokio::test]
async fn trigger_instances_enforcements_and_re_runs_are_queryable() -> Result<()> {
    let node = TestNode::start(vec![]).await?;
    // The examples pack's rule: critical alerts run examples.diagnose.
    let (status, _) = node
        .post(
            "webhooks/alerts",
            &json!({"severity": "critical", "host": "db-1", "check": "load"}),
        )
        .await?;
    assert_eq!(status, 202);
    node.rules_idle().await?;

    let (status, instances) = node.get("triggerinstances?limit=5").await?;
    assert_eq!(status, 200);
    // The execution's end (core.st2.generic.actiontrigger) may be newer.
    let instance = instances
        .as_array()
        .and_then(|l| l.iter().find(|i| i["trigger_type"] == "core.st2.webhook"))
        .context("the webhook's instance")?;
    assert_eq!(instance["payload"]["body"]["host"], "db-1");
    // The caller's credentials stay out of what rules and readers see.
    let headers = &instance["payload"]["headers_lower"];
    assert!(headers.get("content-type").is_some(), "{headers}");
    for secret in ["x-auth-token", "st2-api-key", "cookie", "authorization"] {
        assert!(headers.get(secret).is_none(), "{secret} in {headers}");
    }
    assert!(!instance.to_string().contains("X-Auth-Token"), "{instance}");
    assert_eq!(instance["status"], "processed");
    let (status, body) = node.get("triggerinstances?limit=0").await?;
    assert_eq!(status, 400, "{body}");

    let (_, enforcements) = node
        .get("ruleenforcements?rule_ref=examples.alert_diagnose")
        .await?;
    assert_eq!(
        enforcements.as_array().map(Vec::len),
        Some(1),
        "{enforcements}"
    );
    let enforcement = &enforcements[0];
    assert_eq!(enforcement["trigger_instance_id"], instance["id"]);
    let exec_id = enforcement["execution_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (status, one) = node
        .get(&format!(
            "ruleenforcements/{}",
            enforcement["id"].as_str().unwrap_or_default()
        ))
        .await?;
    assert_eq!(status, 200);
    assert_eq!(one, *enforcement);
    let (_, none) = node.get("ruleenforcements?rule_ref=examples.nope").await?;
    assert_eq!(none, json!([]));
    let (status, _) = node
        .get("ruleenforcements/0123456789abcdef01234567")
        .await?;
    assert_eq!(status, 404);

    // Re-run with one parameter changed; the rest are the original's.
    let original = node.finished(&exec_id).await?;
    let (status, rerun) = node
        .post(
            &format!("executions/{exec_id}/re_run"),
            &json!({"parameters": {"check": "disk"}}),
        )
        .await?;
    assert_eq!(status, 201, "{rerun}");
    assert_eq!(rerun["context"]["re_run"]["ref"], exec_id.as_str());
    assert_eq!(rerun["parameters"]["host"], original["parameters"]["host"]);
    assert_eq!(rerun["parameters"]["check"], "disk");
    let done = node
        .finished(rerun["id"].as_str().unwrap_or_default())
        .await?;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["result"]["stdout"]["check"], "disk");

    // An action with an immutable parameter re-runs too.
    let (_, echo) = node
        .post(
            "executions",
            &json!({"action": "core.echo", "parameters": {"message": "again"}}),
        )
        .await?;
    let echo_id = echo["id"].as_str().unwrap_or_default().to_string();
    node.finished(&echo_id).await?;
    let (status, body) = node
        .post(&format!("executions/{echo_id}/re_run"), &json!({}))
        .await?;
    assert_eq!(status, 201, "{body}");
    let (status, body) = node
        .post("executions/0123456789abcdef01234567/re_run", &json!({}))
        .await?;
    assert_eq!(status, 404, "{body}");
    let (status, body) = node
        .post(
            &format!("executions/{echo_id}/re_run"),
            &json!({"parameters": {"cmd": "rm -rf /"}}),
        )
        .await?;
    assert_eq!(status, 400, "{body}");
    assert!(fault(&body).contains("cmd"), "{body}");
    Ok(())
}

#[tokio::test]
async fn rules_are_created_changed_disabled_and_deleted_through_the_api() -> Result<()> {
    let node = TestNode::start(vec![]).await?;
    let rule = json!({
        "name": "on_deploy", "pack": "examples", "enabled": true,
        "trigger": {"type": "core.st2.webhook", "parameters": {"url": "deploy"}},
        "criteria": {"trigger.body.env": {"type": "equals", "pattern": "prod"}},
        "action": {"ref": "core.local", "parameters": {"cmd": "echo deploying {{ trigger.body.version }}"}}
    });
    let (status, created) = node.post("rules", &rule).await?;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["ref"], "examples.on_deploy");
    let (status, body) = node.post("rules", &rule).await?;
    assert_eq!(status, 409, "{body}");

    // Every node's catalog picks it up: the webhook now starts the action.
    let exec = poll(Duration::from_secs(30), || async {
        let (status, _) = node
            .post("webhooks/deploy", &json!({"env": "prod", "version": "1.2"}))
            .await?;
        if status != 202 {
            return Ok(None);
        }
        node.rules_idle().await?;
        Ok(node.executions().await?.into_iter().next())
    })
    .await?;
    let done = node
        .finished(exec["id"].as_str().unwrap_or_default())
        .await?;
    assert_eq!(done["result"]["stdout"], "deploying 1.2");

    // Disable it the way StackStorm's CLI does: GET, change, PUT.
    let (_, mut current) = node.get("rules/examples.on_deploy").await?;
    current["enabled"] = json!(false);
    let (status, updated) = node
        .call(
            &node.http,
            reqwest::Method::PUT,
            "rules/examples.on_deploy",
            Some(&current),
        )
        .await?;
    assert_eq!(status, 200, "{updated}");
    poll(Duration::from_secs(10), || async {
        let (_, r) = node.get("rules/examples.on_deploy").await?;
        Ok((r["enabled"] == false).then_some(()))
    })
    .await?;
    let before = node.executions().await?.len();
    node.post("webhooks/deploy", &json!({"env": "prod", "version": "1.3"}))
        .await?;
    node.rules_idle().await?;
    assert_eq!(
        node.executions().await?.len(),
        before,
        "a disabled rule starts nothing"
    );

    // Bad rules are refused with the field named; nothing changes.
    for (bad, needle) in [
        (
            json!({"name": "x", "pack": "examples", "trigger": {"type": "core.st2.webhook", "parameters": {"url": "x"}},
                "criteria": {"trigger.a": {"type": "roughly"}}, "action": {"ref": "core.noop"}}),
            "roughly",
        ),
        (
            json!({"name": "x", "pack": "examples", "trigger": {"type": "core.st2.webhook"}, "action": {"ref": "core.noop"}}),
            "url",
        ),
        (
            json!({"name": "x", "pack": "examples", "trigger": {"type": "core.st2.webhook", "parameters": {"url": "x"}}}),
            "action",
        ),
        (
            json!({"name": "x", "colour": "red", "trigger": {"type": "a.b"}, "action": {"ref": "core.noop"}}),
            "colour",
        ),
        (json!(["not", "an", "object"]), "object"),
    ] {
        let (status, body) = node.post("rules", &bad).await?;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(fault(&body).contains(needle), "{bad}: {body}");
    }
    let (status, _) = node
        .call(
            &node.http,
            reqwest::Method::PUT,
            "rules/examples.nope",
            Some(&current),
        )
        .await?;
    assert_eq!(status, 400, "name mismatch");

    let (status, _) = node
        .call(
            &node.http,
            reqwest::Method::DELETE,
            "rules/examples.on_deploy",
            None,
        )
        .await?;
    assert_eq!(status, 204);
    poll(Duration::from_secs(10), || async {
        let (status, _) = node.get("rules/examples.on_deploy").await?;
        Ok((status == 404).then_some(()))
    })
    .await?;
    let (status, _) = node
        .call(
            &node.http,
            reqwest::Method::DELETE,
            "rules/examples.on_deploy",
            None,
        )
        .await?;
    assert_eq!(status, 404);
    // The pack's own rules are untouched.
    let (status, _) = node.get("rules/examples.alert_diagnose").await?;
    assert_eq!(status, 200);
    Ok(())
}

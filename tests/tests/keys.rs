//! The datastore: scopes, secrets sealed at rest and shown only to those
//! allowed, expiry, rejections, and the triggers every change fires.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use anyhow::Result;
use futures::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};
use squall_tests::{poll, write_pack, TestNode};

fn fault(body: &Value) -> &str {
    body["faultstring"].as_str().unwrap_or_default()
}

async fn put(
    node: &TestNode,
    client: &reqwest::Client,
    name: &str,
    body: Value,
) -> Result<(u16, Value)> {
    node.call(client, Method::PUT, &format!("keys/{name}"), Some(&body))
        .await
}

#[tokio::test]
async fn set_get_list_delete_in_the_system_scope() -> Result<()> {
    let node = TestNode::start(vec![]).await?;
    let admin = &node.http;
    for (name, value) in [
        ("app.region", "eu-west-1"),
        ("app.size", "3"),
        ("other", "x"),
    ] {
        let (status, body) = put(&node, admin, name, json!({"value": value})).await?;
        assert_eq!(status, 200, "{body}");
    }
    let (status, one) = node.get("keys/app.region").await?;
    assert_eq!(status, 200);
    assert_eq!(
        one,
        json!({"id": "st2kv.system:app.region", "uid": "key_value_pair:st2kv.system:app.region",
               "name": "app.region", "value": "eu-west-1", "secret": false, "encrypted": false,
               "scope": "st2kv.system"})
    );
    let (_, listed) = node.get("keys?prefix=app.").await?;
    let names: Vec<&str> = listed
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k["name"].as_str())
        .collect();
    assert_eq!(names, ["app.region", "app.size"]);
    // Overwrite, then delete.
    put(&node, admin, "app.size", json!({"value": "5"})).await?;
    assert_eq!(node.get("keys/app.size").await?.1["value"], "5");
    let (status, _) = node
        .call(admin, Method::DELETE, "keys/app.size", None)
        .await?;
    assert_eq!(status, 204);
    let (status, body) = node.get("keys/app.size").await?;
    assert_eq!(status, 404);
    assert!(fault(&body).contains("app.size"), "{body}");
    let (status, _) = node
        .call(admin, Method::DELETE, "keys/app.size", None)
        .await?;
    assert_eq!(status, 404);
    Ok(())
}

#[tokio::test]
async fn secrets_are_sealed_at_rest_and_opened_only_for_the_allowed() -> Result<()> {
    let node = TestNode::start(vec![]).await?;
    let observer = node.user("olive", "observer").await?;
    let operator = node.user("otto", "operator").await?;
    let (status, stored) = put(
        &node,
        &node.http,
        "db_password",
        json!({"value": "hunter2-xyz", "secret": true}),
    )
    .await?;
    assert_eq!(status, 200, "{stored}");
    assert_eq!(stored["encrypted"], true);
    let sealed = stored["value"].as_str().unwrap_or_default().to_string();
    assert!(!sealed.contains("hunter2"), "{stored}");

    // The bucket holds only the sealed value.
    let bus = node
        .node
        .as_ref()
        .map(|n| n.bus.clone())
        .ok_or_else(|| anyhow::anyhow!("stopped"))?;
    let kv = bus.js.get_key_value("keys").await?;
    let mut keys = kv.keys().await?;
    while let Some(k) = keys.next().await {
        let raw = kv.get(k?).await?.unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&raw).contains("hunter2"),
            "plaintext at rest"
        );
    }
    let key_file = node.dir.path().join("datastore.key");
    assert_eq!(
        std::fs::metadata(&key_file)?.permissions().mode() & 0o777,
        0o600
    );

    // Everyone sees the sealed value; only an admin opens a system secret.
    for client in [&observer, &operator] {
        let (status, v) = node
            .call(client, Method::GET, "keys/db_password", None)
            .await?;
        assert_eq!(status, 200);
        assert_eq!(v["value"], sealed.as_str());
    }
    let (status, body) = node
        .call(
            &observer,
            Method::GET,
            "keys/db_password?decrypt=true",
            None,
        )
        .await?;
    assert_eq!(status, 403, "{body}");
    let (status, body) = node
        .call(
            &operator,
            Method::GET,
            "keys/db_password?decrypt=true",
            None,
        )
        .await?;
    assert_eq!(status, 403, "{body}");
    let (status, opened) = node.get("keys/db_password?decrypt=true").await?;
    assert_eq!(status, 200);
    assert_eq!(opened["value"], "hunter2-xyz");
    assert_eq!(opened["encrypted"], false);

    // A user's own scope: theirs to open, nobody else's to read.
    let (status, mine) = put(
        &node,
        &operator,
        "token",
        json!({"value": "otto-s3cret", "secret": true, "scope": "user"}),
    )
    .await?;
    assert_eq!(status, 200, "{mine}");
    assert_eq!(mine["user"], "otto");
    let (status, opened) = node
        .call(
            &operator,
            Method::GET,
            "keys/token?scope=user&decrypt=true",
            None,
        )
        .await?;
    assert_eq!(status, 200, "{opened}");
    assert_eq!(opened["value"], "otto-s3cret");
    let (status, body) = node
        .call(
            &observer,
            Method::GET,
            "keys/token?scope=user&user=otto",
            None,
        )
        .await?;
    assert_eq!(status, 403, "{body}");
    let (_, olive_keys) = node
        .call(&observer, Method::GET, "keys?scope=user", None)
        .await?;
    assert_eq!(olive_keys, json!([]));
    let (_, all) = node.get("keys?scope=all").await?;
    assert_eq!(
        all.as_array().map(Vec::len),
        Some(2),
        "admins see every scope: {all}"
    );

    // A sealed value can be restored as is (StackStorm's `encrypted: true`).
    let (status, restored) = put(
        &node,
        &node.http,
        "copy",
        json!({"value": sealed, "encrypted": true}),
    )
    .await?;
    assert_eq!(status, 200, "{restored}");
    assert_eq!(
        node.get("keys/copy?decrypt=true").await?.1["value"],
        "hunter2-xyz"
    );
    Ok(())
}

#[tokio::test]
async fn keys_with_a_ttl_vanish() -> Result<()> {
    let node = TestNode::start(vec![]).await?;
    let (status, body) = put(
        &node,
        &node.http,
        "lease",
        json!({"value": "held", "ttl": 1}),
    )
    .await?;
    assert_eq!(status, 200);
    assert!(
        body["expire_timestamp"]
            .as_str()
            .unwrap_or_default()
            .ends_with('Z'),
        "{body}"
    );
    poll(Duration::from_secs(10), || async {
        let (status, _) = node.get("keys/lease").await?;
        Ok((status == 404).then_some(()))
    })
    .await?;
    let (_, listed) = node.get("keys").await?;
    assert_eq!(listed, json!([]));
    Ok(())
}

#[tokio::test]
async fn bad_writes_are_rejected_and_change_nothing() -> Result<()> {
    let node = TestNode::start(vec![]).await?;
    let observer = node.user("olive", "observer").await?;
    put(&node, &node.http, "kept", json!({"value": "original"})).await?;
    for (body, needle) in [
        (json!({"value": 5}), "value"),
        (json!({"value": "x", "ttl": 0}), "ttl"),
        (json!({"value": "x", "scope": "galaxy"}), "scope"),
        (json!({"value": "x", "name": "other"}), "name"),
        (
            json!({"value": "not sealed", "encrypted": true}),
            "encrypted",
        ),
        (
            json!({"value": "x", "scope": "system", "user": "otto"}),
            "user",
        ),
        (json!({}), "value"),
    ] {
        let (status, answer) = put(&node, &node.http, "kept", body.clone()).await?;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(fault(&answer).contains(needle), "{body}: {answer}");
    }
    let (status, answer) = put(&node, &observer, "kept", json!({"value": "mine now"})).await?;
    assert_eq!(status, 403, "{answer}");
    let (status, answer) = node
        .call(&observer, Method::DELETE, "keys/kept", None)
        .await?;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(node.get("keys/kept").await?.1["value"], "original");
    Ok(())
}

#[tokio::test]
async fn changes_fire_key_value_pair_triggers() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let rule = |name: &str, event: &str, cmd: &str| {
        format!(
            "name: {name}\npack: kvwatch\nenabled: true\ntrigger:\n  type: core.st2.key_value_pair.{event}\n\
             action:\n  ref: core.local\n  parameters:\n    cmd: \"{cmd}\"\n"
        )
    };
    let created = rule("on_create", "create", "echo created {{ trigger.name }}");
    let changed = rule(
        "on_change",
        "value_change",
        "echo {{ trigger.old_object.value }} to {{ trigger.new_object.value }}",
    );
    let deleted = rule("on_delete", "delete", "echo deleted {{ trigger.name }}");
    write_pack(
        dir.path(),
        "kvwatch",
        &[
            ("pack.yaml", "name: kvwatch\nversion: 0.1.0\n"),
            ("rules/on_create.yaml", &created),
            ("rules/on_change.yaml", &changed),
            ("rules/on_delete.yaml", &deleted),
        ],
    )?;
    let node = TestNode::start(vec![dir.path().to_path_buf()]).await?;
    put(&node, &node.http, "color", json!({"value": "red"})).await?;
    put(&node, &node.http, "color", json!({"value": "red"})).await?;
    put(&node, &node.http, "color", json!({"value": "blue"})).await?;
    node.call(&node.http, Method::DELETE, "keys/color", None)
        .await?;
    node.rules_idle().await?;
    let outputs = poll(Duration::from_secs(30), || async {
        let all = node.executions().await?;
        if all.len() < 3 || all.iter().any(|e| e["status"] != "succeeded") {
            return Ok(None);
        }
        let mut out: Vec<String> = all
            .iter()
            .filter_map(|e| e["result"]["stdout"].as_str().map(str::to_string))
            .collect();
        out.sort();
        Ok(Some(out))
    })
    .await?;
    assert_eq!(
        outputs,
        ["created color", "deleted color", "red to blue"],
        "value_change only when the value changed"
    );
    Ok(())
}

#[tokio::test]
async fn rules_read_the_datastore_with_secrets_opened_only_by_decrypt_kv() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let rule = "name: greet\npack: kvread\nenabled: true\ntrigger:\n  type: core.st2.webhook\n  parameters:\n    url: greet\n\
                criteria:\n  trigger.body.env:\n    type: equals\n    pattern: \"{{ st2kv.system.env }}\"\n\
                action:\n  ref: core.local\n  parameters:\n    cmd: \"echo {{ st2kv.system.greeting }} {{ st2kv.system.pw }} {{ st2kv.system.pw | decrypt_kv }}\"\n";
    write_pack(
        dir.path(),
        "kvread",
        &[
            ("pack.yaml", "name: kvread\nversion: 0.1.0\n"),
            ("rules/greet.yaml", rule),
        ],
    )?;
    let node = TestNode::start(vec![dir.path().to_path_buf()]).await?;
    put(&node, &node.http, "env", json!({"value": "prod"})).await?;
    put(&node, &node.http, "greeting", json!({"value": "hello"})).await?;
    let (_, pw) = put(
        &node,
        &node.http,
        "pw",
        json!({"value": "opensesame", "secret": true}),
    )
    .await?;
    let sealed = pw["value"].as_str().unwrap_or_default().to_string();

    // The node's template view catches up with the writes within moments.
    let exec = poll(Duration::from_secs(30), || async {
        node.post("webhooks/greet", &json!({"env": "prod"})).await?;
        node.rules_idle().await?;
        let all = node.executions().await?;
        Ok(all.into_iter().find(|e| {
            e["status"] == "succeeded"
                && e["result"]["stdout"]
                    .as_str()
                    .is_some_and(|o| o.starts_with("hello "))
        }))
    })
    .await?;
    assert_eq!(
        exec["result"]["stdout"],
        format!("hello {sealed} opensesame")
    );

    // Criteria read it too: another environment starts nothing.
    let before = node.executions().await?.len();
    node.post("webhooks/greet", &json!({"env": "dev"})).await?;
    node.rules_idle().await?;
    assert_eq!(node.executions().await?.len(), before);
    Ok(())
}

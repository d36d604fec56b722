//! Authentication and roles: every route needs a token or API key, secrets
//! are stored hashed, and each role can do what StackStorm's can and no
//! more.

use std::time::Duration;

use anyhow::Result;
use futures::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};
use squall_tests::{client_with_token, login, poll, TestNode};

fn fault(body: &Value) -> &str {
    body["faultstring"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn every_route_needs_credentials() -> Result<()> {
    let node = TestNode::start(vec![]).await?;
    let anonymous = reqwest::Client::new();
    for (method, path) in [
        (Method::GET, "executions"),
        (Method::POST, "executions"),
        (Method::GET, "actions/core.local"),
        (Method::POST, "webhooks/anything"),
        (Method::POST, "packs/register"),
        (Method::GET, "apikeys"),
    ] {
        let (status, body) = node
            .call(&anonymous, method.clone(), path, Some(&json!({})))
            .await?;
        assert_eq!(status, 401, "{method} {path}");
        assert_eq!(
            fault(&body),
            "Unauthorized - One of Token or API key required."
        );
    }
    let forged = client_with_token("0123456789abcdef")?;
    let (status, body) = node.call(&forged, Method::GET, "executions", None).await?;
    assert_eq!(status, 401);
    assert!(fault(&body).contains("invalid"), "{body}");
    // The version document stays public for health checks.
    let (status, _) = node.call(&anonymous, Method::GET, "", None).await?;
    assert_eq!(status, 200);
    Ok(())
}

#[tokio::test]
async fn login_rejections_are_clear() -> Result<()> {
    let node = TestNode::start(vec![]).await?;
    let url = format!("{}/auth/v1/tokens", node.root);
    let http = reqwest::Client::new();

    let r = http
        .post(&url)
        .basic_auth("admin", Some("wrong"))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 401);
    let r = http
        .post(&url)
        .basic_auth("nobody", Some("wrong"))
        .send()
        .await?;
    assert_eq!(
        r.status().as_u16(),
        401,
        "unknown users look like bad passwords"
    );
    let r = http.post(&url).send().await?;
    assert_eq!(r.status().as_u16(), 401);
    let body: Value = r.json().await?;
    assert!(fault(&body).contains("HTTP Basic"), "{body}");
    let r = http
        .post(&url)
        .basic_auth("admin", Some(&node.admin_password))
        .json(&json!({"ttl": 10_000_000}))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 400);
    let body: Value = r.json().await?;
    assert!(fault(&body).contains("ttl"), "{body}");

    // A good login has StackStorm's shape.
    let r = http
        .post(&url)
        .basic_auth("admin", Some(&node.admin_password))
        .json(&json!({"ttl": 60}))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 201);
    let body: Value = r.json().await?;
    assert_eq!(body["user"], "admin");
    assert_eq!(body["token"].as_str().map(str::len), Some(64));
    assert!(body["expiry"].as_str().unwrap_or_default().ends_with('Z'));
    Ok(())
}

#[tokio::test]
async fn tokens_expire() -> Result<()> {
    let node = TestNode::start(vec![]).await?;
    let r = reqwest::Client::new()
        .post(format!("{}/auth/v1/tokens", node.root))
        .basic_auth("admin", Some(&node.admin_password))
        .json(&json!({"ttl": 1}))
        .send()
        .await?;
    let token = r.json::<Value>().await?["token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let client = client_with_token(&token)?;
    let (status, _) = node.call(&client, Method::GET, "executions", None).await?;
    assert_eq!(status, 200);
    poll(Duration::from_secs(10), || async {
        let (status, _) = node.call(&client, Method::GET, "executions", None).await?;
        Ok((status == 401).then_some(()))
    })
    .await
}

#[tokio::test]
async fn api_keys_are_shown_once_stored_hashed_and_revocable() -> Result<()> {
    let node = TestNode::start(vec![]).await?;
    let (status, created) = node
        .post("apikeys", &json!({"metadata": {"for": "ci"}}))
        .await?;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap_or_default().to_string();
    assert_eq!(key.len(), 64);
    assert_eq!(created["user"], "admin");

    let (_, listed) = node.get("apikeys").await?;
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    assert!(
        listed[0].get("key").is_none(),
        "the key is never shown again"
    );

    // Header and query forms both work.
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("St2-Api-Key", key.parse()?);
    let with_header = reqwest::Client::builder()
        .default_headers(headers)
        .build()?;
    let (status, _) = node
        .call(&with_header, Method::GET, "executions", None)
        .await?;
    assert_eq!(status, 200);
    let anonymous = reqwest::Client::new();
    let (status, _) = node
        .call(
            &anonymous,
            Method::GET,
            &format!("executions?st2-api-key={key}"),
            None,
        )
        .await?;
    assert_eq!(status, 200);
    // So does StackStorm's cookie form for tokens.
    let token = login(&node.root, "admin", &node.admin_password).await?;
    let r = anonymous
        .get(format!("{}/executions", node.base))
        .header("Cookie", format!("theme=dark; auth-token={token}"))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 200);

    // Nothing secret is stored in the clear.
    let bus = node
        .node
        .as_ref()
        .map(|n| n.bus.clone())
        .ok_or_else(|| anyhow::anyhow!("stopped"))?;
    let store = bus.js.get_key_value("auth").await?;
    let mut keys = store.keys().await?;
    let mut stored = String::new();
    while let Some(k) = keys.next().await {
        if let Some(v) = store.get(k?).await? {
            stored.push_str(&String::from_utf8_lossy(&v));
        }
    }
    assert!(stored.contains("$argon2id$"));
    assert!(!stored.contains(&key), "API key stored in the clear");
    assert!(
        !stored.contains(&node.admin_password),
        "password stored in the clear"
    );

    let id = created["id"].as_str().unwrap_or_default();
    let (status, _) = node
        .call(&node.http, Method::DELETE, &format!("apikeys/{id}"), None)
        .await?;
    assert_eq!(status, 204);
    let (status, _) = node
        .call(&with_header, Method::GET, "executions", None)
        .await?;
    assert_eq!(status, 401, "a deleted key stops working");
    let (status, _) = node
        .call(&node.http, Method::DELETE, &format!("apikeys/{id}"), None)
        .await?;
    assert_eq!(status, 404);
    Ok(())
}

#[tokio::test]
async fn each_role_can_do_its_part_and_no_more() -> Result<()> {
    let node = TestNode::start(vec![]).await?;
    let observer = node.user("olive", "observer").await?;
    let operator = node.user("otto", "operator").await?;
    let admin = &node.http;
    let run = json!({"action": "core.noop"});

    // Observers read, and nothing else.
    let (status, _) = node
        .call(&observer, Method::GET, "executions", None)
        .await?;
    assert_eq!(status, 200);
    let (status, _) = node.call(&observer, Method::GET, "actions", None).await?;
    assert_eq!(status, 200);
    for (method, path, body) in [
        (Method::POST, "executions", run.clone()),
        (
            Method::POST,
            "webhooks/st2",
            json!({"trigger": "a.b", "payload": {}}),
        ),
        (Method::POST, "packs/register", json!({})),
        (Method::POST, "apikeys", json!({})),
        (Method::GET, "users", json!({})),
        (Method::GET, "executions?show_secrets=true", json!({})),
    ] {
        let (status, body) = node
            .call(&observer, method.clone(), path, Some(&body))
            .await?;
        assert_eq!(status, 403, "observer {method} {path}: {body}");
        assert!(
            fault(&body).contains("olive") && fault(&body).contains("observer"),
            "{body}"
        );
    }

    // Operators run actions and fire webhooks, as themselves.
    let (status, created) = node
        .call(&operator, Method::POST, "executions", Some(&run))
        .await?;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["context"]["user"], "otto");
    let (status, body) = node
        .call(
            &operator,
            Method::POST,
            "executions",
            Some(&json!({"action": "core.noop", "user": "admin"})),
        )
        .await?;
    assert_eq!(status, 403, "{body}");
    let (status, _) = node
        .call(
            &operator,
            Method::POST,
            "webhooks/st2",
            Some(&json!({"trigger": "core.st2.webhook", "payload": {}})),
        )
        .await?;
    assert_eq!(status, 202);
    let (status, key) = node
        .call(&operator, Method::POST, "apikeys", Some(&json!({})))
        .await?;
    assert_eq!(status, 201, "operators get keys for themselves");
    assert_eq!(key["user"], "otto");
    let (status, _) = node
        .call(
            &operator,
            Method::POST,
            "apikeys",
            Some(&json!({"user": "olive"})),
        )
        .await?;
    assert_eq!(status, 403, "but not for others");
    for (method, path) in [(Method::POST, "packs/register"), (Method::GET, "users")] {
        let (status, body) = node
            .call(&operator, method.clone(), path, Some(&json!({})))
            .await?;
        assert_eq!(status, 403, "operator {method} {path}: {body}");
    }

    // Admins do everything, including running as someone else.
    let (status, created) = node
        .call(
            admin,
            Method::POST,
            "executions",
            Some(&json!({"action": "core.noop", "user": "olive"})),
        )
        .await?;
    assert_eq!(status, 201);
    assert_eq!(created["context"]["user"], "olive");
    let (status, users) = node.call(admin, Method::GET, "users", None).await?;
    assert_eq!(status, 200);
    let names: Vec<&str> = users
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|u| u["name"].as_str())
        .collect();
    assert_eq!(names, ["admin", "olive", "otto"]);
    assert!(users.to_string().find("password").is_none(), "{users}");
    let (_, keys) = node.call(admin, Method::GET, "apikeys", None).await?;
    assert_eq!(
        keys.as_array().map(Vec::len),
        Some(1),
        "admins see every key"
    );
    Ok(())
}

#[tokio::test]
async fn user_creation_rejections() -> Result<()> {
    let node = TestNode::start(vec![]).await?;
    for (body, status, needle) in [
        (
            json!({"name": "admin", "password": "long enough", "role": "observer"}),
            409,
            "already exists",
        ),
        (
            json!({"name": "bob", "password": "short", "role": "observer"}),
            400,
            "password",
        ),
        (
            json!({"name": "bob", "password": "long enough", "role": "root"}),
            400,
            "role",
        ),
        (
            json!({"name": "b ob", "password": "long enough", "role": "admin"}),
            400,
            "name",
        ),
        (
            json!({"name": "bob", "password": "long enough"}),
            400,
            "role",
        ),
    ] {
        let (got, answer) = node.post("users", &body).await?;
        assert_eq!(got, status, "{body}: {answer}");
        assert!(fault(&answer).contains(needle), "{body}: {answer}");
    }
    let (_, users) = node.get("users").await?;
    assert_eq!(
        users.as_array().map(Vec::len),
        Some(1),
        "nothing was created"
    );
    Ok(())
}

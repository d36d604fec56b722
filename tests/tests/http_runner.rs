//! `core.http` (the `http-request` runner) against a real HTTP server on
//! 127.0.0.1, through the API of a real node; and StackStorm's `core` pack
//! as shipped: every action registers, and the WinRM ones fail clearly.

use std::time::Duration;

use anyhow::{Context, Result};
use axum::extract::Query;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use squall_tests::{st2_json, st2_login, TestNode};

/// The server the actions call: JSON, text, auth, redirects, errors and a
/// slow answer.
async fn serve() -> Result<String> {
    let app = Router::new()
        .route(
            "/json",
            get(
                |Query(q): Query<std::collections::BTreeMap<String, String>>,
                 headers: HeaderMap| async move {
                    let header = |n: &str| {
                        headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string()
                    };
                    Json(json!({
                        "query": q,
                        "x_test": header("x-test"),
                        "cookie": header("cookie"),
                        "action": header("x-stanley-action"),
                    }))
                },
            ),
        )
        .route(
            "/text",
            get(|| async { ([("content-type", "text/plain")], "plain words") }),
        )
        .route(
            "/auth",
            get(|headers: HeaderMap| async move {
                // user:secret
                match headers.get("authorization").and_then(|v| v.to_str().ok()) {
                    Some("Basic dXNlcjpzZWNyZXQ=") => (StatusCode::OK, "welcome"),
                    _ => (StatusCode::UNAUTHORIZED, "who are you"),
                }
            }),
        )
        .route("/redirect", get(|| async { Redirect::to("/text") }))
        .route(
            "/boom",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "it broke").into_response() }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                "late"
            }),
        )
        .route(
            "/echo",
            post(|headers: HeaderMap, body: String| async move {
                let ct = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                Json(json!({"content_type": ct, "body": body}))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{addr}"))
}

/// Runs `action` with `parameters` and waits for its end.
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

#[tokio::test]
async fn core_http_makes_requests_as_stackstorm_does() -> Result<()> {
    let base = serve().await?;
    let node = TestNode::start(vec![]).await?;

    // JSON: parsed, with query params, headers, cookies, and the action's
    // name in X-Stanley-Action.
    let e = run(
        &node,
        "core.http",
        json!({"url": format!("{base}/json"), "params": {"q": "a b", "n": 3},
               "headers": {"X-Test": "yes"}, "cookies": {"k": "v"}}),
    )
    .await?;
    assert_eq!(e["status"], "succeeded", "{e}");
    let r = &e["result"];
    assert_eq!(r["status_code"], 200);
    assert_eq!(r["parsed"], true);
    assert_eq!(r["body"]["query"], json!({"q": "a b", "n": "3"}));
    assert_eq!(r["body"]["x_test"], "yes");
    assert_eq!(r["body"]["cookie"], "k=v");
    assert_eq!(r["body"]["action"], "http");
    assert_eq!(r["headers"]["content-type"], "application/json");

    // Text stays text.
    let e = run(&node, "core.http", json!({"url": format!("{base}/text")})).await?;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(e["result"]["body"], "plain words");
    assert_eq!(e["result"]["parsed"], false);

    // A body: POST by default; a JSON content type re-encodes it.
    let e = run(
        &node,
        "core.http",
        json!({"url": format!("{base}/echo"), "body": "{\"a\":  1}",
               "headers": {"Content-Type": "application/json"}}),
    )
    .await?;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(
        e["result"]["body"],
        json!({"content_type": "application/json", "body": "{\"a\":1}"})
    );

    // A file (StackStorm's `file_name` and `file_content`): POST by
    // default, one multipart/form-data part named and filed as the file,
    // typed when `file_content_type` says.
    let e = run(
        &node,
        "core.http",
        json!({"url": format!("{base}/echo"), "file_name": "report.txt",
               "file_content": "disk 91% full\n", "file_content_type": "text/plain"}),
    )
    .await?;
    assert_eq!(e["status"], "succeeded", "{e}");
    let echoed = &e["result"]["body"];
    let content_type = echoed["content_type"].as_str().unwrap_or_default();
    assert!(
        content_type.starts_with("multipart/form-data; boundary="),
        "{e}"
    );
    let sent = echoed["body"].as_str().unwrap_or_default();
    assert!(
        sent.contains(
            "Content-Disposition: form-data; name=\"report.txt\"; filename=\"report.txt\"\r\n\
             Content-Type: text/plain\r\n\r\ndisk 91% full\n"
        ),
        "{e}"
    );
    // The official CLI's `@file_path=…` fills them from a file.
    let home = tempfile::tempdir()?;
    st2_login(&node, home.path()).await?;
    let upload = home.path().join("notes.txt");
    std::fs::write(&upload, "from the CLI\n")?;
    let run_cli = st2_json(
        &node,
        home.path(),
        &[
            "run",
            "core.http",
            &format!("url={base}/echo"),
            &format!("@file_path={}", upload.display()),
        ],
    )
    .await?;
    assert_eq!(run_cli["status"], "succeeded", "{run_cli}");
    let sent = run_cli["result"]["body"]["body"]
        .as_str()
        .unwrap_or_default();
    assert!(
        sent.contains("name=\"notes.txt\"; filename=\"notes.txt\"")
            && sent.contains("from the CLI"),
        "{run_cli}"
    );
    // A file and a body at once, or a content type that is none: refused,
    // naming the parameter.
    for (params, needle) in [
        (
            json!({"url": format!("{base}/echo"), "file_name": "a", "file_content": "x", "body": "y"}),
            "body: a request with file_content",
        ),
        (
            json!({"url": format!("{base}/echo"), "file_name": "a", "file_content": "x",
                   "file_content_type": "not a type"}),
            "file_content_type: \"not a type\" is not a content type",
        ),
    ] {
        let e = run(&node, "core.http", params).await?;
        assert_eq!(e["status"], "failed", "{e}");
        assert!(
            e["result"]["error"]
                .as_str()
                .unwrap_or_default()
                .contains(needle),
            "{e}"
        );
    }

    // Basic auth from username/password; the password is secret and
    // never shown.
    let e = run(
        &node,
        "core.http",
        json!({"url": format!("{base}/auth"), "username": "user", "password": "secret"}),
    )
    .await?;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(e["result"]["body"], "welcome");
    assert!(!e.to_string().contains("\"secret\""), "{e}");
    let e = run(&node, "core.http", json!({"url": format!("{base}/auth")})).await?;
    assert_eq!(e["status"], "failed", "{e}");
    assert_eq!(e["result"]["status_code"], 401);

    // Redirects: not followed by default (a 3xx is not a success, as in
    // StackStorm), followed when allowed.
    let e = run(
        &node,
        "core.http",
        json!({"url": format!("{base}/redirect")}),
    )
    .await?;
    assert_eq!(e["status"], "failed", "{e}");
    assert_eq!(e["result"]["status_code"], 303);
    assert_eq!(e["result"]["headers"]["location"], "/text");
    let e = run(
        &node,
        "core.http",
        json!({"url": format!("{base}/redirect"), "allow_redirects": true}),
    )
    .await?;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(e["result"]["body"], "plain words");

    // A 500 fails the execution, with the body in the result.
    let e = run(&node, "core.http", json!({"url": format!("{base}/boom")})).await?;
    assert_eq!(e["status"], "failed", "{e}");
    assert_eq!(e["result"]["status_code"], 500);
    assert_eq!(e["result"]["body"], "it broke");

    // A timeout ends `timeout`.
    let e = run(
        &node,
        "core.http",
        json!({"url": format!("{base}/slow"), "timeout": 1}),
    )
    .await?;
    assert_eq!(e["status"], "timeout", "{e}");
    assert!(
        e["result"]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("timed out"),
        "{e}"
    );

    // Bad input: a malformed URL fails naming `url`; a refused connection
    // says why.
    let e = run(&node, "core.http", json!({"url": "http//nowhere"})).await?;
    assert_eq!(e["status"], "failed", "{e}");
    let error = e["result"]["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("url: \"http//nowhere\""), "{e}");
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?
    };
    let e = run(
        &node,
        "core.http",
        json!({"url": format!("http://{closed}/")}),
    )
    .await?;
    assert_eq!(e["status"], "failed", "{e}");
    assert!(
        e["result"]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("failed"),
        "{e}"
    );
    // A method outside the action's enum is refused before anything runs.
    let (status, body) = node
        .post(
            "executions",
            &json!({"action": "core.http", "parameters": {"url": base, "method": "FETCH"}}),
        )
        .await?;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("method"), "{body}");
    Ok(())
}

/// Every action of StackStorm's `core` pack, as the pack ships them.
const CORE_ACTIONS: [&str; 16] = [
    "core.announcement",
    "core.ask",
    "core.echo",
    "core.error",
    "core.http",
    "core.inject_trigger",
    "core.local",
    "core.local_sudo",
    "core.noop",
    "core.pause",
    "core.remote",
    "core.remote_sudo",
    "core.sendmail",
    "core.uuid",
    "core.winrm_cmd",
    "core.winrm_ps_cmd",
];

#[tokio::test]
async fn stackstorms_core_pack_registers_and_winrm_fails_clearly() -> Result<()> {
    let node = TestNode::start(vec![]).await?;
    let (status, listed) = node.get("actions?pack=core&limit=-1").await?;
    assert_eq!(status, 200, "{listed}");
    let refs: std::collections::BTreeSet<String> = listed
        .as_array()
        .context("a list")?
        .iter()
        .filter_map(|a| a["ref"].as_str().map(str::to_string))
        .collect();
    let expected: std::collections::BTreeSet<String> =
        CORE_ACTIONS.iter().map(|s| s.to_string()).collect();
    assert_eq!(refs, expected);
    // Every runner type core's actions name exists.
    for action in listed.as_array().context("a list")? {
        let runner = action["runner_type"].as_str().context("runner_type")?;
        let (status, rt) = node.get(&format!("runnertypes/{runner}")).await?;
        assert_eq!(status, 200, "{runner}: {rt}");
    }

    // Core's own actions run as shipped.
    let e = run(&node, "core.uuid", json!({})).await?;
    assert_eq!(e["status"], "succeeded", "{e}");
    let uuid = e["result"]["result"].as_str().unwrap_or_default();
    assert_eq!((uuid.len(), uuid.matches('-').count()), (36, 4), "{e}");
    let e = run(&node, "core.echo", json!({"message": "from core"})).await?;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(e["result"]["stdout"], "from core");
    let e = run(&node, "core.error", json!({"message": "to stderr"})).await?;
    assert_eq!(e["result"]["stderr"], "to stderr", "{e}");

    // core.announcement reaches the clients of the event stream.
    let stream = node
        .http
        .get(format!("{}/stream/v1/stream", node.root))
        .send()
        .await?;
    assert_eq!(stream.status().as_u16(), 200);
    let e = run(
        &node,
        "core.announcement",
        json!({"message": {"text": "deploy done"}}),
    )
    .await?;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(
        e["result"]["output"],
        json!({"message": {"text": "deploy done"}})
    );
    let announced = announcement(stream).await?;
    assert_eq!(
        announced,
        json!({"payload": {"message": {"text": "deploy done"}}, "trace_context": null})
    );

    let e = run(
        &node,
        "core.winrm_cmd",
        json!({"host": "127.0.0.1", "username": "u", "password": "p", "cmd": "dir"}),
    )
    .await?;
    assert_eq!(e["status"], "failed", "{e}");
    let error = e["result"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("winrm-cmd is not supported yet") && error.contains("core.winrm_cmd"),
        "{e}"
    );
    Ok(())
}

/// The data of the first `st2.announcement__general` event on `stream`.
async fn announcement(mut stream: reqwest::Response) -> Result<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut buf = String::new();
    loop {
        let chunk = tokio::time::timeout_at(deadline, stream.chunk())
            .await
            .context("no announcement in time")??
            .context("the stream ended")?;
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            if block.contains("event: st2.announcement__general") {
                let data = block
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .context("no data")?;
                return Ok(serde_json::from_str(data)?);
            }
        }
    }
}

//! StackStorm Python actions on a real node: the `python-script` runner's
//! protocol, `action_service` against the node's datastore API, pack
//! virtualenvs built with the machine's `python3 -m venv` and pip.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;
use squall_tests::{login, repo_root, TestNode};

/// `st2common.services.datastore.DatastoreService` (the client behind
/// `action_service` and `sensor_service`) against the node's `/keys` and
/// `/user`: key prefixing, secrets, TTL, listing, scopes, errors.
#[tokio::test]
async fn the_datastore_client_speaks_the_keys_api() -> Result<()> {
    let node = TestNode::start(vec![]).await?;
    let token = login(&node.root, "admin", &node.admin_password).await?;
    let lib = squall_runners::pylib::install(&node.dir.path().join("pylib"))?;
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("python3")
            .arg(repo_root().join("tests/python/datastore_check.py"))
            .arg(&node.base)
            .arg(&token)
            .env("PYTHONPATH", &lib)
            .output(),
    )
    .await
    .context("the check did not finish")??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(stdout.trim(), "ok");
    // What the client wrote is what the API holds, under the local prefix.
    let (status, secret) = node.get("keys/mypack.MyClass:secret").await?;
    assert_eq!(status, 200, "{secret}");
    assert_eq!(secret["secret"], true);
    assert_ne!(secret["value"], "s3");
    let (status, global) = node.get("keys/global").await?;
    assert_eq!((status, &global["value"]), (200, &Value::from("g")));
    let (status, _) = node.get("keys/mypack.MyClass:count").await?;
    assert_eq!(status, 404, "the deleted key is gone");
    Ok(())
}

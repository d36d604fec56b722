//! Durability: a real `squall node` process is killed with SIGKILL in the
//! middle of a workflow (a task waiting on a person), started again, and
//! the workflow finishes with every task run exactly once.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use squall_tests::{client_with_token, login, poll, repo_root, write_pack, NatsServer};

fn squall_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .context("target dir")?
        .join("squall");
    anyhow::ensure!(bin.is_file(), "{} not built: run ops/test", bin.display());
    Ok(bin)
}

/// A `squall node` process; killed when dropped.
struct NodeProcess(Child);

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_node(config: &Path) -> Result<NodeProcess> {
    let child = Command::new(squall_binary()?)
        .args(["node", "--config"])
        .arg(config)
        .env("SQUALL_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok(NodeProcess(child))
}

const FLOW: &str = "version: 1.0
input:
  - log
tasks:
  prepare:
    action: core.local cmd=\"echo prepare >> <% ctx(log) %>\"
    next:
      - when: <% succeeded() %>
        do: approve
  approve:
    action: core.ask
    next:
      - when: <% succeeded() %>
        do: finish
  finish:
    action: core.local cmd=\"echo finish >> <% ctx(log) %>\"
";

#[tokio::test]
async fn a_workflow_survives_its_node_being_killed() -> Result<()> {
    let nats = NatsServer::start()?;
    let dir = tempfile::tempdir()?;
    let packs = dir.path().join("packs");
    write_pack(
        &packs,
        "durable",
        &[
            ("pack.yaml", "name: durable\nversion: 0.1.0\n"),
            (
                "actions/flow.yaml",
                "name: flow\nrunner_type: orquesta\nentry_point: workflows/flow.yaml\nparameters:\n  log:\n    type: string\n    required: true\n",
            ),
            ("actions/workflows/flow.yaml", FLOW),
        ],
    )?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = dir.path().join("node.yaml");
    std::fs::write(
        &config,
        format!(
            "name: crash-test\nnats:\n  url: {}\ncluster:\n  partitions: 4\napi:\n  listen: 127.0.0.1:{port}\n  auth_listen: null\n  stream_listen: null\npacks:\n  dirs: [{}, {}]\nauth:\n  admin_password_file: {}\ndatastore:\n  key_file: {}\n",
            nats.url(),
            repo_root().join("packs").display(),
            packs.display(),
            dir.path().join("admin-password").display(),
            dir.path().join("datastore.key").display(),
        ),
    )?;
    let root = format!("http://127.0.0.1:{port}");
    let base = format!("{root}/api/v1");
    let connect = || async {
        poll(Duration::from_secs(60), || async {
            let Ok(password) = std::fs::read_to_string(dir.path().join("admin-password")) else {
                return Ok(None);
            };
            Ok(login(&root, "admin", password.trim()).await.ok())
        })
        .await
    };

    let node = start_node(&config)?;
    let http = client_with_token(&connect().await?)?;
    let log = dir.path().join("runs.log");
    let created: Value = http
        .post(format!("{base}/executions"))
        .json(&json!({"action": "durable.flow", "parameters": {"log": log}}))
        .send()
        .await?
        .json()
        .await?;
    let id = created["id"].as_str().context("execution id")?.to_string();

    // Wait until the workflow waits on the person, then kill the node.
    let inquiry = poll(Duration::from_secs(60), || async {
        let open: Value = http
            .get(format!("{base}/inquiries"))
            .send()
            .await?
            .json()
            .await?;
        Ok(open[0]["id"].as_str().map(str::to_string))
    })
    .await?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(node.0.id())?),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    drop(node);

    // Another start of the node, same NATS: the workflow is still there.
    let _node = start_node(&config)?;
    let http = client_with_token(&connect().await?)?;
    let answered = http
        .put(format!("{base}/inquiries/{inquiry}"))
        .json(&json!({"response": {"continue": true}}))
        .send()
        .await?;
    assert_eq!(answered.status(), 200, "{}", answered.text().await?);
    let done: Value = poll(Duration::from_secs(60), || async {
        let e: Value = http
            .get(format!("{base}/executions/{id}"))
            .send()
            .await?
            .json()
            .await?;
        let finished = matches!(e["status"].as_str(), Some("succeeded" | "failed"));
        Ok(finished.then_some(e))
    })
    .await?;
    assert_eq!(done["status"], "succeeded", "{done}");

    // Every task ran exactly once: one execution each, one line each.
    let children: Vec<Value> = poll(Duration::from_secs(10), || async {
        let list: Value = http
            .get(format!("{base}/executions/{id}/children"))
            .send()
            .await?
            .json()
            .await?;
        let list = list.as_array().cloned().unwrap_or_default();
        Ok((list.len() == 3).then_some(list))
    })
    .await?;
    let tasks: Vec<&str> = children
        .iter()
        .map(|c| {
            c["context"]["orquesta"]["task_name"]
                .as_str()
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(tasks, vec!["prepare", "approve", "finish"]);
    assert_eq!(std::fs::read_to_string(&log)?, "prepare\nfinish\n");
    Ok(())
}

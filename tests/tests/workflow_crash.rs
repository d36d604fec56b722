//! Durability: a real `squall node` process is killed with SIGKILL in the
//! middle of a workflow (a task waiting on a person; a with-items fan-out
//! under way), started again, and the workflow finishes with no task run
//! twice.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use squall_tests::{
    client_with_token, login, poll, repo_root, squall_binary, write_pack, NatsServer,
};

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

/// One node's setup: its config file, API and login; NATS outlives nodes.
struct Cluster {
    nats: NatsServer,
    dir: tempfile::TempDir,
    config: PathBuf,
    root: String,
    base: String,
}

impl Cluster {
    /// A NATS server and a node config with the repository's packs plus a
    /// pack `name` made of `files`.
    fn new(name: &str, files: &[(&str, &str)]) -> Result<Cluster> {
        let nats = NatsServer::start()?;
        let dir = tempfile::tempdir()?;
        let packs = dir.path().join("packs");
        write_pack(&packs, name, files)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let config = dir.path().join("node.yaml");
        std::fs::write(
            &config,
            format!(
                "name: crash-test\nnats:\n  url: {}\ncluster:\n  partitions: 4\napi:\n  listen: 127.0.0.1:{port}\n  auth_listen: null\n  stream_listen: null\npacks:\n  dirs: [{}, {}]\nauth:\n  admin_password_file: {}\ndatastore:\n  key_file: {}\ndata_dir: {}\n",
                nats.url(),
                repo_root().join("packs").display(),
                packs.display(),
                dir.path().join("admin-password").display(),
                dir.path().join("datastore.key").display(),
                dir.path().join("data").display(),
            ),
        )?;
        let root = format!("http://127.0.0.1:{port}");
        Ok(Cluster {
            nats,
            base: format!("{root}/api/v1"),
            root,
            config,
            dir,
        })
    }

    /// Starts the node and logs in once it answers.
    async fn start(&self) -> Result<(NodeProcess, reqwest::Client)> {
        let node = start_node(&self.config)?;
        let token = poll(Duration::from_secs(60), || async {
            let Ok(password) = std::fs::read_to_string(self.dir.path().join("admin-password"))
            else {
                return Ok(None);
            };
            Ok(login(&self.root, "admin", password.trim()).await.ok())
        })
        .await?;
        Ok((node, client_with_token(&token)?))
    }

    async fn get(&self, http: &reqwest::Client, path: &str) -> Result<Value> {
        Ok(http
            .get(format!("{}/{path}", self.base))
            .send()
            .await?
            .json()
            .await?)
    }

    /// Waits until execution `id` has ended.
    /// Waits for the workflow's end. Work cut off by a kill waits out the
    /// ack wait (30 s) before another run takes it, and on a loaded
    /// machine some of it a second time: hence the generous deadline.
    async fn finished(&self, http: &reqwest::Client, id: &str) -> Result<Value> {
        poll(Duration::from_secs(150), || async {
            let e = self.get(http, &format!("executions/{id}")).await?;
            let finished = matches!(e["status"].as_str(), Some("succeeded" | "failed"));
            Ok(finished.then_some(e))
        })
        .await
    }
}

fn kill9(node: NodeProcess) -> Result<()> {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(node.0.id())?),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    drop(node);
    Ok(())
}

const WORKFLOW_ACTION: &str = "name: flow\nrunner_type: orquesta\nentry_point: workflows/flow.yaml\nparameters:\n  log:\n    type: string\n    required: true\n";

#[tokio::test]
async fn a_workflow_survives_its_node_being_killed() -> Result<()> {
    let cluster = Cluster::new(
        "durable",
        &[
            ("pack.yaml", "name: durable\nversion: 0.1.0\n"),
            ("actions/flow.yaml", WORKFLOW_ACTION),
            ("actions/workflows/flow.yaml", FLOW),
        ],
    )?;
    let base = &cluster.base;
    let (node, http) = cluster.start().await?;
    let log = cluster.dir.path().join("runs.log");
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
        let open = cluster.get(&http, "inquiries").await?;
        Ok(open[0]["id"].as_str().map(str::to_string))
    })
    .await?;
    kill9(node)?;

    // Another start of the node, same NATS: the workflow is still there.
    let (_node, http) = cluster.start().await?;
    let answered = http
        .put(format!("{base}/inquiries/{inquiry}"))
        .json(&json!({"response": {"continue": true}}))
        .send()
        .await?;
    assert_eq!(answered.status(), 200, "{}", answered.text().await?);
    let done = cluster.finished(&http, &id).await?;
    assert_eq!(done["status"], "succeeded", "{done}");

    // Every task ran exactly once: one execution each, one line each.
    let children: Vec<Value> = poll(Duration::from_secs(10), || async {
        let list = cluster
            .get(&http, &format!("executions/{id}/children"))
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
    drop(cluster.nats);
    Ok(())
}

const ITEMS: usize = 300;

/// 300 items, 20 at a time, each appending its number to the log.
const ITEMS_FLOW: &str = "version: 1.0
input:
  - log
tasks:
  each:
    with:
      items: <% range(300) %>
      concurrency: 20
    action: core.local cmd=\"echo <% item() %> >> <% ctx(log) %>\"
    next:
      - when: <% succeeded() %>
        publish: count=<% len(result()) %>
output:
  - count: <% ctx(count) %>
";

#[tokio::test]
async fn a_with_items_workflow_killed_mid_flight_ends_with_no_item_run_twice() -> Result<()> {
    let cluster = Cluster::new(
        "fanout",
        &[
            ("pack.yaml", "name: fanout\nversion: 0.1.0\n"),
            ("actions/flow.yaml", WORKFLOW_ACTION),
            ("actions/workflows/flow.yaml", ITEMS_FLOW),
        ],
    )?;
    let base = &cluster.base;
    let (node, http) = cluster.start().await?;
    let log = cluster.dir.path().join("items.log");
    let created: Value = http
        .post(format!("{base}/executions"))
        .json(&json!({"action": "fanout.flow", "parameters": {"log": log}}))
        .send()
        .await?
        .json()
        .await?;
    let id = created["id"].as_str().context("execution id")?.to_string();
    // Kill the node while items are being started and finished.
    let lines = |log: &Path| {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    poll(Duration::from_secs(60), || async {
        Ok((lines(&log).len() >= ITEMS / 4).then_some(()))
    })
    .await?;
    kill9(node)?;
    let at_kill = lines(&log).len();
    assert!(at_kill < ITEMS, "killed mid-flight ({at_kill} done)");

    let (_node, http) = cluster.start().await?;
    let done = cluster.finished(&http, &id).await?;
    // Every item execution exists before its workflow ends.
    let items = cluster
        .get(&http, &format!("executions/{id}/children"))
        .await?;
    let items = items.as_array().cloned().unwrap_or_default();
    assert!(!items.is_empty() && items.len() <= ITEMS, "{}", items.len());
    // One execution per item, each for its own item.
    let mut tasks: Vec<String> = items
        .iter()
        .map(|c| {
            c["context"]["orquesta"]["task_id"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    tasks.sort();
    tasks.dedup();
    assert_eq!(tasks.len(), items.len(), "one execution per item");
    // No item's command ran twice.
    let mut ran = lines(&log);
    let total = ran.len();
    ran.sort();
    ran.dedup();
    assert_eq!(ran.len(), total, "an item ran twice");
    // An item cut off by the kill is `abandoned` (never run again blindly),
    // which fails its with-items task (no further item starts); otherwise
    // every item succeeded.
    let abandoned = items.iter().filter(|c| c["status"] == "abandoned").count();
    let succeeded = items.iter().filter(|c| c["status"] == "succeeded").count();
    assert_eq!(abandoned + succeeded, items.len(), "every item ended");
    if abandoned == 0 {
        assert_eq!(done["status"], "succeeded", "{done}");
        assert_eq!(done["result"]["output"]["count"], ITEMS);
        assert_eq!((items.len(), total), (ITEMS, ITEMS));
    } else {
        assert_eq!(done["status"], "failed", "{done}");
    }
    drop(cluster.nats);
    Ok(())
}

//! Durability: a real `squall node` process is killed with SIGKILL in the
//! middle of a workflow (a task waiting on a person; a with-items fan-out
//! under way; workflows canceling, pausing, paused and re-run from a task),
//! started again, and the workflow finishes with no task run twice.

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

/// Starts a node whose warnings go to the end of `log`.
fn start_node(config: &Path, log: &Path) -> Result<NodeProcess> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let child = Command::new(squall_binary()?)
        .args(["node", "--config"])
        .arg(config)
        .env("SQUALL_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
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
        let node = start_node(&self.config, &self.dir.path().join("node.log"))?;
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

    /// Sends `body` to `path` and returns the answer's status and JSON.
    async fn send(
        &self,
        http: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value)> {
        let mut request = http.request(method, format!("{}/{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer = request.send().await?;
        let status = answer.status().as_u16();
        Ok((status, answer.json().await?))
    }

    /// Starts `action` with `parameters`; its execution id.
    async fn run(&self, http: &reqwest::Client, action: &str, parameters: Value) -> Result<String> {
        let body = json!({"action": action, "parameters": parameters});
        let (status, created) = self
            .send(http, reqwest::Method::POST, "executions", Some(body))
            .await?;
        anyhow::ensure!(status == 201, "{action}: {status} {created}");
        Ok(created["id"].as_str().context("execution id")?.to_string())
    }

    /// Asks workflow `id` to become `status` (`pausing`, `resuming`) and
    /// checks the answer.
    async fn control(&self, http: &reqwest::Client, id: &str, status: &str) -> Result<()> {
        let (code, body) = self
            .send(
                http,
                reqwest::Method::PUT,
                &format!("executions/{id}"),
                Some(json!({"status": status})),
            )
            .await?;
        assert_eq!(
            (code, body["status"].as_str()),
            (200, Some(status)),
            "{body}"
        );
        Ok(())
    }

    /// The record of `id` once its status is no longer one of `passing`
    /// (the same deadline as [`Cluster::finished`]); the node's log on a
    /// timeout.
    async fn settles(&self, http: &reqwest::Client, id: &str, passing: &[&str]) -> Result<Value> {
        poll(Duration::from_secs(150), || async {
            let e = self.get(http, &format!("executions/{id}")).await?;
            let status = e["status"].as_str().context("status")?;
            Ok((!passing.contains(&status)).then_some(e))
        })
        .await
        .with_context(|| format!("{id} stays {passing:?}; node log:\n{}", self.log()))
    }

    /// The task executions of workflow `id`, in the order they started.
    async fn tasks(&self, http: &reqwest::Client, id: &str) -> Result<Vec<Value>> {
        let kids = self
            .get(http, &format!("executions/{id}/children?depth=1"))
            .await?;
        Ok(kids.as_array().cloned().unwrap_or_default())
    }

    /// Waits until task `task` of workflow `id` is `status`.
    async fn task_reaches(
        &self,
        http: &reqwest::Client,
        id: &str,
        task: &str,
        status: &str,
    ) -> Result<()> {
        poll(Duration::from_secs(60), || async {
            let tasks = self.tasks(http, id).await?;
            Ok(tasks
                .iter()
                .any(|t| t["context"]["orquesta"]["task_name"] == task && t["status"] == status)
                .then_some(()))
        })
        .await
        .with_context(|| {
            format!(
                "{id}: task {task} never {status}; node log:\n{}",
                self.log()
            )
        })
    }

    /// What the node processes have logged.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }
}

/// Each task's name and status, in the order they started.
fn names(tasks: &[Value]) -> Vec<(String, String)> {
    tasks
        .iter()
        .map(|t| {
            (
                t["context"]["orquesta"]["task_name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                t["status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
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

/// Waits up to 5 minutes for the file `ctx(gate)` (so a copy orphaned by
/// a killed node ends on its own), failing at once without `ctx(ready)`.
const HOLD: &str = "\"test -f <% ctx(ready) %> && for i in $(seq 3000); do test -f <% ctx(gate) %> && exit 0; sleep 0.1; done; exit 1\"";

/// A task lost with its node runs again (the hold only waits on a file).
const WAIT_ACTION: &str = "name: wait\nrunner_type: local-shell-cmd\nparameters:\n  cmd:\n    type: string\n    required: true\ntags:\n  - name: squall.runner_loss\n    value: rerun\n";

const STAGED_ACTION: &str = "name: staged\nrunner_type: orquesta\nentry_point: workflows/staged.yaml\nparameters:\n  log:\n    type: string\n    required: true\n  ready:\n    type: string\n    required: true\n  gate:\n    type: string\n    required: true\n";

/// `prepare`, then `hold` until its gate opens, then `finish`.
fn staged_flow() -> String {
    format!(
        "version: 1.0
input:
  - log
  - ready
  - gate
tasks:
  prepare:
    action: core.local
    input:
      cmd: \"echo prepare >> <% ctx(log) %>\"
    next:
      - when: <% succeeded() %>
        do: hold
  hold:
    action: states.wait
    input:
      cmd: {HOLD}
      timeout: 600
    next:
      - when: <% succeeded() %>
        do: finish
  finish:
    action: core.local
    input:
      cmd: \"echo finish >> <% ctx(log) %>\"
"
    )
}

const SLOW_ACTION: &str = "name: slow\nrunner_type: orquesta\nentry_point: workflows/slow.yaml\nparameters:\n  log:\n    type: string\n    required: true\n  ready:\n    type: string\n    required: true\n  gate:\n    type: string\n    required: true\n";

/// `slow` (an action lost with its node is `abandoned`), then `after`
/// whatever `slow`'s end.
fn slow_flow() -> String {
    format!(
        "version: 1.0
input:
  - log
  - ready
  - gate
tasks:
  slow:
    action: core.local
    input:
      cmd: {HOLD}
      timeout: 600
    next:
      - do: after
  after:
    action: core.local
    input:
      cmd: \"echo after >> <% ctx(log) %>\"
"
    )
}

/// One kill covers four workflows: one `canceling`, one `pausing`, one
/// `paused` and one re-run from its failed task; after the restart each
/// ends as it would have without the kill.
#[tokio::test]
async fn workflows_canceling_pausing_paused_or_re_run_survive_their_node_being_killed() -> Result<()>
{
    let staged = staged_flow();
    let slow = slow_flow();
    let cluster = Cluster::new(
        "states",
        &[
            ("pack.yaml", "name: states\nversion: 0.1.0\n"),
            ("actions/wait.yaml", WAIT_ACTION),
            ("actions/staged.yaml", STAGED_ACTION),
            ("actions/workflows/staged.yaml", &staged),
            ("actions/slow.yaml", SLOW_ACTION),
            ("actions/workflows/slow.yaml", &slow),
        ],
    )?;
    let (node, http) = cluster.start().await?;
    let file = |name: &str| cluster.dir.path().join(name);
    let ready = file("ready");
    std::fs::write(&ready, "")?;
    let params = |name: &str, ready: &Path| {
        json!({
            "log": file(&format!("{name}.log")),
            "ready": ready,
            "gate": file(&format!("{name}.gate")),
        })
    };
    let canceling = cluster
        .run(&http, "states.slow", params("canceling", &ready))
        .await?;
    let pausing = cluster
        .run(&http, "states.staged", params("pausing", &ready))
        .await?;
    let paused = cluster
        .run(&http, "states.staged", params("paused", &ready))
        .await?;
    // `hold` fails at once: its `ready` file is missing.
    let failed = cluster
        .run(
            &http,
            "states.staged",
            params("re-run", &file("re-run.ready")),
        )
        .await?;

    let ended = cluster
        .settles(&http, &failed, &["requested", "scheduled", "running"])
        .await?;
    assert_eq!(ended["status"], "failed", "{ended}");
    std::fs::write(file("re-run.ready"), "")?;
    let (status, again) = cluster
        .send(
            &http,
            reqwest::Method::POST,
            &format!("executions/{failed}/re_run"),
            Some(json!({"tasks": ["hold"]})),
        )
        .await?;
    assert_eq!(status, 201, "{again}");
    let re_run = again["id"].as_str().context("re-run id")?.to_string();

    cluster
        .task_reaches(&http, &canceling, "slow", "running")
        .await?;
    for id in [&pausing, &paused, &re_run] {
        cluster.task_reaches(&http, id, "hold", "running").await?;
    }
    let (code, body) = cluster
        .send(
            &http,
            reqwest::Method::DELETE,
            &format!("executions/{canceling}"),
            None,
        )
        .await?;
    assert_eq!(
        (code, body["status"].as_str()),
        (200, Some("canceling")),
        "{body}"
    );
    cluster.control(&http, &pausing, "pausing").await?;
    cluster.control(&http, &paused, "pausing").await?;
    std::fs::write(file("paused.gate"), "")?;
    let e = cluster
        .settles(&http, &paused, &["pausing", "running"])
        .await?;
    assert_eq!(e["status"], "paused", "{e}");

    // Kill the node with each workflow where it should be.
    for (id, status) in [
        (&canceling, "canceling"),
        (&pausing, "pausing"),
        (&paused, "paused"),
        (&re_run, "running"),
    ] {
        let e = cluster.get(&http, &format!("executions/{id}")).await?;
        assert_eq!(e["status"], status, "before the kill: {e}");
    }
    kill9(node)?;

    let (_node, http) = cluster.start().await?;
    std::fs::write(file("pausing.gate"), "")?;
    std::fs::write(file("re-run.gate"), "")?;

    // Canceling: the lost `slow` is abandoned, the workflow canceled.
    let e = cluster.settles(&http, &canceling, &["canceling"]).await?;
    assert_eq!(e["status"], "canceled", "{e}");
    assert_eq!(
        names(&cluster.tasks(&http, &canceling).await?),
        owned(&[("slow", "abandoned")])
    );
    // The orphaned `slow` process may end now.
    std::fs::write(file("canceling.gate"), "")?;

    // Pausing: `hold`, lost, runs again; the workflow pauses after it.
    let e = cluster
        .settles(&http, &pausing, &["pausing", "running"])
        .await?;
    assert_eq!(e["status"], "paused", "{e}");
    for id in [&pausing, &paused] {
        cluster.control(&http, id, "resuming").await?;
    }
    for id in [&pausing, &paused, &re_run] {
        let e = cluster.settles(&http, id, &["resuming", "running"]).await?;
        assert_eq!(e["status"], "succeeded", "{e}");
    }

    // Every task ran once; only the holds cut off by the kill were run
    // again, by the same execution.
    let lost = |tasks: &[Value], task: &str| {
        tasks
            .iter()
            .find(|t| t["context"]["orquesta"]["task_name"] == task)
            .map(|t| t["context"]["runner_losses"].clone())
            .unwrap_or_default()
    };
    let all = [
        ("prepare", "succeeded"),
        ("hold", "succeeded"),
        ("finish", "succeeded"),
    ];
    let tasks = cluster.tasks(&http, &pausing).await?;
    assert_eq!(names(&tasks), owned(&all));
    assert_eq!(lost(&tasks, "hold"), json!(["crash-test"]));
    let tasks = cluster.tasks(&http, &paused).await?;
    assert_eq!(names(&tasks), owned(&all));
    assert_eq!(lost(&tasks, "hold"), Value::Null);
    let tasks = cluster.tasks(&http, &re_run).await?;
    assert_eq!(
        names(&tasks),
        owned(&all[1..]),
        "`prepare` is not run again"
    );
    assert_eq!(lost(&tasks, "hold"), json!(["crash-test"]));
    for name in ["pausing", "paused", "re-run"] {
        let log = std::fs::read_to_string(file(&format!("{name}.log")))?;
        assert_eq!(log, "prepare\nfinish\n", "{name}");
    }

    // The canceled workflow never started `after`.
    assert_eq!(
        names(&cluster.tasks(&http, &canceling).await?),
        owned(&[("slow", "abandoned")])
    );
    assert!(!file("canceling.log").exists());
    drop(cluster.nats);
    Ok(())
}

//! Harness for the cluster's fault tests: `squall node` processes (killed
//! with SIGKILL, started again), a 3-server NATS cluster, a steady webhook
//! load, and the counts every fault test compares.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::{
    client_with_token, free_port, login, nats_server_binary, poll, repo_root, squall_binary,
};

/// The webhook the load posts to: the loadtest pack's rule runs
/// `core.noop` for each.
pub const WEBHOOK: &str = "loadtest/noop";

/// How the nodes of one test are configured.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Comma-separated NATS URLs.
    pub nats_urls: String,
    pub replicas: usize,
    pub partitions: u32,
    /// Shared by every node: admin password, datastore key, configs, logs.
    pub dir: PathBuf,
    /// Pack directories besides `packs/` and `loadtest/packs/`.
    pub extra_packs: Vec<PathBuf>,
}

/// A `squall node` process; killed when dropped.
#[derive(Debug)]
pub struct NodeProcess {
    child: Option<Child>,
    pub name: String,
    config: PathBuf,
    log: PathBuf,
    /// `http://127.0.0.1:<port>`.
    pub root: String,
}

impl NodeProcess {
    /// Writes the node's config and starts it; `extra` is appended to the
    /// config (e.g. `roles: [runners]`).
    pub fn start(spec: &ClusterSpec, name: &str, extra: &str) -> Result<NodeProcess> {
        let port = free_port()?;
        let config = spec.dir.join(format!("{name}.yaml"));
        std::fs::write(
            &config,
            format!(
                "name: {name}\nnats:\n  url: \"{}\"\n  replicas: {}\ncluster:\n  partitions: {}\napi:\n  listen: 127.0.0.1:{port}\n  auth_listen: null\n  stream_listen: null\npacks:\n  dirs: [{}]\nauth:\n  admin_password_file: {}\ndatastore:\n  key_file: {}\ndata_dir: {}\n",
                spec.nats_urls,
                spec.replicas,
                spec.partitions,
                [repo_root().join("packs"), repo_root().join("loadtest/packs")]
                    .iter()
                    .chain(&spec.extra_packs)
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                spec.dir.join("admin-password").display(),
                spec.dir.join("datastore.key").display(),
                spec.dir.join(format!("{name}-data")).display(),
            ) + extra,
        )?;
        let mut node = NodeProcess {
            child: None,
            name: name.to_string(),
            log: spec.dir.join(format!("{name}.log")),
            config,
            root: format!("http://127.0.0.1:{port}"),
        };
        node.spawn()?;
        Ok(node)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(squall_binary()?)
            .args(["node", "--config"])
            .arg(&self.config)
            .env("SQUALL_LOG", "warn,squall_actors::cluster=info")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    /// Process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) -> Result<()> {
        self.signal(nix::sys::signal::Signal::SIGKILL)
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn stop(&mut self) -> Result<()> {
        self.signal(nix::sys::signal::Signal::SIGTERM)
    }

    fn signal(&mut self, signal: nix::sys::signal::Signal) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(child.id())?),
                signal,
            )?;
            child.wait()?;
        }
        Ok(())
    }

    /// The node's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An admin's client of a node, once its API answers.
pub async fn admin_client(spec: &ClusterSpec, node: &NodeProcess) -> Result<Api> {
    let token = poll(Duration::from_secs(60), || async {
        let Ok(password) = std::fs::read_to_string(spec.dir.join("admin-password")) else {
            return Ok(None);
        };
        Ok(login(&node.root, "admin", password.trim()).await.ok())
    })
    .await
    .with_context(|| format!("node {} never answered:\n{}", node.name, node.log()))?;
    Ok(Api {
        http: client_with_token(&token)?,
        base: format!("{}/api/v1", node.root),
    })
}

/// One node's API as an admin.
#[derive(Debug, Clone)]
pub struct Api {
    pub http: reqwest::Client,
    /// `<root>/api/v1`.
    pub base: String,
}

impl Api {
    /// `GET <base>/<path>` as JSON; an error unless 200.
    pub async fn get(&self, path: &str) -> Result<Value> {
        let r = self
            .http
            .get(format!("{}/{path}", self.base))
            .timeout(Duration::from_secs(10))
            .send()
            .await?;
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        anyhow::ensure!(status.as_u16() == 200, "GET {path}: {status} {body}");
        Ok(body)
    }

    /// Partitions owned per live node and role, from the service registry.
    pub async fn ownership(&self) -> Result<HashMap<String, HashMap<String, Vec<u32>>>> {
        let groups = self.get("service_registry/groups").await?;
        let mut out: HashMap<String, HashMap<String, Vec<u32>>> = HashMap::new();
        for g in groups["groups"].as_array().into_iter().flatten() {
            let g = g.as_str().unwrap_or_default();
            let members = self
                .get(&format!("service_registry/groups/{g}/members"))
                .await?;
            for m in members["members"].as_array().into_iter().flatten() {
                let name = m["member_id"].as_str().unwrap_or_default().to_string();
                let parts: HashMap<String, Vec<u32>> =
                    serde_json::from_value(m["capabilities"]["partitions"].clone())
                        .unwrap_or_default();
                out.insert(name, parts);
            }
        }
        Ok(out)
    }

    /// Waits until exactly `nodes` own every partition of `roles`, each
    /// partition once, in even shares (`partitions / n`, or one more);
    /// returns the ownership.
    pub async fn settled(
        &self,
        nodes: &[&str],
        roles: &[&str],
        partitions: u32,
        timeout: Duration,
    ) -> Result<HashMap<String, HashMap<String, Vec<u32>>>> {
        poll(timeout, || async {
            let own = self.ownership().await?;
            let mut names: Vec<&str> = own.keys().map(String::as_str).collect();
            names.sort_unstable();
            let mut want = nodes.to_vec();
            want.sort_unstable();
            if names != want {
                return Ok(None);
            }
            for role in roles {
                let mut all: Vec<u32> = own
                    .values()
                    .flat_map(|r| r.get(*role).cloned().unwrap_or_default())
                    .collect();
                all.sort_unstable();
                if all != (0..partitions).collect::<Vec<_>>() {
                    return Ok(None);
                }
                let share = partitions as usize / nodes.len();
                let even = own.values().all(|r| {
                    let n = r.get(*role).map_or(0, Vec::len);
                    n == share || n == share + 1
                });
                if !even {
                    return Ok(None);
                }
            }
            Ok(Some(own))
        })
        .await
    }

    /// Every execution of the load's rule, with its trace tag.
    pub async fn load_executions(&self) -> Result<Vec<Value>> {
        let list = self
            .get("executions?limit=-1&rule=loadtest.webhook_noop&include_attributes=id,status,node,log,start_timestamp,trigger_instance,context.trace_context")
            .await?;
        Ok(list.as_array().cloned().unwrap_or_default())
    }

    /// Rule enforcements of the load's rule.
    pub async fn load_enforcements(&self) -> Result<usize> {
        let list = self
            .get("ruleenforcements?limit=-1&rule_ref=loadtest.webhook_noop")
            .await?;
        Ok(list.as_array().map_or(0, Vec::len))
    }
}

/// What a fault test compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counts {
    /// Webhooks the API accepted (202).
    pub sent: usize,
    /// Webhooks whose answer was an error or never came: each may or may
    /// not have been stored.
    pub uncertain: usize,
    pub enforcements: usize,
    pub executions: usize,
    /// Executions that reached a final status.
    pub finished: usize,
    pub abandoned: usize,
    /// Accepted webhooks without exactly one execution.
    pub accepted_not_run_once: usize,
    /// Trace tags with more than one execution.
    pub doubled: usize,
    /// `id: status` of each execution not finished, to show in a failure.
    pub unfinished: Vec<String>,
}

impl Counts {
    /// Every stored trigger enforced, run once and finished.
    fn settled(&self) -> bool {
        self.executions == self.enforcements
            && self.finished == self.executions
            && self.accepted_not_run_once == 0
    }
}

/// Waits until every stored trigger of the load has run to the end (or
/// `timeout`), then counts.
pub async fn settle_counts(api: &Api, load: &LoadReport, timeout: Duration) -> Result<Counts> {
    let deadline = Instant::now() + timeout;
    loop {
        let late = Instant::now() > deadline;
        match count(api, load).await {
            Ok(c) if late || c.settled() => return Ok(c),
            Err(e) if late => return Err(e),
            // While a server is gone a listing may fail: ask again.
            Err(e) => eprintln!("settling, will ask again: {e:#}"),
            Ok(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn count(api: &Api, load: &LoadReport) -> Result<Counts> {
    let executions = api.load_executions().await?;
    let enforcements = api.load_enforcements().await?;
    let mut per_tag: HashMap<String, usize> = HashMap::new();
    let mut finished = 0;
    let mut abandoned = 0;
    let mut unfinished = Vec::new();
    for e in &executions {
        if let Some(tag) = e["context"]["trace_context"]["trace_tag"].as_str() {
            *per_tag.entry(tag.to_string()).or_default() += 1;
        }
        match e["status"].as_str() {
            Some("succeeded" | "failed" | "timeout" | "canceled") => finished += 1,
            Some("abandoned") => {
                finished += 1;
                abandoned += 1;
            }
            status => unfinished.push(format!(
                "{}: {} on {} ({})",
                e["id"].as_str().unwrap_or_default(),
                status.unwrap_or_default(),
                e["node"].as_str().unwrap_or("?"),
                e["log"]
            )),
        }
    }
    let accepted_not_run_once = load
        .accepted
        .iter()
        .filter(|t| per_tag.get(*t) != Some(&1))
        .count();
    Ok(Counts {
        sent: load.accepted.len(),
        uncertain: load.uncertain,
        enforcements,
        executions: executions.len(),
        finished,
        abandoned,
        accepted_not_run_once,
        doubled: per_tag.values().filter(|n| **n > 1).count(),
        unfinished,
    })
}

/// Asserts the fault tests' equalities: every accepted webhook enforced
/// and run exactly once, every stored one enforced once and finished.
pub fn assert_exactly_once(c: &Counts) {
    assert_eq!(c.accepted_not_run_once, 0, "{c:?}");
    assert_eq!(c.doubled, 0, "{c:?}");
    assert_eq!(c.enforcements, c.executions, "{c:?}");
    assert_eq!(c.finished, c.executions, "{c:?}");
    assert!(c.executions >= c.sent, "{c:?}");
    assert!(c.executions <= c.sent + c.uncertain, "{c:?}");
}

/// The trace tags of accepted webhooks, and how many were uncertain.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub accepted: Vec<String>,
    pub uncertain: usize,
    /// When each accepted webhook was answered, by tag.
    pub answered_at: HashMap<String, Instant>,
}

/// A steady webhook load on one node's API until stopped.
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<LoadReport>,
    sent: Arc<AtomicU64>,
}

impl Load {
    /// Posts one webhook every `every` to `api`, each with trace tag
    /// `<run>-<n>`.
    pub fn start(api: &Api, run: &str, every: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (api, run, flag, counter) = (api.clone(), run.to_string(), stop.clone(), sent.clone());
        let task = tokio::spawn(async move {
            let mut report = LoadReport::default();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = 0u64;
            while !flag.load(Ordering::Relaxed) {
                tick.tick().await;
                n += 1;
                let tag = format!("{run}-{n}");
                let answer = api
                    .http
                    .post(format!("{}/webhooks/{WEBHOOK}", api.base))
                    .header("St2-Trace-Tag", &tag)
                    .json(&json!({"n": n}))
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                match answer {
                    Ok(r) if r.status().as_u16() == 202 => {
                        report.answered_at.insert(tag.clone(), Instant::now());
                        report.accepted.push(tag);
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => report.uncertain += 1,
                }
            }
            report
        });
        Load { stop, task, sent }
    }

    /// Webhooks accepted so far.
    pub fn accepted(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Waits until `n` more webhooks have been accepted.
    pub async fn wait_for(&self, n: u64, timeout: Duration) -> Result<()> {
        let target = self.accepted() + n;
        poll(timeout, || async {
            Ok((self.accepted() >= target).then_some(()))
        })
        .await
    }

    /// Stops the load and reports it.
    pub async fn stop(self) -> Result<LoadReport> {
        self.stop.store(true, Ordering::Relaxed);
        Ok(self.task.await?)
    }
}

/// A NATS cluster of JetStream servers on loopback.
#[derive(Debug)]
pub struct NatsCluster {
    servers: Vec<Option<Child>>,
    ports: Vec<(u16, u16)>,
    dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts `n` servers routed to each other; returns once each accepts
    /// connections and JetStream has a meta leader. A server that exits
    /// before it listens (its port was taken meanwhile) has the whole
    /// cluster started again on fresh ports, since every server's routes
    /// name the others' ports.
    pub async fn start(n: usize) -> Result<NatsCluster> {
        let mut cluster = NatsCluster {
            servers: (0..n).map(|_| None).collect(),
            ports: Vec::new(),
            dir: tempfile::tempdir()?,
        };
        let mut attempts = 0;
        while !cluster.listen_on_fresh_ports().await? {
            attempts += 1;
            anyhow::ensure!(attempts < 3, "nats-server kept exiting at start");
        }
        let urls: Vec<String> = cluster.urls().split(',').map(str::to_string).collect();
        let client = async_nats::connect(urls).await?;
        let js = async_nats::jetstream::new(client);
        poll(Duration::from_secs(30), || async {
            Ok(js.query_account().await.ok().map(|_| ()))
        })
        .await
        .context("JetStream cluster never elected a meta leader")?;
        Ok(cluster)
    }

    /// Starts every server on new ports; false if one exited before it
    /// accepted connections (the others are stopped then).
    async fn listen_on_fresh_ports(&mut self) -> Result<bool> {
        for i in 0..self.servers.len() {
            self.kill(i)?;
        }
        self.ports = (0..self.servers.len())
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<Result<_>>()?;
        for i in 0..self.servers.len() {
            self.spawn(i)?;
        }
        for i in 0..self.servers.len() {
            let client = self.ports[i].0;
            let exited = poll(Duration::from_secs(15), || {
                let exited = match self.servers[i].as_mut() {
                    Some(child) => child.try_wait().map(|status| status.is_some()),
                    None => Ok(true),
                };
                async move {
                    if exited? {
                        return Ok(Some(true));
                    }
                    Ok(std::net::TcpStream::connect(("127.0.0.1", client))
                        .ok()
                        .map(|_| false))
                }
            })
            .await
            .with_context(|| format!("nats-server s{i} never listened: {}", self.log_tail(i)))?;
            if exited {
                eprintln!("nats-server s{i} exited at start: {}", self.log_tail(i));
                for j in 0..self.servers.len() {
                    self.kill(j)?;
                }
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The end of server `i`'s log, for an error message.
    fn log_tail(&self, i: usize) -> String {
        let log = std::fs::read_to_string(self.log(i)).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }

    fn log(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("s{i}.log"))
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let (client, route) = self.ports[i];
        let routes: Vec<String> = self
            .ports
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, (_, r))| format!("nats://127.0.0.1:{r}"))
            .collect();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(i))?;
        let child = Command::new(nats_server_binary()?)
            .args(["--jetstream", "--addr", "127.0.0.1", "--port"])
            .arg(client.to_string())
            .args([
                "--server_name",
                &format!("s{i}"),
                "--cluster_name",
                "squall",
            ])
            .arg("--cluster")
            .arg(format!("nats://127.0.0.1:{route}"))
            .arg("--routes")
            .arg(routes.join(","))
            .arg("--store_dir")
            .arg(self.dir.path().join(format!("s{i}")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting nats-server")?;
        self.servers[i] = Some(child);
        Ok(())
    }

    /// Every server's URL, comma-separated.
    pub fn urls(&self) -> String {
        self.ports
            .iter()
            .map(|(c, _)| format!("nats://127.0.0.1:{c}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// SIGKILLs server `i`.
    pub fn kill(&mut self, i: usize) -> Result<()> {
        if let Some(mut child) = self.servers[i].take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts server `i` again on its ports and store.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.kill(i)?;
        self.spawn(i)
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for child in self.servers.iter_mut().filter_map(Option::take) {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A directory under which a test keeps its nodes' files.
pub fn spec_in(dir: &Path, nats_urls: String, replicas: usize, partitions: u32) -> ClusterSpec {
    ClusterSpec {
        nats_urls,
        replicas,
        partitions,
        dir: dir.to_path_buf(),
        extra_packs: vec![],
    }
}

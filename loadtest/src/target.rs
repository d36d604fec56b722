//! The node under test: one the tool starts (`squall up` in a temporary
//! data dir, free loopback ports) or one already running at a URL.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::LoadError;

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
}

fn free_port() -> Result<u16, LoadError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| LoadError::io("finding a free port", e))
}

impl ManagedNode {
    /// Starts `squall up` (binary `squall`) with `pack_dirs`, on loopback,
    /// and logs in as its first admin.
    pub async fn start(
        squall: &Path,
        nats_server: Option<&Path>,
        pack_dirs: &[PathBuf],
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
        };
        let root = format!("http://127.0.0.1:{api_port}");
        let password_file = node._data.path().join("admin-password");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(password) = std::fs::read_to_string(&password_file) {
                let nats = Some(format!("nats://127.0.0.1:{nats_port}"));
                if let Ok(t) =
                    Target::connect(&root, "admin", password.trim(), nats, Some(pid)).await
                {
                    node.target = t;
                    return Ok(node);
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
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
    }
}

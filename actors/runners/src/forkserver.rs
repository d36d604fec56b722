//! Warm starts for Python actions. A fresh interpreter per action pays for
//! Python's start and the wrapper's imports every time (StackStorm's
//! trivial action taking seconds, issues #5887 and #2974). Instead, one
//! `python_fork_server.py` per pack interpreter and Python path, started
//! on first use, has imported the wrapper and the `st2common` package
//! already and forks one child per action. Each action is still its own
//! process, in its own process group, with the stdin, stdout and stderr
//! pipes the node hands over the unix socket (SCM_RIGHTS), its own cwd and
//! environment; the server reports the child's pid (the group the node
//! kills on timeout or cancel) and its wait status.
//!
//! When a server cannot be started or reached, the run starts cold, as a
//! plain process; the next run tries a server again.

use std::collections::{BTreeMap, HashMap};
use std::io::{IoSlice, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::unix::pipe;
use tokio::process::{Child, Command};

use crate::process::{Launched, Spec};

/// The server script in the installed Python directory.
pub const SERVER_SCRIPT: &str = "python_fork_server.py";

/// How long a server may take to say it is ready.
/// Local to the runner crate, which sits below the engine and does not
/// see `squall_actors::timing`; only this module uses it.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest unix socket path the kernel takes (`sun_path` is 108 bytes).
const MAX_SOCKET_PATH: usize = 100;

/// What a server is for: an interpreter, the Python path it starts with,
/// and the virtualenv build it runs (a rebuilt virtualenv gets a new
/// server).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    program: PathBuf,
    python_path: String,
    venv_build: Option<PathBuf>,
}

/// A running server.
#[derive(Debug)]
struct Server {
    socket: PathBuf,
    /// Killed when dropped; its stdin is the server's lifeline.
    _process: Child,
}

/// The fork servers of one node.
#[derive(Debug, Clone)]
pub struct ForkServers {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Holds the sockets; only this user may enter it.
    dir: PathBuf,
    servers: tokio::sync::Mutex<HashMap<Key, Arc<Server>>>,
    next: AtomicU64,
    /// Servers that failed to start, by key, so every run does not retry.
    broken: Mutex<HashMap<Key, std::time::Instant>>,
}

/// How long after a failed start a server is not tried again.
/// Local to the runner crate, which sits below the engine and does not
/// see `squall_actors::timing`; only this module uses it.
const RETRY_AFTER: Duration = Duration::from_secs(30);

impl ForkServers {
    /// Servers whose sockets live in `<data_dir>/forkservers`.
    pub fn new(data_dir: &Path) -> ForkServers {
        ForkServers {
            inner: Arc::new(Inner {
                dir: data_dir.join("forkservers"),
                servers: tokio::sync::Mutex::new(HashMap::new()),
                next: AtomicU64::new(0),
                broken: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Starts the action of `spec` (`program -u <wrapper> args...`) as a
    /// child of the server for its interpreter and Python path; `Err` when
    /// no server could take it (the caller starts it cold). `venv` is the
    /// pack's virtualenv, `lib` the installed Python directory.
    pub async fn launch(
        &self,
        spec: &Spec,
        venv: Option<&Path>,
        lib: &Path,
    ) -> Result<Launched, String> {
        let key = Key {
            program: spec.program.clone(),
            python_path: spec.env.get("PYTHONPATH").cloned().unwrap_or_default(),
            venv_build: venv.and_then(|v| std::fs::canonicalize(v).ok()),
        };
        let server = self.server(&key, spec, lib).await?;
        match start_child(&server, spec) {
            Ok(started) => started.into_launched(server).await,
            Err(e) => {
                // The server is gone: the next run starts another.
                self.inner.servers.lock().await.remove(&key);
                Err(e)
            }
        }
    }

    async fn server(&self, key: &Key, spec: &Spec, lib: &Path) -> Result<Arc<Server>, String> {
        let mut servers = self.inner.servers.lock().await;
        if let Some(s) = servers.get(key) {
            return Ok(s.clone());
        }
        {
            let broken = self
                .inner
                .broken
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if broken.get(key).is_some_and(|t| t.elapsed() < RETRY_AFTER) {
                return Err("the fork server failed to start recently".into());
            }
        }
        match self.start(key, spec, lib).await {
            Ok(server) => {
                let server = Arc::new(server);
                // A rebuilt virtualenv replaces its pack's server.
                servers
                    .retain(|k, _| !(k.program == key.program && k.python_path == key.python_path));
                servers.insert(key.clone(), server.clone());
                Ok(server)
            }
            Err(e) => {
                tracing::warn!(program = %key.program.display(), error = %e,
                    "no fork server for Python actions; they start cold");
                self.inner
                    .broken
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(key.clone(), std::time::Instant::now());
                Err(e)
            }
        }
    }

    async fn start(&self, key: &Key, spec: &Spec, lib: &Path) -> Result<Server, String> {
        let dir = &self.inner.dir;
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        let n = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let socket = dir.join(format!("{}-{n}.sock", std::process::id()));
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(format!(
                "socket path {} is longer than {MAX_SOCKET_PATH} bytes",
                socket.display()
            ));
        }
        let _ = std::fs::remove_file(&socket);
        let mut cmd = Command::new(&key.program);
        cmd.arg("-u")
            .arg(lib.join(SERVER_SCRIPT))
            .arg(&socket)
            .env("PYTHONPATH", &key.python_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(path) = spec.env.get("PATH") {
            cmd.env("PATH", path);
        }
        let mut process = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", key.program.display()))?;
        let stdout = process.stdout.take().ok_or("the server has no stdout")?;
        let mut line = String::new();
        let mut reader = BufReader::new(stdout);
        match tokio::time::timeout(START_TIMEOUT, reader.read_line(&mut line)).await {
            Ok(Ok(_)) if line.trim() == "ready" => {}
            Ok(Ok(_)) => return Err(format!("the server said {line:?} instead of ready")),
            Ok(Err(e)) => return Err(format!("reading the server's start: {e}")),
            Err(_) => return Err("the server was not ready in time".into()),
        }
        tracing::info!(program = %key.program.display(), socket = %socket.display(),
            "fork server for Python actions started");
        Ok(Server {
            socket,
            _process: process,
        })
    }
}

/// A child the server forked: its pid and the node's ends of its pipes.
struct Started {
    conn: std::os::unix::net::UnixStream,
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
}

/// Sends the request with the child's ends of three fresh pipes.
fn start_child(server: &Server, spec: &Spec) -> Result<Started, String> {
    let (stdin_r, stdin_w) = std::io::pipe().map_err(|e| format!("pipe: {e}"))?;
    let (stdout_r, stdout_w) = std::io::pipe().map_err(|e| format!("pipe: {e}"))?;
    let (stderr_r, stderr_w) = std::io::pipe().map_err(|e| format!("pipe: {e}"))?;
    let mut env: BTreeMap<String, String> = std::env::vars().collect();
    env.extend(spec.env.clone());
    let cwd = spec
        .cwd
        .clone()
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_else(|| PathBuf::from("/"));
    // `-u <wrapper>` are the server's own; the child gets the rest.
    let argv: Vec<&String> = spec.args.iter().skip(2).collect();
    let body = json!({"argv": argv, "env": env, "cwd": cwd}).to_string();
    let length = u32::try_from(body.len()).map_err(|_| "request too large".to_string())?;
    let mut message = length.to_be_bytes().to_vec();
    message.extend_from_slice(body.as_bytes());

    let mut conn = std::os::unix::net::UnixStream::connect(&server.socket)
        .map_err(|e| format!("cannot reach the fork server: {e}"))?;
    let fds = [
        stdin_r.as_raw_fd(),
        stdout_w.as_raw_fd(),
        stderr_w.as_raw_fd(),
    ];
    let sent = sendmsg::<()>(
        conn.as_raw_fd(),
        &[IoSlice::new(&message)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| format!("cannot send to the fork server: {e}"))?;
    conn.write_all(&message[sent..])
        .map_err(|e| format!("cannot send to the fork server: {e}"))?;
    // The child's ends now live in the server; ours close here.
    drop((stdin_r, stdout_w, stderr_w));
    Ok(Started {
        conn,
        stdin: stdin_w.into(),
        stdout: stdout_r.into(),
        stderr: stderr_r.into(),
    })
}

impl Started {
    /// Waits for the child's pid and wraps everything for
    /// [`crate::process::supervise`]. The wait holds `server`, so a server
    /// replaced meanwhile (its virtualenv rebuilt) lives until its last
    /// action has ended.
    async fn into_launched(self, server: Arc<Server>) -> Result<Launched, String> {
        self.conn
            .set_nonblocking(true)
            .map_err(|e| format!("fork server socket: {e}"))?;
        let conn = tokio::net::UnixStream::from_std(self.conn)
            .map_err(|e| format!("fork server socket: {e}"))?;
        let mut lines = BufReader::new(conn).lines();
        let first = lines
            .next_line()
            .await
            .map_err(|e| format!("fork server: {e}"))?
            .ok_or("the fork server closed the connection")?;
        let reply: Value =
            serde_json::from_str(&first).map_err(|e| format!("fork server said {first:?}: {e}"))?;
        let Some(pid) = reply["pid"].as_i64().and_then(|p| i32::try_from(p).ok()) else {
            return Err(format!(
                "the fork server refused the action: {}",
                reply["error"].as_str().unwrap_or(&first)
            ));
        };
        let pipe_err = |e: std::io::Error| format!("action pipe: {e}");
        let stdin = pipe::Sender::from_owned_fd(self.stdin).map_err(pipe_err)?;
        let stdout = pipe::Receiver::from_owned_fd(self.stdout).map_err(pipe_err)?;
        let stderr = pipe::Receiver::from_owned_fd(self.stderr).map_err(pipe_err)?;
        Ok(Launched {
            pgid: Some(pid),
            stdin: Some(Box::new(stdin)),
            stdout: Box::new(stdout),
            stderr: Box::new(stderr),
            wait: Box::pin(async move {
                let _server = server;
                let line = lines
                    .next_line()
                    .await
                    .map_err(|e| format!("fork server: {e}"))?
                    .ok_or("the fork server ended before the action did")?;
                let reply: Value = serde_json::from_str(&line)
                    .map_err(|e| format!("fork server said {line:?}: {e}"))?;
                let status = reply["status"]
                    .as_i64()
                    .and_then(|s| i32::try_from(s).ok())
                    .ok_or_else(|| format!("fork server said {line:?}"))?;
                Ok(std::process::ExitStatus::from_raw(status))
            }),
        })
    }
}

//! The nats-server that `squall up` runs as a child: JetStream on loopback,
//! data under the data dir, restarted if it dies, stopped with the node.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use thiserror::Error;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// Oldest nats-server Squall works with (JetStream KV with the API the
/// async-nats client uses, direct get, multi-filter consumers).
pub const MIN_NATS_VERSION: (u64, u64) = (2, 10);

/// Why the managed server could not start.
#[derive(Debug, Error)]
pub enum ManagedNatsError {
    #[error(
        "nats-server was not found (looked for {looked}). Run the README's first command \
         (ops/up), which installs it into .venv, or pass --nats-server PATH"
    )]
    NotFound { looked: String },
    #[error(
        "port {port} on 127.0.0.1 is already in use, so the managed nats-server cannot listen \
         there. Stop whatever holds it (`ss -ltnp | grep :{port}`), choose another port with \
         `squall up --nats-port N`, or use that server with `squall node --config FILE`"
    )]
    PortTaken { port: u16 },
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        source: std::io::Error,
    },
    #[error("nats-server did not accept connections on {addr} within {secs} s; see {log}")]
    NotReady {
        addr: SocketAddr,
        secs: u64,
        log: PathBuf,
    },
}

/// Where to find the nats-server binary: an explicit path, then
/// `.venv/bin/nats-server` under the current directory, then `PATH`.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, ManagedNatsError> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(ManagedNatsError::NotFound {
                looked: p.display().to_string(),
            })
        };
    }
    let venv = PathBuf::from(".venv/bin/nats-server");
    if venv.is_file() {
        return Ok(venv);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join("nats-server");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(ManagedNatsError::NotFound {
        looked: ".venv/bin/nats-server and $PATH".into(),
    })
}

/// A supervised nats-server child.
#[derive(Debug)]
pub struct ManagedNats {
    pub addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl ManagedNats {
    /// Starts nats-server on 127.0.0.1:`port` with JetStream data under
    /// `data_dir/jetstream`, waits until it accepts connections, and keeps it
    /// running until [`ManagedNats::stop`].
    pub async fn start(
        binary: PathBuf,
        port: u16,
        data_dir: &Path,
    ) -> Result<ManagedNats, ManagedNatsError> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if TcpListener::bind(addr).is_err() {
            return Err(ManagedNatsError::PortTaken { port });
        }
        std::fs::create_dir_all(data_dir).map_err(|source| ManagedNatsError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let store = data_dir.join("jetstream");
        let log = data_dir.join("nats-server.log");
        let spawn = {
            let binary = binary.clone();
            let log = log.clone();
            move || spawn_server(&binary, port, &store, &log)
        };
        let mut child = spawn()?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if tokio::time::Instant::now() > deadline || matches!(child.try_wait(), Ok(Some(_))) {
                let _ = child.kill().await;
                return Err(ManagedNatsError::NotReady {
                    addr,
                    secs: 15,
                    log,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let stop = CancellationToken::new();
        let task = tokio::spawn(supervise(child, spawn, stop.clone()));
        Ok(ManagedNats { addr, stop, task })
    }

    /// The URL to connect to.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Stops the server (SIGTERM, then SIGKILL after 10 s) and waits for it.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

fn spawn_server(
    binary: &Path,
    port: u16,
    store: &Path,
    log: &Path,
) -> Result<Child, ManagedNatsError> {
    Command::new(binary)
        .args(["--jetstream", "--addr", "127.0.0.1", "--port"])
        .arg(port.to_string())
        .arg("--store_dir")
        .arg(store)
        .arg("--log")
        .arg(log)
        .args(["--server_name", "squall-up"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| ManagedNatsError::Spawn {
            binary: binary.to_path_buf(),
            source,
        })
}

async fn supervise(
    mut child: Child,
    spawn: impl Fn() -> Result<Child, ManagedNatsError> + Send,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            status = child.wait() => {
                tracing::error!(status = ?status, "managed nats-server exited; restarting it in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                match spawn() {
                    Ok(c) => child = c,
                    Err(e) => {
                        tracing::error!(error = %e, "managed nats-server could not be restarted");
                        return;
                    }
                }
            }
            _ = stop.cancelled() => {
                terminate(&mut child).await;
                return;
            }
        }
    }
}

async fn terminate(child: &mut Child) {
    if let Some(pid) = child.id() {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _ = child.kill().await;
}

/// Parses `major.minor.patch` and checks it against [`MIN_NATS_VERSION`].
pub fn version_supported(version: &str) -> bool {
    let mut parts = version
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= MIN_NATS_VERSION
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_compared_numerically() {
        assert!(version_supported("2.15.1"));
        assert!(version_supported("v2.10.0"));
        assert!(version_supported("3.0.0"));
        assert!(!version_supported("2.9.10"));
        assert!(!version_supported("garbage"));
    }

    #[test]
    fn a_missing_explicit_binary_says_what_to_do() {
        let err = locate(Some(Path::new("/nonexistent/nats-server"))).unwrap_err();
        assert!(err.to_string().contains("ops/up"), "{err}");
    }

    #[tokio::test]
    async fn a_taken_port_is_reported_clearly() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let err = ManagedNats::start(PathBuf::from("/bin/true"), port, dir.path())
            .await
            .unwrap_err();
        assert!(matches!(err, ManagedNatsError::PortTaken { port: p } if p == port));
        assert!(err.to_string().contains("--nats-port"));
    }
}

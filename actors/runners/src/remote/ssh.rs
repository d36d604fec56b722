//! SSH for the remote runners: connecting (directly or through a bastion),
//! checking host keys against known_hosts, logging in with a password or a
//! private key, a pool that keeps connections open for reuse across
//! executions, and running one command on a channel with a timeout that
//! kills it on the remote host.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use russh::client::{self, Handle, Msg};
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{Channel, ChannelMsg, Sig};
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{OutputChunk, OutputStream};

/// Channels one pooled connection carries at once: below OpenSSH's
/// `MaxSessions` default of 10, so a burst opens more connections instead
/// of being refused.
const SESSIONS_PER_CONNECTION: usize = 8;

/// How long output is still read after the remote command was killed.
/// Local to the runner crate, which sits below the engine and does not
/// see `squall_actors::timing`; only this module uses it.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// The node's SSH settings for the remote runners (`runners.ssh` in the
/// node's config). Defaults suit a node that logs in as its own user with
/// host keys from its own `~/.ssh/known_hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshSettings {
    /// User when the action gives no `username` (StackStorm's
    /// `system_user.user`); `None`: the user the node runs as.
    pub user: Option<String>,
    /// Private key when the action gives neither `password` nor
    /// `private_key` (StackStorm's `system_user.ssh_key_file`).
    pub key_file: Option<PathBuf>,
    /// known_hosts files a host key must be found in, in order (the node
    /// user's `~/.ssh/known_hosts` and the configured one).
    pub known_hosts: Vec<PathBuf>,
    /// `false` accepts any host key, with a warning in the log each time a
    /// connection is made. Never the default.
    pub strict_host_key_checking: bool,
    /// Longest time to connect and log in.
    pub connect_timeout: Duration,
    /// How long an unused connection stays open for the next execution;
    /// zero closes each connection when its execution ends.
    pub pool_idle_timeout: Duration,
    /// Hosts one parallel execution talks to at once (StackStorm's
    /// `ssh_runner.max_parallel_actions`).
    pub max_parallel: usize,
}

impl Default for SshSettings {
    fn default() -> Self {
        SshSettings {
            user: None,
            key_file: None,
            known_hosts: std::env::home_dir()
                .map(|home| home.join(".ssh").join("known_hosts"))
                .into_iter()
                .collect(),
            strict_host_key_checking: true,
            connect_timeout: Duration::from_secs(60),
            pool_idle_timeout: Duration::from_secs(60),
            max_parallel: 50,
        }
    }
}

/// One SSH endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Target {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// How to prove who we are. `Debug` never shows the secret.
#[derive(Clone)]
pub(crate) enum Secret {
    Password(String),
    Key(Arc<PrivateKey>),
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Password(_) => f.write_str("Password(<redacted>)"),
            Secret::Key(k) => write!(f, "Key({})", k.public_key().fingerprint(HashAlg::Sha256)),
        }
    }
}

/// A user and their credentials.
#[derive(Debug, Clone)]
pub(crate) struct Login {
    pub user: String,
    pub secret: Secret,
}

impl Login {
    /// What tells two logins apart in the pool, without keeping the secret
    /// itself as a key: a digest of the password, or the key's fingerprint.
    fn identity(&self) -> String {
        match &self.secret {
            Secret::Password(p) => {
                let mut h = Sha256::new();
                h.update(b"password\0");
                h.update(p.as_bytes());
                format!("password:{}", hex::encode(h.finalize()))
            }
            Secret::Key(k) => format!("key:{}", k.public_key().fingerprint(HashAlg::Sha256)),
        }
    }
}

/// Why talking to a host failed.
#[derive(Debug, Error)]
pub(crate) enum SshError {
    #[error("cannot connect to {target}: {source}")]
    Connect {
        target: Target,
        source: std::io::Error,
    },
    #[error("connecting to {target} and logging in did not finish in {secs} seconds")]
    ConnectTimeout { target: Target, secs: u64 },
    #[error(
        "the host key of {target} ({fingerprint}) is not in known_hosts ({files}); \
         add it (e.g. `ssh-keyscan -p {port} {host} >> ~/.ssh/known_hosts` after checking \
         the fingerprint) or set runners.ssh.known_hosts in the node's config",
        port = target.port, host = target.host
    )]
    HostKeyUnknown {
        target: Target,
        fingerprint: String,
        files: String,
    },
    #[error(
        "the host key of {target} ({fingerprint}) does not match the key recorded for it \
         at {file}:{line}; connection refused (the host's key changed, or someone is in \
         between)"
    )]
    HostKeyMismatch {
        target: Target,
        fingerprint: String,
        file: String,
        line: usize,
    },
    #[error("cannot read known_hosts file {file}: {reason}")]
    KnownHosts { file: String, reason: String },
    #[error("{target} presented a host certificate; only plain host keys are checked")]
    HostCertificate { target: Target },
    #[error("authentication as `{user}` on {target} with {method} failed")]
    Auth {
        user: String,
        target: Target,
        method: &'static str,
    },
    #[error("{target} refused to run the command")]
    ExecRefused { target: Target },
    #[error("the connection to {target} closed before the command started")]
    ClosedEarly { target: Target },
    #[error("SSH error with {target}: {source}")]
    Protocol {
        target: Target,
        source: russh::Error,
    },
    #[error("SSH error: {0}")]
    Ssh(#[from] russh::Error),
}

impl SshError {
    /// Names the host in an error that came out of the SSH library.
    fn at(self, target: &Target) -> SshError {
        match self {
            SshError::Ssh(russh::Error::IO(source)) => SshError::Connect {
                target: target.clone(),
                source,
            },
            SshError::Ssh(source) => SshError::Protocol {
                target: target.clone(),
                source,
            },
            other => other,
        }
    }
}

/// The russh client handler: checks the server's host key.
struct HostKeyCheck {
    target: Target,
    known_hosts: Vec<PathBuf>,
    strict: bool,
}

impl client::Handler for HostKeyCheck {
    type Error = SshError;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, SshError> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            return Err(SshError::HostCertificate {
                target: self.target.clone(),
            });
        };
        if !self.strict {
            tracing::warn!(host = %self.target, fingerprint = %key.fingerprint(HashAlg::Sha256),
                "host key accepted without checking: runners.ssh.strict_host_key_checking is false");
            return Ok(true);
        }
        check_host_key(&self.target, key, &self.known_hosts)
    }
}

/// Finds `key` for `target` in the known_hosts files: a match accepts,
/// any other key recorded for the host refuses, and no record refuses.
fn check_host_key(target: &Target, key: &PublicKey, files: &[PathBuf]) -> Result<bool, SshError> {
    let mut other = None;
    for file in files {
        let recorded =
            russh::keys::known_hosts::known_host_keys_path(&target.host, target.port, file)
                .map_err(|e| SshError::KnownHosts {
                    file: file.display().to_string(),
                    reason: e.to_string(),
                })?;
        for (line, recorded) in recorded {
            if recorded.key_data() == key.key_data() {
                return Ok(true);
            }
            other.get_or_insert((file.display().to_string(), line));
        }
    }
    let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
    Err(match other {
        Some((file, line)) => SshError::HostKeyMismatch {
            target: target.clone(),
            fingerprint,
            file,
            line,
        },
        None => SshError::HostKeyUnknown {
            target: target.clone(),
            fingerprint,
            files: files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        },
    })
}

/// An open, logged-in connection, with the bastion connection it runs
/// through (kept alive as long as it is).
struct Conn {
    handle: Handle<HostKeyCheck>,
    _bastion: Option<Handle<HostKeyCheck>>,
    sessions: AtomicUsize,
    idle_since: Mutex<Instant>,
}

impl Conn {
    fn usable(&self) -> bool {
        !self.handle.is_closed()
    }
}

/// What a pooled connection is for: the same endpoint, route, user and
/// credentials.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    target: Target,
    bastion: Option<Target>,
    user: String,
    identity: String,
}

struct PoolInner {
    settings: SshSettings,
    config: Arc<client::Config>,
    conns: Mutex<HashMap<PoolKey, Vec<Arc<Conn>>>>,
    reaper: OnceLock<tokio::task::JoinHandle<()>>,
}

/// Open SSH connections, by endpoint and login, shared by the remote
/// runners. Unused connections close after `pool_idle_timeout`; the task
/// that closes them ends with the pool.
pub(crate) struct Pool {
    inner: Arc<PoolInner>,
}

impl Drop for Pool {
    fn drop(&mut self) {
        if let Some(reaper) = self.inner.reaper.get() {
            reaper.abort();
        }
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl Pool {
    pub fn new(settings: SshSettings) -> Pool {
        let config = client::Config {
            keepalive_interval: Some(Duration::from_secs(30)),
            nodelay: true,
            ..client::Config::default()
        };
        Pool {
            inner: Arc::new(PoolInner {
                settings,
                config: Arc::new(config),
                conns: Mutex::new(HashMap::new()),
                reaper: OnceLock::new(),
            }),
        }
    }

    pub fn settings(&self) -> &SshSettings {
        &self.inner.settings
    }

    /// A connection to `target` as `login`, from the pool when one is open
    /// and has room, else a new one.
    pub async fn lease(
        &self,
        target: &Target,
        bastion: Option<&Target>,
        login: &Login,
    ) -> Result<Lease, SshError> {
        let key = PoolKey {
            target: target.clone(),
            bastion: bastion.cloned(),
            user: login.user.clone(),
            identity: login.identity(),
        };
        let reuse = !self.inner.settings.pool_idle_timeout.is_zero();
        if reuse {
            self.start_reaper();
            if let Some(conn) = self.inner.take_room(&key) {
                return Ok(Lease {
                    conn,
                    pooled: true,
                    key,
                    pool: self.inner.clone(),
                    login: login.clone(),
                });
            }
        }
        let conn = self.inner.open(&key, login).await?;
        Ok(Lease {
            conn,
            pooled: false,
            key,
            pool: self.inner.clone(),
            login: login.clone(),
        })
    }

    fn start_reaper(&self) {
        self.inner.reaper.get_or_init(|| {
            let weak: Weak<PoolInner> = Arc::downgrade(&self.inner);
            let every = (self.inner.settings.pool_idle_timeout / 2).max(Duration::from_millis(100));
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let Some(inner) = weak.upgrade() else { break };
                    inner.sweep();
                }
            })
        });
    }
}

impl PoolInner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PoolKey, Vec<Arc<Conn>>>> {
        // A panic elsewhere while holding the lock leaves a usable map.
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take_room(&self, key: &PoolKey) -> Option<Arc<Conn>> {
        let mut conns = self.lock();
        let list = conns.get_mut(key)?;
        list.retain(|c| c.usable());
        let conn = list
            .iter()
            .find(|c| c.sessions.load(Ordering::SeqCst) < SESSIONS_PER_CONNECTION)?
            .clone();
        conn.sessions.fetch_add(1, Ordering::SeqCst);
        Some(conn)
    }

    /// Closes connections idle for longer than the pool keeps them.
    fn sweep(&self) {
        let idle = self.settings.pool_idle_timeout;
        let mut conns = self.lock();
        for list in conns.values_mut() {
            list.retain(|c| {
                c.usable()
                    && (c.sessions.load(Ordering::SeqCst) > 0
                        || c.idle_since
                            .lock()
                            .map_or(true, |since| since.elapsed() < idle))
            });
        }
        conns.retain(|_, list| !list.is_empty());
    }

    fn forget(&self, key: &PoolKey, conn: &Arc<Conn>) {
        if let Some(list) = self.lock().get_mut(key) {
            list.retain(|c| !Arc::ptr_eq(c, conn));
        }
    }

    /// Connects, logs in, and adds the connection to the pool (when the
    /// pool keeps connections) with one session taken.
    async fn open(&self, key: &PoolKey, login: &Login) -> Result<Arc<Conn>, SshError> {
        let target = &key.target;
        let timeout = self.settings.connect_timeout;
        let connecting = async {
            let (handle, bastion) = match &key.bastion {
                None => (self.connect_direct(target, login).await?, None),
                Some(bastion) => {
                    let hop = self.connect_direct(bastion, login).await?;
                    let tunnel = hop
                        .channel_open_direct_tcpip(
                            target.host.clone(),
                            u32::from(target.port),
                            "127.0.0.1",
                            0,
                        )
                        .await
                        .map_err(|e| SshError::Ssh(e).at(bastion))?;
                    let handle = client::connect_stream(
                        self.config.clone(),
                        tunnel.into_stream(),
                        self.checker(target),
                    )
                    .await
                    .map_err(|e| e.at(target))?;
                    (self.log_in(handle, target, login).await?, Some(hop))
                }
            };
            Ok::<_, SshError>((handle, bastion))
        };
        let (handle, bastion) =
            tokio::time::timeout(timeout, connecting)
                .await
                .map_err(|_| SshError::ConnectTimeout {
                    target: target.clone(),
                    secs: timeout.as_secs(),
                })??;
        let conn = Arc::new(Conn {
            handle,
            _bastion: bastion,
            sessions: AtomicUsize::new(1),
            idle_since: Mutex::new(Instant::now()),
        });
        if !self.settings.pool_idle_timeout.is_zero() {
            self.lock()
                .entry(key.clone())
                .or_default()
                .push(conn.clone());
        }
        Ok(conn)
    }

    fn checker(&self, target: &Target) -> HostKeyCheck {
        HostKeyCheck {
            target: target.clone(),
            known_hosts: self.settings.known_hosts.clone(),
            strict: self.settings.strict_host_key_checking,
        }
    }

    async fn connect_direct(
        &self,
        target: &Target,
        login: &Login,
    ) -> Result<Handle<HostKeyCheck>, SshError> {
        let handle = client::connect(
            self.config.clone(),
            (target.host.as_str(), target.port),
            self.checker(target),
        )
        .await
        .map_err(|e| e.at(target))?;
        self.log_in(handle, target, login).await
    }

    async fn log_in(
        &self,
        mut handle: Handle<HostKeyCheck>,
        target: &Target,
        login: &Login,
    ) -> Result<Handle<HostKeyCheck>, SshError> {
        let (result, method) = match &login.secret {
            Secret::Password(p) => (
                handle
                    .authenticate_password(login.user.clone(), p.clone())
                    .await,
                "a password",
            ),
            Secret::Key(k) => {
                let hash = handle
                    .best_supported_rsa_hash()
                    .await
                    .map_err(|e| SshError::Ssh(e).at(target))?
                    .flatten();
                (
                    handle
                        .authenticate_publickey(
                            login.user.clone(),
                            PrivateKeyWithHashAlg::new(k.clone(), hash),
                        )
                        .await,
                    "a private key",
                )
            }
        };
        match result.map_err(|e| SshError::Ssh(e).at(target))? {
            client::AuthResult::Success => Ok(handle),
            client::AuthResult::Failure { .. } => Err(SshError::Auth {
                user: login.user.clone(),
                target: target.clone(),
                method,
            }),
        }
    }
}

/// One execution's use of a connection. Dropping it returns the
/// connection to the pool (or closes it when the pool keeps none).
pub(crate) struct Lease {
    conn: Arc<Conn>,
    /// Taken from the pool rather than opened for this execution: it may
    /// have broken while idle.
    pooled: bool,
    key: PoolKey,
    pool: Arc<PoolInner>,
    login: Login,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.conn.sessions.fetch_sub(1, Ordering::SeqCst);
        if let Ok(mut since) = self.conn.idle_since.lock() {
            *since = Instant::now();
        }
    }
}

/// Why one attempt at a command failed: before the server started it
/// (safe to try again elsewhere) or after.
enum Attempt {
    NotStarted(SshError),
    Failed(SshError),
}

impl Attempt {
    fn into_error(self) -> SshError {
        match self {
            Attempt::NotStarted(e) | Attempt::Failed(e) => e,
        }
    }
}

impl Lease {
    /// Runs `command` on a new channel (see [`exec`]). When a pooled
    /// connection turns out to be broken before the command started, it is
    /// dropped and the command tried once on a new connection.
    pub async fn run(
        &mut self,
        command: &str,
        stdin: &[u8],
        limit: Option<Duration>,
        cancel: &CancellationToken,
        output: Option<&mpsc::UnboundedSender<OutputChunk>>,
    ) -> Result<Ran, SshError> {
        match self.attempt(command, stdin, limit, cancel, output).await {
            Err(Attempt::NotStarted(e)) if self.pooled => {
                tracing::debug!(host = %self.key.target, error = %e,
                    "pooled SSH connection is broken; reconnecting once");
                self.pool.forget(&self.key, &self.conn);
                let conn = self.pool.open(&self.key, &self.login).await?;
                self.conn.sessions.fetch_sub(1, Ordering::SeqCst);
                self.conn = conn;
                self.pooled = false;
                self.attempt(command, stdin, limit, cancel, output)
                    .await
                    .map_err(Attempt::into_error)
            }
            other => other.map_err(Attempt::into_error),
        }
    }

    async fn attempt(
        &self,
        command: &str,
        stdin: &[u8],
        limit: Option<Duration>,
        cancel: &CancellationToken,
        output: Option<&mpsc::UnboundedSender<OutputChunk>>,
    ) -> Result<Ran, Attempt> {
        let target = &self.key.target;
        let channel = self
            .conn
            .handle
            .channel_open_session()
            .await
            .map_err(|e| Attempt::NotStarted(SshError::Ssh(e).at(target)))?;
        exec(channel, target, command, stdin, limit, cancel, output).await
    }
}

/// How a remote command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum End {
    Exited(u32),
    /// Killed by a signal (its name, as the server reports it).
    Signaled(String),
    TimedOut,
    Canceled,
    /// The channel closed without an exit status.
    Lost,
}

/// A remote command that ran.
#[derive(Debug)]
pub(crate) struct Ran {
    pub end: End,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Runs `command` on `channel` and waits for the server to confirm it
/// started, then feeds `stdin` and closes it. On timeout or cancel the
/// remote command is sent `SIGKILL` (OpenSSH's sshd signals the session's
/// whole process group), output is read a little longer, and the channel
/// is closed.
async fn exec(
    mut channel: Channel<Msg>,
    target: &Target,
    command: &str,
    stdin: &[u8],
    limit: Option<Duration>,
    cancel: &CancellationToken,
    output: Option<&mpsc::UnboundedSender<OutputChunk>>,
) -> Result<Ran, Attempt> {
    let lost = |e: russh::Error| SshError::Ssh(e).at(target);
    channel
        .exec(true, command)
        .await
        .map_err(|e| Attempt::NotStarted(lost(e)))?;
    loop {
        match channel.wait().await {
            Some(ChannelMsg::Success) => break,
            Some(ChannelMsg::Failure) => {
                return Err(Attempt::Failed(SshError::ExecRefused {
                    target: target.clone(),
                }))
            }
            Some(ChannelMsg::Close) | None => {
                return Err(Attempt::NotStarted(SshError::ClosedEarly {
                    target: target.clone(),
                }))
            }
            Some(_) => {}
        }
    }
    if !stdin.is_empty() {
        channel
            .data(stdin)
            .await
            .map_err(|e| Attempt::Failed(lost(e)))?;
    }
    channel.eof().await.map_err(|e| Attempt::Failed(lost(e)))?;
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let mut status = None;
    let deadline = limit.map(|l| tokio::time::Instant::now() + l);
    let forward = |stream, data: &[u8]| {
        if let Some(tx) = output {
            // Nobody listening any more is fine.
            let _ = tx.send(OutputChunk {
                stream,
                data: String::from_utf8_lossy(data).into_owned(),
            });
        }
    };
    let stopped = loop {
        let expired = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            msg = channel.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    forward(OutputStream::Stdout, &data);
                    stdout.extend_from_slice(&data);
                }
                Some(ChannelMsg::ExtendedData { data, ext: 1 }) => {
                    forward(OutputStream::Stderr, &data);
                    stderr.extend_from_slice(&data);
                }
                Some(ChannelMsg::ExitStatus { exit_status }) => status = Some(End::Exited(exit_status)),
                Some(ChannelMsg::ExitSignal { signal_name, .. }) => {
                    status = Some(End::Signaled(signal_name_of(&signal_name)));
                }
                Some(ChannelMsg::Close) | None => break None,
                Some(_) => {}
            },
            () = expired => break Some(End::TimedOut),
            () = cancel.cancelled() => break Some(End::Canceled),
        }
    };
    let Some(stopped) = stopped else {
        return Ok(Ran {
            end: status.unwrap_or(End::Lost),
            stdout,
            stderr,
        });
    };
    // The server may not support signals; closing the channel below ends
    // our side either way.
    let _ = channel.signal(Sig::KILL).await;
    let _ = tokio::time::timeout(KILL_GRACE, async {
        while let Some(msg) = channel.wait().await {
            match msg {
                ChannelMsg::Data { data } => stdout.extend_from_slice(&data),
                ChannelMsg::ExtendedData { data, ext: 1 } => stderr.extend_from_slice(&data),
                ChannelMsg::Close => break,
                _ => {}
            }
        }
    })
    .await;
    let _ = channel.close().await;
    Ok(Ran {
        end: stopped,
        stdout,
        stderr,
    })
}

fn signal_name_of(sig: &Sig) -> String {
    match sig {
        Sig::ABRT => "ABRT",
        Sig::ALRM => "ALRM",
        Sig::FPE => "FPE",
        Sig::HUP => "HUP",
        Sig::ILL => "ILL",
        Sig::INT => "INT",
        Sig::KILL => "KILL",
        Sig::PIPE => "PIPE",
        Sig::QUIT => "QUIT",
        Sig::SEGV => "SEGV",
        Sig::TERM => "TERM",
        Sig::USR1 => "USR1",
        Sig::Custom(name) => name,
    }
    .to_string()
}

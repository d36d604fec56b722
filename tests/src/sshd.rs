//! A real OpenSSH server for the remote runner tests: Debian's `sshd` on
//! 127.0.0.1 and a port the OS picked, with its own temporary host key,
//! `sshd_config` and authorized_keys, killed on drop.
//!
//! sshd logs in a dedicated local account, [`TEST_USER`], created by
//! [`test_user`] when missing (the tests run as root, as CI does). Its
//! password is random, set afresh by each test process and known only to
//! it; a sudoers entry lets it `sudo` with that password, so the `sudo` and
//! `sudo_password` parameters are tested for real. No other account can log
//! in to these servers.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::free_port;

/// The local account the test servers let in.
pub const TEST_USER: &str = "squall-ssh-test";

/// Where Debian installs the server.
const SSHD: &str = "/usr/sbin/sshd";

/// The test account, once per test process.
#[derive(Debug)]
pub struct TestUser {
    pub name: &'static str,
    pub password: String,
}

/// Creates [`TEST_USER`] when missing, gives it a fresh random password and
/// a sudoers entry that asks for it.
pub fn test_user() -> Result<&'static TestUser> {
    static USER: OnceLock<TestUser> = OnceLock::new();
    // Tests start in parallel: one of them sets the password, once.
    static SETTING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = SETTING.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(user) = USER.get() {
        return Ok(user);
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("the SSH tests create the local account {TEST_USER} and so must run as root");
    }
    let exists = Command::new("id")
        .arg(TEST_USER)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?
        .success();
    if !exists {
        run(Command::new("useradd").args(["--create-home", "--shell", "/bin/bash", TEST_USER]))?;
    }
    let password = random_hex(16)?;
    let mut chpasswd = Command::new("chpasswd").stdin(Stdio::piped()).spawn()?;
    chpasswd
        .stdin
        .take()
        .context("chpasswd stdin")?
        .write_all(format!("{TEST_USER}:{password}\n").as_bytes())?;
    if !chpasswd.wait()?.success() {
        bail!("chpasswd failed for {TEST_USER}");
    }
    let sudoers = Path::new("/etc/sudoers.d").join(TEST_USER);
    if Path::new("/etc/sudoers.d").is_dir() {
        std::fs::write(&sudoers, format!("{TEST_USER} ALL=(ALL) ALL\n"))?;
        std::fs::set_permissions(
            &sudoers,
            std::os::unix::fs::PermissionsExt::from_mode(0o440),
        )?;
    }
    Ok(USER.get_or_init(|| TestUser {
        name: TEST_USER,
        password,
    }))
}

/// A client key pair made with `ssh-keygen`.
#[derive(Debug)]
pub struct ClientKey {
    pub private_path: PathBuf,
    pub private: String,
    pub public: String,
}

/// Makes a key pair of `kind` (`ed25519`, `rsa`) in `dir`, encrypted with
/// `passphrase` when given.
pub fn client_key(
    dir: &Path,
    name: &str,
    kind: &str,
    passphrase: Option<&str>,
) -> Result<ClientKey> {
    let private_path = dir.join(name);
    run(Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            kind,
            "-N",
            passphrase.unwrap_or(""),
            "-C",
            name,
            "-f",
        ])
        .arg(&private_path))?;
    Ok(ClientKey {
        private: std::fs::read_to_string(&private_path)?,
        public: std::fs::read_to_string(private_path.with_extension("pub"))?,
        private_path,
    })
}

/// A running sshd.
#[derive(Debug)]
pub struct Sshd {
    child: Child,
    pub port: u16,
    /// The host's public key line (`ssh-ed25519 AAAA... comment`).
    pub host_key: String,
    pub dir: tempfile::TempDir,
}

impl Sshd {
    /// Starts sshd letting [`TEST_USER`] in with its password or any of
    /// `authorized_keys`.
    pub fn start(authorized_keys: &[&str]) -> Result<Sshd> {
        test_user()?;
        if !Path::new(SSHD).exists() {
            bail!("{SSHD} is missing: install Debian's openssh-server (ops/env.sh does)");
        }
        // sshd running as root wants its privilege separation directory.
        std::fs::create_dir_all("/run/sshd")?;
        // The port may be taken between choosing and binding: try again.
        let mut last = None;
        for _ in 0..5 {
            match Sshd::try_start(authorized_keys) {
                Ok(sshd) => return Ok(sshd),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("sshd did not start")))
    }

    fn try_start(authorized_keys: &[&str]) -> Result<Sshd> {
        let dir = tempfile::tempdir()?;
        // The test user's side of sshd reads authorized_keys from here.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        let host_key = dir.path().join("host_ed25519");
        run(Command::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "squall-test-host",
                "-f",
            ])
            .arg(&host_key))?;
        let keys = dir.path().join("authorized_keys");
        std::fs::write(&keys, authorized_keys.join(""))?;
        std::fs::set_permissions(&keys, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        let port = free_port()?;
        let config = dir.path().join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1:{port}\n\
                 HostKey {host_key}\n\
                 PidFile {dir}/sshd.pid\n\
                 AuthorizedKeysFile {keys}\n\
                 StrictModes no\n\
                 UsePAM no\n\
                 PasswordAuthentication yes\n\
                 KbdInteractiveAuthentication no\n\
                 PermitRootLogin no\n\
                 AllowUsers {TEST_USER}\n\
                 MaxStartups 200\n\
                 MaxSessions 10\n\
                 LogLevel ERROR\n",
                host_key = host_key.display(),
                dir = dir.path().display(),
                keys = keys.display(),
            ),
        )?;
        let log = std::fs::File::create(dir.path().join("sshd.log"))?;
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {SSHD}"))?;
        let mut sshd = Sshd {
            child,
            port,
            host_key: std::fs::read_to_string(host_key.with_extension("pub"))?
                .trim()
                .to_string(),
            dir,
        };
        sshd.wait_ready()?;
        Ok(sshd)
    }

    /// `127.0.0.1:<port>`, as `hosts` names it.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// This server's line for a known_hosts file.
    pub fn known_hosts_line(&self) -> String {
        format!("[127.0.0.1]:{} {}\n", self.port, self.host_key)
    }

    /// Kills the server's per-connection processes, as a network fault or
    /// a host restart would, and keeps the server listening.
    pub fn drop_connections(&self) -> Result<()> {
        for pid in self.connection_pids()? {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        Ok(())
    }

    /// Connections open to this server now (its per-connection processes).
    pub fn connections(&self) -> Result<usize> {
        Ok(self.connection_pids()?.len())
    }

    fn connection_pids(&self) -> Result<Vec<i32>> {
        let me = self.child.id().to_string();
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc")? {
            let path = entry?.path();
            let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
                continue;
            };
            // `pid (comm) state ppid ...`: the command may hold spaces.
            let ppid = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.split(' ').nth(1));
            if ppid == Some(me.as_str()) {
                if let Some(pid) = path.file_name().and_then(|n| n.to_str()?.parse().ok()) {
                    pids.push(pid);
                }
            }
        }
        Ok(pids)
    }

    /// Waits until the server answers with its SSH banner.
    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                let log =
                    std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default();
                bail!("sshd exited with {status}: {log}");
            }
            if let Ok(mut s) = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)) {
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                let mut banner = [0u8; 8];
                if s.read_exact(&mut banner).is_ok() && banner.starts_with(b"SSH-2.0") {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("sshd on port {} did not answer within 10 s", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

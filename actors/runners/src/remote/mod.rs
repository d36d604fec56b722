//! `remote-shell-cmd` and `remote-shell-script`: StackStorm's remote
//! runners, over SSH to every host in `hosts`.
//!
//! The command line on each host is built as StackStorm's Paramiko actions
//! build it (`export` of the environment, `cd` to `cwd`, `sudo -E -- bash
//! -c` when `sudo`); a script is first uploaded to `<dir>/<execution id>/`
//! and run with the action's parameters as arguments, built as
//! `local-shell-script` builds them, then the directory is removed. The
//! `lib` directory beside the script, when there is one, goes with it to
//! `<dir>/<execution id>/lib/` (as StackStorm copies it), so a script can
//! source its helpers from `$(dirname "$0")/lib`. The
//! result is keyed by host; the execution succeeds only when every host
//! succeeded, and times out only when every host timed out.

mod ssh;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{self, StreamExt};
use serde_json::{json, Map, Value};
use squall_domain::execution::Status;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use ssh::SshSettings;
use ssh::{End, Login, Pool, Secret, Target};

use crate::process::shell_output;
use crate::{OutputChunk, RunOutcome, RunRequest, Runner};

/// Where scripts go when the action gives no `dir`.
const DEFAULT_REMOTE_DIR: &str = "/tmp";
/// How StackStorm tells key material from a path (`REMOTE_RUNNER_PRIVATE_KEY_HEADER`).
const KEY_HEADER: &str = "private key-----";

/// `remote-shell-cmd`.
#[derive(Debug)]
pub struct RemoteShellCmd {
    pool: Arc<Pool>,
}

/// `remote-shell-script`.
#[derive(Debug)]
pub struct RemoteShellScript {
    pool: Arc<Pool>,
}

/// Both remote runners, sharing one connection pool.
pub fn runners(settings: SshSettings) -> (RemoteShellCmd, RemoteShellScript) {
    let pool = Arc::new(Pool::new(settings));
    (
        RemoteShellCmd { pool: pool.clone() },
        RemoteShellScript { pool },
    )
}

impl Runner for RemoteShellCmd {
    fn name(&self) -> &'static str {
        "remote-shell-cmd"
    }

    fn calls_api(&self) -> bool {
        true
    }

    fn run(&self, req: RunRequest) -> BoxFuture<'static, RunOutcome> {
        let pool = self.pool.clone();
        Box::pin(async move {
            if !req.action.entry_point.is_empty() {
                return failure(format!(
                    "action {}.{} has an `entry_point`; a script runs with the remote-shell-script runner",
                    req.action.pack, req.action.name
                ));
            }
            let cmd = match req.parameters.get("cmd") {
                Some(Value::String(c)) if !c.trim().is_empty() => c.clone(),
                Some(Value::String(_) | Value::Null) | None => {
                    return failure("parameter `cmd` is required: the command to run".into())
                }
                Some(other) => {
                    return failure(format!("parameter `cmd` must be a string, not {other}"))
                }
            };
            match Plan::from_request(&req, pool.settings()) {
                Ok(plan) => run_everywhere(&pool, &plan, &Job::Command(cmd), req).await,
                Err(e) => failure(e),
            }
        })
    }
}

impl Runner for RemoteShellScript {
    fn name(&self) -> &'static str {
        "remote-shell-script"
    }

    fn calls_api(&self) -> bool {
        true
    }

    fn run(&self, req: RunRequest) -> BoxFuture<'static, RunOutcome> {
        let pool = self.pool.clone();
        Box::pin(async move {
            let entry_point = &req.action.entry_point;
            let local = req.pack_path.join("actions").join(entry_point);
            let name = Path::new(entry_point)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned());
            let (Some(name), true) = (name, local.is_file()) else {
                return failure(format!(
                    "script {} does not exist on this node (the action's `entry_point`)",
                    local.display()
                ));
            };
            let content = match std::fs::read(&local) {
                Ok(c) => c,
                Err(e) => return failure(format!("cannot read {}: {e}", local.display())),
            };
            let libs = match lib_archive(&local) {
                Ok(libs) => libs,
                Err(e) => return failure(e),
            };
            let dir = match optional_string(&req.parameters, "dir") {
                Ok(dir) => dir.unwrap_or_else(|| DEFAULT_REMOTE_DIR.to_string()),
                Err(e) => return failure(e),
            };
            let remote_dir = format!("{}/{}", dir.trim_end_matches('/'), req.execution_id);
            let job = Job::Script {
                remote_script: format!("{remote_dir}/{name}"),
                remote_dir,
                content,
                libs,
                args: crate::local::script_args(&req.action, &req.parameters),
            };
            match Plan::from_request(&req, pool.settings()) {
                Ok(plan) => run_everywhere(&pool, &plan, &job, req).await,
                Err(e) => failure(e),
            }
        })
    }
}

/// What runs on each host.
enum Job {
    Command(String),
    Script {
        remote_dir: String,
        remote_script: String,
        content: Vec<u8>,
        /// The `lib` directory beside the script, as a tar archive.
        libs: Option<Vec<u8>>,
        args: Vec<String>,
    },
}

/// The `lib` directory beside `script` as a tar archive of `lib/…` (modes
/// kept, symbolic links followed), or `None` when there is none.
fn lib_archive(script: &Path) -> Result<Option<Vec<u8>>, String> {
    let Some(lib) = script
        .parent()
        .map(|d| d.join("lib"))
        .filter(|d| d.is_dir())
    else {
        return Ok(None);
    };
    let unreadable = |e: std::io::Error| format!("cannot pack {}: {e}", lib.display());
    let mut archive = tar::Builder::new(Vec::new());
    archive.follow_symlinks(true);
    archive.append_dir_all("lib", &lib).map_err(unreadable)?;
    archive.into_inner().map(Some).map_err(unreadable)
}

/// One host of `hosts`: as written (the result's key) and where it is.
struct Host {
    name: String,
    target: Target,
}

/// The runner parameters, checked.
struct Plan {
    hosts: Vec<Host>,
    bastion: Option<Target>,
    login: Login,
    parallel: bool,
    timeout: Option<Duration>,
    cwd: Option<String>,
    env: BTreeMap<String, String>,
    sudo: bool,
    sudo_password: Option<String>,
}

impl Plan {
    fn from_request(req: &RunRequest, settings: &SshSettings) -> Result<Plan, String> {
        let p = &req.parameters;
        let port = match p.get("port") {
            None | Some(Value::Null) => 22,
            Some(Value::Number(n)) => n
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("parameter `port` must be a port number, not {n}"))?,
            Some(other) => return Err(format!("parameter `port` must be an integer, not {other}")),
        };
        let hosts_text = optional_string(p, "hosts")?.unwrap_or_default();
        let mut hosts: Vec<Host> = Vec::new();
        for name in hosts_text
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
        {
            if hosts.iter().any(|h| h.name == name) {
                continue;
            }
            let target =
                split_host_port(name, port).map_err(|e| format!("parameter `hosts`: {e}"))?;
            hosts.push(Host {
                name: name.to_string(),
                target,
            });
        }
        if hosts.is_empty() {
            return Err(
                "parameter `hosts` names no host: give a comma-separated list such as `web1,web2:2222`"
                    .into(),
            );
        }
        let bastion = optional_string(p, "bastion_host")?
            .map(|b| {
                split_host_port(&b, port).map_err(|e| format!("parameter `bastion_host`: {e}"))
            })
            .transpose()?;
        let timeout = crate::local::timeout_param(p)?;
        let env = crate::local::env_param(req)?;
        Ok(Plan {
            hosts,
            bastion,
            login: login(p, settings)?,
            parallel: flag(p, "parallel")?,
            timeout,
            cwd: optional_string(p, "cwd")?,
            env,
            sudo: flag(p, "sudo")?,
            sudo_password: optional_string(p, "sudo_password")?,
        })
    }

    /// The command line for `body`, as StackStorm builds it.
    fn command_line(&self, body: &str) -> String {
        let mut parts = Vec::new();
        if !self.env.is_empty() {
            let exports: Vec<String> = self
                .env
                .iter()
                .map(|(k, v)| format!("{}={}", quote(k), quote(v)))
                .collect();
            parts.push(format!("export {}", exports.join(" ")));
        }
        if let Some(cwd) = &self.cwd {
            parts.push(format!("cd {}", quote(cwd)));
        }
        parts.push(body.to_string());
        let line = parts.join(" && ");
        if !self.sudo {
            return line;
        }
        // The password goes on stdin, never on the command line.
        let how = if self.sudo_password.is_some() {
            "-S -p ''"
        } else {
            "-n"
        };
        format!("sudo {how} -E -- bash -c {}", quote(&line))
    }

    fn stdin(&self) -> Vec<u8> {
        match (&self.sudo, &self.sudo_password) {
            (true, Some(password)) => format!("{password}\n").into_bytes(),
            _ => Vec::new(),
        }
    }
}

/// The user and credentials: the action's `password`, else its
/// `private_key` (material or a path on this node, opened with
/// `passphrase`), else the node's `runners.ssh.key_file`.
fn login(p: &Map<String, Value>, settings: &SshSettings) -> Result<Login, String> {
    let user = match optional_string(p, "username")? {
        Some(user) => user,
        None => match &settings.user {
            Some(user) => user.clone(),
            None => nix::unistd::User::from_uid(nix::unistd::geteuid())
                .ok()
                .flatten()
                .map(|u| u.name)
                .ok_or("parameter `username` is required: the node's own user has no name")?,
        },
    };
    let passphrase = optional_string(p, "passphrase")?;
    let secret = if let Some(password) = optional_string(p, "password")? {
        Secret::Password(password)
    } else if let Some(key) = optional_string(p, "private_key")? {
        let material = if key.to_lowercase().contains(KEY_HEADER) {
            key
        } else {
            let path = Path::new(key.trim());
            // The value is secret: an error never repeats it.
            std::fs::read_to_string(path).map_err(|_| {
                "parameter `private_key` is neither private key material \
                 (-----BEGIN ... PRIVATE KEY-----) nor the path of a readable key file on this node"
                    .to_string()
            })?
        };
        Secret::Key(Arc::new(decode_key(
            &material,
            passphrase.as_deref(),
            "parameter `private_key`",
        )?))
    } else if let Some(file) = &settings.key_file {
        let what = format!("runners.ssh.key_file {}", file.display());
        let material =
            std::fs::read_to_string(file).map_err(|e| format!("{what}: cannot read it: {e}"))?;
        Secret::Key(Arc::new(decode_key(
            &material,
            passphrase.as_deref(),
            &what,
        )?))
    } else {
        return Err("no SSH credentials: give `password` or `private_key`, \
                    or set runners.ssh.key_file in the node's config"
            .into());
    };
    Ok(Login { user, secret })
}

fn decode_key(
    material: &str,
    passphrase: Option<&str>,
    what: &str,
) -> Result<russh::keys::PrivateKey, String> {
    match russh::keys::decode_secret_key(material, None) {
        Ok(key) => Ok(key),
        Err(russh::keys::Error::KeyIsEncrypted) => match passphrase {
            None => Err(format!("{what} is encrypted: give its `passphrase`")),
            Some(pass) => russh::keys::decode_secret_key(material, Some(pass))
                .map_err(|_| format!("parameter `passphrase` does not open {what}")),
        },
        Err(e) => Err(format!(
            "{what} is not a private key this runner can read: {e}"
        )),
    }
}

/// `host`, `host:port`, `[v6]:port` or a bare IPv6 address.
fn split_host_port(text: &str, default_port: u16) -> Result<Target, String> {
    let bad_port = |p: &str| format!("`{text}` has a bad port `{p}`");
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("`{text}` has no closing `]`"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad_port(p))?,
            None if after.is_empty() => default_port,
            None => return Err(format!("`{text}` has text after `]`")),
        };
        return Ok(Target {
            host: host.to_string(),
            port,
        });
    }
    match text.split_once(':') {
        Some((host, port)) if !port.contains(':') => Ok(Target {
            host: host.to_string(),
            port: port
                .parse()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| bad_port(port))?,
        }),
        _ => Ok(Target {
            host: text.to_string(),
            port: default_port,
        }),
    }
}

fn optional_string(p: &Map<String, Value>, name: &str) -> Result<Option<String>, String> {
    match p.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!(
            "parameter `{name}` must be a string, not {}",
            kind_of(other)
        )),
    }
}

fn flag(p: &Map<String, Value>, name: &str) -> Result<bool, String> {
    match p.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(format!(
            "parameter `{name}` must be a boolean, not {}",
            kind_of(other)
        )),
    }
}

/// The JSON kind of a value, for errors about parameters that may be
/// secret.
fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Shell quoting as Python's `shlex.quote`.
fn quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "@%+=:,./-_".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Runs the job on every host, in parallel or one after the other, and
/// folds the per-host results into StackStorm's shape and status.
async fn run_everywhere(pool: &Pool, plan: &Plan, job: &Job, req: RunRequest) -> RunOutcome {
    // As in StackStorm, output streams live only from a single host.
    let output = if plan.hosts.len() == 1 {
        req.output.clone()
    } else {
        None
    };
    let at_once = if plan.parallel {
        plan.hosts.len().min(pool.settings().max_parallel.max(1))
    } else {
        1
    };
    let cancel = &req.cancel;
    let output = output.as_ref();
    let runs: Vec<_> = plan
        .hosts
        .iter()
        .map(|host| on_host(pool, plan, host, job, cancel, output))
        .collect();
    let results: Vec<(String, HostOutcome)> =
        stream::iter(runs).buffer_unordered(at_once).collect().await;
    let all = |what: fn(&HostOutcome) -> bool| results.iter().all(|(_, r)| what(r));
    let status = if results.iter().any(|(_, r)| r.end == HostEnd::Canceled) {
        Status::Canceled
    } else if all(|r| r.end == HostEnd::Succeeded) {
        Status::Succeeded
    } else if all(|r| r.end == HostEnd::TimedOut) {
        Status::Timeout
    } else {
        Status::Failed
    };
    let result: Map<String, Value> = results.into_iter().map(|(h, r)| (h, r.value)).collect();
    RunOutcome {
        status,
        result: Value::Object(result),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum HostEnd {
    Succeeded,
    Failed,
    TimedOut,
    Canceled,
}

struct HostOutcome {
    end: HostEnd,
    value: Value,
}

impl HostOutcome {
    /// StackStorm's per-host error entry (`_generate_error_result`).
    fn error(end: HostEnd, error: String, stdout: &[u8], stderr: &[u8]) -> HostOutcome {
        let timeout = end == HostEnd::TimedOut;
        HostOutcome {
            value: json!({
                "failed": true,
                "succeeded": false,
                "timeout": timeout,
                "return_code": if timeout || end == HostEnd::Canceled { -9 } else { 255 },
                "stdout": shell_output(&String::from_utf8_lossy(stdout)),
                "stderr": shell_output(&String::from_utf8_lossy(stderr)),
                "error": error,
            }),
            end,
        }
    }
}

async fn on_host(
    pool: &Pool,
    plan: &Plan,
    host: &Host,
    job: &Job,
    cancel: &CancellationToken,
    output: Option<&mpsc::UnboundedSender<OutputChunk>>,
) -> (String, HostOutcome) {
    let name = &host.name;
    (
        name.clone(),
        host_run(pool, plan, host, job, cancel, output).await,
    )
}

async fn host_run(
    pool: &Pool,
    plan: &Plan,
    host: &Host,
    job: &Job,
    cancel: &CancellationToken,
    output: Option<&mpsc::UnboundedSender<OutputChunk>>,
) -> HostOutcome {
    let name = &host.name;
    let failed = |e: String| HostOutcome::error(HostEnd::Failed, e, b"", b"");
    let mut lease = match pool
        .lease(&host.target, plan.bastion.as_ref(), &plan.login)
        .await
    {
        Ok(lease) => lease,
        Err(e) => return failed(format!("Failed connecting to host {name}: {e}")),
    };
    let body = match job {
        Job::Command(cmd) => cmd.clone(),
        Job::Script {
            remote_dir,
            remote_script,
            content,
            libs,
            args,
        } => {
            let upload = format!(
                "umask 077 && mkdir -p {dir} && cat > {script} && chmod 744 {script}",
                dir = quote(remote_dir),
                script = quote(remote_script),
            );
            let mut copies = vec![(upload, &content[..], "the script")];
            if let Some(libs) = libs {
                let unpack = format!("umask 077 && cd {} && tar -xf -", quote(remote_dir));
                copies.push((unpack, &libs[..], "the script's lib directory"));
            }
            for (command, input, what) in copies {
                let copied = lease
                    .run(&command, input, plan.timeout, cancel, None)
                    .await
                    .map_err(|e| e.to_string());
                match copied {
                    Ok(ran) if ran.end == End::Exited(0) => {}
                    Ok(ran) => {
                        return failed(format!(
                            "Failed copying {what} to host {name} ({:?}): {}",
                            ran.end,
                            String::from_utf8_lossy(&ran.stderr).trim()
                        ))
                    }
                    Err(e) => return failed(format!("Failed copying {what} to host {name}: {e}")),
                }
            }
            let mut line = quote(remote_script);
            for arg in args {
                line.push(' ');
                line.push_str(&quote(arg));
            }
            line
        }
    };
    let outcome = run_command(&mut lease, plan, name, &body, cancel, output).await;
    if let Job::Script { remote_dir, .. } = job {
        let cleanup = format!("rm -rf {}", quote(remote_dir));
        let removed = lease
            .run(&cleanup, b"", plan.timeout, &CancellationToken::new(), None)
            .await
            .map_err(|e| e.to_string())
            .map(|ran| ran.end);
        if removed != Ok(End::Exited(0)) {
            tracing::warn!(host = %name, dir = %remote_dir, result = ?removed,
                "could not remove the remote script directory");
        }
    }
    outcome
}

async fn run_command(
    lease: &mut ssh::Lease,
    plan: &Plan,
    name: &str,
    body: &str,
    cancel: &CancellationToken,
    output: Option<&mpsc::UnboundedSender<OutputChunk>>,
) -> HostOutcome {
    let command = plan.command_line(body);
    let ran = match lease
        .run(&command, &plan.stdin(), plan.timeout, cancel, output)
        .await
    {
        Ok(ran) => ran,
        Err(e) => {
            return HostOutcome::error(
                HostEnd::Failed,
                format!("Failed executing command on host {name}: {e}"),
                b"",
                b"",
            )
        }
    };
    let stderr_text = String::from_utf8_lossy(&ran.stderr);
    if plan.sudo
        && plan.sudo_password.is_some()
        && stderr_text.contains("incorrect password attempt")
    {
        return HostOutcome::error(
            HostEnd::Failed,
            format!(
                "Invalid sudo password provided or sudo is not configured for this user ({})",
                plan.login.user
            ),
            &ran.stdout,
            &ran.stderr,
        );
    }
    match ran.end {
        End::Exited(code) => {
            let ok = code == 0;
            HostOutcome {
                end: if ok {
                    HostEnd::Succeeded
                } else {
                    HostEnd::Failed
                },
                value: json!({
                    "stdout": shell_output(&String::from_utf8_lossy(&ran.stdout)),
                    "stderr": shell_output(&stderr_text),
                    "return_code": code,
                    "succeeded": ok,
                    "failed": !ok,
                }),
            }
        }
        End::TimedOut => HostOutcome::error(
            HostEnd::TimedOut,
            format!(
                "Command didn't finish in {} seconds on host {name}; it was killed",
                plan.timeout.map_or(0, |t| t.as_secs())
            ),
            &ran.stdout,
            &ran.stderr,
        ),
        End::Canceled => HostOutcome::error(
            HostEnd::Canceled,
            "Action was canceled".into(),
            &ran.stdout,
            &ran.stderr,
        ),
        End::Signaled(sig) => HostOutcome::error(
            HostEnd::Failed,
            format!("the command on host {name} was killed by signal {sig}"),
            &ran.stdout,
            &ran.stderr,
        ),
        End::Lost => HostOutcome::error(
            HostEnd::Failed,
            format!(
                "the connection to host {name} closed before the command reported its exit status"
            ),
            &ran.stdout,
            &ran.stderr,
        ),
    }
}

/// An execution that could not start on any host.
fn failure(error: String) -> RunOutcome {
    RunOutcome {
        status: Status::Failed,
        result: json!({
            "failed": true,
            "succeeded": false,
            "return_code": 255,
            "error": error,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_split_like_stackstorms() {
        let t = |s: &str| split_host_port(s, 22).map(|t| (t.host, t.port));
        assert_eq!(t("web1"), Ok(("web1".into(), 22)));
        assert_eq!(t("web1:2222"), Ok(("web1".into(), 2222)));
        assert_eq!(t("[::1]:2200"), Ok(("::1".into(), 2200)));
        assert_eq!(t("::1"), Ok(("::1".into(), 22)));
        assert!(t("web1:ssh").unwrap_err().contains("bad port `ssh`"));
        assert!(t("web1:0").is_err());
    }

    #[test]
    fn quoting_matches_shlex() {
        assert_eq!(quote("/tmp/x-1.sh"), "/tmp/x-1.sh");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
    }

    fn plan(params: Value) -> Result<Plan, String> {
        let req = RunRequest {
            execution_id: "e1".into(),
            action: squall_domain::model::ActionDef {
                name: "a".into(),
                pack: "p".into(),
                description: String::new(),
                enabled: true,
                runner_type: "remote-shell-cmd".into(),
                entry_point: String::new(),
                parameters: Default::default(),
                output_schema: None,
                tags: vec![],
                notify: None,
                metadata_file: String::new(),
            },
            pack_path: Default::default(),
            parameters: params.as_object().cloned().unwrap_or_default(),
            config: Default::default(),
            env: Default::default(),
            output: None,
            cancel: CancellationToken::new(),
        };
        Plan::from_request(&req, &SshSettings::default())
    }

    #[test]
    fn the_command_line_is_stackstorms_and_keeps_the_sudo_password_off_it() {
        let p = plan(json!({"hosts": "h", "password": "pw", "cwd": "/srv/my app",
            "env": {"A": "x y"}, "sudo": true, "sudo_password": "s3cret"}))
        .unwrap();
        let line = p.command_line("ls");
        assert!(line.starts_with("sudo -S -p '' -E -- bash -c '"), "{line}");
        assert!(line.contains("A='\\''x y'\\''"), "{line}");
        assert!(line.contains("cd '\\''/srv/my app'\\'' && ls"), "{line}");
        assert!(!line.contains("s3cret"), "{line}");
        assert_eq!(p.stdin(), b"s3cret\n");
        let plain = plan(json!({"hosts": "h", "password": "pw"})).unwrap();
        assert!(plain.command_line("ls").ends_with("&& ls"));
        assert!(plain.stdin().is_empty());
    }

    #[test]
    fn bad_parameters_name_the_field_and_never_echo_secrets() {
        for (params, needle) in [
            (
                json!({"hosts": " , ", "password": "pw"}),
                "`hosts` names no host",
            ),
            (
                json!({"hosts": "h:99999", "password": "pw"}),
                "parameter `hosts`",
            ),
            (
                json!({"hosts": "h", "password": "pw", "port": 0}),
                "parameter `port`",
            ),
            (
                json!({"hosts": "h", "password": "pw", "timeout": "soon"}),
                "`timeout`",
            ),
            (
                json!({"hosts": "h", "password": "pw", "env": ["A"]}),
                "`env`",
            ),
            (
                json!({"hosts": "h", "password": 7}),
                "`password` must be a string",
            ),
            (
                json!({"hosts": "h", "private_key": "not-a-key-not-a-file"}),
                "parameter `private_key` is neither",
            ),
            (
                json!({"hosts": "h", "private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\ngarbage\n-----END OPENSSH PRIVATE KEY-----"}),
                "parameter `private_key` is not a private key",
            ),
        ] {
            let err = plan(params.clone()).err().unwrap_or_default();
            assert!(err.contains(needle), "{params}: {err}");
            assert!(
                !err.contains("not-a-key-not-a-file") && !err.contains("garbage"),
                "{err}"
            );
        }
    }
}

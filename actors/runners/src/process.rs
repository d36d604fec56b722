//! Running one local process the way StackStorm's local runner does: in its
//! own process group, output streamed and collected, bounded by a timeout
//! and a cancel token, and turned into the local runner's result shape.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use squall_domain::execution::Status;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{OutputChunk, OutputStream, RunOutcome};

/// How long output is still read after the process group was killed, in
/// case a process outside the group holds the pipes open.
/// Local to the runner crate, which sits below the engine and does not
/// see `squall_actors::timing`; only this module uses it.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// What to run and under which limits.
#[derive(Debug)]
pub struct Spec {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub env: BTreeMap<String, String>,
    /// `None`: no limit.
    pub timeout: Option<Duration>,
    /// Written to stdin (a sudo password), then stdin closes.
    pub stdin: Option<String>,
}

/// How the process ended.
pub enum End {
    Exited(std::process::ExitStatus),
    TimedOut(u64),
    Canceled,
    /// Its end could not be learnt (the wait failed); it was killed.
    Lost(String),
}

/// A process that ran: how it ended and everything it printed.
pub struct Finished {
    pub end: End,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `spec` to its end and reports it in the local runner's shape.
pub async fn run(
    spec: Spec,
    output: Option<mpsc::UnboundedSender<OutputChunk>>,
    cancel: CancellationToken,
) -> RunOutcome {
    match execute(spec, output, cancel).await {
        Ok(f) => outcome(f.end, f.stdout, f.stderr),
        Err(e) => failure(e),
    }
}

/// A started process, however it was started: its process group, its
/// pipes, and how to learn its end.
pub struct Launched {
    /// The process group to kill on timeout or cancel.
    pub pgid: Option<i32>,
    pub stdin: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    pub stdout: Box<dyn AsyncRead + Send + Unpin>,
    pub stderr: Box<dyn AsyncRead + Send + Unpin>,
    /// Resolves to the exit status. Dropping it must not leave a process
    /// behind that the group kill would miss.
    pub wait: futures::future::BoxFuture<'static, Result<std::process::ExitStatus, String>>,
}

/// Runs `spec` to its end; `Err` when it could not even start.
pub async fn execute(
    spec: Spec,
    output: Option<mpsc::UnboundedSender<OutputChunk>>,
    cancel: CancellationToken,
) -> Result<Finished, String> {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .envs(&spec.env)
        .stdin(if spec.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let where_ = spec
                .cwd
                .as_ref()
                .map(|c| format!(" in {}", c.display()))
                .unwrap_or_default();
            return Err(format!(
                "could not start {}{where_}: {e}",
                spec.program.display()
            ));
        }
    };
    let pgid = child.id().and_then(|id| i32::try_from(id).ok());
    let stdin = child
        .stdin
        .take()
        .map(|s| Box::new(s) as Box<dyn AsyncWrite + Send + Unpin>);
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err("the process has no output pipes".into());
    };
    let launched = Launched {
        pgid,
        stdin,
        stdout: Box::new(stdout),
        stderr: Box::new(stderr),
        wait: Box::pin(async move {
            child
                .wait()
                .await
                .map_err(|e| format!("could not wait for the process: {e}"))
        }),
    };
    Ok(supervise(launched, spec.stdin, spec.timeout, output, cancel).await)
}

/// Feeds a started process its stdin, collects its output, and bounds it
/// by `timeout` and `cancel` (killing its whole process group).
pub async fn supervise(
    launched: Launched,
    stdin: Option<String>,
    timeout: Option<Duration>,
    output: Option<mpsc::UnboundedSender<OutputChunk>>,
    cancel: CancellationToken,
) -> Finished {
    let Launched {
        pgid,
        stdin: pipe,
        stdout,
        stderr,
        mut wait,
    } = launched;
    if let (Some(input), Some(mut pipe)) = (stdin, pipe) {
        // A process that never reads stdin must not block us: ignore errors.
        let _ = pipe.write_all(format!("{input}\n").as_bytes()).await;
        let _ = pipe.shutdown().await;
    }
    // Both pipes are read on this task, while the process is waited for
    // (a task each would cost two spawns per run).
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let end = {
        let reading = async {
            tokio::join!(
                collect(stdout, OutputStream::Stdout, output.clone(), &mut out),
                collect(stderr, OutputStream::Stderr, output, &mut err)
            )
        };
        tokio::pin!(reading);
        let limit = async {
            match timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(limit);
        let mut read = false;
        let end = loop {
            tokio::select! {
                status = &mut wait => break match status {
                    Ok(s) => End::Exited(s),
                    Err(e) => End::Lost(e),
                },
                _ = &mut reading, if !read => read = true,
                () = &mut limit => break End::TimedOut(timeout.map_or(0, |t| t.as_secs())),
                () = cancel.cancelled() => break End::Canceled,
            }
        };
        if !matches!(end, End::Exited(_)) {
            if let Some(pgid) = pgid {
                // The group may already be gone; that is what we want anyway.
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            }
            let _ = tokio::time::timeout(DRAIN_GRACE, wait).await;
        }
        // A process outside the group may hold the pipes open: what was
        // read by then is kept.
        if !read {
            let _ = tokio::time::timeout(DRAIN_GRACE, &mut reading).await;
        }
        end
    };
    Finished {
        end,
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr: String::from_utf8_lossy(&err).into_owned(),
    }
}

/// Reads a pipe to its end into `all`, forwarding each chunk.
async fn collect(
    mut pipe: impl AsyncRead + Unpin,
    stream: OutputStream,
    output: Option<mpsc::UnboundedSender<OutputChunk>>,
    all: &mut Vec<u8>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Some(tx) = &output {
                    // Nobody listening any more is fine.
                    let _ = tx.send(OutputChunk {
                        stream,
                        data: String::from_utf8_lossy(&buf[..n]).into_owned(),
                    });
                }
                all.extend_from_slice(&buf[..n]);
            }
        }
    }
}

fn outcome(end: End, stdout: String, stderr: String) -> RunOutcome {
    let (status, code, error) = match end {
        End::Exited(s) => match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
            (Some(0), _) => (Status::Succeeded, 0, None),
            (Some(c), _) => (Status::Failed, i64::from(c), None),
            (None, Some(sig)) => (
                Status::Failed,
                -i64::from(sig),
                Some(format!("the process was killed by signal {sig}")),
            ),
            (None, None) => (Status::Failed, -1, None),
        },
        End::TimedOut(secs) => (
            Status::Timeout,
            -9,
            Some(format!("Action failed to complete in {secs} seconds")),
        ),
        End::Canceled => (Status::Canceled, -9, Some("Action was canceled".into())),
        End::Lost(e) => (Status::Failed, -1, Some(e)),
    };
    let mut result = json!({
        "failed": status != Status::Succeeded,
        "succeeded": status == Status::Succeeded,
        "return_code": code,
        "stdout": shell_output(&stdout),
        "stderr": shell_output(&stderr),
    });
    if let Some(error) = error {
        result["error"] = json!(error);
    }
    RunOutcome { status, result }
}

/// Output as StackStorm stores it: trailing newlines stripped, and parsed
/// when it is JSON (`jsonify.json_loads`).
pub(crate) fn shell_output(text: &str) -> Value {
    let trimmed = text.trim_end_matches(['\n', '\r']);
    serde_json::from_str(trimmed).unwrap_or_else(|_| Value::String(trimmed.to_string()))
}

/// A run that never started: `failed` with the reason.
pub fn failure(error: String) -> RunOutcome {
    RunOutcome {
        status: Status::Failed,
        result: json!({
            "failed": true,
            "succeeded": false,
            "return_code": -1,
            "stdout": "",
            "stderr": "",
            "error": error,
        }),
    }
}

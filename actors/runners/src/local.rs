//! `local-shell-cmd` and `local-shell-script`: StackStorm's local runners.
//!
//! Both honour the runner parameters `cwd`, `env`, `timeout` (seconds,
//! default 60; 0 or less means none), `sudo` and `sudo_password`. The
//! command runner hands `cmd` to `bash -c`; the script runner makes
//! `actions/<entry_point>` executable and runs it with the action's own
//! parameters as arguments, built the way StackStorm builds them.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{Map, Value};
use squall_domain::model::ActionDef;
use squall_domain::runner_types;

use crate::process::{self, Spec};
use crate::{RunOutcome, RunRequest, Runner};

/// Timeout when the action gives none.
const DEFAULT_TIMEOUT_SECS: i64 = 60;

/// `local-shell-cmd`.
#[derive(Debug, Default)]
pub struct LocalShellCmd;

/// `local-shell-script`.
#[derive(Debug, Default)]
pub struct LocalShellScript;

impl Runner for LocalShellCmd {
    fn name(&self) -> &'static str {
        "local-shell-cmd"
    }

    fn calls_api(&self) -> bool {
        true
    }

    fn run(&self, req: RunRequest) -> BoxFuture<'static, RunOutcome> {
        Box::pin(async move {
            let cmd = match req.parameters.get("cmd") {
                Some(Value::String(c)) if !c.trim().is_empty() => c.clone(),
                Some(Value::String(_)) | None | Some(Value::Null) => {
                    return process::failure(
                        "parameter `cmd` is required: the command to run".into(),
                    )
                }
                Some(other) => {
                    return process::failure(format!(
                        "parameter `cmd` must be a string, not {other}"
                    ))
                }
            };
            match spec(&req, shell(), vec!["-c".into(), cmd]) {
                Ok(spec) => process::run(spec, req.output, req.cancel).await,
                Err(e) => process::failure(e),
            }
        })
    }
}

impl Runner for LocalShellScript {
    fn name(&self) -> &'static str {
        "local-shell-script"
    }

    fn calls_api(&self) -> bool {
        true
    }

    fn run(&self, req: RunRequest) -> BoxFuture<'static, RunOutcome> {
        Box::pin(async move {
            let script = req.pack_path.join("actions").join(&req.action.entry_point);
            if req.action.entry_point.is_empty() || !script.is_file() {
                return process::failure(format!(
                    "script {} does not exist on this node",
                    script.display()
                ));
            }
            if let Err(e) = make_executable(&script) {
                return process::failure(format!(
                    "cannot make {} executable: {e}",
                    script.display()
                ));
            }
            let args = script_args(&req.action, &req.parameters);
            // Scripts without a shebang run through bash, as a shell would.
            let (program, args) = if has_shebang(&script) {
                (script, args)
            } else {
                let mut all = vec![script.display().to_string()];
                all.extend(args);
                (shell(), all)
            };
            match spec(&req, program, args) {
                Ok(spec) => process::run(spec, req.output, req.cancel).await,
                Err(e) => process::failure(e),
            }
        })
    }
}

fn shell() -> PathBuf {
    let bash = Path::new("/bin/bash");
    if bash.exists() {
        bash.to_path_buf()
    } else {
        PathBuf::from("sh")
    }
}

fn has_shebang(script: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 2];
    std::fs::File::open(script)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| &head == b"#!")
}

fn make_executable(script: &Path) -> std::io::Result<()> {
    let mut perms = std::fs::metadata(script)?.permissions();
    if perms.mode() & 0o111 != 0o111 {
        perms.set_mode(perms.mode() | 0o111);
        std::fs::set_permissions(script, perms)?;
    }
    Ok(())
}

/// The runner parameter `timeout` (seconds; StackStorm's default when
/// absent, none when 0 or less).
pub(crate) fn timeout_param(p: &Map<String, Value>) -> Result<Option<Duration>, String> {
    let secs = match p.get("timeout") {
        None | Some(Value::Null) => Some(DEFAULT_TIMEOUT_SECS),
        Some(Value::Number(n)) => n.as_i64(),
        Some(other) => {
            return Err(format!(
                "parameter `timeout` must be an integer, not {other}"
            ))
        }
    };
    Ok(secs
        .filter(|t| *t > 0)
        .map(|t| Duration::from_secs(t.unsigned_abs())))
}

/// The environment of an action's command: the `env` parameter (values
/// as text), then StackStorm's `ST2_ACTION_*` variables, which win.
pub(crate) fn env_param(req: &RunRequest) -> Result<BTreeMap<String, String>, String> {
    let p = &req.parameters;
    let mut env = BTreeMap::new();
    match p.get("env") {
        None | Some(Value::Null) => {}
        Some(Value::Object(vars)) => {
            for (k, v) in vars {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                env.insert(k.clone(), v);
            }
        }
        Some(other) => return Err(format!("parameter `env` must be an object, not {other}")),
    }
    let debug = p.get("debug").and_then(Value::as_bool).unwrap_or(false);
    env.extend(req.env.vars(debug));
    Ok(env)
}

/// Builds the process spec of a local process (both local runners and
/// `python-script`): sudo wrapping, cwd,
/// environment and timeout.
pub(crate) fn spec(req: &RunRequest, program: PathBuf, args: Vec<String>) -> Result<Spec, String> {
    let p = &req.parameters;
    let timeout = timeout_param(p)?;
    let cwd = match p.get("cwd") {
        None | Some(Value::Null) => None,
        Some(Value::String(c)) if c.is_empty() => None,
        Some(Value::String(c)) => Some(PathBuf::from(c)),
        Some(other) => return Err(format!("parameter `cwd` must be a string, not {other}")),
    };
    let env = env_param(req)?;
    let sudo = p.get("sudo").and_then(Value::as_bool).unwrap_or(false);
    let password = p
        .get("sudo_password")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let (program, args, stdin) = if sudo && !nix::unistd::geteuid().is_root() {
        let mut sudo_args = vec![if password.is_some() { "-S" } else { "-n" }.to_string()];
        sudo_args.extend([
            "-E".to_string(),
            "--".to_string(),
            program.display().to_string(),
        ]);
        sudo_args.extend(args);
        (PathBuf::from("sudo"), sudo_args, password)
    } else {
        (program, args, None)
    };
    Ok(Spec {
        program,
        args,
        cwd,
        env,
        timeout,
        stdin,
    })
}

/// The script's arguments from the action's own parameters (runner
/// parameters excluded): the named ones first as `<kwarg_op>name=value`,
/// sorted by name, then those with a `position`, in order (StackStorm's
/// `_get_script_arguments`). As in StackStorm, a
/// positional `true`/`false` is `1`/`0` and a positional null is `""`; a
/// named `true` is a bare flag, and named `false`, null or empty values are
/// left out.
pub(crate) fn script_args(action: &ActionDef, params: &Map<String, Value>) -> Vec<String> {
    let is_runner_param = |name: &str| {
        runner_types::lookup(&action.runner_type)
            .is_some_and(|r| r.runner_parameters.contains_key(name))
    };
    let kwarg_op = params
        .get("kwarg_op")
        .and_then(Value::as_str)
        .unwrap_or("--");
    let mut positional: BTreeMap<u32, String> = BTreeMap::new();
    let mut named = Vec::new();
    for (name, value) in params {
        if is_runner_param(name) {
            continue;
        }
        match action.parameters.get(name).and_then(|s| s.position) {
            Some(pos) => {
                let text = match value {
                    Value::Bool(b) => if *b { "1" } else { "0" }.to_string(),
                    other => serialize(other),
                };
                positional.insert(pos, text);
            }
            None => match value {
                Value::Null | Value::Bool(false) => {}
                Value::Bool(true) => named.push(format!("{kwarg_op}{name}")),
                Value::String(s) if s.is_empty() => {}
                other => named.push(format!("{kwarg_op}{name}={}", serialize(other))),
            },
        }
    }
    // StackStorm's `_get_script_arguments`: named, then positional.
    named.into_iter().chain(positional.into_values()).collect()
}

fn serialize(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(serialize).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use nix::errno::Errno;
    use nix::sys::signal::kill;
    use nix::unistd::Pid;
    use serde_json::json;
    use squall_domain::execution::Status;
    use squall_domain::model::ParamSpec;
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::{OutputStream, Runner};

    fn action(runner: &str, entry_point: &str, params: &[(&str, Option<u32>)]) -> ActionDef {
        ActionDef {
            name: "a".into(),
            pack: "tests".into(),
            description: String::new(),
            enabled: true,
            runner_type: runner.into(),
            entry_point: entry_point.into(),
            parameters: params
                .iter()
                .map(|(n, position)| {
                    let spec = ParamSpec {
                        position: *position,
                        ..ParamSpec::default()
                    };
                    (n.to_string(), spec)
                })
                .collect(),
            output_schema: None,
            tags: vec![],
            notify: None,
            metadata_file: String::new(),
        }
    }

    fn request(action: ActionDef, pack: &Path, params: Value) -> RunRequest {
        RunRequest {
            execution_id: "e1".into(),
            action,
            pack_path: pack.to_path_buf(),
            parameters: params.as_object().cloned().unwrap_or_default(),
            config: Default::default(),
            env: crate::ActionEnv {
                pack: "p".into(),
                execution_id: "e1".into(),
                api_url: "http://127.0.0.1:9101/api/v1".into(),
                auth_token: Some("t0k3n".into()),
            },
            output: None,
            cancel: CancellationToken::new(),
        }
    }

    async fn cmd(params: Value) -> RunOutcome {
        let req = request(action("local-shell-cmd", "", &[]), Path::new("/"), params);
        LocalShellCmd.run(req).await
    }

    #[tokio::test]
    async fn success_has_stackstorms_shape() {
        let out = cmd(json!({"cmd": "echo hello; echo oops >&2"})).await;
        assert_eq!(out.status, Status::Succeeded);
        assert_eq!(
            out.result,
            json!({"failed": false, "succeeded": true, "return_code": 0,
                   "stdout": "hello", "stderr": "oops"})
        );
    }

    #[tokio::test]
    async fn non_zero_exit_fails_with_its_code() {
        let out = cmd(json!({"cmd": "echo partial; exit 3"})).await;
        assert_eq!(out.status, Status::Failed);
        assert_eq!(out.result["return_code"], 3);
        assert_eq!(out.result["failed"], true);
        assert_eq!(out.result["stdout"], "partial");
    }

    #[tokio::test]
    async fn json_output_is_parsed() {
        let out = cmd(json!({"cmd": r#"echo '{"disk": 91, "ok": [1, 2]}'"#})).await;
        assert_eq!(out.result["stdout"], json!({"disk": 91, "ok": [1, 2]}));
    }

    #[tokio::test]
    async fn env_cwd_and_execution_variables_reach_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let out = cmd(json!({
            "cmd": "echo $GREETING $ST2_ACTION_EXECUTION_ID $(pwd)",
            "env": {"GREETING": "hi", "N": 1},
            "cwd": dir.path(),
        }))
        .await;
        let canonical = dir.path().canonicalize().unwrap();
        assert_eq!(
            out.result["stdout"],
            format!("hi e1 {}", canonical.display())
        );
    }

    #[tokio::test]
    async fn stackstorms_action_variables_win_over_the_env_parameter() {
        let out = cmd(json!({
            "cmd": "echo $ST2_ACTION_PACK_NAME $ST2_ACTION_EXECUTION_ID $ST2_ACTION_API_URL $ST2_ACTION_AUTH_TOKEN $ST2_ACTION_DEBUG",
            "env": {"ST2_ACTION_EXECUTION_ID": "forged"},
        }))
        .await;
        assert_eq!(
            out.result["stdout"],
            "p e1 http://127.0.0.1:9101/api/v1 t0k3n False"
        );
    }

    #[test]
    fn the_token_is_never_in_debug_output() {
        let req = request(
            action("local-shell-cmd", "", &[]),
            Path::new("/"),
            json!({}),
        );
        let shown = format!("{req:?}");
        assert!(!shown.contains("t0k3n"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[tokio::test]
    async fn bad_parameters_fail_with_a_reason() {
        for (params, needle) in [
            (json!({}), "`cmd` is required"),
            (json!({"cmd": 5}), "`cmd` must be a string"),
            (
                json!({"cmd": "true", "timeout": "soon"}),
                "`timeout` must be an integer",
            ),
            (
                json!({"cmd": "true", "env": ["A=1"]}),
                "`env` must be an object",
            ),
            (
                json!({"cmd": "true", "cwd": "/no/such/dir"}),
                "/no/such/dir",
            ),
        ] {
            let out = cmd(params.clone()).await;
            assert_eq!(out.status, Status::Failed, "{params}");
            let error = out.result["error"].as_str().unwrap_or_default();
            assert!(error.contains(needle), "{params}: {error}");
        }
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let started = Instant::now();
        let out = cmd(json!({
            "cmd": format!("sleep 300 & echo $! > {}; echo before; wait", pid_file.display()),
            "timeout": 1,
        }))
        .await;
        assert!(started.elapsed() < Duration::from_secs(20));
        assert_eq!(out.status, Status::Timeout);
        assert_eq!(out.result["return_code"], -9);
        assert_eq!(out.result["stdout"], "before");
        assert_eq!(
            out.result["error"],
            "Action failed to complete in 1 seconds"
        );
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while kill(Pid::from_raw(pid), None) != Err(Errno::ESRCH) {
            assert!(Instant::now() < deadline, "background child {pid} survived");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn cancel_stops_the_command() {
        let mut req = request(
            action("local-shell-cmd", "", &[]),
            Path::new("/"),
            json!({"cmd": "sleep 300"}),
        );
        let cancel = CancellationToken::new();
        req.cancel = cancel.clone();
        let run = tokio::spawn(LocalShellCmd.run(req));
        cancel.cancel();
        let out = tokio::time::timeout(Duration::from_secs(20), run)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(out.status, Status::Canceled);
        assert_eq!(out.result["error"], "Action was canceled");
    }

    #[tokio::test]
    async fn output_read_before_an_escaped_process_holds_the_pipe_is_kept() {
        // The background process leaves the group and keeps stdout open:
        // the run ends after the drain grace, with what was printed.
        let started = Instant::now();
        let out = cmd(json!({"cmd": "echo before; setsid sleep 4 & echo after"})).await;
        assert_eq!(out.status, Status::Succeeded, "{}", out.result);
        assert_eq!(out.result["stdout"], "before\nafter");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn large_output_does_not_deadlock_and_streams() {
        let mut req = request(
            action("local-shell-cmd", "", &[]),
            Path::new("/"),
            json!({"cmd": "head -c 3000000 /dev/zero | tr '\\0' a; head -c 1000000 /dev/zero | tr '\\0' b >&2"}),
        );
        let (tx, mut rx) = mpsc::unbounded_channel();
        req.output = Some(tx);
        let out = LocalShellCmd.run(req).await;
        assert_eq!(out.status, Status::Succeeded);
        assert_eq!(out.result["stdout"].as_str().unwrap().len(), 3_000_000);
        assert_eq!(out.result["stderr"].as_str().unwrap().len(), 1_000_000);
        let (mut streamed_out, mut streamed_err) = (0, 0);
        while let Ok(chunk) = rx.try_recv() {
            match chunk.stream {
                OutputStream::Stdout => streamed_out += chunk.data.len(),
                OutputStream::Stderr => streamed_err += chunk.data.len(),
            }
        }
        assert_eq!((streamed_out, streamed_err), (3_000_000, 1_000_000));
    }

    fn script_pack(body: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("actions")).unwrap();
        let script = dir.path().join("actions/run.sh");
        std::fs::write(&script, body).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
        dir
    }

    #[tokio::test]
    async fn script_gets_named_then_positional_arguments() {
        let pack = script_pack("#!/bin/bash\nfor a in \"$@\"; do echo \"[$a]\"; done\n");
        let def = action(
            "local-shell-script",
            "run.sh",
            &[
                ("host", Some(0)),
                ("check", Some(1)),
                ("flag", Some(2)),
                ("zone", None),
                ("verbose", None),
                ("quiet", None),
                ("tags", None),
                ("empty", None),
            ],
        );
        let params = json!({
            "host": "web-3", "check": null, "flag": true, "zone": "eu west",
            "verbose": true, "quiet": false, "tags": ["a", "b"], "empty": "",
            "timeout": 60, "kwarg_op": "--", "sudo": false, "debug": false,
        });
        let out = LocalShellScript
            .run(request(def, pack.path(), params))
            .await;
        assert_eq!(out.status, Status::Succeeded, "{}", out.result);
        assert_eq!(
            out.result["stdout"],
            "[--tags=a,b]\n[--verbose]\n[--zone=eu west]\n[web-3]\n[]\n[1]"
        );
        let mode = std::fs::metadata(pack.path().join("actions/run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111, "chmod +x as StackStorm does");
    }

    #[tokio::test]
    async fn script_without_shebang_runs_through_bash() {
        let pack = script_pack("echo \"no shebang $1\"\n");
        let def = action("local-shell-script", "run.sh", &[("x", Some(0))]);
        let out = LocalShellScript
            .run(request(def, pack.path(), json!({"x": "ok"})))
            .await;
        assert_eq!(out.result["stdout"], "no shebang ok", "{}", out.result);
    }

    #[tokio::test]
    async fn missing_script_fails_naming_the_path() {
        let pack = tempfile::tempdir().unwrap();
        let def = action("local-shell-script", "gone.sh", &[]);
        let out = LocalShellScript
            .run(request(def, pack.path(), json!({})))
            .await;
        assert_eq!(out.status, Status::Failed);
        let error = out.result["error"].as_str().unwrap();
        assert!(error.contains("actions/gone.sh"), "{error}");
    }
}

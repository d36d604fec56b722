//! `python-script`: StackStorm's Python runner. The action's `entry_point`
//! (a module under `actions/`) runs in its pack's virtualenv
//! (`<data dir>/virtualenvs/<pack>/bin/python`, else the node's configured
//! interpreter, `python3` by default)
//! through our `python_action_wrapper.py`, which speaks StackStorm's
//! protocol: the class is chosen and constructed as StackStorm does
//! (`config`, `action_service`), `run(**parameters)` is called and its
//! result printed between StackStorm's delimiters. Parameters travel on the
//! command line, or on stdin when they are large; the pack config always on
//! stdin. The result is StackStorm's `{result, stdout, stderr, exit_code,
//! [error]}`; a `(bool, data)` return decides the status.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{json, Map, Value};
use squall_domain::execution::Status;
use squall_domain::model::ActionDef;
use squall_domain::runner_types;

use crate::forkserver::ForkServers;
use crate::process::{self, End, Spec};
use crate::venv::Virtualenvs;
use crate::{pylib, RunOutcome, RunRequest, Runner};

/// What the wrapper prints around the action's result.
const DELIMITER: &str = "%%%%%~=~=~=************=~=~=~%%%%";

/// The wrapper's exit code when `run()` returned a status that is neither a
/// bool nor None (StackStorm's `PYTHON_RUNNER_INVALID_ACTION_STATUS_EXIT_CODE`).
const INVALID_STATUS_EXIT_CODE: i64 = 220;

/// Parameters at least this long (in characters, as StackStorm counts)
/// go to the wrapper on stdin instead of the command line
/// (StackStorm's `MAX_PARAM_LENGTH`).
const MAX_PARAM_LENGTH: usize = 131_072 - 15;

/// Timeout when the action gives none (the runner parameter's default).
const DEFAULT_TIMEOUT_SECS: u64 = 600;

/// StackStorm's default `log_level`: the wrapper is told only of others.
const DEFAULT_LOG_LEVEL: &str = "DEBUG";

/// `python-script`.
#[derive(Debug)]
pub struct PythonScript {
    /// The node's data directory: the Python support files live under it.
    data_dir: PathBuf,
    /// The node's pack virtualenvs.
    venvs: Virtualenvs,
    /// Warm starts, unless the settings turn them off.
    forks: Option<ForkServers>,
}

impl PythonScript {
    /// The runner of a node whose data directory is `data_dir`.
    pub fn new(data_dir: PathBuf, venvs: Virtualenvs) -> PythonScript {
        let forks = venvs
            .settings()
            .fork_server
            .then(|| ForkServers::new(&data_dir));
        PythonScript {
            data_dir,
            venvs,
            forks,
        }
    }
}

impl Runner for PythonScript {
    fn name(&self) -> &'static str {
        "python-script"
    }

    fn calls_api(&self) -> bool {
        true
    }

    fn run(&self, req: RunRequest) -> BoxFuture<'static, RunOutcome> {
        let data_dir = self.data_dir.clone();
        let venvs = self.venvs.clone();
        let forks = self.forks.clone();
        Box::pin(async move {
            let timeout = match run_timeout(&req.parameters) {
                Ok(t) => t,
                Err(e) => return failure(e),
            };
            // The pack's virtualenv is normally ready (built at
            // registration and when content changes); an execution that
            // comes while it builds waits for it, within its timeout.
            let build = venvs.ready(&req.action.pack, &req.pack_path);
            let limit = async {
                match timeout {
                    Some(t) => tokio::time::sleep(t).await,
                    None => std::future::pending().await,
                }
            };
            let venv = tokio::select! {
                built = build => match built {
                    Ok(venv) => venv,
                    Err(e) => return failure(e.to_string()),
                },
                () = limit => return outcome(
                    End::TimedOut(timeout.map_or(0, |t| t.as_secs())),
                    "",
                    "the pack's virtualenv was still being built\n".to_string(),
                ),
                () = req.cancel.cancelled() => return outcome(End::Canceled, "", String::new()),
            };
            let python = venvs.settings().python.clone();
            let (spec, lib) = match prepare(&data_dir, &req, &python, venv.as_deref(), timeout) {
                Ok(prepared) => prepared,
                Err(e) => return failure(e),
            };
            let warm = match &forks {
                Some(forks) => match forks.launch(&spec, venv.as_deref(), &lib).await {
                    Ok(launched) => Some(launched),
                    Err(e) => {
                        tracing::debug!(error = %e, "python action starts cold");
                        None
                    }
                },
                None => None,
            };
            let finished = match warm {
                Some(launched) => Ok(process::supervise(
                    launched,
                    spec.stdin,
                    spec.timeout,
                    req.output,
                    req.cancel,
                )
                .await),
                None => process::execute(spec, req.output, req.cancel).await,
            };
            match finished {
                Ok(done) => outcome(done.end, &done.stdout, done.stderr),
                Err(e) => failure(e),
            }
        })
    }
}

/// The run's `timeout` parameter; `None` when it has none (0 or less).
fn run_timeout(p: &Map<String, Value>) -> Result<Option<Duration>, String> {
    Ok(match p.get("timeout") {
        None | Some(Value::Null) => Some(DEFAULT_TIMEOUT_SECS),
        Some(Value::Number(n)) => n.as_i64().map(|t| t.max(0).unsigned_abs()),
        Some(other) => {
            return Err(format!(
                "parameter `timeout` must be an integer, not {other}"
            ))
        }
    }
    .filter(|t| *t > 0)
    .map(Duration::from_secs))
}

/// The process that runs the action: interpreter (the pack's `venv` when
/// it has one, else `python`, the node's configured interpreter), wrapper
/// command line, environment, stdin.
fn prepare(
    data_dir: &Path,
    req: &RunRequest,
    python: &Path,
    venv: Option<&Path>,
    timeout: Option<Duration>,
) -> Result<(Spec, PathBuf), String> {
    let script = req.pack_path.join("actions").join(&req.action.entry_point);
    if req.action.entry_point.is_empty() || !script.is_file() {
        return Err(format!(
            "python action {} does not exist on this node",
            script.display()
        ));
    }
    let lib = pylib::install(data_dir).map_err(|e| {
        format!(
            "cannot write the Python support files under {}: {e}",
            data_dir.display()
        )
    })?;
    let p = &req.parameters;
    let log_level = match p.get("log_level") {
        None | Some(Value::Null) => DEFAULT_LOG_LEVEL.to_string(),
        Some(Value::String(l)) => l.to_uppercase(),
        Some(other) => {
            return Err(format!(
                "parameter `log_level` must be a string, not {other}"
            ))
        }
    };
    let program = venv.map_or_else(|| python.to_path_buf(), |v| v.join("bin").join("python"));

    let parameters = Value::Object(action_parameters(&req.action, &req.parameters)).to_string();
    let mut args = vec![
        "-u".to_string(),
        lib.join(pylib::ACTION_WRAPPER).display().to_string(),
        format!("--pack={}", req.action.pack),
        format!("--file-path={}", script.display()),
    ];
    let mut stdin = Map::new();
    if parameters.chars().count() >= MAX_PARAM_LENGTH {
        args.push("--stdin-parameters".into());
        stdin.insert(
            "parameters".into(),
            serde_json::from_str(&parameters).unwrap_or_default(),
        );
    } else {
        args.push(format!("--parameters={parameters}"));
    }
    if !req.config.is_empty() {
        // On stdin, never the command line: config holds credentials.
        args.push("--stdin-config".into());
        stdin.insert("config".into(), Value::Object(req.config.clone()));
    }
    if log_level != DEFAULT_LOG_LEVEL {
        args.push(format!("--log-level={log_level}"));
    }

    let mut env = BTreeMap::new();
    let inherited_path = std::env::var("PATH").unwrap_or_default();
    if let Some(venv) = venv {
        env.insert(
            "PATH".to_string(),
            format!("{}/:{inherited_path}", venv.join("bin").display()),
        );
    }
    env.insert(
        "PYTHONPATH".to_string(),
        python_path(&req.pack_path, venv, &lib),
    );
    match p.get("env") {
        None | Some(Value::Null) => {}
        Some(Value::Object(vars)) => {
            for (k, v) in vars {
                // StackStorm drops a `pythonpath` of any case: the runner
                // owns the Python path.
                if k.eq_ignore_ascii_case("pythonpath") {
                    continue;
                }
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
    env.extend(req.env.client_vars());
    let spec = Spec {
        program,
        args,
        cwd: Some(req.pack_path.clone()),
        env,
        timeout,
        stdin: (!stdin.is_empty()).then(|| Value::Object(stdin).to_string()),
    };
    Ok((spec, lib))
}

/// StackStorm's `get_sandbox_python_path_for_python_action`: the pack's
/// `lib/`, the virtualenv's library directories, the pack's
/// `actions/lib`, the inherited PYTHONPATH, then our compatibility
/// package (where StackStorm's own libraries would come).
fn python_path(pack: &Path, venv: Option<&Path>, lib: &Path) -> String {
    let mut parts = vec![pack.join("lib").display().to_string()];
    if let Some(venv) = venv {
        for dir in venv_lib_dirs(venv) {
            parts.push(dir.display().to_string());
            parts.push(dir.join("site-packages").display().to_string());
        }
    }
    parts.push(pack.join("actions").join("lib").display().to_string());
    if let Ok(inherited) = std::env::var("PYTHONPATH") {
        parts.extend(
            inherited
                .split(':')
                .filter(|p| !p.is_empty())
                .map(str::to_string),
        );
    }
    parts.push(lib.display().to_string());
    parts.join(":")
}

/// The virtualenv's `lib/pythonX.Y` directories.
fn venv_lib_dirs(venv: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(venv.join("lib"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("python"))
                })
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}

/// The parameters `run()` receives: the action's own, not the runner's,
/// each one it declares (`null` when it has no value), as StackStorm
/// passes them.
fn action_parameters(action: &ActionDef, all: &Map<String, Value>) -> Map<String, Value> {
    let runner = runner_types::lookup("python-script");
    let is_runner_param =
        |name: &str| runner.is_some_and(|r| r.runner_parameters.contains_key(name));
    let mut params: Map<String, Value> = action
        .parameters
        .keys()
        .map(|name| (name.clone(), Value::Null))
        .collect();
    params.extend(all.iter().map(|(k, v)| (k.clone(), v.clone())));
    params.retain(|name, _| !is_runner_param(name));
    params
}

/// What the wrapper printed between the delimiters: (result, status).
/// StackStorm's `_get_output_values`: no delimiter means the result is the
/// string "None"; text that is not JSON (the wrapper's fallback, a Python
/// repr) gives what follows `'result': `.
fn printed_result(printed: Option<&str>) -> (Value, Option<bool>) {
    let Some(printed) = printed.filter(|p| !p.is_empty()) else {
        return (json!("None"), None);
    };
    match serde_json::from_str::<Value>(printed) {
        Ok(Value::Object(mut printed)) => (
            printed.remove("result").unwrap_or(Value::Null),
            printed.get("status").and_then(Value::as_bool),
        ),
        Ok(other) => (other, None),
        Err(_) => {
            let result = printed
                .lines()
                .find_map(|line| line.split_once("'result': ").map(|(_, r)| r))
                .map_or(Value::Null, |r| json!(r));
            (result, None)
        }
    }
}

/// StackStorm's `python_runner._get_output_values` and
/// `_get_final_status`.
fn outcome(end: End, stdout: &str, stderr: String) -> RunOutcome {
    let (exit_code, error, timed_out, canceled) = match end {
        End::Exited(s) => {
            let code = s.code().map_or_else(
                || -i64::from(std::os::unix::process::ExitStatusExt::signal(&s).unwrap_or(0)),
                i64::from,
            );
            (code, None, false, false)
        }
        End::TimedOut(secs) => (
            -9,
            Some(format!("Action failed to complete in {secs} seconds")),
            true,
            false,
        ),
        End::Canceled => (-9, Some("Action was canceled".to_string()), false, true),
        End::Lost(e) => (-1, Some(e), false, false),
    };
    let parts: Vec<&str> = stdout.split(DELIMITER).collect();
    let (printed, stdout, malformed) = match parts.as_slice() {
        [_] => (None, stdout.to_string(), false),
        [before, printed, after] => (Some(printed.trim()), format!("{before}{after}"), false),
        _ => (None, stdout.to_string(), true),
    };
    let (result, action_status) = printed_result(printed);
    let status = if timed_out {
        Status::Timeout
    } else if canceled {
        Status::Canceled
    } else if exit_code == 0 && !malformed && action_status != Some(false) {
        Status::Succeeded
    } else {
        Status::Failed
    };
    let error = error.or_else(|| {
        if malformed {
            Some(format!(
                "the action's output holds the result delimiter {} times; expected it twice",
                parts.len() - 1
            ))
        } else if exit_code == INVALID_STATUS_EXIT_CODE {
            // StackStorm raises `ValueError(stderr)`: the wrapper's message.
            Some(stderr.trim().to_string())
        } else {
            None
        }
    });
    let mut result = json!({
        "stdout": stdout,
        "stderr": stderr,
        "exit_code": exit_code,
        "result": result,
    });
    if let Some(error) = error {
        result["error"] = json!(error);
    }
    RunOutcome { status, result }
}

/// A run that never started.
fn failure(error: String) -> RunOutcome {
    RunOutcome {
        status: Status::Failed,
        result: json!({
            "stdout": "",
            "stderr": "",
            "exit_code": -1,
            "result": "None",
            "error": error,
        }),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use squall_domain::model::ParamSpec;
    use tokio_util::sync::CancellationToken;

    use super::*;

    fn pack(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        for (rel, text) in files {
            let path = dir.path().join(rel);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("dirs");
            std::fs::write(path, text).expect("write");
        }
        dir
    }

    /// One data directory and one set of virtualenvs for every test: the
    /// test pack's virtualenv is built once (a fixed directory, so later
    /// runs reuse it too; its digest keeps it correct).
    fn shared_data() -> &'static (PathBuf, Virtualenvs) {
        static SHARED: std::sync::OnceLock<(PathBuf, Virtualenvs)> = std::sync::OnceLock::new();
        SHARED.get_or_init(|| {
            let data = std::env::temp_dir().join("squall-runners-tests-data");
            let venvs = Virtualenvs::new(&data, crate::venv::VenvSettings::default());
            (data, venvs)
        })
    }

    pub(super) async fn run(
        files: &[(&str, &str)],
        declared: &[&str],
        parameters: Value,
    ) -> RunOutcome {
        run_with(files, declared, parameters, Map::new()).await
    }

    pub(super) async fn run_with(
        files: &[(&str, &str)],
        declared: &[&str],
        parameters: Value,
        config: Map<String, Value>,
    ) -> RunOutcome {
        let dir = pack(files);
        let Value::Object(parameters) = parameters else {
            panic!("parameters must be a dict")
        };
        let (data, venvs) = shared_data();
        PythonScript::new(data.clone(), venvs.clone())
            .run(RunRequest {
                execution_id: "e1".into(),
                action: ActionDef {
                    name: "act".into(),
                    pack: "p".into(),
                    description: String::new(),
                    enabled: true,
                    runner_type: "python-script".into(),
                    entry_point: "act.py".into(),
                    parameters: declared
                        .iter()
                        .map(|n| (n.to_string(), ParamSpec::default()))
                        .collect(),
                    output_schema: None,
                    tags: Vec::new(),
                    notify: None,
                    metadata_file: String::new(),
                },
                pack_path: dir.path().to_path_buf(),
                parameters,
                config,
                env: crate::ActionEnv::default(),
                output: None,
                cancel: CancellationToken::new(),
            })
            .await
    }

    const GREET: &str = "from st2common.runners.base_action import Action\n\nclass Greet(Action):\n    def run(self, name):\n        print('greeting ' + name)\n        self.logger.info('logged')\n        return {'greeting': 'hello ' + name}\n";

    #[tokio::test]
    async fn runs_the_action_class_with_its_parameters() {
        let out = run(
            &[("actions/act.py", GREET)],
            &["name"],
            json!({"name": "ops", "timeout": 600, "log_level": "DEBUG"}),
        )
        .await;
        assert_eq!(out.status, Status::Succeeded, "{}", out.result);
        assert_eq!(out.result["result"], json!({"greeting": "hello ops"}));
        assert_eq!(out.result["stdout"], "greeting ops\n");
        assert_eq!(out.result["exit_code"], 0);
        assert!(out.result["stderr"]
            .as_str()
            .unwrap_or_default()
            .contains("logged"));
    }

    #[tokio::test]
    async fn a_status_tuple_decides_the_status() {
        let failing = "from st2common.runners.base_action import Action\n\nclass No(Action):\n    def run(self):\n        return (False, 'nope')\n";
        let out = run(&[("actions/act.py", failing)], &[], json!({})).await;
        assert_eq!(out.status, Status::Failed);
        assert_eq!(out.result["result"], "nope");
        assert_eq!(out.result["exit_code"], 0);
    }

    #[tokio::test]
    async fn an_exception_fails_with_the_traceback_and_no_result() {
        let raising = "from st2common.runners.base_action import Action\n\nclass Boom(Action):\n    def run(self):\n        raise ValueError('boom')\n";
        let out = run(&[("actions/act.py", raising)], &[], json!({})).await;
        assert_eq!(out.status, Status::Failed);
        assert_eq!(out.result["result"], "None");
        assert_eq!(out.result["exit_code"], 1);
        assert!(out.result["stderr"]
            .as_str()
            .unwrap_or_default()
            .contains("ValueError: boom"));
    }

    #[tokio::test]
    async fn the_packs_lib_directories_are_importable() {
        let out = run(
            &[
                ("lib/helper.py", "def double(x):\n    return 2 * x\n"),
                (
                    "actions/act.py",
                    "from helper import double\nfrom st2common.runners.base_action import Action\n\nclass D(Action):\n    def run(self, n):\n        return double(n)\n",
                ),
            ],
            &["n"],
            json!({"n": 21}),
        )
        .await;
        assert_eq!(out.status, Status::Succeeded, "{}", out.result);
        assert_eq!(out.result["result"], 42);
    }

    #[tokio::test]
    async fn a_declared_parameter_without_a_value_is_none() {
        let echo = "from st2common.runners.base_action import Action\n\nclass E(Action):\n    def run(self, given, missing):\n        return [given, missing]\n";
        let out = run(
            &[("actions/act.py", echo)],
            &["given", "missing"],
            json!({"given": 1}),
        )
        .await;
        assert_eq!(out.status, Status::Succeeded, "{}", out.result);
        assert_eq!(out.result["result"], json!([1, null]));
    }
}

#[cfg(test)]
mod protocol_tests {
    //! StackStorm's wrapper protocol, case by case.

    use std::time::Instant;

    use super::tests::{run, run_with};
    use super::*;

    const HEAD: &str = "from st2common.runners.base_action import Action\n\n";

    fn act(body: &str) -> String {
        format!("{HEAD}{body}")
    }

    fn stderr(out: &RunOutcome) -> &str {
        out.result["stderr"].as_str().unwrap_or_default()
    }

    #[tokio::test]
    async fn the_first_class_in_alphabetical_order_with_run_wins() {
        let module = act(
            "from collections import OrderedDict\n\nclass Zeta(Action):\n    def run(self):\n        return 'zeta'\n\nclass Base(Action):\n    pass\n\nclass Alpha(Action):\n    def run(self):\n        return 'alpha'\n",
        );
        let out = run(&[("actions/act.py", &module)], &[], json!({})).await;
        assert_eq!(out.status, Status::Succeeded, "{}", out.result);
        assert_eq!(out.result["result"], "alpha");
    }

    #[tokio::test]
    async fn a_class_taking_only_config_gets_action_service_afterwards() {
        let module = "class Plain(object):\n    def __init__(self, config):\n        self.config = config\n\n    def run(self):\n        return [self.config['x'], type(self.action_service).__name__]\n";
        let out = run_with(
            &[("actions/act.py", module)],
            &[],
            json!({}),
            Map::from_iter([("x".to_string(), json!(7))]),
        )
        .await;
        assert_eq!(out.status, Status::Succeeded, "{}", out.result);
        assert_eq!(out.result["result"], json!([7, "ActionService"]));
    }

    #[tokio::test]
    async fn a_missing_config_key_raises_stackstorms_value_error() {
        let module = act("class C(Action):\n    def run(self):\n        try:\n            self.config['missing']\n        except ValueError as e:\n            return [self.config['present'], self.config.get('missing'), str(e)]\n");
        let out = run_with(
            &[("actions/act.py", &module)],
            &[],
            json!({}),
            Map::from_iter([("present".to_string(), json!("yes"))]),
        )
        .await;
        assert_eq!(out.status, Status::Succeeded, "{}", out.result);
        assert_eq!(out.result["result"][0], "yes");
        assert_eq!(out.result["result"][1], Value::Null);
        let message = out.result["result"][2].as_str().unwrap_or_default();
        assert!(
            message.contains("Config for pack \"p\" is missing key \"missing\"."),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_module_without_an_action_class_fails_clearly() {
        let out = run(
            &[("actions/act.py", "def run():\n    return 1\n")],
            &[],
            json!({}),
        )
        .await;
        assert_eq!(out.status, Status::Failed);
        assert_eq!(out.result["result"], "None");
        assert!(
            stderr(&out).contains("Found no classes in plugin file")
                && stderr(&out).contains("matching requirements."),
            "{}",
            out.result
        );
    }

    #[tokio::test]
    async fn an_import_error_names_the_file_and_the_missing_module() {
        let module = act("import no_such_module_here\n\nclass C(Action):\n    def run(self):\n        return 1\n");
        let out = run(&[("actions/act.py", &module)], &[], json!({})).await;
        assert_eq!(out.status, Status::Failed);
        let err = stderr(&out);
        assert!(
            err.contains("ModuleNotFoundError: Failed to load action class from file")
                && err.contains("act.py")
                && err.contains("no_such_module_here"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_status_neither_bool_nor_none_exits_220() {
        let module = act("class C(Action):\n    def run(self):\n        return ('yes', 1)\n");
        let out = run(&[("actions/act.py", &module)], &[], json!({})).await;
        assert_eq!(out.status, Status::Failed);
        assert_eq!(out.result["exit_code"], 220);
        let error = out.result["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("must either be True or False, got: yes"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn returns_other_than_a_status_pair_are_the_result() {
        for (ret, status, result) in [
            ("(None, 'x')", Status::Succeeded, json!("x")),
            ("(True, {'a': 1})", Status::Succeeded, json!({"a": 1})),
            ("[False, 'x']", Status::Succeeded, json!([false, "x"])),
            ("(1, 2, 3)", Status::Succeeded, json!([1, 2, 3])),
            (
                "(True, object)",
                Status::Succeeded,
                json!("<class 'object'>"),
            ),
        ] {
            let module = act(&format!(
                "class C(Action):\n    def run(self):\n        return {ret}\n"
            ));
            let out = run(&[("actions/act.py", &module)], &[], json!({})).await;
            assert_eq!(out.status, status, "{ret}: {}", out.result);
            assert_eq!(out.result["result"], result, "{ret}");
        }
    }

    #[tokio::test]
    async fn output_without_a_result_gives_the_string_none() {
        let module = act("import os, sys\n\nclass C(Action):\n    def run(self):\n        sys.stdout.write('garbage {not json\\n')\n        sys.stdout.flush()\n        os._exit(0)\n");
        let out = run(&[("actions/act.py", &module)], &[], json!({})).await;
        assert_eq!(out.status, Status::Succeeded, "{}", out.result);
        assert_eq!(out.result["result"], "None");
        assert_eq!(out.result["stdout"], "garbage {not json\n");
    }

    #[tokio::test]
    async fn large_parameters_travel_on_stdin() {
        let module = act("import sys\n\nclass C(Action):\n    def run(self, big):\n        return [len(big), '--stdin-parameters' in sys.argv]\n");
        let big = "x".repeat(200_000);
        let out = run(
            &[("actions/act.py", &module)],
            &["big"],
            json!({"big": big}),
        )
        .await;
        assert_eq!(out.status, Status::Succeeded, "{}", out.result);
        assert_eq!(out.result["result"], json!([200_000, true]));
        let small = run(
            &[("actions/act.py", &module)],
            &["big"],
            json!({"big": "x"}),
        )
        .await;
        assert_eq!(small.result["result"], json!([1, false]));
    }

    #[tokio::test]
    async fn log_level_filters_the_actions_logger() {
        let module = act("class C(Action):\n    def run(self):\n        self.logger.debug('dbg-line')\n        self.logger.info('info-line')\n        self.logger.error('error-line')\n        return self.logger.name\n");
        let quiet = run(
            &[("actions/act.py", &module)],
            &[],
            json!({"log_level": "ERROR"}),
        )
        .await;
        assert_eq!(quiet.result["result"], "actions.python.C");
        assert!(stderr(&quiet).contains("actions.python.C: ERROR    error-line"));
        assert!(!stderr(&quiet).contains("info-line") && !stderr(&quiet).contains("dbg-line"));
        let all = run(
            &[("actions/act.py", &module)],
            &[],
            json!({"log_level": "DEBUG"}),
        )
        .await;
        assert!(stderr(&all).contains("dbg-line") && stderr(&all).contains("info-line"));
    }

    #[tokio::test]
    async fn env_is_merged_without_pythonpath_and_st2_variables_win() {
        let module = act("import os\n\nclass C(Action):\n    def run(self):\n        return [os.environ.get('FOO'), '/bad' in os.environ['PYTHONPATH'], os.environ['ST2_ACTION_PACK_NAME'], os.environ['ST2_API_URL'], os.getcwd()]\n");
        let out = run(
            &[("actions/act.py", &module)],
            &[],
            json!({"env": {"FOO": "bar", "PythonPath": "/bad", "ST2_ACTION_PACK_NAME": "other"}}),
        )
        .await;
        assert_eq!(out.status, Status::Succeeded, "{}", out.result);
        assert_eq!(out.result["result"][0], "bar");
        assert_eq!(out.result["result"][1], false);
        // The engine's ActionEnv (default here: empty pack and URL) wins.
        assert_eq!(out.result["result"][2], "");
        assert_eq!(out.result["result"][3], "");
    }

    #[tokio::test]
    async fn a_timeout_kills_the_processes_the_action_started() {
        let module = act("import subprocess, time\n\nclass C(Action):\n    def run(self):\n        child = subprocess.Popen(['sleep', '300'])\n        print('child', child.pid, flush=True)\n        time.sleep(300)\n");
        let started = Instant::now();
        let out = run(&[("actions/act.py", &module)], &[], json!({"timeout": 2})).await;
        assert!(started.elapsed() < Duration::from_secs(30));
        assert_eq!(out.status, Status::Timeout, "{}", out.result);
        assert_eq!(
            out.result["error"],
            "Action failed to complete in 2 seconds"
        );
        let pid: i32 = out.result["stdout"]
            .as_str()
            .and_then(|s| s.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
            .expect("the action printed its child's pid");
        // Killed means gone, or a zombie until init reaps it.
        let dead = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
                stat.rsplit(") ").next().is_some_and(|s| s.starts_with('Z'))
            })
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !dead() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(dead(), "the action's child {pid} outlived the timeout");
    }
}

#[cfg(test)]
mod warm_start_tests {
    use super::*;
    use tokio_util::sync::CancellationToken;

    const PARENT: &str = "import os\nfrom st2common.runners.base_action import Action\n\nclass P(Action):\n    def run(self):\n        return [os.getppid(), os.getpgid(0) == os.getpid()]\n";

    fn request(pack_dir: &Path, pack: &str) -> RunRequest {
        RunRequest {
            execution_id: "e1".into(),
            action: serde_json::from_value(json!({
                "name": "act", "pack": pack, "runner_type": "python-script", "entry_point": "act.py"
            }))
            .expect("action"),
            pack_path: pack_dir.to_path_buf(),
            parameters: Map::new(),
            config: Map::new(),
            env: crate::ActionEnv::default(),
            output: None,
            cancel: CancellationToken::new(),
        }
    }

    #[tokio::test]
    async fn actions_fork_from_one_warm_server_in_their_own_group() {
        let data = tempfile::tempdir().expect("data");
        let pack = tempfile::tempdir().expect("pack");
        std::fs::create_dir_all(pack.path().join("actions")).expect("dirs");
        std::fs::write(pack.path().join("actions/act.py"), PARENT).expect("write");
        // The `core` pack has no virtualenv: no build for this test.
        let runner = PythonScript::new(
            data.path().to_path_buf(),
            Virtualenvs::new(data.path(), crate::venv::VenvSettings::default()),
        );
        let first = runner.run(request(pack.path(), "core")).await;
        let second = runner.run(request(pack.path(), "core")).await;
        assert_eq!(first.status, Status::Succeeded, "{}", first.result);
        let parent = first.result["result"][0].as_i64().unwrap_or_default();
        assert_ne!(parent, i64::from(std::process::id()), "forked by a server");
        assert_eq!(second.result["result"][0], parent, "the same server");
        assert_eq!(first.result["result"][1], true, "its own process group");
    }

    #[tokio::test]
    async fn without_the_fork_server_actions_start_cold() {
        let data = tempfile::tempdir().expect("data");
        let pack = tempfile::tempdir().expect("pack");
        std::fs::create_dir_all(pack.path().join("actions")).expect("dirs");
        std::fs::write(pack.path().join("actions/act.py"), PARENT).expect("write");
        let settings = crate::venv::VenvSettings {
            fork_server: false,
            ..Default::default()
        };
        // The `core` pack has no virtualenv: no build for this test.
        let out = PythonScript::new(
            data.path().to_path_buf(),
            Virtualenvs::new(data.path(), settings),
        )
        .run(request(pack.path(), "core"))
        .await;
        assert_eq!(out.status, Status::Succeeded, "{}", out.result);
        assert_eq!(
            out.result["result"][0],
            i64::from(std::process::id()),
            "a child of this process"
        );
    }
}

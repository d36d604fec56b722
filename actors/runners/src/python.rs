//! `python-script`: StackStorm's Python runner. The action's `entry_point`
//! (a module under `actions/` defining one subclass of
//! `st2common.runners.base_action.Action`) runs in `python3` through a
//! small wrapper (`python_wrapper.py`) that provides that base class,
//! calls `run(**parameters)` and prints the result between StackStorm's
//! delimiters. The result is StackStorm's: `{result, stdout, stderr,
//! exit_code, [error]}`; a `(bool, data)` return decides the status.
//!
//! Not provided: the pack's virtualenv (actions import from the system
//! `python3`), pack config (`self.config` is `{}`), the datastore through
//! `action_service`.

use std::path::PathBuf;

use futures::future::BoxFuture;
use serde_json::{json, Map, Value};
use squall_domain::execution::Status;
use squall_domain::model::ActionDef;
use squall_domain::runner_types;

use crate::process::{self, End};
use crate::{RunOutcome, RunRequest, Runner};

/// The wrapper `python3 -c` runs.
const WRAPPER: &str = include_str!("../python/python_action_wrapper.py");

/// What the wrapper prints around the action's result.
const DELIMITER: &str = "%%%%%~=~=~=************=~=~=~%%%%";

/// The wrapper's exit code when `run()` returned a status that is not a
/// bool (StackStorm's `PYTHON_RUNNER_INVALID_ACTION_STATUS_EXIT_CODE`).
const INVALID_STATUS_EXIT_CODE: i64 = 220;

/// `python-script`.
#[derive(Debug, Default)]
pub struct PythonScript;

impl Runner for PythonScript {
    fn name(&self) -> &'static str {
        "python-script"
    }

    fn calls_api(&self) -> bool {
        true
    }

    fn run(&self, req: RunRequest) -> BoxFuture<'static, RunOutcome> {
        Box::pin(async move {
            let script = req.pack_path.join("actions").join(&req.action.entry_point);
            if req.action.entry_point.is_empty() || !script.is_file() {
                return failure(format!(
                    "python action {} does not exist on this node",
                    script.display()
                ));
            }
            let request = json!({
                "entry_point": script,
                "pack_path": req.pack_path,
                "config": req.config,
                "parameters": action_parameters(&req.action, &req.parameters),
            });
            let mut spec = match crate::local::spec(
                &req,
                PathBuf::from("python3"),
                vec!["-c".into(), WRAPPER.into()],
            ) {
                Ok(spec) => spec,
                Err(e) => return failure(e),
            };
            spec.stdin = Some(request.to_string());
            spec.env.extend(req.env.client_vars());
            match process::execute(spec, req.output, req.cancel).await {
                Ok(done) => outcome(done.end, &done.stdout, done.stderr),
                Err(e) => failure(e),
            }
        })
    }
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
    };
    let parts: Vec<&str> = stdout.split(DELIMITER).collect();
    let (printed, stdout) = match parts.as_slice() {
        [before, printed, after] => (Some(printed.trim()), format!("{before}{after}")),
        _ => (None, stdout.to_string()),
    };
    let (result, action_status) = match printed.map(serde_json::from_str::<Value>) {
        Some(Ok(Value::Object(mut printed))) => (
            printed.remove("result").unwrap_or(Value::Null),
            printed.get("status").and_then(Value::as_bool),
        ),
        Some(Ok(other)) => (other, None),
        Some(Err(_)) => (json!(printed.unwrap_or_default()), None),
        None => (json!("None"), None),
    };
    let status = if timed_out {
        Status::Timeout
    } else if canceled {
        Status::Canceled
    } else if exit_code == 0 && action_status != Some(false) {
        Status::Succeeded
    } else {
        Status::Failed
    };
    let mut result = json!({
        "stdout": stdout,
        "stderr": stderr,
        "exit_code": exit_code,
        "result": result,
    });
    if let Some(error) = error {
        result["error"] = json!(error);
    } else if exit_code == INVALID_STATUS_EXIT_CODE {
        result["error"] = json!("the action's run() returned a status that is not a bool");
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
mod tests {
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

    async fn run(files: &[(&str, &str)], declared: &[&str], parameters: Value) -> RunOutcome {
        let dir = pack(files);
        let Value::Object(parameters) = parameters else {
            panic!("parameters must be a dict")
        };
        PythonScript
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
                config: Map::new(),
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

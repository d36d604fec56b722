//! Runners: how an action runs. Each runner turns a resolved [`RunRequest`]
//! into a [`RunOutcome`] (a final status and StackStorm's result shape for
//! that runner). Runners know nothing of NATS or actors; the engine in
//! `squall-actors` persists what they report.
//!
//! Adding a runner means one module here and one line in [`registry`].

mod forkserver;
mod http;
mod inquirer;
mod local;
mod noop;
mod process;
pub mod pylib;
mod python;
mod remote;
pub mod sensor;
pub mod venv;
mod winrm;

pub use http::HttpRequest;
pub use inquirer::Inquirer;
pub use local::{LocalShellCmd, LocalShellScript};
pub use noop::Noop;
pub use python::PythonScript;
pub use remote::{RemoteShellCmd, RemoteShellScript, SshSettings};
pub use winrm::WinRm;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::{Map, Value};
use squall_domain::execution::Status;
use squall_domain::model::ActionDef;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Which stream a chunk of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// A piece of live output from a running action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputChunk {
    pub stream: OutputStream,
    pub data: String,
}

/// Everything a runner needs to run one execution. `Debug` shows the
/// config's keys only: its secret items are decrypted.
#[derive(Clone)]
pub struct RunRequest {
    pub execution_id: String,
    /// The action, with its parameter specs (positions, types) and
    /// `entry_point`.
    pub action: ActionDef,
    /// Root directory of the action's pack on this node.
    pub pack_path: PathBuf,
    /// Fully resolved parameters: runner parameters (`cmd`, `timeout`,
    /// `cwd`, `env`, `sudo`...) and action parameters, defaults applied.
    pub parameters: Map<String, Value>,
    /// The pack's config (`self.config` of a Python action), resolved for
    /// this run; an empty object when the pack has none.
    pub config: Map<String, Value>,
    /// What the action's process is told about its run (`ST2_ACTION_*`).
    pub env: ActionEnv,
    /// Where live output goes, if anyone listens.
    pub output: Option<mpsc::UnboundedSender<OutputChunk>>,
    /// Cancelled when the execution is cancelled or the node shuts down.
    pub cancel: CancellationToken,
}

impl std::fmt::Debug for RunRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunRequest")
            .field("execution_id", &self.execution_id)
            .field("action", &self.action)
            .field("pack_path", &self.pack_path)
            .field("parameters", &self.parameters)
            .field("config_keys", &self.config.keys().collect::<Vec<_>>())
            .field("env", &self.env)
            .finish_non_exhaustive()
    }
}

/// What StackStorm tells every action process about its run
/// (`_get_common_action_env_variables`). Built once by the engine for
/// every runner that starts a process. `Debug` never shows the token.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ActionEnv {
    /// `ST2_ACTION_PACK_NAME`.
    pub pack: String,
    /// `ST2_ACTION_EXECUTION_ID`.
    pub execution_id: String,
    /// `ST2_ACTION_API_URL`: the v1 API root, so that
    /// `$ST2_ACTION_API_URL/executions/$ST2_ACTION_EXECUTION_ID` works.
    pub api_url: String,
    /// `ST2_ACTION_AUTH_TOKEN`: a token valid while the execution runs,
    /// as its user; `None` when the run has none.
    pub auth_token: Option<String>,
}

impl ActionEnv {
    /// StackStorm's `ST2_ACTION_*` variables. They win over the action's
    /// own `env` parameter, as in StackStorm. `debug` is the runner's
    /// `debug` parameter (`ST2_ACTION_DEBUG` is Python's `True`/`False`).
    pub fn vars(&self, debug: bool) -> BTreeMap<String, String> {
        let mut vars = BTreeMap::from([
            ("ST2_ACTION_PACK_NAME".to_string(), self.pack.clone()),
            (
                "ST2_ACTION_EXECUTION_ID".to_string(),
                self.execution_id.clone(),
            ),
            ("ST2_ACTION_API_URL".to_string(), self.api_url.clone()),
            (
                "ST2_ACTION_DEBUG".to_string(),
                if debug { "True" } else { "False" }.to_string(),
            ),
        ]);
        if let Some(token) = &self.auth_token {
            vars.insert("ST2_ACTION_AUTH_TOKEN".to_string(), token.clone());
        }
        vars
    }

    /// What the Python runner adds so that `st2client` in the action finds
    /// the API by itself (`_get_datastore_access_env_vars`): `ST2_API_URL`
    /// and `ST2_AUTH_TOKEN`.
    pub fn client_vars(&self) -> BTreeMap<String, String> {
        let mut vars = BTreeMap::from([("ST2_API_URL".to_string(), self.api_url.clone())]);
        if let Some(token) = &self.auth_token {
            vars.insert("ST2_AUTH_TOKEN".to_string(), token.clone());
        }
        vars
    }
}

impl std::fmt::Debug for ActionEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActionEnv")
            .field("pack", &self.pack)
            .field("execution_id", &self.execution_id)
            .field("api_url", &self.api_url)
            .field(
                "auth_token",
                &self.auth_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The end of a run: final status and result.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome {
    pub status: Status,
    pub result: Value,
}

/// One way of running actions.
pub trait Runner: Send + Sync {
    /// The runner type name, e.g. `local-shell-cmd`.
    fn name(&self) -> &'static str;
    /// Whether it starts a process that may call the API back, and so gets
    /// a token for the run in its [`ActionEnv`].
    fn calls_api(&self) -> bool {
        false
    }
    /// Runs the request to completion. Never panics on bad input: problems
    /// become a `failed` outcome whose result carries an `error` message.
    fn run(&self, req: RunRequest) -> BoxFuture<'static, RunOutcome>;
}

/// Every runner this build can execute, by runner type name. `ssh` is the
/// node's configuration of the remote runners, `data_dir` the node's data
/// directory (Python support files), `venvs` its pack virtualenvs.
pub fn registry(
    ssh: SshSettings,
    data_dir: &Path,
    venvs: &venv::Virtualenvs,
) -> HashMap<&'static str, Arc<dyn Runner>> {
    let (remote_cmd, remote_script) = remote::runners(ssh);
    let runners: [Arc<dyn Runner>; 8] = [
        Arc::new(Noop),
        Arc::new(Inquirer),
        Arc::new(LocalShellCmd),
        Arc::new(LocalShellScript),
        Arc::new(PythonScript::new(data_dir.to_path_buf(), venvs.clone())),
        Arc::new(remote_cmd),
        Arc::new(remote_script),
        Arc::new(HttpRequest::default()),
    ];
    let winrm = winrm::NAMES
        .into_iter()
        .map(|name| Arc::new(WinRm(name)) as Arc<dyn Runner>);
    runners
        .into_iter()
        .chain(winrm)
        .map(|r| (r.name(), r))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_neither_config_values_nor_the_token() {
        let action: ActionDef = serde_json::from_value(serde_json::json!({
            "name": "a", "pack": "p", "runner_type": "python-script", "entry_point": "a.py"
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let req = RunRequest {
            execution_id: "e1".into(),
            action,
            pack_path: PathBuf::from("/packs/p"),
            parameters: Map::new(),
            config: serde_json::json!({"api_key": "opened-s3cret"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            env: ActionEnv {
                auth_token: Some("t0k3n".into()),
                ..ActionEnv::default()
            },
            output: None,
            cancel: CancellationToken::new(),
        };
        let shown = format!("{req:?}");
        assert!(shown.contains("api_key"), "{shown}");
        assert!(
            !shown.contains("opened-s3cret") && !shown.contains("t0k3n"),
            "{shown}"
        );
    }
}

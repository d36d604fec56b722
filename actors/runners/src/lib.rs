//! Runners: how an action runs. Each runner turns a resolved [`RunRequest`]
//! into a [`RunOutcome`] (a final status and StackStorm's result shape for
//! that runner). Runners know nothing of NATS or actors; the engine in
//! `squall-actors` persists what they report.
//!
//! Adding a runner means one module here and one line in [`registry`].

mod inquirer;
mod local;
mod noop;
mod process;
mod python;

pub use inquirer::Inquirer;
pub use local::{LocalShellCmd, LocalShellScript};
pub use noop::Noop;
pub use python::PythonScript;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
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

/// Everything a runner needs to run one execution.
#[derive(Debug, Clone)]
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
    /// Extra environment for the process (`ST2_ACTION_*`).
    pub env: BTreeMap<String, String>,
    /// Where live output goes, if anyone listens.
    pub output: Option<mpsc::UnboundedSender<OutputChunk>>,
    /// Cancelled when the execution is cancelled or the node shuts down.
    pub cancel: CancellationToken,
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
    /// Runs the request to completion. Never panics on bad input: problems
    /// become a `failed` outcome whose result carries an `error` message.
    fn run(&self, req: RunRequest) -> BoxFuture<'static, RunOutcome>;
}

/// Every runner this build can execute, by runner type name.
pub fn registry() -> HashMap<&'static str, Arc<dyn Runner>> {
    let runners: [Arc<dyn Runner>; 5] = [
        Arc::new(Noop),
        Arc::new(Inquirer),
        Arc::new(LocalShellCmd),
        Arc::new(LocalShellScript),
        Arc::new(PythonScript),
    ];
    runners.into_iter().map(|r| (r.name(), r)).collect()
}

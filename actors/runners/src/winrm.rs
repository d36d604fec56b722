//! `winrm-cmd`, `winrm-ps-cmd`, `winrm-ps-script`: StackStorm's Windows
//! runners. Their actions (`core.winrm_cmd`, `core.winrm_ps_cmd`) register
//! with the runners' parameters, and running one ends `failed` with an
//! error saying Squall does not support WinRM yet (nothing is sent).

use futures::future::BoxFuture;
use serde_json::json;
use squall_domain::execution::Status;

use crate::{RunOutcome, RunRequest, Runner};

/// One of the WinRM runner types, answering every run as unsupported.
#[derive(Debug)]
pub struct WinRm(pub &'static str);

/// The WinRM runner types.
pub const NAMES: [&str; 3] = ["winrm-cmd", "winrm-ps-cmd", "winrm-ps-script"];

impl Runner for WinRm {
    fn name(&self) -> &'static str {
        self.0
    }

    fn run(&self, req: RunRequest) -> BoxFuture<'static, RunOutcome> {
        let error = format!(
            "runner {} is not supported yet: Squall cannot run action {}.{} (WinRM); nothing was sent to the host",
            self.0, req.action.pack, req.action.name
        );
        Box::pin(async move {
            RunOutcome {
                status: Status::Failed,
                result: json!({ "error": error }),
            }
        })
    }
}

//! `noop`: succeeds at once with StackStorm's noop result.

use futures::future::BoxFuture;
use serde_json::json;
use squall_domain::execution::Status;

use crate::{RunOutcome, RunRequest, Runner};

/// The runner that does nothing.
#[derive(Debug, Default)]
pub struct Noop;

impl Runner for Noop {
    fn name(&self) -> &'static str {
        "noop"
    }

    fn run(&self, _req: RunRequest) -> BoxFuture<'static, RunOutcome> {
        Box::pin(async {
            RunOutcome {
                status: Status::Succeeded,
                result: json!({"failed": false, "succeeded": true, "return_code": 0}),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn noop_succeeds_with_stackstorms_result() {
        let runners = crate::registry(
            crate::SshSettings::default(),
            std::path::Path::new("data"),
            &crate::venv::Virtualenvs::new(std::path::Path::new("data"), Default::default()),
        );
        let req = crate::RunRequest {
            execution_id: "e".into(),
            action: squall_domain::model::ActionDef {
                name: "noop".into(),
                pack: "core".into(),
                description: String::new(),
                enabled: true,
                runner_type: "noop".into(),
                entry_point: String::new(),
                parameters: Default::default(),
                output_schema: None,
                tags: vec![],
                notify: None,
                metadata_file: String::new(),
            },
            pack_path: Default::default(),
            parameters: Default::default(),
            config: Default::default(),
            env: Default::default(),
            output: None,
            cancel: Default::default(),
        };
        let out = runners["noop"].run(req).await;
        assert_eq!(out.status, Status::Succeeded);
        assert_eq!(
            out.result,
            json!({"failed": false, "succeeded": true, "return_code": 0})
        );
    }

    #[test]
    fn the_registry_holds_every_available_runner() {
        let runners = crate::registry(
            crate::SshSettings::default(),
            std::path::Path::new("data"),
            &crate::venv::Virtualenvs::new(std::path::Path::new("data"), Default::default()),
        );
        for rt in squall_domain::runner_types::all() {
            let here =
                rt.available && !squall_domain::runner_types::ENGINE_RUNNERS.contains(&rt.name);
            assert_eq!(runners.contains_key(rt.name), here, "{}", rt.name);
        }
    }
}

//! `inquirer` (`core.ask`): asks a person. The execution becomes `pending`
//! with StackStorm's inquiry result (`schema`, `roles`, `users`, `route`,
//! `ttl`); the engine announces it (`core.st2.generic.inquiry`) and a
//! response through `PUT /inquiries/{id}` completes it.

use futures::future::BoxFuture;
use serde_json::{json, Value};
use squall_domain::execution::Status;
use squall_domain::runner_types::default_inquiry_schema;

use crate::{RunOutcome, RunRequest, Runner};

/// The runner that waits for a human response.
#[derive(Debug, Default)]
pub struct Inquirer;

impl Runner for Inquirer {
    fn name(&self) -> &'static str {
        "inquirer"
    }

    fn run(&self, req: RunRequest) -> BoxFuture<'static, RunOutcome> {
        let p = &req.parameters;
        let pick = |name: &str, default: Value| p.get(name).cloned().unwrap_or(default);
        let result = json!({
            "schema": pick("schema", default_inquiry_schema()),
            "roles": pick("roles", json!([])),
            "users": pick("users", json!([])),
            "route": pick("route", json!("")),
            "ttl": pick("ttl", json!(1440)),
        });
        Box::pin(async move {
            RunOutcome {
                status: Status::Pending,
                result,
            }
        })
    }
}

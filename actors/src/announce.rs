//! `announcement` (`core.announcement`): StackStorm's experimental runner
//! that broadcasts the action's parameters to every consumer of the event
//! stream, as `st2.announcement__<route>`. It publishes on core NATS
//! (`squall.announce.<route>`), which every node's `/stream` follows: an
//! announcement reaches the clients connected at that moment, as in
//! StackStorm, and is not stored. The event's data is StackStorm's
//! announcement: `{payload: <the action's parameters>, trace_context}`,
//! the shape chat bots read (`chatops.post_message` posts through it).

use futures::future::BoxFuture;
use serde_json::{json, Value};
use squall_domain::execution::Status;
use squall_runners::{RunOutcome, RunRequest, Runner};

/// Subject of announcements on `route` (a route may be several words
/// joined by dots).
pub fn subject(route: &str) -> String {
    format!("squall.announce.{route}")
}

/// What a `/stream` follows: every route.
pub const ALL_SUBJECTS: &str = "squall.announce.>";

/// The announcement runner; publishes with the node's NATS client.
#[derive(Debug, Clone)]
pub struct Announcement {
    client: async_nats::Client,
}

impl Announcement {
    pub fn new(client: async_nats::Client) -> Self {
        Announcement { client }
    }
}

fn failed(error: String) -> RunOutcome {
    RunOutcome {
        status: Status::Failed,
        result: json!({ "error": error }),
    }
}

impl Runner for Announcement {
    fn name(&self) -> &'static str {
        "announcement"
    }

    fn run(&self, req: RunRequest) -> BoxFuture<'static, RunOutcome> {
        let client = self.client.clone();
        Box::pin(async move {
            let mut payload = req.parameters.clone();
            let experimental = payload.remove("experimental");
            let route = payload.remove("route");
            if experimental.and_then(|v| v.as_bool()) != Some(true) {
                return failed(format!(
                    "Experimental flag is missing for action {}.{}",
                    req.action.pack, req.action.name
                ));
            }
            let route = route
                .as_ref()
                .and_then(Value::as_str)
                .unwrap_or("general")
                .to_string();
            let valid = !route.is_empty()
                && route.len() <= 255
                && route.split('.').all(|word| {
                    !word.is_empty()
                        && word
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                });
            if !valid {
                return failed(format!(
                    "route: {route:?} is not a route (words of letters, digits, _ or -, joined by dots)"
                ));
            }
            let data = json!({"payload": Value::Object(payload.clone()), "trace_context": null});
            if let Err(e) = client
                .publish(subject(&route), data.to_string().into())
                .await
            {
                return failed(format!("the announcement could not be published: {e}"));
            }
            let mut result = payload.clone();
            result.insert("output".into(), Value::Object(payload));
            RunOutcome {
                status: Status::Succeeded,
                result: Value::Object(result),
            }
        })
    }
}

//! What happened: trigger instances, rule enforcements and executions, as
//! stored records in StackStorm's API shapes.
//!
//! Records carry a `v` (layout version) and tolerate unknown fields, so a
//! node can read what a newer node wrote during a rolling upgrade.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::time::{serde_opt_ts, serde_ts, Timestamp};

/// The user executions run as when no one in particular started them
/// (StackStorm's system user).
pub const SYSTEM_USER: &str = "stanley";

/// Layout version of the records in this module.
pub const RECORD_VERSION: u32 = 1;

/// Status of an execution, with StackStorm's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Requested,
    Scheduled,
    Delayed,
    Running,
    Succeeded,
    Failed,
    Timeout,
    Abandoned,
    Canceling,
    Canceled,
    Pending,
    Pausing,
    Paused,
    Resuming,
}

impl Status {
    /// Every status, in lifecycle order.
    pub const ALL: [Status; 14] = [
        Status::Requested,
        Status::Scheduled,
        Status::Delayed,
        Status::Running,
        Status::Succeeded,
        Status::Failed,
        Status::Timeout,
        Status::Abandoned,
        Status::Canceling,
        Status::Canceled,
        Status::Pending,
        Status::Pausing,
        Status::Paused,
        Status::Resuming,
    ];

    /// The status name as the API writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Requested => "requested",
            Status::Scheduled => "scheduled",
            Status::Delayed => "delayed",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Timeout => "timeout",
            Status::Abandoned => "abandoned",
            Status::Canceling => "canceling",
            Status::Canceled => "canceled",
            Status::Pending => "pending",
            Status::Pausing => "pausing",
            Status::Paused => "paused",
            Status::Resuming => "resuming",
        }
    }

    /// Parses a status name.
    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether the execution has ended (StackStorm's COMPLETED group).
    pub fn is_completed(self) -> bool {
        matches!(
            self,
            Status::Succeeded
                | Status::Failed
                | Status::Timeout
                | Status::Canceled
                | Status::Abandoned
        )
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event: an instance of a trigger type with its payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TriggerInstance {
    #[serde(default)]
    pub v: u32,
    pub id: String,
    /// Reference of the trigger (type + parameters) that fired.
    pub trigger: String,
    /// Reference of the trigger type, e.g. `core.st2.webhook`.
    pub trigger_type: String,
    /// Parameters of the trigger that fired (e.g. a webhook's `url`); rules
    /// match only when their `trigger.parameters` are equal.
    #[serde(default)]
    pub trigger_parameters: Map<String, Value>,
    pub payload: Value,
    #[serde(with = "serde_ts")]
    pub occurrence_time: Timestamp,
    /// Trace tag, from `St2-Trace-Tag` or generated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_tag: Option<String>,
}

/// Reference to a rule inside another record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleSummary {
    pub id: String,
    #[serde(rename = "ref")]
    pub rule_ref: String,
    pub name: String,
    pub pack: String,
    pub uid: String,
}

/// Whether a rule enforcement managed to request its execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EnforcementStatus {
    Succeeded,
    Failed,
}

/// The record that a rule matched a trigger instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleEnforcement {
    #[serde(default)]
    pub v: u32,
    pub id: String,
    pub trigger_instance_id: String,
    /// The execution requested, when rendering its parameters succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
    pub rule: RuleSummary,
    pub status: EnforcementStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    #[serde(with = "serde_ts")]
    pub enforced_at: Timestamp,
}

/// One entry of an execution's status log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    #[serde(with = "serde_ts")]
    pub timestamp: Timestamp,
    pub status: Status,
}

/// The action as it was when the execution was requested.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionSnapshot {
    #[serde(rename = "ref")]
    pub action_ref: String,
    pub name: String,
    pub pack: String,
    pub runner_type: String,
    #[serde(default)]
    pub entry_point: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub parameters: Map<String, Value>,
}

/// The runner that runs the execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunnerSnapshot {
    pub name: String,
}

/// Trigger instance that caused an execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TriggerInstanceSummary {
    pub id: String,
    pub trigger: String,
    pub trigger_type: String,
    #[serde(with = "serde_ts")]
    pub occurrence_time: Timestamp,
}

/// One run of an action: the user-facing, auditable record. The source of
/// truth is the `executions` bucket, keyed by `id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionRecord {
    #[serde(default)]
    pub v: u32,
    pub id: String,
    pub action: ActionSnapshot,
    pub runner: RunnerSnapshot,
    pub status: Status,
    /// Fully resolved parameters the runner receives.
    #[serde(default)]
    pub parameters: Map<String, Value>,
    #[serde(default)]
    pub result: Value,
    /// `user`, `pack`, `trigger_instance`, `rule`, `trace_context`...
    #[serde(default)]
    pub context: Map<String, Value>,
    /// When the execution was requested.
    #[serde(with = "serde_ts")]
    pub start_timestamp: Timestamp,
    #[serde(
        default,
        with = "serde_opt_ts",
        skip_serializing_if = "Option::is_none"
    )]
    pub end_timestamp: Option<Timestamp>,
    #[serde(default)]
    pub log: Vec<LogEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<RuleSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_instance: Option<TriggerInstanceSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<String>,
    /// Runner pool whose work queue carries the request.
    #[serde(default = "default_pool")]
    pub pool: String,
    /// Node that ran (or runs) the execution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// What happens when its runner is lost mid-action.
    #[serde(default, skip_serializing_if = "RunnerLoss::is_default")]
    pub runner_loss: RunnerLoss,
    /// StackStorm's `notify` (`on-complete`, `on-success`, `on-failure`):
    /// the action's, as it was when the execution was requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Value>,
    /// Milliseconds to wait before running (StackStorm's `delay`; a retry
    /// policy's `delay` sets it on the new execution).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<u64>,
    /// Keys in the `concurrency` bucket whose entry lists this execution,
    /// as holding a slot or waiting for one; released when it ends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slots: Vec<String>,
    /// W3C `traceparent` of the span its work hangs under (its request),
    /// when tracing was on as it was requested: every hop of its run, and
    /// a workflow's tasks after any restart, continue that trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// What becomes of a run whose runner was lost (its node died) while the
/// action ran: nobody can know what the action did by then.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunnerLoss {
    /// It ends `abandoned` and is not run again (StackStorm's behaviour).
    #[default]
    Abandon,
    /// It runs again from the start on another runner, at most
    /// [`RunnerLoss::MAX_RERUNS`] times: for idempotent actions.
    Rerun,
}

impl RunnerLoss {
    /// Reruns of one execution after lost runners before it is abandoned.
    pub const MAX_RERUNS: usize = 3;

    fn is_default(&self) -> bool {
        *self == RunnerLoss::Abandon
    }

    /// Parses a tag's value.
    pub fn parse(value: &str) -> Option<RunnerLoss> {
        match value {
            "abandon" => Some(RunnerLoss::Abandon),
            "rerun" => Some(RunnerLoss::Rerun),
            _ => None,
        }
    }
}

/// The pool every runner node serves unless configured otherwise.
pub const DEFAULT_POOL: &str = "default";

fn default_pool() -> String {
    DEFAULT_POOL.to_string()
}

impl ExecutionRecord {
    /// Moves to `status` at `at`, appending to the log and stamping the end
    /// time when the status is final.
    pub fn transition(&mut self, status: Status, at: Timestamp) {
        self.status = status;
        self.log.push(LogEntry {
            timestamp: at,
            status,
        });
        if status.is_completed() {
            self.end_timestamp = Some(at);
        }
    }

    /// Seconds between request and end (or `now` while unfinished).
    pub fn elapsed_seconds(&self, now: Timestamp) -> f64 {
        let end = self.end_timestamp.unwrap_or(now);
        (end - self.start_timestamp).num_microseconds().unwrap_or(0) as f64 / 1e6
    }
}

/// A request to run an execution, as carried by the `EXECUTIONS` stream.
/// The record in the `executions` bucket is the source of truth.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecutionRequest {
    #[serde(default)]
    pub v: u32,
    pub execution_id: String,
    /// The record as its creation stored it, with that revision, on the
    /// first request only: a runner claims it with one compare-and-swap
    /// without reading it first (a record changed since fails the swap and
    /// is read afresh).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<Box<CreatedRecord>>,
}

/// An execution record and the revision its creation returned.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedRecord {
    pub revision: u64,
    pub record: ExecutionRecord,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_round_trip() {
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), Value::from(s.as_str()));
        }
        assert_eq!(Status::parse("bogus"), None);
    }

    #[test]
    fn completed_group_matches_stackstorm() {
        let done: Vec<_> = Status::ALL
            .into_iter()
            .filter(|s| s.is_completed())
            .collect();
        assert_eq!(
            done,
            vec![
                Status::Succeeded,
                Status::Failed,
                Status::Timeout,
                Status::Abandoned,
                Status::Canceled
            ]
        );
    }
}

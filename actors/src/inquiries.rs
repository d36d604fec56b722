//! Inquiries: executions of the `inquirer` runner (`core.ask`) waiting in
//! `pending` for a person's response. Responding and expiry both complete
//! the execution record by compare-and-swap, so of two racing nodes (or a
//! response racing the expiry) exactly one wins.

use serde_json::{json, Value};
use squall_domain::execution::{ExecutionRecord, Status};
use squall_domain::time::Timestamp;
use tokio_util::sync::CancellationToken;

use crate::bus::Bus;
use crate::error::EngineError;
use crate::history::{Filter, HistoryHandle};
use crate::timing::EXPIRY_SWEEP;

/// The runner whose executions are inquiries.
pub const RUNNER: &str = "inquirer";

/// Whether `record` is an inquiry still waiting for its response.
pub fn is_open(record: &ExecutionRecord) -> bool {
    record.runner.name == RUNNER && record.status == Status::Pending
}

/// When an open inquiry stops waiting: `ttl` minutes (StackStorm's unit)
/// after it was asked; never for a `ttl` of 0 or less.
pub fn deadline(record: &ExecutionRecord) -> Option<Timestamp> {
    let ttl = record
        .result
        .get("ttl")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    (ttl > 0).then(|| record.start_timestamp + chrono::Duration::minutes(ttl))
}

/// Every open inquiry's id, newest first.
pub fn open_ids(history: &HistoryHandle) -> Vec<String> {
    let filter = Filter {
        runner: Some(RUNNER.into()),
        status: Some(Status::Pending),
        ..Filter::default()
    };
    history.read().page(&filter, false, 0, usize::MAX).ids
}

/// Marks `timeout` every open inquiry whose deadline has passed at `now`;
/// returns how many this call expired.
pub async fn expire_due(
    bus: &Bus,
    history: &HistoryHandle,
    now: Timestamp,
) -> Result<usize, EngineError> {
    let mut expired = 0;
    for id in open_ids(history) {
        let Some((mut record, rev)) = bus.execution(&id).await? else {
            continue;
        };
        if !is_open(&record) || deadline(&record).is_none_or(|d| d > now) {
            continue;
        }
        let ttl = record.result["ttl"].clone();
        if let Some(obj) = record.result.as_object_mut() {
            obj.insert(
                "error".into(),
                json!(format!(
                    "no response within the inquiry's ttl of {ttl} minutes"
                )),
            );
        }
        record.transition(Status::Timeout, now);
        if bus.update_execution(&record, rev).await?.is_some() {
            tracing::info!(inquiry = %id, "inquiry timed out");
            expired += 1;
        }
    }
    Ok(expired)
}

/// Expires due inquiries every [`EXPIRY_SWEEP`] until `stop`.
pub async fn sweep_until(bus: Bus, history: HistoryHandle, stop: CancellationToken) {
    crate::history::sweep_every(EXPIRY_SWEEP, stop, "inquiry expiry sweep", |now| {
        expire_due(&bus, &history, now)
    })
    .await;
}

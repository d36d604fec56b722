//! Executions nobody works on any more, and the sweep that requests them
//! again. Normally the work-queue message of an execution outlives its run
//! (the runner acknowledges it last), so a lost runner is noticed when the
//! message comes back (see `runners`). The message itself can be lost,
//! though: a lone NATS server killed before it wrote its state may forget
//! a request, or keep an acknowledgement whose final record it lost. Such
//! a record would wait forever. Every API node therefore looks, every
//! [`ORPHAN_SWEEP_EVERY`], for records unchanged for [`ORPHAN_QUIET_FOR`] that:
//!
//! - are `requested` while their pool's queue is empty and idle (nothing
//!   waits, nothing runs), so no message will ever bring them to a runner;
//! - or are claimed (`delayed`, `scheduled`, `running`, `canceling`) by a
//!   node that says it does not run them (or is gone); an execution
//!   `delayed` with no node waits for a concurrency slot, which the policy
//!   sweep (`policies::sweep`) watches instead;
//!
//! and publishes their request again, with a message id derived from the
//! record's state so that sweeping nodes request each state once. The
//! runner that gets it settles the record exactly as for a redelivery.

use std::collections::HashMap;

use squall_domain::execution::Status;
use squall_domain::time::Timestamp;
use tokio_util::sync::CancellationToken;

use crate::bus::EXECUTIONS_STREAM;
use crate::error::{bus_err, EngineError};
use crate::history::{Filter, HistoryHandle};
use crate::runners::{claim_is_alive, consumer_name, RunnerContext};
use crate::timing::{ORPHAN_QUIET_FOR, ORPHAN_SWEEP_EVERY};

/// Records read per sweep at most (the rest wait for the next sweep).
const READS_PER_SWEEP: usize = 1000;

/// The statuses a record waits in for a runner.
const WAITING: [Status; 5] = [
    Status::Requested,
    Status::Delayed,
    Status::Scheduled,
    Status::Running,
    Status::Canceling,
];

/// Requests again every orphaned execution found at `now`; returns how
/// many this call requested.
pub async fn sweep(
    ctx: &RunnerContext,
    history: &HistoryHandle,
    now: Timestamp,
) -> Result<usize, EngineError> {
    let ids: Vec<String> = WAITING
        .iter()
        .flat_map(|status| {
            let filter = Filter {
                status: Some(*status),
                before: Some(now - ORPHAN_QUIET_FOR),
                ..Filter::default()
            };
            history.read().page(&filter, true, 0, READS_PER_SWEEP).ids
        })
        .take(READS_PER_SWEEP)
        .collect();
    let mut idle_pools: HashMap<String, bool> = HashMap::new();
    let mut requested = 0;
    for id in ids {
        let Some((record, _)) = ctx.bus.execution(&id).await? else {
            continue;
        };
        let changed = record
            .log
            .last()
            .map_or(record.start_timestamp, |e| e.timestamp);
        // Waiting for a concurrency slot is the policy sweep's to watch.
        let policy_delayed = record.status == Status::Delayed && record.node.is_none();
        if changed > now - ORPHAN_QUIET_FOR
            || !crate::runners::settled_by_runners(&record)
            || policy_delayed
        {
            continue;
        }
        let orphaned = if record.status == Status::Requested {
            match idle_pools.get(&record.pool) {
                Some(idle) => *idle,
                None => {
                    let idle = pool_is_idle(ctx, &record.pool).await?;
                    idle_pools.insert(record.pool.clone(), idle);
                    idle
                }
            }
        } else {
            !claim_is_alive(ctx, &record).await?
        };
        if orphaned {
            tracing::warn!(execution = %id, status = %record.status, "no runner works on this execution; requesting it again");
            let msg_id = format!("{id}.orphan.{}", record.log.len());
            ctx.bus.request_execution(&record, &msg_id, None).await?;
            crate::metrics::orphan_requested();
            requested += 1;
        }
    }
    Ok(requested)
}

/// Whether the queue of `pool` holds no request, waiting or in flight. A
/// pool nobody serves has no consumer: its requests wait for a node, so it
/// is not idle.
async fn pool_is_idle(ctx: &RunnerContext, pool: &str) -> Result<bool, EngineError> {
    let stream = ctx
        .bus
        .js
        .get_stream(EXECUTIONS_STREAM)
        .await
        .map_err(|e| bus_err("open stream", e))?;
    let mut consumer: async_nats::jetstream::consumer::PullConsumer =
        match stream.get_consumer(&consumer_name(pool)).await {
            Ok(c) => c,
            Err(_) => return Ok(false),
        };
    let info = consumer
        .info()
        .await
        .map_err(|e| bus_err("read runner consumer", e))?;
    Ok(info.num_pending == 0 && info.num_ack_pending == 0)
}

/// Sweeps every [`ORPHAN_SWEEP_EVERY`] until `stop`.
pub async fn sweep_until(ctx: RunnerContext, history: HistoryHandle, stop: CancellationToken) {
    crate::history::sweep_every(
        ORPHAN_SWEEP_EVERY,
        stop,
        "orphaned execution sweep",
        |now| sweep(&ctx, &history, now),
    )
    .await;
}

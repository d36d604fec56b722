//! Every timing constant of the engine, in one place: how a node notices
//! failure, how long work waits before someone else takes it, how often
//! sweeps run. They depend on each other (the assertions below say how);
//! change them together, and keep ARCHITECTURE.md's "Timing" true.

use std::time::Duration;

// Membership and leases (`cluster`).

/// How often a node heartbeats and reconsiders its partitions.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// Longest wait for one heartbeat write.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a heartbeat keeps its node's leases alive, as other nodes see
/// it: a node silent this long is dead to them.
pub const LEASE_TTL: Duration = Duration::from_secs(5);
/// How long before others may take its leases a node stops its partitions
/// when it cannot heartbeat.
pub const FENCE_MARGIN: Duration = Duration::from_secs(2);
/// How long a silent node's entry stays in the `nodes` bucket.
pub const NODE_ENTRY_MAX_AGE: Duration = Duration::from_secs(60);

// A heartbeat that times out must leave the node time to fence itself.
const _: () = assert!(FENCE_MARGIN.as_millis() > HEARTBEAT_TIMEOUT.as_millis());
const _: () =
    assert!(LEASE_TTL.as_millis() > FENCE_MARGIN.as_millis() + HEARTBEAT_EVERY.as_millis());

// Consumers (`consumer`, `runners`).

/// How long a delivered message stays with its consumer before JetStream
/// delivers it again, unless the consumer reports progress (it does, every
/// third of this): how long the work of a dead node waits before another
/// takes it.
pub const ACK_WAIT: Duration = Duration::from_secs(30);
/// Delay before a message whose handling hit a bus error is delivered
/// again (rule and workflow partitions).
pub const RETRY_DELAY: Duration = Duration::from_secs(1);
/// How long the node running a claimed execution has to say so.
pub const CLAIM_CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// When a request whose execution another runner still runs is looked at
/// again: the request stays on the work queue as that run's watchdog.
pub const CHECK_AGAIN_AFTER: Duration = ACK_WAIT;

// Actors (`node`, `consumer`).

/// How long a stopping consumer waits for its handlers before aborting them.
pub const STOP_GRACE: Duration = Duration::from_millis(400);
/// How long a partition actor may take to stop before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_millis(500);
/// Back-off before a failed actor (or the coordinator, or the run
/// responder) is started again.
pub const RESTART_DELAY: Duration = Duration::from_millis(500);
/// How long the supervisor may take to answer a call: to stop partition
/// actors (each stops within `2 * STOP_TIMEOUT`, all at once).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the node's actors may take to start.
pub const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long shutdown waits for running actions to record their end.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

// A consumer stops within the supervisor's patience.
const _: () = assert!(STOP_GRACE.as_millis() < STOP_TIMEOUT.as_millis());

// Sweeps.

/// How often a workflow partition reconciles its running workflows.
pub const WORKFLOW_SWEEP_EVERY: Duration = Duration::from_secs(30);
/// How often each API node looks for concurrency slots whose wake-up or
/// release was lost (`policies::sweep`).
pub const POLICY_SWEEP_EVERY: Duration = Duration::from_secs(5);
/// How often each API node sweeps for executions no runner works on.
pub const ORPHAN_SWEEP_EVERY: Duration = Duration::from_secs(60);
/// How often a node looks for inquiries past their `ttl`.
pub const EXPIRY_SWEEP: Duration = Duration::from_secs(30);

// Watches (`mirror`).

/// Back-off before watching a bucket again after losing the watch.
pub const REWATCH_DELAY: Duration = Duration::from_secs(1);
/// How often a watch is checked against its bucket. A watch can stall
/// without an error when the server holding its consumer goes away (one of
/// a cluster's servers dies): one that has not moved for a whole period
/// while the bucket holds newer entries is replaced.
pub const STALL_CHECK: Duration = Duration::from_secs(3);

/// How long a node waits for its own change to reach its mirror (auth:
/// a key disabled here stops working here with the next request).
pub const MIRROR_CATCH_UP: Duration = Duration::from_secs(1);
/// How often it looks meanwhile.
pub const MIRROR_POLL: Duration = Duration::from_millis(2);

// Publishing (`bus`).

/// How long JetStream remembers a `Nats-Msg-Id` to drop duplicates.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Attempts of one read-change-swap on a bucket entry before it is given
/// up ([`crate::bus::Bucket::modify`]): conflicts come from concurrent
/// writers of one key, which settle in a few rounds.
pub const CONFLICT_ATTEMPTS: usize = 50;

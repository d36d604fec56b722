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

// Publishing (`bus`).

/// How long JetStream remembers a `Nats-Msg-Id` to drop duplicates.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Attempts of one read-change-swap on a bucket entry before it is given
/// up ([`crate::bus::Bucket::modify`]): conflicts come from concurrent
/// writers of one key, which settle in a few rounds.
pub const CONFLICT_ATTEMPTS: usize = 50;

// Tokens (`auth`, `sensor_host`).

/// Longest life a token may be given; the `tokens` bucket drops older
/// entries. A week: a leaked token stops working within it, and a client
/// (or a long action) may still keep one across days.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Life of a token when the request names none: StackStorm's default
/// `token_ttl`, so st2 clients see the lifetimes they expect.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
/// How often a running sensor gets a fresh token: half its life, so a
/// failed renewal still leaves a whole period to try again.
pub const TOKEN_RENEW_EVERY: Duration = Duration::from_secs(12 * 3600);

// The token is renewed well before it expires.
const _: () = assert!(TOKEN_RENEW_EVERY.as_secs() * 2 <= DEFAULT_TOKEN_TTL.as_secs());

// Python sensors (`sensor_host`).

/// First restart delay of a crashed sensor; doubled after each failure in
/// a row. A second: a sensor that fails at once does not spin, and one
/// that hit a passing fault is back quickly.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest restart delay: a sensor broken for good is retried once a
/// minute, so it comes back within a minute of being fixed.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A sensor that ran this long after `setup()` starts its back-off afresh
/// when it next crashes: half a minute of running means the fault is not
/// in its start, so a later crash is a new one.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(30);
/// How often the dispatch counts of a running sensor are written at most:
/// one write per sensor every few seconds, whatever its trigger rate.
pub const COUNTS_EVERY: Duration = Duration::from_secs(5);

// Timers (`sensors`).

/// How far back a late timer (or a timer's new owner) still fires the
/// ticks it missed: a minute covers a restart or a takeover; older ticks
/// are given up (with a warning) rather than fired in a burst.
pub const TIMER_CATCH_UP: chrono::Duration = chrono::Duration::seconds(60);
/// How far back a timer's new owner fires the ticks its previous owner did
/// not: a takeover takes seconds (`LEASE_TTL` and a heartbeat), so 20 s
/// covers it without re-firing what the old owner did.
pub const TIMER_RESUME_WINDOW: chrono::Duration = chrono::Duration::seconds(20);

// A takeover fits in the resume window.
const _: () = assert!(LEASE_TTL.as_secs() + HEARTBEAT_EVERY.as_secs() < 20);

// Orphaned executions (`orphans`).

/// How long a record must have stayed unchanged before the orphan sweep
/// looks at it: well past the ack wait (30 s) and the question to its
/// node (5 s), after which a redelivered request would have settled it.
pub const ORPHAN_QUIET_FOR: chrono::Duration = chrono::Duration::seconds(120);

const _: () = assert!(ACK_WAIT.as_secs() + CLAIM_CHECK_TIMEOUT.as_secs() < 120);

// Retention of the spine (`bus`, `logins`).

/// How long output chunks are kept (the final result keeps all output):
/// a week, as long as trigger instances, for following a run's output
/// after the fact.
pub const OUTPUT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long trigger instances are kept: a week, as output, for
/// re-emitting and tracing what a rule saw.
pub const TRIGGER_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long the `logins` bucket keeps a failed-login record at all: a day,
/// the longest lock a configuration may set.
pub const LOGINS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

// Waits on the bus (`bus`, `store`, `policies`, `pack_install`).

/// How long listing a bucket's keys (or a stream's subjects) may take
/// before it is given up: a few seconds holds hundreds of thousands of
/// keys, and a caller (an API request) must not hang on a stalled server.
pub const LIST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a pack install waits for this node's catalog to show its
/// result: a watch delivers it in milliseconds; ten seconds allows a
/// loaded node, and a timeout is reported, not hidden.
pub const CATALOG_WAIT: Duration = Duration::from_secs(10);

// Action tokens (`action_tokens`).

/// Waits between attempts to revoke an action's API token after its run
/// (one attempt, then one after each): a token never revoked still expires
/// at its TTL. They fit within [`DRAIN_TIMEOUT`], so shutdown waits for them.
pub const TOKEN_REVOKE_RETRIES: [Duration; 3] = [
    Duration::from_millis(100),
    Duration::from_millis(500),
    Duration::from_secs(2),
];

// Action output (`runners`).

/// How long a run's output chunks gather before they are published as one
/// `OUTPUT` message: what a live viewer waits at most for a line.
pub const OUTPUT_BATCH_WINDOW: Duration = Duration::from_millis(20);

// Held here since the branches that added them landed.

/// How long a stopping node keeps publishing the audit events it has
/// queued: long enough for a backlog of a few thousand at the emitter's
/// pace, short enough not to hold up a shutdown the supervisor waits for.
pub const AUDIT_DRAIN_GRACE: Duration = Duration::from_secs(5);
/// How much longer than the action's timeout its API token lives: the
/// token outlasts every run the timeout allows, and is revoked when the
/// run ends anyway.
pub const TOKEN_MARGIN: Duration = Duration::from_secs(300);
/// Pause between a purge's batches of deletions, so the collector leaves
/// the bus to the hot path (measured in loadtest/README.md's retention
/// figures).
pub const PURGE_BATCH_PAUSE: Duration = Duration::from_millis(20);
/// How long a start waits for the history to load before serving (lists
/// answer 503 until it has): a snapshot's load fits in it on a small
/// machine, and a longer load serves the rest of the API meanwhile.
pub const HISTORY_WAIT: Duration = Duration::from_secs(3);
/// How often the list indexes are saved for a fast restart (and once more
/// at shutdown): a minute's records are what a restart replays.
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(60);
/// How long a list waits for its index to reach what the stream held when
/// the list was asked for (so a record stored just before is shown): the
/// index follows within milliseconds; a second allows a loaded node.
pub const LIST_CATCH_UP: Duration = Duration::from_secs(1);

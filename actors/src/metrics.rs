//! Prometheus metrics: a fixed set of counters, named as constants and
//! labelled only by bounded values (statuses), rendered in the text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use squall_domain::execution::{EnforcementStatus, Status};

/// Trigger instances published by this node.
pub const TRIGGERS_PUBLISHED: &str = "squall_trigger_instances_published_total";
/// Trigger instances processed by this node's rule partitions.
pub const TRIGGERS_PROCESSED: &str = "squall_trigger_instances_processed_total";
/// Rule enforcements written, by status.
pub const ENFORCEMENTS: &str = "squall_rule_enforcements_total";
/// Executions requested through this node.
pub const EXECUTIONS_REQUESTED: &str = "squall_executions_requested_total";
/// Executions finished by this node's runners, by status.
pub const EXECUTIONS_FINISHED: &str = "squall_executions_finished_total";
/// Executions running on this node now.
pub const EXECUTIONS_RUNNING: &str = "squall_executions_running";
/// Gauge: clients connected to the event stream.
pub const STREAM_CLIENTS: &str = "squall_stream_clients";
/// Runs whose runner was lost, settled by this node, by what became of
/// them.
pub const RUNNER_LOSSES: &str = "squall_runner_losses_total";
/// Executions this node's sweep found orphaned and requested again.
pub const ORPHANS_REQUESTED: &str = "squall_orphaned_executions_requested_total";

/// Sensor dispatches, by outcome.
pub const SENSOR_DISPATCHES: &str = "squall_sensor_dispatches_total";
/// Sensor processes restarted after a crash.
pub const SENSOR_RESTARTS: &str = "squall_sensor_restarts_total";
/// Gauge: sensors running (past `setup()`) on this node.
pub const SENSORS_RUNNING: &str = "squall_sensors_running";

/// What became of a sensor's dispatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatch {
    /// Published as a trigger instance.
    Published,
    /// Refused: unknown trigger, or a payload its type's schema rejects.
    Rejected,
    /// Not published: the node no longer held the sensor's partition.
    Fenced,
}

impl Dispatch {
    const ALL: [Dispatch; 3] = [Dispatch::Published, Dispatch::Rejected, Dispatch::Fenced];

    fn label(self) -> &'static str {
        match self {
            Dispatch::Published => "published",
            Dispatch::Rejected => "rejected",
            Dispatch::Fenced => "fenced",
        }
    }
}

/// What became of a run whose runner was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostRun {
    /// Claimed but not started: run here.
    Started,
    /// Run again (`squall.runner_loss: rerun`).
    Rerun,
    Abandoned,
    Canceled,
}

impl LostRun {
    const ALL: [LostRun; 4] = [
        LostRun::Started,
        LostRun::Rerun,
        LostRun::Abandoned,
        LostRun::Canceled,
    ];

    fn label(self) -> &'static str {
        match self {
            LostRun::Started => "started",
            LostRun::Rerun => "rerun",
            LostRun::Abandoned => "abandoned",
            LostRun::Canceled => "canceled",
        }
    }
}

static TRIGGERS_PUBLISHED_N: AtomicU64 = AtomicU64::new(0);
static TRIGGERS_PROCESSED_N: AtomicU64 = AtomicU64::new(0);
static ENFORCEMENTS_N: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
static REQUESTED_N: AtomicU64 = AtomicU64::new(0);
static FINISHED_N: [AtomicU64; Status::ALL.len()] =
    [const { AtomicU64::new(0) }; Status::ALL.len()];
static RUNNING_N: AtomicU64 = AtomicU64::new(0);
static STREAM_CLIENTS_N: AtomicU64 = AtomicU64::new(0);
static LOST_N: [AtomicU64; LostRun::ALL.len()] = [const { AtomicU64::new(0) }; LostRun::ALL.len()];
static ORPHANS_N: AtomicU64 = AtomicU64::new(0);
static DISPATCHES_N: [AtomicU64; Dispatch::ALL.len()] =
    [const { AtomicU64::new(0) }; Dispatch::ALL.len()];
static SENSOR_RESTARTS_N: AtomicU64 = AtomicU64::new(0);
static SENSORS_RUNNING_N: AtomicU64 = AtomicU64::new(0);

/// Counts one event-stream client for as long as it lives.
#[derive(Debug)]
pub struct StreamClient(());

impl Drop for StreamClient {
    fn drop(&mut self) {
        STREAM_CLIENTS_N.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A client connected to the event stream; dropped when it leaves.
pub fn stream_client() -> StreamClient {
    STREAM_CLIENTS_N.fetch_add(1, Ordering::Relaxed);
    StreamClient(())
}

/// A trigger instance was published.
pub fn trigger_published() {
    TRIGGERS_PUBLISHED_N.fetch_add(1, Ordering::Relaxed);
}

/// A trigger instance was fully processed by the rules engine.
pub fn trigger_processed() {
    TRIGGERS_PROCESSED_N.fetch_add(1, Ordering::Relaxed);
}

/// A rule enforcement was written.
pub fn enforcement(status: EnforcementStatus) {
    let i = match status {
        EnforcementStatus::Succeeded => 0,
        EnforcementStatus::Failed => 1,
    };
    ENFORCEMENTS_N[i].fetch_add(1, Ordering::Relaxed);
}

/// An execution was requested.
pub fn execution_requested() {
    REQUESTED_N.fetch_add(1, Ordering::Relaxed);
}

/// An execution started running here.
pub fn execution_started() {
    RUNNING_N.fetch_add(1, Ordering::Relaxed);
}

/// An execution that ran here ended with `status`.
pub fn execution_finished(status: Status) {
    RUNNING_N.fetch_sub(1, Ordering::Relaxed);
    if let Some(i) = Status::ALL.iter().position(|s| *s == status) {
        FINISHED_N[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// A run whose runner was lost was settled as `outcome`.
pub fn runner_lost(outcome: LostRun) {
    LOST_N[outcome as usize].fetch_add(1, Ordering::Relaxed);
}

/// The sweep requested an orphaned execution again.
pub fn orphan_requested() {
    ORPHANS_N.fetch_add(1, Ordering::Relaxed);
}

/// A sensor dispatched a trigger, with this outcome.
pub fn sensor_dispatch(outcome: Dispatch) {
    DISPATCHES_N[outcome as usize].fetch_add(1, Ordering::Relaxed);
}

/// A crashed sensor is restarted.
pub fn sensor_restarted() {
    SENSOR_RESTARTS_N.fetch_add(1, Ordering::Relaxed);
}

/// A sensor finished `setup()` (true) or, having done so, ended (false).
pub fn sensor_running(up: bool) {
    if up {
        SENSORS_RUNNING_N.fetch_add(1, Ordering::Relaxed);
    } else {
        SENSORS_RUNNING_N.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every metric in Prometheus' text exposition format.
pub fn render() -> String {
    let mut out = String::new();
    let mut counter = |name: &str, help: &str, samples: Vec<(String, u64)>, kind: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    counter(
        TRIGGERS_PUBLISHED,
        "Trigger instances published by this node.",
        vec![(String::new(), load(&TRIGGERS_PUBLISHED_N))],
        "counter",
    );
    counter(
        TRIGGERS_PROCESSED,
        "Trigger instances processed by this node's rule partitions.",
        vec![(String::new(), load(&TRIGGERS_PROCESSED_N))],
        "counter",
    );
    counter(
        ENFORCEMENTS,
        "Rule enforcements written, by status.",
        vec![
            ("{status=\"succeeded\"}".into(), load(&ENFORCEMENTS_N[0])),
            ("{status=\"failed\"}".into(), load(&ENFORCEMENTS_N[1])),
        ],
        "counter",
    );
    counter(
        EXECUTIONS_REQUESTED,
        "Executions requested through this node.",
        vec![(String::new(), load(&REQUESTED_N))],
        "counter",
    );
    counter(
        EXECUTIONS_FINISHED,
        "Executions finished by this node's runners, by status.",
        Status::ALL
            .iter()
            .zip(FINISHED_N.iter())
            .filter(|(s, _)| s.is_completed())
            .map(|(s, n)| (format!("{{status=\"{s}\"}}"), load(n)))
            .collect(),
        "counter",
    );
    counter(
        EXECUTIONS_RUNNING,
        "Executions running on this node.",
        vec![(String::new(), load(&RUNNING_N))],
        "gauge",
    );
    counter(
        STREAM_CLIENTS,
        "Clients connected to this node's event stream.",
        vec![(String::new(), load(&STREAM_CLIENTS_N))],
        "gauge",
    );
    counter(
        RUNNER_LOSSES,
        "Runs whose runner was lost, settled by this node, by outcome.",
        LostRun::ALL
            .iter()
            .map(|o| {
                (
                    format!("{{outcome=\"{}\"}}", o.label()),
                    load(&LOST_N[*o as usize]),
                )
            })
            .collect(),
        "counter",
    );
    counter(
        ORPHANS_REQUESTED,
        "Executions this node's sweep found orphaned and requested again.",
        vec![(String::new(), load(&ORPHANS_N))],
        "counter",
    );
    counter(
        SENSOR_DISPATCHES,
        "Sensor dispatches on this node, by outcome.",
        Dispatch::ALL
            .iter()
            .map(|o| {
                (
                    format!("{{outcome=\"{}\"}}", o.label()),
                    load(&DISPATCHES_N[*o as usize]),
                )
            })
            .collect(),
        "counter",
    );
    counter(
        SENSOR_RESTARTS,
        "Sensor processes restarted after a crash on this node.",
        vec![(String::new(), load(&SENSOR_RESTARTS_N))],
        "counter",
    );
    counter(
        SENSORS_RUNNING,
        "Sensors running on this node.",
        vec![(String::new(), load(&SENSORS_RUNNING_N))],
        "gauge",
    );
    out.push_str(&crate::retention::render_metrics());
    render_audit(&mut out);
    out
}

/// Audit events this node published to the `AUDIT` stream.
pub const AUDIT_PUBLISHED: &str = "squall_audit_events_published_total";
/// Audit events dropped because the node's publish queue was full.
pub const AUDIT_DROPPED: &str = "squall_audit_events_dropped_total";
/// Audit events a destination refused for good, moved to `AUDIT_DLQ`
/// (alert on any increase).
pub const AUDIT_DEAD_LETTERED: &str = "squall_audit_dead_lettered_total";
/// Gauge: audit events not yet confirmed by a destination.
pub const AUDIT_EXPORT_LAG: &str = "squall_audit_export_lag";
/// Gauge: age of the oldest audit event a destination has not confirmed.
pub const AUDIT_EXPORT_OLDEST_AGE: &str = "squall_audit_export_oldest_age_seconds";
/// Gauge: 1 while a destination's exporter is stopped by an error that
/// needs a person (bad credentials, a misconfigured index).
pub const AUDIT_EXPORTER_STOPPED: &str = "squall_audit_exporter_stopped";

static AUDIT_PUBLISHED_N: AtomicU64 = AtomicU64::new(0);
static AUDIT_DROPPED_N: AtomicU64 = AtomicU64::new(0);

/// Per destination (a bounded set: the configured exporters).
#[derive(Debug, Default, Clone, Copy)]
struct AuditDestination {
    dead_lettered: u64,
    lag: u64,
    oldest_age: f64,
    stopped: bool,
}

static AUDIT_DESTINATIONS: std::sync::Mutex<std::collections::BTreeMap<String, AuditDestination>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

fn audit_destination(name: &str, f: impl FnOnce(&mut AuditDestination)) {
    let mut all = AUDIT_DESTINATIONS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    f(all.entry(name.to_string()).or_default());
}

/// An audit event was stored on the stream.
pub fn audit_published() {
    AUDIT_PUBLISHED_N.fetch_add(1, Ordering::Relaxed);
}

/// An audit event was dropped (publish queue full).
pub fn audit_dropped() {
    AUDIT_DROPPED_N.fetch_add(1, Ordering::Relaxed);
}

/// Destination `name` refused an event for good.
pub fn audit_dead_lettered(name: &str) {
    audit_destination(name, |d| d.dead_lettered += 1);
}

/// Destination `name`'s export lag and oldest unconfirmed event's age.
pub fn audit_export(name: &str, lag: u64, oldest_age: std::time::Duration) {
    audit_destination(name, |d| {
        d.lag = lag;
        d.oldest_age = oldest_age.as_secs_f64();
    });
}

/// Destination `name`'s exporter stopped (true) or runs (false).
pub fn audit_exporter_stopped(name: &str, stopped: bool) {
    audit_destination(name, |d| d.stopped = stopped);
}

fn render_audit(out: &mut String) {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let _ = writeln!(
        out,
        "# HELP {AUDIT_PUBLISHED} Audit events this node stored on the AUDIT stream.\n\
         # TYPE {AUDIT_PUBLISHED} counter\n{AUDIT_PUBLISHED} {}\n\
         # HELP {AUDIT_DROPPED} Audit events dropped: the node's publish queue was full.\n\
         # TYPE {AUDIT_DROPPED} counter\n{AUDIT_DROPPED} {}",
        load(&AUDIT_PUBLISHED_N),
        load(&AUDIT_DROPPED_N)
    );
    let all = AUDIT_DESTINATIONS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    for (name, help, kind, value) in [
        (
            AUDIT_DEAD_LETTERED,
            "Audit events a destination refused for good (moved to AUDIT_DLQ).",
            "counter",
            (|d: &AuditDestination| d.dead_lettered as f64) as fn(&AuditDestination) -> f64,
        ),
        (
            AUDIT_EXPORT_LAG,
            "Audit events a destination has not confirmed yet.",
            "gauge",
            |d| d.lag as f64,
        ),
        (
            AUDIT_EXPORT_OLDEST_AGE,
            "Age of the oldest audit event a destination has not confirmed.",
            "gauge",
            |d| d.oldest_age,
        ),
        (
            AUDIT_EXPORTER_STOPPED,
            "1 while a destination's exporter is stopped by an error a person must fix.",
            "gauge",
            |d| f64::from(u8::from(d.stopped)),
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (dest, d) in &all {
            let _ = writeln!(out, "{name}{{destination=\"{dest}\"}} {}", value(d));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendering_names_every_metric_with_type() {
        execution_requested();
        let text = render();
        for name in [
            TRIGGERS_PUBLISHED,
            TRIGGERS_PROCESSED,
            ENFORCEMENTS,
            EXECUTIONS_REQUESTED,
            EXECUTIONS_FINISHED,
            EXECUTIONS_RUNNING,
            RUNNER_LOSSES,
            ORPHANS_REQUESTED,
            SENSOR_DISPATCHES,
            SENSOR_RESTARTS,
            SENSORS_RUNNING,
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
        }
        assert!(text.contains("squall_executions_finished_total{status=\"timeout\"}"));
        runner_lost(LostRun::Rerun);
        assert!(render().contains("squall_runner_losses_total{outcome=\"rerun\"} 1"));
    }
}

//! The node's metrics: OpenTelemetry instruments on one meter provider,
//! read by a Prometheus exporter (rendered at `/metrics`) and, when the
//! node is configured to, by a periodic OTLP reader the binary adds
//! ([`install`]). Names follow OpenTelemetry's semantic conventions where
//! one exists (`http.server.request.duration`), else `squall.*`; the
//! Prometheus form is the exporter's translation (`.` → `_`, unit suffix,
//! `_total` on counters). Labels are bounded: statuses, outcomes, runner
//! types, trigger types, routes, consumers — never an execution id.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use opentelemetry::metrics::{Counter, Histogram, Meter, MeterProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use squall_domain::execution::{EnforcementStatus, Status};

/// Trigger instances published by this node (Prometheus name).
pub const TRIGGERS_PUBLISHED: &str = "squall_trigger_instances_published_total";
/// Trigger instances processed by this node's rule partitions.
pub const TRIGGERS_PROCESSED: &str = "squall_trigger_instances_processed_total";
/// Rules evaluated against a trigger instance, by outcome.
pub const RULE_EVALUATIONS: &str = "squall_rule_evaluations_total";
/// Rule enforcements written, by status.
pub const ENFORCEMENTS: &str = "squall_rule_enforcements_total";
/// Executions requested through this node, by runner.
pub const EXECUTIONS_REQUESTED: &str = "squall_executions_requested_total";
/// Executions finished by this node's runners, by status and runner.
pub const EXECUTIONS_FINISHED: &str = "squall_executions_finished_total";
/// Executions running on this node now.
pub const EXECUTIONS_RUNNING: &str = "squall_executions_running";
/// How long executions ran, by runner and status.
pub const EXECUTION_DURATION: &str = "squall_execution_duration_seconds";
/// From request to start, by runner: the saturation signal.
pub const QUEUE_TIME: &str = "squall_execution_queue_time_seconds";
/// Workflows ended by this node's workflow partitions, by status.
pub const WORKFLOW_DURATION: &str = "squall_workflow_duration_seconds";
/// Workflow task runs ended, by status.
pub const WORKFLOW_TASKS: &str = "squall_workflow_tasks_total";
/// HTTP requests served, by method, route and status code.
pub const HTTP_DURATION: &str = "http_server_request_duration_seconds";
/// Messages waiting (pending and unacknowledged) per JetStream consumer.
pub const JETSTREAM_PENDING: &str = "squall_jetstream_consumer_pending";
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
/// Spans handed to the exporter's queue.
pub const SPANS_QUEUED: &str = "squall_telemetry_spans_queued_total";
/// Spans dropped, by reason (`queue_full`, `export_failed`).
pub const SPANS_DROPPED: &str = "squall_telemetry_spans_dropped_total";
/// Spans the collector accepted.
pub const SPANS_EXPORTED: &str = "squall_telemetry_spans_exported_total";

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
    fn label(self) -> &'static str {
        match self {
            LostRun::Started => "started",
            LostRun::Rerun => "rerun",
            LostRun::Abandoned => "abandoned",
            LostRun::Canceled => "canceled",
        }
    }
}

/// What a rule's evaluation against a trigger instance came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evaluation {
    Matched,
    NotMatched,
    /// Its criteria could not be evaluated (a failed enforcement).
    Error,
}

impl Evaluation {
    fn label(self) -> &'static str {
        match self {
            Evaluation::Matched => "matched",
            Evaluation::NotMatched => "not_matched",
            Evaluation::Error => "error",
        }
    }
}

/// Why spans were dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanDrop {
    /// The export queue was full (the collector is slow or down).
    QueueFull,
    /// The collector did not accept a batch.
    ExportFailed,
}

impl SpanDrop {
    fn label(self) -> &'static str {
        match self {
            SpanDrop::QueueFull => "queue_full",
            SpanDrop::ExportFailed => "export_failed",
        }
    }
}

// Gauges: the values live here, the provider observes them.
static RUNNING_N: AtomicI64 = AtomicI64::new(0);
static STREAM_CLIENTS_N: AtomicI64 = AtomicI64::new(0);
static SENSORS_RUNNING_N: AtomicI64 = AtomicI64::new(0);
/// `(stream, consumer)` → messages pending, refreshed by [`watch_jetstream`].
static PENDING: Mutex<Vec<(String, String, u64)>> = Mutex::new(Vec::new());
/// Spans queued, dropped (queue full, export failed) and exported: counted
/// by the binary's span processor, observed by the provider.
static SPANS_N: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

/// Histogram boundaries in seconds (OpenTelemetry's HTTP advice, extended
/// to minutes for actions and workflows).
const SECONDS: [f64; 17] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0, 60.0,
    300.0,
];

struct Instruments {
    provider: SdkMeterProvider,
    registry: prometheus::Registry,
    triggers_published: Counter<u64>,
    triggers_processed: Counter<u64>,
    rule_evaluations: Counter<u64>,
    enforcements: Counter<u64>,
    requested: Counter<u64>,
    finished: Counter<u64>,
    duration: Histogram<f64>,
    queue_time: Histogram<f64>,
    workflow_duration: Histogram<f64>,
    workflow_tasks: Counter<u64>,
    http_duration: Histogram<f64>,
    lost: Counter<u64>,
    orphans: Counter<u64>,
    dispatches: Counter<u64>,
    sensor_restarts: Counter<u64>,
    audit_published: Counter<u64>,
    audit_dropped: Counter<u64>,
    audit_dead_lettered: Counter<u64>,
}

static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();

/// Builds the meter provider with the Prometheus reader and `reader` (the
/// binary's OTLP reader, when configured). Only the first call (or first
/// metric) builds it; returns whether this call did.
pub fn install<R: MetricReader>(reader: Option<R>) -> bool {
    let mut built = false;
    INSTRUMENTS.get_or_init(|| {
        built = true;
        build(reader)
    });
    built
}

/// Flushes the OTLP reader, if any (at shutdown).
pub fn flush() {
    if let Some(i) = INSTRUMENTS.get() {
        if let Err(e) = i.provider.force_flush() {
            tracing::warn!(error = %e, "metrics not flushed to the collector");
        }
    }
}

fn get() -> &'static Instruments {
    INSTRUMENTS.get_or_init(|| build(None::<opentelemetry_sdk::metrics::ManualReader>))
}

fn build<R: MetricReader>(reader: Option<R>) -> Instruments {
    let registry = prometheus::Registry::new();
    let mut builder = SdkMeterProvider::builder();
    match opentelemetry_prometheus::exporter()
        .with_registry(registry.clone())
        .without_target_info()
        .scope_info_enabled(false)
        .build()
    {
        Ok(exporter) => builder = builder.with_reader(exporter),
        Err(e) => {
            tracing::error!(error = %e, "the Prometheus exporter did not start; /metrics is empty")
        }
    }
    if let Some(reader) = reader {
        builder = builder.with_reader(reader);
    }
    let provider = builder.build();
    let meter = provider.meter("squall");
    register_gauges(&meter);
    let counter = |name: &'static str, unit: &'static str, description: &'static str| {
        meter
            .u64_counter(name)
            .with_unit(unit)
            .with_description(description)
            .build()
    };
    let seconds = |name: &'static str, description: &'static str| {
        meter
            .f64_histogram(name)
            .with_unit("s")
            .with_description(description)
            .with_boundaries(SECONDS.to_vec())
            .build()
    };
    let instruments = Instruments {
        triggers_published: counter(
            "squall.trigger_instances.published",
            "{instance}",
            "Trigger instances published by this node, by trigger type.",
        ),
        triggers_processed: counter(
            "squall.trigger_instances.processed",
            "{instance}",
            "Trigger instances processed by this node's rule partitions.",
        ),
        rule_evaluations: counter(
            "squall.rule.evaluations",
            "{evaluation}",
            "Rules evaluated against trigger instances, by outcome.",
        ),
        enforcements: counter(
            "squall.rule_enforcements",
            "{enforcement}",
            "Rule enforcements written, by status.",
        ),
        requested: counter(
            "squall.executions.requested",
            "{execution}",
            "Executions requested through this node, by runner.",
        ),
        finished: counter(
            "squall.executions.finished",
            "{execution}",
            "Executions finished by this node's runners, by status and runner.",
        ),
        duration: seconds(
            "squall.execution.duration",
            "How long executions ran on this node, by runner and status.",
        ),
        queue_time: seconds(
            "squall.execution.queue_time",
            "From an execution's request to its start on this node, by runner.",
        ),
        workflow_duration: seconds(
            "squall.workflow.duration",
            "Workflows ended by this node, from request to end, by status.",
        ),
        workflow_tasks: counter(
            "squall.workflow.tasks",
            "{task}",
            "Workflow task runs ended, by status.",
        ),
        http_duration: seconds(
            "http.server.request.duration",
            "HTTP requests served by this node, by method, route and status code.",
        ),
        lost: counter(
            "squall.runner_losses",
            "{execution}",
            "Runs whose runner was lost, settled by this node, by outcome.",
        ),
        orphans: counter(
            "squall.orphaned_executions.requested",
            "{execution}",
            "Executions this node's sweep found orphaned and requested again.",
        ),
        dispatches: counter(
            "squall.sensor_dispatches",
            "{dispatch}",
            "Sensor dispatches on this node, by outcome.",
        ),
        sensor_restarts: counter(
            "squall.sensor_restarts",
            "{restart}",
            "Sensor processes restarted after a crash on this node.",
        ),
        audit_published: counter(
            "squall.audit.events.published",
            "{event}",
            "Audit events this node stored on the AUDIT stream.",
        ),
        audit_dropped: counter(
            "squall.audit.events.dropped",
            "{event}",
            "Audit events dropped: the node's publish queue was full.",
        ),
        audit_dead_lettered: counter(
            "squall.audit.dead_lettered",
            "{event}",
            "Audit events a destination refused for good (moved to AUDIT_DLQ).",
        ),
        provider,
        registry,
    };
    // Counters of bounded label sets start at zero, so a dashboard shows 0
    // rather than no data.
    let i = &instruments;
    i.triggers_processed.add(0, &[]);
    i.orphans.add(0, &[]);
    i.sensor_restarts.add(0, &[]);
    i.audit_published.add(0, &[]);
    i.audit_dropped.add(0, &[]);
    for outcome in [
        Evaluation::Matched,
        Evaluation::NotMatched,
        Evaluation::Error,
    ] {
        i.rule_evaluations
            .add(0, &[KeyValue::new("outcome", outcome.label())]);
    }
    for status in ["succeeded", "failed"] {
        i.enforcements.add(0, &[KeyValue::new("status", status)]);
    }
    for outcome in [
        LostRun::Started,
        LostRun::Rerun,
        LostRun::Abandoned,
        LostRun::Canceled,
    ] {
        i.lost.add(0, &[KeyValue::new("outcome", outcome.label())]);
    }
    for outcome in [Dispatch::Published, Dispatch::Rejected, Dispatch::Fenced] {
        i.dispatches
            .add(0, &[KeyValue::new("outcome", outcome.label())]);
    }
    instruments
}

fn register_gauges(meter: &Meter) {
    let gauge = |name: &'static str, description: &'static str, value: &'static AtomicI64| {
        meter
            .i64_observable_gauge(name)
            .with_description(description)
            .with_callback(move |o| o.observe(value.load(Ordering::Relaxed), &[]))
            .build();
    };
    gauge(
        "squall.executions.running",
        "Executions running on this node.",
        &RUNNING_N,
    );
    gauge(
        "squall.stream_clients",
        "Clients connected to this node's event stream.",
        &STREAM_CLIENTS_N,
    );
    gauge(
        "squall.sensors.running",
        "Sensors running on this node.",
        &SENSORS_RUNNING_N,
    );
    meter
        .u64_observable_gauge("squall.jetstream.consumer.pending")
        .with_description(
            "Messages pending or unacknowledged per JetStream consumer this node reads.",
        )
        .with_callback(|o| {
            let pending = PENDING
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (stream, consumer, n) in pending.iter() {
                o.observe(
                    *n,
                    &[
                        KeyValue::new("stream", stream.clone()),
                        KeyValue::new("consumer", consumer.clone()),
                    ],
                );
            }
        })
        .build();
    let spans =
        |name: &'static str, description: &'static str, pick: fn() -> Vec<(u64, &'static str)>| {
            meter
                .u64_observable_counter(name)
                .with_unit("{span}")
                .with_description(description)
                .with_callback(move |o| {
                    for (n, reason) in pick() {
                        if reason.is_empty() {
                            o.observe(n, &[]);
                        } else {
                            o.observe(n, &[KeyValue::new("reason", reason)]);
                        }
                    }
                })
                .build();
        };
    spans(
        "squall.telemetry.spans.queued",
        "Spans handed to the OTLP export queue.",
        || vec![(SPANS_N[0].load(Ordering::Relaxed), "")],
    );
    spans(
        "squall.telemetry.spans.dropped",
        "Spans dropped: the export queue was full, or the collector refused or was unreachable.",
        || {
            vec![
                (
                    SPANS_N[1].load(Ordering::Relaxed),
                    SpanDrop::QueueFull.label(),
                ),
                (
                    SPANS_N[2].load(Ordering::Relaxed),
                    SpanDrop::ExportFailed.label(),
                ),
            ]
        },
    );
    spans(
        "squall.telemetry.spans.exported",
        "Spans the collector accepted.",
        || vec![(SPANS_N[3].load(Ordering::Relaxed), "")],
    );
    register_audit_gauges(meter);
    register_retention(meter);
}

/// Per audit destination: lag, oldest unconfirmed event's age, stopped.
fn register_audit_gauges(meter: &Meter) {
    let each = |f: &mut dyn FnMut(KeyValue, &AuditDestination)| {
        let all = AUDIT_DESTINATIONS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for (name, d) in all {
            f(KeyValue::new("destination", name), &d);
        }
    };
    meter
        .u64_observable_gauge("squall.audit.export.lag")
        .with_unit("{event}")
        .with_description("Audit events a destination has not confirmed yet.")
        .with_callback(move |o| each(&mut |dest, d| o.observe(d.lag, &[dest])))
        .build();
    meter
        .f64_observable_gauge("squall.audit.export.oldest_age")
        .with_unit("s")
        .with_description("Age of the oldest audit event a destination has not confirmed.")
        .with_callback(move |o| each(&mut |dest, d| o.observe(d.oldest_age, &[dest])))
        .build();
    meter
        .u64_observable_gauge("squall.audit.exporter.stopped")
        .with_description(
            "1 while a destination's exporter is stopped by an error a person must fix.",
        )
        .with_callback(move |o| each(&mut |dest, d| o.observe(u64::from(d.stopped), &[dest])))
        .build();
}

/// Garbage collection and purges ([`crate::retention::counts`]).
fn register_retention(meter: &Meter) {
    meter
        .u64_observable_counter("squall.retention.passes")
        .with_unit("{pass}")
        .with_description("Garbage collection passes run by this node.")
        .with_callback(|o| o.observe(crate::retention::counts().passes, &[]))
        .build();
    meter
        .u64_observable_counter("squall.retention.removed")
        .with_unit("{object}")
        .with_description("Objects removed by garbage collection and purges on this node, by kind.")
        .with_callback(|o| {
            for (kind, n) in crate::retention::counts().removed {
                o.observe(n, &[KeyValue::new("kind", kind)]);
            }
        })
        .build();
    meter
        .f64_observable_gauge("squall.retention.last_pass")
        .with_unit("s")
        .with_description("How long this node's last garbage collection pass took.")
        .with_callback(|o| o.observe(crate::retention::counts().last_pass.as_secs_f64(), &[]))
        .build();
}

/// The label of runner type `name` (a registered runner's name, else
/// `other`): bounded, and no allocation.
fn runner_label(name: &str) -> &'static str {
    squall_domain::runner_types::lookup(name).map_or("other", |r| r.name)
}

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

/// A trigger instance of type `trigger_type` was published.
pub fn trigger_published(trigger_type: &str) {
    // Types are registered content (bounded); the label is built only
    // here, once per published trigger.
    get().triggers_published.add(
        1,
        &[KeyValue::new("trigger_type", trigger_type.to_string())],
    );
}

/// A trigger instance was fully processed by the rules engine.
pub fn trigger_processed() {
    get().triggers_processed.add(1, &[]);
}

/// `count` rules were evaluated against a trigger instance with this
/// outcome (the rule partition adds its non-matches once per instance).
pub fn rules_evaluated(outcome: Evaluation, count: u64) {
    get()
        .rule_evaluations
        .add(count, &[KeyValue::new("outcome", outcome.label())]);
}

/// A rule enforcement was written.
pub fn enforcement(status: EnforcementStatus) {
    let label = match status {
        EnforcementStatus::Succeeded => "succeeded",
        EnforcementStatus::Failed => "failed",
    };
    get().enforcements.add(1, &[KeyValue::new("status", label)]);
}

/// An execution of runner type `runner` was requested.
pub fn execution_requested(runner: &str) {
    get()
        .requested
        .add(1, &[KeyValue::new("runner", runner_label(runner))]);
}

/// An execution of `runner` requested `queued` ago started running here.
pub fn execution_started(runner: &str, queued: Duration) {
    RUNNING_N.fetch_add(1, Ordering::Relaxed);
    get().queue_time.record(
        queued.as_secs_f64(),
        &[KeyValue::new("runner", runner_label(runner))],
    );
}

/// An execution of `runner` that ran here for `ran` ended with `status`.
pub fn execution_finished(runner: &str, status: Status, ran: Duration) {
    RUNNING_N.fetch_sub(1, Ordering::Relaxed);
    let labels = [
        KeyValue::new("status", status.as_str()),
        KeyValue::new("runner", runner_label(runner)),
    ];
    let i = get();
    i.finished.add(1, &labels);
    i.duration.record(ran.as_secs_f64(), &labels);
}

/// A workflow (Orquesta or ActionChain) ended with `status` after `took`.
pub fn workflow_finished(status: Status, took: Duration) {
    get().workflow_duration.record(
        took.as_secs_f64(),
        &[KeyValue::new("status", status.as_str())],
    );
}

/// A workflow's task run ended with `status`.
pub fn workflow_task(status: Status) {
    get()
        .workflow_tasks
        .add(1, &[KeyValue::new("status", status.as_str())]);
}

/// An HTTP request to `route` (the matched route template, or
/// `unmatched`) was answered with `status` after `took`.
pub fn http_request(method: &str, route: &str, status: u16, took: Duration) {
    get().http_duration.record(
        took.as_secs_f64(),
        &[
            KeyValue::new("http.request.method", method.to_string()),
            KeyValue::new("http.route", route.to_string()),
            KeyValue::new("http.response.status_code", i64::from(status)),
        ],
    );
}

/// A run whose runner was lost was settled as `outcome`.
pub fn runner_lost(outcome: LostRun) {
    get()
        .lost
        .add(1, &[KeyValue::new("outcome", outcome.label())]);
}

/// The sweep requested an orphaned execution again.
pub fn orphan_requested() {
    get().orphans.add(1, &[]);
}

/// A sensor dispatched a trigger, with this outcome.
pub fn sensor_dispatch(outcome: Dispatch) {
    get()
        .dispatches
        .add(1, &[KeyValue::new("outcome", outcome.label())]);
}

/// A crashed sensor is restarted.
pub fn sensor_restarted() {
    get().sensor_restarts.add(1, &[]);
}

/// A sensor finished `setup()` (true) or, having done so, ended (false).
pub fn sensor_running(up: bool) {
    if up {
        SENSORS_RUNNING_N.fetch_add(1, Ordering::Relaxed);
    } else {
        SENSORS_RUNNING_N.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `n` spans were put on the export queue.
pub fn spans_queued(n: u64) {
    SPANS_N[0].fetch_add(n, Ordering::Relaxed);
}

/// `n` spans were dropped.
pub fn spans_dropped(why: SpanDrop, n: u64) {
    let i = match why {
        SpanDrop::QueueFull => 1,
        SpanDrop::ExportFailed => 2,
    };
    SPANS_N[i].fetch_add(n, Ordering::Relaxed);
}

/// `n` spans were accepted by the collector.
pub fn spans_exported(n: u64) {
    SPANS_N[3].fetch_add(n, Ordering::Relaxed);
}

/// Refreshes the pending counts of the engine's JetStream consumers
/// (rule partitions, runner pools, workflow partitions) every five seconds
/// until `stop`: the gauge reads the last refresh.
pub async fn watch_jetstream_until(
    bus: crate::bus::Bus,
    stop: tokio_util::sync::CancellationToken,
) {
    use futures::StreamExt;
    let streams = [
        crate::bus::TRIGGERS_STREAM,
        crate::bus::EXECUTIONS_STREAM,
        crate::bus::WORKFLOWS_STREAM,
    ];
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let mut now = Vec::new();
        for name in streams {
            let Ok(stream) = bus.js.get_stream(name).await else {
                continue;
            };
            let mut consumers = stream.consumers();
            while let Some(Ok(info)) = consumers.next().await {
                let pending = info.num_pending + info.num_ack_pending as u64;
                now.push((name.to_string(), info.name, pending));
            }
        }
        *PENDING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = now;
    }
}

/// Every metric in Prometheus' text exposition format.
pub fn render() -> String {
    let families = get().registry.gather();
    let mut out = String::new();
    if let Err(e) = prometheus::TextEncoder::new().encode_utf8(&families, &mut out) {
        tracing::error!(error = %e, "metrics could not be rendered");
    }
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

/// Per destination (a bounded set: the configured exporters).
#[derive(Debug, Default, Clone, Copy)]
struct AuditDestination {
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
    get().audit_published.add(1, &[]);
}

/// An audit event was dropped (publish queue full).
pub fn audit_dropped() {
    get().audit_dropped.add(1, &[]);
}

/// Destination `name`'s exporter started: its series exist from now on.
pub fn audit_destination_started(name: &str) {
    audit_destination(name, |_| {});
    get()
        .audit_dead_lettered
        .add(0, &[KeyValue::new("destination", name.to_string())]);
}

/// Destination `name` refused an event for good.
pub fn audit_dead_lettered(name: &str) {
    get()
        .audit_dead_lettered
        .add(1, &[KeyValue::new("destination", name.to_string())]);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendering_names_every_metric_with_type() {
        execution_requested("local-shell-cmd");
        trigger_published("core.st2.webhook");
        trigger_processed();
        rules_evaluated(Evaluation::Matched, 1);
        enforcement(EnforcementStatus::Succeeded);
        execution_started("local-shell-cmd", Duration::from_millis(3));
        execution_finished("local-shell-cmd", Status::Timeout, Duration::from_millis(5));
        workflow_finished(Status::Succeeded, Duration::from_secs(1));
        workflow_task(Status::Succeeded);
        http_request("GET", "/api/v1/executions", 200, Duration::from_millis(2));
        runner_lost(LostRun::Rerun);
        orphan_requested();
        sensor_dispatch(Dispatch::Rejected);
        sensor_restarted();
        spans_dropped(SpanDrop::QueueFull, 2);
        audit_published();
        audit_destination_started("siem");
        audit_dead_lettered("siem");
        audit_export("siem", 7, Duration::from_millis(1500));
        audit_exporter_stopped("siem", true);
        let text = render();
        for name in [
            TRIGGERS_PUBLISHED,
            TRIGGERS_PROCESSED,
            RULE_EVALUATIONS,
            ENFORCEMENTS,
            EXECUTIONS_REQUESTED,
            EXECUTIONS_FINISHED,
            EXECUTIONS_RUNNING,
            EXECUTION_DURATION,
            QUEUE_TIME,
            WORKFLOW_DURATION,
            WORKFLOW_TASKS,
            HTTP_DURATION,
            STREAM_CLIENTS,
            RUNNER_LOSSES,
            ORPHANS_REQUESTED,
            SENSOR_DISPATCHES,
            SENSOR_RESTARTS,
            SENSORS_RUNNING,
            SPANS_QUEUED,
            SPANS_DROPPED,
            SPANS_EXPORTED,
            AUDIT_PUBLISHED,
            AUDIT_DROPPED,
            AUDIT_DEAD_LETTERED,
            AUDIT_EXPORT_LAG,
            AUDIT_EXPORT_OLDEST_AGE,
            AUDIT_EXPORTER_STOPPED,
            "squall_retention_passes_total",
            "squall_retention_removed_total",
            "squall_retention_last_pass_seconds",
        ] {
            let family = name.strip_suffix("_total").unwrap_or(name);
            assert!(
                text.contains(&format!("# TYPE {family} "))
                    || text.contains(&format!("# TYPE {name} ")),
                "{name} missing from:\n{text}"
            );
        }
        assert!(
            text.contains(
                "squall_executions_finished_total{runner=\"local-shell-cmd\",status=\"timeout\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("squall_runner_losses_total{outcome=\"rerun\"} 1"));
        assert!(text.contains("squall_telemetry_spans_dropped_total{reason=\"queue_full\"} 2"));
        for line in [
            "squall_audit_dead_lettered_total{destination=\"siem\"} 1",
            "squall_audit_export_lag{destination=\"siem\"} 7",
            "squall_audit_export_oldest_age_seconds{destination=\"siem\"} 1.5",
            "squall_audit_exporter_stopped{destination=\"siem\"} 1",
            "squall_retention_removed_total{kind=\"executions\"} 0",
            "squall_retention_passes_total 0",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        assert!(text.contains("squall_execution_queue_time_seconds_bucket{runner=\"local-shell-cmd\",le=\"0.005\"} 1"), "{text}");
    }
}

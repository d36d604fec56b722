//! The node's logs, traces and metrics export: the `log` and `telemetry`
//! sections of node.yaml, and [`init`], which installs the `tracing`
//! subscriber (text or JSON lines; JSON lines carry the trace and span ids
//! of the span they were logged in), the OpenTelemetry layer, and the OTLP
//! gRPC exporters for spans and metrics.
//!
//! Spans go through [`QueueProcessor`]: a bounded queue the hot path only
//! ever `try_send`s to, drained by one task that exports batches. A full
//! queue (the collector is slow or down) drops the span and counts it
//! (`squall_telemetry_spans_dropped_total{reason="queue_full"}`), as does a
//! batch the collector did not accept (`reason="export_failed"`). While the
//! queue is full, new spans are not sampled at all ([`Saturable`]), so a
//! collector that is down costs the hot path less than one that is up.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::{Link, SpanId, SpanKind, TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    IdGenerator, RandomIdGenerator, Sampler, SamplingDecision, SamplingResult, SdkTracerProvider,
    ShouldSample, SpanData, SpanExporter, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use serde::Deserialize;
use serde_json::{Map, Value};
use squall_actors::metrics::{self, SpanDrop};
use tokio::sync::{mpsc, Notify};
use tracing::Subscriber;
use tracing_subscriber::fmt::{
    format::Writer, FmtContext, FormatEvent, FormatFields, FormattedFields,
};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// How the node writes its log (`log:` in node.yaml).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (default) or `json`: one JSON object per line, with
    /// `trace_id` and `span_id` when logged within a span.
    pub format: LogFormat,
}

/// A log line's shape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// OpenTelemetry export (`telemetry:` in node.yaml). Without an
/// `endpoint` nothing is exported (the default).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// The OTLP/gRPC collector, `http://host:4317` (or `https://`).
    pub endpoint: Option<String>,
    /// gRPC metadata sent with every export (an `authorization` token,
    /// a tenant); never logged.
    pub headers: BTreeMap<String, String>,
    /// Share of new traces recorded, 0.0 to 1.0 (default 1.0); a trace
    /// begun elsewhere follows its parent's decision.
    pub sampling_ratio: f64,
    /// Spans waiting for export at most; more are dropped and counted
    /// (default 2048).
    pub queue_size: usize,
    /// Spans sent per export at most (default 512).
    pub batch_size: usize,
    /// How long one export may take before it counts as failed
    /// (default 5000).
    pub export_timeout_ms: u64,
    /// Metrics are pushed this often (default 10000); 0 exports spans only.
    pub metrics_interval_ms: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            endpoint: None,
            headers: BTreeMap::new(),
            sampling_ratio: 1.0,
            queue_size: 2048,
            batch_size: 512,
            export_timeout_ms: 5000,
            metrics_interval_ms: 10_000,
        }
    }
}

impl TelemetryConfig {
    /// What is wrong with the section, naming the field.
    pub fn check(&self) -> Result<(), String> {
        if let Some(endpoint) = &self.endpoint {
            let rest = endpoint
                .strip_prefix("http://")
                .or_else(|| endpoint.strip_prefix("https://"));
            if rest.is_none_or(|r| r.is_empty() || r.starts_with('/')) {
                return Err(format!(
                    "telemetry.endpoint: {endpoint:?} is not an OTLP/gRPC URL; write http://host:4317"
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.sampling_ratio) {
            return Err(format!(
                "telemetry.sampling_ratio: {} is not between 0.0 and 1.0",
                self.sampling_ratio
            ));
        }
        if self.queue_size == 0 || self.batch_size == 0 {
            return Err("telemetry.queue_size and telemetry.batch_size must be at least 1".into());
        }
        if self.export_timeout_ms == 0 {
            return Err("telemetry.export_timeout_ms must be at least 1".into());
        }
        for (name, value) in &self.headers {
            let name_ok = !name.is_empty()
                && !name.ends_with("-bin")
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
            if !name_ok {
                return Err(format!(
                    "telemetry.headers: {name:?} is not a valid gRPC header name (lowercase letters, digits, - _ .)"
                ));
            }
            if !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                return Err(format!(
                    "telemetry.headers.{name}: the value is not printable ASCII"
                ));
            }
        }
        Ok(())
    }

    fn metadata(&self) -> tonic::metadata::MetadataMap {
        let mut map = tonic::metadata::MetadataMap::new();
        for (name, value) in &self.headers {
            if let (Ok(k), Ok(v)) = (
                tonic::metadata::MetadataKey::from_bytes(name.as_bytes()),
                tonic::metadata::MetadataValue::try_from(value.as_str()),
            ) {
                map.insert(k, v);
            }
        }
        map
    }
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("the OTLP exporter for {signal} cannot be built for {endpoint}: {message}")]
    Exporter {
        signal: &'static str,
        endpoint: String,
        message: String,
    },
    #[error("logging is already set up in this process")]
    AlreadySet,
}

/// What [`init`] started; [`Telemetry::shutdown`] exports what is queued.
#[derive(Debug)]
pub struct Telemetry {
    spans: Option<(SdkTracerProvider, Arc<Notify>, tokio::task::JoinHandle<()>)>,
}

impl Telemetry {
    /// Sends the spans and metrics still queued, waiting up to the export
    /// timeout for the collector.
    pub async fn shutdown(self) {
        metrics::flush();
        if let Some((provider, closing, task)) = self.spans {
            closing.notify_one();
            if tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .is_err()
            {
                tracing::warn!("spans still queued at shutdown were not exported");
            }
            drop(provider);
        }
    }
}

/// Installs the log subscriber and, when configured (or for JSON logs,
/// which carry trace ids), the OpenTelemetry layer and exporters. `node`
/// names this node in the exported resource. Must run on the runtime.
pub fn init(
    node: &str,
    log: &LogConfig,
    telemetry: &TelemetryConfig,
) -> Result<Telemetry, TelemetryError> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SQUALL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,async_nats=warn"));
    let fmt = match log.format {
        LogFormat::Text => tracing_subscriber::fmt::layer().boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(JsonLines)
            .boxed(),
    };
    let fmt = fmt.with_filter(filter).boxed();
    let traced = telemetry.endpoint.is_some() || log.format == LogFormat::Json;
    if !traced {
        tracing_subscriber::registry()
            .with(fmt)
            .try_init()
            .map_err(|_| TelemetryError::AlreadySet)?;
        return Ok(Telemetry { spans: None });
    }
    let resource = Resource::builder()
        .with_service_name("squall")
        .with_attribute(KeyValue::new("service.instance.id", node.to_string()))
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let mut builder = SdkTracerProvider::builder()
        .with_resource(resource.clone())
        .with_id_generator(KnownIds::default());
    let ratio = if telemetry.endpoint.is_some() {
        Sampler::TraceIdRatioBased(telemetry.sampling_ratio)
    } else {
        // JSON logs without export: ids, nothing recorded.
        Sampler::AlwaysOff
    };
    let mut export = None;
    let mut queue = None;
    if let Some(endpoint) = &telemetry.endpoint {
        let timeout = Duration::from_millis(telemetry.export_timeout_ms);
        let exporter_err = |signal, e: &dyn fmt::Display| TelemetryError::Exporter {
            signal,
            endpoint: endpoint.clone(),
            message: e.to_string(),
        };
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .with_timeout(timeout)
            .with_metadata(telemetry.metadata())
            .build()
            .map_err(|e| exporter_err("spans", &e))?;
        exporter.set_resource(&resource);
        let (tx, rx) = mpsc::channel(telemetry.queue_size);
        queue = Some(tx.clone());
        let closing = Arc::new(Notify::new());
        let task = tokio::spawn(export_spans(
            exporter,
            rx,
            closing.clone(),
            telemetry.batch_size,
            timeout,
        ));
        builder = builder.with_span_processor(QueueProcessor { tx });
        export = Some((closing, task));
        if telemetry.metrics_interval_ms > 0 {
            let exporter = opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .with_timeout(timeout)
                .with_metadata(telemetry.metadata())
                .build()
                .map_err(|e| exporter_err("metrics", &e))?;
            let reader = opentelemetry_sdk::metrics::PeriodicReader::builder(exporter)
                .with_interval(Duration::from_millis(telemetry.metrics_interval_ms))
                .build();
            if !metrics::install(Some(reader)) {
                tracing::warn!(
                    "metrics were set up before telemetry; they are not exported over OTLP"
                );
            }
        }
    }
    let provider = builder
        .with_sampler(Saturable {
            inner: Sampler::ParentBased(Box::new(ratio)),
            queue,
        })
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    // Only Squall's own spans: never the exporter's HTTP/2 and gRPC ones
    // (they would feed back into the queue), nor the actor framework's
    // long-lived actor spans.
    let otel_filter = tracing_subscriber::filter::Targets::new()
        .with_target("squall", tracing::Level::INFO)
        .with_target("squall_actors", tracing::Level::INFO)
        .with_target("squall_runners", tracing::Level::INFO);
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("squall"))
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_location(false)
        .with_filter(otel_filter)
        .boxed();
    tracing_subscriber::registry()
        .with(vec![otel, fmt])
        .try_init()
        .map_err(|_| TelemetryError::AlreadySet)?;
    squall_actors::telemetry::enable();
    if let Some(endpoint) = &telemetry.endpoint {
        tracing::info!(endpoint = %endpoint, sampling_ratio = telemetry.sampling_ratio,
            "exporting spans and metrics over OTLP/gRPC");
    }
    Ok(Telemetry {
        spans: export.map(|(closing, task)| (provider, closing, task)),
    })
}

/// The route template a request matched (`/api/v1/executions/{id}`), or
/// `unmatched`: a bounded label.
fn route_of<B>(req: &axum::http::Request<B>) -> &str {
    req.extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", axum::extract::MatchedPath::as_str)
}

/// Middleware: the request continues the caller's trace (a `traceparent`
/// header), and its duration is recorded as `http.server.request.duration`.
pub async fn http_metrics(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let route = route_of(&req).to_string();
    let parent = req
        .headers()
        .get(squall_actors::bus::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .filter(|_| squall_actors::telemetry::on())
        .and_then(squall_actors::telemetry::remote);
    let response = match parent {
        Some(cx) => {
            use opentelemetry::context::FutureExt;
            next.run(req).with_context(cx).await
        }
        None => next.run(req).await,
    };
    metrics::http_request(
        method.as_str(),
        &route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// `router` observed: [`http_metrics`], and tower-http's trace layer
/// inside it: a span per request (method, route, path; an OpenTelemetry
/// server span when tracing is on) and in it one access log line
/// (`squall::access`, INFO) per response, with status and duration.
pub fn observe<S: Clone + Send + Sync + 'static>(router: axum::Router<S>) -> axum::Router<S> {
    let access = tower_http::trace::TraceLayer::new_for_http()
        .make_span_with(|req: &axum::http::Request<axum::body::Body>| {
            let route = route_of(req);
            if squall_actors::telemetry::on() {
                tracing::info_span!("http", otel.name = %format_args!("{} {route}", req.method()),
                    otel.kind = "server", http.request.method = %req.method(),
                    http.route = %route, url.path = %req.uri().path(),
                    http.response.status_code = tracing::field::Empty)
            } else {
                tracing::info_span!("http", method = %req.method(), route = %route,
                    path = %req.uri().path())
            }
        })
        .on_request(())
        .on_response(
            |res: &axum::http::Response<axum::body::Body>,
             latency: Duration,
             span: &tracing::Span| {
                let status = res.status().as_u16();
                span.record("http.response.status_code", status);
                tracing::info!(target: "squall::access", status,
                    duration_ms = latency.as_secs_f64() * 1000.0, "request served");
            },
        )
        .on_body_chunk(())
        .on_eos(())
        .on_failure(());
    router
        .layer(access)
        .layer(axum::middleware::from_fn(http_metrics))
}

/// Ids for spans: random, except for a span recorded at its end whose id
/// was known before ([`squall_actors::telemetry::record`]).
#[derive(Debug, Default)]
struct KnownIds(RandomIdGenerator);

impl IdGenerator for KnownIds {
    fn new_trace_id(&self) -> TraceId {
        self.0.new_trace_id()
    }

    fn new_span_id(&self) -> SpanId {
        squall_actors::telemetry::take_span_id().unwrap_or_else(|| self.0.new_span_id())
    }
}

/// The configured sampler, except while the export queue is full (the
/// collector is down or slow): then a new span is not sampled at all, so
/// the hot path builds no span data only to drop it at its end; each such
/// span counts as dropped (`queue_full`). Its context says "not sampled",
/// so the nodes downstream do not record its children either. Once the
/// export task has taken spans from the queue, sampling resumes.
#[derive(Debug, Clone)]
struct Saturable {
    inner: Sampler,
    queue: Option<mpsc::Sender<SpanData>>,
}

impl ShouldSample for Saturable {
    fn should_sample(
        &self,
        parent_context: Option<&opentelemetry::Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        if self.queue.as_ref().is_some_and(|q| q.capacity() == 0) {
            metrics::spans_dropped(SpanDrop::QueueFull, 1);
            return SamplingResult {
                decision: SamplingDecision::Drop,
                attributes: Vec::new(),
                trace_state: Default::default(),
            };
        }
        self.inner
            .should_sample(parent_context, trace_id, name, span_kind, attributes, links)
    }
}

/// Hands ended, sampled spans to the export task without ever waiting.
#[derive(Debug)]
struct QueueProcessor {
    tx: mpsc::Sender<SpanData>,
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        match self.tx.try_send(span) {
            Ok(()) => metrics::spans_queued(1),
            Err(_) => metrics::spans_dropped(SpanDrop::QueueFull, 1),
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// Exports queued spans in batches of up to `batch` until `closing`, then
/// exports what is left. A batch the collector does not take within
/// `timeout` is dropped and counted, and the next export waits (250 ms,
/// doubling to 5 s) so a collector that is down costs no busy loop; the
/// queue meanwhile fills and drops.
async fn export_spans(
    exporter: opentelemetry_otlp::SpanExporter,
    mut rx: mpsc::Receiver<SpanData>,
    closing: Arc<Notify>,
    batch: usize,
    timeout: Duration,
) {
    let mut closed = false;
    let mut backoff = Duration::ZERO;
    loop {
        if !backoff.is_zero() && !closed {
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = closing.notified() => closed = true,
            }
        }
        let mut spans = Vec::with_capacity(batch);
        if !closed {
            tokio::select! {
                n = rx.recv_many(&mut spans, batch) => {
                    if n == 0 {
                        return;
                    }
                }
                () = closing.notified() => closed = true,
            }
        }
        if closed {
            while spans.len() < batch {
                match rx.try_recv() {
                    Ok(s) => spans.push(s),
                    Err(_) => break,
                }
            }
            if spans.is_empty() {
                return;
            }
        } else if spans.len() < batch {
            // A moment for the rest of a burst, so batches are not single spans.
            tokio::time::sleep(Duration::from_millis(100)).await;
            while spans.len() < batch {
                match rx.try_recv() {
                    Ok(s) => spans.push(s),
                    Err(_) => break,
                }
            }
        }
        let n = spans.len() as u64;
        let exported = tokio::time::timeout(timeout, exporter.export(spans)).await;
        backoff = match &exported {
            Ok(Ok(())) => Duration::ZERO,
            _ => (backoff * 2).clamp(Duration::from_millis(250), Duration::from_secs(5)),
        };
        match exported {
            Ok(Ok(())) => metrics::spans_exported(n),
            Ok(Err(e)) => {
                metrics::spans_dropped(SpanDrop::ExportFailed, n);
                tracing::debug!(error = %e, spans = n, "spans not exported");
            }
            Err(_) => {
                metrics::spans_dropped(SpanDrop::ExportFailed, n);
                tracing::debug!(spans = n, "span export timed out");
            }
        }
    }
}

/// JSON lines: `timestamp`, `level`, `target`, the event's fields, the
/// fields of the spans it was logged in (`spans`, outermost first), and the
/// `trace_id` and `span_id` of the current OpenTelemetry span.
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            Value::String(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        );
        line.insert("level".into(), Value::String(meta.level().to_string()));
        line.insert("target".into(), Value::String(meta.target().to_string()));
        let mut fields = FieldsVisitor(Map::new());
        event.record(&mut fields);
        line.extend(fields.0);
        if let Some(scope) = ctx.event_scope() {
            let spans: Vec<Value> = scope
                .from_root()
                .map(|span| {
                    let mut m = Map::new();
                    m.insert("name".into(), Value::String(span.name().to_string()));
                    if let Some(f) = span.extensions().get::<FormattedFields<N>>() {
                        if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(f) {
                            m.extend(fields);
                        }
                    }
                    Value::Object(m)
                })
                .collect();
            line.insert("spans".into(), Value::Array(spans));
        }
        let cx = opentelemetry::Context::current();
        let sc = cx.span().span_context().clone();
        if sc.is_valid() {
            line.insert("trace_id".into(), Value::String(sc.trace_id().to_string()));
            line.insert("span_id".into(), Value::String(sc.span_id().to_string()));
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// An event's fields as JSON values.
struct FieldsVisitor(Map<String, Value>);

impl tracing::field::Visit for FieldsVisitor {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        self.0.insert(
            field.name().to_string(),
            Value::String(format!("{value:?}")),
        );
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0
            .insert(field.name().to_string(), Value::String(value.to_string()));
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }

    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_sections_are_named() {
        let ok = TelemetryConfig {
            endpoint: Some("http://127.0.0.1:4317".into()),
            ..TelemetryConfig::default()
        };
        assert_eq!(ok.check(), Ok(()));
        let bad = |f: fn(&mut TelemetryConfig)| {
            let mut c = ok.clone();
            f(&mut c);
            c.check().expect_err("rejected")
        };
        assert!(
            bad(|c| c.endpoint = Some("127.0.0.1:4317".into())).starts_with("telemetry.endpoint")
        );
        assert!(bad(|c| c.sampling_ratio = 1.5).starts_with("telemetry.sampling_ratio"));
        assert!(bad(|c| {
            c.headers.insert("Bad Name".into(), "x".into());
        })
        .starts_with("telemetry.headers"));
        assert!(bad(|c| {
            c.headers.insert("x-token".into(), "caf\u{e9}".into());
        })
        .starts_with("telemetry.headers.x-token"));
    }
}

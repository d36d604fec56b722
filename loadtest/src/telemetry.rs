//! What observability costs: a run with the node's OpenTelemetry export
//! off (the default), on to a live OTLP/gRPC receiver this tool runs
//! (every span sampled), or on to a receiver that is down (a closed port).
//! The report then carries the spans the receiver got and those the node
//! dropped, beside the usual CPU per completion, so the three runs compare
//! directly.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use serde::{Deserialize, Serialize};

use crate::target::Target;
use crate::LoadError;

/// Where the node under test sends its telemetry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// No OpenTelemetry export (the node's default).
    #[default]
    Off,
    /// Every span, to a receiver that accepts everything.
    Live,
    /// Every span, to an endpoint nobody listens on.
    Down,
}

impl Mode {
    /// The name in reports (`off`, `live`, `down`).
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Live => "live",
            Mode::Down => "down",
        }
    }
}

/// The receiver: counts the spans it gets, and accepts metrics (the node
/// pushes them too) without keeping them.
#[derive(Debug, Clone, Default)]
struct Sink(Arc<AtomicU64>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum();
        self.0.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Sink {
    async fn export(
        &self,
        _request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// The telemetry side of a run: the mode, and for `live` the receiver.
#[derive(Debug, Clone)]
pub struct Telemetry {
    pub mode: Mode,
    /// The endpoint the node is configured with (none when off).
    pub endpoint: Option<String>,
    sink: Sink,
}

impl Telemetry {
    /// Prepares `mode`: for `live` a receiver on 127.0.0.1 (it serves
    /// until the process ends), for `down` a loopback port nothing
    /// listens on.
    pub async fn start(mode: Mode) -> Result<Telemetry, LoadError> {
        let sink = Sink::default();
        let endpoint = match mode {
            Mode::Off => None,
            Mode::Down => Some(format!("http://127.0.0.1:{}", crate::target::free_port()?)),
            Mode::Live => {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .map_err(|e| LoadError::io("binding the OTLP receiver", e))?;
                let addr = listener
                    .local_addr()
                    .map_err(|e| LoadError::io("the OTLP receiver's address", e))?;
                tokio::spawn(
                    tonic::transport::Server::builder()
                        .add_service(TraceServiceServer::new(sink.clone()))
                        .add_service(MetricsServiceServer::new(sink.clone()))
                        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
                );
                Some(format!("http://{addr}"))
            }
        };
        Ok(Telemetry {
            mode,
            endpoint,
            sink,
        })
    }

    /// The node.yaml section that sends every span to the endpoint (none
    /// when off).
    pub fn node_config(&self) -> Option<String> {
        self.endpoint
            .as_ref()
            .map(|e| format!("telemetry:\n  endpoint: {e}\n  sampling_ratio: 1.0\n"))
    }

    /// Spans the receiver has got so far.
    pub fn spans_received(&self) -> u64 {
        self.sink.0.load(Ordering::Relaxed)
    }

    /// The run's figures: once the node has settled what it queued during
    /// the load (its exported and dropped counters unchanged for
    /// [`SETTLED`], at most [`SETTLE_LIMIT`]), what grew since
    /// `metrics_before` and `spans_before`.
    pub async fn figures(
        &self,
        target: &Target,
        metrics_before: &str,
        spans_before: u64,
        completions: usize,
    ) -> Result<Figures, LoadError> {
        let started = Instant::now();
        let mut last = None;
        let text = loop {
            let text = target.metrics().await?;
            let settled =
                parse_spans_exported(&text) + parse_spans_dropped(&text).values().sum::<u64>();
            if last == Some(settled) || started.elapsed() > SETTLE_LIMIT {
                break text;
            }
            last = Some(settled);
            tokio::time::sleep(SETTLED).await;
        };
        let grown = |after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>| {
            after
                .iter()
                .map(|(k, n)| {
                    (
                        k.clone(),
                        n.saturating_sub(before.get(k).copied().unwrap_or(0)),
                    )
                })
                .collect::<BTreeMap<_, _>>()
        };
        let received = self.spans_received().saturating_sub(spans_before);
        Ok(Figures {
            mode: self.mode,
            spans_received: received,
            spans_exported: parse_spans_exported(&text)
                .saturating_sub(parse_spans_exported(metrics_before)),
            spans_per_completion: received as f64 / completions.max(1) as f64,
            spans_dropped: grown(
                &parse_spans_dropped(&text),
                &parse_spans_dropped(metrics_before),
            ),
        })
    }
}

/// How long the node's span counters stay unchanged before a run's
/// telemetry counts as settled (its exporter sends within 100 ms of a
/// span's end).
const SETTLED: Duration = Duration::from_millis(500);
/// The longest wait for that.
const SETTLE_LIMIT: Duration = Duration::from_secs(10);

/// What a run's telemetry came to, in its report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    pub mode: Mode,
    /// Spans the tool's receiver got during the load (0 unless `live`).
    pub spans_received: u64,
    /// Spans the node says it exported meanwhile
    /// (`squall_telemetry_spans_exported_total`).
    pub spans_exported: u64,
    /// The same over the run's completions.
    pub spans_per_completion: f64,
    /// Spans the node dropped during the load, by reason
    /// (`squall_telemetry_spans_dropped_total`).
    pub spans_dropped: BTreeMap<String, u64>,
}

/// `squall_telemetry_spans_exported_total`, from `/metrics` text (0 when
/// absent).
pub fn parse_spans_exported(text: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix("squall_telemetry_spans_exported_total ")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// `squall_telemetry_spans_dropped_total` by reason, from `/metrics` text.
pub fn parse_spans_dropped(text: &str) -> BTreeMap<String, u64> {
    crate::target::parse_counter(text, "squall_telemetry_spans_dropped_total", "reason")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exported_and_dropped_spans_are_read() {
        let text = "# TYPE squall_telemetry_spans_dropped_total counter\n\
                    squall_telemetry_spans_dropped_total{reason=\"queue_full\"} 12\n\
                    squall_telemetry_spans_dropped_total{reason=\"export_failed\"} 3\n\
                    squall_telemetry_spans_exported_total 40\n\
                    squall_bus_operations_total{op=\"get\"} 9\n";
        assert_eq!(parse_spans_exported(text), 40);
        assert_eq!(parse_spans_exported(""), 0);
        let got = parse_spans_dropped(text);
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            [
                ("export_failed".to_string(), 3),
                ("queue_full".to_string(), 12)
            ]
        );
    }

    #[test]
    fn off_configures_nothing_and_down_an_unused_port() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let off = rt.block_on(Telemetry::start(Mode::Off)).expect("off");
        assert_eq!(off.node_config(), None);
        let down = rt.block_on(Telemetry::start(Mode::Down)).expect("down");
        let cfg = down.node_config().expect("a config");
        assert!(cfg.contains("endpoint: http://127.0.0.1:"), "{cfg}");
        assert!(cfg.contains("sampling_ratio: 1.0"), "{cfg}");
    }
}

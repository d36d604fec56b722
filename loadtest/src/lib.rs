//! `squall-loadtest`: drives a Squall node through declarative scenarios
//! (`loadtest/scenarios/*.yaml`) and reports throughput and latency from
//! what Squall itself recorded (execution records, not requests sent),
//! beside the node's CPU and memory, the JetStream stream sizes, and the
//! same loop against bare JetStream (the ceiling) on the same machine.
//!
//! - [`scenario`]: the scenario files.
//! - [`target`]: the node under test, started by the tool or given by URL.
//! - [`webhook`], [`api_list`], [`workflow`]: the kinds of load.
//! - [`ceiling`]: publish + consume + KV put with no Squall logic.
//! - [`history`]: the history benchmark (seeded history; memory, lists,
//!   restart).
//! - [`resources`]: CPU, RSS and stream sizes over a run.
//! - [`telemetry`]: runs with OpenTelemetry export off, live or down.
//! - [`audit_export`]: the audit trail's export rate, to a syslog
//!   receiver the tool runs.
//! - [`report`]: statistics, the JSON result, the HTML report, comparison.

pub mod api_list;
pub mod audit_export;
pub mod ceiling;
pub mod history;
pub mod report;
pub mod resources;
pub mod scenario;
pub mod target;
pub mod telemetry;
pub mod webhook;
pub mod workflow;

/// A timestamp as Squall's records write it (RFC 3339).
pub(crate) fn timestamp(v: &serde_json::Value) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(v.as_str()?)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// Everything that can stop a run.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("scenario {file}: {message}")]
    Scenario { file: String, message: String },
    #[error("{0}")]
    Setup(String),
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    #[error("NATS: {0}")]
    Nats(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("timed out: {0}")]
    Timeout(String),
}

impl LoadError {
    /// A NATS failure while doing `what`.
    pub fn nats(what: &str, e: impl std::fmt::Display) -> LoadError {
        LoadError::Nats(format!("{what}: {e}"))
    }

    /// An I/O failure while doing `what`.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> LoadError {
        LoadError::Io {
            what: what.into(),
            source,
        }
    }
}

use std::time::Duration;

use report::{Ceiling, Outcome, Report};
use scenario::{Load, Scenario};
use target::Target;

/// How a run is done beyond its scenario.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Messages for the ceiling run (none when 0 or without a NATS URL).
    pub ceiling_messages: usize,
    /// The telemetry the node was started with, to report on (none: not
    /// reported).
    pub telemetry: Option<telemetry::Telemetry>,
    /// The syslog receiver the node exports its audit trail to, to report
    /// on (none: not reported).
    pub audit_export: Option<audit_export::AuditExport>,
}

/// Runs `scenario` against `target`: the load, resources sampled while it
/// runs, stream sizes after, then the ceiling on the same NATS server.
pub async fn run(
    target: &Target,
    scenario: &Scenario,
    opts: &RunOptions,
) -> Result<Report, LoadError> {
    let date = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let timeout = Duration::from_secs(scenario.timeout_s);
    let metrics_before = target.metrics().await?;
    let spans_before = opts.telemetry.as_ref().map(|t| t.spans_received());
    let sampler = target.pid.map(resources::Sampler::start);
    let outcome = match &scenario.load {
        Load::Webhook(w) => {
            Outcome::of_webhooks(&webhook::run(target, w, timeout).await?, w.rate.is_some())
        }
        Load::ApiList(a) => Outcome::of_api_list(&api_list::run(target, a, timeout).await?),
        Load::Workflow(w) => Outcome::of_workflows(&workflow::run(target, w, timeout).await?),
    };
    let load_end = std::time::Instant::now();
    let resources = match sampler {
        Some(s) => s.finish().await,
        None => Vec::new(),
    };
    let metrics_after = target.metrics().await?;
    let bus_ops = report::BusOpsPerCompletion::of(
        &target::parse_bus_ops(&metrics_before),
        &target::parse_bus_ops(&metrics_after),
        outcome.completions,
    );
    // Before the ceiling run, which would compete with the export.
    let audit_export = match &opts.audit_export {
        Some(a) => Some(a.figures(load_end, target.nats_url.as_deref()).await?),
        None => None,
    };
    let (streams, ceiling) = match &target.nats_url {
        Some(url) => {
            let streams = resources::stream_sizes(url).await?;
            let ceiling = if opts.ceiling_messages > 0 {
                let run = ceiling::run(url, opts.ceiling_messages, 64).await?;
                Some(Ceiling::of(&run, outcome.per_s))
            } else {
                None
            };
            (streams, ceiling)
        }
        None => (Vec::new(), None),
    };
    let telemetry = match &opts.telemetry {
        Some(t) => Some(
            t.figures(
                target,
                &metrics_before,
                spans_before.unwrap_or(0),
                outcome.completions,
            )
            .await?,
        ),
        None => None,
    };
    Ok(Report {
        scenario: scenario.name.clone(),
        goal: scenario.goal.clone(),
        date,
        load: serde_json::to_value(&scenario.load).unwrap_or_default(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        outcome,
        ceiling,
        resources,
        streams,
        bus_ops,
        telemetry,
        audit_export,
    })
}

//! From measurements to a result: percentiles, a latency histogram and
//! throughput over time; written as JSON (for `compare`), as a
//! self-contained HTML page with SVG charts, and as one summary line.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::api_list::ApiListRun;
use crate::ceiling::CeilingRun;
use crate::resources::{Sample, StreamSize};
use crate::webhook::WebhookRun;
use crate::LoadError;

/// Upper bounds (ms) of the latency histogram's buckets; the last is open.
const BUCKETS_MS: [f64; 16] = [
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
    20.0,
    50.0,
    100.0,
    200.0,
    500.0,
    1e3,
    2e3,
    5e3,
    1e4,
    3e4,
    f64::INFINITY,
];

/// p50, p90, p99 and max of a set of values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// Of `values` (any order).
    pub fn of(values: &[f64]) -> Percentiles {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let at = |p: f64| {
            if v.is_empty() {
                return 0.0;
            }
            let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
            v[i.min(v.len() - 1)]
        };
        Percentiles {
            p50: at(50.0),
            p90: at(90.0),
            p99: at(99.0),
            max: v.last().copied().unwrap_or(0.0),
        }
    }
}

/// One histogram bucket: values at most `le_ms` (and above the previous).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    pub le_ms: f64,
    pub count: usize,
}

fn histogram(values: &[f64]) -> Vec<Bucket> {
    let mut counts = [0usize; BUCKETS_MS.len()];
    for v in values {
        let i = BUCKETS_MS
            .iter()
            .position(|b| v <= b)
            .unwrap_or(BUCKETS_MS.len() - 1);
        counts[i] += 1;
    }
    BUCKETS_MS
        .iter()
        .zip(counts)
        .map(|(le, count)| Bucket {
            le_ms: if le.is_finite() { *le } else { -1.0 },
            count,
        })
        .collect()
}

/// Completions in each second (seconds since the first origin).
fn per_second(finished_at_s: &[f64]) -> Vec<usize> {
    let secs = finished_at_s.iter().fold(0f64, |a, b| a.max(*b)).ceil() as usize;
    let mut out = vec![0; secs.max(1)];
    for t in finished_at_s {
        let i = (*t as usize).min(out.len() - 1);
        out[i] += 1;
    }
    out
}

/// One hop of an execution's path, from the timestamps Squall recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hop {
    pub name: String,
    pub latency_ms: Percentiles,
}

/// What the scenario achieved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// Executions Squall recorded (webhook) or requests answered (api_list).
    pub completions: usize,
    pub expected: usize,
    /// Requests the node refused or that failed.
    pub errors: usize,
    /// Executions recorded with a status other than succeeded.
    pub failed: usize,
    /// Completions per second, from the first origin to the last end.
    pub per_s: f64,
    /// Webhooks accepted per second while sending.
    pub triggers_per_s: f64,
    /// Origin → execution finished (webhook) or request latency.
    pub latency_ms: Percentiles,
    /// Origin → execution running (webhook).
    pub start_latency_ms: Option<Percentiles>,
    pub histogram: Vec<Bucket>,
    /// Where the time went, hop by hop (webhook).
    #[serde(default)]
    pub hops: Vec<Hop>,
    pub throughput_per_s: Vec<usize>,
    /// Latencies count from when each webhook was due (open loop).
    pub open_loop: bool,
    pub timed_out: bool,
    /// History size during an api_list run.
    #[serde(default)]
    pub stored_executions: Option<usize>,
}

impl Outcome {
    /// From a webhook run.
    pub fn of_webhooks(run: &WebhookRun, open_loop: bool) -> Outcome {
        let first = run.records.iter().map(|r| r.origin).min();
        let since = |t: chrono::DateTime<chrono::Utc>| {
            first.map_or(0.0, |f| {
                (t - f).num_microseconds().unwrap_or(0) as f64 / 1e6
            })
        };
        let ms = |a: chrono::DateTime<chrono::Utc>, b: chrono::DateTime<chrono::Utc>| {
            (b - a).num_microseconds().unwrap_or(0) as f64 / 1e3
        };
        let to_end: Vec<f64> = run.records.iter().map(|r| ms(r.origin, r.ended)).collect();
        let to_start: Vec<f64> = run
            .records
            .iter()
            .filter_map(|r| r.running.map(|s| ms(r.origin, s)))
            .collect();
        let ends: Vec<f64> = run.records.iter().map(|r| since(r.ended)).collect();
        let span = ends.iter().fold(0f64, |a, b| a.max(*b));
        type Stamp = fn(&crate::webhook::Recorded) -> Option<chrono::DateTime<chrono::Utc>>;
        let origin = if open_loop { "due" } else { "accepted" };
        let steps: [(String, Stamp, Stamp); 4] = [
            (
                format!("{origin} → requested (ingest, rule match, records written)"),
                |r| Some(r.origin),
                |r| r.requested,
            ),
            (
                "requested → scheduled (work queue, runner claim)".into(),
                |r| r.requested,
                |r| r.scheduled,
            ),
            ("scheduled → running".into(), |r| r.scheduled, |r| r.running),
            (
                "running → finished (action, final record)".into(),
                |r| r.running,
                |r| Some(r.ended),
            ),
        ];
        let hops = steps
            .into_iter()
            .map(|(name, from, to)| {
                let spans: Vec<f64> = run
                    .records
                    .iter()
                    .filter_map(|r| Some(ms(from(r)?, to(r)?)))
                    .collect();
                Hop {
                    name,
                    latency_ms: Percentiles::of(&spans),
                }
            })
            .collect();
        Outcome {
            completions: run.records.len(),
            expected: run.expected,
            errors: run.errors,
            failed: run.records.iter().filter(|r| !r.succeeded).count(),
            per_s: if span > 0.0 {
                run.records.len() as f64 / span
            } else {
                0.0
            },
            triggers_per_s: if run.send_secs > 0.0 {
                (run.sent - run.errors) as f64 / run.send_secs
            } else {
                0.0
            },
            latency_ms: Percentiles::of(&to_end),
            start_latency_ms: Some(Percentiles::of(&to_start)),
            histogram: histogram(&to_end),
            hops,
            throughput_per_s: per_second(&ends),
            open_loop,
            timed_out: run.timed_out,
            stored_executions: None,
        }
    }

    /// From a workflow run: latency is each workflow's requested → finished.
    pub fn of_workflows(run: &crate::workflow::WorkflowRun) -> Outcome {
        let first = run.finished.iter().map(|(_, s, _)| *s).min();
        let secs = |a: chrono::DateTime<chrono::Utc>, b: chrono::DateTime<chrono::Utc>| {
            (b - a).num_microseconds().unwrap_or(0) as f64 / 1e6
        };
        let timed: Vec<(f64, f64)> = run
            .finished
            .iter()
            .map(|(_, s, e)| (first.map_or(0.0, |f| secs(f, *e)), secs(*s, *e) * 1e3))
            .collect();
        let span = timed.iter().fold(0f64, |a, (t, _)| a.max(*t));
        Outcome {
            expected: run.started,
            failed: run.finished.iter().filter(|(ok, _, _)| !ok).count(),
            timed_out: run.timed_out,
            ..Outcome::timed(&timed, run.errors, span)
        }
    }

    /// From an API-list run.
    pub fn of_api_list(run: &ApiListRun) -> Outcome {
        Outcome {
            stored_executions: Some(run.stored),
            ..Outcome::timed(&run.latencies, run.errors, run.secs)
        }
    }

    /// From `(finished at s, latency ms)` pairs over `secs`: completions,
    /// rate, percentiles, histogram and throughput.
    fn timed(timed: &[(f64, f64)], errors: usize, secs: f64) -> Outcome {
        let latencies: Vec<f64> = timed.iter().map(|(_, l)| *l).collect();
        let ends: Vec<f64> = timed.iter().map(|(t, _)| *t).collect();
        Outcome {
            completions: latencies.len(),
            expected: latencies.len() + errors,
            errors,
            failed: 0,
            per_s: if secs > 0.0 {
                latencies.len() as f64 / secs
            } else {
                0.0
            },
            triggers_per_s: 0.0,
            latency_ms: Percentiles::of(&latencies),
            start_latency_ms: None,
            histogram: histogram(&latencies),
            hops: Vec::new(),
            throughput_per_s: per_second(&ends),
            open_loop: false,
            timed_out: false,
            stored_executions: None,
        }
    }
}

/// The bus alone, and Squall as a share of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ceiling {
    pub messages: usize,
    pub per_s: f64,
    pub latency_ms: Percentiles,
    /// Squall's completions/s over the ceiling's messages/s.
    pub squall_fraction: f64,
}

impl Ceiling {
    /// From a ceiling run, beside Squall's `per_s`.
    pub fn of(run: &CeilingRun, squall_per_s: f64) -> Ceiling {
        let per_s = if run.secs > 0.0 {
            run.messages as f64 / run.secs
        } else {
            0.0
        };
        Ceiling {
            messages: run.messages,
            per_s,
            latency_ms: Percentiles::of(&run.latencies),
            squall_fraction: if per_s > 0.0 {
                squall_per_s / per_s
            } else {
                0.0
            },
        }
    }
}

/// One run, as written to `<name>-<time>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub goal: String,
    /// ISO 8601, when the run began.
    pub date: String,
    /// The load as run (scenario values with command-line overrides).
    pub load: serde_json::Value,
    pub cpus: usize,
    pub outcome: Outcome,
    pub ceiling: Option<Ceiling>,
    pub resources: Vec<Sample>,
    pub streams: Vec<StreamSize>,
    /// The node's bus operations during the load, per completion.
    #[serde(default)]
    pub bus_ops: Option<BusOpsPerCompletion>,
    /// Where the node's OpenTelemetry export went, and what came of it
    /// (none: not part of the run).
    #[serde(default)]
    pub telemetry: Option<crate::telemetry::Figures>,
    /// The audit trail's export to the tool's syslog receiver (none: not
    /// part of the run).
    #[serde(default)]
    pub audit_export: Option<crate::audit_export::Figures>,
}

/// What the node's `squall_bus_operations_total` grew by during a run,
/// divided by the run's completions (executions, or workflows).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BusOpsPerCompletion {
    /// Every kind together.
    pub total: f64,
    /// By kind (`publish`, `get`, `create`, `update`, `put`, `delete`).
    pub by_op: std::collections::BTreeMap<String, f64>,
}

impl BusOpsPerCompletion {
    /// The growth from `before` to `after` (counters by kind) over
    /// `completions`; `None` without completions.
    pub fn of(
        before: &std::collections::BTreeMap<String, u64>,
        after: &std::collections::BTreeMap<String, u64>,
        completions: usize,
    ) -> Option<BusOpsPerCompletion> {
        if completions == 0 {
            return None;
        }
        let by_op: std::collections::BTreeMap<String, f64> = after
            .iter()
            .map(|(op, n)| {
                let grown = n.saturating_sub(before.get(op).copied().unwrap_or(0));
                (op.clone(), grown as f64 / completions as f64)
            })
            .collect();
        Some(BusOpsPerCompletion {
            total: by_op.values().sum(),
            by_op,
        })
    }
}

impl Report {
    /// The one-line summary printed at the end of a run.
    pub fn summary(&self) -> String {
        let o = &self.outcome;
        let unit = match self.load.get("kind").and_then(|k| k.as_str()) {
            Some("api_list") => "requests",
            Some("workflow") => "workflows",
            _ => "executions",
        };
        let mut line = format!(
            "scenario={} {unit}={} expected={} errors={} failed={} {unit}_per_s={:.0} p50_ms={:.1} p90_ms={:.1} p99_ms={:.1} max_ms={:.1}",
            self.scenario, o.completions, o.expected, o.errors, o.failed, o.per_s,
            o.latency_ms.p50, o.latency_ms.p90, o.latency_ms.p99, o.latency_ms.max
        );
        if let Some(s) = &o.start_latency_ms {
            let _ = write!(
                line,
                " triggers_per_s={:.0} start_p50_ms={:.1} start_p99_ms={:.1}",
                o.triggers_per_s, s.p50, s.p99
            );
        }
        if let Some(c) = &self.ceiling {
            let _ = write!(
                line,
                " ceiling_per_s={:.0} of_ceiling={:.2}",
                c.per_s, c.squall_fraction
            );
        }
        if let Some(max) = self
            .resources
            .iter()
            .map(|s| s.node_rss_mb)
            .reduce(f64::max)
        {
            let _ = write!(line, " node_rss_max_mb={max:.0}");
        }
        if let Some(ms) = self.cpu_ms_per_completion() {
            let _ = write!(line, " cpu_ms_per_{}={ms:.3}", unit.trim_end_matches('s'));
        }
        if let Some(ops) = &self.bus_ops {
            let _ = write!(
                line,
                " bus_ops_per_{}={:.2}",
                unit.trim_end_matches('s'),
                ops.total
            );
        }
        if let Some(t) = &self.telemetry {
            let _ = write!(
                line,
                " telemetry={} spans_per_{}={:.2} spans_dropped={}",
                t.mode.as_str(),
                unit.trim_end_matches('s'),
                t.spans_per_completion,
                t.spans_dropped.values().sum::<u64>()
            );
        }
        if let Some(a) = &self.audit_export {
            let _ = write!(
                line,
                " audit_exported={} audit_export_per_s={:.0} audit_trailed_s={:.1}",
                a.events_received, a.per_s, a.trailed_load_s
            );
        }
        if o.timed_out {
            line.push_str(" TIMED_OUT");
        }
        line
    }

    /// CPU time of the node and its nats-server together (from the
    /// samples: percent of a core × the sampling interval), in ms per
    /// completion; `None` without samples or completions.
    pub fn cpu_ms_per_completion(&self) -> Option<f64> {
        if self.resources.is_empty() || self.outcome.completions == 0 {
            return None;
        }
        let mut cpu_s = 0.0;
        let mut t = 0.0;
        for s in &self.resources {
            cpu_s += (s.node_cpu_pct + s.nats_cpu_pct) / 100.0 * (s.t - t);
            t = s.t;
        }
        Some(cpu_s * 1000.0 / self.outcome.completions as f64)
    }

    /// Writes `<dir>/<scenario>-<date>.json` and `.html`; returns both paths.
    pub fn write(&self, dir: &Path) -> Result<(PathBuf, PathBuf), LoadError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| LoadError::io(format!("creating {}", dir.display()), e))?;
        let stem = format!("{}-{}", self.scenario, self.date.replace([':', '.'], "-"));
        let json_path = dir.join(format!("{stem}.json"));
        let html_path = dir.join(format!("{stem}.html"));
        let json = serde_json::to_string_pretty(self).unwrap_or_default();
        std::fs::write(&json_path, json)
            .map_err(|e| LoadError::io(format!("writing {}", json_path.display()), e))?;
        std::fs::write(&html_path, self.html())
            .map_err(|e| LoadError::io(format!("writing {}", html_path.display()), e))?;
        Ok((json_path, html_path))
    }

    /// Reads a JSON result.
    pub fn read(path: &Path) -> Result<Report, LoadError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| LoadError::io(format!("reading {}", path.display()), e))?;
        serde_json::from_str(&text).map_err(|e| {
            LoadError::Setup(format!("{}: not a loadtest result: {e}", path.display()))
        })
    }

    /// A self-contained page: summary, latency histogram, throughput over
    /// time, node CPU and memory, streams, ceiling.
    pub fn html(&self) -> String {
        let o = &self.outcome;
        let esc = |s: &str| {
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        };
        let mut h = String::new();
        let _ = write!(
            h,
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{name}</title>\
             <style>body{{font:14px system-ui,sans-serif;margin:2em;max-width:60em}}\
             table{{border-collapse:collapse}}td,th{{padding:2px 10px;border-bottom:1px solid #ddd;text-align:right}}\
             th:first-child,td:first-child{{text-align:left}}svg{{background:#fafafa;border:1px solid #ddd}}</style>\
             </head><body><h1>{name}</h1><p>{goal}</p><p>{date} · {cpus} CPUs · <code>{summary}</code></p>",
            name = esc(&self.scenario),
            goal = esc(&self.goal),
            date = esc(&self.date),
            cpus = self.cpus,
            summary = esc(&self.summary()),
        );
        let lat = |p: &Percentiles| {
            format!(
                "<td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td>",
                p.p50, p.p90, p.p99, p.max
            )
        };
        let _ = write!(h, "<h2>Latency (ms)</h2><table><tr><th></th><th>p50</th><th>p90</th><th>p99</th><th>max</th></tr>");
        let origin = if o.open_loop { "due" } else { "accepted" };
        let _ = write!(
            h,
            "<tr><td>{origin} → finished</td>{}</tr>",
            lat(&o.latency_ms)
        );
        if let Some(s) = &o.start_latency_ms {
            let _ = write!(h, "<tr><td>{origin} → running</td>{}</tr>", lat(s));
        }
        if let Some(c) = &self.ceiling {
            let _ = write!(
                h,
                "<tr><td>bare JetStream, saturated (its latency is queueing)</td>{}</tr>",
                lat(&c.latency_ms)
            );
        }
        h.push_str("</table>");
        if !o.hops.is_empty() {
            h.push_str("<h2>Where the time goes</h2><table><tr><th>hop</th><th>p50</th><th>p90</th><th>p99</th><th>max</th></tr>");
            for hop in &o.hops {
                let _ = write!(
                    h,
                    "<tr><td>{}</td>{}</tr>",
                    esc(&hop.name),
                    lat(&hop.latency_ms)
                );
            }
            h.push_str("</table>");
        }
        h.push_str("<h2>Latency histogram</h2>");
        h.push_str(&bars(&o.histogram));
        h.push_str("<h2>Completions per second</h2>");
        h.push_str(&line_chart(
            &[(
                "completions/s",
                "#2a6",
                o.throughput_per_s.iter().map(|c| *c as f64).collect(),
            )],
            "per s",
        ));
        if !self.resources.is_empty() {
            h.push_str("<h2>Node and nats-server</h2>");
            let series = |f: fn(&Sample) -> f64| self.resources.iter().map(f).collect::<Vec<f64>>();
            h.push_str(&line_chart(
                &[
                    ("squall CPU %", "#c33", series(|s| s.node_cpu_pct)),
                    ("nats-server CPU %", "#36c", series(|s| s.nats_cpu_pct)),
                ],
                "% of a core, every 0.5 s",
            ));
            h.push_str(&line_chart(
                &[
                    ("squall RSS MB", "#c33", series(|s| s.node_rss_mb)),
                    ("nats-server RSS MB", "#36c", series(|s| s.nats_rss_mb)),
                ],
                "MB, every 0.5 s",
            ));
        }
        if let Some(c) = &self.ceiling {
            let _ = write!(
                h,
                "<h2>Ceiling</h2><p>Bare JetStream (publish with Nats-Msg-Id → pull → KV put → ack), same machine, same run: \
                 <b>{:.0}/s</b> over {} messages. Squall achieved <b>{:.0}%</b> of it.</p>",
                c.per_s, c.messages, c.squall_fraction * 100.0
            );
        }
        if let Some(ops) = &self.bus_ops {
            let _ = write!(
                h,
                "<h2>Bus operations</h2><p>The node's own count (<code>squall_bus_operations_total</code>), \
                 per completion: <b>{:.2}</b></p><table><tr><th>operation</th><th>per completion</th></tr>",
                ops.total
            );
            for (op, n) in &ops.by_op {
                let _ = write!(h, "<tr><td>{}</td><td>{n:.2}</td></tr>", esc(op));
            }
            h.push_str("</table>");
        }
        if let Some(ms) = self.cpu_ms_per_completion() {
            let _ = write!(
                h,
                "<p>CPU of the node and its nats-server together: <b>{ms:.3} ms</b> per completion.</p>"
            );
        }
        if let Some(a) = &self.audit_export {
            let stored = a
                .events_stored
                .map_or(String::new(), |s| format!(" of {s} stored"));
            let _ = write!(
                h,
                "<h2>Audit export</h2><p>To the tool's {} receiver: <b>{}</b> events{stored}, \
                 <b>{:.0}/s</b> from the first arrival to the last, the last {:.1} s after the load ended.</p>",
                match a.receiver {
                    crate::audit_export::Receiver::Syslog => "syslog (TCP)",
                    crate::audit_export::Receiver::Hec => "Splunk HEC",
                },
                a.events_received, a.per_s, a.trailed_load_s
            );
        }
        if let Some(t) = &self.telemetry {
            let _ = write!(
                h,
                "<h2>Telemetry</h2><p>OpenTelemetry export <b>{}</b>: {} spans received ({:.2} per completion).</p>",
                t.mode.as_str(),
                t.spans_received,
                t.spans_per_completion
            );
            if !t.spans_dropped.is_empty() {
                h.push_str("<table><tr><th>spans dropped by the node</th><th>count</th></tr>");
                for (reason, n) in &t.spans_dropped {
                    let _ = write!(h, "<tr><td>{}</td><td>{n}</td></tr>", esc(reason));
                }
                h.push_str("</table>");
            }
        }
        if !self.streams.is_empty() {
            h.push_str("<h2>Streams after the run</h2><table><tr><th>stream</th><th>messages</th><th>bytes</th></tr>");
            for s in &self.streams {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&s.name),
                    s.messages,
                    s.bytes
                );
            }
            h.push_str("</table>");
        }
        let _ = write!(
            h,
            "<h2>Load</h2><pre>{}</pre></body></html>",
            esc(&serde_json::to_string_pretty(&self.load).unwrap_or_default())
        );
        h
    }
}

const W: f64 = 720.0;
const H: f64 = 220.0;

fn bars(buckets: &[Bucket]) -> String {
    let max = buckets.iter().map(|b| b.count).max().unwrap_or(0).max(1) as f64;
    let bw = W / buckets.len() as f64;
    let mut s = format!("<svg width=\"{W}\" height=\"{}\" role=\"img\">", H + 30.0);
    for (i, b) in buckets.iter().enumerate() {
        let h = b.count as f64 / max * (H - 20.0);
        let x = i as f64 * bw;
        let label = if b.le_ms < 0.0 {
            "more".to_string()
        } else {
            format!("≤{}", b.le_ms)
        };
        let _ = write!(
            s,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"#2a6\"><title>{label} ms: {}</title></rect>\
             <text x=\"{:.1}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\">{label}</text>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\">{}</text>",
            x + 2.0, H - h, bw - 4.0, b.count, x + bw / 2.0, H + 14.0, x + bw / 2.0, H - h - 3.0,
            if b.count > 0 { b.count.to_string() } else { String::new() }
        );
    }
    s.push_str("</svg>");
    s
}

fn line_chart(series: &[(&str, &str, Vec<f64>)], unit: &str) -> String {
    let max = series
        .iter()
        .flat_map(|(_, _, v)| v.iter().copied())
        .fold(0f64, f64::max)
        .max(1e-9);
    let len = series
        .iter()
        .map(|(_, _, v)| v.len())
        .max()
        .unwrap_or(0)
        .max(2);
    let mut s = format!("<svg width=\"{W}\" height=\"{}\" role=\"img\">", H + 30.0);
    for (k, (name, colour, values)) in series.iter().enumerate() {
        let points: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                format!(
                    "{:.1},{:.1}",
                    i as f64 / (len - 1) as f64 * (W - 10.0) + 5.0,
                    H - v / max * (H - 20.0)
                )
            })
            .collect();
        let _ = write!(
            s,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>\
             <text x=\"{:.0}\" y=\"{:.0}\" font-size=\"12\" fill=\"{colour}\">{name}</text>",
            points.join(" "),
            10.0 + 200.0 * k as f64,
            H + 16.0,
        );
    }
    let _ = write!(s, "<text x=\"{}\" y=\"14\" font-size=\"11\" text-anchor=\"end\">max {max:.1} {unit}</text></svg>", W - 8.0);
    s
}

/// `compare A B`: each figure of B over A.
pub fn compare(a: &Report, b: &Report) -> String {
    let mut out = format!("{:<22} {:>12} {:>12} {:>8}\n", "", "A", "B", "B/A");
    let mut row = |name: &str, x: f64, y: f64| {
        let ratio = if x != 0.0 {
            format!("{:.2}", y / x)
        } else {
            "-".into()
        };
        let _ = writeln!(out, "{name:<22} {x:>12.1} {y:>12.1} {ratio:>8}");
    };
    let (oa, ob) = (&a.outcome, &b.outcome);
    row("completions_per_s", oa.per_s, ob.per_s);
    row("p50_ms", oa.latency_ms.p50, ob.latency_ms.p50);
    row("p90_ms", oa.latency_ms.p90, ob.latency_ms.p90);
    row("p99_ms", oa.latency_ms.p99, ob.latency_ms.p99);
    row("max_ms", oa.latency_ms.max, ob.latency_ms.max);
    if let (Some(sa), Some(sb)) = (&oa.start_latency_ms, &ob.start_latency_ms) {
        row("start_p99_ms", sa.p99, sb.p99);
    }
    if let (Some(ca), Some(cb)) = (&a.ceiling, &b.ceiling) {
        row("ceiling_per_s", ca.per_s, cb.per_s);
        row("of_ceiling", ca.squall_fraction, cb.squall_fraction);
    }
    let rss = |r: &Report| {
        r.resources
            .iter()
            .map(|s| s.node_rss_mb)
            .fold(0f64, f64::max)
    };
    row("node_rss_max_mb", rss(a), rss(b));
    if let (Some(ca), Some(cb)) = (a.cpu_ms_per_completion(), b.cpu_ms_per_completion()) {
        row("cpu_ms_per_completion", ca, cb);
    }
    if let (Some(oa), Some(ob)) = (&a.bus_ops, &b.bus_ops) {
        row("bus_ops_per_completion", oa.total, ob.total);
    }
    if let (Some(ta), Some(tb)) = (&a.telemetry, &b.telemetry) {
        row(
            "spans_per_completion",
            ta.spans_per_completion,
            tb.spans_per_completion,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_buckets() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = Percentiles::of(&v);
        assert_eq!((p.p50, p.p90, p.p99, p.max), (51.0, 90.0, 99.0, 100.0));
        let h = histogram(&[0.2, 3.0, 3.0, 50_000.0]);
        assert_eq!(h.iter().map(|b| b.count).sum::<usize>(), 4);
        assert_eq!(h[0].count, 1);
        assert_eq!(h.iter().find(|b| b.le_ms == 5.0).map(|b| b.count), Some(2));
        assert_eq!(h.last().map(|b| (b.le_ms, b.count)), Some((-1.0, 1)));
        assert_eq!(per_second(&[0.1, 0.9, 2.5]), vec![2, 0, 1]);
    }
}

//! Observability end to end: traces exported over OTLP/gRPC to a receiver
//! in this test (opentelemetry-proto's generated server on 127.0.0.1:0),
//! one trace from a webhook through a rule to a three-task workflow across
//! the NATS hops and a node restart; JSON log lines carrying the trace;
//! `/metrics` counters against the executions that ran and every query of
//! the Grafana dashboard against what the node exports; an unreachable
//! collector (spans dropped and counted, executions unaffected) and
//! malformed telemetry sections.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
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
use opentelemetry_proto::tonic::common::v1::any_value;
use serde_json::{json, Value};
use squall_actors::audit::config::{ExporterConfig, Facility, SyslogConfig, SyslogTransport};
use squall_tests::{
    client_with_token, free_port, login, nats_server_binary, poll, repo_root, squall_binary,
    write_pack, NatsServer, TestNode,
};

/// One received span, ids in hex.
#[derive(Debug, Clone)]
struct Got {
    trace: String,
    id: String,
    parent: String,
    name: String,
    attrs: HashMap<String, String>,
}

/// What the receiver has been sent.
#[derive(Debug, Default)]
struct Received {
    spans: Vec<Got>,
    metrics: BTreeSet<String>,
}

#[derive(Debug, Clone, Default)]
struct Sink(Arc<Mutex<Received>>);

impl Sink {
    fn spans(&self) -> Vec<Got> {
        self.0.lock().expect("sink lock").spans.clone()
    }

    fn metrics(&self) -> BTreeSet<String> {
        self.0.lock().expect("sink lock").metrics.clone()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = self.0.lock().expect("sink lock");
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                for s in ss.spans {
                    let attrs = s
                        .attributes
                        .iter()
                        .map(|kv| {
                            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                                Some(any_value::Value::StringValue(s)) => s.clone(),
                                Some(any_value::Value::IntValue(i)) => i.to_string(),
                                Some(any_value::Value::BoolValue(b)) => b.to_string(),
                                Some(other) => format!("{other:?}"),
                                None => String::new(),
                            };
                            (kv.key.clone(), v)
                        })
                        .collect();
                    got.spans.push(Got {
                        trace: hex(&s.trace_id),
                        id: hex(&s.span_id),
                        parent: hex(&s.parent_span_id),
                        name: s.name,
                        attrs,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let mut got = self.0.lock().expect("sink lock");
        for rm in request.into_inner().resource_metrics {
            for sm in rm.scope_metrics {
                got.metrics.extend(sm.metrics.into_iter().map(|m| m.name));
            }
        }
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// Starts the OTLP/gRPC receiver on 127.0.0.1:0; its endpoint URL.
async fn receiver(sink: Sink) -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(sink.clone()))
            .add_service(MetricsServiceServer::new(sink))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    Ok(format!("http://{addr}"))
}

/// A `squall node` process with its config and log; killed when dropped.
struct NodeProc {
    child: Option<Child>,
    config: PathBuf,
    log: PathBuf,
    root: String,
    dir: PathBuf,
}

impl NodeProc {
    /// Writes the node's config (`extra` appended) and starts it.
    fn start(dir: &Path, nats: &str, packs: &[PathBuf], extra: &str) -> Result<NodeProc> {
        let port = free_port()?;
        let config = dir.join("node.yaml");
        let dirs: Vec<String> = packs.iter().map(|p| p.display().to_string()).collect();
        std::fs::write(
            &config,
            format!(
                "name: otel-node\nnats:\n  url: \"{nats}\"\ncluster:\n  partitions: 2\napi:\n  listen: 127.0.0.1:{port}\n  auth_listen: null\n  stream_listen: null\npacks:\n  dirs: [{}]\nauth:\n  admin_password_file: {}\ndatastore:\n  key_file: {}\ndata_dir: {}\n{extra}",
                dirs.join(", "),
                dir.join("admin-password").display(),
                dir.join("datastore.key").display(),
                dir.join("data").display(),
            ),
        )?;
        let mut node = NodeProc {
            child: None,
            config,
            log: dir.join("node.log"),
            root: format!("http://127.0.0.1:{port}"),
            dir: dir.to_path_buf(),
        };
        node.spawn()?;
        Ok(node)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        self.child = Some(
            Command::new(squall_binary()?)
                .args(["node", "--config"])
                .arg(&self.config)
                .env("SQUALL_LOG", "info,async_nats=warn")
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?,
        );
        Ok(())
    }

    /// SIGTERM (the node flushes its telemetry), and wait for the exit.
    fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(child.id())?),
                nix::sys::signal::Signal::SIGTERM,
            )?;
            let status = child.wait()?;
            anyhow::ensure!(
                status.success(),
                "node exited {status}: {}",
                self.log_text()
            );
        }
        Ok(())
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// An admin's client once the API answers.
    async fn admin(&self) -> Result<reqwest::Client> {
        let password_file = self.dir.join("admin-password");
        let token = poll(Duration::from_secs(60), || async {
            let Ok(password) = std::fs::read_to_string(&password_file) else {
                return Ok(None);
            };
            Ok(login(&self.root, "admin", password.trim()).await.ok())
        })
        .await
        .with_context(|| self.log_text())?;
        client_with_token(&token)
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn get_json(http: &reqwest::Client, url: &str) -> Result<Value> {
    Ok(http.get(url).send().await?.json().await?)
}

/// `/metrics` as `(name, labels) → value`.
fn parse_metrics(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let value: f64 = value.parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}')?;
                    let labels = body
                        .split("\",")
                        .filter(|p| !p.is_empty())
                        .filter_map(|p| {
                            let (k, v) = p.split_once("=\"")?;
                            Some((k.to_string(), v.trim_end_matches('"').to_string()))
                        })
                        .collect();
                    (name.to_string(), labels)
                }
                None => (series.to_string(), BTreeMap::new()),
            };
            Some((name, labels, value))
        })
        .collect()
}

/// The sum of `name`'s samples whose labels include `with`.
fn sum(
    samples: &[(String, BTreeMap<String, String>, f64)],
    name: &str,
    with: &[(&str, &str)],
) -> f64 {
    samples
        .iter()
        .filter(|(n, labels, _)| {
            n == name
                && with
                    .iter()
                    .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

const FLOW: &str = "version: 1.0
tasks:
  prepare:
    action: core.noop
    next:
      - when: <% succeeded() %>
        do: approve
  approve:
    action: core.ask
    next:
      - when: <% succeeded() %>
        do: finish
  finish:
    action: core.noop
";

fn otel_pack(root: &Path) -> Result<()> {
    write_pack(
        root,
        "otel",
        &[
            ("pack.yaml", "name: otel\nversion: 0.1.0\n"),
            (
                "actions/flow.yaml",
                "name: flow\nrunner_type: orquesta\nentry_point: workflows/flow.yaml\n",
            ),
            ("actions/workflows/flow.yaml", FLOW),
            (
                "rules/on_webhook.yaml",
                "name: on_webhook\npack: otel\nenabled: true\ntrigger:\n  type: core.st2.webhook\n  parameters:\n    url: otel/flow\naction:\n  ref: otel.flow\n",
            ),
        ],
    )?;
    Ok(())
}

/// The one span named `name` whose attribute `key` is `value`.
fn one<'a>(spans: &'a [Got], name: &str, key: &str, value: &str) -> Result<&'a Got> {
    let found: Vec<&Got> = spans
        .iter()
        .filter(|s| s.name == name && s.attrs.get(key).map(String::as_str) == Some(value))
        .collect();
    anyhow::ensure!(
        found.len() == 1,
        "{} spans {name} with {key}={value}; received:\n{}",
        found.len(),
        spans
            .iter()
            .map(|s| format!(
                "{} {} <- {} {} {:?}",
                s.trace, s.id, s.parent, s.name, s.attrs
            ))
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(found[0])
}

fn parent_of<'a>(spans: &'a [Got], child: &Got) -> Result<&'a Got> {
    spans
        .iter()
        .find(|s| s.id == child.parent)
        .with_context(|| format!("the parent of {child:?} was not exported"))
}

// Multi-threaded: the receiver keeps answering while the test waits on
// the node process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remediation_is_one_trace_across_nats_hops_and_a_restart() -> Result<()> {
    let sink = Sink::default();
    let endpoint = receiver(sink.clone()).await?;
    let nats = NatsServer::start()?;
    let dir = tempfile::tempdir()?;
    let packs = dir.path().join("packs");
    otel_pack(&packs)?;
    let mut node = NodeProc::start(
        dir.path(),
        &nats.url(),
        &[repo_root().join("packs"), packs],
        &format!("log:\n  format: json\ntelemetry:\n  endpoint: {endpoint}\n  metrics_interval_ms: 500\n"),
    )?;
    let http = node.admin().await?;
    let base = format!("{}/api/v1", node.root);
    let fired = http
        .post(format!("{base}/webhooks/otel/flow"))
        .header("St2-Trace-Tag", "otel-e2e")
        .json(&json!({"host": "db1"}))
        .send()
        .await?;
    assert_eq!(fired.status(), 202, "{}", fired.text().await?);
    let inquiry = poll(Duration::from_secs(60), || async {
        let open = get_json(&http, &format!("{base}/inquiries")).await?;
        Ok(open[0]["id"].as_str().map(str::to_string))
    })
    .await?;

    // What ran so far was exported by this process.
    let exported = poll(Duration::from_secs(30), || async {
        Ok(sink
            .spans()
            .iter()
            .any(|s| s.name == "workflow.task")
            .then_some(()))
    })
    .await;
    if exported.is_err() {
        let metrics = http
            .get(format!("{}/metrics", node.root))
            .send()
            .await?
            .text()
            .await?;
        let telemetry: Vec<&str> = metrics
            .lines()
            .filter(|l| l.contains("telemetry"))
            .collect();
        anyhow::bail!(
            "spans before the restart were not exported: {telemetry:#?}\n{}",
            node.log_text()
        );
    }
    // Mid-workflow, waiting on a person: the node goes away and comes back.
    node.stop()?;
    node.spawn()?;
    let http = node.admin().await?;
    let answered = http
        .put(format!("{base}/inquiries/{inquiry}"))
        .json(&json!({"response": {"continue": true}}))
        .send()
        .await?;
    assert_eq!(answered.status(), 200, "{}", answered.text().await?);
    let workflow = poll(Duration::from_secs(60), || async {
        let list = get_json(&http, &format!("{base}/executions?action=otel.flow")).await?;
        let done = list[0]["status"].as_str() == Some("succeeded");
        Ok(done
            .then(|| list[0]["id"].as_str().map(str::to_string))
            .flatten())
    })
    .await?;
    poll(Duration::from_secs(30), || async {
        Ok(sink
            .spans()
            .iter()
            .any(|s| s.name == "workflow.run")
            .then_some(()))
    })
    .await?;
    // The node counts a batch once the receiver has answered.
    poll(Duration::from_secs(30), || async {
        let text = http
            .get(format!("{}/metrics", node.root))
            .send()
            .await?
            .text()
            .await?;
        let exported = sum(
            &parse_metrics(&text),
            "squall_telemetry_spans_exported_total",
            &[],
        );
        Ok((exported > 0.0).then_some(()))
    })
    .await?;
    node.stop()?;

    let all = sink.spans();
    let publish = one(&all, "trigger.publish", "squall.trace_tag", "otel-e2e")?;
    let spans: Vec<Got> = all
        .iter()
        .filter(|s| s.trace == publish.trace)
        .cloned()
        .collect();
    // One root (the webhook's request); every other span's parent is in
    // the same trace.
    let roots: Vec<&Got> = spans.iter().filter(|s| s.parent.is_empty()).collect();
    assert_eq!(roots.len(), 1, "{roots:#?}");
    assert_eq!(roots[0].name, "POST /api/v1/webhooks/{*url}");
    assert_eq!(roots[0].attrs["http.response.status_code"], "202");
    for s in &spans {
        if !s.parent.is_empty() {
            parent_of(&spans, s)?;
        }
    }
    assert_eq!(parent_of(&spans, publish)?.id, roots[0].id);
    // The rule partition read the context the webhook wrote.
    let matched = spans
        .iter()
        .find(|s| s.name == "rule.match")
        .context("rule.match")?;
    assert_eq!(matched.parent, publish.id);
    let enforce = one(&spans, "rule.enforce", "squall.rule.ref", "otel.on_webhook")?;
    assert_eq!(enforce.parent, matched.id);
    let request = one(
        &spans,
        "execution.request",
        "squall.execution.id",
        &workflow,
    )?;
    assert_eq!(request.parent, enforce.id);
    assert_eq!(request.attrs["squall.trace_tag"], "otel-e2e");
    // The runner pool read it too.
    let run = one(&spans, "execution.run", "squall.execution.id", &workflow)?;
    assert_eq!(run.parent, request.id);
    let flow = one(&spans, "workflow.run", "squall.execution.id", &workflow)?;
    assert_eq!(flow.parent, request.id);
    assert_eq!(flow.attrs["squall.execution.status"], "succeeded");
    // Each task, before and after the restart, hangs under the workflow,
    // and its execution's request and run under the task.
    for task in ["prepare", "approve", "finish"] {
        let t = one(&spans, "workflow.task", "squall.task.name", task)?;
        assert_eq!(t.parent, flow.id, "{task}");
        let id = &t.attrs["squall.execution.id"];
        let req = one(&spans, "execution.request", "squall.execution.id", id)?;
        assert_eq!(req.parent, t.id, "{task}");
        let ran = one(&spans, "execution.run", "squall.execution.id", id)?;
        assert_eq!(ran.parent, req.id, "{task}");
    }
    let process = spans
        .iter()
        .find(|s| s.name == "runner.process")
        .context("runner.process")?;
    assert_eq!(parent_of(&spans, process)?.name, "execution.run");

    // JSON log lines carry the trace; the access log is among them.
    let log = node.log_text();
    let lines: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["trace_id"] == publish.trace.as_str()),
        "no log line of trace {}: {log}",
        publish.trace
    );
    assert!(
        lines.iter().any(|l| l["target"] == "squall::access"
            && l["status"] == 202
            && l["trace_id"] == publish.trace.as_str()),
        "no access log line for the webhook: {log}"
    );
    // Metrics went over OTLP too.
    let pushed = sink.metrics();
    assert!(pushed.contains("squall.executions.finished"), "{pushed:?}");
    for name in [
        "http.server.request.duration",
        "squall.audit.events.published",
        "squall.retention.passes",
    ] {
        assert!(pushed.contains(name), "{name} not pushed: {pushed:?}");
    }
    Ok(())
}

#[tokio::test]
async fn metrics_count_what_ran_and_the_dashboard_asks_only_for_them() -> Result<()> {
    // An audit destination nobody listens on: its lag and oldest age are
    // series the dashboard's audit panels read.
    let refused = free_port()?;
    let packs = vec![
        repo_root().join("packs"),
        repo_root().join("loadtest/packs"),
    ];
    let node = TestNode::start_with(packs, |c| {
        c.audit.max_bytes = 32 << 20;
        c.audit.exporters = vec![ExporterConfig::Syslog(SyslogConfig {
            name: "siem".into(),
            address: format!("127.0.0.1:{refused}"),
            transport: SyslogTransport::Tcp,
            tls: None,
            relp_window: 128,
            facility: Facility::Audit,
            max_message_bytes: 8096,
            resend_window_secs: 10,
            batch_size: 500,
            enterprise_number: None,
        })];
    })
    .await?;
    const HOOKS: usize = 10;
    for _ in 0..HOOKS {
        let (status, body) = node.post("webhooks/loadtest/noop", &json!({})).await?;
        assert_eq!(status, 202, "{body}");
    }
    let (status, flow) = node
        .post("executions", &json!({"action": "loadtest.flow3"}))
        .await?;
    assert_eq!(status, 201, "{flow}");
    let flow_id = flow["id"].as_str().context("execution id")?.to_string();
    let done = node.finished(&flow_id).await?;
    assert_eq!(done["status"], "succeeded", "{done}");
    // Every execution: the hooks' plus the workflow's three tasks.
    let executions = poll(Duration::from_secs(60), || async {
        let all = node.executions().await?;
        let done = all.len() == HOOKS + 4 && all.iter().all(|e| e["status"] == "succeeded");
        Ok(done.then_some(all))
    })
    .await?;
    let noops = executions
        .iter()
        .filter(|e| e["action"]["ref"] == "core.noop")
        .count();
    assert_eq!(noops, HOOKS + 3);

    // The gauge of consumers' backlog appears once the watcher has looked.
    let text = poll(Duration::from_secs(30), || async {
        let text = reqwest::get(format!("{}/metrics", node.root))
            .await?
            .text()
            .await?;
        let samples = parse_metrics(&text);
        let settled = text.contains("squall_jetstream_consumer_pending{")
            && sum(
                &samples,
                "squall_audit_export_lag",
                &[("destination", "siem")],
            ) > 0.0
            && sum(&samples, "squall_executions_finished_total", &[]) == (HOOKS + 3) as f64;
        Ok(settled.then_some(text))
    })
    .await?;
    let m = parse_metrics(&text);
    let noop = [("runner", "noop")];
    assert_eq!(
        sum(&m, "squall_executions_requested_total", &noop),
        (HOOKS + 3) as f64,
        "{text}"
    );
    assert_eq!(
        sum(
            &m,
            "squall_executions_requested_total",
            &[("runner", "orquesta")]
        ),
        1.0
    );
    assert_eq!(
        sum(
            &m,
            "squall_executions_finished_total",
            &[("runner", "noop"), ("status", "succeeded")]
        ),
        (HOOKS + 3) as f64
    );
    assert_eq!(
        sum(&m, "squall_execution_queue_time_seconds_count", &noop),
        (HOOKS + 3) as f64
    );
    assert_eq!(
        sum(&m, "squall_execution_duration_seconds_count", &noop),
        (HOOKS + 3) as f64
    );
    assert_eq!(
        sum(
            &m,
            "squall_trigger_instances_published_total",
            &[("trigger_type", "core.st2.webhook")]
        ),
        HOOKS as f64
    );
    assert_eq!(
        sum(
            &m,
            "squall_rule_evaluations_total",
            &[("outcome", "matched")]
        ),
        HOOKS as f64
    );
    assert_eq!(
        sum(
            &m,
            "squall_rule_enforcements_total",
            &[("status", "succeeded")]
        ),
        HOOKS as f64
    );
    assert_eq!(
        sum(
            &m,
            "squall_workflow_tasks_total",
            &[("status", "succeeded")]
        ),
        3.0
    );
    assert_eq!(
        sum(
            &m,
            "squall_workflow_duration_seconds_count",
            &[("status", "succeeded")]
        ),
        1.0
    );
    assert_eq!(
        sum(
            &m,
            "http_server_request_duration_seconds_count",
            &[
                ("http_route", "/api/v1/webhooks/{*url}"),
                ("http_response_status_code", "202")
            ]
        ),
        HOOKS as f64
    );
    assert_eq!(sum(&m, "squall_executions_running", &[]), 0.0);
    // No execution id is ever a label.
    for (name, labels, _) in &m {
        for v in labels.values() {
            assert!(v != &flow_id, "{name} is labelled by an execution id");
        }
    }

    // Every selector of every dashboard query names a series the node
    // exports, with label names it has.
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(
        repo_root().join("ops/grafana/squall.json"),
    )?)?;
    let exported: HashMap<&str, BTreeSet<&str>> =
        m.iter().fold(HashMap::new(), |mut acc, (name, labels, _)| {
            let entry = acc.entry(name.as_str()).or_default();
            entry.extend(labels.keys().map(String::as_str));
            acc
        });
    let selector = regex::Regex::new(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}")?;
    let matcher = regex::Regex::new(r#"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*""#)?;
    let panels = dashboard["panels"].as_array().context("panels")?;
    assert!(panels.len() >= 10);
    let mut checked = 0;
    for panel in panels {
        for target in panel["targets"].as_array().context("targets")? {
            let expr = target["expr"].as_str().context("expr")?;
            let mut found = 0;
            for cap in selector.captures_iter(expr) {
                found += 1;
                let name = &cap[1];
                let labels = exported.get(name).with_context(|| {
                    format!(
                        "panel {:?}: {name} is not exported:\n{text}",
                        panel["title"]
                    )
                })?;
                for m in matcher.captures_iter(&cap[2]) {
                    assert!(
                        labels.contains(&m[1]),
                        "panel {:?}: {name} has no label {}",
                        panel["title"],
                        &m[1]
                    );
                }
            }
            assert!(found > 0, "no selector in {expr}");
            checked += found;
        }
    }
    assert!(checked >= 24, "{checked} selectors");
    // The audit and retention metrics are instruments like the rest.
    for name in [
        "squall_audit_export_oldest_age_seconds",
        "squall_audit_exporter_stopped",
        "squall_audit_dead_lettered_total",
        "squall_audit_events_published_total",
        "squall_retention_passes_total",
    ] {
        assert!(text.contains(&format!("# TYPE {name} ")), "{name}: {text}");
    }

    // A shell action's bus operations are counted too: its API token
    // stored and revoked, its output published.
    let ops = |m: &[(String, BTreeMap<String, String>, f64)], op: &str| {
        sum(m, "squall_bus_operations_total", &[("op", op)])
    };
    let (deleted, published) = (ops(&m, "delete"), ops(&m, "publish"));
    assert_eq!(deleted, 0.0, "no token was revoked yet");
    let (status, shell) = node
        .post(
            "executions",
            &json!({"action": "core.local", "parameters": {"cmd": "echo counted"}}),
        )
        .await?;
    assert_eq!(status, 201, "{shell}");
    let shell = node
        .finished(shell["id"].as_str().context("execution id")?)
        .await?;
    assert_eq!(shell["status"], "succeeded", "{shell}");
    // The revoke runs in the background once the process ended.
    let after = poll(Duration::from_secs(30), || async {
        let text = reqwest::get(format!("{}/metrics", node.root))
            .await?
            .text()
            .await?;
        let m = parse_metrics(&text);
        Ok((ops(&m, "delete") == 1.0).then_some(m))
    })
    .await?;
    // The request and the output at least.
    assert!(ops(&after, "publish") >= published + 2.0, "{after:?}");
    Ok(())
}

#[tokio::test]
async fn an_unreachable_collector_drops_counted_spans_and_bad_sections_are_refused() -> Result<()> {
    // Malformed sections: the node refuses to start, naming the field.
    let dir = tempfile::tempdir()?;
    for (section, expected) in [
        (
            "telemetry:\n  endpont: http://127.0.0.1:4317\n",
            "unknown field `endpont`",
        ),
        (
            "telemetry:\n  endpoint: http://127.0.0.1:4317\n  sampling_ratio: 2\n",
            "telemetry.sampling_ratio",
        ),
        (
            "telemetry:\n  endpoint: 127.0.0.1:4317\n",
            "telemetry.endpoint",
        ),
        ("log:\n  format: xml\n", "unknown variant `xml`"),
    ] {
        let path = dir.path().join("bad.yaml");
        std::fs::write(&path, format!("name: bad\n{section}"))?;
        let out = Command::new(squall_binary()?)
            .args(["node", "--config"])
            .arg(&path)
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{section}");
        assert!(stderr.contains(expected), "{section}: {stderr}");
        assert!(stderr.contains("bad.yaml"), "{stderr}");
    }

    // A collector nobody listens on: every execution still completes, the
    // spans are dropped and counted.
    let _ = nats_server_binary()?;
    let nats = NatsServer::start()?;
    let closed = free_port()?;
    let mut node = NodeProc::start(
        dir.path(),
        &nats.url(),
        &[repo_root().join("packs"), repo_root().join("loadtest/packs")],
        &format!("telemetry:\n  endpoint: http://127.0.0.1:{closed}\n  queue_size: 8\n  export_timeout_ms: 300\n"),
    )?;
    let http = node.admin().await?;
    let base = format!("{}/api/v1", node.root);
    const HOOKS: usize = 20;
    for _ in 0..HOOKS {
        let r = http
            .post(format!("{base}/webhooks/loadtest/noop"))
            .json(&json!({}))
            .send()
            .await?;
        assert_eq!(r.status(), 202);
    }
    poll(Duration::from_secs(60), || async {
        let list = get_json(&http, &format!("{base}/executions?limit=-1")).await?;
        let all = list.as_array().cloned().unwrap_or_default();
        Ok((all.len() == HOOKS && all.iter().all(|e| e["status"] == "succeeded")).then_some(()))
    })
    .await?;
    let m = poll(Duration::from_secs(30), || async {
        let text = http
            .get(format!("{}/metrics", node.root))
            .send()
            .await?
            .text()
            .await?;
        let m = parse_metrics(&text);
        let dropped = sum(&m, "squall_telemetry_spans_dropped_total", &[]);
        Ok((dropped > 0.0).then_some(m))
    })
    .await?;
    assert_eq!(sum(&m, "squall_telemetry_spans_exported_total", &[]), 0.0);
    assert_eq!(
        sum(
            &m,
            "squall_executions_finished_total",
            &[("status", "succeeded")]
        ),
        HOOKS as f64
    );
    node.stop()?;
    Ok(())
}

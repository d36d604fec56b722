//! The load generator against a real node: it counts what Squall recorded,
//! writes its reports, and its ceiling run counts every message. Small
//! numbers: this checks the tool, not speed.

use anyhow::Result;
use serde_json::json;
use squall_loadtest::audit_export::{AuditExport, Receiver};
use squall_loadtest::report::Report;
use squall_loadtest::scenario::{GeneratedRules, Load, Scenario};
use squall_loadtest::target::{ManagedNode, Target};
use squall_loadtest::telemetry::{Mode, Telemetry};
use squall_loadtest::RunOptions;
use squall_tests::{nats_server_binary, repo_root, squall_binary, TestNode};

async fn target(node: &TestNode) -> Result<Target> {
    Ok(Target::connect(
        &node.root,
        "admin",
        &node.admin_password,
        Some(node.nats.url()),
        Some(std::process::id()),
    )
    .await?)
}

#[tokio::test]
async fn a_smoke_run_counts_executions_and_writes_its_report() -> Result<()> {
    let node = TestNode::start(vec![repo_root().join("loadtest/packs")]).await?;
    let target = target(&node).await?;
    let mut scenario = Scenario::load("webhook-noop")?;
    if let Load::Webhook(w) = &mut scenario.load {
        w.count = 25;
        w.concurrency = 4;
    }
    let report = squall_loadtest::run(
        &target,
        &scenario,
        &RunOptions {
            ceiling_messages: 300,
            ..RunOptions::default()
        },
    )
    .await?;
    let o = &report.outcome;
    assert_eq!(
        (o.completions, o.expected, o.errors, o.failed),
        (25, 25, 0, 0),
        "{}",
        report.summary()
    );
    assert!(!o.timed_out);
    assert_eq!(o.histogram.iter().map(|b| b.count).sum::<usize>(), 25);
    assert_eq!(o.throughput_per_s.iter().sum::<usize>(), 25);
    assert!(o.latency_ms.p50 > 0.0 && o.latency_ms.p50 <= o.latency_ms.max);
    // Squall itself agrees: 25 executions of the rule.
    let (_, list) = node
        .get("executions?rule=loadtest.webhook_noop&limit=-1")
        .await?;
    assert_eq!(list.as_array().map(Vec::len), Some(25));
    let ceiling = report.ceiling.as_ref().expect("a ceiling run");
    assert_eq!(ceiling.messages, 300);
    assert!(ceiling.squall_fraction > 0.0);
    assert!(
        report
            .streams
            .iter()
            // 25 webhooks; no rule listens to actiontriggers, so the
            // executions' ends publish none.
            .any(|s| s.name == "TRIGGERS" && s.messages == 25),
        "{:?}",
        report.streams
    );
    assert!(!report.resources.is_empty() || o.per_s > 0.0);
    // The node's own count of bus operations, per execution: the trigger
    // published, the record created and the enforcement put (at once),
    // the request published, the claim and the final record.
    let ops = report
        .bus_ops
        .as_ref()
        .expect("the node exports its bus operations");
    let by_op: Vec<(&str, f64)> = ops.by_op.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(
        by_op,
        [
            ("create", 1.0),
            ("delete", 0.0),
            ("get", 0.0),
            ("publish", 2.0),
            ("put", 1.0),
            ("update", 2.0)
        ],
        "{}",
        report.summary()
    );
    assert_eq!(ops.total, 6.0);
    assert!(
        report.summary().contains(" bus_ops_per_execution=6.00"),
        "{}",
        report.summary()
    );

    let dir = tempfile::tempdir()?;
    let (json_path, html_path) = report.write(dir.path())?;
    let back = Report::read(&json_path)?;
    // Floats may differ in their last digit after JSON: compare as printed.
    assert_eq!(back.summary(), report.summary());
    assert_eq!(back.outcome.histogram, report.outcome.histogram);
    let html = std::fs::read_to_string(html_path)?;
    assert!(html.contains("<svg") && html.contains("webhook-noop"));
    let line = report.summary();
    assert!(
        line.starts_with("scenario=webhook-noop executions=25 expected=25"),
        "{line}"
    );
    assert!(squall_loadtest::report::compare(&report, &back).contains("1.00"));
    Ok(())
}

/// `--telemetry live --audit-export`: the started node sends every span to
/// the tool's own OTLP receiver and its audit trail to the tool's syslog
/// receiver; the report says how many spans arrived, how many the node
/// says it exported (the two agree) and dropped, and how many audit events
/// arrived (every stored one).
#[tokio::test]
async fn a_run_reports_the_spans_and_audit_events_its_receivers_got() -> Result<()> {
    let telemetry = Telemetry::start(Mode::Live).await?;
    let audit = AuditExport::start(Receiver::Syslog).await?;
    let config = telemetry.node_config().expect("live sets an endpoint") + &audit.node_config();
    let root = repo_root();
    let node = ManagedNode::start(
        &squall_binary()?,
        Some(&nats_server_binary()?),
        &[root.join("packs"), root.join("loadtest/packs")],
        Some(&config),
    )
    .await?;
    let mut scenario = Scenario::load("webhook-noop")?;
    if let Load::Webhook(w) = &mut scenario.load {
        w.count = 20;
        w.concurrency = 4;
    }
    let report = squall_loadtest::run(
        &node.target,
        &scenario,
        &RunOptions {
            ceiling_messages: 0,
            telemetry: Some(telemetry),
            audit_export: Some(audit),
        },
    )
    .await?;
    assert_eq!(report.outcome.completions, 20, "{}", report.summary());
    let t = report.telemetry.as_ref().expect("telemetry figures");
    assert_eq!(t.mode, Mode::Live);
    // Each execution has at least its trigger, rule and execution spans.
    assert!(t.spans_per_completion >= 3.0, "{t:?}");
    assert_eq!(t.spans_received, t.spans_exported, "{t:?}");
    assert_eq!(t.spans_dropped.values().sum::<u64>(), 0, "{t:?}");
    assert!(
        report
            .summary()
            .contains(" telemetry=live spans_per_execution="),
        "{}",
        report.summary()
    );
    Ok(())
}

#[tokio::test]
async fn generated_rules_and_open_loop_are_counted_per_match() -> Result<()> {
    let node = TestNode::start(vec![repo_root().join("loadtest/packs")]).await?;
    let target = target(&node).await?;
    let mut scenario = Scenario::load("criteria-heavy")?;
    if let Load::Webhook(w) = &mut scenario.load {
        w.count = 6;
        w.concurrency = 2;
        w.rate = Some(20.0);
        w.generated_rules = Some(GeneratedRules {
            count: 40,
            matching_percent: 10.0,
        });
    }
    let report = squall_loadtest::run(&target, &scenario, &RunOptions::default()).await?;
    let o = &report.outcome;
    // 4 of 40 rules match each of the 6 payloads.
    assert_eq!(
        (o.completions, o.expected, o.errors),
        (24, 24, 0),
        "{}",
        report.summary()
    );
    assert!(o.open_loop);
    // The generated rules are gone again.
    let (_, rules) = node.get("rules?pack=loadtest_generated").await?;
    assert_eq!(rules, json!([]));
    Ok(())
}

#[tokio::test]
async fn api_list_measures_requests_over_seeded_history() -> Result<()> {
    let node = TestNode::start(vec![repo_root().join("loadtest/packs")]).await?;
    let target = target(&node).await?;
    let mut scenario = Scenario::load("api-list")?;
    if let Load::ApiList(a) = &mut scenario.load {
        a.seed = 10;
        a.duration_s = 1;
        a.concurrency = 2;
    }
    let report = squall_loadtest::run(&target, &scenario, &RunOptions::default()).await?;
    let o = &report.outcome;
    assert_eq!(o.stored_executions, Some(10));
    assert!(o.completions > 0 && o.errors == 0, "{}", report.summary());
    assert!(report.summary().contains("requests_per_s="));
    Ok(())
}

#[tokio::test]
async fn workflow_runs_are_timed_from_their_own_records() -> Result<()> {
    let node = TestNode::start(vec![repo_root().join("loadtest/packs")]).await?;
    let target = target(&node).await?;
    let mut scenario = Scenario::load("workflow-3step")?;
    if let Load::Workflow(w) = &mut scenario.load {
        w.count = 6;
        w.concurrency = 3;
    }
    let report = squall_loadtest::run(&target, &scenario, &RunOptions::default()).await?;
    let o = &report.outcome;
    assert_eq!(
        (o.completions, o.expected, o.errors, o.failed),
        (6, 6, 0, 0),
        "{}",
        report.summary()
    );
    assert!(
        report
            .summary()
            .starts_with("scenario=workflow-3step workflows=6"),
        "{}",
        report.summary()
    );
    // Each workflow ran its three tasks.
    let (_, tasks) = node.get("executions?action=core.noop&limit=-1").await?;
    assert_eq!(tasks.as_array().map(Vec::len), Some(18));
    Ok(())
}

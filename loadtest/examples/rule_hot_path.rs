//! Micro-benchmark of a rule partition's per-event work: matching a rule
//! with three criteria (equals, regex, contains) and rendering a rule's
//! three templated action parameters, each the reference way (everything
//! parsed and compiled for the event, as before rules were compiled) and
//! the way the rule partition does it (compiled once); and one trigger
//! checked against the 1,000 single-criterion rules of the
//! `criteria-heavy` scenario (the rules [`webhook::generated_rule`] makes),
//! compiled.
//!
//! `cargo run --release -p squall-loadtest --example rule_hot_path`

use std::hint::black_box;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use squall_domain::criteria::{self, CompiledCriteria, Criteria};
use squall_domain::template::{CompiledValue, NoKeyValues, Renderer};
use squall_loadtest::scenario::GeneratedRules;
use squall_loadtest::webhook;

/// How long each measurement runs.
const RUN: Duration = Duration::from_secs(2);

/// Calls `f` repeatedly for [`RUN`]; the calls per second.
fn rate(mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed() < RUN {
        for _ in 0..100 {
            f();
        }
        calls += 100;
    }
    calls as f64 / start.elapsed().as_secs_f64()
}

fn payload() -> Value {
    json!({
        "headers": {"Content-Type": "application/json", "User-Agent": "curl/8.5.0",
                    "X-GitHub-Event": "push", "Host": "squall.example"},
        "body": {"event": "deploy", "service": "payments-api-7", "env": "production",
                 "tags": ["critical", "payments", "eu-west"], "count": 3,
                 "author": {"name": "Stanley", "email": "stanley@example.com"}}
    })
}

fn main() {
    let renderer = Renderer::new();
    let kv = NoKeyValues;
    let trigger = payload();

    let criteria: Criteria = serde_json::from_value(json!({
        "trigger.body.event": {"type": "equals", "pattern": "deploy"},
        "trigger.body.service": {"type": "regex", "pattern": "^payments-[a-z]+-\\d+$"},
        "trigger.body.tags": {"type": "contains", "pattern": "critical"},
    }))
    .expect("criteria");
    assert!(criteria::matches(&criteria, &trigger, &renderer, &kv).expect("match"));
    let matches = rate(|| {
        black_box(criteria::matches(&criteria, black_box(&trigger), &renderer, &kv).ok());
    });
    let compiled = CompiledCriteria::compile(&criteria);
    assert!(compiled.matches(&trigger, &renderer, &kv).expect("match"));
    let compiled_matches = rate(|| {
        black_box(compiled.matches(black_box(&trigger), &renderer, &kv).ok());
    });

    let parameters = json!({
        "service": "{{ trigger.body.service }}",
        "message": "{{ trigger.body.author.name }} deploys {{ trigger.body.service }} to {{ trigger.body.env }}",
        "count": "{{ trigger.body.count + 1 }}",
    });
    let context = json!({"trigger": trigger, "rule": {"ref": "bench.deploy", "name": "deploy", "pack": "bench"}});
    let rendered = renderer
        .render_value(&parameters, &context, &kv)
        .expect("render");
    assert_eq!(rendered["count"], json!(4));
    let renders = rate(|| {
        black_box(
            renderer
                .render_value(&parameters, black_box(&context), &kv)
                .ok(),
        );
    });

    let compiled = CompiledValue::new(&parameters);
    assert_eq!(
        renderer.render_compiled(&compiled, &context, &kv),
        Ok(rendered)
    );
    let compiled_renders = rate(|| {
        black_box(
            renderer
                .render_compiled(&compiled, black_box(&context), &kv)
                .ok(),
        );
    });

    // criteria-heavy: the rules `squall-loadtest` generates (1 % match),
    // against its webhook payload.
    let webhook = json!({
        "headers": {"Content-Type": "application/json", "Host": "127.0.0.1", "St2-Trace-Tag": "lt1-1"},
        "headers_lower": {"content-type": "application/json", "host": "127.0.0.1", "st2-trace-tag": "lt1-1"},
        "body": webhook::criteria_payload(),
    });
    let generated = GeneratedRules {
        count: 1000,
        matching_percent: 1.0,
    };
    let rules: Vec<CompiledCriteria> = (0..generated.count)
        .map(|i| {
            let rule = webhook::generated_rule(i, &generated, "bench");
            let criteria: Criteria =
                serde_json::from_value(rule["criteria"].clone()).expect("criteria");
            CompiledCriteria::compile(&criteria)
        })
        .collect();
    let hits = rules
        .iter()
        .filter(|c| c.matches(&webhook, &renderer, &kv).expect("match"))
        .count();
    assert_eq!(hits, 10);
    let triggers = rate(|| {
        for c in &rules {
            black_box(c.matches(black_box(&webhook), &renderer, &kv).ok());
        }
    });

    println!("criteria (equals, regex, contains), reference: {matches:>10.0} matches/s");
    println!("criteria (equals, regex, contains), compiled:  {compiled_matches:>10.0} matches/s");
    println!("3 templated parameters, reference:             {renders:>10.0} renders/s");
    println!("3 templated parameters, compiled:              {compiled_renders:>10.0} renders/s");
    println!(
        "1,000 criteria-heavy rules, compiled:          {triggers:>10.0} triggers/s ({:.1} µs each)",
        1e6 / triggers
    );
}

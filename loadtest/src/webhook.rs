//! Webhook load: fire webhooks (closed loop, or open loop at a rate), wait
//! until Squall has recorded every execution they caused, and read those
//! records. Each webhook carries an `St2-Trace-Tag` of `<run>-<n>`, which
//! Squall copies into its executions' `context.trace_context`, so every
//! execution is matched to the webhook that caused it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::scenario::{GeneratedRules, WebhookLoad};
use crate::target::Target;
use crate::{timestamp as ts, LoadError};

/// How long the wait goes on with no execution finishing.
const STALL: Duration = Duration::from_secs(30);

/// Pack of the rules a run generates.
const GENERATED_PACK: &str = "loadtest_generated";

/// The payload generated rules are matched against.
pub fn criteria_payload() -> Value {
    json!({"n": 50, "host": "web-50", "service": "nginx", "tags": "prod,eu"})
}

/// One rule in this many matches every payload; `None` for none.
fn every(g: &GeneratedRules) -> Option<usize> {
    (g.matching_percent > 0.0).then(|| ((100.0 / g.matching_percent).round() as usize).max(1))
}

/// Rule `i` of `g`: an operator by `i % 8`, matching [`criteria_payload`]
/// for one rule in every `100 / matching_percent`.
pub fn generated_rule(i: usize, g: &GeneratedRules, url: &str) -> Value {
    let hit = every(g).is_some_and(|e| i.is_multiple_of(e));
    let (field, op, pattern) = match (i % 8, hit) {
        (0, true) => ("host", "equals", json!("web-50")),
        (0, false) => ("host", "equals", json!(format!("web-x{i}"))),
        (1, true) => ("service", "iequals", json!("NGINX")),
        (1, false) => ("service", "iequals", json!(format!("apache{i}"))),
        (2, true) => ("tags", "contains", json!("prod")),
        (2, false) => ("tags", "contains", json!(format!("staging{i}"))),
        (3, true) => ("host", "regex", json!("^web-5\\d$")),
        (3, false) => ("host", "regex", json!(format!("^db-{i}$"))),
        (4, true) => ("n", "greaterthan", json!(10)),
        (4, false) => ("n", "greaterthan", json!(1000 + i)),
        (5, true) => ("n", "lessthan", json!(100)),
        (5, false) => ("n", "lessthan", json!(-(i as i64))),
        (6, true) => ("host", "startswith", json!("web")),
        (6, false) => ("host", "startswith", json!(format!("db{i}"))),
        (_, true) => ("service", "exists", Value::Null),
        (_, false) => ("missing", "exists", Value::Null),
    };
    let mut condition = json!({"type": op});
    if !pattern.is_null() {
        condition["pattern"] = pattern;
    }
    let field = if field == "missing" {
        format!("trigger.body.missing{i}")
    } else {
        format!("trigger.body.{field}")
    };
    json!({
        "name": format!("criteria_{i}"),
        "pack": GENERATED_PACK,
        "enabled": true,
        "trigger": {"type": "core.st2.webhook", "parameters": {"url": url}},
        "criteria": {field: condition},
        "action": {"ref": "core.noop"},
    })
}

/// How many of `g`'s rules match every payload.
pub fn matching_rules(g: &GeneratedRules) -> usize {
    every(g).map_or(0, |e| (0..g.count).filter(|i| i.is_multiple_of(e)).count())
}

/// One execution a run caused, as Squall recorded it.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub succeeded: bool,
    /// When its webhook was due (open loop) or its trigger was accepted.
    pub origin: DateTime<Utc>,
    /// When its record was written (`requested`), claimed by a runner
    /// (`scheduled`) and started (`running`), from its status log.
    pub requested: Option<DateTime<Utc>>,
    pub scheduled: Option<DateTime<Utc>>,
    pub running: Option<DateTime<Utc>>,
    pub ended: DateTime<Utc>,
}

/// What a webhook run produced.
#[derive(Debug, Clone)]
pub struct WebhookRun {
    pub sent: usize,
    pub errors: usize,
    /// Executions the sent webhooks should cause.
    pub expected: usize,
    pub records: Vec<Recorded>,
    pub began: DateTime<Utc>,
    pub send_secs: f64,
    pub rules: usize,
    /// The wait ended at the timeout with executions missing.
    pub timed_out: bool,
}

/// Runs `load` against `target`; a run id keeps its executions apart.
pub async fn run(
    target: &Target,
    load: &WebhookLoad,
    timeout: Duration,
) -> Result<WebhookRun, LoadError> {
    let run_id = format!("lt{}", Utc::now().timestamp_millis());
    let (rules, per_webhook, body) = match &load.generated_rules {
        Some(g) => {
            let created = create_rules(target, g, &load.url).await?;
            (created, matching_rules(g), criteria_payload())
        }
        None => (0, 1, json!({"run": run_id, "n": 0})),
    };
    let baseline = finished(target).await?;
    let began = Utc::now();
    let sent_at = Instant::now();
    let due = send(target, load, &run_id, &body, began).await;
    let send_secs = sent_at.elapsed().as_secs_f64();
    let errors = due.iter().filter(|d| d.is_none()).count();
    let sent = due.len();
    let expected = (sent - errors) * per_webhook;
    let timed_out = wait(target, baseline + expected, timeout).await?;
    let records = collect(target, &run_id, &due, began, load).await?;
    if let Some(g) = &load.generated_rules {
        delete_rules(target, g.count).await;
    }
    Ok(WebhookRun {
        sent,
        errors,
        expected,
        records,
        began,
        send_secs,
        rules,
        timed_out,
    })
}

async fn create_rules(target: &Target, g: &GeneratedRules, url: &str) -> Result<usize, LoadError> {
    delete_rules(target, g.count).await;
    let made = stream::iter(0..g.count)
        .map(|i| {
            let rule = generated_rule(i, g, url);
            async move {
                let r = target
                    .http
                    .post(target.api("rules"))
                    .json(&rule)
                    .send()
                    .await?;
                if !r.status().is_success() {
                    let body = r.text().await.unwrap_or_default();
                    return Err(LoadError::Setup(format!(
                        "creating rule criteria_{i}: {body}"
                    )));
                }
                Ok(())
            }
        })
        .buffer_unordered(4)
        .collect::<Vec<_>>()
        .await;
    made.into_iter().collect::<Result<Vec<_>, _>>()?;
    // Rules reach the rule engine through the content watch: wait until
    // the node lists them all.
    let deadline = Instant::now() + Duration::from_secs(60);
    while target
        .count(&format!("rules?pack={GENERATED_PACK}&limit=1"))
        .await?
        < g.count
    {
        if Instant::now() > deadline {
            return Err(LoadError::Timeout(
                "generated rules did not all register".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(g.count)
}

async fn delete_rules(target: &Target, count: usize) {
    stream::iter(0..count)
        .map(|i| async move {
            let _ = target
                .http
                .delete(target.api(&format!("rules/{GENERATED_PACK}.criteria_{i}")))
                .send()
                .await;
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
}

/// Sends every webhook; for each, when it was due (open loop) or `Some`
/// of the send time (closed loop, replaced later by the trigger's own
/// time), or `None` when the node refused it.
async fn send(
    target: &Target,
    load: &WebhookLoad,
    run_id: &str,
    body: &Value,
    began: DateTime<Utc>,
) -> Vec<Option<DateTime<Utc>>> {
    let url = target.api(&format!("webhooks/{}", load.url));
    let fire = |n: usize| {
        let (http, url, body) = (target.http.clone(), url.clone(), body.clone());
        let tag = format!("{run_id}-{n}");
        let mut body = body;
        if body.get("n").is_some() && body.get("run").is_some() {
            body["n"] = json!(n);
        }
        async move {
            let r = http
                .post(url)
                .header("St2-Trace-Tag", tag)
                .json(&body)
                .send()
                .await;
            matches!(r, Ok(r) if r.status().as_u16() == 202)
        }
    };
    match load.rate {
        None => {
            stream::iter(0..load.count)
                .map(|n| {
                    let fired = fire(n);
                    async move { fired.await.then(Utc::now) }
                })
                .buffered(load.concurrency)
                .collect()
                .await
        }
        Some(rate) => {
            // Open loop: webhook n is due at n / rate, whatever happened to
            // the ones before it; at most `concurrency` in flight.
            let permits = Arc::new(Semaphore::new(load.concurrency));
            let start = tokio::time::Instant::now();
            let mut tasks = Vec::with_capacity(load.count);
            for n in 0..load.count {
                let offset = Duration::from_secs_f64(n as f64 / rate);
                tokio::time::sleep_until(start + offset).await;
                let due = began + chrono::Duration::from_std(offset).unwrap_or_default();
                let permit = Arc::clone(&permits).acquire_owned().await;
                let fired = fire(n);
                tasks.push(tokio::spawn(async move {
                    let ok = fired.await;
                    drop(permit);
                    ok.then_some(due)
                }));
            }
            let mut out = Vec::with_capacity(tasks.len());
            for t in tasks {
                out.push(t.await.ok().flatten());
            }
            out
        }
    }
}

fn is_completed(e: &Value) -> bool {
    matches!(
        e["status"].as_str(),
        Some("succeeded" | "failed" | "timeout" | "abandoned" | "canceled")
    )
}

/// Executions with a final status on the node, from the status index
/// (one cheap count per status, so waiting does not load the node).
async fn finished(target: &Target) -> Result<usize, LoadError> {
    let mut total = 0;
    for status in FINAL {
        total += target
            .count(&format!("executions?limit=1&status={status}"))
            .await?;
    }
    Ok(total)
}

const FINAL: [&str; 5] = ["succeeded", "failed", "timeout", "abandoned", "canceled"];

/// Waits until `target_count` executions have finished; true when it gave
/// up (timeout, or nothing finished for [`STALL`]).
async fn wait(target: &Target, target_count: usize, timeout: Duration) -> Result<bool, LoadError> {
    let deadline = Instant::now() + timeout;
    let (mut last, mut last_progress) = (0, Instant::now());
    loop {
        let done = finished(target).await?;
        if done >= target_count {
            return Ok(false);
        }
        if done > last {
            (last, last_progress) = (done, Instant::now());
        }
        if Instant::now() > deadline || last_progress.elapsed() > STALL {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The run's finished executions, matched to their webhooks by trace tag.
async fn collect(
    target: &Target,
    run_id: &str,
    due: &[Option<DateTime<Utc>>],
    began: DateTime<Utc>,
    load: &WebhookLoad,
) -> Result<Vec<Recorded>, LoadError> {
    let since =
        (began - chrono::Duration::seconds(1)).to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let path = format!(
        "executions?limit=-1&timestamp_gt={}&include_attributes=status,log,end_timestamp,trigger_instance,context.trace_context",
        since.replace('+', "%2B")
    );
    let prefix = format!("{run_id}-");
    let list: Value = target
        .http
        .get(target.api(&path))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let records = list
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| is_completed(e))
        .filter_map(|e| {
            let tag = e["context"]["trace_context"]["trace_tag"].as_str()?;
            let n: usize = tag.strip_prefix(&prefix)?.parse().ok()?;
            let origin = match load.rate {
                Some(_) => due.get(n).copied().flatten()?,
                None => ts(&e["trigger_instance"]["occurrence_time"])?,
            };
            let logged = |status: &str| {
                e["log"].as_array().and_then(|log| {
                    log.iter()
                        .find(|l| l["status"] == status)
                        .and_then(|l| ts(&l["timestamp"]))
                })
            };
            Some(Recorded {
                succeeded: e["status"] == "succeeded",
                origin,
                requested: logged("requested"),
                scheduled: logged("scheduled"),
                running: logged("running"),
                ended: ts(&e["end_timestamp"])?,
            })
        })
        .collect();
    Ok(records)
}

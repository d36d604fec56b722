//! `squall-loadtest`: drives a running Squall with webhooks and reports
//! throughput and latency from the execution records Squall itself stored
//! (not from requests sent).
//!
//! Start Squall with the loadtest pack, then run a scenario:
//!
//! ```sh
//! squall up --packs-dir packs --packs-dir loadtest/packs
//! squall-loadtest --scenario noop --count 5000 --concurrency 64
//! ```

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use clap::Parser;
use futures::stream::{self, StreamExt};
use serde_json::{json, Value};

#[derive(Debug, Parser)]
#[command(about = "Load generator for Squall")]
struct Args {
    /// API URL of the node under test.
    #[arg(long, default_value = "http://127.0.0.1:9101")]
    url: String,
    /// `noop` (webhook → rule → core.noop) or `shell` (→ core.local echo).
    #[arg(long, default_value = "noop")]
    scenario: String,
    /// Webhooks to send.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Webhooks in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Give up waiting for executions after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_s: u64,
    /// File holding the admin's password (`squall up` writes it).
    #[arg(long, default_value = ".squall/admin-password")]
    password_file: std::path::PathBuf,
    /// User to log in as.
    #[arg(long, default_value = "admin")]
    user: String,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let (webhook, rule) = match args.scenario.as_str() {
        "noop" => ("loadtest/noop", "loadtest.webhook_noop"),
        "shell" => ("loadtest/shell", "loadtest.webhook_shell"),
        other => bail!("unknown scenario {other:?}: use noop or shell"),
    };
    let api = format!("{}/api/v1", args.url.trim_end_matches('/'));
    let http = logged_in(&args).await?;
    let before = executions_of(&http, &api, rule).await?.len();

    let sent_at = Instant::now();
    let errors = stream::iter(0..args.count)
        .map(|n| {
            let http = http.clone();
            let url = format!("{api}/webhooks/{webhook}");
            async move {
                match http.post(url).json(&json!({"n": n})).send().await {
                    Ok(r) if r.status().as_u16() == 202 => 0usize,
                    _ => 1,
                }
            }
        })
        .buffer_unordered(args.concurrency)
        .fold(0usize, |acc, e| async move { acc + e })
        .await;
    let send_secs = sent_at.elapsed().as_secs_f64();

    let deadline = Instant::now() + Duration::from_secs(args.timeout_s);
    let expected = before + args.count - errors;
    let records = loop {
        let all = executions_of(&http, &api, rule).await?;
        let done = all.iter().filter(|e| is_completed(e)).count();
        if done >= expected {
            break all;
        }
        if Instant::now() > deadline {
            bail!(
                "only {done} of {expected} executions finished within {} s",
                args.timeout_s
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let fresh: Vec<&Value> = records.iter().take(records.len() - before).collect();
    report(&args, &fresh, errors, send_secs)
}

/// A client carrying a token for `args.user`.
async fn logged_in(args: &Args) -> Result<reqwest::Client> {
    let password = std::fs::read_to_string(&args.password_file)
        .with_context(|| format!("reading the password from {}", args.password_file.display()))?;
    let answer: Value = reqwest::Client::new()
        .post(format!("{}/auth/v1/tokens", args.url.trim_end_matches('/')))
        .basic_auth(&args.user, Some(password.trim()))
        .send()
        .await?
        .error_for_status()
        .context("logging in")?
        .json()
        .await?;
    let token = answer["token"]
        .as_str()
        .context("no token in the login answer")?;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("X-Auth-Token", token.parse()?);
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .build()?)
}

async fn executions_of(http: &reqwest::Client, api: &str, rule: &str) -> Result<Vec<Value>> {
    let list: Value = http
        .get(format!("{api}/executions?limit=-1"))
        .send()
        .await
        .context("listing executions")?
        .json()
        .await?;
    Ok(list
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["rule"]["ref"] == rule)
        .collect())
}

fn is_completed(e: &Value) -> bool {
    matches!(
        e["status"].as_str(),
        Some("succeeded" | "failed" | "timeout" | "abandoned" | "canceled")
    )
}

fn ts(v: &Value) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(v.as_str()?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn running_at(e: &Value) -> Option<DateTime<Utc>> {
    e["log"]
        .as_array()?
        .iter()
        .find(|l| l["status"] == "running")
        .and_then(|l| ts(&l["timestamp"]))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn report(args: &Args, records: &[&Value], errors: usize, send_secs: f64) -> Result<()> {
    let mut to_end = Vec::new();
    let mut to_start = Vec::new();
    let (mut first, mut last) = (None::<DateTime<Utc>>, None::<DateTime<Utc>>);
    let mut failed = 0;
    for e in records {
        if e["status"] != "succeeded" {
            failed += 1;
        }
        let (Some(occurred), Some(end)) = (
            ts(&e["trigger_instance"]["occurrence_time"]),
            ts(&e["end_timestamp"]),
        ) else {
            continue;
        };
        to_end.push((end - occurred).num_microseconds().unwrap_or(0) as f64 / 1000.0);
        if let Some(run) = running_at(e) {
            to_start.push((run - occurred).num_microseconds().unwrap_or(0) as f64 / 1000.0);
        }
        first = Some(first.map_or(occurred, |f| f.min(occurred)));
        last = Some(last.map_or(end, |l| l.max(end)));
    }
    to_end.sort_by(f64::total_cmp);
    to_start.sort_by(f64::total_cmp);
    let span = match (first, last) {
        (Some(f), Some(l)) => (l - f).num_microseconds().unwrap_or(1) as f64 / 1e6,
        _ => 0.0,
    };
    let per_s = if span > 0.0 {
        records.len() as f64 / span
    } else {
        0.0
    };
    println!(
        "scenario={} executions={} errors={} failed={} executions_per_s={:.0} webhooks_per_s={:.0} \
         p50_ms={:.1} p90_ms={:.1} p99_ms={:.1} max_ms={:.1} start_p50_ms={:.1} start_p99_ms={:.1}",
        args.scenario,
        records.len(),
        errors,
        failed,
        per_s,
        args.count as f64 / send_secs,
        percentile(&to_end, 50.0),
        percentile(&to_end, 90.0),
        percentile(&to_end, 99.0),
        to_end.last().copied().unwrap_or(0.0),
        percentile(&to_start, 50.0),
        percentile(&to_start, 99.0),
    );
    Ok(())
}

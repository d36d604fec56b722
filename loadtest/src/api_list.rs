//! History reads: `concurrency` clients repeat one list query for
//! `duration_s`; each request's latency is measured by the client (these
//! are reads: nothing is recorded by Squall to count instead).

use std::time::{Duration, Instant};

use crate::scenario::{ApiListLoad, WebhookLoad};
use crate::target::Target;
use crate::LoadError;

/// What an API-list run produced.
#[derive(Debug, Clone)]
pub struct ApiListRun {
    /// Executions stored while measuring.
    pub stored: usize,
    /// Latency of each answered request, ms, with when it finished (s since
    /// the start).
    pub latencies: Vec<(f64, f64)>,
    pub errors: usize,
    pub secs: f64,
}

/// Seeds history up to `load.seed` with webhook-noop executions, then
/// measures.
pub async fn run(
    target: &Target,
    load: &ApiListLoad,
    timeout: Duration,
) -> Result<ApiListRun, LoadError> {
    let stored = target.count("executions?limit=1").await?;
    if stored < load.seed {
        let seed = WebhookLoad {
            url: "loadtest/noop".into(),
            rule: Some("loadtest.webhook_noop".into()),
            count: load.seed - stored,
            concurrency: 32,
            rate: None,
            generated_rules: None,
        };
        crate::webhook::run(target, &seed, timeout).await?;
    }
    let stored = target.count("executions?limit=1").await?;
    let url = target.api(&load.query);
    let start = Instant::now();
    let end = start + Duration::from_secs(load.duration_s);
    let clients = (0..load.concurrency).map(|_| {
        let (http, url) = (target.http.clone(), url.clone());
        tokio::spawn(async move {
            let mut out = Vec::new();
            let mut errors = 0;
            while Instant::now() < end {
                let sent = Instant::now();
                let ok = match http.get(&url).send().await {
                    Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                    _ => false,
                };
                if ok {
                    out.push((
                        start.elapsed().as_secs_f64(),
                        sent.elapsed().as_secs_f64() * 1000.0,
                    ));
                } else {
                    errors += 1;
                }
            }
            (out, errors)
        })
    });
    let mut latencies = Vec::new();
    let mut errors = 0;
    for c in clients.collect::<Vec<_>>() {
        let (l, e) = c
            .await
            .map_err(|e| LoadError::Setup(format!("a client task failed: {e}")))?;
        latencies.extend(l);
        errors += e;
    }
    Ok(ApiListRun {
        stored,
        latencies,
        errors,
        secs: start.elapsed().as_secs_f64(),
    })
}

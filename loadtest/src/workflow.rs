//! Workflow load: start a workflow action `count` times (`concurrency` at
//! once), wait until each has finished, and read the records: latency is
//! each workflow execution's own, from requested to finished.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt};
use serde_json::{json, Value};

use crate::scenario::WorkflowLoad;
use crate::target::Target;
use crate::{timestamp as ts, LoadError};

/// One finished workflow: succeeded, requested at, finished at.
pub type Finished = (bool, DateTime<Utc>, DateTime<Utc>);

/// What a workflow run produced.
#[derive(Debug, Clone)]
pub struct WorkflowRun {
    pub started: usize,
    pub errors: usize,
    /// `(succeeded, requested, finished)` of each finished workflow.
    pub finished: Vec<Finished>,
    pub timed_out: bool,
}

/// Runs `load` against `target`.
pub async fn run(
    target: &Target,
    load: &WorkflowLoad,
    timeout: Duration,
) -> Result<WorkflowRun, LoadError> {
    let deadline = Instant::now() + timeout;
    let body = json!({"action": load.action, "parameters": load.parameters});
    // Each worker starts a workflow and waits for its end before the next,
    // so at most `concurrency` run at once.
    let outcomes: Vec<Result<Option<Finished>, LoadError>> = stream::iter(0..load.count)
        .map(|_| {
            let body = body.clone();
            async move {
                let r = target
                    .http
                    .post(target.api("executions"))
                    .json(&body)
                    .send()
                    .await?;
                if r.status().as_u16() != 201 {
                    return Ok(None);
                }
                let created: Value = r.json().await?;
                let id = created["id"].as_str().unwrap_or_default().to_string();
                let mut pause = Duration::from_millis(5);
                loop {
                    let e: Value = target
                        .http
                        .get(target.api(&format!("executions/{id}")))
                        .send()
                        .await?
                        .json()
                        .await?;
                    if matches!(
                        e["status"].as_str(),
                        Some("succeeded" | "failed" | "canceled" | "timeout" | "abandoned")
                    ) {
                        let (Some(start), Some(end)) =
                            (ts(&e["start_timestamp"]), ts(&e["end_timestamp"]))
                        else {
                            return Ok(None);
                        };
                        return Ok(Some((e["status"] == "succeeded", start, end)));
                    }
                    if Instant::now() > deadline {
                        return Err(LoadError::Timeout(format!("workflow {id} did not finish")));
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
            }
        })
        .buffer_unordered(load.concurrency)
        .collect()
        .await;
    let mut run = WorkflowRun {
        started: load.count,
        errors: 0,
        finished: Vec::new(),
        timed_out: false,
    };
    for o in outcomes {
        match o {
            Ok(Some(f)) => run.finished.push(f),
            Ok(None) => run.errors += 1,
            Err(LoadError::Timeout(_)) => run.timed_out = true,
            Err(e) => return Err(e),
        }
    }
    Ok(run)
}

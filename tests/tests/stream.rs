//! The live event stream (`/stream/v1/stream`): StackStorm's SSE events for
//! execution changes and live output, with its filters.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use squall_tests::TestNode;

/// Reads SSE events from `resp` until `done` says stop (or 30 s pass).
async fn read_events(
    mut resp: reqwest::Response,
    mut done: impl FnMut(&[(String, Value)]) -> bool,
) -> Result<Vec<(String, Value)>> {
    let mut buf = String::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done(&events) {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .context("no event in time")??;
        let Some(chunk) = chunk else { break };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut name = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(n) = line
                    .strip_prefix("event: ")
                    .or_else(|| line.strip_prefix("event:"))
                {
                    name = Some(n.trim().to_string());
                } else if let Some(d) = line
                    .strip_prefix("data: ")
                    .or_else(|| line.strip_prefix("data:"))
                {
                    data.push_str(d);
                }
            }
            if let Some(name) = name {
                events.push((name, serde_json::from_str(&data).unwrap_or(Value::Null)));
            }
        }
    }
    Ok(events)
}

fn finished(events: &[(String, Value)]) -> bool {
    events
        .iter()
        .any(|(n, d)| n == "st2.execution__update" && d["status"] == "succeeded")
}

#[tokio::test]
async fn executions_and_live_output_stream_as_stackstorm_events() -> Result<()> {
    let node = TestNode::start(vec![]).await?;
    let url = format!("{}/stream/v1/stream?action_refs=core.local", node.root);
    let anonymous = reqwest::Client::new().get(&url).send().await?;
    assert_eq!(anonymous.status().as_u16(), 401);

    let resp = node.http.get(&url).send().await?;
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()?
        .starts_with("text/event-stream"));
    node.post("executions", &json!({"action": "core.noop"}))
        .await?;
    let (_, run) = node
        .post(
            "executions",
            &json!({"action": "core.local", "parameters": {"cmd": "echo line1; sleep 0.3; echo line2 >&2"}}),
        )
        .await?;
    let id = run["id"].as_str().unwrap_or_default().to_string();
    let events = read_events(resp, finished).await?;

    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"st2.execution__create"), "{names:?}");
    assert!(
        events
            .iter()
            .all(|(_, d)| d["execution_id"] == id.as_str() || d["id"] == id.as_str()),
        "only core.local: {events:?}"
    );
    let output: Vec<(&str, &str)> = events
        .iter()
        .filter(|(n, _)| n == "st2.execution.output__create")
        .map(|(_, d)| {
            (
                d["output_type"].as_str().unwrap_or(""),
                d["data"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(output, [("stdout", "line1\n"), ("stderr", "line2\n")]);
    let statuses: Vec<&str> = events
        .iter()
        .filter(|(n, _)| n == "st2.execution__update")
        .filter_map(|(_, d)| d["status"].as_str())
        .collect();
    assert_eq!(statuses, ["scheduled", "running", "succeeded"]);
    Ok(())
}

#[tokio::test]
async fn end_execution_id_closes_the_stream_and_events_filter() -> Result<()> {
    let node = TestNode::start(vec![]).await?;
    let (_, run) = node
        .post(
            "executions",
            &json!({"action": "core.local", "parameters": {"cmd": "sleep 0.5"}}),
        )
        .await?;
    let id = run["id"].as_str().unwrap_or_default();
    let url = format!(
        "{}/stream/v1/stream?events=st2.execution__update&end_execution_id={id}",
        node.root
    );
    let resp = node.http.get(&url).send().await?;
    // The stream ends by itself once the execution is over.
    let events = read_events(resp, |_| false).await?;
    assert!(
        events.iter().all(|(n, _)| n == "st2.execution__update"),
        "{events:?}"
    );
    assert_eq!(
        events.last().map(|(_, d)| d["status"].clone()),
        Some(json!("succeeded"))
    );
    Ok(())
}

/// Chatty output goes out in batches (at most one message per short
/// window), yet every line arrives, in order, live and stored.
#[tokio::test]
async fn chatty_output_is_batched_yet_complete_and_in_order() -> Result<()> {
    let node = TestNode::start(vec![]).await?;
    let script = "import sys, time\n\
                  for i in range(1, 501):\n    \
                  print(f'line{i}', flush=True)\n    \
                  time.sleep(0.001)\n    \
                  if i == 250: print('half', file=sys.stderr, flush=True)\n";
    let (status, run) = node
        .post(
            "executions",
            &json!({"action": "core.local", "parameters": {
                "cmd": format!("python3 -c \"{script}\"")}}),
        )
        .await?;
    assert_eq!(status, 201, "{run}");
    let id = run["id"].as_str().context("id")?.to_string();
    let done = node.finished(&id).await?;
    assert_eq!(done["status"], "succeeded", "{done}");

    let expected: String = (1..=500).map(|i| format!("line{i}\n")).collect();
    let stored = node
        .http
        .get(format!(
            "{}/executions/{id}/output?output_type=stdout",
            node.base
        ))
        .send()
        .await?
        .text()
        .await?;
    assert_eq!(stored, expected);

    // The stream replays the stored messages: fewer than the lines, and
    // their data, joined, is the output in order.
    let resp = node
        .http
        .get(format!("{}/v1/executions/{id}/output", node.stream_root()?))
        .timeout(Duration::from_secs(30))
        .send()
        .await?;
    let events = read_events(resp, |_| false).await?;
    let chunks: Vec<(&str, &str)> = events
        .iter()
        .filter(|(n, _)| n == "st2.execution.output__create")
        .map(|(_, d)| {
            (
                d["output_type"].as_str().unwrap_or(""),
                d["data"].as_str().unwrap_or(""),
            )
        })
        .collect();
    let stdout: String = chunks
        .iter()
        .filter(|(t, _)| *t == "stdout")
        .map(|(_, d)| *d)
        .collect();
    assert_eq!(stdout, expected);
    let stderr: Vec<&str> = chunks
        .iter()
        .filter(|(t, _)| *t == "stderr")
        .map(|(_, d)| *d)
        .collect();
    assert_eq!(stderr, ["half\n"]);
    assert!(
        chunks.len() < 250,
        "{} messages for 501 lines: not batched",
        chunks.len()
    );
    Ok(())
}

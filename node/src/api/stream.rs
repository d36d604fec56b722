//! `GET /stream/v1/stream`: StackStorm's live event stream as Server-Sent
//! Events. Execution changes come from a watch on the `executions` bucket
//! (`st2.execution__create`, `st2.execution__update`), live output from the
//! runners' `squall.output.*` subjects (`st2.execution.output__create`),
//! announcements from `squall.announce.>` (`st2.announcement__<route>`).
//! Filters: `events`, `action_refs`, `execution_ids`, and
//! `end_execution_id` (the stream ends once that execution has finished).
//! `GET /stream/v1/executions/{id}/output` follows one execution's output
//! from the `OUTPUT` stream until it has finished.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use bytes::Bytes;
use futures::stream::{self, BoxStream, Stream, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use squall_domain::execution::ExecutionRecord;

use squall_actors::bus::Bus;

use super::error::{ApiError, ApiQuery};
use super::executions::{view, OutputQuery};
use super::ApiState;

const CREATE: &str = "st2.execution__create";
const UPDATE: &str = "st2.execution__update";
const OUTPUT: &str = "st2.execution.output__create";

/// How often an idle stream sends a heartbeat comment. Local to the
/// `/stream` endpoint: part of its server-sent-events protocol, which
/// keeps proxies from closing an idle connection.
const HEARTBEAT: Duration = Duration::from_secs(15);

/// Query of `GET /stream`: comma-separated lists.
#[derive(Debug, Default, Deserialize)]
pub struct StreamQuery {
    #[serde(default)]
    events: Option<String>,
    #[serde(default)]
    action_refs: Option<String>,
    #[serde(default)]
    execution_ids: Option<String>,
    #[serde(default)]
    end_execution_id: Option<String>,
}

fn list(text: Option<&str>) -> Option<Vec<String>> {
    text.map(|t| {
        t.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    })
}

struct Filter {
    events: Option<Vec<String>>,
    action_refs: Option<Vec<String>>,
    execution_ids: Option<Vec<String>>,
}

impl Filter {
    fn keeps(&self, event: &str, execution_id: &str, action_ref: &str) -> bool {
        let has = |list: &Option<Vec<String>>, v: &str| {
            list.as_ref().is_none_or(|l| l.iter().any(|x| x == v))
        };
        has(&self.events, event)
            && has(&self.execution_ids, execution_id)
            && has(&self.action_refs, action_ref)
    }
}

/// One thing that happened, before filtering.
struct Happened {
    event: String,
    execution_id: String,
    action_ref: String,
    data: Value,
    /// The execution reached a final status.
    finished: bool,
}

fn from_record(record: &ExecutionRecord) -> Happened {
    let event = if record.log.len() <= 1 {
        CREATE
    } else {
        UPDATE
    };
    Happened {
        event: event.to_string(),
        execution_id: record.id.clone(),
        action_ref: record.action.action_ref.clone(),
        data: view(record, false),
        finished: record.status.is_completed(),
    }
}

/// The events of one stored change. A runner claims an execution
/// `scheduled` and `running` in one write (both log entries carry its
/// time); StackStorm's stream shows each status, so each step written at
/// once gets its own update, in order.
fn from_change(record: &ExecutionRecord) -> Vec<Happened> {
    let last = record.log.last().map(|l| l.timestamp);
    let steps = record
        .log
        .iter()
        .rev()
        .take_while(|l| Some(l.timestamp) == last)
        .count();
    let mut events = Vec::with_capacity(steps);
    if record.log.len() > steps {
        for entry in &record.log[record.log.len() - steps..record.log.len() - 1] {
            let mut step = record.clone();
            step.status = entry.status;
            events.push(from_record(&step));
        }
    }
    events.push(from_record(record));
    events
}

/// `GET /stream/v1/stream`.
pub async fn stream(
    State(st): State<ApiState>,
    ApiQuery(q): ApiQuery<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let filter = Filter {
        events: list(q.events.as_deref()),
        action_refs: list(q.action_refs.as_deref()),
        execution_ids: list(q.execution_ids.as_deref()),
    };
    let end = q.end_execution_id;
    let records = st
        .bus
        .executions
        .raw()
        .watch_all()
        .await
        .map_err(|e| ApiError::Unavailable(format!("cannot watch executions: {e}")))?
        .filter_map(|entry| async move {
            let entry = entry.ok()?;
            let record: ExecutionRecord = serde_json::from_slice(&entry.value).ok()?;
            Some(stream::iter(from_change(&record)))
        })
        .flatten();
    let output = st
        .bus
        .client
        .subscribe(squall_actors::bus::output_subject("*"))
        .await
        .map_err(|e| ApiError::Unavailable(format!("cannot follow output: {e}")))?
        .filter_map(|msg| async move {
            let data: Value = serde_json::from_slice(&msg.payload).ok()?;
            Some(Happened {
                event: OUTPUT.to_string(),
                execution_id: data["execution_id"].as_str()?.to_string(),
                action_ref: data["action_ref"].as_str().unwrap_or_default().to_string(),
                data,
                finished: false,
            })
        });
    // Announcements belong to no execution or action.
    let announcements = st
        .bus
        .client
        .subscribe(squall_actors::announce::ALL_SUBJECTS)
        .await
        .map_err(|e| ApiError::Unavailable(format!("cannot follow announcements: {e}")))?
        .filter_map(|msg| async move {
            let route = msg
                .subject
                .as_str()
                .strip_prefix("squall.announce.")?
                .to_string();
            Some(Happened {
                event: format!("st2.announcement__{route}"),
                execution_id: String::new(),
                action_ref: String::new(),
                data: serde_json::from_slice(&msg.payload).ok()?,
                finished: false,
            })
        });
    let output = stream::select(output, announcements);
    // An end execution that has already finished: its last state, then
    // the end.
    let already = match end.as_deref() {
        Some(id) => st
            .bus
            .execution(id)
            .await?
            .filter(|(r, _)| r.status.is_completed())
            .map(|(r, _)| from_record(&r)),
        None => None,
    };
    // Output first whenever both have something: a runner sends an
    // execution's output before its final record, and a client that stops
    // at the final update must not lose the last lines to a coin toss.
    let merged =
        stream::select_with_strategy(output, records, |_: &mut ()| stream::PollNext::Left).boxed();
    let merged = match already {
        Some(last) => stream::iter([last]).boxed(),
        None => merged,
    };
    // Ends right after the end execution's final event. The client is
    // counted (`squall_stream_clients`) while the stream lives.
    let client = squall_actors::metrics::stream_client();
    let events = stream::unfold(
        (merged, false, client),
        move |(mut source, over, client)| {
            let end = end.clone();
            async move {
                if over {
                    return None;
                }
                let h = source.next().await?;
                let last = end.as_deref() == Some(h.execution_id.as_str()) && h.finished;
                Some((h, (source, last, client)))
            }
        },
    )
    .filter(move |h| futures::future::ready(filter.keeps(&h.event, &h.execution_id, &h.action_ref)))
    .map(|h| {
        Ok(Event::default()
            .event(h.event)
            .data(json!(h.data).to_string()))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(HEARTBEAT)))
}

/// Where `GET /stream/v1/executions/{id}/output` is.
enum Phase {
    /// The execution runs: chunks as they come, and its record's changes.
    Running,
    /// It has finished: chunks up to the last one stored, then `EOF`.
    Draining(Option<u64>),
    Done,
}

struct OutputFollow {
    chunks: BoxStream<'static, (u64, Bytes)>,
    watch: BoxStream<'static, bool>,
    phase: Phase,
    seen: u64,
    bus: Bus,
    id: String,
    wanted: Option<String>,
}

impl OutputFollow {
    /// The next event, or `None` once `EOF` has been sent.
    async fn next_event(&mut self) -> Option<Event> {
        loop {
            match self.phase {
                Phase::Done => return None,
                Phase::Draining(last) if last.is_none_or(|l| self.seen >= l) => {
                    self.phase = Phase::Done;
                    return Some(Event::default().event("EOF").data(""));
                }
                Phase::Draining(_) => {
                    let (seq, chunk) = self.chunks.next().await?;
                    if let Some(event) = self.chunk_event(seq, &chunk) {
                        return Some(event);
                    }
                }
                Phase::Running => {
                    tokio::select! {
                        biased;
                        chunk = self.chunks.next() => {
                            let (seq, chunk) = chunk?;
                            if let Some(event) = self.chunk_event(seq, &chunk) {
                                return Some(event);
                            }
                        }
                        finished = self.watch.next() => {
                            if finished? {
                                let last = self.bus.last_output_sequence(&self.id).await.ok()?;
                                self.phase = Phase::Draining(last);
                            }
                        }
                    }
                }
            }
        }
    }

    fn chunk_event(&mut self, seq: u64, chunk: &[u8]) -> Option<Event> {
        self.seen = seq;
        let data: Value = serde_json::from_slice(chunk).ok()?;
        if self
            .wanted
            .as_deref()
            .is_some_and(|w| data["output_type"] != w)
        {
            return None;
        }
        Some(Event::default().event(OUTPUT).data(data.to_string()))
    }
}

/// `GET /stream/v1/executions/{id}/output`: the execution's output so far,
/// then live, as `st2.execution.output__create` events; `EOF` once the
/// execution has finished and every chunk is out. `output_type` picks
/// `stdout` or `stderr`.
pub async fn output(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<OutputQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let wanted = q.wanted()?.map(str::to_string);
    // Watch first, then read: a finish between the two is still seen.
    let watch = st
        .bus
        .executions
        .raw()
        .watch(id.as_str())
        .await
        .map_err(|e| ApiError::Unavailable(format!("cannot watch execution {id}: {e}")))?
        .map(|entry| {
            entry
                .ok()
                .and_then(|e| serde_json::from_slice::<ExecutionRecord>(&e.value).ok())
                .is_some_and(|r| r.status.is_completed())
        })
        .boxed();
    let Some((record, _)) = st.bus.execution(&id).await? else {
        return Err(ApiError::NotFound(format!("execution {id} not found")));
    };
    let (_, chunks) = st.bus.output_chunks(&id).await?;
    let phase = if record.status.is_completed() {
        Phase::Draining(st.bus.last_output_sequence(&id).await?)
    } else {
        Phase::Running
    };
    let follow = OutputFollow {
        chunks,
        watch,
        phase,
        seen: 0,
        bus: st.bus.clone(),
        id,
        wanted,
    };
    let client = squall_actors::metrics::stream_client();
    let events = stream::unfold((follow, client), |(mut follow, client)| async move {
        let event = follow.next_event().await?;
        Some((Ok(event), (follow, client)))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(HEARTBEAT)))
}

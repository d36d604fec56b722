//! How fast the audit trail leaves the node: a receiver this tool runs on
//! loopback and the started node exports to, either syslog (RFC 6587
//! octet-counted frames over TCP, as the node's `syslog` exporter with
//! `transport: tcp` sends them) or a Splunk HTTP Event Collector (batches
//! of JSON envelopes, each answered with an `ackId` that the ack endpoint
//! then confirms, as with indexer acknowledgement). The report says how
//! many events arrived, at what rate, and how long after the load the
//! export caught up.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use crate::LoadError;

/// Arrivals so far.
#[derive(Debug, Default)]
struct Arrivals {
    events: u64,
    first: Option<Instant>,
    last: Option<Instant>,
}

/// Which receiver the node exports to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Receiver {
    /// Syslog over TCP.
    Syslog,
    /// A Splunk HTTP Event Collector with indexer acknowledgement.
    Hec,
}

/// The receiver and the node.yaml section that points the node at it.
#[derive(Debug, Clone)]
pub struct AuditExport {
    receiver: Receiver,
    port: u16,
    arrivals: Arc<Mutex<Arrivals>>,
}

/// What a run's export came to, in its report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Where the events went.
    pub receiver: Receiver,
    /// Events the receiver got (the whole run, start-up events included).
    pub events_received: u64,
    /// Events on the `AUDIT` stream when the export had settled (none
    /// without a NATS URL).
    pub events_stored: Option<u64>,
    /// Events over the span from the first arrival to the last.
    pub per_s: f64,
    /// Seconds from the end of the load to the last arrival: how far the
    /// export trailed the load.
    pub trailed_load_s: f64,
}

/// Without the stream's count: how long the receiver's count stays
/// unchanged before the export counts as settled.
const SETTLED: Duration = Duration::from_secs(1);
/// The longest wait for the export to settle after the load.
const SETTLE_LIMIT: Duration = Duration::from_secs(120);

impl AuditExport {
    /// Starts `receiver` on 127.0.0.1 (it serves until the process
    /// ends).
    pub async fn start(receiver: Receiver) -> Result<AuditExport, LoadError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| LoadError::io("binding the audit receiver", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| LoadError::io("the audit receiver's address", e))?
            .port();
        let arrivals = Arc::new(Mutex::new(Arrivals::default()));
        let shared = arrivals.clone();
        match receiver {
            Receiver::Syslog => {
                tokio::spawn(async move {
                    while let Ok((conn, _)) = listener.accept().await {
                        tokio::spawn(read_frames(conn, shared.clone()));
                    }
                });
            }
            Receiver::Hec => {
                let app = axum::Router::new()
                    .route("/services/collector/event", axum::routing::post(hec_event))
                    .route("/services/collector/ack", axum::routing::post(hec_ack))
                    .with_state(Hec {
                        arrivals: shared,
                        next_ack: Arc::new(std::sync::atomic::AtomicU64::new(0)),
                    });
                tokio::spawn(async move { axum::serve(listener, app).await });
            }
        }
        Ok(AuditExport {
            receiver,
            port,
            arrivals,
        })
    }

    /// The node.yaml section exporting the audit trail here.
    pub fn node_config(&self) -> String {
        let exporter = match self.receiver {
            Receiver::Syslog => format!(
                "type: syslog\n      address: 127.0.0.1:{}\n      transport: tcp",
                self.port
            ),
            Receiver::Hec => format!(
                "type: splunk_hec\n      url: http://127.0.0.1:{}\n      token: loadtest",
                self.port
            ),
        };
        format!("audit:\n  exporters:\n    - name: loadtest\n      {exporter}\n")
    }

    fn events(&self) -> u64 {
        self.lock().events
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Arrivals> {
        self.arrivals.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The figures, once the export has settled: every event on the
    /// `AUDIT` stream of `nats_url` arrived, or (without a URL) nothing
    /// arrived for [`SETTLED`]; at most [`SETTLE_LIMIT`] after the load
    /// ended at `load_end`.
    pub async fn figures(
        &self,
        load_end: Instant,
        nats_url: Option<&str>,
    ) -> Result<Figures, LoadError> {
        let mut audit = match nats_url {
            Some(url) => {
                let client = async_nats::connect(url)
                    .await
                    .map_err(|e| LoadError::nats("connect", e))?;
                let js = async_nats::jetstream::new(client);
                Some(
                    js.get_stream("AUDIT")
                        .await
                        .map_err(|e| LoadError::nats("open stream AUDIT", e))?,
                )
            }
            None => None,
        };
        let mut last = (self.events(), Instant::now());
        let events_stored = loop {
            let stored = match &mut audit {
                Some(stream) => Some(
                    stream
                        .info()
                        .await
                        .map_err(|e| LoadError::nats("AUDIT stream info", e))?
                        .state
                        .messages,
                ),
                None => None,
            };
            let now = self.events();
            if now != last.0 {
                last = (now, Instant::now());
            }
            let done = match stored {
                Some(s) => now >= s,
                None => last.1.elapsed() >= SETTLED,
            };
            if done || load_end.elapsed() >= SETTLE_LIMIT {
                break stored;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let a = self.lock();
        let span = match (a.first, a.last) {
            (Some(f), Some(l)) => l.duration_since(f).as_secs_f64(),
            _ => 0.0,
        };
        Ok(Figures {
            receiver: self.receiver,
            events_received: a.events,
            events_stored,
            per_s: if span > 0.0 {
                a.events as f64 / span
            } else {
                0.0
            },
            trailed_load_s: a
                .last
                .map_or(0.0, |l| l.saturating_duration_since(load_end).as_secs_f64()),
        })
    }
}

fn arrived(arrivals: &Mutex<Arrivals>, events: u64) {
    let now = Instant::now();
    let mut a = arrivals.lock().unwrap_or_else(PoisonError::into_inner);
    a.events += events;
    a.first.get_or_insert(now);
    a.last = Some(now);
}

/// The HEC receiver's state.
#[derive(Debug, Clone)]
struct Hec {
    arrivals: Arc<Mutex<Arrivals>>,
    next_ack: Arc<std::sync::atomic::AtomicU64>,
}

/// `POST /services/collector/event`: counts the concatenated envelopes and
/// answers with the batch's ack id.
async fn hec_event(
    axum::extract::State(hec): axum::extract::State<Hec>,
    body: axum::body::Bytes,
) -> axum::Json<serde_json::Value> {
    let events = serde_json::Deserializer::from_slice(&body)
        .into_iter::<serde::de::IgnoredAny>()
        .take_while(Result::is_ok)
        .count() as u64;
    arrived(&hec.arrivals, events);
    let ack = hec
        .next_ack
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    axum::Json(serde_json::json!({"text": "Success", "code": 0, "ackId": ack}))
}

/// `POST /services/collector/ack`: every batch counted is indexed.
async fn hec_ack(
    axum::Json(asked): axum::Json<serde_json::Value>,
) -> axum::Json<serde_json::Value> {
    let acks: serde_json::Map<String, serde_json::Value> = asked["acks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(serde_json::Value::as_u64)
        .map(|id| (id.to_string(), serde_json::Value::Bool(true)))
        .collect();
    axum::Json(serde_json::json!({ "acks": acks }))
}

/// Counts the octet-counted frames (`LEN SP MSG`) of one connection until
/// it closes or a frame is malformed.
async fn read_frames(conn: tokio::net::TcpStream, arrivals: Arc<Mutex<Arrivals>>) {
    let mut reader = BufReader::new(conn);
    let mut len = Vec::new();
    let mut msg = Vec::new();
    loop {
        len.clear();
        match reader.read_until(b' ', &mut len).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let Some(n) = std::str::from_utf8(&len[..len.len() - 1])
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
        else {
            return;
        };
        msg.resize(n, 0);
        if reader.read_exact(&mut msg).await.is_err() {
            return;
        }
        arrived(&arrivals, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn octet_counted_frames_are_counted_across_writes() {
        let export = AuditExport::start(Receiver::Syslog)
            .await
            .expect("receiver");
        assert!(export.node_config().contains("transport: tcp"));
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", export.port))
            .await
            .expect("connect");
        let frame = |m: &str| format!("{} {m}", m.len());
        let all = [frame("<133>1 one"), frame("<133>1 two 2"), frame("x")].concat();
        let (a, b) = all.split_at(7);
        conn.write_all(a.as_bytes()).await.expect("write");
        conn.flush().await.expect("flush");
        conn.write_all(b.as_bytes()).await.expect("write");
        drop(conn);
        let load_end = Instant::now();
        let f = export.figures(load_end, None).await.expect("figures");
        assert_eq!(f.events_received, 3);
        assert_eq!(f.events_stored, None);
    }
}

#[cfg(test)]
mod hec_tests {
    use super::*;

    #[tokio::test]
    async fn a_hec_batch_is_counted_and_its_ack_confirmed() {
        let export = AuditExport::start(Receiver::Hec).await.expect("receiver");
        assert!(export.node_config().contains("type: splunk_hec"));
        let http = reqwest::Client::new();
        let url = |p: &str| format!("http://127.0.0.1:{}/services/collector/{p}", export.port);
        let answer: serde_json::Value = http
            .post(url("event"))
            .body(r#"{"event":{"a":1}}{"event":{"a":2}}{"event":{"a":3}}"#)
            .send()
            .await
            .expect("post")
            .json()
            .await
            .expect("json");
        assert_eq!(answer["code"], 0);
        let ack = answer["ackId"].as_u64().expect("an ack id");
        let acks: serde_json::Value = http
            .post(url("ack"))
            .json(&serde_json::json!({"acks": [ack]}))
            .send()
            .await
            .expect("post")
            .json()
            .await
            .expect("json");
        assert_eq!(acks["acks"][ack.to_string()], true);
        assert_eq!(export.events(), 3);
    }
}

//! The Splunk HTTP Event Collector destination.
//!
//! A batch is one `POST /services/collector/event` of concatenated JSON
//! envelopes (`time`, `host`, `source`, `sourcetype`, `event`, `fields`
//! with `audit_id` and `stream_seq`), `Authorization: Splunk <token>`, on
//! this exporter's channel (`X-Splunk-Request-Channel`). With indexer
//! acknowledgement the batch counts as delivered only once
//! `POST /services/collector/ack` answers `true` for its `ackId`; an ack
//! still false after `ack_timeout_secs` sends the batch again. Clones of
//! the sink, one per delivery loop, keep `in_flight` batches posted and
//! awaiting their acks at once on the same channel.
//!
//! Answers: 429, 503, other 5xx and network errors are retried (honouring
//! `Retry-After`); codes 5, 6, 12, 13 and 15 (bad data) split the batch
//! until the refused event is alone, which is then refused for good (the
//! dead-letter stream); 401/403 and codes 7, 10, 11, 14, 16 (credentials
//! or settings) stop the exporter.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::config::HecConfig;
use super::export::{Fate, Pending, Sink, SinkError};

/// A Splunk HEC. Clones share the HTTP client and the channel: one per
/// batch in flight.
#[derive(Debug, Clone)]
pub struct HecSink {
    cfg: HecConfig,
    client: reqwest::Client,
    channel: String,
}

/// How one POST went.
enum Posted {
    /// Accepted, with its ack id when indexer acknowledgement is on.
    Accepted(Option<u64>),
    /// Refused because of the data (codes 5, 6, 12, 13, 15).
    BadData(String),
}

impl HecSink {
    /// A sink for `cfg`; its channel is `cfg.channel` or a new GUID.
    pub fn new(cfg: HecConfig) -> Result<Self, SinkError> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(cfg.request_timeout_secs))
            .build()
            .map_err(|e| SinkError::Fatal(format!("HTTP client: {e}")))?;
        let channel = cfg.channel.clone().unwrap_or_else(new_guid);
        Ok(HecSink {
            cfg,
            client,
            channel,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.cfg.url.trim_end_matches('/'))
    }

    fn envelope(&self, p: &Pending) -> Value {
        let e = &p.event;
        let mut v = json!({
            "time": e.time.timestamp_micros() as f64 / 1e6,
            "host": e.node,
            "source": "squall",
            "sourcetype": self.cfg.sourcetype,
            "event": e,
            "fields": {"audit_id": e.audit_id, "stream_seq": p.seq, "action": e.action},
        });
        if let Some(index) = &self.cfg.index {
            v["index"] = json!(index);
        }
        v
    }

    async fn post(&self, batch: &[Pending]) -> Result<Posted, SinkError> {
        let mut body = String::new();
        for p in batch {
            body.push_str(&self.envelope(p).to_string());
        }
        let resp = self
            .client
            .post(self.url("/services/collector/event"))
            .header("Authorization", format!("Splunk {}", self.cfg.token))
            .header("X-Splunk-Request-Channel", &self.channel)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| network(&self.cfg.url, &e))?;
        let status = resp.status().as_u16();
        let after = retry_after(&resp);
        let answer: Value = resp.json().await.unwrap_or(Value::Null);
        let code = answer.get("code").and_then(Value::as_i64);
        let text = answer
            .get("text")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        match (status, code) {
            (200, _) => Ok(Posted::Accepted(
                answer.get("ackId").and_then(Value::as_u64),
            )),
            (400, Some(5 | 6 | 12 | 13 | 15)) => Ok(Posted::BadData(format!(
                "HEC refused the data: {text} (code {})",
                code.unwrap_or_default()
            ))),
            _ => Err(classify(status, code, &text, after)),
        }
    }

    /// Polls the ack of `ack_id` until it is true; an error when it is not
    /// within the ack timeout (the batch is sent again).
    async fn await_ack(&self, ack_id: u64) -> Result<(), SinkError> {
        let deadline = Instant::now() + Duration::from_secs(self.cfg.ack_timeout_secs);
        let mut pause = Duration::from_millis(50);
        loop {
            let resp = self
                .client
                .post(self.url("/services/collector/ack"))
                .header("Authorization", format!("Splunk {}", self.cfg.token))
                .header("X-Splunk-Request-Channel", &self.channel)
                .json(&json!({"acks": [ack_id]}))
                .send()
                .await;
            match resp {
                Ok(resp) if resp.status().is_success() => {
                    let answer: Value = resp.json().await.unwrap_or(Value::Null);
                    if answer["acks"][ack_id.to_string()].as_bool() == Some(true) {
                        return Ok(());
                    }
                }
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let after = retry_after(&resp);
                    let answer: Value = resp.json().await.unwrap_or(Value::Null);
                    let err = classify(
                        status,
                        answer.get("code").and_then(Value::as_i64),
                        answer.get("text").and_then(Value::as_str).unwrap_or(""),
                        after,
                    );
                    if matches!(err, SinkError::Fatal(_)) {
                        return Err(err);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "HEC ack poll failed"),
            }
            if Instant::now() + pause > deadline {
                return Err(SinkError::Retry {
                    reason: format!(
                        "HEC did not confirm ack {ack_id} within {} s; sending the batch again",
                        self.cfg.ack_timeout_secs
                    ),
                    after: Some(Duration::ZERO),
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// Delivers `batch`, splitting it when the data is refused. A part
    /// that met a busy or failing receiver is `Again`, and so is all that
    /// follows it (the exporter backs off); what was confirmed stays so.
    fn deliver_split<'a>(
        &'a self,
        batch: &'a [Pending],
    ) -> futures::future::BoxFuture<'a, Result<Vec<Fate>, SinkError>> {
        Box::pin(async move {
            let posted = match self.post(batch).await {
                Ok(p) => p,
                Err(e @ SinkError::Retry { .. }) => return Ok(vec![Fate::Again(e); batch.len()]),
                Err(fatal) => return Err(fatal),
            };
            match posted {
                Posted::Accepted(ack) => {
                    if self.cfg.indexer_ack {
                        let ack = ack.ok_or_else(|| {
                            SinkError::Fatal(
                                "HEC answered without an ackId: indexer acknowledgement is off for this token; enable it or set indexer_ack: false".into(),
                            )
                        })?;
                        match self.await_ack(ack).await {
                            Ok(()) => {}
                            Err(e @ SinkError::Retry { .. }) => {
                                return Ok(vec![Fate::Again(e); batch.len()])
                            }
                            Err(fatal) => return Err(fatal),
                        }
                    }
                    Ok(vec![Fate::Delivered; batch.len()])
                }
                Posted::BadData(reason) if batch.len() == 1 => Ok(vec![Fate::Rejected(reason)]),
                Posted::BadData(_) => {
                    let (a, b) = batch.split_at(batch.len() / 2);
                    let mut fates = self.deliver_split(a).await?;
                    if let Some(Fate::Again(e)) = fates.iter().find(|f| matches!(f, Fate::Again(_)))
                    {
                        let e = e.clone();
                        fates.extend(std::iter::repeat_n(Fate::Again(e), b.len()));
                    } else {
                        fates.extend(self.deliver_split(b).await?);
                    }
                    Ok(fates)
                }
            }
        })
    }
}

impl Sink for HecSink {
    async fn deliver(&mut self, batch: &[Pending]) -> Result<Vec<Fate>, SinkError> {
        self.deliver_split(batch).await
    }
}

/// What an unsuccessful answer means.
fn classify(status: u16, code: Option<i64>, text: &str, after: Option<Duration>) -> SinkError {
    let said = if text.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status} {text:?} (code {})", code.unwrap_or(-1))
    };
    match (status, code) {
        (401 | 403, _) => SinkError::Fatal(format!(
            "HEC refused the credentials: {said}; check the exporter's token"
        )),
        (400, Some(7 | 10 | 11 | 14 | 16)) => {
            SinkError::Fatal(format!("HEC refused the exporter's settings: {said}"))
        }
        (429 | 500..=599, _) => SinkError::Retry {
            reason: format!("HEC busy or failing: {said}"),
            after,
        },
        _ => SinkError::Fatal(format!("HEC answered {said}; check the exporter's url")),
    }
}

fn network(url: &str, e: &reqwest::Error) -> SinkError {
    SinkError::Retry {
        reason: format!("HEC at {url} unreachable: {e}"),
        after: None,
    }
}

fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    resp.headers()
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
        .map(Duration::from_secs)
}

/// A random GUID (`8-4-4-4-12` hex), the shape HEC wants for a channel.
fn new_guid() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified_as_splunk_documents_them() {
        assert!(matches!(
            classify(403, Some(4), "Invalid token", None),
            SinkError::Fatal(m) if m.contains("credentials")
        ));
        assert!(matches!(
            classify(401, Some(2), "Token is required", None),
            SinkError::Fatal(_)
        ));
        assert!(matches!(
            classify(400, Some(7), "Incorrect index", None),
            SinkError::Fatal(_)
        ));
        assert!(matches!(
            classify(503, Some(9), "Server is busy", Some(Duration::from_secs(2))),
            SinkError::Retry { after: Some(d), .. } if d == Duration::from_secs(2)
        ));
        assert!(matches!(
            classify(429, None, "", None),
            SinkError::Retry { .. }
        ));
        assert!(matches!(
            classify(500, Some(8), "x", None),
            SinkError::Retry { .. }
        ));
        assert_eq!(new_guid().len(), 36);
    }
}

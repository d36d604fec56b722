//! The syslog destination: RFC 5424 messages with structured data, framed
//! by octet counting (RFC 6587) over TCP.
//!
//! Each message is `<PRI>1 TIME HOST squall PID ACTION [meta ...][origin
//! ...]` (plus `[audit@<PEN> ...]` when an enterprise number is
//! configured), then a BOM and the event as JSON. A message longer than
//! `max_message_bytes` has its `data` cut (`"truncated": true`), never the
//! frame, so a receiver never splits it.
//!
//! Plain TCP has no receipts: a write is "delivered" once the kernel took
//! it. So the sink keeps what it wrote within the last
//! `resend_window_secs`, and after a broken connection writes those again
//! on the new one before anything else (duplicates keep their `audit_id`).
//! What is lost is what the receiver took but had not stored, written
//! more than that window before the failure was noticed.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::config::SyslogConfig;
use super::export::{Fate, Pending, Sink, SinkError};
use super::AuditEvent;

/// Severity of every audit message: 5, notice.
const SEVERITY: u8 = 5;
/// Byte order mark opening a UTF-8 MSG (RFC 5424 6.4).
const BOM: &str = "\u{feff}";
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Formats one event as an RFC 5424 message (no framing) of at most
/// `max` octets, cutting its data when needed.
pub fn format_message(cfg: &SyslogConfig, seq: u64, event: &AuditEvent) -> String {
    let pri = u16::from(cfg.facility.code()) * 8 + u16::from(SEVERITY);
    let host = printable(&event.node, 255);
    let msgid = printable(&event.action, 32);
    let mut sd = format!(
        "[meta sequenceId=\"{}\"][origin software=\"squall\" swVersion=\"{}\"]",
        seq % 2_147_483_647 + 1,
        env!("CARGO_PKG_VERSION")
    );
    if let Some(pen) = cfg.enterprise_number {
        sd.push_str(&format!(
            "[audit@{pen} audit_id=\"{}\" outcome=\"{}\" trace_id=\"{}\"]",
            sd_escape(&event.audit_id),
            sd_escape(&event.outcome.status),
            sd_escape(event.trace_id.as_deref().unwrap_or("")),
        ));
    }
    let header = format!(
        "<{pri}>1 {} {host} squall {} {msgid} {sd} {BOM}",
        squall_domain::time::format(&event.time),
        std::process::id(),
    );
    let mut body = match serde_json::to_value(event) {
        Ok(Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    body.insert("stream_seq".into(), seq.into());
    let whole = Value::Object(body.clone()).to_string();
    if header.len() + whole.len() <= cfg.max_message_bytes {
        return header + &whole;
    }
    // Cut the data: keep a prefix of its JSON text as a string.
    let data_text = body.get("data").map(Value::to_string).unwrap_or_default();
    body.insert("truncated".into(), true.into());
    body.insert("data".into(), Value::String(String::new()));
    let bare = Value::Object(body.clone()).to_string();
    let mut room = cfg
        .max_message_bytes
        .saturating_sub(header.len() + bare.len());
    loop {
        let mut cut = room.min(data_text.len());
        while !data_text.is_char_boundary(cut) {
            cut -= 1;
        }
        body.insert("data".into(), Value::String(data_text[..cut].to_string()));
        let text = Value::Object(body.clone()).to_string();
        if header.len() + text.len() <= cfg.max_message_bytes || cut == 0 {
            return header + &text;
        }
        // Escapes made it longer: take off the excess and try again.
        room = cut.saturating_sub(header.len() + text.len() - cfg.max_message_bytes);
    }
}

/// RFC 5424 header fields: printable US-ASCII, at most `max` characters,
/// `-` when empty.
fn printable(s: &str, max: usize) -> String {
    let out: String = s
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if out.is_empty() {
        "-".into()
    } else {
        out
    }
}

/// Escapes `"`, `\` and `]` in an SD-PARAM value.
fn sd_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `MSG-LEN SP MSG`.
pub fn frame(message: &str) -> Vec<u8> {
    let mut out = format!("{} ", message.len()).into_bytes();
    out.extend_from_slice(message.as_bytes());
    out
}

/// A syslog receiver over TCP.
#[derive(Debug)]
pub struct SyslogSink {
    cfg: SyslogConfig,
    conn: Option<TcpStream>,
    /// Frames written, with when: the resend window's cover.
    recent: VecDeque<(Instant, Vec<u8>)>,
    /// When the last connection was found broken, until the frames
    /// written before it are sent again.
    broken_at: Option<Instant>,
}

impl SyslogSink {
    pub fn new(cfg: SyslogConfig) -> Self {
        SyslogSink {
            cfg,
            conn: None,
            recent: VecDeque::new(),
            broken_at: None,
        }
    }

    fn window(&self) -> Duration {
        Duration::from_secs(self.cfg.resend_window_secs)
    }

    async fn connect(&mut self) -> Result<(), SinkError> {
        let addr = &self.cfg.address;
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| SinkError::Retry {
                reason: format!("syslog receiver {addr}: no connection within 5 s"),
                after: None,
            })?
            .map_err(|e| SinkError::Retry {
                reason: format!("syslog receiver {addr}: cannot connect: {e}"),
                after: None,
            })?;
        let _ = stream.set_nodelay(true);
        self.conn = Some(stream);
        if let Some(broken) = self.broken_at {
            // Everything written within the window before the break goes
            // again, first.
            let since = broken.checked_sub(self.window()).unwrap_or(broken);
            let replay: Vec<u8> = self
                .recent
                .iter()
                .filter(|(at, _)| *at >= since)
                .flat_map(|(_, f)| f.iter().copied())
                .collect();
            let frames = self.recent.iter().filter(|(at, _)| *at >= since).count();
            tracing::warn!(receiver = %addr, frames, "syslog reconnected; sending the last seconds again");
            self.write(&replay).await?;
            self.broken_at = None;
        }
        Ok(())
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), SinkError> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(SinkError::Retry {
                reason: "not connected".into(),
                after: None,
            });
        };
        let written = async {
            conn.write_all(bytes).await?;
            conn.flush().await
        }
        .await;
        if let Err(e) = written {
            self.conn = None;
            self.broken_at.get_or_insert_with(Instant::now);
            return Err(SinkError::Retry {
                reason: format!("syslog receiver {}: write failed: {e}", self.cfg.address),
                after: None,
            });
        }
        Ok(())
    }
}

impl Sink for SyslogSink {
    async fn deliver(&mut self, batch: &[Pending]) -> Result<Vec<Fate>, SinkError> {
        if self.conn.is_none() {
            self.connect().await?;
        }
        let frames: Vec<Vec<u8>> = batch
            .iter()
            .map(|p| frame(&format_message(&self.cfg, p.seq, &p.event)))
            .collect();
        let bytes: Vec<u8> = frames.iter().flatten().copied().collect();
        self.write(&bytes).await?;
        let now = Instant::now();
        let window = self.window();
        while self
            .recent
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > window)
        {
            self.recent.pop_front();
        }
        self.recent.extend(frames.into_iter().map(|f| (now, f)));
        Ok(vec![Fate::Delivered; batch.len()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{config::Facility, config::SyslogTransport, Object};

    fn cfg(max: usize) -> SyslogConfig {
        SyslogConfig {
            name: "s".into(),
            address: "127.0.0.1:1".into(),
            transport: SyslogTransport::Tcp,
            facility: Facility::Audit,
            max_message_bytes: max,
            resend_window_secs: 10,
            batch_size: 10,
            enterprise_number: Some(99),
        }
    }

    fn event(data: Value) -> AuditEvent {
        let mut e = AuditEvent::new(
            "execution:x:finished.3",
            "execution.finished",
            Object {
                kind: "execution".into(),
                ..Object::default()
            },
            "succeeded",
        )
        .with_data(data);
        e.node = "node-1".into();
        e
    }

    #[test]
    fn messages_are_rfc5424_with_structured_data() {
        let m = format_message(&cfg(8192), 7, &event(serde_json::json!({"a": 1})));
        assert!(m.starts_with("<109>1 "), "{m}");
        assert!(m.contains(" node-1 squall "), "{m}");
        assert!(
            m.contains(" execution.finished [meta sequenceId=\"8\"]"),
            "{m}"
        );
        assert!(
            m.contains("[audit@99 audit_id=\"execution:x:finished.3\""),
            "{m}"
        );
        let json = m.split(BOM).nth(1).unwrap();
        let v: Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["stream_seq"], 7);
        assert_eq!(frame("abc"), b"3 abc");
    }

    #[test]
    fn oversized_events_lose_data_not_the_frame() {
        let big = "x\"".repeat(10_000);
        let m = format_message(&cfg(1024), 1, &event(serde_json::json!({"big": big})));
        assert!(m.len() <= 1024, "{}", m.len());
        let v: Value = serde_json::from_str(m.split(BOM).nth(1).unwrap()).unwrap();
        assert_eq!(v["truncated"], true);
        assert_eq!(v["audit_id"], "execution:x:finished.3");
        assert!(v["data"].as_str().unwrap().starts_with("{\"big\":\"x"));
    }
}

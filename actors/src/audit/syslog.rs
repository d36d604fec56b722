//! The syslog destination: RFC 5424 messages with structured data, framed
//! by octet counting over TCP (RFC 6587) or TLS (RFC 5425), or sent as
//! RELP `syslog` commands ([`super::relp`]).
//!
//! Each message is `<PRI>1 TIME HOST squall PID ACTION [meta ...][origin
//! ...]` (plus `[audit@<PEN> ...]` when an enterprise number is
//! configured), then a BOM and the event as JSON. A message longer than
//! `max_message_bytes` has its `data` cut (`"truncated": true`), never the
//! frame, so a receiver never splits it.
//!
//! Over RELP an event is delivered once the receiver answered its
//! transaction with `rsp 200`; a broken session leaves the unanswered
//! events to be sent again on the next one. Plain TCP and TLS have no
//! receipts: a write is "delivered" once the kernel took it. So the sink
//! keeps what it wrote within the last
//! `resend_window_secs`, and after a broken connection writes those again
//! on the new one before anything else (duplicates keep their `audit_id`).
//! What is lost is what the receiver took but had not stored, written
//! more than that window before the failure was noticed.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, pki_types};

use super::config::{SyslogConfig, SyslogTls, SyslogTransport};
use super::export::{Fate, Pending, Sink, SinkError};
use super::relp::{self, RelpError};
use super::AuditEvent;

/// A byte stream to a receiver: TCP, or TLS over TCP.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Stream for T {}
/// A connection to a receiver.
pub type Conn = Box<dyn Stream>;

/// Severity of every audit message: 5, notice.
const SEVERITY: u8 = 5;
/// Byte order mark opening a UTF-8 MSG (RFC 5424 6.4).
const BOM: &str = "\u{feff}";
/// How long a connection attempt may take. Local to this syslog client
/// (and its RELP sessions): only a receiver's connection waits on it.
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

/// The link to the receiver.
enum Link {
    /// TCP or TLS: frames written, no receipts.
    Frames(Conn),
    /// A RELP session.
    Relp(relp::Session),
}

/// A syslog receiver over TCP, TLS or RELP.
pub struct SyslogSink {
    cfg: SyslogConfig,
    /// The TLS client settings, built at the first connection.
    tls: Option<(Arc<rustls::ClientConfig>, pki_types::ServerName<'static>)>,
    link: Option<Link>,
    /// Frames written, with when: the resend window's cover (TCP, TLS).
    recent: VecDeque<(Instant, Vec<u8>)>,
    /// When the last connection was found broken, until the frames
    /// written before it are sent again.
    broken_at: Option<Instant>,
}

impl std::fmt::Debug for SyslogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyslogSink")
            .field("address", &self.cfg.address)
            .field("transport", &self.cfg.transport)
            .field("connected", &self.link.is_some())
            .finish()
    }
}

/// The client settings for `tls` to `address`; a fatal error names the
/// file or field at fault.
pub fn tls_client(
    tls: &SyslogTls,
    address: &str,
) -> Result<(Arc<rustls::ClientConfig>, pki_types::ServerName<'static>), SinkError> {
    use pki_types::pem::PemObject;
    let fatal = |what: String| SinkError::Fatal(format!("syslog TLS: {what}"));
    let mut roots = rustls::RootCertStore::empty();
    let cas: Vec<_> = pki_types::CertificateDer::pem_file_iter(&tls.ca_file)
        .and_then(Iterator::collect)
        .map_err(|e| fatal(format!("ca_file {}: {e}", tls.ca_file.display())))?;
    for ca in cas {
        roots
            .add(ca)
            .map_err(|e| fatal(format!("ca_file {}: {e}", tls.ca_file.display())))?;
    }
    if roots.is_empty() {
        return Err(fatal(format!(
            "ca_file {} holds no certificate",
            tls.ca_file.display()
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fatal(e.to_string()))?
        .with_root_certificates(roots);
    let config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let chain: Vec<_> = pki_types::CertificateDer::pem_file_iter(cert)
                .and_then(Iterator::collect)
                .map_err(|e| fatal(format!("cert_file {}: {e}", cert.display())))?;
            let key = pki_types::PrivateKeyDer::from_pem_file(key)
                .map_err(|e| fatal(format!("key_file {}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| fatal(format!("client certificate: {e}")))?
        }
        _ => builder.with_no_client_auth(),
    };
    let host = tls.server_name.clone().unwrap_or_else(|| {
        address
            .rsplit_once(':')
            .map_or(address, |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string()
    });
    let name = pki_types::ServerName::try_from(host.clone())
        .map_err(|e| fatal(format!("server name {host:?}: {e}")))?;
    Ok((Arc::new(config), name))
}

impl SyslogSink {
    pub fn new(cfg: SyslogConfig) -> Self {
        SyslogSink {
            cfg,
            tls: None,
            link: None,
            recent: VecDeque::new(),
            broken_at: None,
        }
    }

    fn window(&self) -> Duration {
        Duration::from_secs(self.cfg.resend_window_secs)
    }

    fn retry(&self, what: impl std::fmt::Display) -> SinkError {
        SinkError::Retry {
            reason: format!("syslog receiver {}: {what}", self.cfg.address),
            after: None,
        }
    }

    /// A TCP connection, with TLS on it when configured.
    async fn stream(&mut self) -> Result<Conn, SinkError> {
        let addr = self.cfg.address.clone();
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&addr))
            .await
            .map_err(|_| self.retry("no connection within 5 s"))?
            .map_err(|e| self.retry(format_args!("cannot connect: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.cfg.tls else {
            return Ok(Box::new(tcp));
        };
        if self.tls.is_none() {
            self.tls = Some(tls_client(tls, &addr)?);
        }
        let (config, name) = self.tls.clone().expect("set above");
        let connector = tokio_rustls::TlsConnector::from(config);
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
            .await
            .map_err(|_| self.retry("no TLS handshake within 5 s"))?
            .map_err(|e| self.retry(format_args!("TLS handshake failed: {e}")))?;
        Ok(Box::new(stream))
    }

    async fn connect(&mut self) -> Result<(), SinkError> {
        let conn = self.stream().await?;
        if self.cfg.transport == SyslogTransport::Relp {
            let session = relp::Session::open(conn)
                .await
                .map_err(|e| self.retry(format_args!("RELP open: {e}")))?;
            self.link = Some(Link::Relp(session));
            return Ok(());
        }
        self.link = Some(Link::Frames(conn));
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
            tracing::warn!(receiver = %self.cfg.address, frames, "syslog reconnected; sending the last seconds again");
            self.write(&replay).await?;
            self.broken_at = None;
        }
        Ok(())
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), SinkError> {
        let Some(Link::Frames(conn)) = self.link.as_mut() else {
            return Err(self.retry("not connected"));
        };
        let written = async {
            conn.write_all(bytes).await?;
            conn.flush().await
        }
        .await;
        if let Err(e) = written {
            self.link = None;
            self.broken_at.get_or_insert_with(Instant::now);
            return Err(self.retry(format_args!("write failed: {e}")));
        }
        Ok(())
    }

    /// TCP or TLS: the batch written in one go, kept for the resend window.
    async fn deliver_frames(&mut self, batch: &[Pending]) -> Result<Vec<Fate>, SinkError> {
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

    /// RELP: each event delivered once its transaction is answered `200`;
    /// up to `relp_window` unanswered at once. A broken session leaves
    /// the unanswered events `Again`.
    async fn deliver_relp(&mut self, batch: &[Pending]) -> Result<Vec<Fate>, SinkError> {
        let Some(Link::Relp(mut session)) = self.link.take() else {
            return Err(self.retry("not connected"));
        };
        let mut fates: Vec<Option<Fate>> = vec![None; batch.len()];
        let window = self.cfg.relp_window;
        let outcome = async {
            let mut open: HashMap<u64, usize> = HashMap::new();
            let mut next = 0;
            loop {
                while next < batch.len() && open.len() < window {
                    let p = &batch[next];
                    let msg = format_message(&self.cfg, p.seq, &p.event);
                    let txnr = session.send("syslog", msg.as_bytes()).await?;
                    open.insert(txnr, next);
                    next += 1;
                }
                session.flush().await?;
                if open.is_empty() {
                    return Ok::<(), RelpError>(());
                }
                let answer = session.read().await?;
                if answer.command != "rsp" {
                    return Err(RelpError::Protocol(format!(
                        "expected rsp, got {}",
                        answer.command
                    )));
                }
                let Some(i) = open.remove(&answer.txnr) else {
                    return Err(RelpError::Protocol(format!(
                        "rsp for transaction {} that is not open",
                        answer.txnr
                    )));
                };
                fates[i] = Some(if answer.code() == Some(200) {
                    Fate::Delivered
                } else {
                    Fate::Again(self.retry(format_args!(
                        "RELP refused a message: {}",
                        String::from_utf8_lossy(&answer.data)
                    )))
                });
            }
        }
        .await;
        let again = match outcome {
            Ok(()) => {
                self.link = Some(Link::Relp(session));
                None
            }
            Err(e) => Some(self.retry(format_args!("RELP: {e}"))),
        };
        Ok(fates
            .into_iter()
            .map(|f| {
                f.unwrap_or_else(|| {
                    Fate::Again(
                        again
                            .clone()
                            .unwrap_or_else(|| self.retry("RELP: no answer")),
                    )
                })
            })
            .collect())
    }
}

impl Sink for SyslogSink {
    async fn deliver(&mut self, batch: &[Pending]) -> Result<Vec<Fate>, SinkError> {
        if self.link.is_none() {
            self.connect().await?;
        }
        match self.link {
            Some(Link::Relp(_)) => self.deliver_relp(batch).await,
            _ => self.deliver_frames(batch).await,
        }
    }
}

impl Drop for SyslogSink {
    fn drop(&mut self) {
        if let Some(Link::Relp(session)) = self.link.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(session.close());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{config::Facility, Object};

    fn cfg(max: usize) -> SyslogConfig {
        SyslogConfig {
            name: "s".into(),
            address: "127.0.0.1:1".into(),
            transport: SyslogTransport::Tcp,
            tls: None,
            relp_window: 128,
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

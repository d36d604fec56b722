//! The `audit` section of node.yaml: how long the `AUDIT` stream keeps
//! events, its size cap, and the destinations this node exports to.
//! Unknown fields are rejected; [`AuditConfig::validate`] names the field
//! of every other mistake.

use std::time::Duration;

use serde::Deserialize;

/// The audit trail's settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Days the `AUDIT` stream keeps an event (default 30).
    pub retention_days: u64,
    /// Most bytes the stream keeps; the oldest events go first (default
    /// 1 GiB). Export lag should be alerted on long before either limit.
    pub max_bytes: i64,
    /// Where this node exports the trail. Each destination is one durable
    /// consumer (`audit-<name>`): several nodes naming the same one share
    /// its work.
    pub exporters: Vec<ExporterConfig>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            retention_days: 30,
            max_bytes: 1 << 30,
            exporters: Vec::new(),
        }
    }
}

impl AuditConfig {
    /// How long events are kept.
    pub fn retention(&self) -> Duration {
        Duration::from_secs(self.retention_days * 24 * 3600)
    }

    /// Checks the values serde cannot: each error names its field.
    pub fn validate(&self) -> Result<(), String> {
        if self.retention_days == 0 || self.retention_days > 36_500 {
            return Err(format!(
                "audit.retention_days must be between 1 and 36500, got {}",
                self.retention_days
            ));
        }
        if self.max_bytes < 1 << 20 {
            return Err(format!(
                "audit.max_bytes must be at least 1048576 (1 MiB), got {}",
                self.max_bytes
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, e) in self.exporters.iter().enumerate() {
            let at = format!("audit.exporters[{i}]");
            let name = e.name();
            if name.is_empty()
                || name.len() > 32
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(format!(
                    "{at}.name: {name:?} is not a valid destination name (1-32 letters, digits, - and _)"
                ));
            }
            if !names.insert(name) {
                return Err(format!("{at}.name: {name:?} is used twice"));
            }
            match e {
                ExporterConfig::SplunkHec(h) => h.validate(&at)?,
                ExporterConfig::Syslog(s) => s.validate(&at)?,
            }
        }
        Ok(())
    }
}

/// One destination.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExporterConfig {
    /// Splunk's HTTP Event Collector.
    SplunkHec(HecConfig),
    /// A syslog receiver (RFC 5424 over TCP or TLS with octet counting,
    /// or over RELP).
    Syslog(SyslogConfig),
}

impl ExporterConfig {
    /// The destination's name.
    pub fn name(&self) -> &str {
        match self {
            ExporterConfig::SplunkHec(h) => &h.name,
            ExporterConfig::Syslog(s) => &s.name,
        }
    }
}

/// A Splunk HTTP Event Collector.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HecConfig {
    pub name: String,
    /// Base URL, such as `https://splunk.example.com:8088`.
    pub url: String,
    /// The HEC token (sent as `Authorization: Splunk <token>`).
    pub token: String,
    /// Use indexer acknowledgement (default true): an event is acked here
    /// only once Splunk reports it indexed. Without it a 200 only means
    /// "looks valid" (Splunk Cloud's default).
    #[serde(default = "yes")]
    pub indexer_ack: bool,
    /// The channel (a GUID); default: a new one per exporter start.
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(default)]
    pub index: Option<String>,
    #[serde(default = "default_sourcetype")]
    pub sourcetype: String,
    /// Events per request (default 500).
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Batches posted and awaiting their indexer ack at once (default 4):
    /// with the ack latency, this and `batch_size` bound the rate. Each
    /// event is still acknowledged on the stream only once its own batch
    /// is confirmed.
    #[serde(default = "default_in_flight")]
    pub in_flight: usize,
    /// Seconds to wait for an indexer ack before sending again (default
    /// 120, below Splunk's channel idle cleanup).
    #[serde(default = "default_ack_timeout")]
    pub ack_timeout_secs: u64,
    /// Seconds one HTTP request may take (default 10).
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
}

impl HecConfig {
    fn validate(&self, at: &str) -> Result<(), String> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(format!(
                "{at}.url: {:?} is not an http:// or https:// URL",
                self.url
            ));
        }
        if self.token.trim().is_empty() {
            return Err(format!("{at}.token: the HEC token is empty"));
        }
        if self.batch_size == 0 || self.batch_size > 10_000 {
            return Err(format!("{at}.batch_size must be between 1 and 10000"));
        }
        if self.in_flight == 0 || self.in_flight > 64 {
            return Err(format!(
                "{at}.in_flight must be between 1 and 64, got {}",
                self.in_flight
            ));
        }
        if self.ack_timeout_secs == 0 || self.request_timeout_secs == 0 {
            return Err(format!(
                "{at}: ack_timeout_secs and request_timeout_secs must be at least 1"
            ));
        }
        Ok(())
    }
}

/// Transport to a syslog receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyslogTransport {
    /// Plain TCP, RFC 6587 octet counting: no receipts (the resend window
    /// covers a reconnect).
    Tcp,
    /// TLS (RFC 5425), octet counting: no receipts either.
    Tls,
    /// RELP: each message is acknowledged by the receiver (`rsp 200`), and
    /// only then on the stream. Over TLS when `ca_file` is set.
    Relp,
}

/// TLS settings of a syslog destination.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogTls {
    /// PEM file of the certificate authorities the receiver's
    /// certificate must chain to.
    pub ca_file: std::path::PathBuf,
    /// PEM certificate (chain) this node presents, for receivers that
    /// require client certificates; with `key_file`.
    #[serde(default)]
    pub cert_file: Option<std::path::PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `cert_file`.
    #[serde(default)]
    pub key_file: Option<std::path::PathBuf>,
    /// The name the receiver's certificate must carry; default: the host
    /// of `address` (an IP address is checked against IP SANs).
    #[serde(default)]
    pub server_name: Option<String>,
}

/// Syslog facility of the events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Facility {
    User,
    Auth,
    Authpriv,
    /// 13, "log audit" (the default).
    Audit,
    Local0,
    Local1,
    Local2,
    Local3,
    Local4,
    Local5,
    Local6,
    Local7,
}

impl Facility {
    /// RFC 5424's number.
    pub fn code(self) -> u8 {
        match self {
            Facility::User => 1,
            Facility::Auth => 4,
            Facility::Authpriv => 10,
            Facility::Audit => 13,
            Facility::Local0 => 16,
            Facility::Local1 => 17,
            Facility::Local2 => 18,
            Facility::Local3 => 19,
            Facility::Local4 => 20,
            Facility::Local5 => 21,
            Facility::Local6 => 22,
            Facility::Local7 => 23,
        }
    }
}

/// A syslog receiver.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    pub name: String,
    /// `host:port` of the receiver.
    pub address: String,
    #[serde(default = "default_transport")]
    pub transport: SyslogTransport,
    /// TLS: required for `transport: tls`, optional for `relp` (RELP over
    /// TLS), refused for `tcp`.
    #[serde(default)]
    pub tls: Option<SyslogTls>,
    /// RELP only: messages sent and not yet acknowledged at most
    /// (default 128, librelp's window).
    #[serde(default = "default_relp_window")]
    pub relp_window: usize,
    #[serde(default = "default_facility")]
    pub facility: Facility,
    /// Largest message (after the length prefix) in octets, default 8096:
    /// what rsyslog's default `maxMessageSize` of 8k accepts (measured
    /// with rsyslog 8.2302: it keeps 8096 octets and cuts a longer frame
    /// in two). An event that does not fit has its data cut.
    #[serde(default = "default_max_message")]
    pub max_message_bytes: usize,
    /// After a reconnect, events written within this many seconds before
    /// the failure was noticed are sent again (default 10): plain TCP
    /// has no receipts, this is the loss window's cover.
    #[serde(default = "default_resend")]
    pub resend_window_secs: u64,
    /// Events per write (default 500).
    #[serde(default = "default_syslog_batch")]
    pub batch_size: usize,
    /// Your organisation's IANA Private Enterprise Number: when set, each
    /// message also carries `[audit@<number> audit_id=.. outcome=..
    /// trace_id=..]`. Without it only the registered `meta` and `origin`
    /// elements are used (the event's JSON holds everything).
    #[serde(default)]
    pub enterprise_number: Option<u32>,
}

impl SyslogConfig {
    fn validate(&self, at: &str) -> Result<(), String> {
        let ok = self
            .address
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !ok {
            return Err(format!("{at}.address: {:?} is not host:port", self.address));
        }
        if self.max_message_bytes < 480 {
            return Err(format!(
                "{at}.max_message_bytes must be at least 480 (RFC 5424's minimum), got {}",
                self.max_message_bytes
            ));
        }
        if self.batch_size == 0 || self.batch_size > 10_000 {
            return Err(format!("{at}.batch_size must be between 1 and 10000"));
        }
        match (&self.transport, &self.tls) {
            (SyslogTransport::Tls, None) => {
                return Err(format!(
                    "{at}.tls: transport tls needs a tls section with ca_file"
                ))
            }
            (SyslogTransport::Tcp, Some(_)) => {
                return Err(format!(
                "{at}.tls: transport tcp is plain; use transport: tls (or relp) with a tls section"
            ))
            }
            _ => {}
        }
        if let Some(tls) = &self.tls {
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return Err(format!(
                    "{at}.tls: cert_file and key_file go together (a client certificate and its key)"
                ));
            }
            for (field, path) in [
                ("ca_file", Some(&tls.ca_file)),
                ("cert_file", tls.cert_file.as_ref()),
                ("key_file", tls.key_file.as_ref()),
            ] {
                if let Some(path) = path {
                    if !path.is_file() {
                        return Err(format!(
                            "{at}.tls.{field}: {} is not a readable file",
                            path.display()
                        ));
                    }
                }
            }
        }
        if self.relp_window == 0 || self.relp_window > 1024 {
            return Err(format!(
                "{at}.relp_window must be between 1 and 1024, got {}",
                self.relp_window
            ));
        }
        Ok(())
    }
}

fn default_relp_window() -> usize {
    128
}
fn yes() -> bool {
    true
}
fn default_sourcetype() -> String {
    "squall:audit".into()
}
fn default_batch() -> usize {
    500
}
fn default_in_flight() -> usize {
    4
}
fn default_ack_timeout() -> u64 {
    120
}
fn default_request_timeout() -> u64 {
    10
}
fn default_transport() -> SyslogTransport {
    SyslogTransport::Tcp
}
fn default_facility() -> Facility {
    Facility::Audit
}
fn default_max_message() -> usize {
    8096
}
fn default_resend() -> u64 {
    10
}
fn default_syslog_batch() -> usize {
    500
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<AuditConfig, String> {
        let cfg: AuditConfig = serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
        cfg.validate()?;
        Ok(cfg)
    }

    #[test]
    fn defaults_and_both_destinations() {
        let cfg = parse("{}").unwrap();
        assert_eq!(cfg.retention_days, 30);
        let cfg = parse(
            "exporters:\n- {type: splunk_hec, name: splunk, url: 'https://s:8088', token: t}\n\
             - {type: syslog, name: siem, address: '127.0.0.1:514'}\n",
        )
        .unwrap();
        assert_eq!(cfg.exporters.len(), 2);
        match &cfg.exporters[1] {
            ExporterConfig::Syslog(s) => {
                assert_eq!(s.max_message_bytes, 8096);
                assert_eq!(s.facility.code(), 13);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn mistakes_name_their_field() {
        for (yaml, field) in [
            ("retention_days: 0", "audit.retention_days"),
            ("max_bytes: 10", "audit.max_bytes"),
            ("exporters:\n- {type: syslog, name: 'a b', address: 'h:1'}", "name"),
            ("exporters:\n- {type: syslog, name: s, address: 'nohost'}", "exporters[0].address"),
            ("exporters:\n- {type: syslog, name: s, address: 'h:1', max_message_bytes: 10}", "max_message_bytes"),
            ("exporters:\n- {type: splunk_hec, name: s, url: 'ftp://x', token: t}", "exporters[0].url"),
            ("exporters:\n- {type: splunk_hec, name: s, url: 'http://x', token: ''}", "token"),
            ("exporters:\n- {type: splunk_hec, name: s, url: 'http://x', token: t, in_flight: 0}", "exporters[0].in_flight"),
            ("exporters:\n- {type: syslog, name: s, address: 'h:1'}\n- {type: syslog, name: s, address: 'h:2'}", "used twice"),
            ("exporters:\n- {type: syslog, name: s, address: 'h:1', colour: red}", "colour"),
            ("exporters:\n- {type: kafka, name: s}", "kafka"),
            ("exporters:\n- {type: syslog, name: s, address: 'h:1', transport: tls}", "exporters[0].tls"),
            ("exporters:\n- {type: syslog, name: s, address: 'h:1', transport: udp}", "udp"),
            ("exporters:\n- {type: syslog, name: s, address: 'h:1', transport: relp, tls: {ca_file: /nonexistent/ca.pem}}", "exporters[0].tls.ca_file"),
            ("exporters:\n- {type: syslog, name: s, address: 'h:1', transport: tcp, tls: {ca_file: /etc/hostname}}", "exporters[0].tls"),
            ("exporters:\n- {type: syslog, name: s, address: 'h:1', transport: relp, tls: {ca_file: /etc/hostname, cert_file: /etc/hostname}}", "key_file go together"),
            ("exporters:\n- {type: syslog, name: s, address: 'h:1', transport: relp, relp_window: 0}", "relp_window"),
            ("exporters:\n- {type: syslog, name: s, address: 'h:1', transport: relp, tls: {ca_file: /etc/hostname, pin: x}}", "pin"),
            ("retention: 3", "retention"),
        ] {
            let err = parse(yaml).unwrap_err();
            assert!(err.contains(field), "{yaml}: {err}");
        }
    }
}

//! The audit trail end to end: events from real acts (webhook, logins,
//! datastore writes and decryption) and many more from the node's own
//! emitter land on the `AUDIT` stream, which refuses purge and delete, and
//! are exported to a real rsyslogd (killed and restarted midway: every
//! audit id still arrives) and to a Splunk HEC receiver written here to
//! the protocol (late and false indexer acks, 503 bursts, a refused event,
//! a token that turns invalid): nothing lost, nothing acknowledged before
//! the receiver confirmed it.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use squall_actors::audit::config::{
    AuditConfig, ExporterConfig, Facility, HecConfig, SyslogConfig, SyslogTls, SyslogTransport,
};
use squall_actors::audit::{self, AuditEvent, Object};
use squall_tests::{free_port, poll, TestNode};

/// A real rsyslogd, unprivileged, with its own config: imtcp on a
/// loopback port, every message's MSG written as a line to `out`.
struct Rsyslog {
    child: Child,
    dir: PathBuf,
    port: u16,
    out: PathBuf,
}

impl Rsyslog {
    fn start(dir: &Path, port: u16) -> Result<Rsyslog> {
        let out = dir.join("audit.log");
        let work = dir.join("work");
        std::fs::create_dir_all(&work)?;
        Rsyslog::with_config(
            dir,
            port,
            format!(
                "global(workDirectory=\"{}\")\n\
                 module(load=\"imtcp\")\n\
                 input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{port}\")\n\
                 template(name=\"msgonly\" type=\"string\" string=\"%msgid% %msg%\\n\")\n\
                 *.* action(type=\"omfile\" file=\"{}\" template=\"msgonly\")\n",
                work.display(),
                out.display()
            ),
            out,
        )
    }

    /// rsyslogd with config `conf`, listening (at least) on `port`,
    /// writing `out`.
    fn with_config(dir: &Path, port: u16, conf: String, out: PathBuf) -> Result<Rsyslog> {
        let conf_path = dir.join("rsyslog.conf");
        std::fs::write(&conf_path, conf)?;
        let conf = conf_path;
        let mut r = Rsyslog {
            child: spawn_rsyslogd(dir, &conf)?,
            dir: dir.to_path_buf(),
            port,
            out,
        };
        r.wait_listening()?;
        Ok(r)
    }

    fn wait_listening(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("rsyslogd exited: {status}");
            }
            anyhow::ensure!(Instant::now() < deadline, "rsyslogd did not listen in 15 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// SIGKILL, then a new rsyslogd on the same port and file.
    fn kill(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    fn start_again(&mut self) -> Result<()> {
        self.child = spawn_rsyslogd(&self.dir, &self.dir.join("rsyslog.conf"))?;
        self.wait_listening()
    }

    /// The JSON events written so far, with each one's MSGID.
    fn events(&self) -> Vec<(String, Value)> {
        events_in(&self.out)
    }
}

/// The JSON events written to `path` (`%msgid% %msg%` lines).
fn events_in(path: &Path) -> Vec<(String, Value)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (msgid, msg) = l.split_once(' ')?;
            let msg = msg.trim_start_matches('\u{feff}');
            Some((msgid.to_string(), serde_json::from_str(msg).ok()?))
        })
        .collect()
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_rsyslogd(dir: &Path, conf: &Path) -> Result<Child> {
    let bin = ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .context("rsyslogd not found: run ops/test (it installs Debian's rsyslog)")?;
    Command::new(bin)
        .arg("-n")
        .arg("-f")
        .arg(conf)
        .arg("-i")
        .arg(dir.join("rsyslogd.pid"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting rsyslogd")
}

/// A synthetic event through the node's own emitter.
fn synthetic(i: usize, data: Value) -> AuditEvent {
    AuditEvent::new(
        format!("test:{i}"),
        "test.event",
        Object {
            kind: "test".into(),
            id: Some(i.to_string()),
            reference: None,
        },
        "success",
    )
    .with_data(data)
}

async fn audit_status(t: &TestNode) -> Result<Value> {
    let (code, v) = t.get("audit/status").await?;
    anyhow::ensure!(code == 200, "audit/status: {code} {v}");
    Ok(v)
}

fn destination<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["destinations"]
        .as_array()?
        .iter()
        .find(|d| d["destination"] == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_events_reach_rsyslog_through_a_restart() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let mut rsyslog = Rsyslog::start(dir.path(), port)?;
    let refused = free_port()?;
    let syslog = |name: &str, port: u16| {
        ExporterConfig::Syslog(SyslogConfig {
            name: name.into(),
            address: format!("127.0.0.1:{port}"),
            transport: SyslogTransport::Tcp,
            tls: None,
            relp_window: 128,
            facility: Facility::Audit,
            max_message_bytes: 8096,
            resend_window_secs: 10,
            batch_size: 500,
            enterprise_number: None,
        })
    };
    let t = TestNode::start_with(vec![squall_tests::repo_root().join("packs")], |c| {
        c.audit = AuditConfig {
            exporters: vec![syslog("siem", port), syslog("nowhere", refused)],
            // Little disk on test machines: JetStream reserves the cap.
            max_bytes: 32 << 20,
            ..AuditConfig::default()
        };
    })
    .await?;

    // Real acts: a failed login, a secret written and read back decrypted,
    // a webhook.
    let bad = reqwest::Client::new()
        .post(format!("{}/auth/v1/tokens", t.root))
        .basic_auth("mallory", Some("guess"))
        .send()
        .await?;
    assert_eq!(bad.status().as_u16(), 401);
    let (code, _) = t
        .call(
            &t.http,
            reqwest::Method::PUT,
            "keys/db_pass",
            Some(&json!({"name": "db_pass", "value": "hunter2-secret", "secret": true})),
        )
        .await?;
    assert_eq!(code, 200);
    let (code, _) = t.get("keys/db_pass?decrypt=true").await?;
    assert_eq!(code, 200);
    // A template decrypting it for an execution's parameters.
    let (code, run) = t
        .post(
            "executions",
            &json!({"action": "core.echo",
                    "parameters": {"message": "{{ st2kv.system.db_pass | decrypt_kv }}"}}),
        )
        .await?;
    assert_eq!(code, 201, "{run}");
    let run_id = run["id"].as_str().context("execution id")?.to_string();
    let (code, hook) = t
        .post(
            "webhooks/st2",
            &json!({"trigger": "core.st2.webhook", "payload": {}}),
        )
        .await?;
    anyhow::ensure!(code < 300, "webhook: {code} {hook}");

    // The stream keeps what it holds: no purge, no delete.
    let client = async_nats::connect(t.nats.url()).await?;
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(audit::AUDIT_STREAM).await?;
    assert!(stream.purge().await.is_err(), "AUDIT must refuse purge");
    let first = poll(Duration::from_secs(10), || {
        let mut stream = stream.clone();
        async move {
            let s = stream.info().await?.state.clone();
            Ok((s.messages > 0).then_some(s.first_sequence))
        }
    })
    .await?;
    assert!(
        stream.delete_message(first).await.is_err(),
        "AUDIT must refuse delete"
    );
    assert!(stream.info().await?.state.messages > 0);

    // 10,000 events, rsyslog killed and restarted midway.
    let total = 10_000;
    let bus = t.node.as_ref().context("node")?.bus.clone();
    let started = Instant::now();
    for i in 0..total / 2 {
        bus.audit.emit(synthetic(
            i,
            json!({"n": i, "password": "p-should-not-leak"}),
        ));
    }
    poll(Duration::from_secs(60), || {
        let n = rsyslog.events().len();
        async move { Ok((n >= 2_000).then_some(())) }
    })
    .await?;
    rsyslog.kill()?;
    for i in total / 2..total {
        bus.audit.emit(synthetic(i, json!({"n": i})));
    }
    // The exporter finds the connection broken and retries meanwhile.
    let status = poll(Duration::from_secs(30), || async {
        let s = audit_status(&t).await?;
        let retrying =
            destination(&s, "siem").is_some_and(|d| d["exporter"]["state"] == "retrying");
        Ok(retrying.then_some(s))
    })
    .await?;
    let siem = destination(&status, "siem").context("siem")?;
    assert!(siem["lag"].as_u64().unwrap_or(0) > 0, "{status}");
    rsyslog.start_again()?;
    // An event too big for one syslog message.
    bus.audit
        .emit(synthetic(total, json!({"big": "x".repeat(20_000)})));

    let seen = poll(Duration::from_secs(120), || {
        let events = rsyslog.events();
        async move {
            let ids: BTreeSet<String> = events
                .iter()
                .filter_map(|(_, e)| e["audit_id"].as_str().map(str::to_string))
                .filter(|id| id.starts_with("test:"))
                .collect();
            Ok((ids.len() > total).then_some(events))
        }
    })
    .await?;
    let elapsed = started.elapsed();
    println!(
        "audit export to rsyslog: {} events (with duplicates {}) in {:.1} s: {:.0} events/s, through a receiver restart",
        total + 1,
        seen.len(),
        elapsed.as_secs_f64(),
        (total + 1) as f64 / elapsed.as_secs_f64()
    );
    let by_id: HashMap<&str, &Value> = seen
        .iter()
        .filter_map(|(_, e)| Some((e["audit_id"].as_str()?, e)))
        .collect();
    for i in 0..total {
        let e = by_id
            .get(format!("test:{i}").as_str())
            .context(format!("test:{i} lost"))?;
        assert_eq!(e["data"]["n"], i);
    }
    // The oversized one arrived as one message, its data cut.
    let big = by_id.get(format!("test:{total}").as_str()).context("big")?;
    assert_eq!(big["truncated"], true, "{big}");
    assert!(big["data"]
        .as_str()
        .is_some_and(|d| d.starts_with("{\"big\":\"xxx")));

    // The real acts, with actor and masked data.
    let all: Vec<&Value> = seen.iter().map(|(_, e)| e).collect();
    let find = |action: &str| all.iter().copied().find(|e| e["action"] == action);
    let failed = find("auth.login_failed").context("no auth.login_failed")?;
    assert_eq!(failed["actor"]["user"], "mallory");
    assert_eq!(failed["actor"]["remote_addr"], "127.0.0.1");
    assert_eq!(failed["outcome"]["status"], "denied");
    let login = find("auth.login").context("no auth.login")?;
    assert_eq!(login["actor"]["user"], "admin");
    let written = find("key.updated").context("no key.updated")?;
    assert_eq!(written["actor"]["user"], "admin");
    assert_eq!(written["object"]["ref"], "db_pass");
    let decrypted = all
        .iter()
        .find(|e| e["action"] == "key.decrypted" && e["actor"]["method"] == "token")
        .context("no key.decrypted through the API")?;
    assert_eq!(decrypted["object"]["ref"], "db_pass");
    let in_template = all
        .iter()
        .find(|e| e["action"] == "key.decrypted" && e["data"]["execution"] == run_id.as_str())
        .context("no key.decrypted for the execution's template")?;
    assert_eq!(in_template["actor"]["user"], "admin", "{in_template}");
    assert_eq!(in_template["object"]["ref"], "db_pass");
    assert_eq!(in_template["data"]["via"], "parameters");
    assert_eq!(in_template["data"]["scope"], "st2kv.system");
    assert_eq!(in_template["data"]["action"], "core.echo");
    let received = all
        .iter()
        .find(|e| e["action"] == "trigger.received" && e["object"]["ref"] == "core.st2.webhook")
        .context("no trigger.received for the webhook")?;
    assert_eq!(received["trace_id"].as_str().map(str::len), Some(32));
    let (msgid, _) = seen
        .iter()
        .find(|(_, e)| e["action"] == "auth.login_failed")
        .context("msgid")?;
    assert_eq!(msgid, "auth.login_failed");
    let text = std::fs::read_to_string(&rsyslog.out)?;
    assert!(!text.contains("hunter2-secret"), "a secret reached syslog");
    assert!(
        !text.contains("p-should-not-leak"),
        "a password reached syslog"
    );

    // The refusing host: its exporter retries, its lag is the whole trail,
    // and it held nothing up.
    let s = audit_status(&t).await?;
    let nowhere = destination(&s, "nowhere").context("nowhere")?;
    assert_eq!(nowhere["exporter"]["state"], "retrying", "{s}");
    assert!(
        nowhere["exporter"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot connect") && e.contains(&refused.to_string())),
        "{s}"
    );
    assert!(nowhere["lag"].as_u64().unwrap_or(0) > total as u64, "{s}");
    poll(Duration::from_secs(30), || async {
        let s = audit_status(&t).await?;
        Ok((destination(&s, "siem").is_some_and(|d| d["lag"] == 0)).then_some(()))
    })
    .await?;
    let metrics = reqwest::get(format!("{}/metrics", t.root))
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("squall_audit_export_lag{destination=\"nowhere\"}"),
        "{metrics}"
    );
    Ok(())
}

/// Runs openssl with `args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running openssl")?;
    anyhow::ensure!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A throwaway CA `<ca>.pem` and, signed by it, `<name>.pem`/`<name>.key`
/// for each of `names` (valid for 127.0.0.1).
fn certificates(dir: &Path, ca: &str, names: &[&str]) -> Result<()> {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut args = vec!["req", "-x509", "-days", "2", "-subj"];
    let subject = format!("/CN=squall test {ca}");
    args.push(&subject);
    let (key, cert) = (format!("{ca}.key"), format!("{ca}.pem"));
    args.extend(ec);
    args.extend(["-keyout", &key, "-out", &cert]);
    openssl(dir, &args)?;
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
    )?;
    for name in names {
        let (k, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        let mut args = vec![
            "req",
            "-new",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            &k,
            "-out",
            &csr,
        ];
        args.extend(ec);
        openssl(dir, &args)?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &cert,
                "-CAkey",
                &key,
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "san.ext",
                "-out",
                &pem,
            ],
        )?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_events_reach_rsyslog_over_tls_and_relp_with_receipts() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    certificates(d, "ca", &["server", "client"])?;
    certificates(d, "otherca", &[])?;
    let (tls_port, relp_port) = (free_port()?, free_port()?);
    let work = d.join("work");
    std::fs::create_dir_all(&work)?;
    let (tls_out, relp_out) = (d.join("tls.log"), d.join("relp.log"));
    // TLS that wants a client certificate from our CA; RELP in plain TCP.
    // The main queue is direct, so a RELP answer means the line was
    // written (rsyslog answers once its ruleset ran).
    let conf = format!(
        "global(workDirectory=\"{work}\" \
           DefaultNetstreamDriverCAFile=\"{d}/ca.pem\" \
           DefaultNetstreamDriverCertFile=\"{d}/server.pem\" \
           DefaultNetstreamDriverKeyFile=\"{d}/server.key\")\n\
         main_queue(queue.type=\"Direct\")\n\
         module(load=\"imtcp\" StreamDriver.Name=\"gtls\" StreamDriver.Mode=\"1\" \
           StreamDriver.Authmode=\"x509/certvalid\")\n\
         module(load=\"imrelp\")\n\
         template(name=\"msgonly\" type=\"string\" string=\"%msgid% %msg%\\n\")\n\
         ruleset(name=\"tls\") {{ action(type=\"omfile\" file=\"{tls}\" template=\"msgonly\") }}\n\
         ruleset(name=\"relp\") {{ action(type=\"omfile\" file=\"{relp}\" template=\"msgonly\") }}\n\
         input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{tls_port}\" ruleset=\"tls\")\n\
         input(type=\"imrelp\" address=\"127.0.0.1\" port=\"{relp_port}\" ruleset=\"relp\")\n",
        work = work.display(),
        d = d.display(),
        tls = tls_out.display(),
        relp = relp_out.display(),
    );
    let mut rsyslog = Rsyslog::with_config(d, relp_port, conf, relp_out.clone())?;
    let syslog = |name: &str, port: u16, transport, tls| {
        ExporterConfig::Syslog(SyslogConfig {
            name: name.into(),
            address: format!("127.0.0.1:{port}"),
            transport,
            tls,
            relp_window: 128,
            facility: Facility::Audit,
            max_message_bytes: 8096,
            resend_window_secs: 10,
            batch_size: 500,
            enterprise_number: None,
        })
    };
    let tls = |ca: &str, client: bool| SyslogTls {
        ca_file: d.join(format!("{ca}.pem")),
        cert_file: client.then(|| d.join("client.pem")),
        key_file: client.then(|| d.join("client.key")),
        server_name: None,
    };
    let t = TestNode::start_with(vec![], |c| {
        c.audit = AuditConfig {
            exporters: vec![
                syslog("tls", tls_port, SyslogTransport::Tls, Some(tls("ca", true))),
                syslog("relp", relp_port, SyslogTransport::Relp, None),
                // A receiver whose certificate our CA did not sign.
                syslog(
                    "untrusted",
                    tls_port,
                    SyslogTransport::Tls,
                    Some(tls("otherca", true)),
                ),
            ],
            max_bytes: 32 << 20,
            ..AuditConfig::default()
        };
    })
    .await?;
    let bus = t.node.as_ref().context("node")?.bus.clone();
    let total = 6_000;
    let started = Instant::now();
    for i in 0..total / 2 {
        bus.audit.emit(synthetic(i, json!({"n": i})));
    }
    poll(Duration::from_secs(60), || {
        let n = events_in(&relp_out).len();
        async move { Ok((n >= 1_000).then_some(())) }
    })
    .await?;
    // Killed mid-stream: what RELP had not had answered is sent again.
    rsyslog.kill()?;
    for i in total / 2..total {
        bus.audit.emit(synthetic(i, json!({"n": i})));
    }
    poll(Duration::from_secs(30), || async {
        let s = audit_status(&t).await?;
        let retrying =
            destination(&s, "relp").is_some_and(|d| d["exporter"]["state"] == "retrying");
        Ok(retrying.then_some(()))
    })
    .await?;
    rsyslog.start_again()?;
    let ids = |path: &Path| -> BTreeSet<String> {
        events_in(path)
            .into_iter()
            .filter_map(|(_, e)| e["audit_id"].as_str().map(str::to_string))
            .filter(|id| id.starts_with("test:"))
            .collect()
    };
    let want: BTreeSet<String> = (0..total).map(|i| format!("test:{i}")).collect();
    poll(Duration::from_secs(120), || {
        let got = ids(&relp_out);
        let want = want.clone();
        async move { Ok(want.is_subset(&got).then_some(())) }
    })
    .await?;
    let elapsed = started.elapsed();
    let lines = events_in(&relp_out).len();
    println!(
        "audit export over RELP: {total} events in {:.1} s ({:.0} events/s) through a receiver kill; {} lines written ({} resent)",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        lines,
        lines.saturating_sub(total),
    );
    // TLS with a client certificate: every event (the resend window
    // covers the kill, as over TCP).
    poll(Duration::from_secs(120), || {
        let got = ids(&tls_out);
        let want = want.clone();
        async move { Ok(want.is_subset(&got).then_some(())) }
    })
    .await?;
    let relp_lag = poll(Duration::from_secs(30), || async {
        let s = audit_status(&t).await?;
        Ok(destination(&s, "relp")
            .is_some_and(|d| d["lag"] == 0)
            .then_some(s))
    })
    .await?;
    drop(relp_lag);
    // The untrusted receiver: retried, never written to, the reason shown
    // (once it tried again since the receiver's restart).
    let status = poll(Duration::from_secs(30), || async {
        let s = audit_status(&t).await?;
        let handshake = destination(&s, "untrusted").is_some_and(|d| {
            d["exporter"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("TLS handshake failed"))
        });
        Ok(handshake.then_some(s))
    })
    .await?;
    let untrusted = destination(&status, "untrusted").context("untrusted")?;
    assert_eq!(untrusted["exporter"]["state"], "retrying", "{status}");
    assert!(untrusted["lag"].as_u64().unwrap_or(0) >= total as u64);

    // Everything confirmed by `rsp 200` is acknowledged; nothing waits.
    let js = async_nats::jetstream::new(async_nats::connect(t.nats.url()).await?);
    let info = js
        .get_stream(audit::AUDIT_STREAM)
        .await?
        .consumer_info(audit::export::consumer_name("relp"))
        .await?;
    assert_eq!(info.num_ack_pending, 0);
    assert_eq!(info.num_pending, 0);
    Ok(())
}

/// What the fake HEC does and has seen.
#[derive(Default)]
struct Hec {
    token: String,
    /// 503s still to answer before the next success.
    busy: u32,
    requests: u32,
    next_ack: u64,
    /// ack id → (stream seqs, audit ids, polls answered false so far,
    /// never true).
    pending: HashMap<u64, (Vec<u64>, Vec<String>, u32, bool)>,
    indexed: BTreeSet<String>,
    indexed_seqs: BTreeSet<u64>,
    refused_requests: u32,
    auth_failures: u32,
}

type Shared = Arc<Mutex<Hec>>;

fn hec_error(status: StatusCode, code: i64, text: &str) -> axum::response::Response {
    (status, Json(json!({"text": text, "code": code}))).into_response()
}

async fn hec_event(
    State(hec): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    let mut h = hec.lock().unwrap();
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if auth != format!("Splunk {}", h.token) {
        h.auth_failures += 1;
        return hec_error(StatusCode::FORBIDDEN, 4, "Invalid token");
    }
    if headers.get("x-splunk-request-channel").is_none() {
        return hec_error(StatusCode::BAD_REQUEST, 10, "Data channel is missing");
    }
    h.requests += 1;
    // Bursts of 503: three in a row every 25 requests.
    if h.requests % 25 == 3 {
        h.busy = 3;
    }
    if h.busy > 0 {
        h.busy -= 1;
        return hec_error(StatusCode::SERVICE_UNAVAILABLE, 9, "Server is busy");
    }
    let mut seqs = Vec::new();
    let mut ids = Vec::new();
    for v in serde_json::Deserializer::from_slice(&body).into_iter::<Value>() {
        let Ok(v) = v else {
            return hec_error(StatusCode::BAD_REQUEST, 6, "Invalid data format");
        };
        if v["event"]["data"]["poison"] == true {
            h.refused_requests += 1;
            return hec_error(StatusCode::BAD_REQUEST, 6, "Invalid data format");
        }
        seqs.push(v["fields"]["stream_seq"].as_u64().unwrap_or(0));
        ids.push(v["fields"]["audit_id"].as_str().unwrap_or("").to_string());
    }
    h.next_ack += 1;
    let ack = h.next_ack;
    // Every 5th batch is lost by the indexer: its ack never turns true.
    let lost = ack % 5 == 0;
    h.pending.insert(ack, (seqs, ids, 0, lost));
    Json(json!({"text": "Success", "code": 0, "ackId": ack})).into_response()
}

async fn hec_ack(
    State(hec): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> axum::response::Response {
    let mut h = hec.lock().unwrap();
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if auth != format!("Splunk {}", h.token) {
        return hec_error(StatusCode::FORBIDDEN, 4, "Invalid token");
    }
    let mut acks = serde_json::Map::new();
    for id in body["acks"].as_array().into_iter().flatten() {
        let Some(id) = id.as_u64() else { continue };
        let mut done = false;
        let mut indexed = None;
        if let Some((seqs, ids, polls, lost)) = h.pending.get_mut(&id) {
            // Late: false for the first two polls.
            *polls += 1;
            if *polls > 2 && !*lost {
                done = true;
                indexed = Some((seqs.clone(), ids.clone()));
            }
        }
        if let Some((seqs, ids)) = indexed {
            h.pending.remove(&id);
            h.indexed_seqs.extend(seqs);
            h.indexed.extend(ids);
        }
        acks.insert(id.to_string(), json!(done));
    }
    Json(json!({"acks": acks})).into_response()
}

/// Fails when the consumer acknowledged an event the receiver had not
/// indexed (or dead-lettered).
async fn nothing_acked_early(js: &async_nats::jetstream::Context, hec: &Shared) -> Result<u64> {
    // The dead-lettered events' sequences count as settled.
    let mut dead = BTreeSet::new();
    let mut dlq = js.get_stream(audit::DEAD_LETTER_STREAM).await?;
    let last = dlq.info().await?.state.last_sequence;
    for seq in 1..=last {
        if let Ok(m) = dlq.get_raw_message(seq).await {
            let v: Value = serde_json::from_slice(&m.payload)?;
            dead.insert(v["stream_seq"].as_u64().unwrap_or(0));
        }
    }
    let stream = js.get_stream(audit::AUDIT_STREAM).await?;
    let info = stream.consumer_info("audit-splunk").await?;
    let floor = info.ack_floor.stream_sequence;
    let first = stream.clone().info().await?.state.first_sequence;
    let h = hec.lock().unwrap();
    for seq in first..=floor {
        anyhow::ensure!(
            h.indexed_seqs.contains(&seq) || dead.contains(&seq),
            "event {seq} was acknowledged but never indexed"
        );
    }
    Ok(floor)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_events_reach_splunk_hec_and_nothing_is_acked_early() -> Result<()> {
    let hec: Shared = Arc::new(Mutex::new(Hec {
        token: "good-token".into(),
        ..Hec::default()
    }));
    let app = Router::new()
        .route("/services/collector/event", post(hec_event))
        .route("/services/collector/ack", post(hec_ack))
        .with_state(hec.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let mut t = TestNode::start_with(vec![squall_tests::repo_root().join("packs")], |c| {
        c.audit.max_bytes = 32 << 20;
        c.audit.exporters = vec![ExporterConfig::SplunkHec(HecConfig {
            name: "splunk".into(),
            url: url.clone(),
            token: "good-token".into(),
            indexer_ack: true,
            channel: None,
            index: None,
            sourcetype: "squall:audit".into(),
            batch_size: 50,
            in_flight: 4,
            ack_timeout_secs: 2,
            request_timeout_secs: 5,
        })];
    })
    .await?;
    let client = async_nats::connect(t.nats.url()).await?;
    let js = async_nats::jetstream::new(client);

    let total = 2_000;
    let poison = 777;
    let bus = t.node.as_ref().context("node")?.bus.clone();
    let started = Instant::now();
    for i in 0..total {
        let data = if i == poison {
            json!({"poison": true})
        } else {
            json!({"n": i})
        };
        bus.audit.emit(synthetic(i, data));
    }
    let want: BTreeSet<String> = (0..total)
        .filter(|i| *i != poison)
        .map(|i| format!("test:{i}"))
        .collect();
    poll(Duration::from_secs(180), || {
        let (hec, js, want) = (hec.clone(), js.clone(), want.clone());
        async move {
            nothing_acked_early(&js, &hec).await?;
            let done = want.is_subset(&hec.lock().unwrap().indexed);
            Ok(done.then_some(()))
        }
    })
    .await?;
    let elapsed = started.elapsed();
    println!(
        "audit export to HEC (indexer acks, 503 bursts, lost acks): {} events in {:.1} s: {:.0} events/s",
        total,
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    {
        let h = hec.lock().unwrap();
        assert!(h.refused_requests > 0, "the poisoned event was never sent");
        assert!(!h.indexed.contains(&format!("test:{poison}")));
    }
    // The refused event is in the dead-letter stream, and counted.
    let dlq = js.get_stream(audit::DEAD_LETTER_STREAM).await?;
    let m = dlq.get_raw_message(1).await?;
    let v: Value = serde_json::from_slice(&m.payload)?;
    assert_eq!(v["event"]["audit_id"], format!("test:{poison}"));
    assert!(
        v["reason"].as_str().is_some_and(|r| r.contains("code 6")),
        "{v}"
    );
    let floor = poll(Duration::from_secs(30), || {
        let (hec, js) = (hec.clone(), js.clone());
        async move {
            let floor = nothing_acked_early(&js, &hec).await?;
            let last = js
                .get_stream(audit::AUDIT_STREAM)
                .await?
                .clone()
                .info()
                .await?
                .state
                .last_sequence;
            Ok((floor == last).then_some(floor))
        }
    })
    .await?;
    assert!(floor >= total as u64);
    let metrics = reqwest::get(format!("{}/metrics", t.root))
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("squall_audit_dead_lettered_total{destination=\"splunk\"} 1"),
        "{metrics}"
    );

    // The token turns invalid: the exporter stops, acks nothing, says why.
    hec.lock().unwrap().token = "rotated-token".into();
    let more = 50;
    for i in total..total + more {
        bus.audit.emit(synthetic(i, json!({"n": i})));
    }
    let status = poll(Duration::from_secs(30), || async {
        let s = audit_status(&t).await?;
        let stopped =
            destination(&s, "splunk").is_some_and(|d| d["exporter"]["state"] == "stopped");
        Ok(stopped.then_some(s))
    })
    .await?;
    let d = destination(&status, "splunk").context("splunk")?;
    let error = d["exporter"]["error"].as_str().unwrap_or("");
    assert!(
        error.contains("credentials") && error.contains("Invalid token"),
        "{status}"
    );
    assert!(
        !error.contains("good-token"),
        "the token leaked into the status"
    );
    // All of them wait: the emitter may still be publishing the last when
    // the exporter stops, so the count is awaited, and then holds.
    let lag = poll(Duration::from_secs(30), || async {
        let s = audit_status(&t).await?;
        let lag = destination(&s, "splunk").and_then(|d| d["lag"].as_u64());
        Ok((lag == Some(more as u64)).then_some(lag))
    })
    .await
    .with_context(|| format!("the lag never reached {more}: {status}"))?;
    assert_eq!(lag, Some(more as u64));
    nothing_acked_early(&js, &hec).await?;
    let metrics = reqwest::get(format!("{}/metrics", t.root))
        .await?
        .text()
        .await?;
    assert!(metrics.contains("squall_audit_exporter_stopped{destination=\"splunk\"} 1"));

    // Fixed (the token is set right again) and restarted: the rest arrives.
    hec.lock().unwrap().token = "good-token".into();
    t.restart().await?;
    let want: BTreeSet<String> = (total..total + more).map(|i| format!("test:{i}")).collect();
    poll(Duration::from_secs(60), || {
        let (hec, js, want) = (hec.clone(), js.clone(), want.clone());
        async move {
            nothing_acked_early(&js, &hec).await?;
            Ok(want.is_subset(&hec.lock().unwrap().indexed).then_some(()))
        }
    })
    .await?;
    server.abort();
    Ok(())
}

/// Every `key.decrypted` event on the `AUDIT` stream so far, and the text
/// of the whole stream (to check no plaintext is anywhere on it).
async fn decryptions(js: &async_nats::jetstream::Context) -> Result<(Vec<Value>, String)> {
    audit_events(js, "key.decrypted").await
}

/// Every `action` event on the `AUDIT` stream so far, and the text of the
/// whole stream.
async fn audit_events(
    js: &async_nats::jetstream::Context,
    action: &str,
) -> Result<(Vec<Value>, String)> {
    let subject = format!("squall.audit.{action}");
    let mut stream = js.get_stream("AUDIT").await?;
    let last = stream.info().await?.state.last_sequence;
    let (mut found, mut text) = (Vec::new(), String::new());
    for seq in 1..=last {
        let Ok(m) = stream.get_raw_message(seq).await else {
            continue;
        };
        let payload = String::from_utf8_lossy(&m.payload).to_string();
        if m.subject.as_str() == subject {
            found.push(serde_json::from_str::<Value>(&payload)?);
        }
        text.push_str(&payload);
    }
    Ok((found, text))
}

/// The decryption event `via` `via` for execution `execution` (or rule
/// criteria: `execution` null) whose data also has `field` = `value`.
fn decryption<'a>(events: &'a [Value], via: &str, field: &str, value: &str) -> Option<&'a Value> {
    events
        .iter()
        .find(|e| e["data"]["via"] == via && e["data"][field] == value)
}

/// Secrets the engine opens by itself are audited: an Orquesta task
/// input reading `st2kv(key, decrypt=true)` in YAQL and in Jinja (a
/// system key and the user's own key), an ActionChain node's `decrypt_kv`
/// parameter, a rule's criteria comparing with a secret, a notify
/// message, an alias's immutable parameters and the rule tester. Each is
/// a `key.decrypted` event naming the user, the execution (or rule and
/// trigger instance), the task and the key; the plaintext is nowhere on
/// the stream nor in the API's masked parameters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_opened_by_workflows_chains_and_criteria_are_audited() -> Result<()> {
    const PLAIN: &str = "wf-s3cret-9f1";
    const MINE: &str = "mine-s3cret-4c7";
    let packs = tempfile::tempdir()?;
    squall_tests::write_pack(
        packs.path(),
        "vault",
        &[
            ("pack.yaml", "name: vault\nversion: 0.1.0\n"),
            (
                "actions/use.yaml",
                "name: use\nrunner_type: noop\nparameters:\n  password:\n    type: string\n    secret: true\n",
            ),
            (
                "actions/flow.yaml",
                "name: flow\nrunner_type: orquesta\nentry_point: workflows/flow.yaml\n",
            ),
            (
                "actions/workflows/flow.yaml",
                "version: 1.0\ntasks:\n  by_yaql:\n    action: vault.use\n    input:\n      password: <% st2kv('system.db_pass', decrypt => true) %>\n    next:\n      - do: by_jinja\n  by_jinja:\n    action: vault.use\n    input:\n      password: \"{{ st2kv('system.db_pass', decrypt=true) }}{{ st2kv('api_token', decrypt=true) }}\"\noutput:\n  - done: true\n",
            ),
            (
                "actions/chain.yaml",
                "name: chain\nrunner_type: action-chain\nentry_point: chains/chain.yaml\n",
            ),
            (
                "actions/chains/chain.yaml",
                "chain:\n  - name: first\n    ref: vault.use\n    params:\n      password: plain\n    on-success: open\n  - name: open\n    ref: vault.use\n    params:\n      password: \"{{ st2kv.system.db_pass | decrypt_kv }}\"\n",
            ),
            (
                "aliases/open.yaml",
                "name: open\npack: vault\naction_ref: vault.use\nformats:\n  - open the vault\nimmutable_parameters:\n  password: \"{{ st2kv.system.db_pass | decrypt_kv }}\"\n",
            ),
            (
                "actions/defaulted.yaml",
                "name: defaulted\nrunner_type: noop\nparameters:\n  password:\n    type: string\n    secret: true\n    default: \"{{ st2kv.system.db_pass | decrypt_kv }}\"\n",
            ),
            (
                "rules/guard.yaml",
                "name: guard\npack: vault\nenabled: true\ntrigger:\n  type: core.st2.webhook\n  parameters:\n    url: guard\ncriteria:\n  trigger.body.pw:\n    type: nequals\n    pattern: \"{{ st2kv.system.db_pass | decrypt_kv }}\"\naction:\n  ref: vault.defaulted\n",
            ),
        ],
    )?;
    let t = TestNode::start(vec![packs.path().to_path_buf()]).await?;
    for (name, value, scope) in [("db_pass", PLAIN, "system"), ("api_token", MINE, "user")] {
        let (code, body) = t
            .call(
                &t.http,
                reqwest::Method::PUT,
                &format!("keys/{name}"),
                Some(&json!({"name": name, "value": value, "secret": true, "scope": scope})),
            )
            .await?;
        assert_eq!(code, 200, "{body}");
    }
    let mut ran = Vec::new();
    for action in ["vault.flow", "vault.chain"] {
        let (code, created) = t
            .post("executions", &json!({"action": action, "parameters": {}}))
            .await?;
        assert_eq!(code, 201, "{created}");
        let id = created["id"].as_str().context("execution id")?.to_string();
        let done = t.finished(&id).await?;
        assert_eq!(done["status"], "succeeded", "{done}");
        ran.push(id);
    }
    let (code, hook) = t.post("webhooks/guard", &json!({"pw": "a guess"})).await?;
    anyhow::ensure!(code < 300, "webhook: {code} {hook}");
    // A notify message comparing with a secret (not showing it).
    let (code, created) = t
        .post(
            "executions",
            &json!({"action": "core.noop", "notify": {"on-success": {
                "message": "{{ (st2kv.system.db_pass | decrypt_kv) == 'x' }}",
                "routes": ["pager"]}}}),
        )
        .await?;
    assert_eq!(code, 201, "{created}");
    let notified = created["id"].as_str().context("notified run")?.to_string();
    // Through the API: an alias's immutable parameters, the rule tester.
    let (code, by_alias) = t
        .post(
            "aliasexecution",
            &json!({"name": "open", "format": "open the vault", "command": "open the vault",
                    "source_channel": "ops-room"}),
        )
        .await?;
    assert_eq!(code, 201, "{by_alias}");
    let aliased = by_alias["execution"]["id"].as_str().context("alias run")?;
    assert_eq!(t.finished(aliased).await?["status"], "succeeded");
    let (code, tested) = t
        .post(
            "rules/test",
            &json!({"rule": "vault.guard", "payload": {"pw": "a guess"}}),
        )
        .await?;
    assert_eq!(code, 200, "{tested}");
    assert_eq!(tested["matched"], true, "{tested}");
    let (flow, chain) = (ran[0].as_str(), ran[1].as_str());

    let js = async_nats::jetstream::new(async_nats::connect(t.nats.url()).await?);
    let (events, text) = poll(Duration::from_secs(30), || async {
        let (events, text) = decryptions(&js).await?;
        let all = decryption(&events, "workflow_expression", "task", "by_yaql").is_some()
            && decryption(&events, "workflow_expression", "task", "by_jinja").is_some()
            && decryption(&events, "chain_parameters", "execution", chain).is_some()
            && decryption(&events, "rule_criteria", "rule", "vault.guard").is_some()
            && decryption(&events, "alias_parameters", "action", "vault.use").is_some()
            && decryption(&events, "notify", "execution", &notified).is_some()
            && events.iter().any(|e| e["data"]["via"] == "rule_test");
        Ok(all.then_some((events, text)))
    })
    .await
    .context("the workflow's, chain's and rule's decryptions on the AUDIT stream")?;

    // Orquesta, both languages: the workflow's user, execution, action,
    // task and key.
    for task in ["by_yaql", "by_jinja"] {
        let e = decryption(&events, "workflow_expression", "task", task).context(task)?;
        assert_eq!(e["actor"]["user"], "admin", "{e}");
        assert_eq!(e["actor"]["method"], "execution", "{e}");
        assert_eq!(e["data"]["execution"], flow, "{e}");
        assert_eq!(e["data"]["action"], "vault.flow", "{e}");
        assert_eq!(e["object"]["kind"], "key", "{e}");
        assert_eq!(e["object"]["ref"], "db_pass", "{e}");
        assert_eq!(e["data"]["scope"], "st2kv.system", "{e}");
    }
    let own = events
        .iter()
        .find(|e| e["data"]["via"] == "workflow_expression" && e["object"]["ref"] == "api_token")
        .context("the user's own key opened in Jinja")?;
    assert_eq!(own["data"]["scope"], "st2kv.user", "{own}");
    assert_eq!(own["data"]["owner"], "admin", "{own}");
    assert_eq!(own["data"]["task"], "by_jinja", "{own}");
    // ActionChain: the chain's execution and action.
    let e = decryption(&events, "chain_parameters", "execution", chain).context("chain")?;
    assert_eq!(e["actor"]["user"], "admin", "{e}");
    assert_eq!(e["data"]["action"], "vault.chain", "{e}");
    assert_eq!(e["object"]["ref"], "db_pass", "{e}");
    // Rule criteria: the rule, for the trigger instance, as the system.
    let e = decryption(&events, "rule_criteria", "rule", "vault.guard").context("criteria")?;
    assert_eq!(e["actor"]["user"], "stanley", "{e}");
    assert_eq!(e["object"]["ref"], "db_pass", "{e}");
    assert!(e["data"]["trigger_instance"].is_string(), "{e}");
    let e = decryption(&events, "notify", "execution", &notified).context("notify")?;
    assert_eq!(e["actor"]["user"], "admin", "{e}");
    assert_eq!(e["data"]["action"], "core.noop", "{e}");
    // The API's: the caller.
    let e = decryption(&events, "alias_parameters", "action", "vault.use").context("alias")?;
    assert_eq!(e["actor"]["user"], "admin", "{e}");
    assert_eq!(e["object"]["ref"], "db_pass", "{e}");
    let e = events
        .iter()
        .find(|e| e["data"]["via"] == "rule_test")
        .context("rule test")?;
    assert_eq!(e["actor"]["user"], "admin", "{e}");
    assert_eq!(e["object"]["ref"], "db_pass", "{e}");
    // Every execution an event names exists: the tester's preview of the
    // action's parameters is the tester's, not a run that never was.
    for e in &events {
        if let Some(id) = e["data"]["execution"].as_str() {
            // An enforcement's event may come just before its record.
            poll(Duration::from_secs(10), || async {
                let (code, _) = t.get(&format!("executions/{id}")).await?;
                Ok((code == 200).then_some(()))
            })
            .await
            .with_context(|| format!("no execution {id}, named by {e}"))?;
        }
    }

    // The values themselves: nowhere on the stream, masked in the API.
    for secret in [PLAIN, MINE] {
        assert!(!text.contains(secret), "a secret reached the AUDIT stream");
    }
    let (_, alias_run) = t.get(&format!("executions/{aliased}")).await?;
    assert_eq!(
        alias_run["parameters"]["password"], "********",
        "{alias_run}"
    );
    for parent in [flow, chain] {
        let (code, children) = t.get(&format!("executions/{parent}/children")).await?;
        assert_eq!(code, 200, "{children}");
        let children = children.as_array().cloned().unwrap_or_default();
        assert!(!children.is_empty(), "{parent} has no children");
        for child in &children {
            assert_eq!(child["parameters"]["password"], "********", "{child}");
        }
        let (_, record) = t.get(&format!("executions/{parent}")).await?;
        let shown = format!("{record}{}", Value::Array(children));
        for secret in [PLAIN, MINE] {
            assert!(!shown.contains(secret), "a secret in {parent}'s API output");
        }
    }
    Ok(())
}

/// A secret opened away from where it was read is audited too. A workflow
/// reads a secret key without decrypting it into its context and opens
/// it in a later task (`ctx().sealed | decrypt_kv`): a decryption of that
/// key (`origin: carried`). A sealed value given as input whose key has
/// since changed is opened: a decryption of an unknown key, named by a
/// digest (`origin: unknown`). A pack config's secret item opened for an
/// action's parameters is audited once, as the config's item, not again
/// as an unknown key. No plaintext reaches the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_opened_away_from_their_key_are_audited() -> Result<()> {
    const NOW: &str = "carried-s3cret-2b8";
    const BEFORE: &str = "before-s3cret-6d1";
    const CONFIG: &str = "cfg-s3cret-31e";
    let packs = tempfile::tempdir()?;
    squall_tests::write_pack(
        packs.path(),
        "carry",
        &[
            ("pack.yaml", "name: carry\nversion: 0.1.0\n"),
            (
                "config.schema.yaml",
                "api_key:\n  type: string\n  secret: true\n",
            ),
            (
                "actions/use.yaml",
                "name: use\nrunner_type: noop\nparameters:\n  password:\n    type: string\n    secret: true\n",
            ),
            (
                "actions/configured.yaml",
                "name: configured\nrunner_type: noop\nparameters:\n  key:\n    type: string\n    secret: true\n    default: \"{{ config_context.api_key }}\"\n",
            ),
            (
                "actions/flow.yaml",
                "name: flow\nrunner_type: orquesta\nentry_point: workflows/flow.yaml\nparameters:\n  given:\n    type: string\n",
            ),
            (
                "actions/workflows/flow.yaml",
                "version: 1.0\ninput:\n  - given\nvars:\n  - sealed: <% st2kv('system.db_pass') %>\ntasks:\n  open:\n    action: carry.use\n    input:\n      password: \"{{ ctx().sealed | decrypt_kv }}\"\n    next:\n      - do: open_given\n  open_given:\n    action: carry.use\n    input:\n      password: \"{{ ctx().given | decrypt_kv }}\"\n",
            ),
        ],
    )?;
    let t = TestNode::start(vec![packs.path().to_path_buf()]).await?;
    let put_key = |value: &'static str| {
        let t = &t;
        async move {
            let (code, body) = t
                .call(
                    &t.http,
                    reqwest::Method::PUT,
                    "keys/db_pass",
                    Some(&json!({"name": "db_pass", "value": value, "secret": true})),
                )
                .await?;
            anyhow::ensure!(code == 200, "{body}");
            Ok(())
        }
    };
    // The sealed text of the key's first value, then a second value: no
    // key holds the first sealed text any more.
    put_key(BEFORE).await?;
    let (code, first) = t.get("keys/db_pass").await?;
    assert_eq!(code, 200, "{first}");
    assert_eq!(first["encrypted"], true, "{first}");
    let before = first["value"].as_str().context("sealed value")?.to_string();
    put_key(NOW).await?;
    let (code, body) = t
        .call(
            &t.http,
            reqwest::Method::PUT,
            "configs/carry",
            Some(&json!({"api_key": CONFIG})),
        )
        .await?;
    assert_eq!(code, 200, "{body}");

    let mut ran = Vec::new();
    for (action, parameters) in [
        ("carry.flow", json!({"given": before})),
        ("carry.configured", json!({})),
    ] {
        let (code, created) = t
            .post(
                "executions",
                &json!({"action": action, "parameters": parameters}),
            )
            .await?;
        assert_eq!(code, 201, "{created}");
        let id = created["id"].as_str().context("execution id")?.to_string();
        let done = t.finished(&id).await?;
        assert_eq!(done["status"], "succeeded", "{done}");
        ran.push(id);
    }
    let (flow, configured) = (ran[0].as_str(), ran[1].as_str());

    let js = async_nats::jetstream::new(async_nats::connect(t.nats.url()).await?);
    let (events, text) = poll(Duration::from_secs(30), || async {
        let (events, text) = decryptions(&js).await?;
        let (config, _) = audit_events(&js, "pack_config.decrypted").await?;
        let all = decryption(&events, "workflow_expression", "task", "open").is_some()
            && decryption(&events, "workflow_expression", "task", "open_given").is_some()
            && config.iter().any(|e| e["data"]["execution"] == configured);
        Ok(all.then_some((events, text)))
    })
    .await
    .context("the carried, unknown and config decryptions on the AUDIT stream")?;

    // Carried in the context: the key it came from.
    let e = decryption(&events, "workflow_expression", "task", "open").context("open")?;
    assert_eq!(e["data"]["execution"], flow, "{e}");
    assert_eq!(e["actor"]["user"], "admin", "{e}");
    assert_eq!(e["object"]["ref"], "db_pass", "{e}");
    assert_eq!(e["data"]["scope"], "st2kv.system", "{e}");
    assert_eq!(e["data"]["origin"], "carried", "{e}");
    // Given from outside, its key since changed: unknown, by digest.
    let e = decryption(&events, "workflow_expression", "task", "open_given").context("given")?;
    assert_eq!(e["data"]["execution"], flow, "{e}");
    assert_eq!(e["data"]["origin"], "unknown", "{e}");
    assert_eq!(e["object"]["kind"], "key", "{e}");
    assert!(e["object"]["ref"].is_null(), "{e}");
    let digest = e["data"]["sealed_sha256"].as_str().context("digest")?;
    assert_eq!(digest.len(), 16, "{e}");
    // Reading the key into the context (no decrypt) opened nothing: the
    // workflow's decryptions are those two.
    let of_flow = events.iter().filter(|e| e["data"]["execution"] == flow);
    assert_eq!(of_flow.count(), 2, "{events:?}");
    // The config's item: audited as such, not again as a key.
    assert!(
        !events.iter().any(|e| e["data"]["execution"] == configured),
        "a pack config's item reported as a key too: {events:?}"
    );
    for secret in [NOW, BEFORE, CONFIG] {
        assert!(!text.contains(secret), "a secret reached the AUDIT stream");
    }
    Ok(())
}

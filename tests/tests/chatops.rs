//! ChatOps end to end: a real Errbot with err-stackstorm (PyPI, installed by
//! `ops/env.sh`'s `ensure_errbot`) on Errbot's Text backend, driven through
//! its stdin as a chat user types, against a node with an API key; the
//! official `st2 action-alias` commands; and the rejections (malformed and
//! duplicate formats, a wrong-typed parameter, a user without rights).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use reqwest::Method;
use serde_json::{json, Value};
use squall_tests::{poll, repo_root, st2, st2_json, st2_login, TestNode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};

/// Errbot's executable: `SQUALL_ERRBOT`, else the project's `.venv/errbot`.
fn errbot_binary() -> Result<PathBuf> {
    let path = std::env::var_os("SQUALL_ERRBOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/errbot/bin/errbot"));
    anyhow::ensure!(
        path.is_file(),
        "errbot not found at {}: run ops/test (ensure_errbot installs it)",
        path.display()
    );
    Ok(path)
}

/// The interpreter the chatops pack (a system pack) runs with: one with
/// st2client and jinja2, as StackStorm's own (`SQUALL_CHATOPS_PYTHON`,
/// else the project's `.venv`).
fn chatops_python() -> Result<PathBuf> {
    let path = std::env::var_os("SQUALL_CHATOPS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/python"));
    anyhow::ensure!(path.is_file(), "no interpreter at {}", path.display());
    Ok(path)
}

/// err-stackstorm's plugin directory in Errbot's virtualenv.
fn plugin_dir(errbot: &std::path::Path) -> Result<PathBuf> {
    let lib = errbot
        .parent()
        .and_then(|b| b.parent())
        .context("errbot's virtualenv")?
        .join("lib");
    for entry in std::fs::read_dir(&lib)? {
        let dir = entry?.path().join("site-packages/err-stackstorm");
        if dir.join("st2.plug").is_file() {
            return Ok(dir);
        }
    }
    anyhow::bail!("err-stackstorm is not installed under {}", lib.display())
}

/// A running Errbot: what it printed so far (ANSI codes removed), and its
/// stdin, where the chat user types.
struct Bot {
    child: Child,
    stdin: ChildStdin,
    out: Arc<Mutex<String>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Bot {
    fn drop(&mut self) {
        self.reader.abort();
        let _ = self.child.start_kill();
    }
}

/// Text without terminal escape sequences (`ESC [ ... letter`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

impl Bot {
    async fn start(dir: &std::path::Path, node: &TestNode, api_key: &str) -> Result<Bot> {
        let errbot = errbot_binary()?;
        std::fs::create_dir_all(dir.join("data"))?;
        let config = format!(
            r#"import logging
BACKEND = "Text"
BOT_DATA_DIR = {data:?}
BOT_EXTRA_PLUGIN_DIR = {plugins:?}
BOT_LOG_FILE = {log:?}
BOT_LOG_LEVEL = logging.INFO
BOT_ADMINS = ("@alice",)
BOT_PREFIX = "!"
TEXT_DEMO_MODE = True
STACKSTORM = {{
    "api_url": {api:?},
    "auth_url": {auth:?},
    "stream_url": {stream:?},
    "route_key": "errbot",
    "plugin_prefix": "st2",
    "verify_cert": False,
    "api_auth": {{"apikey": {key:?}}},
    "rbac_auth": {{"standalone": {{}}}},
    "timer_update": 900,
}}
"#,
            data = dir.join("data").display().to_string(),
            plugins = plugin_dir(&errbot)?.display().to_string(),
            log = dir.join("errbot.log").display().to_string(),
            api = node.base,
            auth = format!("{}/auth/v1", node.root),
            stream = format!("{}/stream/v1", node.root),
            key = api_key,
        );
        std::fs::write(dir.join("config.py"), config)?;
        let mut child = Command::new(&errbot)
            .arg("-c")
            .arg(dir.join("config.py"))
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting errbot")?;
        let stdin = child.stdin.take().context("errbot's stdin")?;
        let stdout = child.stdout.take().context("errbot's stdout")?;
        let out = Arc::new(Mutex::new(String::new()));
        let sink = out.clone();
        let reader = tokio::spawn(async move {
            // Raw bytes, not lines: a prompt has no newline after it.
            let mut stdout = stdout;
            let mut raw = Vec::new();
            let mut chunk = [0u8; 8192];
            while let Ok(n) = stdout.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
                raw.extend_from_slice(&chunk[..n]);
                let text = strip_ansi(&String::from_utf8_lossy(&raw));
                *sink.lock().unwrap_or_else(|e| e.into_inner()) = text;
            }
        });
        Ok(Bot {
            child,
            stdin,
            out,
            reader,
        })
    }

    fn printed(&self) -> String {
        self.out.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Types `line` as the chat user; returns where the bot's answers to
    /// it start in [`Bot::printed`].
    async fn say(&mut self, line: &str) -> Result<usize> {
        let mark = self.printed().len();
        self.stdin.write_all(format!("{line}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(mark)
    }

    /// Waits until the bot printed, after `mark`, text containing every
    /// one of `needles`; returns that text.
    async fn expect(&self, mark: usize, needles: &[&str], timeout: Duration) -> Result<String> {
        poll(timeout, || async {
            let out = self.printed();
            let after = out.get(mark..).unwrap_or_default();
            Ok(needles
                .iter()
                .all(|n| after.contains(n))
                .then(|| after.to_string()))
        })
        .await
        .with_context(|| {
            format!(
                "the bot never printed {needles:?}; it printed:\n{}",
                self.printed().get(mark..).unwrap_or_default()
            )
        })
    }
}

/// An API key for a new user with `role`.
async fn api_key(node: &TestNode, user: &str, role: &str) -> Result<String> {
    let client = node.user(user, role).await?;
    let (status, body) = node
        .call(&client, Method::POST, "apikeys", Some(&json!({})))
        .await?;
    anyhow::ensure!(status == 201, "API key for {user}: {status} {body}");
    body["key"]
        .as_str()
        .map(str::to_string)
        .context("no key in the answer")
}

fn fault(body: &Value) -> &str {
    body["faultstring"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn a_chat_user_runs_aliases_through_a_real_errbot() -> Result<()> {
    let python = chatops_python()?;
    // Actions call the API (chatops.format_execution_result reads the
    // execution): it listens where its public URL says.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let node = TestNode::start_with(vec![repo_root().join("packs")], |c| {
        c.virtualenvs.python = python;
        c.api.listen = format!("127.0.0.1:{port}").parse().expect("address");
    })
    .await?;
    let dir = tempfile::tempdir()?;
    let key = api_key(&node, "chatbot", "operator").await?;
    let mut bot = Bot::start(dir.path(), &node, &key).await?;
    bot.expect(0, &["multiline mode", ">>>"], Duration::from_secs(60))
        .await?;

    // Ready when an announcement on the bot's route reaches the chat: the
    // plugin is active and its stream is connected.
    let ready = Instant::now();
    poll(Duration::from_secs(60), || async {
        let (status, e) = node
            .post(
                "executions",
                &json!({"action": "chatops.post_message", "parameters": {
                    "route": "errbot", "channel": "@alice", "message": "bot-probe"}}),
            )
            .await?;
        anyhow::ensure!(status == 201, "{e}");
        let seen = poll(Duration::from_secs(2), || async {
            Ok(bot.printed().contains("bot-probe").then_some(()))
        })
        .await;
        Ok(seen.ok())
    })
    .await
    .context("the bot never connected to the event stream")?;
    eprintln!("bot ready after {:?}", ready.elapsed());

    // Help: Errbot's own lists err-stackstorm's commands; `!st2help` the
    // examples pack's aliases.
    let mark = bot.say("!help").await?;
    bot.expect(mark, &["!st2help"], Duration::from_secs(30))
        .await?;
    let mark = bot.say("!st2help").await?;
    let help = bot
        .expect(
            mark,
            &[
                "[examples]",
                "!st2 run <cmd> - Run a shell command on the node.",
                "!st2 run <cmd> on <hosts> - Run a shell command on hosts over SSH.",
                "!st2 show last [count] executions - Show the most recent executions.",
                "!st2 approve {{ inquiry_id }} - Approve an inquiry",
            ],
            Duration::from_secs(30),
        )
        .await?;
    assert!(!help.contains("[chatops]"), "{help}");

    // A command: the ack (Markdown: the backticks become formatting), then
    // the rendered result, in the chat.
    let started = Instant::now();
    let mark = bot.say("!st2 run echo chatops-hello").await?;
    let ack = bot
        .expect(
            mark,
            &["Running echo chatops-hello ("],
            Duration::from_secs(30),
        )
        .await?;
    let acked = started.elapsed();
    let id = ack
        .split("Running echo chatops-hello (")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .context("no execution id in the ack")?
        .to_string();
    let after_ack = bot.printed().len();
    if let Err(e) = bot
        .expect(after_ack, &["chatops-hello"], Duration::from_secs(60))
        .await
    {
        let (_, all) = node
            .get("executions?limit=-1&include_attributes=action.ref,status,result,parameters")
            .await?;
        anyhow::bail!("{e:#}\nexecutions: {all:#}");
    }
    let answered = started.elapsed();
    eprintln!("chat command → ack {acked:?}, → result message {answered:?}");

    let (_, e) = node.get(&format!("executions/{id}")).await?;
    assert_eq!(e["action"]["ref"], "core.local", "{e}");
    assert_eq!(e["parameters"]["cmd"], "echo chatops-hello", "{e}");
    assert_eq!(e["context"]["api_user"], "@alice", "{e}");
    assert_eq!(e["context"]["user"], "chatbot", "{e}");
    assert_eq!(e["context"]["source_channel"], "@alice", "{e}");
    assert_eq!(e["context"]["action_alias_ref"]["name"], "run_local", "{e}");

    // What the bot answers when nothing or two things match, and to a
    // command that is not an alias at all; nothing runs.
    // Nothing ran: one core.local run (the command above), no
    // examples.last_executions.
    let nothing_ran = || async {
        let (_, local) = node.get("executions?action=core.local&limit=-1").await?;
        let (_, last) = node
            .get("executions?action=examples.last_executions&limit=-1")
            .await?;
        anyhow::ensure!(
            local.as_array().map(Vec::len) == Some(1) && last.as_array().map(Vec::len) == Some(0),
            "something ran: {local} {last}"
        );
        Ok::<_, anyhow::Error>(())
    };
    for (format, name) in [
        ("ping {{host}}", "ping"),
        ("ping {{host}} {{count=3}}", "ping_n"),
    ] {
        let (status, created) = node
            .post(
                "actionalias",
                &json!({"name": name, "pack": "examples", "action_ref": "core.local",
                        "formats": [format]}),
            )
            .await?;
        assert_eq!(status, 201, "{created}");
    }
    let (status, m) = node
        .post("actionalias/match", &json!({"command": "ping web-1"}))
        .await?;
    assert_eq!(status, 400);
    assert!(
        fault(&m).starts_with("Command 'ping web-1' matched more than 1 pattern"),
        "{m}"
    );
    let mark = bot.say("!st2 ping web-1").await?;
    bot.expect(
        mark,
        &["st2 command 'ping web-1' not found.  View available commands with !st2help."],
        Duration::from_secs(30),
    )
    .await?;
    let mark = bot.say("!st2 fly me to the moon").await?;
    bot.expect(
        mark,
        &["st2 command 'fly me to the moon' not found."],
        Duration::from_secs(30),
    )
    .await?;
    let mark = bot.say("!frobnicate").await?;
    bot.expect(
        mark,
        &["Command \"frobnicate\" not found."],
        Duration::from_secs(30),
    )
    .await?;

    // A parameter of the wrong type: the bot shows the API's error.
    let mark = bot.say("!st2 show last many executions").await?;
    bot.expect(mark, &["count", "many"], Duration::from_secs(30))
        .await?;
    nothing_ran().await?;

    // The same format as another alias: refused.
    let (status, dup) = node
        .post(
            "actionalias",
            &json!({"name": "again", "pack": "examples", "action_ref": "core.local",
                    "formats": ["run   {{ cmd }}"]}),
        )
        .await?;
    assert_eq!(status, 409, "{dup}");
    assert!(
        fault(&dup).contains("already a format of alias examples.run_local"),
        "{dup}"
    );
    let (status, bad) = node
        .post(
            "actionalias",
            &json!({"name": "broken", "pack": "examples", "action_ref": "core.local",
                    "formats": ["run {{cmd}} ("]}),
        )
        .await?;
    assert_eq!(status, 400, "{bad}");
    assert!(
        fault(&bad).starts_with("formats.0: format string \"run {{cmd}} (\" is not valid"),
        "{bad}"
    );

    // An observer's key cannot run an alias; it may still match one.
    let observer = node.user("watcher", "observer").await?;
    let (status, denied) = node
        .call(
            &observer,
            Method::POST,
            "aliasexecution/match_and_execute",
            Some(&json!({"command": "run date", "source_channel": "ops", "user": "@mallory"})),
        )
        .await?;
    assert_eq!(status, 403, "{denied}");
    assert!(fault(&denied).contains("has role observer"), "{denied}");
    let (status, matched) = node
        .call(
            &observer,
            Method::POST,
            "actionalias/match",
            Some(&json!({"command": "run date on web-1"})),
        )
        .await?;
    assert_eq!(status, 200, "{matched}");
    assert_eq!(matched["actionalias"]["ref"], "examples.run_on_hosts");
    assert_eq!(matched["representation"], "run {{ cmd }} on {{ hosts }}");
    nothing_ran().await?;

    // The official CLI: list, get, match, execute.
    let home = dir.path().join("st2home");
    std::fs::create_dir_all(&home)?;
    st2_login(&node, &home).await?;
    let list = st2_json(&node, &home, &["action-alias", "list", "-p", "examples"]).await?;
    let names: Vec<&str> = list
        .as_array()
        .context("a list")?
        .iter()
        .filter_map(|a| a["ref"].as_str())
        .collect();
    for n in [
        "examples.approve",
        "examples.last_executions",
        "examples.run_local",
        "examples.run_on_hosts",
    ] {
        assert!(names.contains(&n), "{names:?}");
    }
    let got = st2_json(&node, &home, &["action-alias", "get", "examples.approve"]).await?;
    assert_eq!(got["action_ref"], "examples.approve_inquiry", "{got}");
    let (ok, out, err) = st2(
        &node,
        &home,
        &["action-alias", "match", "show last 2 executions"],
    )
    .await?;
    assert!(ok && out.contains("last_executions"), "{out}{err}");
    let (ok, out, err) = st2(&node, &home, &["action-alias", "match", "ping web-1"]).await?;
    assert!(
        !ok && (out + &err).contains("matched more than 1 pattern"),
        "ambiguous via st2"
    );
    let (ok, out, err) = st2(
        &node,
        &home,
        &["action-alias", "execute", "show last 2 executions"],
    )
    .await?;
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("Matching Action-alias: 'examples.last_executions'"),
        "{out}"
    );
    let id = out
        .split("st2 execution get ")
        .nth(1)
        .map(str::trim)
        .context("no execution id")?;
    let e = node.finished(id).await?;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(e["parameters"]["count"], 2, "{e}");
    assert_eq!(
        e["result"]["stdout"]
            .as_str()
            .unwrap_or_default()
            .lines()
            .count(),
        2,
        "{e}"
    );
    let (ok, out, err) = st2(
        &node,
        &home,
        &["action-alias", "execute", "show last many executions"],
    )
    .await?;
    assert!(!ok && (out + &err).contains("many"), "wrong type via st2");
    // The observer, through the CLI: refused, and says why.
    let watcher_home = dir.path().join("watcher");
    std::fs::create_dir_all(&watcher_home)?;
    let (ok, out, err) = st2(
        &node,
        &watcher_home,
        &["login", "watcher", "-p", "watcher-password"],
    )
    .await?;
    anyhow::ensure!(ok, "st2 login: {out}{err}");
    let (ok, out, err) = st2(
        &node,
        &watcher_home,
        &["action-alias", "execute", "run date"],
    )
    .await?;
    assert!(
        !ok && (out.clone() + &err).contains("has role observer"),
        "{out}{err}"
    );

    // An admin's credentials run the alias as the chat user it names;
    // immutable parameters are rendered with the execution's context and
    // cannot be given in the command.
    let (status, created) = node
        .post(
            "actionalias",
            &json!({"name": "who", "pack": "examples", "action_ref": "core.local",
                    "formats": ["who runs this"],
                    "immutable_parameters": {"cmd": "echo {{ api_user }} via {{ source_channel }}"},
                    "ack": {"format": "{{ actionalias.ref }} as {{ execution.context.user }}"}}),
        )
        .await?;
    assert_eq!(status, 201, "{created}");
    let (status, named) = node
        .post(
            "aliasexecution",
            &json!({"name": "who", "format": "who runs this", "command": "who runs this",
                    "user": "@bob", "source_channel": "ops-room"}),
        )
        .await?;
    assert_eq!(status, 201, "{named}");
    assert_eq!(named["message"], "examples.who as @bob", "{named}");
    let id = named["execution"]["id"].as_str().context("an execution")?;
    let e = node.finished(id).await?;
    assert_eq!(e["result"]["stdout"], "@bob via ops-room", "{e}");
    let (status, refused) = node
        .post(
            "aliasexecution/match_and_execute",
            &json!({"command": "who runs this cmd=reboot", "source_channel": "ops-room"}),
        )
        .await?;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(
        fault(&refused),
        "Immutable arguments cannot be overriden: cmd"
    );

    // Registering the pack from disk keeps the aliases made through the
    // API (a merge, as for actions and rules).
    let (status, registered) = node
        .post("packs/register", &json!({"packs": ["examples"]}))
        .await?;
    assert_eq!(status, 200, "{registered}");
    for alias in ["examples.who", "examples.ping", "examples.run_local"] {
        let (status, got) = node.get(&format!("actionalias/{alias}")).await?;
        assert_eq!(status, 200, "{alias}: {got}");
    }

    // An inquiry approved from the chat: core.ask waits, `approve <id>`
    // answers it, the chat hears so.
    let (status, asked) = node
        .post(
            "executions",
            &json!({"action": "core.ask", "parameters": {}}),
        )
        .await?;
    assert_eq!(status, 201, "{asked}");
    let inquiry = asked["id"].as_str().context("an inquiry")?.to_string();
    poll(Duration::from_secs(30), || async {
        let (_, e) = node.get(&format!("executions/{inquiry}")).await?;
        Ok((e["status"] == "pending").then_some(()))
    })
    .await?;
    let mark = bot.say(&format!("!st2 approve {inquiry}")).await?;
    bot.expect(
        mark,
        &[
            &format!("Approving inquiry {inquiry}."),
            &format!("inquiry {inquiry} approved"),
        ],
        Duration::from_secs(60),
    )
    .await?;
    let e = node.finished(&inquiry).await?;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(e["result"]["response"], json!({"continue": true}), "{e}");
    Ok(())
}

//! `squall up` as a user runs it: a real process that starts its own
//! nats-server, loads the shipped packs, serves the API, runs a webhook's
//! rule, and stops cleanly on SIGTERM.

use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use squall_tests::{
    client_with_token, free_port, login, nats_server_binary, poll, repo_root, squall_binary,
};

fn terminate(child: &Child) -> Result<()> {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id())?),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    Ok(())
}

/// Stops `squall up` (and so its nats-server) if the test fails midway.
struct StopOnDrop(Option<Child>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let Some(mut child) = self.0.take() else {
            return;
        };
        if terminate(&child).is_ok() {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = child.kill();
    }
}

#[tokio::test]
async fn squall_up_serves_the_examples_and_stops_on_sigterm() -> Result<()> {
    let data = tempfile::tempdir()?;
    let (nats_port, api_port) = (free_port()?, free_port()?);
    let child = Command::new(squall_binary()?)
        .current_dir(repo_root())
        .args(["up", "--nats-port", &nats_port.to_string()])
        .args(["--listen", &format!("127.0.0.1:{api_port}")])
        .args(["--auth-listen", &format!("127.0.0.1:{}", free_port()?)])
        .args(["--stream-listen", &format!("127.0.0.1:{}", free_port()?)])
        .arg("--data-dir")
        .arg(data.path())
        .arg("--nats-server")
        .arg(nats_server_binary()?)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let mut child = StopOnDrop(Some(child));
    let root = format!("http://127.0.0.1:{api_port}");
    let base = format!("{root}/api/v1");
    let password_file = data.path().join("admin-password");

    let result = async {
        // The first admin's password is in the data dir, readable by us only.
        let token = poll(Duration::from_secs(60), || async {
            let Ok(password) = std::fs::read_to_string(&password_file) else {
                return Ok(None);
            };
            Ok(login(&root, "admin", password.trim()).await.ok())
        })
        .await?;
        let mode = std::fs::metadata(&password_file)?.permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let anonymous = reqwest::Client::new()
            .get(format!("{base}/executions"))
            .send()
            .await?;
        assert_eq!(anonymous.status().as_u16(), 401, "auth is on by default");
        let http = client_with_token(&token)?;
        // Ready once the examples pack's rule is visible.
        poll(Duration::from_secs(60), || async {
            let r = http
                .get(format!("{base}/rules/examples.alert_diagnose"))
                .send()
                .await;
            Ok(r.ok().filter(|r| r.status().is_success()).map(|_| ()))
        })
        .await?;
        let r = http
            .post(format!("{base}/webhooks/alerts"))
            .json(&json!({"severity": "critical", "host": "web-3", "check": "disk"}))
            .send()
            .await?;
        assert_eq!(r.status().as_u16(), 202);
        let exec: Value = poll(Duration::from_secs(30), || async {
            let list: Value = http
                .get(format!("{base}/executions"))
                .send()
                .await?
                .json()
                .await?;
            Ok(list
                .as_array()
                .and_then(|l| l.first().cloned())
                .filter(|e| e["status"] == "succeeded" || e["status"] == "failed"))
        })
        .await?;
        assert_eq!(exec["status"], "succeeded", "{exec}");
        assert_eq!(exec["action"]["ref"], "examples.diagnose");
        assert_eq!(
            exec["result"]["stdout"]["host"], "web-3",
            "diagnostics JSON is parsed"
        );

        // The README's CLI flow: log in with the password file, then list.
        let config_home = tempfile::tempdir()?;
        let cli = |args: &[&str]| {
            Command::new(squall_binary()?)
                .args(args)
                .env("SQUALL_URL", &root)
                .env("XDG_CONFIG_HOME", config_home.path())
                .env_remove("SQUALL_AUTH_TOKEN")
                .env_remove("SQUALL_API_KEY")
                .output()
                .map_err(anyhow::Error::from)
        };
        let denied = cli(&["execution", "list"])?;
        assert!(!denied.status.success());
        assert!(String::from_utf8_lossy(&denied.stderr).contains("squall login"));
        let login_out = cli(&[
            "login",
            "--password-file",
            password_file.to_str().unwrap_or_default(),
        ])?;
        assert!(
            login_out.status.success(),
            "{}",
            String::from_utf8_lossy(&login_out.stderr)
        );
        let saved = config_home.path().join("squall/token");
        assert_eq!(
            std::fs::metadata(&saved)?.permissions().mode() & 0o777,
            0o600
        );
        let listed = cli(&["execution", "list", "--json"])?;
        assert!(
            listed.status.success(),
            "{}",
            String::from_utf8_lossy(&listed.stderr)
        );
        let listed: Value = serde_json::from_slice(&listed.stdout)?;
        assert_eq!(listed[0]["id"], exec["id"]);

        // The rest of the CLI, each against the real node.
        let json_of = |args: &[&str]| -> Result<Value> {
            let mut all = args.to_vec();
            all.push("--json");
            let out = cli(&all)?;
            anyhow::ensure!(
                out.status.success(),
                "squall {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(serde_json::from_slice(&out.stdout)?)
        };
        json_of(&["key", "set", "greeting", "hi"])?;
        assert_eq!(json_of(&["key", "get", "greeting"])?["value"], "hi");
        let sealed = json_of(&["key", "set", "pw", "s3cr3t", "--encrypt", "--ttl", "600"])?;
        assert_eq!(sealed["encrypted"], true);
        assert_eq!(
            json_of(&["key", "get", "pw", "--decrypt"])?["value"],
            "s3cr3t"
        );
        assert_eq!(
            json_of(&["key", "list", "--prefix", "gr"])?
                .as_array()
                .map(Vec::len),
            Some(1)
        );
        assert!(cli(&["key", "delete", "greeting"])?.status.success());
        let rules = json_of(&["rule", "list"])?;
        assert!(rules.to_string().contains("examples.alert_diagnose"));
        assert_eq!(
            json_of(&["rule", "get", "examples.alert_diagnose"])?["enabled"],
            true
        );
        let instances = json_of(&["trigger-instance", "list"])?;
        let instance_id = instances[0]["id"].as_str().unwrap_or_default().to_string();
        assert_eq!(
            json_of(&["trigger-instance", "get", &instance_id])?["status"],
            "processed"
        );
        assert!(json_of(&["webhook", "list"])?
            .to_string()
            .contains("alerts"));
        assert!(json_of(&["pack", "list"])?.to_string().contains("examples"));
        let key = json_of(&["apikey", "create"])?;
        assert_eq!(key["key"].as_str().map(str::len), Some(64));
        let rerun = json_of(&[
            "execution",
            "re-run",
            exec["id"].as_str().unwrap_or_default(),
            "check=memory",
        ])?;
        assert_eq!(rerun["parameters"]["check"], "memory");

        let started = json_of(&["run", "core.local", "cmd=sleep 1; echo tailed", "--async"])?;
        let tail = cli(&[
            "execution",
            "tail",
            started["id"].as_str().unwrap_or_default(),
        ])?;
        let tail_out = String::from_utf8_lossy(&tail.stdout);
        assert!(
            tail.status.success() && tail_out.contains("tailed"),
            "{tail_out}"
        );
        let sleeper = json_of(&["run", "core.local", "cmd=sleep 300", "--async"])?;
        let sleeper_id = sleeper["id"].as_str().unwrap_or_default().to_string();
        poll(Duration::from_secs(30), || async {
            let e: Value = http
                .get(format!("{base}/executions/{sleeper_id}"))
                .send()
                .await?
                .json()
                .await?;
            Ok((e["status"] == "running").then_some(()))
        })
        .await?;
        json_of(&["execution", "cancel", &sleeper_id])?;
        poll(Duration::from_secs(30), || async {
            let e: Value = http
                .get(format!("{base}/executions/{sleeper_id}"))
                .send()
                .await?
                .json()
                .await?;
            Ok((e["status"] == "canceled").then_some(()))
        })
        .await?;

        // `run --tail` prints the output as it comes, then the outcome.
        let tailed = cli(&["run", "core.local", "cmd=echo live; sleep 1; echo done", "--tail"])?;
        let tailed_out = String::from_utf8_lossy(&tailed.stdout);
        assert!(tailed.status.success(), "{tailed_out}");
        assert!(
            tailed_out.contains("live\ndone\n") && tailed_out.contains("status=succeeded"),
            "{tailed_out}"
        );

        // Rules from a file, switched off and on, then gone.
        let rule_file = config_home.path().join("rule.yaml");
        std::fs::write(
            &rule_file,
            "name: cli_rule\npack: default\ntrigger:\n  type: core.st2.webhook\n  parameters: {url: cli}\naction:\n  ref: core.noop\n",
        )?;
        let created = json_of(&["rule", "create", rule_file.to_str().unwrap_or_default()])?;
        assert_eq!(created["ref"], "default.cli_rule");
        assert_eq!(json_of(&["rule", "disable", "default.cli_rule"])?["enabled"], false);
        assert_eq!(json_of(&["rule", "enable", "default.cli_rule"])?["enabled"], true);
        assert!(json_of(&["trigger", "list"])?.to_string().contains("\"url\":\"cli\""));
        assert!(cli(&["rule", "delete", "default.cli_rule"])?.status.success());
        poll(Duration::from_secs(10), || async {
            Ok((!cli(&["rule", "get", "default.cli_rule"])?.status.success()).then_some(()))
        })
        .await?;

        // An inquiry, answered from the CLI.
        let asked = json_of(&["run", "core.ask", "--async"])?;
        let asked_id = asked["id"].as_str().unwrap_or_default().to_string();
        poll(Duration::from_secs(30), || async {
            let open = json_of(&["inquiry", "list"])?;
            Ok(open.to_string().contains(&asked_id).then_some(()))
        })
        .await?;
        let answered = json_of(&["inquiry", "respond", &asked_id, "continue=true"])?;
        assert_eq!(answered["response"]["continue"], true);
        let refused = cli(&["inquiry", "respond", &asked_id, "continue=true"])?;
        assert!(!refused.status.success());
        assert!(String::from_utf8_lossy(&refused.stderr).contains("409"));

        // Children, as a tree, and the list's filters.
        let parent_id = exec["id"].as_str().unwrap_or_default().to_string();
        let child: Value = http
            .post(format!("{base}/executions"))
            .json(&json!({"action": "core.noop", "context": {"parent": {"execution_id": parent_id}}}))
            .send()
            .await?
            .json()
            .await?;
        let child_id = child["id"].as_str().unwrap_or_default().to_string();
        let kids = json_of(&["execution", "children", &parent_id])?;
        assert_eq!(kids[0]["id"], child_id.as_str());
        let tree = cli(&["execution", "children", &parent_id])?;
        assert!(String::from_utf8_lossy(&tree.stdout).contains(&child_id));
        let asks = json_of(&["execution", "list", "--action", "core.ask", "--parent", "null"])?;
        assert_eq!(asks.as_array().map(Vec::len), Some(1), "{asks}");

        // A workflow, then its task tree under `execution get`.
        let flow = json_of(&["run", "examples.orquesta-sequential", "name=cli"])?;
        assert_eq!(flow["status"], "succeeded", "{flow}");
        let flow_id = flow["id"].as_str().unwrap_or_default().to_string();
        poll(Duration::from_secs(10), || async {
            let shown = cli(&["execution", "get", &flow_id])?;
            let text = String::from_utf8_lossy(&shown.stdout).to_string();
            Ok((text.contains("+ tasks:") && ["task1", "task2", "task3"].iter().all(|t| text.contains(t)))
                .then_some(()))
        })
        .await?;

        // A settings file instead of flags: URL and API key.
        let settings = config_home.path().join("settings.yaml");
        std::fs::write(
            &settings,
            format!("url: {root}\napi_key: {}\n", key["key"].as_str().unwrap_or_default()),
        )?;
        let elsewhere = tempfile::tempdir()?;
        let with_settings = |file: &std::path::Path| {
            Command::new(squall_binary()?)
                .args(["execution", "list", "--json", "-n", "1"])
                .env("SQUALL_CONFIG", file)
                .env("XDG_CONFIG_HOME", elsewhere.path())
                .env_remove("SQUALL_URL")
                .env_remove("SQUALL_AUTH_TOKEN")
                .env_remove("SQUALL_API_KEY")
                .output()
                .map_err(anyhow::Error::from)
        };
        let out = with_settings(&settings)?;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        std::fs::write(&settings, format!("url: {root}\napikey: nope\n"))?;
        let out = with_settings(&settings)?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains("settings.yaml") && err.contains("apikey"), "{err}");
        anyhow::Ok(())
    }
    .await;

    let mut child = child.0.take().context("child")?;
    terminate(&child)?;
    let status = poll(Duration::from_secs(30), || {
        let s = child.try_wait();
        async move { Ok(s?) }
    })
    .await?;
    result?;
    assert!(status.success(), "squall up exited with {status}");
    // Its nats-server is gone too: the port is free again.
    poll(Duration::from_secs(10), || async move {
        Ok(std::net::TcpListener::bind(("127.0.0.1", nats_port))
            .ok()
            .map(|_| ()))
    })
    .await?;
    Ok(())
}

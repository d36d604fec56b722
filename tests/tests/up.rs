//! `squall up` as a user runs it: a real process that starts its own
//! nats-server, loads the shipped packs, serves the API, runs a webhook's
//! rule, and stops cleanly on SIGTERM.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use squall_tests::{nats_server_binary, poll, repo_root};

fn squall_binary() -> Result<PathBuf> {
    // target/<profile>/deps/<test> → target/<profile>/squall
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .context("target dir")?;
    let bin = dir.join("squall");
    anyhow::ensure!(
        bin.is_file(),
        "{} not built: run ops/test, which builds it before the tests",
        bin.display()
    );
    Ok(bin)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[tokio::test]
async fn squall_up_serves_the_examples_and_stops_on_sigterm() -> Result<()> {
    let data = tempfile::tempdir()?;
    let (nats_port, api_port) = (free_port()?, free_port()?);
    let mut child = Command::new(squall_binary()?)
        .current_dir(repo_root())
        .args(["up", "--nats-port", &nats_port.to_string()])
        .args(["--listen", &format!("127.0.0.1:{api_port}")])
        .arg("--data-dir")
        .arg(data.path())
        .arg("--nats-server")
        .arg(nats_server_binary()?)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let base = format!("http://127.0.0.1:{api_port}/api/v1");
    let http = reqwest::Client::new();

    let result = async {
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
        anyhow::Ok(())
    }
    .await;

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )?;
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

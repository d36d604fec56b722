//! Python pack sensors on real nodes: StackStorm's own sensors, unchanged
//! (`contrib/linux`'s passive `FileWatchSensor`, `contrib/examples`'
//! polling `FibonacciSensor`; `tests/fixtures`), each in a process of its
//! own, dispatching trigger instances that fire rules; crashes restarted;
//! bad sensors and bad payloads reported through `GET /sensortypes`; a
//! polling sensor moving to another node when its node is killed.
//!
//! The cluster test starts `squall node` processes: `cargo build --bin
//! squall` first.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::Value;
use squall_tests::cluster::{admin_client, spec_in, Api, NodeProcess};
use squall_tests::{
    free_port, poll, repo_root, st2_json, st2_login, write_pack, NatsServer, TestNode,
};

/// A directory of packs holding StackStorm's fixture pack `name`
/// (a link to it: the fixture stays unchanged).
fn packs_with_fixture(dir: &Path, fixture: &str) -> Result<PathBuf> {
    let packs = dir.join("packs");
    std::fs::create_dir_all(&packs)?;
    std::os::unix::fs::symlink(
        repo_root().join("tests/fixtures/st2-packs").join(fixture),
        packs.join(fixture),
    )?;
    Ok(packs)
}

/// Waits until sensor `reference` reports `state` (and `check` holds);
/// returns its view.
async fn sensor_in_state(
    node: &TestNode,
    reference: &str,
    state: &str,
    timeout: Duration,
    check: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let last = std::sync::Mutex::new(Value::Null);
    let found = poll(timeout, || async {
        let (status, v) = node.get(&format!("sensortypes/{reference}")).await?;
        anyhow::ensure!(status == 200, "GET sensortypes/{reference}: {status} {v}");
        let ok = v["state"] == state && check(&v);
        *last.lock().expect("lock") = v.clone();
        Ok(ok.then_some(v))
    })
    .await;
    found.with_context(|| {
        format!(
            "sensor {reference} never was {state}; last seen: {:#}",
            last.lock().expect("lock")
        )
    })
}

async fn instances_of(node: &TestNode, trigger: &str) -> Result<Vec<Value>> {
    let (status, v) = node
        .get(&format!("triggerinstances?trigger={trigger}&limit=-1"))
        .await?;
    anyhow::ensure!(status == 200, "{status} {v}");
    Ok(v.as_array().cloned().unwrap_or_default())
}

fn millis_between(from: &Value, to: &Value) -> Result<i64> {
    let at = |v: &Value| -> Result<chrono::DateTime<chrono::Utc>> {
        let text = v.as_str().context("a timestamp")?;
        Ok(chrono::DateTime::parse_from_rfc3339(text)?.with_timezone(&chrono::Utc))
    };
    Ok((at(to)? - at(from)?).num_milliseconds())
}

#[tokio::test]
async fn file_watch_sensor_fires_the_rule_of_its_trigger_for_each_appended_line() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let packs = packs_with_fixture(dir.path(), "linux")?;
    let watched = dir.path().join("watched.log");
    let other = dir.path().join("other.log");
    std::fs::write(&watched, "")?;
    std::fs::write(&other, "")?;
    let rule = |name: &str, file: &Path, cmd: &str| {
        format!(
            "name: {name}\npack: watch\nenabled: true\ntrigger:\n  type: linux.file_watch.line\n  parameters:\n    file_path: {}\naction:\n  ref: core.local\n  parameters:\n    cmd: \"{cmd}\"\n",
            file.display()
        )
    };
    write_pack(
        &packs,
        "watch",
        &[
            (
                "pack.yaml",
                "name: watch\nversion: 1.0.0\ndescription: Rules on watched files.\nauthor: squall\n",
            ),
            (
                "rules/on_line.yaml",
                &rule("on_line", &watched, "echo got {{ trigger.line }}"),
            ),
            (
                "rules/on_other.yaml",
                &rule("on_other", &other, "echo other {{ trigger.line }}"),
            ),
        ],
    )?;
    let node = TestNode::start(vec![packs]).await?;
    let sensor = sensor_in_state(
        &node,
        "linux.FileWatchSensor",
        "running",
        Duration::from_secs(60),
        |_| true,
    )
    .await?;
    assert_eq!(sensor["node"], "test-node");
    assert_eq!(
        sensor["trigger_types"],
        serde_json::json!(["linux.file_watch.line"])
    );
    assert!(sensor["pid"].as_u64().is_some(), "{sensor}");

    // The sensor tails from the end of the file once add_trigger reached
    // it: append until a line fires the rule.
    let mut appended = 0;
    let written_at = std::sync::Mutex::new(std::collections::HashMap::new());
    let execution = poll(Duration::from_secs(60), || {
        appended += 1;
        let write = appended % 20 == 1;
        let watched = watched.clone();
        let node = &node;
        let written_at = &written_at;
        async move {
            if write {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new().append(true).open(&watched)?;
                writeln!(f, "line {appended}")?;
                written_at
                    .lock()
                    .expect("lock")
                    .insert(format!("line {appended}"), chrono::Utc::now());
            }
            let (_, list) = node.get("executions?rule=watch.on_line&limit=-1").await?;
            Ok(list.as_array().and_then(|l| l.last().cloned()))
        }
    })
    .await?;
    let id = execution["id"].as_str().context("execution id")?;
    let done = node.finished(id).await?;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let stdout = done["result"]["stdout"].as_str().unwrap_or_default();
    assert!(stdout.starts_with("got line "), "{done:#}");

    let instance_id = done["context"]["trigger_instance"]["id"]
        .as_str()
        .context("trigger instance of the execution")?;
    let (_, instance) = node.get(&format!("triggerinstances/{instance_id}")).await?;
    assert_eq!(instance["trigger_type"], "linux.file_watch.line");
    assert_eq!(
        instance["payload"]["file_path"],
        watched.display().to_string()
    );
    assert_eq!(instance["payload"]["file_name"], "watched.log");
    assert_eq!(
        Some(instance["payload"]["line"].as_str().unwrap_or_default()),
        stdout.trim().strip_prefix("got ")
    );
    node.rules_idle().await?;
    let (_, others) = node.get("executions?rule=watch.on_other&limit=-1").await?;
    assert_eq!(
        others.as_array().map(Vec::len),
        Some(0),
        "a line of one file reaches only the rules of that file's trigger"
    );

    // Disabling the rule drops its trigger: the sensor gets remove_trigger
    // and stops tailing the file. A dispatch by the dropped trigger's ref
    // would be rejected (no such trigger any more) and counted.
    let (_, mut rule) = node.get("rules/watch.on_line").await?;
    rule["enabled"] = Value::Bool(false);
    let (status, body) = node
        .call(
            &node.http,
            reqwest::Method::PUT,
            "rules/watch.on_line",
            Some(&rule),
        )
        .await?;
    anyhow::ensure!(status == 200, "disabling the rule: {status} {body}");
    let trigger_ref = instance["trigger"]
        .as_str()
        .context("trigger ref")?
        .to_string();
    poll(Duration::from_secs(10), || async {
        let (status, _) = node.get(&format!("triggers/{trigger_ref}")).await?;
        Ok((status == 404).then_some(()))
    })
    .await?;
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&watched)?;
        writeln!(f, "after the rule was disabled")?;
    }
    // The sensor reads its files every 0.1 s: two seconds without a
    // dispatch is its answer.
    let window = Instant::now() + Duration::from_secs(2);
    while Instant::now() < window {
        let (_, v) = node.get("sensortypes/linux.FileWatchSensor").await?;
        assert_eq!(v["rejected"], 0, "the sensor still watched the file: {v:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = instances_of(&node, &trigger_ref).await?;
    assert!(
        after
            .iter()
            .all(|i| i["payload"]["line"] != "after the rule was disabled"),
        "{after:#?}"
    );

    // Measured: dispatch (the instance's occurrence) → execution requested
    // → finished.
    let requested = millis_between(&instance["occurrence_time"], &done["start_timestamp"])?;
    let finished = millis_between(&instance["occurrence_time"], &done["end_timestamp"])?;
    let line = instance["payload"]["line"].as_str().unwrap_or_default();
    let written = written_at.lock().expect("lock").get(line).copied();
    let appended_to_finished = match written {
        Some(at) => millis_between(&Value::String(at.to_rfc3339()), &done["end_timestamp"])?,
        None => anyhow::bail!("line {line:?} was never appended"),
    };
    println!(
        "sensor dispatch → execution requested: {requested} ms; → execution finished: {finished} ms; line appended → execution finished: {appended_to_finished} ms"
    );
    Ok(())
}

#[tokio::test]
async fn a_polling_sensor_killed_with_sigkill_is_restarted_and_keeps_dispatching() -> Result<()> {
    let node = TestNode::start(vec![repo_root().join("tests/fixtures/st2-examples")]).await?;
    let first = sensor_in_state(
        &node,
        "examples.FibonacciSensor",
        "running",
        Duration::from_secs(60),
        |_| true,
    )
    .await?;
    assert_eq!(first["poll_interval"], 20);
    let pid = first["pid"].as_u64().context("pid")?;
    // FibonacciSensor polls at once, then every 20 s.
    let before = poll(Duration::from_secs(30), || async {
        let found = instances_of(&node, "examples.fibonacci").await?;
        Ok((!found.is_empty()).then_some(found))
    })
    .await?;
    assert_eq!(before[0]["payload"]["fibonacci"], 1, "{:#}", before[0]);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid)?),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let again = sensor_in_state(
        &node,
        "examples.FibonacciSensor",
        "running",
        Duration::from_secs(60),
        |v| v["restarts"].as_u64() >= Some(1) && v["pid"].as_u64() != Some(pid),
    )
    .await?;
    assert!(
        again["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("killed by signal 9")),
        "{again:#}"
    );
    poll(Duration::from_secs(30), || async {
        let now = instances_of(&node, "examples.fibonacci").await?;
        Ok((now.len() > before.len()).then_some(()))
    })
    .await
    .context("the restarted sensor dispatches again")?;

    // `run()` returning is not a crash: not restarted (StackStorm's rule).
    sensor_in_state(
        &node,
        "examples.SampleSensor",
        "exited",
        Duration::from_secs(60),
        |v| v["restarts"] == 0,
    )
    .await?;
    Ok(())
}

const FAULTY_SENSORS: &str = r#"
import time

from st2reactor.sensor.base import PollingSensor, Sensor


class Boom(Sensor):
    def setup(self):
        raise RuntimeError("boom")

    def run(self):
        pass

    def cleanup(self):
        pass

    def add_trigger(self, trigger):
        pass

    def update_trigger(self, trigger):
        pass

    def remove_trigger(self, trigger):
        pass


class Strict(PollingSensor):
    def setup(self):
        self.n = 0

    def poll(self):
        self.n += 1
        self.sensor_service.dispatch("faulty.counted", {"n": self.n})
        self.sensor_service.dispatch("faulty.counted", {"n": "seven"})

    def cleanup(self):
        pass

    def add_trigger(self, trigger):
        pass

    def update_trigger(self, trigger):
        pass

    def remove_trigger(self, trigger):
        pass
"#;

#[tokio::test]
async fn bad_sensors_and_bad_payloads_are_reported_and_counted() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let packs = dir.path().join("packs");
    write_pack(
        &packs,
        "faulty",
        &[
            (
                "pack.yaml",
                "name: faulty\nversion: 1.0.0\ndescription: Broken sensors.\nauthor: squall\n",
            ),
            ("sensors/sensors.py", FAULTY_SENSORS),
            (
                "sensors/boom.yaml",
                "class_name: Boom\nentry_point: sensors.py\n",
            ),
            (
                "sensors/nope.yaml",
                "class_name: Nope\nentry_point: sensors.py\n",
            ),
            (
                "sensors/strict.yaml",
                "class_name: Strict\nentry_point: sensors.py\npoll_interval: 4\ntrigger_types:\n  - name: counted\n    payload_schema:\n      type: object\n      properties:\n        n:\n          type: integer\n      required: [n]\n",
            ),
        ],
    )?;
    let node = TestNode::start(vec![packs]).await?;

    let boom = sensor_in_state(
        &node,
        "faulty.Boom",
        "failed",
        Duration::from_secs(60),
        |_| true,
    )
    .await?;
    assert!(
        boom["restarts"].as_u64() >= Some(3),
        "retries are counted: {boom:#}"
    );
    assert!(boom["next_start_at"].is_string(), "still retried: {boom:#}");
    assert_eq!(
        boom["last_error"], "setup() raised RuntimeError: boom",
        "{boom:#}"
    );
    assert!(
        boom["last_stderr"].as_array().is_some_and(|l| l
            .iter()
            .any(|x| x.as_str().is_some_and(|x| x.contains("RuntimeError: boom")))),
        "{boom:#}"
    );

    let nope = sensor_in_state(
        &node,
        "faulty.Nope",
        "failed",
        Duration::from_secs(60),
        |_| true,
    )
    .await?;
    let error = nope["last_error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("Sensor class \"Nope\" not found in file \"")
            && error.ends_with("sensors.py\" (classes there: Boom, Strict)"),
        "{nope:#}"
    );

    // Each poll dispatches a good payload, then one its schema rejects:
    // the bad one is counted and never published, and the sensor goes on.
    let strict = sensor_in_state(
        &node,
        "faulty.Strict",
        "running",
        Duration::from_secs(60),
        |v| v["rejected"].as_u64() >= Some(2),
    )
    .await?;
    assert!(
        strict["last_rejection"]
            .as_str()
            .is_some_and(|r| r.starts_with("faulty.counted: payload.n: must be integer")),
        "{strict:#}"
    );
    assert_eq!(strict["restarts"], 0);
    let published = instances_of(&node, "faulty.counted").await?;
    assert!(published.len() >= 2, "{published:#?}");
    assert!(
        published.iter().all(|i| i["payload"]["n"].is_u64()),
        "{published:#?}"
    );
    let metrics = node
        .http
        .get(format!("{}/metrics", node.root))
        .send()
        .await?
        .text()
        .await?;
    let rejected: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("squall_sensor_dispatches_total{outcome=\"rejected\"} "))
        .context("the rejected dispatches metric")?
        .parse()?;
    assert!(rejected >= 2, "{metrics}");

    // The official CLI reads the same.
    let home = tempfile::tempdir()?;
    st2_login(&node, home.path()).await?;
    let listed = st2_json(&node, home.path(), &["sensor", "list", "--pack", "faulty"]).await?;
    let mut refs: Vec<&str> = listed
        .as_array()
        .context("a list")?
        .iter()
        .filter_map(|s| s["ref"].as_str())
        .collect();
    refs.sort_unstable();
    assert_eq!(refs, ["faulty.Boom", "faulty.Nope", "faulty.Strict"]);
    // Boom is retried meanwhile (its back-off may have run out, so it may
    // be starting again); what failed stays on it either way.
    let one = st2_json(&node, home.path(), &["sensor", "get", "faulty.Boom"]).await?;
    assert!(
        one["state"] == "failed" || one["state"] == "starting",
        "{one:#}"
    );
    assert_eq!(
        one["last_error"], "setup() raised RuntimeError: boom",
        "{one:#}"
    );

    let (status, missing) = node.get("sensortypes/faulty.Missing").await?;
    assert_eq!(status, 404, "{missing}");
    assert_eq!(
        missing["faultstring"],
        "sensor type faulty.Missing not found"
    );
    Ok(())
}

const TICKER: &str = r#"
from st2reactor.sensor.base import PollingSensor


class Ticker(PollingSensor):
    def setup(self):
        self.n = 0

    def poll(self):
        self.n += 1
        self.sensor_service.dispatch("ticking.tick", {"n": self.n})

    def cleanup(self):
        pass

    def add_trigger(self, trigger):
        pass

    def update_trigger(self, trigger):
        pass

    def remove_trigger(self, trigger):
        pass
"#;

async fn sensor_via(api: &Api, reference: &str) -> Result<Value> {
    api.get(&format!("sensortypes/{reference}")).await
}

#[tokio::test]
async fn a_polling_sensor_moves_to_another_node_when_its_node_is_killed() -> Result<()> {
    let nats = NatsServer::start()?;
    let dir = tempfile::tempdir()?;
    let mut spec = spec_in(dir.path(), nats.url(), 1, 4);
    spec.extra_packs.push(dir.path().join("packs"));
    write_pack(
        &dir.path().join("packs"),
        "ticking",
        &[
            (
                "pack.yaml",
                "name: ticking\nversion: 1.0.0\ndescription: A ticking sensor.\nauthor: squall\n",
            ),
            ("sensors/ticker.py", TICKER),
            (
                "sensors/ticker.yaml",
                "class_name: Ticker\nentry_point: ticker.py\npoll_interval: 4\ntrigger_types:\n  - name: tick\n",
            ),
        ],
    )?;
    let mut nodes = vec![NodeProcess::start(&spec, "n1", "")?];
    let api1 = admin_client(&spec, &nodes[0]).await?;
    nodes.push(NodeProcess::start(&spec, "n2", "")?);
    let api2 = admin_client(&spec, &nodes[1]).await?;
    api1.settled(&["n1", "n2"], &["sensors"], 4, Duration::from_secs(60))
        .await?;
    let running = poll(Duration::from_secs(60), || async {
        let v = sensor_via(&api1, "ticking.Ticker").await?;
        Ok((v["state"] == "running").then_some(v))
    })
    .await?;
    let owner = running["node"].as_str().context("node")?.to_string();
    let pid = running["pid"].as_u64().context("pid")?;
    let (dead, survivor_api, survivor) = if owner == "n1" {
        (0, &api2, "n2")
    } else {
        (1, &api1, "n1")
    };

    let killed = Instant::now();
    nodes[dead].kill()?;
    // The sensor process dies with its node (PR_SET_PDEATHSIG).
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid)?);
    poll(Duration::from_secs(10), || async {
        Ok(nix::sys::signal::kill(pid, None).is_err().then_some(()))
    })
    .await
    .context("the sensor process outlived its node")?;
    let moved = poll(Duration::from_secs(30), || async {
        let v = sensor_via(survivor_api, "ticking.Ticker").await?;
        Ok((v["state"] == "running" && v["node"] == survivor).then_some(v))
    })
    .await
    .with_context(|| {
        format!(
            "the sensor never ran on {survivor}:\n{}",
            nodes[1 - dead].log()
        )
    })?;
    println!(
        "sensor running again on {survivor} {} ms after {owner} was killed",
        killed.elapsed().as_millis()
    );
    assert!(killed.elapsed() < Duration::from_secs(20), "{moved:#}");
    let after = survivor_api
        .get("triggerinstances?trigger=ticking.tick&limit=-1")
        .await?;
    let after = after.as_array().map_or(0, Vec::len);
    poll(Duration::from_secs(30), || async {
        let now = survivor_api
            .get("triggerinstances?trigger=ticking.tick&limit=-1")
            .await?;
        Ok((now.as_array().map_or(0, Vec::len) > after).then_some(()))
    })
    .await
    .context("the moved sensor dispatches")?;
    Ok(())
}

/// Makes `<data dir>/virtualenvs/<pack>` with the pack's
/// `requirements.txt`, as `packs.setup_virtualenv` does (real python3 and
/// pip).
fn pack_virtualenv(data_dir: &Path, pack_dir: &Path, pack: &str) -> Result<()> {
    let venv = data_dir.join("virtualenvs").join(pack);
    let status = std::process::Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()?;
    anyhow::ensure!(status.success(), "python3 -m venv failed");
    let out = std::process::Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "-r"])
        .arg(pack_dir.join("requirements.txt"))
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "pip install failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test]
async fn hello_st2_s_sensor_keeps_its_count_in_the_datastore_and_fires_its_rule() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let packs = packs_with_fixture(dir.path(), "hello_st2")?;
    let fixture = repo_root().join("tests/fixtures/st2-packs/hello_st2");
    // HelloSensor imports eventlet, its pack's requirement: it runs in the
    // pack's virtualenv, made before the node starts.
    let data_dir = dir.path().join("data");
    pack_virtualenv(&data_dir, &fixture, "hello_st2")?;
    // The sensor calls the API back at the node's public URL: a real port.
    let port = free_port()?;
    let node = TestNode::start_with(vec![repo_root().join("packs"), packs], |c| {
        c.data_dir = data_dir.clone();
        c.api.listen = format!("127.0.0.1:{port}").parse().expect("an address");
    })
    .await?;
    let key = "keys/hello_st2.HelloSensor:hello_st2.count";
    let stored = |want: &'static str| {
        let node = &node;
        move || async move {
            let (status, v) = node.get(key).await?;
            Ok((status == 200 && v["value"] == want).then_some(v))
        }
    };
    // The sensor reads the count (none yet), dispatches count 1 and
    // stores it under its local prefix, then sleeps 60 s.
    if let Err(e) = poll(Duration::from_secs(60), stored("1")).await {
        let (_, sensor) = node.get("sensortypes/hello_st2.HelloSensor").await?;
        anyhow::bail!("HelloSensor never stored its count ({e}): {sensor:#}");
    }
    let first = sensor_in_state(
        &node,
        "hello_st2.HelloSensor",
        "running",
        Duration::from_secs(30),
        |_| true,
    )
    .await?;
    let executions = poll(Duration::from_secs(60), || async {
        let (_, list) = node
            .get("executions?rule=hello_st2.on_hello_event1&limit=-1")
            .await?;
        Ok(list.as_array().filter(|l| !l.is_empty()).cloned())
    })
    .await?;
    let done = node
        .finished(executions[0]["id"].as_str().context("id")?)
        .await?;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(done["parameters"]["greeting"], "Yo");

    // Restarted, it reads the stored count back: get_value works.
    let pid = first["pid"].as_u64().context("pid")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid)?),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    poll(Duration::from_secs(60), stored("2"))
        .await
        .context("the restarted HelloSensor did not count on from the datastore")?;
    let counts: Vec<Value> = instances_of(&node, "hello_st2.event1")
        .await?
        .iter()
        .map(|i| i["payload"]["count"].clone())
        .collect();
    assert!(
        counts.contains(&serde_json::json!(1)) && counts.contains(&serde_json::json!(2)),
        "{counts:?}"
    );
    Ok(())
}

const STUBBORN: &str = r#"
import time

from st2reactor.sensor.base import Sensor


class Stubborn(Sensor):
    def setup(self):
        pass

    def run(self):
        while True:
            time.sleep(1)

    def cleanup(self):
        # Never finishes on its own: only SIGKILL ends it.
        while True:
            time.sleep(1)

    def add_trigger(self, trigger):
        pass

    def update_trigger(self, trigger):
        pass

    def remove_trigger(self, trigger):
        pass
"#;

#[tokio::test]
async fn a_disabled_sensor_gets_sigterm_then_sigkill_after_its_grace() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let packs = dir.path().join("packs");
    let yaml = "class_name: Stubborn\nentry_point: stubborn.py\n";
    let pack = write_pack(
        &packs,
        "stubborn",
        &[
            (
                "pack.yaml",
                "name: stubborn\nversion: 1.0.0\ndescription: A sensor that will not stop.\nauthor: squall\n",
            ),
            ("sensors/stubborn.py", STUBBORN),
            ("sensors/stubborn.yaml", yaml),
        ],
    )?;
    let node = TestNode::start(vec![packs]).await?;
    let running = sensor_in_state(
        &node,
        "stubborn.Stubborn",
        "running",
        Duration::from_secs(60),
        |_| true,
    )
    .await?;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(running["pid"].as_u64().context("pid")?)?);

    std::fs::write(
        pack.join("sensors/stubborn.yaml"),
        format!("{yaml}enabled: false\n"),
    )?;
    let (status, body) = node
        .post(
            "packs/register",
            &serde_json::json!({"packs": ["stubborn"]}),
        )
        .await?;
    anyhow::ensure!(status == 200, "register: {status} {body}");
    let asked = Instant::now();
    let alive = || nix::sys::signal::kill(pid, None).is_ok();
    // SIGTERM runs cleanup(), which hangs: the process lives on through
    // the grace...
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(alive(), "killed before its 5 s grace");
    // ...and is killed after it.
    poll(Duration::from_secs(10), || async {
        Ok((!alive()).then_some(()))
    })
    .await
    .context("the sensor outlived its grace")?;
    let took = asked.elapsed();
    assert!(took >= Duration::from_secs(5), "killed after {took:?}");
    let (_, view) = node.get("sensortypes/stubborn.Stubborn").await?;
    assert_eq!(view["state"], "disabled", "{view:#}");
    assert_eq!(view["enabled"], false);
    Ok(())
}

//! The cluster under faults, with real processes: `squall node` binaries
//! and nats-server processes, SIGKILL and restarts. Each load test counts
//! webhooks accepted, enforcements, executions and finished executions,
//! and asserts every accepted trigger ran exactly once.
//!
//! The tests run one at a time (each starts three nodes on a small
//! machine); `cargo build --bin squall` first.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::Value;
use squall_domain::ids;
use squall_tests::cluster::{
    admin_client, assert_exactly_once, settle_counts, spec_in, Api, ClusterSpec, Load, NatsCluster,
    NodeProcess,
};
use squall_tests::{poll, write_pack, NatsServer};

/// One test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const PARTITIONS: u32 = 12;
const ROLES: [&str; 3] = ["rules", "workflows", "sensors"];
/// One webhook every 40 ms: 25 per second.
const EVERY: Duration = Duration::from_millis(40);
/// Long enough for a dead node's unacknowledged messages to come back
/// (the consumers' 30 s ack wait) and run.
const SETTLE: Duration = Duration::from_secs(60);

/// Starts nodes one after the other (the first creates the admin and the
/// datastore key the others share) and waits until they own every
/// partition between them; returns them, an admin client of the first,
/// and who owns what.
async fn start_nodes(
    spec: &ClusterSpec,
    names: &[&str],
) -> Result<(Vec<NodeProcess>, Api, Owners)> {
    let mut nodes = vec![NodeProcess::start(spec, names[0], "")?];
    let api = admin_client(spec, &nodes[0]).await?;
    for name in &names[1..] {
        let node = NodeProcess::start(spec, name, "")?;
        admin_client(spec, &node).await?;
        nodes.push(node);
    }
    let own = api
        .settled(names, &ROLES, PARTITIONS, Duration::from_secs(60))
        .await?;
    Ok((nodes, api, own))
}

/// Partitions owned, by node and role.
type Owners = HashMap<String, HashMap<String, Vec<u32>>>;

fn counts_per_node(own: &Owners, role: &str) -> Vec<usize> {
    let mut n: Vec<usize> = own
        .values()
        .map(|r| r.get(role).map_or(0, Vec::len))
        .collect();
    n.sort_unstable();
    n
}

/// One nats-server, and a spec whose nodes also load pack `name` made of
/// `files`.
fn one_server_with_pack(
    name: &str,
    files: &[(&str, &str)],
) -> Result<(NatsServer, tempfile::TempDir, ClusterSpec)> {
    let nats = NatsServer::start()?;
    let dir = tempfile::tempdir()?;
    let mut spec = spec_in(dir.path(), nats.url(), 1, PARTITIONS);
    spec.extra_packs.push(dir.path().join("packs"));
    write_pack(&dir.path().join("packs"), name, files)?;
    Ok((nats, dir, spec))
}

#[tokio::test]
async fn a_killed_node_s_partitions_are_taken_over_and_nothing_is_doubled() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let nats = NatsServer::start()?;
    let dir = tempfile::tempdir()?;
    let spec = spec_in(dir.path(), nats.url(), 1, PARTITIONS);
    let (mut nodes, api, own) = start_nodes(&spec, &["n1", "n2", "n3"]).await?;
    for role in ROLES {
        assert_eq!(counts_per_node(&own, role), vec![4, 4, 4], "{own:?}");
    }
    let dead_partitions: BTreeSet<u32> = own["n3"]["rules"].iter().copied().collect();

    let load = Load::start(&api, "kill", EVERY);
    load.wait_for(50, Duration::from_secs(30)).await?;
    nodes[2].kill()?;
    let killed = Instant::now();
    let killed_at = chrono::Utc::now();
    load.wait_for(25, Duration::from_secs(30)).await?;
    api.settled(&["n1", "n2"], &ROLES, PARTITIONS, Duration::from_secs(30))
        .await
        .context("the survivors never took the dead node's partitions")?;
    let settled_after = killed.elapsed();
    load.wait_for(50, Duration::from_secs(30)).await?;
    let report = load.stop().await?;

    let counts = settle_counts(&api, &report, SETTLE).await?;
    eprintln!("kill: {counts:?}, partitions re-owned {settled_after:?} after the kill");
    assert_exactly_once(&counts);
    assert_eq!(counts.uncertain, 0, "the API node stayed up: {counts:?}");

    // The first execution the new owners requested for a dead node's
    // partition after the kill.
    let executions = api.load_executions().await?;
    let first = executions
        .iter()
        .filter_map(|e| {
            let trigger = e["trigger_instance"]["id"].as_str()?;
            let at = squall_domain::time::parse(e["start_timestamp"].as_str()?)?;
            (dead_partitions.contains(&ids::partition_of(trigger, PARTITIONS)) && at > killed_at)
                .then_some(at)
        })
        .min()
        .context("no execution of a dead node's partition after the kill")?;
    eprintln!("takeover_ms={}", (first - killed_at).num_milliseconds());
    Ok(())
}

#[tokio::test]
async fn a_joining_node_takes_its_share_under_load_and_nothing_is_doubled() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let nats = NatsServer::start()?;
    let dir = tempfile::tempdir()?;
    let spec = spec_in(dir.path(), nats.url(), 1, PARTITIONS);
    let (mut nodes, api, own) = start_nodes(&spec, &["n1", "n2"]).await?;
    assert_eq!(counts_per_node(&own, "rules"), vec![6, 6], "{own:?}");

    let load = Load::start(&api, "join", EVERY);
    load.wait_for(50, Duration::from_secs(30)).await?;
    nodes.push(NodeProcess::start(&spec, "n3", "")?);
    let after = api
        .settled(
            &["n1", "n2", "n3"],
            &ROLES,
            PARTITIONS,
            Duration::from_secs(60),
        )
        .await?;
    // Only the newcomer's share moved: each old node kept 4 of its 6.
    for role in ROLES {
        for old in ["n1", "n2"] {
            let before: BTreeSet<u32> = own[old][role].iter().copied().collect();
            let kept = after[old][role]
                .iter()
                .filter(|p| before.contains(p))
                .count();
            assert_eq!(kept, 4, "{role} {old}: {own:?} → {after:?}");
        }
    }
    load.wait_for(50, Duration::from_secs(30)).await?;
    let report = load.stop().await?;

    let counts = settle_counts(&api, &report, SETTLE).await?;
    eprintln!("join: {counts:?}");
    assert_exactly_once(&counts);
    assert_eq!(counts.uncertain, 0, "{counts:?}");
    assert_eq!(counts.abandoned, 0, "no node died: {counts:?}");
    drop(nodes);
    Ok(())
}

#[tokio::test]
async fn a_timer_fires_once_per_interval_across_three_nodes() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let (_nats, _dir, spec) = one_server_with_pack("ticks", &[
            ("pack.yaml", "name: ticks\nversion: 0.1.0\n"),
            (
                "rules/every_second.yaml",
                "name: every_second\npack: ticks\nenabled: true\ntrigger:\n  type: core.st2.IntervalTimer\n  parameters:\n    unit: seconds\n    delta: 1\naction:\n  ref: core.noop\n",
            ),
        ])?;
    let (nodes, api, _) = start_nodes(&spec, &["n1", "n2", "n3"]).await?;
    // Eight ticks after the first one seen.
    let ticks: Vec<Value> = poll(Duration::from_secs(30), || async {
        let list = api
            .get("executions?limit=-1&rule=ticks.every_second")
            .await?;
        let list = list.as_array().cloned().unwrap_or_default();
        Ok((list.len() >= 8).then_some(list))
    })
    .await?;
    let mut times: Vec<i64> = ticks
        .iter()
        .filter_map(|e| {
            squall_domain::time::parse(e["trigger_instance"]["occurrence_time"].as_str()?)
        })
        .map(|t| t.timestamp_millis())
        .collect();
    assert_eq!(times.len(), ticks.len(), "every execution names its tick");
    times.sort_unstable();
    let distinct: BTreeSet<i64> = times.iter().copied().collect();
    assert_eq!(distinct.len(), times.len(), "a tick ran twice: {times:?}");
    // No tick skipped: consecutive ticks one second apart.
    for pair in times.windows(2) {
        assert_eq!(pair[1] - pair[0], 1000, "{times:?}");
    }
    let enforcements = api
        .get("ruleenforcements?limit=-1&rule_ref=ticks.every_second")
        .await?;
    assert!(
        enforcements.as_array().map_or(0, Vec::len) >= times.len(),
        "{enforcements}"
    );
    drop(nodes);
    Ok(())
}

#[tokio::test]
async fn nodes_reconnect_and_continue_after_a_whole_nats_restart() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut nats = NatsServer::start()?;
    let dir = tempfile::tempdir()?;
    let spec = spec_in(dir.path(), nats.url(), 1, PARTITIONS);
    let (nodes, api, _) = start_nodes(&spec, &["n1", "n2"]).await?;

    let load = Load::start(&api, "restart", EVERY);
    load.wait_for(50, Duration::from_secs(30)).await?;
    nats.restart()?;
    load.wait_for(50, Duration::from_secs(60))
        .await
        .context("webhooks never accepted again after the restart")?;
    api.settled(&["n1", "n2"], &ROLES, PARTITIONS, Duration::from_secs(60))
        .await?;
    let report = load.stop().await?;

    let counts = settle_counts(&api, &report, SETTLE).await?;
    eprintln!("nats restart: {counts:?}");
    assert_exactly_once(&counts);
    drop(nodes);
    Ok(())
}

#[tokio::test]
async fn losing_one_of_three_nats_servers_loses_nothing() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut nats = NatsCluster::start(3).await?;
    let dir = tempfile::tempdir()?;
    let spec = spec_in(dir.path(), nats.urls(), 3, PARTITIONS);
    let (nodes, api, _) = start_nodes(&spec, &["n1", "n2", "n3"]).await?;

    let load = Load::start(&api, "nats-kill", EVERY);
    load.wait_for(50, Duration::from_secs(30)).await?;
    nats.kill(2)?;
    load.wait_for(100, Duration::from_secs(60)).await?;
    let report = load.stop().await?;

    let counts = settle_counts(&api, &report, SETTLE).await?;
    eprintln!("nats server killed: {counts:?}");
    assert_exactly_once(&counts);
    drop(nodes);
    Ok(())
}

#[tokio::test]
async fn roles_and_pools_decide_where_work_runs_and_a_dead_runner_s_run_ends_abandoned_or_reruns(
) -> Result<()> {
    let _serial = SERIAL.lock().await;
    let (_nats, _dir, spec) = one_server_with_pack("slow", &[
            ("pack.yaml", "name: slow\nversion: 0.1.0\n"),
            (
                "actions/sleep.yaml",
                "name: sleep\nrunner_type: local-shell-cmd\nparameters:\n  cmd:\n    type: string\n    default: sleep 120\ntags:\n  - name: squall.pool\n    value: slow\n",
            ),
            (
                "actions/again.yaml",
                "name: again\nrunner_type: local-shell-cmd\nparameters:\n  cmd:\n    type: string\n    default: sleep 5\ntags:\n  - name: squall.pool\n    value: slow\n  - name: squall.runner_loss\n    value: rerun\n",
            ),
        ])?;
    // n1 does everything but serve pool `slow`; n2 and n3 only run
    // `slow` actions.
    let runner_only = "roles: [runners]\nrunners:\n  pools: [slow]\n";
    let mut nodes = vec![NodeProcess::start(&spec, "n1", "")?];
    let api = admin_client(&spec, &nodes[0]).await?;
    nodes.push(NodeProcess::start(&spec, "n2", runner_only)?);
    nodes.push(NodeProcess::start(&spec, "n3", runner_only)?);
    let runners = poll(Duration::from_secs(30), || async {
        let members = api.get("service_registry/groups/runners/members").await?;
        let list = members["members"].as_array().cloned().unwrap_or_default();
        Ok((list.len() == 3).then_some(list))
    })
    .await?;
    for m in runners.iter().filter(|m| m["member_id"] != "n1") {
        let caps = &m["capabilities"];
        assert_eq!(caps["roles"], serde_json::json!(["runners"]), "{m}");
        assert_eq!(caps["pools"], serde_json::json!(["slow"]), "{m}");
        assert_eq!(caps["partitions"], serde_json::json!({}), "{m}");
    }
    let rules = api.get("service_registry/groups/rules/members").await?;
    assert_eq!(
        rules["members"].as_array().map(Vec::len),
        Some(1),
        "{rules}"
    );

    // `squall node list` shows all three.
    let token = api_token(&spec, &nodes[0]).await?;
    let listed = std::process::Command::new(squall_tests::squall_binary()?)
        .args(["--url", &nodes[0].root, "--token", &token, "node", "list"])
        .output()?;
    let table = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success(), "{table}");
    for name in ["n1", "n2", "n3"] {
        assert!(table.contains(name), "{table}");
    }

    // A default-pool action runs on n1, the only node serving `default`.
    let noop = start_run(&api, "core.noop").await?;
    let done = poll(Duration::from_secs(30), || async {
        let e = api.get(&format!("executions/{noop}")).await?;
        Ok((e["status"] == "succeeded").then_some(e))
    })
    .await?;
    assert_eq!(done["node"], "n1", "{done}");

    // With n3 stopped, two `slow` actions run on n2; n3 comes back and n2
    // is killed mid-run. Once the dead runner's lease (the ack wait)
    // lapses, n3 gets both requests and asks n2, which does not answer:
    // the plain action is recorded abandoned, the one tagged
    // `squall.runner_loss: rerun` runs again on n3.
    nodes[2].stop()?;
    let slow = start_run(&api, "slow.sleep").await?;
    let again = start_run(&api, "slow.again").await?;
    for id in [&slow, &again] {
        let running = poll(Duration::from_secs(30), || async {
            let e = api.get(&format!("executions/{id}")).await?;
            Ok((e["status"] == "running").then_some(e))
        })
        .await?;
        assert_eq!(running["node"], "n2", "{running}");
    }
    nodes[2] = NodeProcess::start(&spec, "n3", runner_only)?;
    nodes[1].kill()?;
    let killed = Instant::now();
    let ended = |id: String| {
        let api = &api;
        async move {
            poll(Duration::from_secs(60), || async {
                let e = api.get(&format!("executions/{id}")).await?;
                Ok((e["status"] != "running").then_some(e))
            })
            .await
        }
    };
    let abandoned = ended(slow).await?;
    assert_eq!(abandoned["status"], "abandoned", "{abandoned}");
    eprintln!("abandoned_after_kill_ms={}", killed.elapsed().as_millis());
    let rerun = ended(again).await?;
    assert_eq!(rerun["status"], "succeeded", "{rerun}");
    assert_eq!(rerun["node"], "n3", "{rerun}");
    assert_eq!(
        rerun["context"]["runner_losses"],
        serde_json::json!(["n2"]),
        "{rerun}"
    );
    Ok(())
}

/// Starts a run of `action` through the API; its execution id.
async fn start_run(api: &Api, action: &str) -> Result<String> {
    let created: Value = api
        .http
        .post(format!("{}/executions", api.base))
        .json(&serde_json::json!({"action": action}))
        .send()
        .await?
        .json()
        .await?;
    created["id"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("{created}"))
}

/// A token of the first admin, for the CLI.
async fn api_token(spec: &ClusterSpec, node: &NodeProcess) -> Result<String> {
    let password = std::fs::read_to_string(spec.dir.join("admin-password"))?;
    squall_tests::login(&node.root, "admin", password.trim()).await
}

const FLOW: &str = "version: 1.0
tasks:
  prepare:
    action: core.noop
    next:
      - when: <% succeeded() %>
        do: approve
  approve:
    action: core.ask
    next:
      - when: <% succeeded() %>
        do: finish
  finish:
    action: core.noop
";

#[tokio::test]
async fn a_workflow_resumes_on_the_new_owner_of_its_partition() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let (_nats, _dir, spec) = one_server_with_pack(
        "flows",
        &[
            ("pack.yaml", "name: flows\nversion: 0.1.0\n"),
            (
                "actions/approve.yaml",
                "name: approve\nrunner_type: orquesta\nentry_point: workflows/approve.yaml\n",
            ),
            ("actions/workflows/approve.yaml", FLOW),
        ],
    )?;
    let (mut nodes, first, own) = start_nodes(&spec, &["n1", "n2", "n3"]).await?;
    let id = start_run(&first, "flows.approve").await?;
    let partition = ids::partition_of(&id, PARTITIONS);
    let owner = own
        .iter()
        .find(|(_, roles)| {
            roles
                .get("workflows")
                .is_some_and(|p| p.contains(&partition))
        })
        .map(|(name, _)| name.clone())
        .context("nobody owns the workflow's partition")?;
    let inquiry = poll(Duration::from_secs(30), || async {
        let open = first.get("inquiries").await?;
        Ok(open[0]["id"].as_str().map(str::to_string))
    })
    .await?;

    // Kill the workflow's owner; talk to a survivor from now on.
    let index = nodes
        .iter()
        .position(|n| n.name == owner)
        .context("owner process")?;
    nodes[index].kill()?;
    let survivor = nodes
        .iter()
        .find(|n| n.name != owner)
        .context("a survivor")?;
    let api = admin_client(&spec, survivor).await?;
    let alive: Vec<&str> = ["n1", "n2", "n3"]
        .into_iter()
        .filter(|n| *n != owner)
        .collect();
    let after = api
        .settled(&alive, &ROLES, PARTITIONS, Duration::from_secs(30))
        .await?;
    let answered = api
        .http
        .put(format!("{}/inquiries/{inquiry}", api.base))
        .json(&serde_json::json!({"response": {"continue": true}}))
        .send()
        .await?;
    assert_eq!(answered.status(), 200, "{}", answered.text().await?);
    let done = poll(Duration::from_secs(60), || async {
        let e = api.get(&format!("executions/{id}")).await?;
        let finished = matches!(e["status"].as_str(), Some("succeeded" | "failed"));
        Ok(finished.then_some(e))
    })
    .await?;
    assert_eq!(done["status"], "succeeded", "{done}");
    let new_owner = after
        .iter()
        .find(|(_, roles)| {
            roles
                .get("workflows")
                .is_some_and(|p| p.contains(&partition))
        })
        .map(|(name, _)| name.clone());
    assert!(new_owner.is_some_and(|n| n != owner), "{after:?}");
    // Each task ran once.
    let children = api.get(&format!("executions/{id}/children")).await?;
    assert_eq!(children.as_array().map(Vec::len), Some(3), "{children}");
    Ok(())
}

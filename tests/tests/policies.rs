//! Action policies enforced across a cluster: two nodes (each with its own
//! API and runners) on one real nats-server run a pack whose actions carry
//! `action.concurrency`, `action.concurrency.attr` and `action.retry`
//! policies. Concurrency is checked from the stored records' timestamps.

use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use squall::node::Node;
use squall_tests::cluster::{admin_client, spec_in, Api, NodeProcess};
use squall_tests::{client_with_token, login, poll, start_node, write_pack, NatsServer, TestNode};

const PACK: &str =
    "ref: lim\nname: lim\ndescription: policy tests\nversion: 0.1.0\nauthor: tests\n";

fn action(name: &str, cmd: &str, extra_params: &str) -> String {
    format!(
        "name: {name}
pack: lim
runner_type: local-shell-cmd
parameters:
  cmd:
    default: \"{cmd}\"
{extra_params}"
    )
}

fn policy(name: &str, resource: &str, policy_type: &str, params: &str) -> String {
    format!(
        "name: {name}
pack: lim
resource_ref: {resource}
policy_type: {policy_type}
parameters:
{params}"
    )
}

fn pack_files() -> Vec<(String, String)> {
    vec![
        ("pack.yaml".into(), PACK.into()),
        ("actions/pair.yaml".into(), action("pair", "sleep 0.3", "")),
        ("actions/solo.yaml".into(), action("solo", "sleep 2", "")),
        (
            "actions/by_target.yaml".into(),
            action(
                "by_target",
                "sleep 0.8",
                "  target:\n    type: string\n    required: true\n",
            ),
        ),
        (
            "actions/slow.yaml".into(),
            action("slow", "sleep 30", "  timeout:\n    default: 1\n"),
        ),
        ("actions/flaky.yaml".into(), action("flaky", "exit 3", "")),
        ("actions/guarded.yaml".into(), action("guarded", "true", "")),
        (
            "policies/guarded.yaml".into(),
            policy(
                "guarded",
                "lim.guarded",
                "action.concurrency",
                "  threshold: 1\n",
            ),
        ),
        (
            "policies/pair.yaml".into(),
            policy("pair", "lim.pair", "action.concurrency", "  threshold: 2\n"),
        ),
        (
            "policies/solo.yaml".into(),
            policy(
                "solo",
                "lim.solo",
                "action.concurrency",
                "  threshold: 1\n  action: cancel\n",
            ),
        ),
        (
            "policies/by_target.yaml".into(),
            policy(
                "by_target",
                "lim.by_target",
                "action.concurrency.attr",
                "  threshold: 1\n  attributes: [target]\n",
            ),
        ),
        (
            "policies/slow.yaml".into(),
            policy(
                "retry_slow",
                "lim.slow",
                "action.retry",
                "  retry_on: timeout\n  max_retry_count: 2\n",
            ),
        ),
        (
            "policies/flaky.yaml".into(),
            policy(
                "retry_flaky",
                "lim.flaky",
                "action.retry",
                "  retry_on: failure\n  max_retry_count: 1\n  delay: 1\n",
            ),
        ),
    ]
}

/// Two nodes sharing one nats-server: the test node and a second node
/// process-internal, with its own API.
struct Pair {
    first: TestNode,
    second: Option<Node>,
    second_api: String,
    second_http: reqwest::Client,
    _packs: tempfile::TempDir,
    _second_dir: tempfile::TempDir,
}

impl Pair {
    async fn start() -> Result<Pair> {
        let packs = tempfile::tempdir()?;
        let files = pack_files();
        let refs: Vec<(&str, &str)> = files
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        write_pack(packs.path(), "lim", &refs)?;
        let first = TestNode::start(vec![packs.path().to_path_buf()]).await?;
        let second_dir = tempfile::tempdir()?;
        let mut config = first.config.clone();
        config.name = "test-node-2".into();
        config.data_dir = second_dir.path().join("data");
        let second = start_node(&config).await?;
        let root = format!("http://{}", second.api_addr.context("API address")?);
        let second_http = client_with_token(&login(&root, "admin", &first.admin_password).await?)?;
        Ok(Pair {
            first,
            second: Some(second),
            second_api: format!("{root}/api/v1"),
            second_http,
            _packs: packs,
            _second_dir: second_dir,
        })
    }

    /// Runs `action` through node `i % 2`'s API; the new execution's id.
    async fn run(&self, i: usize, action: &str, parameters: Value) -> Result<String> {
        let body = json!({"action": action, "parameters": parameters});
        let (status, created) = if i.is_multiple_of(2) {
            self.first.post("executions", &body).await?
        } else {
            let r = self
                .second_http
                .post(format!("{}/executions", self.second_api))
                .json(&body)
                .send()
                .await?;
            (r.status().as_u16(), r.json().await?)
        };
        anyhow::ensure!(status == 201, "run {action}: {status} {created}");
        Ok(created["id"].as_str().context("no id")?.to_string())
    }

    /// Every execution of `action`, once all of them have ended.
    async fn ended(&self, action: &str, count: usize, timeout: Duration) -> Result<Vec<Value>> {
        poll(timeout, || async {
            let all: Vec<Value> = self
                .first
                .executions()
                .await?
                .into_iter()
                .filter(|e| e["action"]["ref"] == action)
                .collect();
            let done = all.iter().all(|e| {
                matches!(
                    e["status"].as_str(),
                    Some("succeeded" | "failed" | "timeout" | "canceled" | "abandoned")
                )
            });
            Ok((all.len() == count && done).then_some(all))
        })
        .await
    }

    async fn stop(mut self) {
        if let Some(n) = self.second.take() {
            n.shutdown().await;
        }
        self.first.stop().await;
    }
}

fn at(text: &Value) -> DateTime<Utc> {
    squall_domain::time::parse(text.as_str().unwrap_or_default()).expect("a timestamp")
}

/// When `execution` started running and when it ended, if it ran.
fn ran(execution: &Value) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let start = execution["log"]
        .as_array()?
        .iter()
        .find(|l| l["status"] == "running")?;
    Some((at(&start["timestamp"]), at(&execution["end_timestamp"])))
}

/// The most executions running at one moment.
fn most_at_once(runs: &[(DateTime<Utc>, DateTime<Utc>)]) -> usize {
    runs.iter()
        .map(|(start, _)| runs.iter().filter(|(s, e)| s <= start && start < e).count())
        .max()
        .unwrap_or(0)
}

fn went_through(execution: &Value, status: &str) -> bool {
    execution["log"]
        .as_array()
        .is_some_and(|log| log.iter().any(|l| l["status"] == status))
}

#[tokio::test]
async fn a_threshold_holds_across_two_nodes_and_the_rest_wait_delayed() -> Result<()> {
    let pair = Pair::start().await?;
    // All at once, half through each node's API.
    let runs = (0..50).map(|i| pair.run(i, "lim.pair", json!({})));
    for run in futures::future::join_all(runs).await {
        run?;
    }
    let all = pair.ended("lim.pair", 50, Duration::from_secs(120)).await?;
    assert!(
        all.iter().all(|e| e["status"] == "succeeded"),
        "every one ran in the end"
    );
    let runs: Vec<_> = all.iter().filter_map(ran).collect();
    assert_eq!(runs.len(), 50);
    assert_eq!(
        most_at_once(&runs),
        2,
        "never more than the threshold at once"
    );
    let delayed = all.iter().filter(|e| went_through(e, "delayed")).count();
    assert!(delayed >= 40, "only {delayed} of 50 waited delayed");
    let nodes: std::collections::BTreeSet<_> =
        all.iter().filter_map(|e| e["node"].as_str()).collect();
    assert_eq!(nodes.len(), 2, "both nodes ran some: {nodes:?}");
    // Every slot is given back (just after each end is stored): the entry
    // goes.
    let bus = &pair.first.node.as_ref().context("node")?.bus;
    poll(Duration::from_secs(10), || async {
        Ok(bus
            .bucket(squall_actors::policies::CONCURRENCY_BUCKET)?
            .get("lim.pair")
            .await?
            .is_none()
            .then_some(()))
    })
    .await?;
    pair.stop().await;
    Ok(())
}

#[tokio::test]
async fn over_a_cancel_threshold_the_extras_end_canceled_without_running() -> Result<()> {
    let pair = Pair::start().await?;
    for i in 0..5 {
        pair.run(i, "lim.solo", json!({})).await?;
    }
    let all = pair.ended("lim.solo", 5, Duration::from_secs(60)).await?;
    let succeeded: Vec<_> = all.iter().filter(|e| e["status"] == "succeeded").collect();
    let canceled: Vec<_> = all.iter().filter(|e| e["status"] == "canceled").collect();
    assert_eq!(succeeded.len() + canceled.len(), 5, "{all:?}");
    assert!(!succeeded.is_empty() && !canceled.is_empty(), "{all:?}");
    for c in &canceled {
        assert!(!went_through(c, "running"), "a canceled one ran: {c}");
        let error = c["result"]["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("lim.solo") && error.contains("policy"),
            "{error}"
        );
    }
    let runs: Vec<_> = succeeded.iter().filter_map(|e| ran(e)).collect();
    assert_eq!(most_at_once(&runs), 1);
    pair.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_attribute_threshold_counts_each_value_apart() -> Result<()> {
    let pair = Pair::start().await?;
    for i in 0..6 {
        let target = if i < 3 { "a" } else { "b" };
        pair.run(i, "lim.by_target", json!({"target": target}))
            .await?;
    }
    let all = pair
        .ended("lim.by_target", 6, Duration::from_secs(60))
        .await?;
    assert!(all.iter().all(|e| e["status"] == "succeeded"), "{all:?}");
    let runs_of = |target: &str| -> Vec<_> {
        all.iter()
            .filter(|e| e["parameters"]["target"] == target)
            .filter_map(ran)
            .collect()
    };
    let (a, b) = (runs_of("a"), runs_of("b"));
    assert_eq!(most_at_once(&a), 1, "one run of target a at a time");
    assert_eq!(most_at_once(&b), 1, "one run of target b at a time");
    let both: Vec<_> = a.iter().chain(b.iter()).copied().collect();
    assert_eq!(most_at_once(&both), 2, "a and b ran side by side");
    pair.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_slot_whose_release_was_lost_is_freed_by_the_sweep() -> Result<()> {
    let pair = Pair::start().await?;
    // An execution that ended, still listed as holding the only slot: its
    // node died between writing the end and giving the slot back.
    let ended = pair.run(0, "lim.pair", json!({})).await?;
    pair.first.finished(&ended).await?;
    let bus = &pair.first.node.as_ref().context("node")?.bus;
    let stale = squall_actors::policies::Slots {
        v: 1,
        policy: "lim.guarded".into(),
        threshold: 1,
        pool: "default".into(),
        holders: vec![ended],
        waiting: vec![],
    };
    bus.bucket(squall_actors::policies::CONCURRENCY_BUCKET)?
        .put("lim.guarded", serde_json::to_vec(&stale)?.into())
        .await?;
    let waiting = pair.run(1, "lim.guarded", json!({})).await?;
    poll(Duration::from_secs(20), || async {
        let (_, e) = pair.first.get(&format!("executions/{waiting}")).await?;
        Ok((e["status"] == "delayed").then_some(()))
    })
    .await?;
    // Nobody releases the slot: the sweep finds its holder ended.
    let done = pair.first.finished(&waiting).await?;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(went_through(&done, "delayed"));
    poll(Duration::from_secs(10), || async {
        Ok(bus
            .bucket(squall_actors::policies::CONCURRENCY_BUCKET)?
            .get("lim.guarded")
            .await?
            .is_none()
            .then_some(()))
    })
    .await?;
    pair.stop().await;
    Ok(())
}

/// Starts a run of `action` through `api`; its execution id.
async fn start_run(api: &Api, action: &str, parameters: Value) -> Result<String> {
    let created: Value = api
        .http
        .post(format!("{}/executions", api.base))
        .json(&json!({"action": action, "parameters": parameters}))
        .send()
        .await?
        .json()
        .await?;
    created["id"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("{created}"))
}

#[tokio::test]
async fn the_slot_of_a_run_whose_node_was_killed_goes_to_the_next_in_line() -> Result<()> {
    // Real `squall node` processes: one is killed with SIGKILL mid-run.
    let nats = NatsServer::start()?;
    let dir = tempfile::tempdir()?;
    let mut spec = spec_in(dir.path(), nats.url(), 1, 4);
    spec.extra_packs.push(dir.path().join("packs"));
    let files = pack_files();
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    write_pack(&dir.path().join("packs"), "lim", &refs)?;
    let mut nodes = vec![NodeProcess::start(&spec, "n1", "")?];
    let mut apis = vec![admin_client(&spec, &nodes[0]).await?];
    nodes.push(NodeProcess::start(&spec, "n2", "")?);
    apis.push(admin_client(&spec, &nodes[1]).await?);

    // `lim.guarded` has one slot: the first run holds it, the second waits.
    let first = start_run(&apis[0], "lim.guarded", json!({"cmd": "sleep 120"})).await?;
    let running = poll(Duration::from_secs(30), || async {
        let e = apis[0].get(&format!("executions/{first}")).await?;
        Ok((e["status"] == "running").then_some(e))
    })
    .await?;
    let second = start_run(&apis[1], "lim.guarded", json!({"cmd": "true"})).await?;
    poll(Duration::from_secs(30), || async {
        let e = apis[1].get(&format!("executions/{second}")).await?;
        Ok((e["status"] == "delayed").then_some(()))
    })
    .await?;

    // The node running the first dies; its run is found lost after the
    // request's ack wait, recorded abandoned, and its slot goes on.
    let holder = usize::from(running["node"] != "n1");
    nodes[holder].kill()?;
    let survivor = &apis[1 - holder];
    let abandoned = poll(Duration::from_secs(90), || async {
        let e = survivor.get(&format!("executions/{first}")).await?;
        Ok((e["status"] == "abandoned").then_some(e))
    })
    .await?;
    let done = poll(Duration::from_secs(30), || async {
        let e = survivor.get(&format!("executions/{second}")).await?;
        Ok((e["status"] == "succeeded").then_some(e))
    })
    .await?;
    let (started, _) = ran(&done).context("the second ran")?;
    assert!(started >= at(&abandoned["end_timestamp"]), "{done}");
    Ok(())
}

/// The chain of retries that `first` led to, in order.
fn retries_of<'a>(all: &'a [Value], first: &str) -> Vec<&'a Value> {
    let mut chain = Vec::new();
    let mut previous = first.to_string();
    while let Some(next) = all
        .iter()
        .find(|e| e["context"]["policies"]["retry"]["retried_liveaction_id"] == previous.as_str())
    {
        chain.push(next);
        previous = next["id"].as_str().unwrap_or_default().to_string();
    }
    chain
}

#[tokio::test]
async fn a_timed_out_action_is_retried_exactly_max_retry_count_times() -> Result<()> {
    let pair = Pair::start().await?;
    let first = pair.run(0, "lim.slow", json!({})).await?;
    let all = pair.ended("lim.slow", 3, Duration::from_secs(90)).await?;
    // Every actiontrigger is handled: a fourth would have been requested.
    pair.first.rules_idle().await?;
    let all_now: Vec<Value> = pair
        .first
        .executions()
        .await?
        .into_iter()
        .filter(|e| e["action"]["ref"] == "lim.slow")
        .collect();
    assert_eq!(all_now.len(), 3, "no retry past max_retry_count");
    assert!(all.iter().all(|e| e["status"] == "timeout"), "{all:?}");
    let chain = retries_of(&all, &first);
    assert_eq!(chain.len(), 2);
    for (n, retry) in chain.iter().enumerate() {
        let policy = &retry["context"]["policies"]["retry"];
        assert_eq!(policy["applied_policy"], "lim.retry_slow");
        assert_eq!(policy["retry_count"], n + 1);
        assert_eq!(retry["parameters"]["timeout"], 1);
        assert_eq!(retry["context"]["user"], "admin");
    }
    pair.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_failure_is_retried_after_the_policy_delay() -> Result<()> {
    let pair = Pair::start().await?;
    let first = pair.run(1, "lim.flaky", json!({})).await?;
    let all = pair.ended("lim.flaky", 2, Duration::from_secs(60)).await?;
    assert!(all.iter().all(|e| e["status"] == "failed"), "{all:?}");
    let original = all
        .iter()
        .find(|e| e["id"] == first.as_str())
        .context("original")?;
    let chain = retries_of(&all, &first);
    assert_eq!(chain.len(), 1);
    let retry = chain[0];
    assert_eq!(retry["context"]["policies"]["retry"]["retry_count"], 1);
    assert!(went_through(retry, "delayed"), "{retry}");
    let (started, _) = ran(retry).context("the retry ran")?;
    let waited = started - at(&original["end_timestamp"]);
    assert!(
        waited >= chrono::Duration::milliseconds(1000),
        "ran {waited} after the failure"
    );
    pair.first.rules_idle().await?;
    let count = pair
        .first
        .executions()
        .await?
        .iter()
        .filter(|e| e["action"]["ref"] == "lim.flaky")
        .count();
    assert_eq!(count, 2, "max_retry_count 1: one retry only");
    pair.stop().await;
    Ok(())
}

async fn register_broken(policy_file: &str) -> Result<String> {
    let dir = tempfile::tempdir()?;
    let node = TestNode::start(vec![dir.path().to_path_buf()]).await?;
    write_pack(
        dir.path(),
        "lim",
        &[
            ("pack.yaml", PACK),
            ("actions/pair.yaml", &action("pair", "true", "")),
            ("policies/broken.yaml", policy_file),
        ],
    )?;
    let (status, err) = node
        .post("packs/register", &json!({"packs": ["lim"]}))
        .await?;
    assert_eq!(status, 400, "{err}");
    let (status, _) = node.get("policies/lim.broken").await?;
    assert_eq!(status, 404, "nothing registered");
    Ok(err["faultstring"].as_str().unwrap_or_default().to_string())
}

#[tokio::test]
async fn a_policy_of_an_unknown_type_is_refused_naming_file_and_field() -> Result<()> {
    let msg = register_broken(&policy(
        "broken",
        "lim.pair",
        "action.throttle",
        "  threshold: 1\n",
    ))
    .await?;
    for needle in [
        "policies/broken.yaml",
        "policy_type",
        "action.throttle",
        "action.concurrency",
    ] {
        assert!(msg.contains(needle), "missing {needle:?} in: {msg}");
    }
    Ok(())
}

#[tokio::test]
async fn a_concurrency_policy_without_threshold_is_refused_naming_file_and_field() -> Result<()> {
    let msg = register_broken(&policy(
        "broken",
        "lim.pair",
        "action.concurrency",
        "  action: delay\n",
    ))
    .await?;
    for needle in ["policies/broken.yaml", "parameters.threshold", "required"] {
        assert!(msg.contains(needle), "missing {needle:?} in: {msg}");
    }
    Ok(())
}

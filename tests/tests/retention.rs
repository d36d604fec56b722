//! Retention and the history index against a real nats-server: purges and
//! the garbage collector remove what they should and nothing else; one
//! node of a cluster collects; the compact index answers every filter
//! combination as a brute-force filter over the same records does, also
//! after restarts from a snapshot that is current, stale or corrupt; and
//! so do the trigger-instance and rule-enforcement lists, through purges
//! and a restart.

use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, SubsecRound, Utc};
use futures::StreamExt;
use serde_json::{json, Value};
use squall_actors::bus::Bus;
use squall_domain::{ids, time};
use squall_tests::cluster::{admin_client, spec_in, NodeProcess};
use squall_tests::{poll, NatsServer, TestNode};

const FINISHED: [&str; 5] = ["succeeded", "failed", "timeout", "canceled", "abandoned"];

/// A stored execution record as a runner would have left it.
#[derive(Debug, Clone)]
struct Seed {
    id: String,
    action: String,
    status: &'static str,
    start: DateTime<Utc>,
    end: Option<DateTime<Utc>>,
    parent: Option<String>,
    user: String,
    rule: Option<(String, String)>,
    trigger_instance: Option<(String, String)>,
    runner: &'static str,
}

impl Seed {
    fn new(action: &str, status: &'static str, start: DateTime<Utc>) -> Seed {
        // Stored with microseconds.
        let start = start.trunc_subsecs(6);
        Seed {
            id: ids::fresh(&start),
            action: action.into(),
            status,
            start,
            end: FINISHED
                .contains(&status)
                .then(|| start + chrono::Duration::seconds(3)),
            parent: None,
            user: "stanley".into(),
            rule: None,
            trigger_instance: None,
            runner: "local-shell-cmd",
        }
    }

    fn under(mut self, parent: &Seed) -> Seed {
        self.parent = Some(parent.id.clone());
        self
    }

    fn record(&self) -> Value {
        let (pack, name) = self.action.split_once('.').unwrap_or(("pk", "a"));
        let mut r = json!({
            "v": 1,
            "id": self.id,
            "action": {"ref": self.action, "name": name, "pack": pack, "runner_type": self.runner},
            "runner": {"name": self.runner},
            "status": self.status,
            "parameters": {"cmd": "echo hi"},
            "result": {"stdout": "hi", "stderr": "", "return_code": 0},
            "context": {"user": self.user},
            "start_timestamp": time::format(&self.start),
            "log": [{"timestamp": time::format(&self.start), "status": "requested"}],
        });
        if let Some(end) = &self.end {
            r["end_timestamp"] = json!(time::format(end));
        }
        if let Some(p) = &self.parent {
            r["parent"] = json!(p);
        }
        if let Some((id, rref)) = &self.rule {
            let (pack, name) = rref.split_once('.').unwrap_or(("pk", "r"));
            r["rule"] = json!({"id": id, "ref": rref, "name": name, "pack": pack, "uid": format!("rule:{rref}")});
        }
        if let Some((id, ttype)) = &self.trigger_instance {
            r["trigger_instance"] = json!({"id": id, "trigger": ttype, "trigger_type": ttype,
                "occurrence_time": time::format(&self.start)});
        }
        r
    }
}

async fn store(bus: &Bus, seeds: &[Seed]) -> Result<()> {
    let writes = futures::stream::iter(seeds.iter().map(|s| {
        let bus = bus.clone();
        let (id, bytes) = (s.id.clone(), s.record().to_string());
        async move { bus.executions.raw().put(id, bytes.into()).await }
    }))
    .buffer_unordered(64)
    .collect::<Vec<_>>()
    .await;
    for w in writes {
        w?;
    }
    Ok(())
}

fn days_ago(d: i64) -> DateTime<Utc> {
    Utc::now() - chrono::Duration::days(d)
}

/// `GET executions?query` → (ids, X-Total-Count).
async fn list(node: &TestNode, query: &str) -> Result<(Vec<String>, usize)> {
    list_of(node, &format!("executions?{query}")).await
}

/// `GET path` of a list → (ids, X-Total-Count).
async fn list_of(node: &TestNode, path: &str) -> Result<(Vec<String>, usize)> {
    let query = path;
    let r = node
        .http
        .get(format!("{}/{path}", node.base))
        .send()
        .await?;
    let status = r.status().as_u16();
    let total = r
        .headers()
        .get("X-Total-Count")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body: Value = r.json().await?;
    anyhow::ensure!(status == 200, "GET {query}: {status} {body}");
    let ids = body
        .as_array()
        .context("a list")?
        .iter()
        .map(|e| e["id"].as_str().unwrap_or_default().to_string())
        .collect();
    Ok((ids, total.context("X-Total-Count")?))
}

async fn exists(node: &TestNode, id: &str) -> Result<bool> {
    let (status, body) = node.get(&format!("executions/{id}")).await?;
    anyhow::ensure!(status == 200 || status == 404, "{status} {body}");
    Ok(status == 200)
}

async fn stream_messages(bus: &Bus, stream: &str) -> Result<u64> {
    let mut s = bus.js.get_stream(stream).await?;
    Ok(s.info().await?.state.messages)
}

async fn metric(root: &str, line_prefix: &str) -> Result<u64> {
    let text = reqwest::get(format!("{root}/metrics"))
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64))
}

#[tokio::test]
async fn purges_and_the_collector_remove_what_they_should_and_nothing_else() -> Result<()> {
    let mut node = TestNode::start(vec![]).await?;
    let bus = node.node.as_ref().context("node")?.bus.clone();
    let old = days_ago(10);
    // Gone by the collector: a lone old execution, and a finished workflow
    // with its tasks (and a task's own children).
    let lone = Seed::new("pk.lone", "succeeded", old);
    let mut wf = Seed::new("pk.wf", "succeeded", old);
    wf.runner = "orquesta";
    let t1 = Seed::new("pk.t1", "succeeded", old).under(&wf);
    let t2 = Seed::new("pk.t2", "failed", old).under(&wf);
    let t1a = Seed::new("pk.t1a", "succeeded", old).under(&t1);
    // Kept: a running workflow's finished tasks; a finished workflow one
    // of whose tasks still runs; an unfinished old execution; a recent
    // one; an old one that ended recently.
    let running_wf = Seed::new("pk.wf", "paused", old);
    let running_task_done = Seed::new("pk.t1", "succeeded", old).under(&running_wf);
    let done_wf = Seed::new("pk.wf", "succeeded", old);
    let done_wf_running_task = Seed::new("pk.t2", "paused", old).under(&done_wf);
    let unfinished = Seed::new("pk.lone", "paused", old);
    let recent = Seed::new("pk.lone", "succeeded", Utc::now());
    let mut ended_late = Seed::new("pk.lone", "failed", old);
    ended_late.end = Some(Utc::now());
    // For the manual purge's filters.
    let x_failed = [
        Seed::new("pk.x", "failed", days_ago(20)),
        Seed::new("pk.x", "failed", days_ago(9)),
    ];
    let x_ok = Seed::new("pk.x", "succeeded", days_ago(20));
    let y_failed = Seed::new("pk.y", "failed", days_ago(20));
    let gone = [&lone, &wf, &t1, &t2, &t1a, &x_ok, &y_failed];
    let kept = [
        &running_wf,
        &running_task_done,
        &done_wf,
        &done_wf_running_task,
        &unfinished,
        &recent,
        &ended_late,
    ];
    let mut all: Vec<Seed> = gone
        .iter()
        .chain(kept.iter())
        .map(|s| (*s).clone())
        .collect();
    all.extend(x_failed.iter().cloned());
    store(&bus, &all).await?;
    // The workflow's state and items, and output, stored beside them.
    bus.workflows.put(&wf.id, "{}".into()).await?;
    bus.workflows
        .put(format!("{}.items.t1.1", wf.id), "[]".into())
        .await?;
    bus.workflows.put(&done_wf.id, "{}".into()).await?;
    for s in [&lone, &t1a, &recent] {
        bus.js
            .publish(format!("squall.output.{}", s.id), "chunk".into())
            .await?
            .await?;
    }
    poll(Duration::from_secs(10), || async {
        Ok((list(&node, "limit=1").await?.1 == all.len()).then_some(()))
    })
    .await?;

    // Bad input is refused, naming what is wrong.
    let past = time::format(&days_ago(5));
    let future = time::format(&(Utc::now() + chrono::Duration::days(1)));
    for (body, needle) in [
        (
            json!({"before": "yesterday"}),
            "before: \"yesterday\" is not an ISO 8601 timestamp",
        ),
        (json!({"before": future}), "is in the future"),
        (
            json!({"before": past, "status": "bogus"}),
            "status: \"bogus\" is not an execution status",
        ),
        (
            json!({"before": past, "status": "running"}),
            "not a finished status",
        ),
        (json!({"before": past, "colour": "red"}), "colour"),
        (json!({}), "before"),
    ] {
        let (status, e) = node.post("executions/purge", &body).await?;
        assert_eq!(status, 400, "{body}: {e}");
        let fault = e["faultstring"].as_str().unwrap_or_default();
        assert!(fault.contains(needle), "{body}: {fault}");
    }
    let observer = node.user("olive", "observer").await?;
    let (status, _) = node
        .call(
            &observer,
            reqwest::Method::POST,
            "executions/purge",
            Some(&json!({"before": past})),
        )
        .await?;
    assert_eq!(status, 403);
    let (status, e) = node
        .post("triggerinstances/purge", &json!({"before": "noon"}))
        .await?;
    assert_eq!(status, 400, "{e}");

    // A manual purge with StackStorm's filters: only pk.x's failed
    // executions older than 5 days.
    let (status, r) = node
        .post(
            "executions/purge",
            &json!({"before": past, "action": "pk.x", "status": "failed"}),
        )
        .await?;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["deleted"], 2, "{r}");
    for s in &x_failed {
        assert!(!exists(&node, &s.id).await?);
    }
    assert!(exists(&node, &x_ok.id).await? && exists(&node, &y_failed.id).await?);
    let (ids, total) = list(&node, "action=pk.x&limit=10").await?;
    assert_eq!((ids, total), (vec![x_ok.id.clone()], 1));

    // Trigger instances and enforcements: everything stored before now.
    let before_ti = stream_messages(&bus, "TRIGGERS").await?;
    let instance = json!({"id": ids::fresh(&Utc::now()), "trigger": "pk.nothing", "trigger_type": "pk.nothing",
        "payload": {}, "occurrence_time": time::format(&Utc::now())});
    bus.js
        .publish("squall.trigger.0.x", instance.to_string().into())
        .await?
        .await?;
    bus.enforcements.raw().put("e1", "{}".into()).await?;
    let now = time::format(&Utc::now());
    let (status, r) = node
        .post("triggerinstances/purge", &json!({"before": now}))
        .await?;
    assert_eq!(status, 200, "{r}");
    assert!(r["deleted"].as_u64() >= Some(before_ti + 1), "{r}");
    let (status, r) = node
        .post("ruleenforcements/purge", &json!({"before": now}))
        .await?;
    assert_eq!((status, r["deleted"].as_u64()), (200, Some(1)), "{r}");
    assert_eq!(stream_messages(&bus, "KV_enforcements").await?, 0);

    // The collector, StackStorm's TTLs in days: a restart with them on.
    let removed_before = metric(
        &node.root,
        "squall_retention_removed_total{kind=\"executions\"} ",
    )
    .await?;
    node.config.garbagecollector.action_executions_ttl = Some(1);
    node.config.garbagecollector.collection_interval = 1;
    node.config.garbagecollector.sleep_delay = 0.0;
    node.restart().await?;
    poll(Duration::from_secs(30), || async {
        for s in gone {
            if exists(&node, &s.id).await? {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .await
    .context("the collector never removed the old finished executions")?;
    for s in kept {
        assert!(exists(&node, &s.id).await?, "{s:?} was removed");
    }
    let (_, total) = list(&node, "limit=1").await?;
    assert_eq!(total, kept.len());
    assert!(bus.workflows.get(&wf.id).await?.is_none());
    assert!(bus
        .workflows
        .get(format!("{}.items.t1.1", wf.id))
        .await?
        .is_none());
    assert!(bus.workflows.get(&done_wf.id).await?.is_some());
    let mut out = bus.js.get_stream("OUTPUT").await?;
    assert_eq!(
        out.info().await?.state.messages,
        1,
        "only the recent output stays"
    );
    let removed = metric(
        &node.root,
        "squall_retention_removed_total{kind=\"executions\"} ",
    )
    .await?;
    assert!(removed >= removed_before + gone.len() as u64, "{removed}");
    assert!(metric(&node.root, "squall_retention_passes_total ").await? >= 1);
    Ok(())
}

/// A small deterministic generator (the test must reproduce).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

fn seeds(n: usize, rng: &mut Lcg) -> Vec<Seed> {
    let actions = [
        "core.local",
        "core.noop",
        "pk.a",
        "pk.b",
        "pk.c",
        "ops.deploy",
    ];
    let users = ["stanley", "alice", "bob", "carol"];
    // Unfinished ones are `paused`: a `running` record no runner holds is
    // settled `abandoned` by the node after a restart.
    let statuses = ["succeeded", "failed", "paused", "timeout", "canceled"];
    let base = days_ago(30);
    let mut out: Vec<Seed> = Vec::with_capacity(n);
    for i in 0..n {
        // Seconds apart with ties: order by time, then id.
        let start = base + chrono::Duration::seconds((i / 3 * 7 + rng.next(5)) as i64);
        let mut s = Seed::new(
            actions[rng.next(actions.len())],
            statuses[rng.next(statuses.len())],
            start,
        );
        s.user = users[rng.next(users.len())].into();
        if rng.next(3) == 0 {
            let r = rng.next(3);
            s.rule = Some((format!("rule{r}id"), format!("pk.rule{r}")));
        }
        if rng.next(4) == 0 {
            let t = rng.next(n / 2 + 1);
            s.trigger_instance = Some((format!("ti{t}"), format!("pk.type{}", t % 3)));
        }
        if !out.is_empty() && rng.next(5) == 0 {
            s.parent = Some(out[rng.next(out.len())].id.clone());
        }
        out.push(s);
    }
    out
}

/// The ids a brute-force filter keeps, in the order asked.
fn brute_force(all: &[Seed], q: &[(&str, String)], ascending: bool) -> Vec<String> {
    let get = |k: &str| q.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
    let ts = |k: &str| get(k).and_then(time::parse);
    let mut kept: Vec<&Seed> = all
        .iter()
        .filter(|s| {
            get("action").is_none_or(|a| s.action == a)
                && get("status").is_none_or(|v| s.status == v)
                && get("user").is_none_or(|v| s.user == v)
                && get("rule")
                    .is_none_or(|v| s.rule.as_ref().is_some_and(|(id, r)| id == v || r == v))
                && get("trigger_instance")
                    .is_none_or(|v| s.trigger_instance.as_ref().is_some_and(|(t, _)| t == v))
                && get("trigger_type")
                    .is_none_or(|v| s.trigger_instance.as_ref().is_some_and(|(_, t)| t == v))
                && get("parent").is_none_or(|v| match v {
                    "null" => s.parent.is_none(),
                    p => s.parent.as_deref() == Some(p),
                })
                && ts("timestamp_gt").is_none_or(|t| s.start > t)
                && ts("timestamp_lt").is_none_or(|t| s.start < t)
        })
        .collect();
    kept.sort_by(|a, b| (a.start, &a.id).cmp(&(b.start, &b.id)));
    if !ascending {
        kept.reverse();
    }
    kept.into_iter().map(|s| s.id.clone()).collect()
}

/// Polls until lists report `n` executions.
async fn wait_total(node: &TestNode, n: usize) -> Result<()> {
    poll(Duration::from_secs(20), || async {
        Ok((list(node, "limit=1").await?.1 == n).then_some(()))
    })
    .await
}

/// Random filter combinations, sorts and pages, each compared with the
/// brute force over `all`.
async fn check_queries(
    node: &TestNode,
    all: &[Seed],
    rng: &mut Lcg,
    n: usize,
    phase: &str,
) -> Result<()> {
    for _ in 0..n {
        let pick = |rng: &mut Lcg| all[rng.next(all.len())].clone();
        let mut q: Vec<(&str, String)> = Vec::new();
        let fields = rng.next(4) + 1;
        for _ in 0..fields {
            let s = pick(rng);
            match rng.next(9) {
                0 => q.push(("action", s.action)),
                1 => q.push(("status", s.status.into())),
                2 => q.push(("user", s.user)),
                3 => {
                    if let Some((id, r)) = s.rule {
                        q.push(("rule", if rng.next(2) == 0 { id } else { r }));
                    }
                }
                4 => q.push(("parent", s.parent.unwrap_or_else(|| "null".into()))),
                5 => {
                    if let Some((t, tt)) = s.trigger_instance {
                        q.push(if rng.next(2) == 0 {
                            ("trigger_instance", t)
                        } else {
                            ("trigger_type", tt)
                        });
                    }
                }
                6 => q.push(("timestamp_gt", time::format(&s.start))),
                7 => q.push(("timestamp_lt", time::format(&s.start))),
                _ => q.push(("action", "pk.missing".into())),
            }
        }
        let mut seen = std::collections::HashSet::new();
        q.retain(|(k, _)| seen.insert(*k));
        let ascending = rng.next(2) == 0;
        let offset = [0, rng.next(30), rng.next(2000)][rng.next(3)];
        let limit = rng.next(100) + 1;
        let want = brute_force(all, &q, ascending);
        let mut query: Vec<(&str, String)> = q.clone();
        query.push(("offset", offset.to_string()));
        query.push(("limit", limit.to_string()));
        query.push(("include_attributes", "id".into()));
        if ascending {
            query.push(("sort_asc", "true".into()));
        }
        let qs = query
            .iter()
            .map(|(k, v)| format!("{k}={}", v.replace('+', "%2B").replace(':', "%3A")))
            .collect::<Vec<_>>()
            .join("&");
        let (ids, total) = list(node, &qs).await?;
        let expected: Vec<String> = want.iter().skip(offset).take(limit).cloned().collect();
        assert_eq!(total, want.len(), "{phase}: X-Total-Count of {qs}");
        assert_eq!(ids, expected, "{phase}: page of {qs}");
    }
    Ok(())
}

/// Writes its bytes into the FIFO at its path when dropped, from a thread
/// of its own (the write waits for the reader), so dropping never blocks.
struct Feed(std::path::PathBuf, Vec<u8>);

impl Drop for Feed {
    fn drop(&mut self) {
        let (path, bytes) = (self.0.clone(), std::mem::take(&mut self.1));
        std::thread::spawn(move || std::fs::write(path, bytes));
    }
}

#[tokio::test]
async fn the_index_agrees_with_a_brute_force_filter_across_restarts() -> Result<()> {
    let mut node = TestNode::start_with(vec![], |_| {}).await?;
    let bus = node.node.as_ref().context("node")?.bus.clone();
    let mut rng = Lcg(17);
    let mut all = seeds(3000, &mut rng);
    store(&bus, &all).await?;
    wait_total(&node, all.len()).await?;
    check_queries(&node, &all, &mut rng, 60, "fresh").await?;

    // A clean stop saves the snapshot; the restart loads it.
    let snapshot = squall_actors::history::snapshot_path(&node.config.data_dir);
    node.restart().await?;
    assert!(snapshot.is_file(), "no snapshot at {}", snapshot.display());
    let stale = std::fs::read(&snapshot)?;
    check_queries(&node, &all, &mut rng, 20, "from the snapshot").await?;

    // Changes after that snapshot: deletions, updates, new records.
    for s in all.iter().step_by(25) {
        bus.executions.raw().purge(&s.id).await?;
    }
    all = all
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % 25 != 0)
        .map(|(_, s)| s)
        .collect();
    for s in all.iter_mut().step_by(31) {
        s.status = "succeeded";
        s.end = Some(s.start + chrono::Duration::seconds(1));
    }
    let updated: Vec<Seed> = all.iter().step_by(31).cloned().collect();
    let more = seeds(200, &mut rng);
    store(&bus, &updated).await?;
    store(&bus, &more).await?;
    all.extend(more);
    wait_total(&node, all.len()).await?;
    check_queries(&node, &all, &mut rng, 20, "after changes").await?;

    // An older snapshot (valid, but behind): the restart replays what
    // changed since, deletions included.
    node.stop().await;
    std::fs::write(&snapshot, &stale)?;
    node.restart().await?;
    wait_total(&node, all.len()).await?;
    check_queries(&node, &all, &mut rng, 20, "from a stale snapshot").await?;

    // A corrupt snapshot is detected and the bucket replayed.
    node.stop().await;
    let mut bytes = std::fs::read(&snapshot)?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(&snapshot, &bytes)?;
    node.restart().await?;
    wait_total(&node, all.len()).await?;
    check_queries(&node, &all, &mut rng, 20, "from a corrupt snapshot").await?;

    // The load held: the snapshot is a FIFO that is read only once this
    // test writes the saved snapshot into it, so until then the index is
    // certainly loading, and every list or trace the history serves must
    // answer 503 with Retry-After (never a partial answer).
    node.stop().await;
    let saved = std::fs::read(&snapshot)?;
    std::fs::remove_file(&snapshot)?;
    let made = std::process::Command::new("mkfifo")
        .arg(&snapshot)
        .status()?;
    anyhow::ensure!(made.success(), "mkfifo {}: {made}", snapshot.display());
    // Fed when dropped, so a failed assertion below still releases the
    // node's reader (whose thread the runtime waits for at the end).
    let feed = Feed(snapshot.clone(), saved);
    node.restart().await?;
    let first = &all[0].id;
    for path in [
        "executions?limit=3".to_string(),
        format!("executions/{first}/children"),
        "traces".to_string(),
        format!("traces/{first}"),
    ] {
        let r = node
            .http
            .get(format!("{}/{path}", node.base))
            .send()
            .await?;
        let status = r.status().as_u16();
        let retry = r.headers().get("Retry-After").cloned();
        let body: Value = r.json().await?;
        assert_eq!(status, 503, "{path} while the index loads: {body}");
        assert!(retry.is_some(), "{path}: 503 without Retry-After");
        assert!(
            body["faultstring"]
                .as_str()
                .unwrap_or_default()
                .contains("loading"),
            "{path}: {body}"
        );
    }
    drop(feed);
    wait_total(&node, all.len()).await?;
    check_queries(&node, &all, &mut rng, 10, "after a held load").await?;
    let (code, _) = node.get("traces?limit=1").await?;
    assert_eq!(code, 200, "traces once loaded");

    // No snapshot and more to replay: until the index has loaded, a list
    // says so (503 with Retry-After) or is right, never a partial page.
    node.stop().await;
    std::fs::remove_file(&snapshot)?;
    let more = seeds(10_000, &mut rng);
    store(&bus, &more).await?;
    all.extend(more);
    node.restart().await?;
    // Every answer until the first 200 is judged (poll retries errors,
    // so a wrong answer is recorded, not returned).
    let loading = std::sync::atomic::AtomicUsize::new(0);
    let wrong = std::sync::Mutex::new(Vec::<String>::new());
    poll(Duration::from_secs(60), || async {
        let r = node
            .http
            .get(format!(
                "{}/executions?limit=3&include_attributes=id",
                node.base
            ))
            .send()
            .await?;
        let status = r.status().as_u16();
        let retry = r.headers().get("Retry-After").is_some();
        let total = r
            .headers()
            .get("X-Total-Count")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let body: Value = r.json().await?;
        let says = body["faultstring"].as_str().unwrap_or_default();
        let mut wrong = wrong.lock().unwrap_or_else(|e| e.into_inner());
        match status {
            503 if retry && says.contains("loading") => {
                loading.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(None)
            }
            200 if total == Some(all.len()) => Ok(Some(())),
            _ => {
                wrong.push(format!(
                    "{status} X-Total-Count {total:?} of {}: {body}",
                    all.len()
                ));
                Ok(Some(()))
            }
        }
    })
    .await?;
    let wrong = wrong.into_inner().unwrap_or_default();
    assert!(wrong.is_empty(), "lists while the index loaded: {wrong:?}");
    eprintln!(
        "lists answered 503 {} times while the index loaded",
        loading.load(std::sync::atomic::Ordering::Relaxed)
    );
    check_queries(&node, &all, &mut rng, 10, "after a replay").await?;

    // More records than one request may name (the server's 1 MiB payload
    // limit; `limit=-1` over a large history asks for that many): every
    // stored one comes back, the absent ones are left out.
    let mut ids: Vec<String> = all.iter().map(|s| s.id.clone()).collect();
    ids.extend((0..25_000u32).map(|i| format!("{i:024x}")));
    let read = squall_actors::history::read_records(&bus, &ids).await?;
    assert_eq!(read.len(), all.len(), "records read in batches");
    assert!(all.iter().all(|s| read.contains_key(&s.id)));
    Ok(())
}

#[tokio::test]
async fn one_node_of_a_cluster_collects_and_another_takes_over() -> Result<()> {
    let nats = NatsServer::start()?;
    let dir = tempfile::tempdir()?;
    let spec = spec_in(dir.path(), nats.url(), 1, 4);
    let gc = "garbagecollector:\n  action_executions_ttl: 1\n  trigger_instances_ttl: 1\n  collection_interval: 1\n  sleep_delay: 0\n";
    let mut a = NodeProcess::start(&spec, "gc-a", gc)?;
    let api = admin_client(&spec, &a).await?;
    let mut b = NodeProcess::start(&spec, "gc-b", gc)?;
    let own = api
        .settled(&["gc-a", "gc-b"], &["sensors"], 4, Duration::from_secs(60))
        .await?;
    let collector = own
        .iter()
        .find(|(_, roles)| roles.get("sensors").is_some_and(|p| p.contains(&0)))
        .map(|(name, _)| name.clone())
        .context("nobody owns sensors partition 0")?;
    let passes = |n: &NodeProcess| {
        let root = n.root.clone();
        async move { metric(&root, "squall_retention_passes_total ").await }
    };
    let (owner, other) = if collector == "gc-a" {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    let other_before = passes(other).await?;
    let owner_before = passes(owner).await?;
    poll(Duration::from_secs(20), || async {
        Ok((passes(owner).await? >= owner_before + 3).then_some(()))
    })
    .await
    .with_context(|| format!("{} does not collect:\n{}", owner.name, owner.log()))?;
    assert_eq!(
        passes(other).await?,
        other_before,
        "{} collected while {} held the lease",
        other.name,
        owner.name
    );
    // The collecting node dies: the other takes sensors partition 0, and
    // with it the collection.
    owner.kill()?;
    poll(Duration::from_secs(60), || async {
        Ok((passes(other).await? > other_before).then_some(()))
    })
    .await
    .with_context(|| format!("{} never took over:\n{}", other.name, other.log()))?;
    Ok(())
}

/// A trigger instance or a rule enforcement as the brute force sees it:
/// its id, time and the values of its filters.
#[derive(Debug, Clone)]
struct Listed {
    id: String,
    at: DateTime<Utc>,
    fields: Vec<(&'static str, Option<String>)>,
}

impl Listed {
    fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.as_deref())
    }
}

/// Random filter combinations, sorts and pages of `GET path`, compared
/// with the brute force over `all`. `time` names the time filters'
/// prefix (`timestamp`, `enforced_at`), `sort` the time sort key.
#[allow(clippy::too_many_arguments)]
async fn check_list(
    node: &TestNode,
    path: &str,
    all: &[Listed],
    time_prefix: &str,
    sort: &str,
    extra: &[(&str, &str)],
    rng: &mut Lcg,
    phase: &str,
) -> Result<()> {
    for _ in 0..40 {
        let mut q: Vec<(String, String)> = Vec::new();
        for _ in 0..rng.next(3) + 1 {
            let s = &all[rng.next(all.len())];
            let names: Vec<&str> = s.fields.iter().map(|(n, _)| *n).collect();
            match rng.next(names.len() + 4) {
                i if i < names.len() => {
                    if let Some(v) = s.get(names[i]) {
                        q.push((names[i].into(), v.into()));
                    }
                }
                i if i == names.len() => q.push((format!("{time_prefix}_gt"), time::format(&s.at))),
                i if i == names.len() + 1 => {
                    q.push((format!("{time_prefix}_lt"), time::format(&s.at)))
                }
                i if i == names.len() + 2 && time_prefix == "enforced_at" => {
                    q.push(("enforced_at".into(), time::format(&s.at)))
                }
                _ => q.push((names[0].into(), "pk.missing".into())),
            }
        }
        let mut seen = std::collections::HashSet::new();
        q.retain(|(k, _)| seen.insert(k.clone()));
        let ts = |k: &str| {
            q.iter()
                .find(|(n, _)| n == k)
                .and_then(|(_, v)| time::parse(v))
        };
        let (gt, lt, at) = (
            ts(&format!("{time_prefix}_gt")),
            ts(&format!("{time_prefix}_lt")),
            ts("enforced_at"),
        );
        let mut want: Vec<&Listed> = all
            .iter()
            .filter(|s| {
                q.iter()
                    .all(|(k, v)| k.starts_with(time_prefix) || s.get(k) == Some(v.as_str()))
                    && gt.is_none_or(|t| s.at > t)
                    && lt.is_none_or(|t| s.at < t)
                    && at.is_none_or(|t| s.at == t)
            })
            .collect();
        want.sort_by(|a, b| (a.at, &a.id).cmp(&(b.at, &b.id)));
        let ascending = rng.next(2) == 0;
        if !ascending {
            want.reverse();
        }
        let offset = [0, rng.next(30), rng.next(400)][rng.next(3)];
        let limit = rng.next(60) + 1;
        let mut query = q.clone();
        query.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        query.push(("offset".into(), offset.to_string()));
        query.push(("limit".into(), limit.to_string()));
        query.push(("include_attributes".into(), "id".into()));
        if ascending {
            query.push(("sort".into(), sort.into()));
        }
        let qs = query
            .iter()
            .map(|(k, v)| format!("{k}={}", v.replace('+', "%2B").replace(':', "%3A")))
            .collect::<Vec<_>>()
            .join("&");
        let (ids, total) = list_of(node, &format!("{path}?{qs}")).await?;
        let expected: Vec<String> = want
            .iter()
            .skip(offset)
            .take(limit)
            .map(|s| s.id.clone())
            .collect();
        assert_eq!(total, want.len(), "{phase}: X-Total-Count of {path}?{qs}");
        assert_eq!(ids, expected, "{phase}: page of {path}?{qs}");
    }
    Ok(())
}

/// Publishes `n` trigger instances one by one (so their stream order is
/// known) and stores `n` rule enforcements; returns both as listed.
async fn instances_and_enforcements(
    bus: &Bus,
    n: usize,
    rng: &mut Lcg,
) -> Result<(Vec<Listed>, Vec<Listed>)> {
    use squall_domain::execution::{
        EnforcementStatus, RuleEnforcement, RuleSummary, TriggerInstance, RECORD_VERSION,
    };
    let base = days_ago(3);
    let mut instances = Vec::new();
    let mut enforcements = Vec::new();
    for i in 0..n {
        // Seconds apart with ties and stragglers: order by time, then id.
        let at = (base + chrono::Duration::seconds((i / 2 + rng.next(4)) as i64)).trunc_subsecs(6);
        let trigger = format!("pk.t{}", rng.next(4));
        let instance = TriggerInstance {
            v: RECORD_VERSION,
            id: ids::fresh(&at),
            trigger: trigger.clone(),
            trigger_type: "core.st2.webhook".into(),
            trigger_parameters: serde_json::Map::new(),
            payload: json!({"i": i}),
            occurrence_time: at,
            trace_tag: None,
        };
        bus.publish_trigger(&instance).await?;
        let r = rng.next(3);
        let execution = (rng.next(4) > 0).then(|| ids::fresh(&at));
        let enforcement = RuleEnforcement {
            v: RECORD_VERSION,
            id: ids::fresh(&at),
            trigger_instance_id: instance.id.clone(),
            execution_id: execution.clone(),
            rule: RuleSummary {
                id: format!("rule{r}id"),
                rule_ref: format!("pk.rule{r}"),
                name: format!("rule{r}"),
                pack: "pk".into(),
                uid: format!("rule:pk:rule{r}"),
            },
            status: if execution.is_some() {
                EnforcementStatus::Succeeded
            } else {
                EnforcementStatus::Failed
            },
            failure_reason: None,
            enforced_at: at + chrono::Duration::milliseconds(rng.next(3) as i64),
        };
        bus.enforcements.put(&enforcement.id, &enforcement).await?;
        instances.push(Listed {
            id: instance.id.clone(),
            at,
            fields: vec![("trigger", Some(trigger))],
        });
        enforcements.push(Listed {
            id: enforcement.id.clone(),
            at: enforcement.enforced_at,
            fields: vec![
                ("rule_ref", Some(enforcement.rule.rule_ref.clone())),
                ("rule_id", Some(enforcement.rule.id.clone())),
                ("execution", execution),
                ("trigger_instance", Some(instance.id.clone())),
            ],
        });
    }
    Ok((instances, enforcements))
}

/// Polls until `path` reports `n` records.
async fn wait_count(node: &TestNode, path: &str, n: usize) -> Result<()> {
    poll(Duration::from_secs(30), || async {
        Ok((list_of(node, path).await?.1 == n).then_some(()))
    })
    .await
    .with_context(|| format!("{path} never counted {n}"))
}

#[tokio::test]
async fn instance_and_enforcement_lists_agree_with_a_brute_force_filter() -> Result<()> {
    let mut node = TestNode::start(vec![]).await?;
    let bus = node.node.as_ref().context("node")?.bus.clone();
    let mut rng = Lcg(29);
    let (old_instances, old_enforcements) = instances_and_enforcements(&bus, 300, &mut rng).await?;
    let instances_cut = bus.triggers.clone().info().await?.state.last_sequence + 1;
    let enforcements_cut = bus
        .enforcements
        .raw()
        .stream
        .clone()
        .info()
        .await?
        .state
        .last_sequence
        + 1;
    let (instances, mut enforcements) = instances_and_enforcements(&bus, 1200, &mut rng).await?;
    let mut all_instances = old_instances.clone();
    all_instances.extend(instances.iter().cloned());
    let mut all_enforcements = old_enforcements.clone();
    all_enforcements.extend(enforcements.iter().cloned());
    // Every instance processed by its rules partition (none matches).
    wait_count(&node, "triggerinstances?limit=1&status=processed", 1500).await?;
    wait_count(&node, "ruleenforcements?limit=1", 1500).await?;
    assert_eq!(
        list_of(&node, "triggerinstances?limit=1&status=pending")
            .await?
            .1,
        0
    );
    let processed = [("status", "processed")];
    check_list(
        &node,
        "triggerinstances",
        &all_instances,
        "timestamp",
        "occurrence_time",
        &[],
        &mut rng,
        "instances",
    )
    .await?;
    check_list(
        &node,
        "triggerinstances",
        &all_instances,
        "timestamp",
        "occurrence_time",
        &processed,
        &mut rng,
        "processed instances",
    )
    .await?;
    check_list(
        &node,
        "ruleenforcements",
        &all_enforcements,
        "enforced_at",
        "enforced_at",
        &[],
        &mut rng,
        "enforcements",
    )
    .await?;

    // What retention or the age limit removes from the streams, no watch
    // reports: lists leave it out all the same.
    bus.triggers.clone().purge().sequence(instances_cut).await?;
    bus.enforcements
        .raw()
        .stream
        .clone()
        .purge()
        .sequence(enforcements_cut)
        .await?;
    // A deleted enforcement goes too.
    let gone = enforcements.remove(7);
    bus.enforcements.raw().delete(&gone.id).await?;
    wait_count(&node, "ruleenforcements?limit=1", enforcements.len()).await?;
    check_list(
        &node,
        "triggerinstances",
        &instances,
        "timestamp",
        "occurrence_time",
        &[],
        &mut rng,
        "instances after a purge",
    )
    .await?;
    check_list(
        &node,
        "ruleenforcements",
        &enforcements,
        "enforced_at",
        "enforced_at",
        &[],
        &mut rng,
        "enforcements after a purge",
    )
    .await?;

    // A restart loads both from the snapshots the stop saved (and reads
    // only what came since); lists are right from the first answer (read
    // from the streams until the indexes load).
    node.restart().await?;
    let (instances_file, enforcements_file) =
        squall_actors::rule_history::snapshot_paths(&node.config.data_dir);
    assert!(instances_file.is_file(), "no {}", instances_file.display());
    assert!(
        enforcements_file.is_file(),
        "no {}",
        enforcements_file.display()
    );
    check_list(
        &node,
        "ruleenforcements",
        &enforcements,
        "enforced_at",
        "enforced_at",
        &[],
        &mut rng,
        "enforcements after a restart",
    )
    .await?;
    check_list(
        &node,
        "triggerinstances",
        &instances,
        "timestamp",
        "occurrence_time",
        &[],
        &mut rng,
        "instances after a restart",
    )
    .await?;
    let (status, body) = node.get("ruleenforcements?sort=rule.name").await?;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["faultstring"]
            .as_str()
            .unwrap_or_default()
            .contains("enforced_at"),
        "{body}"
    );
    let (status, body) = node.get("triggerinstances?timestamp_gt=yesterday").await?;
    assert_eq!(status, 400, "{body}");
    Ok(())
}

//! The history benchmark (`squall-loadtest history`): seeds a large,
//! realistic history straight into the `executions` bucket (many actions,
//! statuses, rules, users, workflows with tasks), then measures what the
//! node's history index costs and serves: RSS per indexed execution, list
//! latency and rate under concurrent clients (first page, two broad
//! filters, a deep offset), and the time from a restart to correct lists,
//! with the index snapshot and without it (and of that, how long the
//! nats-server took to recover its store); optionally, how much a purge of
//! old executions slows concurrent webhook-noop traffic.

use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};

use crate::report::Percentiles;
use crate::target::{ManagedNode, Target};
use crate::LoadError;

/// What to measure.
#[derive(Debug, Clone)]
pub struct HistoryLoad {
    /// Executions to seed.
    pub count: usize,
    /// Clients listing at once.
    pub clients: usize,
    /// Seconds each list query runs.
    pub duration_s: u64,
    /// Executions a purge removes while webhook-noop traffic runs (0: no
    /// retention measurement). The node must have the loadtest pack.
    pub retention: usize,
}

/// How a purge of old executions affected webhook-noop throughput.
#[derive(Debug, Clone)]
pub struct RetentionFigures {
    pub deleted: u64,
    pub purge_secs: f64,
    /// Executions/s of webhook-noop before the purge.
    pub baseline_per_s: f64,
    /// Executions/s of webhook-noop while the purge ran.
    pub during_per_s: f64,
}

/// One list query's figures.
#[derive(Debug, Clone)]
pub struct ListFigures {
    pub query: String,
    pub latency_ms: Percentiles,
    pub per_s: f64,
    pub errors: usize,
}

/// What a history run measured.
#[derive(Debug, Clone)]
pub struct HistoryRun {
    pub count: usize,
    pub seed_secs: f64,
    pub rss_before_kb: u64,
    pub rss_after_kb: u64,
    pub lists: Vec<ListFigures>,
    /// Restart to the node answering a login (nats-server and node up),
    /// with the snapshot and without.
    pub restart_up_secs: (f64, f64),
    /// Restart to a correct `X-Total-Count`, with the snapshot.
    pub restart_snapshot_secs: f64,
    /// The same, the snapshot removed (the bucket replayed).
    pub restart_replay_secs: f64,
    /// Of each restart, until the nats-server said it was ready (from its
    /// log), when it did.
    pub nats_ready_secs: (Option<f64>, Option<f64>),
    /// How long each stop took (`squall up` saving the snapshot and
    /// stopping its nats-server).
    pub stop_secs: (f64, f64),
    pub retention: Option<RetentionFigures>,
}

impl HistoryRun {
    /// Node memory per indexed execution, in bytes.
    pub fn bytes_per_execution(&self) -> f64 {
        (self.rss_after_kb.saturating_sub(self.rss_before_kb) * 1024) as f64 / self.count as f64
    }

    /// A short text report.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "history: {} executions seeded in {:.1} s\nRSS {} MB -> {} MB: {:.0} bytes per execution\n",
            self.count,
            self.seed_secs,
            self.rss_before_kb / 1024,
            self.rss_after_kb / 1024,
            self.bytes_per_execution()
        );
        for l in &self.lists {
            out.push_str(&format!(
                "GET executions?{}: {:.0}/s, p50 {:.1} ms, p99 {:.1} ms, {} errors\n",
                l.query, l.per_s, l.latency_ms.p50, l.latency_ms.p99, l.errors
            ));
        }
        let secs = |s: Option<f64>| s.map_or("?".to_string(), |s| format!("{s:.1}"));
        out.push_str(&format!(
            "restart to correct lists: {:.1} s with the snapshot, {:.1} s replaying the bucket \
             (of which to a login answered: {:.1} s and {:.1} s; to the nats-server ready: {} s and {} s)\n",
            self.restart_snapshot_secs,
            self.restart_replay_secs,
            self.restart_up_secs.0,
            self.restart_up_secs.1,
            secs(self.nats_ready_secs.0),
            secs(self.nats_ready_secs.1),
        ));
        out.push_str(&format!(
            "the stops before them took {:.1} s and {:.1} s\n",
            self.stop_secs.0, self.stop_secs.1
        ));
        if let Some(r) = &self.retention {
            out.push_str(&format!(
                "purge of {} executions took {:.1} s; webhook-noop {:.0}/s before, {:.0}/s during: {:.0} % slower\n",
                r.deleted,
                r.purge_secs,
                r.baseline_per_s,
                r.during_per_s,
                (1.0 - r.during_per_s / r.baseline_per_s.max(f64::MIN_POSITIVE)) * 100.0
            ));
        }
        out
    }
}

/// The node's resident memory, in kB.
fn rss_kb(pid: u32) -> Result<u64, LoadError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| LoadError::io("reading the node's memory", e))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| LoadError::Setup("no VmRSS for the node".into()))
}

/// A small deterministic generator, so runs are comparable.
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

/// The `i`th seeded record: 80 % succeeded, 50 actions, 10 users, a
/// third from 20 rules, one in ten a task of a workflow; over 30 days.
fn record(i: usize, rng: &mut Lcg, start: chrono::DateTime<chrono::Utc>) -> (String, Value) {
    let statuses = ["succeeded", "succeeded", "succeeded", "succeeded", "failed"];
    let secs = start.timestamp().clamp(0, u32::MAX as i64) as u32;
    let id = format!("{secs:08x}{i:016x}");
    let ts = start.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let end = (start + chrono::Duration::milliseconds(300))
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let action = format!("pack{}.action{}", rng.next(5), rng.next(10));
    let user = if rng.next(5) == 0 {
        format!("user{}", rng.next(10))
    } else {
        "stanley".into()
    };
    let mut r = json!({
        "v": 1,
        "id": id,
        "action": {"ref": action, "name": "action", "pack": "pack", "runner_type": "local-shell-cmd"},
        "runner": {"name": "local-shell-cmd"},
        "status": statuses[rng.next(statuses.len())],
        "parameters": {"cmd": "echo 'hello from a seeded execution'"},
        "result": {"stdout": "hello from a seeded execution", "stderr": "", "return_code": 0, "succeeded": true, "failed": false},
        "context": {"user": user, "pack": "pack"},
        "start_timestamp": ts,
        "end_timestamp": end,
        "log": [{"timestamp": ts, "status": "requested"}, {"timestamp": ts, "status": "scheduled"},
                {"timestamp": ts, "status": "running"}, {"timestamp": end, "status": "succeeded"}],
        "pool": "default",
        "node": "seed",
    });
    if rng.next(3) == 0 {
        let rule = rng.next(20);
        r["rule"] = json!({"id": format!("rule{rule:020}"), "ref": format!("pack.rule{rule}"),
            "name": format!("rule{rule}"), "pack": "pack", "uid": format!("rule:pack:rule{rule}")});
        r["trigger_instance"] = json!({"id": format!("ti{i:022}"), "trigger": "core.st2.webhook",
            "trigger_type": "core.st2.webhook", "occurrence_time": ts});
    }
    if !i.is_multiple_of(10) && rng.next(10) == 0 {
        r["parent"] = json!(format!("{secs:08x}{:016x}", i - i % 10));
    }
    (id, r)
}

/// Writes `count` records into the bucket, many at once.
async fn seed(nats_url: &str, count: usize) -> Result<(), LoadError> {
    let client = async_nats::connect(nats_url)
        .await
        .map_err(|e| LoadError::nats("connect", e))?;
    let js = async_nats::jetstream::new(client);
    let kv = js
        .get_key_value("executions")
        .await
        .map_err(|e| LoadError::nats("open the executions bucket", e))?;
    let mut rng = Lcg(42);
    let first = chrono::Utc::now() - chrono::Duration::days(30);
    let step = chrono::Duration::days(30).num_milliseconds() / count.max(1) as i64;
    let records: Vec<(String, Value)> = (0..count)
        .map(|i| {
            record(
                i,
                &mut rng,
                first + chrono::Duration::milliseconds(step * i as i64),
            )
        })
        .collect();
    let puts = futures::stream::iter(records.into_iter().map(|(id, r)| {
        let kv = kv.clone();
        async move { kv.put(id, r.to_string().into()).await }
    }))
    .buffer_unordered(256)
    .collect::<Vec<_>>()
    .await;
    for p in puts {
        p.map_err(|e| LoadError::nats("seed an execution", e))?;
    }
    Ok(())
}

/// Polls until lists answer with `count` stored; seconds it took.
async fn until_listed(target: &Target, count: usize) -> Result<f64, LoadError> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(600);
    loop {
        if target.count("executions?limit=1").await.ok() == Some(count) {
            return Ok(start.elapsed().as_secs_f64());
        }
        if Instant::now() > deadline {
            return Err(LoadError::Timeout(format!(
                "the node never listed {count} executions"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `clients` clients repeat `query` for `duration`.
async fn measure(target: &Target, query: &str, clients: usize, duration: Duration) -> ListFigures {
    let url = target.api(&format!("executions?{query}"));
    let start = Instant::now();
    let end = start + duration;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (http, url) = (target.http.clone(), url.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0;
                while Instant::now() < end {
                    let sent = Instant::now();
                    let ok = match http.get(&url).send().await {
                        Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                        _ => false,
                    };
                    if ok {
                        lat.push(sent.elapsed().as_secs_f64() * 1000.0);
                    } else {
                        errors += 1;
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            all.extend(l);
            errors += e;
        }
    }
    ListFigures {
        query: query.to_string(),
        per_s: all.len() as f64 / start.elapsed().as_secs_f64(),
        latency_ms: Percentiles::of(&all),
        errors,
    }
}

/// Seeds, measures, restarts: the whole benchmark on `node`.
pub async fn run(node: &mut ManagedNode, load: &HistoryLoad) -> Result<HistoryRun, LoadError> {
    let pid = node
        .target
        .pid
        .ok_or_else(|| LoadError::Setup("no node pid".into()))?;
    let nats_url = node
        .target
        .nats_url
        .clone()
        .ok_or_else(|| LoadError::Setup("no NATS URL".into()))?;
    let rss_before_kb = rss_kb(pid)?;
    let seeding = Instant::now();
    seed(&nats_url, load.count).await?;
    until_listed(&node.target, load.count).await?;
    let seed_secs = seeding.elapsed().as_secs_f64();
    // Let the allocator settle, then read the memory the index holds.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after_kb = rss_kb(pid)?;
    let duration = Duration::from_secs(load.duration_s);
    let mut lists = Vec::new();
    for query in [
        "limit=50".to_string(),
        "limit=50&status=succeeded&user=stanley".to_string(),
        format!("limit=50&offset={}", load.count / 2),
    ] {
        lists.push(measure(&node.target, &query, load.clients, duration).await);
    }
    // Timed from the new process's start: the stop (which saves the
    // snapshot) is not part of it.
    let stopping = Instant::now();
    let mut started = Instant::now();
    let mut wall = chrono::Local::now();
    node.restart(|_| {
        started = Instant::now();
        wall = chrono::Local::now();
        Ok(())
    })
    .await?;
    let stop_snapshot = (started - stopping).as_secs_f64();
    let up_snapshot = started.elapsed().as_secs_f64();
    until_listed(&node.target, load.count).await?;
    let restart_snapshot_secs = started.elapsed().as_secs_f64();
    let nats_snapshot = nats_ready_secs(node.data_dir(), wall);
    let stopping = Instant::now();
    let mut started = Instant::now();
    node.restart(|dir| {
        let removed = remove_snapshot(dir);
        started = Instant::now();
        wall = chrono::Local::now();
        removed
    })
    .await?;
    let stop_replay = (started - stopping).as_secs_f64();
    let up_replay = started.elapsed().as_secs_f64();
    until_listed(&node.target, load.count).await?;
    let restart_replay_secs = started.elapsed().as_secs_f64();
    let nats_replay = nats_ready_secs(node.data_dir(), wall);
    let retention = if load.retention > 0 {
        Some(retention(&node.target, load).await?)
    } else {
        None
    };
    Ok(HistoryRun {
        count: load.count,
        seed_secs,
        rss_before_kb,
        rss_after_kb,
        lists,
        restart_up_secs: (up_snapshot, up_replay),
        restart_snapshot_secs,
        restart_replay_secs,
        nats_ready_secs: (nats_snapshot, nats_replay),
        stop_secs: (stop_snapshot, stop_replay),
        retention,
    })
}

/// Seconds from `since` to the first "Server is ready" the managed
/// nats-server logged after it, in `dir/nats-server.log`.
fn nats_ready_secs(dir: &Path, since: chrono::DateTime<chrono::Local>) -> Option<f64> {
    use chrono::TimeZone;
    let log = std::fs::read_to_string(dir.join("nats-server.log")).ok()?;
    log.lines()
        .filter(|l| l.contains("Server is ready"))
        .filter_map(|l| {
            // `[pid] 2026/12/06 03:30:00.123456 [INF] Server is ready`
            let stamp: String = l
                .split_whitespace()
                .skip(1)
                .take(2)
                .collect::<Vec<_>>()
                .join(" ");
            let naive =
                chrono::NaiveDateTime::parse_from_str(&stamp, "%Y/%m/%d %H:%M:%S%.f").ok()?;
            chrono::Local.from_local_datetime(&naive).single()
        })
        .find(|t| *t >= since - chrono::Duration::milliseconds(1))
        .map(|t| (t - since).num_microseconds().unwrap_or(0) as f64 / 1e6)
}

/// Webhooks per closed-loop round of the retention measurement.
const ROUND: usize = 3000;

/// `ROUND` webhook-noop webhooks, 32 in flight; executions per second
/// from the first send until all of them have finished.
async fn webhook_noop_round(target: &Target) -> Result<f64, LoadError> {
    let done = "executions?limit=1&action=core.noop&status=succeeded";
    let before = target.count(done).await?;
    let start = Instant::now();
    let url = target.api("webhooks/loadtest/noop");
    let sent = futures::stream::iter(0..ROUND)
        .map(|n| {
            let (http, url) = (target.http.clone(), url.clone());
            async move {
                http.post(&url)
                    .json(&json!({ "n": n }))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .buffer_unordered(32)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await;
    let deadline = start + Duration::from_secs(300);
    while target.count(done).await? < before + sent {
        if Instant::now() > deadline {
            return Err(LoadError::Timeout(format!(
                "{sent} webhook-noop executions did not finish within 300 s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(sent as f64 / start.elapsed().as_secs_f64())
}

/// Webhook-noop throughput before and while a purge removes the oldest
/// `load.retention` seeded executions.
async fn retention(target: &Target, load: &HistoryLoad) -> Result<RetentionFigures, LoadError> {
    // Warm up, then the baseline.
    webhook_noop_round(target).await?;
    let mut baseline = Vec::new();
    for _ in 0..2 {
        baseline.push(webhook_noop_round(target).await?);
    }
    let baseline_per_s = baseline.iter().sum::<f64>() / baseline.len() as f64;
    // The seeds are evenly spread from 30 days ago: the cut after the
    // first `retention` of them.
    let first = chrono::Utc::now() - chrono::Duration::days(30);
    let step = chrono::Duration::days(30).num_milliseconds() / load.count.max(1) as i64;
    let cut = first + chrono::Duration::milliseconds(step * load.retention as i64 - 1);
    let body = json!({ "before": cut.to_rfc3339_opts(chrono::SecondsFormat::Micros, true) });
    let purge_started = Instant::now();
    let (http, url) = (target.http.clone(), target.api("executions/purge"));
    let purge = tokio::spawn(async move {
        let r = http
            .post(&url)
            .json(&body)
            .send()
            .await?
            .error_for_status()?;
        let v: Value = r.json().await?;
        Ok::<_, reqwest::Error>((v["deleted"].as_u64().unwrap_or(0), Instant::now()))
    });
    let mut during = Vec::new();
    while !purge.is_finished() {
        during.push(webhook_noop_round(target).await?);
    }
    let (deleted, purge_ended) = purge
        .await
        .map_err(|e| LoadError::Setup(format!("the purge task failed: {e}")))??;
    let during_per_s = if during.is_empty() {
        0.0
    } else {
        during.iter().sum::<f64>() / during.len() as f64
    };
    Ok(RetentionFigures {
        deleted,
        purge_secs: (purge_ended - purge_started).as_secs_f64(),
        baseline_per_s,
        during_per_s,
    })
}

/// Removes the history snapshot of the node whose data is in `dir`.
fn remove_snapshot(dir: &Path) -> Result<(), LoadError> {
    let file = dir.join("history/executions.snapshot");
    std::fs::remove_file(&file)
        .map_err(|e| LoadError::io(format!("removing {}", file.display()), e))
}

//! Python action start-up, cold interpreter against warm fork server:
//! runs a trivial `python-script` action through the runner (no NATS, no
//! API), first one at a time (latency p50/p99), then `CONCURRENCY` at once
//! (actions per second), and times building a virtualenv with one
//! requirement.
//!
//! `cargo run --release -p squall-runners --example python_bench [runs]`

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map};
use squall_domain::execution::Status;
use squall_runners::venv::{VenvSettings, Virtualenvs};
use squall_runners::{ActionEnv, PythonScript, RunRequest, Runner};
use tokio_util::sync::CancellationToken;

const CONCURRENCY: usize = 8;

const ACTION: &str = "from st2common.runners.base_action import Action\n\nclass Trivial(Action):\n    def run(self, n):\n        return (True, {'n': n})\n";

fn request(pack_dir: &Path, n: usize) -> RunRequest {
    RunRequest {
        execution_id: format!("bench-{n}"),
        action: serde_json::from_value(json!({
            "name": "trivial", "pack": "bench", "runner_type": "python-script",
            "entry_point": "trivial.py", "parameters": {"n": {"type": "integer"}}
        }))
        .expect("action"),
        pack_path: pack_dir.to_path_buf(),
        parameters: Map::from_iter([("n".to_string(), json!(n))]),
        config: Map::new(),
        env: ActionEnv::default(),
        output: None,
        cancel: CancellationToken::new(),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn measure(name: &str, runner: Arc<PythonScript>, pack_dir: &Path, runs: usize) {
    // Warm-up: the virtualenv check, the server's start.
    let out = runner.run(request(pack_dir, 0)).await;
    assert_eq!(out.status, Status::Succeeded, "{}", out.result);
    let mut latencies = Vec::with_capacity(runs);
    for n in 0..runs {
        let started = Instant::now();
        let out = runner.run(request(pack_dir, n)).await;
        latencies.push(started.elapsed());
        assert_eq!(out.status, Status::Succeeded, "{}", out.result);
    }
    latencies.sort();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..CONCURRENCY {
        let runner = runner.clone();
        let pack_dir = pack_dir.to_path_buf();
        tasks.push(tokio::spawn(async move {
            for n in (worker..runs).step_by(CONCURRENCY) {
                let out = runner.run(request(&pack_dir, n)).await;
                assert_eq!(out.status, Status::Succeeded, "{}", out.result);
            }
        }));
    }
    for t in tasks {
        t.await.expect("worker");
    }
    let rate = runs as f64 / started.elapsed().as_secs_f64();
    println!(
        "{name:>5}: p50 {:>7.1} ms  p99 {:>7.1} ms  (one at a time, {runs} runs)  {rate:>6.1} actions/s ({CONCURRENCY} at once)",
        percentile(&latencies, 0.50).as_secs_f64() * 1000.0,
        percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
    );
}

#[tokio::main]
async fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let work = tempfile::tempdir().expect("temp dir");
    let pack_dir = work.path().join("bench");
    std::fs::create_dir_all(pack_dir.join("actions")).expect("pack");
    std::fs::write(pack_dir.join("actions/trivial.py"), ACTION).expect("action");
    let data = work.path().join("data");

    let started = Instant::now();
    let venvs = Virtualenvs::new(&data, VenvSettings::default());
    std::fs::write(pack_dir.join("requirements.txt"), "tabulate==0.9.0\n").expect("reqs");
    venvs.ensure("bench", &pack_dir, true).await.expect("venv");
    println!(
        "virtualenv with one requirement (tabulate==0.9.0, pip cache warm): {:.1} s",
        started.elapsed().as_secs_f64()
    );

    for (name, fork_server) in [("cold", false), ("warm", true)] {
        let settings = VenvSettings {
            fork_server,
            ..VenvSettings::default()
        };
        let runner = Arc::new(PythonScript::new(
            data.clone(),
            Virtualenvs::new(&data, settings),
        ));
        measure(name, runner, &pack_dir, runs).await;
    }
}

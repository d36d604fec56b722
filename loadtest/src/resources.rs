//! What a run costs the machine: CPU and resident memory of the node and
//! its children (the managed nats-server), sampled from `/proc` twice a
//! second, and the JetStream streams' sizes after the run.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::LoadError;

/// How often processes are sampled.
const EVERY: Duration = Duration::from_millis(500);

/// One sample: node and nats-server side by side.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since sampling began.
    pub t: f64,
    pub node_rss_mb: f64,
    /// Percent of one core since the previous sample.
    pub node_cpu_pct: f64,
    pub nats_rss_mb: f64,
    pub nats_cpu_pct: f64,
}

/// Samples a process tree until stopped.
#[derive(Debug)]
pub struct Sampler {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Vec<Sample>>,
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// `(utime + stime)` clock ticks and RSS in KiB of `pid`.
fn usage(pid: u32) -> Option<(u64, u64)> {
    let stat = read(&format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which may hold spaces: state is 3rd.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let rss_kb = read(&format!("/proc/{pid}/status"))?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    Some((ticks, rss_kb))
}

/// Direct children of `pid`.
fn children(pid: u32) -> Vec<u32> {
    read(&format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .collect()
}

fn ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64)
}

impl Sampler {
    /// Starts sampling `pid` (the node) and its children (nats-server).
    pub fn start(pid: u32) -> Sampler {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let hz = ticks_per_second();
            let start = Instant::now();
            let mut samples = Vec::new();
            let mut prev: Option<(f64, u64, u64)> = None;
            let mut every = tokio::time::interval(EVERY);
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = every.tick() => {}
                }
                let Some((node_ticks, node_rss)) = usage(pid) else {
                    break;
                };
                let (nats_ticks, nats_rss) = children(pid)
                    .into_iter()
                    .filter_map(usage)
                    .fold((0, 0), |(t, r), (ct, cr)| (t + ct, r + cr));
                let t = start.elapsed().as_secs_f64();
                if let Some((pt, pn, pc)) = prev {
                    let dt = (t - pt).max(1e-3);
                    let pct =
                        |now: u64, before: u64| now.saturating_sub(before) as f64 / hz / dt * 100.0;
                    samples.push(Sample {
                        t,
                        node_rss_mb: node_rss as f64 / 1024.0,
                        node_cpu_pct: pct(node_ticks, pn),
                        nats_rss_mb: nats_rss as f64 / 1024.0,
                        nats_cpu_pct: pct(nats_ticks, pc),
                    });
                }
                prev = Some((t, node_ticks, nats_ticks));
            }
            samples
        });
        Sampler { stop, task }
    }

    /// Stops and returns the samples.
    pub async fn finish(self) -> Vec<Sample> {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

/// One JetStream stream's size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamSize {
    pub name: String,
    pub messages: u64,
    pub bytes: u64,
}

/// Every stream on the server (KV buckets are streams `KV_<bucket>`).
pub async fn stream_sizes(nats_url: &str) -> Result<Vec<StreamSize>, LoadError> {
    let client = async_nats::connect(nats_url)
        .await
        .map_err(|e| LoadError::nats("connect", e))?;
    let js = async_nats::jetstream::new(client);
    let mut out = Vec::new();
    let mut streams = js.streams();
    while let Some(info) = streams.next().await {
        let info = info.map_err(|e| LoadError::nats("list streams", e))?;
        out.push(StreamSize {
            name: info.config.name.clone(),
            messages: info.state.messages,
            bytes: info.state.bytes,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let (ticks, rss) = usage(std::process::id()).expect("own /proc entry");
        assert!(rss > 0);
        assert!(ticks < u64::MAX);
    }
}

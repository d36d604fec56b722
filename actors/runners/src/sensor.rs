//! One StackStorm sensor as an OS process: our `sensor_wrapper.py` (see
//! [`crate::pylib`]) running the sensor's class in the pack's virtualenv
//! interpreter (`<data dir>/virtualenvs/<pack>/bin/python` when it exists,
//! else `python3`), in its own process group, killed with the node (the
//! wrapper sets `PR_SET_PDEATHSIG` first thing).
//!
//! The pipes it inherits carry JSON lines: stdout its events
//! ([`SensorEvent`]: ready, dispatch, error), stdin its pack's config (the
//! first line) and then the node's commands (trigger changes, a renewed
//! token), stderr its log. Knows processes,
//! not NATS: the engine publishes what a sensor dispatches.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::pylib;

/// How long a sensor has to stop after SIGTERM before it is killed
/// (StackStorm's `PROCESS_EXIT_TIMEOUT`).
/// Local to the runner crate, which sits below the engine and does not
/// see `squall_actors::timing`; the sensor host reads it from here.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Events (and log lines) a sensor may have queued before the node reads
/// them; beyond that the sensor's writes block.
const EVENT_BUFFER: usize = 1024;

/// The variable that tells the wrapper the node's process id.
const NODE_PID_ENV: &str = "SQUALL_NODE_PID";

/// Why a sensor process could not start.
#[derive(Debug, thiserror::Error)]
pub enum SensorError {
    #[error("cannot install the Python support files under {dir}: {source}")]
    Pylib {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
}

/// What to run.
#[derive(Debug, Clone)]
pub struct SensorSpec {
    /// The node's data directory (pack virtualenvs, Python support files).
    pub data_dir: PathBuf,
    pub pack: String,
    /// The sensor's `.py` file.
    pub file: PathBuf,
    pub class_name: String,
    pub trigger_types: Vec<String>,
    pub poll_interval: Option<u64>,
    /// The pack's config (`self.config`), sent as the first line on stdin
    /// (never on the command line, where `ps` shows it).
    pub config: serde_json::Map<String, Value>,
    /// Added to the node's environment (`ST2_API_URL`, `ST2_AUTH_TOKEN`).
    pub env: BTreeMap<String, String>,
}

/// What a sensor process reports.
#[derive(Debug, Clone, PartialEq)]
pub enum SensorEvent {
    /// `setup()` returned; the sensor runs.
    Ready,
    /// `sensor_service.dispatch(trigger, payload, trace_tag)`.
    Dispatch {
        trigger: String,
        payload: Value,
        trace_tag: Option<String>,
    },
    /// Why the sensor is about to exit with an error.
    Error(String),
    /// A line of its log (stderr), or a line on its event pipe that is not
    /// an event.
    Log(String),
}

/// The interpreter a pack's Python code runs in: its virtualenv's when
/// there is one, else the system `python3`.
pub fn interpreter(data_dir: &Path, pack: &str) -> PathBuf {
    let venv = data_dir
        .join("virtualenvs")
        .join(pack)
        .join("bin")
        .join("python");
    if venv.is_file() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// A running sensor process.
#[derive(Debug)]
pub struct SensorProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    pid: u32,
}

impl SensorProcess {
    /// Starts the sensor; its events arrive on the returned channel, which
    /// closes once the process has closed its output.
    pub async fn spawn(
        spec: &SensorSpec,
    ) -> Result<(SensorProcess, mpsc::Receiver<SensorEvent>), SensorError> {
        let dir = pylib::install(&spec.data_dir).map_err(|source| SensorError::Pylib {
            dir: spec.data_dir.clone(),
            source,
        })?;
        let python = interpreter(&spec.data_dir, &spec.pack);
        let mut args = vec![
            "-u".to_string(),
            dir.join(pylib::SENSOR_WRAPPER).display().to_string(),
            format!("--pack={}", spec.pack),
            format!("--file-path={}", spec.file.display()),
            format!("--class-name={}", spec.class_name),
            format!("--trigger-type-refs={}", spec.trigger_types.join(",")),
        ];
        if let Some(n) = spec.poll_interval {
            args.push(format!("--poll-interval={n}"));
        }
        let pythonpath = match std::env::var("PYTHONPATH") {
            Ok(p) if !p.is_empty() => format!("{}:{p}", dir.display()),
            _ => dir.display().to_string(),
        };
        let mut cmd = Command::new(&python);
        cmd.args(&args)
            .envs(&spec.env)
            .env("PYTHONPATH", pythonpath)
            .env("PYTHONUNBUFFERED", "1")
            // The wrapper asks to die with this process (PR_SET_PDEATHSIG)
            // and exits at once if it is already gone.
            .env(NODE_PID_ENV, std::process::id().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(parent) = spec.file.parent() {
            cmd.current_dir(parent);
        }
        let mut child = cmd.spawn().map_err(|source| SensorError::Spawn {
            program: python.clone(),
            source,
        })?;
        let pid = child.id().unwrap_or_default();
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        if let Some(out) = child.stdout.take() {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(out).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if tx.send(parse_event(&line)).await.is_err() {
                        break;
                    }
                }
            });
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(async move {
                let mut lines = BufReader::new(err).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if tx.send(SensorEvent::Log(line)).await.is_err() {
                        break;
                    }
                }
            });
        }
        let stdin = child.stdin.take();
        let mut process = SensorProcess { child, stdin, pid };
        // A process that died at once shows in its exit, not here.
        process
            .send(&serde_json::json!({"config": spec.config}))
            .await;
        Ok((process, rx))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends one command line; false when the sensor no longer reads.
    pub async fn send(&mut self, command: &Value) -> bool {
        let Some(stdin) = self.stdin.as_mut() else {
            return false;
        };
        let line = format!("{command}\n");
        let ok = stdin.write_all(line.as_bytes()).await.is_ok() && stdin.flush().await.is_ok();
        if !ok {
            self.stdin = None;
        }
        ok
    }

    /// Asks the sensor to stop (SIGTERM to its process group): its
    /// `cleanup()` runs and it exits.
    pub fn terminate(&self) {
        self.signal(Signal::SIGTERM);
    }

    /// Kills the sensor's process group.
    pub fn kill(&self) {
        self.signal(Signal::SIGKILL);
    }

    fn signal(&self, signal: Signal) {
        if let Ok(pgid) = i32::try_from(self.pid) {
            // The group may be gone already, which is what we want.
            let _ = killpg(Pid::from_raw(pgid), signal);
        }
    }

    /// Waits for the process to end.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }
}

/// Reads one line of the event pipe.
fn parse_event(line: &str) -> SensorEvent {
    let Ok(Value::Object(mut v)) = serde_json::from_str::<Value>(line) else {
        return SensorEvent::Log(line.to_string());
    };
    let text = |v: &mut serde_json::Map<String, Value>, k: &str| match v.remove(k) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    match text(&mut v, "event").as_deref() {
        Some("ready") => SensorEvent::Ready,
        Some("error") => SensorEvent::Error(text(&mut v, "message").unwrap_or_default()),
        Some("dispatch") => SensorEvent::Dispatch {
            trigger: text(&mut v, "trigger").unwrap_or_default(),
            payload: v.remove("payload").unwrap_or(Value::Null),
            trace_tag: text(&mut v, "trace_tag"),
        },
        _ => SensorEvent::Log(line.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn event_lines_are_read() {
        assert_eq!(parse_event(r#"{"event": "ready"}"#), SensorEvent::Ready);
        assert_eq!(
            parse_event(r#"{"event": "dispatch", "trigger": "p.t", "payload": {"a": 1}}"#),
            SensorEvent::Dispatch {
                trigger: "p.t".into(),
                payload: json!({"a": 1}),
                trace_tag: None
            }
        );
        assert_eq!(
            parse_event("hello"),
            SensorEvent::Log("hello".into()),
            "a stray line is kept as log"
        );
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    async fn events_until_closed(mut rx: mpsc::Receiver<SensorEvent>) -> Vec<SensorEvent> {
        let mut out = Vec::new();
        while let Some(e) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("the sensor ends")
        {
            out.push(e);
        }
        out
    }

    #[tokio::test]
    async fn a_polling_sensor_dispatches_and_stops_on_sigterm() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = write(
            dir.path(),
            "poll.py",
            "from st2reactor.sensor.base import PollingSensor\n\
             class Poll(PollingSensor):\n    \
                 def setup(self): self.n = 0\n    \
                 def poll(self):\n        \
                     self.n += 1\n        \
                     print('printed, not an event')\n        \
                     self.sensor_service.dispatch('p.t', {'n': self.n, 'greeting': self.config['greeting']}, trace_tag='t%d' % self.n)\n    \
                 def cleanup(self): self.sensor_service.get_logger('x').info('cleaned up')\n    \
                 def add_trigger(self, t): self.sensor_service.dispatch('p.added', t)\n    \
                 def update_trigger(self, t): pass\n    \
                 def remove_trigger(self, t): pass\n",
        );
        let spec = SensorSpec {
            data_dir: dir.path().join("data"),
            pack: "p".into(),
            file,
            class_name: "Poll".into(),
            trigger_types: vec!["p.t".into()],
            poll_interval: Some(60),
            config: serde_json::from_value(json!({"greeting": "hi"})).expect("a map"),
            env: BTreeMap::new(),
        };
        let (mut process, mut rx) = SensorProcess::spawn(&spec).await.expect("spawned");
        let mut seen = Vec::new();
        while !seen
            .iter()
            .any(|e| matches!(e, SensorEvent::Dispatch { .. }))
        {
            seen.push(rx.recv().await.expect("an event"));
        }
        assert!(seen.contains(&SensorEvent::Ready), "{seen:?}");
        assert!(seen.contains(&SensorEvent::Dispatch {
            trigger: "p.t".into(),
            payload: json!({"n": 1, "greeting": "hi"}),
            trace_tag: Some("t1".into())
        }));
        assert!(
            process
                .send(&json!({"op": "add_trigger", "trigger": {"ref": "p.t.1"}}))
                .await
        );
        let added = SensorEvent::Dispatch {
            trigger: "p.added".into(),
            payload: json!({"ref": "p.t.1"}),
            trace_tag: None,
        };
        while !seen.contains(&added) {
            seen.push(rx.recv().await.expect("an event"));
        }
        process.terminate();
        let rest = events_until_closed(rx).await;
        seen.extend(rest.iter().cloned());
        assert!(rest
            .iter()
            .any(|e| matches!(e, SensorEvent::Log(l) if l.contains("cleaned up"))));
        assert!(seen
            .iter()
            .any(|e| matches!(e, SensorEvent::Log(l) if l.contains("printed, not an event"))));
        assert!(process.wait().await.expect("exit").success());
    }

    #[tokio::test]
    async fn a_missing_class_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = write(dir.path(), "s.py", "class Other: pass\n");
        let spec = SensorSpec {
            data_dir: dir.path().join("data"),
            pack: "p".into(),
            file,
            class_name: "Missing".into(),
            trigger_types: vec![],
            poll_interval: None,
            config: serde_json::Map::new(),
            env: BTreeMap::new(),
        };
        let (mut process, rx) = SensorProcess::spawn(&spec).await.expect("spawned");
        let events = events_until_closed(rx).await;
        assert!(
            events.iter().any(|e| matches!(e, SensorEvent::Error(m)
                if m.contains("Sensor class \"Missing\" not found") && m.contains("classes there: Other"))),
            "{events:?}"
        );
        assert_eq!(process.wait().await.expect("exit").code(), Some(1));
    }
}

//! Python sensors: the pack sensors (`sensors/*.yaml`) of one sensors
//! partition, each run as a process of its own
//! ([`squall_runners::sensor`]) and supervised by one task here.
//!
//! A sensor belongs to the partition of its reference, so it runs on the
//! one node holding that partition's lease and moves with the lease. Its
//! task:
//! - starts the process with its pack's config (resolved as for the
//!   system user) and an API token of its own (user
//!   [`SENSOR_USER`], renewed every [`TOKEN_RENEW_EVERY`], revoked when the
//!   process ends) for `sensor_service`'s datastore calls;
//! - tells it `add_trigger` / `update_trigger` / `remove_trigger` as
//!   enabled rules create, change and drop triggers of its types;
//! - turns each `dispatch` into a trigger instance on the `TRIGGERS`
//!   stream, after checking the payload against the trigger type's
//!   `payload_schema` (a rejected payload is logged with the reason and
//!   counted, never published);
//! - restarts a crashed sensor with exponential back-off, for ever (capped
//!   at [`MAX_BACKOFF`]); a sensor whose `run()` returns (exit 0) is not
//!   restarted, as in StackStorm;
//! - records the sensor's state (running, restarting, failed with the last
//!   error and stderr lines, pid, node, restarts) in the `sensors` bucket,
//!   which `GET /sensortypes` shows;
//! - stops it with SIGTERM, then SIGKILL after
//!   [`squall_runners::sensor::STOP_GRACE`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use squall_domain::execution::{TriggerInstance, RECORD_VERSION};
use squall_domain::model::SensorDef;
use squall_domain::template::Renderer;
use squall_domain::time::{self, Timestamp};
use squall_domain::{ids, schema};
use squall_runners::sensor::{SensorEvent, SensorProcess, SensorSpec, STOP_GRACE};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::AuthStore;
use crate::bus::{from_bytes, to_bytes, Bus};
use crate::catalog::{content_id, Catalog, CatalogHandle, Trigger};
use crate::configs::{self, ConfigCache};
use crate::keys::KeyCache;
use crate::lease::LeaseValidity;
use crate::metrics::{self, Dispatch};
use crate::timing::{
    COUNTS_EVERY, DEFAULT_TOKEN_TTL, FIRST_BACKOFF, HEALTHY_AFTER, MAX_BACKOFF, TOKEN_RENEW_EVERY,
};

/// The user a sensor's API token belongs to (StackStorm's sensor service
/// user).
pub const SENSOR_USER: &str = "sensor_service";
/// Failed starts in a row (never reaching `setup()`'s end) after which a
/// sensor shows `failed` (it is still retried every [`MAX_BACKOFF`]).
pub const FAILED_AFTER: u32 = 3;
/// Lines of a sensor's stderr kept for its state.
const STDERR_TAIL: usize = 20;

/// A sensor's state as the `sensors` bucket holds it (wire format),
/// written at each change of state, each rejected dispatch, and at most
/// every few seconds as the sensor dispatches.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SensorStatus {
    #[serde(default)]
    pub v: u32,
    /// `starting`, `running`, `restarting`, `failed`, `stopped` or
    /// `exited` (its `run()` returned).
    pub state: String,
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Restarts since the sensor's task started on this node.
    #[serde(default)]
    pub restarts: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The last lines of its stderr when it last ended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_stderr: Vec<String>,
    /// When the next start is due (`restarting`, `failed`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde_opt_ts"
    )]
    pub next_start_at: Option<Timestamp>,
    /// Trigger instances published for it, and payloads rejected, by
    /// this node.
    #[serde(default)]
    pub dispatched: u64,
    #[serde(default)]
    pub rejected: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rejection: Option<String>,
    #[serde(with = "time::serde_ts")]
    pub updated_at: Timestamp,
}

/// The key of a sensor's state in the `sensors` bucket.
pub fn status_key(sensor_ref: &str) -> String {
    sensor_ref
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Reads a sensor's state.
pub async fn read_status(
    bucket: &kv::Store,
    sensor_ref: &str,
) -> Result<Option<SensorStatus>, crate::EngineError> {
    let key = status_key(sensor_ref);
    match bucket.get(&key).await {
        Ok(Some(b)) => Ok(Some(from_bytes(&key, &b)?)),
        Ok(None) => Ok(None),
        Err(e) => Err(crate::error::bus_err("read sensor state", e)),
    }
}

/// What every sensor task of a node shares.
#[derive(Debug, Clone)]
pub struct HostContext {
    pub bus: Bus,
    pub catalog: CatalogHandle,
    pub auth: AuthStore,
    pub node: String,
    pub data_dir: PathBuf,
    /// The v1 API root (`ST2_API_URL`).
    pub api_url: String,
    pub lease: LeaseValidity,
    /// Pack configs (a sensor's `self.config`), rendered with the
    /// datastore.
    pub configs: ConfigCache,
    pub renderer: Arc<Renderer>,
    pub kv: KeyCache,
    /// Owns the sensor tasks: a stopping sensor outlives its partition's
    /// actor by its SIGTERM grace, and node shutdown waits for it.
    pub tasks: TaskTracker,
}

/// A sensor to run: its definition and its pack's directory.
#[derive(Debug, Clone, PartialEq)]
struct Wanted {
    def: SensorDef,
    pack_path: PathBuf,
}

/// The sensors of one partition: a task per enabled sensor.
#[derive(Debug)]
pub struct SensorHost {
    ctx: HostContext,
    bucket: kv::Store,
    partition: u32,
    running: HashMap<String, (Wanted, CancellationToken)>,
}

impl Drop for SensorHost {
    fn drop(&mut self) {
        for (_, (_, stop)) in self.running.drain() {
            stop.cancel();
        }
    }
}

impl SensorHost {
    pub fn new(ctx: HostContext, bucket: kv::Store, partition: u32) -> SensorHost {
        SensorHost {
            ctx,
            bucket,
            partition,
            running: HashMap::new(),
        }
    }

    /// Starts the partition's enabled sensors not running yet, and stops
    /// those gone, disabled or changed (a changed one starts again).
    pub fn reconcile(&mut self, catalog: &Catalog) {
        let wanted: HashMap<String, Wanted> = catalog
            .packs
            .values()
            .flat_map(|b| {
                b.sensors.iter().map(|s| Wanted {
                    def: s.clone(),
                    pack_path: PathBuf::from(&b.path),
                })
            })
            .filter(|w| w.def.enabled)
            .filter(|w| self.ctx.bus.partition_of(&w.def.reference()) == self.partition)
            .map(|w| (w.def.reference(), w))
            .collect();
        self.running.retain(|reference, (running, stop)| {
            let keep = wanted.get(reference) == Some(running);
            if !keep {
                stop.cancel();
            }
            keep
        });
        for (reference, w) in wanted {
            if self.running.contains_key(&reference) {
                continue;
            }
            let stop = CancellationToken::new();
            let task = SensorTask {
                ctx: self.ctx.clone(),
                bucket: self.bucket.clone(),
                reference: reference.clone(),
                wanted: w.clone(),
                status: SensorStatus {
                    v: 1,
                    node: self.ctx.node.clone(),
                    ..SensorStatus::default()
                },
                stderr: VecDeque::new(),
                stored_at: Instant::now(),
            };
            self.ctx.tasks.spawn(task.supervise(stop.clone()));
            self.running.insert(reference, (w, stop));
        }
    }
}

/// One sensor's supervisor.
struct SensorTask {
    ctx: HostContext,
    bucket: kv::Store,
    reference: String,
    wanted: Wanted,
    status: SensorStatus,
    stderr: VecDeque<String>,
    /// When the state was last written.
    stored_at: Instant,
}

/// How one run of the process ended.
enum Ended {
    /// Stopped by us.
    Stopped,
    /// `run()` returned.
    Exited,
    /// Crashed; whether it had finished `setup()`, and for how long it ran.
    Crashed {
        error: String,
        was_ready: bool,
        ran: Duration,
    },
}

impl SensorTask {
    /// Runs the sensor until `stop`, restarting it when it crashes.
    async fn supervise(mut self, stop: CancellationToken) {
        let mut failures: u32 = 0;
        loop {
            let ended = self.run_once(&stop).await;
            let (error, was_ready, ran) = match ended {
                Ended::Stopped => {
                    self.set_state("stopped", None, None).await;
                    return;
                }
                Ended::Exited => {
                    tracing::info!(sensor = %self.reference, "sensor's run() returned; not restarted");
                    self.set_state("exited", None, None).await;
                    return;
                }
                Ended::Crashed {
                    error,
                    was_ready,
                    ran,
                } => (error, was_ready, ran),
            };
            failures = if was_ready && ran >= HEALTHY_AFTER {
                1
            } else {
                failures.saturating_add(1)
            };
            let delay = backoff(failures);
            self.status.restarts += 1;
            metrics::sensor_restarted();
            let state = if failures >= FAILED_AFTER && !was_ready {
                "failed"
            } else {
                "restarting"
            };
            tracing::warn!(sensor = %self.reference, error = %error, restarts = self.status.restarts,
                delay = ?delay, "sensor crashed; restarting it");
            let next = time::now() + chrono::Duration::from_std(delay).unwrap_or_default();
            self.set_state(state, Some(error), Some(next)).await;
            tokio::select! {
                () = stop.cancelled() => {
                    self.set_state("stopped", None, None).await;
                    return;
                }
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Starts the process and serves it until it ends or `stop`.
    async fn run_once(&mut self, stop: &CancellationToken) -> Ended {
        let def = &self.wanted.def;
        // The pack's config, as the system user sees it (StackStorm's).
        let config = match configs::resolve(
            &self.ctx.configs,
            &self.ctx.catalog.load(),
            &def.pack,
            crate::executions::SYSTEM_USER,
            &self.ctx.renderer,
            &self.ctx.kv,
        ) {
            Ok(config) => config,
            Err(e) => {
                return Ended::Crashed {
                    error: e.to_string(),
                    was_ready: false,
                    ran: Duration::ZERO,
                }
            }
        };
        let token = match self
            .ctx
            .auth
            .issue_action_token(SENSOR_USER, DEFAULT_TOKEN_TTL)
            .await
        {
            Ok((token, _)) => token,
            Err(e) => {
                return Ended::Crashed {
                    error: format!("could not issue the sensor's API token: {e}"),
                    was_ready: false,
                    ran: Duration::ZERO,
                }
            }
        };
        let spec = SensorSpec {
            data_dir: self.ctx.data_dir.clone(),
            pack: def.pack.clone(),
            file: def.file(&self.wanted.pack_path),
            class_name: def.class_name.clone(),
            trigger_types: def.trigger_types.clone(),
            poll_interval: def.poll_interval,
            config,
            env: BTreeMap::from([
                ("ST2_API_URL".to_string(), self.ctx.api_url.clone()),
                ("ST2_AUTH_TOKEN".to_string(), token.clone()),
            ]),
        };
        let (mut process, events) = match SensorProcess::spawn(&spec).await {
            Ok(p) => p,
            Err(e) => {
                self.revoke(&token).await;
                return Ended::Crashed {
                    error: e.to_string(),
                    was_ready: false,
                    ran: Duration::ZERO,
                };
            }
        };
        self.stderr.clear();
        self.status.pid = Some(process.pid());
        self.set_state("starting", None, None).await;
        tracing::info!(sensor = %self.reference, pid = process.pid(), "sensor started");
        let mut run = ProcessRun {
            run_id: ids::fresh(&time::now()),
            seq: 0,
            token,
            sent: BTreeMap::new(),
            ready_at: None,
            error: None,
        };
        let stopped = self.serve(&mut process, events, &mut run, stop).await;
        let status = process.wait().await;
        self.revoke(&run.token).await;
        if run.ready_at.is_some() {
            metrics::sensor_running(false);
        }
        self.status.pid = None;
        self.status.last_stderr = self.stderr.iter().cloned().collect();
        if stopped {
            return Ended::Stopped;
        }
        let error = match (&status, run.error.take()) {
            (Ok(s), _) if s.success() => return Ended::Exited,
            (_, Some(reported)) => reported,
            (Ok(s), None) => describe_exit(s),
            (Err(e), None) => format!("could not wait for the sensor process: {e}"),
        };
        Ended::Crashed {
            error,
            was_ready: run.ready_at.is_some(),
            ran: run.ready_at.map_or(Duration::ZERO, |at| at.elapsed()),
        }
    }

    /// Handles the process's events, trigger changes and token renewal
    /// until its output closes (true: because `stop` asked, after SIGTERM
    /// and at most the grace, then SIGKILL).
    async fn serve(
        &mut self,
        process: &mut SensorProcess,
        mut events: mpsc::Receiver<SensorEvent>,
        run: &mut ProcessRun,
        stop: &CancellationToken,
    ) -> bool {
        let mut catalog_changes = self.ctx.catalog.subscribe();
        let mut renew =
            tokio::time::interval_at(Instant::now() + TOKEN_RENEW_EVERY, TOKEN_RENEW_EVERY);
        let mut kill_at: Option<Instant> = None;
        loop {
            let kill = async {
                match kill_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => self.on_event(process, run, event).await,
                    None => return kill_at.is_some(),
                },
                changed = catalog_changes.changed(), if run.ready_at.is_some() && kill_at.is_none() => {
                    if changed.is_ok() {
                        self.sync_triggers(process, run).await;
                    }
                }
                _ = renew.tick(), if kill_at.is_none() => self.renew_token(process, run).await,
                () = stop.cancelled(), if kill_at.is_none() => {
                    tracing::info!(sensor = %self.reference, "stopping sensor");
                    process.terminate();
                    kill_at = Some(Instant::now() + STOP_GRACE);
                }
                () = kill => {
                    tracing::warn!(sensor = %self.reference, "sensor did not stop within its grace; killing it");
                    process.kill();
                    kill_at = Some(Instant::now() + Duration::from_secs(3600));
                }
            }
        }
    }

    async fn on_event(
        &mut self,
        process: &mut SensorProcess,
        run: &mut ProcessRun,
        event: SensorEvent,
    ) {
        match event {
            SensorEvent::Ready => {
                run.ready_at = Some(Instant::now());
                metrics::sensor_running(true);
                self.status.last_stderr.clear();
                self.set_state("running", None, None).await;
                tracing::info!(sensor = %self.reference, "sensor running");
                self.sync_triggers(process, run).await;
            }
            SensorEvent::Dispatch {
                trigger,
                payload,
                trace_tag,
            } => {
                run.seq += 1;
                self.dispatch(run, &trigger, payload, trace_tag).await;
            }
            SensorEvent::Error(message) => run.error = Some(message),
            SensorEvent::Log(line) => {
                tracing::info!(sensor = %self.reference, "{line}");
                if self.stderr.len() == STDERR_TAIL {
                    self.stderr.pop_front();
                }
                self.stderr.push_back(line);
            }
        }
    }

    /// Tells the sensor which triggers of its types enabled rules use now.
    async fn sync_triggers(&mut self, process: &mut SensorProcess, run: &mut ProcessRun) {
        let catalog = self.ctx.catalog.load();
        let wanted: BTreeMap<String, Value> = self
            .wanted
            .def
            .trigger_types
            .iter()
            .flat_map(|t| catalog.triggers_of_type(t))
            .map(|t| (t.reference.clone(), sanitized(&t, &catalog)))
            .collect();
        let mut commands = Vec::new();
        for (reference, old) in &run.sent {
            match wanted.get(reference) {
                None => commands.push(json!({"op": "remove_trigger", "trigger": old})),
                Some(new) if new != old => {
                    commands.push(json!({"op": "update_trigger", "trigger": new}));
                }
                Some(_) => {}
            }
        }
        for (reference, new) in &wanted {
            if !run.sent.contains_key(reference) {
                commands.push(json!({"op": "add_trigger", "trigger": new}));
            }
        }
        for command in &commands {
            if !process.send(command).await {
                return;
            }
        }
        run.sent = wanted;
    }

    async fn renew_token(&mut self, process: &mut SensorProcess, run: &mut ProcessRun) {
        match self
            .ctx
            .auth
            .issue_action_token(SENSOR_USER, DEFAULT_TOKEN_TTL)
            .await
        {
            Ok((token, _)) => {
                if process.send(&json!({"op": "token", "token": token})).await {
                    let old = std::mem::replace(&mut run.token, token);
                    self.revoke(&old).await;
                } else {
                    self.revoke(&token).await;
                }
            }
            Err(e) => {
                tracing::warn!(sensor = %self.reference, error = %e, "sensor's API token not renewed")
            }
        }
    }

    async fn revoke(&self, token: &str) {
        if let Err(e) = self.ctx.auth.revoke_token(token).await {
            tracing::warn!(sensor = %self.reference, error = %e,
                "sensor's API token not revoked; it expires on its own");
        }
    }

    /// Publishes one dispatch as a trigger instance, or counts and logs
    /// why not.
    async fn dispatch(
        &mut self,
        run: &ProcessRun,
        trigger: &str,
        payload: Value,
        trace_tag: Option<String>,
    ) {
        let catalog = self.ctx.catalog.load();
        let payload = if payload.is_null() {
            json!({})
        } else {
            payload
        };
        let instance = match instance_of(&catalog, trigger, payload, trace_tag) {
            Ok(mut instance) => {
                instance.id = ids::derived(
                    &instance.occurrence_time,
                    &["sensor", &self.reference, &run.run_id, &run.seq.to_string()],
                );
                instance
            }
            Err(reason) => {
                metrics::sensor_dispatch(Dispatch::Rejected);
                tracing::warn!(sensor = %self.reference, trigger = %trigger, reason = %reason,
                    "Trigger payload validation failed and validation is enabled, not dispatching a trigger");
                self.status.rejected += 1;
                self.status.last_rejection = Some(format!("{trigger}: {reason}"));
                self.store().await;
                return;
            }
        };
        loop {
            if !self.ctx.lease.valid() {
                metrics::sensor_dispatch(Dispatch::Fenced);
                tracing::warn!(sensor = %self.reference, trigger = %trigger,
                    "this node no longer holds the sensor's partition; dispatch not published");
                return;
            }
            match self.ctx.bus.publish_trigger(&instance).await {
                Ok(()) => {
                    metrics::sensor_dispatch(Dispatch::Published);
                    self.status.dispatched += 1;
                    if self.stored_at.elapsed() >= COUNTS_EVERY {
                        self.store().await;
                    }
                    tracing::debug!(sensor = %self.reference, trigger_instance = %instance.id,
                        trigger = %instance.trigger, "sensor dispatched a trigger");
                    return;
                }
                Err(e) => {
                    tracing::warn!(sensor = %self.reference, error = %e,
                        "sensor's trigger instance not published; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn set_state(&mut self, state: &str, error: Option<String>, next: Option<Timestamp>) {
        self.status.state = state.to_string();
        if error.is_some() {
            self.status.last_error = error;
        }
        self.status.next_start_at = next;
        self.store().await;
    }

    /// Writes the state. `stopped` is written only over this node's own
    /// record: after a handover the next owner's may already be there.
    async fn store(&mut self) {
        self.status.updated_at = time::now();
        self.stored_at = Instant::now();
        let key = status_key(&self.reference);
        let bytes = match to_bytes(&self.status) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(sensor = %self.reference, error = %e, "sensor state not stored");
                return;
            }
        };
        let stored = if self.status.state == "stopped" {
            match self.bucket.entry(&key).await {
                Ok(Some(entry)) => match from_bytes::<SensorStatus>(&key, &entry.value) {
                    Ok(current) if current.node != self.ctx.node => return,
                    _ => self
                        .bucket
                        .update(&key, bytes, entry.revision)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                },
                Ok(None) => return,
                Err(e) => Err(e.to_string()),
            }
        } else {
            self.bucket
                .put(&key, bytes)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        if let Err(e) = stored {
            tracing::warn!(sensor = %self.reference, error = %e, "sensor state not stored");
        }
    }
}

/// What one process run keeps.
struct ProcessRun {
    /// Fresh per start: with the sequence number, the cause of each of
    /// its dispatches.
    run_id: String,
    seq: u64,
    token: String,
    /// The triggers it was told about, as sent.
    sent: BTreeMap<String, Value>,
    ready_at: Option<Instant>,
    /// What it reported before exiting.
    error: Option<String>,
}

/// The restart delay after `failures` failures in a row.
pub fn backoff(failures: u32) -> Duration {
    let doubled = FIRST_BACKOFF.saturating_mul(1 << failures.saturating_sub(1).min(16));
    doubled.min(MAX_BACKOFF)
}

fn describe_exit(status: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("the sensor process exited with code {code}"),
        (None, Some(signal)) => format!("the sensor process was killed by signal {signal}"),
        (None, None) => "the sensor process ended".into(),
    }
}

/// A trigger as a sensor's `add_trigger` gets it (StackStorm's
/// `_sanitize_trigger`: id, ref, uid, name, pack, type, parameters,
/// description).
fn sanitized(t: &Trigger, catalog: &Catalog) -> Value {
    let (pack, name) = t.reference.split_once('.').unwrap_or(("", &t.reference));
    let description = catalog
        .trigger_types
        .get(&t.trigger_type)
        .map(|tt| tt.description.clone())
        .unwrap_or_default();
    json!({
        "id": content_id("trigger", &t.reference),
        "ref": t.reference,
        "uid": format!("trigger:{pack}:{name}"),
        "name": name,
        "pack": pack,
        "type": t.trigger_type,
        "parameters": t.parameters,
        "description": description,
    })
}

/// The trigger instance a sensor's dispatch of `trigger` (a trigger type
/// reference, or the reference of a trigger with parameters that it got
/// in `add_trigger`) makes, its payload checked against the type's
/// `payload_schema`. `Err` says why it is rejected. The id is the
/// caller's.
pub fn instance_of(
    catalog: &Catalog,
    trigger: &str,
    payload: Value,
    trace_tag: Option<String>,
) -> Result<TriggerInstance, String> {
    let (trigger_type, parameters) = if catalog.trigger_types.contains_key(trigger) {
        (trigger.to_string(), Map::new())
    } else if let Some(t) = catalog
        .triggers()
        .into_iter()
        .find(|t| t.reference == trigger)
    {
        (t.trigger_type, t.parameters)
    } else {
        return Err(format!(
            "Trigger type with reference \"{trigger}\" doesn't exist"
        ));
    };
    if !payload.is_object() {
        return Err("the payload must be an object".into());
    }
    if let Some(schema) = catalog
        .trigger_types
        .get(&trigger_type)
        .and_then(|t| t.payload_schema.as_ref())
    {
        let problems = schema::validate(&payload, schema, "payload");
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
    }
    let now = time::now();
    Ok(TriggerInstance {
        v: RECORD_VERSION,
        id: String::new(),
        trigger: trigger.to_string(),
        trigger_type,
        trigger_parameters: parameters,
        payload,
        occurrence_time: now,
        trace_tag,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use squall_domain::model::PackBundle;

    fn catalog() -> Catalog {
        let bundle: PackBundle = serde_json::from_value(json!({
            "pack": {"ref": "linux", "name": "linux", "version": "1.0.0"},
            "path": "/packs/linux",
            "trigger_types": [{"name": "file_watch.line", "pack": "linux",
                "parameters_schema": {"type": "object", "properties": {"file_path": {"type": "string", "required": true}}},
                "payload_schema": {"type": "object", "properties": {"line": {"type": "string"}}}}],
            "rules": [{"name": "r", "pack": "linux", "enabled": true,
                "trigger": {"type": "linux.file_watch.line", "parameters": {"file_path": "/tmp/x"}},
                "action": {"ref": "core.noop"}}],
        }))
        .expect("bundle");
        Catalog::build(BTreeMap::from([("linux".to_string(), bundle)]))
    }

    #[test]
    fn a_dispatch_by_trigger_ref_reaches_that_triggers_type_and_parameters() {
        let cat = catalog();
        let trigger = cat.triggers_of_type("linux.file_watch.line").remove(0);
        let instance =
            instance_of(&cat, &trigger.reference, json!({"line": "hi"}), None).expect("accepted");
        assert_eq!(instance.trigger_type, "linux.file_watch.line");
        assert_eq!(instance.trigger_parameters["file_path"], "/tmp/x");
        assert_eq!(
            cat.rules_for(&instance.trigger_type, &instance.trigger_parameters)
                .count(),
            1
        );
        let by_type =
            instance_of(&cat, "linux.file_watch.line", json!({}), None).expect("accepted");
        assert!(by_type.trigger_parameters.is_empty());
        assert_eq!(
            cat.rules_for(&by_type.trigger_type, &by_type.trigger_parameters)
                .count(),
            0
        );
        let view = sanitized(&trigger, &cat);
        assert_eq!(view["pack"], "linux");
        assert_eq!(view["parameters"]["file_path"], "/tmp/x");
    }

    #[test]
    fn bad_dispatches_are_rejected_with_a_reason() {
        let cat = catalog();
        let bad = instance_of(&cat, "linux.file_watch.line", json!({"line": 7}), None).unwrap_err();
        assert!(bad.contains("payload.line: must be string"), "{bad}");
        let unknown = instance_of(&cat, "linux.nope", json!({}), None).unwrap_err();
        assert_eq!(
            unknown,
            "Trigger type with reference \"linux.nope\" doesn't exist"
        );
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(4), Duration::from_secs(8));
        assert_eq!(backoff(40), MAX_BACKOFF);
    }
}

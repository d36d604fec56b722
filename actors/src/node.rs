//! The node's actor tree and its supervisor.
//!
//! ```text
//! NodeSupervisor
//! ├── ContentWatcher        content bucket → catalog
//! ├── RulePartition(p)      one per owned rules partition
//! ├── WorkflowPartition(p)  one per owned workflows partition
//! ├── Timers(p)             one per owned sensors partition: timers and
//! │                         Python sensors (a process each)
//! └── RunnerPool(pool)      one per served pool, one task per run
//! ```
//!
//! Every child rebuilds its state from JetStream in `pre_start`, so the
//! supervisor restarts a failed child as it was first started, after a short
//! back-off. Partition actors run only while the node holds their lease:
//! the [`Coordinator`](crate::cluster::Coordinator) tells the supervisor
//! which to start (`Own`) and stop (`Disown`); see ARCHITECTURE.md.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use squall_domain::secrets::Cipher;
use squall_domain::template::Renderer;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::AuthStore;
use crate::bus::Bus;
use crate::catalog::CatalogHandle;
use crate::cluster::{ClusterView, Coordinator, Member, Role};
use crate::configs::ConfigCache;
use crate::consumer::Consumer;
use crate::content::ContentWatcher;
use crate::error::EngineError;
use crate::keys::{KeyCache, KeyStore};
use crate::lease::LeaseValidity;
use crate::rules::{self, RulePartition, RulesContext};
use crate::runners::{CancelRegistry, RunnerContext, RunnerPool};
use crate::sensor_host::HostContext;
use crate::sensors::Timers;
use crate::supervision::{call_within, Child, NodeMsg};
use crate::timing::{CALL_TIMEOUT, DRAIN_TIMEOUT, RESTART_DELAY, START_TIMEOUT, STOP_TIMEOUT};
use crate::workflows::WorkflowPartition;

/// Every stream and bucket a node uses: the spine ([`crate::bus`]) and
/// each module's own buckets, with `replicas` replicas.
pub fn layout(replicas: usize) -> crate::bus::Layout {
    crate::bus::Layout::spine(replicas)
        .with_buckets(crate::cluster::buckets(replicas))
        .with_buckets(crate::keys::buckets(replicas))
        .with_buckets(crate::configs::buckets(replicas))
        .with_buckets(crate::policies::buckets(replicas))
        .with_buckets(crate::auth::buckets(replicas))
        .with_buckets(crate::logins::buckets(replicas))
        .with_streams(crate::pack_files::streams(replicas))
}

/// What a node runs.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// Unique name of the node in the cluster.
    pub name: String,
    /// Public URL of the REST API, without the version (`.../api`); actions
    /// and workflows get `<api_url>/v1`.
    pub api_url: String,
    /// Runner pools this node serves.
    pub pools: Vec<String>,
    /// Executions one pool runs at once on this node.
    pub runner_concurrency: i64,
    /// What this node does.
    pub roles: BTreeSet<Role>,
    /// The node's own working files (pack virtualenvs, Python support
    /// files); rebuilt from the cluster when lost.
    pub data_dir: PathBuf,
    /// How the remote runners log in to hosts (`runners.ssh`).
    pub ssh: squall_runners::SshSettings,
    /// The pack virtualenvs under `data_dir`, shared by registration, the
    /// runners and the keeper that builds them when content changes.
    pub virtualenvs: squall_runners::venv::Virtualenvs,
    /// Garbage collection (StackStorm's `[garbagecollector]`), run by the
    /// owner of sensors partition 0.
    pub retention: crate::retention::Settings,
}

/// Supervises the node's actors.
#[derive(Debug)]
pub struct NodeSupervisor;

/// Everything the node's actors share.
#[derive(Debug, Clone)]
pub struct Shared {
    pub bus: Bus,
    pub catalog: CatalogHandle,
    pub renderer: Arc<Renderer>,
    /// The datastore as templates read it.
    pub kv: KeyCache,
    /// Pack configs as runs and `config_context` read them.
    pub configs: ConfigCache,
    /// Opens secret datastore values (`st2kv(key, decrypt=true)`).
    pub cipher: Cipher,
    pub settings: NodeSettings,
    pub runners: RunnerContext,
    /// Until when this node's partition leases hold (the coordinator's
    /// heartbeats extend it; partition consumers check it before acking).
    pub lease: LeaseValidity,
    /// The execution history, on nodes that serve the API or collect.
    pub history: Option<crate::history::HistoryHandle>,
    /// Installed packs' files: the `packs` object store and this node's
    /// copies ([`crate::pack_files`]).
    pub pack_files: crate::pack_files::PackFiles,
}

/// State of [`NodeSupervisor`].
#[derive(Debug)]
pub struct NodeState {
    shared: Shared,
    children: HashMap<ractor::ActorId, (Child, ActorCell)>,
    /// Partition actors the node holds leases for.
    owned: HashSet<Child>,
}

async fn spawn_child(
    shared: &Shared,
    child: Child,
    supervisor: ActorCell,
) -> Result<ActorCell, ActorProcessingErr> {
    let cell = match &child {
        Child::Content => Box::pin(Actor::spawn_linked(
            None,
            ContentWatcher,
            (
                shared.bus.clone(),
                shared.catalog.clone(),
                shared.pack_files.clone(),
            ),
            supervisor,
        ))
        .await?
        .0
        .get_cell(),
        Child::Rules(p) => {
            let handler = Arc::new(RulePartition {
                ctx: RulesContext {
                    bus: shared.bus.clone(),
                    catalog: shared.catalog.clone(),
                    renderer: shared.renderer.clone(),
                    kv: shared.kv.clone(),
                    configs: shared.configs.clone(),
                },
                partition: *p,
            });
            let args = (
                shared.bus.clone(),
                rules::consumer_spec(*p),
                handler,
                shared.lease.clone(),
            );
            Box::pin(Actor::spawn_linked(
                None,
                Consumer::<RulePartition>::default(),
                args,
                supervisor,
            ))
            .await?
            .0
            .get_cell()
        }
        Child::Workflows(p) => {
            let ctx = crate::workflows::WorkflowContext {
                bus: shared.bus.clone(),
                catalog: shared.catalog.clone(),
                renderer: shared.renderer.clone(),
                expressions: Arc::new(
                    Renderer::with_cipher(shared.cipher.clone()).keeping_none_marker(),
                ),
                kv: shared.kv.clone(),
                configs: shared.configs.clone(),
                cipher: shared.cipher.clone(),
                // `ctx().st2.api_url`: the v1 API root in StackStorm's layout
                // (`<public url>/v1`, which the node serves as well as
                // `/api/v1`), so `.../executions/<id>` works and workflows
                // comparing it see StackStorm's URL.
                api_url: format!(
                    "{}/v1",
                    shared
                        .settings
                        .api_url
                        .strip_suffix("/api")
                        .unwrap_or(&shared.settings.api_url)
                ),
            };
            let handler = Arc::new(Box::pin(WorkflowPartition::open(ctx, *p)).await?);
            let args = (
                shared.bus.clone(),
                WorkflowPartition::consumer_spec(*p),
                handler,
                shared.lease.clone(),
            );
            Box::pin(Actor::spawn_linked(
                None,
                Consumer::<WorkflowPartition>::default(),
                args,
                supervisor,
            ))
            .await?
            .0
            .get_cell()
        }
        Child::Runners(pool) => {
            let handler = Arc::new(RunnerPool {
                ctx: shared.runners.clone(),
            });
            let spec = RunnerPool::consumer_spec(pool, shared.settings.runner_concurrency);
            // Runs are not partitioned: no lease guards them.
            let args = (
                shared.bus.clone(),
                spec,
                handler,
                LeaseValidity::unbounded(),
            );
            Box::pin(Actor::spawn_linked(
                None,
                Consumer::<RunnerPool>::default(),
                args,
                supervisor,
            ))
            .await?
            .0
            .get_cell()
        }
        Child::Timers(p) => Box::pin(Actor::spawn_linked(
            None,
            Timers,
            (
                shared.bus.clone(),
                shared.catalog.clone(),
                *p,
                sensor_host(shared),
                collector(shared),
            ),
            supervisor,
        ))
        .await?
        .0
        .get_cell(),
    };
    Ok(cell)
}

/// The garbage collector a sensors partition actor runs (on partition 0),
/// when retention is on and the node has the history.
fn collector(shared: &Shared) -> Option<crate::retention::Collector> {
    let settings = &shared.settings.retention;
    settings.enabled().then_some(())?;
    Some(crate::retention::Collector {
        bus: shared.bus.clone(),
        history: shared.history.clone()?,
        settings: settings.clone(),
        lease: shared.lease.clone(),
    })
}

/// What the Python sensors of a sensors partition share. Their tasks are
/// tracked with the node's runs, so shutdown waits for them to stop.
fn sensor_host(shared: &Shared) -> HostContext {
    HostContext {
        bus: shared.bus.clone(),
        catalog: shared.catalog.clone(),
        auth: shared.runners.auth.clone(),
        node: shared.settings.name.clone(),
        data_dir: shared.settings.data_dir.clone(),
        api_url: shared.runners.api_url.clone(),
        lease: shared.lease.clone(),
        configs: shared.runners.configs.clone(),
        renderer: shared.runners.renderer.clone(),
        kv: shared.runners.kv.clone(),
        tasks: shared.runners.in_flight.clone(),
    }
}

impl Actor for NodeSupervisor {
    type Msg = NodeMsg;
    type State = NodeState;
    type Arguments = Shared;

    async fn pre_start(
        &self,
        _myself: ActorRef<NodeMsg>,
        shared: Shared,
    ) -> Result<NodeState, ActorProcessingErr> {
        Ok(NodeState {
            shared,
            children: HashMap::new(),
            owned: HashSet::new(),
        })
    }

    /// Children start here rather than in `pre_start`: this runs in the
    /// supervisor's own task, so each child's start is not nested inside the
    /// caller's future (which, unoptimised, overflows a 2 MiB stack).
    async fn post_start(
        &self,
        myself: ActorRef<NodeMsg>,
        state: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        // Content first: rules need the catalog. Partition actors come
        // later, as the coordinator takes their leases.
        let mut plan = vec![Child::Content];
        if state.shared.settings.roles.contains(&Role::Runners) {
            plan.extend(
                state
                    .shared
                    .settings
                    .pools
                    .iter()
                    .cloned()
                    .map(Child::Runners),
            );
        }
        for child in plan {
            let cell = spawn_child(&state.shared, child.clone(), myself.get_cell()).await?;
            state.children.insert(cell.get_id(), (child, cell));
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<NodeMsg>,
        msg: NodeMsg,
        state: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        let child = match msg {
            NodeMsg::Ready(reply) => {
                // The caller may have given up waiting; nothing to do then.
                let _ = reply.send(());
                return Ok(());
            }
            NodeMsg::Disown(children, reply) => {
                stop_children(state, &children).await;
                let _ = reply.send(());
                return Ok(());
            }
            NodeMsg::Fence(reply) => {
                let all: Vec<Child> = state
                    .children
                    .values()
                    .map(|(c, _)| c.clone())
                    .filter(Child::partitioned)
                    .collect();
                stop_children(state, &all).await;
                let _ = reply.send(());
                return Ok(());
            }
            NodeMsg::Own(child) => {
                state.owned.insert(child.clone());
                child
            }
            // A partition given up since it failed stays stopped.
            NodeMsg::Restart(child) if child.partitioned() && !state.owned.contains(&child) => {
                return Ok(())
            }
            NodeMsg::Restart(child) => child,
        };
        // Already running (owned again, or restarted, in the meantime).
        if state.children.values().any(|(c, _)| *c == child) {
            return Ok(());
        }
        match spawn_child(&state.shared, child.clone(), myself.get_cell()).await {
            Ok(cell) => {
                tracing::debug!(child = ?child, "actor started");
                state.children.insert(cell.get_id(), (child, cell));
            }
            Err(e) => {
                tracing::warn!(child = ?child, error = %e, "restart failed; trying again");
                ractor::time::send_after(RESTART_DELAY, myself.get_cell(), move || {
                    NodeMsg::Restart(child)
                });
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<NodeMsg>,
        _state: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        myself
            .stop_children_and_wait(Some("node shutting down".into()), Some(DRAIN_TIMEOUT))
            .await;
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<NodeMsg>,
        evt: SupervisionEvent,
        state: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        let (who, why) = match &evt {
            SupervisionEvent::ActorFailed(who, e) => (who.get_id(), e.to_string()),
            SupervisionEvent::ActorTerminated(who, _, reason) => {
                (who.get_id(), reason.clone().unwrap_or_default())
            }
            _ => return Ok(()),
        };
        if let Some((child, _)) = state.children.remove(&who) {
            tracing::warn!(child = ?child, reason = %why, "actor stopped; restarting it");
            ractor::time::send_after(RESTART_DELAY, myself.get_cell(), move || {
                NodeMsg::Restart(child)
            });
        }
        Ok(())
    }
}

/// Stops the actors of `children` (no restart), waiting for each to end
/// its current message; one that takes longer than `STOP_TIMEOUT` is
/// killed.
async fn stop_children(state: &mut NodeState, children: &[Child]) {
    for child in children {
        state.owned.remove(child);
    }
    let stopping: Vec<ActorCell> = state
        .children
        .iter()
        .filter(|(_, (c, _))| children.contains(c))
        .map(|(_, (_, cell))| cell.clone())
        .collect();
    for cell in &stopping {
        state.children.remove(&cell.get_id());
        cell.stop(Some("partition given up".into()));
    }
    let waits = stopping.iter().map(|cell| async move {
        if cell.wait(Some(STOP_TIMEOUT)).await.is_err() {
            tracing::warn!(actor = ?cell.get_id(), "partition actor slow to stop; killing it");
            let _ = cell.kill_and_wait(Some(STOP_TIMEOUT)).await;
        }
    });
    futures::future::join_all(waits).await;
}

/// Answers for the executions this node runs: cancels one when
/// `squall.cancel.<id>` arrives, and says whether it runs one when asked on
/// `squall.running.<id>.<node>` (other nodes' runners ask before they call
/// a run lost). Silence would tell them this node runs nothing, so the
/// responder never just stops: subscriptions that end are made again
/// after [`RESTART_DELAY`], until the node has recorded every run's end.
async fn serve_runs(
    bus: &Bus,
    node: &str,
    runs: CancelRegistry,
) -> Result<tokio::task::JoinHandle<()>, EngineError> {
    let first = subscribe_runs(bus, node).await?;
    let (bus, node) = (bus.clone(), node.to_string());
    Ok(tokio::spawn(async move {
        let mut requests = first;
        loop {
            answer_runs(&bus, &runs, requests).await;
            tracing::error!(node = %node, "the run responder's subscriptions ended; subscribing again");
            loop {
                tokio::time::sleep(RESTART_DELAY).await;
                match subscribe_runs(&bus, &node).await {
                    Ok(again) => {
                        requests = again;
                        break;
                    }
                    Err(e) => tracing::error!(error = %e, "the run responder cannot subscribe"),
                }
            }
        }
    }))
}

type RunRequests = futures::stream::Select<async_nats::Subscriber, async_nats::Subscriber>;

async fn subscribe_runs(bus: &Bus, node: &str) -> Result<RunRequests, EngineError> {
    let subscribe = |subject: String| async move {
        bus.client
            .subscribe(subject)
            .await
            .map_err(|e| crate::error::bus_err("subscribe to run requests", e))
    };
    let cancels = subscribe(crate::bus::cancel_subject("*")).await?;
    let questions = subscribe(crate::bus::running_subject("*", node)).await?;
    Ok(futures::stream::select(cancels, questions))
}

/// Answers until the subscriptions end.
async fn answer_runs(bus: &Bus, runs: &CancelRegistry, mut requests: RunRequests) {
    while let Some(msg) = futures::StreamExt::next(&mut requests).await {
        let mut tokens = msg.subject.as_str().splitn(4, '.').skip(1);
        match (tokens.next(), tokens.next(), msg.reply) {
            (Some("cancel"), Some(id), _) if runs.cancel(id) => {
                tracing::info!(execution = %id, "cancel requested; stopping the action");
            }
            (Some("running"), Some(id), Some(reply)) => {
                let answer: &'static [u8] = if runs.runs(id) {
                    crate::bus::STILL_RUNNING
                } else {
                    b"no"
                };
                if let Err(e) = bus.client.publish(reply, answer.into()).await {
                    tracing::warn!(execution = %id, error = %e, "could not answer for a run");
                }
            }
            _ => {}
        }
    }
}

/// Keeps the cluster coordinator running for the node's life. The
/// coordinator is what fences the node, so it never just stops: one that
/// fails fences the node at once (leases lapsed, every partition actor
/// stopped) and a new one starts after [`RESTART_DELAY`], taking the
/// node's partitions back as any start does.
async fn supervise_coordinator(
    mut coordinator: Coordinator,
    shared: Shared,
    supervisor: ActorRef<NodeMsg>,
    leave: CancellationToken,
) {
    let me = coordinator.member();
    let view = coordinator.view();
    loop {
        match tokio::spawn(coordinator.run(leave.clone())).await {
            Ok(()) => return,
            Err(e) => {
                tracing::error!(error = %e, "the cluster coordinator failed; fencing the node");
                shared.lease.lapse();
                if let Err(e) = call_within(&supervisor, CALL_TIMEOUT, NodeMsg::Fence).await {
                    tracing::error!(error = %e, "fencing the node's partitions failed");
                }
            }
        }
        coordinator = loop {
            tokio::select! {
                () = leave.cancelled() => return,
                () = tokio::time::sleep(RESTART_DELAY) => {}
            }
            let again = Coordinator::open(
                &shared.bus,
                me.clone(),
                supervisor.clone(),
                shared.lease.clone(),
            )
            .await;
            match again {
                Ok(c) => break c.sharing_view(view.clone()),
                Err(e) => tracing::error!(error = %e, "the cluster coordinator cannot restart"),
            }
        };
    }
}

/// A running node's engine.
#[derive(Debug)]
pub struct Engine {
    pub shared: Shared,
    supervisor: ActorRef<NodeMsg>,
    join: tokio::task::JoinHandle<()>,
    shutdown: CancellationToken,
    in_flight: TaskTracker,
    run_server: tokio::task::JoinHandle<()>,
    /// The cluster as this node sees it.
    pub cluster: ClusterView,
    leave: CancellationToken,
    coordinator: tokio::task::JoinHandle<()>,
    /// Builds pack virtualenvs as content changes (runner nodes only).
    virtualenvs: Option<tokio::task::JoinHandle<()>>,
}

impl Engine {
    /// Starts the actor tree on an opened bus and joins the cluster.
    /// Returns once the catalog holds all registered content and the node
    /// runs the partitions it could take at once (all of them when it is
    /// alone, or when the previous owner was this node's earlier life).
    /// `auth` issues and revokes the actions' API tokens; `history` is the
    /// node's execution history, if it keeps one.
    pub async fn start(
        bus: Bus,
        settings: NodeSettings,
        keys: &KeyStore,
        auth: AuthStore,
        history: Option<crate::history::HistoryHandle>,
    ) -> Result<Engine, EngineError> {
        let kv = Box::pin(KeyCache::start(keys, bus.audit.clone())).await?;
        let configs = Box::pin(ConfigCache::start(&bus)).await?;
        let renderer = Arc::new(Renderer::with_cipher(keys.cipher().clone()));
        let catalog = CatalogHandle::default();
        let pack_files = Box::pin(crate::pack_files::PackFiles::open(
            &bus,
            &settings.data_dir,
            settings.virtualenvs.clone(),
        ))
        .await?;
        let shutdown = CancellationToken::new();
        let in_flight = TaskTracker::new();
        let runners = RunnerContext {
            bus: bus.clone(),
            catalog: catalog.clone(),
            node: settings.name.clone(),
            // StackStorm's `get_full_public_api_url`: the v1 API root.
            api_url: format!("{}/v1", settings.api_url),
            auth,
            runners: Arc::new({
                let mut runners = squall_runners::registry(
                    settings.ssh.clone(),
                    &settings.data_dir,
                    &settings.virtualenvs,
                );
                let announce: Arc<dyn squall_runners::Runner> =
                    Arc::new(crate::announce::Announcement::new(bus.client.clone()));
                runners.insert(announce.name(), announce);
                let packs: Arc<dyn squall_runners::Runner> =
                    Arc::new(crate::pack_install::PackManagement::new(
                        bus.clone(),
                        pack_files.clone(),
                        settings.virtualenvs.clone(),
                        catalog.clone(),
                        &settings.data_dir,
                    ));
                runners.insert(packs.name(), packs);
                runners
            }),
            shutdown: shutdown.clone(),
            in_flight: in_flight.clone(),
            cancels: CancelRegistry::default(),
            renderer: renderer.clone(),
            kv: kv.clone(),
            configs: configs.clone(),
        };
        let run_server =
            Box::pin(serve_runs(&bus, &settings.name, runners.cancels.clone())).await?;
        let shared = Shared {
            bus,
            catalog,
            renderer,
            kv,
            configs,
            cipher: keys.cipher().clone(),
            settings,
            runners,
            lease: LeaseValidity::default(),
            history,
            pack_files,
        };
        let (supervisor, join) = Box::pin(Actor::spawn(None, NodeSupervisor, shared.clone()))
            .await
            .map_err(|e| EngineError::Config(format!("the node's actors failed to start: {e}")))?;
        if let Err(e) = call_within(&supervisor, START_TIMEOUT, NodeMsg::Ready).await {
            let _ = join.await;
            return Err(EngineError::Config(format!(
                "the node's actors failed to start: {e}"
            )));
        }
        let now = squall_domain::time::now();
        let settings = &shared.settings;
        let me = Member {
            v: 1,
            name: settings.name.clone(),
            incarnation: squall_domain::ids::fresh(&now),
            roles: settings.roles.iter().copied().collect(),
            pools: if settings.roles.contains(&Role::Runners) {
                settings.pools.clone()
            } else {
                vec![]
            },
            api_url: settings
                .roles
                .contains(&Role::Api)
                .then(|| settings.api_url.clone()),
            started_at: now,
            heartbeat_at: now,
            partitions: Default::default(),
        };
        let mut coordinator = Box::pin(Coordinator::open(
            &shared.bus,
            me,
            supervisor.clone(),
            shared.lease.clone(),
        ))
        .await?;
        Box::pin(coordinator.round()).await;
        // Every `Own` of the first round is handled before this answer.
        if let Err(e) = call_within(&supervisor, START_TIMEOUT, NodeMsg::Ready).await {
            tracing::warn!(error = %e, "the first partitions were slow to start");
        }
        let cluster = coordinator.view();
        let virtualenvs = shared.settings.roles.contains(&Role::Runners).then(|| {
            tokio::spawn(crate::virtualenvs::keep(
                shared.catalog.clone(),
                shared.settings.virtualenvs.clone(),
                shutdown.clone(),
            ))
        });
        let leave = CancellationToken::new();
        let coordinator = tokio::spawn(supervise_coordinator(
            coordinator,
            shared.clone(),
            supervisor.clone(),
            leave.clone(),
        ));
        Ok(Engine {
            shared,
            supervisor,
            join,
            shutdown,
            in_flight,
            run_server,
            cluster,
            leave,
            coordinator,
            virtualenvs,
        })
    }

    /// Gives up every partition (stopped, then released, so other nodes
    /// take them at once), stops running actions (they end `abandoned`),
    /// waits for their records, then stops every actor.
    pub async fn shutdown(self) {
        self.leave.cancel();
        let _ = self.coordinator.await;
        self.shutdown.cancel();
        if let Some(keeper) = self.virtualenvs {
            let _ = keeper.await;
        }
        self.in_flight.close();
        if tokio::time::timeout(DRAIN_TIMEOUT, self.in_flight.wait())
            .await
            .is_err()
        {
            tracing::warn!("running actions did not finish recording in time");
        }
        // Until its runs have recorded their end, this node still answers
        // for them.
        self.run_server.abort();
        self.supervisor.stop(Some("node shutting down".into()));
        let _ = self.join.await;
    }
}

//! The node's actor tree and its supervisor.
//!
//! ```text
//! NodeSupervisor
//! ├── ContentWatcher        content bucket → catalog
//! ├── RulePartition(p)      one per owned partition
//! ├── RunnerPool(pool)      one per served pool, one Runner child per execution
//! └── IntervalTimers        timer triggers of enabled rules
//! ```
//!
//! Every child rebuilds its state from JetStream in `pre_start`, so the
//! supervisor restarts a failed child as it was first started, after a short
//! back-off. A single node owns every partition; see ARCHITECTURE.md for
//! how ownership moves between nodes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use squall_domain::secrets::Cipher;
use squall_domain::template::Renderer;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bus::Bus;
use crate::catalog::CatalogHandle;
use crate::content::ContentWatcher;
use crate::error::EngineError;
use crate::keys::{KeyCache, KeyStore};
use crate::rules::{RulePartition, RulesContext};
use crate::runners::{CancelRegistry, RunnerContext, RunnerPool};
use crate::sensors::IntervalTimers;

/// Back-off before a failed child is restarted.
const RESTART_DELAY: Duration = Duration::from_millis(500);
/// How long shutdown waits for running actions to record their end.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What a node runs.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// Unique name of the node in the cluster.
    pub name: String,
    /// Public URL of the REST API (given to actions).
    pub api_url: String,
    /// Runner pools this node serves.
    pub pools: Vec<String>,
    /// Executions one pool runs at once on this node.
    pub runner_concurrency: i64,
}

/// One child of the supervisor, as it can be (re)started.
#[derive(Debug, Clone)]
pub enum Child {
    Content,
    Rules(u32),
    Workflows(u32),
    Runners(String),
    Timers,
}

/// Supervises the node's actors.
#[derive(Debug)]
pub struct NodeSupervisor;

/// Messages of [`NodeSupervisor`].
#[derive(Debug)]
pub enum NodeMsg {
    Restart(Child),
    /// Answered once every child has started (messages are handled only
    /// after `post_start`).
    Ready(RpcReplyPort<()>),
}

/// Everything the node's actors share.
#[derive(Debug, Clone)]
pub struct Shared {
    pub bus: Bus,
    pub catalog: CatalogHandle,
    pub renderer: Arc<Renderer>,
    /// The datastore as templates read it.
    pub kv: KeyCache,
    /// Opens secret datastore values (`st2kv(key, decrypt=true)`).
    pub cipher: Cipher,
    pub settings: NodeSettings,
    pub runners: RunnerContext,
}

/// State of [`NodeSupervisor`].
#[derive(Debug)]
pub struct NodeState {
    shared: Shared,
    children: HashMap<ractor::ActorId, Child>,
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
            (shared.bus.clone(), shared.catalog.clone()),
            supervisor,
        ))
        .await?
        .0
        .get_cell(),
        Child::Rules(p) => {
            let ctx = RulesContext {
                bus: shared.bus.clone(),
                catalog: shared.catalog.clone(),
                renderer: shared.renderer.clone(),
                kv: shared.kv.clone(),
            };
            Box::pin(Actor::spawn_linked(
                None,
                RulePartition,
                (ctx, *p),
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
                cipher: shared.cipher.clone(),
                // `ctx().st2.api_url`: the v1 API root, so `.../executions/<id>` works.
                api_url: format!("{}/v1", shared.settings.api_url),
            };
            Box::pin(Actor::spawn_linked(
                None,
                crate::workflows::WorkflowPartition,
                (ctx, *p),
                supervisor,
            ))
            .await?
            .0
            .get_cell()
        }
        Child::Runners(pool) => {
            let args = (
                shared.runners.clone(),
                pool.clone(),
                shared.settings.runner_concurrency,
            );
            Box::pin(Actor::spawn_linked(None, RunnerPool, args, supervisor))
                .await?
                .0
                .get_cell()
        }
        Child::Timers => Box::pin(Actor::spawn_linked(
            None,
            IntervalTimers,
            (shared.bus.clone(), shared.catalog.clone()),
            supervisor,
        ))
        .await?
        .0
        .get_cell(),
    };
    Ok(cell)
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
        // Content first: rules need the catalog.
        let mut plan = vec![Child::Content];
        plan.extend((0..state.shared.bus.partitions).map(Child::Rules));
        plan.extend((0..state.shared.bus.partitions).map(Child::Workflows));
        plan.extend(
            state
                .shared
                .settings
                .pools
                .iter()
                .cloned()
                .map(Child::Runners),
        );
        plan.push(Child::Timers);
        for child in plan {
            let cell = spawn_child(&state.shared, child.clone(), myself.get_cell()).await?;
            state.children.insert(cell.get_id(), child);
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
            NodeMsg::Restart(child) => child,
        };
        match spawn_child(&state.shared, child.clone(), myself.get_cell()).await {
            Ok(cell) => {
                tracing::info!(child = ?child, "actor restarted");
                state.children.insert(cell.get_id(), child);
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
        if let Some(child) = state.children.remove(&who) {
            tracing::warn!(child = ?child, reason = %why, "actor stopped; restarting it");
            ractor::time::send_after(RESTART_DELAY, myself.get_cell(), move || {
                NodeMsg::Restart(child)
            });
        }
        Ok(())
    }
}

/// Cancels the executions this node runs when `squall.cancel.<id>`
/// arrives.
async fn listen_for_cancels(
    bus: &Bus,
    cancels: CancelRegistry,
) -> Result<tokio::task::JoinHandle<()>, EngineError> {
    let mut sub = bus
        .client
        .subscribe(crate::bus::cancel_subject("*"))
        .await
        .map_err(|e| crate::error::bus_err("subscribe to cancels", e))?;
    Ok(tokio::spawn(async move {
        while let Some(msg) = futures::StreamExt::next(&mut sub).await {
            if let Some(id) = msg.subject.as_str().strip_prefix("squall.cancel.") {
                if cancels.cancel(id) {
                    tracing::info!(execution = %id, "cancel requested; stopping the action");
                }
            }
        }
    }))
}

/// A running node's engine.
#[derive(Debug)]
pub struct Engine {
    pub shared: Shared,
    supervisor: ActorRef<NodeMsg>,
    join: tokio::task::JoinHandle<()>,
    shutdown: CancellationToken,
    in_flight: TaskTracker,
    cancel_listener: tokio::task::JoinHandle<()>,
}

impl Engine {
    /// Starts the actor tree on an opened bus. Returns once every actor has
    /// started and the catalog holds all registered content.
    pub async fn start(
        bus: Bus,
        settings: NodeSettings,
        keys: &KeyStore,
    ) -> Result<Engine, EngineError> {
        let kv = Box::pin(KeyCache::start(keys)).await?;
        let catalog = CatalogHandle::default();
        let shutdown = CancellationToken::new();
        let in_flight = TaskTracker::new();
        let runners = RunnerContext {
            bus: bus.clone(),
            catalog: catalog.clone(),
            node: settings.name.clone(),
            api_url: settings.api_url.clone(),
            runners: Arc::new(squall_runners::registry()),
            shutdown: shutdown.clone(),
            in_flight: in_flight.clone(),
            cancels: CancelRegistry::default(),
        };
        let cancel_listener = Box::pin(listen_for_cancels(&bus, runners.cancels.clone())).await?;
        let shared = Shared {
            bus,
            catalog,
            renderer: Arc::new(Renderer::with_cipher(keys.cipher().clone())),
            kv,
            cipher: keys.cipher().clone(),
            settings,
            runners,
        };
        let (supervisor, join) = Box::pin(Actor::spawn(None, NodeSupervisor, shared.clone()))
            .await
            .map_err(|e| EngineError::Config(format!("the node's actors failed to start: {e}")))?;
        if let Err(e) = ractor::call!(supervisor, NodeMsg::Ready) {
            let _ = join.await;
            return Err(EngineError::Config(format!(
                "the node's actors failed to start: {e}"
            )));
        }
        Ok(Engine {
            shared,
            supervisor,
            join,
            shutdown,
            in_flight,
            cancel_listener,
        })
    }

    /// Stops running actions (they end `abandoned`), waits for their records,
    /// then stops every actor.
    pub async fn shutdown(self) {
        self.cancel_listener.abort();
        self.shutdown.cancel();
        self.in_flight.close();
        if tokio::time::timeout(DRAIN_TIMEOUT, self.in_flight.wait())
            .await
            .is_err()
        {
            tracing::warn!("running actions did not finish recording in time");
        }
        self.supervisor.stop(Some("node shutting down".into()));
        let _ = self.join.await;
    }
}

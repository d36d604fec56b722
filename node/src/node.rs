//! Bootstrapping a node: connect to NATS, create streams and buckets,
//! register packs, start the actors, serve the API; and stop it all.

use std::net::SocketAddr;
use std::sync::Arc;

use squall_actors::bus::Bus;
use squall_actors::content;
use squall_actors::node::{Engine, NodeSettings};
use squall_domain::template::Renderer;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiState};
use crate::config::NodeConfig;
use crate::managed_nats::{version_supported, MIN_NATS_VERSION};

/// Why a node could not start.
#[derive(Debug, Error)]
pub enum NodeError {
    #[error("cannot connect to NATS at {url}: {message}. Is nats-server running there? (`squall up` starts one for you)")]
    Connect { url: String, message: String },
    #[error("nats-server {found} is too old: Squall needs {}.{} or newer with JetStream enabled", MIN_NATS_VERSION.0, MIN_NATS_VERSION.1)]
    OldServer { found: String },
    #[error("cannot listen on {addr} for the API: {source}. Is another Squall (or StackStorm) running? Change api.listen / --listen")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Engine(#[from] squall_actors::EngineError),
}

/// A running node.
#[derive(Debug)]
pub struct Node {
    /// Where the API listens (the real port when configured with port 0).
    pub api_addr: Option<SocketAddr>,
    pub bus: Bus,
    engine: Engine,
    stop_api: CancellationToken,
    api_task: Option<tokio::task::JoinHandle<()>>,
}

/// Connects to the NATS servers of `cfg`.
pub async fn connect(cfg: &NodeConfig) -> Result<async_nats::Client, NodeError> {
    let mut opts = async_nats::ConnectOptions::new()
        .name(format!("squall-{}", cfg.name))
        .retry_on_initial_connect()
        .max_reconnects(None);
    if let Some(creds) = &cfg.nats.credentials {
        opts = opts
            .credentials_file(creds)
            .await
            .map_err(|e| NodeError::Connect {
                url: cfg.nats.url.clone(),
                message: format!("credentials file {}: {e}", creds.display()),
            })?;
    }
    if let (Some(u), Some(p)) = (&cfg.nats.user, &cfg.nats.password) {
        opts = opts.user_and_password(u.clone(), p.clone());
    }
    if let Some(t) = &cfg.nats.token {
        opts = opts.token(t.clone());
    }
    let client = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        opts.connect(cfg.nats.url.as_str()),
    )
    .await
    .map_err(|_| NodeError::Connect {
        url: cfg.nats.url.clone(),
        message: "no answer within 10 s".into(),
    })?
    .map_err(|e| NodeError::Connect {
        url: cfg.nats.url.clone(),
        message: e.to_string(),
    })?;
    // The INFO arrives with the connection; wait briefly for it.
    for _ in 0..100 {
        if !client.server_info().version.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let version = client.server_info().version;
    if !version_supported(&version) {
        return Err(NodeError::OldServer { found: version });
    }
    Ok(client)
}

impl Node {
    /// Starts a node: streams and buckets, packs, actors, API.
    pub async fn start(cfg: &NodeConfig) -> Result<Node, NodeError> {
        let client = connect(cfg).await?;
        let bus = Bus::open(client, cfg.nats.replicas, cfg.cluster.partitions).await?;
        if cfg.packs.register_on_start {
            register_dirs(&bus, cfg).await;
        }
        let engine = Engine::start(
            bus.clone(),
            NodeSettings {
                name: cfg.name.clone(),
                api_url: format!("{}/api", cfg.public_url()),
                pools: cfg.runners.pools.clone(),
                runner_concurrency: cfg.runners.concurrency,
            },
        )
        .await?;
        let stop_api = CancellationToken::new();
        let (api_addr, api_task) = if cfg.api.enabled {
            let listener = tokio::net::TcpListener::bind(cfg.api.listen)
                .await
                .map_err(|source| NodeError::Listen {
                    addr: cfg.api.listen,
                    source,
                })?;
            let addr = listener.local_addr().ok();
            let app = api::app(ApiState {
                bus: bus.clone(),
                catalog: engine.shared.catalog.clone(),
                renderer: Arc::new(Renderer::new()),
                pack_dirs: cfg.packs.dirs.clone(),
            });
            let stop = stop_api.clone();
            let task = tokio::spawn(async move {
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "API server failed");
                }
            });
            (addr, Some(task))
        } else {
            (None, None)
        };
        tracing::info!(node = %cfg.name, api = ?api_addr, partitions = bus.partitions, "node ready");
        Ok(Node {
            api_addr,
            bus,
            engine,
            stop_api,
            api_task,
        })
    }

    /// Stops accepting requests, lets running actions record their end, and
    /// stops every actor.
    pub async fn shutdown(self) {
        self.stop_api.cancel();
        if let Some(task) = self.api_task {
            let _ = task.await;
        }
        self.engine.shutdown().await;
        tracing::info!("node stopped");
    }
}

/// Registers every pack found in the configured directories; a broken pack
/// is reported and skipped, the others still register.
async fn register_dirs(bus: &Bus, cfg: &NodeConfig) {
    let dirs = match api::pack_dirs(&cfg.packs.dirs, &[]) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "cannot list pack directories");
            return;
        }
    };
    for dir in dirs {
        if let Err(e) = content::register_pack(bus, &dir).await {
            tracing::error!(pack = %dir.display(), error = %e, "pack not registered");
        }
    }
}

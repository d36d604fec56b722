//! Bootstrapping a node: connect to NATS, create streams and buckets,
//! register packs, start the actors, serve the API; and stop it all.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use squall_actors::auth::{self, AuthStore, Role, ADMIN_USER};
use squall_actors::bus::Bus;
use squall_actors::cluster;
use squall_actors::content;
use squall_actors::history::HistoryHandle;
use squall_actors::keys::KeyStore;
use squall_actors::node::{Engine, NodeSettings};
use squall_domain::registration::Mode;
use squall_domain::secrets::Cipher;
use squall_runners::venv::Virtualenvs;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiContext, ApiState};
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
    #[error("cannot write the first admin's password to {path}: {source}. Set auth.admin_password_file (or --data-dir) to a writable place")]
    AdminPassword {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("datastore key file {path}: {message}")]
    DatastoreKey { path: PathBuf, message: String },
    #[error("cannot create the first admin: {0}")]
    Bootstrap(#[from] squall_actors::auth::AuthError),
}

/// A running node.
#[derive(Debug)]
pub struct Node {
    /// Where the API listens (the real port when configured with port 0).
    pub api_addr: Option<SocketAddr>,
    /// StackStorm's auth port (`POST /tokens`), when configured.
    pub auth_addr: Option<SocketAddr>,
    /// StackStorm's stream port (`GET /v1/stream`), when configured.
    pub stream_addr: Option<SocketAddr>,
    pub bus: Bus,
    engine: Engine,
    stop_api: CancellationToken,
    api_tasks: Vec<tokio::task::JoinHandle<()>>,
    audit: AuditTasks,
}

/// The audit emitter's publishing task and the exporters, stopped last so
/// that the events of the shutdown itself are published.
#[derive(Debug)]
struct AuditTasks {
    stop: CancellationToken,
    publisher: tokio::task::JoinHandle<()>,
    exporters: squall_actors::audit::Exporters,
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
        opts.connect(
            cfg.nats
                .url
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .collect::<Vec<_>>(),
        ),
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

/// What a node reads of its data directory before it connects: the
/// history snapshot (where it is, and, when the node keeps a history, its
/// contents decoded on a blocking thread meanwhile).
#[derive(Debug)]
pub struct Preloaded {
    snapshot: PathBuf,
    history: Option<squall_actors::history::Preload>,
}

/// Whether `cfg`'s node answers the REST API.
fn serves_api(cfg: &NodeConfig) -> bool {
    cfg.api.enabled && cfg.roles.contains(&cluster::Role::Api)
}

impl Node {
    /// Starts decoding what `cfg`'s node will need of its data directory,
    /// so that it overlaps whatever comes before [`Node::start_preloaded`]
    /// (`squall up` starting its nats-server).
    pub fn preload(cfg: &NodeConfig) -> Preloaded {
        let collects = cfg.garbagecollector.settings().enabled()
            && cfg.roles.contains(&cluster::Role::Sensors);
        let snapshot = squall_actors::history::snapshot_path(&cfg.data_dir);
        let history =
            (serves_api(cfg) || collects).then(|| squall_actors::history::preload(&snapshot));
        Preloaded { snapshot, history }
    }

    /// Starts a node: streams and buckets, packs, actors, API.
    pub async fn start(cfg: &NodeConfig) -> Result<Node, NodeError> {
        Box::pin(Node::start_preloaded(cfg, Node::preload(cfg))).await
    }

    /// [`Node::start`] with what [`Node::preload`] began.
    pub async fn start_preloaded(
        cfg: &NodeConfig,
        preloaded: Preloaded,
    ) -> Result<Node, NodeError> {
        // Each step is boxed: unoptimised builds lay nested futures out on
        // the stack, and the whole start would not fit in a 2 MiB thread.
        let Preloaded { snapshot, history } = preloaded;
        let client = Box::pin(connect(cfg)).await?;
        let layout = squall_actors::node::layout(cfg.nats.replicas)
            .with_streams(squall_actors::audit::streams(&cfg.audit, cfg.nats.replicas));
        let bus = Box::pin(Bus::open(client, layout, cfg.cluster.partitions)).await?;
        let audit = start_audit(&bus, cfg);
        let auth = Box::pin(AuthStore::open(&bus)).await?;
        Box::pin(bootstrap_admin(&auth, &cfg.auth.admin_password_file)).await?;
        let cipher = datastore_cipher(&cfg.datastore.key_file)?;
        let keys = Box::pin(KeyStore::open(&bus, cipher)).await?;
        let virtualenvs = Virtualenvs::new(&cfg.data_dir, cfg.virtualenvs.settings());
        if cfg.packs.register_on_start {
            Box::pin(register_dirs(&bus, cfg, keys.cipher(), &virtualenvs)).await;
        }
        let settings = NodeSettings {
            name: cfg.name.clone(),
            api_url: format!("{}/api", cfg.public_url()),
            pools: cfg.runners.pools.clone(),
            runner_concurrency: cfg.runners.concurrency,
            roles: cfg.roles.clone(),
            data_dir: cfg.data_dir.clone(),
            ssh: cfg.runners.ssh.settings(),
            virtualenvs,
            retention: cfg.garbagecollector.settings(),
        };
        let history = match history {
            Some(preloaded) => {
                Some(Box::pin(squall_actors::history::start(&bus, Some(preloaded))).await?)
            }
            None => None,
        };
        let loading_since = tokio::time::Instant::now();
        let engine = Box::pin(Engine::start(
            bus.clone(),
            settings,
            &keys,
            auth.clone(),
            history.clone(),
        ))
        .await?;
        let stop_api = CancellationToken::new();
        if let Some(history) = &history {
            // The history loaded while the engine started: a small one is
            // ready now; a large one keeps loading while lists answer 503
            // with Retry-After.
            let _ = tokio::time::timeout_at(
                loading_since + squall_actors::timing::HISTORY_WAIT,
                history.ready(),
            )
            .await;
        }
        let (addrs, mut api_tasks) = match &history {
            Some(history) if serves_api(cfg) => {
                Box::pin(serve_api(
                    cfg,
                    &engine,
                    history,
                    auth,
                    keys,
                    &stop_api,
                    &audit.exporters,
                ))
                .await?
            }
            _ => ([None, None, None], Vec::new()),
        };
        if let Some(history) = history {
            api_tasks.push(tokio::spawn(squall_actors::history::keep_snapshots(
                bus.clone(),
                history,
                snapshot,
                squall_actors::timing::SNAPSHOT_EVERY,
                stop_api.clone(),
            )));
        }
        let [api_addr, auth_addr, stream_addr] = addrs;
        tracing::info!(node = %cfg.name, api = ?api_addr, auth = ?auth_addr, stream = ?stream_addr,
            partitions = bus.partitions, "node ready");
        Ok(Node {
            api_addr,
            auth_addr,
            stream_addr,
            bus,
            engine,
            stop_api,
            api_tasks,
            audit,
        })
    }

    /// The node's engine (its actors, runners and view of the cluster).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Stops accepting requests, lets running actions record their end, and
    /// stops every actor.
    pub async fn shutdown(self) {
        self.stop_api.cancel();
        for task in self.api_tasks {
            let _ = task.await;
        }
        self.engine.shutdown().await;
        self.audit.stop.cancel();
        self.audit.exporters.join().await;
        let _ = self.audit.publisher.await;
        tracing::info!("node stopped");
    }
}

/// Starts the node's audit emitter and its exporters (the streams are in
/// the node's layout).
fn start_audit(bus: &Bus, cfg: &NodeConfig) -> AuditTasks {
    use squall_actors::audit;
    let stop = CancellationToken::new();
    let publisher = bus.audit.start(bus.js.clone(), &cfg.name, stop.clone());
    let exporters = audit::Exporters::start(&bus.js, &cfg.audit, &stop);
    AuditTasks {
        stop,
        publisher,
        exporters,
    }
}

/// Registers every pack found in the configured directories, as a start
/// does: what the API changed stays, files changed since the last
/// registration are taken. A broken pack is reported and skipped, the
/// others still register.
async fn register_dirs(bus: &Bus, cfg: &NodeConfig, cipher: &Cipher, venvs: &Virtualenvs) {
    let dirs = match api::pack_dirs(&cfg.packs.dirs, &[]) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "cannot list pack directories");
            return;
        }
    };
    for dir in dirs {
        let configs = cfg.packs.configs_dir.as_deref();
        if let Err(e) = content::register_pack(bus, &dir, configs, cipher, Mode::Start, venvs).await
        {
            tracing::error!(pack = %dir.display(), error = %e, "pack not registered");
        }
    }
}

/// On a cluster without users, creates `admin` with a random password. The
/// password goes to `file` (mode 0600) before the user exists, so it is
/// never lost; a node that loses the race to another removes its file.
async fn bootstrap_admin(auth: &AuthStore, file: &Path) -> Result<(), NodeError> {
    if !auth.users().await?.is_empty() {
        return Ok(());
    }
    let password = auth::random_secret()[..24].to_string();
    write_secret_file(file, &password).map_err(|source| NodeError::AdminPassword {
        path: file.to_path_buf(),
        source,
    })?;
    match auth.create_user(ADMIN_USER, &password, Role::Admin).await {
        Ok(_) => {
            tracing::warn!(user = ADMIN_USER, password_file = %file.display(),
                "created the first admin; its password is in the file (readable by this user only)");
            Ok(())
        }
        Err(auth::AuthError::UserExists(_)) => {
            let _ = std::fs::remove_file(file);
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// The datastore cipher from `file`, creating the file with a new random
/// key (mode 0600) when it does not exist.
fn datastore_cipher(file: &Path) -> Result<Cipher, NodeError> {
    let err = |message: String| NodeError::DatastoreKey {
        path: file.to_path_buf(),
        message,
    };
    match std::fs::read_to_string(file) {
        Ok(text) => Cipher::from_hex(&text).map_err(|e| err(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Cipher::generate_hex();
            write_secret_file(file, &key).map_err(|e| err(format!("cannot create it: {e}")))?;
            tracing::warn!(key_file = %file.display(),
                "created the datastore key; back it up, and give every node of the cluster the same file");
            Cipher::from_hex(&key).map_err(|e| err(e.to_string()))
        }
        Err(e) => Err(err(format!("cannot read it: {e}"))),
    }
}

/// Writes `text` to a file only its owner can read (created, or
/// truncated), creating its directory.
pub fn write_secret_file(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // An existing file keeps its mode on open: tighten it.
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    f.write_all(format!("{text}\n").as_bytes())
}

/// The API's listening addresses (api, auth, stream) and serving tasks.
type ApiServers = ([Option<SocketAddr>; 3], Vec<tokio::task::JoinHandle<()>>);

/// Serves the API on the configured ports until `stop_api`.
async fn serve_api(
    cfg: &NodeConfig,
    engine: &Engine,
    history: &HistoryHandle,
    auth: AuthStore,
    keys: KeyStore,
    stop_api: &CancellationToken,
    exporters: &squall_actors::audit::Exporters,
) -> Result<ApiServers, NodeError> {
    let bus = &engine.shared.bus;
    let mut addrs = [None, None, None];
    let mut api_tasks = Vec::new();
    let history = history.clone();
    api_tasks.push(tokio::spawn(squall_actors::inquiries::sweep_until(
        bus.clone(),
        history.clone(),
        stop_api.clone(),
    )));
    api_tasks.push(tokio::spawn(squall_actors::orphans::sweep_until(
        engine.shared.runners.clone(),
        history.clone(),
        stop_api.clone(),
    )));
    api_tasks.push(tokio::spawn(squall_actors::policies::sweep_until(
        bus.clone(),
        engine.shared.catalog.clone(),
        stop_api.clone(),
    )));
    api_tasks.push(tokio::spawn(squall_actors::metrics::watch_jetstream_until(
        bus.clone(),
        stop_api.clone(),
    )));
    let (instances_snapshot, enforcements_snapshot) =
        squall_actors::rule_history::snapshot_paths(&cfg.data_dir);
    let instances =
        squall_actors::rule_history::InstanceHistory::start(bus, Some(instances_snapshot));
    let enforcements =
        squall_actors::rule_history::start_enforcements(bus, Some(enforcements_snapshot));
    api_tasks.push(tokio::spawn(squall_actors::rule_history::keep_snapshots(
        bus.clone(),
        instances.clone(),
        enforcements.clone(),
        cfg.data_dir.clone(),
        squall_actors::timing::SNAPSHOT_EVERY,
        stop_api.clone(),
    )));
    let state = ApiState::new(ApiContext {
        history,
        bus: bus.clone(),
        catalog: engine.shared.catalog.clone(),
        renderer: engine.shared.renderer.clone(),
        kv: engine.shared.kv.clone(),
        pack_dirs: cfg.packs.dirs.clone(),
        configs_dir: cfg.packs.configs_dir.clone(),
        configs: engine.shared.configs.clone(),
        logins: squall_actors::logins::LoginThrottle::open(bus, cfg.auth.login_throttling)?,
        auth,
        keys,
        token_ttl: Duration::from_secs(cfg.auth.token_ttl),
        cluster: engine.cluster.clone(),
        virtualenvs: engine.shared.settings.virtualenvs.clone(),
        audit_exporters: exporters.states.clone(),
        audit_destinations: cfg
            .audit
            .exporters
            .iter()
            .map(|e| e.name().to_string())
            .collect(),
        instances: instances.clone(),
        enforcements: enforcements.clone(),
    });
    // One API, also on StackStorm's auth port so that clients
    // configured for StackStorm's layout find it; its stream port
    // serves the stream alone (paths there mean the stream's).
    let app = api::app(state.clone());
    let wanted = [
        (Some(cfg.api.listen), app.clone()),
        (cfg.api.auth_listen, app),
        (cfg.api.stream_listen, api::stream_app(state)),
    ];
    for (slot, (addr, app)) in addrs.iter_mut().zip(wanted) {
        let Some(addr) = addr else { continue };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| NodeError::Listen { addr, source })?;
        *slot = listener.local_addr().ok();
        let stop = stop_api.clone();
        api_tasks.push(tokio::spawn(async move {
            let served = axum::serve(listener, api::into_service(app))
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "API server failed");
            }
        }));
    }
    Ok((addrs, api_tasks))
}

//! Node configuration: a YAML file for `squall node --config FILE`, built
//! from flags for `squall up`. Unknown fields are rejected with their line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::collections::BTreeSet;

use serde::Deserialize;
use squall_actors::cluster::Role;
use thiserror::Error;

/// Problems with a configuration file.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Everything a node needs to run. Every field has a default suited to a
/// single node on this machine.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Name of this node, unique in the cluster (default: the host name).
    pub name: String,
    /// What this node does: any of `api`, `rules`, `workflows`, `runners`,
    /// `sensors` (or `timers`). Default: all of them.
    pub roles: BTreeSet<Role>,
    pub nats: NatsConfig,
    pub cluster: ClusterConfig,
    pub api: ApiConfig,
    pub packs: PacksConfig,
    pub runners: RunnersConfig,
    pub auth: AuthConfig,
    pub datastore: DatastoreConfig,
    /// Where the node keeps what it builds for itself: pack virtualenvs,
    /// the Python support files its runners and sensors load (default
    /// `data`; `squall up` uses its data directory). Nothing here is the
    /// only copy of anything: a node rebuilds it from the cluster.
    pub data_dir: PathBuf,
    pub virtualenvs: VirtualenvsConfig,
    /// Retention, with StackStorm's `[garbagecollector]` names.
    pub garbagecollector: GarbageCollectorConfig,
    /// The audit trail: retention, size cap, exporters (Splunk HEC,
    /// syslog).
    pub audit: squall_actors::audit::AuditConfig,
    /// How the log is written (`format: text | json`).
    pub log: crate::telemetry::LogConfig,
    /// OpenTelemetry export (off unless `endpoint` is set).
    pub telemetry: crate::telemetry::TelemetryConfig,
}

/// Retention (StackStorm's `[garbagecollector]` section, same names and
/// meanings): each TTL is whole days, at least 1; absent keeps that kind
/// of object for ever. Collected by one node of the cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GarbageCollectorConfig {
    /// Seconds between collection passes (default 600).
    pub collection_interval: u64,
    /// Seconds to wait between object types within a pass (default 2).
    pub sleep_delay: f64,
    /// Finished executions older than this (requested and ended), with
    /// their output and workflow state; a workflow goes with its tasks.
    pub action_executions_ttl: Option<u32>,
    /// Execution output (the `OUTPUT` stream keeps 7 days regardless).
    pub action_executions_output_ttl: Option<u32>,
    pub trigger_instances_ttl: Option<u32>,
    pub rule_enforcements_ttl: Option<u32>,
}

impl Default for GarbageCollectorConfig {
    fn default() -> Self {
        GarbageCollectorConfig {
            collection_interval: 600,
            sleep_delay: 2.0,
            action_executions_ttl: None,
            action_executions_output_ttl: None,
            trigger_instances_ttl: None,
            rule_enforcements_ttl: None,
        }
    }
}

impl GarbageCollectorConfig {
    /// The collector's settings.
    pub fn settings(&self) -> squall_actors::retention::Settings {
        squall_actors::retention::Settings {
            collection_interval: std::time::Duration::from_secs(self.collection_interval),
            sleep_delay: std::time::Duration::from_secs_f64(self.sleep_delay),
            action_executions_ttl: self.action_executions_ttl,
            action_executions_output_ttl: self.action_executions_output_ttl,
            trigger_instances_ttl: self.trigger_instances_ttl,
            rule_enforcements_ttl: self.rule_enforcements_ttl,
        }
    }

    /// The first setting that is out of range, as `field: problem`.
    fn problem(&self) -> Option<String> {
        let min = squall_actors::retention::MINIMUM_TTL_DAYS;
        for (name, ttl) in [
            ("action_executions_ttl", self.action_executions_ttl),
            (
                "action_executions_output_ttl",
                self.action_executions_output_ttl,
            ),
            ("trigger_instances_ttl", self.trigger_instances_ttl),
            ("rule_enforcements_ttl", self.rule_enforcements_ttl),
        ] {
            if ttl.is_some_and(|d| d < min) {
                return Some(format!(
                    "garbagecollector.{name}: the minimum TTL is {min} day, got {}",
                    ttl.unwrap_or_default()
                ));
            }
        }
        if self.collection_interval == 0 {
            return Some("garbagecollector.collection_interval must be at least 1 second".into());
        }
        if !(self.sleep_delay.is_finite() && self.sleep_delay >= 0.0) {
            return Some(format!(
                "garbagecollector.sleep_delay must be a number of seconds, got {}",
                self.sleep_delay
            ));
        }
        None
    }
}

/// How pack virtualenvs (`<data_dir>/virtualenvs/<pack>`) are built.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VirtualenvsConfig {
    /// The interpreter whose `-m venv` makes them (default `python3`).
    pub python: PathBuf,
    /// Install requirements offline from this directory of wheels
    /// (`pip --no-index --find-links`); default: the package index.
    pub wheel_dir: Option<PathBuf>,
    /// Let packs see the interpreter's own packages, StackStorm's default
    /// (default true).
    pub system_site_packages: bool,
    /// Start Python actions from a warm fork server per pack (default
    /// true); false starts a fresh interpreter for each.
    pub fork_server: bool,
}

impl Default for VirtualenvsConfig {
    fn default() -> Self {
        let d = squall_runners::venv::VenvSettings::default();
        VirtualenvsConfig {
            python: d.python,
            wheel_dir: d.wheel_dir,
            system_site_packages: d.system_site_packages,
            fork_server: d.fork_server,
        }
    }
}

impl VirtualenvsConfig {
    /// The runners' settings.
    pub fn settings(&self) -> squall_runners::venv::VenvSettings {
        squall_runners::venv::VenvSettings {
            python: self.python.clone(),
            wheel_dir: self.wheel_dir.clone(),
            system_site_packages: self.system_site_packages,
            fork_server: self.fork_server,
        }
    }
}

/// The datastore.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatastoreConfig {
    /// The AES-256 key sealing secret values, as 64 hex characters; created
    /// (mode 0600) when missing. Every node of a cluster needs the same
    /// file. Default `datastore.key`; `squall up` uses
    /// `<data dir>/datastore.key`.
    pub key_file: PathBuf,
}

impl Default for DatastoreConfig {
    fn default() -> Self {
        DatastoreConfig {
            key_file: PathBuf::from("datastore.key"),
        }
    }
}

/// Authentication. It is always on; these only tune it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Life of a token, in seconds, when the login names none (default
    /// 86400; at most 604800).
    pub token_ttl: u64,
    /// Where the password of the first admin is written (mode 0600) when a
    /// node finds the cluster without users (default `admin-password`;
    /// `squall up` uses `<data dir>/admin-password`).
    pub admin_password_file: PathBuf,
    /// Failed-login throttling: `user` and `address` limits (`free`
    /// failures, then back-off; locked at `lock_after`), `first_backoff`
    /// and `lock_time` in seconds.
    pub login_throttling: squall_actors::logins::Throttling,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            token_ttl: 86_400,
            admin_password_file: PathBuf::from("admin-password"),
            login_throttling: squall_actors::logins::Throttling::default(),
        }
    }
}

/// How to reach NATS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated (default `nats://127.0.0.1:4222`).
    pub url: String,
    /// A `.creds` file (JWT + NKey), if the server wants one.
    pub credentials: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// Replicas of every stream and bucket (1, or 3 on a 3-server cluster).
    pub replicas: usize,
}

/// Cluster-wide settings, fixed when the cluster is first created.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Number of partitions (default 64). Immutable once the cluster exists.
    pub partitions: u32,
}

/// The REST API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address to listen on (default `127.0.0.1:9101`).
    pub listen: SocketAddr,
    /// URL clients and actions use to reach the API (default: from `listen`).
    pub public_url: Option<String>,
    /// Whether this node serves the API at all.
    pub enabled: bool,
    /// Also serve on StackStorm's auth port (default `127.0.0.1:9100`,
    /// where its clients `POST /tokens`); `null` to not.
    pub auth_listen: Option<SocketAddr>,
    /// Also serve on StackStorm's stream port (default `127.0.0.1:9102`,
    /// `GET /v1/stream`); `null` to not.
    pub stream_listen: Option<SocketAddr>,
}

/// Pack directories.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PacksConfig {
    /// Directories holding packs (each subdirectory with a `pack.yaml`).
    pub dirs: Vec<PathBuf>,
    /// Register every pack found in `dirs` when the node starts.
    pub register_on_start: bool,
    /// Where pack config values are read at registration, as
    /// `<configs_dir>/<pack>.yaml` (StackStorm's `/opt/stackstorm/configs`),
    /// and written by `PUT /configs/{pack}`. Default: none (configs come
    /// from the API only); `squall up` uses `<data dir>/configs`.
    pub configs_dir: Option<PathBuf>,
}

/// Runner pools served by this node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunnersConfig {
    /// Pools to pull executions from (default `[default]`; empty: none).
    pub pools: Vec<String>,
    /// Executions run at once per pool (default 64).
    pub concurrency: i64,
    /// How the remote runners log in to hosts.
    pub ssh: SshConfig,
}

/// `runners.ssh`: the remote runners' SSH settings (StackStorm's
/// `system_user` and `ssh_runner` sections).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SshConfig {
    /// User when an action gives no `username` (default: the user the node
    /// runs as).
    pub user: Option<String>,
    /// Private key when an action gives neither `password` nor
    /// `private_key` (default: none).
    pub key_file: Option<PathBuf>,
    /// A known_hosts file checked besides the node user's
    /// `~/.ssh/known_hosts`. A host key found in neither is refused.
    pub known_hosts: Option<PathBuf>,
    /// `false` accepts any host key (logging a warning): only for hosts
    /// you cannot list in known_hosts (default `true`).
    pub strict_host_key_checking: bool,
    /// Seconds to connect and log in (default 60).
    pub connect_timeout: u64,
    /// Seconds an unused connection stays open for the next execution on
    /// the same host, user and credentials; 0 closes it after each
    /// execution (default 60).
    pub pool_idle_timeout: u64,
    /// Hosts a `parallel` execution talks to at once (default 50).
    pub max_parallel: usize,
}

impl Default for SshConfig {
    fn default() -> Self {
        let d = squall_runners::SshSettings::default();
        SshConfig {
            user: d.user,
            key_file: d.key_file,
            known_hosts: None,
            strict_host_key_checking: d.strict_host_key_checking,
            connect_timeout: d.connect_timeout.as_secs(),
            pool_idle_timeout: d.pool_idle_timeout.as_secs(),
            max_parallel: d.max_parallel,
        }
    }
}

impl SshConfig {
    /// The settings the runners are built with.
    pub fn settings(&self) -> squall_runners::SshSettings {
        let mut known_hosts = squall_runners::SshSettings::default().known_hosts;
        known_hosts.extend(self.known_hosts.clone());
        squall_runners::SshSettings {
            user: self.user.clone(),
            key_file: self.key_file.clone(),
            known_hosts,
            strict_host_key_checking: self.strict_host_key_checking,
            connect_timeout: std::time::Duration::from_secs(self.connect_timeout),
            pool_idle_timeout: std::time::Duration::from_secs(self.pool_idle_timeout),
            max_parallel: self.max_parallel,
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            name: default_node_name(),
            roles: Role::ALL.into_iter().collect(),
            nats: NatsConfig::default(),
            cluster: ClusterConfig::default(),
            api: ApiConfig::default(),
            packs: PacksConfig::default(),
            runners: RunnersConfig::default(),
            auth: AuthConfig::default(),
            datastore: DatastoreConfig::default(),
            data_dir: PathBuf::from("data"),
            virtualenvs: VirtualenvsConfig::default(),
            garbagecollector: GarbageCollectorConfig::default(),
            audit: squall_actors::audit::AuditConfig::default(),
            log: crate::telemetry::LogConfig::default(),
            telemetry: crate::telemetry::TelemetryConfig::default(),
        }
    }
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: "nats://127.0.0.1:4222".into(),
            credentials: None,
            user: None,
            password: None,
            token: None,
            replicas: 1,
        }
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig { partitions: 64 }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9101)),
            public_url: None,
            enabled: true,
            auth_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9100))),
            stream_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9102))),
        }
    }
}

impl Default for PacksConfig {
    fn default() -> Self {
        PacksConfig {
            dirs: vec![PathBuf::from("packs")],
            register_on_start: true,
            configs_dir: None,
        }
    }
}

impl Default for RunnersConfig {
    fn default() -> Self {
        RunnersConfig {
            pools: vec![squall_domain::execution::DEFAULT_POOL.to_string()],
            concurrency: 64,
            ssh: SshConfig::default(),
        }
    }
}

fn default_node_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| squall_actors::cluster::is_node_name(s))
        .unwrap_or_else(|| "squall".into())
}

impl NodeConfig {
    /// Reads and validates a YAML config file.
    pub fn from_file(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml(&text, path)
    }

    /// Parses and validates YAML; `path` names the source in errors.
    pub fn from_yaml(text: &str, path: &Path) -> Result<NodeConfig, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let cfg: NodeConfig = if text.trim().is_empty() {
            NodeConfig::default()
        } else {
            serde_yaml::from_str(text).map_err(|e| {
                let at = e
                    .location()
                    .map(|l| format!("line {}: ", l.line()))
                    .unwrap_or_default();
                invalid(format!("{at}{e}"))
            })?
        };
        if !squall_actors::cluster::is_node_name(&cfg.name) {
            return Err(invalid(format!(
                "name: {:?} is not a valid node name (letters, digits, - and _, in dot-separated parts)",
                cfg.name
            )));
        }
        if cfg.cluster.partitions == 0 || cfg.cluster.partitions > 4096 {
            return Err(invalid(format!(
                "cluster.partitions must be between 1 and 4096, got {}",
                cfg.cluster.partitions
            )));
        }
        if cfg.roles.is_empty() {
            return Err(invalid("roles: a node needs at least one role".into()));
        }
        cfg.telemetry.check().map_err(invalid)?;
        if cfg.runners.concurrency < 1 {
            return Err(invalid("runners.concurrency must be at least 1".into()));
        }
        if cfg.runners.ssh.connect_timeout == 0 {
            return Err(invalid(
                "runners.ssh.connect_timeout must be at least 1 second".into(),
            ));
        }
        if cfg.runners.ssh.max_parallel == 0 {
            return Err(invalid(
                "runners.ssh.max_parallel must be at least 1".into(),
            ));
        }
        let max_ttl = squall_actors::auth::MAX_TOKEN_TTL.as_secs();
        if cfg.auth.token_ttl == 0 || cfg.auth.token_ttl > max_ttl {
            return Err(invalid(format!(
                "auth.token_ttl must be between 1 and {max_ttl} seconds, got {}",
                cfg.auth.token_ttl
            )));
        }
        cfg.auth.login_throttling.check().map_err(invalid)?;
        if cfg.nats.replicas == 0 || cfg.nats.replicas > 5 {
            return Err(invalid("nats.replicas must be between 1 and 5".into()));
        }
        if let Some(problem) = cfg.garbagecollector.problem() {
            return Err(invalid(problem));
        }
        cfg.audit.validate().map_err(invalid)?;
        for pool in &cfg.runners.pools {
            if !squall_actors::executions::is_pool_name(pool) {
                return Err(invalid(format!(
                    "runners.pools: {pool:?} is not a valid pool name (letters, digits, - and _)"
                )));
            }
        }
        Ok(cfg)
    }

    /// The URL clients and actions use to reach the API.
    pub fn public_url(&self) -> String {
        self.api
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.api.listen))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let cfg = NodeConfig::from_yaml("", Path::new("x.yaml")).unwrap();
        assert_eq!(cfg.cluster.partitions, 64);
        assert_eq!(cfg.api.listen.port(), 9101);
        assert_eq!(cfg.runners.pools, vec!["default"]);
    }

    #[test]
    fn garbage_collector_settings_are_days_at_least_one() {
        let ok = NodeConfig::from_yaml(
            "garbagecollector:\n  action_executions_ttl: 30\n  collection_interval: 60\n",
            Path::new("n.yaml"),
        )
        .unwrap();
        let s = ok.garbagecollector.settings();
        assert_eq!(s.action_executions_ttl, Some(30));
        assert!(s.enabled() && s.trigger_instances_ttl.is_none());
        assert!(!NodeConfig::default().garbagecollector.settings().enabled());
        for (yaml, needle) in [
            ("garbagecollector:\n  trigger_instances_ttl: 7d\n", "line 2"),
            (
                "garbagecollector:\n  trigger_instances_ttl: 0\n",
                "minimum TTL",
            ),
            ("garbagecollector:\n  action_executions_ttl: -3\n", "line 2"),
            (
                "garbagecollector:\n  purge_incomplete: true\n",
                "purge_incomplete",
            ),
        ] {
            let err = NodeConfig::from_yaml(yaml, Path::new("n.yaml"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(needle) && err.contains("n.yaml"),
                "{yaml}: {err}"
            );
        }
    }

    #[test]
    fn unknown_fields_are_rejected_with_line() {
        let err =
            NodeConfig::from_yaml("nats:\n  url: nats://x:1\n  urll: y\n", Path::new("n.yaml"))
                .unwrap_err()
                .to_string();
        assert!(err.contains("n.yaml"), "{err}");
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("urll"), "{err}");
    }

    #[test]
    fn roles_default_to_all_and_accept_timers() {
        let cfg = NodeConfig::from_yaml("", Path::new("x.yaml")).unwrap();
        assert_eq!(cfg.roles.len(), Role::ALL.len());
        let cfg = NodeConfig::from_yaml("roles: [runners, timers]\n", Path::new("x.yaml")).unwrap();
        assert_eq!(
            cfg.roles.into_iter().collect::<Vec<_>>(),
            vec![Role::Runners, Role::Sensors]
        );
    }

    #[test]
    fn bad_values_are_rejected() {
        for bad in [
            "cluster:\n  partitions: 0\n",
            "runners:\n  concurrency: 0\n",
            "runners:\n  ssh:\n    connect_timeout: 0\n",
            "runners:\n  ssh:\n    max_parallel: 0\n",
            "runners:\n  ssh:\n    strict_host_keys: false\n",
            "runners:\n  pools: ['a.b']\n",
            "nats:\n  replicas: 0\n",
            "roles: [api, cook]\n",
            "roles: []\n",
            "audit:\n  retention_days: 0\n",
        ] {
            assert!(
                NodeConfig::from_yaml(bad, Path::new("c.yaml")).is_err(),
                "{bad}"
            );
        }
        for bad in [
            "name: 'node 1'\n",
            "name: 'n.*'\n",
            "name: 'n..1'\n",
            "name: ''\n",
        ] {
            let err = NodeConfig::from_yaml(bad, Path::new("c.yaml"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("c.yaml") && err.contains("not a valid node name"),
                "{bad}: {err}"
            );
        }
        let err = NodeConfig::from_yaml(
            "audit:\n  exporters:\n  - type: syslog\n    name: siem\n    adress: 'h:514'\n",
            Path::new("c.yaml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("c.yaml") && err.contains("adress"), "{err}");
        for (yaml, needle) in [
            (
                "auth:\n  login_throttling:\n    user: {free: 5, lock_afer: 10}\n",
                "lock_afer",
            ),
            (
                "auth:\n  login_throttling:\n    address: {free: 9, lock_after: 3}\n",
                "auth.login_throttling.address",
            ),
            (
                "auth:\n  login_throttling:\n    first_backoff: -1\n",
                "line 3",
            ),
        ] {
            let err = NodeConfig::from_yaml(yaml, Path::new("c.yaml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("c.yaml") && err.contains(needle), "{err}");
        }
        let tuned = NodeConfig::from_yaml(
            "auth:\n  login_throttling:\n    user: {free: 3, lock_after: 6}\n    lock_time: 600\n",
            Path::new("c.yaml"),
        )
        .unwrap();
        assert_eq!(tuned.auth.login_throttling.user.free, 3);
        assert_eq!(tuned.auth.login_throttling.address.free, 20);
        assert_eq!(tuned.auth.login_throttling.first_backoff, 30);
        let host = NodeConfig::from_yaml("name: ip-10-0-0-1.ec2.internal\n", Path::new("c.yaml"));
        assert!(host.is_ok(), "{host:?}");
    }
}

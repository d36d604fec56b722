//! The command line: every subcommand and its options (clap).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use squall::telemetry::LogFormat;
use squall_actors::cluster::Role;

#[derive(Debug, Parser)]
#[command(
    name = "squall",
    version,
    about = "Event-driven automation for operations"
)]
pub(super) struct Args {
    /// API URL for client commands (default: the settings file's `url`,
    /// else http://127.0.0.1:9101).
    #[arg(long, global = true, env = "SQUALL_URL")]
    pub(super) url: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub(super) json: bool,
    /// Access token (default: the one `squall login` saved).
    #[arg(long, global = true, env = "SQUALL_AUTH_TOKEN", hide_env_values = true)]
    pub(super) token: Option<String>,
    /// API key, instead of a token.
    #[arg(long, global = true, env = "SQUALL_API_KEY", hide_env_values = true)]
    pub(super) api_key: Option<String>,
    /// Log format of `squall up` and `squall node` (overrides node.yaml's
    /// `log.format`): `text`, or `json` lines with trace and span ids.
    #[arg(long, global = true, value_enum)]
    pub(super) log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub(super) command: Command,
}

#[derive(Debug, Subcommand)]
pub(super) enum Command {
    /// Run a single-machine Squall: a managed nats-server plus one node.
    Up {
        /// Where nats-server keeps its data and logs.
        #[arg(long, env = "SQUALL_DATA_DIR", default_value = ".squall")]
        data_dir: PathBuf,
        /// Port of the managed nats-server on 127.0.0.1.
        #[arg(long, default_value_t = 4222)]
        nats_port: u16,
        /// nats-server binary (default: .venv/bin/nats-server, then PATH).
        #[arg(long, env = "SQUALL_NATS_SERVER")]
        nats_server: Option<PathBuf>,
        /// Address of the REST API.
        #[arg(long, default_value = "127.0.0.1:9101")]
        listen: SocketAddr,
        /// The same API on StackStorm's auth port (`POST /tokens`).
        #[arg(long, default_value = "127.0.0.1:9100")]
        auth_listen: SocketAddr,
        /// The same API on StackStorm's stream port (`GET /v1/stream`).
        #[arg(long, default_value = "127.0.0.1:9102")]
        stream_listen: SocketAddr,
        /// Pack directories (repeatable; default: ./packs).
        #[arg(long = "packs-dir")]
        packs_dirs: Vec<PathBuf>,
        /// A node config file whose settings apply (NATS settings are
        /// replaced by the managed server's).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run a node against an existing NATS deployment (`--config`), or
    /// list the cluster's nodes (`squall node list`).
    #[command(args_conflicts_with_subcommands = true)]
    Node {
        #[command(subcommand)]
        command: Option<NodeCommand>,
        /// Node config file (YAML).
        #[arg(long, required = true)]
        config: Option<PathBuf>,
        /// What this node does, comma-separated: api, rules, workflows,
        /// runners, sensors (or timers). Overrides the config's `roles`.
        #[arg(long, value_delimiter = ',', value_parser = parse_role)]
        roles: Vec<Role>,
    },
    /// Run an action: `squall run core.local cmd=date`, or
    /// `squall run core.local -- ls -la` (the words from the first one
    /// without `=` on are joined into `cmd`, as StackStorm's CLI does).
    Run {
        /// Action reference (pack.action).
        action: String,
        /// Parameters as key=value, then the command's words.
        params: Vec<String>,
        /// Return the execution id at once instead of waiting.
        #[arg(long = "async", conflicts_with = "tail")]
        detach: bool,
        /// Print the output live while it runs.
        #[arg(long)]
        tail: bool,
    },
    /// Log in: get a token for the next commands.
    Login {
        #[arg(short, long, default_value = "admin")]
        user: String,
        /// Read the password from this file (e.g. .squall/admin-password);
        /// otherwise from SQUALL_PASSWORD or standard input.
        #[arg(long)]
        password_file: Option<std::path::PathBuf>,
    },
    /// Executions.
    Execution {
        #[command(subcommand)]
        command: ExecutionCommand,
    },
    /// Packs.
    Pack {
        #[command(subcommand)]
        command: PackCommand,
    },
    /// The datastore.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Rules.
    Rule {
        #[command(subcommand)]
        command: RuleCommand,
    },
    /// Triggers that rules listen to.
    Trigger {
        #[command(subcommand)]
        command: ListOnly,
    },
    /// Inquiries: questions actions ask people.
    Inquiry {
        #[command(subcommand)]
        command: InquiryCommand,
    },
    /// Trigger instances.
    #[command(name = "trigger-instance")]
    TriggerInstance {
        #[command(subcommand)]
        command: TriggerInstanceCommand,
    },
    /// Webhooks that rules listen on.
    Webhook {
        #[command(subcommand)]
        command: ListOnly,
    },
    /// API keys.
    Apikey {
        #[command(subcommand)]
        command: ApikeyCommand,
    },
    /// Actions.
    Action {
        #[command(subcommand)]
        command: ActionCommand,
    },
    /// Failed-login holds (admins only).
    Lockout {
        #[command(subcommand)]
        command: LockoutCommand,
    },
    /// The audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum LockoutCommand {
    /// Users and client addresses with recent failed logins.
    List,
    /// Lift a hold: `squall lockout clear user alice` or `... address 10.0.0.7`.
    Clear {
        /// `user` or `address`.
        kind: String,
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum AuditCommand {
    /// The AUDIT stream and, per destination, export lag and the age of
    /// the oldest event not yet confirmed.
    Status,
}

#[derive(Debug, Subcommand)]
pub(super) enum ActionCommand {
    /// List actions.
    List {
        /// Only this pack's.
        #[arg(short, long)]
        pack: Option<String>,
    },
    /// Show one action, its parameters as a table.
    Get { reference: String },
}

#[derive(Debug, Subcommand)]
pub(super) enum NodeCommand {
    /// The cluster's live nodes: roles, runner pools, partitions owned,
    /// last heartbeat.
    List,
}

fn parse_role(name: &str) -> Result<Role, String> {
    Role::parse(name)
}

#[derive(Debug, Subcommand)]
pub(super) enum KeyCommand {
    /// List pairs.
    List {
        #[arg(long)]
        prefix: Option<String>,
        /// system (default), user or all.
        #[arg(long)]
        scope: Option<String>,
        /// Show secrets opened (if your role allows).
        #[arg(long)]
        decrypt: bool,
    },
    /// Show one pair.
    Get {
        name: String,
        #[arg(long)]
        scope: Option<String>,
        #[arg(long)]
        decrypt: bool,
    },
    /// Set a pair.
    Set {
        name: String,
        value: String,
        /// Store the value sealed (secret).
        #[arg(long)]
        encrypt: bool,
        /// Seconds until the pair vanishes.
        #[arg(long)]
        ttl: Option<u64>,
        #[arg(long)]
        scope: Option<String>,
    },
    /// Delete a pair.
    Delete {
        name: String,
        #[arg(long)]
        scope: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum RuleCommand {
    /// List rules.
    List {
        /// Only this pack's.
        #[arg(short, long)]
        pack: Option<String>,
    },
    /// Show one rule.
    Get { reference: String },
    /// Create a rule from a YAML or JSON file (a pack's rule file).
    Create { file: PathBuf },
    /// Enable a rule.
    Enable { reference: String },
    /// Disable a rule.
    Disable { reference: String },
    /// Delete a rule.
    Delete { reference: String },
    /// Test a rule against a trigger instance or a payload, as
    /// st2-rule-tester does: whether it matches, each criterion's verdict,
    /// the action parameters it would render. Runs and writes nothing.
    /// Exit status 0 when the rule matches, 2 when it does not.
    Test {
        /// A registered rule (ref or id), enabled or not.
        reference: Option<String>,
        /// A rule file (YAML or JSON) instead of a registered rule.
        #[arg(long)]
        rule_file: Option<PathBuf>,
        /// The id of a stored trigger instance.
        #[arg(long)]
        trigger_instance: Option<String>,
        /// A file (YAML or JSON) holding a payload for the rule's trigger.
        #[arg(long)]
        payload: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum InquiryCommand {
    /// Inquiries waiting for a response.
    List,
    /// Show one inquiry and its schema.
    Get { id: String },
    /// Answer: `squall inquiry respond ID approve=true reason="looks fine"`.
    Respond {
        id: String,
        /// Response fields as key=value (values are JSON when they parse).
        pairs: Vec<String>,
        /// The whole response as a JSON object instead.
        #[arg(long, conflicts_with = "pairs")]
        response: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum TriggerInstanceCommand {
    /// List trigger instances, newest first.
    List {
        #[arg(short = 'n', long, default_value_t = 50)]
        limit: u32,
    },
    /// Show one trigger instance.
    Get { id: String },
}

#[derive(Debug, Subcommand)]
pub(super) enum ListOnly {
    /// List them.
    List,
}

#[derive(Debug, Subcommand)]
pub(super) enum ApikeyCommand {
    /// Create a key (shown once).
    Create {
        /// For another user (admins only).
        #[arg(long)]
        user: Option<String>,
    },
    /// List keys (never the keys themselves).
    List,
    /// Delete a key by id.
    Delete { id: String },
}

#[derive(Debug, Subcommand)]
pub(super) enum ExecutionCommand {
    /// List executions, newest first.
    List {
        #[arg(short = 'n', long, default_value_t = 50)]
        limit: u32,
        /// Only executions of this action.
        #[arg(short = 'a', long)]
        action: Option<String>,
        /// Only executions with this status.
        #[arg(short = 's', long)]
        status: Option<String>,
        /// Only those a rule (ref or id) started.
        #[arg(long)]
        rule: Option<String>,
        /// Only those this trigger instance caused.
        #[arg(long)]
        trigger_instance: Option<String>,
        /// Only children of this execution (`null`: top-level only).
        #[arg(long)]
        parent: Option<String>,
        /// Only this user's.
        #[arg(long)]
        user: Option<String>,
        /// Only those requested after this time (ISO 8601).
        #[arg(long)]
        since: Option<String>,
        /// Only those requested before this time (ISO 8601).
        #[arg(long)]
        until: Option<String>,
    },
    /// The executions under one (a workflow's tasks), as a tree.
    Children {
        id: String,
        /// Levels down (default: all).
        #[arg(long)]
        depth: Option<i64>,
    },
    /// Show one execution.
    Get { id: String },
    /// Cancel an unfinished execution.
    Cancel { id: String },
    /// Pause a running workflow (its child workflows pause too).
    Pause { id: String },
    /// Resume a paused workflow.
    Resume { id: String },
    /// Run an execution again, parameters overriding the original's.
    #[command(name = "re-run")]
    ReRun {
        id: String,
        /// key=value overrides.
        params: Vec<String>,
        /// A failed workflow: re-run from these tasks (comma-separated),
        /// keeping the original's context and finished tasks.
        #[arg(long, value_delimiter = ',')]
        tasks: Vec<String>,
        /// Return the new execution's id at once instead of waiting.
        #[arg(long = "async")]
        detach: bool,
    },
    /// Follow an execution's live output until it ends.
    Tail { id: String },
    /// Remove finished executions requested and ended before a time, with
    /// their output; a workflow goes with its tasks (StackStorm's
    /// `st2-purge-executions`; admins only).
    Purge {
        /// ISO 8601 time (e.g. 2026-01-31T00:00:00Z).
        #[arg(long)]
        before: String,
        /// Only executions of this action.
        #[arg(short = 'a', long)]
        action: Option<String>,
        /// Only executions that ended with this status.
        #[arg(short = 's', long)]
        status: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum PackCommand {
    /// Register packs from the node's pack directories (all, or the named).
    Register { packs: Vec<String> },
    /// List registered packs.
    List,
    /// Install packs for every node: git URLs, file:// URLs or paths of git
    /// repositories (each optionally `=<ref>`), or plain directories.
    Install {
        #[arg(required = true)]
        sources: Vec<String>,
        /// Install even when the pack's python_versions exclude Python 3.
        #[arg(long)]
        force: bool,
        /// Do not install the packs listed in pack.yaml's dependencies.
        #[arg(long)]
        skip_dependencies: bool,
    },
    /// Uninstall packs installed with `pack install`, from every node.
    Uninstall {
        #[arg(required = true)]
        packs: Vec<String>,
    },
}

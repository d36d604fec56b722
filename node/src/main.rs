//! `squall`: one binary. `squall up` runs a single-machine Squall with a
//! managed nats-server; `squall node` runs a peer against existing NATS;
//! every other subcommand is a client of the REST API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use reqwest::Method;
use serde_json::json;
use squall::cli::{self, Client};
use squall::config::NodeConfig;
use squall::managed_nats::{self, ManagedNats};
use squall::node::Node;
use squall::telemetry::LogFormat;
use squall_actors::cluster::Role;

#[derive(Debug, Parser)]
#[command(
    name = "squall",
    version,
    about = "Event-driven automation for operations"
)]
struct Args {
    /// API URL for client commands (default: the settings file's `url`,
    /// else http://127.0.0.1:9101).
    #[arg(long, global = true, env = "SQUALL_URL")]
    url: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Access token (default: the one `squall login` saved).
    #[arg(long, global = true, env = "SQUALL_AUTH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// API key, instead of a token.
    #[arg(long, global = true, env = "SQUALL_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Log format of `squall up` and `squall node` (overrides node.yaml's
    /// `log.format`): `text`, or `json` lines with trace and span ids.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
enum LockoutCommand {
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
enum AuditCommand {
    /// The AUDIT stream and, per destination, export lag and the age of
    /// the oldest event not yet confirmed.
    Status,
}

#[derive(Debug, Subcommand)]
enum ActionCommand {
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
enum NodeCommand {
    /// The cluster's live nodes: roles, runner pools, partitions owned,
    /// last heartbeat.
    List,
}

fn parse_role(name: &str) -> Result<Role, String> {
    Role::parse(name)
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
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
enum RuleCommand {
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
enum InquiryCommand {
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
enum TriggerInstanceCommand {
    /// List trigger instances, newest first.
    List {
        #[arg(short = 'n', long, default_value_t = 50)]
        limit: u32,
    },
    /// Show one trigger instance.
    Get { id: String },
}

#[derive(Debug, Subcommand)]
enum ListOnly {
    /// List them.
    List,
}

#[derive(Debug, Subcommand)]
enum ApikeyCommand {
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
enum ExecutionCommand {
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
enum PackCommand {
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

fn main() -> ExitCode {
    let args = Args::parse();
    if !matches!(
        args.command,
        Command::Up { .. } | Command::Node { command: None, .. }
    ) {
        cli::exit_quietly_when_stdout_closes();
    }
    // Actors start their children from their own tasks; unoptimised builds
    // need more than the default 2 MiB per worker for those futures.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(8 * 1024 * 1024)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(args: Args) -> anyhow::Result<bool> {
    let client = match &args.command {
        // A node does not read the client's settings.
        Command::Up { .. } | Command::Node { command: None, .. } => {
            Client::new(cli::DEFAULT_URL, cli::Credentials::None)
        }
        _ => {
            let settings = cli::CliConfig::load()?;
            let url = args
                .url
                .clone()
                .or_else(|| settings.url.clone())
                .unwrap_or_else(|| cli::DEFAULT_URL.to_string());
            let credentials =
                cli::Credentials::resolve(args.token.clone(), args.api_key.clone(), &settings);
            Client::new(&url, credentials)
        }
    };
    match args.command {
        Command::Up {
            data_dir,
            nats_port,
            nats_server,
            listen,
            auth_listen,
            stream_listen,
            packs_dirs,
            config,
        } => {
            let mut cfg = match config {
                Some(path) => NodeConfig::from_file(&path)?,
                None => NodeConfig::default(),
            };
            let telemetry = init_telemetry(&mut cfg, args.log_format)?;
            cfg.api.listen = listen;
            cfg.api.auth_listen = Some(auth_listen);
            cfg.api.stream_listen = Some(stream_listen);
            cfg.auth.admin_password_file = data_dir.join("admin-password");
            cfg.datastore.key_file = data_dir.join("datastore.key");
            cfg.data_dir = data_dir.clone();
            cfg.packs.configs_dir = Some(data_dir.join("configs"));
            if !packs_dirs.is_empty() {
                cfg.packs.dirs = packs_dirs;
            }
            let binary = managed_nats::locate(nats_server.as_deref())?;
            let started = std::time::Instant::now();
            let nats = ManagedNats::start(binary, nats_port, &data_dir).await?;
            cfg.nats.url = nats.url();
            let node = match Node::start(&cfg).await {
                Ok(n) => n,
                Err(e) => {
                    nats.stop().await;
                    return Err(e.into());
                }
            };
            tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64,
                data_dir = %data_dir.display(), nats = %nats.url(),
                "squall is up at {}; press Ctrl-C to stop", cfg.public_url());
            wait_for_signal().await?;
            node.shutdown().await;
            nats.stop().await;
            telemetry.shutdown().await;
            Ok(true)
        }
        Command::Node {
            command: Some(NodeCommand::List),
            ..
        } => {
            cli::node_list(&client, args.json).await?;
            Ok(true)
        }
        Command::Audit {
            command: AuditCommand::Status,
        } => {
            cli::audit_status(&client, args.json).await?;
            Ok(true)
        }
        Command::Node {
            command: None,
            config,
            roles,
        } => {
            let config = config.context("--config is required to run a node")?;
            let mut cfg = NodeConfig::from_file(&config)?;
            let telemetry = init_telemetry(&mut cfg, args.log_format)?;
            if !roles.is_empty() {
                cfg.roles = roles.into_iter().collect();
            }
            let node = Node::start(&cfg).await?;
            wait_for_signal().await?;
            node.shutdown().await;
            telemetry.shutdown().await;
            Ok(true)
        }
        Command::Login {
            user,
            password_file,
        } => {
            let password = read_password(password_file.as_deref())?;
            cli::login(&client, &user, &password, args.json).await?;
            Ok(true)
        }
        Command::Run {
            action,
            params,
            detach,
            tail,
        } => {
            let mode = match (detach, tail) {
                (true, _) => cli::RunMode::Detach,
                (_, true) => cli::RunMode::Tail,
                _ => cli::RunMode::Wait,
            };
            Ok(cli::run(&client, &action, &params, mode, args.json).await?)
        }
        Command::Execution { command } => {
            match command {
                ExecutionCommand::List {
                    limit,
                    action,
                    status,
                    rule,
                    trigger_instance,
                    parent,
                    user,
                    since,
                    until,
                } => {
                    let filters = cli::ExecutionFilters {
                        action,
                        status,
                        rule,
                        trigger_instance,
                        parent,
                        user,
                        timestamp_gt: since,
                        timestamp_lt: until,
                    };
                    cli::execution_list(&client, limit, &filters, args.json).await?
                }
                ExecutionCommand::Children { id, depth } => {
                    cli::execution_children(&client, &id, depth, args.json).await?
                }
                ExecutionCommand::Get { id } => cli::execution_get(&client, &id, args.json).await?,
                ExecutionCommand::Cancel { id } => {
                    cli::execution_cancel(&client, &id, args.json).await?
                }
                ExecutionCommand::Pause { id } => {
                    let body = json!({"status": "pausing"});
                    let v = client
                        .call(Method::PUT, &format!("executions/{id}"), Some(&body))
                        .await?;
                    cli::show(&v, args.json);
                }
                ExecutionCommand::Resume { id } => {
                    let body = json!({"status": "resuming"});
                    let v = client
                        .call(Method::PUT, &format!("executions/{id}"), Some(&body))
                        .await?;
                    cli::show(&v, args.json);
                }
                ExecutionCommand::ReRun {
                    id,
                    params,
                    tasks,
                    detach,
                } => {
                    let mode = if detach {
                        cli::RunMode::Detach
                    } else {
                        cli::RunMode::Wait
                    };
                    let body = json!({"parameters": cli::parse_params(&params)?, "tasks": tasks});
                    let created = client
                        .post(&format!("executions/{id}/re_run"), &body)
                        .await?;
                    return Ok(cli::follow(&client, &created, mode, args.json).await?);
                }
                ExecutionCommand::Tail { id } => {
                    return Ok(cli::execution_tail(&client, &id).await?)
                }
                ExecutionCommand::Purge {
                    before,
                    action,
                    status,
                } => {
                    let body = json!({"before": before, "action": action, "status": status});
                    let v = client.post("executions/purge", &body).await?;
                    if args.json {
                        cli::show(&v, true);
                    } else {
                        println!(
                            "{} executions purged ({} old workflows kept: part of them still runs)",
                            v["deleted"], v["kept_running"]
                        );
                    }
                }
            }
            Ok(true)
        }
        Command::Pack {
            command: PackCommand::Register { packs },
        } => {
            cli::pack_register(&client, &packs, args.json).await?;
            Ok(true)
        }
        Command::Pack {
            command:
                PackCommand::Install {
                    sources,
                    force,
                    skip_dependencies,
                },
        } => {
            let body =
                json!({"packs": sources, "force": force, "skip_dependencies": skip_dependencies});
            Ok(
                cli::pack_manage(&client, "packs/install", &body, "packs.install", args.json)
                    .await?,
            )
        }
        Command::Pack {
            command: PackCommand::Uninstall { packs },
        } => {
            let body = json!({ "packs": packs });
            Ok(cli::pack_manage(
                &client,
                "packs/uninstall",
                &body,
                "packs.uninstall",
                args.json,
            )
            .await?)
        }
        Command::Pack {
            command: PackCommand::List,
        } => {
            let cols = [
                ("ref", "/ref"),
                ("version", "/version"),
                ("description", "/description"),
            ];
            cli::list_table(&client, "packs", &cols, args.json).await?;
            Ok(true)
        }
        Command::Key { command } => {
            key_command(&client, command, args.json).await?;
            Ok(true)
        }
        Command::Rule { command } => {
            match command {
                RuleCommand::List { pack } => {
                    let cols = [
                        ("ref", "/ref"),
                        ("enabled", "/enabled"),
                        ("trigger", "/trigger/type"),
                        ("action", "/action/ref"),
                    ];
                    let path = cli::with_query("rules", &[("pack", pack)]);
                    cli::list_table(&client, &path, &cols, args.json).await?;
                }
                RuleCommand::Get { reference } => {
                    let (v, _) = client.get(&format!("rules/{reference}")).await?;
                    cli::show(&v, args.json);
                }
                RuleCommand::Create { file } => cli::rule_create(&client, &file, args.json).await?,
                RuleCommand::Enable { reference } => {
                    cli::rule_set_enabled(&client, &reference, true, args.json).await?
                }
                RuleCommand::Disable { reference } => {
                    cli::rule_set_enabled(&client, &reference, false, args.json).await?
                }
                RuleCommand::Delete { reference } => {
                    client
                        .call(Method::DELETE, &format!("rules/{reference}"), None)
                        .await?;
                    println!("rule {reference} deleted");
                }
                RuleCommand::Test {
                    reference,
                    rule_file,
                    trigger_instance,
                    payload,
                } => {
                    let rule = cli::RuleToTest::from_args(reference, rule_file)?;
                    let event = cli::TestEvent::from_args(trigger_instance, payload)?;
                    return Ok(cli::rule_test(&client, &rule, &event, args.json).await?);
                }
            }
            Ok(true)
        }
        Command::Trigger {
            command: ListOnly::List,
        } => {
            let cols = [
                ("ref", "/ref"),
                ("type", "/type"),
                ("parameters", "/parameters"),
            ];
            cli::list_table(&client, "triggers", &cols, args.json).await?;
            Ok(true)
        }
        Command::Inquiry { command } => {
            match command {
                InquiryCommand::List => {
                    let cols = [
                        ("id", "/id"),
                        ("route", "/route"),
                        ("ttl", "/ttl"),
                        ("users", "/users"),
                        ("roles", "/roles"),
                        ("asked", "/start_timestamp"),
                    ];
                    cli::list_table(&client, "inquiries", &cols, args.json).await?;
                }
                InquiryCommand::Get { id } => {
                    let (v, _) = client.get(&format!("inquiries/{id}")).await?;
                    cli::show(&v, args.json);
                }
                InquiryCommand::Respond {
                    id,
                    pairs,
                    response,
                } => {
                    cli::inquiry_respond(&client, &id, &pairs, response.as_deref(), args.json)
                        .await?
                }
            }
            Ok(true)
        }
        Command::TriggerInstance { command } => {
            match command {
                TriggerInstanceCommand::List { limit } => {
                    let cols = [
                        ("id", "/id"),
                        ("trigger", "/trigger"),
                        ("occurrence_time", "/occurrence_time"),
                        ("status", "/status"),
                    ];
                    cli::list_table(
                        &client,
                        &format!("triggerinstances?limit={limit}"),
                        &cols,
                        args.json,
                    )
                    .await?;
                }
                TriggerInstanceCommand::Get { id } => {
                    let (v, _) = client.get(&format!("triggerinstances/{id}")).await?;
                    cli::show(&v, args.json);
                }
            }
            Ok(true)
        }
        Command::Webhook {
            command: ListOnly::List,
        } => {
            let cols = [
                ("url", "/parameters/url"),
                ("type", "/type"),
                ("rule", "/rule"),
            ];
            cli::list_table(&client, "webhooks", &cols, args.json).await?;
            Ok(true)
        }
        Command::Action { command } => {
            match command {
                ActionCommand::List { pack } => {
                    let cols = [
                        ("ref", "/ref"),
                        ("pack", "/pack"),
                        ("description", "/description"),
                    ];
                    let path = cli::with_query("actions", &[("pack", pack)]);
                    cli::list_table(&client, &path, &cols, args.json).await?;
                }
                ActionCommand::Get { reference } => {
                    cli::action_get(&client, &reference, args.json).await?
                }
            }
            Ok(true)
        }
        Command::Apikey { command } => {
            match command {
                ApikeyCommand::Create { user } => {
                    let mut body = json!({});
                    if let Some(u) = user {
                        body["user"] = json!(u);
                    }
                    let v = client.post("apikeys", &body).await?;
                    cli::show(&v, args.json);
                }
                ApikeyCommand::List => {
                    let cols = [
                        ("id", "/id"),
                        ("user", "/user"),
                        ("created_at", "/created_at"),
                        ("enabled", "/enabled"),
                    ];
                    cli::list_table(&client, "apikeys", &cols, args.json).await?;
                }
                ApikeyCommand::Delete { id } => {
                    client
                        .call(Method::DELETE, &format!("apikeys/{id}"), None)
                        .await?;
                    println!("API key {id} deleted");
                }
            }
            Ok(true)
        }
        Command::Lockout { command } => {
            match command {
                LockoutCommand::List => {
                    let cols = [
                        ("kind", "/kind"),
                        ("name", "/name"),
                        ("failures", "/failures"),
                        ("last_failure", "/last_failure"),
                        ("held_until", "/held_until"),
                    ];
                    cli::list_table(&client, "lockouts", &cols, args.json).await?;
                }
                LockoutCommand::Clear { kind, name } => {
                    client
                        .call(Method::DELETE, &format!("lockouts/{kind}/{name}"), None)
                        .await?;
                    println!("failed logins of {kind} {name} forgotten; it may log in again");
                }
            }
            Ok(true)
        }
    }
}

async fn key_command(client: &Client, command: KeyCommand, as_json: bool) -> anyhow::Result<()> {
    let scope_query = |scope: &Option<String>, decrypt: bool| {
        let mut q = Vec::new();
        if let Some(s) = scope {
            q.push(format!("scope={s}"));
        }
        if decrypt {
            q.push("decrypt=true".to_string());
        }
        if q.is_empty() {
            String::new()
        } else {
            format!("?{}", q.join("&"))
        }
    };
    match command {
        KeyCommand::List {
            prefix,
            scope,
            decrypt,
        } => {
            let mut path = format!("keys{}", scope_query(&scope, decrypt));
            if let Some(p) = prefix {
                path.push_str(if path.contains('?') { "&" } else { "?" });
                path.push_str(&format!("prefix={p}"));
            }
            let cols = [
                ("name", "/name"),
                ("value", "/value"),
                ("secret", "/secret"),
                ("scope", "/scope"),
                ("user", "/user"),
                ("expire_timestamp", "/expire_timestamp"),
            ];
            cli::list_table(client, &path, &cols, as_json).await?;
        }
        KeyCommand::Get {
            name,
            scope,
            decrypt,
        } => {
            let (v, _) = client
                .get(&format!("keys/{name}{}", scope_query(&scope, decrypt)))
                .await?;
            cli::show(&v, as_json);
        }
        KeyCommand::Set {
            name,
            value,
            encrypt,
            ttl,
            scope,
        } => {
            let mut body = json!({"name": name, "value": value, "secret": encrypt});
            if let Some(t) = ttl {
                body["ttl"] = json!(t);
            }
            if let Some(s) = scope {
                body["scope"] = json!(s);
            }
            let v = client
                .call(Method::PUT, &format!("keys/{name}"), Some(&body))
                .await?;
            cli::show(&v, as_json);
        }
        KeyCommand::Delete { name, scope } => {
            client
                .call(
                    Method::DELETE,
                    &format!("keys/{name}{}", scope_query(&scope, false)),
                    None,
                )
                .await?;
            println!("key {name} deleted");
        }
    }
    Ok(())
}

fn read_password(file: Option<&std::path::Path>) -> anyhow::Result<String> {
    if let Some(file) = file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading the password from {}", file.display()))?;
        return Ok(text.trim_end_matches(['\n', '\r']).to_string());
    }
    if let Ok(p) = std::env::var("SQUALL_PASSWORD") {
        return Ok(p);
    }
    eprint!("password: ");
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// The log (`--log-format` over node.yaml's) and OpenTelemetry export.
fn init_telemetry(
    cfg: &mut NodeConfig,
    log_format: Option<LogFormat>,
) -> anyhow::Result<squall::telemetry::Telemetry> {
    if let Some(format) = log_format {
        cfg.log.format = format;
    }
    Ok(squall::telemetry::init(
        &cfg.name,
        &cfg.log,
        &cfg.telemetry,
    )?)
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    Ok(())
}

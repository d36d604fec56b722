//! Each subcommand to what runs it: a node (`up`, `node`) or a client
//! command of the REST API.

use anyhow::Context;
use reqwest::Method;
use serde_json::json;
use squall::cli::{self, Client, Column};
use squall::config::NodeConfig;
use squall::managed_nats::{self, ManagedNats};
use squall::node::Node;
use squall::telemetry::LogFormat;

use super::args::{
    ActionCommand, ApikeyCommand, Args, AuditCommand, Command, ExecutionCommand, InquiryCommand,
    KeyCommand, ListOnly, LockoutCommand, NodeCommand, PackCommand, RuleCommand,
    TriggerInstanceCommand,
};
pub(super) async fn dispatch(args: Args) -> anyhow::Result<bool> {
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
            // The history snapshot decodes while the nats-server recovers.
            let preloaded = Node::preload(&cfg);
            let nats = ManagedNats::start(binary, nats_port, &data_dir).await?;
            cfg.nats.url = nats.url();
            let node = match Node::start_preloaded(&cfg, preloaded).await {
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
                    cli::execution_set_status(&client, &id, "pausing", args.json).await?;
                }
                ExecutionCommand::Resume { id } => {
                    cli::execution_set_status(&client, &id, "resuming", args.json).await?;
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
            cli::list_table(&client, "packs", PACKS_COLUMNS, args.json).await?;
            Ok(true)
        }
        Command::Key { command } => {
            key_command(&client, command, args.json).await?;
            Ok(true)
        }
        Command::Rule { command } => {
            match command {
                RuleCommand::List { pack } => {
                    let path = cli::with_query("rules", &[("pack", pack)]);
                    cli::list_table(&client, &path, RULES_COLUMNS, args.json).await?;
                }
                RuleCommand::Get { reference } => {
                    cli::get_show(&client, &format!("rules/{reference}"), args.json).await?;
                }
                RuleCommand::Create { file } => cli::rule_create(&client, &file, args.json).await?,
                RuleCommand::Enable { reference } => {
                    cli::rule_set_enabled(&client, &reference, true, args.json).await?
                }
                RuleCommand::Disable { reference } => {
                    cli::rule_set_enabled(&client, &reference, false, args.json).await?
                }
                RuleCommand::Delete { reference } => {
                    cli::delete(&client, &format!("rules/{reference}")).await?;
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
            cli::list_table(&client, "triggers", TRIGGERS_COLUMNS, args.json).await?;
            Ok(true)
        }
        Command::Inquiry { command } => {
            match command {
                InquiryCommand::List => {
                    cli::list_table(&client, "inquiries", INQUIRIES_COLUMNS, args.json).await?;
                }
                InquiryCommand::Get { id } => {
                    cli::get_show(&client, &format!("inquiries/{id}"), args.json).await?;
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
                    cli::list_table(
                        &client,
                        &format!("triggerinstances?limit={limit}"),
                        TRIGGERINSTANCES_COLUMNS,
                        args.json,
                    )
                    .await?;
                }
                TriggerInstanceCommand::Get { id } => {
                    cli::get_show(&client, &format!("triggerinstances/{id}"), args.json).await?;
                }
            }
            Ok(true)
        }
        Command::Webhook {
            command: ListOnly::List,
        } => {
            cli::list_table(&client, "webhooks", WEBHOOKS_COLUMNS, args.json).await?;
            Ok(true)
        }
        Command::Action { command } => {
            match command {
                ActionCommand::List { pack } => {
                    let path = cli::with_query("actions", &[("pack", pack)]);
                    cli::list_table(&client, &path, ACTIONS_COLUMNS, args.json).await?;
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
                    cli::list_table(&client, "apikeys", APIKEYS_COLUMNS, args.json).await?;
                }
                ApikeyCommand::Delete { id } => {
                    cli::delete(&client, &format!("apikeys/{id}")).await?;
                    println!("API key {id} deleted");
                }
            }
            Ok(true)
        }
        Command::Lockout { command } => {
            match command {
                LockoutCommand::List => {
                    cli::list_table(&client, "lockouts", LOCKOUTS_COLUMNS, args.json).await?;
                }
                LockoutCommand::Clear { kind, name } => {
                    cli::delete(&client, &format!("lockouts/{kind}/{name}")).await?;
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
            cli::list_table(client, &path, KEYS_COLUMNS, as_json).await?;
        }
        KeyCommand::Get {
            name,
            scope,
            decrypt,
        } => {
            cli::get_show(
                client,
                &format!("keys/{name}{}", scope_query(&scope, decrypt)),
                as_json,
            )
            .await?;
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
            cli::delete(
                client,
                &format!("keys/{name}{}", scope_query(&scope, false)),
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

/// Columns of the `packs` list.
const PACKS_COLUMNS: &[Column] = &[
    ("ref", "/ref"),
    ("version", "/version"),
    ("description", "/description"),
];

/// Columns of the `rules` list.
const RULES_COLUMNS: &[Column] = &[
    ("ref", "/ref"),
    ("enabled", "/enabled"),
    ("trigger", "/trigger/type"),
    ("action", "/action/ref"),
];

/// Columns of the `triggers` list.
const TRIGGERS_COLUMNS: &[Column] = &[
    ("ref", "/ref"),
    ("type", "/type"),
    ("parameters", "/parameters"),
];

/// Columns of the `inquiries` list.
const INQUIRIES_COLUMNS: &[Column] = &[
    ("id", "/id"),
    ("route", "/route"),
    ("ttl", "/ttl"),
    ("users", "/users"),
    ("roles", "/roles"),
    ("asked", "/start_timestamp"),
];

/// Columns of the `triggerinstances` list.
const TRIGGERINSTANCES_COLUMNS: &[Column] = &[
    ("id", "/id"),
    ("trigger", "/trigger"),
    ("occurrence_time", "/occurrence_time"),
    ("status", "/status"),
];

/// Columns of the `webhooks` list.
const WEBHOOKS_COLUMNS: &[Column] = &[
    ("url", "/parameters/url"),
    ("type", "/type"),
    ("rule", "/rule"),
];

/// Columns of the `actions` list.
const ACTIONS_COLUMNS: &[Column] = &[
    ("ref", "/ref"),
    ("pack", "/pack"),
    ("description", "/description"),
];

/// Columns of the `apikeys` list.
const APIKEYS_COLUMNS: &[Column] = &[
    ("id", "/id"),
    ("user", "/user"),
    ("created_at", "/created_at"),
    ("enabled", "/enabled"),
];

/// Columns of the `lockouts` list.
const LOCKOUTS_COLUMNS: &[Column] = &[
    ("kind", "/kind"),
    ("name", "/name"),
    ("failures", "/failures"),
    ("last_failure", "/last_failure"),
    ("held_until", "/held_until"),
];

/// Columns of the `keys` list.
const KEYS_COLUMNS: &[Column] = &[
    ("name", "/name"),
    ("value", "/value"),
    ("secret", "/secret"),
    ("scope", "/scope"),
    ("user", "/user"),
    ("expire_timestamp", "/expire_timestamp"),
];

//! Each subcommand to what runs it: a node (`up`, `node`) or a client
//! command of the REST API.

use anyhow::Context;
use reqwest::Method;
use serde_json::json;
use squall::cli::{self, Client};
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

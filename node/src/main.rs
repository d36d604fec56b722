//! `squall`: one binary. `squall up` runs a single-machine Squall with a
//! managed nats-server; `squall node` runs a peer against existing NATS;
//! every other subcommand is a client of the REST API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use squall::cli::{self, Client};
use squall::config::NodeConfig;
use squall::managed_nats::{self, ManagedNats};
use squall::node::Node;

#[derive(Debug, Parser)]
#[command(
    name = "squall",
    version,
    about = "Event-driven automation for operations"
)]
struct Args {
    /// API URL for client commands.
    #[arg(
        long,
        global = true,
        env = "SQUALL_URL",
        default_value = "http://127.0.0.1:9101"
    )]
    url: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Access token (default: the one `squall login` saved).
    #[arg(long, global = true, env = "SQUALL_AUTH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// API key, instead of a token.
    #[arg(long, global = true, env = "SQUALL_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
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
    /// Run a node against an existing NATS deployment.
    Node {
        /// Node config file (YAML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Run an action: `squall run core.local cmd=date`.
    Run {
        /// Action reference (pack.action).
        action: String,
        /// Parameters as key=value.
        params: Vec<String>,
        /// Return the execution id at once instead of waiting.
        #[arg(long = "async")]
        detach: bool,
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
    },
    /// Show one execution.
    Get { id: String },
}

#[derive(Debug, Subcommand)]
enum PackCommand {
    /// Register packs from the node's pack directories (all, or the named).
    Register { packs: Vec<String> },
}

fn main() -> ExitCode {
    let args = Args::parse();
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
    let client = Client::new(
        &args.url,
        cli::Credentials::resolve(args.token.clone(), args.api_key.clone()),
    );
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
            init_logging();
            let mut cfg = match config {
                Some(path) => NodeConfig::from_file(&path)?,
                None => NodeConfig::default(),
            };
            cfg.api.listen = listen;
            cfg.api.auth_listen = Some(auth_listen);
            cfg.api.stream_listen = Some(stream_listen);
            cfg.auth.admin_password_file = data_dir.join("admin-password");
            cfg.datastore.key_file = data_dir.join("datastore.key");
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
            Ok(true)
        }
        Command::Node { config } => {
            init_logging();
            let cfg = NodeConfig::from_file(&config)?;
            let node = Node::start(&cfg).await?;
            wait_for_signal().await?;
            node.shutdown().await;
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
        } => Ok(cli::run(&client, &action, &params, detach, args.json).await?),
        Command::Execution { command } => {
            match command {
                ExecutionCommand::List {
                    limit,
                    action,
                    status,
                } => {
                    cli::execution_list(
                        &client,
                        limit,
                        action.as_deref(),
                        status.as_deref(),
                        args.json,
                    )
                    .await?
                }
                ExecutionCommand::Get { id } => cli::execution_get(&client, &id, args.json).await?,
            }
            Ok(true)
        }
        Command::Pack {
            command: PackCommand::Register { packs },
        } => {
            cli::pack_register(&client, &packs, args.json).await?;
            Ok(true)
        }
    }
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

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SQUALL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,async_nats=warn"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
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

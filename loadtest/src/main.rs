//! `squall-loadtest`: runs a scenario against Squall and reports.
//!
//! ```sh
//! squall-loadtest run webhook-noop                 # starts its own `squall up`
//! squall-loadtest run webhook-noop --url http://127.0.0.1:9101 --password-file .squall/admin-password
//! squall-loadtest compare A.json B.json
//! ```

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use squall_loadtest::audit_export::{AuditExport, Receiver};
use squall_loadtest::report::{self, Report};
use squall_loadtest::scenario::{self, Load, Scenario};
use squall_loadtest::target::{ManagedNode, Target};
use squall_loadtest::telemetry::{Mode, Telemetry};
use squall_loadtest::RunOptions;

#[derive(Debug, Parser)]
#[command(about = "Load generator and benchmark report for Squall")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a scenario (a name from loadtest/scenarios or a file).
    Run(Box<RunArgs>),
    /// Print B's figures over A's.
    Compare { a: PathBuf, b: PathBuf },
    /// List the shipped scenarios.
    List,
    /// The history benchmark: seed executions straight into the bucket of
    /// a node it starts, then measure RSS per execution, lists under
    /// concurrent clients, and restart to correct lists.
    History {
        /// Executions to seed.
        #[arg(long, default_value_t = 100_000)]
        count: usize,
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Seconds per list query.
        #[arg(long, default_value_t = 10)]
        duration_s: u64,
        /// Then purge this many of the oldest seeded executions while
        /// webhook-noop traffic runs, and compare its throughput with
        /// before (0: skip).
        #[arg(long, default_value_t = 0)]
        retention: usize,
        /// The squall binary to start (default: next to this one).
        #[arg(long)]
        squall: Option<PathBuf>,
        #[arg(long, env = "SQUALL_NATS_SERVER")]
        nats_server: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    scenario: String,
    /// Drive this running node instead of starting one.
    #[arg(long)]
    url: Option<String>,
    /// With --url: the admin's password file.
    #[arg(long, default_value = ".squall/admin-password")]
    password_file: PathBuf,
    #[arg(long, default_value = "admin")]
    user: String,
    /// With --url: its NATS server, for stream sizes and the ceiling.
    #[arg(long)]
    nats_url: Option<String>,
    /// With --url: its process id, for CPU and memory.
    #[arg(long)]
    node_pid: Option<u32>,
    /// The squall binary to start (default: next to this one).
    #[arg(long)]
    squall: Option<PathBuf>,
    /// nats-server for the started node (default: squall's own search).
    #[arg(long, env = "SQUALL_NATS_SERVER")]
    nats_server: Option<PathBuf>,
    /// Override the scenario's webhook count.
    #[arg(long)]
    count: Option<usize>,
    /// Override the concurrency.
    #[arg(long)]
    concurrency: Option<usize>,
    /// Override the open-loop rate (webhooks/s).
    #[arg(long)]
    rate: Option<f64>,
    /// Override the api_list duration.
    #[arg(long)]
    duration_s: Option<u64>,
    /// Messages for the bare-JetStream ceiling (0: skip it).
    #[arg(long, default_value_t = 20_000)]
    ceiling: usize,
    /// Where the JSON and HTML go.
    #[arg(long, default_value = "loadtest/results")]
    out: PathBuf,
    /// The started node's OpenTelemetry export: `off`, `live` (every span
    /// to a receiver this tool runs) or `down` (to a port nobody listens
    /// on); reported with the spans received and dropped. Not with --url:
    /// a node given keeps its own settings.
    #[arg(long, value_enum, conflicts_with = "url")]
    telemetry: Option<Mode>,
    /// The started node exports its audit trail to a receiver this tool
    /// runs (`syslog` over TCP, or `hec`, a Splunk HTTP Event Collector
    /// with indexer acknowledgement); reported with the export rate. Not
    /// with --url.
    #[arg(long, value_enum, conflicts_with = "url")]
    audit_export: Option<Receiver>,
}

#[tokio::main]
async fn main() -> Result<()> {
    match Args::parse().command {
        Command::List => {
            for name in scenario::shipped() {
                let s = Scenario::load(&name)?;
                println!("{name}: {}", s.goal.trim());
            }
            Ok(())
        }
        Command::History {
            count,
            clients,
            duration_s,
            retention,
            squall,
            nats_server,
        } => {
            let squall = match squall {
                Some(s) => s,
                None => std::env::current_exe()?
                    .parent()
                    .context("no directory for this binary")?
                    .join("squall"),
            };
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
            let packs = [root.join("../packs"), root.join("packs")];
            let mut node =
                ManagedNode::start(&squall, nats_server.as_deref(), &packs, None).await?;
            let load = squall_loadtest::history::HistoryLoad {
                count,
                clients,
                duration_s,
                retention,
            };
            let run = squall_loadtest::history::run(&mut node, &load).await?;
            print!("{}", run.summary());
            Ok(())
        }
        Command::Compare { a, b } => {
            print!(
                "{}",
                report::compare(&Report::read(&a)?, &Report::read(&b)?)
            );
            Ok(())
        }
        Command::Run(args) => {
            let RunArgs {
                scenario,
                url,
                password_file,
                user,
                nats_url,
                node_pid,
                squall,
                nats_server,
                count,
                concurrency,
                rate,
                duration_s,
                ceiling,
                out,
                telemetry,
                audit_export,
            } = *args;
            let mut scenario = Scenario::load(&scenario)?;
            match &mut scenario.load {
                Load::Webhook(w) => {
                    w.count = count.unwrap_or(w.count);
                    w.concurrency = concurrency.unwrap_or(w.concurrency);
                    w.rate = rate.or(w.rate);
                }
                Load::ApiList(a) => {
                    a.concurrency = concurrency.unwrap_or(a.concurrency);
                    a.duration_s = duration_s.unwrap_or(a.duration_s);
                }
                Load::Workflow(w) => {
                    w.count = count.unwrap_or(w.count);
                    w.concurrency = concurrency.unwrap_or(w.concurrency);
                }
            }
            let managed;
            let telemetry = match telemetry {
                Some(mode) => Some(Telemetry::start(mode).await?),
                None => None,
            };
            let audit_export = match audit_export {
                Some(receiver) => Some(AuditExport::start(receiver).await?),
                None => None,
            };
            let target = match url {
                Some(url) => {
                    let password = std::fs::read_to_string(&password_file)
                        .with_context(|| format!("reading {}", password_file.display()))?;
                    Target::connect(&url, &user, password.trim(), nats_url, node_pid).await?
                }
                None => {
                    let squall = match squall {
                        Some(s) => s,
                        None => std::env::current_exe()?
                            .parent()
                            .context("no directory for this binary")?
                            .join("squall"),
                    };
                    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
                    let packs = [root.join("../packs"), root.join("packs")];
                    let config = [
                        telemetry.as_ref().and_then(Telemetry::node_config),
                        audit_export.as_ref().map(AuditExport::node_config),
                    ]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .concat();
                    let config = (!config.is_empty()).then_some(config);
                    managed = ManagedNode::start(
                        &squall,
                        nats_server.as_deref(),
                        &packs,
                        config.as_deref(),
                    )
                    .await?;
                    managed.target.clone()
                }
            };
            let report = squall_loadtest::run(
                &target,
                &scenario,
                &RunOptions {
                    ceiling_messages: ceiling,
                    telemetry,
                    audit_export,
                },
            )
            .await?;
            let (json, html) = report.write(&out)?;
            println!("{}", report.summary());
            for hop in &report.outcome.hops {
                eprintln!(
                    "  {}: p50 {:.1} ms, p99 {:.1} ms",
                    hop.name, hop.latency_ms.p50, hop.latency_ms.p99
                );
            }
            eprintln!("report: {} ({})", html.display(), json.display());
            anyhow::ensure!(
                !report.outcome.timed_out,
                "the run timed out with executions missing"
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receivers_configure_only_a_node_the_tool_starts() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["squall-loadtest", "run", "webhook-noop"];
            argv.extend_from_slice(extra);
            Args::try_parse_from(argv)
        };
        for option in [["--telemetry", "live"], ["--audit-export", "hec"]] {
            let given = [&option[..], &["--url", "http://127.0.0.1:9101"]].concat();
            let e = parse(&given).expect_err("a receiver with --url");
            assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict, "{e}");
            assert!(e.to_string().contains("--url"), "{e}");
            assert!(parse(&option).is_ok(), "{option:?} alone");
        }
        assert!(parse(&["--url", "http://127.0.0.1:9101"]).is_ok());
    }
}

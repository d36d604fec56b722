//! `squall`: one binary. `squall up` runs a single-machine Squall with a
//! managed nats-server; `squall node` runs a peer against existing NATS;
//! every other subcommand is a client of the REST API.

use std::process::ExitCode;

use clap::Parser;
use squall::cli::{self};

mod args;
mod dispatch;

use args::{Args, Command};
use dispatch::dispatch;

/// The node allocates and frees JSON values on every event; glibc's
/// malloc took about 29 % of its CPU at the peak and fragmented under
/// load (see loadtest/README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

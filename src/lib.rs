//! butler: a desktop companion in one binary.
//!
//! - [`daemon`]: the butlerd-compatible JSON-RPC 2.0 service (TCP or stdio).
//! - [`upgrade`]: `butler upgrade`, the CLI face of the `butler-updater` crate.
//! - [`streaming`]: the LogDog Butler (stream server, bundler, outputs, `stream`/`serve`/`run`/`logs`).
//! - [`db`]: the one SQLite database all of them share.
//! - [`cli`], [`report`], [`version`]: the command line, what goes to stdout, and build identity.

pub mod cli;
pub mod daemon;
pub mod db;
pub mod report;
pub mod streaming;
pub mod upgrade;
pub mod version;

use cli::{Cli, Command};

/// An error that ends the process with a particular exit code (the default is 1).
///
/// The inner error is shown as this error's message (not as its `source`), so it prints once.
#[derive(Debug, thiserror::Error)]
#[error("{error:#}")]
pub struct ExitError {
    pub code: u8,
    pub error: anyhow::Error,
}

impl ExitError {
    pub fn new(code: u8, error: impl Into<anyhow::Error>) -> Self {
        ExitError { code, error: error.into() }
    }
}

/// The exit code for a failed run: the one an [`ExitError`] in the chain carries, else 1.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    err.chain().find_map(|e| e.downcast_ref::<ExitError>()).map(|e| e.code).unwrap_or(1)
}

/// Runs a parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<u8> {
    init_tracing(&cli.global);
    let global = cli.global;
    let reporter = report::Reporter::new(global.json, global.verbose, global.quiet);
    let command = match cli.command {
        Some(c) => c,
        None if global.version => Command::Version,
        None => {
            use clap::CommandFactory;
            let _ = Cli::command().print_help();
            return Ok(2);
        }
    };
    match command {
        Command::Version => {
            if global.json {
                reporter.result(version::info());
            } else {
                println!("{}", version::long());
            }
            Ok(0)
        }
        Command::Daemon(args) => daemon::run(args, &global),
        Command::Upgrade(args) => upgrade::run(args, &global, reporter),
        Command::Stream(args) => streaming::cli::stream(args, &global),
        Command::Serve(args) => streaming::cli::serve(args, &global),
        Command::Run(args) => streaming::cli::run(args, &global),
        Command::Logs(cmd) => streaming::cli::logs(cmd, &global),
    }
}

/// Diagnostics go to stderr through `tracing`; `BUTLER_LOG` (an `EnvFilter`) overrides the level.
fn init_tracing(global: &cli::GlobalArgs) {
    use tracing_subscriber::EnvFilter;
    let default = if global.verbose {
        "debug"
    } else if global.quiet {
        "error"
    } else {
        "warn"
    };
    let filter = EnvFilter::try_from_env("BUTLER_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

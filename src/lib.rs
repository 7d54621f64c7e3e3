//! butler: a desktop companion in one binary.
//!
//! - `daemon`: the butlerd-compatible JSON-RPC 2.0 service (TCP or stdio).
//! - `update`: the update core over the `butler-updater` crate; `upgrade` is its command line.
//! - [`streaming`]: the LogDog Butler (stream server, bundler, outputs, `stream`/`serve`/`run`/`logs`).
//! - [`db`]: the one SQLite database all of them share.
//! - [`cli`], [`report`], `exit`, `signals`, `version`: the command line, what goes to stdout, exit
//!   statuses, signals and build identity.

pub mod cli;
mod daemon;
pub mod db;
mod exit;
#[doc(hidden)]
pub mod fuzz;
pub mod report;
mod signals;
pub mod streaming;
mod update;
mod upgrade;
mod version;

use cli::{Cli, Command};
pub use exit::{ExitError, ExitStatus, status_of};

/// Runs a parsed command line and returns how it ended.
pub fn run(cli: Cli) -> anyhow::Result<ExitStatus> {
    init_tracing(&cli.global);
    let global = cli.global;
    let reporter = report::Reporter::new(global.json, global.verbose, global.quiet);
    let command = match cli.command {
        Some(c) => c,
        None if global.version => Command::Version,
        None => {
            use clap::CommandFactory;
            let _ = Cli::command().print_help();
            return Ok(ExitStatus::Usage);
        }
    };
    global
        .logdog
        .check_applies_to(&command)
        .map_err(|e| ExitError::new(ExitStatus::Usage, anyhow::anyhow!(e)))?;
    match command {
        Command::Version => {
            if global.json {
                reporter.result(version::info());
            } else {
                println!("{}", version::long());
            }
            Ok(ExitStatus::Success)
        }
        Command::Daemon(args) => {
            #[cfg(windows)]
            update::remove_aside_copies();
            daemon::run(args.settings(&global), reporter)
        }
        Command::Upgrade(args) => {
            #[cfg(windows)]
            update::remove_aside_copies();
            upgrade::run(args, &global, reporter)
        }
        Command::Stream(args) => streaming::cli::stream(args, &global),
        Command::Serve(args) => streaming::cli::serve(args, &global),
        Command::Run(args) => streaming::cli::run(args, &global),
        Command::Logs(cmd) => streaming::cli::logs(cmd, &global),
        Command::DaemonProbation(args) => daemon::probation::run(args.watch()),
        Command::Completions { .. } | Command::Man if global.json => Err(ExitError::new(
            ExitStatus::Usage,
            anyhow::anyhow!("--json: `completions` and `man` write a script or a page, not JSON"),
        )
        .into()),
        Command::Completions { shell } => {
            cli::print_completions(shell);
            Ok(ExitStatus::Success)
        }
        Command::Man => {
            cli::print_man_page()?;
            Ok(ExitStatus::Success)
        }
        Command::ApiDocs { out } => {
            daemon::api::write_files(&out).map_err(|e| {
                anyhow::anyhow!("writing the API description into {}: {e}", out.display())
            })?;
            Ok(ExitStatus::Success)
        }
    }
}

/// Diagnostics go to stderr through `tracing`; `BUTLER_LOG` (an `EnvFilter`) overrides the level.
/// Colour only where `--color` allows it: by default only on a terminal, never into a pipe or a
/// launcher's log (tracing-subscriber does not check by itself).
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
        .with_ansi(global.color.stderr())
        .with_target(false)
        .try_init();
}

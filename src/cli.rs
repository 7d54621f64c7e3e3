//! Command-line definitions (clap) and the Go-style flag spelling LogDog users type.

use std::ffi::OsString;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::{daemon, streaming, upgrade};

#[derive(Debug, Parser)]
#[command(
    name = "butler",
    about = "Desktop companion: butlerd-compatible daemon, self-updater and LogDog log streaming",
    disable_version_flag = true,
    args_conflicts_with_subcommands = false
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Flags accepted before or after any subcommand.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Machine mode: every line on stdout is one JSON object.
    #[arg(long, short = 'j', global = true)]
    pub json: bool,

    /// SQLite database (default: the embedded one in the platform data folder, or $BUTLER_HOME).
    #[arg(long, global = true, value_name = "PATH")]
    pub dbpath: Option<String>,

    /// More log output (debug level).
    #[arg(long, global = true)]
    pub verbose: bool,

    /// Less log output (warnings and errors only).
    #[arg(long, global = true)]
    pub quiet: bool,

    /// Print the version and exit.
    #[arg(long, short = 'V', global = true)]
    pub version: bool,

    #[command(flatten)]
    pub logdog: LogdogArgs,
}

/// LogDog Butler global flags (see the streaming contract); upstream spells them with one dash.
#[derive(Debug, Clone, Args)]
pub struct LogdogArgs {
    /// LogDog project name (required for the `logdog` output).
    #[arg(long, global = true)]
    pub project: Option<String>,

    /// Stream prefix (default `butler/users/<user>/<random>`).
    #[arg(long, global = true)]
    pub prefix: Option<String>,

    /// Output: store (default), directory,path=DIR, log, null, logdog[,service=S][,prefix-expiration=DUR].
    #[arg(long, global = true, value_name = "NAME[,KEY=VALUE...]")]
    pub output: Option<String>,

    /// Tag added to every stream, `k` or `k=v` (repeatable; stream tags win).
    #[arg(long = "tag", global = true, value_name = "K[=V]")]
    pub tags: Vec<String>,

    /// Longest time log data waits before its bundle is sent (e.g. 5s, 250ms).
    #[arg(long, global = true, value_name = "DURATION")]
    pub output_max_buffer_age: Option<String>,

    /// Send every bundle as soon as it has data.
    #[arg(long, global = true)]
    pub output_no_buffer: bool,

    /// LogDog Coordinator host for the `logdog` output.
    #[arg(long, global = true, value_name = "HOST")]
    pub coordinator_host: Option<String>,

    /// Service-account JSON credentials for the `logdog` output.
    #[arg(long, global = true, value_name = "PATH")]
    pub service_account_json: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the version.
    Version,
    /// Run the butlerd-compatible JSON-RPC daemon.
    Daemon(daemon::DaemonArgs),
    /// Update butler itself from a broth server.
    #[command(alias = "update")]
    Upgrade(upgrade::UpgradeArgs),
    /// Upload one log stream from a file or stdin.
    Stream(streaming::cli::StreamArgs),
    /// Run a LogDog stream server until interrupted.
    Serve(streaming::cli::ServeArgs),
    /// Run a command with a stream server, capturing its output as log streams.
    Run(streaming::cli::RunArgs),
    /// Read the local log store.
    #[command(subcommand)]
    Logs(streaming::cli::LogsCommand),
}

/// Parses `args`, first rewriting Go-style `-flag` spellings of known long flags to `--flag`.
pub fn parse_from<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    Cli::try_parse_from(normalize_single_dash(args))
}

/// Rewrites `-project x` / `-output=log` to their double-dash forms, up to a bare `--`.
///
/// Only names that are long flags somewhere in the CLI are touched, so short flags (`-j`) and
/// values that start with a dash keep their meaning.
fn normalize_single_dash(args: Vec<OsString>) -> Vec<OsString> {
    let longs = long_flag_names();
    let mut out = Vec::with_capacity(args.len());
    let mut passthrough = false;
    for (i, arg) in args.into_iter().enumerate() {
        if i == 0 || passthrough {
            out.push(arg);
            continue;
        }
        let Some(s) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if s == "--" {
            passthrough = true;
            out.push(arg);
            continue;
        }
        let rewritten = s
            .strip_prefix('-')
            .filter(|rest| !rest.starts_with('-') && rest.len() > 1)
            .filter(|rest| {
                let name = rest.split('=').next().unwrap_or(rest);
                longs.iter().any(|l| l == name)
            })
            .map(|rest| OsString::from(format!("--{rest}")));
        out.push(rewritten.unwrap_or(arg));
    }
    out
}

fn long_flag_names() -> Vec<String> {
    fn collect(cmd: &clap::Command, names: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            if let Some(l) = arg.get_long() {
                names.push(l.to_owned());
            }
            if let Some(aliases) = arg.get_all_aliases() {
                names.extend(aliases.into_iter().map(str::to_owned));
            }
        }
        for sub in cmd.get_subcommands() {
            collect(sub, names);
        }
    }
    let mut names = Vec::new();
    collect(&Cli::command(), &mut names);
    names
}

/// Parses Go-style durations as flags carry them: `250ms`, `5s`, `2m`, `1h`, or bare seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: f64 = number.parse().map_err(|_| format!("'{s}' is not a duration (e.g. 5s, 250ms)"))?;
    let scale = match unit {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "ns" => 1e-9,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("'{s}' has an unknown unit '{unit}' (use ms, s, m or h)")),
    };
    std::time::Duration::try_from_secs_f64(n * scale).map_err(|e| format!("'{s}': {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        parse_from(std::iter::once("butler").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn global_flags_before_or_after_the_subcommand() {
        let a = parse(&["--json", "daemon", "--dbpath", "x.db"]);
        let b = parse(&["daemon", "--json", "--dbpath", "x.db"]);
        assert!(a.global.json && b.global.json);
        assert_eq!(a.global.dbpath.as_deref(), Some("x.db"));
        assert_eq!(b.global.dbpath.as_deref(), Some("x.db"));
    }

    #[test]
    fn go_style_single_dash_long_flags() {
        let cli = parse(&["-project", "p", "-output=null", "-j", "version"]);
        assert_eq!(cli.global.logdog.project.as_deref(), Some("p"));
        assert_eq!(cli.global.logdog.output.as_deref(), Some("null"));
        assert!(cli.global.json);
    }

    #[test]
    fn arguments_after_double_dash_are_left_alone() {
        let args = normalize_single_dash(
            ["butler", "run", "--", "prog", "-project"].map(OsString::from).to_vec(),
        );
        assert_eq!(args.last().unwrap(), "-project");
    }

    #[test]
    fn durations() {
        use std::time::Duration;
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}

//! Command-line definitions (clap) and the Go-style flag spelling LogDog users type.

use std::ffi::OsString;

use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::daemon::{DaemonSettings, Transport};
use crate::streaming;
use crate::streaming::timefmt::parse_duration;
use crate::update::UpdateSettings;
use crate::upgrade;

/// The examples both help texts open with (a macro, so `concat!` can build constants from it).
macro_rules! examples {
    () => {
        "\
Examples:
  butler run -- make test            run a command; its output is shown and stored
  butler logs web --open             look at stored logs, live, in the browser
  butler logs tail -f PATH           follow one stream in the terminal
  butler upgrade --check             is there a newer butler?
"
    };
}

const EXAMPLES: &str = concat!(
    examples!(),
    "
Use --help for environment variables and exit codes."
);

const ENVIRONMENT: &str = concat!(
    examples!(),
    "  butler --json daemon --transport tcp --keep-alive --dbpath DB   the daemon launchers start

Environment:
  BUTLER_HOME          butler's folder: the database (butler.db) and the update cache
                       [default: the platform data folder, e.g. ~/.local/share/butler]
  BUTLER_LOG           what goes to stderr, as a tracing filter (error, warn, info, debug, trace)
                       [default: warn; --verbose: debug; --quiet: error]
  BUTLER_BROTH_URL     the update server (--broth-url)
  BUTLER_TRUSTED_KEYS  extra trusted minisign keys (--trusted-key)
  NO_COLOR             no colour (as --color never)
  BROWSER              what `butler logs web --open` starts
  BUTLER_NO_PROGRESS   no progress bar in `butler upgrade` (--no-progress)

Exit codes:
  0 success   1 failure   2 bad flags or arguments   130 a second signal
  250 a runtime error in stream/serve/run/logs (LogDog's), or a failed restart
  run: the child's own code (128+N when signal N killed it)
  upgrade: 3 network  4 download  5 bad server data  6 verification or bad key  7 stale
           8 bad archive  9 smoke test  10 not writable  11 locked  12 nothing to roll back
           13 cancelled or I/O;  upgrade --check: 100 when an update is available"
);

#[derive(Debug, Parser)]
#[command(
    name = "butler",
    about = "Desktop companion: butlerd-compatible daemon, self-updater and LogDog log streaming",
    disable_version_flag = true,
    args_conflicts_with_subcommands = false,
    after_help = EXAMPLES,
    after_long_help = ENVIRONMENT
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub(crate) command: Option<Command>,
}

/// Flags accepted before or after any subcommand.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Machine mode: every line on stdout is one JSON object.
    #[arg(long, short = 'j', global = true)]
    pub json: bool,

    /// SQLite database [default: $BUTLER_HOME/butler.db, else butler.db in the platform data
    /// folder, e.g. ~/.local/share/butler/butler.db].
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

    /// Colour in diagnostics: auto (only when stderr is a terminal and NO_COLOR is not set),
    /// always, or never.
    #[arg(long, global = true, value_enum, value_name = "WHEN", default_value = "auto")]
    pub color: ColorChoice,

    #[command(flatten)]
    pub logdog: LogdogArgs,
}

/// LogDog Butler global flags (see the streaming contract); upstream spells them with one dash.
#[derive(Debug, Clone, Args)]
#[command(
    next_help_heading = "LogDog options (stream, serve, run; --project and --prefix for logs too)"
)]
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

    /// Longest time log data waits before its bundle is sent (e.g. 5s, 250ms)
    /// [default: 5s for the logdog output, as LogDog's; 250ms for the local outputs, so that
    /// followers see lines live].
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration)]
    pub output_max_buffer_age: Option<std::time::Duration>,

    /// Send every bundle as soon as it has data (--output-max-buffer-age 0).
    #[arg(long, global = true)]
    pub output_no_buffer: bool,

    /// LogDog Coordinator host for the `logdog` output.
    #[arg(long, global = true, value_name = "HOST")]
    pub coordinator_host: Option<String>,

    /// Service-account JSON credentials for the `logdog` output.
    #[arg(long, global = true, value_name = "PATH")]
    pub service_account_json: Option<String>,
}

impl LogdogArgs {
    /// The LogDog flags given, by name, except `--project` and `--prefix` (which `logs` reads).
    fn output_flags_given(&self) -> Vec<&'static str> {
        let mut given = Vec::new();
        let mut note = |set: bool, name| {
            if set {
                given.push(name)
            }
        };
        note(self.output.is_some(), "--output");
        note(!self.tags.is_empty(), "--tag");
        note(self.output_max_buffer_age.is_some(), "--output-max-buffer-age");
        note(self.output_no_buffer, "--output-no-buffer");
        note(self.coordinator_host.is_some(), "--coordinator-host");
        note(self.service_account_json.is_some(), "--service-account-json");
        given
    }

    /// LogDog flags that `command` would ignore: refused, rather than accepted without a word.
    pub(crate) fn check_applies_to(&self, command: &Command) -> Result<(), String> {
        let mut stray = match command {
            Command::Stream(_) | Command::Serve(_) | Command::Run(_) => return Ok(()),
            Command::Logs(_) => Vec::new(),
            _ => {
                let mut v = Vec::new();
                if self.project.is_some() {
                    v.push("--project");
                }
                if self.prefix.is_some() {
                    v.push("--prefix");
                }
                v
            }
        };
        stray.extend(self.output_flags_given());
        match stray.as_slice() {
            [] => Ok(()),
            flags => Err(format!(
                "{} {} only to stream, serve and run{}",
                flags.join(", "),
                if flags.len() == 1 { "applies" } else { "apply" },
                if matches!(command, Command::Logs(_)) {
                    " (logs reads --project and --prefix)"
                } else {
                    ""
                }
            )),
        }
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Print the version.
    Version,
    /// Run the butlerd-compatible JSON-RPC daemon.
    Daemon(DaemonArgs),
    /// Update butler itself from a broth server.
    #[command(
        alias = "update",
        after_help = "\
Examples:
  butler upgrade --check       is there a newer butler? (exit 100 if so, 0 if not)
  butler upgrade -y            install it without asking
  butler upgrade --rollback    go back to the version before"
    )]
    Upgrade(upgrade::UpgradeArgs),
    /// Upload one log stream from a file or stdin.
    Stream(streaming::cli::StreamArgs),
    /// Run a LogDog stream server until interrupted.
    Serve(streaming::cli::ServeArgs),
    /// Run a command with a stream server, capturing its output as log streams.
    #[command(after_help = "\
Examples:
  butler run -- make test                      shown as usual, and stored as stdout/stderr
  butler --prefix ci/42 run -- ./test.sh       under a prefix you choose
  butler run --no-capture -- vim notes.txt     an interactive program: nothing stored
  butler -output logdog -project p -coordinator-host HOST run --stdout name=out -- cmd

The child gets LOGDOG_STREAM_SERVER_PATH, LOGDOG_STREAM_PREFIX and LOGDOG_STREAM_PROJECT, so
LUCI stream clients can open more streams. butler exits with the child's code.")]
    Run(streaming::cli::RunArgs),
    /// Read the local log store.
    #[command(subcommand)]
    Logs(streaming::cli::LogsCommand),
    /// Internal: watches a build the daemon restarted into (started by the daemon itself).
    #[command(hide = true)]
    DaemonProbation(ProbationArgs),
    /// Print a shell completion script.
    #[command(after_help = "\
Examples:
  butler completions bash > ~/.local/share/bash-completion/completions/butler
  butler completions zsh > ~/.zfunc/_butler
  butler completions fish > ~/.config/fish/completions/butler.fish")]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `butler man > butler.1`.
    Man,
    /// Internal: write the daemon's API description (OpenRPC, reference, TypeScript typings) as
    /// this build generates it from its code; `make api-docs` runs it.
    #[command(hide = true)]
    ApiDocs {
        /// The folder to write `butlerd.openrpc.json`, `README.md` and `butlerd.d.ts` into.
        #[arg(long, default_value = "docs/api")]
        out: std::path::PathBuf,
    },
}

/// `butler completions` / `butler man`: written from the same definitions as the parser.
pub(crate) fn print_completions(shell: clap_complete::Shell) {
    clap_complete::generate(shell, &mut Cli::command(), "butler", &mut std::io::stdout());
}

pub(crate) fn print_man_page() -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    let cmd = Cli::command().version(crate::version::VERSION);
    clap_mangen::Man::new(cmd).render(&mut out)?;
    std::io::Write::flush(&mut out)
}

/// `--color`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

impl ColorChoice {
    /// Whether to colour what goes to stderr.
    pub fn stderr(self) -> bool {
        use std::io::IsTerminal;
        match self {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                std::io::stderr().is_terminal()
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
            }
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct ProbationArgs {
    #[arg(long)]
    pid: u32,
    /// The build on probation (`--version` is the global flag).
    #[arg(long)]
    build: String,
    #[arg(long)]
    previous: String,
    #[arg(long)]
    exe: std::path::PathBuf,
    #[arg(long)]
    period_ms: u64,
    #[arg(long)]
    db: Option<std::path::PathBuf>,
    #[arg(long)]
    snapshot: Option<std::path::PathBuf>,
    #[arg(long)]
    broth_url: String,
    /// The daemon's own arguments.
    #[arg(last = true)]
    daemon_args: Vec<std::ffi::OsString>,
}

impl ProbationArgs {
    pub(crate) fn watch(self) -> crate::daemon::probation::Watch {
        crate::daemon::probation::Watch {
            pid: self.pid,
            version: self.build,
            previous: self.previous,
            exe: self.exe,
            period: Duration::from_millis(self.period_ms),
            dbpath: self.db,
            snapshot: self.snapshot,
            broth_url: self.broth_url,
            daemon_args: self.daemon_args,
        }
    }
}

/// `--transport`: `tcp`, `stdio`, `unix:<path>` (unix) or `net.pipe:<name>` (Windows).
fn parse_transport(s: &str) -> Result<Transport, String> {
    match s {
        "tcp" => Ok(Transport::Tcp),
        "stdio" => Ok(Transport::Stdio),
        _ if s.starts_with("net.pipe:") => {
            if cfg!(not(windows)) {
                return Err("net.pipe: pipes are for Windows; here use tcp or unix:<path>".into());
            }
            match crate::streaming::address::Address::parse(s) {
                Ok(crate::streaming::address::Address::Pipe(name)) => Ok(Transport::Pipe(name)),
                Ok(_) => unreachable!("a net.pipe: address parses as a pipe"),
                Err(e) => Err(format!("{e}; as in net.pipe:butler-daemon")),
            }
        }
        _ => match s.strip_prefix("unix:") {
            Some(path) if !path.is_empty() && cfg!(unix) => Ok(Transport::Unix(path.into())),
            Some(_) if cfg!(unix) => {
                Err("unix: needs a socket path, as in unix:/run/user/1000/butler.sock".into())
            }
            Some(_) => {
                Err("unix: sockets are for unix; on Windows use tcp or net.pipe:<name>".into())
            }
            None => Err(format!(
                "{s:?} is not a transport (tcp, stdio, unix:<path>, or net.pipe:<name> on Windows)"
            )),
        },
    }
}

#[derive(Debug, Args)]
pub(crate) struct DaemonArgs {
    /// How clients connect: loopback TCP (with a secret), this process's stdin/stdout, or an
    /// owner-only unix socket, unix:<path>, or on Windows an owner-only named pipe,
    /// net.pipe:<name> (both with a secret).
    #[arg(long, default_value = "tcp", value_parser = parse_transport, value_name = "tcp|stdio|unix:PATH|net.pipe:NAME")]
    pub(crate) transport: Transport,

    /// TCP: serve any number of connections until shut down (else exactly one).
    #[arg(long)]
    pub(crate) keep_alive: bool,

    /// Shut down when this process exits (repeatable).
    #[arg(long = "destiny-pid", value_name = "PID")]
    pub(crate) destiny_pids: Vec<u32>,

    /// Log every JSON-RPC message in and out to stderr (secrets redacted).
    #[arg(long)]
    pub(crate) log: bool,

    /// itch.io API base URL: accepted as upstream butlerd does, unused (nothing here calls itch.io).
    #[arg(long, value_name = "URL")]
    pub(crate) address: Option<String>,

    /// HTTP user agent suffix: accepted as upstream butlerd does, unused.
    #[arg(long, value_name = "UA")]
    pub(crate) user_agent: Option<String>,

    #[command(flatten)]
    pub(crate) update_source: SourceArgs,

    #[command(flatten)]
    pub(crate) update_tuning: TuningArgs,

    /// How often to check for a newer butler in the background (news goes to Meta.Flow
    /// connections; nothing is installed without `Update.Apply`).
    #[arg(long, default_value = "6h", value_parser = parse_duration)]
    pub(crate) update_interval: Duration,

    /// Never check for updates in the background.
    #[arg(long)]
    pub(crate) no_auto_update: bool,

    /// Close connections that have not authenticated within this time.
    #[arg(long, hide = true, default_value = "10s", value_parser = parse_duration)]
    pub(crate) auth_timeout: Duration,

    /// Longest accepted message line in bytes.
    #[arg(long, hide = true, default_value_t = 16 * 1024 * 1024)]
    pub(crate) max_line_bytes: usize,

    /// Most connections open at once.
    #[arg(long, hide = true, default_value_t = 4096)]
    pub(crate) max_connections: usize,

    /// How long a build restarted into (`Update.Apply {restart: true}`) must stay up before it
    /// is trusted; if it dies or never answers, the previous build serves again. 0: no watchdog.
    #[arg(long, hide = true, env = "BUTLER_UPDATE_PROBATION", default_value = "30s", value_parser = parse_duration)]
    pub(crate) update_probation: Duration,

    /// How long shutdown waits for in-flight work before exiting anyway.
    #[arg(long, hide = true, default_value = "3s", value_parser = parse_duration)]
    pub(crate) drain_timeout: Duration,
}

impl DaemonArgs {
    pub(crate) fn settings(&self, global: &GlobalArgs) -> DaemonSettings {
        DaemonSettings {
            transport: self.transport.clone(),
            keep_alive: self.keep_alive,
            destiny_pids: self.destiny_pids.clone(),
            log_traffic: self.log,
            dbpath: global.dbpath.clone(),
            update: self.update_source.settings(&self.update_tuning),
            update_interval: Some(self.update_interval)
                .filter(|i| !self.no_auto_update && !i.is_zero()),
            auth_timeout: self.auth_timeout,
            max_line_bytes: self.max_line_bytes,
            max_connections: self.max_connections,
            drain_timeout: self.drain_timeout,
            probation: self.update_probation,
        }
    }
}

/// Where updates come from and whom to trust: shared by `butler upgrade` and the daemon.
#[derive(Debug, Clone, Args)]
pub(crate) struct SourceArgs {
    /// The broth server.
    #[arg(long, env = "BUTLER_BROTH_URL", default_value = butler_updater::DEFAULT_BROTH_URL)]
    pub(crate) broth_url: String,
    /// Refuse updates that are not signed by a trusted key.
    #[arg(long)]
    pub(crate) require_signature: bool,
    /// Extra trusted minisign public key (base64, or a .pub file); repeatable.
    #[arg(
        long = "trusted-key",
        env = "BUTLER_TRUSTED_KEYS",
        value_delimiter = ',',
        value_name = "KEY"
    )]
    pub(crate) trusted_keys: Vec<String>,
}

impl SourceArgs {
    /// The update settings these flags and `tuning` describe.
    pub(crate) fn settings(&self, tuning: &TuningArgs) -> UpdateSettings {
        UpdateSettings {
            broth_url: self.broth_url.clone(),
            trusted_keys: self.trusted_keys.clone(),
            require_signature: self.require_signature,
            tuning: tuning.tuning(),
            cache_dir: crate::db::home_dir().ok().map(|h| h.join(crate::update::UPDATE_CACHE)),
        }
    }
}

/// Limits tests shorten so failures show up in milliseconds; hidden from help.
#[derive(Debug, Clone, Args)]
pub(crate) struct TuningArgs {
    #[arg(long, hide = true, env = "BUTLER_UPGRADE_READ_TIMEOUT_MS")]
    read_timeout_ms: Option<u64>,
    #[arg(long, hide = true, env = "BUTLER_UPGRADE_BACKOFF_MS")]
    backoff_ms: Option<u64>,
    #[arg(long, hide = true, env = "BUTLER_UPGRADE_RETRIES")]
    retries: Option<u32>,
    #[arg(long, hide = true, env = "BUTLER_UPGRADE_MIN_BPS")]
    min_bps: Option<u64>,
    #[arg(long, hide = true, env = "BUTLER_UPGRADE_STALL_WINDOW_MS")]
    stall_window_ms: Option<u64>,
    #[arg(long, hide = true, env = "BUTLER_UPGRADE_MAX_TIME_MS")]
    max_time_ms: Option<u64>,
    #[arg(long, hide = true, env = "BUTLER_UPGRADE_MAX_ARCHIVE")]
    max_archive: Option<u64>,
    #[arg(long, hide = true, env = "BUTLER_UPGRADE_MAX_UNPACKED")]
    max_unpacked: Option<u64>,
    #[arg(long, hide = true, env = "BUTLER_UPGRADE_SMOKE_TIMEOUT_MS")]
    smoke_timeout_ms: Option<u64>,
}

impl TuningArgs {
    fn tuning(&self) -> butler_updater::Tuning {
        let mut t = butler_updater::Tuning::default();
        let ms = std::time::Duration::from_millis;
        if let Some(v) = self.read_timeout_ms {
            t.net.read_timeout = ms(v);
            t.net.connect_timeout = ms(v);
        }
        if let Some(v) = self.backoff_ms {
            t.net.backoff = ms(v);
            t.net.max_backoff = ms(v * 4);
        }
        if let Some(v) = self.retries {
            t.net.retries = v.max(1);
        }
        if let Some(v) = self.min_bps {
            t.net.min_bps = v;
        }
        if let Some(v) = self.stall_window_ms {
            t.net.stall_window = ms(v);
        }
        if let Some(v) = self.max_time_ms {
            t.net.max_time = ms(v);
        }
        if let Some(v) = self.max_archive {
            t.net.max_archive = v;
        }
        if let Some(v) = self.max_unpacked {
            t.unpack.max_total = v;
        }
        if let Some(v) = self.smoke_timeout_ms {
            t.smoke_timeout = ms(v);
        }
        t
    }
}

/// Parses `args`, first rewriting Go-style `-flag` spellings of known long flags to `--flag`.
pub fn parse_from<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let args = normalize_single_dash(args.into_iter().map(Into::into).collect());
    // clap's own messages follow --color too (it already honours NO_COLOR and terminals).
    let mut cmd = Cli::command();
    cmd = match color_flag(&args) {
        Some(ColorChoice::Always) => cmd.color(clap::ColorChoice::Always),
        Some(ColorChoice::Never) => cmd.color(clap::ColorChoice::Never),
        _ => cmd,
    };
    let mut matches = cmd.try_get_matches_from_mut(args)?;
    Cli::from_arg_matches_mut(&mut matches).map_err(|e| e.format(&mut cmd))
}

/// `--color WHEN` / `--color=WHEN` before a bare `--`, read ahead of parsing.
fn color_flag(args: &[OsString]) -> Option<ColorChoice> {
    let mut it = args.iter().skip(1).map(|a| a.to_str().unwrap_or(""));
    let mut found = None;
    while let Some(a) = it.next() {
        let value = match a {
            "--" => break,
            "--color" => it.next(),
            _ => a.strip_prefix("--color="),
        };
        if let Some(v) = value {
            found = ColorChoice::from_str(v, true).ok();
        }
    }
    found
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
    fn every_duration_flag_takes_go_durations() {
        use std::time::Duration;
        let cli = parse(&["daemon", "--update-interval", "1h30m", "--auth-timeout", "1m30s"]);
        let Some(Command::Daemon(d)) = cli.command else { panic!("not the daemon") };
        assert_eq!(d.update_interval, Duration::from_secs(5400));
        assert_eq!(d.auth_timeout, Duration::from_secs(90));
        let cli =
            parse(&["--output-max-buffer-age", "1m30s", "serve", "--handshake-timeout", "1m30s"]);
        assert_eq!(cli.global.logdog.output_max_buffer_age, Some(Duration::from_secs(90)));
        let Some(Command::Serve(s)) = cli.command else { panic!("not serve") };
        assert_eq!(s.handshake_timeout, Duration::from_secs(90));
        let bad = parse_from(["butler", "daemon", "--update-interval", "soon"]).unwrap_err();
        assert!(bad.to_string().contains("not a duration"), "{bad}");
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}

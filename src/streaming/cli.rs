//! The streaming commands: `butler stream`, `serve`, `run` and `logs`.
//!
//! Exit statuses as upstream: usage (2) for bad flags, runtime (250) for runtime errors, the
//! child's code for `run`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, Subcommand};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::butler::{Butler, ButlerConfig, StreamEvent, StreamObserver};
use super::entry::StreamType;
use super::handshake::StreamFlags;
use super::output::{self, OutputContext, OutputError, OutputSpec};
use super::process::{self, RunOptions};
use super::server::{ServerError, StreamServer};
use super::viewer::{Viewer, ViewerError, ViewerSettings};
use super::{names, store, timefmt};
use crate::cli::GlobalArgs;
use crate::db::{self, DbPath};
use crate::exit::{ExitError, ExitStatus};
use crate::report::Reporter;
use crate::signals::{Signal, Signals};

#[derive(Debug, Args)]
pub(crate) struct StreamArgs {
    /// File to upload, or `-` for stdin.
    #[arg(long, default_value = "-", value_name = "PATH|-")]
    pub source: String,

    /// The stream: name=N,type=text|binary|datagram,content-type=C,tag=k=v (repeat tag=).
    #[arg(long, value_name = "SPEC")]
    pub stream: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Where to listen: unix:PATH (default: a fresh temp path).
    #[arg(long, value_name = "URI")]
    pub streamserver_uri: Option<String>,

    /// Drop clients that have not finished their handshake after this long.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = timefmt::parse_duration)]
    pub handshake_timeout: Duration,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Where the child's stream server listens: unix:PATH (default: a fresh temp path).
    #[arg(long, value_name = "URI")]
    pub streamserver_uri: Option<String>,

    /// Capture the child's stdout as this stream, not shown: N or name=N[,type=T,content-type=C,tag=k=v]
    /// [default with the store output: captured as `stdout` and still shown].
    #[arg(long, value_name = "SPEC")]
    pub stdout: Option<String>,

    /// Capture the child's stderr as this stream, not shown: N or name=N[,...]
    /// [default with the store output: captured as `stderr` and still shown].
    #[arg(long, value_name = "SPEC")]
    pub stderr: Option<String>,

    /// Do not store the child's stdout and stderr unless --stdout / --stderr name them: let them
    /// through as they are (upstream LogDog's behaviour, and the only one for other outputs).
    /// For interactive programs, which need a terminal.
    #[arg(long)]
    pub no_capture: bool,

    /// Give the child butler's stdin (default: an empty stdin).
    #[arg(long)]
    pub forward_stdin: bool,

    /// Run the child in this folder.
    #[arg(long, value_name = "DIR")]
    pub chdir: Option<PathBuf>,

    /// Write {"return_code": N, "command": [...]} here when the child ends.
    #[arg(long, value_name = "FILE")]
    pub result_path: Option<PathBuf>,

    /// Read the command from this JSON array of strings instead of the arguments.
    #[arg(long, value_name = "FILE")]
    pub json_args_path: Option<PathBuf>,

    /// After forwarding SIGINT/SIGTERM, how long the child has before SIGKILL.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = timefmt::parse_duration)]
    pub kill_grace: Duration,

    /// Drop clients that have not finished their handshake after this long.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = timefmt::parse_duration)]
    pub handshake_timeout: Duration,

    /// The command to run and its arguments.
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum LogsCommand {
    /// List streams (optionally only those whose path starts with PREFIX).
    #[command(
        after_help = "Examples:\n  butler logs ls\n  butler logs ls demo/   # or: butler logs ls --prefix demo/"
    )]
    Ls {
        /// Only streams whose path starts with this (also taken from --prefix).
        #[arg(id = "path_prefix", value_name = "PREFIX")]
        prefix: Option<String>,
    },
    /// Write a stream's exact bytes to stdout.
    Cat {
        /// <prefix>/+/<name>
        path: String,
    },
    /// The end of a stream; with -f, keep following it until it ends.
    #[command(
        after_help = "Examples:\n  butler logs tail -n 50 demo/run/+/stdout\n  butler logs tail -f demo/run/+/stdout   # waits for the stream if it is not there yet"
    )]
    Tail {
        /// <prefix>/+/<name>
        path: String,
        /// Keep printing new data until the stream ends.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Lines (text) or entries (binary, datagram) to show.
        #[arg(short = 'n', long, default_value_t = 10)]
        lines: usize,
        /// How often -f polls the store.
        #[arg(long, value_name = "DURATION", default_value = "200ms", value_parser = timefmt::parse_duration)]
        poll_interval: Duration,
    },
    /// Serve a live log viewer for this machine's browser; prints its private URL.
    #[command(after_help = "\
The viewer listens on loopback only and its URL carries an access token: only someone on this
machine who has the URL can see the logs. It lists streams by prefix, newest first, follows open
streams live, and reads the same store as `butler logs` (--dbpath, --project). Ctrl-C stops it.

Examples:
  butler logs web --open
  butler logs web --address 127.0.0.1:8040
  butler --json logs web    # {\"type\":\"result\",\"value\":{\"url\":...}}")]
    Web(WebArgs),
}

#[derive(Debug, Args)]
pub(crate) struct WebArgs {
    /// Where to listen: a loopback address and port (port 0 picks a free one).
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:0")]
    pub address: String,

    /// Open the viewer in a browser ($BROWSER, else the desktop's default).
    #[arg(long)]
    pub open: bool,

    /// How often the store is checked for new data.
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = timefmt::parse_duration, hide = true)]
    pub poll_interval: Duration,
}

fn usage(e: impl Into<anyhow::Error>) -> anyhow::Error {
    ExitError::new(ExitStatus::Usage, e).into()
}

fn runtime(e: impl Into<anyhow::Error>) -> anyhow::Error {
    ExitError::new(ExitStatus::Runtime, e).into()
}

/// The butler configuration and output the global flags describe.
pub(crate) fn setup(global: &GlobalArgs) -> anyhow::Result<(ButlerConfig, OutputSpec)> {
    let l = &global.logdog;
    let spec = OutputSpec::parse(l.output.as_deref().unwrap_or("store")).map_err(usage)?;
    let project = match (&l.project, &spec) {
        (Some(p), _) => p.clone(),
        (None, OutputSpec::Logdog { .. }) => {
            return Err(usage(anyhow::anyhow!("--project is required for the logdog output")));
        }
        (None, _) => names::DEFAULT_PROJECT.to_owned(),
    };
    names::validate_project(&project).map_err(|e| usage(anyhow::anyhow!("--project: {e}")))?;
    let prefix = l.prefix.clone().unwrap_or_else(names::default_prefix);
    names::validate_stream_name(&prefix).map_err(|e| usage(anyhow::anyhow!("--prefix: {e}")))?;
    let mut tags = BTreeMap::new();
    for t in &l.tags {
        let (k, v) = t.split_once('=').unwrap_or((t, ""));
        names::validate_tag(k, v).map_err(|e| usage(anyhow::anyhow!("--tag: {e}")))?;
        tags.insert(k.to_owned(), v.to_owned());
    }
    let mut cfg = ButlerConfig::new(project, prefix);
    cfg.tags = tags;
    cfg.max_buffer_age = l.output_max_buffer_age.unwrap_or_else(|| spec.default_max_buffer_age());
    if l.output_no_buffer {
        cfg.max_buffer_age = Duration::ZERO;
    }
    Ok((cfg, spec))
}

/// Opens the output for `cfg` (the store at `--dbpath` or the embedded default; for `logdog`,
/// registers the prefix with the Coordinator).
pub(crate) async fn open_output(
    global: &GlobalArgs,
    cfg: &ButlerConfig,
    spec: &OutputSpec,
) -> anyhow::Result<Box<dyn output::Output>> {
    if let OutputSpec::Logdog { service, prefix_expiration, backoff } = spec {
        let host =
            global.logdog.coordinator_host.clone().filter(|h| !h.is_empty()).ok_or_else(|| {
                usage(anyhow::anyhow!("the logdog output needs --coordinator-host"))
            })?;
        let credentials = match &global.logdog.service_account_json {
            Some(p) => Some(read_credentials(p)?),
            None => None,
        };
        let spool_dir = db::home_dir().map_err(runtime)?.join("spool").join("logdog");
        let lcfg = output::logdog::LogdogConfig {
            coordinator_host: host,
            service: service.clone(),
            project: cfg.project.clone(),
            prefix: cfg.prefix.clone(),
            prefix_expiration: *prefix_expiration,
            credentials,
            spool_dir,
            backoff: *backoff,
        };
        let out = output::logdog::LogdogOutput::register(lcfg)
            .await
            .map_err(|e| runtime(anyhow::Error::new(e).context("logdog output")))?;
        return Ok(Box::new(out));
    }
    let ctx = OutputContext {
        dbpath: global.dbpath.clone(),
        project: cfg.project.clone(),
        prefix: cfg.prefix.clone(),
    };
    output::open(spec, &ctx).map_err(|e| match e {
        OutputError::Config(_) => usage(e),
        e => runtime(anyhow::Error::new(e).context("opening the output")),
    })
}

/// The `--service-account-json` file: a service-account key, or a file with an `access_token`.
fn read_credentials(path: &str) -> anyhow::Result<output::auth::Credentials> {
    let text = fs_err::read_to_string(path).map_err(usage)?;
    output::auth::Credentials::from_json(&text)
        .map_err(|e| usage(anyhow::anyhow!("--service-account-json {path}: {e}")))
}

fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    super::butler::runtime().context("starting the async runtime").map_err(runtime)
}

async fn finish(butler: Butler) -> anyhow::Result<()> {
    let stats =
        butler.shutdown().await.map_err(|e| runtime(anyhow::Error::new(e).context("output")))?;
    tracing::debug!(?stats, "butler finished");
    Ok(())
}

pub(crate) fn stream(args: StreamArgs, global: &GlobalArgs) -> anyhow::Result<ExitStatus> {
    let (cfg, spec) = setup(global)?;
    let default_name = if args.source == "-" {
        "stdin".to_owned()
    } else {
        names::make_stream_name("file:", &[&args.source])
    };
    let flags = StreamFlags::parse_spec(args.stream.as_deref().unwrap_or(""), &default_name)
        .map_err(|e| usage(anyhow::Error::new(e).context("--stream")))?;
    let rt = tokio_runtime()?;
    rt.block_on(async {
        let mut signals = Signals::install().context("catching signals").map_err(runtime)?;
        let out = open_output(global, &cfg, &spec).await?;
        let butler = Butler::start(cfg, out);
        let reader: Box<dyn tokio::io::AsyncRead + Send + Unpin> = if args.source == "-" {
            Box::new(tokio::io::stdin())
        } else {
            Box::new(
                tokio::fs::File::open(&args.source)
                    .await
                    .with_context(|| format!("opening --source {}", args.source))
                    .map_err(runtime)?,
            )
        };
        let info = butler.handle().add_stream(flags, reader, Bytes::new()).map_err(runtime)?;
        let handle = butler.handle();
        tokio::select! {
            () = handle.wait_idle() => {}
            _ = signals.recv() => tracing::info!("signalled; flushing"),
        }
        finish(butler).await?;
        if global.json {
            Reporter::new(true, false, false)
                .result(serde_json::json!({ "path": info.path(), "project": info.project }));
        }
        Ok(ExitStatus::Success)
    })
}

pub(crate) fn serve(args: ServeArgs, global: &GlobalArgs) -> anyhow::Result<ExitStatus> {
    let (cfg, spec) = setup(global)?;
    let hs_timeout = args.handshake_timeout;
    let rt = tokio_runtime()?;
    rt.block_on(async {
        let mut signals = Signals::install().context("catching signals").map_err(runtime)?;
        let server = bind(args.streamserver_uri.as_deref())?;
        let out = open_output(global, &cfg, &spec).await?;
        let butler = Butler::start(cfg, out);
        let uri = server.uri().to_owned();
        if global.json {
            Reporter::new(true, false, false).result(serde_json::json!({ "address": uri }));
        } else {
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "{uri}");
            let _ = stdout.flush();
        }
        tracing::info!("stream server listening on {uri}");
        let stop = CancellationToken::new();
        let accept = tokio::spawn(server.run(butler.handle(), hs_timeout, stop.clone()));
        signals.recv().await;
        tracing::info!("signalled; flushing");
        stop.cancel();
        let _ = accept.await;
        finish(butler).await?;
        Ok(ExitStatus::Success)
    })
}

fn bind(uri: Option<&str>) -> anyhow::Result<StreamServer> {
    StreamServer::bind(uri).map_err(|e| match e {
        ServerError::Address(_) => usage(e),
        e => runtime(e),
    })
}

pub(crate) fn run(args: RunArgs, global: &GlobalArgs) -> anyhow::Result<ExitStatus> {
    let (mut cfg, spec) = setup(global)?;
    let prefix = cfg.prefix.clone();
    let (hs_timeout, kill_grace) = (args.handshake_timeout, args.kill_grace);
    let command = match (&args.json_args_path, args.command.is_empty()) {
        (Some(_), false) => {
            return Err(usage(anyhow::anyhow!(
                "--json-args-path cannot be combined with a command"
            )));
        }
        (Some(p), true) => {
            let text = fs_err::read_to_string(p).map_err(runtime)?;
            serde_json::from_str::<Vec<String>>(&text)
                .with_context(|| format!("{}: expected a JSON array of strings", p.display()))
                .map_err(usage)?
        }
        (None, _) => args.command.clone(),
    };
    if command.is_empty() {
        return Err(usage(anyhow::anyhow!("no command: butler run [flags] -- COMMAND ARGS...")));
    }
    // Into the store, unnamed output is captured by default and still shown (not into stdout
    // with --json: stdout is for JSON lines there).
    let capture = !args.no_capture && spec == OutputSpec::Store;
    let fd = |spec: Option<&str>, name: &str, flag: &str| {
        let flags = spec
            .map(|s| StreamFlags::parse_spec(s, name))
            .transpose()
            .map_err(|e| usage(anyhow::Error::new(e).context(flag.to_owned())))?;
        Ok::<_, anyhow::Error>(match flags {
            Some(f) => (Some(f), false),
            None if capture => (Some(StreamFlags::new(name, StreamType::Text)), true),
            None => (None, false),
        })
    };
    let (stdout, tee_stdout) = fd(args.stdout.as_deref(), "stdout", "--stdout")?;
    let (stderr, tee_stderr) = fd(args.stderr.as_deref(), "stderr", "--stderr")?;
    let tee_stdout = tee_stdout && !global.json;
    let opened = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = Arc::clone(&opened);
    cfg.observer = Some(StreamObserver(Arc::new(move |event| {
        if let StreamEvent::Opened(s) = event {
            seen.lock().unwrap_or_else(|p| p.into_inner()).push(s.path());
        }
    })));
    let rt = tokio_runtime()?;
    rt.block_on(async {
        let signals = Signals::install().context("catching signals").map_err(runtime)?;
        let server = bind(args.streamserver_uri.as_deref())?;
        let out = open_output(global, &cfg, &spec).await?;
        let coordinator_host = out.coordinator_host();
        let butler = Butler::start(cfg, out);
        let (sig_tx, sig_rx) = mpsc::channel(4);
        let forwarder = tokio::spawn(forward_signals(signals, sig_tx));
        let opts = RunOptions {
            command: command.clone(),
            cwd: args.chdir.clone(),
            env: Vec::new(),
            stdout,
            stderr,
            tee_stdout,
            tee_stderr,
            forward_stdin: args.forward_stdin,
            kill_grace,
            die_with_butler: false,
            coordinator_host,
        };
        let (result, flushed) =
            process::run_with_stream_server(butler, server, hs_timeout, &opts, sig_rx, |pid| {
                tracing::debug!("child pid {pid}")
            })
            .await;
        forwarder.abort();
        let flushed = flushed
            .map(|stats| tracing::debug!(?stats, "butler finished"))
            .map_err(|e| runtime(anyhow::Error::new(e).context("output")));
        let outcome = result.map_err(runtime)?;
        // The child's result is recorded even when the output failed (the error still wins the
        // exit code, so an undelivered log is never mistaken for success).
        if let Some(path) = &args.result_path {
            let program = process::resolve_program(&command[0], args.chdir.as_deref())
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| command[0].clone());
            let mut cmd = vec![program];
            cmd.extend(command[1..].iter().cloned());
            let body = serde_json::json!({ "return_code": outcome.exit_code, "command": cmd });
            fs_err::write(path, serde_json::to_vec_pretty(&body).unwrap_or_default())
                .map_err(runtime)?;
        }
        flushed?;
        let streams = std::mem::take(&mut *opened.lock().unwrap_or_else(|p| p.into_inner()));
        if global.json {
            Reporter::new(true, false, false).result(serde_json::json!({
                "exitCode": outcome.exit_code,
                "prefix": prefix,
                "streams": streams,
            }));
        } else if !global.quiet && spec == OutputSpec::Store {
            say_where_it_went(&prefix, &streams);
        }
        Ok(ExitStatus::Child(outcome.exit_code))
    })
}

/// After `butler run` into the store: where the output went and how to read it.
fn say_where_it_went(prefix: &str, streams: &[String]) {
    let Some(first) = streams.first() else {
        eprintln!(
            "butler: nothing was stored (--no-capture; name streams with --stdout / --stderr)"
        );
        return;
    };
    let names: Vec<&str> =
        streams.iter().map(|p| names::split_path(p).map_or(p.as_str(), |(_, n)| n)).collect();
    let what = if names.len() <= 3 { names.join(", ") } else { format!("{} streams", names.len()) };
    eprintln!(
        "butler: stored {what} in the log store under {prefix}\n  read with: butler logs cat {first}   (or: butler logs ls {prefix}/, butler logs web)"
    );
}

async fn forward_signals(mut signals: Signals, tx: mpsc::Sender<Signal>) {
    loop {
        let sig = signals.recv().await;
        if tx.send(sig).await.is_err() {
            return;
        }
    }
}

pub(crate) fn logs(cmd: LogsCommand, global: &GlobalArgs) -> anyhow::Result<ExitStatus> {
    let project =
        global.logdog.project.clone().unwrap_or_else(|| names::DEFAULT_PROJECT.to_owned());
    names::validate_project(&project).map_err(|e| usage(anyhow::anyhow!("--project: {e}")))?;
    let path = DbPath::resolve(global.dbpath.as_deref()).map_err(runtime)?;
    let cmd = match cmd {
        LogsCommand::Web(args) => return web(args, global, project, path),
        LogsCommand::Cat { .. } | LogsCommand::Tail { .. } if global.json => {
            return Err(usage(anyhow::anyhow!(
                "--json: `logs cat` and `logs tail` write the stream's own bytes, not JSON; for JSON use `logs ls --json`, the daemon's Streams.Read, or `logs web`"
            )));
        }
        cmd => cmd,
    };
    // A malformed path is a usage error whether or not there is a database.
    if let LogsCommand::Cat { path: stream, .. } | LogsCommand::Tail { path: stream, .. } = &cmd
        && names::split_path(stream).is_none()
    {
        return Err(usage(store::StoreError::BadPath(stream.clone())));
    }
    // Reading needs no write (a full disk must not stop it); only `tail -f` may wait for a
    // database that does not exist yet.
    let conn = match db::open_for_reading(&path) {
        Err(db::DbError::Missing { .. })
            if matches!(cmd, LogsCommand::Tail { follow: true, .. }) =>
        {
            db::open(&path)
        }
        // No database holds no streams: `ls` lists none (from an empty one in memory) and
        // creates nothing.
        Err(db::DbError::Missing { .. }) if matches!(cmd, LogsCommand::Ls { .. }) => {
            db::open(&DbPath::Special(":memory:".into()))
        }
        Err(e @ db::DbError::Missing { .. }) => {
            let (LogsCommand::Cat { path: stream, .. } | LogsCommand::Tail { path: stream, .. }) =
                &cmd
            else {
                unreachable!("ls and web are handled above")
            };
            return Err(runtime(anyhow::anyhow!("no stream {stream}: {e}")));
        }
        other => other,
    }
    .map_err(runtime)?;
    let reporter = Reporter::new(global.json, global.verbose, global.quiet);
    match cmd {
        LogsCommand::Ls { prefix } => {
            let prefix = prefix.or_else(|| global.logdog.prefix.clone());
            let streams =
                store::list_streams(&conn, &project, prefix.as_deref()).map_err(runtime)?;
            if global.json {
                reporter.result(serde_json::json!({ "streams": streams }));
            } else if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                print_stream_table(&streams, prefix.as_deref());
            } else {
                // For scripts: one tab-separated line per stream, oldest first (--json has more).
                let mut out = std::io::stdout().lock();
                for s in &streams {
                    let state = if s.terminal { "complete" } else { "open" };
                    let entries = if s.entries == 1 { "entry" } else { "entries" };
                    let _ = writeln!(
                        out,
                        "{}\t{}\t{} {entries}\t{} bytes\t{state}",
                        s.path, s.stream_type, s.entries, s.bytes
                    );
                }
            }
            Ok(ExitStatus::Success)
        }
        LogsCommand::Cat { path } => {
            let s = find(&conn, &project, &path)?;
            let mut out = std::io::BufWriter::with_capacity(256 * 1024, std::io::stdout().lock());
            store::write_stream(&conn, &s, 0, &mut out).map_err(runtime)?;
            out.flush().map_err(runtime)?;
            Ok(ExitStatus::Success)
        }
        LogsCommand::Web(_) => unreachable!("served above"),
        LogsCommand::Tail { path, follow, lines, poll_interval } => {
            let poll = poll_interval;
            let s = if follow {
                wait_for(&conn, &project, &path, poll, global.quiet)?
            } else {
                find(&conn, &project, &path)?
            };
            let mut out = std::io::stdout().lock();
            let mut next = store::write_tail(&conn, &s, lines, &mut out).map_err(runtime)?;
            out.flush().map_err(runtime)?;
            if follow {
                loop {
                    let cur = store::refresh(&conn, s.id)
                        .map_err(runtime)?
                        .ok_or_else(|| runtime(anyhow::anyhow!("{path} vanished")))?;
                    next = store::write_stream(&conn, &cur, next, &mut out).map_err(runtime)?;
                    out.flush().map_err(runtime)?;
                    if cur.terminal && next >= cur.entries {
                        break;
                    }
                    if cur.abandoned && next >= cur.entries {
                        eprintln!(
                            "butler: {path} was cut short: the butler writing it died before ending it"
                        );
                        return Ok(ExitStatus::Runtime);
                    }
                    std::thread::sleep(poll);
                }
            }
            Ok(ExitStatus::Success)
        }
    }
}

/// `logs ls` at a terminal: a header, when each stream started, sizes people read, newest last
/// (next to the prompt), and what to do when there is nothing.
fn print_stream_table(streams: &[store::StoredStream], prefix: Option<&str>) {
    let mut out = std::io::stdout().lock();
    if streams.is_empty() {
        let _ = match prefix {
            Some(p) => writeln!(out, "no streams under {p:?} (butler logs ls lists them all)"),
            None => {
                writeln!(out, "no streams yet: `butler run -- COMMAND` stores a command's output")
            }
        };
        return;
    }
    let now = std::time::SystemTime::now();
    let _ = writeln!(
        out,
        "{:<10} {:<8} {:>8} {:>10} {:<8} PATH",
        "STARTED", "TYPE", "ENTRIES", "SIZE", "STATE"
    );
    for s in streams {
        let age = timefmt::parse_rfc3339(&s.timestamp)
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .map_or_else(|| "?".to_owned(), ago);
        let state = if s.terminal { "done" } else { "open" };
        let _ = writeln!(
            out,
            "{age:<10} {:<8} {:>8} {:>10} {state:<8} {}",
            s.stream_type,
            s.entries,
            size(s.bytes),
            s.path
        );
    }
}

fn ago(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

fn size(bytes: u64) -> String {
    match bytes {
        0..1024 => format!("{bytes} B"),
        1024..1048576 => format!("{:.1} KiB", bytes as f64 / 1024.0),
        _ => format!("{:.1} MiB", bytes as f64 / 1048576.0),
    }
}

/// `butler logs web`: bind, print the URL, serve until SIGINT/SIGTERM.
fn web(
    args: WebArgs,
    global: &GlobalArgs,
    project: String,
    dbpath: DbPath,
) -> anyhow::Result<ExitStatus> {
    let address: std::net::SocketAddr = args.address.parse().map_err(|_| {
        usage(anyhow::anyhow!(
            "--address {:?} is not IP:PORT (for example 127.0.0.1:8040, or [::1]:0 for any free port)",
            args.address
        ))
    })?;
    let settings = ViewerSettings { address, dbpath, project, poll: args.poll_interval };
    let rt = tokio_runtime()?;
    rt.block_on(async {
        let mut signals = Signals::install().context("catching signals").map_err(runtime)?;
        let viewer = Viewer::bind(settings).await.map_err(|e| match e {
            ViewerError::NotLoopback(_) => usage(e),
            e => runtime(e),
        })?;
        let url = viewer.url();
        if global.json {
            Reporter::new(true, false, false)
                .result(serde_json::json!({ "url": url, "address": viewer.address().to_string() }));
        } else {
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "{url}");
            let _ = stdout.flush();
            if !global.quiet {
                eprintln!("butler: serving the log viewer at the URL above; Ctrl-C stops it");
            }
        }
        if args.open {
            open_browser(&url);
        }
        let stop = CancellationToken::new();
        let serving = tokio::spawn(viewer.run(stop.clone()));
        signals.recv().await;
        stop.cancel();
        let _ = serving.await;
        Ok(ExitStatus::Success)
    })
}

/// Opens `url` in a browser: the first command in `$BROWSER` (as Python's `webbrowser` reads
/// it), else the desktop's opener. A failure is only a warning: the URL is printed anyway.
fn open_browser(url: &str) {
    let browser = std::env::var("BROWSER").ok().and_then(|b| {
        b.split(if cfg!(windows) { ';' } else { ':' })
            .map(str::trim)
            .find(|c| !c.is_empty())
            .map(str::to_owned)
    });
    let mut cmd = match browser {
        Some(b) => std::process::Command::new(b),
        None if cfg!(target_os = "macos") => std::process::Command::new("open"),
        None if cfg!(windows) => {
            let mut c = std::process::Command::new("cmd");
            c.args(["/C", "start", ""]);
            c
        }
        None => std::process::Command::new("xdg-open"),
    };
    cmd.arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    match cmd.spawn() {
        // Reaped on a thread so it leaves no zombie; its status does not matter.
        Ok(mut child) => {
            std::thread::spawn(move || child.wait());
        }
        Err(e) => tracing::warn!(
            "could not open a browser ({:?}: {e}); open the URL yourself",
            cmd.get_program()
        ),
    }
}

/// The stream at `path`, waiting for it to appear (as `tail -F` waits for a file): a stream
/// another butler is about to open is followed from its first line.
fn wait_for(
    conn: &rusqlite::Connection,
    project: &str,
    path: &str,
    poll: Duration,
    quiet: bool,
) -> anyhow::Result<store::StoredStream> {
    let mut said = false;
    loop {
        if let Some(s) = store::find_stream(conn, project, path).map_err(usage)? {
            return Ok(s);
        }
        if !said && !quiet {
            eprintln!(
                "butler: waiting for {path} to appear in project {project} of the log store (Ctrl-C to stop)"
            );
            said = true;
        }
        std::thread::sleep(poll);
    }
}

fn find(
    conn: &rusqlite::Connection,
    project: &str,
    path: &str,
) -> anyhow::Result<store::StoredStream> {
    store::find_stream(conn, project, path).map_err(usage)?.ok_or_else(|| {
        runtime(anyhow::anyhow!("no stream {path} in project {project} of the log store"))
    })
}

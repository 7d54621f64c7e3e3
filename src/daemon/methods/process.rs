//! `Process.Run`: a launcher runs a game (or any command) through the daemon, its output captured
//! into the local log store as LogDog streams, exactly as `butler run` does.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::daemon::jsonrpc::{RpcError, code};
use crate::daemon::notifications::{ProcessStarted, StreamsClosed, StreamsOpened};
use crate::daemon::router::{Ctx, Router};
use crate::daemon::state::Daemon;
use crate::signals::Signal;
use crate::streaming::butler::{Butler, ButlerConfig, StreamEvent, StreamObserver};
use crate::streaming::entry::StreamType;
use crate::streaming::handshake::StreamFlags;
use crate::streaming::names::{self, DEFAULT_PROJECT as PROJECT};
use crate::streaming::output::{self, OutputContext, OutputError, OutputSpec};
use crate::streaming::process::{self, RunOptions};
use crate::streaming::server::StreamServer;
use crate::streaming::store;

pub(super) fn register(r: &mut Router) {
    r.method_owning_cancel("Process.Run", run)
        .doc(
            "Runs a command (a game, say) with a stream server, its stdout and stderr captured \
             into the local log store as streams, exactly as `butler run` does; answers when \
             it exits. `Process.Started` comes first; the streams it opens and closes are \
             announced to `Meta.Flow` connections. Cancelling (closing the connection, \
             `Operation.Cancel`) stops the child and answers 499 with `data.exitCode`.",
        )
        .notifies::<ProcessStarted>()
        .errors(&[code::DATABASE_UNAVAILABLE, code::OPERATION_CANCELLED]);
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// After a cancel's SIGTERM, how long the child has before SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct RunParams {
    /// The program and its arguments.
    #[schemars(example = ["game", "--windowed"])]
    command: Vec<String>,
    /// Its working directory (default: the daemon's).
    cwd: Option<PathBuf>,
    /// Variables added to the daemon's environment.
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// The stream stdout becomes: a name, or `name=N,content-type=C,tag=k=v`. Default `stdout`.
    stdout: Option<String>,
    /// As `stdout`; default `stderr`.
    stderr: Option<String>,
    /// Stream prefix (default `butler/users/<user>/<random>`).
    prefix: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct RunResult {
    /// The exit code, or 128 + N when signal N killed the child.
    exit_code: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    signal: Option<i32>,
    /// Paths (`<prefix>/+/<name>`) of every stream the run produced, the child's own included.
    streams: Vec<String>,
}

fn stream_flags(spec: Option<&str>, default: &str) -> Result<StreamFlags, RpcError> {
    match spec {
        Some(s) if s.contains('=') => StreamFlags::parse_spec(s, default)
            .map_err(|e| RpcError::invalid_params("Process.Run", format!("{e:#}"))),
        Some(name) => {
            names::validate_stream_name(name)
                .map_err(|e| RpcError::invalid_params("Process.Run", e))?;
            Ok(StreamFlags::new(name, StreamType::Text))
        }
        None => Ok(StreamFlags::new(default, StreamType::Text)),
    }
}

async fn run(ctx: Ctx, p: RunParams) -> Result<RunResult, RpcError> {
    let invalid = |e: String| RpcError::invalid_params("Process.Run", e);
    if p.command.is_empty() {
        return Err(invalid("\"command\" must name a program".into()));
    }
    let prefix = p.prefix.clone().unwrap_or_else(names::default_prefix);
    names::validate_stream_name(&prefix).map_err(|e| invalid(format!("prefix: {e}")))?;
    // The daemon's stdout is its JSON channel: the child's output is always captured.
    let stdout = stream_flags(p.stdout.as_deref(), "stdout")?;
    let stderr = stream_flags(p.stderr.as_deref(), "stderr")?;

    let daemon = ctx.daemon();
    let context = OutputContext {
        dbpath: daemon.config.dbpath.clone(),
        project: PROJECT.to_owned(),
        prefix: prefix.clone(),
    };
    // Opening the store may wait for SQLite's lock (up to its busy timeout): never on one of the
    // runtime's two workers, which every connection shares.
    let store = tokio::task::spawn_blocking(move || output::open(&OutputSpec::Store, &context))
        .await
        .map_err(RpcError::internal)?;
    let out = store.map_err(|e| match e {
        // The caller's prefix is taken: their mistake.
        OutputError::Config(why) => invalid(why),
        // The store cannot be opened: the database is down, whatever the params.
        e => {
            RpcError::new(code::DATABASE_UNAVAILABLE, format!("the log store is unavailable: {e}"))
        }
    })?;
    let server = StreamServer::bind(None).map_err(RpcError::internal)?;
    let server_uri = server.uri().to_owned();
    let mut config = ButlerConfig::new(PROJECT, prefix.clone());
    config.max_buffer_age = OutputSpec::Store.default_max_buffer_age();
    let opened = Arc::new(Mutex::new(Vec::new()));
    config.observer = Some(announce_streams(daemon, Arc::clone(&opened)));
    let butler = Butler::start(config, out);
    let opts = RunOptions {
        command: p.command.clone(),
        cwd: p.cwd.clone(),
        env: p.env.into_iter().collect(),
        stdout: Some(stdout),
        stderr: Some(stderr),
        tee_stdout: false,
        tee_stderr: false,
        forward_stdin: false,
        kill_grace: KILL_GRACE,
        die_with_butler: true,
        coordinator_host: None,
    };

    let (pid_tx, pid_rx) = oneshot::channel();
    let started = {
        let ctx = ctx.clone();
        async move {
            if let Ok(pid) = pid_rx.await {
                ctx.notify(ProcessStarted { pid, stream_server: server_uri }).await;
            }
        }
    };
    let _running = daemon.restart.try_start_process().map_err(RpcError::internal)?;
    let (sig_tx, sig_rx) = mpsc::channel(2);
    let running =
        process::run_with_stream_server(butler, server, HANDSHAKE_TIMEOUT, &opts, sig_rx, |pid| {
            let _ = pid_tx.send(pid);
        });
    let mut running = std::pin::pin!(running);
    let mut started = std::pin::pin!(started);
    let (mut cancelled, mut notified) = (false, false);
    let (outcome, flushed) = loop {
        tokio::select! {
            r = &mut running => break r,
            _ = &mut started, if !notified => notified = true,
            _ = ctx.cancelled(), if !cancelled => {
                // SIGTERM, then the grace period, then SIGKILL: run_child does the rest.
                cancelled = true;
                let _ = sig_tx.send(Signal::Terminate).await;
            }
        }
    };
    // The notification goes out before the reply, whatever order the tasks ran in.
    if !notified {
        started.await;
    }
    // Flushed (or failed for good): followers no longer wait for these streams.
    for path in std::mem::take(&mut *opened.lock().unwrap_or_else(|p| p.into_inner())) {
        daemon.forget_stream(&path);
    }
    let outcome = outcome.map_err(|e| invalid(e.to_string()))?;
    flushed.map_err(|e| RpcError::internal(format!("storing the process's output: {e}")))?;
    if cancelled {
        return Err(RpcError::cancelled().with("exitCode", outcome.exit_code));
    }
    let db = daemon.db().await?;
    let streams = db
        .call(move |conn| store::streams_of_prefix(conn, PROJECT, &prefix).map_err(Into::into))
        .await
        .map_err(RpcError::internal)?;
    Ok(RunResult {
        exit_code: outcome.exit_code,
        signal: outcome.signal,
        streams: streams.into_iter().map(|s| s.path).collect(),
    })
}

/// Tells every `Meta.Flow` connection of each stream the child opens (`Streams.Opened`) and ends
/// (`Streams.Closed`), in order, from a task that lives as long as the butler's config. Each
/// opened path is also marked announced at once (and listed in `opened`, for the run to forget
/// when it ends), so a `Streams.Follow` sent on `Streams.Opened` waits for it.
fn announce_streams(daemon: &Arc<Daemon>, opened: Arc<Mutex<Vec<String>>>) -> StreamObserver {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let d = Arc::clone(daemon);
    daemon.tracker.spawn(async move {
        while let Some(event) = rx.recv().await {
            match event {
                StreamEvent::Opened(s) => {
                    d.broadcast(StreamsOpened {
                        path: s.path(),
                        project: s.project.clone(),
                        stream_type: s.stream_type.as_str(),
                        content_type: s.content_type.clone(),
                        tags: s.tags.clone(),
                    })
                    .await
                }
                StreamEvent::Closed { stream, entries } => {
                    let (path, project) = (stream.path(), stream.project.clone());
                    d.broadcast(StreamsClosed { path, project, entries }).await
                }
            }
        }
    });
    let d = Arc::clone(daemon);
    StreamObserver(Arc::new(move |event| {
        if let StreamEvent::Opened(s) = &event {
            let path = s.path();
            d.announce_stream(path.clone());
            opened.lock().unwrap_or_else(|p| p.into_inner()).push(path);
        }
        let _ = tx.send(event);
    }))
}

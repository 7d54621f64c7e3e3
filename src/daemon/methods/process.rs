//! `Process.Run`: a launcher runs a game (or any command) through the daemon, its output captured
//! into the local log store as LogDog streams, exactly as `butler run` does.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::daemon::jsonrpc::RpcError;
use crate::daemon::router::{Ctx, Router};
use crate::daemon::state::Daemon;
use crate::streaming::butler::{Butler, ButlerConfig, StreamEvent, StreamObserver};
use crate::streaming::entry::StreamType;
use crate::streaming::handshake::StreamFlags;
use crate::streaming::output::{self, OutputContext, OutputSpec};
use crate::streaming::process::{self, RunOptions};
use crate::streaming::server::StreamServer;
use crate::streaming::{cli, names, store};

pub fn register(r: &mut Router) {
    r.cancellable("Process.Run", run);
}

/// The project daemon-run processes log under (what `butler logs` reads by default).
const PROJECT: &str = "local";
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// After a cancel's SIGTERM, how long the child has before SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RunParams {
    command: Vec<String>,
    cwd: Option<PathBuf>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// The stream stdout becomes: a name, or `name=N,content-type=C,tag=k=v`. Default `stdout`.
    stdout: Option<String>,
    /// As `stdout`; default `stderr`.
    stderr: Option<String>,
    /// Stream prefix (default `butler/users/<user>/<random>`).
    prefix: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RunResult {
    /// The exit code, or 128 + N when signal N killed the child.
    exit_code: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    signal: Option<i32>,
    /// Paths (`<prefix>/+/<name>`) of every stream the run produced, the child's own included.
    streams: Vec<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Started {
    pid: u32,
    stream_server: String,
}

fn stream_flags(spec: Option<&str>, default: &str) -> Result<StreamFlags, RpcError> {
    match spec {
        Some(s) if s.contains('=') => cli::parse_stream_spec(s, default)
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
    let prefix = p.prefix.clone().unwrap_or_else(cli::default_prefix);
    names::validate_stream_name(&prefix).map_err(|e| invalid(format!("prefix: {e}")))?;
    // The daemon's stdout is its JSON channel: the child's output is always captured.
    let stdout = stream_flags(p.stdout.as_deref(), "stdout")?;
    let stderr = stream_flags(p.stderr.as_deref(), "stderr")?;

    let daemon = ctx.daemon();
    let out = output::open(
        &OutputSpec::Store,
        &OutputContext {
            dbpath: daemon.config.dbpath.clone(),
            project: PROJECT.to_owned(),
            prefix: prefix.clone(),
        },
    )
    .map_err(|e| invalid(e.to_string()))?;
    let server = StreamServer::bind(None).map_err(RpcError::internal)?;
    let server_uri = server.uri().to_owned();
    let mut config = ButlerConfig::new(PROJECT, prefix.clone());
    config.observer = Some(announce_streams(daemon));
    let butler = Butler::start(config, out);
    let opts = RunOptions {
        command: p.command.clone(),
        cwd: p.cwd.clone(),
        env: p.env.into_iter().collect(),
        stdout: Some(stdout),
        stderr: Some(stderr),
        forward_stdin: false,
        kill_grace: KILL_GRACE,
        coordinator_host: None,
    };

    let (pid_tx, pid_rx) = oneshot::channel();
    let started = {
        let ctx = ctx.clone();
        async move {
            if let Ok(pid) = pid_rx.await {
                ctx.notify("Process.Started", Started { pid, stream_server: server_uri }).await;
            }
        }
    };
    let _running = RunningProcess::count(daemon);
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    if daemon.hand_over_target().is_some() {
        return Err(RpcError::internal(
            "the daemon is restarting into an update; start the process again in a moment",
        ));
    }
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
                let _ = sig_tx.send(libc::SIGTERM).await;
            }
        }
    };
    // The notification goes out before the reply, whatever order the tasks ran in.
    if !notified {
        started.await;
    }
    let outcome = outcome.map_err(|e| invalid(e.to_string()))?;
    flushed.map_err(|e| RpcError::internal(format!("storing the process's output: {e}")))?;
    if cancelled {
        return Err(RpcError::cancelled().with("exitCode", outcome.exit_code));
    }
    let db = daemon.db().await?;
    let streams = db
        .call(move |conn| {
            store::list_streams(conn, PROJECT, Some(&format!("{prefix}/+/")))
                .map_err(|e| crate::db::DbError::Query(e.to_string()))
        })
        .await
        .map_err(RpcError::internal)?;
    Ok(RunResult {
        exit_code: outcome.exit_code,
        signal: outcome.signal,
        streams: streams.into_iter().map(|s| s.path).collect(),
    })
}

/// Tells every `Meta.Flow` connection of each stream the child opens (`Streams.Opened`) and ends
/// (`Streams.Closed`), in order, from a task that lives as long as the butler's config.
fn announce_streams(daemon: &Arc<Daemon>) -> StreamObserver {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let d = Arc::clone(daemon);
    daemon.tracker.spawn(async move {
        while let Some(event) = rx.recv().await {
            let (method, params) = match event {
                StreamEvent::Opened(s) => (
                    "Streams.Opened",
                    json!({
                        "path": s.path(),
                        "project": s.project,
                        "type": s.stream_type.as_str(),
                        "contentType": s.content_type,
                        "tags": s.tags,
                    }),
                ),
                StreamEvent::Closed { stream, entries } => (
                    "Streams.Closed",
                    json!({"path": stream.path(), "project": stream.project, "entries": entries}),
                ),
            };
            d.broadcast(method, params).await;
        }
    });
    StreamObserver(Arc::new(move |event| {
        let _ = tx.send(event);
    }))
}

/// Counts a `Process.Run` child as running for as long as it lives (a restart waits for none).
struct RunningProcess(Arc<Daemon>);

impl RunningProcess {
    fn count(daemon: &Arc<Daemon>) -> Self {
        daemon.running_processes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        RunningProcess(Arc::clone(daemon))
    }
}

impl Drop for RunningProcess {
    fn drop(&mut self) {
        self.0.running_processes.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

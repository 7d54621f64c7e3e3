//! Running a child with a stream server (`butler run`, the daemon's `Process.Run`): the
//! `LOGDOG_*` environment, named stdout/stderr as text streams, signal forwarding with a grace
//! period, and waiting for every stream (grandchildren's too) before returning.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use tokio_util::sync::CancellationToken;

use super::butler::{AddStreamError, Butler, ButlerHandle, Stats};
use super::handshake::StreamFlags;
use super::output::OutputError;
use super::server::StreamServer;
use super::streamclient::{
    ENV_COORDINATOR_HOST, ENV_STREAM_PREFIX, ENV_STREAM_PROJECT, ENV_STREAM_SERVER_PATH,
};
use crate::signals::Signal;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ProcessError {
    #[error("no command to run")]
    NoCommand,
    #[error("cannot start {command:?}: {source}")]
    Spawn { command: String, source: std::io::Error },
    #[error("waiting for the child: {0}")]
    Wait(std::io::Error),
    #[error("cannot capture the child's {which}: {source}")]
    Stream { which: &'static str, source: AddStreamError },
}

/// How to run the child.
#[derive(Debug, Clone, Default)]
pub(crate) struct RunOptions {
    pub command: Vec<String>,
    pub cwd: Option<PathBuf>,
    /// Extra environment for the child (after the `LOGDOG_*` variables).
    pub env: Vec<(String, String)>,
    /// Capture stdout as this stream (else it passes through).
    pub stdout: Option<StreamFlags>,
    pub stderr: Option<StreamFlags>,
    /// A captured stdout / stderr is also copied to butler's own (so a person still sees it).
    pub tee_stdout: bool,
    pub tee_stderr: bool,
    pub forward_stdin: bool,
    /// After a forwarded signal, how long the child has before SIGKILL.
    pub kill_grace: Duration,
    pub coordinator_host: Option<String>,
}

/// How the child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RunOutcome {
    pub pid: u32,
    /// The exit code, or 128 + N when signal N killed it.
    pub exit_code: i32,
    pub signal: Option<i32>,
}

/// Finds `program` as a shell would (for `--result-path`'s absolute command).
pub(crate) fn resolve_program(program: &str, cwd: Option<&Path>) -> Option<PathBuf> {
    let p = Path::new(program);
    if program.contains('/') {
        let full = if p.is_absolute() {
            p.to_owned()
        } else {
            cwd.map(Path::to_owned).or_else(|| std::env::current_dir().ok())?.join(p)
        };
        return Some(full);
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(program)).find(|c| c.is_file())
}

/// What `butler run` and the daemon's `Process.Run` share: serve `server` into `butler` while the
/// child runs, then flush. The child's outcome and the output's flush come back separately, so a
/// caller can record the first even when the second failed.
pub(crate) async fn run_with_stream_server(
    butler: Butler,
    server: StreamServer,
    handshake_timeout: Duration,
    opts: &RunOptions,
    signals: mpsc::Receiver<Signal>,
    started: impl FnOnce(u32),
) -> (Result<RunOutcome, ProcessError>, Result<Stats, OutputError>) {
    let uri = server.uri().to_owned();
    let stop = CancellationToken::new();
    let accept = tokio::spawn(server.run(butler.handle(), handshake_timeout, stop.clone()));
    let handle = butler.handle();
    let outcome = run_child(&handle, &uri, opts, signals, started).await;
    stop.cancel();
    let _ = accept.await;
    drop(handle);
    (outcome, butler.shutdown().await)
}

/// Runs the child to completion with `server_uri` as its stream server. `signals` carries
/// the signals to forward; the first starts the grace period.
pub(crate) async fn run_child(
    butler: &ButlerHandle,
    server_uri: &str,
    opts: &RunOptions,
    mut signals: mpsc::Receiver<Signal>,
    started: impl FnOnce(u32),
) -> Result<RunOutcome, ProcessError> {
    let (program, args) = opts.command.split_first().ok_or(ProcessError::NoCommand)?;
    let cfg = butler.config();
    let mut cmd = tokio::process::Command::new(program);
    // If this future is dropped (a shutdown past its deadline), the child must not outlive it.
    cmd.kill_on_drop(true);
    cmd.args(args)
        .env(ENV_STREAM_SERVER_PATH, server_uri)
        .env(ENV_STREAM_PREFIX, &cfg.prefix)
        .env(ENV_STREAM_PROJECT, &cfg.project)
        .stdin(if opts.forward_stdin { Stdio::inherit() } else { Stdio::null() })
        .stdout(if opts.stdout.is_some() { Stdio::piped() } else { Stdio::inherit() })
        .stderr(if opts.stderr.is_some() { Stdio::piped() } else { Stdio::inherit() });
    if let Some(host) = &opts.coordinator_host {
        cmd.env(ENV_COORDINATOR_HOST, host);
    }
    for (k, v) in &opts.env {
        cmd.env(k, v);
    }
    if let Some(dir) = &opts.cwd {
        cmd.current_dir(dir);
    }
    let mut child =
        cmd.spawn().map_err(|source| ProcessError::Spawn { command: program.clone(), source })?;
    let pid = child.id().unwrap_or(0);
    started(pid);
    let mut capture_err = None;
    let mut tees = Vec::new();
    if let (Some(flags), Some(out)) = (&opts.stdout, child.stdout.take()) {
        let added = if opts.tee_stdout {
            let (copy, reader) = tee(out, tokio::io::stdout());
            tees.push(copy);
            butler.add_stream(flags.clone(), reader, Bytes::new())
        } else {
            butler.add_stream(flags.clone(), out, Bytes::new())
        };
        if let Err(source) = added {
            capture_err = Some(ProcessError::Stream { which: "stdout", source });
        }
    }
    if let (Some(flags), Some(err)) = (&opts.stderr, child.stderr.take()) {
        let added = if opts.tee_stderr {
            let (copy, reader) = tee(err, tokio::io::stderr());
            tees.push(copy);
            butler.add_stream(flags.clone(), reader, Bytes::new())
        } else {
            butler.add_stream(flags.clone(), err, Bytes::new())
        };
        if let Err(source) = added {
            capture_err.get_or_insert(ProcessError::Stream { which: "stderr", source });
        }
    }
    // A copier still blocked on a pipe a grandchild holds ends with the run.
    let _tees = AbortOnDrop(tees);
    if capture_err.is_some() {
        signal(pid, libc::SIGKILL);
    }
    let mut kill_at: Option<tokio::time::Instant> = None;
    let mut signals_open = true;
    let status = loop {
        tokio::select! {
            s = child.wait() => break s.map_err(ProcessError::Wait)?,
            sig = signals.recv(), if signals_open => match sig {
                Some(sig) => {
                    tracing::info!("forwarding {sig:?} to the child (pid {pid})");
                    signal(pid, sig.number());
                    kill_at.get_or_insert(tokio::time::Instant::now() + opts.kill_grace);
                }
                None => signals_open = false,
            },
            () = async { tokio::time::sleep_until(kill_at.unwrap_or_else(tokio::time::Instant::now)).await }, if kill_at.is_some() => {
                tracing::warn!("the child (pid {pid}) outlived its grace period; killing it");
                signal(pid, libc::SIGKILL);
                kill_at = None;
            }
        }
    };
    if let Some(e) = capture_err {
        return Err(e);
    }
    // Every stream: the child's stdout/stderr and whatever its descendants opened.
    butler.wait_idle().await;
    use std::os::unix::process::ExitStatusExt;
    let outcome = match (status.code(), status.signal()) {
        (Some(code), _) => RunOutcome { pid, exit_code: code, signal: None },
        (None, Some(sig)) => RunOutcome { pid, exit_code: 128 + sig, signal: Some(sig) },
        (None, None) => RunOutcome { pid, exit_code: 250, signal: None },
    };
    Ok(outcome)
}

/// Aborts the tasks when dropped.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Copies everything read from `from` to `show` and to the returned reader (the stream's), with
/// backpressure from the stream: the copy reads no more than the stream has taken. `show` failing
/// (a closed terminal or pipe) stops only the showing, never the capture.
fn tee<R, W>(mut from: R, mut show: W) -> (tokio::task::JoinHandle<()>, tokio::io::DuplexStream)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (mut into, reader) = tokio::io::duplex(64 * 1024);
    let copy = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut showing = true;
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if showing && (show.write_all(&buf[..n]).await.is_err() || show.flush().await.is_err())
            {
                showing = false;
            }
            if into.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    });
    (copy, reader)
}

fn signal(pid: u32, sig: i32) {
    if pid == 0 {
        return;
    }
    // SAFETY: kill(2) with a pid we spawned and still reap; no memory is involved.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

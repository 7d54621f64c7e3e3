//! Running a child with a stream server (`butler run`, the daemon's `Process.Run`): the
//! `LOGDOG_*` environment, named stdout/stderr as text streams, signal forwarding with a grace
//! period, and waiting for every stream (grandchildren's too) before returning.
//!
//! Stopping differs by platform ([`Tree`]): on unix the child leads a process group of its own,
//! which gets the forwarded signal, then SIGKILL; on Windows the child and all it starts are in a
//! Job Object (`job.rs`), a stop is a Ctrl-Break to the child's process group, then the whole job
//! is terminated. A stop reaches the tree even after the direct child has exited while a
//! grandchild still holds an output open, and the run ends within the grace period (plus the
//! butler's short drain) whatever the tree does.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use tokio_util::sync::CancellationToken;

use super::butler::{AddStreamError, Butler, ButlerHandle, Stats, sleep_opt};
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
    /// The child's tree dies with butler however butler ends (unix: `watchdog.rs`; Windows: the
    /// job is kill-on-close anyway), and so does the stream server's socket file.
    #[cfg_attr(windows, expect(dead_code, reason = "a job is kill-on-close anyway"))]
    pub die_with_butler: bool,
    pub coordinator_host: Option<String>,
}

/// How the child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RunOutcome {
    pub pid: u32,
    /// The exit code, or 128 + N when signal N killed it (unix). On Windows, the 32-bit code as
    /// Windows reports it, read as an `i32` as std does (a tree stopped by Ctrl-Break ends with
    /// 0xC000013A, that is -1073741510).
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
    #[cfg(windows)]
    cmd.creation_flags(super::job::CREATION_FLAGS);
    #[cfg(unix)]
    let mut watchdog = if opts.die_with_butler {
        let socket = match super::address::Address::resolve(Some(server_uri)) {
            Ok(super::address::Address::Unix(path)) => Some(path),
            _ => None,
        };
        Some(
            super::watchdog::Watchdog::start(socket.as_deref())
                .map_err(|source| ProcessError::Spawn { command: "/bin/sh".into(), source })?,
        )
    } else {
        None
    };
    let spawned = Tree::spawn(&mut cmd, opts);
    let (mut child, tree) =
        spawned.map_err(|source| ProcessError::Spawn { command: program.clone(), source })?;
    let pid = tree.pid;
    #[cfg(unix)]
    if let Some(w) = &mut watchdog
        && tree.group
    {
        w.watch(pid).await;
    }
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
        tree.kill();
    }
    // Until every stream is in (the child's stdout/stderr and whatever its descendants opened),
    // signals still go to the tree: a grandchild holding an output open must not outlast a stop.
    let mut status = None;
    let mut kill_at: Option<tokio::time::Instant> = None;
    let mut give_up_at: Option<tokio::time::Instant> = None;
    let mut signals_open = true;
    loop {
        tokio::select! {
            s = child.wait(), if status.is_none() => status = Some(s.map_err(ProcessError::Wait)?),
            () = butler.wait_idle(), if status.is_some() => break,
            sig = signals.recv(), if signals_open => match sig {
                Some(sig) => {
                    tracing::info!("forwarding {sig:?} to the child's tree (pid {pid})");
                    tree.forward(sig);
                    if give_up_at.is_none() {
                        kill_at.get_or_insert(tokio::time::Instant::now() + opts.kill_grace);
                    }
                }
                None => signals_open = false,
            },
            () = sleep_opt(kill_at) => {
                tracing::warn!("the child's tree (pid {pid}) outlived its grace period; killing it");
                tree.kill();
                kill_at = None;
                give_up_at = Some(tokio::time::Instant::now() + AFTER_KILL);
            }
            // Only a process that left the tree can still hold a stream: the butler's shutdown
            // closes it once it goes quiet.
            () = sleep_opt(give_up_at), if status.is_some() => {
                tracing::warn!("a stream of the run (pid {pid}) is still open after the kill; closing it");
                break;
            }
        }
    }
    #[cfg(unix)]
    if let Some(w) = watchdog {
        w.done().await;
    }
    if let Some(e) = capture_err {
        return Err(e);
    }
    let status = status.ok_or_else(|| ProcessError::Wait(std::io::Error::other("no status")))?;
    Ok(tree.finished(status))
}

/// After SIGKILL, how long the streams of the tree have to reach their end of file.
const AFTER_KILL: Duration = Duration::from_millis(500);

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

/// The child's process tree, and how to stop it.
#[derive(Debug)]
struct Tree {
    pid: u32,
    /// The child leads its own process group, so signals go to the whole tree.
    #[cfg(unix)]
    group: bool,
    /// `None` only where the child could not join a job (the error was logged): then only the
    /// child itself can be stopped.
    #[cfg(windows)]
    job: Option<super::job::Job>,
}

impl Tree {
    /// The child leads a process group of its own, except when it reads butler's terminal: a
    /// background group reading it would be stopped (SIGTTIN), so there only the child itself
    /// can be signalled.
    #[cfg(unix)]
    fn spawn(
        cmd: &mut tokio::process::Command,
        opts: &RunOptions,
    ) -> std::io::Result<(tokio::process::Child, Tree)> {
        use std::io::IsTerminal;
        let group = !(opts.forward_stdin && std::io::stdin().is_terminal());
        if group {
            cmd.process_group(0);
        }
        let child = cmd.spawn()?;
        let pid = child.id().unwrap_or(0);
        Ok((child, Tree { pid, group }))
    }

    /// The child starts suspended (`job::CREATION_FLAGS`) and runs once it is in its job.
    #[cfg(windows)]
    fn spawn(
        cmd: &mut tokio::process::Command,
        _opts: &RunOptions,
    ) -> std::io::Result<(tokio::process::Child, Tree)> {
        use super::job::{AdoptError, Job};
        let job = Job::new()?;
        let mut child = cmd.spawn()?;
        let pid = child.id().unwrap_or(0);
        let handle =
            child.raw_handle().ok_or_else(|| std::io::Error::other("no process handle"))?;
        let job = match job.adopt(handle, pid) {
            Ok(()) => Some(job),
            Err(AdoptError::Assign(e)) => {
                tracing::warn!("the child (pid {pid}) runs outside a job object: {e}");
                None
            }
            Err(AdoptError::Resume(e)) => {
                let _ = child.start_kill();
                return Err(e);
            }
        };
        Ok((child, Tree { pid, job }))
    }

    /// Passes a request to stop on to the child.
    #[cfg(unix)]
    fn forward(&self, sig: Signal) {
        signal(self.pid, self.group, sig.number());
    }

    /// Ctrl-Break to the child's process group; where it shares no console with butler, there is
    /// no gentler way, and the tree is stopped at once.
    #[cfg(windows)]
    fn forward(&self, _sig: Signal) {
        if !super::job::Job::interrupt(self.pid) {
            tracing::info!(
                "the child (pid {}) has no console to receive Ctrl-Break; stopping it",
                self.pid
            );
            self.kill();
        }
    }

    /// Stops the tree at once (unix: the child's process group, or the child alone when it has
    /// none; Windows: its job).
    #[cfg(unix)]
    fn kill(&self) {
        signal(self.pid, self.group, libc::SIGKILL);
    }

    #[cfg(windows)]
    fn kill(&self) {
        use windows_sys::Win32::System::Threading::{
            OpenProcess, PROCESS_TERMINATE, TerminateProcess,
        };
        if let Some(job) = &self.job {
            match job.terminate() {
                Ok(()) => return,
                Err(e) => tracing::warn!("cannot stop the child's job: {e}"),
            }
        }
        // SAFETY: opening the child's pid (still ours: it is not reaped before the run ends) and
        // closing the handle after use.
        unsafe {
            let h = OpenProcess(PROCESS_TERMINATE, 0, self.pid);
            if !h.is_null() {
                TerminateProcess(h, super::job::KILLED_EXIT_CODE);
                windows_sys::Win32::Foundation::CloseHandle(h);
            }
        }
    }

    /// How the child ended, once every stream is in.
    #[cfg(unix)]
    fn finished(self, status: std::process::ExitStatus) -> RunOutcome {
        use std::os::unix::process::ExitStatusExt;
        let pid = self.pid;
        match (status.code(), status.signal()) {
            (Some(code), _) => RunOutcome { pid, exit_code: code, signal: None },
            (None, Some(sig)) => RunOutcome { pid, exit_code: 128 + sig, signal: Some(sig) },
            (None, None) => RunOutcome { pid, exit_code: 250, signal: None },
        }
    }

    /// Windows exit codes are 32-bit values, never signals. What the child left running keeps
    /// running, as on unix.
    #[cfg(windows)]
    fn finished(self, status: std::process::ExitStatus) -> RunOutcome {
        if let Some(job) = self.job {
            job.release();
        }
        RunOutcome { pid: self.pid, exit_code: status.code().unwrap_or(250), signal: None }
    }
}

#[cfg(unix)]
fn signal(pid: u32, group: bool, sig: i32) {
    if pid == 0 {
        return;
    }
    // A group outlives its leader while any member lives; the leader's pid cannot be reused as
    // another group's id before the group is empty.
    let target = if group { -(pid as libc::pid_t) } else { pid as libc::pid_t };
    // SAFETY: kill(2) on a process (group) we spawned; no memory is involved.
    unsafe {
        libc::kill(target, sig);
    }
}

//! Restarting in place after an update (`Update.Apply {restart: true}`): the new executable
//! replaces this process (same pid, so the launcher's process handle and `--destiny-pid` watches
//! stay valid) and takes over the listening socket and the secret, so clients keep the address
//! and secret they have; new connections wait in the socket's backlog meanwhile.
//!
//! A build that announces `daemon-hand-over-connections` takes more along: every open connection
//! that came to rest (its socket, whether it authenticated, its open `Meta.Flow`), the daemon
//! lock (so no second daemon can take the database during the `exec`), and the news to announce
//! once it serves. All of it travels in one JSON document through a pipe; the descriptors are
//! inherited, with close-on-exec cleared only in `pre_exec`. A build that only announces
//! `daemon-hand-over` gets the listening socket and the secret, and open connections are closed.
//!
//! Windows has no `exec`: there the daemon answers `restartRequired` instead (see
//! `methods/update.rs`), and only the shared types below are used.
#![cfg_attr(not(unix), allow(dead_code, reason = "restart in place is unix-only"))]

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::connection::Carried;

/// The descriptor number of the inherited listening socket.
const LISTEN_FD_ENV: &str = "BUTLER_DAEMON_HANDOVER_FD";
/// The first protocol: a pipe holding only the secret. An environment variable would stay
/// readable in `/proc/<pid>/environ` for the daemon's whole life.
const SECRET_FD_ENV: &str = "BUTLER_DAEMON_HANDOVER_SECRET_FD";
/// `daemon-hand-over-connections`: a pipe holding a [`State`] document.
const STATE_FD_ENV: &str = "BUTLER_DAEMON_HANDOVER_STATE_FD";

/// News the new process announces to `Meta.Flow` connections once it serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub(crate) enum Announcement {
    #[serde(rename_all = "camelCase")]
    Applied { previous_version: String, installed_version: String, verified: bool },
    #[serde(rename_all = "camelCase")]
    RolledBack { previous_version: String, restored_version: Option<String> },
}

/// What travels through the state pipe.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct State {
    secret: String,
    lock_fd: Option<i32>,
    connections: Vec<CarriedConnection>,
    news: Option<Announcement>,
    /// The write end of a probation watchdog's pipe (see `probation.rs`).
    #[serde(default)]
    alive_fd: Option<i32>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CarriedConnection {
    fd: i32,
    #[serde(flatten)]
    carried: Carried,
}

/// What the previous process passed on.
#[derive(Debug)]
pub(super) struct Inherited {
    pub(super) listener: std::net::TcpListener,
    pub(super) secret: String,
    pub(super) lock: Option<std::fs::File>,
    pub(super) connections: Vec<(std::net::TcpStream, Carried)>,
    pub(super) news: Option<Announcement>,
    /// Held for this process's life while it is on probation; gets `probation::OK` at a clean end.
    pub(super) alive: Option<std::fs::File>,
}

/// What this process passes on.
#[derive(Debug)]
pub(super) struct Passing<'a> {
    pub(super) listener: &'a tokio::net::TcpListener,
    pub(super) secret: &'a str,
    /// `None`: the new build speaks only the first protocol.
    pub(super) more: Option<PassingMore<'a>>,
}

#[derive(Debug)]
pub(super) struct PassingMore<'a> {
    pub(super) lock: Option<&'a std::fs::File>,
    pub(super) connections: Vec<(std::net::TcpStream, Carried)>,
    pub(super) news: Option<Announcement>,
    /// The write end of the new build's probation pipe.
    pub(super) alive: Option<AliveEnd>,
}

/// The probation pipe's write end; Windows never restarts in place, so it never has one.
#[cfg(unix)]
pub(super) type AliveEnd = std::os::fd::OwnedFd;
#[cfg(not(unix))]
pub(super) type AliveEnd = std::convert::Infallible;

/// Takes what a previous process handed over, if anything, and removes the descriptor numbers
/// from the environment so children never see them.
///
/// # Safety
///
/// Must be called before any other thread exists (it edits the environment).
#[cfg(unix)]
pub(super) unsafe fn take() -> anyhow::Result<Option<Inherited>> {
    use std::io::Read;
    use std::os::fd::{FromRawFd, RawFd};

    use anyhow::Context as _;

    let Some(listen_fd) = std::env::var_os(LISTEN_FD_ENV) else { return Ok(None) };
    let secret_fd = std::env::var_os(SECRET_FD_ENV);
    let state_fd = std::env::var_os(STATE_FD_ENV);
    // SAFETY: the caller guarantees no other thread reads or writes the environment.
    unsafe {
        std::env::remove_var(LISTEN_FD_ENV);
        std::env::remove_var(SECRET_FD_ENV);
        std::env::remove_var(STATE_FD_ENV);
    }
    let listen_fd = claim(LISTEN_FD_ENV, &listen_fd)?;
    let (pipe_var, pipe_fd) = match (&state_fd, &secret_fd) {
        (Some(fd), _) => (STATE_FD_ENV, fd),
        (None, Some(fd)) => (SECRET_FD_ENV, fd),
        (None, None) => anyhow::bail!("{LISTEN_FD_ENV} came without {STATE_FD_ENV}"),
    };
    let pipe_fd = claim(pipe_var, pipe_fd)?;
    // SAFETY: the previous process left these descriptors for us (a listening socket and the read
    // end of a pipe); nothing else in this process knows of them, so each gets one owner.
    let (listener, mut pipe) = unsafe {
        (std::net::TcpListener::from_raw_fd(listen_fd), std::fs::File::from_raw_fd(pipe_fd))
    };
    let mut text = String::new();
    pipe.by_ref()
        .take(MAX_STATE as u64)
        .read_to_string(&mut text)
        .context("reading what the previous process handed over")?;
    let state = if state_fd.is_some() {
        serde_json::from_str::<State>(&text).context("the hand-over state is not valid")?
    } else {
        State { secret: text, lock_fd: None, connections: Vec::new(), news: None, alive_fd: None }
    };
    anyhow::ensure!(!state.secret.is_empty(), "the handed-over secret is empty");
    let address = listener
        .local_addr()
        .with_context(|| format!("{LISTEN_FD_ENV}={listen_fd} is not a listening TCP socket"))?;
    anyhow::ensure!(
        address.ip().is_loopback(),
        "the inherited socket listens on {address}, not loopback"
    );
    listener.set_nonblocking(true).context("setting up the inherited socket")?;
    let lock = match state.lock_fd {
        Some(fd) => {
            let fd: RawFd = claim("the lock", &fd.to_string().into())?;
            // SAFETY: the previous process passed its open lock file under this number.
            Some(unsafe { std::fs::File::from_raw_fd(fd) })
        }
        None => None,
    };
    let alive = match state.alive_fd {
        Some(fd) => {
            let fd: RawFd = claim("the probation pipe", &fd.to_string().into())?;
            // SAFETY: the previous process passed the pipe's write end under this number.
            Some(unsafe { std::fs::File::from_raw_fd(fd) })
        }
        None => None,
    };
    let mut connections = Vec::new();
    for c in state.connections {
        let fd = claim("a connection", &c.fd.to_string().into())?;
        // SAFETY: the previous process passed this open connection under this number.
        let stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
        // A descriptor that is not a connected socket fails here and is dropped (closed).
        match stream.peer_addr().and_then(|_| stream.set_nonblocking(true)) {
            Ok(()) => connections.push((stream, c.carried)),
            Err(e) => tracing::warn!("an inherited connection (fd {fd}) is unusable: {e}"),
        }
    }
    Ok(Some(Inherited {
        listener,
        secret: state.secret,
        lock,
        connections,
        news: state.news,
        alive,
    }))
}

/// A descriptor number from the previous process, given close-on-exec back first so no child we
/// start inherits it.
#[cfg(unix)]
fn claim(what: &str, value: &std::ffi::OsString) -> anyhow::Result<std::os::fd::RawFd> {
    use anyhow::Context as _;
    let fd: std::os::fd::RawFd =
        value
            .to_str()
            .and_then(|s| s.parse().ok())
            .filter(|fd| *fd > 2)
            .with_context(|| format!("{what}={value:?} is not a descriptor number"))?;
    // SAFETY: fcntl on a descriptor number; a closed one fails with EBADF, which we report.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } == -1 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("{what}={fd} is not an open descriptor"));
    }
    Ok(fd)
}

/// No hand-over without unix `exec`.
///
/// # Safety
///
/// Always safe; unsafe only to match the unix signature.
#[cfg(not(unix))]
pub(super) unsafe fn take() -> anyhow::Result<Option<Inherited>> {
    Ok(None)
}

/// The most the state pipe carries: a pipe's buffer must hold it all, since nobody reads it
/// before the `exec`. Connections past it are closed rather than passed.
const MAX_STATE: usize = 60 * 1024;

/// Replaces this process with `exe` and the same arguments, passing on what `passing` holds.
/// Returns only if that failed.
#[cfg(unix)]
pub(super) fn exec(exe: &Path, passing: Passing<'_>) -> std::io::Error {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    exec_with_args(exe, &args, passing)
}

/// As [`exec`], with these arguments.
#[cfg(unix)]
pub(super) fn exec_with_args(
    exe: &Path,
    args: &[std::ffi::OsString],
    passing: Passing<'_>,
) -> std::io::Error {
    use std::io::Write;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;

    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the array with two new descriptors, both close-on-exec.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == -1 {
        return std::io::Error::last_os_error();
    }
    // SAFETY: both descriptors were just created and belong to nothing else.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let listen_fd = passing.listener.as_raw_fd();
    let mut inherit = vec![listen_fd, read_end.as_raw_fd()];
    // Kept open until the exec (or its failure): their descriptors are what we pass.
    let mut kept = Vec::new();
    let mut kept_fds: Vec<OwnedFd> = Vec::new();
    let (pipe_var, payload) = match passing.more {
        None => (SECRET_FD_ENV, passing.secret.to_owned()),
        Some(more) => {
            let lock_fd = more.lock.map(AsRawFd::as_raw_fd);
            inherit.extend(lock_fd);
            let alive_fd = more.alive.as_ref().map(AsRawFd::as_raw_fd);
            inherit.extend(alive_fd);
            if let Some(alive) = more.alive {
                kept_fds.push(alive);
            }
            let mut state = State {
                secret: passing.secret.to_owned(),
                lock_fd,
                connections: Vec::new(),
                news: more.news,
                alive_fd,
            };
            for (stream, carried) in more.connections {
                state.connections.push(CarriedConnection { fd: stream.as_raw_fd(), carried });
                kept.push(stream);
            }
            let mut text = serde_json::to_string(&state).unwrap_or_default();
            while text.len() > MAX_STATE && !state.connections.is_empty() {
                let dropped = state.connections.len() / 2;
                state.connections.truncate(dropped);
                text = serde_json::to_string(&state).unwrap_or_default();
            }
            if state.connections.len() < kept.len() {
                tracing::warn!(
                    "passing {} of {} open connections on; the rest close",
                    state.connections.len(),
                    kept.len()
                );
            }
            inherit.extend(state.connections.iter().map(|c| c.fd));
            (STATE_FD_ENV, text)
        }
    };
    // At most MAX_STATE bytes, which a pipe's buffer holds: this write cannot block.
    if let Err(e) = std::fs::File::from(write_end).write_all(payload.as_bytes()) {
        return e;
    }
    let mut cmd = std::process::Command::new(exe);
    cmd.args(args)
        .env(LISTEN_FD_ENV, listen_fd.to_string())
        .env(pipe_var, read_end.as_raw_fd().to_string());
    let cleared = inherit.clone();
    // SAFETY: runs just before execve; fcntl is async-signal-safe and `cleared` was allocated
    // before the fork. Clearing close-on-exec only here keeps the window in which another thread
    // could fork a child that inherits them small.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &cleared {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let err = cmd.exec();
    // Still here: `exec` runs pre_exec in this very process, so put close-on-exec back, lest a
    // child we start later inherits the sockets.
    for fd in inherit {
        // SAFETY: fcntl on descriptors this process still owns.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    drop(kept);
    drop(kept_fds);
    drop(read_end);
    err
}

#[cfg(not(unix))]
pub(super) fn exec(_exe: &Path, _passing: Passing<'_>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::Unsupported, "restarting in place needs unix exec")
}

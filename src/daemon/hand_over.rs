//! Restarting in place after an update (`Update.Apply {restart: true}`): the new executable
//! replaces this process (same pid, so the launcher's process handle and `--destiny-pid` watches
//! stay valid) and takes over the listening socket and the secret, so clients keep the address
//! and secret they have. Connections open at the moment of the hand-over are closed; new ones wait
//! in the socket's backlog meanwhile, so a client that connects per call sees no outage.

use std::path::Path;

/// The descriptor number of the inherited listening socket.
const LISTEN_FD_ENV: &str = "BUTLER_DAEMON_HANDOVER_FD";
/// The descriptor number of a pipe holding the secret: an environment variable would stay
/// readable in `/proc/<pid>/environ` for the daemon's whole life.
const SECRET_FD_ENV: &str = "BUTLER_DAEMON_HANDOVER_SECRET_FD";

/// What the previous process passed on.
#[derive(Debug)]
pub(super) struct Inherited {
    pub listener: std::net::TcpListener,
    pub secret: String,
}

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
    // SAFETY: the caller guarantees no other thread reads or writes the environment.
    unsafe {
        std::env::remove_var(LISTEN_FD_ENV);
        std::env::remove_var(SECRET_FD_ENV);
    }
    // Each descriptor gets close-on-exec back first, so no child we start inherits it.
    let claim = |var: &str, value: Option<std::ffi::OsString>| -> anyhow::Result<RawFd> {
        let fd: RawFd = value
            .as_deref()
            .and_then(|v| v.to_str())
            .and_then(|s| s.parse().ok())
            .filter(|fd| *fd > 2)
            .with_context(|| format!("{var}={value:?} is not a descriptor number"))?;
        // SAFETY: fcntl on a descriptor number; a closed one fails with EBADF, which we report.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } == -1 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("{var}={fd} is not an open descriptor"));
        }
        Ok(fd)
    };
    let listen_fd = claim(LISTEN_FD_ENV, Some(listen_fd))?;
    let secret_fd = claim(SECRET_FD_ENV, secret_fd)?;
    // SAFETY: the previous process left these descriptors for us (a listening socket and the read
    // end of a pipe); nothing else in this process knows of them, so each gets one owner.
    let (listener, mut pipe) = unsafe {
        (std::net::TcpListener::from_raw_fd(listen_fd), std::fs::File::from_raw_fd(secret_fd))
    };
    let mut secret = String::new();
    pipe.by_ref()
        .take(4096)
        .read_to_string(&mut secret)
        .context("reading the handed-over secret")?;
    anyhow::ensure!(!secret.is_empty(), "the handed-over secret is empty");
    let address = listener
        .local_addr()
        .with_context(|| format!("{LISTEN_FD_ENV}={listen_fd} is not a listening TCP socket"))?;
    anyhow::ensure!(
        address.ip().is_loopback(),
        "the inherited socket listens on {address}, not loopback"
    );
    listener.set_nonblocking(true).context("setting up the inherited socket")?;
    Ok(Some(Inherited { listener, secret }))
}

/// No hand-over without unix `exec`.
///
/// # Safety
///
/// Always safe; unsafe only to match the unix signature.
#[cfg(not(unix))]
pub unsafe fn take() -> anyhow::Result<Option<Inherited>> {
    Ok(None)
}

/// Replaces this process with `exe` and the same arguments, passing on `listener` and `secret`.
/// Returns only if that failed.
#[cfg(unix)]
pub(super) fn exec(exe: &Path, listener: &tokio::net::TcpListener, secret: &str) -> std::io::Error {
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
    // The secret is far smaller than a pipe's buffer, so this write cannot block.
    if let Err(e) = std::fs::File::from(write_end).write_all(secret.as_bytes()) {
        return e;
    }
    let (listen_fd, secret_fd) = (listener.as_raw_fd(), read_end.as_raw_fd());
    let mut cmd = std::process::Command::new(exe);
    cmd.args(std::env::args_os().skip(1))
        .env(LISTEN_FD_ENV, listen_fd.to_string())
        .env(SECRET_FD_ENV, secret_fd.to_string());
    // SAFETY: runs just before execve; fcntl is async-signal-safe. Clearing close-on-exec only
    // here keeps the window in which another thread could fork a child that inherits them small.
    unsafe {
        cmd.pre_exec(move || {
            for fd in [listen_fd, secret_fd] {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let err = cmd.exec();
    // Still here: put close-on-exec back so no child we start later inherits the socket.
    // SAFETY: fcntl on a descriptor this process owns.
    unsafe { libc::fcntl(listen_fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    drop(read_end);
    err
}

#[cfg(not(unix))]
pub fn exec(_exe: &Path, _listener: &tokio::net::TcpListener, _secret: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::Unsupported, "restarting in place needs unix exec")
}

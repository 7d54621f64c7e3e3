//! Restarting in place after an update (`Update.Apply {restart: true}`): the new executable
//! replaces this process (same pid, so the launcher's process handle and `--destiny-pid` watches
//! stay valid) and takes over the listening socket and the secret, so clients keep the address
//! and secret they have. Connections open at the moment of the hand-over are closed; new ones wait
//! in the socket's backlog meanwhile, so a client that connects per call sees no outage.

use std::path::Path;

use anyhow::Context as _;

const LISTEN_FD_ENV: &str = "BUTLER_DAEMON_HANDOVER_FD";
const SECRET_ENV: &str = "BUTLER_DAEMON_HANDOVER_SECRET";

/// What the previous process passed on.
#[derive(Debug)]
pub struct Inherited {
    pub listener: std::net::TcpListener,
    pub secret: String,
}

/// Takes what a previous process handed over, if anything, and removes it from the environment so
/// children never see it.
///
/// # Safety
///
/// Must be called before any other thread exists (it edits the environment).
#[cfg(unix)]
pub unsafe fn take() -> anyhow::Result<Option<Inherited>> {
    use std::os::fd::FromRawFd;
    let Some(fd) = std::env::var_os(LISTEN_FD_ENV) else { return Ok(None) };
    let secret = std::env::var(SECRET_ENV).ok();
    // SAFETY: the caller guarantees no other thread reads or writes the environment.
    unsafe {
        std::env::remove_var(LISTEN_FD_ENV);
        std::env::remove_var(SECRET_ENV);
    }
    let fd: std::os::fd::RawFd = fd
        .to_str()
        .and_then(|s| s.parse().ok())
        .filter(|fd| *fd > 2)
        .with_context(|| format!("{LISTEN_FD_ENV}={fd:?} is not a descriptor number"))?;
    let secret = secret
        .filter(|s| !s.is_empty())
        .with_context(|| format!("{LISTEN_FD_ENV} came without {SECRET_ENV}"))?;
    // SAFETY: fcntl on a descriptor number; a closed one fails with EBADF, which we report.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } == -1 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("{LISTEN_FD_ENV}={fd} is not an open descriptor"));
    }
    // SAFETY: the previous process left its listening socket at `fd` for us; nothing else in this
    // process knows of it, so this is its only owner.
    let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
    let address = listener
        .local_addr()
        .with_context(|| format!("{LISTEN_FD_ENV}={fd} is not a listening TCP socket"))?;
    anyhow::ensure!(
        address.ip().is_loopback(),
        "the inherited socket listens on {address}, not loopback"
    );
    listener.set_nonblocking(true).context("setting up the inherited socket")?;
    Ok(Some(Inherited { listener, secret }))
}

#[cfg(not(unix))]
pub unsafe fn take() -> anyhow::Result<Option<Inherited>> {
    Ok(None)
}

/// Replaces this process with `exe` and the same arguments, passing on `listener` and `secret`.
/// Returns only if that failed.
#[cfg(unix)]
pub fn exec(exe: &Path, listener: &tokio::net::TcpListener, secret: &str) -> std::io::Error {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let fd = listener.as_raw_fd();
    // SAFETY: fcntl on a descriptor this process owns; only its close-on-exec flag changes.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } == -1 {
        return std::io::Error::last_os_error();
    }
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(LISTEN_FD_ENV, fd.to_string())
        .env(SECRET_ENV, secret)
        .exec();
    // Still here: keep the socket out of any child we may start later.
    // SAFETY: as above.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    err
}

#[cfg(not(unix))]
pub fn exec(_exe: &Path, _listener: &tokio::net::TcpListener, _secret: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::Unsupported, "restarting in place needs unix exec")
}

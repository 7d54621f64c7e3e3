//! Self-healing restarts: a build the daemon restarted into is on probation. Before the `exec`,
//! the old process keeps a consistent snapshot of the database and starts a watchdog (this same
//! old build, `butler daemon-probation`) that holds a copy of the listening socket and one end
//! of a pipe whose other end only the new process holds. If the new process dies within the
//! probation period without saying "ok" on the pipe (a crash, an abnormal exit), or never
//! answers `Version.Get`, the watchdog stops it, puts the previous binary and the snapshot back,
//! records the failure and remembers the version as bad, then becomes the daemon again in its
//! place: same address, same secret.
//!
//! A versioned root (`<root>/versions/<v>/`, `.chosen-version`) is started by the launcher, not
//! restarted in place, so its probation is a start counter beside `.chosen-version`: every daemon
//! start of the chosen build counts, staying up for the probation period clears the count, and
//! the third start in a row that did not stay up chooses the previous version again and execs it
//! instead (same pid, so the launcher never notices).
#![cfg_attr(not(unix), allow(dead_code, reason = "only a restart in place is on probation"))]

use std::path::{Path, PathBuf};
use std::time::Duration;
#[cfg(unix)]
use std::{
    io::{BufRead, BufReader, Read, Write},
    time::Instant,
};

#[cfg(unix)]
use anyhow::Context as _;

#[cfg(unix)]
use super::hand_over;
use crate::exit::ExitStatus;
#[cfg(unix)]
use crate::update::history::{Action, Outcome, Record};
#[cfg(unix)]
use crate::update::{self, History};

/// The descriptor of the pipe end that reads the new process's "ok" (or its death).
const ALIVE_FD_ENV: &str = "BUTLER_PROBATION_ALIVE_FD";
/// The descriptor of the listening socket, kept to serve again if the new build fails.
const LISTEN_FD_ENV: &str = "BUTLER_PROBATION_LISTEN_FD";
/// What the new process writes on the pipe when it ends (or hands over) as it should.
pub(super) const OK: &[u8] = b"ok\n";

/// What the watchdog is told (on its command line; the secret comes on stdin).
#[derive(Debug, Clone)]
pub(crate) struct Watch {
    /// The daemon's pid (the same before and after the `exec`).
    pub(crate) pid: u32,
    /// The build on probation.
    pub(crate) version: String,
    /// The build it replaced, which serves again if it fails.
    pub(crate) previous: String,
    /// The executable the daemon was started as (what `Update.*` updated).
    pub(crate) exe: PathBuf,
    pub(crate) period: Duration,
    pub(crate) dbpath: Option<PathBuf>,
    pub(crate) snapshot: Option<PathBuf>,
    pub(crate) broth_url: String,
    /// The daemon's own arguments, to start it again with.
    pub(crate) daemon_args: Vec<std::ffi::OsString>,
}

/// Where the database as `version` left it is kept when switching away from it: beside the
/// database, named for the version it belongs to.
pub(super) fn snapshot_path(db: &Path, version: &str) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(format!(".v{version}.snapshot"));
    PathBuf::from(name)
}

/// Counted daemon starts of a versioned root's chosen build, beside `.chosen-version`.
const STARTS_FILE: &str = ".chosen-version.starts";
/// The start that finds this many earlier ones that did not stay up chooses the previous build.
const MAX_FAILED_STARTS: u32 = 2;

/// Counts this start of a versioned root's chosen build; when the builds before this start did
/// not stay up, undoes the choice and execs the previous build with the same arguments (does
/// not return then). `stayed_up` is to be called once the daemon has served for the probation.
#[cfg(unix)]
pub(crate) fn count_start(
    exe: &Path,
    dbpath: Option<&Path>,
    broth_url: &str,
) -> anyhow::Result<Option<StartCount>> {
    let butler_updater::Target::Versioned { root } = update::install_target(exe) else {
        return Ok(None);
    };
    let chosen = butler_updater::install::chosen_version(&root)?;
    if chosen.as_deref() != Some(crate::version::VERSION) {
        return Ok(None);
    }
    let file = root.join(STARTS_FILE);
    let earlier = std::fs::read_to_string(&file)
        .ok()
        .and_then(|s| {
            let (v, n) = s.trim().split_once(' ')?;
            (v == crate::version::VERSION).then(|| n.parse::<u32>().ok()).flatten()
        })
        .unwrap_or(0);
    if earlier < MAX_FAILED_STARTS {
        fs_err::write(&file, format!("{} {}\n", crate::version::VERSION, earlier + 1))?;
        return Ok(Some(StartCount { file }));
    }
    let why = format!("{} did not stay up in {earlier} starts in a row", crate::version::VERSION);
    tracing::error!("{why}; choosing the previous version again");
    let _ = std::fs::remove_file(&file);
    let previous = butler_updater::install::rollback_versioned(&root)
        .with_context(|| format!("undoing {}", crate::version::VERSION))?;
    if let Some(db) = dbpath {
        let snapshot = snapshot_path(db, &previous);
        if snapshot.is_file() {
            restore_database(db, &snapshot)?;
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let channel = butler_updater::Channel::current(false);
        let history = History::open(
            dbpath.map(|p| p.display().to_string()),
            broth_url,
            &channel.name(),
            &root.display().to_string(),
        );
        history.remember_bad(crate::version::VERSION, &why).await;
        let message = format!("{why}; {previous} chosen again");
        let r = Record::new(Action::Rollback, Outcome::RolledBack);
        let r = Record {
            from: Some(crate::version::VERSION),
            to: Some(&previous),
            note: Some(&message),
            ..r
        };
        history.record(r).await;
    });
    drop(runtime);
    let exe_name = exe.file_name().unwrap_or_default();
    let next = root.join("versions").join(&previous).join(exe_name);
    let mut cmd = std::process::Command::new(&next);
    let err = std::os::unix::process::CommandExt::exec(cmd.args(std::env::args_os().skip(1)));
    Err(anyhow::anyhow!("could not start {} again: {err}", next.display()))
}

/// A counted start; [`StartCount::stayed_up`] clears the count.
#[derive(Debug, Clone)]
pub(crate) struct StartCount {
    file: PathBuf,
}

impl StartCount {
    pub(crate) fn stayed_up(&self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

/// Runs the watchdog until the build on probation has proven itself, stopped cleanly, or been
/// replaced by the previous one (in which case this process becomes the daemon and does not
/// return).
#[cfg(unix)]
pub(crate) fn run(watch: Watch) -> anyhow::Result<ExitStatus> {
    let mut secret = String::new();
    std::io::stdin().take(4096).read_to_string(&mut secret).context("reading the secret")?;
    let listener = inherited_listener()?;
    let address = listener.local_addr().context("the inherited socket has no address")?;
    let alive = inherited_alive_pipe()?;
    let (said, heard) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let ok = BufReader::new(alive).read_line(&mut line).is_ok() && line.as_bytes() == OK;
        let _ = said.send(ok);
    });
    let started = Instant::now();
    let mut up = false;
    let failure = loop {
        match heard.try_recv() {
            // It ended cleanly, or handed over to another build (whose own watchdog watches).
            Ok(true) => return Ok(ExitStatus::Success),
            Ok(false) => break format!("{} exited within its probation", watch.version),
            Err(_) => {}
        }
        if !up {
            match version_of(&address.to_string(), secret.trim()) {
                Some(v) if v == watch.version => up = true,
                // Another build answers: not ours to judge.
                Some(_) => return Ok(ExitStatus::Success),
                None => {}
            }
        }
        if started.elapsed() >= watch.period {
            if up {
                return Ok(ExitStatus::Success);
            }
            break format!(
                "{} did not answer Version.Get within {:?}",
                watch.version, watch.period
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    tracing::error!("{failure}; restoring {}", watch.previous);
    restore(&watch, &failure)?;
    serve_again(&watch, listener, secret.trim())
}

/// Windows builds never restart in place (no `exec`), so nothing is ever on probation there.
#[cfg(not(unix))]
pub(crate) fn run(_watch: Watch) -> anyhow::Result<ExitStatus> {
    anyhow::bail!("restart probation needs unix")
}

/// Stops what is left of the failed build, puts the previous binary and the snapshot back, and
/// records what happened.
#[cfg(unix)]
fn restore(watch: &Watch, why: &str) -> anyhow::Result<()> {
    // SAFETY: signalling the daemon's pid, which this watchdog was started to watch.
    unsafe { libc::kill(watch.pid as libc::pid_t, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while super::process_alive(watch.pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let target = update::install_target(&watch.exe);
    let channel = butler_updater::Channel::current(false);
    butler_updater::rollback(&target, channel.executable_name())
        .with_context(|| format!("restoring {}", watch.previous))?;
    if let (Some(db), Some(snapshot)) = (&watch.dbpath, &watch.snapshot) {
        restore_database(db, snapshot)?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let history = History::open(
            watch.dbpath.as_ref().map(|p| p.display().to_string()),
            &watch.broth_url,
            &channel.name(),
            &update::install_name(&target),
        );
        let message = format!("{why}; {} restored", watch.previous);
        history.remember_bad(&watch.version, why).await;
        let r = Record::new(Action::Rollback, Outcome::RolledBack);
        let r = Record {
            from: Some(&watch.version),
            to: Some(&watch.previous),
            note: Some(&message),
            ..r
        };
        history.record(r).await;
    });
    Ok(())
}

/// Puts the snapshot back as the database (the failed build may have migrated it to a schema
/// the previous build refuses), dropping the WAL and shared memory of the failed run.
fn restore_database(db: &Path, snapshot: &Path) -> anyhow::Result<()> {
    let mut tmp = db.as_os_str().to_owned();
    tmp.push(".restoring");
    let tmp = PathBuf::from(tmp);
    fs_err::copy(snapshot, &tmp)?;
    for suffix in ["-wal", "-shm"] {
        let mut side = db.as_os_str().to_owned();
        side.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(side));
    }
    fs_err::rename(&tmp, db)?;
    Ok(())
}

/// Becomes the daemon again: the previous build, on the same socket and secret.
#[cfg(unix)]
fn serve_again(
    watch: &Watch,
    listener: std::net::TcpListener,
    secret: &str,
) -> anyhow::Result<ExitStatus> {
    let restored = match update::install_target(&watch.exe) {
        butler_updater::Target::InPlace { exe } => exe,
        butler_updater::Target::Versioned { root } => {
            let chosen = butler_updater::install::chosen_version(&root)?.unwrap_or_default();
            root.join("versions").join(chosen).join(watch.exe.file_name().unwrap_or_default())
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let _entered = runtime.enter();
    let listener = tokio::net::TcpListener::from_std(listener)?;
    std::env::set_current_dir(restored.parent().unwrap_or(Path::new("/"))).ok();
    let passing = hand_over::Passing {
        listener: &listener,
        secret,
        more: Some(hand_over::PassingMore {
            lock: None,
            connections: Vec::new(),
            news: None,
            alive: None,
        }),
    };
    let err = hand_over::exec_with_args(&restored, &watch.daemon_args, passing);
    Err(anyhow::anyhow!("could not start {} again: {err}", restored.display()))
}

/// `Version.Get` on `address`, within half a second, or `None`.
#[cfg(unix)]
fn version_of(address: &str, secret: &str) -> Option<String> {
    let addr: std::net::SocketAddr = address.parse().ok()?;
    let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    let mut r = BufReader::new(s.try_clone().ok()?);
    let mut w = s;
    let auth = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "Meta.Authenticate", "params": {"secret": secret}});
    let get = serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "Version.Get", "params": {}});
    writeln!(w, "{auth}\n{get}").ok()?;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&line).ok()?;
        if v["id"] == 2 {
            return v["result"]["version"].as_str().map(|s| s.trim_start_matches('v').to_owned());
        }
    }
}

#[cfg(unix)]
fn inherited_listener() -> anyhow::Result<std::net::TcpListener> {
    use std::os::fd::FromRawFd;
    let fd = inherited_fd(LISTEN_FD_ENV)?;
    // SAFETY: the daemon passed its listening socket under this number, for us alone.
    Ok(unsafe { std::net::TcpListener::from_raw_fd(fd) })
}

#[cfg(unix)]
fn inherited_alive_pipe() -> anyhow::Result<std::fs::File> {
    use std::os::fd::FromRawFd;
    let fd = inherited_fd(ALIVE_FD_ENV)?;
    // SAFETY: the daemon passed the pipe's read end under this number, for us alone.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

#[cfg(unix)]
fn inherited_fd(var: &str) -> anyhow::Result<std::os::fd::RawFd> {
    let fd: std::os::fd::RawFd = std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|fd| *fd > 2)
        .with_context(|| format!("{var} names no descriptor"))?;
    // SAFETY: fcntl on a descriptor number; a closed one fails, which we report.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } == -1 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("{var}={fd}"));
    }
    Ok(fd)
}

/// Starts the watchdog for `watch` from the running (old) build: it gets the listening socket,
/// the read end of the "alive" pipe and the secret; returns the write end, which the new
/// process must hold for its whole life (and write [`OK`] to when it ends as it should).
#[cfg(unix)]
pub(super) fn start(
    watch: &Watch,
    listener: &tokio::net::TcpListener,
    secret: &str,
) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;

    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the array with two new close-on-exec descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both were just created and belong to nothing else.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // This build's image, even after the swap put another file at its path.
    let image = if cfg!(target_os = "linux") {
        PathBuf::from("/proc/self/exe")
    } else {
        butler_updater::install::backup_path(&watch.exe)
    };
    let (listen_fd, alive_fd) = (listener.as_raw_fd(), read_end.as_raw_fd());
    let mut cmd = std::process::Command::new(image);
    cmd.arg("daemon-probation")
        .args(["--pid", &watch.pid.to_string(), "--build", &watch.version])
        .args(["--previous", &watch.previous, "--broth-url", &watch.broth_url])
        .arg("--exe")
        .arg(&watch.exe)
        .args(["--period-ms", &watch.period.as_millis().to_string()]);
    if let Some(db) = &watch.dbpath {
        cmd.arg("--db").arg(db);
    }
    if let Some(snapshot) = &watch.snapshot {
        cmd.arg("--snapshot").arg(snapshot);
    }
    cmd.arg("--")
        .args(&watch.daemon_args)
        .env(LISTEN_FD_ENV, listen_fd.to_string())
        .env(ALIVE_FD_ENV, alive_fd.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null());
    // SAFETY: runs in the forked child before exec: setsid and fcntl are async-signal-safe. Its
    // own session, so it outlives a launcher that kills the daemon's process group.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            for fd in [listen_fd, alive_fd] {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(secret.as_bytes())?;
    }
    drop(read_end);
    // Not waited for: it lives on past our exec, and is reaped by whoever inherits it.
    std::mem::forget(child);
    Ok(write_end)
}

//! The butlerd-compatible JSON-RPC 2.0 daemon: process lifecycle, listening, shutdown.
//!
//! Layers, bottom up: [`framing`] (bounded lines) → [`jsonrpc`] (messages) → [`connection`]
//! (auth, concurrency, replies) → [`router`] (typed handlers) → [`methods`] (what we answer).
//! [`state`] is what every connection shares.

pub(crate) mod api;
pub(crate) mod connection;
pub(crate) mod framing;
pub(crate) mod hand_over;
pub(crate) mod jsonrpc;
mod methods;
mod notifications;
pub(crate) mod probation;
mod quickack;
pub(crate) mod router;
pub(crate) mod state;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::db::{self, DaemonLock, Db, DbPath};
use crate::exit::{ExitError, ExitStatus};
use crate::report::{Level, Reporter};
use crate::update::UpdateSettings;
use connection::Carried;
use state::{Config, Daemon, DbState};

/// How clients reach the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Transport {
    /// Loopback TCP, with a secret.
    Tcp,
    /// This process's stdin/stdout; no secret.
    Stdio,
    /// A unix socket at this path (owner-only), with a secret: for firewalls that inspect
    /// loopback TCP.
    Unix(std::path::PathBuf),
    /// Windows: the named pipe `\\.\pipe\<name>` (owner-only, local clients only), with a
    /// secret, for the same firewalls.
    #[cfg_attr(not(windows), allow(dead_code, reason = "refused on the command line"))]
    Pipe(String),
}

/// How the daemon runs, resolved from its command line (`crate::cli::DaemonArgs`).
#[derive(Debug, Clone)]
pub(crate) struct DaemonSettings {
    pub(crate) transport: Transport,
    /// TCP: serve any number of connections until shut down (else exactly one).
    pub(crate) keep_alive: bool,
    /// Shut down when any of these processes exits.
    pub(crate) destiny_pids: Vec<u32>,
    /// Log every message in and out to stderr (secrets redacted).
    pub(crate) log_traffic: bool,
    /// `--dbpath` as given: the daemon's database, and the store `Process.Run` writes to.
    pub(crate) dbpath: Option<String>,
    pub(crate) update: UpdateSettings,
    /// How often to check for updates in the background; `None`: never.
    pub(crate) update_interval: Option<Duration>,
    pub(crate) auth_timeout: Duration,
    pub(crate) max_line_bytes: usize,
    pub(crate) max_connections: usize,
    pub(crate) drain_timeout: Duration,
    /// How long a build restarted into must stay up before it is trusted; zero: no watchdog.
    #[cfg_attr(not(unix), allow(dead_code, reason = "no restart in place on Windows"))]
    pub(crate) probation: Duration,
}

/// Runs the daemon until it shuts down; success on any graceful shutdown.
pub(crate) fn run(args: DaemonSettings, reporter: Reporter) -> anyhow::Result<ExitStatus> {
    // `Process.Run` writes its output through a connection of its own, which must see the same
    // database as the daemon's.
    let mut args = args;
    args.dbpath = args.dbpath.as_deref().map(DbPath::shared_in_process);
    // SAFETY: the runtime is not built yet and nothing before this starts threads.
    let inherited = unsafe { hand_over::take() }?;
    // A versioned root's chosen build counts its starts; one that keeps failing is undone here.
    #[cfg(unix)]
    let started = match (&inherited, args.probation.is_zero()) {
        (None, false) => {
            let exe = std::env::current_exe().context("finding the running executable")?;
            let db = match DbPath::resolve(args.dbpath.as_deref())? {
                DbPath::File(p) => Some(p),
                DbPath::Special(_) => None,
            };
            probation::count_start(&exe, db.as_deref(), &args.update.broth_url)?
        }
        _ => None,
    };
    #[cfg(debug_assertions)]
    test_fault();
    raise_fd_limit();
    tune_allocator();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    #[cfg(unix)]
    if let Some(started) = started.clone() {
        let period = args.probation;
        runtime.spawn(async move {
            tokio::time::sleep(period).await;
            started.stayed_up();
        });
    }
    let result = runtime.block_on(serve(args, reporter, inherited));
    // A clean stop is no failed start either.
    #[cfg(unix)]
    if let (Ok(ExitStatus::Success), Some(started)) = (&result, started) {
        started.stayed_up();
    }
    // stdin readers and database work may still sit on blocking threads; do not wait for them.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}

async fn serve(
    args: DaemonSettings,
    reporter: Reporter,
    inherited: Option<hand_over::Inherited>,
) -> anyhow::Result<ExitStatus> {
    let stdio = args.transport == Transport::Stdio;
    // On stdio, stdout is the JSON-RPC channel: every message for people goes to stderr.
    let reporter = Reporter { json: reporter.json && !stdio, ..reporter };

    // Tests stop a restarted daemon here, before it has done anything, to show what the
    // previous process left held (the lock).
    #[cfg(debug_assertions)]
    if inherited.is_some() {
        butler_updater::hook::point("daemon-resumed");
    }
    let db_path = DbPath::resolve(args.dbpath.as_deref())?;
    let mut inherited = inherited;
    // Taken before listening, so a second daemon on the same database fails at once; after a
    // restart in place, the previous process's lock is still held, and taken over.
    let lock = match inherited.as_mut().and_then(|i| i.lock.take()) {
        #[cfg(unix)]
        Some(file) => DaemonLock::adopt(&db_path, file)?,
        _ => DaemonLock::acquire(&db_path)?,
    };

    let (db_tx, db_rx) = watch::channel(DbState::Opening);
    let daemon = Arc::new(Daemon::new(
        Config {
            require_auth: !stdio,
            auth_timeout: args.auth_timeout,
            max_line_bytes: args.max_line_bytes,
            max_in_flight: 256,
            log_traffic: args.log_traffic,
            dbpath: args.dbpath.clone(),
            update: args.update.clone(),
            exe: std::env::current_exe().context("finding the running executable")?,
            can_hand_over: cfg!(unix) && args.transport == Transport::Tcp && args.keep_alive,
        },
        methods::router(),
        match &inherited {
            Some(i) => i.secret.clone(),
            None => new_secret()?,
        },
        db_rx,
    ));

    let resumed = inherited.is_some();
    let mut alive = inherited.as_mut().and_then(|i| i.alive.take());
    let rested = RestedConnections::default();
    let mut news = None;
    let tcp = args.transport == Transport::Tcp;
    let listener = match (tcp, inherited) {
        (false, _) => None,
        (true, Some(i)) => {
            let listener =
                TcpListener::from_std(i.listener).context("taking over the listening socket")?;
            let carried = i.connections.len();
            for (stream, state) in i.connections {
                match tokio::net::TcpStream::from_std(stream) {
                    Ok(socket) => {
                        spawn_connection(&daemon, socket, next_conn_id(), state, &rested);
                    }
                    Err(e) => tracing::warn!("an inherited connection is unusable: {e}"),
                }
            }
            tracing::debug!("took over {carried} connection(s)");
            news = i.news;
            Some(listener)
        }
        (true, None) => Some(
            TcpListener::bind(("127.0.0.1", 0))
                .await
                .context("listening on 127.0.0.1 (loopback)")?,
        ),
    };

    watch_signals(&daemon)?;
    reporter.log(
        Level::Info,
        &format!(
            "butler {} daemon starting ({} transport)",
            crate::version::tagged(),
            transport_name(&args.transport)
        ),
    );
    if let Some(listener) = &listener {
        let address = listener.local_addr().context("reading the listening address")?;
        if resumed {
            // Clients already have the address and secret; a second notification would only
            // confuse a launcher still reading our stdout.
            reporter.log(Level::Info, &format!("restarted after an update; still on {address}"));
        } else {
            crate::report::print_json_line(
                "butlerd/listen-notification",
                json!({ "secret": daemon.secret_for_listen_notification(), "tcp": { "address": address.to_string() } }),
            );
        }
    }

    if let Some(news) = news {
        announce(&daemon, news).await;
    }
    // The database opens in the background; requests that need it wait for it.
    let opening = db_path.clone();
    tokio::task::spawn_blocking(move || {
        let state = match db::open(&opening) {
            Ok(conn) => DbState::Ready(Db::new(conn)),
            Err(e) => {
                reporter.log(Level::Error, &format!("the database could not be opened: {e}"));
                DbState::Failed(e.to_string())
            }
        };
        let _ = db_tx.send(state);
    });

    for &pid in &args.destiny_pids {
        watch_destiny(&daemon, pid, reporter);
    }
    if let Some(interval) = args.update_interval {
        methods::spawn_background_checks(&daemon, interval);
    }

    // Kept open through the drain when a hand-over may follow: clients that connect meanwhile wait
    // in its backlog for the next process.
    let kept = match listener {
        Some(listener) => {
            let spawn =
                |socket, id| spawn_connection(&daemon, socket, id, Carried::default(), &rested);
            accept_loop(&daemon, listener, &args, spawn).await
        }
        #[cfg(unix)]
        None if matches!(args.transport, Transport::Unix(_)) => {
            let Transport::Unix(path) = &args.transport else { unreachable!() };
            let socket = UnixDaemonSocket::bind(path)?;
            crate::report::print_json_line(
                "butlerd/listen-notification",
                json!({ "secret": daemon.secret_for_listen_notification(), "unix": { "address": format!("unix:{}", path.display()) } }),
            );
            let spawn = |socket, id| spawn_plain(&daemon, socket, id);
            accept_loop(&daemon, socket, &args, spawn).await;
            None
        }
        #[cfg(windows)]
        None if matches!(args.transport, Transport::Pipe(_)) => {
            let Transport::Pipe(name) = &args.transport else { unreachable!() };
            let address = format!("net.pipe:{name}");
            let pipe = crate::streaming::pipe::PipeListener::bind(name).with_context(|| {
                format!("listening on {address} (a pipe of that name exists already?)")
            })?;
            crate::report::print_json_line(
                "butlerd/listen-notification",
                json!({
                    "secret": daemon.secret_for_listen_notification(),
                    "pipe": { "address": address, "path": crate::streaming::address::pipe_path(name) },
                }),
            );
            let spawn = |socket, id| spawn_plain(&daemon, socket, id);
            accept_loop(&daemon, pipe, &args, spawn).await;
            None
        }
        None => {
            let stdio = (tokio::io::stdin(), tokio::io::stdout());
            let carried = Carried::default();
            connection::serve(Arc::clone(&daemon), 0, stdio.0, stdio.1, carried).await;
            None
        }
    };

    if daemon.resting.is_cancelled() && !daemon.shutdown.is_cancelled() {
        // A restart that takes connections along: each answers what it has read, then rests.
        daemon.connections.close();
        if tokio::time::timeout(args.drain_timeout, daemon.connections.wait()).await.is_err() {
            reporter.log(
                Level::Warning,
                "some connections were still busy when the restart could wait no longer; they close",
            );
        }
    }
    // Only a hand-over keeps the socket through the drain; otherwise new clients are refused
    // at once rather than left waiting in a backlog nobody will accept.
    let kept = kept.filter(|_| daemon.restart.target().is_some());
    daemon.shutdown.cancel();
    daemon.tracker.close();
    if tokio::time::timeout(args.drain_timeout, daemon.tracker.wait()).await.is_err() {
        reporter.log(Level::Warning, "In-flight work did not finish in time; exiting anyway");
    }
    if let (Some(listener), Some(restart)) = (&kept, daemon.restart.target()) {
        let exe = restart.exe.clone();
        reporter.log(Level::Info, &format!("restarting into {}", exe.display()));
        #[cfg_attr(not(unix), expect(unused_mut, reason = "no probation without a restart"))]
        let mut on_probation = None;
        #[cfg(unix)]
        if restart.carries_connections
            && !args.probation.is_zero()
            && let Some(hand_over::Announcement::Applied { installed_version, .. }) = &restart.news
        {
            let watch = probation::Watch {
                pid: std::process::id(),
                version: installed_version.clone(),
                previous: crate::version::VERSION.to_owned(),
                exe: daemon.config.exe.clone(),
                period: args.probation,
                dbpath: match &db_path {
                    DbPath::File(p) => Some(p.clone()),
                    DbPath::Special(_) => None,
                },
                snapshot: snapshot_database(&daemon, &db_path).await,
                broth_url: args.update.broth_url.clone(),
                daemon_args: std::env::args_os().skip(1).collect(),
            };
            let secret = daemon.secret_for_listen_notification();
            match probation::start(&watch, listener, secret) {
                Ok(fd) => on_probation = Some(fd),
                Err(e) => tracing::warn!("restarting without a probation watchdog: {e}"),
            }
        }
        // Whoever watched this build may rest: it hands over as it should.
        say_ok(&mut alive);
        let more = restart.carries_connections.then(|| hand_over::PassingMore {
            lock: lock.file(),
            connections: std::mem::take(&mut *lock_rested(&rested)),
            news: restart.news,
            alive: on_probation,
        });
        let passing =
            hand_over::Passing { listener, secret: daemon.secret_for_listen_notification(), more };
        let err = hand_over::exec(&exe, passing);
        return Err(ExitError::new(
            ExitStatus::Runtime,
            anyhow::anyhow!("could not restart into {}: {err}", exe.display()),
        )
        .into());
    }
    say_ok(&mut alive);
    drop(lock);
    reporter.log(Level::Info, "butler daemon stopped");
    Ok(ExitStatus::Success)
}

fn transport_name(transport: &Transport) -> &'static str {
    match transport {
        Transport::Tcp => "tcp",
        Transport::Stdio => "stdio",
        Transport::Unix(_) => "unix socket",
        Transport::Pipe(_) => "named pipe",
    }
}

/// Serves one connection of a transport that no restart carries over (a unix socket, a pipe)
/// on a tracked task.
fn spawn_plain<S>(daemon: &Arc<Daemon>, socket: S, conn_id: u64) -> tokio::task::JoinHandle<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (reader, writer) = tokio::io::split(socket);
    let serving =
        connection::serve(Arc::clone(daemon), conn_id, reader, writer, Carried::default());
    daemon.tracker.spawn(async move {
        serving.await;
    })
}

/// Connections that came to rest for a restart in place, ready to pass on.
type RestedConnections = Arc<std::sync::Mutex<Vec<(std::net::TcpStream, Carried)>>>;

fn lock_rested(
    rested: &RestedConnections,
) -> std::sync::MutexGuard<'_, Vec<(std::net::TcpStream, Carried)>> {
    rested.lock().unwrap_or_else(|p| p.into_inner())
}

fn next_conn_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Serves one TCP connection on a tracked task; if it comes to rest for a restart, its socket
/// joins `rested`.
fn spawn_connection(
    daemon: &Arc<Daemon>,
    socket: tokio::net::TcpStream,
    conn_id: u64,
    carried: Carried,
    rested: &RestedConnections,
) -> tokio::task::JoinHandle<()> {
    let _ = socket.set_nodelay(true);
    let (reader, writer) = socket.into_split();
    let reader = quickack::QuickAck::new(reader);
    let serving = connection::serve(Arc::clone(daemon), conn_id, reader, writer, carried);
    let rested = Arc::clone(rested);
    daemon.tracker.spawn(daemon.connections.track_future(async move {
        let Some(r) = serving.await else { return };
        let socket = r.reader.into_inner().reunite(r.writer).map_err(|e| e.to_string());
        match socket.and_then(|s| s.into_std().map_err(|e| e.to_string())) {
            Ok(socket) => lock_rested(&rested).push((socket, r.carried)),
            Err(e) => tracing::warn!(conn = conn_id, "a resting connection is lost: {e}"),
        }
    }))
}

/// After a restart in place, tells `Meta.Flow` connections what the previous process did.
async fn announce(daemon: &Daemon, news: hand_over::Announcement) {
    use notifications::{UpdateApplied, UpdateRolledBack};
    match news {
        hand_over::Announcement::Applied { previous_version, installed_version, verified } => {
            let applied = UpdateApplied {
                previous_version,
                installed_version,
                verified,
                restarting: false,
                restarted: true,
            };
            daemon.broadcast(applied).await;
        }
        hand_over::Announcement::RolledBack { restored_version, .. } => {
            let rolled = UpdateRolledBack { restored_version, restarting: false, restarted: true };
            daemon.broadcast(rolled).await;
        }
    }
}

/// A listening socket the accept loop takes clients from: loopback TCP, a unix socket, or a
/// named pipe.
trait Listener: Send {
    type Socket: tokio::io::AsyncWrite + Unpin + Send + 'static;
    async fn next(&mut self) -> std::io::Result<Self::Socket>;
}

impl Listener for TcpListener {
    type Socket = tokio::net::TcpStream;
    async fn next(&mut self) -> std::io::Result<Self::Socket> {
        self.accept().await.map(|(s, _)| s)
    }
}

/// A daemon listening on a unix socket: owner-only, and clients of another uid are refused.
#[cfg(unix)]
struct UnixDaemonSocket {
    listener: tokio::net::UnixListener,
    path: std::path::PathBuf,
}

#[cfg(unix)]
impl UnixDaemonSocket {
    fn bind(path: &std::path::Path) -> anyhow::Result<Self> {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        // Only a socket is stale; never delete someone's regular file.
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
            let _ = std::fs::remove_file(path);
        }
        let listener = tokio::net::UnixListener::bind(path)
            .with_context(|| format!("listening on unix:{}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("making unix:{} owner-only", path.display()))?;
        Ok(UnixDaemonSocket { listener, path: path.to_owned() })
    }
}

#[cfg(unix)]
impl Listener for UnixDaemonSocket {
    type Socket = tokio::net::UnixStream;
    async fn next(&mut self) -> std::io::Result<Self::Socket> {
        loop {
            let (socket, _) = self.listener.accept().await?;
            // SAFETY: geteuid has no preconditions and cannot fail.
            let me = unsafe { libc::geteuid() };
            match socket.peer_cred() {
                Ok(c) if c.uid() == me => return Ok(socket),
                Ok(c) => tracing::warn!("refusing a daemon client of uid {}", c.uid()),
                Err(e) => tracing::warn!("refusing a daemon client of unknown uid: {e}"),
            }
        }
    }
}

/// A daemon listening on a named pipe: owner-only, remote clients refused (`streaming::pipe`).
#[cfg(windows)]
impl Listener for crate::streaming::pipe::PipeListener {
    type Socket = tokio::net::windows::named_pipe::NamedPipeServer;
    async fn next(&mut self) -> std::io::Result<Self::Socket> {
        self.accept().await
    }
}

#[cfg(unix)]
impl Drop for UnixDaemonSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Accepts until shutdown, or until a restart that takes connections along begins; gives the
/// listener back in `--keep-alive` mode (for a hand-over). `serve` starts each connection.
async fn accept_loop<L: Listener>(
    daemon: &Arc<Daemon>,
    mut listener: L,
    args: &DaemonSettings,
    serve: impl Fn(L::Socket, u64) -> tokio::task::JoinHandle<()>,
) -> Option<L> {
    let slots = Arc::new(Semaphore::new(args.max_connections));
    // One-connection mode (no --keep-alive) serves the first connection to authenticate, not the
    // first to connect: a peer without the secret cannot lock the launcher out.
    let mut single = std::collections::HashMap::new();
    loop {
        let socket = tokio::select! {
            // Shutdown first: a client that connects after it started must wait in the backlog
            // (for a hand-over) or be refused, never be accepted only to be closed at once.
            biased;
            _ = daemon.shutdown.cancelled() => return Some(listener),
            _ = daemon.resting.cancelled() => return Some(listener),
            chosen = daemon.first_authenticated(), if !args.keep_alive => {
                drop(listener);
                if let Some(conn) = single.remove(&chosen) {
                    let _ = conn.await;
                }
                return None;
            }
            accepted = listener.next() => match accepted {
                Ok(socket) => socket,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "Accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let conn_id = next_conn_id();
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            daemon.tracker.spawn(refuse(socket, args.max_connections));
            continue;
        };
        let conn = serve(socket, conn_id);
        let conn = daemon.tracker.spawn(async move {
            let _ = conn.await;
            drop(slot);
        });
        if !args.keep_alive {
            single.retain(|_, c: &mut tokio::task::JoinHandle<()>| !c.is_finished());
            single.insert(conn_id, conn);
        }
    }
}

/// Over the connection cap: say why, then close.
async fn refuse<S: tokio::io::AsyncWrite + Unpin>(mut socket: S, max: usize) {
    use tokio::io::AsyncWriteExt;
    let err = jsonrpc::RpcError::new(
        jsonrpc::code::TOO_MANY_CONNECTIONS,
        format!("too many connections (limit {max}); try again later"),
    );
    let line = jsonrpc::to_line(&jsonrpc::Response::new(&serde_json::Value::Null, &Err(err)));
    let _ = socket.write_all(&line).await;
    let _ = socket.shutdown().await;
}

/// A signal (Ctrl-C, Ctrl-Break or console close on Windows) starts the graceful shutdown; a
/// second one exits at once.
///
/// The handlers are installed before this returns, so a client that signals as soon as it sees
/// the listen notification (the node client's cancel) always gets a graceful exit.
fn watch_signals(daemon: &Arc<Daemon>) -> anyhow::Result<()> {
    let mut signals = crate::signals::Signals::install().context("installing signal handlers")?;
    let daemon = Arc::clone(daemon);
    // Not tracked: it must outlive the drain to catch the second signal, and dies with the runtime.
    tokio::spawn(async move {
        signals.recv().await;
        tracing::info!("Signal received; shutting down");
        daemon.shutdown.cancel();
        signals.recv().await;
        std::process::exit(ExitStatus::Interrupted.code().into());
    });
    Ok(())
}

/// Shuts the daemon down when `pid` exits (the launcher that spawned us died).
fn watch_destiny(daemon: &Arc<Daemon>, pid: u32, reporter: Reporter) {
    let daemon = Arc::clone(daemon);
    // Opened now, not at the first tick: on Windows the handle pins the process, so a pid
    // reused after the launcher died cannot pass for it.
    let destiny = Destiny::open(pid);
    daemon.tracker.clone().spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = daemon.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if !destiny.alive() {
                reporter.log(Level::Info, &format!("destiny process {pid} exited; shutting down"));
                daemon.shutdown.cancel();
                return;
            }
        }
    });
}

/// A process whose end ends the daemon.
#[cfg(unix)]
struct Destiny(u32);

#[cfg(unix)]
impl Destiny {
    fn open(pid: u32) -> Destiny {
        Destiny(pid)
    }

    fn alive(&self) -> bool {
        process_alive(self.0)
    }
}

/// A process whose end ends the daemon, on Windows.
#[cfg(windows)]
enum Destiny {
    /// Opened with `SYNCHRONIZE`: the handle is signalled once the process has exited.
    Open(std::os::windows::io::OwnedHandle),
    /// No process has that id (any more).
    Gone,
    /// It exists but may not be watched (another user's, an elevated one): it is not watched,
    /// as a kill(0) answered EPERM is taken for alive on unix.
    Unwatchable,
}

#[cfg(windows)]
impl Destiny {
    fn open(pid: u32) -> Destiny {
        use std::os::windows::io::{FromRawHandle, OwnedHandle};
        use windows_sys::Win32::Foundation::ERROR_INVALID_PARAMETER;
        use windows_sys::Win32::System::Threading::{OpenProcess, PROCESS_SYNCHRONIZE};
        // SAFETY: OpenProcess returns a new handle or null; a non-null one is ours to own.
        let handle = unsafe { OpenProcess(PROCESS_SYNCHRONIZE, 0, pid) };
        if handle.is_null() {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(ERROR_INVALID_PARAMETER as i32) {
                return Destiny::Gone;
            }
            tracing::warn!("destiny process {pid} cannot be watched: {e}");
            return Destiny::Unwatchable;
        }
        // SAFETY: a valid handle nothing else owns.
        Destiny::Open(unsafe { OwnedHandle::from_raw_handle(handle) })
    }

    fn alive(&self) -> bool {
        use std::os::windows::io::AsRawHandle;
        use windows_sys::Win32::Foundation::WAIT_TIMEOUT;
        use windows_sys::Win32::System::Threading::WaitForSingleObject;
        match self {
            // SAFETY: a zero-timeout wait on a handle we own.
            Destiny::Open(h) => unsafe {
                WaitForSingleObject(h.as_raw_handle(), 0) == WAIT_TIMEOUT
            },
            Destiny::Gone => false,
            Destiny::Unwatchable => true,
        }
    }
}

#[cfg(unix)]
fn process_alive(pid: u32) -> bool {
    let Ok(pid_t) = libc::pid_t::try_from(pid) else { return false };
    // SAFETY: kill with signal 0 only checks that the process exists; it sends nothing.
    let rc = unsafe { libc::kill(pid_t, 0) };
    let exists = rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    exists && !is_zombie(pid)
}

/// A dead child nobody has reaped yet still answers `kill(0)`; it is dead all the same.
#[cfg(unix)]
fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// Debug builds only: `BUTLER_TEST_FAULT=crash@<version>` or `exit-after-ms=<n>@<version>` makes
/// that build's daemon fail, so tests can show a restart into it is undone.
#[cfg(debug_assertions)]
fn test_fault() {
    let Ok(fault) = std::env::var("BUTLER_TEST_FAULT") else { return };
    let Some((what, version)) = fault.split_once('@') else { return };
    if version != crate::version::VERSION {
        return;
    }
    if what == "crash" {
        std::process::abort();
    }
    if let Some(ms) = what.strip_prefix("exit-after-ms=").and_then(|ms| ms.parse().ok()) {
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(ms));
            std::process::exit(3);
        });
    }
}

/// Tells a probation watchdog watching this process that it ends (or hands over) as it should.
fn say_ok(alive: &mut Option<std::fs::File>) {
    use std::io::Write;
    if let Some(mut pipe) = alive.take() {
        let _ = pipe.write_all(probation::OK);
    }
}

#[cfg(unix)]
/// A consistent copy of the database, taken before switching away from this build, so a
/// failed successor can be undone with the data as this build knew it.
async fn snapshot_database(daemon: &Daemon, db: &DbPath) -> Option<std::path::PathBuf> {
    let DbPath::File(file) = db else { return None };
    let snapshot = probation::snapshot_path(file, crate::version::VERSION);
    let _ = std::fs::remove_file(&snapshot);
    let conn = daemon.db().await.ok()?;
    let target = snapshot.clone();
    let taken =
        conn.call(move |c| Ok(c.execute("VACUUM INTO ?1", [target.display().to_string()])?)).await;
    match taken {
        Ok(_) => Some(snapshot),
        Err(e) => {
            tracing::warn!("no database snapshot before the restart: {e}");
            None
        }
    }
}

/// Each connection is a descriptor; the default soft limit (often 1024) is too low for a daemon
/// many launchers talk to, and the hard limit is ours to take.
fn raise_fd_limit() {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit/setrlimit on a valid, stack-owned struct.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
                lim.rlim_cur = lim.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
        }
    }
}

/// glibc's malloc, left alone, made the daemon under a soak (`make soak`) grow from 7 to 110 MiB
/// and keep what it took: every thread that allocates (each `Process.Run` has an output thread
/// of its own) may get an arena of its own (up to 8 per core), and freeing a big block raises the
/// mmap and trim thresholds for good, so later big blocks come from heaps that are never given
/// back. One arena and fixed thresholds kept it at 20-24 MiB, at the same throughput. A variable
/// the user set (`MALLOC_ARENA_MAX`, ...) wins.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    for (var, param, value) in [
        ("MALLOC_ARENA_MAX", libc::M_ARENA_MAX, 1),
        ("MALLOC_MMAP_THRESHOLD_", libc::M_MMAP_THRESHOLD, 256 << 10),
        ("MALLOC_TRIM_THRESHOLD_", libc::M_TRIM_THRESHOLD, 1 << 20),
    ] {
        if std::env::var_os(var).is_none() {
            // SAFETY: mallopt only sets malloc's tunables; called before any thread starts.
            unsafe { libc::mallopt(param, value) };
        }
    }
}

/// 256 random bits, hex-encoded so it is printable and safe in any client.
fn new_secret() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("no OS randomness for the secret: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

//! `butler logs web`: a private, live log viewer in the browser, over the local log store.
//!
//! Layers, bottom up: [`api`] (pages and lists read from the store, bounded, as JSON-ready
//! structs), [`live`] (one watcher noticing new data, and the server-sent-event bodies built on
//! it), [`routes`] (token and Host checks, the routes, the embedded page in `page/`), and this
//! module: bind loopback, serve HTTP/1 connections until stopped.
//!
//! It reads the same SQLite store as `butler logs` and the daemon's `Streams.*`, so it shows what
//! any other butler writes; it never writes to it.

pub(crate) mod api;
mod live;
mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::db::{self, Db, DbError, DbPath};

/// Most connections served at once; past this the viewer stops accepting until one closes.
const MAX_CONNECTIONS: usize = 128;
/// Most live event streams at once (a page holds two: the list and the followed stream).
const MAX_LIVE: usize = 32;
/// A client that has not sent its request headers by then is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// At shutdown, how long open connections get to finish.
const DRAIN: Duration = Duration::from_secs(2);

/// What the viewer serves, and where.
#[derive(Debug, Clone)]
pub(crate) struct ViewerSettings {
    /// A loopback address; port 0 picks a free one.
    pub address: SocketAddr,
    pub dbpath: DbPath,
    pub project: String,
    /// How often the store is checked for new data.
    pub poll: Duration,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ViewerError {
    #[error(
        "--address {0}: the viewer serves loopback only (127.0.0.1:PORT or [::1]:PORT), so that only this machine can see your logs"
    )]
    NotLoopback(SocketAddr),
    #[error("cannot listen on {address}: {source}")]
    Bind { address: SocketAddr, source: std::io::Error },
    #[error("cannot make an access token: {0}")]
    Token(getrandom::Error),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// What every request handler shares.
pub(crate) struct State {
    token: String,
    /// Host header values that name this viewer.
    hosts: Vec<String>,
    project: String,
    db: Db,
    snapshots: watch::Receiver<Arc<live::Snapshot>>,
    live: Arc<Semaphore>,
    stop: CancellationToken,
}

/// A bound viewer, not yet serving.
pub(crate) struct Viewer {
    listener: TcpListener,
    address: SocketAddr,
    state: Arc<State>,
    tracker: TaskTracker,
}

impl Viewer {
    /// Checks the address, opens the store, binds, and starts watching the store.
    pub(crate) async fn bind(settings: ViewerSettings) -> Result<Viewer, ViewerError> {
        if !settings.address.ip().is_loopback() {
            return Err(ViewerError::NotLoopback(settings.address));
        }
        let mut raw = [0u8; 24];
        getrandom::fill(&mut raw).map_err(ViewerError::Token)?;
        let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let dbpath = settings.dbpath.clone();
        let conn = tokio::task::spawn_blocking(move || db::open(&dbpath))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
        let db = Db::new(conn);
        let listener = TcpListener::bind(settings.address)
            .await
            .map_err(|source| ViewerError::Bind { address: settings.address, source })?;
        let address = listener
            .local_addr()
            .map_err(|source| ViewerError::Bind { address: settings.address, source })?;
        let port = address.port();
        let mut hosts = vec![format!("{address}")];
        if address.ip().is_ipv4() {
            hosts.push(format!("localhost:{port}"));
        }
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let snapshots = live::watch_store(
            db.clone(),
            settings.project.clone(),
            settings.poll,
            stop.clone(),
            &tracker,
        );
        let state = Arc::new(State {
            token,
            hosts,
            project: settings.project,
            db,
            snapshots,
            live: Arc::new(Semaphore::new(MAX_LIVE)),
            stop,
        });
        Ok(Viewer { listener, address, state, tracker })
    }

    /// The page's URL, token included.
    pub(crate) fn url(&self) -> String {
        format!("http://{}/{}/", self.address, self.state.token)
    }

    pub(crate) fn address(&self) -> SocketAddr {
        self.address
    }

    /// Serves until `shutdown` is cancelled, then ends live views and lets connections finish.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let Viewer { listener, state, tracker, .. } = self;
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let permit = tokio::select! {
                () = shutdown.cancelled() => break,
                p = Arc::clone(&slots).acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let (tcp, peer) = tokio::select! {
                () = shutdown.cancelled() => break,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors, usually: wait a little rather than spin.
                        tracing::warn!("log viewer: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let st = Arc::clone(&state);
            let stop = state.stop.clone();
            tracker.spawn(async move {
                let svc = service_fn(move |req| routes::handle(Arc::clone(&st), req));
                let mut builder = http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .max_buf_size(64 * 1024);
                let conn = builder.serve_connection(TokioIo::new(tcp), svc);
                let mut conn = std::pin::pin!(conn);
                let result = tokio::select! {
                    r = conn.as_mut() => r,
                    () = stop.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(e) = result {
                    tracing::debug!("log viewer: connection from {peer}: {e}");
                }
                drop(permit);
            });
        }
        drop(listener);
        state.stop.cancel();
        tracker.close();
        if tokio::time::timeout(DRAIN, tracker.wait()).await.is_err() {
            tracing::debug!("log viewer: connections still open after the drain; leaving them");
        }
    }
}

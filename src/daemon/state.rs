//! What the whole daemon shares across connections: config, secret, shutdown, operations, the database.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connection::Peer;
use super::hand_over::Announcement;
use super::jsonrpc::{RpcError, code};
use super::notifications::Notification;
use super::router::Router;
use crate::db::Db;
use crate::update::UpdateSettings;

/// Tunables, mostly from hidden flags so tests can shorten them.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// TCP connections must authenticate; stdio has no secret.
    pub require_auth: bool,
    pub auth_timeout: Duration,
    pub max_line_bytes: usize,
    /// Requests running at once on one connection; past this the daemon stops reading from it.
    pub max_in_flight: usize,
    /// Write every message in and out to stderr (`--log`).
    pub log_traffic: bool,
    /// `--dbpath` as given: `Process.Run`'s store output opens its own connection to it.
    pub dbpath: Option<String>,
    /// Where `Update.*` looks for new versions, whom it trusts, its limits and its cache.
    pub update: UpdateSettings,
    /// The executable this daemon was started from: what `Update.*` updates.
    pub(crate) exe: PathBuf,
    /// A listening socket to pass on exists (TCP with `--keep-alive`), so `restart` is possible.
    pub can_hand_over: bool,
}

/// The database as the daemon sees it: opened in the background so it never delays the listen line.
#[derive(Debug, Clone)]
pub(crate) enum DbState {
    Opening,
    Ready(Db),
    Failed(String),
}

pub(crate) struct Daemon {
    pub config: Config,
    pub router: Router,
    secret: String,
    /// Cancelled to start the graceful shutdown; every connection token is its child.
    pub shutdown: CancellationToken,
    /// Cancelled when a restart in place takes connections along: stop accepting, and let every
    /// connection come to rest (see `connection.rs`) instead of closing.
    pub(crate) resting: CancellationToken,
    pub tracker: TaskTracker,
    /// The TCP connections alone (also in `tracker`), so a restart can wait for them to rest.
    pub(crate) connections: TaskTracker,
    /// Cancellable operations by client-chosen id, each with the ticket of its registration.
    operations: Mutex<HashMap<String, (u64, CancellationToken)>>,
    next_ticket: AtomicU64,
    flows: Mutex<Vec<Weak<Peer>>>,
    db: watch::Receiver<DbState>,
    pub restart: Arc<RestartGate>,
    /// The first connection to authenticate: in one-connection mode, the one that is served.
    first_authenticated: watch::Sender<Option<u64>>,
    /// The version installed over this still-running one (by `Update.Apply`/`Rollback` without a
    /// restart): what is on disk, so checks compare against it and launchers learn that only a
    /// restart is missing.
    awaiting_restart: Mutex<Option<String>>,
    /// Paths of the streams `Process.Run` children opened (announced by `Streams.Opened`), held
    /// until their run has flushed: `Streams.Follow` waits for these instead of failing while
    /// the store has not registered them yet.
    announced: Mutex<HashMap<String, usize>>,
}

/// Restarting in place versus `Process.Run` children: a restart would end them, so the two
/// exclude each other under one lock. Whichever comes first wins: a claimed restart refuses new
/// children, and running children refuse a restart.
#[derive(Debug, Default)]
pub(crate) struct RestartGate {
    state: Mutex<GateState>,
}

#[derive(Debug, Default)]
struct GateState {
    processes: usize,
    hand_over: Option<Restart>,
}

/// A restart in place that was asked for: what to run after the drain, and what goes along.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Restart {
    pub(crate) exe: PathBuf,
    /// The new build takes open connections, the daemon lock and news along
    /// (`daemon-hand-over-connections`); otherwise only the listening socket and the secret.
    pub(crate) carries_connections: bool,
    /// Told to `Meta.Flow` connections by the new process once it serves.
    pub(crate) news: Option<Announcement>,
}

/// Why a restart was refused.
#[derive(Debug, thiserror::Error)]
#[error("{0} process(es) started by Process.Run are still running")]
pub(crate) struct ProcessesRunning(pub usize);

/// Why a process was refused.
#[derive(Debug, thiserror::Error)]
#[error("the daemon is restarting into an update; start the process again in a moment")]
pub(crate) struct Restarting;

/// Counts one `Process.Run` child as running until dropped.
#[derive(Debug)]
pub(crate) struct ProcessSlot(Arc<RestartGate>);

impl Drop for ProcessSlot {
    fn drop(&mut self) {
        lock(&self.0.state).processes -= 1;
    }
}

impl RestartGate {
    /// Counts a child as running, unless a restart was claimed.
    pub(crate) fn try_start_process(self: &Arc<Self>) -> Result<ProcessSlot, Restarting> {
        let mut state = lock(&self.state);
        if state.hand_over.is_some() {
            return Err(Restarting);
        }
        state.processes += 1;
        Ok(ProcessSlot(Arc::clone(self)))
    }

    /// Restart after the drain, unless children are running. A later claim replaces an earlier
    /// one: the newest install is what is on disk.
    pub(crate) fn try_claim(&self, restart: Restart) -> Result<(), ProcessesRunning> {
        let mut state = lock(&self.state);
        if state.processes > 0 {
            return Err(ProcessesRunning(state.processes));
        }
        state.hand_over = Some(restart);
        Ok(())
    }

    /// The restart claimed, if any.
    pub(crate) fn target(&self) -> Option<Restart> {
        lock(&self.state).hand_over.clone()
    }
}

impl Daemon {
    pub(crate) fn new(
        config: Config,
        router: Router,
        secret: String,
        db: watch::Receiver<DbState>,
    ) -> Self {
        Daemon {
            config,
            router,
            secret,
            shutdown: CancellationToken::new(),
            resting: CancellationToken::new(),
            tracker: TaskTracker::new(),
            connections: TaskTracker::new(),
            operations: Mutex::default(),
            next_ticket: AtomicU64::new(0),
            flows: Mutex::default(),
            db,
            restart: Arc::default(),
            first_authenticated: watch::Sender::new(None),
            awaiting_restart: Mutex::new(None),
            announced: Mutex::default(),
        }
    }

    /// Connection `conn` authenticated.
    pub(crate) fn authenticated(&self, conn: u64) {
        self.first_authenticated.send_if_modified(|first| {
            let unset = first.is_none();
            first.get_or_insert(conn);
            unset
        });
    }

    /// Resolves with the first connection to authenticate.
    pub(crate) async fn first_authenticated(&self) -> u64 {
        let mut rx = self.first_authenticated.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(first) => first.unwrap_or_default(),
            // The sender lives as long as `self`.
            Err(_) => std::future::pending().await,
        }
    }

    /// Ends serving once the current reply is queued: a restart that takes connections along
    /// lets them come to rest; anything else is the graceful shutdown.
    pub(crate) fn stop(&self) {
        match self.restart.target() {
            Some(r) if r.carries_connections => self.resting.cancel(),
            _ => self.shutdown.cancel(),
        }
    }

    /// Only for the listen notification and the restart hand-over: the secret is written nowhere else.
    pub(crate) fn secret_for_listen_notification(&self) -> &str {
        &self.secret
    }

    /// Compares in constant time, so response timing says nothing about the secret.
    pub(crate) fn secret_matches(&self, candidate: &str) -> bool {
        let (a, b) = (self.secret.as_bytes(), candidate.as_bytes());
        let mut diff = a.len() ^ b.len();
        for (i, x) in a.iter().enumerate() {
            diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
        }
        diff == 0
    }

    /// Waits until the database is open; requests that need it call this.
    pub(crate) async fn db(&self) -> Result<Db, RpcError> {
        let mut rx = self.db.clone();
        let state = rx
            .wait_for(|s| !matches!(s, DbState::Opening))
            .await
            .map_err(|_| RpcError::internal("the database task ended"))?;
        match &*state {
            DbState::Ready(db) => Ok(db.clone()),
            DbState::Failed(e) => Err(RpcError::new(
                code::DATABASE_UNAVAILABLE,
                format!("the database is unavailable: {e}"),
            )),
            DbState::Opening => unreachable!("wait_for skips Opening"),
        }
    }

    /// Makes `token` cancellable by `Operation.Cancel {id}` from any connection; the ticket
    /// returned unregisters exactly this registration.
    pub(crate) fn register_operation(&self, id: &str, token: CancellationToken) -> u64 {
        let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        lock(&self.operations).insert(id.to_owned(), (ticket, token));
        ticket
    }

    pub(crate) fn unregister_operation(&self, id: &str, ticket: u64) {
        let mut ops = lock(&self.operations);
        // A newer operation may have reused the id; leave it in place.
        if ops.get(id).is_some_and(|(t, _)| *t == ticket) {
            ops.remove(id);
        }
    }

    /// Cancels the operation named `id`; false if none is running.
    pub(crate) fn cancel_operation(&self, id: &str) -> bool {
        match lock(&self.operations).remove(id) {
            Some((_, token)) => {
                token.cancel();
                true
            }
            None => false,
        }
    }

    /// A stream a `Process.Run` child opened: followers may wait for it.
    pub(crate) fn announce_stream(&self, path: String) {
        *lock(&self.announced).entry(path).or_default() += 1;
    }

    /// The run that opened `path` has flushed it to the store.
    pub(crate) fn forget_stream(&self, path: &str) {
        let mut announced = lock(&self.announced);
        if let Some(n) = announced.get_mut(path) {
            *n -= 1;
            if *n == 0 {
                announced.remove(path);
            }
        }
    }

    pub(crate) fn is_announced(&self, path: &str) -> bool {
        lock(&self.announced).contains_key(path)
    }

    pub(crate) fn awaiting_restart(&self) -> Option<String> {
        lock(&self.awaiting_restart).clone()
    }

    /// After an install or rollback: the version now on disk when it is not the one running
    /// (and no restart into it follows), else `None`.
    pub(crate) fn installed_without_restart(&self, version: Option<String>) {
        *lock(&self.awaiting_restart) = version;
    }

    pub(crate) fn add_flow(&self, peer: &Arc<Peer>) {
        lock(&self.flows).push(Arc::downgrade(peer));
    }

    /// Sends a daemon-wide notification to every `Meta.Flow` connection still open.
    pub(crate) async fn broadcast<N: Notification>(&self, n: N) {
        debug_assert!(
            self.router.may_send("Meta.Flow", N::METHOD),
            "{} goes to Meta.Flow connections, but Meta.Flow's description does not list it",
            N::METHOD
        );
        let peers: Vec<Arc<Peer>> = {
            let mut flows = lock(&self.flows);
            flows.retain(|w| w.strong_count() > 0);
            flows.iter().filter_map(Weak::upgrade).collect()
        };
        for peer in peers {
            peer.notify(N::METHOD, &n).await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_processes_refuse_a_restart_and_a_claimed_restart_refuses_processes() {
        let restart =
            |exe: &str| Restart { exe: PathBuf::from(exe), carries_connections: true, news: None };
        let gate = Arc::new(RestartGate::default());
        let slot = gate.try_start_process().expect("no restart claimed yet");
        let refused = gate.try_claim(restart("new")).unwrap_err();
        assert_eq!(refused.0, 1);
        assert_eq!(gate.target(), None, "a refused claim leaves nothing behind");
        drop(slot);
        gate.try_claim(restart("new")).expect("no process left");
        assert!(gate.try_start_process().is_err(), "the restart was claimed first");
        gate.try_claim(restart("newer")).expect("a later install replaces the target");
        assert_eq!(gate.target(), Some(restart("newer")));
    }
}

//! What the whole daemon shares across connections: config, secret, shutdown, operations, the database.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connection::Peer;
use super::jsonrpc::{RpcError, code};
use super::router::Router;
use crate::db::Db;

/// Tunables, mostly from hidden flags so tests can shorten them.
#[derive(Debug, Clone)]
pub struct Config {
    /// TCP connections must authenticate; stdio has no secret.
    pub require_auth: bool,
    pub auth_timeout: Duration,
    pub max_line_bytes: usize,
    /// Requests running at once on one connection; past this the daemon stops reading from it.
    pub max_in_flight: usize,
    /// Write every message in and out to stderr (`--log`).
    pub log_traffic: bool,
    /// The itch API base URL and HTTP user agent, kept for features that call out.
    pub address: Option<String>,
    pub user_agent: Option<String>,
    /// `--dbpath` as given (the update history opens its own connection to it).
    pub dbpath: Option<String>,
    /// Where `Update.*` looks for new versions and whom it trusts.
    pub update_source: crate::upgrade::SourceArgs,
    /// The executable this daemon was started from: what `Update.*` updates.
    pub exe: std::path::PathBuf,
    /// Download limits for `Update.*` (the hidden `--upgrade-*` flags / `BUTLER_UPGRADE_*`).
    pub update_tuning: butler_updater::Tuning,
    /// A listening socket to pass on exists (TCP with `--keep-alive`), so `restart` is possible.
    pub can_hand_over: bool,
    /// Where update archives fetched in the background wait for `Update.Apply`.
    pub update_cache: Option<std::path::PathBuf>,
}

/// The database as the daemon sees it: opened in the background so it never delays the listen line.
#[derive(Debug, Clone)]
pub enum DbState {
    Opening,
    Ready(Db),
    Failed(String),
}

pub struct Daemon {
    pub config: Config,
    pub router: Router,
    secret: String,
    /// Cancelled to start the graceful shutdown; every connection token is its child.
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    /// Cancellable operations by client-chosen id, each with the ticket of its registration.
    operations: Mutex<HashMap<String, (u64, CancellationToken)>>,
    next_ticket: AtomicU64,
    flows: Mutex<Vec<Weak<Peer>>>,
    db: watch::Receiver<DbState>,
    /// The executable to restart into after the drain, when a restart was asked for.
    hand_over: Mutex<Option<std::path::PathBuf>>,
    /// `Process.Run` children still running: a restart now would end them.
    pub running_processes: AtomicUsize,
    /// The version installed over this still-running one (by `Update.Apply`/`Rollback` without a
    /// restart): what is on disk, so checks compare against it and launchers learn that only a
    /// restart is missing.
    pub awaiting_restart: Mutex<Option<String>>,
}

impl Daemon {
    pub fn new(
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
            tracker: TaskTracker::new(),
            operations: Mutex::default(),
            next_ticket: AtomicU64::new(0),
            flows: Mutex::default(),
            db,
            hand_over: Mutex::new(None),
            running_processes: AtomicUsize::new(0),
            awaiting_restart: Mutex::new(None),
        }
    }

    /// Only for the listen notification and the restart hand-over: the secret is written nowhere else.
    pub fn secret_for_listen_notification(&self) -> &str {
        &self.secret
    }

    /// Compares in constant time, so response timing says nothing about the secret.
    pub fn secret_matches(&self, candidate: &str) -> bool {
        let (a, b) = (self.secret.as_bytes(), candidate.as_bytes());
        let mut diff = a.len() ^ b.len();
        for (i, x) in a.iter().enumerate() {
            diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
        }
        diff == 0
    }

    /// Waits until the database is open; requests that need it call this.
    pub async fn db(&self) -> Result<Db, RpcError> {
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
    pub fn register_operation(&self, id: &str, token: CancellationToken) -> u64 {
        let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        lock(&self.operations).insert(id.to_owned(), (ticket, token));
        ticket
    }

    pub fn unregister_operation(&self, id: &str, ticket: u64) {
        let mut ops = lock(&self.operations);
        // A newer operation may have reused the id; leave it in place.
        if ops.get(id).is_some_and(|(t, _)| *t == ticket) {
            ops.remove(id);
        }
    }

    /// Cancels the operation named `id`; false if none is running.
    pub fn cancel_operation(&self, id: &str) -> bool {
        match lock(&self.operations).remove(id) {
            Some((_, token)) => {
                token.cancel();
                true
            }
            None => false,
        }
    }

    /// After the drain, re-execute `exe` on the same socket instead of exiting.
    pub fn request_hand_over(&self, exe: std::path::PathBuf) {
        *lock(&self.hand_over) = Some(exe);
    }

    /// Withdraws this request's restart into `exe`, never one another request made since.
    pub fn cancel_hand_over(&self, exe: &std::path::Path) {
        let mut target = lock(&self.hand_over);
        if target.as_deref() == Some(exe) {
            *target = None;
        }
    }

    pub fn awaiting_restart(&self) -> Option<String> {
        lock(&self.awaiting_restart).clone()
    }

    pub fn set_awaiting_restart(&self, version: Option<String>) {
        *lock(&self.awaiting_restart) = version;
    }

    pub fn hand_over_target(&self) -> Option<std::path::PathBuf> {
        lock(&self.hand_over).clone()
    }

    pub fn add_flow(&self, peer: &Arc<Peer>) {
        lock(&self.flows).push(Arc::downgrade(peer));
    }

    /// Sends a daemon-wide notification to every `Meta.Flow` connection still open.
    pub async fn broadcast(&self, method: &str, params: serde_json::Value) {
        let peers: Vec<Arc<Peer>> = {
            let mut flows = lock(&self.flows);
            flows.retain(|w| w.strong_count() > 0);
            flows.iter().filter_map(Weak::upgrade).collect()
        };
        for peer in peers {
            peer.notify(method, &params).await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

//! Which log-store streams still have a live writer: a lease the kernel releases on death.
//!
//! Every `store` output (in `serve`, `run`, `stream` and the daemon's `Process.Run`) takes a
//! lease: an exclusive OS lock on a fresh file `<db>.writers/<token>.lock`, and each stream it
//! registers records `<token>` in `log_streams.writer`. The kernel drops the lock when the
//! process dies however it dies (SIGKILL included), so a reader that can lock the file itself, or
//! finds it gone, knows the writer is dead and the stream will never end. A token is never
//! reused, so a reused pid cannot make a dead writer look alive; the lock is `flock` on unix
//! (macOS too) and `LockFileEx` on Windows, both per open file, so a reader in the writer's own
//! process (the daemon) sees the lock held too. Readers only open and lock; they never write.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};

use crate::db::{DbPath, private_file};

/// The folder of `db`'s writer leases.
fn lease_dir(db: &Path) -> PathBuf {
    let mut name = db.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".writers");
    db.with_file_name(name)
}

fn lease_file(dir: &Path, token: &str) -> PathBuf {
    dir.join(format!("{token}.lock"))
}

/// A held writer lease; released (and its file removed) when dropped.
#[derive(Debug)]
pub(crate) struct WriterLease {
    token: String,
    /// `None` for an in-memory database, which dies with its process anyway.
    file: Option<(File, PathBuf)>,
}

impl WriterLease {
    pub(crate) fn acquire(db: &DbPath) -> std::io::Result<WriterLease> {
        let DbPath::File(db) = db else {
            return Ok(WriterLease { token: new_token(), file: None });
        };
        let dir = lease_dir(db);
        crate::db::create_private_dir_all(&dir)?;
        loop {
            let token = new_token();
            let path = lease_file(&dir, &token);
            let file = match private_file().read(true).write(true).create_new(true).open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            };
            // Nobody else knows the token yet, so this cannot block.
            file.try_lock().map_err(|e| match e {
                TryLockError::Error(e) => e,
                TryLockError::WouldBlock => std::io::Error::other("a new lease file is locked"),
            })?;
            return Ok(WriterLease { token, file: Some((file, path)) });
        }
    }

    pub(crate) fn token(&self) -> &str {
        &self.token
    }
}

impl Drop for WriterLease {
    fn drop(&mut self) {
        if let Some((file, path)) = self.file.take() {
            let _ = std::fs::remove_file(&path);
            drop(file);
        }
    }
}

/// Unique across processes and time: the pid, the clock, and a per-process counter.
fn new_token() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{nanos:x}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Whether the writer holding `token`'s lease on the database at `db_file` is alive. A database
/// without a file (in memory) belongs to this live process. Errors other than "held" or "gone"
/// count as alive: a wrong "dead" would end a live stream, a wrong "alive" only delays.
pub(crate) fn alive(db_file: &str, token: &str) -> bool {
    if db_file.is_empty() || token.contains(['/', '\\']) {
        return true;
    }
    let path = lease_file(&lease_dir(Path::new(db_file)), token);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) => return e.kind() != std::io::ErrorKind::NotFound,
    };
    match file.try_lock_shared() {
        Ok(()) => false,
        Err(TryLockError::WouldBlock) => true,
        Err(TryLockError::Error(_)) => true,
    }
}

/// Removes a dead writer's lease file (best effort: a reader may have it open).
pub(crate) fn forget(db_file: &str, token: &str) {
    if db_file.is_empty() || token.contains(['/', '\\']) {
        return;
    }
    let _ = std::fs::remove_file(lease_file(&lease_dir(Path::new(db_file)), token));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lease_is_alive_and_a_dropped_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("b.db");
        let lease = WriterLease::acquire(&DbPath::File(db.clone())).unwrap();
        let (db, token) = (db.to_str().unwrap().to_owned(), lease.token().to_owned());
        assert!(alive(&db, &token), "a reader in the writer's own process sees the lock");
        drop(lease);
        assert!(!alive(&db, &token));
        assert!(!alive(&db, "never-was"));
    }
}

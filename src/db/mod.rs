//! The one SQLite database: where it lives, how it is opened, its migrations, and the daemon lock.
//!
//! Every command and the daemon share it (WAL, busy timeout). Migrations are forward-only and
//! numbered by `PRAGMA user_version`; a database from a newer butler is refused, never rewritten.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

/// Migration `i` moves the schema from version `i` to `i + 1`. Append only; never edit a shipped one.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_core.sql"),
    include_str!("migrations/0002_updates.sql"),
    include_str!("migrations/0003_log_store.sql"),
    include_str!("migrations/0004_bad_versions.sql"),
    include_str!("migrations/0005_stream_writers.sql"),
    include_str!("migrations/0006_entry_encoding.sql"),
];

/// How long a statement waits for another writer (CLI commands and the daemon share the file).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// What can go wrong with the database. Each message names the file and says what to do; the
/// underlying error is part of the message, not a `source`, so a report prints it once.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(
        "cannot create the database folder {}: {error}; set BUTLER_HOME or pass --dbpath to put the database elsewhere",
        path.display()
    )]
    CreateDir { path: PathBuf, error: std::io::Error },
    #[error(
        "cannot open the database {path}: {error}; check that its folder is writable, or pass --dbpath"
    )]
    Open { path: String, error: rusqlite::Error },
    #[error(
        "{path} is not a SQLite database (or it is damaged); move it aside to start afresh, or pass --dbpath"
    )]
    NotADatabase { path: String },
    #[error(
        "cannot open the database {path}: the disk holding it is full; free some space and run again (what it holds is kept)"
    )]
    DiskFull { path: String },
    #[error(
        "the database {path} has schema version {found}, newer than this butler knows ({known}); upgrade butler"
    )]
    TooNew { path: String, found: i64, known: i64 },
    #[error("migrating the database {path} to version {version}: {error}")]
    Migrate { path: String, version: usize, error: rusqlite::Error },
    #[error(
        "database {path} is in use by another butler daemon (pid {pid}); stop it or use another --dbpath"
    )]
    Locked { path: String, pid: String },
    #[error(
        "cannot lock the database {path}: {error}; check that its folder is writable, or pass --dbpath"
    )]
    Lock { path: String, error: std::io::Error },
    #[error("the database folder cannot be found: set BUTLER_HOME or pass --dbpath")]
    NoHome,
    #[error(
        "there is no database at {path}: nothing has been stored there yet; check --dbpath or BUTLER_HOME"
    )]
    Missing { path: String },
    #[error("database query failed: {0}")]
    Query(String),
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

/// Where the database is: a file, or one of SQLite's in-memory forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbPath {
    File(PathBuf),
    /// `:memory:` or a `file:` URI such as `file::memory:?cache=shared`, passed to SQLite as is.
    Special(String),
}

impl DbPath {
    /// `--dbpath` if given, else `$BUTLER_HOME/butler.db`, else the platform data folder.
    pub fn resolve(flag: Option<&str>) -> Result<DbPath, DbError> {
        if let Some(p) = flag {
            return Ok(DbPath::from_arg(p));
        }
        Ok(DbPath::File(home_dir()?.join("butler.db")))
    }

    pub fn from_arg(p: &str) -> DbPath {
        if p == ":memory:" || p.starts_with("file:") {
            DbPath::Special(p.to_owned())
        } else {
            DbPath::File(PathBuf::from(p))
        }
    }

    /// For a process that opens several connections to one database: a plain `:memory:` gives
    /// each connection a private database of its own, so it becomes one named in-memory database
    /// that every connection of this process shares.
    pub(crate) fn shared_in_process(arg: &str) -> String {
        if arg == ":memory:" {
            format!("file:butler-{}?mode=memory&cache=shared", std::process::id())
        } else {
            arg.to_owned()
        }
    }

    fn display(&self) -> String {
        match self {
            DbPath::File(p) => p.display().to_string(),
            DbPath::Special(s) => s.clone(),
        }
    }
}

/// butler's own folder: `$BUTLER_HOME`, else the platform data directory.
pub fn home_dir() -> Result<PathBuf, DbError> {
    if let Some(home) = std::env::var_os("BUTLER_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    directories::ProjectDirs::from("io", "itch", "butler")
        .map(|d| d.data_dir().to_path_buf())
        .ok_or(DbError::NoHome)
}

/// Creates `dir` and any missing parents owner-only (0700): butler's folders hold logs, state
/// and credentials. Folders that exist already are left as they are.
pub(crate) fn create_private_dir_all(dir: &Path) -> std::io::Result<()> {
    butler_updater::install::create_private_dir_all(dir)
}

/// Options that create a file owner-only (0600).
/// On Windows a new file inherits its folder's ACL, and butler's folders are in the user's
/// profile, which only the user (and administrators) can read.
pub(crate) fn private_file() -> std::fs::OpenOptions {
    #[cfg_attr(not(unix), expect(unused_mut, reason = "only unix sets a mode"))]
    let mut opts = std::fs::OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts
}

/// The database file exists and only its owner can read it; SQLite gives its WAL and shared
/// memory files the same mode.
fn make_private_file(path: &Path) -> std::io::Result<()> {
    match private_file().write(true).create_new(true).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(path)?.permissions().mode();
                if mode & 0o077 != 0 {
                    let narrowed = std::fs::Permissions::from_mode(mode & 0o700);
                    std::fs::set_permissions(path, narrowed)?;
                }
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Opens (creating if needed) and migrates the database.
pub fn open(path: &DbPath) -> Result<Connection, DbError> {
    let name = path.display();
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = match path {
        DbPath::File(p) => {
            if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                create_private_dir_all(dir)
                    .map_err(|error| DbError::CreateDir { path: dir.to_owned(), error })?;
            }
            if let Err(e) = make_private_file(p) {
                tracing::warn!("could not make {} owner-only: {e}", p.display());
            }
            Connection::open_with_flags(p, flags)
        }
        DbPath::Special(s) => Connection::open_with_flags(s, flags),
    }
    .map_err(|error| DbError::Open { path: name.clone(), error })?;
    // SQLite opens lazily: a file that is not a database, or cannot be read, shows here.
    let setup = || -> Result<(), DbError> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Big pages make the log store's bulk inserts much cheaper; only a new database takes it.
        conn.pragma_update(None, "page_size", 65536)?;
        // In-memory databases answer "memory" here; that is fine.
        enable_wal(&conn)?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&conn, &name)
    };
    setup().map_err(|e| match e {
        DbError::Sqlite(e) | DbError::Migrate { error: e, .. }
            if e.sqlite_error_code() == Some(rusqlite::ErrorCode::NotADatabase) =>
        {
            DbError::NotADatabase { path: name.clone() }
        }
        DbError::Sqlite(e) | DbError::Migrate { error: e, .. } if disk_full(&e, path) => {
            DbError::DiskFull { path: name.clone() }
        }
        DbError::Sqlite(error) => DbError::Open { path: name.clone(), error },
        e => e,
    })?;
    Ok(conn)
}

/// Opens the database for a command that only reads (`butler logs ls|cat|tail`). A database that
/// exists at the current schema is opened read-only, so reading works where writing cannot (a
/// full disk, a read-only copy); one that needs migrating is opened as `open` does. A missing
/// file is an error (`Missing`), not a new empty database.
pub fn open_for_reading(path: &DbPath) -> Result<Connection, DbError> {
    let DbPath::File(p) = path else { return open(path) };
    let name = path.display();
    if !p.exists() {
        return Err(DbError::Missing { path: name });
    }
    // Narrowing a mode an older butler left writes no data, so it works on a full disk too.
    if let Err(e) = make_private_file(p) {
        tracing::debug!("could not make {} owner-only: {e}", p.display());
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(p, flags)
        .map_err(|error| DbError::Open { path: name.clone(), error })?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    match user_version(&conn) {
        Ok(v) if v as usize == MIGRATIONS.len() => Ok(conn),
        Ok(v) if v as usize > MIGRATIONS.len() => {
            Err(DbError::TooNew { path: name, found: v, known: MIGRATIONS.len() as i64 })
        }
        // Older, or unreadable read-only (say a WAL whose index must be built): `open` migrates
        // or says precisely what is wrong.
        _ => {
            drop(conn);
            open(path)
        }
    }
}

/// Whether `e` comes from a full disk. SQLite says so when a write finds no room, but growing
/// the WAL index (a memory map) on a full disk only shows as a "disk I/O error": then the free
/// space of the database's folder decides.
fn disk_full(e: &rusqlite::Error, path: &DbPath) -> bool {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => true,
        Some(rusqlite::ErrorCode::SystemIoFailure) => little_space_beside(path),
        _ => false,
    }
}

/// Whether the database file's folder has less than 1 MiB free.
#[cfg(unix)]
fn little_space_beside(path: &DbPath) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let DbPath::File(file) = path else { return false };
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return false };
    // SAFETY: statvfs is plain data, for which all zeroes is a valid value.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs only writes into the struct we own; the path is NUL-terminated.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return false;
    }
    (s.f_bavail as u64).saturating_mul(s.f_frsize as u64) < 1 << 20
}

/// Windows reports a full disk as such (`SQLITE_FULL`).
#[cfg(not(unix))]
fn little_space_beside(_: &DbPath) -> bool {
    false
}

/// Switching a new database to WAL needs an exclusive lock, and when several openers each hold a
/// shared lock and want it, SQLite answers BUSY at once instead of calling the busy handler (each
/// would wait for the other). One of them wins on a retry; the rest then find WAL already set.
/// Seen on Windows (under Wine), where openers of a new database met this every other run.
fn enable_wal(conn: &Connection) -> rusqlite::Result<()> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

/// Applies every migration the database has not seen, each in its own transaction.
fn migrate(conn: &Connection, name: &str) -> Result<(), DbError> {
    migrate_to(conn, name, MIGRATIONS.len())
}

fn migrate_to(conn: &Connection, name: &str, target: usize) -> Result<(), DbError> {
    // Fast path: an up-to-date database needs no write lock.
    if user_version(conn)? as usize >= target.min(MIGRATIONS.len()) {
        return check_not_too_new(conn, name);
    }
    // Several processes may open a new database at once (a daemon and a CLI command): take the
    // write lock first and read the version under it, so each migration runs exactly once.
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = apply_pending(conn, name, target);
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    let ended = conn.execute_batch(end);
    result?;
    Ok(ended?)
}

fn apply_pending(conn: &Connection, name: &str, target: usize) -> Result<(), DbError> {
    check_not_too_new(conn, name)?;
    let current = user_version(conn)? as usize;
    for (i, sql) in MIGRATIONS.iter().enumerate().take(target).skip(current) {
        let version = i + 1;
        let err = |error| DbError::Migrate { path: name.to_owned(), version, error };
        conn.execute_batch(sql).map_err(err)?;
        conn.pragma_update(None, "user_version", version as i64).map_err(err)?;
    }
    Ok(())
}

fn user_version(conn: &Connection) -> Result<i64, DbError> {
    Ok(conn.pragma_query_value(None, "user_version", |r| r.get(0))?)
}

fn check_not_too_new(conn: &Connection, name: &str) -> Result<(), DbError> {
    let (found, known) = (user_version(conn)?, MIGRATIONS.len() as i64);
    if found > known {
        return Err(DbError::TooNew { path: name.to_owned(), found, known });
    }
    Ok(())
}

/// A shared handle for async code: work runs on the blocking pool, one statement batch at a time.
#[derive(Debug, Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
}

impl Db {
    pub fn new(conn: Connection) -> Self {
        Db { conn: Arc::new(Mutex::new(conn)) }
    }

    /// Runs `f` with the connection on a blocking thread.
    pub async fn call<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, DbError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            // A panic in another caller poisons the lock but leaves SQLite consistent.
            let guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&guard)
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }
}

/// Held by a running daemon so a second daemon on the same database fails at once.
///
/// The lock is an OS file lock on `<db>.daemon-lock`, released by the kernel when the process dies
/// however it dies, so a crash never leaves a stale lock. CLI commands do not take it.
#[derive(Debug)]
pub struct DaemonLock {
    file: Option<std::fs::File>,
}

impl DaemonLock {
    pub fn acquire(path: &DbPath) -> Result<DaemonLock, DbError> {
        let DbPath::File(db) = path else {
            // In-memory databases belong to this process alone.
            return Ok(DaemonLock { file: None });
        };
        let lock_path = lock_path(db);
        let name = db.display().to_string();
        if let Some(dir) = lock_path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir_all(dir)
                .map_err(|error| DbError::CreateDir { path: dir.to_owned(), error })?;
        }
        let mut file = private_file()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|error| DbError::Lock { path: name.clone(), error })?;
        match try_lock(&file) {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let pid = std::fs::read_to_string(&lock_path).unwrap_or_default();
                let pid = pid.trim();
                let pid = if pid.is_empty() { "unknown" } else { pid };
                return Err(DbError::Locked { path: name, pid: pid.to_owned() });
            }
            Err(std::fs::TryLockError::Error(error)) => {
                return Err(DbError::Lock { path: name, error });
            }
        }
        use std::io::{Seek, Write};
        let _ = file.set_len(0);
        let _ = file.seek(std::io::SeekFrom::Start(0));
        let _ = write!(file, "{}", std::process::id());
        let _ = file.flush();
        Ok(DaemonLock { file: Some(file) })
    }
}

impl DaemonLock {
    /// The lock's open file, to pass on to the process a restart in place execs: the lock stays
    /// held through the `exec`, with no moment in which another daemon could take it.
    pub fn file(&self) -> Option<&std::fs::File> {
        self.file.as_ref()
    }

    /// Takes over a lock a previous process of this daemon held and passed on, after checking
    /// that `file` is the lock file of `path` (else the lock is acquired as usual).
    #[cfg(unix)]
    pub fn adopt(path: &DbPath, file: std::fs::File) -> Result<DaemonLock, DbError> {
        use std::os::unix::fs::MetadataExt;
        let DbPath::File(db) = path else { return DaemonLock::acquire(path) };
        let same = match (file.metadata(), std::fs::metadata(lock_path(db))) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        };
        if !same {
            tracing::warn!("the inherited daemon lock is not {}'s; locking anew", db.display());
            drop(file);
            return DaemonLock::acquire(path);
        }
        Ok(DaemonLock { file: Some(file) })
    }
}

/// An exclusive OS lock on `file`, without waiting.
#[cfg(not(windows))]
fn try_lock(file: &std::fs::File) -> Result<(), std::fs::TryLockError> {
    file.try_lock()
}

/// Windows locks are mandatory: std's whole-file lock would make the holder's pid unreadable to
/// the daemon it turns away. One byte far past the end is locked instead (`LockFileEx` allows
/// ranges beyond the end of a file), so the pid at its start stays readable.
#[cfg(windows)]
fn try_lock(file: &std::fs::File) -> Result<(), std::fs::TryLockError> {
    use std::os::windows::io::AsRawHandle;
    use windows_sys::Win32::Foundation::ERROR_LOCK_VIOLATION;
    use windows_sys::Win32::Storage::FileSystem::{
        LOCKFILE_EXCLUSIVE_LOCK, LOCKFILE_FAIL_IMMEDIATELY, LockFileEx,
    };
    use windows_sys::Win32::System::IO::OVERLAPPED;
    // SAFETY: plain data for which all zeroes is valid.
    let mut at: OVERLAPPED = unsafe { std::mem::zeroed() };
    at.Anonymous.Anonymous.OffsetHigh = 0x7fff_ffff;
    let flags = LOCKFILE_EXCLUSIVE_LOCK | LOCKFILE_FAIL_IMMEDIATELY;
    // SAFETY: an open file handle and an OVERLAPPED that outlives this synchronous call.
    let ok = unsafe { LockFileEx(file.as_raw_handle(), flags, 0, 1, 0, &mut at) };
    if ok != 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(ERROR_LOCK_VIOLATION as i32) {
        return Err(std::fs::TryLockError::WouldBlock);
    }
    Err(std::fs::TryLockError::Error(e))
}

fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".daemon-lock");
    db.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(conn: &Connection) -> i64 {
        conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap()
    }

    #[test]
    fn migrates_an_empty_database_to_the_latest_version() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(&DbPath::File(dir.path().join("sub/butler.db"))).unwrap();
        assert_eq!(version(&conn), MIGRATIONS.len() as i64);
        let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn migrates_from_every_earlier_version() {
        for start in 0..=MIGRATIONS.len() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("butler.db");
            {
                let conn = Connection::open(&path).unwrap();
                migrate_to(&conn, "test", start).unwrap();
                assert_eq!(version(&conn), start as i64);
            }
            let conn = open(&DbPath::File(path)).unwrap();
            assert_eq!(version(&conn), MIGRATIONS.len() as i64, "from version {start}");
        }
    }

    #[test]
    fn concurrent_openers_of_a_new_database_migrate_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = DbPath::File(dir.path().join("butler.db"));
        let openers: Vec<_> = (0..8)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || open(&path).map(|c| version(&c)))
            })
            .collect();
        for o in openers {
            assert_eq!(o.join().unwrap().unwrap(), MIGRATIONS.len() as i64);
        }
    }

    #[test]
    fn refuses_a_database_from_a_newer_butler() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("butler.db");
        Connection::open(&path).unwrap().pragma_update(None, "user_version", 999).unwrap();
        let err = open(&DbPath::File(path)).unwrap_err();
        assert!(matches!(err, DbError::TooNew { found: 999, .. }), "{err}");
    }

    #[test]
    fn in_memory_forms_open() {
        open(&DbPath::from_arg(":memory:")).unwrap();
        open(&DbPath::from_arg("file::memory:?cache=shared")).unwrap();
    }
}

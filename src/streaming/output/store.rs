//! The `store` output (the default): streams and entries in the local SQLite database, one
//! transaction per bundle; a thread of its own copies the write-ahead log into the database.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, params};

use super::{LOCAL_BUNDLE_SIZE, Output, OutputError};
use crate::db::{self, DbPath};
use crate::streaming::entry::{Bundle, Content, StreamInfo};
use crate::streaming::store;
use crate::streaming::timefmt;
use crate::streaming::writers::WriterLease;

/// WAL bytes between two checkpoints.
const CHECKPOINT_EVERY: i64 = 4 << 20;
/// WAL bytes past which the writer waits for a checkpoint, so the next commit starts the WAL
/// over: while the writer keeps committing, a checkpoint running beside it never catches the
/// WAL's end, and SQLite only rewinds a WAL whose every frame is in the database.
const WAL_LIMIT: i64 = 32 << 20;

#[derive(Debug)]
pub struct StoreOutput {
    /// Declared before `conn`: the checkpointer stops first, so the writer's connection is the
    /// last to close and takes the WAL away.
    checkpointer: Option<Checkpointer>,
    conn: Connection,
    /// Stream id in this butler → row id in `log_streams`.
    rows: HashMap<u64, i64>,
    /// Held while this output lives; its streams name it, so readers can tell when the process
    /// writing them died (see `writers`).
    lease: WriterLease,
    /// Where entries are compressed before they are stored (reused: one entry at a time).
    scratch: Vec<u8>,
}

impl StoreOutput {
    /// Opens the database and claims `project`/`prefix`, which must not hold streams yet (as the
    /// Coordinator refuses to register a prefix twice).
    pub fn open(path: &DbPath, project: &str, prefix: &str) -> Result<Self, OutputError> {
        let mut conn = db::open(path)?;
        let used: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM log_streams WHERE project = ?1 AND prefix = ?2)",
            params![project, prefix],
            |r| r.get(0),
        )?;
        if used {
            return Err(OutputError::Config(format!(
                "prefix {prefix:?} already holds streams in project {project:?} of the log store; choose another --prefix"
            )));
        }
        let lease = WriterLease::acquire(path).map_err(|e| {
            OutputError::Config(format!("cannot take a writer lease beside the log store: {e}"))
        })?;
        // Streams that a killed writer left open end here for good (readers already treat them
        // as cut short; this records it and clears the dead leases).
        match store::mark_abandoned(&conn, lease.token()) {
            Ok(0) => {}
            Ok(n) => tracing::info!("marked {n} stream(s) whose writer died as abandoned"),
            Err(e) => tracing::warn!("could not mark streams of dead writers: {e}"),
        }
        let checkpointer = Checkpointer::start(path, &mut conn, CHECKPOINT_EVERY, WAL_LIMIT)?;
        Ok(StoreOutput { checkpointer, conn, rows: HashMap::new(), lease, scratch: Vec::new() })
    }
}

/// Copies the WAL into the database on its own thread and connection, so the writer only ever
/// appends to the WAL. Profiled on 256 MiB of text, SQLite's own checkpoint (run inside the
/// writer's commits) was a third of the writer's time: reading the WAL back, writing the
/// database and two fsyncs every few MiB. Durability is the same: the same checkpoint, with the
/// same syncs, on another connection.
#[derive(Debug)]
struct Checkpointer {
    wake: SyncSender<()>,
    /// Set, then woken, to stop the thread (the WAL hook keeps a `wake` of its own).
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Also the writer's, for the checkpoint it waits for at `limit`.
    conn: Arc<Mutex<Connection>>,
    /// Frames in the WAL after the writer's last commit (SQLite's WAL hook tells).
    frames: Arc<AtomicI64>,
    /// `WAL_LIMIT` in frames.
    limit: i64,
}

impl Checkpointer {
    /// Starts checkpointing every `every` bytes of WAL that `writer` commits. `None` when the
    /// database has no WAL (in memory), or no thread could be had: then SQLite checkpoints
    /// inside the writer's commits, as it does by default.
    fn start(
        path: &DbPath,
        writer: &mut Connection,
        every: i64,
        limit: i64,
    ) -> Result<Option<Self>, OutputError> {
        let page_size: i64 = writer.pragma_query_value(None, "page_size", |r| r.get(0))?;
        let pages = |bytes: i64| (bytes / page_size.max(512)).max(1);
        let mode: String = writer.pragma_query_value(None, "journal_mode", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Ok(None);
        }
        let conn = Arc::new(Mutex::new(db::open(path)?));
        let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
        let stop = Arc::new(AtomicBool::new(false));
        let (worker, stopped) = (Arc::clone(&conn), Arc::clone(&stop));
        let spawned =
            std::thread::Builder::new().name("store-checkpoint".into()).spawn(move || {
                while woken.recv().is_ok() && !stopped.load(Ordering::Acquire) {
                    checkpoint(&worker);
                }
            });
        let thread = match spawned {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("no thread for store checkpoints ({e}); the writer checkpoints");
                writer.pragma_update(None, "wal_autocheckpoint", pages(every))?;
                return Ok(None);
            }
        };
        let frames = Arc::new(AtomicI64::new(0));
        let (seen, hook_wake, every) = (Arc::clone(&frames), wake.clone(), pages(every));
        // Replaces SQLite's autocheckpoint, which lives in the same hook.
        let mut woken_at = 0i64;
        writer.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, n: std::ffi::c_int| {
            let n = i64::from(n);
            if n < woken_at {
                // The WAL started over.
                woken_at = 0;
            }
            if n - woken_at >= every {
                woken_at = n;
                // Full: a wake-up is already pending, and it will see these frames too.
                if let Err(TrySendError::Disconnected(())) = hook_wake.try_send(()) {
                    tracing::debug!("store checkpointer gone");
                }
            }
            seen.store(n, Ordering::Relaxed);
            Ok(())
        }))?;
        Ok(Some(Checkpointer {
            wake,
            stop,
            thread: Some(thread),
            conn,
            frames,
            limit: pages(limit),
        }))
    }

    /// After a commit: at the limit, checkpoint now, while the writer waits, so every frame is
    /// in the database and the next commit rewinds the WAL (unless a reader still needs it).
    fn after_commit(&self) {
        if self.frames.load(Ordering::Relaxed) >= self.limit {
            checkpoint(&self.conn);
        }
    }
}

/// One passive checkpoint: as much as readers allow, never waiting for them.
fn checkpoint(conn: &Mutex<Connection>) {
    let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
    match conn.wal_checkpoint_v2(None::<&str>, rusqlite::wal::CheckpointMode::PASSIVE) {
        Ok(_) => {}
        // Another process is checkpointing this database: it does the work.
        Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) => {}
        // As SQLite's own checkpoints: what is committed stays in the WAL, to be copied later.
        Err(e) => tracing::warn!("checkpointing the log store: {e}"),
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Blocks at most until the thread takes a pending wake-up, or returns once it is gone.
        let _ = self.wake.send(());
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::warn!("the store checkpointer panicked");
        }
    }
}

/// The stream's row id, inserting the row the first time this butler sees the stream.
fn register(
    conn: &Connection,
    rows: &mut HashMap<u64, i64>,
    writer: &str,
    s: &StreamInfo,
) -> Result<i64, OutputError> {
    if let Some(r) = rows.get(&s.id) {
        return Ok(*r);
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    conn.prepare_cached(
        "INSERT INTO log_streams (project, prefix, name, stream_type, content_type, tags, timestamp, created_at, writer)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        s.project,
        s.prefix,
        s.name,
        s.stream_type.as_str(),
        s.content_type,
        serde_json::to_string(&s.tags).unwrap_or_else(|_| "{}".into()),
        timefmt::format_rfc3339(s.timestamp),
        now,
        writer,
    ])?;
    let r = conn.last_insert_rowid();
    rows.insert(s.id, r);
    Ok(r)
}

impl Output for StoreOutput {
    fn name(&self) -> &'static str {
        "store"
    }

    fn max_size(&self) -> usize {
        LOCAL_BUNDLE_SIZE
    }

    /// The stream's row goes in at once (its own small transaction), so `butler logs`, the
    /// daemon's `Streams.*` and the viewer know an open stream before it has data.
    fn open_stream(&mut self, stream: &StreamInfo) -> Result<(), OutputError> {
        register(&self.conn, &mut self.rows, self.lease.token(), stream)?;
        Ok(())
    }

    fn send(&mut self, bundle: Bundle) -> Result<(), OutputError> {
        // Rows registered inside a transaction that then fails were never written, and SQLite
        // would hand their ids to the next new stream: forget them, or one stream's later
        // entries would be filed under another.
        let mut fresh = Vec::new();
        let sent = self.send_in_transaction(&bundle, &mut fresh);
        if let Some(c) = &self.checkpointer {
            c.after_commit();
        }
        if sent.is_err() {
            for id in fresh {
                self.rows.remove(&id);
            }
        } else {
            // A stream's terminal entry is its last: a long `serve` would otherwise remember
            // every stream it ever had.
            for e in bundle.entries.iter().filter(|e| e.terminal) {
                self.rows.remove(&e.stream.id);
            }
        }
        sent
    }
}

impl StoreOutput {
    fn send_in_transaction(
        &mut self,
        bundle: &Bundle,
        fresh: &mut Vec<u64>,
    ) -> Result<(), OutputError> {
        let tx = self.conn.transaction()?;
        {
            let mut add = tx.prepare_cached(
                "INSERT INTO log_entries (stream_id, stream_index, prefix_index, sequence, time_offset_ns, lines,
                                          partial_index, partial_size, partial_last, data, encoding)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?;
            let mut count = tx.prepare_cached(
                "UPDATE log_streams SET entries = entries + ?2, bytes = bytes + ?3,
                        terminal = terminal OR ?4, terminal_index = coalesce(?5, terminal_index)
                 WHERE id = ?1",
            )?;
            for e in &bundle.entries {
                if !self.rows.contains_key(&e.stream.id) {
                    fresh.push(e.stream.id);
                }
                let row = register(&tx, &mut self.rows, self.lease.token(), &e.stream)?;
                let mut bytes = 0i64;
                for l in &e.logs {
                    let (lines, partial) = match &l.content {
                        Content::Text { .. } => (l.content.line_count() as i64, None),
                        Content::Datagram { partial, .. } => (0, *partial),
                        Content::Binary(_) => (0, None),
                    };
                    let data = l.content.data();
                    bytes += data.len() as i64;
                    let (stored, encoding) = store::encode_entry(data, &mut self.scratch);
                    add.execute(params![
                        row,
                        l.stream_index as i64,
                        l.prefix_index as i64,
                        l.sequence as i64,
                        l.time_offset.as_nanos() as i64,
                        lines,
                        partial.map(|p| i64::from(p.index)),
                        partial.map(|p| p.size as i64),
                        partial.map(|p| p.last),
                        stored,
                        encoding,
                    ])?;
                }
                count.execute(params![
                    row,
                    e.logs.len() as i64,
                    bytes,
                    e.terminal,
                    e.terminal_index.map(|i| i as i64),
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::streaming::entry::{BundleEntry, LogEntry, StreamType};

    fn stream(id: u64, name: &str) -> Arc<StreamInfo> {
        Arc::new(StreamInfo {
            id,
            project: "local".into(),
            prefix: "p".into(),
            name: name.into(),
            stream_type: StreamType::Binary,
            content_type: "application/octet-stream".into(),
            timestamp: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            tags: Default::default(),
        })
    }

    fn bundle(s: &Arc<StreamInfo>, data: &'static [u8]) -> Bundle {
        nth_bundle(s, 0, bytes::Bytes::from_static(data))
    }

    /// A bundle holding the stream's entry `index`.
    fn nth_bundle(s: &Arc<StreamInfo>, index: u64, data: bytes::Bytes) -> Bundle {
        let log = LogEntry {
            prefix_index: index,
            stream_index: index,
            sequence: 0,
            time_offset: Duration::ZERO,
            content: Content::Binary(data),
        };
        let entry = BundleEntry {
            stream: Arc::clone(s),
            logs: vec![log],
            terminal: false,
            terminal_index: None,
        };
        Bundle { timestamp: SystemTime::now(), entries: vec![entry] }
    }

    /// A failed transaction must not leave a stream's row id cached: SQLite hands the same id to
    /// the next new stream, which would then receive the first stream's entries (S6).
    #[test]
    fn after_a_failed_transaction_no_stream_is_filed_under_another() {
        let dir = tempfile::tempdir().unwrap();
        let path = DbPath::File(dir.path().join("b.db"));
        let mut out = StoreOutput::open(&path, "local", "p").unwrap();
        // As a full disk would: the first bundle's insert fails.
        out.conn
            .execute_batch(
                "CREATE TEMP TRIGGER full BEFORE INSERT ON log_entries WHEN NEW.data = X'626f6f6d'
                 BEGIN SELECT RAISE(ABORT, 'disk full'); END;",
            )
            .unwrap();
        let (a, b) = (stream(1, "a"), stream(2, "b"));
        assert!(out.send(bundle(&a, b"boom")).is_err());
        out.open_stream(&b).unwrap();
        out.send(bundle(&a, b"a's data")).unwrap();
        let rows: Vec<(String, Vec<u8>)> = out
            .conn
            .prepare(
                "SELECT s.name, e.data FROM log_entries e JOIN log_streams s ON s.id = e.stream_id",
            )
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows, [("a".to_owned(), b"a's data".to_vec())]);
    }

    fn file_len(p: &std::path::Path) -> u64 {
        std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
    }

    /// `count` distinct 256 KiB blocks of noise, each sent in a bundle of its own; returns what was sent.
    fn ingest(
        out: &mut StoreOutput,
        s: &Arc<StreamInfo>,
        count: u64,
        mut after_each: impl FnMut(&StoreOutput),
    ) -> Vec<u8> {
        let mut sent = Vec::new();
        for i in 0..count {
            // Noise: stored as it is, so the WAL and database grow by what is sent.
            let block = store::noise(256 * 1024, i);
            sent.extend_from_slice(&block);
            out.send(nth_bundle(s, i, block.into())).unwrap();
            after_each(out);
        }
        sent
    }

    fn stored_bytes(path: &DbPath) -> Vec<u8> {
        let conn = db::open(path).unwrap();
        let s = store::find_stream(&conn, "local", "p/+/a").unwrap().unwrap();
        let mut got = Vec::new();
        store::write_stream(&conn, &s, 0, &mut got).unwrap();
        got
    }

    /// A writer that never pauses still gets its WAL rewound: at the limit it waits for a
    /// checkpoint, so the WAL file stays near the limit instead of growing with the stream (a
    /// checkpoint beside a busy writer never reaches the WAL's end). A reader between commits
    /// sees every byte committed so far, and everything is in the database after.
    #[test]
    fn the_wal_stays_bounded_while_the_writer_never_pauses() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("b.db");
        let path = DbPath::File(file.clone());
        let mut out = StoreOutput::open(&path, "local", "p").unwrap();
        let limit = 2 << 20;
        out.checkpointer.take();
        out.checkpointer = Checkpointer::start(&path, &mut out.conn, 256 << 10, limit).unwrap();
        assert!(out.checkpointer.is_some(), "a file database has a WAL");
        let wal = dir.path().join("b.db-wal");
        let a = stream(1, "a");
        let mut committed = 0;
        let sent = ingest(&mut out, &a, 48, |_| {
            committed += 256 * 1024;
            // One bundle and the frame headers past the limit, at most.
            assert!(file_len(&wal) <= limit as u64 + 2 * (256 << 10), "{}", file_len(&wal));
            assert_eq!(stored_bytes(&path).len(), committed);
        });
        drop(out);
        assert_eq!(stored_bytes(&path), sent);
        assert_eq!(file_len(&wal), 0, "the last connection checkpoints and removes the WAL");
    }

    /// Text is stored compressed, and reads back byte for byte.
    #[test]
    fn text_entries_are_stored_compressed() {
        let dir = tempfile::tempdir().unwrap();
        let path = DbPath::File(dir.path().join("b.db"));
        let mut out = StoreOutput::open(&path, "local", "p").unwrap();
        let a = stream(1, "a");
        let text: Vec<u8> = (0..20_000)
            .flat_map(|i| format!("{i:08} GET /games/{} 200\n", i % 331).into_bytes())
            .collect();
        out.send(nth_bundle(&a, 0, text.clone().into())).unwrap();
        drop(out);
        let conn = db::open(&path).unwrap();
        let (encoding, stored): (i64, i64) = conn
            .query_row("SELECT encoding, length(data) FROM log_entries", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(encoding, 1);
        assert!(stored < text.len() as i64 / 2, "{stored} bytes stored for {}", text.len());
        assert_eq!(stored_bytes(&path), text);
    }

    /// The checkpointer thread copies committed frames into the database without the writer.
    #[test]
    fn the_checkpointer_copies_the_wal_into_the_database_on_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("b.db");
        let path = DbPath::File(file.clone());
        let mut out = StoreOutput::open(&path, "local", "p").unwrap();
        out.checkpointer.take();
        // Never waits: only the thread checkpoints.
        out.checkpointer = Checkpointer::start(&path, &mut out.conn, 256 << 10, 1 << 40).unwrap();
        let a = stream(1, "a");
        let sent = ingest(&mut out, &a, 16, |_| {});
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while file_len(&file) < sent.len() as u64 {
            assert!(std::time::Instant::now() < deadline, "database file {}", file_len(&file));
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(out);
        assert_eq!(stored_bytes(&path), sent);
    }
}

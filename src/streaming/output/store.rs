//! The `store` output (the default): streams and entries in the local SQLite database, one
//! transaction per bundle.

use std::collections::HashMap;
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

#[derive(Debug)]
pub struct StoreOutput {
    conn: Connection,
    /// Stream id in this butler → row id in `log_streams`.
    rows: HashMap<u64, i64>,
    /// Held while this output lives; its streams name it, so readers can tell when the process
    /// writing them died (see `writers`).
    lease: WriterLease,
}

impl StoreOutput {
    /// Opens the database and claims `project`/`prefix`, which must not hold streams yet (as the
    /// Coordinator refuses to register a prefix twice).
    pub fn open(path: &DbPath, project: &str, prefix: &str) -> Result<Self, OutputError> {
        let conn = db::open(path)?;
        // Checkpoint every few MiB of WAL whatever the page size (SQLite counts pages). Letting
        // the WAL grow as big as the ingest was measured slower, not faster: the checkpoint at
        // close then copies it all at once, and unlinking the big file alone took ~160 ms.
        let page_size: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
        conn.pragma_update(
            None,
            "wal_autocheckpoint",
            (CHECKPOINT_EVERY / page_size.max(512)).max(1),
        )?;
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
        Ok(StoreOutput { conn, rows: HashMap::new(), lease })
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
                                          partial_index, partial_size, partial_last, data)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
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
                        &data[..],
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
        let log = LogEntry {
            prefix_index: 0,
            stream_index: 0,
            sequence: 0,
            time_offset: Duration::ZERO,
            content: Content::Binary(bytes::Bytes::from_static(data)),
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
}

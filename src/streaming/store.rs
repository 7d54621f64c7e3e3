//! Reading the local log store: what `butler logs` and the daemon's `Streams.*` use.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::entry::{Partial, StreamType};
use super::handshake::put_uvarint;
use super::{names, writers};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("log store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("writing stream data: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0:?} is not a stream path (<prefix>/+/<name>)")]
    BadPath(String),
}

/// How an entry's data is stored (`log_entries.encoding`).
const RAW: i64 = 0;
const LZ4: i64 = 1;
/// Entries smaller than this are stored as they are: too little to gain.
const COMPRESS_FROM: usize = 512;
/// The largest entry a stored size may claim (datagrams reach 10 MiB): a damaged row cannot
/// make a reader allocate more.
const MAX_DECODED: usize = 64 << 20;

/// A stored entry's data that cannot be read back.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EntryDataError {
    #[error("unknown data encoding {0} (written by a newer butler?)")]
    UnknownEncoding(i64),
    #[error("compressed data is damaged: {0}")]
    Damaged(String),
}

/// The form an entry's `data` is stored in, and its `encoding`: compressed into `scratch` when
/// that saves at least an eighth, else as it is.
pub(crate) fn encode_entry<'a>(data: &'a [u8], scratch: &'a mut Vec<u8>) -> (&'a [u8], i64) {
    if data.len() < COMPRESS_FROM || data.len() > MAX_DECODED {
        return (data, RAW);
    }
    scratch.clear();
    scratch.extend_from_slice(&(data.len() as u32).to_le_bytes());
    scratch.resize(4 + lz4_flex::block::get_maximum_output_size(data.len()), 0);
    match lz4_flex::block::compress_into(data, &mut scratch[4..]) {
        Ok(n) if 4 + n <= data.len() - data.len() / 8 => (&scratch[..4 + n], LZ4),
        _ => (data, RAW),
    }
}

/// An entry's data as it was sent, from its stored form.
pub(crate) fn decode_entry(encoding: i64, stored: Vec<u8>) -> Result<Vec<u8>, EntryDataError> {
    match encoding {
        RAW => Ok(stored),
        LZ4 => {
            let damaged = |why: String| EntryDataError::Damaged(why);
            let (size, block) = stored
                .split_first_chunk::<4>()
                .ok_or_else(|| damaged("shorter than its size".into()))?;
            let size = u32::from_le_bytes(*size) as usize;
            if size > MAX_DECODED {
                return Err(damaged(format!("claims {size} bytes")));
            }
            let mut data = vec![0; size];
            match lz4_flex::block::decompress_into(block, &mut data) {
                Ok(n) if n == size => Ok(data),
                Ok(n) => Err(damaged(format!("{n} bytes where {size} were stored"))),
                Err(e) => Err(damaged(e.to_string())),
            }
        }
        other => Err(EntryDataError::UnknownEncoding(other)),
    }
}

/// Store reads run on the daemon's database connection, whose closures fail with a `DbError`.
impl From<StoreError> for crate::db::DbError {
    fn from(e: StoreError) -> Self {
        crate::db::DbError::Query(e.to_string())
    }
}

/// A stream as the store knows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "Stream")]
pub(crate) struct StoredStream {
    #[serde(skip)]
    pub id: i64,
    #[schemars(example = &"butler")]
    pub project: String,
    #[schemars(example = &"game")]
    pub prefix: String,
    #[schemars(example = &"stdout")]
    pub name: String,
    #[schemars(example = &"game/+/stdout")]
    pub path: String,
    /// `text`, `binary` or `datagram`.
    #[serde(rename = "type")]
    #[schemars(example = &"text")]
    pub stream_type: String,
    #[schemars(example = &"text/plain")]
    pub content_type: String,
    pub tags: BTreeMap<String, String>,
    #[schemars(example = &"2026-12-01T03:00:00Z")]
    pub timestamp: String,
    pub entries: u64,
    pub bytes: u64,
    pub terminal: bool,
    pub terminal_index: Option<u64>,
    /// Cut short: its writer died before the terminal entry, so it will never end. Readers stop
    /// following it once they have every entry it has.
    pub abandoned: bool,
    /// The writer's lease token (see `writers`); `None` for streams from before leases.
    #[serde(skip)]
    pub writer: Option<String>,
}

impl StoredStream {
    pub(crate) fn kind(&self) -> Option<StreamType> {
        StreamType::parse(&self.stream_type)
    }
}

/// One stored log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredEntry {
    pub stream_index: u64,
    pub prefix_index: u64,
    pub sequence: u64,
    pub time_offset: Duration,
    /// Text: number of lines (the last may be partial).
    pub lines: u64,
    pub partial: Option<Partial>,
    /// Text: lines with their delimiters; binary: the block; datagram: the datagram (fragment).
    pub data: Vec<u8>,
}

const STREAM_COLUMNS: &str = "id, project, prefix, name, stream_type, content_type, tags, timestamp, entries, bytes, terminal, terminal_index, abandoned, writer";

fn stream_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredStream> {
    let prefix: String = r.get(2)?;
    let name: String = r.get(3)?;
    let tags: String = r.get(6)?;
    Ok(StoredStream {
        id: r.get(0)?,
        project: r.get(1)?,
        path: names::stream_path(&prefix, &name),
        prefix,
        name,
        stream_type: r.get(4)?,
        content_type: r.get(5)?,
        tags: serde_json::from_str(&tags).unwrap_or_default(),
        timestamp: r.get(7)?,
        entries: r.get::<_, i64>(8)? as u64,
        bytes: r.get::<_, i64>(9)? as u64,
        terminal: r.get(10)?,
        terminal_index: r.get::<_, Option<i64>>(11)?.map(|i| i as u64),
        abandoned: r.get(12)?,
        writer: r.get(13)?,
    })
}

/// Works out `abandoned` for a stream whose writer died but no later writer has marked yet
/// (readers never write). A writer that ended the stream and then exited cleanly looks dead
/// too, so the row is read again after the liveness check: what it says then is final.
fn settle(conn: &Connection, s: StoredStream) -> Result<StoredStream, StoreError> {
    if s.terminal || s.abandoned {
        return Ok(s);
    }
    let Some(token) = s.writer.as_deref() else { return Ok(s) };
    if writers::alive(conn.path().unwrap_or(""), token) {
        return Ok(s);
    }
    let again = conn.query_row(
        &format!("SELECT {STREAM_COLUMNS} FROM log_streams WHERE id = ?1"),
        params![s.id],
        stream_row,
    )?;
    Ok(StoredStream { abandoned: !again.terminal, ..again })
}

/// Marks the streams of writers that died as abandoned, and removes their lease files; run by
/// each writer as it starts (`me` is its own token). Streams from before leases that never ended
/// are marked too: no butler that still writes them can be running against this schema.
pub(crate) fn mark_abandoned(conn: &Connection, me: &str) -> Result<usize, StoreError> {
    let db_file = conn.path().unwrap_or("").to_owned();
    let owners: Vec<Option<String>> = conn
        .prepare(
            "SELECT DISTINCT writer FROM log_streams
             WHERE terminal = 0 AND abandoned = 0 AND (writer IS NULL OR writer != ?1)",
        )?
        .query_map(params![me], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut marked = 0;
    for owner in owners {
        match owner {
            Some(token) if writers::alive(&db_file, &token) => {}
            Some(token) => {
                marked += conn.execute(
                    "UPDATE log_streams SET abandoned = 1 WHERE writer = ?1 AND terminal = 0",
                    params![token],
                )?;
                writers::forget(&db_file, &token);
            }
            None if db_file.is_empty() => {}
            None => {
                marked += conn.execute(
                    "UPDATE log_streams SET abandoned = 1 WHERE writer IS NULL AND terminal = 0",
                    [],
                )?;
            }
        }
    }
    Ok(marked)
}

/// Streams of `project` whose path starts with `prefix` (all when `None`), oldest first. The
/// filter runs in SQLite: a store holds any number of streams, and only the matches are built.
pub(crate) fn list_streams(
    conn: &Connection,
    project: &str,
    prefix: Option<&str>,
) -> Result<Vec<StoredStream>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {STREAM_COLUMNS} FROM log_streams
         WHERE project = ?1 AND substr(prefix || '/+/' || name, 1, length(?2)) = ?2 ORDER BY id"
    ))?;
    let rows: Vec<StoredStream> = stmt
        .query_map(params![project, prefix.unwrap_or_default()], stream_row)?
        .collect::<Result<_, _>>()?;
    drop(stmt);
    rows.into_iter().map(|s| settle(conn, s)).collect()
}

/// The streams under exactly `prefix` (one run's), oldest first, through the store's
/// `(project, prefix, name)` index.
pub(crate) fn streams_of_prefix(
    conn: &Connection,
    project: &str,
    prefix: &str,
) -> Result<Vec<StoredStream>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {STREAM_COLUMNS} FROM log_streams WHERE project = ?1 AND prefix = ?2 ORDER BY id"
    ))?;
    let rows: Vec<StoredStream> =
        stmt.query_map(params![project, prefix], stream_row)?.collect::<Result<_, _>>()?;
    drop(stmt);
    rows.into_iter().map(|s| settle(conn, s)).collect()
}

/// One page of [`list_page`]: the streams, and the id to continue after when more may follow.
#[derive(Debug)]
pub(crate) struct StreamPage {
    pub streams: Vec<StoredStream>,
    pub next_after: Option<i64>,
}

/// Up to `limit` streams of `project` whose path starts with `prefix`, oldest first, after the
/// stream with id `after`. The page also ends once what it holds passes about `max_bytes` (it
/// always holds one stream), so a reply stays bounded whatever the streams' tags.
pub(crate) fn list_page(
    conn: &Connection,
    project: &str,
    prefix: &str,
    after: i64,
    limit: usize,
    max_bytes: usize,
) -> Result<StreamPage, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {STREAM_COLUMNS} FROM log_streams
         WHERE project = ?1 AND id > ?2 AND substr(prefix || '/+/' || name, 1, length(?3)) = ?3
         ORDER BY id LIMIT ?4"
    ))?;
    // One more than asked tells whether another page follows.
    let fetch = limit.saturating_add(1).min(i64::MAX as usize) as i64;
    let mut rows = stmt.query_map(params![project, after, prefix, fetch], stream_row)?;
    let (mut streams, mut bytes) = (Vec::new(), 0usize);
    let mut next_after = None;
    while let Some(s) = rows.next().transpose()? {
        if streams.len() == limit || (bytes >= max_bytes && !streams.is_empty()) {
            next_after = streams.last().map(|l: &StoredStream| l.id);
            break;
        }
        bytes += s.approximate_size();
        streams.push(s);
    }
    drop(rows);
    drop(stmt);
    let streams = streams.into_iter().map(|s| settle(conn, s)).collect::<Result<_, _>>()?;
    Ok(StreamPage { streams, next_after })
}

impl StoredStream {
    /// About what the stream takes as JSON.
    fn approximate_size(&self) -> usize {
        let tags: usize = self.tags.iter().map(|(k, v)| k.len() + v.len() + 8).sum();
        256 + 2 * (self.path.len() + self.prefix.len())
            + self.project.len()
            + self.content_type.len()
            + tags
    }
}

/// The newest `limit` streams of `project` whose path starts with `prefix`, newest first.
pub(crate) fn list_recent(
    conn: &Connection,
    project: &str,
    prefix: &str,
    limit: usize,
) -> Result<Vec<StoredStream>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {STREAM_COLUMNS} FROM log_streams
         WHERE project = ?1 AND substr(prefix || '/+/' || name, 1, length(?2)) = ?2
         ORDER BY id DESC LIMIT ?3"
    ))?;
    let rows: Vec<StoredStream> = stmt
        .query_map(params![project, prefix, limit.min(i64::MAX as usize) as i64], stream_row)?
        .collect::<Result<_, _>>()?;
    rows.into_iter().map(|s| settle(conn, s)).collect()
}

/// A number that changes whenever another connection commits to the database (SQLite's
/// `data_version`): cheap to poll, so readers in other processes notice new data.
pub(crate) fn data_version(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.pragma_query_value(None, "data_version", |r| r.get(0))?)
}

/// The stream at `<prefix>/+/<name>` in `project`.
pub(crate) fn find_stream(
    conn: &Connection,
    project: &str,
    path: &str,
) -> Result<Option<StoredStream>, StoreError> {
    let (prefix, name) =
        names::split_path(path).ok_or_else(|| StoreError::BadPath(path.to_owned()))?;
    conn.query_row(
        &format!("SELECT {STREAM_COLUMNS} FROM log_streams WHERE project = ?1 AND prefix = ?2 AND name = ?3"),
        params![project, prefix, name],
        stream_row,
    )
    .optional()?
    .map(|s| settle(conn, s))
    .transpose()
}

/// Re-reads a stream's row (for followers).
pub(crate) fn refresh(conn: &Connection, id: i64) -> Result<Option<StoredStream>, StoreError> {
    conn.query_row(
        &format!("SELECT {STREAM_COLUMNS} FROM log_streams WHERE id = ?1"),
        params![id],
        stream_row,
    )
    .optional()?
    .map(|s| settle(conn, s))
    .transpose()
}

/// Up to `limit` entries from `from_index` on, in order.
pub(crate) fn read_entries(
    conn: &Connection,
    stream_id: i64,
    from_index: u64,
    limit: usize,
) -> Result<Vec<StoredEntry>, StoreError> {
    read_entries_bounded(conn, stream_id, from_index, limit, usize::MAX)
}

/// As [`read_entries`], but stops once the entries' data passes `max_bytes` (always returning at
/// least one entry), so a reply stays bounded however big each entry is.
pub(crate) fn read_entries_bounded(
    conn: &Connection,
    stream_id: i64,
    from_index: u64,
    limit: usize,
    max_bytes: usize,
) -> Result<Vec<StoredEntry>, StoreError> {
    query_entries(
        conn,
        "SELECT stream_index, prefix_index, sequence, time_offset_ns, lines, partial_index, partial_size, partial_last, data, encoding
         FROM log_entries WHERE stream_id = ?1 AND stream_index >= ?2 ORDER BY stream_index LIMIT ?3",
        stream_id,
        from_index,
        limit,
        max_bytes,
    )
}

/// Up to `limit` entries just before `before_index`, in order (paging back from the end).
pub(crate) fn read_entries_before(
    conn: &Connection,
    stream_id: i64,
    before_index: u64,
    limit: usize,
) -> Result<Vec<StoredEntry>, StoreError> {
    let mut entries = query_entries(
        conn,
        "SELECT stream_index, prefix_index, sequence, time_offset_ns, lines, partial_index, partial_size, partial_last, data, encoding
         FROM log_entries WHERE stream_id = ?1 AND stream_index < ?2 ORDER BY stream_index DESC LIMIT ?3",
        stream_id,
        before_index,
        limit,
        usize::MAX,
    )?;
    entries.reverse();
    Ok(entries)
}

fn query_entries(
    conn: &Connection,
    sql: &str,
    stream_id: i64,
    index: u64,
    limit: usize,
    max_bytes: usize,
) -> Result<Vec<StoredEntry>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(
        params![stream_id, index.min(i64::MAX as u64) as i64, limit.min(i64::MAX as usize) as i64],
        |r| {
            let pi: Option<i64> = r.get(5)?;
            let partial = match pi {
                Some(index) => Some(Partial {
                    index: index as u32,
                    size: r.get::<_, i64>(6)? as u64,
                    last: r.get::<_, bool>(7)?,
                }),
                None => None,
            };
            Ok(StoredEntry {
                stream_index: r.get::<_, i64>(0)? as u64,
                prefix_index: r.get::<_, i64>(1)? as u64,
                sequence: r.get::<_, i64>(2)? as u64,
                time_offset: Duration::from_nanos(r.get::<_, i64>(3)?.max(0) as u64),
                lines: r.get::<_, i64>(4)? as u64,
                partial,
                data: decode_entry(r.get(9)?, r.get(8)?).map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(
                        8,
                        rusqlite::types::Type::Blob,
                        e.into(),
                    )
                })?,
            })
        },
    )?;
    let (mut out, mut bytes) = (Vec::new(), 0usize);
    for row in rows {
        let e = row?;
        bytes = bytes.saturating_add(e.data.len());
        out.push(e);
        if bytes >= max_bytes {
            break;
        }
    }
    Ok(out)
}

/// Writes a stream's bytes from `from_index` on, exactly as its client sent them: text and binary
/// as is, datagrams as the length-prefixed frames they came in. Returns the next index to read.
pub(crate) fn write_stream(
    conn: &Connection,
    stream: &StoredStream,
    from_index: u64,
    w: &mut dyn Write,
) -> Result<u64, StoreError> {
    let datagram = stream.kind() == Some(StreamType::Datagram);
    let mut next = from_index;
    loop {
        let batch = read_entries(conn, stream.id, next, 256)?;
        let Some(last) = batch.last() else { break };
        next = last.stream_index + 1;
        for e in &batch {
            if datagram {
                match e.partial {
                    None => {
                        let mut h = Vec::with_capacity(10);
                        put_uvarint(&mut h, e.data.len() as u64);
                        w.write_all(&h)?;
                    }
                    Some(p) if p.index == 0 => {
                        let mut h = Vec::with_capacity(10);
                        put_uvarint(&mut h, p.size);
                        w.write_all(&h)?;
                    }
                    Some(_) => {}
                }
            }
            w.write_all(&e.data)?;
        }
    }
    Ok(next)
}

/// Writes the last `n` lines of a text stream (the last `n` entries of another type), and returns
/// the index to follow from.
pub(crate) fn write_tail(
    conn: &Connection,
    stream: &StoredStream,
    n: usize,
    w: &mut dyn Write,
) -> Result<u64, StoreError> {
    let end: u64 = conn
        .query_row(
            "SELECT coalesce(max(stream_index) + 1, 0) FROM log_entries WHERE stream_id = ?1",
            params![stream.id],
            |r| r.get::<_, i64>(0),
        )
        .map(|v| v as u64)?;
    if stream.kind() != Some(StreamType::Text) {
        return write_stream(conn, stream, end.saturating_sub(n as u64), w);
    }
    // Walk back until the entries hold more than `n` line ends.
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let mut newlines = 0usize;
    let mut idx = end;
    while idx > 0 && newlines <= n {
        let from = idx.saturating_sub(64);
        let batch = read_entries(conn, stream.id, from, (idx - from) as usize)?;
        for e in batch.into_iter().rev() {
            newlines += super::cutter::count_newlines(&e.data) as usize;
            chunks.push(e.data);
            if newlines > n {
                break;
            }
        }
        idx = from;
    }
    let buf: Vec<u8> = chunks.into_iter().rev().flatten().collect();
    // The start of the n-th line from the end (a final unterminated line counts as one).
    let mut want = n + usize::from(buf.last() == Some(&b'\n'));
    let mut start = 0;
    for pos in memchr::memrchr_iter(b'\n', &buf) {
        if want == 0 {
            break;
        }
        want -= 1;
        if want == 0 {
            start = pos + 1;
        }
    }
    if n == 0 {
        start = buf.len();
    }
    w.write_all(&buf[start..])?;
    Ok(end)
}

/// `len` bytes that do not compress (xorshift from `seed`), for tests of what is stored.
#[cfg(test)]
pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_text(lines: usize) -> Vec<u8> {
        (0..lines)
            .flat_map(|i| format!("{i:06} request served in {} ms\n", i % 97).into_bytes())
            .collect()
    }

    #[test]
    fn text_is_stored_compressed_and_reads_back_exactly() {
        let data = log_text(2000);
        let mut scratch = Vec::new();
        let (stored, encoding) = encode_entry(&data, &mut scratch);
        assert_eq!(encoding, LZ4);
        assert!(stored.len() < data.len() / 2, "{} of {} bytes", stored.len(), data.len());
        assert_eq!(decode_entry(encoding, stored.to_vec()).unwrap(), data);
    }

    #[test]
    fn small_or_incompressible_data_is_stored_as_it_is() {
        let mut scratch = Vec::new();
        let small = b"one short line\n".repeat(10);
        assert_eq!(encode_entry(&small, &mut scratch), (&small[..], RAW));
        let noise = noise(4096, 0);
        assert_eq!(encode_entry(&noise, &mut scratch), (&noise[..], RAW));
        assert_eq!(decode_entry(RAW, noise.clone()).unwrap(), noise);
    }

    #[test]
    fn damaged_or_unknown_data_is_an_error_not_a_panic_or_a_huge_allocation() {
        let data = log_text(500);
        let mut scratch = Vec::new();
        let stored = encode_entry(&data, &mut scratch).0.to_vec();
        let mut huge = stored.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut short = stored.clone();
        short[..4].copy_from_slice(&(data.len() as u32 + 1).to_le_bytes());
        for (bad, why) in [
            (stored[..stored.len() / 2].to_vec(), "damaged"),
            (stored[..3].to_vec(), "shorter than its size"),
            (huge, "claims 4294967295 bytes"),
            (short, "were stored"),
        ] {
            let err = decode_entry(LZ4, bad).unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
        }
        let err = decode_entry(7, stored).unwrap_err().to_string();
        assert!(err.contains("unknown data encoding 7"), "{err}");
    }

    #[test]
    fn a_damaged_row_fails_the_read_with_what_is_wrong() {
        let conn = crate::db::open(&crate::db::DbPath::Special(":memory:".into())).unwrap();
        conn.execute(
            "INSERT INTO log_streams (project, prefix, name, stream_type, content_type, timestamp, created_at)
             VALUES ('local', 'p', 's', 'text', 'text/plain', '2026-01-01T00:00:00Z', 0)",
            [],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO log_entries (stream_id, stream_index, prefix_index, sequence, time_offset_ns, data, encoding)
             VALUES (1, 0, 0, 0, 0, x'0000001000', 1)",
            [],
        )
        .unwrap();
        let err = read_entries_bounded(&conn, 1, 0, 10, usize::MAX).unwrap_err().to_string();
        assert!(err.contains("compressed data is damaged"), "{err}");
    }
}

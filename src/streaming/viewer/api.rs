//! What the viewer's page asks for, read from the log store: stream lists and pages of entries,
//! as JSON-ready structs. Synchronous over one connection (callers run it on a blocking thread);
//! every answer is bounded, whatever the store holds.

use rusqlite::Connection;
use serde::Serialize;

use crate::streaming::entry::StreamType;
use crate::streaming::store::{self, StoreError, StoredEntry, StoredStream};

/// Most streams a list holds (the newest).
pub(crate) const LIST_LIMIT: usize = 1000;
/// Entries a page holds unless the page asks for fewer.
pub(crate) const PAGE_ENTRIES: usize = 200;
/// Most entries a page may ask for.
pub(crate) const MAX_PAGE_ENTRIES: usize = 1000;
/// A page stops growing past this many bytes of content (it always holds at least one entry).
pub(crate) const PAGE_BYTES: usize = 512 * 1024;
/// Binary entries and datagrams show at most this many bytes, as hex.
pub(crate) const HEX_PREVIEW: usize = 1024;

/// A stream as the list shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StreamDto {
    /// The store's row id: newer streams have larger ids.
    pub id: i64,
    pub path: String,
    pub prefix: String,
    pub name: String,
    #[serde(rename = "type")]
    pub stream_type: String,
    pub content_type: String,
    pub timestamp: String,
    pub tags: std::collections::BTreeMap<String, String>,
    pub entries: u64,
    pub bytes: u64,
    /// Cut short: its writer died before ending it.
    pub abandoned: bool,
    /// Still being written (no terminal entry yet, and its writer is alive).
    pub open: bool,
}

impl From<StoredStream> for StreamDto {
    fn from(s: StoredStream) -> Self {
        StreamDto {
            id: s.id,
            path: s.path,
            prefix: s.prefix,
            name: s.name,
            stream_type: s.stream_type,
            content_type: s.content_type,
            timestamp: s.timestamp,
            tags: s.tags,
            entries: s.entries,
            bytes: s.bytes,
            abandoned: s.abandoned,
            open: !s.terminal && !s.abandoned,
        }
    }
}

/// Where a page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PageAt {
    /// Entries from this index on (following, or paging forward).
    From(u64),
    /// The entries just before this index (paging back).
    Before(u64),
    /// The last entries (what the page shows first).
    Tail,
}

/// A run of consecutive entries of one stream.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PageDto {
    pub stream: StreamDto,
    /// Index of the first entry in the page (where the next page back ends).
    pub first: u64,
    /// Index after the last entry in the page (where following goes on).
    pub next: u64,
    /// The stream has ended and the page reaches its last entry.
    pub terminal: bool,
    /// The stream was cut short (its writer died) and the page reaches its last entry.
    pub abandoned: bool,
    pub entries: Vec<EntryDto>,
}

/// One entry. Text comes as text (invalid UTF-8 replaced); binary as a size and a hex preview;
/// a datagram as text when it is UTF-8, else a hex preview.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EntryDto {
    /// stream_index
    pub i: u64,
    /// sequence: first line (text), byte offset (binary) or datagram number
    pub seq: u64,
    /// Seconds since the stream's timestamp.
    pub t: f64,
    /// Bytes of content in the entry.
    pub size: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hex: Option<String>,
    /// The hex preview holds only the first [`HEX_PREVIEW`] bytes.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cut: bool,
    /// A datagram fragment: (fragment index, whole datagram size, last fragment).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partial: Option<(u32, u64, bool)>,
}

impl EntryDto {
    fn new(e: StoredEntry, kind: Option<StreamType>) -> Self {
        let size = e.data.len();
        let (text, hex, cut) = match kind {
            Some(StreamType::Text) => {
                (Some(String::from_utf8_lossy(&e.data).into_owned()), None, false)
            }
            Some(StreamType::Datagram)
                if std::str::from_utf8(&e.data).is_ok() && size <= HEX_PREVIEW * 4 =>
            {
                (Some(String::from_utf8_lossy(&e.data).into_owned()), None, false)
            }
            _ => (None, Some(hex(&e.data[..size.min(HEX_PREVIEW)])), size > HEX_PREVIEW),
        };
        EntryDto {
            i: e.stream_index,
            seq: e.sequence,
            t: e.time_offset.as_secs_f64(),
            size,
            text,
            hex,
            cut,
            partial: e.partial.map(|p| (p.index, p.size, p.last)),
        }
    }

    /// Bytes this entry adds to a page.
    fn weight(&self) -> usize {
        self.text.as_ref().map_or(0, String::len) + self.hex.as_ref().map_or(0, String::len) + 64
    }
}

fn hex(data: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(data.len() * 2);
    for b in data {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// The newest streams of `project` under `prefix`, newest first.
pub(crate) fn list(
    conn: &Connection,
    project: &str,
    prefix: &str,
) -> Result<Vec<StreamDto>, StoreError> {
    Ok(store::list_recent(conn, project, prefix, LIST_LIMIT)?.into_iter().map(Into::into).collect())
}

/// A page of the stream at `path`, or `None` when there is no such stream.
pub(crate) fn page(
    conn: &Connection,
    project: &str,
    path: &str,
    at: PageAt,
    limit: usize,
) -> Result<Option<PageDto>, StoreError> {
    let Some(stream) = store::find_stream(conn, project, path)? else { return Ok(None) };
    let limit = limit.clamp(1, MAX_PAGE_ENTRIES);
    let kind = stream.kind();
    let (entries, backwards) = match at {
        PageAt::From(i) => (store::read_entries(conn, stream.id, i, limit)?, false),
        PageAt::Before(i) => (store::read_entries_before(conn, stream.id, i, limit)?, true),
        PageAt::Tail => (store::read_entries_before(conn, stream.id, u64::MAX, limit)?, true),
    };
    let mut entries: Vec<EntryDto> = entries.into_iter().map(|e| EntryDto::new(e, kind)).collect();
    // Keep the page within its byte budget: the entries nearest where it starts.
    if backwards {
        entries.reverse();
    }
    let mut total = 0;
    let keep = entries
        .iter()
        .position(|e| {
            total += e.weight();
            total > PAGE_BYTES
        })
        .map_or(entries.len(), |n| n.max(1));
    entries.truncate(keep);
    if backwards {
        entries.reverse();
    }
    let (first, next) = match (entries.first(), entries.last(), at) {
        (Some(f), Some(l), _) => (f.i, l.i + 1),
        (_, _, PageAt::From(i)) => (i, i),
        (_, _, PageAt::Before(i)) => {
            let i = i.min(stream.entries);
            (i, i)
        }
        (_, _, PageAt::Tail) => (stream.entries, stream.entries),
    };
    let terminal = stream.terminal && next >= stream.entries;
    let abandoned = stream.abandoned && next >= stream.entries;
    Ok(Some(PageDto { stream: stream.into(), first, next, terminal, abandoned, entries }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{self, DbPath};

    fn store_with(entries: &[(&str, &[u8])], kind: &str, terminal: bool) -> Connection {
        let conn = db::open(&DbPath::Special(":memory:".into())).unwrap();
        conn.execute(
            "INSERT INTO log_streams (project, prefix, name, stream_type, content_type, timestamp, created_at, entries, bytes, terminal)
             VALUES ('local', 'pre', 's', ?1, 'x', '2026-01-01T00:00:00Z', 0, ?2, 0, ?3)",
            rusqlite::params![kind, entries.len() as i64, terminal],
        )
        .unwrap();
        for (i, (_, data)) in entries.iter().enumerate() {
            conn.execute(
                "INSERT INTO log_entries (stream_id, stream_index, prefix_index, sequence, time_offset_ns, data)
                 VALUES (1, ?1, ?1, ?1, 0, ?2)",
                rusqlite::params![i as i64, data],
            )
            .unwrap();
        }
        conn
    }

    #[test]
    fn pages_go_forward_back_and_from_the_tail() {
        let lines: Vec<String> = (0..10).map(|i| format!("line {i}\n")).collect();
        let entries: Vec<(&str, &[u8])> = lines.iter().map(|l| ("", l.as_bytes())).collect();
        let conn = store_with(&entries, "text", true);
        let tail = page(&conn, "local", "pre/+/s", PageAt::Tail, 3).unwrap().unwrap();
        assert_eq!((tail.first, tail.next, tail.terminal), (7, 10, true));
        assert_eq!(tail.entries[0].text.as_deref(), Some("line 7\n"));
        let back = page(&conn, "local", "pre/+/s", PageAt::Before(7), 3).unwrap().unwrap();
        assert_eq!((back.first, back.next, back.terminal), (4, 7, false));
        let start = page(&conn, "local", "pre/+/s", PageAt::Before(2), 3).unwrap().unwrap();
        assert_eq!((start.first, start.next), (0, 2));
        let fwd = page(&conn, "local", "pre/+/s", PageAt::From(8), 100).unwrap().unwrap();
        assert_eq!((fwd.first, fwd.next, fwd.terminal), (8, 10, true));
        let past = page(&conn, "local", "pre/+/s", PageAt::From(10), 100).unwrap().unwrap();
        assert_eq!((past.first, past.next, past.entries.len()), (10, 10, 0));
        assert!(page(&conn, "local", "pre/+/nope", PageAt::Tail, 3).unwrap().is_none());
    }

    #[test]
    fn a_page_stays_within_its_byte_budget() {
        let big = vec![b'x'; PAGE_BYTES / 3];
        let entries: Vec<(&str, &[u8])> = (0..6).map(|_| ("", &big[..])).collect();
        let conn = store_with(&entries, "text", false);
        let fwd = page(&conn, "local", "pre/+/s", PageAt::From(0), 100).unwrap().unwrap();
        assert_eq!((fwd.first, fwd.next), (0, 2), "the entries nearest the start");
        let tail = page(&conn, "local", "pre/+/s", PageAt::Tail, 100).unwrap().unwrap();
        assert_eq!((tail.first, tail.next), (4, 6), "the entries nearest the end");
        let huge = vec![b'y'; PAGE_BYTES * 2];
        let conn = store_with(&[("", &huge[..])], "text", false);
        let one = page(&conn, "local", "pre/+/s", PageAt::From(0), 100).unwrap().unwrap();
        assert_eq!(one.entries.len(), 1, "a page always makes progress");
    }

    #[test]
    fn binary_and_datagrams_come_as_previews() {
        let bin: Vec<u8> = (0..=255u8).cycle().take(HEX_PREVIEW + 10).collect();
        let conn = store_with(&[("", &bin[..])], "binary", true);
        let p = page(&conn, "local", "pre/+/s", PageAt::Tail, 10).unwrap().unwrap();
        let e = &p.entries[0];
        assert_eq!((e.size, e.cut, e.text.is_none()), (HEX_PREVIEW + 10, true, true));
        assert!(e.hex.as_ref().unwrap().starts_with("000102"));
        assert_eq!(e.hex.as_ref().unwrap().len(), HEX_PREVIEW * 2);
        let conn = store_with(&[("", b"hello"), ("", b"\xff\x00")], "datagram", true);
        let p = page(&conn, "local", "pre/+/s", PageAt::Tail, 10).unwrap().unwrap();
        assert_eq!(p.entries[0].text.as_deref(), Some("hello"));
        assert_eq!(p.entries[1].hex.as_deref(), Some("ff00"));
        assert_eq!(p.stream.stream_type, "datagram");
    }
}

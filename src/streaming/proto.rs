//! The generated logpb and Coordinator types, and conversions from butler's own bundle types.
//!
//! Private to the streaming module: everything else works with [`super::entry`] types, which keep
//! text as contiguous byte runs instead of one allocation per line.

// Parts are used only by the logdog output and tests.
#![allow(dead_code)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::entry::{Bundle, BundleEntry, Content, LogEntry, StreamInfo, StreamType};

#[allow(clippy::all, dead_code)]
pub mod logpb {
    include!(concat!(env!("OUT_DIR"), "/logpb.rs"));
}

#[allow(clippy::all, dead_code)]
pub mod logdog {
    include!(concat!(env!("OUT_DIR"), "/logdog.rs"));
}

/// logpb's protocol version, stamped on every Pub/Sub message.
pub const PROTOCOL_VERSION: &str = "1";

pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => {
            prost_types::Timestamp { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
        }
        Err(_) => prost_types::Timestamp { seconds: 0, nanos: 0 },
    }
}

pub fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

pub fn stream_type(t: StreamType) -> logpb::StreamType {
    match t {
        StreamType::Text => logpb::StreamType::Text,
        StreamType::Binary => logpb::StreamType::Binary,
        StreamType::Datagram => logpb::StreamType::Datagram,
    }
}

/// The descriptor as the Butler sends it: `prefix` left empty for the Collector to fill.
pub fn descriptor(s: &StreamInfo) -> logpb::LogStreamDescriptor {
    logpb::LogStreamDescriptor {
        prefix: String::new(),
        name: s.name.clone(),
        stream_type: stream_type(s.stream_type) as i32,
        content_type: s.content_type.clone(),
        timestamp: Some(timestamp(s.timestamp)),
        tags: s.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        binary_file_ext: String::new(),
    }
}

/// Splits a text entry's byte run back into logpb lines (zero-copy slices of the run).
pub fn text_lines(data: &bytes::Bytes) -> Vec<logpb::text::Line> {
    let mut lines = Vec::new();
    let mut start = 0;
    for nl in memchr::memchr_iter(b'\n', data) {
        let (end, delimiter) =
            if nl > start && data[nl - 1] == b'\r' { (nl - 1, "\r\n") } else { (nl, "\n") };
        lines.push(logpb::text::Line {
            value: data.slice(start..end),
            delimiter: delimiter.to_owned(),
        });
        start = nl + 1;
    }
    if start < data.len() {
        lines.push(logpb::text::Line { value: data.slice(start..), delimiter: String::new() });
    }
    lines
}

pub fn log_entry(e: &LogEntry) -> logpb::LogEntry {
    use logpb::log_entry::Content as C;
    let content = match &e.content {
        Content::Text { data, .. } => C::Text(logpb::Text { lines: text_lines(data) }),
        Content::Binary(data) => C::Binary(logpb::Binary { data: data.clone() }),
        Content::Datagram { data, partial } => C::Datagram(logpb::Datagram {
            data: data.clone(),
            partial: partial.map(|p| logpb::datagram::Partial {
                index: p.index,
                size: p.size,
                last: p.last,
            }),
        }),
    };
    logpb::LogEntry {
        time_offset: Some(duration(e.time_offset)),
        prefix_index: e.prefix_index,
        stream_index: e.stream_index,
        sequence: e.sequence,
        content: Some(content),
    }
}

pub fn bundle_entry(e: &BundleEntry) -> logpb::butler_log_bundle::Entry {
    logpb::butler_log_bundle::Entry {
        desc: Some(descriptor(&e.stream)),
        deprecated_entry_secret: Default::default(),
        terminal: e.terminal,
        // A stream that ended without entries has no last index: Go's uint64(-1), which the
        // Collector reads back as -1 ("no terminal index yet").
        terminal_index: if e.terminal { e.terminal_index.unwrap_or(u64::MAX) } else { 0 },
        logs: e.logs.iter().map(log_entry).collect(),
    }
}

/// The logpb bundle, without the project/prefix/secret stamp the `logdog` output adds.
pub fn bundle(b: &Bundle) -> logpb::ButlerLogBundle {
    logpb::ButlerLogBundle {
        deprecated_source: String::new(),
        timestamp: Some(timestamp(b.timestamp)),
        entries: b.entries.iter().map(bundle_entry).collect(),
        project: String::new(),
        prefix: String::new(),
        secret: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn text_lines_keep_every_byte() {
        let data = Bytes::from_static(b"a\r\nb\n\r\n\rc\r\r\nd\re");
        let lines = text_lines(&data);
        let got: Vec<(&[u8], &str)> =
            lines.iter().map(|l| (&l.value[..], l.delimiter.as_str())).collect();
        assert_eq!(
            got,
            vec![
                (&b"a"[..], "\r\n"),
                (b"b", "\n"),
                (b"", "\r\n"),
                (b"\rc\r", "\r\n"),
                (b"d\re", ""),
            ]
        );
        let joined: Vec<u8> =
            lines.iter().flat_map(|l| l.value.iter().copied().chain(l.delimiter.bytes())).collect();
        assert_eq!(joined, &data[..]);
    }
}

//! butler's own log types: streams, entries and bundles as the bundler builds them.
//!
//! Text entries keep their lines as one contiguous byte run (lines with their delimiters, a partial
//! last line without one) so the hot path never allocates per line; outputs that need logpb
//! convert at the edge.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

/// The three LogDog stream types, numbered as in logpb.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamType {
    Text,
    Binary,
    Datagram,
}

impl StreamType {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamType::Text => "text",
            StreamType::Binary => "binary",
            StreamType::Datagram => "datagram",
        }
    }

    pub fn parse(s: &str) -> Option<StreamType> {
        match s {
            "text" => Some(StreamType::Text),
            "binary" => Some(StreamType::Binary),
            "datagram" => Some(StreamType::Datagram),
            _ => None,
        }
    }

    /// The content type a stream gets when its handshake names none.
    pub fn default_content_type(self) -> &'static str {
        match self {
            StreamType::Text => "text/plain; charset=utf-8",
            StreamType::Binary => "application/octet-stream",
            StreamType::Datagram => "application/x-logdog-datagram",
        }
    }
}

/// One registered stream: its descriptor plus where it lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    /// Unique within one butler's life; outputs key per-stream state by it.
    pub id: u64,
    pub project: String,
    pub prefix: String,
    pub name: String,
    pub stream_type: StreamType,
    pub content_type: String,
    pub timestamp: SystemTime,
    pub tags: BTreeMap<String, String>,
}

impl StreamInfo {
    pub fn path(&self) -> String {
        super::names::stream_path(&self.prefix, &self.name)
    }
}

/// A datagram fragment: the datagram did not fit one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partial {
    pub index: u32,
    /// The whole datagram's size.
    pub size: u64,
    pub last: bool,
}

/// What one entry carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Whole lines with their delimiters; the last line has none when it is partial. `newlines` is
    /// the number of `\n` in `data` (the number of complete lines).
    Text {
        data: Bytes,
        newlines: u64,
    },
    Binary(Bytes),
    Datagram {
        data: Bytes,
        partial: Option<Partial>,
    },
}

impl Content {
    /// The payload bytes.
    pub fn data(&self) -> &Bytes {
        match self {
            Content::Text { data, .. } | Content::Binary(data) | Content::Datagram { data, .. } => {
                data
            }
        }
    }

    /// Number of logpb `Text.Line`s this entry becomes.
    pub fn line_count(&self) -> u64 {
        match self {
            Content::Text { data, newlines } => {
                newlines + u64::from(!data.is_empty() && data.last() != Some(&b'\n'))
            }
            _ => 0,
        }
    }
}

/// One log entry (logpb `LogEntry`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Butler-wide, increasing; assigned by the bundler.
    pub prefix_index: u64,
    /// 0, 1, 2, ... within the stream.
    pub stream_index: u64,
    /// Text: index of the first line; binary: byte offset; datagram: datagram index.
    pub sequence: u64,
    /// Since the stream's timestamp; never decreases within a stream.
    pub time_offset: Duration,
    pub content: Content,
}

impl LogEntry {
    /// A conservative estimate of the entry's encoded logpb size.
    pub fn encoded_size_estimate(&self) -> usize {
        self.content.data().len() + 8 * self.content.line_count() as usize + 48
    }
}

/// One stream's part of a bundle.
#[derive(Debug, Clone)]
pub struct BundleEntry {
    pub stream: Arc<StreamInfo>,
    /// Contiguous `stream_index`es.
    pub logs: Vec<LogEntry>,
    /// The stream has ended; no entry follows this bundle's.
    pub terminal: bool,
    /// The last `stream_index` of the stream, when terminal and it had any entry.
    pub terminal_index: Option<u64>,
}

/// What the bundler hands an output.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// When the bundle was started.
    pub timestamp: SystemTime,
    /// At most one per stream, sorted by stream name.
    pub entries: Vec<BundleEntry>,
}

impl Bundle {
    pub fn log_count(&self) -> usize {
        self.entries.iter().map(|e| e.logs.len()).sum()
    }

    pub fn data_bytes(&self) -> usize {
        self.entries.iter().flat_map(|e| &e.logs).map(|l| l.content.data().len()).sum()
    }
}

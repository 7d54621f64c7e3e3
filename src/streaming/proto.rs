//! The generated logpb and Coordinator types, and conversions from butler's own bundle types.
//!
//! Private to the streaming module: everything else works with [`super::entry`] types, which keep
//! text as contiguous byte runs instead of one allocation per line.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::entry::{Bundle, BundleEntry, Content, LogEntry, StreamInfo, StreamType};

#[allow(clippy::all, dead_code, unreachable_pub)] // generated code
pub(super) mod logpb {
    include!(concat!(env!("OUT_DIR"), "/logpb.rs"));
}

#[allow(clippy::all, dead_code, unreachable_pub)] // generated code
pub(super) mod logdog {
    include!(concat!(env!("OUT_DIR"), "/logdog.rs"));
}

/// logpb's protocol version, stamped on every Pub/Sub message.
pub(super) const PROTOCOL_VERSION: &str = "1";

pub(super) fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => {
            prost_types::Timestamp { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
        }
        Err(_) => prost_types::Timestamp { seconds: 0, nanos: 0 },
    }
}

pub(super) fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

pub(super) fn stream_type(t: StreamType) -> logpb::StreamType {
    match t {
        StreamType::Text => logpb::StreamType::Text,
        StreamType::Binary => logpb::StreamType::Binary,
        StreamType::Datagram => logpb::StreamType::Datagram,
    }
}

/// The descriptor as the Butler sends it: `prefix` left empty for the Collector to fill.
pub(super) fn descriptor(s: &StreamInfo) -> logpb::LogStreamDescriptor {
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
pub(super) fn text_lines(data: &bytes::Bytes) -> Vec<logpb::text::Line> {
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

pub(super) fn log_entry(e: &LogEntry) -> logpb::LogEntry {
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

pub(super) fn bundle_entry(e: &BundleEntry) -> logpb::butler_log_bundle::Entry {
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
pub(super) fn bundle(b: &Bundle) -> logpb::ButlerLogBundle {
    logpb::ButlerLogBundle {
        deprecated_source: String::new(),
        timestamp: Some(timestamp(b.timestamp)),
        entries: b.entries.iter().map(bundle_entry).collect(),
        project: String::new(),
        prefix: String::new(),
        secret: Default::default(),
    }
}

/// Bundles at least this big are zlib-compressed on the wire (the Collector's threshold).
pub(super) const COMPRESS_THRESHOLD: usize = 860;
/// The largest uncompressed bundle the Collector reads.
pub(super) const MAX_BUNDLE: usize = 10 * 1024 * 1024;

/// Frames a bundle as the Collector reads a Pub/Sub message: uvarint-length `ButlerMetadata`,
/// then the uvarint-length bundle (zlib when ≥ 860 bytes), stamped with project, prefix, secret.
pub(super) fn pubsub_message(
    b: &Bundle,
    project: &str,
    prefix: &str,
    secret: &[u8],
) -> std::io::Result<Vec<u8>> {
    use prost::Message;
    let mut pb = bundle(b);
    pb.project = project.to_owned();
    pb.prefix = prefix.to_owned();
    pb.secret = bytes::Bytes::copy_from_slice(secret);
    let raw = pb.encode_to_vec();
    if raw.len() > MAX_BUNDLE {
        return Err(std::io::Error::other(format!(
            "bundle of {} bytes exceeds the {MAX_BUNDLE}-byte limit",
            raw.len()
        )));
    }
    let (compression, payload) = if raw.len() >= COMPRESS_THRESHOLD {
        let mut z = flate2::write::ZlibEncoder::new(
            Vec::with_capacity(raw.len() / 2),
            flate2::Compression::default(),
        );
        std::io::Write::write_all(&mut z, &raw)?;
        (logpb::butler_metadata::Compression::Zlib, z.finish()?)
    } else {
        (logpb::butler_metadata::Compression::None, raw)
    };
    let meta = logpb::ButlerMetadata {
        r#type: logpb::butler_metadata::ContentType::ButlerLogBundle as i32,
        compression: compression as i32,
        proto_version: PROTOCOL_VERSION.to_owned(),
    }
    .encode_to_vec();
    let mut out = Vec::with_capacity(meta.len() + payload.len() + 20);
    super::handshake::put_uvarint(&mut out, meta.len() as u64);
    out.extend_from_slice(&meta);
    super::handshake::put_uvarint(&mut out, payload.len() as u64);
    out.extend_from_slice(&payload);
    Ok(out)
}

/// The RegisterPrefix request body.
pub(super) fn register_prefix_request(
    project: &str,
    prefix: &str,
    nonce: &[u8],
    expiration: Option<Duration>,
) -> Vec<u8> {
    use prost::Message;
    logdog::RegisterPrefixRequest {
        project: project.to_owned(),
        prefix: prefix.to_owned(),
        source_info: vec![
            "LogDog Butler".to_owned(),
            format!("GOARCH={}", std::env::consts::ARCH),
            format!("GOOS={}", std::env::consts::OS),
        ],
        op_nonce: bytes::Bytes::copy_from_slice(nonce),
        realm: String::new(),
        expiration: expiration.map(duration),
    }
    .encode_to_vec()
}

/// Decodes a RegisterPrefix response: (secret, topic).
pub(super) fn register_prefix_response(
    body: &[u8],
) -> Result<(Vec<u8>, String), prost::DecodeError> {
    use prost::Message;
    let r = logdog::RegisterPrefixResponse::decode(body)?;
    Ok((r.secret.to_vec(), r.log_bundle_topic))
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

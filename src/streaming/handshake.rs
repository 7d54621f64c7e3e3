//! The stream-server handshake: `BTLR1\x1E`, a uvarint length (≤ 1 MiB), one JSON object of flags.
//!
//! The server never answers; a bad handshake just closes the connection (and is logged).

use std::collections::BTreeMap;
use std::time::SystemTime;

use bytes::{Buf, Bytes, BytesMut};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::entry::StreamType;
use super::names::{self, NameError};
use super::timefmt;

/// The 6 bytes every client sends first.
pub const MAGIC: &[u8; 6] = b"BTLR1\x1E";
/// Largest handshake JSON frame.
pub const MAX_FRAME: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("magic number mismatch (expected BTLR1\\x1E)")]
    Magic,
    #[error("handshake frame length overflows a 64-bit integer")]
    VarintOverflow,
    #[error("handshake frame of {0} bytes exceeds the maximum of {MAX_FRAME}")]
    FrameTooLarge(u64),
    #[error("connection closed during the handshake after {0} bytes")]
    Eof(usize),
    #[error("reading the handshake: {0}")]
    Io(#[from] std::io::Error),
    #[error("handshake is not a JSON object: {0}")]
    Json(String),
    #[error("handshake key {key:?} must be {want}")]
    Field { key: &'static str, want: &'static str },
    #[error("handshake has no stream name")]
    NoName,
    #[error("invalid stream name: {0}")]
    Name(NameError),
    #[error("invalid tag: {0}")]
    Tag(NameError),
    #[error("unknown stream type {0:?} (text, binary or datagram)")]
    Type(String),
    #[error("invalid timestamp: {0}")]
    Timestamp(timefmt::TimeError),
}

/// Why a `name=N,type=T,...` stream spec (a flag or `Process.Run` param) was refused.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("stream option {0:?} is not key=value")]
    NotKeyValue(String),
    #[error("unknown stream type {0:?} (text, binary, datagram)")]
    Type(String),
    #[error("unknown stream option {0:?} (name, type, content-type, tag)")]
    UnknownOption(String),
    #[error(transparent)]
    Invalid(#[from] HandshakeError),
}

/// What a client asked for in its handshake, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamFlags {
    pub name: String,
    pub stream_type: StreamType,
    /// `None`: the type's default.
    pub content_type: Option<String>,
    /// `None`: the butler's "now".
    pub timestamp: Option<SystemTime>,
    pub tags: BTreeMap<String, String>,
}

impl StreamFlags {
    pub fn new(name: impl Into<String>, stream_type: StreamType) -> Self {
        StreamFlags {
            name: name.into(),
            stream_type,
            content_type: None,
            timestamp: None,
            tags: BTreeMap::new(),
        }
    }

    /// Parses `name=N,type=T,content-type=C,tag=k=v` (repeatable `tag=`) as the command line and
    /// `Process.Run` spell a stream; the name is `default_name` unless given.
    pub fn parse_spec(spec: &str, default_name: &str) -> Result<StreamFlags, SpecError> {
        let mut flags = StreamFlags::new(default_name, StreamType::Text);
        for (i, part) in spec.split(',').filter(|p| !p.is_empty()).enumerate() {
            // A bare first part is the name (`--stdout out` as `--stdout name=out`).
            if i == 0 && !part.contains('=') {
                flags.name = part.to_owned();
                continue;
            }
            let (k, v) =
                part.split_once('=').ok_or_else(|| SpecError::NotKeyValue(part.to_owned()))?;
            match k {
                "name" => flags.name = v.to_owned(),
                "type" => {
                    flags.stream_type =
                        StreamType::parse(v).ok_or_else(|| SpecError::Type(v.to_owned()))?
                }
                // Empty means the type's default, as in a handshake.
                "content-type" | "contentType" => {
                    flags.content_type = (!v.is_empty()).then(|| v.to_owned())
                }
                "tag" => {
                    let (tk, tv) = v.split_once('=').unwrap_or((v, ""));
                    flags.tags.insert(tk.to_owned(), tv.to_owned());
                }
                _ => return Err(SpecError::UnknownOption(k.to_owned())),
            }
        }
        flags.validate()?;
        Ok(flags)
    }

    /// Checks the name and tags.
    pub fn validate(&self) -> Result<(), HandshakeError> {
        names::validate_stream_name(&self.name).map_err(HandshakeError::Name)?;
        for (k, v) in &self.tags {
            names::validate_tag(k, v).map_err(HandshakeError::Tag)?;
        }
        Ok(())
    }

    /// The JSON object a client sends (as the Go client does: `type` omitted for text).
    pub fn to_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("name".into(), self.name.clone().into());
        if self.stream_type != StreamType::Text {
            m.insert("type".into(), self.stream_type.as_str().into());
        }
        if let Some(ct) = &self.content_type {
            m.insert("contentType".into(), ct.clone().into());
        }
        if let Some(t) = self.timestamp {
            m.insert("timestamp".into(), timefmt::format_rfc3339(t).into());
        }
        if !self.tags.is_empty() {
            m.insert("tags".into(), serde_json::to_value(&self.tags).unwrap_or_default());
        }
        Value::Object(m)
    }

    /// The complete handshake bytes for these flags.
    pub fn encode(&self) -> Vec<u8> {
        let json = serde_json::to_vec(&self.to_json()).unwrap_or_default();
        let mut out = Vec::with_capacity(json.len() + 16);
        out.extend_from_slice(MAGIC);
        put_uvarint(&mut out, json.len() as u64);
        out.extend_from_slice(&json);
        out
    }
}

/// Appends `v` as an unsigned LEB128 varint (Go's `binary.PutUvarint`).
pub fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a uvarint from the front of `buf`: `Ok(None)` when more bytes are needed.
pub fn get_uvarint(buf: &[u8]) -> Result<Option<(u64, usize)>, HandshakeError> {
    let mut v: u64 = 0;
    for (i, &b) in buf.iter().enumerate() {
        if i == 9 && b > 1 {
            return Err(HandshakeError::VarintOverflow);
        }
        v |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return Ok(Some((v, i + 1)));
        }
        if i >= 9 {
            return Err(HandshakeError::VarintOverflow);
        }
    }
    Ok(None)
}

/// Parses a complete handshake at the front of `buf`: `Ok(None)` when more bytes are needed,
/// else the flags and how many bytes the handshake took.
pub fn parse(buf: &[u8]) -> Result<Option<(StreamFlags, usize)>, HandshakeError> {
    let n = buf.len().min(MAGIC.len());
    if buf[..n] != MAGIC[..n] {
        return Err(HandshakeError::Magic);
    }
    if buf.len() < MAGIC.len() {
        return Ok(None);
    }
    let Some((len, vlen)) = get_uvarint(&buf[MAGIC.len()..])? else { return Ok(None) };
    if len > MAX_FRAME {
        return Err(HandshakeError::FrameTooLarge(len));
    }
    let start = MAGIC.len() + vlen;
    let end = start + len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((parse_flags(&buf[start..end])?, end)))
}

/// Decodes the flags JSON: keys case-insensitive, unknown and legacy keys ignored.
pub fn parse_flags(json: &[u8]) -> Result<StreamFlags, HandshakeError> {
    let v: Value = serde_json::from_slice(json).map_err(|e| HandshakeError::Json(e.to_string()))?;
    let Value::Object(obj) = v else {
        return Err(HandshakeError::Json("expected an object".into()));
    };
    let mut flags = StreamFlags::new(String::new(), StreamType::Text);
    for (key, val) in obj {
        let field = |k: &'static str, want: &'static str| HandshakeError::Field { key: k, want };
        match key.to_ascii_lowercase().as_str() {
            "name" => match val {
                Value::String(s) => flags.name = s,
                Value::Null => {}
                _ => return Err(field("name", "a string")),
            },
            "contenttype" => match val {
                Value::String(s) if !s.is_empty() => flags.content_type = Some(s),
                Value::String(_) | Value::Null => {}
                _ => return Err(field("contentType", "a string")),
            },
            "type" => match val {
                Value::String(s) => {
                    flags.stream_type = StreamType::parse(&s).ok_or(HandshakeError::Type(s))?
                }
                Value::Null => {}
                _ => return Err(field("type", "a string")),
            },
            "timestamp" => match val {
                Value::String(s) => {
                    let t = timefmt::parse_rfc3339(&s).map_err(HandshakeError::Timestamp)?;
                    // Go's zero time means "unset".
                    if !s.starts_with("0001-01-01T00:00:00") {
                        // Entries store their offset from it in signed nanoseconds, which reach
                        // about 292 years: a stream said to start before the Unix epoch would
                        // wrap, so it is refused here rather than stored wrong.
                        if t < std::time::UNIX_EPOCH {
                            return Err(field("timestamp", "a time after 1970-01-01"));
                        }
                        flags.timestamp = Some(t);
                    }
                }
                Value::Null => {}
                _ => return Err(field("timestamp", "an RFC 3339 string")),
            },
            "tags" => match val {
                Value::Object(tags) => {
                    for (k, v) in tags {
                        let Value::String(v) = v else {
                            return Err(field("tags", "an object of strings"));
                        };
                        flags.tags.insert(k, v);
                    }
                }
                Value::Null => {}
                _ => return Err(field("tags", "an object of strings")),
            },
            // tee, timeout, deadline, binaryFileExtension, ioKeepAlive and anything newer.
            _ => {}
        }
    }
    if flags.name.is_empty() {
        return Err(HandshakeError::NoName);
    }
    flags.validate()?;
    Ok(flags)
}

/// Reads a handshake from a connection; returns the flags and any payload bytes read past it.
pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> Result<(StreamFlags, Bytes), HandshakeError> {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        if let Some((flags, used)) = parse(&buf)? {
            buf.advance(used);
            return Ok((flags, buf.freeze()));
        }
        // Never more than the frame needs plus one read: `parse` has bounded the length already.
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(16 * 1024);
        }
        if r.read_buf(&mut buf).await? == 0 {
            return Err(HandshakeError::Eof(buf.len()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs(json: &str) -> Vec<u8> {
        let mut v = MAGIC.to_vec();
        put_uvarint(&mut v, json.len() as u64);
        v.extend_from_slice(json.as_bytes());
        v
    }

    #[test]
    fn upstream_example() {
        let b = hs(r#"{"name":"foo/bar","timestamp":"2015-05-07T01:29:51Z"}"#);
        assert_eq!(b[6], 0x35);
        let (f, used) = parse(&b).unwrap().unwrap();
        assert_eq!(used, b.len());
        assert_eq!(f.name, "foo/bar");
        assert_eq!(f.stream_type, StreamType::Text);
        assert!(f.timestamp.is_some());
        let old = hs(r#"{"name":"foo/bar","timestamp":"0002-01-02T00:00:00Z"}"#);
        assert!(parse(&old).is_err(), "a timestamp whose offsets would wrap is refused");
    }

    #[test]
    fn keys_are_case_insensitive_and_legacy_keys_ignored() {
        let b = hs(
            r#"{"NAME":"a","Type":"datagram","CONTENTTYPE":"x/y","tee":"stdout","timeout":"5s","ioKeepAlive":true,"binaryFileExtension":"txt","Tags":{"k":"v"}}"#,
        );
        let (f, _) = parse(&b).unwrap().unwrap();
        assert_eq!(f.name, "a");
        assert_eq!(f.stream_type, StreamType::Datagram);
        assert_eq!(f.content_type.as_deref(), Some("x/y"));
        assert_eq!(f.tags.get("k").map(String::as_str), Some("v"));
    }

    #[test]
    fn rejections() {
        assert!(matches!(parse(b"BTLR2\x1e"), Err(HandshakeError::Magic)));
        assert!(matches!(parse(b"X"), Err(HandshakeError::Magic)));
        assert!(parse(b"BTLR1").unwrap().is_none());
        let mut over = MAGIC.to_vec();
        over.extend_from_slice(&[0xff; 11]);
        assert!(matches!(parse(&over), Err(HandshakeError::VarintOverflow)));
        let mut big = MAGIC.to_vec();
        put_uvarint(&mut big, MAX_FRAME + 1);
        assert!(matches!(parse(&big), Err(HandshakeError::FrameTooLarge(_))));
        for (json, want) in [
            ("[]", "Json"),
            ("{", "Json"),
            ("{}", "NoName"),
            (r#"{"name":"_a"}"#, "Name"),
            (r#"{"name":"a","type":"video"}"#, "Type"),
            (r#"{"name":"a","timestamp":"yesterday"}"#, "Timestamp"),
            (r#"{"name":"a","tags":{"_k":"v"}}"#, "Tag"),
            (r#"{"name":"a","tags":["k"]}"#, "Field"),
            (r#"{"name":7}"#, "Field"),
        ] {
            let err = parse(&hs(json)).unwrap_err();
            assert!(format!("{err:?}").starts_with(want), "{json}: {err:?}");
        }
    }

    #[test]
    fn an_empty_content_type_in_a_spec_is_the_default() {
        let f = StreamFlags::parse_spec("out,content-type=", "x").unwrap();
        assert_eq!(f.content_type, None);
        assert_eq!(parse(&f.encode()).unwrap().unwrap().0, f);
    }

    #[test]
    fn encode_parses_back() {
        let mut f = StreamFlags::new("x/y", StreamType::Binary);
        f.tags.insert("a".into(), "b".into());
        f.content_type = Some("c/d".into());
        let (g, _) = parse(&f.encode()).unwrap().unwrap();
        assert_eq!(f, g);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let mut b = MAGIC.to_vec();
            b.extend_from_slice(&data);
            let _ = parse(&b);
            let _ = parse(&data);
        }
    }
}

//! Entry points for the cargo-fuzz targets in `tests/fuzz` (`make fuzz`) and for the tests that
//! replay what they found (`tests/it/fuzz.rs`): each takes the fuzzer's bytes, drives the real
//! parser and panics when a property it checks does not hold. Not an API; `pub` only so another
//! crate can reach `pub(crate)` code. The updater's are in `butler_updater::fuzz`.

use std::time::{Duration, Instant, SystemTime};

use futures_util::FutureExt;
use serde_json::Value;
use tokio::io::AsyncRead;

use crate::daemon::connection::redact;
use crate::daemon::framing::{Frame, LineReader};
use crate::daemon::jsonrpc::{self, Incoming, Response, RpcError};
use crate::streaming::cutter::{CutError, Cutter, MAX_DATAGRAM};
use crate::streaming::entry::{Content, LogEntry, StreamType};
use crate::streaming::handshake::{self, StreamFlags, get_uvarint, put_uvarint};

/// Hands out its bytes in the chunk sizes a seed picks, like a socket would; never pending.
struct Chunked<'a> {
    data: &'a [u8],
    seed: u64,
}

impl Chunked<'_> {
    fn next_size(&mut self) -> usize {
        // xorshift: cheap, and the same input always splits the same way.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        1 + (self.seed % 97) as usize
    }
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let n = self.next_size().min(self.data.len()).min(buf.remaining());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        std::task::Poll::Ready(Ok(()))
    }
}

/// Runs a future over in-memory readers, which never wait.
fn now<F: std::future::Future>(f: F) -> F::Output {
    f.now_or_never().expect("an in-memory reader never waits")
}

/// The daemon's framing and message classification, fed a connection's bytes.
///
/// The first byte sets the line limit, the second how reads are split. Properties: every
/// line comes out whole or is reported too long with its length, as a plain split at `\n`
/// says; every line then parses or not, and each message (batch items too) classifies with
/// a number or string id (or null); every reply written for it is one line of JSON that
/// reads back with the same id; a `Meta.Authenticate`'s params never reach the traffic log.
pub fn jsonrpc(data: &[u8]) {
    let [a, b, rest @ ..] = data else { return };
    let max = 1 + usize::from(*a) * 8;
    let mut lines = LineReader::new(Chunked { data: rest, seed: u64::from(*b) | 1 << 32 }, max);
    let mut expected: Vec<&[u8]> = rest.split(|c| *c == b'\n').collect();
    // A final `\n` ends the last line; it does not start an empty one.
    if expected.last().is_some_and(|l| l.is_empty()) {
        expected.pop();
    }
    let mut expected = expected.into_iter();
    loop {
        let frame = now(lines.next()).expect("in-memory reads do not fail");
        let line = match (frame, expected.next()) {
            (Frame::Eof, None) => break,
            (Frame::Line(got), Some(want)) if want.len() <= max => {
                assert_eq!(got, want, "a line comes out whole");
                got
            }
            (Frame::TooLong(n), Some(want)) if want.len() > max => {
                assert_eq!(n, want.len(), "a long line is reported with its length");
                continue;
            }
            (frame, want) => panic!("framed {frame:?}, expected {want:?} (limit {max})"),
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let value = match serde_json::from_slice::<Value>(&line) {
            Ok(v) => v,
            Err(e) => {
                check_reply(&Value::Null, &Err(RpcError::parse_error(e)));
                continue;
            }
        };
        check_redacted(&value, &redact(&value));
        if let Some(plain) = jsonrpc::classify_plain(&line) {
            assert_eq!(plain, jsonrpc::classify(value.clone()), "the hot path classifies alike");
        }
        match value {
            Value::Array(items) => items.into_iter().for_each(check_message),
            single => check_message(single),
        }
    }
}

fn check_message(value: Value) {
    match jsonrpc::classify(value) {
        Incoming::Request { id, method, .. } => {
            assert!(id.is_number() || id.is_string(), "request id {id}");
            let reply = Err(RpcError::method_not_found(&method));
            check_reply(&id, &reply);
            check_reply(&id, &Ok(Value::String(method)));
        }
        Incoming::Notification { params, .. } => {
            assert!(params.is_object() || params.is_array(), "params {params}");
        }
        Incoming::Response { id, .. } => assert!(id.is_number() || id.is_string(), "reply id {id}"),
        Incoming::Invalid { id, error } => {
            assert!(id.is_null() || id.is_number() || id.is_string(), "invalid's id {id}");
            check_reply(&id, &Err(error));
        }
    }
}

/// A reply is one line of JSON-RPC that reads back with the id it was given.
fn check_reply(id: &Value, result: &Result<Value, RpcError>) {
    let line = jsonrpc::to_line(&Response::new(id, result));
    assert_eq!(line.iter().filter(|c| **c == b'\n').count(), 1, "one line per reply");
    assert_eq!(line.last(), Some(&b'\n'));
    let back: Value = serde_json::from_slice(&line).expect("a reply is JSON");
    assert_eq!(back["jsonrpc"], "2.0");
    assert_eq!(&back["id"], id, "the id comes back unchanged");
    assert!(back.get("result").is_some() != back.get("error").is_some());
}

fn check_redacted(value: &Value, redacted: &Value) {
    let auth = |m: &Value| m.get("method").and_then(Value::as_str) == Some("Meta.Authenticate");
    let pairs: Vec<(&Value, &Value)> = match (value, redacted) {
        (Value::Array(a), Value::Array(b)) => a.iter().zip(b).collect(),
        _ => vec![(value, redacted)],
    };
    for (v, r) in pairs {
        if auth(v) && v.get("params").is_some() {
            assert_eq!(r["params"], "[redacted]", "the secret stays out of the log");
        } else {
            assert_eq!(v, r, "only Meta.Authenticate's params are redacted");
        }
    }
}

/// The stream server's handshake, whole and as a connection delivers it, and the stream specs
/// of `--stdout`/`Process.Run`.
///
/// Properties: a handshake parses the same from a buffer and from a connection (which returns
/// only bytes after it); no prefix of a good handshake is an error; accepted flags are valid
/// and encode to a handshake that parses back to them; a spec that parses encodes to a
/// handshake that parses back to it.
pub fn handshake(data: &[u8]) {
    let [seed, rest @ ..] = data else { return };
    let whole = handshake::parse(rest);
    let mut reader = Chunked { data: rest, seed: u64::from(*seed) | 1 << 40 };
    let read = now(handshake::read(&mut reader));
    match (&whole, &read) {
        (Ok(Some((flags, used))), Ok((got, after))) => {
            assert_eq!(flags, got, "read and parse agree");
            assert!(rest[*used..].starts_with(after), "bytes after the handshake are kept");
            for cut in [0, 1, handshake::MAGIC.len(), used / 2, used - 1] {
                if cut < *used {
                    assert!(
                        matches!(handshake::parse(&rest[..cut]), Ok(None)),
                        "a prefix of {cut} bytes is an error"
                    );
                }
            }
            round_trip(flags);
        }
        (Ok(Some(_)), Err(e)) => panic!("parse accepted what read refused: {e}"),
        (Err(_), Ok(_)) => panic!("read accepted what parse refused: {whole:?}"),
        (Ok(None), Ok(_)) => panic!("read accepted an unfinished handshake"),
        (Ok(None), Err(e)) => {
            assert!(matches!(e, handshake::HandshakeError::Eof(n) if *n == rest.len()), "{e}")
        }
        (Err(_), Err(_)) => {}
    }
    if let Ok(spec) = std::str::from_utf8(rest)
        && let Ok(flags) = StreamFlags::parse_spec(spec, "stdout")
    {
        round_trip(&flags);
    }
}

fn round_trip(flags: &StreamFlags) {
    flags.validate().expect("accepted flags are valid");
    let bytes = flags.encode();
    let (back, used) = handshake::parse(&bytes)
        .unwrap_or_else(|e| panic!("{flags:?} encodes to a refused handshake: {e}"))
        .expect("an encoded handshake is complete");
    assert_eq!(used, bytes.len());
    assert_eq!(&back, flags, "a handshake parses back to the flags it encodes");
}

/// A script of reads and cuts for one stream: `(bytes pushed, cuts)`, and the entries cut.
struct Run {
    pushed: Vec<u8>,
    entries: Vec<LogEntry>,
    error: Option<CutError>,
    left: usize,
    max_entry: usize,
}

/// Plays `script` into a cutter: each op byte pushes up to 63 of the following bytes, then
/// maybe cuts (bit 6), aggressively or not (bit 7); the end finishes the stream.
fn play(kind: StreamType, max_entry: usize, script: &[u8]) -> Run {
    let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mut cutter = Cutter::new(kind, base, max_entry);
    let (mut pushed, mut entries, mut error) = (Vec::new(), Vec::new(), None);
    let mut rest = script;
    let mut tick = 0;
    while let [op, tail @ ..] = rest {
        let n = usize::from(op & 0x3f).min(tail.len());
        tick += 1;
        let at = (Instant::now(), base + Duration::from_millis(tick));
        cutter.push(&tail[..n], at);
        pushed.extend_from_slice(&tail[..n]);
        rest = &tail[n..];
        if op & 0x40 != 0
            && let Err(e) = cutter.cut(op & 0x80 != 0, &mut entries)
        {
            error.get_or_insert(e);
        }
    }
    let left = match cutter.finish(&mut entries) {
        Ok(n) => n,
        Err(e) => {
            error.get_or_insert(e);
            0
        }
    };
    assert_eq!(cutter.next_stream_index(), entries.len() as u64);
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.stream_index, i as u64, "stream indexes are contiguous");
        assert!(i == 0 || e.time_offset >= entries[i - 1].time_offset, "time runs forward");
    }
    Run { pushed, entries, error, left, max_entry: max_entry.max(8) }
}

/// The bundler's cutter on text and binary streams.
///
/// The first byte picks the type and the largest entry (8 to 263 bytes, so long lines split);
/// the rest is a script of reads and cuts (see `play`). Properties: the entries hold exactly
/// the bytes read, in order, none lost or repeated; none is empty or over the largest entry;
/// text entries count their newlines, and their sequence is the number of lines before them;
/// a binary entry's sequence is its byte offset; only the stream's end cuts a line before
/// its `\n` inside a UTF-8 sequence or after a `\r`.
pub fn cutter(data: &[u8]) {
    let [a, b, script @ ..] = data else { return };
    let kind = if a & 1 == 0 { StreamType::Text } else { StreamType::Binary };
    let run = play(kind, 8 + usize::from(*b), script);
    assert_eq!(run.error, None, "text and binary streams never fail");
    assert_eq!(run.left, 0);
    let mut out = Vec::new();
    let mut lines = 0u64;
    for e in &run.entries {
        let data = e.content.data();
        assert!(!data.is_empty(), "no empty entry");
        assert!(data.len() <= run.max_entry, "{} bytes over {}", data.len(), run.max_entry);
        match &e.content {
            Content::Text { data, newlines } => {
                assert_eq!(kind, StreamType::Text);
                assert_eq!(*newlines, memchr::memchr_iter(b'\n', data).count() as u64);
                assert_eq!(e.sequence, lines, "a text entry's sequence is its first line");
                lines += newlines;
            }
            Content::Binary(_) => {
                assert_eq!(kind, StreamType::Binary);
                assert_eq!(e.sequence, out.len() as u64, "a binary entry's sequence is its offset");
            }
            Content::Datagram { .. } => panic!("a datagram on a {kind:?} stream"),
        }
        out.extend_from_slice(data);
    }
    assert!(out == run.pushed, "the entries hold exactly the bytes read, in order");
}

/// Datagram streams: the uvarint-framed datagrams a client writes, cut into entries.
///
/// The first byte picks the largest entry (so datagrams fragment) and the mode: the rest is
/// either a list of datagrams the stream client's framing writes (each a length byte and that
/// many bytes, repeated up to 4 times), or raw bytes from a hostile client, run as a script of
/// reads and cuts (see `play`). Properties: the entries reassemble into exactly the datagrams a
/// plain decoder reads from those bytes, in order; fragments are numbered from 0, agree on the
/// datagram's size and add up to it; a bad or oversized header fails the stream and nothing
/// after it comes out; only an unfinished header is left over.
pub fn datagram(data: &[u8]) {
    let [a, script @ ..] = data else { return };
    let max_entry = 8 + usize::from(a >> 1);
    let run = if a & 1 == 0 {
        let mut wire = Vec::new();
        let mut rest = script;
        while let [len, tail @ ..] = rest {
            let n = usize::from(*len).min(tail.len());
            let times = usize::from(len & 3) + 1;
            let dg = tail[..n].repeat(times);
            put_uvarint(&mut wire, dg.len() as u64);
            wire.extend_from_slice(&dg);
            rest = &tail[n..];
        }
        // One script op per 63 bytes, each cut aggressively.
        let ops: Vec<u8> =
            wire.chunks(63).flat_map(|c| [[0xc0 | c.len() as u8].as_slice(), c].concat()).collect();
        play(StreamType::Datagram, max_entry, &ops)
    } else {
        play(StreamType::Datagram, max_entry, script)
    };
    // What a plain decoder reads from the same bytes.
    let mut want: Vec<&[u8]> = Vec::new();
    let mut rest = run.pushed.as_slice();
    let mut bad_header = false;
    let mut unfinished = None;
    loop {
        match get_uvarint(rest) {
            Ok(Some((size, used))) if size <= MAX_DATAGRAM => {
                let body = &rest[used..];
                if (body.len() as u64) < size {
                    unfinished = Some((size, body));
                    break;
                }
                want.push(&body[..size as usize]);
                rest = &body[size as usize..];
            }
            Ok(Some(_)) | Err(_) => {
                bad_header = true;
                break;
            }
            Ok(None) => break,
        }
    }
    let mut got: Vec<(Vec<u8>, Option<u64>)> = Vec::new();
    let mut open: Option<(u64, u32)> = None;
    for e in &run.entries {
        let Content::Datagram { data, partial } = &e.content else {
            panic!("{:?} on a datagram stream", e.content)
        };
        assert!(data.len() <= run.max_entry, "{} bytes over {}", data.len(), run.max_entry);
        let done = got.len() as u64 - u64::from(open.is_some());
        assert_eq!(e.sequence, done, "a datagram entry's sequence is its datagram's index");
        match (partial, open) {
            (None, None) => got.push((data.to_vec(), None)),
            (Some(p), None) => {
                assert_eq!(p.index, 0, "a datagram's first fragment is number 0");
                got.push((data.to_vec(), Some(p.size)));
                open = (!p.last).then_some((p.size, 1));
            }
            (Some(p), Some((size, index))) => {
                assert_eq!((p.size, p.index), (size, index), "fragments agree and count up");
                got.last_mut().unwrap().0.extend_from_slice(data);
                open = (!p.last).then_some((size, index + 1));
            }
            (None, Some(_)) => panic!("a whole datagram inside a fragmented one"),
        }
        let (sofar, size) = got.last().unwrap();
        if let Some(size) = size {
            assert!(sofar.len() as u64 <= *size, "fragments add up to more than the datagram");
            if open.is_none() {
                assert_eq!(sofar.len() as u64, *size, "the last fragment completes the datagram");
            }
        }
    }
    let complete = got.len() - usize::from(open.is_some());
    for (i, (g, _)) in got[..complete].iter().enumerate() {
        assert!(want.get(i) == Some(&g.as_slice()), "datagram {i} comes out as it went in");
    }
    if bad_header {
        assert!(run.error.is_some(), "a bad header fails the stream");
        assert_eq!(complete, want.len(), "every datagram before the bad header came out");
        return;
    }
    assert_eq!(run.error, None);
    match unfinished {
        // Cut off by the end of the stream: what came went out as fragments.
        Some((size, body)) => {
            assert_eq!(complete, want.len());
            if !body.is_empty() {
                let (last, s) = got.last().expect("the unfinished datagram's fragments");
                assert_eq!((last.as_slice(), *s), (body, Some(size)));
            }
            assert_eq!(run.left, 0);
        }
        None => {
            assert_eq!(complete, want.len(), "every datagram came out");
            assert!(open.is_none());
            assert_eq!(run.left, rest.len(), "only an unfinished header is left over");
        }
    }
}

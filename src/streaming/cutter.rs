//! Cuts one stream's bytes into log entries: text lines, binary blocks, datagrams.
//!
//! Synchronous and clock-free (times come in with the data) so every rule is unit-testable. The
//! stream task reads straight into [`Cutter::buf`], tells the cutter when, and asks for entries.

use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;

use super::entry::{Content, LogEntry, Partial, StreamType};
use super::handshake::get_uvarint;

/// Binary data goes out once more than this is buffered (or when it has waited the buffer age).
pub(crate) const BINARY_THRESHOLD: usize = 8 * 1024;
/// Largest datagram a client may send.
pub(crate) const MAX_DATAGRAM: u64 = 10 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum CutError {
    #[error("datagram length header overflows a 64-bit integer")]
    DatagramHeader,
    #[error("datagram of {0} bytes exceeds the maximum of {MAX_DATAGRAM}")]
    DatagramTooLarge(u64),
}

#[derive(Debug, Clone, Copy)]
struct DatagramState {
    size: u64,
    emitted: u64,
    fragment: u32,
}

/// Per-stream cutting state.
#[derive(Debug)]
pub(crate) struct Cutter {
    kind: StreamType,
    base: SystemTime,
    /// Largest payload one entry carries (bounds memory per stream and keeps bundles in size).
    max_entry: usize,
    /// Bytes read but not yet in an entry.
    pending: BytesMut,
    /// When the oldest pending byte was read.
    pending_since: Option<(Instant, SystemTime)>,
    /// The latest read and its size: a leftover no longer than it dates from it.
    last_read: Option<((Instant, SystemTime), usize)>,
    next_stream_index: u64,
    last_offset: Duration,
    /// Text: complete lines so far; binary: bytes so far; datagram: datagrams so far.
    sequence: u64,
    datagram: Option<DatagramState>,
    failed: bool,
}

impl Cutter {
    pub(crate) fn new(kind: StreamType, base: SystemTime, max_entry: usize) -> Self {
        Cutter {
            kind,
            base,
            // Room for a held `\r` plus an unfinished UTF-8 sequence, so a forced cut always
            // makes progress.
            max_entry: max_entry.max(8),
            pending: BytesMut::new(),
            pending_since: None,
            last_read: None,
            next_stream_index: 0,
            last_offset: Duration::ZERO,
            sequence: 0,
            datagram: None,
            failed: false,
        }
    }

    /// Where the next read goes; call [`Cutter::appended`] after it.
    pub(crate) fn buf(&mut self) -> &mut BytesMut {
        &mut self.pending
    }

    /// Records that `n` bytes were just appended to [`Cutter::buf`] at `now`.
    pub(crate) fn appended(&mut self, n: usize, now: (Instant, SystemTime)) {
        if n > 0 {
            if self.pending_since.is_none() {
                self.pending_since = Some(now);
            }
            self.last_read = Some((now, n));
        }
    }

    /// Appends bytes (for callers that do not read into [`Cutter::buf`]).
    pub(crate) fn push(&mut self, data: &[u8], now: (Instant, SystemTime)) {
        self.pending.extend_from_slice(data);
        self.appended(data.len(), now);
    }

    #[cfg(test)]
    pub(crate) fn buffered(&self) -> usize {
        self.pending.len()
    }

    /// When the oldest unsent byte was read, if any is waiting.
    pub(crate) fn pending_since(&self) -> Option<Instant> {
        self.pending_since.map(|(i, _)| i)
    }

    /// Index the next entry will get (= entries emitted so far).
    pub(crate) fn next_stream_index(&self) -> u64 {
        self.next_stream_index
    }

    /// Cuts what is ready. `aggressive` (the data has waited the buffer age, or no buffering)
    /// also takes partial lines, small binary pieces and datagram fragments.
    pub(crate) fn cut(
        &mut self,
        aggressive: bool,
        out: &mut Vec<LogEntry>,
    ) -> Result<(), CutError> {
        if self.failed {
            return Ok(());
        }
        let res = match self.kind {
            StreamType::Text => {
                self.cut_text(aggressive, false, out);
                Ok(())
            }
            StreamType::Binary => {
                self.cut_binary(aggressive, out);
                Ok(())
            }
            StreamType::Datagram => self.cut_datagrams(aggressive, out),
        };
        if res.is_err() {
            self.failed = true;
            self.pending.clear();
        }
        self.settle_time();
        if aggressive && !self.pending.is_empty() {
            // What an aggressive cut leaves (a held `\r`, half a UTF-8 sequence or varint) can
            // only go out with more data: no age timer for it, or the stream task would spin.
            self.pending_since = None;
        }
        res
    }

    /// At end of stream: everything left goes out (text: even invalid UTF-8 or a lone `\r`).
    /// Returns how many bytes could not form an entry (an unfinished datagram).
    pub(crate) fn finish(&mut self, out: &mut Vec<LogEntry>) -> Result<usize, CutError> {
        if self.failed {
            return Ok(0);
        }
        if self.kind == StreamType::Text {
            self.cut_text(true, true, out);
            self.pending_since = None;
            return Ok(0);
        }
        self.cut(true, out)?;
        let left = self.pending.len();
        self.pending.clear();
        self.pending_since = None;
        Ok(left)
    }

    /// After a cut: the leftover's age is that of the read it came from.
    fn settle_time(&mut self) {
        if self.pending.is_empty() {
            self.pending_since = None;
        } else if let Some((t, n)) = self.last_read
            && self.pending.len() <= n
        {
            self.pending_since = Some(t);
        }
    }

    fn emit(&mut self, content: Content, out: &mut Vec<LogEntry>) {
        let wall = self.pending_since.map(|(_, w)| w).unwrap_or(self.base);
        let offset = wall.duration_since(self.base).unwrap_or(Duration::ZERO).max(self.last_offset);
        self.last_offset = offset;
        let sequence = self.sequence;
        self.sequence += match &content {
            Content::Text { newlines, .. } => *newlines,
            Content::Binary(d) => d.len() as u64,
            Content::Datagram { partial, .. } => u64::from(partial.is_none_or(|p| p.last)),
        };
        out.push(LogEntry {
            prefix_index: 0,
            stream_index: self.next_stream_index,
            sequence,
            time_offset: offset,
            content,
        });
        self.next_stream_index += 1;
    }

    fn cut_text(&mut self, aggressive: bool, closing: bool, out: &mut Vec<LogEntry>) {
        loop {
            // Whole lines, at most `max_entry` bytes an entry.
            let window = self.pending.len().min(self.max_entry);
            if let Some(last_nl) = memchr::memrchr(b'\n', &self.pending[..window]) {
                let data = self.pending.split_to(last_nl + 1).freeze();
                let newlines = count_newlines(&data);
                self.emit(Content::Text { data, newlines }, out);
                continue;
            }
            // What is left starts with one unfinished line.
            let forced = self.pending.len() >= self.max_entry;
            if self.pending.is_empty() || !(aggressive || closing || forced) {
                return;
            }
            let take = if closing {
                window
            } else {
                let mut end = window;
                // A trailing `\r` may be the start of a `\r\n` delimiter: hold it back.
                if self.pending[end - 1] == b'\r' {
                    end -= 1;
                }
                utf8_boundary(&self.pending[..end])
            };
            if take == 0 {
                return;
            }
            let data = self.pending.split_to(take).freeze();
            self.emit(Content::Text { data, newlines: 0 }, out);
        }
    }

    fn cut_binary(&mut self, aggressive: bool, out: &mut Vec<LogEntry>) {
        if !aggressive && self.pending.len() <= BINARY_THRESHOLD {
            return;
        }
        while !self.pending.is_empty() {
            let n = self.pending.len().min(self.max_entry);
            let data = self.pending.split_to(n).freeze();
            self.emit(Content::Binary(data), out);
        }
    }

    fn cut_datagrams(&mut self, aggressive: bool, out: &mut Vec<LogEntry>) -> Result<(), CutError> {
        loop {
            let st = match self.datagram {
                Some(st) => st,
                None => {
                    let header = match get_uvarint(&self.pending) {
                        Ok(Some(h)) => h,
                        Ok(None) => return Ok(()),
                        Err(_) => return Err(CutError::DatagramHeader),
                    };
                    let (size, used) = header;
                    if size > MAX_DATAGRAM {
                        return Err(CutError::DatagramTooLarge(size));
                    }
                    let _ = self.pending.split_to(used);
                    let st = DatagramState { size, emitted: 0, fragment: 0 };
                    self.datagram = Some(st);
                    st
                }
            };
            let avail = self.pending.len() as u64;
            let remaining = st.size - st.emitted;
            if st.emitted == 0 && avail >= st.size && st.size <= self.max_entry as u64 {
                let data = self.pending.split_to(st.size as usize).freeze();
                self.datagram = None;
                self.emit(Content::Datagram { data, partial: None }, out);
                continue;
            }
            let full_piece = remaining.min(self.max_entry as u64);
            if avail >= full_piece || (aggressive && avail > 0) {
                let n = avail.min(full_piece);
                let data = self.pending.split_to(n as usize).freeze();
                let last = st.emitted + n == st.size;
                let partial = Partial { index: st.fragment, size: st.size, last };
                self.datagram = if last {
                    None
                } else {
                    Some(DatagramState {
                        size: st.size,
                        emitted: st.emitted + n,
                        fragment: st.fragment + 1,
                    })
                };
                self.emit(Content::Datagram { data, partial: Some(partial) }, out);
                continue;
            }
            return Ok(());
        }
    }
}

/// How many `\n` are in `b`. This pass over every byte of text is most of what ingestion adds to
/// the socket read, so it is written for the vectoriser: byte-wide counters need no per-match work
/// or horizontal step (about 1.5x memchr's count on the reader's still-cached data).
pub(crate) fn count_newlines(b: &[u8]) -> u64 {
    const LANES: usize = 64;
    let mut total = 0u64;
    // A lane takes at most one match per block: 255 blocks fill it.
    for run in b.chunks(LANES * 255) {
        let mut lanes = [0u8; LANES];
        let mut blocks = run.chunks_exact(LANES);
        for block in &mut blocks {
            // A fixed-size block is what lets the compiler unroll and vectorise the lanes.
            let block: &[u8; LANES] = block.try_into().expect("chunks_exact yields LANES bytes");
            for (lane, &byte) in lanes.iter_mut().zip(block) {
                *lane += u8::from(byte == b'\n');
            }
        }
        total += lanes.iter().map(|&n| u64::from(n)).sum::<u64>();
        total += blocks.remainder().iter().filter(|&&byte| byte == b'\n').count() as u64;
    }
    total
}

/// The longest prefix of `b` that does not end inside a UTF-8 sequence. Invalid bytes count as
/// complete (they will never become valid), so only a genuinely unfinished sequence is held.
fn utf8_boundary(b: &[u8]) -> usize {
    let n = b.len();
    for back in 1..=n.min(4) {
        let c = b[n - back];
        if c & 0xC0 == 0x80 {
            continue; // continuation byte: keep looking for the lead
        }
        let need = match c {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => 1,
        };
        return if need > back { n - back } else { n };
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> (Instant, SystemTime) {
        (Instant::now(), SystemTime::now())
    }

    fn text_of(entries: &[LogEntry]) -> Vec<Vec<u8>> {
        entries.iter().map(|e| e.content.data().to_vec()).collect()
    }

    #[test]
    fn text_whole_lines_wait_for_their_end() {
        let mut c = Cutter::new(StreamType::Text, SystemTime::now(), 1 << 20);
        let mut out = Vec::new();
        c.push(b"a\r\nb\nc", now());
        c.cut(false, &mut out).unwrap();
        assert_eq!(text_of(&out), vec![b"a\r\nb\n".to_vec()]);
        assert_eq!((out[0].sequence, out[0].stream_index), (0, 0));
        c.push(b"c\rd", now());
        c.cut(false, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        c.cut(true, &mut out).unwrap();
        assert_eq!(text_of(&out[1..]), vec![b"cc\rd".to_vec()]);
        c.push(b"\r", now());
        c.cut(true, &mut out).unwrap();
        assert_eq!(out.len(), 2, "a trailing \\r waits for a possible \\n");
        c.push(b"\nx", now());
        c.cut(false, &mut out).unwrap();
        assert_eq!(text_of(&out[2..]), vec![b"\r\n".to_vec()]);
        assert_eq!(out[2].sequence, 2, "the partial line did not advance the line index");
        c.finish(&mut out).unwrap();
        assert_eq!(text_of(&out[3..]), vec![b"x".to_vec()]);
        assert_eq!(out[3].sequence, 3);
        let idx: Vec<u64> = out.iter().map(|e| e.stream_index).collect();
        assert_eq!(idx, vec![0, 1, 2, 3]);
    }

    #[test]
    fn text_partial_lines_cut_on_utf8_boundaries_but_close_flushes_everything() {
        let mut c = Cutter::new(StreamType::Text, SystemTime::now(), 1 << 20);
        let mut out = Vec::new();
        c.push("ab€".as_bytes(), now());
        c.buf().truncate(4); // "ab" + first byte of the euro sign
        c.cut(true, &mut out).unwrap();
        assert_eq!(text_of(&out), vec![b"ab".to_vec()]);
        c.cut(true, &mut out).unwrap();
        assert_eq!(out.len(), 1, "an unfinished sequence waits");
        assert_eq!(c.pending_since(), None, "and arms no timer until more data comes");
        c.push(&[0xff, 0xe2], now());
        c.finish(&mut out).unwrap();
        assert_eq!(text_of(&out[1..]), vec![vec![0xe2, 0x82, 0xff, 0xe2]]);
        assert_eq!(c.buffered(), 0);
    }

    #[test]
    fn long_lines_are_split_at_max_entry() {
        let mut c = Cutter::new(StreamType::Text, SystemTime::now(), 100);
        let mut out = Vec::new();
        c.push(&[b'x'; 250], now());
        c.cut(false, &mut out).unwrap();
        c.cut(false, &mut out).unwrap();
        assert!(out.iter().all(|e| e.content.data().len() <= 100));
        assert!(c.buffered() < 100);
    }

    #[test]
    fn binary_threshold_and_age() {
        let mut c = Cutter::new(StreamType::Binary, SystemTime::now(), 1 << 20);
        let mut out = Vec::new();
        c.push(&[1; 8192], now());
        c.cut(false, &mut out).unwrap();
        assert!(out.is_empty());
        c.push(&[2; 1], now());
        c.cut(false, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        c.push(&[3; 5], now());
        c.cut(true, &mut out).unwrap();
        assert_eq!(out[1].sequence, 8193);
        assert_eq!(out[1].content.data().len(), 5);
    }

    #[test]
    fn datagrams_whole_fragmented_and_bad() {
        let mut c = Cutter::new(StreamType::Datagram, SystemTime::now(), 8);
        let mut out = Vec::new();
        c.push(&[0, 2, b'h', b'i', 10, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10], now());
        c.cut(false, &mut out).unwrap();
        let got: Vec<_> = out
            .iter()
            .map(|e| match &e.content {
                Content::Datagram { data, partial } => (e.sequence, data.to_vec(), *partial),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(got[0], (0, vec![], None));
        assert_eq!(got[1], (1, b"hi".to_vec(), None));
        assert_eq!(
            got[2],
            (2, vec![1, 2, 3, 4, 5, 6, 7, 8], Some(Partial { index: 0, size: 10, last: false }))
        );
        assert_eq!(got[3], (2, vec![9, 10], Some(Partial { index: 1, size: 10, last: true })));
        c.push(&[0xff; 11], now());
        assert_eq!(c.cut(false, &mut out), Err(CutError::DatagramHeader));
        let mut c = Cutter::new(StreamType::Datagram, SystemTime::now(), 8);
        let mut v = Vec::new();
        crate::streaming::handshake::put_uvarint(&mut v, MAX_DATAGRAM + 1);
        c.push(&v, now());
        assert_eq!(c.cut(false, &mut out), Err(CutError::DatagramTooLarge(MAX_DATAGRAM + 1)));
        let mut c = Cutter::new(StreamType::Datagram, SystemTime::now(), 8);
        c.push(&[3, 1], now());
        let mut out = Vec::new();
        assert_eq!(c.finish(&mut out).unwrap(), 0, "the started datagram went out as a fragment");
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn time_offsets_never_decrease() {
        let base = SystemTime::now();
        let mut c = Cutter::new(StreamType::Text, base, 1 << 20);
        let mut out = Vec::new();
        c.push(b"a\n", (Instant::now(), base + Duration::from_secs(5)));
        c.cut(false, &mut out).unwrap();
        c.push(b"b\n", (Instant::now(), base + Duration::from_secs(1)));
        c.cut(false, &mut out).unwrap();
        assert_eq!(out[0].time_offset, Duration::from_secs(5));
        assert_eq!(out[1].time_offset, Duration::from_secs(5));
    }

    #[test]
    fn newline_counts_match_a_plain_count_across_block_and_run_boundaries() {
        // Lengths across the 64-byte blocks and the 255-block runs, dense and sparse newlines.
        let data: Vec<u8> =
            (0..40_000u32).map(|i| if i % 7 == 0 || i % 64 == 63 { b'\n' } else { b'a' }).collect();
        let all = vec![b'\n'; 20_000];
        for d in [&data[..], &all[..]] {
            for start in 0..3 {
                for end in (start..d.len()).step_by(61).chain([d.len()]) {
                    let b = &d[start..end];
                    let plain = b.iter().filter(|&&c| c == b'\n').count() as u64;
                    assert_eq!(count_newlines(b), plain, "bytes {start}..{end}");
                }
            }
        }
    }

    #[test]
    fn utf8_boundaries() {
        assert_eq!(utf8_boundary("a€".as_bytes()), 4);
        assert_eq!(utf8_boundary(&"a€".as_bytes()[..3]), 1);
        assert_eq!(utf8_boundary(&[0xff]), 1);
        assert_eq!(utf8_boundary(&[0xf0, 0x9f, 0x98]), 0);
        assert_eq!(utf8_boundary(&[]), 0);
    }
}

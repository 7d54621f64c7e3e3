//! Newline-delimited framing with a length limit: memory stays bounded whatever the peer sends.

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// What the next read produced.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// One line, without its `\n` (a final line without `\n` at EOF counts too).
    Line(Vec<u8>),
    /// A line longer than the limit was skipped up to and including its `\n`; `usize` is how
    /// many bytes were dropped (at least the limit).
    TooLong(usize),
    Eof,
}

/// The largest line buffer kept for the next line.
const RECYCLED_LINE: usize = 4 * 1024;

pub(crate) struct LineReader<R> {
    inner: BufReader<R>,
    max: usize,
    line: Vec<u8>,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    /// `max` is the longest line accepted, in bytes, not counting the `\n`.
    pub(crate) fn new(inner: R, max: usize) -> Self {
        // A small buffer keeps idle (and unauthenticated) connections cheap; long lines grow
        // `line` instead, and a 4 KiB read still holds dozens of pipelined requests.
        LineReader { inner: BufReader::with_capacity(4 * 1024, inner), max, line: Vec::new() }
    }

    /// Changes the longest line accepted from the next line on (larger once authenticated).
    pub(crate) fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// Gives back a line's buffer once it is handled, so the next line need not allocate (a
    /// small one only: an idle connection keeps it).
    pub(crate) fn recycle(&mut self, frame: std::io::Result<Frame>) {
        if let Ok(Frame::Line(mut line)) = frame
            && line.capacity() <= RECYCLED_LINE
            && self.line.is_empty()
        {
            line.clear();
            self.line = line;
        }
    }

    /// Whether a whole line is buffered, so [`next`](Self::next) answers without reading.
    pub(crate) fn has_line(&self) -> bool {
        memchr::memchr(b'\n', self.inner.buffer()).is_some()
    }

    /// Nothing read and not yet framed: no partial line, no buffered bytes.
    pub(crate) fn is_empty(&self) -> bool {
        self.line.is_empty() && self.inner.buffer().is_empty()
    }

    /// The reader, once [`is_empty`](Self::is_empty): nothing read from it is lost.
    pub(crate) fn into_inner(self) -> R {
        debug_assert!(self.is_empty(), "buffered bytes would be lost");
        self.inner.into_inner()
    }

    pub(crate) async fn next(&mut self) -> std::io::Result<Frame> {
        let mut skipped: Option<usize> = None;
        loop {
            let buf = self.inner.fill_buf().await?;
            if buf.is_empty() {
                if let Some(n) = skipped {
                    return Ok(Frame::TooLong(n));
                }
                if self.line.is_empty() {
                    return Ok(Frame::Eof);
                }
                return Ok(Frame::Line(std::mem::take(&mut self.line)));
            }
            let (chunk, found) = match memchr::memchr(b'\n', buf) {
                Some(i) => (&buf[..i], true),
                None => (buf, false),
            };
            let used = chunk.len() + usize::from(found);
            match skipped.as_mut() {
                Some(n) => *n += chunk.len(),
                None if self.line.len() + chunk.len() > self.max => {
                    skipped = Some(self.line.len() + chunk.len());
                    self.line = Vec::new();
                }
                None => self.line.extend_from_slice(chunk),
            }
            self.inner.consume(used);
            if found {
                return Ok(match skipped {
                    Some(n) => Frame::TooLong(n),
                    None => {
                        let line = std::mem::take(&mut self.line);
                        Frame::Line(line)
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    async fn frames(input: &[u8], max: usize) -> Vec<Frame> {
        let mut r = LineReader::new(input, max);
        let mut out = Vec::new();
        loop {
            let f = r.next().await.unwrap();
            if f == Frame::Eof {
                return out;
            }
            out.push(f);
        }
    }

    #[tokio::test]
    async fn splits_lines_and_keeps_a_final_unterminated_one() {
        let got = frames(b"a\nbb\n\nccc", 10).await;
        assert_eq!(
            got,
            vec![
                Frame::Line(b"a".to_vec()),
                Frame::Line(b"bb".to_vec()),
                Frame::Line(vec![]),
                Frame::Line(b"ccc".to_vec())
            ]
        );
    }

    #[tokio::test]
    async fn skips_an_oversized_line_and_recovers_at_the_next_newline() {
        let mut input = vec![b'x'; 100_000];
        input.extend_from_slice(b"\nok\n");
        let got = frames(&input, 1000).await;
        assert_eq!(got, vec![Frame::TooLong(100_000), Frame::Line(b"ok".to_vec())]);
    }

    #[tokio::test]
    async fn a_line_exactly_at_the_limit_is_accepted() {
        let got = frames(b"12345\n123456\n", 5).await;
        assert_eq!(got, vec![Frame::Line(b"12345".to_vec()), Frame::TooLong(6)]);
    }

    /// Hands out its bytes in the chunk sizes given, like a socket would.
    struct Chunked {
        data: Vec<u8>,
        pos: usize,
        sizes: Vec<usize>,
        next: usize,
    }

    impl AsyncRead for Chunked {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let size = self.sizes.get(self.next % self.sizes.len().max(1)).copied().unwrap_or(1);
            self.next += 1;
            let end = (self.pos + size.max(1)).min(self.data.len()).min(self.pos + buf.remaining());
            buf.put_slice(&self.data[self.pos..end]);
            self.pos = end;
            std::task::Poll::Ready(Ok(()))
        }
    }

    proptest! {
        #[test]
        fn every_line_comes_out_whole_or_is_reported_too_long(
            lines in vec(vec(any::<u8>().prop_filter("no newline", |b| *b != b'\n'), 0..300), 0..20),
            max in 1usize..200,
            sizes in vec(1usize..70, 1..10),
            terminated in any::<bool>(),
        ) {
            let mut data = lines.join(&b'\n');
            if terminated && !lines.is_empty() {
                data.push(b'\n');
            }
            let reader = Chunked { data, pos: 0, sizes, next: 0 };
            let got = tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
                let mut r = LineReader::new(reader, max);
                let mut out = Vec::new();
                loop {
                    match r.next().await.unwrap() {
                        Frame::Eof => return out,
                        f => out.push(f),
                    }
                }
            });
            // A trailing empty unterminated line is no line at all.
            let mut expected: Vec<Frame> = lines
                .iter()
                .map(|l| if l.len() > max { Frame::TooLong(l.len()) } else { Frame::Line(l.clone()) })
                .collect();
            if !terminated && lines.last().is_some_and(Vec::is_empty) {
                expected.pop();
            }
            prop_assert_eq!(got, expected);
        }
    }
}

//! Delayed ACKs against clients that split their writes. The official `@itchio/butlerd` client
//! writes each message, then its `"\n"` in a second write, with Nagle's algorithm on: the newline
//! waits until the message is ACKed, and the kernel delays that ACK (40 ms on Linux) because we
//! have nothing to send until the newline comes. Every call paid that wait.
//!
//! [`QuickAck`] wraps a connection's read half: whenever a read ends inside a line, it sets
//! `TCP_QUICKACK`, which makes Linux send the pending ACK at once. Linux clears the flag by
//! itself, so it is set again after every such read; reads that end on a newline need nothing,
//! since the reply carries the ACK. Elsewhere the wrapper only passes reads through (macOS has no
//! per-socket switch; Windows' `SIO_TCP_SET_ACK_FREQUENCY` is not wired up yet).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::tcp::OwnedReadHalf;

/// A TCP read half that asks for immediate ACKs while a line is incomplete.
#[derive(Debug)]
pub(crate) struct QuickAck {
    inner: OwnedReadHalf,
}

impl QuickAck {
    pub(crate) fn new(inner: OwnedReadHalf) -> Self {
        let q = QuickAck { inner };
        q.arm();
        q
    }

    pub(crate) fn into_inner(self) -> OwnedReadHalf {
        self.inner
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn arm(&self) {
        use std::os::fd::AsRawFd;
        let fd = self.inner.as_ref().as_raw_fd();
        let on: libc::c_int = 1;
        // SAFETY: `fd` is this connection's open socket for as long as `self` lives, and the
        // option value is a c_int on the stack whose size is passed along.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                (&raw const on).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            tracing::debug!("TCP_QUICKACK: {}", io::Error::last_os_error());
        }
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    fn arm(&self) {}
}

impl AsyncRead for QuickAck {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled
            && buf.filled()[before..].last().is_some_and(|&b| b != b'\n')
        {
            self.arm();
        }
        polled
    }
}

//! The stream server: accepts local clients, reads each one's handshake (with a timeout) and
//! hands the connection to the butler as a stream. Nothing is ever written back.

use std::time::Duration;

use tokio::io::AsyncRead;
use tokio_util::sync::CancellationToken;

use super::address::{Address, AddressError};
use super::butler::ButlerHandle;
use super::handshake;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Address(#[from] AddressError),
    #[error("cannot listen on {uri}: {source}")]
    Listen { uri: String, source: std::io::Error },
}

/// A listening stream server. A unix socket file is removed when it is dropped.
#[derive(Debug)]
pub struct StreamServer {
    listener: Listener,
    address: Address,
    uri: String,
}

impl StreamServer {
    /// Listens at `uri` (`unix:<path>` or `net.pipe:<name>`, or a fresh address when `None`),
    /// replacing a stale socket file.
    pub fn bind(uri: Option<&str>) -> Result<StreamServer, ServerError> {
        let address = Address::resolve(uri)?;
        let uri = address.uri();
        let listener = Listener::bind(&address)
            .map_err(|source| ServerError::Listen { uri: uri.clone(), source })?;
        Ok(StreamServer { listener, address, uri })
    }

    /// The address clients use (`LOGDOG_STREAM_SERVER_PATH`).
    pub fn uri(&self) -> &str {
        &self.uri
    }

    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Accepts clients until `stop` is cancelled. Every handshake runs in its own task, bounded
    /// by `handshake_timeout`, so a silent client can never hold anything up. When stopped, clients
    /// already connected (in the backlog or mid-handshake) get a short grace to finish their
    /// handshake, so a client that connected and wrote before the signal loses nothing.
    pub async fn run(
        mut self,
        butler: ButlerHandle,
        handshake_timeout: Duration,
        stop: CancellationToken,
    ) {
        let grace = butler.config().drain_idle;
        let handshakes = tokio_util::task::TaskTracker::new();
        let limits = Limits::default();
        loop {
            // Past the caps, clients wait in the backlog (and their writes block) until a slot
            // frees: memory stays bounded, and nothing is dropped.
            let slot = tokio::select! {
                s = limits.slot() => s,
                () = stop.cancelled() => break,
            };
            let conn = tokio::select! {
                c = self.listener.accept() => c,
                () = stop.cancelled() => break,
            };
            match conn {
                Ok(c) => {
                    let c = Held { conn: c, _slot: slot.0 };
                    let hs = slot.1;
                    spawn_handshake(&handshakes, &butler, c, hs, handshake_timeout, &stop, grace)
                }
                Err(e) => {
                    tracing::warn!("stream server accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        // Whoever is still in the backlog connected before we stopped.
        while let Some(slot) = limits.try_slot()
            && let Ok(Ok(c)) =
                tokio::time::timeout(Duration::from_millis(5), self.listener.accept()).await
        {
            let (c, hs) = (Held { conn: c, _slot: slot.0 }, slot.1);
            spawn_handshake(&handshakes, &butler, c, hs, handshake_timeout, &stop, grace);
        }
        handshakes.close();
        handshakes.wait().await;
    }
}

/// Caps on what clients can make the server hold: a handshake buffers up to 1 MiB, and a stream
/// a partial line, so both are counted.
#[derive(Debug)]
struct Limits {
    streams: std::sync::Arc<tokio::sync::Semaphore>,
    handshakes: std::sync::Arc<tokio::sync::Semaphore>,
}

/// Clients connected at once (each a stream, or a stream-to-be).
const MAX_STREAMS: usize = 1024;
/// Handshakes in progress at once.
const MAX_HANDSHAKES: usize = 64;

type Permit = tokio::sync::OwnedSemaphorePermit;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            streams: std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS)),
            handshakes: std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES)),
        }
    }
}

impl Limits {
    /// A stream slot and a handshake slot, once both are free.
    async fn slot(&self) -> (Permit, Permit) {
        let stream = self.streams.clone().acquire_owned().await.expect("never closed");
        let handshake = self.handshakes.clone().acquire_owned().await.expect("never closed");
        (stream, handshake)
    }

    fn try_slot(&self) -> Option<(Permit, Permit)> {
        let stream = self.streams.clone().try_acquire_owned().ok()?;
        Some((stream, self.handshakes.clone().try_acquire_owned().ok()?))
    }
}

/// A client connection that holds its stream slot for as long as it lives.
struct Held<C> {
    conn: C,
    _slot: Permit,
}

impl<C: AsyncRead + Unpin> AsyncRead for Held<C> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.conn).poll_read(cx, buf)
    }
}

fn spawn_handshake<C: AsyncRead + Send + Unpin + 'static>(
    tasks: &tokio_util::task::TaskTracker,
    butler: &ButlerHandle,
    mut conn: C,
    handshake_slot: Permit,
    handshake_timeout: Duration,
    stop: &CancellationToken,
    grace: Duration,
) {
    let guard = butler.begin_activity();
    let butler = butler.clone();
    let stop = stop.clone();
    tasks.spawn(async move {
        let stopped = async {
            stop.cancelled().await;
            tokio::time::sleep(grace).await;
        };
        let res = tokio::select! {
            r = tokio::time::timeout(handshake_timeout, handshake::read(&mut conn)) => r,
            () = stopped => {
                tracing::warn!("dropping a client whose handshake was unfinished at shutdown");
                return;
            }
        };
        drop(handshake_slot);
        match res {
            Err(_) => tracing::warn!(
                "dropping a client that did not finish its handshake within {handshake_timeout:?}"
            ),
            Ok(Err(e)) => tracing::warn!("refusing a stream: {e}"),
            Ok(Ok((flags, initial))) => {
                let name = flags.name.clone();
                if let Err(e) = butler.add_stream(flags, conn, initial) {
                    tracing::warn!("refusing stream {name:?}: {e}");
                }
            }
        }
        drop(guard);
    });
}

#[cfg(unix)]
use unix_listener::Listener;

#[cfg(windows)]
use pipe_listener::Listener;

#[cfg(unix)]
mod unix_listener {
    use std::io;
    use std::path::PathBuf;

    use crate::streaming::address::{Address, AddressError};

    #[derive(Debug)]
    pub(super) struct Listener {
        socket: tokio::net::UnixListener,
        path: PathBuf,
    }

    impl Listener {
        pub(super) fn bind(address: &Address) -> io::Result<Listener> {
            let Address::Unix(path) = address else {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    AddressError::Unsupported("net.pipe"),
                ));
            };
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                use std::os::unix::fs::FileTypeExt;
                // Only a socket is "stale"; never delete someone's regular file.
                if meta.file_type().is_socket() {
                    let _ = std::fs::remove_file(path);
                }
            }
            let socket = tokio::net::UnixListener::bind(path)?;
            // Owner-only whatever the umask; the peer check below covers the instant before.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            Ok(Listener { socket, path: path.clone() })
        }

        /// The next client of our own user; others are dropped (they could only inject log
        /// streams under our name). Cancel-safe.
        pub(super) async fn accept(&mut self) -> io::Result<tokio::net::UnixStream> {
            loop {
                let (conn, _) = self.socket.accept().await?;
                // SAFETY: geteuid has no preconditions and cannot fail.
                let me = unsafe { libc::geteuid() };
                match conn.peer_cred() {
                    Ok(cred) if cred.uid() == me => return Ok(conn),
                    Ok(cred) => tracing::warn!(
                        "refusing a stream client of uid {} (this server is uid {me}'s)",
                        cred.uid()
                    ),
                    Err(e) => tracing::warn!("refusing a stream client of unknown uid: {e}"),
                }
            }
        }
    }

    impl Drop for Listener {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The stream server's end of `net.pipe:<name>`: the owner-only pipe listener the daemon's
/// `--transport net.pipe:` uses too.
#[cfg(windows)]
mod pipe_listener {
    use std::io;

    use tokio::net::windows::named_pipe::NamedPipeServer;

    use crate::streaming::address::{Address, AddressError};
    use crate::streaming::pipe::PipeListener;

    #[derive(Debug)]
    pub(super) struct Listener(PipeListener);

    impl Listener {
        pub(super) fn bind(address: &Address) -> io::Result<Listener> {
            let Address::Pipe(name) = address else {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    AddressError::Unsupported("unix"),
                ));
            };
            PipeListener::bind(name).map(Listener)
        }

        /// Cancel-safe.
        pub(super) async fn accept(&mut self) -> io::Result<NamedPipeServer> {
            self.0.accept().await
        }
    }
}

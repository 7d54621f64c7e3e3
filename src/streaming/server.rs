//! The stream server: accepts local clients, reads each one's handshake (with a timeout) and
//! hands the connection to the butler as a stream. Nothing is ever written back.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::butler::ButlerHandle;
use super::handshake;

/// Longest unix socket path (upstream's `maxPOSIXNamedSocketLength`).
pub const MAX_SOCKET_PATH: usize = 104;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("stream server address {0:?}: expected unix:<absolute path>")]
    BadAddress(String),
    #[error("stream server path {path} is {len} bytes long, more than {MAX_SOCKET_PATH}")]
    PathTooLong { path: String, len: usize },
    #[error("net.pipe stream servers exist on Windows only")]
    PipeUnsupported,
    #[error("cannot listen on {path}: {source}")]
    Listen { path: String, source: std::io::Error },
}

/// A listening stream server. The socket file is removed when it is dropped.
#[derive(Debug)]
pub struct StreamServer {
    #[cfg(unix)]
    listener: tokio::net::UnixListener,
    path: PathBuf,
    uri: String,
}

/// Parses `unix:<path>` (relative paths are made absolute); `None` for a fresh temp path.
pub fn parse_address(uri: Option<&str>) -> Result<PathBuf, ServerError> {
    let Some(uri) = uri.filter(|u| !u.is_empty()) else {
        let dir = std::env::temp_dir();
        let mut rnd = [0u8; 6];
        let _ = getrandom::fill(&mut rnd);
        let tag: String = rnd.iter().map(|b| format!("{b:02x}")).collect();
        return Ok(dir.join(format!("ld{}-{tag}.sock", std::process::id())));
    };
    let Some((proto, rest)) = uri.split_once(':') else {
        return Err(ServerError::BadAddress(uri.to_owned()));
    };
    match proto {
        "unix" if !rest.is_empty() => {
            let p = Path::new(rest);
            Ok(if p.is_absolute() {
                p.to_owned()
            } else {
                std::env::current_dir().map(|d| d.join(p)).unwrap_or_else(|_| p.to_owned())
            })
        }
        "net.pipe" => Err(ServerError::PipeUnsupported),
        _ => Err(ServerError::BadAddress(uri.to_owned())),
    }
}

#[cfg(unix)]
impl StreamServer {
    /// Listens at `uri` (`unix:<path>`, or a temp path when `None`), replacing a stale socket file.
    pub fn bind(uri: Option<&str>) -> Result<StreamServer, ServerError> {
        let path = parse_address(uri)?;
        let shown = path.display().to_string();
        if shown.len() > MAX_SOCKET_PATH {
            return Err(ServerError::PathTooLong { len: shown.len(), path: shown });
        }
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            use std::os::unix::fs::FileTypeExt;
            // Only a socket is "stale"; never delete someone's regular file.
            if meta.file_type().is_socket() {
                let _ = std::fs::remove_file(&path);
            }
        }
        let listener = tokio::net::UnixListener::bind(&path)
            .map_err(|source| ServerError::Listen { path: shown.clone(), source })?;
        Ok(StreamServer { listener, uri: format!("unix:{shown}"), path })
    }

    /// The address clients use (`LOGDOG_STREAM_SERVER_PATH`).
    pub fn uri(&self) -> &str {
        &self.uri
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts clients until `stop` is cancelled. Every handshake runs in its own task, bounded
    /// by `handshake_timeout`, so a silent client can never hold anything up. When stopped, clients
    /// already connected (in the backlog or mid-handshake) get a short grace to finish their
    /// handshake, so a client that connected and wrote before the signal loses nothing.
    pub async fn run(
        self,
        butler: ButlerHandle,
        handshake_timeout: Duration,
        stop: CancellationToken,
    ) {
        let grace = butler.config().drain_idle;
        let handshakes = tokio_util::task::TaskTracker::new();
        loop {
            let conn = tokio::select! {
                c = self.listener.accept() => c,
                () = stop.cancelled() => break,
            };
            match conn {
                Ok((c, _)) => {
                    spawn_handshake(&handshakes, &butler, c, handshake_timeout, &stop, grace)
                }
                Err(e) => {
                    tracing::warn!("stream server accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        // Whoever is still in the backlog connected before we stopped.
        while let Ok(Ok((c, _))) =
            tokio::time::timeout(Duration::from_millis(5), self.listener.accept()).await
        {
            spawn_handshake(&handshakes, &butler, c, handshake_timeout, &stop, grace);
        }
        handshakes.close();
        handshakes.wait().await;
    }
}

#[cfg(unix)]
fn spawn_handshake(
    tasks: &tokio_util::task::TaskTracker,
    butler: &ButlerHandle,
    mut conn: tokio::net::UnixStream,
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

impl Drop for StreamServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

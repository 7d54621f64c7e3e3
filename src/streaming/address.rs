//! Stream server addresses, `unix:<path>` and `net.pipe:<name>`: parsing and checking shared by
//! the server and the client, the address a butler picks when given none, and the client's
//! blocking connect.
//!
//! Unix sockets exist on unix only and named pipes on Windows only; an address of the other kind
//! parses but is refused by [`Address::resolve`] with a clear error.

use std::path::{Path, PathBuf};

/// Longest unix socket path (upstream's `maxPOSIXNamedSocketLength`).
pub const MAX_SOCKET_PATH: usize = 104;

/// Longest pipe path (`\\.\pipe\<name>`) Windows accepts.
pub const MAX_PIPE_PATH: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    #[error("stream server address {0:?}: expected unix:<path> or net.pipe:<name>")]
    Bad(String),
    #[error("stream server path {path} is {len} bytes long, more than {MAX_SOCKET_PATH}")]
    PathTooLong { path: String, len: usize },
    #[error("pipe name {name:?} makes a pipe path of {len} characters, more than {MAX_PIPE_PATH}")]
    PipeNameTooLong { name: String, len: usize },
    #[error("{0} stream servers do not exist on this platform")]
    Unsupported(&'static str),
}

/// Where a stream server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// `unix:<path>`; the path is absolute once resolved.
    Unix(PathBuf),
    /// `net.pipe:<name>`, the byte-mode pipe `\\.\pipe\<name>`.
    Pipe(String),
}

impl Address {
    /// Parses `unix:<path>` or `net.pipe:<name>`, checking syntax and the pipe path's length.
    pub fn parse(uri: &str) -> Result<Address, AddressError> {
        let bad = || AddressError::Bad(uri.to_owned());
        let (proto, rest) = uri.split_once(':').ok_or_else(bad)?;
        if rest.is_empty() {
            return Err(bad());
        }
        match proto {
            "unix" => Ok(Address::Unix(PathBuf::from(rest))),
            // A backslash would name another pipe (or a path below one).
            "net.pipe" if !rest.contains('\\') => {
                let len = pipe_path(rest).chars().count();
                if len > MAX_PIPE_PATH {
                    return Err(AddressError::PipeNameTooLong { name: rest.to_owned(), len });
                }
                Ok(Address::Pipe(rest.to_owned()))
            }
            _ => Err(bad()),
        }
    }

    /// `uri`, or a fresh address when it is `None` or empty; relative socket paths are made
    /// absolute (children may change directory), lengths are checked, and an address this
    /// platform cannot serve is refused.
    pub fn resolve(uri: Option<&str>) -> Result<Address, AddressError> {
        let address = match uri.filter(|u| !u.is_empty()) {
            Some(u) => Address::parse(u)?,
            None => Address::fresh(),
        };
        match address {
            Address::Unix(_) if cfg!(not(unix)) => Err(AddressError::Unsupported("unix")),
            Address::Pipe(_) if cfg!(not(windows)) => Err(AddressError::Unsupported("net.pipe")),
            Address::Unix(p) => {
                let p = absolute(&p);
                let shown = p.display().to_string();
                if shown.len() > MAX_SOCKET_PATH {
                    return Err(AddressError::PathTooLong { len: shown.len(), path: shown });
                }
                Ok(Address::Unix(p))
            }
            pipe @ Address::Pipe(_) => Ok(pipe),
        }
    }

    /// A new address no other butler uses: a socket in the temp folder on unix, a pipe named
    /// `logdog_butler.<pid>.<counter>` (upstream's form) on Windows.
    fn fresh() -> Address {
        if cfg!(windows) {
            use std::sync::atomic::{AtomicU64, Ordering};
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            return Address::Pipe(format!("logdog_butler.{}.{n}", std::process::id()));
        }
        let mut rnd = [0u8; 6];
        let _ = getrandom::fill(&mut rnd);
        let tag: String = rnd.iter().map(|b| format!("{b:02x}")).collect();
        Address::Unix(std::env::temp_dir().join(format!("ld{}-{tag}.sock", std::process::id())))
    }

    /// The form clients get in `LOGDOG_STREAM_SERVER_PATH`.
    pub fn uri(&self) -> String {
        match self {
            Address::Unix(p) => format!("unix:{}", p.display()),
            Address::Pipe(name) => format!("net.pipe:{name}"),
        }
    }

    /// Connects as a client; the connection is write-only in practice (the server never replies).
    pub fn connect(&self) -> std::io::Result<Connection> {
        connect(self)
    }
}

/// The Windows path of pipe `name`.
pub fn pipe_path(name: &str) -> String {
    format!(r"\\.\pipe\{name}")
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        return p.to_owned();
    }
    std::env::current_dir().map(|d| d.join(p)).unwrap_or_else(|_| p.to_owned())
}

/// A client's connection to a stream server.
#[cfg(unix)]
pub type Connection = std::os::unix::net::UnixStream;

/// A client's connection to a stream server.
#[cfg(windows)]
pub type Connection = std::fs::File;

#[cfg(unix)]
fn connect(address: &Address) -> std::io::Result<Connection> {
    match address {
        Address::Unix(path) => std::os::unix::net::UnixStream::connect(path),
        Address::Pipe(_) => Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            AddressError::Unsupported("net.pipe"),
        )),
    }
}

/// Opens the pipe for writing with anonymous impersonation (as upstream's Go client does), waiting
/// while every server instance is busy: the server makes a new instance after each accept, and a
/// client arriving in between gets ERROR_PIPE_BUSY. Upstream waits forever; we give up after a
/// few seconds so a wedged server cannot hang the client.
#[cfg(windows)]
fn connect(address: &Address) -> std::io::Result<Connection> {
    use std::os::windows::fs::OpenOptionsExt;
    use std::time::{Duration, Instant};
    const ERROR_PIPE_BUSY: i32 = 231;
    const SECURITY_ANONYMOUS: u32 = 0;
    const BUSY_WAIT: Duration = Duration::from_secs(5);
    let Address::Pipe(name) = address else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            AddressError::Unsupported("unix"),
        ));
    };
    let path = pipe_path(name);
    let deadline = Instant::now() + BUSY_WAIT;
    loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .security_qos_flags(SECURITY_ANONYMOUS)
            .open(&path)
        {
            Err(e) if e.raw_os_error() == Some(ERROR_PIPE_BUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_forms_and_refuses_the_rest() {
        assert_eq!(Address::parse("unix:/tmp/s").unwrap(), Address::Unix("/tmp/s".into()));
        assert_eq!(Address::parse("net.pipe:lb.1.0").unwrap(), Address::Pipe("lb.1.0".into()));
        for bad in ["", "unix:", "net.pipe:", "tcp:1.2.3.4:5", "/tmp/s", r"net.pipe:a\b"] {
            assert!(matches!(Address::parse(bad), Err(AddressError::Bad(_))), "{bad:?}");
        }
    }

    #[test]
    fn uri_round_trips() {
        for uri in ["unix:/tmp/x.sock", "net.pipe:logdog_butler.12.3"] {
            assert_eq!(Address::parse(uri).unwrap().uri(), uri);
        }
    }

    #[cfg(unix)]
    #[test]
    fn resolve_on_unix() {
        let fresh = Address::resolve(None).unwrap();
        assert!(matches!(&fresh, Address::Unix(p) if p.is_absolute()), "{fresh:?}");
        assert_ne!(fresh, Address::resolve(Some("")).unwrap(), "every fresh address differs");
        let rel = Address::resolve(Some("unix:rel.sock")).unwrap();
        assert_eq!(rel, Address::Unix(std::env::current_dir().unwrap().join("rel.sock")));
        let long = format!("unix:/{}", "x".repeat(MAX_SOCKET_PATH));
        assert!(matches!(Address::resolve(Some(&long)), Err(AddressError::PathTooLong { .. })));
        let pipe = Address::resolve(Some("net.pipe:p"));
        assert!(matches!(pipe, Err(AddressError::Unsupported("net.pipe"))), "{pipe:?}");
    }

    #[test]
    fn pipe_path_limit() {
        assert_eq!(pipe_path("lb.1.0"), r"\\.\pipe\lb.1.0");
        let longest = "n".repeat(MAX_PIPE_PATH - pipe_path("").len());
        assert!(Address::parse(&format!("net.pipe:{longest}")).is_ok());
        let over = Address::parse(&format!("net.pipe:{longest}n"));
        assert!(matches!(over, Err(AddressError::PipeNameTooLong { len: 257, .. })), "{over:?}");
    }
}

//! The client side: open text, binary and datagram streams on a butler's stream server, from the
//! `LOGDOG_*` environment as the Go and Python clients do.
//!
//! ```no_run
//! use std::io::Write;
//! let client = butler::streaming::streamclient::StreamClient::from_env()?;
//! let mut log = client.open_text("steps/compile")?;
//! writeln!(log, "hello")?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io::Write;

use super::address::{Address, AddressError, Connection};
use super::entry::StreamType;
use super::handshake::{StreamFlags, put_uvarint};
use super::names;

pub const ENV_STREAM_SERVER_PATH: &str = "LOGDOG_STREAM_SERVER_PATH";
pub const ENV_STREAM_PREFIX: &str = "LOGDOG_STREAM_PREFIX";
pub const ENV_STREAM_PROJECT: &str = "LOGDOG_STREAM_PROJECT";
pub const ENV_COORDINATOR_HOST: &str = "LOGDOG_COORDINATOR_HOST";
pub const ENV_NAMESPACE: &str = "LOGDOG_NAMESPACE";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("not running under a butler: {ENV_STREAM_SERVER_PATH} is not set")]
    NotBootstrapped,
    #[error(transparent)]
    Address(#[from] AddressError),
    #[error("invalid {what}: {source}")]
    Name { what: &'static str, source: names::NameError },
    #[error("invalid stream: {0}")]
    Flags(#[from] super::handshake::HandshakeError),
    #[error("stream server {path}: {source}")]
    Connect { path: String, source: std::io::Error },
}

/// Where streams go, and the namespace put in front of every name.
#[derive(Debug, Clone)]
pub struct StreamClient {
    address: Address,
    namespace: Option<String>,
    pub prefix: Option<String>,
    pub project: Option<String>,
    pub coordinator_host: Option<String>,
}

impl StreamClient {
    /// Reads `LOGDOG_STREAM_SERVER_PATH` (required), `LOGDOG_NAMESPACE`, `LOGDOG_STREAM_PREFIX`,
    /// `LOGDOG_STREAM_PROJECT` and `LOGDOG_COORDINATOR_HOST`.
    pub fn from_env() -> Result<Self, ClientError> {
        let var = |k| std::env::var(k).ok().filter(|v: &String| !v.is_empty());
        let uri = var(ENV_STREAM_SERVER_PATH).ok_or(ClientError::NotBootstrapped)?;
        let mut c = StreamClient::new(&uri, var(ENV_NAMESPACE).as_deref())?;
        if let Some(p) = var(ENV_STREAM_PREFIX) {
            names::validate_stream_name(&p)
                .map_err(|source| ClientError::Name { what: "prefix", source })?;
            c.prefix = Some(p);
        }
        if let Some(p) = var(ENV_STREAM_PROJECT) {
            names::validate_project(&p)
                .map_err(|source| ClientError::Name { what: "project", source })?;
            c.project = Some(p);
        }
        c.coordinator_host = var(ENV_COORDINATOR_HOST);
        Ok(c)
    }

    /// A client for `unix:<path>` (or `net.pipe:<name>` on Windows) with an optional namespace.
    pub fn new(uri: &str, namespace: Option<&str>) -> Result<Self, ClientError> {
        // Parsed first: an empty address is an error here, not a request for a fresh one.
        Address::parse(uri)?;
        let address = Address::resolve(Some(uri))?;
        let namespace =
            namespace.map(|n| n.trim_end_matches('/').to_owned()).filter(|n| !n.is_empty());
        if let Some(ns) = &namespace {
            names::validate_stream_name(ns)
                .map_err(|source| ClientError::Name { what: "namespace", source })?;
        }
        Ok(StreamClient { address, namespace, prefix: None, project: None, coordinator_host: None })
    }

    /// Opens a stream described by `flags` (the namespace is put in front of its name) and returns
    /// the connection to write its payload to; close it to end the stream.
    pub fn open(&self, mut flags: StreamFlags) -> Result<Connection, ClientError> {
        if let Some(ns) = &self.namespace {
            flags.name = format!("{ns}/{}", flags.name);
        }
        if flags.timestamp.is_none() {
            flags.timestamp = Some(std::time::SystemTime::now());
        }
        flags.validate()?;
        let connect = |source| ClientError::Connect { path: self.address.uri(), source };
        let mut sock = self.address.connect().map_err(connect)?;
        sock.write_all(&flags.encode()).map_err(connect)?;
        Ok(sock)
    }

    pub fn open_text(&self, name: &str) -> Result<Connection, ClientError> {
        self.open(StreamFlags::new(name, StreamType::Text))
    }

    pub fn open_binary(&self, name: &str) -> Result<Connection, ClientError> {
        self.open(StreamFlags::new(name, StreamType::Binary))
    }

    pub fn open_datagram(&self, name: &str) -> Result<DatagramStream, ClientError> {
        Ok(DatagramStream { sock: self.open(StreamFlags::new(name, StreamType::Datagram))? })
    }
}

/// A datagram stream: each [`DatagramStream::send`] is one datagram.
#[derive(Debug)]
pub struct DatagramStream {
    sock: Connection,
}

impl DatagramStream {
    pub fn send(&mut self, datagram: &[u8]) -> std::io::Result<()> {
        let mut h = Vec::with_capacity(10);
        put_uvarint(&mut h, datagram.len() as u64);
        self.sock.write_all(&h)?;
        self.sock.write_all(datagram)
    }
}

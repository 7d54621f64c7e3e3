//! The LogDog Butler: stream server, bundler, outputs and the `stream`/`serve`/`run`/`logs` commands.
//!
//! Layers, bottom up: [`names`] and [`timefmt`] (validation and formats), [`handshake`] (the
//! `BTLR1` wire protocol), `cutter` (bytes → log entries per stream type), [`butler`] (per-stream
//! tasks feeding one bundler task, feeding one output worker), [`output`] (where bundles go),
//! [`address`] (`unix:`/`net.pipe:` addresses), [`server`] (the stream server), [`store`] (reading the SQLite log store),
//! [`process`] (running a child with a stream server), [`streamclient`] (the client side),
//! [`viewer`] (`butler logs web`: a live log viewer in the browser over the store), and
//! [`cli`] (the commands). Generated protobuf types live in `proto` and never leave this module.

pub mod address;
pub mod butler;
pub(crate) mod cli;
pub(crate) mod cutter;
pub mod entry;
pub mod handshake;
#[cfg(windows)]
mod job;
pub mod names;
pub mod output;
#[cfg(windows)]
pub(crate) mod pipe;
pub(crate) mod process;
mod proto;
pub mod server;
pub(crate) mod store;
pub mod streamclient;
pub mod timefmt;
pub(crate) mod viewer;
#[cfg(unix)]
mod watchdog;
pub(crate) mod writers;

pub use butler::{Butler, ButlerConfig, ButlerHandle, StreamEvent, StreamObserver};
pub use entry::{Bundle, BundleEntry, Content, LogEntry, Partial, StreamInfo, StreamType};

//! The LogDog Butler: stream server, bundler, outputs and the `stream`/`serve`/`run`/`logs` commands.

pub mod cli;

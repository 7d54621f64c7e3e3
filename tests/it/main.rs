//! The one integration-test binary: every test runs the real `butler` executable.
//!
//! It runs on the Linux side only; the Windows build is driven from here too, under Wine
//! (`windows.rs`, `make test-windows`).
#![cfg(unix)]

mod architecture;
mod cli;
mod daemon;
mod fuzz;
mod live;
mod streaming;
mod streaming_logdog;
mod streaming_noloss;
mod upgrade;
mod util;
mod viewer;
mod windows;

//! The one integration-test binary: every test runs the real `butler` executable.
//!
//! It runs on the Linux side only; the Windows build is driven from here too, under Wine
//! (`windows.rs`, `make test-windows`).
#![cfg(unix)]

mod api;
mod architecture;
mod cli;
mod daemon;
mod disk_full;
mod fuzz;
mod live;
mod logdog_faults;
mod process_tree;
mod stream_follow;
mod streaming;
mod streaming_logdog;
mod streaming_noloss;
mod streams_paging;
mod upgrade;
mod util;
mod viewer;
mod windows;

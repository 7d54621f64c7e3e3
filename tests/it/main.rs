//! The one integration-test binary: every test runs the real `butler` executable.

mod cli;
mod daemon;
mod upgrade;
mod streaming;
mod util;
mod streaming_noloss;

//! The one integration-test binary: every test runs the real `butler` executable.

mod architecture;
mod cli;
mod daemon;
mod live;
mod streaming;
mod streaming_logdog;
mod streaming_noloss;
mod upgrade;
mod util;
mod viewer;

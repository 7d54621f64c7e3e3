//! The butlerd-compatible JSON-RPC 2.0 daemon.

use clap::Args;

use crate::cli::GlobalArgs;

#[derive(Debug, Args)]
pub struct DaemonArgs {}

pub fn run(_args: DaemonArgs, _global: &GlobalArgs) -> anyhow::Result<u8> {
    anyhow::bail!("not yet")
}

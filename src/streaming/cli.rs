//! The streaming commands: `butler stream`, `serve`, `run` and `logs`.

use clap::{Args, Subcommand};

use crate::cli::GlobalArgs;

#[derive(Debug, Args)]
pub struct StreamArgs {}

#[derive(Debug, Args)]
pub struct ServeArgs {}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The command to run and its arguments.
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum LogsCommand {
    /// List streams.
    Ls,
}

pub fn stream(_args: StreamArgs, _global: &GlobalArgs) -> anyhow::Result<u8> {
    anyhow::bail!("butler stream is not implemented yet")
}

pub fn serve(_args: ServeArgs, _global: &GlobalArgs) -> anyhow::Result<u8> {
    anyhow::bail!("butler serve is not implemented yet")
}

pub fn run(_args: RunArgs, _global: &GlobalArgs) -> anyhow::Result<u8> {
    anyhow::bail!("butler run is not implemented yet")
}

pub fn logs(_cmd: LogsCommand, _global: &GlobalArgs) -> anyhow::Result<u8> {
    anyhow::bail!("butler logs is not implemented yet")
}

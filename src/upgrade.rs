//! `butler upgrade`: the command-line face of the `butler-updater` crate.

use clap::Args;

use crate::cli::GlobalArgs;
use crate::report::Reporter;

#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// Only check whether a newer version exists.
    #[arg(long)]
    pub check: bool,
}

pub fn run(_args: UpgradeArgs, _global: &GlobalArgs, _reporter: Reporter) -> anyhow::Result<u8> {
    anyhow::bail!("butler upgrade is not implemented yet")
}

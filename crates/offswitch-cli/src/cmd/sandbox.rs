//! `offswitch sandbox` (being written).

use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Not implemented yet.
    Todo,
}

pub fn run(_command: Command) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`sandbox` is not implemented yet")
}

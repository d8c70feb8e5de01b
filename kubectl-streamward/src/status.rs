//! `status`.

use clap::Args;

/// `status` flags.
#[derive(Args, Debug)]
pub struct StatusArgs {}

/// Prints the status.
pub async fn run(_args: StatusArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}

//! `audit`: the audit trail from the collector.

use clap::Args;

/// `audit` flags.
#[derive(Args, Debug)]
pub struct AuditArgs {}

/// Runs the query.
pub async fn run(_args: AuditArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}

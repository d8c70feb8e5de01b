//! `just bench`: the same producer/consumer workload on one Kafka broker, direct and through
//! Streamward (policy; + audit; + audit + masking) and Kroxylicious (passthrough; + record
//! rewriting), side by side in one run. See [`streamward_e2e::bench::compare`].
//!
//! Usage: `bench --sidecar PATH --collector PATH --out DIR [--records N] [--rounds N]`
//! (release builds). Writes `results.md`, `results.json` and `throughput.svg` into DIR and
//! prints the table.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use streamward_e2e::bench::compare::{self, Options};

/// Every path side by side.
#[derive(Parser)]
struct Args {
    /// The proxy binary (a release build).
    #[arg(long)]
    sidecar: PathBuf,
    /// The collector binary (a release build).
    #[arg(long)]
    collector: PathBuf,
    /// The folder the table, JSON and plot are written to.
    #[arg(long)]
    out: PathBuf,
    /// Records per run (one column, one compression, one round).
    #[arg(long, default_value_t = 200_000)]
    records: u64,
    /// Rounds of every column, in rotated order.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Producer compressions, each measured on its own.
    #[arg(long, value_delimiter = ',', default_value = "none,lz4")]
    compressions: Vec<String>,
    /// Single Produce round trips timed per column (after one warm-up block).
    #[arg(long, default_value_t = 5_000)]
    round_trips: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let blocks = 6;
    let report = compare::run(&Options {
        sidecar: args.sidecar,
        collector: args.collector,
        records: args.records,
        rounds: args.rounds,
        compressions: args.compressions,
        probe_blocks: blocks,
        probe_requests: args.round_trips.div_ceil(blocks - 1),
    })?;
    report.write(&args.out)?;
    println!("{}", report.markdown());
    println!("written to {}", args.out.display());
    Ok(())
}

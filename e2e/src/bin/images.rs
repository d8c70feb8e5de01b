//! `just images`: one OCI image per program (operator, proxy, collector), written as OCI layout
//! archives without a container daemon (see `streamward_e2e::image`).
//!
//! Usage: `images --binaries TARGET/release [--out DIR]`

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use streamward_e2e::{cache, image};

/// Builds `ghcr.io/streamward/<program>:<version>` for each program as `<out>/<program>-<version>.oci.tar`.
#[derive(Parser)]
struct Args {
    /// The folder with the release binaries (`<target>/release`).
    #[arg(long)]
    binaries: PathBuf,
    /// Where the archives and `images.json` go (default: `<cache>/images`).
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> Result<()> {
    let Args { binaries, out } = Args::parse();
    let out = out.unwrap_or_else(|| cache::root().join("images"));
    let started = Instant::now();
    let images = image::build_all(&binaries, &out)?;
    println!(
        "{:<48} {:>10}  {:<19}  archive",
        "image", "compressed", "manifest"
    );
    for built in &images {
        let short = built
            .manifest_digest
            .get(..19)
            .unwrap_or(&built.manifest_digest);
        println!(
            "{:<48} {:>7.1} MB  {short}  {}{}",
            built.reference,
            built.compressed_bytes as f64 / 1e6,
            built.archive.display(),
            if built.reused { " (unchanged)" } else { "" }
        );
    }
    println!(
        "listed in {} ({:.1}s)",
        out.join(image::LISTING).display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

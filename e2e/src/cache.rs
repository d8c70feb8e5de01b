//! The harness cache: Kafka jars, Kubernetes binaries and the Python client live in one folder
//! outside the clone, one sub-folder per component and version, so a second run (and a CI
//! run on the same machine) reuses them.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

/// The cache folder: `$STREAMWARD_CACHE`, else `~/.cache/streamward`.
pub fn root() -> PathBuf {
    if let Some(dir) = std::env::var_os("STREAMWARD_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    home.join(".cache").join("streamward")
}

/// The root of the Streamward source tree (where `e2e/` lives).
///
/// Under `cargo test`/`cargo run`, the package being run says where it is at run time (every
/// package sits directly under the root). The compile-time path is only the fallback: cargo
/// reuses this crate's build for checkouts at other paths that share a target folder (git
/// worktrees), and it would point at whichever checkout built it.
pub fn source_root() -> PathBuf {
    let run_time = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .and_then(|dir| dir.parent().map(Path::to_path_buf))
        .filter(|root| root.join("e2e/clients").is_dir());
    run_time.unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    })
}

/// Returns `root()/name`, running `install` into it first unless an earlier run finished it.
///
/// Concurrent callers (test threads, other test binaries) wait on a lock file. `install` fills
/// a scratch folder that is renamed into place only when it succeeds, so an interrupted install
/// is redone rather than half-used.
pub fn ensure(name: &str, install: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
    let root = root();
    fs::create_dir_all(&root)
        .with_context(|| format!("creating cache folder {}", root.display()))?;
    let dir = root.join(name);
    let lock_path = root.join(format!("{name}.lock"));
    let lock = File::create(&lock_path)
        .with_context(|| format!("creating lock file {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("locking {}", lock_path.display()))?;
    if dir.exists() {
        return Ok(dir);
    }
    let scratch = root.join(format!("{name}.partial"));
    if scratch.exists() {
        fs::remove_dir_all(&scratch)
            .with_context(|| format!("removing an interrupted install at {}", scratch.display()))?;
    }
    fs::create_dir_all(&scratch)?;
    let started = Instant::now();
    eprintln!("streamward-e2e: installing {name} into {}", dir.display());
    install(&scratch).with_context(|| format!("installing {name}"))?;
    fs::rename(&scratch, &dir)
        .with_context(|| format!("moving {} into place", scratch.display()))?;
    eprintln!(
        "streamward-e2e: installed {name} in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(dir)
}

/// A fresh folder for one run of one server (data, logs, configs), under `root()/runs`.
///
/// Folders of earlier test processes that have exited are removed first, so runs that never
/// got to clean up (a killed test binary) don't pile up.
pub fn run_dir(prefix: &str) -> Result<tempfile::TempDir> {
    let runs = root().join("runs");
    fs::create_dir_all(&runs)?;
    sweep_dead_runs(&runs);
    tempfile::Builder::new()
        .prefix(&format!("{}-{prefix}-", std::process::id()))
        .tempdir_in(&runs)
        .with_context(|| format!("creating a run folder under {}", runs.display()))
}

fn sweep_dead_runs(runs: &Path) {
    let Ok(entries) = fs::read_dir(runs) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.split('-').next()?.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

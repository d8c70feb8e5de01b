//! Streamward's end-to-end harness.
//!
//! Nothing here is a stand-in: [`kafka::KafkaCluster`] runs Apache Kafka in KRaft mode from its
//! Maven Central jars, [`kube::KubeApiServer`] runs a kube-apiserver built from the
//! `k8s.io/kubernetes` Go module on a real etcd, and [`clients`] drives the clients users run
//! (kcat, confluent-kafka for Python, Kafka's own Java tools); [`helm`] renders and installs
//! the chart with a Helm built from its Go module.
//!
//! Everything is installed on first use into the cache (see [`cache`]), keyed by version, and
//! every server listens on 127.0.0.1 only. Processes die with the test binary, even when it
//! panics or is killed.

pub mod bench;
pub mod cache;
pub mod cgroup;
pub mod clients;
pub mod cluster;
pub mod collector;
pub mod data;
pub mod egress;
pub mod helm;
pub mod image;
pub mod kafka;
pub mod kroxylicious;
pub mod kube;
pub mod net;
pub mod node;
pub mod pki;
pub mod process;
pub mod provision;
pub mod sidecar;

pub use process::wait_for;

use anyhow::Context as _;

/// A name no other test run uses (topics, namespaces, groups): `prefix-<pid>-<n>-<nanos>`.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}-{nanos:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Cargo (the one running this test), to build workspace binaries from inside a test as
/// `just` builds them from a shell. Cargo gives a test the variables of its own package
/// (`CARGO_MANIFEST_DIR`, `CARGO_PKG_NAME`, ...); build scripts such as ring's declare
/// `rerun-if-env-changed` on those, so a nested cargo that kept them would rebuild ring and
/// everything above it (rustls, kube, every workspace crate) whenever a test of another package
/// or a shell built last: minutes per switch in CI. So they are removed here.
pub fn cargo() -> std::process::Command {
    let mut command =
        std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if is_set_by_cargo_for_a_crate(name) {
            command.env_remove(name);
        }
    }
    command
}

/// Whether cargo sets `name` for one crate's build script, compiler or test run (not a
/// configuration variable such as `CARGO_TARGET_DIR` or `CARGO_HOME`).
fn is_set_by_cargo_for_a_crate(name: &str) -> bool {
    const NAMES: [&str; 9] = [
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_MANIFEST_LINKS",
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "OUT_DIR",
    ];
    const PREFIXES: [&str; 4] = [
        "CARGO_PKG_",
        "CARGO_BIN_EXE_",
        "CARGO_CFG_",
        "CARGO_FEATURE_",
    ];
    NAMES.contains(&name) || PREFIXES.iter().any(|prefix| name.starts_with(prefix))
}

/// The path of binary `bin` of workspace package `package`, built (debug profile) with the
/// caller's `CARGO_TARGET_DIR`, for tests that run another crate's binary (the sidecar's tests
/// run the collector). Cargo only lends `CARGO_BIN_EXE_*` for the package's own binaries.
pub fn workspace_binary(package: &str, bin: &str) -> anyhow::Result<std::path::PathBuf> {
    let mut paths = workspace_binaries(&[(package, bin)])?;
    paths.pop().context("one binary asked for")
}

/// Like [`workspace_binary`] for several `(package, bin)` at once, in one cargo build: building
/// them one by one makes cargo rebuild each whenever the packages' feature sets differ.
pub fn workspace_binaries(wanted: &[(&str, &str)]) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the e2e crate lives in the workspace")?
        .to_path_buf();
    let mut command = cargo();
    command.args(["build", "-q"]).current_dir(&root);
    for (package, bin) in wanted {
        command.args(["-p", package, "--bin", bin]);
    }
    let status = command
        .status()
        .with_context(|| format!("running cargo build for {wanted:?}"))?;
    anyhow::ensure!(status.success(), "cargo build of {wanted:?} failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    wanted
        .iter()
        .map(|(_, bin)| {
            let path = target.join("debug").join(bin);
            anyhow::ensure!(path.exists(), "{} was not built", path.display());
            Ok(path)
        })
        .collect()
}

//! The node's programs, built with the machine's Go toolchain and cached by version: kubelet,
//! kube-controller-manager, kube-scheduler and kube-proxy from the same `k8s.io/kubernetes`
//! module (and Go build cache) as the kube-apiserver, the sandbox's `pause` from `e2e/k8s/pause`,
//! containerd v2 and CoreDNS from their own Go modules.
//!
//! containerd comes from its Go module rather than Debian's 1.6 package: Kubernetes 1.36
//! supports only containerd 2.x (1.35 was the last release for 1.x), and v2 builds here in about
//! 90 s cold. runc stays Debian's package (1.1.5): a C-free Go build of runc needs libseccomp's
//! cgo bindings, and the runtime it exposes to containerd is the stable OCI command line.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;

use crate::cache;
use crate::kube::KUBERNETES_VERSION;
use crate::process::run;

/// The pinned containerd release (`github.com/containerd/containerd/v2`).
pub const CONTAINERD_VERSION: &str = "v2.4.2";
/// The pinned CoreDNS release (`github.com/coredns/coredns`).
pub const COREDNS_VERSION: &str = "v1.15.0";

/// Debian packages the node needs at run time: runc, the CNI plugins (`/usr/lib/cni`), `nft`
/// for kube-proxy's nftables mode, `iptables` for the kubelet's canary chains, `mmdebstrap` for
/// the client images.
pub const DEBIAN_PACKAGES: &[&str] = &[
    "runc",
    "containernetworking-plugins",
    "nftables",
    "iptables",
    "iproute2",
    "mmdebstrap",
];

/// Where the CNI plugins of Debian's `containernetworking-plugins` are.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";

/// The folders of the node's built programs.
#[derive(Clone, Debug)]
pub struct NodeBinaries {
    kubernetes: PathBuf,
    containerd: PathBuf,
    coredns: PathBuf,
}

impl NodeBinaries {
    /// A Kubernetes node program (`kubelet`, `kube-proxy`, ...) or `pause`.
    pub fn kubernetes(&self, name: &str) -> PathBuf {
        self.kubernetes.join(name)
    }

    /// The folder with `containerd`, `containerd-shim-runc-v2` and `ctr` (put it on the PATH
    /// of containerd, which finds its shim there).
    pub fn containerd_dir(&self) -> &Path {
        &self.containerd
    }

    /// The `coredns` binary.
    pub fn coredns(&self) -> PathBuf {
        self.coredns.join("coredns")
    }
}

/// Installs what is missing: the Debian packages, then the Go builds (each cached by version).
pub fn install() -> Result<NodeBinaries> {
    install_debian_packages()?;
    let module = cache::source_root().join("e2e/k8s");
    // The `-r` suffix names the build recipe: bump it whenever the flags below change.
    let kubernetes = cache::ensure(&format!("kubernetes-node-{KUBERNETES_VERSION}-r2"), |dir| {
        // Stamped like kube-apiserver, so the node reports v1.36.3 rather than v0.0.0-master.
        let ldflags = format!("-ldflags=-s -w {}", crate::kube::version_stamp());
        for (name, package) in [
            ("kubelet", "k8s.io/kubernetes/cmd/kubelet"),
            (
                "kube-controller-manager",
                "k8s.io/kubernetes/cmd/kube-controller-manager",
            ),
            ("kube-scheduler", "k8s.io/kubernetes/cmd/kube-scheduler"),
            ("kube-proxy", "k8s.io/kubernetes/cmd/kube-proxy"),
            ("pause", "./pause"),
        ] {
            run(
                &format!("go build {package}"),
                go(&module)
                    .args(["build", "-trimpath", &ldflags, "-o"])
                    .arg(dir.join(name))
                    .arg(package),
            )?;
        }
        Ok(())
    })?;
    let containerd = cache::ensure(&format!("containerd-{CONTAINERD_VERSION}"), |dir| {
        let packages = ["containerd", "ctr", "containerd-shim-runc-v2"].map(|cmd| {
            format!("github.com/containerd/containerd/v2/cmd/{cmd}@{CONTAINERD_VERSION}")
        });
        run(
            "go install containerd",
            go(dir)
                .env("GOBIN", dir)
                // The graph drivers that need C headers are left out; the node uses overlayfs.
                .args([
                    "install",
                    "-trimpath",
                    "-ldflags=-s -w",
                    "-tags=no_btrfs no_devmapper no_zfs",
                ])
                .args(packages),
        )?;
        Ok(())
    })?;
    let coredns = cache::ensure(&format!("coredns-{COREDNS_VERSION}"), |dir| {
        run(
            "go install coredns",
            go(dir)
                .env("GOBIN", dir)
                .args(["install", "-trimpath", "-ldflags=-s -w"])
                .arg(format!("github.com/coredns/coredns@{COREDNS_VERSION}")),
        )?;
        Ok(())
    })?;
    Ok(NodeBinaries {
        kubernetes,
        containerd,
        coredns,
    })
}

/// A static (`CGO_ENABLED=0`) `go` command in `dir` that never fetches another toolchain.
fn go(dir: &Path) -> Command {
    let mut command = Command::new("go");
    command
        .current_dir(dir)
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", "0");
    command
}

fn install_debian_packages() -> Result<()> {
    let missing: Vec<&str> = [
        ("runc", "/usr/sbin/runc"),
        ("containernetworking-plugins", "/usr/lib/cni/bridge"),
        ("nftables", "/usr/sbin/nft"),
        ("iptables", "/usr/sbin/iptables"),
        ("iproute2", "/usr/sbin/ip"),
        ("mmdebstrap", "/usr/bin/mmdebstrap"),
    ]
    .iter()
    .filter(|(_, file)| !Path::new(file).exists())
    .map(|(package, _)| *package)
    .collect();
    debug_assert!(missing.iter().all(|p| DEBIAN_PACKAGES.contains(p)));
    if missing.is_empty() {
        return Ok(());
    }
    crate::clients::install_debian_packages(&missing)
}

//! What the node changes on the machine, and how it is put back: the test bridge, the node's
//! cgroups, the mounts under the node's run folder, kube-proxy's nftables tables and the
//! kubelet's iptables canaries, the kernel settings the kubelet writes, and the files the
//! kubelet and containerd leave at fixed paths.
//!
//! [`clean`] undoes all of it. It runs when a node stops, and before a node starts (under the
//! machine-wide node lock) to sweep what a killed test process left behind: the kernel kills
//! the node's own children with the test process (see [`crate::process`]), but containerd's
//! shims and the containers are daemons that outlive it, so they are found by cgroup instead.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cache;

/// The Linux bridge the pods are attached to (the CNI `bridge` plugin's `bridge`).
pub const BRIDGE: &str = "swnode0";
/// The pods' subnet: used by the tests only, never routed off the machine.
pub const POD_CIDR: &str = "10.77.0.0/24";
/// The bridge's address: the pods' gateway, the node's IP and where the API server and the
/// tests' Kafka listen for pods.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// The Services' ClusterIP range.
pub const SERVICE_CIDR: &str = "10.77.128.0/24";
/// The `kubernetes` Service's ClusterIP (the first address of [`SERVICE_CIDR`]).
pub const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 128, 1);
/// CoreDNS's Service ClusterIP (the kubelet's `clusterDNS`).
pub const DNS_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 128, 10);
/// The pods' routes: the pod subnet and the Service range, through the bridge. Nothing else:
/// no default route, so a pod cannot reach anything off this machine.
pub const POD_ROUTES: &str = "10.77.0.0/16";
/// The cgroup (in every hierarchy) under which the node's pods (the kubelet's `cgroupRoot`),
/// containerd and its shims live.
pub const CGROUP_ROOT: &str = "streamward-node";

/// Kernel settings the kubelet writes when it starts (its `protectKernelDefaults: false`
/// behaviour); their values before the node are restored when it stops.
const KUBELET_SYSCTLS: &[&str] = &[
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
];

/// The kubelet links every container log here; the path is fixed in the kubelet.
const CONTAINER_LOG_LINKS: &str = "/var/log/containers";
/// Folders the node's programs create at fixed paths whatever their configuration says:
/// containerd's shim sockets (`/run/containerd/s`), the kubelet's device-plugin socket
/// (`/var/lib/kubelet/device-plugins`), libcni's result cache (`/var/lib/cni/results`).
/// Removed whole if they did not exist before the node; else only the node's files in them.
const FIXED_DIRS: &[&str] = &[
    CONTAINER_LOG_LINKS,
    "/run/containerd",
    "/var/lib/kubelet",
    "/var/lib/cni",
];

/// What must be put back, saved before anything is changed so a later sweep can restore it
/// after a crash.
fn saved_state_path() -> PathBuf {
    cache::root().join("node-host-state.json")
}

/// The folder that holds the node's run folders: outside `cache::root()/runs`, whose sweep
/// deletes dead runs' folders recursively and must never walk into a leftover mount.
pub fn runs_dir() -> PathBuf {
    cache::root().join("node-runs")
}

/// Creates the bridge with the gateway address, lets the kernel forward between pods on it
/// (only on this bridge: the machine's `ip_forward` is left alone), creates the node's
/// cgroups, and saves the settings [`clean`] restores.
pub fn prepare() -> Result<()> {
    let bridge_nf = Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables");
    if read_trimmed(bridge_nf).as_deref() != Some("1") {
        // Without it, a pod's reply to another pod that it reached through a Service crosses
        // the bridge without being un-NATed, and the connection fails.
        let _ = Command::new("modprobe").arg("br_netfilter").status();
        if read_trimmed(bridge_nf).as_deref() != Some("1") {
            bail!(
                "{} is not 1: load br_netfilter and set net.bridge.bridge-nf-call-iptables=1 \
                 (Services between pods on one bridge need it)",
                bridge_nf.display()
            );
        }
    }
    save_state()?;

    ip(&["link", "add", BRIDGE, "type", "bridge"])?;
    ip(&["addr", "add", &format!("{GATEWAY}/24"), "dev", BRIDGE])?;
    ip(&["link", "set", BRIDGE, "up"])?;
    // IPv4 forwarding is decided by the interface a packet came in on: pod → Service → pod
    // traffic is routed back out of the bridge it arrived on.
    let forwarding = format!("/proc/sys/net/ipv4/conf/{BRIDGE}/forwarding");
    fs::write(&forwarding, "1").with_context(|| format!("writing {forwarding}"))?;

    for hierarchy in cgroup_hierarchies() {
        let dir = hierarchy.join(CGROUP_ROOT);
        fs::create_dir_all(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
    }
    let runtime = pids_cgroup().join("runtime");
    fs::create_dir_all(&runtime)
        .with_context(|| format!("creating cgroup {}", runtime.display()))?;
    Ok(())
}

/// Makes `command` start inside the node's `runtime` cgroup (pids hierarchy), so that it and
/// everything it spawns (containerd's shims daemonise and outlive it) can be found and killed.
pub fn spawn_in_runtime_cgroup(command: &mut Command) -> Result<()> {
    let procs = CString::new(
        pids_cgroup()
            .join("runtime/cgroup.procs")
            .into_os_string()
            .into_encoded_bytes(),
    )?;
    // SAFETY: only async-signal-safe calls (open, write, close) on memory prepared before fork.
    unsafe {
        command.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // "0" is the writing process itself.
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
            if written != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// Puts the machine back as [`prepare`] found it, and removes what a node left: kills every
/// process in the node's cgroups, unmounts everything under `run_dirs` (the netns, shm,
/// rootfs and volume mounts), deletes the veths and the bridge, kube-proxy's and the
/// kubelet's netfilter rules, the node's cgroups and the kubelet's log links, and restores the
/// kernel settings. Best effort: every step runs, and the failures are reported together.
pub fn clean(run_dirs: &[PathBuf]) -> Result<()> {
    let mut failures = Vec::new();
    let mut slow = Vec::new();
    let mut step = Instant::now();
    let mut note = |what: &str, result: Result<()>| {
        if let Err(error) = result {
            failures.push(format!("{what}: {error:#}"));
        }
        if step.elapsed() > Duration::from_secs(1) {
            slow.push(format!("{what} {:.1}s", step.elapsed().as_secs_f64()));
        }
        step = Instant::now();
    };
    note("killing the node's processes", kill_cgroup_tree());
    note("unmounting", unmount_under(run_dirs));
    note("deleting the bridge", delete_bridge());
    note("removing netfilter rules", remove_netfilter_rules());
    note("removing cgroups", remove_cgroups());
    note("removing log links", remove_log_links());
    note("removing files at fixed paths", remove_fixed_files());
    note("restoring kernel settings", restore_state());
    if !slow.is_empty() {
        eprintln!(
            "streamward-e2e: slow node cleanup steps: {}",
            slow.join(", ")
        );
    }
    if failures.is_empty() {
        Ok(())
    } else {
        bail!("cleaning up after the node: {}", failures.join("; "))
    }
}

fn cgroup_hierarchies() -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir("/sys/fs/cgroup") else {
        return Vec::new();
    };
    let mut hierarchies: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        // Co-mounted controllers show up twice (`cpu,cpuacct` and its links): keep real dirs.
        .filter(|p| p.is_dir() && !p.is_symlink() && p.join("cgroup.procs").exists())
        .collect();
    hierarchies.sort();
    hierarchies
}

fn pids_cgroup() -> PathBuf {
    Path::new("/sys/fs/cgroup/pids").join(CGROUP_ROOT)
}

/// Every cgroup folder under the node's root in `hierarchy`, deepest first.
fn cgroup_tree(hierarchy: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&path, out);
                }
            }
        }
        out.push(dir.to_path_buf());
    }
    let root = hierarchy.join(CGROUP_ROOT);
    let mut out = Vec::new();
    if root.is_dir() {
        walk(&root, &mut out);
    }
    out
}

fn kill_cgroup_tree() -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut alive = 0;
        for hierarchy in cgroup_hierarchies() {
            for dir in cgroup_tree(&hierarchy) {
                let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) else {
                    continue;
                };
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    if pid as u32 == std::process::id() {
                        continue;
                    }
                    alive += 1;
                    // SAFETY: kill has no memory effects.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        if alive == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{alive} process(es) still in the node's cgroups after SIGKILL");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The mount points of this process's mount namespace (decoded), with their parents before
/// them.
fn mount_points() -> Result<Vec<PathBuf>> {
    let text = fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    Ok(text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mount_path(field)))
        .collect())
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount_path(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(code) = u8::from_str_radix(&field[i + 1..i + 4], 8)
        {
            out.push(code);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn unmount_under(run_dirs: &[PathBuf]) -> Result<()> {
    for _ in 0..5 {
        let mut points: Vec<PathBuf> = mount_points()?
            .into_iter()
            .filter(|p| run_dirs.iter().any(|dir| p.starts_with(dir)))
            .collect();
        if points.is_empty() {
            return Ok(());
        }
        // Children before parents.
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for point in points {
            let path = CString::new(point.into_os_string().into_encoded_bytes())?;
            // SAFETY: a valid C string; MNT_DETACH makes a busy mount go when it is free.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
    }
    let left = mount_points()?
        .into_iter()
        .filter(|p| run_dirs.iter().any(|dir| p.starts_with(dir)))
        .count();
    if left > 0 {
        bail!("{left} mount(s) left under the node's run folders");
    }
    Ok(())
}

fn delete_bridge() -> Result<()> {
    if !Path::new("/sys/class/net").join(BRIDGE).exists() {
        return Ok(());
    }
    // A veth goes with its pod's network namespace, but that can take a moment after the
    // namespace's last mount and process are gone: delete the host ends now.
    let output = Command::new("ip")
        .args(["-o", "link", "show", "master", BRIDGE])
        .output()
        .context("running ip link show")?;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        if let Some(name) = line.split(':').nth(1) {
            let name = name.trim().split('@').next().unwrap_or_default();
            if !name.is_empty() {
                let _ = Command::new("ip").args(["link", "del", name]).status();
            }
        }
    }
    ip(&["link", "del", BRIDGE])
}

/// kube-proxy (nftables mode) keeps all its rules in the `kube-proxy` tables; the kubelet makes
/// `KUBE-KUBELET-CANARY` chains in iptables; the CNI `portmap` plugin makes `CNI-HOSTPORT-*`
/// and `CNI-DN-*` chains when a pod asks for a host port.
fn remove_netfilter_rules() -> Result<()> {
    for family in ["ip", "ip6"] {
        let exists = Command::new("nft")
            .args(["list", "table", family, "kube-proxy"])
            .output()
            .is_ok_and(|o| o.status.success());
        if exists {
            let status = Command::new("nft")
                .args(["delete", "table", family, "kube-proxy"])
                .status()
                .context("running nft")?;
            if !status.success() {
                bail!("nft delete table {family} kube-proxy failed");
            }
        }
    }
    let ours = |chain: &str| {
        chain.starts_with("KUBE-")
            || chain.starts_with("CNI-HOSTPORT-")
            || chain.starts_with("CNI-DN-")
    };
    for program in ["iptables", "ip6tables"] {
        for table in ["filter", "nat", "mangle"] {
            let Ok(output) = Command::new(format!("{program}-save"))
                .args(["-t", table])
                .output()
            else {
                continue;
            };
            let rules = String::from_utf8_lossy(&output.stdout).into_owned();
            // First the jumps into our chains from chains that are not ours, then our chains.
            for line in rules.lines() {
                let Some(rule) = line.strip_prefix("-A ") else {
                    continue;
                };
                let chain = rule.split(' ').next().unwrap_or_default();
                let target = rule
                    .split(" -j ")
                    .nth(1)
                    .and_then(|t| t.split(' ').next())
                    .unwrap_or_default();
                if !ours(chain) && ours(target) {
                    let mut delete = Command::new(program);
                    delete.args(["-w", "-t", table, "-D"]);
                    delete.args(shell_words(rule));
                    let _ = delete.status();
                }
            }
            for line in rules.lines() {
                let Some(chain) = line.strip_prefix(':').and_then(|l| l.split(' ').next()) else {
                    continue;
                };
                if ours(chain) {
                    let _ = Command::new(program)
                        .args(["-w", "-t", table, "-F", chain])
                        .status();
                }
            }
            for line in rules.lines() {
                let Some(chain) = line.strip_prefix(':').and_then(|l| l.split(' ').next()) else {
                    continue;
                };
                if ours(chain) {
                    let _ = Command::new(program)
                        .args(["-w", "-t", table, "-X", chain])
                        .status();
                }
            }
        }
    }
    Ok(())
}

/// Splits an `iptables-save` rule into arguments (it quotes comments with double quotes).
fn shell_words(rule: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut has_word = false;
    let mut chars = rule.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                has_word = true;
            }
            '\\' if quoted => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            ' ' if !quoted => {
                if has_word {
                    words.push(std::mem::take(&mut word));
                    has_word = false;
                }
            }
            _ => {
                word.push(c);
                has_word = true;
            }
        }
    }
    if has_word {
        words.push(word);
    }
    words
}

fn remove_cgroups() -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut left = Vec::new();
        for hierarchy in cgroup_hierarchies() {
            for dir in cgroup_tree(&hierarchy) {
                if fs::remove_dir(&dir).is_err() && dir.exists() {
                    left.push(dir);
                }
            }
        }
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("cgroups still there: {left:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The node's files in the fixed folders that existed before it (the folders that did not are
/// removed whole by [`restore_state`]).
fn remove_fixed_files() -> Result<()> {
    let _ = fs::remove_file("/var/lib/kubelet/device-plugins/kubelet.sock");
    if let Ok(entries) = fs::read_dir("/var/lib/cni/results") {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("streamward-node-") || name.starts_with("cni-loopback-") {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    Ok(())
}

fn remove_log_links() -> Result<()> {
    let runs = runs_dir();
    let Ok(entries) = fs::read_dir(CONTAINER_LOG_LINKS) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if fs::read_link(&path).is_ok_and(|target| target.starts_with(&runs)) {
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

/// The settings before the node, saved once: if a file from a crashed run is there, it holds
/// the machine's real values and is kept.
fn save_state() -> Result<()> {
    let path = saved_state_path();
    if path.exists() {
        return Ok(());
    }
    let mut state = BTreeMap::new();
    for key in KUBELET_SYSCTLS {
        if let Some(value) = read_trimmed(&Path::new("/proc/sys").join(key)) {
            state.insert(format!("sysctl:{key}"), value);
        }
    }
    for dir in FIXED_DIRS {
        state.insert(
            format!("existed:{dir}"),
            Path::new(dir).exists().to_string(),
        );
    }
    let json = serde_json::to_vec_pretty(&state)?;
    let scratch = path.with_extension("partial");
    fs::write(&scratch, json).with_context(|| format!("writing {}", scratch.display()))?;
    fs::rename(&scratch, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn restore_state() -> Result<()> {
    let path = saved_state_path();
    let Ok(text) = fs::read_to_string(&path) else {
        return Ok(());
    };
    let state: BTreeMap<String, String> =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    for (key, value) in &state {
        if let Some(sysctl) = key.strip_prefix("sysctl:") {
            let file = Path::new("/proc/sys").join(sysctl);
            if read_trimmed(&file).as_deref() != Some(value.as_str()) {
                fs::write(&file, value).with_context(|| format!("restoring {}", file.display()))?;
            }
        } else if let Some(dir) = key.strip_prefix("existed:")
            && value == "false"
            && Path::new(dir).exists()
        {
            fs::remove_dir_all(dir).with_context(|| format!("removing {dir}"))?;
        }
    }
    fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    Ok(())
}

fn read_trimmed(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

fn ip(args: &[&str]) -> Result<()> {
    crate::process::run(
        &format!("ip {}", args.join(" ")),
        Command::new("ip").args(args),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mount_path(r"/a\040b/c"), "/a b/c");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
    }

    #[test]
    fn iptables_rules_split_like_a_shell() {
        assert_eq!(
            shell_words(r#"OUTPUT -m comment --comment "kube proxy" -j KUBE-X"#),
            [
                "OUTPUT",
                "-m",
                "comment",
                "--comment",
                "kube proxy",
                "-j",
                "KUBE-X"
            ]
        );
    }
}

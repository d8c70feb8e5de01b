//! A real single-node Kubernetes cluster, for the tests that must see pods run.
//!
//! The control plane is the harness's [`KubeApiServer`] (bound to the test bridge's address so
//! pods reach it through the `kubernetes` Service), plus kube-controller-manager and
//! kube-scheduler; the node is a kubelet on containerd v2 and runc, with kube-proxy (nftables
//! mode) and CoreDNS in a pod. Pods get addresses on one bridge and subnet used only by the
//! tests ([`host::POD_CIDR`]), with routes to that subnet and the Service range and nothing
//! else: no default route, no masquerading, so nothing in a pod reaches off the machine.
//!
//! Every program is built from source and cached by version (see [`install`]); every image is
//! built here and imported (see [`images`]): nothing is pulled.
//!
//! Choices, and the facts behind them (this machine type: cgroup v1, root):
//! - containerd v2 from its Go module with Debian's runc, because Kubernetes 1.36 supports
//!   only containerd 2.x; the kubelet needs `failCgroupV1: false` for cgroup v1, and
//!   containerd `restrict_oom_score_adj` because these machines refuse a negative
//!   `oom_score_adj` even to root (runc then fails with "can't get final child's PID").
//! - kube-proxy in nftables mode: all its rules sit in one table per family, which cleanup
//!   deletes whole.
//! - Everything that a node writes at a path of its choosing goes under the node's run folder
//!   (kubelet root and pod logs, containerd root and state, runc state, CNI configuration and
//!   IPAM state, network namespace mounts); what it writes at fixed places is listed and undone
//!   in [`host`].
//!
//! Lifetime: one node per machine at a time (a lock file), and usually one per test binary
//! ([`Node::shared`]). It stops when the [`Node`] is dropped, or for the shared one when the
//! test process exits (an `atexit` hook: statics are never dropped). The kernel kills the
//! node's own processes if the test process dies without exiting (see [`crate::process`]);
//! containerd's shims and the containers are swept by cgroup at the next start.

pub mod host;
pub mod images;
pub mod install;

use std::fmt::Write as _;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::kube::{ApiServerOptions, KubeApiServer};
use crate::pki::Ca;
use crate::process::{Process, run, wait_for};
use crate::{cache, net};

use self::host::{DNS_SERVICE_IP, GATEWAY, KUBERNETES_SERVICE_IP, POD_CIDR, SERVICE_CIDR};
use self::install::NodeBinaries;

/// The node's name (also its hostname in the kubelet's eyes).
pub const NODE_NAME: &str = "streamward-node";
/// The cluster's DNS domain.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// A running single-node cluster. Stopped, and the machine put back, when dropped.
pub struct Node {
    binaries: NodeBinaries,
    kubectl: PathBuf,
    kubeconfig: PathBuf,
    url: String,
    containerd_socket: PathBuf,
    dir: PathBuf,
    started_in: Duration,
    // Stopped in this order, then the API server.
    processes: Mutex<Vec<Process>>,
    apiserver: Mutex<Option<KubeApiServer>>,
    stopped: AtomicBool,
    _lock: File,
}

impl Node {
    /// Installs what is missing (cached by version), sweeps what an earlier killed run left,
    /// starts the cluster and waits until the node is Ready and CoreDNS answers.
    pub fn start() -> Result<Node> {
        let started = Instant::now();
        let binaries = install::install()?;
        let archives = images::build_all(&binaries)?;
        let installed_in = started.elapsed();

        let lock_path = cache::root().join("node.lock");
        let lock = File::create(&lock_path)
            .with_context(|| format!("creating lock file {}", lock_path.display()))?;
        lock.lock()
            .with_context(|| format!("locking {} (one node per machine)", lock_path.display()))?;
        let runs = host::runs_dir();
        host::clean(std::slice::from_ref(&runs)).context("sweeping an earlier node's leftovers")?;
        sweep_dead_runs(&runs);
        std::fs::create_dir_all(&runs)?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-node-", std::process::id()))
            .tempdir_in(&runs)
            .context("creating the node's run folder")?
            // Removed by `stop`, after its mounts are gone.
            .keep();

        let mut starting = Starting {
            binaries,
            dir,
            processes: Vec::new(),
            apiserver: None,
        };
        let node = match starting.run(&archives) {
            Ok(parts) => parts,
            Err(error) => {
                let dump = starting.dump();
                starting.stop();
                return Err(error.context(format!("starting the node; state:\n{dump}")));
            }
        };
        let Starting {
            binaries,
            dir,
            processes,
            apiserver,
        } = starting;
        let apiserver = apiserver.context("the API server was started")?;
        let node = Node {
            binaries,
            kubectl: apiserver.binary("kubectl"),
            kubeconfig: apiserver.kubeconfig().to_path_buf(),
            url: apiserver.url().to_string(),
            containerd_socket: node.containerd_socket,
            dir,
            started_in: started.elapsed(),
            processes: Mutex::new(processes),
            apiserver: Mutex::new(Some(apiserver)),
            stopped: AtomicBool::new(false),
            _lock: lock,
        };
        eprintln!(
            "streamward-e2e: node {NODE_NAME} ready in {:.1}s ({:.1}s of it installing), \
             kubeconfig {}",
            node.started_in.as_secs_f64(),
            installed_in.as_secs_f64(),
            node.kubeconfig.display()
        );
        Ok(node)
    }

    /// The node of this test binary, started on first use and stopped when the process exits.
    pub fn shared() -> Result<&'static Node> {
        static NODE: OnceLock<std::result::Result<Node, String>> = OnceLock::new();
        extern "C" fn stop_shared() {
            if let Some(Ok(node)) = NODE.get() {
                node.stop();
            }
        }
        let node = NODE.get_or_init(|| {
            let node = Node::start().map_err(|e| format!("{e:?}"));
            if node.is_ok() {
                // SAFETY: registers a plain function; it runs once, at exit.
                unsafe { libc::atexit(stop_shared) };
            }
            node
        });
        node.as_ref()
            .map_err(|e| anyhow!("the shared node failed to start: {e}"))
    }

    /// The admin (system:masters) kubeconfig.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The API server's URL (on the bridge address).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A `kubectl` command with the admin kubeconfig.
    pub fn kubectl(&self) -> Command {
        let mut command = Command::new(&self.kubectl);
        command.arg("--kubeconfig").arg(&self.kubeconfig);
        command
    }

    /// Runs `kubectl args` to completion and returns its stdout; fails with its output.
    pub fn kubectl_run(&self, args: &[&str]) -> Result<String> {
        let output = run(
            &format!("kubectl {}", args.join(" ")),
            self.kubectl().args(args),
        )?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `kubectl apply -f -` of `manifest`.
    pub fn apply(&self, manifest: &str) -> Result<()> {
        kubectl_apply(&self.kubectl, &self.kubeconfig, manifest)
    }

    /// A `kube` client with admin rights.
    pub async fn client(&self) -> Result<kube::Client> {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// The bridge's address: the pods' gateway, where pods reach servers the tests run on the
    /// host (bind them to this address, not 0.0.0.0).
    pub fn bridge_ip(&self) -> Ipv4Addr {
        GATEWAY
    }

    /// How long [`Node::start`] took.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// The node's run folder (logs of every component, configuration).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Imports an OCI archive (an OCI layout in a tar) into the node's image store, under the
    /// name in its index (`io.containerd.image.name`, else its `ref.name`).
    pub fn import_image(&self, archive: &Path) -> Result<()> {
        import_image(&self.binaries, &self.containerd_socket, archive)
    }

    /// Creates a namespace named after `prefix` (unique) and waits for its `default` service
    /// account, without which pods are refused.
    pub fn namespace(&self, prefix: &str) -> Result<String> {
        let name = crate::unique_name(prefix);
        self.kubectl_run(&["create", "namespace", &name])?;
        wait_for(
            &format!("service account default in {name}"),
            Duration::from_secs(30),
            || {
                let found = self
                    .kubectl()
                    .args(["get", "serviceaccount", "default", "-n", &name])
                    .output()?
                    .status
                    .success();
                Ok(found.then_some(()))
            },
        )?;
        Ok(name)
    }

    /// Waits until pod `name` in `namespace` has phase `phase` (`Succeeded`, `Running`, ...),
    /// failing early with the pod's state if it ends in another phase.
    pub fn wait_pod_phase(
        &self,
        namespace: &str,
        name: &str,
        phase: &str,
        timeout: Duration,
    ) -> Result<()> {
        wait_for(&format!("pod {namespace}/{name} {phase}"), timeout, || {
            let output = self
                .kubectl()
                .args(["get", "pod", name, "-n", namespace])
                .args(["-o", "jsonpath={.status.phase}"])
                .output()?;
            let current = String::from_utf8_lossy(&output.stdout).trim().to_string();
            if current == phase {
                return Ok(Some(()));
            }
            if matches!(current.as_str(), "Succeeded" | "Failed") {
                bail!(
                    "pod {namespace}/{name} ended {current}, not {phase}:\n{}",
                    self.describe_pod(namespace, name)
                );
            }
            Ok(None)
        })
    }

    /// `kubectl describe pod` and the pod's logs, for a failure message.
    pub fn describe_pod(&self, namespace: &str, name: &str) -> String {
        let text = |args: &[&str]| {
            self.kubectl()
                .args(args)
                .output()
                .map(|o| {
                    format!(
                        "{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    )
                })
                .unwrap_or_else(|e| format!("(kubectl failed: {e})"))
        };
        format!(
            "{}\n--- logs ---\n{}",
            text(&["describe", "pod", name, "-n", namespace]),
            text(&[
                "logs",
                name,
                "-n",
                namespace,
                "--all-containers",
                "--tail=50"
            ])
        )
    }

    /// The state of the cluster and the tails of every component's log, for a failing test.
    pub fn dump(&self) -> String {
        dump(&self.kubectl, &self.kubeconfig, &self.dir)
    }

    /// Stops every component and puts the machine back. Runs once; later calls do nothing.
    pub fn stop(&self) {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        let started = Instant::now();
        if let Ok(mut processes) = self.processes.lock() {
            stop_processes(&mut processes);
        }
        if let Ok(mut apiserver) = self.apiserver.lock() {
            apiserver.take();
        }
        let stopped = started.elapsed();
        if let Err(error) = host::clean(std::slice::from_ref(&self.dir)) {
            eprintln!("streamward-e2e: {error:#}");
        }
        remove_run_dir(&self.dir);
        eprintln!(
            "streamward-e2e: node stopped in {:.1}s, machine cleaned in {:.1}s",
            stopped.as_secs_f64(),
            (started.elapsed() - stopped).as_secs_f64(),
        );
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Stops the kubelet before containerd, so it does not restart what is being killed.
fn stop_processes(processes: &mut Vec<Process>) {
    while let Some(mut process) = processes.pop() {
        process.kill();
    }
}

/// The parts of a node being started, owned so that a failure part-way can stop them.
struct Starting {
    binaries: NodeBinaries,
    dir: PathBuf,
    /// In start order: stopped in reverse.
    processes: Vec<Process>,
    apiserver: Option<KubeApiServer>,
}

struct Started {
    containerd_socket: PathBuf,
}

impl Starting {
    fn run(&mut self, archives: &[images::ImageArchive]) -> Result<Started> {
        host::prepare()?;
        let dir = self.dir.clone();
        let write = |name: &str, text: &str| -> Result<PathBuf> {
            let file = dir.join(name);
            std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
            Ok(file)
        };

        // containerd first: it is ready in a second, and the images load while the API
        // server starts.
        let cni_dir = dir.join("cni");
        std::fs::create_dir_all(&cni_dir)?;
        write("cni/10-streamward.conflist", &cni_config(&dir))?;
        let socket = dir.join("containerd.sock");
        let config = write("containerd.toml", &containerd_config(&dir, &socket))?;
        let mut containerd = Command::new(self.binaries.containerd_dir().join("containerd"));
        containerd
            .arg("--config")
            .arg(&config)
            .env("PATH", path_with(self.binaries.containerd_dir()));
        host::spawn_in_runtime_cgroup(&mut containerd)?;
        self.processes.push(Process::spawn(
            "containerd",
            containerd,
            &dir.join("containerd.log"),
        )?);
        let imports = {
            let binaries = self.binaries.clone();
            let socket = socket.clone();
            let archives = archives.to_vec();
            std::thread::spawn(move || -> Result<Duration> {
                let started = Instant::now();
                wait_for("containerd's socket", Duration::from_secs(30), || {
                    Ok(socket.exists().then_some(()))
                })?;
                for archive in &archives {
                    import_image(&binaries, &socket, &archive.archive)?;
                }
                Ok(started.elapsed())
            })
        };

        let ca = Ca::new("streamward-e2e-node-ca")?;
        let kubelet_client =
            ca.issue_client("kube-apiserver-kubelet-client", &["system:masters"])?;
        let kubelet_serving = ca.issue_server(&[&GATEWAY.to_string(), NODE_NAME])?;
        let node_client =
            ca.issue_client(&format!("system:node:{NODE_NAME}"), &["system:nodes"])?;
        let ca_file = write("ca.crt", ca.cert_pem())?;
        let kubelet_client_cert = write("apiserver-kubelet-client.crt", &kubelet_client.cert_pem)?;
        let kubelet_client_key = write("apiserver-kubelet-client.key", &kubelet_client.key_pem)?;
        let kubelet_cert = write("kubelet.crt", &kubelet_serving.cert_pem)?;
        let kubelet_key = write("kubelet.key", &kubelet_serving.key_pem)?;
        let node_cert = write("node.crt", &node_client.cert_pem)?;
        let node_key = write("node.key", &node_client.key_pem)?;

        let mut names: Vec<String> = ["kubernetes", "kubernetes.default", "kubernetes.default.svc"]
            .map(String::from)
            .into();
        names.push(format!("kubernetes.default.svc.{CLUSTER_DOMAIN}"));
        names.push(KUBERNETES_SERVICE_IP.to_string());
        let apiserver = KubeApiServer::start_with(ApiServerOptions {
            bind_address: IpAddr::V4(GATEWAY),
            service_cluster_ip_range: SERVICE_CIDR.into(),
            extra_server_names: names,
            service_account_admission: true,
            authorization_mode: "Node,RBAC".into(),
            ca: Some(ca),
            extra_args: vec![
                "--enable-admission-plugins=NodeRestriction".into(),
                format!(
                    "--kubelet-client-certificate={}",
                    kubelet_client_cert.display()
                ),
                format!("--kubelet-client-key={}", kubelet_client_key.display()),
                format!("--kubelet-certificate-authority={}", ca_file.display()),
                "--kubelet-preferred-address-types=InternalIP".into(),
            ],
        })?;
        let admin = apiserver.kubeconfig().to_path_buf();
        let kubectl = apiserver.binary("kubectl");
        let url = apiserver.url().to_string();
        let service_account_key = apiserver.service_account_key().to_path_buf();
        self.apiserver = Some(apiserver);

        let secure_port = |command: &mut Command, name: &str| -> Result<()> {
            command
                .arg(format!("--kubeconfig={}", admin.display()))
                .arg(format!("--authentication-kubeconfig={}", admin.display()))
                .arg(format!("--authorization-kubeconfig={}", admin.display()))
                .arg("--bind-address=127.0.0.1")
                .arg(format!("--secure-port={}", net::free_port()?))
                .arg(format!("--cert-dir={}", dir.join(name).display()))
                .arg("--leader-elect=false")
                .arg("--v=1");
            Ok(())
        };
        let mut controller_manager =
            Command::new(self.binaries.kubernetes("kube-controller-manager"));
        secure_port(&mut controller_manager, "controller-manager")?;
        controller_manager
            .arg(format!("--root-ca-file={}", ca_file.display()))
            .arg(format!(
                "--service-account-private-key-file={}",
                service_account_key.display()
            ))
            .arg(format!("--service-cluster-ip-range={SERVICE_CIDR}"))
            .arg("--use-service-account-credentials=false");
        self.processes.push(Process::spawn(
            "kube-controller-manager",
            controller_manager,
            &dir.join("controller-manager.log"),
        )?);
        let mut scheduler = Command::new(self.binaries.kubernetes("kube-scheduler"));
        secure_port(&mut scheduler, "scheduler")?;
        self.processes.push(Process::spawn(
            "kube-scheduler",
            scheduler,
            &dir.join("scheduler.log"),
        )?);

        let node_kubeconfig = write(
            "kubelet.kubeconfig",
            &client_kubeconfig(&url, &ca_file, &node_cert, &node_key),
        )?;
        let kubelet_config = write(
            "kubelet.yaml",
            &kubelet_config(&dir, &socket, &ca_file, &kubelet_cert, &kubelet_key)?,
        )?;
        let mut kubelet = Command::new(self.binaries.kubernetes("kubelet"));
        kubelet
            .arg(format!("--config={}", kubelet_config.display()))
            .arg(format!("--kubeconfig={}", node_kubeconfig.display()))
            .arg(format!("--root-dir={}", dir.join("kubelet").display()))
            .arg(format!("--hostname-override={NODE_NAME}"))
            .arg(format!("--node-ip={GATEWAY}"))
            .arg("--v=1")
            .env("PATH", path_with(self.binaries.containerd_dir()));
        self.processes.push(Process::spawn(
            "kubelet",
            kubelet,
            &dir.join("kubelet.log"),
        )?);

        let proxy_config = write("kube-proxy.yaml", &kube_proxy_config(&admin)?)?;
        let mut proxy = Command::new(self.binaries.kubernetes("kube-proxy"));
        proxy
            .arg(format!("--config={}", proxy_config.display()))
            .arg("--v=1");
        self.processes.push(Process::spawn(
            "kube-proxy",
            proxy,
            &dir.join("kube-proxy.log"),
        )?);

        let imported_in = imports
            .join()
            .map_err(|_| anyhow!("the image import thread panicked"))??;
        eprintln!(
            "streamward-e2e: node images imported in {:.1}s",
            imported_in.as_secs_f64()
        );
        kubectl_apply(&kubectl, &admin, &coredns_manifest())?;

        let processes = &mut self.processes;
        let check = |processes: &mut Vec<Process>| -> Result<()> {
            for process in processes.iter_mut() {
                process.check_running()?;
            }
            Ok(())
        };
        wait_for(
            &format!("node {NODE_NAME} Ready"),
            Duration::from_secs(120),
            || {
                check(processes)?;
                let output = Command::new(&kubectl)
                    .arg("--kubeconfig")
                    .arg(&admin)
                    .args(["get", "node", NODE_NAME, "-o"])
                    .arg("jsonpath={.status.conditions[?(@.type==\"Ready\")].status}")
                    .output()?;
                Ok((output.stdout == b"True").then_some(()))
            },
        )?;
        wait_for("CoreDNS available", Duration::from_secs(120), || {
            check(processes)?;
            let output = Command::new(&kubectl)
                .arg("--kubeconfig")
                .arg(&admin)
                .args(["get", "deployment", "coredns", "-n", "kube-system", "-o"])
                .arg("jsonpath={.status.availableReplicas}")
                .output()?;
            Ok((output.stdout == b"1").then_some(()))
        })?;
        Ok(Started {
            containerd_socket: socket,
        })
    }

    fn dump(&self) -> String {
        match &self.apiserver {
            Some(apiserver) => dump(
                &apiserver.binary("kubectl"),
                apiserver.kubeconfig(),
                &self.dir,
            ),
            None => dump_logs(&self.dir),
        }
    }

    fn stop(&mut self) {
        stop_processes(&mut self.processes);
        self.apiserver.take();
        if let Err(error) = host::clean(std::slice::from_ref(&self.dir)) {
            eprintln!("streamward-e2e: {error:#}");
        }
        remove_run_dir(&self.dir);
    }
}

/// Deletes a stopped node's run folder (its mounts are gone by now) in the background: the
/// unpacked images make it hundreds of megabytes of small files, which takes 15–30 s to delete
/// on these machines, and the test process need not wait. The folder is renamed first, so a
/// deletion cut short is finished by the next start's sweep.
fn remove_run_dir(dir: &Path) {
    let trash = host::runs_dir().join(format!(
        "{TRASH_PREFIX}{}",
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    if std::fs::rename(dir, &trash).is_err() {
        let _ = std::fs::remove_dir_all(dir);
        return;
    }
    delete_in_background(&trash);
}

fn delete_in_background(trash: &Path) {
    let mut rm = Command::new("rm");
    rm.arg("-rf")
        .arg(trash)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: setsid is async-signal-safe. Its own session: it outlives the test process.
    unsafe {
        use std::os::unix::process::CommandExt;
        rm.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    if rm.spawn().is_err() {
        let _ = std::fs::remove_dir_all(trash);
    }
}

/// The name prefix of a run folder being deleted.
const TRASH_PREFIX: &str = "deleting-";

fn import_image(binaries: &NodeBinaries, socket: &Path, archive: &Path) -> Result<()> {
    run(
        &format!("ctr images import {}", archive.display()),
        Command::new(binaries.containerd_dir().join("ctr"))
            .arg("--address")
            .arg(socket)
            .args(["--namespace", "k8s.io", "images", "import"])
            .arg(archive),
    )?;
    Ok(())
}

fn kubectl_apply(kubectl: &Path, kubeconfig: &Path, manifest: &str) -> Result<()> {
    use std::io::Write;
    let mut child = Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting kubectl apply")?;
    child
        .stdin
        .take()
        .context("kubectl's stdin")?
        .write_all(manifest.as_bytes())
        .context("writing the manifest to kubectl")?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "kubectl apply failed: {}\n--- manifest ---\n{manifest}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Run folders of node runs whose test process is gone (their mounts were swept first), and
/// folders an earlier stop left being deleted.
fn sweep_dead_runs(runs: &Path) {
    let Ok(entries) = std::fs::read_dir(runs) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(TRASH_PREFIX) {
            // Maybe still being deleted by an earlier run's `rm`: a second one does no harm.
            delete_in_background(&entry.path());
            continue;
        }
        let Some(pid) = name.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let trash = runs.join(format!("{TRASH_PREFIX}{name}"));
            if std::fs::rename(entry.path(), &trash).is_ok() {
                delete_in_background(&trash);
            }
        }
    }
}

fn dump(kubectl: &Path, kubeconfig: &Path, dir: &Path) -> String {
    let mut out = String::new();
    for args in [
        &[
            "get",
            "nodes,pods,services,endpointslices",
            "-A",
            "-o",
            "wide",
        ][..],
        &["get", "events", "-A", "--sort-by=.lastTimestamp"][..],
    ] {
        let text = Command::new(kubectl)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .output()
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_else(|e| format!("(kubectl failed: {e})"));
        let _ = writeln!(out, "--- kubectl {} ---\n{text}", args.join(" "));
    }
    out.push_str(&dump_logs(dir));
    out
}

fn dump_logs(dir: &Path) -> String {
    let mut out = String::new();
    for log in [
        "containerd.log",
        "kubelet.log",
        "kube-proxy.log",
        "controller-manager.log",
        "scheduler.log",
    ] {
        let path = dir.join(log);
        let _ = writeln!(
            out,
            "--- {} ---\n{}",
            path.display(),
            crate::process::tail(&path, 25)
        );
    }
    out
}

/// `PATH` with `dir` first (containerd looks its shim up there, the kubelet finds nothing it
/// needs there but inherits it for the same reason) and the system's folders after.
fn path_with(dir: &Path) -> String {
    format!(
        "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        dir.display()
    )
}

fn cni_config(dir: &Path) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "streamward-node",
        "plugins": [
            {
                "type": "bridge",
                "bridge": host::BRIDGE,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": POD_CIDR, "gateway": GATEWAY.to_string() }]],
                    "routes": [{ "dst": host::POD_ROUTES }],
                    "dataDir": dir.join("cni-ipam").display().to_string(),
                },
            },
            { "type": "portmap", "capabilities": { "portMappings": true } },
        ],
    })
    .to_string()
}

fn containerd_config(dir: &Path, socket: &Path) -> String {
    let d = |name: &str| dir.join(name).display().to_string();
    format!(
        r#"version = 3
root = '{root}'
state = '{state}'
# NRI would listen on /var/run/nri; nothing here uses it.
disabled_plugins = ['io.containerd.nri.v1.nri']

[grpc]
  address = '{socket}'

[plugins.'io.containerd.internal.v1.opt']
  path = '{opt}'

[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = '{pause}'

[plugins.'io.containerd.cri.v1.runtime']
  # These machines refuse a negative oom_score_adj even to root.
  restrict_oom_score_adj = true
  # Network namespaces under the run folder, not /run/netns.
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
    runtime_type = 'io.containerd.runc.v2'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
      BinaryName = '/usr/sbin/runc'
      Root = '{runc}'
      SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ['{cni_bin}']
    conf_dir = '{cni_conf}'

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = '127.0.0.1'
  stream_server_port = '0'
"#,
        root = d("containerd/root"),
        state = d("containerd/state"),
        socket = socket.display(),
        opt = d("containerd/opt"),
        pause = images::PAUSE_IMAGE,
        runc = d("runc"),
        cni_bin = install::CNI_BIN_DIR,
        cni_conf = d("cni"),
    )
}

fn kubelet_config(dir: &Path, socket: &Path, ca: &Path, cert: &Path, key: &Path) -> Result<String> {
    Ok(format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {GATEWAY}
port: {port}
healthzBindAddress: 127.0.0.1
healthzPort: {healthz}
readOnlyPort: 0
tlsCertFile: {cert}
tlsPrivateKeyFile: {key}
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: false}}
  x509: {{clientCAFile: {ca}}}
authorization:
  mode: AlwaysAllow
containerRuntimeEndpoint: unix://{socket}
cgroupDriver: cgroupfs
cgroupRoot: /{cgroup_root}
failCgroupV1: false
failSwapOn: false
clusterDNS: [{DNS_SERVICE_IP}]
clusterDomain: {CLUSTER_DOMAIN}
resolvConf: ""
podLogsDir: {pod_logs}
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# Absolute floors, not percentages: the node shares the disk with builds (a shared cargo
# target dir), and 1% of a large disk can be more than is free while the tests need little.
evictionHard:
  memory.available: 100Mi
  nodefs.available: 256Mi
  imagefs.available: 256Mi
  nodefs.inodesFree: 1%
nodeStatusUpdateFrequency: 2s
syncFrequency: 5s
fileCheckFrequency: 5s
"#,
        port = net::free_port()?,
        healthz = net::free_port()?,
        cert = cert.display(),
        key = key.display(),
        ca = ca.display(),
        socket = socket.display(),
        cgroup_root = host::CGROUP_ROOT,
        pod_logs = dir.join("pod-logs").display(),
    ))
}

fn kube_proxy_config(kubeconfig: &Path) -> Result<String> {
    Ok(format!(
        r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {kubeconfig}
hostnameOverride: {NODE_NAME}
mode: nftables
clusterCIDR: {POD_CIDR}
nodePortAddresses: [{POD_CIDR}]
healthzBindAddress: 127.0.0.1:{healthz}
metricsBindAddress: 127.0.0.1:{metrics}
# Zero: leave the machine's conntrack settings as they are.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
  udpTimeout: 0s
  udpStreamTimeout: 0s
"#,
        kubeconfig = kubeconfig.display(),
        healthz = net::free_port()?,
        metrics = net::free_port()?,
    ))
}

fn client_kubeconfig(url: &str, ca: &Path, cert: &Path, key: &Path) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: node
  cluster: {{server: '{url}', certificate-authority: '{ca}'}}
users:
- name: node
  user: {{client-certificate: '{cert}', client-key: '{key}'}}
contexts:
- name: node
  context: {{cluster: node, user: node}}
current-context: node
",
        ca = ca.display(),
        cert = cert.display(),
        key = key.display(),
    )
}

/// CoreDNS answering for the cluster domain only: with no `forward`, names outside it fail
/// rather than being sent off the machine.
fn coredns_manifest() -> String {
    format!(
        r#"apiVersion: v1
kind: ServiceAccount
metadata: {{name: coredns, namespace: kube-system}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: "system:coredns"}}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: "system:coredns"}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}}
subjects:
- {{kind: ServiceAccount, name: coredns, namespace: kube-system}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: coredns, namespace: kube-system}}
data:
  Corefile: |
    .:53 {{
        errors
        ready :8181
        kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
        }}
        cache 5
    }}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: coredns
  namespace: kube-system
  labels: {{k8s-app: kube-dns}}
spec:
  replicas: 1
  selector:
    matchLabels: {{k8s-app: kube-dns}}
  template:
    metadata:
      labels: {{k8s-app: kube-dns}}
    spec:
      serviceAccountName: coredns
      dnsPolicy: Default
      containers:
      - name: coredns
        image: {image}
        imagePullPolicy: Never
        args: [-conf, /etc/coredns/Corefile]
        ports:
        - {{name: dns, containerPort: 53, protocol: UDP}}
        - {{name: dns-tcp, containerPort: 53, protocol: TCP}}
        readinessProbe:
          httpGet: {{path: /ready, port: 8181}}
          periodSeconds: 1
        volumeMounts:
        - {{name: config, mountPath: /etc/coredns, readOnly: true}}
      volumes:
      - name: config
        configMap: {{name: coredns}}
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {{k8s-app: kube-dns}}
spec:
  clusterIP: {DNS_SERVICE_IP}
  selector: {{k8s-app: kube-dns}}
  ports:
  - {{name: dns, port: 53, protocol: UDP}}
  - {{name: dns-tcp, port: 53, protocol: TCP}}
"#,
        image = images::coredns_image(),
    )
}

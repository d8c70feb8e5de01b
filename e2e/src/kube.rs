//! A real kube-apiserver on a real etcd, the way controller-runtime's envtest runs them, built
//! from the `k8s.io/kubernetes` Go module (see `e2e/k8s/go.mod`) rather than downloaded.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::pki::{self, Ca};
use crate::process::{Process, run, wait_for};
use crate::{cache, net};

/// The pinned Kubernetes release (kube-apiserver and kubectl).
pub const KUBERNETES_VERSION: &str = "v1.36.3";
/// The etcd release that Kubernetes release is built and tested against.
pub const ETCD_VERSION: &str = "v3.6.8";

/// The built binaries: `kube-apiserver`, `etcd`, `kubectl`.
#[derive(Clone, Debug)]
pub struct KubeBinaries {
    bin: PathBuf,
}

impl KubeBinaries {
    /// The path of one binary.
    pub fn path(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }
}

/// Builds (once) kube-apiserver, kubectl and etcd with the machine's Go toolchain.
pub fn install() -> Result<KubeBinaries> {
    let module = cache::source_root().join("e2e/k8s");
    // The `-v` suffix names the build recipe: change it whenever the flags below change, so
    // caches made by an older recipe are not reused.
    let dir = cache::ensure(
        &format!("kubernetes-{KUBERNETES_VERSION}-etcd-{ETCD_VERSION}-v2"),
        |dir| {
            let bin = dir.join("bin");
            let kubernetes_ldflags = format!("-s -w {}", version_stamp());
            for (name, package, ldflags) in [
                (
                    "kube-apiserver",
                    "k8s.io/kubernetes/cmd/kube-apiserver",
                    kubernetes_ldflags.as_str(),
                ),
                (
                    "kubectl",
                    "k8s.io/kubernetes/cmd/kubectl",
                    kubernetes_ldflags.as_str(),
                ),
                ("etcd", "go.etcd.io/etcd/server/v3", "-s -w"),
            ] {
                run(
                    &format!("go build {package}"),
                    Command::new("go")
                        .current_dir(&module)
                        // Never fetch another toolchain: the machine's Go must do.
                        .env("GOTOOLCHAIN", "local")
                        .env("CGO_ENABLED", "0")
                        .args(["build", "-trimpath"])
                        .arg(format!("-ldflags={ldflags}"))
                        .arg("-o")
                        .arg(bin.join(name))
                        .arg(package),
                )?;
            }
            Ok(())
        },
    )?;
    Ok(KubeBinaries {
        bin: dir.join("bin"),
    })
}

/// The `-X` linker flags Kubernetes' own build (hack/lib/version.sh) sets, so `/version` and
/// `kubectl version` say `v1.36.3` rather than `v0.0.0-master`: Helm refuses a chart whose
/// `kubeVersion` the server's version does not meet, and the operator reads it too.
pub(crate) fn version_stamp() -> String {
    let mut parts = KUBERNETES_VERSION.trim_start_matches('v').split('.');
    let major = parts.next().unwrap_or_default();
    let minor = parts.next().unwrap_or_default();
    [
        "k8s.io/component-base/version",
        "k8s.io/client-go/pkg/version",
    ]
    .iter()
    .map(|package| {
        format!(
            "-X {package}.gitVersion={KUBERNETES_VERSION} -X {package}.gitMajor={major} \
                 -X {package}.gitMinor={minor} -X {package}.gitTreeState=clean"
        )
    })
    .collect::<Vec<_>>()
    .join(" ")
}

/// A running kube-apiserver (RBAC, admission webhooks on) backed by its own etcd, with an
/// admin kubeconfig. Both processes are killed when this is dropped.
pub struct KubeApiServer {
    binaries: KubeBinaries,
    ca: Ca,
    url: String,
    kubeconfig: PathBuf,
    ca_file: PathBuf,
    service_account_key: PathBuf,
    dir: tempfile::TempDir,
    // Declared in stop order: the apiserver before its etcd.
    apiserver: Process,
    _etcd: Process,
}

/// How to start a [`KubeApiServer`]. The default is the envtest-like server the fast tests use:
/// loopback only, no ServiceAccount admission (no controller-manager makes tokens), RBAC.
pub struct ApiServerOptions {
    /// The address the API server binds to and advertises (the `kubernetes` Service's endpoint).
    pub bind_address: IpAddr,
    /// `--service-cluster-ip-range`.
    pub service_cluster_ip_range: String,
    /// Names and addresses the serving certificate covers beside `127.0.0.1`, `localhost` and
    /// the bind address (e.g. `kubernetes.default.svc` and the `kubernetes` Service's IP).
    pub extra_server_names: Vec<String>,
    /// Whether the ServiceAccount admission plugin runs (it needs a controller-manager to make
    /// each namespace's `default` service account).
    pub service_account_admission: bool,
    /// `--authorization-mode`.
    pub authorization_mode: String,
    /// The CA for serving and client certificates; a fresh one when `None`.
    pub ca: Option<Ca>,
    /// More flags, appended last.
    pub extra_args: Vec<String>,
}

impl Default for ApiServerOptions {
    fn default() -> Self {
        ApiServerOptions {
            bind_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            service_cluster_ip_range: "10.0.0.0/24".into(),
            extra_server_names: Vec::new(),
            service_account_admission: false,
            authorization_mode: "RBAC".into(),
            ca: None,
            extra_args: Vec::new(),
        }
    }
}

impl KubeApiServer {
    /// Starts etcd and kube-apiserver on free loopback ports and waits for `/readyz`.
    pub fn start() -> Result<KubeApiServer> {
        KubeApiServer::start_with(ApiServerOptions::default())
    }

    /// Starts etcd (on loopback) and kube-apiserver as `options` say, and waits for `/readyz`.
    pub fn start_with(options: ApiServerOptions) -> Result<KubeApiServer> {
        let binaries = install()?;
        let dir = cache::run_dir("kube")?;
        let path = dir.path();

        let etcd_port = net::free_port()?;
        let etcd_peer_port = net::free_port()?;
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer_port}");
        let mut etcd = Command::new(binaries.path("etcd"));
        etcd.arg(format!("--data-dir={}", path.join("etcd").display()))
            .arg(format!("--listen-client-urls={etcd_url}"))
            .arg(format!("--advertise-client-urls={etcd_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=default={peer_url}"))
            .arg("--unsafe-no-fsync=true")
            .arg("--log-level=warn");
        let etcd = Process::spawn("etcd", etcd, &path.join("etcd.log"))?;

        let ca = match options.ca {
            Some(ca) => ca,
            None => Ca::new("streamward-e2e-kubernetes-ca")?,
        };
        let bind = options.bind_address.to_string();
        let mut names = vec!["127.0.0.1", "localhost"];
        if !names.contains(&bind.as_str()) {
            names.push(&bind);
        }
        names.extend(options.extra_server_names.iter().map(String::as_str));
        let serving = ca.issue_server(&names)?;
        let admin = ca.issue_client("streamward-e2e-admin", &["system:masters"])?;
        let write = |name: &str, text: &str| -> Result<PathBuf> {
            let file = path.join(name);
            std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
            Ok(file)
        };
        let ca_file = write("ca.crt", ca.cert_pem())?;
        let serving_cert = write("apiserver.crt", &serving.cert_pem)?;
        let serving_key = write("apiserver.key", &serving.key_pem)?;
        let admin_cert = write("admin.crt", &admin.cert_pem)?;
        let admin_key = write("admin.key", &admin.key_pem)?;
        let sa = pki::signing_key()?;
        let sa_key = write("service-account.key", &sa.private_pem)?;
        let sa_pub = write("service-account.pub", &sa.public_pem)?;

        let port = net::free_port_on(options.bind_address)?;
        let url = match options.bind_address {
            IpAddr::V4(ip) => format!("https://{ip}:{port}"),
            IpAddr::V6(ip) => format!("https://[{ip}]:{port}"),
        };
        let mut apiserver = Command::new(binaries.path("kube-apiserver"));
        apiserver
            .arg(format!("--etcd-servers={etcd_url}"))
            .arg(format!("--cert-dir={}", path.join("certs").display()))
            .arg(format!("--tls-cert-file={}", serving_cert.display()))
            .arg(format!("--tls-private-key-file={}", serving_key.display()))
            .arg(format!("--client-ca-file={}", ca_file.display()))
            .arg(format!("--secure-port={port}"))
            .arg(format!("--bind-address={bind}"))
            .arg(format!("--advertise-address={bind}"))
            .arg(format!(
                "--authorization-mode={}",
                options.authorization_mode
            ))
            .arg(format!(
                "--service-cluster-ip-range={}",
                options.service_cluster_ip_range
            ))
            .arg("--allow-privileged=true");
        if !options.service_account_admission {
            // No controller-manager creates service-account tokens for pods here.
            apiserver.arg("--disable-admission-plugins=ServiceAccount");
        }
        apiserver
            .arg(format!("--service-account-issuer={url}"))
            .arg(format!("--service-account-key-file={}", sa_pub.display()))
            .arg(format!(
                "--service-account-signing-key-file={}",
                sa_key.display()
            ))
            .arg("--v=1")
            .args(&options.extra_args);
        let apiserver = Process::spawn("kube-apiserver", apiserver, &path.join("apiserver.log"))?;

        let kubeconfig = write(
            "kubeconfig",
            &client_kubeconfig(&url, &ca_file, &admin_cert, &admin_key),
        )?;
        let mut server = KubeApiServer {
            binaries,
            ca,
            url,
            kubeconfig,
            ca_file,
            service_account_key: sa_key,
            dir,
            apiserver,
            _etcd: etcd,
        };
        server.wait_ready()?;
        eprintln!(
            "streamward-e2e: kube-apiserver {KUBERNETES_VERSION} at {}, kubeconfig {}",
            server.url,
            server.kubeconfig.display()
        );
        Ok(server)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let kubectl = self.binaries.path("kubectl");
        let kubeconfig = self.kubeconfig.clone();
        let apiserver = &mut self.apiserver;
        wait_for("kube-apiserver /readyz", Duration::from_secs(120), || {
            apiserver.check_running()?;
            let output = Command::new(&kubectl)
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(["get", "--raw", "/readyz"])
                .output()?;
            if output.status.success() && output.stdout.starts_with(b"ok") {
                return Ok(Some(()));
            }
            bail!("{}", String::from_utf8_lossy(&output.stderr).trim())
        })
    }

    /// The API server's URL, `https://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The admin (system:masters) kubeconfig file.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// A kubeconfig that authenticates as `namespace/service_account` with a token the API
    /// server minted (TokenRequest, one hour), as a pod's projected token would.
    pub fn service_account_kubeconfig(
        &self,
        namespace: &str,
        service_account: &str,
    ) -> Result<PathBuf> {
        let output = run(
            &format!("kubectl create token {service_account}"),
            self.kubectl()
                .args(["create", "token", service_account, "-n", namespace])
                .arg("--duration=1h"),
        )?;
        let token = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        let kubeconfig = self
            .dir
            .path()
            .join(format!("{namespace}-{service_account}.kubeconfig"));
        let text = format!(
            "apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: {url}
    certificate-authority: {ca}
users:
- name: {service_account}
  user:
    token: {token}
contexts:
- name: {service_account}
  context: {{cluster: e2e, user: {service_account}, namespace: {namespace}}}
current-context: {service_account}
",
            url = self.url,
            ca = self.dir.path().join("ca.crt").display(),
        );
        std::fs::write(&kubeconfig, text)
            .with_context(|| format!("writing {}", kubeconfig.display()))?;
        Ok(kubeconfig)
    }

    /// A kubeconfig for a person: `user` in `groups`, with a client certificate of this
    /// cluster's CA, as an OIDC or certificate login would authenticate them.
    pub fn user_kubeconfig(&self, user: &str, groups: &[&str]) -> Result<PathBuf> {
        let issued = self.ca.issue_client(user, groups)?;
        let file_name: String = user
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let cert = self.dir.path().join(format!("user-{file_name}.crt"));
        let key = self.dir.path().join(format!("user-{file_name}.key"));
        let kubeconfig = self.dir.path().join(format!("user-{file_name}.kubeconfig"));
        std::fs::write(&cert, &issued.cert_pem)?;
        std::fs::write(&key, &issued.key_pem)?;
        std::fs::write(
            &kubeconfig,
            client_kubeconfig(&self.url, &self.dir.path().join("ca.crt"), &cert, &key),
        )
        .with_context(|| format!("writing {}", kubeconfig.display()))?;
        Ok(kubeconfig)
    }

    /// The CA that signed the API server's certificate and accepts client certificates.
    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// The CA certificate file (PEM).
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// The private key that signs service-account tokens (PEM), for a controller-manager.
    pub fn service_account_key(&self) -> &Path {
        &self.service_account_key
    }

    /// The path of one of the installed Kubernetes binaries (`kubectl`, ...).
    pub fn binary(&self, name: &str) -> PathBuf {
        self.binaries.path(name)
    }

    /// Whether the API server process is still running; fails with its log's tail if not.
    pub fn check_running(&mut self) -> Result<()> {
        self.apiserver.check_running()
    }

    /// Freezes the API server (SIGSTOP): connections to it, open or new, hang without an
    /// answer, as in a network partition. [`KubeApiServer::resume`] thaws it; dropping the
    /// server kills it either way.
    pub fn pause(&self) -> Result<()> {
        self.signal("STOP")
    }

    /// Thaws an API server [`KubeApiServer::pause`] froze (SIGCONT).
    pub fn resume(&self) -> Result<()> {
        self.signal("CONT")
    }

    fn signal(&self, signal: &str) -> Result<()> {
        let pid = self.apiserver.pid().to_string();
        run(
            &format!("kill -{signal} {pid}"),
            Command::new("kill").args([&format!("-{signal}"), &pid]),
        )?;
        Ok(())
    }

    /// The folder with the logs, certificates and etcd data of this run.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Applies Streamward's CRDs (`crds/`) and waits until they are established.
    pub fn install_crds(&self) -> Result<()> {
        let crds = cache::source_root().join("crds");
        for args in [
            vec![
                "apply".to_owned(),
                "-f".to_owned(),
                crds.display().to_string(),
            ],
            [
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd",
                "--all",
            ]
            .map(str::to_owned)
            .to_vec(),
        ] {
            crate::process::run(&format!("kubectl {args:?}"), self.kubectl().args(&args))?;
        }
        Ok(())
    }

    /// A `kubectl` command with the admin kubeconfig.
    pub fn kubectl(&self) -> Command {
        let mut command = Command::new(self.binaries.path("kubectl"));
        command.arg("--kubeconfig").arg(&self.kubeconfig);
        command
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

    /// The last lines of the API server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.apiserver.log_tail(lines)
    }
}

fn client_kubeconfig(url: &str, ca: &Path, cert: &Path, key: &Path) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: {url}
    certificate-authority: {ca}
users:
- name: admin
  user:
    client-certificate: {cert}
    client-key: {key}
contexts:
- name: e2e
  context:
    cluster: e2e
    user: admin
current-context: e2e
",
        ca = ca.display(),
        cert = cert.display(),
        key = key.display(),
    )
}

//! Helpers of the operator's tests against a real kube-apiserver.

#![allow(dead_code)] // each test binary uses its own part

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use streamward_e2e::kube::KubeApiServer;
use streamward_e2e::process::{Process, run};
use streamward_e2e::{helm, net, wait_for};

/// The namespace of the operator's leader-election Lease in the tests.
pub const LEASE_NAMESPACE: &str = "streamward-system";

/// Runs kubectl as the admin; panics with its output if it fails.
pub fn kubectl(server: &KubeApiServer, args: &[&str]) -> String {
    let output = run(&format!("kubectl {args:?}"), server.kubectl().args(args)).unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs kubectl as the admin with `stdin` as the input of `-f -`.
pub fn kubectl_apply(server: &KubeApiServer, yaml: &str) {
    let file = server
        .dir()
        .join(format!("{}.yaml", streamward_e2e::unique_name("manifest")));
    std::fs::write(&file, yaml).unwrap();
    kubectl(server, &["apply", "-f", file.to_str().unwrap()]);
}

/// A started apiserver with the CRDs established and the Lease namespace created.
pub fn cluster() -> KubeApiServer {
    let server = KubeApiServer::start().unwrap();
    server.install_crds().unwrap();
    kubectl(&server, &["create", "namespace", LEASE_NAMESPACE]);
    server
}

/// A running operator and its metrics address.
pub struct Operator {
    /// The process.
    pub process: Process,
    /// `127.0.0.1:<port>` of `/metrics`, `/healthz`, `/readyz`.
    pub metrics: String,
}

impl Operator {
    /// Starts `streamward-operator` as replica `identity` with admin rights, logging to `log`
    /// (appending).
    pub fn start(server: &KubeApiServer, log: &Path, identity: &str) -> Operator {
        Operator::start_as(log, identity, server.kubeconfig())
    }

    /// Starts `streamward-operator` with the credentials of `kubeconfig`.
    pub fn start_as(log: &Path, identity: &str, kubeconfig: &Path) -> Operator {
        Operator::start_with(log, identity, kubeconfig, &[])
    }

    /// Starts `streamward-operator` with the credentials of `kubeconfig` and `extra` flags.
    pub fn start_with(log: &Path, identity: &str, kubeconfig: &Path, extra: &[&str]) -> Operator {
        let metrics = format!("127.0.0.1:{}", net::free_port().unwrap());
        let mut command = Command::new(env!("CARGO_BIN_EXE_streamward-operator"));
        command
            .args(["--metrics-addr", &metrics])
            .args(["--lease-namespace", LEASE_NAMESPACE])
            .args(["--identity", identity])
            .args(["--lease-duration-seconds", "4", "--renew-seconds", "1"])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info");
        let process = Process::spawn("streamward-operator", command, log).unwrap();
        Operator { process, metrics }
    }

    /// The body of `/readyz` once it answers 200.
    pub fn wait_ready(&mut self) -> String {
        let metrics = self.metrics.clone();
        let process = &mut self.process;
        wait_for("the operator to be ready", Duration::from_secs(30), || {
            process.check_running()?;
            match net::http_get(&metrics, "/readyz") {
                Ok((200, body)) => Ok(Some(body)),
                _ => Ok(None),
            }
        })
        .unwrap()
    }

    /// Waits until this replica says it leads.
    pub fn wait_leader(&mut self, within: Duration) {
        let metrics = self.metrics.clone();
        let process = &mut self.process;
        wait_for("the operator to lead", within, || {
            process.check_running()?;
            Ok(net::http_get(&metrics, "/readyz")
                .is_ok_and(|(status, body)| status == 200 && body.contains("leader"))
                .then_some(()))
        })
        .unwrap()
    }

    /// The value of a metric line starting with `prefix` (summed over label sets).
    pub fn metric(&self, prefix: &str) -> f64 {
        let (_, body) = net::http_get(&self.metrics, "/metrics").unwrap();
        body.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Operator {
    /// Waits until the metric lines starting with `prefix` sum to at least `at_least`: a
    /// counter moves after the side effect it counts, so a test reads it only this way.
    pub fn wait_metric(&self, prefix: &str, at_least: f64) {
        wait_for(
            &format!("{prefix} to reach {at_least}"),
            Duration::from_secs(30),
            || Ok((self.metric(prefix) >= at_least).then_some(())),
        )
        .unwrap()
    }
}

/// Waits until `needle` occurs in the file at `log` (a line is written after what it reports).
pub fn wait_log(log: &Path, needle: &str) {
    wait_for(
        &format!("{needle:?} in {}", log.display()),
        Duration::from_secs(30),
        || Ok((log_count(log, needle) >= 1).then_some(())),
    )
    .unwrap()
}

/// How many times `needle` occurs in the file at `log`.
pub fn log_count(log: &Path, needle: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches(needle)
        .count()
}

/// The object as JSON, if it exists.
pub fn get_json(server: &KubeApiServer, args: &[&str]) -> Option<serde_json::Value> {
    let output = server
        .kubectl()
        .arg("get")
        .args(args)
        .args(["-o", "json"])
        .output()
        .unwrap();
    output
        .status
        .success()
        .then(|| serde_json::from_slice(&output.stdout).unwrap())
}

/// Waits until `probe` returns something for the object `args` names.
pub fn wait_json<T>(
    server: &KubeApiServer,
    what: &str,
    args: &[&str],
    within: Duration,
    probe: impl Fn(&serde_json::Value) -> Option<T>,
) -> T {
    wait_for(what, within, || {
        Ok(get_json(server, args).and_then(|value| probe(&value)))
    })
    .unwrap()
}

/// The condition `type_` of an object's status.
pub fn condition<'v>(object: &'v serde_json::Value, type_: &str) -> Option<&'v serde_json::Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// Whether condition `type_` has `status`.
pub fn has_condition(object: &serde_json::Value, type_: &str, status: &str) -> bool {
    condition(object, type_).is_some_and(|c| c["status"] == status)
}

/// A kubeconfig that authenticates as `namespace/service_account` with a token the API server
/// minted (TokenRequest), as a pod's projected token would.
pub fn service_account_kubeconfig(
    server: &KubeApiServer,
    namespace: &str,
    service_account: &str,
) -> PathBuf {
    server
        .service_account_kubeconfig(namespace, service_account)
        .unwrap()
}

/// The operator's RBAC exactly as the chart renders it (its ServiceAccount, ClusterRoles,
/// bindings and namespace Role in [`LEASE_NAMESPACE`], with `watchNamespaces` set to
/// `namespaces`), applied, and a kubeconfig with that ServiceAccount's token.
pub fn operator_kubeconfig(server: &KubeApiServer, namespaces: &[&str]) -> PathBuf {
    assert_eq!(
        helm::NAMESPACE,
        LEASE_NAMESPACE,
        "the chart is rendered into the Lease namespace"
    );
    let watch = format!("{{{}}}", namespaces.join(","));
    let rbac = helm::Helm::offline()
        .unwrap()
        .template_with(
            &[("watchNamespaces", &watch)],
            &[
                "--show-only",
                "templates/serviceaccounts.yaml",
                "--show-only",
                "templates/operator-rbac.yaml",
            ],
        )
        .unwrap();
    kubectl_apply(server, &rbac);
    service_account_kubeconfig(server, LEASE_NAMESPACE, "streamward-operator")
}

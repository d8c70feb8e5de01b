//! The per-identity Role against a real kube-apiserver: the proxy, authenticated with a token
//! of its own service account, watches its own ConfigMap and is forbidden from another's; the
//! Role and RoleBinding go away with the last resource that names the identity.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Operator, get_json, kubectl, kubectl_apply, service_account_kubeconfig};
use streamward_e2e::kube::KubeApiServer;
use streamward_e2e::process::Process;
use streamward_e2e::{net, wait_for, workspace_binary};

const NS: &str = "shop";

const RESOURCES: &str = "apiVersion: streamward.io/v1alpha1
kind: StreamTarget
metadata: {name: kafka, namespace: shop}
spec: {bootstrapServers: ['127.0.0.1:9092']}
---
apiVersion: streamward.io/v1alpha1
kind: StreamPolicy
metadata: {name: orders, namespace: shop}
spec:
  subjects: {serviceAccounts: [orders]}
  rules:
  - {resources: [{resourceType: Topic, name: orders}], operations: [Write], effect: Allow}
---
apiVersion: streamward.io/v1alpha1
kind: StreamPolicy
metadata: {name: billing, namespace: shop}
spec:
  subjects: {serviceAccounts: [billing]}
  rules:
  - {resources: [{resourceType: Topic, name: invoices}], operations: [Read], effect: Allow}
";

/// kubectl as someone else: (succeeded, stdout + stderr).
fn kubectl_as(server: &KubeApiServer, kubeconfig: &Path, args: &[&str]) -> (bool, String) {
    let output = server
        .kubectl()
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// Starts the proxy on `--config-map name` as whoever `kubeconfig` names.
fn proxy(
    server: &KubeApiServer,
    binary: &Path,
    kubeconfig: &Path,
    name: &str,
) -> (Process, String) {
    let admin = format!("127.0.0.1:{}", net::free_port().unwrap());
    let listen = format!("127.0.0.1:{}", net::free_port().unwrap());
    let mut command = Command::new(binary);
    command
        .args(["--namespace", NS, "--service-account", "orders"])
        .args(["--listen", &listen, "--admin", &admin])
        .args(["--config-map", name])
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "info");
    let log = server.dir().join(format!("proxy-{name}.log"));
    (
        Process::spawn("streamward-sidecar", command, &log).unwrap(),
        admin,
    )
}

#[test]
fn each_proxy_reads_only_its_own_config_map_and_the_role_goes_with_the_identity() {
    let server = common::cluster();
    let binary = workspace_binary("streamward-sidecar", "streamward-sidecar").unwrap();
    kubectl(&server, &["create", "namespace", NS]);
    for sa in ["orders", "billing"] {
        kubectl(&server, &["create", "serviceaccount", "-n", NS, sa]);
    }
    kubectl_apply(&server, RESOURCES);
    let log = server.dir().join("operator.log");
    let mut operator = Operator::start(&server, &log, "only");
    operator.wait_leader(Duration::from_secs(30));

    for sa in ["orders", "billing"] {
        let name = format!("streamward-config-{sa}");
        wait_for(
            &format!("the RoleBinding of {sa}"),
            Duration::from_secs(30),
            || Ok(get_json(&server, &["rolebinding", "-n", NS, &name])),
        )
        .unwrap();
        let role = get_json(&server, &["role", "-n", NS, &name]).unwrap();
        assert_eq!(
            role["rules"][0]["resourceNames"],
            serde_json::json!([name]),
            "{role}"
        );
        assert_eq!(
            role["metadata"]["ownerReferences"][0]["kind"],
            "StreamPolicy"
        );
        assert_eq!(
            role["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "streamward-operator"
        );
    }

    // As orders' service account: its own ConfigMap yes, billing's and the list of all no.
    let orders = service_account_kubeconfig(&server, NS, "orders");
    let (ok, output) = kubectl_as(
        &server,
        &orders,
        &["get", "configmap", "streamward-config-orders"],
    );
    assert!(ok, "{output}");
    let (ok, output) = kubectl_as(
        &server,
        &orders,
        &["get", "configmap", "streamward-config-billing"],
    );
    assert!(!ok && output.contains("Forbidden"), "{output}");
    let (ok, output) = kubectl_as(&server, &orders, &["get", "configmaps"]);
    assert!(!ok && output.contains("Forbidden"), "{output}");

    // The real proxy, as orders, watches its own ConfigMap and serves it.
    let config = get_json(
        &server,
        &["configmap", "-n", NS, "streamward-config-orders"],
    )
    .unwrap();
    let hash = config["metadata"]["annotations"]["streamward.io/config-hash"]
        .as_str()
        .unwrap()
        .to_string();
    let (mut own, admin) = proxy(&server, &binary, &orders, "streamward-config-orders");
    wait_for(
        "the proxy to serve its ConfigMap",
        Duration::from_secs(30),
        || {
            own.check_running()?;
            Ok(net::http_get(&admin, "/readyz")
                .is_ok_and(|(status, body)| status == 200 && body.contains(&hash))
                .then_some(()))
        },
    )
    .unwrap();

    // The same proxy pointed at billing's ConfigMap is refused by the API server and fails
    // closed.
    let (mut other, admin) = proxy(&server, &binary, &orders, "streamward-config-billing");
    wait_for(
        "the API server to refuse the watch",
        Duration::from_secs(30),
        || {
            other.check_running()?;
            Ok(other.log_tail(50).contains("forbidden").then_some(()))
        },
    )
    .unwrap();
    let (status, body) = net::http_get(&admin, "/readyz").unwrap();
    assert_eq!(status, 503, "{body}");

    // Without a resource naming billing, its ConfigMap, Role and RoleBinding go away.
    kubectl(&server, &["delete", "streampolicy", "-n", NS, "billing"]);
    wait_for(
        "billing's Role to be removed",
        Duration::from_secs(30),
        || {
            let gone = ["configmap", "role", "rolebinding"].iter().all(|kind| {
                get_json(&server, &[kind, "-n", NS, "streamward-config-billing"]).is_none()
            });
            Ok(gone.then_some(()))
        },
    )
    .unwrap();
    assert!(get_json(&server, &["role", "-n", NS, "streamward-config-orders"]).is_some());
}

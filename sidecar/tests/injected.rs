//! The proxy container the operator's webhook injects, run as written: its args and its
//! downward-API environment start this proxy, which finds its ConfigMap through a real
//! kube-apiserver and answers the probes the container declares.
//!
//! There is no kubelet, so this test does the kubelet's part: it resolves the `fieldRef`
//! variables, puts the mounted folders under a temporary directory, moves the admin listener
//! from every interface to loopback (tests listen on 127.0.0.1 only) and gives the API server's
//! kubeconfig where a pod would have its service-account token.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use streamward_api::compile::{self, Inputs};
use streamward_api::config::{CONFIG_KEY, WorkloadIdentity, config_map_name};
use streamward_e2e::kube::KubeApiServer;
use streamward_e2e::process::{Process, run};
use streamward_e2e::{cache, net, wait_for};
use streamward_operator::webhook::inject::{self, InjectSettings, PodContext};

const NS: &str = "shop";
const SA: &str = "orders-app";

fn kubectl(server: &KubeApiServer, args: &[&str]) {
    run(&format!("kubectl {args:?}"), server.kubectl().args(args)).unwrap();
}

/// The injected proxy container of an opted-in pod, as the API server would store it.
fn injected_proxy() -> Value {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "orders-7d9f", "labels": {"streamward.io/inject": "true", "app": "orders"}},
        "spec": {"serviceAccountName": SA, "containers": [{"name": "app", "image": "orders:1"}]},
    });
    let typed = serde_json::from_value(pod.clone()).unwrap();
    let ctx = PodContext {
        namespace: NS.into(),
        secrets: BTreeSet::new(),
    };
    let patch = inject::plan(&typed, &ctx, &InjectSettings::default());
    json_patch::patch(&mut pod, &patch).unwrap();
    pod["spec"]["initContainers"][0].clone()
}

#[test]
fn the_injected_proxy_container_starts_and_serves_its_config_map() {
    let server = KubeApiServer::start().unwrap();
    kubectl(&server, &["create", "namespace", NS]);

    // The ConfigMap the operator compiles for shop/orders-app.
    let manifests = format!(
        "apiVersion: streamward.io/v1alpha1
kind: StreamTarget
metadata: {{name: kafka, namespace: {NS}}}
spec:
  bootstrapServers: ['kafka-0.kafka:9092']
---
apiVersion: streamward.io/v1alpha1
kind: StreamPolicy
metadata: {{name: orders, namespace: {NS}}}
spec:
  subjects: {{serviceAccounts: [{SA}]}}
  rules:
  - resources: [{{resourceType: Topic, name: orders., patternType: Prefixed}}]
    operations: [Read]
    effect: Allow
"
    );
    let inputs: Inputs = compile::parse_manifests(&manifests).unwrap();
    let identity = WorkloadIdentity {
        namespace: NS.into(),
        service_account: SA.into(),
    };
    let config = compile::compile(&inputs, &identity).unwrap();
    let map = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": config_map_name(SA), "namespace": NS},
        "data": {CONFIG_KEY: serde_json::to_string(&config).unwrap()},
    });
    let file = server.dir().join("config-map.json");
    std::fs::write(&file, map.to_string()).unwrap();
    kubectl(&server, &["apply", "-f", file.to_str().unwrap()]);

    // The kubelet's part.
    let proxy = injected_proxy();
    let dir = cache::run_dir("injected").unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("etc/streamward/config")).unwrap();
    std::fs::create_dir_all(root.join("etc/streamward/pod")).unwrap();
    std::fs::create_dir_all(root.join("var/run/streamward/secrets")).unwrap();
    std::fs::write(
        root.join("etc/streamward/pod/labels"),
        "app=\"orders\"\nstreamward.io/inject=\"true\"\n",
    )
    .unwrap();
    let admin = format!("127.0.0.1:{}", net::free_port().unwrap());
    let bootstrap = format!("127.0.0.1:{}", net::free_port().unwrap());
    let args: Vec<String> = proxy["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|arg| {
            let arg = arg.as_str().unwrap();
            if arg.starts_with("0.0.0.0:") {
                admin.clone()
            } else if arg == "127.0.0.1:9092" {
                bootstrap.clone()
            } else if let Some(path) = arg.strip_prefix('/') {
                root.join(path).display().to_string()
            } else {
                arg.to_owned()
            }
        })
        .collect();
    assert!(args.contains(&config_map_name(SA)), "{args:?}");
    let mut command = Command::new(env!("CARGO_BIN_EXE_streamward-sidecar"));
    command
        .args(&args)
        .env("KUBECONFIG", server.kubeconfig())
        .env("RUST_LOG", "info");
    for var in proxy["env"].as_array().unwrap() {
        let name = var["name"].as_str().unwrap();
        let value = match var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            Some("metadata.namespace") => NS.to_owned(),
            Some("spec.serviceAccountName") => SA.to_owned(),
            Some("metadata.name") => "orders-7d9f".to_owned(),
            Some(other) => {
                panic!("a field the kubelet would resolve but this test does not: {other}")
            }
            None => var["value"].as_str().unwrap().to_owned(),
        };
        command.env(name, value);
    }
    let mut process =
        Process::spawn("streamward-sidecar", command, &root.join("sidecar.log")).unwrap();

    // The probes the container declares answer on its admin port once the config is loaded.
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let path = proxy[probe]["httpGet"]["path"].as_str().unwrap().to_owned();
        assert_eq!(proxy[probe]["httpGet"]["port"], 9464);
        wait_for(&format!("{probe} {path}"), Duration::from_secs(30), || {
            process.check_running()?;
            let (status, body) = net::http_get(&admin, &path)?;
            anyhow::ensure!(status == 200, "{path} {status}: {body}");
            Ok(Some(()))
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", process.log_tail(30)));
    }
    let log = process.log_tail(50);
    assert!(
        log.contains(&config.hash),
        "the ConfigMap's config was not loaded:\n{log}"
    );
    assert!(
        std::net::TcpStream::connect(&bootstrap).is_ok(),
        "no bootstrap listener"
    );
}

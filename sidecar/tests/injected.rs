//! The proxy container the operator's webhook injects, run as written: its args and its
//! downward-API environment start this proxy, which finds its ConfigMap through a real
//! kube-apiserver, answers the probes the container declares, proxies a real Kafka and sends
//! its audit events to a real collector that checks its projected token with TokenReview.
//!
//! There is no kubelet, so this test does the kubelet's part: it resolves the `fieldRef`
//! variables, puts the mounted folders under a temporary directory, moves the admin listener
//! from every interface to loopback (tests listen on 127.0.0.1 only), gives the API server's
//! kubeconfig where a pod would have its service-account token, mints the collector token the
//! projected volume would hold, and points the collector URL at the test's collector.

mod common;

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use streamward_api::audit::{AuditEvent, EventData};
use streamward_api::compile::{self, Inputs};
use streamward_api::config::{CONFIG_KEY, WorkloadIdentity, config_map_name};
use streamward_e2e::collector::Collector;
use streamward_e2e::kube::KubeApiServer;
use streamward_e2e::pki::Ca;
use streamward_e2e::process::{Process, run};
use streamward_e2e::{cache, net, wait_for, workspace_binary};
use streamward_operator::configs;
use streamward_operator::signing::ConfigSigner;
use streamward_operator::webhook::inject::{self, AuditTarget, InjectSettings, PodContext};

const NS: &str = "shop";
const SA: &str = "orders-app";

const COLLECTOR_URL: &str = "https://streamward-collector.streamward-system.svc:8443";

fn kubectl(server: &KubeApiServer, args: &[&str]) -> String {
    let output = run(&format!("kubectl {args:?}"), server.kubectl().args(args)).unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The injected proxy container of an opted-in pod, as the API server would store it, for an
/// operator whose collector's certificate chains to `collector_ca`.
fn injected_proxy(collector_ca: &str, config_public_key: &str) -> Value {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "orders-7d9f", "labels": {"streamward.io/inject": "true", "app": "orders"}},
        "spec": {"serviceAccountName": SA, "containers": [{"name": "app", "image": "orders:1"}]},
    });
    let typed = serde_json::from_value(pod.clone()).unwrap();
    let ctx = PodContext {
        namespace: NS.into(),
    };
    let settings = InjectSettings {
        audit: Some(AuditTarget {
            url: COLLECTOR_URL.into(),
            audience: "streamward-collector".into(),
            ca_pem: Some(collector_ca.to_owned()),
            spool_bytes: 8 * 1024 * 1024,
            full: "refuse".into(),
        }),
        config_public_key: Some(config_public_key.to_owned()),
        ..InjectSettings::default()
    };
    let patch = inject::plan(&typed, &ctx, &settings).unwrap();
    json_patch::patch(&mut pod, &patch).unwrap();
    pod["spec"]["initContainers"][0].clone()
}

#[test]
fn the_injected_proxy_container_serves_its_config_map_and_audits_to_the_collector() {
    let server = KubeApiServer::start().unwrap();
    kubectl(&server, &["create", "namespace", NS]);
    kubectl(&server, &["create", "serviceaccount", "-n", NS, SA]);
    let kafka = common::kafka();

    // The ConfigMap the operator compiles for shop/orders-app.
    let manifests = format!(
        "apiVersion: streamward.io/v1alpha1
kind: StreamTarget
metadata: {{name: kafka, namespace: {NS}}}
spec:
  bootstrapServers: ['{bootstrap}']
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
",
        bootstrap = kafka.bootstrap()
    );
    let inputs: Inputs = compile::parse_manifests(&manifests).unwrap();
    let identity = WorkloadIdentity {
        namespace: NS.into(),
        service_account: SA.into(),
    };
    let config = compile::compile(&inputs, &identity).unwrap();
    // Signed by the operator's key, as the operator writes it.
    let (signer, _) = ConfigSigner::generate().unwrap();
    let map = configs::build_config_map(&config, &inputs, Some(&signer)).unwrap();
    let map = serde_json::to_value(&map).unwrap();
    let file = server.dir().join("config-map.json");
    std::fs::write(&file, map.to_string()).unwrap();
    kubectl(&server, &["apply", "-f", file.to_str().unwrap()]);

    // The collector, as the chart runs it: TokenReview and HTTPS.
    let dir = cache::run_dir("injected").unwrap();
    let root = dir.path();
    let collector_dir = root.join("collector");
    std::fs::create_dir_all(&collector_dir).unwrap();
    let collector_ca = Ca::new("streamward-collector-ca").unwrap();
    let collector_binary =
        workspace_binary("streamward-collector", "streamward-collector").unwrap();
    let collector = Collector::start_in_cluster_mode(
        &collector_binary,
        &collector_dir,
        server.kubeconfig(),
        &collector_ca,
    )
    .unwrap();

    // The kubelet's part.
    let proxy = injected_proxy(collector_ca.cert_pem(), signer.public_key_hex());
    for folder in [
        "etc/streamward/config",
        "etc/streamward/pod",
        "var/run/streamward/secrets",
        "var/run/streamward/collector",
        "var/run/streamward/spool",
    ] {
        std::fs::create_dir_all(root.join(folder)).unwrap();
    }
    // The projected volume's token: minted for the collector's audience.
    let token = kubectl(
        &server,
        &[
            "create",
            "token",
            "-n",
            NS,
            SA,
            "--audience",
            "streamward-collector",
        ],
    );
    std::fs::write(root.join("var/run/streamward/collector/token"), token).unwrap();
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
            } else if arg == COLLECTOR_URL {
                format!("https://{}", collector.addr())
            } else if let Some(path) = arg.strip_prefix('/') {
                root.join(path).display().to_string()
            } else {
                arg.to_owned()
            }
        })
        .collect();
    assert!(args.contains(&config_map_name(SA)), "{args:?}");
    // The staleness limit and the AU-5 choice reach the proxy (the operator's defaults, and
    // --proxy-audit-full=refuse).
    for pair in [
        ["--max-config-staleness", "5m"],
        ["--stale-config", "grants"],
        ["--audit-full", "refuse"],
    ] {
        assert!(args.windows(2).any(|w| w == pair), "{pair:?} in {args:?}");
    }
    // The masking memory bounds, sized from the container's memory limit.
    assert!(args.iter().any(|a| a == "--mask-memory-bytes"), "{args:?}");
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
    // The staleness of the config it watches is measured, and it is fresh.
    let (_, metrics) = net::http_get(&admin, "/metrics").unwrap();
    assert!(
        metrics.contains("streamward_sidecar_config_stale 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("streamward_sidecar_audit_full 0"),
        "{metrics}"
    );
    let log = process.log_tail(50);
    assert!(
        log.contains(&config.hash),
        "the ConfigMap's config was not loaded:\n{log}"
    );

    // A client's Metadata request through the proxy reaches the collector as an event of this
    // pod, over TLS to the CA the webhook handed over, with a token TokenReview accepts.
    let metadata = streamward_e2e::kafka::wire::metadata(&bootstrap).unwrap();
    assert!(!metadata.brokers.is_empty());
    let events = wait_for("the audit event", Duration::from_secs(30), || {
        let out = Command::new(&collector_binary)
            .arg("query")
            .arg("--data")
            .arg(collector.data())
            .args([
                "--namespace",
                NS,
                "--api-key",
                "Metadata",
                "--format",
                "ndjson",
            ])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let events: Vec<AuditEvent> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
        Ok((!events.is_empty()).then_some(events))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", process.log_tail(40)));
    let EventData::Request(record) = &events[0].data else {
        panic!("not a request event: {:?}", events[0]);
    };
    let identity = &record.identity;
    assert_eq!(identity.namespace, NS);
    assert_eq!(identity.service_account, SA);
    assert_eq!(identity.pod.as_deref(), Some("orders-7d9f"));

    // A namespace editor rewrites the config to allow everything (no operator runs here to
    // put it back): the proxy cannot verify it, refuses it and fails closed.
    let original = config_json(&map);
    // The prefix `orders.` widened to every topic.
    let forged = original.replace("\"name\": \"orders.\"", "\"name\": \"\"");
    assert_ne!(forged, original, "the forgery must change the config");
    let patch = json!({"data": {CONFIG_KEY: forged}}).to_string();
    kubectl(
        &server,
        &[
            "patch",
            "configmap",
            "-n",
            NS,
            &config_map_name(SA),
            "--type=merge",
            "-p",
            &patch,
        ],
    );
    wait_for(
        "the forged config to be refused",
        Duration::from_secs(30),
        || {
            process.check_running()?;
            let (status, body) = net::http_get(&admin, "/readyz")?;
            Ok((status == 503 && body.contains("not signed")).then_some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", process.log_tail(20)));
}

fn config_json(map: &Value) -> String {
    map["data"][CONFIG_KEY].as_str().unwrap().to_owned()
}

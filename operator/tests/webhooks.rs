//! The admission webhooks against a real kube-apiserver: invalid resources refused at
//! `kubectl apply`, the proxy injected into opted-in pods exactly once, everything else left
//! alone, and the webhook's own certificate rotated with the caBundle following it.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use streamward_e2e::kube::KubeApiServer;
use streamward_e2e::process::{Process, run};
use streamward_e2e::{cache, net, wait_for};

const PROXY: &str = "streamward-proxy";

/// The operator's collector flags as the chart sets them: proxies audit to the collector
/// Service, whose certificate the operator issues.
const COLLECTOR: &[&str] = &[
    "--collector-url",
    "https://streamward-collector.streamward-system.svc:8443",
    "--collector-tls-secret",
    "streamward-collector-tls",
    "--collector-service-name",
    "streamward-collector",
];

struct Cluster {
    server: KubeApiServer,
    operator: Process,
    webhook: SocketAddr,
}

fn kubectl(server: &KubeApiServer, args: &[&str]) -> String {
    let output = run(&format!("kubectl {args:?}"), server.kubectl().args(args)).unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `kubectl <args> -f -` with `yaml` on stdin, not checked.
fn kubectl_stdin(server: &KubeApiServer, args: &[&str], yaml: &str) -> Output {
    let mut child = server
        .kubectl()
        .args(args)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// `kubectl apply` that must be refused; returns what kubectl printed.
fn refused(server: &KubeApiServer, yaml: &str) -> String {
    let output = kubectl_stdin(server, &["apply"], yaml);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !output.status.success(),
        "kubectl apply accepted:\n{yaml}\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(
        stderr.contains("denied the request"),
        "refused, but not by the webhook: {stderr}"
    );
    stderr
}

fn applied(server: &KubeApiServer, yaml: &str) -> String {
    let output = kubectl_stdin(server, &["apply"], yaml);
    assert!(
        output.status.success(),
        "kubectl apply refused:\n{yaml}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn get_json(server: &KubeApiServer, args: &[&str]) -> Value {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&kubectl(server, &all)).unwrap()
}

const BAD_REGEX: &str = "apiVersion: streamward.io/v1alpha1
kind: MaskingRule
metadata: {name: bad-regex, namespace: demo}
spec:
  topics: [{name: orders}]
  format: Text
  detectors:
    - type: Email
    - type: Regex
      pattern: 'card=(?P<mask>[0-9'
";

fn start_operator(server: &KubeApiServer, port: u16, extra: &[&str], log: &Path) -> Process {
    let mut command = Command::new(env!("CARGO_BIN_EXE_streamward-operator"));
    command
        .env("KUBECONFIG", server.kubeconfig())
        .env("RUST_LOG", "info")
        .args([
            "--webhook-url",
            &format!("https://127.0.0.1:{port}"),
            "--webhook-listen",
            &format!("127.0.0.1:{port}"),
            "--operator-namespace",
            "streamward-system",
            "--proxy-image",
            "streamward-sidecar:test",
            "--metrics-addr",
            &format!("127.0.0.1:{}", net::free_port().unwrap()),
        ])
        .args(extra);
    Process::spawn("streamward-operator", command, log).unwrap()
}

/// A kube-apiserver with the CRDs, namespaces `demo` and `streamward-system`, and the operator
/// with its webhooks registered and answering.
fn cluster(extra: &[&str]) -> Cluster {
    let server = KubeApiServer::start().unwrap();
    let crds = cache::source_root().join("crds");
    kubectl(&server, &["apply", "-f", &crds.display().to_string()]);
    kubectl(
        &server,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd",
            "--all",
        ],
    );
    kubectl(&server, &["create", "namespace", "demo"]);
    kubectl(&server, &["create", "namespace", "streamward-system"]);
    let port = net::free_port().unwrap();
    let log = server.dir().join("operator.log");
    let mut operator = start_operator(&server, port, extra, &log);
    // Ready once the API server gets the webhook's own answer (not "failed calling webhook").
    wait_for(
        "the validating webhook to answer",
        Duration::from_secs(90),
        || {
            operator.check_running()?;
            let output = kubectl_stdin(&server, &["apply", "--dry-run=server"], BAD_REGEX);
            let stderr = String::from_utf8_lossy(&output.stderr);
            Ok(stderr.contains("denied the request").then_some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", operator.log_tail(30)));
    Cluster {
        server,
        operator,
        webhook: SocketAddr::from(([127, 0, 0, 1], port)),
    }
}

#[test]
fn invalid_resources_and_unauditable_pods_are_refused_at_kubectl_apply() {
    let Cluster {
        server, operator, ..
    } = cluster(&[]);

    let stderr = refused(&server, BAD_REGEX);
    assert!(stderr.contains("MaskingRule demo/bad-regex"), "{stderr}");
    assert!(stderr.contains("spec.detectors[1].pattern"), "{stderr}");

    let wildcard = "apiVersion: streamward.io/v1alpha1
kind: StreamPolicy
metadata: {name: wildcard, namespace: demo}
spec:
  subjects: {serviceAccounts: [orders-app]}
  rules:
    - name: read-orders
      resources: [{resourceType: Topic, name: 'orders.*'}]
      operations: [Read]
      effect: Allow
";
    let stderr = refused(&server, wildcard);
    assert!(stderr.contains("StreamPolicy demo/wildcard"), "{stderr}");
    assert!(
        stderr.contains("spec.rules[0].resources[0].name"),
        "{stderr}"
    );
    assert!(stderr.contains("Prefixed"), "{stderr}");

    let dangling = "apiVersion: streamward.io/v1alpha1
kind: StreamPolicy
metadata: {name: dangling, namespace: demo}
spec:
  targetRef: no-such-kafka
  subjects: {serviceAccounts: [orders-app]}
  rules:
    - resources: [{resourceType: Topic, name: orders., patternType: Prefixed}]
      operations: [Read]
      effect: Allow
";
    let stderr = refused(&server, dangling);
    assert!(stderr.contains("spec.targetRef"), "{stderr}");
    assert!(stderr.contains("no-such-kafka"), "{stderr}");

    let grant = "apiVersion: streamward.io/v1alpha1
kind: AccessGrant
metadata: {name: cluster-typo, namespace: demo}
spec:
  subjects: {users: [alice]}
  resources: [{resourceType: Cluster, name: prod}]
  operations: [Describe]
  durationSeconds: 600
  reason: incident
";
    let stderr = refused(&server, grant);
    assert!(stderr.contains("spec.resources[0].name"), "{stderr}");

    // None of them was stored.
    let listed = kubectl(&server, &["get", "streamward", "-n", "demo", "-o", "name"]);
    assert_eq!(listed.trim(), "", "stored despite the refusal");

    // The samples pass in one apply (their file names put the target first); the dangling
    // policy then passes too, now that its target exists.
    let root = cache::source_root();
    let samples = root.join("config/samples");
    kubectl(&server, &["apply", "-f", &samples.display().to_string()]);
    let created = dangling.replace("no-such-kafka", "local-kafka");
    applied(&server, &created);

    // An edit that breaks a stored policy is refused; one that only relabels it is not.
    let broken = created
        .replace("patternType: Prefixed", "patternType: Literal")
        .replace("orders.", "'orders.*'");
    let stderr = refused(&server, &broken);
    assert!(
        stderr.contains("spec.rules[0].resources[0].name"),
        "{stderr}"
    );
    kubectl(
        &server,
        &[
            "label",
            "streampolicy",
            "-n",
            "demo",
            "dangling",
            "team=orders",
        ],
    );

    // This operator has no collector and was not told that audit is off: an opted-in pod is
    // refused, saying why, rather than run with a proxy that audits nothing.
    let stderr = refused(
        &server,
        &pod_yaml("unaudited", "demo", "streamward.io/inject: 'true'", "", ""),
    );
    assert!(stderr.contains("--collector-url"), "{stderr}");
    drop(operator);
}

fn pod_yaml(
    name: &str,
    namespace: &str,
    labels: &str,
    annotations: &str,
    extra_spec: &str,
) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {namespace}
  labels: {{{labels}}}
  annotations: {{{annotations}}}
spec:
  serviceAccountName: orders-app
{extra_spec}  containers:
    - name: app
      image: orders:1
      env: [{{name: LOG_LEVEL, value: info}}]
"
    )
}

fn proxies(pod: &Value) -> Vec<&Value> {
    ["initContainers", "containers"]
        .iter()
        .filter_map(|list| pod["spec"][list].as_array())
        .flatten()
        .filter(|c| c["name"] == PROXY)
        .collect()
}

fn bootstrap(container: &Value) -> Option<&str> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == "KAFKA_BOOTSTRAP_SERVERS")
        .and_then(|e| e["value"].as_str())
}

#[test]
fn opted_in_pods_get_the_proxy_once_and_others_are_untouched() {
    let Cluster {
        server, operator, ..
    } = cluster(COLLECTOR);
    applied(
        &server,
        "apiVersion: streamward.io/v1alpha1
kind: StreamTarget
metadata: {name: prod-kafka, namespace: demo}
spec:
  bootstrapServers: ['kafka-0.kafka:9093']
  sasl: {mechanism: SCRAM-SHA-512, credentialsSecret: kafka-orders-credentials}
",
    );

    // Opted in by its label.
    let manifest = pod_yaml(
        "orders",
        "demo",
        "streamward.io/inject: 'true'",
        "streamward.io/target: prod-kafka",
        "",
    );
    applied(&server, &manifest);
    let pod = get_json(&server, &["pod", "-n", "demo", "orders"]);
    let found = proxies(&pod);
    assert_eq!(found.len(), 1, "{pod:#}");
    let proxy = found[0];
    assert_eq!(
        pod["spec"]["initContainers"][0]["name"], PROXY,
        "native sidecar first"
    );
    assert_eq!(proxy["restartPolicy"], "Always");
    assert_eq!(proxy["image"], "streamward-sidecar:test");
    assert_eq!(proxy["securityContext"]["runAsNonRoot"], true);
    assert_eq!(proxy["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(proxy["securityContext"]["capabilities"]["drop"][0], "ALL");
    let args: Vec<&str> = proxy["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.windows(2)
            .any(|w| w == ["--config-map", "streamward-config-orders-app"]),
        "{args:?}"
    );
    assert!(args.windows(2).any(|w| w == ["--listen", "127.0.0.1:9092"]));
    let mounts: Vec<&str> = proxy["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    // No Secret is mounted: the proxy asks this operator for its own, with a token only it
    // mounts, and the pod carries the operator's signature of the proxy container.
    assert!(mounts.contains(&"/var/run/streamward/secrets-token"));
    assert!(
        mounts
            .iter()
            .all(|m| !m.starts_with("/var/run/streamward/secrets/"))
    );
    assert!(
        args.windows(2)
            .any(|w| w[0] == "--secrets-url" && w[1].starts_with("https://127.0.0.1:")),
        "{args:?}"
    );
    assert!(
        pod["metadata"]["annotations"]["streamward.io/proxy-signature"].is_string(),
        "{pod:#}"
    );
    assert!(mounts.contains(&"/etc/streamward/config"));

    // It audits to the collector Service with a token minted for the collector, spooling to
    // a bounded emptyDir, and trusts the CA that signed the collector's certificate.
    assert!(
        args.windows(2).any(|w| w
            == [
                "--audit-url",
                "https://streamward-collector.streamward-system.svc:8443"
            ]),
        "{args:?}"
    );
    assert!(mounts.contains(&"/var/run/streamward/collector"));
    assert!(mounts.contains(&"/var/run/streamward/spool"));
    let volume = |name: &str| {
        pod["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no volume {name}: {pod:#}"))
            .clone()
    };
    assert_eq!(
        volume("streamward-collector-token")["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "streamward-collector"
    );
    assert!(volume("streamward-audit-spool")["emptyDir"]["sizeLimit"].is_string());
    let decode = |key: &str| {
        kubectl(
            &server,
            &[
                "get",
                "secret",
                "-n",
                "streamward-system",
                "streamward-collector-tls",
                "-o",
                &format!("go-template={{{{index .data \"{key}\" | base64decode}}}}"),
            ],
        )
    };
    let ca_env = proxy["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "STREAMWARD_AUDIT_CA_PEM")
        .unwrap();
    assert_eq!(ca_env["value"].as_str().unwrap(), decode("ca.crt"));
    let cert = decode("tls.crt");
    let ca = decode("ca.crt");
    verifies_for(&ca, &cert, "streamward-collector.streamward-system.svc").unwrap();
    assert!(verifies_for(&ca, &cert, "example.com").is_err());
    let app = &pod["spec"]["containers"][0];
    assert_eq!(bootstrap(app), Some("127.0.0.1:9092"));
    assert!(
        app.get("volumeMounts").is_none(),
        "the app sees no credentials: {app:#}"
    );
    assert_eq!(
        pod["metadata"]["annotations"]["streamward.io/injected"],
        "true"
    );

    // Re-applying the same manifest changes nothing.
    applied(&server, &manifest);
    let again = get_json(&server, &["pod", "-n", "demo", "orders"]);
    assert_eq!(again["spec"], pod["spec"]);

    // Admitting the injected pod once more (as a new pod) injects nothing more.
    let mut copy = pod.clone();
    copy["metadata"] = serde_json::json!({
        "name": "orders-copy",
        "namespace": "demo",
        "labels": pod["metadata"]["labels"],
        "annotations": pod["metadata"]["annotations"],
    });
    copy.as_object_mut().unwrap().remove("status");
    let output = kubectl_stdin(
        &server,
        &["create", "--dry-run=server", "-o", "json"],
        &copy.to_string(),
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let readmitted: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(proxies(&readmitted).len(), 1);
    assert_eq!(
        readmitted["spec"]["initContainers"],
        pod["spec"]["initContainers"]
    );
    assert_eq!(readmitted["spec"]["containers"], pod["spec"]["containers"]);
    assert_eq!(readmitted["spec"]["volumes"], pod["spec"]["volumes"]);

    // Not opted in: untouched.
    applied(&server, &pod_yaml("plain", "demo", "app: plain", "", ""));
    let plain = get_json(&server, &["pod", "-n", "demo", "plain"]);
    assert!(proxies(&plain).is_empty());
    assert_eq!(bootstrap(&plain["spec"]["containers"][0]), None);
    assert!(
        plain["metadata"]["annotations"]
            .get("streamward.io/injected")
            .is_none()
    );

    // A system namespace and the operator's own: untouched even when labelled.
    for namespace in ["kube-system", "streamward-system"] {
        applied(
            &server,
            &pod_yaml(
                "labelled",
                namespace,
                "streamward.io/inject: 'true'",
                "",
                "",
            ),
        );
        let pod = get_json(&server, &["pod", "-n", namespace, "labelled"]);
        assert!(proxies(&pod).is_empty(), "{namespace}: {pod:#}");
    }

    // A namespace that opts in: every pod, except one that opts out.
    kubectl(&server, &["create", "namespace", "team"]);
    kubectl(
        &server,
        &["label", "namespace", "team", "streamward.io/inject=enabled"],
    );
    applied(&server, &pod_yaml("member", "team", "app: member", "", ""));
    applied(
        &server,
        &pod_yaml("opted-out", "team", "streamward.io/inject: 'false'", "", ""),
    );
    applied(
        &server,
        &pod_yaml("both", "team", "streamward.io/inject: 'true'", "", ""),
    );
    for (name, expected) in [("member", 1), ("opted-out", 0), ("both", 1)] {
        let pod = get_json(&server, &["pod", "-n", "team", name]);
        assert_eq!(proxies(&pod).len(), expected, "{name}: {pod:#}");
    }

    // Opted in but impossible to proxy: refused, rather than run unproxied.
    let stderr = refused(
        &server,
        &pod_yaml(
            "host",
            "demo",
            "streamward.io/inject: 'true'",
            "",
            "  hostNetwork: true\n",
        ),
    );
    assert!(stderr.contains("hostNetwork"), "{stderr}");
    let stderr = refused(
        &server,
        &pod_yaml(
            "lost",
            "demo",
            "streamward.io/inject: 'true'",
            "streamward.io/target: no-such-kafka",
            "",
        ),
    );
    assert!(stderr.contains("streamward.io/target"), "{stderr}");
    drop(operator);
}

/// Whether `cert` (PEM) chains to `ca` (PEM) for the DNS name `name`, now.
fn verifies_for(ca: &str, cert: &str, name: &str) -> Result<(), String> {
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    let mut roots = rustls::RootCertStore::empty();
    for root in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots
            .add(root.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| e.to_string())?;
    let leaf = CertificateDer::from_pem_slice(cert.as_bytes()).map_err(|e| e.to_string())?;
    let name = ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
    verifier
        .verify_server_cert(&leaf, &[], &name, &[], UnixTime::now())
        .map(drop)
        .map_err(|e| e.to_string())
}

/// The certificate the webhook serves, after a handshake that verifies it against `ca_bundle`
/// for 127.0.0.1 (the handshake fails otherwise).
fn served_certificate(address: SocketAddr, ca_bundle: &[u8]) -> Result<Vec<u8>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_bundle) {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let tcp = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| e.to_string())?;
        let name = ServerName::IpAddress(address.ip().into());
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (_, connection) = tls.get_ref();
        connection
            .peer_certificates()
            .and_then(|certs| certs.first())
            .map(|cert| cert.to_vec())
            .ok_or_else(|| "no certificate".to_owned())
    })
}

/// The caBundle of both webhook configurations, or an error while they disagree. The operator
/// patches the two configurations one after the other, so a read between the patches sees two
/// bundles; callers poll until they agree.
fn ca_bundle(server: &KubeApiServer) -> anyhow::Result<Vec<u8>> {
    use k8s_openapi::api::admissionregistration::v1::{
        MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
    };
    let validating: ValidatingWebhookConfiguration = serde_json::from_value(get_json(
        server,
        &["validatingwebhookconfiguration", "streamward"],
    ))
    .unwrap();
    let mutating: MutatingWebhookConfiguration = serde_json::from_value(get_json(
        server,
        &["mutatingwebhookconfiguration", "streamward"],
    ))
    .unwrap();
    let mut bundles: Vec<Vec<u8>> = validating
        .webhooks
        .unwrap_or_default()
        .into_iter()
        .map(|w| w.client_config)
        .chain(
            mutating
                .webhooks
                .unwrap_or_default()
                .into_iter()
                .map(|w| w.client_config),
        )
        .map(|c| c.ca_bundle.map(|b| b.0).unwrap_or_default())
        .collect();
    // Validating: resources, pods ×2, exec, tokens; mutating: pods ×2, stamping.
    assert_eq!(bundles.len(), 8);
    anyhow::ensure!(
        bundles.windows(2).all(|w| w[0] == w[1]),
        "the webhooks' caBundles differ"
    );
    Ok(bundles.remove(0))
}

/// The caBundle, once every webhook carries the same one.
fn agreed_ca_bundle(server: &KubeApiServer) -> Vec<u8> {
    wait_for(
        "the webhooks' caBundles to agree",
        Duration::from_secs(30),
        || ca_bundle(server).map(Some),
    )
    .unwrap()
}

fn first_pem(bundle: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(bundle);
    let end = "-----END CERTIFICATE-----";
    text.find(end)
        .map(|at| text[..at + end.len()].as_bytes().to_vec())
        .unwrap_or_default()
}

#[test]
fn the_webhook_certificate_rotates_and_the_ca_bundle_follows() {
    // A 30 s certificate: renewed after 20 s; the CA (90 s) after 45 s.
    let Cluster {
        server,
        mut operator,
        webhook,
    } = cluster(&["--webhook-cert-lifetime-seconds", "30"]);
    let first_bundle = agreed_ca_bundle(&server);
    let first_ca = first_pem(&first_bundle);
    let first = served_certificate(webhook, &first_bundle).unwrap();
    let secret = get_json(
        &server,
        &[
            "secret",
            "-n",
            "streamward-system",
            "streamward-webhook-tls",
        ],
    );
    assert!(secret["data"]["tls.crt"].is_string());

    // A new serving certificate, which the API server (through the caBundle) trusts.
    let second = wait_for("a renewed certificate", Duration::from_secs(60), || {
        operator.check_running()?;
        let bundle = ca_bundle(&server)?;
        let served = served_certificate(webhook, &bundle).map_err(anyhow::Error::msg)?;
        Ok((served != first).then_some(served))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", operator.log_tail(30)));
    assert_ne!(second, first);
    let stderr = refused(&server, BAD_REGEX);
    assert!(stderr.contains("spec.detectors[1].pattern"), "{stderr}");

    // Later a new CA: the bundle names it first and keeps the old one until it expires.
    let rotated = wait_for("a new CA in the caBundle", Duration::from_secs(90), || {
        operator.check_running()?;
        let bundle = ca_bundle(&server)?;
        Ok((first_pem(&bundle) != first_ca).then_some(bundle))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", operator.log_tail(30)));
    let new_ca = first_pem(&rotated);
    assert!(
        String::from_utf8_lossy(&rotated).contains(String::from_utf8_lossy(&first_ca).as_ref()),
        "the previous CA left the bundle before it expired"
    );
    // The certificate served now is the new CA's (it does not verify against the old CA).
    let served = wait_for(
        "a certificate of the new CA",
        Duration::from_secs(30),
        || Ok(served_certificate(webhook, &new_ca).ok()),
    )
    .unwrap();
    assert!(served_certificate(webhook, &first_ca).is_err());
    assert_ne!(served, second);
    let stderr = refused(&server, BAD_REGEX);
    assert!(stderr.contains("spec.detectors[1].pattern"), "{stderr}");
    drop(operator);
}

/// `kubectl create -f -` of `yaml`, which must be refused by the webhook because `because`.
fn refused_pod(server: &KubeApiServer, yaml: &str, because: &str) {
    let stderr = refused(server, yaml);
    assert!(stderr.contains(because), "expected {because:?}: {stderr}");
}

#[test]
fn the_pod_author_can_neither_fake_the_proxy_nor_reach_into_it() {
    let Cluster {
        server, operator, ..
    } = cluster(COLLECTOR);
    let opted_in = "streamward.io/inject: 'true'";
    applied(&server, &pod_yaml("orders", "demo", opted_in, "", ""));

    // A copy of an injected pod (as `kubectl get -o yaml` gives it, with the API server's
    // defaults filled in) is recognised as injected, not injected twice and not refused.
    let mut copy = get_json(&server, &["pod", "-n", "demo", "orders"]);
    copy["metadata"] = serde_json::json!({
        "name": "orders-copy",
        "namespace": "demo",
        "labels": copy["metadata"]["labels"].clone(),
        "annotations": copy["metadata"]["annotations"].clone(),
    });
    copy.as_object_mut().unwrap().remove("status");
    applied(&server, &copy.to_string());
    let copied = get_json(&server, &["pod", "-n", "demo", "orders-copy"]);
    assert_eq!(proxies(&copied).len(), 1, "{copied:#}");

    // A fake proxy running the author's command.
    refused_pod(
        &server,
        &pod_yaml(
            "fake",
            "demo",
            opted_in,
            "",
            "  initContainers:\n    - {name: streamward-proxy, image: 'busybox:1', command: [cat, /etc/passwd]}\n",
        ),
        "reserved",
    );
    // The author's own ConfigMap as our config volume.
    refused_pod(
        &server,
        &pod_yaml(
            "forged-config",
            "demo",
            opted_in,
            "",
            "  volumes: [{name: streamward-config, configMap: {name: allow-all}}]\n",
        ),
        "reserved",
    );
    // A token for the collector of the author's own, to post events as the proxy.
    refused_pod(
        &server,
        &pod_yaml(
            "events",
            "demo",
            opted_in,
            "",
            "  volumes: [{name: mine, projected: {sources: [{serviceAccountToken: {audience: streamward-collector, path: t}}]}}]\n",
        ),
        "audience",
    );
    // The proxy's files through /proc.
    refused_pod(
        &server,
        &pod_yaml(
            "peek",
            "demo",
            opted_in,
            "",
            "  shareProcessNamespace: true\n",
        ),
        "shareProcessNamespace",
    );

    // Once injected, the proxy's image cannot be swapped for the author's...
    let swap = server
        .kubectl()
        .args(["set", "image", "pod/orders", "-n", "demo"])
        .arg(format!("{PROXY}=busybox:1"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&swap.stderr);
    assert!(!swap.status.success(), "the proxy's image was changed");
    assert!(stderr.contains("cannot be changed"), "{stderr}");
    // ...and a debug container may look at the app, not at the proxy.
    let debug = |target: &str, name: &str| {
        server
            .kubectl()
            .args(["debug", "pod/orders", "-n", "demo", "--image=busybox:1"])
            .arg(format!("--target={target}"))
            .arg(format!("--container={name}"))
            .output()
            .unwrap()
    };
    let into_proxy = debug(PROXY, "peek-proxy");
    assert!(!into_proxy.status.success());
    assert!(
        String::from_utf8_lossy(&into_proxy.stderr).contains("may not target"),
        "{}",
        String::from_utf8_lossy(&into_proxy.stderr)
    );
    let into_app = debug("app", "peek-app");
    assert!(
        into_app.status.success(),
        "{}",
        String::from_utf8_lossy(&into_app.stderr)
    );
    drop(operator);
}

/// A MaskingRule that leaves `orders.*` raw for any pod labelled `role: billing`: a label its
/// author chooses.
const LABELS_ONLY_EXEMPTION: &str = "apiVersion: streamward.io/v1alpha1
kind: MaskingRule
metadata: {name: billing-raw, namespace: demo}
spec:
  topics: [{name: orders., patternType: Prefixed}]
  format: Text
  detectors: [{type: Email}]
  exemptSubjects:
    podSelector: {matchLabels: {role: billing}}
";

/// A StreamPolicy that lets any pod labelled `role: billing` read `orders.*`.
const LABELS_ONLY_POLICY: &str = "apiVersion: streamward.io/v1alpha1
kind: StreamPolicy
metadata: {name: billing-reads, namespace: demo}
spec:
  subjects:
    podSelector: {matchLabels: {role: billing}}
  rules:
    - resources: [{resourceType: Topic, name: orders., patternType: Prefixed}]
      operations: [Read]
      effect: Allow
";

/// An AccessGrant for any pod labelled `role: billing`.
const LABELS_ONLY_GRANT: &str = "apiVersion: streamward.io/v1alpha1
kind: AccessGrant
metadata: {name: billing-incident, namespace: demo}
spec:
  subjects:
    podSelector: {matchLabels: {role: billing}}
  resources: [{resourceType: Topic, name: payments}]
  operations: [Read]
  durationSeconds: 600
  reason: incident
";

/// `kubectl apply` that the API server refuses by the CRD's schema (before any webhook).
fn invalid(server: &KubeApiServer, yaml: &str) -> String {
    let output = kubectl_stdin(server, &["apply"], yaml);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "kubectl apply accepted:\n{yaml}");
    assert!(
        stderr.contains("is invalid") && !stderr.contains("denied the request"),
        "refused, but not by the schema: {stderr}"
    );
    stderr
}

/// Puts `subjects` (the selector's own service accounts, users or groups) beside the
/// `podSelector` of one of the documents above.
fn narrowing(yaml: &str, subjects: &str) -> String {
    yaml.replace(
        "    podSelector:",
        &format!("    {subjects}\n    podSelector:"),
    )
}

#[test]
fn subjects_by_pod_labels_alone_are_refused_at_kubectl_apply() {
    let Cluster {
        server, operator, ..
    } = cluster(&[]);

    // The CRDs' own rule refuses them, saying what to write instead.
    for (yaml, field) in [
        (LABELS_ONLY_EXEMPTION, "spec.exemptSubjects"),
        (LABELS_ONLY_POLICY, "spec.subjects"),
        (LABELS_ONLY_GRANT, "spec.subjects"),
    ] {
        let stderr = invalid(&server, yaml);
        assert!(stderr.contains(field), "{stderr}");
        assert!(stderr.contains("podSelector alone"), "{stderr}");
        assert!(stderr.contains("name serviceAccounts"), "{stderr}");
    }
    let listed = kubectl(&server, &["get", "streamward", "-n", "demo", "-o", "name"]);
    assert_eq!(listed.trim(), "", "stored despite the refusal");

    // Labels that narrow an identity the author cannot choose are fine.
    applied(
        &server,
        &narrowing(LABELS_ONLY_EXEMPTION, "serviceAccounts: [billing-app]"),
    );
    applied(
        &server,
        &narrowing(LABELS_ONLY_POLICY, "serviceAccounts: [billing-app]"),
    );
    kubectl(&server, &["delete", "streamward", "--all", "-n", "demo"]);

    // CRDs older than the operator (`helm upgrade` leaves a chart's crds/ as they were): the
    // webhook refuses the same objects with the compiler's message.
    let spec = "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties";
    for (crd, field) in [
        ("maskingrules.streamward.io", "exemptSubjects"),
        ("streampolicies.streamward.io", "subjects"),
    ] {
        let patch =
            format!(r#"[{{"op": "remove", "path": "{spec}/{field}/x-kubernetes-validations/1"}}]"#);
        kubectl(&server, &["patch", "crd", crd, "--type=json", "-p", &patch]);
    }
    for (yaml, expected) in [
        (
            LABELS_ONLY_EXEMPTION,
            "MaskingRule demo/billing-raw: spec.exemptSubjects: podSelector alone",
        ),
        (
            LABELS_ONLY_POLICY,
            "StreamPolicy demo/billing-reads: spec.subjects: podSelector alone",
        ),
    ] {
        // The API server serves the patched schema once its CRD handler has caught up.
        let stderr = wait_for(
            "the schema without the CEL rule",
            Duration::from_secs(30),
            || {
                let output = kubectl_stdin(&server, &["apply", "--dry-run=server"], yaml);
                assert!(!output.status.success(), "accepted:\n{yaml}");
                let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
                Ok(stderr.contains("denied the request").then_some(stderr))
            },
        )
        .unwrap();
        assert!(stderr.contains(expected), "{stderr}");
        refused(&server, yaml);
    }
    let listed = kubectl(&server, &["get", "streamward", "-n", "demo", "-o", "name"]);
    assert_eq!(listed.trim(), "", "stored despite the refusal");
    drop(operator);
}

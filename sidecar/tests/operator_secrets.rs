//! Broker credentials out of the workload namespace's reach: the Secret lives in the
//! operator's namespace, and the operator hands it to the proxy it injected, and to nothing
//! else. Against a real kube-apiserver with the operator's webhooks, the real operator, a
//! Kafka that requires SASL, and the proxy binary run with what the webhook wrote into the pod.
//!
//! There is no kubelet: the test mints the pod-bound token the kubelet would put in the
//! proxy's projected volume (TokenRequest bound to the pod, for the Secrets audience).

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use streamward_e2e::kafka::{KafkaCluster, KafkaOptions, SecurityProtocol, wire};
use streamward_e2e::kube::KubeApiServer;
use streamward_e2e::process::{Process, run};
use streamward_e2e::sidecar::Sidecar;
use streamward_e2e::{cache, net, wait_for, workspace_binary};
use streamward_sidecar::secrets::{OperatorSecrets, SecretsError};

const USER: &str = "orders-producer";
const PASSWORD: &str = "never-in-the-workload-namespace-5c1e";
const SA: &str = "orders-app";
const AUDIENCE: &str = "streamward-secrets";

fn kubectl_as(
    server: &KubeApiServer,
    kubeconfig: Option<&Path>,
    args: &[&str],
    stdin: &str,
) -> Output {
    let mut command = server.kubectl();
    if let Some(kubeconfig) = kubeconfig {
        // The last --kubeconfig wins over the admin's.
        command.args(["--kubeconfig", kubeconfig.to_str().unwrap()]);
    }
    let mut child = command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn kubectl(server: &KubeApiServer, args: &[&str]) -> String {
    let output = run(&format!("kubectl {args:?}"), server.kubectl().args(args)).unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn apply(server: &KubeApiServer, yaml: &str) {
    let output = kubectl_as(server, None, &["apply", "-f", "-"], yaml);
    assert!(
        output.status.success(),
        "kubectl apply refused:\n{yaml}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn pod(server: &KubeApiServer, namespace: &str, name: &str) -> Value {
    serde_json::from_str(&kubectl(
        server,
        &["get", "pod", "-n", namespace, name, "-o", "json"],
    ))
    .unwrap()
}

/// The token the kubelet would project into `pod`'s volume for `audience` (no pod: not bound).
fn token(server: &KubeApiServer, namespace: &str, pod: Option<&Value>, audience: &str) -> String {
    let mut args = vec![
        "create".to_owned(),
        "token".to_owned(),
        SA.to_owned(),
        "-n".to_owned(),
        namespace.to_owned(),
        "--audience".to_owned(),
        audience.to_owned(),
    ];
    if let Some(pod) = pod {
        args.extend([
            "--bound-object-kind".to_owned(),
            "Pod".to_owned(),
            "--bound-object-name".to_owned(),
            pod["metadata"]["name"].as_str().unwrap().to_owned(),
            "--bound-object-uid".to_owned(),
            pod["metadata"]["uid"].as_str().unwrap().to_owned(),
        ]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    kubectl(server, &args)
}

/// The proxy container the webhook wrote into `pod`.
fn proxy_of(pod: &Value) -> &Value {
    pod["spec"]["initContainers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "streamward-proxy"))
        .unwrap_or_else(|| panic!("no proxy in {pod:#}"))
}

fn flag<'a>(container: &'a Value, name: &str) -> &'a str {
    let args = container["args"].as_array().unwrap();
    let at = args
        .iter()
        .position(|a| a == name)
        .unwrap_or_else(|| panic!("no {name}"));
    args[at + 1].as_str().unwrap()
}

fn env<'a>(container: &'a Value, name: &str) -> &'a str {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str())
        .unwrap_or_else(|| panic!("no {name}"))
}

/// What the operator answers the bearer of `token`, as the proxy asks.
fn ask(
    url: &str,
    ca: &str,
    token: &str,
    dir: &Path,
) -> Result<streamward_api::secrets::ProxySecrets, String> {
    let file = dir.join(streamward_e2e::unique_name("token"));
    std::fs::write(&file, token).unwrap();
    let operator = OperatorSecrets::new(url, file, ca).unwrap();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(operator.fetch())
        .map_err(|e: SecretsError| e.to_string())
}

fn refused(answer: Result<streamward_api::secrets::ProxySecrets, String>, because: &str) {
    match answer {
        Ok(answer) => panic!(
            "served {:?}, expected a refusal for {because:?}",
            answer.secrets.keys()
        ),
        Err(error) => assert!(error.contains(because), "expected {because:?}: {error}"),
    }
}

/// A pod outside the webhook's reach (`streamward.io/inject: "false"`) made from `base` (an
/// injected pod as stored), changed by `change`, as a namespace editor would write it.
fn forged(
    server: &KubeApiServer,
    base: &Value,
    name: &str,
    change: impl FnOnce(&mut Value),
) -> Value {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": base["metadata"]["namespace"],
            "labels": {"streamward.io/inject": "false"},
            "annotations": base["metadata"]["annotations"],
        },
        "spec": base["spec"],
    });
    pod["spec"].as_object_mut().unwrap().remove("nodeName");
    change(&mut pod);
    apply(server, &pod.to_string());
    self::pod(
        server,
        base["metadata"]["namespace"].as_str().unwrap(),
        name,
    )
}

#[test]
fn broker_credentials_reach_only_the_proxy_the_operator_injected() {
    let server = KubeApiServer::start().unwrap();
    server.install_crds().unwrap();
    for ns in ["streamward-system", "shop", "other"] {
        kubectl(&server, &["create", "namespace", ns]);
    }
    for ns in ["shop", "other"] {
        kubectl(&server, &["create", "serviceaccount", "-n", ns, SA]);
    }
    let kafka = KafkaCluster::start_with(
        KafkaOptions::new(1)
            .listener(SecurityProtocol::SaslPlaintext)
            .sasl_user(USER, PASSWORD),
    )
    .unwrap();
    let sasl_bootstrap = kafka
        .secured_bootstrap(SecurityProtocol::SaslPlaintext)
        .unwrap();

    // The operator, with its webhooks; audit is off here (the collector has its own tests).
    let operator_binary = workspace_binary("streamward-operator", "streamward-operator").unwrap();
    let port = net::free_port().unwrap();
    let log = server.dir().join("operator.log");
    let mut command = Command::new(&operator_binary);
    command
        .env("KUBECONFIG", server.kubeconfig())
        .env("RUST_LOG", "info")
        .args(["--webhook-url", &format!("https://127.0.0.1:{port}")])
        .args(["--webhook-listen", &format!("127.0.0.1:{port}")])
        .args([
            "--operator-namespace",
            "streamward-system",
            "--lease-namespace",
            "streamward-system",
        ])
        .args([
            "--proxy-image",
            "streamward-sidecar:test",
            "--audit-disabled",
        ])
        .args([
            "--metrics-addr",
            &format!("127.0.0.1:{}", net::free_port().unwrap()),
        ]);
    let mut operator = Process::spawn("streamward-operator", command, &log).unwrap();

    // The broker credentials, in the operator's namespace, for `shop` only.
    apply(
        &server,
        &format!(
            "apiVersion: v1
kind: Secret
metadata:
  name: kafka-creds
  namespace: streamward-system
  annotations:
    streamward.io/allowed-namespaces: shop
    streamward.io/allowed-bootstrap-servers: '{sasl_bootstrap}'
stringData: {{username: {USER}, password: {PASSWORD}}}
"
        ),
    );
    for ns in ["shop", "other"] {
        apply(
            &server,
            &format!(
                "apiVersion: streamward.io/v1alpha1
kind: StreamTarget
metadata: {{name: kafka, namespace: {ns}}}
spec:
  bootstrapServers: ['{sasl_bootstrap}']
  sasl: {{mechanism: PLAIN, credentialsSecret: kafka-creds}}
---
apiVersion: streamward.io/v1alpha1
kind: StreamPolicy
metadata: {{name: orders, namespace: {ns}}}
spec:
  subjects: {{serviceAccounts: [{SA}]}}
  rules:
  - resources: [{{resourceType: Topic, name: '*'}}]
    operations: [Describe]
    effect: Allow
"
            ),
        );
    }
    let app = |ns: &str, name: &str| {
        format!(
            "apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}, labels: {{streamward.io/inject: 'true'}}}}
spec:
  serviceAccountName: {SA}
  containers: [{{name: app, image: 'orders:1'}}]
"
        )
    };
    // Injected once the webhook answers.
    wait_for("the injection webhook", Duration::from_secs(90), || {
        operator.check_running()?;
        let output = kubectl_as(&server, None, &["apply", "-f", "-"], &app("shop", "orders"));
        Ok(output.status.success().then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", operator.log_tail(40)));
    apply(&server, &app("other", "orders"));
    let orders = pod(&server, "shop", "orders");
    let proxy = proxy_of(&orders);
    let url = flag(proxy, "--secrets-url").to_owned();
    let ca = env(proxy, "STREAMWARD_SECRETS_CA_PEM").to_owned();
    let volumes = orders["spec"]["volumes"].as_array().unwrap();
    assert!(
        volumes.iter().all(|v| v.get("secret").is_none()),
        "no Secret is mounted into the pod: {volumes:#?}"
    );
    let dir = cache::run_dir("operator-secrets").unwrap();
    // What the operator answers the proxy of `pod` in `namespace` (`None`: a token bound to
    // no pod) presenting a token for `audience`.
    let ask_as = |namespace: &str, pod: Option<&Value>, audience: &str| {
        ask(
            &url,
            &ca,
            &token(&server, namespace, pod, audience),
            dir.path(),
        )
    };

    // The proxy of the injected pod gets the credentials and reaches the SASL listener.
    let token_file = dir.path().join("secrets-token");
    std::fs::write(&token_file, token(&server, "shop", Some(&orders), AUDIENCE)).unwrap();
    let config_map = flag(proxy, "--config-map").to_owned();
    let mut sidecar = Sidecar::start_with_source(
        Path::new(env!("CARGO_BIN_EXE_streamward-sidecar")),
        "shop",
        SA,
        &[
            "--config-map",
            &config_map,
            "--secrets-url",
            &url,
            "--secrets-token-file",
            token_file.to_str().unwrap(),
        ],
        // The CA as the webhook gives it: in the environment.
        &[
            ("KUBECONFIG", server.kubeconfig().to_str().unwrap()),
            ("STREAMWARD_SECRETS_CA_PEM", &ca),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", operator.log_tail(40)));
    let metadata = wire::metadata(&sidecar.bootstrap).unwrap();
    assert_eq!(metadata.brokers.len(), 1, "{metadata:?}");
    assert!(sidecar.log().contains("Secrets from the operator"));
    assert!(
        !sidecar.log().contains(PASSWORD),
        "the password is in the proxy's log"
    );
    assert!(!std::fs::read_to_string(&log).unwrap().contains(PASSWORD));
    assert!(sidecar.is_running());

    // Another namespace naming the same Secret in its StreamTarget gets nothing.
    let other = pod(&server, "other", "orders");
    let answer = ask_as("other", Some(&other), AUDIENCE).unwrap();
    assert!(answer.secrets.is_empty(), "{:?}", answer.secrets.keys());
    assert!(
        answer.withheld["kafka-creds"].contains("not for namespace other"),
        "{:?}",
        answer.withheld
    );

    // An editor of `shop` points a StreamTarget of their own at a broker of theirs, to collect
    // the password: the pod using it gets no credentials.
    apply(
        &server,
        "apiVersion: streamward.io/v1alpha1
kind: StreamTarget
metadata: {name: collector-of-passwords, namespace: shop}
spec:
  bootstrapServers: ['127.0.0.1:1']
  sasl: {mechanism: PLAIN, credentialsSecret: kafka-creds}
",
    );
    let redirect = app("shop", "redirect").replace(
        "labels:",
        "annotations: {streamward.io/target: collector-of-passwords}, labels:",
    );
    wait_for(
        "the webhook to know the new target",
        Duration::from_secs(30),
        || {
            let output = kubectl_as(&server, None, &["apply", "-f", "-"], &redirect);
            Ok(output.status.success().then_some(()))
        },
    )
    .unwrap();
    let redirect = pod(&server, "shop", "redirect");
    let answer = ask_as("shop", Some(&redirect), AUDIENCE).unwrap();
    assert!(answer.secrets.is_empty(), "{:?}", answer.secrets.keys());
    assert!(
        answer.withheld["kafka-creds"].contains("does not list 127.0.0.1:1"),
        "{:?}",
        answer.withheld
    );

    // Tokens that are not the proxy's.
    refused(ask_as("shop", None, AUDIENCE), "not bound to a pod");
    refused(
        ask_as("shop", Some(&orders), "https://kubernetes.default.svc"),
        "not valid for audience",
    );
    // Pods a namespace editor can make with the same service account, out of the webhook's
    // sight, each with a token the kubelet would mint for them.
    let plain = forged(&server, &orders, "plain", |p| {
        p["spec"]["initContainers"] = json!([]);
        p["metadata"]["annotations"] = json!({});
    });
    refused(
        ask_as("shop", Some(&plain), AUDIENCE),
        "has no Streamward proxy",
    );
    let redirected = forged(&server, &orders, "redirected", |p| {
        let args = p["spec"]["initContainers"][0]["args"]
            .as_array_mut()
            .unwrap();
        let at = args.iter().position(|a| a == "--secrets-url").unwrap();
        args[at + 1] = json!("https://attacker.example:443");
    });
    refused(
        ask_as("shop", Some(&redirected), AUDIENCE),
        "not one the Streamward webhook injected",
    );
    let sharing = forged(&server, &orders, "sharing", |p| {
        p["spec"]["shareProcessNamespace"] = json!(true);
    });
    refused(
        ask_as("shop", Some(&sharing), AUDIENCE),
        "shareProcessNamespace",
    );
    let mounting = forged(&server, &orders, "mounting", |p| {
        p["spec"]["containers"][0]["volumeMounts"] =
            json!([{"name": "streamward-secrets-token", "mountPath": "/steal"}]);
    });
    refused(
        ask_as("shop", Some(&mounting), AUDIENCE),
        "mounts the proxy's token volume",
    );

    // A namespace editor can read no Secret of the operator's namespace, and cannot exec into
    // the proxy container (where its token is); exec into the app is not the webhook's business.
    // (The built-in `edit` role is filled in by kube-controller-manager, which does not run
    // here: the editor gets its rights that matter here explicitly.)
    apply(
        &server,
        "apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: editor, namespace: shop}
rules:
- apiGroups: ['']
  resources: [pods, secrets, configmaps, serviceaccounts]
  verbs: [get, list, watch, create, update, patch, delete]
- apiGroups: ['']
  resources: [pods/exec, pods/attach, serviceaccounts/token]
  verbs: [get, create]
- apiGroups: [streamward.io]
  resources: ['*']
  verbs: [get, list, watch, create, update, patch, delete]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: mallory-editor, namespace: shop}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: editor}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: mallory}]
",
    );
    let mallory = server.user_kubeconfig("mallory", &[]).unwrap();
    // The editor may mint tokens of the namespace's service accounts, but not one for a
    // Streamward audience (bound to the injected pod, it would be as good as the proxy's).
    for audience in [AUDIENCE, "streamward-collector"] {
        let uid = orders["metadata"]["uid"].as_str().unwrap();
        let minted = kubectl_as(
            &server,
            Some(&mallory),
            &[
                "create",
                "token",
                SA,
                "-n",
                "shop",
                "--audience",
                audience,
                "--bound-object-kind",
                "Pod",
                "--bound-object-name",
                "orders",
                "--bound-object-uid",
                uid,
            ],
            "",
        );
        let said = String::from_utf8_lossy(&minted.stderr);
        assert!(
            !minted.status.success(),
            "mallory minted a {audience} token"
        );
        assert!(
            said.contains("may not mint a token for a Streamward audience"),
            "{said}"
        );
    }
    let other_audience = kubectl_as(
        &server,
        Some(&mallory),
        &[
            "create",
            "token",
            SA,
            "-n",
            "shop",
            "--audience",
            "https://example.com",
        ],
        "",
    );
    assert!(
        other_audience.status.success(),
        "the editor's other tokens are not the webhook's business: {other_audience:?}"
    );
    let read = kubectl_as(
        &server,
        Some(&mallory),
        &["get", "secret", "-n", "streamward-system", "kafka-creds"],
        "",
    );
    assert!(!read.status.success());
    assert!(
        String::from_utf8_lossy(&read.stderr).contains("forbidden"),
        "{read:?}"
    );
    let exec = kubectl_as(
        &server,
        Some(&mallory),
        &[
            "exec",
            "-n",
            "shop",
            "orders",
            "-c",
            "streamward-proxy",
            "--",
            "/streamward-sidecar",
            "--version",
        ],
        "",
    );
    let said = String::from_utf8_lossy(&exec.stderr);
    assert!(!exec.status.success());
    assert!(
        said.contains("exec into the streamward-proxy container is refused"),
        "{said}"
    );
    let exec = kubectl_as(
        &server,
        Some(&mallory),
        &["exec", "-n", "shop", "orders", "-c", "app", "--", "true"],
        "",
    );
    let said = String::from_utf8_lossy(&exec.stderr);
    assert!(
        !said.contains("streamward"),
        "the app container's exec reached the webhook: {said}"
    );
    operator.check_running().unwrap();
}

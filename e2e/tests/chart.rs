//! The Helm chart in `charts/streamward` against a real kube-apiserver: it lints clean, every
//! rendering (default and non-default values, and `config/install.yaml`) is admitted by a
//! server-side dry run, and `helm install`, `upgrade` and `uninstall` work, with the operator's
//! ServiceAccount holding exactly the rights the chart promises.
//!
//! There is no kubelet or controller-manager here: Deployments never get pods and
//! StatefulSets never get volumes. The tests check that objects are admitted and present,
//! never that anything is ready.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use streamward_e2e::helm::{self, Helm};
use streamward_e2e::kube::KubeApiServer;
use streamward_e2e::process::run;
use streamward_e2e::{cache, unique_name};

/// The version every image is tagged with, as `just images` tags them.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Just enough of cert-manager's and the Prometheus Operator's CRDs for the API server to
/// admit (and dry-run) the chart's Certificates, ServiceMonitor and PrometheusRule. The spec is
/// kept open (`x-kubernetes-preserve-unknown-fields`) apart from the fields the real CRDs
/// require, so this checks kinds, API versions, metadata and those fields, not every field.
const THIRD_PARTY_CRDS: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: certificates.cert-manager.io}
spec:
  group: cert-manager.io
  scope: Namespaced
  names: {plural: certificates, singular: certificate, kind: Certificate}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            x-kubernetes-preserve-unknown-fields: true
            required: [secretName, issuerRef]
            properties:
              secretName: {type: string}
              issuerRef:
                type: object
                required: [name]
                properties:
                  name: {type: string}
                  kind: {type: string}
                  group: {type: string}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: servicemonitors.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {plural: servicemonitors, singular: servicemonitor, kind: ServiceMonitor}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            x-kubernetes-preserve-unknown-fields: true
            required: [selector]
            properties:
              selector: {type: object, x-kubernetes-preserve-unknown-fields: true}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: prometheusrules.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {plural: prometheusrules, singular: prometheusrule, kind: PrometheusRule}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              groups:
                type: array
                items:
                  type: object
                  required: [name, rules]
                  properties:
                    name: {type: string}
                    rules:
                      type: array
                      items:
                        type: object
                        x-kubernetes-preserve-unknown-fields: true
                        required: [expr]
                        properties:
                          expr: {type: string}
"#;

/// One API server for every test of this file (each uses its own release and namespaces),
/// with the third-party CRDs established. It dies with the test binary.
fn server() -> &'static KubeApiServer {
    static SERVER: OnceLock<KubeApiServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let server = KubeApiServer::start().expect("starting kube-apiserver");
        apply(&server, THIRD_PARTY_CRDS, &[]);
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
        server
    })
}

/// Runs kubectl as the admin; panics with its output if it fails.
fn kubectl(server: &KubeApiServer, args: &[&str]) -> String {
    let output = run(&format!("kubectl {args:?}"), server.kubectl().args(args))
        .unwrap_or_else(|error| panic!("{error:#}"));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Writes `yaml` to a file of the server's folder and `kubectl apply -f`s it with `flags`.
fn apply(server: &KubeApiServer, yaml: &str, flags: &[&str]) -> String {
    let file = write_yaml(server, yaml);
    let mut args = vec!["apply", "-f", file.to_str().unwrap()];
    args.extend_from_slice(flags);
    kubectl(server, &args)
}

fn write_yaml(server: &KubeApiServer, yaml: &str) -> PathBuf {
    let file = server
        .dir()
        .join(format!("{}.yaml", unique_name("manifest")));
    std::fs::write(&file, yaml).unwrap();
    file
}

fn create_namespaces(server: &KubeApiServer, names: &[&str]) {
    for name in names {
        let yaml = format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n");
        apply(server, &yaml, &[]);
    }
}

/// `kind/name` (and namespace) of every object in a rendering.
fn object_refs(rendered: &str) -> Vec<(String, String, Option<String>)> {
    helm::objects(rendered)
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["kind"].as_str().unwrap().to_owned(),
                o["metadata"]["name"].as_str().unwrap().to_owned(),
                o["metadata"]["namespace"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

/// Whether `kubectl auth can-i` says yes for the operator's ServiceAccount of `release`.
fn operator_can(server: &KubeApiServer, release_namespace: &str, sa: &str, args: &[&str]) -> bool {
    let output = server
        .kubectl()
        .args(["auth", "can-i"])
        .args(args)
        .arg(format!(
            "--as=system:serviceaccount:{release_namespace}:{sa}"
        ))
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    assert!(
        answer == "yes" || answer == "no",
        "kubectl auth can-i {args:?}: {answer} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    answer == "yes"
}

#[test]
fn the_chart_lints_clean_with_strict() {
    let output = Helm::offline().unwrap().lint().unwrap();
    assert!(output.contains("0 chart(s) failed"), "{output}");
    assert!(!output.contains("[WARNING]"), "{output}");
}

#[test]
fn the_default_rendering_runs_the_operator_and_collector_as_documented() {
    let helm = Helm::offline().unwrap();
    let rendered = helm.template(&[]).unwrap();

    // Pinned on purpose: these are the flags the operator must accept (a test runs the binary
    // with exactly these), and a change here is a change to the install.
    assert_eq!(
        helm::operator_args(&rendered).unwrap(),
        [
            "--metrics-addr=0.0.0.0:8080",
            "--lease-namespace=streamward-system",
            "--lease-name=streamward-operator",
            "--webhook-listen=0.0.0.0:9443",
            "--webhook-service=streamward-webhook",
            "--webhook-service-port=443",
            "--webhook-cert-lifetime-seconds=2592000",
            &format!("--proxy-image=ghcr.io/streamward/streamward-sidecar:{VERSION}"),
            "--proxy-image-pull-policy=IfNotPresent",
            "--sidecar-mode=auto",
            "--inject-exclude-namespaces=kube-system,kube-public,kube-node-lease",
            "--bootstrap-env=KAFKA_BOOTSTRAP_SERVERS",
            "--proxy-cpu-request=20m",
            "--proxy-memory-request=32Mi",
            "--proxy-memory-limit=128Mi",
            "--proxy-max-config-staleness=5m",
            "--proxy-stale-config=grants",
            "--collector-url=https://streamward-collector.streamward-system.svc:8443",
            "--proxy-audit-spool-bytes=50331648",
            "--proxy-audit-full=continue",
            "--collector-tls-secret=streamward-collector-tls",
            "--collector-service-name=streamward-collector",
        ]
    );
    assert_eq!(
        helm::container_args(
            &rendered,
            "StatefulSet",
            "streamward-collector",
            "collector"
        )
        .unwrap(),
        [
            "serve",
            "--data=/var/lib/streamward-collector",
            "--listen=0.0.0.0:8443",
            "--token-review",
            "--tls-cert=/etc/streamward/tls/tls.crt",
            "--tls-key=/etc/streamward/tls/tls.key",
            // Reading the audit trail is Kubernetes RBAC's decision (SubjectAccessReview).
            "--query-authorization=kubernetes",
            "--query-reader-role=streamward-audit-reader",
        ]
    );

    let refs = object_refs(&rendered);
    let kinds: Vec<&str> = refs.iter().map(|(kind, _, _)| kind.as_str()).collect();
    // The operator registers its webhook configurations (with the caBundle of its own CA)
    // and makes its certificates: the chart must neither template them nor carry keys.
    for absent in [
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
        "Secret",
    ] {
        assert!(!kinds.contains(&absent), "the chart renders a {absent}");
    }
    assert!(
        !rendered.contains("PRIVATE KEY"),
        "key material in the chart"
    );
    // The only Pod is the `helm test` hook.
    for pod in helm::objects(&rendered)
        .unwrap()
        .iter()
        .filter(|o| o["kind"].as_str() == Some("Pod"))
    {
        assert_eq!(
            pod["metadata"]["annotations"]["helm.sh/hook"].as_str(),
            Some("test"),
            "{pod:?}"
        );
    }

    let deployment = helm::find_object(&rendered, "Deployment", "streamward-operator").unwrap();
    assert_eq!(deployment["spec"]["replicas"].as_u64(), Some(2));
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(
        container["image"].as_str(),
        Some(format!("ghcr.io/streamward/streamward-operator:{VERSION}").as_str())
    );
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(security["runAsUser"].as_u64(), Some(65532));
    assert_eq!(security["capabilities"]["drop"][0].as_str(), Some("ALL"));

    let statefulset = helm::find_object(&rendered, "StatefulSet", "streamward-collector").unwrap();
    // The audit volume must survive both the StatefulSet and the release.
    assert_eq!(
        statefulset["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"].as_str(),
        Some("Retain")
    );
    assert_eq!(
        statefulset["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
            .as_str(),
        Some("10Gi")
    );
}

#[test]
fn values_outside_the_schema_are_refused() {
    let helm = Helm::offline().unwrap();
    for (key, value) in [
        ("injection.sidecarMode", "sometimes"),
        ("operator.replicaCount", "3"),
        ("collector.persistence.size", "lots"),
    ] {
        let error = helm.template(&[(key, value)]).unwrap_err();
        assert!(
            format!("{error:#}").contains("values don't meet the specifications")
                || format!("{error:#}").contains(key.rsplit('.').next().unwrap()),
            "{key}={value}: {error:#}"
        );
    }
}

#[test]
fn every_rendering_and_install_yaml_pass_a_server_side_dry_run() {
    let server = server();
    create_namespaces(server, &[helm::NAMESPACE, "shop", "orders"]);
    let helm = Helm::offline().unwrap();
    let renderings: [(&str, Vec<(&str, &str)>); 3] = [
        ("default values", vec![]),
        (
            "cert-manager, monitoring, network policy, container sidecars",
            vec![
                ("watchNamespaces", "{shop,orders}"),
                ("injection.sidecarMode", "container"),
                ("certManager.enabled", "true"),
                ("certManager.issuerRef.name", "streamward-ca"),
                ("serviceMonitor.enabled", "true"),
                ("prometheusRule.enabled", "true"),
                ("networkPolicy.enabled", "true"),
                ("networkPolicy.namespaces", "{shop}"),
                ("networkPolicy.brokers.cidrs", "{10.20.0.0/16,fd00:10::/64}"),
                ("operator.replicas", "3"),
                ("imagePullSecrets[0].name", "regcred"),
            ],
        ),
        (
            "external collector, every namespace, another release name",
            vec![
                ("fullnameOverride", "governance"),
                ("watchAnyNamespace", "true"),
                ("collector.enabled", "false"),
                ("collector.externalUrl", "https://audit.example:8443"),
                ("injection.audit.enabled", "false"),
                ("operator.podDisruptionBudget.enabled", "false"),
            ],
        ),
    ];
    for (what, values) in renderings {
        let rendered = helm
            .template_with(&values, &["--include-crds"])
            .unwrap_or_else(|error| panic!("{what}: {error:#}"));
        let output = apply(server, &rendered, &["--dry-run=server"]);
        for (kind, name, _) in object_refs(&rendered) {
            assert!(
                output.contains(&format!("/{name} created (server dry run)"))
                    || output.contains(&format!("/{name} configured (server dry run)"))
                    || output.contains(&format!("/{name} unchanged (server dry run)")),
                "{what}: {kind} {name} not in the dry run's answer:\n{output}"
            );
        }
    }

    // The plain manifests, as `kubectl apply -f config/install.yaml` would send them.
    let install = cache::source_root().join("config/install.yaml");
    let output = kubectl(
        server,
        &["apply", "--dry-run=server", "-f", install.to_str().unwrap()],
    );
    assert!(
        output.contains("deployment.apps/streamward-operator created (server dry run)"),
        "{output}"
    );
}

#[test]
fn helm_install_upgrade_and_uninstall_against_a_real_api_server() {
    let server = server();
    let release = "sw";
    let namespace = "sw-system";
    let watched = "sw-shop";
    // The RoleBindings of watchNamespaces go into existing namespaces.
    create_namespaces(server, &[watched]);
    let helm = Helm::new(server.kubeconfig()).unwrap();
    let images = [
        ("image.repository", "ghcr.io/streamward/streamward-operator"),
        ("image.tag", VERSION),
        (
            "proxy.image.repository",
            "ghcr.io/streamward/streamward-sidecar",
        ),
        (
            "collector.image.repository",
            "ghcr.io/streamward/streamward-collector",
        ),
        ("image.pullPolicy", "IfNotPresent"),
    ];
    let watch = format!("{{{watched}}}");
    let mut values = images.to_vec();
    values.push(("watchNamespaces", &watch));
    helm.install(release, namespace, &values).unwrap();

    // Every object of the release was admitted and exists.
    let manifest = helm
        .run(&["get", "manifest", release, "--namespace", namespace])
        .unwrap();
    let refs = object_refs(&manifest);
    assert!(refs.len() > 10, "{refs:?}");
    for (kind, name, object_namespace) in &refs {
        let mut args = vec!["get", kind.as_str(), name.as_str(), "-o", "name"];
        if let Some(ns) = object_namespace {
            args.extend(["--namespace", ns.as_str()]);
        }
        kubectl(server, &args);
    }
    // Helm installed the CRDs from the chart's crds/.
    kubectl(server, &["get", "crd", "streampolicies.streamward.io"]);
    let deployment = kubectl(
        server,
        &[
            "get",
            "deployment",
            "sw-streamward-operator",
            "-n",
            namespace,
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].args}",
        ],
    );
    assert!(
        deployment.starts_with(&format!(
            "ghcr.io/streamward/streamward-operator:{VERSION} "
        )),
        "{deployment}"
    );
    assert!(
        deployment.contains(&format!(
            "--proxy-image=ghcr.io/streamward/streamward-sidecar:{VERSION}"
        )),
        "{deployment}"
    );

    // Least privilege, as the operator's ServiceAccount sees it: writes where it was told to
    // work, its own Secrets and Lease, and nothing in kube-system.
    let sa = "sw-streamward-operator";
    let can = |args: &[&str]| operator_can(server, namespace, sa, args);
    for verb in ["create", "patch"] {
        for resource in ["configmaps", "roles", "rolebindings", "secrets"] {
            assert!(
                !can(&[verb, resource, "-n", "kube-system"]),
                "the operator may {verb} {resource} in kube-system"
            );
        }
    }
    for resource in ["configmaps", "roles", "rolebindings"] {
        assert!(can(&["create", resource, "-n", watched]), "{resource}");
        assert!(can(&["delete", resource, "-n", watched]), "{resource}");
        assert!(can(&["watch", resource, "--all-namespaces"]), "{resource}");
        assert!(!can(&["create", resource, "-n", "default"]), "{resource}");
    }
    assert!(can(&[
        "get",
        "secret/streamward-webhook-tls",
        "-n",
        namespace
    ]));
    assert!(can(&[
        "update",
        "secret/sw-streamward-collector-tls",
        "-n",
        namespace
    ]));
    // The Secrets proxies use live in the release namespace: the operator gets them (it
    // serves each proxy its own), but lists none and reads none elsewhere.
    assert!(can(&["get", "secret/kafka-credentials", "-n", namespace]));
    assert!(!can(&["list", "secrets", "-n", namespace]));
    assert!(!can(&["get", "secret/kafka-credentials", "-n", watched]));
    assert!(!can(&[
        "get",
        "secret/kafka-credentials",
        "-n",
        "kube-system"
    ]));
    // What checking a proxy's token and pod takes.
    assert!(can(&["create", "tokenreviews.authentication.k8s.io"]));
    assert!(can(&["get", "pods", "-n", watched]));
    assert!(!can(&["get", "pods", "-n", "kube-system"]));
    assert!(can(&[
        "update",
        "lease/sw-streamward-operator",
        "-n",
        namespace
    ]));
    assert!(!can(&["update", "lease/other", "-n", namespace]));
    assert!(can(&["create", "mutatingwebhookconfigurations"]));
    assert!(can(&[
        "patch",
        "validatingwebhookconfigurations/streamward"
    ]));
    assert!(!can(&[
        "patch",
        "validatingwebhookconfigurations/someone-elses"
    ]));
    assert!(can(&[
        "patch",
        "streampolicies.streamward.io",
        "--subresource=status",
        "-A"
    ]));
    assert!(!can(&["update", "streampolicies.streamward.io", "-A"]));
    assert!(operator_can(
        server,
        namespace,
        "sw-streamward-collector",
        &["create", "tokenreviews.authentication.k8s.io"]
    ));

    // The operator as installed: the Deployment's own args, under the chart's RBAC.
    operator_as_installed_registers_validates_and_injects(server, namespace, watched);

    // Upgrade with a changed value: the Deployment follows, the revision moves on.
    let mut changed = values.clone();
    changed.push(("injection.sidecarMode", "container"));
    helm.upgrade(release, namespace, &changed).unwrap();
    let args = kubectl(
        server,
        &[
            "get",
            "deployment",
            "sw-streamward-operator",
            "-n",
            namespace,
            "-o",
            "jsonpath={.spec.template.spec.containers[0].args}",
        ],
    );
    assert!(args.contains("--sidecar-mode=container"), "{args}");
    let history = helm
        .run(&["history", release, "--namespace", namespace, "-o", "json"])
        .unwrap();
    let history: serde_json::Value = serde_json::from_str(&history).unwrap();
    assert_eq!(history.as_array().map(Vec::len), Some(2), "{history}");

    // The audit volume: the StatefulSet controller would make this claim from the template (no
    // controller-manager runs here, so the test makes it the same way). Helm never tracks such
    // claims, so `helm uninstall` must leave it while removing every object of the release.
    let claim = format!(
        "apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: data-sw-streamward-collector-0
  namespace: {namespace}
  labels: {{app.kubernetes.io/name: streamward, app.kubernetes.io/instance: {release}, app.kubernetes.io/component: collector}}
spec:
  accessModes: [ReadWriteOnce]
  resources: {{requests: {{storage: 10Gi}}}}
"
    );
    apply(server, &claim, &[]);
    helm.uninstall(release, namespace).unwrap();
    for (kind, name, object_namespace) in &refs {
        let mut command: Command = server.kubectl();
        command.args([
            "get",
            kind.as_str(),
            name.as_str(),
            "--ignore-not-found",
            "-o",
            "name",
        ]);
        if let Some(ns) = object_namespace {
            command.args(["--namespace", ns.as_str()]);
        }
        let output = command.output().unwrap();
        let left = String::from_utf8_lossy(&output.stdout);
        assert!(
            left.trim().is_empty(),
            "{kind} {name} left after helm uninstall: {left}"
        );
    }
    kubectl(
        server,
        &[
            "get",
            "pvc",
            "data-sw-streamward-collector-0",
            "-n",
            namespace,
        ],
    );
    // Helm never deletes CRDs (that would delete every policy in the cluster).
    kubectl(server, &["get", "crd", "streampolicies.streamward.io"]);
}

/// Runs `streamward-operator` with the args and environment of the installed Deployment and the
/// token of the chart's ServiceAccount (no kubelet runs it here): only the addresses change,
/// since the API server reaches this process on loopback rather than through the webhook
/// Service. Its webhooks register; `kubectl apply` of a bad resource is refused; a dry-run
/// create of an opted-in pod comes back with the proxy wired to the chart's collector.
fn operator_as_installed_registers_validates_and_injects(
    server: &KubeApiServer,
    namespace: &str,
    watched: &str,
) {
    let deployment: serde_json::Value = serde_json::from_str(&kubectl(
        server,
        &[
            "get",
            "deployment",
            "sw-streamward-operator",
            "-n",
            namespace,
            "-o",
            "json",
        ],
    ))
    .unwrap();
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let port = streamward_e2e::net::free_port().unwrap();
    let metrics = streamward_e2e::net::free_port().unwrap();
    let args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|arg| {
            let arg = arg.as_str().unwrap();
            match arg.split_once('=') {
                Some(("--webhook-service", _)) => format!("--webhook-url=https://127.0.0.1:{port}"),
                Some(("--webhook-listen", _)) => format!("--webhook-listen=127.0.0.1:{port}"),
                Some(("--metrics-addr", _)) => format!("--metrics-addr=127.0.0.1:{metrics}"),
                _ => arg.to_owned(),
            }
        })
        .collect();
    let sa = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .unwrap();
    let credentials = server.service_account_kubeconfig(namespace, sa).unwrap();
    let binary =
        streamward_e2e::workspace_binary("streamward-operator", "streamward-operator").unwrap();
    let mut command = Command::new(binary);
    command
        .args(&args)
        .env("KUBECONFIG", &credentials)
        .env("POD_NAMESPACE", namespace)
        .env("POD_NAME", "sw-streamward-operator-test")
        .env("RUST_LOG", "info");
    let log = server.dir().join("operator-as-installed.log");
    let mut operator =
        streamward_e2e::process::Process::spawn("streamward-operator", command, &log).unwrap();

    // The webhooks register, and the collector's certificate is issued into its Secret.
    let pod = format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: orders
  namespace: {watched}
  labels: {{streamward.io/inject: 'true'}}
spec:
  serviceAccountName: orders-app
  containers: [{{name: app, image: 'orders:1'}}]
"
    );
    let pod_file = write_yaml(server, &pod);
    let injected: serde_json::Value = streamward_e2e::wait_for(
        "an opted-in pod injected by the installed operator",
        std::time::Duration::from_secs(90),
        || {
            operator.check_running()?;
            let output = server
                .kubectl()
                .args(["create", "--dry-run=server", "-o", "json", "-f"])
                .arg(&pod_file)
                .output()?;
            if !output.status.success() {
                return Ok(None);
            }
            let pod: serde_json::Value = serde_json::from_slice(&output.stdout)?;
            Ok(pod["spec"]["initContainers"].is_array().then_some(pod))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", operator.log_tail(40)));
    let proxy = &injected["spec"]["initContainers"][0];
    assert_eq!(proxy["name"], "streamward-proxy");
    assert_eq!(
        proxy["image"],
        format!("ghcr.io/streamward/streamward-sidecar:{VERSION}")
    );
    let proxy_args: Vec<&str> = proxy["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        proxy_args.windows(2).any(|w| w
            == [
                "--audit-url",
                &format!("https://sw-streamward-collector.{namespace}.svc:8443")
            ]),
        "{proxy_args:?}"
    );
    assert!(proxy_args.contains(&"--audit-token-file"), "{proxy_args:?}");
    assert!(proxy_args.contains(&"--audit-spool"), "{proxy_args:?}");
    let volumes = injected["spec"]["volumes"].as_array().unwrap();
    let volume = |name: &str| volumes.iter().find(|v| v["name"] == name).cloned();
    let token = volume("streamward-collector-token").expect("the collector token volume");
    assert_eq!(
        token["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "streamward-collector"
    );
    let spool = volume("streamward-audit-spool").expect("the spool volume");
    assert!(spool["emptyDir"]["sizeLimit"].is_string(), "{spool}");
    let ca = proxy["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "STREAMWARD_AUDIT_CA_PEM")
        .expect("the collector's CA");
    let issued = kubectl(
        server,
        &[
            "get",
            "secret",
            "sw-streamward-collector-tls",
            "-n",
            namespace,
            "-o",
            "go-template={{index .data \"ca.crt\" | base64decode}}",
        ],
    );
    assert_eq!(ca["value"].as_str().unwrap(), issued);
    // The app container sees the proxy, not the credentials.
    let app = &injected["spec"]["containers"][0];
    assert!(app.get("volumeMounts").is_none(), "{app}");

    // Validation, through the webhook the operator registered.
    let bad = format!(
        "apiVersion: streamward.io/v1alpha1
kind: MaskingRule
metadata: {{name: bad, namespace: {watched}}}
spec:
  topics: [{{name: orders}}]
  format: Text
  detectors: [{{type: Regex, pattern: 'card=(?P<mask>[0-9'}}]
"
    );
    let output = server
        .kubectl()
        .args(["create", "-f"])
        .arg(write_yaml(server, &bad))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("denied the request"),
        "{stderr}"
    );

    operator.kill();
    // Left behind by an operator that is gone, its webhooks would refuse every opted-in pod
    // and new grant (failurePolicy Fail); the other tests share this API server.
    for kind in [
        "validatingwebhookconfiguration",
        "mutatingwebhookconfiguration",
    ] {
        kubectl(server, &["delete", kind, "streamward"]);
    }
}

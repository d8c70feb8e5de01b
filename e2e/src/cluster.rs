//! Streamward in pods, as a new user runs it: the chart installed with `helm install` on the
//! real [`Node`] (images built from the release binaries and imported), the samples of
//! `config/samples/` applied with `kubectl` in a namespace opted in to injection, and real Kafka
//! clients in Deployments whose pods get the proxy as a native sidecar.
//!
//! `tests/cluster.rs` runs every scenario here; `just demo-cluster` runs the first four for a
//! person. Each scenario is a function named for what it proves, failing with what it saw.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::helm::Helm;
use crate::image::{self, PROGRAMS, VERSION};
use crate::kafka::{KafkaCluster, KafkaOptions, SecurityProtocol};
use crate::node::{Node, images};
use crate::process::{run, wait_for};
use crate::{cache, unique_name};

/// The Helm release.
pub const RELEASE: &str = "streamward";
/// The release namespace.
pub const SYSTEM: &str = "streamward-system";
/// The broker user whose credentials only the proxies mount.
pub const KAFKA_USER: &str = "proxy";
const KAFKA_PASSWORD: &str = "proxy-secret-in-a-secret";
/// The Secret with the broker credentials (the sample StreamTarget's comment names it).
pub const CREDENTIALS_SECRET: &str = "kafka-orders-credentials";
/// A bearer token of the collector's query API (in the Secret `collector.query.tokenSecret`).
const QUERY_TOKEN: &str = "query-token-for-the-e2e-auditor";

/// What the scenarios share: the node, the Kafka on its bridge, and the workload namespace.
pub struct Cluster<'a> {
    /// The node.
    pub node: &'a Node,
    /// Kafka, SASL on the bridge address (the proxies' side), plaintext on 127.0.0.1 (the
    /// admin's side).
    pub kafka: KafkaCluster,
    /// The brokers' SASL listener on the bridge address.
    pub bootstrap: String,
    /// The workload namespace (opted in to injection, watched by the operator).
    pub namespace: String,
    /// Helm against the node.
    pub helm: Helm,
}

impl<'a> Cluster<'a> {
    /// Everything a user does before the first workload: the images imported from the release
    /// binaries in `release_dir`, Kafka with SASL on the bridge, the workload namespace, the
    /// chart installed with `helm install` and ready, the samples applied.
    pub fn install(node: &'a Node, release_dir: &Path) -> Result<Cluster<'a>> {
        let step = Instant::now();
        import_streamward_images(node, release_dir)?;
        eprintln!("images imported: {:.1}s", step.elapsed().as_secs_f64());
        let kafka = KafkaCluster::start_with(
            KafkaOptions::new(1)
                .listener(SecurityProtocol::SaslPlaintext)
                .sasl_user(KAFKA_USER, KAFKA_PASSWORD)
                .secured_host(node.bridge_ip().into()),
        )?;
        let bootstrap = kafka.secured_bootstrap(SecurityProtocol::SaslPlaintext)?;
        // Created before the release: `watchNamespaces` names it.
        let namespace = unique_name("shop");
        node.kubectl_run(&["create", "namespace", &namespace])?;
        let cluster = Cluster {
            node,
            kafka,
            bootstrap,
            namespace,
            helm: Helm::new(node.kubeconfig())?,
        };
        let step = Instant::now();
        install_release(&cluster)?;
        eprintln!(
            "helm install to ready: {:.1}s",
            step.elapsed().as_secs_f64()
        );
        let step = Instant::now();
        apply_samples(&cluster)?;
        eprintln!("samples applied: {:.1}s", step.elapsed().as_secs_f64());
        Ok(cluster)
    }

    /// Deletes the workload namespace, the release (unless already uninstalled), the audit
    /// volume and the release namespace: nothing of the run is left in the cluster.
    pub fn remove(&self) -> Result<()> {
        let node = self.node;
        node.kubectl_run(&["delete", "namespace", &self.namespace, "--wait=true"])?;
        if self
            .helm
            .run(&["status", RELEASE, "--namespace", SYSTEM])
            .is_ok()
        {
            self.helm.uninstall(RELEASE, SYSTEM)?;
        }
        node.kubectl_run(&["delete", "pvc", "--all", "-n", SYSTEM, "--wait=true"])?;
        node.kubectl_run(&["delete", "namespace", SYSTEM, "--wait=true"])?;
        node.kubectl_run(&["delete", "pv", "streamward-audit", "--wait=true"])?;
        Ok(())
    }
}

/// The release binaries, built as `just images` builds them (`cargo build --release`);
/// returns `<target>/release`.
pub fn release_binaries() -> Result<PathBuf> {
    let mut command = crate::cargo();
    command.args(["build", "-q", "--release"]);
    for program in PROGRAMS {
        command.args(["-p", program, "--bin", program]);
    }
    run(
        "cargo build --release",
        command.current_dir(cache::source_root()),
    )?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache::source_root().join("target"));
    Ok(target.join("release"))
}

/// The state to print when a scenario fails: Streamward's pods' logs, its resources and the
/// pods, and the node's own dump.
pub fn diagnostics(node: &Node) -> String {
    format!(
        "{}\n{}\n{}",
        streamward_logs(node),
        streamward_objects(node),
        node.dump()
    )
}

/// The values of the release (`helm upgrade` without them would return to the defaults).
fn release_values(cluster: &Cluster) -> Vec<(&'static str, String)> {
    vec![
        ("watchNamespaces", format!("{{{}}}", cluster.namespace)),
        ("image.tag", VERSION.to_owned()),
        ("image.pullPolicy", "Never".to_owned()),
        (
            "collector.query.tokenSecret",
            "collector-query-tokens".to_owned(),
        ),
    ]
}

/// A Deployment `ticker` (orders-app) producing `count` records, one a second, each with a new
/// kcat (a new proxy session), printing `ok <n>` or `fail <n>`, then `done`.
fn start_ticker(cluster: &Cluster, name: &str, topic: &str, count: u32) -> Result<()> {
    let script = format!(
        r#"i=0
while [ $i -lt {count} ]; do
  i=$((i+1))
  if echo "tick $i" | timeout 20 kcat -P -b "$KAFKA_BOOTSTRAP_SERVERS" -t {topic} -X message.timeout.ms=15000 2>/dev/null; then echo "ok $i"; else echo "fail $i"; fi
  sleep 1
done
echo done
sleep 100000
"#
    );
    cluster
        .node
        .apply(&deployment(&cluster.namespace, name, "orders-app", &script))?;
    rollout(
        cluster.node,
        &format!("deployment/{name}"),
        &cluster.namespace,
    )
}

fn app_log(cluster: &Cluster, name: &str) -> Result<String> {
    let pod = pod_of(cluster.node, &cluster.namespace, name)?;
    cluster
        .node
        .kubectl_run(&["logs", &pod, "-n", &cluster.namespace, "-c", "app"])
}

fn oks(log: &str) -> usize {
    log.lines().filter(|l| l.starts_with("ok ")).count()
}

/// With every operator replica gone, a running proxy keeps serving on the config it has, and
/// a new opted-in pod is refused (the webhook fails closed) until the operator is back.
pub fn without_operator_proxies_keep_serving_and_new_pods_wait_for_it(
    cluster: &Cluster,
) -> Result<()> {
    let node = cluster.node;
    let ns = &cluster.namespace;
    let topic = unique_name("orders.ticks");
    create_topics(cluster, &[&topic])?;
    start_ticker(cluster, "ticker", &topic, 40)?;
    wait_for(
        "the ticker's first records",
        Duration::from_secs(60),
        || Ok((oks(&app_log(cluster, "ticker")?) >= 2).then_some(())),
    )?;
    node.kubectl_run(&[
        "scale",
        "deployment/streamward-operator",
        "-n",
        SYSTEM,
        "--replicas=0",
    ])?;
    node.kubectl_run(&[
        "wait",
        "--for=delete",
        "pod",
        "-l",
        "app.kubernetes.io/component=operator",
        "-n",
        SYSTEM,
        "--timeout=60s",
    ])?;
    let before = oks(&app_log(cluster, "ticker")?);
    let refused = node.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: late, namespace: {ns}}}
spec:
  containers: [{{name: app, image: {image}, imagePullPolicy: Never, command: [sleep, "1000"]}}]
"#,
        image = images::clients_image(),
    ));
    let error = match refused {
        Ok(()) => bail!("an opted-in pod was admitted with no operator running"),
        Err(error) => format!("{error:#}"),
    };
    ensure!(
        error.contains("webhook"),
        "the pod was refused, but not by the webhook: {error}"
    );
    eprintln!(
        "operator down: new pod refused: {}",
        error
            .lines()
            .find(|l| l.contains("webhook"))
            .unwrap_or_default()
            .trim()
    );
    wait_for(
        "records while the operator is down",
        Duration::from_secs(30),
        || Ok((oks(&app_log(cluster, "ticker")?) >= before + 3).then_some(())),
    )?;
    node.kubectl_run(&[
        "scale",
        "deployment/streamward-operator",
        "-n",
        SYSTEM,
        "--replicas=2",
    ])?;
    rollout(node, "deployment/streamward-operator", SYSTEM)?;
    // The webhook's Service has endpoints again; admission is back.
    wait_for(
        "the opted-in pod admitted again",
        Duration::from_secs(60),
        || {
            Ok(node
                .apply(&format!(
                    r#"apiVersion: v1
kind: Pod
metadata: {{name: late, namespace: {ns}}}
spec:
  containers: [{{name: app, image: {image}, imagePullPolicy: Never, command: [sleep, "1000"]}}]
"#,
                    image = images::clients_image(),
                ))
                .ok())
        },
    )?;
    let injected = node.kubectl_run(&[
        "get",
        "pod",
        "late",
        "-n",
        ns,
        "-o",
        "jsonpath={.spec.initContainers[0].name}",
    ])?;
    ensure!(
        injected == "streamward-proxy",
        "the late pod was not injected: {injected:?}"
    );
    node.kubectl_run(&["delete", "pod", "late", "-n", ns, "--wait=false"])?;
    Ok(())
}

/// The collector pod deleted while the ticker produces: once it is back, every request the
/// ticker's proxy counted is stored, each session without a gap (the proxy spooled them).
pub fn collector_restart_under_load_loses_no_event(cluster: &Cluster) -> Result<()> {
    let node = cluster.node;
    let before = oks(&app_log(cluster, "ticker")?);
    node.kubectl_run(&[
        "delete",
        "pod",
        "streamward-collector-0",
        "-n",
        SYSTEM,
        "--wait=true",
    ])?;
    collector_ready(node)?;
    let log = wait_for("the ticker to finish", Duration::from_secs(120), || {
        let log = app_log(cluster, "ticker")?;
        Ok(log.contains("\ndone").then_some(log))
    })?;
    ensure!(
        !log.contains("fail "),
        "the ticker's produces failed while the collector was away:\n{log}"
    );
    eprintln!(
        "collector restarted after {before} records; ticker produced {}",
        oks(&log)
    );
    every_request_is_in_the_collector_under_the_pods_identity(cluster, "ticker")
}

/// `helm upgrade` with a changed value (debug logs for the operator, and the chart's
/// NetworkPolicy for the workload namespace) rolls the operator; `helm uninstall` removes the
/// release but keeps the audit volume's claim.
pub fn helm_upgrade_changes_a_value_and_uninstall_keeps_the_audit_volume(
    cluster: &Cluster,
) -> Result<()> {
    let helm = &cluster.helm;
    let node = cluster.node;
    let cidr = format!("{}/32", node.bridge_ip());
    let ns_list = format!("{{{}}}", cluster.namespace);
    let cidrs = format!("{{{cidr}}}");
    let mut values = release_values(cluster);
    values.push(("operator.logLevel", "debug".to_owned()));
    values.push(("networkPolicy.enabled", "true".to_owned()));
    values.push(("networkPolicy.namespaces", ns_list));
    values.push(("networkPolicy.brokers.cidrs", cidrs));
    let set: Vec<(&str, &str)> = values.iter().map(|(k, v)| (*k, v.as_str())).collect();
    helm.upgrade(RELEASE, SYSTEM, &set)?;
    rollout(node, "deployment/streamward-operator", SYSTEM)?;
    let env = node.kubectl_run(&[
        "get",
        "deployment",
        "streamward-operator",
        "-n",
        SYSTEM,
        "-o",
        "jsonpath={.spec.template.spec.containers[0].env[?(@.name==\"RUST_LOG\")].value}",
    ])?;
    ensure!(
        env == "debug",
        "the upgrade did not change the log level: {env:?}"
    );
    let policies = node.kubectl_run(&[
        "get",
        "networkpolicy",
        "-n",
        &cluster.namespace,
        "-o",
        "name",
    ])?;
    ensure!(
        !policies.trim().is_empty(),
        "no NetworkPolicy after the upgrade"
    );
    // The bridge CNI plugin does not enforce NetworkPolicy: a pod the policy restricts (not
    // injected) still opens a TCP connection to the broker. Said, not hidden.
    let probe = format!(
        "import socket\ntry:\n    socket.create_connection((\"{ip}\", {port}), timeout=5); print(\"connected\")\nexcept OSError as e:\n    print(\"blocked\", e)\n",
        ip = node.bridge_ip(),
        port = cluster
            .bootstrap
            .rsplit_once(':')
            .map(|(_, p)| p)
            .unwrap_or("0"),
    );
    let reach = run_pod(node, &cluster.namespace, "np-probe", &probe)?;
    eprintln!(
        "NetworkPolicy {} in place; a non-injected pod's TCP connect to the broker: {} \
         (the bridge CNI plugin does not enforce NetworkPolicy)",
        policies.trim(),
        reach.trim()
    );

    helm.uninstall(RELEASE, SYSTEM)?;
    wait_for("the release's pods gone", Duration::from_secs(120), || {
        let pods = node.kubectl_run(&["get", "pods", "-n", SYSTEM, "-o", "name"])?;
        Ok(pods.trim().is_empty().then_some(()))
    })?;
    let pvc = node.kubectl_run(&["get", "pvc", "-n", SYSTEM, "-o", "name"])?;
    ensure!(
        pvc.trim() == "persistentvolumeclaim/data-streamward-collector-0",
        "the audit volume's claim after uninstall: {pvc:?}"
    );
    Ok(())
}

/// The release binaries, built as `just images` builds them, made into OCI archives and
/// imported into the node under the names the chart's defaults use (`ghcr.io/streamward/…`).
pub fn import_streamward_images(node: &Node, release: &Path) -> Result<()> {
    let out = tempfile::tempdir()?;
    for built in image::build_all(release, out.path())? {
        node.import_image(&built.archive)?;
    }
    Ok(())
}

/// `helm install` with the images imported (`pullPolicy: Never`), the workload namespace
/// watched, and a query token for the collector; waits for two operator replicas (one the
/// leader) and the collector to be Ready.
///
/// The node has no storage provisioner, as many bare clusters: the collector's claim binds to a
/// hostPath PersistentVolume of no class made here, owned by the collector's user.
fn install_release(cluster: &Cluster) -> Result<()> {
    let helm = &cluster.helm;
    let node = cluster.node;
    let audit_dir = node.dir().join("audit-volume");
    std::fs::create_dir_all(&audit_dir)?;
    std::os::unix::fs::chown(&audit_dir, Some(65532), Some(65532))?;
    node.apply(&format!(
        r#"apiVersion: v1
kind: PersistentVolume
metadata: {{name: streamward-audit}}
spec:
  capacity: {{storage: 10Gi}}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  hostPath: {{path: {path}, type: Directory}}
"#,
        path = audit_dir.display()
    ))?;
    node.kubectl_run(&["create", "namespace", SYSTEM])?;
    node.apply(&format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: collector-query-tokens, namespace: {SYSTEM}}}
stringData:
  tokens: "{QUERY_TOKEN}"
"#
    ))?;
    let values = release_values(cluster);
    let set: Vec<(&str, &str)> = values.iter().map(|(k, v)| (*k, v.as_str())).collect();
    helm.install(RELEASE, SYSTEM, &set)?;
    rollout(node, "deployment/streamward-operator", SYSTEM)?;
    rollout(node, "statefulset/streamward-collector", SYSTEM)?;
    let ready = node.kubectl_run(&[
        "get",
        "deployment",
        "streamward-operator",
        "-n",
        SYSTEM,
        "-o",
        "jsonpath={.status.readyReplicas}",
    ])?;
    ensure!(ready.trim() == "2", "operator replicas ready: {ready:?}");
    let holder = wait_for("an operator leader", Duration::from_secs(60), || {
        let holders = node.kubectl_run(&[
            "get",
            "leases",
            "-n",
            SYSTEM,
            "-o",
            "jsonpath={.items[*].spec.holderIdentity}",
        ])?;
        Ok(holders
            .split_whitespace()
            .find(|h| h.starts_with("streamward-operator"))
            .map(str::to_owned))
    })?;
    eprintln!("operator leader: {holder}");
    Ok(())
}

/// Waits until the collector's pod exists again and is Ready (`rollout status` of a
/// StatefulSet can pass before the controller has made the new pod).
fn collector_ready(node: &Node) -> Result<()> {
    wait_for(
        "streamward-collector-0 Ready",
        Duration::from_secs(120),
        || {
            let ready = node
                .kubectl()
                .args(["get", "pod", "streamward-collector-0", "-n", SYSTEM, "-o"])
                .arg(r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#)
                .output()?;
            Ok((String::from_utf8_lossy(&ready.stdout).trim() == "True").then_some(()))
        },
    )
}

fn rollout(node: &Node, object: &str, namespace: &str) -> Result<()> {
    node.kubectl_run(&[
        "rollout",
        "status",
        object,
        "-n",
        namespace,
        "--timeout=180s",
    ])
    .map(drop)
}

/// The samples of `config/samples/`, as a user adapts them: namespace `demo` becomes the
/// workload namespace, the StreamTarget points at the Kafka on the bridge with SASL credentials
/// in a Secret of Streamward's namespace that lists the workload namespace as allowed to use
/// it; the namespace opts in to injection; the samples' service accounts exist.
fn apply_samples(cluster: &Cluster) -> Result<()> {
    let node = cluster.node;
    let ns = &cluster.namespace;
    let bootstrap = &cluster.bootstrap;
    node.kubectl_run(&["label", "namespace", ns, "streamward.io/inject=enabled"])?;
    node.apply(&format!(
        r#"apiVersion: v1
kind: Secret
metadata:
  name: {CREDENTIALS_SECRET}
  namespace: {SYSTEM}
  annotations:
    streamward.io/allowed-namespaces: {ns}
    streamward.io/allowed-bootstrap-servers: '{bootstrap}'
stringData: {{username: {KAFKA_USER}, password: {KAFKA_PASSWORD}}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: orders-app, namespace: {ns}}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: billing-app, namespace: {ns}}}
"#
    ))?;
    // The webhook's Service is new: until kube-proxy has programmed it, the API server's calls
    // to it are refused (seen here about a second after the pods were Ready). A user's first
    // `kubectl apply` can meet the same; wait until a server-side dry run is admitted.
    let probe = format!(
        "apiVersion: streamward.io/v1alpha1\nkind: StreamTarget\nmetadata: {{name: probe, namespace: {ns}}}\nspec: {{bootstrapServers: [\"{}\"]}}\n",
        cluster.bootstrap
    );
    wait_for(
        "the admission webhooks to answer",
        Duration::from_secs(60),
        || {
            let mut apply = node.kubectl();
            apply.args(["apply", "--dry-run=server", "-f", "-"]);
            Ok(pipe(&mut apply, &probe)?.then_some(()))
        },
    )?;
    for sample in [
        "01-streamtarget.yaml",
        "02-streampolicy.yaml",
        "04-maskingrule.yaml",
    ] {
        let path = cache::source_root()
            .join("config")
            .join("samples")
            .join(sample);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        ensure!(
            text.contains("namespace: demo"),
            "{sample} no longer uses namespace demo"
        );
        let mut text = text.replace("namespace: demo", &format!("namespace: {ns}"));
        if sample == "01-streamtarget.yaml" {
            ensure!(text.contains("- 127.0.0.1:9092"), "{sample} changed");
            text = text.replace(
                "- 127.0.0.1:9092",
                &format!(
                    "- {}\n  sasl:\n    mechanism: PLAIN\n    credentialsSecret: {CREDENTIALS_SECRET}",
                    cluster.bootstrap
                ),
            );
        }
        node.apply(&text)
            .with_context(|| format!("applying {sample}"))?;
    }
    node.kubectl_run(&[
        "wait",
        // Ready stays Unknown: the operator does not check broker connectivity (yet).
        "--for=condition=Accepted",
        "streamtarget/local-kafka",
        "-n",
        ns,
        "--timeout=60s",
    ])?;
    Ok(())
}

/// Returns the app's logs, which scenario 5 reads too.
pub fn injected_app_produces_to_allowed_topic_and_is_refused_on_denied_topic(
    cluster: &Cluster,
) -> Result<String> {
    let node = cluster.node;
    let ns = &cluster.namespace;
    let allowed = unique_name("orders.created");
    let denied = unique_name("payments.settled");
    create_topics(cluster, &[&allowed, &denied])?;
    let script = format!(
        r#"echo "bootstrap=$KAFKA_BOOTSTRAP_SERVERS"
echo '{{"order":1}}' | timeout 60 kcat -P -b "$KAFKA_BOOTSTRAP_SERVERS" -t {allowed} -X message.timeout.ms=20000
echo "allowed exit=$?"
echo '{{"order":2}}' | timeout 60 kcat -P -b "$KAFKA_BOOTSTRAP_SERVERS" -t {denied} -X message.timeout.ms=20000 2>&1
echo "denied exit=$?"
# What the app itself can see of the broker credentials, and whether it can skip the proxy.
if [ -e /var/run/streamward/secrets ]; then echo "secrets dir visible"; else echo "no secrets dir"; fi
if env | grep -q '{KAFKA_PASSWORD}'; then echo "password in env"; else echo "env clean"; fi
if grep -rqs '{KAFKA_PASSWORD}' /var/run /etc /run 2>/dev/null; then echo "password in files"; else echo "files clean"; fi
timeout 30 kcat -b {bootstrap} -L -m 10 >/tmp/direct 2>&1
echo "direct without credentials exit=$?"; tail -n 2 /tmp/direct
timeout 30 kcat -b {bootstrap} -X security.protocol=SASL_PLAINTEXT -X sasl.mechanisms=PLAIN -X sasl.username={KAFKA_USER} -X sasl.password=a-guess -L -m 10 >/tmp/guess 2>&1
echo "direct with a guessed password exit=$?"; tail -n 2 /tmp/guess
echo done
sleep 100000
"#,
        bootstrap = cluster.bootstrap,
    );
    let logs = app_logs(cluster, "orders", "orders-app", &script)?;
    let pod = pod_of(node, ns, "orders")?;
    let init = node.kubectl_run(&[
        "get",
        "pod",
        &pod,
        "-n",
        ns,
        "-o",
        "jsonpath={.spec.initContainers[0].name} {.spec.initContainers[0].restartPolicy}",
    ])?;
    ensure!(
        init.trim() == "streamward-proxy Always",
        "the proxy is not the pod's native sidecar: {init:?}"
    );
    eprintln!("--- orders app ---\n{logs}");
    ensure!(
        logs.contains("bootstrap=127.0.0.1:9092"),
        "the app did not get the proxy's address:\n{logs}"
    );
    ensure!(
        logs.contains("allowed exit=0"),
        "produce to {allowed} failed:\n{logs}"
    );
    ensure!(
        !logs.contains("denied exit=0") && logs.contains("Topic authorization failed"),
        "produce to {denied} was not refused with the client's authorization error:\n{logs}"
    );
    Ok(logs)
}

/// The app container of the orders pod (its script probed from inside; our images have no
/// shell to `kubectl exec` into, the clients image has one but the probe is part of its run):
/// no Secret mounted, no credential in its environment or files, neither its service account
/// nor an editor of its namespace may read the Secret (it is in Streamward's namespace); and a
/// direct connection to the broker without the proxy's credentials
/// fails SASL. The app *can* open a TCP connection to the broker: nothing on this node (the
/// CNI bridge plugin enforces no NetworkPolicy) stops it; the credentials are the barrier.
pub fn the_app_cannot_read_the_broker_credentials_nor_use_the_broker_without_them(
    cluster: &Cluster,
    app_logs: &str,
) -> Result<()> {
    let ns = &cluster.namespace;
    for expected in [
        "no secrets dir",
        "env clean",
        "files clean",
        "direct without credentials exit=",
        "direct with a guessed password exit=",
    ] {
        ensure!(
            app_logs.contains(expected),
            "the app's probe did not print {expected:?}:\n{app_logs}"
        );
    }
    ensure!(
        !app_logs.contains("direct without credentials exit=0")
            && !app_logs.contains("direct with a guessed password exit=0")
            && app_logs.contains("Authentication failed"),
        "the app reached the broker without the proxy's credentials:\n{app_logs}"
    );
    cluster.node.kubectl_run(&[
        "create",
        "rolebinding",
        "ns-editor-edit",
        "-n",
        ns,
        "--clusterrole=edit",
        "--user=ns-editor",
    ])?;
    let can = |who: &str, namespace: &str, what: &str| -> Result<String> {
        let output = cluster
            .node
            .kubectl()
            .args(["auth", "can-i", "get", what, "-n", namespace])
            .arg(format!("--as={who}"))
            .output()?;
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    let secret = format!("secret/{CREDENTIALS_SECRET}");
    for who in [
        format!("system:serviceaccount:{ns}:orders-app"),
        "ns-editor".to_owned(),
    ] {
        let answer = can(&who, SYSTEM, &secret)?;
        ensure!(
            answer == "no",
            "{who} may get the credentials Secret: {answer:?}"
        );
    }
    // What the editor could read where the Secret used to live.
    let answer = can("ns-editor", ns, "secrets")?;
    ensure!(answer == "yes", "the editor's own namespace: {answer:?}");
    Ok(())
}

/// Deployment `name` (service account `sa`) runs `script`, which ends by printing `done`;
/// returns the app container's logs up to there.
fn app_logs(cluster: &Cluster, name: &str, sa: &str, script: &str) -> Result<String> {
    let node = cluster.node;
    let ns = &cluster.namespace;
    node.apply(&deployment(ns, name, sa, script))?;
    rollout(node, &format!("deployment/{name}"), ns)?;
    let pod = pod_of(node, ns, name)?;
    wait_for(
        &format!("{name} to print done"),
        Duration::from_secs(150),
        || {
            let logs = node.kubectl_run(&["logs", &pod, "-n", ns, "-c", "app"])?;
            Ok(logs.contains("\ndone").then_some(logs))
        },
    )
}

/// The sample MaskingRule on `orders.*`: the orders service reads card, email and phone
/// masked; billing (exempt in the sample) reads them raw. Billing gets read access with a
/// StreamPolicy of its own (the samples give it none).
pub fn consumers_read_masked_fields_masked_and_the_exempt_one_raw(cluster: &Cluster) -> Result<()> {
    let ns = &cluster.namespace;
    let topic = unique_name("orders.placed");
    create_topics(cluster, &[&topic])?;
    cluster.node.apply(&format!(
        r#"apiVersion: streamward.io/v1alpha1
kind: StreamPolicy
metadata: {{name: billing, namespace: {ns}}}
spec:
  targetRef: local-kafka
  subjects: {{serviceAccounts: [billing-app]}}
  rules:
  - name: read-orders
    resources: [{{resourceType: Topic, name: orders., patternType: Prefixed}}]
    operations: [Read, Describe]
    effect: Allow
"#
    ))?;
    let record = r#"{"customer":{"email":"ada@example.com","phone":"+44 20 7946 0958"},"payment":{"card":{"number":"4111111111111111"}}}"#;
    let consume = format!(
        r#"timeout 60 kcat -C -b "$KAFKA_BOOTSTRAP_SERVERS" -t {topic} -o beginning -c 1 -e 2>&1
echo "consume exit=$?"
echo done
sleep 100000
"#
    );
    let orders = app_logs(
        cluster,
        "orders-reader",
        "orders-app",
        &format!(
            "echo '{record}' | timeout 60 kcat -P -b \"$KAFKA_BOOTSTRAP_SERVERS\" -t {topic}\necho \"produce exit=$?\"\n{consume}"
        ),
    )?;
    eprintln!("--- orders-reader (orders-app) ---\n{orders}");
    ensure!(
        orders.contains("produce exit=0") && orders.contains("consume exit=0"),
        "orders-reader failed:\n{orders}"
    );
    ensure!(
        !orders.contains("ada@example.com")
            && !orders.contains("4111111111111111")
            && orders.contains("[redacted]")
            && orders.contains("1111"),
        "orders-app read the PII unmasked:\n{orders}"
    );
    let billing = app_logs(cluster, "billing", "billing-app", &consume)?;
    eprintln!("--- billing (billing-app, exempt) ---\n{billing}");
    ensure!(
        billing.contains(record),
        "billing (exempt) did not read the record raw:\n{billing}"
    );
    Ok(())
}

/// An AccessGrant applied with kubectl lets service account `oncall` (no StreamPolicy) read a
/// `payments.*` topic over one open connection; patched to `revoked: true`, the next fetches
/// on that same connection are refused within 10 s.
pub fn an_access_grant_opens_a_topic_and_its_revocation_closes_the_open_connection(
    cluster: &Cluster,
) -> Result<()> {
    let node = cluster.node;
    let ns = &cluster.namespace;
    let topic = unique_name("payments.audit");
    create_topics(cluster, &[&topic])?;
    produce_directly(cluster, &topic, "payment-1")?;
    node.apply(&format!(
        r#"apiVersion: v1
kind: ServiceAccount
metadata: {{name: oncall, namespace: {ns}}}
---
apiVersion: streamward.io/v1alpha1
kind: AccessGrant
metadata: {{name: oncall-debug, namespace: {ns}}}
spec:
  subjects: {{serviceAccounts: [oncall]}}
  resources:
  - {{resourceType: Topic, name: {topic}}}
  - {{resourceType: Group, name: oncall-debug}}
  operations: [Read, Describe]
  durationSeconds: 3600
  reason: Investigate duplicate payment events
  ticketRef: INC-4711
"#
    ))?;
    node.kubectl_run(&[
        "wait",
        "--for=condition=Active",
        "accessgrant/oncall-debug",
        "-n",
        ns,
        "--timeout=60s",
    ])
    .ok();
    // One consumer, one connection to the proxy, polling until it is refused.
    let script = format!(
        r#"cat > /tmp/c.py <<'PY'
import os, sys, time
from confluent_kafka import Consumer, TopicPartition, OFFSET_BEGINNING
c = Consumer({{"bootstrap.servers": os.environ["KAFKA_BOOTSTRAP_SERVERS"], "group.id": "oncall-debug",
              "enable.auto.commit": False, "fetch.wait.max.ms": 200}})
c.assign([TopicPartition("{topic}", 0, OFFSET_BEGINNING)])
while True:
    m = c.poll(0.5)
    if m is None:
        print("poll", time.time(), flush=True)
    elif m.error():
        print("error", time.time(), m.error(), flush=True)
        if "authoriz" in str(m.error()).lower():
            break
    else:
        print("record", time.time(), m.value().decode(), flush=True)
PY
python3 /tmp/c.py 2>&1
echo done
sleep 100000
"#
    );
    node.apply(&deployment(ns, "oncall", "oncall", &script))?;
    rollout(node, "deployment/oncall", ns)?;
    let pod = pod_of(node, ns, "oncall")?;
    let logs = |node: &Node| node.kubectl_run(&["logs", &pod, "-n", ns, "-c", "app"]);
    wait_for("the granted read", Duration::from_secs(90), || {
        let text = logs(node)?;
        ensure!(
            !text.contains("error"),
            "the granted consumer failed:\n{text}"
        );
        Ok(text.contains("record").then_some(()))
    })?;
    let revoked_at = now();
    node.kubectl_run(&[
        "patch",
        "accessgrant",
        "oncall-debug",
        "-n",
        ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"revoked":true}}"#,
    ])?;
    let text = wait_for(
        "the refusal after revocation",
        Duration::from_secs(30),
        || {
            let text = logs(node)?;
            Ok(text.contains("\ndone").then_some(text))
        },
    )?;
    eprintln!(
        "--- oncall (grant revoked at {revoked_at:.1}) ---\n{}",
        tail(&text, 6)
    );
    let refused_at: f64 = text
        .lines()
        .find(|l| l.starts_with("error") && l.to_lowercase().contains("authoriz"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|t| t.parse().ok())
        .with_context(|| format!("no authorization error after revocation:\n{text}"))?;
    ensure!(
        refused_at - revoked_at <= 10.0,
        "refused {:.1}s after revocation (more than 10 s)",
        refused_at - revoked_at
    );
    eprintln!(
        "grant revoked: open connection refused after {:.1}s",
        refused_at - revoked_at
    );
    Ok(())
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One record produced directly to the broker's plaintext listener on 127.0.0.1 (the admin's
/// side), with Kafka's own console producer.
fn produce_directly(cluster: &Cluster, topic: &str, value: &str) -> Result<()> {
    use std::io::Write as _;
    let mut child = cluster
        .kafka
        .dist()
        .tool("org.apache.kafka.tools.ConsoleProducer")
        .args([
            "--bootstrap-server",
            &cluster.kafka.bootstrap(),
            "--topic",
            topic,
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("the producer's stdin")?
        .write_all(format!("{value}\n").as_bytes())?;
    let status = child.wait()?;
    ensure!(status.success(), "console producer to {topic}: {status}");
    Ok(())
}

/// Topics made directly on the broker (the admin's side, not through the proxy).
fn create_topics(cluster: &Cluster, topics: &[&str]) -> Result<()> {
    for topic in topics {
        run(
            &format!("create topic {topic}"),
            cluster
                .kafka
                .dist()
                .tool("org.apache.kafka.tools.TopicCommand")
                .args(["--bootstrap-server", &cluster.kafka.bootstrap()])
                .args(["--create", "--topic", topic, "--partitions", "1"]),
        )?;
    }
    Ok(())
}

/// A Deployment of the clients image running `script` under `sh`, as service account `sa`.
fn deployment(namespace: &str, name: &str, sa: &str, script: &str) -> String {
    let command = serde_json::to_string(&["sh", "-c", script]).expect("strings serialise");
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      serviceAccountName: {sa}
      terminationGracePeriodSeconds: 1
      containers:
      - name: app
        image: {image}
        imagePullPolicy: Never
        command: {command}
"#,
        image = images::clients_image(),
    )
}

/// The name of the one pod of Deployment `app`.
fn pod_of(node: &Node, namespace: &str, app: &str) -> Result<String> {
    let name = node.kubectl_run(&[
        "get",
        "pods",
        "-n",
        namespace,
        "-l",
        &format!("app={app}"),
        "--field-selector=status.phase=Running",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ])?;
    if name.trim().is_empty() {
        bail!("no running pod of {namespace}/{app}");
    }
    Ok(name.trim().to_owned())
}

/// Every Streamward resource with its status, and the workload pods with their containers.
fn streamward_objects(node: &Node) -> String {
    let output = node
        .kubectl()
        .args(["get", "streamward,pods", "-A", "-o", "yaml"])
        .output();
    match output {
        Ok(o) => format!(
            "--- streamward objects ---\n{}{}",
            tail(&String::from_utf8_lossy(&o.stdout), 400),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => format!("(kubectl get failed: {e})"),
    }
}

/// The logs of the operator and collector pods, for a failure message.
fn streamward_logs(node: &Node) -> String {
    let output = node
        .kubectl()
        .args([
            "logs",
            "-n",
            SYSTEM,
            "--all-containers",
            "--prefix",
            "--tail=80",
        ])
        .args(["-l", "app.kubernetes.io/instance=streamward"])
        .output();
    match output {
        Ok(o) => format!(
            "--- streamward logs ---\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => format!("(kubectl logs failed: {e})"),
    }
}

/// The collector's query API, through its Service, from a pod of the clients image in the
/// release namespace (never injected): every request the proxy of Deployment `app` counted
/// (`streamward_sidecar_requests_total` on its admin port) is an event under the pod's
/// namespace, service account and name, and each session's sequence numbers have no gap.
pub fn every_request_is_in_the_collector_under_the_pods_identity(
    cluster: &Cluster,
    app: &str,
) -> Result<()> {
    let node = cluster.node;
    let ns = &cluster.namespace;
    let pod = pod_of(node, ns, app)?;
    let pod_ip = node.kubectl_run(&[
        "get",
        "pod",
        &pod,
        "-n",
        ns,
        "-o",
        "jsonpath={.status.podIP}",
    ])?;
    let sa = node.kubectl_run(&[
        "get",
        "pod",
        &pod,
        "-n",
        ns,
        "-o",
        "jsonpath={.spec.serviceAccountName}",
    ])?;
    let ca = collector_ca(node)?;
    let script = format!(
        r#"
import json, ssl, time, urllib.request
ctx = ssl.create_default_context(cadata={ca:?})
url = "https://streamward-collector.{SYSTEM}.svc:8443/v1/events?namespace={ns}&serviceAccount={sa}&format=ndjson&limit=100000"
def counted():
    text = urllib.request.urlopen("http://{pod_ip}:9464/metrics", timeout=10).read().decode()
    return sum(int(float(l.split()[-1])) for l in text.splitlines()
               if l.startswith("streamward_sidecar_requests_total"))
def events():
    req = urllib.request.Request(url, headers={{"Authorization": "Bearer {QUERY_TOKEN}"}})
    body = urllib.request.urlopen(req, context=ctx, timeout=10).read().decode()
    return [json.loads(l) for l in body.splitlines() if l.strip()]
deadline = time.time() + 60
while True:
    n, evs = counted(), events()
    mine = [e for e in evs if e["data"]["identity"].get("pod") == "{pod}"]
    if len(mine) >= n or time.time() > deadline:
        break
    time.sleep(1)
sessions = {{}}
for e in mine:
    sessions.setdefault(e["data"]["sessionId"], []).append(e["data"]["sequence"])
gaps = [s for s, seqs in sessions.items() if sorted(seqs) != list(range(1, len(seqs) + 1))]
others = [e["source"] for e in evs if e["data"]["identity"].get("pod") != "{pod}"]
print(json.dumps({{"counted": n, "events": len(mine), "sessions": len(sessions), "gaps": gaps,
                  "sources": sorted({{e["source"] for e in mine}}),
                  "apis": sorted({{e["data"]["request"]["apiKey"] for e in mine}})}}))
"#
    );
    let logs = run_pod(node, SYSTEM, "audit-query", &script)?;
    eprintln!("--- collector query ---\n{logs}");
    let report: serde_json::Value = serde_json::from_str(
        logs.lines()
            .last()
            .context("the query pod printed nothing")?,
    )
    .with_context(|| format!("the query pod's report:\n{logs}"))?;
    let counted = report["counted"].as_u64().unwrap_or(0);
    ensure!(counted > 0, "the proxy counted no request:\n{logs}");
    ensure!(
        report["events"].as_u64() == Some(counted),
        "the collector has not every request of {pod}:\n{logs}"
    );
    ensure!(
        report["gaps"].as_array().is_some_and(Vec::is_empty),
        "sessions with gaps:\n{logs}"
    );
    let source = format!("/namespaces/{ns}/serviceaccounts/{sa}/pods/{pod}");
    ensure!(
        report["sources"] == serde_json::json!([source]),
        "events not under the pod's identity {source}:\n{logs}"
    );
    Ok(())
}

/// `streamward-collector verify` on the audit volume, as an auditor would run it: the
/// collector scaled to zero (its store has one writer; verify reads a quiet store), a Job with
/// the collector's own image and the claim mounted read-only, the key's fingerprint pinned as
/// recorded from `GET /v1/key` while it ran. Then the collector is scaled back.
pub fn the_audit_store_verifies_with_the_collector_stopped(cluster: &Cluster) -> Result<()> {
    let node = cluster.node;
    let ca = collector_ca(node)?;
    let fingerprint = run_pod(
        node,
        SYSTEM,
        "audit-key",
        &format!(
            r#"
import json, ssl, urllib.request
ctx = ssl.create_default_context(cadata={ca:?})
print(json.load(urllib.request.urlopen("https://streamward-collector.{SYSTEM}.svc:8443/v1/key", context=ctx, timeout=10))["fingerprint"])
"#
        ),
    )?;
    let fingerprint = fingerprint.trim();
    node.kubectl_run(&[
        "scale",
        "statefulset/streamward-collector",
        "-n",
        SYSTEM,
        "--replicas=0",
    ])?;
    node.kubectl_run(&[
        "wait",
        "--for=delete",
        "pod/streamward-collector-0",
        "-n",
        SYSTEM,
        "--timeout=60s",
    ])?;
    node.apply(&format!(
        r#"apiVersion: batch/v1
kind: Job
metadata: {{name: audit-verify, namespace: {SYSTEM}}}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      securityContext: {{runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532}}
      containers:
      - name: verify
        image: {image}
        imagePullPolicy: Never
        args: [verify, --data, /var/lib/streamward-collector, --fingerprint, "{fingerprint}"]
        volumeMounts: [{{name: data, mountPath: /var/lib/streamward-collector, readOnly: true}}]
      volumes: [{{name: data, persistentVolumeClaim: {{claimName: data-streamward-collector-0, readOnly: true}}}}]
"#,
        image = image::reference("streamward-collector"),
    ))?;
    let outcome = wait_for("the verify Job", Duration::from_secs(120), || {
        let status = node.kubectl_run(&[
            "get",
            "job",
            "audit-verify",
            "-n",
            SYSTEM,
            "-o",
            "jsonpath={.status.succeeded}/{.status.failed}",
        ])?;
        Ok(match status.trim() {
            "1/" => Some(true),
            s if s.ends_with("/1") => Some(false),
            _ => None,
        })
    })?;
    let report = node.kubectl_run(&["logs", "job/audit-verify", "-n", SYSTEM])?;
    eprintln!("--- streamward-collector verify ---\n{report}");
    ensure!(outcome, "streamward-collector verify failed:\n{report}");
    node.kubectl_run(&[
        "delete",
        "job",
        "audit-verify",
        "-n",
        SYSTEM,
        "--wait=true",
        "--cascade=foreground",
    ])?;
    node.kubectl_run(&[
        "scale",
        "statefulset/streamward-collector",
        "-n",
        SYSTEM,
        "--replicas=1",
    ])?;
    collector_ready(node)
}

/// The collector's CA (`ca.crt` of its serving certificate's Secret).
fn collector_ca(node: &Node) -> Result<String> {
    node.kubectl_run(&[
        "get",
        "secret",
        "streamward-collector-tls",
        "-n",
        SYSTEM,
        "-o",
        r#"go-template={{index .data "ca.crt" | base64decode}}"#,
    ])
}

/// Runs `script` with python3 in a one-shot pod of the clients image, not injected, and
/// returns its logs; the pod is deleted.
fn run_pod(node: &Node, namespace: &str, prefix: &str, script: &str) -> Result<String> {
    let name = unique_name(prefix);
    let command = serde_json::to_string(&["python3", "-c", script]).expect("strings serialise");
    node.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {namespace}
  labels: {{streamward.io/inject: "false"}}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {image}
    imagePullPolicy: Never
    command: {command}
"#,
        image = images::clients_image(),
    ))?;
    node.wait_pod_phase(namespace, &name, "Succeeded", Duration::from_secs(120))?;
    let logs = node.kubectl_run(&["logs", &name, "-n", namespace])?;
    node.kubectl_run(&["delete", "pod", &name, "-n", namespace, "--wait=false"])?;
    Ok(logs)
}

/// Runs `command` with `input` on stdin; whether it succeeded.
fn pipe(command: &mut Command, input: &str) -> Result<bool> {
    use std::io::Write as _;
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(input.as_bytes())?;
    Ok(child.wait()?.success())
}

/// The audit trail of the workload namespace as the collector's query API gives it
/// (`format=table`), read through its Service by a pod: what `just demo-cluster` ends with.
pub fn audit_trail(cluster: &Cluster, limit: usize) -> Result<String> {
    let ca = collector_ca(cluster.node)?;
    let ns = &cluster.namespace;
    run_pod(
        cluster.node,
        SYSTEM,
        "audit-trail",
        &format!(
            r#"
import ssl, urllib.request
ctx = ssl.create_default_context(cadata={ca:?})
req = urllib.request.Request(
    "https://streamward-collector.{SYSTEM}.svc:8443/v1/events?namespace={ns}&format=table&limit={limit}",
    headers={{"Authorization": "Bearer {QUERY_TOKEN}"}})
print(urllib.request.urlopen(req, context=ctx, timeout=10).read().decode(), end="")
"#
        ),
    )
}

//! The e2e node: a real kubelet runs pods from images built here, the pods reach the tests'
//! Kafka on the bridge address with credentials, resolve Services through CoreDNS and reach
//! them through kube-proxy; and after the node stops, nothing of it is left on the machine.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::process::Command;
use std::time::{Duration, Instant};

use streamward_e2e::kafka::{KafkaCluster, KafkaOptions, SecurityProtocol};
use streamward_e2e::node::{Node, host, images};

const USER: &str = "proxy";
const PASSWORD: &str = "proxy-secret";

/// One test owns the node (rather than [`Node::shared`]) so that it can check, after dropping
/// it, that the machine is as it was.
#[test]
fn node_runs_pods_that_reach_kafka_and_services_and_leaves_nothing_behind() {
    let started = Instant::now();
    let node = Node::start().expect("starting the node");
    eprintln!("node start: {:.1}s", started.elapsed().as_secs_f64());
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let result = scenarios(&node);
        if let Err(error) = &result {
            eprintln!("{error:?}\n{}", node.dump());
        }
        result.expect("node scenarios");
    }));
    drop(node);
    if let Err(panic) = outcome {
        resume_unwind(panic);
    }
    assert_machine_clean();
}

fn scenarios(node: &Node) -> anyhow::Result<()> {
    let namespace = node.namespace("node")?;
    plain_pod_runs_to_completion_and_logs(node, &namespace)?;

    let kafka = KafkaCluster::start_with(
        KafkaOptions::new(1)
            .listener(SecurityProtocol::SaslPlaintext)
            .sasl_user(USER, PASSWORD)
            .secured_host(node.bridge_ip().into()),
    )?;
    let bootstrap = kafka.secured_bootstrap(SecurityProtocol::SaslPlaintext)?;
    kcat_in_a_pod_gets_metadata_from_kafka_on_the_bridge(node, &namespace, &bootstrap)?;
    confluent_kafka_in_a_pod_reaches_kafka_through_a_service_name(node, &namespace, &bootstrap)?;
    Ok(())
}

fn plain_pod_runs_to_completion_and_logs(node: &Node, namespace: &str) -> anyhow::Result<()> {
    node.apply(&pod(
        namespace,
        "hello",
        &["sh", "-c", "echo hello from $(hostname)"],
    ))?;
    node.wait_pod_phase(namespace, "hello", "Succeeded", Duration::from_secs(60))?;
    let logs = node.kubectl_run(&["logs", "hello", "-n", namespace])?;
    anyhow::ensure!(
        logs.trim() == "hello from hello",
        "unexpected logs: {logs:?}"
    );
    Ok(())
}

fn kcat_in_a_pod_gets_metadata_from_kafka_on_the_bridge(
    node: &Node,
    namespace: &str,
    bootstrap: &str,
) -> anyhow::Result<()> {
    node.apply(&pod(
        namespace,
        "kcat",
        &[
            "kcat",
            "-b",
            bootstrap,
            "-X",
            "security.protocol=SASL_PLAINTEXT",
            "-X",
            "sasl.mechanisms=PLAIN",
            "-X",
            &format!("sasl.username={USER}"),
            "-X",
            &format!("sasl.password={PASSWORD}"),
            "-m",
            "20",
            "-L",
        ],
    ))?;
    node.wait_pod_phase(namespace, "kcat", "Succeeded", Duration::from_secs(60))?;
    let logs = node.kubectl_run(&["logs", "kcat", "-n", namespace])?;
    anyhow::ensure!(
        logs.contains("1 brokers:") && logs.contains(bootstrap),
        "kcat -L in a pod did not list the broker {bootstrap}:\n{logs}"
    );
    Ok(())
}

/// A selector-less Service `kafka` whose EndpointSlice is the broker on the bridge: the pod
/// finds it by name (CoreDNS) and connects to its ClusterIP (kube-proxy).
fn confluent_kafka_in_a_pod_reaches_kafka_through_a_service_name(
    node: &Node,
    namespace: &str,
    bootstrap: &str,
) -> anyhow::Result<()> {
    let port = bootstrap
        .rsplit_once(':')
        .map(|(_, port)| port)
        .unwrap_or_default();
    node.apply(&format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: kafka, namespace: {namespace}}}
spec:
  ports: [{{name: kafka, port: 9092, targetPort: {port}, protocol: TCP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kafka-bridge
  namespace: {namespace}
  labels: {{kubernetes.io/service-name: kafka}}
addressType: IPv4
ports: [{{name: kafka, port: {port}, protocol: TCP}}]
endpoints: [{{addresses: ["{ip}"]}}]
"#,
        ip = node.bridge_ip(),
    ))?;
    let cluster_ip = node.kubectl_run(&[
        "get",
        "service",
        "kafka",
        "-n",
        namespace,
        "-o",
        "jsonpath={.spec.clusterIP}",
    ])?;
    let script = format!(
        r#"
import socket, sys
from confluent_kafka.admin import AdminClient
name = "kafka.{namespace}.svc.cluster.local"
print("resolved", socket.gethostbyname(name))
admin = AdminClient({{
    "bootstrap.servers": name + ":9092",
    "security.protocol": "SASL_PLAINTEXT",
    "sasl.mechanisms": "PLAIN",
    "sasl.username": "{USER}",
    "sasl.password": "{PASSWORD}",
}})
metadata = admin.list_topics(timeout=20)
print("brokers", sorted(f"{{b.host}}:{{b.port}}" for b in metadata.brokers.values()))
# No default route: an address off the machine is unreachable, and no packet is sent.
try:
    socket.create_connection(("1.1.1.1", 443), timeout=3)
    print("outside reachable")
except OSError as error:
    print("outside errno", error.errno)
"#
    );
    node.apply(&pod(namespace, "python", &["python3", "-c", &script]))?;
    node.wait_pod_phase(namespace, "python", "Succeeded", Duration::from_secs(60))?;
    let logs = node.kubectl_run(&["logs", "python", "-n", namespace])?;
    anyhow::ensure!(
        logs.contains(&format!("resolved {}", cluster_ip.trim()))
            && logs.contains(&format!("brokers ['{bootstrap}']"))
            && logs.contains(&format!("outside errno {}", libc::ENETUNREACH)),
        "confluent-kafka through Service kafka ({cluster_ip}) did not get metadata:\n{logs}"
    );
    Ok(())
}

/// A pod of the clients image that runs `command` once.
fn pod(namespace: &str, name: &str, command: &[&str]) -> String {
    let command = serde_json::to_string(command).expect("strings serialise");
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {namespace}}}
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
    )
}

fn assert_machine_clean() {
    let links = output(Command::new("ip").args(["-o", "link"]));
    assert!(
        !links.contains(host::BRIDGE) && !links.contains("veth"),
        "links left after the node stopped:\n{links}"
    );
    let mounts = output(&mut Command::new("mount"));
    let ours: Vec<&str> = mounts
        .lines()
        .filter(|line| line.contains("netns") || line.contains("node-runs"))
        .collect();
    assert!(
        ours.is_empty(),
        "mounts left after the node stopped:\n{ours:#?}"
    );
    let tables = output(Command::new("nft").args(["list", "tables"]));
    assert!(
        !tables.contains("kube-proxy"),
        "kube-proxy's nftables tables left:\n{tables}"
    );
    assert!(
        !std::path::Path::new("/sys/fs/cgroup/pids")
            .join(host::CGROUP_ROOT)
            .exists(),
        "the node's cgroups are left"
    );
}

fn output(command: &mut Command) -> String {
    let output = command.output().expect("running a host tool");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

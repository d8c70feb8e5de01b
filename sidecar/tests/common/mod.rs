//! Helpers for the proxy's end-to-end tests: the sidecar binary and the clients.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::sync::OnceLock;

use serde::Deserialize;
use streamward_e2e::clients;
use streamward_e2e::kafka::KafkaCluster;
pub use streamward_e2e::sidecar::Sidecar;

/// The one-node Kafka this test binary shares between its tests, started on first use.
pub fn kafka() -> &'static KafkaCluster {
    static KAFKA: OnceLock<KafkaCluster> = OnceLock::new();
    KAFKA.get_or_init(|| KafkaCluster::start(1).expect("starting Kafka"))
}

/// Creates `topic` directly on the broker with Kafka's own topic tool.
pub fn create_topic(kafka: &KafkaCluster, topic: &str, partitions: u32, replicas: u32) {
    let (ok, out) = kafka_tool(
        kafka,
        "org.apache.kafka.tools.TopicCommand",
        &[
            "--bootstrap-server",
            &kafka.bootstrap(),
            "--create",
            "--topic",
            topic,
            "--partitions",
            &partitions.to_string(),
            "--replication-factor",
            &replicas.to_string(),
        ],
    );
    assert!(ok, "{out}");
}

/// The orders team's StreamPolicy for `namespace`/`service_account`: orders.* is read/write,
/// groups orders-* readable, idempotent writes allowed, and deleting or altering any topic is
/// denied; everything else (payments.*) falls to the default deny. `extra_spec` is more of the
/// spec (indented by two spaces), such as guardrails or an audit level.
pub fn orders_policy(namespace: &str, service_account: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: streamward.io/v1alpha1
kind: StreamPolicy
metadata: {{name: orders-team, namespace: {namespace}}}
spec:
  subjects:
    serviceAccounts: [{service_account}]
{extra_spec}  rules:
  - name: no-destructive-admin
    resources: [{{resourceType: Topic, name: '*'}}]
    operations: [Delete, Alter, AlterConfigs]
    effect: Deny
  - name: orders-topics
    resources: [{{resourceType: Topic, name: orders., patternType: Prefixed}}]
    operations: [Read, Write, Create, Describe, DescribeConfigs]
    effect: Allow
  - name: orders-groups
    resources: [{{resourceType: Group, name: orders-, patternType: Prefixed}}]
    operations: [Read, Describe]
    effect: Allow
  - name: idempotence
    resources: [{{resourceType: Cluster, name: kafka-cluster}}]
    operations: [IdempotentWrite, Describe]
    effect: Allow
"
    )
}

/// A StreamPolicy `orders` in `namespace` letting every one of `service_accounts` produce, read,
/// create and describe the `orders.*` topics, read any group, and write idempotently: the
/// workloads share the data, and other rules (masking) decide what each sees.
pub fn shared_orders_policy(namespace: &str, service_accounts: &[&str]) -> String {
    format!(
        "apiVersion: streamward.io/v1alpha1
kind: StreamPolicy
metadata: {{name: orders, namespace: {namespace}}}
spec:
  subjects:
    serviceAccounts: [{}]
  rules:
  - name: orders-topics
    resources: [{{resourceType: Topic, name: orders., patternType: Prefixed}}]
    operations: [Read, Write, Create, Describe]
    effect: Allow
  - name: groups
    resources: [{{resourceType: Group, name: '*'}}]
    operations: [Read, Describe]
    effect: Allow
  - name: idempotence
    resources: [{{resourceType: Cluster, name: kafka-cluster}}]
    operations: [IdempotentWrite]
    effect: Allow
",
        service_accounts.join(", ")
    )
}

/// Starts the `streamward-sidecar` built for these tests in local mode.
pub fn sidecar(files: &[(&str, String)], namespace: &str, service_account: &str) -> Sidecar {
    Sidecar::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_streamward-sidecar")),
        files,
        namespace,
        service_account,
    )
    .expect("starting streamward-sidecar")
}

/// Starts the proxy with more flags (client authentication, for example).
pub fn sidecar_with_args(
    files: &[(&str, String)],
    namespace: &str,
    service_account: &str,
    args: &[&str],
) -> Sidecar {
    Sidecar::start_with_args(
        std::path::Path::new(env!("CARGO_BIN_EXE_streamward-sidecar")),
        files,
        namespace,
        service_account,
        args,
    )
    .expect("starting streamward-sidecar")
}

/// A StreamTarget for a Kafka bootstrap list.
pub fn target_yaml(namespace: &str, bootstrap: &str) -> String {
    let servers: Vec<String> = bootstrap.split(',').map(|s| format!("\"{s}\"")).collect();
    format!(
        "apiVersion: streamward.io/v1alpha1
kind: StreamTarget
metadata: {{name: kafka, namespace: {namespace}}}
spec:
  bootstrapServers: [{}]
",
        servers.join(", ")
    )
}

/// What `kafka_client.py produce` reports.
#[derive(Deserialize, Debug)]
pub struct ProduceReport {
    pub delivered: usize,
    pub errors: Vec<String>,
    /// Errors reported outside deliveries (failed authentication, for one).
    #[serde(default)]
    pub client_errors: Vec<String>,
}

/// What `kafka_client.py consume` reports.
#[derive(Deserialize, Debug)]
pub struct ConsumeReport {
    pub count: usize,
    pub values: Option<Vec<String>>,
    pub errors: Vec<String>,
    pub assignments: Vec<Vec<i32>>,
    /// Errors reported outside messages (failed authentication, for one).
    #[serde(default)]
    pub client_errors: Vec<String>,
}

/// Produces `count` records `prefix-<i>` with confluent-kafka.
pub fn produce(
    bootstrap: &str,
    topic: &str,
    prefix: &str,
    count: usize,
    extra: &[&str],
) -> ProduceReport {
    clients::report(
        clients::confluent_kafka()
            .unwrap()
            .args(["produce", "--bootstrap", bootstrap, "--topic", topic])
            .args([
                "--prefix",
                prefix,
                "--count",
                &count.to_string(),
                "--timeout",
                "20",
            ])
            .args(extra),
    )
    .unwrap()
}

/// Consumes with confluent-kafka.
pub fn consume(
    bootstrap: &str,
    topic: &str,
    group: &str,
    count: usize,
    extra: &[&str],
) -> ConsumeReport {
    clients::report(
        clients::confluent_kafka()
            .unwrap()
            .args([
                "consume",
                "--bootstrap",
                bootstrap,
                "--topic",
                topic,
                "--group",
                group,
            ])
            .args(["--count", &count.to_string(), "--print-values"])
            .args(extra),
    )
    .unwrap()
}

/// Runs one of Kafka's Java tools; returns (success, stdout + stderr).
pub fn kafka_tool(
    kafka: &streamward_e2e::kafka::KafkaCluster,
    class: &str,
    args: &[&str],
) -> (bool, String) {
    let output = kafka.dist().tool(class).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

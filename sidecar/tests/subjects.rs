//! Subjects the pod's author cannot choose: real Kafka, the real `streamward-sidecar`, and
//! confluent-kafka clients.
//!
//! A workload author sets their own pod's labels, so pod labels may only narrow a subject that
//! names service accounts, users or groups: a pod labelled like the exempt workload still reads
//! masked values, and a policy or exemption that selects by labels alone (an object stored
//! before the rule existed, compiled by an older operator) grants and exempts nothing.

mod common;

use std::path::Path;

use common::{Sidecar, consume, create_topic, kafka, produce, target_yaml};
use streamward_api::compile::{self, Inputs};
use streamward_api::config::{DEFAULT_PLACEHOLDER, ProxyConfig, Subjects, WorkloadIdentity};
use streamward_e2e::unique_name;

const NS: &str = "shop";
/// The workload whose consumers see masked records.
const APP: &str = "orders-app";
/// The workload the masking rule exempts, when its pod carries `role: billing`.
const BILLING: &str = "billing-app";
/// What the produced values carry, and the detector finds.
const EMAIL: &str = "ann@example.com";

/// Emails in `orders.*` values are masked on consume, except for billing's pods labelled
/// `role: billing`.
fn masking_yaml() -> String {
    format!(
        "apiVersion: streamward.io/v1alpha1
kind: MaskingRule
metadata: {{name: orders-emails, namespace: {NS}}}
spec:
  topics: [{{name: orders., patternType: Prefixed}}]
  direction: Consume
  format: Text
  detectors:
  - type: Email
  exemptSubjects:
    serviceAccounts: [{BILLING}]
    podSelector: {{matchLabels: {{role: billing}}}}
"
    )
}

/// A downward-API labels file (`key="value"` per line) in `dir`.
fn labels_file(dir: &Path, name: &str, labels: &[(&str, &str)]) -> String {
    let path = dir.join(name);
    let text: String = labels
        .iter()
        .map(|(key, value)| format!("{key}=\"{value}\"\n"))
        .collect();
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Produces `count` values carrying [`EMAIL`] straight to the broker; returns them.
fn produce_raw(topic: &str, count: usize) -> Vec<String> {
    let prefix = format!("mail {EMAIL} order");
    let report = produce(&kafka().bootstrap(), topic, &prefix, count, &[]);
    assert_eq!(report.delivered, count, "{report:?}");
    (0..count).map(|i| format!("{prefix}-{i}")).collect()
}

/// What `proxy` delivers to a consumer group reading all of `topic`.
fn read_through(proxy: &Sidecar, topic: &str, count: usize) -> Vec<String> {
    let report = consume(&proxy.bootstrap, topic, &unique_name("g"), count, &[]);
    assert_eq!(report.errors, Vec::<String>::new(), "{}", proxy.log());
    let values = report.values.unwrap_or_default();
    assert_eq!(values.len(), count, "{}", proxy.log());
    values
}

fn masked(raw: &[String]) -> Vec<String> {
    raw.iter()
        .map(|value| value.replace(EMAIL, DEFAULT_PLACEHOLDER))
        .collect()
}

#[test]
fn a_pod_labelled_like_the_exempt_workload_still_reads_masked_values() {
    let topic = unique_name("orders.labels");
    create_topic(kafka(), &topic, 1, 1);
    let raw = produce_raw(&topic, 5);

    let dir = tempfile::tempdir().unwrap();
    let labelled = labels_file(dir.path(), "billing", &[("role", "billing"), ("app", "x")]);
    let unlabelled = labels_file(dir.path(), "none", &[("app", "x")]);
    let files = [
        ("target.yaml", target_yaml(NS, &kafka().bootstrap())),
        (
            "policy.yaml",
            common::shared_orders_policy(NS, &[APP, BILLING]),
        ),
        ("masking.yaml", masking_yaml()),
    ];
    let start = |service_account: &str, labels: &str| {
        common::sidecar_with_args(&files, NS, service_account, &["--pod-labels", labels])
    };

    // The attack: the orders app's author labels its pod like billing's.
    let app = start(APP, &labelled);
    assert_eq!(read_through(&app, &topic, raw.len()), masked(&raw));

    // Billing's own pod, labelled, reads raw; the label narrows billing's exemption, so
    // billing's other pods read masked.
    let billing = start(BILLING, &labelled);
    assert_eq!(read_through(&billing, &topic, raw.len()), raw);
    let billing_batch = start(BILLING, &unlabelled);
    assert_eq!(
        read_through(&billing_batch, &topic, raw.len()),
        masked(&raw)
    );
}

/// The config an operator before this rule compiled for the orders app from a policy and an
/// exemption that select by labels alone: `ledger.*` granted to pods labelled `role: billing`,
/// and `orders.*` unmasked for them.
fn label_only_config() -> ProxyConfig {
    let ledger_policy = format!(
        "apiVersion: streamward.io/v1alpha1
kind: StreamPolicy
metadata: {{name: labelled-ledger, namespace: {NS}}}
spec:
  subjects: {{users: [placeholder]}}
  rules:
  - name: ledger
    resources: [{{resourceType: Topic, name: ledger., patternType: Prefixed}}]
    operations: [Write, Describe]
    effect: Allow
"
    );
    let mut inputs = Inputs::default();
    for text in [
        target_yaml(NS, &kafka().bootstrap()),
        common::shared_orders_policy(NS, &[APP, BILLING]),
        ledger_policy,
        masking_yaml().replace(BILLING, "placeholder"),
    ] {
        inputs.extend(compile::parse_manifests(&text).unwrap());
    }
    let identity = WorkloadIdentity {
        namespace: NS.into(),
        service_account: APP.into(),
    };
    let mut config = compile::compile(&inputs, &identity).unwrap();
    let by_label = Subjects {
        pod_labels: Some([("role".to_owned(), "billing".to_owned())].into()),
        ..Subjects::default()
    };
    let ledger = config
        .policies
        .iter_mut()
        .find(|p| p.name == "labelled-ledger")
        .unwrap();
    ledger.subjects = by_label.clone();
    assert_eq!(config.masking.len(), 1);
    config.masking[0].exempt = by_label;
    config.hash = config.content_hash();
    config
}

#[test]
fn a_stored_label_only_policy_or_exemption_grants_and_exempts_nothing() {
    let orders = unique_name("orders.stored");
    let ledger = unique_name("ledger.stored");
    create_topic(kafka(), &orders, 1, 1);
    create_topic(kafka(), &ledger, 1, 1);
    let raw = produce_raw(&orders, 3);

    let dir = tempfile::tempdir().unwrap();
    let labelled = labels_file(dir.path(), "billing", &[("role", "billing")]);
    let config_file = dir.path().join("config.json");
    std::fs::write(
        &config_file,
        serde_json::to_string(&label_only_config()).unwrap(),
    )
    .unwrap();
    let app = Sidecar::start_with_source(
        Path::new(env!("CARGO_BIN_EXE_streamward-sidecar")),
        NS,
        APP,
        &[
            "--config",
            config_file.to_str().unwrap(),
            "--pod-labels",
            &labelled,
        ],
        &[],
    )
    .unwrap();

    // The label-only exemption exempts nothing.
    assert_eq!(read_through(&app, &orders, raw.len()), masked(&raw));

    // The label-only policy grants nothing: the write falls to the default deny.
    let report = produce(&app.bootstrap, &ledger, "entry", 1, &["--timeout", "10"]);
    assert_eq!(report.delivered, 0, "{report:?}");
    assert!(
        report.errors.iter().chain(&report.client_errors).any(|e| {
            e.contains("TOPIC_AUTHORIZATION_FAILED") || e.contains("Topic authorization failed")
        }),
        "{report:?}\n{}",
        app.log()
    );
}

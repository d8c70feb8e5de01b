//! The proxy in front of a real three-node Kafka cluster: partition leaders on different
//! brokers, a consumer group that rebalances, and a partition leader that dies.

mod common;

use std::time::Duration;

use common::{consume, create_topic, produce, target_yaml};
use streamward_e2e::kafka::KafkaCluster;
use streamward_e2e::unique_name;

const NS: &str = "team-b";
const SA: &str = "events-app";

fn policy_yaml() -> String {
    format!(
        "apiVersion: streamward.io/v1alpha1
kind: StreamPolicy
metadata: {{name: events, namespace: {NS}}}
spec:
  subjects:
    serviceAccounts: [{SA}]
  rules:
  - name: events
    resources: [{{resourceType: Topic, name: events., patternType: Prefixed}}]
    operations: [Read, Write, Describe]
    effect: Allow
  - name: groups
    resources: [{{resourceType: Group, name: '*'}}]
    operations: [Read, Describe]
    effect: Allow
  - name: idempotence
    resources: [{{resourceType: Cluster, name: kafka-cluster}}]
    operations: [IdempotentWrite]
    effect: Allow
"
    )
}

#[test]
fn clients_work_through_the_proxy_across_three_brokers_and_survive_a_leader_crash() {
    let mut kafka = KafkaCluster::start(3).expect("starting a three-node Kafka");
    let proxy = common::sidecar(
        &[
            ("target.yaml", target_yaml(NS, &kafka.bootstrap())),
            ("policy.yaml", policy_yaml()),
        ],
        NS,
        SA,
    );

    // Six partitions, one replica each: the leaders are spread over all three brokers, so the
    // clients must reach every broker, which they can only do through the proxy's listeners.
    let spread = unique_name("events.spread");
    create_topic(&kafka, &spread, 6, 1);
    let leaders: std::collections::BTreeSet<i32> = (0..6)
        .map(|p| kafka.partition_leader(&spread, p).unwrap())
        .collect();
    assert_eq!(leaders.len(), 3, "leaders {leaders:?}");
    let report = produce(&proxy.bootstrap, &spread, "s", 3000, &[]);
    assert_eq!(
        (report.delivered, report.errors.len()),
        (3000, 0),
        "{report:?}\n{}",
        proxy.log()
    );
    let consumed = consume(&proxy.bootstrap, &spread, &unique_name("g"), 3000, &[]);
    assert_eq!(consumed.count, 3000, "{consumed:?}");
    let mut values = consumed.values.unwrap();
    values.sort();
    let mut expected: Vec<String> = (0..3000).map(|i| format!("s-{i}")).collect();
    expected.sort();
    assert_eq!(values, expected);

    // A group of two: the first member owns all six partitions, shares them when the second
    // joins, and gets all six back when the second leaves.
    let group = unique_name("group");
    let bootstrap = proxy.bootstrap.clone();
    let (topic_a, group_a) = (spread.clone(), group.clone());
    let first = std::thread::spawn(move || {
        consume(
            &bootstrap,
            &topic_a,
            &group_a,
            usize::MAX >> 1,
            &["--stay", "--timeout", "35"],
        )
    });
    // Let the first member own everything before the second arrives.
    std::thread::sleep(Duration::from_secs(8));
    let second = consume(
        &proxy.bootstrap,
        &spread,
        &group,
        usize::MAX >> 1,
        &["--stay", "--timeout", "12"],
    );
    let first = first.join().unwrap();
    assert!(
        second.errors.is_empty() && first.errors.is_empty(),
        "{first:?} {second:?}"
    );
    assert!(
        second
            .assignments
            .iter()
            .any(|a| !a.is_empty() && a.len() < 6),
        "the second member never got a share: {second:?}"
    );
    let all: Vec<i32> = (0..6).collect();
    assert_eq!(first.assignments.first(), Some(&all), "{first:?}");
    assert!(
        first.assignments.iter().any(|a| a.len() < 6),
        "the first member never gave partitions up: {first:?}"
    );
    assert_eq!(
        first.assignments.last(),
        Some(&all),
        "the first member did not get everything back: {first:?}"
    );

    // A replicated topic loses its leader: producers and consumers carry on through the proxy.
    let replicated = unique_name("events.failover");
    create_topic(&kafka, &replicated, 1, 3);
    let before = produce(
        &proxy.bootstrap,
        &replicated,
        "before",
        500,
        &["--config", "enable.idempotence=true"],
    );
    assert_eq!(before.delivered, 500, "{before:?}");
    let leader = kafka.partition_leader(&replicated, 0).unwrap();
    kafka.kill_node(leader).unwrap();
    let new_leader = kafka.leader_change(&replicated, 0, leader).unwrap();
    assert_ne!(new_leader, leader);
    let after = produce(
        &proxy.bootstrap,
        &replicated,
        "after",
        500,
        &["--config", "enable.idempotence=true"],
    );
    assert_eq!(after.delivered, 500, "{after:?}\n{}", proxy.log());
    let consumed = consume(&proxy.bootstrap, &replicated, &unique_name("g"), 1000, &[]);
    assert_eq!(consumed.count, 1000, "{consumed:?}\n{}", proxy.log());
}

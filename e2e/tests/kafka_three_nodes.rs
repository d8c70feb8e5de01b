//! Smoke test: a real three-node KRaft cluster survives the loss of a partition leader.

use serde::Deserialize;
use streamward_e2e::kafka::KafkaCluster;
use streamward_e2e::{clients, process, unique_name};

#[derive(Deserialize, Debug)]
struct ProduceReport {
    delivered: usize,
    errors: Vec<String>,
}

#[derive(Deserialize, Debug)]
struct ConsumeReport {
    count: usize,
    values: Option<Vec<String>>,
}

fn produce(bootstrap: &str, topic: &str, prefix: &str, count: usize) -> ProduceReport {
    clients::report(
        clients::confluent_kafka()
            .unwrap()
            .args([
                "produce",
                "--bootstrap",
                bootstrap,
                "--topic",
                topic,
                "--acks",
                "all",
            ])
            .args(["--prefix", prefix, "--count", &count.to_string()])
            // Retries across the failover must neither duplicate nor reorder.
            .args(["--config", "enable.idempotence=true"]),
    )
    .unwrap()
}

#[test]
fn replicated_topic_keeps_serving_after_its_leader_is_killed() {
    let mut kafka = KafkaCluster::start(3).expect("starting a three-node Kafka");
    let topic = unique_name("failover");
    process::run(
        "kafka-topics --create",
        kafka
            .dist()
            .tool("org.apache.kafka.tools.TopicCommand")
            .args([
                "--bootstrap-server",
                &kafka.bootstrap(),
                "--create",
                "--topic",
                &topic,
            ])
            .args(["--partitions", "1", "--replication-factor", "3"])
            .args(["--config", "min.insync.replicas=2"]),
    )
    .unwrap();

    let before = produce(&kafka.bootstrap(), &topic, "before", 1000);
    assert_eq!(
        (before.delivered, before.errors.len()),
        (1000, 0),
        "{before:?}"
    );

    let leader = kafka.partition_leader(&topic, 0).unwrap();
    kafka.kill_node(leader).unwrap();
    let new_leader = kafka.leader_change(&topic, 0, leader).unwrap();
    assert_ne!(new_leader, leader);

    // Clients bootstrap from the survivors, as they would after a broker is lost.
    let after = produce(&kafka.bootstrap(), &topic, "after", 1000);
    assert_eq!(after.delivered, 1000, "{after:?}\n{}", kafka.dump());

    let report: ConsumeReport = clients::report(
        clients::confluent_kafka()
            .unwrap()
            .args([
                "consume",
                "--bootstrap",
                &kafka.bootstrap(),
                "--topic",
                &topic,
            ])
            .args([
                "--count",
                "2000",
                "--print-values",
                "--group",
                &unique_name("g"),
            ]),
    )
    .unwrap();
    assert_eq!(report.count, 2000, "{}", kafka.dump());
    let values = report.values.unwrap();
    let expected: Vec<String> = (0..1000)
        .map(|i| format!("before-{i}"))
        .chain((0..1000).map(|i| format!("after-{i}")))
        .collect();
    assert_eq!(values, expected);
}

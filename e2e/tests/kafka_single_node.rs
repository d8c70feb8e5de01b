//! Smoke tests: a real single-node Apache Kafka with real clients.

use std::io::Write;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use serde::Deserialize;
use streamward_e2e::kafka::{KafkaCluster, wire};
use streamward_e2e::{clients, process, unique_name, wait_for};

fn kafka() -> &'static KafkaCluster {
    static KAFKA: OnceLock<KafkaCluster> = OnceLock::new();
    KAFKA.get_or_init(|| KafkaCluster::start(1).expect("starting a single-node Kafka"))
}

#[derive(Deserialize, Debug)]
struct ConsumeReport {
    count: usize,
    values: Option<Vec<String>>,
    errors: Vec<String>,
}

#[test]
fn kcat_produces_10000_records_that_confluent_kafka_consumes_back_in_order() {
    let kafka = kafka();
    let topic = unique_name("smoke");
    let records: Vec<String> = (0..10_000)
        .map(|i| format!("{topic}-record-{i:05}"))
        .collect();

    let mut kcat = clients::kcat()
        .unwrap()
        .args([
            "-P",
            "-b",
            &kafka.bootstrap(),
            "-t",
            &topic,
            "-X",
            "acks=all",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = kcat.stdin.take().unwrap();
    stdin
        .write_all((records.join("\n") + "\n").as_bytes())
        .unwrap();
    drop(stdin);
    let output = kcat.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "kcat failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );

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
                "10000",
                "--print-values",
                "--group",
                &unique_name("g"),
            ]),
    )
    .unwrap();
    assert_eq!(report.errors, Vec::<String>::new());
    assert_eq!(report.count, 10_000);
    // One partition: the consumer sees exactly what kcat wrote, in order.
    assert_eq!(report.values.unwrap(), records);
}

#[test]
fn kafka_topic_tool_creates_describes_and_deletes_a_topic() {
    let kafka = kafka();
    let topic = unique_name("tool");
    let topics = |args: &[&str]| {
        let mut command = kafka.dist().tool("org.apache.kafka.tools.TopicCommand");
        command
            .args(["--bootstrap-server", &kafka.bootstrap()])
            .args(args);
        process::run("kafka-topics", &mut command)
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };

    topics(&[
        "--create",
        "--topic",
        &topic,
        "--partitions",
        "3",
        "--replication-factor",
        "1",
    ])
    .unwrap();
    let described = topics(&["--describe", "--topic", &topic]).unwrap();
    assert!(
        described.contains(&format!("Topic: {topic}")),
        "{described}"
    );
    assert!(described.contains("PartitionCount: 3"), "{described}");
    assert_eq!(topic_partitions(kafka, &topic), Some(3));

    topics(&["--delete", "--topic", &topic]).unwrap();
    // Deletion completes asynchronously on the controller.
    wait_for("the topic to disappear", Duration::from_secs(30), || {
        Ok(topic_partitions(kafka, &topic).is_none().then_some(()))
    })
    .unwrap();
    let listed = topics(&["--list"]).unwrap();
    assert!(!listed.lines().any(|l| l == topic), "{listed}");
}

fn topic_partitions(kafka: &KafkaCluster, topic: &str) -> Option<usize> {
    let metadata = wire::metadata(&kafka.nodes()[0].addr()).expect("metadata");
    metadata
        .topics
        .iter()
        .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic) && t.error_code == 0)
        .map(|t| t.partitions.len())
}

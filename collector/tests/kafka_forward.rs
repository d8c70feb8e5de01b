//! Forwarding to a real Kafka: every stored event reaches the audit topic, keyed by workload,
//! once, and a restarted collector resumes where Kafka last acknowledged.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{About, Collector, event};
use streamward_e2e::kafka::KafkaCluster;
use streamward_e2e::process::run;
use streamward_e2e::{clients, net, unique_name, wait_for};

fn forwarded(collector: &Collector) -> f64 {
    net::http_get(&collector.addr, "/metrics")
        .ok()
        .and_then(|(_, text)| {
            text.lines()
                .find(|l| l.starts_with("streamward_collector_events_forwarded_total "))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0.0)
}

/// Every record of the topic as (key, CloudEvent).
fn consume(kafka: &KafkaCluster, topic: &str) -> Vec<(String, serde_json::Value)> {
    let output = clients::kcat()
        .unwrap()
        .args([
            "-C",
            "-b",
            &kafka.bootstrap(),
            "-t",
            topic,
            "-o",
            "beginning",
            "-e",
            "-q",
            "-f",
            "%k\t%s\n",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let (key, value) = line.split_once('\t').unwrap();
            (key.to_string(), serde_json::from_str(value).unwrap())
        })
        .collect()
}

#[test]
fn every_stored_event_reaches_the_kafka_audit_topic_once() {
    let kafka = KafkaCluster::start(1).unwrap();
    let topic = unique_name("streamward-audit");
    run(
        "create the audit topic",
        kafka
            .dist()
            .tool("org.apache.kafka.tools.TopicCommand")
            .args([
                "--bootstrap-server",
                &kafka.bootstrap(),
                "--create",
                "--topic",
                &topic,
                "--partitions",
                "3",
                "--replication-factor",
                "1",
            ]),
    )
    .unwrap();

    let args = [
        "--kafka-bootstrap",
        &kafka.bootstrap(),
        "--kafka-topic",
        &topic,
    ];
    let mut collector = Collector::start(&args);
    let billing = About {
        service_account: "billing",
        ..About::default()
    };
    let first: Vec<_> = (1..=20)
        .map(|n| event("a", n, &About::default()))
        .chain((1..=10).map(|n| event("b", n, &billing)))
        .collect();
    collector.send(&first);
    collector.send(&first[..5]); // duplicates: stored once, forwarded once
    wait_for("30 events forwarded", Duration::from_secs(60), || {
        Ok((forwarded(&collector) >= 30.0).then_some(()))
    })
    .unwrap();
    collector.stop();

    // A restart resumes from the cursor: only the new events go out.
    let collector = Collector::start_in(&collector.dir.clone(), &args);
    collector.send(&[event("a", 21, &About::default())]);
    wait_for("the new event forwarded", Duration::from_secs(60), || {
        Ok((forwarded(&collector) >= 1.0).then_some(()))
    })
    .unwrap();

    let records = consume(&kafka, &topic);
    let ids: Vec<String> = records
        .iter()
        .map(|(_, e)| e["id"].as_str().unwrap().to_string())
        .collect();
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(ids.len(), 31, "each event once: {ids:?}");
    assert_eq!(unique.len(), 31);
    assert!(unique.contains(&"a:21".to_string()));
    for (key, event) in &records {
        assert_eq!(key, event["source"].as_str().unwrap(), "keyed by workload");
        assert_eq!(event["specversion"], "1.0");
    }
    // One workload's events keep their order (one partition per key).
    let a: Vec<u64> = records
        .iter()
        .filter(|(_, e)| e["data"]["sessionId"] == "a")
        .map(|(_, e)| e["data"]["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(a, (1..=21).collect::<Vec<_>>());
}

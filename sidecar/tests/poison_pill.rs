//! A poison-pill batch: a few kilobytes of zstd in a masked topic that decompress to nearly the
//! per-batch cap. Real Kafka, the real proxy in a cgroup with the memory limit the operator
//! injects (128 MiB), a librdkafka consumer. The proxy must answer that partition with an error
//! — counted, logged and audited — and keep serving: the other partition of the topic and an
//! unmasked topic, through the same proxy, without being OOM-killed.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::{consume, create_topic, kafka, orders_policy, target_yaml};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ProduceRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use streamward_api::audit::AuditEvent;
use streamward_e2e::cgroup::MemoryCgroup;
use streamward_e2e::kafka::wire::Connection;
use streamward_e2e::{cache, unique_name, workspace_binary};

const NS: &str = "shop";
const SA: &str = "orders-app";
const TOKEN: &str = "poison-pill-e2e-token-0123456789";
/// The memory limit the operator gives the injected proxy (`memoryLimit`, 128Mi).
const POD_LIMIT: u64 = 128 << 20;

fn collector_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        workspace_binary("streamward-collector", "streamward-collector")
            .expect("building streamward-collector")
    })
}

fn masking_yaml() -> String {
    format!(
        "apiVersion: streamward.io/v1alpha1
kind: MaskingRule
metadata: {{name: orders-pii, namespace: {NS}}}
spec:
  topics: [{{name: orders.bomb., patternType: Prefixed}}]
  direction: Consume
  fields: [{{path: email}}]
"
    )
}

/// `count` records whose values are JSON with an email (which the rule masks, so every record
/// is rewritten) and `pad` bytes of padding, in one batch compressed with `compression`.
fn batch(count: usize, pad: usize, compression: Compression) -> Bytes {
    let value = Bytes::from(format!(
        "{{\"email\":\"ann@example.com\",\"pad\":\"{}\"}}",
        "x".repeat(pad)
    ));
    let now = jiff::Timestamp::now().as_millisecond();
    let records: Vec<Record> = (0..count)
        .map(|i| Record {
            transactional: false,
            control: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // kafka-protocol starts a new batch where offset − sequence changes: this keeps
            // one batch, whose base sequence is −1 (no producer id).
            sequence: i as i32 - 1,
            timestamp: now,
            key: None,
            value: Some(value.clone()),
            headers: Default::default(),
            delete_horizon: false,
        })
        .collect();
    let mut out = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut out,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .unwrap();
    out.freeze()
}

/// Produces `records` to one partition of `topic` on the broker itself, as any client with
/// Write on the topic can (through its own proxy when the rule masks on consume only).
fn produce_to(topic: &str, partition: i32, records: Bytes) {
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(20_000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(partition)
                        .with_records(Some(records)),
                ]),
        ]);
    let mut connection = Connection::connect(&kafka().bootstrap()).unwrap();
    let response = connection.send(&request, 9).unwrap();
    let answer = &response.responses[0].partition_responses[0];
    assert_eq!(
        answer.error_code, 0,
        "producing to {topic}-{partition}: {:?} {:?}",
        answer.error_message, answer.record_errors
    );
}

#[test]
fn a_poison_pill_batch_is_refused_for_its_partition_and_the_proxy_survives() {
    let bomb_topic = unique_name("orders.bomb.t");
    let plain_topic = unique_name("orders.plain");
    create_topic(kafka(), &bomb_topic, 2, 1);
    create_topic(kafka(), &plain_topic, 1, 1);
    // ~60 MiB of records in a few kilobytes of zstd: under the 64 MiB per-batch cap.
    let bomb = batch(1900, 32 << 10, Compression::Zstd);
    assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
    eprintln!("the poison pill: {} bytes of zstd", bomb.len());
    produce_to(&bomb_topic, 0, bomb);
    produce_to(&bomb_topic, 1, batch(5, 10, Compression::Zstd));
    produce_to(&plain_topic, 0, batch(5, 10, Compression::Gzip));

    let run = cache::run_dir("poison-pill").unwrap();
    let collector = streamward_e2e::collector::Collector::start(
        collector_binary(),
        run.path(),
        TOKEN,
        &format!("{NS}/{SA}"),
    )
    .unwrap();
    std::fs::write(run.path().join("token"), format!("{TOKEN}\n")).unwrap();
    let cgroup = MemoryCgroup::create("poison-pill", POD_LIMIT).unwrap();
    let mut proxy = common::sidecar_with_args(
        &[
            ("target.yaml", target_yaml(NS, &kafka().bootstrap())),
            ("policy.yaml", orders_policy(NS, SA, "")),
            ("masking.yaml", masking_yaml()),
        ],
        NS,
        SA,
        &[
            "--audit-url",
            &format!("http://{}", collector.addr()),
            "--audit-token-file",
            run.path().join("token").to_str().unwrap(),
            "--audit-spool",
            run.path().join("spool").to_str().unwrap(),
        ],
    );
    cgroup.add(proxy.pid()).unwrap();

    // The consumer reads partition 1 masked and hears an error for partition 0.
    let consumed = consume(
        &proxy.bootstrap,
        &bomb_topic,
        &unique_name("orders-g"),
        5,
        &["--stay", "--timeout", "15"],
    );
    let oom_kills = cgroup.oom_kills().unwrap();
    let peak = cgroup.peak_bytes().unwrap();
    eprintln!("proxy peak memory in its cgroup: {} MiB", peak >> 20);
    assert_eq!(oom_kills, 0, "the proxy was OOM-killed\n{}", proxy.log());
    assert!(proxy.is_running(), "{}", proxy.log());
    assert_eq!(consumed.count, 5, "{consumed:?}\n{}", proxy.log());
    let values = consumed.values.as_ref().unwrap();
    assert!(
        values.iter().all(|v| v.contains("\"email\":\"****\"")),
        "{values:?}"
    );
    // librdkafka names CORRUPT_MESSAGE (code 2) INVALID_MSG; it reports the error and fetches
    // the partition again after a backoff, never skipping the batch.
    eprintln!("the consumer's errors: {:?}", consumed.errors);
    assert!(
        consumed.errors.iter().any(|e| e == "INVALID_MSG"),
        "no partition error: {consumed:?}"
    );

    // The same proxy still serves an unmasked topic.
    let plain = consume(
        &proxy.bootstrap,
        &plain_topic,
        &unique_name("orders-g"),
        5,
        &["--timeout", "30"],
    );
    assert_eq!(plain.count, 5, "{plain:?}");
    assert_eq!(cgroup.oom_kills().unwrap(), 0);

    // Counted, logged, audited.
    assert!(
        proxy
            .metric("streamward_sidecar_masking_failures_total{flow=\"Consume\",reason=\"Memory\"}")
            .unwrap()
            >= 1.0,
        "{}",
        proxy.log()
    );
    assert!(proxy.log().contains("memory"), "{}", proxy.log());
    let events = streamward_e2e::wait_for(
        "an audit event naming the withheld partition",
        Duration::from_secs(60),
        || {
            let out = std::process::Command::new(collector_binary())
                .arg("query")
                .arg("--data")
                .arg(collector.data())
                .args([
                    "--namespace",
                    NS,
                    "--format",
                    "ndjson",
                    "--api-key",
                    "Fetch",
                ])
                .output()?;
            let events: Vec<AuditEvent> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            Ok(events
                .iter()
                .any(|e| {
                    e.record().is_some_and(|r| {
                        r.decision
                            .reason
                            .as_deref()
                            .is_some_and(|reason| reason.contains(&format!("{bomb_topic}-0")))
                    })
                })
                .then_some(events))
        },
    )
    .unwrap();
    let withheld = events
        .iter()
        .filter_map(AuditEvent::record)
        .find(|r| {
            r.decision
                .reason
                .as_deref()
                .is_some_and(|reason| reason.contains(&format!("{bomb_topic}-0")))
        })
        .unwrap();
    assert_eq!(withheld.decision.effect, "Partial");
    drop(proxy);
    drop(cgroup);
}

//! What the benchmarks share: the policy and masking rule the proxies serve, Kafka's own
//! performance tools driven and read, a probe that times single Produce round trips in
//! microseconds, and a process's CPU time and peak memory. [`compare`] is `just bench`: every
//! path side by side.

pub mod compare;
pub mod report;

use std::path::Path;

use anyhow::{Context, Result, ensure};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::{CreateTopicsRequest, DeleteTopicsRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::kafka::KafkaDist;
use crate::kafka::wire::Connection;
use crate::process;

/// The benchmarks' StreamPolicy for service account `bench/bench`: the `bench.` topics may be
/// written, read, created and described, any group read, and producers may be idempotent.
/// `audit_level` (`Metadata`, `PayloadDigest`, ...) only matters to a proxy that audits.
pub fn policy(audit_level: &str) -> String {
    format!(
        "apiVersion: streamward.io/v1alpha1
kind: StreamPolicy
metadata: {{name: bench, namespace: bench}}
spec:
  subjects:
    serviceAccounts: [bench]
  auditLevel: {audit_level}
  rules:
  - name: bench-topics
    resources: [{{resourceType: Topic, name: bench., patternType: Prefixed}}]
    operations: [Read, Write, Create, Describe]
    effect: Allow
  - name: bench-groups
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

/// The topics [`MASKING`] covers: those whose names start with this.
pub const MASKED_PREFIX: &str = "bench.masked.";

/// The rule of the engine's criterion benchmark (`sidecar/benches/mask.rs`) on consume, for the
/// topics named `bench.masked.*`: field paths, an HMAC pseudonym and detectors over every
/// string of [`crate::data::order`] records.
pub const MASKING: &str = "apiVersion: streamward.io/v1alpha1
kind: MaskingRule
metadata: {name: orders-pii, namespace: bench}
spec:
  topics: [{name: bench.masked., patternType: Prefixed}]
  direction: Consume
  fields:
    - {path: customer.email, strategy: {type: Hmac, keySecretRef: {name: masking, key: key}}}
    - {path: customer.phone, strategy: {type: KeepLast, count: 4}}
    - {path: 'payment.card.number', strategy: {type: KeepLast, count: 4}}
    - {path: '..iban'}
  detectors:
    - {type: CreditCard, strategy: {type: KeepLast, count: 4}}
    - {type: Email}
    - {type: Phone}
---
apiVersion: v1
kind: Secret
metadata: {name: masking, namespace: bench}
stringData:
  key: 0123456789abcdef0123456789abcdef
";

/// What ProducerPerformance sends.
#[derive(Clone, Copy, Debug)]
pub enum Payload<'a> {
    /// Random values of this many bytes.
    Random(u64),
    /// Values drawn from the lines of this file.
    Lines(&'a Path),
}

/// One ProducerPerformance run: how many records of what, compressed how.
#[derive(Clone, Copy, Debug)]
pub struct Load<'a> {
    pub records: u64,
    pub payload: Payload<'a>,
    /// `compression.type`: none, gzip, snappy, lz4, zstd.
    pub compression: &'a str,
    /// Records per second, -1 for unthrottled.
    pub throughput: i64,
}

/// One ProducerPerformance summary.
#[derive(Debug)]
pub struct Produced {
    pub records_per_sec: f64,
    pub mb_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// One ConsumerPerformance summary.
pub struct Consumed {
    pub records_per_sec: f64,
    pub mb_per_sec: f64,
    /// MB read, as ConsumerPerformance counts them (keys and values).
    pub mb: f64,
}

/// The StreamTarget every benchmark's proxy points at: the broker at `bootstrap`, in the
/// benchmarks' namespace `bench`.
pub fn target(bootstrap: &str) -> String {
    format!(
        "apiVersion: streamward.io/v1alpha1\nkind: StreamTarget\nmetadata: {{name: kafka, namespace: bench}}\nspec:\n  bootstrapServers: [\"{bootstrap}\"]\n"
    )
}

/// Runs ProducerPerformance (acks=1) with random values of `size` bytes against `bootstrap`;
/// `throughput` -1 is unthrottled.
pub fn produce(
    dist: &KafkaDist,
    bootstrap: &str,
    topic: &str,
    records: u64,
    size: u64,
    throughput: i64,
) -> Result<Produced> {
    let load = Load {
        records,
        payload: Payload::Random(size),
        compression: "none",
        throughput,
    };
    produce_load(dist, bootstrap, topic, &load)
}

/// Runs ProducerPerformance (acks=1, batches of up to 256 KiB) as `load` says against
/// `bootstrap`; fails unless every record was sent.
pub fn produce_load(
    dist: &KafkaDist,
    bootstrap: &str,
    topic: &str,
    load: &Load,
) -> Result<Produced> {
    let mut command = dist.java("org.apache.kafka.tools.ProducerPerformance");
    command
        .args(["--topic", topic, "--num-records", &load.records.to_string()])
        .args(["--throughput", &load.throughput.to_string()]);
    match load.payload {
        Payload::Random(size) => command.args(["--record-size", &size.to_string()]),
        Payload::Lines(path) => command
            .args(["--payload-delimiter", "\n", "--payload-file"])
            .arg(path),
    };
    command.args([
        "--producer-props",
        &format!("bootstrap.servers={bootstrap}"),
        "acks=1",
        &format!("compression.type={}", load.compression),
        "linger.ms=5",
        "batch.size=262144",
    ]);
    let output = process::run("ProducerPerformance", &mut command)?;
    let text = String::from_utf8_lossy(&output.stdout);
    ensure!(
        text.contains(&format!("{} records sent", load.records)),
        "ProducerPerformance did not send {} records to {topic}:\n{text}",
        load.records
    );
    let summary = text
        .lines()
        .rev()
        .find(|l| l.contains("records sent"))
        .with_context(|| format!("no summary from ProducerPerformance:\n{text}"))?;
    // "N records sent, X records/sec (Y MB/sec), A ms avg latency, M ms max latency, P50 ms 50th, P95 ms 95th, P99 ms 99th, ..."
    let number_before = |marker: &str| -> Result<f64> {
        let at = summary
            .find(marker)
            .with_context(|| format!("no '{marker}' in: {summary}"))?;
        let head = summary[..at].trim_end();
        let token = head.rsplit([' ', '(']).next().unwrap_or_default();
        token
            .parse()
            .with_context(|| format!("reading '{token}' before '{marker}'"))
    };
    Ok(Produced {
        records_per_sec: number_before("records/sec")?,
        mb_per_sec: number_before("MB/sec")?,
        p50_ms: number_before("ms 50th")?,
        p99_ms: number_before("ms 99th")?,
    })
}

/// Runs ConsumerPerformance against `bootstrap` in a new consumer group, so each run reads
/// `topic` from the start; fails unless it read all `records`.
pub fn consume(dist: &KafkaDist, bootstrap: &str, topic: &str, records: u64) -> Result<Consumed> {
    let output = process::run(
        "ConsumerPerformance",
        dist.java("org.apache.kafka.tools.ConsumerPerformance")
            .args(["--bootstrap-server", bootstrap, "--topic", topic])
            .args([
                "--messages",
                &records.to_string(),
                "--group",
                &crate::unique_name(&format!("{topic}-g")),
            ])
            .args(["--timeout", "60000"]),
    )?;
    let text = String::from_utf8_lossy(&output.stdout);
    // A CSV header then one row: start, end, MB, MB.sec, nMsg, nMsg.sec, ...
    let row = text
        .lines()
        .rev()
        .find(|l| l.split(',').count() >= 6 && !l.contains("start.time"))
        .with_context(|| format!("no summary from ConsumerPerformance:\n{text}"))?;
    let fields: Vec<&str> = row.split(',').map(str::trim).collect();
    let read: u64 = fields[4].parse()?;
    anyhow::ensure!(
        read >= records,
        "ConsumerPerformance read {read} of {records} records of {topic} via {bootstrap}"
    );
    Ok(Consumed {
        mb: fields[2].parse()?,
        mb_per_sec: fields[3].parse()?,
        records_per_sec: fields[5].parse()?,
    })
}

/// The peak resident memory of process `pid`, in KiB.
pub fn peak_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/<pid>/status")
}

/// Times `requests` single-record Produce requests (acks=1) sent one after another on one
/// connection to `bootstrap`, in microseconds.
pub fn probe(bootstrap: &str, topic: &str, requests: usize, size: usize) -> Result<Vec<u64>> {
    use std::io::{Read, Write};
    use std::time::Instant;

    use bytes::{BufMut, Bytes, BytesMut};
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{
        ApiKey, ProduceRequest, ProduceResponse, RequestHeader, ResponseHeader, TopicName,
    };
    use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    const VERSION: i16 = 9;
    let record = Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp: 0,
        key: None,
        value: Some(Bytes::from(vec![b'x'; size])),
        headers: Default::default(),
    };
    let mut batch = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut batch,
        [&record],
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )?;
    let request = ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(5_000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(batch.freeze())),
                ]),
        ]);
    let mut stream = std::net::TcpStream::connect(bootstrap)?;
    stream.set_nodelay(true)?;
    let mut times = Vec::with_capacity(requests);
    let mut frame = BytesMut::new();
    let mut response = Vec::new();
    for correlation_id in 0..requests as i32 {
        frame.clear();
        frame.put_i32(0);
        RequestHeader::default()
            .with_request_api_key(ApiKey::Produce as i16)
            .with_request_api_version(VERSION)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("bench-probe")))
            .encode(&mut frame, ApiKey::Produce.request_header_version(VERSION))?;
        request.encode(&mut frame, VERSION)?;
        let length = (frame.len() - 4) as i32;
        frame[..4].copy_from_slice(&length.to_be_bytes());
        let started = Instant::now();
        stream.write_all(&frame)?;
        let mut size = [0u8; 4];
        stream.read_exact(&mut size)?;
        response.resize(i32::from_be_bytes(size) as usize, 0);
        stream.read_exact(&mut response)?;
        times.push(started.elapsed().as_micros() as u64);
        anyhow::ensure!(
            response.get(..4) == Some(&correlation_id.to_be_bytes()[..]),
            "the probe's response {correlation_id} came back out of order"
        );
        if correlation_id == 0 {
            let mut body = Bytes::copy_from_slice(&response);
            ResponseHeader::decode(&mut body, ApiKey::Produce.response_header_version(VERSION))?;
            let answer = ProduceResponse::decode(&mut body, VERSION)?;
            let codes: Vec<i16> = answer
                .responses
                .iter()
                .flat_map(|t| t.partition_responses.iter().map(|p| p.error_code))
                .collect();
            anyhow::ensure!(
                codes == [0],
                "the probe's produce failed: error codes {codes:?}"
            );
        }
    }
    Ok(times)
}

/// User plus system CPU time of `pid` so far, in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; the fields after its ')' are fixed.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("no ')' in /proc/<pid>/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    ensure!(fields.len() > 12, "/proc/{pid}/stat is too short");
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf reads a constant of the running system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ensure!(per_second > 0, "sysconf(_SC_CLK_TCK) failed");
    Ok(ticks as f64 / per_second as f64)
}

/// Creates `topic` with one partition (replication 1) through the broker at `bootstrap`.
pub fn create_topic(bootstrap: &str, topic: &str) -> Result<()> {
    let request = CreateTopicsRequest::default()
        .with_timeout_ms(30_000)
        .with_topics(vec![
            CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_num_partitions(1)
                .with_replication_factor(1),
        ]);
    let response = Connection::connect(bootstrap)?.send(&request, 5)?;
    let code = response.topics.first().map_or(-1, |t| t.error_code);
    ensure!(code == 0, "creating {topic}: error code {code}");
    // The controller answers before the broker has the partition: a request sent at once can
    // meet UNKNOWN_TOPIC_OR_PARTITION. Wait until Metadata shows it led.
    crate::wait_for(
        &format!("{topic} to have a leader"),
        std::time::Duration::from_secs(30),
        || {
            let metadata = crate::kafka::wire::metadata(bootstrap)?;
            let led = metadata.topics.iter().any(|t| {
                t.name.as_ref().is_some_and(|n| n.as_str() == topic)
                    && t.error_code == 0
                    && !t.partitions.is_empty()
                    && t.partitions.iter().all(|p| p.leader_id.0 >= 0)
            });
            Ok(led.then_some(()))
        },
    )
}

/// Deletes `topic` through the broker at `bootstrap`, so a long benchmark does not fill the disk.
pub fn delete_topic(bootstrap: &str, topic: &str) -> Result<()> {
    let request = DeleteTopicsRequest::default()
        .with_timeout_ms(30_000)
        .with_topic_names(vec![TopicName(StrBytes::from_string(topic.to_string()))]);
    let response = Connection::connect(bootstrap)?.send(&request, 5)?;
    let code = response.responses.first().map_or(-1, |t| t.error_code);
    ensure!(code == 0, "deleting {topic}: error code {code}");
    Ok(())
}

/// The `q` quantile of sorted `values`.
pub fn percentile(values: &[u64], q: f64) -> u64 {
    if values.is_empty() {
        return 0;
    }
    let rank = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

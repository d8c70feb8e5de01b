//! What the benchmarks share: Kafka's own performance tools driven and read, a probe that times
//! single Produce round trips in microseconds, and the proxy's peak memory.

use anyhow::{Context, Result};

use crate::kafka::KafkaDist;
use crate::process;

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

/// Runs ProducerPerformance (acks=1) against `bootstrap`; `throughput` -1 is unthrottled.
pub fn produce(
    dist: &KafkaDist,
    bootstrap: &str,
    topic: &str,
    records: u64,
    size: u64,
    throughput: i64,
) -> Result<Produced> {
    let output = process::run(
        "ProducerPerformance",
        dist.java("org.apache.kafka.tools.ProducerPerformance")
            .args(["--topic", topic, "--num-records", &records.to_string()])
            .args([
                "--record-size",
                &size.to_string(),
                "--throughput",
                &throughput.to_string(),
            ])
            .args([
                "--producer-props",
                &format!("bootstrap.servers={bootstrap}"),
                "acks=1",
            ])
            .args(["linger.ms=5", "batch.size=131072"]),
    )?;
    let text = String::from_utf8_lossy(&output.stdout);
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

/// The `q` quantile of sorted `values`.
pub fn percentile(values: &[u64], q: f64) -> u64 {
    if values.is_empty() {
        return 0;
    }
    let rank = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

//! `just bench-proxy`: Kafka's own producer and consumer performance tools, direct to the
//! broker and through the Streamward proxy, in the same run on the same broker.
//!
//! Usage: `bench_proxy --sidecar PATH/TO/release/streamward-sidecar [--records N] [--size BYTES]`
//!
//! Prints throughput (records/s, MB/s) and the ratio proxy/direct, the producer's latency
//! percentiles at half of the direct peak rate for both paths, and the proxy's peak RSS.
//!
//! ProducerPerformance reports whole milliseconds, too coarse for "≤ 1 ms added p99", so a
//! probe also times single Produce requests (one 1 KiB record, acks=1) one after another on one
//! connection, direct and through the proxy, in microseconds: the difference of the two
//! percentiles is what the proxy adds to a request's round trip.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use streamward_e2e::kafka::{KafkaCluster, KafkaDist};
use streamward_e2e::process;
use streamward_e2e::sidecar::Sidecar;

const POLICY: &str = "apiVersion: streamward.io/v1alpha1
kind: StreamPolicy
metadata: {name: bench, namespace: bench}
spec:
  subjects:
    serviceAccounts: [bench]
  rules:
  - name: bench-topics
    resources: [{resourceType: Topic, name: bench., patternType: Prefixed}]
    operations: [Read, Write, Create, Describe]
    effect: Allow
  - name: bench-groups
    resources: [{resourceType: Group, name: '*'}]
    operations: [Read, Describe]
    effect: Allow
  - name: idempotence
    resources: [{resourceType: Cluster, name: kafka-cluster}]
    operations: [IdempotentWrite]
    effect: Allow
";

/// Measured rounds per path.
const ROUNDS: usize = 2;

/// Blocks of the round-trip probe per path (the first warms up), and requests per block.
const PROBE_BLOCKS: usize = 6;
const PROBE_REQUESTS: usize = 2_000;

struct Args {
    sidecar: PathBuf,
    records: u64,
    size: u64,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        sidecar: PathBuf::new(),
        records: 1_000_000,
        size: 1024,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--sidecar" => args.sidecar = PathBuf::from(value),
            "--records" => args.records = value.parse()?,
            "--size" => args.size = value.parse()?,
            _ => bail!("unknown flag {flag}"),
        }
    }
    if args.sidecar.as_os_str().is_empty() {
        bail!("usage: bench_proxy --sidecar PATH [--records N] [--size BYTES]");
    }
    Ok(args)
}

/// One ProducerPerformance summary.
#[derive(Debug)]
struct Produced {
    records_per_sec: f64,
    mb_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// One ConsumerPerformance summary.
struct Consumed {
    records_per_sec: f64,
    mb_per_sec: f64,
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let kafka = KafkaCluster::start(1)?;
    let direct = kafka.bootstrap();
    let target = format!(
        "apiVersion: streamward.io/v1alpha1\nkind: StreamTarget\nmetadata: {{name: kafka, namespace: bench}}\nspec:\n  bootstrapServers: [\"{direct}\"]\n"
    );
    let proxy = Sidecar::start(
        &args.sidecar,
        &[("target.yaml", target), ("policy.yaml", POLICY.to_string())],
        "bench",
        "bench",
    )?;
    let dist = kafka.dist();
    let run_id = std::process::id();
    println!(
        "records: {}, record size: {} B, one broker, producer acks=1, all on 2 cores",
        args.records, args.size
    );

    // Warm the broker's JIT first, then measure in alternating order over the rounds so that
    // neither path always runs on a warmer broker.
    produce(
        dist,
        &direct,
        &format!("bench.warmup-{run_id}"),
        args.records / 4,
        args.size,
        -1,
    )?;
    let paths = [
        ("direct", direct.as_str()),
        ("proxy", proxy.bootstrap.as_str()),
    ];
    let mut totals = [(0.0, 0.0, 0.0, 0.0); 2];
    for round in 0..ROUNDS {
        for step in 0..2 {
            let index = (step + round) % 2;
            let (path, bootstrap) = paths[index];
            let topic = format!("bench.{path}-{run_id}-{round}");
            let p = produce(dist, bootstrap, &topic, args.records, args.size, -1)?;
            let c = consume(dist, bootstrap, &topic, args.records)?;
            println!(
                "round {round} {path:>6}: produce {:.0} rec/s {:.1} MB/s, consume {:.0} rec/s {:.1} MB/s",
                p.records_per_sec, p.mb_per_sec, c.records_per_sec, c.mb_per_sec
            );
            let t = &mut totals[index];
            t.0 += p.records_per_sec / ROUNDS as f64;
            t.1 += p.mb_per_sec / ROUNDS as f64;
            t.2 += c.records_per_sec / ROUNDS as f64;
            t.3 += c.mb_per_sec / ROUNDS as f64;
        }
    }
    // Latency at half of the direct peak rate, on both paths.
    let half = (totals[0].0 / 2.0) as i64;
    let latency_records = (args.records / 2).max(10_000);
    let mut latency = Vec::new();
    for (path, bootstrap) in paths {
        let topic = format!("bench.latency-{path}-{run_id}");
        latency.push((
            path,
            produce(dist, bootstrap, &topic, latency_records, args.size, half)?,
        ));
    }
    // Round trips of single requests, alternating paths in blocks so both see the same broker.
    let probe_topic = format!("bench.probe-{run_id}");
    produce(dist, &direct, &probe_topic, 10, args.size, -1)?;
    let mut round_trips = [Vec::new(), Vec::new()];
    for block in 0..PROBE_BLOCKS {
        for (index, (_, bootstrap)) in paths.iter().enumerate() {
            let times = probe(bootstrap, &probe_topic, PROBE_REQUESTS, args.size as usize)?;
            if block > 0 {
                round_trips[index].extend(times); // the first block warms both paths up
            }
        }
    }
    let rss_kib = peak_rss_kib(proxy.pid())?;

    println!("\nmean of {ROUNDS} rounds:");
    println!("| path | produce rec/s | produce MB/s | consume rec/s | consume MB/s |");
    println!("|---|---|---|---|---|");
    for (index, (path, _)) in paths.iter().enumerate() {
        let t = totals[index];
        println!(
            "| {path} | {:.0} | {:.1} | {:.0} | {:.1} |",
            t.0, t.1, t.2, t.3
        );
    }
    let (d, x) = (totals[0], totals[1]);
    println!(
        "| proxy / direct | {:.1} % | {:.1} % | {:.1} % | {:.1} % |",
        100.0 * x.0 / d.0,
        100.0 * x.1 / d.1,
        100.0 * x.2 / d.2,
        100.0 * x.3 / d.3,
    );
    println!("\nproduce latency at {half} records/s (half of the direct peak):");
    println!("| path | p50 ms | p99 ms |");
    println!("|---|---|---|");
    for (path, p) in &latency {
        println!("| {path} | {:.1} | {:.1} |", p.p50_ms, p.p99_ms);
    }
    println!(
        "added p99: {:.1} ms (ProducerPerformance reports whole milliseconds)",
        latency[1].1.p99_ms - latency[0].1.p99_ms
    );
    println!(
        "\nsingle Produce round trips ({} per path, one connection, acks=1):",
        round_trips[0].len()
    );
    println!("| path | p50 µs | p99 µs | p99.9 µs |");
    println!("|---|---|---|---|");
    let mut summary = Vec::new();
    for (index, (path, _)) in paths.iter().enumerate() {
        let times = &mut round_trips[index];
        times.sort_unstable();
        let (p50, p99, p999) = (
            percentile(times, 0.50),
            percentile(times, 0.99),
            percentile(times, 0.999),
        );
        println!("| {path} | {p50} | {p99} | {p999} |");
        summary.push((p50, p99));
    }
    println!(
        "added by the proxy: p50 {} µs, p99 {} µs",
        summary[1].0 as i64 - summary[0].0 as i64,
        summary[1].1 as i64 - summary[0].1 as i64
    );
    println!("proxy peak RSS: {:.1} MiB", rss_kib as f64 / 1024.0);
    Ok(())
}

fn produce(
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

fn consume(dist: &KafkaDist, bootstrap: &str, topic: &str, records: u64) -> Result<Consumed> {
    let output = process::run(
        "ConsumerPerformance",
        dist.java("org.apache.kafka.tools.ConsumerPerformance")
            .args(["--bootstrap-server", bootstrap, "--topic", topic])
            .args([
                "--messages",
                &records.to_string(),
                "--group",
                &format!("{topic}-g"),
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
    Ok(Consumed {
        mb_per_sec: fields[3].parse()?,
        records_per_sec: fields[5].parse()?,
    })
}

fn peak_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/<pid>/status")
}

/// Times `requests` single-record Produce requests (acks=1) sent one after another on one
/// connection to `bootstrap`, in microseconds.
fn probe(bootstrap: &str, topic: &str, requests: usize, size: usize) -> Result<Vec<u64>> {
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
fn percentile(values: &[u64], q: f64) -> u64 {
    if values.is_empty() {
        return 0;
    }
    let rank = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

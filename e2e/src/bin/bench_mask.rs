//! `just bench-mask`: consume throughput of realistic JSON records through the Streamward proxy
//! with and without masking, and directly from the broker, in the same run on the same broker.
//!
//! Usage: `bench_mask --sidecar PATH/TO/release/streamward-sidecar [--records N]`
//!
//! The records are ~1.1 KiB customer orders ([`streamward_e2e::data::order`]), produced by
//! Kafka's ProducerPerformance twice per compression (none, lz4): into a topic a MaskingRule
//! covers (field paths, an HMAC pseudonym and detectors over every string) and into one it does
//! not. Kafka's own ConsumerPerformance reads
//! them directly, through the proxy unmasked, and through the proxy masked. Besides MB/s, the
//! proxy's CPU time (from `/proc/<pid>/stat`) during each consume gives MB per proxy
//! CPU-second: on a 2-core machine that the broker and the consumer share, this is the number
//! to compare with the engine's per-core target.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use clap::Parser;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::{CreateTopicsRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use streamward_e2e::bench;
use streamward_e2e::data::order;
use streamward_e2e::kafka::wire::Connection;
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
    operations: [Read, Describe]
    effect: Allow
  - name: bench-groups
    resources: [{resourceType: Group, name: '*'}]
    operations: [Read, Describe]
    effect: Allow
";

/// The rule of the engine's criterion benchmark (`sidecar/benches/mask.rs`), on the masked topics.
const MASKING: &str = "apiVersion: streamward.io/v1alpha1
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

/// Distinct orders, cycled through.
const DISTINCT: u64 = 1_000;
/// Measured rounds per path.
const ROUNDS: usize = 2;

/// Consume throughput through the proxy with and without masking, and direct.
#[derive(Parser)]
struct Args {
    /// The proxy binary (a release build).
    #[arg(long)]
    sidecar: PathBuf,
    /// Records per topic.
    #[arg(long, default_value_t = 200_000)]
    records: u64,
}

/// One consume through one path.
#[derive(Clone, Copy, Default)]
struct Measured {
    mb_per_sec: f64,
    records_per_sec: f64,
    /// CPU seconds the proxy used meanwhile (0 for the direct path).
    proxy_cpu: f64,
    /// MB ConsumerPerformance read.
    mb: f64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let kafka = KafkaCluster::start(1)?;
    let direct = kafka.bootstrap();
    let run_id = std::process::id();

    let values: Vec<Vec<u8>> = (0..DISTINCT).map(order).collect();
    let average = values.iter().map(Vec::len).sum::<usize>() / values.len();
    let payloads = tempfile::NamedTempFile::new()?;
    std::fs::write(payloads.path(), values.join(&b'\n'))?;
    let codecs = ["none", "lz4"];
    let dist = kafka.dist();
    let mut topics = Vec::new();
    for name in codecs {
        let masked = format!("bench.masked.{name}-{run_id}");
        let plain = format!("bench.plain.{name}-{run_id}");
        for topic in [&masked, &plain] {
            create_topic(&direct, topic)?;
            let started = Instant::now();
            produce(dist, &direct, topic, payloads.path(), args.records, name)?;
            eprintln!(
                "produced {} records to {topic} in {:.1} s",
                args.records,
                started.elapsed().as_secs_f64()
            );
        }
        topics.push((name, masked, plain));
    }

    let target = bench::target(&direct);
    let proxy = Sidecar::start_for_benchmark(
        &args.sidecar,
        &[
            ("target.yaml", target),
            ("policy.yaml", POLICY.to_string()),
            ("masking.yaml", MASKING.to_string()),
        ],
        "bench",
        "bench",
        &[],
    )?;
    println!(
        "records: {} per topic, JSON orders of {average} B on average, one broker, one partition, all on {} cores",
        args.records,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    let mut rows = Vec::new();
    for (codec, masked, plain) in &topics {
        let paths = [
            ("direct", direct.as_str(), masked.as_str()),
            ("proxy, no rule", proxy.bootstrap.as_str(), plain.as_str()),
            ("proxy, masked", proxy.bootstrap.as_str(), masked.as_str()),
        ];
        let mut sums = [Measured::default(); 3];
        for round in 0..ROUNDS {
            for step in 0..paths.len() {
                let index = (step + round) % paths.len();
                let (path, bootstrap, topic) = paths[index];
                let cpu_before = cpu_seconds(proxy.pid())?;
                let c = bench::consume(dist, bootstrap, topic, args.records)?;
                let mut m = Measured {
                    mb_per_sec: c.mb_per_sec,
                    records_per_sec: c.records_per_sec,
                    proxy_cpu: 0.0,
                    mb: c.mb,
                };
                if bootstrap != direct {
                    m.proxy_cpu = cpu_seconds(proxy.pid())? - cpu_before;
                }
                println!(
                    "{codec:>4} round {round} {path:>14}: {:.1} MB/s {:.0} rec/s, proxy CPU {:.2} s",
                    m.mb_per_sec, m.records_per_sec, m.proxy_cpu
                );
                let s = &mut sums[index];
                s.mb_per_sec += m.mb_per_sec / ROUNDS as f64;
                s.records_per_sec += m.records_per_sec / ROUNDS as f64;
                s.proxy_cpu += m.proxy_cpu / ROUNDS as f64;
                s.mb += m.mb / ROUNDS as f64;
            }
        }
        for (index, (path, _, _)) in paths.iter().enumerate() {
            rows.push((*codec, *path, sums[index]));
        }
    }

    // The masked path did mask: every record it served was rewritten.
    let masked_records = proxy.metric("streamward_sidecar_masked_records_total")?;
    let expected = (args.records * ROUNDS as u64 * codecs.len() as u64) as f64;
    ensure!(
        masked_records >= expected,
        "the proxy masked {masked_records} records, expected at least {expected}"
    );

    println!("\nmean of {ROUNDS} rounds (MB as ConsumerPerformance counts them: keys and values):");
    println!("| codec | path | MB/s | records/s | proxy CPU s | MB per proxy CPU-second |");
    println!("|---|---|---|---|---|---|");
    for (codec, path, m) in &rows {
        let per_cpu = if m.proxy_cpu > 0.0 {
            format!("{:.0}", m.mb / m.proxy_cpu)
        } else {
            "–".to_string()
        };
        println!(
            "| {codec} | {path} | {:.1} | {:.0} | {:.2} | {per_cpu} |",
            m.mb_per_sec, m.records_per_sec, m.proxy_cpu
        );
    }
    for codec in ["none", "lz4"] {
        let of = |path: &str| {
            rows.iter()
                .find(|(c, p, _)| *c == codec && *p == path)
                .map(|(_, _, m)| m.mb_per_sec)
                .unwrap_or(f64::NAN)
        };
        println!(
            "{codec}: masked / unmasked through the proxy {:.1} %, masked / direct {:.1} %",
            100.0 * of("proxy, masked") / of("proxy, no rule"),
            100.0 * of("proxy, masked") / of("direct"),
        );
    }
    println!("proxy masked {masked_records} records");
    Ok(())
}

fn create_topic(bootstrap: &str, topic: &str) -> Result<()> {
    let mut connection = Connection::connect(bootstrap)?;
    let request = CreateTopicsRequest::default()
        .with_timeout_ms(30_000)
        .with_topics(vec![
            CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_num_partitions(1)
                .with_replication_factor(1),
        ]);
    let response = connection.send(&request, 5)?;
    let code = response.topics.first().map_or(-1, |t| t.error_code);
    ensure!(code == 0, "creating {topic}: error code {code}");
    Ok(())
}

/// Produces `records` orders (drawn from the lines of `payloads`) to `topic` with Kafka's own
/// ProducerPerformance, compressed with `codec`, acks=1.
fn produce(
    dist: &KafkaDist,
    bootstrap: &str,
    topic: &str,
    payloads: &Path,
    records: u64,
    codec: &str,
) -> Result<()> {
    let output = process::run(
        "ProducerPerformance",
        dist.java("org.apache.kafka.tools.ProducerPerformance")
            .args(["--topic", topic, "--num-records", &records.to_string()])
            .args(["--throughput", "-1", "--payload-delimiter", "\n"])
            .arg("--payload-file")
            .arg(payloads)
            .args([
                "--producer-props",
                &format!("bootstrap.servers={bootstrap}"),
                "acks=1",
                &format!("compression.type={codec}"),
                "linger.ms=5",
                "batch.size=262144",
            ]),
    )?;
    let text = String::from_utf8_lossy(&output.stdout);
    ensure!(
        text.contains(&format!("{records} records sent")),
        "ProducerPerformance did not send {records} records to {topic}:\n{text}"
    );
    Ok(())
}

/// User plus system CPU time of `pid` so far, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; the fields after its ')' are fixed.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("no ')' in /proc/<pid>/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf reads a constant of the running system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ensure!(per_second > 0, "sysconf(_SC_CLK_TCK) failed");
    Ok(ticks as f64 / per_second as f64)
}

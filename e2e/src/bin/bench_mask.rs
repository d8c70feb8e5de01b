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

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, ensure};
use clap::Parser;
use streamward_e2e::bench::{self, Load, Payload, cpu_seconds, create_topic};
use streamward_e2e::data::order;
use streamward_e2e::kafka::KafkaCluster;
use streamward_e2e::sidecar::Sidecar;

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
        let masked = format!("{}{name}-{run_id}", bench::MASKED_PREFIX);
        let plain = format!("bench.plain.{name}-{run_id}");
        for topic in [&masked, &plain] {
            create_topic(&direct, topic)?;
            let started = Instant::now();
            let load = Load {
                records: args.records,
                payload: Payload::Lines(payloads.path()),
                compression: name,
                throughput: -1,
            };
            bench::produce_load(dist, &direct, topic, &load)?;
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
            ("policy.yaml", bench::policy("Metadata")),
            ("masking.yaml", bench::MASKING.to_string()),
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

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

use anyhow::Result;
use clap::Parser;
use streamward_e2e::bench::{self, consume, peak_rss_kib, percentile, probe, produce, target};
use streamward_e2e::kafka::KafkaCluster;
use streamward_e2e::sidecar::Sidecar;

/// Measured rounds per path.
const ROUNDS: usize = 2;

/// Blocks of the round-trip probe per path (the first warms up), and requests per block.
const PROBE_BLOCKS: usize = 6;
const PROBE_REQUESTS: usize = 2_000;

/// Kafka's producer and consumer performance tools, direct and through the proxy.
#[derive(Parser)]
struct Args {
    /// The proxy binary (a release build).
    #[arg(long)]
    sidecar: PathBuf,
    /// Records per measured run.
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// Bytes per record.
    #[arg(long, default_value_t = 1024)]
    size: u64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let kafka = KafkaCluster::start(1)?;
    let direct = kafka.bootstrap();
    let target = target(&direct);
    let proxy = Sidecar::start_for_benchmark(
        &args.sidecar,
        &[
            ("target.yaml", target),
            ("policy.yaml", bench::policy("Metadata")),
        ],
        "bench",
        "bench",
        &[],
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

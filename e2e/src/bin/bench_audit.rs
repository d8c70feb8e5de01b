//! `just bench-audit`: what sending one audit event per request costs the proxy. Two proxies on
//! the same broker in the same run, one without audit and one sending to a real
//! `streamward-collector`; Kafka's ProducerPerformance through each (alternating over rounds),
//! then single Produce round trips (one event per request, the worst case for the emitter), then
//! how fast the audited proxy's events reached the collector.
//!
//! Usage: `bench_audit --sidecar PATH --collector PATH [--records N] [--size BYTES]`
//! (release builds of `streamward-sidecar` and `streamward-collector`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use streamward_e2e::bench::{self, cpu_seconds, peak_rss_kib, percentile, probe, produce, target};
use streamward_e2e::collector::Collector;
use streamward_e2e::kafka::KafkaCluster;
use streamward_e2e::sidecar::Sidecar;
use streamward_e2e::{cache, wait_for};

const TOKEN: &str = "bench-audit-token-0123456789";
const PROBE_BLOCKS: usize = 6;
const PROBE_REQUESTS: usize = 2_000;

/// Proxy throughput and latency with audit off and on, and the collector's delivery.
#[derive(Parser)]
struct Args {
    /// The proxy binary (a release build).
    #[arg(long)]
    sidecar: PathBuf,
    /// The collector binary (a release build).
    #[arg(long)]
    collector: PathBuf,
    /// Records per measured run.
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// Bytes per record.
    #[arg(long, default_value_t = 1024)]
    size: u64,
    /// Rounds, each running both proxies (in alternating order).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let run = cache::run_dir("bench-audit")?;
    let kafka = KafkaCluster::start(1)?;
    let direct = kafka.bootstrap();
    let collector = Collector::start(&args.collector, run.path(), TOKEN, "bench/bench")?;
    let target = target(&direct);
    let files = [
        ("target.yaml", target),
        ("policy.yaml", bench::policy("PayloadDigest")),
    ];
    let off = Sidecar::start_for_benchmark(&args.sidecar, &files, "bench", "bench", &[])?;
    std::fs::write(run.path().join("token"), TOKEN)?;
    let url = format!("http://{}", collector.addr());
    let token = run.path().join("token").display().to_string();
    let spool = run.path().join("spool").display().to_string();
    let on = Sidecar::start_for_benchmark(
        &args.sidecar,
        &files,
        "bench",
        "bench",
        &[
            "--audit-url",
            &url,
            "--audit-token-file",
            &token,
            "--audit-spool",
            &spool,
        ],
    )?;
    let dist = kafka.dist();
    let run_id = std::process::id();
    println!(
        "records: {}, record size: {} B, one broker, producer acks=1, audit level PayloadDigest, all on 2 cores",
        args.records, args.size
    );
    produce(
        dist,
        &direct,
        &format!("bench.warmup-{run_id}"),
        args.records / 4,
        args.size,
        -1,
    )?;
    let started = Instant::now();
    let paths = [
        ("audit off", off.bootstrap.as_str()),
        ("audit on", on.bootstrap.as_str()),
    ];
    let mut totals = [(0.0, 0.0); 2];
    // The proxy's CPU-seconds over its runs, and the bytes it carried.
    let mut cpu = [(0.0, 0.0); 2];
    // The collector's CPU-seconds while the audited proxy ran.
    let mut collector_cpu = 0.0;
    let collector_pid = collector
        .pid()
        .ok_or_else(|| anyhow::anyhow!("the collector is not running"))?;
    for round in 0..args.rounds {
        for step in 0..2 {
            let index = (step + round) % 2;
            let (path, bootstrap) = paths[index];
            let topic = format!("bench.audit-{index}-{run_id}-{round}");
            let pid = [off.pid(), on.pid()][index];
            let before = cpu_seconds(pid)?;
            let collector_before = cpu_seconds(collector_pid)?;
            let p = produce(dist, bootstrap, &topic, args.records, args.size, -1)?;
            cpu[index].0 += cpu_seconds(pid)? - before;
            if index == 1 {
                collector_cpu += cpu_seconds(collector_pid)? - collector_before;
            }
            cpu[index].1 += (args.records * args.size) as f64 / 1e9;
            println!(
                "round {round} {path:>9}: produce {:.0} rec/s {:.1} MB/s",
                p.records_per_sec, p.mb_per_sec
            );
            totals[index].0 += p.records_per_sec / args.rounds as f64;
            totals[index].1 += p.mb_per_sec / args.rounds as f64;
        }
    }
    let probe_topic = format!("bench.probe-{run_id}");
    produce(dist, &direct, &probe_topic, 10, args.size, -1)?;
    let mut round_trips = [Vec::new(), Vec::new()];
    for block in 0..PROBE_BLOCKS {
        for (index, (_, bootstrap)) in paths.iter().enumerate() {
            let times = probe(bootstrap, &probe_topic, PROBE_REQUESTS, args.size as usize)?;
            if block > 0 {
                round_trips[index].extend(times);
            }
        }
    }
    let loaded = started.elapsed();
    // Every event queued must reach the collector; how long the tail takes after the load.
    let queued = on.metric("streamward_sidecar_audit_events_total{outcome=\"queued\"}")?;
    let drained = Instant::now();
    wait_for("the audit spool to drain", Duration::from_secs(300), || {
        let delivered =
            on.metric("streamward_sidecar_audit_events_total{outcome=\"delivered\"}")?;
        Ok((delivered >= queued).then_some(()))
    })?;
    let tail = drained.elapsed();
    let delivered = on.metric("streamward_sidecar_audit_events_total{outcome=\"delivered\"}")?;
    // + 0.0: an empty sum is -0.0.
    let dropped = on.metric("streamward_sidecar_audit_events_total{outcome=\"dropped\"}")? + 0.0;

    println!("\nmean of {} rounds:", args.rounds);
    println!("| proxy | produce rec/s | produce MB/s | proxy CPU s / GB |");
    println!("|---|---|---|---|");
    for (index, (path, _)) in paths.iter().enumerate() {
        println!(
            "| {path} | {:.0} | {:.1} | {:.2} |",
            totals[index].0,
            totals[index].1,
            cpu[index].0 / cpu[index].1
        );
    }
    println!(
        "| on / off | {:.1} % | {:.1} % | |",
        100.0 * totals[1].0 / totals[0].0,
        100.0 * totals[1].1 / totals[0].1
    );
    println!(
        "collector CPU while the audited proxy ran: {:.2} s / GB",
        collector_cpu / cpu[1].1
    );
    println!(
        "\nsingle Produce round trips ({} per proxy, one connection, one event each):",
        round_trips[0].len()
    );
    println!("| proxy | p50 µs | p99 µs | p99.9 µs |");
    println!("|---|---|---|---|");
    for (index, (path, _)) in paths.iter().enumerate() {
        let times = &mut round_trips[index];
        times.sort_unstable();
        println!(
            "| {path} | {} | {} | {} |",
            percentile(times, 0.50),
            percentile(times, 0.99),
            percentile(times, 0.999)
        );
    }
    println!(
        "\naudit events: {delivered:.0} delivered, {dropped:.0} dropped in {:.0} s of load; the spool drained {:.1} s after the load ended",
        loaded.as_secs_f64(),
        tail.as_secs_f64()
    );
    println!(
        "peak RSS: audit off {:.1} MiB, audit on {:.1} MiB",
        peak_rss_kib(off.pid())? as f64 / 1024.0,
        peak_rss_kib(on.pid())? as f64 / 1024.0
    );
    Ok(())
}

//! `just bench`: one workload on one Kafka broker, direct and through every proxy, in one run.
//!
//! The paths ("columns"): direct to the broker; Streamward with the policy only, with audit to a
//! real collector, and with audit and masking on consume; Kroxylicious passing through, and
//! Kroxylicious rewriting every fetched record (its nearest to masking). Each round runs every
//! column once, in an order rotated per round so that no column always meets a warmer broker;
//! each run produces the same JSON orders ([`crate::data::order`]) with Kafka's
//! ProducerPerformance through the column and reads them back with ConsumerPerformance through
//! it, once per compression. Then single Produce round trips are timed in alternating blocks.
//!
//! That each proxy carried the traffic is checked, not assumed: a Metadata request through it
//! must name only its own broker addresses (so clients never bypass it after bootstrap), its CPU
//! time must grow during each run, the masking proxy must count every record it served as
//! masked, and the auditing proxy must deliver every event it queued to the collector.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde::Serialize;

use super::report::{Machine, Report};
use super::{Load, Payload, consume, cpu_seconds, peak_rss_kib, percentile, probe, produce_load};
use crate::collector::Collector;
use crate::kafka::KafkaCluster;
use crate::kroxylicious::{Filters, KROXYLICIOUS_VERSION, Kroxylicious};
use crate::sidecar::Sidecar;
use crate::{cache, wait_for};

/// How big a comparison to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// The proxy binary (a release build for numbers worth reading).
    pub sidecar: PathBuf,
    /// The collector binary.
    pub collector: PathBuf,
    /// Records per run (one column, one compression, one round).
    pub records: u64,
    /// Rounds of every column.
    pub rounds: usize,
    /// Compressions the producer uses, each a run of its own (`none`, `lz4`, ...).
    pub compressions: Vec<String>,
    /// Blocks of the round-trip probe per column (the first warms up and is not counted).
    pub probe_blocks: usize,
    /// Produce requests per probe block.
    pub probe_requests: usize,
}

/// The routes the workload takes: the table's columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Route {
    Direct,
    Streamward,
    StreamwardAudit,
    StreamwardMasked,
    Kroxylicious,
    KroxyliciousTransform,
}

/// Every route, in table order.
pub const ROUTES: [Route; 6] = [
    Route::Direct,
    Route::Streamward,
    Route::StreamwardAudit,
    Route::StreamwardMasked,
    Route::Kroxylicious,
    Route::KroxyliciousTransform,
];

impl Route {
    /// The column's name in the table.
    pub fn label(self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::Streamward => "streamward",
            Route::StreamwardAudit => "streamward +audit",
            Route::StreamwardMasked => "streamward +audit +mask",
            Route::Kroxylicious => "kroxylicious",
            Route::KroxyliciousTransform => "kroxylicious +transform",
        }
    }

    /// What the column runs, for the table's legend.
    pub fn describe(self) -> String {
        match self {
            Route::Direct => "Kafka's clients straight to the broker".into(),
            Route::Streamward => "streamward-sidecar, policy enforced, no audit".into(),
            Route::StreamwardAudit => {
                "streamward-sidecar, policy + one audit event per request (PayloadDigest) to a real streamward-collector".into()
            }
            Route::StreamwardMasked => {
                "streamward-sidecar, policy + audit + the masking rule of `just bench-mask` on consume".into()
            }
            Route::Kroxylicious => format!("Kroxylicious {KROXYLICIOUS_VERSION}, passthrough"),
            Route::KroxyliciousTransform => format!(
                "Kroxylicious {KROXYLICIOUS_VERSION}, FetchResponseTransformation (UpperCasing) rewriting every fetched record"
            ),
        }
    }

    /// A name fit for a topic.
    fn slug(self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::Streamward => "sw",
            Route::StreamwardAudit => "sw-audit",
            Route::StreamwardMasked => "sw-mask",
            Route::Kroxylicious => "krox",
            Route::KroxyliciousTransform => "krox-transform",
        }
    }
}

/// A column's numbers for one compression, the mean of the rounds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Throughput {
    pub compression: String,
    pub produce_records_per_sec: f64,
    pub produce_mb_per_sec: f64,
    pub consume_records_per_sec: f64,
    pub consume_mb_per_sec: f64,
    /// CPU seconds the proxy process used during the produce and consume of a run (0 direct).
    pub proxy_cpu_seconds: f64,
    /// MB produced plus MB consumed in a run.
    pub mb_moved: f64,
}

/// Everything measured of one column.
#[derive(Clone, Debug, Serialize)]
pub struct Column {
    pub route: Route,
    pub label: String,
    pub description: String,
    pub throughput: Vec<Throughput>,
    /// Single Produce round trips (one record, acks=1, one connection), in microseconds.
    pub round_trip_p50_us: u64,
    pub round_trip_p99_us: u64,
    pub round_trips: usize,
    /// Proxy CPU seconds per GB moved (produced + consumed), over every run; None direct.
    pub cpu_seconds_per_gb: Option<f64>,
    /// The proxy process's peak resident memory; None direct.
    pub peak_rss_mib: Option<f64>,
}

/// A proxy under test.
enum Peer {
    Direct,
    Streamward(Sidecar),
    Kroxylicious(Kroxylicious),
}

struct Lane {
    route: Route,
    bootstrap: String,
    peer: Peer,
}

impl Lane {
    fn pid(&self) -> Option<u32> {
        match &self.peer {
            Peer::Direct => None,
            Peer::Streamward(proxy) => Some(proxy.pid()),
            Peer::Kroxylicious(proxy) => Some(proxy.pid()),
        }
    }

    fn log(&self) -> String {
        match &self.peer {
            Peer::Direct => String::new(),
            Peer::Streamward(proxy) => proxy.log(),
            Peer::Kroxylicious(proxy) => proxy.log(),
        }
    }
}

/// The audit token the benchmark's collector accepts.
const TOKEN: &str = "bench-compare-token-0123456789";
/// Distinct orders the producer draws from.
const DISTINCT: u64 = 1_000;

/// Runs the comparison and returns every column measured. Fails if any proxy did not carry
/// its traffic.
pub fn run(options: &Options) -> Result<Report> {
    ensure!(options.rounds > 0, "at least one round");
    ensure!(options.records > 0, "at least one record");
    ensure!(options.probe_blocks > 1, "at least two probe blocks");
    let started = Instant::now();
    let load_before = Machine::load_average();
    let kafka = KafkaCluster::start(1)?;
    let direct = kafka.bootstrap();
    let dist = kafka.dist();
    let run = cache::run_dir("bench")?;
    let run_id = std::process::id();

    let values: Vec<Vec<u8>> = (0..DISTINCT).map(crate::data::order).collect();
    let record_bytes = values.iter().map(Vec::len).sum::<usize>() / values.len();
    let payloads = run.path().join("orders.txt");
    std::fs::write(&payloads, values.join(&b'\n'))?;

    // The collector must outlive the auditing proxies' last delivery.
    let (lanes, _collector) = start_lanes(options, &kafka, run.path())?;
    eprintln!(
        "[{:5.1} s] Kafka, the collector and {} proxies ready",
        started.elapsed().as_secs_f64(),
        lanes.len() - 1
    );
    for lane in &lanes {
        if lane.pid().is_some() {
            check_routes_through(&lane.bootstrap, &direct, lane.route)?;
        }
    }

    // Warm the broker's JIT before anything is measured.
    let warmup = Load {
        records: options.records / 4 + 1,
        payload: Payload::Lines(&payloads),
        compression: "none",
        throughput: -1,
    };
    produce_load(dist, &direct, &format!("bench.warmup-{run_id}"), &warmup)?;
    super::delete_topic(&direct, &format!("bench.warmup-{run_id}"))?;

    let mut sums: Vec<Vec<Throughput>> = lanes
        .iter()
        .map(|_| {
            options
                .compressions
                .iter()
                .map(|c| Throughput {
                    compression: c.clone(),
                    ..Throughput::default()
                })
                .collect()
        })
        .collect();
    let share = 1.0 / options.rounds as f64;
    for round in 0..options.rounds {
        for step in 0..lanes.len() {
            let index = (step + round) % lanes.len();
            let lane = &lanes[index];
            for (c, compression) in options.compressions.iter().enumerate() {
                let prefix = if lane.route == Route::StreamwardMasked {
                    super::MASKED_PREFIX
                } else {
                    "bench."
                };
                let topic = format!(
                    "{prefix}{}-{compression}-{run_id}-{round}",
                    lane.route.slug()
                );
                super::create_topic(&direct, &topic)?;
                let cpu_before = lane.pid().map(cpu_seconds).transpose()?;
                let load = Load {
                    records: options.records,
                    payload: Payload::Lines(&payloads),
                    compression,
                    throughput: -1,
                };
                let produced = produce_load(dist, &lane.bootstrap, &topic, &load)
                    .with_context(|| format!("producing through {}", lane.route.label()))?;
                let consumed = consume(dist, &lane.bootstrap, &topic, options.records)
                    .with_context(|| format!("consuming through {}", lane.route.label()))?;
                let cpu = match (lane.pid(), cpu_before) {
                    (Some(pid), Some(before)) => cpu_seconds(pid)? - before,
                    _ => 0.0,
                };
                if lane.pid().is_some() {
                    ensure!(
                        cpu > 0.0,
                        "{} used no CPU while {} records went through it: did the clients bypass it?\n{}",
                        lane.route.label(),
                        options.records,
                        lane.log()
                    );
                }
                super::delete_topic(&direct, &topic)?;
                let produced_mb = options.records as f64 * record_bytes as f64 / 1e6;
                eprintln!(
                    "[{:5.1} s] round {round} {:>24} {compression:>5}: produce {:.1} MB/s, consume {:.1} MB/s, proxy CPU {cpu:.2} s",
                    started.elapsed().as_secs_f64(),
                    lane.route.label(),
                    produced.mb_per_sec,
                    consumed.mb_per_sec
                );
                let sum = &mut sums[index][c];
                sum.produce_records_per_sec += produced.records_per_sec * share;
                sum.produce_mb_per_sec += produced.mb_per_sec * share;
                sum.consume_records_per_sec += consumed.records_per_sec * share;
                sum.consume_mb_per_sec += consumed.mb_per_sec * share;
                sum.proxy_cpu_seconds += cpu * share;
                sum.mb_moved += (produced_mb + consumed.mb) * share;
            }
        }
    }

    // Single Produce round trips, alternating columns block by block.
    let probe_topic = format!("bench.probe-{run_id}");
    super::create_topic(&direct, &probe_topic)?;
    let mut round_trips = vec![Vec::new(); lanes.len()];
    for block in 0..options.probe_blocks {
        for (index, lane) in lanes.iter().enumerate() {
            let times = probe(
                &lane.bootstrap,
                &probe_topic,
                options.probe_requests,
                record_bytes,
            )
            .with_context(|| format!("timing round trips through {}", lane.route.label()))?;
            if block > 0 {
                round_trips[index].extend(times);
            }
        }
    }

    verify_audit_and_masking(&lanes, options)?;

    let mut columns = Vec::new();
    for (index, lane) in lanes.iter().enumerate() {
        let times = &mut round_trips[index];
        times.sort_unstable();
        let throughput = std::mem::take(&mut sums[index]);
        let (cpu, mb): (f64, f64) = throughput.iter().fold((0.0, 0.0), |(c, m), t| {
            (c + t.proxy_cpu_seconds, m + t.mb_moved)
        });
        columns.push(Column {
            route: lane.route,
            label: lane.route.label().to_string(),
            description: lane.route.describe(),
            throughput,
            round_trip_p50_us: percentile(times, 0.50),
            round_trip_p99_us: percentile(times, 0.99),
            round_trips: times.len(),
            cpu_seconds_per_gb: lane.pid().map(|_| cpu / (mb / 1000.0)),
            peak_rss_mib: lane
                .pid()
                .map(peak_rss_kib)
                .transpose()?
                .map(|kib| kib as f64 / 1024.0),
        });
    }
    Ok(Report::new(
        Machine::describe(load_before),
        options,
        record_bytes,
        columns,
        started.elapsed(),
    ))
}

/// The proxies of every column, and the collector the auditing ones send to (kept alive
/// until the end).
fn start_lanes(
    options: &Options,
    kafka: &KafkaCluster,
    dir: &Path,
) -> Result<(Vec<Lane>, Collector)> {
    let direct = kafka.bootstrap();
    let collector = Collector::start(&options.collector, dir, TOKEN, "bench/bench")?;
    std::fs::write(dir.join("token"), TOKEN)?;
    let url = format!("http://{}", collector.addr());
    let token = dir.join("token").display().to_string();
    let target = super::target(&direct);
    let policy = super::policy("PayloadDigest");
    let node_ids = kafka
        .nodes()
        .iter()
        .map(|n| n.id)
        .fold((i32::MAX, i32::MIN), |(lo, hi), id| {
            (lo.min(id), hi.max(id))
        });
    let mut lanes = vec![Lane {
        route: Route::Direct,
        bootstrap: direct.clone(),
        peer: Peer::Direct,
    }];
    for route in [
        Route::Streamward,
        Route::StreamwardAudit,
        Route::StreamwardMasked,
    ] {
        let mut files = vec![
            ("target.yaml", target.clone()),
            ("policy.yaml", policy.clone()),
        ];
        if route == Route::StreamwardMasked {
            files.push(("masking.yaml", super::MASKING.to_string()));
        }
        let spool = dir.join(format!("spool-{}", route.slug()));
        let spool = spool.display().to_string();
        let audit = [
            "--audit-url",
            url.as_str(),
            "--audit-token-file",
            token.as_str(),
            "--audit-spool",
            spool.as_str(),
        ];
        let args: &[&str] = if route == Route::Streamward {
            &[]
        } else {
            &audit
        };
        let proxy = Sidecar::start_for_benchmark(&options.sidecar, &files, "bench", "bench", args)?;
        lanes.push(Lane {
            route,
            bootstrap: proxy.bootstrap.clone(),
            peer: Peer::Streamward(proxy),
        });
    }
    // Both JVMs start side by side.
    let mut peers = [
        (Route::Kroxylicious, Filters::Passthrough),
        (Route::KroxyliciousTransform, Filters::UpperCaseOnFetch),
    ]
    .into_iter()
    .map(|(route, filters)| Ok((route, Kroxylicious::spawn(&direct, node_ids, filters)?)))
    .collect::<Result<Vec<_>>>()?;
    for (route, mut proxy) in peers.drain(..) {
        proxy.wait_ready()?;
        lanes.push(Lane {
            route,
            bootstrap: proxy.bootstrap.clone(),
            peer: Peer::Kroxylicious(proxy),
        });
    }
    Ok((lanes, collector))
}

/// Fails unless Metadata through `bootstrap` names only addresses other than the brokers'
/// (`direct`): a proxy that passed the brokers' own addresses on would carry only the bootstrap.
fn check_routes_through(bootstrap: &str, direct: &str, route: Route) -> Result<()> {
    let metadata = crate::kafka::wire::metadata(bootstrap)?;
    let brokers: Vec<String> = metadata
        .brokers
        .iter()
        .map(|b| format!("{}:{}", b.host.as_str(), b.port))
        .collect();
    ensure!(
        !brokers.is_empty() && brokers.iter().all(|b| !direct.split(',').any(|d| d == b)),
        "{} hands clients the brokers' own addresses {brokers:?}: traffic would bypass it",
        route.label()
    );
    Ok(())
}

/// The auditing proxies delivered every event they queued; the masking proxy masked every
/// record it served.
fn verify_audit_and_masking(lanes: &[Lane], options: &Options) -> Result<()> {
    for lane in lanes {
        let Peer::Streamward(proxy) = &lane.peer else {
            continue;
        };
        if lane.route == Route::Streamward {
            continue;
        }
        let queued = proxy.metric("streamward_sidecar_audit_events_total{outcome=\"queued\"}")?;
        ensure!(queued > 0.0, "{} queued no audit event", lane.route.label());
        wait_for("the audit spool to drain", Duration::from_secs(300), || {
            let delivered =
                proxy.metric("streamward_sidecar_audit_events_total{outcome=\"delivered\"}")?;
            Ok((delivered >= queued).then_some(()))
        })?;
        if lane.route == Route::StreamwardMasked {
            let masked = proxy.metric("streamward_sidecar_masked_records_total")?;
            let served = (options.records
                * options.rounds as u64
                * options.compressions.len() as u64) as f64;
            ensure!(
                masked >= served,
                "the masking proxy masked {masked} records, expected at least {served}"
            );
        }
    }
    Ok(())
}

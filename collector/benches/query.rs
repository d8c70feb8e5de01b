//! `just bench-query`: how long the collector's reads take over a store of 1,000,000 events
//! written through the real store code (64 MiB segments, as `serve` seals them): a narrow query
//! (one workload, one hour) before and after the segments are indexed, a full-range query with
//! a limit, one session's timeline, aggregations by decision and by hour, and `verify`; then,
//! given the binaries, the whole-day report of `kubectl streamward evidence` against a
//! `streamward-collector serve` on that store (over HTTP: its verify, aggregations and up to
//! 100,000 events, and the report written). Prints a markdown table.
//!
//! Flags (after `--`): `--events N` (default 1000000), `--dir PATH` (default a temporary
//! folder, removed afterwards), `--collector PATH` and `--plugin PATH` (release builds of
//! `streamward-collector` and `kubectl-streamward`; `just bench-query` passes them).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use streamward_api::audit::{
    AuditEvent, Client, Decision, Identity, Payload, Request, RequestRecord, Resource,
};
use streamward_collector::aggregate::{Aggregation, Dimension};
use streamward_collector::checkpoint::PublicKey;
use streamward_collector::query::{self, Filter, Format, Scanned};
use streamward_collector::store::{self, Prepared, Store};
use streamward_collector::{timeline, verify};
use streamward_e2e::process::Process;
use streamward_e2e::{net, wait_for};

const IDENTITIES: usize = 200;
const TOPICS: usize = 100;
/// Events per session: sessions change every this many events of one workload.
const SESSION_EVENTS: usize = 100;
const DAY: i64 = 86_400;
const START: i64 = 1_796_083_200; // 2026-12-01T00:00:00Z

fn flag(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// Event `n` of `total`: spread evenly over one day, round-robin over the workloads.
fn event(n: usize, total: usize, sequences: &mut HashMap<String, u64>) -> AuditEvent {
    let identity = n % IDENTITIES;
    let namespace = format!("team-{}", identity / 5);
    let service_account = format!("app-{}", identity % 5);
    let session = format!("{identity:03}-{:06}", (n / IDENTITIES) / SESSION_EVENTS);
    let sequence = sequences.entry(session.clone()).or_default();
    *sequence += 1;
    let time = Timestamp::from_second(START + (n as i64 * DAY) / total as i64).unwrap_or_default();
    let (effect, dry_run) = match n % 100 {
        0..=6 => ("Deny", false),
        7 | 8 => ("Partial", false),
        9 => ("Allow", true),
        _ => ("Allow", false),
    };
    let (api, operation) = if n.is_multiple_of(3) {
        ("Fetch", "Read")
    } else {
        ("Produce", "Write")
    };
    AuditEvent::request(
        time,
        RequestRecord {
            session_id: session,
            sequence: *sequence,
            identity: Identity {
                namespace: namespace.clone(),
                service_account,
                pod: Some(format!("app-{identity}-7d9f8c6b5-x2x4q")),
                user: n
                    .is_multiple_of(4)
                    .then(|| format!("user-{}", identity % 17)),
                groups: vec![],
            },
            client: Client {
                client_id: Some("rdkafka".into()),
                software_name: Some("librdkafka".into()),
                software_version: Some("2.16.1".into()),
                address: format!("10.0.{}.{}:50312", identity / 250, identity % 250),
            },
            request: Request {
                api_key: api.into(),
                api_key_code: if api == "Fetch" { 1 } else { 0 },
                api_version: 11,
                correlation_id: n as i32,
            },
            resources: vec![Resource {
                resource_type: "Topic".into(),
                name: format!("topic-{}", (n / 7) % TOPICS),
                operation: operation.into(),
                effect: effect.into(),
                partitions: vec![(n % 6) as i32],
                records: Some(10),
                bytes: Some(10_240),
                offsets: None,
                stored: Vec::new(),
            }],
            decision: Decision {
                effect: effect.into(),
                rule: format!("StreamPolicy/{namespace} rule r{}", n % 4),
                config_hash: "sha256:3f9a1c0e5b7d".into(),
                reason: (effect != "Allow" || dry_run).then(|| "no rule allows it".into()),
                dry_run,
            },
            masking: vec![],
            approval: None,
            payload: Some(Payload {
                sha256: Some(format!("{n:064x}")),
                records: None,
            }),
        },
    )
}

struct Row {
    what: String,
    took: Duration,
    result: String,
    scanned: Option<Scanned>,
}

fn timed<T>(
    what: &str,
    rows: &mut Vec<Row>,
    run: impl FnOnce() -> (T, Option<Scanned>, String),
) -> T {
    let started = Instant::now();
    let (value, scanned, result) = run();
    let took = started.elapsed();
    eprintln!("{what}: {took:?} ({result})");
    rows.push(Row {
        what: what.into(),
        took,
        result,
        scanned,
    });
    value
}

fn filter(params: &[(&str, &str)]) -> Filter {
    Filter::from_params(params.iter().copied()).expect("a valid filter")
}

fn count(dir: &Path, filter: &Filter, limit: Option<usize>) -> (usize, Option<Scanned>, String) {
    let mut writer = query::Writer::new(std::io::sink(), Format::Ndjson);
    let scanned =
        query::scan_segments(dir, filter, limit, |event| writer.write(event)).expect("a scan");
    let _ = writer.finish();
    (
        scanned.matched,
        Some(scanned),
        format!("{} events", scanned.matched),
    )
}

fn aggregate(dir: &Path, by: &str) -> ((), Option<Scanned>, String) {
    let mut aggregation = Aggregation::new(Dimension::parse_list(by).expect("dimensions"));
    let scanned = query::scan_segments(dir, &Filter::default(), None, |event| {
        aggregation.add(event);
        Ok(())
    })
    .expect("a scan");
    let groups = aggregation.finish(100_000)["groups"]
        .as_array()
        .map_or(0, Vec::len);
    ((), Some(scanned), format!("{groups} groups"))
}

fn main() {
    let total: usize = flag("--events")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let temp = tempfile::tempdir().expect("a temporary folder");
    let dir = flag("--dir").map_or_else(|| temp.path().to_path_buf(), Into::into);
    std::fs::create_dir_all(&dir).expect("the data folder");
    let key = dir.join(store::SIGNING_KEY);
    let mut rows = Vec::new();

    let public = timed(
        &format!("write {total} events (batches of 1000)"),
        &mut rows,
        || {
            let mut store = Store::open(&dir, &key, 64 * 1024 * 1024).expect("the store");
            let mut sequences = HashMap::new();
            let mut n = 0;
            while n < total {
                let batch: Vec<Prepared> = (n..(n + 1000).min(total))
                    .map(|i| {
                        let event = event(i, total, &mut sequences);
                        Prepared::new(
                            store::event_identity(&event),
                            event.id.clone(),
                            serde_json::to_string(&event).expect("JSON"),
                        )
                    })
                    .collect();
                n += batch.len();
                store.append(&[batch]).expect("an append");
                // As the writer does between groups.
                if n.is_multiple_of(100_000) {
                    store.checkpoint().expect("a checkpoint");
                }
            }
            store.stop().expect("the last checkpoint");
            let bytes: u64 = store::segment_files(&dir)
                .expect("segments")
                .iter()
                .filter_map(|p| std::fs::metadata(p).ok())
                .map(|m| m.len())
                .sum();
            let segments = store::segment_files(&dir).expect("segments").len();
            (
                store.public_key(),
                None,
                format!("{} MiB in {segments} segments", bytes / (1024 * 1024)),
            )
        },
    );

    // Workload 42 (team-8/app-2), 10:00–11:00.
    let narrow = filter(&[
        ("namespace", "team-8"),
        ("serviceAccount", "app-2"),
        ("since", "2026-12-01T10:00:00Z"),
        ("until", "2026-12-01T11:00:00Z"),
    ]);
    timed(
        "narrow query, no index yet (builds them)",
        &mut rows,
        || count(&dir, &narrow, None),
    );
    timed("narrow query: one workload, one hour", &mut rows, || {
        count(&dir, &narrow, None)
    });
    timed("full range, limit 1000", &mut rows, || {
        count(&dir, &Filter::default(), Some(1000))
    });
    timed("denied, one topic, whole day", &mut rows, || {
        count(
            &dir,
            &filter(&[("decision", "Deny"), ("topic", "topic-42")]),
            None,
        )
    });
    let session = "042-000020";
    timed(&format!("session timeline ({session})"), &mut rows, || {
        let mut events = Vec::new();
        let scanned = query::scan_segments(&dir, &filter(&[("session", session)]), None, |e| {
            events.push(e.clone());
            Ok(())
        })
        .expect("a scan");
        let steps = timeline::build(session, events).map_or(0, |t| t.events);
        ((), Some(scanned), format!("{steps} steps"))
    });
    timed("aggregate by decision", &mut rows, || {
        aggregate(&dir, "decision")
    });
    timed("aggregate by hour", &mut rows, || aggregate(&dir, "hour"));
    timed("aggregate by hour,decision", &mut rows, || {
        aggregate(&dir, "hour,decision")
    });
    timed("verify", &mut rows, || {
        let key = PublicKey::read(&dir.join(store::PUBLIC_KEY)).unwrap_or(public);
        let report = verify::verify(&dir, &key, Duration::from_secs(900)).expect("verify");
        (
            (),
            None,
            format!("ok={} ({} records)", report.ok, report.records),
        )
    });

    if let (Some(collector), Some(plugin)) = (flag("--collector"), flag("--plugin")) {
        evidence(&dir, collector.into(), plugin.into(), &mut rows);
    } else {
        eprintln!("no --collector and --plugin: the evidence report is not timed");
    }

    println!("\n| what | time | result | segments read / skipped |");
    println!("|---|---:|---|---|");
    for row in rows {
        let segments = row
            .scanned
            .map(|s| format!("{} / {}", s.read, s.skipped))
            .unwrap_or_default();
        println!(
            "| {} | {:.3} s | {} | {} |",
            row.what,
            row.took.as_secs_f64(),
            row.result,
            segments
        );
    }
}

/// Times `kubectl streamward evidence` over the whole day against the collector serving `dir`.
fn evidence(dir: &Path, collector: PathBuf, plugin: PathBuf, rows: &mut Vec<Row>) {
    const QUERY_TOKEN: &str = "bench-query-token-0123456789abcdef";
    let work = tempfile::tempdir().expect("a temporary folder");
    let tokens = work.path().join("tokens");
    let query_tokens = work.path().join("query-tokens");
    std::fs::write(&tokens, "bench-proxy-token-0123456789abcdef\n").expect("the token file");
    std::fs::write(&query_tokens, format!("{QUERY_TOKEN}\n")).expect("the query token file");
    let addr = format!("127.0.0.1:{}", net::free_port().expect("a free port"));
    let mut command = Command::new(collector);
    command
        .arg("serve")
        .arg("--data")
        .arg(dir)
        .args(["--listen", &addr])
        .arg("--token-file")
        .arg(&tokens)
        .arg("--query-token-file")
        .arg(&query_tokens);
    let mut server = Process::spawn(
        "streamward-collector",
        command,
        &work.path().join("collector.log"),
    )
    .expect("the collector");
    wait_for("the collector to listen", Duration::from_secs(120), || {
        server.check_running()?;
        Ok(net::http_get(&addr, "/healthz")
            .ok()
            .filter(|(status, _)| *status == 200))
    })
    .expect("the collector answers");
    let report = work.path().join("evidence");
    timed(
        "evidence report, whole day (`kubectl streamward evidence`)",
        rows,
        || {
            let output = Command::new(&plugin)
                .arg("evidence")
                .args(["--collector-url", &format!("http://{addr}")])
                .args(["--token", QUERY_TOKEN])
                .args([
                    "--from",
                    "2026-12-01T00:00:00Z",
                    "--to",
                    "2026-12-02T00:00:00Z",
                ])
                .arg("-o")
                .arg(&report)
                .output()
                .expect("running kubectl-streamward");
            assert!(
                output.status.success(),
                "kubectl streamward evidence failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            let json: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(report.join("evidence.json")).expect("evidence.json"),
            )
            .expect("evidence.json is JSON");
            (
                (),
                None,
                format!(
                    "verified={}, {} events read{}",
                    json["verified"],
                    json["eventsRead"],
                    if json["eventsTruncated"] == true {
                        " (the report's cap)"
                    } else {
                        ""
                    }
                ),
            )
        },
    );
}

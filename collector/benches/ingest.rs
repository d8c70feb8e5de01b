//! `just bench-collector`: how many audit events a second the real collector process (release
//! build) durably stores over HTTP, with several concurrent senders posting batches of 500
//! (each answered only after write + fdatasync), then how long `verify` takes over the result.
//!
//! Flags (after `--`): `--events N` (default 200000), `--senders N` (8), `--batch N` (500).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jiff::Timestamp;
use streamward_api::audit::{
    AuditEvent, Client as KafkaClient, Decision, Identity, Request, RequestRecord, Resource,
};

const TOKEN: &str = "bench-token-0123456789abcdef";

fn flag(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn event(session: &str, sequence: u64) -> AuditEvent {
    AuditEvent::request(
        Timestamp::now(),
        RequestRecord {
            session_id: session.to_string(),
            sequence,
            identity: Identity {
                namespace: "shop".into(),
                service_account: "orders-app".into(),
                pod: Some("orders-7d9f8c6b5-x2x4q".into()),
                user: None,
                groups: vec![],
            },
            client: KafkaClient {
                client_id: Some("rdkafka".into()),
                software_name: Some("librdkafka".into()),
                software_version: Some("2.16.1".into()),
                address: "127.0.0.1:50312".into(),
            },
            request: Request {
                api_key: "Produce".into(),
                api_key_code: 0,
                api_version: 11,
                correlation_id: sequence as i32,
            },
            resources: vec![Resource {
                resource_type: "Topic".into(),
                name: "orders.created".into(),
                operation: "Write".into(),
                effect: "Allow".into(),
                partitions: vec![0, 1, 2],
                records: Some(10),
                bytes: Some(4096),
                offsets: None,
                stored: Vec::new(),
            }],
            decision: Decision {
                effect: "Allow".into(),
                rule: "StreamPolicy/orders rule producers".into(),
                config_hash: "sha256:5f1e0c3a9b7d".into(),
                reason: None,
                dry_run: false,
            },
            masking: vec![],
            approval: None,
            payload: None,
        },
    )
}

fn main() {
    let events = flag("--events", 200_000);
    let senders = flag("--senders", 8).max(1);
    let batch = flag("--batch", 500).max(1);
    let dir = tempfile::tempdir().expect("a temporary folder");
    std::fs::write(dir.path().join("tokens"), format!("{TOKEN}\n")).expect("writing tokens");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let data = dir.path().join("data");
    let mut collector = Command::new(env!("CARGO_BIN_EXE_streamward-collector"))
        .args(["serve", "--listen", &addr, "--data"])
        .arg(&data)
        .arg("--token-file")
        .arg(dir.path().join("tokens"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("starting the collector");

    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let result = runtime.block_on(async {
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let url: http::Uri = format!("http://{addr}/v1/events").parse().expect("a URL");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = client
                .get(format!("http://{addr}/readyz").parse().expect("a URL"))
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "the collector did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // Bodies are made before the clock starts: the collector is measured, not serde here.
        let per_sender = events / senders;
        let mut bodies = Vec::new();
        for sender in 0..senders {
            let session = format!("bench-session-{sender}");
            let mut mine = Vec::new();
            let mut sequence = 1;
            while sequence <= per_sender as u64 {
                let end = (sequence + batch as u64).min(per_sender as u64 + 1);
                let batch: Vec<AuditEvent> = (sequence..end).map(|n| event(&session, n)).collect();
                mine.push(Bytes::from(serde_json::to_vec(&batch).expect("JSON")));
                sequence = end;
            }
            bodies.push(mine);
        }
        let bytes: usize = bodies.iter().flatten().map(Bytes::len).sum();

        let started = Instant::now();
        let mut tasks = Vec::new();
        for mine in bodies {
            let client = client.clone();
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                for body in mine {
                    let request = http::Request::post(url.clone())
                        .header("content-type", "application/cloudevents-batch+json")
                        .header("authorization", format!("Bearer {TOKEN}"))
                        .body(Full::new(body))
                        .expect("a request");
                    let sent = Instant::now();
                    let response = client
                        .request(request)
                        .await
                        .expect("the collector answers");
                    let status = response.status();
                    let answer = response
                        .into_body()
                        .collect()
                        .await
                        .expect("a body")
                        .to_bytes();
                    assert!(
                        status.is_success(),
                        "{status}: {}",
                        String::from_utf8_lossy(&answer)
                    );
                    latencies.push(sent.elapsed());
                }
                latencies
            }));
        }
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await.expect("a sender"));
        }
        (started.elapsed(), latencies, per_sender * senders, bytes)
    });
    let (elapsed, mut latencies, sent, bytes) = result;
    latencies.sort();
    let p = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];

    let started = Instant::now();
    let verify = Command::new(env!("CARGO_BIN_EXE_streamward-collector"))
        .args(["verify", "--data"])
        .arg(&data)
        .output()
        .expect("running verify");
    let verify_time = started.elapsed();
    let _ = collector.kill();
    let _ = collector.wait();

    println!("collector ingest over HTTP, release build, batches of {batch}, {senders} senders");
    println!(
        "  events stored: {sent} in {:.2} s = {:.0} events/s ({:.1} MB/s of JSON)",
        elapsed.as_secs_f64(),
        sent as f64 / elapsed.as_secs_f64(),
        bytes as f64 / elapsed.as_secs_f64() / 1e6
    );
    println!(
        "  batch round trip (write + fdatasync before 200): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        p(0.50).as_secs_f64() * 1e3,
        p(0.99).as_secs_f64() * 1e3,
        latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1e3)
    );
    println!(
        "  verify over the store: {:.2} s ({:.0} records/s): {}",
        verify_time.as_secs_f64(),
        sent as f64 / verify_time.as_secs_f64(),
        String::from_utf8_lossy(&verify.stdout).trim()
    );
    assert!(verify.status.success(), "verify failed");
}

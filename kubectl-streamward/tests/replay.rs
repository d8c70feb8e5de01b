//! `kubectl streamward replay` against the real proxy, the real collector and a real Kafka: a
//! consumer's session replayed shows the records masked as they were delivered and verifies
//! them against Kafka; a record altered afterwards in the broker's log on disk is named.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use streamward_api::audit::AuditEvent;
use streamward_e2e::collector::Collector;
use streamward_e2e::kafka::KafkaCluster;
use streamward_e2e::sidecar::Sidecar;
use streamward_e2e::{cache, clients, unique_name, wait_for, workspace_binaries};

const NS: &str = "shop";
const SA: &str = "orders-app";
const TOKEN: &str = "replay-proxy-token-0123456789";
const QUERY_TOKEN: &str = "replay-query-token-0123456789";
/// The card numbers of the three orders; the second is the one altered on disk.
const CARDS: [&str; 3] = ["4111111111111111", "4539578763621486", "5500005555555559"];
const ALTERED: &str = "4539578763629999";

/// The workload's resources: it may read and write `orders.*`, its audit level keeps the
/// masked values, and a MaskingRule masks the card number of every record it consumes.
fn resources(bootstrap: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "target.yaml",
            format!(
                "apiVersion: streamward.io/v1alpha1
kind: StreamTarget
metadata: {{name: kafka, namespace: {NS}}}
spec:
  bootstrapServers: [\"{bootstrap}\"]
"
            ),
        ),
        (
            "policy.yaml",
            format!(
                "apiVersion: streamward.io/v1alpha1
kind: StreamPolicy
metadata: {{name: orders, namespace: {NS}}}
spec:
  subjects:
    serviceAccounts: [{SA}]
  auditLevel: MaskedPayload
  rules:
  - name: orders-topics
    resources: [{{resourceType: Topic, name: orders., patternType: Prefixed}}]
    operations: [Read, Write, Create, Describe]
    effect: Allow
  - name: groups
    resources: [{{resourceType: Group, name: '*'}}]
    operations: [Read, Describe]
    effect: Allow
  - name: idempotence
    resources: [{{resourceType: Cluster, name: kafka-cluster}}]
    operations: [IdempotentWrite]
    effect: Allow
"
            ),
        ),
        (
            "masking.yaml",
            format!(
                "apiVersion: streamward.io/v1alpha1
kind: MaskingRule
metadata: {{name: cards, namespace: {NS}}}
spec:
  topics: [{{name: orders., patternType: Prefixed}}]
  direction: Consume
  fields:
  - path: card
    strategy: {{type: KeepLast, count: 4}}
"
            ),
        ),
    ]
}

/// `kubectl-streamward ARGS` against the collector: (exit code, stdout, stderr).
fn plugin(binary: &Path, collector: &Collector, args: &[&str]) -> (i32, String, String) {
    let url = format!("http://{}", collector.addr());
    let output = Command::new(binary)
        .args(args)
        .args(["--collector-url", &url, "--token", QUERY_TOKEN])
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The stored events of `api` naming `topic` whose records the proxy digested: `records` of
/// them in all.
fn sessions_with_records(
    binary: &Path,
    collector: &Collector,
    topic: &str,
    api: &str,
    records: u64,
) -> Vec<String> {
    wait_for(
        &format!("the {api} events of {topic} with their records"),
        Duration::from_secs(60),
        || {
            let (code, out, err) = plugin(
                binary,
                collector,
                &["audit", "--topic", topic, "--api", api, "-o", "json"],
            );
            assert_eq!(code, 0, "{out}{err}");
            let events: Vec<AuditEvent> = out
                .lines()
                .map(|line| serde_json::from_str(line).unwrap())
                .collect();
            let mut sessions = Vec::new();
            let mut seen = 0;
            for record in events.iter().filter_map(AuditEvent::record) {
                let stored: u64 = record
                    .resources
                    .iter()
                    .flat_map(|r| &r.stored)
                    .map(|s| s.records)
                    .sum();
                if stored > 0 && !sessions.contains(&record.session_id) {
                    sessions.push(record.session_id.clone());
                }
                seen += stored;
            }
            Ok((seen >= records).then_some(sessions))
        },
    )
    .unwrap()
}

/// The segment of partition 0 of `topic` in the broker's log folder.
fn segment(kafka: &KafkaCluster, topic: &str) -> PathBuf {
    kafka.nodes()[0]
        .log_dir()
        .join(format!("{topic}-0"))
        .join("00000000000000000000.log")
}

#[test]
fn replay_shows_what_a_consumer_got_masked_and_names_a_record_altered_on_disk() {
    let binaries = workspace_binaries(&[
        ("streamward-sidecar", "streamward-sidecar"),
        ("streamward-collector", "streamward-collector"),
    ])
    .unwrap();
    let plugin_binary = Path::new(env!("CARGO_BIN_EXE_kubectl-streamward"));
    let run = cache::run_dir("replay").unwrap();
    let kafka = KafkaCluster::start(1).unwrap();
    let collector = Collector::start_with_query_token(
        &binaries[1],
        run.path(),
        TOKEN,
        &format!("{NS}/{SA}"),
        QUERY_TOKEN,
    )
    .unwrap();
    std::fs::write(run.path().join("token"), format!("{TOKEN}\n")).unwrap();
    let url = format!("http://{}", collector.addr());
    let token_file = run.path().join("token").display().to_string();
    let spool = run.path().join("spool").display().to_string();
    let proxy = Sidecar::start_with_args(
        &binaries[0],
        &resources(&kafka.bootstrap()),
        NS,
        SA,
        &[
            "--audit-url",
            &url,
            "--audit-token-file",
            &token_file,
            "--audit-spool",
            &spool,
        ],
    )
    .unwrap();
    let topic = unique_name("orders.replay");

    // Three orders, produced through the proxy uncompressed (so the test can find one on disk).
    let orders: Vec<String> = CARDS
        .iter()
        .enumerate()
        .map(|(i, card)| {
            serde_json::json!({"id": format!("o-{}", i + 1), "card": card}).to_string()
        })
        .collect();
    let mut producer = clients::confluent_kafka()
        .unwrap()
        .args([
            "produce",
            "--bootstrap",
            &proxy.bootstrap,
            "--topic",
            &topic,
        ])
        .args(["--stdin", "--compression", "none", "--timeout", "20"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    producer
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{}\n", orders.join("\n")).as_bytes())
        .unwrap();
    let out = producer.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The consumer gets the card numbers masked.
    let consumed: serde_json::Value = clients::report(
        clients::confluent_kafka()
            .unwrap()
            .args([
                "consume",
                "--bootstrap",
                &proxy.bootstrap,
                "--topic",
                &topic,
            ])
            .args(["--group", "orders-replay", "--count", "3", "--print-values"]),
    )
    .unwrap();
    let values = consumed["values"].to_string();
    assert!(values.contains("************1486"), "{values}");
    assert!(!values.contains(CARDS[1]), "{values}");

    let readers = sessions_with_records(plugin_binary, &collector, &topic, "Fetch", 3);
    let writers = sessions_with_records(plugin_binary, &collector, &topic, "Produce", 3);
    assert_eq!(readers.len(), 1, "one consumer session read the records");
    assert_eq!(writers.len(), 1, "one producer session wrote them");
    let bootstrap = kafka.bootstrap();
    let replay = |session: &str, output: &str| {
        plugin(
            plugin_binary,
            &collector,
            &[
                "replay",
                session,
                "--bootstrap-server",
                &bootstrap,
                "-o",
                output,
            ],
        )
    };

    // The consumer's session: the records as delivered (masked), exactly what Kafka holds.
    let (code, out, err) = replay(&readers[0], "text");
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("Session {} of {NS}/{SA}", readers[0])),
        "{out}"
    );
    assert!(out.contains("Fetch v"), "{out}");
    assert!(
        out.contains("records as delivered (from the audit trail):"),
        "{out}"
    );
    assert!(out.contains("\"card\":\"************1486\""), "{out}");
    assert!(out.contains("masked: "), "{out}");
    for card in CARDS {
        assert!(
            !out.contains(card),
            "the raw card {card} in the replay:\n{out}"
        );
    }
    assert!(out.contains(&format!("Kafka {topic}-0 offsets ")), "{out}");
    assert!(out.contains("exactly what was read"), "{out}");
    assert!(out.contains("all exactly as recorded"), "{out}");
    let (code, out, err) = replay(&readers[0], "json");
    assert_eq!(code, 0, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let same: u64 = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["outcome"] == "same")
        .map(|c| c["records"].as_u64().unwrap())
        .sum();
    assert_eq!(same, 3, "{out}");

    // The producer's session: what it wrote is what Kafka holds, at the offsets it was given.
    let (code, out, err) = replay(&writers[0], "text");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Produce v"), "{out}");
    assert!(out.contains(&format!("Kafka {topic}-0 offsets ")), "{out}");
    assert!(out.contains("exactly what was written"), "{out}");

    // Someone with access to the broker's disk changes the second order's card number.
    let path = segment(&kafka, &topic);
    let log = std::fs::read(&path).unwrap();
    let at = log
        .windows(CARDS[1].len())
        .position(|w| w == CARDS[1].as_bytes())
        .unwrap_or_else(|| panic!("{} not in {}", CARDS[1], path.display()));
    let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.seek(SeekFrom::Start(at as u64)).unwrap();
    file.write_all(ALTERED.as_bytes()).unwrap();
    file.sync_all().unwrap();

    // Replay names it, for the consumer who read it and the producer who wrote it, and fails.
    for (session, what) in [(&readers[0], "read"), (&writers[0], "written")] {
        let (code, out, err) = replay(session, "text");
        assert_eq!(code, 1, "{out}{err}");
        assert!(
            out.contains(&format!(
                "DIFFERS: the record at offset 1 is not what was {what}"
            )),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "differ from what the session read or wrote: {topic}-0 offset 1"
            )),
            "{out}"
        );
    }
    let (code, out, _) = replay(&readers[0], "json");
    assert_eq!(code, 1);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["differs"], true);
    let differs = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["outcome"] == "differs")
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(differs["offset"], 1);
    assert_eq!(differs["through"], 1);
    assert_eq!(differs["topic"], topic.as_str());
    drop(proxy);
}

//! Audit end to end: real Kafka, the real proxy and the real collector (`streamward-collector
//! serve`), clients users run. Every request a client sends must reach the collector as one
//! event, in order, even when the collector is killed under load.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{
    Sidecar, consume, create_topic, kafka, kafka_tool, orders_policy, produce, target_yaml,
};
use streamward_api::audit::{AuditEvent, EventData};
use streamward_e2e::{cache, net, unique_name, workspace_binary};

const NS: &str = "team-a";
const SA: &str = "orders-app";
const TOKEN: &str = "audit-e2e-token-0123456789";

fn collector_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        workspace_binary("streamward-collector", "streamward-collector")
            .expect("building streamward-collector")
    })
}

fn policy_yaml() -> String {
    orders_policy(NS, SA, "  auditLevel: MaskedPayload\n")
}

/// The real collector, with the query the tests read its events back with.
struct Collector(streamward_e2e::collector::Collector);

impl Collector {
    fn start(dir: &Path) -> Collector {
        let workload = format!("{NS}/{SA}");
        Collector(
            streamward_e2e::collector::Collector::start(collector_binary(), dir, TOKEN, &workload)
                .unwrap(),
        )
    }

    fn restart(&mut self) {
        self.0.restart().unwrap();
    }

    fn kill(&mut self) {
        self.0.kill();
    }

    /// Every stored event of the test's workload, via `streamward-collector query`.
    fn events(&self) -> Vec<AuditEvent> {
        let out = Command::new(collector_binary())
            .arg("query")
            .arg("--data")
            .arg(self.0.data())
            .args(["--namespace", NS, "--format", "ndjson"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "query: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

fn sidecar(collector: &Collector, dir: &Path) -> Sidecar {
    sidecar_with(collector, dir, &[], &[])
}

/// The audited proxy with more policy files (MaskingRules, for one) and more flags.
fn sidecar_with(
    collector: &Collector,
    dir: &Path,
    policies: &[(&str, String)],
    flags: &[&str],
) -> Sidecar {
    std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
    let url = format!("http://{}", collector.0.addr());
    let token = dir.join("token").display().to_string();
    let spool = dir.join("spool").display().to_string();
    let mut files = vec![
        ("target.yaml", target_yaml(NS, &kafka().bootstrap())),
        ("policy.yaml", policy_yaml()),
    ];
    files.extend(policies.iter().cloned());
    common::sidecar_with_args(
        &files,
        NS,
        SA,
        &[
            "--audit-url",
            &url,
            "--audit-token-file",
            &token,
            "--audit-spool",
            &spool,
        ]
        .into_iter()
        .chain(flags.iter().copied())
        .collect::<Vec<_>>(),
    )
}

/// The proxy's own count of requests, per API.
fn requests_by_api(proxy: &Sidecar) -> BTreeMap<String, u64> {
    let (_, body) = net::http_get(&proxy.admin, "/metrics").unwrap();
    body.lines()
        .filter_map(|l| l.strip_prefix("streamward_sidecar_requests_total{api=\""))
        .filter_map(|l| {
            let (api, rest) = l.split_once('"')?;
            Some((api.to_string(), rest.rsplit(' ').next()?.parse().ok()?))
        })
        .collect()
}

fn events_by_api(events: &[AuditEvent]) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for record in events.iter().filter_map(AuditEvent::record) {
        *counts.entry(record.request.api_key.clone()).or_default() += 1;
    }
    counts
}

/// Waits until the collector holds one event per request the proxy counted; returns them.
fn wait_for_every_event(
    collector: &Collector,
    proxy: &Sidecar,
    within: Duration,
) -> Vec<AuditEvent> {
    let deadline = Instant::now() + within;
    loop {
        let expected = requests_by_api(proxy);
        let events = collector.events();
        let got = events_by_api(&events);
        if got == expected {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "the collector has {got:?}, the proxy counted {expected:?}\n{}",
            proxy.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Per session, the sequence numbers are exactly 1..=n: no gaps, no duplicates.
fn assert_sessions_complete(events: &[AuditEvent]) -> usize {
    let ids: HashSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), events.len(), "an event was stored twice");
    let mut sessions: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for record in events.iter().filter_map(AuditEvent::record) {
        sessions
            .entry(record.session_id.as_str())
            .or_default()
            .push(record.sequence);
    }
    for (session, sequences) in &mut sessions {
        sequences.sort_unstable();
        let expected: Vec<u64> = (1..=sequences.len() as u64).collect();
        assert_eq!(
            *sequences, expected,
            "session {session} has gaps or duplicates"
        );
    }
    sessions.len()
}

#[test]
fn every_request_yields_exactly_one_event_with_identity_topic_and_decision() {
    let run = cache::run_dir("audit-e2e").unwrap();
    let collector = Collector::start(run.path());
    let proxy = sidecar(&collector, run.path());
    let topic = unique_name("orders.audit");
    let denied = unique_name("payments.audit");
    for name in [&topic, &denied] {
        create_topic(kafka(), name, 2, 1);
    }

    // Produce with kcat and confluent-kafka, consume, a refused produce, a refused deletion.
    let out = streamward_e2e::clients::kcat()
        .unwrap()
        .args(["-P", "-b", &proxy.bootstrap, "-t", &topic, "-X", "acks=all"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut kcat| {
            use std::io::Write;
            kcat.stdin.take().unwrap().write_all(b"a\nb\nc\n").unwrap();
            kcat.wait_with_output()
        })
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = produce(&proxy.bootstrap, &topic, "ck", 100, &[]);
    assert_eq!(report.delivered, 100, "{report:?}");
    let consumed = consume(&proxy.bootstrap, &topic, &unique_name("orders-g"), 103, &[]);
    assert_eq!(consumed.count, 103, "{consumed:?}");
    let refused = produce(&proxy.bootstrap, &denied, "x", 3, &[]);
    assert_eq!(refused.delivered, 0, "{refused:?}");
    let (ok, out) = kafka_tool(
        kafka(),
        "org.apache.kafka.tools.TopicCommand",
        &[
            "--bootstrap-server",
            &proxy.bootstrap,
            "--delete",
            "--topic",
            &topic,
        ],
    );
    assert!(!ok, "the deletion went through: {out}");

    let events = wait_for_every_event(&collector, &proxy, Duration::from_secs(60));
    let sessions = assert_sessions_complete(&events);
    assert!(
        sessions >= 5,
        "expected a session per client connection, got {sessions}"
    );

    for event in &events {
        let record = event
            .record()
            .expect("only request events (nothing was dropped)");
        assert_eq!(record.identity.namespace, NS);
        assert_eq!(record.identity.service_account, SA);
        assert!(record.client.address.starts_with("127.0.0.1:"));
    }
    let records: Vec<_> = events.iter().filter_map(AuditEvent::record).collect();

    // Allowed produce: the topic, the rule, records and a payload digest.
    let written: u64 = records
        .iter()
        .filter(|r| r.request.api_key == "Produce" && r.decision.effect == "Allow")
        .flat_map(|r| &r.resources)
        .filter(|res| res.name == topic && res.operation == "Write")
        .filter_map(|res| res.records)
        .sum();
    assert_eq!(written, 103, "records produced, as the events count them");
    let produce = records
        .iter()
        .find(|r| r.request.api_key == "Produce" && r.decision.effect == "Allow")
        .unwrap();
    assert_eq!(
        produce.decision.rule,
        "StreamPolicy/orders-team rule orders-topics"
    );
    assert!(produce.decision.config_hash.starts_with("sha256:"));
    assert!(
        produce
            .payload
            .as_ref()
            .and_then(|p| p.sha256.as_ref())
            .is_some()
    );
    // MaskedPayload: the values themselves (kcat's lines are not JSON, so strings).
    let values: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r.request.api_key == "Produce")
        .filter_map(|r| r.payload.as_ref()?.records.as_ref())
        .flatten()
        .collect();
    for line in ["a", "b", "c", "ck-0"] {
        assert!(
            values.contains(&&serde_json::json!(line)),
            "{line} not in {values:?}"
        );
    }
    // librdkafka names itself in ApiVersions (KIP-511).
    assert!(records.iter().any(|r| r.client.software_name.is_some()));

    // Consumed: Fetch events read the topic, with offsets.
    let read: u64 = records
        .iter()
        .filter(|r| r.request.api_key == "Fetch")
        .flat_map(|r| &r.resources)
        .filter(|res| res.name == topic && res.operation == "Read")
        .filter_map(|res| res.records)
        .sum();
    assert!(read >= 103, "fetched records counted: {read}");

    // The refused topic: librdkafka learns from Metadata that it may not see it (and so never
    // sends the Produce); the event says so, naming the default deny.
    let refused_topic = records
        .iter()
        .find(|r| {
            r.resources
                .iter()
                .any(|res| res.name == denied && res.effect == "Deny")
        })
        .expect("an event refusing the payments topic");
    assert_eq!(refused_topic.decision.rule, "default deny");
    let deletion = records
        .iter()
        .find(|r| r.request.api_key == "DeleteTopics")
        .expect("an event for the refused deletion");
    assert_eq!(deletion.decision.effect, "Deny");
    assert_eq!(
        deletion.decision.rule,
        "StreamPolicy/orders-team rule no-destructive-admin"
    );
    assert_eq!(deletion.resources[0].name, topic);
    assert!(deletion.decision.reason.is_some());
    assert!(records.iter().any(|r| r.request.api_key == "ApiVersions"));
}

#[test]
fn killing_the_collector_for_30_seconds_under_load_loses_no_event() {
    let run = cache::run_dir("audit-outage").unwrap();
    let mut collector = Collector::start(run.path());
    let proxy = sidecar(&collector, run.path());
    let topic = unique_name("orders.outage");

    // Load: confluent-kafka producers, one after another, each a new session.
    let load = |seconds: u64| -> (usize, f64) {
        let started = Instant::now();
        let mut records = 0;
        while started.elapsed() < Duration::from_secs(seconds) {
            let report = produce(&proxy.bootstrap, &topic, "load", 2000, &[]);
            assert_eq!(report.errors, Vec::<String>::new());
            records += report.delivered;
        }
        (records, records as f64 / started.elapsed().as_secs_f64())
    };
    // The first producer creates the topic and warms the broker up: not part of the comparison.
    load(1);
    let (_, before) = load(10);
    collector.kill();
    let (during_records, during) = load(30);
    collector.restart();
    let (_, after) = load(5);
    eprintln!(
        "produce rate through the proxy: {before:.0} records/s with the collector up, \
         {during:.0} records/s while it was down ({during_records} records), {after:.0} after"
    );
    // The emitter must not hold the data path while the collector is away. A blocked or
    // back-pressured proxy would fall far below its rate with the collector up; half of it
    // leaves room for a busy 2-core machine (the numbers belong to `just bench-audit`).
    assert!(
        during >= before / 2.0,
        "the produce rate fell from {before:.0} to {during:.0} records/s during the outage"
    );

    let events = wait_for_every_event(&collector, &proxy, Duration::from_secs(120));
    assert_sessions_complete(&events);
    assert!(
        events
            .iter()
            .all(|e| matches!(e.data, EventData::Request(_))),
        "events were reported dropped"
    );
    assert_eq!(
        proxy
            .metric("streamward_sidecar_audit_events_total{outcome=\"dropped\"}")
            .unwrap(),
        0.0
    );
    assert!(
        proxy
            .metric("streamward_sidecar_audit_delivery_errors_total")
            .unwrap()
            > 0.0,
        "the outage was not noticed"
    );
}

/// Records the proxy forwarded to the broker, by the events of allowed Produce requests.
fn produced_records(events: &[AuditEvent], topic: &str) -> u64 {
    events
        .iter()
        .filter_map(AuditEvent::record)
        .filter(|r| r.request.api_key == "Produce" && r.decision.effect == "Allow")
        .flat_map(|r| &r.resources)
        .filter(|r| r.name == topic)
        .filter_map(|r| r.records)
        .sum()
}

/// Records in `topic`, read straight from the broker.
fn records_in(topic: &str, expected: usize) -> usize {
    consume(
        &kafka().bootstrap(),
        topic,
        &unique_name("count"),
        expected,
        &["--timeout", "20"],
    )
    .count
}

/// The spool of the AU-5 tests: a few dozen events.
const TINY_SPOOL: &str = "32768";

#[test]
fn with_audit_full_refuse_a_full_spool_refuses_requests_and_loses_no_forwarded_event() {
    let run = cache::run_dir("audit-full-refuse").unwrap();
    let mut collector = Collector::start(run.path());
    let proxy = sidecar_with(
        &collector,
        run.path(),
        &[],
        &[
            "--audit-spool-max-bytes",
            TINY_SPOOL,
            "--audit-full",
            "refuse",
        ],
    );
    let topic = unique_name("orders.au5");
    create_topic(kafka(), &topic, 1, 1);
    collector.kill();

    // Produce in small runs until the proxy starts refusing.
    let mut delivered = 0;
    let mut refusal = None;
    for run in 0..200 {
        let report = produce(&proxy.bootstrap, &topic, &format!("r{run}"), 5, &[]);
        delivered += report.delivered;
        if report.delivered < 5 {
            refusal = Some(report);
            break;
        }
    }
    let refusal = refusal.expect("the proxy never refused although the collector is away");
    assert!(
        refusal
            .errors
            .iter()
            .chain(&refusal.client_errors)
            .any(|e| e.contains("POLICY_VIOLATION") || e.contains("olicy violation")),
        "{refusal:?}"
    );
    assert!(delivered > 0);
    assert_eq!(proxy.metric("streamward_sidecar_audit_full ").unwrap(), 1.0);
    let refusals = proxy
        .metric("streamward_sidecar_audit_full_refusals_total")
        .unwrap();
    assert!(refusals >= 1.0, "{refusals}");
    // Still full, still refused.
    let again = produce(&proxy.bootstrap, &topic, "again", 2, &[]);
    assert_eq!(again.delivered, 0, "{again:?}");

    // The collector comes back: the spool drains and traffic resumes by itself.
    collector.restart();
    streamward_e2e::wait_for("the spool to drain", Duration::from_secs(60), || {
        Ok((proxy.metric("streamward_sidecar_audit_full ")? == 0.0).then_some(()))
    })
    .unwrap();
    let resumed = produce(&proxy.bootstrap, &topic, "resumed", 5, &[]);
    assert_eq!(resumed.delivered, 5, "{resumed:?}");
    delivered += 5;

    // Nothing forwarded is unaudited: every record in the topic is in an allowed Produce
    // event the collector stored, and only refusals' events were dropped.
    assert_eq!(records_in(&topic, delivered), delivered);
    let events = streamward_e2e::wait_for(
        "the events of every forwarded record",
        Duration::from_secs(60),
        || {
            let events = collector.events();
            Ok((produced_records(&events, &topic) >= delivered as u64).then_some(events))
        },
    )
    .unwrap();
    assert_eq!(produced_records(&events, &topic), delivered as u64);
    let dropped = proxy
        .metric("streamward_sidecar_audit_events_total{outcome=\"dropped\"}")
        .unwrap();
    let refusals = proxy
        .metric("streamward_sidecar_audit_full_refusals_total")
        .unwrap();
    assert!(dropped <= refusals, "dropped {dropped}, refused {refusals}");
    let reported: u64 = events
        .iter()
        .map(|e| match &e.data {
            EventData::Dropped(d) => d.dropped,
            EventData::Request(_) | EventData::Query(_) => 0,
        })
        .sum();
    assert_eq!(reported as f64, dropped, "every loss is reported");
    eprintln!(
        "refused after {delivered} records with a {TINY_SPOOL}-byte spool; {refusals} requests \
         refused, {dropped} refusal events dropped (and reported)"
    );
}

#[test]
fn with_audit_full_continue_a_full_spool_drops_events_and_traffic_continues() {
    let run = cache::run_dir("audit-full-continue").unwrap();
    let mut collector = Collector::start(run.path());
    let proxy = sidecar_with(
        &collector,
        run.path(),
        &[],
        &["--audit-spool-max-bytes", TINY_SPOOL],
    );
    let topic = unique_name("orders.au5c");
    create_topic(kafka(), &topic, 1, 1);
    collector.kill();
    // Far more than the spool holds: everything is delivered, events are dropped.
    for run in 0..15 {
        let report = produce(&proxy.bootstrap, &topic, &format!("c{run}"), 5, &[]);
        assert_eq!(report.delivered, 5, "{report:?}");
    }
    let dropped = proxy
        .metric("streamward_sidecar_audit_events_total{outcome=\"dropped\"}")
        .unwrap();
    assert!(dropped > 0.0, "{}", proxy.log());
    assert_eq!(
        proxy
            .metric("streamward_sidecar_audit_full_refusals_total")
            .unwrap(),
        0.0
    );
}

/// Every file under `dir`, recursively, with its bytes.
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push((path, bytes));
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

/// A MaskingRule that masks only on consume, and exempts this very workload: neither what it
/// produces (the broker gets it raw) nor what it reads (it is exempt) is masked on the wire, yet
/// an auditor reading the store must never see what the rule masks for a reader.
#[test]
fn masked_payload_audit_never_stores_a_value_a_consume_rule_masks() {
    const EMAIL: &str = "jane.roe.audit@example.org";
    const CARD: &str = "4539578763621486";
    let run = cache::run_dir("audit-e2e-pii").unwrap();
    let collector = Collector::start(run.path());
    let masking = format!(
        "apiVersion: streamward.io/v1alpha1
kind: MaskingRule
metadata: {{name: orders-pii, namespace: {NS}}}
spec:
  topics: [{{name: orders., patternType: Prefixed}}]
  direction: Consume
  fields:
  - path: customer.email
  - path: card
    strategy: {{type: KeepLast, count: 4}}
  detectors:
  - type: Email
  - type: CreditCard
  strategy: {{type: Placeholder, placeholder: '[pii]'}}
  exemptSubjects:
    serviceAccounts: [{SA}]
"
    );
    let proxy = sidecar_with(&collector, run.path(), &[("masking.yaml", masking)], &[]);
    let topic = unique_name("orders.pii");
    create_topic(kafka(), &topic, 1, 1);

    let order = serde_json::json!({
        "id": "o-1",
        "customer": {"name": "Jane Roe", "email": EMAIL},
        "card": CARD,
        "note": format!("mail {EMAIL}, card {CARD}"),
    })
    .to_string();
    let mut child = streamward_e2e::clients::confluent_kafka()
        .unwrap()
        .args([
            "produce",
            "--bootstrap",
            &proxy.bootstrap,
            "--topic",
            &topic,
        ])
        .args(["--stdin", "--compression", "gzip", "--timeout", "20"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(format!("{order}\n").as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The exempt workload reads the record raw, as the rule says.
    let consumed = consume(&proxy.bootstrap, &topic, &unique_name("orders-g"), 1, &[]);
    assert_eq!(consumed.count, 1, "{consumed:?}");
    assert!(consumed.values.as_ref().unwrap()[0].contains(CARD));

    let events = wait_for_every_event(&collector, &proxy, Duration::from_secs(60));
    let values = |api: &str| -> Vec<serde_json::Value> {
        events
            .iter()
            .filter_map(AuditEvent::record)
            .filter(|r| r.request.api_key == api)
            .filter(|r| r.resources.iter().any(|res| res.name == topic))
            .filter_map(|r| r.payload.as_ref()?.records.clone())
            .flatten()
            .collect()
    };
    // The value as produced and as fetched: masked as a reader would get it.
    let expected = serde_json::json!({
        "id": "o-1",
        "customer": {"name": "Jane Roe", "email": "[pii]"},
        "card": "************1486",
        "note": "mail [pii], card [pii]",
    });
    assert_eq!(
        values("Produce"),
        std::slice::from_ref(&expected),
        "{events:#?}"
    );
    let fetched = values("Fetch");
    assert!(!fetched.is_empty(), "{events:#?}");
    assert!(fetched.iter().all(|v| *v == expected), "{fetched:#?}");

    // Nowhere in the collector's files, nor in the proxy's spool.
    let stored = files_under(&collector.0.data());
    assert!(stored.iter().any(|(_, bytes)| contains(bytes, "[pii]")));
    for (path, bytes) in stored.iter().chain(&files_under(&run.path().join("spool"))) {
        for raw in [EMAIL, CARD] {
            assert!(
                !contains(bytes, raw),
                "{raw} is stored in {}",
                path.display()
            );
        }
    }
}

//! The proxy end to end: real Kafka (one node), the real `streamward-sidecar` binary in local
//! mode, and the clients users run.

mod common;

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use common::{
    Sidecar, consume, create_topic, kafka, kafka_tool, orders_policy, produce, target_yaml,
};
use streamward_e2e::{clients, unique_name};

const NS: &str = "team-a";
const SA: &str = "orders-app";

/// orders.* is read/write for the app, payments.* is off limits, deleting anything is denied.
fn policy_yaml() -> String {
    orders_policy(NS, SA, "  guardrails:\n    maxPartitions: 12\n")
}

fn sidecar() -> Sidecar {
    common::sidecar(
        &[
            ("target.yaml", target_yaml(NS, &kafka().bootstrap())),
            ("policy.yaml", policy_yaml()),
        ],
        NS,
        SA,
    )
}

#[test]
fn kcat_and_confluent_kafka_produce_and_consume_through_the_proxy() {
    let proxy = sidecar();
    let topic = unique_name("orders.e2e");

    // kcat produces 1,000 records through the proxy (auto-creating the topic: Create allowed).
    let records: Vec<String> = (0..1000).map(|i| format!("kcat-{i:04}")).collect();
    let mut kcat = clients::kcat()
        .unwrap()
        .args(["-P", "-b", &proxy.bootstrap, "-t", &topic, "-X", "acks=all"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    kcat.stdin
        .take()
        .unwrap()
        .write_all((records.join("\n") + "\n").as_bytes())
        .unwrap();
    let out = kcat.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kcat: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        proxy.log()
    );

    // confluent-kafka produces 1,000 more, then reads all 2,000 back through the proxy.
    let report = produce(&proxy.bootstrap, &topic, "ck", 1000, &[]);
    assert_eq!(
        (report.delivered, report.errors.len()),
        (1000, 0),
        "{report:?}"
    );
    let consumed = consume(
        &proxy.bootstrap,
        &topic,
        &unique_name("orders-g"),
        2000,
        &[],
    );
    assert_eq!(consumed.errors, Vec::<String>::new(), "{}", proxy.log());
    let values = consumed.values.unwrap();
    let expected: Vec<String> = records
        .iter()
        .cloned()
        .chain((0..1000).map(|i| format!("ck-{i}")))
        .collect();
    assert_eq!(values, expected);

    // kcat consumes them too, and sees the proxy, not the broker, in the metadata.
    let out = clients::kcat()
        .unwrap()
        .args([
            "-C",
            "-b",
            &proxy.bootstrap,
            "-t",
            &topic,
            "-o",
            "beginning",
            "-e",
            "-q",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2000);
    let out = clients::kcat()
        .unwrap()
        .args(["-L", "-b", &proxy.bootstrap, "-t", &topic])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        !listing.contains(&kafka().bootstrap()),
        "the broker's address leaked: {listing}"
    );
    assert!(listing.contains("127.0.0.1:"), "{listing}");
}

#[test]
fn a_denied_topic_gives_topic_authorization_failed_in_the_client() {
    let proxy = sidecar();
    let topic = unique_name("payments.e2e");
    create_topic(kafka(), &topic, 1, 1);

    let report = produce(&proxy.bootstrap, &topic, "x", 5, &[]);
    assert_eq!(report.delivered, 0, "{report:?}");
    assert!(
        report
            .errors
            .iter()
            .any(|e| e.contains("Topic authorization failed")
                || e.contains("TOPIC_AUTHORIZATION_FAILED")),
        "{report:?}"
    );

    let consumed = consume(
        &proxy.bootstrap,
        &topic,
        &unique_name("orders-g"),
        1,
        &["--timeout", "10", "--stop-on-error"],
    );
    assert_eq!(consumed.count, 0);
    assert!(
        consumed
            .errors
            .iter()
            .any(|e| e == "TOPIC_AUTHORIZATION_FAILED"),
        "{consumed:?}"
    );

    // The topic is not even listed through the proxy.
    let out = clients::kcat()
        .unwrap()
        .args(["-L", "-b", &proxy.bootstrap])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&topic));
    assert!(
        proxy
            .metric("streamward_sidecar_decisions_total{effect=\"Deny\"}")
            .unwrap()
            >= 1.0
    );
}

#[test]
fn kafka_topic_tool_is_refused_a_delete_and_the_topic_survives() {
    let proxy = sidecar();
    let topic = unique_name("orders.keep");
    create_topic(kafka(), &topic, 1, 1);

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
    assert!(!ok, "the delete must fail: {out}");
    assert!(
        out.contains("TopicAuthorizationException") || out.contains("not authorized"),
        "no clear authorization error: {out}"
    );

    // Still there, asked directly of the broker.
    let (ok, listed) = kafka_tool(
        kafka(),
        "org.apache.kafka.tools.TopicCommand",
        &["--bootstrap-server", &kafka().bootstrap(), "--list"],
    );
    assert!(ok, "{listed}");
    assert!(listed.lines().any(|l| l == topic), "{listed}");
}

#[test]
fn a_grant_that_expires_stops_the_next_fetch_of_a_connected_consumer() {
    let topic = unique_name("audit.jit");
    create_topic(kafka(), &topic, 1, 1);
    let direct = kafka().bootstrap();
    assert_eq!(produce(&direct, &topic, "before", 5, &[]).delivered, 5);

    let expiry = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(12);
    let grant = format!(
        "apiVersion: streamward.io/v1alpha1
kind: AccessGrant
metadata: {{name: jit-read, namespace: {NS}}}
spec:
  subjects:
    serviceAccounts: [{SA}]
  resources: [{{resourceType: Topic, name: {topic}}}]
  operations: [Read, Describe]
  startTime: '{}'
  expiryTime: '{expiry}'
  reason: incident 42
",
        jiff::Timestamp::now() - jiff::SignedDuration::from_secs(5)
    );
    let proxy = common::sidecar(
        &[
            ("target.yaml", target_yaml(NS, &direct)),
            ("policy.yaml", policy_yaml()),
            ("grant.yaml", grant),
        ],
        NS,
        SA,
    );

    // One consumer, one connection, polling for 40 s: it reads the first five records while the
    // grant holds; after the expiry its next fetch is refused, so the records produced later
    // never reach it.
    let bootstrap = proxy.bootstrap.clone();
    let topic2 = topic.clone();
    let consumer = std::thread::spawn(move || {
        consume(
            &bootstrap,
            &topic2,
            "orders-jit",
            100,
            &["--stay", "--timeout", "30", "--stop-on-error"],
        )
    });
    let wait = expiry.duration_since(jiff::Timestamp::now()).as_secs_f64() + 2.0;
    std::thread::sleep(Duration::from_secs_f64(wait.max(0.0)));
    assert_eq!(produce(&direct, &topic, "after", 5, &[]).delivered, 5);
    let report = consumer.join().unwrap();
    assert_eq!(report.count, 5, "{report:?}\n{}", proxy.log());
    assert!(
        report
            .errors
            .iter()
            .any(|e| e == "TOPIC_AUTHORIZATION_FAILED"),
        "{report:?}"
    );
    assert!(
        report
            .values
            .unwrap()
            .iter()
            .all(|v| v.starts_with("before-"))
    );
}

#[test]
fn malformed_frames_and_absurd_sizes_close_only_their_own_connection() {
    use std::io::Read;
    use std::net::TcpStream;

    let proxy = sidecar();
    let topic = unique_name("orders.robust");
    // A healthy client keeps its connection open across the attacks (kcat -L with a delay is
    // awkward; instead the consumer runs before, during and after).
    let healthy = produce(&proxy.bootstrap, &topic, "ok", 10, &[]);
    assert_eq!(healthy.delivered, 10);

    let attacks: Vec<(&str, Vec<u8>)> = vec![
        ("absurd size", 0x7fff_fff0_u32.to_be_bytes().to_vec()),
        ("negative size", (-5i32).to_be_bytes().to_vec()),
        (
            "too short for a header",
            [&3i32.to_be_bytes()[..], &[0, 3, 0]].concat(),
        ),
        (
            "unknown API key",
            [
                &10i32.to_be_bytes()[..],
                &[0x7f, 0x00, 0, 1, 0, 0, 0, 7, 0xff, 0xff],
            ]
            .concat(),
        ),
        (
            "truncated Metadata header",
            [
                &10i32.to_be_bytes()[..],
                &[0, 3, 0, 12, 0, 0, 0, 9, 0x7f, 0xff],
            ]
            .concat(),
        ),
        // Counts that promise more entries than the frame holds: decoding must fail, not
        // reserve hundreds of gigabytes and abort the process.
        (
            "Produce v9 declaring 2^31 topics",
            [
                &23i32.to_be_bytes()[..],
                &[0, 0, 0, 9, 0, 0, 0, 1, 0xff, 0xff, 0],
                &[0, 0, 1, 0, 0, 0x75, 0x30, 0x80, 0x80, 0x80, 0x80, 0x08],
            ]
            .concat(),
        ),
        (
            "Produce v3 declaring 2^31-1 topics",
            [
                &22i32.to_be_bytes()[..],
                &[0, 0, 0, 3, 0, 0, 0, 1, 0xff, 0xff],
                &[0xff, 0xff, 0, 1, 0, 0, 0x75, 0x30, 0x7f, 0xff, 0xff, 0xff],
            ]
            .concat(),
        ),
    ];
    for (what, bytes) in attacks {
        let mut stream = TcpStream::connect(&proxy.bootstrap).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(&bytes).unwrap();
        let mut buf = [0u8; 64];
        // The proxy closes the connection: the read ends (0 bytes or a reset), it does not hang.
        let read = stream.read(&mut buf);
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "{what}: the connection stayed open ({read:?})"
        );
        assert!(proxy_is_alive(&proxy), "{what} took the proxy down");
    }
    assert!(
        proxy
            .metric("streamward_sidecar_malformed_frames_total")
            .unwrap()
            >= 6.0
    );

    // Other clients go on.
    let consumed = consume(&proxy.bootstrap, &topic, &unique_name("orders-g"), 10, &[]);
    assert_eq!(consumed.count, 10, "{consumed:?}");
}

fn proxy_is_alive(proxy: &Sidecar) -> bool {
    streamward_e2e::net::http_get(&proxy.admin, "/healthz").is_ok()
}

#[test]
fn a_topic_over_the_partition_guardrail_is_refused_with_policy_violation() {
    let proxy = sidecar();
    let create = |topic: &str, partitions: &str| {
        kafka_tool(
            kafka(),
            "org.apache.kafka.tools.TopicCommand",
            &[
                "--bootstrap-server",
                &proxy.bootstrap,
                "--create",
                "--topic",
                topic,
            ]
            .into_iter()
            .chain(["--partitions", partitions, "--replication-factor", "1"])
            .collect::<Vec<_>>(),
        )
    };
    let big = unique_name("orders.big");
    let (ok, out) = create(&big, "48");
    assert!(!ok, "{out}");
    assert!(out.contains("PolicyViolationException"), "{out}");
    assert!(
        out.contains("48 partitions is more than the 12 allowed"),
        "{out}"
    );

    let small = unique_name("orders.small");
    let (ok, out) = create(&small, "3");
    assert!(ok, "{out}\n{}", proxy.log());

    let (_, listed) = kafka_tool(
        kafka(),
        "org.apache.kafka.tools.TopicCommand",
        &["--bootstrap-server", &kafka().bootstrap(), "--list"],
    );
    assert!(listed.lines().any(|l| l == small), "{listed}");
    assert!(!listed.lines().any(|l| l == big), "{listed}");
}

#[test]
fn a_broken_config_fails_closed_and_a_fixed_one_applies_without_a_restart() {
    let mut proxy = sidecar();
    let topic = unique_name("orders.reload");
    assert_eq!(produce(&proxy.bootstrap, &topic, "a", 3, &[]).delivered, 3);

    // A policy file that does not parse: every request is refused, /readyz says why.
    proxy
        .write_policy("policy.yaml", "kind: StreamPolicy\nspec: [not, a, policy\n")
        .unwrap();
    let admin = proxy.admin.clone();
    streamward_e2e::wait_for("the proxy to fail closed", Duration::from_secs(20), || {
        let (status, body) = streamward_e2e::net::http_get(&admin, "/readyz")?;
        Ok((status == 503 && body.contains("refusing every request")).then_some(()))
    })
    .unwrap();
    assert_eq!(
        proxy.metric("streamward_sidecar_config_loaded ").unwrap(),
        0.0
    );
    let refused = produce(&proxy.bootstrap, &topic, "b", 3, &[]);
    assert_eq!(refused.delivered, 0, "{refused:?}");
    assert!(
        refused
            .errors
            .iter()
            .any(|e| e.contains("authorization failed") || e.contains("AUTHORIZATION")),
        "{refused:?}"
    );
    assert!(
        proxy.log().contains("no valid config"),
        "no log line says why"
    );

    // Fixed: served again, with no restart.
    proxy.write_policy("policy.yaml", &policy_yaml()).unwrap();
    proxy.wait_ready().unwrap();
    assert!(proxy.is_running());
    let consumed = consume(&proxy.bootstrap, &topic, &unique_name("orders-g"), 3, &[]);
    assert_eq!(consumed.count, 3, "{consumed:?}");
}

/// StreamsGroupHeartbeat and StreamsGroupDescribe (KIP-1071), served by Kafka 4.3 but not
/// modelled by kafka-protocol: advertised, forwarded when allowed, refused per group and topic.
#[test]
fn streams_group_apis_reach_the_broker_and_are_authorized() {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    use kafka_protocol::messages::{ApiVersionsRequest, FindCoordinatorRequest};
    use kafka_protocol::protocol::StrBytes;
    use streamward_e2e::kafka::wire::{Connection, streams};

    let app = unique_name("wordcount");
    let policy = format!(
        "apiVersion: streamward.io/v1alpha1
kind: StreamPolicy
metadata: {{name: streams-app, namespace: {NS}}}
spec:
  subjects:
    serviceAccounts: [{SA}]
  rules:
  - name: app-topics
    resources: [{{resourceType: Topic, name: {app}, patternType: Prefixed}}]
    operations: [Read, Write, Create, Describe]
    effect: Allow
  - name: app-group
    resources: [{{resourceType: Group, name: {app}}}]
    operations: [Read, Describe]
    effect: Allow
"
    );
    let proxy = common::sidecar(
        &[
            ("target.yaml", target_yaml(NS, &kafka().bootstrap())),
            ("policy.yaml", policy),
        ],
        NS,
        SA,
    );
    let source = format!("{app}-input");
    create_topic(kafka(), &source, 2, 1);

    // Advertised through the proxy, at the version it reads.
    let versions = Connection::connect(&proxy.bootstrap)
        .unwrap()
        .send(
            &ApiVersionsRequest::default()
                .with_client_software_name(StrBytes::from_static_str("streamward-e2e"))
                .with_client_software_version(StrBytes::from_static_str("1")),
            3,
        )
        .unwrap();
    for key in [streams::HEARTBEAT, streams::DESCRIBE] {
        let entry = versions.api_keys.iter().find(|e| e.api_key == key);
        assert_eq!(
            entry.map(|e| (e.min_version, e.max_version)),
            Some((0, 0)),
            "{key}"
        );
    }

    let mut stream = TcpStream::connect(&proxy.bootstrap).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut correlation_id = 0;
    let mut ask = |api_key: i16, body: Vec<u8>| -> Vec<(i16, String)> {
        correlation_id += 1;
        stream
            .write_all(&streams::frame(api_key, correlation_id, &body))
            .unwrap();
        let mut size = [0u8; 4];
        stream.read_exact(&mut size).unwrap();
        let mut frame = vec![0u8; i32::from_be_bytes(size) as usize];
        stream.read_exact(&mut frame).unwrap();
        streams::error_codes(api_key, correlation_id, &frame).unwrap()
    };
    let changelog = format!("{app}-store-changelog");

    // Allowed: the broker's own answer comes back (the member joins), once the group's
    // coordinator is up (the first FindCoordinator creates __consumer_offsets).
    let coordinator = Connection::connect(&proxy.bootstrap)
        .unwrap()
        .send(
            &FindCoordinatorRequest::default()
                .with_key_type(0)
                .with_coordinator_keys(vec![StrBytes::from_string(app.clone())]),
            4,
        )
        .unwrap();
    assert_eq!(coordinator.coordinators.len(), 1);
    let started = std::time::Instant::now();
    let joined = loop {
        let answer = ask(
            streams::HEARTBEAT,
            streams::join(&app, "member-1", &[&source], &[&changelog]),
        );
        // COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR: retriable.
        if ![14, 15, 16].contains(&answer[0].0) || started.elapsed() > Duration::from_secs(30) {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(joined[0].0, 0, "{joined:?}\n{}", proxy.log());
    let described = ask(streams::DESCRIBE, streams::describe(&[&app]));
    assert_eq!(described, [(0, app.clone())], "{}", proxy.log());

    // A group the policy does not name; a source topic it does not allow.
    let payroll = ask(
        streams::HEARTBEAT,
        streams::join("payroll", "member-2", &[&source], &[]),
    );
    assert_eq!(payroll[0].0, 30, "GROUP_AUTHORIZATION_FAILED");
    let secret = ask(
        streams::HEARTBEAT,
        streams::join(&app, "member-3", &["payments.ledger"], &[]),
    );
    assert_eq!(secret[0].0, 29, "TOPIC_AUTHORIZATION_FAILED");
    let hidden = ask(streams::DESCRIBE, streams::describe(&["payroll"]));
    assert_eq!(hidden, [(30, "payroll".to_string())]);
    assert!(
        proxy.log().contains("StreamsGroupHeartbeat"),
        "{}",
        proxy.log()
    );
}

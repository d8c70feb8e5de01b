//! Masking end to end: real Kafka (one node, shared by the tests), the real `streamward-sidecar`
//! binary in local mode with MaskingRules, and librdkafka clients (confluent-kafka and kcat).
//!
//! Records are produced with every compression librdkafka has; what a consumer reads through
//! the proxy is masked, what an exempt identity reads is raw, and with a produce-direction rule
//! what the broker stores (read from the broker directly) is masked.

mod common;

use std::io::Write;
use std::process::Stdio;

use bytes::Bytes;
use common::{Sidecar, consume, create_topic, kafka, target_yaml};
use hmac::{Hmac, KeyInit, Mac};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{FetchRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{Compression, Record, RecordBatchDecoder};
use serde_json::{Value, json};
use streamward_e2e::kafka::wire::Connection;
use streamward_e2e::{clients, unique_name};

const NS: &str = "shop";
/// The workload whose consumers see masked records.
const APP: &str = "orders-app";
/// The workload the consume rule exempts.
const BILLING: &str = "billing-app";
/// The HMAC key of the produce rule, as the Secret holds it.
const HMAC_KEY: &str = "a-test-masking-key-of-32-bytes!!";
/// Every compression librdkafka produces with, as its `compression.type` names them.
const CODECS: [&str; 5] = ["none", "gzip", "snappy", "lz4", "zstd"];
const PER_CODEC: usize = 20;

/// `orders.c.*`: consumers see no email (in the JSON or the header) and only the card's last
/// four digits; billing is exempt. `orders.p.*`: emails are replaced by keyed tokens before
/// the records reach the broker. `orders.k.*`: needs a key that is not there.
fn masking_yaml() -> String {
    format!(
        "apiVersion: streamward.io/v1alpha1
kind: MaskingRule
metadata: {{name: orders-pii, namespace: {NS}}}
spec:
  topics: [{{name: orders.c., patternType: Prefixed}}]
  direction: Consume
  fields:
  - path: customer.email
  - path: payment.card.number
    strategy: {{type: KeepLast, count: 4}}
  detectors:
  - type: Email
  headers:
  - name: x-customer-email
  strategy: {{type: Placeholder, placeholder: '[redacted]'}}
  exemptSubjects:
    serviceAccounts: [{BILLING}]
---
apiVersion: streamward.io/v1alpha1
kind: MaskingRule
metadata: {{name: orders-tokens, namespace: {NS}}}
spec:
  topics: [{{name: orders.p., patternType: Prefixed}}]
  direction: Produce
  fields:
  - path: customer.email
    strategy: {{type: Hmac, keySecretRef: {{name: masking-key, key: hmac}}}}
---
apiVersion: streamward.io/v1alpha1
kind: MaskingRule
metadata: {{name: orders-keyless, namespace: {NS}}}
spec:
  topics: [{{name: orders.k., patternType: Prefixed}}]
  direction: Both
  fields:
  - path: customer.email
    strategy: {{type: Hmac, keySecretRef: {{name: not-mounted, key: hmac}}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: masking-key, namespace: {NS}}}
stringData:
  hmac: {HMAC_KEY}
"
    )
}

fn sidecar(service_account: &str) -> Sidecar {
    common::sidecar(
        &[
            ("target.yaml", target_yaml(NS, &kafka().bootstrap())),
            (
                "policy.yaml",
                common::shared_orders_policy(NS, &[APP, BILLING]),
            ),
            ("masking.yaml", masking_yaml()),
        ],
        NS,
        service_account,
    )
}

/// An order as a shop writes it: about 400 bytes of JSON with personal data in it.
fn order(codec: &str, i: usize) -> Value {
    json!({
        "id": format!("{codec}-{i}"),
        "codec": codec,
        "customer": {
            "name": "Ann Example",
            "email": format!("ann.{i}@example.com"),
            "tier": "gold",
        },
        "payment": {"card": {"number": "4111111111111111", "expiry": "12/29"}, "amount": 12.5 + i as f64},
        "items": [{"sku": "A-1", "qty": 2}, {"sku": "B-7", "qty": 1}],
        "note": format!("leave at the door, or mail ann.{i}@example.com"),
    })
}

/// Produces `values` with confluent-kafka, compressed with `codec`, each with the
/// `x-customer-email` header; panics unless every record is delivered.
fn produce(bootstrap: &str, topic: &str, codec: &str, values: &[String]) {
    let mut child = clients::confluent_kafka()
        .unwrap()
        .args(["produce", "--bootstrap", bootstrap, "--topic", topic])
        .args(["--stdin", "--compression", codec, "--timeout", "20"])
        .args(["--header", "x-customer-email=ann@example.com"])
        .args(["--config", "linger.ms=50"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all((values.join("\n") + "\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(report["delivered"], values.len(), "{codec}: {report}");
}

/// Every record batch of partition 0 of `topic`, read with Fetch v12 from `addr` (the broker,
/// or the proxy): the decoder checks each batch's CRC.
fn fetch_batches(addr: &str, topic: &str) -> Vec<(Compression, Vec<Record>)> {
    let mut connection = Connection::connect(addr).unwrap();
    let mut batches = Vec::new();
    let mut offset = 0;
    loop {
        let request = FetchRequest::default()
            .with_max_wait_ms(100)
            .with_topics(vec![
                FetchTopic::default()
                    .with_topic(TopicName(StrBytes::from_string(topic.to_owned())))
                    .with_partitions(vec![
                        FetchPartition::default()
                            .with_fetch_offset(offset)
                            .with_partition_max_bytes(8 << 20),
                    ]),
            ]);
        let response = connection.send(&request, 12).unwrap();
        let partition = &response.responses[0].partitions[0];
        assert_eq!(partition.error_code, 0, "fetching {topic} from {addr}");
        let mut records = partition.records.clone().unwrap_or_default();
        if records.is_empty() {
            return batches;
        }
        for set in RecordBatchDecoder::decode_all(&mut records).unwrap() {
            offset = set.records.last().map_or(offset, |r| r.offset + 1);
            batches.push((set.compression, set.records));
        }
        if offset >= partition.high_watermark {
            return batches;
        }
    }
}

fn value_json(record: &Record) -> Value {
    let bytes = record.value.as_deref().unwrap_or_default();
    serde_json::from_slice(bytes).unwrap_or_else(|e| {
        panic!(
            "masked value is not JSON ({e}): {}",
            String::from_utf8_lossy(bytes)
        )
    })
}

fn header<'r>(record: &'r Record, name: &str) -> Option<&'r Bytes> {
    record
        .headers
        .iter()
        .find(|(key, _)| key.as_str() == name)
        .and_then(|(_, value)| value.as_ref())
}

/// What the consume rule makes of an order.
fn masked_order(raw: &Value) -> Value {
    let mut masked = raw.clone();
    masked["customer"]["email"] = json!("[redacted]");
    masked["payment"]["card"]["number"] = json!("************1111");
    let note = raw["note"].as_str().unwrap();
    let email = raw["customer"]["email"].as_str().unwrap();
    masked["note"] = json!(note.replace(email, "[redacted]"));
    masked
}

#[test]
fn records_of_every_codec_are_consumed_masked_and_an_exempt_identity_reads_them_raw() {
    let topic = unique_name("orders.c.codecs");
    create_topic(kafka(), &topic, 1, 1);
    let mut raw = Vec::new();
    for codec in CODECS {
        let values: Vec<String> = (0..PER_CODEC)
            .map(|i| order(codec, i).to_string())
            .collect();
        // Straight to the broker: the topic holds the raw records, one codec after the other.
        produce(&kafka().bootstrap(), &topic, codec, &values);
        raw.extend(values);
    }
    let direct = fetch_batches(&kafka().bootstrap(), &topic);
    let stored: std::collections::BTreeSet<String> =
        direct.iter().map(|(c, _)| format!("{c:?}")).collect();
    assert_eq!(stored.len(), CODECS.len(), "batches stored as {stored:?}");

    let app = sidecar(APP);
    let billing = sidecar(BILLING);

    // A consumer group reads the masked records through the proxy.
    let consumed = consume(
        &app.bootstrap,
        &topic,
        &unique_name("orders-g"),
        raw.len(),
        &[],
    );
    assert_eq!(consumed.errors, Vec::<String>::new(), "{}", app.log());
    let values = consumed.values.unwrap();
    assert_eq!(values.len(), raw.len());
    for (got, sent) in values.iter().zip(&raw) {
        let got: Value = serde_json::from_str(got).expect("masked records stay JSON");
        let sent: Value = serde_json::from_str(sent).unwrap();
        assert_eq!(got, masked_order(&sent));
    }

    // kcat (Debian's librdkafka) sees the same.
    let out = clients::kcat()
        .unwrap()
        .args(["-C", "-b", &app.bootstrap, "-t", &topic])
        .args(["-o", "beginning", "-e", "-q"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kcat_values: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(kcat_values, values);

    // Batch by batch: same codecs, offsets, timestamps, keys and headers, CRCs valid (the
    // decoder checks them); only the values and the masked header differ.
    let through_proxy = fetch_batches(&app.bootstrap, &topic);
    assert_eq!(through_proxy.len(), direct.len());
    for ((codec, records), (direct_codec, direct_records)) in through_proxy.iter().zip(&direct) {
        assert_eq!(codec, direct_codec);
        assert_eq!(records.len(), direct_records.len());
        for (masked, original) in records.iter().zip(direct_records) {
            assert_eq!(value_json(masked), masked_order(&value_json(original)));
            assert_eq!(
                header(masked, "x-customer-email").map(|v| &v[..]),
                Some(&b"[redacted]"[..])
            );
            assert_eq!(
                header(original, "x-customer-email").map(|v| &v[..]),
                Some(&b"ann@example.com"[..])
            );
            let mut rest = masked.clone();
            rest.value = original.value.clone();
            rest.headers = original.headers.clone();
            assert_eq!(&rest, original);
        }
    }
    assert!(
        app.metric("streamward_sidecar_masked_records_total")
            .unwrap()
            >= raw.len() as f64
    );
    assert!(
        app.metric("streamward_sidecar_masked_fields_total{rules=\"orders-pii\",flow=\"Consume\"}")
            .unwrap()
            >= 4.0 * raw.len() as f64
    );

    // The exempt workload reads what was produced.
    let consumed = consume(
        &billing.bootstrap,
        &topic,
        &unique_name("billing-g"),
        raw.len(),
        &[],
    );
    assert_eq!(consumed.errors, Vec::<String>::new(), "{}", billing.log());
    assert_eq!(consumed.values.unwrap(), raw);
    assert_eq!(
        billing
            .metric("streamward_sidecar_masked_records_total")
            .unwrap(),
        0.0
    );
}

#[test]
fn a_produce_direction_rule_masks_what_the_broker_stores() {
    let topic = unique_name("orders.p.tokens");
    create_topic(kafka(), &topic, 1, 1);
    let app = sidecar(APP);
    let mut raw = Vec::new();
    for codec in CODECS {
        let values: Vec<String> = (0..PER_CODEC)
            .map(|i| order(codec, i % 3).to_string())
            .collect();
        produce(&app.bootstrap, &topic, codec, &values);
        raw.extend(values);
    }

    // Read from the broker, not through the proxy.
    let stored = fetch_batches(&kafka().bootstrap(), &topic);
    let codecs: std::collections::BTreeSet<String> =
        stored.iter().map(|(c, _)| format!("{c:?}")).collect();
    assert_eq!(codecs.len(), CODECS.len(), "batches stored as {codecs:?}");
    let records: Vec<&Record> = stored.iter().flat_map(|(_, r)| r).collect();
    assert_eq!(records.len(), raw.len());
    for (record, sent) in records.iter().zip(&raw) {
        let sent: Value = serde_json::from_str(sent).unwrap();
        let email = sent["customer"]["email"].as_str().unwrap();
        // The token is HMAC-SHA256 of the email under the Secret's key: the same email gives
        // the same token, in any batch, after any restart.
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(HMAC_KEY.as_bytes()).unwrap();
        mac.update(email.as_bytes());
        let token = format!("hmac:{}", hex::encode(mac.finalize().into_bytes()));
        let mut expected = sent.clone();
        expected["customer"]["email"] = json!(token);
        assert_eq!(value_json(record), expected);
        // Only what the rule names is touched: the header and the note stay.
        assert_eq!(
            header(record, "x-customer-email").map(|v| &v[..]),
            Some(&b"ann@example.com"[..])
        );
    }
    assert!(
        app.metric("streamward_sidecar_masked_records_total{flow=\"Produce\"}")
            .unwrap()
            >= raw.len() as f64
    );
}

#[test]
fn records_that_cannot_be_masked_are_never_delivered() {
    let topic = unique_name("orders.k.keyless");
    create_topic(kafka(), &topic, 1, 1);
    let values: Vec<String> = (0..5).map(|i| order("none", i).to_string()).collect();
    produce(&kafka().bootstrap(), &topic, "none", &values);

    let app = sidecar(APP);
    let consumed = consume(
        &app.bootstrap,
        &topic,
        &unique_name("orders-g"),
        1,
        &["--timeout", "15", "--stop-on-error"],
    );
    assert_eq!(consumed.count, 0, "{consumed:?}");
    assert!(
        consumed.errors.iter().any(|e| e == "POLICY_VIOLATION"),
        "{consumed:?}\n{}",
        app.log()
    );
    assert!(
        app.metric("streamward_sidecar_masking_failures_total{flow=\"Consume\",reason=\"Plan\"}")
            .unwrap()
            >= 1.0
    );
    // The log says which key to mount, and holds no record data.
    let log = app.log();
    assert!(log.contains("not-mounted/hmac"), "{log}");
    assert!(!log.contains("ann.0@example.com"), "{log}");

    // A producer through the proxy is refused the same way (the rule masks both ways), and
    // nothing reaches the broker.
    let out = clients::confluent_kafka()
        .unwrap()
        .args(["produce", "--bootstrap", &app.bootstrap, "--topic", &topic])
        .args(["--count", "1", "--timeout", "10", "--acks", "all"])
        .args(["--config", "message.send.max.retries=0"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(report["delivered"], 0, "{report}");
    assert!(
        report["errors"]
            .to_string()
            .to_lowercase()
            .contains("policy violation"),
        "{report}"
    );
    let stored: usize = fetch_batches(&kafka().bootstrap(), &topic)
        .iter()
        .map(|(_, records)| records.len())
        .sum();
    assert_eq!(stored, values.len());
    assert!(
        app.metric("streamward_sidecar_masking_failures_total{flow=\"Produce\",reason=\"Plan\"}")
            .unwrap()
            >= 1.0
    );
}

/// KIP-932 share groups read with ShareFetch, not Fetch: Kafka's own share consumer through
/// the proxy must see the records masked as a Fetch consumer does.
#[test]
fn a_share_group_consumer_reads_masked_records() {
    let topic = unique_name("orders.c.share");
    create_topic(kafka(), &topic, 1, 1);
    let raw: Vec<Value> = (0..5).map(|i| order("share", i)).collect();
    let values: Vec<String> = raw.iter().map(Value::to_string).collect();
    produce(&kafka().bootstrap(), &topic, "none", &values);
    let group = unique_name("orders-share");
    // A share group starts at the latest offset unless its config says otherwise.
    let (ok, out) = common::kafka_tool(
        kafka(),
        "kafka.admin.ConfigCommand",
        &[
            "--bootstrap-server",
            &kafka().bootstrap(),
            "--alter",
            "--entity-type",
            "groups",
            "--entity-name",
            &group,
            "--add-config",
            "share.auto.offset.reset=earliest",
        ],
    );
    assert!(ok, "{out}");

    let app = sidecar(APP);
    let out = kafka()
        .dist()
        .tool("org.apache.kafka.tools.consumer.ConsoleShareConsumer")
        .args(["--bootstrap-server", &app.bootstrap, "--topic", &topic])
        .args([
            "--group",
            &group,
            "--max-messages",
            "5",
            "--timeout-ms",
            "30000",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let consumed: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(
        consumed.len(),
        5,
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        app.log()
    );
    for record in &consumed {
        let original = raw
            .iter()
            .find(|r| r["id"] == record["id"])
            .unwrap_or_else(|| panic!("{record}"));
        assert_eq!(*record, masked_order(original));
    }
    assert!(!stdout.contains("@example.com"), "{stdout}");

    // The exempt workload's share consumer reads them raw.
    let billing = sidecar(BILLING);
    let group = unique_name("orders-share");
    let (ok, out) = common::kafka_tool(
        kafka(),
        "kafka.admin.ConfigCommand",
        &[
            "--bootstrap-server",
            &kafka().bootstrap(),
            "--alter",
            "--entity-type",
            "groups",
            "--entity-name",
            &group,
            "--add-config",
            "share.auto.offset.reset=earliest",
        ],
    );
    assert!(ok, "{out}");
    let out = kafka()
        .dist()
        .tool("org.apache.kafka.tools.consumer.ConsoleShareConsumer")
        .args(["--bootstrap-server", &billing.bootstrap, "--topic", &topic])
        .args([
            "--group",
            &group,
            "--max-messages",
            "5",
            "--timeout-ms",
            "30000",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut read: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    read.sort_by_key(|r| r["id"].to_string());
    assert_eq!(read, raw, "{stdout}");
}

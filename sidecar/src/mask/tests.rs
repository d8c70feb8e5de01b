//! Masking end to end: rules written as a user writes them, compiled by the compiler, turned
//! into a plan, applied to values and to record batches in every compression.

use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use proptest::prelude::*;
use serde_json::{Value, json};
use streamward_api::compile::{compile, parse_manifests};
use streamward_api::config::{CompiledMaskingRule, Flow, SecretKeyRef, WorkloadIdentity};

use super::*;

const KEY: &[u8] = b"a masking key of thirty-two bytes";

fn keys() -> MaskingKeys {
    let mut keys = MaskingKeys::new();
    keys.insert(
        SecretKeyRef {
            name: "masking".into(),
            key: "key".into(),
        },
        KEY,
    );
    keys
}

/// The compiled rules of MaskingRule specs written in YAML (`spec:` bodies, indented by two).
fn rules(specs: &[&str]) -> Vec<CompiledMaskingRule> {
    let yaml: String = specs
        .iter()
        .enumerate()
        .map(|(index, spec)| {
            format!(
                "---\napiVersion: streamward.io/v1alpha1\nkind: MaskingRule\nmetadata: {{name: rule-{index}, namespace: demo}}\nspec:\n  topics: [{{name: orders}}]\n{spec}"
            )
        })
        .collect();
    let identity = WorkloadIdentity {
        namespace: "demo".into(),
        service_account: "app".into(),
    };
    compile(&parse_manifests(&yaml).unwrap(), &identity)
        .unwrap_or_else(|e| panic!("{e}"))
        .masking
}

fn plan(spec: &str) -> MaskingPlan {
    MaskingPlan::new(&rules(&[spec]), Flow::Consume, &keys()).unwrap()
}

fn masked_json(plan: &MaskingPlan, value: &Value) -> (Value, u32) {
    let input = serde_json::to_vec(value).unwrap();
    let masked = mask_value(plan, &input);
    assert!(!masked.parse_failed);
    let output: Value = serde_json::from_slice(&masked.bytes)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&masked.bytes)));
    assert_eq!(masked.changed(), masked.fields_masked > 0);
    (output, masked.fields_masked)
}

const HMAC: &str = "{type: Hmac, keySecretRef: {name: masking, key: key}}";
const FORMAT_PRESERVING: &str = "{type: FormatPreserving, keySecretRef: {name: masking, key: key}}";

fn order() -> Value {
    json!({
        "id": "ord-1",
        "customer": {"name": "Alice Smith", "email": "alice@example.com", "phone": "+1 415 555 2671", "vip": true, "age": 42},
        "items": [
            {"sku": "A-1", "card": "4111 1111 1111 1111", "price": 12.5},
            {"sku": "B-2", "card": "5500-0000-0000-0004", "price": 3}
        ],
        "notes": "call me at +44 20 7946 0958 or write to bob@example.org",
        "nested": {"deep": {"email": "carol@example.net", "list": [{"email": "dan@example.com"}]}},
        "missing": null
    })
}

#[test]
fn field_paths_in_every_form() {
    let cases: &[(&str, &[&str])] = &[
        ("customer.email", &["/customer/email"]),
        ("$.customer.email", &["/customer/email"]),
        ("items[*].card", &["/items/0/card", "/items/1/card"]),
        ("items.*.card", &["/items/0/card", "/items/1/card"]),
        ("items[1].card", &["/items/1/card"]),
        ("['customer']['name']", &["/customer/name"]),
        (
            "..email",
            &[
                "/customer/email",
                "/nested/deep/email",
                "/nested/deep/list/0/email",
            ],
        ),
        (
            "nested..email",
            &["/nested/deep/email", "/nested/deep/list/0/email"],
        ),
        ("customer.nothing", &[]),
        ("items.card", &[]), // strict: `items` is an array
    ];
    for (path, selected) in cases {
        let plan = plan(&format!("  fields: [{{path: \"{path}\"}}]\n"));
        let (output, count) = masked_json(&plan, &order());
        assert_eq!(count as usize, selected.len(), "{path}");
        for pointer in *selected {
            assert_eq!(
                output.pointer(pointer),
                Some(&json!("****")),
                "{path} {pointer}"
            );
        }
        let mut expected = order();
        for pointer in *selected {
            *expected.pointer_mut(pointer).unwrap() = json!("****");
        }
        assert_eq!(output, expected, "{path}");
    }
}

#[test]
fn a_selected_container_is_masked_leaf_by_leaf() {
    let nullify = plan("  fields: [{path: customer, strategy: {type: Nullify}}]\n");
    let (output, count) = masked_json(&nullify, &order());
    assert_eq!(
        output["customer"],
        json!({"name": null, "email": null, "phone": null, "vip": null, "age": null})
    );
    assert_eq!(count, 5);
    let everything = plan("  fields: [{path: '$'}]\n");
    let (output, _) = masked_json(
        &everything,
        &json!({"a": [1, "x", {"b": false}], "c": null}),
    );
    assert_eq!(
        output,
        json!({"a": ["****", "****", {"b": "****"}], "c": null})
    );
}

#[test]
fn strategies_on_strings_numbers_and_booleans() {
    let value = json!({"s": "4111111111111111", "n": 4111111111111111u64, "f": -12.75, "b": true, "z": null});
    let fields = |strategy: &str| {
        plan(&format!(
            "  fields: [{{path: s, strategy: {strategy}}}, {{path: n, strategy: {strategy}}}, {{path: f, strategy: {strategy}}}, {{path: b, strategy: {strategy}}}, {{path: z, strategy: {strategy}}}]\n"
        ))
    };
    let (out, count) = masked_json(&fields("{type: Redact}"), &value);
    assert_eq!(
        out,
        json!({"s": "****", "n": "****", "f": "****", "b": "****", "z": null})
    );
    assert_eq!(count, 4);
    let (out, _) = masked_json(
        &fields("{type: Placeholder, placeholder: '<hidden>'}"),
        &value,
    );
    assert_eq!(out["s"], "<hidden>");
    let (out, _) = masked_json(&fields("{type: Nullify}"), &value);
    assert_eq!(
        out,
        json!({"s": null, "n": null, "f": null, "b": null, "z": null})
    );
    let (out, _) = masked_json(&fields("{type: KeepLast, count: 4}"), &value);
    assert_eq!(out["s"], "************1111");
    assert_eq!(out["n"], "************1111");
    assert_eq!(out["f"], "**2.75");
    assert_eq!(out["b"], "****");
    let (out, _) = masked_json(&fields("{type: KeepFirst, count: 6}"), &value);
    assert_eq!(out["s"], "411111**********");
    let (out, _) = masked_json(&fields(HMAC), &value);
    let token = out["s"].as_str().unwrap();
    assert!(token.starts_with("hmac:") && token.len() == 69);
    // The number's text is the same as the string's: same token, so they still join.
    assert_eq!(out["n"], out["s"]);
    let (out, _) = masked_json(&fields(FORMAT_PRESERVING), &value);
    let s = out["s"].as_str().unwrap();
    assert_eq!(s.len(), 16);
    assert!(s.bytes().all(|b| b.is_ascii_digit()) && s != "4111111111111111");
    assert!(
        out["n"].is_u64() && out["n"].to_string().len() == 16,
        "{}",
        out["n"]
    );
    assert!(
        out["f"].is_f64() && out["f"].to_string().starts_with('-'),
        "{}",
        out["f"]
    );
    assert_eq!(out["b"], "****");
}

#[test]
fn detectors_mask_inside_strings_and_whole_numbers() {
    let plan = plan(
        "  detectors: [{type: CreditCard, strategy: {type: KeepLast}}, {type: Email}, {type: Phone, strategy: {type: KeepLast, count: 2}}]\n",
    );
    let (out, count) = masked_json(&plan, &order());
    assert_eq!(out["items"][0]["card"], "***************1111");
    assert_eq!(out["items"][1]["card"], "***************0004");
    assert_eq!(out["customer"]["email"], "****");
    assert_eq!(out["customer"]["phone"], "*************71");
    assert_eq!(out["notes"], "call me at **************58 or write to ****");
    assert_eq!(out["nested"]["deep"]["email"], "****");
    assert_eq!(out["customer"]["name"], "Alice Smith");
    assert_eq!(out["items"][0]["price"], 12.5);
    assert_eq!(count, 8);

    let (out, count) = masked_json(&plan, &json!({"card": 4111111111111111u64, "id": 1234567}));
    assert_eq!(out, json!({"card": "************1111", "id": 1234567}));
    assert_eq!(count, 1);
}

#[test]
fn a_nullify_detector_nulls_the_whole_string() {
    let plan = plan("  detectors: [{type: Email, strategy: {type: Nullify}}]\n");
    let (out, _) = masked_json(
        &plan,
        &json!({"a": "mail bob@example.org now", "b": "no mail"}),
    );
    assert_eq!(out, json!({"a": null, "b": "no mail"}));
}

#[test]
fn detector_tokens_use_the_normalised_value() {
    let plan = plan(&format!(
        "  detectors: [{{type: CreditCard, strategy: {HMAC}}}]\n"
    ));
    let (out, _) = masked_json(
        &plan,
        &json!([
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "4111111111111111"
        ]),
    );
    assert_eq!(out[0], out[1]);
    assert_eq!(out[1], out[2]);
}

#[test]
fn field_paths_come_first_then_detectors() {
    let plan = plan(
        "  fields: [{path: a, strategy: {type: KeepFirst, count: 3}}]\n  detectors: [{type: Email}]\n",
    );
    let (out, _) = masked_json(
        &plan,
        &json!({"a": "bob@example.org", "b": "bob@example.org"}),
    );
    assert_eq!(out, json!({"a": "bob************", "b": "****"}));
}

#[test]
fn escaped_strings_and_keys_are_read_and_written_correctly() {
    let plan = plan(
        "  fields: [{path: \"['e-mail\\\"x']\"}, {path: 'ü'}]\n  detectors: [{type: Email, strategy: {type: KeepFirst, count: 1}}]\n",
    );
    let input = br#"{"e-mail\"x": "a", "\u00fc": "b", "t": "line\nbob\u0040example.org \"quoted\" \ud83d\ude00"}"#;
    let masked = mask_value(&plan, input);
    let out: Value = serde_json::from_slice(&masked.bytes).unwrap();
    assert_eq!(out["e-mail\"x"], "****");
    assert_eq!(out["ü"], "****");
    assert_eq!(out["t"], "line\nb************** \"quoted\" 😀");
}

#[test]
fn formatting_is_kept_and_unmasked_values_are_borrowed() {
    let plan = plan("  fields: [{path: b}]\n");
    let input = b"{ \"a\" : 1.50e+3 ,\n  \"b\":\"x\"\t}  ";
    let masked = mask_value(&plan, input);
    assert_eq!(
        &*masked.bytes,
        b"{ \"a\" : 1.50e+3 ,\n  \"b\":\"****\"\t}  "
    );
    let untouched = br#"{"a": 1, "c": "d"}"#;
    assert!(!mask_value(&plan, untouched).changed());
    // Already masked: nothing changes, nothing is counted.
    let again = mask_value(&plan, &masked.bytes);
    assert!(!again.changed());
    assert_eq!(again.fields_masked, 0);
}

#[test]
fn values_that_are_not_json_are_redacted_unless_the_rule_passes_them() {
    let redact = plan(
        "  fields: [{path: a}]\n  strategy: {type: Placeholder, placeholder: '[unreadable]'}\n",
    );
    for bad in [
        &b"not json"[..],
        b"",
        b"{\"a\": 1",
        b"{\"a\": 01}",
        b"[1,]",
        b"{\"a\":\"\xff\"}",
        b"\"\\ud800\"",
        b"{\"a\": \"tab\there\"}",
        b"{} {}",
        b"nul",
    ] {
        let masked = mask_value(&redact, bad);
        assert!(masked.parse_failed, "{:?}", String::from_utf8_lossy(bad));
        assert_eq!(&*masked.bytes, b"\"[unreadable]\"");
        assert_eq!(masked.fields_masked, 1);
        // The placeholder is JSON, so it is left alone the second time.
        assert!(!mask_value(&redact, &masked.bytes).changed());
    }
    let deep = "[".repeat(129) + &"]".repeat(129);
    assert!(mask_value(&redact, deep.as_bytes()).parse_failed);
    let ok = "[".repeat(128) + &"]".repeat(128);
    assert!(!mask_value(&redact, ok.as_bytes()).parse_failed);

    let pass = plan("  fields: [{path: a}]\n  onParseError: Pass\n");
    let masked = mask_value(&pass, b"not json");
    assert!(masked.parse_failed && !masked.changed());
}

#[test]
fn text_values_go_through_the_detectors() {
    let plan = plan(
        "  format: Text\n  detectors: [{type: UsSsn, strategy: {type: KeepLast}}, {type: Jwt}, {type: CloudAccessKey, strategy: {type: Nullify}}, {type: Regex, pattern: 'pin=(?P<mask>\\d+)'}]\n",
    );
    let text = "ssn 123-45-6789 token eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0. key AKIAIOSFODNN7EXAMPLE pin=1234";
    let masked = mask_value(&plan, text.as_bytes());
    assert_eq!(
        std::str::from_utf8(&masked.bytes).unwrap(),
        "ssn *******6789 token **** key  pin=****"
    );
    assert_eq!(masked.fields_masked, 4);
    let binary = mask_value(&plan, b"\xff\xfe");
    assert!(binary.parse_failed);
    assert_eq!(&*binary.bytes, b"****");
}

#[test]
fn binary_values_pass_or_are_redacted_whole() {
    let redact = plan(
        "  format: Binary\n  binary: Redact\n  strategy: {type: Placeholder, placeholder: REDACTED}\n",
    );
    let masked = mask_value(&redact, b"\x00\x01\x02");
    assert_eq!(&*masked.bytes, b"REDACTED");
    assert!(!mask_value(&redact, b"REDACTED").changed());
    let pass = plan("  format: Binary\n  headers: [{name: h}]\n");
    assert!(!mask_value(&pass, b"\x00\x01").changed());
}

#[test]
fn rules_of_several_formats_run_one_after_the_other() {
    let rules = rules(&[
        "  fields: [{path: a, strategy: {type: KeepFirst, count: 2}}]\n",
        "  format: Text\n  detectors: [{type: Regex, pattern: 'se+cret'}]\n",
    ]);
    let plan = MaskingPlan::new(&rules, Flow::Consume, &keys()).unwrap();
    let masked = mask_value(&plan, br#"{"a": "abcdef", "b": "a seecret"}"#);
    assert_eq!(&*masked.bytes, br#"{"a": "ab****", "b": "a ****"}"#);
    assert_eq!(masked.fields_masked, 2);
    let masked = mask_value(&plan, b"{\"b\": \"no match\"}");
    assert!(!masked.changed());
}

#[test]
fn hmac_tokens_are_the_same_in_two_plans_with_the_same_key() {
    let spec = format!("  fields: [{{path: email, strategy: {HMAC}}}]\n");
    let first = plan(&spec);
    let second = MaskingPlan::new(&rules(&[&spec]), Flow::Consume, &keys()).unwrap();
    let value = br#"{"email": "alice@example.com"}"#;
    assert_eq!(
        mask_value(&first, value).bytes,
        mask_value(&second, value).bytes
    );
    let mut other = MaskingKeys::new();
    other.insert(
        SecretKeyRef {
            name: "masking".into(),
            key: "key".into(),
        },
        &b"another key"[..],
    );
    let third = MaskingPlan::new(&rules(&[&spec]), Flow::Consume, &other).unwrap();
    assert_ne!(
        mask_value(&first, value).bytes,
        mask_value(&third, value).bytes
    );
}

// ---- Record batches ----

const CODECS: [Compression; 5] = [
    Compression::None,
    Compression::Gzip,
    Compression::Snappy,
    Compression::Lz4,
    Compression::Zstd,
];

fn record(offset: i64, value: Option<&[u8]>, headers: &[(&str, Option<&[u8]>)]) -> Record {
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: 7,
        producer_id: 4242,
        producer_epoch: 3,
        timestamp_type: TimestampType::Creation,
        offset,
        sequence: 100 + offset as i32,
        timestamp: 1_700_000_000_000 + offset * 10,
        key: Some(Bytes::from(format!("key-{offset}"))),
        value: value.map(Bytes::copy_from_slice),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    StrBytes::from_string(k.to_string()),
                    v.map(Bytes::copy_from_slice),
                )
            })
            .collect::<IndexMap<_, _>>(),
    }
}

fn encode(records: &[Record], compression: Compression) -> Bytes {
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .unwrap();
    buf.freeze()
}

fn decode(mut bytes: Bytes) -> Vec<Record> {
    RecordBatchDecoder::decode_all(&mut bytes)
        .unwrap()
        .into_iter()
        .flat_map(|set| set.records)
        .collect()
}

fn batch_plan() -> MaskingPlan {
    plan(
        "  fields: [{path: email}]\n  detectors: [{type: CreditCard, strategy: {type: KeepLast}}]\n  headers: [{name: x-user, strategy: {type: Nullify}}, {name: x-ssn, strategy: {type: KeepLast, count: 2}}]\n",
    )
}

fn sample_records() -> Vec<Record> {
    vec![
        record(
            10,
            Some(br#"{"email": "a@b.io", "card": "4111111111111111", "n": 1}"#),
            &[("x-user", Some(b"alice")), ("trace", Some(b"t-1"))],
        ),
        record(11, Some(br#"{"n": 2}"#), &[("trace", Some(b"t-2"))]),
        record(12, None, &[]),
        record(
            13,
            Some(b"not json"),
            &[("x-ssn", Some(b"123-45-6789")), ("x-user", None)],
        ),
    ]
}

#[test]
fn batches_round_trip_in_every_compression() {
    for codec in CODECS {
        let records = sample_records();
        let input = encode(&records, codec);
        let mut stats = MaskStats::default();
        let output = mask_batch(&input, &batch_plan(), &mut stats)
            .unwrap()
            .expect("something to mask");
        // Everything but the length and the CRC of the header stays.
        assert_eq!(input[..8], output[..8], "{codec:?}");
        assert_eq!(input[12..17], output[12..17], "{codec:?}");
        assert_eq!(input[21..61], output[21..61], "{codec:?}");
        let decoded = decode(output);
        assert_eq!(decoded.len(), 4);
        let mut expected = records.clone();
        expected[0].value = Some(Bytes::from_static(
            br#"{"email": "****", "card": "************1111", "n": 1}"#,
        ));
        expected[0].headers[0] = None;
        expected[3].value = Some(Bytes::from_static(b"\"****\""));
        expected[3].headers[0] = Some(Bytes::from_static(b"*********89"));
        assert_eq!(decoded, expected, "{codec:?}");
        assert_eq!(
            stats,
            MaskStats {
                batches: 1,
                batches_rewritten: 1,
                records: 4,
                records_masked: 2,
                fields_masked: 3,
                headers_masked: 2,
                parse_failures: 1,
                truncated_batches_dropped: 0,
            }
        );
        // Masking the masked batch again changes nothing.
        let again = encode(&decoded, codec);
        assert_eq!(mask_batch(&again, &batch_plan(), &mut stats).unwrap(), None);
    }
}

#[test]
fn unchanged_batches_are_not_rewritten() {
    let records = vec![record(0, Some(br#"{"n": 1}"#), &[("trace", None)])];
    let first = encode(&records, Compression::Lz4);
    let second = encode(
        &[record(1, Some(br#"{"email": "x@y.io"}"#), &[])],
        Compression::Gzip,
    );
    let mut both = BytesMut::from(&first[..]);
    both.extend_from_slice(&second);
    let mut stats = MaskStats::default();
    assert_eq!(mask_batch(&first, &batch_plan(), &mut stats).unwrap(), None);
    let output = mask_batch(&both, &batch_plan(), &mut stats)
        .unwrap()
        .unwrap();
    // The first batch is copied byte for byte, not recompressed.
    assert_eq!(output[..first.len()], first[..]);
    let decoded = decode(output);
    assert_eq!(
        decoded[1].value.as_deref(),
        Some(&br#"{"email": "****"}"#[..])
    );
    assert_eq!(decoded[1].timestamp, records[0].timestamp + 10);
    assert_eq!(stats.batches, 3);
    assert_eq!(stats.batches_rewritten, 1);
}

/// Sets attribute bits of the first batch and fixes its CRC.
fn with_attributes(batch: &Bytes, bits: i16) -> Bytes {
    let mut bytes = BytesMut::from(&batch[..]);
    let attributes = i16::from_be_bytes([bytes[21], bytes[22]]) | bits;
    bytes[21..23].copy_from_slice(&attributes.to_be_bytes());
    let crc = crc32c::crc32c(&bytes[21..]);
    bytes[17..21].copy_from_slice(&crc.to_be_bytes());
    bytes.freeze()
}

#[test]
fn header_fields_the_library_encoder_would_lose_are_kept() {
    // LogAppendTime (bit 3), transactional (bit 4) and a max timestamp set by the broker.
    let input = with_attributes(&encode(&sample_records(), Compression::Snappy), 0b1_1000);
    let mut input = BytesMut::from(&input[..]);
    input[35..43].copy_from_slice(&1_800_000_000_000i64.to_be_bytes());
    let crc = crc32c::crc32c(&input[21..]);
    input[17..21].copy_from_slice(&crc.to_be_bytes());
    let output = mask_batch(&input, &batch_plan(), &mut MaskStats::default())
        .unwrap()
        .unwrap();
    assert_eq!(input[21..61], output[21..61]);
    let decoded = decode(output);
    assert!(decoded.iter().all(|r| r.transactional));
    assert_eq!(decoded[0].timestamp_type, TimestampType::LogAppend);
}

#[test]
fn repeated_header_keys_are_kept() {
    // The library's Record keeps headers in a map, so build the record bytes by hand: one
    // record with headers x-user=a, x-user=b, trace=t.
    let mut body = vec![0u8]; // attributes
    body.extend([0, 0]); // timestamp delta 0, offset delta 0
    body.push(1); // key: null (-1)
    let value = br#"{"n":1}"#;
    body.push((value.len() * 2) as u8);
    body.extend_from_slice(value);
    body.push(6); // 3 headers
    for (key, val) in [("x-user", "a"), ("x-user", "b"), ("trace", "t")] {
        body.push((key.len() * 2) as u8);
        body.extend_from_slice(key.as_bytes());
        body.push((val.len() * 2) as u8);
        body.extend_from_slice(val.as_bytes());
    }
    let mut records = vec![(body.len() * 2) as u8];
    records.extend_from_slice(&body);
    let template = encode(&[record(0, Some(b"x"), &[])], Compression::None);
    let mut batch = BytesMut::from(&template[..61]);
    batch.extend_from_slice(&records);
    let length = (batch.len() - 12) as i32;
    batch[8..12].copy_from_slice(&length.to_be_bytes());
    let crc = crc32c::crc32c(&batch[21..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
    let output = mask_batch(&batch, &batch_plan(), &mut MaskStats::default())
        .unwrap()
        .unwrap();
    // Both x-user headers became null, in place; the bytes are otherwise the same.
    let expected: Vec<u8> = {
        let mut body = vec![0u8, 0, 0, 1, (value.len() * 2) as u8];
        body.extend_from_slice(value);
        body.push(6);
        for (key, val) in [("x-user", None), ("x-user", None), ("trace", Some("t"))] {
            body.push((key.len() * 2) as u8);
            body.extend_from_slice(key.as_bytes());
            match val {
                None => body.push(1),
                Some(val) => {
                    body.push((val.len() * 2) as u8);
                    body.extend_from_slice(val.as_bytes());
                }
            }
        }
        let mut record = vec![(body.len() * 2) as u8];
        record.extend_from_slice(&body);
        record
    };
    assert_eq!(output[61..], expected[..]);
    assert_eq!(decode(output).len(), 1);
}

#[test]
fn control_batches_and_empty_plans_are_left_alone() {
    let control = with_attributes(&encode(&sample_records(), Compression::None), 1 << 5);
    assert_eq!(
        mask_batch(&control, &batch_plan(), &mut MaskStats::default()).unwrap(),
        None
    );
    let empty = MaskingPlan::new(&[], Flow::Consume, &keys()).unwrap();
    assert!(empty.is_empty());
    assert_eq!(
        mask_batch(b"garbage", &empty, &mut MaskStats::default()).unwrap(),
        None
    );
}

#[test]
fn a_cut_off_last_batch_is_dropped_from_fetches_and_refused_in_produces() {
    let first = encode(&[record(0, Some(br#"{"n":1}"#), &[])], Compression::None);
    let second = encode(&sample_records(), Compression::None);
    let mut fetch = BytesMut::from(&first[..]);
    fetch.extend_from_slice(&second[..second.len() - 5]);
    let mut stats = MaskStats::default();
    let output = mask_batch(&fetch, &batch_plan(), &mut stats)
        .unwrap()
        .unwrap();
    assert_eq!(output, first);
    assert_eq!(stats.truncated_batches_dropped, 1);
    // Even a tail too short to hold a length.
    let mut short = BytesMut::from(&first[..]);
    short.extend_from_slice(&[0, 0, 0]);
    assert_eq!(
        mask_batch(&short, &batch_plan(), &mut stats)
            .unwrap()
            .unwrap(),
        first
    );

    let produce = MaskingPlan::new(
        &rules(&["  direction: Produce\n  fields: [{path: email}]\n"]),
        Flow::Produce,
        &keys(),
    )
    .unwrap();
    assert!(matches!(
        mask_batch(&fetch, &produce, &mut stats),
        Err(MaskError::Truncated { position }) if position == first.len()
    ));
}

#[test]
fn unreadable_batches_are_errors() {
    let good = encode(&sample_records(), Compression::Gzip);
    let plan = batch_plan();
    let mut stats = MaskStats::default();

    let mut bad_crc = BytesMut::from(&good[..]);
    bad_crc[70] ^= 1;
    assert!(matches!(
        mask_batch(&bad_crc, &plan, &mut stats),
        Err(MaskError::Crc { position: 0, .. })
    ));

    let mut old = BytesMut::from(&good[..]);
    old[16] = 1;
    let error = mask_batch(&old, &plan, &mut stats).unwrap_err();
    assert!(matches!(
        error,
        MaskError::UnsupportedFormat { magic: 1, .. }
    ));
    assert!(error.to_string().contains("message format v1"), "{error}");

    let garbage_codec = with_attributes(&good, 0b111);
    assert!(matches!(
        mask_batch(&garbage_codec, &plan, &mut stats),
        Err(MaskError::Corrupt { .. })
    ));

    // Gzip garbage with a valid CRC.
    let mut garbled = BytesMut::from(&good[..]);
    for byte in &mut garbled[70..90] {
        *byte = 0x5a;
    }
    let crc = crc32c::crc32c(&garbled[21..]);
    garbled[17..21].copy_from_slice(&crc.to_be_bytes());
    assert!(matches!(
        mask_batch(&garbled, &plan, &mut stats),
        Err(MaskError::Decompress {
            codec: Compression::Gzip,
            ..
        })
    ));

    let small = batch_plan().with_max_decompressed_bytes(16);
    assert!(matches!(
        mask_batch(&good, &small, &mut stats),
        Err(MaskError::TooLarge { limit: 16, .. })
    ));

    // A record count that does not match the records.
    let mut count = BytesMut::from(&encode(&sample_records(), Compression::None)[..]);
    count[60] -= 1;
    let crc = crc32c::crc32c(&count[21..]);
    count[17..21].copy_from_slice(&crc.to_be_bytes());
    let error = mask_batch(&count, &plan, &mut stats).unwrap_err();
    assert!(error.to_string().contains("record count"), "{error}");
}

#[test]
fn batches_are_masked_within_their_memory_allowance_or_refused() {
    use super::budget::{MemoryBudget, OverBudget};

    // ~8 MiB of records, every one rewritten: in every codec it fits 32 MiB, using about
    // twice its size (the records and their rewritten copy).
    let pad = "p".repeat(8 << 10);
    let value = format!(r#"{{"email": "a@b.io", "pad": "{pad}"}}"#);
    let records: Vec<Record> = (0..1000)
        .map(|i| record(i, Some(value.as_bytes()), &[]))
        .collect();
    let size = 1000 * value.len();
    let plan = batch_plan();
    for compression in [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ] {
        let batch = encode(&records, compression);
        let budget = MemoryBudget::new(64 << 20, 32 << 20);
        let mut allowance = budget.allowance();
        let mut stats = MaskStats::default();
        let masked = mask_batch_within(&batch, &plan, &mut stats, &mut allowance)
            .unwrap_or_else(|e| panic!("{compression:?}: {e}"))
            .unwrap();
        assert_eq!(stats.records_masked, 1000);
        assert_eq!(decode(masked).len(), 1000);
        let held = allowance.held();
        assert!(held >= size, "{compression:?}: held {held}");
        assert!(held <= 3 * size, "{compression:?}: held {held} for {size}");
        drop(allowance);
        assert_eq!(budget.used(), 0);

        // The same batch past one connection's allowance: refused for good.
        let small = MemoryBudget::new(64 << 20, 4 << 20);
        let error =
            mask_batch_within(&batch, &plan, &mut stats, &mut small.allowance()).unwrap_err();
        assert!(
            matches!(
                error,
                MaskError::Memory {
                    over: OverBudget::Connection { .. },
                    ..
                }
            ),
            "{compression:?}: {error}"
        );
        // Past what the proxy has left while others hold it: refused for now.
        let busy = MemoryBudget::new(40 << 20, 32 << 20);
        let mut other = busy.allowance();
        other.hold(30 << 20).unwrap();
        let error =
            mask_batch_within(&batch, &plan, &mut stats, &mut busy.allowance()).unwrap_err();
        assert!(
            matches!(
                error,
                MaskError::Memory {
                    over: OverBudget::Proxy { .. },
                    ..
                }
            ),
            "{compression:?}: {error}"
        );
        drop(other);
        assert_eq!(busy.used(), 0);
    }
}

// ---- Properties ----

/// JSON values with the strings detectors look for mixed in.
/// A record set of `batches` batches of eight ~1 KiB JSON records that do not compress away;
/// the records of batch `i` hold an email to mask when `with_email(i)`.
fn large_record_set(
    batches: usize,
    codec: Compression,
    with_email: impl Fn(usize) -> bool,
) -> BytesMut {
    let mut set = BytesMut::new();
    for batch in 0..batches {
        let records: Vec<Record> = (0..8)
            .map(|r| {
                let offset = (batch * 8 + r) as i64;
                // Letters only: digits could look like card numbers to the detector.
                let note: String = (0..900u64)
                    .map(|i| {
                        let mut noise =
                            (offset as u64 * 1_000 + i).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                        noise = (noise ^ (noise >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                        char::from(b'a' + ((noise ^ (noise >> 27)) % 26) as u8)
                    })
                    .collect();
                let value = match with_email(batch) {
                    true => format!(r#"{{"email": "user{offset}@example.com", "note": "{note}"}}"#),
                    false => format!(r#"{{"note": "{note}"}}"#),
                };
                record(offset, Some(value.as_bytes()), &[])
            })
            .collect();
        set.extend_from_slice(&encode(&records, codec));
    }
    set
}

#[test]
fn large_record_sets_are_masked_in_halves_with_the_one_pass_result() {
    use super::batch::split_point;
    use super::budget::MemoryBudget;

    let plan = batch_plan();
    let budget = MemoryBudget::new(64 << 20, 32 << 20);
    let both = |set: &[u8]| {
        let mut one_pass_stats = MaskStats::default();
        let one_pass = mask_batch(set, &plan, &mut one_pass_stats);
        let mut halves_stats = MaskStats::default();
        // As in the proxy: this thread masks the first half, rayon's pool the second.
        assert!(
            split_point(set).is_some(),
            "{} bytes are not split",
            set.len()
        );
        let halves = mask_record_set(set, &plan, &mut halves_stats, &budget);
        assert_eq!(budget.used(), 0, "every allowance is given back");
        (one_pass, one_pass_stats, halves, halves_stats)
    };
    let all = |_: usize| true;
    let first_half = |batch: usize| batch < 16;
    let second_half = |batch: usize| batch >= 16;
    let none = |_: usize| false;
    for codec in [Compression::None, Compression::Lz4] {
        for with_email in [
            &all as &dyn Fn(usize) -> bool,
            &first_half,
            &second_half,
            &none,
        ] {
            let set = large_record_set(32, codec, with_email);
            assert!(set.len() >= PARALLEL_FROM, "{codec:?}: {} bytes", set.len());
            let (one_pass, one_pass_stats, halves, halves_stats) = both(&set);
            assert_eq!(halves.unwrap(), one_pass.unwrap(), "{codec:?}");
            assert_eq!(halves_stats, one_pass_stats, "{codec:?}");
        }
        // What was masked is what one pass masks: every batch with an email is rewritten.
        let set = large_record_set(32, codec, first_half);
        let (_, stats, masked, _) = both(&set);
        assert_eq!(stats.batches_rewritten, 16);
        let values = decode(masked.unwrap().unwrap());
        assert_eq!(values.len(), 32 * 8);
        assert!(values.iter().all(|r| {
            !String::from_utf8_lossy(r.value.as_deref().unwrap()).contains("@example.com")
        }));

        // A Fetch whose last batch is cut short: dropped, as in one pass.
        let mut cut = large_record_set(32, codec, all);
        cut.truncate(cut.len() - 100);
        let (one_pass, one_pass_stats, halves, halves_stats) = both(&cut);
        assert_eq!(halves.unwrap(), one_pass.unwrap());
        assert_eq!(halves_stats.truncated_batches_dropped, 1);
        assert_eq!(halves_stats, one_pass_stats);

        // A corrupt batch in the second half: the one-pass error, at its position.
        let mut corrupt = large_record_set(32, codec, all);
        let at = corrupt.len() - 200;
        corrupt[at] ^= 1;
        let (one_pass, _, halves, _) = both(&corrupt);
        let (one_pass, halves) = (one_pass.unwrap_err(), halves.unwrap_err());
        assert!(matches!(halves, MaskError::Crc { .. }), "{halves}");
        assert_eq!(halves.to_string(), one_pass.to_string());
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let text = prop_oneof![
        "[a-zA-Z0-9 .@+-]{0,20}",
        Just("4111 1111 1111 1111".to_owned()),
        Just("bob@example.org".to_owned()),
        Just("+44 20 7946 0958".to_owned()),
        Just("DE89370400440532013000".to_owned()),
        Just("123-45-6789".to_owned()),
        Just("mail alice@example.com, card 5500-0000-0000-0004".to_owned()),
        Just("quote \" backslash \\ newline \n tab \t é 😀".to_owned()),
        Just("hmac:not-a-token".to_owned()),
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e9f64..1e9).prop_map(Value::from),
        Just(json!(4111111111111111u64)),
        text.prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("email".to_owned()),
                    Just("card".to_owned()),
                    Just("items".to_owned()),
                    Just("name".to_owned()),
                    "[a-z]{1,6}"
                ],
                inner,
                0..6
            )
            .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Plans with each idempotent strategy, on field paths and detectors.
fn idempotent_plans() -> Vec<MaskingPlan> {
    [
        "{type: Redact}",
        "{type: Placeholder, placeholder: '[x]'}",
        "{type: Nullify}",
        "{type: KeepFirst, count: 3}",
        "{type: KeepLast, count: 4}",
        HMAC,
    ]
    .iter()
    .map(|strategy| {
        plan(&format!(
            "  fields: [{{path: '..email', strategy: {strategy}}}, {{path: 'items[*]', strategy: {strategy}}}, {{path: name, strategy: {strategy}}}]\n  detectors: [{{type: CreditCard, strategy: {strategy}}}, {{type: Email, strategy: {strategy}}}, {{type: Phone, strategy: {strategy}}}, {{type: Iban, strategy: {strategy}}}, {{type: UsSsn, strategy: {strategy}}}]\n"
        ))
    })
    .collect()
}

/// The same shape: same keys, same array lengths, same types except where `masked` differs.
fn same_shape(input: &Value, masked: &Value) -> Result<(), String> {
    match (input, masked) {
        (Value::Object(a), Value::Object(b)) => {
            if !a.keys().eq(b.keys()) {
                return Err(format!("keys differ: {a:?} {b:?}"));
            }
            a.values()
                .zip(b.values())
                .try_for_each(|(a, b)| same_shape(a, b))
        }
        (Value::Array(a), Value::Array(b)) => {
            if a.len() != b.len() {
                return Err("array lengths differ".into());
            }
            a.iter().zip(b).try_for_each(|(a, b)| same_shape(a, b))
        }
        (Value::Object(_) | Value::Array(_), _) | (_, Value::Object(_) | Value::Array(_)) => {
            Err(format!("a container became a leaf: {input} {masked}"))
        }
        // A leaf may change type only by being masked (to a string or null).
        (a, b) if a == b => Ok(()),
        (_, Value::String(_) | Value::Null | Value::Number(_)) => Ok(()),
        (a, b) => Err(format!("{a} became {b}")),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn masking_keeps_json_valid_and_its_shape(value in json_value(), pretty in any::<bool>()) {
        let input = if pretty {
            serde_json::to_vec_pretty(&value).unwrap()
        } else {
            serde_json::to_vec(&value).unwrap()
        };
        let plans = idempotent_plans();
        let fp = plan(&format!("  fields: [{{path: '..card', strategy: {FORMAT_PRESERVING}}}]\n  detectors: [{{type: Email, strategy: {FORMAT_PRESERVING}}}]\n"));
        for plan in plans.iter().chain([&fp]) {
            let masked = mask_value(plan, &input);
            prop_assert!(!masked.parse_failed);
            let output: Value = serde_json::from_slice(&masked.bytes)
                .map_err(|e| TestCaseError::fail(format!("{e}: {}", String::from_utf8_lossy(&masked.bytes))))?;
            same_shape(&value, &output).map_err(TestCaseError::fail)?;
        }
    }

    #[test]
    fn masking_is_idempotent_for_idempotent_strategies(value in json_value()) {
        let input = serde_json::to_vec(&value).unwrap();
        for plan in idempotent_plans() {
            let once = mask_value(&plan, &input);
            let twice = mask_value(&plan, &once.bytes);
            prop_assert!(!twice.changed(), "{:?}\n{}\n{}", plan.rules(),
                String::from_utf8_lossy(&once.bytes), String::from_utf8_lossy(&twice.bytes));
        }
    }

    #[test]
    fn leaves_are_selected_as_the_full_path_automaton_selects_them(value in json_value()) {
        let input = serde_json::to_vec_pretty(&value).unwrap();
        let paths = plan(
            "  fields: [{path: 'items[*].card'}, {path: 'items[1]', strategy: {type: Nullify}}, {path: '..email', strategy: {type: KeepLast, count: 2}}, {path: 'card'}, {path: '*.name', strategy: {type: KeepFirst, count: 1}}, {path: 'items..items[0]', strategy: {type: Nullify}}, {path: '$[2]'}]\n  detectors: [{type: Email}]\n",
        );
        let shortcut = mask_value(&paths, &input);
        super::json::EVERY_CHILD_A_CONTAINER.with(|full| full.set(true));
        let full = mask_value(&paths, &input);
        super::json::EVERY_CHILD_A_CONTAINER.with(|full| full.set(false));
        prop_assert_eq!(shortcut, full);
    }

    #[test]
    fn masking_any_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        for plan in idempotent_plans().iter().take(2) {
            let masked = mask_value(plan, &bytes);
            if masked.parse_failed {
                prop_assert_eq!(&*masked.bytes, b"\"****\"".as_slice());
            }
        }
        let text = plan("  format: Text\n  detectors: [{type: CreditCard}, {type: Email}, {type: Phone}, {type: Iban}, {type: UsSsn}, {type: Jwt}, {type: CloudAccessKey}]\n");
        let _ = mask_value(&text, &bytes);
    }

    #[test]
    fn batches_round_trip_with_masked_values_and_everything_else_equal(
        values in prop::collection::vec((json_value(), any::<bool>()), 1..8),
        codec in prop::sample::select(CODECS.to_vec()),
        base in 0i64..1_000_000,
    ) {
        let plan = &idempotent_plans()[0];
        let records: Vec<Record> = values
            .iter()
            .enumerate()
            .map(|(i, (value, with_header))| {
                let json = serde_json::to_vec(value).unwrap();
                let headers: &[(&str, Option<&[u8]>)] = if *with_header {
                    &[("x-user", Some(b"alice")), ("trace", None)]
                } else {
                    &[]
                };
                record(base + i as i64, Some(&json), headers)
            })
            .collect();
        let input = encode(&records, codec);
        let output = mask_batch(&input, plan, &mut MaskStats::default()).unwrap();
        let decoded = decode(output.clone().unwrap_or_else(|| input.clone()));
        prop_assert_eq!(decoded.len(), records.len());
        for (original, masked) in records.iter().zip(&decoded) {
            let expected_value = mask_value(plan, original.value.as_deref().unwrap());
            prop_assert_eq!(masked.value.as_deref(), Some(&*expected_value.bytes));
            let mut rest = masked.clone();
            rest.value = original.value.clone();
            prop_assert_eq!(&rest, original);
        }
        if output.is_none() {
            prop_assert!(records.iter().all(|r| !mask_value(plan, r.value.as_deref().unwrap()).changed()));
        }
    }

    #[test]
    fn batches_of_any_bytes_are_errors_not_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = mask_batch(&bytes, &batch_plan(), &mut MaskStats::default());
    }

    #[test]
    fn corrupted_batches_with_a_valid_crc_are_errors_not_panics(
        codec in prop::sample::select(CODECS.to_vec()),
        flips in prop::collection::vec((61usize..400, any::<u8>()), 1..8),
        cut in 0usize..64,
    ) {
        let good = encode(&sample_records(), codec);
        let mut bytes = BytesMut::from(&good[..]);
        for (at, value) in flips {
            if at < bytes.len() {
                bytes[at] = value;
            }
        }
        let end = bytes.len().saturating_sub(cut).max(61);
        bytes.truncate(end);
        let length = (bytes.len() - 12) as i32;
        bytes[8..12].copy_from_slice(&length.to_be_bytes());
        let crc = crc32c::crc32c(&bytes[21..]);
        bytes[17..21].copy_from_slice(&crc.to_be_bytes());
        for flow in [Flow::Consume, Flow::Produce] {
            let plan = MaskingPlan::new(&rules(&["  direction: Both\n  fields: [{path: email}]\n  detectors: [{type: CreditCard}]\n  headers: [{name: x-user}]\n"]), flow, &keys()).unwrap();
            if let Ok(Some(output)) = mask_batch(&bytes, &plan, &mut MaskStats::default()) {
                // Whatever was accepted comes out as valid batches (CRC, lengths, counts). The
                // library's decoder also wants header keys in UTF-8, which Kafka does not check.
                prop_assert!(mask_batch(&output, &plan, &mut MaskStats::default()).is_ok());
                let mut copy = output.clone();
                if let Err(error) = RecordBatchDecoder::decode_all(&mut copy) {
                    prop_assert!(error.to_string().contains("utf-8"), "{}", error);
                }
            }
        }
    }
}

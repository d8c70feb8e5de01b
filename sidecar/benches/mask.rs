//! Masking throughput on realistic records: ~1 KiB JSON customer orders with an email, a card
//! number, a phone number, nested arrays and free text, masked by field paths and detectors.
//!
//! `cargo bench -p streamward-sidecar --bench mask` (add `-- --quick` for a short run). The
//! design's target is 300 MB/s per core for JSON masking.

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use std::hint::black_box;
use streamward_api::compile::{compile, parse_manifests};
use streamward_api::config::{Flow, SecretKeyRef, WorkloadIdentity};
use streamward_sidecar::mask::{MaskStats, MaskingKeys, MaskingPlan, mask_batch, mask_value};

const RULE: &str = r#"
apiVersion: streamward.io/v1alpha1
kind: MaskingRule
metadata: {name: orders-pii, namespace: shop}
spec:
  topics: [{name: orders}]
  fields:
    - {path: customer.email, strategy: {type: Hmac, keySecretRef: {name: masking, key: key}}}
    - {path: customer.phone, strategy: {type: KeepLast, count: 4}}
    - {path: 'payment.card.number', strategy: {type: KeepLast, count: 4}}
    - {path: '..iban'}
  detectors:
    - {type: CreditCard, strategy: {type: KeepLast, count: 4}}
    - {type: Email}
    - {type: Phone}
"#;

fn plan() -> MaskingPlan {
    let identity = WorkloadIdentity {
        namespace: "shop".into(),
        service_account: "analytics".into(),
    };
    let config = compile(&parse_manifests(RULE).unwrap(), &identity).unwrap();
    let mut keys = MaskingKeys::new();
    keys.insert(
        SecretKeyRef {
            name: "masking".into(),
            key: "key".into(),
        },
        &b"0123456789abcdef0123456789abcdef"[..],
    );
    MaskingPlan::new(&config.masking, Flow::Consume, &keys).unwrap()
}

/// A customer order of about 1 KiB; `n` varies the values.
fn order(n: u64) -> Vec<u8> {
    let cards = [
        "4111 1111 1111 1111",
        "5500-0000-0000-0004",
        "378282246310005",
    ];
    let items: Vec<_> = (0..3 + n % 3)
        .map(|i| {
            let name =
                ["Espresso beans 1kg", "Milk frother", "Ceramic cup, blue"][(i % 3) as usize];
            serde_json::json!({
                "sku": format!("SKU-{:05}", (n * 7 + i) % 100_000),
                "name": name,
                "quantity": 1 + (n + i) % 4,
                "unitPrice": 4.5 + ((n + i) % 20) as f64,
                "tags": ["coffee", "kitchen"],
            })
        })
        .collect();
    let order = serde_json::json!({
        "orderId": format!("ord-{n:08}"),
        "createdAt": "2025-06-01T12:34:56.789Z",
        "status": "PAID",
        "customer": {
            "id": format!("cus-{:06}", n % 1_000_000),
            "name": "Alice Example",
            "email": format!("alice.{n}@example.com"),
            "phone": "+1 415 555 2671",
            "address": {"street": "1 Market St", "city": "San Francisco", "zip": "94105", "country": "US"},
        },
        "payment": {
            "method": "card",
            "card": {"number": cards[(n % 3) as usize], "expiry": "12/29", "holder": "ALICE EXAMPLE"},
            "amount": 42.90,
            "currency": "USD",
        },
        "items": items,
        "notes": format!("Leave at the door. Questions: call 415-555-{:04} or mail support@example.com", n % 10_000),
        "shipping": {"carrier": "UPS", "tracking": format!("1Z999AA1{:010}", n), "eta": "2025-06-04"},
    });
    serde_json::to_vec(&order).unwrap()
}

fn batch(values: &[Vec<u8>], compression: Compression) -> Bytes {
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, value)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: 1000,
            producer_epoch: 0,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: i as i32,
            timestamp: 1_750_000_000_000 + i as i64,
            key: Some(Bytes::from(format!("ord-{i:08}"))),
            value: Some(Bytes::copy_from_slice(value)),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .unwrap();
    buf.freeze()
}

fn benches(c: &mut Criterion) {
    let plan = plan();
    let values: Vec<Vec<u8>> = (0..100).map(order).collect();
    let total: usize = values.iter().map(Vec::len).sum();
    eprintln!(
        "records: {} JSON orders, {} bytes on average",
        values.len(),
        total / values.len()
    );
    // Sanity: the benchmark masks what it should.
    let sample = mask_value(&plan, &values[0]);
    assert!(
        sample.fields_masked >= 5,
        "{}",
        String::from_utf8_lossy(&sample.bytes)
    );

    let mut group = c.benchmark_group("mask");
    group.throughput(Throughput::Bytes(total as u64));
    group.bench_function("mask_value/json_1KiB_x100", |b| {
        b.iter(|| {
            for value in &values {
                black_box(mask_value(&plan, black_box(value)));
            }
        })
    });
    for (name, compression) in [("none", Compression::None), ("lz4", Compression::Lz4)] {
        let records = batch(&values, compression);
        group.bench_function(format!("mask_batch/{name}_100x1KiB"), |b| {
            b.iter(|| {
                let mut stats = MaskStats::default();
                black_box(mask_batch(black_box(&records), &plan, &mut stats).unwrap())
            })
        });
    }
    group.finish();
}

criterion_group!(mask, benches);
criterion_main!(mask);

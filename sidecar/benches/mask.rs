//! Masking throughput on realistic records: ~1 KiB JSON customer orders with an email, a card
//! number, a phone number, nested arrays and free text, masked by field paths and detectors.
//!
//! `cargo bench -p streamward-sidecar --bench mask` (add `-- --quick` for a short run). The
//! design's target is 300 MB/s per core for JSON masking.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kafka_protocol::records::Compression;
use std::hint::black_box;
use streamward_api::compile::{compile, parse_manifests};
use streamward_api::config::{Flow, SecretKeyRef, WorkloadIdentity};
use streamward_e2e::data::{order, record_batch};
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
        let records = record_batch(&values, compression).unwrap();
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

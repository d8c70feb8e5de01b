//! Realistic records for benchmarks: customer orders of about 1 KiB of JSON with an email, a
//! card number, a phone number, nested arrays and free text — what masking rules are written
//! for. The criterion benchmark of the masking engine and `just bench-mask` use the same ones.

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

/// A customer order of about 1.1 KiB of JSON; `n` varies the values.
pub fn order(n: u64) -> Vec<u8> {
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
    serde_json::to_vec(&order).expect("a JSON value serializes")
}

/// One record batch (magic 2) of `values`, keyed `ord-<i>`, offsets from 0, as a producer
/// sends it, stamped with the current time: the broker assigns the real offsets.
pub fn record_batch(values: &[Vec<u8>], compression: Compression) -> anyhow::Result<Bytes> {
    // Now: brokers refuse timestamps too far from their clock.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, value)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: -1,
            timestamp: now + i as i64,
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
    )?;
    Ok(buf.freeze())
}

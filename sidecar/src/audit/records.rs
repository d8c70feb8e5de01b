//! The records inside Kafka record batches, read for the audit trail: each record's offset, key,
//! value and headers, whatever the batch's compression, and the per-partition digests
//! ([`StoredRecords`]) that let `kubectl streamward replay` read the same offsets from Kafka
//! again and name the first record that differs.
//!
//! Only the v2 batch format (the one Kafka 4 brokers write) is read; control batches
//! (transaction markers) carry no records of the application's and are skipped. CRCs are not
//! checked: the proxy forwards what the broker sent, and so records what it sent.

use streamward_api::audit::{StoredRecords, StoredRecordsBuilder, record_digest};

use kafka_protocol::records::Compression;

use crate::mask::budget::MemoryBudget;
use crate::mask::compression::{codec, decompress_within};

/// The v2 batch header's length: the records (compressed or not) start after it.
const HEADER: usize = 61;
/// Most bytes one batch is decompressed to for the audit trail.
pub const BATCH_LIMIT: usize = 4 << 20;

/// One record of a batch.
#[derive(Debug, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// Its offset (the batch's base offset plus its delta).
    pub offset: i64,
    /// The key (`None` when null).
    pub key: Option<&'a [u8]>,
    /// The value (`None` when null).
    pub value: Option<&'a [u8]>,
    /// The headers: names and values (`None` when null).
    pub headers: Vec<(&'a [u8], Option<&'a [u8]>)>,
}

impl RecordView<'_> {
    /// The record's [`record_digest`].
    pub fn digest(&self) -> [u8; 32] {
        record_digest(self.key, self.value, self.headers.iter().copied())
    }
}

/// Why the records of a record set could not all be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordsError {
    /// A batch in a format other than v2.
    #[error("a record batch at offset {0} is not in the v2 format")]
    Format(i64),
    /// A batch whose compression is unknown, that does not decompress, or that is larger than
    /// [`BATCH_LIMIT`] decompressed.
    #[error("the record batch at offset {0} could not be decompressed within the audit's limit")]
    Decompress(i64),
    /// A record cut short or malformed inside a batch.
    #[error("a record of the batch at offset {0} is malformed")]
    Record(i64),
}

/// Calls `each` with every record of the v2 batches in `records`, in order, until it returns
/// `false`. A truncated last batch (a Fetch response may end with one) is left out. Stops at
/// the first batch it cannot read, with the error: the records before it were seen.
pub fn for_each_record(
    mut records: &[u8],
    each: &mut dyn FnMut(RecordView<'_>) -> bool,
) -> Result<(), RecordsError> {
    let mut plain = Vec::new();
    while records.len() >= HEADER {
        let base = i64::from_be_bytes(records[0..8].try_into().unwrap_or_default());
        let Ok(length) = usize::try_from(i32::from_be_bytes(
            records[8..12].try_into().unwrap_or_default(),
        )) else {
            return Err(RecordsError::Format(base));
        };
        let Some(total) = length.checked_add(12).filter(|&t| t <= records.len()) else {
            return Ok(()); // the truncated tail of a Fetch response
        };
        let batch = &records[..total];
        records = &records[total..];
        if batch[16] != 2 {
            return Err(RecordsError::Format(base));
        }
        let attributes = i16::from_be_bytes([batch[21], batch[22]]);
        if attributes & 0x20 != 0 {
            continue; // a control batch: transaction markers
        }
        let codec = codec(attributes).ok_or(RecordsError::Decompress(base))?;
        // Uncompressed records are read where they are: no copy, no memory to account for.
        let mut body: &[u8] = if codec == Compression::None {
            &batch[HEADER..]
        } else {
            let mut allowance = MemoryBudget::proxy().allowance();
            decompress_within(codec, &batch[HEADER..], BATCH_LIMIT, &mut plain, &mut |n| {
                allowance.hold(n)
            })
            .map_err(|_| RecordsError::Decompress(base))?;
            &plain
        };
        let count = i32::from_be_bytes(batch[57..61].try_into().unwrap_or_default());
        for _ in 0..count.max(0) {
            let record = next_record(&mut body, base).ok_or(RecordsError::Record(base))?;
            if !each(record) {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Digests of the records of one partition's record set, as [`StoredRecords`]; `budget` is the
/// event's room for runs of records ([`streamward_api::audit::RecordDigest`]). `None` when it
/// holds no record. Records after a batch that cannot be read are left out (the offsets say
/// which were covered).
pub fn stored_records(partition: i32, records: &[u8], budget: &mut usize) -> Option<StoredRecords> {
    digest_records(records, Some((partition, budget)), &mut |_| {})
}

/// Reads the records of a record set once: gives `each` every record's [`record_digest`], in
/// order, and with `partition` (its index, and the event's room for runs) returns the
/// partition's [`StoredRecords`], as [`stored_records`] does.
pub fn digest_records(
    records: &[u8],
    partition: Option<(i32, &mut usize)>,
    each: &mut dyn FnMut(&[u8; 32]),
) -> Option<StoredRecords> {
    let mut builder = partition.and_then(|(partition, budget)| {
        let (expected, _) = super::session::batch_stats(records);
        (expected > 0).then(|| StoredRecordsBuilder::new(partition, expected, budget))
    });
    // A batch that cannot be read ends what is covered: the offsets say how far.
    let _ = for_each_record(records, &mut |record| {
        let digest = record.digest();
        if let Some(builder) = &mut builder {
            builder.add(record.offset, &digest);
        }
        each(&digest);
        true
    });
    builder
        .filter(|builder| builder.records() > 0)
        .map(StoredRecordsBuilder::finish)
}

/// Reads one record (v2 format) from `body`; `base` is its batch's base offset. `None` when the
/// record is cut short or malformed.
fn next_record<'a>(body: &mut &'a [u8], base: i64) -> Option<RecordView<'a>> {
    let length = usize::try_from(varint(body)?).ok()?;
    let record = body.get(..length)?;
    *body = &body[length..];
    let mut r = record.get(1..)?; // attributes
    varint(&mut r)?; // timestamp delta
    let delta = varint(&mut r)?;
    let key = bytes(&mut r)?;
    let value = bytes(&mut r)?;
    let count = usize::try_from(varint(&mut r)?).unwrap_or(0);
    // Each header takes at least two bytes: a count beyond that is malformed, not a reason to
    // reserve memory.
    if count > r.len() / 2 {
        return None;
    }
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        let name = bytes(&mut r)?.unwrap_or_default();
        headers.push((name, bytes(&mut r)?));
    }
    Some(RecordView {
        offset: base.saturating_add(delta),
        key,
        value,
        headers,
    })
}

/// A varint-length-prefixed byte string (`Some(None)` for a null one).
fn bytes<'a>(r: &mut &'a [u8]) -> Option<Option<&'a [u8]>> {
    let length = varint(r)?;
    if length < 0 {
        return Some(None);
    }
    let length = usize::try_from(length).ok()?;
    let field = r.get(..length)?;
    *r = &r[length..];
    Some(Some(field))
}

/// A zig-zag varint (Kafka's record fields).
fn varint(bytes: &mut &[u8]) -> Option<i64> {
    let mut raw: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        raw |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some((raw >> 1) as i64 ^ -((raw & 1) as i64));
        }
    }
    None
}

#[cfg(test)]
pub(super) mod tests {
    use bytes::Bytes;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    use streamward_api::audit::{RECORD_DIGEST_HEX, RecordDigest};

    use super::*;

    pub(crate) fn record(offset: i64, value: &str, header: bool) -> Record {
        let mut headers = kafka_protocol::indexmap::IndexMap::new();
        if header {
            headers.insert("trace".into(), Some(Bytes::from_static(b"t-1")));
        }
        Record {
            transactional: false,
            control: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset,
            sequence: -1,
            timestamp: 1_700_000_000_000 + offset,
            key: (offset % 2 == 0).then(|| Bytes::from(format!("k{offset}"))),
            value: Some(Bytes::from(value.to_string())),
            headers,
            delete_horizon: false,
        }
    }

    pub(crate) fn encode(records: &[Record], compression: Compression) -> Vec<u8> {
        let mut out = bytes::BytesMut::new();
        RecordBatchEncoder::encode(
            &mut out,
            records,
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .unwrap();
        out.to_vec()
    }

    #[test]
    fn every_codec_yields_the_same_records_and_digests() {
        let records: Vec<Record> = (10..14)
            .map(|o| record(o, &format!("{{\"n\":{o}}}"), o == 11))
            .collect();
        let mut expected = None;
        for compression in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let bytes = encode(&records, compression);
            let mut seen = Vec::new();
            for_each_record(&bytes, &mut |r| {
                seen.push((r.offset, r.key.map(<[u8]>::to_vec), r.headers.len()));
                true
            })
            .unwrap();
            assert_eq!(
                seen,
                vec![
                    (10, Some(b"k10".to_vec()), 0),
                    (11, None, 1),
                    (12, Some(b"k12".to_vec()), 0),
                    (13, None, 0),
                ],
                "{compression:?}"
            );
            let stored = stored_records(3, &bytes, &mut 100).unwrap();
            match &expected {
                None => expected = Some(stored),
                Some(first) => assert_eq!(&stored, first, "{compression:?}"),
            }
        }
        let stored = expected.unwrap();
        assert_eq!(stored.partition, 3);
        assert_eq!(stored.records, 4);
        let offsets = stored.offsets.unwrap();
        assert_eq!((offsets.first, offsets.last), (10, 13));
        let RecordDigest(offset, hex) = &stored.digests[1];
        assert_eq!(*offset, 11);
        assert_eq!(hex.len(), RECORD_DIGEST_HEX);
    }

    #[test]
    fn a_changed_value_changes_only_its_own_digest() {
        let plain: Vec<Record> = (0..3).map(|o| record(o, "card 4111", false)).collect();
        let mut altered = plain.clone();
        altered[1].value = Some(Bytes::from_static(b"card 9999"));
        let a = stored_records(0, &encode(&plain, Compression::None), &mut 10).unwrap();
        let b = stored_records(0, &encode(&altered, Compression::None), &mut 10).unwrap();
        assert_ne!(a.sha256, b.sha256);
        assert_eq!(a.digests[0], b.digests[0]);
        assert_ne!(a.digests[1], b.digests[1]);
        assert_eq!(a.digests[2], b.digests[2]);
    }

    #[test]
    fn the_budget_makes_runs_of_records_and_leaves_the_partition_digest_whole() {
        let records: Vec<Record> = (0..5).map(|o| record(o, "v", false)).collect();
        let bytes = encode(&records, Compression::Lz4);
        let mut budget = 2;
        let stored = stored_records(0, &bytes, &mut budget).unwrap();
        assert_eq!(budget, 0);
        assert_eq!(stored.records, 5);
        // Two runs: offsets 0–2 and 3–4.
        let starts: Vec<i64> = stored.digests.iter().map(|d| d.0).collect();
        assert_eq!(starts, vec![0, 3]);
        let one_each = stored_records(0, &bytes, &mut 9).unwrap();
        assert_eq!(one_each.digests.len(), 5);
        assert_eq!(stored.sha256, one_each.sha256);
        // Without room, only the partition digest.
        let none = stored_records(0, &bytes, &mut 0).unwrap();
        assert!(none.digests.is_empty());
        assert_eq!(none.sha256, one_each.sha256);
    }

    #[test]
    fn truncated_and_malformed_input_is_reported_not_panicked_on() {
        let records: Vec<Record> = (0..3).map(|o| record(o, "v", true)).collect();
        let bytes = encode(&records, Compression::None);
        // A Fetch response may end with part of a batch: nothing of it is read.
        let cut = stored_records(0, &bytes[..bytes.len() - 5], &mut 9);
        assert!(cut.as_ref().is_none_or(|cut| cut.records < 3), "{cut:?}");
        assert_eq!(stored_records(0, &bytes[..HEADER - 1], &mut 9), None);
        // A record body that lies about its length.
        let mut broken = bytes.clone();
        broken[HEADER] = 0x7f;
        assert_eq!(
            for_each_record(&broken, &mut |_| true),
            Err(RecordsError::Record(0))
        );
        let mut old = bytes;
        old[16] = 1;
        assert_eq!(
            for_each_record(&old, &mut |_| true),
            Err(RecordsError::Format(0))
        );
        assert_eq!(
            for_each_record(&[0xff; 64], &mut |_| true),
            Err(RecordsError::Format(-1))
        );
    }
}

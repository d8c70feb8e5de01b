//! The hashing an event's payload needs at `PayloadDigest` and up: the payload digest of the
//! records the request carried, and per partition the record digests `kubectl streamward
//! replay` compares with Kafka.
//!
//! Every record is read and hashed once ([`streamward_api::audit::record_digest`]); the
//! payload digest and the partitions' [`StoredRecords`] are built from those digests. When
//! the records a client got are the ones the broker sent (a Fetch not masked, and always a
//! Produce), one pass over them serves both.
//!
//! The data path collects the record sets (reference-counted slices of the frames, no copy)
//! into a [`PayloadWork`]: a Produce's are read once the request is written to the broker
//! (so its buffer is not held while the broker writes), a Fetch's once the response is sent.

use bytes::Bytes;
use sha2::{Digest, Sha256};
use streamward_api::audit::{
    OffsetRange, Payload, RECORD_DIGESTS, RecordDigest, RequestRecord, StoredRecords,
};

use super::records;

/// The record sets of one event, and what was read from them.
pub struct PayloadWork {
    /// Each record set once, in the order first named.
    sets: Vec<RecordSet>,
    /// The sets the payload digest covers, in order (indexes into `sets`): as the broker got
    /// them (Produce) or as the client got them, after masking (Fetch).
    payload: Vec<usize>,
    /// Room left for runs of record digests ([`RECORD_DIGESTS`] per event).
    budget: usize,
}

impl Default for PayloadWork {
    fn default() -> PayloadWork {
        PayloadWork {
            sets: Vec::new(),
            payload: Vec::new(),
            budget: RECORD_DIGESTS,
        }
    }
}

/// One partition's record set.
struct RecordSet {
    /// The records, until they are read.
    records: Option<Bytes>,
    /// Once read, every record's digest, in order, when the payload digest covers them.
    digests: Vec<[u8; 32]>,
    /// Where it is stored in Kafka, when the event keeps its record digests.
    stored: Option<Stored>,
}

struct Stored {
    topic: String,
    operation: &'static str,
    partition: i32,
    written: Written,
    /// Once read, the partition's digests (offsets as the batches carry them).
    records: Option<StoredRecords>,
}

/// Where a partition's records are in Kafka.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Written {
    /// Read by a Fetch: the batches carry their offsets.
    Fetched,
    /// Sent in a Produce the broker has not answered (yet): offsets unknown.
    Unanswered,
    /// Written by the broker at this base offset.
    At(i64),
}

impl PayloadWork {
    /// The set holding exactly `records` (the same bytes, not a copy) and not read yet, added
    /// if new.
    fn set(&mut self, records: &Bytes) -> usize {
        let same = |set: &RecordSet| {
            set.records
                .as_ref()
                .is_some_and(|r| r.as_ptr() == records.as_ptr() && r.len() == records.len())
        };
        if let Some(at) = self.sets.iter().position(same) {
            return at;
        }
        self.sets.push(RecordSet {
            records: Some(records.clone()),
            digests: Vec::new(),
            stored: None,
        });
        self.sets.len() - 1
    }

    /// Adds a record set to what the payload digest covers.
    pub fn digest(&mut self, records: &Bytes) {
        let at = self.set(records);
        self.payload.push(at);
    }

    /// Adds a partition of a Fetch response, as the broker sent it.
    pub fn fetched(&mut self, topic: &str, partition: i32, records: &Bytes) {
        self.stored(topic, "Read", partition, records, Written::Fetched);
    }

    /// Adds a partition of a Produce request, to be placed by the broker's answer.
    pub fn produced(&mut self, topic: &str, partition: i32, records: &Bytes) {
        self.stored(topic, "Write", partition, records, Written::Unanswered);
    }

    fn stored(
        &mut self,
        topic: &str,
        operation: &'static str,
        partition: i32,
        records: &Bytes,
        written: Written,
    ) {
        let at = self.set(records);
        self.sets[at].stored = Some(Stored {
            topic: topic.to_string(),
            operation,
            partition,
            written,
            records: None,
        });
    }

    /// Reads and hashes the record sets not read yet, and lets go of them: a Produce's records
    /// are read before the broker answers, so the request's buffer is not held meanwhile.
    pub fn read(&mut self) {
        let mut in_payload = vec![false; self.sets.len()];
        for &at in &self.payload {
            in_payload[at] = true;
        }
        for (set, in_payload) in self.sets.iter_mut().zip(in_payload) {
            let Some(records) = set.records.take() else {
                continue;
            };
            let digests = &mut set.digests;
            let mut each = |digest: &[u8; 32]| {
                if in_payload {
                    digests.push(*digest);
                }
            };
            match &mut set.stored {
                Some(stored) => {
                    stored.records = records::digest_records(
                        &records,
                        Some((stored.partition, &mut self.budget)),
                        &mut each,
                    );
                }
                None if in_payload => {
                    records::digest_records(&records, None, &mut each);
                }
                None => {}
            }
        }
    }

    /// Whether produced records wait for the offsets the broker writes them at.
    pub fn awaits_offsets(&self) -> bool {
        self.sets.iter().any(|set| {
            set.stored
                .as_ref()
                .is_some_and(|s| s.written == Written::Unanswered)
        })
    }

    /// The broker answered partition `partition` of `topic`: written at `base_offset`, or,
    /// with an error, not written at all (its records get no digests: nothing was stored).
    pub fn answered(&mut self, topic: &str, partition: i32, written: Result<i64, ()>) {
        let Some(set) = self.sets.iter_mut().find(|set| {
            set.stored.as_ref().is_some_and(|s| {
                s.written == Written::Unanswered && s.partition == partition && s.topic == topic
            })
        }) else {
            return;
        };
        match (written, &mut set.stored) {
            (Ok(base_offset), Some(stored)) => stored.written = Written::At(base_offset),
            _ => set.stored = None,
        }
    }

    /// Reads what is left and puts the digests on `record`: the payload digest, and per
    /// partition the records' digests in runs, within [`RECORD_DIGESTS`] runs for the event.
    pub fn complete(mut self, record: &mut RequestRecord) {
        self.read();
        let mut digest = Sha256::new();
        for &at in &self.payload {
            for record_digest in &self.sets[at].digests {
                digest.update(record_digest);
            }
        }
        record.payload.get_or_insert_with(Payload::default).sha256 =
            Some(hex::encode(digest.finalize()));
        for set in self.sets {
            let Some(stored) = set.stored else { continue };
            let Some(mut records) = stored.records else {
                continue;
            };
            place(&mut records, stored.written);
            attach(record, &stored.topic, stored.operation, records);
        }
    }
}

/// Gives a partition's records the offsets they have in Kafka.
fn place(records: &mut StoredRecords, written: Written) {
    match written {
        Written::Fetched => {}
        // Never answered (acks=0, or the session ended): what was sent, without offsets.
        Written::Unanswered => {
            records.offsets = None;
            records.digests.clear();
        }
        Written::At(base_offset) => {
            let shift = |offset: i64| offset.saturating_add(base_offset);
            records.offsets = records.offsets.map(|r| OffsetRange {
                first: shift(r.first),
                last: shift(r.last),
            });
            for RecordDigest(offset, _) in &mut records.digests {
                *offset = shift(*offset);
            }
        }
    }
}

/// Adds `stored` to the resource for topic `name` and `operation`.
fn attach(record: &mut RequestRecord, name: &str, operation: &str, stored: StoredRecords) {
    if let Some(resource) = record
        .resources
        .iter_mut()
        .find(|r| r.resource_type == "Topic" && r.name == name && r.operation == operation)
    {
        resource.stored.push(stored);
    }
}

#[cfg(test)]
mod tests {
    use kafka_protocol::records::{Compression, Record};
    use streamward_api::audit::{Client, Decision, Identity, Request, Resource};

    use super::super::records::tests::{encode, record};
    use super::*;

    fn topic(operation: &str) -> RequestRecord {
        RequestRecord {
            session_id: "s".into(),
            sequence: 1,
            identity: Identity::default(),
            client: Client::default(),
            request: Request::default(),
            resources: vec![Resource {
                resource_type: "Topic".into(),
                name: "orders".into(),
                operation: operation.into(),
                ..Resource::default()
            }],
            decision: Decision::default(),
            masking: Vec::new(),
            approval: None,
            payload: None,
        }
    }

    fn fetch(
        records: &[Record],
        compression: Compression,
        masked: Option<&[Record]>,
    ) -> RequestRecord {
        let sent = Bytes::from(encode(records, compression));
        let mut work = PayloadWork::default();
        work.fetched("orders", 0, &sent);
        match masked {
            Some(masked) => work.digest(&Bytes::from(encode(masked, compression))),
            None => work.digest(&sent),
        }
        let mut record = topic("Read");
        work.complete(&mut record);
        record
    }

    #[test]
    fn the_payload_digest_covers_the_records_delivered_whatever_the_compression() {
        let records: Vec<Record> = (0..4)
            .map(|o| record(o, "{\"card\":\"4111\"}", o == 2))
            .collect();
        let masked: Vec<Record> = (0..4)
            .map(|o| record(o, "{\"card\":\"****\"}", o == 2))
            .collect();
        let plain = fetch(&records, Compression::None, None);
        let lz4 = fetch(&records, Compression::Lz4, None);
        let sha = |r: &RequestRecord| r.payload.as_ref().unwrap().sha256.clone().unwrap();
        assert_eq!(sha(&plain), sha(&lz4));
        assert_eq!(plain.resources, lz4.resources);
        // What Kafka holds is recorded before masking; the payload is what the client got.
        let hidden = fetch(&records, Compression::Lz4, Some(&masked));
        assert_ne!(sha(&hidden), sha(&plain));
        assert_eq!(hidden.resources, plain.resources);
        assert_eq!(sha(&hidden), sha(&fetch(&masked, Compression::None, None)));
    }

    #[test]
    fn a_record_set_named_twice_is_held_and_read_once() {
        let sent = Bytes::from(encode(&[record(0, "v", false)], Compression::None));
        let mut work = PayloadWork::default();
        work.fetched("orders", 0, &sent);
        work.digest(&sent);
        assert_eq!(work.sets.len(), 1);
        // A copy of the same bytes is another record set.
        work.digest(&Bytes::from(sent.to_vec()));
        assert_eq!(work.sets.len(), 2);
        // Read, the records are let go of; their digests stay.
        work.read();
        assert!(work.sets.iter().all(|set| set.records.is_none()));
        assert!(work.sets.iter().all(|set| set.digests.len() == 1));
    }
}

//! The audit event: one per Kafka request the proxy handles, sent to the collector.
//!
//! An event is a [CloudEvents 1.0](https://github.com/cloudevents/spec) JSON envelope
//! ([`AuditEvent`]); the proxy sends them in batches, a JSON array in the CloudEvents batch
//! format ([`BATCH_CONTENT_TYPE`]) posted to [`INGEST_PATH`] with a bearer token.
//!
//! Its id is `<session id>:<sequence>`: the same request always yields the same id, so an event
//! delivered twice (delivery is at least once) is stored once, and a gap in one session's
//! sequence numbers is a lost event the collector can name.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// The CloudEvents version of every event.
pub const SPEC_VERSION: &str = "1.0";
/// The `type` of an event recording one Kafka request.
pub const REQUEST_EVENT: &str = "io.streamward.audit.request.v1";
/// The `type` of an event saying the proxy had to drop events (its spool was full).
pub const DROPPED_EVENT: &str = "io.streamward.audit.dropped.v1";
/// The `type` of an event the collector records when someone reads the audit trail (never sent
/// by a proxy: ingest refuses it).
pub const QUERY_EVENT: &str = "io.streamward.audit.query.v1";
/// The media type of a batch of events (a JSON array).
pub const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json";
/// Where the collector takes batches (`POST`).
pub const INGEST_PATH: &str = "/v1/events";

/// A CloudEvents 1.0 envelope around one [`EventData`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Always [`SPEC_VERSION`].
    pub specversion: String,
    /// `<session id>:<sequence>`, unique and stable across redelivery.
    pub id: String,
    /// The proxy that saw the request: `/namespaces/<ns>/serviceaccounts/<sa>` (plus
    /// `/pods/<pod>` when the pod is known).
    pub source: String,
    /// [`REQUEST_EVENT`] or [`DROPPED_EVENT`].
    #[serde(rename = "type")]
    pub kind: String,
    /// When the proxy received the request.
    pub time: Timestamp,
    /// Always `application/json`.
    pub datacontenttype: String,
    /// The first resource the request names (a topic, group, …), for quick filtering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// What happened.
    pub data: EventData,
}

/// The payload of an [`AuditEvent`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EventData {
    /// The proxy dropped events: `type` is [`DROPPED_EVENT`].
    Dropped(DroppedEvents),
    /// One Kafka request: `type` is [`REQUEST_EVENT`].
    Request(Box<RequestRecord>),
    /// A read of the audit trail, recorded by the collector: `type` is [`QUERY_EVENT`].
    Query(Box<QueryRecord>),
}

/// One Kafka request, as the proxy saw and decided it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestRecord {
    /// The client connection, one id per connection (a UUID).
    pub session_id: String,
    /// This request's position in its session: 1, 2, 3, … with no gaps.
    pub sequence: u64,
    /// Who made it.
    pub identity: Identity,
    /// From where.
    pub client: Client,
    /// Which request.
    pub request: Request,
    /// What it touched; empty for requests that name no resource (ApiVersions, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<Resource>,
    /// What the proxy did with it.
    pub decision: Decision,
    /// Fields masked, per MaskingRule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masking: Vec<Masked>,
    /// The approval the request waited for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
    /// The records, digested or masked, when the policy's audit level asks for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Payload>,
}

/// The workload and, when the client authenticated to the proxy, the user.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's service account.
    pub service_account: String,
    /// The pod, when the proxy knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The user the client authenticated as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// That user's groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

/// The Kafka client.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Client {
    /// The `client.id` of the request header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The client library, from ApiVersions (KIP-511).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub software_name: Option<String>,
    /// Its version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub software_version: Option<String>,
    /// The client's address as the proxy saw it.
    pub address: String,
}

/// The request header.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    /// The API's name as Kafka documents it (`Produce`, `Fetch`, `DeleteTopics`, …).
    pub api_key: String,
    /// The API's number.
    pub api_key_code: i16,
    /// The request version.
    pub api_version: i16,
    /// The correlation id.
    pub correlation_id: i32,
}

/// One resource a request touches, and what the proxy decided for it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resource {
    /// `Topic`, `Group`, `TransactionalId`, `Cluster`, `DelegationToken` or `User`.
    pub resource_type: String,
    /// Its name (`kafka-cluster` for the cluster).
    pub name: String,
    /// The ACL operation checked (`Read`, `Write`, `Describe`, …).
    pub operation: String,
    /// `Allow`, `Deny` or `RequireApproval` for this resource.
    pub effect: String,
    /// Partitions, where the request names them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<i32>,
    /// Records produced or fetched, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<u64>,
    /// Bytes of record batches produced or fetched, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// The first and last offsets fetched or produced, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offsets: Option<OffsetRange>,
    /// Per partition, digests of the records as the broker holds them (a Fetch: as the broker
    /// answered, before masking; a Produce: as written, after it), so they can be read again
    /// from Kafka and compared (`kubectl streamward replay`). At audit level `PayloadDigest`
    /// and above.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stored: Vec<StoredRecords>,
}

/// The records of one partition a request read or wrote, as the broker holds them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredRecords {
    /// The partition.
    pub partition: i32,
    /// The first and last offsets (for a Produce, once the broker answered with them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offsets: Option<OffsetRange>,
    /// How many records (control records of transactions are not counted).
    pub records: u64,
    /// SHA-256 (hex) of the records' [`record_digest`]s, in order: covers every record.
    pub sha256: String,
    /// The records in runs, to name the one that differs: each run's first offset and the
    /// first [`RECORD_DIGEST_HEX`] hex digits of the SHA-256 of its records' [`record_digest`]s.
    /// A run reaches to the next run's offset (the last to `offsets.last`); each is one record
    /// unless the partition held more records than the event could list ([`RECORD_DIGESTS`]
    /// runs per event, [`PARTITION_DIGESTS`] per partition). Empty when the offsets are unknown.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub digests: Vec<RecordDigest>,
}

/// A run of records: its first offset and the start of its digest (hex), as
/// `[offset, "digest"]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordDigest(pub i64, pub String);

/// The most [`RecordDigest`]s one event lists.
pub const RECORD_DIGESTS: usize = 256;
/// The most [`RecordDigest`]s one partition of an event lists.
pub const PARTITION_DIGESTS: usize = 128;
/// Hex digits of a run's digest a [`RecordDigest`] keeps (64 bits: enough to name which
/// records differ; [`StoredRecords::sha256`] is what proves none does).
pub const RECORD_DIGEST_HEX: usize = 16;

/// The digest of a run of records from their [`record_digest`]s, as [`RecordDigest`] keeps it.
pub fn run_digest<'a>(records: impl IntoIterator<Item = &'a [u8; 32]>) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for digest in records {
        hash.update(digest);
    }
    hex::encode(&hash.finalize()[..RECORD_DIGEST_HEX / 2])
}

/// The digest of one Kafka record's content: its key, value and headers, each length-prefixed
/// (`-1` for null), so the same record has the same digest in a Produce request, in the broker's
/// log and in a Fetch response, whatever the batch's compression. Offsets and timestamps are
/// not part of it (the broker may set both).
pub fn record_digest<'a>(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: impl ExactSizeIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    fn field(hash: &mut Sha256, bytes: Option<&[u8]>) {
        match bytes {
            Some(bytes) => {
                hash.update((bytes.len() as i64).to_be_bytes());
                hash.update(bytes);
            }
            None => hash.update((-1i64).to_be_bytes()),
        }
    }
    let mut hash = Sha256::new();
    field(&mut hash, key);
    field(&mut hash, value);
    hash.update((headers.len() as i64).to_be_bytes());
    for (name, value) in headers {
        field(&mut hash, Some(name));
        field(&mut hash, value);
    }
    hash.finalize().into()
}

/// Builds a [`StoredRecords`] from one partition's records, in offset order.
#[derive(Debug)]
pub struct StoredRecordsBuilder {
    stored: StoredRecords,
    hash: sha2::Sha256,
    /// Records per run (0: no runs are listed).
    run_length: u64,
    /// The open run: its first offset, its records' digests so far, and how many.
    run: Option<(i64, sha2::Sha256, u64)>,
}

impl StoredRecordsBuilder {
    /// An empty partition about to receive about `expected` records; takes its runs from
    /// `budget` (the event's room for [`RecordDigest`]s).
    pub fn new(partition: i32, expected: u64, budget: &mut usize) -> StoredRecordsBuilder {
        use sha2::Digest;
        let runs = (*budget).min(PARTITION_DIGESTS) as u64;
        let run_length = if runs == 0 {
            0
        } else {
            expected.max(1).div_ceil(runs)
        };
        // What is not used is not given back: the event's runs stay bounded whatever comes.
        *budget -= runs.min(expected.max(1)) as usize;
        StoredRecordsBuilder {
            stored: StoredRecords {
                partition,
                ..StoredRecords::default()
            },
            hash: sha2::Sha256::new(),
            run_length,
            run: None,
        }
    }

    /// Adds the record at `offset` with `digest`.
    pub fn add(&mut self, offset: i64, digest: &[u8; 32]) {
        use sha2::Digest;
        self.hash.update(digest);
        self.stored.records += 1;
        self.stored.offsets = Some(match self.stored.offsets {
            Some(r) => OffsetRange {
                first: r.first.min(offset),
                last: r.last.max(offset),
            },
            None => OffsetRange {
                first: offset,
                last: offset,
            },
        });
        if self.run_length == 0 {
            return;
        }
        let (_, hash, count) = self
            .run
            .get_or_insert_with(|| (offset, sha2::Sha256::new(), 0));
        hash.update(digest);
        *count += 1;
        if *count >= self.run_length {
            self.close_run();
        }
    }

    fn close_run(&mut self) {
        use sha2::Digest;
        if let Some((first, hash, _)) = self.run.take() {
            let hex = hex::encode(&hash.finalize()[..RECORD_DIGEST_HEX / 2]);
            self.stored.digests.push(RecordDigest(first, hex));
        }
    }

    /// How many records were added.
    pub fn records(&self) -> u64 {
        self.stored.records
    }

    /// The partition's records.
    pub fn finish(mut self) -> StoredRecords {
        use sha2::Digest;
        self.close_run();
        StoredRecords {
            sha256: hex::encode(self.hash.finalize()),
            ..self.stored
        }
    }
}

/// An inclusive range of offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetRange {
    /// The first offset.
    pub first: i64,
    /// The last offset.
    pub last: i64,
}

/// The proxy's decision on the whole request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// `Allow` (every resource allowed), `Deny` (every resource refused), `Partial` (some
    /// refused, the rest forwarded) or `RequireApproval`.
    pub effect: String,
    /// What decided, e.g. `StreamPolicy/orders rule producers`, `AccessGrant/oncall-1`,
    /// `default deny`; for a partial decision, the rule that refused.
    pub rule: String,
    /// The content hash of the config in force.
    pub config_hash: String,
    /// Why, in words, when the proxy refused or would have refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `true` when a `DryRun` policy would have refused but the request was forwarded.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

/// Fields one MaskingRule masked in one request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Masked {
    /// The MaskingRule.
    pub rule: String,
    /// Values it masked.
    pub fields: u64,
}

/// Where a request held by a `RequireApproval` rule stands: one event when it is held, one
/// when it is answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Approval {
    /// The ApprovalRequest (`<namespace>/<name>`).
    pub request: String,
    /// What happened.
    pub step: ApprovalStep,
    /// Who decided (the Kubernetes users the API server authenticated), when someone did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<String>,
    /// The decision's comment (a denial's reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// The steps of a held request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApprovalStep {
    /// The request is held and its ApprovalRequest exists (created or reused).
    Requested,
    /// Approved while held: the request went to the broker.
    Approved,
    /// An identical request sent again after an approval went to the broker.
    Released,
    /// An approver denied it: answered with their comment.
    Denied,
    /// Nobody decided before the ApprovalRequest expired: refused.
    Expired,
    /// Nobody decided within the hold: answered with an error naming the ApprovalRequest;
    /// its identical retry is released once it is approved.
    Pending,
    /// The ApprovalRequest could not be created or read: refused.
    Failed,
}

/// The records of a request, as the policy's audit level asks.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Payload {
    /// SHA-256 (hex) over the [`record_digest`] of every record the request sent (Produce) or
    /// the client received (Fetch: after masking), in order: what was delivered, whatever the
    /// batches' compression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The record values, masked, when the audit level is `MaskedPayload`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<Vec<serde_json::Value>>,
}

/// Events a proxy had to drop because its spool was full.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DroppedEvents {
    /// The proxy's identity.
    pub identity: Identity,
    /// How many events were dropped since the last such report.
    pub dropped: u64,
    /// When the first of them was dropped.
    pub since: Timestamp,
}

/// A read of the audit trail through the collector's query API: who asked what, and what they
/// got. The collector stores it in its own chain, beside the events that were read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryRecord {
    /// Who asked.
    pub reader: Reader,
    /// The path asked (`/v1/events`, `/v1/sessions/<id>/timeline`, `/v1/aggregate`, …).
    pub path: String,
    /// The query parameters as sent (the filter, `limit`, `by`, …), decoded.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub parameters: std::collections::BTreeMap<String, String>,
    /// The HTTP status answered: 200, or 403 when the reader was not allowed.
    pub status: u16,
    /// How many results (events, sessions, groups) were answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<u64>,
    /// Why the query was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Who read the audit trail.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reader {
    /// The Kubernetes user the API server authenticated (TokenReview), or
    /// `query-token:<fingerprint>` for a static query token.
    pub user: String,
    /// That user's uid, when the API server gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// That user's groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// `TokenReview` or `QueryToken`.
    pub authenticated_by: String,
}

/// `/namespaces/<ns>/serviceaccounts/<sa>[/pods/<pod>]`, the `source` of a proxy's events.
pub fn source(identity: &Identity) -> String {
    let mut source = format!(
        "/namespaces/{}/serviceaccounts/{}",
        identity.namespace, identity.service_account
    );
    if let Some(pod) = &identity.pod {
        source.push_str("/pods/");
        source.push_str(pod);
    }
    source
}

impl AuditEvent {
    /// The event of one request, its id and subject derived from the record.
    pub fn request(time: Timestamp, record: RequestRecord) -> AuditEvent {
        AuditEvent {
            specversion: SPEC_VERSION.to_string(),
            id: format!("{}:{}", record.session_id, record.sequence),
            source: source(&record.identity),
            kind: REQUEST_EVENT.to_string(),
            time,
            datacontenttype: "application/json".to_string(),
            subject: record.resources.first().map(|r| r.name.clone()),
            data: EventData::Request(Box::new(record)),
        }
    }

    /// The event reporting `dropped.dropped` lost events; `id` must be unique (the proxy uses
    /// its own session-like id and a counter).
    pub fn dropped(id: String, time: Timestamp, dropped: DroppedEvents) -> AuditEvent {
        AuditEvent {
            specversion: SPEC_VERSION.to_string(),
            id,
            source: source(&dropped.identity),
            kind: DROPPED_EVENT.to_string(),
            time,
            datacontenttype: "application/json".to_string(),
            subject: None,
            data: EventData::Dropped(dropped),
        }
    }

    /// The event the collector stores when `record.reader` read the audit trail; `id` must be
    /// unique (the collector uses its start time and a counter).
    pub fn query(id: String, time: Timestamp, record: QueryRecord) -> AuditEvent {
        AuditEvent {
            specversion: SPEC_VERSION.to_string(),
            id,
            source: "/streamward-collector".to_string(),
            kind: QUERY_EVENT.to_string(),
            time,
            datacontenttype: "application/json".to_string(),
            subject: Some(record.path.clone()),
            data: EventData::Query(Box::new(record)),
        }
    }

    /// The request record, unless this event reports dropped events or a query.
    pub fn record(&self) -> Option<&RequestRecord> {
        match &self.data {
            EventData::Request(record) => Some(record),
            EventData::Dropped(_) | EventData::Query(_) => None,
        }
    }

    /// The workload the event is about; `None` for a query of the audit trail.
    pub fn identity(&self) -> Option<&Identity> {
        match &self.data {
            EventData::Request(record) => Some(&record.identity),
            EventData::Dropped(dropped) => Some(&dropped.identity),
            EventData::Query(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record() -> RequestRecord {
        RequestRecord {
            session_id: "0b9d2c1e-5d4f-4c59-a7a8-2f5a7c0e9d11".into(),
            sequence: 7,
            identity: Identity {
                namespace: "shop".into(),
                service_account: "orders-app".into(),
                pod: Some("orders-7d9f".into()),
                user: Some("alice".into()),
                groups: vec!["oncall".into()],
            },
            client: Client {
                client_id: Some("rdkafka".into()),
                software_name: Some("librdkafka".into()),
                software_version: Some("2.0.2".into()),
                address: "127.0.0.1:50312".into(),
            },
            request: Request {
                api_key: "Produce".into(),
                api_key_code: 0,
                api_version: 9,
                correlation_id: 42,
            },
            resources: vec![Resource {
                resource_type: "Topic".into(),
                name: "orders.created".into(),
                operation: "Write".into(),
                effect: "Allow".into(),
                partitions: vec![0, 2],
                records: Some(3),
                bytes: Some(211),
                offsets: None,
                stored: Vec::new(),
            }],
            decision: Decision {
                effect: "Allow".into(),
                rule: "StreamPolicy/orders rule producers".into(),
                config_hash: "sha256:ab12".into(),
                reason: None,
                dry_run: false,
            },
            masking: vec![Masked {
                rule: "pii".into(),
                fields: 3,
            }],
            approval: None,
            payload: Some(Payload {
                sha256: Some("00ff".into()),
                records: None,
            }),
        }
    }

    #[test]
    fn a_request_event_is_a_cloudevent_with_a_stable_id() {
        let time: Timestamp = "2026-12-01T10:00:00Z".parse().unwrap();
        let event = AuditEvent::request(time, record());
        let value = serde_json::to_value(&event).unwrap();
        assert_eq!(value["specversion"], "1.0");
        assert_eq!(value["id"], "0b9d2c1e-5d4f-4c59-a7a8-2f5a7c0e9d11:7");
        assert_eq!(value["type"], REQUEST_EVENT);
        assert_eq!(
            value["source"],
            "/namespaces/shop/serviceaccounts/orders-app/pods/orders-7d9f"
        );
        assert_eq!(value["time"], "2026-12-01T10:00:00Z");
        assert_eq!(value["subject"], "orders.created");
        assert_eq!(value["data"]["identity"]["serviceAccount"], "orders-app");
        assert_eq!(value["data"]["request"]["apiKey"], "Produce");
        assert_eq!(value["data"]["resources"][0]["partitions"], json!([0, 2]));
        assert_eq!(value["data"]["masking"][0]["fields"], 3);
        // Optional parts that are absent are left out, not null.
        assert!(value["data"].get("approval").is_none());
        assert!(value["data"]["decision"].get("dryRun").is_none());

        let back: AuditEvent = serde_json::from_value(value).unwrap();
        assert_eq!(back, event);
        assert_eq!(back.record().unwrap().sequence, 7);
    }

    #[test]
    fn a_dropped_event_reads_back_as_dropped() {
        let time: Timestamp = "2026-12-01T10:00:00Z".parse().unwrap();
        let identity = Identity {
            namespace: "shop".into(),
            service_account: "orders-app".into(),
            ..Identity::default()
        };
        let event = AuditEvent::dropped(
            "proxy-1:dropped:1".into(),
            time,
            DroppedEvents {
                identity,
                dropped: 12,
                since: time,
            },
        );
        let text = serde_json::to_string(&event).unwrap();
        let back: AuditEvent = serde_json::from_str(&text).unwrap();
        assert_eq!(back.kind, DROPPED_EVENT);
        assert!(back.record().is_none());
        assert!(matches!(
            back.data,
            EventData::Dropped(DroppedEvents { dropped: 12, .. })
        ));
    }

    #[test]
    fn a_query_event_reads_back_as_a_query() {
        let time: Timestamp = "2026-12-01T10:00:00Z".parse().unwrap();
        let event = AuditEvent::query(
            "query:1:1".into(),
            time,
            QueryRecord {
                reader: Reader {
                    user: "alice".into(),
                    uid: None,
                    groups: vec!["auditors".into()],
                    authenticated_by: "TokenReview".into(),
                },
                path: "/v1/events".into(),
                parameters: [("namespace".to_string(), "shop".to_string())].into(),
                status: 200,
                results: Some(3),
                reason: None,
            },
        );
        let text = serde_json::to_string(&event).unwrap();
        let back: AuditEvent = serde_json::from_str(&text).unwrap();
        assert_eq!(back, event);
        assert_eq!(back.kind, QUERY_EVENT);
        assert!(back.record().is_none() && back.identity().is_none());
    }

    #[test]
    fn a_batch_is_a_json_array_of_events() {
        let time: Timestamp = "2026-12-01T10:00:00Z".parse().unwrap();
        let batch = vec![
            AuditEvent::request(time, record()),
            AuditEvent::request(time, record()),
        ];
        let text = serde_json::to_string(&batch).unwrap();
        assert!(text.starts_with('['));
        let back: Vec<AuditEvent> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, batch);
    }
}

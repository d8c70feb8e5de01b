//! The events of one client connection: a session id, a sequence number per request, and the
//! record of each request built as the request travels (decided in the request half, completed
//! with what the broker answered in the response half).
//!
//! Exactly one event per request is guaranteed by [`Draft`]: every request the client sends gets
//! one as soon as its header is read, and a draft emits its event when it is finished — or when
//! it is dropped unfinished (the session ended before the answer), saying so.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use jiff::Timestamp;
use kafka_protocol::messages::{FetchResponse, ProduceRequest, ProduceResponse, TopicName};
use streamward_api::audit::{
    AuditEvent, Client, Decision, Identity, Masked, OffsetRange, Payload, Request, RequestRecord,
    Resource,
};
use streamward_api::config::{AuditLevel, ProxyConfig};
use streamward_api::decide::Principal;

use super::Emitter;
use super::payload::PayloadWork;
use super::records;
use crate::authorize::{Access, TopicNames};
use crate::frame::RequestStart;
use crate::masking::{AuditMasking, CachedPlan, RecordedValues, recorded_values};
use crate::policy::ClientIdentity;
use crate::source::Loaded;
use streamward_api::config::Flow;

/// The first Produce and Fetch versions that name topics by id.
const BY_ID: i16 = 13;
/// Most record values one event carries at `MaskedPayload` (the digest covers them all).
const PAYLOAD_RECORDS: usize = 100;
/// Most bytes of record values one event carries.
const PAYLOAD_BYTES: usize = 64 * 1024;

/// A random (v4) UUID.
pub fn new_uuid() -> String {
    let mut bytes = [0u8; 16];
    // Without an entropy source, fall back to the clock: ids stay unique per process start.
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = Timestamp::now().as_nanosecond();
        bytes.copy_from_slice(&nanos.to_le_bytes());
    }
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// The audit side of one client connection.
pub struct SessionAudit {
    emitter: Emitter,
    session_id: String,
    next: u64,
    address: String,
    client_id: Option<String>,
    software_name: Option<String>,
    software_version: Option<String>,
}

impl SessionAudit {
    /// A new session for the client at `peer`.
    pub fn new(emitter: Emitter, peer: SocketAddr) -> SessionAudit {
        SessionAudit {
            emitter,
            session_id: new_uuid(),
            next: 1,
            address: peer.to_string(),
            client_id: None,
            software_name: None,
            software_version: None,
        }
    }

    /// The session's id.
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// Whether a new request must be refused because the audit pipeline is full
    /// (`--audit-full=refuse`).
    pub fn refuses(&self) -> bool {
        self.emitter.refuses()
    }

    /// The client library, from an ApiVersions request (v3+).
    pub fn learn_software(&mut self, name: &str, version: &str) {
        if !name.is_empty() {
            self.software_name = Some(name.to_string());
        }
        if !version.is_empty() {
            self.software_version = Some(version.to_string());
        }
    }

    /// Starts the event of the next request: `api` is its name, `frame` the request (its
    /// client id is read from the header), `client` who is asking.
    pub fn begin(
        &mut self,
        start: RequestStart,
        api: &str,
        frame: &[u8],
        client: &ClientIdentity,
    ) -> Draft {
        if let Some(id) = header_client_id(frame)
            && self.client_id.as_deref() != Some(id)
        {
            self.client_id = Some(id.to_string());
        }
        self.begin_record(
            Request {
                api_key: api.to_string(),
                api_key_code: start.api_key,
                api_version: start.api_version,
                correlation_id: start.correlation_id,
            },
            client,
        )
    }

    /// Starts the event of a frame that has no request header: a bare SASL token (after a v0
    /// SaslHandshake) or a frame too short to be a request.
    pub fn begin_headerless(&mut self, api: &str, client: &ClientIdentity) -> Draft {
        self.begin_record(
            Request {
                api_key: api.to_string(),
                api_key_code: -1,
                api_version: -1,
                correlation_id: -1,
            },
            client,
        )
    }

    fn begin_record(&mut self, request: Request, client: &ClientIdentity) -> Draft {
        let sequence = self.next;
        self.next += 1;
        let workload = self.emitter.identity();
        let record = RequestRecord {
            session_id: self.session_id.clone(),
            sequence,
            identity: Identity {
                namespace: workload.namespace.clone(),
                service_account: workload.service_account.clone(),
                pod: workload.pod.clone(),
                user: client.user.clone(),
                groups: client.groups.clone(),
            },
            client: Client {
                client_id: self.client_id.clone(),
                software_name: self.software_name.clone(),
                software_version: self.software_version.clone(),
                address: self.address.clone(),
            },
            request,
            resources: Vec::new(),
            decision: Decision {
                effect: "Allow".into(),
                ..Decision::default()
            },
            masking: Vec::new(),
            approval: None,
            payload: None,
        };
        Draft {
            event: Some(Box::new((Timestamp::now(), record))),
            emitter: self.emitter.clone(),
            completed: false,
            payload: None,
            values: None,
            masking: None,
            withheld: Vec::new(),
        }
    }
}

/// The client id of a request header (v1+), without decoding the rest.
fn header_client_id(frame: &[u8]) -> Option<&str> {
    let len = i16::from_be_bytes(frame.get(8..10)?.try_into().ok()?);
    let len = usize::try_from(len).ok()?;
    std::str::from_utf8(frame.get(10..10 + len)?).ok()
}

/// The event of one request, being built. Emits when finished or dropped.
pub struct Draft {
    event: Option<Box<(Timestamp, RequestRecord)>>,
    emitter: Emitter,
    completed: bool,
    /// At `PayloadDigest` and up: the record sets to hash once the request is done.
    payload: Option<PayloadWork>,
    /// At `MaskedPayload`: the record values, as the broker (Produce) or the client (Fetch)
    /// got them — after masking, and after the rules that did not apply on the wire.
    values: Option<Values>,
    /// The rules the recorded values still need (at `MaskedPayload`, with MaskingRules).
    masking: Option<AuditMasking>,
    /// Partitions the proxy answered with an error because their records could not be masked.
    withheld: Vec<String>,
}

/// Record values collected for an event, within [`PAYLOAD_RECORDS`] and [`PAYLOAD_BYTES`].
#[derive(Default)]
struct Values {
    values: Vec<serde_json::Value>,
    bytes: usize,
}

impl Draft {
    /// The record, to fill in.
    pub fn record(&mut self) -> Option<&mut RequestRecord> {
        self.event.as_mut().map(|e| &mut e.1)
    }

    /// Records the policy's answers: one resource per access, and the decision on the whole.
    /// `refused` says the proxy refused (part of) the request even if no access was denied
    /// (a topic id it cannot name, records it cannot mask).
    pub fn decide(&mut self, accesses: &[Access], refused: bool, config_hash: &str) {
        let Some(record) = self.record() else { return };
        record.resources = accesses
            .iter()
            .map(|access| Resource {
                resource_type: access.resource_type.to_string(),
                name: access.name.clone(),
                operation: access.operation.to_string(),
                effect: effect_of(access).to_string(),
                ..Resource::default()
            })
            .collect();
        let denied = accesses.iter().filter(|a| !a.allowed).count();
        let first_refusal = accesses.iter().find(|a| !a.allowed);
        let decision = &mut record.decision;
        decision.config_hash = config_hash.to_string();
        decision.effect = match (denied, first_refusal) {
            (0, _) if refused => "Deny",
            (0, _) => "Allow",
            (_, Some(first)) if first.requires_approval && denied == accesses.len() => {
                "RequireApproval"
            }
            (n, _) if n == accesses.len() => "Deny",
            _ => "Partial",
        }
        .to_string();
        let deciding = first_refusal
            .or_else(|| accesses.iter().find(|a| a.dry_run))
            .or_else(|| accesses.first());
        decision.rule = deciding.and_then(|a| a.rule.clone()).unwrap_or_default();
        decision.reason = first_refusal
            .or_else(|| accesses.iter().find(|a| a.dry_run))
            .and_then(|a| a.message.clone());
        decision.dry_run = first_refusal.is_none() && accesses.iter().any(|a| a.dry_run);
        if refused && denied == 0 && decision.reason.is_none() {
            decision.reason = Some(
                "refused by the proxy: a topic id no Metadata named, or records it cannot mask"
                    .into(),
            );
        }
    }

    /// A topic of a Metadata response the client may not Describe: left out of the answer, or
    /// reported as TOPIC_AUTHORIZATION_FAILED.
    pub fn hidden(&mut self, topic: &str, rule: Option<String>, reason: Option<String>) {
        let Some(record) = self.record() else { return };
        record.resources.push(Resource {
            resource_type: "Topic".into(),
            name: topic.to_string(),
            operation: "Describe".into(),
            effect: "Deny".into(),
            ..Resource::default()
        });
        let all_denied = record.resources.iter().all(|r| r.effect != "Allow");
        let decision = &mut record.decision;
        if decision.effect == "Allow" {
            // Every topic it named was withheld: refused; some: partly.
            decision.effect = if all_denied { "Deny" } else { "Partial" }.into();
            decision.rule = rule.unwrap_or_default();
            decision.reason = reason;
        }
    }

    /// Where the request stands in its approval.
    pub fn approval(&mut self, approval: streamward_api::audit::Approval) {
        if let Some(record) = self.record() {
            record.approval = Some(approval);
        }
    }

    /// The request was answered by the proxy as refused, with `reason` (no policy access).
    pub fn refuse(&mut self, rule: &str, reason: String) {
        if let Some(record) = self.record() {
            record.decision.effect = "Deny".into();
            record.decision.rule = rule.to_string();
            record.decision.reason = Some(reason);
        }
    }

    /// Sets how much of the payload the event carries (the highest audit level among the
    /// policies that apply to the client).
    pub fn set_level(&mut self, level: AuditLevel) {
        if level >= AuditLevel::PayloadDigest {
            self.payload = Some(PayloadWork::default());
        }
        if level >= AuditLevel::MaskedPayload {
            self.values = Some(Values::default());
        }
    }

    /// Sets the policy level from the config `loaded` for `client` (see [`Draft::set_level`]);
    /// at `MaskedPayload` the values are recorded only after every MaskingRule of their topic
    /// that did not apply on the wire ([`AuditMasking`]).
    pub fn set_payload_policy(&mut self, loaded: &Arc<Loaded>, client: &ClientIdentity) {
        self.set_level(audit_level(&loaded.config, client, &loaded.target_name));
        if self.values.is_some() {
            self.masking = AuditMasking::new(loaded, client);
        }
    }

    /// Whether the event wants the record batches' digest.
    pub fn wants_payload(&self) -> bool {
        self.payload.is_some()
    }

    /// Adds the records and bytes of a forwarded Produce request to the resources it wrote.
    pub fn produced(&mut self, request: &ProduceRequest, version: i16, names: &dyn TopicNames) {
        let mut payload = self.payload.take();
        let mut values = self.values.take();
        let self_masking = self.masking.take();
        if let Some(record) = self.record() {
            for topic in &request.topic_data {
                let name = topic_name(&topic.name, &topic.topic_id, version, names);
                let plan = audit_plan(&self_masking, &values, &name, Flow::Produce);
                let mask = recorded_values(plan.as_ref());
                let mut stats = Stats::default();
                for partition in &topic.partition_data {
                    stats.partitions.push(partition.index);
                    if let Some(records) = &partition.records {
                        stats.add(records, &mut payload, &mut values, &mask);
                        if let Some(payload) = &mut payload {
                            payload.produced(&name, partition.index, records);
                        }
                    }
                }
                stats.apply(record, &name, "Write");
            }
        }
        self.payload = payload;
        self.values = values;
        self.masking = self_masking;
    }

    /// Reads and hashes the records named so far and lets go of them. The data path calls it
    /// once a Produce is written to the broker: the hashing overlaps the broker's write instead
    /// of delaying the request, and the request's buffer is not held until the answer.
    pub fn read_payload(&mut self) {
        if let Some(payload) = &mut self.payload {
            payload.read();
        }
    }

    /// Whether a Produce's records wait for the offsets the broker wrote them at.
    pub fn awaits_offsets(&self) -> bool {
        self.payload
            .as_ref()
            .is_some_and(PayloadWork::awaits_offsets)
    }

    /// The broker's answer to a Produce: each partition written gets its records' offsets; a
    /// partition refused keeps no record digests (nothing was stored).
    pub fn produce_answered(
        &mut self,
        response: &ProduceResponse,
        version: i16,
        names: &dyn TopicNames,
    ) {
        let Some(payload) = &mut self.payload else {
            return;
        };
        for topic in &response.responses {
            let name = topic_name(&topic.name, &topic.topic_id, version, names);
            for answer in &topic.partition_responses {
                let written = if answer.error_code != 0 || answer.base_offset < 0 {
                    Err(())
                } else {
                    Ok(answer.base_offset)
                };
                payload.answered(&name, answer.index, written);
            }
        }
    }

    /// Records what a Fetch response held as the broker sent it, before masking: per partition,
    /// the digests `kubectl streamward replay` compares with Kafka (at `PayloadDigest` and up).
    pub fn read_from_broker(
        &mut self,
        response: &FetchResponse,
        version: i16,
        names: &dyn TopicNames,
    ) {
        let Some(payload) = &mut self.payload else {
            return;
        };
        for topic in &response.responses {
            let name = topic_name(&topic.topic, &topic.topic_id, version, names);
            for partition in &topic.partitions {
                if partition.error_code != 0 {
                    continue;
                }
                if let Some(records) = &partition.records {
                    payload.fetched(&name, partition.partition_index, records);
                }
            }
        }
    }

    /// Adds what a Fetch response carried (after masking) to the resources it read.
    pub fn fetched(&mut self, response: &FetchResponse, version: i16, names: &dyn TopicNames) {
        let mut payload = self.payload.take();
        let mut values = self.values.take();
        let self_masking = self.masking.take();
        if let Some(record) = self.record() {
            for topic in &response.responses {
                let name = topic_name(&topic.topic, &topic.topic_id, version, names);
                let plan = audit_plan(&self_masking, &values, &name, Flow::Consume);
                let mask = recorded_values(plan.as_ref());
                let mut stats = Stats::default();
                for partition in &topic.partitions {
                    if partition.error_code != 0 {
                        continue;
                    }
                    stats.partitions.push(partition.partition_index);
                    if let Some(records) = &partition.records {
                        stats.add(records, &mut payload, &mut values, &mask);
                    }
                }
                stats.apply(record, &name, "Read");
            }
        }
        self.payload = payload;
        self.values = values;
        self.masking = self_masking;
    }

    /// Adds fields masked under `rules` (the comma-separated rules of one masking plan).
    pub fn masked(&mut self, rules: &str, fields: u64) {
        if fields == 0 {
            return;
        }
        let Some(record) = self.record() else { return };
        match record.masking.iter_mut().find(|m| m.rule == rules) {
            Some(masked) => masked.fields += fields,
            None => record.masking.push(Masked {
                rule: rules.to_string(),
                fields,
            }),
        }
    }

    /// The records of partition `partition` of `topic` could not be masked (`why`): the proxy
    /// answered that partition with an error instead. The event's decision becomes `Partial`
    /// and its reason names the partition.
    pub fn withheld(&mut self, topic: &str, partition: i32, why: &str) {
        const MOST: usize = 16;
        if self.withheld.len() < MOST {
            self.withheld
                .push(format!("{topic}-{partition} withheld: {why}"));
        }
    }

    /// The request is done (answered, or needing no answer): emit its event.
    pub fn finish(mut self) {
        self.completed = true;
    }

    fn emit(&mut self) {
        let Some(event) = self.event.take() else {
            return;
        };
        let (time, mut record) = *event;
        if let Some(payload) = self.payload.take() {
            record.payload = Some(Payload {
                sha256: None,
                records: self.values.take().map(|v| v.values),
            });
            payload.complete(&mut record);
        }
        if !self.withheld.is_empty() {
            if record.decision.effect == "Allow" {
                record.decision.effect = "Partial".into();
            }
            let note = self.withheld.join("; ");
            record.decision.reason = Some(match record.decision.reason.take() {
                Some(reason) => format!("{reason}; {note}"),
                None => note,
            });
        }
        if !self.completed {
            let note = "the session ended before this request was answered";
            record.decision.reason = Some(match record.decision.reason.take() {
                Some(reason) => format!("{reason}; {note}"),
                None => note.to_string(),
            });
        }
        self.emitter.emit(AuditEvent::request(time, record));
    }
}

impl Drop for Draft {
    fn drop(&mut self) {
        self.emit();
    }
}

/// The audit plan for values of topic `name` that flowed `flow`, when values are recorded.
fn audit_plan(
    masking: &Option<AuditMasking>,
    values: &Option<Values>,
    name: &str,
    flow: Flow,
) -> Option<CachedPlan> {
    values.as_ref()?;
    masking.as_ref()?.plan(name, flow)
}

fn effect_of(access: &Access) -> &'static str {
    match (access.allowed, access.requires_approval) {
        (true, _) => "Allow",
        (false, true) => "RequireApproval",
        (false, false) => "Deny",
    }
}

fn topic_name(name: &TopicName, id: &uuid::Uuid, version: i16, names: &dyn TopicNames) -> String {
    if version >= BY_ID {
        names
            .name_of(id)
            .map_or_else(|| id.to_string(), |n| n.to_string())
    } else {
        name.to_string()
    }
}

/// What one topic's partitions of a Produce request or Fetch response held.
#[derive(Default)]
struct Stats {
    partitions: Vec<i32>,
    records: u64,
    bytes: u64,
    offsets: Option<OffsetRange>,
}

impl Stats {
    fn add(
        &mut self,
        records: &Bytes,
        payload: &mut Option<PayloadWork>,
        values: &mut Option<Values>,
        mask: &RecordedValues<'_>,
    ) {
        self.bytes += records.len() as u64;
        if let Some(payload) = payload {
            payload.digest(records);
        }
        if let Some(values) = values {
            values.add(records, mask);
        }
        let (count, range) = batch_stats(records);
        self.records += count;
        if let Some((first, last)) = range {
            self.offsets = Some(match self.offsets {
                Some(r) => OffsetRange {
                    first: r.first.min(first),
                    last: r.last.max(last),
                },
                None => OffsetRange { first, last },
            });
        }
    }

    /// Puts these numbers on the record's resource for topic `name` and `operation`.
    fn apply(self, record: &mut RequestRecord, name: &str, operation: &str) {
        let Some(resource) = record
            .resources
            .iter_mut()
            .find(|r| r.resource_type == "Topic" && r.name == name && r.operation == operation)
        else {
            return;
        };
        resource.partitions = self.partitions;
        resource.records = Some(self.records);
        resource.bytes = Some(self.bytes);
        // Produce requests carry offsets the broker assigns, not ones worth reporting.
        if operation == "Read" {
            resource.offsets = self.offsets;
        }
    }
}

impl Values {
    fn full(&self) -> bool {
        self.values.len() >= PAYLOAD_RECORDS || self.bytes >= PAYLOAD_BYTES
    }

    /// Adds the values of the records in the v2 batches of `records` (control batches and
    /// batches that do not decompress within the limit are left out: the digest has them).
    fn add(&mut self, records: &[u8], mask: &RecordedValues<'_>) {
        if matches!(mask, RecordedValues::Withheld) || self.full() {
            return;
        }
        // A batch that cannot be read ends the values recorded: the digest has it.
        let _ = records::for_each_record(records, &mut |record| {
            let value = record.value.map(|value| match mask {
                RecordedValues::Masked(plan) => crate::mask::mask_value(plan, value).bytes,
                _ => std::borrow::Cow::Borrowed(value),
            });
            let value = value.as_deref();
            self.bytes += value.map_or(0, <[u8]>::len);
            self.values.push(value_json(value));
            !self.full()
        });
    }
}

/// A record value as JSON: itself when it is JSON, else a string when it is text, else
/// `{"base64": …}`; `null` for a null value.
fn value_json(value: Option<&[u8]>) -> serde_json::Value {
    use base64::Engine as _;
    let Some(value) = value else {
        return serde_json::Value::Null;
    };
    if let Ok(json) = serde_json::from_slice(value) {
        return json;
    }
    match std::str::from_utf8(value) {
        Ok(text) => serde_json::Value::String(text.to_string()),
        Err(_) => serde_json::json!({
            "base64": base64::engine::general_purpose::STANDARD.encode(value)
        }),
    }
}

/// Records in the v2 record batches of `bytes`, and the first and last offsets, read from the
/// batch headers alone (no decompression). A truncated last batch (Fetch allows one) is ignored.
pub fn batch_stats(mut bytes: &[u8]) -> (u64, Option<(i64, i64)>) {
    const HEADER: usize = 61;
    let mut count = 0u64;
    let mut range: Option<(i64, i64)> = None;
    while bytes.len() >= HEADER {
        let base = i64::from_be_bytes(bytes[0..8].try_into().unwrap_or_default());
        let Ok(length) = usize::try_from(i32::from_be_bytes(
            bytes[8..12].try_into().unwrap_or_default(),
        )) else {
            break;
        };
        let Some(total) = length.checked_add(12).filter(|&t| t <= bytes.len()) else {
            break;
        };
        if bytes[16] != 2 {
            break; // message format v0/v1: Kafka 4 brokers no longer write it
        }
        let last_delta = i32::from_be_bytes(bytes[23..27].try_into().unwrap_or_default());
        let records = i32::from_be_bytes(bytes[57..61].try_into().unwrap_or_default());
        count += u64::try_from(records).unwrap_or(0);
        let last = base.saturating_add(i64::from(last_delta));
        range = Some(match range {
            Some((first, end)) => (first.min(base), end.max(last)),
            None => (base, last),
        });
        bytes = &bytes[total..];
    }
    (count, range)
}

/// The highest audit level among the policies that apply to `client` on `target`.
pub fn audit_level(config: &ProxyConfig, client: &ClientIdentity, target: &str) -> AuditLevel {
    let principal = Principal {
        identity: &config.identity,
        pod_labels: &client.pod_labels,
        user: client.user.as_deref(),
        groups: &client.groups,
    };
    config
        .policies
        .iter()
        .filter(|p| p.target.as_deref().is_none_or(|t| t == target))
        .filter(|p| p.subjects.matches(&principal))
        .map(|p| p.audit_level)
        .max()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    use super::*;

    fn batch(base: i64, n: usize) -> Bytes {
        let records: Vec<Record> = (0..n)
            .map(|i| Record {
                transactional: false,
                control: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: base + i as i64,
                sequence: -1,
                timestamp: 0,
                key: None,
                value: Some(Bytes::from(format!("value-{i}"))),
                headers: Default::default(),
                delete_horizon: false,
            })
            .collect();
        let mut out = bytes::BytesMut::new();
        RecordBatchEncoder::encode(
            &mut out,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::Gzip,
            },
        )
        .unwrap();
        out.freeze()
    }

    /// A Produce of two partitions to `orders`, answered: partition 0 written at offset 500,
    /// partition 1 refused.
    #[test]
    fn a_produce_keeps_the_digests_of_what_the_broker_wrote_at_its_offsets() {
        use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
        use kafka_protocol::messages::produce_response::{
            PartitionProduceResponse, TopicProduceResponse,
        };
        use kafka_protocol::protocol::StrBytes;

        let metrics = Arc::new(crate::metrics::Metrics::new());
        let (emitter, events) = Emitter::to_queue(Identity::default(), metrics);
        let mut session = SessionAudit::new(emitter, "127.0.0.1:9".parse().unwrap());
        let start = RequestStart {
            api_key: 0,
            api_version: 9,
            correlation_id: 1,
        };
        let mut draft = session.begin(start, "Produce", &[], &ClientIdentity::default());
        draft.record().unwrap().resources.push(Resource {
            resource_type: "Topic".into(),
            name: "orders".into(),
            operation: "Write".into(),
            effect: "Allow".into(),
            ..Resource::default()
        });
        draft.set_level(AuditLevel::PayloadDigest);
        let topic = || TopicName(StrBytes::from_static_str("orders"));
        let partition = |index, records| {
            PartitionProduceData::default()
                .with_index(index)
                .with_records(Some(records))
        };
        let request = ProduceRequest::default().with_topic_data(vec![
            TopicProduceData::default()
                .with_name(topic())
                .with_partition_data(vec![partition(0, batch(0, 3)), partition(1, batch(0, 2))]),
        ]);
        let names = crate::topics::TopicIds::default();
        draft.produced(&request, 9, &names);
        draft.read_payload(); // as the data path does once the request is written
        assert!(draft.awaits_offsets());
        let response = ProduceResponse::default().with_responses(vec![
            TopicProduceResponse::default()
                .with_name(topic())
                .with_partition_responses(vec![
                    PartitionProduceResponse::default()
                        .with_index(0)
                        .with_base_offset(500),
                    PartitionProduceResponse::default()
                        .with_index(1)
                        .with_error_code(3),
                ]),
        ]);
        draft.produce_answered(&response, 9, &names);
        assert!(!draft.awaits_offsets());
        draft.finish();
        let record = events.try_recv().unwrap().record().cloned().unwrap();

        // The payload digest: over every record's digest, both partitions, in order.
        let mut record_digests = Vec::new();
        for records in [batch(0, 3), batch(0, 2)] {
            records::for_each_record(&records, &mut |record| {
                record_digests.extend_from_slice(&record.digest());
                true
            })
            .unwrap();
        }
        assert_eq!(record_digests.len(), 5 * 32);
        let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&record_digests));
        let payload = record.payload.as_ref().unwrap();
        assert_eq!(payload.sha256.as_deref(), Some(sha256.as_str()));
        // Only the partition written has record digests, at the offsets the broker gave.
        let [stored] = record.resources[0].stored.as_slice() else {
            panic!("{:?}", record.resources[0].stored);
        };
        assert_eq!(stored.partition, 0);
        assert_eq!(
            stored.offsets,
            Some(OffsetRange {
                first: 500,
                last: 502
            })
        );
        let offsets: Vec<i64> = stored.digests.iter().map(|d| d.0).collect();
        assert_eq!(offsets, [500, 501, 502]);
    }

    #[test]
    fn batch_headers_give_record_counts_and_offsets() {
        let first = batch(100, 3);
        let mut both = first.to_vec();
        both.extend_from_slice(&batch(103, 2));
        assert_eq!(batch_stats(&both), (5, Some((100, 104))));
        // A fetch may end with a partial batch: it is not counted.
        let cut = &both[..first.len() + 30];
        assert_eq!(batch_stats(cut), (3, Some((100, 102))));
        assert_eq!(batch_stats(&[]), (0, None));
        assert_eq!(batch_stats(&[0xff; 70]), (0, None));
    }

    #[test]
    fn masked_payload_values_come_from_every_codec_as_json_text_or_base64() {
        for compression in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let mut values = Values::default();
            let batch = {
                let records: Vec<Record> = [&b"{\"card\":\"****\"}"[..], b"plain", b"\xff\x00"]
                    .iter()
                    .enumerate()
                    .map(|(i, v)| Record {
                        transactional: false,
                        control: false,
                        partition_leader_epoch: 0,
                        producer_id: -1,
                        producer_epoch: -1,
                        timestamp_type: TimestampType::Creation,
                        offset: i as i64,
                        sequence: -1,
                        timestamp: 0,
                        key: Some(Bytes::from_static(b"k")),
                        value: Some(Bytes::copy_from_slice(v)),
                        headers: Default::default(),
                        delete_horizon: false,
                    })
                    .collect();
                let mut out = bytes::BytesMut::new();
                RecordBatchEncoder::encode(
                    &mut out,
                    &records,
                    &RecordEncodeOptions {
                        version: 2,
                        compression,
                    },
                )
                .unwrap();
                out.freeze()
            };
            values.add(&batch, &RecordedValues::AsTheyWent);
            assert_eq!(
                values.values,
                vec![
                    serde_json::json!({"card": "****"}),
                    serde_json::json!("plain"),
                    serde_json::json!({"base64": "/wA="}),
                ],
                "{compression:?}"
            );
        }
        // At most PAYLOAD_RECORDS values.
        let mut values = Values::default();
        for _ in 0..60 {
            values.add(&batch(0, 3), &RecordedValues::AsTheyWent);
        }
        assert_eq!(values.values.len(), PAYLOAD_RECORDS);
    }

    #[test]
    fn the_client_id_is_read_from_the_header() {
        let mut frame = vec![0, 18, 0, 3, 0, 0, 0, 7, 0, 7];
        frame.extend_from_slice(b"rdkafka");
        assert_eq!(header_client_id(&frame), Some("rdkafka"));
        let null = [0, 18, 0, 3, 0, 0, 0, 7, 0xff, 0xff];
        assert_eq!(header_client_id(&null), None);
        assert_eq!(header_client_id(&frame[..12]), None);
    }

    #[test]
    fn session_ids_are_uuids() {
        let id = new_uuid();
        assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 4);
        assert_ne!(id, new_uuid());
    }
}

//! The Streams group APIs of KIP-1071: StreamsGroupHeartbeat (88) and StreamsGroupDescribe (89).
//!
//! Kafka 4.3 serves both, but kafka-protocol 0.18 does not model them, so the proxy reads the
//! few fields it authorizes by itself (v0, the only version these APIs have in 4.3) and
//! forwards the client's frame untouched, or answers with a response it writes itself.
//!
//! The accesses follow `KafkaApis`:
//! - StreamsGroupHeartbeat: Read on the group; when the member sends its topology (on joining),
//!   Describe on every topic it names. Kafka creates the internal topics (changelogs and
//!   repartition topics) on the member's behalf when it may Create them (on the topic or the
//!   cluster) and otherwise reports them missing in the response's status; the proxy, which
//!   cannot edit that status, refuses a topology whose internal topics the policy does not let
//!   the member create. That is stricter than Kafka only where the topics already exist.
//! - StreamsGroupDescribe: Describe on every group. As for the other batched APIs (see the
//!   module docs of `authorize`), a request with a refused group is refused as a whole.

use bytes::{BufMut, Bytes, BytesMut};
use streamward_api::acl::{CLUSTER_NAME, Operation, ResourceType};

use super::{Access, Checks, Denial, Policy};

/// StreamsGroupHeartbeat.
pub const HEARTBEAT: i16 = 88;
/// StreamsGroupDescribe.
pub const DESCRIBE: i16 = 89;
/// The highest version of both the proxy reads.
pub const MAX_VERSION: i16 = 0;

/// Whether `api_key` is one of the Streams group APIs.
pub fn is_streams_api(api_key: i16) -> bool {
    api_key == HEARTBEAT || api_key == DESCRIBE
}

/// The API's name, for metrics and logs.
pub fn name(api_key: i16) -> &'static str {
    match api_key {
        HEARTBEAT => "StreamsGroupHeartbeat",
        _ => "StreamsGroupDescribe",
    }
}

/// What to do with a Streams group request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamsOutcome {
    /// Forward the client's frame untouched.
    Forward,
    /// Answer with this response body (after the response header).
    Respond(Bytes),
}

/// The outcome and the accesses the policy was asked about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamsInspection {
    /// What to do.
    pub outcome: StreamsOutcome,
    /// The accesses, each once.
    pub accesses: Vec<Access>,
}

/// Authorizes one Streams group request; `body` is what follows the request header. An error
/// means the request could not be read (the connection is then closed as for any malformed
/// request).
pub fn inspect(
    api_key: i16,
    version: i16,
    body: &[u8],
    policy: &dyn Policy,
) -> Result<StreamsInspection, String> {
    if version > MAX_VERSION {
        return Err(format!(
            "{} v{version} is not one the proxy reads",
            name(api_key)
        ));
    }
    let mut checks = Checks::new(policy);
    let outcome = match api_key {
        HEARTBEAT => heartbeat(&Heartbeat::read(body)?, &mut checks),
        DESCRIBE => describe(&read_describe(body)?, &mut checks),
        other => return Err(format!("API key {other} is not a Streams group API")),
    };
    Ok(StreamsInspection {
        outcome,
        accesses: checks.accesses,
    })
}

fn heartbeat(request: &Heartbeat, checks: &mut Checks<'_>) -> StreamsOutcome {
    if let Err(denial) = checks.check(ResourceType::Group, &request.group_id, Operation::Read) {
        return StreamsOutcome::Respond(heartbeat_error(&request.member_id, &denial));
    }
    let mut refused = None;
    for topic in &request.topics {
        if let Err(denial) = checks.check(ResourceType::Topic, topic, Operation::Describe) {
            refused.get_or_insert(denial);
        }
    }
    for topic in &request.internal_topics {
        let answer = checks.ask_either(
            (ResourceType::Topic, topic, Operation::Create),
            (ResourceType::Cluster, CLUSTER_NAME, Operation::Create),
            true,
        );
        if let Err(denial) = answer {
            refused.get_or_insert(denial);
        }
    }
    match refused {
        None => StreamsOutcome::Forward,
        Some(denial) => StreamsOutcome::Respond(heartbeat_error(&request.member_id, &denial)),
    }
}

fn describe(groups: &[String], checks: &mut Checks<'_>) -> StreamsOutcome {
    let answers: Vec<_> = groups
        .iter()
        .map(|group| checks.check(ResourceType::Group, group, Operation::Describe))
        .collect();
    if !checks.refused() {
        return StreamsOutcome::Forward;
    }
    let mut out = BytesMut::new();
    out.put_i32(0); // throttle_time_ms
    put_uvarint(&mut out, groups.len() as u64 + 1);
    for (group, answer) in groups.iter().zip(&answers) {
        let denial = checks.entry(answer);
        out.put_i16(denial.code);
        put_nullable_string(&mut out, denial.message.as_deref());
        put_string(&mut out, group);
        put_string(&mut out, ""); // group_state
        out.put_i32(-1); // group_epoch
        out.put_i32(-1); // assignment_epoch
        put_uvarint(&mut out, 0); // topology: null
        put_uvarint(&mut out, 1); // members: empty
        out.put_i32(i32::MIN); // authorized_operations: not asked for
        put_uvarint(&mut out, 0); // tagged fields
    }
    put_uvarint(&mut out, 0); // tagged fields
    StreamsOutcome::Respond(out.freeze())
}

/// A StreamsGroupHeartbeatResponse v0 carrying only `denial`.
fn heartbeat_error(member_id: &str, denial: &Denial) -> Bytes {
    let mut out = BytesMut::new();
    out.put_i32(0); // throttle_time_ms
    out.put_i16(denial.code);
    put_nullable_string(&mut out, denial.message.as_deref());
    put_string(&mut out, member_id);
    out.put_i32(0); // member_epoch
    out.put_i32(0); // heartbeat_interval_ms
    out.put_i32(0); // acceptable_recovery_lag
    out.put_i32(0); // task_offset_interval_ms
    for _ in 0..5 {
        // status, active, standby and warm-up tasks, partitions by endpoint: all null
        put_uvarint(&mut out, 0);
    }
    put_uvarint(&mut out, 0); // tagged fields
    out.freeze()
}

/// What the proxy reads of a StreamsGroupHeartbeatRequest v0.
#[derive(Debug, Default, PartialEq, Eq)]
struct Heartbeat {
    group_id: String,
    member_id: String,
    /// Topics the topology reads or writes: sources and repartition sinks, and the internal
    /// topics too.
    topics: Vec<String>,
    /// Internal topics the group coordinator creates: changelogs and repartition sources.
    internal_topics: Vec<String>,
}

impl Heartbeat {
    fn read(body: &[u8]) -> Result<Heartbeat, String> {
        let mut r = Reader::new(body);
        let mut request = Heartbeat {
            group_id: r.string()?,
            member_id: r.string()?,
            ..Heartbeat::default()
        };
        r.skip(4 + 4)?; // member_epoch, endpoint_information_epoch
        r.nullable_string()?; // instance_id
        r.nullable_string()?; // rack_id
        r.skip(4)?; // rebalance_timeout_ms
        if r.i8()? >= 0 {
            r.skip(4)?; // topology epoch
            for _ in 0..r.array_len()?.unwrap_or(0) {
                r.string()?; // subtopology_id
                for _ in 0..r.array_len()?.unwrap_or(0) {
                    request.topics.push(r.string()?); // source topics
                }
                for _ in 0..r.array_len()?.unwrap_or(0) {
                    r.string()?; // source topic regexes: matched topics are read with Fetch
                }
                for _ in 0..r.array_len()?.unwrap_or(0) {
                    request.internal_topics.push(r.topic_info()?); // state changelogs
                }
                for _ in 0..r.array_len()?.unwrap_or(0) {
                    request.topics.push(r.string()?); // repartition sinks
                }
                for _ in 0..r.array_len()?.unwrap_or(0) {
                    request.internal_topics.push(r.topic_info()?); // repartition sources
                }
                for _ in 0..r.array_len()?.unwrap_or(0) {
                    for _ in 0..3 {
                        let n = r.array_len()?.unwrap_or(0);
                        r.skip(2 * n)?; // copartition groups: int16 indexes
                    }
                    r.tagged_fields()?;
                }
                r.tagged_fields()?;
            }
            r.tagged_fields()?;
        }
        // The rest (tasks, endpoints, offsets) needs no authorization and is not read.
        for topic in &request.internal_topics {
            if !request.topics.contains(topic) {
                request.topics.push(topic.clone());
            }
        }
        Ok(request)
    }
}

fn read_describe(body: &[u8]) -> Result<Vec<String>, String> {
    let mut r = Reader::new(body);
    let n = r
        .array_len()?
        .ok_or("StreamsGroupDescribe: null group ids")?;
    (0..n).map(|_| r.string()).collect()
}

/// Reads Kafka's flexible-version encoding; every read is bounds-checked.
struct Reader<'b> {
    bytes: &'b [u8],
    at: usize,
}

impl<'b> Reader<'b> {
    fn new(bytes: &'b [u8]) -> Reader<'b> {
        Reader { bytes, at: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'b [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| format!("truncated at byte {}", self.at))?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn skip(&mut self, n: usize) -> Result<(), String> {
        self.take(n).map(|_| ())
    }

    fn i8(&mut self) -> Result<i8, String> {
        Ok(self.take(1)?[0] as i8)
    }

    fn uvarint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..35).step_by(7) {
            let byte = self.take(1)?[0];
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(format!("a varint longer than 5 bytes at byte {}", self.at))
    }

    /// A compact length: `None` for null.
    fn length(&mut self) -> Result<Option<usize>, String> {
        let n = self.uvarint()?;
        let n = usize::try_from(n).map_err(|_| "a length out of range".to_string())?;
        // Every element takes at least one byte: a longer count is a lie, refused before
        // anything is allocated or looped over.
        if n > 0 && n - 1 > self.bytes.len() - self.at {
            return Err(format!(
                "a length of {} at byte {} past the end",
                n - 1,
                self.at
            ));
        }
        Ok(n.checked_sub(1))
    }

    fn array_len(&mut self) -> Result<Option<usize>, String> {
        self.length()
    }

    fn nullable_string(&mut self) -> Result<Option<String>, String> {
        match self.length()? {
            None => Ok(None),
            Some(n) => {
                let bytes = self.take(n)?;
                String::from_utf8(bytes.to_vec())
                    .map(Some)
                    .map_err(|_| format!("a string that is not UTF-8 before byte {}", self.at))
            }
        }
    }

    fn string(&mut self) -> Result<String, String> {
        self.nullable_string()?
            .ok_or_else(|| format!("a null string at byte {}", self.at))
    }

    fn tagged_fields(&mut self) -> Result<(), String> {
        for _ in 0..self.uvarint()? {
            self.uvarint()?; // tag
            let size = self.uvarint()?;
            self.skip(usize::try_from(size).map_err(|_| "a tagged field too large")?)?;
        }
        Ok(())
    }

    /// A TopicInfo: its name (partitions, replication factor and configs are skipped).
    fn topic_info(&mut self) -> Result<String, String> {
        let name = self.string()?;
        self.skip(4 + 2)?;
        for _ in 0..self.array_len()?.unwrap_or(0) {
            self.string()?;
            self.string()?;
            self.tagged_fields()?;
        }
        self.tagged_fields()?;
        Ok(name)
    }
}

fn put_uvarint(out: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        out.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

fn put_string(out: &mut BytesMut, value: &str) {
    put_uvarint(out, value.len() as u64 + 1);
    out.put_slice(value.as_bytes());
}

fn put_nullable_string(out: &mut BytesMut, value: Option<&str>) {
    match value {
        None => put_uvarint(out, 0),
        Some(value) => put_string(out, value),
    }
}

/// The first error code of a Streams group response body.
#[cfg(test)]
fn error_code(response: &[u8], api_key: i16) -> Option<i16> {
    let mut r = Reader::new(response);
    r.skip(4).ok()?;
    if api_key == DESCRIBE {
        r.array_len().ok()??;
    }
    let code = r.take(2).ok()?;
    Some(i16::from_be_bytes([code[0], code[1]]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authorize::Verdict;

    /// Allows what `allowed` lists as "Type:name:Operation".
    struct Listed(&'static [&'static str]);

    impl Policy for Listed {
        fn check(&self, resource_type: ResourceType, name: &str, operation: Operation) -> Verdict {
            let key = format!("{resource_type}:{name}:{operation}");
            if self.0.contains(&key.as_str()) {
                Verdict::allow()
            } else {
                Verdict::deny(format!("{key} denied by default deny"))
            }
        }
    }

    /// A StreamsGroupHeartbeatRequest v0 joining with a one-subtopology topology.
    pub(crate) fn joining(group: &str) -> Vec<u8> {
        let mut out = BytesMut::new();
        put_string(&mut out, group);
        put_string(&mut out, "member-1");
        out.put_i32(0); // member epoch: join
        out.put_i32(0);
        put_nullable_string(&mut out, None);
        put_nullable_string(&mut out, None);
        out.put_i32(30_000);
        out.put_i8(1); // topology present
        out.put_i32(1);
        put_uvarint(&mut out, 2); // one subtopology
        put_string(&mut out, "0");
        put_uvarint(&mut out, 2);
        put_string(&mut out, "orders");
        put_uvarint(&mut out, 1); // no regexes
        put_uvarint(&mut out, 2); // one changelog
        put_string(&mut out, &format!("{group}-store-changelog"));
        out.put_i32(0);
        out.put_i16(0);
        put_uvarint(&mut out, 2);
        put_string(&mut out, "cleanup.policy");
        put_string(&mut out, "compact");
        put_uvarint(&mut out, 0);
        put_uvarint(&mut out, 0);
        put_uvarint(&mut out, 1); // no repartition sinks
        put_uvarint(&mut out, 1); // no repartition sources
        put_uvarint(&mut out, 2); // one copartition group
        for _ in 0..3 {
            put_uvarint(&mut out, 2);
            out.put_i16(0);
        }
        put_uvarint(&mut out, 0);
        put_uvarint(&mut out, 0); // subtopology tagged fields
        put_uvarint(&mut out, 0); // topology tagged fields
        for _ in 0..3 {
            put_uvarint(&mut out, 0); // tasks: null
        }
        out.to_vec()
    }

    fn describe_request(groups: &[&str]) -> Vec<u8> {
        let mut out = BytesMut::new();
        put_uvarint(&mut out, groups.len() as u64 + 1);
        for group in groups {
            put_string(&mut out, group);
        }
        out.put_u8(0);
        put_uvarint(&mut out, 0);
        out.to_vec()
    }

    const STREAMS_APP: &[&str] = &[
        "Group:wordcount:Read",
        "Group:wordcount:Describe",
        "Topic:orders:Describe",
        "Topic:wordcount-store-changelog:Describe",
        "Topic:wordcount-store-changelog:Create",
    ];

    #[test]
    fn a_heartbeat_names_its_group_and_every_topic_of_its_topology() {
        let request = Heartbeat::read(&joining("wordcount")).unwrap();
        assert_eq!(request.group_id, "wordcount");
        assert_eq!(request.member_id, "member-1");
        assert_eq!(request.topics, ["orders", "wordcount-store-changelog"]);
        assert_eq!(request.internal_topics, ["wordcount-store-changelog"]);
    }

    #[test]
    fn an_allowed_member_is_forwarded() {
        let inspection =
            inspect(HEARTBEAT, 0, &joining("wordcount"), &Listed(STREAMS_APP)).unwrap();
        assert_eq!(inspection.outcome, StreamsOutcome::Forward);
        assert!(inspection.accesses.iter().all(|a| a.allowed));
        assert_eq!(inspection.accesses.len(), 4);
    }

    #[test]
    fn a_denied_group_gets_group_authorization_failed() {
        let inspection = inspect(HEARTBEAT, 0, &joining("other"), &Listed(STREAMS_APP)).unwrap();
        let StreamsOutcome::Respond(body) = inspection.outcome else {
            panic!("forwarded")
        };
        assert_eq!(error_code(&body, HEARTBEAT), Some(30));
        // Only the group was asked about: Kafka stops there too.
        assert_eq!(inspection.accesses.len(), 1);
    }

    #[test]
    fn an_internal_topic_the_member_may_not_create_refuses_the_topology() {
        let policy = Listed(&[
            "Group:wordcount:Read",
            "Topic:orders:Describe",
            "Topic:wordcount-store-changelog:Describe",
        ]);
        let inspection = inspect(HEARTBEAT, 0, &joining("wordcount"), &policy).unwrap();
        let StreamsOutcome::Respond(body) = inspection.outcome else {
            panic!("forwarded")
        };
        assert_eq!(error_code(&body, HEARTBEAT), Some(29));
        let denied: Vec<_> = inspection.accesses.iter().filter(|a| !a.allowed).collect();
        assert_eq!(denied.len(), 1);
        assert_eq!(denied[0].operation, Operation::Create);
    }

    #[test]
    fn describe_refuses_the_request_when_any_group_is_refused() {
        let policy = Listed(STREAMS_APP);
        let allowed = inspect(DESCRIBE, 0, &describe_request(&["wordcount"]), &policy).unwrap();
        assert_eq!(allowed.outcome, StreamsOutcome::Forward);
        let mixed = inspect(
            DESCRIBE,
            0,
            &describe_request(&["wordcount", "payroll"]),
            &policy,
        )
        .unwrap();
        let StreamsOutcome::Respond(body) = mixed.outcome else {
            panic!("forwarded")
        };
        // Both entries carry the refusal (the allowed one "not attempted"), each named.
        assert_eq!(error_code(&body, DESCRIBE), Some(30));
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.contains("payroll") && text.contains("not attempted"),
            "{text}"
        );
    }

    #[test]
    fn truncated_and_lying_requests_are_errors_not_panics() {
        let full = joining("wordcount");
        // The last three bytes (null task lists) are not read by the proxy.
        for end in 0..full.len() - 3 {
            assert!(inspect(HEARTBEAT, 0, &full[..end], &Listed(STREAMS_APP)).is_err());
        }
        // An array claiming four billion entries.
        let lying = [0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(inspect(DESCRIBE, 0, &lying, &Listed(STREAMS_APP)).is_err());
        assert!(inspect(HEARTBEAT, 1, &full, &Listed(STREAMS_APP)).is_err());
    }
}

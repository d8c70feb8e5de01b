//! `replay SESSION`: one client session as the audit trail holds it, request by request, and
//! the records it read or wrote checked against Kafka.
//!
//! The timeline comes from the collector (`GET /v1/sessions/{id}/timeline`, as the kubectl
//! user, so RBAC decides and the read is itself audited). For each Fetch and Produce the proxy
//! recorded, per partition, digests of the records as the broker held them
//! (`Resource::stored`, at audit level `PayloadDigest` and up); with `--bootstrap-server`
//! those offsets are read from Kafka again and each record's digest compared: "exactly what
//! was read", or the first record that differs, or "no longer in Kafka" once retention or
//! compaction removed it. The values as delivered — masked as the client got them — are shown
//! from the event's payload where the audit level kept them (`MaskedPayload`).
//!
//! Exits 1 when a record in Kafka differs from what the session read or wrote.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{Context, bail};
use bytes::{BufMut, BytesMut};
use clap::{Args, ValueEnum};
use jiff::Timestamp;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    FetchRequest, MetadataRequest, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use streamward_api::audit::{
    Approval, Client, Decision, Masked, Payload, RecordDigest, Request as Req, Resource,
    StoredRecords, run_digest,
};
use streamward_sidecar::audit::records::for_each_record;
use streamward_sidecar::audit::session::batch_stats;
use streamward_sidecar::upstream::{
    Connector, SaslMechanism, UpstreamSasl, UpstreamSettings, UpstreamStream, UpstreamTls,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::audit::encode;
use crate::collector::{Collector, CollectorArgs};
use crate::policy::BadInput;

/// Fetch v12: the newest version that names topics rather than ids.
const FETCH_VERSION: i16 = 12;
/// Metadata v12.
const METADATA_VERSION: i16 = 12;
/// Most bytes asked of one partition per Fetch.
const PARTITION_BYTES: i32 = 4 << 20;

/// `replay` flags.
#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// The session id (the `session` column of `kubectl streamward audit`, before `#`).
    pub session: String,
    /// The workload's namespace, when workloads of several namespaces used the same id.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// The workload's service account (with `--namespace`).
    #[arg(long)]
    pub service_account: Option<String>,
    /// A broker of the Kafka cluster the session used (`host:port`): the offsets the session
    /// read and wrote are read from it again and compared with the recorded digests.
    #[arg(long, env = "STREAMWARD_KAFKA_BOOTSTRAP")]
    pub bootstrap_server: Option<String>,
    /// Speak TLS to the brokers, trusting this CA bundle (PEM).
    #[arg(long)]
    pub kafka_ca: Option<PathBuf>,
    /// Speak TLS to the brokers, trusting the system's CAs.
    #[arg(long)]
    pub kafka_tls: bool,
    /// SASL mechanism for the brokers: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (with
    /// `--kafka-user` and STREAMWARD_KAFKA_PASSWORD).
    #[arg(long)]
    pub kafka_sasl_mechanism: Option<String>,
    /// The SASL user.
    #[arg(long)]
    pub kafka_user: Option<String>,
    /// The SASL password (from the environment only, never a flag).
    #[arg(skip = std::env::var("STREAMWARD_KAFKA_PASSWORD").ok())]
    pub kafka_password: Option<String>,
    /// The output: a readable account, or JSON (the timeline and each partition's check).
    #[arg(short = 'o', long, value_enum, default_value_t = ReplayOutput::Text)]
    pub output: ReplayOutput,
    #[command(flatten)]
    pub collector: CollectorArgs,
}

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReplayOutput {
    /// A readable account.
    Text,
    /// One JSON document.
    Json,
}

/// The collector's timeline of a session (`GET /v1/sessions/{id}/timeline`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Timeline {
    /// The session id.
    pub session: String,
    /// `<namespace>/<serviceaccount>`.
    pub identity: String,
    /// The pod.
    #[serde(default)]
    pub pod: Option<String>,
    /// The Kafka client.
    pub client: Client,
    /// The first request's time.
    pub first_seen: Timestamp,
    /// The last request's time.
    pub last_seen: Timestamp,
    /// Sequence ranges never stored.
    #[serde(default)]
    pub missing: Vec<(u64, u64)>,
    /// The requests, in order.
    pub steps: Vec<Step>,
}

/// One request of the timeline.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    /// The event id.
    pub id: String,
    /// Its position in the session.
    pub sequence: u64,
    /// When the proxy received it.
    pub time: Timestamp,
    /// The authenticated user.
    #[serde(default)]
    pub user: Option<String>,
    /// API, version, correlation id.
    pub request: Req,
    /// The resources.
    #[serde(default)]
    pub resources: Vec<Resource>,
    /// The decision.
    pub decision: Decision,
    /// Fields masked per rule.
    #[serde(default)]
    pub masking: Vec<Masked>,
    /// The approval it waited for.
    #[serde(default)]
    pub approval: Option<Approval>,
    /// What the audit level kept of the records.
    #[serde(default)]
    pub payload: Option<Payload>,
}

/// What re-reading one partition's recorded offsets from Kafka found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "outcome")]
pub enum Check {
    /// Every record is as it was read or written.
    Same {
        /// Records compared.
        records: u64,
    },
    /// A record differs: in the first run of records found different (one record, unless the
    /// partition held more records than the event could list one by one).
    Differs {
        /// The run's first offset.
        offset: i64,
        /// Its last offset (the same, for one record).
        through: i64,
        /// The run's recorded digest (the first hex digits), when runs were recorded.
        recorded: Option<String>,
        /// Its digest in Kafka now.
        found: Option<String>,
    },
    /// Kafka no longer has (some of) the records: retention or compaction removed them.
    Gone {
        /// The first recorded offset Kafka no longer has.
        offset: i64,
    },
    /// Kafka could not be read (the error), or no broker was given.
    NotChecked {
        /// Why.
        reason: String,
    },
}

/// One partition of one step, checked.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PartitionCheck {
    /// The step's sequence number.
    pub sequence: u64,
    /// `Read` (Fetch) or `Write` (Produce).
    pub operation: String,
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The recorded offsets.
    pub first: Option<i64>,
    /// The last recorded offset.
    pub last: Option<i64>,
    /// What Kafka holds now.
    #[serde(flatten)]
    pub check: Check,
}

/// Runs the replay; `Ok(false)` when a record differs (exit 1).
pub async fn run(args: ReplayArgs) -> anyhow::Result<bool> {
    let timeline = timeline(&args).await?;
    let mut kafka = match &args.bootstrap_server {
        Some(bootstrap) => Some(Kafka::new(bootstrap, connector(&args)?)),
        None => None,
    };
    let mut checks = Vec::new();
    for step in &timeline.steps {
        for resource in step.resources.iter().filter(|r| r.resource_type == "Topic") {
            for stored in &resource.stored {
                let check = match (&mut kafka, stored.offsets) {
                    (None, _) => Check::NotChecked {
                        reason: "no --bootstrap-server to read Kafka from".into(),
                    },
                    (Some(_), None) => Check::NotChecked {
                        reason: "the broker never said where it wrote these records".into(),
                    },
                    (Some(kafka), Some(_)) => kafka.check(&resource.name, stored).await,
                };
                checks.push(PartitionCheck {
                    sequence: step.sequence,
                    operation: resource.operation.clone(),
                    topic: resource.name.clone(),
                    partition: stored.partition,
                    first: stored.offsets.map(|o| o.first),
                    last: stored.offsets.map(|o| o.last),
                    check,
                });
            }
        }
    }
    let same = !checks
        .iter()
        .any(|c| matches!(c.check, Check::Differs { .. }));
    let mut out = String::new();
    match args.output {
        ReplayOutput::Json => {
            let document = serde_json::json!({
                "timeline": timeline,
                "checks": checks,
                "differs": !same,
            });
            out = serde_json::to_string_pretty(&document)?;
            out.push('\n');
        }
        ReplayOutput::Text => render(&mut out, &timeline, &checks)?,
    }
    print!("{out}");
    Ok(same)
}

async fn timeline(args: &ReplayArgs) -> anyhow::Result<Timeline> {
    let collector = Collector::connect(&args.collector).await?;
    let mut query = Vec::new();
    if let Some(namespace) = &args.namespace {
        query.push(format!("namespace={}", encode(namespace)));
    }
    if let Some(service_account) = &args.service_account {
        query.push(format!("serviceAccount={}", encode(service_account)));
    }
    let path = format!(
        "/v1/sessions/{}/timeline?{}",
        encode(&args.session),
        query.join("&")
    );
    let json = collector.get_json(&path).await?;
    serde_json::from_value(json).context("the collector's timeline")
}

fn connector(args: &ReplayArgs) -> anyhow::Result<Connector> {
    let tls = match (&args.kafka_ca, args.kafka_tls) {
        (Some(path), _) => Some(UpstreamTls {
            ca_pem: Some(
                std::fs::read(path)
                    .with_context(|| format!("reading --kafka-ca {}", path.display()))?,
            ),
            server_name: None,
        }),
        (None, true) => Some(UpstreamTls::default()),
        (None, false) => None,
    };
    let sasl = match &args.kafka_sasl_mechanism {
        None => None,
        Some(name) => {
            let mechanism = SaslMechanism::from_str(name)
                .map_err(|e| BadInput(format!("--kafka-sasl-mechanism: {e}")))?;
            let (Some(username), Some(password)) = (&args.kafka_user, &args.kafka_password) else {
                return Err(BadInput(
                    "--kafka-sasl-mechanism needs --kafka-user and STREAMWARD_KAFKA_PASSWORD"
                        .into(),
                )
                .into());
            };
            Some(UpstreamSasl {
                mechanism,
                username: username.clone(),
                password: password.clone(),
            })
        }
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    Connector::new(UpstreamSettings { tls, sasl }).context("the Kafka connection settings")
}

/// Reads records back from Kafka: the partition leaders from Metadata, then Fetch.
struct Kafka {
    bootstrap: String,
    connector: Connector,
    /// Open connections by broker address.
    connections: BTreeMap<String, UpstreamStream>,
    correlation_id: i32,
}

impl Kafka {
    fn new(bootstrap: &str, connector: Connector) -> Kafka {
        Kafka {
            bootstrap: bootstrap.to_owned(),
            connector,
            connections: BTreeMap::new(),
            correlation_id: 0,
        }
    }

    /// Re-reads `stored`'s offsets of `topic` and compares.
    async fn check(&mut self, topic: &str, stored: &StoredRecords) -> Check {
        let Some(range) = stored.offsets else {
            return Check::NotChecked {
                reason: "no offsets recorded".into(),
            };
        };
        match self
            .read(topic, stored.partition, range.first, range.last)
            .await
        {
            Ok(Read::Records(found)) => compare(stored, &found),
            Ok(Read::OutOfRange) => Check::Gone {
                offset: range.first,
            },
            Err(error) => Check::NotChecked {
                reason: format!("{error:#}"),
            },
        }
    }

    /// The digests of the records of `topic`-`partition` from `first` to `last`, by offset.
    async fn read(
        &mut self,
        topic: &str,
        partition: i32,
        first: i64,
        last: i64,
    ) -> anyhow::Result<Read> {
        let leader = self.leader(topic, partition).await?;
        let mut found = BTreeMap::new();
        let mut next = first;
        while next <= last {
            let request = FetchRequest::default()
                .with_replica_id(kafka_protocol::messages::BrokerId(-1))
                .with_max_wait_ms(0)
                .with_min_bytes(1)
                .with_max_bytes(PARTITION_BYTES)
                .with_isolation_level(0)
                .with_topics(vec![
                    FetchTopic::default()
                        .with_topic(TopicName(StrBytes::from_string(topic.to_owned())))
                        .with_partitions(vec![
                            FetchPartition::default()
                                .with_partition(partition)
                                .with_fetch_offset(next)
                                .with_partition_max_bytes(PARTITION_BYTES),
                        ]),
                ]);
            let response = self.send(&leader, &request, FETCH_VERSION).await?;
            let data = response
                .responses
                .iter()
                .flat_map(|t| &t.partitions)
                .find(|p| p.partition_index == partition)
                .context("the broker's Fetch answer left the partition out")?;
            match data.error_code {
                0 => {}
                // OFFSET_OUT_OF_RANGE: retention removed the start of the range.
                1 if found.is_empty() => return Ok(Read::OutOfRange),
                1 => break,
                code => bail!(
                    "the broker answered Fetch of {topic}-{partition} with error {code} ({:?})",
                    kafka_protocol::ResponseError::try_from_code(code)
                ),
            }
            let Some(records) = data.records.as_ref().filter(|r| !r.is_empty()) else {
                break; // nothing more: the rest is gone (or was never there)
            };
            for_each_record(records, &mut |record| {
                if (first..=last).contains(&record.offset) {
                    found.insert(record.offset, record.digest());
                }
                true
            })
            .with_context(|| format!("reading {topic}-{partition} at offset {next}"))?;
            // Past every batch returned, control batches included.
            match batch_stats(records).1 {
                Some((_, end)) if end >= next => next = end + 1,
                _ => break, // no whole batch fitted: nothing more to learn
            }
        }
        Ok(Read::Records(found))
    }

    /// The address of the leader of `topic`-`partition`.
    async fn leader(&mut self, topic: &str, partition: i32) -> anyhow::Result<String> {
        let request = MetadataRequest::default()
            .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(
                TopicName(StrBytes::from_string(topic.to_owned())),
            ))]));
        let bootstrap = self.bootstrap.clone();
        let metadata = self.send(&bootstrap, &request, METADATA_VERSION).await?;
        let topic_metadata = metadata
            .topics
            .iter()
            .find(|t| t.name.as_ref().is_some_and(|n| n.as_str() == topic))
            .with_context(|| format!("Metadata does not list topic {topic}"))?;
        if topic_metadata.error_code != 0 {
            bail!(
                "Metadata of topic {topic}: error {} ({:?})",
                topic_metadata.error_code,
                kafka_protocol::ResponseError::try_from_code(topic_metadata.error_code)
            );
        }
        let leader = topic_metadata
            .partitions
            .iter()
            .find(|p| p.partition_index == partition)
            .map(|p| p.leader_id)
            .with_context(|| format!("Metadata does not list partition {topic}-{partition}"))?;
        let broker = metadata
            .brokers
            .iter()
            .find(|b| b.node_id == leader)
            .with_context(|| {
                format!("the leader of {topic}-{partition} ({leader:?}) is unknown")
            })?;
        Ok(format!("{}:{}", broker.host, broker.port))
    }

    async fn send<R: Request>(
        &mut self,
        addr: &str,
        request: &R,
        version: i16,
    ) -> anyhow::Result<R::Response> {
        self.correlation_id += 1;
        let correlation_id = self.correlation_id;
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("kubectl-streamward-replay")));
        let mut body = BytesMut::new();
        header.encode(&mut body, R::header_version(version))?;
        request.encode(&mut body, version)?;
        let mut frame = BytesMut::with_capacity(body.len() + 4);
        frame.put_i32(i32::try_from(body.len())?);
        frame.put(body);
        if !self.connections.contains_key(addr) {
            let stream = self
                .connector
                .connect(addr)
                .await
                .with_context(|| format!("connecting to Kafka at {addr}"))?;
            self.connections.insert(addr.to_owned(), stream);
        }
        let result = exchange(
            self.connections.get_mut(addr).context("a connection")?,
            &frame,
        )
        .await;
        let mut answer = match result {
            Ok(answer) => answer,
            Err(error) => {
                self.connections.remove(addr);
                return Err(error.context(format!("talking to Kafka at {addr}")));
            }
        };
        let header = ResponseHeader::decode(&mut answer, R::Response::header_version(version))?;
        if header.correlation_id != correlation_id {
            bail!(
                "Kafka at {addr} answered another request ({})",
                header.correlation_id
            );
        }
        R::Response::decode(&mut answer, version)
    }
}

/// Writes `frame` and reads one answer (without its size prefix).
async fn exchange(stream: &mut UpstreamStream, frame: &[u8]) -> anyhow::Result<bytes::Bytes> {
    /// A Fetch answer is at most a partition's bytes and its framing.
    const MOST: usize = PARTITION_BYTES as usize + (1 << 20);
    stream.write_all(frame).await?;
    let size = stream.read_i32().await?;
    let size = usize::try_from(size)
        .ok()
        .filter(|&s| s <= MOST)
        .with_context(|| format!("an answer of {size} bytes"))?;
    let mut answer = vec![0u8; size];
    stream.read_exact(&mut answer).await?;
    Ok(bytes::Bytes::from(answer))
}

/// What a read of a range of offsets found.
enum Read {
    /// Record digests by offset.
    Records(BTreeMap<i64, [u8; 32]>),
    /// The range starts before the log's start.
    OutOfRange,
}

/// Compares the recorded digests of a partition with what Kafka holds now.
fn compare(stored: &StoredRecords, found: &BTreeMap<i64, [u8; 32]>) -> Check {
    let Some(range) = stored.offsets else {
        return Check::NotChecked {
            reason: "no offsets recorded".into(),
        };
    };
    if found.is_empty() {
        return Check::Gone {
            offset: range.first,
        };
    }
    // Run by run: the first run that differs is where the first differing record is.
    for (i, RecordDigest(start, recorded)) in stored.digests.iter().enumerate() {
        let end = stored
            .digests
            .get(i + 1)
            .map_or(range.last, |next| next.0 - 1);
        let run: Vec<&[u8; 32]> = found.range(*start..=end).map(|(_, d)| d).collect();
        if run.is_empty() {
            return Check::Gone { offset: *start };
        }
        let now = run_digest(run);
        if now != *recorded {
            return Check::Differs {
                offset: *start,
                through: end,
                recorded: Some(recorded.clone()),
                found: Some(now),
            };
        }
    }
    // Every run matches (or none was listed): the partition's digest covers every record.
    let mut hash = Sha256::new();
    for digest in found.values() {
        hash.update(digest);
    }
    let whole = hex::encode(hash.finalize());
    if whole == stored.sha256 && found.len() as u64 == stored.records {
        return Check::Same {
            records: stored.records,
        };
    }
    if (found.len() as u64) < stored.records {
        let first_missing = (range.first..=range.last)
            .find(|o| !found.contains_key(o))
            .unwrap_or(range.first);
        return Check::Gone {
            offset: first_missing,
        };
    }
    Check::Differs {
        offset: range.first,
        through: range.last,
        recorded: None,
        found: None,
    }
}

fn render(out: &mut String, timeline: &Timeline, checks: &[PartitionCheck]) -> anyhow::Result<()> {
    let client = &timeline.client;
    writeln!(
        out,
        "Session {} of {}{}",
        timeline.session,
        timeline.identity,
        timeline
            .pod
            .as_ref()
            .map(|p| format!(" (pod {p})"))
            .unwrap_or_default()
    )?;
    writeln!(
        out,
        "Client: {}{} from {}",
        client.client_id.as_deref().unwrap_or("(no client id)"),
        match (&client.software_name, &client.software_version) {
            (Some(name), Some(version)) => format!(", {name} {version}"),
            (Some(name), None) => format!(", {name}"),
            _ => String::new(),
        },
        client.address
    )?;
    writeln!(
        out,
        "From {} to {}: {} requests",
        timeline.first_seen,
        timeline.last_seen,
        timeline.steps.len()
    )?;
    for (from, to) in &timeline.missing {
        writeln!(out, "Missing from the audit trail: requests #{from}–#{to}")?;
    }
    writeln!(out)?;
    for step in &timeline.steps {
        let decision = &step.decision;
        writeln!(
            out,
            "#{:<4} {}  {} v{}  {}{}{}",
            step.sequence,
            step.time,
            step.request.api_key,
            step.request.api_version,
            decision.effect,
            if decision.rule.is_empty() {
                String::new()
            } else {
                format!("  {}", decision.rule)
            },
            step.user
                .as_ref()
                .map(|u| format!("  (user {u})"))
                .unwrap_or_default()
        )?;
        if let Some(reason) = &decision.reason {
            writeln!(out, "      reason: {reason}")?;
        }
        for resource in &step.resources {
            let mut line = format!(
                "      {} {} {}: {}",
                resource.operation, resource.resource_type, resource.name, resource.effect
            );
            if let Some(records) = resource.records {
                write!(line, ", {records} records")?;
            }
            if let Some(range) = resource.offsets {
                write!(line, ", offsets {}–{}", range.first, range.last)?;
            }
            writeln!(out, "{line}")?;
        }
        for masked in &step.masking {
            writeln!(
                out,
                "      masked: {} field(s) by {}",
                masked.fields, masked.rule
            )?;
        }
        if let Some(approval) = &step.approval {
            writeln!(
                out,
                "      approval: {:?} {}",
                approval.step, approval.request
            )?;
        }
        if let Some(values) = step.payload.as_ref().and_then(|p| p.records.as_ref()) {
            writeln!(out, "      records as delivered (from the audit trail):")?;
            for value in values {
                writeln!(out, "        {value}")?;
            }
        }
        for check in checks.iter().filter(|c| c.sequence == step.sequence) {
            let place = format!("{}-{}", check.topic, check.partition);
            let range = match (check.first, check.last) {
                (Some(first), Some(last)) => format!(" offsets {first}–{last}"),
                _ => String::new(),
            };
            let what = if check.operation == "Write" {
                "written"
            } else {
                "read"
            };
            let verdict = match &check.check {
                Check::Same { records } => {
                    format!("exactly what was {what} ({records} records)")
                }
                Check::Differs {
                    offset,
                    through,
                    recorded,
                    found,
                } => {
                    let which = if offset == through {
                        format!("the record at offset {offset} is")
                    } else {
                        format!("a record at offsets {offset}–{through} is")
                    };
                    let digests = match (recorded, found) {
                        (Some(then), Some(now)) => format!(" (digest {then} then, {now} now)"),
                        _ => String::new(),
                    };
                    format!("DIFFERS: {which} not what was {what}{digests}")
                }
                Check::Gone { offset } => {
                    format!("no longer in Kafka from offset {offset} (retention or compaction)")
                }
                Check::NotChecked { reason } => format!("not checked: {reason}"),
            };
            writeln!(out, "      Kafka {place}{range}: {verdict}")?;
        }
    }
    let differs: Vec<String> = checks
        .iter()
        .filter_map(|c| match c.check {
            Check::Differs {
                offset, through, ..
            } if offset == through => Some(format!("{}-{} offset {offset}", c.topic, c.partition)),
            Check::Differs {
                offset, through, ..
            } => Some(format!(
                "{}-{} offsets {offset}–{through}",
                c.topic, c.partition
            )),
            _ => None,
        })
        .collect();
    let same = checks
        .iter()
        .filter(|c| matches!(c.check, Check::Same { .. }))
        .count();
    writeln!(out)?;
    if differs.is_empty() {
        writeln!(
            out,
            "Kafka: {same} of {} partition reads and writes checked, all exactly as recorded.",
            checks.len()
        )?;
    } else {
        writeln!(
            out,
            "Kafka: {} differ from what the session read or wrote: {}",
            differs.len(),
            differs.join(", ")
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamward_api::audit::{OffsetRange, StoredRecordsBuilder};

    fn digest(n: u8) -> [u8; 32] {
        [n; 32]
    }

    fn stored(records: &[(i64, u8)], runs: usize) -> StoredRecords {
        let mut budget = runs;
        let mut builder = StoredRecordsBuilder::new(0, records.len() as u64, &mut budget);
        for (offset, n) in records {
            builder.add(*offset, &digest(*n));
        }
        builder.finish()
    }

    fn kafka(records: &[(i64, u8)]) -> BTreeMap<i64, [u8; 32]> {
        records.iter().map(|(o, n)| (*o, digest(*n))).collect()
    }

    #[test]
    fn the_first_differing_record_is_named() {
        let recorded = stored(&[(5, 1), (6, 2), (7, 3)], 10);
        assert_eq!(
            compare(&recorded, &kafka(&[(5, 1), (6, 2), (7, 3)])),
            Check::Same { records: 3 }
        );
        let altered = compare(&recorded, &kafka(&[(5, 1), (6, 9), (7, 9)]));
        assert!(
            matches!(
                altered,
                Check::Differs {
                    offset: 6,
                    through: 6,
                    ..
                }
            ),
            "{altered:?}"
        );
        assert_eq!(
            compare(&recorded, &kafka(&[(6, 2), (7, 3)])),
            Check::Gone { offset: 5 }
        );
        assert_eq!(compare(&recorded, &kafka(&[])), Check::Gone { offset: 5 });
    }

    #[test]
    fn runs_of_records_narrow_a_difference_to_their_offsets() {
        // Five records in two runs: 0–2 and 3–4.
        let recorded = stored(&[(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)], 2);
        assert_eq!(recorded.offsets, Some(OffsetRange { first: 0, last: 4 }));
        let altered = compare(&recorded, &kafka(&[(0, 1), (1, 2), (2, 3), (3, 4), (4, 6)]));
        assert!(
            matches!(
                altered,
                Check::Differs {
                    offset: 3,
                    through: 4,
                    ..
                }
            ),
            "{altered:?}"
        );
        // Without runs, the partition digest still tells.
        let unlisted = stored(&[(0, 1), (1, 2)], 0);
        assert_eq!(
            compare(&unlisted, &kafka(&[(0, 1), (1, 7)])),
            Check::Differs {
                offset: 0,
                through: 1,
                recorded: None,
                found: None
            }
        );
        assert_eq!(
            compare(&unlisted, &kafka(&[(0, 1), (1, 2)])),
            Check::Same { records: 2 }
        );
    }
}

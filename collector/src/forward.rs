//! Forwarding every stored event to a Kafka topic, for installations whose SIEM reads Kafka.
//!
//! The forwarder tails the store's segment files from a cursor kept in the data folder
//! (`forward-<topic>.cursor`, the index of the next record to send), so it never needs the
//! ingest path to wait, and a Kafka outage or a restart loses nothing: it resumes where Kafka
//! last acknowledged (at least once; a crash between Kafka's acknowledgement and the cursor
//! write sends a chunk again). Only retention removing records that were never forwarded loses
//! them for Kafka, and that is logged.
//!
//! Each Kafka record is the stored CloudEvent in structured mode (`content-type:
//! application/cloudevents+json`), keyed by the event's `source` (the workload, so one
//! workload's events keep their order in one partition), with the record's store index and
//! hash in the `streamward-index` / `streamward-hash` headers.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;
use sha2::{Digest, Sha256};

use crate::chain;
use crate::metrics::Metrics;
use crate::store;

/// Records sent to Kafka per produce request at most.
const CHUNK: usize = 500;
/// Bytes read from a segment per pass at most.
const READ: u64 = 4 * 1024 * 1024;

/// Where events go.
#[derive(Clone, Debug)]
pub struct Target {
    /// Bootstrap brokers, `host:port`.
    pub bootstrap: Vec<String>,
    /// The topic (it must exist).
    pub topic: String,
}

/// A record read from the store, ready for Kafka.
struct Pending {
    index: u64,
    partition_key: Vec<u8>,
    record: Record,
}

/// Where the forwarder is in the store.
struct Position {
    segment: Option<PathBuf>,
    offset: u64,
    next_index: u64,
}

fn cursor_path(data: &Path, topic: &str) -> PathBuf {
    data.join(format!("forward-{topic}.cursor"))
}

fn read_cursor(path: &Path) -> Result<u64> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .trim()
            .parse()
            .with_context(|| format!("{} does not hold a record index", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn write_cursor(path: &Path, next_index: u64) -> Result<()> {
    let temporary = path.with_extension("cursor.tmp");
    std::fs::write(&temporary, format!("{next_index}\n"))
        .and_then(|()| std::fs::File::open(&temporary)?.sync_all())
        .and_then(|()| std::fs::rename(&temporary, path))
        .with_context(|| format!("writing {}", path.display()))
}

fn first_index(segment: &Path) -> Option<u64> {
    segment.file_stem()?.to_str()?.parse().ok()
}

/// Reads up to [`CHUNK`] records at or after `position.next_index`, and the position after
/// them (not yet taken: the caller commits it once Kafka has them).
fn read_chunk(data: &Path, position: &Position) -> Result<(Vec<Pending>, Position)> {
    let segments = store::segment_files(data)?;
    let Some(first) = segments.first().and_then(|s| first_index(s)) else {
        return Ok((Vec::new(), clone(position)));
    };
    let mut at = clone(position);
    if at.next_index < first {
        tracing::error!(
            from = at.next_index,
            to = first - 1,
            "retention removed records before they were forwarded to Kafka"
        );
        at.next_index = first;
    }
    // The segment holding next_index: the last one starting at or before it.
    let Some(segment) = segments
        .iter()
        .rev()
        .find(|s| first_index(s).is_some_and(|f| f <= at.next_index))
        .cloned()
    else {
        return Ok((Vec::new(), at));
    };
    if at.segment.as_ref() != Some(&segment) {
        at.segment = Some(segment.clone());
        at.offset = 0;
    }
    let mut file = match std::fs::File::open(&segment) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), at)),
        Err(e) => return Err(e).with_context(|| format!("opening {}", segment.display())),
    };
    file.seek(SeekFrom::Start(at.offset))?;
    let mut bytes = Vec::new();
    file.take(READ).read_to_end(&mut bytes)?;
    let mut pending = Vec::new();
    let mut consumed = 0;
    for line in bytes.split_inclusive(|b| *b == b'\n') {
        if !line.ends_with(b"\n") || pending.len() >= CHUNK {
            break;
        }
        consumed += line.len();
        let record = match chain::decode(&line[..line.len() - 1]) {
            Ok(record) => record,
            Err(broken) => {
                tracing::error!(
                    segment = %segment.display(),
                    damage = %broken.damage,
                    "not forwarding a damaged record; run verify"
                );
                continue;
            }
        };
        if record.index < at.next_index {
            continue;
        }
        at.next_index = record.index + 1;
        pending.push(to_kafka(record));
    }
    at.offset += consumed as u64;
    Ok((pending, at))
}

fn clone(position: &Position) -> Position {
    Position {
        segment: position.segment.clone(),
        offset: position.offset,
        next_index: position.next_index,
    }
}

fn to_kafka(record: chain::Record) -> Pending {
    let source = record.event["source"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let millis = record.event["time"]
        .as_str()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map_or(0, |t| t.as_millisecond());
    let mut headers = BTreeMap::new();
    headers.insert(
        "content-type".to_string(),
        b"application/cloudevents+json".to_vec(),
    );
    headers.insert(
        "streamward-index".to_string(),
        record.index.to_string().into_bytes(),
    );
    headers.insert("streamward-hash".to_string(), record.hash.into_bytes());
    Pending {
        index: record.index,
        partition_key: source.clone().into_bytes(),
        record: Record {
            key: Some(source.into_bytes()),
            value: Some(record.event.to_string().into_bytes()),
            headers,
            timestamp: chrono::DateTime::from_timestamp_millis(millis).unwrap_or_default(),
        },
    }
}

/// The topic's partitions, one client each.
async fn connect(target: &Target) -> Result<Vec<PartitionClient>> {
    let client: Client = ClientBuilder::new(target.bootstrap.clone())
        .build()
        .await
        .with_context(|| format!("connecting to Kafka at {}", target.bootstrap.join(",")))?;
    let topics = client.list_topics().await.context("listing Kafka topics")?;
    let Some(topic) = topics.into_iter().find(|t| t.name == target.topic) else {
        bail!(
            "the Kafka topic {:?} does not exist; create it (the collector does not)",
            target.topic
        );
    };
    let mut partitions = Vec::new();
    for partition in &topic.partitions {
        partitions.push(
            client
                .partition_client(
                    target.topic.clone(),
                    *partition,
                    UnknownTopicHandling::Error,
                )
                .await
                .with_context(|| format!("opening partition {partition} of {}", target.topic))?,
        );
    }
    if partitions.is_empty() {
        bail!("the Kafka topic {:?} has no partitions", target.topic);
    }
    Ok(partitions)
}

async fn produce(partitions: &[PartitionClient], chunk: Vec<Pending>) -> Result<()> {
    let mut by_partition: BTreeMap<usize, Vec<Record>> = BTreeMap::new();
    for pending in chunk {
        let hash = Sha256::digest(&pending.partition_key);
        let n = u64::from_be_bytes([
            hash[0], hash[1], hash[2], hash[3], hash[4], hash[5], hash[6], hash[7],
        ]);
        let partition = (n % partitions.len() as u64) as usize;
        by_partition
            .entry(partition)
            .or_default()
            .push(pending.record);
    }
    for (partition, records) in by_partition {
        partitions[partition]
            .produce(records, Compression::NoCompression)
            .await
            .with_context(|| format!("producing to partition {partition}"))?;
    }
    Ok(())
}

/// Forwards until the process ends.
pub async fn run(data: PathBuf, target: Target, metrics: Arc<Metrics>) {
    let cursor = cursor_path(&data, &target.topic);
    let mut position = match read_cursor(&cursor) {
        Ok(next_index) => Position {
            segment: None,
            offset: 0,
            next_index,
        },
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "not forwarding to Kafka");
            return;
        }
    };
    let mut partitions: Option<Vec<PartitionClient>> = None;
    let mut backoff = Duration::from_millis(500);
    loop {
        let read = {
            let data = data.clone();
            let at = clone(&position);
            tokio::task::spawn_blocking(move || read_chunk(&data, &at)).await
        };
        let (chunk, next) = match read {
            Ok(Ok(read)) => read,
            Ok(Err(error)) => {
                tracing::error!(error = format!("{error:#}"), "reading the store to forward");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(_) => return,
        };
        if chunk.is_empty() {
            // Nothing new in this segment: move on when a newer one exists, else wait.
            let moved = next.segment != position.segment || next.next_index != position.next_index;
            position = next;
            if !moved && !advance_segment(&data, &mut position) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            continue;
        }
        if partitions.is_none() {
            match connect(&target).await {
                Ok(connected) => partitions = Some(connected),
                Err(error) => {
                    metrics.forward_failed();
                    tracing::warn!(error = format!("{error:#}"), "Kafka forwarding waits");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            }
        }
        let count = chunk.len();
        let last = chunk.last().map_or(0, |p| p.index);
        let sent = match &partitions {
            Some(partitions) => produce(partitions, chunk).await,
            None => continue,
        };
        match sent {
            Ok(()) => {
                position = next;
                if let Err(error) = write_cursor(&cursor, last + 1) {
                    tracing::error!(error = format!("{error:#}"), "saving the forwarding cursor");
                }
                metrics.forwarded(count);
                backoff = Duration::from_millis(500);
            }
            Err(error) => {
                metrics.forward_failed();
                tracing::warn!(
                    error = format!("{error:#}"),
                    "forwarding to Kafka failed; retrying"
                );
                partitions = None;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// At the end of a segment: moves to the next one if it exists.
fn advance_segment(data: &Path, position: &mut Position) -> bool {
    let Ok(segments) = store::segment_files(data) else {
        return false;
    };
    let Some(current) = &position.segment else {
        return false;
    };
    match segments.iter().find(|s| *s > current) {
        Some(next) => {
            position.segment = Some(next.clone());
            position.offset = 0;
            if let Some(first) = first_index(next) {
                position.next_index = position.next_index.max(first);
            }
            true
        }
        None => false,
    }
}

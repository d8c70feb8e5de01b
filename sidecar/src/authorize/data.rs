//! The data path: Produce and Fetch are split per topic (the allowed topics go to the broker,
//! the denied ones are answered by the proxy and merged into the broker's answer), and Metadata
//! is rewritten so the broker does not create topics the client may not create.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::fetch_request::FetchTopic;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::metadata_response::MetadataResponseTopic;
use kafka_protocol::messages::produce_request::TopicProduceData;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    FetchRequest, FetchResponse, MetadataRequest, MetadataResponse, ProduceRequest,
    ProduceResponse, RequestKind, ResponseKind, TopicName,
};
use streamward_api::acl::{CLUSTER_NAME, Operation, ResourceType};

use super::{Answer, Checks, Denial, Fixup, Outcome, TopicNames};

/// The first Produce version that names topics by id.
const PRODUCE_BY_ID: i16 = 13;
/// The first Fetch version that names topics by id.
const FETCH_BY_ID: i16 = 13;
/// The first Fetch version with fetch sessions.
const FETCH_SESSIONS: i16 = 7;
/// The first Fetch version whose replica id is in `replica_state`.
const FETCH_REPLICA_STATE: i16 = 15;
/// The first Metadata version with `allow_auto_topic_creation`.
const METADATA_AUTO_CREATE_FLAG: i16 = 4;

/// The name of a topic a request names by name or (`by_id`) by id. An id no Metadata response
/// has named is refused with UNKNOWN_TOPIC_ID: it cannot be authorized.
pub(super) fn topic_name(
    by_id: bool,
    name: &TopicName,
    id: &uuid::Uuid,
    topics: &dyn TopicNames,
    checks: &mut Checks<'_>,
) -> Result<TopicName, Denial> {
    if !by_id {
        return Ok(name.clone());
    }
    match topics.name_of(id) {
        Some(name) => Ok(name),
        None => Err(checks.refuse(Denial::new(
            ResponseError::UnknownTopicId,
            format!("topic id {id} is not known to the proxy; refresh metadata and retry"),
        ))),
    }
}

/// Produce: Write on the transactional id (if any), then Write on every topic. Denied topics
/// are answered by the proxy, the rest is forwarded.
pub(super) fn produce(
    mut request: ProduceRequest,
    version: i16,
    checks: &mut Checks<'_>,
    topics: &dyn TopicNames,
) -> Outcome {
    let transactional = match &request.transactional_id {
        Some(id) => checks.check(ResourceType::TransactionalId, id.as_str(), Operation::Write),
        None => Ok(()),
    };
    let answers: Vec<Answer> = request
        .topic_data
        .iter()
        .map(|topic| {
            let name = topic_name(
                version >= PRODUCE_BY_ID,
                &topic.name,
                &topic.topic_id,
                topics,
                checks,
            )?;
            let own = checks.check(ResourceType::Topic, name.as_str(), Operation::Write);
            // A denied transactional id refuses every topic, as in Kafka.
            transactional.clone().and(own)
        })
        .collect();
    if !checks.refused() {
        return Outcome::Forward;
    }

    let (allowed, denied) = split(
        std::mem::take(&mut request.topic_data),
        answers,
        |topic, denial| denied_produce_topic(topic, version, denial),
    );
    let acks_zero = request.acks == 0;
    if allowed.is_empty() {
        if acks_zero {
            return Outcome::NoResponse;
        }
        return Outcome::Respond(ResponseKind::Produce(
            ProduceResponse::default().with_responses(denied),
        ));
    }
    request.topic_data = allowed;
    Outcome::ForwardRewritten {
        request: RequestKind::Produce(request),
        // With acks=0 the broker does not answer, so there is nothing to merge into.
        fixup: if acks_zero {
            Fixup::None
        } else {
            Fixup::Produce(denied)
        },
    }
}

fn denied_produce_topic(
    topic: TopicProduceData,
    version: i16,
    denial: &Denial,
) -> TopicProduceResponse {
    let partitions = topic
        .partition_data
        .iter()
        .map(|partition| {
            PartitionProduceResponse::default()
                .with_index(partition.index)
                .with_error_code(denial.code)
                .with_base_offset(-1)
                .with_log_append_time_ms(-1)
                .with_log_start_offset(-1)
                .with_error_message(denial.text(version >= 8))
        })
        .collect();
    // The request decoded only the field its version has (name before v13, id from v13), so
    // copying both keeps the response valid at that version.
    TopicProduceResponse::default()
        .with_name(topic.name)
        .with_topic_id(topic.topic_id)
        .with_partition_responses(partitions)
}

/// Fetch: ClusterAction on the cluster for a replica, else Read on every topic. Denied topics
/// are answered by the proxy, the rest is forwarded in a session-less request.
///
/// Why session-less: in an incremental fetch session (KIP-227) the broker remembers the
/// partitions of earlier requests and the client names only those that changed. A consumer
/// could then keep reading a topic whose grant expired (or whose rule was removed) without
/// ever naming it again, so the proxy would never be asked. With `session_id` 0 and
/// `session_epoch` -1 every Fetch names all its partitions, and each is authorized. The
/// broker answers with session id 0, which makes the client fall back to full fetch requests.
/// A request that is already session-less (and every request before v7, which has no
/// sessions) is forwarded untouched when everything is allowed: re-encoding it would give
/// the same bytes.
pub(super) fn fetch(
    mut request: FetchRequest,
    version: i16,
    checks: &mut Checks<'_>,
    topics: &dyn TopicNames,
) -> Outcome {
    let replica_id = if version >= FETCH_REPLICA_STATE {
        request.replica_state.replica_id.0
    } else {
        request.replica_id.0
    };
    if replica_id >= 0 {
        return match checks.check(
            ResourceType::Cluster,
            CLUSTER_NAME,
            Operation::ClusterAction,
        ) {
            Ok(()) => Outcome::Forward,
            Err(denial) => {
                let responses = request
                    .topics
                    .into_iter()
                    .map(|topic| denied_fetch_topic(topic, &denial))
                    .collect();
                Outcome::Respond(ResponseKind::Fetch(
                    FetchResponse::default()
                        .with_error_code(if version >= FETCH_SESSIONS {
                            denial.code
                        } else {
                            0
                        })
                        .with_responses(responses),
                ))
            }
        };
    }

    let answers: Vec<Answer> = request
        .topics
        .iter()
        .map(|topic| {
            let name = topic_name(
                version >= FETCH_BY_ID,
                &topic.topic,
                &topic.topic_id,
                topics,
                checks,
            )?;
            checks.check(ResourceType::Topic, name.as_str(), Operation::Read)
        })
        .collect();
    let session_less = request.session_id == 0
        && request.session_epoch == -1
        && request.forgotten_topics_data.is_empty();
    if !checks.refused() && (version < FETCH_SESSIONS || session_less) {
        return Outcome::Forward;
    }

    let (allowed, denied) = split(
        std::mem::take(&mut request.topics),
        answers,
        denied_fetch_topic,
    );
    if allowed.is_empty() && !denied.is_empty() {
        return Outcome::Respond(ResponseKind::Fetch(
            FetchResponse::default().with_responses(denied),
        ));
    }
    request.topics = allowed;
    request.session_id = 0;
    request.session_epoch = -1;
    request.forgotten_topics_data.clear();
    Outcome::ForwardRewritten {
        request: RequestKind::Fetch(request),
        fixup: if denied.is_empty() {
            Fixup::None
        } else {
            Fixup::Fetch(denied)
        },
    }
}

fn denied_fetch_topic(topic: FetchTopic, denial: &Denial) -> FetchableTopicResponse {
    let partitions = topic
        .partitions
        .iter()
        .map(|partition| {
            PartitionData::default()
                .with_partition_index(partition.partition)
                .with_error_code(denial.code)
                .with_high_watermark(-1)
                .with_last_stable_offset(-1)
                .with_log_start_offset(-1)
                .with_aborted_transactions(None)
        })
        .collect();
    // As for Produce: only the field the version has (name before v13, id from v13) is set.
    FetchableTopicResponse::default()
        .with_topic(topic.topic)
        .with_topic_id(topic.topic_id)
        .with_partitions(partitions)
}

/// Splits a request's topics by their answers: the allowed ones, and the response entries of
/// the refused ones.
fn split<T, R>(
    entries: Vec<T>,
    answers: Vec<Answer>,
    refuse: impl Fn(T, &Denial) -> R,
) -> (Vec<T>, Vec<R>) {
    let mut allowed = Vec::with_capacity(entries.len());
    let mut denied = Vec::new();
    for (entry, answer) in entries.into_iter().zip(answers) {
        match answer {
            Ok(()) => allowed.push(entry),
            Err(denial) => denied.push(refuse(entry, &denial)),
        }
    }
    (allowed, denied)
}

/// Metadata is not refused here (topics the client may not Describe are hidden from the
/// response elsewhere). But Kafka creates a missing topic a Metadata request names when
/// `allow_auto_topic_creation` is set and the client may Create it (on the topic or the
/// cluster); if the policy does not grant that for every named topic, the flag is turned off.
///
/// Kafka only asks about Create for topics that do not exist, which the proxy cannot know, so
/// these questions are not recorded as accesses: a consumer asking about a topic it only reads
/// is not refused anything. Versions before 4 have no flag (the broker decides); a request at
/// those versions naming a topic the client may not create is refused (every named topic gets
/// TOPIC_AUTHORIZATION_FAILED), since forwarding it could create the topic.
pub(super) fn metadata(
    mut request: MetadataRequest,
    version: i16,
    checks: &mut Checks<'_>,
) -> Outcome {
    if !request.allow_auto_topic_creation {
        return Outcome::Forward;
    }
    let Some(requested) = &request.topics else {
        return Outcome::Forward; // all topics: Kafka never auto-creates for those
    };
    let lacking_create = requested
        .iter()
        .filter_map(|topic| topic.name.as_ref())
        .any(|name| !name.is_empty() && may_create(checks, name, false).is_err());
    if !lacking_create {
        return Outcome::Forward;
    }
    if version >= METADATA_AUTO_CREATE_FLAG {
        tracing::debug!(
            "auto topic creation turned off for a Metadata request: Create is not granted"
        );
        request.allow_auto_topic_creation = false;
        return Outcome::ForwardRewritten {
            request: RequestKind::Metadata(request),
            fixup: Fixup::None,
        };
    }

    let answers: Vec<(TopicName, Answer)> = requested
        .iter()
        .filter_map(|topic| topic.name.clone())
        .map(|name| {
            let answer = if name.is_empty() {
                Ok(())
            } else {
                may_create(checks, &name, true)
            };
            (name, answer)
        })
        .collect();
    let topics = answers
        .iter()
        .map(|(name, answer)| {
            MetadataResponseTopic::default()
                .with_name(Some(name.clone()))
                .with_error_code(checks.entry(answer).code)
        })
        .collect();
    Outcome::Respond(ResponseKind::Metadata(
        MetadataResponse::default().with_topics(topics),
    ))
}

/// Whether the client may create topic `name` (Create on the topic or on the cluster);
/// `record` records the deciding access.
fn may_create(checks: &mut Checks<'_>, name: &TopicName, record: bool) -> Answer {
    checks.ask_either(
        (ResourceType::Topic, name.as_str(), Operation::Create),
        (ResourceType::Cluster, CLUSTER_NAME, Operation::Create),
        record,
    )
}

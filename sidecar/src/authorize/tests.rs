use std::cell::RefCell;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use streamward_api::acl::{CLUSTER_NAME, Operation, ResourceType};
use uuid::Uuid;

use super::*;
use Operation::*;
use ResourceType::{Cluster, Group, Topic, TransactionalId as Txn};

const TOPIC: &str = "orders";
const SECRET: &str = "secrets";
const GROUP: &str = "billing";
const TXN: &str = "tx-1";
const ORDERS_ID: Uuid = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
const SECRETS_ID: Uuid = Uuid::from_u128(0x1111_2222_3333_4444_5555_6666_7777_8888);
const UNKNOWN_ID: Uuid = Uuid::from_u128(0xdead_beef);

// ---- fixtures ----

/// A policy that allows everything but the listed accesses, and remembers what it was asked.
#[derive(Default)]
struct Rules {
    deny_all: bool,
    denied: Vec<(ResourceType, &'static str, Operation)>,
    violations: Vec<(ResourceType, &'static str, Operation)>,
    asked: RefCell<Vec<(ResourceType, String, Operation)>>,
}

impl Rules {
    fn allow_all() -> Rules {
        Rules::default()
    }

    fn deny_all() -> Rules {
        Rules {
            deny_all: true,
            ..Rules::default()
        }
    }

    fn denying(denied: &[(ResourceType, &'static str, Operation)]) -> Rules {
        Rules {
            denied: denied.to_vec(),
            ..Rules::default()
        }
    }

    fn asked(&self) -> Vec<(ResourceType, String, Operation)> {
        self.asked.borrow().clone()
    }
}

impl Policy for Rules {
    fn check(&self, resource_type: ResourceType, name: &str, operation: Operation) -> Verdict {
        self.asked
            .borrow_mut()
            .push((resource_type, name.to_owned(), operation));
        let matches = |list: &[(ResourceType, &str, Operation)]| {
            list.iter()
                .any(|&(t, n, o)| t == resource_type && n == name && o == operation)
        };
        if matches(&self.violations) {
            Verdict::policy_violation(format!(
                "{operation} on {resource_type} {name} requires approval (StreamPolicy/team rule x)"
            ))
        } else if self.deny_all || matches(&self.denied) {
            Verdict::deny(format!(
                "{operation} on {resource_type} {name} denied by StreamPolicy/team rule default"
            ))
        } else {
            Verdict::allow()
        }
    }
}

/// Topic ids: `orders` and `secrets` are known.
struct Known;

impl TopicNames for Known {
    fn name_of(&self, id: &Uuid) -> Option<TopicName> {
        match *id {
            ORDERS_ID => Some(name(TOPIC)),
            SECRETS_ID => Some(name(SECRET)),
            _ => None,
        }
    }
}

fn s(value: &'static str) -> StrBytes {
    StrBytes::from_static_str(value)
}

fn name(value: &'static str) -> TopicName {
    TopicName(s(value))
}

fn group_id(value: &'static str) -> GroupId {
    GroupId(s(value))
}

fn txn_id(value: &'static str) -> TransactionalId {
    TransactionalId(s(value))
}

fn header(key: ApiKey, version: i16) -> RequestHeader {
    RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(42)
}

fn run(key: ApiKey, request: RequestKind, version: i16, policy: &Rules) -> Inspection {
    inspect(&header(key, version), request, version, policy, &Known)
}

fn access(t: ResourceType, name: &str, op: Operation) -> (ResourceType, String, Operation) {
    (t, name.to_owned(), op)
}

fn accesses(inspection: &Inspection) -> Vec<(ResourceType, String, Operation)> {
    inspection
        .accesses
        .iter()
        .map(|a| (a.resource_type, a.name.clone(), a.operation))
        .collect()
}

/// Encodes `response`, decodes it back at the same version, and checks nothing was lost.
fn round_trip(key: ApiKey, response: &ResponseKind, version: i16) -> ResponseKind {
    let mut out = BytesMut::new();
    response
        .encode(&mut out, version)
        .unwrap_or_else(|e| panic!("{key:?} v{version}: encoding {response:?}: {e}"));
    let bytes = out.freeze();
    let mut body = bytes.clone();
    let decoded = ResponseKind::decode(key, &mut body, version)
        .unwrap_or_else(|e| panic!("{key:?} v{version}: decoding: {e}"));
    assert!(
        body.is_empty(),
        "{key:?} v{version}: bytes left after decoding"
    );
    let mut again = BytesMut::new();
    decoded.encode(&mut again, version).unwrap();
    assert_eq!(
        again.freeze(),
        bytes,
        "{key:?} v{version}: not stable across a round trip"
    );
    decoded
}

/// The request at `version` as the proxy gets it: encoded by a client, decoded from the wire.
/// `None` when kafka-protocol cannot encode that version of the request.
fn over_the_wire(key: ApiKey, request: &RequestKind, version: i16) -> Option<RequestKind> {
    let mut out = BytesMut::new();
    if let Err(e) = request.encode(&mut out, version) {
        let message = format!("{e:#}");
        assert!(
            message.contains("version not supported"),
            "{key:?} v{version}: the test sample does not encode: {message}"
        );
        return None;
    }
    let mut body: Bytes = out.freeze();
    let decoded = RequestKind::decode(key, &mut body, version)
        .unwrap_or_else(|e| panic!("{key:?} v{version}: decoding the sample: {e}"));
    Some(decoded)
}

fn versions(key: ApiKey) -> impl Iterator<Item = i16> {
    let range = key.valid_versions();
    range.min..=range.max
}

fn response_debug(response: &ResponseKind) -> String {
    format!("{response:?}")
}

// ---- one sample request per API key ----

/// A request of API `key` at `version` naming one resource of each kind it takes: topic
/// `orders` (by id where the version names topics by id), group `billing`, transactional id
/// `tx-1`. The match is exhaustive, so a kafka-protocol upgrade that adds an API fails to
/// compile here until the API is mapped.
fn sample(key: ApiKey, v: i16) -> RequestKind {
    use RequestKind as R;
    use add_partitions_to_txn_request::{AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction};
    use alter_partition_reassignments_request::{ReassignablePartition, ReassignableTopic};
    use alter_replica_log_dirs_request::{AlterReplicaLogDir, AlterReplicaLogDirTopic};
    use alter_share_group_offsets_request::{
        AlterShareGroupOffsetsRequestPartition, AlterShareGroupOffsetsRequestTopic,
    };
    use alter_user_scram_credentials_request::ScramCredentialDeletion;
    use delete_share_group_offsets_request::DeleteShareGroupOffsetsRequestTopic;
    use describe_configs_request::DescribeConfigsResource;
    use describe_share_group_offsets_request::{
        DescribeShareGroupOffsetsRequestGroup, DescribeShareGroupOffsetsRequestTopic,
    };
    use incremental_alter_configs_request::AlterConfigsResource as IncrementalResource;
    use offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
    use offset_delete_request::{OffsetDeleteRequestPartition, OffsetDeleteRequestTopic};
    use offset_fetch_request::{
        OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
    };
    use offset_for_leader_epoch_request::{OffsetForLeaderPartition, OffsetForLeaderTopic};
    use txn_offset_commit_request::{TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic};
    use write_txn_markers_request::{WritableTxnMarker, WritableTxnMarkerTopic};
    match key {
        ApiKey::Produce => {
            let topic = if v >= 13 {
                produce_request::TopicProduceData::default().with_topic_id(ORDERS_ID)
            } else {
                produce_request::TopicProduceData::default().with_name(name(TOPIC))
            };
            R::Produce(
                ProduceRequest::default()
                    .with_transactional_id(Some(txn_id(TXN)))
                    .with_acks(-1)
                    .with_topic_data(vec![topic.with_partition_data(vec![
                        produce_request::PartitionProduceData::default().with_index(0),
                    ])]),
            )
        }
        ApiKey::Fetch => {
            R::Fetch(FetchRequest::default().with_topics(vec![fetch_topic(v, TOPIC, ORDERS_ID)]))
        }
        ApiKey::ListOffsets => R::ListOffsets(ListOffsetsRequest::default().with_topics(vec![
            list_offsets_request::ListOffsetsTopic::default()
                .with_name(name(TOPIC))
                .with_partitions(vec![list_offsets_request::ListOffsetsPartition::default()]),
        ])),
        ApiKey::Metadata => R::Metadata(MetadataRequest::default().with_topics(Some(vec![
            metadata_request::MetadataRequestTopic::default().with_name(Some(name(TOPIC))),
        ]))),
        ApiKey::OffsetCommit => R::OffsetCommit(
            OffsetCommitRequest::default()
                .with_group_id(group_id(GROUP))
                .with_topics(vec![
                    OffsetCommitRequestTopic::default()
                        .with_name(name(TOPIC))
                        .with_partitions(vec![OffsetCommitRequestPartition::default()]),
                ]),
        ),
        ApiKey::OffsetFetch => {
            if v >= 8 {
                R::OffsetFetch(OffsetFetchRequest::default().with_groups(vec![
                    OffsetFetchRequestGroup::default()
                        .with_group_id(group_id(GROUP))
                        .with_topics(Some(vec![
                            OffsetFetchRequestTopics::default()
                                .with_name(name(TOPIC))
                                .with_partition_indexes(vec![0]),
                        ])),
                ]))
            } else {
                R::OffsetFetch(
                    OffsetFetchRequest::default()
                        .with_group_id(group_id(GROUP))
                        .with_topics(Some(vec![
                            OffsetFetchRequestTopic::default()
                                .with_name(name(TOPIC))
                                .with_partition_indexes(vec![0]),
                        ])),
                )
            }
        }
        ApiKey::FindCoordinator => {
            if v >= 4 {
                R::FindCoordinator(
                    FindCoordinatorRequest::default().with_coordinator_keys(vec![s(GROUP)]),
                )
            } else {
                R::FindCoordinator(FindCoordinatorRequest::default().with_key(s(GROUP)))
            }
        }
        ApiKey::JoinGroup => R::JoinGroup(
            JoinGroupRequest::default()
                .with_group_id(group_id(GROUP))
                .with_protocol_type(s("consumer")),
        ),
        ApiKey::Heartbeat => {
            R::Heartbeat(HeartbeatRequest::default().with_group_id(group_id(GROUP)))
        }
        ApiKey::LeaveGroup => {
            let request = LeaveGroupRequest::default().with_group_id(group_id(GROUP));
            R::LeaveGroup(if v >= 3 {
                request.with_members(vec![
                    leave_group_request::MemberIdentity::default().with_member_id(s("m-1")),
                ])
            } else {
                request.with_member_id(s("m-1"))
            })
        }
        ApiKey::SyncGroup => {
            R::SyncGroup(SyncGroupRequest::default().with_group_id(group_id(GROUP)))
        }
        ApiKey::DescribeGroups => {
            R::DescribeGroups(DescribeGroupsRequest::default().with_groups(vec![group_id(GROUP)]))
        }
        ApiKey::ListGroups => R::ListGroups(ListGroupsRequest::default()),
        ApiKey::SaslHandshake => {
            R::SaslHandshake(SaslHandshakeRequest::default().with_mechanism(s("PLAIN")))
        }
        ApiKey::ApiVersions => R::ApiVersions(ApiVersionsRequest::default()),
        ApiKey::CreateTopics => R::CreateTopics(CreateTopicsRequest::default().with_topics(vec![
            create_topics_request::CreatableTopic::default()
                .with_name(name(TOPIC))
                .with_num_partitions(1)
                .with_replication_factor(1),
        ])),
        ApiKey::DeleteTopics => {
            if v >= 6 {
                R::DeleteTopics(DeleteTopicsRequest::default().with_topics(vec![
                    delete_topics_request::DeleteTopicState::default().with_topic_id(ORDERS_ID),
                ]))
            } else {
                R::DeleteTopics(DeleteTopicsRequest::default().with_topic_names(vec![name(TOPIC)]))
            }
        }
        ApiKey::DeleteRecords => {
            R::DeleteRecords(DeleteRecordsRequest::default().with_topics(vec![
            delete_records_request::DeleteRecordsTopic::default()
                .with_name(name(TOPIC))
                .with_partitions(vec![delete_records_request::DeleteRecordsPartition::default()]),
        ]))
        }
        ApiKey::InitProducerId => R::InitProducerId(
            InitProducerIdRequest::default().with_transactional_id(Some(txn_id(TXN))),
        ),
        ApiKey::OffsetForLeaderEpoch => {
            R::OffsetForLeaderEpoch(OffsetForLeaderEpochRequest::default().with_topics(vec![
            OffsetForLeaderTopic::default()
                .with_topic(name(TOPIC))
                .with_partitions(vec![OffsetForLeaderPartition::default()]),
        ]))
        }
        ApiKey::AddPartitionsToTxn => {
            let topics = vec![
                AddPartitionsToTxnTopic::default()
                    .with_name(name(TOPIC))
                    .with_partitions(vec![0]),
            ];
            if v >= 4 {
                R::AddPartitionsToTxn(AddPartitionsToTxnRequest::default().with_transactions(vec![
                    AddPartitionsToTxnTransaction::default()
                        .with_transactional_id(txn_id(TXN))
                        .with_topics(topics),
                ]))
            } else {
                R::AddPartitionsToTxn(
                    AddPartitionsToTxnRequest::default()
                        .with_v3_and_below_transactional_id(txn_id(TXN))
                        .with_v3_and_below_topics(topics),
                )
            }
        }
        ApiKey::AddOffsetsToTxn => R::AddOffsetsToTxn(
            AddOffsetsToTxnRequest::default()
                .with_transactional_id(txn_id(TXN))
                .with_group_id(group_id(GROUP)),
        ),
        ApiKey::EndTxn => R::EndTxn(EndTxnRequest::default().with_transactional_id(txn_id(TXN))),
        ApiKey::WriteTxnMarkers => {
            R::WriteTxnMarkers(WriteTxnMarkersRequest::default().with_markers(vec![
                WritableTxnMarker::default().with_topics(vec![
                WritableTxnMarkerTopic::default()
                    .with_name(name(TOPIC))
                    .with_partition_indexes(vec![0]),
            ]),
            ]))
        }
        ApiKey::TxnOffsetCommit => R::TxnOffsetCommit(
            TxnOffsetCommitRequest::default()
                .with_transactional_id(txn_id(TXN))
                .with_group_id(group_id(GROUP))
                .with_topics(vec![
                    TxnOffsetCommitRequestTopic::default()
                        .with_name(name(TOPIC))
                        .with_partitions(vec![TxnOffsetCommitRequestPartition::default()]),
                ]),
        ),
        ApiKey::DescribeAcls => R::DescribeAcls(DescribeAclsRequest::default()),
        ApiKey::CreateAcls => R::CreateAcls(
            CreateAclsRequest::default()
                .with_creations(vec![create_acls_request::AclCreation::default()]),
        ),
        ApiKey::DeleteAcls => R::DeleteAcls(
            DeleteAclsRequest::default()
                .with_filters(vec![delete_acls_request::DeleteAclsFilter::default()]),
        ),
        ApiKey::DescribeConfigs => {
            R::DescribeConfigs(DescribeConfigsRequest::default().with_resources(vec![
            DescribeConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(s(TOPIC)),
        ]))
        }
        ApiKey::AlterConfigs => {
            R::AlterConfigs(AlterConfigsRequest::default().with_resources(vec![
            alter_configs_request::AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(s(TOPIC)),
        ]))
        }
        ApiKey::AlterReplicaLogDirs => {
            R::AlterReplicaLogDirs(AlterReplicaLogDirsRequest::default().with_dirs(vec![
            AlterReplicaLogDir::default()
                .with_path(s("/data"))
                .with_topics(vec![
                    AlterReplicaLogDirTopic::default()
                        .with_name(name(TOPIC))
                        .with_partitions(vec![0]),
                ]),
        ]))
        }
        ApiKey::DescribeLogDirs => R::DescribeLogDirs(DescribeLogDirsRequest::default()),
        ApiKey::SaslAuthenticate => R::SaslAuthenticate(SaslAuthenticateRequest::default()),
        ApiKey::CreatePartitions => {
            R::CreatePartitions(CreatePartitionsRequest::default().with_topics(vec![
            create_partitions_request::CreatePartitionsTopic::default()
                .with_name(name(TOPIC))
                .with_count(2),
        ]))
        }
        ApiKey::CreateDelegationToken => {
            R::CreateDelegationToken(CreateDelegationTokenRequest::default())
        }
        ApiKey::RenewDelegationToken => {
            R::RenewDelegationToken(RenewDelegationTokenRequest::default())
        }
        ApiKey::ExpireDelegationToken => {
            R::ExpireDelegationToken(ExpireDelegationTokenRequest::default())
        }
        ApiKey::DescribeDelegationToken => {
            R::DescribeDelegationToken(DescribeDelegationTokenRequest::default())
        }
        ApiKey::DeleteGroups => {
            R::DeleteGroups(DeleteGroupsRequest::default().with_groups_names(vec![group_id(GROUP)]))
        }
        ApiKey::ElectLeaders => R::ElectLeaders(
            ElectLeadersRequest::default().with_topic_partitions(Some(vec![
                elect_leaders_request::TopicPartitions::default()
                    .with_topic(name(TOPIC))
                    .with_partitions(vec![0]),
            ])),
        ),
        ApiKey::IncrementalAlterConfigs => R::IncrementalAlterConfigs(
            IncrementalAlterConfigsRequest::default().with_resources(vec![
                IncrementalResource::default()
                    .with_resource_type(2)
                    .with_resource_name(s(TOPIC)),
            ]),
        ),
        ApiKey::AlterPartitionReassignments => R::AlterPartitionReassignments(
            AlterPartitionReassignmentsRequest::default().with_topics(vec![
                ReassignableTopic::default()
                    .with_name(name(TOPIC))
                    .with_partitions(vec![ReassignablePartition::default()]),
            ]),
        ),
        ApiKey::ListPartitionReassignments => {
            R::ListPartitionReassignments(ListPartitionReassignmentsRequest::default())
        }
        ApiKey::OffsetDelete => R::OffsetDelete(
            OffsetDeleteRequest::default()
                .with_group_id(group_id(GROUP))
                .with_topics(vec![
                    OffsetDeleteRequestTopic::default()
                        .with_name(name(TOPIC))
                        .with_partitions(vec![OffsetDeleteRequestPartition::default()]),
                ]),
        ),
        ApiKey::DescribeClientQuotas => {
            R::DescribeClientQuotas(DescribeClientQuotasRequest::default())
        }
        ApiKey::AlterClientQuotas => {
            R::AlterClientQuotas(AlterClientQuotasRequest::default().with_entries(vec![
                alter_client_quotas_request::EntryData::default().with_entity(vec![
                alter_client_quotas_request::EntityData::default()
                    .with_entity_type(s("user"))
                    .with_entity_name(Some(s("alice"))),
            ]),
            ]))
        }
        ApiKey::DescribeUserScramCredentials => {
            R::DescribeUserScramCredentials(DescribeUserScramCredentialsRequest::default())
        }
        ApiKey::AlterUserScramCredentials => R::AlterUserScramCredentials(
            AlterUserScramCredentialsRequest::default().with_deletions(vec![
                ScramCredentialDeletion::default()
                    .with_name(s("alice"))
                    .with_mechanism(1),
            ]),
        ),
        ApiKey::Vote => R::Vote(VoteRequest::default()),
        ApiKey::BeginQuorumEpoch => R::BeginQuorumEpoch(BeginQuorumEpochRequest::default()),
        ApiKey::EndQuorumEpoch => R::EndQuorumEpoch(EndQuorumEpochRequest::default()),
        ApiKey::DescribeQuorum => R::DescribeQuorum(DescribeQuorumRequest::default()),
        ApiKey::AlterPartition => R::AlterPartition(AlterPartitionRequest::default()),
        ApiKey::UpdateFeatures => {
            R::UpdateFeatures(UpdateFeaturesRequest::default().with_feature_updates(vec![
                update_features_request::FeatureUpdateKey::default()
                    .with_feature(s("metadata.version")),
            ]))
        }
        ApiKey::Envelope => R::Envelope(EnvelopeRequest::default()),
        ApiKey::FetchSnapshot => R::FetchSnapshot(FetchSnapshotRequest::default()),
        ApiKey::DescribeCluster => R::DescribeCluster(DescribeClusterRequest::default()),
        ApiKey::DescribeProducers => {
            R::DescribeProducers(DescribeProducersRequest::default().with_topics(vec![
            describe_producers_request::TopicRequest::default()
                .with_name(name(TOPIC))
                .with_partition_indexes(vec![0]),
        ]))
        }
        ApiKey::BrokerRegistration => R::BrokerRegistration(BrokerRegistrationRequest::default()),
        ApiKey::BrokerHeartbeat => R::BrokerHeartbeat(BrokerHeartbeatRequest::default()),
        ApiKey::UnregisterBroker => R::UnregisterBroker(UnregisterBrokerRequest::default()),
        ApiKey::DescribeTransactions => R::DescribeTransactions(
            DescribeTransactionsRequest::default().with_transactional_ids(vec![txn_id(TXN)]),
        ),
        ApiKey::ListTransactions => R::ListTransactions(ListTransactionsRequest::default()),
        ApiKey::AllocateProducerIds => {
            R::AllocateProducerIds(AllocateProducerIdsRequest::default())
        }
        ApiKey::ConsumerGroupHeartbeat => R::ConsumerGroupHeartbeat(
            ConsumerGroupHeartbeatRequest::default()
                .with_group_id(group_id(GROUP))
                .with_subscribed_topic_names(Some(vec![name(TOPIC)])),
        ),
        ApiKey::ConsumerGroupDescribe => R::ConsumerGroupDescribe(
            ConsumerGroupDescribeRequest::default().with_group_ids(vec![group_id(GROUP)]),
        ),
        ApiKey::ControllerRegistration => {
            R::ControllerRegistration(ControllerRegistrationRequest::default())
        }
        ApiKey::GetTelemetrySubscriptions => {
            R::GetTelemetrySubscriptions(GetTelemetrySubscriptionsRequest::default())
        }
        ApiKey::PushTelemetry => R::PushTelemetry(PushTelemetryRequest::default()),
        ApiKey::AssignReplicasToDirs => {
            R::AssignReplicasToDirs(AssignReplicasToDirsRequest::default())
        }
        ApiKey::ListConfigResources => {
            R::ListConfigResources(ListConfigResourcesRequest::default())
        }
        ApiKey::DescribeTopicPartitions => {
            R::DescribeTopicPartitions(DescribeTopicPartitionsRequest::default().with_topics(vec![
                describe_topic_partitions_request::TopicRequest::default().with_name(name(TOPIC)),
            ]))
        }
        ApiKey::ShareGroupHeartbeat => R::ShareGroupHeartbeat(
            ShareGroupHeartbeatRequest::default()
                .with_group_id(group_id(GROUP))
                .with_subscribed_topic_names(Some(vec![name(TOPIC)])),
        ),
        ApiKey::ShareGroupDescribe => R::ShareGroupDescribe(
            ShareGroupDescribeRequest::default().with_group_ids(vec![group_id(GROUP)]),
        ),
        ApiKey::ShareFetch => R::ShareFetch(
            ShareFetchRequest::default()
                .with_group_id(Some(group_id(GROUP)))
                .with_topics(vec![
                    share_fetch_request::FetchTopic::default()
                        .with_topic_id(ORDERS_ID)
                        .with_partitions(vec![share_fetch_request::FetchPartition::default()]),
                ]),
        ),
        ApiKey::ShareAcknowledge => R::ShareAcknowledge(
            ShareAcknowledgeRequest::default()
                .with_group_id(Some(group_id(GROUP)))
                .with_topics(vec![
                    share_acknowledge_request::AcknowledgeTopic::default()
                        .with_topic_id(ORDERS_ID)
                        .with_partitions(vec![
                            share_acknowledge_request::AcknowledgePartition::default(),
                        ]),
                ]),
        ),
        ApiKey::AddRaftVoter => R::AddRaftVoter(AddRaftVoterRequest::default()),
        ApiKey::RemoveRaftVoter => R::RemoveRaftVoter(RemoveRaftVoterRequest::default()),
        ApiKey::UpdateRaftVoter => R::UpdateRaftVoter(UpdateRaftVoterRequest::default()),
        ApiKey::InitializeShareGroupState => R::InitializeShareGroupState(
            InitializeShareGroupStateRequest::default().with_topics(vec![
                initialize_share_group_state_request::InitializeStateData::default()
                    .with_topic_id(ORDERS_ID)
                    .with_partitions(vec![
                        initialize_share_group_state_request::PartitionData::default(),
                    ]),
            ]),
        ),
        ApiKey::ReadShareGroupState => {
            R::ReadShareGroupState(ReadShareGroupStateRequest::default().with_topics(vec![
            read_share_group_state_request::ReadStateData::default()
                .with_topic_id(ORDERS_ID)
                .with_partitions(vec![read_share_group_state_request::PartitionData::default()]),
        ]))
        }
        ApiKey::WriteShareGroupState => {
            R::WriteShareGroupState(WriteShareGroupStateRequest::default().with_topics(vec![
            write_share_group_state_request::WriteStateData::default()
                .with_topic_id(ORDERS_ID)
                .with_partitions(vec![write_share_group_state_request::PartitionData::default()]),
        ]))
        }
        ApiKey::DeleteShareGroupState => {
            R::DeleteShareGroupState(DeleteShareGroupStateRequest::default().with_topics(vec![
            delete_share_group_state_request::DeleteStateData::default()
                .with_topic_id(ORDERS_ID)
                .with_partitions(vec![delete_share_group_state_request::PartitionData::default()]),
        ]))
        }
        ApiKey::ReadShareGroupStateSummary => R::ReadShareGroupStateSummary(
            ReadShareGroupStateSummaryRequest::default().with_topics(vec![
                read_share_group_state_summary_request::ReadStateSummaryData::default()
                    .with_topic_id(ORDERS_ID)
                    .with_partitions(vec![
                        read_share_group_state_summary_request::PartitionData::default(),
                    ]),
            ]),
        ),
        ApiKey::DescribeShareGroupOffsets => R::DescribeShareGroupOffsets(
            DescribeShareGroupOffsetsRequest::default().with_groups(vec![
                DescribeShareGroupOffsetsRequestGroup::default()
                    .with_group_id(group_id(GROUP))
                    .with_topics(Some(vec![
                        DescribeShareGroupOffsetsRequestTopic::default()
                            .with_topic_name(name(TOPIC))
                            .with_partitions(vec![0]),
                    ])),
            ]),
        ),
        ApiKey::AlterShareGroupOffsets => R::AlterShareGroupOffsets(
            AlterShareGroupOffsetsRequest::default()
                .with_group_id(group_id(GROUP))
                .with_topics(vec![
                    AlterShareGroupOffsetsRequestTopic::default()
                        .with_topic_name(name(TOPIC))
                        .with_partitions(vec![AlterShareGroupOffsetsRequestPartition::default()]),
                ]),
        ),
        ApiKey::DeleteShareGroupOffsets => R::DeleteShareGroupOffsets(
            DeleteShareGroupOffsetsRequest::default()
                .with_group_id(group_id(GROUP))
                .with_topics(vec![
                    DeleteShareGroupOffsetsRequestTopic::default().with_topic_name(name(TOPIC)),
                ]),
        ),
    }
}

fn fetch_topic(v: i16, topic: &'static str, id: Uuid) -> fetch_request::FetchTopic {
    let entry = if v >= 13 {
        fetch_request::FetchTopic::default().with_topic_id(id)
    } else {
        fetch_request::FetchTopic::default().with_topic(name(topic))
    };
    entry.with_partitions(vec![
        fetch_request::FetchPartition::default().with_partition(0),
        fetch_request::FetchPartition::default().with_partition(1),
    ])
}

/// The accesses Kafka's authorizer checks for `sample(key, v)`, in order.
fn expected(key: ApiKey, v: i16) -> Vec<(ResourceType, String, Operation)> {
    let cluster = |op| vec![access(Cluster, CLUSTER_NAME, op)];
    let topic = |op| vec![access(Topic, TOPIC, op)];
    let group = |op| vec![access(Group, GROUP, op)];
    let group_topic = |g, t| vec![access(Group, GROUP, g), access(Topic, TOPIC, t)];
    match key {
        ApiKey::ApiVersions
        | ApiKey::SaslHandshake
        | ApiKey::SaslAuthenticate
        | ApiKey::GetTelemetrySubscriptions
        | ApiKey::PushTelemetry => vec![],
        // Create is asked (not recorded): see `metadata_auto_creation_*`.
        ApiKey::Metadata => vec![],
        ApiKey::Produce => vec![access(Txn, TXN, Write), access(Topic, TOPIC, Write)],
        ApiKey::Fetch => topic(Read),
        ApiKey::ListOffsets | ApiKey::OffsetForLeaderEpoch | ApiKey::DescribeTopicPartitions => {
            topic(Describe)
        }
        ApiKey::OffsetCommit => group_topic(Read, Read),
        ApiKey::OffsetFetch => group_topic(Describe, Describe),
        ApiKey::OffsetDelete => group_topic(Delete, Read),
        ApiKey::FindCoordinator | ApiKey::DescribeGroups => group(Describe),
        ApiKey::JoinGroup | ApiKey::SyncGroup | ApiKey::Heartbeat | ApiKey::LeaveGroup => {
            group(Read)
        }
        ApiKey::DeleteGroups => group(Delete),
        ApiKey::ConsumerGroupDescribe | ApiKey::ShareGroupDescribe => group(Describe),
        ApiKey::ConsumerGroupHeartbeat | ApiKey::ShareGroupHeartbeat => group_topic(Read, Describe),
        ApiKey::ShareFetch | ApiKey::ShareAcknowledge => group_topic(Read, Read),
        ApiKey::DescribeShareGroupOffsets => group_topic(Describe, Describe),
        ApiKey::AlterShareGroupOffsets => group_topic(Read, Read),
        ApiKey::DeleteShareGroupOffsets => group_topic(Delete, Read),
        ApiKey::CreateTopics => topic(Create),
        ApiKey::DeleteTopics | ApiKey::DeleteRecords => topic(Delete),
        ApiKey::CreatePartitions => topic(Alter),
        ApiKey::DescribeProducers => topic(Read),
        ApiKey::DescribeConfigs => topic(DescribeConfigs),
        ApiKey::AlterConfigs | ApiKey::IncrementalAlterConfigs => topic(AlterConfigs),
        ApiKey::InitProducerId | ApiKey::EndTxn => vec![access(Txn, TXN, Write)],
        ApiKey::AddPartitionsToTxn if v >= 4 => vec![
            access(Cluster, CLUSTER_NAME, ClusterAction),
            access(Txn, TXN, Write),
            access(Topic, TOPIC, Write),
        ],
        ApiKey::AddPartitionsToTxn => vec![access(Txn, TXN, Write), access(Topic, TOPIC, Write)],
        ApiKey::AddOffsetsToTxn => vec![access(Txn, TXN, Write), access(Group, GROUP, Read)],
        ApiKey::TxnOffsetCommit => vec![
            access(Txn, TXN, Write),
            access(Group, GROUP, Read),
            access(Topic, TOPIC, Read),
        ],
        ApiKey::DescribeTransactions => vec![access(Txn, TXN, Describe)],
        ApiKey::ListGroups
        | ApiKey::ListTransactions
        | ApiKey::DescribeAcls
        | ApiKey::DescribeLogDirs
        | ApiKey::ListPartitionReassignments
        | ApiKey::DescribeQuorum
        | ApiKey::DescribeCluster
        | ApiKey::DescribeUserScramCredentials => cluster(Describe),
        ApiKey::CreateAcls
        | ApiKey::DeleteAcls
        | ApiKey::ElectLeaders
        | ApiKey::AlterPartitionReassignments
        | ApiKey::AlterReplicaLogDirs
        | ApiKey::UpdateFeatures
        | ApiKey::AlterUserScramCredentials
        | ApiKey::CreateDelegationToken
        | ApiKey::RenewDelegationToken
        | ApiKey::ExpireDelegationToken
        | ApiKey::DescribeDelegationToken
        | ApiKey::UnregisterBroker
        | ApiKey::AddRaftVoter
        | ApiKey::RemoveRaftVoter => cluster(Alter),
        ApiKey::DescribeClientQuotas | ApiKey::ListConfigResources => cluster(DescribeConfigs),
        ApiKey::AlterClientQuotas => cluster(AlterConfigs),
        ApiKey::WriteTxnMarkers
        | ApiKey::Vote
        | ApiKey::BeginQuorumEpoch
        | ApiKey::EndQuorumEpoch
        | ApiKey::AlterPartition
        | ApiKey::Envelope
        | ApiKey::FetchSnapshot
        | ApiKey::BrokerRegistration
        | ApiKey::BrokerHeartbeat
        | ApiKey::AllocateProducerIds
        | ApiKey::ControllerRegistration
        | ApiKey::AssignReplicasToDirs
        | ApiKey::UpdateRaftVoter
        | ApiKey::InitializeShareGroupState
        | ApiKey::ReadShareGroupState
        | ApiKey::WriteShareGroupState
        | ApiKey::DeleteShareGroupState
        | ApiKey::ReadShareGroupStateSummary => cluster(ClusterAction),
    }
}

/// APIs Kafka authorizes nothing for (the proxy forwards them; SASL and ApiVersions are
/// handled by the session before authorization).
const NO_CHECK: [ApiKey; 5] = [
    ApiKey::ApiVersions,
    ApiKey::SaslHandshake,
    ApiKey::SaslAuthenticate,
    ApiKey::GetTelemetrySubscriptions,
    ApiKey::PushTelemetry,
];

// ---- every API key ----

#[test]
fn every_api_key_maps_to_the_checks_kafka_makes_and_allowed_requests_are_forwarded() {
    let mut seen = 0;
    for key in ApiKey::iter() {
        for v in versions(key) {
            let Some(request) = over_the_wire(key, &sample(key, v), v) else {
                continue;
            };
            seen += 1;
            let policy = Rules::allow_all();
            let inspection = run(key, request, v, &policy);
            assert_eq!(accesses(&inspection), expected(key, v), "{key:?} v{v}");
            assert!(
                inspection
                    .accesses
                    .iter()
                    .all(|a| a.allowed && a.message.is_none())
            );
            assert_eq!(
                policy.asked().is_empty(),
                NO_CHECK.contains(&key),
                "{key:?} v{v}: asked {:?}",
                policy.asked()
            );
            assert_eq!(inspection.outcome, Outcome::Forward, "{key:?} v{v}");
        }
    }
    assert!(seen >= 280, "only {seen} (API, version) pairs were tried");
}

#[test]
fn every_refusal_encodes_at_every_version_and_carries_the_authorization_error() {
    for key in ApiKey::iter() {
        for v in versions(key) {
            let Some(request) = over_the_wire(key, &sample(key, v), v) else {
                continue;
            };
            let inspection = run(key, request, v, &Rules::deny_all());
            if NO_CHECK.contains(&key) {
                assert_eq!(inspection.outcome, Outcome::Forward, "{key:?} v{v}");
                continue;
            }
            if key == ApiKey::Metadata && v >= 4 {
                assert!(
                    matches!(inspection.outcome, Outcome::ForwardRewritten { .. }),
                    "{key:?} v{v}"
                );
                continue;
            }
            let first = match key {
                ApiKey::Metadata => Topic, // v0-3: Create on the topic, refused
                _ => inspection.accesses[0].resource_type,
            };
            assert!(
                inspection
                    .accesses
                    .iter()
                    .all(|a| !a.allowed && a.message.is_some())
            );
            let Outcome::Respond(response) = &inspection.outcome else {
                panic!(
                    "{key:?} v{v}: expected a local answer, got {:?}",
                    inspection.outcome
                );
            };
            let decoded = round_trip(key, response, v);
            let code = authorization_error(first).code();
            let text = response_debug(&decoded);
            if key == ApiKey::DescribeLogDirs && v < 3 {
                assert!(
                    !text.contains(&format!("error_code: {code}")),
                    "{key:?} v{v}: {text}"
                );
                continue; // no error field before v3: Kafka answers an empty list too
            }
            assert!(
                text.contains(&format!("error_code: {code}")),
                "{key:?} v{v}: no {code} in {text}"
            );
            // Every message the response carries names the rule.
            for message in text.split("error_message: Some(\"").skip(1) {
                if !message.starts_with('"') {
                    assert!(
                        message.contains("denied by StreamPolicy/team"),
                        "{key:?} v{v}: {text}"
                    );
                }
            }
        }
    }
}

#[test]
fn refusing_any_single_access_gives_a_response_that_encodes_at_every_version() {
    for key in ApiKey::iter() {
        for v in versions(key) {
            let Some(request) = over_the_wire(key, &sample(key, v), v) else {
                continue;
            };
            for (resource_type, resource, operation) in expected(key, v) {
                let denied: &'static str = match resource_type {
                    Topic => TOPIC,
                    Group => GROUP,
                    Txn => TXN,
                    Cluster => CLUSTER_NAME,
                };
                let mut rules = vec![(resource_type, denied, operation)];
                if matches!(key, ApiKey::CreateTopics | ApiKey::DeleteTopics) {
                    // Kafka also accepts the operation on the cluster.
                    rules.push((Cluster, CLUSTER_NAME, operation));
                }
                let policy = Rules::denying(&rules);
                let inspection = run(key, request.clone(), v, &policy);
                let refused: Vec<_> = inspection.accesses.iter().filter(|a| !a.allowed).collect();
                assert_eq!(refused.len(), 1, "{key:?} v{v} refusing {resource}");
                let Outcome::Respond(response) = &inspection.outcome else {
                    panic!("{key:?} v{v} refusing {resource}: {:?}", inspection.outcome);
                };
                let text = response_debug(&round_trip(key, response, v));
                let code = authorization_error(resource_type).code();
                if !(key == ApiKey::DescribeLogDirs && v < 3) {
                    assert!(
                        text.contains(&format!("error_code: {code}")),
                        "{key:?} v{v}: {text}"
                    );
                }
            }
        }
    }
}

#[test]
fn every_api_key_has_a_sample_at_some_version() {
    for key in ApiKey::iter() {
        assert!(
            versions(key).any(|v| over_the_wire(key, &sample(key, v), v).is_some()),
            "{key:?}"
        );
    }
}

// ---- Produce ----

fn produce_request(_v: i16, acks: i16, topics: &[&'static str]) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(acks)
        .with_topic_data(
            topics
                .iter()
                .map(|&topic| {
                    produce_request::TopicProduceData::default()
                        .with_name(name(topic))
                        .with_partition_data(
                            (0..2)
                                .map(|i| {
                                    produce_request::PartitionProduceData::default()
                                        .with_index(i)
                                        .with_records(Some(Bytes::from_static(b"batch")))
                                })
                                .collect(),
                        )
                })
                .collect(),
        )
        .with_timeout_ms(1000)
}

#[test]
fn produce_with_a_denied_topic_forwards_the_allowed_topics_and_answers_the_denied_ones() {
    for v in [3, 7, 8, 12] {
        let request = produce_request(v, -1, &[TOPIC, SECRET]);
        let policy = Rules::denying(&[(Topic, SECRET, Write)]);
        let inspection = run(ApiKey::Produce, RequestKind::Produce(request), v, &policy);
        let Outcome::ForwardRewritten { request, fixup } = inspection.outcome else {
            panic!("v{v}: {:?}", inspection.outcome);
        };
        let RequestKind::Produce(forwarded) = request else {
            panic!()
        };
        assert_eq!(forwarded.topic_data.len(), 1);
        assert_eq!(forwarded.topic_data[0].name, name(TOPIC));
        assert_eq!(forwarded.topic_data[0].partition_data.len(), 2);
        let Fixup::Produce(denied) = fixup.clone() else {
            panic!("{fixup:?}")
        };
        assert_eq!(denied.len(), 1);
        assert_eq!(denied[0].name, name(SECRET));
        let partitions = &denied[0].partition_responses;
        assert_eq!(
            partitions.iter().map(|p| p.index).collect::<Vec<_>>(),
            [0, 1]
        );
        for p in partitions {
            assert_eq!(p.error_code, 29);
            assert_eq!(p.base_offset, -1);
            assert_eq!(
                p.error_message
                    .as_ref()
                    .map(|m| m.contains("denied by StreamPolicy/team")),
                (v >= 8).then_some(true)
            );
        }
        assert_eq!(
            inspection
                .accesses
                .iter()
                .map(|a| (a.name.as_str(), a.allowed))
                .collect::<Vec<_>>(),
            [(TOPIC, true), (SECRET, false)]
        );

        // The broker answers for `orders`; the proxy merges `secrets` back in.
        let mut response = ResponseKind::Produce(ProduceResponse::default().with_responses(vec![
                produce_response::TopicProduceResponse::default()
                    .with_name(name(TOPIC))
                    .with_partition_responses(vec![
                        produce_response::PartitionProduceResponse::default(),
                    ]),
            ]));
        apply_fixup(fixup, &mut response);
        let ResponseKind::Produce(merged) = round_trip(ApiKey::Produce, &response, v) else {
            panic!()
        };
        let names: Vec<_> = merged
            .responses
            .iter()
            .map(|t| t.name.as_str().to_owned())
            .collect();
        assert_eq!(names, [TOPIC, SECRET]);
    }
}

#[test]
fn produce_fully_denied_is_answered_or_dropped_with_acks_zero() {
    let policy = Rules::deny_all();
    let inspection = run(
        ApiKey::Produce,
        RequestKind::Produce(produce_request(9, 1, &[TOPIC, SECRET])),
        9,
        &policy,
    );
    let Outcome::Respond(ResponseKind::Produce(response)) = &inspection.outcome else {
        panic!("{:?}", inspection.outcome)
    };
    assert_eq!(response.responses.len(), 2);
    round_trip(ApiKey::Produce, &inspection.outcome_response(), 9);

    let inspection = run(
        ApiKey::Produce,
        RequestKind::Produce(produce_request(9, 0, &[TOPIC, SECRET])),
        9,
        &policy,
    );
    assert_eq!(inspection.outcome, Outcome::NoResponse);
    assert_eq!(inspection.accesses.len(), 2);

    // Partly denied with acks=0: the allowed topic goes on, nothing to merge (no response).
    let policy = Rules::denying(&[(Topic, SECRET, Write)]);
    let inspection = run(
        ApiKey::Produce,
        RequestKind::Produce(produce_request(9, 0, &[TOPIC, SECRET])),
        9,
        &policy,
    );
    assert!(matches!(
        inspection.outcome,
        Outcome::ForwardRewritten {
            fixup: Fixup::None,
            ..
        }
    ));
}

#[test]
fn produce_with_a_denied_transactional_id_refuses_every_topic() {
    let request = produce_request(9, -1, &[TOPIC]).with_transactional_id(Some(txn_id(TXN)));
    let policy = Rules::denying(&[(Txn, TXN, Write)]);
    let inspection = run(ApiKey::Produce, RequestKind::Produce(request), 9, &policy);
    let Outcome::Respond(ResponseKind::Produce(response)) = &inspection.outcome else {
        panic!("{:?}", inspection.outcome)
    };
    assert!(
        response.responses[0]
            .partition_responses
            .iter()
            .all(|p| p.error_code == 53)
    );
}

#[test]
fn produce_by_topic_id_is_authorized_by_name_and_unknown_ids_are_refused() {
    let request = ProduceRequest::default().with_acks(1).with_topic_data(vec![
        produce_request::TopicProduceData::default()
            .with_topic_id(ORDERS_ID)
            .with_partition_data(vec![produce_request::PartitionProduceData::default()]),
        produce_request::TopicProduceData::default()
            .with_topic_id(UNKNOWN_ID)
            .with_partition_data(vec![produce_request::PartitionProduceData::default()]),
    ]);
    let inspection = run(
        ApiKey::Produce,
        RequestKind::Produce(request),
        13,
        &Rules::allow_all(),
    );
    assert_eq!(accesses(&inspection), [access(Topic, TOPIC, Write)]);
    let Outcome::ForwardRewritten {
        request: RequestKind::Produce(forwarded),
        fixup: Fixup::Produce(denied),
    } = inspection.outcome
    else {
        panic!("{:?}", inspection.outcome)
    };
    assert_eq!(forwarded.topic_data.len(), 1);
    assert_eq!(forwarded.topic_data[0].topic_id, ORDERS_ID);
    assert_eq!(denied[0].topic_id, UNKNOWN_ID);
    assert_eq!(denied[0].partition_responses[0].error_code, 100);
    let response = ResponseKind::Produce(ProduceResponse::default().with_responses(denied));
    round_trip(ApiKey::Produce, &response, 13);
}

// ---- Fetch ----

/// A fetch in an incremental session (before v7, which has no sessions: a plain fetch).
fn session_fetch(v: i16, topics: Vec<fetch_request::FetchTopic>) -> FetchRequest {
    if v < 7 {
        return FetchRequest::default().with_topics(topics);
    }
    let forgotten = if v >= 13 {
        fetch_request::ForgottenTopic::default().with_topic_id(SECRETS_ID)
    } else {
        fetch_request::ForgottenTopic::default().with_topic(name(SECRET))
    };
    FetchRequest::default()
        .with_session_id(7)
        .with_session_epoch(3)
        .with_forgotten_topics_data(vec![forgotten.with_partitions(vec![5])])
        .with_topics(topics)
}

#[test]
fn fetch_with_a_denied_topic_is_split_and_made_session_less() {
    for v in [7, 12, 13, 16, 18] {
        let request = session_fetch(
            v,
            vec![
                fetch_topic(v, TOPIC, ORDERS_ID),
                fetch_topic(v, SECRET, SECRETS_ID),
            ],
        );
        let request = over_the_wire(ApiKey::Fetch, &RequestKind::Fetch(request), v).unwrap();
        let policy = Rules::denying(&[(Topic, SECRET, Read)]);
        let inspection = run(ApiKey::Fetch, request, v, &policy);
        let Outcome::ForwardRewritten {
            request: RequestKind::Fetch(forwarded),
            fixup,
        } = inspection.outcome
        else {
            panic!("v{v}: {:?}", inspection.outcome)
        };
        assert_eq!((forwarded.session_id, forwarded.session_epoch), (0, -1));
        assert!(forwarded.forgotten_topics_data.is_empty());
        assert_eq!(forwarded.topics.len(), 1);
        assert_eq!(forwarded.topics[0].partitions.len(), 2);
        over_the_wire(ApiKey::Fetch, &RequestKind::Fetch(forwarded), v).unwrap();

        let Fixup::Fetch(denied) = fixup.clone() else {
            panic!("{fixup:?}")
        };
        assert_eq!(denied.len(), 1);
        if v >= 13 {
            assert_eq!(denied[0].topic_id, SECRETS_ID);
        } else {
            assert_eq!(denied[0].topic, name(SECRET));
        }
        for p in &denied[0].partitions {
            assert_eq!(
                (p.error_code, p.high_watermark, p.last_stable_offset),
                (29, -1, -1)
            );
        }
        let mut response = ResponseKind::Fetch(FetchResponse::default().with_responses(vec![
            fetch_response::FetchableTopicResponse::default()
                .with_topic(if v < 13 { name(TOPIC) } else { TopicName::default() })
                .with_topic_id(if v >= 13 { ORDERS_ID } else { Uuid::nil() })
                .with_partitions(vec![fetch_response::PartitionData::default()]),
        ]));
        apply_fixup(fixup, &mut response);
        let ResponseKind::Fetch(merged) = round_trip(ApiKey::Fetch, &response, v) else {
            panic!()
        };
        assert_eq!(merged.responses.len(), 2);
    }
}

#[test]
fn fetch_in_a_session_is_made_session_less_even_when_everything_is_allowed() {
    let request = session_fetch(12, vec![fetch_topic(12, TOPIC, ORDERS_ID)]);
    let inspection = run(
        ApiKey::Fetch,
        RequestKind::Fetch(request),
        12,
        &Rules::allow_all(),
    );
    let Outcome::ForwardRewritten {
        request: RequestKind::Fetch(forwarded),
        fixup: Fixup::None,
    } = inspection.outcome
    else {
        panic!("{:?}", inspection.outcome)
    };
    assert_eq!((forwarded.session_id, forwarded.session_epoch), (0, -1));
    assert!(forwarded.forgotten_topics_data.is_empty());
    assert_eq!(forwarded.topics.len(), 1);

    // A full fetch that asks to open a session (epoch 0) is rewritten too.
    let request = FetchRequest::default()
        .with_session_epoch(0)
        .with_topics(vec![fetch_topic(12, TOPIC, ORDERS_ID)]);
    let inspection = run(
        ApiKey::Fetch,
        RequestKind::Fetch(request),
        12,
        &Rules::allow_all(),
    );
    assert!(matches!(
        inspection.outcome,
        Outcome::ForwardRewritten { .. }
    ));

    // An already session-less fetch, or one from before sessions existed, goes as it is.
    for v in [4, 6, 12] {
        let request = FetchRequest::default().with_topics(vec![fetch_topic(v, TOPIC, ORDERS_ID)]);
        let inspection = run(
            ApiKey::Fetch,
            RequestKind::Fetch(request),
            v,
            &Rules::allow_all(),
        );
        assert_eq!(inspection.outcome, Outcome::Forward, "v{v}");
    }
}

#[test]
fn fetch_of_an_unknown_topic_id_gets_unknown_topic_id_and_is_not_forwarded() {
    let request = FetchRequest::default().with_topics(vec![
        fetch_topic(13, TOPIC, ORDERS_ID),
        fetch_topic(13, "", UNKNOWN_ID),
    ]);
    let inspection = run(
        ApiKey::Fetch,
        RequestKind::Fetch(request),
        13,
        &Rules::allow_all(),
    );
    assert_eq!(accesses(&inspection), [access(Topic, TOPIC, Read)]);
    let Outcome::ForwardRewritten {
        request: RequestKind::Fetch(forwarded),
        fixup: Fixup::Fetch(denied),
    } = inspection.outcome
    else {
        panic!("{:?}", inspection.outcome)
    };
    assert_eq!(forwarded.topics.len(), 1);
    assert_eq!(forwarded.topics[0].topic_id, ORDERS_ID);
    assert_eq!(denied[0].topic_id, UNKNOWN_ID);
    assert!(denied[0].partitions.iter().all(|p| p.error_code == 100));

    // Only unknown ids: answered locally.
    let request = FetchRequest::default().with_topics(vec![fetch_topic(13, "", UNKNOWN_ID)]);
    let inspection = run(
        ApiKey::Fetch,
        RequestKind::Fetch(request),
        13,
        &Rules::allow_all(),
    );
    let Outcome::Respond(response) = &inspection.outcome else {
        panic!("{:?}", inspection.outcome)
    };
    round_trip(ApiKey::Fetch, response, 13);
    assert!(inspection.accesses.is_empty());
}

#[test]
fn fetch_fully_denied_is_answered_at_every_version() {
    for v in versions(ApiKey::Fetch) {
        let request = session_fetch(v, vec![fetch_topic(v, TOPIC, ORDERS_ID)]);
        let Some(request) = over_the_wire(ApiKey::Fetch, &RequestKind::Fetch(request), v) else {
            continue;
        };
        let inspection = run(ApiKey::Fetch, request, v, &Rules::deny_all());
        let Outcome::Respond(response) = &inspection.outcome else {
            panic!("v{v}: {:?}", inspection.outcome)
        };
        let ResponseKind::Fetch(decoded) = round_trip(ApiKey::Fetch, response, v) else {
            panic!()
        };
        assert_eq!(decoded.session_id, 0);
        assert!(
            decoded.responses[0]
                .partitions
                .iter()
                .all(|p| p.error_code == 29)
        );
    }
}

#[test]
fn fetch_from_a_replica_needs_cluster_action() {
    for v in [11, 15] {
        let mut request =
            FetchRequest::default().with_topics(vec![fetch_topic(v, TOPIC, ORDERS_ID)]);
        if v >= 15 {
            request.replica_state.replica_id = BrokerId(2);
        } else {
            request.replica_id = BrokerId(2);
        }
        let inspection = run(
            ApiKey::Fetch,
            RequestKind::Fetch(request.clone()),
            v,
            &Rules::allow_all(),
        );
        assert_eq!(
            accesses(&inspection),
            [access(Cluster, CLUSTER_NAME, ClusterAction)]
        );
        assert_eq!(inspection.outcome, Outcome::Forward);
        let inspection = run(
            ApiKey::Fetch,
            RequestKind::Fetch(request),
            v,
            &Rules::deny_all(),
        );
        let Outcome::Respond(response) = &inspection.outcome else {
            panic!("{:?}", inspection.outcome)
        };
        let ResponseKind::Fetch(decoded) = round_trip(ApiKey::Fetch, response, v) else {
            panic!()
        };
        assert_eq!(decoded.error_code, 31);
        assert!(
            decoded.responses[0]
                .partitions
                .iter()
                .all(|p| p.error_code == 31)
        );
    }
}

// ---- Metadata ----

fn metadata_request(auto_create: bool) -> MetadataRequest {
    MetadataRequest::default()
        .with_allow_auto_topic_creation(auto_create)
        .with_topics(Some(vec![
            metadata_request::MetadataRequestTopic::default().with_name(Some(name(TOPIC))),
            metadata_request::MetadataRequestTopic::default().with_name(Some(name(SECRET))),
        ]))
}

#[test]
fn metadata_auto_creation_is_turned_off_without_create() {
    let policy = Rules::denying(&[(Topic, SECRET, Create), (Cluster, CLUSTER_NAME, Create)]);
    let inspection = run(
        ApiKey::Metadata,
        RequestKind::Metadata(metadata_request(true)),
        12,
        &policy,
    );
    let Outcome::ForwardRewritten {
        request: RequestKind::Metadata(forwarded),
        fixup: Fixup::None,
    } = inspection.outcome
    else {
        panic!("{:?}", inspection.outcome)
    };
    assert!(!forwarded.allow_auto_topic_creation);
    assert_eq!(forwarded.topics, metadata_request(true).topics);
    // Kafka would only ask about topics that do not exist: nothing is recorded as refused.
    assert!(inspection.accesses.is_empty());
    assert!(policy.asked().contains(&access(Topic, SECRET, Create)));
}

#[test]
fn metadata_auto_creation_stays_with_create_on_the_topics_or_the_cluster() {
    // Create on every topic.
    let policy = Rules::denying(&[(Cluster, CLUSTER_NAME, Create)]);
    let inspection = run(
        ApiKey::Metadata,
        RequestKind::Metadata(metadata_request(true)),
        12,
        &policy,
    );
    assert_eq!(inspection.outcome, Outcome::Forward);
    // Create on the cluster only.
    let policy = Rules::denying(&[(Topic, TOPIC, Create), (Topic, SECRET, Create)]);
    let inspection = run(
        ApiKey::Metadata,
        RequestKind::Metadata(metadata_request(true)),
        12,
        &policy,
    );
    assert_eq!(inspection.outcome, Outcome::Forward);
    // Auto-creation not asked for, or all topics: nothing to ask.
    let policy = Rules::deny_all();
    let inspection = run(
        ApiKey::Metadata,
        RequestKind::Metadata(metadata_request(false)),
        12,
        &policy,
    );
    assert_eq!(inspection.outcome, Outcome::Forward);
    let all = MetadataRequest::default().with_topics(None);
    let inspection = run(ApiKey::Metadata, RequestKind::Metadata(all), 12, &policy);
    assert_eq!(inspection.outcome, Outcome::Forward);
    assert!(policy.asked().is_empty());
}

#[test]
fn metadata_before_v4_cannot_turn_auto_creation_off_and_is_refused() {
    for v in 0..4 {
        let policy = Rules::denying(&[(Topic, SECRET, Create), (Cluster, CLUSTER_NAME, Create)]);
        let inspection = run(
            ApiKey::Metadata,
            RequestKind::Metadata(metadata_request(true)),
            v,
            &policy,
        );
        let Outcome::Respond(response) = &inspection.outcome else {
            panic!("v{v}: {:?}", inspection.outcome)
        };
        let ResponseKind::Metadata(decoded) = round_trip(ApiKey::Metadata, response, v) else {
            panic!()
        };
        assert_eq!(decoded.topics.len(), 2);
        assert!(decoded.topics.iter().all(|t| t.error_code == 29));
        assert_eq!(
            accesses(&inspection),
            [access(Topic, TOPIC, Create), access(Topic, SECRET, Create)]
        );
    }
}

// ---- whole-request refusals ----

#[test]
fn a_partly_denied_batch_is_refused_whole_and_says_why() {
    let request =
        DeleteGroupsRequest::default().with_groups_names(vec![group_id("ok"), group_id(GROUP)]);
    let policy = Rules::denying(&[(Group, GROUP, Delete)]);
    let inspection = run(
        ApiKey::DeleteGroups,
        RequestKind::DeleteGroups(request),
        2,
        &policy,
    );
    let Outcome::Respond(ResponseKind::DeleteGroups(response)) = &inspection.outcome else {
        panic!("{:?}", inspection.outcome)
    };
    let codes: Vec<_> = response
        .results
        .iter()
        .map(|r| (r.group_id.as_str(), r.error_code))
        .collect();
    assert_eq!(codes, [("ok", 30), (GROUP, 30)]);

    let request = CreateTopicsRequest::default().with_topics(vec![
        create_topics_request::CreatableTopic::default().with_name(name(TOPIC)),
        create_topics_request::CreatableTopic::default().with_name(name(SECRET)),
    ]);
    let policy = Rules::denying(&[(Topic, SECRET, Create), (Cluster, CLUSTER_NAME, Create)]);
    let inspection = run(
        ApiKey::CreateTopics,
        RequestKind::CreateTopics(request),
        7,
        &policy,
    );
    let Outcome::Respond(ResponseKind::CreateTopics(response)) = &inspection.outcome else {
        panic!("{:?}", inspection.outcome)
    };
    let ok = &response.topics[0];
    let denied = &response.topics[1];
    assert_eq!((ok.error_code, denied.error_code), (29, 29));
    assert!(
        ok.error_message
            .as_deref()
            .unwrap_or_default()
            .starts_with("not attempted")
    );
    assert!(
        denied
            .error_message
            .as_deref()
            .unwrap_or_default()
            .contains("denied by StreamPolicy/team")
    );
    // The deciding accesses: Create on `orders`; for `secrets`, the topic (both refused).
    assert_eq!(
        inspection
            .accesses
            .iter()
            .map(|a| (a.resource_type, a.name.as_str(), a.allowed))
            .collect::<Vec<_>>(),
        [(Topic, TOPIC, true), (Topic, SECRET, false)]
    );
}

#[test]
fn a_policy_violation_is_answered_with_policy_violation_and_the_rule() {
    let request = DeleteRecordsRequest::default().with_topics(vec![
        delete_records_request::DeleteRecordsTopic::default()
            .with_name(name(TOPIC))
            .with_partitions(vec![
                delete_records_request::DeleteRecordsPartition::default(),
            ]),
    ]);
    let policy = Rules {
        violations: vec![(Topic, TOPIC, Delete)],
        ..Rules::default()
    };
    let inspection = run(
        ApiKey::DeleteRecords,
        RequestKind::DeleteRecords(request),
        2,
        &policy,
    );
    let Outcome::Respond(ResponseKind::DeleteRecords(response)) = &inspection.outcome else {
        panic!("{:?}", inspection.outcome)
    };
    assert_eq!(response.topics[0].partitions[0].error_code, 44);
    assert!(
        inspection.accesses[0]
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("requires approval")
    );

    let request = CreatePartitionsRequest::default().with_topics(vec![
        create_partitions_request::CreatePartitionsTopic::default().with_name(name(TOPIC)),
    ]);
    let policy = Rules {
        violations: vec![(Topic, TOPIC, Alter)],
        ..Rules::default()
    };
    let inspection = run(
        ApiKey::CreatePartitions,
        RequestKind::CreatePartitions(request),
        3,
        &policy,
    );
    let Outcome::Respond(ResponseKind::CreatePartitions(response)) = &inspection.outcome else {
        panic!()
    };
    assert_eq!(response.results[0].error_code, 44);
    assert!(
        response.results[0]
            .error_message
            .as_deref()
            .unwrap_or_default()
            .contains("requires approval")
    );
}

#[test]
fn a_denied_group_refuses_every_partition_of_an_offset_commit() {
    let RequestKind::OffsetCommit(request) = sample(ApiKey::OffsetCommit, 8) else {
        panic!()
    };
    let policy = Rules::denying(&[(Group, GROUP, Read)]);
    let inspection = run(
        ApiKey::OffsetCommit,
        RequestKind::OffsetCommit(request),
        8,
        &policy,
    );
    let Outcome::Respond(ResponseKind::OffsetCommit(response)) = &inspection.outcome else {
        panic!()
    };
    assert_eq!(response.topics[0].partitions[0].error_code, 30);
}

#[test]
fn offset_fetch_puts_group_refusals_where_each_version_carries_them() {
    // v1: no top-level error, the partitions carry it.
    let RequestKind::OffsetFetch(request) = sample(ApiKey::OffsetFetch, 1) else {
        panic!()
    };
    let policy = Rules::denying(&[(Group, GROUP, Describe)]);
    let inspection = run(
        ApiKey::OffsetFetch,
        RequestKind::OffsetFetch(request),
        1,
        &policy,
    );
    let Outcome::Respond(ResponseKind::OffsetFetch(response)) = &inspection.outcome else {
        panic!()
    };
    assert_eq!(response.topics[0].partitions[0].error_code, 30);
    assert_eq!(response.topics[0].partitions[0].committed_offset, -1);

    // v5, only a topic refused: the partition carries it, the top level stays 0 (as Kafka).
    let RequestKind::OffsetFetch(request) = sample(ApiKey::OffsetFetch, 5) else {
        panic!()
    };
    let policy = Rules::denying(&[(Topic, TOPIC, Describe)]);
    let inspection = run(
        ApiKey::OffsetFetch,
        RequestKind::OffsetFetch(request),
        5,
        &policy,
    );
    let Outcome::Respond(ResponseKind::OffsetFetch(response)) = &inspection.outcome else {
        panic!()
    };
    assert_eq!(
        (
            response.error_code,
            response.topics[0].partitions[0].error_code
        ),
        (0, 29)
    );

    // v8, two groups, one refused: the other (asking for all its topics) still shows an error.
    let request = OffsetFetchRequest::default().with_groups(vec![
        offset_fetch_request::OffsetFetchRequestGroup::default().with_group_id(group_id(GROUP)),
        offset_fetch_request::OffsetFetchRequestGroup::default()
            .with_group_id(group_id("other"))
            .with_topics(None),
    ]);
    let policy = Rules::denying(&[(Group, GROUP, Describe)]);
    let inspection = run(
        ApiKey::OffsetFetch,
        RequestKind::OffsetFetch(request),
        8,
        &policy,
    );
    let Outcome::Respond(response) = &inspection.outcome else {
        panic!()
    };
    let ResponseKind::OffsetFetch(decoded) = round_trip(ApiKey::OffsetFetch, response, 8) else {
        panic!()
    };
    let codes: Vec<_> = decoded.groups.iter().map(|g| g.error_code).collect();
    assert_eq!(codes, [30, 30]);
}

#[test]
fn find_coordinator_checks_by_key_type() {
    let txn = FindCoordinatorRequest::default()
        .with_key_type(1)
        .with_coordinator_keys(vec![s(TXN)]);
    let inspection = run(
        ApiKey::FindCoordinator,
        RequestKind::FindCoordinator(txn),
        4,
        &Rules::allow_all(),
    );
    assert_eq!(accesses(&inspection), [access(Txn, TXN, Describe)]);

    let share = FindCoordinatorRequest::default()
        .with_key_type(2)
        .with_coordinator_keys(vec![s("billing:topic:0")]);
    let inspection = run(
        ApiKey::FindCoordinator,
        RequestKind::FindCoordinator(share),
        6,
        &Rules::allow_all(),
    );
    assert_eq!(
        accesses(&inspection),
        [access(Cluster, CLUSTER_NAME, ClusterAction)]
    );

    let bogus = FindCoordinatorRequest::default()
        .with_key_type(9)
        .with_coordinator_keys(vec![s("x"), s("y")]);
    let inspection = run(
        ApiKey::FindCoordinator,
        RequestKind::FindCoordinator(bogus),
        4,
        &Rules::allow_all(),
    );
    assert!(inspection.accesses.is_empty());
    let Outcome::Respond(response) = &inspection.outcome else {
        panic!()
    };
    let ResponseKind::FindCoordinator(decoded) = round_trip(ApiKey::FindCoordinator, response, 4)
    else {
        panic!()
    };
    assert!(
        decoded
            .coordinators
            .iter()
            .all(|c| c.error_code == 42 && c.node_id.0 == -1)
    );

    let old = FindCoordinatorRequest::default()
        .with_key_type(1)
        .with_key(s(TXN));
    let inspection = run(
        ApiKey::FindCoordinator,
        RequestKind::FindCoordinator(old),
        2,
        &Rules::deny_all(),
    );
    let Outcome::Respond(response) = &inspection.outcome else {
        panic!()
    };
    let ResponseKind::FindCoordinator(decoded) = round_trip(ApiKey::FindCoordinator, response, 2)
    else {
        panic!()
    };
    assert_eq!(decoded.error_code, 53);
}

#[test]
fn init_producer_id_without_transactional_id_needs_idempotent_write() {
    let idempotent = InitProducerIdRequest::default().with_transactional_id(None);
    let inspection = run(
        ApiKey::InitProducerId,
        RequestKind::InitProducerId(idempotent.clone()),
        4,
        &Rules::allow_all(),
    );
    assert_eq!(
        accesses(&inspection),
        [access(Cluster, CLUSTER_NAME, IdempotentWrite)]
    );
    let inspection = run(
        ApiKey::InitProducerId,
        RequestKind::InitProducerId(idempotent),
        4,
        &Rules::deny_all(),
    );
    let Outcome::Respond(ResponseKind::InitProducerId(response)) = &inspection.outcome else {
        panic!()
    };
    assert_eq!((response.error_code, response.producer_id.0), (31, -1));
}

#[test]
fn add_partitions_to_txn_marks_allowed_partitions_not_attempted() {
    let request = AddPartitionsToTxnRequest::default()
        .with_v3_and_below_transactional_id(txn_id(TXN))
        .with_v3_and_below_topics(vec![
            add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
                .with_name(name(TOPIC))
                .with_partitions(vec![0, 1]),
            add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
                .with_name(name(SECRET))
                .with_partitions(vec![0]),
        ]);
    let policy = Rules::denying(&[(Topic, SECRET, Write)]);
    let inspection = run(
        ApiKey::AddPartitionsToTxn,
        RequestKind::AddPartitionsToTxn(request),
        3,
        &policy,
    );
    let Outcome::Respond(ResponseKind::AddPartitionsToTxn(response)) = &inspection.outcome else {
        panic!()
    };
    let codes: Vec<Vec<i16>> = response
        .results_by_topic_v3_and_below
        .iter()
        .map(|t| {
            t.results_by_partition
                .iter()
                .map(|p| p.partition_error_code)
                .collect()
        })
        .collect();
    assert_eq!(codes, [vec![55, 55], vec![29]]);
}

#[test]
fn config_resources_are_checked_by_their_type() {
    let resource = |resource_type: i8, name: &'static str| {
        describe_configs_request::DescribeConfigsResource::default()
            .with_resource_type(resource_type)
            .with_resource_name(s(name))
    };
    let request = DescribeConfigsRequest::default().with_resources(vec![
        resource(2, TOPIC),
        resource(4, "1"),
        resource(8, "1"),
        resource(16, "metrics"),
        resource(32, GROUP),
    ]);
    let inspection = run(
        ApiKey::DescribeConfigs,
        RequestKind::DescribeConfigs(request),
        4,
        &Rules::allow_all(),
    );
    assert_eq!(
        accesses(&inspection),
        [
            access(Topic, TOPIC, DescribeConfigs),
            access(Cluster, CLUSTER_NAME, DescribeConfigs),
            access(Group, GROUP, DescribeConfigs),
        ]
    );
    assert_eq!(inspection.outcome, Outcome::Forward);

    // An unknown resource type cannot be authorized: INVALID_REQUEST, and no access recorded.
    let request = DescribeConfigsRequest::default()
        .with_resources(vec![resource(2, TOPIC), resource(7, "x")]);
    let inspection = run(
        ApiKey::DescribeConfigs,
        RequestKind::DescribeConfigs(request),
        4,
        &Rules::allow_all(),
    );
    let Outcome::Respond(response) = &inspection.outcome else {
        panic!()
    };
    let ResponseKind::DescribeConfigs(decoded) = round_trip(ApiKey::DescribeConfigs, response, 4)
    else {
        panic!()
    };
    let codes: Vec<_> = decoded.results.iter().map(|r| r.error_code).collect();
    assert_eq!(codes, [42, 42]);
    assert!(inspection.accesses.iter().all(|a| a.allowed));

    let request = IncrementalAlterConfigsRequest::default().with_resources(vec![
        incremental_alter_configs_request::AlterConfigsResource::default()
            .with_resource_type(4)
            .with_resource_name(s("1")),
    ]);
    let inspection = run(
        ApiKey::IncrementalAlterConfigs,
        RequestKind::IncrementalAlterConfigs(request),
        1,
        &Rules::deny_all(),
    );
    let Outcome::Respond(ResponseKind::IncrementalAlterConfigs(response)) = &inspection.outcome
    else {
        panic!()
    };
    assert_eq!(response.responses[0].error_code, 31);
}

#[test]
fn inconsistent_requests_get_an_error_response_not_a_panic() {
    // DeleteTopics v6 naming neither a name nor an id; an unknown id.
    let request = DeleteTopicsRequest::default().with_topics(vec![
        delete_topics_request::DeleteTopicState::default(),
        delete_topics_request::DeleteTopicState::default().with_topic_id(UNKNOWN_ID),
    ]);
    let inspection = run(
        ApiKey::DeleteTopics,
        RequestKind::DeleteTopics(request),
        6,
        &Rules::allow_all(),
    );
    let Outcome::Respond(response) = &inspection.outcome else {
        panic!()
    };
    let ResponseKind::DeleteTopics(decoded) = round_trip(ApiKey::DeleteTopics, response, 6) else {
        panic!()
    };
    let codes: Vec<_> = decoded.responses.iter().map(|r| r.error_code).collect();
    assert_eq!(codes, [42, 100]);

    // ShareFetch without a group id.
    let request = ShareFetchRequest::default().with_topics(vec![
        share_fetch_request::FetchTopic::default().with_topic_id(ORDERS_ID),
    ]);
    let inspection = run(
        ApiKey::ShareFetch,
        RequestKind::ShareFetch(request),
        1,
        &Rules::allow_all(),
    );
    let Outcome::Respond(response) = &inspection.outcome else {
        panic!()
    };
    let ResponseKind::ShareFetch(decoded) = round_trip(ApiKey::ShareFetch, response, 1) else {
        panic!()
    };
    assert_eq!(decoded.error_code, 42);

    // Empty names and empty lists are fine.
    let request = ProduceRequest::default();
    let inspection = run(
        ApiKey::Produce,
        RequestKind::Produce(request),
        9,
        &Rules::deny_all(),
    );
    assert_eq!(inspection.outcome, Outcome::Forward);
}

#[test]
fn every_access_is_asked_once_and_recorded_once() {
    let request = produce_request(9, 1, &[TOPIC, TOPIC, TOPIC]);
    let policy = Rules::allow_all();
    let inspection = run(ApiKey::Produce, RequestKind::Produce(request), 9, &policy);
    assert_eq!(policy.asked(), [access(Topic, TOPIC, Write)]);
    assert_eq!(inspection.accesses.len(), 1);
}

#[test]
fn a_fixup_for_another_api_is_dropped_without_panicking() {
    let mut response = ResponseKind::Heartbeat(HeartbeatResponse::default());
    apply_fixup(
        Fixup::Produce(vec![produce_response::TopicProduceResponse::default()]),
        &mut response,
    );
    apply_fixup(Fixup::Fetch(vec![]), &mut response);
    apply_fixup(Fixup::None, &mut response);
    assert_eq!(
        response,
        ResponseKind::Heartbeat(HeartbeatResponse::default())
    );
}

#[test]
fn verdict_constructors_say_what_they_mean() {
    assert_eq!(
        Verdict::allow(),
        Verdict {
            allowed: true,
            message: None,
            policy_violation: false,
            rule: None,
            dry_run: false,
            requires_approval: false,
        }
    );
    let deny = Verdict::deny("no");
    assert!(!deny.allowed && !deny.policy_violation && deny.message.as_deref() == Some("no"));
    let violation = Verdict::policy_violation(String::from("needs approval"));
    assert!(!violation.allowed && violation.policy_violation);
}

impl Inspection {
    /// The local answer (tests only).
    fn outcome_response(&self) -> ResponseKind {
        match &self.outcome {
            Outcome::Respond(response) => response.clone(),
            other => panic!("not a local answer: {other:?}"),
        }
    }
}

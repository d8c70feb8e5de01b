//! Every API but Produce, Fetch and Metadata: the accesses Kafka's authorizer checks for it,
//! and, when one is refused, the response the proxy answers with instead of forwarding.
//!
//! Each function returns `None` when everything is allowed (the frame is forwarded untouched)
//! and the refusal response otherwise. Responses only set the fields their version has: a
//! field set outside its versions would make the encoding fail.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use streamward_api::acl::{CLUSTER_NAME, Operation, ResourceType};

use super::data::topic_name;
use super::{Answer, Checks, Denial, Outcome, TopicNames};

use Operation::{
    Alter, AlterConfigs, ClusterAction, Create, Delete, Describe, DescribeConfigs, IdempotentWrite,
    Read, Write,
};

/// The accesses of `request` and, if one is refused, the proxy's answer.
pub(super) fn decide(
    request: &RequestKind,
    version: i16,
    c: &mut Checks<'_>,
    topics: &dyn TopicNames,
) -> Outcome {
    let v = version;
    let response = match request {
        // The data path (see `data`); never reached through here.
        RequestKind::Produce(_) | RequestKind::Fetch(_) | RequestKind::Metadata(_) => None,
        // Handled by the proxy itself before authorization, and Kafka requires nothing.
        RequestKind::ApiVersions(_)
        | RequestKind::SaslHandshake(_)
        | RequestKind::SaslAuthenticate(_) => None,
        // Client telemetry (KIP-714): Kafka checks no ACL.
        RequestKind::GetTelemetrySubscriptions(_) | RequestKind::PushTelemetry(_) => None,

        RequestKind::ListOffsets(r) => list_offsets(r, c),
        RequestKind::OffsetForLeaderEpoch(r) => offset_for_leader_epoch(r, c),
        RequestKind::DescribeTopicPartitions(r) => describe_topic_partitions(r, c),
        RequestKind::DescribeProducers(r) => describe_producers(r, c),
        RequestKind::CreateTopics(r) => create_topics(r, c),
        RequestKind::DeleteTopics(r) => delete_topics(r, v, c, topics),
        RequestKind::DeleteRecords(r) => delete_records(r, c),
        RequestKind::CreatePartitions(r) => create_partitions(r, c),

        RequestKind::OffsetCommit(r) => offset_commit(r, c),
        RequestKind::OffsetFetch(r) => offset_fetch(r, v, c),
        RequestKind::OffsetDelete(r) => offset_delete(r, c),
        RequestKind::FindCoordinator(r) => find_coordinator(r, v, c),
        RequestKind::JoinGroup(r) => group(c, &r.group_id, Read).err().map(|d| {
            let mut response = JoinGroupResponse::default().with_error_code(d.code);
            if v >= 7 {
                // Nullable from v7; Kafka sends null with an error.
                response.protocol_name = None;
            }
            ResponseKind::JoinGroup(response)
        }),
        RequestKind::SyncGroup(r) => group(c, &r.group_id, Read)
            .err()
            .map(|d| ResponseKind::SyncGroup(SyncGroupResponse::default().with_error_code(d.code))),
        RequestKind::Heartbeat(r) => group(c, &r.group_id, Read)
            .err()
            .map(|d| ResponseKind::Heartbeat(HeartbeatResponse::default().with_error_code(d.code))),
        RequestKind::LeaveGroup(r) => group(c, &r.group_id, Read).err().map(|d| {
            ResponseKind::LeaveGroup(LeaveGroupResponse::default().with_error_code(d.code))
        }),
        RequestKind::DescribeGroups(r) => describe_groups(r, v, c),
        // Kafka answers a client without Describe on the cluster with the groups it may
        // Describe; the proxy does not filter the broker's list, so it requires the cluster.
        RequestKind::ListGroups(_) => cluster(c, Describe).err().map(|d| {
            ResponseKind::ListGroups(ListGroupsResponse::default().with_error_code(d.code))
        }),
        RequestKind::DeleteGroups(r) => delete_groups(r, c),
        RequestKind::ConsumerGroupHeartbeat(r) => {
            let answer = group_heartbeat(c, &r.group_id, r.subscribed_topic_names.as_deref());
            answer.err().map(|d| {
                ResponseKind::ConsumerGroupHeartbeat(
                    ConsumerGroupHeartbeatResponse::default()
                        .with_error_code(d.code)
                        .with_error_message(d.text(true)),
                )
            })
        }
        RequestKind::ConsumerGroupDescribe(r) => consumer_group_describe(r, c),

        RequestKind::ShareGroupHeartbeat(r) => {
            let answer = group_heartbeat(c, &r.group_id, r.subscribed_topic_names.as_deref());
            answer.err().map(|d| {
                ResponseKind::ShareGroupHeartbeat(
                    ShareGroupHeartbeatResponse::default()
                        .with_error_code(d.code)
                        .with_error_message(d.text(true)),
                )
            })
        }
        RequestKind::ShareGroupDescribe(r) => share_group_describe(r, c),
        RequestKind::ShareFetch(r) => share_fetch(r, c, topics),
        RequestKind::ShareAcknowledge(r) => share_acknowledge(r, c, topics),
        RequestKind::DescribeShareGroupOffsets(r) => describe_share_group_offsets(r, c),
        RequestKind::AlterShareGroupOffsets(r) => alter_share_group_offsets(r, c),
        RequestKind::DeleteShareGroupOffsets(r) => delete_share_group_offsets(r, c),

        RequestKind::InitProducerId(r) => {
            let answer = match &r.transactional_id {
                Some(id) => transactional_id(c, id, Write),
                None => cluster(c, IdempotentWrite),
            };
            answer.err().map(|d| {
                ResponseKind::InitProducerId(
                    InitProducerIdResponse::default()
                        .with_error_code(d.code)
                        .with_producer_id((-1).into())
                        .with_producer_epoch(-1),
                )
            })
        }
        RequestKind::AddPartitionsToTxn(r) => add_partitions_to_txn(r, v, c),
        RequestKind::AddOffsetsToTxn(r) => {
            let id = transactional_id(c, &r.transactional_id, Write);
            let group = group(c, &r.group_id, Read);
            id.and(group).err().map(|d| {
                ResponseKind::AddOffsetsToTxn(
                    AddOffsetsToTxnResponse::default().with_error_code(d.code),
                )
            })
        }
        RequestKind::EndTxn(r) => transactional_id(c, &r.transactional_id, Write)
            .err()
            .map(|d| ResponseKind::EndTxn(EndTxnResponse::default().with_error_code(d.code))),
        RequestKind::TxnOffsetCommit(r) => txn_offset_commit(r, c),
        RequestKind::DescribeTransactions(r) => describe_transactions(r, c),
        // As ListGroups: Kafka filters by Describe on each transactional id instead.
        RequestKind::ListTransactions(_) => cluster(c, Describe).err().map(|d| {
            ResponseKind::ListTransactions(
                ListTransactionsResponse::default().with_error_code(d.code),
            )
        }),

        RequestKind::DescribeAcls(_) => cluster(c, Describe).err().map(|d| {
            ResponseKind::DescribeAcls(
                DescribeAclsResponse::default()
                    .with_error_code(d.code)
                    .with_error_message(d.text(true)),
            )
        }),
        RequestKind::CreateAcls(r) => cluster(c, Alter).err().map(|d| {
            let results = r
                .creations
                .iter()
                .map(|_| {
                    create_acls_response::AclCreationResult::default()
                        .with_error_code(d.code)
                        .with_error_message(d.text(true))
                })
                .collect();
            ResponseKind::CreateAcls(CreateAclsResponse::default().with_results(results))
        }),
        RequestKind::DeleteAcls(r) => cluster(c, Alter).err().map(|d| {
            let results = r
                .filters
                .iter()
                .map(|_| {
                    delete_acls_response::DeleteAclsFilterResult::default()
                        .with_error_code(d.code)
                        .with_error_message(d.text(true))
                })
                .collect();
            ResponseKind::DeleteAcls(DeleteAclsResponse::default().with_filter_results(results))
        }),

        RequestKind::DescribeConfigs(r) => describe_configs(r, c),
        RequestKind::AlterConfigs(r) => alter_configs(r, c),
        RequestKind::IncrementalAlterConfigs(r) => incremental_alter_configs(r, c),
        RequestKind::DescribeClientQuotas(_) => cluster(c, DescribeConfigs).err().map(|d| {
            ResponseKind::DescribeClientQuotas(
                DescribeClientQuotasResponse::default()
                    .with_error_code(d.code)
                    .with_error_message(d.text(true))
                    .with_entries(None),
            )
        }),
        RequestKind::AlterClientQuotas(r) => alter_client_quotas(r, c),
        RequestKind::ListConfigResources(_) => cluster(c, DescribeConfigs).err().map(|d| {
            ResponseKind::ListConfigResources(
                ListConfigResourcesResponse::default().with_error_code(d.code),
            )
        }),

        RequestKind::ElectLeaders(r) => elect_leaders(r, v, c),
        RequestKind::AlterPartitionReassignments(r) => alter_partition_reassignments(r, c),
        RequestKind::ListPartitionReassignments(_) => cluster(c, Describe).err().map(|d| {
            ResponseKind::ListPartitionReassignments(
                ListPartitionReassignmentsResponse::default()
                    .with_error_code(d.code)
                    .with_error_message(d.text(true)),
            )
        }),
        RequestKind::AlterReplicaLogDirs(r) => alter_replica_log_dirs(r, c),
        RequestKind::DescribeLogDirs(_) => cluster(c, Describe).err().map(|d| {
            // Before v3 there is no error field: Kafka answers an empty list, and so does the
            // proxy (an invented log dir would be worse).
            let code = if v >= 3 { d.code } else { 0 };
            ResponseKind::DescribeLogDirs(DescribeLogDirsResponse::default().with_error_code(code))
        }),
        // Stricter than a Kafka broker, which answers anyone (a controller requires Alter).
        RequestKind::DescribeCluster(_) => cluster(c, Describe).err().map(|d| {
            ResponseKind::DescribeCluster(
                DescribeClusterResponse::default()
                    .with_error_code(d.code)
                    .with_error_message(d.text(true)),
            )
        }),
        RequestKind::DescribeQuorum(_) => cluster(c, Describe).err().map(|d| {
            ResponseKind::DescribeQuorum(
                DescribeQuorumResponse::default()
                    .with_error_code(d.code)
                    .with_error_message(d.text(v >= 2)),
            )
        }),
        RequestKind::UpdateFeatures(r) => cluster(c, Alter).err().map(|d| {
            let results = if v <= 1 {
                r.feature_updates
                    .iter()
                    .map(|update| {
                        update_features_response::UpdatableFeatureResult::default()
                            .with_feature(update.feature.clone())
                            .with_error_code(d.code)
                            .with_error_message(d.text(true))
                    })
                    .collect()
            } else {
                Vec::new()
            };
            ResponseKind::UpdateFeatures(
                UpdateFeaturesResponse::default()
                    .with_error_code(d.code)
                    .with_error_message(d.text(true))
                    .with_results(results),
            )
        }),
        RequestKind::DescribeUserScramCredentials(_) => cluster(c, Describe).err().map(|d| {
            ResponseKind::DescribeUserScramCredentials(
                DescribeUserScramCredentialsResponse::default()
                    .with_error_code(d.code)
                    .with_error_message(d.text(true)),
            )
        }),
        RequestKind::AlterUserScramCredentials(r) => alter_user_scram_credentials(r, c),
        // Kafka checks the token owner (CREATE_TOKENS on a User) rather than the cluster; the
        // policy vocabulary has no User resource, so token management needs Alter on the cluster.
        RequestKind::CreateDelegationToken(_) => cluster(c, Alter).err().map(|d| {
            ResponseKind::CreateDelegationToken(
                CreateDelegationTokenResponse::default().with_error_code(d.code),
            )
        }),
        RequestKind::RenewDelegationToken(_) => cluster(c, Alter).err().map(|d| {
            ResponseKind::RenewDelegationToken(
                RenewDelegationTokenResponse::default()
                    .with_error_code(d.code)
                    .with_expiry_timestamp_ms(-1),
            )
        }),
        RequestKind::ExpireDelegationToken(_) => cluster(c, Alter).err().map(|d| {
            ResponseKind::ExpireDelegationToken(
                ExpireDelegationTokenResponse::default()
                    .with_error_code(d.code)
                    .with_expiry_timestamp_ms(-1),
            )
        }),
        RequestKind::DescribeDelegationToken(_) => cluster(c, Alter).err().map(|d| {
            ResponseKind::DescribeDelegationToken(
                DescribeDelegationTokenResponse::default().with_error_code(d.code),
            )
        }),
        // Administrative quorum and broker operations: Alter on the cluster in ControllerApis.
        RequestKind::UnregisterBroker(_) => cluster(c, Alter).err().map(|d| {
            ResponseKind::UnregisterBroker(
                UnregisterBrokerResponse::default()
                    .with_error_code(d.code)
                    .with_error_message(d.text(true)),
            )
        }),
        RequestKind::AddRaftVoter(_) => cluster(c, Alter).err().map(|d| {
            ResponseKind::AddRaftVoter(
                AddRaftVoterResponse::default()
                    .with_error_code(d.code)
                    .with_error_message(d.text(true)),
            )
        }),
        RequestKind::RemoveRaftVoter(_) => cluster(c, Alter).err().map(|d| {
            ResponseKind::RemoveRaftVoter(
                RemoveRaftVoterResponse::default()
                    .with_error_code(d.code)
                    .with_error_message(d.text(true)),
            )
        }),

        // Inter-broker and controller APIs: ClusterAction on the cluster. No client needs them.
        RequestKind::WriteTxnMarkers(r) => write_txn_markers(r, c),
        RequestKind::Vote(_) => cluster(c, ClusterAction)
            .err()
            .map(|d| ResponseKind::Vote(VoteResponse::default().with_error_code(d.code))),
        RequestKind::BeginQuorumEpoch(_) => cluster(c, ClusterAction).err().map(|d| {
            ResponseKind::BeginQuorumEpoch(
                BeginQuorumEpochResponse::default().with_error_code(d.code),
            )
        }),
        RequestKind::EndQuorumEpoch(_) => cluster(c, ClusterAction).err().map(|d| {
            ResponseKind::EndQuorumEpoch(EndQuorumEpochResponse::default().with_error_code(d.code))
        }),
        RequestKind::FetchSnapshot(_) => cluster(c, ClusterAction).err().map(|d| {
            ResponseKind::FetchSnapshot(FetchSnapshotResponse::default().with_error_code(d.code))
        }),
        RequestKind::Envelope(_) => cluster(c, ClusterAction)
            .err()
            .map(|d| ResponseKind::Envelope(EnvelopeResponse::default().with_error_code(d.code))),
        RequestKind::AlterPartition(_) => cluster(c, ClusterAction).err().map(|d| {
            ResponseKind::AlterPartition(AlterPartitionResponse::default().with_error_code(d.code))
        }),
        RequestKind::BrokerRegistration(_) => cluster(c, ClusterAction).err().map(|d| {
            ResponseKind::BrokerRegistration(
                BrokerRegistrationResponse::default().with_error_code(d.code),
            )
        }),
        RequestKind::BrokerHeartbeat(_) => cluster(c, ClusterAction).err().map(|d| {
            ResponseKind::BrokerHeartbeat(
                BrokerHeartbeatResponse::default().with_error_code(d.code),
            )
        }),
        RequestKind::AllocateProducerIds(_) => cluster(c, ClusterAction).err().map(|d| {
            ResponseKind::AllocateProducerIds(
                AllocateProducerIdsResponse::default().with_error_code(d.code),
            )
        }),
        RequestKind::ControllerRegistration(_) => cluster(c, ClusterAction).err().map(|d| {
            ResponseKind::ControllerRegistration(
                ControllerRegistrationResponse::default()
                    .with_error_code(d.code)
                    .with_error_message(d.text(true)),
            )
        }),
        RequestKind::AssignReplicasToDirs(_) => cluster(c, ClusterAction).err().map(|d| {
            ResponseKind::AssignReplicasToDirs(
                AssignReplicasToDirsResponse::default().with_error_code(d.code),
            )
        }),
        RequestKind::UpdateRaftVoter(_) => cluster(c, ClusterAction).err().map(|d| {
            ResponseKind::UpdateRaftVoter(
                UpdateRaftVoterResponse::default().with_error_code(d.code),
            )
        }),
        RequestKind::InitializeShareGroupState(r) => {
            let ids = r
                .topics
                .iter()
                .map(|t| (t.topic_id, t.partitions.iter().map(|p| p.partition)));
            share_state(c, ids, |topic_id, partitions, d| {
                initialize_share_group_state_response::InitializeStateResult::default()
                    .with_topic_id(topic_id)
                    .with_partitions(
                        partitions
                            .map(|partition| {
                                initialize_share_group_state_response::PartitionResult::default()
                                    .with_partition(partition)
                                    .with_error_code(d.code)
                                    .with_error_message(d.text(true))
                            })
                            .collect(),
                    )
            })
            .map(|results| {
                ResponseKind::InitializeShareGroupState(
                    InitializeShareGroupStateResponse::default().with_results(results),
                )
            })
        }
        RequestKind::ReadShareGroupState(r) => {
            let ids = r
                .topics
                .iter()
                .map(|t| (t.topic_id, t.partitions.iter().map(|p| p.partition)));
            share_state(c, ids, |topic_id, partitions, d| {
                read_share_group_state_response::ReadStateResult::default()
                    .with_topic_id(topic_id)
                    .with_partitions(
                        partitions
                            .map(|partition| {
                                read_share_group_state_response::PartitionResult::default()
                                    .with_partition(partition)
                                    .with_error_code(d.code)
                                    .with_error_message(d.text(true))
                            })
                            .collect(),
                    )
            })
            .map(|results| {
                ResponseKind::ReadShareGroupState(
                    ReadShareGroupStateResponse::default().with_results(results),
                )
            })
        }
        RequestKind::WriteShareGroupState(r) => {
            let ids = r
                .topics
                .iter()
                .map(|t| (t.topic_id, t.partitions.iter().map(|p| p.partition)));
            share_state(c, ids, |topic_id, partitions, d| {
                write_share_group_state_response::WriteStateResult::default()
                    .with_topic_id(topic_id)
                    .with_partitions(
                        partitions
                            .map(|partition| {
                                write_share_group_state_response::PartitionResult::default()
                                    .with_partition(partition)
                                    .with_error_code(d.code)
                                    .with_error_message(d.text(true))
                            })
                            .collect(),
                    )
            })
            .map(|results| {
                ResponseKind::WriteShareGroupState(
                    WriteShareGroupStateResponse::default().with_results(results),
                )
            })
        }
        RequestKind::DeleteShareGroupState(r) => {
            let ids = r
                .topics
                .iter()
                .map(|t| (t.topic_id, t.partitions.iter().map(|p| p.partition)));
            share_state(c, ids, |topic_id, partitions, d| {
                delete_share_group_state_response::DeleteStateResult::default()
                    .with_topic_id(topic_id)
                    .with_partitions(
                        partitions
                            .map(|partition| {
                                delete_share_group_state_response::PartitionResult::default()
                                    .with_partition(partition)
                                    .with_error_code(d.code)
                                    .with_error_message(d.text(true))
                            })
                            .collect(),
                    )
            })
            .map(|results| {
                ResponseKind::DeleteShareGroupState(
                    DeleteShareGroupStateResponse::default().with_results(results),
                )
            })
        }
        RequestKind::ReadShareGroupStateSummary(r) => {
            let ids = r
                .topics
                .iter()
                .map(|t| (t.topic_id, t.partitions.iter().map(|p| p.partition)));
            share_state(c, ids, |topic_id, partitions, d| {
                read_share_group_state_summary_response::ReadStateSummaryResult::default()
                    .with_topic_id(topic_id)
                    .with_partitions(
                        partitions
                            .map(|partition| {
                                read_share_group_state_summary_response::PartitionResult::default()
                                    .with_partition(partition)
                                    .with_error_code(d.code)
                                    .with_error_message(d.text(true))
                            })
                            .collect(),
                    )
            })
            .map(|results| {
                ResponseKind::ReadShareGroupStateSummary(
                    ReadShareGroupStateSummaryResponse::default().with_results(results),
                )
            })
        }

        // `RequestKind` is non-exhaustive: a kafka-protocol upgrade can add APIs. Such a request
        // cannot be authorized and the proxy cannot write its response, so it is neither
        // forwarded (that would bypass the policy) nor answered; the client times out. The
        // tests enumerate `ApiKey`, so an upgrade that adds one fails them until it is mapped.
        other => {
            tracing::error!(
                request = ?std::mem::discriminant(other),
                "a request of an API the proxy does not know: not forwarded"
            );
            return Outcome::NoResponse;
        }
    };
    match response {
        Some(response) => Outcome::Respond(response),
        None => Outcome::Forward,
    }
}

fn cluster(c: &mut Checks<'_>, operation: Operation) -> Answer {
    c.check(ResourceType::Cluster, CLUSTER_NAME, operation)
}

fn topic(c: &mut Checks<'_>, name: &TopicName, operation: Operation) -> Answer {
    c.check(ResourceType::Topic, name.as_str(), operation)
}

fn group(c: &mut Checks<'_>, id: &GroupId, operation: Operation) -> Answer {
    c.check(ResourceType::Group, id.as_str(), operation)
}

fn transactional_id(c: &mut Checks<'_>, id: &TransactionalId, operation: Operation) -> Answer {
    c.check(ResourceType::TransactionalId, id.as_str(), operation)
}

/// The error of a container (a whole response, a group in a batched response) whose entries
/// carry their own errors: its own refusal; else 0 when some entry carries an error (as in
/// Kafka), or the request's refusal when none does (so the refusal is never invisible).
fn container_code(c: &Checks<'_>, own: &Answer, entries_carry_errors: bool) -> i16 {
    match own {
        Err(denial) => denial.code,
        Ok(()) if entries_carry_errors => 0,
        Ok(()) => c.entry(own).code,
    }
}

/// The same for a container's error message.
fn container_text(c: &Checks<'_>, own: &Answer, entries_carry_errors: bool) -> Option<StrBytes> {
    match own {
        Err(denial) => denial.text(true),
        Ok(()) if entries_carry_errors => None,
        Ok(()) => c.entry(own).text(true),
    }
}

/// ConsumerGroupHeartbeat and ShareGroupHeartbeat: Read on the group, and Describe on every
/// subscribed topic (Kafka answers TOPIC_AUTHORIZATION_FAILED for a subscription to a topic the
/// member may not describe). A regex subscription is resolved by the broker, under the proxy's
/// own credentials; the topics it matches are still authorized when they are fetched.
fn group_heartbeat(
    c: &mut Checks<'_>,
    group_id: &GroupId,
    subscribed: Option<&[TopicName]>,
) -> Answer {
    let group = group(c, group_id, Read);
    let mut topics = Ok(());
    for name in subscribed.unwrap_or_default() {
        let answer = topic(c, name, Describe);
        topics = topics.and(answer);
    }
    group.and(topics)
}

// ---- topics ----

fn list_offsets(r: &ListOffsetsRequest, c: &mut Checks<'_>) -> Option<ResponseKind> {
    let answers: Vec<Answer> = r
        .topics
        .iter()
        .map(|t| topic(c, &t.name, Describe))
        .collect();
    if !c.refused() {
        return None;
    }
    let topics = r
        .topics
        .iter()
        .zip(&answers)
        .map(|(t, answer)| {
            let d = c.entry(answer);
            list_offsets_response::ListOffsetsTopicResponse::default()
                .with_name(t.name.clone())
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            list_offsets_response::ListOffsetsPartitionResponse::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(d.code)
                        })
                        .collect(),
                )
        })
        .collect();
    Some(ResponseKind::ListOffsets(
        ListOffsetsResponse::default().with_topics(topics),
    ))
}

fn offset_for_leader_epoch(
    r: &OffsetForLeaderEpochRequest,
    c: &mut Checks<'_>,
) -> Option<ResponseKind> {
    let answers: Vec<Answer> = r
        .topics
        .iter()
        .map(|t| topic(c, &t.topic, Describe))
        .collect();
    if !c.refused() {
        return None;
    }
    let topics = r
        .topics
        .iter()
        .zip(&answers)
        .map(|(t, answer)| {
            let d = c.entry(answer);
            offset_for_leader_epoch_response::OffsetForLeaderTopicResult::default()
                .with_topic(t.topic.clone())
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            offset_for_leader_epoch_response::EpochEndOffset::default()
                                .with_partition(p.partition)
                                .with_error_code(d.code)
                                .with_leader_epoch(-1)
                                .with_end_offset(-1)
                        })
                        .collect(),
                )
        })
        .collect();
    Some(ResponseKind::OffsetForLeaderEpoch(
        OffsetForLeaderEpochResponse::default().with_topics(topics),
    ))
}

/// DescribeTopicPartitions with no topics asks for all of them: nothing to check up front
/// (undescribable topics are hidden from responses elsewhere).
fn describe_topic_partitions(
    r: &DescribeTopicPartitionsRequest,
    c: &mut Checks<'_>,
) -> Option<ResponseKind> {
    let answers: Vec<Answer> = r
        .topics
        .iter()
        .map(|t| topic(c, &t.name, Describe))
        .collect();
    if !c.refused() {
        return None;
    }
    let topics = r
        .topics
        .iter()
        .zip(&answers)
        .map(|(t, answer)| {
            describe_topic_partitions_response::DescribeTopicPartitionsResponseTopic::default()
                .with_name(Some(t.name.clone()))
                .with_error_code(c.entry(answer).code)
        })
        .collect();
    Some(ResponseKind::DescribeTopicPartitions(
        DescribeTopicPartitionsResponse::default().with_topics(topics),
    ))
}

fn describe_producers(r: &DescribeProducersRequest, c: &mut Checks<'_>) -> Option<ResponseKind> {
    let answers: Vec<Answer> = r.topics.iter().map(|t| topic(c, &t.name, Read)).collect();
    if !c.refused() {
        return None;
    }
    let topics = r
        .topics
        .iter()
        .zip(&answers)
        .map(|(t, answer)| {
            let d = c.entry(answer);
            describe_producers_response::TopicResponse::default()
                .with_name(t.name.clone())
                .with_partitions(
                    t.partition_indexes
                        .iter()
                        .map(|&p| {
                            describe_producers_response::PartitionResponse::default()
                                .with_partition_index(p)
                                .with_error_code(d.code)
                                .with_error_message(d.text(true))
                        })
                        .collect(),
                )
        })
        .collect();
    Some(ResponseKind::DescribeProducers(
        DescribeProducersResponse::default().with_topics(topics),
    ))
}

/// CreateTopics: Create on the topic, or on the cluster (Kafka accepts either).
fn create_topics(r: &CreateTopicsRequest, c: &mut Checks<'_>) -> Option<ResponseKind> {
    let answers: Vec<Answer> = r
        .topics
        .iter()
        .map(|t| {
            c.ask_either(
                (ResourceType::Topic, t.name.as_str(), Create),
                (ResourceType::Cluster, CLUSTER_NAME, Create),
                true,
            )
        })
        .collect();
    if !c.refused() {
        return None;
    }
    let topics = r
        .topics
        .iter()
        .zip(&answers)
        .map(|(t, answer)| {
            let d = c.entry(answer);
            create_topics_response::CreatableTopicResult::default()
                .with_name(t.name.clone())
                .with_error_code(d.code)
                .with_error_message(d.text(true))
        })
        .collect();
    Some(ResponseKind::CreateTopics(
        CreateTopicsResponse::default().with_topics(topics),
    ))
}

/// DeleteTopics: Delete on the topic, or on the cluster (the controller accepts either). From
/// v6 a topic may be named by id.
fn delete_topics(
    r: &DeleteTopicsRequest,
    v: i16,
    c: &mut Checks<'_>,
    topics: &dyn TopicNames,
) -> Option<ResponseKind> {
    let delete = |c: &mut Checks<'_>, name: &TopicName| {
        c.ask_either(
            (ResourceType::Topic, name.as_str(), Delete),
            (ResourceType::Cluster, CLUSTER_NAME, Delete),
            true,
        )
    };
    if v < 6 {
        let answers: Vec<Answer> = r.topic_names.iter().map(|name| delete(c, name)).collect();
        if !c.refused() {
            return None;
        }
        let responses = r
            .topic_names
            .iter()
            .zip(&answers)
            .map(|(name, answer)| {
                let d = c.entry(answer);
                delete_topics_response::DeletableTopicResult::default()
                    .with_name(Some(name.clone()))
                    .with_error_code(d.code)
                    .with_error_message(d.text(v >= 5))
            })
            .collect();
        return Some(ResponseKind::DeleteTopics(
            DeleteTopicsResponse::default().with_responses(responses),
        ));
    }
    let answers: Vec<(Option<TopicName>, Answer)> = r
        .topics
        .iter()
        .map(|t| {
            let name = match (&t.name, t.topic_id.is_nil()) {
                (Some(name), _) => Ok(name.clone()),
                (None, false) => topic_name(true, &TopicName::default(), &t.topic_id, topics, c),
                (None, true) => Err(c.refuse(Denial::new(
                    ResponseError::InvalidRequest,
                    "neither a topic name nor a topic id was given",
                ))),
            };
            match name {
                Ok(name) => {
                    let answer = delete(c, &name);
                    (Some(name), answer)
                }
                Err(denial) => (None, Err(denial)),
            }
        })
        .collect();
    if !c.refused() {
        return None;
    }
    let responses = r
        .topics
        .iter()
        .zip(&answers)
        .map(|(t, (name, answer))| {
            let d = c.entry(answer);
            delete_topics_response::DeletableTopicResult::default()
                .with_name(name.clone())
                .with_topic_id(t.topic_id)
                .with_error_code(d.code)
                .with_error_message(d.text(true))
        })
        .collect();
    Some(ResponseKind::DeleteTopics(
        DeleteTopicsResponse::default().with_responses(responses),
    ))
}

fn delete_records(r: &DeleteRecordsRequest, c: &mut Checks<'_>) -> Option<ResponseKind> {
    let answers: Vec<Answer> = r.topics.iter().map(|t| topic(c, &t.name, Delete)).collect();
    if !c.refused() {
        return None;
    }
    let topics = r
        .topics
        .iter()
        .zip(&answers)
        .map(|(t, answer)| {
            let d = c.entry(answer);
            delete_records_response::DeleteRecordsTopicResult::default()
                .with_name(t.name.clone())
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            delete_records_response::DeleteRecordsPartitionResult::default()
                                .with_partition_index(p.partition_index)
                                .with_low_watermark(-1)
                                .with_error_code(d.code)
                        })
                        .collect(),
                )
        })
        .collect();
    Some(ResponseKind::DeleteRecords(
        DeleteRecordsResponse::default().with_topics(topics),
    ))
}

fn create_partitions(r: &CreatePartitionsRequest, c: &mut Checks<'_>) -> Option<ResponseKind> {
    let answers: Vec<Answer> = r.topics.iter().map(|t| topic(c, &t.name, Alter)).collect();
    if !c.refused() {
        return None;
    }
    let results = r
        .topics
        .iter()
        .zip(&answers)
        .map(|(t, answer)| {
            let d = c.entry(answer);
            create_partitions_response::CreatePartitionsTopicResult::default()
                .with_name(t.name.clone())
                .with_error_code(d.code)
                .with_error_message(d.text(true))
        })
        .collect();
    Some(ResponseKind::CreatePartitions(
        CreatePartitionsResponse::default().with_results(results),
    ))
}

// ---- groups ----

fn offset_commit(r: &OffsetCommitRequest, c: &mut Checks<'_>) -> Option<ResponseKind> {
    let group = group(c, &r.group_id, Read);
    let answers: Vec<Answer> = r
        .topics
        .iter()
        .map(|t| {
            let own = topic(c, &t.name, Read);
            group.clone().and(own)
        })
        .collect();
    if !c.refused() {
        return None;
    }
    let topics = r
        .topics
        .iter()
        .zip(&answers)
        .map(|(t, answer)| {
            let d = c.entry(answer);
            offset_commit_response::OffsetCommitResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            offset_commit_response::OffsetCommitResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(d.code)
                        })
                        .collect(),
                )
        })
        .collect();
    Some(ResponseKind::OffsetCommit(
        OffsetCommitResponse::default().with_topics(topics),
    ))
}

/// OffsetFetch: Describe on the group, Describe on every named topic. A request for all of a
/// group's topics (`topics` null) can only be checked for the group.
fn offset_fetch(r: &OffsetFetchRequest, v: i16, c: &mut Checks<'_>) -> Option<ResponseKind> {
    if v >= 8 {
        return offset_fetch_groups(r, c);
    }
    let group = group(c, &r.group_id, Describe);
    let answers: Vec<Answer> = r
        .topics
        .iter()
        .flatten()
        .map(|t| {
            let own = topic(c, &t.name, Describe);
            group.clone().and(own)
        })
        .collect();
    if !c.refused() {
        return None;
    }
    let topics: Vec<_> = r
        .topics
        .iter()
        .flatten()
        .zip(&answers)
        .map(|(t, answer)| {
            let d = c.entry(answer);
            offset_fetch_response::OffsetFetchResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(
                    t.partition_indexes
                        .iter()
                        .map(|&p| {
                            offset_fetch_response::OffsetFetchResponsePartition::default()
                                .with_partition_index(p)
                                .with_committed_offset(-1)
                                .with_error_code(d.code)
                        })
                        .collect(),
                )
        })
        .collect();
    let mut response = OffsetFetchResponse::default();
    // v1 has no top-level error: the partitions carry the group's refusal too.
    if v >= 2 {
        let carried = topics.iter().any(|t| !t.partitions.is_empty());
        response.error_code = container_code(c, &group, carried);
    }
    Some(ResponseKind::OffsetFetch(response.with_topics(topics)))
}

fn offset_fetch_groups(r: &OffsetFetchRequest, c: &mut Checks<'_>) -> Option<ResponseKind> {
    let answers: Vec<(Answer, Vec<Answer>)> = r
        .groups
        .iter()
        .map(|g| {
            let group = group(c, &g.group_id, Describe);
            let topics = g
                .topics
                .iter()
                .flatten()
                .map(|t| {
                    let own = topic(c, &t.name, Describe);
                    group.clone().and(own)
                })
                .collect();
            (group, topics)
        })
        .collect();
    if !c.refused() {
        return None;
    }
    let groups = r
        .groups
        .iter()
        .zip(&answers)
        .map(|(g, (group, answers))| {
            let topics: Vec<_> = g
                .topics
                .iter()
                .flatten()
                .zip(answers)
                .map(|(t, answer)| {
                    let d = c.entry(answer);
                    offset_fetch_response::OffsetFetchResponseTopics::default()
                        .with_name(t.name.clone())
                        .with_partitions(
                            t.partition_indexes
                                .iter()
                                .map(|&p| {
                                    offset_fetch_response::OffsetFetchResponsePartitions::default()
                                        .with_partition_index(p)
                                        .with_committed_offset(-1)
                                        .with_error_code(d.code)
                                })
                                .collect(),
                        )
                })
                .collect();
            let carried = topics.iter().any(|t| !t.partitions.is_empty());
            offset_fetch_response::OffsetFetchResponseGroup::default()
                .with_group_id(g.group_id.clone())
                .with_error_code(container_code(c, group, carried))
                .with_topics(topics)
        })
        .collect();
    Some(ResponseKind::OffsetFetch(
        OffsetFetchResponse::default().with_groups(groups),
    ))
}

fn offset_delete(r: &OffsetDeleteRequest, c: &mut Checks<'_>) -> Option<ResponseKind> {
    let group = group(c, &r.group_id, Delete);
    let answers: Vec<Answer> = r
        .topics
        .iter()
        .map(|t| {
            let own = topic(c, &t.name, Read);
            group.clone().and(own)
        })
        .collect();
    if !c.refused() {
        return None;
    }
    let topics: Vec<_> = r
        .topics
        .iter()
        .zip(&answers)
        .map(|(t, answer)| {
            let d = c.entry(answer);
            offset_delete_response::OffsetDeleteResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            offset_delete_response::OffsetDeleteResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(d.code)
                        })
                        .collect(),
                )
        })
        .collect();
    let carried = topics.iter().any(|t| !t.partitions.is_empty());
    Some(ResponseKind::OffsetDelete(
        OffsetDeleteResponse::default()
            .with_error_code(container_code(c, &group, carried))
            .with_topics(topics),
    ))
}

/// FindCoordinator: Describe on the group (key type 0) or the transactional id (1);
/// ClusterAction for share coordinators (2), which only brokers look up.
fn find_coordinator(
    r: &FindCoordinatorRequest,
    v: i16,
    c: &mut Checks<'_>,
) -> Option<ResponseKind> {
    let key_answer = |c: &mut Checks<'_>, key: &StrBytes| match r.key_type {
        0 => c.check(ResourceType::Group, key.as_str(), Describe),
        1 => c.check(ResourceType::TransactionalId, key.as_str(), Describe),
        2 => cluster(c, ClusterAction),
        other => Err(c.refuse(Denial::new(
            ResponseError::InvalidRequest,
            format!("coordinator key type {other} is not one Kafka knows"),
        ))),
    };
    if v < 4 {
        let d = key_answer(c, &r.key).err()?;
        return Some(ResponseKind::FindCoordinator(
            FindCoordinatorResponse::default()
                .with_error_code(d.code)
                .with_error_message(d.text(v >= 1))
                .with_node_id((-1).into())
                .with_port(-1),
        ));
    }
    let answers: Vec<Answer> = r
        .coordinator_keys
        .iter()
        .map(|key| key_answer(c, key))
        .collect();
    if !c.refused() {
        return None;
    }
    let coordinators = r
        .coordinator_keys
        .iter()
        .zip(&answers)
        .map(|(key, answer)| {
            let d = c.entry(answer);
            find_coordinator_response::Coordinator::default()
                .with_key(key.clone())
                .with_node_id((-1).into())
                .with_port(-1)
                .with_error_code(d.code)
                .with_error_message(d.text(true))
        })
        .collect();
    Some(ResponseKind::FindCoordinator(
        FindCoordinatorResponse::default().with_coordinators(coordinators),
    ))
}

fn describe_groups(r: &DescribeGroupsRequest, v: i16, c: &mut Checks<'_>) -> Option<ResponseKind> {
    let answers: Vec<Answer> = r.groups.iter().map(|g| group(c, g, Describe)).collect();
    if !c.refused() {
        return None;
    }
    let groups = r
        .groups
        .iter()
        .zip(&answers)
        .map(|(g, answer)| {
            let d = c.entry(answer);
            describe_groups_response::DescribedGroup::default()
                .with_group_id(g.clone())
                .with_error_code(d.code)
                .with_error_message(d.text(v >= 6))
        })
        .collect();
    Some(ResponseKind::DescribeGroups(
        DescribeGroupsResponse::default().with_groups(groups),
    ))
}

fn delete_groups(r: &DeleteGroupsRequest, c: &mut Checks<'_>) -> Option<ResponseKind> {
    let answers: Vec<Answer> = r.groups_names.iter().map(|g| group(c, g, Delete)).collect();
    if !c.refused() {
        return None;
    }
    let results = r
        .groups_names
        .iter()
        .zip(&answers)
        .map(|(g, answer)| {
            delete_groups_response::DeletableGroupResult::default()
                .with_group_id(g.clone())
                .with_error_code(c.entry(answer).code)
        })
        .collect();
    Some(ResponseKind::DeleteGroups(
        DeleteGroupsResponse::default().with_results(results),
    ))
}

fn consumer_group_describe(
    r: &ConsumerGroupDescribeRequest,
    c: &mut Checks<'_>,
) -> Option<ResponseKind> {
    let answers: Vec<Answer> = r.group_ids.iter().map(|g| group(c, g, Describe)).collect();
    if !c.refused() {
        return None;
    }
    let groups = r
        .group_ids
        .iter()
        .zip(&answers)
        .map(|(g, answer)| {
            let d = c.entry(answer);
            consumer_group_describe_response::DescribedGroup::default()
                .with_group_id(g.clone())
                .with_error_code(d.code)
                .with_error_message(d.text(true))
        })
        .collect();
    Some(ResponseKind::ConsumerGroupDescribe(
        ConsumerGroupDescribeResponse::default().with_groups(groups),
    ))
}

// ---- share groups (KIP-932) ----

fn share_group_describe(r: &ShareGroupDescribeRequest, c: &mut Checks<'_>) -> Option<ResponseKind> {
    let answers: Vec<Answer> = r.group_ids.iter().map(|g| group(c, g, Describe)).collect();
    if !c.refused() {
        return None;
    }
    let groups = r
        .group_ids
        .iter()
        .zip(&answers)
        .map(|(g, answer)| {
            let d = c.entry(answer);
            share_group_describe_response::DescribedGroup::default()
                .with_group_id(g.clone())
                .with_error_code(d.code)
                .with_error_message(d.text(true))
        })
        .collect();
    Some(ResponseKind::ShareGroupDescribe(
        ShareGroupDescribeResponse::default().with_groups(groups),
    ))
}

/// The group of a ShareFetch or ShareAcknowledge (null is invalid), Read on it, and Read on
/// every topic (named by id). Share sessions are incremental like fetch sessions, but a share
/// fetch cannot be made session-less, so a topic is authorized when the request names it.
fn share_topics<'r>(
    c: &mut Checks<'_>,
    group_id: Option<&GroupId>,
    topic_ids: impl Iterator<Item = &'r uuid::Uuid>,
    topics: &dyn TopicNames,
) -> (Answer, Vec<Answer>) {
    let group = match group_id {
        Some(id) => group(c, id, Read),
        None => Err(c.refuse(Denial::new(
            ResponseError::InvalidRequest,
            "the group id is missing",
        ))),
    };
    let answers = topic_ids
        .map(|id| {
            let name = topic_name(true, &TopicName::default(), id, topics, c)?;
            let own = topic(c, &name, Read);
            group.clone().and(own)
        })
        .collect();
    (group, answers)
}

fn share_fetch(
    r: &ShareFetchRequest,
    c: &mut Checks<'_>,
    topics: &dyn TopicNames,
) -> Option<ResponseKind> {
    let (group, answers) = share_topics(
        c,
        r.group_id.as_ref(),
        r.topics.iter().map(|t| &t.topic_id),
        topics,
    );
    if !c.refused() {
        return None;
    }
    let responses: Vec<_> = r
        .topics
        .iter()
        .zip(&answers)
        .map(|(t, answer)| {
            let d = c.entry(answer);
            share_fetch_response::ShareFetchableTopicResponse::default()
                .with_topic_id(t.topic_id)
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            share_fetch_response::PartitionData::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(d.code)
                                .with_error_message(d.text(true))
                        })
                        .collect(),
                )
        })
        .collect();
    let carried = responses.iter().any(|t| !t.partitions.is_empty());
    Some(ResponseKind::ShareFetch(
        ShareFetchResponse::default()
            .with_error_code(container_code(c, &group, carried))
            .with_error_message(container_text(c, &group, carried))
            .with_responses(responses),
    ))
}

fn share_acknowledge(
    r: &ShareAcknowledgeRequest,
    c: &mut Checks<'_>,
    topics: &dyn TopicNames,
) -> Option<ResponseKind> {
    let (group, answers) = share_topics(
        c,
        r.group_id.as_ref(),
        r.topics.iter().map(|t| &t.topic_id),
        topics,
    );
    if !c.refused() {
        return None;
    }
    let responses: Vec<_> = r
        .topics
        .iter()
        .zip(&answers)
        .map(|(t, answer)| {
            let d = c.entry(answer);
            share_acknowledge_response::ShareAcknowledgeTopicResponse::default()
                .with_topic_id(t.topic_id)
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            share_acknowledge_response::PartitionData::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(d.code)
                                .with_error_message(d.text(true))
                        })
                        .collect(),
                )
        })
        .collect();
    let carried = responses.iter().any(|t| !t.partitions.is_empty());
    Some(ResponseKind::ShareAcknowledge(
        ShareAcknowledgeResponse::default()
            .with_error_code(container_code(c, &group, carried))
            .with_error_message(container_text(c, &group, carried))
            .with_responses(responses),
    ))
}

/// DescribeShareGroupOffsets: Describe on every group and on every named topic.
fn describe_share_group_offsets(
    r: &DescribeShareGroupOffsetsRequest,
    c: &mut Checks<'_>,
) -> Option<ResponseKind> {
    use describe_share_group_offsets_response::{
        DescribeShareGroupOffsetsResponseGroup, DescribeShareGroupOffsetsResponsePartition,
        DescribeShareGroupOffsetsResponseTopic,
    };
    let answers: Vec<(Answer, Vec<Answer>)> = r
        .groups
        .iter()
        .map(|g| {
            let group = group(c, &g.group_id, Describe);
            let topics = g
                .topics
                .iter()
                .flatten()
                .map(|t| {
                    let own = topic(c, &t.topic_name, Describe);
                    group.clone().and(own)
                })
                .collect();
            (group, topics)
        })
        .collect();
    if !c.refused() {
        return None;
    }
    let groups = r
        .groups
        .iter()
        .zip(&answers)
        .map(|(g, (group, answers))| {
            let topics: Vec<_> = g
                .topics
                .iter()
                .flatten()
                .zip(answers)
                .map(|(t, answer)| {
                    let d = c.entry(answer);
                    DescribeShareGroupOffsetsResponseTopic::default()
                        .with_topic_name(t.topic_name.clone())
                        .with_partitions(
                            t.partitions
                                .iter()
                                .map(|&p| {
                                    DescribeShareGroupOffsetsResponsePartition::default()
                                        .with_partition_index(p)
                                        .with_start_offset(-1)
                                        .with_leader_epoch(-1)
                                        .with_error_code(d.code)
                                        .with_error_message(d.text(true))
                                })
                                .collect(),
                        )
                })
                .collect();
            let carried = topics.iter().any(|t| !t.partitions.is_empty());
            DescribeShareGroupOffsetsResponseGroup::default()
                .with_group_id(g.group_id.clone())
                .with_error_code(container_code(c, group, carried))
                .with_error_message(container_text(c, group, carried))
                .with_topics(topics)
        })
        .collect();
    Some(ResponseKind::DescribeShareGroupOffsets(
        DescribeShareGroupOffsetsResponse::default().with_groups(groups),
    ))
}

/// AlterShareGroupOffsets: Read on the group and on every topic (as OffsetCommit).
fn alter_share_group_offsets(
    r: &AlterShareGroupOffsetsRequest,
    c: &mut Checks<'_>,
) -> Option<ResponseKind> {
    use alter_share_group_offsets_response::{
        AlterShareGroupOffsetsResponsePartition, AlterShareGroupOffsetsResponseTopic,
    };
    let group = group(c, &r.group_id, Read);
    let answers: Vec<Answer> = r
        .topics
        .iter()
        .map(|t| {
            let own = topic(c, &t.topic_name, Read);
            group.clone().and(own)
        })
        .collect();
    if !c.refused() {
        return None;
    }
    let responses: Vec<_> = r
        .topics
        .iter()
        .zip(&answers)
        .map(|(t, answer)| {
            let d = c.entry(answer);
            AlterShareGroupOffsetsResponseTopic::default()
                .with_topic_name(t.topic_name.clone())
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            AlterShareGroupOffsetsResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(d.code)
                                .with_error_message(d.text(true))
                        })
                        .collect(),
                )
        })
        .collect();
    let carried = responses.iter().any(|t| !t.partitions.is_empty());
    Some(ResponseKind::AlterShareGroupOffsets(
        AlterShareGroupOffsetsResponse::default()
            .with_error_code(container_code(c, &group, carried))
            .with_error_message(container_text(c, &group, carried))
            .with_responses(responses),
    ))
}

/// DeleteShareGroupOffsets: Delete on the group, Read on every topic (as OffsetDelete).
fn delete_share_group_offsets(
    r: &DeleteShareGroupOffsetsRequest,
    c: &mut Checks<'_>,
) -> Option<ResponseKind> {
    let group = group(c, &r.group_id, Delete);
    let answers: Vec<Answer> = r
        .topics
        .iter()
        .map(|t| {
            let own = topic(c, &t.topic_name, Read);
            group.clone().and(own)
        })
        .collect();
    if !c.refused() {
        return None;
    }
    let responses: Vec<_> = r
        .topics
        .iter()
        .zip(&answers)
        .map(|(t, answer)| {
            let d = c.entry(answer);
            delete_share_group_offsets_response::DeleteShareGroupOffsetsResponseTopic::default()
                .with_topic_name(t.topic_name.clone())
                .with_error_code(d.code)
                .with_error_message(d.text(true))
        })
        .collect();
    let carried = !responses.is_empty();
    Some(ResponseKind::DeleteShareGroupOffsets(
        DeleteShareGroupOffsetsResponse::default()
            .with_error_code(container_code(c, &group, carried))
            .with_error_message(container_text(c, &group, carried))
            .with_responses(responses),
    ))
}

/// The share-group state APIs (brokers to the share coordinator): ClusterAction; every
/// partition of the request carries the refusal.
fn share_state<P: Iterator<Item = i32>, T>(
    c: &mut Checks<'_>,
    topics: impl Iterator<Item = (uuid::Uuid, P)>,
    result: impl Fn(uuid::Uuid, P, &Denial) -> T,
) -> Option<Vec<T>> {
    let d = cluster(c, ClusterAction).err()?;
    Some(
        topics
            .map(|(id, partitions)| result(id, partitions, &d))
            .collect(),
    )
}

// ---- transactions ----

/// AddPartitionsToTxn: up to v3 (clients), Write on the transactional id and on every topic;
/// from v4 (brokers verifying transactions, batched), ClusterAction as well. As in Kafka,
/// partitions that were allowed in a refused request get OPERATION_NOT_ATTEMPTED.
fn add_partitions_to_txn(
    r: &AddPartitionsToTxnRequest,
    v: i16,
    c: &mut Checks<'_>,
) -> Option<ResponseKind> {
    use add_partitions_to_txn_response::{
        AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
    };
    let not_attempted = Some(ResponseError::OperationNotAttempted);
    let topic_results = |c: &Checks<'_>,
                         topics: &[add_partitions_to_txn_request::AddPartitionsToTxnTopic],
                         answers: &[Answer]| {
        topics
            .iter()
            .zip(answers)
            .map(|(t, answer)| {
                let d = c.entry_or(answer, not_attempted);
                AddPartitionsToTxnTopicResult::default()
                    .with_name(t.name.clone())
                    .with_results_by_partition(
                        t.partitions
                            .iter()
                            .map(|&p| {
                                AddPartitionsToTxnPartitionResult::default()
                                    .with_partition_index(p)
                                    .with_partition_error_code(d.code)
                            })
                            .collect(),
                    )
            })
            .collect::<Vec<_>>()
    };
    if v < 4 {
        let id = transactional_id(c, &r.v3_and_below_transactional_id, Write);
        let answers: Vec<Answer> = r
            .v3_and_below_topics
            .iter()
            .map(|t| {
                let own = topic(c, &t.name, Write);
                id.clone().and(own)
            })
            .collect();
        if !c.refused() {
            return None;
        }
        let results = topic_results(c, &r.v3_and_below_topics, &answers);
        return Some(ResponseKind::AddPartitionsToTxn(
            AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results),
        ));
    }
    let broker = cluster(c, ClusterAction);
    let answers: Vec<Vec<Answer>> = r
        .transactions
        .iter()
        .map(|txn| {
            let id = transactional_id(c, &txn.transactional_id, Write);
            let request_level = broker.clone().and(id);
            txn.topics
                .iter()
                .map(|t| {
                    let own = topic(c, &t.name, Write);
                    request_level.clone().and(own)
                })
                .collect()
        })
        .collect();
    if !c.refused() {
        return None;
    }
    let results: Vec<_> = r
        .transactions
        .iter()
        .zip(&answers)
        .map(|(txn, answers)| {
            AddPartitionsToTxnResult::default()
                .with_transactional_id(txn.transactional_id.clone())
                .with_topic_results(topic_results(c, &txn.topics, answers))
        })
        .collect();
    let carried = results.iter().any(|txn| {
        txn.topic_results
            .iter()
            .any(|t| !t.results_by_partition.is_empty())
    });
    Some(ResponseKind::AddPartitionsToTxn(
        AddPartitionsToTxnResponse::default()
            .with_error_code(container_code(c, &broker, carried))
            .with_results_by_transaction(results),
    ))
}

fn txn_offset_commit(r: &TxnOffsetCommitRequest, c: &mut Checks<'_>) -> Option<ResponseKind> {
    let id = transactional_id(c, &r.transactional_id, Write);
    let group = group(c, &r.group_id, Read);
    let request_level = id.and(group);
    let answers: Vec<Answer> = r
        .topics
        .iter()
        .map(|t| {
            let own = topic(c, &t.name, Read);
            request_level.clone().and(own)
        })
        .collect();
    if !c.refused() {
        return None;
    }
    let topics = r
        .topics
        .iter()
        .zip(&answers)
        .map(|(t, answer)| {
            let d = c.entry(answer);
            txn_offset_commit_response::TxnOffsetCommitResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            txn_offset_commit_response::TxnOffsetCommitResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(d.code)
                        })
                        .collect(),
                )
        })
        .collect();
    Some(ResponseKind::TxnOffsetCommit(
        TxnOffsetCommitResponse::default().with_topics(topics),
    ))
}

fn describe_transactions(
    r: &DescribeTransactionsRequest,
    c: &mut Checks<'_>,
) -> Option<ResponseKind> {
    let answers: Vec<Answer> = r
        .transactional_ids
        .iter()
        .map(|id| transactional_id(c, id, Describe))
        .collect();
    if !c.refused() {
        return None;
    }
    let states = r
        .transactional_ids
        .iter()
        .zip(&answers)
        .map(|(id, answer)| {
            describe_transactions_response::TransactionState::default()
                .with_transactional_id(id.clone())
                .with_error_code(c.entry(answer).code)
        })
        .collect();
    Some(ResponseKind::DescribeTransactions(
        DescribeTransactionsResponse::default().with_transaction_states(states),
    ))
}

fn write_txn_markers(r: &WriteTxnMarkersRequest, c: &mut Checks<'_>) -> Option<ResponseKind> {
    use write_txn_markers_response::{
        WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
    };
    let d = cluster(c, ClusterAction).err()?;
    let markers = r
        .markers
        .iter()
        .map(|marker| {
            WritableTxnMarkerResult::default()
                .with_producer_id(marker.producer_id)
                .with_topics(
                    marker
                        .topics
                        .iter()
                        .map(|t| {
                            WritableTxnMarkerTopicResult::default()
                                .with_name(t.name.clone())
                                .with_partitions(
                                    t.partition_indexes
                                        .iter()
                                        .map(|&p| {
                                            WritableTxnMarkerPartitionResult::default()
                                                .with_partition_index(p)
                                                .with_error_code(d.code)
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                )
        })
        .collect();
    Some(ResponseKind::WriteTxnMarkers(
        WriteTxnMarkersResponse::default().with_markers(markers),
    ))
}

// ---- configs ----

/// The access a config resource needs (`operation` is DescribeConfigs or AlterConfigs), by
/// Kafka's `ConfigResource.Type`: topics (2) on the topic, groups (32) on the group, brokers
/// (4), broker loggers (8) and client metrics (16) on the cluster.
fn config_resource(
    c: &mut Checks<'_>,
    resource_type: i8,
    name: &StrBytes,
    operation: Operation,
) -> Answer {
    match resource_type {
        2 => c.check(ResourceType::Topic, name.as_str(), operation),
        32 => c.check(ResourceType::Group, name.as_str(), operation),
        4 | 8 | 16 => cluster(c, operation),
        other => Err(c.refuse(Denial::new(
            ResponseError::InvalidRequest,
            format!("config resource type {other} is not one Kafka knows"),
        ))),
    }
}

fn describe_configs(r: &DescribeConfigsRequest, c: &mut Checks<'_>) -> Option<ResponseKind> {
    let answers: Vec<Answer> = r
        .resources
        .iter()
        .map(|res| config_resource(c, res.resource_type, &res.resource_name, DescribeConfigs))
        .collect();
    if !c.refused() {
        return None;
    }
    let results = r
        .resources
        .iter()
        .zip(&answers)
        .map(|(res, answer)| {
            let d = c.entry(answer);
            describe_configs_response::DescribeConfigsResult::default()
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name.clone())
                .with_error_code(d.code)
                .with_error_message(d.text(true))
        })
        .collect();
    Some(ResponseKind::DescribeConfigs(
        DescribeConfigsResponse::default().with_results(results),
    ))
}

fn alter_configs(r: &AlterConfigsRequest, c: &mut Checks<'_>) -> Option<ResponseKind> {
    let answers: Vec<Answer> = r
        .resources
        .iter()
        .map(|res| config_resource(c, res.resource_type, &res.resource_name, AlterConfigs))
        .collect();
    if !c.refused() {
        return None;
    }
    let responses = r
        .resources
        .iter()
        .zip(&answers)
        .map(|(res, answer)| {
            let d = c.entry(answer);
            alter_configs_response::AlterConfigsResourceResponse::default()
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name.clone())
                .with_error_code(d.code)
                .with_error_message(d.text(true))
        })
        .collect();
    Some(ResponseKind::AlterConfigs(
        AlterConfigsResponse::default().with_responses(responses),
    ))
}

fn incremental_alter_configs(
    r: &IncrementalAlterConfigsRequest,
    c: &mut Checks<'_>,
) -> Option<ResponseKind> {
    let answers: Vec<Answer> = r
        .resources
        .iter()
        .map(|res| config_resource(c, res.resource_type, &res.resource_name, AlterConfigs))
        .collect();
    if !c.refused() {
        return None;
    }
    let responses = r
        .resources
        .iter()
        .zip(&answers)
        .map(|(res, answer)| {
            let d = c.entry(answer);
            incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name.clone())
                .with_error_code(d.code)
                .with_error_message(d.text(true))
        })
        .collect();
    Some(ResponseKind::IncrementalAlterConfigs(
        IncrementalAlterConfigsResponse::default().with_responses(responses),
    ))
}

fn alter_client_quotas(r: &AlterClientQuotasRequest, c: &mut Checks<'_>) -> Option<ResponseKind> {
    let d = cluster(c, AlterConfigs).err()?;
    let entries = r
        .entries
        .iter()
        .map(|entry| {
            alter_client_quotas_response::EntryData::default()
                .with_error_code(d.code)
                .with_error_message(d.text(true))
                .with_entity(
                    entry
                        .entity
                        .iter()
                        .map(|e| {
                            alter_client_quotas_response::EntityData::default()
                                .with_entity_type(e.entity_type.clone())
                                .with_entity_name(e.entity_name.clone())
                        })
                        .collect(),
                )
        })
        .collect();
    Some(ResponseKind::AlterClientQuotas(
        AlterClientQuotasResponse::default().with_entries(entries),
    ))
}

// ---- cluster administration ----

fn elect_leaders(r: &ElectLeadersRequest, v: i16, c: &mut Checks<'_>) -> Option<ResponseKind> {
    let d = cluster(c, Alter).err()?;
    let results = r
        .topic_partitions
        .iter()
        .flatten()
        .map(|t| {
            elect_leaders_response::ReplicaElectionResult::default()
                .with_topic(t.topic.clone())
                .with_partition_result(
                    t.partitions
                        .iter()
                        .map(|&p| {
                            elect_leaders_response::PartitionResult::default()
                                .with_partition_id(p)
                                .with_error_code(d.code)
                                .with_error_message(d.text(true))
                        })
                        .collect(),
                )
        })
        .collect();
    Some(ResponseKind::ElectLeaders(
        ElectLeadersResponse::default()
            .with_error_code(if v >= 1 { d.code } else { 0 })
            .with_replica_election_results(results),
    ))
}

fn alter_partition_reassignments(
    r: &AlterPartitionReassignmentsRequest,
    c: &mut Checks<'_>,
) -> Option<ResponseKind> {
    use alter_partition_reassignments_response::{
        ReassignablePartitionResponse, ReassignableTopicResponse,
    };
    let d = cluster(c, Alter).err()?;
    let responses = r
        .topics
        .iter()
        .map(|t| {
            ReassignableTopicResponse::default()
                .with_name(t.name.clone())
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            ReassignablePartitionResponse::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(d.code)
                                .with_error_message(d.text(true))
                        })
                        .collect(),
                )
        })
        .collect();
    Some(ResponseKind::AlterPartitionReassignments(
        AlterPartitionReassignmentsResponse::default()
            .with_error_code(d.code)
            .with_error_message(d.text(true))
            .with_responses(responses),
    ))
}

fn alter_replica_log_dirs(
    r: &AlterReplicaLogDirsRequest,
    c: &mut Checks<'_>,
) -> Option<ResponseKind> {
    use alter_replica_log_dirs_response::{
        AlterReplicaLogDirPartitionResult, AlterReplicaLogDirTopicResult,
    };
    let d = cluster(c, Alter).err()?;
    let results = r
        .dirs
        .iter()
        .flat_map(|dir| &dir.topics)
        .map(|t| {
            AlterReplicaLogDirTopicResult::default()
                .with_topic_name(t.name.clone())
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|&p| {
                            AlterReplicaLogDirPartitionResult::default()
                                .with_partition_index(p)
                                .with_error_code(d.code)
                        })
                        .collect(),
                )
        })
        .collect();
    Some(ResponseKind::AlterReplicaLogDirs(
        AlterReplicaLogDirsResponse::default().with_results(results),
    ))
}

fn alter_user_scram_credentials(
    r: &AlterUserScramCredentialsRequest,
    c: &mut Checks<'_>,
) -> Option<ResponseKind> {
    let d = cluster(c, Alter).err()?;
    // One result per user, as Kafka answers.
    let mut seen = std::collections::HashSet::new();
    let results = r
        .deletions
        .iter()
        .map(|x| &x.name)
        .chain(r.upsertions.iter().map(|x| &x.name))
        .filter(|name| seen.insert(*name))
        .map(|user| {
            alter_user_scram_credentials_response::AlterUserScramCredentialsResult::default()
                .with_user(user.clone())
                .with_error_code(d.code)
                .with_error_message(d.text(true))
        })
        .collect();
    Some(ResponseKind::AlterUserScramCredentials(
        AlterUserScramCredentialsResponse::default().with_results(results),
    ))
}

//! `policy test` and `policy diff`: offline checks of a folder of custom resources, compiled
//! with the operator's own function and decided with the proxy's own decision.

pub mod cases;
pub mod diff;
pub mod folder;

use std::fmt;

use streamward_api::acl::{Operation, ResourceType};
use streamward_api::config::Effect;
use streamward_api::decide::Decision;

/// The input could not be read or makes no sense (exit code 2): a missing folder, YAML that
/// does not parse, resources that do not compile, a case that names nothing to decide.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

/// The Kafka APIs a case may name instead of an operation, with the operation and resource
/// type the proxy checks for them (the request's main resource; see sidecar/src/authorize).
pub const APIS: &[(&str, Operation, ResourceType)] = {
    use Operation::*;
    use ResourceType::*;
    &[
        ("Produce", Write, Topic),
        ("Fetch", Read, Topic),
        ("ListOffsets", Describe, Topic),
        ("Metadata", Describe, Topic),
        ("OffsetCommit", Read, Group),
        ("OffsetFetch", Describe, Group),
        ("FindCoordinator", Describe, Group),
        ("JoinGroup", Read, Group),
        ("SyncGroup", Read, Group),
        ("Heartbeat", Read, Group),
        ("LeaveGroup", Read, Group),
        ("DescribeGroups", Describe, Group),
        ("DeleteGroups", Delete, Group),
        ("CreateTopics", Create, Topic),
        ("DeleteTopics", Delete, Topic),
        ("DeleteRecords", Delete, Topic),
        ("CreatePartitions", Alter, Topic),
        ("DescribeConfigs", DescribeConfigs, Topic),
        ("AlterConfigs", AlterConfigs, Topic),
        ("IncrementalAlterConfigs", AlterConfigs, Topic),
        ("InitProducerId", Write, TransactionalId),
        ("EndTxn", Write, TransactionalId),
        ("CreateAcls", Alter, Cluster),
        ("DeleteAcls", Alter, Cluster),
        ("DescribeAcls", Describe, Cluster),
    ]
};

/// One access to decide: an operation on a named resource.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Access {
    /// The resource's type.
    pub resource_type: ResourceType,
    /// The resource's name.
    pub name: String,
    /// The operation.
    pub operation: Operation,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.operation, self.resource_type, self.name)
    }
}

/// A decision as the reports show it: `Deny (StreamPolicy/orders-team rule no-destructive-admin)`,
/// with `, dry run: would Deny` when a DryRun policy would have refused.
pub fn describe(decision: &Decision<'_>) -> String {
    let mut text = format!("{} ({})", effect_name(decision.effect), decision.basis);
    if decision.dry_run {
        text.push_str(&format!(", dry run: would {}", effect_name(decision.would)));
    }
    text
}

/// `Allow`, `RequireApproval` or `Deny`, as the custom resources spell them.
pub fn effect_name(effect: Effect) -> &'static str {
    match effect {
        Effect::Allow => "Allow",
        Effect::RequireApproval => "RequireApproval",
        Effect::Deny => "Deny",
    }
}

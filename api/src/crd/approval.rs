//! `ApprovalRequest` and `Approval`: a human in the loop for risky operations and for grants
//! that require approval.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::acl::{Operation, ResourceType};

/// A request that hit a `RequireApproval` rule, created by the proxy that holds it: who asked,
/// which operation on what, a digest of the exact request, until when it may be approved and
/// how many approvers must say yes. The proxy forwards the request (or its identical retry)
/// once the request is `Approved`.
// Each `printcolumn(...)` repeats keys such as `type_`, which this lint mistakes for
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "streamward.io",
    version = "v1alpha1",
    kind = "ApprovalRequest",
    namespaced,
    status = "ApprovalRequestStatus",
    derive = "PartialEq",
    shortname = "areq",
    category = "streamward",
    doc = "A Kafka request held by the Streamward proxy until enough approvers approve it.",
    printcolumn(
        name = "Requester",
        type_ = "string",
        json_path = ".spec.requester.serviceAccount",
        description = "The workload's service account"
    ),
    printcolumn(name = "Operation", type_ = "string", json_path = ".spec.operation"),
    printcolumn(
        name = "Resource",
        type_ = "string",
        json_path = ".spec.resources[0].name",
        description = "The first resource the request touches"
    ),
    printcolumn(
        name = "Approved",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Approved\")].status"
    ),
    printcolumn(name = "Expiry", type_ = "date", json_path = ".spec.expiryTime"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self == oldSelf",
    "message": "an ApprovalRequest cannot be changed; the request it describes is fixed"
}]))]
pub struct ApprovalRequestSpec {
    /// Who asked.
    pub requester: RequesterSpec,
    /// The Kafka API the request used, as Kafka names it (`DeleteTopics`, `Produce`).
    #[schemars(length(min = 1, max = 64))]
    pub api_key: String,
    /// The operation the rule covers.
    pub operation: Operation,
    /// The resources the request touches.
    #[schemars(length(min = 1, max = 256))]
    pub resources: Vec<RequestedResource>,
    /// The StreamPolicy whose rule asked for approval.
    #[schemars(length(min = 1))]
    pub policy: String,
    /// The rule that asked for approval.
    #[schemars(length(min = 1))]
    pub rule: String,
    /// SHA-256 (hex) of the request body, so that only the identical request is released.
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub request_digest: String,
    /// Until when the request may be approved (RFC 3339); `Expired` afterwards.
    #[schemars(schema_with = "super::rfc3339")]
    pub expiry_time: Timestamp,
    /// How many distinct approvers must approve (default 1).
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 10))]
    pub required_approvals: i32,
}

fn one() -> i32 {
    1
}

/// The workload (and, when the client authenticated to the proxy, the person or job) behind a
/// request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequesterSpec {
    /// The workload's service account (in the request's namespace).
    #[schemars(length(min = 1))]
    pub service_account: String,
    /// The user the client authenticated to the proxy as, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// That user's groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

/// A Kafka resource a held request touches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestedResource {
    /// Topic, Group, TransactionalId or Cluster.
    pub resource_type: ResourceType,
    /// Its name.
    #[schemars(length(min = 1, max = 249))]
    pub name: String,
}

/// What the operator last observed about an ApprovalRequest.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalRequestStatus {
    /// `Approved`, `Denied` and `Expired`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::conditions")]
    pub conditions: Vec<Condition>,
    /// The decisions made so far, in the order they were made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decisions: Vec<RecordedDecision>,
}

/// One approver's decision, as recorded on the request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordedDecision {
    /// The Approval object.
    pub approval: String,
    /// Who decided (the Kubernetes user the API server authenticated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approver: Option<String>,
    /// `Approve` or `Deny`.
    pub decision: Decision,
    /// What they wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// A person's decision on an ApprovalRequest or an AccessGrant. The admission webhook stamps
/// `approver` from the API server's own record of who created the object and refuses
/// self-approval; RBAC decides who may create Approvals. An Approval cannot be changed.
// Each `printcolumn(...)` repeats keys such as `type_`, which this lint mistakes for
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "streamward.io",
    version = "v1alpha1",
    kind = "Approval",
    namespaced,
    derive = "PartialEq",
    shortname = "apv",
    category = "streamward",
    doc = "A person's decision on a Streamward ApprovalRequest or AccessGrant.",
    printcolumn(name = "Kind", type_ = "string", json_path = ".spec.requestRef.kind"),
    printcolumn(
        name = "Request",
        type_ = "string",
        json_path = ".spec.requestRef.name"
    ),
    printcolumn(name = "Decision", type_ = "string", json_path = ".spec.decision"),
    printcolumn(name = "Approver", type_ = "string", json_path = ".spec.approver.user"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self == oldSelf",
    "message": "an Approval cannot be changed; delete it and create a new one"
}]))]
pub struct ApprovalSpec {
    /// What is decided on (same namespace).
    pub request_ref: RequestRef,
    /// `Approve` or `Deny`.
    pub decision: Decision,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub comment: Option<String>,
    /// Who decided: stamped by the operator's admission webhook from the API server's own
    /// record of who created the Approval (a value the client wrote is overwritten). An
    /// Approval without it (made while the webhook was not installed) counts for nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approver: Option<Approver>,
}

/// A Kubernetes user, as the API server authenticated them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Approver {
    /// The user name (`alice@example.com`, `system:serviceaccount:ns:name`).
    #[schemars(length(min = 1))]
    pub user: String,
    /// The user's groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

/// A reference to the object an Approval decides on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestRef {
    /// `ApprovalRequest` or `AccessGrant`.
    pub kind: ApprovalTarget,
    /// Its name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Its `metadata.uid`, stamped by the admission webhook: the Approval counts for this
    /// object only, not for another created later under the same name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// For an AccessGrant, its `metadata.generation` when approved, stamped by the admission
    /// webhook: a change to the grant's spec drops it back to unapproved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
}

/// The kinds an Approval may decide on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ApprovalTarget {
    /// A held Kafka request.
    ApprovalRequest,
    /// A grant with `requireApproval`.
    AccessGrant,
}

/// An approver's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Decision {
    /// Yes.
    Approve,
    /// No; one `Deny` denies the request.
    Deny,
}

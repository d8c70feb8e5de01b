//! `AccessGrant`: just-in-time access for a subject, for a bounded time.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::SubjectsSpec;
use crate::acl::{Operation, ResourcePattern};

/// Just-in-time access: some operations on some resources for some subjects, from a start to
/// an expiry, for a stated reason; optionally only once an approver approved it. A grant allows
/// what no policy allows, but never what a policy denies.
// Each `printcolumn(...)` repeats keys such as `type_`, which this lint mistakes for
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "streamward.io",
    version = "v1alpha1",
    kind = "AccessGrant",
    namespaced,
    status = "AccessGrantStatus",
    derive = "PartialEq",
    shortname = "ag",
    category = "streamward",
    doc = "Just-in-time access to Kafka resources through the Streamward proxy.",
    printcolumn(
        name = "Active",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Active\")].status",
        description = "Whether the grant counts now"
    ),
    printcolumn(
        name = "Approved",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Approved\")].status",
        description = "Whether an approver approved it"
    ),
    printcolumn(
        name = "Expired",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Expired\")].status",
        description = "Whether the grant's window has passed"
    ),
    printcolumn(
        name = "Expiry",
        type_ = "date",
        json_path = ".spec.expiryTime",
        description = "When the grant ends"
    ),
    printcolumn(
        name = "Duration",
        type_ = "integer",
        json_path = ".spec.durationSeconds",
        description = "Seconds from start the grant lasts"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        priority = 1,
        json_path = ".spec.reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.expiryTime) != has(self.durationSeconds)",
    "message": "set exactly one of expiryTime or durationSeconds"
}, {
    "rule": "!has(self.startTime) || !has(self.expiryTime) || self.expiryTime > self.startTime",
    "message": "expiryTime must be after startTime"
}, {
    "rule": "!has(oldSelf.revoked) || !oldSelf.revoked || (has(self.revoked) && self.revoked)",
    "message": "a revoked grant stays revoked; create a new grant instead"
}]))]
pub struct AccessGrantSpec {
    /// Who the grant is for.
    pub subjects: SubjectsSpec,
    /// The resources it opens.
    #[schemars(length(min = 1))]
    pub resources: Vec<ResourcePattern>,
    /// The operations it allows on them.
    #[schemars(length(min = 1))]
    pub operations: Vec<Operation>,
    /// From when the grant counts (RFC 3339); the object's creation time when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::rfc3339")]
    pub start_time: Option<Timestamp>,
    /// Until when the grant counts (RFC 3339, exclusive). Exactly one of `expiryTime` and
    /// `durationSeconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::rfc3339")]
    pub expiry_time: Option<Timestamp>,
    /// How long the grant counts from its start, in seconds. Exactly one of `expiryTime` and
    /// `durationSeconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub duration_seconds: Option<i64>,
    /// Why the access is needed; audit events and approvers see it.
    #[schemars(length(min = 1))]
    pub reason: String,
    /// The ticket or incident this access is for, in whatever tracker the team uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket_ref: Option<String>,
    /// The grant counts only after an approver approved it (condition `Approved=True`). A
    /// requester may ask for approval; whether a grant must have it is the namespace's
    /// StreamPolicies' `approval.grantsRequireApproval`, not this field.
    #[serde(default)]
    pub require_approval: bool,
    /// Set to `true` to end the grant now (`kubectl patch ag NAME --type=merge -p
    /// '{"spec":{"revoked":true}}'`); a revoked grant never counts again.
    /// (The rule that it stays revoked is on the spec: a field-level rule is skipped when the
    /// update removes the field.)
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revoked: bool,
}

/// What the operator last observed about an AccessGrant.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessGrantStatus {
    /// `Approved`, `Active`, `Expired` and `Revoked`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::conditions")]
    pub conditions: Vec<Condition>,
    /// When the grant became active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::rfc3339")]
    pub activated_at: Option<Timestamp>,
    /// When the grant expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::rfc3339")]
    pub expired_at: Option<Timestamp>,
}

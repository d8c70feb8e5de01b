//! `StreamPolicy`: who may do what on which Kafka resources.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::SubjectsSpec;
use crate::acl::{Operation, ResourcePattern};
use crate::config::{AuditLevel, Effect, Guardrails, Mode};

/// Ordered rules for a set of subjects. The first rule that matches a request decides for the
/// policy; across policies a deny wins; what no rule allows is denied.
// Each `printcolumn(...)` repeats keys such as `type_`, which this lint mistakes for
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "streamward.io",
    version = "v1alpha1",
    kind = "StreamPolicy",
    namespaced,
    status = "StreamPolicyStatus",
    derive = "PartialEq",
    shortname = "sp",
    category = "streamward",
    doc = "Who may do what on which Kafka resources, enforced by the Streamward proxy.",
    printcolumn(
        name = "Target",
        type_ = "string",
        json_path = ".spec.targetRef",
        description = "The StreamTarget the policy is limited to"
    ),
    printcolumn(
        name = "Mode",
        type_ = "string",
        json_path = ".spec.mode",
        description = "Enforce or DryRun"
    ),
    printcolumn(
        name = "Workloads",
        type_ = "integer",
        json_path = ".status.workloads",
        description = "Workload identities the policy applies to"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct StreamPolicySpec {
    /// The StreamTarget (by name, same namespace) this policy is limited to; every target when
    /// unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub target_ref: Option<String>,
    /// Who the policy applies to.
    pub subjects: SubjectsSpec,
    /// Ordered rules: the first that matches a request decides for this policy.
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
    /// Limits on what allowed requests may ask for.
    #[serde(default, skip_serializing_if = "is_default")]
    pub guardrails: Guardrails,
    /// How much of each request its audit event carries.
    #[serde(default)]
    pub audit_level: AuditLevel,
    /// `Enforce`, or `DryRun` to decide and audit what would be refused while forwarding it.
    #[serde(default)]
    pub mode: Mode,
    /// Who approves what this policy's `RequireApproval` rules hold, and whether the
    /// AccessGrants of this namespace need approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalPolicySpec>,
}

/// Approval settings of a StreamPolicy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalPolicySpec {
    /// Who may approve: Kubernetes users and groups (RBAC on `approvals` must allow them too).
    /// Empty: whoever RBAC allows.
    #[serde(default, skip_serializing_if = "ApproversSpec::is_empty")]
    pub approvers: ApproversSpec,
    /// How many distinct approvers must approve (default 1).
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 10))]
    pub required_approvals: i32,
    /// Every AccessGrant of this namespace needs approval before it counts, whatever the
    /// grant says. The requester does not choose.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub grants_require_approval: bool,
    /// How long a request held by a `RequireApproval` rule may be approved, from when it was
    /// first held (default one hour); its ApprovalRequest is `Expired` afterwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 604800))]
    pub expire_after_seconds: Option<u32>,
    /// After an approval, how long the identical request is released each time it is sent.
    /// Unset: once — the approval releases one request (the held one, or its first identical
    /// retry) and no other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub release_window_seconds: Option<u32>,
}

fn one() -> i32 {
    1
}

/// Kubernetes users and groups.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApproversSpec {
    /// User names, as the API server authenticates them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1)))]
    pub users: Vec<String>,
    /// Group names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1)))]
    pub groups: Vec<String>,
}

impl ApproversSpec {
    /// Whether no approver is named (then RBAC alone decides).
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.groups.is_empty()
    }
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// One rule: resource patterns × operations → effect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.holdSeconds) || self.effect == 'RequireApproval'",
    "message": "holdSeconds applies only to a RequireApproval rule"
}]))]
pub struct RuleSpec {
    /// A name that audit events and error messages cite; `rule-<index>` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub name: Option<String>,
    /// The resources the rule covers.
    #[schemars(length(min = 1))]
    pub resources: Vec<ResourcePattern>,
    /// The operations the rule covers (`Read` and `Write` imply `Describe`, `All` covers all).
    #[schemars(length(min = 1))]
    pub operations: Vec<Operation>,
    /// `Allow`, `Deny` or `RequireApproval`.
    pub effect: Effect,
    /// With `RequireApproval`: how long the proxy holds a request waiting for the approval
    /// before it answers with an error naming its ApprovalRequest (default 20 s, below the
    /// 30 s request timeout of Kafka's Java and librdkafka clients). A longer hold needs the
    /// clients' `request.timeout.ms` raised to match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 600))]
    pub hold_seconds: Option<u32>,
}

/// What the operator last observed about a StreamPolicy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamPolicyStatus {
    /// `Accepted` (the policy compiled) and `Ready` (it is in the configs of its workloads).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::conditions")]
    pub conditions: Vec<Condition>,
    /// How many workload identities the policy applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workloads: Option<i32>,
}

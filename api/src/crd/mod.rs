//! The custom resources teams write: [`StreamTarget`], [`StreamPolicy`], [`AccessGrant`] and
//! [`MaskingRule`]; and the approval flow's [`ApprovalRequest`] (made by the proxy) and
//! [`Approval`] (a person's decision)
//! (group `streamward.io`, version `v1alpha1`, namespaced, category `streamward`).
//!
//! The specs are what `kubectl apply` accepts; [`crate::compile::compile`] turns them into the
//! [`crate::config::ProxyConfig`] the proxy trusts. The schema refuses what it can (required
//! fields, enums, minimum sizes, CEL rules); the compiler refuses the rest with an error that
//! names the object and the field.

mod approval;
mod grant;
mod masking;
mod policy;
mod target;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

pub use approval::{
    Approval, ApprovalRequest, ApprovalRequestSpec, ApprovalRequestStatus, ApprovalSpec,
    ApprovalTarget, Approver, Decision, RecordedDecision, RequestRef, RequestedResource,
    RequesterSpec,
};
pub use grant::{AccessGrant, AccessGrantSpec, AccessGrantStatus};
pub use masking::{
    DetectorSpec, FieldSpec, HeaderSpec, MaskingRule, MaskingRuleSpec, MaskingRuleStatus,
    StrategySpec, StrategyType, TopicPatternSpec,
};
pub use policy::{
    ApprovalPolicySpec, ApproversSpec, RuleSpec, StreamPolicy, StreamPolicySpec, StreamPolicyStatus,
};
pub use target::{StreamTarget, StreamTargetSpec, StreamTargetStatus};

/// The version of every Streamward custom resource.
pub const VERSION: &str = "v1alpha1";

/// The `apiVersion` of every Streamward custom resource.
pub const API_VERSION: &str = "streamward.io/v1alpha1";

/// The annotation the admission webhook stamps on an AccessGrant at creation: the Kubernetes
/// user who asked for it, who may not approve it. It cannot be changed afterwards.
pub const REQUESTED_BY_ANNOTATION: &str = "streamward.io/requested-by";

/// The annotation a proxy sets on an ApprovalRequest whose approval released its one request
/// (`once`); the admission webhook refuses removing or changing it.
pub const RELEASED_ANNOTATION: &str = "streamward.io/released";

/// The label carrying the first 32 hex digits of an ApprovalRequest's `requestDigest`, so a
/// proxy finds the identical request's ApprovalRequest without listing them all.
pub const REQUEST_DIGEST_LABEL: &str = "streamward.io/request-digest";

/// The condition types Streamward writes into `status.conditions` (PascalCase, as Kubernetes
/// names them).
pub mod condition {
    /// The object has been accepted and is in effect (StreamTarget, StreamPolicy,
    /// MaskingRule).
    pub const READY: &str = "Ready";
    /// The policy or rule was valid and compiled (StreamPolicy, MaskingRule).
    pub const ACCEPTED: &str = "Accepted";
    /// An approver approved the grant (AccessGrant) or enough approvers approved the request
    /// (ApprovalRequest).
    pub const APPROVED: &str = "Approved";
    /// The grant is inside its validity window and in the proxies' config (AccessGrant).
    pub const ACTIVE: &str = "Active";
    /// The grant's window has passed (AccessGrant).
    pub const EXPIRED: &str = "Expired";
    /// Someone revoked the grant; it never counts again (AccessGrant).
    pub const REVOKED: &str = "Revoked";
    /// An approver denied the request or the grant (ApprovalRequest).
    pub const DENIED: &str = "Denied";
}

/// Whether `conditions` holds a condition of type `type_` with status `"True"`.
pub fn condition_is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

/// Who a StreamPolicy or an AccessGrant is about (or whom a MaskingRule exempts), as written in
/// the resource; the compiler turns this into [`crate::config::Subjects`].
///
/// A principal matches when it is one of the listed service accounts, users or groups, and,
/// when `podSelector` is set, its pod also carries the selector's labels. Pod labels are
/// chosen by whoever writes the pod, so they only narrow a subject bound to an identity the
/// pod's author cannot choose; a `podSelector` alone is refused.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "(has(self.serviceAccounts) && size(self.serviceAccounts) > 0) || has(self.podSelector) || (has(self.users) && size(self.users) > 0) || (has(self.groups) && size(self.groups) > 0)",
        "message": "name at least one subject: serviceAccounts, users or groups"
    },
    {
        "rule": "!has(self.podSelector) || (has(self.serviceAccounts) && size(self.serviceAccounts) > 0) || (has(self.users) && size(self.users) > 0) || (has(self.groups) && size(self.groups) > 0)",
        "message": SUBJECT_BY_LABELS_ONLY
    }
]))]
pub struct SubjectsSpec {
    /// Service accounts, as `name` (in this object's namespace) or `namespace/name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1)))]
    pub service_accounts: Vec<String>,
    /// Narrows the other subjects to pods whose labels carry all of `matchLabels` (an empty
    /// selector narrows nothing). The pod's author sets its labels, so this never selects on
    /// its own: name `serviceAccounts`, `users` or `groups` too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<PodSelector>,
    /// Users a client authenticated to the proxy as (SASL or OIDC).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1)))]
    pub users: Vec<String>,
    /// Groups of the authenticated user (OIDC `groups` claim or the users file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1)))]
    pub groups: Vec<String>,
}

/// Why a subject that selects by pod labels alone is refused (the CEL rule's message, and the
/// compiler's reason).
pub const SUBJECT_BY_LABELS_ONLY: &str = "podSelector alone selects pods by labels their own \
    author sets, so it grants and exempts nothing: name serviceAccounts (or users or groups) \
    too, and podSelector narrows those to the labelled pods";

/// A pod label selector. Only `matchLabels`: the proxy matches it against its own pod's labels
/// on every request, so it stays a plain map lookup.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodSelector {
    /// Labels the pod must carry, all of them, with these values.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// The schema of an RFC 3339 instant (a `jiff::Timestamp` in Rust).
pub(crate) fn rfc3339(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "format": "date-time",
    })
}

/// The schema of `status.conditions`: Kubernetes Conditions, a list map keyed by `type` so
/// server-side apply merges one condition at a time.
pub(crate) fn conditions(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = <Vec<Condition>>::json_schema(generator);
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    schema
}

//! The compiled proxy config: what the operator writes into `streamward-config-<sa>` for one
//! workload identity, and what `streamward-sidecar --policies DIR` builds in local mode. The
//! proxy trusts a [`ProxyConfig`]: it is only ever built by [`crate::compile`] (or read back from
//! JSON that `compile` wrote), and it carries the hash every audit event names.

use std::collections::BTreeMap;

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::acl::{Operation, ResourcePattern};

/// The compiled config of one workload identity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyConfig {
    /// Whose proxy this config is for.
    pub identity: WorkloadIdentity,
    /// Every StreamTarget of the namespace, by name; the proxy serves the one its pod names.
    pub targets: BTreeMap<String, CompiledTarget>,
    /// The policies that may apply to this identity, in evaluation order (by name).
    pub policies: Vec<CompiledPolicy>,
    /// The AccessGrants that may apply, with their validity windows. Grants outside their window
    /// are kept until the next compile; the proxy checks the window on every request.
    pub grants: Vec<CompiledGrant>,
    /// `sha256:<hex>` of the canonical JSON of everything above: equal inputs, equal hash.
    pub hash: String,
}

impl ProxyConfig {
    /// `sha256:<hex>` of the canonical JSON of this config with an empty `hash` field. Field
    /// order is fixed and maps are ordered, so equal configs give equal hashes.
    pub fn content_hash(&self) -> String {
        let mut unhashed = self.clone();
        unhashed.hash.clear();
        let mut hasher = HashWriter(Sha256::new());
        // Serializing plain data (strings, numbers, ordered maps) into a hasher cannot fail.
        let _ = serde_json::to_writer(&mut hasher, &unhashed);
        format!("sha256:{}", hex::encode(hasher.0.finalize()))
    }

    /// Whether `hash` is the content hash of this config, e.g. after reading it back from a
    /// ConfigMap: a config whose hash does not match was not written by `compile`.
    pub fn hash_is_valid(&self) -> bool {
        self.hash == self.content_hash()
    }
}

/// Feeds serialized bytes straight into the digest, so the JSON is never held in memory.
struct HashWriter(Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A workload identity: the namespace and service account a pod runs as.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadIdentity {
    /// The namespace.
    pub namespace: String,
    /// The service account's name.
    pub service_account: String,
}

/// A Kafka cluster as the proxy connects to it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompiledTarget {
    /// `host:port` bootstrap servers of the real cluster.
    pub bootstrap_servers: Vec<String>,
    /// TLS to the brokers, if the cluster speaks it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TargetTls>,
    /// SASL to the brokers with the target's own credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<TargetSasl>,
}

/// Upstream TLS settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetTls {
    /// The Secret (and key in it) holding the CA bundle that signs the brokers' certificates;
    /// without one, the system roots are used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// The name to verify in the brokers' certificates, when it is not the host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

/// A key of a Secret in the same namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    pub name: String,
    /// The key inside it.
    pub key: String,
}

/// Upstream SASL settings. The credentials stay in their Secret: the config only says where
/// they are (the Secret is mounted into the proxy container and nowhere else).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetSasl {
    /// The SASL mechanism.
    pub mechanism: SaslMechanism,
    /// The Secret with keys `username` and `password` (or `token` for OAUTHBEARER).
    pub credentials_secret: String,
}

/// SASL mechanisms the proxy speaks to brokers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SaslMechanism {
    /// `PLAIN`.
    #[serde(rename = "PLAIN")]
    Plain,
    /// `SCRAM-SHA-256`.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// `SCRAM-SHA-512`.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    /// `OAUTHBEARER` with a static token.
    #[serde(rename = "OAUTHBEARER")]
    OAuthBearer,
}

/// Who a policy or a grant is about. A request's principal matches when any listed subject
/// matches it; an empty `Subjects` matches no one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Subjects {
    /// Service accounts as `namespace/name` (the policy's namespace when written without one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<String>,
    /// Pods whose labels carry all these key/values (the proxy knows its pod's labels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_labels: Option<BTreeMap<String, String>>,
    /// Users a client authenticated to the proxy as (SASL or OIDC).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    /// Groups of the authenticated user (OIDC `groups` claim or the users file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

/// A StreamPolicy as the proxy evaluates it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompiledPolicy {
    /// The StreamPolicy's name.
    pub name: String,
    /// The target it is limited to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Who it applies to.
    pub subjects: Subjects,
    /// Ordered rules: the first that matches a request decides for this policy.
    pub rules: Vec<CompiledRule>,
    /// Enforce, or decide and audit only.
    pub mode: Mode,
    /// Limits on what allowed requests may ask for.
    #[serde(default)]
    pub guardrails: Guardrails,
    /// How much of each request the audit event carries.
    #[serde(default)]
    pub audit_level: AuditLevel,
}

/// One rule of a policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompiledRule {
    /// The rule's name (given, or `rule-<index>`), as error messages and audit events cite it.
    pub name: String,
    /// The resources it covers.
    pub resources: Vec<ResourcePattern>,
    /// The operations it covers (with Kafka's implications, see [`Operation::covers`]).
    pub operations: Vec<Operation>,
    /// What it decides.
    pub effect: Effect,
}

/// What a rule decides.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum Effect {
    /// Forward the request.
    Allow,
    /// Hold the request until a person approves it.
    RequireApproval,
    /// Refuse the request with a Kafka authorization error.
    Deny,
}

/// Whether a policy's decisions are enforced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Mode {
    /// Decisions are enforced.
    #[default]
    Enforce,
    /// Decisions are audited ("would deny") but every request is forwarded.
    DryRun,
}

/// Limits on allowed requests, refused with POLICY_VIOLATION naming the guardrail.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Guardrails {
    /// Most partitions a created topic (or a partition increase) may have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_partitions: Option<i32>,
    /// Most replicas a created topic may have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // The API server knows no `int16` format; the range says the same.
    #[schemars(with = "Option<i32>", range(min = 1, max = 32767))]
    pub max_replication_factor: Option<i16>,
    /// Produce requests must use `acks=all` (-1).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_acks_all: bool,
}

/// How much of a request its audit event carries.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum AuditLevel {
    /// Who, what, when and the decision.
    #[default]
    Metadata,
    /// Plus a SHA-256 digest of the payload.
    PayloadDigest,
    /// Plus the records, masked.
    MaskedPayload,
}

/// A just-in-time AccessGrant as the proxy evaluates it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompiledGrant {
    /// The AccessGrant's name.
    pub name: String,
    /// Who it is for.
    pub subjects: Subjects,
    /// The resources it opens.
    pub resources: Vec<ResourcePattern>,
    /// The operations it allows on them.
    pub operations: Vec<Operation>,
    /// From when it counts.
    pub not_before: Timestamp,
    /// Until when it counts (exclusive).
    pub not_after: Timestamp,
}

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
    /// The MaskingRules of the namespace that may apply to this identity, sorted by name. The
    /// proxy picks the ones for a topic, a flow and a principal with
    /// [`ProxyConfig::masking_rules_for`]. Left out of the JSON when empty, so configs written
    /// before masking existed keep their hash.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masking: Vec<CompiledMaskingRule>,
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
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
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

/// Who a policy or a grant is about (or whom a masking rule exempts). A request's principal
/// matches when it is a listed service account, user or group and, if `pod_labels` is set, its
/// pod carries those labels; an empty `Subjects`, or one with pod labels alone, matches no one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Subjects {
    /// Service accounts as `namespace/name` (the policy's namespace when written without one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<String>,
    /// Narrows the other subjects to pods whose labels carry all these key/values (the proxy
    /// knows its pod's labels); never matches on its own.
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
    /// What its `RequireApproval` rules ask of an approval.
    #[serde(default, skip_serializing_if = "ApprovalTerms::is_default")]
    pub approval: ApprovalTerms,
}

/// What a policy's `RequireApproval` rules ask of an approval (from its `spec.approval`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalTerms {
    /// How many distinct approvers must approve.
    pub required_approvals: u32,
    /// How long a held request may be approved.
    pub expire_after_seconds: u32,
    /// How long after an approval the identical request is released; `None`: once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_window_seconds: Option<u32>,
}

impl ApprovalTerms {
    /// A held request may be approved for an hour by default.
    pub const DEFAULT_EXPIRE_AFTER_SECONDS: u32 = 3600;

    fn is_default(&self) -> bool {
        *self == ApprovalTerms::default()
    }
}

impl Default for ApprovalTerms {
    /// One approver, within an hour, releasing the request once.
    fn default() -> ApprovalTerms {
        ApprovalTerms {
            required_approvals: 1,
            expire_after_seconds: ApprovalTerms::DEFAULT_EXPIRE_AFTER_SECONDS,
            release_window_seconds: None,
        }
    }
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
    /// With `RequireApproval`: how long the proxy holds a request for the approval (seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_seconds: Option<u32>,
}

impl ProxyConfig {
    /// Whether a policy of this config holds requests for approval (its proxy then creates
    /// ApprovalRequests).
    pub fn holds_requests(&self) -> bool {
        self.policies.iter().any(|policy| {
            policy.mode == Mode::Enforce
                && policy
                    .rules
                    .iter()
                    .any(|rule| rule.effect == Effect::RequireApproval)
        })
    }
}

impl CompiledRule {
    /// How long a request is held when the rule does not say: below the 30 s request timeout
    /// of Kafka's Java and librdkafka clients, so the client hears the answer.
    pub const DEFAULT_HOLD_SECONDS: u32 = 20;
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

/// Which way records travel through the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Flow {
    /// From a client to the brokers (Produce requests).
    Produce,
    /// From the brokers to a client (Fetch responses).
    Consume,
}

/// Which flows a MaskingRule masks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum MaskDirection {
    /// Records are masked on their way to consumers; the topic keeps the real values.
    #[default]
    Consume,
    /// Records are masked before they reach the brokers; the topic never holds the real values.
    Produce,
    /// Both.
    Both,
}

impl MaskDirection {
    /// Whether records flowing `flow` are masked.
    pub fn covers(self, flow: Flow) -> bool {
        matches!(
            (self, flow),
            (MaskDirection::Both, _)
                | (MaskDirection::Consume, Flow::Consume)
                | (MaskDirection::Produce, Flow::Produce)
        )
    }
}

/// How record values are read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ValueFormat {
    /// JSON (RFC 8259, UTF-8): field paths and detectors apply to the leaves.
    #[default]
    Json,
    /// UTF-8 text: detectors apply to the whole value.
    Text,
    /// Opaque bytes: passed or redacted whole (see [`BinaryHandling`]).
    Binary,
}

/// What happens to the values of a `Binary` rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum BinaryHandling {
    /// Values pass unchanged (headers may still be masked).
    #[default]
    Pass,
    /// Every value is replaced by the rule's placeholder.
    Redact,
}

/// What happens to a value that is not in the rule's format (not JSON, not UTF-8).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum OnParseError {
    /// Replace the value by the rule's placeholder (fail closed).
    #[default]
    Redact,
    /// Forward it unchanged.
    Pass,
}

/// The sensitive values a detector finds inside text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum DetectorType {
    /// Payment card numbers: 13 to 19 digits (spaces or dashes between groups) starting with
    /// 2–6 and passing the Luhn check.
    CreditCard,
    /// Email addresses.
    Email,
    /// Phone numbers: international (`+` and 8 to 15 digits) and common national formats
    /// (`(415) 555-2671`, `415-555-2671`, `020 7946 0958`). Conservative: bare digit strings
    /// are not phone numbers.
    Phone,
    /// IBANs with a known country length and a valid mod-97 checksum.
    Iban,
    /// US social security numbers written `123-45-6789` or `123 45 6789`, without the
    /// numbers the SSA never issues.
    UsSsn,
    /// JSON Web Tokens: base64url segments whose header is JSON with an `alg`.
    Jwt,
    /// Cloud credentials: AWS access key ids (`AKIA…`, `ASIA…`), Google API keys (`AIza…`)
    /// and the `AccountKey=` of Azure storage connection strings.
    CloudAccessKey,
    /// A regular expression (`pattern`).
    Regex,
}

/// How an HMAC token is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum TokenEncoding {
    /// 64 lowercase hex digits.
    #[default]
    Hex,
    /// 43 base64url characters, no padding.
    Base64Url,
}

/// How a masked value is rewritten, resolved by the compiler (defaults filled in, a
/// `Placeholder` strategy turned into `Redact` with its placeholder).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum MaskStrategy {
    /// Replace by a fixed text.
    Redact {
        /// The text (`****` unless the rule says otherwise).
        placeholder: String,
    },
    /// JSON `null` for a field (and for a JSON string in which a detector finds something); a
    /// header value becomes null; a detector match inside a Text value is removed. Never a
    /// null record value: that would be a tombstone. Not called `Null` because YAML reads an
    /// unquoted `Null` as null.
    Nullify,
    /// Keep the first `count` characters, replace each other one by `*`.
    KeepFirst {
        /// How many characters stay.
        count: u32,
    },
    /// Keep the last `count` characters, replace each other one by `*`.
    KeepLast {
        /// How many characters stay.
        count: u32,
    },
    /// `hmac:` and the keyed HMAC-SHA256 of the value: equal values give equal tokens, so
    /// masked data can still be joined, and without the key a token reveals nothing.
    Hmac {
        /// The Secret key holding the HMAC key.
        #[serde(rename = "keySecretRef")]
        key_secret_ref: SecretKeyRef,
        /// How the token is written.
        encoding: TokenEncoding,
    },
    /// Digits stay digits, letters stay letters (and their case), everything else stays,
    /// length kept; chosen by a keyed hash of the value, so deterministic but not reversible
    /// (pseudonymisation, not format-preserving encryption).
    FormatPreserving {
        /// The Secret key holding the key.
        #[serde(rename = "keySecretRef")]
        key_secret_ref: SecretKeyRef,
    },
}

impl MaskStrategy {
    /// The key this strategy needs, if any.
    pub fn key_secret_ref(&self) -> Option<&SecretKeyRef> {
        match self {
            MaskStrategy::Hmac { key_secret_ref, .. }
            | MaskStrategy::FormatPreserving { key_secret_ref } => Some(key_secret_ref),
            _ => None,
        }
    }
}

/// The key of the compiled config (JSON) in `streamward-config-<serviceaccount>`.
pub const CONFIG_KEY: &str = "config.json";

/// The key, beside [`CONFIG_KEY`], of the operator's Ed25519 signature (hex) of the exact bytes
/// under [`CONFIG_KEY`]. In the same ConfigMap's data, so a proxy reading the mounted files
/// checks it as well as one watching the object; a namespace editor who rewrites the config
/// cannot sign it.
pub const SIGNATURE_KEY: &str = "config.json.sig";

/// The name of the ConfigMap holding the compiled config of a service account's workloads.
pub fn config_map_name(service_account: &str) -> String {
    format!("streamward-config-{service_account}")
}

/// The placeholder a strategy-less redaction writes.
pub const DEFAULT_PLACEHOLDER: &str = "****";

/// A MaskingRule as the proxy applies it. Field paths and regexes have been checked by the
/// compiler; the proxy parses them again into its masking plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompiledMaskingRule {
    /// The MaskingRule's name.
    pub name: String,
    /// The topics it covers (resource type `Topic`).
    pub topics: Vec<ResourcePattern>,
    /// Which flows it masks.
    pub direction: MaskDirection,
    /// How values are read.
    pub format: ValueFormat,
    /// Fields to mask (JSON), in the rule's order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<CompiledField>,
    /// Detectors run over string leaves (JSON) or the whole value (Text), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub detectors: Vec<CompiledDetector>,
    /// Record headers to mask.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<CompiledHeader>,
    /// What happens to values of a `Binary` rule.
    pub binary: BinaryHandling,
    /// What happens to a value that is not in `format`.
    pub on_parse_error: OnParseError,
    /// What replaces a whole value (unparseable, or binary with `Redact`).
    pub placeholder: String,
    /// Principals the rule does not mask for (an empty set exempts no one).
    #[serde(default, skip_serializing_if = "Subjects::is_empty")]
    pub exempt: Subjects,
}

/// A field path and how to mask what it selects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompiledField {
    /// The path in canonical form (see [`crate::masking::FieldPath`]).
    pub path: String,
    /// How to mask.
    pub strategy: MaskStrategy,
}

/// A detector and how to mask what it finds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompiledDetector {
    /// What it finds.
    #[serde(rename = "type")]
    pub detector: DetectorType,
    /// The regular expression of a `Regex` detector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// How to mask.
    pub strategy: MaskStrategy,
}

/// A record header and how to mask its value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompiledHeader {
    /// The header key, compared exactly.
    pub name: String,
    /// How to mask the value.
    pub strategy: MaskStrategy,
}

impl Subjects {
    /// Whether no subject is listed (so none can match).
    pub fn is_empty(&self) -> bool {
        self.service_accounts.is_empty()
            && self.pod_labels.is_none()
            && self.users.is_empty()
            && self.groups.is_empty()
    }
}

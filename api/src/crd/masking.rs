//! `MaskingRule`: which parts of the records of which topics the proxy masks, and how.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::SubjectsSpec;
use crate::acl::PatternType;
use crate::config::{
    BinaryHandling, DetectorType, MaskDirection, OnParseError, SecretKeyRef, TokenEncoding,
    ValueFormat,
};

/// Masking for the records of some topics: JSON fields by path, sensitive values found by
/// detectors, record headers. Applies to every workload of the namespace except the exempt
/// subjects. Records are masked on their way to consumers (`direction: Consume`, the default),
/// before they reach the brokers (`Produce`), or both.
// Each `printcolumn(...)` repeats keys such as `type_`, which this lint mistakes for
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "streamward.io",
    version = "v1alpha1",
    kind = "MaskingRule",
    namespaced,
    status = "MaskingRuleStatus",
    derive = "PartialEq",
    shortname = "mr",
    category = "streamward",
    doc = "Fields and values the Streamward proxy masks in the records of some topics.",
    printcolumn(
        name = "Direction",
        type_ = "string",
        json_path = ".spec.direction",
        description = "Consume, Produce or Both"
    ),
    printcolumn(
        name = "Format",
        type_ = "string",
        json_path = ".spec.format",
        description = "How values are read: Json, Text or Binary"
    ),
    printcolumn(
        name = "Workloads",
        type_ = "integer",
        json_path = ".status.workloads",
        description = "Workload identities the rule applies to"
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
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.fields) && size(self.fields) > 0) || (has(self.detectors) && size(self.detectors) > 0) || (has(self.headers) && size(self.headers) > 0) || (has(self.format) && self.format == 'Binary' && has(self.binary) && self.binary == 'Redact')",
    "message": "the rule masks nothing: list fields, detectors or headers (or set format: Binary with binary: Redact)"
}, {
    "rule": "!has(self.fields) || size(self.fields) == 0 || !has(self.format) || self.format == 'Json'",
    "message": "fields apply to Json values only; use detectors for Text"
}, {
    "rule": "!has(self.detectors) || size(self.detectors) == 0 || !has(self.format) || self.format != 'Binary'",
    "message": "detectors apply to Json and Text values, not Binary ones"
}]))]
pub struct MaskingRuleSpec {
    /// The topics whose records are masked.
    #[schemars(length(min = 1, max = 64))]
    pub topics: Vec<TopicPatternSpec>,
    /// `Consume` (default): mask on the way to consumers; `Produce`: before the brokers store
    /// the records; `Both`.
    #[serde(default)]
    pub direction: MaskDirection,
    /// How values are read: `Json` (default), `Text` (UTF-8) or `Binary`.
    #[serde(default)]
    pub format: ValueFormat,
    /// JSON fields to mask, by path: `customer.email`, `items[*].card`, `..ssn`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub fields: Vec<FieldSpec>,
    /// Detectors for sensitive values inside string leaves (Json) or the text (Text).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub detectors: Vec<DetectorSpec>,
    /// Record headers whose values are masked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub headers: Vec<HeaderSpec>,
    /// The strategy of every field, detector and header that names none; `Redact` with
    /// `****` when unset. Its placeholder (for `Redact` and `Placeholder`) also replaces whole
    /// values that cannot be parsed and binary values that are redacted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<StrategySpec>,
    /// For `format: Binary`: `Pass` (default) or `Redact` every value.
    #[serde(default)]
    pub binary: BinaryHandling,
    /// A value that is not valid JSON (or UTF-8 for Text): `Redact` it whole (default, fail
    /// closed) or `Pass` it unchanged.
    #[serde(default)]
    pub on_parse_error: OnParseError,
    /// Subjects whose requests are not masked (e.g. the service that owns the data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exempt_subjects: Option<SubjectsSpec>,
}

/// A topic name pattern.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopicPatternSpec {
    /// The topic name, prefix or glob (`*` alone with `Literal` means every topic).
    #[schemars(length(min = 1, max = 249))]
    pub name: String,
    /// How `name` is matched: `Literal` (default), `Prefixed` or `Glob`.
    #[serde(default)]
    pub pattern_type: PatternType,
}

/// A JSON field to mask.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FieldSpec {
    /// The path: `a.b.c` (`$` optional), `[*]` for every element, `[N]` for one,
    /// `['odd name']`, `..name` at any depth. An object or array it selects is masked leaf by
    /// leaf.
    #[schemars(length(min = 1, max = 1024))]
    pub path: String,
    /// How to mask it; the rule's `strategy` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<StrategySpec>,
}

/// A detector of sensitive values.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.type == 'Regex' ? has(self.pattern) : !has(self.pattern)",
    "message": "a Regex detector needs a pattern, and only a Regex detector takes one"
}]))]
pub struct DetectorSpec {
    /// `CreditCard`, `Email`, `Phone`, `Iban`, `UsSsn`, `Jwt`, `CloudAccessKey` or `Regex`.
    #[serde(rename = "type")]
    pub type_: DetectorType,
    /// The regular expression of a `Regex` detector (Rust `regex` syntax). With a group named
    /// `mask`, only that group is masked: `password=(?P<mask>\S+)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub pattern: Option<String>,
    /// How to mask what it finds; the rule's `strategy` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<StrategySpec>,
}

/// A record header to mask.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderSpec {
    /// The header key, compared exactly (Kafka header keys are case-sensitive).
    #[schemars(length(min = 1, max = 1024))]
    pub name: String,
    /// How to mask its value; the rule's `strategy` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<StrategySpec>,
}

/// How a value is masked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.type != 'Placeholder' || has(self.placeholder)",
    "message": "a Placeholder strategy needs a placeholder"
}, {
    "rule": "!(self.type == 'Hmac' || self.type == 'FormatPreserving') || has(self.keySecretRef)",
    "message": "Hmac and FormatPreserving need keySecretRef: the Secret key holding the masking key"
}]))]
pub struct StrategySpec {
    /// `Redact` (placeholder, `****` by default), `Nullify`, `KeepFirst`/`KeepLast` (`count`
    /// characters, the rest `*`), `Hmac` (keyed token, joinable), `FormatPreserving` (keyed,
    /// same shape) or `Placeholder` (a fixed text).
    #[serde(rename = "type")]
    pub type_: StrategyType,
    /// The text of `Redact` and `Placeholder`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub placeholder: Option<String>,
    /// How many characters `KeepFirst`/`KeepLast` keep (default 4). A value no longer than
    /// that is masked whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 4096))]
    pub count: Option<i32>,
    /// The Secret key (same namespace) holding the key of `Hmac` and `FormatPreserving`. The
    /// same key gives the same tokens everywhere, so rotate it knowing joins break.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_secret_ref: Option<SecretKeyRef>,
    /// How `Hmac` tokens are written: `Hex` (default) or `Base64Url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<TokenEncoding>,
}

/// The masking strategies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum StrategyType {
    /// Replace by a placeholder (`****` unless `placeholder` is set).
    Redact,
    /// JSON `null` (a header value becomes null; a match inside text is removed). Not called
    /// `Null` because YAML reads an unquoted `Null` as null.
    Nullify,
    /// Keep the first `count` characters.
    KeepFirst,
    /// Keep the last `count` characters.
    KeepLast,
    /// A keyed HMAC-SHA256 token, `hmac:…`.
    Hmac,
    /// Same shape, other characters, chosen by a keyed hash.
    FormatPreserving,
    /// A fixed `placeholder`.
    Placeholder,
}

/// What the operator last observed about a MaskingRule.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaskingRuleStatus {
    /// `Accepted` (the rule compiled: paths and patterns are valid) and `Ready` (it is in the
    /// configs of its workloads).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::conditions")]
    pub conditions: Vec<Condition>,
    /// How many workload identities the rule applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workloads: Option<i32>,
}

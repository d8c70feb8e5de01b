//! `StreamTarget`: a Kafka cluster the proxies of a namespace connect to.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::{TargetSasl, TargetTls};

/// A Kafka cluster: where its brokers are, how to speak TLS to them and which credentials the
/// proxy uses. Clients never see the credentials; they live in the Secret and the proxy.
// Each `printcolumn(...)` repeats keys such as `type_`, which this lint mistakes for
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "streamward.io",
    version = "v1alpha1",
    kind = "StreamTarget",
    namespaced,
    status = "StreamTargetStatus",
    derive = "PartialEq",
    shortname = "st",
    category = "streamward",
    doc = "A Kafka cluster the Streamward proxies of this namespace connect to.",
    printcolumn(
        name = "Bootstrap",
        type_ = "string",
        json_path = ".spec.bootstrapServers",
        description = "The bootstrap servers"
    ),
    printcolumn(
        name = "SASL",
        type_ = "string",
        json_path = ".spec.sasl.mechanism",
        description = "The SASL mechanism the proxy uses"
    ),
    printcolumn(
        name = "TLS",
        type_ = "string",
        priority = 1,
        json_path = ".spec.tls.serverName",
        description = "The name verified in the brokers' certificates"
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
pub struct StreamTargetSpec {
    /// The cluster's bootstrap servers as `host:port`, at least one.
    #[schemars(
        length(min = 1),
        inner(regex(pattern = r"^(\[[0-9A-Fa-f:.]+\]|[^:\[\]/\s]+):[0-9]{1,5}$"))
    )]
    pub bootstrap_servers: Vec<String>,
    /// TLS to the brokers; without it the proxy speaks plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TargetTls>,
    /// SASL to the brokers with credentials from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<TargetSasl>,
}

/// What the operator last observed about a StreamTarget.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamTargetStatus {
    /// `Ready` (the brokers answered the last connectivity check).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::conditions")]
    pub conditions: Vec<Condition>,
    /// When the operator last checked that the brokers answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::rfc3339")]
    pub last_check_time: Option<Timestamp>,
}

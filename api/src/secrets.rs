//! How a proxy gets the Secrets its config names (broker credentials, CA bundles, masking
//! keys) without anyone in its workload's namespace being able to read them.
//!
//! The Secrets live in the operator's namespace (or the one the operator is told to use), each
//! annotated with the workload namespaces allowed to use it. An injected proxy asks the
//! operator for them over HTTPS with a projected service-account token that only the proxy
//! container mounts, bound to its pod and minted for [`SECRETS_AUDIENCE`]. The operator
//! answers only a pod it injected itself (the proxy container carries the operator's signature)
//! and only with the Secrets that pod's targets and masking rules name, and that their
//! annotations allow for its namespace.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use serde::{Deserialize, Serialize};

/// Where the operator serves a proxy its Secrets (`GET`, `Authorization: Bearer <token>`).
pub const PROXY_SECRETS_PATH: &str = "/v1/proxy-secrets";

/// The default audience of the token a proxy presents for its Secrets: no other service
/// accepts it.
pub const SECRETS_AUDIENCE: &str = "streamward-secrets";

/// The annotation of a Secret in the secrets namespace listing the workload namespaces whose
/// proxies may get it (comma-separated names, or `*` for every namespace). A Secret without it
/// is served to no proxy.
pub const ALLOWED_NAMESPACES_ANNOTATION: &str = "streamward.io/allowed-namespaces";

/// The annotation of a Secret holding broker credentials listing the bootstrap servers
/// (`host:port`, comma-separated) they may be sent to. A StreamTarget is written by the
/// workload's namespace editors, who could point it at a broker of their own to collect the
/// password: credentials are served only for a target whose every bootstrap server is listed.
pub const ALLOWED_SERVERS_ANNOTATION: &str = "streamward.io/allowed-bootstrap-servers";

/// The annotation the webhook puts on the pods it injects: the operator's signature of the
/// proxy container it added, checked before that pod's proxy gets any Secret.
pub const PROXY_SIGNATURE_ANNOTATION: &str = "streamward.io/proxy-signature";

/// The operator's answer to a proxy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxySecrets {
    /// Secret name → key → value, for each Secret the proxy may have.
    pub secrets: BTreeMap<String, BTreeMap<String, ByteString>>,
    /// Secret name → why it is not served (missing, or not allowed for the namespace). The
    /// proxy reports these when the target or rule that needs one is used.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub withheld: BTreeMap<String, String>,
}

/// Whether `annotation` (the value of [`ALLOWED_NAMESPACES_ANNOTATION`]) lets `namespace` use
/// the Secret.
pub fn allows_namespace(annotation: Option<&str>, namespace: &str) -> bool {
    annotation.is_some_and(|names| {
        names
            .split(',')
            .map(str::trim)
            .any(|name| name == "*" || name == namespace)
    })
}

/// Whether `annotation` (the value of [`ALLOWED_SERVERS_ANNOTATION`]) lists every one of
/// `servers`.
pub fn allows_servers<'a>(
    annotation: Option<&str>,
    mut servers: impl Iterator<Item = &'a str>,
) -> bool {
    let Some(listed) = annotation else {
        return false;
    };
    let listed: Vec<&str> = listed.split(',').map(str::trim).collect();
    servers.all(|server| listed.contains(&server.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_namespaces_or_a_star_may_use_a_secret() {
        assert!(allows_namespace(Some("payments, orders"), "orders"));
        assert!(allows_namespace(Some("*"), "anything"));
        assert!(!allows_namespace(Some("payments"), "pay"));
        assert!(!allows_namespace(Some("payments-*"), "payments-eu"));
        assert!(!allows_namespace(Some(""), "payments"));
        assert!(!allows_namespace(None, "payments"));
    }

    #[test]
    fn credentials_go_only_to_listed_bootstrap_servers() {
        let listed = Some("kafka-0:9093, kafka-1:9093");
        assert!(allows_servers(listed, ["kafka-0:9093"].into_iter()));
        assert!(allows_servers(
            listed,
            ["kafka-1:9093", "kafka-0:9093"].into_iter()
        ));
        assert!(!allows_servers(
            listed,
            ["kafka-0:9093", "evil:9093"].into_iter()
        ));
        assert!(!allows_servers(None, ["kafka-0:9093"].into_iter()));
    }

    #[test]
    fn the_answer_carries_values_as_base64() {
        let mut answer = ProxySecrets::default();
        answer
            .secrets
            .entry("kafka".into())
            .or_default()
            .insert("password".into(), ByteString(b"s3cret".to_vec()));
        let text = serde_json::to_string(&answer).unwrap();
        assert_eq!(text, r#"{"secrets":{"kafka":{"password":"czNjcmV0"}}}"#);
        assert_eq!(serde_json::from_str::<ProxySecrets>(&text).unwrap(), answer);
    }
}

//! The webhook configurations the operator applies (with the caBundle of its own CA), pure.
//!
//! Failure policies, and why:
//! - CRD validation fails closed (`Fail`): a policy the webhook could not check must not reach
//!   a proxy. Only CREATE and UPDATE are checked, so deleting always works.
//! - Pod injection fails closed too (`Fail`), but only for pods that opted in (the selectors
//!   send nothing else): a pod that asked for the proxy must not start without it and talk to
//!   Kafka unobserved. The system namespaces and the operator's own are excluded, so an
//!   operator that is down can always be restarted and never blocks the control plane.
//! - `exec`/`attach` into a proxy container fails closed too; a match condition sends only
//!   requests that name the proxy's container, so nothing else waits on the operator.
//! - Tokens for Streamward's audiences fail closed too: a match condition sends only requests
//!   for those, which only injected pods' proxies use.

use std::collections::BTreeSet;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations,
    ServiceReference, ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};

use super::inject::{INJECT_LABEL, NAMESPACE_ENABLED, PROXY_CONTAINER};
use super::validate::RESOURCES;

/// The path of the validating webhook for updates of injected pods.
pub const VALIDATE_PODS_PATH: &str = "/validate-pods";
/// The path of the validating webhook for `exec` and `attach` into proxy containers.
pub const VALIDATE_CONNECT_PATH: &str = "/validate-connect";
/// The path of the validating webhook for tokens minted for Streamward's audiences.
pub const VALIDATE_TOKENS_PATH: &str = "/validate-tokens";
/// The path of the mutating webhook that stamps Approvals and AccessGrants.
pub const MUTATE_RESOURCES_PATH: &str = "/mutate-resources";
/// The name of both webhook configurations.
pub const CONFIGURATION_NAME: &str = "streamward";
/// The path of the CRD validation webhook.
pub const VALIDATE_PATH: &str = "/validate";
/// The path of the pod injection webhook.
pub const MUTATE_PODS_PATH: &str = "/mutate-pods";
/// The label every namespace has with its own name (Kubernetes 1.21 and later).
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// How the API server reaches the webhook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A URL (`https://127.0.0.1:9443` in tests, where there is no cluster network); paths
    /// are appended.
    Url(String),
    /// A Service in the operator's namespace.
    Service {
        /// The namespace.
        namespace: String,
        /// The Service.
        name: String,
        /// Its port.
        port: i32,
    },
}

impl Endpoint {
    /// The names the serving certificate must carry for this endpoint.
    pub fn certificate_names(&self) -> Vec<String> {
        match self {
            Endpoint::Url(url) => {
                let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
                let authority = rest.split('/').next().unwrap_or_default();
                let host = match authority.strip_prefix('[') {
                    Some(v6) => v6.split(']').next().unwrap_or_default(),
                    None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
                };
                vec![host.to_owned()]
            }
            Endpoint::Service {
                namespace, name, ..
            } => vec![
                format!("{name}.{namespace}.svc"),
                format!("{name}.{namespace}.svc.cluster.local"),
                format!("{name}.{namespace}"),
                name.clone(),
            ],
        }
    }

    /// The base URL a client inside the cluster (an injected proxy) reaches this endpoint at.
    pub fn base_url(&self) -> String {
        match self {
            Endpoint::Url(url) => url.trim_end_matches('/').to_owned(),
            Endpoint::Service {
                namespace,
                name,
                port,
            } => format!("https://{name}.{namespace}.svc:{port}"),
        }
    }

    fn client_config(&self, path: &str, ca_bundle: &str) -> WebhookClientConfig {
        let ca_bundle = Some(ByteString(ca_bundle.as_bytes().to_vec()));
        match self {
            Endpoint::Url(url) => WebhookClientConfig {
                url: Some(format!("{}{path}", url.trim_end_matches('/'))),
                ca_bundle,
                service: None,
            },
            Endpoint::Service {
                namespace,
                name,
                port,
            } => WebhookClientConfig {
                service: Some(ServiceReference {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    path: Some(path.to_owned()),
                    port: Some(*port),
                }),
                ca_bundle,
                url: None,
            },
        }
    }
}

fn not_in(key: &str, values: impl IntoIterator<Item = String>) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: key.to_owned(),
        operator: "NotIn".to_owned(),
        values: Some(values.into_iter().collect()),
    }
}

fn labels(meta_labels: &[(&str, &str)]) -> Option<std::collections::BTreeMap<String, String>> {
    Some(
        meta_labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
}

fn meta() -> ObjectMeta {
    ObjectMeta {
        name: Some(CONFIGURATION_NAME.to_owned()),
        labels: labels(&[
            ("app.kubernetes.io/name", "streamward"),
            ("app.kubernetes.io/component", "webhook"),
            ("app.kubernetes.io/managed-by", "streamward-operator"),
        ]),
        ..Default::default()
    }
}

/// The validating webhooks: one for the Streamward custom resources, and one per injection
/// selector for updates of opted-in pods (their spec and their ephemeral containers), so that
/// an injected proxy cannot be changed or reached into afterwards.
pub fn validating(
    endpoint: &Endpoint,
    ca_bundle: &str,
    excluded: &BTreeSet<String>,
    audiences: &[String],
) -> ValidatingWebhookConfiguration {
    let base = |name: &str, path: &str, rules| ValidatingWebhook {
        name: name.to_owned(),
        client_config: endpoint.client_config(path, ca_bundle),
        rules: Some(rules),
        failure_policy: Some("Fail".to_owned()),
        side_effects: "None".to_owned(),
        admission_review_versions: vec!["v1".to_owned()],
        timeout_seconds: Some(5),
        match_policy: Some("Equivalent".to_owned()),
        ..Default::default()
    };
    let resources = base(
        "resources.validate.streamward.io",
        VALIDATE_PATH,
        vec![RuleWithOperations {
            api_groups: Some(vec![streamward_api::GROUP.to_owned()]),
            api_versions: Some(vec![streamward_api::crd::VERSION.to_owned()]),
            operations: Some(vec!["CREATE".to_owned(), "UPDATE".to_owned()]),
            resources: Some(RESOURCES.iter().map(|r| (*r).to_owned()).collect()),
            scope: Some("Namespaced".to_owned()),
        }],
    );
    let pod_updates = || {
        vec![RuleWithOperations {
            api_groups: Some(vec![String::new()]),
            api_versions: Some(vec!["v1".to_owned()]),
            operations: Some(vec!["UPDATE".to_owned()]),
            resources: Some(vec![
                "pods".to_owned(),
                "pods/ephemeralcontainers".to_owned(),
            ]),
            scope: Some("Namespaced".to_owned()),
        }]
    };
    let mut webhooks = vec![resources];
    for (prefix, namespace_selector, object_selector) in pod_selectors(excluded) {
        webhooks.push(ValidatingWebhook {
            namespace_selector: Some(namespace_selector),
            object_selector: Some(object_selector),
            ..base(
                &format!("{prefix}validate.streamward.io"),
                VALIDATE_PODS_PATH,
                pod_updates(),
            )
        });
    }
    // `kubectl exec` / `attach` into a proxy container, in any namespace pods can be injected
    // in. The review's object is the exec options, which carry no labels, so only the
    // namespace can select; the match condition sends only requests naming the proxy's
    // container, so an operator outage blocks nothing else.
    let not_excluded = not_in(NAMESPACE_NAME_LABEL, excluded.iter().cloned());
    webhooks.push(ValidatingWebhook {
        namespace_selector: Some(LabelSelector {
            match_expressions: Some(vec![not_excluded]),
            match_labels: None,
        }),
        match_conditions: Some(vec![MatchCondition {
            name: "proxy-container".to_owned(),
            expression: format!("has(object.container) && object.container == '{PROXY_CONTAINER}'"),
        }]),
        ..base(
            "exec.validate.streamward.io",
            VALIDATE_CONNECT_PATH,
            vec![RuleWithOperations {
                api_groups: Some(vec![String::new()]),
                api_versions: Some(vec!["v1".to_owned()]),
                operations: Some(vec!["CONNECT".to_owned()]),
                resources: Some(vec!["pods/exec".to_owned(), "pods/attach".to_owned()]),
                scope: Some("Namespaced".to_owned()),
            }],
        )
    });
    // Tokens for the audiences only the proxy's projected volumes use (its Secrets, the
    // collector): the kubelet mints them, and nobody else may (an editor who may create
    // `serviceaccounts/token` could otherwise mint one bound to an injected pod). The match
    // condition sends only requests naming one of them.
    let quoted: Vec<String> = audiences
        .iter()
        .map(|a| format!("'{}'", a.replace(['\\', '\''], "")))
        .collect();
    webhooks.push(ValidatingWebhook {
        match_conditions: Some(vec![MatchCondition {
            name: "streamward-audience".to_owned(),
            expression: format!(
                "has(object.spec.audiences) && object.spec.audiences.exists(a, a in [{}])",
                quoted.join(", ")
            ),
        }]),
        ..base(
            "tokens.validate.streamward.io",
            VALIDATE_TOKENS_PATH,
            vec![RuleWithOperations {
                api_groups: Some(vec![String::new()]),
                api_versions: Some(vec!["v1".to_owned()]),
                operations: Some(vec!["CREATE".to_owned()]),
                resources: Some(vec!["serviceaccounts/token".to_owned()]),
                scope: Some("Namespaced".to_owned()),
            }],
        )
    });
    ValidatingWebhookConfiguration {
        metadata: meta(),
        webhooks: Some(webhooks),
    }
}

/// The two ways a pod opts in, as (webhook name suffix, namespace selector, object selector):
/// its own label (outside opted-in namespaces, so no pod is sent twice), or its namespace's
/// label (unless the pod says `"false"`). `excluded` namespaces are never sent.
fn pod_selectors(excluded: &BTreeSet<String>) -> [(&'static str, LabelSelector, LabelSelector); 2] {
    let not_excluded = || not_in(NAMESPACE_NAME_LABEL, excluded.iter().cloned());
    [
        (
            "pods.",
            LabelSelector {
                match_expressions: Some(vec![
                    not_excluded(),
                    not_in(INJECT_LABEL, [NAMESPACE_ENABLED.to_owned()]),
                ]),
                match_labels: None,
            },
            LabelSelector {
                match_labels: labels(&[(INJECT_LABEL, "true")]),
                match_expressions: None,
            },
        ),
        (
            "namespaces.",
            LabelSelector {
                match_expressions: Some(vec![not_excluded()]),
                match_labels: labels(&[(INJECT_LABEL, NAMESPACE_ENABLED)]),
            },
            LabelSelector {
                match_expressions: Some(vec![not_in(INJECT_LABEL, ["false".to_owned()])]),
                match_labels: None,
            },
        ),
    ]
}

/// The mutating webhook that injects the proxy: one entry for pods labelled
/// `streamward.io/inject: "true"` (outside opted-in namespaces, so no pod is sent twice) and one
/// for the pods of namespaces labelled `streamward.io/inject=enabled` (unless the pod says
/// `"false"`). `excluded` namespaces are never sent.
pub fn mutating(
    endpoint: &Endpoint,
    ca_bundle: &str,
    excluded: &BTreeSet<String>,
) -> MutatingWebhookConfiguration {
    let pods = || {
        Some(vec![RuleWithOperations {
            api_groups: Some(vec![String::new()]),
            api_versions: Some(vec!["v1".to_owned()]),
            operations: Some(vec!["CREATE".to_owned()]),
            resources: Some(vec!["pods".to_owned()]),
            scope: Some("Namespaced".to_owned()),
        }])
    };
    let webhook = |name: &str, namespace_selector, object_selector| MutatingWebhook {
        name: name.to_owned(),
        client_config: endpoint.client_config(MUTATE_PODS_PATH, ca_bundle),
        rules: pods(),
        namespace_selector: Some(namespace_selector),
        object_selector: Some(object_selector),
        failure_policy: Some("Fail".to_owned()),
        side_effects: "None".to_owned(),
        admission_review_versions: vec!["v1".to_owned()],
        timeout_seconds: Some(5),
        match_policy: Some("Equivalent".to_owned()),
        // Containers another webhook adds after this one still get the bootstrap address.
        reinvocation_policy: Some("IfNeeded".to_owned()),
        match_conditions: None,
    };
    // Every new Approval and AccessGrant, wherever it is: who made it is stamped here, from
    // the API server's record, so it cannot be forged.
    let stamp = MutatingWebhook {
        name: "resources.stamp.streamward.io".to_owned(),
        client_config: endpoint.client_config(MUTATE_RESOURCES_PATH, ca_bundle),
        rules: Some(vec![RuleWithOperations {
            api_groups: Some(vec![streamward_api::GROUP.to_owned()]),
            api_versions: Some(vec![streamward_api::crd::VERSION.to_owned()]),
            operations: Some(vec!["CREATE".to_owned()]),
            resources: Some(vec!["approvals".to_owned(), "accessgrants".to_owned()]),
            scope: Some("Namespaced".to_owned()),
        }]),
        namespace_selector: None,
        object_selector: None,
        failure_policy: Some("Fail".to_owned()),
        side_effects: "None".to_owned(),
        admission_review_versions: vec!["v1".to_owned()],
        timeout_seconds: Some(5),
        match_policy: Some("Equivalent".to_owned()),
        reinvocation_policy: Some("Never".to_owned()),
        match_conditions: None,
    };
    let mut webhooks: Vec<MutatingWebhook> = pod_selectors(excluded)
        .into_iter()
        .map(|(prefix, namespace_selector, object_selector)| {
            webhook(
                &format!("{prefix}inject.streamward.io"),
                namespace_selector,
                object_selector,
            )
        })
        .collect();
    webhooks.push(stamp);
    MutatingWebhookConfiguration {
        metadata: meta(),
        webhooks: Some(webhooks),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_endpoint_names_its_host_and_appends_paths() {
        let url = Endpoint::Url("https://127.0.0.1:9443/".into());
        assert_eq!(url.certificate_names(), ["127.0.0.1"]);
        let config = validating(&url, "PEM", &BTreeSet::new(), &[]);
        let hooks = config.webhooks.unwrap();
        let hook = &hooks[0];
        assert_eq!(
            hook.client_config.url.as_deref(),
            Some("https://127.0.0.1:9443/validate")
        );
        assert_eq!(hook.client_config.ca_bundle.as_ref().unwrap().0, b"PEM");
        assert_eq!(hook.failure_policy.as_deref(), Some("Fail"));
        let rules = &hook.rules.as_ref().unwrap()[0];
        assert_eq!(rules.resources.as_ref().unwrap().len(), 6);
        assert!(
            !rules
                .operations
                .as_ref()
                .unwrap()
                .contains(&"DELETE".to_owned())
        );
        assert_eq!(
            Endpoint::Url("https://[::1]:8443".into()).certificate_names(),
            ["::1"]
        );
        assert_eq!(
            Endpoint::Url("https://webhook.example".into()).certificate_names(),
            ["webhook.example"]
        );
    }

    #[test]
    fn a_service_endpoint_names_the_service_dns_names() {
        let service = Endpoint::Service {
            namespace: "streamward-system".into(),
            name: "streamward-webhook".into(),
            port: 443,
        };
        assert!(
            service
                .certificate_names()
                .contains(&"streamward-webhook.streamward-system.svc".to_owned())
        );
        let config = mutating(&service, "PEM", &BTreeSet::new());
        let hooks = config.webhooks.unwrap();
        for (at, hook) in hooks.into_iter().enumerate() {
            let reference = hook.client_config.service.unwrap();
            let path = if at < 2 {
                MUTATE_PODS_PATH
            } else {
                MUTATE_RESOURCES_PATH
            };
            assert_eq!(reference.path.as_deref(), Some(path));
            assert_eq!(reference.port, Some(443));
            assert!(hook.client_config.url.is_none());
        }
    }

    #[test]
    fn pod_webhooks_skip_excluded_namespaces_and_never_overlap() {
        let excluded: BTreeSet<String> =
            ["kube-system".to_owned(), "streamward-system".to_owned()].into();
        let config = mutating(&Endpoint::Url("https://127.0.0.1:1".into()), "x", &excluded);
        let hooks = config.webhooks.unwrap();
        assert_eq!(hooks.len(), 3);
        for hook in &hooks[..2] {
            let ns = hook.namespace_selector.as_ref().unwrap();
            let exclusion = &ns.match_expressions.as_ref().unwrap()[0];
            assert_eq!(exclusion.key, NAMESPACE_NAME_LABEL);
            assert_eq!(exclusion.operator, "NotIn");
            assert_eq!(
                exclusion.values.as_ref().unwrap(),
                &["kube-system", "streamward-system"]
            );
            assert_eq!(hook.failure_policy.as_deref(), Some("Fail"));
            assert_eq!(hook.reinvocation_policy.as_deref(), Some("IfNeeded"));
        }
        // The pod-label webhook leaves opted-in namespaces to the namespace webhook.
        let by_pod = &hooks[0].namespace_selector.as_ref().unwrap();
        assert!(by_pod.match_expressions.as_ref().unwrap().iter().any(|r| {
            r.key == INJECT_LABEL && r.values.as_deref() == Some(&[NAMESPACE_ENABLED.to_owned()])
        }));
        let by_namespace = &hooks[1];
        assert_eq!(
            by_namespace
                .namespace_selector
                .as_ref()
                .unwrap()
                .match_labels,
            labels(&[(INJECT_LABEL, NAMESPACE_ENABLED)])
        );
    }
}

#[cfg(test)]
mod stamp_tests {
    use super::*;

    fn audiences() -> Vec<String> {
        vec![
            "streamward-collector".to_owned(),
            "streamward-secrets".to_owned(),
        ]
    }

    #[test]
    fn only_token_requests_for_streamwards_audiences_are_validated() {
        let config = validating(
            &Endpoint::Url("https://127.0.0.1:1".into()),
            "x",
            &BTreeSet::new(),
            &audiences(),
        );
        let hooks = config.webhooks.unwrap();
        let tokens = hooks
            .iter()
            .find(|h| h.name == "tokens.validate.streamward.io")
            .unwrap();
        let rules = &tokens.rules.as_ref().unwrap()[0];
        assert_eq!(
            rules.resources.as_deref().unwrap(),
            ["serviceaccounts/token"]
        );
        assert_eq!(rules.operations.as_deref().unwrap(), ["CREATE"]);
        assert_eq!(tokens.failure_policy.as_deref(), Some("Fail"));
        assert_eq!(
            tokens.match_conditions.as_ref().unwrap()[0].expression,
            "has(object.spec.audiences) && object.spec.audiences.exists(a, a in \
             ['streamward-collector', 'streamward-secrets'])"
        );
    }

    #[test]
    fn exec_and_attach_naming_the_proxy_container_are_validated_and_nothing_else() {
        let excluded: BTreeSet<String> = ["kube-system".to_owned()].into();
        let config = validating(
            &Endpoint::Url("https://127.0.0.1:1".into()),
            "x",
            &excluded,
            &audiences(),
        );
        let hooks = config.webhooks.unwrap();
        let exec = hooks
            .iter()
            .find(|h| h.name == "exec.validate.streamward.io")
            .unwrap();
        assert_eq!(
            exec.client_config.url.as_deref(),
            Some("https://127.0.0.1:1/validate-connect")
        );
        let rules = &exec.rules.as_ref().unwrap()[0];
        assert_eq!(rules.operations.as_deref().unwrap(), ["CONNECT"]);
        assert_eq!(
            rules.resources.as_deref().unwrap(),
            ["pods/exec", "pods/attach"]
        );
        assert_eq!(exec.failure_policy.as_deref(), Some("Fail"));
        assert!(exec.object_selector.is_none());
        let condition = &exec.match_conditions.as_ref().unwrap()[0];
        assert!(condition.expression.contains("'streamward-proxy'"));
        let ns = exec.namespace_selector.as_ref().unwrap();
        assert_eq!(
            ns.match_expressions.as_ref().unwrap()[0].values.as_deref(),
            Some(&["kube-system".to_owned()][..])
        );
    }

    #[test]
    fn updates_of_opted_in_pods_and_their_ephemeral_containers_are_validated() {
        let excluded: BTreeSet<String> = ["kube-system".to_owned()].into();
        let config = validating(
            &Endpoint::Url("https://127.0.0.1:1".into()),
            "x",
            &excluded,
            &audiences(),
        );
        let hooks = config.webhooks.unwrap();
        let pods: Vec<_> = hooks
            .iter()
            .filter(|h| h.client_config.url.as_deref() == Some("https://127.0.0.1:1/validate-pods"))
            .collect();
        assert_eq!(pods.len(), 2);
        let injecting = mutating(&Endpoint::Url("https://127.0.0.1:1".into()), "x", &excluded);
        for (validate, inject) in pods.iter().zip(injecting.webhooks.unwrap()) {
            // The same pods the injection sees.
            assert_eq!(validate.namespace_selector, inject.namespace_selector);
            assert_eq!(validate.object_selector, inject.object_selector);
            let rules = &validate.rules.as_ref().unwrap()[0];
            assert_eq!(rules.operations.as_deref().unwrap(), ["UPDATE"]);
            assert_eq!(
                rules.resources.as_deref().unwrap(),
                ["pods", "pods/ephemeralcontainers"]
            );
            assert_eq!(validate.failure_policy.as_deref(), Some("Fail"));
        }
    }

    #[test]
    fn every_new_approval_and_grant_is_stamped_wherever_it_is() {
        let config = mutating(
            &Endpoint::Url("https://127.0.0.1:1".into()),
            "x",
            &["kube-system".to_owned()].into(),
        );
        let hooks = config.webhooks.unwrap();
        let stamp = hooks
            .iter()
            .find(|h| h.name == "resources.stamp.streamward.io")
            .unwrap();
        assert!(stamp.namespace_selector.is_none() && stamp.object_selector.is_none());
        assert_eq!(stamp.failure_policy.as_deref(), Some("Fail"));
        let rules = &stamp.rules.as_ref().unwrap()[0];
        assert_eq!(
            rules.resources.as_deref().unwrap(),
            ["approvals", "accessgrants"]
        );
        assert_eq!(rules.operations.as_deref().unwrap(), ["CREATE"]);
    }
}

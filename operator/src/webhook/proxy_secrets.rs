//! Serving each injected proxy the Secrets its config names, and no one else.
//!
//! Broker credentials and masking keys used to be Secrets in the workload's namespace, mounted
//! into the proxy: anyone who may read Secrets there (a namespace editor, or an app's service
//! account with that right) could read them. They now live in the operator's namespace (see
//! [`streamward_api::secrets`]); a proxy asks for them with a token that only its container
//! mounts, and gets them only when every check here holds:
//!
//! 1. the token is the API server's, for [`streamward_api::secrets::SECRETS_AUDIENCE`], bound
//!    to a pod of a service account (TokenReview says which pod, by name and uid);
//! 2. that pod carries the operator's signature of its proxy container (image, command, args,
//!    environment and mounts): it is a proxy this webhook injected, sending its token nowhere
//!    else and running nothing else;
//! 3. nothing else in the pod can read the proxy's files or memory: no other container mounts
//!    a token for this audience or the proxy's token volume, no ephemeral containers, no
//!    `shareProcessNamespace`, `hostPID`, `hostIPC`, `hostPath` volumes or privileged
//!    containers;
//! 4. each Secret's [`streamward_api::secrets::ALLOWED_NAMESPACES_ANNOTATION`] lets the pod's
//!    namespace use it (a namespace editor can name any Secret in a StreamTarget they write),
//!    and broker credentials only go to the bootstrap servers their
//!    [`streamward_api::secrets::ALLOWED_SERVERS_ANNOTATION`] lists (the same editor could
//!    point a StreamTarget at a broker of their own to collect the password).
//!
//! Pod specs are immutable in the fields that matter here (containers, volumes, mounts), so a
//! pod that passes stays as it was checked; ephemeral containers, the one addition allowed,
//! are refused in injected pods by [`super::guard`] and fail check 3 anyway.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, Volume};
use serde::Serialize;
use streamward_api::crd::StreamTarget;
use streamward_api::secrets::{
    ALLOWED_NAMESPACES_ANNOTATION, ALLOWED_SERVERS_ANNOTATION, PROXY_SIGNATURE_ANNOTATION,
};

use super::inject::{PROXY_CONTAINER, SECRETS_TOKEN_VOLUME};

/// The parts of the proxy container the operator signs: everything that decides what the
/// proxy runs, where it sends its token and whom it trusts. Fields the API server fills in
/// with defaults are left out, so the container as stored signs the same as the one planned.
#[derive(Serialize)]
struct SignedProxy<'a> {
    what: &'static str,
    namespace: &'a str,
    service_account: &'a str,
    image: Option<&'a str>,
    command: Option<&'a [String]>,
    args: Option<&'a [String]>,
    working_dir: Option<&'a str>,
    env: Vec<SignedEnv<'a>>,
    env_from: usize,
    mounts: Vec<SignedMount<'a>>,
}

#[derive(Serialize)]
struct SignedEnv<'a> {
    name: &'a str,
    value: Option<&'a str>,
    /// The downward-API field, or `"?"` for any other source.
    from: Option<&'a str>,
}

#[derive(Serialize)]
struct SignedMount<'a> {
    name: &'a str,
    path: &'a str,
    sub_path: Option<&'a str>,
    read_only: bool,
}

/// What the operator signs for the proxy container of a pod of `service_account` in
/// `namespace`.
pub fn signed_bytes(namespace: &str, service_account: &str, proxy: &Container) -> Vec<u8> {
    let signed = SignedProxy {
        what: "streamward.io/proxy-container/v1",
        namespace,
        service_account,
        image: proxy.image.as_deref(),
        command: proxy.command.as_deref(),
        args: proxy.args.as_deref(),
        working_dir: proxy.working_dir.as_deref(),
        env: proxy
            .env
            .iter()
            .flatten()
            .map(|e| SignedEnv {
                name: &e.name,
                value: e.value.as_deref(),
                from: e.value_from.as_ref().map(|from| {
                    from.field_ref
                        .as_ref()
                        .map_or("?", |field| field.field_path.as_str())
                }),
            })
            .collect(),
        env_from: proxy.env_from.as_ref().map_or(0, Vec::len),
        mounts: proxy
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| SignedMount {
                name: &m.name,
                path: &m.mount_path,
                sub_path: m.sub_path.as_deref().filter(|s| !s.is_empty()),
                read_only: m.read_only.unwrap_or(false),
            })
            .collect(),
    };
    // Plain data: serializing it cannot fail.
    serde_json::to_vec(&signed).unwrap_or_default()
}

/// The pod a token was bound to, as TokenReview tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoundPod {
    /// The service account's namespace.
    pub namespace: String,
    /// The service account.
    pub service_account: String,
    /// The pod's name.
    pub name: String,
    /// The pod's uid.
    pub uid: String,
}

impl BoundPod {
    /// The pod of an authenticated user (`system:serviceaccount:<ns>:<sa>` with the pod's
    /// name and uid in its extra fields), or why the token is not a pod's.
    pub fn from_user(
        username: &str,
        extra: &BTreeMap<String, Vec<String>>,
    ) -> Result<BoundPod, String> {
        let not_a_pod = || {
            format!(
                "the token of {username} is not bound to a pod: present the projected token \
                 the webhook mounts into the proxy container"
            )
        };
        let account = username
            .strip_prefix("system:serviceaccount:")
            .ok_or_else(not_a_pod)?;
        let (namespace, service_account) = account.split_once(':').ok_or_else(not_a_pod)?;
        let one = |key: &str| {
            extra
                .get(key)
                .and_then(|values| values.first())
                .filter(|v| !v.is_empty())
                .cloned()
                .ok_or_else(not_a_pod)
        };
        Ok(BoundPod {
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
            name: one("authentication.kubernetes.io/pod-name")?,
            uid: one("authentication.kubernetes.io/pod-uid")?,
        })
    }
}

/// Why `pod` (the one `bound` names, as the API server has it) may not have its proxy's
/// Secrets, if it may not. `verify(data, signature)` checks the operator's signature;
/// `audience` is the one secrets tokens are minted for.
pub fn refuse_pod(
    pod: &Pod,
    bound: &BoundPod,
    audience: &str,
    verify: impl Fn(&[u8], &str) -> bool,
) -> Option<String> {
    let who = format!("pod {}/{}", bound.namespace, bound.name);
    if pod.metadata.uid.as_deref() != Some(bound.uid.as_str()) {
        return Some(format!(
            "{who} is not the pod the token was issued to (it was deleted and made again)"
        ));
    }
    let empty = PodSpec::default();
    let spec = pod.spec.as_ref().unwrap_or(&empty);
    let account = spec
        .service_account_name
        .as_deref()
        .filter(|sa| !sa.is_empty())
        .unwrap_or("default");
    if account != bound.service_account {
        return Some(format!(
            "{who} runs as {account}, not as {}",
            bound.service_account
        ));
    }
    let init = spec.init_containers.as_deref().unwrap_or_default();
    let Some(proxy) = init
        .iter()
        .chain(&spec.containers)
        .find(|c| c.name == PROXY_CONTAINER)
    else {
        return Some(format!("{who} has no Streamward proxy"));
    };
    let signature = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(PROXY_SIGNATURE_ANNOTATION));
    let signed = signed_bytes(&bound.namespace, &bound.service_account, proxy);
    if !signature.is_some_and(|signature| verify(&signed, signature)) {
        return Some(format!(
            "{who}: its {PROXY_CONTAINER} container is not one the Streamward webhook injected \
             (no valid {PROXY_SIGNATURE_ANNOTATION})"
        ));
    }
    if let Some(reason) = exposes_the_proxy(spec) {
        return Some(format!("{who}: {reason}"));
    }
    let ours = |v: &Volume| {
        v.projected.as_ref().is_some_and(|p| {
            p.sources.iter().flatten().any(|s| {
                s.service_account_token
                    .as_ref()
                    .is_some_and(|t| t.audience.as_deref() == Some(audience))
            })
        })
    };
    let volumes = spec.volumes.as_deref().unwrap_or_default();
    if let Some(volume) = volumes
        .iter()
        .find(|v| ours(v) && v.name != SECRETS_TOKEN_VOLUME)
    {
        return Some(format!(
            "{who}: volume {} projects a token for {audience:?}, which only the proxy's own \
             volume may",
            volume.name
        ));
    }
    let others = init
        .iter()
        .chain(&spec.containers)
        .filter(|c| c.name != PROXY_CONTAINER);
    for container in others {
        if container
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == SECRETS_TOKEN_VOLUME)
        {
            return Some(format!(
                "{who}: container {} mounts the proxy's token volume {SECRETS_TOKEN_VOLUME}",
                container.name
            ));
        }
    }
    None
}

/// Whether `user` (in `groups`) may mint tokens for Streamward's audiences: a node (the
/// kubelet projecting a pod's volumes) or a cluster admin.
pub fn may_mint_proxy_tokens(user: &str, groups: &[&str]) -> bool {
    let node = user.starts_with("system:node:") && groups.contains(&"system:nodes");
    node || groups.contains(&"system:masters")
}

/// What in a pod spec would let another container (or the node's files) reach the proxy's.
fn exposes_the_proxy(spec: &PodSpec) -> Option<String> {
    if spec
        .ephemeral_containers
        .as_ref()
        .is_some_and(|e| !e.is_empty())
    {
        return Some("it has ephemeral containers".into());
    }
    for (set, what) in [
        (spec.share_process_namespace, "shareProcessNamespace"),
        (spec.host_pid, "hostPID"),
        (spec.host_ipc, "hostIPC"),
    ] {
        if set == Some(true) {
            return Some(format!(
                "it sets {what}, through which other containers reach the proxy's memory"
            ));
        }
    }
    if let Some(volume) = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.host_path.is_some())
    {
        return Some(format!(
            "its hostPath volume {} can reach the node's copy of the proxy's token",
            volume.name
        ));
    }
    let init = spec.init_containers.as_deref().unwrap_or_default();
    if let Some(container) = init.iter().chain(&spec.containers).find(|c| {
        c.security_context
            .as_ref()
            .and_then(|s| s.privileged)
            .unwrap_or(false)
    }) {
        return Some(format!("its container {} is privileged", container.name));
    }
    None
}

/// Why the Secret with these annotations may not be served to a proxy in `namespace`, if it
/// may not. `servers`: the bootstrap servers of the proxy's targets that use it as broker
/// credentials (empty when none does).
pub fn withhold(
    secret: &str,
    annotations: Option<&BTreeMap<String, String>>,
    namespace: &str,
    secrets_namespace: &str,
    servers: &BTreeSet<String>,
) -> Option<String> {
    let annotation = |key: &str| annotations.and_then(|a| a.get(key)).map(String::as_str);
    if !streamward_api::secrets::allows_namespace(
        annotation(ALLOWED_NAMESPACES_ANNOTATION),
        namespace,
    ) {
        return Some(format!(
            "Secret {secrets_namespace}/{secret} is not for namespace {namespace}: its \
             {ALLOWED_NAMESPACES_ANNOTATION} annotation must list it (ask a cluster admin)"
        ));
    }
    let unlisted: Vec<&str> = servers
        .iter()
        .map(String::as_str)
        .filter(|server| {
            !streamward_api::secrets::allows_servers(
                annotation(ALLOWED_SERVERS_ANNOTATION),
                std::iter::once(*server),
            )
        })
        .collect();
    if !unlisted.is_empty() {
        return Some(format!(
            "Secret {secrets_namespace}/{secret} holds broker credentials, and its \
             {ALLOWED_SERVERS_ANNOTATION} annotation does not list {}, a bootstrap server of \
             the StreamTarget that uses it: a StreamTarget cannot send them elsewhere",
            unlisted.join(", ")
        ));
    }
    None
}

/// For each Secret used as broker credentials by the targets a proxy serves (`target`, or
/// every one of its namespace), the bootstrap servers they would be sent to.
pub fn credential_servers<'a>(
    target: Option<&str>,
    targets: impl IntoIterator<Item = &'a StreamTarget>,
) -> BTreeMap<String, BTreeSet<String>> {
    let mut servers: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for t in targets {
        if target.is_some_and(|name| t.metadata.name.as_deref() != Some(name)) {
            continue;
        }
        if let Some(sasl) = &t.spec.sasl {
            servers
                .entry(sasl.credentials_secret.clone())
                .or_default()
                .extend(t.spec.bootstrap_servers.iter().cloned());
        }
    }
    servers
}

/// The Secret names of `names` that are well formed (a StreamTarget may name anything).
pub fn valid_names(names: BTreeSet<String>) -> BTreeSet<String> {
    names
        .into_iter()
        .filter(|name| {
            name.len() <= 253
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{EnvVar, SecurityContext, VolumeMount};
    use serde_json::json;

    use crate::signing::{ConfigSigner, verifies};
    use crate::webhook::inject::{self, InjectSettings, PodContext, SecretsEndpoint};

    fn settings(signer: &std::sync::Arc<ConfigSigner>) -> InjectSettings {
        InjectSettings {
            secrets: Some(SecretsEndpoint {
                url: "https://streamward-webhook.streamward-system.svc:443".into(),
                audience: "streamward-secrets".into(),
                ca_pem: "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n".into(),
            }),
            signer: Some(inject::ProxySigner(signer.clone())),
            ..Default::default()
        }
    }

    /// An opted-in pod as the API server stores it after the webhook's patch.
    fn injected(signer: &std::sync::Arc<ConfigSigner>) -> Pod {
        let mut pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "orders-1", "uid": "u-1", "labels": {"streamward.io/inject": "true"}},
            "spec": {"serviceAccountName": "orders", "containers": [{"name": "app", "image": "orders:1"}]},
        });
        let typed: Pod = serde_json::from_value(pod.clone()).unwrap();
        let ctx = PodContext {
            namespace: "shop".into(),
        };
        let patch = inject::plan(&typed, &ctx, &settings(signer)).unwrap();
        json_patch::patch(&mut pod, &patch).unwrap();
        serde_json::from_value(pod).unwrap()
    }

    fn bound() -> BoundPod {
        BoundPod {
            namespace: "shop".into(),
            service_account: "orders".into(),
            name: "orders-1".into(),
            uid: "u-1".into(),
        }
    }

    fn refusal(signer: &std::sync::Arc<ConfigSigner>, pod: &Pod) -> Option<String> {
        let key = signer.public_key_hex().to_owned();
        refuse_pod(pod, &bound(), "streamward-secrets", |data, sig| {
            verifies(&key, data, sig)
        })
    }

    fn signer() -> std::sync::Arc<ConfigSigner> {
        std::sync::Arc::new(ConfigSigner::generate().unwrap().0)
    }

    fn proxy(pod: &mut Pod) -> &mut Container {
        let spec = pod.spec.as_mut().unwrap();
        spec.init_containers
            .iter_mut()
            .flatten()
            .find(|c| c.name == PROXY_CONTAINER)
            .unwrap()
    }

    #[test]
    fn the_pod_the_webhook_injected_gets_its_secrets() {
        let signer = signer();
        let pod = injected(&signer);
        assert_eq!(refusal(&signer, &pod), None);
    }

    #[test]
    fn a_proxy_sending_its_token_elsewhere_or_running_something_else_is_refused() {
        let signer = signer();
        let changes: [fn(&mut Container); 4] = [
            |c| {
                let args = c.args.as_mut().unwrap();
                let at = args.iter().position(|a| a == "--secrets-url").unwrap();
                args[at + 1] = "https://evil.example".into();
            },
            |c| c.command = Some(vec!["/bin/sh".into()]),
            |c| c.image = Some("evil/sidecar:1".into()),
            |c| {
                c.env.as_mut().unwrap().push(EnvVar {
                    name: "STREAMWARD_SECRETS_CA_PEM".into(),
                    value: Some("evil".into()),
                    value_from: None,
                })
            },
        ];
        for change in changes {
            let mut pod = injected(&signer);
            change(proxy(&mut pod));
            let reason = refusal(&signer, &pod).expect("a changed proxy must be refused");
            assert!(
                reason.contains("not one the Streamward webhook injected"),
                "{reason}"
            );
        }
        // A pod of another namespace or account signed the same way is not this one.
        let pod = injected(&signer);
        let key = signer.public_key_hex().to_owned();
        let elsewhere = BoundPod {
            namespace: "other".into(),
            ..bound()
        };
        assert!(
            refuse_pod(&pod, &elsewhere, "streamward-secrets", |d, s| verifies(
                &key, d, s
            ))
            .is_some()
        );
        // Another operator's key.
        assert!(refusal(&self::signer(), &pod).is_some());
    }

    #[test]
    fn a_pod_that_lets_another_container_reach_the_proxy_is_refused() {
        let signer = signer();
        type Change = fn(&mut Pod);
        let cases: [(Change, &str); 6] = [
            (
                |p| p.spec.as_mut().unwrap().share_process_namespace = Some(true),
                "shareProcessNamespace",
            ),
            (
                |p| p.spec.as_mut().unwrap().host_pid = Some(true),
                "hostPID",
            ),
            (
                |p| {
                    p.spec.as_mut().unwrap().volumes.as_mut().unwrap().push(
                        serde_json::from_value(
                            json!({"name": "kubelet", "hostPath": {"path": "/var/lib/kubelet"}}),
                        )
                        .unwrap(),
                    )
                },
                "hostPath volume kubelet",
            ),
            (
                |p| {
                    p.spec.as_mut().unwrap().containers[0].security_context =
                        Some(SecurityContext {
                            privileged: Some(true),
                            ..Default::default()
                        })
                },
                "container app is privileged",
            ),
            (
                |p| {
                    p.spec.as_mut().unwrap().containers[0].volume_mounts = Some(vec![VolumeMount {
                        name: SECRETS_TOKEN_VOLUME.into(),
                        mount_path: "/steal".into(),
                        ..Default::default()
                    }])
                },
                "container app mounts the proxy's token volume",
            ),
            (
                |p| {
                    p.spec.as_mut().unwrap().volumes.as_mut().unwrap().push(
                        serde_json::from_value(json!({"name": "mine", "projected": {"sources": [
                            {"serviceAccountToken": {"audience": "streamward-secrets", "path": "t"}}
                        ]}}))
                        .unwrap(),
                    )
                },
                "volume mine projects a token",
            ),
        ];
        for (change, expected) in cases {
            let mut pod = injected(&signer);
            change(&mut pod);
            let reason = refusal(&signer, &pod).expect(expected);
            assert!(reason.contains(expected), "{reason} (expected {expected})");
        }
    }

    #[test]
    fn a_recreated_pod_or_another_account_is_not_the_bound_pod() {
        let signer = signer();
        let mut pod = injected(&signer);
        pod.metadata.uid = Some("u-2".into());
        assert!(refusal(&signer, &pod).unwrap().contains("not the pod"));
        let pod = injected(&signer);
        let key = signer.public_key_hex().to_owned();
        let other = BoundPod {
            service_account: "admin".into(),
            ..bound()
        };
        assert!(
            refuse_pod(&pod, &other, "streamward-secrets", |d, s| verifies(
                &key, d, s
            ))
            .unwrap()
            .contains("runs as orders")
        );
    }

    #[test]
    fn only_the_kubelet_and_cluster_admins_mint_tokens_for_the_proxy() {
        assert!(may_mint_proxy_tokens(
            "system:node:n1",
            &["system:nodes", "system:authenticated"]
        ));
        assert!(may_mint_proxy_tokens(
            "kubernetes-admin",
            &["system:masters"]
        ));
        assert!(!may_mint_proxy_tokens("mallory", &["system:authenticated"]));
        assert!(!may_mint_proxy_tokens(
            "system:node:n1",
            &["system:authenticated"]
        ));
        assert!(!may_mint_proxy_tokens(
            "system:serviceaccount:shop:orders-app",
            &["system:serviceaccounts"]
        ));
    }

    #[test]
    fn only_pod_bound_service_account_tokens_name_a_pod() {
        let extra: BTreeMap<String, Vec<String>> = [
            (
                "authentication.kubernetes.io/pod-name".to_owned(),
                vec!["orders-1".to_owned()],
            ),
            (
                "authentication.kubernetes.io/pod-uid".to_owned(),
                vec!["u-1".to_owned()],
            ),
        ]
        .into();
        assert_eq!(
            BoundPod::from_user("system:serviceaccount:shop:orders", &extra).unwrap(),
            bound()
        );
        assert!(BoundPod::from_user("alice", &extra).is_err());
        assert!(
            BoundPod::from_user("system:serviceaccount:shop:orders", &Default::default()).is_err()
        );
    }

    #[test]
    fn a_secret_is_withheld_from_namespaces_its_annotation_does_not_list() {
        let annotations: BTreeMap<String, String> = [
            (
                ALLOWED_NAMESPACES_ANNOTATION.to_owned(),
                "shop,payments".to_owned(),
            ),
            (
                ALLOWED_SERVERS_ANNOTATION.to_owned(),
                "kafka-0:9093".to_owned(),
            ),
        ]
        .into();
        let none = BTreeSet::new();
        assert_eq!(
            withhold("kafka", Some(&annotations), "shop", "sw", &none),
            None
        );
        let reason = withhold("kafka", Some(&annotations), "attacker", "sw", &none).unwrap();
        assert!(
            reason.contains("sw/kafka is not for namespace attacker"),
            "{reason}"
        );
        assert!(withhold("kafka", None, "shop", "sw", &none).is_some());
        let servers = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(
            withhold(
                "kafka",
                Some(&annotations),
                "shop",
                "sw",
                &servers(&["kafka-0:9093"])
            ),
            None
        );
        let reason = withhold(
            "kafka",
            Some(&annotations),
            "shop",
            "sw",
            &servers(&["kafka-0:9093", "evil:9092"]),
        )
        .unwrap();
        assert!(
            reason.contains("does not list evil:9092, a bootstrap"),
            "{reason}"
        );
    }
}

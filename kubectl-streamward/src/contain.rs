//! `contain` and `release`: incident response for one identity.
//!
//! `contain` applies a StreamPolicy that denies that identity every operation on every
//! resource. Across policies any `Deny` wins over every `Allow` and every AccessGrant
//! (`streamward_api::decide`), so nothing else the namespace says can let its requests through;
//! the operator compiles it into the configs its proxies watch, and their open connections are
//! refused from the next request on. It also revokes the identity's AccessGrants, so releasing
//! the containment does not bring back access that was granted for the time before the
//! incident. `release` deletes the policy and nothing else: revoked grants stay revoked.
//!
//! As with the other cluster commands, the API server decides who may do this (RBAC on
//! `streampolicies` and `accessgrants`), and its refusals are shown in its own words.

use std::collections::BTreeMap;

use anyhow::Context;
use clap::Args;
use jiff::Timestamp;
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use streamward_api::acl::{Operation, PatternType, ResourcePattern, ResourceType};
use streamward_api::config::{AuditLevel, Effect, Mode};
use streamward_api::crd::{AccessGrant, RuleSpec, StreamPolicy, StreamPolicySpec, SubjectsSpec};

use crate::cluster::{KubeArgs, api_error};
use crate::policy::BadInput;

/// The label every containment policy carries (`kubectl get sp -l streamward.io/containment`).
pub const CONTAINMENT_LABEL: &str = "streamward.io/containment";
/// Why the identity was contained, as `--reason` said.
const REASON: &str = "streamward.io/containment-reason";
/// Who contained it, as the API server authenticated them.
const CONTAINED_BY: &str = "streamward.io/contained-by";
/// When (RFC 3339).
const CONTAINED_AT: &str = "streamward.io/contained-at";
/// The field manager of the applied policy.
const MANAGER: &str = "kubectl-streamward";

/// Whose access: a service account (`NAME` or `NAMESPACE/NAME`) or `--user`.
#[derive(Args, Debug)]
pub struct IdentityArgs {
    /// The workload's service account: `NAME` (in the namespace of `-n`) or `NAMESPACE/NAME`.
    #[arg(required_unless_present = "user", conflicts_with = "user")]
    pub identity: Option<String>,
    /// A user as the proxy authenticated them (SASL or OIDC) instead of a service account.
    #[arg(long)]
    pub user: Option<String>,
    #[command(flatten)]
    pub kube: KubeArgs,
}

/// `contain`.
#[derive(Args, Debug)]
pub struct ContainArgs {
    #[command(flatten)]
    pub who: IdentityArgs,
    /// Why (kept on the policy as an annotation, so the audit trail and reviewers see it).
    #[arg(long)]
    pub reason: Option<String>,
}

/// The identity a containment is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Contained {
    /// A service account of the policy's namespace.
    ServiceAccount(String),
    /// A user the proxy authenticated.
    User(String),
}

impl Contained {
    /// The StreamPolicy that contains this identity: one name per identity, so `contain` twice
    /// changes nothing and `release` knows what to delete.
    pub fn policy_name(&self) -> String {
        match self {
            Contained::ServiceAccount(name) => bounded(&format!("streamward-contain-sa-{name}")),
            Contained::User(user) => {
                let clean = sanitize(user);
                if clean == *user {
                    bounded(&format!("streamward-contain-user-{clean}"))
                } else {
                    // Two users whose names clean to the same text get different policies.
                    bounded(&format!(
                        "streamward-contain-user-{clean}-{:08x}",
                        fnv1a(user.as_bytes())
                    ))
                }
            }
        }
    }

    fn subjects(&self) -> SubjectsSpec {
        let (service_accounts, users) = match self {
            Contained::ServiceAccount(name) => (vec![name.clone()], Vec::new()),
            Contained::User(user) => (Vec::new(), vec![user.clone()]),
        };
        SubjectsSpec {
            service_accounts,
            pod_selector: None,
            users,
            groups: Vec::new(),
        }
    }

    /// Whether an AccessGrant in `namespace` with these subjects is for this identity.
    fn named_by(&self, subjects: &SubjectsSpec, namespace: &str) -> bool {
        match self {
            Contained::ServiceAccount(name) => subjects.service_accounts.iter().any(|sa| {
                sa == name
                    || sa
                        .split_once('/')
                        .is_some_and(|(ns, sa)| ns == namespace && sa == name)
            }),
            Contained::User(user) => subjects.users.iter().any(|u| u == user),
        }
    }

    fn describe(&self, namespace: &str) -> String {
        match self {
            Contained::ServiceAccount(name) => format!("service account {namespace}/{name}"),
            Contained::User(user) => format!("user {user:?} (in namespace {namespace})"),
        }
    }
}

/// Lowercase letters, digits and `-`, as an object name allows.
fn sanitize(text: &str) -> String {
    let mapped: String = text
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = mapped.trim_matches('-');
    if trimmed.is_empty() {
        "x".into()
    } else {
        trimmed.into()
    }
}

/// At most 253 characters (an object name), keeping it unique with a hash when cut.
fn bounded(name: &str) -> String {
    const MAX: usize = 253;
    if name.len() <= MAX {
        return name.into();
    }
    let hash = format!("-{:08x}", fnv1a(name.as_bytes()));
    let mut cut = name[..MAX - hash.len()].trim_end_matches('-').to_owned();
    cut.push_str(&hash);
    cut
}

/// FNV-1a, 32 bits: a stable short suffix, not a security property.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |hash, &b| {
        (hash ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// A Kubernetes object name as service accounts have them.
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// The identity and the namespace of its containment policy, from the flags.
fn resolve(args: &IdentityArgs, default_namespace: &str) -> Result<(Contained, String), BadInput> {
    let flag = args.kube.namespace.as_deref();
    match (&args.identity, &args.user) {
        (Some(identity), None) => {
            let (namespace, name) = match identity.split_once('/') {
                Some((namespace, name)) => {
                    if flag.is_some_and(|flag| flag != namespace) {
                        return Err(BadInput(format!(
                            "{identity:?} names namespace {namespace} but -n says {}",
                            flag.unwrap_or_default()
                        )));
                    }
                    (namespace, name)
                }
                None => (flag.unwrap_or(default_namespace), identity.as_str()),
            };
            if !is_name(namespace) || !is_name(name) {
                return Err(BadInput(format!(
                    "{identity:?} is not a service account (NAME or NAMESPACE/NAME, lowercase)"
                )));
            }
            Ok((Contained::ServiceAccount(name.into()), namespace.into()))
        }
        (None, Some(user)) if !user.trim().is_empty() => Ok((
            Contained::User(user.clone()),
            flag.unwrap_or(default_namespace).into(),
        )),
        _ => Err(BadInput(
            "name one identity: a service account (NAME or NAMESPACE/NAME) or --user USER".into(),
        )),
    }
}

/// The deny-everything policy for `who`: one rule over every resource of every type, all
/// operations, enforced whatever mode the namespace's other policies use.
pub fn containment_policy(
    who: &Contained,
    namespace: &str,
    annotations: BTreeMap<String, String>,
) -> StreamPolicy {
    let resources = [
        ResourceType::Topic,
        ResourceType::Group,
        ResourceType::TransactionalId,
        ResourceType::Cluster,
    ]
    .into_iter()
    .map(|resource_type| ResourcePattern {
        resource_type,
        // `*` alone with Literal is every resource of the type, as in Kafka.
        name: "*".into(),
        pattern_type: PatternType::Literal,
    })
    .collect();
    let mut policy = StreamPolicy::new(
        &who.policy_name(),
        StreamPolicySpec {
            target_ref: None,
            subjects: who.subjects(),
            rules: vec![RuleSpec {
                name: Some("contained".into()),
                resources,
                operations: vec![Operation::All],
                effect: Effect::Deny,
                hold_seconds: None,
            }],
            guardrails: Default::default(),
            audit_level: AuditLevel::default(),
            mode: Mode::Enforce,
            approval: None,
        },
    );
    policy.metadata.namespace = Some(namespace.into());
    policy.metadata.labels = Some(BTreeMap::from([
        (CONTAINMENT_LABEL.into(), "true".into()),
        ("app.kubernetes.io/managed-by".into(), MANAGER.into()),
    ]));
    policy.metadata.annotations = Some(annotations);
    policy
}

/// Who the API server says the kubectl user is (a SelfSubjectReview), for the annotation.
async fn whoami(client: &kube::Client) -> anyhow::Result<String> {
    let api: Api<SelfSubjectReview> = Api::all(client.clone());
    let review = api
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .map_err(|e| api_error(e, "asking the API server who you are (SelfSubjectReview)"))?;
    review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .context("the API server's SelfSubjectReview named no user")
}

/// Applies the containment policy and revokes the identity's grants.
pub async fn contain(args: ContainArgs) -> anyhow::Result<()> {
    let (client, default_namespace) = args.who.kube.client().await?;
    let (who, namespace) = resolve(&args.who, &default_namespace)?;
    let name = who.policy_name();
    let policies: Api<StreamPolicy> = Api::namespaced(client.clone(), &namespace);
    let existing = policies
        .get_opt(&name)
        .await
        .map_err(|e| api_error(e, &format!("reading StreamPolicy {namespace}/{name}")))?;
    let contained_before = existing.as_ref().and_then(|p| {
        let annotations = p.metadata.annotations.as_ref()?;
        Some((
            annotations.get(CONTAINED_AT)?.clone(),
            annotations
                .get(CONTAINED_BY)
                .cloned()
                .unwrap_or_else(|| "?".into()),
        ))
    });
    // A second `contain` keeps the first one's who, when and why (unless given a new reason).
    let mut annotations: BTreeMap<String, String> = existing
        .as_ref()
        .and_then(|p| p.metadata.annotations.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| [REASON, CONTAINED_BY, CONTAINED_AT].contains(&k.as_str()))
        .collect();
    if contained_before.is_none() {
        annotations.insert(CONTAINED_BY.into(), whoami(&client).await?);
        annotations.insert(CONTAINED_AT.into(), Timestamp::now().to_string());
    }
    if let Some(reason) = args.reason.as_deref().filter(|r| !r.trim().is_empty()) {
        annotations.insert(REASON.into(), reason.into());
    }
    let policy = containment_policy(&who, &namespace, annotations);
    policies
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&policy),
        )
        .await
        .map_err(|e| api_error(e, &format!("applying StreamPolicy {namespace}/{name}")))?;
    match &contained_before {
        None => println!(
            "streampolicy.streamward.io/{name} applied: every request of {} is denied, on \
             every topic, group, transactional id and the cluster",
            who.describe(&namespace)
        ),
        Some((at, by)) => println!(
            "streampolicy.streamward.io/{name} unchanged: {} has been contained since {at} \
             (by {by})",
            who.describe(&namespace)
        ),
    }

    let grants: Api<AccessGrant> = Api::namespaced(client, &namespace);
    let list = grants
        .list(&ListParams::default())
        .await
        .map_err(|e| api_error(e, &format!("listing the AccessGrants of {namespace}")))?;
    let mut revoked = 0;
    for grant in list
        .items
        .iter()
        .filter(|g| !g.spec.revoked && who.named_by(&g.spec.subjects, &namespace))
    {
        let grant_name = grant.metadata.name.clone().unwrap_or_default();
        grants
            .patch(
                &grant_name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": {"revoked": true}})),
            )
            .await
            .map_err(|e| api_error(e, &format!("revoking AccessGrant {namespace}/{grant_name}")))?;
        println!("accessgrant.streamward.io/{grant_name} revoked");
        revoked += 1;
    }
    if revoked == 0 {
        println!("no AccessGrant of {namespace} for it left to revoke");
    }
    println!(
        "its proxies refuse its next requests, on open connections too, once the operator \
         has updated their config (seconds); `kubectl streamward release` lifts the containment"
    );
    Ok(())
}

/// Deletes the containment policy; revoked grants stay revoked.
pub async fn release(args: IdentityArgs) -> anyhow::Result<()> {
    let (client, default_namespace) = args.kube.client().await?;
    let (who, namespace) = resolve(&args, &default_namespace)?;
    let name = who.policy_name();
    let policies: Api<StreamPolicy> = Api::namespaced(client, &namespace);
    let existing = policies
        .get_opt(&name)
        .await
        .map_err(|e| api_error(e, &format!("reading StreamPolicy {namespace}/{name}")))?;
    let Some(existing) = existing else {
        println!(
            "{} is not contained: no StreamPolicy {namespace}/{name}",
            who.describe(&namespace)
        );
        return Ok(());
    };
    let ours = existing
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(CONTAINMENT_LABEL))
        .is_some_and(|v| v == "true");
    if !ours {
        anyhow::bail!(
            "StreamPolicy {namespace}/{name} is not a containment (no label \
             {CONTAINMENT_LABEL}=true): not deleting it"
        );
    }
    policies
        .delete(&name, &DeleteParams::default())
        .await
        .map_err(|e| api_error(e, &format!("deleting StreamPolicy {namespace}/{name}")))?;
    println!(
        "streampolicy.streamward.io/{name} deleted: {} is decided by its other policies again",
        who.describe(&namespace)
    );
    println!(
        "the AccessGrants revoked by `contain` stay revoked (a revoked grant never counts \
         again): create a new grant if access is still needed"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamward_api::compile;
    use streamward_api::config::WorkloadIdentity;

    fn args(identity: Option<&str>, user: Option<&str>, ns: Option<&str>) -> IdentityArgs {
        IdentityArgs {
            identity: identity.map(Into::into),
            user: user.map(Into::into),
            kube: KubeArgs {
                kubeconfig: None,
                context: None,
                namespace: ns.map(Into::into),
            },
        }
    }

    #[test]
    fn identities_resolve_to_one_policy_name_each() {
        let (who, ns) = resolve(&args(Some("orders-app"), None, Some("shop")), "default").unwrap();
        assert_eq!(
            (who.policy_name(), ns.as_str()),
            ("streamward-contain-sa-orders-app".into(), "shop")
        );
        let (who, ns) = resolve(&args(Some("shop/orders-app"), None, None), "default").unwrap();
        assert_eq!(who, Contained::ServiceAccount("orders-app".into()));
        assert_eq!(ns, "shop");
        assert!(resolve(&args(Some("shop/orders-app"), None, Some("x")), "d").is_err());
        assert!(resolve(&args(Some("Orders"), None, None), "d").is_err());
        let (who, ns) = resolve(&args(None, Some("alice"), None), "default").unwrap();
        assert_eq!(
            (who.policy_name(), ns.as_str()),
            ("streamward-contain-user-alice".into(), "default")
        );
        let a = Contained::User("Alice@Example.com".into()).policy_name();
        let b = Contained::User("alice-example-com".into()).policy_name();
        assert!(
            a.starts_with("streamward-contain-user-alice-example-com-"),
            "{a}"
        );
        assert_ne!(a, b);
        assert!(Contained::User("x".repeat(400)).policy_name().len() <= 253);
    }

    #[test]
    fn the_containment_policy_compiles_and_denies_everything_over_any_allow() {
        let who = Contained::ServiceAccount("orders-app".into());
        let policy = containment_policy(&who, "shop", BTreeMap::new());
        let yaml = serde_yaml::to_string(&policy).unwrap();
        let allow = "apiVersion: streamward.io/v1alpha1
kind: StreamPolicy
metadata: {name: orders, namespace: shop}
spec:
  subjects: {serviceAccounts: [orders-app]}
  rules:
  - resources: [{resourceType: Topic, name: '*'}]
    operations: [All]
    effect: Allow
";
        let mut inputs = compile::Inputs::default();
        inputs.extend(compile::parse_manifests(&yaml).unwrap());
        inputs.extend(compile::parse_manifests(allow).unwrap());
        let identity = WorkloadIdentity {
            namespace: "shop".into(),
            service_account: "orders-app".into(),
        };
        let config = compile::compile(&inputs, &identity).unwrap();
        assert_eq!(config.policies.len(), 2);
        let labels = BTreeMap::new();
        let principal = streamward_api::decide::Principal {
            identity: &identity,
            pod_labels: &labels,
            user: None,
            groups: &[],
        };
        for (resource_type, name) in [
            (ResourceType::Topic, "orders"),
            (ResourceType::Group, "g"),
            (ResourceType::TransactionalId, "t"),
            (ResourceType::Cluster, streamward_api::acl::CLUSTER_NAME),
        ] {
            for operation in [
                Operation::Write,
                Operation::Describe,
                Operation::IdempotentWrite,
            ] {
                let decision = config.decide(
                    &principal,
                    "kafka",
                    resource_type,
                    name,
                    operation,
                    Timestamp::now(),
                );
                assert_eq!(decision.effect, Effect::Deny, "{resource_type} {operation}");
            }
        }
        let grant_subjects = SubjectsSpec {
            service_accounts: vec!["shop/orders-app".into()],
            pod_selector: None,
            users: vec![],
            groups: vec![],
        };
        assert!(who.named_by(&grant_subjects, "shop"));
        assert!(!who.named_by(&grant_subjects, "other"));
    }
}

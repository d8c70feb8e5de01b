//! The Role and RoleBinding that let one workload identity's proxy read its own ConfigMap and
//! nothing else: `get`, `list` and `watch` on `configmaps` with `resourceNames:
//! [streamward-config-<sa>]`. When a policy of the identity holds requests for approval, the
//! proxy may also create, read and annotate ApprovalRequests in its namespace (the admission
//! webhook lets it create only ones that name its own service account, and never un-mark one
//! released); never their status, which holds the decisions, and never Approvals. The API server authorizes a list or watch against `resourceNames`
//! only when it is limited by the field selector `metadata.name=<name>`, which is how the proxy
//! watches (`sidecar/src/config_map.rs`).

use std::collections::BTreeMap;

use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use sha2::{Digest, Sha256};
use streamward_api::config::WorkloadIdentity;
use streamward_api::crd::ApprovalRequest;

use crate::configs::{MANAGED_BY, MANAGED_BY_LABEL, SERVICE_ACCOUNT_LABEL, config_map_name};

/// The annotation carrying the content hash of a Role or RoleBinding the operator wrote.
pub const CONTENT_HASH_ANNOTATION: &str = "streamward.io/content-hash";

/// The name of the Role and RoleBinding of a service account's proxy: the name of the
/// ConfigMap it may read.
pub fn role_name(service_account: &str) -> String {
    config_map_name(service_account)
}

fn metadata(identity: &WorkloadIdentity, owners: &[OwnerReference]) -> ObjectMeta {
    ObjectMeta {
        name: Some(role_name(&identity.service_account)),
        namespace: Some(identity.namespace.clone()),
        labels: Some(BTreeMap::from([
            (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
            (
                "app.kubernetes.io/name".to_string(),
                "streamward".to_string(),
            ),
            (
                "app.kubernetes.io/component".to_string(),
                "proxy-config-reader".to_string(),
            ),
            (
                SERVICE_ACCOUNT_LABEL.to_string(),
                identity.service_account.clone(),
            ),
        ])),
        owner_references: (!owners.is_empty()).then(|| owners.to_vec()),
        ..ObjectMeta::default()
    }
}

/// Stamps the hash of everything but the hash itself into the object's annotations.
fn stamp<T: serde::Serialize>(meta: &mut ObjectMeta, body: &T) -> Result<(), serde_json::Error> {
    let digest = Sha256::digest(serde_json::to_vec(body)?);
    let hash: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    meta.annotations = Some(BTreeMap::from([(
        CONTENT_HASH_ANNOTATION.to_string(),
        hash,
    )]));
    Ok(())
}

/// The Role of `identity`'s proxy, owned like its ConfigMap; `holds`: a policy of the
/// identity has a `RequireApproval` rule.
pub fn build_role(
    identity: &WorkloadIdentity,
    owners: &[OwnerReference],
    holds: bool,
) -> Result<Role, serde_json::Error> {
    let mut rules = vec![PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec!["configmaps".to_string()]),
        resource_names: Some(vec![config_map_name(&identity.service_account)]),
        verbs: vec!["get".into(), "list".into(), "watch".into()],
        ..PolicyRule::default()
    }];
    if holds {
        rules.push(PolicyRule {
            api_groups: Some(vec![ApprovalRequest::group(&()).into_owned()]),
            resources: Some(vec!["approvalrequests".to_string()]),
            verbs: ["create", "get", "list", "watch", "patch"]
                .map(String::from)
                .to_vec(),
            ..PolicyRule::default()
        });
    }
    let mut role = Role {
        metadata: metadata(identity, owners),
        rules: Some(rules),
    };
    let body = role.clone();
    stamp(&mut role.metadata, &body)?;
    Ok(role)
}

/// The RoleBinding of `identity`'s Role to its service account.
pub fn build_role_binding(
    identity: &WorkloadIdentity,
    owners: &[OwnerReference],
) -> Result<RoleBinding, serde_json::Error> {
    let mut binding = RoleBinding {
        metadata: metadata(identity, owners),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: role_name(&identity.service_account),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: identity.service_account.clone(),
            namespace: Some(identity.namespace.clone()),
            ..Subject::default()
        }]),
    };
    let body = binding.clone();
    stamp(&mut binding.metadata, &body)?;
    Ok(binding)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_role_names_one_config_map_and_the_binding_one_service_account() {
        let identity = WorkloadIdentity {
            namespace: "demo".into(),
            service_account: "orders-app".into(),
        };
        let role = build_role(&identity, &[], false).unwrap();
        let rule = &role.rules.as_ref().unwrap()[0];
        assert_eq!(
            rule.resource_names.as_deref(),
            Some(&["streamward-config-orders-app".to_string()][..])
        );
        assert_eq!(rule.verbs, ["get", "list", "watch"]);
        let binding = build_role_binding(&identity, &[]).unwrap();
        let subject = &binding.subjects.as_ref().unwrap()[0];
        assert_eq!(
            (subject.kind.as_str(), subject.name.as_str()),
            ("ServiceAccount", "orders-app")
        );
        assert_eq!(binding.role_ref.name, "streamward-config-orders-app");
        // Equal inputs give equal hashes, so an unchanged Role is never rewritten.
        assert_eq!(build_role(&identity, &[], false).unwrap(), role);
        let other = WorkloadIdentity {
            namespace: "demo".into(),
            service_account: "billing".into(),
        };
        assert_ne!(
            build_role(&other, &[], false).unwrap().metadata.annotations,
            role.metadata.annotations
        );
        // Holding requests adds ApprovalRequests, and only then.
        let holding = build_role(&identity, &[], true).unwrap();
        let rules = holding.rules.as_ref().unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(
            rules[1].resources.as_deref(),
            Some(&["approvalrequests".to_string()][..])
        );
        assert!(
            !rules[1]
                .verbs
                .iter()
                .any(|v| v == "delete" || v == "update")
        );
        assert_ne!(holding.metadata.annotations, role.metadata.annotations);
    }
}

//! The pure middle of the config controller: which workload identities a namespace's
//! resources name, and the ConfigMap each identity gets.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use streamward_api::compile::Inputs;
use streamward_api::config::{ProxyConfig, WorkloadIdentity};
use streamward_api::crd::SubjectsSpec;

use crate::signing::ConfigSigner;

/// The `app.kubernetes.io/managed-by` value of everything the operator creates.
pub const MANAGED_BY: &str = "streamward-operator";
/// The label selecting the operator's ConfigMaps.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The annotation carrying the compiled config's content hash.
pub const HASH_ANNOTATION: &str = "streamward.io/config-hash";
/// The label naming the service account a ConfigMap is for.
pub const SERVICE_ACCOUNT_LABEL: &str = "streamward.io/service-account";
pub use streamward_api::config::{CONFIG_KEY, SIGNATURE_KEY};

/// The ConfigMap name of a service account's config.
pub fn config_map_name(service_account: &str) -> String {
    format!("streamward-config-{service_account}")
}

/// The workload identities of `namespace` that its StreamPolicies and AccessGrants name by
/// service account (`name`, or `namespace/name` of this namespace).
pub fn identities(inputs: &Inputs, namespace: &str) -> BTreeSet<WorkloadIdentity> {
    let subjects = inputs
        .policies
        .iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(namespace))
        .map(|p| &p.spec.subjects)
        .chain(
            inputs
                .grants
                .iter()
                .filter(|g| g.metadata.namespace.as_deref() == Some(namespace))
                .map(|g| &g.spec.subjects),
        );
    subjects
        .flat_map(|s: &SubjectsSpec| s.service_accounts.iter())
        .filter_map(|sa| match sa.split_once('/') {
            None => Some(sa.as_str()),
            Some((ns, name)) if ns == namespace => Some(name),
            Some(_) => None,
        })
        .map(|name| WorkloadIdentity {
            namespace: namespace.to_string(),
            service_account: name.to_string(),
        })
        .collect()
}

/// The owners of what the operator creates for one identity: the StreamPolicies of its
/// namespace that went into its config. Several policies may own one object; none of them is
/// its controller.
pub fn owners(config: &ProxyConfig, inputs: &Inputs) -> Vec<OwnerReference> {
    let identity = &config.identity;
    inputs
        .policies
        .iter()
        .filter(|p| {
            config
                .policies
                .iter()
                .any(|c| Some(&c.name) == p.metadata.name.as_ref())
        })
        .filter(|p| p.metadata.namespace.as_deref() == Some(identity.namespace.as_str()))
        .filter_map(|p| p.controller_owner_ref(&()))
        .map(|mut owner| {
            owner.controller = None;
            owner.block_owner_deletion = None;
            owner
        })
        .collect()
}

/// The ConfigMap of one identity: the compiled config as JSON, its hash as an annotation, and
/// the StreamPolicies that name the identity as owners.
/// The ConfigMap of `config`, its JSON signed by `signer` (under [`SIGNATURE_KEY`]) when given.
pub fn build_config_map(
    config: &ProxyConfig,
    inputs: &Inputs,
    signer: Option<&ConfigSigner>,
) -> Result<ConfigMap, serde_json::Error> {
    let json = serde_json::to_string_pretty(config)?;
    let mut data = BTreeMap::new();
    if let Some(signer) = signer {
        data.insert(SIGNATURE_KEY.to_string(), signer.sign(json.as_bytes()));
    }
    data.insert(CONFIG_KEY.to_string(), json);
    let identity = &config.identity;
    let owners = owners(config, inputs);
    Ok(ConfigMap {
        metadata: ObjectMeta {
            name: Some(config_map_name(&identity.service_account)),
            namespace: Some(identity.namespace.clone()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
                (
                    "app.kubernetes.io/name".to_string(),
                    "streamward".to_string(),
                ),
                (
                    "app.kubernetes.io/component".to_string(),
                    "proxy-config".to_string(),
                ),
                (
                    SERVICE_ACCOUNT_LABEL.to_string(),
                    identity.service_account.clone(),
                ),
            ])),
            annotations: Some(BTreeMap::from([(
                HASH_ANNOTATION.to_string(),
                config.hash.clone(),
            )])),
            owner_references: (!owners.is_empty()).then_some(owners),
            ..ObjectMeta::default()
        },
        data: Some(data),
        ..ConfigMap::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Inputs {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/samples");
        let mut inputs = Inputs::default();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let text = std::fs::read_to_string(&path).unwrap();
                inputs.extend(streamward_api::compile::parse_manifests(&text).unwrap());
            }
        }
        inputs.default_creation_timestamps("2026-01-01T00:00:00Z".parse().unwrap());
        for p in &mut inputs.policies {
            p.metadata.uid = Some("uid-1".into());
        }
        inputs
    }

    #[test]
    fn the_samples_name_one_identity_and_build_its_config_map() {
        let inputs = samples();
        let identities = identities(&inputs, "demo");
        let orders = WorkloadIdentity {
            namespace: "demo".into(),
            service_account: "orders-app".into(),
        };
        assert_eq!(identities, BTreeSet::from([orders.clone()]));
        assert!(super::identities(&inputs, "elsewhere").is_empty());

        let config = streamward_api::compile::compile(&inputs, &orders).unwrap();
        let (signer, _) = ConfigSigner::generate().unwrap();
        let map = build_config_map(&config, &inputs, Some(&signer)).unwrap();
        assert_eq!(
            map.metadata.name.as_deref(),
            Some("streamward-config-orders-app")
        );
        assert_eq!(
            map.metadata.annotations.unwrap()[HASH_ANNOTATION],
            config.hash
        );
        let owners = map.metadata.owner_references.unwrap();
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].kind, "StreamPolicy");
        let data = map.data.unwrap();
        let back: ProxyConfig = serde_json::from_str(&data[CONFIG_KEY]).unwrap();
        assert_eq!(back, config);
        assert!(crate::signing::verifies(
            signer.public_key_hex(),
            data[CONFIG_KEY].as_bytes(),
            &data[SIGNATURE_KEY]
        ));
    }

    #[test]
    fn namespaced_service_accounts_of_other_namespaces_are_not_this_namespaces_identities() {
        let mut inputs = samples();
        inputs.policies[0].spec.subjects.service_accounts =
            vec!["other/app".into(), "demo/billing".into()];
        let names: Vec<String> = identities(&inputs, "demo")
            .into_iter()
            .map(|i| i.service_account)
            .collect();
        assert_eq!(names, vec!["billing".to_string()]);
    }
}

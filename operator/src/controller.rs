//! The config controller: watches StreamTargets, StreamPolicies and AccessGrants everywhere
//! (and its own ConfigMaps, to repair drift), and reconciles each touched namespace:
//! dereference (read the namespace's objects from the caches) → validate and build (the pure
//! [`crate::configs`] functions and `streamward_api::compile`) → apply (server-side apply of
//! changed ConfigMaps only, deletion of those no identity needs any more).
//!
//! A ConfigMap whose hash annotation already matches is not written, so restarting the operator
//! writes nothing. An identity whose resources do not compile keeps its last good ConfigMap;
//! the error is logged (and, later, reported in the resources' status).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{BoxStream, SelectAll};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use streamward_api::compile::{Inputs, compile};
use streamward_api::crd::{AccessGrant, StreamPolicy, StreamTarget};

use crate::configs::{self, HASH_ANNOTATION, MANAGED_BY, MANAGED_BY_LABEL};

/// The field manager of the operator's server-side applies.
pub const FIELD_MANAGER: &str = "streamward-operator";

/// Why a namespace could not be reconciled.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused a write.
    #[error("writing ConfigMap {namespace}/{name}: {source}")]
    Write {
        /// The namespace.
        namespace: String,
        /// The ConfigMap.
        name: String,
        /// The API error.
        source: kube::Error,
    },
    /// A config could not be serialized.
    #[error("serializing the config of {0}: {1}")]
    Serialize(String, serde_json::Error),
}

/// The caches the controller reads.
#[derive(Clone)]
pub struct Caches {
    targets: Store<StreamTarget>,
    policies: Store<StreamPolicy>,
    grants: Store<AccessGrant>,
    configs: Store<ConfigMap>,
}

/// Runs the config controller until the watch streams end.
pub async fn run(client: Client) -> anyhow::Result<()> {
    let (targets, targets_writer) = reflector::store();
    let (policies, policies_writer) = reflector::store();
    let (grants, grants_writer) = reflector::store();
    let (configs, configs_writer) = reflector::store();
    let own = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));

    let mut touched: SelectAll<BoxStream<'static, Result<Option<String>, watcher::Error>>> =
        SelectAll::new();
    touched.push(namespaces(
        watcher(
            Api::<StreamTarget>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(targets_writer),
    ));
    touched.push(namespaces(
        watcher(
            Api::<StreamPolicy>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(policies_writer),
    ));
    touched.push(namespaces(
        watcher(
            Api::<AccessGrant>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(grants_writer),
    ));
    touched.push(namespaces(
        watcher(Api::<ConfigMap>::all(client.clone()), own)
            .default_backoff()
            .reflect(configs_writer),
    ));
    let caches = Caches {
        targets,
        policies,
        grants,
        configs,
    };

    let mut pending = BTreeSet::new();
    let mut ready = false;
    loop {
        tokio::select! {
            event = touched.next() => match event {
                Some(Ok(Some(namespace))) => { pending.insert(namespace); }
                Some(Ok(None)) => {}
                Some(Err(error)) => tracing::warn!(%error, "watch error (retrying)"),
                None => anyhow::bail!("the watch streams ended"),
            },
            // Settle for a moment so a burst of changes (a `kubectl apply -f dir`) is one pass.
            () = tokio::time::sleep(Duration::from_millis(200)), if !pending.is_empty() => {
                if !ready {
                    wait_ready(&caches).await?;
                    ready = true;
                }
                for namespace in std::mem::take(&mut pending) {
                    if let Err(error) = reconcile(&client, &caches, &namespace).await {
                        tracing::error!(%namespace, %error, "reconcile failed; will retry on the next change");
                    }
                }
            }
        }
    }
}

fn namespaces<K>(
    events: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
) -> BoxStream<'static, Result<Option<String>, watcher::Error>>
where
    K: Resource + Send + 'static,
{
    events
        .touched_objects()
        .map_ok(|object| object.meta().namespace.clone())
        .boxed()
}

async fn wait_ready(caches: &Caches) -> anyhow::Result<()> {
    caches.targets.wait_until_ready().await?;
    caches.policies.wait_until_ready().await?;
    caches.grants.wait_until_ready().await?;
    caches.configs.wait_until_ready().await?;
    Ok(())
}

fn in_namespace<K>(store: &Store<K>, namespace: &str) -> Vec<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store
        .state()
        .iter()
        .filter(|o| o.meta().namespace.as_deref() == Some(namespace))
        .map(|o| K::clone(o))
        .collect()
}

/// Brings the ConfigMaps of `namespace` in line with its resources.
pub async fn reconcile(client: &Client, caches: &Caches, namespace: &str) -> Result<(), Error> {
    let inputs = Inputs {
        targets: in_namespace(&caches.targets, namespace),
        policies: in_namespace(&caches.policies, namespace),
        grants: in_namespace(&caches.grants, namespace),
        ..Inputs::default()
    };
    let mut desired = BTreeMap::new();
    let mut failed = BTreeSet::new();
    for identity in configs::identities(&inputs, namespace) {
        let name = configs::config_map_name(&identity.service_account);
        match compile(&inputs, &identity) {
            Ok(config) => {
                let map = configs::build_config_map(&config, &inputs)
                    .map_err(|e| Error::Serialize(name.clone(), e))?;
                desired.insert(name, (config.hash, map));
            }
            Err(error) => {
                tracing::warn!(%namespace, service_account = %identity.service_account, %error,
                    "the resources do not compile; keeping the last good config");
                failed.insert(name);
            }
        }
    }

    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let existing: BTreeMap<String, Arc<ConfigMap>> = caches
        .configs
        .state()
        .into_iter()
        .filter(|c| c.metadata.namespace.as_deref() == Some(namespace))
        .map(|c| (c.name_any(), c))
        .collect();
    for (name, (hash, map)) in &desired {
        let current = existing
            .get(name)
            .and_then(|c| c.annotations().get(HASH_ANNOTATION).cloned());
        if current.as_ref() == Some(hash) {
            continue;
        }
        api.patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(map),
        )
        .await
        .map_err(|source| Error::Write {
            namespace: namespace.to_string(),
            name: name.clone(),
            source,
        })?;
        tracing::info!(%namespace, %name, %hash, "config applied");
    }
    for name in existing.keys() {
        if desired.contains_key(name) || failed.contains(name) {
            continue;
        }
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {
                tracing::info!(%namespace, %name, "config removed: no resource names its identity any more")
            }
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(source) => {
                return Err(Error::Write {
                    namespace: namespace.to_string(),
                    name: name.clone(),
                    source,
                });
            }
        }
    }
    tracing::info!(%namespace, configs = desired.len(), failed = failed.len(), "namespace reconciled");
    Ok(())
}

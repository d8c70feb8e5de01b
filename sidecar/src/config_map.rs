//! The operator's ConfigMap, watched through the API server.
//!
//! A mounted ConfigMap reaches the pod only when the kubelet next syncs its volumes — up to a
//! minute or more — so a revoked grant would linger. The proxy therefore watches its own
//! `streamward-config-<serviceaccount>` (its Role lets it get, list and watch that one object and
//! nothing else) and applies every change as it arrives. Until the API server has answered, the
//! mounted file (if any) is served instead, so a pod starts even while the API server is slow.
//! Once the API server has spoken it is the only authority: a deleted ConfigMap means no
//! config, and the proxy fails closed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use streamward_api::config::{CONFIG_KEY, SIGNATURE_KEY};

use crate::metrics::Metrics;
use crate::source::{self, ConfigKey, LoadError, Loaded, Source, State};

/// Which ConfigMap to watch, and where its companions are mounted.
#[derive(Clone, Debug)]
pub struct ConfigMapSource {
    /// The namespace of the workload (and of its ConfigMap).
    pub namespace: String,
    /// The ConfigMap's name.
    pub name: String,
    /// Where the target's Secrets are mounted (`<dir>/<secret>/<key>`).
    pub secrets_dir: PathBuf,
    /// The same ConfigMap mounted as a file, served until the API server answers.
    pub fallback: Option<PathBuf>,
    /// The operator's key every config must be signed with.
    pub trust: Option<Arc<ConfigKey>>,
}

/// Watches the ConfigMap and publishes each version into `state`, forever.
pub async fn watch(
    source: ConfigMapSource,
    target: Option<String>,
    state: Arc<ArcSwap<State>>,
    metrics: Arc<Metrics>,
    fallback_every: Duration,
) {
    let fallback = source.fallback.clone().map(|file| {
        tokio::spawn(source::watch(
            Source::Compiled {
                file,
                secrets_dir: source.secrets_dir.clone(),
                trust: source.trust.clone(),
            },
            target.clone(),
            state.clone(),
            metrics.clone(),
            fallback_every,
        ))
    });
    let client = loop {
        match Client::try_default().await {
            Ok(client) => break client,
            Err(error) => {
                metrics.config_source_error();
                tracing::warn!(%error, "no Kubernetes API client yet; retrying in 5 s");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    };
    let api: Api<ConfigMap> = Api::namespaced(client, &source.namespace);
    let selector = watcher::Config::default().fields(&format!("metadata.name={}", source.name));
    let mut events = watcher::watcher(api, selector).default_backoff().boxed();
    let mut fallback = fallback;
    let mut seen_in_listing = false;
    let mut last_version: Option<String> = None;
    while let Some(event) = events.next().await {
        let loaded = match event {
            Ok(Event::Init) => {
                seen_in_listing = false;
                continue;
            }
            Ok(Event::InitApply(map)) => {
                seen_in_listing = true;
                load(&source, &map, target.as_deref())
            }
            Ok(Event::InitDone) if seen_in_listing => continue,
            Ok(Event::InitDone) | Ok(Event::Delete(_)) => Err(LoadError::Target(format!(
                "ConfigMap {}/{} does not exist: no policy selects this workload yet",
                source.namespace, source.name
            ))),
            Ok(Event::Apply(map)) => load(&source, &map, target.as_deref()),
            Err(error) => {
                // The backoff retries; what is in force stays in force meanwhile.
                metrics.config_source_error();
                tracing::warn!(%error, configmap = %source.name, "watching the ConfigMap");
                continue;
            }
        };
        // The API server has answered: it alone decides from now on.
        if let Some(task) = fallback.take() {
            task.abort();
            tracing::info!(configmap = %source.name, "serving the ConfigMap from the API server");
        }
        let version = loaded.as_ref().ok().map(|l| l.config.hash.clone());
        if version.is_some() && version == last_version && matches!(**state.load(), State::Ready(_))
        {
            continue; // same content (a resync, or a metadata-only change)
        }
        last_version = version;
        source::publish(&state, &metrics, loaded);
    }
}

fn load(
    source: &ConfigMapSource,
    map: &ConfigMap,
    target: Option<&str>,
) -> Result<Loaded, LoadError> {
    let origin = Path::new("configmap")
        .join(&source.namespace)
        .join(&source.name);
    let data = map.data.as_ref();
    let text = data
        .and_then(|data| data.get(CONFIG_KEY))
        .ok_or_else(|| LoadError::Parse {
            path: origin.clone(),
            message: format!("it has no {CONFIG_KEY} key"),
        })?;
    let signature = data.and_then(|data| data.get(SIGNATURE_KEY));
    source::load_compiled(
        text,
        signature.map(String::as_str),
        source.trust.as_deref(),
        &origin,
        &source.secrets_dir,
        target,
    )
}

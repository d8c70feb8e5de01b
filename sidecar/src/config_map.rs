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

use crate::freshness::{Freshness, Serving};
use crate::metrics::Metrics;
use crate::secrets::SecretSource;
use crate::source::{self, ConfigKey, LoadError, Loaded, Source, State};

/// Which ConfigMap to watch, and where its companions are mounted.
#[derive(Clone, Debug)]
pub struct ConfigMapSource {
    /// The namespace of the workload (and of its ConfigMap).
    pub namespace: String,
    /// The ConfigMap's name.
    pub name: String,
    /// Where the Secrets the config names come from.
    pub secrets: SecretSource,
    /// The same ConfigMap mounted as a file, served until the API server answers.
    pub fallback: Option<PathBuf>,
    /// The operator's key every config must be signed with.
    pub trust: Option<Arc<ConfigKey>>,
}

/// Watches the ConfigMap and puts each version in force in `state`, forever. With
/// `freshness`, the ConfigMap is also read whenever the watch has been quiet for a third of the
/// staleness limit, every answer of the API server counts as a confirmation, and a config left
/// unconfirmed past the limit is served in its stale form ([`crate::freshness`]).
pub async fn watch(
    source: ConfigMapSource,
    target: Option<String>,
    state: Arc<ArcSwap<State>>,
    metrics: Arc<Metrics>,
    fallback_every: Duration,
    freshness: Option<Arc<Freshness>>,
) {
    // What the sources published; `serving` derives what is in force from it.
    let published = Arc::new(ArcSwap::new(state.load_full()));
    let mut serving = Serving::new(freshness.clone(), state, metrics.clone());
    let fallback = source.fallback.clone().map(|file| {
        tokio::spawn(source::watch(
            Source::Compiled {
                file,
                secrets: source.secrets.clone(),
                trust: source.trust.clone(),
            },
            target.clone(),
            published.clone(),
            metrics.clone(),
            fallback_every,
        ))
    });
    let mut tick = tokio::time::interval(fallback_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let client = loop {
        match Client::try_default().await {
            Ok(client) => break client,
            Err(error) => {
                metrics.config_source_error();
                tracing::warn!(%error, "no Kubernetes API client yet; retrying in 5 s");
                let retry = tokio::time::sleep(Duration::from_secs(5));
                tokio::pin!(retry);
                loop {
                    tokio::select! {
                        () = &mut retry => break,
                        _ = tick.tick() => serving.serve(published.load_full()),
                    }
                }
            }
        }
    };
    let api: Api<ConfigMap> = Api::namespaced(client, &source.namespace);
    let selector = watcher::Config::default().fields(&format!("metadata.name={}", source.name));
    let mut events = watcher::watcher(api.clone(), selector)
        .default_backoff()
        .boxed();
    let (probe_results, mut probes) = tokio::sync::mpsc::channel(1);
    let probe_task = freshness.clone().map(|freshness| {
        tokio::spawn(probe(
            api,
            source.name.clone(),
            freshness,
            metrics.clone(),
            probe_results,
        ))
    });
    let mut fallback = fallback;
    let mut seen_in_listing = false;
    // The ConfigMap last read, to load again when the Secrets change.
    let mut last_map: Option<ConfigMap> = None;
    let mut secrets_changed = match &source.secrets {
        SecretSource::Operator(operator) => Some(operator.subscribe()),
        SecretSource::Mounted(_) => None,
    };
    let mut last_version: Option<Result<String, String>> = None;
    let missing = || {
        Err(LoadError::Target(format!(
            "ConfigMap {}/{} does not exist: no policy selects this workload yet",
            source.namespace, source.name
        )))
    };
    loop {
        let loaded = tokio::select! {
            event = events.next() => {
                let Some(event) = event else { break };
                match event {
                    Ok(Event::Init) => {
                        seen_in_listing = false;
                        continue;
                    }
                    Ok(Event::InitApply(map)) => {
                        seen_in_listing = true;
                        refresh_secrets(&source.secrets).await;
                        let loaded = load(&source, &map, target.as_deref());
                        last_map = Some(map);
                        loaded
                    }
                    Ok(Event::InitDone) if seen_in_listing => {
                        // The relist is complete: what it listed is current.
                        if let Some(freshness) = &freshness {
                            freshness.heard();
                        }
                        serving.serve(published.load_full());
                        continue;
                    }
                    Ok(Event::InitDone) | Ok(Event::Delete(_)) => {
                        last_map = None;
                        missing()
                    }
                    Ok(Event::Apply(map)) => {
                        // A new MaskingRule or target may name a Secret not asked for yet.
                        refresh_secrets(&source.secrets).await;
                        let loaded = load(&source, &map, target.as_deref());
                        last_map = Some(map);
                        loaded
                    }
                    Err(error) => {
                        // The backoff retries; what is in force stays in force meanwhile.
                        metrics.config_source_error();
                        tracing::warn!(%error, configmap = %source.name, "watching the ConfigMap");
                        continue;
                    }
                }
            }
            Some(map) = probes.recv() => match map {
                Some(map) => {
                    let loaded = load(&source, &map, target.as_deref());
                    last_map = Some(map);
                    loaded
                }
                None => {
                    last_map = None;
                    missing()
                }
            },
            () = changed(&mut secrets_changed) => match &last_map {
                Some(map) => load(&source, map, target.as_deref()),
                None => continue,
            },
            _ = tick.tick() => {
                serving.serve(published.load_full());
                continue;
            }
        };
        // The API server has answered: it alone decides from now on.
        if let Some(freshness) = &freshness {
            freshness.heard();
        }
        if let Some(task) = fallback.take() {
            task.abort();
            tracing::info!(configmap = %source.name, "serving the ConfigMap from the API server");
        }
        // The same content again (a resync, a confirming read, a metadata-only change), or the
        // same failure, is not published again; unless the fallback published meanwhile.
        let version = match &loaded {
            Ok(loaded) => Ok(format!(
                "{}/{}",
                loaded.config.hash,
                source.secrets.version()
            )),
            Err(error) => Err(error.to_string()),
        };
        let in_force = matches!(**published.load(), State::Ready(_));
        let unchanged = last_version.as_ref() == Some(&version) && in_force == version.is_ok();
        if !unchanged {
            last_version = Some(version);
            source::publish(&published, &metrics, loaded);
        }
        serving.serve(published.load_full());
    }
    if let Some(task) = probe_task {
        task.abort();
    }
}

/// Asks the operator for the Secrets now, when they come from it (a failure is logged; the
/// last answer stays in force).
async fn refresh_secrets(secrets: &SecretSource) {
    if let SecretSource::Operator(operator) = secrets
        && let Err(error) = operator.refresh().await
    {
        tracing::warn!(%error, "the operator did not serve this proxy's Secrets");
    }
}

/// Resolves when `changes` sees a new value; never without a receiver, or once its sender is
/// gone.
async fn changed(changes: &mut Option<tokio::sync::watch::Receiver<u64>>) {
    if let Some(receiver) = changes
        && receiver.changed().await.is_ok()
    {
        return;
    }
    futures::future::pending().await
}

/// Reads the ConfigMap whenever nothing has been heard from the API server for a third of the
/// staleness limit (a quiet watch says nothing, not even that it is alive), and hands what it
/// read to the watch loop. A read that fails or hangs is given up after that third.
async fn probe(
    api: Api<ConfigMap>,
    name: String,
    freshness: Arc<Freshness>,
    metrics: Arc<Metrics>,
    results: tokio::sync::mpsc::Sender<Option<ConfigMap>>,
) {
    let every = (freshness.limit().max / 3).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(every / 4).await;
        if freshness.age() < every {
            continue;
        }
        match tokio::time::timeout(every, api.get_opt(&name)).await {
            Ok(Ok(map)) => {
                if results.send(map).await.is_err() {
                    return;
                }
            }
            Ok(Err(error)) => {
                metrics.config_source_error();
                tracing::warn!(%error, configmap = %name, "reading the ConfigMap to confirm the config");
            }
            Err(_) => {
                metrics.config_source_error();
                tracing::warn!(configmap = %name, timeout_ms = every.as_millis() as u64, "the API server did not answer a read of the ConfigMap in time");
            }
        }
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
        &source.secrets,
        target,
    )
}

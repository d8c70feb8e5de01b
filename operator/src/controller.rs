//! The config controller: watches the Streamward resources everywhere (and the ConfigMaps,
//! Roles and RoleBindings it owns, to repair drift), and reconciles each touched namespace:
//! dereference (read the namespace's objects from the caches) → plan (the pure
//! [`crate::plan`]) → apply (server-side apply of what changed, deletion of what no identity
//! needs any more, statuses, grant Events). A namespace is also reconciled again when one of
//! its grants starts or ends.
//!
//! Nothing is written unless it differs from what is there: a ConfigMap whose hash annotation
//! matches, a Role whose content hash matches, a status whose conditions match are left
//! alone, so restarting the operator writes nothing. An identity whose resources do not
//! compile keeps its last good ConfigMap; the offending resource says `Accepted=False`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{BoxStream, SelectAll};
use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use streamward_api::compile::Inputs;
use streamward_api::crd::{
    API_VERSION, AccessGrant, Approval, ApprovalRequest, MaskingRule, StreamPolicy, StreamTarget,
};

use crate::configs::{HASH_ANNOTATION, MANAGED_BY, MANAGED_BY_LABEL, config_map_name};
use crate::leader::Election;
use crate::metrics::{ErrorKind, Metrics};
use crate::plan::{self, IdentityPlan, Namespace};
use crate::rbac::CONTENT_HASH_ANNOTATION;
use crate::signing::ConfigSigner;

/// The field manager of the operator's server-side applies.
pub const FIELD_MANAGER: &str = "streamward-operator";

/// Why a namespace could not be reconciled.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused a write.
    #[error("writing {kind} {namespace}/{name}: {source}")]
    Write {
        /// The kind.
        kind: &'static str,
        /// The namespace.
        namespace: String,
        /// The object.
        name: String,
        /// The API error.
        source: kube::Error,
    },
    /// Something could not be serialized.
    #[error("serializing the objects of namespace {0}: {1}")]
    Serialize(String, serde_json::Error),
}

impl Error {
    /// The metric label of the error.
    pub fn metric_label(&self) -> ErrorKind {
        match self {
            Error::Write { .. } => ErrorKind::Write,
            Error::Serialize(..) => ErrorKind::Serialize,
        }
    }
}

/// The operator's flags for the controller, leader election and metrics.
#[derive(Clone, Debug, clap::Args)]
pub struct ControllerOptions {
    /// Where `/metrics`, `/healthz` and `/readyz` are served (plain HTTP).
    #[arg(long, env = "STREAMWARD_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// The namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "streamward-system")]
    pub lease_namespace: String,
    /// The name of the leader-election Lease.
    #[arg(long, default_value = "streamward-operator")]
    pub lease_name: String,
    /// This replica's identity in the Lease (the pod name; the host name and pid otherwise).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// How long the Lease stays held without renewal, in seconds.
    #[arg(long, default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// How often the leader renews the Lease (and a standby tries to take it), in seconds.
    #[arg(long, default_value_t = 2)]
    pub renew_seconds: u64,
    /// The Secret (in the Lease's namespace, the operator's) holding the key that signs every
    /// compiled config; made by the first replica that finds none.
    #[arg(long, default_value = "streamward-config-signing")]
    pub config_signing_secret: String,
}

/// Serves metrics, waits for leadership, then runs the controller until leadership is lost
/// (an error: the process should exit) or SIGTERM/SIGINT (the Lease is released).
pub async fn serve(
    client: Client,
    options: ControllerOptions,
    signer: Arc<ConfigSigner>,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let listener = tokio::net::TcpListener::bind(options.metrics_addr)
        .await
        .map_err(|e| anyhow::anyhow!("listening on {}: {e}", options.metrics_addr))?;
    tracing::info!(addr = %options.metrics_addr, "serving /metrics, /healthz and /readyz");
    let router = crate::metrics::router(metrics.clone());
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::error!(%error, "the metrics listener failed");
        }
    });

    let identity = options.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "streamward-operator".into());
        format!("{host}-{}", std::process::id())
    });
    let election = Election {
        namespace: options.lease_namespace.clone(),
        name: options.lease_name.clone(),
        identity: identity.clone(),
        lease_duration: Duration::from_secs(options.lease_duration_seconds.max(1)),
        renew_every: Duration::from_secs(options.renew_seconds.max(1)),
    };
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    tokio::select! {
        () = election.acquire(&client, || metrics.set_ready(true)) => {}
        () = &mut shutdown => return Ok(()),
    }
    metrics.set_leader(true);
    let reporter = Reporter {
        controller: FIELD_MANAGER.into(),
        instance: Some(identity),
    };
    tokio::select! {
        result = run(client.clone(), metrics.clone(), reporter, signer) => result,
        lost = election.keep(&client) => {
            metrics.set_leader(false);
            Err(anyhow::Error::new(lost).context("stopping: no longer the leader"))
        }
        () = &mut shutdown => {
            election.release(&client).await;
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
}

/// The caches the controller reads.
#[derive(Clone)]
pub struct Caches {
    targets: Store<StreamTarget>,
    policies: Store<StreamPolicy>,
    grants: Store<AccessGrant>,
    masking_rules: Store<MaskingRule>,
    approvals: Store<Approval>,
    requests: Store<ApprovalRequest>,
    configs: Store<ConfigMap>,
    roles: Store<Role>,
    bindings: Store<RoleBinding>,
}

type Touched = SelectAll<BoxStream<'static, Result<Option<String>, watcher::Error>>>;

fn watch<K>(client: &Client, config: watcher::Config, touched: &mut Touched) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    touched.push(
        watcher(Api::<K>::all(client.clone()), config)
            .default_backoff()
            .reflect(writer)
            .touched_objects()
            .map_ok(|object| object.meta().namespace.clone())
            .boxed(),
    );
    store
}

/// Runs the config controller until the watch streams end.
pub async fn run(
    client: Client,
    metrics: Arc<Metrics>,
    reporter: Reporter,
    signer: Arc<ConfigSigner>,
) -> anyhow::Result<()> {
    let all = watcher::Config::default;
    let own = || watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let mut touched = Touched::new();
    let caches = Caches {
        targets: watch(&client, all(), &mut touched),
        policies: watch(&client, all(), &mut touched),
        grants: watch(&client, all(), &mut touched),
        masking_rules: watch(&client, all(), &mut touched),
        approvals: watch(&client, all(), &mut touched),
        requests: watch(&client, all(), &mut touched),
        configs: watch(&client, own(), &mut touched),
        roles: watch(&client, own(), &mut touched),
        bindings: watch(&client, own(), &mut touched),
    };
    let mut controller = Controller {
        client: client.clone(),
        caches,
        metrics,
        recorder: Recorder::new(client, reporter),
        written: HashMap::new(),
        recorded: HashSet::new(),
        signer,
    };

    let mut pending = BTreeSet::new();
    let mut wakeups: BTreeMap<String, tokio::time::Instant> = BTreeMap::new();
    let mut ready = false;
    loop {
        let next_wakeup = wakeups.values().min().copied();
        tokio::select! {
            event = touched.next() => match event {
                Some(Ok(Some(namespace))) => { pending.insert(namespace); }
                Some(Ok(None)) => {}
                Some(Err(error)) => tracing::warn!(%error, "watch error (retrying)"),
                None => anyhow::bail!("the watch streams ended"),
            },
            () = sleep_until(next_wakeup), if next_wakeup.is_some() => {
                let now = tokio::time::Instant::now();
                wakeups.retain(|namespace, at| {
                    if *at <= now {
                        pending.insert(namespace.clone());
                        false
                    } else {
                        true
                    }
                });
            }
            // Settle for a moment so a burst of changes (a `kubectl apply -f dir`) is one pass.
            () = tokio::time::sleep(Duration::from_millis(200)), if !pending.is_empty() => {
                if !ready {
                    controller.wait_ready().await?;
                    ready = true;
                }
                for namespace in std::mem::take(&mut pending) {
                    let started = std::time::Instant::now();
                    match controller.reconcile(&namespace).await {
                        Ok(wake_at) => {
                            wakeups.remove(&namespace);
                            if let Some(at) = wake_at {
                                wakeups.insert(namespace.clone(), instant_of(at));
                            }
                        }
                        Err(error) => {
                            controller.metrics.error(error.metric_label());
                            tracing::error!(%namespace, %error, "reconcile failed; retrying in 10 s");
                            wakeups.insert(namespace.clone(), tokio::time::Instant::now() + Duration::from_secs(10));
                        }
                    }
                    controller.metrics.reconciled(started.elapsed());
                }
            }
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The tokio instant of a wall-clock time (a moment after it, so the time has surely passed).
fn instant_of(at: Timestamp) -> tokio::time::Instant {
    let wait = Duration::try_from(at.duration_since(Timestamp::now())).unwrap_or_default();
    tokio::time::Instant::now() + wait + Duration::from_millis(50)
}

struct Controller {
    client: Client,
    caches: Caches,
    metrics: Arc<Metrics>,
    recorder: Recorder,
    /// Statuses this process wrote, with the resourceVersion they got, by (kind, namespace,
    /// name): the caches may not have seen them yet when the next reconcile runs.
    written: HashMap<(&'static str, String, String), (u64, serde_json::Value)>,
    /// Grant events recorded: (uid, generation, reason), so a stale cache cannot repeat one.
    recorded: HashSet<(String, Option<i64>, &'static str)>,
    /// Signs every config written.
    signer: Arc<ConfigSigner>,
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

fn resource_version<K: Resource>(object: &K) -> Option<u64> {
    object.meta().resource_version.as_deref()?.parse().ok()
}

impl Controller {
    async fn wait_ready(&self) -> anyhow::Result<()> {
        let c = &self.caches;
        c.targets.wait_until_ready().await?;
        c.policies.wait_until_ready().await?;
        c.grants.wait_until_ready().await?;
        c.masking_rules.wait_until_ready().await?;
        c.approvals.wait_until_ready().await?;
        c.requests.wait_until_ready().await?;
        c.configs.wait_until_ready().await?;
        c.roles.wait_until_ready().await?;
        c.bindings.wait_until_ready().await?;
        Ok(())
    }

    /// The objects of `namespace` from `store`, with the statuses this process wrote that the
    /// cache has not seen yet.
    fn read<K>(&mut self, store: &Store<K>, kind: &'static str, namespace: &str) -> Vec<K>
    where
        K: Resource<DynamicType = ()> + Clone + 'static + HasStatus,
    {
        let mut objects = in_namespace(store, namespace);
        // Forget what was written for objects that are gone.
        let names: HashSet<String> = objects.iter().map(|o| o.name_any()).collect();
        self.written
            .retain(|(k, ns, name), _| *k != kind || ns != namespace || names.contains(name));
        for object in &mut objects {
            let key = (kind, namespace.to_string(), object.name_any());
            let Some((version, status)) = self.written.get(&key) else {
                continue;
            };
            if resource_version(object).is_some_and(|v| v < *version) {
                object.set_status(status.clone());
            } else {
                self.written.remove(&key);
            }
        }
        objects
    }

    /// Brings the namespace in line with its resources; returns when to look again.
    async fn reconcile(&mut self, namespace: &str) -> Result<Option<Timestamp>, Error> {
        let caches = self.caches.clone();
        let state = Namespace {
            name: namespace.to_string(),
            inputs: Inputs {
                targets: self.read(&caches.targets, "StreamTarget", namespace),
                policies: self.read(&caches.policies, "StreamPolicy", namespace),
                grants: self.read(&caches.grants, "AccessGrant", namespace),
                masking_rules: self.read(&caches.masking_rules, "MaskingRule", namespace),
                ..Inputs::default()
            },
            approvals: in_namespace(&caches.approvals, namespace),
            requests: self.read(&caches.requests, "ApprovalRequest", namespace),
            signer: Some(self.signer.clone()),
        };
        let plan = plan::plan(&state, Timestamp::now())
            .map_err(|e| Error::Serialize(namespace.to_string(), e))?;

        let existing_configs = by_name(&caches.configs, namespace);
        let existing_roles = by_name(&caches.roles, namespace);
        let existing_bindings = by_name(&caches.bindings, namespace);
        let mut keep = BTreeSet::new();
        let mut written = 0;
        for (sa, identity) in &plan.identities {
            let name = config_map_name(sa);
            keep.insert(name.clone());
            match identity {
                IdentityPlan::KeepLast { error } => {
                    tracing::warn!(%namespace, service_account = %sa, %error,
                        "the resources do not compile; keeping the last good config");
                }
                IdentityPlan::Write {
                    hash,
                    config_map,
                    role,
                    binding,
                } => {
                    // The data too, not only the hash: a namespace editor who rewrote the
                    // config is put right at once (and the proxy refused it meanwhile, since
                    // they cannot sign it).
                    let drifted = existing_configs
                        .get(&name)
                        .is_some_and(|existing| existing.data != config_map.data);
                    if drifted
                        || annotation(&existing_configs, &name, HASH_ANNOTATION) != Some(hash)
                    {
                        self.apply(namespace, &name, config_map.as_ref()).await?;
                        self.metrics.config_map_written();
                        written += 1;
                        tracing::info!(%namespace, %name, %hash, drifted, "config applied");
                    }
                    if annotation(&existing_roles, &name, CONTENT_HASH_ANNOTATION)
                        != role.annotations().get(CONTENT_HASH_ANNOTATION)
                    {
                        self.apply(namespace, &name, role.as_ref()).await?;
                        tracing::info!(%namespace, %name, "proxy Role applied");
                    }
                    if annotation(&existing_bindings, &name, CONTENT_HASH_ANNOTATION)
                        != binding.annotations().get(CONTENT_HASH_ANNOTATION)
                    {
                        self.apply(namespace, &name, binding.as_ref()).await?;
                        tracing::info!(%namespace, %name, "proxy RoleBinding applied");
                    }
                }
            }
        }
        self.remove_unused::<ConfigMap>(namespace, existing_configs.keys(), &keep)
            .await?;
        self.remove_unused::<Role>(namespace, existing_roles.keys(), &keep)
            .await?;
        self.remove_unused::<RoleBinding>(namespace, existing_bindings.keys(), &keep)
            .await?;

        for change in &plan.statuses {
            let version = match change.kind {
                "StreamTarget" => self.apply_status::<StreamTarget>(namespace, change).await,
                "StreamPolicy" => self.apply_status::<StreamPolicy>(namespace, change).await,
                "AccessGrant" => self.apply_status::<AccessGrant>(namespace, change).await,
                "MaskingRule" => self.apply_status::<MaskingRule>(namespace, change).await,
                _ => {
                    self.apply_status::<ApprovalRequest>(namespace, change)
                        .await
                }
            };
            match version {
                Ok(version) => {
                    self.metrics.status_written();
                    if let Some(version) = version {
                        self.written.insert(
                            (change.kind, namespace.to_string(), change.name.clone()),
                            (version, change.status.clone()),
                        );
                    }
                }
                // The object went away meanwhile: nothing to report on.
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(source) => {
                    return Err(Error::Write {
                        kind: change.kind,
                        namespace: namespace.to_string(),
                        name: change.name.clone(),
                        source,
                    });
                }
            }
        }

        for event in &plan.events {
            let key = (
                event.object.uid.clone().unwrap_or_default(),
                state
                    .inputs
                    .grants
                    .iter()
                    .find(|g| g.metadata.uid == event.object.uid)
                    .and_then(|g| g.metadata.generation),
                event.reason,
            );
            if !self.recorded.insert(key) {
                continue;
            }
            let published = self
                .recorder
                .publish(
                    &KubeEvent {
                        type_: EventType::Normal,
                        reason: event.reason.into(),
                        note: Some(event.note.clone()),
                        action: "Reconcile".into(),
                        secondary: None,
                    },
                    &event.object,
                )
                .await;
            match published {
                Ok(()) => {
                    self.metrics.event_recorded();
                    tracing::info!(%namespace, grant = ?event.object.name, reason = event.reason, "event recorded");
                }
                // An Event is a notice, not state: failing to record one must not block.
                Err(error) => tracing::warn!(%namespace, %error, "recording an Event"),
            }
        }
        // Forget the events of grants that are gone.
        let live: HashSet<String> = caches
            .grants
            .state()
            .iter()
            .filter_map(|g| g.metadata.uid.clone())
            .collect();
        self.recorded.retain(|(uid, _, _)| live.contains(uid));
        tracing::info!(%namespace, identities = plan.identities.len(), configs_written = written,
            statuses_written = plan.statuses.len(), "namespace reconciled");
        Ok(plan.wake_at)
    }

    async fn apply<K>(&self, namespace: &str, name: &str, object: &K) -> Result<(), Error>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + Debug
            + DeserializeOwned
            + Serialize,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        api.patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(object),
        )
        .await
        .map(|_| ())
        .map_err(|source| Error::Write {
            kind: kind_of::<K>(),
            namespace: namespace.to_string(),
            name: name.to_string(),
            source,
        })
    }

    async fn remove_unused<'n, K>(
        &self,
        namespace: &str,
        existing: impl Iterator<Item = &'n String>,
        keep: &BTreeSet<String>,
    ) -> Result<(), Error>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + Debug
            + DeserializeOwned,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        for name in existing.filter(|n| !keep.contains(*n)) {
            match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => {
                    tracing::info!(%namespace, %name, kind = kind_of::<K>(),
                        "removed: no resource names its identity any more")
                }
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(source) => {
                    return Err(Error::Write {
                        kind: kind_of::<K>(),
                        namespace: namespace.to_string(),
                        name: name.clone(),
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// Applies a status; returns the resourceVersion it got.
    async fn apply_status<K>(
        &self,
        namespace: &str,
        change: &plan::StatusChange,
    ) -> Result<Option<u64>, kube::Error>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + Debug
            + DeserializeOwned,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        let patch = serde_json::json!({
            "apiVersion": API_VERSION,
            "kind": change.kind,
            "status": change.status,
        });
        let updated = api
            .patch_status(
                &change.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
        tracing::info!(%namespace, kind = change.kind, name = %change.name, "status applied");
        Ok(resource_version(&updated))
    }
}

fn kind_of<K: Resource<DynamicType = ()>>() -> &'static str {
    match K::kind(&()).as_ref() {
        "ConfigMap" => "ConfigMap",
        "Role" => "Role",
        "RoleBinding" => "RoleBinding",
        _ => "object",
    }
}

fn by_name<K>(store: &Store<K>, namespace: &str) -> BTreeMap<String, Arc<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store
        .state()
        .into_iter()
        .filter(|o| o.meta().namespace.as_deref() == Some(namespace))
        .map(|o| (o.name_any(), o))
        .collect()
}

fn annotation<'m, K: Resource>(
    existing: &'m BTreeMap<String, Arc<K>>,
    name: &str,
    key: &str,
) -> Option<&'m String> {
    existing.get(name)?.meta().annotations.as_ref()?.get(key)
}

/// A custom resource whose status the controller can overlay with one it wrote.
pub trait HasStatus {
    /// Replaces the status (ignored if `status` does not deserialize).
    fn set_status(&mut self, status: serde_json::Value);
}

macro_rules! has_status {
    ($($kind:ty),*) => {$(
        impl HasStatus for $kind {
            fn set_status(&mut self, status: serde_json::Value) {
                if let Ok(status) = serde_json::from_value(status) {
                    self.status = Some(status);
                }
            }
        }
    )*};
}

has_status!(
    StreamTarget,
    StreamPolicy,
    AccessGrant,
    MaskingRule,
    ApprovalRequest
);

//! The admission webhooks: validation of the Streamward custom resources and injection of the
//! proxy into opted-in pods, served over HTTPS with the operator's own CA.
//!
//! The pure parts are [`validate`] (what is refused and why), [`inject`] (the pod patch),
//! [`certs`] (the CA, the serving certificate and when they rotate) and [`registration`] (the
//! webhook configurations). This module is the I/O around them: the server, the caches of
//! StreamTargets and MaskingRules the handlers read (so an admission needs no API call in the
//! usual case), the TLS Secret and the webhook configurations.

pub mod certs;
pub mod inject;
pub mod registration;
pub mod validate;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use axum_server::tls_rustls::RustlsConfig;
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use streamward_api::crd::{MaskingRule, StreamTarget};

use self::certs::{Renewal, TlsBundle};
use self::inject::{InjectSettings, PodContext, Skip};
use self::registration::{Endpoint, MUTATE_PODS_PATH, VALIDATE_PATH};
use self::validate::Verdict;
use crate::controller::FIELD_MANAGER;

/// The Secret (in the operator's namespace) that holds the webhook's CA and certificate.
pub const TLS_SECRET: &str = "streamward-webhook-tls";

/// Whether the proxy is injected as a native sidecar.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SidecarMode {
    /// Native where the API server is Kubernetes 1.29 or later, else a plain container.
    Auto,
    /// Always an init container with `restartPolicy: Always`.
    Native,
    /// Always a plain container.
    Container,
}

/// The webhook flags of `streamward-operator`. Without `--webhook-url` or `--webhook-service`
/// the webhooks are off.
#[derive(clap::Args, Clone, Debug)]
pub struct WebhookFlags {
    /// Register the webhooks at this URL (`https://host:port`), for an API server that reaches
    /// the operator directly (tests, or a control plane outside the cluster network).
    #[arg(long, conflicts_with = "webhook_service")]
    pub webhook_url: Option<String>,
    /// Register the webhooks behind this Service of the operator's namespace.
    #[arg(long)]
    pub webhook_service: Option<String>,
    /// The port of --webhook-service.
    #[arg(long, default_value_t = 443)]
    pub webhook_service_port: i32,
    /// Where the webhook server listens.
    #[arg(long, default_value = "0.0.0.0:9443")]
    pub webhook_listen: SocketAddr,
    /// The operator's namespace: it holds the webhook's TLS Secret and is never injected.
    #[arg(long, env = "POD_NAMESPACE", default_value = "streamward-system")]
    pub operator_namespace: String,
    /// How long a serving certificate lives, in seconds (renewed with a third left; the CA
    /// lives three times as long).
    #[arg(long, default_value_t = 30 * 24 * 3600, value_parser = clap::value_parser!(u64).range(10..))]
    pub webhook_cert_lifetime_seconds: u64,
    /// Namespaces whose pods are never injected (the operator's own is added).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "kube-system,kube-public,kube-node-lease"
    )]
    pub inject_exclude_namespaces: Vec<String>,
    /// The proxy image.
    #[arg(long, default_value = concat!("ghcr.io/streamward/streamward-sidecar:", env!("CARGO_PKG_VERSION")))]
    pub proxy_image: String,
    /// The proxy's image pull policy (the cluster default when unset).
    #[arg(long)]
    pub proxy_image_pull_policy: Option<String>,
    /// The loopback port of the proxy's bootstrap listener.
    #[arg(long, default_value_t = 9092)]
    pub proxy_port: u16,
    /// The port of the proxy's /metrics, /healthz and /readyz.
    #[arg(long, default_value_t = 9464)]
    pub proxy_admin_port: u16,
    /// The environment variable that gives app containers the bootstrap address (a pod may
    /// name another with the `streamward.io/bootstrap-env` annotation).
    #[arg(long, default_value = "KAFKA_BOOTSTRAP_SERVERS")]
    pub bootstrap_env: String,
    /// Native sidecar or plain container.
    #[arg(long, value_enum, default_value_t = SidecarMode::Auto)]
    pub sidecar_mode: SidecarMode,
}

impl WebhookFlags {
    fn endpoint(&self) -> Option<Endpoint> {
        match (&self.webhook_url, &self.webhook_service) {
            (Some(url), _) => Some(Endpoint::Url(url.clone())),
            (None, Some(name)) => Some(Endpoint::Service {
                namespace: self.operator_namespace.clone(),
                name: name.clone(),
                port: self.webhook_service_port,
            }),
            (None, None) => None,
        }
    }

    fn excluded(&self) -> BTreeSet<String> {
        self.inject_exclude_namespaces
            .iter()
            .map(|ns| ns.trim().to_owned())
            .filter(|ns| !ns.is_empty())
            .chain([self.operator_namespace.clone()])
            .collect()
    }
}

/// What the handlers share.
struct Webhooks {
    client: Client,
    targets: Store<StreamTarget>,
    masking: Store<MaskingRule>,
    inject: InjectSettings,
    excluded: BTreeSet<String>,
}

/// Runs the webhooks (server, caches, certificate rotation) until an error; never returns when
/// they are off (no `--webhook-url` or `--webhook-service`).
pub async fn run(client: Client, flags: WebhookFlags) -> anyhow::Result<()> {
    let Some(endpoint) = flags.endpoint() else {
        tracing::info!("admission webhooks off: pass --webhook-url or --webhook-service");
        return futures::future::pending().await;
    };
    let native_sidecar = match flags.sidecar_mode {
        SidecarMode::Native => true,
        SidecarMode::Container => false,
        SidecarMode::Auto => {
            let version = client
                .apiserver_version()
                .await
                .context("asking the API server for its version")?;
            supports_native_sidecars(&version.major, &version.minor)
        }
    };
    let inject = InjectSettings {
        image: flags.proxy_image.clone(),
        image_pull_policy: flags.proxy_image_pull_policy.clone(),
        port: flags.proxy_port,
        admin_port: flags.proxy_admin_port,
        bootstrap_env: flags.bootstrap_env.clone(),
        native_sidecar,
        ..InjectSettings::default()
    };
    let excluded = flags.excluded();
    tracing::info!(
        ?endpoint,
        native_sidecar,
        ?excluded,
        "admission webhooks starting"
    );

    let (targets, targets_writer) = reflector::store();
    let (masking, masking_writer) = reflector::store();
    tokio::spawn(
        watcher(Api::<StreamTarget>::all(client.clone()), Default::default())
            .default_backoff()
            .reflect(targets_writer)
            .for_each(|_| async {}),
    );
    tokio::spawn(
        watcher(Api::<MaskingRule>::all(client.clone()), Default::default())
            .default_backoff()
            .reflect(masking_writer)
            .for_each(|_| async {}),
    );

    let lifetime = Duration::from_secs(flags.webhook_cert_lifetime_seconds);
    let names = endpoint.certificate_names();
    let secrets = Api::<Secret>::namespaced(client.clone(), &flags.operator_namespace);
    let mut bundle = loop {
        match current_bundle(&secrets, &names, lifetime).await {
            Ok(bundle) => break bundle,
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "webhook certificate not ready; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    let tls = RustlsConfig::from_config(server_config(&bundle)?);
    let state = Arc::new(Webhooks {
        client: client.clone(),
        targets,
        masking,
        inject,
        excluded: excluded.clone(),
    });
    let app = Router::new()
        .route(VALIDATE_PATH, post(validate_resource))
        .route(MUTATE_PODS_PATH, post(mutate_pod))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state);
    let server =
        axum_server::bind_rustls(flags.webhook_listen, tls.clone()).serve(app.into_make_service());
    let mut server = tokio::spawn(server);
    tracing::info!(listen = %flags.webhook_listen, "webhook server listening");

    register(&client, &endpoint, &bundle, &excluded).await?;
    let check_every = (lifetime / 6).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut registered_at = Instant::now();
    loop {
        tokio::select! {
            result = &mut server => {
                return match result {
                    Ok(Ok(())) => Err(anyhow::anyhow!("the webhook server stopped")),
                    Ok(Err(error)) => Err(error).context("serving the webhooks"),
                    Err(error) => Err(error).context("the webhook server panicked"),
                };
            }
            () = tokio::time::sleep(check_every) => {}
        }
        let next = match current_bundle(&secrets, &names, lifetime).await {
            Ok(next) => next,
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "checking the webhook certificate");
                continue;
            }
        };
        let changed = next != bundle;
        // Re-apply now and then as well, so a configuration someone edited or deleted heals.
        if changed || registered_at.elapsed() > Duration::from_secs(300) {
            // The new caBundle first, so that the API server already trusts the certificate
            // it is about to be served.
            if let Err(error) = register(&client, &endpoint, &next, &excluded).await {
                tracing::warn!(error = %format!("{error:#}"), "applying the webhook configurations");
                continue;
            }
            registered_at = Instant::now();
        }
        if changed {
            tls.reload_from_config(server_config(&next)?);
            tracing::info!(
                ca = %next.meta.ca_name,
                not_after = %next.meta.cert_not_after,
                "serving a renewed webhook certificate"
            );
            bundle = next;
        }
    }
}

/// Whether Kubernetes `major.minor` runs native sidecars by default (1.29 and later).
pub fn supports_native_sidecars(major: &str, minor: &str) -> bool {
    let number = |s: &str| {
        s.trim_end_matches(|c: char| !c.is_ascii_digit())
            .parse::<u32>()
            .ok()
    };
    match (number(major), number(minor)) {
        (Some(major), Some(minor)) => major > 1 || (major == 1 && minor >= 29),
        _ => false,
    }
}

fn server_config(bundle: &TlsBundle) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let chain = CertificateDer::pem_slice_iter(bundle.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("reading the webhook certificate")?;
    let key =
        PrivateKeyDer::from_pem_slice(bundle.key.as_bytes()).context("reading the webhook key")?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("choosing TLS versions")?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .context("setting up the webhook certificate")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The bundle in the TLS Secret, made or renewed (and written back) when due. Replicas race
/// through optimistic concurrency: a write that lost is read again.
async fn current_bundle(
    secrets: &Api<Secret>,
    names: &[String],
    lifetime: Duration,
) -> anyhow::Result<TlsBundle> {
    for _ in 0..5 {
        let now = Timestamp::now();
        let existing = secrets
            .get_opt(TLS_SECRET)
            .await
            .with_context(|| format!("reading Secret {TLS_SECRET}"))?;
        let stored = existing.as_ref().and_then(|secret| {
            let data: BTreeMap<String, Vec<u8>> = secret
                .data
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            TlsBundle::from_data(&data)
        });
        let (next, renewal) = match &stored {
            Some(bundle) => bundle.renew(names, now, lifetime)?,
            None => (
                TlsBundle::generate(names, now, lifetime)?,
                Renewal::Authority,
            ),
        };
        if stored.as_ref() == Some(&next) {
            return Ok(next);
        }
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(TLS_SECRET.to_owned()),
                resource_version: existing.as_ref().and_then(|s| s.resource_version()),
                labels: Some(
                    [(
                        "app.kubernetes.io/managed-by".to_owned(),
                        FIELD_MANAGER.to_owned(),
                    )]
                    .into(),
                ),
                ..Default::default()
            },
            string_data: Some(next.to_data()),
            type_: Some("Opaque".to_owned()),
            ..Default::default()
        };
        let written = match existing {
            None => secrets.create(&PostParams::default(), &secret).await,
            Some(_) => {
                secrets
                    .replace(TLS_SECRET, &PostParams::default(), &secret)
                    .await
            }
        };
        match written {
            Ok(_) => {
                tracing::info!(
                    ?renewal,
                    "webhook certificate written to Secret {TLS_SECRET}"
                );
                return Ok(next);
            }
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(error) => {
                return Err(error).with_context(|| format!("writing Secret {TLS_SECRET}"));
            }
        }
    }
    anyhow::bail!("Secret {TLS_SECRET} kept changing under this replica; will retry")
}

/// Applies both webhook configurations with the bundle's caBundle.
async fn register(
    client: &Client,
    endpoint: &Endpoint,
    bundle: &TlsBundle,
    excluded: &BTreeSet<String>,
) -> anyhow::Result<()> {
    let ca = bundle.ca_bundle();
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let validating = registration::validating(endpoint, &ca);
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .patch(
            registration::CONFIGURATION_NAME,
            &params,
            &Patch::Apply(&validating),
        )
        .await
        .context("applying the ValidatingWebhookConfiguration")?;
    let mutating = registration::mutating(endpoint, &ca, excluded);
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .patch(
            registration::CONFIGURATION_NAME,
            &params,
            &Patch::Apply(&mutating),
        )
        .await
        .context("applying the MutatingWebhookConfiguration")?;
    Ok(())
}

/// Whether StreamTarget `name` exists in `namespace`: the cache, else the API server (the cache
/// may not have seen a target created a moment ago, as `kubectl apply -f dir` does).
async fn target_exists(state: &Webhooks, namespace: &str, name: &str) -> Result<bool, String> {
    if state
        .targets
        .get(&ObjectRef::new(name).within(namespace))
        .is_some()
    {
        return Ok(true);
    }
    Api::<StreamTarget>::namespaced(state.client.clone(), namespace)
        .get_opt(name)
        .await
        .map(|found| found.is_some())
        .map_err(|error| format!("could not look up StreamTarget {namespace}/{name}: {error}"))
}

async fn validate_resource(
    State(state): State<Arc<Webhooks>>,
    Json(review): Json<AdmissionReview<DynamicObject>>,
) -> Json<AdmissionReview<DynamicObject>> {
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(request) => request,
        Err(error) => {
            return Json(AdmissionResponse::invalid(format!("{error}")).into_review());
        }
    };
    let response = AdmissionResponse::from(&request);
    let (Some(object), Some(namespace)) = (&request.object, &request.namespace) else {
        return Json(response.into_review());
    };
    let object = match serde_json::to_value(object) {
        Ok(value) => value,
        Err(error) => return Json(response.deny(error).into_review()),
    };
    let old = request
        .old_object
        .as_ref()
        .and_then(|old| serde_json::to_value(old).ok());
    let kind = request.kind.kind.as_str();
    let verdict = validate::check(kind, namespace, &object, old.as_ref(), Timestamp::now());
    let response = match verdict {
        Verdict::Allowed => response,
        Verdict::Denied(message) => response.deny(message),
        Verdict::AllowedIfTargetExists(target) => {
            match target_exists(&state, namespace, &target).await {
                Ok(true) => response,
                Ok(false) => response.deny(validate::dangling_target(
                    kind,
                    namespace,
                    &request.name,
                    &target,
                )),
                Err(message) => response.deny(message),
            }
        }
    };
    if !response.allowed {
        tracing::info!(kind, %namespace, name = %request.name, reason = %response.result.message, "refused");
    }
    Json(response.into_review())
}

async fn mutate_pod(
    State(state): State<Arc<Webhooks>>,
    Json(review): Json<AdmissionReview<Pod>>,
) -> Json<AdmissionReview<DynamicObject>> {
    let request: AdmissionRequest<Pod> = match review.try_into() {
        Ok(request) => request,
        Err(error) => {
            return Json(AdmissionResponse::invalid(format!("{error}")).into_review());
        }
    };
    let response = AdmissionResponse::from(&request);
    let (Some(pod), Some(namespace), Operation::Create) =
        (&request.object, &request.namespace, &request.operation)
    else {
        return Json(response.into_review());
    };
    let name = pod
        .metadata
        .name
        .clone()
        .or_else(|| pod.metadata.generate_name.clone())
        .unwrap_or_default();
    match inject::should_inject(pod, namespace, &state.excluded) {
        Ok(()) => {}
        Err(Skip::Untouched(reason)) => {
            tracing::debug!(%namespace, pod = %name, %reason, "not injected");
            return Json(response.into_review());
        }
        Err(Skip::Refused(reason)) => {
            tracing::info!(%namespace, pod = %name, %reason, "pod refused");
            return Json(response.deny(reason).into_review());
        }
    }
    let target = inject::target_annotation(pod);
    if let Some(target) = target {
        match target_exists(&state, namespace, target).await {
            Ok(true) => {}
            Ok(false) => {
                return Json(
                    response
                        .deny(format!(
                            "annotation {} names StreamTarget {target:?}, which does not exist \
                             in namespace {namespace}; create it or fix the annotation",
                            inject::TARGET_ANNOTATION
                        ))
                        .into_review(),
                );
            }
            Err(message) => return Json(response.deny(message).into_review()),
        }
    }
    let in_namespace = |meta: &ObjectMeta| meta.namespace.as_deref() == Some(namespace.as_str());
    let targets = state.targets.state_filter(|t| in_namespace(&t.metadata));
    let rules = state.masking.state_filter(|r| in_namespace(&r.metadata));
    let ctx = PodContext {
        namespace: namespace.clone(),
        secrets: inject::secrets_for(
            namespace,
            inject::service_account(pod),
            target,
            targets.iter().map(|t| &**t),
            rules.iter().map(|r| &**r),
        ),
    };
    let patch = inject::plan(pod, &ctx, &state.inject);
    if patch.0.is_empty() {
        return Json(response.into_review());
    }
    tracing::info!(%namespace, pod = %name, operations = patch.0.len(), "proxy injected");
    match response.clone().with_patch(patch) {
        Ok(response) => Json(response.into_review()),
        Err(error) => Json(response.deny(error).into_review()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_sidecars_from_kubernetes_1_29() {
        assert!(supports_native_sidecars("1", "36"));
        assert!(supports_native_sidecars("1", "29+"));
        assert!(!supports_native_sidecars("1", "28"));
        assert!(supports_native_sidecars("2", "0"));
        assert!(!supports_native_sidecars("", "x"));
    }

    #[test]
    fn the_operator_namespace_is_always_excluded() {
        use clap::Parser;
        #[derive(Parser)]
        struct Flags {
            #[command(flatten)]
            webhook: WebhookFlags,
        }
        let flags = Flags::parse_from([
            "operator",
            "--operator-namespace",
            "ops",
            "--inject-exclude-namespaces",
            "kube-system, ,team-a",
        ]);
        assert_eq!(
            flags.webhook.excluded(),
            ["kube-system", "ops", "team-a"]
                .map(String::from)
                .into_iter()
                .collect()
        );
        assert_eq!(flags.webhook.endpoint(), None);
        let flags = Flags::parse_from([
            "operator",
            "--webhook-service",
            "streamward-webhook",
            "--operator-namespace",
            "ops",
        ]);
        assert_eq!(
            flags.webhook.endpoint(),
            Some(Endpoint::Service {
                namespace: "ops".into(),
                name: "streamward-webhook".into(),
                port: 443
            })
        );
    }
}

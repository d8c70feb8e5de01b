//! The admission webhooks: validation of the Streamward custom resources and injection of the
//! proxy into opted-in pods, served over HTTPS with the operator's own CA.
//!
//! The pure parts are [`validate`] (what is refused and why), [`inject`] (the pod patch),
//! [`certs`] (the CA, the serving certificate and when they rotate) and [`registration`] (the
//! webhook configurations). This module is the I/O around them: the server, the caches of
//! StreamTargets and MaskingRules the handlers read (so an admission needs no API call in the
//! usual case), the TLS Secret and the webhook configurations.

pub mod approval;
pub mod certs;
pub mod guard;
pub mod inject;
pub mod proxy_secrets;
pub mod registration;
pub mod secrets;
pub mod validate;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
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
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use streamward_api::approval::ApprovalSettings;
use streamward_api::crd::{
    AccessGrant, Approval, ApprovalRequest, ApprovalTarget, Approver, MaskingRule, RequestRef,
    StreamPolicy, StreamTarget,
};
use tokio::sync::watch;

use self::approval::Decided;
use self::inject::{InjectSettings, PodContext, Skip};
use self::registration::{
    Endpoint, MUTATE_PODS_PATH, MUTATE_RESOURCES_PATH, VALIDATE_CONNECT_PATH, VALIDATE_PATH,
    VALIDATE_PODS_PATH, VALIDATE_TOKENS_PATH,
};
use self::secrets::{Serving, TlsSecret};
use self::validate::Verdict;
use crate::controller::FIELD_MANAGER;
use crate::signing::ConfigSigner;

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
    /// The proxy's CPU request.
    #[arg(long, default_value = "20m")]
    pub proxy_cpu_request: String,
    /// The proxy's memory request.
    #[arg(long, default_value = "32Mi")]
    pub proxy_memory_request: String,
    /// The proxy's memory limit.
    #[arg(long, default_value = "128Mi")]
    pub proxy_memory_limit: String,
    /// The audit collector injected proxies send their events to (`https://host:port`).
    /// Without it (or --audit-disabled) opted-in pods are refused: a proxy that audits nothing
    /// must be an explicit choice.
    #[arg(
        long,
        env = "STREAMWARD_COLLECTOR_URL",
        conflicts_with = "audit_disabled"
    )]
    pub collector_url: Option<String>,
    /// The audience of the token each proxy presents to the collector (the collector's
    /// TokenReview checks it).
    #[arg(long, default_value = "streamward-collector")]
    pub collector_audience: String,
    /// The Secret (in the operator's namespace) with the collector's serving certificate: the
    /// operator issues it from a CA of its own (or reads it, with --external-certificates) and
    /// gives the proxies that CA.
    #[arg(long, requires = "collector_url", conflicts_with = "collector_ca_file")]
    pub collector_tls_secret: Option<String>,
    /// The collector's Service in the operator's namespace: its DNS names go on the
    /// certificate of --collector-tls-secret (default: the host of --collector-url).
    #[arg(long, requires = "collector_tls_secret")]
    pub collector_service_name: Option<String>,
    /// How long the collector's certificate lives, in seconds (renewed with a third left; its
    /// CA lives three times as long and is handed to proxies when they are injected).
    #[arg(long, default_value_t = 365 * 24 * 3600, value_parser = clap::value_parser!(u64).range(10..))]
    pub collector_cert_lifetime_seconds: u64,
    /// The collector's CA certificates (PEM), for a collector whose certificate the operator
    /// does not issue (default without either: the system's roots).
    #[arg(long, requires = "collector_url")]
    pub collector_ca_file: Option<PathBuf>,
    /// The bound of each proxy's audit spool in bytes; the spool's emptyDir gets a quarter more.
    #[arg(long, default_value_t = 48 * 1024 * 1024)]
    pub proxy_audit_spool_bytes: u64,
    /// What an injected proxy does while its audit spool is full: `continue` (forward, drop
    /// the events that do not fit, count and report the loss) or `refuse` (answer new requests
    /// with POLICY_VIOLATION until the spool drains: NIST SP 800-53 AU-5).
    #[arg(long, default_value = "continue", value_parser = ["continue", "refuse"])]
    pub proxy_audit_full: String,
    /// The longest an injected proxy serves a config the API server has not confirmed (e.g.
    /// `5m`, `30s`; `0` never lets it go stale). Past it, what --proxy-stale-config says fails
    /// closed and the proxy's /readyz says why, until the API server answers again.
    #[arg(long, default_value = "5m")]
    pub proxy_max_config_staleness: String,
    /// What fails closed in a proxy whose config is stale: `grants` (AccessGrants stop
    /// counting) or `all` (every request is refused).
    #[arg(long, default_value = "grants", value_parser = ["grants", "all"])]
    pub proxy_stale_config: String,
    /// Inject proxies that send no audit events.
    #[arg(long)]
    pub audit_disabled: bool,
    /// The namespace of the Secrets proxies use (broker credentials, CA bundles, masking
    /// keys); default: the operator's. Each must list the workload namespaces allowed to use
    /// it in its `streamward.io/allowed-namespaces` annotation. Nobody in a workload's
    /// namespace can read them: the operator serves each proxy its own.
    #[arg(long)]
    pub secrets_namespace: Option<String>,
    /// The audience of the token a proxy presents for its Secrets.
    #[arg(long, default_value = streamward_api::secrets::SECRETS_AUDIENCE)]
    pub secrets_audience: String,
    /// The TLS Secrets (`streamward-webhook-tls`, --collector-tls-secret) are written by
    /// someone else, e.g. cert-manager with `tls.crt`, `tls.key` and `ca.crt`: read them, never
    /// write them.
    #[arg(long)]
    pub external_certificates: bool,
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

    /// The DNS names (or address) of the collector's certificate.
    fn collector_names(&self) -> Vec<String> {
        let endpoint = match &self.collector_service_name {
            Some(name) => Endpoint::Service {
                namespace: self.operator_namespace.clone(),
                name: name.clone(),
                port: 0,
            },
            None => Endpoint::Url(self.collector_url.clone().unwrap_or_default()),
        };
        endpoint.certificate_names()
    }

    fn secrets_namespace(&self) -> &str {
        self.secrets_namespace
            .as_deref()
            .unwrap_or(&self.operator_namespace)
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
    audit: AuditWiring,
    excluded: BTreeSet<String>,
    secrets: SecretsWiring,
}

/// How proxies get their Secrets: from this server, trusting its CA.
struct SecretsWiring {
    /// This server's base URL, as proxies reach it.
    url: String,
    /// The audience of their tokens.
    audience: String,
    /// Where the Secrets live.
    namespace: String,
    /// The CA certificates of this server's certificate, kept current by [`run`].
    ca: watch::Receiver<String>,
    /// The operator's key: it signs each proxy container injected, and checks the signature
    /// before serving it.
    signer: Arc<ConfigSigner>,
}

/// How injected proxies are told to audit, from the flags.
enum AuditWiring {
    /// Neither `--collector-url` nor `--audit-disabled`: opted-in pods are refused.
    Unconfigured,
    /// `--audit-disabled`.
    Disabled,
    /// To this collector, trusting the CA certificates `ca` holds (`None` inside: not known
    /// yet, as when the collector's certificate is not issued yet; the pod is refused).
    Collector {
        url: String,
        audience: String,
        ca: CollectorCa,
        spool_bytes: u64,
        full: String,
    },
}

/// Where the collector's CA certificates come from.
enum CollectorCa {
    /// The system's roots: the proxy gets none.
    System,
    /// Read once from `--collector-ca-file`.
    Fixed(String),
    /// From the collector's TLS Secret, kept current by a task of [`run`].
    Secret(watch::Receiver<Option<String>>),
}

impl AuditWiring {
    fn from_flags(
        flags: &WebhookFlags,
    ) -> anyhow::Result<(AuditWiring, Option<watch::Sender<Option<String>>>)> {
        if flags.audit_disabled {
            return Ok((AuditWiring::Disabled, None));
        }
        let Some(url) = &flags.collector_url else {
            return Ok((AuditWiring::Unconfigured, None));
        };
        let mut sender = None;
        let ca = match (&flags.collector_ca_file, &flags.collector_tls_secret) {
            (Some(file), _) => CollectorCa::Fixed(
                std::fs::read_to_string(file)
                    .with_context(|| format!("reading --collector-ca-file {}", file.display()))?,
            ),
            (None, Some(_)) => {
                let (tx, rx) = watch::channel(None);
                sender = Some(tx);
                CollectorCa::Secret(rx)
            }
            (None, None) => CollectorCa::System,
        };
        let wiring = AuditWiring::Collector {
            url: url.clone(),
            audience: flags.collector_audience.clone(),
            ca,
            spool_bytes: flags.proxy_audit_spool_bytes,
            full: flags.proxy_audit_full.clone(),
        };
        Ok((wiring, sender))
    }

    /// What the proxy of a pod admitted now gets, or why the pod is refused.
    fn target(&self) -> Result<Option<inject::AuditTarget>, String> {
        match self {
            AuditWiring::Unconfigured => Err(
                "Streamward cannot audit this pod's Kafka traffic: the operator has no collector \
                 (--collector-url); install the collector, or start the operator with \
                 --audit-disabled to run proxies without audit"
                    .to_owned(),
            ),
            AuditWiring::Disabled => Ok(None),
            AuditWiring::Collector {
                url,
                audience,
                ca,
                spool_bytes,
                full,
            } => {
                let ca_pem = match ca {
                    CollectorCa::System => None,
                    CollectorCa::Fixed(pem) => Some(pem.clone()),
                    CollectorCa::Secret(rx) => Some(rx.borrow().clone().ok_or_else(|| {
                        "the audit collector's certificate is not issued yet; retry in a few \
                         seconds"
                            .to_owned()
                    })?),
                };
                Ok(Some(inject::AuditTarget {
                    url: url.clone(),
                    audience: audience.clone(),
                    ca_pem,
                    spool_bytes: *spool_bytes,
                    full: full.clone(),
                }))
            }
        }
    }
}

/// Runs the webhooks (server, caches, certificate rotation) until an error; never returns when
/// they are off (no `--webhook-url` or `--webhook-service`).
pub async fn run(
    client: Client,
    flags: WebhookFlags,
    signer: Arc<ConfigSigner>,
) -> anyhow::Result<()> {
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
        cpu_request: flags.proxy_cpu_request.clone(),
        memory_request: flags.proxy_memory_request.clone(),
        memory_limit: flags.proxy_memory_limit.clone(),
        max_config_staleness: flags.proxy_max_config_staleness.clone(),
        stale_config: flags.proxy_stale_config.clone(),
        audit: None,
        config_public_key: Some(signer.public_key_hex().to_owned()),
        secrets: None,
        signer: Some(inject::ProxySigner(signer.clone())),
    };
    let (audit, collector_ca) = AuditWiring::from_flags(&flags)?;
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

    let secrets = Api::<Secret>::namespaced(client.clone(), &flags.operator_namespace);
    if let (Some(sender), Some(name)) = (collector_ca, &flags.collector_tls_secret) {
        let lifetime = Duration::from_secs(flags.collector_cert_lifetime_seconds);
        let secret = TlsSecret::new(
            secrets.clone(),
            name,
            flags.collector_names(),
            lifetime,
            flags.external_certificates,
        );
        tokio::spawn(keep_collector_certificate(
            secret,
            sender,
            check_interval(lifetime),
        ));
    }

    let lifetime = Duration::from_secs(flags.webhook_cert_lifetime_seconds);
    let webhook_secret = TlsSecret::new(
        secrets,
        TLS_SECRET,
        endpoint.certificate_names(),
        lifetime,
        flags.external_certificates,
    );
    let mut bundle = loop {
        match webhook_secret.current().await {
            Ok(bundle) => break bundle,
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "webhook certificate not ready; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    let tls = RustlsConfig::from_config(server_config(&bundle)?);
    let (secrets_ca, secrets_ca_rx) = watch::channel(bundle.ca_bundle.clone());
    let state = Arc::new(Webhooks {
        client: client.clone(),
        targets,
        masking,
        inject,
        audit,
        excluded: excluded.clone(),
        secrets: SecretsWiring {
            url: endpoint.base_url(),
            audience: flags.secrets_audience.clone(),
            namespace: flags.secrets_namespace().to_owned(),
            ca: secrets_ca_rx,
            signer,
        },
    });
    let app = Router::new()
        .route(VALIDATE_PATH, post(validate_resource))
        .route(MUTATE_PODS_PATH, post(mutate_pod))
        .route(MUTATE_RESOURCES_PATH, post(stamp_resource))
        .route(VALIDATE_PODS_PATH, post(validate_pod))
        .route(VALIDATE_CONNECT_PATH, post(validate_connect))
        .route(VALIDATE_TOKENS_PATH, post(validate_token_request))
        .route(
            streamward_api::secrets::PROXY_SECRETS_PATH,
            get(serve_proxy_secrets),
        )
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state);
    let server =
        axum_server::bind_rustls(flags.webhook_listen, tls.clone()).serve(app.into_make_service());
    let mut server = tokio::spawn(server);
    tracing::info!(listen = %flags.webhook_listen, "webhook server listening");

    // The audiences only the injected proxy's projected tokens are for.
    let audiences = vec![
        flags.secrets_audience.clone(),
        flags.collector_audience.clone(),
    ];
    register(&client, &endpoint, &bundle.ca_bundle, &excluded, &audiences).await?;
    let check_every = check_interval(lifetime);
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
        let next = match webhook_secret.current().await {
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
            if let Err(error) =
                register(&client, &endpoint, &next.ca_bundle, &excluded, &audiences).await
            {
                tracing::warn!(error = %format!("{error:#}"), "applying the webhook configurations");
                continue;
            }
            registered_at = Instant::now();
        }
        if changed {
            tls.reload_from_config(server_config(&next)?);
            secrets_ca.send_replace(next.ca_bundle.clone());
            tracing::info!("serving a renewed webhook certificate");
            bundle = next;
        }
    }
}

/// How often a certificate of `lifetime` is checked for renewal.
fn check_interval(lifetime: Duration) -> Duration {
    (lifetime / 6).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// Keeps the collector's certificate issued and current, and `ca` holding the CA certificates
/// the proxies injected from now on must trust.
async fn keep_collector_certificate(
    secret: TlsSecret,
    ca: watch::Sender<Option<String>>,
    every: Duration,
) {
    loop {
        match secret.current().await {
            Ok(serving) => {
                ca.send_if_modified(|current| {
                    let changed = current.as_deref() != Some(serving.ca_bundle.as_str());
                    if changed {
                        *current = Some(serving.ca_bundle);
                    }
                    changed
                });
            }
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "the collector's certificate is not ready; retrying");
            }
        }
        let wait = if ca.borrow().is_some() {
            every
        } else {
            Duration::from_secs(2)
        };
        tokio::time::sleep(wait).await;
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

fn server_config(bundle: &Serving) -> anyhow::Result<Arc<rustls::ServerConfig>> {
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

/// Applies both webhook configurations with `ca` as their caBundle.
async fn register(
    client: &Client,
    endpoint: &Endpoint,
    ca: &str,
    excluded: &BTreeSet<String>,
    audiences: &[String],
) -> anyhow::Result<()> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let validating = registration::validating(endpoint, ca, excluded, audiences);
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .patch(
            registration::CONFIGURATION_NAME,
            &params,
            &Patch::Apply(&validating),
        )
        .await
        .context("applying the ValidatingWebhookConfiguration")?;
    let mutating = registration::mutating(endpoint, ca, excluded);
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
) -> Review {
    let request: AdmissionRequest<DynamicObject> = match admission_request(review) {
        Ok(request) => request,
        Err(invalid) => return *invalid,
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
    let caller = caller(&request);
    let guarded = match (kind, &request.operation) {
        ("Approval", Operation::Create) => {
            check_new_approval(&state, namespace, &object, &caller).await
        }
        ("Approval", _) => match &old {
            Some(old) if old.get("spec") != object.get("spec") => {
                Err("an Approval cannot be changed; delete it and create a new one".to_owned())
            }
            _ => Ok(()),
        },
        ("ApprovalRequest", Operation::Create) => {
            approval::check_new_request(&object, &caller, namespace)
        }
        ("ApprovalRequest", _) => match &old {
            Some(old) => approval::check_request_update(old, &object),
            None => Ok(()),
        },
        ("AccessGrant", Operation::Create) => approval::check_new_grant(&object, &caller),
        ("AccessGrant", _) => match &old {
            Some(old) => approval::check_grant_update(old, &object),
            None => Ok(()),
        },
        _ => Ok(()),
    };
    if let Err(message) = guarded {
        tracing::info!(kind, %namespace, name = %request.name, user = %caller.user, reason = %message, "refused");
        return Json(response.deny(message).into_review());
    }
    if kind == "Approval" || kind == "ApprovalRequest" {
        return Json(response.into_review());
    }
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

type Review = Json<AdmissionReview<DynamicObject>>;

/// The request of an AdmissionReview, or the answer to one that holds none.
fn admission_request<K>(review: AdmissionReview<K>) -> Result<AdmissionRequest<K>, Box<Review>>
where
    K: kube::Resource,
    AdmissionReview<K>: TryInto<AdmissionRequest<K>, Error: std::fmt::Display>,
{
    review.try_into().map_err(|error| {
        Box::new(Json(
            AdmissionResponse::invalid(format!("{error}")).into_review(),
        ))
    })
}

/// `response` with `patch`, or refused if the patch cannot be encoded.
fn patched(response: AdmissionResponse, patch: json_patch::Patch) -> Review {
    match response.clone().with_patch(patch) {
        Ok(response) => Json(response.into_review()),
        Err(error) => Json(response.deny(error).into_review()),
    }
}

/// The user the API server authenticated for an admission request.
fn caller<K: kube::Resource>(request: &AdmissionRequest<K>) -> Approver {
    Approver {
        user: request.user_info.username.clone().unwrap_or_default(),
        groups: request.user_info.groups.clone().unwrap_or_default(),
    }
}

/// The object an Approval's `requestRef` names, as stored now.
enum DecidedObject {
    Grant(Box<AccessGrant>),
    Request(Box<ApprovalRequest>),
}

impl DecidedObject {
    fn as_decided(&self) -> Decided<'_> {
        match self {
            DecidedObject::Grant(grant) => Decided::Grant(grant),
            DecidedObject::Request(request) => Decided::Request(request),
        }
    }
}

async fn decided_object(
    client: &Client,
    namespace: &str,
    reference: &RequestRef,
) -> Result<DecidedObject, String> {
    let missing = || {
        format!(
            "{:?} {namespace}/{} does not exist; an Approval decides on an existing object",
            reference.kind, reference.name
        )
    };
    let failed = |error: kube::Error| {
        format!(
            "could not look up {:?} {namespace}/{}: {error}",
            reference.kind, reference.name
        )
    };
    match reference.kind {
        ApprovalTarget::AccessGrant => Api::<AccessGrant>::namespaced(client.clone(), namespace)
            .get_opt(&reference.name)
            .await
            .map_err(failed)?
            .map(|grant| DecidedObject::Grant(Box::new(grant)))
            .ok_or_else(missing),
        ApprovalTarget::ApprovalRequest => {
            Api::<ApprovalRequest>::namespaced(client.clone(), namespace)
                .get_opt(&reference.name)
                .await
                .map_err(failed)?
                .map(|request| DecidedObject::Request(Box::new(request)))
                .ok_or_else(missing)
        }
    }
}

/// The approval settings that apply to `decided`: its namespace's for a grant, the asking
/// policy's for a held request.
async fn approval_settings(
    client: &Client,
    namespace: &str,
    decided: &DecidedObject,
) -> Result<ApprovalSettings, String> {
    let policies = Api::<StreamPolicy>::namespaced(client.clone(), namespace);
    let failed =
        |error: kube::Error| format!("could not read the StreamPolicies of {namespace}: {error}");
    match decided {
        DecidedObject::Grant(_) => {
            let list = policies.list(&Default::default()).await.map_err(failed)?;
            Ok(ApprovalSettings::for_grants(&list.items))
        }
        DecidedObject::Request(request) => Ok(policies
            .get_opt(&request.spec.policy)
            .await
            .map_err(failed)?
            .as_ref()
            .map(ApprovalSettings::of_policy)
            .unwrap_or_default()),
    }
}

async fn check_new_approval(
    state: &Webhooks,
    namespace: &str,
    object: &serde_json::Value,
    caller: &Approver,
) -> Result<(), String> {
    let approval = Approval::deserialize(object).map_err(|e| format!("Approval: {e}"))?;
    let decided = decided_object(&state.client, namespace, &approval.spec.request_ref).await?;
    let settings = approval_settings(&state.client, namespace, &decided).await?;
    approval::check_approval(
        &approval,
        caller,
        decided.as_decided(),
        namespace,
        &settings,
        Timestamp::now(),
    )
}

/// Refuses changes to an injected pod's proxy, and ephemeral containers that reach into it.
async fn validate_pod(Json(review): Json<AdmissionReview<Pod>>) -> Review {
    let request: AdmissionRequest<Pod> = match admission_request(review) {
        Ok(request) => request,
        Err(invalid) => return *invalid,
    };
    let response = AdmissionResponse::from(&request);
    let (Some(new), Some(old)) = (&request.object, &request.old_object) else {
        return Json(response.into_review());
    };
    match guard::check_update(old, new, inject::PROXY_CONTAINER) {
        Ok(()) => Json(response.into_review()),
        Err(reason) => {
            tracing::info!(
                namespace = ?request.namespace,
                pod = %request.name,
                user = ?request.user_info.username,
                %reason,
                "pod update refused"
            );
            Json(response.deny(reason).into_review())
        }
    }
}

/// Stamps a new Approval (its approver, the uid it decides on) or AccessGrant (who asked).
async fn stamp_resource(
    State(state): State<Arc<Webhooks>>,
    Json(review): Json<AdmissionReview<DynamicObject>>,
) -> Review {
    let request: AdmissionRequest<DynamicObject> = match admission_request(review) {
        Ok(request) => request,
        Err(invalid) => return *invalid,
    };
    let response = AdmissionResponse::from(&request);
    let (Some(object), Some(namespace), Operation::Create) =
        (&request.object, &request.namespace, &request.operation)
    else {
        return Json(response.into_review());
    };
    let object = match serde_json::to_value(object) {
        Ok(value) => value,
        Err(error) => return Json(response.deny(error).into_review()),
    };
    let caller = caller(&request);
    let patch = match request.kind.kind.as_str() {
        "Approval" => {
            let approval = match Approval::deserialize(&object) {
                Ok(approval) => approval,
                Err(error) => {
                    return Json(response.deny(format!("Approval: {error}")).into_review());
                }
            };
            match decided_object(&state.client, namespace, &approval.spec.request_ref).await {
                Ok(decided) => approval::stamp_approval(&caller, decided.as_decided()),
                Err(message) => return Json(response.deny(message).into_review()),
            }
        }
        "AccessGrant" => approval::stamp_grant(&object, &caller),
        _ => return Json(response.into_review()),
    };
    patched(response, patch)
}

async fn mutate_pod(
    State(state): State<Arc<Webhooks>>,
    Json(review): Json<AdmissionReview<Pod>>,
) -> Review {
    let request: AdmissionRequest<Pod> = match admission_request(review) {
        Ok(request) => request,
        Err(invalid) => return *invalid,
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
    let ctx = PodContext {
        namespace: namespace.clone(),
    };
    let settings = match state.audit.target() {
        Ok(audit) => InjectSettings {
            audit,
            secrets: Some(inject::SecretsEndpoint {
                url: state.secrets.url.clone(),
                audience: state.secrets.audience.clone(),
                ca_pem: state.secrets.ca.borrow().clone(),
            }),
            ..state.inject.clone()
        },
        Err(reason) => {
            tracing::info!(%namespace, pod = %name, %reason, "pod refused");
            return Json(response.deny(reason).into_review());
        }
    };
    let patch = match inject::plan(pod, &ctx, &settings) {
        Ok(patch) => patch,
        Err(reason) => {
            tracing::info!(%namespace, pod = %name, %reason, "pod refused");
            return Json(response.deny(reason).into_review());
        }
    };
    if patch.0.is_empty() {
        return Json(response.into_review());
    }
    tracing::info!(%namespace, pod = %name, operations = patch.0.len(), "proxy injected");
    patched(response, patch)
}

/// Refuses `kubectl exec` and `attach` into a proxy container: a process started there could
/// read the proxy's token for its Secrets and run the proxy's binary with other flags. The
/// object of a CONNECT review is the exec or attach options (no metadata), so the review is
/// read as plain JSON.
async fn validate_connect(Json(review): Json<serde_json::Value>) -> Json<serde_json::Value> {
    let request = &review["request"];
    let uid = request["uid"].clone();
    let container = request["object"]["container"].as_str().unwrap_or_default();
    let refused = container == inject::PROXY_CONTAINER;
    let mut response = serde_json::json!({"uid": uid, "allowed": !refused});
    if refused {
        let message = format!(
            "{} into the {} container is refused: a process there could read the token the \
             proxy gets its broker credentials with; read the proxy's logs and /metrics instead",
            request["subResource"].as_str().unwrap_or("exec"),
            inject::PROXY_CONTAINER,
        );
        tracing::info!(
            namespace = request["namespace"].as_str().unwrap_or_default(),
            pod = request["name"].as_str().unwrap_or_default(),
            user = request["userInfo"]["username"].as_str().unwrap_or_default(),
            "exec into a proxy refused"
        );
        response["status"] =
            serde_json::json!({"code": 403, "reason": "Forbidden", "message": message});
    }
    Json(serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    }))
}

/// Refuses a TokenRequest for one of Streamward's audiences (the registration's match condition
/// sends no other) unless a node (the kubelet, filling a projected volume) or a cluster admin
/// asks: such a token, bound to an injected pod, would fetch its proxy's broker credentials or
/// post audit events in its name, and a namespace editor may create `serviceaccounts/token`.
async fn validate_token_request(Json(review): Json<serde_json::Value>) -> Json<serde_json::Value> {
    let request = &review["request"];
    let groups: Vec<&str> = request["userInfo"]["groups"]
        .as_array()
        .map(|g| g.iter().filter_map(|g| g.as_str()).collect())
        .unwrap_or_default();
    let user = request["userInfo"]["username"].as_str().unwrap_or_default();
    let allowed = proxy_secrets::may_mint_proxy_tokens(user, &groups);
    let mut response = serde_json::json!({"uid": request["uid"].clone(), "allowed": allowed});
    if !allowed {
        tracing::warn!(
            namespace = request["namespace"].as_str().unwrap_or_default(),
            service_account = request["name"].as_str().unwrap_or_default(),
            %user,
            "a token for a Streamward audience refused"
        );
        response["status"] = serde_json::json!({
            "code": 403,
            "reason": "Forbidden",
            "message": format!(
                "{user} may not mint a token for a Streamward audience: only the kubelet does, \
                 for the proxy container's projected volumes (such a token fetches the proxy's \
                 broker credentials or sends audit events in its name)"
            ),
        });
    }
    Json(serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    }))
}

/// `GET /v1/proxy-secrets`: the Secrets of the injected proxy whose token this is (see
/// [`proxy_secrets`]).
async fn serve_proxy_secrets(
    State(state): State<Arc<Webhooks>>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let refuse = |status: StatusCode, message: String| {
        (status, Json(serde_json::json!({ "error": message }))).into_response()
    };
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "no bearer token: present the proxy's projected token".into(),
        );
    };
    let bound = match review_proxy_token(&state.client, token, &state.secrets.audience).await {
        Ok(bound) => bound,
        Err(ProxyTokenError::Unavailable(message)) => {
            return refuse(StatusCode::SERVICE_UNAVAILABLE, message);
        }
        Err(ProxyTokenError::Refused(message)) => {
            tracing::warn!(reason = %message, "a request for proxy Secrets was refused");
            return refuse(StatusCode::UNAUTHORIZED, message);
        }
    };
    let pods = Api::<Pod>::namespaced(state.client.clone(), &bound.namespace);
    let pod = match pods.get_opt(&bound.name).await {
        Ok(Some(pod)) => pod,
        Ok(None) => {
            return refuse(
                StatusCode::FORBIDDEN,
                format!("pod {}/{} does not exist", bound.namespace, bound.name),
            );
        }
        Err(error) => {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("reading pod {}/{}: {error}", bound.namespace, bound.name),
            );
        }
    };
    let key = state.secrets.signer.public_key_hex().to_owned();
    if let Some(reason) =
        proxy_secrets::refuse_pod(&pod, &bound, &state.secrets.audience, |data, signature| {
            crate::signing::verifies(&key, data, signature)
        })
    {
        tracing::warn!(
            namespace = %bound.namespace,
            pod = %bound.name,
            %reason,
            "proxy Secrets refused"
        );
        return refuse(StatusCode::FORBIDDEN, reason);
    }
    let in_namespace =
        |meta: &ObjectMeta| meta.namespace.as_deref() == Some(bound.namespace.as_str());
    let targets = state.targets.state_filter(|t| in_namespace(&t.metadata));
    let rules = state.masking.state_filter(|r| in_namespace(&r.metadata));
    let target = inject::target_annotation(&pod);
    let names = proxy_secrets::valid_names(inject::secrets_for(
        &bound.namespace,
        &bound.service_account,
        target,
        targets.iter().map(|t| &**t),
        rules.iter().map(|r| &**r),
    ));
    let credential_servers =
        proxy_secrets::credential_servers(target, targets.iter().map(|t| &**t));
    let secrets = Api::<Secret>::namespaced(state.client.clone(), &state.secrets.namespace);
    let mut answer = streamward_api::secrets::ProxySecrets::default();
    for name in names {
        let secret = match secrets.get_opt(&name).await {
            Ok(Some(secret)) => secret,
            Ok(None) => {
                answer.withheld.insert(
                    name.clone(),
                    format!(
                        "Secret {}/{name} does not exist (Streamward reads Secrets from its \
                         own namespace)",
                        state.secrets.namespace
                    ),
                );
                continue;
            }
            Err(error) => {
                return refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("reading Secret {}/{name}: {error}", state.secrets.namespace),
                );
            }
        };
        if let Some(reason) = proxy_secrets::withhold(
            &name,
            secret.metadata.annotations.as_ref(),
            &bound.namespace,
            &state.secrets.namespace,
            credential_servers.get(&name).unwrap_or(&BTreeSet::new()),
        ) {
            answer.withheld.insert(name, reason);
            continue;
        }
        answer.secrets.insert(name, secret.data.unwrap_or_default());
    }
    tracing::info!(
        namespace = %bound.namespace,
        pod = %bound.name,
        served = ?answer.secrets.keys().collect::<Vec<_>>(),
        withheld = ?answer.withheld.keys().collect::<Vec<_>>(),
        "proxy Secrets served"
    );
    Json(answer).into_response()
}

/// Why a proxy's token was not accepted.
enum ProxyTokenError {
    /// Not a valid token for the audience, or not a pod's.
    Refused(String),
    /// The API server could not be asked.
    Unavailable(String),
}

/// The pod `token` (for `audience`) was issued to, as the API server's TokenReview says.
async fn review_proxy_token(
    client: &Client,
    token: &str,
    audience: &str,
) -> Result<proxy_secrets::BoundPod, ProxyTokenError> {
    use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: token.to_owned(),
            audiences: Some(vec![audience.to_owned()]),
        },
        ..Default::default()
    };
    let reviewed = Api::<TokenReview>::all(client.clone())
        .create(&Default::default(), &review)
        .await
        .map_err(|e| ProxyTokenError::Unavailable(format!("TokenReview: {e}")))?;
    let status = reviewed.status.unwrap_or_default();
    let audience_ok = status
        .audiences
        .as_ref()
        .is_some_and(|a| a.iter().any(|a| a == audience));
    if status.authenticated != Some(true) || !audience_ok {
        return Err(ProxyTokenError::Refused(format!(
            "the token is not valid for audience {audience:?}"
        )));
    }
    let user = status.user.unwrap_or_default();
    proxy_secrets::BoundPod::from_user(
        user.username.as_deref().unwrap_or_default(),
        &user.extra.unwrap_or_default(),
    )
    .map_err(ProxyTokenError::Refused)
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

    fn flags(args: &[&str]) -> WebhookFlags {
        use clap::Parser;
        #[derive(Parser)]
        struct Flags {
            #[command(flatten)]
            webhook: WebhookFlags,
        }
        Flags::try_parse_from([&["operator"], args].concat())
            .unwrap()
            .webhook
    }

    #[test]
    fn without_a_collector_opted_in_pods_are_refused_unless_audit_is_explicitly_off() {
        let (wiring, _) = AuditWiring::from_flags(&flags(&[])).unwrap();
        let refusal = wiring.target().unwrap_err();
        assert!(refusal.contains("--collector-url"), "{refusal}");
        assert!(refusal.contains("--audit-disabled"), "{refusal}");

        let (wiring, _) = AuditWiring::from_flags(&flags(&["--audit-disabled"])).unwrap();
        assert_eq!(wiring.target(), Ok(None));
    }

    #[test]
    fn proxies_get_the_collector_ca_once_it_is_issued() {
        let flags = flags(&[
            "--collector-url",
            "https://streamward-collector.ops.svc:8443",
            "--collector-tls-secret",
            "streamward-collector-tls",
            "--collector-service-name",
            "streamward-collector",
            "--operator-namespace",
            "ops",
        ]);
        assert!(
            flags
                .collector_names()
                .contains(&"streamward-collector.ops.svc".to_owned())
        );
        let (wiring, sender) = AuditWiring::from_flags(&flags).unwrap();
        let refusal = wiring.target().unwrap_err();
        assert!(refusal.contains("not issued yet"), "{refusal}");
        sender.unwrap().send_replace(Some("PEM".into()));
        let target = wiring.target().unwrap().unwrap();
        assert_eq!(target.url, "https://streamward-collector.ops.svc:8443");
        assert_eq!(target.audience, "streamward-collector");
        assert_eq!(target.ca_pem.as_deref(), Some("PEM"));
    }

    #[test]
    fn a_collector_and_audit_disabled_contradict_each_other() {
        use clap::Parser;
        #[derive(Parser)]
        struct Flags {
            #[command(flatten)]
            webhook: WebhookFlags,
        }
        assert!(
            Flags::try_parse_from([
                "operator",
                "--collector-url",
                "https://c:8443",
                "--audit-disabled"
            ])
            .is_err()
        );
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

//! Pod injection, pure: given an opted-in Pod, the JSON patch that adds the Streamward proxy.
//!
//! The proxy runs as a native sidecar (the first init container, `restartPolicy: Always`, so it
//! is up before the other init containers and the app, and stops after them) where the API
//! server supports it, else as the last plain container. It alone mounts the compiled config,
//! the token it asks the operator for its Secrets with (see [`super::proxy_secrets`]), and
//! (when the app does not already have one) a service-account token to watch its ConfigMap;
//! the app containers get only the bootstrap address. The pod is annotated with the
//! operator's signature of the proxy container. It runs as non-root with a read-only root filesystem and no capabilities.
//!
//! The patch is written by hand against the object as the API server sent it (never a diff of
//! a re-serialized Pod), so fields this build of `k8s-openapi` does not know survive. Planning
//! again on the patched Pod gives an empty patch: the proxy is recognised by its container
//! name, volumes by name, and the bootstrap variable by its value. A container that another
//! mutating webhook adds later gets the variable when the API server re-invokes this one.

use std::collections::BTreeSet;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, ReplaceOperation};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapProjection, ConfigMapVolumeSource, Container, ContainerPort,
    DownwardAPIProjection, DownwardAPIVolumeFile, DownwardAPIVolumeSource, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, ObjectFieldSelector, Pod, Probe,
    ProjectedVolumeSource, ResourceRequirements, SeccompProfile, SecurityContext,
    ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;
use streamward_api::config::{CONFIG_KEY, config_map_name};
use streamward_api::crd::{MaskingRule, StreamTarget};
use streamward_api::secrets::PROXY_SIGNATURE_ANNOTATION;

use crate::signing::ConfigSigner;

use super::guard;

/// The label that opts a pod in (`"true"`), or out (`"false"`, even in an opted-in namespace).
pub const INJECT_LABEL: &str = "streamward.io/inject";
/// The namespace label value that opts every pod of the namespace in.
pub const NAMESPACE_ENABLED: &str = "enabled";
/// The annotation naming the StreamTarget the proxy serves (needed when the namespace has more
/// than one).
pub const TARGET_ANNOTATION: &str = "streamward.io/target";
/// The annotation naming the environment variable that carries the bootstrap address.
pub const BOOTSTRAP_ENV_ANNOTATION: &str = "streamward.io/bootstrap-env";
/// The annotation the webhook sets on the pods it injected.
pub const INJECTED_ANNOTATION: &str = "streamward.io/injected";
/// The proxy container's name.
pub const PROXY_CONTAINER: &str = "streamward-proxy";

const CONFIG_VOLUME: &str = "streamward-config";
const POD_INFO_VOLUME: &str = "streamward-pod-info";
const TOKEN_VOLUME: &str = "streamward-kube-api-access";
/// The volume of the token the proxy asks the operator for its Secrets with.
pub const SECRETS_TOKEN_VOLUME: &str = "streamward-secrets-token";
const SECRETS_TOKEN_DIR: &str = "/var/run/streamward/secrets-token";
const COLLECTOR_TOKEN_VOLUME: &str = "streamward-collector-token";
const SPOOL_VOLUME: &str = "streamward-audit-spool";
const COLLECTOR_TOKEN_DIR: &str = "/var/run/streamward/collector";
const SPOOL_DIR: &str = "/var/run/streamward/spool";
const CONFIG_DIR: &str = "/etc/streamward/config";
const POD_INFO_DIR: &str = "/etc/streamward/pod";
/// Where Kubernetes clients (the proxy's included) look for the service-account token.
pub const TOKEN_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The user the proxy runs as (the distroless `nonroot` user).
const PROXY_UID: i64 = 65532;

/// How the operator injects, from its flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InjectSettings {
    /// The proxy image.
    pub image: String,
    /// Its pull policy, or the cluster's default.
    pub image_pull_policy: Option<String>,
    /// The loopback port the proxy's bootstrap listener takes.
    pub port: u16,
    /// The port of the proxy's /metrics, /healthz and /readyz (on every interface, for the
    /// kubelet's probes and Prometheus).
    pub admin_port: u16,
    /// The environment variable that carries the bootstrap address, unless the pod's
    /// `streamward.io/bootstrap-env` annotation names another.
    pub bootstrap_env: String,
    /// Whether the API server runs native sidecars (Kubernetes 1.29 and later).
    pub native_sidecar: bool,
    /// CPU request of the proxy.
    pub cpu_request: String,
    /// Memory request of the proxy.
    pub memory_request: String,
    /// Memory limit of the proxy.
    pub memory_limit: String,
    /// How long the proxy serves a config the API server has not confirmed
    /// (`--max-config-staleness`).
    pub max_config_staleness: String,
    /// What fails closed past it (`--stale-config`: `grants` or `all`).
    pub stale_config: String,
    /// Where the proxy sends audit events; `None` when audit is off (`--audit-disabled`).
    pub audit: Option<AuditTarget>,
    /// The operator's config-signing public key (hex): the proxy refuses a config it did not
    /// sign.
    pub config_public_key: Option<String>,
    /// Where the proxy gets its Secrets (none without: it can reach no broker that needs
    /// credentials).
    pub secrets: Option<SecretsEndpoint>,
    /// Signs the proxy container, so that the operator serves Secrets only to proxies it
    /// injected.
    pub signer: Option<ProxySigner>,
}

/// Where an injected proxy asks the operator for its Secrets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretsEndpoint {
    /// The operator's base URL (its webhook server).
    pub url: String,
    /// The audience of the token the proxy presents (a projected token only it mounts).
    pub audience: String,
    /// The CA certificates (PEM) of the operator's serving certificate.
    pub ca_pem: String,
}

/// The operator's key, signing the proxy containers it injects.
#[derive(Clone, Debug)]
pub struct ProxySigner(pub std::sync::Arc<ConfigSigner>);

impl PartialEq for ProxySigner {
    fn eq(&self, other: &Self) -> bool {
        self.0.public_key_hex() == other.0.public_key_hex()
    }
}

impl Eq for ProxySigner {}

/// Where an injected proxy sends its audit events, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditTarget {
    /// The collector's base URL.
    pub url: String,
    /// The audience of the token the proxy presents (a projected service-account token only
    /// the proxy container mounts).
    pub audience: String,
    /// The collector's CA certificates (PEM); the system's roots when `None`.
    pub ca_pem: Option<String>,
    /// The bound of the proxy's spool, in bytes.
    pub spool_bytes: u64,
    /// What the proxy does while the spool is full (`--audit-full`: `continue` or `refuse`).
    pub full: String,
}

impl AuditTarget {
    /// The size limit of the spool's emptyDir: a quarter above the spool's own bound, so the
    /// proxy's accounting, not an eviction, decides what is dropped.
    fn spool_size_limit(&self) -> Quantity {
        const MIB: u64 = 1024 * 1024;
        let bytes = self.spool_bytes.saturating_add(self.spool_bytes / 4);
        Quantity(format!("{}Mi", bytes.div_ceil(MIB).max(1)))
    }
}

impl Default for InjectSettings {
    fn default() -> Self {
        InjectSettings {
            image: "ghcr.io/streamward/streamward-sidecar:latest".into(),
            image_pull_policy: None,
            port: 9092,
            admin_port: 9464,
            bootstrap_env: "KAFKA_BOOTSTRAP_SERVERS".into(),
            native_sidecar: true,
            cpu_request: "20m".into(),
            memory_request: "32Mi".into(),
            memory_limit: "128Mi".into(),
            max_config_staleness: "5m".into(),
            stale_config: "grants".into(),
            audit: None,
            config_public_key: None,
            secrets: None,
            signer: None,
        }
    }
}

/// What the webhook knows about the pod beyond its object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodContext {
    /// The pod's namespace (from the admission request: a new pod's metadata may lack it).
    pub namespace: String,
}

/// Why a pod is left alone, or refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Not for injection (said in the log and an audit annotation, not to the user).
    Untouched(String),
    /// Opted in, but the proxy cannot serve it: the pod is refused rather than run unproxied.
    Refused(String),
}

/// Whether `pod` in `namespace` gets a proxy. The webhook's selectors already send only
/// opted-in pods; this refuses what the selectors cannot see: excluded namespaces (defence in
/// depth), a pod that opts out with `streamward.io/inject: "false"`, and host-network pods (the
/// proxy's loopback listener would be the node's).
pub fn should_inject(pod: &Pod, namespace: &str, excluded: &BTreeSet<String>) -> Result<(), Skip> {
    if excluded.contains(namespace) {
        return Err(Skip::Untouched(format!(
            "namespace {namespace} is excluded from injection"
        )));
    }
    let label = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(INJECT_LABEL));
    if label.is_some_and(|v| v == "false") {
        return Err(Skip::Untouched(format!(
            "the pod opts out ({INJECT_LABEL}=false)"
        )));
    }
    let Some(spec) = pod.spec.as_ref() else {
        return Err(Skip::Untouched("the pod has no spec".into()));
    };
    if spec.host_network.unwrap_or(false) {
        return Err(Skip::Refused(format!(
            "the pod asks for the Streamward proxy but uses hostNetwork: the proxy listens on \
             loopback, which would be the node's; drop hostNetwork or set {INJECT_LABEL}: \"false\""
        )));
    }
    Ok(())
}

/// The StreamTarget the pod's annotation names, if any.
pub fn target_annotation(pod: &Pod) -> Option<&str> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(TARGET_ANNOTATION))
        .map(String::as_str)
        .filter(|t| !t.is_empty())
}

/// The service account the pod runs as (`default` when unset, as the API server defaults it).
pub fn service_account(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .filter(|sa| !sa.is_empty())
        .unwrap_or("default")
}

/// The Secrets the proxy of a pod running as `sa` in `namespace` reads: the credentials and CA
/// bundle of its target (`target`, or every target of the namespace when the pod names none)
/// and the masking keys of the namespace's MaskingRules that do not exempt it.
pub fn secrets_for<'a>(
    namespace: &str,
    sa: &str,
    target: Option<&str>,
    targets: impl IntoIterator<Item = &'a StreamTarget>,
    rules: impl IntoIterator<Item = &'a MaskingRule>,
) -> BTreeSet<String> {
    let mut secrets = BTreeSet::new();
    for t in targets {
        if target.is_some_and(|name| t.metadata.name.as_deref() != Some(name)) {
            continue;
        }
        secrets.extend(t.spec.sasl.iter().map(|s| s.credentials_secret.clone()));
        secrets.extend(
            t.spec
                .tls
                .iter()
                .filter_map(|tls| tls.ca_secret_ref.as_ref().map(|r| r.name.clone())),
        );
    }
    let qualified = format!("{namespace}/{sa}");
    for rule in rules {
        let spec = &rule.spec;
        // Exempt whatever the pod's labels: a pod selector narrows the exemption, so the
        // proxy of an unlabelled pod of the account still masks, with the key.
        let exempt = spec.exempt_subjects.as_ref().is_some_and(|subjects| {
            subjects.pod_selector.is_none()
                && subjects
                    .service_accounts
                    .iter()
                    .any(|entry| entry == sa || *entry == qualified)
        });
        if exempt {
            continue;
        }
        let strategies = spec
            .strategy
            .iter()
            .chain(spec.fields.iter().filter_map(|f| f.strategy.as_ref()))
            .chain(spec.detectors.iter().filter_map(|d| d.strategy.as_ref()))
            .chain(spec.headers.iter().filter_map(|h| h.strategy.as_ref()));
        secrets
            .extend(strategies.filter_map(|s| s.key_secret_ref.as_ref().map(|k| k.name.clone())));
    }
    secrets.retain(|name| !name.is_empty());
    secrets
}

fn pointer(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().copied())
}

fn add(tokens: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: pointer(tokens),
        value,
    })
}

fn to_value<T: serde::Serialize>(value: &T) -> Value {
    // Serializing k8s-openapi types into a Value cannot fail: they are plain data.
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// The JSON patch that injects the proxy into `pod` (empty when it is already injected and
/// every app container has the bootstrap address).
pub fn plan(pod: &Pod, ctx: &PodContext, settings: &InjectSettings) -> Result<Patch, String> {
    let mut ops = Vec::new();
    let empty = Default::default();
    let spec = pod.spec.as_ref().unwrap_or(&empty);
    let init = spec.init_containers.as_deref().unwrap_or_default();
    let found_in_init = init.iter().any(|c| c.name == PROXY_CONTAINER);
    let injected = found_in_init || spec.containers.iter().any(|c| c.name == PROXY_CONTAINER);
    let bootstrap_env = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(BOOTSTRAP_ENV_ANNOTATION))
        .filter(|name| is_env_name(name))
        .map_or(settings.bootstrap_env.as_str(), String::as_str);
    let address = format!("127.0.0.1:{}", settings.port);

    // What this webhook adds: a container named like the proxy, or a volume named like ours,
    // must be exactly that, or the pod is refused (the author may not fake the proxy).
    let proxy_is_native = if injected {
        found_in_init
    } else {
        settings.native_sidecar
    };
    let sa = service_account(pod);
    let token_mount = spec
        .containers
        .iter()
        .filter(|c| c.name != PROXY_CONTAINER)
        .flat_map(|c| c.volume_mounts.iter().flatten())
        .find(|m| m.mount_path.trim_end_matches('/') == TOKEN_DIR)
        .map(|m| m.name.clone());
    let volumes = proxy_volumes(sa, token_mount.is_none(), settings);
    let proxy = proxy_container(
        pod,
        &InjectSettings {
            native_sidecar: proxy_is_native,
            ..settings.clone()
        },
        token_mount.as_deref().unwrap_or(TOKEN_VOLUME),
    );
    let audiences: Vec<&str> = (settings.audit.iter().map(|a| a.audience.as_str()))
        .chain(settings.secrets.iter().map(|s| s.audience.as_str()))
        .collect();
    guard::check_create(pod, injected.then_some(&proxy), &volumes, &audiences)?;

    // The bootstrap address for every app container, first, while the indices are the
    // object's own. Init containers get it only when the proxy runs before them.
    let lists: &[(&str, &[Container])] = if proxy_is_native {
        &[("initContainers", init), ("containers", &spec.containers)]
    } else {
        &[("containers", &spec.containers)]
    };
    for (list, containers) in lists {
        for (index, container) in containers.iter().enumerate() {
            if container.name == PROXY_CONTAINER || is_native_sidecar(container) {
                continue;
            }
            env_ops(&mut ops, list, index, container, bootstrap_env, &address);
        }
    }

    let annotated = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.get(INJECTED_ANNOTATION).is_some_and(|v| v == "true"));
    if !annotated {
        if pod.metadata.annotations.is_none() {
            ops.push(add(
                &["metadata", "annotations"],
                Value::Object(Default::default()),
            ));
        }
        ops.push(add(
            &["metadata", "annotations", INJECTED_ANNOTATION],
            Value::String("true".into()),
        ));
    }
    if injected {
        return Ok(Patch(ops));
    }
    if let Some(ProxySigner(signer)) = &settings.signer {
        let signed = super::proxy_secrets::signed_bytes(&ctx.namespace, sa, &proxy);
        // `add` replaces a value the author put there.
        ops.push(add(
            &["metadata", "annotations", PROXY_SIGNATURE_ANNOTATION],
            Value::String(signer.sign(&signed)),
        ));
    }

    let new_volumes: Vec<Value> = volumes.iter().map(to_value).collect();
    if spec.volumes.is_none() {
        ops.push(add(&["spec", "volumes"], Value::Array(new_volumes)));
    } else {
        for volume in new_volumes {
            ops.push(add(&["spec", "volumes", "-"], volume));
        }
    }

    let proxy = to_value(&proxy);
    match (settings.native_sidecar, spec.init_containers.is_some()) {
        (true, false) => ops.push(add(&["spec", "initContainers"], Value::Array(vec![proxy]))),
        (true, true) => ops.push(add(&["spec", "initContainers", "0"], proxy)),
        (false, _) => ops.push(add(&["spec", "containers", "-"], proxy)),
    }
    Ok(Patch(ops))
}

/// A native sidecar of another injector (it is not an app: it does not bootstrap to Kafka).
fn is_native_sidecar(container: &Container) -> bool {
    container.restart_policy.as_deref() == Some("Always")
}

/// Sets `name=address` in `container` (at `/spec/<list>/<index>`), replacing a value the user
/// gave: the point of the proxy is that the app bootstraps through it.
fn env_ops(
    ops: &mut Vec<PatchOperation>,
    list: &str,
    index: usize,
    container: &Container,
    name: &str,
    address: &str,
) {
    let index = index.to_string();
    let var = to_value(&EnvVar {
        name: name.to_owned(),
        value: Some(address.to_owned()),
        value_from: None,
    });
    match &container.env {
        None => ops.push(add(&["spec", list, &index, "env"], Value::Array(vec![var]))),
        Some(env) => match env.iter().position(|e| e.name == name) {
            None => ops.push(add(&["spec", list, &index, "env", "-"], var)),
            Some(at) => {
                let current = &env[at];
                if current.value.as_deref() != Some(address) || current.value_from.is_some() {
                    ops.push(PatchOperation::Replace(ReplaceOperation {
                        path: pointer(&["spec", list, &index, "env", &at.to_string()]),
                        value: var,
                    }));
                }
            }
        },
    }
}

/// A C identifier, as shells and most apps read environment variables.
fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn proxy_volumes(sa: &str, own_token: bool, settings: &InjectSettings) -> Vec<Volume> {
    let mut volumes = vec![
        Volume {
            name: CONFIG_VOLUME.into(),
            // Optional: the operator may not have compiled it yet; the proxy watches the
            // ConfigMap itself and fails closed until it exists.
            config_map: Some(ConfigMapVolumeSource {
                name: config_map_name(sa),
                optional: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: POD_INFO_VOLUME.into(),
            downward_api: Some(DownwardAPIVolumeSource {
                items: Some(vec![DownwardAPIVolumeFile {
                    path: "labels".into(),
                    field_ref: Some(field("metadata.labels")),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    if own_token {
        volumes.push(token_volume());
    }
    if let Some(secrets) = &settings.secrets {
        // A token for the operator's Secrets endpoint alone, bound to this pod.
        volumes.push(audience_token_volume(
            SECRETS_TOKEN_VOLUME,
            &secrets.audience,
        ));
    }
    if let Some(audit) = &settings.audit {
        // A token for the collector alone: its audience is useless to the API server, and
        // only the proxy container mounts it, so the app cannot post events as the proxy.
        volumes.push(audience_token_volume(
            COLLECTOR_TOKEN_VOLUME,
            &audit.audience,
        ));
        volumes.push(Volume {
            name: SPOOL_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(audit.spool_size_limit()),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    volumes
}

/// A projected service-account token for `audience` alone, in `<volume>/token`.
fn audience_token_volume(name: &str, audience: &str) -> Volume {
    Volume {
        name: name.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(audience.to_owned()),
                    path: "token".into(),
                    expiration_seconds: Some(3600),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The projected token volume the ServiceAccount admission plugin would give a container,
/// for a proxy whose app has none (automountServiceAccountToken: false).
fn token_volume() -> Volume {
    Volume {
        name: TOKEN_VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![
                VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        path: "token".into(),
                        expiration_seconds: Some(3607),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    config_map: Some(ConfigMapProjection {
                        name: "kube-root-ca.crt".into(),
                        items: Some(vec![KeyToPath {
                            key: "ca.crt".into(),
                            path: "ca.crt".into(),
                            ..Default::default()
                        }]),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    downward_api: Some(DownwardAPIProjection {
                        items: Some(vec![DownwardAPIVolumeFile {
                            path: "namespace".into(),
                            field_ref: Some(field("metadata.namespace")),
                            ..Default::default()
                        }]),
                    }),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn field(path: &str) -> ObjectFieldSelector {
    ObjectFieldSelector {
        field_path: path.into(),
        ..Default::default()
    }
}

fn env_from_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(field(path)),
            ..Default::default()
        }),
    }
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..Default::default()
    }
}

fn http_probe(path: &str, port: u16, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(port.into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Default::default()
    }
}

/// The proxy's masking memory for a container memory limit (a Kubernetes quantity): half of
/// the limit for the whole proxy and a quarter for one connection, the proxy's defaults at the
/// default 128Mi. `None` when the limit is not a plain byte quantity (the proxy's defaults
/// apply).
fn mask_memory(limit: &str) -> Option<(u64, u64)> {
    let limit = limit.trim();
    let digits = limit
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(limit.len());
    let (number, unit) = limit.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let scale: u64 = match unit {
        "" => 1,
        "k" => 1000,
        "M" => 1000_u64.pow(2),
        "G" => 1000_u64.pow(3),
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => return None,
    };
    let bytes = number.checked_mul(scale)?;
    Some((bytes / 2, bytes / 4))
}

fn proxy_container(pod: &Pod, settings: &InjectSettings, token_volume: &str) -> Container {
    let sa = service_account(pod);
    let mut args = vec![
        "--config-map".to_owned(),
        config_map_name(sa),
        "--config".to_owned(),
        format!("{CONFIG_DIR}/{CONFIG_KEY}"),
        "--pod-labels".to_owned(),
        format!("{POD_INFO_DIR}/labels"),
        "--listen".to_owned(),
        format!("127.0.0.1:{}", settings.port),
        "--admin".to_owned(),
        format!("0.0.0.0:{}", settings.admin_port),
        "--log-json".to_owned(),
        "--max-config-staleness".to_owned(),
        settings.max_config_staleness.clone(),
        "--stale-config".to_owned(),
        settings.stale_config.clone(),
    ];
    if let Some((proxy, connection)) = mask_memory(&settings.memory_limit) {
        args.extend([
            "--mask-memory-bytes".to_owned(),
            proxy.to_string(),
            "--mask-connection-memory-bytes".to_owned(),
            connection.to_string(),
        ]);
    }
    if let Some(secrets) = &settings.secrets {
        args.extend([
            "--secrets-url".to_owned(),
            secrets.url.clone(),
            "--secrets-token-file".to_owned(),
            format!("{SECRETS_TOKEN_DIR}/token"),
        ]);
    }
    if let Some(audit) = &settings.audit {
        args.extend([
            "--audit-url".to_owned(),
            audit.url.clone(),
            "--audit-token-file".to_owned(),
            format!("{COLLECTOR_TOKEN_DIR}/token"),
            "--audit-spool".to_owned(),
            SPOOL_DIR.to_owned(),
            "--audit-spool-max-bytes".to_owned(),
            audit.spool_bytes.to_string(),
            "--audit-full".to_owned(),
            audit.full.clone(),
        ]);
    }
    let mut env = vec![
        env_from_field("STREAMWARD_NAMESPACE", "metadata.namespace"),
        env_from_field("STREAMWARD_SERVICE_ACCOUNT", "spec.serviceAccountName"),
        env_from_field("STREAMWARD_POD_NAME", "metadata.name"),
    ];
    if let Some(target) = target_annotation(pod) {
        env.push(EnvVar {
            name: "STREAMWARD_TARGET".into(),
            value: Some(target.to_owned()),
            value_from: None,
        });
    }
    if let Some(key) = &settings.config_public_key {
        env.push(EnvVar {
            name: "STREAMWARD_CONFIG_PUBLIC_KEY".into(),
            value: Some(key.clone()),
            value_from: None,
        });
    }
    if let Some(secrets) = &settings.secrets {
        env.push(EnvVar {
            name: "STREAMWARD_SECRETS_CA_PEM".into(),
            value: Some(secrets.ca_pem.clone()),
            value_from: None,
        });
    }
    if let Some(pem) = settings.audit.as_ref().and_then(|a| a.ca_pem.as_ref()) {
        env.push(EnvVar {
            name: "STREAMWARD_AUDIT_CA_PEM".into(),
            value: Some(pem.clone()),
            value_from: None,
        });
    }
    let mut mounts = vec![
        mount(CONFIG_VOLUME, CONFIG_DIR),
        mount(POD_INFO_VOLUME, POD_INFO_DIR),
    ];
    mounts.push(mount(token_volume, TOKEN_DIR));
    if settings.secrets.is_some() {
        mounts.push(mount(SECRETS_TOKEN_VOLUME, SECRETS_TOKEN_DIR));
    }
    if settings.audit.is_some() {
        mounts.push(mount(COLLECTOR_TOKEN_VOLUME, COLLECTOR_TOKEN_DIR));
        // Writable (read-only is the default of `mount`, unset is writable).
        mounts.push(VolumeMount {
            read_only: None,
            ..mount(SPOOL_VOLUME, SPOOL_DIR)
        });
    }
    let quantity = |q: &str| Quantity(q.to_owned());
    Container {
        name: PROXY_CONTAINER.into(),
        image: Some(settings.image.clone()),
        image_pull_policy: settings.image_pull_policy.clone(),
        args: Some(args),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("sw-admin".into()),
            container_port: settings.admin_port.into(),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        restart_policy: settings.native_sidecar.then(|| "Always".to_owned()),
        // The app starts once the proxy listens (a native sidecar's startup probe gates the
        // containers after it); readiness follows the config, so a proxy failing closed takes
        // the pod out of its Services.
        startup_probe: Some(http_probe("/healthz", settings.admin_port, 1, 30)),
        liveness_probe: Some(http_probe("/healthz", settings.admin_port, 10, 3)),
        readiness_probe: Some(http_probe("/readyz", settings.admin_port, 5, 1)),
        resources: Some(ResourceRequirements {
            requests: Some(
                [
                    ("cpu".to_owned(), quantity(&settings.cpu_request)),
                    ("memory".to_owned(), quantity(&settings.memory_request)),
                ]
                .into(),
            ),
            limits: Some([("memory".to_owned(), quantity(&settings.memory_limit))].into()),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(PROXY_UID),
            run_as_group: Some(PROXY_UID),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..Default::default()
        }),
        volume_mounts: Some(mounts),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(value: Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    fn app_pod() -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "orders", "labels": {"streamward.io/inject": "true", "app": "orders"}},
            "spec": {
                "serviceAccountName": "orders-app",
                "containers": [
                    {"name": "app", "image": "orders:1", "env": [{"name": "LOG", "value": "debug"}]},
                    {"name": "worker", "image": "orders:1"}
                ]
            }
        })
    }

    fn ctx() -> PodContext {
        PodContext {
            namespace: "demo".into(),
        }
    }

    /// The pod as the API server stores it after applying the patch, as JSON (so fields the
    /// typed Pod does not know are kept).
    fn apply(value: &Value, patch: &Patch) -> Value {
        let mut value = value.clone();
        json_patch::patch(&mut value, patch).unwrap();
        value
    }

    fn inject(value: &Value, settings: &InjectSettings) -> Value {
        apply(value, &plan(&pod(value.clone()), &ctx(), settings).unwrap())
    }

    fn env<'v>(container: &'v Value, name: &str) -> Option<&'v Value> {
        container["env"]
            .as_array()?
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| &e["value"])
    }

    fn proxies(value: &Value) -> usize {
        ["containers", "initContainers"]
            .iter()
            .filter_map(|list| value["spec"][list].as_array())
            .flatten()
            .filter(|c| c["name"] == PROXY_CONTAINER)
            .count()
    }

    #[test]
    fn the_proxy_is_a_native_sidecar_before_everything_else() {
        let before = app_pod();
        let after = inject(&before, &InjectSettings::default());
        let init = after["spec"]["initContainers"].as_array().unwrap();
        assert_eq!(init.len(), 1);
        let proxy = &init[0];
        assert_eq!(proxy["name"], PROXY_CONTAINER);
        assert_eq!(proxy["restartPolicy"], "Always");
        assert_eq!(proxy["image"], InjectSettings::default().image);
        let args: Vec<&str> = proxy["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let flag = |name: &str| {
            let at = args.iter().position(|a| *a == name).unwrap();
            args[at + 1]
        };
        assert_eq!(flag("--config-map"), "streamward-config-orders-app");
        assert_eq!(flag("--config"), "/etc/streamward/config/config.json");
        assert_eq!(flag("--listen"), "127.0.0.1:9092");
        assert!(!args.contains(&"--secrets-dir"));
        assert_eq!(flag("--pod-labels"), "/etc/streamward/pod/labels");
        // The proxy's masking memory follows the container's limit (128Mi by default).
        assert_eq!(flag("--mask-memory-bytes"), (64 << 20).to_string());
        assert_eq!(
            flag("--mask-connection-memory-bytes"),
            (32 << 20).to_string()
        );
        for (name, path) in [
            ("STREAMWARD_NAMESPACE", "metadata.namespace"),
            ("STREAMWARD_SERVICE_ACCOUNT", "spec.serviceAccountName"),
            ("STREAMWARD_POD_NAME", "metadata.name"),
        ] {
            let var = proxy["env"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == name)
                .unwrap();
            assert_eq!(var["valueFrom"]["fieldRef"]["fieldPath"], path);
        }
        assert_eq!(proxy["startupProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(proxy["readinessProbe"]["httpGet"]["path"], "/readyz");
        // The app containers keep what they had and gain the bootstrap address.
        let containers = after["spec"]["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 2);
        assert_eq!(env(&containers[0], "LOG").unwrap(), "debug");
        for c in containers {
            assert_eq!(env(c, "KAFKA_BOOTSTRAP_SERVERS").unwrap(), "127.0.0.1:9092");
        }
        assert_eq!(
            after["metadata"]["annotations"][INJECTED_ANNOTATION],
            "true"
        );
        assert_eq!(after["metadata"]["labels"]["app"], "orders");
        // What the API server would accept as a Pod.
        let typed = pod(after);
        assert_eq!(typed.spec.unwrap().init_containers.unwrap().len(), 1);
    }

    #[test]
    fn the_proxy_runs_locked_down() {
        let after = inject(&app_pod(), &InjectSettings::default());
        let security = &after["spec"]["initContainers"][0]["securityContext"];
        assert_eq!(security["runAsNonRoot"], true);
        assert_eq!(security["readOnlyRootFilesystem"], true);
        assert_eq!(security["allowPrivilegeEscalation"], false);
        assert_eq!(security["privileged"], false);
        assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
        assert!(security["capabilities"].get("add").is_none());
        assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");
        assert_ne!(security["runAsUser"], 0);
        let resources = &after["spec"]["initContainers"][0]["resources"];
        assert!(resources["limits"]["memory"].is_string());
    }

    #[test]
    fn config_and_the_secrets_token_are_mounted_into_the_proxy_only_and_it_is_signed() {
        let signer = std::sync::Arc::new(ConfigSigner::generate().unwrap().0);
        let settings = InjectSettings {
            secrets: Some(SecretsEndpoint {
                url: "https://streamward-webhook.streamward-system.svc:443".into(),
                audience: "streamward-secrets".into(),
                ca_pem: "CA".into(),
            }),
            signer: Some(ProxySigner(signer.clone())),
            ..Default::default()
        };
        let after = inject(&app_pod(), &settings);
        let volumes = after["spec"]["volumes"].as_array().unwrap();
        let volume = |name: &str| volumes.iter().find(|v| v["name"] == name).unwrap();
        assert_eq!(
            volume(CONFIG_VOLUME)["configMap"]["name"],
            "streamward-config-orders-app"
        );
        // No Secret of the workload's namespace is mounted: the proxy asks the operator.
        assert!(
            volumes.iter().all(|v| v.get("secret").is_none()),
            "{volumes:?}"
        );
        assert_eq!(
            volume(SECRETS_TOKEN_VOLUME)["projected"]["sources"][0]["serviceAccountToken"]["audience"],
            "streamward-secrets"
        );
        let proxy = &after["spec"]["initContainers"][0];
        let flag = |name: &str| {
            let args = proxy["args"].as_array().unwrap();
            let at = args.iter().position(|a| a == name).unwrap();
            args[at + 1].as_str().unwrap().to_owned()
        };
        assert_eq!(
            flag("--secrets-url"),
            "https://streamward-webhook.streamward-system.svc:443"
        );
        assert_eq!(
            flag("--secrets-token-file"),
            format!("{SECRETS_TOKEN_DIR}/token")
        );
        assert_eq!(env(proxy, "STREAMWARD_SECRETS_CA_PEM").unwrap(), "CA");
        let signature = after["metadata"]["annotations"][PROXY_SIGNATURE_ANNOTATION]
            .as_str()
            .unwrap();
        let stored: Container = serde_json::from_value(proxy.clone()).unwrap();
        assert!(crate::signing::verifies(
            signer.public_key_hex(),
            &super::super::proxy_secrets::signed_bytes("demo", "orders-app", &stored),
            signature
        ));
        let mounts: Vec<(&str, &str, bool)> = proxy["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap(),
                    m["mountPath"].as_str().unwrap(),
                    m["readOnly"] == true,
                )
            })
            .collect();
        assert!(mounts.contains(&(CONFIG_VOLUME, CONFIG_DIR, true)));
        assert!(mounts.contains(&(SECRETS_TOKEN_VOLUME, SECRETS_TOKEN_DIR, true)));
        // Without a token of the app to share, the proxy gets its own.
        assert!(mounts.contains(&(TOKEN_VOLUME, TOKEN_DIR, true)));
        assert!(volume(TOKEN_VOLUME)["projected"]["sources"][0]["serviceAccountToken"].is_object());
        for app in after["spec"]["containers"].as_array().unwrap() {
            assert!(app.get("volumeMounts").is_none(), "{app}");
        }
    }

    #[test]
    fn the_proxy_audits_to_the_collector_with_a_token_and_spool_only_it_mounts() {
        let settings = InjectSettings {
            audit: Some(AuditTarget {
                url: "https://collector.streamward-system.svc:8443".into(),
                audience: "streamward-collector".into(),
                ca_pem: Some("-----BEGIN CERTIFICATE-----\nCA\n".into()),
                spool_bytes: 48 * 1024 * 1024,
                full: "refuse".into(),
            }),
            ..InjectSettings::default()
        };
        let after = inject(&app_pod(), &settings);
        let proxy = &after["spec"]["initContainers"][0];
        let args: Vec<&str> = proxy["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let flag = |name: &str| {
            let at = args.iter().position(|a| *a == name).unwrap();
            args[at + 1]
        };
        assert_eq!(
            flag("--audit-url"),
            "https://collector.streamward-system.svc:8443"
        );
        assert_eq!(
            flag("--audit-token-file"),
            "/var/run/streamward/collector/token"
        );
        assert_eq!(flag("--audit-spool"), "/var/run/streamward/spool");
        assert_eq!(flag("--audit-spool-max-bytes"), "50331648");
        assert_eq!(flag("--audit-full"), "refuse");
        assert_eq!(flag("--max-config-staleness"), "5m");
        assert_eq!(flag("--stale-config"), "grants");
        assert_eq!(
            env(proxy, "STREAMWARD_AUDIT_CA_PEM").unwrap(),
            "-----BEGIN CERTIFICATE-----\nCA\n"
        );

        let volumes = after["spec"]["volumes"].as_array().unwrap();
        let volume = |name: &str| volumes.iter().find(|v| v["name"] == name).unwrap();
        let token =
            &volume(COLLECTOR_TOKEN_VOLUME)["projected"]["sources"][0]["serviceAccountToken"];
        assert_eq!(token["audience"], "streamward-collector");
        assert_eq!(token["path"], "token");
        // 48 MiB and a quarter.
        assert_eq!(volume(SPOOL_VOLUME)["emptyDir"]["sizeLimit"], "60Mi");
        let mount = |name: &str| {
            proxy["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["name"] == name)
                .unwrap()
                .clone()
        };
        assert_eq!(mount(COLLECTOR_TOKEN_VOLUME)["readOnly"], true);
        assert!(mount(SPOOL_VOLUME).get("readOnly").is_none());
        for app in after["spec"]["containers"].as_array().unwrap() {
            assert!(app.get("volumeMounts").is_none(), "{app}");
            assert!(env(app, "STREAMWARD_AUDIT_CA_PEM").is_none(), "{app}");
        }
        // Injecting again changes nothing.
        assert!(
            plan(&pod(after.clone()), &ctx(), &settings)
                .unwrap()
                .0
                .is_empty()
        );
    }

    #[test]
    fn without_audit_the_proxy_gets_no_collector_flags_or_volumes() {
        let after = inject(&app_pod(), &InjectSettings::default());
        let proxy = &after["spec"]["initContainers"][0];
        assert!(
            !proxy["args"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a.as_str().unwrap().starts_with("--audit"))
        );
        let volumes = after["spec"]["volumes"].as_array().unwrap();
        assert!(!volumes.iter().any(|v| v["name"] == SPOOL_VOLUME));
        assert!(!volumes.iter().any(|v| v["name"] == COLLECTOR_TOKEN_VOLUME));
    }

    #[test]
    fn the_apps_token_volume_is_shared_rather_than_duplicated() {
        let mut before = app_pod();
        before["spec"]["volumes"] =
            json!([{"name": "kube-api-access-x1", "projected": {"sources": []}}]);
        before["spec"]["containers"][0]["volumeMounts"] = json!([
            {"name": "kube-api-access-x1", "mountPath": TOKEN_DIR, "readOnly": true}
        ]);
        let after = inject(&before, &InjectSettings::default());
        let volumes = after["spec"]["volumes"].as_array().unwrap();
        assert_eq!(volumes[0]["name"], "kube-api-access-x1");
        assert!(volumes.iter().all(|v| v["name"] != TOKEN_VOLUME));
        let proxy = &after["spec"]["initContainers"][0];
        assert!(
            proxy["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| { m["name"] == "kube-api-access-x1" && m["mountPath"] == TOKEN_DIR })
        );
    }

    #[test]
    fn injecting_twice_changes_nothing() {
        for native in [true, false] {
            let settings = InjectSettings {
                native_sidecar: native,
                ..InjectSettings::default()
            };
            let once = inject(&app_pod(), &settings);
            let again = plan(&pod(once.clone()), &ctx(), &settings).unwrap();
            assert!(again.0.is_empty(), "native={native}: {again:?}");
            assert_eq!(inject(&once, &settings), once);
            assert_eq!(proxies(&once), 1);
            // Even with the other mode's settings, the proxy is recognised.
            let flipped = InjectSettings {
                native_sidecar: !native,
                ..settings.clone()
            };
            assert!(
                plan(&pod(once.clone()), &ctx(), &flipped)
                    .unwrap()
                    .0
                    .is_empty()
            );
        }
    }

    /// The refusal `plan` gives the pod `value` (with audit to a collector on).
    fn refusal(value: Value) -> String {
        let settings = InjectSettings {
            audit: Some(AuditTarget {
                url: "https://collector:8443".into(),
                audience: "streamward-collector".into(),
                ca_pem: None,
                spool_bytes: 1 << 20,
                full: "continue".into(),
            }),
            ..InjectSettings::default()
        };
        plan(&pod(value), &ctx(), &settings).unwrap_err()
    }

    #[test]
    fn the_author_cannot_fake_the_proxy_or_reach_into_it() {
        // A container named like the proxy, whatever it runs.
        let mut fake = app_pod();
        fake["spec"]["containers"][0]["name"] = json!("streamward-proxy");
        fake["spec"]["containers"][0]["command"] = json!(["sh", "-c", "cat /creds/*"]);
        assert!(refusal(fake).contains("reserved"));
        // A volume named like ours, from the author's own ConfigMap.
        let mut volume = app_pod();
        volume["spec"]["volumes"] =
            json!([{"name": "streamward-config", "configMap": {"name": "allow-all"}}]);
        assert!(refusal(volume).contains("reserved"));
        // An app mounting a volume the webhook is about to add.
        let mut mount = app_pod();
        mount["spec"]["containers"][1]["volumeMounts"] =
            json!([{"name": "streamward-secret-0", "mountPath": "/creds"}]);
        assert!(refusal(mount).contains("only the Streamward proxy may mount"));
        // A token of its own for the collector, to post events as the proxy.
        let mut token = app_pod();
        token["spec"]["volumes"] = json!([{"name": "mine", "projected": {"sources": [
            {"serviceAccountToken": {"audience": "streamward-collector", "path": "t"}}]}}]);
        assert!(refusal(token).contains("audience"));
        // The proxy's files through /proc.
        let mut shared = app_pod();
        shared["spec"]["shareProcessNamespace"] = json!(true);
        assert!(refusal(shared).contains("shareProcessNamespace"));
    }

    #[test]
    fn a_copy_of_an_injected_pod_is_recognised_but_not_a_changed_one() {
        let once = inject(&app_pod(), &InjectSettings::default());
        assert!(
            plan(&pod(once.clone()), &ctx(), &InjectSettings::default())
                .unwrap()
                .0
                .is_empty()
        );
        let mut changed = once.clone();
        changed["spec"]["initContainers"][0]["image"] = json!("evil:1");
        let error = plan(&pod(changed), &ctx(), &InjectSettings::default()).unwrap_err();
        assert!(error.contains("reserved"), "{error}");
    }

    #[test]
    fn an_injected_proxy_cannot_be_changed_or_debugged_into() {
        let once: Pod =
            serde_json::from_value(inject(&app_pod(), &InjectSettings::default())).unwrap();
        assert_eq!(guard::check_update(&once, &once, PROXY_CONTAINER), Ok(()));
        let mut image = once.clone();
        image
            .spec
            .as_mut()
            .unwrap()
            .init_containers
            .as_mut()
            .unwrap()[0]
            .image = Some("evil:1".into());
        assert!(guard::check_update(&once, &image, PROXY_CONTAINER).is_err());
        let debug = |target: Option<&str>, mount: Option<&str>| {
            let mut debugged = serde_json::to_value(&once).unwrap();
            let mut ephemeral = json!({"name": "debugger", "image": "busybox"});
            if let Some(target) = target {
                ephemeral["targetContainerName"] = json!(target);
            }
            if let Some(mount) = mount {
                ephemeral["volumeMounts"] = json!([{"name": mount, "mountPath": "/x"}]);
            }
            debugged["spec"]["ephemeralContainers"] = json!([ephemeral]);
            let debugged: Pod = serde_json::from_value(debugged).unwrap();
            guard::check_update(&once, &debugged, PROXY_CONTAINER)
        };
        assert!(debug(Some(PROXY_CONTAINER), None).is_err());
        assert!(debug(Some("app"), Some("streamward-secret-0")).is_err());
        assert_eq!(debug(Some("app"), None), Ok(()));
    }

    #[test]
    fn a_plain_container_where_native_sidecars_are_not_supported() {
        let mut before = app_pod();
        before["spec"]["initContainers"] = json!([{"name": "migrate", "image": "m:1"}]);
        let settings = InjectSettings {
            native_sidecar: false,
            ..InjectSettings::default()
        };
        let after = inject(&before, &settings);
        let containers = after["spec"]["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 3);
        assert_eq!(
            containers[0]["name"], "app",
            "the app stays the default container"
        );
        let proxy = &containers[2];
        assert_eq!(proxy["name"], PROXY_CONTAINER);
        assert!(proxy.get("restartPolicy").is_none());
        // Init containers run before a plain proxy exists: they are left alone.
        assert_eq!(
            after["spec"]["initContainers"],
            before["spec"]["initContainers"]
        );
    }

    #[test]
    fn init_containers_after_a_native_proxy_bootstrap_through_it() {
        let mut before = app_pod();
        before["spec"]["initContainers"] = json!([
            {"name": "create-topics", "image": "t:1"},
            {"name": "mesh", "image": "mesh:1", "restartPolicy": "Always"}
        ]);
        let after = inject(&before, &InjectSettings::default());
        let init = after["spec"]["initContainers"].as_array().unwrap();
        let names: Vec<&str> = init.iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names, [PROXY_CONTAINER, "create-topics", "mesh"]);
        assert_eq!(
            env(&init[1], "KAFKA_BOOTSTRAP_SERVERS").unwrap(),
            "127.0.0.1:9092"
        );
        assert!(
            env(&init[2], "KAFKA_BOOTSTRAP_SERVERS").is_none(),
            "another sidecar"
        );
    }

    #[test]
    fn a_bootstrap_address_the_user_set_is_replaced() {
        let mut before = app_pod();
        before["spec"]["containers"][0]["env"] = json!([
            {"name": "KAFKA_BOOTSTRAP_SERVERS", "value": "kafka.prod:9092"},
            {"name": "OTHER", "value": "1"}
        ]);
        before["spec"]["containers"][1]["env"] = json!([
            {"name": "KAFKA_BOOTSTRAP_SERVERS", "valueFrom": {"configMapKeyRef": {"name": "kafka", "key": "bootstrap"}}}
        ]);
        let after = inject(&before, &InjectSettings::default());
        for c in after["spec"]["containers"].as_array().unwrap() {
            let vars: Vec<&Value> = c["env"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["name"] == "KAFKA_BOOTSTRAP_SERVERS")
                .collect();
            assert_eq!(
                vars,
                [&json!({"name": "KAFKA_BOOTSTRAP_SERVERS", "value": "127.0.0.1:9092"})]
            );
        }
        assert_eq!(env(&after["spec"]["containers"][0], "OTHER").unwrap(), "1");
    }

    #[test]
    fn annotations_choose_the_variable_and_the_target() {
        let mut before = app_pod();
        before["metadata"]["annotations"] = json!({
            BOOTSTRAP_ENV_ANNOTATION: "SPRING_KAFKA_BOOTSTRAP_SERVERS",
            TARGET_ANNOTATION: "prod-kafka",
            "keep": "me"
        });
        let settings = InjectSettings {
            port: 19092,
            ..InjectSettings::default()
        };
        let after = inject(&before, &settings);
        let app = &after["spec"]["containers"][0];
        assert_eq!(
            env(app, "SPRING_KAFKA_BOOTSTRAP_SERVERS").unwrap(),
            "127.0.0.1:19092"
        );
        assert!(env(app, "KAFKA_BOOTSTRAP_SERVERS").is_none());
        let proxy = &after["spec"]["initContainers"][0];
        assert_eq!(env(proxy, "STREAMWARD_TARGET").unwrap(), "prod-kafka");
        assert_eq!(after["metadata"]["annotations"]["keep"], "me");
        // A name that is no variable name falls back to the default.
        before["metadata"]["annotations"][BOOTSTRAP_ENV_ANNOTATION] = json!("not a name; rm -rf");
        let after = inject(&before, &settings);
        assert!(env(&after["spec"]["containers"][0], "KAFKA_BOOTSTRAP_SERVERS").is_some());
    }

    #[test]
    fn a_container_another_webhook_added_later_gets_the_address_on_reinvocation() {
        let settings = InjectSettings::default();
        let mut once = inject(&app_pod(), &settings);
        once["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "late", "image": "l:1"}));
        let patch = plan(&pod(once.clone()), &ctx(), &settings).unwrap();
        assert_eq!(patch.0.len(), 1, "{patch:?}");
        let twice = apply(&once, &patch);
        assert_eq!(
            env(&twice["spec"]["containers"][2], "KAFKA_BOOTSTRAP_SERVERS").unwrap(),
            "127.0.0.1:9092"
        );
        assert_eq!(proxies(&twice), 1);
    }

    #[test]
    fn fields_this_build_does_not_know_survive() {
        let mut before = app_pod();
        before["spec"]["containers"][0]["someFutureField"] = json!({"x": 1});
        before["spec"]["someFuturePodField"] = json!(true);
        let after = inject(&before, &InjectSettings::default());
        assert_eq!(
            after["spec"]["containers"][0]["someFutureField"],
            json!({"x": 1})
        );
        assert_eq!(after["spec"]["someFuturePodField"], true);
    }

    #[test]
    fn which_pods_are_injected() {
        let excluded: BTreeSet<String> = ["kube-system".to_owned()].into();
        let opted_in = pod(app_pod());
        assert_eq!(should_inject(&opted_in, "demo", &excluded), Ok(()));
        assert!(matches!(
            should_inject(&opted_in, "kube-system", &excluded),
            Err(Skip::Untouched(_))
        ));
        let mut out = app_pod();
        out["metadata"]["labels"][INJECT_LABEL] = json!("false");
        assert!(matches!(
            should_inject(&pod(out), "demo", &excluded),
            Err(Skip::Untouched(_))
        ));
        let mut host = app_pod();
        host["spec"]["hostNetwork"] = json!(true);
        let Err(Skip::Refused(reason)) = should_inject(&pod(host), "demo", &excluded) else {
            panic!("a hostNetwork pod must be refused");
        };
        assert!(reason.contains("hostNetwork"), "{reason}");
        assert!(matches!(
            should_inject(&pod(json!({"metadata": {"name": "x"}})), "demo", &excluded),
            Err(Skip::Untouched(_))
        ));
    }

    #[test]
    fn a_pod_without_a_service_account_uses_the_default_one() {
        let mut before = app_pod();
        before["spec"]
            .as_object_mut()
            .unwrap()
            .remove("serviceAccountName");
        let after = inject(&before, &InjectSettings::default());
        assert_eq!(
            after["spec"]["volumes"][0]["configMap"]["name"],
            "streamward-config-default"
        );
    }

    fn target(name: &str, sasl: Option<&str>, ca: Option<&str>) -> StreamTarget {
        let mut spec = json!({"bootstrapServers": ["kafka:9092"]});
        if let Some(secret) = sasl {
            spec["sasl"] = json!({"mechanism": "SCRAM-SHA-512", "credentialsSecret": secret});
        }
        if let Some(secret) = ca {
            spec["tls"] = json!({"caSecretRef": {"name": secret, "key": "ca.crt"}});
        }
        serde_json::from_value(json!({
            "apiVersion": "streamward.io/v1alpha1", "kind": "StreamTarget",
            "metadata": {"name": name, "namespace": "demo"}, "spec": spec
        }))
        .unwrap()
    }

    #[test]
    fn masking_memory_is_a_share_of_the_memory_limit() {
        assert_eq!(mask_memory("128Mi"), Some((64 << 20, 32 << 20)));
        assert_eq!(mask_memory("1Gi"), Some((512 << 20, 256 << 20)));
        assert_eq!(mask_memory("200M"), Some((100_000_000, 50_000_000)));
        assert_eq!(mask_memory("1.5Gi"), None);
        assert_eq!(mask_memory("lots"), None);
    }

    #[test]
    fn the_secrets_of_the_targets_and_masking_keys_are_the_proxys() {
        let targets = [
            target("a", Some("a-creds"), Some("a-ca")),
            target("b", Some("b-creds"), None),
        ];
        let rule: MaskingRule = serde_json::from_value(json!({
            "apiVersion": "streamward.io/v1alpha1", "kind": "MaskingRule",
            "metadata": {"name": "m", "namespace": "demo"},
            "spec": {
                "topics": [{"name": "t"}],
                "fields": [{"path": "a", "strategy": {"type": "Hmac", "keySecretRef": {"name": "mask-key", "key": "k"}}}]
            }
        }))
        .unwrap();
        let mut exempting = rule.clone();
        exempting.spec.fields[0]
            .strategy
            .as_mut()
            .unwrap()
            .key_secret_ref = Some(streamward_api::config::SecretKeyRef {
            name: "other-key".into(),
            key: "k".into(),
        });
        exempting.spec.exempt_subjects = Some(streamward_api::crd::SubjectsSpec {
            service_accounts: vec!["demo/orders-app".into()],
            ..Default::default()
        });
        let all = secrets_for("demo", "orders-app", None, &targets, [&rule, &exempting]);
        assert_eq!(
            all,
            ["a-ca", "a-creds", "b-creds", "mask-key"]
                .map(String::from)
                .into()
        );
        let only_b = secrets_for("demo", "orders-app", Some("b"), &targets, []);
        assert_eq!(only_b, ["b-creds".to_owned()].into());
        let other_sa = secrets_for("demo", "billing", Some("b"), &targets, [&exempting]);
        assert!(other_sa.contains("other-key"));
        // Narrowed to labelled pods, the exemption leaves the account's other pods masking.
        let mut narrowed = exempting.clone();
        if let Some(subjects) = narrowed.spec.exempt_subjects.as_mut() {
            subjects.pod_selector = Some(streamward_api::crd::PodSelector {
                match_labels: [("role".to_owned(), "billing".to_owned())].into(),
            });
        }
        let labelled = secrets_for("demo", "orders-app", Some("b"), &targets, [&narrowed]);
        assert!(labelled.contains("other-key"), "{labelled:?}");
    }
}

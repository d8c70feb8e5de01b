//! `streamward-sidecar`: the Kafka proxy. Parses flags and wires the parts together.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use streamward_sidecar::mask::budget;

use anyhow::Context;
use arc_swap::ArcSwap;
use clap::Parser;
use streamward_api::config::WorkloadIdentity;
use streamward_sidecar::approval::Approvals;
use streamward_sidecar::audit::{self, Audit, AuditSettings, CollectorCa};
use streamward_sidecar::client_auth::{ClientAuth, ClientAuthSettings, OidcSettings};
use streamward_sidecar::config_map::{self, ConfigMapSource};
use streamward_sidecar::freshness::{Freshness, StaleScope, StalenessLimit};
use streamward_sidecar::listener::Listeners;
use streamward_sidecar::metrics::Metrics;
use streamward_sidecar::policy::ClientIdentity;
use streamward_sidecar::secrets::{OperatorSecrets, SecretSource};
use streamward_sidecar::shared::{Settings, Shared, Upstream};
use streamward_sidecar::source::{self, ConfigKey, Source, State};
use tokio_util::sync::CancellationToken;

/// The Streamward Kafka proxy: enforces the compiled policy on every request of the clients
/// that bootstrap through it.
#[derive(Parser, Debug)]
#[command(version)]
struct Flags {
    /// Local mode: a folder of StreamTarget/StreamPolicy/AccessGrant YAML (and Secrets), as you
    /// would `kubectl apply` it, compiled with the operator's own function.
    #[arg(long, conflicts_with_all = ["config", "config_map"], required_unless_present_any = ["config", "config_map"])]
    policies: Option<PathBuf>,
    /// A compiled config (the operator's ConfigMap, mounted). With --config-map, it is served
    /// only until the API server first answers.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Watch this ConfigMap (in --namespace) through the API server, so that changes apply
    /// within seconds. Credentials come from the pod's service account (or KUBECONFIG).
    #[arg(long, env = "STREAMWARD_CONFIG_MAP")]
    config_map: Option<String>,
    /// Where the Secrets the config names are (`<dir>/<secret>/<key>`), with --config and
    /// without --secrets-url.
    #[arg(long, default_value = "/var/run/streamward/secrets")]
    secrets_dir: PathBuf,
    /// Ask the operator at this base URL for the Secrets the config names (how an injected
    /// proxy gets them: they live in the operator's namespace, not the workload's).
    #[arg(
        long,
        env = "STREAMWARD_SECRETS_URL",
        requires_all = ["secrets_token_file", "secrets_ca_pem"]
    )]
    secrets_url: Option<String>,
    /// The token presented to --secrets-url (a projected service-account token for the
    /// operator's Secrets audience; read again for every request).
    #[arg(long, env = "STREAMWARD_SECRETS_TOKEN_FILE", requires = "secrets_url")]
    secrets_token_file: Option<PathBuf>,
    /// The CA certificates (PEM) of --secrets-url's certificate.
    #[arg(
        long,
        env = "STREAMWARD_SECRETS_CA_PEM",
        requires = "secrets_url",
        hide_env_values = true
    )]
    secrets_ca_pem: Option<String>,
    /// The namespace of the workload this proxy serves (local mode).
    #[arg(long, env = "STREAMWARD_NAMESPACE", default_value = "default")]
    namespace: String,
    /// The service account of the workload this proxy serves (local mode).
    #[arg(long, env = "STREAMWARD_SERVICE_ACCOUNT", default_value = "default")]
    service_account: String,
    /// With --config-map: the longest the proxy serves a config the API server has not
    /// confirmed (a watch event, a relist, or a read of the ConfigMap, which the proxy makes
    /// whenever the watch has been quiet for a third of this). Past it, what --stale-config
    /// says fails closed, /readyz says why, and the proxy recovers once the API server answers.
    /// A duration such as `5m` or `30s`; `0` never lets the config go stale.
    #[arg(long, env = "STREAMWARD_MAX_CONFIG_STALENESS", default_value = "5m", value_parser = parse_duration)]
    max_config_staleness: Duration,
    /// What fails closed once the config is stale: `grants` (AccessGrants stop counting; the
    /// StreamPolicies' rules still apply) or `all` (every request is refused).
    #[arg(
        long,
        env = "STREAMWARD_STALE_CONFIG",
        value_enum,
        default_value = "grants"
    )]
    stale_config: StaleScope,
    /// The StreamTarget to serve; needed when the config has more than one.
    #[arg(long, env = "STREAMWARD_TARGET")]
    target: Option<String>,
    /// The bootstrap listener clients connect to.
    #[arg(long, default_value = "127.0.0.1:9092")]
    listen: SocketAddr,
    /// Broker listeners on this port + the broker's node id (default: ports the OS picks).
    #[arg(long)]
    broker_port_base: Option<u16>,
    /// The admin listener: /metrics, /healthz, /readyz.
    #[arg(long, default_value = "127.0.0.1:9464")]
    admin: SocketAddr,
    /// A file of the pod's labels (downward API format, `key="value"` per line).
    #[arg(long)]
    pod_labels: Option<PathBuf>,
    /// How often the config source is checked for changes, in milliseconds.
    #[arg(long, default_value_t = 500)]
    reload_interval_ms: u64,
    /// The largest client request accepted, in bytes.
    #[arg(long, default_value_t = streamward_sidecar::frame::DEFAULT_MAX_FRAME)]
    max_request_bytes: usize,
    /// Bytes of decompressed and rewritten records the whole proxy holds at once for masking;
    /// sized with the container's memory limit (the defaults fit the injected 128Mi).
    #[arg(long, env = "STREAMWARD_MASK_MEMORY_BYTES", default_value_t = budget::DEFAULT_PROXY_BYTES)]
    mask_memory_bytes: usize,
    /// Bytes one connection holds at once for masking one record set; a batch that needs more
    /// is answered with an error for its partition.
    #[arg(long, env = "STREAMWARD_MASK_CONNECTION_MEMORY_BYTES", default_value_t = budget::DEFAULT_CONNECTION_BYTES)]
    mask_connection_memory_bytes: usize,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
    /// Clients authenticate to the proxy with SASL PLAIN or SCRAM-SHA-256/512 as the users of
    /// this YAML file (`users: [{name, password | scramSha256/scramSha512, groups}]`).
    #[arg(long)]
    client_users: Option<PathBuf>,
    /// Clients authenticate with SASL OAUTHBEARER: a JWT from this OIDC issuer (`iss`).
    #[arg(long, requires_all = ["oidc_audience", "oidc_jwks"])]
    oidc_issuer: Option<String>,
    /// The audience (`aud`) the OIDC tokens must name.
    #[arg(long, requires = "oidc_issuer")]
    oidc_audience: Option<String>,
    /// The issuer's signing keys: a JWKS JSON file (read at start, not fetched).
    #[arg(long, requires = "oidc_issuer")]
    oidc_jwks: Option<PathBuf>,
    /// The token claim holding the user's groups.
    #[arg(long, default_value = "groups")]
    oidc_groups_claim: String,
    /// The token claim holding the user name.
    #[arg(long, default_value = "sub")]
    oidc_username_claim: String,
    /// Whether clients must authenticate before anything but ApiVersions and SASL (default:
    /// true when client authentication is configured). With false, a client that does not
    /// authenticate is only the workload identity.
    #[arg(long, value_name = "BOOL")]
    client_auth_required: Option<bool>,
    /// The pod this proxy runs in, named in audit events (the downward API's metadata.name).
    #[arg(long, env = "STREAMWARD_POD_NAME")]
    pod_name: Option<String>,
    /// The operator's config-signing public key (hex): a compiled config (--config,
    /// --config-map) it did not sign is refused and the proxy fails closed. The injected proxy
    /// always gets it.
    #[arg(
        long,
        env = "STREAMWARD_CONFIG_PUBLIC_KEY",
        conflicts_with = "policies"
    )]
    config_public_key: Option<String>,
    /// The audit collector's base URL (http:// or https://); one event per client request is
    /// posted to its /v1/events. Without it no audit events are sent.
    #[arg(long, env = "STREAMWARD_AUDIT_URL")]
    audit_url: Option<String>,
    /// The file holding the bearer token for the collector (re-read before every delivery).
    #[arg(long, env = "STREAMWARD_AUDIT_TOKEN_FILE", requires = "audit_url")]
    audit_token_file: Option<PathBuf>,
    /// CA certificates (PEM) for the collector's TLS certificate (default: the system's roots).
    #[arg(long, env = "STREAMWARD_AUDIT_CA", requires = "audit_url")]
    audit_ca: Option<PathBuf>,
    /// The same as --audit-ca, as PEM text (the injected proxy gets the collector's CA this way).
    #[arg(
        long,
        env = "STREAMWARD_AUDIT_CA_PEM",
        requires = "audit_url",
        conflicts_with = "audit_ca"
    )]
    audit_ca_pem: Option<String>,
    /// The folder events wait in until the collector has them (kept across restarts).
    #[arg(long, env = "STREAMWARD_AUDIT_SPOOL", requires = "audit_url")]
    audit_spool: Option<PathBuf>,
    /// The spool's bound; events past it are dropped, counted and reported.
    #[arg(long, env = "STREAMWARD_AUDIT_SPOOL_MAX_BYTES", default_value_t = audit::DEFAULT_SPOOL_MAX_BYTES)]
    audit_spool_max_bytes: u64,
    /// While the audit spool is full: `continue` forwards traffic and drops (counts, reports)
    /// the events that do not fit; `refuse` answers new requests with POLICY_VIOLATION until
    /// the spool drains, so nothing is forwarded unaudited (NIST SP 800-53 AU-5).
    #[arg(
        long,
        env = "STREAMWARD_AUDIT_FULL",
        value_enum,
        default_value = "continue"
    )]
    audit_full: audit::AuditFull,
    /// Events the in-memory queue between connections and the spool holds.
    #[arg(long, env = "STREAMWARD_AUDIT_QUEUE", default_value_t = audit::DEFAULT_QUEUE)]
    audit_queue: usize,
}

/// Where the config comes from: files polled for changes, or a ConfigMap watched.
enum ConfigSource {
    Poll(Source),
    ConfigMap(ConfigMapSource),
}

fn main() -> anyhow::Result<()> {
    tune_malloc();
    let flags = Flags::parse();
    init_logging(flags.log_json);
    if flags.mask_connection_memory_bytes > flags.mask_memory_bytes {
        anyhow::bail!(
            "--mask-connection-memory-bytes ({}) is larger than --mask-memory-bytes ({})",
            flags.mask_connection_memory_bytes,
            flags.mask_memory_bytes
        );
    }
    budget::MemoryBudget::install(budget::MemoryBudget::new(
        flags.mask_memory_bytes,
        flags.mask_connection_memory_bytes,
    ));
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Large record sets are masked in two halves at once (mask::mask_record_set): the session's
    // thread masks one, this pool's one thread the other.
    rayon_core::ThreadPoolBuilder::new()
        .num_threads(1)
        .thread_name(|_| "mask".into())
        .build_global()
        .context("starting the masking thread")?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run(flags))
}

async fn run(flags: Flags) -> anyhow::Result<()> {
    let reload_every = Duration::from_millis(flags.reload_interval_ms);
    let trust = flags
        .config_public_key
        .as_deref()
        .map(ConfigKey::from_hex)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--config-public-key: {e}"))?
        .map(Arc::new);
    let secrets = match (
        &flags.secrets_url,
        &flags.secrets_token_file,
        &flags.secrets_ca_pem,
    ) {
        (Some(url), Some(token_file), Some(ca_pem)) => {
            let operator = Arc::new(OperatorSecrets::new(url, token_file.clone(), ca_pem)?);
            tokio::spawn(operator.clone().keep_fresh(Duration::from_secs(60)));
            SecretSource::Operator(operator)
        }
        _ => SecretSource::Mounted(flags.secrets_dir.clone()),
    };
    let source = match (&flags.policies, &flags.config, &flags.config_map) {
        (Some(dir), _, _) => ConfigSource::Poll(Source::Policies {
            dir: dir.clone(),
            identity: WorkloadIdentity {
                namespace: flags.namespace.clone(),
                service_account: flags.service_account.clone(),
            },
        }),
        (None, fallback, Some(name)) => ConfigSource::ConfigMap(ConfigMapSource {
            namespace: flags.namespace.clone(),
            name: name.clone(),
            secrets: secrets.clone(),
            fallback: fallback.clone(),
            trust: trust.clone(),
        }),
        (None, Some(file), None) => ConfigSource::Poll(Source::Compiled {
            file: file.clone(),
            secrets,
            trust: trust.clone(),
        }),
        (None, None, None) => {
            anyhow::bail!("pass --policies DIR, --config FILE or --config-map NAME")
        }
    };
    let client = ClientIdentity {
        pod_labels: match &flags.pod_labels {
            Some(path) => read_pod_labels(path)?,
            None => Default::default(),
        },
        user: None,
        groups: Vec::new(),
    };
    let client_auth = load_client_auth(&flags)?;
    let metrics = Arc::new(Metrics::new());
    let audit = start_audit(&flags, metrics.clone())?;
    let state = Arc::new(ArcSwap::from_pointee(State::FailClosed {
        reason: "the config has not been loaded yet".into(),
        last_good: None,
    }));
    let shutdown = CancellationToken::new();
    // Held requests ask for approval through the API server the config comes from.
    let approvals = match &source {
        ConfigSource::ConfigMap(_) => Approvals::through_api_server(),
        ConfigSource::Poll(_) => Approvals::unavailable(),
    };
    let shared = Shared::new(
        state.clone(),
        metrics.clone(),
        Settings {
            advertised_host: flags.listen.ip().to_string(),
            broker_port_base: flags.broker_port_base,
            max_request_bytes: flags.max_request_bytes,
            max_response_bytes: 1 << 30,
            client,
            client_auth,
            audit: audit.as_ref().map(Audit::emitter),
        },
        approvals,
        shutdown.clone(),
    );
    let target = flags.target.clone();
    let freshness = match (&source, flags.max_config_staleness.is_zero()) {
        (ConfigSource::ConfigMap(_), false) => Some(Freshness::new(StalenessLimit {
            max: flags.max_config_staleness,
            scope: flags.stale_config,
        })),
        _ => None,
    };
    match source {
        ConfigSource::Poll(source) => tokio::spawn(source::watch(
            source,
            target,
            state.clone(),
            metrics.clone(),
            reload_every,
        )),
        ConfigSource::ConfigMap(source) => tokio::spawn(config_map::watch(
            source,
            target,
            state.clone(),
            metrics.clone(),
            reload_every,
            freshness.clone(),
        )),
    };

    let listener = tokio::net::TcpListener::bind(flags.listen)
        .await
        .with_context(|| format!("listening on {}", flags.listen))?;
    let admin = tokio::net::TcpListener::bind(flags.admin)
        .await
        .with_context(|| format!("listening on {} (admin)", flags.admin))?;
    tracing::info!(bootstrap = %flags.listen, admin = %flags.admin, "streamward-sidecar listening");
    Listeners::new(shared.clone()).serve(listener, Upstream::Bootstrap);
    let admin_shutdown = shutdown.clone();
    tokio::spawn(async move {
        let app = streamward_sidecar::admin::router(state, metrics, freshness);
        if let Err(error) = axum::serve(admin, app)
            .with_graceful_shutdown(admin_shutdown.cancelled_owned())
            .await
        {
            tracing::error!(%error, "admin server failed");
        }
    });

    wait_for_signal().await;
    tracing::info!("shutting down: finishing requests in flight");
    shutdown.cancel();
    shared.tasks.close();
    if tokio::time::timeout(Duration::from_secs(10), shared.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("some connections were still busy after 10 s");
    }
    if let Some(audit) = audit {
        audit.shutdown(Duration::from_secs(5)).await;
    }
    Ok(())
}

/// The audit pipeline, when --audit-url is given.
fn start_audit(flags: &Flags, metrics: Arc<Metrics>) -> anyhow::Result<Option<Audit>> {
    let Some(url) = &flags.audit_url else {
        tracing::warn!("no --audit-url: audit events are not sent");
        return Ok(None);
    };
    let (Some(token_file), Some(spool_dir)) = (&flags.audit_token_file, &flags.audit_spool) else {
        anyhow::bail!("--audit-url needs --audit-token-file FILE and --audit-spool DIR");
    };
    let settings = AuditSettings {
        url: url.clone(),
        token_file: token_file.clone(),
        ca: match (&flags.audit_ca, &flags.audit_ca_pem) {
            (Some(file), _) => CollectorCa::File(file.clone()),
            (None, Some(pem)) => CollectorCa::Pem(pem.clone()),
            (None, None) => CollectorCa::System,
        },
        spool_dir: spool_dir.clone(),
        spool_max_bytes: flags.audit_spool_max_bytes,
        queue: flags.audit_queue,
        full: flags.audit_full,
        identity: streamward_api::audit::Identity {
            namespace: flags.namespace.clone(),
            service_account: flags.service_account.clone(),
            pod: flags.pod_name.clone(),
            ..Default::default()
        },
    };
    let audit = Audit::start(settings, metrics).context("starting the audit emitter")?;
    Ok(Some(audit))
}

/// Client authentication from the flags, or `None` when no client-auth flag is given.
fn load_client_auth(flags: &Flags) -> anyhow::Result<Option<Arc<ClientAuth>>> {
    let oidc = match (&flags.oidc_issuer, &flags.oidc_audience, &flags.oidc_jwks) {
        (Some(issuer), Some(audience), Some(jwks)) => Some((
            OidcSettings {
                issuer: issuer.clone(),
                audience: audience.clone(),
                groups_claim: flags.oidc_groups_claim.clone(),
                username_claim: flags.oidc_username_claim.clone(),
            },
            jwks.clone(),
        )),
        (None, _, _) => None,
        _ => anyhow::bail!("--oidc-issuer needs --oidc-audience and --oidc-jwks"),
    };
    if flags.client_users.is_none() && oidc.is_none() {
        anyhow::ensure!(
            flags.client_auth_required.is_none(),
            "--client-auth-required needs --client-users or --oidc-issuer"
        );
        return Ok(None);
    }
    let settings = ClientAuthSettings {
        users_file: flags.client_users.clone(),
        oidc,
        required: flags.client_auth_required.unwrap_or(true),
    };
    let auth = ClientAuth::load(&settings).context("setting up client authentication")?;
    tracing::info!(
        mechanisms = ?auth.mechanisms(),
        required = auth.required(),
        "clients authenticate to the proxy"
    );
    Ok(Some(Arc::new(auth)))
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn read_pod_labels(
    path: &std::path::Path,
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading pod labels from {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let (key, value) = line.split_once('=')?;
            Some((
                key.trim().to_string(),
                value.trim().trim_matches('"').to_string(),
            ))
        })
        .collect())
}

/// A duration flag: `5m`, `30s`, `1h 30m`, `500ms`, or `0`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    let parsed: jiff::SignedDuration = text
        .trim()
        .parse()
        .map_err(|e| format!("{text:?} is not a duration such as 5m or 30s: {e}"))?;
    Duration::try_from(parsed).map_err(|_| format!("{text:?} is negative"))
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Sets glibc's allocator for a proxy's few, large, short-lived buffers.
///
/// - **One arena.** By default each thread that allocates gets an arena of its own (up to
///   eight per core), and each arena keeps what its frees leave behind: with the runtime's two
///   workers, the audit writer and the masking thread each holding freed frames and buffers,
///   peak RSS in a `just bench` run was 31.2 MiB masking and 23.5 MiB auditing, against 25.6
///   and 19.8 MiB with one arena. Small allocations still come from each thread's own cache
///   without a lock, so the one arena's lock is rarely contended.
/// - **Buffers up to 2 MiB from the heap, 6 MiB of free heap top kept.** A Fetch response
///   (up to 1 MiB per partition by default) lives as the frame read, the masked record sets
///   and the re-encoded response. Left to glibc's moving thresholds, those buffers were mapped
///   fresh or the heap's top was returned and grown again for nearly every response, and each
///   first touch of a page faulted: 475,702 page faults in one `bench_mask` run against
///   163,225 with these settings, 7.36 s of CPU time against 6.27 s, and a peak RSS of
///   28.8 MiB against 26.8 (one run each; docs/performance.md has the other thresholds
///   tried). Larger allocations are still mapped and returned when freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_malloc() {
    const MMAP_THRESHOLD: libc::c_int = 2 << 20;
    const TRIM_THRESHOLD: libc::c_int = 6 << 20;
    // SAFETY: mallopt only sets allocator parameters; it is called before any other thread
    // exists, so no allocation is in progress elsewhere.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_malloc() {}

//! Where the Secrets a config names (broker credentials, CA bundles, masking keys) come from.
//!
//! An injected proxy asks the operator for them (`--secrets-url`) with a projected token only
//! its container mounts: they live in the operator's namespace, out of reach of everyone in
//! the workload's (see `streamward_api::secrets`). They are kept in memory only, asked for
//! again every minute (a rotated password arrives without a restart), every 5 s while the
//! config names one the last answer lacked, and whenever the config changes (a new
//! MaskingRule may name a new key). Until the operator first answers, the
//! proxy fails closed; after that, an operator that is away leaves the last answer in force.
//!
//! Outside Kubernetes (`--config` with `--secrets-dir`), they are read from files laid out as
//! Kubernetes mounts Secrets: `<dir>/<secret>/<key>`.

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use streamward_api::config::ProxyConfig;
use streamward_api::secrets::{PROXY_SECRETS_PATH, ProxySecrets};
use tokio::sync::watch;

use crate::source::{LoadError, Secrets};

/// The largest answer the operator may send (a few Secrets of a few keys each).
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;
/// How long one request to the operator may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the Secrets come from.
#[derive(Clone, Debug)]
pub enum SecretSource {
    /// Files, `<dir>/<secret>/<key>`.
    Mounted(PathBuf),
    /// The operator, for the proxy of an injected pod.
    Operator(Arc<OperatorSecrets>),
}

impl SecretSource {
    /// The Secrets `config` names, as known now. Only a source that has never answered is an
    /// error; a Secret it does not have is reported when the target or rule that needs it is
    /// used.
    pub fn read(&self, config: &ProxyConfig) -> Result<Secrets, LoadError> {
        match self {
            SecretSource::Mounted(dir) => read_mounted(dir, &names(config)),
            SecretSource::Operator(operator) => match &**operator.answer.load() {
                Answer::Got(secrets) => {
                    let wanting = names(config).iter().any(|name| !secrets.contains_key(name));
                    operator.wanting.store(wanting, Ordering::Relaxed);
                    Ok(secrets.clone())
                }
                Answer::NotYet(reason) => Err(LoadError::Secrets(reason.clone())),
            },
        }
    }

    /// A number that changes when the Secrets do.
    pub fn version(&self) -> u64 {
        let mut hasher = std::hash::DefaultHasher::new();
        self.stamp(&mut hasher);
        hasher.finish()
    }

    /// Feeds what identifies the Secrets' current version into `hasher`.
    pub fn stamp(&self, hasher: &mut impl Hasher) {
        match self {
            // Kubernetes swaps mounted volumes through a `..data` symlink.
            SecretSource::Mounted(dir) => stamp_file(hasher, &dir.join("..data")),
            SecretSource::Operator(operator) => operator.changes.borrow().hash(hasher),
        }
    }
}

/// Feeds `path`, its size and modification time into `hasher`.
pub fn stamp_file(hasher: &mut impl Hasher, path: &Path) {
    path.hash(hasher);
    if let Ok(meta) = std::fs::metadata(path) {
        meta.len().hash(hasher);
        meta.modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::SystemTime::UNIX_EPOCH).ok())
            .hash(hasher);
    }
}

/// The names of the Secrets `config` uses: its targets' credentials and CA bundles, and its
/// masking rules' keys.
fn names(config: &ProxyConfig) -> BTreeSet<String> {
    let target_secrets = config.targets.values().flat_map(|target| {
        target
            .sasl
            .iter()
            .map(|s| s.credentials_secret.clone())
            .chain(
                target
                    .tls
                    .iter()
                    .filter_map(|t| t.ca_secret_ref.as_ref().map(|r| r.name.clone())),
            )
    });
    let masking_secrets = crate::masking::key_refs(config).map(|r| r.name.clone());
    target_secrets.chain(masking_secrets).collect()
}

fn read_mounted(dir: &Path, names: &BTreeSet<String>) -> Result<Secrets, LoadError> {
    let mut secrets = Secrets::new();
    for name in names {
        let folder = dir.join(name);
        let Ok(entries) = std::fs::read_dir(&folder) else {
            // Reported when the target (or the masking rule) that needs it is used.
            continue;
        };
        let keys = secrets.entry(name.clone()).or_default();
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(key) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if key.starts_with("..") || !path.is_file() {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(|source| LoadError::Read {
                path: path.clone(),
                source,
            })?;
            keys.insert(key.to_string(), bytes);
        }
    }
    Ok(secrets)
}

/// What the operator last said.
enum Answer {
    /// Nothing yet, and why.
    NotYet(String),
    /// These Secrets.
    Got(Secrets),
}

/// Why the operator could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// The URL or CA is unusable (a flag is wrong).
    #[error("--secrets-url {url:?}: {reason}")]
    Setup {
        /// The URL given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// This attempt failed; a later one may not.
    #[error("asking the operator for this proxy's Secrets: {0}")]
    Fetch(String),
}

/// The operator's Secrets endpoint, and what it last answered this proxy.
pub struct OperatorSecrets {
    uri: Uri,
    token_file: PathBuf,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    answer: ArcSwap<Answer>,
    /// Counts the answers that changed the Secrets.
    changes: watch::Sender<u64>,
    /// The config in force names a Secret the last answer did not serve: ask again soon. Just
    /// after a StreamTarget or MaskingRule is applied, the operator's view may not have it yet.
    wanting: AtomicBool,
}

impl std::fmt::Debug for OperatorSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorSecrets")
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

impl OperatorSecrets {
    /// The operator at base URL `url`, presenting the token in `token_file` (read again for
    /// every request: the kubelet rotates it), trusting the CA certificates `ca_pem`.
    pub fn new(url: &str, token_file: PathBuf, ca_pem: &str) -> Result<Self, SecretsError> {
        let setup = |reason: String| SecretsError::Setup {
            url: url.to_owned(),
            reason,
        };
        let uri: Uri = format!("{}{PROXY_SECRETS_PATH}", url.trim_end_matches('/'))
            .parse()
            .map_err(|e: http::uri::InvalidUri| setup(e.to_string()))?;
        if uri.scheme_str() != Some("https") || uri.host().is_none() {
            return Err(setup(
                "must be https://host:port: the answer holds credentials".into(),
            ));
        }
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            let cert = cert.map_err(|e| setup(format!("--secrets-ca-pem: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| setup(format!("--secrets-ca-pem: {e}")))?;
        }
        if roots.is_empty() {
            return Err(setup(
                "--secrets-ca-pem holds no CERTIFICATE: give the operator's CA".into(),
            ));
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| setup(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        Ok(OperatorSecrets {
            uri,
            token_file,
            client: Client::builder(TokioExecutor::new()).build(connector),
            answer: ArcSwap::from_pointee(Answer::NotYet(
                "the operator has not answered yet".into(),
            )),
            changes: watch::channel(0).0,
            wanting: AtomicBool::new(false),
        })
    }

    /// A receiver that sees a new value whenever the Secrets change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Asks the operator now. On failure the last answer stays in force (or, before the
    /// first, the failure is what the proxy reports).
    pub async fn refresh(&self) -> Result<(), SecretsError> {
        let fetched = tokio::time::timeout(REQUEST_TIMEOUT, self.fetch())
            .await
            .unwrap_or_else(|_| {
                Err(SecretsError::Fetch(format!(
                    "no answer within {}s",
                    REQUEST_TIMEOUT.as_secs()
                )))
            });
        match fetched {
            Ok(answer) => {
                for (name, reason) in &answer.withheld {
                    tracing::warn!(secret = %name, %reason, "the operator withholds a Secret");
                }
                let secrets: Secrets = answer
                    .secrets
                    .into_iter()
                    .map(|(name, keys)| (name, keys.into_iter().map(|(k, v)| (k, v.0)).collect()))
                    .collect();
                let same = matches!(&**self.answer.load(), Answer::Got(old) if *old == secrets);
                if !same {
                    tracing::info!(
                        secrets = ?secrets.keys().collect::<Vec<_>>(),
                        "Secrets from the operator"
                    );
                    self.answer.store(Arc::new(Answer::Got(secrets)));
                    self.changes.send_modify(|n| *n += 1);
                }
                Ok(())
            }
            Err(error) => {
                if matches!(&**self.answer.load(), Answer::NotYet(_)) {
                    self.answer
                        .store(Arc::new(Answer::NotYet(error.to_string())));
                    self.changes.send_modify(|n| *n += 1);
                }
                Err(error)
            }
        }
    }

    /// The operator's answer now, without putting it in force.
    pub async fn fetch(&self) -> Result<ProxySecrets, SecretsError> {
        let fail = |reason: String| SecretsError::Fetch(reason);
        let token = tokio::fs::read_to_string(&self.token_file)
            .await
            .map_err(|e| fail(format!("reading {}: {e}", self.token_file.display())))?;
        let request = Request::get(self.uri.clone())
            .header(header::AUTHORIZATION, format!("Bearer {}", token.trim()))
            .body(Empty::new())
            .map_err(|e| fail(format!("the token cannot be sent in a header: {e}")))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| fail(format!("{}: {e}", self.uri)))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| fail(format!("reading the answer: {e}")))?
            .to_bytes();
        if status != StatusCode::OK {
            let said = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(300).collect());
            return Err(fail(format!("the operator answered {status}: {said}")));
        }
        serde_json::from_slice(&body).map_err(|e| fail(format!("the answer is not valid: {e}")))
    }

    /// Asks every `every` (every 2 s until the first answer, and every 5 s while the config
    /// names a Secret the last answer did not serve), forever.
    pub async fn keep_fresh(self: Arc<Self>, every: Duration) {
        loop {
            let wait = match self.refresh().await {
                Ok(()) if self.wanting.load(Ordering::Relaxed) => Duration::from_secs(5),
                Ok(()) => every,
                Err(error) => {
                    tracing::warn!(%error, "the operator did not serve this proxy's Secrets");
                    if matches!(&**self.answer.load(), Answer::NotYet(_)) {
                        Duration::from_secs(2)
                    } else {
                        every
                    }
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

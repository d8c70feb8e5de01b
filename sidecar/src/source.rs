//! Where the proxy's config comes from, and reloading it without dropping connections.
//!
//! Local mode (`--policies DIR`) compiles the YAML a user would `kubectl apply` with the same
//! function the operator uses; `--config FILE` reads a config the operator compiled. Either is
//! polled for changes; a change is applied to the next request on every open connection. A
//! source that cannot be read or compiled leaves the proxy failing closed until it is fixed.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use jiff::Timestamp;
use streamward_api::config::{
    CompiledTarget, ProxyConfig, SIGNATURE_KEY, SaslMechanism, WorkloadIdentity,
};

use crate::masking::MaskingPlans;
use crate::metrics::Metrics;
use crate::policy::{ClientIdentity, FailClosed, InForce, RequestPolicy};
use crate::secrets::{SecretSource, stamp_file};
use crate::upstream::{Connector, UpstreamSasl, UpstreamSettings, UpstreamTls};

/// Secret name → key → bytes.
pub type Secrets = BTreeMap<String, BTreeMap<String, Vec<u8>>>;

/// Where to read the config.
#[derive(Clone, Debug)]
pub enum Source {
    /// A folder of StreamTarget/StreamPolicy/AccessGrant (and Secret) YAML, compiled for
    /// `identity`.
    Policies {
        /// The folder.
        dir: PathBuf,
        /// Whose proxy this is.
        identity: WorkloadIdentity,
    },
    /// A compiled config (JSON), and where the Secrets it names come from.
    Compiled {
        /// The config file (its signature, if any, beside it as [`SIGNATURE_KEY`]).
        file: PathBuf,
        /// Where the Secrets come from.
        secrets: SecretSource,
        /// The operator's key the config must be signed with.
        trust: Option<Arc<ConfigKey>>,
    },
}

/// The operator's config-signing public key: a config it did not sign is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigKey(Vec<u8>);

impl ConfigKey {
    /// The key from its hex form (`STREAMWARD_CONFIG_PUBLIC_KEY`), or why it is not one.
    pub fn from_hex(text: &str) -> Result<ConfigKey, String> {
        let bytes = hex::decode(text.trim()).map_err(|e| format!("not hex: {e}"))?;
        if bytes.len() != 32 {
            return Err(format!(
                "an Ed25519 public key has 32 bytes, this one {}",
                bytes.len()
            ));
        }
        Ok(ConfigKey(bytes))
    }

    /// Whether `signature` (hex) signs exactly `config` with this key.
    fn signed(&self, config: &str, signature: &str) -> bool {
        let Ok(signature) = hex::decode(signature.trim()) else {
            return false;
        };
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &self.0)
            .verify(config.as_bytes(), &signature)
            .is_ok()
    }
}

/// A config ready to serve: the compiled policy, the target this proxy serves, and a connector
/// with that target's TLS and credentials.
pub struct Loaded {
    /// The compiled config.
    pub config: ProxyConfig,
    /// The name of the target served.
    pub target_name: String,
    /// Its bootstrap servers.
    pub bootstrap: Vec<String>,
    /// How to reach its brokers.
    pub connector: Arc<Connector>,
    /// The masking keys of this config's MaskingRules and the plans built from them.
    pub masking: MaskingPlans,
}

/// The config in force: a [`Loaded`] config, or the reason there is none.
pub enum State {
    /// Serving this config.
    Ready(Arc<Loaded>),
    /// Failing closed: every request is refused, saying why. The last config that loaded, if
    /// any, is kept only to reach the brokers, so clients hear the refusal as the Kafka errors
    /// they understand instead of a broker they cannot find.
    FailClosed {
        /// What is wrong with the config.
        reason: String,
        /// The last config that loaded, for its target's connection settings only.
        last_good: Option<Arc<Loaded>>,
    },
}

/// Why a config could not be loaded. Every message names the file or object at fault.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file or folder could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The YAML or JSON was not valid.
    #[error("parsing {path}: {message}")]
    Parse {
        /// The path.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// The resources did not compile.
    #[error("compiling the policies: {0}")]
    Compile(String),
    /// The target to serve is ambiguous or missing.
    #[error("{0}")]
    Target(String),
    /// The config is not signed by the operator's key (someone else wrote it).
    #[error(
        "{path}: the config is not signed by the operator's key ({reason}); refusing it, since \
         anyone who can edit the ConfigMap could have written it"
    )]
    Unsigned {
        /// Where it came from.
        path: PathBuf,
        /// No signature, or one that does not verify.
        reason: &'static str,
    },
    /// The Secrets the config names could not be had.
    #[error("no Secrets: {0}")]
    Secrets(String),
    /// The target's TLS or credentials could not be set up.
    #[error("setting up the connection to target {target}: {message}")]
    Upstream {
        /// The target.
        target: String,
        /// What was wrong.
        message: String,
    },
}

impl State {
    /// The config whose target connections use: the one in force, or the last good one.
    pub fn connection_config(&self) -> Option<&Arc<Loaded>> {
        match self {
            State::Ready(loaded) => Some(loaded),
            State::FailClosed { last_good, .. } => last_good.as_ref(),
        }
    }

    /// The policy for a request of `client` at `now`: the loaded config's, or the fail-closed
    /// refusal. Every decision goes through here, so every one is counted and none can skip
    /// failing closed. `explain`: verdicts name the rule that decided (for the audit).
    pub fn policy<'a>(
        &'a self,
        client: &'a ClientIdentity,
        metrics: &'a Metrics,
        now: Timestamp,
        explain: bool,
    ) -> InForce<'a> {
        match self {
            State::Ready(loaded) => InForce::Config(
                RequestPolicy::new(&loaded.config, client, &loaded.target_name, now, metrics)
                    .explained(explain),
            ),
            State::FailClosed { reason, .. } => InForce::FailClosed(FailClosed { reason, metrics }),
        }
    }

    /// Why every request is refused, when the proxy fails closed.
    pub fn refusal(&self) -> Option<&str> {
        match self {
            State::Ready(_) => None,
            State::FailClosed { reason, .. } => Some(reason),
        }
    }
}

impl Source {
    /// Reads and compiles the config, choosing `target` (or the only one there is).
    pub fn load(&self, target: Option<&str>) -> Result<Loaded, LoadError> {
        let (config, secrets) = match self {
            Source::Policies { dir, identity } => {
                let mut inputs = streamward_api::compile::Inputs::default();
                for file in yaml_files(dir)? {
                    let text = read(&file)?;
                    let mut parsed =
                        streamward_api::compile::parse_manifests(&text).map_err(|e| {
                            LoadError::Parse {
                                path: file.clone(),
                                message: e.to_string(),
                            }
                        })?;
                    // Objects without a creation time (not applied yet) count as created when
                    // their file was last written, so a reload does not restart a grant.
                    parsed.default_creation_timestamps(modified(&file)?);
                    inputs.extend(parsed);
                }
                let secrets = inputs.secrets.clone();
                let config = streamward_api::compile::compile(&inputs, identity)
                    .map_err(|e| LoadError::Compile(e.to_string()))?;
                (config, secrets)
            }
            Source::Compiled {
                file,
                secrets,
                trust,
            } => {
                let text = read(file)?;
                let signature = match trust {
                    Some(_) => std::fs::read_to_string(file.with_file_name(SIGNATURE_KEY)).ok(),
                    None => None,
                };
                return load_compiled(
                    &text,
                    signature.as_deref(),
                    trust.as_deref(),
                    file,
                    secrets,
                    target,
                );
            }
        };
        finish(config, &secrets, target)
    }
    /// A value that changes whenever a file the source reads changes (paths, sizes, times).
    pub fn fingerprint(&self) -> u64 {
        let mut hasher = DefaultHasher::new();
        match self {
            Source::Policies { dir, .. } => {
                stamp_file(&mut hasher, dir);
                for file in yaml_files(dir).unwrap_or_default() {
                    stamp_file(&mut hasher, &file);
                }
            }
            Source::Compiled { file, secrets, .. } => {
                stamp_file(&mut hasher, file);
                secrets.stamp(&mut hasher);
            }
        }
        hasher.finish()
    }
}

/// Reads a compiled config (JSON) whose Secrets come from `secrets`.
/// `origin` names where the text came from (a file, or a ConfigMap) in errors. With `trust`,
/// `signature` must be the operator's signature of exactly `text`, and the config's own hash
/// must match its content.
pub fn load_compiled(
    text: &str,
    signature: Option<&str>,
    trust: Option<&ConfigKey>,
    origin: &Path,
    secrets: &SecretSource,
    target: Option<&str>,
) -> Result<Loaded, LoadError> {
    if let Some(key) = trust {
        let unsigned = |reason| LoadError::Unsigned {
            path: origin.to_path_buf(),
            reason,
        };
        let signature = signature.ok_or_else(|| unsigned("it has no signature"))?;
        if !key.signed(text, signature) {
            return Err(unsigned("its signature does not verify"));
        }
    }
    let config: ProxyConfig = serde_json::from_str(text).map_err(|e| LoadError::Parse {
        path: origin.to_path_buf(),
        message: e.to_string(),
    })?;
    if trust.is_some() && !config.hash_is_valid() {
        return Err(LoadError::Parse {
            path: origin.to_path_buf(),
            message: "the config's hash does not match its content".into(),
        });
    }
    let secrets = secrets.read(&config)?;
    finish(config, &secrets, target)
}

/// Chooses the target to serve (`target`, or the only one there is) and sets up its connector.
fn finish(
    config: ProxyConfig,
    secrets: &Secrets,
    target: Option<&str>,
) -> Result<Loaded, LoadError> {
    let target_name = match target {
        Some(name) => name.to_string(),
        None => {
            let mut names = config.targets.keys();
            match (names.next(), names.next()) {
                (Some(only), None) => only.clone(),
                (None, _) => {
                    return Err(LoadError::Target(
                        "no StreamTarget in the config: add one, or pass --target".into(),
                    ));
                }
                (Some(_), Some(_)) => {
                    return Err(LoadError::Target(format!(
                        "{} StreamTargets in the config: pass --target to choose one",
                        config.targets.len()
                    )));
                }
            }
        }
    };
    let target = config.targets.get(&target_name).ok_or_else(|| {
        LoadError::Target(format!(
            "StreamTarget {target_name} is not in the config of {}/{}",
            config.identity.namespace, config.identity.service_account
        ))
    })?;
    let connector = connector_for(&target_name, target, secrets)?;
    let masking = MaskingPlans::new(&config, secrets);
    Ok(Loaded {
        masking,
        bootstrap: target.bootstrap_servers.clone(),
        target_name,
        connector: Arc::new(connector),
        config,
    })
}

/// Loads `source` now and then every `every` when it changed, publishing into `state`.
pub async fn watch(
    source: Source,
    target: Option<String>,
    state: Arc<ArcSwap<State>>,
    metrics: Arc<Metrics>,
    every: Duration,
) {
    let mut last = None;
    loop {
        let fingerprint = source.fingerprint();
        if last != Some(fingerprint) {
            last = Some(fingerprint);
            publish(&state, &metrics, source.load(target.as_deref()));
        }
        tokio::time::sleep(every).await;
    }
}

/// Puts a freshly loaded config in force, or — when it did not load — fails closed, keeping the
/// last good config only to reach the brokers.
pub fn publish(state: &ArcSwap<State>, metrics: &Metrics, loaded: Result<Loaded, LoadError>) {
    let next = match loaded {
        Ok(loaded) => {
            tracing::info!(
                hash = %loaded.config.hash,
                target = %loaded.target_name,
                policies = loaded.config.policies.len(),
                grants = loaded.config.grants.len(),
                "config loaded"
            );
            metrics.config_loaded(true);
            State::Ready(Arc::new(loaded))
        }
        Err(error) => {
            tracing::error!(%error, "no valid config: refusing every request until it is fixed");
            metrics.config_loaded(false);
            let last_good = state.load().connection_config().cloned();
            State::FailClosed {
                reason: error.to_string(),
                last_good,
            }
        }
    };
    state.store(Arc::new(next));
}

fn modified(path: &Path) -> Result<jiff::Timestamp, LoadError> {
    let read_error = |source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    };
    let time = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .map_err(read_error)?;
    jiff::Timestamp::try_from(time).map_err(|e| LoadError::Parse {
        path: path.to_path_buf(),
        message: format!("its modification time is out of range: {e}"),
    })
}

fn read(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let entries = std::fs::read_dir(dir).map_err(|source| LoadError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

fn connector_for(
    name: &str,
    target: &CompiledTarget,
    secrets: &Secrets,
) -> Result<Connector, LoadError> {
    let fail = |message: String| LoadError::Upstream {
        target: name.to_string(),
        message,
    };
    let secret = |secret: &str, key: &str| -> Result<Vec<u8>, LoadError> {
        secrets
            .get(secret)
            .and_then(|keys| keys.get(key))
            .cloned()
            .ok_or_else(|| fail(format!("Secret {secret} has no key {key}")))
    };
    let text = |bytes: Vec<u8>, what: &str| {
        String::from_utf8(bytes).map_err(|_| fail(format!("{what} is not UTF-8")))
    };
    let tls = match &target.tls {
        None => None,
        Some(tls) => Some(UpstreamTls {
            ca_pem: match &tls.ca_secret_ref {
                Some(r) => Some(secret(&r.name, &r.key)?),
                None => None,
            },
            server_name: tls.server_name.clone(),
        }),
    };
    let sasl = match &target.sasl {
        None => None,
        Some(sasl) => {
            let secret_name = &sasl.credentials_secret;
            let (mechanism, password_key) = match sasl.mechanism {
                SaslMechanism::Plain => (crate::upstream::SaslMechanism::Plain, "password"),
                SaslMechanism::ScramSha256 => {
                    (crate::upstream::SaslMechanism::ScramSha256, "password")
                }
                SaslMechanism::ScramSha512 => {
                    (crate::upstream::SaslMechanism::ScramSha512, "password")
                }
                SaslMechanism::OAuthBearer => {
                    (crate::upstream::SaslMechanism::OAuthBearer, "token")
                }
            };
            let username = match mechanism {
                crate::upstream::SaslMechanism::OAuthBearer => String::new(),
                _ => text(secret(secret_name, "username")?, "the username")?,
            };
            Some(UpstreamSasl {
                mechanism,
                username: username.trim_end().to_string(),
                password: text(secret(secret_name, password_key)?, "the password")?
                    .trim_end()
                    .to_string(),
            })
        }
    };
    Connector::new(UpstreamSettings { tls, sasl }).map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod signature_tests {
    use super::*;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    #[test]
    fn a_config_the_operator_did_not_sign_is_refused_before_it_is_read() {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let key = ConfigKey::from_hex(&hex::encode(pair.public_key().as_ref())).unwrap();
        let config = "{\"not\": \"even a config\"}";
        let good = hex::encode(pair.sign(config.as_bytes()).as_ref());
        assert!(key.signed(config, &good));
        assert!(!key.signed("{\"not\": \"even a config!\"}", &good));
        assert!(!key.signed(config, "not hex"));
        let origin = Path::new("configmap/shop/streamward-config-orders");
        let secrets = &SecretSource::Mounted("/nonexistent".into());
        for signature in [None, Some("00")] {
            let error = load_compiled(config, signature, Some(&key), origin, secrets, None)
                .err()
                .unwrap();
            assert!(matches!(error, LoadError::Unsigned { .. }), "{error}");
            assert!(
                error.to_string().contains("not signed by the operator"),
                "{error}"
            );
        }
        // Signed, it goes on to be parsed (and fails there, as this is no config).
        let error = load_compiled(config, Some(&good), Some(&key), origin, secrets, None)
            .err()
            .unwrap();
        assert!(matches!(error, LoadError::Parse { .. }), "{error}");
        assert!(ConfigKey::from_hex("abcd").is_err());
    }
}

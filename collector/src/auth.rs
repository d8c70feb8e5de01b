//! Who may send events: proxies with a token from the token file (local mode), or with a
//! projected service-account token the API server vouches for (TokenReview, in Kubernetes).
//!
//! A service-account caller may only send events about its own workload: every event's
//! identity must name the namespace and service account the token belongs to, so one
//! compromised proxy cannot write history for another.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use sha2::{Digest, Sha256};
use streamward_api::audit::AuditEvent;

/// The audience proxies' projected tokens are minted for.
pub const AUDIENCE: &str = "streamward-collector";

/// An authenticated sender.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A token-file token bound to no workload: it may send events of any identity.
    Unbound,
    /// A workload: it may only send its own events.
    Workload {
        /// Its namespace.
        namespace: String,
        /// Its service account.
        service_account: String,
    },
}

impl Caller {
    /// The first event this caller may not send, if any, with the reason.
    pub fn refuses(&self, events: &[AuditEvent]) -> Option<String> {
        let Caller::Workload {
            namespace,
            service_account,
        } = self
        else {
            return None;
        };
        events.iter().find_map(|event| {
            let Some(identity) = event.identity() else {
                return Some(format!(
                    "event {:?} is not a proxy's event: only the collector records queries",
                    event.id
                ));
            };
            (identity.namespace != *namespace || identity.service_account != *service_account).then(
                || {
                    format!(
                        "event {:?} claims the identity {}/{}, but the token belongs to {}/{}",
                        event.id,
                        identity.namespace,
                        identity.service_account,
                        namespace,
                        service_account
                    )
                },
            )
        })
    }
}

/// Why a caller was not let in.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No bearer token.
    #[error("no bearer token (send Authorization: Bearer <token>)")]
    Missing,
    /// The token is not valid.
    #[error("the token is not valid")]
    Invalid,
    /// The API server could not be asked; the sender should retry.
    #[error("the token could not be checked now: {0}")]
    Unavailable(String),
}

/// Tokens from a token file.
pub struct TokenFile {
    /// SHA-256 of each token → whom it is for. Hashes, so that comparing is not a byte-by-byte
    /// race on the secret itself.
    tokens: HashMap<[u8; 32], Caller>,
}

impl TokenFile {
    /// Reads a token file: one token per line, optionally followed by whitespace and
    /// `<namespace>/<serviceaccount>` to bind it to one workload; blank lines and lines
    /// starting with `#` are ignored.
    pub fn read(path: &Path) -> Result<TokenFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the token file {}", path.display()))?;
        let tokens = TokenFile::parse(&text)
            .with_context(|| format!("reading the token file {}", path.display()))?;
        Ok(tokens)
    }

    /// Parses the text of a token file.
    pub fn parse(text: &str) -> Result<TokenFile> {
        let mut tokens = HashMap::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            let token = parts.next().unwrap_or_default();
            let caller = match parts.next() {
                None => Caller::Unbound,
                Some(binding) => {
                    let Some((namespace, service_account)) = binding.split_once('/') else {
                        bail!(
                            "line {}: after the token comes <namespace>/<serviceaccount>",
                            number + 1
                        );
                    };
                    Caller::Workload {
                        namespace: namespace.to_string(),
                        service_account: service_account.to_string(),
                    }
                }
            };
            if parts.next().is_some() {
                bail!("line {}: too many fields", number + 1);
            }
            if token.len() < 16 {
                bail!(
                    "line {}: a token must be at least 16 characters long",
                    number + 1
                );
            }
            tokens.insert(digest(token), caller);
        }
        if tokens.is_empty() {
            bail!("it holds no token");
        }
        Ok(TokenFile { tokens })
    }

    /// Whether `token` is in the file.
    pub fn contains(&self, token: &str) -> bool {
        self.tokens.contains_key(&digest(token))
    }

    fn check(&self, token: &str) -> Result<Caller, AuthError> {
        self.tokens
            .get(&digest(token))
            .cloned()
            .ok_or(AuthError::Invalid)
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Projected service-account tokens checked with TokenReview.
pub struct TokenReviewer {
    client: kube::Client,
    audience: String,
    /// Recently reviewed tokens (by hash), so a busy proxy does not cost a review per batch.
    cache: Mutex<HashMap<[u8; 32], (Caller, Instant)>>,
}

const CACHE_FOR: Duration = Duration::from_secs(30);
const CACHE_MAX: usize = 10_000;

impl TokenReviewer {
    /// Reviews tokens through `client` for `audience`.
    pub fn new(client: kube::Client, audience: String) -> TokenReviewer {
        TokenReviewer {
            client,
            audience,
            cache: Mutex::new(HashMap::new()),
        }
    }

    async fn check(&self, token: &str) -> Result<Caller, AuthError> {
        let key = digest(token);
        if let Ok(cache) = self.cache.lock()
            && let Some((caller, at)) = cache.get(&key)
            && at.elapsed() < CACHE_FOR
        {
            return Ok(caller.clone());
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let api: kube::Api<TokenReview> = kube::Api::all(self.client.clone());
        let reviewed = api
            .create(&kube::api::PostParams::default(), &review)
            .await
            .map_err(|e| AuthError::Unavailable(format!("TokenReview failed: {e}")))?;
        let status = reviewed.status.unwrap_or_default();
        if status.authenticated != Some(true)
            || !status
                .audiences
                .as_ref()
                .is_some_and(|a| a.contains(&self.audience))
        {
            return Err(AuthError::Invalid);
        }
        let username = status.user.and_then(|u| u.username).unwrap_or_default();
        let Some(rest) = username.strip_prefix("system:serviceaccount:") else {
            return Err(AuthError::Invalid);
        };
        let Some((namespace, service_account)) = rest.split_once(':') else {
            return Err(AuthError::Invalid);
        };
        let caller = Caller::Workload {
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        };
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
            cache.insert(key, (caller.clone(), Instant::now()));
        }
        Ok(caller)
    }
}

/// How ingest authenticates.
pub enum Authenticator {
    /// Local mode.
    Tokens(TokenFile),
    /// Kubernetes.
    TokenReview(TokenReviewer),
}

impl Authenticator {
    /// Checks the `Authorization` header's value.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, AuthError> {
        let token = bearer(authorization).ok_or(AuthError::Missing)?;
        match self {
            Authenticator::Tokens(tokens) => tokens.check(token),
            Authenticator::TokenReview(reviewer) => reviewer.check(token).await,
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer(authorization: Option<&str>) -> Option<&str> {
    let value = authorization?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_knows_its_tokens_and_their_bindings() {
        let file = TokenFile::parse(
            "# proxies\n\nunbound-token-0123456789\nbound-token-0123456789 shop/orders-app\n",
        )
        .unwrap();
        assert_eq!(
            file.check("unbound-token-0123456789").unwrap(),
            Caller::Unbound
        );
        assert_eq!(
            file.check("bound-token-0123456789").unwrap(),
            Caller::Workload {
                namespace: "shop".into(),
                service_account: "orders-app".into()
            }
        );
        assert!(file.check("unbound-token-012345678").is_err());
        assert!(TokenFile::parse("# nothing\n").is_err());
        assert!(TokenFile::parse("short\n").is_err());
    }

    #[test]
    fn only_bearer_tokens_count() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(None), None);
    }
}

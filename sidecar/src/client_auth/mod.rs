//! Clients authenticating to the proxy: the proxy as a SASL server, so a human or a job is known
//! beyond the pod's service account and policies can name `users` and `groups`.
//!
//! - [`users`]: the users file (PLAIN and SCRAM credentials, groups);
//! - [`plain`], [`scram`] (RFC 5802/7677), [`oauth`] (RFC 7628 with OIDC JWTs checked against
//!   the issuer's JWKS): one exchange of each mechanism, pure;
//! - [`login`]: one connection's authentication in Kafka's terms (`SaslHandshake`,
//!   `SaslAuthenticate`, re-authentication, session expiry).
//!
//! The exchanges are pure functions of the client's bytes, so they are tested without sockets;
//! the session only moves bytes in and out. Passwords and tokens never reach a log or an error.

mod jwt_crypto;
pub mod login;
mod oauth;
mod plain;
mod scram;
mod users;

use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

pub use jwt_crypto::install as install_jwt_crypto;
pub use login::Login;
pub use oauth::{OidcError, OidcSettings, OidcVerifier, VerifiedToken};
pub use users::{ScramCredential, Users, UsersError};

pub use crate::upstream::scram::ScramHash;

/// The mechanisms, by their SASL names.
const PLAIN: &str = "PLAIN";
const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
const SCRAM_SHA_512: &str = "SCRAM-SHA-512";
const OAUTHBEARER: &str = "OAUTHBEARER";

/// Where the client-auth configuration comes from (the proxy's flags).
#[derive(Clone, Debug, Default)]
pub struct ClientAuthSettings {
    /// The users file (PLAIN and SCRAM).
    pub users_file: Option<PathBuf>,
    /// The OIDC issuer for OAUTHBEARER, with the file of its keys (a JWKS).
    pub oidc: Option<(OidcSettings, PathBuf)>,
    /// Whether a client must authenticate before anything but ApiVersions and SASL.
    pub required: bool,
}

/// Why client authentication could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClientAuthError {
    /// A file could not be read.
    #[error("reading {what} {path}: {source}")]
    Read {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The users file is wrong.
    #[error("users file {path}: {source}")]
    Users {
        /// Its path.
        path: PathBuf,
        /// What is wrong.
        source: UsersError,
    },
    /// The OIDC settings or keys are wrong.
    #[error("OIDC issuer keys {path}: {source}")]
    Oidc {
        /// The JWKS path.
        path: PathBuf,
        /// What is wrong.
        source: OidcError,
    },
    /// Neither users nor an issuer: nothing to authenticate against.
    #[error("client authentication needs a users file or an OIDC issuer")]
    Nothing,
}

/// A mechanism the client asked for that the proxy does not offer.
#[derive(Debug, thiserror::Error)]
#[error("SASL mechanism {mechanism:?} is not enabled; the proxy offers {offered}")]
pub struct UnsupportedMechanism {
    /// What the client asked for.
    pub mechanism: String,
    /// What the proxy offers, comma-separated.
    pub offered: String,
}

/// What the proxy authenticates clients against; shared by every connection.
#[derive(Debug)]
pub struct ClientAuth {
    users: Option<Arc<Users>>,
    oidc: Option<Arc<OidcVerifier>>,
    required: bool,
}

impl ClientAuth {
    /// Reads the users file and the issuer's keys named in `settings`.
    pub fn load(settings: &ClientAuthSettings) -> Result<ClientAuth, ClientAuthError> {
        let read = |what, path: &PathBuf| {
            std::fs::read_to_string(path).map_err(|source| ClientAuthError::Read {
                what,
                path: path.clone(),
                source,
            })
        };
        let users =
            match &settings.users_file {
                Some(path) => Some(Users::from_yaml(&read("users file", path)?).map_err(
                    |source| ClientAuthError::Users {
                        path: path.clone(),
                        source,
                    },
                )?),
                None => None,
            };
        let oidc = match &settings.oidc {
            Some((oidc, path)) => Some(
                OidcVerifier::new(oidc.clone(), &read("JWKS", path)?).map_err(|source| {
                    ClientAuthError::Oidc {
                        path: path.clone(),
                        source,
                    }
                })?,
            ),
            None => None,
        };
        ClientAuth::new(users, oidc, settings.required)
    }

    /// Client authentication with these users and this issuer.
    pub fn new(
        users: Option<Users>,
        oidc: Option<OidcVerifier>,
        required: bool,
    ) -> Result<ClientAuth, ClientAuthError> {
        if users.is_none() && oidc.is_none() {
            return Err(ClientAuthError::Nothing);
        }
        Ok(ClientAuth {
            users: users.map(Arc::new),
            oidc: oidc.map(Arc::new),
            required,
        })
    }

    /// Whether clients must authenticate before anything but ApiVersions and SASL requests.
    pub fn required(&self) -> bool {
        self.required
    }

    /// The SASL mechanisms offered, in the order a SaslHandshake response lists them.
    pub fn mechanisms(&self) -> Vec<&'static str> {
        let mut out = Vec::with_capacity(4);
        if let Some(users) = &self.users {
            if users.any_plain() {
                out.push(PLAIN);
            }
            if users.any_scram(ScramHash::Sha256) {
                out.push(SCRAM_SHA_256);
            }
            if users.any_scram(ScramHash::Sha512) {
                out.push(SCRAM_SHA_512);
            }
        }
        if self.oidc.is_some() {
            out.push(OAUTHBEARER);
        }
        out
    }

    /// Starts an exchange of `mechanism` (a SASL name, matched exactly as Kafka does).
    pub fn start(&self, mechanism: &str) -> Result<SaslExchange, UnsupportedMechanism> {
        let unsupported = || UnsupportedMechanism {
            mechanism: mechanism.to_string(),
            offered: self.mechanisms().join(", "),
        };
        if !self.mechanisms().contains(&mechanism) {
            return Err(unsupported());
        }
        let exchange = match (mechanism, &self.users, &self.oidc) {
            (PLAIN, Some(users), _) => Exchange::Plain(users.clone()),
            (SCRAM_SHA_256, Some(users), _) => Exchange::Scram(
                self.scram(ScramHash::Sha256, users)
                    .map_err(|_| unsupported())?,
            ),
            (SCRAM_SHA_512, Some(users), _) => Exchange::Scram(
                self.scram(ScramHash::Sha512, users)
                    .map_err(|_| unsupported())?,
            ),
            (OAUTHBEARER, _, Some(oidc)) => {
                Exchange::OAuthBearer(oauth::OAuthBearerServer::new(oidc.clone()))
            }
            _ => return Err(unsupported()),
        };
        Ok(SaslExchange {
            mechanism: match mechanism {
                PLAIN => PLAIN,
                SCRAM_SHA_256 => SCRAM_SHA_256,
                SCRAM_SHA_512 => SCRAM_SHA_512,
                _ => OAUTHBEARER,
            },
            exchange,
            over: false,
        })
    }

    fn scram(
        &self,
        hash: ScramHash,
        users: &Arc<Users>,
    ) -> Result<scram::ScramServer, getrandom::Error> {
        let mut nonce = [0u8; 24];
        getrandom::fill(&mut nonce)?;
        Ok(scram::ScramServer::new(
            hash,
            users.clone(),
            BASE64.encode(nonce),
        ))
    }
}

/// What the client must hear next, or how the exchange ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send these bytes; the client answers with its next message.
    Challenge(Vec<u8>),
    /// The client is who it says.
    Authenticated {
        /// The user name.
        user: String,
        /// The user's groups.
        groups: Vec<String>,
        /// The server's last message (SCRAM's signature; empty for PLAIN and OAUTHBEARER).
        final_bytes: Vec<u8>,
        /// How long the authentication holds (the token's remaining life for OAUTHBEARER);
        /// 0 means until the connection closes.
        session_lifetime_ms: i64,
    },
    /// Authentication failed; the message is safe to send to the client and to log.
    Failed(String),
}

/// One client's SASL exchange of one mechanism.
pub struct SaslExchange {
    mechanism: &'static str,
    exchange: Exchange,
    over: bool,
}

enum Exchange {
    Plain(Arc<Users>),
    Scram(scram::ScramServer),
    OAuthBearer(oauth::OAuthBearerServer),
}

impl std::fmt::Debug for SaslExchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaslExchange")
            .field("mechanism", &self.mechanism)
            .finish_non_exhaustive()
    }
}

impl SaslExchange {
    /// The mechanism's SASL name.
    pub fn mechanism(&self) -> &'static str {
        self.mechanism
    }

    /// Takes the client's next message.
    pub fn step(&mut self, client_bytes: &[u8]) -> Step {
        if self.over {
            return Step::Failed(format!("the {} exchange is already over", self.mechanism));
        }
        let now_ms = jiff::Timestamp::now().as_millisecond();
        let step = match &mut self.exchange {
            Exchange::Plain(users) => plain::authenticate(users, client_bytes),
            Exchange::Scram(server) => server.step(client_bytes),
            Exchange::OAuthBearer(server) => server.step(client_bytes, now_ms),
        };
        self.over = !matches!(step, Step::Challenge(_));
        step
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::scram::{ScramClient, salted_password};

    fn auth() -> ClientAuth {
        let users =
            Users::from_yaml("users:\n- {name: alice, password: wonderland, groups: [team-a]}\n")
                .unwrap();
        let key = oauth::tests::ec_key("k");
        let oidc =
            OidcVerifier::new(oauth::tests::settings(), &oauth::tests::jwks(&[&key])).unwrap();
        ClientAuth::new(Some(users), Some(oidc), true).unwrap()
    }

    #[test]
    fn the_mechanisms_follow_what_is_configured() {
        assert_eq!(
            auth().mechanisms(),
            ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"]
        );
        let credential = ScramCredential::derive(ScramHash::Sha512, "pw", b"salt", 4096);
        let stored_only = Users::from_yaml(&format!(
            "users:\n- {{name: bob, scramSha512: {}}}\n",
            credential.to_yaml_flow()
        ))
        .unwrap();
        let auth = ClientAuth::new(Some(stored_only), None, false).unwrap();
        assert_eq!(auth.mechanisms(), ["SCRAM-SHA-512"]);
        let error = auth.start("PLAIN").unwrap_err();
        assert_eq!(error.offered, "SCRAM-SHA-512");
        assert!(auth.start("OAUTHBEARER").is_err());
        assert!(auth.start("scram-sha-512").is_err());
        assert!(matches!(
            ClientAuth::new(None, None, true),
            Err(ClientAuthError::Nothing)
        ));
    }

    #[test]
    fn plain_ok_and_bad_password() {
        let auth = auth();
        let mut exchange = auth.start("PLAIN").unwrap();
        assert!(matches!(
            exchange.step(b"\0alice\0wonderland"),
            Step::Authenticated { ref user, .. } if user == "alice"
        ));
        // One message only.
        assert!(matches!(
            exchange.step(b"\0alice\0wonderland"),
            Step::Failed(_)
        ));
        let mut exchange = auth.start("PLAIN").unwrap();
        assert!(matches!(exchange.step(b"\0alice\0nope"), Step::Failed(_)));
    }

    #[test]
    fn scram_through_the_public_api_with_random_nonces() {
        let auth = auth();
        for (mechanism, hash) in [
            ("SCRAM-SHA-256", ScramHash::Sha256),
            ("SCRAM-SHA-512", ScramHash::Sha512),
        ] {
            let mut exchange = auth.start(mechanism).unwrap();
            let client = ScramClient::new(hash, "alice").unwrap();
            let Step::Challenge(first) = exchange.step(client.client_first().as_bytes()) else {
                panic!("no server-first");
            };
            let first = String::from_utf8(first).unwrap();
            let parsed = client.parse_server_first(&first).unwrap();
            let salted = salted_password(hash, b"wonderland", &parsed.salt, parsed.iterations);
            let (last, signature) = client.client_final(&parsed, &salted);
            match exchange.step(last.as_bytes()) {
                Step::Authenticated {
                    user,
                    groups,
                    final_bytes,
                    ..
                } => {
                    assert_eq!((user.as_str(), groups), ("alice", vec!["team-a".into()]));
                    signature
                        .verify(std::str::from_utf8(&final_bytes).unwrap())
                        .unwrap();
                }
                other => panic!("{mechanism}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_debug_output_holds_no_secret() {
        let text = format!("{:?}", auth());
        assert!(!text.contains("wonderland"), "{text}");
        assert!(text.contains("alice"), "{text}");
    }
}

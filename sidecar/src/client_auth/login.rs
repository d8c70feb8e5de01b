//! One connection's authentication to the proxy, in Kafka's terms: `SaslHandshake` names the
//! mechanism; `SaslAuthenticate` requests carry its messages (or, after a v0 handshake, bare
//! length-prefixed tokens, as old clients send them). Until it has authenticated, a client may
//! only send ApiVersions and SASL requests when authentication is required. An authentication
//! with a lifetime (an OIDC token's) must be renewed by re-authenticating on the same
//! connection (KIP-368) as the same user; after it lapses the next request closes the
//! connection, as a Kafka broker does.
//!
//! Pure: the session feeds requests in and sends the answers; time is passed in.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::{
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::{ClientAuth, SaslExchange, Step};

/// What the session does after sending the answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Go on.
    Continue,
    /// Go on; from now on the client is this user (first authentication or a renewal).
    Authenticated {
        /// The user.
        user: String,
        /// The user's groups.
        groups: Vec<String>,
    },
    /// Close the connection after the answer; the reason is for the log.
    Close(String),
}

/// One connection's authentication state.
#[derive(Debug)]
pub struct Login {
    auth: Arc<ClientAuth>,
    state: State,
}

#[derive(Debug)]
enum State {
    /// Not authenticated (an anonymous client, when authentication is optional).
    Anonymous,
    /// A handshake named the mechanism; its messages follow.
    Exchanging {
        exchange: SaslExchange,
        /// After a v0 handshake the messages are bare tokens, not SaslAuthenticate requests.
        raw: bool,
        /// When re-authenticating: the session being renewed.
        previous: Option<Session>,
    },
    Authenticated(Session),
}

#[derive(Debug)]
struct Session {
    user: String,
    mechanism: &'static str,
    /// When the authentication lapses, if it does.
    expires: Option<Instant>,
}

impl Session {
    fn admits(&self, now: Instant) -> Result<(), String> {
        match self.expires {
            Some(expires) if now >= expires => Err(format!(
                "the authentication of {} expired and the client did not re-authenticate",
                self.user
            )),
            _ => Ok(()),
        }
    }
}

impl Login {
    /// A connection that has not authenticated yet.
    pub fn new(auth: Arc<ClientAuth>) -> Login {
        Login {
            auth,
            state: State::Anonymous,
        }
    }

    /// Whether the next frame is a bare SASL token (after a v0 handshake), not a request.
    pub fn expects_raw_token(&self) -> bool {
        matches!(self.state, State::Exchanging { raw: true, .. })
    }

    /// Whether a request other than ApiVersions and SASL may go on; if not, why.
    pub fn admits(&self, now: Instant) -> Result<(), String> {
        match &self.state {
            State::Anonymous if self.auth.required() => {
                Err("the client has not authenticated, and this proxy requires SASL".into())
            }
            State::Anonymous => Ok(()),
            // Requests the client sent before it began renewing are still its own.
            State::Exchanging {
                previous: Some(session),
                ..
            } => session.admits(now),
            State::Exchanging { exchange, .. } => Err(format!(
                "the client sent a request in the middle of its {} authentication",
                exchange.mechanism()
            )),
            State::Authenticated(session) => session.admits(now),
        }
    }

    /// Answers a SaslHandshake (v0 or v1).
    pub fn handshake(
        &mut self,
        version: i16,
        request: &SaslHandshakeRequest,
    ) -> (SaslHandshakeResponse, Outcome) {
        let response = SaslHandshakeResponse::default().with_mechanisms(
            self.auth
                .mechanisms()
                .into_iter()
                .map(StrBytes::from_static_str)
                .collect(),
        );
        let refuse = |error: ResponseError, reason: String| {
            (
                response.clone().with_error_code(error.code()),
                Outcome::Close(reason),
            )
        };
        let mechanism = request.mechanism.as_str();
        let previous = match std::mem::replace(&mut self.state, State::Anonymous) {
            State::Anonymous => None,
            State::Exchanging { .. } => {
                return refuse(
                    ResponseError::IllegalSaslState,
                    "a second SaslHandshake in the middle of an authentication".into(),
                );
            }
            State::Authenticated(session) => {
                if version == 0 {
                    return refuse(
                        ResponseError::IllegalSaslState,
                        "re-authentication needs SaslHandshake v1 or later".into(),
                    );
                }
                if mechanism != session.mechanism {
                    return refuse(
                        ResponseError::IllegalSaslState,
                        format!(
                            "re-authentication must use {}, not {mechanism}",
                            session.mechanism
                        ),
                    );
                }
                Some(session)
            }
        };
        match self.auth.start(mechanism) {
            Ok(exchange) => {
                self.state = State::Exchanging {
                    exchange,
                    raw: version == 0,
                    previous,
                };
                (response, Outcome::Continue)
            }
            Err(unsupported) => refuse(
                ResponseError::UnsupportedSaslMechanism,
                unsupported.to_string(),
            ),
        }
    }

    /// Answers a SaslAuthenticate (v0 to v2).
    pub fn authenticate(
        &mut self,
        version: i16,
        request: &SaslAuthenticateRequest,
        now: Instant,
    ) -> (SaslAuthenticateResponse, Outcome) {
        let response = SaslAuthenticateResponse::default();
        let State::Exchanging {
            exchange,
            raw: false,
            ..
        } = &mut self.state
        else {
            let reason = "SaslAuthenticate without a SaslHandshake v1 naming the mechanism";
            self.state = State::Anonymous;
            return (
                response
                    .with_error_code(ResponseError::IllegalSaslState.code())
                    .with_error_message(Some(StrBytes::from_static_str(reason))),
                Outcome::Close(reason.into()),
            );
        };
        match exchange.step(&request.auth_bytes) {
            Step::Challenge(bytes) => (response.with_auth_bytes(bytes.into()), Outcome::Continue),
            Step::Authenticated {
                user,
                groups,
                final_bytes,
                session_lifetime_ms,
            } => {
                let outcome = self.complete(user, groups, session_lifetime_ms, now);
                let response = match &outcome {
                    Outcome::Close(reason) => failed(response, reason),
                    _ => response.with_auth_bytes(final_bytes.into()),
                };
                let response = if version >= 1 && !matches!(outcome, Outcome::Close(_)) {
                    response.with_session_lifetime_ms(session_lifetime_ms)
                } else {
                    response
                };
                (response, outcome)
            }
            Step::Failed(reason) => {
                self.state = State::Anonymous;
                (failed(response, &reason), Outcome::Close(reason))
            }
        }
    }

    /// Takes a bare SASL token (after a v0 handshake); returns the bare answer, if any: on
    /// failure there is none, the connection just closes, as Kafka does.
    pub fn raw_token(&mut self, token: &[u8], now: Instant) -> (Option<Bytes>, Outcome) {
        let State::Exchanging {
            exchange,
            raw: true,
            ..
        } = &mut self.state
        else {
            return (
                None,
                Outcome::Close("a bare SASL token without a SaslHandshake v0".into()),
            );
        };
        match exchange.step(token) {
            Step::Challenge(bytes) => (Some(bytes.into()), Outcome::Continue),
            Step::Authenticated {
                user,
                groups,
                final_bytes,
                session_lifetime_ms,
            } => match self.complete(user, groups, session_lifetime_ms, now) {
                Outcome::Close(reason) => (None, Outcome::Close(reason)),
                outcome => (Some(final_bytes.into()), outcome),
            },
            Step::Failed(reason) => {
                self.state = State::Anonymous;
                (None, Outcome::Close(reason))
            }
        }
    }

    fn complete(
        &mut self,
        user: String,
        groups: Vec<String>,
        session_lifetime_ms: i64,
        now: Instant,
    ) -> Outcome {
        let State::Exchanging {
            exchange, previous, ..
        } = std::mem::replace(&mut self.state, State::Anonymous)
        else {
            return Outcome::Close("authentication completed outside an exchange".into());
        };
        let mechanism = exchange.mechanism();
        if let Some(previous) = &previous
            && previous.user != user
        {
            // Kafka's rule: a connection keeps its principal.
            return Outcome::Close(format!(
                "re-authentication as {user} on a connection of {} is not allowed",
                previous.user
            ));
        }
        let expires = u64::try_from(session_lifetime_ms)
            .ok()
            .filter(|ms| *ms > 0)
            .and_then(|ms| now.checked_add(Duration::from_millis(ms)));
        if previous.is_some() {
            tracing::info!(%user, mechanism, ?groups, "client re-authenticated");
        } else {
            tracing::info!(%user, mechanism, ?groups, "client authenticated");
        }
        self.state = State::Authenticated(Session {
            user: user.clone(),
            mechanism,
            expires,
        });
        Outcome::Authenticated { user, groups }
    }
}

fn failed(response: SaslAuthenticateResponse, reason: &str) -> SaslAuthenticateResponse {
    response
        .with_error_code(ResponseError::SaslAuthenticationFailed.code())
        .with_error_message(Some(StrBytes::from_string(format!(
            "Authentication failed: {reason}"
        ))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client_auth::oauth::tests::{claims, ec_key, jwks, settings, sign};
    use crate::client_auth::{OidcVerifier, Users};

    fn auth(required: bool) -> Arc<ClientAuth> {
        let users =
            Users::from_yaml("users:\n- {name: alice, password: wonderland, groups: [g]}\n")
                .unwrap();
        Arc::new(ClientAuth::new(Some(users), None, required).unwrap())
    }

    fn handshake(login: &mut Login, version: i16, mechanism: &'static str) -> (i16, Outcome) {
        let request =
            SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(mechanism));
        let (response, outcome) = login.handshake(version, &request);
        (response.error_code, outcome)
    }

    fn authenticate(
        login: &mut Login,
        bytes: &'static [u8],
    ) -> (SaslAuthenticateResponse, Outcome) {
        let request = SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from_static(bytes));
        login.authenticate(2, &request, Instant::now())
    }

    #[test]
    fn plain_login_admits_later_requests_as_the_user() {
        let mut login = Login::new(auth(true));
        assert!(login.admits(Instant::now()).is_err());
        assert_eq!(handshake(&mut login, 1, "PLAIN"), (0, Outcome::Continue));
        assert!(login.admits(Instant::now()).is_err(), "mid-exchange");
        let (response, outcome) = authenticate(&mut login, b"\0alice\0wonderland");
        assert_eq!(response.error_code, 0);
        assert_eq!(response.session_lifetime_ms, 0);
        assert_eq!(
            outcome,
            Outcome::Authenticated {
                user: "alice".into(),
                groups: vec!["g".into()]
            }
        );
        assert!(login.admits(Instant::now()).is_ok());
    }

    #[test]
    fn a_failed_login_answers_sasl_authentication_failed_and_closes() {
        let mut login = Login::new(auth(true));
        handshake(&mut login, 1, "PLAIN");
        let (response, outcome) = authenticate(&mut login, b"\0alice\0nope");
        assert_eq!(
            response.error_code,
            ResponseError::SaslAuthenticationFailed.code()
        );
        let message = response.error_message.unwrap();
        assert!(message.starts_with("Authentication failed"), "{message}");
        assert!(!message.contains("nope"));
        assert!(matches!(outcome, Outcome::Close(_)));
    }

    #[test]
    fn out_of_order_sasl_requests_are_refused() {
        let mut login = Login::new(auth(true));
        let (response, outcome) = authenticate(&mut login, b"\0alice\0wonderland");
        assert_eq!(response.error_code, ResponseError::IllegalSaslState.code());
        assert!(matches!(outcome, Outcome::Close(_)));

        let mut login = Login::new(auth(true));
        let (code, outcome) = handshake(&mut login, 1, "GSSAPI");
        assert_eq!(code, ResponseError::UnsupportedSaslMechanism.code());
        assert!(matches!(outcome, Outcome::Close(reason) if reason.contains("SCRAM-SHA-256")));

        let mut login = Login::new(auth(true));
        handshake(&mut login, 1, "PLAIN");
        let (code, outcome) = handshake(&mut login, 1, "PLAIN");
        assert_eq!(code, ResponseError::IllegalSaslState.code());
        assert!(matches!(outcome, Outcome::Close(_)));
    }

    #[test]
    fn optional_authentication_admits_anonymous_clients() {
        let login = Login::new(auth(false));
        assert!(login.admits(Instant::now()).is_ok());
    }

    #[test]
    fn a_v0_handshake_takes_bare_tokens() {
        let mut login = Login::new(auth(true));
        assert_eq!(handshake(&mut login, 0, "PLAIN"), (0, Outcome::Continue));
        assert!(login.expects_raw_token());
        let (reply, outcome) = login.raw_token(b"\0alice\0wonderland", Instant::now());
        assert_eq!(reply.as_deref(), Some(&b""[..]));
        assert!(matches!(outcome, Outcome::Authenticated { .. }));
        assert!(!login.expects_raw_token());

        let mut login = Login::new(auth(true));
        handshake(&mut login, 0, "PLAIN");
        let (reply, outcome) = login.raw_token(b"\0alice\0x", Instant::now());
        assert!(reply.is_none());
        assert!(matches!(outcome, Outcome::Close(_)));
    }

    #[test]
    fn a_token_login_lapses_unless_renewed_as_the_same_user() {
        let key = ec_key("k");
        let oidc = OidcVerifier::new(settings(), &jwks(&[&key])).unwrap();
        let auth = Arc::new(ClientAuth::new(None, Some(oidc), true).unwrap());
        let bearer = |sub: &str| {
            let token = sign(&key, &claims(sub, &["auditors"]));
            format!("n,,\x01auth=Bearer {token}\x01\x01").into_bytes()
        };
        let request =
            |bytes: Vec<u8>| SaslAuthenticateRequest::default().with_auth_bytes(bytes.into());
        let start = Instant::now();
        let mut login = Login::new(auth);
        handshake(&mut login, 1, "OAUTHBEARER");
        let (response, outcome) = login.authenticate(2, &request(bearer("dave")), start);
        assert!(matches!(outcome, Outcome::Authenticated { .. }));
        let lifetime = Duration::from_millis(response.session_lifetime_ms as u64);
        assert!(lifetime > Duration::from_secs(3500), "{lifetime:?}");
        assert!(login.admits(start + lifetime / 2).is_ok());
        assert!(login.admits(start + lifetime).is_err());

        // Renewal: same mechanism, same user; requests in between are still admitted.
        let (code, _) = handshake(&mut login, 1, "OAUTHBEARER");
        assert_eq!(code, 0);
        assert!(login.admits(start + lifetime / 2).is_ok());
        let later = start + lifetime / 2;
        let (_, outcome) = login.authenticate(2, &request(bearer("dave")), later);
        assert!(matches!(outcome, Outcome::Authenticated { .. }));
        assert!(
            login.admits(start + lifetime).is_ok(),
            "the renewal extends it"
        );

        // Another user may not take the connection over.
        handshake(&mut login, 1, "OAUTHBEARER");
        let (response, outcome) = login.authenticate(2, &request(bearer("mallory")), later);
        assert_eq!(
            response.error_code,
            ResponseError::SaslAuthenticationFailed.code()
        );
        assert!(matches!(outcome, Outcome::Close(_)));
    }
}

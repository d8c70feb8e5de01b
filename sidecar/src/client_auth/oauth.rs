//! SASL OAUTHBEARER (RFC 7628) with OIDC tokens: the bearer token is a JWT, accepted when it is
//! signed by one of the issuer's keys (a JWKS), names the configured issuer and audience, and is
//! within its validity (`exp`, `nbf`, with a small leeway). The user is a claim (`sub` by
//! default) and the groups another (`groups` by default).
//!
//! The issuer's keys come from a local JWKS file; the proxy fetches nothing.

use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::{Step, jwt_crypto};

/// How far `exp` and `nbf` may be off, for clocks that are not quite in step.
const LEEWAY_SECONDS: u64 = 30;
/// Tokens are a few KiB at most; a larger one is not a token.
const MAX_TOKEN_BYTES: usize = 64 * 1024;

/// What an OIDC token must say to be accepted.
#[derive(Clone, Debug)]
pub struct OidcSettings {
    /// The `iss` the tokens must carry.
    pub issuer: String,
    /// An `aud` the tokens must carry.
    pub audience: String,
    /// The claim holding the user's groups (a list of strings, or one string).
    pub groups_claim: String,
    /// The claim holding the user name.
    pub username_claim: String,
}

/// Why the issuer's keys could not be used.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The JWKS is not a JSON Web Key Set.
    #[error("the JWKS is not a JSON Web Key Set: {0}")]
    Jwks(String),
    /// None of its keys can check a signature.
    #[error(
        "the JWKS has no key the proxy can check signatures with (RSA, EC P-256/P-384 or Ed25519 \
         public keys for signing; {skipped} skipped)"
    )]
    NoUsableKey {
        /// How many keys were skipped.
        skipped: usize,
    },
    /// The settings are incomplete.
    #[error("{0}")]
    Settings(String),
}

/// One of the issuer's public keys.
struct IssuerKey {
    kid: Option<String>,
    /// The algorithm the JWK is restricted to, if it says.
    algorithm: Option<Algorithm>,
    family: AlgorithmFamily,
    key: DecodingKey,
}

/// Checks OIDC tokens against one issuer's keys.
pub struct OidcVerifier {
    settings: OidcSettings,
    keys: Vec<IssuerKey>,
}

impl std::fmt::Debug for OidcVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcVerifier")
            .field("settings", &self.settings)
            .field("keys", &self.keys.len())
            .finish()
    }
}

/// A token that was accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedToken {
    /// The user (the username claim).
    pub user: String,
    /// The groups (the groups claim), sorted.
    pub groups: Vec<String>,
    /// When the token expires, in seconds since the epoch.
    pub expires_at: u64,
}

impl OidcVerifier {
    /// A verifier for the issuer in `settings` with the keys of `jwks_json`. Keys that cannot
    /// check signatures (encryption keys, symmetric keys, unknown types) are skipped.
    pub fn new(settings: OidcSettings, jwks_json: &str) -> Result<OidcVerifier, OidcError> {
        jwt_crypto::install();
        if settings.issuer.is_empty() || settings.audience.is_empty() {
            return Err(OidcError::Settings(
                "an OIDC issuer and audience are both needed".into(),
            ));
        }
        if settings.username_claim.is_empty() || settings.groups_claim.is_empty() {
            return Err(OidcError::Settings(
                "the username and groups claim names must not be empty".into(),
            ));
        }
        let set: JwkSet =
            serde_json::from_str(jwks_json).map_err(|e| OidcError::Jwks(e.to_string()))?;
        let mut keys = Vec::new();
        let mut skipped = 0;
        for jwk in &set.keys {
            let kid = jwk.common.key_id.clone();
            let usable_for_signatures = matches!(
                jwk.common.public_key_use,
                None | Some(PublicKeyUse::Signature)
            );
            let family = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Some(AlgorithmFamily::Rsa),
                AlgorithmParameters::EllipticCurve(p)
                    if matches!(p.curve, EllipticCurve::P256 | EllipticCurve::P384) =>
                {
                    Some(AlgorithmFamily::Ec)
                }
                AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                    Some(AlgorithmFamily::Ed)
                }
                _ => None,
            };
            let algorithm = jwk.common.key_algorithm.map(Algorithm::try_from);
            let key = DecodingKey::from_jwk(jwk);
            match (usable_for_signatures, family, algorithm, key) {
                (true, Some(family), None, Ok(key)) => keys.push(IssuerKey {
                    kid,
                    algorithm: None,
                    family,
                    key,
                }),
                (true, Some(family), Some(Ok(algorithm)), Ok(key))
                    if jwt_crypto::is_asymmetric(algorithm) && algorithm.family() == family =>
                {
                    keys.push(IssuerKey {
                        kid,
                        algorithm: Some(algorithm),
                        family,
                        key,
                    })
                }
                _ => {
                    skipped += 1;
                    tracing::warn!(?kid, "skipping a JWKS key that cannot check signatures");
                }
            }
        }
        if keys.is_empty() {
            return Err(OidcError::NoUsableKey { skipped });
        }
        Ok(OidcVerifier { settings, keys })
    }

    /// Checks a token: signature by one of the issuer's keys, issuer, audience, validity.
    /// The error is safe to show the client (it names what is wrong, not the token).
    pub fn verify(&self, token: &str) -> Result<VerifiedToken, String> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err("the token is too large".into());
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| "the token is not a well-formed JWT".to_string())?;
        let algorithm = header.alg;
        if !jwt_crypto::is_asymmetric(algorithm) {
            return Err(format!(
                "tokens signed with {algorithm:?} are not accepted; the issuer must sign with a \
                 public-key algorithm"
            ));
        }
        let candidates: Vec<&IssuerKey> = self
            .keys
            .iter()
            .filter(|k| k.family == algorithm.family())
            .filter(|k| k.algorithm.is_none_or(|a| a == algorithm))
            .filter(|k| header.kid.is_none() || k.kid == header.kid)
            .collect();
        if candidates.is_empty() {
            return Err(match &header.kid {
                Some(kid) => format!("the issuer has no {algorithm:?} key with kid {kid:?}"),
                None => format!("the issuer has no {algorithm:?} key"),
            });
        }
        let mut validation = Validation::new(algorithm);
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECONDS;

        let mut last = ErrorKind::InvalidSignature;
        for candidate in candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &candidate.key, &validation) {
                Ok(data) => return self.identity(&data.claims),
                // The signature is checked before the claims: another key may still fit.
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => {
                    last = e.into_kind();
                }
                Err(e) => {
                    last = e.into_kind();
                    break;
                }
            }
        }
        Err(self.explain(&last))
    }

    fn identity(&self, claims: &Map<String, Value>) -> Result<VerifiedToken, String> {
        let claim = &self.settings.username_claim;
        let user = match claims.get(claim) {
            Some(Value::String(user)) if !user.is_empty() => user.clone(),
            Some(_) => return Err(format!("the token's {claim} claim is not a user name")),
            None => return Err(format!("the token has no {claim} claim")),
        };
        let claim = &self.settings.groups_claim;
        let mut groups = match claims.get(claim) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(group)) => vec![group.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|g| g.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| format!("the token's {claim} claim is not a list of strings"))?,
            Some(_) => {
                return Err(format!(
                    "the token's {claim} claim is not a list of strings"
                ));
            }
        };
        groups.retain(|g| !g.is_empty());
        groups.sort();
        groups.dedup();
        let expires_at = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or("the token's exp claim is malformed")?;
        Ok(VerifiedToken {
            user,
            groups,
            expires_at,
        })
    }

    fn explain(&self, error: &ErrorKind) -> String {
        match error {
            ErrorKind::InvalidSignature => {
                "the token's signature does not verify with the issuer's keys".into()
            }
            ErrorKind::ExpiredSignature => "the token has expired".into(),
            ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".into(),
            ErrorKind::InvalidIssuer => {
                format!("the token's issuer is not {}", self.settings.issuer)
            }
            ErrorKind::InvalidAudience => format!(
                "the token's audience does not include {}",
                self.settings.audience
            ),
            ErrorKind::MissingRequiredClaim(claim) => format!("the token has no {claim} claim"),
            ErrorKind::InvalidClaimFormat(claim) => {
                format!("the token's {claim} claim is malformed")
            }
            ErrorKind::InvalidAlgorithm => {
                "the token's algorithm does not match the issuer's key".into()
            }
            _ => "the token is not a well-formed JWT".into(),
        }
    }
}

/// One OAUTHBEARER exchange, from the server's side.
pub(super) struct OAuthBearerServer {
    verifier: Arc<OidcVerifier>,
    state: State,
}

enum State {
    Initial,
    /// The token was refused and the error challenge sent; the client's `^A` comes next.
    ErrorSent(String),
    Done,
}

impl OAuthBearerServer {
    pub(super) fn new(verifier: Arc<OidcVerifier>) -> OAuthBearerServer {
        OAuthBearerServer {
            verifier,
            state: State::Initial,
        }
    }

    pub(super) fn step(&mut self, client: &[u8], now_ms: i64) -> Step {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Initial => match self.initial(client, now_ms) {
                Ok(step) => step,
                Err(reason) => {
                    // RFC 7628 section 3.2.2: an error is a JSON challenge the client
                    // acknowledges with ^A; the exchange fails after that.
                    self.state = State::ErrorSent(reason);
                    Step::Challenge(br#"{"status":"invalid_token"}"#.to_vec())
                }
            },
            State::ErrorSent(reason) => Step::Failed(reason),
            State::Done => Step::Failed("the OAUTHBEARER exchange is already over".into()),
        }
    }

    fn initial(&self, message: &[u8], now_ms: i64) -> Result<Step, String> {
        let (authzid, token) = parse_client_response(message)?;
        let token = self.verifier.verify(token)?;
        if authzid.is_some_and(|a| a != token.user) {
            return Err(
                "the OAUTHBEARER authorization identity differs from the token's user".into(),
            );
        }
        let expires_ms = i64::try_from(token.expires_at)
            .ok()
            .and_then(|s| s.checked_mul(1000))
            .unwrap_or(i64::MAX);
        Ok(Step::Authenticated {
            user: token.user,
            groups: token.groups,
            final_bytes: Vec::new(),
            // The connection may be used until the token expires; the client re-authenticates
            // with a fresh token before then (KIP-368). Never 0, which would mean "forever".
            session_lifetime_ms: expires_ms.saturating_sub(now_ms).max(1),
        })
    }
}

/// Parses `gs2-header ^A auth=Bearer <token> ^A [key=value ^A]* ^A`: the authorization
/// identity (if any) and the token.
fn parse_client_response(message: &[u8]) -> Result<(Option<&str>, &str), String> {
    let message = std::str::from_utf8(message)
        .map_err(|_| "the OAUTHBEARER message is not UTF-8".to_string())?;
    let malformed = || "the OAUTHBEARER message is malformed".to_string();
    let (gs2, rest) = message.split_once('\x01').ok_or_else(malformed)?;
    let authzid = match gs2.strip_suffix(',').and_then(|g| g.split_once(',')) {
        Some(("n" | "y", "")) => None,
        Some(("n" | "y", authzid)) => Some(authzid.strip_prefix("a=").ok_or_else(malformed)?),
        _ => return Err(malformed()),
    };
    let pairs = rest.strip_suffix("\x01\x01").ok_or_else(malformed)?;
    let mut token = None;
    for pair in pairs.split('\x01') {
        let (key, value) = pair.split_once('=').ok_or_else(malformed)?;
        if key == "auth" {
            let (scheme, value) = value.split_once(' ').ok_or_else(malformed)?;
            if !scheme.eq_ignore_ascii_case("bearer") {
                return Err("the OAUTHBEARER scheme is not Bearer".into());
            }
            token = Some(value.trim());
        }
    }
    token
        .filter(|t| !t.is_empty())
        .map(|t| (authzid, t))
        .ok_or_else(|| "the OAUTHBEARER message carries no bearer token".to_string())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use jsonwebtoken::jwk::Jwk;
    use jsonwebtoken::{EncodingKey, Header};
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};

    pub(crate) const ISSUER: &str = "https://issuer.example";
    pub(crate) const AUDIENCE: &str = "streamward";

    /// A signing key and its JWK.
    pub(crate) struct TestKey {
        pub(crate) algorithm: Algorithm,
        pub(crate) encoding: EncodingKey,
        pub(crate) jwk: Jwk,
    }

    pub(crate) fn rsa_key(kid: &str) -> TestKey {
        jwt_crypto::install();
        let pem = include_bytes!("testdata/rsa-2048.pem");
        let der = rustls_pemfile::rsa_private_keys(&mut &pem[..])
            .next()
            .unwrap()
            .unwrap();
        let encoding = EncodingKey::from_rsa_der(der.secret_pkcs1_der());
        key(encoding, Algorithm::RS256, kid)
    }

    pub(crate) fn ec_key(kid: &str) -> TestKey {
        jwt_crypto::install();
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        key(
            EncodingKey::from_ec_der(pkcs8.as_ref()),
            Algorithm::ES256,
            kid,
        )
    }

    fn key(encoding: EncodingKey, algorithm: Algorithm, kid: &str) -> TestKey {
        let mut jwk = Jwk::from_encoding_key(&encoding, algorithm).unwrap();
        jwk.common.key_id = Some(kid.to_string());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        TestKey {
            algorithm,
            encoding,
            jwk,
        }
    }

    pub(crate) fn jwks(keys: &[&TestKey]) -> String {
        serde_json::to_string(&JwkSet {
            keys: keys.iter().map(|k| k.jwk.clone()).collect(),
        })
        .unwrap()
    }

    pub(crate) fn settings() -> OidcSettings {
        OidcSettings {
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            groups_claim: "groups".into(),
            username_claim: "sub".into(),
        }
    }

    pub(crate) fn now() -> i64 {
        jsonwebtoken::get_current_timestamp() as i64
    }

    /// Claims that the verifier accepts, valid for an hour.
    pub(crate) fn claims(sub: &str, groups: &[&str]) -> Value {
        serde_json::json!({
            "iss": ISSUER, "aud": [AUDIENCE, "other"], "sub": sub, "groups": groups,
            "iat": now(), "exp": now() + 3600,
        })
    }

    pub(crate) fn sign(key: &TestKey, claims: &Value) -> String {
        let mut header = Header::new(key.algorithm);
        header.kid = key.jwk.common.key_id.clone();
        jsonwebtoken::encode(&header, claims, &key.encoding).unwrap()
    }

    fn with(claims: Value, changes: &[(&str, Value)]) -> Value {
        let mut claims = claims;
        for (key, value) in changes {
            if value.is_null() {
                claims.as_object_mut().unwrap().remove(*key);
            } else {
                claims[*key] = value.clone();
            }
        }
        claims
    }

    #[test]
    fn rs256_and_es256_tokens_are_accepted_with_their_groups() {
        let rsa = rsa_key("rsa-1");
        let ec = ec_key("ec-1");
        let verifier = OidcVerifier::new(settings(), &jwks(&[&rsa, &ec])).unwrap();
        for key in [&rsa, &ec] {
            let token = sign(key, &claims("dave", &["auditors", "sre"]));
            let verified = verifier.verify(&token).unwrap();
            assert_eq!(verified.user, "dave");
            assert_eq!(verified.groups, ["auditors", "sre"]);
        }
        // Without a kid, the key is found by trying the issuer's keys of the algorithm.
        let mut header = Header::new(Algorithm::ES256);
        header.kid = None;
        let token = jsonwebtoken::encode(&header, &claims("erin", &[]), &ec.encoding).unwrap();
        assert_eq!(verifier.verify(&token).unwrap().user, "erin");
    }

    #[test]
    fn claims_name_the_user_and_groups_as_configured() {
        let ec = ec_key("ec-1");
        let mut settings = settings();
        settings.username_claim = "preferred_username".into();
        settings.groups_claim = "roles".into();
        let verifier = OidcVerifier::new(settings, &jwks(&[&ec])).unwrap();
        let token = sign(
            &ec,
            &with(
                claims("0b1c", &[]),
                &[
                    ("preferred_username", "dave".into()),
                    ("roles", "auditors".into()),
                ],
            ),
        );
        let verified = verifier.verify(&token).unwrap();
        assert_eq!(
            (verified.user.as_str(), verified.groups),
            ("dave", vec!["auditors".into()])
        );
        let token = sign(&ec, &claims("0b1c", &[]));
        assert!(
            verifier
                .verify(&token)
                .unwrap_err()
                .contains("preferred_username")
        );
    }

    #[test]
    fn bad_tokens_are_refused_with_a_reason() {
        let ec = ec_key("ec-1");
        let rsa = rsa_key("rsa-1");
        let stranger = ec_key("ec-1"); // same kid, another key: a forged signature
        let verifier = OidcVerifier::new(settings(), &jwks(&[&ec, &rsa])).unwrap();
        let good = claims("dave", &["auditors"]);
        let cases: Vec<(&str, String, &str)> = vec![
            ("bad signature", sign(&stranger, &good), "signature"),
            (
                "wrong issuer",
                sign(
                    &ec,
                    &with(good.clone(), &[("iss", "https://evil.example".into())]),
                ),
                "issuer",
            ),
            (
                "wrong audience",
                sign(&ec, &with(good.clone(), &[("aud", "someone-else".into())])),
                "audience",
            ),
            (
                "expired",
                sign(&ec, &with(good.clone(), &[("exp", (now() - 120).into())])),
                "expired",
            ),
            (
                "not yet valid",
                sign(&ec, &with(good.clone(), &[("nbf", (now() + 600).into())])),
                "not valid yet",
            ),
            (
                "no exp",
                sign(&ec, &with(good.clone(), &[("exp", Value::Null)])),
                "exp",
            ),
            (
                "exp as a string",
                sign(&ec, &with(good.clone(), &[("exp", "9999999999".into())])),
                "exp",
            ),
            (
                "no sub",
                sign(&ec, &with(good.clone(), &[("sub", Value::Null)])),
                "sub",
            ),
            (
                "groups not strings",
                sign(
                    &ec,
                    &with(good.clone(), &[("groups", serde_json::json!([1, 2]))]),
                ),
                "groups",
            ),
            ("garbage", "not.a.jwt".into(), "well-formed"),
            (
                "unknown kid",
                {
                    let mut header = Header::new(Algorithm::ES256);
                    header.kid = Some("nope".into());
                    jsonwebtoken::encode(&header, &good, &ec.encoding).unwrap()
                },
                "kid",
            ),
        ];
        for (what, token, expect) in cases {
            let error = verifier.verify(&token).expect_err(what);
            assert!(error.contains(expect), "{what}: {error}");
        }
        // Within the leeway, a just-expired token still passes.
        let token = sign(&ec, &with(good.clone(), &[("exp", (now() - 5).into())]));
        assert!(verifier.verify(&token).is_ok());
    }

    #[test]
    fn hmac_and_unsigned_tokens_are_refused() {
        let ec = ec_key("ec-1");
        let verifier = OidcVerifier::new(settings(), &jwks(&[&ec])).unwrap();
        // alg none: header {"alg":"none"}, no signature.
        let unsigned = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJkYXZlIn0.";
        assert!(verifier.verify(unsigned).is_err());
        // HS256 with the EC key's public x coordinate as the secret: the classic confusion.
        let hs = "eyJhbGciOiJIUzI1NiIsImtpZCI6ImVjLTEifQ.eyJzdWIiOiJkYXZlIn0.c2ln";
        assert!(verifier.verify(hs).unwrap_err().contains("HS256"));
    }

    #[test]
    fn a_jwks_without_signature_keys_is_refused() {
        let symmetric = r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","alg":"HS256"}]}"#;
        assert!(matches!(
            OidcVerifier::new(settings(), symmetric),
            Err(OidcError::NoUsableKey { skipped: 1 })
        ));
        assert!(matches!(
            OidcVerifier::new(settings(), "{"),
            Err(OidcError::Jwks(_))
        ));
        let mut ec = ec_key("enc");
        ec.jwk.common.public_key_use = Some(PublicKeyUse::Encryption);
        assert!(OidcVerifier::new(settings(), &jwks(&[&ec])).is_err());
    }

    fn bearer(token: &str) -> Vec<u8> {
        format!("n,,\x01host=localhost\x01auth=Bearer {token}\x01\x01").into_bytes()
    }

    #[test]
    fn an_oauthbearer_exchange_authenticates_until_the_token_expires() {
        let ec = ec_key("ec-1");
        let verifier = Arc::new(OidcVerifier::new(settings(), &jwks(&[&ec])).unwrap());
        let token = sign(&ec, &claims("dave", &["auditors"]));
        let mut server = OAuthBearerServer::new(verifier.clone());
        match server.step(&bearer(&token), now() * 1000) {
            Step::Authenticated {
                user,
                groups,
                final_bytes,
                session_lifetime_ms,
            } => {
                assert_eq!((user.as_str(), groups), ("dave", vec!["auditors".into()]));
                assert!(final_bytes.is_empty());
                assert!((3_590_000..=3_600_000).contains(&session_lifetime_ms));
            }
            other => panic!("{other:?}"),
        }
        // authzid must be the user.
        let mut server = OAuthBearerServer::new(verifier.clone());
        let message = format!("n,a=dave,\x01auth=Bearer {token}\x01\x01");
        assert!(matches!(
            server.step(message.as_bytes(), now() * 1000),
            Step::Authenticated { .. }
        ));
        let mut server = OAuthBearerServer::new(verifier);
        let message = format!("n,a=root,\x01auth=Bearer {token}\x01\x01");
        assert!(matches!(
            server.step(message.as_bytes(), now() * 1000),
            Step::Challenge(_)
        ));
    }

    #[test]
    fn a_refused_token_gets_the_rfc7628_error_challenge_then_fails() {
        let ec = ec_key("ec-1");
        let verifier = Arc::new(OidcVerifier::new(settings(), &jwks(&[&ec])).unwrap());
        let expired = sign(
            &ec,
            &with(claims("dave", &[]), &[("exp", (now() - 600).into())]),
        );
        let mut server = OAuthBearerServer::new(verifier);
        let Step::Challenge(challenge) = server.step(&bearer(&expired), now() * 1000) else {
            panic!("no error challenge");
        };
        assert_eq!(challenge, br#"{"status":"invalid_token"}"#);
        let Step::Failed(reason) = server.step(b"\x01", now() * 1000) else {
            panic!("the exchange did not fail");
        };
        assert!(reason.contains("expired"), "{reason}");
    }

    #[test]
    fn malformed_client_responses_are_refused() {
        for message in [
            &b""[..],
            b"\x01",
            b"n,,auth=Bearer x\x01\x01",
            b"n,,\x01auth=Bearer x",
            b"n,,\x01auth=Basic x\x01\x01",
            b"n,,\x01host=h\x01\x01",
            b"n,,\x01auth=Bearer \x01\x01",
            b"p=x,,\x01auth=Bearer x\x01\x01",
        ] {
            assert!(
                parse_client_response(message).is_err(),
                "{:?}",
                String::from_utf8_lossy(message)
            );
        }
        assert_eq!(
            parse_client_response(b"n,,\x01auth=Bearer abc\x01\x01").unwrap(),
            (None, "abc")
        );
    }
}

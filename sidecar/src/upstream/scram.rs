//! The client side of SCRAM (RFC 5802) with SHA-256 and SHA-512 (RFC 7677), as Kafka speaks it:
//! no channel binding (`n,,`), no SASLprep beyond escaping `=` and `,` in the user name (Kafka's
//! own client does the same).
//!
//! Pure: the exchange's I/O lives in `sasl`, the random nonce is injectable for tests, and the
//! expensive key derivation is a separate function so the connector can cache its result.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256, Sha512};

/// Kafka refuses SCRAM credentials with fewer iterations than this (`ScramMechanism`), so a
/// server asking for fewer is not a Kafka broker doing its job.
pub(crate) const MIN_ITERATIONS: u32 = 4096;
/// Well above Kafka's maximum (16384); bounds the work a hostile server can make us do.
pub(crate) const MAX_ITERATIONS: u32 = 1 << 20;

/// The hash function of a SCRAM mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScramHash {
    /// SCRAM-SHA-256.
    Sha256,
    /// SCRAM-SHA-512.
    Sha512,
}

/// Why a SCRAM exchange could not go on. Messages never contain the password or keys.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    /// The server's first message is not `r=…,s=…,i=…`.
    #[error("the server-first message is malformed: {0}")]
    MalformedServerFirst(&'static str),
    /// The server's nonce does not extend ours: a replay or a confused server.
    #[error("the server's nonce does not start with the client's nonce")]
    NonceMismatch,
    /// An iteration count outside what Kafka allows.
    #[error("the server asks for {0} iterations, outside {MIN_ITERATIONS}..={MAX_ITERATIONS}")]
    Iterations(u32),
    /// The server ended the exchange with `e=…`.
    #[error("the server refused the exchange: {0}")]
    ServerError(String),
    /// The server's final message is not `v=…`.
    #[error("the server-final message is malformed: {0}")]
    MalformedServerFinal(&'static str),
    /// The server's signature is wrong: it does not know the credentials.
    #[error("the server's signature does not match")]
    SignatureMismatch,
    /// No randomness for the nonce.
    #[error("no random bytes for the client nonce: {0}")]
    Random(String),
}

/// One SCRAM exchange, from the client's side.
#[derive(Debug)]
pub struct ScramClient {
    hash: ScramHash,
    nonce: String,
    client_first_bare: String,
}

/// The parsed server-first message.
#[derive(Debug, PartialEq, Eq)]
pub struct ServerFirst<'a> {
    raw: &'a str,
    nonce: &'a str,
    /// The user's salt.
    pub salt: Vec<u8>,
    /// The iteration count for [`salted_password`].
    pub iterations: u32,
}

/// What the server must send back in its final message (`v=…`).
#[derive(Debug)]
pub struct ServerSignature(Vec<u8>);

impl ScramClient {
    /// Starts an exchange for `username` with a fresh random nonce.
    pub fn new(hash: ScramHash, username: &str) -> Result<ScramClient, ScramError> {
        let mut random = [0u8; 24];
        getrandom::fill(&mut random).map_err(|e| ScramError::Random(e.to_string()))?;
        Ok(ScramClient::with_nonce(
            hash,
            username,
            &BASE64.encode(random),
        ))
    }

    /// Starts an exchange with a given nonce (printable, no `,`): for tests against known vectors.
    pub fn with_nonce(hash: ScramHash, username: &str, nonce: &str) -> ScramClient {
        let username = username.replace('=', "=3D").replace(',', "=2C");
        ScramClient {
            hash,
            nonce: nonce.to_string(),
            client_first_bare: format!("n={username},r={nonce}"),
        }
    }

    /// The client-first message: no channel binding, no authorization identity.
    pub fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    /// Parses and checks the server-first message.
    pub fn parse_server_first<'a>(&self, message: &'a str) -> Result<ServerFirst<'a>, ScramError> {
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for (i, attribute) in message.split(',').enumerate() {
            let (key, value) = attribute
                .split_once('=')
                .ok_or(ScramError::MalformedServerFirst("an attribute without '='"))?;
            match key {
                // A mandatory extension we do not know: RFC 5802 says fail.
                "m" if i == 0 => {
                    return Err(ScramError::MalformedServerFirst(
                        "a mandatory extension (m=) is not supported",
                    ));
                }
                "r" => nonce = Some(value),
                "s" => {
                    salt =
                        Some(BASE64.decode(value).map_err(|_| {
                            ScramError::MalformedServerFirst("the salt is not base64")
                        })?);
                }
                "i" => {
                    iterations = Some(value.parse::<u32>().map_err(|_| {
                        ScramError::MalformedServerFirst("the iteration count is not a number")
                    })?);
                }
                // Optional extensions are ignored.
                _ => {}
            }
        }
        let nonce = nonce.ok_or(ScramError::MalformedServerFirst("no nonce (r=)"))?;
        let salt = salt.ok_or(ScramError::MalformedServerFirst("no salt (s=)"))?;
        let iterations =
            iterations.ok_or(ScramError::MalformedServerFirst("no iteration count (i=)"))?;
        if nonce.len() <= self.nonce.len() || !nonce.starts_with(&self.nonce) {
            return Err(ScramError::NonceMismatch);
        }
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
            return Err(ScramError::Iterations(iterations));
        }
        Ok(ServerFirst {
            raw: message,
            nonce,
            salt,
            iterations,
        })
    }

    /// The client-final message with its proof, and the signature the server must answer with.
    /// `salted_password` is [`salted_password`] for this server-first's salt and iterations.
    pub fn client_final(
        &self,
        server_first: &ServerFirst<'_>,
        salted_password: &[u8],
    ) -> (String, ServerSignature) {
        // "biws" is base64("n,,"): the GS2 header again, no channel binding.
        let without_proof = format!("c=biws,r={}", server_first.nonce);
        let auth_message = format!(
            "{},{},{without_proof}",
            self.client_first_bare, server_first.raw
        );
        let (proof, server_signature) = match self.hash {
            ScramHash::Sha256 => proof_and_signature::<Sha256>(salted_password, &auth_message),
            ScramHash::Sha512 => proof_and_signature::<Sha512>(salted_password, &auth_message),
        };
        (
            format!("{without_proof},p={}", BASE64.encode(proof)),
            ServerSignature(server_signature),
        )
    }
}

impl ServerSignature {
    /// Checks the server-final message: `v=<signature>` proves the server knows the credentials.
    pub fn verify(&self, server_final: &str) -> Result<(), ScramError> {
        let first = server_final.split(',').next().unwrap_or_default();
        if let Some(error) = first.strip_prefix("e=") {
            return Err(ScramError::ServerError(error.to_string()));
        }
        let encoded = first
            .strip_prefix("v=")
            .ok_or(ScramError::MalformedServerFinal("no verifier (v=)"))?;
        let signature = BASE64
            .decode(encoded)
            .map_err(|_| ScramError::MalformedServerFinal("the verifier is not base64"))?;
        if constant_time_eq(&signature, &self.0) {
            Ok(())
        } else {
            Err(ScramError::SignatureMismatch)
        }
    }
}

/// `SaltedPassword := Hi(Normalize(password), salt, i)`: PBKDF2 with HMAC of the mechanism's
/// hash, as long as one hash output. The costly step, so callers cache it per salt.
pub fn salted_password(hash: ScramHash, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    match hash {
        ScramHash::Sha256 => {
            pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(password, salt, iterations).to_vec()
        }
        ScramHash::Sha512 => {
            pbkdf2::pbkdf2_hmac_array::<Sha512, 64>(password, salt, iterations).to_vec()
        }
    }
}

/// `ClientProof` and `ServerSignature` for `auth_message` (RFC 5802 section 3).
fn proof_and_signature<D>(salted_password: &[u8], auth_message: &str) -> (Vec<u8>, Vec<u8>)
where
    D: Digest + hmac::EagerHash,
{
    let client_key = hmac::<D>(salted_password, b"Client Key");
    let stored_key = D::digest(&client_key);
    let client_signature = hmac::<D>(&stored_key, auth_message.as_bytes());
    let proof = client_key
        .iter()
        .zip(&client_signature)
        .map(|(k, s)| k ^ s)
        .collect();
    let server_key = hmac::<D>(salted_password, b"Server Key");
    (proof, hmac::<D>(&server_key, auth_message.as_bytes()))
}

pub(crate) fn hmac<D: hmac::EagerHash>(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length (longer ones are hashed), so this never fails.
    let mut mac = <Hmac<D> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7677 section 3: user "user", password "pencil".
    const CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const SERVER_FIRST: &str = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                                s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                                p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc7677_exchange() -> (String, ServerSignature) {
        let client = ScramClient::with_nonce(ScramHash::Sha256, "user", CLIENT_NONCE);
        let server_first = client.parse_server_first(SERVER_FIRST).unwrap();
        let salted = salted_password(
            ScramHash::Sha256,
            b"pencil",
            &server_first.salt,
            server_first.iterations,
        );
        client.client_final(&server_first, &salted)
    }

    #[test]
    fn client_first_matches_rfc7677() {
        let client = ScramClient::with_nonce(ScramHash::Sha256, "user", CLIENT_NONCE);
        assert_eq!(client.client_first(), "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
    }

    #[test]
    fn client_final_proof_matches_rfc7677() {
        let (client_final, _) = rfc7677_exchange();
        assert_eq!(client_final, CLIENT_FINAL);
    }

    #[test]
    fn rfc7677_server_signature_verifies() {
        let (_, signature) = rfc7677_exchange();
        assert_eq!(signature.verify(SERVER_FINAL), Ok(()));
    }

    #[test]
    fn a_wrong_server_signature_is_refused() {
        let (_, signature) = rfc7677_exchange();
        assert_eq!(
            signature.verify("v=AAAATRBi23WpRR/wa4iEZHpXLcOaLuAO/ymBH4nQCo4="),
            Err(ScramError::SignatureMismatch)
        );
        assert_eq!(
            signature.verify("v=AAAA"),
            Err(ScramError::SignatureMismatch)
        );
        assert!(matches!(
            signature.verify("x=1"),
            Err(ScramError::MalformedServerFinal(_))
        ));
        assert_eq!(
            signature.verify("e=invalid-proof"),
            Err(ScramError::ServerError("invalid-proof".to_string()))
        );
    }

    #[test]
    fn a_server_nonce_that_does_not_extend_ours_is_refused() {
        let client = ScramClient::with_nonce(ScramHash::Sha256, "user", CLIENT_NONCE);
        assert_eq!(
            client.parse_server_first("r=someoneElsesNonce123,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"),
            Err(ScramError::NonceMismatch)
        );
        // The server must add its own part.
        assert_eq!(
            client.parse_server_first(&format!(
                "r={CLIENT_NONCE},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
            )),
            Err(ScramError::NonceMismatch)
        );
    }

    #[test]
    fn malformed_server_first_messages_are_refused_without_panicking() {
        let client = ScramClient::with_nonce(ScramHash::Sha512, "user", CLIENT_NONCE);
        for message in [
            "",
            "garbage",
            "r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==",
            "r=rOprNGfwEbeRWgbNEkqOx,i=4096",
            "s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            "r=rOprNGfwEbeRWgbNEkqOx,s=not base64!,i=4096",
            "r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=many",
            "m=ext,r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        ] {
            assert!(
                matches!(
                    client.parse_server_first(message),
                    Err(ScramError::MalformedServerFirst(_))
                ),
                "{message:?}"
            );
        }
        assert_eq!(
            client.parse_server_first("r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=1"),
            Err(ScramError::Iterations(1))
        );
    }

    #[test]
    fn user_names_are_escaped() {
        let client = ScramClient::with_nonce(ScramHash::Sha256, "a=b,c", "n");
        assert_eq!(client.client_first(), "n,,n=a=3Db=2Cc,r=n");
    }

    #[test]
    fn random_nonces_differ_and_contain_no_comma() {
        let a = ScramClient::new(ScramHash::Sha512, "user").unwrap();
        let b = ScramClient::new(ScramHash::Sha512, "user").unwrap();
        assert_ne!(a.client_first(), b.client_first());
        assert!(!a.nonce.contains(','));
        assert!(a.nonce.len() >= 24);
    }

    #[test]
    fn sha512_keys_are_a_sha512_output_long() {
        let salted = salted_password(ScramHash::Sha512, b"pencil", b"salt", 4096);
        assert_eq!(salted.len(), 64);
        let client = ScramClient::with_nonce(ScramHash::Sha512, "user", CLIENT_NONCE);
        let server_first = client.parse_server_first(SERVER_FIRST).unwrap();
        let (client_final, _) = client.client_final(&server_first, &salted);
        let proof = client_final.rsplit_once("p=").unwrap().1;
        assert_eq!(BASE64.decode(proof).unwrap().len(), 64);
    }
}

//! SASL authentication to a broker, the way Kafka clients do it: `SaslHandshake` v1 names the
//! mechanism, then `SaslAuthenticate` v2 carries the mechanism's messages (one round for
//! PLAIN and OAUTHBEARER, two for SCRAM).
//!
//! Frames are read exactly (size, then body) and nothing is buffered past them, so once this
//! returns the stream is positioned for the client's own requests.

use std::sync::Mutex;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::error::{ParseResponseErrorCode, ResponseError};
use kafka_protocol::messages::{
    RequestHeader, ResponseHeader, SaslAuthenticateRequest, SaslAuthenticateResponse,
    SaslHandshakeRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::scram::{self, ScramClient, ScramError, ScramHash};
use super::{SaslMechanism, UpstreamError, UpstreamSasl};

const HANDSHAKE_VERSION: i16 = 1;
const AUTHENTICATE_VERSION: i16 = 2;
/// SASL answers are a few hundred bytes; anything near this is not a SASL answer.
const MAX_RESPONSE: usize = 1024 * 1024;
const CLIENT_ID: &str = "streamward-sidecar";

/// The outcome of a successful authentication.
pub(super) struct Authenticated {
    /// How long the broker keeps the session before the client must re-authenticate (KIP-368);
    /// `None` when the broker does not ask for re-authentication.
    pub session_lifetime: Option<Duration>,
}

/// The costly SCRAM key derivation, kept for the last salt and iteration count seen. Kafka
/// stores SCRAM credentials cluster-wide, so every broker sends the same salt and one entry
/// spares each new connection the PBKDF2 rounds on the proxy's threads.
#[derive(Default)]
pub(super) struct SaltedPasswordCache(Mutex<Option<SaltedEntry>>);

struct SaltedEntry {
    hash: ScramHash,
    salt: Vec<u8>,
    iterations: u32,
    salted: Vec<u8>,
}

impl SaltedPasswordCache {
    fn get_or_derive(
        &self,
        hash: ScramHash,
        password: &str,
        salt: &[u8],
        iterations: u32,
    ) -> Vec<u8> {
        let lookup = |entry: &Option<SaltedEntry>| {
            entry
                .as_ref()
                .filter(|e| e.hash == hash && e.salt == salt && e.iterations == iterations)
                .map(|e| e.salted.clone())
        };
        // A poisoned lock only means another thread panicked mid-update; the cache is an
        // optimisation, so fall back to deriving.
        if let Some(salted) = self.0.lock().ok().and_then(|e| lookup(&e)) {
            return salted;
        }
        let salted = scram::salted_password(hash, password.as_bytes(), salt, iterations);
        if let Ok(mut entry) = self.0.lock() {
            *entry = Some(SaltedEntry {
                hash,
                salt: salt.to_vec(),
                iterations,
                salted: salted.clone(),
            });
        }
        salted
    }
}

/// Authenticates on `stream` to broker `addr` with `sasl`.
pub(super) async fn authenticate<S>(
    stream: &mut S,
    addr: &str,
    sasl: &UpstreamSasl,
    cache: &SaltedPasswordCache,
) -> Result<Authenticated, UpstreamError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut exchange = Exchange {
        stream,
        addr,
        sasl,
        correlation_id: 0,
    };
    exchange.handshake().await?;
    let last = match sasl.mechanism {
        SaslMechanism::Plain => {
            // authzid NUL authcid NUL password (RFC 4616), no authorization identity.
            let mut message = Vec::with_capacity(sasl.username.len() + sasl.password.len() + 2);
            message.push(0);
            message.extend_from_slice(sasl.username.as_bytes());
            message.push(0);
            message.extend_from_slice(sasl.password.as_bytes());
            exchange.authenticate_round(message.into()).await?
        }
        SaslMechanism::ScramSha256 => exchange.scram(ScramHash::Sha256, cache).await?,
        SaslMechanism::ScramSha512 => exchange.scram(ScramHash::Sha512, cache).await?,
        SaslMechanism::OAuthBearer => exchange.oauth_bearer().await?,
    };
    Ok(Authenticated {
        session_lifetime: u64::try_from(last.session_lifetime_ms)
            .ok()
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis),
    })
}

struct Exchange<'a, S> {
    stream: &'a mut S,
    addr: &'a str,
    sasl: &'a UpstreamSasl,
    correlation_id: i32,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Exchange<'_, S> {
    async fn handshake(&mut self) -> Result<(), UpstreamError> {
        let mechanism = self.sasl.mechanism.as_str();
        let request =
            SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(mechanism));
        let response = self
            .send(&request, HANDSHAKE_VERSION, "SASL handshake")
            .await?;
        match response.error_code.err() {
            None => Ok(()),
            Some(ResponseError::UnsupportedSaslMechanism) => {
                Err(UpstreamError::MechanismNotEnabled {
                    addr: self.addr.to_string(),
                    mechanism: self.sasl.mechanism,
                    enabled: response
                        .mechanisms
                        .iter()
                        .map(|m| m.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                })
            }
            Some(error) => Err(UpstreamError::Handshake {
                addr: self.addr.to_string(),
                mechanism: self.sasl.mechanism,
                message: format!("the broker answered {error} (error code {})", error.code()),
            }),
        }
    }

    /// One `SaslAuthenticate` round; a broker error ends the exchange.
    async fn authenticate_round(
        &mut self,
        message: Bytes,
    ) -> Result<SaslAuthenticateResponse, UpstreamError> {
        let request = SaslAuthenticateRequest::default().with_auth_bytes(message);
        let response = self
            .send(&request, AUTHENTICATE_VERSION, "SASL authentication")
            .await?;
        if let Some(error) = response.error_code.err() {
            let message = response
                .error_message
                .as_ref()
                .map(|m| m.as_str().to_string())
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| error.to_string());
            return Err(self.authentication_failed(message));
        }
        Ok(response)
    }

    async fn scram(
        &mut self,
        hash: ScramHash,
        cache: &SaltedPasswordCache,
    ) -> Result<SaslAuthenticateResponse, UpstreamError> {
        let client =
            ScramClient::new(hash, &self.sasl.username).map_err(|e| self.scram_failed(e))?;
        let server_first = self
            .authenticate_round(client.client_first().into_bytes().into())
            .await?;
        let server_first = std::str::from_utf8(&server_first.auth_bytes)
            .map_err(|_| self.scram_failed(ScramError::MalformedServerFirst("not UTF-8")))?;
        let parsed = client
            .parse_server_first(server_first)
            .map_err(|e| self.scram_failed(e))?;
        let salted =
            cache.get_or_derive(hash, &self.sasl.password, &parsed.salt, parsed.iterations);
        let (client_final, signature) = client.client_final(&parsed, &salted);
        let server_final = self
            .authenticate_round(client_final.into_bytes().into())
            .await?;
        let text = std::str::from_utf8(&server_final.auth_bytes)
            .map_err(|_| self.scram_failed(ScramError::MalformedServerFinal("not UTF-8")))?;
        signature.verify(text).map_err(|e| self.scram_failed(e))?;
        Ok(server_final)
    }

    async fn oauth_bearer(&mut self) -> Result<SaslAuthenticateResponse, UpstreamError> {
        // RFC 7628 section 3.1: GS2 header, then key=value pairs separated by ^A.
        let initial = format!("n,,\x01auth=Bearer {}\x01\x01", self.sasl.password);
        let response = self.authenticate_round(initial.into_bytes().into()).await?;
        if response.auth_bytes.is_empty() {
            return Ok(response);
        }
        // A non-empty answer is the server's error challenge (a JSON status); RFC 7628 has the
        // client acknowledge it with a lone ^A, after which the broker reports the failure.
        let challenge = String::from_utf8_lossy(&response.auth_bytes).into_owned();
        let message = match self.authenticate_round(Bytes::from_static(b"\x01")).await {
            Err(UpstreamError::Authentication { message, .. }) if message.contains(&challenge) => {
                message
            }
            Err(UpstreamError::Authentication { message, .. }) => {
                format!("{message} (server challenge: {challenge})")
            }
            Err(other) => return Err(other),
            Ok(_) => format!("the broker answered with an error challenge: {challenge}"),
        };
        Err(self.authentication_failed(message))
    }

    fn authentication_failed(&self, message: String) -> UpstreamError {
        UpstreamError::Authentication {
            addr: self.addr.to_string(),
            mechanism: self.sasl.mechanism,
            message: scrub(message, &self.sasl.password),
        }
    }

    fn scram_failed(&self, error: ScramError) -> UpstreamError {
        match error {
            ScramError::SignatureMismatch | ScramError::NonceMismatch => {
                UpstreamError::ServerNotVerified {
                    addr: self.addr.to_string(),
                    mechanism: self.sasl.mechanism,
                    reason: error.to_string(),
                }
            }
            ScramError::ServerError(message) => self.authentication_failed(message),
            other => UpstreamError::Protocol {
                addr: self.addr.to_string(),
                step: "SASL authentication",
                reason: other.to_string(),
            },
        }
    }

    /// Writes `request` as one frame and reads its response frame.
    async fn send<R: Request>(
        &mut self,
        request: &R,
        version: i16,
        step: &'static str,
    ) -> Result<R::Response, UpstreamError> {
        let protocol = |reason: String| UpstreamError::Protocol {
            addr: self.addr.to_string(),
            step,
            reason,
        };
        self.correlation_id += 1;
        let correlation_id = self.correlation_id;
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)));
        let mut body = BytesMut::new();
        header
            .encode(&mut body, R::header_version(version))
            .and_then(|()| request.encode(&mut body, version))
            .map_err(|e| protocol(format!("encoding the request: {e}")))?;
        let size = i32::try_from(body.len())
            .map_err(|_| protocol("the request is too large".to_string()))?;
        let mut frame = BytesMut::with_capacity(body.len() + 4);
        frame.put_i32(size);
        frame.put(body);

        let io = |source: std::io::Error| UpstreamError::Io {
            addr: self.addr.to_string(),
            step,
            source,
        };
        self.stream.write_all(&frame).await.map_err(io)?;
        self.stream.flush().await.map_err(io)?;
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size).await.map_err(io)?;
        if is_tls_record(size) {
            return Err(protocol(
                "the broker answered with TLS: this listener is SSL or SASL_SSL, so the \
                 StreamTarget needs TLS settings"
                    .to_string(),
            ));
        }
        let size = i32::from_be_bytes(size);
        let size = usize::try_from(size)
            .ok()
            .filter(|size| *size <= MAX_RESPONSE)
            .ok_or_else(|| protocol(format!("a response frame of {size} bytes")))?;
        let mut buf = vec![0u8; size];
        self.stream.read_exact(&mut buf).await.map_err(io)?;

        let mut buf = Bytes::from(buf);
        let header = ResponseHeader::decode(&mut buf, R::Response::header_version(version))
            .map_err(|e| protocol(format!("decoding the response header: {e}")))?;
        if header.correlation_id != correlation_id {
            return Err(protocol(format!(
                "correlation id {} in the response, {correlation_id} expected",
                header.correlation_id
            )));
        }
        let response = R::Response::decode(&mut buf, version)
            .map_err(|e| protocol(format!("decoding the response: {e}")))?;
        if buf.has_remaining() {
            return Err(protocol(format!(
                "{} bytes left over after the response",
                buf.remaining()
            )));
        }
        Ok(response)
    }
}

/// A TLS record header (alert or handshake, TLS 1.0 to 1.3) where a frame size should be: what a
/// TLS listener sends back to a client that does not speak TLS.
fn is_tls_record(start: [u8; 4]) -> bool {
    matches!(start, [0x15 | 0x16, 0x03, 0x00..=0x04, _])
}

/// Brokers do not echo passwords, but a message that reaches logs must never carry one.
fn scrub(message: String, password: &str) -> String {
    if password.is_empty() || !message.contains(password) {
        message
    } else {
        message.replace(password, "<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_records_are_told_apart_from_frame_sizes() {
        assert!(is_tls_record([0x15, 0x03, 0x03, 0x00]));
        assert!(is_tls_record([0x16, 0x03, 0x01, 0x02]));
        // A SaslAuthenticate answer is a few dozen bytes.
        assert!(!is_tls_record(42i32.to_be_bytes()));
    }

    #[test]
    fn scrub_removes_the_password_from_broker_messages() {
        assert_eq!(
            scrub("bad password hunter2 for alice".into(), "hunter2"),
            "bad password <redacted> for alice"
        );
        assert_eq!(scrub("nothing to hide".into(), ""), "nothing to hide");
    }

    #[test]
    fn the_salted_password_is_derived_once_per_salt() {
        let cache = SaltedPasswordCache::default();
        let a = cache.get_or_derive(ScramHash::Sha256, "pw", b"salt", 4096);
        let b = cache.get_or_derive(ScramHash::Sha256, "pw", b"salt", 4096);
        assert_eq!(a, b);
        assert_eq!(
            a,
            scram::salted_password(ScramHash::Sha256, b"pw", b"salt", 4096)
        );
        let c = cache.get_or_derive(ScramHash::Sha256, "pw", b"other", 4096);
        assert_ne!(a, c);
    }
}

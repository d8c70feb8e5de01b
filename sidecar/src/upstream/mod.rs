//! Connections from the proxy to a target's brokers, with the target's TLS and SASL settings.
//!
//! A [`Connector`] is built once per target (it holds the rustls configuration) and opens
//! connections that are ready to carry the client's frames: TCP with `TCP_NODELAY`, then TLS if
//! the target asks for it, then SASL (`SaslHandshake` + `SaslAuthenticate`) if it has
//! credentials. Broker credentials never appear in errors, logs or `Debug` output.

mod sasl;
// Also the primitives of the proxy's own SCRAM server (`client_auth`).
pub(crate) mod scram;
mod tls;

use std::fmt;
use std::io;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// How the proxy reaches a target's brokers. The default is plain TCP without authentication.
#[derive(Clone, Debug, Default)]
pub struct UpstreamSettings {
    /// TLS to the brokers, if the target's listener is SSL or SASL_SSL.
    pub tls: Option<UpstreamTls>,
    /// SASL credentials, if the target's listener is SASL_PLAINTEXT or SASL_SSL.
    pub sasl: Option<UpstreamSasl>,
}

/// TLS settings for a target's brokers.
#[derive(Clone, Default)]
pub struct UpstreamTls {
    /// The CA certificates (PEM) to trust; `None` trusts the system's root certificates.
    pub ca_pem: Option<Vec<u8>>,
    /// The name the brokers' certificates must carry, instead of the host of the address
    /// dialled (for brokers reached through an IP or an alias).
    pub server_name: Option<String>,
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTls")
            .field(
                "ca_pem",
                &self
                    .ca_pem
                    .as_ref()
                    .map(|pem| format!("<{} bytes>", pem.len())),
            )
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// SASL credentials for a target's brokers.
#[derive(Clone)]
pub struct UpstreamSasl {
    /// The mechanism the broker listener enables.
    pub mechanism: SaslMechanism,
    /// The user name (ignored for OAUTHBEARER, where the token names the principal).
    pub username: String,
    /// The password, or the bearer token for OAUTHBEARER. Never logged.
    pub password: String,
}

impl fmt::Debug for UpstreamSasl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamSasl")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A SASL mechanism Kafka brokers offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SaslMechanism {
    /// `PLAIN` (RFC 4616): user name and password in the clear, so use it with TLS.
    Plain,
    /// `SCRAM-SHA-256` (RFC 7677).
    ScramSha256,
    /// `SCRAM-SHA-512`.
    ScramSha512,
    /// `OAUTHBEARER` (RFC 7628) with a bearer token.
    OAuthBearer,
}

impl SaslMechanism {
    /// The mechanism's name in Kafka's configuration and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SaslMechanism::OAuthBearer => "OAUTHBEARER",
        }
    }
}

impl fmt::Display for SaslMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A mechanism name that is not one of Kafka's.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "unknown SASL mechanism {0:?}: expected PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER"
)]
pub struct UnknownSaslMechanism(pub String);

impl FromStr for SaslMechanism {
    type Err = UnknownSaslMechanism;

    fn from_str(name: &str) -> Result<SaslMechanism, UnknownSaslMechanism> {
        [
            SaslMechanism::Plain,
            SaslMechanism::ScramSha256,
            SaslMechanism::ScramSha512,
            SaslMechanism::OAuthBearer,
        ]
        .into_iter()
        .find(|m| m.as_str().eq_ignore_ascii_case(name))
        .ok_or_else(|| UnknownSaslMechanism(name.to_string()))
    }
}

/// Why a connection to a broker could not be opened. Each message says what was being done,
/// with which broker, and what to check; none contains a credential.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// The broker address is not `host:port`.
    #[error("broker address {addr:?} is not host:port; check the StreamTarget's bootstrap servers")]
    Address {
        /// The address given.
        addr: String,
    },
    /// The CA PEM could not be read.
    #[error(
        "reading the upstream TLS CA certificates failed: {reason}; check the PEM in the \
         StreamTarget's CA Secret"
    )]
    CaCertificates {
        /// What is wrong with the PEM.
        reason: String,
    },
    /// No CA was configured and the system has no root certificates.
    #[error(
        "upstream TLS has no CA to trust: the StreamTarget names no CA Secret and no system \
         root certificates could be loaded ({reason}); set the StreamTarget's TLS CA Secret"
    )]
    NoTrustRoots {
        /// Why the system roots could not be loaded.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("building the upstream TLS client failed: {0}")]
    TlsSetup(#[source] rustls::Error),
    /// The TLS server name is neither a DNS name nor an IP address.
    #[error(
        "{name:?} is not a valid TLS server name for broker {addr}; set the StreamTarget's TLS \
         server name to a DNS name in the broker's certificate"
    )]
    ServerName {
        /// The broker address.
        addr: String,
        /// The name that was refused.
        name: String,
    },
    /// TCP connect failed.
    #[error(
        "connecting to broker {addr} failed: {source}; check the StreamTarget's bootstrap \
         servers and that the broker is reachable from this pod"
    )]
    Connect {
        /// The broker address.
        addr: String,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// A step took longer than the connector's timeout.
    #[error(
        "{step} with broker {addr} timed out after {timeout:?}; check that the broker is up and \
         that the StreamTarget's security settings match this listener"
    )]
    Timeout {
        /// The broker address.
        addr: String,
        /// What was being done.
        step: &'static str,
        /// The connector's timeout.
        timeout: Duration,
    },
    /// The broker's certificate did not verify.
    #[error(
        "TLS with broker {addr} failed: the broker's certificate was refused: {source}; check \
         the StreamTarget's TLS CA Secret and server name"
    )]
    Certificate {
        /// The broker address.
        addr: String,
        /// The verification error.
        #[source]
        source: rustls::Error,
    },
    /// The TLS handshake failed for another reason.
    #[error(
        "TLS handshake with broker {addr} failed: {source}; check that this broker listener \
         speaks TLS (SSL or SASL_SSL)"
    )]
    TlsHandshake {
        /// The broker address.
        addr: String,
        /// The handshake error.
        #[source]
        source: io::Error,
    },
    /// The broker listener does not enable the configured mechanism.
    #[error(
        "SASL handshake with broker {addr} failed: the listener does not enable {mechanism} (it \
         enables: {enabled}); set the StreamTarget's SASL mechanism to one of those"
    )]
    MechanismNotEnabled {
        /// The broker address.
        addr: String,
        /// The configured mechanism.
        mechanism: SaslMechanism,
        /// The mechanisms the broker listed.
        enabled: String,
    },
    /// The broker refused the SASL handshake for another reason.
    #[error(
        "SASL {mechanism} handshake with broker {addr} failed: {message}; check that this \
         broker listener is SASL_PLAINTEXT or SASL_SSL"
    )]
    Handshake {
        /// The broker address.
        addr: String,
        /// The configured mechanism.
        mechanism: SaslMechanism,
        /// The broker's error.
        message: String,
    },
    /// The broker refused the credentials.
    #[error(
        "SASL {mechanism} authentication to {addr} failed: {message}; check the StreamTarget's \
         credentials Secret"
    )]
    Authentication {
        /// The broker address.
        addr: String,
        /// The configured mechanism.
        mechanism: SaslMechanism,
        /// The broker's error message.
        message: String,
    },
    /// A SCRAM server could not prove that it knows the credentials.
    #[error(
        "SASL {mechanism} authentication to {addr} failed: the broker could not prove it knows \
         the credentials ({reason}); the connection may not reach the real broker: check the \
         StreamTarget's bootstrap servers and the user's SCRAM credentials on the cluster"
    )]
    ServerNotVerified {
        /// The broker address.
        addr: String,
        /// The configured mechanism.
        mechanism: SaslMechanism,
        /// What did not verify.
        reason: String,
    },
    /// Reading or writing failed during a step.
    #[error(
        "{step} with broker {addr} failed: {source}; check that the StreamTarget's security \
         settings match this broker listener"
    )]
    Io {
        /// The broker address.
        addr: String,
        /// What was being done.
        step: &'static str,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// The broker answered something that is not a valid answer.
    #[error(
        "{step} with broker {addr} failed: unexpected answer: {reason}; check that the address \
         is a Kafka listener with the StreamTarget's security settings"
    )]
    Protocol {
        /// The broker address.
        addr: String,
        /// What was being done.
        step: &'static str,
        /// What was wrong.
        reason: String,
    },
}

impl UpstreamError {
    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            UpstreamError::Address { .. }
            | UpstreamError::CaCertificates { .. }
            | UpstreamError::NoTrustRoots { .. }
            | UpstreamError::TlsSetup(_)
            | UpstreamError::ServerName { .. } => "config",
            UpstreamError::Connect { .. } => "connect",
            UpstreamError::Timeout { .. } => "timeout",
            UpstreamError::Certificate { .. } => "certificate",
            UpstreamError::TlsHandshake { .. } => "tls",
            UpstreamError::MechanismNotEnabled { .. } | UpstreamError::Handshake { .. } => {
                "sasl_handshake"
            }
            UpstreamError::Authentication { .. } => "authentication",
            UpstreamError::ServerNotVerified { .. } => "server_not_verified",
            UpstreamError::Io { .. } => "io",
            UpstreamError::Protocol { .. } => "protocol",
        }
    }
}

/// A connection to a broker, plain or TLS, authenticated if the target asks for it.
#[derive(Debug)]
pub enum UpstreamStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// An opened connection and what the broker said about the session.
#[derive(Debug)]
pub struct UpstreamConnection {
    /// The stream, authenticated and positioned for the client's frames.
    pub stream: UpstreamStream,
    /// After this long the broker closes the connection unless the client re-authenticates
    /// (`connections.max.reauth.ms`, KIP-368); `None` without SASL or when the broker does not
    /// ask for it.
    pub session_lifetime: Option<Duration>,
}

/// Opens connections to one target's brokers.
pub struct Connector {
    tls: Option<(TlsConnector, UpstreamTls)>,
    sasl: Option<UpstreamSasl>,
    timeout: Duration,
    salted: sasl::SaltedPasswordCache,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("tls", &self.tls.as_ref().map(|(_, tls)| tls))
            .field("sasl", &self.sasl)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// How long each step (TCP connect, then TLS and SASL together) may take by default.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

    /// A connector for `settings`; reads the CA certificates and builds the TLS configuration
    /// once, so a bad CA is reported here rather than on every connection.
    pub fn new(settings: UpstreamSettings) -> Result<Connector, UpstreamError> {
        let tls = settings
            .tls
            .map(|tls| {
                let config: Arc<ClientConfig> = tls::client_config(&tls)?;
                Ok::<_, UpstreamError>((TlsConnector::from(config), tls))
            })
            .transpose()?;
        Ok(Connector {
            tls,
            sasl: settings.sasl,
            timeout: Connector::DEFAULT_TIMEOUT,
            salted: sasl::SaltedPasswordCache::default(),
        })
    }

    /// The same connector with another per-step timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Connector {
        self.timeout = timeout;
        self
    }

    /// Connects to broker `addr` (`host:port`) and returns the stream once it is ready for the
    /// client's frames.
    pub async fn connect(&self, addr: &str) -> Result<UpstreamStream, UpstreamError> {
        Ok(self.open(addr).await?.stream)
    }

    /// [`Connector::connect`], also returning the broker's session lifetime so the caller can
    /// re-authenticate or reconnect in time.
    pub async fn open(&self, addr: &str) -> Result<UpstreamConnection, UpstreamError> {
        let host = host_of(addr).ok_or_else(|| UpstreamError::Address {
            addr: addr.to_string(),
        })?;
        // Checked before dialling: a bad name is configuration, not a network problem.
        let server_name = self
            .tls
            .as_ref()
            .map(|(_, tls)| tls::server_name(tls, addr, host))
            .transpose()?;

        let tcp = tokio::time::timeout(self.timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| self.timed_out(addr, "TCP connect"))?
            .map_err(|source| UpstreamError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        tcp.set_nodelay(true)
            .map_err(|source| UpstreamError::Connect {
                addr: addr.to_string(),
                source,
            })?;

        let step = match (&self.tls, &self.sasl) {
            (Some(_), Some(_)) => "TLS handshake and SASL authentication",
            (Some(_), None) => "TLS handshake",
            (None, _) => "SASL authentication",
        };
        let connection = tokio::time::timeout(self.timeout, self.secure(addr, tcp, server_name))
            .await
            .map_err(|_| self.timed_out(addr, step))??;
        tracing::debug!(
            broker = addr,
            tls = self.tls.is_some(),
            sasl = self.sasl.as_ref().map(|s| s.mechanism.as_str()),
            session_lifetime_ms = connection.session_lifetime.map(|d| d.as_millis()),
            "connected upstream"
        );
        Ok(connection)
    }

    async fn secure(
        &self,
        addr: &str,
        tcp: TcpStream,
        server_name: Option<rustls::pki_types::ServerName<'static>>,
    ) -> Result<UpstreamConnection, UpstreamError> {
        let mut stream = match (&self.tls, server_name) {
            (Some((connector, _)), Some(name)) => {
                let tls = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|source| tls_error(addr, source))?;
                UpstreamStream::Tls(Box::new(tls))
            }
            _ => UpstreamStream::Plain(tcp),
        };
        let session_lifetime = match &self.sasl {
            Some(credentials) => {
                sasl::authenticate(&mut stream, addr, credentials, &self.salted)
                    .await?
                    .session_lifetime
            }
            None => None,
        };
        Ok(UpstreamConnection {
            stream,
            session_lifetime,
        })
    }

    fn timed_out(&self, addr: &str, step: &'static str) -> UpstreamError {
        UpstreamError::Timeout {
            addr: addr.to_string(),
            step,
            timeout: self.timeout,
        }
    }
}

/// A certificate that does not verify gets its own error: it is the one an operator must act on.
fn tls_error(addr: &str, source: io::Error) -> UpstreamError {
    let rustls_error = source
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(error @ rustls::Error::InvalidCertificate(_)) => UpstreamError::Certificate {
            addr: addr.to_string(),
            source: error.clone(),
        },
        _ => UpstreamError::TlsHandshake {
            addr: addr.to_string(),
            source,
        },
    }
}

/// The host of `host:port` or `[v6]:port`.
fn host_of(addr: &str) -> Option<&str> {
    let (host, port) = addr.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty()).then_some(host)
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamStream::Plain(s) => s.is_write_vectored(),
            UpstreamStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_the_password() {
        let settings = UpstreamSettings {
            tls: None,
            sasl: Some(UpstreamSasl {
                mechanism: SaslMechanism::ScramSha512,
                username: "alice".into(),
                password: "s3cr3t-pw".into(),
            }),
        };
        let printed = format!("{settings:?}");
        assert!(printed.contains("alice"), "{printed}");
        assert!(!printed.contains("s3cr3t-pw"), "{printed}");
        let connector = Connector::new(settings).unwrap();
        assert!(!format!("{connector:?}").contains("s3cr3t-pw"));
    }

    #[test]
    fn mechanisms_parse_from_kafka_names() {
        for mechanism in [
            SaslMechanism::Plain,
            SaslMechanism::ScramSha256,
            SaslMechanism::ScramSha512,
            SaslMechanism::OAuthBearer,
        ] {
            assert_eq!(mechanism.as_str().parse(), Ok(mechanism));
        }
        assert_eq!("scram-sha-256".parse(), Ok(SaslMechanism::ScramSha256));
        assert!("GSSAPI".parse::<SaslMechanism>().is_err());
    }

    #[test]
    fn hosts_are_taken_from_addresses() {
        assert_eq!(host_of("127.0.0.1:9092"), Some("127.0.0.1"));
        assert_eq!(host_of("kafka-0.kafka:9093"), Some("kafka-0.kafka"));
        assert_eq!(host_of("[::1]:9092"), Some("::1"));
        assert_eq!(host_of("kafka"), None);
        assert_eq!(host_of(":9092"), None);
        assert_eq!(host_of("kafka:port"), None);
    }

    #[test]
    fn connectors_are_shared_and_connections_opened_from_spawned_tasks() {
        fn assert_send_sync<T: Send + Sync>(_: &T) {}
        fn assert_send<T: Send>(_: &T) {}
        let connector = Connector::new(UpstreamSettings::default()).unwrap();
        assert_send_sync(&connector);
        assert_send(&connector.open("127.0.0.1:9092"));
    }

    #[tokio::test]
    async fn an_address_without_a_port_is_a_configuration_error() {
        let connector = Connector::new(UpstreamSettings::default()).unwrap();
        let error = connector.connect("kafka").await.unwrap_err();
        assert_eq!(error.metric_label(), "config");
        assert!(error.to_string().contains("bootstrap servers"), "{error}");
    }
}

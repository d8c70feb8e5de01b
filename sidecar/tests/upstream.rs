//! The upstream connector against a real Apache Kafka with SASL_PLAINTEXT, SSL and SASL_SSL
//! listeners: each mechanism authenticates and the stream it returns carries a client's
//! request; wrong credentials and untrusted certificates fail with errors that say so.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use kafka_protocol::messages::{MetadataRequest, MetadataResponse};
use streamward_e2e::kafka::{KafkaCluster, KafkaOptions, SecurityProtocol, wire};
use streamward_e2e::pki::Ca;
use streamward_sidecar::upstream::{
    Connector, SaslMechanism, UpstreamError, UpstreamSasl, UpstreamSettings, UpstreamStream,
    UpstreamTls,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const USER: &str = "alice";
const PASSWORD: &str = "alice-secret-7f3a";

/// One node with every kind of secured listener (one JVM serves all the tests).
struct Secured {
    kafka: KafkaCluster,
    ca_pem: String,
}

fn secured() -> &'static Secured {
    static SECURED: OnceLock<Secured> = OnceLock::new();
    SECURED.get_or_init(|| {
        let ca = Ca::new("streamward-test-kafka-ca").expect("making a CA");
        let options = KafkaOptions::new(1)
            .listener(SecurityProtocol::SaslPlaintext)
            .listener(SecurityProtocol::Ssl)
            .listener(SecurityProtocol::SaslSsl)
            .sasl_user(USER, PASSWORD)
            .tls(&ca)
            .expect("issuing the broker certificate");
        Secured {
            kafka: KafkaCluster::start_with(options).expect("starting a secured Kafka"),
            ca_pem: ca.cert_pem().to_string(),
        }
    })
}

fn addr(protocol: SecurityProtocol) -> String {
    secured().kafka.nodes()[0]
        .secured_addr(protocol)
        .expect("the listener exists")
}

fn port(addr: &str) -> i32 {
    addr.rsplit_once(':').unwrap().1.parse().unwrap()
}

fn sasl(mechanism: SaslMechanism, password: &str) -> Option<UpstreamSasl> {
    Some(UpstreamSasl {
        mechanism,
        username: USER.to_string(),
        password: password.to_string(),
    })
}

fn trusting(ca_pem: &str) -> Option<UpstreamTls> {
    Some(UpstreamTls {
        ca_pem: Some(ca_pem.as_bytes().to_vec()),
        server_name: None,
    })
}

async fn connect(settings: UpstreamSettings, addr: &str) -> Result<UpstreamStream, UpstreamError> {
    Connector::new(settings)
        .expect("building the connector")
        .with_timeout(Duration::from_secs(20))
        .connect(addr)
        .await
}

/// Panics with the error and the broker's log.
fn connected(result: Result<UpstreamStream, UpstreamError>) -> UpstreamStream {
    result.unwrap_or_else(|e| panic!("connecting failed: {e}\n{}", secured().kafka.dump()))
}

/// Sends Metadata v12 on `stream` the way a client would after the connector hands it over.
async fn metadata(stream: &mut UpstreamStream) -> MetadataResponse {
    let correlation_id = 4242;
    let frame = wire::request_frame(
        &MetadataRequest::default().with_topics(None),
        12,
        correlation_id,
    )
    .unwrap();
    stream.write_all(&frame).await.unwrap();
    stream.flush().await.unwrap();
    let size = stream.read_i32().await.expect("a Metadata response");
    let mut body = vec![0u8; usize::try_from(size).unwrap()];
    stream.read_exact(&mut body).await.unwrap();
    wire::response_body::<MetadataRequest>(body.into(), 12, correlation_id).unwrap()
}

/// The broker answers on the listener we dialled: it advertises that listener's port.
async fn assert_answers_metadata(mut stream: UpstreamStream, addr: &str) {
    let first = metadata(&mut stream).await;
    assert_eq!(first.brokers.len(), 1, "{first:?}");
    assert_eq!(first.brokers[0].port, port(addr), "{first:?}");
    // The stream stays usable for the next request.
    let again = metadata(&mut stream).await;
    assert_eq!(again.brokers.len(), 1);
}

fn assert_authentication_failed(error: &UpstreamError, password: &str) {
    let message = error.to_string();
    assert!(
        matches!(error, UpstreamError::Authentication { .. }),
        "{message}"
    );
    assert!(message.contains("authentication"), "{message}");
    assert!(message.contains("credentials Secret"), "{message}");
    assert!(!message.contains(password), "{message}");
    assert!(!format!("{error:?}").contains(password), "{error:?}");
}

#[tokio::test]
async fn plain_authenticates_and_the_stream_carries_metadata() {
    let addr = addr(SecurityProtocol::SaslPlaintext);
    let settings = UpstreamSettings {
        tls: None,
        sasl: sasl(SaslMechanism::Plain, PASSWORD),
    };
    assert_answers_metadata(connected(connect(settings, &addr).await), &addr).await;
}

#[tokio::test]
async fn scram_sha_256_authenticates_and_the_stream_carries_metadata() {
    let addr = addr(SecurityProtocol::SaslPlaintext);
    let settings = UpstreamSettings {
        tls: None,
        sasl: sasl(SaslMechanism::ScramSha256, PASSWORD),
    };
    assert_answers_metadata(connected(connect(settings, &addr).await), &addr).await;
}

#[tokio::test]
async fn scram_sha_512_authenticates_and_the_stream_carries_metadata() {
    let addr = addr(SecurityProtocol::SaslPlaintext);
    let settings = UpstreamSettings {
        tls: None,
        sasl: sasl(SaslMechanism::ScramSha512, PASSWORD),
    };
    assert_answers_metadata(connected(connect(settings, &addr).await), &addr).await;
}

#[tokio::test]
async fn one_connector_opens_many_scram_connections() {
    // The second and later connections reuse the salted password the first one derived.
    let addr = addr(SecurityProtocol::SaslPlaintext);
    let connector = Connector::new(UpstreamSettings {
        tls: None,
        sasl: sasl(SaslMechanism::ScramSha256, PASSWORD),
    })
    .unwrap();
    for _ in 0..3 {
        let opened = connector
            .open(&addr)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", secured().kafka.dump()));
        // The harness's brokers do not ask for re-authentication.
        assert_eq!(opened.session_lifetime, None);
        assert_answers_metadata(opened.stream, &addr).await;
    }
}

#[tokio::test]
async fn oauthbearer_authenticates_with_a_token_and_the_stream_carries_metadata() {
    let addr = addr(SecurityProtocol::SaslPlaintext);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // The harness's brokers run Kafka's unsecured validator: an unsigned JWT with a subject.
    let token = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
        URL_SAFE_NO_PAD.encode(format!(
            r#"{{"sub":"{USER}","iat":{now},"exp":{}}}"#,
            now + 600
        ))
    );
    let settings = UpstreamSettings {
        tls: None,
        sasl: sasl(SaslMechanism::OAuthBearer, &token),
    };
    assert_answers_metadata(connected(connect(settings, &addr).await), &addr).await;
}

#[tokio::test]
async fn an_invalid_oauthbearer_token_fails_authentication() {
    let addr = addr(SecurityProtocol::SaslPlaintext);
    let token = "not-a-jwt-3c1d";
    let settings = UpstreamSettings {
        tls: None,
        sasl: sasl(SaslMechanism::OAuthBearer, token),
    };
    let error = connect(settings, &addr).await.unwrap_err();
    assert_authentication_failed(&error, token);
}

#[tokio::test]
async fn a_wrong_plain_password_fails_authentication_without_revealing_it() {
    let addr = addr(SecurityProtocol::SaslPlaintext);
    let wrong = "wrong-password-91c2";
    let settings = UpstreamSettings {
        tls: None,
        sasl: sasl(SaslMechanism::Plain, wrong),
    };
    let error = connect(settings, &addr).await.unwrap_err();
    assert_authentication_failed(&error, wrong);
    assert!(error.to_string().contains(&addr), "{error}");
}

#[tokio::test]
async fn a_wrong_scram_password_fails_authentication_without_revealing_it() {
    let addr = addr(SecurityProtocol::SaslPlaintext);
    let wrong = "wrong-password-5e07";
    for mechanism in [SaslMechanism::ScramSha256, SaslMechanism::ScramSha512] {
        let settings = UpstreamSettings {
            tls: None,
            sasl: sasl(mechanism, wrong),
        };
        let error = connect(settings, &addr).await.unwrap_err();
        assert_authentication_failed(&error, wrong);
        assert!(error.to_string().contains(mechanism.as_str()), "{error}");
    }
}

#[tokio::test]
async fn tls_with_the_brokers_ca_carries_metadata() {
    let addr = addr(SecurityProtocol::Ssl);
    let settings = UpstreamSettings {
        tls: trusting(&secured().ca_pem),
        sasl: None,
    };
    let stream = connected(connect(settings, &addr).await);
    assert!(matches!(stream, UpstreamStream::Tls(_)));
    assert_answers_metadata(stream, &addr).await;
}

#[tokio::test]
async fn tls_with_a_server_name_override_in_the_certificate_succeeds() {
    let addr = addr(SecurityProtocol::Ssl);
    let settings = UpstreamSettings {
        tls: Some(UpstreamTls {
            ca_pem: Some(secured().ca_pem.as_bytes().to_vec()),
            server_name: Some("localhost".into()),
        }),
        sasl: None,
    };
    assert_answers_metadata(connected(connect(settings, &addr).await), &addr).await;
}

#[tokio::test]
async fn tls_with_another_ca_fails_with_a_certificate_error() {
    let addr = addr(SecurityProtocol::Ssl);
    let other = Ca::new("some-other-ca").unwrap();
    let settings = UpstreamSettings {
        tls: trusting(other.cert_pem()),
        sasl: None,
    };
    let error = connect(settings, &addr).await.unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, UpstreamError::Certificate { .. }),
        "{message}"
    );
    assert_eq!(error.metric_label(), "certificate");
    assert!(message.contains("certificate"), "{message}");
    assert!(message.contains("CA Secret"), "{message}");
}

#[tokio::test]
async fn tls_with_a_server_name_not_in_the_certificate_fails_with_a_certificate_error() {
    let addr = addr(SecurityProtocol::Ssl);
    let settings = UpstreamSettings {
        tls: Some(UpstreamTls {
            ca_pem: Some(secured().ca_pem.as_bytes().to_vec()),
            server_name: Some("kafka.example.com".into()),
        }),
        sasl: None,
    };
    let error = connect(settings, &addr).await.unwrap_err();
    assert!(
        matches!(error, UpstreamError::Certificate { .. }),
        "{error}"
    );
}

#[tokio::test]
async fn tls_to_a_plaintext_listener_fails_with_a_tls_error() {
    let addr = secured().kafka.nodes()[0].addr();
    let settings = UpstreamSettings {
        tls: trusting(&secured().ca_pem),
        sasl: None,
    };
    let error = connect(settings, &addr).await.unwrap_err();
    assert!(
        matches!(error, UpstreamError::TlsHandshake { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("speaks TLS"), "{error}");
}

#[tokio::test]
async fn sasl_ssl_with_scram_sha_512_carries_metadata() {
    let addr = addr(SecurityProtocol::SaslSsl);
    let settings = UpstreamSettings {
        tls: trusting(&secured().ca_pem),
        sasl: sasl(SaslMechanism::ScramSha512, PASSWORD),
    };
    let stream = connected(connect(settings, &addr).await);
    assert!(matches!(stream, UpstreamStream::Tls(_)));
    assert_answers_metadata(stream, &addr).await;
}

#[tokio::test]
async fn sasl_ssl_with_a_wrong_password_fails_authentication() {
    let addr = addr(SecurityProtocol::SaslSsl);
    let wrong = "wrong-password-0d44";
    let settings = UpstreamSettings {
        tls: trusting(&secured().ca_pem),
        sasl: sasl(SaslMechanism::ScramSha256, wrong),
    };
    let error = connect(settings, &addr).await.unwrap_err();
    assert_authentication_failed(&error, wrong);
}

#[tokio::test]
async fn a_closed_port_fails_with_a_connect_error() {
    let port = streamward_e2e::net::free_port().unwrap();
    let addr = format!("127.0.0.1:{port}");
    let error = connect(UpstreamSettings::default(), &addr)
        .await
        .unwrap_err();
    assert!(matches!(error, UpstreamError::Connect { .. }), "{error}");
    assert!(error.to_string().contains(&addr), "{error}");
}

#[tokio::test]
async fn sasl_without_tls_on_a_tls_listener_says_the_listener_needs_tls() {
    let addr = addr(SecurityProtocol::SaslSsl);
    let settings = UpstreamSettings {
        tls: None,
        sasl: sasl(SaslMechanism::ScramSha256, PASSWORD),
    };
    let error = connect(settings, &addr).await.unwrap_err();
    assert!(matches!(error, UpstreamError::Protocol { .. }), "{error}");
    assert!(error.to_string().contains("needs TLS"), "{error}");
}

#[tokio::test]
async fn sasl_on_a_plaintext_listener_fails_the_handshake() {
    let addr = secured().kafka.nodes()[0].addr();
    let settings = UpstreamSettings {
        tls: None,
        sasl: sasl(SaslMechanism::Plain, PASSWORD),
    };
    let error = connect(settings, &addr).await.unwrap_err();
    assert!(matches!(error, UpstreamError::Handshake { .. }), "{error}");
    assert!(
        error.to_string().contains("SASL_PLAINTEXT or SASL_SSL"),
        "{error}"
    );
}

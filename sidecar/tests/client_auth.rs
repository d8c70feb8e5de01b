//! Clients authenticating to the proxy, end to end: real Kafka (one node), the real
//! `streamward-sidecar` binary with a users file and an OIDC issuer's keys, and confluent-kafka
//! authenticating with SCRAM, PLAIN and OAUTHBEARER. Policies name users and groups; the
//! broker connection itself carries no client credentials.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use common::{
    ConsumeReport, ProduceReport, Sidecar, consume, create_topic, kafka, produce, target_yaml,
};
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, MetadataRequest, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use streamward_e2e::unique_name;
use streamward_sidecar::client_auth::{self, ScramCredential, ScramHash};

const NS: &str = "team-a";
/// The workload's own service account: only the optional-auth test gives it any access.
const SA: &str = "batch-runner";
const ISSUER: &str = "https://idp.streamward.test/realms/kafka";
const AUDIENCE: &str = "streamward-proxy";
const ALICE_PASSWORD: &str = "alice-Secret-42";
const CAROL_PASSWORD: &str = "carol-Secret-7";

/// alice may use `alice.*` (and groups `alice-*`); the auditors group may read `audit.*`; the
/// workload itself (service account) may use `shared.*`.
fn policies() -> String {
    format!(
        "apiVersion: streamward.io/v1alpha1
kind: StreamPolicy
metadata: {{name: alice, namespace: {NS}}}
spec:
  subjects:
    users: [alice]
  rules:
  - name: alice-topics
    resources: [{{resourceType: Topic, name: alice., patternType: Prefixed}}]
    operations: [Read, Write, Create, Describe]
    effect: Allow
  - name: alice-groups
    resources: [{{resourceType: Group, name: alice-, patternType: Prefixed}}]
    operations: [Read, Describe]
    effect: Allow
---
apiVersion: streamward.io/v1alpha1
kind: StreamPolicy
metadata: {{name: auditors, namespace: {NS}}}
spec:
  subjects:
    groups: [auditors]
  rules:
  - name: audit-read
    resources: [{{resourceType: Topic, name: audit., patternType: Prefixed}}]
    operations: [Read, Describe]
    effect: Allow
  - name: audit-groups
    resources: [{{resourceType: Group, name: audit-, patternType: Prefixed}}]
    operations: [Read, Describe]
    effect: Allow
---
apiVersion: streamward.io/v1alpha1
kind: StreamPolicy
metadata: {{name: workload, namespace: {NS}}}
spec:
  subjects:
    serviceAccounts: [{SA}]
  rules:
  - name: shared-topics
    resources: [{{resourceType: Topic, name: shared., patternType: Prefixed}}]
    operations: [Read, Write, Create, Describe]
    effect: Allow
"
    )
}

/// The OIDC issuer of these tests: an ES256 key made per run, and its JWKS.
struct Issuer {
    key: EncodingKey,
    jwks: String,
}

fn issuer() -> &'static Issuer {
    static ISSUER_KEY: OnceLock<Issuer> = OnceLock::new();
    ISSUER_KEY.get_or_init(|| {
        let (key, jwk) = es256_key("streamward-e2e-1");
        let jwks = serde_json::to_string(&JwkSet { keys: vec![jwk] }).unwrap();
        Issuer { key, jwks }
    })
}

fn es256_key(kid: &str) -> (EncodingKey, Jwk) {
    client_auth::install_jwt_crypto();
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let key = EncodingKey::from_ec_der(pkcs8.as_ref());
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some(kid.into());
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    (key, jwk)
}

/// A token for `sub` with `groups`, valid for an hour, signed with `key`.
fn token(key: &EncodingKey, sub: &str, groups: &[&str]) -> String {
    client_auth::install_jwt_crypto();
    let now = jsonwebtoken::get_current_timestamp();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("streamward-e2e-1".into());
    let claims = serde_json::json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "groups": groups,
        "iat": now, "exp": now + 3600,
    });
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

/// alice and bob with passwords (local mode); carol with stored SCRAM-SHA-512 credentials only,
/// in the auditors group.
fn users_yaml() -> String {
    let carol = ScramCredential::derive(ScramHash::Sha512, CAROL_PASSWORD, b"carol-salt-1", 4096);
    format!(
        "users:
- {{name: alice, password: '{ALICE_PASSWORD}', groups: [team-a]}}
- {{name: bob, password: bob-Secret-1}}
- name: carol
  scramSha512: {}
  groups: [auditors]
",
        carol.to_yaml_flow()
    )
}

/// The proxy with client authentication: its users file and JWKS live in `dir`.
fn sidecar(extra: &[&str]) -> (Sidecar, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.yaml");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&users, users_yaml()).unwrap();
    std::fs::write(&jwks, &issuer().jwks).unwrap();
    let mut args = vec![
        "--client-users",
        users.to_str().unwrap(),
        "--oidc-issuer",
        ISSUER,
        "--oidc-audience",
        AUDIENCE,
        "--oidc-jwks",
        jwks.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let proxy = common::sidecar_with_args(
        &[
            ("target.yaml", target_yaml(NS, &kafka().bootstrap())),
            ("policies.yaml", policies()),
        ],
        NS,
        SA,
        &args,
    );
    (proxy, dir)
}

/// librdkafka settings for SASL with a user name and password.
fn sasl(mechanism: &str, user: &str, password: &str) -> Vec<String> {
    [
        "security.protocol=SASL_PLAINTEXT".to_string(),
        format!("sasl.mechanism={mechanism}"),
        format!("sasl.username={user}"),
        format!("sasl.password={password}"),
    ]
    .into_iter()
    .flat_map(|setting| ["--config".to_string(), setting])
    .collect()
}

fn args(owned: &[String]) -> Vec<&str> {
    owned.iter().map(String::as_str).collect()
}

fn refused_topic(report_errors: &[String]) -> bool {
    report_errors.iter().any(|e| {
        e.contains("TOPIC_AUTHORIZATION_FAILED") || e.contains("Topic authorization failed")
    })
}

fn authentication_failed(client_errors: &[String]) -> bool {
    client_errors
        .iter()
        .any(|e| e.contains("Authentication failed") || e.contains("SASL authentication error"))
}

#[test]
fn alice_with_scram_produces_and_consumes_her_topics() {
    let (proxy, _files) = sidecar(&[]);
    let topic = unique_name("alice.orders");
    create_topic(kafka(), &topic, 1, 1);

    let scram256 = sasl("SCRAM-SHA-256", "alice", ALICE_PASSWORD);
    let report = produce(&proxy.bootstrap, &topic, "alice", 20, &args(&scram256));
    assert_eq!(
        (report.delivered, report.errors.len()),
        (20, 0),
        "{report:?}\n{}",
        proxy.log()
    );

    let scram512 = sasl("SCRAM-SHA-512", "alice", ALICE_PASSWORD);
    let consumed = consume(
        &proxy.bootstrap,
        &topic,
        &unique_name("alice-g"),
        20,
        &args(&scram512),
    );
    assert_eq!(consumed.errors, Vec::<String>::new(), "{}", proxy.log());
    let expected: Vec<String> = (0..20).map(|i| format!("alice-{i}")).collect();
    assert_eq!(consumed.values.unwrap(), expected);

    let log = proxy.log();
    assert!(log.contains("client authenticated"), "{log}");
    assert!(
        !log.contains(ALICE_PASSWORD),
        "the password reached the log"
    );
    assert!(
        proxy
            .metric("streamward_sidecar_client_authentications_total{result=\"Success\"}")
            .unwrap()
            >= 2.0
    );
}

#[test]
fn bob_whom_no_policy_names_gets_topic_authorization_failed() {
    let (proxy, _files) = sidecar(&[]);
    let topic = unique_name("alice.private");
    create_topic(kafka(), &topic, 1, 1);

    let bob = sasl("SCRAM-SHA-256", "bob", "bob-Secret-1");
    let report = produce(&proxy.bootstrap, &topic, "bob", 3, &args(&bob));
    assert_eq!(report.delivered, 0, "{report:?}");
    assert!(refused_topic(&report.errors), "{report:?}\n{}", proxy.log());
    // He did authenticate: the refusal is the policy's, not a failed login.
    assert!(!authentication_failed(&report.client_errors), "{report:?}");
}

#[test]
fn a_wrong_password_fails_authentication_in_the_client() {
    let (proxy, _files) = sidecar(&[]);
    let topic = unique_name("alice.wrong");
    create_topic(kafka(), &topic, 1, 1);

    let wrong = sasl("SCRAM-SHA-256", "alice", "not-her-password");
    let mut extra = args(&wrong);
    extra.extend(["--timeout", "8"]);
    let report = produce(&proxy.bootstrap, &topic, "x", 1, &extra);
    assert_eq!(report.delivered, 0, "{report:?}");
    assert!(
        authentication_failed(&report.client_errors),
        "{report:?}\n{}",
        proxy.log()
    );

    let plain = sasl("PLAIN", "alice", "not-her-password");
    let mut extra = args(&plain);
    extra.extend(["--timeout", "8"]);
    let report = produce(&proxy.bootstrap, &topic, "x", 1, &extra);
    assert!(authentication_failed(&report.client_errors), "{report:?}");

    assert_logged(&proxy, "closing the connection: client authentication");
    assert!(
        !proxy.log().contains("not-her-password"),
        "the password reached the log"
    );
    assert!(
        proxy
            .metric("streamward_sidecar_client_authentications_total{result=\"Failure\"}")
            .unwrap()
            >= 2.0
    );
}

#[test]
fn plain_works_too() {
    let (proxy, _files) = sidecar(&[]);
    let topic = unique_name("alice.plain");
    create_topic(kafka(), &topic, 1, 1);

    let plain = sasl("PLAIN", "alice", ALICE_PASSWORD);
    let report = produce(&proxy.bootstrap, &topic, "p", 5, &args(&plain));
    assert_eq!(report.delivered, 5, "{report:?}\n{}", proxy.log());
    let consumed = consume(
        &proxy.bootstrap,
        &topic,
        &unique_name("alice-g"),
        5,
        &args(&plain),
    );
    assert_eq!(consumed.count, 5, "{consumed:?}");
}

#[test]
fn an_oidc_token_in_the_auditors_group_reads_audit_topics_only() {
    let (proxy, _files) = sidecar(&[]);
    let topic = unique_name("audit.payments");
    create_topic(kafka(), &topic, 1, 1);
    assert_eq!(
        produce(&kafka().bootstrap(), &topic, "evt", 5, &[]).delivered,
        5
    );

    let dave = token(&issuer().key, "dave", &["auditors"]);
    let oauth = ["--oauth-token", dave.as_str(), "--oauth-principal", "dave"];
    let consumed: ConsumeReport =
        consume(&proxy.bootstrap, &topic, &unique_name("audit-g"), 5, &oauth);
    assert_eq!(consumed.count, 5, "{consumed:?}\n{}", proxy.log());
    assert!(proxy.log().contains("OAUTHBEARER"), "{}", proxy.log());

    // Read, not Write: the auditors' rule does not allow producing.
    let mut extra = oauth.to_vec();
    extra.extend(["--timeout", "10"]);
    let report: ProduceReport = produce(&proxy.bootstrap, &topic, "forged", 1, &extra);
    assert_eq!(report.delivered, 0, "{report:?}");
    assert!(refused_topic(&report.errors), "{report:?}");

    // A token without the group reads nothing.
    let erin = token(&issuer().key, "erin", &["sales"]);
    let consumed = consume(
        &proxy.bootstrap,
        &topic,
        &unique_name("audit-g"),
        1,
        &["--oauth-token", &erin, "--timeout", "10", "--stop-on-error"],
    );
    assert_eq!(consumed.count, 0, "{consumed:?}");

    // carol is an auditor by the users file, with stored SCRAM credentials only.
    let carol = sasl("SCRAM-SHA-512", "carol", CAROL_PASSWORD);
    let consumed = consume(
        &proxy.bootstrap,
        &topic,
        &unique_name("audit-g"),
        5,
        &args(&carol),
    );
    assert_eq!(consumed.count, 5, "{consumed:?}\n{}", proxy.log());
}

#[test]
fn a_token_signed_by_another_key_fails_authentication() {
    let (proxy, _files) = sidecar(&[]);
    let topic = unique_name("audit.forged");
    create_topic(kafka(), &topic, 1, 1);
    let (stranger, _) = es256_key("streamward-e2e-1");
    let forged = token(&stranger, "dave", &["auditors"]);
    let consumed = consume(
        &proxy.bootstrap,
        &topic,
        &unique_name("audit-g"),
        1,
        &["--oauth-token", &forged, "--timeout", "8"],
    );
    assert_eq!(consumed.count, 0, "{consumed:?}");
    assert!(
        authentication_failed(&consumed.client_errors),
        "{consumed:?}\n{}",
        proxy.log()
    );
    assert_logged(&proxy, "signature does not verify");
}

#[test]
fn a_client_that_does_not_authenticate_only_gets_api_versions() {
    let (proxy, _files) = sidecar(&[]);
    let mut stream = TcpStream::connect(&proxy.bootstrap).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();

    // ApiVersions is answered, and now lists the SASL requests the proxy serves itself.
    send(&mut stream, ApiKey::ApiVersions, 0, 1, |buf| {
        ApiVersionsRequest::default().encode(buf, 0)
    });
    let mut response = receive(&mut stream).expect("an ApiVersions response");
    let header = ResponseHeader::decode(&mut response, 0).unwrap();
    assert_eq!(header.correlation_id, 1);
    let versions = ApiVersionsResponse::decode(&mut response, 0).unwrap();
    let keys: Vec<i16> = versions.api_keys.iter().map(|k| k.api_key).collect();
    assert!(keys.contains(&(ApiKey::SaslHandshake as i16)), "{keys:?}");
    assert!(
        keys.contains(&(ApiKey::SaslAuthenticate as i16)),
        "{keys:?}"
    );

    // Metadata before authenticating closes the connection, as a Kafka SASL listener does.
    send(&mut stream, ApiKey::Metadata, 1, 2, |buf| {
        MetadataRequest::default().encode(buf, 1)
    });
    assert!(receive(&mut stream).is_none(), "the connection stayed open");
    // The proxy logs why once the connection is closed.
    assert_logged(&proxy, "this proxy requires SASL");
}

#[test]
fn with_authentication_optional_an_anonymous_client_is_only_the_workload() {
    let (proxy, _files) = sidecar(&["--client-auth-required=false"]);
    let shared = unique_name("shared.jobs");
    let private = unique_name("alice.jobs");
    create_topic(kafka(), &shared, 1, 1);
    create_topic(kafka(), &private, 1, 1);

    // Anonymous: the service account's policy, nothing more.
    let report = produce(&proxy.bootstrap, &shared, "anon", 3, &[]);
    assert_eq!(report.delivered, 3, "{report:?}\n{}", proxy.log());
    let mut extra = vec!["--timeout", "10"];
    let report = produce(&proxy.bootstrap, &private, "anon", 1, &extra);
    assert!(refused_topic(&report.errors), "{report:?}");

    // alice authenticates on the same proxy and gets her own topics too.
    let alice = sasl("SCRAM-SHA-256", "alice", ALICE_PASSWORD);
    extra.extend(args(&alice));
    let report = produce(&proxy.bootstrap, &private, "alice", 3, &extra);
    assert_eq!(report.delivered, 3, "{report:?}\n{}", proxy.log());
}

/// Waits a little for the proxy to log `needle`.
fn assert_logged(proxy: &Sidecar, needle: &str) {
    let found = streamward_e2e::wait_for(needle, Duration::from_secs(5), || {
        Ok(proxy.log().contains(needle).then_some(()))
    });
    assert!(found.is_ok(), "{needle:?} not logged:\n{}", proxy.log());
}

/// Writes one request frame.
fn send(
    stream: &mut TcpStream,
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: impl FnOnce(&mut BytesMut) -> anyhow::Result<()>,
) {
    let mut buf = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("raw-test")))
        .encode(&mut buf, key.request_header_version(version))
        .unwrap();
    body(&mut buf).unwrap();
    let mut frame = BytesMut::with_capacity(buf.len() + 4);
    frame.put_i32(buf.len() as i32);
    frame.put(buf);
    stream.write_all(&frame).unwrap();
}

/// Reads one response frame; `None` when the connection is closed.
fn receive(stream: &mut TcpStream) -> Option<Bytes> {
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).ok()?;
    let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut body).ok()?;
    let body = Bytes::from(body);
    assert!(body.remaining() >= 4);
    Some(body)
}

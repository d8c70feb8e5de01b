//! The proxy watching its ConfigMap through a real kube-apiserver: a revoked grant reaches a
//! consumer's open connection within seconds, and a deleted ConfigMap fails closed.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Sidecar, consume, kafka_tool, produce, target_yaml};
use streamward_api::compile::{self, Inputs};
use streamward_api::config::{CONFIG_KEY, ProxyConfig, WorkloadIdentity, config_map_name};
use streamward_e2e::kafka::KafkaCluster;
use streamward_e2e::kube::KubeApiServer;
use streamward_e2e::process::run;
use streamward_e2e::{net, unique_name, wait_for};

const NS: &str = "payments";
const SA: &str = "ledger";

fn policy_yaml() -> String {
    format!(
        "apiVersion: streamward.io/v1alpha1
kind: StreamPolicy
metadata: {{name: ledger-writes, namespace: {NS}}}
spec:
  subjects:
    serviceAccounts: [{SA}]
  rules:
  - name: write-ledger
    resources: [{{resourceType: Topic, name: ledger., patternType: Prefixed}}]
    operations: [Write, Describe]
    effect: Allow
  - name: own-groups
    resources: [{{resourceType: Group, name: ledger-, patternType: Prefixed}}]
    operations: [Read, Describe]
    effect: Allow
"
    )
}

fn grant_yaml(topic: &str) -> String {
    let now = jiff::Timestamp::now();
    format!(
        "apiVersion: streamward.io/v1alpha1
kind: AccessGrant
metadata: {{name: incident-read, namespace: {NS}, creationTimestamp: '{now}'}}
spec:
  subjects:
    serviceAccounts: [{SA}]
  resources: [{{resourceType: Topic, name: {topic}}}]
  operations: [Read]
  startTime: '{}'
  expiryTime: '{}'
  reason: incident 7
",
        now - jiff::SignedDuration::from_secs(60),
        now + jiff::SignedDuration::from_secs(3600),
    )
}

/// What the operator would compile for `payments/ledger` from these manifests.
fn compiled(manifests: &[String]) -> ProxyConfig {
    let mut inputs = Inputs::default();
    for text in manifests {
        inputs.extend(compile::parse_manifests(text).unwrap());
    }
    let identity = WorkloadIdentity {
        namespace: NS.into(),
        service_account: SA.into(),
    };
    compile::compile(&inputs, &identity).unwrap()
}

/// `kubectl apply`s the ConfigMap holding `config`, as the operator would write it.
fn apply_config_map(server: &KubeApiServer, config: &ProxyConfig) {
    let map = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": config_map_name(SA), "namespace": NS},
        "data": {CONFIG_KEY: serde_json::to_string(config).unwrap()},
    });
    let file = server
        .dir()
        .join(format!("{}.json", unique_name("configmap")));
    std::fs::write(&file, map.to_string()).unwrap();
    kubectl(server, &["apply", "-f", file.to_str().unwrap()]);
}

fn kubectl(server: &KubeApiServer, args: &[&str]) -> String {
    let output = run(&format!("kubectl {args:?}"), server.kubectl().args(args)).unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn ready(proxy: &Sidecar) -> bool {
    net::http_get(&proxy.admin, "/readyz").is_ok_and(|(status, _)| status == 200)
}

#[test]
fn a_revoked_grant_reaches_an_open_connection_and_a_deleted_config_map_fails_closed() {
    let server = KubeApiServer::start().unwrap();
    let kafka = KafkaCluster::start(1).unwrap();
    let direct = kafka.bootstrap();
    let topic = unique_name("ledger.entries");
    let (created, output) = kafka_tool(
        &kafka,
        "org.apache.kafka.tools.TopicCommand",
        &[
            "--bootstrap-server",
            &direct,
            "--create",
            "--topic",
            &topic,
            "--partitions",
            "1",
        ],
    );
    assert!(created, "{output}");
    kubectl(&server, &["create", "namespace", NS]);

    let base = vec![target_yaml(NS, &direct), policy_yaml()];
    let mut with_grant = base.clone();
    with_grant.push(grant_yaml(&topic));
    let granted = compiled(&with_grant);
    let revoked = compiled(&base);
    assert_ne!(granted.hash, revoked.hash);
    apply_config_map(&server, &granted);

    // No mounted file at all: the config can only come from the API server.
    let kubeconfig = server.kubeconfig().to_str().unwrap().to_string();
    let name = config_map_name(SA);
    let proxy = Sidecar::start_with_source(
        Path::new(env!("CARGO_BIN_EXE_streamward-sidecar")),
        NS,
        SA,
        &["--config-map", &name],
        &[("KUBECONFIG", &kubeconfig)],
    )
    .unwrap();
    assert!(proxy.log().contains(&granted.hash), "{}", proxy.log());

    assert_eq!(produce(&direct, &topic, "before", 5, &[]).delivered, 5);
    let bootstrap = proxy.bootstrap.clone();
    let consumed_topic = topic.clone();
    let consumer = std::thread::spawn(move || {
        consume(
            &bootstrap,
            &consumed_topic,
            "ledger-audit",
            100,
            &["--stay", "--timeout", "40", "--stop-on-error"],
        )
    });
    // Once it fetches, the consumer has joined its group and read what was there.
    wait_for("the consumer to fetch", Duration::from_secs(30), || {
        Ok(
            (proxy.metric("streamward_sidecar_requests_total{api=\"Fetch\"}")? >= 2.0)
                .then_some(()),
        )
    })
    .unwrap();

    // The operator recompiles without the grant; the proxy must apply it within seconds, to
    // the consumer's open connection.
    let revoked_at = Instant::now();
    apply_config_map(&server, &revoked);
    wait_for("the revoked config", Duration::from_secs(10), || {
        Ok(proxy.log().contains(&revoked.hash).then_some(()))
    })
    .unwrap();
    let took = revoked_at.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
    // A fetch the broker was already holding (long poll) was authorized before the change; the
    // records produced once it has returned (fetch.wait.max.ms is 500 ms) must not reach the
    // consumer.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(produce(&direct, &topic, "after", 5, &[]).delivered, 5);
    let report = consumer.join().unwrap();
    assert_eq!(report.count, 5, "{report:?}\n{}", proxy.log());
    assert!(
        report
            .values
            .as_ref()
            .unwrap()
            .iter()
            .all(|v| v.starts_with("before-")),
        "{report:?}"
    );
    assert!(
        report
            .errors
            .iter()
            .any(|e| e == "TOPIC_AUTHORIZATION_FAILED"),
        "{report:?}"
    );

    // Deleting the ConfigMap leaves the workload without a config: fail closed.
    kubectl(&server, &["delete", "configmap", "-n", NS, &name]);
    wait_for("the proxy to fail closed", Duration::from_secs(10), || {
        Ok((!ready(&proxy)).then_some(()))
    })
    .unwrap();
    let refused = produce(&proxy.bootstrap, &topic, "denied", 1, &[]);
    assert_eq!(refused.delivered, 0, "{refused:?}");
    assert!(proxy.log().contains("does not exist"), "{}", proxy.log());

    // And recreating it serves again, without a restart.
    apply_config_map(&server, &granted);
    wait_for(
        "the proxy to be ready again",
        Duration::from_secs(10),
        || Ok(ready(&proxy).then_some(())),
    )
    .unwrap();
    assert_eq!(
        produce(&proxy.bootstrap, &topic, "again", 3, &[]).delivered,
        3
    );
}

fn write_grant_yaml(topic: &str) -> String {
    let now = jiff::Timestamp::now();
    format!(
        "apiVersion: streamward.io/v1alpha1
kind: AccessGrant
metadata: {{name: incident-write, namespace: {NS}, creationTimestamp: '{now}'}}
spec:
  subjects:
    serviceAccounts: [{SA}]
  resources: [{{resourceType: Topic, name: {topic}}}]
  operations: [Write, Describe]
  startTime: '{}'
  expiryTime: '{}'
  reason: incident 8
",
        now - jiff::SignedDuration::from_secs(60),
        now + jiff::SignedDuration::from_secs(3600),
    )
}

fn readyz(proxy: &Sidecar) -> (u16, String) {
    net::http_get(&proxy.admin, "/readyz").unwrap()
}

fn refused_as_unauthorized(report: &common::ProduceReport) -> bool {
    report.delivered == 0
        && report.errors.iter().chain(&report.client_errors).any(|e| {
            e.contains("TOPIC_AUTHORIZATION_FAILED") || e.contains("Topic authorization failed")
        })
}

/// The limit the proxies of the staleness test get: short, so the test is.
const STALENESS: Duration = Duration::from_secs(6);

#[test]
fn a_config_the_api_server_stops_confirming_goes_stale_and_recovers_by_itself() {
    let server = KubeApiServer::start().unwrap();
    let kafka = KafkaCluster::start(1).unwrap();
    let direct = kafka.bootstrap();
    let granted = unique_name("incident");
    let ruled = unique_name("ledger.stale");
    for topic in [&granted, &ruled] {
        let (created, output) = kafka_tool(
            &kafka,
            "org.apache.kafka.tools.TopicCommand",
            &["--bootstrap-server", &direct, "--create", "--topic", topic],
        );
        assert!(created, "{output}");
    }
    kubectl(&server, &["create", "namespace", NS]);
    let config = compiled(&[
        target_yaml(NS, &direct),
        policy_yaml(),
        write_grant_yaml(&granted),
    ]);
    apply_config_map(&server, &config);

    let kubeconfig = server.kubeconfig().to_str().unwrap().to_string();
    let name = config_map_name(SA);
    let limit = format!("{}s", STALENESS.as_secs());
    let start = |scope: &str| {
        Sidecar::start_with_source(
            Path::new(env!("CARGO_BIN_EXE_streamward-sidecar")),
            NS,
            SA,
            &[
                "--config-map",
                &name,
                "--max-config-staleness",
                &limit,
                "--stale-config",
                scope,
            ],
            &[("KUBECONFIG", &kubeconfig)],
        )
        .unwrap()
    };
    let grants_only = start("grants");
    let everything = start("all");

    // A quiet but healthy watch (the ConfigMap does not change) keeps the config fresh well
    // past the limit: the proxy confirms it with the API server itself.
    let quiet = Instant::now();
    while quiet.elapsed() < STALENESS * 2 {
        for proxy in [&grants_only, &everything] {
            let (status, body) = readyz(proxy);
            assert_eq!(status, 200, "after {:?}: {body}", quiet.elapsed());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let age = grants_only
        .metric("streamward_sidecar_config_age_seconds")
        .unwrap();
    assert!(age < STALENESS.as_secs_f64(), "config age {age}");
    assert_eq!(
        grants_only
            .metric("streamward_sidecar_config_stale ")
            .unwrap(),
        0.0
    );
    assert_eq!(
        produce(&grants_only.bootstrap, &granted, "healthy", 3, &[]).delivered,
        3
    );

    // The API server stops answering (a partition: connections hang). Before the limit the
    // grant still works.
    server.pause().unwrap();
    let paused = Instant::now();
    let before = produce(&grants_only.bootstrap, &granted, "before", 3, &[]);
    assert_eq!(before.delivered, 3, "{before:?}");
    assert_eq!(
        grants_only
            .metric("streamward_sidecar_config_stale ")
            .unwrap(),
        0.0,
        "the produce before the limit took {:?}",
        paused.elapsed()
    );

    // After it, /readyz says stale and the grant no longer counts; the rules still do.
    let stale = |proxy: &Sidecar| -> anyhow::Result<Option<()>> {
        // The metric flips once the stale state is in force.
        let flagged = proxy.metric("streamward_sidecar_config_stale ")? == 1.0;
        Ok((flagged && readyz(proxy).0 == 503).then_some(()))
    };
    wait_for("the grants proxy to go stale", STALENESS * 3, || {
        stale(&grants_only)
    })
    .unwrap();
    let went_stale = paused.elapsed();
    let (_, body) = readyz(&grants_only);
    assert!(body.contains("stale"), "{body}");
    assert!(body.contains("AccessGrants are not honoured"), "{body}");
    let age = grants_only
        .metric("streamward_sidecar_config_age_seconds")
        .unwrap();
    assert!(age > STALENESS.as_secs_f64(), "config age {age}");
    let refused = produce(&grants_only.bootstrap, &granted, "after", 1, &[]);
    assert!(refused_as_unauthorized(&refused), "{refused:?}");
    assert_eq!(
        produce(&grants_only.bootstrap, &ruled, "ruled", 2, &[]).delivered,
        2
    );
    // With --stale-config=all, the rules stop counting too.
    wait_for("the all proxy to go stale", STALENESS * 3, || {
        stale(&everything)
    })
    .unwrap();
    let (_, body) = readyz(&everything);
    assert!(body.contains("every request is refused"), "{body}");
    let refused = produce(&everything.bootstrap, &ruled, "ruled", 1, &[]);
    assert!(refused_as_unauthorized(&refused), "{refused:?}");

    // The API server answers again: both recover by themselves.
    server.resume().unwrap();
    let resumed = Instant::now();
    wait_for(
        "both proxies to be fresh again",
        Duration::from_secs(30),
        || Ok((readyz(&grants_only).0 == 200 && readyz(&everything).0 == 200).then_some(())),
    )
    .unwrap();
    let recovered = resumed.elapsed();
    assert_eq!(
        produce(&grants_only.bootstrap, &granted, "again", 3, &[]).delivered,
        3
    );
    assert_eq!(
        produce(&everything.bootstrap, &ruled, "again", 3, &[]).delivered,
        3
    );
    eprintln!(
        "stale {went_stale:?} after the API server stopped (limit {STALENESS:?}); fresh again \
         {recovered:?} after it resumed"
    );
}

//! `kubectl streamward contain` and `release` against real components: a kube-apiserver with
//! the operator (controller and webhooks), a Kafka broker, and the real proxy of workload
//! `shop/orders-app` watching the ConfigMap the operator writes for it. One Kafka connection
//! stays open through the proxy the whole time:
//!
//! - before: it produces to the topic its policy allows and to the one its AccessGrant opens;
//! - `contain orders-app -n shop --reason ...`: the next Produce on that same connection is
//!   refused with TOPIC_AUTHORIZATION_FAILED within 10 s, and its AccessGrant is revoked; a
//!   second `contain` changes nothing; someone without RBAC is refused in the API server's
//!   words;
//! - `release`: produce to the policy's topic works again on the same connection within 10 s,
//!   but not to the revoked grant's topic.

mod common;

use common::{plugin_as, plugin_dir};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{CreateTopicsRequest, ProduceRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use streamward_e2e::kafka::KafkaCluster;
use streamward_e2e::kafka::wire::Connection;
use streamward_e2e::kube::KubeApiServer;
use streamward_e2e::process::{Process, run};
use streamward_e2e::sidecar::Sidecar;
use streamward_e2e::{cache, net, wait_for, workspace_binaries};

const NS: &str = "shop";
const SA: &str = "orders-app";
const LEASE_NAMESPACE: &str = "streamward-system";
const ORDERS: &str = "orders.created";
const GRANTED: &str = "refunds.manual";
const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
const POLICY: &str = "streamward-contain-sa-orders-app";

fn resources(bootstrap: &str) -> String {
    let now = jiff::Timestamp::now();
    format!(
        "apiVersion: streamward.io/v1alpha1
kind: StreamTarget
metadata: {{name: kafka, namespace: {NS}}}
spec: {{bootstrapServers: ['{bootstrap}']}}
---
apiVersion: streamward.io/v1alpha1
kind: StreamPolicy
metadata: {{name: orders-writes, namespace: {NS}}}
spec:
  subjects: {{serviceAccounts: [{SA}]}}
  rules:
  - name: write-orders
    resources: [{{resourceType: Topic, name: orders., patternType: Prefixed}}]
    operations: [Write, Describe]
    effect: Allow
---
apiVersion: streamward.io/v1alpha1
kind: AccessGrant
metadata: {{name: manual-refunds, namespace: {NS}}}
spec:
  subjects: {{serviceAccounts: [{SA}]}}
  resources: [{{resourceType: Topic, name: {GRANTED}}}]
  operations: [Write]
  startTime: '{start}'
  durationSeconds: 3600
  reason: INC-41 manual refunds
",
        start = now - jiff::SignedDuration::from_secs(60),
    )
}

fn kubectl(server: &KubeApiServer, args: &[&str]) -> String {
    let output = run(&format!("kubectl {args:?}"), server.kubectl().args(args)).unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn get_json(server: &KubeApiServer, args: &[&str]) -> Option<serde_json::Value> {
    let output = server
        .kubectl()
        .arg("get")
        .args(args)
        .args(["-o", "json"])
        .output()
        .unwrap();
    output
        .status
        .success()
        .then(|| serde_json::from_slice(&output.stdout).unwrap())
}

/// The operator with its webhooks, ready and leading.
fn start_operator(server: &KubeApiServer, binary: &Path) -> Process {
    let port = net::free_port().unwrap();
    let metrics = format!("127.0.0.1:{}", net::free_port().unwrap());
    let mut command = Command::new(binary);
    command
        .args(["--metrics-addr", &metrics])
        .args(["--lease-namespace", LEASE_NAMESPACE])
        .args(["--identity", "only"])
        .args(["--webhook-url", &format!("https://127.0.0.1:{port}")])
        .args(["--webhook-listen", &format!("127.0.0.1:{port}")])
        .args(["--operator-namespace", LEASE_NAMESPACE])
        .arg("--audit-disabled")
        .env("KUBECONFIG", server.kubeconfig())
        .env("RUST_LOG", "info");
    let mut operator = Process::spawn(
        "streamward-operator",
        command,
        &server.dir().join("operator.log"),
    )
    .unwrap();
    // Ready once the validating webhook answers (refusing an Approval of nothing) and the
    // operator leads.
    let probe = server.dir().join("probe.yaml");
    std::fs::write(
        &probe,
        format!(
            "apiVersion: streamward.io/v1alpha1
kind: Approval
metadata: {{name: probe, namespace: {NS}}}
spec: {{requestRef: {{kind: ApprovalRequest, name: nothing}}, decision: Approve}}
"
        ),
    )
    .unwrap();
    wait_for(
        "the operator's webhooks and leadership",
        Duration::from_secs(90),
        || {
            operator.check_running()?;
            let output = server
                .kubectl()
                .args(["create", "--dry-run=server", "-o", "json", "-f"])
                .arg(&probe)
                .output()?;
            let webhook = String::from_utf8_lossy(&output.stderr).contains("does not exist");
            let leads = net::http_get(&metrics, "/readyz")
                .is_ok_and(|(status, body)| status == 200 && body.contains("leader"));
            Ok((webhook && leads).then_some(()))
        },
    )
    .unwrap();
    operator
}

fn create_topics(kafka: &KafkaCluster, names: &[&str]) {
    let request = CreateTopicsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(
            names
                .iter()
                .map(|name| {
                    CreatableTopic::default()
                        .with_name(TopicName(StrBytes::from_string((*name).into())))
                        .with_num_partitions(1)
                        .with_replication_factor(1)
                })
                .collect(),
        );
    let response = Connection::connect(&kafka.bootstrap())
        .unwrap()
        .send(&request, 7)
        .unwrap();
    for topic in &response.topics {
        assert_eq!(topic.error_code, 0, "creating {:?}: {topic:?}", topic.name);
    }
}

/// One Produce of one record to partition 0 of `topic` on `connection`: its error code.
fn produce(connection: &mut Connection, topic: &str) -> i16 {
    let record = Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp: jiff::Timestamp::now().as_millisecond(),
        key: None,
        value: Some(Bytes::from_static(b"{\"order\":1}")),
        headers: Default::default(),
    };
    let mut batch = bytes::BytesMut::new();
    RecordBatchEncoder::encode(
        &mut batch,
        [&record],
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .unwrap();
    let request = ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(5_000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(topic.into())))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(batch.freeze())),
                ]),
        ]);
    let response = connection
        .send(&request, 9)
        .expect("the proxy answers on the open connection");
    response.responses[0].partition_responses[0].error_code
}

/// Produces on `connection` until the answer is `code`; how long that took from `since`.
fn produce_until(connection: &mut Connection, topic: &str, code: i16, since: Instant) -> Duration {
    loop {
        let answer = produce(connection, topic);
        if answer == code {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "produce to {topic} still answers {answer}, not {code}, after 10 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn contain_refuses_an_open_producer_revokes_its_grant_and_release_restores_it() {
    let binaries = workspace_binaries(&[
        ("streamward-operator", "streamward-operator"),
        ("streamward-sidecar", "streamward-sidecar"),
    ])
    .unwrap();
    let server = KubeApiServer::start().unwrap();
    let kafka = KafkaCluster::start(1).unwrap();
    create_topics(&kafka, &[ORDERS, GRANTED]);

    let crds = cache::source_root().join("crds").display().to_string();
    kubectl(&server, &["apply", "-f", &crds]);
    kubectl(
        &server,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd",
            "--all",
        ],
    );
    kubectl(&server, &["create", "namespace", LEASE_NAMESPACE]);
    kubectl(&server, &["create", "namespace", NS]);
    kubectl(&server, &["create", "serviceaccount", "-n", NS, SA]);
    let _operator = start_operator(&server, &binaries[0]);
    let manifests = server.dir().join("resources.yaml");
    std::fs::write(&manifests, resources(&kafka.bootstrap())).unwrap();
    kubectl(&server, &["apply", "-f", manifests.to_str().unwrap()]);

    // The proxy of orders-app, on the ConfigMap the operator writes (once it holds the grant).
    let config_map = format!("streamward-config-{SA}");
    wait_for(
        "the operator's config for orders-app, with its grant",
        Duration::from_secs(30),
        || {
            Ok(get_json(&server, &["configmap", "-n", NS, &config_map])
                .filter(|m| m.to_string().contains("manual-refunds")))
        },
    )
    .unwrap();
    let kubeconfig = server.kubeconfig().to_str().unwrap().to_owned();
    let proxy = Sidecar::start_with_source(
        &binaries[1],
        NS,
        SA,
        &["--config-map", &config_map],
        &[("KUBECONFIG", &kubeconfig)],
    )
    .unwrap();

    // One connection, open from here to the end.
    let mut connection = Connection::connect(&proxy.bootstrap).unwrap();
    assert_eq!(produce(&mut connection, ORDERS), 0, "{}", proxy.log());
    assert_eq!(produce(&mut connection, GRANTED), 0, "{}", proxy.log());

    let plugins = plugin_dir(&server);
    let admin = server.kubeconfig();

    // Someone without RBAC on StreamPolicies is refused in the API server's own words.
    let mallory = server.user_kubeconfig("mallory", &[]).unwrap();
    let (code, out, err) = plugin_as(
        &server,
        &plugins,
        &mallory,
        &["contain", SA, "-n", NS, "--reason", "just because"],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!(
            "Error from server (Forbidden): streampolicies.streamward.io \"{POLICY}\" is \
             forbidden: User \"mallory\" cannot get resource \"streampolicies\""
        )),
        "{err}"
    );
    assert_eq!(produce(&mut connection, ORDERS), 0);

    let (code, out, err) = plugin_as(
        &server,
        &plugins,
        admin,
        &[
            "contain",
            SA,
            "-n",
            NS,
            "--reason",
            "INC-42: leaked credentials",
        ],
    );
    let contained = Instant::now();
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!(
            "streampolicy.streamward.io/{POLICY} applied: every request of service account \
             shop/orders-app is denied"
        )),
        "{out}"
    );
    assert!(
        out.contains("accessgrant.streamward.io/manual-refunds revoked"),
        "{out}"
    );
    let refused = produce_until(
        &mut connection,
        ORDERS,
        TOPIC_AUTHORIZATION_FAILED,
        contained,
    );
    println!("contain: the open connection's produce refused after {refused:?}");
    assert_eq!(
        produce(&mut connection, GRANTED),
        TOPIC_AUTHORIZATION_FAILED
    );

    let grant = get_json(&server, &["accessgrant", "-n", NS, "manual-refunds"]).unwrap();
    assert_eq!(grant["spec"]["revoked"], true, "{grant}");
    let policy = get_json(&server, &["streampolicy", "-n", NS, POLICY]).unwrap();
    assert_eq!(
        policy["metadata"]["labels"]["streamward.io/containment"],
        "true"
    );
    let annotations = &policy["metadata"]["annotations"];
    assert_eq!(
        annotations["streamward.io/containment-reason"],
        "INC-42: leaked credentials"
    );
    assert!(
        annotations["streamward.io/contained-by"]
            .as_str()
            .is_some_and(|by| !by.is_empty()),
        "{policy}"
    );
    assert_eq!(policy["spec"]["rules"][0]["effect"], "Deny");
    assert_eq!(policy["spec"]["mode"], "Enforce");

    // Idempotent: again, nothing changes and nothing is left to revoke.
    let (code, out, err) = plugin_as(&server, &plugins, admin, &["contain", "shop/orders-app"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("unchanged"), "{out}");
    assert!(
        out.contains("no AccessGrant of shop for it left to revoke"),
        "{out}"
    );
    let again = get_json(&server, &["streampolicy", "-n", NS, POLICY]).unwrap();
    assert_eq!(
        again["metadata"]["annotations"],
        policy["metadata"]["annotations"]
    );

    let (code, out, err) = plugin_as(&server, &plugins, admin, &["release", SA, "-n", NS]);
    let released = Instant::now();
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("streampolicy.streamward.io/{POLICY} deleted")),
        "{out}"
    );
    assert!(out.contains("stay revoked"), "{out}");
    let restored = produce_until(&mut connection, ORDERS, 0, released);
    println!("release: the open connection's produce accepted again after {restored:?}");
    // What the revoked grant gave stays closed.
    assert_eq!(
        produce(&mut connection, GRANTED),
        TOPIC_AUTHORIZATION_FAILED
    );

    let (code, out, err) = plugin_as(&server, &plugins, admin, &["release", SA, "-n", NS]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("is not contained"), "{out}");
}

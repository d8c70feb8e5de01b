//! Two operator replicas against a real kube-apiserver: only the Lease holder reconciles and
//! writes; when it dies, the standby takes the Lease and carries on.

mod common;

use std::time::Duration;

use common::{LEASE_NAMESPACE, Operator, get_json, kubectl, kubectl_apply, log_count, wait_log};
use streamward_e2e::wait_for;

const NS: &str = "ha";

fn policy(name: &str, sa: &str) -> String {
    format!(
        "apiVersion: streamward.io/v1alpha1
kind: StreamPolicy
metadata: {{name: {name}, namespace: ha}}
spec:
  subjects: {{serviceAccounts: [{sa}]}}
  rules:
  - {{resources: [{{resourceType: Topic, name: t}}], operations: [Read], effect: Allow}}
"
    )
}

fn holder(server: &streamward_e2e::kube::KubeApiServer) -> String {
    get_json(
        server,
        &["lease", "-n", LEASE_NAMESPACE, "streamward-operator"],
    )
    .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
    .unwrap_or_default()
}

#[test]
fn only_the_leader_writes_and_a_standby_takes_over_when_it_dies() {
    let server = common::cluster();
    kubectl(&server, &["create", "namespace", NS]);
    let log_a = server.dir().join("operator-a.log");
    let log_b = server.dir().join("operator-b.log");
    let mut a = Operator::start(&server, &log_a, "replica-a");
    a.wait_leader(Duration::from_secs(30));
    let mut b = Operator::start(&server, &log_b, "replica-b");
    assert!(b.wait_ready().contains("standby"));
    assert_eq!(holder(&server), "replica-a");
    assert_eq!(b.metric("streamward_operator_leader"), 0.0);
    assert_eq!(a.metric("streamward_operator_leader"), 1.0);

    kubectl_apply(&server, &policy("first", "app-one"));
    wait_for(
        "the leader to write the config",
        Duration::from_secs(30),
        || {
            Ok(get_json(
                &server,
                &["configmap", "-n", NS, "streamward-config-app-one"],
            ))
        },
    )
    .unwrap();
    // Both counters move after the ConfigMap is written: wait for them, not for the ConfigMap.
    a.wait_metric("streamward_operator_configmaps_written_total", 1.0);
    a.wait_metric("streamward_operator_reconciles_total", 1.0);
    let (status, text) = streamward_e2e::net::http_get(&a.metrics, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(
        text.contains("streamward_operator_reconcile_duration_seconds_bucket"),
        "{text}"
    );
    assert_eq!(
        log_count(&log_b, "namespace reconciled"),
        0,
        "the standby reconciled"
    );
    assert_eq!(log_count(&log_b, "config applied"), 0, "the standby wrote");

    // The leader dies without giving the Lease up; the standby takes over once it runs out.
    a.process.kill();
    b.wait_leader(Duration::from_secs(30));
    assert_eq!(holder(&server), "replica-b");
    kubectl_apply(&server, &policy("second", "app-two"));
    wait_for("the new leader to write", Duration::from_secs(30), || {
        Ok(get_json(
            &server,
            &["configmap", "-n", NS, "streamward-config-app-two"],
        ))
    })
    .unwrap();
    // The line is logged once the write returns, which may be after the ConfigMap is seen.
    wait_log(&log_b, "config applied");
    let lease = get_json(
        &server,
        &["lease", "-n", LEASE_NAMESPACE, "streamward-operator"],
    )
    .unwrap();
    assert!(
        lease["spec"]["leaseTransitions"].as_i64().unwrap() >= 1,
        "{lease}"
    );

    // A replica stopped with SIGTERM gives the Lease up at once.
    let pid = b.process.pid().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    wait_for("the Lease to be released", Duration::from_secs(10), || {
        Ok(holder(&server).is_empty().then_some(()))
    })
    .unwrap();
}

//! Grant lifecycle and status conditions against a real kube-apiserver: a 20-second grant
//! becomes Active then Expired, with Events, and leaves the compiled config; a broken policy is
//! marked Accepted=False; a restart writes nothing.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{
    Operator, condition, get_json, has_condition, kubectl, kubectl_apply, log_count, wait_json,
};
use streamward_api::config::ProxyConfig;
use streamward_e2e::kube::KubeApiServer;
use streamward_e2e::wait_for;

const NS: &str = "payments";

const RESOURCES: &str = "apiVersion: streamward.io/v1alpha1
kind: StreamTarget
metadata: {name: kafka, namespace: payments}
spec: {bootstrapServers: ['127.0.0.1:9092']}
---
apiVersion: streamward.io/v1alpha1
kind: StreamPolicy
metadata: {name: ledger-writes, namespace: payments}
spec:
  subjects: {serviceAccounts: [ledger]}
  rules:
  - {resources: [{resourceType: Topic, name: ledger.entries}], operations: [Write], effect: Allow}
---
apiVersion: streamward.io/v1alpha1
kind: MaskingRule
metadata: {name: cards, namespace: payments}
spec:
  topics: [{name: ledger.entries}]
  fields: [{path: card.number}]
";

const GRANT: &str = "apiVersion: streamward.io/v1alpha1
kind: AccessGrant
metadata: {name: incident-read, namespace: payments}
spec:
  subjects: {serviceAccounts: [ledger]}
  resources: [{resourceType: Topic, name: ledger.audit}]
  operations: [Read]
  durationSeconds: 20
  reason: incident 7
";

/// A policy whose service account is not `name` or `namespace/name`: the schema lets it
/// through, the compiler refuses it.
const BROKEN: &str = "apiVersion: streamward.io/v1alpha1
kind: StreamPolicy
metadata: {name: broken, namespace: payments}
spec:
  subjects: {serviceAccounts: ['reports/a/b']}
  rules:
  - {resources: [{resourceType: Topic, name: x}], operations: [Read], effect: Allow}
";

fn config(server: &KubeApiServer) -> Option<ProxyConfig> {
    let map = get_json(server, &["configmap", "-n", NS, "streamward-config-ledger"])?;
    serde_json::from_str(map["data"]["config.json"].as_str()?).ok()
}

/// The resourceVersion of every object the operator writes or writes the status of.
fn versions(server: &KubeApiServer) -> BTreeMap<String, String> {
    let kinds =
        "configmaps,roles,rolebindings,streamtargets,streampolicies,accessgrants,maskingrules";
    let list = get_json(server, &[kinds, "-n", NS]).unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                format!(
                    "{}/{}",
                    o["kind"].as_str().unwrap(),
                    o["metadata"]["name"].as_str().unwrap()
                ),
                o["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect()
}

#[test]
fn a_twenty_second_grant_becomes_active_then_expired_with_events_and_leaves_the_config() {
    let server = common::cluster();
    kubectl(&server, &["create", "namespace", NS]);
    kubectl_apply(&server, RESOURCES);
    // The operator runs as its own service account with only the rights the chart gives it.
    let credentials = common::operator_kubeconfig(&server, &[NS]);
    let log = server.dir().join("operator.log");
    let mut operator = Operator::start_as(&log, "first", &credentials);
    operator.wait_leader(Duration::from_secs(30));

    // Every object gets Accepted/Ready with observedGeneration.
    for (kind, name) in [
        ("streampolicy", "ledger-writes"),
        ("maskingrule", "cards"),
        ("streamtarget", "kafka"),
    ] {
        let object = wait_json(
            &server,
            &format!("{kind} {name} to be accepted"),
            &[kind, "-n", NS, name],
            Duration::from_secs(30),
            |o| has_condition(o, "Accepted", "True").then(|| o.clone()),
        );
        let generation = &object["metadata"]["generation"];
        for c in object["status"]["conditions"].as_array().unwrap() {
            assert_eq!(&c["observedGeneration"], generation, "{kind} {c}");
            assert!(c["reason"].as_str().is_some_and(|r| !r.is_empty()), "{c}");
        }
    }
    let policy = get_json(&server, &["streampolicy", "-n", NS, "ledger-writes"]).unwrap();
    assert!(has_condition(&policy, "Ready", "True"), "{policy}");
    assert_eq!(policy["status"]["workloads"], 1);

    // The grant: Active while its 20 seconds last, in the config; then Expired, out of it.
    let created = Instant::now();
    kubectl_apply(&server, GRANT);
    let active = wait_json(
        &server,
        "the grant to be active",
        &["accessgrant", "-n", NS, "incident-read"],
        Duration::from_secs(15),
        |g| has_condition(g, "Active", "True").then(|| g.clone()),
    );
    assert_eq!(
        condition(&active, "Active").unwrap()["observedGeneration"],
        active["metadata"]["generation"]
    );
    assert!(has_condition(&active, "Approved", "True"));
    assert!(has_condition(&active, "Expired", "False"));
    assert!(has_condition(&active, "Revoked", "False"));
    assert!(active["status"]["activatedAt"].is_string(), "{active}");
    let with_grant = wait_for("the grant in the config", Duration::from_secs(10), || {
        Ok(config(&server).filter(|c| c.grants.iter().any(|g| g.name == "incident-read")))
    })
    .unwrap();

    let expired = wait_json(
        &server,
        "the grant to expire",
        &["accessgrant", "-n", NS, "incident-read"],
        Duration::from_secs(40),
        |g| has_condition(g, "Expired", "True").then(|| g.clone()),
    );
    let took = created.elapsed();
    assert!(took >= Duration::from_secs(19), "expired after {took:?}");
    assert!(has_condition(&expired, "Active", "False"));
    assert_eq!(condition(&expired, "Active").unwrap()["reason"], "Expired");
    let without = wait_for(
        "the grant to leave the config",
        Duration::from_secs(10),
        || Ok(config(&server).filter(|c| c.grants.is_empty())),
    )
    .unwrap();
    assert_ne!(without.hash, with_grant.hash);

    // Both transitions are Events on the grant.
    let events = kubectl(
        &server,
        &[
            "get",
            "events",
            "-n",
            NS,
            "--field-selector",
            "involvedObject.name=incident-read",
            "-o",
            "jsonpath={range .items[*]}{.reason}{\"\\n\"}{end}",
        ],
    );
    let reasons: Vec<&str> = events.lines().collect();
    assert!(reasons.contains(&"Activated"), "{events}");
    assert!(reasons.contains(&"Expired"), "{events}");
    assert_eq!(reasons.len(), 2, "one Event per transition: {events}");

    // A policy that does not compile is the one refused, with the compiler's reason.
    kubectl_apply(&server, BROKEN);
    let broken = wait_json(
        &server,
        "the broken policy to be refused",
        &["streampolicy", "-n", NS, "broken"],
        Duration::from_secs(30),
        |p| has_condition(p, "Accepted", "False").then(|| p.clone()),
    );
    let refused = condition(&broken, "Accepted").unwrap();
    assert_eq!(refused["reason"], "Invalid");
    assert!(
        refused["message"].as_str().unwrap().contains("reports/a/b"),
        "{refused}"
    );
    assert!(has_condition(
        &get_json(&server, &["streampolicy", "-n", NS, "ledger-writes"]).unwrap(),
        "Accepted",
        "True"
    ));
    let after_broken = wait_for("the operator to settle", Duration::from_secs(10), || {
        let before = versions(&server);
        std::thread::sleep(Duration::from_secs(2));
        Ok((versions(&server) == before).then_some(before))
    })
    .unwrap();

    // A restart with nothing changed writes nothing: no ConfigMap, Role, RoleBinding or status.
    operator.process.kill();
    let before = log_count(&log, "namespace reconciled");
    let mut operator = Operator::start_as(&log, "second", &credentials);
    wait_for(
        "the restarted operator to reconcile",
        Duration::from_secs(60),
        || {
            operator.process.check_running()?;
            Ok((log_count(&log, "namespace reconciled") > before).then_some(()))
        },
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        versions(&server),
        after_broken,
        "the restart rewrote something:\n{}",
        operator.process.log_tail(40)
    );
    assert_eq!(
        operator.metric("streamward_operator_configmaps_written_total"),
        0.0
    );
    assert_eq!(
        operator.metric("streamward_operator_statuses_written_total"),
        0.0
    );
    // Counted when the reconcile returns, after the line waited for above.
    operator.wait_metric("streamward_operator_reconciles_total", 1.0);
}

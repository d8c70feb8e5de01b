//! Approvals that cannot be forged, against a real kube-apiserver with the operator's admission
//! webhooks, the operator running under exactly the chart's RBAC, and people who authenticate
//! with their own client certificates:
//!
//! - who needs approval is the namespace's policy, not the requester;
//! - the approver is whoever the API server says created the Approval, whatever they wrote;
//! - the requester cannot approve, a non-approver cannot approve, two approvers means two people;
//! - an Approval binds to the grant as it is: widen the grant, or delete and re-create it under
//!   the same name, and the old Approvals count for nothing;
//! - who asked cannot be rewritten, a revocation cannot be undone, an Approval cannot be edited;
//! - a held request's requester cannot approve it, a Deny carries its comment, an expired
//!   request cannot be approved.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{
    LEASE_NAMESPACE, Operator, condition, get_json, has_condition, kubectl, kubectl_apply,
    wait_json,
};
use streamward_api::audit::{Approval, ApprovalStep, AuditEvent, EventData};
use streamward_api::config::ProxyConfig;
use streamward_e2e::collector::Collector;
use streamward_e2e::kafka::KafkaCluster;
use streamward_e2e::kube::KubeApiServer;
use streamward_e2e::sidecar::Sidecar;
use streamward_e2e::{cache, net, wait_for, workspace_binary};

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
  - name: deletes-need-approval
    resources: [{resourceType: Topic, name: ledger.entries}]
    operations: [Delete]
    effect: RequireApproval
  approval:
    approvers: {users: [alice, carol], groups: [kafka-admins]}
    requiredApprovals: 2
    grantsRequireApproval: true
";

/// A grant that does not ask for approval: the namespace's policy requires it anyway.
const GRANT: &str = "apiVersion: streamward.io/v1alpha1
kind: AccessGrant
metadata: {name: break-glass, namespace: payments}
spec:
  subjects: {serviceAccounts: [ledger]}
  resources: [{resourceType: Topic, name: ledger.audit}]
  operations: [Read]
  durationSeconds: 3600
  reason: break glass
";

/// RBAC as a cluster admin would set it up: everyone here may create Approvals and grants;
/// the webhook decides whose Approval counts.
const PEOPLE: &str = "apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: streamward-people, namespace: payments}
rules:
- apiGroups: [streamward.io]
  resources: [approvals, accessgrants, approvalrequests, streampolicies]
  verbs: [get, list, watch, create, patch, update, delete]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: streamward-people, namespace: payments}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: streamward-people}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: bob}
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: carol}
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: mallory}
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: dave}
- {kind: ServiceAccount, name: ledger, namespace: payments}
";

fn approval(name: &str, kind: &str, target: &str, decision: &str, extra: &str) -> String {
    format!(
        "apiVersion: streamward.io/v1alpha1
kind: Approval
metadata: {{name: {name}, namespace: payments}}
spec:
  requestRef: {{kind: {kind}, name: {target}}}
  decision: {decision}
{extra}"
    )
}

fn request(name: &str, expiry: &str) -> String {
    format!(
        "apiVersion: streamward.io/v1alpha1
kind: ApprovalRequest
metadata: {{name: {name}, namespace: payments}}
spec:
  requester: {{serviceAccount: ledger}}
  apiKey: DeleteTopics
  operation: Delete
  resources: [{{resourceType: Topic, name: ledger.entries}}]
  policy: ledger-writes
  rule: deletes-need-approval
  requestDigest: '{digest}'
  expiryTime: '{expiry}'
",
        digest = "0".repeat(64)
    )
}

/// `kubectl` as the person of `kubeconfig`: (succeeded, stdout + stderr).
fn kubectl_as(
    server: &KubeApiServer,
    kubeconfig: &Path,
    args: &[&str],
    yaml: Option<&str>,
) -> (bool, String) {
    let mut command = server.kubectl();
    command.arg("--kubeconfig").arg(kubeconfig).args(args);
    let file;
    if let Some(yaml) = yaml {
        file = server
            .dir()
            .join(format!("{}.yaml", streamward_e2e::unique_name("as")));
        std::fs::write(&file, yaml).unwrap();
        command.arg("-f").arg(&file);
    }
    let output = command.output().unwrap();
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

struct People {
    alice: PathBuf,
    bob: PathBuf,
    carol: PathBuf,
    mallory: PathBuf,
    dave: PathBuf,
    ledger: PathBuf,
}

fn create(server: &KubeApiServer, who: &Path, yaml: &str) -> Result<String, String> {
    match kubectl_as(server, who, &["create"], Some(yaml)) {
        (true, out) => Ok(out),
        (false, out) => Err(out),
    }
}

fn refused(server: &KubeApiServer, who: &Path, yaml: &str, because: &str) {
    let error = create(server, who, yaml).expect_err("the webhook let it through");
    assert!(error.contains("denied the request"), "{error}");
    assert!(error.contains(because), "expected {because:?}: {error}");
}

fn config(server: &KubeApiServer) -> Option<ProxyConfig> {
    let map = get_json(server, &["configmap", "-n", NS, "streamward-config-ledger"])?;
    serde_json::from_str(map["data"]["config.json"].as_str()?).ok()
}

fn grant_condition(
    server: &KubeApiServer,
    what: &str,
    type_: &str,
    status: &str,
    reason: &str,
) -> serde_json::Value {
    wait_json(
        server,
        what,
        &["accessgrant", "-n", NS, "break-glass"],
        Duration::from_secs(30),
        |g| {
            (has_condition(g, type_, status)
                && condition(g, type_)
                    .is_some_and(|c| c["message"].as_str().unwrap_or("").contains(reason)))
            .then(|| g.clone())
        },
    )
}

/// The cluster, the operator with its webhooks under the chart's RBAC, and the people.
fn setup() -> (KubeApiServer, Operator, People) {
    let server = common::cluster();
    kubectl(&server, &["create", "namespace", NS]);
    kubectl(&server, &["create", "serviceaccount", "-n", NS, "ledger"]);
    kubectl_apply(&server, PEOPLE);
    let credentials = common::operator_kubeconfig(&server, &[NS]);
    let port = net::free_port().unwrap();
    let log = server.dir().join("operator.log");
    let webhook_url = format!("https://127.0.0.1:{port}");
    let listen = format!("127.0.0.1:{port}");
    let mut operator = Operator::start_with(
        &log,
        "only",
        &credentials,
        &[
            "--webhook-url",
            &webhook_url,
            "--webhook-listen",
            &listen,
            "--operator-namespace",
            LEASE_NAMESPACE,
            "--audit-disabled",
        ],
    );
    operator.wait_leader(Duration::from_secs(30));
    // Ready once a new grant comes back stamped (the mutating webhook answers).
    let probe = GRANT.replace("break-glass", "probe");
    wait_for("the stamping webhook", Duration::from_secs(90), || {
        operator.process.check_running()?;
        let (ok, out) = kubectl_as(
            &server,
            server.kubeconfig(),
            &["create", "--dry-run=server", "-o", "json"],
            Some(&probe),
        );
        Ok((ok && out.contains("streamward.io/requested-by")).then_some(()))
    })
    .unwrap();
    kubectl_apply(&server, RESOURCES);
    let user = |name: &str, groups: &[&str]| server.user_kubeconfig(name, groups).unwrap();
    let people = People {
        alice: user("alice", &["finance"]),
        bob: user("bob", &["developers"]),
        carol: user("carol", &[]),
        mallory: user("mallory", &["developers"]),
        dave: user("dave", &["kafka-admins"]),
        ledger: common::service_account_kubeconfig(&server, NS, "ledger"),
    };
    (server, operator, people)
}

#[test]
fn grants_need_two_real_approvers_and_approvals_cannot_be_forged_or_reused() {
    let (server, _operator, people) = setup();

    // Bob asks for a grant without asking for approval: the namespace requires it.
    create(&server, &people.bob, GRANT).unwrap();
    let grant = get_json(&server, &["accessgrant", "-n", NS, "break-glass"]).unwrap();
    assert_eq!(
        grant["metadata"]["annotations"]["streamward.io/requested-by"], "bob",
        "who asked is stamped from the API server's record"
    );
    grant_condition(
        &server,
        "the grant to wait for 2 approvals",
        "Approved",
        "False",
        "0 of 2",
    );
    assert!(config(&server).is_some_and(|c| c.grants.is_empty()));

    // The requester, a non-approver, and the grant's own service account: refused.
    let yes =
        |name: &str, extra: &str| approval(name, "AccessGrant", "break-glass", "Approve", extra);
    refused(
        &server,
        &people.bob,
        &yes("by-bob", ""),
        "asked for the grant",
    );
    refused(
        &server,
        &people.mallory,
        &yes("by-mallory", ""),
        "not an approver",
    );
    refused(
        &server,
        &people.ledger,
        &yes("by-ledger", ""),
        "the grant is for them",
    );

    // Alice writes carol's name as the approver: the API server says it is alice.
    create(
        &server,
        &people.alice,
        &yes("by-alice", "  approver: {user: carol}\n"),
    )
    .unwrap();
    let stamped = get_json(&server, &["approval", "-n", NS, "by-alice"]).unwrap();
    assert_eq!(stamped["spec"]["approver"]["user"], "alice", "{stamped}");
    assert_eq!(
        stamped["spec"]["approver"]["groups"][0], "finance",
        "{stamped}"
    );
    assert_eq!(
        stamped["spec"]["requestRef"]["uid"],
        grant["metadata"]["uid"]
    );
    // Alice again is still one approver.
    create(&server, &people.alice, &yes("by-alice-again", "")).unwrap();
    grant_condition(
        &server,
        "one of two approvals",
        "Approved",
        "False",
        "1 of 2",
    );

    // Dave is an approver through his group: two distinct people, the grant counts.
    create(&server, &people.dave, &yes("by-dave", "")).unwrap();
    grant_condition(&server, "the grant approved", "Active", "True", "");
    wait_for("the grant in the config", Duration::from_secs(10), || {
        Ok(config(&server).filter(|c| c.grants.iter().any(|g| g.name == "break-glass")))
    })
    .unwrap();

    // An Approval is a decision, not something to edit later.
    let (ok, out) = kubectl_as(
        &server,
        &people.alice,
        &[
            "patch",
            "approval",
            "-n",
            NS,
            "by-alice",
            "--type=merge",
            "-p",
            r#"{"spec":{"decision":"Deny"}}"#,
        ],
        None,
    );
    assert!(!ok, "{out}");

    // Who asked cannot be rewritten.
    let (ok, out) = kubectl_as(
        &server,
        &people.bob,
        &[
            "annotate",
            "--overwrite",
            "accessgrant",
            "-n",
            NS,
            "break-glass",
            "streamward.io/requested-by=carol",
        ],
        None,
    );
    assert!(!ok && out.contains("cannot be changed"), "{out}");

    // Bob widens the approved grant: it drops back to unapproved and leaves the config.
    let (ok, out) = kubectl_as(
        &server,
        &people.bob,
        &[
            "patch",
            "accessgrant",
            "-n",
            NS,
            "break-glass",
            "--type=merge",
            "-p",
            r#"{"spec":{"operations":["Read","Write"]}}"#,
        ],
        None,
    );
    assert!(ok, "{out}");
    grant_condition(
        &server,
        "the widened grant unapproved",
        "Approved",
        "False",
        "0 of 2",
    );
    wait_for(
        "the widened grant to leave the config",
        Duration::from_secs(10),
        || Ok(config(&server).filter(|c| c.grants.is_empty())),
    )
    .unwrap();

    // Deleted and re-created under the same name: the old Approvals count for nothing.
    kubectl(&server, &["delete", "accessgrant", "-n", NS, "break-glass"]);
    create(&server, &people.bob, GRANT).unwrap();
    grant_condition(
        &server,
        "the re-created grant unapproved",
        "Approved",
        "False",
        "0 of 2",
    );

    // Revoked, it stays revoked, however the patch is written.
    kubectl(
        &server,
        &[
            "patch",
            "accessgrant",
            "-n",
            NS,
            "break-glass",
            "--type=merge",
            "-p",
            r#"{"spec":{"revoked":true}}"#,
        ],
    );
    for undo in [
        r#"{"spec":{"revoked":null}}"#,
        r#"{"spec":{"revoked":false}}"#,
    ] {
        let (ok, out) = kubectl_as(
            &server,
            server.kubeconfig(),
            &[
                "patch",
                "accessgrant",
                "-n",
                NS,
                "break-glass",
                "--type=merge",
                "-p",
                undo,
            ],
            None,
        );
        assert!(!ok, "{undo}: {out}");
        assert!(
            out.contains("a revoked grant stays revoked"),
            "{undo}: {out}"
        );
    }
}

#[test]
fn a_held_request_is_decided_by_others_before_it_expires() {
    let (server, _operator, people) = setup();
    // Only the workload's own service account (its proxy) may ask in its name.
    for who in [&people.mallory, &people.alice, server.kubeconfig()] {
        refused(
            &server,
            who,
            &request("forged", "2099-01-01T00:00:00Z"),
            "created by the Streamward proxy of the workload",
        );
    }
    create(
        &server,
        &people.ledger,
        &request("delete-ledger", "2099-01-01T00:00:00Z"),
    )
    .unwrap();
    let on = |name: &str, decision: &str, extra: &str| {
        approval(name, "ApprovalRequest", "delete-ledger", decision, extra)
    };

    // The workload that asked cannot approve its own request.
    refused(
        &server,
        &people.ledger,
        &on("by-ledger", "Approve", ""),
        "made the request",
    );
    refused(
        &server,
        &people.mallory,
        &on("by-mallory", "Approve", ""),
        "not an approver",
    );

    // The policy asks for two approvers; one approves, the other denies with a comment.
    create(&server, &people.alice, &on("by-alice", "Approve", "")).unwrap();
    create(
        &server,
        &people.carol,
        &on("by-carol", "Deny", "  comment: not during the freeze\n"),
    )
    .unwrap();
    let denied = wait_json(
        &server,
        "the request denied",
        &["approvalrequest", "-n", NS, "delete-ledger"],
        Duration::from_secs(30),
        |r| has_condition(r, "Denied", "True").then(|| r.clone()),
    );
    assert!(has_condition(&denied, "Approved", "False"), "{denied}");
    let decisions = denied["status"]["decisions"].as_array().unwrap();
    assert!(
        decisions
            .iter()
            .any(|d| d["approver"] == "carol" && d["comment"] == "not during the freeze"),
        "{denied}"
    );

    // An expired request cannot be approved any more.
    create(
        &server,
        &people.ledger,
        &request("too-late", "2020-01-01T00:00:00Z"),
    )
    .unwrap();
    refused(
        &server,
        &people.alice,
        &approval("late", "ApprovalRequest", "too-late", "Approve", ""),
        "expired",
    );
    // Nor can something that does not exist.
    refused(
        &server,
        &people.alice,
        &approval("ghost", "ApprovalRequest", "no-such-request", "Approve", ""),
        "does not exist",
    );
}

/// The workload whose deletes wait for people: its own policy next to the ledger's. Deletes
/// under `ledger.` need two approvers (alice, carol or a kafka-admin) within a 15 s hold, once
/// each; deletes under `scratch.` are held 3 s and may be approved for 10 s only.
const JANITOR: &str = "apiVersion: streamward.io/v1alpha1
kind: StreamPolicy
metadata: {name: janitor, namespace: payments}
spec:
  subjects: {serviceAccounts: [janitor]}
  rules:
  - name: use
    resources: [{resourceType: Topic, name: ledger., patternType: Prefixed}]
    operations: [Read, Write, Describe]
    effect: Allow
  - name: deletes-need-two
    resources: [{resourceType: Topic, name: ledger., patternType: Prefixed}]
    operations: [Delete]
    effect: RequireApproval
    holdSeconds: 15
  approval:
    approvers: {users: [alice, carol], groups: [kafka-admins]}
    requiredApprovals: 2
---
apiVersion: streamward.io/v1alpha1
kind: StreamPolicy
metadata: {name: janitor-scratch, namespace: payments}
spec:
  subjects: {serviceAccounts: [janitor]}
  rules:
  - name: use
    resources: [{resourceType: Topic, name: scratch., patternType: Prefixed}]
    operations: [Describe]
    effect: Allow
  - name: quick-deletes
    resources: [{resourceType: Topic, name: scratch., patternType: Prefixed}]
    operations: [Delete]
    effect: RequireApproval
    holdSeconds: 3
  approval:
    approvers: {users: [alice]}
    expireAfterSeconds: 10
";

/// Kafka's own topic tool against `bootstrap`: (succeeded, its output).
fn topics_tool(kafka: &KafkaCluster, bootstrap: &str, args: &[&str]) -> (bool, String) {
    let output = kafka
        .dist()
        .tool("org.apache.kafka.tools.TopicCommand")
        .args(["--bootstrap-server", bootstrap])
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// `kafka-topics --delete --topic <topic>` through the proxy, in the background.
fn delete_in_background(
    kafka: &KafkaCluster,
    proxy: &str,
    topic: &str,
) -> std::thread::JoinHandle<(bool, String, Duration)> {
    let mut command = kafka.dist().tool("org.apache.kafka.tools.TopicCommand");
    command.args(["--bootstrap-server", proxy, "--delete", "--topic", topic]);
    std::thread::spawn(move || {
        let started = Instant::now();
        let output = command.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), text, started.elapsed())
    })
}

/// Whether `topic` still exists, asked of the broker directly.
fn exists(kafka: &KafkaCluster, topic: &str) -> bool {
    let (ok, out) = topics_tool(kafka, &kafka.bootstrap(), &["--list"]);
    assert!(ok, "{out}");
    out.lines().any(|line| line.trim() == topic)
}

/// The ApprovalRequest the janitor's proxy made for deleting `topic`, once it exists.
fn approval_request_for(server: &KubeApiServer, topic: &str) -> serde_json::Value {
    wait_json(
        server,
        &format!("the ApprovalRequest for deleting {topic}"),
        &["approvalrequests", "-n", NS],
        Duration::from_secs(30),
        |list| {
            list["items"]
                .as_array()?
                .iter()
                .find(|r| r["spec"]["resources"][0]["name"] == topic)
                .cloned()
        },
    )
}

/// The audit events of the janitor's proxy that record an approval step, in order.
fn approval_events(collector_binary: &Path, collector: &Collector) -> Vec<(String, Approval)> {
    let out = std::process::Command::new(collector_binary)
        .arg("query")
        .arg("--data")
        .arg(collector.data())
        .args(["--namespace", NS, "--format", "ndjson"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|line| {
            let event: AuditEvent = serde_json::from_str(line).unwrap();
            let EventData::Request(record) = event.data else {
                return None;
            };
            let topic = record.resources.first()?.name.clone();
            record.approval.map(|approval| (topic, approval))
        })
        .collect()
}

#[test]
fn a_topic_delete_through_the_proxy_waits_for_two_people_approving_with_kubectl() {
    let (server, _operator, people) = setup();
    let kafka = KafkaCluster::start(1).unwrap();
    for topic in [
        "ledger.old-1",
        "ledger.old-2",
        "ledger.old-3",
        "scratch.tmp",
    ] {
        let (ok, out) = topics_tool(
            &kafka,
            &kafka.bootstrap(),
            &["--create", "--topic", topic, "--partitions", "1"],
        );
        assert!(ok, "{out}");
    }
    kubectl(&server, &["create", "serviceaccount", "-n", NS, "janitor"]);
    // A careless admin lets the workload decide too: the webhook still refuses it.
    kubectl(
        &server,
        &[
            "create",
            "rolebinding",
            "-n",
            NS,
            "janitor-decides",
            "--role=streamward-people",
            "--serviceaccount=payments:janitor",
        ],
    );
    kubectl_apply(
        &server,
        &format!(
            "apiVersion: streamward.io/v1alpha1
kind: StreamTarget
metadata: {{name: kafka, namespace: payments}}
spec: {{bootstrapServers: ['{}']}}
---
{JANITOR}",
            kafka.bootstrap()
        ),
    );
    wait_json(
        &server,
        "the janitor's config with its right to ask",
        &["role", "-n", NS, "streamward-config-janitor"],
        Duration::from_secs(30),
        |role| {
            role["rules"]
                .as_array()?
                .iter()
                .any(|r| r["resources"][0] == "approvalrequests")
                .then_some(())
        },
    );

    // The proxy as injected: its ConfigMap through the API server with the janitor's own
    // token (so only the rights the operator gave it), auditing to a collector.
    let dir = cache::run_dir("held").unwrap();
    let collector_binary =
        workspace_binary("streamward-collector", "streamward-collector").unwrap();
    let collector = Collector::start(
        &collector_binary,
        dir.path(),
        "janitor-audit-token-1234",
        "payments/janitor",
    )
    .unwrap();
    std::fs::write(dir.path().join("token"), "janitor-audit-token-1234").unwrap();
    let janitor = common::service_account_kubeconfig(&server, NS, "janitor");
    let audit_url = format!("http://{}", collector.addr());
    let spool = dir.path().join("spool");
    let proxy = Sidecar::start_with_source(
        &workspace_binary("streamward-sidecar", "streamward-sidecar").unwrap(),
        NS,
        "janitor",
        &[
            "--config-map",
            "streamward-config-janitor",
            "--audit-url",
            &audit_url,
            "--audit-token-file",
            dir.path().join("token").to_str().unwrap(),
            "--audit-spool",
            spool.to_str().unwrap(),
        ],
        &[("KUBECONFIG", janitor.to_str().unwrap())],
    )
    .unwrap();
    let on = |request: &str, decision: &str, extra: &str| {
        approval(
            &streamward_e2e::unique_name("decision"),
            "ApprovalRequest",
            request,
            decision,
            extra,
        )
    };

    // 1. Approved while held: the command itself deletes the topic.
    let deleting = delete_in_background(&kafka, &proxy.bootstrap, "ledger.old-1");
    let request = approval_request_for(&server, "ledger.old-1");
    let name = request["metadata"]["name"].as_str().unwrap().to_owned();
    assert_eq!(request["spec"]["apiKey"], "DeleteTopics");
    assert_eq!(request["spec"]["operation"], "Delete");
    assert_eq!(request["spec"]["requester"]["serviceAccount"], "janitor");
    assert_eq!(request["spec"]["requiredApprovals"], 2);
    // Refused: the requester itself, a non-approver, a non-approver writing someone else's
    // name into the approver field.
    refused(
        &server,
        &janitor,
        &on(&name, "Approve", ""),
        "made the request",
    );
    refused(
        &server,
        &people.mallory,
        &on(&name, "Approve", ""),
        "not an approver",
    );
    refused(
        &server,
        &people.bob,
        &on(&name, "Approve", "  approver: {user: alice}\n"),
        "not an approver",
    );
    create(&server, &people.alice, &on(&name, "Approve", "")).unwrap();
    // One approval of two: still held. A second from alice does not count twice.
    create(&server, &people.alice, &on(&name, "Approve", "")).unwrap();
    assert!(exists(&kafka, "ledger.old-1"), "deleted with one approver");
    create(&server, &people.dave, &on(&name, "Approve", "")).unwrap();
    let (ok, out, took) = deleting.join().unwrap();
    assert!(ok, "the approved delete failed: {out}\n{}", proxy.log());
    assert!(
        took < Duration::from_secs(15),
        "answered after the hold: {took:?}"
    );
    assert!(!exists(&kafka, "ledger.old-1"));

    // 2. Not approved within the hold: refused naming the ApprovalRequest and the command;
    //    approved afterwards, the identical retry goes through.
    let (ok, out, took) = delete_in_background(&kafka, &proxy.bootstrap, "ledger.old-2")
        .join()
        .unwrap();
    assert!(!ok, "deleted without approval: {out}");
    assert!(took >= Duration::from_secs(15), "not held: {took:?} {out}");
    let request = approval_request_for(&server, "ledger.old-2");
    let name = request["metadata"]["name"].as_str().unwrap().to_owned();
    assert!(out.contains("PolicyViolationException"), "{out}");
    assert!(
        out.contains(&format!("ApprovalRequest payments/{name}")),
        "{out}"
    );
    assert!(exists(&kafka, "ledger.old-2"));
    // Carol runs the command the message gives, as it is.
    let command = out
        .lines()
        .find_map(|line| line.split_once("an approver runs: ").map(|(_, c)| c.trim()))
        .unwrap_or_else(|| panic!("no command in {out}"));
    assert!(
        command.ends_with("kubectl -n payments create -f -"),
        "{command}"
    );
    let kubectl_dir = Path::new(server.kubectl().get_program())
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}",
        kubectl_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let ran = std::process::Command::new("sh")
        .args(["-c", command])
        .env("PATH", path)
        .env("KUBECONFIG", &people.carol)
        .output()
        .unwrap();
    assert!(
        ran.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&ran.stderr)
    );
    create(&server, &people.dave, &on(&name, "Approve", "")).unwrap();
    wait_json(
        &server,
        "the second request approved",
        &["approvalrequest", "-n", NS, &name],
        Duration::from_secs(30),
        |r| has_condition(r, "Approved", "True").then_some(()),
    );

    // 3. That approval releases only its request: deleting another topic is held anew, and
    //    a denial answers it at once with the approver's comment.
    let other = delete_in_background(&kafka, &proxy.bootstrap, "ledger.old-3");
    let other_request = approval_request_for(&server, "ledger.old-3");
    let other_name = other_request["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(other_name, name);
    create(
        &server,
        &people.carol,
        &on(
            &other_name,
            "Deny",
            "  comment: ledger.old-3 is still replayed by finance\n",
        ),
    )
    .unwrap();
    let (ok, out, took) = other.join().unwrap();
    assert!(!ok, "a denied delete went through: {out}");
    assert!(
        took < Duration::from_secs(15),
        "not answered at the denial: {took:?}"
    );
    assert!(
        out.contains("ledger.old-3 is still replayed by finance"),
        "{out}"
    );
    assert!(exists(&kafka, "ledger.old-3"));

    // The identical retry of the approved request is released, once.
    let (ok, out) = topics_tool(
        &kafka,
        &proxy.bootstrap,
        &["--delete", "--topic", "ledger.old-2"],
    );
    assert!(ok, "the approved retry failed: {out}\n{}", proxy.log());
    assert!(!exists(&kafka, "ledger.old-2"));
    let used = get_json(&server, &["approvalrequest", "-n", NS, &name]).unwrap();
    assert!(
        used["metadata"]["annotations"]["streamward.io/released"].is_string(),
        "{used}"
    );
    // The workload (same service account as its proxy) cannot make it release again.
    let (ok, out) = kubectl_as(
        &server,
        &janitor,
        &[
            "annotate",
            "approvalrequest",
            "-n",
            NS,
            &name,
            "streamward.io/released-",
        ],
        None,
    );
    assert!(!ok && out.contains("cannot be removed"), "{out}");

    // 4. Expiry: a request nobody approved in time cannot be approved, and its retry is not
    //    released by it.
    let (ok, out, _) = delete_in_background(&kafka, &proxy.bootstrap, "scratch.tmp")
        .join()
        .unwrap();
    assert!(!ok && out.contains("was not approved within 3s"), "{out}");
    let scratch = approval_request_for(&server, "scratch.tmp");
    let scratch_name = scratch["metadata"]["name"].as_str().unwrap().to_owned();
    wait_json(
        &server,
        "the scratch request expired",
        &["approvalrequest", "-n", NS, &scratch_name],
        Duration::from_secs(40),
        |r| has_condition(r, "Expired", "True").then_some(()),
    );
    refused(
        &server,
        &people.alice,
        &on(&scratch_name, "Approve", ""),
        "expired",
    );
    let (ok, out, _) = delete_in_background(&kafka, &proxy.bootstrap, "scratch.tmp")
        .join()
        .unwrap();
    assert!(!ok, "{out}");
    assert!(
        !out.contains(&scratch_name),
        "the expired request was reused: {out}"
    );
    assert!(exists(&kafka, "scratch.tmp"));

    // Every step is in the collector, and the chain verifies.
    let wanted = [
        ("ledger.old-1", ApprovalStep::Requested),
        ("ledger.old-1", ApprovalStep::Approved),
        ("ledger.old-2", ApprovalStep::Requested),
        ("ledger.old-2", ApprovalStep::Pending),
        ("ledger.old-3", ApprovalStep::Requested),
        ("ledger.old-3", ApprovalStep::Denied),
        ("ledger.old-2", ApprovalStep::Requested),
        ("ledger.old-2", ApprovalStep::Released),
        ("scratch.tmp", ApprovalStep::Requested),
        ("scratch.tmp", ApprovalStep::Pending),
    ];
    let steps = wait_for(
        "every approval step audited",
        Duration::from_secs(30),
        || {
            let steps = approval_events(&collector_binary, &collector);
            let seen: Vec<(&str, ApprovalStep)> =
                steps.iter().map(|(t, a)| (t.as_str(), a.step)).collect();
            let all = wanted.iter().all(|w| seen.contains(w));
            Ok(all.then_some(steps))
        },
    )
    .unwrap();
    let approved = steps
        .iter()
        .find(|(t, a)| t == "ledger.old-1" && a.step == ApprovalStep::Approved)
        .unwrap();
    assert_eq!(approved.1.approvers, ["alice", "dave"]);
    let denied = steps
        .iter()
        .find(|(_, a)| a.step == ApprovalStep::Denied)
        .unwrap();
    assert_eq!(denied.1.approvers, ["carol"]);
    assert_eq!(
        denied.1.comment.as_deref(),
        Some("ledger.old-3 is still replayed by finance")
    );
    let verify = std::process::Command::new(&collector_binary)
        .arg("verify")
        .arg("--data")
        .arg(collector.data())
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}

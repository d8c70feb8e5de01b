//! `kubectl streamward approve`, `deny` and `grant` against a real kube-apiserver with the
//! operator's admission webhooks, run through the real `kubectl` with the plugin's folder first
//! on PATH (so kubectl finds the plugin the way a user's does), as people who authenticate with
//! their own client certificates:
//!
//! - alice approves a held request: the Approval exists, stamped with alice as the approver,
//!   and the request becomes Approved;
//! - carol denies another with a comment: Denied, with her comment on the request;
//! - mallory, without RBAC on Approvals, is refused with the API server's own message; bob,
//!   with RBAC but not an approver, with the webhook's;
//! - bob asks for a grant; the namespace requires approval; alice approves it and it is Active.

mod common;

use common::{plugin_as, plugin_dir};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use streamward_e2e::kube::KubeApiServer;
use streamward_e2e::process::{Process, run};
use streamward_e2e::{net, wait_for, workspace_binary};

const NS: &str = "payments";
const LEASE_NAMESPACE: &str = "streamward-system";

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
  - name: deletes-need-approval
    resources: [{resourceType: Topic, name: ledger.entries}]
    operations: [Delete]
    effect: RequireApproval
  approval:
    approvers: {users: [alice, carol]}
    grantsRequireApproval: true
";

/// Who may do what: alice, bob and carol may create Approvals and AccessGrants (the webhook
/// decides whose Approval counts); mallory has no binding at all; the ledger workload may
/// create its ApprovalRequests, as its proxy does.
const RBAC: &str = "apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: streamward-people, namespace: payments}
rules:
- apiGroups: [streamward.io]
  resources: [approvals, accessgrants, approvalrequests]
  verbs: [get, list, watch, create]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: streamward-people, namespace: payments}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: streamward-people}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: bob}
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: carol}
- {kind: ServiceAccount, name: ledger, namespace: payments}
";

fn held_request(name: &str) -> String {
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
  expiryTime: '2099-01-01T00:00:00Z'
",
        digest = "0".repeat(64)
    )
}

fn kubectl(server: &KubeApiServer, args: &[&str]) -> String {
    let output = run(&format!("kubectl {args:?}"), server.kubectl().args(args)).unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Creates `yaml` as the identity of `kubeconfig`.
fn create_as(server: &KubeApiServer, kubeconfig: &Path, yaml: &str) {
    let file = server
        .dir()
        .join(format!("{}.yaml", streamward_e2e::unique_name("manifest")));
    std::fs::write(&file, yaml).unwrap();
    let mut command = Command::new(server.binary("kubectl"));
    command
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["create", "-f"])
        .arg(&file);
    run("kubectl create", &mut command).unwrap();
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

fn has_condition(object: &serde_json::Value, type_: &str, status: &str) -> bool {
    object["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == type_ && c["status"] == status)
    })
}

fn wait_condition(
    server: &KubeApiServer,
    kind: &str,
    name: &str,
    type_: &str,
) -> serde_json::Value {
    wait_for(
        &format!("{kind} {name} to be {type_}"),
        Duration::from_secs(30),
        || {
            Ok(get_json(server, &[kind, "-n", NS, name])
                .filter(|o| has_condition(o, type_, "True")))
        },
    )
    .unwrap()
}

/// The API server, the CRDs, the operator (admin credentials) with its webhooks, the RBAC.
fn setup() -> (KubeApiServer, Process) {
    let server = KubeApiServer::start().unwrap();
    server.install_crds().unwrap();
    kubectl(&server, &["create", "namespace", LEASE_NAMESPACE]);
    kubectl(&server, &["create", "namespace", NS]);
    kubectl(&server, &["create", "serviceaccount", "-n", NS, "ledger"]);
    let rbac = server.dir().join("rbac.yaml");
    std::fs::write(&rbac, RBAC).unwrap();
    kubectl(&server, &["apply", "-f", rbac.to_str().unwrap()]);

    let operator = workspace_binary("streamward-operator", "streamward-operator").unwrap();
    let port = net::free_port().unwrap();
    let metrics = format!("127.0.0.1:{}", net::free_port().unwrap());
    let mut command = Command::new(operator);
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
    // Ready once an Approval comes back stamped (the mutating webhook answers) and the
    // operator leads.
    let probe = server.dir().join("probe.yaml");
    std::fs::write(
        &probe,
        "apiVersion: streamward.io/v1alpha1
kind: Approval
metadata: {name: probe, namespace: payments}
spec: {requestRef: {kind: ApprovalRequest, name: nothing}, decision: Approve}
",
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
            // The validating webhook answers (refusing an Approval of nothing) and the
            // operator leads (so it reconciles what the tests create).
            let webhook = String::from_utf8_lossy(&output.stderr).contains("does not exist");
            let leads = net::http_get(&metrics, "/readyz")
                .is_ok_and(|(status, body)| status == 200 && body.contains("leader"));
            Ok((webhook && leads).then_some(()))
        },
    )
    .unwrap();
    let resources = server.dir().join("resources.yaml");
    std::fs::write(&resources, RESOURCES).unwrap();
    kubectl(&server, &["apply", "-f", resources.to_str().unwrap()]);
    (server, operator)
}

#[test]
fn people_approve_deny_and_grant_with_kubectl_streamward_as_themselves() {
    let (server, _operator) = setup();
    let plugins = plugin_dir(&server);
    let user = |name: &str| server.user_kubeconfig(name, &[]).unwrap();
    let (alice, bob, carol, mallory) = (user("alice"), user("bob"), user("carol"), user("mallory"));
    let ledger = server.service_account_kubeconfig(NS, "ledger").unwrap();

    // The proxy of the ledger workload holds two deletes.
    create_as(&server, &ledger, &held_request("delete-entries"));
    create_as(&server, &ledger, &held_request("delete-again"));

    // Alice approves the first, exactly as the proxy's error message tells her to.
    let (code, out, err) = plugin_as(
        &server,
        &plugins,
        &alice,
        &["approve", "delete-entries", "-n", NS],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("Approve ApprovalRequest payments/delete-entries as alice"),
        "{out}"
    );
    let approvals = get_json(&server, &["approvals", "-n", NS]).unwrap();
    let mine: Vec<_> = approvals["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["spec"]["requestRef"]["name"] == "delete-entries")
        .collect();
    assert_eq!(mine.len(), 1, "{approvals}");
    assert_eq!(mine[0]["spec"]["approver"]["user"], "alice", "{}", mine[0]);
    assert_eq!(mine[0]["spec"]["decision"], "Approve");
    assert!(
        mine[0]["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with("delete-entries-")
    );
    wait_condition(&server, "approvalrequest", "delete-entries", "Approved");

    // Carol denies the second with a comment (the namespace from her kubeconfig's context
    // would be `default`, so she names it).
    let (code, out, err) = plugin_as(
        &server,
        &plugins,
        &carol,
        &[
            "deny",
            "delete-again",
            "--namespace",
            NS,
            "--comment",
            "not during the freeze",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let denied = wait_condition(&server, "approvalrequest", "delete-again", "Denied");
    assert!(
        denied["status"]["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["approver"] == "carol" && d["comment"] == "not during the freeze"),
        "{denied}"
    );

    // Mallory may not create Approvals at all: the API server's own words, exit 1.
    let (code, out, err) = plugin_as(
        &server,
        &plugins,
        &mallory,
        &["approve", "delete-again", "-n", NS],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(
            "Error from server (Forbidden): approvals.streamward.io is forbidden: User \
             \"mallory\" cannot create resource \"approvals\" in API group \"streamward.io\" in \
             the namespace \"payments\""
        ),
        "{err}"
    );
    // Bob may create Approvals, but is not an approver: the webhook refuses him.
    let (code, _, err) = plugin_as(
        &server,
        &plugins,
        &bob,
        &["approve", "delete-again", "-n", NS],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("denied the request"), "{err}");
    assert!(err.contains("not an approver"), "{err}");

    // Bob asks for a grant; the namespace requires approval, so it waits.
    let (code, out, err) = plugin_as(
        &server,
        &plugins,
        &bob,
        &[
            "grant",
            "break-glass",
            "-n",
            NS,
            "--service-account",
            "ledger",
            "--topic",
            "ledger.audit",
            "--operations",
            "Read,Describe",
            "--duration",
            "1h",
            "--reason",
            "INC-9: reconcile the ledger",
            "--ticket",
            "INC-9",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let grant = get_json(&server, &["accessgrant", "-n", NS, "break-glass"]).unwrap();
    assert_eq!(
        grant["metadata"]["annotations"]["streamward.io/requested-by"],
        "bob"
    );
    assert_eq!(grant["spec"]["durationSeconds"], 3600);
    assert_eq!(grant["spec"]["ticketRef"], "INC-9");
    assert_eq!(
        grant["spec"]["resources"][0],
        serde_json::json!({"resourceType": "Topic", "name": "ledger.audit", "patternType": "Literal"})
    );
    wait_for(
        "the grant to wait for approval",
        Duration::from_secs(30),
        || {
            Ok(get_json(&server, &["accessgrant", "-n", NS, "break-glass"])
                .filter(|g| has_condition(g, "Approved", "False")))
        },
    )
    .unwrap();
    // Bob cannot approve his own grant; alice can, and then it counts.
    let (code, _, err) = plugin_as(
        &server,
        &plugins,
        &bob,
        &["approve", "accessgrant/break-glass", "-n", NS],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("denied the request"), "{err}");
    let (code, out, err) = plugin_as(
        &server,
        &plugins,
        &alice,
        &["approve", "accessgrant/break-glass", "-n", NS],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("Approve AccessGrant payments/break-glass as alice"),
        "{out}"
    );
    wait_condition(&server, "accessgrant", "break-glass", "Active");

    // Status: the operator's Deployment (no controller-manager runs here, so its status is
    // written as one would), no collector, and the ledger's config hash from its ConfigMap.
    let deployment = server.dir().join("deployment.yaml");
    std::fs::write(
        &deployment,
        "apiVersion: apps/v1
kind: Deployment
metadata: {name: streamward-operator, namespace: streamward-system}
spec:
  replicas: 1
  selector: {matchLabels: {app: op}}
  template:
    metadata: {labels: {app: op}}
    spec: {containers: [{name: op, image: streamward-operator:test}]}
",
    )
    .unwrap();
    kubectl(&server, &["apply", "-f", deployment.to_str().unwrap()]);
    kubectl(
        &server,
        &[
            "patch",
            "deployment",
            "streamward-operator",
            "-n",
            LEASE_NAMESPACE,
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"replicas":1,"readyReplicas":1}}"#,
        ],
    );
    let hash = wait_for("the ledger's config", Duration::from_secs(30), || {
        Ok(get_json(
            &server,
            &["configmap", "-n", NS, "streamward-config-ledger"],
        )
        .and_then(|m| {
            m["metadata"]["annotations"]["streamward.io/config-hash"]
                .as_str()
                .map(str::to_owned)
        }))
    })
    .unwrap();
    let (code, out, err) = plugin_as(
        &server,
        &plugins,
        server.kubeconfig(),
        &["status", "-n", NS],
    );
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "operator:  Ready (1/1 replicas ready)", "{out}");
    assert_eq!(
        lines[1], "collector: not found (no StatefulSet streamward-collector in streamward-system)",
        "{out}"
    );
    assert!(
        lines[2].starts_with("NAMESPACE  SERVICE ACCOUNT  CONFIG HASH"),
        "{out}"
    );
    let ledger: Vec<&str> = lines[3].split_whitespace().collect();
    assert_eq!(ledger[..3], [NS, "ledger", hash.as_str()], "{out}");

    // Bad flags are bad input (exit 2) and reach no server.
    let (code, _, err) = plugin_as(
        &server,
        &plugins,
        &bob,
        &[
            "grant",
            "x",
            "-n",
            NS,
            "--user",
            "bob",
            "--topic",
            "t",
            "--operations",
            "Raed",
            "--duration",
            "1h",
            "--reason",
            "r",
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("\"Raed\" is not an operation"), "{err}");
}

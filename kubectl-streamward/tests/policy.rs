//! `kubectl streamward policy test` and `policy diff`, run as the built binary the way a GitOps
//! pipeline runs it: the repository's own samples pass their cases; a wrong expectation exits 1
//! naming the case and what differs; bad input exits 2.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs the plugin: (exit code, stdout, stderr).
fn plugin(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_kubectl-streamward"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap();
    (
        output.status.code().unwrap(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn the_samples_pass_their_cases() {
    let (code, out, err) = plugin(&[
        "policy",
        "test",
        "config/samples",
        "--cases",
        "config/policy-tests/samples.yaml",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let cases = std::fs::read_to_string(root().join("config/policy-tests/samples.yaml")).unwrap();
    let count = cases.matches("\n  - name:").count();
    assert!(count >= 15, "{count}");
    assert_eq!(
        out.trim_end(),
        format!("{count} cases: {count} passed, 0 failed")
    );
}

#[test]
fn a_wrong_expectation_exits_1_with_what_was_expected_and_what_decided() {
    let dir = tempfile::tempdir().unwrap();
    let cases = write(
        dir.path(),
        "cases.yaml",
        "namespace: demo
cases:
  - name: right
    serviceAccount: orders-app
    operation: Write
    topic: orders.created
    expect: Allow
  - name: deletes are allowed, someone thinks
    serviceAccount: orders-app
    api: DeleteTopics
    topic: orders.created
    expect: Allow
  - name: the right effect by the wrong rule
    serviceAccount: orders-app
    operation: Read
    topic: orders.created
    expect: Allow
    rule: AccessGrant/oncall-debug
  - name: cards are not masked, someone thinks
    serviceAccount: orders-app
    topic: orders.paid
    record: {payment: {card: {number: '4111111111111111'}}, id: 7}
    masked: {payment: {card: {number: '4111111111111111'}}, id: 7}
",
    );
    let (code, out, err) = plugin(&["policy", "test", "config/samples", "--cases", &cases]);
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(
        out,
        "FAIL case 2: deletes are allowed, someone thinks
  who:      service account demo/orders-app
  request:  Delete Topic orders.created on target \"local-kafka\"
  expected: Allow
  got:      Deny (StreamPolicy/orders-team rule no-destructive-admin)

FAIL case 3: the right effect by the wrong rule
  who:      service account demo/orders-app
  request:  Read Topic orders.created on target \"local-kafka\"
  expected: Allow (AccessGrant/oncall-debug)
  got:      Allow (StreamPolicy/orders-team rule orders-topics)

FAIL case 4: cards are not masked, someone thinks
  who:      service account demo/orders-app
  masking orders.paid (Consume, MaskingRules orders-pii):
    /payment/card/number: expected \"4111111111111111\", got \"************1111\"
    masked record: {\"id\":7,\"payment\":{\"card\":{\"number\":\"************1111\"}}}

4 cases: 1 passed, 3 failed
"
    );
}

#[test]
fn approvals_dry_runs_and_masking_keys_are_checked_too() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    write(
        &policies,
        "resources.yaml",
        "apiVersion: streamward.io/v1alpha1
kind: StreamPolicy
metadata: {name: ledger, namespace: payments}
spec:
  subjects: {serviceAccounts: [ledger], users: [ops@example.com]}
  rules:
  - name: deletes-need-approval
    resources: [{resourceType: Topic, name: ledger., patternType: Prefixed}]
    operations: [Delete]
    effect: RequireApproval
  - name: writes
    resources: [{resourceType: Topic, name: ledger., patternType: Prefixed}]
    operations: [Write]
    effect: Allow
---
apiVersion: streamward.io/v1alpha1
kind: StreamPolicy
metadata: {name: tighter, namespace: payments}
spec:
  mode: DryRun
  subjects: {serviceAccounts: [ledger]}
  rules:
  - name: no-writes-to-ledger-raw
    resources: [{resourceType: Topic, name: ledger.raw}]
    operations: [Write]
    effect: Deny
---
apiVersion: streamward.io/v1alpha1
kind: MaskingRule
metadata: {name: pseudonyms, namespace: payments}
spec:
  topics: [{name: ledger.entries}]
  fields:
  - path: account
    strategy: {type: Hmac, keySecretRef: {name: masking-key, key: hmac}}
---
apiVersion: v1
kind: Secret
metadata: {name: masking-key, namespace: payments}
stringData: {hmac: 0123456789abcdef0123456789abcdef}
",
    );
    let cases = write(
        dir.path(),
        "cases.yaml",
        "cases:
  - name: deleting a ledger topic waits for an approver
    serviceAccount: ledger
    api: DeleteTopics
    topic: ledger.entries
    expect: RequireApproval
    rule: ledger/deletes-need-approval
  - name: a person through any workload gets the same
    user: ops@example.com
    operation: Delete
    topic: ledger.entries
    expect: RequireApproval
  - name: a DryRun deny only reports
    serviceAccount: ledger
    operation: Write
    topic: ledger.raw
    expect: Allow
    rule: no-writes-to-ledger-raw
  - name: accounts are pseudonymised with the key from the Secret
    serviceAccount: ledger
    topic: ledger.entries
    record: {account: DE89370400440532013000}
    masked: {account: not-this}
",
    );
    let (code, out, err) = plugin(&[
        "policy",
        "test",
        policies.to_str().unwrap(),
        "--cases",
        &cases,
    ]);
    assert_eq!(code, 1, "{out}{err}");
    // Only the masking case fails, and it shows the keyed pseudonym the proxy would write.
    assert!(out.starts_with("FAIL case 4: "), "{out}");
    assert!(out.contains("4 cases: 3 passed, 1 failed"), "{out}");
    let pseudonym = out
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("/account: expected \"not-this\", got ")
        })
        .unwrap_or_else(|| panic!("{out}"));
    assert!(!pseudonym.contains("DE89"), "{pseudonym}");
    // The same pseudonym every time: it is keyed, so joins across topics still work.
    let again = plugin(&[
        "policy",
        "test",
        policies.to_str().unwrap(),
        "--cases",
        &cases,
    ]);
    assert!(again.1.contains(pseudonym), "{}", again.1);

    // The dry run shows in a failure's decision.
    let dry = write(
        dir.path(),
        "dry.yaml",
        "cases:
  - {name: x, serviceAccount: ledger, operation: Write, topic: ledger.raw, expect: Deny}
",
    );
    let (code, out, _) = plugin(&[
        "policy",
        "test",
        policies.to_str().unwrap(),
        "--cases",
        &dry,
    ]);
    assert_eq!(code, 1);
    assert!(
        out.contains(
            "got:      Allow (StreamPolicy/tighter rule no-writes-to-ledger-raw), dry run: would Deny"
        ),
        "{out}"
    );
}

#[test]
fn bad_input_exits_2_saying_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let samples = "config/samples";
    let cases = |text: &str| write(dir.path(), "cases.yaml", text);
    for (text, message) in [
        (
            "cases: [{name: x, serviceAccount: orders-app, operation: Raed, topic: t, expect: Allow}]",
            "unknown variant `Raed`",
        ),
        (
            "cases: [{name: x, serviceAccount: orders-app, operation: Read, topic: t}]",
            "case 1 (\"x\"): say which effect is expected",
        ),
        (
            "cases: [{name: x, serviceAccount: orders-app, operation: Read, topic: t, expect: Allow, tpoic: y}]",
            "unknown field `tpoic`",
        ),
        (
            "cases: [{name: x, serviceAccount: orders-app, api: Fetch, group: g, expect: Allow}]",
            "api Fetch is about a Topic",
        ),
        ("cases: []", "no cases"),
    ] {
        let file = cases(text);
        let (code, out, err) = plugin(&["policy", "test", samples, "--cases", &file]);
        assert_eq!(code, 2, "{text}: {out}{err}");
        assert!(err.contains(message), "{text}: {err}");
    }

    // A folder whose resources do not compile is bad input, naming the object.
    let broken = dir.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    write(
        &broken,
        "p.yaml",
        "apiVersion: streamward.io/v1alpha1
kind: StreamPolicy
metadata: {name: broken, namespace: demo}
spec:
  subjects: {serviceAccounts: ['a/b/c']}
  rules: [{resources: [{resourceType: Topic, name: x}], operations: [Read], effect: Allow}]
",
    );
    let file = cases(
        "cases: [{name: x, serviceAccount: demo/a, operation: Read, topic: x, expect: Allow}]",
    );
    let (code, _, err) = plugin(&["policy", "test", broken.to_str().unwrap(), "--cases", &file]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("do not compile for demo/a"), "{err}");
    assert!(err.contains("broken"), "{err}");

    let (code, _, err) = plugin(&["policy", "test", "no/such/dir", "--cases", &file]);
    assert_eq!(code, 2);
    assert!(err.contains("reading folder no/such/dir"), "{err}");
}

#[test]
fn diff_lists_who_gains_and_who_loses_which_access() {
    let dir = tempfile::tempdir().unwrap();
    let new = dir.path().join("new");
    std::fs::create_dir(&new).unwrap();
    for entry in std::fs::read_dir(root().join("config/samples")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        // The orders app may no longer write; bob shares alice's grant.
        let text = text
            .replace(
                "operations: [Read, Write, Describe]",
                "operations: [Read, Describe]",
            )
            .replace("      - alice\n", "      - alice\n      - bob\n");
        std::fs::write(new.join(path.file_name().unwrap()), text).unwrap();
    }
    let new = new.to_str().unwrap();
    let (code, out, err) = plugin(&["policy", "diff", "config/samples", new]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        format!(
            "access that changes from config/samples to {new} (+ gained, - lost):
service account demo/orders-app
  - Write Topic orders.* (prefix): Allow (StreamPolicy/orders-team rule orders-topics) -> Deny (default deny)
user bob (in namespace demo)
  + Read Topic payments.audit: Deny (default deny) -> Allow (AccessGrant/oncall-debug)
  + Describe Topic payments.audit: Deny (default deny) -> Allow (AccessGrant/oncall-debug)
2 accesses gained, 1 lost
"
        )
    );
    let (code, _, _) = plugin(&["policy", "diff", "config/samples", new, "--exit-code"]);
    assert_eq!(code, 1);
    let (code, out, _) = plugin(&[
        "policy",
        "diff",
        "config/samples",
        "config/samples",
        "--exit-code",
    ]);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "no access changes from config/samples to config/samples\n"
    );
}

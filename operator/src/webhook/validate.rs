//! Validation of the custom resources at admission, pure: the same checks the compiler makes
//! (`streamward_api::validate`), so that `kubectl apply` refuses what a proxy could never use,
//! naming the object and the field.
//!
//! Updates ratchet: an update that leaves `spec` as it was is allowed even if the spec would
//! no longer pass (an object stored before a check was added must stay deletable, and its
//! labels and finalizers editable), and a `targetRef` that did not change is not looked up
//! again (its target may have been deleted since).

use jiff::Timestamp;
use serde::Deserialize;
use serde_json::Value;
use streamward_api::crd::{AccessGrant, MaskingRule, StreamPolicy, StreamTarget};
use streamward_api::validate::{check_grant, check_masking_rule, check_policy, check_target};

/// The custom resources the validating webhook checks, by their plural resource names.
pub const RESOURCES: [&str; 6] = [
    "streamtargets",
    "streampolicies",
    "accessgrants",
    "maskingrules",
    "approvals",
    "approvalrequests",
];

/// What the webhook answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Valid.
    Allowed,
    /// Valid if the StreamTarget of this name exists in the object's namespace.
    AllowedIfTargetExists(String),
    /// Refused, with the message `kubectl` shows.
    Denied(String),
}

/// Checks `object` of `kind` (`StreamPolicy`, …) in `namespace`; `old` is the stored object on
/// an update. `now` stands in for the creation time of a grant that has none yet.
pub fn check(
    kind: &str,
    namespace: &str,
    object: &Value,
    old: Option<&Value>,
    now: Timestamp,
) -> Verdict {
    let spec_unchanged = old.is_some_and(|old| old.get("spec") == object.get("spec"));
    if spec_unchanged {
        return Verdict::Allowed;
    }
    let refused = |error: &dyn std::fmt::Display| Verdict::Denied(error.to_string());
    let parse_error = |error: serde_json::Error| {
        Verdict::Denied(format!(
            "{kind} {namespace}/{}: {error}",
            object
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
        ))
    };
    match kind {
        "StreamTarget" => match StreamTarget::deserialize(object) {
            Ok(target) => {
                check_target(&target, namespace).map_or_else(|e| refused(&e), |()| Verdict::Allowed)
            }
            Err(error) => parse_error(error),
        },
        "StreamPolicy" => match StreamPolicy::deserialize(object) {
            Ok(policy) => {
                if let Err(error) = check_policy(&policy, namespace) {
                    return refused(&error);
                }
                let old_target = old.and_then(|o| o.pointer("/spec/targetRef"));
                match policy.spec.target_ref {
                    Some(target) if old_target != object.pointer("/spec/targetRef") => {
                        Verdict::AllowedIfTargetExists(target)
                    }
                    _ => Verdict::Allowed,
                }
            }
            Err(error) => parse_error(error),
        },
        "AccessGrant" => match AccessGrant::deserialize(object) {
            Ok(grant) => check_grant(&grant, namespace, now)
                .map_or_else(|e| refused(&e), |()| Verdict::Allowed),
            Err(error) => parse_error(error),
        },
        "MaskingRule" => match MaskingRule::deserialize(object) {
            Ok(rule) => check_masking_rule(&rule, namespace)
                .map_or_else(|e| refused(&e), |()| Verdict::Allowed),
            Err(error) => parse_error(error),
        },
        other => Verdict::Denied(format!(
            "the Streamward webhook does not know kind {other}; it checks StreamTarget, \
             StreamPolicy, AccessGrant and MaskingRule"
        )),
    }
}

/// The refusal of a policy whose `targetRef` names no StreamTarget.
pub fn dangling_target(kind: &str, namespace: &str, name: &str, target: &str) -> String {
    format!(
        "{kind} {namespace}/{name}: spec.targetRef names StreamTarget {target:?}, which does not \
         exist in namespace {namespace}; create the StreamTarget first (kubectl apply -f takes \
         the files of a folder in name order), or fix the name"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn masking(detectors: Value) -> Value {
        json!({
            "apiVersion": "streamward.io/v1alpha1", "kind": "MaskingRule",
            "metadata": {"name": "cards", "namespace": "demo"},
            "spec": {"topics": [{"name": "orders"}], "format": "Text", "detectors": detectors}
        })
    }

    fn policy(target: Option<&str>, topic: &str) -> Value {
        let mut value = json!({
            "apiVersion": "streamward.io/v1alpha1", "kind": "StreamPolicy",
            "metadata": {"name": "team", "namespace": "demo"},
            "spec": {
                "subjects": {"serviceAccounts": ["app"]},
                "rules": [{"resources": [{"resourceType": "Topic", "name": topic}], "operations": ["Read"], "effect": "Allow"}]
            }
        });
        if let Some(target) = target {
            value["spec"]["targetRef"] = json!(target);
        }
        value
    }

    fn check_new(kind: &str, object: &Value) -> Verdict {
        check(kind, "demo", object, None, Timestamp::now())
    }

    #[test]
    fn a_bad_regex_is_denied_naming_the_field() {
        let bad = masking(json!([{"type": "Regex", "pattern": "(?P<mask>[0-9"}]));
        let Verdict::Denied(message) = check_new("MaskingRule", &bad) else {
            panic!("a bad regex must be refused");
        };
        assert!(message.contains("MaskingRule demo/cards"), "{message}");
        assert!(message.contains("spec.detectors[0].pattern"), "{message}");
        let good = masking(json!([{"type": "Regex", "pattern": "secret=(?P<mask>\\S+)"}]));
        assert_eq!(check_new("MaskingRule", &good), Verdict::Allowed);
    }

    #[test]
    fn a_policy_needs_a_valid_pattern_and_its_target_looked_up() {
        let Verdict::Denied(message) = check_new("StreamPolicy", &policy(None, "orders.*")) else {
            panic!("a literal wildcard must be refused");
        };
        assert!(
            message.contains("spec.rules[0].resources[0].name"),
            "{message}"
        );
        assert_eq!(
            check_new("StreamPolicy", &policy(None, "orders")),
            Verdict::Allowed
        );
        assert_eq!(
            check_new("StreamPolicy", &policy(Some("kafka"), "orders")),
            Verdict::AllowedIfTargetExists("kafka".into())
        );
        let message = dangling_target("StreamPolicy", "demo", "team", "kafka");
        assert!(message.contains("spec.targetRef"), "{message}");
        assert!(message.contains("\"kafka\""), "{message}");
    }

    #[test]
    fn subjects_by_pod_labels_alone_are_denied() {
        let by_labels = json!({"podSelector": {"matchLabels": {"role": "billing"}}});
        let mut labelled = policy(None, "orders.");
        labelled["spec"]["subjects"] = by_labels.clone();
        let Verdict::Denied(message) = check_new("StreamPolicy", &labelled) else {
            panic!("a policy for pods by their labels alone must be refused");
        };
        assert!(
            message.starts_with("StreamPolicy demo/team: spec.subjects: podSelector alone"),
            "{message}"
        );

        let mut exemption = masking(json!([{"type": "Email"}]));
        exemption["spec"]["exemptSubjects"] = by_labels.clone();
        let Verdict::Denied(message) = check_new("MaskingRule", &exemption) else {
            panic!("an exemption by labels alone must be refused");
        };
        assert!(
            message.contains("spec.exemptSubjects: podSelector alone"),
            "{message}"
        );

        // Narrowing a service account is what labels are for.
        exemption["spec"]["exemptSubjects"]["serviceAccounts"] = json!(["billing-app"]);
        assert_eq!(check_new("MaskingRule", &exemption), Verdict::Allowed);
        // A stored object is left alone while its spec stays as it was (deletable, relabelable).
        labelled["spec"]["subjects"] = by_labels;
        let mut relabelled = labelled.clone();
        relabelled["metadata"]["labels"] = json!({"team": "orders"});
        assert_eq!(
            check(
                "StreamPolicy",
                "demo",
                &relabelled,
                Some(&labelled),
                Timestamp::now()
            ),
            Verdict::Allowed
        );
    }

    #[test]
    fn updates_ratchet() {
        let stored = policy(Some("gone"), "orders.*");
        // Only metadata changed: allowed even though the stored spec would not pass today.
        let mut relabelled = stored.clone();
        relabelled["metadata"]["labels"] = json!({"team": "a"});
        assert_eq!(
            check(
                "StreamPolicy",
                "demo",
                &relabelled,
                Some(&stored),
                Timestamp::now()
            ),
            Verdict::Allowed
        );
        // A spec change is checked in full, but an unchanged targetRef is not looked up again.
        let fixed = policy(Some("gone"), "orders.");
        let fixed = {
            let mut f = fixed;
            f["spec"]["rules"][0]["resources"][0]["patternType"] = json!("Prefixed");
            f
        };
        assert_eq!(
            check(
                "StreamPolicy",
                "demo",
                &fixed,
                Some(&stored),
                Timestamp::now()
            ),
            Verdict::Allowed
        );
        let retargeted = {
            let mut r = fixed.clone();
            r["spec"]["targetRef"] = json!("new");
            r
        };
        assert_eq!(
            check(
                "StreamPolicy",
                "demo",
                &retargeted,
                Some(&fixed),
                Timestamp::now()
            ),
            Verdict::AllowedIfTargetExists("new".into())
        );
        let still_bad = policy(Some("gone"), "orders.?");
        assert!(matches!(
            check(
                "StreamPolicy",
                "demo",
                &still_bad,
                Some(&stored),
                Timestamp::now()
            ),
            Verdict::Denied(_)
        ));
    }

    #[test]
    fn targets_and_grants_are_checked_too() {
        let target = json!({
            "apiVersion": "streamward.io/v1alpha1", "kind": "StreamTarget",
            "metadata": {"name": "kafka", "namespace": "demo"},
            "spec": {"bootstrapServers": ["kafka:99999"]}
        });
        let Verdict::Denied(message) = check_new("StreamTarget", &target) else {
            panic!("a bad port must be refused");
        };
        assert!(message.contains("spec.bootstrapServers[0]"), "{message}");
        let grant = json!({
            "apiVersion": "streamward.io/v1alpha1", "kind": "AccessGrant",
            "metadata": {"name": "g", "namespace": "demo"},
            "spec": {
                "subjects": {"users": ["alice"]},
                "resources": [{"resourceType": "Topic", "name": "payments.*"}],
                "operations": ["Read"], "durationSeconds": 60, "reason": "incident"
            }
        });
        let Verdict::Denied(message) = check_new("AccessGrant", &grant) else {
            panic!("a literal wildcard must be refused");
        };
        assert!(message.contains("spec.resources[0].name"), "{message}");
    }

    #[test]
    fn what_does_not_fit_the_type_is_denied_with_the_reason() {
        let mut broken = masking(json!([]));
        broken["spec"]["direction"] = json!("Sideways");
        let Verdict::Denied(message) = check_new("MaskingRule", &broken) else {
            panic!("an unknown enum value must be refused");
        };
        assert!(message.contains("MaskingRule demo/cards"), "{message}");
        assert!(message.contains("Sideways"), "{message}");
        assert!(matches!(check_new("Pod", &json!({})), Verdict::Denied(_)));
    }
}

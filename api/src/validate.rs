//! One custom resource checked on its own, the way [`crate::compile::compile`] checks it, for
//! the operator's validating admission webhook: what these functions refuse, a compile would
//! refuse too, so a resource `kubectl apply` accepted never breaks a proxy's config.
//!
//! They check the object alone. References to other objects (a StreamPolicy's `targetRef`)
//! are the caller's to resolve, since that needs the API server.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use crate::compile::{
    CompileError, ObjectRef, compile_grant, compile_masking_rule, compile_policy, compile_subjects,
    compile_target,
};
use crate::crd::{AccessGrant, MaskingRule, StreamPolicy, StreamTarget};

fn object(kind: &'static str, meta: &ObjectMeta, namespace: &str) -> ObjectRef {
    let name = match (&meta.name, &meta.generate_name) {
        (Some(name), _) if !name.is_empty() => name.clone(),
        (_, Some(prefix)) => format!("{prefix}…"),
        _ => String::new(),
    };
    ObjectRef {
        kind,
        namespace: namespace.to_owned(),
        name,
    }
}

/// Checks a StreamTarget of `namespace`: its bootstrap servers.
pub fn check_target(target: &StreamTarget, namespace: &str) -> Result<(), CompileError> {
    let object = object("StreamTarget", &target.metadata, namespace);
    compile_target(&object, &target.spec).map(drop)
}

/// Checks a StreamPolicy of `namespace`: its subjects, its rules (names, resources and
/// operations) and every resource pattern.
pub fn check_policy(policy: &StreamPolicy, namespace: &str) -> Result<(), CompileError> {
    let object = object("StreamPolicy", &policy.metadata, namespace);
    let subjects = compile_subjects(&object, &policy.spec.subjects, "spec.subjects")?;
    compile_policy(object, subjects, policy).map(drop)
}

/// Checks an AccessGrant of `namespace`: its subjects, resources, operations and window. A
/// grant without `startTime` starts at its creation; `now` stands in when the object has no
/// creation time yet.
pub fn check_grant(
    grant: &AccessGrant,
    namespace: &str,
    now: Timestamp,
) -> Result<(), CompileError> {
    let object = object("AccessGrant", &grant.metadata, namespace);
    let subjects = compile_subjects(&object, &grant.spec.subjects, "spec.subjects")?;
    if grant.metadata.creation_timestamp.is_none() {
        let mut stamped = grant.clone();
        stamped.metadata.creation_timestamp = Some(Time(now));
        return compile_grant(object, subjects, &stamped).map(drop);
    }
    compile_grant(object, subjects, grant).map(drop)
}

/// Checks a MaskingRule of `namespace`: topics, field paths, detector regexes, strategies and
/// exempt subjects.
pub fn check_masking_rule(rule: &MaskingRule, namespace: &str) -> Result<(), CompileError> {
    let object = object("MaskingRule", &rule.metadata, namespace);
    compile_masking_rule(object, rule).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::parse_manifests;

    fn inputs(yaml: &str) -> crate::compile::Inputs {
        parse_manifests(yaml).unwrap()
    }

    fn policy(rules: &str) -> StreamPolicy {
        let yaml = format!(
            "apiVersion: streamward.io/v1alpha1\nkind: StreamPolicy\nmetadata: {{name: p}}\nspec:\n  subjects: {{serviceAccounts: [app]}}\n  rules:\n{rules}"
        );
        inputs(&yaml).policies.remove(0)
    }

    fn masking(spec: &str) -> MaskingRule {
        let yaml = format!(
            "apiVersion: streamward.io/v1alpha1\nkind: MaskingRule\nmetadata: {{name: m}}\nspec:\n{spec}"
        );
        inputs(&yaml).masking_rules.remove(0)
    }

    #[test]
    fn every_sample_passes() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/samples");
        let mut all = crate::compile::Inputs::default();
        for entry in std::fs::read_dir(dir).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            all.extend(inputs(&text));
        }
        assert!(!all.targets.is_empty() && !all.policies.is_empty());
        assert!(!all.grants.is_empty() && !all.masking_rules.is_empty());
        let now = Timestamp::now();
        for t in &all.targets {
            check_target(t, "demo").unwrap();
        }
        for p in &all.policies {
            check_policy(p, "demo").unwrap();
        }
        for g in &all.grants {
            check_grant(g, "demo", now).unwrap();
        }
        for m in &all.masking_rules {
            check_masking_rule(m, "demo").unwrap();
        }
    }

    #[test]
    fn a_bad_regex_is_refused_naming_the_rule_and_field() {
        let rule = masking(
            "  topics: [{name: logs}]\n  format: Text\n  detectors:\n  - {type: Email}\n  - {type: Regex, pattern: 'token=(unclosed'}\n",
        );
        let error = check_masking_rule(&rule, "team").unwrap_err().to_string();
        assert!(error.starts_with("MaskingRule team/m: "), "{error}");
        assert!(error.contains("spec.detectors[1].pattern"), "{error}");
        assert!(error.contains("token=(unclosed"), "{error}");
    }

    #[test]
    fn a_bad_path_and_a_bad_topic_pattern_are_refused() {
        let rule = masking("  topics: [{name: orders}]\n  fields: [{path: 'a..'}]\n");
        let error = check_masking_rule(&rule, "team").unwrap_err().to_string();
        assert!(error.contains("spec.fields[0].path"), "{error}");
        let rule = masking("  topics: [{name: 'orders.*'}]\n  fields: [{path: a.b}]\n");
        let error = check_masking_rule(&rule, "team").unwrap_err().to_string();
        assert!(error.contains("spec.topics[0].name"), "{error}");
    }

    #[test]
    fn a_literal_topic_with_a_wildcard_is_refused_naming_the_field() {
        let bad = policy(
            "  - resources: [{resourceType: Topic, name: orders.created}]\n    operations: [Read]\n    effect: Allow\n  - name: second\n    resources: [{resourceType: Group, name: g}, {resourceType: Topic, name: 'orders.*'}]\n    operations: [Read]\n    effect: Allow\n",
        );
        let error = check_policy(&bad, "team").unwrap_err();
        assert!(
            matches!(&error, CompileError::Pattern { field, .. } if field == "spec.rules[1].resources[1].name"),
            "{error}"
        );
        let text = error.to_string();
        assert!(text.contains("StreamPolicy team/p"), "{text}");
        assert!(text.contains("Prefixed"), "{text}");
    }

    #[test]
    fn policy_subjects_and_duplicate_rules_are_refused() {
        let mut bad = policy(
            "  - {name: a, resources: [{resourceType: Topic, name: t}], operations: [Read], effect: Allow}\n",
        );
        bad.spec.subjects.service_accounts = vec!["Not A Name".into()];
        let error = check_policy(&bad, "team").unwrap_err().to_string();
        assert!(
            error.contains("spec.subjects.serviceAccounts[0]"),
            "{error}"
        );
        let dup = policy(
            "  - {name: a, resources: [{resourceType: Topic, name: t}], operations: [Read], effect: Allow}\n  - {name: a, resources: [{resourceType: Topic, name: u}], operations: [Read], effect: Deny}\n",
        );
        let error = check_policy(&dup, "team").unwrap_err().to_string();
        assert!(error.contains("spec.rules[1]"), "{error}");
    }

    #[test]
    fn a_grant_is_checked_with_now_when_it_has_no_creation_time() {
        let yaml = "apiVersion: streamward.io/v1alpha1\nkind: AccessGrant\nmetadata: {name: g}\nspec:\n  subjects: {users: [alice]}\n  resources: [{resourceType: Cluster, name: prod}]\n  operations: [Describe]\n  durationSeconds: 60\n  reason: debugging\n";
        let grant = inputs(yaml).grants.remove(0);
        let error = check_grant(&grant, "team", Timestamp::now())
            .unwrap_err()
            .to_string();
        assert!(error.contains("spec.resources[0].name"), "{error}");
        assert!(error.contains("kafka-cluster"), "{error}");
        let mut good = grant.clone();
        good.spec.resources[0].name = "kafka-cluster".into();
        check_grant(&good, "team", Timestamp::now()).unwrap();
        good.spec.expiry_time = Some(Timestamp::now());
        let error = check_grant(&good, "team", Timestamp::now())
            .unwrap_err()
            .to_string();
        assert!(error.contains("exactly one"), "{error}");
    }

    #[test]
    fn a_target_with_a_bad_server_is_refused() {
        let yaml = "apiVersion: streamward.io/v1alpha1\nkind: StreamTarget\nmetadata: {generateName: k-}\nspec:\n  bootstrapServers: ['kafka:9092', 'kafka']\n";
        let mut parsed = parse_manifests(&yaml.replace("generateName: k-", "name: k")).unwrap();
        let mut target = parsed.targets.remove(0);
        target.metadata.name = None;
        target.metadata.generate_name = Some("k-".into());
        let error = check_target(&target, "team").unwrap_err().to_string();
        assert!(error.contains("StreamTarget team/k-…"), "{error}");
        assert!(error.contains("spec.bootstrapServers[1]"), "{error}");
    }
}

//! `policy test DIR --cases FILE`: a table of cases, each a request (who, what, on which
//! resource, when) with the decision it must get, and optionally a sample record with the
//! output a consumer (or the topic, for produce masking) must see.
//!
//! ```yaml
//! namespace: demo            # for service accounts written without one (default: the
//!                            # folder's only namespace)
//! target: local-kafka        # default: the only StreamTarget there is
//! cases:
//!   - name: the orders app writes its topics
//!     serviceAccount: orders-app      # or demo/orders-app
//!     operation: Write                # or api: Produce
//!     topic: orders.created           # or group / transactionalId / cluster: true
//!     expect: Allow
//!     rule: orders-topics             # or StreamPolicy/orders-team rule orders-topics,
//!                                     # orders-team/orders-topics, AccessGrant/NAME, default
//!   - name: alice's grant has ended two hours later
//!     serviceAccount: orders-app
//!     user: alice
//!     operation: Read
//!     topic: payments.audit
//!     after: 2h                       # objects without creationTimestamp were created "now"
//!     expect: Deny
//!   - name: consumers see the last four digits
//!     serviceAccount: orders-app
//!     topic: orders.created
//!     record: {payment: {card: {number: "4111111111111111"}}}
//!     masked: {payment: {card: {number: "************1111"}}}
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use jiff::{SignedDuration, Timestamp};
use serde::Deserialize;
use serde_json::Value;
use streamward_api::acl::{CLUSTER_NAME, Operation, ResourceType};
use streamward_api::config::{Effect, Flow, ProxyConfig, WorkloadIdentity};
use streamward_api::decide::{Basis, Principal};
use streamward_sidecar::mask::{MaskingKeys, MaskingPlan, mask_value};
use streamward_sidecar::masking::key_refs;

use super::folder::Folder;
use super::{APIS, Access, BadInput, describe, effect_name};

/// A cases file.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CasesFile {
    /// The namespace of service accounts written without one.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The StreamTarget requests are made on.
    #[serde(default)]
    pub target: Option<String>,
    /// The cases, in order.
    pub cases: Vec<Case>,
}

/// One case.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Case {
    /// What the case shows, printed in the report.
    pub name: String,
    /// The workload: `namespace/name` or `name`.
    #[serde(default)]
    pub service_account: Option<String>,
    /// The user the client authenticated to the proxy as.
    #[serde(default)]
    pub user: Option<String>,
    /// That user's groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// The labels of the workload's pod.
    #[serde(default)]
    pub pod_labels: BTreeMap<String, String>,
    /// The operation, or
    #[serde(default)]
    pub operation: Option<Operation>,
    /// the Kafka API (its main resource's operation).
    #[serde(default)]
    pub api: Option<String>,
    /// A topic, or
    #[serde(default)]
    pub topic: Option<String>,
    /// a consumer group, or
    #[serde(default)]
    pub group: Option<String>,
    /// a transactional id, or
    #[serde(default)]
    pub transactional_id: Option<String>,
    /// the cluster.
    #[serde(default)]
    pub cluster: bool,
    /// The target, if not the file's.
    #[serde(default)]
    pub target: Option<String>,
    /// How long after the objects were created the request is made (`90s`, `2h`, `1h 30m`).
    #[serde(default)]
    pub after: Option<String>,
    /// The expected effect.
    #[serde(default)]
    pub expect: Option<Effect>,
    /// The rule or grant expected to decide.
    #[serde(default)]
    pub rule: Option<String>,
    /// A sample record value (JSON; a string is taken as the raw value).
    #[serde(default)]
    pub record: Option<Value>,
    /// The flow the record takes: `Consume` (default) or `Produce`.
    #[serde(default)]
    pub flow: Option<Flow>,
    /// What the record must look like after masking.
    #[serde(default)]
    pub masked: Option<Value>,
}

/// The outcome of a test run.
#[derive(Debug, Default)]
pub struct Report {
    /// Cases that passed.
    pub passed: usize,
    /// Failed cases, each described with what differs.
    pub failures: Vec<String>,
}

impl Report {
    /// The text printed after the run.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for failure in &self.failures {
            out.push_str(failure);
            out.push('\n');
        }
        let total = self.passed + self.failures.len();
        let _ = writeln!(
            out,
            "{total} cases: {} passed, {} failed",
            self.passed,
            self.failures.len()
        );
        out
    }
}

/// Reads a cases file.
pub fn read(path: &Path) -> Result<CasesFile, BadInput> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| BadInput(format!("reading cases {}: {e}", path.display())))?;
    let file: CasesFile = serde_yaml::from_str(&text)
        .map_err(|e| BadInput(format!("cases {}: {e}", path.display())))?;
    if file.cases.is_empty() {
        return Err(BadInput(format!("cases {}: no cases", path.display())));
    }
    Ok(file)
}

/// What a case asks, checked: who, and what to decide and/or mask.
struct Checked<'c> {
    identity: WorkloadIdentity,
    access: Option<Access>,
    expect: Option<Effect>,
    record: Option<(&'c Value, &'c Value, Flow, String)>,
    target: Option<&'c str>,
    at: Timestamp,
}

/// Runs every case of `file` against `folder`, at `created` (when the folder's objects without
/// a creation time were created).
pub fn run(folder: &mut Folder, file: &CasesFile, created: Timestamp) -> Result<Report, BadInput> {
    let namespace = match &file.namespace {
        Some(ns) => ns.clone(),
        None => {
            let namespaces = folder.namespaces();
            match namespaces.len() {
                0 => "default".to_owned(),
                1 => namespaces.into_iter().next().unwrap_or_default(),
                _ => {
                    return Err(BadInput(format!(
                        "{} holds objects of several namespaces ({}); say which one service \
                         accounts without a namespace are in with `namespace:` in the cases file",
                        folder.dir.display(),
                        namespaces.into_iter().collect::<Vec<_>>().join(", ")
                    )));
                }
            }
        }
    };
    let secrets = folder.inputs.secrets.clone();
    let mut report = Report::default();
    for (index, case) in file.cases.iter().enumerate() {
        let checked = check(case, &namespace, created)
            .map_err(|e| BadInput(format!("case {} ({:?}): {}", index + 1, case.name, e.0)))?;
        let config = folder.config(&checked.identity)?;
        let target = target(config, checked.target.or(file.target.as_deref()))
            .map_err(|e| BadInput(format!("case {} ({:?}): {}", index + 1, case.name, e.0)))?;
        // HMAC and format-preserving keys from the folder's Secrets, as local mode reads them.
        let mut keys = MaskingKeys::new();
        for secret in key_refs(config) {
            if let Some(bytes) = secrets.get(&secret.name).and_then(|s| s.get(&secret.key)) {
                keys.insert(secret.clone(), bytes.clone());
            }
        }
        let problems = evaluate(case, &checked, config, &target, &keys);
        if problems.is_empty() {
            report.passed += 1;
        } else {
            let mut text = format!("FAIL case {}: {}\n", index + 1, case.name);
            let _ = writeln!(text, "  who:      {}", who(case, &checked.identity));
            if let Some(access) = &checked.access {
                let _ = writeln!(text, "  request:  {access} on target {target:?}");
            }
            for problem in problems {
                text.push_str(&problem);
            }
            report.failures.push(text);
        }
    }
    Ok(report)
}

fn who(case: &Case, identity: &WorkloadIdentity) -> String {
    let mut parts = Vec::new();
    if !identity.service_account.is_empty() {
        parts.push(format!(
            "service account {}/{}",
            identity.namespace, identity.service_account
        ));
    }
    if let Some(user) = &case.user {
        parts.push(format!("user {user}"));
    }
    if !case.groups.is_empty() {
        parts.push(format!("groups {}", case.groups.join(",")));
    }
    parts.join(", ")
}

fn check<'c>(case: &'c Case, namespace: &str, created: Timestamp) -> Result<Checked<'c>, BadInput> {
    let identity = match &case.service_account {
        Some(sa) => match sa.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                WorkloadIdentity {
                    namespace: ns.to_owned(),
                    service_account: name.to_owned(),
                }
            }
            None if !sa.is_empty() => WorkloadIdentity {
                namespace: namespace.to_owned(),
                service_account: sa.clone(),
            },
            _ => {
                return Err(BadInput(format!(
                    "serviceAccount {sa:?} is not `name` or `namespace/name`"
                )));
            }
        },
        // A user's client behind no particular workload: a service account no policy names.
        None if case.user.is_some() || !case.groups.is_empty() => WorkloadIdentity {
            namespace: namespace.to_owned(),
            service_account: String::new(),
        },
        None => {
            return Err(BadInput(
                "say who makes the request: serviceAccount, user or groups".into(),
            ));
        }
    };
    let resource = resource(case)?;
    let operation = match (&case.operation, &case.api) {
        (Some(_), Some(_)) => {
            return Err(BadInput("give operation or api, not both".into()));
        }
        (Some(op), None) => Some(*op),
        (None, Some(api)) => {
            let Some((_, op, resource_type)) = APIS.iter().find(|(name, _, _)| name == api) else {
                return Err(BadInput(format!(
                    "api {api:?} is not one of {}",
                    APIS.iter().map(|a| a.0).collect::<Vec<_>>().join(", ")
                )));
            };
            if resource.as_ref().is_some_and(|(t, _)| t != resource_type) {
                return Err(BadInput(format!(
                    "api {api} is about a {resource_type}, not the resource named here"
                )));
            }
            Some(*op)
        }
        (None, None) => None,
    };
    let access = match (operation, &resource) {
        (Some(operation), Some((resource_type, name))) => Some(Access {
            resource_type: *resource_type,
            name: name.clone(),
            operation,
        }),
        (Some(_), None) => {
            return Err(BadInput(
                "name the resource: topic, group, transactionalId or cluster: true".into(),
            ));
        }
        (None, _) => None,
    };
    if access.is_some() != case.expect.is_some() {
        return Err(BadInput(if access.is_some() {
            "say which effect is expected: expect: Allow, Deny or RequireApproval".into()
        } else {
            "expect needs an operation (or api) and a resource to decide".into()
        }));
    }
    if case.rule.is_some() && case.expect.is_none() {
        return Err(BadInput("rule needs expect".into()));
    }
    let record = match (&case.record, &case.masked) {
        (Some(record), Some(masked)) => match &resource {
            Some((ResourceType::Topic, topic)) => Some((
                record,
                masked,
                case.flow.unwrap_or(Flow::Consume),
                topic.clone(),
            )),
            _ => return Err(BadInput("a record flows on a topic: name it".into())),
        },
        (None, None) => None,
        _ => {
            return Err(BadInput(
                "give both record and masked (what the record must become)".into(),
            ));
        }
    };
    if access.is_none() && record.is_none() {
        return Err(BadInput(
            "nothing to check: give operation (or api) and expect, or record and masked".into(),
        ));
    }
    let at = match &case.after {
        None => created,
        Some(after) => {
            let duration: SignedDuration = after
                .parse()
                .or_else(|_| after.parse::<i64>().map(SignedDuration::from_secs))
                .map_err(|_| {
                    BadInput(format!(
                        "after {after:?} is not a duration (`90s`, `2h`, `1h 30m`)"
                    ))
                })?;
            created
                .checked_add(duration)
                .map_err(|e| BadInput(format!("after {after:?}: {e}")))?
        }
    };
    Ok(Checked {
        identity,
        access,
        expect: case.expect,
        record,
        target: case.target.as_deref(),
        at,
    })
}

fn resource(case: &Case) -> Result<Option<(ResourceType, String)>, BadInput> {
    let mut named = Vec::new();
    if let Some(topic) = &case.topic {
        named.push((ResourceType::Topic, topic.clone()));
    }
    if let Some(group) = &case.group {
        named.push((ResourceType::Group, group.clone()));
    }
    if let Some(id) = &case.transactional_id {
        named.push((ResourceType::TransactionalId, id.clone()));
    }
    if case.cluster {
        named.push((ResourceType::Cluster, CLUSTER_NAME.to_owned()));
    }
    match named.len() {
        0 => Ok(None),
        1 => Ok(named.pop()),
        _ => Err(BadInput(
            "name one resource: topic, group, transactionalId or cluster".into(),
        )),
    }
}

fn target(config: &ProxyConfig, wanted: Option<&str>) -> Result<String, BadInput> {
    match wanted {
        Some(name) if config.targets.contains_key(name) => Ok(name.to_owned()),
        Some(name) => Err(BadInput(format!(
            "target {name:?} is not a StreamTarget of namespace {} (there are: {})",
            config.identity.namespace,
            config
                .targets
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        None => match config.targets.len() {
            // No target: only policies without a targetRef apply, as on any target.
            0 => Ok(String::new()),
            1 => Ok(config.targets.keys().next().cloned().unwrap_or_default()),
            _ => Err(BadInput(format!(
                "namespace {} has several StreamTargets ({}); say which with `target:`",
                config.identity.namespace,
                config
                    .targets
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        },
    }
}

/// What differs from the case's expectations, one indented paragraph each; empty if it passes.
fn evaluate(
    case: &Case,
    checked: &Checked<'_>,
    config: &ProxyConfig,
    target: &str,
    keys: &MaskingKeys,
) -> Vec<String> {
    let labels = &case.pod_labels;
    let principal = Principal {
        identity: &checked.identity,
        pod_labels: labels,
        user: case.user.as_deref(),
        groups: &case.groups,
    };
    let mut problems = Vec::new();
    if let (Some(access), Some(expect)) = (&checked.access, checked.expect) {
        let decision = config.decide(
            &principal,
            target,
            access.resource_type,
            &access.name,
            access.operation,
            checked.at,
        );
        let rule_ok = case
            .rule
            .as_deref()
            .is_none_or(|rule| rule_matches(rule, &decision.basis));
        if decision.effect != expect || !rule_ok {
            let expected = match &case.rule {
                Some(rule) => format!("{} ({rule})", effect_name(expect)),
                None => effect_name(expect).to_owned(),
            };
            problems.push(format!(
                "  expected: {expected}\n  got:      {}\n",
                describe(&decision)
            ));
        }
    }
    if let Some((record, expected, flow, topic)) = &checked.record {
        problems.extend(check_masking(
            config, &principal, keys, topic, *flow, record, expected,
        ));
    }
    problems
}

/// Whether `expected` names what decided: the full name (`StreamPolicy/p rule r`,
/// `AccessGrant/g`, `default deny`), `policy/rule`, the rule's or the grant's own name, or
/// `default`.
fn rule_matches(expected: &str, basis: &Basis<'_>) -> bool {
    let expected = expected.trim();
    if expected == basis.to_string() {
        return true;
    }
    match basis {
        Basis::Rule { policy, rule } => {
            expected == rule.name || expected == format!("{}/{}", policy.name, rule.name)
        }
        Basis::Grant(grant) => expected == grant.name,
        Basis::Default => expected == "default",
    }
}

fn check_masking(
    config: &ProxyConfig,
    principal: &Principal<'_>,
    keys: &MaskingKeys,
    topic: &str,
    flow: Flow,
    record: &Value,
    expected: &Value,
) -> Option<String> {
    let input = match record {
        Value::String(raw) => raw.clone().into_bytes(),
        other => other.to_string().into_bytes(),
    };
    let plan = match MaskingPlan::new(config.masking_rules_for(topic, flow, principal), flow, keys)
    {
        Ok(plan) => plan,
        // A rule whose key is in no Secret of the folder: the proxy would fail closed.
        Err(error) => {
            return Some(format!(
                "  masking {topic} ({flow:?}): the plan cannot be built: {error}\n"
            ));
        }
    };
    let masked = mask_value(&plan, &input);
    let output = String::from_utf8_lossy(&masked.bytes).into_owned();
    let rules = plan.rules().join(", ");
    let rules = if rules.is_empty() {
        "no MaskingRule applies".to_owned()
    } else {
        format!("MaskingRules {rules}")
    };
    match expected {
        Value::String(want) => (want != &output).then(|| {
            format!(
                "  masking {topic} ({flow:?}, {rules}):\n    expected: {want}\n    got:      {output}\n"
            )
        }),
        want => match serde_json::from_str::<Value>(&output) {
            Ok(got) => {
                let mut differences = Vec::new();
                json_diff("", want, &got, &mut differences);
                (!differences.is_empty()).then(|| {
                    let mut text = format!("  masking {topic} ({flow:?}, {rules}):\n");
                    for d in differences {
                        let _ = writeln!(text, "    {d}");
                    }
                    let _ = writeln!(text, "    masked record: {output}");
                    text
                })
            }
            Err(_) => Some(format!(
                "  masking {topic} ({flow:?}, {rules}): expected JSON {want}\n    got (not JSON): {output}\n"
            )),
        },
    }
}

/// The leaves where `want` and `got` differ, as `/json/pointer: expected X, got Y`.
fn json_diff(path: &str, want: &Value, got: &Value, out: &mut Vec<String>) {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (key, wv) in w {
                let here = format!("{path}/{key}");
                match g.get(key) {
                    Some(gv) => json_diff(&here, wv, gv, out),
                    None => out.push(format!("{here}: expected {wv}, missing")),
                }
            }
            for (key, gv) in g {
                if !w.contains_key(key) {
                    out.push(format!("{path}/{key}: not expected, got {gv}"));
                }
            }
        }
        (Value::Array(w), Value::Array(g)) if w.len() == g.len() => {
            for (index, (wv, gv)) in w.iter().zip(g).enumerate() {
                json_diff(&format!("{path}/{index}"), wv, gv, out);
            }
        }
        _ if want != got => {
            let at = if path.is_empty() { "/" } else { path };
            out.push(format!("{at}: expected {want}, got {got}"));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_differences_name_the_leaf() {
        let mut out = Vec::new();
        json_diff(
            "",
            &json!({"a": {"b": "x", "c": 1}, "d": [1, 2]}),
            &json!({"a": {"b": "y"}, "d": [1, 3], "e": true}),
            &mut out,
        );
        assert_eq!(
            out,
            [
                "/a/b: expected \"x\", got \"y\"",
                "/a/c: expected 1, missing",
                "/d/1: expected 2, got 3",
                "/e: not expected, got true"
            ]
        );
    }

    #[test]
    fn a_case_must_say_what_to_check() {
        let case: Case = serde_yaml::from_str("{name: x, serviceAccount: a, topic: t}").unwrap();
        let error = check(&case, "ns", Timestamp::UNIX_EPOCH).err().unwrap();
        assert!(error.0.contains("nothing to check"), "{error}");
        let case: Case =
            serde_yaml::from_str("{name: x, serviceAccount: a/b/c, topic: t, operation: Read}")
                .unwrap();
        assert!(check(&case, "ns", Timestamp::UNIX_EPOCH).is_err());
        let case: Case =
            serde_yaml::from_str("{name: x, user: u, api: Produce, group: g, expect: Allow}")
                .unwrap();
        let error = check(&case, "ns", Timestamp::UNIX_EPOCH).err().unwrap();
        assert!(error.0.contains("about a Topic"), "{error}");
    }

    #[test]
    fn durations_read_as_people_write_them() {
        let case: Case = serde_yaml::from_str(
            "{name: x, user: u, operation: Read, topic: t, expect: Deny, after: 1h 30m}",
        )
        .unwrap();
        let checked = check(&case, "ns", Timestamp::UNIX_EPOCH).unwrap();
        assert_eq!(checked.at.as_second(), 5400);
    }
}

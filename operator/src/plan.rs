//! The pure middle of a namespace's reconcile: from the custom resources of one namespace and
//! the time, what should exist (a ConfigMap, a Role and a RoleBinding per workload identity),
//! what every object's status should say, which grant Events to record, and when to look
//! again (the next grant start or expiry).
//!
//! Acceptance is a property of each object: it is compiled on its own, so a broken policy is
//! the one marked `Accepted=False`, with the compiler's message as the reason. An identity
//! whose resources do not compile keeps its last good ConfigMap; the objects that apply to it
//! say `Ready=False`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::Resource;
use serde::Serialize;
use streamward_api::compile::{Inputs, compile};
use streamward_api::config::{ProxyConfig, WorkloadIdentity};
use streamward_api::crd::{
    AccessGrantStatus, Approval, ApprovalRequest, MaskingRuleStatus, StreamPolicyStatus,
    StreamTargetStatus, SubjectsSpec, condition,
};

use crate::configs;
use crate::rbac;
use crate::signing::ConfigSigner;
use crate::status::{self, Conditions, GrantFacts, Why, became_true, same_conditions};
use streamward_api::approval::ApprovalSettings;

/// What the caches hold for one namespace.
#[derive(Clone, Debug, Default)]
pub struct Namespace {
    /// The namespace.
    pub name: String,
    /// Its StreamTargets, StreamPolicies, AccessGrants and MaskingRules, with their statuses.
    pub inputs: Inputs,
    /// Its Approvals.
    pub approvals: Vec<Approval>,
    /// Its ApprovalRequests.
    pub requests: Vec<ApprovalRequest>,
    /// The key that signs the configs (none in tests that do not look at signatures).
    pub signer: Option<Arc<ConfigSigner>>,
}

/// What one identity should have.
#[derive(Clone, Debug)]
pub enum IdentityPlan {
    /// A freshly compiled config.
    Write {
        /// Its hash.
        hash: String,
        /// The ConfigMap.
        config_map: Box<ConfigMap>,
        /// The Role reading it.
        role: Box<Role>,
        /// The binding of the Role to the service account.
        binding: Box<RoleBinding>,
    },
    /// The resources do not compile: keep whatever exists.
    KeepLast {
        /// Why.
        error: String,
    },
}

/// A status to write.
#[derive(Clone, Debug, PartialEq)]
pub struct StatusChange {
    /// The kind.
    pub kind: &'static str,
    /// The object's name.
    pub name: String,
    /// The whole `status`.
    pub status: serde_json::Value,
}

/// A grant transition to record as a Kubernetes Event.
#[derive(Clone, Debug, PartialEq)]
pub struct GrantEvent {
    /// The grant.
    pub object: ObjectReference,
    /// `Activated`, `Expired` or `Revoked`.
    pub reason: &'static str,
    /// What happened.
    pub note: String,
}

/// Everything a reconcile of one namespace should do.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// By service account.
    pub identities: BTreeMap<String, IdentityPlan>,
    /// Statuses that differ from what is written.
    pub statuses: Vec<StatusChange>,
    /// Grant transitions.
    pub events: Vec<GrantEvent>,
    /// When to reconcile again even if nothing changes.
    pub wake_at: Option<Timestamp>,
}

/// The service-account name used to compile an object that names no service account of this
/// namespace (a policy for users or groups, a MaskingRule, a StreamTarget).
const ANY_WORKLOAD: &str = "streamward-acceptance-check";

/// Plans the reconcile of `namespace` at `now`.
pub fn plan(namespace: &Namespace, now: Timestamp) -> Result<Plan, serde_json::Error> {
    let ns = namespace.name.as_str();
    let now = status::whole_seconds(now);
    let inputs = &namespace.inputs;
    let approval = ApprovalSettings::for_grants(&inputs.policies);
    let facts: Vec<GrantFacts> = inputs
        .grants
        .iter()
        .map(|g| GrantFacts::of(g, &namespace.approvals, &approval))
        .collect();

    // What compiles: grants that count now, marked approved where an Approval says so (the
    // compiler reads the Approved condition).
    let mut working = Inputs {
        targets: inputs.targets.clone(),
        policies: inputs.policies.clone(),
        masking_rules: inputs.masking_rules.clone(),
        ..Inputs::default()
    };
    for (grant, facts) in inputs.grants.iter().zip(&facts) {
        if facts.compiled_at(now) {
            working.grants.push(approved(grant.clone(), now));
        }
    }

    let mut plan = Plan::default();
    let mut configs: BTreeMap<String, ProxyConfig> = BTreeMap::new();
    let mut failed: BTreeMap<String, String> = BTreeMap::new();
    for identity in configs::identities(&working, ns) {
        let sa = identity.service_account.clone();
        match compile(&working, &identity) {
            Ok(config) => {
                let owners = configs::owners(&config, &working);
                plan.identities.insert(
                    sa.clone(),
                    IdentityPlan::Write {
                        hash: config.hash.clone(),
                        config_map: Box::new(configs::build_config_map(
                            &config,
                            &working,
                            namespace.signer.as_deref(),
                        )?),
                        role: Box::new(rbac::build_role(
                            &identity,
                            &owners,
                            config.holds_requests(),
                        )?),
                        binding: Box::new(rbac::build_role_binding(&identity, &owners)?),
                    },
                );
                configs.insert(sa, config);
            }
            Err(error) => {
                let error = error.to_string();
                plan.identities.insert(
                    sa.clone(),
                    IdentityPlan::KeepLast {
                        error: error.clone(),
                    },
                );
                failed.insert(sa, error);
            }
        }
    }
    let identities: BTreeSet<&String> = configs.keys().chain(failed.keys()).collect();

    // Objects that apply to identities: which identities, and whether all of those compiled.
    let reach = |applies: &dyn Fn(&str) -> bool| -> (i32, Option<String>) {
        let mut count = 0;
        let mut broken = None;
        for sa in &identities {
            if applies(sa) {
                count += 1;
                if let Some(error) = failed.get(*sa) {
                    broken.get_or_insert_with(|| {
                        format!("the config of service account {sa} does not compile: {error}")
                    });
                }
            }
        }
        (count, broken)
    };

    for target in &inputs.targets {
        let one = Inputs {
            targets: vec![target.clone()],
            ..Inputs::default()
        };
        let accepted = accept(&one, &identity(ns, ANY_WORKLOAD));
        let (count, _) = reach(&|_| true);
        let previous = target.status.clone().unwrap_or_default();
        let mut conditions = Conditions::new(&previous.conditions, target.metadata.generation, now);
        accepted_condition(&mut conditions, &accepted);
        conditions.set(
            condition::READY,
            "Unknown",
            why(
                "NotChecked",
                format!(
                    "in the configs of {count} workload(s); the operator does not check broker \
                     connectivity yet"
                ),
            ),
        );
        let status = StreamTargetStatus {
            conditions: conditions.build(),
            last_check_time: previous.last_check_time,
        };
        if !same_conditions(&status.conditions, &previous.conditions) {
            plan.change("StreamTarget", &target.metadata.name, &status)?;
        }
    }

    for policy in &inputs.policies {
        let one = Inputs {
            policies: vec![policy.clone()],
            ..Inputs::default()
        };
        let subjects = &policy.spec.subjects;
        let accepted = accept(&one, &identity(ns, first_service_account(subjects, ns)));
        let (count, broken) = reach(&|sa| names(subjects, ns, sa));
        let previous = policy.status.clone().unwrap_or_default();
        let mut conditions = Conditions::new(&previous.conditions, policy.metadata.generation, now);
        accepted_condition(&mut conditions, &accepted);
        ready_condition(&mut conditions, &accepted, broken, count);
        let status = StreamPolicyStatus {
            conditions: conditions.build(),
            workloads: Some(count),
        };
        if !same_conditions(&status.conditions, &previous.conditions)
            || status.workloads != previous.workloads
        {
            plan.change("StreamPolicy", &policy.metadata.name, &status)?;
        }
    }

    for rule in &inputs.masking_rules {
        let one = Inputs {
            masking_rules: vec![rule.clone()],
            ..Inputs::default()
        };
        let accepted = accept(&one, &identity(ns, ANY_WORKLOAD));
        let exempt = rule.spec.exempt_subjects.clone().unwrap_or_default();
        // Exempt entirely only when no pod selector narrows the exemption.
        let (count, broken) =
            reach(&|sa| exempt.pod_selector.is_some() || !names_by_account(&exempt, ns, sa));
        let previous = rule.status.clone().unwrap_or_default();
        let mut conditions = Conditions::new(&previous.conditions, rule.metadata.generation, now);
        accepted_condition(&mut conditions, &accepted);
        ready_condition(&mut conditions, &accepted, broken, count);
        let status = MaskingRuleStatus {
            conditions: conditions.build(),
            workloads: Some(count),
        };
        if !same_conditions(&status.conditions, &previous.conditions)
            || status.workloads != previous.workloads
        {
            plan.change("MaskingRule", &rule.metadata.name, &status)?;
        }
    }

    for (grant, facts) in inputs.grants.iter().zip(&facts) {
        // Validity does not depend on approval or revocation: check the grant as if it counted.
        let mut counted = approved(grant.clone(), now);
        counted.spec.revoked = false;
        let one = Inputs {
            grants: vec![counted],
            ..Inputs::default()
        };
        let accepted = accept(
            &one,
            &identity(ns, first_service_account(&grant.spec.subjects, ns)),
        );
        let status = status::grant_status(grant, facts, accepted, now);
        let previous: AccessGrantStatus = grant.status.clone().unwrap_or_default();
        if !same_conditions(&status.conditions, &previous.conditions)
            || status.activated_at != previous.activated_at
            || status.expired_at != previous.expired_at
        {
            plan.change("AccessGrant", &grant.metadata.name, &status)?;
        }
        let name = grant.metadata.name.clone().unwrap_or_default();
        let object = grant.object_ref(&());
        let transitions = [
            (
                condition::ACTIVE,
                "Activated",
                format!("AccessGrant {name} is active: its access is in the proxies' configs"),
            ),
            (
                condition::EXPIRED,
                "Expired",
                format!("AccessGrant {name} expired: its access left the proxies' configs"),
            ),
            (
                condition::REVOKED,
                "Revoked",
                format!("AccessGrant {name} was revoked: its access left the proxies' configs"),
            ),
        ];
        for (type_, reason, note) in transitions {
            if became_true(&previous.conditions, &status.conditions, type_) {
                plan.events.push(GrantEvent {
                    object: object.clone(),
                    reason,
                    note,
                });
            }
        }
        plan.wake(facts.next_change(now));
    }

    for request in &namespace.requests {
        // The approvers of the policy whose rule asked (none: the defaults, RBAC alone).
        let settings = inputs
            .policies
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(request.spec.policy.as_str()))
            .map(ApprovalSettings::of_policy)
            .unwrap_or_default();
        let status = status::request_status(request, &namespace.approvals, &settings, now);
        let previous = request.status.clone().unwrap_or_default();
        if !same_conditions(&status.conditions, &previous.conditions)
            || status.decisions != previous.decisions
        {
            plan.change("ApprovalRequest", &request.metadata.name, &status)?;
        }
        plan.wake(Some(request.spec.expiry_time).filter(|t| *t > now));
    }
    Ok(plan)
}

impl Plan {
    fn change<S: Serialize>(
        &mut self,
        kind: &'static str,
        name: &Option<String>,
        status: &S,
    ) -> Result<(), serde_json::Error> {
        self.statuses.push(StatusChange {
            kind,
            name: name.clone().unwrap_or_default(),
            status: serde_json::to_value(status)?,
        });
        Ok(())
    }

    fn wake(&mut self, at: Option<Timestamp>) {
        if let Some(at) = at {
            self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
        }
    }
}

fn why(reason: &'static str, message: impl Into<String>) -> Why {
    Why {
        reason,
        message: message.into(),
    }
}

fn identity(namespace: &str, service_account: &str) -> WorkloadIdentity {
    WorkloadIdentity {
        namespace: namespace.to_string(),
        service_account: service_account.to_string(),
    }
}

/// A grant as the compiler must see it to include it: `Approved=True`, nothing else.
fn approved(
    mut grant: streamward_api::crd::AccessGrant,
    now: Timestamp,
) -> streamward_api::crd::AccessGrant {
    grant.status = Some(AccessGrantStatus {
        conditions: vec![Condition {
            type_: condition::APPROVED.into(),
            status: "True".into(),
            reason: "Approved".into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: Time(now),
        }],
        ..AccessGrantStatus::default()
    });
    grant
}

fn accept(one: &Inputs, identity: &WorkloadIdentity) -> Result<(), String> {
    compile(one, identity)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn accepted_condition(conditions: &mut Conditions<'_>, accepted: &Result<(), String>) {
    match accepted {
        Ok(()) => conditions.flag(condition::ACCEPTED, true, why("Compiled", "valid")),
        Err(message) => conditions.flag(condition::ACCEPTED, false, why("Invalid", message)),
    };
}

fn ready_condition(
    conditions: &mut Conditions<'_>,
    accepted: &Result<(), String>,
    broken: Option<String>,
    count: i32,
) {
    let ready = match (accepted, broken) {
        (Err(_), _) => Err(why("Invalid", "not accepted; see the Accepted condition")),
        (_, Some(message)) => Err(why("WorkloadNotCompiled", message)),
        _ => Ok(why(
            "Compiled",
            format!("in the configs of {count} workload(s)"),
        )),
    };
    let is_ready = ready.is_ok();
    conditions.flag(condition::READY, is_ready, ready.unwrap_or_else(|w| w));
}

/// The first service account of `namespace` that `subjects` name, or [`ANY_WORKLOAD`].
fn first_service_account<'s>(subjects: &'s SubjectsSpec, namespace: &str) -> &'s str {
    subjects
        .service_accounts
        .iter()
        .find_map(|sa| match sa.split_once('/') {
            None => Some(sa.as_str()),
            Some((ns, name)) if ns == namespace => Some(name),
            Some(_) => None,
        })
        .unwrap_or(ANY_WORKLOAD)
}

fn names_by_account(subjects: &SubjectsSpec, namespace: &str, service_account: &str) -> bool {
    subjects
        .service_accounts
        .iter()
        .any(|sa| match sa.split_once('/') {
            None => sa == service_account,
            Some((ns, name)) => ns == namespace && name == service_account,
        })
}

/// Whether subjects could match a workload of `service_account` (users and groups are
/// matched by the proxy, so they could match any workload; pod labels only narrow).
fn names(subjects: &SubjectsSpec, namespace: &str, service_account: &str) -> bool {
    !subjects.users.is_empty()
        || !subjects.groups.is_empty()
        || names_by_account(subjects, namespace, service_account)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::SignedDuration;
    use streamward_api::compile::parse_manifests;

    const POLICY: &str = "apiVersion: streamward.io/v1alpha1
kind: StreamPolicy
metadata: {name: app-reads, namespace: ns, uid: u1, generation: 2}
spec:
  subjects: {serviceAccounts: [app]}
  rules:
  - {resources: [{resourceType: Topic, name: t}], operations: [Read], effect: Allow}
";

    fn grant(start: &str) -> String {
        format!(
            "---
apiVersion: streamward.io/v1alpha1
kind: AccessGrant
metadata: {{name: g, namespace: ns, generation: 1}}
spec:
  subjects: {{serviceAccounts: [app]}}
  resources: [{{resourceType: Topic, name: secret}}]
  operations: [Read]
  startTime: '{start}'
  durationSeconds: 20
  reason: incident
"
        )
    }

    fn namespace(yaml: &str) -> Namespace {
        Namespace {
            name: "ns".into(),
            inputs: parse_manifests(yaml).unwrap(),
            ..Namespace::default()
        }
    }

    fn config_of(plan: &Plan, sa: &str) -> ProxyConfig {
        match &plan.identities[sa] {
            IdentityPlan::Write { config_map, .. } => {
                serde_json::from_str(&config_map.data.as_ref().unwrap()[configs::CONFIG_KEY])
                    .unwrap()
            }
            IdentityPlan::KeepLast { error } => panic!("{error}"),
        }
    }

    /// Writes the planned statuses back, as the API server would.
    fn apply(ns: &mut Namespace, plan: &Plan) {
        for change in &plan.statuses {
            let name = Some(change.name.clone());
            match change.kind {
                "StreamPolicy" => {
                    for p in ns
                        .inputs
                        .policies
                        .iter_mut()
                        .filter(|p| p.metadata.name == name)
                    {
                        p.status = Some(serde_json::from_value(change.status.clone()).unwrap());
                    }
                }
                "AccessGrant" => {
                    for g in ns
                        .inputs
                        .grants
                        .iter_mut()
                        .filter(|g| g.metadata.name == name)
                    {
                        g.status = Some(serde_json::from_value(change.status.clone()).unwrap());
                    }
                }
                other => panic!("{other}"),
            }
        }
    }

    #[test]
    fn a_grant_enters_at_its_start_leaves_at_its_expiry_with_events_and_no_rewrites() {
        let start: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let at = |s: i64| start + SignedDuration::from_secs(s);
        let mut ns = namespace(&format!("{POLICY}{}", grant(&start.to_string())));

        let first = plan(&ns, at(-10)).unwrap();
        assert_eq!(config_of(&first, "app").grants.len(), 1, "not started: in");
        assert_eq!(first.wake_at, Some(at(0)));
        assert!(first.events.is_empty());
        apply(&mut ns, &first);
        assert!(
            plan(&ns, at(-9)).unwrap().statuses.is_empty(),
            "nothing changed"
        );

        let started = plan(&ns, at(0)).unwrap();
        assert_eq!(started.wake_at, Some(at(20)));
        let reasons: Vec<_> = started.events.iter().map(|e| e.reason).collect();
        assert_eq!(reasons, ["Activated"]);
        apply(&mut ns, &started);
        let again = plan(&ns, at(1)).unwrap();
        assert!(again.statuses.is_empty() && again.events.is_empty());

        let ended = plan(&ns, at(20)).unwrap();
        assert!(config_of(&ended, "app").grants.is_empty(), "expired: out");
        assert_eq!(ended.wake_at, None);
        let reasons: Vec<_> = ended.events.iter().map(|e| e.reason).collect();
        assert_eq!(reasons, ["Expired"]);
        apply(&mut ns, &ended);
        assert!(plan(&ns, at(30)).unwrap().statuses.is_empty());
    }

    #[test]
    fn a_broken_policy_is_not_accepted_and_its_identity_keeps_its_last_config() {
        let broken = POLICY
            .replace("app-reads", "broken")
            .replace("uid: u1", "uid: u2")
            .replace("serviceAccounts: [app]", "serviceAccounts: [app, 'a/b/c']");
        let mut ns = namespace(&format!("{POLICY}---\n{broken}"));
        let planned = plan(&ns, Timestamp::now()).unwrap();
        assert!(matches!(
            planned.identities["app"],
            IdentityPlan::KeepLast { .. }
        ));
        apply(&mut ns, &planned);
        let status = |name: &str, type_: &str| -> Condition {
            let p = ns
                .inputs
                .policies
                .iter()
                .find(|p| p.metadata.name.as_deref() == Some(name))
                .unwrap();
            p.status
                .as_ref()
                .unwrap()
                .conditions
                .iter()
                .find(|c| c.type_ == type_)
                .unwrap()
                .clone()
        };
        let refused = status("broken", "Accepted");
        assert_eq!(
            (refused.status.as_str(), refused.reason.as_str()),
            ("False", "Invalid")
        );
        assert!(refused.message.contains("a/b/c"), "{}", refused.message);
        assert_eq!(refused.observed_generation, Some(2));
        assert_eq!(status("app-reads", "Accepted").status, "True");
        let ready = status("app-reads", "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "WorkloadNotCompiled")
        );
    }

    #[test]
    fn a_stored_policy_by_pod_labels_alone_is_not_accepted_and_grants_nothing() {
        // Stored before the CRD and the webhook refused it.
        let labelled = POLICY
            .replace("app-reads", "labelled")
            .replace("uid: u1", "uid: u2")
            .replace(
                "serviceAccounts: [app]",
                "podSelector: {matchLabels: {role: billing}}",
            );
        let mut ns = namespace(&format!("{POLICY}---\n{labelled}"));
        let planned = plan(&ns, Timestamp::now()).unwrap();
        let IdentityPlan::KeepLast { error } = &planned.identities["app"] else {
            panic!("a config was compiled with a policy by labels alone");
        };
        assert!(error.contains("podSelector alone"), "{error}");
        apply(&mut ns, &planned);
        let labelled = ns
            .inputs
            .policies
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some("labelled"))
            .unwrap();
        let status = labelled.status.as_ref().unwrap();
        let accepted = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Accepted")
            .unwrap();
        assert_eq!(accepted.status, "False");
        assert!(
            accepted
                .message
                .starts_with("StreamPolicy ns/labelled: spec.subjects: podSelector alone"),
            "{}",
            accepted.message
        );
        assert_eq!(status.workloads, Some(0), "it applies to no workload");
    }

    #[test]
    fn a_masking_rule_exempting_labelled_pods_of_an_account_still_reaches_it() {
        let rule = "---
apiVersion: streamward.io/v1alpha1
kind: MaskingRule
metadata: {name: emails, namespace: ns, generation: 1}
spec:
  topics: [{name: t}]
  format: Text
  detectors: [{type: Email}]
  exemptSubjects:
    serviceAccounts: [app]
    podSelector: {matchLabels: {role: billing}}
";
        let ns = namespace(&format!("{POLICY}{rule}"));
        let planned = plan(&ns, Timestamp::now()).unwrap();
        let config = config_of(&planned, "app");
        assert_eq!(config.masking.len(), 1, "the proxy matches the labels");
        let change = planned
            .statuses
            .iter()
            .find(|c| c.kind == "MaskingRule")
            .unwrap();
        assert_eq!(change.status["workloads"], 1, "{}", change.status);
    }
}

//! The decision the proxy makes on every request, from a [`ProxyConfig`] alone.
//!
//! For a request of a [`Principal`] on `target`, for operation `op` on resource `type:name`:
//!
//! 1. **Applicable policies** are those whose subjects match the principal and that are not
//!    limited to another target.
//! 2. **Within a policy** the first rule whose resources match (type and name) and whose
//!    operations cover `op` decides for that policy. If no rule matches, the policy is silent.
//!    As in Kafka's authorizer, implied operations only widen allows: an `Allow` rule for
//!    `Read`, `Write`, `Delete` or `Alter` also allows `Describe`, and one for `AlterConfigs`
//!    also allows `DescribeConfigs` ([`Operation::covers`]); a `Deny` or `RequireApproval` rule
//!    is only about the operations it names, or all of them with `All`
//!    ([`Operation::names`]). So denying `Delete` on every topic does not stop clients from
//!    reading metadata.
//! 3. **Grants**: an AccessGrant counts as `Allow` when it is active (`notBefore <= now <
//!    notAfter`, so a grant is expired exactly at its `notAfter`), its subjects match, one of
//!    its resources matches and one of its operations covers `op` (with implications).
//! 4. **Combination**: any `Deny` wins, else `RequireApproval`, else `Allow` (from a rule or a
//!    grant), else the default: `Deny` ([`Basis::Default`]). Among equals, the first policy by
//!    name is reported, then the first grant by name.
//! 5. **Dry run**: a `DryRun` policy decides and is reported, but never changes what the proxy
//!    does. Concretely, the effect is computed from the enforced policies and the grants
//!    alone; when that effect is `Allow` and a `DryRun` policy would have denied (or required
//!    approval), the decision is `Allow` with `dry_run = true`, `would` = the dry-run rule's
//!    effect and that rule as its basis. The default deny is relaxed the same way when every
//!    applicable policy is `DryRun` (and there is at least one): `Allow`, `dry_run`, `would =
//!    Deny`. When an `Enforce` policy applies, or no policy applies at all, the default deny
//!    is enforced. When an enforced rule and a dry-run rule both deny, the enforced one is
//!    reported (`dry_run = false`). So adding a `DryRun` policy can never let through a request
//!    that would be refused without it.
//!
//! Nothing on this path allocates: matching compares borrowed strings, and the [`Decision`]
//! borrows the rule or grant that made it.

use std::collections::BTreeMap;
use std::fmt;

use jiff::Timestamp;

use crate::acl::{Operation, ResourceType};
use crate::compile::is_service_account;
use crate::config::{
    CompiledGrant, CompiledMaskingRule, CompiledPolicy, CompiledRule, Effect, Flow, Guardrails,
    Mode, ProxyConfig, Subjects, WorkloadIdentity,
};

/// Who is making a request: the workload the proxy runs for and, when the client
/// authenticated to the proxy, the user and their groups.
#[derive(Clone, Copy, Debug)]
pub struct Principal<'a> {
    /// The pod's namespace and service account.
    pub identity: &'a WorkloadIdentity,
    /// The pod's labels.
    pub pod_labels: &'a BTreeMap<String, String>,
    /// The user the client authenticated as, if it did.
    pub user: Option<&'a str>,
    /// That user's groups.
    pub groups: &'a [String],
}

/// What the proxy does with a request, and why.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision<'c> {
    /// What the proxy does.
    pub effect: Effect,
    /// The rule, grant or default that decided.
    pub basis: Basis<'c>,
    /// `true` when a `DryRun` policy decided `Deny` or `RequireApproval` (or its default deny
    /// applied) but the request is allowed because the policy does not enforce.
    pub dry_run: bool,
    /// The effect before dry-run relaxation; equal to `effect` unless `dry_run`.
    pub would: Effect,
}

/// What a [`Decision`] rests on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Basis<'c> {
    /// A rule of a policy.
    Rule {
        /// The policy.
        policy: &'c CompiledPolicy,
        /// Its first rule that matched.
        rule: &'c CompiledRule,
    },
    /// An active AccessGrant.
    Grant(&'c CompiledGrant),
    /// No rule and no grant matched: default deny.
    Default,
}

impl fmt::Display for Basis<'_> {
    /// `StreamPolicy/orders-team rule deny-deletes`, `AccessGrant/oncall-123` or `default deny`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Basis::Rule { policy, rule } => {
                write!(f, "StreamPolicy/{} rule {}", policy.name, rule.name)
            }
            Basis::Grant(grant) => write!(f, "AccessGrant/{}", grant.name),
            Basis::Default => f.write_str("default deny"),
        }
    }
}

impl Decision<'_> {
    /// What decided, as audit events and Kafka error messages name it:
    /// `StreamPolicy/orders-team rule deny-deletes`, `AccessGrant/oncall-123` or
    /// `default deny`. (Allocates; [`Basis`] implements `Display` for writing it in place.)
    pub fn rule_name(&self) -> String {
        self.basis.to_string()
    }
}

impl Subjects {
    /// Whether the subjects match the principal: its service account is listed (as
    /// `namespace/name`), its user is listed, or it shares a group with the list; and, when
    /// a pod selector is set, its pod carries every listed label. The pod's author chooses its
    /// labels, so they only narrow: subjects that list labels alone (a config compiled before
    /// the compiler refused them) match no one.
    pub fn matches(&self, principal: &Principal<'_>) -> bool {
        let named = self
            .service_accounts
            .iter()
            .any(|sa| is_service_account(sa, principal.identity))
            || principal
                .user
                .is_some_and(|user| self.users.iter().any(|u| u == user))
            || self.groups.iter().any(|g| principal.groups.contains(g));
        named
            && self.pod_labels.as_ref().is_none_or(|wanted| {
                wanted
                    .iter()
                    .all(|(key, value)| principal.pod_labels.get(key) == Some(value))
            })
    }
}

impl CompiledRule {
    /// Whether this rule covers `operation` on resource `name` of type `resource_type`: with
    /// Kafka's implied operations for an `Allow` rule, without them otherwise.
    pub fn matches(&self, resource_type: ResourceType, name: &str, operation: Operation) -> bool {
        let covered = |op: &Operation| match self.effect {
            Effect::Allow => op.covers(operation),
            Effect::Deny | Effect::RequireApproval => op.names(operation),
        };
        self.operations.iter().any(covered)
            && self
                .resources
                .iter()
                .any(|pattern| pattern.matches(resource_type, name))
    }
}

impl CompiledGrant {
    /// Whether the grant counts at `now`: `notBefore <= now < notAfter`.
    pub fn is_active_at(&self, now: Timestamp) -> bool {
        self.not_before <= now && now < self.not_after
    }

    /// Whether the grant covers `operation` on resource `name` of type `resource_type`
    /// (regardless of time and subjects).
    pub fn covers(&self, resource_type: ResourceType, name: &str, operation: Operation) -> bool {
        self.operations.iter().any(|op| op.covers(operation))
            && self
                .resources
                .iter()
                .any(|pattern| pattern.matches(resource_type, name))
    }
}

impl CompiledPolicy {
    /// Whether the policy applies to a request of `principal` on `target`: its subjects match
    /// and it is not limited to another target.
    pub fn applies_to(&self, principal: &Principal<'_>, target: &str) -> bool {
        self.target.as_deref().is_none_or(|t| t == target) && self.subjects.matches(principal)
    }

    /// The first rule that covers the request, if any.
    pub fn first_match(
        &self,
        resource_type: ResourceType,
        name: &str,
        operation: Operation,
    ) -> Option<&CompiledRule> {
        self.rules
            .iter()
            .find(|rule| rule.matches(resource_type, name, operation))
    }
}

impl CompiledMaskingRule {
    /// Whether the rule masks records of `topic` flowing `flow` for `principal`: it covers the
    /// flow and the topic, and does not exempt the principal.
    pub fn applies_to(&self, topic: &str, flow: Flow, principal: &Principal<'_>) -> bool {
        self.direction.covers(flow)
            && self
                .topics
                .iter()
                .any(|pattern| pattern.matches(ResourceType::Topic, topic))
            && !self.exempt.matches(principal)
    }
}

/// The strongest candidate seen so far (the first among equals). [`Effect`] is ordered
/// `Allow < RequireApproval < Deny`.
#[derive(Clone, Copy)]
struct Strongest<'c>(Option<(Effect, Basis<'c>)>);

impl<'c> Strongest<'c> {
    fn offer(&mut self, effect: Effect, basis: Basis<'c>) {
        if self.0.is_none_or(|(best, _)| effect > best) {
            self.0 = Some((effect, basis));
        }
    }
}

impl ProxyConfig {
    /// The MaskingRules that apply to records of `topic` flowing `flow` for `principal`, in
    /// name order: what the proxy builds a masking plan from. None means the records pass
    /// untouched.
    pub fn masking_rules_for<'c, 'q>(
        &'c self,
        topic: &'q str,
        flow: Flow,
        principal: &'q Principal<'q>,
    ) -> impl Iterator<Item = &'c CompiledMaskingRule> + 'q
    where
        'c: 'q,
    {
        self.masking
            .iter()
            .filter(move |rule| rule.applies_to(topic, flow, principal))
    }

    /// Decides a request; see the module documentation for the semantics.
    pub fn decide<'c>(
        &'c self,
        principal: &Principal<'_>,
        target: &str,
        resource_type: ResourceType,
        name: &str,
        operation: Operation,
        now: Timestamp,
    ) -> Decision<'c> {
        let mut enforced = Strongest(None);
        let mut dry = Strongest(None);
        let (mut any_policy, mut any_enforcing) = (false, false);
        for policy in self
            .policies
            .iter()
            .filter(|p| p.applies_to(principal, target))
        {
            any_policy = true;
            let enforcing = policy.mode == Mode::Enforce;
            any_enforcing |= enforcing;
            if let Some(rule) = policy.first_match(resource_type, name, operation) {
                let side = if enforcing { &mut enforced } else { &mut dry };
                side.offer(rule.effect, Basis::Rule { policy, rule });
            }
        }
        // A grant only ever allows, so the first one is as good as any; skip the search when
        // a deny or an approval already stands.
        if enforced.0.is_none()
            && let Some(grant) = self.grants.iter().find(|g| {
                g.is_active_at(now)
                    && g.covers(resource_type, name, operation)
                    && g.subjects.matches(principal)
            })
        {
            enforced.offer(Effect::Allow, Basis::Grant(grant));
        }

        let enforced = match enforced.0 {
            Some(decided) => Some(decided),
            // Default deny, unless only dry-run policies apply: they decide nothing enforced.
            None if any_enforcing || !any_policy => Some((Effect::Deny, Basis::Default)),
            None => None,
        };
        match (enforced, dry.0) {
            (Some((Effect::Allow, _)) | None, Some((would, basis))) if would != Effect::Allow => {
                Decision {
                    effect: Effect::Allow,
                    basis,
                    dry_run: true,
                    would,
                }
            }
            (Some((effect, basis)), _) => Decision {
                effect,
                basis,
                dry_run: false,
                would: effect,
            },
            // Only dry-run policies apply and one of them allows.
            (None, Some((_, basis))) => Decision {
                effect: Effect::Allow,
                basis,
                dry_run: false,
                would: Effect::Allow,
            },
            // Only dry-run policies apply and none has a rule for this: their default deny.
            (None, None) => Decision {
                effect: Effect::Allow,
                basis: Basis::Default,
                dry_run: true,
                would: Effect::Deny,
            },
        }
    }

    /// The guardrails of the enforced policies that apply to `principal` on `target`, for the
    /// proxy to check on allowed requests (topic creation, produce settings).
    pub fn guardrails_for<'c>(
        &'c self,
        principal: &Principal<'_>,
        target: &str,
    ) -> impl Iterator<Item = (&'c CompiledPolicy, &'c Guardrails)> {
        self.policies
            .iter()
            .filter(move |p| p.mode == Mode::Enforce && p.applies_to(principal, target))
            .map(|p| (p, &p.guardrails))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::{PatternType, ResourcePattern};
    use crate::config::AuditLevel;
    use Effect::{Allow, Deny, RequireApproval};
    use Operation::{All, AlterConfigs, Delete, Describe, DescribeConfigs, Read, Write};
    use ResourceType::{Group, Topic};

    fn identity() -> WorkloadIdentity {
        WorkloadIdentity {
            namespace: "demo".into(),
            service_account: "orders-app".into(),
        }
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn now() -> Timestamp {
        ts("2025-06-01T12:00:00Z")
    }

    fn pattern(
        resource_type: ResourceType,
        name: &str,
        pattern_type: PatternType,
    ) -> ResourcePattern {
        ResourcePattern::new(resource_type, name, pattern_type).unwrap()
    }

    fn rule(
        name: &str,
        resource: ResourcePattern,
        operations: &[Operation],
        effect: Effect,
    ) -> CompiledRule {
        CompiledRule {
            name: name.into(),
            resources: vec![resource],
            operations: operations.to_vec(),
            effect,
            hold_seconds: None,
        }
    }

    fn topics(prefix: &str) -> ResourcePattern {
        pattern(Topic, prefix, PatternType::Prefixed)
    }

    fn every_topic() -> ResourcePattern {
        pattern(Topic, "*", PatternType::Literal)
    }

    fn for_app() -> Subjects {
        Subjects {
            service_accounts: vec!["demo/orders-app".into()],
            ..Subjects::default()
        }
    }

    fn policy(name: &str, mode: Mode, rules: Vec<CompiledRule>) -> CompiledPolicy {
        CompiledPolicy {
            name: name.into(),
            target: None,
            subjects: for_app(),
            rules,
            mode,
            guardrails: Guardrails::default(),
            audit_level: AuditLevel::Metadata,
            approval: Default::default(),
        }
    }

    fn grant(
        name: &str,
        subjects: Subjects,
        resource: ResourcePattern,
        operations: &[Operation],
    ) -> CompiledGrant {
        CompiledGrant {
            name: name.into(),
            subjects,
            resources: vec![resource],
            operations: operations.to_vec(),
            not_before: ts("2025-06-01T11:00:00Z"),
            not_after: ts("2025-06-01T13:00:00Z"),
        }
    }

    fn config(policies: Vec<CompiledPolicy>, grants: Vec<CompiledGrant>) -> ProxyConfig {
        ProxyConfig {
            identity: identity(),
            targets: BTreeMap::new(),
            policies,
            grants,
            masking: Vec::new(),
            hash: String::new(),
        }
    }

    struct Who {
        identity: WorkloadIdentity,
        labels: BTreeMap<String, String>,
        user: Option<&'static str>,
        groups: Vec<String>,
    }

    impl Who {
        fn app() -> Who {
            Who {
                identity: identity(),
                labels: BTreeMap::new(),
                user: None,
                groups: Vec::new(),
            }
        }

        fn other_app() -> Who {
            Who {
                identity: WorkloadIdentity {
                    namespace: "demo".into(),
                    service_account: "billing-app".into(),
                },
                ..Who::app()
            }
        }

        fn principal(&self) -> Principal<'_> {
            Principal {
                identity: &self.identity,
                pod_labels: &self.labels,
                user: self.user,
                groups: &self.groups,
            }
        }
    }

    fn decide<'c>(
        config: &'c ProxyConfig,
        who: &Who,
        rt: ResourceType,
        name: &str,
        op: Operation,
    ) -> Decision<'c> {
        config.decide(&who.principal(), "local-kafka", rt, name, op, now())
    }

    #[test]
    fn effects_are_ordered_by_strength() {
        assert!(Allow < RequireApproval && RequireApproval < Deny);
    }

    #[test]
    fn the_first_matching_rule_of_a_policy_decides() {
        let config = config(
            vec![policy(
                "orders-team",
                Mode::Enforce,
                vec![
                    rule(
                        "deny-deletes",
                        pattern(Topic, "*", PatternType::Literal),
                        &[Delete],
                        Deny,
                    ),
                    rule("orders", topics("orders."), &[All], Allow),
                    rule("never-reached", topics("orders."), &[Delete], Allow),
                ],
            )],
            vec![],
        );
        let app = Who::app();
        let d = decide(&config, &app, Topic, "orders.created", Delete);
        assert_eq!((d.effect, d.dry_run, d.would), (Deny, false, Deny));
        assert_eq!(d.rule_name(), "StreamPolicy/orders-team rule deny-deletes");
        let d = decide(&config, &app, Topic, "orders.created", Write);
        assert_eq!(d.effect, Allow);
        assert_eq!(d.rule_name(), "StreamPolicy/orders-team rule orders");
    }

    #[test]
    fn a_deny_in_any_policy_wins_over_an_allow_in_another() {
        let config = config(
            vec![
                policy(
                    "a-allow",
                    Mode::Enforce,
                    vec![rule("all", every_topic(), &[All], Allow)],
                ),
                policy(
                    "b-approval",
                    Mode::Enforce,
                    vec![rule("ask", topics("orders."), &[Write], RequireApproval)],
                ),
                policy(
                    "c-deny",
                    Mode::Enforce,
                    vec![rule("no-payments", topics("payments."), &[All], Deny)],
                ),
            ],
            vec![],
        );
        let app = Who::app();
        let d = decide(&config, &app, Topic, "payments.eu", Read);
        assert_eq!(d.effect, Deny);
        assert_eq!(d.rule_name(), "StreamPolicy/c-deny rule no-payments");
        let d = decide(&config, &app, Topic, "orders.created", Write);
        assert_eq!(d.effect, RequireApproval);
        assert_eq!(d.rule_name(), "StreamPolicy/b-approval rule ask");
        let d = decide(&config, &app, Topic, "orders.created", Read);
        assert_eq!(d.effect, Allow);
        assert_eq!(d.rule_name(), "StreamPolicy/a-allow rule all");
    }

    #[test]
    fn implied_operations_are_covered() {
        let config = config(
            vec![policy(
                "p",
                Mode::Enforce,
                vec![
                    rule("read", topics("orders."), &[Read], Allow),
                    rule("configs", topics("orders."), &[AlterConfigs], Allow),
                ],
            )],
            vec![],
        );
        let app = Who::app();
        assert_eq!(
            decide(&config, &app, Topic, "orders.x", Describe).effect,
            Allow
        );
        assert_eq!(
            decide(&config, &app, Topic, "orders.x", DescribeConfigs).effect,
            Allow
        );
        assert_eq!(decide(&config, &app, Topic, "orders.x", Write).effect, Deny);
        assert_eq!(decide(&config, &app, Group, "orders.x", Read).effect, Deny);
    }

    #[test]
    fn prefix_and_glob_patterns_match() {
        let config = config(
            vec![policy(
                "p",
                Mode::Enforce,
                vec![
                    rule(
                        "groups",
                        pattern(Group, "orders-*-consumers", PatternType::Glob),
                        &[Read],
                        Allow,
                    ),
                    rule("topics", topics("orders."), &[Read], Allow),
                ],
            )],
            vec![],
        );
        let app = Who::app();
        assert_eq!(
            decide(&config, &app, Group, "orders-eu-consumers", Read).effect,
            Allow
        );
        assert_eq!(
            decide(&config, &app, Group, "orders-eu-producers", Read).effect,
            Deny
        );
        assert_eq!(
            decide(&config, &app, Topic, "orders.eu", Read).effect,
            Allow
        );
        assert_eq!(decide(&config, &app, Topic, "ordersX", Read).effect, Deny);
    }

    #[test]
    fn no_applicable_policy_means_default_deny() {
        let config = config(
            vec![policy(
                "p",
                Mode::Enforce,
                vec![rule("r", every_topic(), &[All], Allow)],
            )],
            vec![],
        );
        let d = decide(&config, &Who::other_app(), Topic, "orders", Read);
        assert_eq!(
            d,
            Decision {
                effect: Deny,
                basis: Basis::Default,
                dry_run: false,
                would: Deny
            }
        );
        assert_eq!(d.rule_name(), "default deny");
        let empty = super::tests::config(vec![], vec![]);
        assert_eq!(
            decide(&empty, &Who::app(), Topic, "orders", Read).effect,
            Deny
        );
    }

    #[test]
    fn a_silent_enforced_policy_means_default_deny() {
        let config = config(
            vec![policy(
                "p",
                Mode::Enforce,
                vec![rule("r", topics("orders."), &[Read], Allow)],
            )],
            vec![],
        );
        let d = decide(&config, &Who::app(), Topic, "inventory", Read);
        assert_eq!(
            (d.effect, d.basis, d.dry_run),
            (Deny, Basis::Default, false)
        );
    }

    #[test]
    fn active_grants_allow_and_expire_exactly_at_not_after() {
        let alice = Subjects {
            users: vec!["alice".into()],
            ..Subjects::default()
        };
        let config = config(
            vec![policy(
                "p",
                Mode::Enforce,
                vec![rule("r", topics("orders."), &[Read], Allow)],
            )],
            vec![grant(
                "oncall-123",
                alice,
                pattern(Topic, "payments.audit", PatternType::Literal),
                &[Read],
            )],
        );
        let who = Who {
            user: Some("alice"),
            ..Who::app()
        };
        let at = |t: &str| {
            config.decide(
                &who.principal(),
                "local-kafka",
                Topic,
                "payments.audit",
                Read,
                ts(t),
            )
        };
        assert_eq!(at("2025-06-01T10:59:59.999Z").effect, Deny);
        let d = at("2025-06-01T11:00:00Z");
        assert_eq!(d.effect, Allow);
        assert_eq!(d.rule_name(), "AccessGrant/oncall-123");
        assert_eq!(at("2025-06-01T12:59:59.999999999Z").effect, Allow);
        let d = at("2025-06-01T13:00:00Z");
        assert_eq!((d.effect, d.basis), (Deny, Basis::Default));
        // Not for someone else, nor for another operation or resource.
        let bob = Who {
            user: Some("bob"),
            ..Who::app()
        };
        assert_eq!(
            decide(&config, &bob, Topic, "payments.audit", Read).effect,
            Deny
        );
        assert_eq!(
            decide(&config, &who, Topic, "payments.audit", Write).effect,
            Deny
        );
        assert_eq!(
            decide(&config, &who, Topic, "payments.eu", Read).effect,
            Deny
        );
        // Describe is implied by Read.
        assert_eq!(
            decide(&config, &who, Topic, "payments.audit", Describe).effect,
            Allow
        );
    }

    #[test]
    fn a_grant_never_overrides_a_deny_or_an_approval() {
        let config = config(
            vec![policy(
                "p",
                Mode::Enforce,
                vec![
                    rule("no-payments", topics("payments."), &[Write], Deny),
                    rule("ask", topics("payments."), &[Read], RequireApproval),
                ],
            )],
            vec![grant("g", for_app(), topics("payments."), &[All])],
        );
        let app = Who::app();
        assert_eq!(
            decide(&config, &app, Topic, "payments.x", Write).effect,
            Deny
        );
        assert_eq!(
            decide(&config, &app, Topic, "payments.x", Read).effect,
            RequireApproval
        );
        let d = decide(&config, &app, Topic, "payments.x", Describe);
        assert_eq!(d.effect, Allow);
        assert_eq!(d.rule_name(), "AccessGrant/g");
    }

    #[test]
    fn denies_and_approvals_do_not_imply_describe() {
        let config = config(
            vec![policy(
                "p",
                Mode::Enforce,
                vec![
                    rule("no-admin", every_topic(), &[Delete, AlterConfigs], Deny),
                    rule("ask", every_topic(), &[Write], RequireApproval),
                    rule("look", every_topic(), &[Describe, DescribeConfigs], Allow),
                ],
            )],
            vec![],
        );
        let app = Who::app();
        assert_eq!(decide(&config, &app, Topic, "t", Delete).effect, Deny);
        assert_eq!(
            decide(&config, &app, Topic, "t", Write).effect,
            RequireApproval
        );
        let d = decide(&config, &app, Topic, "t", Describe);
        assert_eq!(
            (d.effect, d.rule_name().as_str()),
            (Allow, "StreamPolicy/p rule look")
        );
        assert_eq!(
            decide(&config, &app, Topic, "t", DescribeConfigs).effect,
            Allow
        );
        let all = config_with_rule(rule("nothing", every_topic(), &[All], Deny));
        assert_eq!(decide(&all, &app, Topic, "t", Describe).effect, Deny);
    }

    fn config_with_rule(rule: CompiledRule) -> ProxyConfig {
        config(vec![policy("p", Mode::Enforce, vec![rule])], vec![])
    }

    #[test]
    fn a_dry_run_deny_is_reported_but_allowed() {
        let config = config(
            vec![
                policy(
                    "enforced",
                    Mode::Enforce,
                    vec![rule("all", every_topic(), &[All], Allow)],
                ),
                policy(
                    "new",
                    Mode::DryRun,
                    vec![rule("no-deletes", every_topic(), &[Delete], Deny)],
                ),
            ],
            vec![],
        );
        let d = decide(&config, &Who::app(), Topic, "orders", Delete);
        assert_eq!((d.effect, d.dry_run, d.would), (Allow, true, Deny));
        assert_eq!(d.rule_name(), "StreamPolicy/new rule no-deletes");
        let d = decide(&config, &Who::app(), Topic, "orders", Read);
        assert_eq!((d.effect, d.dry_run, d.would), (Allow, false, Allow));
        assert_eq!(d.rule_name(), "StreamPolicy/enforced rule all");
    }

    #[test]
    fn a_dry_run_require_approval_is_reported_but_allowed() {
        let config = config(
            vec![policy(
                "new",
                Mode::DryRun,
                vec![rule("ask", every_topic(), &[Write], RequireApproval)],
            )],
            vec![],
        );
        let d = decide(&config, &Who::app(), Topic, "orders", Write);
        assert_eq!(
            (d.effect, d.dry_run, d.would),
            (Allow, true, RequireApproval)
        );
    }

    #[test]
    fn default_deny_is_relaxed_only_when_every_applicable_policy_is_dry_run() {
        let dry = policy(
            "new",
            Mode::DryRun,
            vec![rule("orders", topics("orders."), &[Read], Allow)],
        );
        let only_dry = config(vec![dry.clone()], vec![]);
        let d = decide(&only_dry, &Who::app(), Topic, "inventory", Read);
        assert_eq!(
            d,
            Decision {
                effect: Allow,
                basis: Basis::Default,
                dry_run: true,
                would: Deny
            }
        );
        // The dry-run policy's own allow is just an allow.
        let d = decide(&only_dry, &Who::app(), Topic, "orders.x", Read);
        assert_eq!((d.effect, d.dry_run, d.would), (Allow, false, Allow));
        assert_eq!(d.rule_name(), "StreamPolicy/new rule orders");

        let enforced = policy(
            "old",
            Mode::Enforce,
            vec![rule("x", topics("x."), &[Read], Allow)],
        );
        let mixed = config(vec![dry, enforced], vec![]);
        let d = decide(&mixed, &Who::app(), Topic, "inventory", Read);
        assert_eq!(
            d,
            Decision {
                effect: Deny,
                basis: Basis::Default,
                dry_run: false,
                would: Deny
            }
        );
        // An allow by a dry-run policy does not lift an enforced default deny.
        let d = decide(&mixed, &Who::app(), Topic, "orders.x", Read);
        assert_eq!(
            (d.effect, d.basis, d.dry_run),
            (Deny, Basis::Default, false)
        );
    }

    #[test]
    fn a_dry_run_deny_never_lifts_an_enforced_refusal() {
        let config = config(
            vec![
                policy(
                    "a-dry",
                    Mode::DryRun,
                    vec![rule("dry-deny", every_topic(), &[All], Deny)],
                ),
                policy(
                    "b-enforced",
                    Mode::Enforce,
                    vec![
                        rule("deny", topics("payments."), &[All], Deny),
                        rule("ask", topics("orders."), &[Write], RequireApproval),
                        rule("read", topics("orders."), &[Read], Allow),
                    ],
                ),
            ],
            vec![],
        );
        let app = Who::app();
        let d = decide(&config, &app, Topic, "payments.x", Read);
        assert_eq!((d.effect, d.dry_run, d.would), (Deny, false, Deny));
        assert_eq!(d.rule_name(), "StreamPolicy/b-enforced rule deny");
        let d = decide(&config, &app, Topic, "orders.x", Write);
        assert_eq!(
            (d.effect, d.dry_run, d.would),
            (RequireApproval, false, RequireApproval)
        );
        // Silent enforced policy: default deny, although the dry-run policy has a rule.
        let d = decide(&config, &app, Topic, "inventory", Read);
        assert_eq!(
            (d.effect, d.basis, d.dry_run),
            (Deny, Basis::Default, false)
        );
        // Enforced allow + dry-run deny: forwarded, reported as would-deny.
        let d = decide(&config, &app, Topic, "orders.x", Read);
        assert_eq!((d.effect, d.dry_run, d.would), (Allow, true, Deny));
        assert_eq!(d.rule_name(), "StreamPolicy/a-dry rule dry-deny");
    }

    #[test]
    fn a_dry_run_deny_is_reported_over_a_grant() {
        let config = config(
            vec![policy(
                "new",
                Mode::DryRun,
                vec![rule("no", every_topic(), &[Read], Deny)],
            )],
            vec![grant("g", for_app(), every_topic(), &[Read])],
        );
        let d = decide(&config, &Who::app(), Topic, "x", Read);
        assert_eq!((d.effect, d.dry_run, d.would), (Allow, true, Deny));
        assert_eq!(d.rule_name(), "StreamPolicy/new rule no");
    }

    #[test]
    fn subjects_match_service_accounts_users_and_groups_narrowed_by_labels() {
        let app = Who::app();
        assert!(for_app().matches(&app.principal()));
        assert!(!for_app().matches(&Who::other_app().principal()));
        let other_ns = Who {
            identity: WorkloadIdentity {
                namespace: "prod".into(),
                service_account: "orders-app".into(),
            },
            ..Who::app()
        };
        assert!(!for_app().matches(&other_ns.principal()));

        // Labels narrow the service accounts, users or groups; they never select alone.
        let labels = BTreeMap::from([
            ("team".to_owned(), "orders".to_owned()),
            ("tier".to_owned(), "api".to_owned()),
        ]);
        let labelled = Subjects {
            service_accounts: vec!["demo/billing-app".into()],
            pod_labels: Some(labels.clone()),
            ..Subjects::default()
        };
        let mut who = Who::other_app();
        who.labels = BTreeMap::from([("team".into(), "orders".into())]);
        assert!(
            !labelled.matches(&who.principal()),
            "every label must match"
        );
        who.labels.insert("tier".into(), "api".into());
        who.labels.insert("extra".into(), "x".into());
        assert!(labelled.matches(&who.principal()));
        let mut impostor = Who::app();
        impostor.labels = who.labels.clone();
        assert!(
            !labelled.matches(&impostor.principal()),
            "labels do not make another service account a subject"
        );
        who.labels.insert("tier".into(), "web".into());
        assert!(!labelled.matches(&who.principal()));
        let labels_only = Subjects {
            pod_labels: Some(labels),
            ..Subjects::default()
        };
        assert!(
            !labels_only.matches(&impostor.principal()),
            "labels alone match no one"
        );
        assert!(
            !Subjects {
                pod_labels: Some(BTreeMap::new()),
                ..Subjects::default()
            }
            .matches(&Who::other_app().principal()),
            "an empty selector alone matches no one"
        );
        let narrowed_by_nothing = Subjects {
            service_accounts: vec!["demo/billing-app".into()],
            pod_labels: Some(BTreeMap::new()),
            ..Subjects::default()
        };
        assert!(narrowed_by_nothing.matches(&Who::other_app().principal()));
        let alice_on_api_pods = Subjects {
            users: vec!["alice".into()],
            pod_labels: Some(BTreeMap::from([("tier".into(), "api".into())])),
            ..Subjects::default()
        };
        let mut alice = Who {
            user: Some("alice"),
            ..Who::app()
        };
        assert!(!alice_on_api_pods.matches(&alice.principal()));
        alice.labels.insert("tier".into(), "api".into());
        assert!(alice_on_api_pods.matches(&alice.principal()));

        let users = Subjects {
            users: vec!["alice".into()],
            ..Subjects::default()
        };
        assert!(!users.matches(&app.principal()));
        assert!(
            users.matches(
                &Who {
                    user: Some("alice"),
                    ..Who::app()
                }
                .principal()
            )
        );
        assert!(
            !users.matches(
                &Who {
                    user: Some("alicia"),
                    ..Who::app()
                }
                .principal()
            )
        );

        let groups = Subjects {
            groups: vec!["sre".into(), "dba".into()],
            ..Subjects::default()
        };
        assert!(!groups.matches(&app.principal()));
        let sre = Who {
            user: Some("bob"),
            groups: vec!["dev".into(), "sre".into()],
            ..Who::app()
        };
        assert!(groups.matches(&sre.principal()));
        assert!(
            !Subjects::default().matches(&sre.principal()),
            "empty subjects match no one"
        );
    }

    #[test]
    fn user_and_group_policies_apply_on_any_workload() {
        let mut sre_policy = policy(
            "sre",
            Mode::Enforce,
            vec![rule("read", every_topic(), &[Read], Allow)],
        );
        sre_policy.subjects = Subjects {
            groups: vec!["sre".into()],
            ..Subjects::default()
        };
        let config = config(vec![sre_policy], vec![]);
        let sre = Who {
            user: Some("bob"),
            groups: vec!["sre".into()],
            ..Who::other_app()
        };
        assert_eq!(decide(&config, &sre, Topic, "anything", Read).effect, Allow);
        assert_eq!(
            decide(&config, &Who::other_app(), Topic, "anything", Read).effect,
            Deny
        );
    }

    #[test]
    fn target_scoped_policies_apply_only_to_their_target() {
        let mut scoped = policy(
            "scoped",
            Mode::Enforce,
            vec![rule("read", every_topic(), &[Read], Allow)],
        );
        scoped.target = Some("local-kafka".into());
        let config = config(vec![scoped], vec![]);
        let app = Who::app();
        let on = |target: &str| {
            config
                .decide(&app.principal(), target, Topic, "t", Read, now())
                .effect
        };
        assert_eq!(on("local-kafka"), Allow);
        assert_eq!(on("other-kafka"), Deny);
    }

    #[test]
    fn guardrails_come_from_enforced_applicable_policies() {
        let mut limited = policy("limited", Mode::Enforce, vec![]);
        limited.guardrails.max_partitions = Some(12);
        let mut dry = policy("dry", Mode::DryRun, vec![]);
        dry.guardrails.require_acks_all = true;
        let mut other = policy("other", Mode::Enforce, vec![]);
        other.target = Some("other-kafka".into());
        other.guardrails.max_replication_factor = Some(3);
        let config = config(vec![limited, dry, other], vec![]);
        let app = Who::app();
        let found: Vec<_> = config
            .guardrails_for(&app.principal(), "local-kafka")
            .map(|(p, g)| (p.name.as_str(), g.max_partitions))
            .collect();
        assert_eq!(found, [("limited", Some(12))]);
        assert_eq!(
            config
                .guardrails_for(&Who::other_app().principal(), "local-kafka")
                .count(),
            0
        );
    }

    #[test]
    fn masking_rules_apply_by_topic_flow_and_exemption() {
        use crate::config::{MaskDirection, MaskStrategy, OnParseError, ValueFormat};
        let rule = |name: &str, direction, exempt: Subjects| CompiledMaskingRule {
            name: name.into(),
            topics: vec![topics("orders.")],
            direction,
            format: ValueFormat::Json,
            fields: vec![crate::config::CompiledField {
                path: "$.email".into(),
                strategy: MaskStrategy::Nullify,
            }],
            detectors: vec![],
            headers: vec![],
            binary: Default::default(),
            on_parse_error: OnParseError::Redact,
            placeholder: "****".into(),
            exempt,
        };
        let mut config = config(vec![], vec![]);
        config.masking = vec![
            rule("both", MaskDirection::Both, Subjects::default()),
            rule("consume", MaskDirection::Consume, Subjects::default()),
            rule("produce", MaskDirection::Produce, Subjects::default()),
            rule("not-for-billing", MaskDirection::Consume, {
                Subjects {
                    service_accounts: vec!["demo/billing-app".into()],
                    ..Subjects::default()
                }
            }),
            rule("not-for-labelled-billing", MaskDirection::Consume, {
                Subjects {
                    service_accounts: vec!["demo/billing-app".into()],
                    pod_labels: Some(BTreeMap::from([("role".into(), "billing".into())])),
                    ..Subjects::default()
                }
            }),
            rule("labels-only", MaskDirection::Consume, {
                Subjects {
                    pod_labels: Some(BTreeMap::from([("role".into(), "billing".into())])),
                    ..Subjects::default()
                }
            }),
        ];
        let names = |who: &Who, topic: &str, flow| -> Vec<String> {
            config
                .masking_rules_for(topic, flow, &who.principal())
                .map(|r| r.name.clone())
                .collect()
        };
        let app = Who::app();
        let every_consume_rule = [
            "both",
            "consume",
            "not-for-billing",
            "not-for-labelled-billing",
            "labels-only",
        ];
        assert_eq!(names(&app, "orders.eu", Flow::Consume), every_consume_rule);
        assert_eq!(names(&app, "orders.eu", Flow::Produce), ["both", "produce"]);
        assert!(names(&app, "payments", Flow::Consume).is_empty());
        // The app labelled like billing is exempt from nothing.
        let mut impostor = Who::app();
        impostor.labels = BTreeMap::from([("role".into(), "billing".into())]);
        assert_eq!(
            names(&impostor, "orders.eu", Flow::Consume),
            every_consume_rule
        );
        let mut billing = Who::other_app();
        assert_eq!(
            names(&billing, "orders.eu", Flow::Consume),
            ["both", "consume", "not-for-labelled-billing", "labels-only"]
        );
        billing.labels = impostor.labels.clone();
        assert_eq!(
            names(&billing, "orders.eu", Flow::Consume),
            ["both", "consume", "labels-only"]
        );
    }
}

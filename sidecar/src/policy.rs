//! The bridge between a request and the compiled policy: answers the authorizer's questions
//! ("may this principal Read topic X?") from the current [`ProxyConfig`], or refuses everything
//! when there is none (fail closed).
//!
//! [`crate::source::State::policy`] is the one place that chooses between the two: every
//! question, on a request or on a response (topics hidden from Metadata), goes through the
//! [`InForce`] it returns, so each is counted in the decision metric and none can skip the
//! fail-closed answer.

use std::collections::BTreeMap;

use jiff::Timestamp;
use streamward_api::acl::{Operation, ResourceType};
use streamward_api::config::{Effect, ProxyConfig};
use streamward_api::decide::Principal;

use crate::authorize::{Policy, Verdict};
use crate::metrics::Metrics;

/// Who is asking, beyond the workload identity in the config.
#[derive(Clone, Debug, Default)]
pub struct ClientIdentity {
    /// The pod's labels (from the downward API), for policies that select pods by label.
    pub pod_labels: BTreeMap<String, String>,
    /// The user the client authenticated to the proxy as, if it did.
    pub user: Option<String>,
    /// That user's groups.
    pub groups: Vec<String>,
}

/// The policy in force for one request.
pub struct RequestPolicy<'a> {
    config: &'a ProxyConfig,
    principal: Principal<'a>,
    target: &'a str,
    now: Timestamp,
    metrics: &'a Metrics,
    /// Whether verdicts name the rule that decided (for the audit event; it allocates).
    explain: bool,
}

impl<'a> RequestPolicy<'a> {
    /// The policy of `config` for `client` talking to `target`, evaluated at `now`.
    pub fn new(
        config: &'a ProxyConfig,
        client: &'a ClientIdentity,
        target: &'a str,
        now: Timestamp,
        metrics: &'a Metrics,
    ) -> RequestPolicy<'a> {
        RequestPolicy {
            config,
            principal: Principal {
                identity: &config.identity,
                pod_labels: &client.pod_labels,
                user: client.user.as_deref(),
                groups: &client.groups,
            },
            target,
            now,
            metrics,
            explain: false,
        }
    }

    /// Verdicts name the rule, grant or default that decided them (for the audit).
    pub fn explained(mut self, explain: bool) -> RequestPolicy<'a> {
        self.explain = explain;
        self
    }
}

impl<'a> RequestPolicy<'a> {
    /// The guardrails of the enforced policies that apply to this request's principal.
    pub fn guardrails(
        &self,
    ) -> impl Iterator<
        Item = (
            &'a streamward_api::config::CompiledPolicy,
            &'a streamward_api::config::Guardrails,
        ),
    > {
        self.config.guardrails_for(&self.principal, self.target)
    }
}

impl Policy for RequestPolicy<'_> {
    fn check(&self, resource_type: ResourceType, name: &str, operation: Operation) -> Verdict {
        let decision = self.config.decide(
            &self.principal,
            self.target,
            resource_type,
            name,
            operation,
            self.now,
        );
        self.metrics.decision(decision.effect, decision.dry_run);
        if decision.dry_run {
            tracing::info!(
                %resource_type, name, %operation, rule = %decision.rule_name(),
                would = ?decision.would, "dry run: would refuse, forwarded"
            );
        }
        let mut verdict = match decision.effect {
            Effect::Allow => Verdict::allow(),
            Effect::Deny => Verdict::deny(format!(
                "{operation} on {resource_type} {name} denied by {}",
                decision.rule_name()
            )),
            Effect::RequireApproval => {
                let mut verdict = Verdict::policy_violation(format!(
                    "{operation} on {resource_type} {name} requires approval ({})",
                    decision.rule_name()
                ));
                verdict.requires_approval = true;
                // Named even when not explaining: a held request needs its rule (and this is
                // not the hot path).
                verdict.rule = Some(decision.rule_name());
                verdict
            }
        };
        if self.explain {
            verdict.rule = Some(decision.rule_name());
            verdict.dry_run = decision.dry_run;
            if decision.dry_run {
                verdict.message = Some(format!(
                    "DryRun: {operation} on {resource_type} {name} would be {} by {}",
                    match decision.would {
                        Effect::RequireApproval => "held for approval",
                        _ => "denied",
                    },
                    decision.rule_name()
                ));
            }
        }
        verdict
    }
}

/// The policy when no valid config is loaded: everything is refused, and says why.
pub struct FailClosed<'a> {
    /// What went wrong with the config.
    pub reason: &'a str,
    /// Where refusals are counted.
    pub metrics: &'a Metrics,
}

impl Policy for FailClosed<'_> {
    fn check(&self, _: ResourceType, _: &str, _: Operation) -> Verdict {
        self.metrics.decision(Effect::Deny, false);
        Verdict::deny(format!(
            "no valid Streamward config is loaded, so every request is refused (fail closed): {}",
            self.reason
        ))
        .by(Some("fail closed".to_string()))
    }
}

/// Every access refused for a reason that is not the policy's (the audit spool is full), as
/// POLICY_VIOLATION naming it.
pub struct Refused<'a> {
    /// The rule the refusal names.
    pub rule: &'static str,
    /// Why, for the client's error message.
    pub reason: &'static str,
    /// The hash of the config in force (for the audit event).
    pub config_hash: &'a str,
    /// Where refusals are counted.
    pub metrics: &'a Metrics,
}

impl Policy for Refused<'_> {
    fn check(&self, _: ResourceType, _: &str, _: Operation) -> Verdict {
        self.metrics.decision(Effect::Deny, false);
        Verdict::policy_violation(self.reason).by(Some(self.rule.to_string()))
    }
}

/// The policy in force for one request or response: the loaded config's, or the fail-closed
/// refusal when there is none. Made by [`crate::source::State::policy`].
pub enum InForce<'a> {
    /// A config is loaded.
    Config(RequestPolicy<'a>),
    /// No valid config is loaded: everything is refused.
    FailClosed(FailClosed<'a>),
    /// Everything is refused for another reason, see [`InForce::unless_audit_full`].
    Refused(Refused<'a>),
}

impl<'a> InForce<'a> {
    /// This policy, or — when `full` (the audit spool is full and the proxy is told to refuse
    /// then, `--audit-full=refuse`) — the refusal of every access.
    pub fn unless_audit_full(self, full: bool) -> InForce<'a> {
        if !full {
            return self;
        }
        let (config_hash, metrics) = match &self {
            InForce::Config(policy) => (policy.config.hash.as_str(), policy.metrics),
            InForce::FailClosed(policy) => ("", policy.metrics),
            InForce::Refused(_) => return self,
        };
        InForce::Refused(Refused {
            rule: crate::audit::AUDIT_FULL_RULE,
            reason: crate::audit::AUDIT_FULL_REASON,
            config_hash,
            metrics,
        })
    }

    /// The hash of the config that decides, for the audit (empty when failing closed).
    pub fn config_hash(&self) -> &'a str {
        match self {
            InForce::Config(policy) => &policy.config.hash,
            InForce::FailClosed(_) => "",
            InForce::Refused(policy) => policy.config_hash,
        }
    }

    /// The guardrails that apply to the request's principal (none when failing closed:
    /// everything is refused anyway).
    pub fn guardrails(
        &self,
    ) -> impl Iterator<
        Item = (
            &'a streamward_api::config::CompiledPolicy,
            &'a streamward_api::config::Guardrails,
        ),
    > {
        let guardrails = match self {
            InForce::Config(policy) => Some(policy.guardrails()),
            InForce::FailClosed(_) | InForce::Refused(_) => None,
        };
        guardrails.into_iter().flatten()
    }
}

impl Policy for InForce<'_> {
    fn check(&self, resource_type: ResourceType, name: &str, operation: Operation) -> Verdict {
        match self {
            InForce::Config(policy) => policy.check(resource_type, name, operation),
            InForce::FailClosed(policy) => policy.check(resource_type, name, operation),
            InForce::Refused(policy) => policy.check(resource_type, name, operation),
        }
    }
}

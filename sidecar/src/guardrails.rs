//! Guardrails: limits on what an otherwise allowed request may ask for — partitions and
//! replicas of a new topic, partitions added to one, the acks of a produce. A request over a
//! limit is refused with POLICY_VIOLATION naming the policy and the limit.
//!
//! They are checked by wrapping the request's [`Policy`]: the accesses a guardrail refuses
//! answer as policy violations, so refusals go through the same machinery (and the same
//! per-API error responses) as any other decision.

use kafka_protocol::messages::RequestKind;
use streamward_api::acl::{Operation, ResourceType};
use streamward_api::config::{CompiledPolicy, Guardrails};

use crate::authorize::{Policy, Verdict};

/// One access a guardrail refuses, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    resource_type: ResourceType,
    name: String,
    operation: Operation,
    message: String,
    /// `StreamPolicy/<name> guardrail`, for the audit.
    rule: String,
}

/// The accesses of `request` that break a guardrail of `policies`.
pub fn violations<'c>(
    request: &RequestKind,
    policies: impl Iterator<Item = (&'c CompiledPolicy, &'c Guardrails)>,
) -> Vec<Violation> {
    let mut found = Vec::new();
    for (policy, limits) in policies {
        let mut refuse = |name: &str, operation: Operation, what: String| {
            found.push(Violation {
                resource_type: ResourceType::Topic,
                name: name.to_string(),
                operation,
                message: format!("{what} (guardrail of StreamPolicy/{})", policy.name),
                rule: format!("StreamPolicy/{} guardrail", policy.name),
            });
        };
        match request {
            RequestKind::CreateTopics(r) => {
                for topic in &r.topics {
                    let name = topic.name.0.as_str();
                    // -1 means the broker's default; explicit assignments say it themselves.
                    let partitions = if topic.assignments.is_empty() {
                        topic.num_partitions
                    } else {
                        i32::try_from(topic.assignments.len()).unwrap_or(i32::MAX)
                    };
                    let replicas = topic
                        .assignments
                        .iter()
                        .map(|a| i16::try_from(a.broker_ids.len()).unwrap_or(i16::MAX))
                        .max()
                        .unwrap_or(topic.replication_factor);
                    if let Some(max) = limits.max_partitions
                        && partitions > max
                    {
                        refuse(
                            name,
                            Operation::Create,
                            format!("{partitions} partitions is more than the {max} allowed"),
                        );
                    }
                    if let Some(max) = limits.max_replication_factor
                        && replicas > max
                    {
                        refuse(
                            name,
                            Operation::Create,
                            format!("replication factor {replicas} is more than the {max} allowed"),
                        );
                    }
                }
            }
            RequestKind::CreatePartitions(r) => {
                for topic in &r.topics {
                    if let Some(max) = limits.max_partitions
                        && topic.count > max
                    {
                        refuse(
                            topic.name.0.as_str(),
                            Operation::Alter,
                            format!("{} partitions is more than the {max} allowed", topic.count),
                        );
                    }
                }
            }
            RequestKind::Produce(r) if limits.require_acks_all && r.acks != -1 => {
                for topic in &r.topic_data {
                    refuse(
                        topic.name.0.as_str(),
                        Operation::Write,
                        format!("produce with acks={} where acks=all is required", r.acks),
                    );
                }
            }
            _ => {}
        }
    }
    found
}

/// A policy whose answers are overridden by guardrail violations.
pub struct Guarded<'a> {
    inner: &'a dyn Policy,
    violations: &'a [Violation],
}

impl<'a> Guarded<'a> {
    /// `inner`, refusing the accesses in `violations`.
    pub fn new(inner: &'a dyn Policy, violations: &'a [Violation]) -> Guarded<'a> {
        Guarded { inner, violations }
    }
}

impl Policy for Guarded<'_> {
    fn check(&self, resource_type: ResourceType, name: &str, operation: Operation) -> Verdict {
        let verdict = self.inner.check(resource_type, name, operation);
        if !verdict.allowed {
            return verdict; // a refusal by the policy itself says more than a limit
        }
        match self.violations.iter().find(|v| {
            v.resource_type == resource_type && v.operation == operation && v.name == name
        }) {
            Some(violation) => Verdict::policy_violation(violation.message.clone())
                .by(verdict.rule.is_some().then(|| violation.rule.clone())),
            None => verdict,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::create_topics_request::CreatableTopic;
    use kafka_protocol::messages::produce_request::TopicProduceData;
    use kafka_protocol::messages::{CreateTopicsRequest, ProduceRequest, TopicName};
    use kafka_protocol::protocol::StrBytes;
    use streamward_api::config::{Mode, Subjects};

    fn policy(limits: Guardrails) -> CompiledPolicy {
        CompiledPolicy {
            name: "limits".into(),
            target: None,
            subjects: Subjects::default(),
            rules: Vec::new(),
            mode: Mode::Enforce,
            guardrails: limits,
            audit_level: Default::default(),
            approval: Default::default(),
        }
    }

    fn topic(name: &'static str) -> TopicName {
        TopicName(StrBytes::from_static_str(name))
    }

    struct AllowAll;
    impl Policy for AllowAll {
        fn check(&self, _: ResourceType, _: &str, _: Operation) -> Verdict {
            Verdict::allow()
        }
    }

    #[test]
    fn topic_creation_over_the_limits_is_a_policy_violation() {
        let p = policy(Guardrails {
            max_partitions: Some(12),
            max_replication_factor: Some(3),
            require_acks_all: false,
        });
        let request = RequestKind::CreateTopics(CreateTopicsRequest::default().with_topics(vec![
            CreatableTopic::default()
                .with_name(topic("big"))
                .with_num_partitions(48)
                .with_replication_factor(3),
            CreatableTopic::default()
                .with_name(topic("fine"))
                .with_num_partitions(6)
                .with_replication_factor(3),
            CreatableTopic::default()
                .with_name(topic("defaults"))
                .with_num_partitions(-1)
                .with_replication_factor(-1),
        ]));
        let found = violations(&request, std::iter::once((&p, &p.guardrails)));
        assert_eq!(found.len(), 1);
        let guarded = Guarded::new(&AllowAll, &found);
        let verdict = guarded.check(ResourceType::Topic, "big", Operation::Create);
        assert!(!verdict.allowed && verdict.policy_violation);
        assert!(
            verdict
                .message
                .unwrap()
                .contains("48 partitions is more than the 12 allowed")
        );
        assert!(
            guarded
                .check(ResourceType::Topic, "fine", Operation::Create)
                .allowed
        );
        assert!(
            guarded
                .check(ResourceType::Topic, "defaults", Operation::Create)
                .allowed
        );
    }

    #[test]
    fn produce_without_acks_all_breaks_require_acks_all() {
        let p = policy(Guardrails {
            require_acks_all: true,
            ..Guardrails::default()
        });
        let produce = |acks| {
            RequestKind::Produce(
                ProduceRequest::default()
                    .with_acks(acks)
                    .with_topic_data(vec![TopicProduceData::default().with_name(topic("orders"))]),
            )
        };
        assert_eq!(
            violations(&produce(-1), std::iter::once((&p, &p.guardrails))),
            vec![]
        );
        let found = violations(&produce(1), std::iter::once((&p, &p.guardrails)));
        let verdict =
            Guarded::new(&AllowAll, &found).check(ResourceType::Topic, "orders", Operation::Write);
        assert!(verdict.policy_violation, "{verdict:?}");
    }
}

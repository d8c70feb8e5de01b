//! The pure half of a hold: which request is held (its digest and its ApprovalRequest), where
//! an ApprovalRequest stands, and how the held request is decided again once it is resolved.
//! Nothing here talks to the API server, so every rule is tested below.

use jiff::{SignedDuration, Timestamp};
use kafka_protocol::messages::RequestKind;
use sha2::{Digest, Sha256};
use streamward_api::acl::{Operation, ResourceType};
use streamward_api::audit::{Approval as AuditedApproval, ApprovalStep};
use streamward_api::config::{ApprovalTerms, ProxyConfig};
use streamward_api::crd::{
    ApprovalRequest, ApprovalRequestSpec, Decision, RELEASED_ANNOTATION, RequestedResource,
    RequesterSpec, condition,
};

use crate::authorize::{Policy, Verdict};
use crate::policy::ClientIdentity;

/// What a held request asks approval for, taken from the decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Asked {
    /// The StreamPolicy whose rule holds the request.
    pub policy: String,
    /// That rule's name.
    pub rule: String,
    /// The Kafka API (`DeleteTopics`).
    pub api: &'static str,
    /// The operation of the first held access.
    pub operation: Operation,
    /// Every resource the rule holds, in request order, without repeats.
    pub resources: Vec<(ResourceType, String)>,
    /// The request's digest: see [`digest`].
    pub digest: String,
}

impl Asked {
    /// The policy and rule of a verdict's `rule` text, `StreamPolicy/<policy> rule <rule>`
    /// (policy names are Kubernetes names, without spaces, so the split is unambiguous).
    pub fn policy_and_rule(rule: &str) -> Option<(String, String)> {
        let (policy, rule) = rule.strip_prefix("StreamPolicy/")?.split_once(" rule ")?;
        Some((policy.to_owned(), rule.to_owned()))
    }

    /// The approval terms of the asking policy, and the rule's hold.
    pub fn terms(&self, config: &ProxyConfig) -> (ApprovalTerms, SignedDuration) {
        let policy = config.policies.iter().find(|p| p.name == self.policy);
        let hold = policy
            .and_then(|p| p.rules.iter().find(|r| r.name == self.rule))
            .and_then(|r| r.hold_seconds)
            .unwrap_or(streamward_api::config::CompiledRule::DEFAULT_HOLD_SECONDS);
        (
            policy.map(|p| p.approval).unwrap_or_default(),
            SignedDuration::from_secs(i64::from(hold)),
        )
    }

    /// The ApprovalRequest the proxy creates for this request of `client`, run as `config`'s
    /// workload identity, first held at `now`.
    pub fn spec(
        &self,
        config: &ProxyConfig,
        client: &ClientIdentity,
        terms: &ApprovalTerms,
        now: Timestamp,
    ) -> ApprovalRequestSpec {
        ApprovalRequestSpec {
            requester: RequesterSpec {
                service_account: config.identity.service_account.clone(),
                user: client.user.clone(),
                groups: if client.user.is_some() {
                    client.groups.clone()
                } else {
                    Vec::new()
                },
            },
            api_key: self.api.to_owned(),
            operation: self.operation,
            resources: self
                .resources
                .iter()
                .take(256)
                .map(|(resource_type, name)| RequestedResource {
                    resource_type: *resource_type,
                    name: name.clone(),
                })
                .collect(),
            policy: self.policy.clone(),
            rule: self.rule.clone(),
            request_digest: self.digest.clone(),
            expiry_time: now
                + SignedDuration::from_secs(i64::from(terms.expire_after_seconds.max(10))),
            required_approvals: i32::try_from(terms.required_approvals.clamp(1, 10)).unwrap_or(1),
        }
    }
}

/// Whether an ApprovalRequest found in the namespace describes exactly the request the proxy
/// would ask for: anyone who can create ApprovalRequests under the workload's name (the app
/// shares its service account) could have made it, so nothing but an exact match counts.
/// Only the expiry may differ.
pub fn describes(found: &ApprovalRequestSpec, wanted: &ApprovalRequestSpec) -> bool {
    ApprovalRequestSpec {
        expiry_time: wanted.expiry_time,
        ..found.clone()
    } == *wanted
}

/// SHA-256 (hex) of the request as the broker would act on it: its API key and version and its
/// body re-encoded with every timeout set to 0. Clients recompute timeouts from what is left
/// of their deadline on each try (Kafka's AdminClient does), so an identical retry differs
/// there and nowhere else; the header (correlation id, client id) is not part of it.
pub fn digest(api_key: i16, version: i16, mut request: RequestKind) -> Result<String, String> {
    match &mut request {
        RequestKind::DeleteTopics(r) => r.timeout_ms = 0,
        RequestKind::CreateTopics(r) => r.timeout_ms = 0,
        RequestKind::CreatePartitions(r) => r.timeout_ms = 0,
        RequestKind::DeleteRecords(r) => r.timeout_ms = 0,
        RequestKind::ElectLeaders(r) => r.timeout_ms = 0,
        RequestKind::AlterPartitionReassignments(r) => r.timeout_ms = 0,
        RequestKind::ListPartitionReassignments(r) => r.timeout_ms = 0,
        RequestKind::Produce(r) => r.timeout_ms = 0,
        _ => {}
    }
    let mut body = bytes::BytesMut::new();
    request
        .encode(&mut body, version)
        .map_err(|e| format!("encoding the request for its digest: {e}"))?;
    let mut hash = Sha256::new();
    hash.update(api_key.to_be_bytes());
    hash.update(version.to_be_bytes());
    hash.update(&body);
    Ok(hex::encode(hash.finalize()))
}

/// Where an ApprovalRequest stands for the proxy at `now`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Not decided, and it may still be approved.
    Open,
    /// Approved, and the approval still releases the identical request.
    Releases {
        /// Who approved.
        approvers: Vec<String>,
        /// `once`: releasing uses the approval up (the proxy marks it released first).
        once: bool,
    },
    /// Approved, but the approval no longer releases anything (released once already, or
    /// its window has closed).
    UsedUp {
        /// Who approved.
        approvers: Vec<String>,
    },
    /// An approver denied it.
    Denied {
        /// Who denied.
        approvers: Vec<String>,
        /// What they wrote.
        comment: Option<String>,
    },
    /// Nobody decided before its expiry.
    Expired,
}

/// Where `request` stands at `now`, releasing for `window` seconds after its approval (`None`:
/// once). The operator writes the conditions from the Approvals; the expiry is checked here
/// too, so a request is never approved late because a reconcile was.
pub fn standing(request: &ApprovalRequest, window: Option<u32>, now: Timestamp) -> Standing {
    let status = request.status.clone().unwrap_or_default();
    let condition = |kind: &str| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == kind && c.status == "True")
    };
    // Each person once, in the order they decided (an approver may approve twice).
    let by = |decision: Decision| -> Vec<String> {
        let mut people: Vec<String> = Vec::new();
        for approver in status
            .decisions
            .iter()
            .filter(|d| d.decision == decision)
            .filter_map(|d| d.approver.as_ref())
        {
            if !people.contains(approver) {
                people.push(approver.clone());
            }
        }
        people
    };
    if condition(condition::DENIED).is_some() {
        let comment = status
            .decisions
            .iter()
            .find(|d| d.decision == Decision::Deny)
            .and_then(|d| d.comment.clone());
        return Standing::Denied {
            approvers: by(Decision::Deny),
            comment,
        };
    }
    if let Some(approved) = condition(condition::APPROVED) {
        let approvers = by(Decision::Approve);
        let released = request
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(RELEASED_ANNOTATION));
        let open = match window {
            None => !released,
            Some(seconds) => {
                now < approved.last_transition_time.0
                    + SignedDuration::from_secs(i64::from(seconds))
            }
        };
        return if open {
            Standing::Releases {
                approvers,
                once: window.is_none(),
            }
        } else {
            Standing::UsedUp { approvers }
        };
    }
    if condition(condition::EXPIRED).is_some() || now >= request.spec.expiry_time {
        return Standing::Expired;
    }
    Standing::Open
}

/// What a hold came to: the held request is decided again with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Forward it: approved while held ([`ApprovalStep::Approved`]) or released by an earlier
    /// approval ([`ApprovalStep::Released`]).
    Release {
        /// The ApprovalRequest (`<namespace>/<name>`).
        request: String,
        /// Approved or Released.
        step: ApprovalStep,
        /// Who approved.
        approvers: Vec<String>,
    },
    /// Refuse it with POLICY_VIOLATION and `message`.
    Refuse {
        /// The ApprovalRequest, when there is one.
        request: Option<String>,
        /// Denied, Expired, Pending or Failed.
        step: ApprovalStep,
        /// Who decided, when someone did.
        approvers: Vec<String>,
        /// A denial's comment.
        comment: Option<String>,
        /// What the client is told.
        message: String,
    },
}

impl Resolution {
    /// The request cannot be held at all (no API server, or it refused): refused with why.
    pub fn failed(message: String) -> Resolution {
        Resolution::Refuse {
            request: None,
            step: ApprovalStep::Failed,
            approvers: Vec::new(),
            comment: None,
            message,
        }
    }

    /// What the audit event says of it.
    pub fn audited(&self) -> AuditedApproval {
        match self {
            Resolution::Release {
                request,
                step,
                approvers,
            } => AuditedApproval {
                request: request.clone(),
                step: *step,
                approvers: approvers.clone(),
                comment: None,
            },
            Resolution::Refuse {
                request,
                step,
                approvers,
                comment,
                ..
            } => AuditedApproval {
                request: request.clone().unwrap_or_default(),
                step: *step,
                approvers: approvers.clone(),
                comment: comment.clone(),
            },
        }
    }
}

/// The policy of a held request decided again: the accesses its rule held are allowed when
/// the hold released it, refused with the resolution's message otherwise (no longer held, so
/// the request is answered, not held again). Other verdicts are the policy's own.
pub struct Resolved<'a> {
    /// The policy in force.
    pub inner: &'a dyn Policy,
    /// What the hold came to.
    pub resolution: &'a Resolution,
}

impl Policy for Resolved<'_> {
    fn check(&self, resource_type: ResourceType, name: &str, operation: Operation) -> Verdict {
        let verdict = self.inner.check(resource_type, name, operation);
        if !verdict.requires_approval {
            return verdict;
        }
        match self.resolution {
            Resolution::Release { request, .. } => {
                Verdict::allow().by(Some(format!("ApprovalRequest/{request}")))
            }
            Resolution::Refuse { message, .. } => Verdict {
                message: Some(message.clone()),
                requires_approval: false,
                ..verdict
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use kafka_protocol::messages::delete_topics_request::DeleteTopicsRequest;
    use kafka_protocol::messages::{TopicName, delete_topics_request::DeleteTopicState};
    use kafka_protocol::protocol::StrBytes;
    use streamward_api::crd::{ApprovalRequestStatus, RecordedDecision};

    fn delete(topic: &'static str, timeout_ms: i32) -> RequestKind {
        RequestKind::DeleteTopics(
            DeleteTopicsRequest::default()
                .with_topics(vec![
                    DeleteTopicState::default()
                        .with_name(Some(TopicName(StrBytes::from_static_str(topic)))),
                ])
                .with_timeout_ms(timeout_ms),
        )
    }

    #[test]
    fn an_identical_retry_has_the_same_digest_whatever_time_it_had_left() {
        let first = digest(20, 6, delete("payments", 29_871)).unwrap();
        assert_eq!(first, digest(20, 6, delete("payments", 12_004)).unwrap());
        assert_ne!(first, digest(20, 6, delete("orders", 29_871)).unwrap());
        // Up to v5 topics go by name only: the same topics at another version differ.
        let by_name = RequestKind::DeleteTopics(
            DeleteTopicsRequest::default()
                .with_topic_names(vec![TopicName(StrBytes::from_static_str("payments"))]),
        );
        assert_ne!(first, digest(20, 5, by_name).unwrap());
        assert_eq!(first.len(), 64);
    }

    #[test]
    fn the_policy_and_rule_are_read_from_the_verdicts_rule() {
        assert_eq!(
            Asked::policy_and_rule("StreamPolicy/payments rule delete-needs-approval"),
            Some(("payments".into(), "delete-needs-approval".into()))
        );
        assert_eq!(Asked::policy_and_rule("AccessGrant/oncall"), None);
    }

    fn request(conditions: &[(&str, i64)], decisions: Vec<RecordedDecision>) -> ApprovalRequest {
        let mut request: ApprovalRequest = serde_json::from_value(serde_json::json!({
            "apiVersion": "streamward.io/v1alpha1",
            "kind": "ApprovalRequest",
            "metadata": {"name": "r", "namespace": "ns"},
            "spec": {
                "requester": {"serviceAccount": "app"},
                "apiKey": "DeleteTopics",
                "operation": "Delete",
                "resources": [{"resourceType": "Topic", "name": "payments"}],
                "policy": "p",
                "rule": "r",
                "requestDigest": "0".repeat(64),
                "expiryTime": "2026-12-06T12:00:00Z",
            },
        }))
        .unwrap();
        request.status = Some(ApprovalRequestStatus {
            conditions: conditions
                .iter()
                .map(|(kind, at)| Condition {
                    type_: (*kind).into(),
                    status: "True".into(),
                    last_transition_time: Time(jiff::Timestamp::from_second(*at).unwrap()),
                    message: String::new(),
                    reason: "R".into(),
                    observed_generation: None,
                })
                .collect(),
            decisions,
        });
        request
    }

    fn decided(by: &str, decision: Decision, comment: Option<&str>) -> RecordedDecision {
        RecordedDecision {
            approval: format!("{by}-decides"),
            approver: Some(by.into()),
            decision,
            comment: comment.map(Into::into),
        }
    }

    #[test]
    fn an_approval_releases_once_or_for_its_window() {
        let approved_at = "2026-12-06T11:00:00Z".parse::<Timestamp>().unwrap();
        let mut approved = request(
            &[("Approved", approved_at.as_second())],
            vec![
                decided("alice", Decision::Approve, None),
                decided("alice", Decision::Approve, None),
            ],
        );
        let soon = approved_at + SignedDuration::from_secs(30);
        assert_eq!(
            standing(&approved, None, soon),
            Standing::Releases {
                approvers: vec!["alice".into()],
                once: true
            }
        );
        assert_eq!(
            standing(&approved, Some(60), soon),
            Standing::Releases {
                approvers: vec!["alice".into()],
                once: false
            }
        );
        let later = approved_at + SignedDuration::from_secs(61);
        assert!(matches!(
            standing(&approved, Some(60), later),
            Standing::UsedUp { .. }
        ));
        approved.metadata.annotations = Some([(RELEASED_ANNOTATION.into(), "x".into())].into());
        assert!(matches!(
            standing(&approved, None, soon),
            Standing::UsedUp { .. }
        ));
    }

    #[test]
    fn a_denial_wins_and_carries_its_comment_and_expiry_is_checked_here_too() {
        let denied = request(
            &[("Denied", 0)],
            vec![
                decided("alice", Decision::Approve, None),
                decided("bob", Decision::Deny, Some("not during the freeze")),
            ],
        );
        let now = "2026-12-06T11:00:00Z".parse::<Timestamp>().unwrap();
        assert_eq!(
            standing(&denied, None, now),
            Standing::Denied {
                approvers: vec!["bob".into()],
                comment: Some("not during the freeze".into())
            }
        );
        let open = request(&[], vec![]);
        assert_eq!(standing(&open, None, now), Standing::Open);
        let after = "2026-12-06T12:00:00Z".parse::<Timestamp>().unwrap();
        assert_eq!(standing(&open, None, after), Standing::Expired);
    }

    #[test]
    fn only_an_exact_description_of_the_request_counts() {
        let wanted = request(&[], vec![]).spec;
        let mut found = wanted.clone();
        found.expiry_time = "2030-01-01T00:00:00Z".parse().unwrap();
        assert!(describes(&found, &wanted));
        found.resources[0].name = "orders".into();
        assert!(!describes(&found, &wanted));
        let mut other_user = wanted.clone();
        other_user.requester.user = Some("mallory".into());
        assert!(!describes(&other_user, &wanted));
    }

    struct Held;
    impl Policy for Held {
        fn check(&self, _: ResourceType, name: &str, _: Operation) -> Verdict {
            if name == "payments" {
                let mut verdict = Verdict::policy_violation("requires approval");
                verdict.requires_approval = true;
                verdict
            } else {
                Verdict::deny("denied")
            }
        }
    }

    #[test]
    fn a_resolution_decides_only_what_the_rule_held() {
        let released = Resolution::Release {
            request: "ns/r".into(),
            step: ApprovalStep::Approved,
            approvers: vec!["alice".into()],
        };
        let policy = Resolved {
            inner: &Held,
            resolution: &released,
        };
        assert!(
            policy
                .check(ResourceType::Topic, "payments", Operation::Delete)
                .allowed
        );
        assert!(
            !policy
                .check(ResourceType::Topic, "orders", Operation::Delete)
                .allowed
        );
        let refused = Resolution::failed("no".into());
        let policy = Resolved {
            inner: &Held,
            resolution: &refused,
        };
        let verdict = policy.check(ResourceType::Topic, "payments", Operation::Delete);
        assert!(!verdict.allowed && !verdict.requires_approval && verdict.policy_violation);
        assert_eq!(verdict.message.as_deref(), Some("no"));
    }
}

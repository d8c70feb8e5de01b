//! Status conditions, the pure way: what each object's `status` should say now, given what
//! compiled, which approvals exist and what time it is.
//!
//! A condition keeps its `lastTransitionTime` while its status stays the same, and every
//! function here returns the same status for the same inputs, so an operator that restarts
//! computes exactly what is already written and writes nothing.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use streamward_api::compile::grant_window;
use streamward_api::crd::{
    AccessGrant, AccessGrantStatus, Approval, ApprovalRequest, ApprovalRequestStatus,
    ApprovalTarget, Decision, RecordedDecision, condition,
};

/// The reason of a condition (one CamelCase word) and its message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Why {
    /// The reason.
    pub reason: &'static str,
    /// The message.
    pub message: String,
}

fn why(reason: &'static str, message: impl Into<String>) -> Why {
    Why {
        reason,
        message: message.into(),
    }
}

/// The conditions being built for one object: each keeps its previous `lastTransitionTime`
/// when its status did not change.
pub struct Conditions<'p> {
    previous: &'p [Condition],
    generation: Option<i64>,
    now: Timestamp,
    built: Vec<Condition>,
}

impl<'p> Conditions<'p> {
    /// Starts the conditions of an object of `generation` whose status holds `previous`.
    pub fn new(previous: &'p [Condition], generation: Option<i64>, now: Timestamp) -> Self {
        Conditions {
            previous,
            generation,
            now,
            built: Vec::new(),
        }
    }

    /// Sets condition `type_` to `status` (`"True"`, `"False"` or `"Unknown"`).
    pub fn set(&mut self, type_: &str, status: &str, why: Why) -> &mut Self {
        let since = self
            .previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map_or(Time(self.now), |c| c.last_transition_time.clone());
        self.built.push(Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: why.reason.to_string(),
            message: why.message,
            observed_generation: self.generation,
            last_transition_time: since,
        });
        self
    }

    /// Sets condition `type_` to `"True"` or `"False"`.
    pub fn flag(&mut self, type_: &str, value: bool, why: Why) -> &mut Self {
        self.set(type_, if value { "True" } else { "False" }, why)
    }

    /// The conditions, sorted by type.
    pub fn build(mut self) -> Vec<Condition> {
        self.built.sort_by(|a, b| a.type_.cmp(&b.type_));
        self.built
    }
}

/// Whether `type_` became `"True"` from something else between `before` and `after`.
pub fn became_true(before: &[Condition], after: &[Condition], type_: &str) -> bool {
    let is_true = |cs: &[Condition]| cs.iter().any(|c| c.type_ == type_ && c.status == "True");
    !is_true(before) && is_true(after)
}

/// Conditions compare equal regardless of order.
pub fn same_conditions(a: &[Condition], b: &[Condition]) -> bool {
    let sorted = |cs: &[Condition]| {
        let mut cs = cs.to_vec();
        cs.sort_by(|x, y| x.type_.cmp(&y.type_));
        cs
    };
    sorted(a) == sorted(b)
}

/// A time rounded down to whole seconds, as the API server stores condition times.
pub fn whole_seconds(at: Timestamp) -> Timestamp {
    Timestamp::from_second(at.as_second()).unwrap_or(at)
}

/// Where an AccessGrant stands on approval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrantApproval {
    /// The grant does not ask for approval.
    NotRequired,
    /// No decision yet.
    Pending,
    /// Approved (by whom, when the webhook stamped it).
    Approved(String),
    /// Denied; one Deny is enough.
    Denied(String),
}

impl GrantApproval {
    /// Whether the grant may count.
    pub fn allows(&self) -> bool {
        matches!(
            self,
            GrantApproval::NotRequired | GrantApproval::Approved(_)
        )
    }
}

fn approver(approval: &Approval) -> String {
    approval.spec.approver.clone().unwrap_or_else(|| {
        format!(
            "Approval {}",
            approval.metadata.name.as_deref().unwrap_or("")
        )
    })
}

/// The approval state of `grant` from the Approvals of its namespace.
pub fn grant_approval(grant: &AccessGrant, approvals: &[Approval]) -> GrantApproval {
    if !grant.spec.require_approval {
        return GrantApproval::NotRequired;
    }
    let name = grant.metadata.name.as_deref().unwrap_or_default();
    let decisions: Vec<&Approval> = approvals
        .iter()
        .filter(|a| a.spec.request_ref.kind == ApprovalTarget::AccessGrant)
        .filter(|a| a.spec.request_ref.name == name)
        .collect();
    if let Some(denial) = decisions.iter().find(|a| a.spec.decision == Decision::Deny) {
        return GrantApproval::Denied(approver(denial));
    }
    match decisions
        .iter()
        .find(|a| a.spec.decision == Decision::Approve)
    {
        Some(approval) => GrantApproval::Approved(approver(approval)),
        None => GrantApproval::Pending,
    }
}

/// What the operator decided about one AccessGrant before compiling.
#[derive(Clone, Debug)]
pub struct GrantFacts {
    /// The window, or why it is invalid.
    pub window: Result<(Timestamp, Timestamp), String>,
    /// Approval.
    pub approval: GrantApproval,
    /// `spec.revoked`.
    pub revoked: bool,
}

impl GrantFacts {
    /// Reads the facts of `grant`.
    pub fn of(grant: &AccessGrant, approvals: &[Approval]) -> GrantFacts {
        GrantFacts {
            window: grant_window(grant).map_err(|e| e.to_string()),
            approval: grant_approval(grant, approvals),
            revoked: grant.spec.revoked,
        }
    }

    /// Whether the grant goes into the compiled configs at `now`: not revoked, approved (or not
    /// needing approval), and not yet ended. A grant that has not started yet goes in (the
    /// proxy checks the window on every request); an ended one leaves the configs. A grant
    /// whose window is invalid goes in too, so that compiling reports it.
    pub fn compiled_at(&self, now: Timestamp) -> bool {
        !self.revoked
            && self.approval.allows()
            && self.window.as_ref().map_or(true, |(_, end)| now < *end)
    }

    /// The next instant after `now` at which the grant's conditions change by themselves.
    pub fn next_change(&self, now: Timestamp) -> Option<Timestamp> {
        let (start, end) = self.window.as_ref().ok()?;
        [*start, *end].into_iter().find(|t| *t > now)
    }
}

/// The status an AccessGrant should have. `accepted` is `Err(message)` when it does not compile.
pub fn grant_status(
    grant: &AccessGrant,
    facts: &GrantFacts,
    accepted: Result<(), String>,
    now: Timestamp,
) -> AccessGrantStatus {
    let previous = grant.status.clone().unwrap_or_default();
    let mut conditions = Conditions::new(&previous.conditions, grant.metadata.generation, now);
    match &accepted {
        Ok(()) => conditions.flag(
            condition::ACCEPTED,
            true,
            why("Compiled", "the grant is valid"),
        ),
        Err(message) => conditions.flag(condition::ACCEPTED, false, why("Invalid", message)),
    };
    match &facts.approval {
        GrantApproval::NotRequired => conditions.flag(
            condition::APPROVED,
            true,
            why("NotRequired", "the grant does not require approval"),
        ),
        GrantApproval::Approved(by) => conditions.flag(
            condition::APPROVED,
            true,
            why("Approved", format!("approved by {by}")),
        ),
        GrantApproval::Denied(by) => conditions.flag(
            condition::APPROVED,
            false,
            why("Denied", format!("denied by {by}")),
        ),
        GrantApproval::Pending => conditions.flag(
            condition::APPROVED,
            false,
            why("Pending", "waiting for an Approval with decision Approve"),
        ),
    };
    conditions.flag(
        condition::REVOKED,
        facts.revoked,
        if facts.revoked {
            why(
                "Revoked",
                "spec.revoked is true; the grant never counts again",
            )
        } else {
            why("NotRevoked", "the grant has not been revoked")
        },
    );
    let ended = facts.window.as_ref().is_ok_and(|(_, end)| now >= *end);
    conditions.flag(
        condition::EXPIRED,
        ended,
        match &facts.window {
            Ok((_, end)) if ended => why("WindowEnded", format!("the grant ended at {end}")),
            Ok((_, end)) => why("WindowOpen", format!("the grant ends at {end}")),
            Err(_) => why("Invalid", "the grant's window is invalid"),
        },
    );
    let active = match (&accepted, &facts.window) {
        (Err(message), _) => Err(why("Invalid", message.clone())),
        (_, Err(message)) => Err(why("Invalid", message.clone())),
        _ if facts.revoked => Err(why("Revoked", "the grant was revoked")),
        (_, Ok((_, end))) if now >= *end => Err(why("Expired", format!("ended at {end}"))),
        _ if facts.approval == GrantApproval::Pending => {
            Err(why("PendingApproval", "the grant waits for approval"))
        }
        _ if !facts.approval.allows() => Err(why("Denied", "an approver denied the grant")),
        (_, Ok((start, _))) if now < *start => {
            Err(why("NotStarted", format!("the grant starts at {start}")))
        }
        (_, Ok((_, end))) => Ok(why(
            "WithinWindow",
            format!("the grant is in the proxies' configs until {end}"),
        )),
    };
    let is_active = active.is_ok();
    conditions.flag(condition::ACTIVE, is_active, active.unwrap_or_else(|e| e));
    let conditions = conditions.build();
    let since = |type_: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == "True")
            .map(|c| c.last_transition_time.0)
    };
    AccessGrantStatus {
        activated_at: previous.activated_at.or_else(|| since(condition::ACTIVE)),
        expired_at: previous.expired_at.or_else(|| since(condition::EXPIRED)),
        conditions,
    }
}

/// The status an ApprovalRequest should have: the decisions of the Approvals naming it,
/// `Denied` on any Deny, `Approved` once `requiredApprovals` distinct approvers approved
/// before expiry, `Expired` past `expiryTime`.
pub fn request_status(
    request: &ApprovalRequest,
    approvals: &[Approval],
    now: Timestamp,
) -> ApprovalRequestStatus {
    let previous = request.status.clone().unwrap_or_default();
    let name = request.metadata.name.as_deref().unwrap_or_default();
    let mut mine: Vec<&Approval> = approvals
        .iter()
        .filter(|a| a.spec.request_ref.kind == ApprovalTarget::ApprovalRequest)
        .filter(|a| a.spec.request_ref.name == name)
        .collect();
    mine.sort_by_key(|a| {
        (
            a.metadata.creation_timestamp.as_ref().map(|t| t.0),
            a.metadata.name.clone(),
        )
    });
    let decisions: Vec<RecordedDecision> = mine
        .iter()
        .map(|a| RecordedDecision {
            approval: a.metadata.name.clone().unwrap_or_default(),
            approver: a.spec.approver.clone(),
            decision: a.spec.decision,
            comment: a.spec.comment.clone(),
        })
        .collect();
    let approvers: BTreeMap<String, ()> = mine
        .iter()
        .filter(|a| a.spec.decision == Decision::Approve)
        .map(|a| (approver(a), ()))
        .collect();
    let denied = mine.iter().find(|a| a.spec.decision == Decision::Deny);
    let expired = now >= request.spec.expiry_time;
    let required = usize::try_from(request.spec.required_approvals.max(1)).unwrap_or(1);
    let approved = denied.is_none() && approvers.len() >= required;

    let mut conditions = Conditions::new(&previous.conditions, request.metadata.generation, now);
    conditions.flag(
        condition::APPROVED,
        approved,
        if approved {
            why(
                "Approved",
                format!(
                    "approved by {}",
                    approvers.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )
        } else {
            why(
                "Pending",
                format!("{} of {required} approvals", approvers.len()),
            )
        },
    );
    conditions.flag(
        condition::DENIED,
        denied.is_some(),
        match denied {
            Some(a) => why("Denied", format!("denied by {}", approver(a))),
            None => why("NotDenied", "no approver denied the request"),
        },
    );
    conditions.flag(
        condition::EXPIRED,
        expired && !approved && denied.is_none(),
        if expired {
            why(
                "WindowEnded",
                format!(
                    "the request could be approved until {}",
                    request.spec.expiry_time
                ),
            )
        } else {
            why(
                "WindowOpen",
                format!(
                    "the request can be approved until {}",
                    request.spec.expiry_time
                ),
            )
        },
    );
    ApprovalRequestStatus {
        conditions: conditions.build(),
        decisions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::SignedDuration;
    use streamward_api::compile::parse_manifests;

    fn grant(extra: &str) -> AccessGrant {
        let yaml = format!(
            "apiVersion: streamward.io/v1alpha1
kind: AccessGrant
metadata: {{name: g, namespace: ns, generation: 3}}
spec:
  subjects: {{serviceAccounts: [app]}}
  resources: [{{resourceType: Topic, name: t}}]
  operations: [Read]
  startTime: '2026-01-01T00:00:00Z'
  durationSeconds: 20
  reason: test
{extra}"
        );
        parse_manifests(&yaml).unwrap().grants.remove(0)
    }

    fn at(seconds: i64) -> Timestamp {
        "2026-01-01T00:00:00Z".parse::<Timestamp>().unwrap() + SignedDuration::from_secs(seconds)
    }

    fn status_of<'s>(status: &'s AccessGrantStatus, type_: &str) -> &'s Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn a_grant_goes_from_not_started_to_active_to_expired_and_leaves_the_configs() {
        let mut g = grant("");
        let facts = GrantFacts::of(&g, &[]);
        assert_eq!(facts.next_change(at(-5)), Some(at(0)));
        assert_eq!(facts.next_change(at(5)), Some(at(20)));
        assert_eq!(facts.next_change(at(20)), None);
        assert!(facts.compiled_at(at(-5)) && facts.compiled_at(at(19)));
        assert!(!facts.compiled_at(at(20)));

        let before = grant_status(&g, &facts, Ok(()), at(-5));
        assert_eq!(status_of(&before, "Active").reason, "NotStarted");
        assert_eq!(status_of(&before, "Active").observed_generation, Some(3));
        g.status = Some(before.clone());

        let active = grant_status(&g, &facts, Ok(()), at(5));
        assert!(became_true(
            &before.conditions,
            &active.conditions,
            "Active"
        ));
        assert_eq!(status_of(&active, "Active").last_transition_time.0, at(5));
        assert_eq!(active.activated_at, Some(at(5)));
        // Accepted did not change, so it keeps its first transition time.
        assert_eq!(
            status_of(&active, "Accepted").last_transition_time.0,
            at(-5)
        );
        g.status = Some(active.clone());

        // Recomputing later without a change gives the same status: nothing to write.
        assert_eq!(grant_status(&g, &facts, Ok(()), at(9)), active);

        let expired = grant_status(&g, &facts, Ok(()), at(21));
        assert!(became_true(
            &active.conditions,
            &expired.conditions,
            "Expired"
        ));
        assert_eq!(status_of(&expired, "Active").reason, "Expired");
        assert_eq!(expired.activated_at, Some(at(5)));
        assert_eq!(expired.expired_at, Some(at(21)));
    }

    #[test]
    fn revoked_denied_and_pending_grants_are_not_active() {
        let revoked = grant("  revoked: true\n");
        let facts = GrantFacts::of(&revoked, &[]);
        assert!(!facts.compiled_at(at(5)));
        let status = grant_status(&revoked, &facts, Ok(()), at(5));
        assert_eq!(status_of(&status, "Revoked").status, "True");
        assert_eq!(status_of(&status, "Active").reason, "Revoked");

        let pending = grant("  requireApproval: true\n");
        let facts = GrantFacts::of(&pending, &[]);
        assert_eq!(facts.approval, GrantApproval::Pending);
        assert!(!facts.compiled_at(at(5)));
        assert_eq!(
            status_of(&grant_status(&pending, &facts, Ok(()), at(5)), "Active").reason,
            "PendingApproval"
        );

        let approval = |decision: &str, by: &str| -> Approval {
            serde_yaml::from_str(&format!(
                "apiVersion: streamward.io/v1alpha1
kind: Approval
metadata: {{name: a-{by}, namespace: ns}}
spec: {{requestRef: {{kind: AccessGrant, name: g}}, decision: {decision}, approver: {by}}}"
            ))
            .unwrap()
        };
        let yes = [approval("Approve", "bob")];
        let facts = GrantFacts::of(&pending, &yes);
        assert_eq!(facts.approval, GrantApproval::Approved("bob".into()));
        assert!(facts.compiled_at(at(5)));
        let no = [approval("Approve", "bob"), approval("Deny", "carol")];
        assert_eq!(
            GrantFacts::of(&pending, &no).approval,
            GrantApproval::Denied("carol".into())
        );
    }

    #[test]
    fn an_invalid_grant_is_not_accepted_and_says_why() {
        let g = grant("");
        let facts = GrantFacts::of(&g, &[]);
        let status = grant_status(&g, &facts, Err("spec.x is wrong".into()), at(5));
        let accepted = status_of(&status, "Accepted");
        assert_eq!(
            (accepted.status.as_str(), accepted.reason.as_str()),
            ("False", "Invalid")
        );
        assert_eq!(accepted.message, "spec.x is wrong");
        assert_eq!(status_of(&status, "Active").status, "False");
    }
    #[test]
    fn a_request_is_approved_by_enough_distinct_approvers_denied_by_one_and_expires() {
        let request: ApprovalRequest = serde_yaml::from_str(
            "apiVersion: streamward.io/v1alpha1
kind: ApprovalRequest
metadata: {name: r, namespace: ns, generation: 1}
spec:
  requester: {serviceAccount: app}
  apiKey: DeleteTopics
  operation: Delete
  resources: [{resourceType: Topic, name: t}]
  policy: p
  rule: deletes
  requestDigest: '0000000000000000000000000000000000000000000000000000000000000000'
  expiryTime: '2026-01-01T00:01:00Z'
  requiredApprovals: 2
",
        )
        .unwrap();
        let decide = |name: &str, by: &str, decision: &str| -> Approval {
            serde_yaml::from_str(&format!(
                "apiVersion: streamward.io/v1alpha1
kind: Approval
metadata: {{name: {name}, namespace: ns}}
spec: {{requestRef: {{kind: ApprovalRequest, name: r}}, decision: {decision}, approver: {by}}}"
            ))
            .unwrap()
        };
        let is = |s: &ApprovalRequestStatus, type_: &str| {
            s.conditions
                .iter()
                .any(|c| c.type_ == type_ && c.status == "True")
        };
        // The same approver twice is one approval.
        let twice = [decide("a", "bob", "Approve"), decide("b", "bob", "Approve")];
        let status = request_status(&request, &twice, at(10));
        assert!(!is(&status, "Approved"));
        assert_eq!(status.decisions.len(), 2);
        let two = [
            decide("a", "bob", "Approve"),
            decide("c", "carol", "Approve"),
        ];
        assert!(is(&request_status(&request, &two, at(10)), "Approved"));
        let denied = [
            decide("a", "bob", "Approve"),
            decide("c", "carol", "Approve"),
            decide("d", "dave", "Deny"),
        ];
        let status = request_status(&request, &denied, at(10));
        assert!(is(&status, "Denied") && !is(&status, "Approved"));
        let late = request_status(&request, &twice, at(61));
        assert!(is(&late, "Expired") && !is(&late, "Approved"));
    }
}

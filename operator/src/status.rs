//! Status conditions, the pure way: what each object's `status` should say now, given what
//! compiled, which approvals exist and what time it is.
//!
//! A condition keeps its `lastTransitionTime` while its status stays the same, and every
//! function here returns the same status for the same inputs, so an operator that restarts
//! computes exactly what is already written and writes nothing.

use std::collections::BTreeSet;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use streamward_api::approval::ApprovalSettings;
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
    /// Not enough approvals yet.
    Pending {
        /// Distinct approvers so far.
        approvals: usize,
        /// How many are needed.
        required: usize,
    },
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

/// The user the webhook stamped on an Approval.
fn approver(approval: &Approval) -> Option<&str> {
    approval.spec.approver.as_ref().map(|a| a.user.as_str())
}

/// The Approvals that decide on the object of `kind` named `name` with `uid` (and, for a
/// grant, at `generation`): those the admission webhook bound to this very object and stamped
/// with their approver. An Approval for an object deleted and re-created under the same name,
/// for a grant whose spec has changed since, or made without the webhook counts for nothing.
fn bound<'a>(
    approvals: &'a [Approval],
    kind: ApprovalTarget,
    name: &str,
    uid: Option<&str>,
    generation: Option<i64>,
) -> Vec<&'a Approval> {
    let Some(uid) = uid else {
        return Vec::new();
    };
    approvals
        .iter()
        .filter(|a| a.spec.request_ref.kind == kind && a.spec.request_ref.name == name)
        .filter(|a| a.spec.request_ref.uid.as_deref() == Some(uid))
        .filter(|a| generation.is_none() || a.spec.request_ref.generation == generation)
        .filter(|a| approver(a).is_some())
        .collect()
}

/// The distinct users who approved, in order.
fn approvers<'a>(decisions: &[&'a Approval]) -> BTreeSet<&'a str> {
    decisions
        .iter()
        .filter(|a| a.spec.decision == Decision::Approve)
        .filter_map(|a| approver(a))
        .collect()
}

/// The approval state of `grant` from the Approvals of its namespace, under the namespace's
/// approval `settings` (which decide whether it needs approval, not the grant).
pub fn grant_approval(
    grant: &AccessGrant,
    approvals: &[Approval],
    settings: &ApprovalSettings,
) -> GrantApproval {
    if !settings.grant_needs_approval(grant) {
        return GrantApproval::NotRequired;
    }
    let decisions = bound(
        approvals,
        ApprovalTarget::AccessGrant,
        grant.metadata.name.as_deref().unwrap_or_default(),
        grant.metadata.uid.as_deref(),
        Some(grant.metadata.generation.unwrap_or(1)),
    );
    if let Some(denial) = decisions.iter().find(|a| a.spec.decision == Decision::Deny) {
        return GrantApproval::Denied(approver(denial).unwrap_or_default().to_owned());
    }
    let approvers = approvers(&decisions);
    let required = settings.required_approvals.max(1) as usize;
    if approvers.len() >= required {
        GrantApproval::Approved(approvers.into_iter().collect::<Vec<_>>().join(", "))
    } else {
        GrantApproval::Pending {
            approvals: approvers.len(),
            required,
        }
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
    /// Reads the facts of `grant` under its namespace's approval `settings`.
    pub fn of(
        grant: &AccessGrant,
        approvals: &[Approval],
        settings: &ApprovalSettings,
    ) -> GrantFacts {
        GrantFacts {
            window: grant_window(grant).map_err(|e| e.to_string()),
            approval: grant_approval(grant, approvals, settings),
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
        GrantApproval::Pending {
            approvals,
            required,
        } => conditions.flag(
            condition::APPROVED,
            false,
            why(
                "Pending",
                format!("{approvals} of {required} approvals; waiting for an Approval with decision Approve"),
            ),
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
        _ if matches!(facts.approval, GrantApproval::Pending { .. }) => {
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

/// The status an ApprovalRequest should have: the decisions of the Approvals bound to it,
/// `Denied` on any Deny, `Approved` once enough distinct approvers approved before expiry (the
/// larger of its `requiredApprovals` and its policy's), `Expired` past `expiryTime`.
pub fn request_status(
    request: &ApprovalRequest,
    approvals: &[Approval],
    settings: &ApprovalSettings,
    now: Timestamp,
) -> ApprovalRequestStatus {
    let previous = request.status.clone().unwrap_or_default();
    let mut mine = bound(
        approvals,
        ApprovalTarget::ApprovalRequest,
        request.metadata.name.as_deref().unwrap_or_default(),
        request.metadata.uid.as_deref(),
        None,
    );
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
            approver: approver(a).map(str::to_owned),
            decision: a.spec.decision,
            comment: a.spec.comment.clone(),
        })
        .collect();
    let approvers = approvers(&mine);
    let denied = mine.iter().find(|a| a.spec.decision == Decision::Deny);
    let expired = now >= request.spec.expiry_time;
    let required = usize::try_from(request.spec.required_approvals.max(1))
        .unwrap_or(1)
        .max(settings.required_approvals as usize);
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
                    approvers.iter().copied().collect::<Vec<_>>().join(", ")
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
            Some(a) => why(
                "Denied",
                format!("denied by {}", approver(a).unwrap_or_default()),
            ),
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
metadata: {{name: g, namespace: ns, uid: grant-uid, generation: 3}}
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
        let facts = GrantFacts::of(&g, &[], &ApprovalSettings::default());
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
        let facts = GrantFacts::of(&revoked, &[], &ApprovalSettings::default());
        assert!(!facts.compiled_at(at(5)));
        let status = grant_status(&revoked, &facts, Ok(()), at(5));
        assert_eq!(status_of(&status, "Revoked").status, "True");
        assert_eq!(status_of(&status, "Active").reason, "Revoked");

        let pending = grant("  requireApproval: true\n");
        let any = ApprovalSettings::default();
        let facts = GrantFacts::of(&pending, &[], &any);
        assert_eq!(
            facts.approval,
            GrantApproval::Pending {
                approvals: 0,
                required: 1
            }
        );
        assert!(!facts.compiled_at(at(5)));
        assert_eq!(
            status_of(&grant_status(&pending, &facts, Ok(()), at(5)), "Active").reason,
            "PendingApproval"
        );

        let yes = [approval("Approve", "bob", "grant-uid", 3)];
        let facts = GrantFacts::of(&pending, &yes, &any);
        assert_eq!(facts.approval, GrantApproval::Approved("bob".into()));
        assert!(facts.compiled_at(at(5)));
        let no = [
            approval("Approve", "bob", "grant-uid", 3),
            approval("Deny", "carol", "grant-uid", 3),
        ];
        assert_eq!(
            GrantFacts::of(&pending, &no, &any).approval,
            GrantApproval::Denied("carol".into())
        );
    }

    fn approval(decision: &str, by: &str, uid: &str, generation: i64) -> Approval {
        serde_yaml::from_str(&format!(
            "apiVersion: streamward.io/v1alpha1
kind: Approval
metadata: {{name: a-{by}, namespace: ns}}
spec:
  requestRef: {{kind: AccessGrant, name: g, uid: {uid}, generation: {generation}}}
  decision: {decision}
  approver: {{user: {by}}}"
        ))
        .unwrap()
    }

    #[test]
    fn the_namespace_not_the_grant_decides_whether_it_needs_approval() {
        let quiet = grant("");
        let strict = ApprovalSettings {
            grants_require_approval: true,
            required_approvals: 2,
            ..ApprovalSettings::default()
        };
        let facts = GrantFacts::of(&quiet, &[], &strict);
        assert!(!facts.compiled_at(at(5)));
        let one = [approval("Approve", "bob", "grant-uid", 3)];
        assert_eq!(
            GrantFacts::of(&quiet, &one, &strict).approval,
            GrantApproval::Pending {
                approvals: 1,
                required: 2
            }
        );
        let two = [
            approval("Approve", "bob", "grant-uid", 3),
            approval("Approve", "carol", "grant-uid", 3),
        ];
        assert_eq!(
            GrantFacts::of(&quiet, &two, &strict).approval,
            GrantApproval::Approved("bob, carol".into())
        );
    }

    #[test]
    fn approvals_of_another_grant_by_that_name_or_of_an_older_spec_count_for_nothing() {
        let pending = grant("  requireApproval: true\n");
        let any = ApprovalSettings::default();
        for stale in [
            approval("Approve", "bob", "an-older-grant", 3),
            approval("Approve", "bob", "grant-uid", 2),
        ] {
            assert!(matches!(
                GrantFacts::of(&pending, &[stale], &any).approval,
                GrantApproval::Pending { approvals: 0, .. }
            ));
        }
        // Made without the webhook: no approver, no uid.
        let unstamped: Approval = serde_yaml::from_str(
            "apiVersion: streamward.io/v1alpha1
kind: Approval
metadata: {name: forged, namespace: ns}
spec: {requestRef: {kind: AccessGrant, name: g}, decision: Approve}",
        )
        .unwrap();
        assert!(matches!(
            GrantFacts::of(&pending, &[unstamped], &any).approval,
            GrantApproval::Pending { approvals: 0, .. }
        ));
    }

    #[test]
    fn an_invalid_grant_is_not_accepted_and_says_why() {
        let g = grant("");
        let facts = GrantFacts::of(&g, &[], &ApprovalSettings::default());
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
metadata: {name: r, namespace: ns, uid: request-uid, generation: 1}
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
spec:
  requestRef: {{kind: ApprovalRequest, name: r, uid: request-uid}}
  decision: {decision}
  approver: {{user: {by}}}"
            ))
            .unwrap()
        };
        let is = |s: &ApprovalRequestStatus, type_: &str| {
            s.conditions
                .iter()
                .any(|c| c.type_ == type_ && c.status == "True")
        };
        let any = ApprovalSettings::default();
        // The same approver twice is one approval.
        let twice = [decide("a", "bob", "Approve"), decide("b", "bob", "Approve")];
        let status = request_status(&request, &twice, &any, at(10));
        assert!(!is(&status, "Approved"));
        assert_eq!(status.decisions.len(), 2);
        let two = [
            decide("a", "bob", "Approve"),
            decide("c", "carol", "Approve"),
        ];
        assert!(is(
            &request_status(&request, &two, &any, at(10)),
            "Approved"
        ));
        let denied = [
            decide("a", "bob", "Approve"),
            decide("c", "carol", "Approve"),
            decide("d", "dave", "Deny"),
        ];
        let status = request_status(&request, &denied, &any, at(10));
        assert!(is(&status, "Denied") && !is(&status, "Approved"));
        let late = request_status(&request, &twice, &any, at(61));
        assert!(is(&late, "Expired") && !is(&late, "Approved"));
    }
}

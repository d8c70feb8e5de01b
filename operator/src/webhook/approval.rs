//! Approvals that cannot be forged, pure: what the admission webhooks stamp on a new Approval or
//! AccessGrant, and what they refuse.
//!
//! Who decided comes from the API server's own record of who made the request (the admission
//! request's `userInfo`), never from the object; an Approval is bound to the uid of what it
//! decides on (and to a grant's generation, so that changing an approved grant's spec drops it
//! back to unapproved); a requester can never approve their own request; a policy's approvers
//! must include the approver as well as RBAC allowing them to create Approvals.

use jiff::Timestamp;
use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use serde_json::{Value, json};
use streamward_api::approval::ApprovalSettings;
use streamward_api::crd::{
    AccessGrant, Approval, ApprovalRequest, ApprovalTarget, Approver, RELEASED_ANNOTATION,
    REQUESTED_BY_ANNOTATION,
};

/// What an Approval decides on, as the API server stores it now.
#[derive(Clone, Copy, Debug)]
pub enum Decided<'a> {
    /// A grant.
    Grant(&'a AccessGrant),
    /// A held request.
    Request(&'a ApprovalRequest),
}

impl Decided<'_> {
    fn uid(&self) -> Option<&str> {
        match self {
            Decided::Grant(grant) => grant.metadata.uid.as_deref(),
            Decided::Request(request) => request.metadata.uid.as_deref(),
        }
    }

    /// A grant's generation; `None` for a request (whose spec cannot change).
    fn generation(&self) -> Option<i64> {
        match self {
            Decided::Grant(grant) => Some(grant.metadata.generation.unwrap_or(1)),
            Decided::Request(_) => None,
        }
    }

    fn kind(&self) -> ApprovalTarget {
        match self {
            Decided::Grant(_) => ApprovalTarget::AccessGrant,
            Decided::Request(_) => ApprovalTarget::ApprovalRequest,
        }
    }
}

/// The Kubernetes user name of a service account.
pub fn service_account_user(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

fn add(path: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(path.iter().copied()),
        value,
    })
}

/// The patch for a new Approval: `spec.approver` is `caller` (whatever the client wrote), and
/// `spec.requestRef` is bound to the uid (and a grant's generation) of `decided`.
pub fn stamp_approval(caller: &Approver, decided: Decided<'_>) -> Patch {
    let mut ops = vec![
        add(
            &["spec", "approver"],
            serde_json::to_value(caller).unwrap_or(Value::Null),
        ),
        add(
            &["spec", "requestRef", "uid"],
            json!(decided.uid().unwrap_or_default()),
        ),
    ];
    if let Some(generation) = decided.generation() {
        ops.push(add(
            &["spec", "requestRef", "generation"],
            json!(generation),
        ));
    }
    Patch(ops)
}

/// The patch for a new AccessGrant: who asked for it, in [`REQUESTED_BY_ANNOTATION`].
pub fn stamp_grant(object: &Value, caller: &Approver) -> Patch {
    let mut ops = Vec::new();
    if object
        .pointer("/metadata/annotations")
        .is_none_or(Value::is_null)
    {
        ops.push(add(&["metadata", "annotations"], json!({})));
    }
    ops.push(add(
        &["metadata", "annotations", REQUESTED_BY_ANNOTATION],
        json!(caller.user),
    ));
    Patch(ops)
}

/// Whether `caller` may create `approval` (as stamped) on `decided` in `namespace`, under the
/// approval `settings` that apply to it, at `now`. The message says why not.
pub fn check_approval(
    approval: &Approval,
    caller: &Approver,
    decided: Decided<'_>,
    namespace: &str,
    settings: &ApprovalSettings,
    now: Timestamp,
) -> Result<(), String> {
    let name = approval.metadata.name.as_deref().unwrap_or_default();
    let target = &approval.spec.request_ref;
    let what = format!("{:?} {namespace}/{}", target.kind, target.name);
    if approval.spec.approver.as_ref() != Some(caller) {
        return Err(format!(
            "Approval {namespace}/{name}: spec.approver must be the user who creates it \
             ({}); it is set by the admission webhook",
            caller.user
        ));
    }
    if target.kind != decided.kind()
        || target.uid.is_none()
        || target.uid.as_deref() != decided.uid()
        || target.generation != decided.generation()
    {
        return Err(format!(
            "Approval {namespace}/{name}: spec.requestRef must name {what} as it is now \
             (its uid and generation are set by the admission webhook)"
        ));
    }
    let own = |reason: &str| {
        Err(format!(
            "{} may not approve {what}: {reason}; another approver must decide",
            caller.user
        ))
    };
    match decided {
        Decided::Grant(grant) => {
            let requested_by = grant
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(REQUESTED_BY_ANNOTATION));
            if requested_by == Some(&caller.user) {
                return own("they asked for the grant");
            }
            let subjects = &grant.spec.subjects;
            let is_subject_account = subjects.service_accounts.iter().any(|sa| {
                let (ns, sa) = sa.split_once('/').unwrap_or((namespace, sa));
                service_account_user(ns, sa) == caller.user
            });
            if is_subject_account || subjects.users.contains(&caller.user) {
                return own("the grant is for them");
            }
        }
        Decided::Request(request) => {
            let requester = &request.spec.requester;
            if service_account_user(namespace, &requester.service_account) == caller.user
                || requester.user.as_ref() == Some(&caller.user)
            {
                return own("they made the request");
            }
            if now >= request.spec.expiry_time {
                return Err(format!(
                    "{what} expired at {}; the client must send the request again",
                    request.spec.expiry_time
                ));
            }
        }
    }
    if !settings.allows(caller) {
        return Err(format!(
            "{} is not an approver of {what}: the policy names users {:?} and groups {:?}",
            caller.user, settings.approvers.users, settings.approvers.groups
        ));
    }
    Ok(())
}

/// Whether an update of an AccessGrant from `old` to `new` keeps what must not change: who
/// asked for it, and a revocation.
pub fn check_grant_update(old: &Value, new: &Value) -> Result<(), String> {
    let requested_by = |grant: &Value| {
        grant
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(REQUESTED_BY_ANNOTATION))
            .cloned()
    };
    if requested_by(old) != requested_by(new) {
        return Err(format!(
            "the annotation {REQUESTED_BY_ANNOTATION} records who asked for the grant and \
             cannot be changed"
        ));
    }
    let revoked = |grant: &Value| grant.pointer("/spec/revoked") == Some(&Value::Bool(true));
    if revoked(old) && !revoked(new) {
        return Err("a revoked grant stays revoked; create a new grant instead".to_owned());
    }
    Ok(())
}

/// Whether a new AccessGrant carries the requester the mutating webhook stamped.
pub fn check_new_grant(object: &Value, caller: &Approver) -> Result<(), String> {
    let stamped = object
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(REQUESTED_BY_ANNOTATION))
        .and_then(Value::as_str);
    if stamped != Some(caller.user.as_str()) {
        return Err(format!(
            "the annotation {REQUESTED_BY_ANNOTATION} must name the user who creates the grant \
             ({}); it is set by the admission webhook",
            caller.user
        ));
    }
    Ok(())
}

/// Whether `caller` may create the ApprovalRequest `object` in `namespace`: only the proxy of
/// the workload it names, as the service account the API server authenticated. Anyone else
/// (a person, another workload) could otherwise ask for approval in a workload's name.
pub fn check_new_request(object: &Value, caller: &Approver, namespace: &str) -> Result<(), String> {
    let requester = object
        .pointer("/spec/requester/serviceAccount")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let expected = format!("system:serviceaccount:{namespace}:{requester}");
    if caller.user != expected {
        return Err(format!(
            "an ApprovalRequest is created by the Streamward proxy of the workload it names              ({expected}), not by {}",
            caller.user
        ));
    }
    if object
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(RELEASED_ANNOTATION))
        .is_some()
    {
        return Err(format!(
            "a new ApprovalRequest cannot carry {RELEASED_ANNOTATION}"
        ));
    }
    Ok(())
}

/// Whether an update of an ApprovalRequest keeps its release mark: once an approval has
/// released its one request, nobody (the workload shares its service account with the proxy)
/// may make it release another.
pub fn check_request_update(old: &Value, new: &Value) -> Result<(), String> {
    let mark = |object: &Value| {
        object
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(RELEASED_ANNOTATION))
            .cloned()
    };
    match mark(old) {
        Some(released) if mark(new).as_ref() != Some(&released) => Err(format!(
            "{RELEASED_ANNOTATION} cannot be removed or changed: the approval has released its              request"
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_requesters_own_proxy_creates_an_approval_request_and_a_release_sticks() {
        let request = serde_json::json!({
            "metadata": {"name": "r"},
            "spec": {"requester": {"serviceAccount": "orders"}}
        });
        let proxy = user("system:serviceaccount:shop:orders", &[]);
        assert_eq!(check_new_request(&request, &proxy, "shop"), Ok(()));
        for other in [
            "system:serviceaccount:shop:billing",
            "system:serviceaccount:other:orders",
            "alice",
        ] {
            assert!(check_new_request(&request, &user(other, &[]), "shop").is_err());
        }
        let mut released = request.clone();
        released["metadata"]["annotations"] =
            serde_json::json!({RELEASED_ANNOTATION: "2026-12-06T10:00:00Z"});
        assert!(check_new_request(&released, &proxy, "shop").is_err());
        assert_eq!(check_request_update(&request, &released), Ok(()));
        assert!(check_request_update(&released, &request).is_err());
        let mut changed = released.clone();
        changed["metadata"]["annotations"][RELEASED_ANNOTATION] = "later".into();
        assert!(check_request_update(&released, &changed).is_err());
        assert_eq!(check_request_update(&released, &released), Ok(()));
    }

    fn user(name: &str, groups: &[&str]) -> Approver {
        Approver {
            user: name.into(),
            groups: groups.iter().map(|g| (*g).into()).collect(),
        }
    }

    fn grant() -> AccessGrant {
        serde_yaml::from_str(&format!(
            "apiVersion: streamward.io/v1alpha1
kind: AccessGrant
metadata:
  name: debug
  namespace: shop
  uid: grant-uid-1
  generation: 2
  annotations: {{{REQUESTED_BY_ANNOTATION}: bob}}
spec:
  subjects: {{serviceAccounts: [orders], users: [oncall-bot]}}
  resources: [{{resourceType: Topic, name: orders}}]
  operations: [Read]
  durationSeconds: 600
  reason: incident 42
"
        ))
        .unwrap()
    }

    fn request(expiry: &str) -> ApprovalRequest {
        serde_yaml::from_str(&format!(
            "apiVersion: streamward.io/v1alpha1
kind: ApprovalRequest
metadata: {{name: delete-orders, namespace: shop, uid: request-uid-1}}
spec:
  requester: {{serviceAccount: orders, user: carol}}
  apiKey: DeleteTopics
  operation: Delete
  resources: [{{resourceType: Topic, name: orders}}]
  policy: orders
  rule: deletes
  requestDigest: '{digest}'
  expiryTime: '{expiry}'
",
            digest = "0".repeat(64)
        ))
        .unwrap()
    }

    /// An Approval as the client sent it, then stamped as the mutating webhook does.
    fn stamped(kind: &str, name: &str, by: &Approver, decided: Decided<'_>) -> Approval {
        let mut value = json!({
            "apiVersion": "streamward.io/v1alpha1",
            "kind": "Approval",
            "metadata": {"name": "yes", "namespace": "shop"},
            "spec": {"requestRef": {"kind": kind, "name": name}, "decision": "Approve",
                     "approver": {"user": "someone-else"}},
        });
        json_patch::patch(&mut value, &stamp_approval(by, decided)).unwrap();
        serde_json::from_value(value).unwrap()
    }

    fn approvers(users: &[&str]) -> ApprovalSettings {
        ApprovalSettings {
            approvers: streamward_api::crd::ApproversSpec {
                users: users.iter().map(|u| (*u).into()).collect(),
                groups: vec!["kafka-admins".into()],
            },
            ..ApprovalSettings::default()
        }
    }

    fn now() -> Timestamp {
        "2026-12-06T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn the_approver_is_whoever_created_the_approval_whatever_they_wrote() {
        let grant = grant();
        let alice = user("alice", &["dev"]);
        let approval = stamped("AccessGrant", "debug", &alice, Decided::Grant(&grant));
        assert_eq!(approval.spec.approver.as_ref(), Some(&alice));
        assert_eq!(
            approval.spec.request_ref.uid.as_deref(),
            Some("grant-uid-1")
        );
        assert_eq!(approval.spec.request_ref.generation, Some(2));
        let settings = approvers(&["alice"]);
        let check = |approval: &Approval, caller: &Approver| {
            check_approval(
                approval,
                caller,
                Decided::Grant(&grant),
                "shop",
                &settings,
                now(),
            )
        };
        assert_eq!(check(&approval, &alice), Ok(()));
        // Stamped for alice, sent by mallory (the stamp skipped): refused.
        let error = check(&approval, &user("mallory", &[])).unwrap_err();
        assert!(error.contains("spec.approver"), "{error}");
    }

    #[test]
    fn a_requester_never_approves_their_own_grant_or_request() {
        let grant = grant();
        let settings = ApprovalSettings::default();
        for (who, why) in [
            ("bob", "asked for the grant"),
            ("system:serviceaccount:shop:orders", "for them"),
            ("oncall-bot", "for them"),
        ] {
            let caller = user(who, &[]);
            let approval = stamped("AccessGrant", "debug", &caller, Decided::Grant(&grant));
            let error = check_approval(
                &approval,
                &caller,
                Decided::Grant(&grant),
                "shop",
                &settings,
                now(),
            )
            .unwrap_err();
            assert!(error.contains(why), "{who}: {error}");
        }
        let request = request("2026-12-06T13:00:00Z");
        for who in ["system:serviceaccount:shop:orders", "carol"] {
            let caller = user(who, &[]);
            let decided = Decided::Request(&request);
            let approval = stamped("ApprovalRequest", "delete-orders", &caller, decided);
            let error =
                check_approval(&approval, &caller, decided, "shop", &settings, now()).unwrap_err();
            assert!(error.contains("made the request"), "{who}: {error}");
        }
    }

    #[test]
    fn only_the_policys_approvers_decide() {
        let grant = grant();
        let settings = approvers(&["alice"]);
        let check = |caller: &Approver| {
            let approval = stamped("AccessGrant", "debug", caller, Decided::Grant(&grant));
            check_approval(
                &approval,
                caller,
                Decided::Grant(&grant),
                "shop",
                &settings,
                now(),
            )
        };
        assert_eq!(check(&user("alice", &[])), Ok(()));
        assert_eq!(check(&user("dave", &["kafka-admins"])), Ok(()));
        let error = check(&user("mallory", &["dev"])).unwrap_err();
        assert!(error.contains("not an approver"), "{error}");
    }

    #[test]
    fn an_approval_binds_to_the_object_as_it_is_now() {
        let grant = grant();
        let alice = user("alice", &[]);
        let mut approval = stamped("AccessGrant", "debug", &alice, Decided::Grant(&grant));
        let settings = ApprovalSettings::default();
        // The grant was re-created (new uid) or its spec changed (new generation).
        let mut recreated = grant.clone();
        recreated.metadata.uid = Some("grant-uid-2".into());
        let mut widened = grant.clone();
        widened.metadata.generation = Some(3);
        for other in [&recreated, &widened] {
            let error = check_approval(
                &approval,
                &alice,
                Decided::Grant(other),
                "shop",
                &settings,
                now(),
            )
            .unwrap_err();
            assert!(error.contains("as it is now"), "{error}");
        }
        approval.spec.request_ref.uid = None;
        assert!(
            check_approval(
                &approval,
                &alice,
                Decided::Grant(&grant),
                "shop",
                &settings,
                now()
            )
            .is_err()
        );
    }

    #[test]
    fn an_expired_request_cannot_be_approved() {
        let request = request("2026-12-06T11:59:59Z");
        let alice = user("alice", &[]);
        let decided = Decided::Request(&request);
        let approval = stamped("ApprovalRequest", "delete-orders", &alice, decided);
        let error = check_approval(
            &approval,
            &alice,
            decided,
            "shop",
            &ApprovalSettings::default(),
            now(),
        )
        .unwrap_err();
        assert!(error.contains("expired"), "{error}");
    }

    #[test]
    fn who_asked_and_a_revocation_cannot_be_undone() {
        let old = serde_json::to_value(grant()).unwrap();
        let mut new = old.clone();
        new["metadata"]["annotations"][REQUESTED_BY_ANNOTATION] = json!("alice");
        assert!(check_grant_update(&old, &new).is_err());
        let mut revoked = old.clone();
        revoked["spec"]["revoked"] = json!(true);
        assert_eq!(check_grant_update(&old, &revoked), Ok(()));
        let mut unrevoked = revoked.clone();
        unrevoked["spec"].as_object_mut().unwrap().remove("revoked");
        assert!(check_grant_update(&revoked, &unrevoked).is_err());
        unrevoked["spec"]["revoked"] = json!(false);
        assert!(check_grant_update(&revoked, &unrevoked).is_err());
    }

    #[test]
    fn a_new_grant_records_who_asked() {
        let mut object = json!({"metadata": {"name": "g"}});
        let bob = user("bob", &[]);
        assert!(check_new_grant(&object, &bob).is_err());
        let patch = stamp_grant(&object, &bob);
        json_patch::patch(&mut object, &patch).unwrap();
        assert_eq!(check_new_grant(&object, &bob), Ok(()));
        assert!(check_new_grant(&object, &user("alice", &[])).is_err());
    }
}

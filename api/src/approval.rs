//! Who approves what in a namespace, from its StreamPolicies' `approval` blocks: pure, shared by
//! the compiler, the operator's statuses and its admission webhook, so that all three agree on
//! which grants need approval and whose approval counts.

use crate::crd::{AccessGrant, Approver, ApproversSpec, StreamPolicy};

/// The approval settings that apply to a grant or to the requests of one policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApprovalSettings {
    /// Who may approve; empty: whoever RBAC on `approvals` allows.
    pub approvers: ApproversSpec,
    /// How many distinct approvers must approve.
    pub required_approvals: u32,
    /// Whether every grant needs approval.
    pub grants_require_approval: bool,
}

impl Default for ApprovalSettings {
    fn default() -> Self {
        ApprovalSettings {
            approvers: ApproversSpec::default(),
            required_approvals: 1,
            grants_require_approval: false,
        }
    }
}

impl ApprovalSettings {
    /// The settings of one policy (for the ApprovalRequests its `RequireApproval` rules make).
    pub fn of_policy(policy: &StreamPolicy) -> ApprovalSettings {
        ApprovalSettings::for_grants([policy])
    }

    /// The settings for the AccessGrants of a namespace, from all its policies: a grant needs
    /// approval when any policy says so, the approvers are all those named, and the largest
    /// `requiredApprovals` applies. The strictest policy wins.
    pub fn for_grants<'p>(
        policies: impl IntoIterator<Item = &'p StreamPolicy>,
    ) -> ApprovalSettings {
        let mut settings = ApprovalSettings::default();
        for approval in policies
            .into_iter()
            .filter_map(|p| p.spec.approval.as_ref())
        {
            settings.grants_require_approval |= approval.grants_require_approval;
            let required = u32::try_from(approval.required_approvals)
                .unwrap_or(1)
                .max(1);
            settings.required_approvals = settings.required_approvals.max(required);
            for user in &approval.approvers.users {
                if !settings.approvers.users.contains(user) {
                    settings.approvers.users.push(user.clone());
                }
            }
            for group in &approval.approvers.groups {
                if !settings.approvers.groups.contains(group) {
                    settings.approvers.groups.push(group.clone());
                }
            }
        }
        settings
    }

    /// Whether `grant` counts only once approved: the namespace requires it, or the grant asks.
    pub fn grant_needs_approval(&self, grant: &AccessGrant) -> bool {
        self.grants_require_approval || grant.spec.require_approval
    }

    /// Whether `approver` is one of the approvers (RBAC aside): named, or in a named group, or
    /// anyone when none is named.
    pub fn allows(&self, approver: &Approver) -> bool {
        self.approvers.is_empty()
            || self.approvers.users.contains(&approver.user)
            || approver
                .groups
                .iter()
                .any(|g| self.approvers.groups.contains(g))
    }
}

/// The command an approver runs to approve the ApprovalRequest `name` in `namespace`: an
/// Approval, which the admission webhook stamps with who they are.
pub fn approve_command(namespace: &str, name: &str) -> String {
    format!(
        "printf 'apiVersion: streamward.io/v1alpha1\\nkind: Approval\\nmetadata: {{generateName: {name}-}}\\nspec: {{requestRef: {{kind: ApprovalRequest, name: {name}}}, decision: Approve}}\\n' | kubectl -n {namespace} create -f -"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(approval: &str) -> StreamPolicy {
        serde_yaml::from_str(&format!(
            "apiVersion: streamward.io/v1alpha1
kind: StreamPolicy
metadata: {{name: p, namespace: shop}}
spec:
  subjects: {{serviceAccounts: [orders]}}
{approval}"
        ))
        .unwrap()
    }

    fn user(name: &str, groups: &[&str]) -> Approver {
        Approver {
            user: name.into(),
            groups: groups.iter().map(|g| (*g).into()).collect(),
        }
    }

    #[test]
    fn the_strictest_policy_of_the_namespace_decides_for_grants() {
        let lax = policy("");
        let strict = policy(
            "  approval:
    approvers: {users: [alice], groups: [kafka-admins]}
    requiredApprovals: 2
    grantsRequireApproval: true
",
        );
        let other = policy("  approval: {approvers: {users: [carol]}}\n");
        assert_eq!(
            ApprovalSettings::for_grants([&lax]),
            ApprovalSettings::default()
        );
        let settings = ApprovalSettings::for_grants([&lax, &strict, &other]);
        assert!(settings.grants_require_approval);
        assert_eq!(settings.required_approvals, 2);
        assert_eq!(settings.approvers.users, ["alice", "carol"]);
        assert!(settings.allows(&user("alice", &[])));
        assert!(settings.allows(&user("dave", &["kafka-admins"])));
        assert!(!settings.allows(&user("mallory", &["developers"])));
    }

    #[test]
    fn without_named_approvers_rbac_alone_decides() {
        let settings = ApprovalSettings::of_policy(&policy("  approval: {requiredApprovals: 1}\n"));
        assert!(settings.allows(&user("anyone", &[])));
        assert!(!settings.grants_require_approval);
    }
}

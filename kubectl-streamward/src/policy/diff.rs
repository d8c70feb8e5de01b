//! `policy diff OLD NEW`: which identities gain or lose which access between two folders.
//!
//! The identities are every service account, user and group that a StreamPolicy or AccessGrant
//! of either folder names, in the namespace of the object naming it. The accesses are every
//! resource a rule or grant of either folder names (a literal name; a prefix or glob stands
//! for the names it covers; `*` for any other name), with every operation Kafka defines for
//! its type. Each is decided on each StreamTarget of the namespace with both folders' configs;
//! what changes effect is listed. Grants are decided now, objects without a creation time
//! counting as created now.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};

use jiff::Timestamp;
use streamward_api::acl::{CLUSTER_NAME, Operation, PatternType, ResourcePattern, ResourceType};
use streamward_api::config::WorkloadIdentity;
use streamward_api::crd::SubjectsSpec;
use streamward_api::decide::Principal;

use super::folder::Folder;
use super::{Access, BadInput, describe};

/// Who a diff decides for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Who {
    ServiceAccount(WorkloadIdentity),
    User { namespace: String, name: String },
    Group { namespace: String, name: String },
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Who::ServiceAccount(id) => {
                write!(f, "service account {}/{}", id.namespace, id.service_account)
            }
            Who::User { namespace, name } => write!(f, "user {name} (in namespace {namespace})"),
            Who::Group { namespace, name } => {
                write!(f, "group {name} (in namespace {namespace})")
            }
        }
    }
}

impl Who {
    /// The identity whose config is compiled: the service account, or for a user or group one
    /// that no policy names (their clients may run behind any workload).
    fn identity(&self) -> WorkloadIdentity {
        match self {
            Who::ServiceAccount(id) => id.clone(),
            Who::User { namespace, .. } | Who::Group { namespace, .. } => WorkloadIdentity {
                namespace: namespace.clone(),
                service_account: String::new(),
            },
        }
    }
}

/// A resource name decided for, and how the report names it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Probe {
    resource_type: ResourceType,
    name: String,
    shown: String,
}

/// One access whose effect changes.
#[derive(Debug, PartialEq, Eq)]
pub struct Change {
    /// Gained (more permissive) or lost.
    pub gained: bool,
    /// Who.
    pub who: String,
    /// What, on which target.
    pub what: String,
    /// The old and the new decision.
    pub old: String,
    /// The new decision.
    pub new: String,
}

/// Every access whose effect differs between `old` and `new`.
pub fn changes(
    old: &mut Folder,
    new: &mut Folder,
    namespace: &str,
    now: Timestamp,
) -> Result<Vec<Change>, BadInput> {
    let mut whos = BTreeSet::new();
    let mut probes = BTreeSet::new();
    for folder in [&*old, &*new] {
        collect(folder, namespace, &mut whos, &mut probes);
    }
    let mut changes = Vec::new();
    let no_labels = BTreeMap::new();
    for who in &whos {
        let identity = who.identity();
        let (user, groups): (Option<&str>, Vec<String>) = match who {
            Who::ServiceAccount(_) => (None, Vec::new()),
            Who::User { name, .. } => (Some(name), Vec::new()),
            Who::Group { name, .. } => (None, vec![name.clone()]),
        };
        let principal = Principal {
            identity: &identity,
            pod_labels: &no_labels,
            user,
            groups: &groups,
        };
        let old_config = old.config(&identity)?.clone();
        let new_config = new.config(&identity)?;
        let mut targets: BTreeSet<String> = old_config
            .targets
            .keys()
            .chain(new_config.targets.keys())
            .cloned()
            .collect();
        if targets.is_empty() {
            targets.insert(String::new());
        }
        for target in &targets {
            for probe in &probes {
                for &operation in operations(probe.resource_type) {
                    let decide = |config: &streamward_api::config::ProxyConfig| {
                        let d = config.decide(
                            &principal,
                            target,
                            probe.resource_type,
                            &probe.name,
                            operation,
                            now,
                        );
                        (d.effect, describe(&d))
                    };
                    let (old_effect, old_text) = decide(&old_config);
                    let (new_effect, new_text) = decide(new_config);
                    if old_effect != new_effect {
                        let access = Access {
                            resource_type: probe.resource_type,
                            name: probe.shown.clone(),
                            operation,
                        };
                        let what = if targets.len() > 1 {
                            format!("{access} on target {target}")
                        } else {
                            access.to_string()
                        };
                        changes.push(Change {
                            gained: new_effect < old_effect,
                            who: who.to_string(),
                            what,
                            old: old_text,
                            new: new_text,
                        });
                    }
                }
            }
        }
    }
    Ok(changes)
}

/// The report: changes grouped by identity, then a count.
pub fn render(changes: &[Change], old: &str, new: &str) -> String {
    if changes.is_empty() {
        return format!("no access changes from {old} to {new}\n");
    }
    let mut out = format!("access that changes from {old} to {new} (+ gained, - lost):\n");
    let mut current = None;
    for change in changes {
        if current != Some(&change.who) {
            let _ = writeln!(out, "{}", change.who);
            current = Some(&change.who);
        }
        let sign = if change.gained { '+' } else { '-' };
        let _ = writeln!(
            out,
            "  {sign} {}: {} -> {}",
            change.what, change.old, change.new
        );
    }
    let gained = changes.iter().filter(|c| c.gained).count();
    let _ = writeln!(
        out,
        "{gained} accesses gained, {} lost",
        changes.len() - gained
    );
    out
}

fn collect(
    folder: &Folder,
    default_namespace: &str,
    whos: &mut BTreeSet<Who>,
    probes: &mut BTreeSet<Probe>,
) {
    let inputs = &folder.inputs;
    let mut add_subjects = |namespace: Option<&String>, subjects: &SubjectsSpec| {
        let namespace = namespace.map_or(default_namespace, String::as_str);
        for sa in &subjects.service_accounts {
            let (ns, name) = sa.split_once('/').unwrap_or((namespace, sa));
            whos.insert(Who::ServiceAccount(WorkloadIdentity {
                namespace: ns.to_owned(),
                service_account: name.to_owned(),
            }));
        }
        for user in &subjects.users {
            whos.insert(Who::User {
                namespace: namespace.to_owned(),
                name: user.clone(),
            });
        }
        for group in &subjects.groups {
            whos.insert(Who::Group {
                namespace: namespace.to_owned(),
                name: group.clone(),
            });
        }
    };
    for policy in &inputs.policies {
        add_subjects(policy.metadata.namespace.as_ref(), &policy.spec.subjects);
    }
    for grant in &inputs.grants {
        add_subjects(grant.metadata.namespace.as_ref(), &grant.spec.subjects);
    }
    let patterns = inputs
        .policies
        .iter()
        .flat_map(|p| p.spec.rules.iter().flat_map(|r| r.resources.iter()))
        .chain(inputs.grants.iter().flat_map(|g| g.spec.resources.iter()));
    for pattern in patterns {
        probes.insert(probe(pattern));
        // Whatever a pattern covers, some name of its type may be covered by nothing else.
        probes.insert(Probe {
            resource_type: pattern.resource_type,
            name: if pattern.resource_type == ResourceType::Cluster {
                CLUSTER_NAME.to_owned()
            } else {
                "*".to_owned()
            },
            shown: if pattern.resource_type == ResourceType::Cluster {
                CLUSTER_NAME.to_owned()
            } else {
                "<any other name>".to_owned()
            },
        });
    }
}

fn probe(pattern: &ResourcePattern) -> Probe {
    let (name, shown) = match pattern.pattern_type {
        PatternType::Literal if pattern.name == "*" => {
            ("*".to_owned(), "<any other name>".to_owned())
        }
        PatternType::Literal => (pattern.name.clone(), pattern.name.clone()),
        PatternType::Prefixed => (pattern.name.clone(), format!("{}* (prefix)", pattern.name)),
        PatternType::Glob => (
            pattern.name.replace(['*', '?'], "x"),
            format!("{} (glob)", pattern.name),
        ),
    };
    let (name, shown) = if pattern.resource_type == ResourceType::Cluster {
        (CLUSTER_NAME.to_owned(), CLUSTER_NAME.to_owned())
    } else {
        (name, shown)
    };
    Probe {
        resource_type: pattern.resource_type,
        name,
        shown,
    }
}

/// The operations Kafka defines on each resource type.
fn operations(resource_type: ResourceType) -> &'static [Operation] {
    use Operation::*;
    match resource_type {
        ResourceType::Topic => &[
            Read,
            Write,
            Create,
            Delete,
            Alter,
            Describe,
            DescribeConfigs,
            AlterConfigs,
        ],
        ResourceType::Group => &[Read, Describe, Delete],
        ResourceType::TransactionalId => &[Write, Describe],
        ResourceType::Cluster => &[
            Create,
            Alter,
            Describe,
            DescribeConfigs,
            AlterConfigs,
            IdempotentWrite,
        ],
    }
}

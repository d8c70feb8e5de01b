//! Custom resources → [`ProxyConfig`]: the one pure function the operator (for every workload
//! identity) and the proxy's local mode (`--policies DIR`) both use, so a policy means the same
//! thing in a cluster and on a laptop.
//!
//! What goes into the config of identity `namespace/serviceAccount`:
//!
//! - every StreamTarget of the namespace, by name;
//! - every StreamPolicy of the namespace whose subjects could match the identity: it names the
//!   service account, users or groups (which the proxy matches on each request). A
//!   `podSelector` only narrows those (the proxy checks its pod's labels); one that stands
//!   alone is refused, since the pod's author chooses its labels. Sorted by name; unnamed rules
//!   are called `rule-<index>`;
//! - every AccessGrant of the namespace whose subjects could match, unless it is revoked
//!   (`spec.revoked` or `Revoked=True`) or still waits for approval (`requireApproval` without `Approved=True`),
//!   with its window `[startTime or creation, expiryTime or start + durationSeconds)`. Grants
//!   outside their window stay in: the proxy checks the window on every request, so no
//!   compile is needed when a grant starts or ends.
//! - every MaskingRule of the namespace (they are about topics, so they may apply to any
//!   workload), sorted by name — even one whose `exemptSubjects` name the service account
//!   (alone, or narrowed by a `podSelector`): the proxy does not mask the exempt workload's
//!   records with it, but masks the values its audit events record (the auditor is nobody's
//!   exempt reader). Every
//!   field path and every regex is checked here, so a rule the proxy could not apply is
//!   refused at apply time, naming the rule, the field and the reason.
//!
//! Objects of other namespaces are ignored. Objects without a namespace (YAML written for
//! `kubectl apply -n`) count as the identity's namespace. Only what goes into the config is
//! validated, so a broken policy for one workload never takes down another workload's config.
//! The result carries a content hash: equal inputs, in any order, give an equal hash.
//!
//! Local mode reads YAML with [`parse_manifests`], merges files with [`Inputs::extend`] and
//! gives objects without a creation time one with [`Inputs::default_creation_timestamps`]
//! (the API server does that in a cluster).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::Deserialize;

use crate::acl::{ResourcePattern, ResourceType};
use crate::approval::ApprovalSettings;
use crate::config::{
    ApprovalTerms, CompiledDetector, CompiledField, CompiledGrant, CompiledHeader,
    CompiledMaskingRule, CompiledPolicy, CompiledRule, CompiledTarget, DEFAULT_PLACEHOLDER,
    DetectorType, MaskStrategy, ProxyConfig, SecretKeyRef, Subjects, ValueFormat, WorkloadIdentity,
};
use crate::crd::{
    self, AccessGrant, MaskingRule, PodSelector, RuleSpec, StrategySpec, StrategyType,
    StreamPolicy, StreamTarget, SubjectsSpec, condition_is_true,
};
use crate::masking::{FieldPath, detector_regex};

/// What a compile reads: the custom resources the operator has in its caches, or what local
/// mode parsed from a folder of YAML (which may also hold the Secrets the targets name).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Inputs {
    /// StreamTargets.
    pub targets: Vec<StreamTarget>,
    /// StreamPolicies.
    pub policies: Vec<StreamPolicy>,
    /// AccessGrants.
    pub grants: Vec<AccessGrant>,
    /// MaskingRules.
    pub masking_rules: Vec<MaskingRule>,
    /// `v1` Secrets by name: key → decoded bytes (`stringData` over `data`, as the API server
    /// merges them). Local mode reads broker credentials and CA bundles from here; `compile`
    /// never looks at them, so they never reach a config or its hash.
    pub secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
}

impl Inputs {
    /// Adds everything of `other` (for reading several files). Custom resources are not
    /// merged by name: the same object twice is a [`CompileError::Duplicate`] when compiled. A
    /// Secret of the same name replaces the earlier one, as a second `kubectl apply` would.
    pub fn extend(&mut self, other: Inputs) {
        self.targets.extend(other.targets);
        self.policies.extend(other.policies);
        self.grants.extend(other.grants);
        self.masking_rules.extend(other.masking_rules);
        self.secrets.extend(other.secrets);
    }

    /// Sets `metadata.creationTimestamp` to `at` on every custom resource that has none, as
    /// the API server does when it creates an object, so that a grant with `durationSeconds`
    /// and no `startTime` has a start. Local mode should pass the modification time of the
    /// file the objects came from (not the load time), so that reloading an unchanged file does
    /// not restart its grants.
    pub fn default_creation_timestamps(&mut self, at: Timestamp) {
        let metas = self
            .targets
            .iter_mut()
            .map(|t| &mut t.metadata)
            .chain(self.policies.iter_mut().map(|p| &mut p.metadata))
            .chain(self.grants.iter_mut().map(|g| &mut g.metadata))
            .chain(self.masking_rules.iter_mut().map(|m| &mut m.metadata));
        for meta in metas {
            meta.creation_timestamp.get_or_insert(Time(at));
        }
    }
}

/// Why a YAML manifest could not be read. Documents are counted from 1, in the order of the
/// `---` separated documents of the string.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The document is not YAML.
    #[error("document {document}: not valid YAML: {source}")]
    Yaml {
        /// Which document (from 1).
        document: usize,
        /// What the YAML parser said.
        source: serde_yaml::Error,
    },
    /// The document has no `apiVersion` or `kind`.
    #[error(
        "document {document}: not a Kubernetes object (apiVersion and kind must both be strings); \
         every document must be a StreamTarget, StreamPolicy, AccessGrant, MaskingRule or Secret"
    )]
    NotAnObject {
        /// Which document (from 1).
        document: usize,
    },
    /// The document is of a kind Streamward does not read.
    #[error(
        "document {document}: kind {kind} ({api_version}) is not something Streamward reads; \
         use StreamTarget, StreamPolicy, AccessGrant or MaskingRule ({api}) or a v1 Secret, and \
         keep other \
         objects in another folder",
        api = crd::API_VERSION
    )]
    UnknownKind {
        /// Which document (from 1).
        document: usize,
        /// The document's `apiVersion`.
        api_version: String,
        /// The document's `kind`.
        kind: String,
    },
    /// The document has no `metadata.name`.
    #[error("document {document}: the {kind} has no metadata.name; give every object a name")]
    Unnamed {
        /// Which document (from 1).
        document: usize,
        /// The document's `kind`.
        kind: String,
    },
    /// The document is of a known kind but does not fit its schema.
    #[error("document {document}: {kind} {name:?} is invalid: {source}")]
    Invalid {
        /// Which document (from 1).
        document: usize,
        /// The document's `kind`.
        kind: String,
        /// The document's `metadata.name`, or empty.
        name: String,
        /// What does not fit.
        source: serde_yaml::Error,
    },
}

/// Reads a multi-document YAML string, as a user would `kubectl apply` it, keeping the
/// Streamward custom resources (`streamward.io/v1alpha1`) and the `v1` Secrets. Empty
/// documents are skipped; any other kind is an error, so a typo in a kind is never silently
/// ignored. Merge several files with [`Inputs::extend`].
pub fn parse_manifests(yaml: &str) -> Result<Inputs, ManifestError> {
    let mut inputs = Inputs::default();
    for (index, document) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
        let document_number = index + 1;
        let value =
            serde_yaml::Value::deserialize(document).map_err(|source| ManifestError::Yaml {
                document: document_number,
                source,
            })?;
        if value.is_null() {
            continue;
        }
        let field = |key: &str| value.get(key).and_then(serde_yaml::Value::as_str);
        let (Some(api_version), Some(kind)) = (field("apiVersion"), field("kind")) else {
            return Err(ManifestError::NotAnObject {
                document: document_number,
            });
        };
        let (api_version, kind) = (api_version.to_owned(), kind.to_owned());
        let name = value
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(serde_yaml::Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let known = api_version == crd::API_VERSION || (api_version == "v1" && kind == "Secret");
        if known && name.is_empty() {
            return Err(ManifestError::Unnamed {
                document: document_number,
                kind,
            });
        }
        let invalid = |source| ManifestError::Invalid {
            document: document_number,
            kind: kind.clone(),
            name: name.clone(),
            source,
        };
        match (api_version.as_str(), kind.as_str()) {
            (crd::API_VERSION, "StreamTarget") => inputs
                .targets
                .push(serde_yaml::from_value(value).map_err(invalid)?),
            (crd::API_VERSION, "StreamPolicy") => inputs
                .policies
                .push(serde_yaml::from_value(value).map_err(invalid)?),
            (crd::API_VERSION, "AccessGrant") => inputs
                .grants
                .push(serde_yaml::from_value(value).map_err(invalid)?),
            (crd::API_VERSION, "MaskingRule") => inputs
                .masking_rules
                .push(serde_yaml::from_value(value).map_err(invalid)?),
            ("v1", "Secret") => {
                let secret: Secret = serde_yaml::from_value(value).map_err(invalid)?;
                let mut data: BTreeMap<String, Vec<u8>> = secret
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(key, bytes)| (key, bytes.0))
                    .collect();
                for (key, text) in secret.string_data.unwrap_or_default() {
                    data.insert(key, text.into_bytes());
                }
                inputs.secrets.insert(name, data);
            }
            _ => {
                return Err(ManifestError::UnknownKind {
                    document: document_number,
                    api_version,
                    kind,
                });
            }
        }
    }
    Ok(inputs)
}

/// A custom resource as error messages name it: `StreamPolicy demo/orders-team`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectRef {
    /// The kind.
    pub kind: &'static str,
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// Why custom resources could not be compiled. Every message names the object, the field and
/// what to change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    /// An object has no `metadata.name`.
    #[error("a {kind} in namespace {namespace} has no metadata.name; give every object a name")]
    MissingName {
        /// The kind.
        kind: &'static str,
        /// The namespace.
        namespace: String,
    },
    /// Two objects of one kind share a name in one namespace.
    #[error(
        "{object} is defined more than once; names are unique per kind and namespace, so rename \
         or remove one of them"
    )]
    Duplicate {
        /// The object.
        object: ObjectRef,
    },
    /// A StreamTarget lists no bootstrap server.
    #[error("{object}: spec.bootstrapServers is empty; list at least one host:port")]
    NoBootstrapServers {
        /// The StreamTarget.
        object: ObjectRef,
    },
    /// A bootstrap server is not `host:port`.
    #[error(
        "{object}: spec.bootstrapServers[{index}] {value:?} is not host:port; write it like \
         kafka-0.kafka.svc:9092 (or [::1]:9092) with a port from 1 to 65535"
    )]
    BootstrapServer {
        /// The StreamTarget.
        object: ObjectRef,
        /// The position in the list (from 0).
        index: usize,
        /// What was written.
        value: String,
    },
    /// A MaskingRule field path does not parse.
    #[error(
        "{object}: {field} {path:?} is not a valid field path ({reason}); write paths like \
         customer.email, items[*].card or ..email"
    )]
    MaskingPath {
        /// The MaskingRule.
        object: ObjectRef,
        /// The field, e.g. `spec.fields[1].path`.
        field: String,
        /// What was written.
        path: Box<str>,
        /// What is wrong, and where.
        reason: Box<str>,
    },
    /// A MaskingRule regex does not compile.
    #[error("{object}: {field} {pattern:?} is not a usable regular expression: {reason}")]
    MaskingRegex {
        /// The MaskingRule.
        object: ObjectRef,
        /// The field, e.g. `spec.detectors[2].pattern`.
        field: String,
        /// What was written.
        pattern: Box<str>,
        /// What the regex compiler said.
        reason: Box<str>,
    },
    /// A resource pattern that can never match anything Kafka has.
    #[error("{object}: {field} {pattern} can never match: {reason}")]
    Pattern {
        /// The StreamPolicy, AccessGrant or MaskingRule.
        object: ObjectRef,
        /// The field, e.g. `spec.rules[0].resources[1].name`.
        field: String,
        /// The pattern as written (type, name and pattern type).
        pattern: Box<str>,
        /// Why, and what to write instead.
        reason: Box<str>,
    },
    /// Any other mistake in a MaskingRule.
    #[error("{object}: {field} {reason}")]
    MaskingRule {
        /// The MaskingRule.
        object: ObjectRef,
        /// The field, e.g. `spec.fields[0].strategy.count`.
        field: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// A service account subject is not `name` or `namespace/name`.
    #[error(
        "{object}: {field} {value:?} is not a service account; write `name` (same namespace) or \
         `namespace/name`"
    )]
    ServiceAccount {
        /// The StreamPolicy or AccessGrant.
        object: ObjectRef,
        /// The field, e.g. `spec.subjects.serviceAccounts[1]`.
        field: String,
        /// What was written.
        value: String,
    },
    /// Subjects that select by pod labels alone, which the pod's own author chooses.
    #[error("{object}: {field}: {}", crd::SUBJECT_BY_LABELS_ONLY)]
    SubjectByLabelsOnly {
        /// The StreamPolicy, AccessGrant or MaskingRule.
        object: ObjectRef,
        /// The field, e.g. `spec.exemptSubjects`.
        field: String,
    },
    /// A rule covers no resources or no operations.
    #[error(
        "{object}: spec.rules[{index}] ({rule}) names no {missing}; list at least one, or remove \
         the rule"
    )]
    EmptyRule {
        /// The StreamPolicy.
        object: ObjectRef,
        /// The rule's position (from 0).
        index: usize,
        /// The rule's name (given or `rule-<index>`).
        rule: String,
        /// `resources` or `operations`.
        missing: &'static str,
    },
    /// Two rules of a policy have the same name, so audit events could not tell them apart.
    #[error(
        "{object}: spec.rules[{index}] is named {rule:?} like an earlier rule; rule names \
         (given, or rule-<index> when unset) must be unique within a policy"
    )]
    DuplicateRule {
        /// The StreamPolicy.
        object: ObjectRef,
        /// The later rule's position (from 0).
        index: usize,
        /// The shared name.
        rule: String,
    },
    /// A grant covers no resources or no operations.
    #[error("{object}: spec.{missing} is empty; list at least one")]
    EmptyGrant {
        /// The AccessGrant.
        object: ObjectRef,
        /// `resources` or `operations`.
        missing: &'static str,
    },
    /// A grant has no start: neither `startTime` nor a creation timestamp.
    #[error(
        "{object}: spec.startTime is unset and the object has no metadata.creationTimestamp; set \
         spec.startTime (RFC 3339, e.g. 2025-01-31T09:00:00Z)"
    )]
    GrantStart {
        /// The AccessGrant.
        object: ObjectRef,
    },
    /// A grant has both or neither of `expiryTime` and `durationSeconds`.
    #[error("{object}: set exactly one of spec.expiryTime and spec.durationSeconds")]
    GrantEnd {
        /// The AccessGrant.
        object: ObjectRef,
    },
    /// A grant's `durationSeconds` is not positive or too large.
    #[error(
        "{object}: spec.durationSeconds {value} is out of range; give a positive number of \
         seconds that ends before the year 9999"
    )]
    GrantDuration {
        /// The AccessGrant.
        object: ObjectRef,
        /// What was written.
        value: i64,
    },
    /// A grant ends before (or when) it starts.
    #[error(
        "{object}: spec.expiryTime {not_after} is not after the start {not_before}; set an expiry \
         later than spec.startTime (or the creation time)"
    )]
    GrantWindow {
        /// The AccessGrant.
        object: ObjectRef,
        /// The start.
        not_before: Timestamp,
        /// The end.
        not_after: Timestamp,
    },
}

/// Compiles the custom resources of `identity`'s namespace into the config of its proxy. See
/// the module documentation for what goes in.
pub fn compile(inputs: &Inputs, identity: &WorkloadIdentity) -> Result<ProxyConfig, CompileError> {
    let namespace = identity.namespace.as_str();

    let mut targets = BTreeMap::new();
    for (object, target) in in_namespace(&inputs.targets, namespace)? {
        targets.insert(object.name.clone(), compile_target(&object, &target.spec)?);
    }

    let mut policies = Vec::new();
    for (object, policy) in in_namespace(&inputs.policies, namespace)? {
        let subjects = compile_subjects(&object, &policy.spec.subjects, "spec.subjects")?;
        if could_match(&subjects, identity) {
            policies.push(compile_policy(object, subjects, policy)?);
        }
    }

    let approval = ApprovalSettings::for_grants(
        in_namespace(&inputs.policies, namespace)?
            .into_iter()
            .map(|(_, policy)| policy),
    );
    let mut grants = Vec::new();
    for (object, grant) in in_namespace(&inputs.grants, namespace)? {
        let conditions = grant
            .status
            .as_ref()
            .map_or(&[][..], |s| s.conditions.as_slice());
        if grant.spec.revoked
            || condition_is_true(conditions, crd::condition::REVOKED)
            || (approval.grant_needs_approval(grant)
                && !condition_is_true(conditions, crd::condition::APPROVED))
        {
            continue;
        }
        let subjects = compile_subjects(&object, &grant.spec.subjects, "spec.subjects")?;
        if could_match(&subjects, identity) {
            grants.push(compile_grant(object, subjects, grant)?);
        }
    }

    let mut masking = Vec::new();
    for (object, rule) in in_namespace(&inputs.masking_rules, namespace)? {
        masking.push(compile_masking_rule(object, rule)?);
    }

    let mut config = ProxyConfig {
        identity: identity.clone(),
        targets,
        policies,
        grants,
        masking,
        hash: String::new(),
    };
    config.hash = config.content_hash();
    Ok(config)
}

/// Something compile reads the metadata of.
trait Object {
    const KIND: &'static str;
    fn meta(&self) -> &ObjectMeta;
}

impl Object for StreamTarget {
    const KIND: &'static str = "StreamTarget";
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
}

impl Object for StreamPolicy {
    const KIND: &'static str = "StreamPolicy";
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
}

impl Object for AccessGrant {
    const KIND: &'static str = "AccessGrant";
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
}

impl Object for MaskingRule {
    const KIND: &'static str = "MaskingRule";
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
}

/// The objects of `namespace` (or of no namespace), sorted by name, refusing unnamed and
/// duplicated ones.
fn in_namespace<'i, T: Object>(
    objects: &'i [T],
    namespace: &str,
) -> Result<Vec<(ObjectRef, &'i T)>, CompileError> {
    let kind = T::KIND;
    let mut found = Vec::new();
    for object in objects {
        let meta = object.meta();
        if meta.namespace.as_deref().is_some_and(|ns| ns != namespace) {
            continue;
        }
        let Some(name) = meta.name.as_deref().filter(|n| !n.is_empty()) else {
            return Err(CompileError::MissingName {
                kind,
                namespace: namespace.to_owned(),
            });
        };
        let reference = ObjectRef {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        found.push((reference, object));
    }
    found.sort_by(|(a, _), (b, _)| a.name.cmp(&b.name));
    if let Some(pair) = found
        .windows(2)
        .find(|pair| pair[0].0.name == pair[1].0.name)
    {
        return Err(CompileError::Duplicate {
            object: pair[1].0.clone(),
        });
    }
    Ok(found)
}

pub(crate) fn compile_target(
    object: &ObjectRef,
    spec: &crd::StreamTargetSpec,
) -> Result<CompiledTarget, CompileError> {
    if spec.bootstrap_servers.is_empty() {
        return Err(CompileError::NoBootstrapServers {
            object: object.clone(),
        });
    }
    for (index, server) in spec.bootstrap_servers.iter().enumerate() {
        if !is_host_port(server) {
            return Err(CompileError::BootstrapServer {
                object: object.clone(),
                index,
                value: server.clone(),
            });
        }
    }
    Ok(CompiledTarget {
        bootstrap_servers: spec.bootstrap_servers.clone(),
        tls: spec.tls.clone(),
        sasl: spec.sasl.clone(),
    })
}

/// `host:port` with a non-empty host without spaces or slashes (IPv6 in brackets) and a port
/// from 1 to 65535.
fn is_host_port(server: &str) -> bool {
    let Some((host, port)) = server.rsplit_once(':') else {
        return false;
    };
    let host_ok = match host.strip_prefix('[') {
        Some(inner) => inner
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok()),
        None => {
            !host.is_empty()
                && !host
                    .chars()
                    .any(|c| c == ':' || c == '/' || c.is_whitespace())
        }
    };
    let port_ok =
        port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok_and(|port| port != 0);
    host_ok && port_ok
}

/// Subjects as the proxy matches them: service accounts as `namespace/name`; every list sorted
/// and deduplicated, since they are sets. A pod selector without service accounts, users or
/// groups is refused: the pod's author chooses its labels, so they may only narrow.
pub(crate) fn compile_subjects(
    object: &ObjectRef,
    spec: &SubjectsSpec,
    field: &str,
) -> Result<Subjects, CompileError> {
    if spec.pod_selector.is_some()
        && spec.service_accounts.is_empty()
        && spec.users.is_empty()
        && spec.groups.is_empty()
    {
        return Err(CompileError::SubjectByLabelsOnly {
            object: object.clone(),
            field: field.to_owned(),
        });
    }
    let mut service_accounts = BTreeSet::new();
    for (index, entry) in spec.service_accounts.iter().enumerate() {
        let qualified = match entry.split_once('/') {
            None if is_name(entry) => format!("{}/{entry}", object.namespace),
            Some((ns, name)) if is_name(ns) && is_name(name) => entry.clone(),
            _ => {
                return Err(CompileError::ServiceAccount {
                    object: object.clone(),
                    field: format!("{field}.serviceAccounts[{index}]"),
                    value: entry.clone(),
                });
            }
        };
        service_accounts.insert(qualified);
    }
    let set = |items: &[String]| -> Vec<String> {
        items
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    Ok(Subjects {
        service_accounts: service_accounts.into_iter().collect(),
        pod_labels: spec
            .pod_selector
            .as_ref()
            .map(|PodSelector { match_labels }| match_labels.clone()),
        users: set(&spec.users),
        groups: set(&spec.groups),
    })
}

/// Refuses a pattern of `patterns` (at `field[index]`) that can never match.
fn check_patterns(
    object: &ObjectRef,
    field: &str,
    patterns: &[ResourcePattern],
) -> Result<(), CompileError> {
    for (index, pattern) in patterns.iter().enumerate() {
        if let Some(reason) = pattern.never_matches() {
            return Err(CompileError::Pattern {
                object: object.clone(),
                field: format!("{field}[{index}].name"),
                pattern: pattern.to_string().into(),
                reason: reason.into(),
            });
        }
    }
    Ok(())
}

/// A Kubernetes object name as service accounts and namespaces have them (DNS labels and
/// subdomains): lowercase alphanumerics, `-` and `.`, not empty.
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// Whether subjects could match a request of `identity`'s proxy: they name its service
/// account, or users or groups (known per request). Pod labels only narrow, so they do not
/// make a match possible.
fn could_match(subjects: &Subjects, identity: &WorkloadIdentity) -> bool {
    !subjects.users.is_empty()
        || !subjects.groups.is_empty()
        || subjects
            .service_accounts
            .iter()
            .any(|sa| is_service_account(sa, identity))
}

/// Whether `qualified` (`namespace/name`) is `identity`'s service account, without allocating.
pub(crate) fn is_service_account(qualified: &str, identity: &WorkloadIdentity) -> bool {
    qualified
        .split_once('/')
        .is_some_and(|(ns, name)| ns == identity.namespace && name == identity.service_account)
}

pub(crate) fn compile_policy(
    object: ObjectRef,
    subjects: Subjects,
    policy: &StreamPolicy,
) -> Result<CompiledPolicy, CompileError> {
    let spec = &policy.spec;
    let mut rules = Vec::with_capacity(spec.rules.len());
    let mut names = BTreeSet::new();
    for (index, rule) in spec.rules.iter().enumerate() {
        let RuleSpec {
            name,
            resources,
            operations,
            effect,
            hold_seconds,
        } = rule;
        let name = name.clone().unwrap_or_else(|| format!("rule-{index}"));
        let missing = if resources.is_empty() {
            Some("resources")
        } else if operations.is_empty() {
            Some("operations")
        } else {
            None
        };
        if let Some(missing) = missing {
            return Err(CompileError::EmptyRule {
                object,
                index,
                rule: name,
                missing,
            });
        }
        check_patterns(
            &object,
            &format!("spec.rules[{index}].resources"),
            resources,
        )?;
        if !names.insert(name.clone()) {
            return Err(CompileError::DuplicateRule {
                object,
                index,
                rule: name,
            });
        }
        rules.push(CompiledRule {
            name,
            resources: resources.clone(),
            operations: operations.clone(),
            effect: *effect,
            hold_seconds: *hold_seconds,
        });
    }
    let approval = spec
        .approval
        .as_ref()
        .map_or_else(ApprovalTerms::default, |approval| ApprovalTerms {
            required_approvals: u32::try_from(approval.required_approvals)
                .unwrap_or(1)
                .max(1),
            expire_after_seconds: approval
                .expire_after_seconds
                .unwrap_or(ApprovalTerms::DEFAULT_EXPIRE_AFTER_SECONDS),
            release_window_seconds: approval.release_window_seconds,
        });
    Ok(CompiledPolicy {
        name: object.name,
        target: spec.target_ref.clone(),
        subjects,
        rules,
        mode: spec.mode,
        guardrails: spec.guardrails.clone(),
        audit_level: spec.audit_level,
        approval,
    })
}

pub(crate) fn compile_grant(
    object: ObjectRef,
    subjects: Subjects,
    grant: &AccessGrant,
) -> Result<CompiledGrant, CompileError> {
    let spec = &grant.spec;
    if spec.resources.is_empty() || spec.operations.is_empty() {
        let missing = if spec.resources.is_empty() {
            "resources"
        } else {
            "operations"
        };
        return Err(CompileError::EmptyGrant { object, missing });
    }
    check_patterns(&object, "spec.resources", &spec.resources)?;
    let (not_before, not_after) = window(&object, grant)?;
    Ok(CompiledGrant {
        name: object.name,
        subjects,
        resources: spec.resources.clone(),
        operations: spec.operations.clone(),
        not_before,
        not_after,
    })
}

/// Most characters `KeepFirst`/`KeepLast` may keep.
const MAX_KEEP: i32 = 4096;

pub(crate) fn compile_masking_rule(
    object: ObjectRef,
    rule: &MaskingRule,
) -> Result<CompiledMaskingRule, CompileError> {
    let spec = &rule.spec;
    let invalid = |field: String, reason: &str| CompileError::MaskingRule {
        object: object.clone(),
        field,
        reason: reason.to_owned(),
    };
    if spec.topics.is_empty() {
        return Err(invalid(
            "spec.topics".into(),
            "is empty; list at least one topic (or `*` for every topic)",
        ));
    }
    let mut topics = Vec::with_capacity(spec.topics.len());
    for (index, topic) in spec.topics.iter().enumerate() {
        let pattern = ResourcePattern::new(ResourceType::Topic, &topic.name, topic.pattern_type)
            .map_err(|_| invalid(format!("spec.topics[{index}].name"), "is empty"))?;
        topics.push(pattern);
    }
    check_patterns(&object, "spec.topics", &topics)?;
    let exempt = match &spec.exempt_subjects {
        Some(subjects) => compile_subjects(&object, subjects, "spec.exemptSubjects")?,
        None => Subjects::default(),
    };
    let default = compile_strategy(&object, "spec.strategy", spec.strategy.as_ref())?;
    let strategy = |field: String, given: Option<&StrategySpec>| match given {
        Some(given) => compile_strategy(&object, &field, Some(given)),
        None => Ok(default.clone()),
    };

    if !spec.fields.is_empty() && spec.format != ValueFormat::Json {
        return Err(invalid(
            "spec.fields".into(),
            "applies to Json values only; use detectors for Text, or set format: Json",
        ));
    }
    let mut fields = Vec::with_capacity(spec.fields.len());
    for (index, field) in spec.fields.iter().enumerate() {
        let path = FieldPath::parse(&field.path).map_err(|error| CompileError::MaskingPath {
            object: object.clone(),
            field: format!("spec.fields[{index}].path"),
            path: field.path.as_str().into(),
            reason: error.to_string().into(),
        })?;
        fields.push(CompiledField {
            path: path.to_string(),
            strategy: strategy(
                format!("spec.fields[{index}].strategy"),
                field.strategy.as_ref(),
            )?,
        });
    }

    if !spec.detectors.is_empty() && spec.format == ValueFormat::Binary {
        return Err(invalid(
            "spec.detectors".into(),
            "applies to Json and Text values, not Binary ones; set format: Text to scan the \
             value as UTF-8 text",
        ));
    }
    let mut detectors = Vec::with_capacity(spec.detectors.len());
    for (index, detector) in spec.detectors.iter().enumerate() {
        let field = format!("spec.detectors[{index}].pattern");
        match (&detector.type_, &detector.pattern) {
            (DetectorType::Regex, None) => {
                return Err(invalid(field, "is required for a Regex detector"));
            }
            (DetectorType::Regex, Some(pattern)) => {
                detector_regex(pattern).map_err(|reason| CompileError::MaskingRegex {
                    object: object.clone(),
                    field,
                    pattern: pattern.as_str().into(),
                    reason: reason.into(),
                })?;
            }
            (_, Some(_)) => {
                return Err(invalid(
                    field,
                    "only applies to Regex detectors; remove it, or use type: Regex",
                ));
            }
            (_, None) => {}
        }
        detectors.push(CompiledDetector {
            detector: detector.type_,
            pattern: detector.pattern.clone(),
            strategy: strategy(
                format!("spec.detectors[{index}].strategy"),
                detector.strategy.as_ref(),
            )?,
        });
    }

    let mut headers = Vec::with_capacity(spec.headers.len());
    for (index, header) in spec.headers.iter().enumerate() {
        if header.name.is_empty() {
            return Err(invalid(
                format!("spec.headers[{index}].name"),
                "is empty; name the header key",
            ));
        }
        headers.push(CompiledHeader {
            name: header.name.clone(),
            strategy: strategy(
                format!("spec.headers[{index}].strategy"),
                header.strategy.as_ref(),
            )?,
        });
    }

    let redacts_binary =
        spec.format == ValueFormat::Binary && spec.binary == crate::config::BinaryHandling::Redact;
    if fields.is_empty() && detectors.is_empty() && headers.is_empty() && !redacts_binary {
        return Err(invalid(
            "spec".into(),
            "masks nothing; list fields, detectors or headers (or set format: Binary with \
             binary: Redact)",
        ));
    }
    let placeholder = match &default {
        MaskStrategy::Redact { placeholder } => placeholder.clone(),
        _ => DEFAULT_PLACEHOLDER.to_owned(),
    };
    Ok(CompiledMaskingRule {
        name: object.name,
        topics,
        direction: spec.direction,
        format: spec.format,
        fields,
        detectors,
        headers,
        binary: spec.binary,
        on_parse_error: spec.on_parse_error,
        placeholder,
        exempt,
    })
}

/// A strategy with its defaults filled in: `Redact` with `****` when none is given, `count` 4,
/// `Hex` tokens; `Placeholder` becomes `Redact`. Settings a strategy does not use are refused
/// rather than ignored, so a typo in the type is not silently a weaker masking.
fn compile_strategy(
    object: &ObjectRef,
    field: &str,
    spec: Option<&StrategySpec>,
) -> Result<MaskStrategy, CompileError> {
    let Some(spec) = spec else {
        return Ok(MaskStrategy::Redact {
            placeholder: DEFAULT_PLACEHOLDER.to_owned(),
        });
    };
    let invalid = |setting: &str, reason: String| CompileError::MaskingRule {
        object: object.clone(),
        field: format!("{field}.{setting}"),
        reason,
    };
    let kind = spec.type_;
    let unused = |setting: &str, set: bool| {
        if set {
            Err(invalid(
                setting,
                format!("does not apply to a {kind:?} strategy; remove it"),
            ))
        } else {
            Ok(())
        }
    };
    unused(
        "placeholder",
        spec.placeholder.is_some()
            && !matches!(kind, StrategyType::Redact | StrategyType::Placeholder),
    )?;
    unused(
        "count",
        spec.count.is_some() && !matches!(kind, StrategyType::KeepFirst | StrategyType::KeepLast),
    )?;
    unused(
        "keySecretRef",
        spec.key_secret_ref.is_some()
            && !matches!(kind, StrategyType::Hmac | StrategyType::FormatPreserving),
    )?;
    unused(
        "encoding",
        spec.encoding.is_some() && kind != StrategyType::Hmac,
    )?;
    let key = || -> Result<SecretKeyRef, CompileError> {
        let Some(key) = &spec.key_secret_ref else {
            return Err(invalid(
                "keySecretRef",
                format!(
                    "is required for a {kind:?} strategy: name the Secret and key holding the \
                     masking key"
                ),
            ));
        };
        let key_ok = !key.key.is_empty()
            && key.key.len() <= 253
            && key
                .key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !is_name(&key.name) || !key_ok {
            return Err(invalid(
                "keySecretRef",
                format!(
                    "{}/{} is not a Secret name and key; names are lowercase DNS names, keys \
                     are letters, digits, `-`, `_` and `.`",
                    key.name, key.key
                ),
            ));
        }
        Ok(key.clone())
    };
    let count = || -> Result<u32, CompileError> {
        match spec.count {
            None => Ok(4),
            Some(count @ 0..=MAX_KEEP) => Ok(count.unsigned_abs()),
            Some(count) => Err(invalid(
                "count",
                format!("{count} is out of range; keep from 0 to {MAX_KEEP} characters"),
            )),
        }
    };
    Ok(match kind {
        StrategyType::Redact => MaskStrategy::Redact {
            placeholder: spec
                .placeholder
                .clone()
                .unwrap_or_else(|| DEFAULT_PLACEHOLDER.to_owned()),
        },
        StrategyType::Placeholder => match &spec.placeholder {
            Some(placeholder) => MaskStrategy::Redact {
                placeholder: placeholder.clone(),
            },
            None => {
                return Err(invalid(
                    "placeholder",
                    "is required for a Placeholder strategy".to_owned(),
                ));
            }
        },
        StrategyType::Nullify => MaskStrategy::Nullify,
        StrategyType::KeepFirst => MaskStrategy::KeepFirst { count: count()? },
        StrategyType::KeepLast => MaskStrategy::KeepLast { count: count()? },
        StrategyType::Hmac => MaskStrategy::Hmac {
            key_secret_ref: key()?,
            encoding: spec.encoding.unwrap_or_default(),
        },
        StrategyType::FormatPreserving => MaskStrategy::FormatPreserving {
            key_secret_ref: key()?,
        },
    })
}

/// The window `[start, end)` in which `grant` counts: `spec.startTime` (or the creation time)
/// up to `spec.expiryTime` (or start + `spec.durationSeconds`). The operator uses it to know
/// when a grant starts and ends; [`compile`] checks the same.
pub fn grant_window(grant: &AccessGrant) -> Result<(Timestamp, Timestamp), CompileError> {
    let object = ObjectRef {
        kind: "AccessGrant",
        namespace: grant.metadata.namespace.clone().unwrap_or_default(),
        name: grant.metadata.name.clone().unwrap_or_default(),
    };
    window(&object, grant)
}

fn window(object: &ObjectRef, grant: &AccessGrant) -> Result<(Timestamp, Timestamp), CompileError> {
    let spec = &grant.spec;
    let Some(not_before) = spec
        .start_time
        .or_else(|| grant.metadata.creation_timestamp.as_ref().map(|Time(t)| *t))
    else {
        return Err(CompileError::GrantStart {
            object: object.clone(),
        });
    };
    let not_after = match (spec.expiry_time, spec.duration_seconds) {
        (Some(expiry), None) => expiry,
        (None, Some(seconds)) => {
            let end = (seconds > 0)
                .then(|| {
                    not_before
                        .checked_add(SignedDuration::from_secs(seconds))
                        .ok()
                })
                .flatten();
            match end {
                Some(end) => end,
                None => {
                    return Err(CompileError::GrantDuration {
                        object: object.clone(),
                        value: seconds,
                    });
                }
            }
        }
        _ => {
            return Err(CompileError::GrantEnd {
                object: object.clone(),
            });
        }
    };
    if not_after <= not_before {
        return Err(CompileError::GrantWindow {
            object: object.clone(),
            not_before,
            not_after,
        });
    }
    Ok((not_before, not_after))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::{Operation, PatternType, ResourceType};
    use crate::config::{Effect, Flow, Mode};
    use crate::decide::Principal;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

    fn identity() -> WorkloadIdentity {
        WorkloadIdentity {
            namespace: "demo".into(),
            service_account: "orders-app".into(),
        }
    }

    fn inputs(yaml: &str) -> Inputs {
        parse_manifests(yaml).unwrap()
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    const TARGET: &str = r#"
apiVersion: streamward.io/v1alpha1
kind: StreamTarget
metadata: {name: local-kafka, namespace: demo}
spec:
  bootstrapServers: ["127.0.0.1:9092", "kafka-1.kafka.svc:9093"]
  sasl: {mechanism: SCRAM-SHA-512, credentialsSecret: kafka-creds}
"#;

    fn policy(name: &str, subjects: &str, rules: &str) -> String {
        format!(
            "---\napiVersion: streamward.io/v1alpha1\nkind: StreamPolicy\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  subjects: {subjects}\n  rules: {rules}\n"
        )
    }

    const ALLOW_ORDERS: &str = "[{resources: [{resourceType: Topic, name: orders., patternType: Prefixed}], operations: [Read], effect: Allow}]";

    fn grant(name: &str, extra: &str) -> String {
        format!(
            "---\napiVersion: streamward.io/v1alpha1\nkind: AccessGrant\nmetadata: {{name: {name}, namespace: demo, creationTimestamp: '2025-01-01T00:00:00Z'}}\nspec:\n  subjects: {{users: [alice]}}\n  resources: [{{resourceType: Topic, name: payments.audit}}]\n  operations: [Read]\n  reason: incident\n{extra}"
        )
    }

    fn condition(type_: &str, status: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: "Test".into(),
            message: String::new(),
            last_transition_time: Time(ts("2025-01-01T00:00:00Z")),
            observed_generation: Some(1),
        }
    }

    #[test]
    fn targets_of_the_namespace_go_in_by_name() {
        let mut yaml = TARGET.to_owned();
        yaml.push_str(
            "---\napiVersion: streamward.io/v1alpha1\nkind: StreamTarget\nmetadata: {name: elsewhere, namespace: other}\nspec: {bootstrapServers: ['10.0.0.1:9092']}\n",
        );
        let config = compile(&inputs(&yaml), &identity()).unwrap();
        assert_eq!(config.targets.keys().collect::<Vec<_>>(), ["local-kafka"]);
        let target = &config.targets["local-kafka"];
        assert_eq!(target.bootstrap_servers.len(), 2);
        assert_eq!(
            target.sasl.as_ref().unwrap().credentials_secret,
            "kafka-creds"
        );
        assert_eq!(config.identity, identity());
    }

    #[test]
    fn bootstrap_servers_must_be_host_and_port() {
        for good in [
            "a:1",
            "127.0.0.1:9092",
            "[::1]:9092",
            "kafka-0.kafka.svc:65535",
        ] {
            assert!(is_host_port(good), "{good}");
        }
        for bad in [
            "kafka",
            ":9092",
            "kafka:",
            "kafka:0",
            "kafka:65536",
            "kafka:+1",
            "::1:9092",
            "[zz]:1",
            "a b:1",
            "kafka/0:1",
        ] {
            assert!(!is_host_port(bad), "{bad}");
        }
        let yaml = TARGET.replace("kafka-1.kafka.svc:9093", "kafka-1");
        let error = compile(&inputs(&yaml), &identity()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "StreamTarget demo/local-kafka: spec.bootstrapServers[1] \"kafka-1\" is not \
             host:port; write it like kafka-0.kafka.svc:9092 (or [::1]:9092) with a port from 1 \
             to 65535"
        );
        let yaml = TARGET.replace(r#"["127.0.0.1:9092", "kafka-1.kafka.svc:9093"]"#, "[]");
        assert!(matches!(
            compile(&inputs(&yaml), &identity()),
            Err(CompileError::NoBootstrapServers { .. })
        ));
    }

    #[test]
    fn policies_naming_the_service_account_go_in_sorted_with_rule_names() {
        let yaml = [
            policy("zeta", "{serviceAccounts: [orders-app]}", ALLOW_ORDERS),
            policy(
                "alpha",
                "{serviceAccounts: [demo/orders-app]}",
                ALLOW_ORDERS,
            ),
            policy("billing", "{serviceAccounts: [billing-app]}", ALLOW_ORDERS),
            policy(
                "other-ns",
                "{serviceAccounts: [other/orders-app]}",
                ALLOW_ORDERS,
            ),
        ]
        .concat();
        let config = compile(&inputs(&yaml), &identity()).unwrap();
        let names: Vec<_> = config.policies.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["alpha", "zeta"]);
        let zeta = &config.policies[1];
        assert_eq!(zeta.subjects.service_accounts, ["demo/orders-app"]);
        assert_eq!(zeta.rules[0].name, "rule-0");
        assert_eq!(zeta.rules[0].effect, Effect::Allow);
        assert_eq!(
            zeta.rules[0].resources[0].pattern_type,
            PatternType::Prefixed
        );
        assert_eq!(zeta.mode, Mode::Enforce);
    }

    #[test]
    fn policies_selecting_by_request_time_subjects_go_in() {
        let yaml = [
            policy(
                "by-label",
                "{serviceAccounts: [orders-app], podSelector: {matchLabels: {team: orders}}}",
                ALLOW_ORDERS,
            ),
            policy(
                "billing-by-label",
                "{serviceAccounts: [billing-app], podSelector: {matchLabels: {team: orders}}}",
                ALLOW_ORDERS,
            ),
            policy("by-user", "{users: [alice]}", ALLOW_ORDERS),
            policy("by-group", "{groups: [sre]}", ALLOW_ORDERS),
            policy("nobody", "{}", ALLOW_ORDERS),
        ]
        .concat();
        let config = compile(&inputs(&yaml), &identity()).unwrap();
        let names: Vec<_> = config.policies.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["by-group", "by-label", "by-user"]);
        assert_eq!(
            config.policies[1].subjects.pod_labels,
            Some(BTreeMap::from([("team".to_owned(), "orders".to_owned())]))
        );
    }

    #[test]
    fn subjects_by_pod_labels_alone_are_refused_naming_the_object_and_field() {
        let by_labels = "{podSelector: {matchLabels: {role: billing}}}";
        let error = compile(
            &inputs(&policy("labelled", by_labels, ALLOW_ORDERS)),
            &identity(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with("StreamPolicy demo/labelled: spec.subjects: podSelector alone"),
            "{error}"
        );
        assert!(error.contains("name serviceAccounts"), "{error}");

        let grant = grant("labelled", "").replace("{users: [alice]}", by_labels);
        let error = compile(&inputs(&grant), &identity())
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("AccessGrant demo/labelled: spec.subjects: podSelector alone"),
            "{error}"
        );

        let rule = masking(
            "labelled",
            &format!(
                "  topics: [{{name: t}}]\n  headers: [{{name: h}}]\n  exemptSubjects: {by_labels}\n"
            ),
        );
        let error = compile(&inputs(&rule), &identity())
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("MaskingRule demo/labelled: spec.exemptSubjects: podSelector alone"),
            "{error}"
        );
    }

    #[test]
    fn objects_of_other_namespaces_are_ignored_and_unnamespaced_ones_count() {
        let yaml = policy("mine", "{serviceAccounts: [orders-app]}", ALLOW_ORDERS)
            .replace("namespace: demo", "namespace: prod")
            + &policy("local", "{serviceAccounts: [orders-app]}", ALLOW_ORDERS)
                .replace(", namespace: demo", "");
        let config = compile(&inputs(&yaml), &identity()).unwrap();
        let names: Vec<_> = config.policies.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["local"]);
    }

    #[test]
    fn a_rule_without_resources_or_operations_is_refused_naming_policy_and_rule() {
        let yaml = policy(
            "broken",
            "{serviceAccounts: [orders-app]}",
            "[{resources: [{resourceType: Topic, name: a}], operations: [Read], effect: Allow}, {name: empty, resources: [], operations: [Read], effect: Deny}]",
        );
        let error = compile(&inputs(&yaml), &identity()).unwrap_err();
        assert_eq!(
            error,
            CompileError::EmptyRule {
                object: ObjectRef {
                    kind: "StreamPolicy",
                    namespace: "demo".into(),
                    name: "broken".into()
                },
                index: 1,
                rule: "empty".into(),
                missing: "resources",
            }
        );
        assert_eq!(
            error.to_string(),
            "StreamPolicy demo/broken: spec.rules[1] (empty) names no resources; list at least \
             one, or remove the rule"
        );
        let yaml = policy(
            "broken",
            "{serviceAccounts: [orders-app]}",
            "[{resources: [{resourceType: Topic, name: a}], operations: [], effect: Allow}]",
        );
        let error = compile(&inputs(&yaml), &identity()).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("spec.rules[0] (rule-0) names no operations")
        );
    }

    #[test]
    fn a_broken_policy_for_another_workload_does_not_block_this_one() {
        let yaml = policy(
            "billing",
            "{serviceAccounts: [billing-app]}",
            "[{resources: [], operations: [], effect: Allow}]",
        );
        assert!(compile(&inputs(&yaml), &identity()).is_ok());
    }

    #[test]
    fn rule_names_must_be_unique_within_a_policy() {
        let rule =
            "{resources: [{resourceType: Topic, name: a}], operations: [Read], effect: Allow}";
        let named = "{name: rule-0, resources: [{resourceType: Topic, name: b}], operations: [Read], effect: Allow}";
        let yaml = policy(
            "dup",
            "{serviceAccounts: [orders-app]}",
            &format!("[{rule}, {named}]"),
        );
        let error = compile(&inputs(&yaml), &identity()).unwrap_err();
        assert!(
            matches!(&error, CompileError::DuplicateRule { index: 1, rule, .. } if rule == "rule-0"),
            "{error}"
        );
    }

    #[test]
    fn bad_service_accounts_are_refused() {
        for bad in ["a/b/c", "/x", "x/", "Orders"] {
            let yaml = policy(
                "p",
                &format!("{{serviceAccounts: [ok, '{bad}']}}"),
                ALLOW_ORDERS,
            );
            let error = compile(&inputs(&yaml), &identity()).unwrap_err();
            assert_eq!(
                error.to_string(),
                format!(
                    "StreamPolicy demo/p: spec.subjects.serviceAccounts[1] {bad:?} is not a \
                     service account; write `name` (same namespace) or `namespace/name`"
                )
            );
        }
    }

    #[test]
    fn duplicates_and_unnamed_objects_are_refused() {
        let one = policy("same", "{serviceAccounts: [orders-app]}", ALLOW_ORDERS);
        let error = compile(&inputs(&(one.clone() + &one)), &identity()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "StreamPolicy demo/same is defined more than once; names are unique per kind and \
             namespace, so rename or remove one of them"
        );
        let mut unnamed = inputs(&one);
        unnamed.policies[0].metadata.name = None;
        assert!(matches!(
            compile(&unnamed, &identity()),
            Err(CompileError::MissingName {
                kind: "StreamPolicy",
                ..
            })
        ));
    }

    #[test]
    fn grants_get_their_window_from_creation_and_duration() {
        let config = compile(
            &inputs(&grant("g", "  durationSeconds: 3600\n")),
            &identity(),
        )
        .unwrap();
        let g = &config.grants[0];
        assert_eq!(g.not_before, ts("2025-01-01T00:00:00Z"));
        assert_eq!(g.not_after, ts("2025-01-01T01:00:00Z"));
        assert_eq!(g.subjects.users, ["alice"]);

        let config = compile(
            &inputs(&grant(
                "g",
                "  startTime: '2025-02-01T10:00:00Z'\n  expiryTime: '2025-02-01T12:30:00+01:00'\n",
            )),
            &identity(),
        )
        .unwrap();
        let g = &config.grants[0];
        assert_eq!(g.not_before, ts("2025-02-01T10:00:00Z"));
        assert_eq!(g.not_after, ts("2025-02-01T11:30:00Z"));
    }

    #[test]
    fn grant_windows_that_make_no_sense_are_refused() {
        let cases = [
            (
                "",
                "set exactly one of spec.expiryTime and spec.durationSeconds",
            ),
            (
                "  durationSeconds: 60\n  expiryTime: '2026-01-01T00:00:00Z'\n",
                "set exactly one of",
            ),
            (
                "  durationSeconds: 0\n",
                "spec.durationSeconds 0 is out of range",
            ),
            (
                "  durationSeconds: -5\n",
                "spec.durationSeconds -5 is out of range",
            ),
            (
                "  durationSeconds: 9223372036854775807\n",
                "spec.durationSeconds 9223372036854775807 is out of range",
            ),
            (
                "  expiryTime: '2024-12-31T00:00:00Z'\n",
                "spec.expiryTime 2024-12-31T00:00:00Z is not after the start 2025-01-01T00:00:00Z",
            ),
        ];
        for (extra, expected) in cases {
            let error = compile(&inputs(&grant("g", extra)), &identity()).unwrap_err();
            let message = error.to_string();
            assert!(message.starts_with("AccessGrant demo/g: "), "{message}");
            assert!(message.contains(expected), "{message}");
        }
        let no_start = grant("g", "  durationSeconds: 60\n")
            .replace(", creationTimestamp: '2025-01-01T00:00:00Z'", "");
        let error = compile(&inputs(&no_start), &identity()).unwrap_err();
        assert!(matches!(error, CompileError::GrantStart { .. }), "{error}");
        assert!(error.to_string().contains("set spec.startTime"));
    }

    #[test]
    fn creation_timestamps_default_to_load_time() {
        let no_start = grant("g", "  durationSeconds: 60\n")
            .replace(", creationTimestamp: '2025-01-01T00:00:00Z'", "");
        let mut both = inputs(&no_start);
        both.extend(inputs(&grant("h", "  durationSeconds: 60\n")));
        both.default_creation_timestamps(ts("2030-01-01T00:00:00Z"));
        let config = compile(&both, &identity()).unwrap();
        assert_eq!(config.grants[0].not_before, ts("2030-01-01T00:00:00Z"));
        // An existing creation timestamp is kept.
        assert_eq!(config.grants[1].not_before, ts("2025-01-01T00:00:00Z"));
    }

    #[test]
    fn revoked_and_unapproved_grants_stay_out() {
        let mut inputs = inputs(
            &[
                grant("plain", "  durationSeconds: 60\n"),
                grant("revoked", "  durationSeconds: 60\n"),
                grant(
                    "unapproved",
                    "  durationSeconds: 60\n  requireApproval: true\n",
                ),
                grant(
                    "approved",
                    "  durationSeconds: 60\n  requireApproval: true\n",
                ),
                grant("denied", "  durationSeconds: 60\n  requireApproval: true\n"),
                grant(
                    "revoked-in-spec",
                    "  durationSeconds: 60\n  revoked: true\n",
                ),
            ]
            .concat(),
        );
        let set = |inputs: &mut Inputs, name: &str, conditions: Vec<Condition>| {
            let grant = inputs
                .grants
                .iter_mut()
                .find(|g| g.metadata.name.as_deref() == Some(name))
                .unwrap();
            grant.status = Some(crd::AccessGrantStatus {
                conditions,
                ..Default::default()
            });
        };
        set(&mut inputs, "revoked", vec![condition("Revoked", "True")]);
        set(
            &mut inputs,
            "approved",
            vec![condition("Approved", "True"), condition("Revoked", "False")],
        );
        set(&mut inputs, "denied", vec![condition("Approved", "False")]);
        let config = compile(&inputs, &identity()).unwrap();
        let names: Vec<_> = config.grants.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["approved", "plain"]);
        let window = grant_window(&inputs.grants[0]).unwrap();
        assert_eq!(window.1.duration_since(window.0).as_secs(), 60);
    }

    #[test]
    fn grants_for_other_subjects_stay_out() {
        let yaml = grant("g", "  durationSeconds: 60\n")
            .replace("{users: [alice]}", "{serviceAccounts: [billing-app]}");
        assert!(
            compile(&inputs(&yaml), &identity())
                .unwrap()
                .grants
                .is_empty()
        );
        let yaml = grant("g", "  durationSeconds: 60\n")
            .replace("{users: [alice]}", "{serviceAccounts: [orders-app]}");
        assert_eq!(
            compile(&inputs(&yaml), &identity()).unwrap().grants[0]
                .subjects
                .service_accounts,
            ["demo/orders-app"]
        );
    }

    fn everything() -> String {
        [
            TARGET.to_owned(),
            policy(
                "a",
                "{serviceAccounts: [orders-app, orders-app]}",
                ALLOW_ORDERS,
            ),
            policy("b", "{users: [bob, alice]}", ALLOW_ORDERS),
            policy("c", "{groups: [sre]}", ALLOW_ORDERS),
            grant("g1", "  durationSeconds: 60\n"),
            grant("g2", "  durationSeconds: 120\n"),
        ]
        .concat()
    }

    #[test]
    fn equal_inputs_give_equal_hashes_in_any_order() {
        let forward = inputs(&everything());
        let mut backward = forward.clone();
        backward.policies.reverse();
        backward.grants.reverse();
        let a = compile(&forward, &identity()).unwrap();
        let b = compile(&backward, &identity()).unwrap();
        assert_eq!(a, b);
        assert!(a.hash.starts_with("sha256:"));
        assert_eq!(a.hash.len(), "sha256:".len() + 64);
        assert!(a.hash_is_valid());

        let mut changed = forward.clone();
        changed.policies[0].spec.rules[0].operations = vec![Operation::Write];
        let c = compile(&changed, &identity()).unwrap();
        assert_ne!(a.hash, c.hash);

        let other = WorkloadIdentity {
            service_account: "billing-app".into(),
            ..identity()
        };
        assert_ne!(compile(&forward, &other).unwrap().hash, a.hash);
    }

    #[test]
    fn subject_lists_are_sets() {
        let config = compile(&inputs(&everything()), &identity()).unwrap();
        assert_eq!(
            config.policies[0].subjects.service_accounts,
            ["demo/orders-app"]
        );
        assert_eq!(config.policies[1].subjects.users, ["alice", "bob"]);
    }

    #[test]
    fn the_config_round_trips_through_json_with_its_hash() {
        let config = compile(&inputs(&everything()), &identity()).unwrap();
        let json = serde_json::to_string(&config).unwrap();
        let back: ProxyConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, config);
        assert!(back.hash_is_valid());
        let tampered: ProxyConfig =
            serde_json::from_str(&json.replace("orders.", "order")).unwrap();
        assert!(!tampered.hash_is_valid());
    }

    #[test]
    fn manifests_keep_custom_resources_and_secrets() {
        let yaml = format!(
            "{TARGET}---\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: kafka-creds}}\ndata:\n  username: b3JkZXJz\n  password: b2xk\nstringData:\n  password: s3cret\n{}",
            policy("p", "{users: [alice]}", ALLOW_ORDERS)
        );
        let manifests = parse_manifests(&yaml).unwrap();
        assert_eq!(manifests.targets.len(), 1);
        assert_eq!(manifests.policies.len(), 1);
        assert!(manifests.grants.is_empty());
        let secret = &manifests.secrets["kafka-creds"];
        assert_eq!(secret["username"], b"orders");
        assert_eq!(secret["password"], b"s3cret");
        let rules = &manifests.policies[0].spec.rules;
        assert_eq!(rules[0].resources[0].resource_type, ResourceType::Topic);
    }

    #[test]
    fn manifests_from_several_files_merge() {
        let mut all = parse_manifests(TARGET).unwrap();
        all.extend(parse_manifests(&grant("g", "  durationSeconds: 5\n")).unwrap());
        all.extend(
            parse_manifests(
                "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {k: v}\n",
            )
            .unwrap(),
        );
        assert_eq!(all.targets.len(), 1);
        assert_eq!(all.grants.len(), 1);
        assert_eq!(all.secrets["s"]["k"], b"v");
    }

    #[test]
    fn unknown_kinds_are_refused_naming_the_document() {
        let yaml = format!("{TARGET}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: x}}\n");
        let error = parse_manifests(&yaml).unwrap_err();
        assert!(
            matches!(&error, ManifestError::UnknownKind { document: 2, kind, .. } if kind == "ConfigMap"),
            "{error}"
        );
        assert!(
            error
                .to_string()
                .starts_with("document 2: kind ConfigMap (v1)")
        );

        let typo = TARGET.replace("kind: StreamTarget", "kind: StreamTargets");
        assert!(matches!(
            parse_manifests(&typo),
            Err(ManifestError::UnknownKind { document: 1, .. })
        ));
        let wrong_version = TARGET.replace("v1alpha1", "v1");
        assert!(matches!(
            parse_manifests(&wrong_version),
            Err(ManifestError::UnknownKind { .. })
        ));
    }

    #[test]
    fn documents_that_are_not_objects_or_not_valid_are_refused() {
        assert!(matches!(
            parse_manifests("just: a map\n"),
            Err(ManifestError::NotAnObject { document: 1 })
        ));
        assert!(matches!(
            parse_manifests("a: [unclosed\n"),
            Err(ManifestError::Yaml { document: 1, .. })
        ));
        let bad = policy(
            "p",
            "{users: [alice]}",
            "[{resources: [{resourceType: Topic, name: ''}], operations: [Read], effect: Allow}]",
        );
        let error = parse_manifests(&bad).unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with("document 1: StreamPolicy \"p\" is invalid"),
            "{message}"
        );
        assert!(message.contains("non-empty name"), "{message}");
        let bad_effect = policy(
            "p",
            "{users: [alice]}",
            "[{resources: [{resourceType: Topic, name: a}], operations: [Read], effect: Permit}]",
        );
        assert!(matches!(
            parse_manifests(&bad_effect),
            Err(ManifestError::Invalid { .. })
        ));
    }

    #[test]
    fn unnamed_documents_are_refused() {
        let error = parse_manifests("---\n---\napiVersion: v1\nkind: Secret\nstringData: {a: b}\n")
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "document 2: the Secret has no metadata.name; give every object a name"
        );
        let unnamed = TARGET.replace("name: local-kafka, ", "");
        assert!(matches!(
            parse_manifests(&unnamed),
            Err(ManifestError::Unnamed { document: 1, .. })
        ));
    }

    #[test]
    fn empty_input_parses_to_nothing() {
        assert_eq!(parse_manifests("").unwrap(), Inputs::default());
        assert_eq!(
            parse_manifests("---\n# only a comment\n---\n").unwrap(),
            Inputs::default()
        );
    }

    fn masking(name: &str, spec: &str) -> String {
        format!(
            "---\napiVersion: streamward.io/v1alpha1\nkind: MaskingRule\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n{spec}"
        )
    }

    const CARDS: &str = "  topics: [{name: orders., patternType: Prefixed}]\n  fields: [{path: customer.email}, {path: 'items[*].card', strategy: {type: KeepLast}}]\n  detectors: [{type: CreditCard, strategy: {type: Hmac, keySecretRef: {name: mask-key, key: hmac}}}]\n  headers: [{name: x-user, strategy: {type: Placeholder, placeholder: '[user]'}}]\n";

    fn compile_masking(yaml: &str) -> Result<ProxyConfig, CompileError> {
        compile(&inputs(yaml), &identity())
    }

    #[test]
    fn masking_rules_go_in_sorted_with_defaults_filled_in() {
        use crate::config::{
            BinaryHandling, DetectorType, MaskDirection, OnParseError, TokenEncoding,
        };
        let yaml = masking("zz-cards", CARDS)
            + &masking(
                "aa-text",
                "  topics: [{name: logs}]\n  format: Text\n  direction: Both\n  detectors: [{type: Regex, pattern: 'secret=(?P<mask>\\S+)'}]\n  strategy: {type: Redact, placeholder: '[redacted]'}\n  onParseError: Pass\n",
            )
            + &masking(
                "elsewhere",
                "  topics: [{name: a}]\n  headers: [{name: h}]\n",
            )
            .replace("namespace: demo", "namespace: other");
        let config = compile_masking(&yaml).unwrap();
        let names: Vec<_> = config.masking.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["aa-text", "zz-cards"]);

        let text = &config.masking[0];
        assert_eq!(text.direction, MaskDirection::Both);
        assert_eq!(text.format, ValueFormat::Text);
        assert_eq!(text.on_parse_error, OnParseError::Pass);
        assert_eq!(text.placeholder, "[redacted]");
        assert_eq!(
            text.detectors[0].strategy,
            MaskStrategy::Redact {
                placeholder: "[redacted]".into()
            }
        );

        let cards = &config.masking[1];
        assert_eq!(cards.direction, MaskDirection::Consume);
        assert_eq!(cards.format, ValueFormat::Json);
        assert_eq!(cards.binary, BinaryHandling::Pass);
        assert_eq!(cards.on_parse_error, OnParseError::Redact);
        assert_eq!(cards.placeholder, "****");
        assert!(cards.topics[0].matches(ResourceType::Topic, "orders.eu"));
        assert_eq!(cards.fields[0].path, "$.customer.email");
        assert_eq!(
            cards.fields[0].strategy,
            MaskStrategy::Redact {
                placeholder: "****".into()
            }
        );
        assert_eq!(cards.fields[1].path, "$.items[*].card");
        assert_eq!(
            cards.fields[1].strategy,
            MaskStrategy::KeepLast { count: 4 }
        );
        assert_eq!(cards.detectors[0].detector, DetectorType::CreditCard);
        assert_eq!(
            cards.detectors[0].strategy,
            MaskStrategy::Hmac {
                key_secret_ref: SecretKeyRef {
                    name: "mask-key".into(),
                    key: "hmac".into()
                },
                encoding: TokenEncoding::Hex
            }
        );
        assert_eq!(
            cards.headers[0].strategy,
            MaskStrategy::Redact {
                placeholder: "[user]".into()
            }
        );
        assert!(cards.exempt.is_empty());
        assert!(config.hash_is_valid());
    }

    #[test]
    fn an_invalid_regex_is_refused_naming_rule_field_and_reason() {
        let yaml = masking(
            "cards",
            "  topics: [{name: t}]\n  detectors: [{type: Email}, {type: Regex, pattern: 'ok\\d+'}, {type: Regex, pattern: '(unclosed'}]\n",
        );
        let error = compile_masking(&yaml).unwrap_err();
        assert!(
            matches!(&error, CompileError::MaskingRegex { field, .. } if field == "spec.detectors[2].pattern"),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "MaskingRule demo/cards: spec.detectors[2].pattern \"(unclosed\" is not a usable \
             regular expression: unclosed group"
        );
        let empty = masking(
            "cards",
            "  topics: [{name: t}]\n  detectors: [{type: Regex, pattern: 'x*'}]\n",
        );
        assert!(
            compile_masking(&empty)
                .unwrap_err()
                .to_string()
                .contains("spec.detectors[0].pattern \"x*\" is not a usable regular expression: the pattern can match the empty string")
        );
    }

    #[test]
    fn an_invalid_path_is_refused_naming_rule_field_and_reason() {
        let yaml = masking(
            "orders",
            "  topics: [{name: t}]\n  fields: [{path: a.b}, {path: 'items[*'}]\n",
        );
        let error = compile_masking(&yaml).unwrap_err();
        assert_eq!(
            error.to_string(),
            "MaskingRule demo/orders: spec.fields[1].path \"items[*\" is not a valid field path \
             (at byte 7: expected `]` after `[*`); write paths like customer.email, \
             items[*].card or ..email"
        );
    }

    #[test]
    fn masking_rules_that_make_no_sense_are_refused() {
        let cases = [
            (
                "  topics: []\n  headers: [{name: h}]\n",
                "spec.topics is empty",
            ),
            ("  topics: [{name: t}]\n", "spec masks nothing"),
            (
                "  topics: [{name: t}]\n  format: Binary\n  binary: Pass\n",
                "spec masks nothing",
            ),
            (
                "  topics: [{name: t}]\n  format: Text\n  fields: [{path: a}]\n",
                "spec.fields applies to Json values only",
            ),
            (
                "  topics: [{name: t}]\n  format: Binary\n  detectors: [{type: Email}]\n",
                "spec.detectors applies to Json and Text values",
            ),
            (
                "  topics: [{name: t}]\n  detectors: [{type: Regex}]\n",
                "spec.detectors[0].pattern is required for a Regex detector",
            ),
            (
                "  topics: [{name: t}]\n  detectors: [{type: Email, pattern: x}]\n",
                "spec.detectors[0].pattern only applies to Regex detectors",
            ),
            (
                "  topics: [{name: t}]\n  fields: [{path: a, strategy: {type: Hmac}}]\n",
                "spec.fields[0].strategy.keySecretRef is required for a Hmac strategy",
            ),
            (
                "  topics: [{name: t}]\n  headers: [{name: h}]\n  strategy: {type: FormatPreserving, keySecretRef: {name: Bad_Name, key: k}}\n",
                "spec.strategy.keySecretRef Bad_Name/k is not a Secret name and key",
            ),
            (
                "  topics: [{name: t}]\n  fields: [{path: a, strategy: {type: Redact, count: 2}}]\n",
                "spec.fields[0].strategy.count does not apply to a Redact strategy",
            ),
            (
                "  topics: [{name: t}]\n  fields: [{path: a, strategy: {type: KeepLast, count: -1}}]\n",
                "spec.fields[0].strategy.count -1 is out of range",
            ),
            (
                "  topics: [{name: t}]\n  headers: [{name: h, strategy: {type: Placeholder}}]\n",
                "spec.headers[0].strategy.placeholder is required for a Placeholder strategy",
            ),
            (
                "  topics: [{name: t}]\n  headers: [{name: h, strategy: {type: Nullify, encoding: Hex}}]\n",
                "spec.headers[0].strategy.encoding does not apply to a Nullify strategy",
            ),
            (
                "  topics: [{name: t}]\n  headers: [{name: h}]\n  exemptSubjects: {serviceAccounts: ['a/b/c']}\n",
                "spec.exemptSubjects.serviceAccounts[0] \"a/b/c\" is not a service account",
            ),
        ];
        for (spec, expected) in cases {
            let error = compile_masking(&masking("m", spec)).unwrap_err();
            let message = error.to_string();
            assert!(message.starts_with("MaskingRule demo/m: "), "{message}");
            assert!(message.contains(expected), "{message}\nwanted: {expected}");
        }
        let redact_binary = "  topics: [{name: t}]\n  format: Binary\n  binary: Redact\n";
        assert_eq!(
            compile_masking(&masking("m", redact_binary))
                .unwrap()
                .masking
                .len(),
            1
        );
    }

    #[test]
    fn a_rule_exempting_the_service_account_stays_in_its_config_for_its_audit() {
        let yaml = masking(
            "m",
            "  topics: [{name: t}]\n  headers: [{name: h}]\n  exemptSubjects: {serviceAccounts: [orders-app], users: [alice]}\n",
        );
        let exempt = compile_masking(&yaml).unwrap();
        assert_eq!(exempt.masking.len(), 1);
        // The proxy does not apply it to the exempt workload's records.
        let principal = Principal {
            identity: &exempt.identity,
            pod_labels: &Default::default(),
            user: None,
            groups: &[],
        };
        assert!(!exempt.masking[0].applies_to("t", Flow::Consume, &principal));
        let billing = WorkloadIdentity {
            service_account: "billing-app".into(),
            ..identity()
        };
        let config = compile(&inputs(&yaml), &billing).unwrap();
        assert_eq!(config.masking[0].exempt.users, ["alice"]);
        assert_eq!(
            config.masking[0].exempt.service_accounts,
            ["demo/orders-app"]
        );
    }

    #[test]
    fn an_exemption_narrowed_by_labels_stays_in_for_the_proxy_to_match() {
        let yaml = masking(
            "m",
            "  topics: [{name: t}]\n  headers: [{name: h}]\n  exemptSubjects: {serviceAccounts: [orders-app], podSelector: {matchLabels: {role: billing}}}\n",
        );
        let config = compile_masking(&yaml).unwrap();
        assert_eq!(
            config.masking.len(),
            1,
            "only the proxy knows the pod's labels"
        );
        let exempt = &config.masking[0].exempt;
        assert_eq!(exempt.service_accounts, ["demo/orders-app"]);
        assert_eq!(
            exempt.pod_labels,
            Some(BTreeMap::from([("role".to_owned(), "billing".to_owned())]))
        );
    }

    #[test]
    fn configs_without_masking_keep_their_json_and_hash() {
        let config = compile(&inputs(&everything()), &identity()).unwrap();
        let json = serde_json::to_string(&config).unwrap();
        assert!(!json.contains("masking"), "{json}");
        let with = compile(
            &inputs(&(everything() + &masking("zz-cards", CARDS))),
            &identity(),
        )
        .unwrap();
        assert_ne!(with.hash, config.hash);
        let json = serde_json::to_string(&with).unwrap();
        let back: ProxyConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, with);
        assert!(back.hash_is_valid());
        // Equal inputs in another order give the same hash.
        let mut reversed = inputs(&(masking("zz-cards", CARDS) + &masking("aa", CARDS)));
        let forward = compile(&reversed, &identity()).unwrap();
        reversed.masking_rules.reverse();
        assert_eq!(compile(&reversed, &identity()).unwrap().hash, forward.hash);
    }

    #[test]
    fn manifests_read_masking_rules() {
        let manifests = parse_manifests(&masking("m", CARDS)).unwrap();
        assert_eq!(manifests.masking_rules.len(), 1);
        let spec = &manifests.masking_rules[0].spec;
        assert_eq!(spec.fields[1].path, "items[*].card");
        let bad = masking("m", CARDS).replace("type: CreditCard", "type: Visa");
        assert!(matches!(
            parse_manifests(&bad),
            Err(ManifestError::Invalid { .. })
        ));
    }
}

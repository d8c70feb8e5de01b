//! The Kafka ACL vocabulary Streamward policies are written in: resource types, resource
//! patterns and operations, with the same meaning (and the same implied operations) as Kafka's
//! own authorizer.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The kind of Kafka resource a rule talks about.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum ResourceType {
    /// A topic, by name.
    Topic,
    /// A consumer group (or share/streams group), by id.
    Group,
    /// A transactional id.
    TransactionalId,
    /// The cluster itself (its name is always `kafka-cluster`).
    Cluster,
}

/// The name Kafka gives the single cluster resource.
pub const CLUSTER_NAME: &str = "kafka-cluster";

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResourceType::Topic => "Topic",
            ResourceType::Group => "Group",
            ResourceType::TransactionalId => "TransactionalId",
            ResourceType::Cluster => "Cluster",
        })
    }
}

/// An operation on a resource, as Kafka's authorizer names them.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum Operation {
    /// Consume from a topic, join or commit to a group.
    Read,
    /// Produce to a topic or use a transactional id.
    Write,
    /// Create topics (on a topic or the cluster).
    Create,
    /// Delete topics, records or groups.
    Delete,
    /// Add partitions, alter ACLs or reassignments.
    Alter,
    /// See that a resource exists (metadata, offsets, group descriptions).
    Describe,
    /// Read configuration.
    DescribeConfigs,
    /// Change configuration.
    AlterConfigs,
    /// Idempotent produce (cluster-level in Kafka).
    IdempotentWrite,
    /// Inter-broker and controller operations; no client should need it.
    ClusterAction,
    /// Every operation.
    All,
}

impl Operation {
    /// Whether allowing `self` allows a request for `requested`, with Kafka's implications:
    /// `All` covers everything; `Read`, `Write`, `Delete` and `Alter` imply `Describe`;
    /// `AlterConfigs` implies `DescribeConfigs`. Implications only widen what is allowed: a
    /// deny is matched with [`Operation::names`], as Kafka matches DENY ACLs.
    pub fn covers(self, requested: Operation) -> bool {
        use Operation::*;
        self == All
            || self == requested
            || (requested == Describe && matches!(self, Read | Write | Delete | Alter))
            || (requested == DescribeConfigs && self == AlterConfigs)
    }
}

impl Operation {
    /// Whether a rule naming `self` is about `requested` without implications: the same
    /// operation, or `All`. This is how Kafka matches DENY ACLs, so that denying `Delete` does
    /// not deny `Describe` (which every client needs for metadata).
    pub fn names(self, requested: Operation) -> bool {
        self == Operation::All || self == requested
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// How a rule's resource name is matched.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum PatternType {
    /// The exact name; `*` alone means every resource of the type (as in Kafka).
    #[default]
    Literal,
    /// Names starting with the pattern.
    Prefixed,
    /// A glob: `*` matches any run of characters, `?` exactly one.
    Glob,
}

/// A resource name pattern. A `ResourcePattern` that exists is valid: its name is not empty.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", try_from = "RawPattern")]
pub struct ResourcePattern {
    /// The resource type.
    pub resource_type: ResourceType,
    /// The name, prefix or glob.
    pub name: String,
    /// How `name` is matched.
    #[serde(default)]
    pub pattern_type: PatternType,
}

/// The wire shape of a [`ResourcePattern`], checked by `TryFrom` (and the schema the CRDs show).
#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "ResourcePattern")]
struct RawPattern {
    /// The resource type: `Topic`, `Group`, `TransactionalId` or `Cluster`.
    resource_type: ResourceType,
    /// The name, prefix or glob (`*` alone with `Literal` means every resource of the type).
    #[schemars(length(min = 1))]
    name: String,
    /// How `name` is matched: `Literal` (default), `Prefixed` or `Glob`.
    #[serde(default)]
    pattern_type: PatternType,
}

/// Why a resource pattern was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatternError {
    /// The name is empty.
    #[error("a {0} pattern needs a non-empty name")]
    EmptyName(ResourceType),
}

impl TryFrom<RawPattern> for ResourcePattern {
    type Error = PatternError;
    fn try_from(raw: RawPattern) -> Result<Self, Self::Error> {
        ResourcePattern::new(raw.resource_type, raw.name, raw.pattern_type)
    }
}

impl ResourcePattern {
    /// A pattern, refused when its name is empty.
    pub fn new(
        resource_type: ResourceType,
        name: impl Into<String>,
        pattern_type: PatternType,
    ) -> Result<ResourcePattern, PatternError> {
        let name = name.into();
        if name.is_empty() {
            return Err(PatternError::EmptyName(resource_type));
        }
        Ok(ResourcePattern {
            resource_type,
            name,
            pattern_type,
        })
    }

    /// Why this pattern can never match anything Kafka has, or `None` when it can. A topic
    /// name is 1 to 249 of `[a-zA-Z0-9._-]`, so a literal or prefix with other characters (a
    /// `*` written with `Literal`, the usual slip) covers no topic; the cluster is always
    /// called [`CLUSTER_NAME`]. Group and transactional ids may be any string.
    pub fn never_matches(&self) -> Option<String> {
        match self.resource_type {
            ResourceType::Topic => topic_pattern_problem(&self.name, self.pattern_type),
            ResourceType::Cluster if !self.matches(ResourceType::Cluster, CLUSTER_NAME) => {
                Some(format!(
                    "the cluster resource is always named {CLUSTER_NAME}; write name: \
                     {CLUSTER_NAME} (or *)"
                ))
            }
            ResourceType::Cluster | ResourceType::Group | ResourceType::TransactionalId => None,
        }
    }

    /// Whether this pattern covers resource `name` of type `resource_type`.
    pub fn matches(&self, resource_type: ResourceType, name: &str) -> bool {
        if self.resource_type != resource_type {
            return false;
        }
        match self.pattern_type {
            PatternType::Literal => self.name == "*" || self.name == name,
            PatternType::Prefixed => name.starts_with(&self.name),
            PatternType::Glob => glob_matches(self.name.as_bytes(), name.as_bytes()),
        }
    }
}

impl fmt::Display for ResourcePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.pattern_type {
            PatternType::Literal => "",
            PatternType::Prefixed => " (prefix)",
            PatternType::Glob => " (glob)",
        };
        write!(f, "{}:{}{kind}", self.resource_type, self.name)
    }
}

/// The longest topic name Kafka accepts.
const MAX_TOPIC_NAME: usize = 249;

fn is_topic_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

fn topic_pattern_problem(name: &str, pattern_type: PatternType) -> Option<String> {
    let wildcards: &[u8] = match pattern_type {
        PatternType::Literal if name == "*" => return None,
        PatternType::Literal | PatternType::Prefixed => b"",
        PatternType::Glob => b"*?",
    };
    let literal_len = name.bytes().filter(|b| !wildcards.contains(b)).count();
    if let Some(bad) = name
        .chars()
        .find(|&c| !(c.is_ascii() && (is_topic_char(c as u8) || wildcards.contains(&(c as u8)))))
    {
        let hint = match (pattern_type, bad) {
            (PatternType::Literal, '*' | '?') => {
                "; for a wildcard use patternType: Prefixed (a name prefix) or Glob (* and ?)"
            }
            (PatternType::Prefixed, '*' | '?') => "; a prefix needs no *, or use patternType: Glob",
            _ => "",
        };
        return Some(format!(
            "{bad:?} cannot appear in a topic name (letters, digits, '.', '_' and '-'), so this \
             {pattern_type:?} pattern matches no topic{hint}"
        ));
    }
    if literal_len > MAX_TOPIC_NAME {
        return Some(format!(
            "topic names are at most {MAX_TOPIC_NAME} characters, so this pattern matches no topic"
        ));
    }
    if pattern_type == PatternType::Literal && (name == "." || name == "..") {
        return Some(format!("{name:?} is not a valid topic name"));
    }
    None
}

/// Glob matching with `*` (any run, including empty) and `?` (one byte), iterative with one
/// backtrack point, so it is linear-ish and never recurses on hostile input.
fn glob_matches(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(name: &str, pattern_type: PatternType) -> ResourcePattern {
        ResourcePattern::new(ResourceType::Topic, name, pattern_type).unwrap()
    }

    #[test]
    fn literal_matches_exact_name_and_star_matches_all() {
        assert!(topic("orders", PatternType::Literal).matches(ResourceType::Topic, "orders"));
        assert!(!topic("orders", PatternType::Literal).matches(ResourceType::Topic, "orders2"));
        assert!(topic("*", PatternType::Literal).matches(ResourceType::Topic, "anything"));
        assert!(!topic("orders", PatternType::Literal).matches(ResourceType::Group, "orders"));
    }

    #[test]
    fn prefixed_matches_names_starting_with_the_prefix() {
        let p = topic("payments.", PatternType::Prefixed);
        assert!(p.matches(ResourceType::Topic, "payments.eu"));
        assert!(p.matches(ResourceType::Topic, "payments."));
        assert!(!p.matches(ResourceType::Topic, "payment.eu"));
    }

    #[test]
    fn glob_matches_stars_and_question_marks() {
        let p = topic("team-*-events", PatternType::Glob);
        assert!(p.matches(ResourceType::Topic, "team-a-events"));
        assert!(p.matches(ResourceType::Topic, "team--events"));
        assert!(p.matches(ResourceType::Topic, "team-a-b-events"));
        assert!(!p.matches(ResourceType::Topic, "team-a-event"));
        assert!(topic("log-?", PatternType::Glob).matches(ResourceType::Topic, "log-1"));
        assert!(!topic("log-?", PatternType::Glob).matches(ResourceType::Topic, "log-12"));
        assert!(topic("*", PatternType::Glob).matches(ResourceType::Topic, ""));
        assert!(topic("a*b*c", PatternType::Glob).matches(ResourceType::Topic, "aXbYbZc"));
    }

    #[test]
    fn glob_on_pathological_input_finishes() {
        let p = topic(&"*a".repeat(50), PatternType::Glob);
        assert!(!p.matches(
            ResourceType::Topic,
            &"a".repeat(5000)[..4999].replace('a', "b")
        ));
    }

    #[test]
    fn operations_imply_what_kafka_implies() {
        use Operation::*;
        assert!(All.covers(AlterConfigs));
        assert!(Read.covers(Describe));
        assert!(Write.covers(Describe));
        assert!(Delete.covers(Describe));
        assert!(Alter.covers(Describe));
        assert!(AlterConfigs.covers(DescribeConfigs));
        assert!(!Describe.covers(Read));
        assert!(!Write.covers(Read));
        assert!(!DescribeConfigs.covers(AlterConfigs));
        assert!(!Create.covers(Describe));
    }

    #[test]
    fn naming_an_operation_implies_nothing_else() {
        use Operation::*;
        assert!(All.names(Delete));
        assert!(Delete.names(Delete));
        assert!(!Delete.names(Describe));
        assert!(!AlterConfigs.names(DescribeConfigs));
    }

    #[test]
    fn patterns_that_can_never_match_say_why() {
        let never = |t: ResourceType, name: &str, p: PatternType| {
            ResourcePattern::new(t, name, p).unwrap().never_matches()
        };
        use PatternType::*;
        use ResourceType::*;
        for ok in [
            never(Topic, "orders.created", Literal),
            never(Topic, "*", Literal),
            never(Topic, "orders.", Prefixed),
            never(Topic, "team-*-events", Glob),
            never(Topic, "log-?", Glob),
            never(Topic, "*", Glob),
            never(Cluster, "kafka-cluster", Literal),
            never(Cluster, "*", Literal),
            never(Cluster, "kafka-", Prefixed),
            never(Group, "orders *?/", Literal),
            never(TransactionalId, "tx-*", Literal),
        ] {
            assert_eq!(ok, None);
        }
        let star = never(Topic, "orders.*", Literal).unwrap();
        assert!(star.contains("'*'") && star.contains("Prefixed"), "{star}");
        let prefix = never(Topic, "orders.*", Prefixed).unwrap();
        assert!(prefix.contains("Glob"), "{prefix}");
        assert!(never(Topic, "orders/eu", Glob).unwrap().contains("'/'"));
        assert!(never(Topic, "ordérs", Literal).is_some());
        assert!(never(Topic, "..", Literal).is_some());
        assert_eq!(never(Topic, "..", Prefixed), None);
        assert!(never(Topic, &"a".repeat(250), Literal).is_some());
        assert_eq!(never(Topic, &format!("{}*", "a".repeat(249)), Glob), None);
        let cluster = never(Cluster, "prod", Literal).unwrap();
        assert!(cluster.contains("kafka-cluster"), "{cluster}");
    }

    #[test]
    fn empty_pattern_names_are_refused_when_parsed() {
        let error =
            serde_json::from_str::<ResourcePattern>(r#"{"resourceType":"Topic","name":""}"#)
                .unwrap_err();
        assert!(error.to_string().contains("non-empty name"), "{error}");
        let ok: ResourcePattern =
            serde_json::from_str(r#"{"resourceType":"Topic","name":"x","patternType":"Prefixed"}"#)
                .unwrap();
        assert_eq!(ok.pattern_type, PatternType::Prefixed);
    }
}

//! Which resources and operations a client request touches, the way Kafka's own authorizer
//! (`KafkaApis` and `ControllerApis` with `StandardAuthorizer`) sees them, and what the proxy
//! does when the policy refuses some of them.
//!
//! [`inspect`] takes one decoded request, asks the [`Policy`] about every (resource type,
//! resource name, operation) the request needs, and says what to do:
//!
//! - everything allowed: forward the client's frame untouched ([`Outcome::Forward`]); the
//!   request is never cloned or re-encoded on this path;
//! - Produce and Fetch are split per topic (module `data`): the allowed topics are forwarded, the
//!   denied ones are answered with TOPIC_AUTHORIZATION_FAILED and merged back into the broker's
//!   response ([`apply_fixup`]). Fetch is also made session-less (see module `data` for why);
//! - Metadata is never refused up front, but a client that may not create topics has
//!   `allow_auto_topic_creation` turned off;
//! - any other request with a refused access is answered by the proxy (module `refusals`) with a
//!   well-formed response of that API at the request's version, every entry carrying an error.
//!
//! Error codes: a refused access gets its resource type's authorization error
//! (TOPIC_AUTHORIZATION_FAILED 29, GROUP_AUTHORIZATION_FAILED 30, CLUSTER_AUTHORIZATION_FAILED
//! 31, TRANSACTIONAL_ID_AUTHORIZATION_FAILED 53), or POLICY_VIOLATION 44 when the policy says so
//! (an approval is required, a guardrail applies). The verdict's message goes in the
//! `error_message` fields the API version has.
//!
//! Limitation: outside Produce and Fetch a request is refused as a whole. Entries that were
//! allowed, in a request that also has refused entries, carry the code of the first refusal
//! and a message saying so (AddPartitionsToTxn uses OPERATION_NOT_ATTEMPTED, as Kafka does),
//! where Kafka would have carried them out. Splitting every batched API would mean merging
//! every kind of response; a client retrying without the refused entries gets what it may.
//! Where a response has both a top-level error and per-entry errors, the top-level error (and
//! a group's error in batched group APIs) carries the refusal of the request-level resource
//! (the group, the transactional id, the cluster), as Kafka does; when only entries are refused
//! it stays 0 unless nothing else in the response could carry the refusal.

mod data;
mod refusals;
pub mod streams;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::{
    RequestHeader, RequestKind, ResponseKind, TopicName, fetch_response, produce_response,
};
use kafka_protocol::protocol::StrBytes;
use streamward_api::acl::{Operation, ResourceType};

/// What the policy says about one access.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the access is allowed.
    pub allowed: bool,
    /// On denials: which rule denied, e.g. "denied by StreamPolicy/orders-team rule
    /// no-destructive-admin". Sent to the client in `error_message` fields.
    pub message: Option<String>,
    /// The error must be POLICY_VIOLATION (44) rather than an authorization error, e.g. when
    /// the rule requires approval or a guardrail applies.
    pub policy_violation: bool,
    /// What decided (`StreamPolicy/orders rule producers`, `AccessGrant/oncall-1`, `default
    /// deny`), for the audit event; set only when the policy is asked to explain itself.
    pub rule: Option<String>,
    /// Allowed although a `DryRun` policy would have refused.
    pub dry_run: bool,
    /// Refused because the rule requires approval.
    pub requires_approval: bool,
}

impl Verdict {
    /// The access is allowed.
    pub fn allow() -> Verdict {
        Verdict {
            allowed: true,
            message: None,
            policy_violation: false,
            rule: None,
            dry_run: false,
            requires_approval: false,
        }
    }

    /// The access is denied (an authorization error), for the reason in `message`.
    pub fn deny(message: impl Into<String>) -> Verdict {
        Verdict {
            allowed: false,
            message: Some(message.into()),
            policy_violation: false,
            rule: None,
            dry_run: false,
            requires_approval: false,
        }
    }

    /// The access is refused as a POLICY_VIOLATION (approval required, guardrail), for the
    /// reason in `message`.
    pub fn policy_violation(message: impl Into<String>) -> Verdict {
        Verdict {
            allowed: false,
            message: Some(message.into()),
            policy_violation: true,
            rule: None,
            dry_run: false,
            requires_approval: false,
        }
    }
}

impl Verdict {
    /// This verdict, naming what decided it.
    pub fn by(mut self, rule: Option<String>) -> Verdict {
        self.rule = rule;
        self
    }
}

/// The policy in force for one request: may this client do `operation` on resource `name` of
/// type `resource_type`? Cluster resources are named [`streamward_api::acl::CLUSTER_NAME`].
pub trait Policy {
    /// The verdict on one access.
    fn check(&self, resource_type: ResourceType, name: &str, operation: Operation) -> Verdict;
}

/// Topic ids learned from Metadata responses, so requests that name topics by id (Fetch v13+,
/// Produce v13, DeleteTopics v6, ShareFetch, ShareAcknowledge) can be authorized by name.
///
/// The id type is `uuid::Uuid`, the type kafka-protocol's messages use (kafka-protocol does not
/// re-export it, hence the proxy's own `uuid` dependency, which Cargo unifies with
/// kafka-protocol's).
pub trait TopicNames {
    /// The name of topic `id`, if known.
    fn name_of(&self, id: &uuid::Uuid) -> Option<TopicName>;
}

/// One access the request needed and the policy's answer, for logs and audit.
///
/// Only the policy's answers are listed: a request refused because the proxy cannot make sense
/// of it (a topic id no Metadata response has named, an unknown resource type) has no denied
/// access of its own, only a refusing outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    /// The resource type.
    pub resource_type: ResourceType,
    /// The resource name ([`streamward_api::acl::CLUSTER_NAME`] for the cluster).
    pub name: String,
    /// The operation.
    pub operation: Operation,
    /// Whether the policy allowed it.
    pub allowed: bool,
    /// The verdict's message (on denials, which rule denied; on accesses a `DryRun` policy
    /// would have refused, what it would have done).
    pub message: Option<String>,
    /// What decided, when the policy explains itself (see [`Verdict::rule`]).
    pub rule: Option<String>,
    /// Allowed although a `DryRun` policy would have refused.
    pub dry_run: bool,
    /// Refused because the rule requires approval.
    pub requires_approval: bool,
}

/// What the proxy must do with the request.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Forward the original frame untouched.
    Forward,
    /// Forward this re-encoded request body instead (the header is unchanged); `fixup` says
    /// what to do with the response.
    ForwardRewritten {
        /// The request to send.
        request: RequestKind,
        /// What to merge into the broker's response.
        fixup: Fixup,
    },
    /// Answer locally with this response (the proxy encodes it with the request's version and
    /// correlation id).
    Respond(ResponseKind),
    /// Nothing to send back (a fully denied Produce with acks=0, or a request the proxy cannot
    /// interpret at all).
    NoResponse,
}

/// What to do with the broker's response to a rewritten request.
#[derive(Clone, Debug, PartialEq)]
pub enum Fixup {
    /// Nothing.
    None,
    /// Merge these denied topic results into the Produce response.
    Produce(Vec<produce_response::TopicProduceResponse>),
    /// Merge these denied topic results into the Fetch response.
    Fetch(Vec<fetch_response::FetchableTopicResponse>),
}

/// The result of [`inspect`]: what to do, and every access the policy was asked about.
#[derive(Clone, Debug, PartialEq)]
pub struct Inspection {
    /// What the proxy must do.
    pub outcome: Outcome,
    /// The accesses the request needed, each once, in the order Kafka checks them.
    pub accesses: Vec<Access>,
}

/// Works out the accesses `request` (at `version`) needs, asks `policy`, and says what the proxy
/// must do. Never panics, whatever the request holds.
pub fn inspect(
    header: &RequestHeader,
    request: RequestKind,
    version: i16,
    policy: &dyn Policy,
    topics: &dyn TopicNames,
) -> Inspection {
    let mut checks = Checks::new(policy);
    let outcome = match request {
        RequestKind::Produce(request) => data::produce(request, version, &mut checks, topics),
        RequestKind::Fetch(request) => data::fetch(request, version, &mut checks, topics),
        RequestKind::Metadata(request) => data::metadata(request, version, &mut checks),
        request => refusals::decide(&request, version, &mut checks, topics),
    };
    if let Some(first) = &checks.first {
        tracing::debug!(
            correlation_id = header.correlation_id,
            client_id = header.client_id.as_deref().unwrap_or_default(),
            api_key = header.request_api_key,
            version,
            code = first.code,
            reason = first.message.as_deref().unwrap_or_default(),
            "request refused in whole or in part"
        );
    }
    Inspection {
        outcome,
        accesses: checks.accesses,
    }
}

/// Merges the entries of a [`Fixup`] into the broker's response to the rewritten request. A
/// fixup that does not match the response's API is dropped (and logged): the proxy never fails
/// on it.
pub fn apply_fixup(fixup: Fixup, response: &mut ResponseKind) {
    match (fixup, response) {
        (Fixup::None, _) => {}
        (Fixup::Produce(denied), ResponseKind::Produce(response)) => {
            response.responses.extend(denied);
        }
        (Fixup::Fetch(denied), ResponseKind::Fetch(response)) => {
            response.responses.extend(denied);
        }
        (fixup, response) => tracing::warn!(
            ?fixup,
            response = ?std::mem::discriminant(response),
            "a fixup does not match the response it was meant for; dropped"
        ),
    }
}

/// Why one access or entry is refused: the error code the client gets and the message.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Denial {
    code: i16,
    message: Option<String>,
}

impl Denial {
    fn new(code: ResponseError, message: impl Into<String>) -> Denial {
        Denial {
            code: code.code(),
            message: Some(message.into()),
        }
    }

    /// The message for an `error_message` field, when the version has one (`has_field`).
    fn text(&self, has_field: bool) -> Option<StrBytes> {
        self.message
            .as_ref()
            .filter(|_| has_field)
            .map(|message| StrBytes::from_string(message.clone()))
    }
}

/// The authorization error of a resource type.
fn authorization_error(resource_type: ResourceType) -> ResponseError {
    match resource_type {
        ResourceType::Topic => ResponseError::TopicAuthorizationFailed,
        ResourceType::Group => ResponseError::GroupAuthorizationFailed,
        ResourceType::TransactionalId => ResponseError::TransactionalIdAuthorizationFailed,
        ResourceType::Cluster => ResponseError::ClusterAuthorizationFailed,
    }
}

/// The answer for one access: `Err` when refused.
type Answer = Result<(), Denial>;

/// The accesses of one request: asks the policy once per distinct access, remembers the
/// answers, and records what was asked for the audit.
struct Checks<'a> {
    policy: &'a dyn Policy,
    /// (type, operation) → name → (answer, recorded as an access yet, what decided).
    answers: HashMap<(ResourceType, Operation), HashMap<String, Asked>>,
    accesses: Vec<Access>,
    /// The first refusal, which entries that were allowed in a refused request carry.
    first: Option<Denial>,
}

impl<'a> Checks<'a> {
    fn new(policy: &'a dyn Policy) -> Checks<'a> {
        Checks {
            policy,
            answers: HashMap::new(),
            accesses: Vec::new(),
            first: None,
        }
    }

    /// Asks the policy (once per distinct access) without recording the access.
    fn ask(&mut self, resource_type: ResourceType, name: &str, operation: Operation) -> Answer {
        let by_name = self.answers.entry((resource_type, operation)).or_default();
        if let Some((answer, _, _)) = by_name.get(name) {
            return answer.clone();
        }
        let verdict = self.policy.check(resource_type, name, operation);
        let explanation = Explanation {
            // An allowed verdict's message is a dry run's "would be denied".
            note: verdict.allowed.then(|| verdict.message.clone()).flatten(),
            rule: verdict.rule,
            dry_run: verdict.dry_run,
            requires_approval: verdict.requires_approval,
        };
        let answer = if verdict.allowed {
            Ok(())
        } else {
            let code = if verdict.policy_violation {
                ResponseError::PolicyViolation
            } else {
                authorization_error(resource_type)
            };
            Err(Denial {
                code: code.code(),
                message: verdict.message,
            })
        };
        by_name.insert(name.to_owned(), (answer.clone(), false, explanation));
        answer
    }

    /// Records an access already asked about (once), for the audit.
    fn record(&mut self, resource_type: ResourceType, name: &str, operation: Operation) {
        let Some((answer, recorded, explanation)) = self
            .answers
            .get_mut(&(resource_type, operation))
            .and_then(|by_name| by_name.get_mut(name))
        else {
            return;
        };
        if *recorded {
            return;
        }
        *recorded = true;
        let (allowed, message) = match answer {
            Ok(()) => (true, explanation.note.clone()),
            Err(denial) => {
                if self.first.is_none() {
                    self.first = Some(denial.clone());
                }
                (false, denial.message.clone())
            }
        };
        self.accesses.push(Access {
            resource_type,
            name: name.to_owned(),
            operation,
            allowed,
            message,
            rule: explanation.rule.clone(),
            dry_run: explanation.dry_run,
            requires_approval: explanation.requires_approval,
        });
    }

    /// Asks about one access and records it.
    fn check(&mut self, resource_type: ResourceType, name: &str, operation: Operation) -> Answer {
        let answer = self.ask(resource_type, name, operation);
        self.record(resource_type, name, operation);
        answer
    }

    /// An access Kafka grants on either of two resources (Create on the topic or on the
    /// cluster): allowed if either is. Only the deciding access is recorded: the one that
    /// allowed, or the first (the more specific) when both refuse.
    fn ask_either(&mut self, first: AccessKey<'_>, second: AccessKey<'_>, record: bool) -> Answer {
        let answer = self.ask(first.0, first.1, first.2);
        let (answer, decided_by) = match answer {
            Ok(()) => (answer, first),
            Err(_) => match self.ask(second.0, second.1, second.2) {
                Ok(()) => (Ok(()), second),
                Err(_) => (answer, first),
            },
        };
        if record {
            self.record(decided_by.0, decided_by.1, decided_by.2);
        }
        answer
    }

    /// Refuses an entry the proxy cannot authorize (not a policy decision, so not an access).
    fn refuse(&mut self, denial: Denial) -> Denial {
        if self.first.is_none() {
            self.first = Some(denial.clone());
        }
        denial
    }

    /// Whether anything in the request was refused.
    fn refused(&self) -> bool {
        self.first.is_some()
    }

    /// What an entry of a refused request carries: its own refusal, or, when it was allowed,
    /// the first refusal of the request with a message saying it was not attempted.
    fn entry(&self, own: &Answer) -> Denial {
        self.entry_or(own, None)
    }

    /// Like [`Checks::entry`], with `sibling` as the code for allowed entries (instead of the
    /// first refusal's).
    fn entry_or(&self, own: &Answer, sibling: Option<ResponseError>) -> Denial {
        match own {
            Err(denial) => denial.clone(),
            Ok(()) => {
                let first = self.first.as_ref();
                let code = match (sibling, first) {
                    (Some(sibling), _) => sibling.code(),
                    (None, Some(first)) => first.code,
                    // Only reached if called on a request with no refusal; a generic error
                    // keeps the response well-formed rather than claiming success.
                    (None, None) => ResponseError::InvalidRequest.code(),
                };
                let message = match first.and_then(|first| first.message.as_deref()) {
                    Some(reason) => {
                        format!("not attempted: the request was refused as a whole ({reason})")
                    }
                    None => "not attempted: the request was refused as a whole".to_owned(),
                };
                Denial {
                    code,
                    message: Some(message),
                }
            }
        }
    }
}

/// An access asked about: the answer, whether it is recorded yet, and what decided it.
type Asked = (Answer, bool, Explanation);

/// What decided an answer, kept for the audit.
#[derive(Clone, Debug, Default)]
struct Explanation {
    note: Option<String>,
    rule: Option<String>,
    dry_run: bool,
    requires_approval: bool,
}

/// One access, as the policy is asked about it: resource type, name, operation.
type AccessKey<'n> = (ResourceType, &'n str, Operation);

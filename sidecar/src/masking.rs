//! Masking on the data path: which records of a Produce request or a Fetch response the
//! MaskingRules cover for this client, and rewriting them with the engine in [`crate::mask`].
//!
//! The request half calls [`MaskingPlans::prepare`] with the decoded request. It returns `None`
//! — and nothing else happens, no record is looked at — unless the config has rules and one
//! applies to a topic of the request for this client (rules that exempt the client do not
//! apply: it gets the raw data). Otherwise it carries the plan of each covered topic:
//!
//! - Produce: [`RequestMasking::apply`] masks the records of the request the proxy forwards
//!   (after authorization, so denied topics are never decoded); a partition whose records cannot
//!   be masked is taken out of the request and answered by the proxy with POLICY_VIOLATION
//!   (no plan: a key is missing) or CORRUPT_MESSAGE (the batch cannot be read), never forwarded;
//! - Fetch: the plans go to the response half in a [`FetchMasking`], which masks the broker's
//!   answer ([`FetchMasking::apply`]); a partition that cannot be masked is answered with the
//!   same error codes and no records, never raw data.
//!
//! Plans are built once per loaded config and set of rules (a plan does not depend on the topic,
//! only on the rules that apply), so a reload — a new [`crate::source::Loaded`] — rebuilds them,
//! with the masking keys read when that config was loaded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    FetchResponse, ProduceRequest, RequestKind, ShareFetchResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use streamward_api::acl::ResourceType;
use streamward_api::config::{
    CompiledMaskingRule, Flow, ProxyConfig, SecretKeyRef, WorkloadIdentity,
};
use streamward_api::decide::Principal;

use crate::authorize::{Fixup, Outcome, TopicNames};
use crate::mask::budget::{MemoryBudget, OverBudget};
use crate::mask::{MaskError, MaskStats, MaskingKeys, MaskingPlan, PlanError, mask_record_set};
use crate::metrics::{MaskingFailure, Metrics};
use crate::policy::ClientIdentity;
use crate::source::{Loaded, Secrets};

/// The first Produce version that names topics by id.
const PRODUCE_BY_ID: i16 = 13;
/// The first Fetch version that names topics by id.
const FETCH_BY_ID: i16 = 13;
/// The first Produce version whose partition responses carry an error message.
const PRODUCE_ERROR_MESSAGE: i16 = 8;
/// Distinct rule sets a config keeps plans for; past it the cache starts again (a config
/// has at most a few hundred rules, and a client uses few of their combinations).
const MAX_PLANS: usize = 1024;

/// A built plan, or why it could not be built (kept, so a broken rule is not rebuilt per
/// request and every request for its topics fails closed the same way).
pub type CachedPlan = Result<Arc<Plan>, Arc<PlanError>>;

/// Where the fields masked for one request are counted for its audit event, if it has one.
pub type Tally<'a> = Option<&'a mut crate::audit::session::Draft>;

/// A plan and the label its counts go under.
#[derive(Debug)]
pub struct Plan {
    plan: MaskingPlan,
    /// The plan's rule names, comma-separated, for the per-rule metrics.
    rules: String,
}

/// The masking keys of one loaded config and the plans built from them.
pub struct MaskingPlans {
    keys: MaskingKeys,
    plans: Mutex<HashMap<PlanKey, CachedPlan>>,
    /// What masking a ShareFetch response needs, decided when it arrives; `None` without rules.
    share: Option<Arc<ShareRules>>,
    /// Plans for audit records, by the rules they run (every direction).
    audit_plans: Mutex<HashMap<Box<[usize]>, CachedPlan>>,
}

/// A plan depends on the flow and on which of the config's rules apply (by position).
type PlanKey = (Flow, Box<[usize]>);

impl std::fmt::Debug for MaskingPlans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MaskingPlans")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl MaskingPlans {
    /// The same keys with no plans built yet, for a copy of the config they belong to.
    pub fn fresh_copy(&self) -> MaskingPlans {
        MaskingPlans {
            keys: self.keys.clone(),
            plans: Mutex::new(HashMap::new()),
            share: self.share.clone(),
            audit_plans: Mutex::new(HashMap::new()),
        }
    }

    /// The plans of `config`, whose rules take their keys from `secrets` (the Secrets of a local
    /// folder, or those mounted into the proxy). A key that is not there is not an error here:
    /// the topics of the rule that needs it fail closed, and say which key to mount.
    pub fn new(config: &ProxyConfig, secrets: &Secrets) -> MaskingPlans {
        let mut keys = MaskingKeys::new();
        for secret in key_refs(config) {
            if let Some(bytes) = secrets.get(&secret.name).and_then(|s| s.get(&secret.key)) {
                keys.insert(secret.clone(), bytes.clone());
            }
        }
        let share = (!config.masking.is_empty()).then(|| {
            Arc::new(ShareRules {
                rules: config.masking.clone(),
                identity: config.identity.clone(),
                keys: keys.clone(),
                plans: Mutex::new(HashMap::new()),
            })
        });
        MaskingPlans {
            keys,
            plans: Mutex::new(HashMap::new()),
            share,
            audit_plans: Mutex::new(HashMap::new()),
        }
    }

    /// The plan an audit record of the values of `topic` needs, given that they flowed `flow`
    /// for `principal` (so the rules that applied to them are applied already): every other rule
    /// that covers the topic, whatever its direction and exemptions. `None` when no rule is
    /// left (the values are recorded as they went).
    fn audit_plan_for(
        &self,
        config: &ProxyConfig,
        topic: &str,
        flow: Flow,
        principal: &Principal<'_>,
    ) -> Option<CachedPlan> {
        let rules: Box<[usize]> = config
            .masking
            .iter()
            .enumerate()
            .filter(|(_, rule)| {
                rule.topics
                    .iter()
                    .any(|pattern| pattern.matches(ResourceType::Topic, topic))
                    && !rule.applies_to(topic, flow, principal)
            })
            .map(|(index, _)| index)
            .collect();
        if rules.is_empty() {
            return None;
        }
        let mut plans = self.audit_plans.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(plan) = plans.get(&rules) {
            return Some(plan.clone());
        }
        let built = MaskingPlan::every_direction(rules.iter().map(|&i| &config.masking[i]), &self.keys)
            .map(|plan| {
                let rules = plan.rules().join(",");
                Arc::new(Plan { plan, rules })
            })
            .map_err(|error| {
                tracing::error!(%error, %topic, "masking plan for audit records cannot be built: their values are left out");
                Arc::new(error)
            });
        if plans.len() >= MAX_PLANS {
            plans.clear();
        }
        plans.insert(rules, built.clone());
        Some(built)
    }

    /// The plan for the records of `topic` flowing `flow` for `principal`, or `None` when no
    /// rule applies (the records pass untouched).
    fn plan_for(
        &self,
        config: &ProxyConfig,
        topic: &str,
        flow: Flow,
        principal: &Principal<'_>,
    ) -> Option<CachedPlan> {
        cached_plan(
            &self.plans,
            &config.masking,
            &self.keys,
            topic,
            flow,
            principal,
        )
    }

    /// What masking `request` (at `version`) needs for `client`, or `None` when no rule covers
    /// any of its topics (the common case, decided without looking at a record).
    pub fn prepare(
        &self,
        config: &ProxyConfig,
        client: &ClientIdentity,
        request: &RequestKind,
        version: i16,
        topics: &dyn TopicNames,
    ) -> Option<RequestMasking> {
        if config.masking.is_empty() {
            return None;
        }
        let principal = Principal {
            identity: &config.identity,
            pod_labels: &client.pod_labels,
            user: client.user.as_deref(),
            groups: &client.groups,
        };
        let mut plans = Vec::new();
        let mut add = |name: &TopicName, id: &uuid::Uuid, by_id: bool, flow: Flow| {
            let name = if by_id {
                // An id no Metadata response named is refused by authorization.
                topics.name_of(id)?
            } else {
                name.clone()
            };
            let plan = self.plan_for(config, name.as_str(), flow, &principal)?;
            plans.push(TopicPlan {
                name,
                id: *id,
                plan,
            });
            Some(())
        };
        match request {
            RequestKind::Produce(produce) => {
                for topic in &produce.topic_data {
                    add(
                        &topic.name,
                        &topic.topic_id,
                        version >= PRODUCE_BY_ID,
                        Flow::Produce,
                    );
                }
                (!plans.is_empty()).then(|| {
                    RequestMasking::Produce(ProduceMasking {
                        topics: plans,
                        version,
                        // Records are `Bytes`: the copy shares them.
                        request: produce.clone(),
                    })
                })
            }
            RequestKind::ShareFetch(_) => {
                // Decided per topic of the response: a share session need not name its topics.
                let rules = self.share.clone()?;
                Some(RequestMasking::Fetch(FetchMasking {
                    topics: Vec::new(),
                    version,
                    share: Some(ShareMasking {
                        rules,
                        client: client.clone(),
                    }),
                }))
            }
            RequestKind::Fetch(fetch) => {
                for topic in &fetch.topics {
                    add(
                        &topic.topic,
                        &topic.topic_id,
                        version >= FETCH_BY_ID,
                        Flow::Consume,
                    );
                }
                (!plans.is_empty()).then(|| {
                    RequestMasking::Fetch(FetchMasking {
                        topics: plans,
                        version,
                        share: None,
                    })
                })
            }
            _ => None,
        }
    }
}

/// What the record values an audit event carries (`MaskedPayload`) must go through: the
/// MaskingRules that did not already apply to them on the wire. The auditor is nobody's exempt
/// reader and reads every direction, so a value is recorded only as masked as the most masked
/// reader would get it — never raw because the rule masks on Consume and the value was
/// produced, or because the client was exempt.
pub struct AuditMasking {
    loaded: Arc<Loaded>,
    client: ClientIdentity,
}

/// How to record the values of one topic.
pub enum RecordedValues<'p> {
    /// As they went on the wire: no rule is left to apply.
    AsTheyWent,
    /// Masked with this plan first.
    Masked(&'p MaskingPlan),
    /// Not at all (only the digest): a rule left to apply cannot run (its key is missing).
    Withheld,
}

impl AuditMasking {
    /// The audit masking for `client`'s requests under `loaded`, or `None` when the config has
    /// no MaskingRules.
    pub fn new(loaded: &Arc<Loaded>, client: &ClientIdentity) -> Option<AuditMasking> {
        (!loaded.config.masking.is_empty()).then(|| AuditMasking {
            loaded: loaded.clone(),
            client: client.clone(),
        })
    }

    /// The plan for values of `topic` that flowed `flow` (masked by the rules that apply to
    /// this client already).
    pub fn plan(&self, topic: &str, flow: Flow) -> Option<CachedPlan> {
        let config = &self.loaded.config;
        let principal = Principal {
            identity: &config.identity,
            pod_labels: &self.client.pod_labels,
            user: self.client.user.as_deref(),
            groups: &self.client.groups,
        };
        self.loaded
            .masking
            .audit_plan_for(config, topic, flow, &principal)
    }
}

/// How to record values under `plan` (from [`AuditMasking::plan`]).
pub fn recorded_values(plan: Option<&CachedPlan>) -> RecordedValues<'_> {
    match plan {
        None => RecordedValues::AsTheyWent,
        Some(Ok(plan)) => RecordedValues::Masked(&plan.plan),
        Some(Err(_)) => RecordedValues::Withheld,
    }
}

/// The plan for the records of `topic` flowing `flow` for `principal` under `rules`, from
/// `cache` or built into it; `None` when no rule applies (the records pass untouched).
fn cached_plan(
    cache: &Mutex<HashMap<PlanKey, CachedPlan>>,
    rules: &[CompiledMaskingRule],
    keys: &MaskingKeys,
    topic: &str,
    flow: Flow,
    principal: &Principal<'_>,
) -> Option<CachedPlan> {
    let applying: Box<[usize]> = rules
        .iter()
        .enumerate()
        .filter(|(_, rule)| rule.applies_to(topic, flow, principal))
        .map(|(index, _)| index)
        .collect();
    if applying.is_empty() {
        return None;
    }
    // A poisoned lock only means another session panicked while holding it; the map is still
    // a valid cache.
    let mut plans = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(plan) = plans.get(&(flow, applying.clone())) {
        return Some(plan.clone());
    }
    let built = MaskingPlan::new(applying.iter().map(|&i| &rules[i]), flow, keys)
        .map(|plan| {
            let rules = plan.rules().join(",");
            Arc::new(Plan { plan, rules })
        })
        .map_err(|error| {
            tracing::error!(%error, %topic, ?flow, "masking plan cannot be built: its topics fail closed");
            Arc::new(error)
        });
    if plans.len() >= MAX_PLANS {
        plans.clear();
    }
    plans.insert((flow, applying), built.clone());
    Some(built)
}

/// The rules of one loaded config, for ShareFetch responses (KIP-932 share groups). A share
/// session keeps its partitions on the broker, so a ShareFetch need not name the topics its
/// response carries: which records to mask is decided per topic of the response, by the topic
/// ids Metadata named.
pub struct ShareRules {
    rules: Vec<CompiledMaskingRule>,
    identity: WorkloadIdentity,
    keys: MaskingKeys,
    plans: Mutex<HashMap<PlanKey, CachedPlan>>,
}

impl std::fmt::Debug for ShareRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShareRules")
            .field("rules", &self.rules.len())
            .finish_non_exhaustive()
    }
}

/// Masking of one ShareFetch response for one client.
#[derive(Debug)]
pub struct ShareMasking {
    rules: Arc<ShareRules>,
    client: ClientIdentity,
}

impl ShareMasking {
    /// Masks the records of every topic of `response` a rule covers for this client; a
    /// partition that cannot be masked (or whose topic id no Metadata named) gets an error and
    /// no records. Returns whether anything changed.
    fn apply(
        &self,
        response: &mut ShareFetchResponse,
        names: &dyn TopicNames,
        metrics: &Metrics,
        tally: &mut Tally<'_>,
    ) -> bool {
        let principal = Principal {
            identity: &self.rules.identity,
            pod_labels: &self.client.pod_labels,
            user: self.client.user.as_deref(),
            groups: &self.client.groups,
        };
        let mut changed = false;
        for topic in &mut response.responses {
            let name = names.name_of(&topic.topic_id);
            let plan = match &name {
                Some(name) => cached_plan(
                    &self.rules.plans,
                    &self.rules.rules,
                    &self.rules.keys,
                    name.as_str(),
                    Flow::Consume,
                    &principal,
                ),
                None => None,
            };
            if name.is_some() && plan.is_none() {
                continue;
            }
            let label = name.map_or_else(|| topic.topic_id.to_string(), |n| n.to_string());
            for partition in &mut topic.partitions {
                let Some(records) = partition.records.as_ref().filter(|r| !r.is_empty()) else {
                    continue;
                };
                let result = match &plan {
                    Some(plan) => mask_records(plan, records, Flow::Consume, metrics, tally),
                    None => Err(Failure {
                        code: ResponseError::UnknownTopicId,
                        message: "the records' topic id was not named by Metadata, so the \
                                  proxy cannot tell whether they must be masked"
                            .into(),
                    }),
                };
                match result {
                    Ok(None) => {}
                    Ok(Some(masked)) => {
                        partition.records = Some(masked);
                        changed = true;
                    }
                    Err(failure) => {
                        tracing::warn!(
                            topic = %label,
                            partition = partition.partition_index,
                            reason = %failure.message,
                            "share fetch answered with an error: its records cannot be masked"
                        );
                        if let Some(draft) = tally.as_deref_mut() {
                            draft.withheld(&label, partition.partition_index, &failure.message);
                        }
                        partition.error_code = failure.code.code();
                        partition.error_message = Some(StrBytes::from_string(failure.message));
                        partition.records = Some(Bytes::new());
                        // The acquired records were never delivered: the broker releases them
                        // when their acquisition lock ends.
                        partition.acquired_records.clear();
                        changed = true;
                    }
                }
            }
        }
        changed
    }
}

/// The Secret keys the rules of `config` take masking keys from.
pub fn key_refs(config: &ProxyConfig) -> impl Iterator<Item = &SecretKeyRef> {
    config.masking.iter().flat_map(|rule| {
        rule.fields
            .iter()
            .map(|f| &f.strategy)
            .chain(rule.detectors.iter().map(|d| &d.strategy))
            .chain(rule.headers.iter().map(|h| &h.strategy))
            .filter_map(|strategy| strategy.key_secret_ref())
    })
}

/// The plan of one topic of a request.
#[derive(Debug)]
struct TopicPlan {
    name: TopicName,
    id: uuid::Uuid,
    plan: CachedPlan,
}

/// What a request needs masked.
#[derive(Debug)]
pub enum RequestMasking {
    /// A Produce request's records, before it goes to the broker.
    Produce(ProduceMasking),
    /// A Fetch response's records, before they go to the client.
    Fetch(FetchMasking),
}

/// The plans of a Produce request's topics, and the request (authorization takes it).
#[derive(Debug)]
pub struct ProduceMasking {
    topics: Vec<TopicPlan>,
    version: i16,
    request: ProduceRequest,
}

/// The plans of a Fetch request's topics, for its response.
#[derive(Debug)]
pub struct FetchMasking {
    topics: Vec<TopicPlan>,
    version: i16,
    /// For a ShareFetch: its masking, decided on the response.
    share: Option<ShareMasking>,
}

impl RequestMasking {
    /// Applies masking to what authorization decided: a forwarded Produce gets its records
    /// masked (partitions that cannot be masked are refused); a forwarded Fetch hands its plans
    /// to the response half. Local answers need nothing.
    pub fn apply(self, outcome: Outcome, metrics: &Metrics) -> (Outcome, Option<FetchMasking>) {
        self.apply_counted(outcome, metrics, &mut None)
    }

    /// [`RequestMasking::apply`], adding the fields masked to the request's audit event.
    pub fn apply_counted(
        self,
        outcome: Outcome,
        metrics: &Metrics,
        tally: &mut Tally<'_>,
    ) -> (Outcome, Option<FetchMasking>) {
        match self {
            RequestMasking::Fetch(fetch) => match outcome {
                Outcome::Forward | Outcome::ForwardRewritten { .. } => (outcome, Some(fetch)),
                other => (other, None),
            },
            RequestMasking::Produce(produce) => (produce.apply(outcome, metrics, tally), None),
        }
    }
}

impl ProduceMasking {
    fn apply(self, outcome: Outcome, metrics: &Metrics, tally: &mut Tally<'_>) -> Outcome {
        let (mut request, fixup, untouched) = match outcome {
            Outcome::Forward => (self.request, Fixup::None, true),
            Outcome::ForwardRewritten {
                request: RequestKind::Produce(request),
                fixup,
            } => (request, fixup, false),
            other => return other,
        };
        let acks_zero = request.acks == 0;
        let mut changed = false;
        let mut refused = Vec::new();
        for topic in &mut request.topic_data {
            let Some(TopicPlan {
                plan, name: known, ..
            }) = find(
                &self.topics,
                &topic.name,
                &topic.topic_id,
                self.version >= PRODUCE_BY_ID,
            )
            else {
                continue;
            };
            let mut refused_partitions = Vec::new();
            topic.partition_data.retain_mut(|partition| {
                let Some(records) = partition.records.as_ref().filter(|r| !r.is_empty()) else {
                    return true;
                };
                match mask_records(plan, records, Flow::Produce, metrics, tally) {
                    Ok(None) => true,
                    Ok(Some(masked)) => {
                        partition.records = Some(masked);
                        changed = true;
                        true
                    }
                    Err(failure) => {
                        let label = topic_label(known, &topic.topic_id);
                        tracing::warn!(
                            topic = %label,
                            partition = partition.index,
                            reason = %failure.message,
                            "produce refused: its records cannot be masked"
                        );
                        if let Some(draft) = tally.as_deref_mut() {
                            draft.withheld(&label, partition.index, &failure.message);
                        }
                        refused_partitions.push(
                            PartitionProduceResponse::default()
                                .with_index(partition.index)
                                .with_error_code(failure.code.code())
                                .with_base_offset(-1)
                                .with_log_append_time_ms(-1)
                                .with_log_start_offset(-1)
                                .with_error_message(
                                    (self.version >= PRODUCE_ERROR_MESSAGE)
                                        .then(|| StrBytes::from_string(failure.message)),
                                ),
                        );
                        false
                    }
                }
            });
            if !refused_partitions.is_empty() {
                changed = true;
                // Only the field the version has (name before v13, id from v13) is read.
                refused.push(
                    TopicProduceResponse::default()
                        .with_name(topic.name.clone())
                        .with_topic_id(topic.topic_id)
                        .with_partition_responses(refused_partitions),
                );
            }
        }
        if !changed {
            // Nothing masked, nothing refused: the outcome stands as it was decided, and the
            // client's own frame is forwarded when it was going to be.
            return if untouched {
                Outcome::Forward
            } else {
                Outcome::ForwardRewritten {
                    request: RequestKind::Produce(request),
                    fixup,
                }
            };
        }
        request
            .topic_data
            .retain(|topic| !topic.partition_data.is_empty());
        let mut answered = match fixup {
            Fixup::Produce(denied) => denied,
            _ => Vec::new(),
        };
        answered.extend(refused);
        if request.topic_data.is_empty() {
            if acks_zero {
                return Outcome::NoResponse;
            }
            return Outcome::Respond(kafka_protocol::messages::ResponseKind::Produce(
                kafka_protocol::messages::ProduceResponse::default().with_responses(answered),
            ));
        }
        Outcome::ForwardRewritten {
            request: RequestKind::Produce(request),
            // With acks=0 the broker does not answer, so there is nothing to merge into.
            fixup: if acks_zero || answered.is_empty() {
                Fixup::None
            } else {
                Fixup::Produce(answered)
            },
        }
    }
}

impl FetchMasking {
    /// Masks the records of the covered topics in the broker's `response`; a partition that
    /// cannot be masked gets an error and no records. Returns whether anything changed.
    pub fn apply(&self, response: &mut FetchResponse, metrics: &Metrics) -> bool {
        self.apply_counted(response, metrics, &mut None)
    }

    /// Masks a ShareFetch response (KIP-932) like a Fetch response, naming its topics by the
    /// ids Metadata named (`names`), adding the fields masked to the audit event. Returns
    /// whether anything changed.
    pub fn apply_share(
        &self,
        response: &mut ShareFetchResponse,
        names: &dyn TopicNames,
        metrics: &Metrics,
        tally: &mut Tally<'_>,
    ) -> bool {
        self.share
            .as_ref()
            .is_some_and(|share| share.apply(response, names, metrics, tally))
    }

    /// [`FetchMasking::apply`], adding the fields masked to the request's audit event.
    pub fn apply_counted(
        &self,
        response: &mut FetchResponse,
        metrics: &Metrics,
        tally: &mut Tally<'_>,
    ) -> bool {
        let mut changed = false;
        for topic in &mut response.responses {
            let Some(TopicPlan {
                plan, name: known, ..
            }) = find(
                &self.topics,
                &topic.topic,
                &topic.topic_id,
                self.version >= FETCH_BY_ID,
            )
            else {
                continue;
            };
            for partition in &mut topic.partitions {
                let Some(records) = partition.records.as_ref().filter(|r| !r.is_empty()) else {
                    continue;
                };
                match mask_records(plan, records, Flow::Consume, metrics, tally) {
                    Ok(None) => {}
                    Ok(Some(masked)) => {
                        partition.records = Some(masked);
                        changed = true;
                    }
                    Err(failure) => {
                        let label = topic_label(known, &topic.topic_id);
                        tracing::warn!(
                            topic = %label,
                            partition = partition.partition_index,
                            reason = %failure.message,
                            "fetch answered with an error: its records cannot be masked"
                        );
                        if let Some(draft) = tally {
                            draft.withheld(&label, partition.partition_index, &failure.message);
                        }
                        partition.error_code = failure.code.code();
                        partition.records = Some(Bytes::new());
                        changed = true;
                    }
                }
            }
        }
        changed
    }
}

/// The plan of a topic named by `name` or (`by_id`) `id`.
fn find<'p>(
    topics: &'p [TopicPlan],
    name: &TopicName,
    id: &uuid::Uuid,
    by_id: bool,
) -> Option<&'p TopicPlan> {
    topics
        .iter()
        .find(|t| if by_id { t.id == *id } else { t.name == *name })
}

fn topic_label(name: &TopicName, id: &uuid::Uuid) -> String {
    if name.is_empty() {
        id.to_string()
    } else {
        name.to_string()
    }
}

/// Why a partition's records are not forwarded.
struct Failure {
    code: ResponseError,
    message: String,
}

/// Masks one partition's records: `None` when nothing changed.
fn mask_records(
    plan: &CachedPlan,
    records: &Bytes,
    flow: Flow,
    metrics: &Metrics,
    tally: &mut Tally<'_>,
) -> Result<Option<Bytes>, Failure> {
    let plan = match plan {
        Ok(plan) => plan,
        Err(error) => {
            metrics.masking_failure(flow, MaskingFailure::Plan);
            return Err(Failure {
                code: ResponseError::PolicyViolation,
                message: format!("the records cannot be masked: {error}"),
            });
        }
    };
    let mut stats = MaskStats::default();
    let result = mask_record_set(records, &plan.plan, &mut stats, MemoryBudget::proxy());
    metrics.masked(flow, &plan.rules, &stats);
    if let Some(draft) = tally {
        draft.masked(&plan.rules, stats.fields_masked + stats.headers_masked);
    }
    result.map_err(|error| {
        metrics.masking_failure(
            flow,
            match error {
                MaskError::TooLarge { .. } => MaskingFailure::TooLarge,
                MaskError::UnsupportedFormat { .. } => MaskingFailure::UnsupportedFormat,
                MaskError::Memory { .. } => MaskingFailure::Memory,
                _ => MaskingFailure::Corrupt,
            },
        );
        Failure {
            // A batch that can never be masked here is CORRUPT_MESSAGE, which consumers
            // surface and do not skip; one that waits only for memory other connections hold
            // is UNKNOWN_SERVER_ERROR, which they retry (see docs/masking.md).
            code: match error {
                MaskError::Memory {
                    over: OverBudget::Proxy { .. },
                    ..
                } => ResponseError::UnknownServerError,
                _ => ResponseError::CorruptMessage,
            },
            message: format!("the records cannot be masked: {error}"),
        }
    })
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use kafka_protocol::indexmap::IndexMap;
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::share_fetch_response;
    use kafka_protocol::messages::{FetchRequest, ResponseKind};
    use kafka_protocol::records::{
        Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
        TimestampType,
    };
    use streamward_api::compile::{compile, parse_manifests};
    use streamward_api::config::WorkloadIdentity;

    use super::*;

    struct NoIds;

    impl TopicNames for NoIds {
        fn name_of(&self, _: &uuid::Uuid) -> Option<TopicName> {
            None
        }
    }

    /// A config for demo/app with MaskingRules written as a user writes them.
    fn config(rules: &str) -> ProxyConfig {
        let identity = WorkloadIdentity {
            namespace: "demo".into(),
            service_account: "app".into(),
        };
        compile(&parse_manifests(rules).unwrap(), &identity).unwrap_or_else(|e| panic!("{e}"))
    }

    const RULES: &str = "
apiVersion: streamward.io/v1alpha1
kind: MaskingRule
metadata: {name: emails, namespace: demo}
spec:
  topics: [{name: orders., patternType: Prefixed}]
  direction: Both
  fields: [{path: email}]
  exemptSubjects: {users: [auditor]}
---
apiVersion: streamward.io/v1alpha1
kind: MaskingRule
metadata: {name: tokens, namespace: demo}
spec:
  topics: [{name: payments}]
  direction: Both
  fields: [{path: card, strategy: {type: Hmac, keySecretRef: {name: masking, key: hmac}}}]
";

    fn batch(values: &[&str], compression: Compression) -> Bytes {
        let records: Vec<Record> = values
            .iter()
            .enumerate()
            .map(|(i, value)| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: 40 + i as i64,
                sequence: -1,
                timestamp: 1_700_000_000_000 + i as i64,
                key: None,
                value: Some(Bytes::copy_from_slice(value.as_bytes())),
                headers: IndexMap::new(),
            })
            .collect();
        let mut out = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut out,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .unwrap();
        out.freeze()
    }

    fn values(records: &Bytes) -> Vec<String> {
        RecordBatchDecoder::decode_all(&mut records.clone())
            .unwrap()
            .into_iter()
            .flat_map(|set| set.records)
            .map(|r| String::from_utf8(r.value.unwrap().to_vec()).unwrap())
            .collect()
    }

    fn fetch_request(topics: &[&str]) -> RequestKind {
        RequestKind::Fetch(
            FetchRequest::default().with_topics(
                topics
                    .iter()
                    .map(|t| {
                        FetchTopic::default()
                            .with_topic(TopicName(StrBytes::from_string(t.to_string())))
                            .with_partitions(vec![FetchPartition::default()])
                    })
                    .collect(),
            ),
        )
    }

    fn fetch_response(topic: &str, records: Bytes) -> FetchResponse {
        FetchResponse::default().with_responses(vec![
            FetchableTopicResponse::default()
                .with_topic(TopicName(StrBytes::from_string(topic.into())))
                .with_partitions(vec![
                    PartitionData::default()
                        .with_high_watermark(99)
                        .with_records(Some(records)),
                ]),
        ])
    }

    fn produce_request(topic: &str, records: Bytes) -> ProduceRequest {
        ProduceRequest::default()
            .with_acks(-1)
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_string(topic.into())))
                    .with_partition_data(vec![
                        PartitionProduceData::default()
                            .with_index(3)
                            .with_records(Some(records)),
                    ]),
            ])
    }

    fn secrets_with_key() -> Secrets {
        let mut secrets = Secrets::new();
        secrets
            .entry("masking".into())
            .or_default()
            .insert("hmac".into(), b"thirty-two bytes of masking key!".to_vec());
        secrets
    }

    #[test]
    fn requests_without_covered_topics_need_nothing() {
        let app = ClientIdentity::default();
        let none = config("");
        let plans = MaskingPlans::new(&none, &Secrets::new());
        assert!(
            plans
                .prepare(&none, &app, &fetch_request(&["orders.eu"]), 12, &NoIds)
                .is_none()
        );

        let config = config(RULES);
        let plans = MaskingPlans::new(&config, &Secrets::new());
        assert!(
            plans
                .prepare(&config, &app, &fetch_request(&["invoices"]), 12, &NoIds)
                .is_none()
        );
        // An exempt subject gets the raw records.
        let auditor = ClientIdentity {
            user: Some("auditor".into()),
            ..ClientIdentity::default()
        };
        assert!(
            plans
                .prepare(
                    &config,
                    &auditor,
                    &fetch_request(&["orders.eu"]),
                    12,
                    &NoIds
                )
                .is_none()
        );
        // Topics named by id are resolved through Metadata; an unknown id has no plan (and is
        // refused by authorization).
        assert!(
            plans
                .prepare(&config, &app, &fetch_request(&["orders.eu"]), 13, &NoIds)
                .is_none()
        );
        assert!(
            plans
                .prepare(
                    &config,
                    &app,
                    &fetch_request(&["invoices", "orders.eu"]),
                    12,
                    &NoIds
                )
                .is_some()
        );
    }

    #[test]
    fn fetch_responses_are_masked_and_unmaskable_partitions_refused() {
        let config = config(RULES);
        let plans = MaskingPlans::new(&config, &Secrets::new());
        let metrics = Metrics::new();
        let app = ClientIdentity::default();
        let request = fetch_request(&["orders.eu", "payments"]);
        let Some(masking) = plans.prepare(&config, &app, &request, 12, &NoIds) else {
            panic!("orders.eu and payments have rules");
        };
        let (outcome, fetch) = masking.apply(Outcome::Forward, &metrics);
        assert_eq!(outcome, Outcome::Forward);
        let fetch = fetch.unwrap();

        let records = batch(
            &[r#"{"email":"a@b.io","n":1}"#, r#"{"n":2}"#],
            Compression::Zstd,
        );
        let mut response = fetch_response("orders.eu", records.clone());
        // payments needs a key the proxy does not have: no records, an error.
        response
            .responses
            .extend(fetch_response("payments", records.clone()).responses);
        // A topic the request did not cover stays as it is.
        response
            .responses
            .extend(fetch_response("invoices", records.clone()).responses);
        assert!(fetch.apply(&mut response, &metrics));
        let masked = response.responses[0].partitions[0]
            .records
            .as_ref()
            .unwrap();
        assert_eq!(values(masked), [r#"{"email":"****","n":1}"#, r#"{"n":2}"#]);
        let refused = &response.responses[1].partitions[0];
        assert_eq!(refused.error_code, ResponseError::PolicyViolation.code());
        assert_eq!(refused.records.as_deref(), Some(&[][..]));
        assert_eq!(refused.high_watermark, 99);
        assert_eq!(response.responses[2].partitions[0].records, Some(records));

        // A batch that cannot be read is never forwarded.
        let mut corrupt = BytesMut::from(&batch(&[r#"{"email":"x@y.io"}"#], Compression::None)[..]);
        let last = corrupt.len() - 3;
        corrupt[last] ^= 0xff;
        let mut response = fetch_response("orders.eu", corrupt.freeze());
        assert!(fetch.apply(&mut response, &metrics));
        let partition = &response.responses[0].partitions[0];
        assert_eq!(partition.error_code, ResponseError::CorruptMessage.code());
        assert_eq!(partition.records.as_deref(), Some(&[][..]));

        let exposition = metrics.encode();
        for line in [
            "streamward_sidecar_masked_records_total{flow=\"Consume\"} 1",
            "streamward_sidecar_masked_fields_total{rules=\"emails\",flow=\"Consume\"} 1",
            "streamward_sidecar_masking_failures_total{flow=\"Consume\",reason=\"Plan\"} 1",
            "streamward_sidecar_masking_failures_total{flow=\"Consume\",reason=\"Corrupt\"} 1",
        ] {
            assert!(exposition.contains(line), "{line} in\n{exposition}");
        }
    }

    #[test]
    fn share_fetch_responses_are_masked_by_the_topics_they_carry() {
        struct Named;
        impl TopicNames for Named {
            fn name_of(&self, id: &uuid::Uuid) -> Option<TopicName> {
                (id.as_u128() == 1).then(|| TopicName(StrBytes::from_static_str("orders.eu")))
            }
        }
        let config = config(RULES);
        let plans = MaskingPlans::new(&config, &Secrets::new());
        let metrics = Metrics::new();
        // A share session's ShareFetch may name no topic at all.
        let request = RequestKind::ShareFetch(Default::default());
        let masking = plans
            .prepare(&config, &ClientIdentity::default(), &request, 1, &NoIds)
            .unwrap();
        let (_, Some(fetch)) = masking.apply(Outcome::Forward, &metrics) else {
            panic!("a forwarded ShareFetch masks its response");
        };
        let records = batch(&[r#"{"email":"a@b.io"}"#], Compression::Gzip);
        let topic = |id: u128| {
            share_fetch_response::ShareFetchableTopicResponse::default()
                .with_topic_id(uuid::Uuid::from_u128(id))
                .with_partitions(vec![
                    share_fetch_response::PartitionData::default()
                        .with_records(Some(records.clone()))
                        .with_acquired_records(vec![Default::default()]),
                ])
        };
        let mut response = ShareFetchResponse::default().with_responses(vec![topic(1), topic(2)]);
        assert!(fetch.apply_share(&mut response, &Named, &metrics, &mut None));
        let masked = response.responses[0].partitions[0]
            .records
            .as_ref()
            .unwrap();
        assert_eq!(values(masked), [r#"{"email":"****"}"#]);
        // A topic id no Metadata named: the proxy cannot tell, so no records.
        let unknown = &response.responses[1].partitions[0];
        assert_eq!(unknown.error_code, ResponseError::UnknownTopicId.code());
        assert_eq!(unknown.records.as_deref(), Some(&[][..]));
        assert!(unknown.acquired_records.is_empty());
        // Without rules nothing is prepared.
        let none = super::tests::config("");
        assert!(
            MaskingPlans::new(&none, &Secrets::new())
                .prepare(&none, &ClientIdentity::default(), &request, 1, &NoIds)
                .is_none()
        );
    }

    #[test]
    fn a_refused_fetch_needs_no_response_masking() {
        let config = config(RULES);
        let plans = MaskingPlans::new(&config, &Secrets::new());
        let masking = plans
            .prepare(
                &config,
                &ClientIdentity::default(),
                &fetch_request(&["orders.eu"]),
                12,
                &NoIds,
            )
            .unwrap();
        let refusal = Outcome::Respond(ResponseKind::Fetch(FetchResponse::default()));
        let (outcome, fetch) = masking.apply(refusal.clone(), &Metrics::new());
        assert_eq!(outcome, refusal);
        assert!(fetch.is_none());
    }

    #[test]
    fn produce_requests_are_masked_before_the_broker_sees_them() {
        let config = config(RULES);
        let plans = MaskingPlans::new(&config, &secrets_with_key());
        let metrics = Metrics::new();
        let app = ClientIdentity::default();
        let records = batch(
            &[r#"{"card":"4111 1111 1111 1111","email":"a@b.io"}"#],
            Compression::Gzip,
        );
        let request = RequestKind::Produce(produce_request("payments", records.clone()));
        let masking = plans.prepare(&config, &app, &request, 9, &NoIds).unwrap();
        let (outcome, fetch) = masking.apply(Outcome::Forward, &metrics);
        assert!(fetch.is_none());
        let Outcome::ForwardRewritten {
            request: RequestKind::Produce(masked),
            fixup: Fixup::None,
        } = outcome
        else {
            panic!("{outcome:?}");
        };
        let value = &values(
            masked.topic_data[0].partition_data[0]
                .records
                .as_ref()
                .unwrap(),
        )[0];
        let json: serde_json::Value = serde_json::from_str(value).unwrap();
        // Only the payments rule applies: the card is a keyed token, the email stays.
        assert!(
            json["card"].as_str().unwrap().starts_with("hmac:"),
            "{value}"
        );
        assert_eq!(json["email"], "a@b.io");

        // Records the rules leave as they are: the client's frame goes as it came.
        let untouched = batch(&[r#"{"n":1}"#], Compression::Lz4);
        let request = RequestKind::Produce(produce_request("payments", untouched));
        let masking = plans.prepare(&config, &app, &request, 9, &NoIds).unwrap();
        assert_eq!(
            masking.apply(Outcome::Forward, &metrics).0,
            Outcome::Forward
        );
    }

    #[test]
    fn produce_partitions_that_cannot_be_masked_are_refused_not_forwarded() {
        let config = config(RULES);
        // No key: payments cannot be masked.
        let plans = MaskingPlans::new(&config, &Secrets::new());
        let metrics = Metrics::new();
        let app = ClientIdentity::default();
        let records = batch(&[r#"{"card":"4111111111111111"}"#], Compression::Snappy);
        let mut produce = produce_request("payments", records.clone());
        produce
            .topic_data
            .extend(produce_request("orders.eu", records.clone()).topic_data);
        let request = RequestKind::Produce(produce);
        let masking = plans.prepare(&config, &app, &request, 9, &NoIds).unwrap();
        let (outcome, _) = masking.apply(Outcome::Forward, &metrics);
        let Outcome::ForwardRewritten {
            request: RequestKind::Produce(forwarded),
            fixup: Fixup::Produce(refused),
        } = outcome
        else {
            panic!("{outcome:?}");
        };
        // orders.eu (nothing to mask in it) goes on; payments is answered by the proxy.
        assert_eq!(forwarded.topic_data.len(), 1);
        assert_eq!(forwarded.topic_data[0].name.as_str(), "orders.eu");
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].name.as_str(), "payments");
        let partition = &refused[0].partition_responses[0];
        assert_eq!(partition.index, 3);
        assert_eq!(partition.error_code, ResponseError::PolicyViolation.code());
        let message = partition.error_message.as_deref().unwrap();
        assert!(message.contains("masking/hmac"), "{message}");

        // Nothing left to forward: the proxy answers alone (or not at all with acks=0).
        let request = RequestKind::Produce(produce_request("payments", records.clone()));
        let masking = plans.prepare(&config, &app, &request, 9, &NoIds).unwrap();
        let (outcome, _) = masking.apply(Outcome::Forward, &metrics);
        assert!(
            matches!(outcome, Outcome::Respond(ResponseKind::Produce(_))),
            "{outcome:?}"
        );
        let request = RequestKind::Produce(produce_request("payments", records).with_acks(0));
        let masking = plans.prepare(&config, &app, &request, 9, &NoIds).unwrap();
        assert_eq!(
            masking.apply(Outcome::Forward, &metrics).0,
            Outcome::NoResponse
        );
    }

    #[test]
    fn audit_records_get_the_rules_that_did_not_apply_on_the_wire() {
        let config = config(
            &(RULES.to_owned()
                + "---
apiVersion: streamward.io/v1alpha1
kind: MaskingRule
metadata: {name: cards-on-read, namespace: demo}
spec:
  topics: [{name: orders.eu}]
  direction: Consume
  detectors: [{type: CreditCard}]
"),
        );
        let plans = MaskingPlans::new(&config, &Secrets::new());
        let labels = Default::default();
        let principal = |user| Principal {
            identity: &config.identity,
            pod_labels: &labels,
            user,
            groups: &[],
        };
        let rules = |topic, flow, user| {
            plans
                .audit_plan_for(&config, topic, flow, &principal(user))
                .map(|plan| plan.map(|p| p.rules.clone()).map_err(|e| e.to_string()))
        };
        // Fetched by the app: both rules masked on the wire already.
        assert_eq!(rules("orders.us", Flow::Consume, None), None);
        // Produced: the consume-only rule is left to apply.
        assert_eq!(
            rules("orders.eu", Flow::Produce, None),
            Some(Ok("cards-on-read".into()))
        );
        // Read by the exempt auditor: the rule that exempts it applies to the record.
        assert_eq!(
            rules("orders.eu", Flow::Consume, Some("auditor")),
            Some(Ok("emails".into()))
        );
        // The keyed rule of payments applies on the wire (where it fails closed without its
        // key): nothing is left for the record.
        assert_eq!(rules("payments", Flow::Consume, None), None);
        // A rule left to apply that cannot run (no key): the values are withheld.
        assert!(matches!(
            recorded_values(Some(&Err(Arc::new(PlanError::Detector {
                rule: "r".into(),
                index: 0,
                reason: "x".into()
            })))),
            RecordedValues::Withheld
        ));
    }

    #[test]
    fn plans_are_built_once_per_set_of_rules() {
        let config = config(RULES);
        let plans = MaskingPlans::new(&config, &Secrets::new());
        let app = ClientIdentity::default();
        let principal = Principal {
            identity: &config.identity,
            pod_labels: &app.pod_labels,
            user: None,
            groups: &[],
        };
        let a = plans
            .plan_for(&config, "orders.eu", Flow::Consume, &principal)
            .unwrap()
            .unwrap();
        let b = plans
            .plan_for(&config, "orders.us", Flow::Consume, &principal)
            .unwrap()
            .unwrap();
        assert!(Arc::ptr_eq(&a, &b), "one plan for the same rules");
        let c = plans
            .plan_for(&config, "orders.eu", Flow::Produce, &principal)
            .unwrap()
            .unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        assert!(
            plans
                .plan_for(&config, "payments", Flow::Consume, &principal)
                .unwrap()
                .is_err()
        );
        assert_eq!(plans.plans.lock().unwrap().len(), 3);
        // Keys never show in debug output.
        let plans = MaskingPlans::new(&config, &secrets_with_key());
        assert!(!format!("{plans:?}").contains("thirty-two"));
    }
}

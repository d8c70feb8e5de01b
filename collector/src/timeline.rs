//! The timeline of one client session: every request the proxy saw on one connection, in the
//! order the client sent them, with what the proxy decided and what the audit level kept of the
//! records (for `kubectl streamward replay`).

use jiff::Timestamp;
use serde::Serialize;
use streamward_api::audit::{
    Approval, AuditEvent, Client, Decision, EventData, Masked, Payload, Request, Resource,
};

use crate::store;

/// One session, start to end.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Timeline {
    /// The session id.
    pub session: String,
    /// The workload, `<namespace>/<serviceaccount>`.
    pub identity: String,
    /// Its namespace.
    pub namespace: String,
    /// Its service account.
    pub service_account: String,
    /// The pod, when the proxy knew it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The proxy (the newest event's `source`).
    pub source: String,
    /// The Kafka client (as the newest event names it: the software arrives with ApiVersions).
    pub client: Client,
    /// The time of the first and last request.
    pub first_seen: Timestamp,
    /// The time of the last request.
    pub last_seen: Timestamp,
    /// Requests stored.
    pub events: usize,
    /// Inclusive ranges of sequence numbers never stored, from 1 to the last one stored: lost
    /// events, or removed by retention.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<(u64, u64)>,
    /// The requests, by sequence number.
    pub steps: Vec<Step>,
}

/// One request of a session.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    /// The event id (`<session>:<sequence>`).
    pub id: String,
    /// Its position in the session.
    pub sequence: u64,
    /// When the proxy received it.
    pub time: Timestamp,
    /// The user the client had authenticated as by then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// That user's groups.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// API, version and correlation id.
    pub request: Request,
    /// Each resource with its effect, partitions, record and byte counts and offsets.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<Resource>,
    /// The decision, the rule and the config hash in force.
    pub decision: Decision,
    /// Fields masked per MaskingRule.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub masking: Vec<Masked>,
    /// The approval the request waited for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
    /// The records' digest, and the masked values, as the audit level kept them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<Payload>,
}

/// Why there is no timeline.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TimelineError {
    /// No event of the session is stored (or readable by the filter).
    #[error("no events of session {0:?} are stored")]
    NotFound(String),
    /// Several workloads sent events under one session id (ids are unique per workload).
    #[error(
        "session {session:?} has events of several workloads ({}): say which with namespace and \
         serviceAccount",
        identities.join(", ")
    )]
    Ambiguous {
        /// The session id.
        session: String,
        /// The workloads.
        identities: Vec<String>,
    },
}

/// The timeline of `session` from its request events (in any order; others are ignored).
pub fn build(
    session: &str,
    events: impl IntoIterator<Item = AuditEvent>,
) -> Result<Timeline, TimelineError> {
    let mut found: Vec<(AuditEvent, String)> = Vec::new();
    for event in events {
        let EventData::Request(record) = &event.data else {
            continue;
        };
        if record.session_id != session {
            continue;
        }
        let identity =
            store::identity_key(&record.identity.namespace, &record.identity.service_account);
        found.push((event, identity));
    }
    let mut identities: Vec<String> = found.iter().map(|(_, i)| i.clone()).collect();
    identities.sort();
    identities.dedup();
    match identities.len() {
        0 => return Err(TimelineError::NotFound(session.to_string())),
        1 => {}
        _ => {
            return Err(TimelineError::Ambiguous {
                session: session.to_string(),
                identities,
            });
        }
    }
    let mut steps = Vec::with_capacity(found.len());
    let mut newest: Option<(Timestamp, String, Client, String, String, Option<String>)> = None;
    for (event, _) in found {
        let EventData::Request(record) = event.data else {
            continue;
        };
        let record = *record;
        if newest.as_ref().is_none_or(|(time, ..)| event.time >= *time) {
            newest = Some((
                event.time,
                event.source.clone(),
                record.client.clone(),
                record.identity.namespace.clone(),
                record.identity.service_account.clone(),
                record.identity.pod.clone(),
            ));
        }
        steps.push(Step {
            id: event.id,
            sequence: record.sequence,
            time: event.time,
            user: record.identity.user,
            groups: record.identity.groups,
            request: record.request,
            resources: record.resources,
            decision: record.decision,
            masking: record.masking,
            approval: record.approval,
            payload: record.payload,
        });
    }
    steps.sort_by_key(|step| step.sequence);
    let Some((_, source, client, namespace, service_account, pod)) = newest else {
        return Err(TimelineError::NotFound(session.to_string()));
    };
    let mut missing = Vec::new();
    let mut expected = 1;
    for step in &steps {
        if step.sequence > expected {
            missing.push((expected, step.sequence - 1));
        }
        expected = expected.max(step.sequence + 1);
    }
    let first_seen = steps.iter().map(|s| s.time).min().unwrap_or_default();
    let last_seen = steps.iter().map(|s| s.time).max().unwrap_or_default();
    Ok(Timeline {
        session: session.to_string(),
        identity: store::identity_key(&namespace, &service_account),
        namespace,
        service_account,
        pod,
        source,
        client,
        first_seen,
        last_seen,
        events: steps.len(),
        missing,
        steps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamward_api::audit::{Identity, RequestRecord};

    fn event(session: &str, namespace: &str, sequence: u64) -> AuditEvent {
        AuditEvent::request(
            Timestamp::from_second(1_800_000_000 + sequence as i64).unwrap(),
            RequestRecord {
                session_id: session.into(),
                sequence,
                identity: Identity {
                    namespace: namespace.into(),
                    service_account: "app".into(),
                    user: (sequence > 2).then(|| "alice".into()),
                    ..Identity::default()
                },
                client: Client::default(),
                request: Request {
                    api_key: if sequence == 1 {
                        "ApiVersions"
                    } else {
                        "Fetch"
                    }
                    .into(),
                    ..Request::default()
                },
                resources: vec![],
                decision: Decision {
                    effect: "Allow".into(),
                    ..Decision::default()
                },
                masking: vec![],
                approval: None,
                payload: None,
            },
        )
    }

    #[test]
    fn a_session_reads_in_sequence_with_its_gaps_named() {
        let events = [5, 1, 2, 7].map(|n| event("s", "shop", n));
        let other = event("t", "shop", 3);
        let timeline = build("s", events.into_iter().chain([other])).unwrap();
        let sequences: Vec<u64> = timeline.steps.iter().map(|s| s.sequence).collect();
        assert_eq!(sequences, [1, 2, 5, 7]);
        assert_eq!(timeline.missing, [(3, 4), (6, 6)]);
        assert_eq!(timeline.identity, "shop/app");
        assert_eq!(timeline.steps[0].request.api_key, "ApiVersions");
        assert_eq!(timeline.steps[2].user.as_deref(), Some("alice"));
        assert_eq!(timeline.last_seen.as_second(), 1_800_000_007);
    }

    #[test]
    fn an_unknown_or_shared_session_id_is_said_so() {
        assert_eq!(
            build("s", [event("t", "shop", 1)]),
            Err(TimelineError::NotFound("s".into()))
        );
        assert!(matches!(
            build("s", [event("s", "shop", 1), event("s", "billing", 1)]),
            Err(TimelineError::Ambiguous { identities, .. }) if identities == ["billing/app", "shop/app"]
        ));
    }
}

//! The broker's answer on its way back: what the proxy changes before the client sees it.
//!
//! [`ResponseFix`] is what the request's decision left for its response: denied topics to merge
//! back (`authorize::apply_fixup`), Fetch records to mask, whether Metadata was asked for every
//! topic. [`fix`] applies it and, whatever the request, points broker addresses at the proxy's
//! listeners (`brokers`), narrows ApiVersions to what the proxy can decode (`versions`), and
//! hides from Metadata the topics the client may not Describe. A response nothing changes is
//! passed on as the broker's own bytes.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, MetadataResponse, ResponseHeader, ResponseKind,
};
use kafka_protocol::protocol::{Decodable, Encodable};
use streamward_api::acl::{Operation, ResourceType};

use crate::audit::session::Draft;
use crate::authorize::{self, Fixup, Policy};
use crate::brokers::ListenerFactory;
use crate::frame::RequestStart;
use crate::masking::FetchMasking;
use crate::policy::ClientIdentity;
use crate::shared::Shared;
use crate::versions;

/// What the response half must do with the broker's answer to a forwarded request.
#[derive(Debug)]
pub struct ResponseFix {
    /// The request, whose correlation id the answer must carry.
    pub start: RequestStart,
    /// Denied entries to merge back.
    pub fixup: Fixup,
    /// For Metadata: whether the client asked for every topic (hidden topics are then left
    /// out rather than reported as unauthorized).
    pub all_topics: bool,
    /// Who asked, for the fix-ups that ask the policy (Metadata).
    pub client: Arc<ClientIdentity>,
    /// For Fetch: the records to mask before the client sees them.
    pub masking: Option<Box<FetchMasking>>,
}

impl ResponseFix {
    /// A response with nothing of the request's own to fix (the fixes every response gets
    /// still apply).
    pub fn untouched(start: RequestStart, client: Arc<ClientIdentity>) -> ResponseFix {
        ResponseFix {
            start,
            fixup: Fixup::None,
            all_topics: false,
            client,
            masking: None,
        }
    }
}

/// A broker response the proxy cannot read or re-encode.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadResponse(pub String);

/// Applies what the proxy must change in the broker's response `frame`; returns the original
/// bytes when nothing changes. `event`, the request's audit event, gets what a Fetch returned
/// and the topics hidden from Metadata.
pub fn fix(
    shared: &Shared,
    listeners: &dyn ListenerFactory,
    fix: ResponseFix,
    frame: Bytes,
    mut event: Option<&mut Draft>,
) -> Result<Bytes, BadResponse> {
    let ResponseFix {
        start,
        fixup,
        all_topics,
        client,
        masking,
    } = fix;
    let Ok(api_key) = ApiKey::try_from(start.api_key) else {
        return Ok(frame);
    };
    let must_decode = matches!(fixup, Fixup::Produce(_) | Fixup::Fetch(_))
        || masking.is_some()
        || (event.is_some() && api_key == ApiKey::Fetch)
        || (api_key == ApiKey::Produce && event.as_deref().is_some_and(Draft::awaits_offsets))
        || api_key == ApiKey::ApiVersions
        || crate::brokers::carries_addresses(start.api_key);
    if !must_decode {
        return Ok(frame);
    }
    let version = start.api_version;
    let header_version = api_key.response_header_version(version);
    let mut body = frame.clone();
    let header = ResponseHeader::decode(&mut body, header_version)
        .map_err(|e| BadResponse(format!("{api_key:?} header: {e}")))?;
    let decoded = if api_key == ApiKey::ApiVersions {
        // A broker that does not speak the client's ApiVersions version answers in v0.
        ApiVersionsResponse::decode(&mut body.clone(), version)
            .map(|r| (r, version))
            .or_else(|_| ApiVersionsResponse::decode(&mut body.clone(), 0).map(|r| (r, 0)))
            .map(|(r, v)| (ResponseKind::ApiVersions(r), v))
    } else {
        ResponseKind::decode(api_key, &mut body, version).map(|r| (r, version))
    };
    let (mut response, version) =
        decoded.map_err(|e| BadResponse(format!("{api_key:?} v{version}: {e}")))?;

    let mut changed = false;
    if !matches!(fixup, Fixup::None) {
        authorize::apply_fixup(fixup, &mut response);
        changed = true;
    }
    match &mut response {
        ResponseKind::Fetch(r) => {
            if let Some(event) = event.as_deref_mut() {
                event.read_from_broker(r, version, &shared.topic_ids);
            }
            if let Some(masking) = &masking {
                let mut tally = event.as_deref_mut();
                changed |= masking.apply_counted(r, &shared.metrics, &mut tally);
            }
            if let Some(event) = event {
                event.fetched(r, version, &shared.topic_ids);
            }
        }
        ResponseKind::ShareFetch(r) => {
            if let Some(masking) = &masking {
                let mut tally = event.as_deref_mut();
                changed |= masking.apply_share(r, &shared.topic_ids, &shared.metrics, &mut tally);
            }
        }
        ResponseKind::Produce(r) => {
            if let Some(event) = event.as_deref_mut() {
                event.produce_answered(r, version, &shared.topic_ids);
            }
        }
        ResponseKind::ApiVersions(r) => {
            versions::narrow(r, &[ApiKey::SaslHandshake, ApiKey::SaslAuthenticate]);
            if shared.settings.client_auth.is_some() {
                // The proxy answers SASL itself: its own versions, whatever the broker's.
                versions::add_own(r, &[ApiKey::SaslHandshake, ApiKey::SaslAuthenticate]);
            }
            changed = true;
        }
        ResponseKind::Metadata(r) => {
            shared.topic_ids.learn(r);
            let state = shared.state.load();
            let policy = state.policy(
                &client,
                &shared.metrics,
                jiff::Timestamp::now(),
                event.is_some(),
            );
            changed |= hide_topics(&policy, r, all_topics, event);
        }
        _ => {}
    }
    changed |= shared
        .brokers
        .rewrite(&mut response, listeners)
        .map_err(|e| BadResponse(format!("opening a broker listener: {e}")))?;
    if !changed {
        return Ok(frame);
    }
    let mut out = BytesMut::with_capacity(frame.len());
    header
        .encode(&mut out, header_version)
        .and_then(|()| response.encode(&mut out, version))
        .map_err(|e| BadResponse(format!("re-encoding {api_key:?}: {e}")))?;
    Ok(out.freeze())
}

/// Metadata must not reveal topics the client may not Describe: they are left out of an
/// all-topics answer, and reported as TOPIC_AUTHORIZATION_FAILED when asked for by name.
/// `policy` is the one in force ([`crate::source::State::policy`]), as for requests, so it
/// fails closed and counts its decisions the same way.
fn hide_topics(
    policy: &dyn Policy,
    response: &mut MetadataResponse,
    all_topics: bool,
    mut event: Option<&mut Draft>,
) -> bool {
    let mut describable = |name: &str| -> bool {
        let verdict = policy.check(ResourceType::Topic, name, Operation::Describe);
        if !verdict.allowed
            && let Some(event) = event.as_deref_mut()
        {
            event.hidden(name, verdict.rule, verdict.message);
        }
        verdict.allowed
    };
    let before = response.topics.len();
    let mut changed = false;
    response.topics.retain_mut(|topic| {
        let Some(name) = topic.name.as_ref() else {
            return true;
        };
        if topic.error_code != 0 || describable(name.0.as_str()) {
            return true;
        }
        if all_topics {
            return false;
        }
        topic.error_code = kafka_protocol::ResponseError::TopicAuthorizationFailed.code();
        topic.partitions.clear();
        topic.topic_id = uuid::Uuid::nil();
        topic.is_internal = false;
        changed = true;
        true
    });
    changed || response.topics.len() != before
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::messages::metadata_response::MetadataResponseTopic;
    use kafka_protocol::protocol::StrBytes;

    use super::*;
    use crate::metrics::Metrics;
    use crate::source::State;

    fn metadata(topics: &[&'static str]) -> MetadataResponse {
        MetadataResponse::default().with_topics(
            topics
                .iter()
                .map(|name| {
                    MetadataResponseTopic::default()
                        .with_name(Some(TopicName(StrBytes::from_static_str(name))))
                        .with_topic_id(uuid::Uuid::from_u128(7))
                })
                .collect(),
        )
    }

    #[test]
    fn topics_are_hidden_when_failing_closed_and_each_decision_is_counted() {
        let state = State::FailClosed {
            reason: "the config has not been loaded yet".into(),
            last_good: None,
        };
        let metrics = Metrics::new();
        let client = ClientIdentity::default();
        let policy = state.policy(&client, &metrics, jiff::Timestamp::now(), false);

        // Asked for every topic: the hidden ones are left out.
        let mut all = metadata(&["orders", "payments"]);
        assert!(hide_topics(&policy, &mut all, true, None));
        assert!(all.topics.is_empty());

        // Asked by name: TOPIC_AUTHORIZATION_FAILED, with nothing about the topic.
        let mut named = metadata(&["orders"]);
        assert!(hide_topics(&policy, &mut named, false, None));
        let topic = &named.topics[0];
        assert_eq!(
            topic.error_code,
            kafka_protocol::ResponseError::TopicAuthorizationFailed.code()
        );
        assert!(topic.topic_id.is_nil() && topic.partitions.is_empty());

        let text = metrics.encode();
        assert!(
            text.contains("streamward_sidecar_decisions_total{effect=\"Deny\"} 3"),
            "{text}"
        );
    }
}

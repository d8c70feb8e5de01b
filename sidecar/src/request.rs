//! One request: what the proxy does with it, decided without I/O.
//!
//! [`decide`] takes a client's frame and returns a [`Request`]: the [`Action`] the session
//! carries out (forward, answer, hold, close) and the request's audit event, which travels with
//! it until the request is done. Nothing here reads or writes a socket, so every branch is
//! tested below with frames made in memory.
//!
//! The decision, in order:
//!
//! 1. frames that are not requests: a bare SASL token after a v0 SaslHandshake (the login
//!    answers it), or a frame too short for a header (close);
//! 2. the Streams group APIs kafka-protocol does not model (`authorize::streams`);
//! 3. ApiVersions is forwarded as is (the response half narrows the broker's answer);
//! 4. SASL is answered by the proxy: the client's login when clients authenticate to the proxy
//!    (`client_auth`), else a refusal;
//! 5. a client that must log in and has not is disconnected, as a Kafka SASL listener does;
//! 6. anything else is decoded and put to the policy in force ([`State::policy`], the
//!    config's or fail closed) through the guardrails and [`authorize::inspect`]; masking
//!    ([`crate::masking`]) then rewrites or refuses what it must, and the outcome becomes the
//!    action.
//!
//! With no broker at all (no config has ever loaded), the proxy answers ApiVersions and
//! Metadata itself and closes the connection on anything else it would forward.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use jiff::Timestamp;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, MetadataResponse, RequestHeader, RequestKind, ResponseHeader,
    ResponseKind, SaslAuthenticateResponse, SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use streamward_api::acl::{Operation, ResourceType};

use crate::approval::held::{self, Asked, Resolution, Resolved};
use crate::audit::session::{Draft, SessionAudit};
use crate::authorize::streams::{self, StreamsOutcome};
use crate::authorize::{self, Access, Fixup, Outcome, TopicNames};
use crate::client_auth::login::{self, Login};
use crate::frame::RequestStart;
use crate::guardrails::{self, Guarded};
use crate::metrics::Metrics;
use crate::policy::{ClientIdentity, InForce};
use crate::response::ResponseFix;
use crate::shared::Settings;
use crate::source::State;
use crate::versions;

/// What the proxy does with one request.
#[derive(Debug)]
pub enum Action {
    /// Send `request` to the broker: the client's own frame when nothing in it was refused or
    /// masked, else the request re-encoded without the refused part. `response` says what the
    /// response half does with the broker's answer; `None` when none comes (Produce, acks=0).
    Forward {
        /// The frame to send.
        request: Bytes,
        /// What to do with the broker's answer.
        response: Option<ResponseFix>,
    },
    /// Answer the client without the broker, in its turn; `None` when no answer is due (a
    /// refused Produce with acks=0).
    Answer(Option<Bytes>),
    /// The request needs an approver's decision (a `requireApproval` rule).
    Hold(Hold),
    /// End the connection.
    Close(Close),
}

/// A request that a `requireApproval` rule holds for an approver's decision: the session asks
/// for the approval ([`crate::approval`]), waits, and decides the same frame again with what
/// the hold came to ([`Context::resolution`]).
#[derive(Debug)]
pub struct Hold {
    /// The client's frame, as sent.
    pub request: Bytes,
    /// What the approval is asked for.
    pub asked: Asked,
}

/// Why the proxy ends a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Close {
    /// Not a request the proxy can read or authorize: the connection closes at once, without
    /// answering what is still in flight.
    Malformed(String),
    /// The client has not authenticated to the proxy, or failed to: what is in flight is
    /// answered, then `last` (the failed SASL step's answer, if any), then the connection
    /// closes.
    Unauthenticated {
        /// The last answer before closing.
        last: Option<Bytes>,
        /// Why, for the log and the audit.
        reason: String,
    },
    /// There is no broker (no config has ever loaded) and the request is not one the proxy
    /// can answer itself.
    NoBroker,
}

/// One request on its way through the proxy: what to do with it, and its audit event.
///
/// The event is emitted when the session calls [`Draft::finish`] once the request is done, or
/// when it is dropped unfinished (the session ended first), saying so.
pub struct Request {
    /// What to do.
    pub action: Action,
    /// The audit event; `None` when no events are sent.
    pub event: Option<Draft>,
}

/// What the decision reads from the proxy: no sockets, and a clock given, not read.
pub struct Context<'a> {
    /// The config in force.
    pub state: &'a State,
    /// Where decisions and requests are counted.
    pub metrics: &'a Metrics,
    /// Topic ids learned from Metadata.
    pub topics: &'a dyn TopicNames,
    /// Whether the session has a broker to forward to.
    pub broker: bool,
    /// The time grant windows are checked against.
    pub now: Timestamp,
    /// The time login lifetimes are checked against.
    pub clock: Instant,
    /// When deciding a held request again: what its hold came to.
    pub resolution: Option<&'a Resolution>,
}

/// The client side of one connection: who it is, its login to the proxy, and its audit
/// session. Owned by the session, changed only by [`decide`].
pub struct Client {
    identity: Arc<ClientIdentity>,
    /// `None` when clients do not authenticate to the proxy.
    login: Option<Login>,
    /// The session's audit events; `None` when no events are sent.
    audit: Option<SessionAudit>,
}

impl Client {
    /// A client that has just connected from `peer`.
    pub fn new(settings: &Settings, peer: SocketAddr) -> Client {
        Client {
            identity: Arc::new(settings.client.clone()),
            login: settings.client_auth.clone().map(Login::new),
            audit: settings
                .audit
                .clone()
                .map(|emitter| SessionAudit::new(emitter, peer)),
        }
    }

    /// Who the client is.
    pub fn identity(&self) -> &ClientIdentity {
        &self.identity
    }

    /// Starts the audit event of a request.
    fn begin(&mut self, start: RequestStart, api: &str, frame: &[u8]) -> Option<Draft> {
        let identity = &self.identity;
        self.audit
            .as_mut()
            .map(|audit| audit.begin(start, api, frame, identity))
    }

    /// Starts the audit event of a frame without a request header.
    fn begin_headerless(&mut self, api: &str) -> Option<Draft> {
        let identity = &self.identity;
        self.audit
            .as_mut()
            .map(|audit| audit.begin_headerless(api, identity))
    }

    /// Takes the outcome of a SASL step: the answer, and the identity for what follows.
    fn after_login(
        &mut self,
        metrics: &Metrics,
        reply: Option<Bytes>,
        outcome: login::Outcome,
    ) -> Action {
        match outcome {
            login::Outcome::Continue => Action::Answer(Some(reply.unwrap_or_default())),
            login::Outcome::Authenticated { user, groups } => {
                metrics.client_authentication(true);
                self.identity = Arc::new(ClientIdentity {
                    pod_labels: self.identity.pod_labels.clone(),
                    user: Some(user),
                    groups,
                });
                Action::Answer(Some(reply.unwrap_or_default()))
            }
            login::Outcome::Close(reason) => {
                metrics.client_authentication(false);
                Action::Close(Close::Unauthenticated {
                    last: reply,
                    reason,
                })
            }
        }
    }
}

/// A request the proxy cannot read, encode an answer to, or authorize.
struct Malformed(String);

/// Decides what to do with one request `frame` of `client`.
pub fn decide(context: &Context<'_>, client: &mut Client, frame: Bytes) -> Request {
    let mut event = None;
    let action = match decide_action(context, client, frame, &mut event) {
        Ok(action) if context.broker => action,
        Ok(action) => without_broker(action, client.login.is_some())
            .unwrap_or_else(|Malformed(reason)| Action::Close(Close::Malformed(reason))),
        Err(Malformed(reason)) => Action::Close(Close::Malformed(reason)),
    };
    if let Some(event) = event.as_mut() {
        match &action {
            Action::Close(Close::Malformed(reason)) => event.refuse(
                "malformed request",
                format!("malformed request from the client: {reason}"),
            ),
            Action::Close(Close::Unauthenticated { reason, .. }) => {
                event.refuse("client authentication", reason.clone());
            }
            _ => {}
        }
        if let Some(resolution) = context.resolution {
            event.approval(resolution.audited());
        }
    }
    Request { action, event }
}

fn decide_action(
    context: &Context<'_>,
    client: &mut Client,
    frame: Bytes,
    event: &mut Option<Draft>,
) -> Result<Action, Malformed> {
    if let Some(login) = client.login.as_mut()
        && login.expects_raw_token()
    {
        // After a v0 SaslHandshake the client sends bare tokens, not requests.
        *event = client
            .audit
            .as_mut()
            .map(|audit| audit.begin_headerless("SaslAuthenticate", &client.identity));
        let (reply, outcome) = login.raw_token(&frame, context.clock);
        return Ok(client.after_login(context.metrics, reply, outcome));
    }
    let start = match RequestStart::parse(&frame) {
        Ok(start) => start,
        Err(error) => {
            *event = client.begin_headerless("Unknown");
            return Err(Malformed(error.to_string()));
        }
    };
    if streams::is_streams_api(start.api_key) {
        *event = client.begin(start, streams::name(start.api_key), &frame);
        return decide_streams(context, client, start, frame, event);
    }
    let name = ApiKey::try_from(start.api_key).map_or("Unknown", api_key_name);
    if client.audit.is_some() && start.api_key == ApiKey::ApiVersions as i16 {
        learn_software(client, start, &frame);
    }
    *event = client.begin(start, name, &frame);
    let Ok(api_key) = ApiKey::try_from(start.api_key) else {
        // Withheld from ApiVersions, so a client that sends it ignored the proxy's ranges; it
        // cannot be authorized, and its response format is unknown.
        return Err(Malformed(format!(
            "API key {} is not one the proxy can authorize",
            start.api_key
        )));
    };
    context.metrics.request(api_key_name(api_key));
    // Debug level: cheap when off (the callsite is disabled once), and with
    // `RUST_LOG=streamward_sidecar=debug` every refusal and fix-up names its request.
    let _request = tracing::debug_span!(
        "request",
        api = api_key_name(api_key),
        version = start.api_version,
        correlation_id = start.correlation_id
    )
    .entered();
    match (api_key, client.login.as_mut()) {
        (ApiKey::ApiVersions, _) => {
            return Ok(Action::Forward {
                request: frame,
                response: Some(ResponseFix::untouched(start, client.identity.clone())),
            });
        }
        (ApiKey::SaslHandshake | ApiKey::SaslAuthenticate, Some(login)) => {
            let (reply, outcome) = sasl_step(login, start, api_key, frame, context.clock)?;
            return Ok(client.after_login(context.metrics, Some(reply), outcome));
        }
        (ApiKey::SaslHandshake, None) => {
            refuse_sasl(event);
            let response = SaslHandshakeResponse::default()
                .with_error_code(ResponseError::UnsupportedSaslMechanism.code());
            let answer = encode_local(start, ResponseKind::SaslHandshake(response))?;
            return Ok(Action::Answer(Some(answer)));
        }
        (ApiKey::SaslAuthenticate, None) => {
            refuse_sasl(event);
            let response = SaslAuthenticateResponse::default()
                .with_error_code(ResponseError::IllegalSaslState.code())
                .with_error_message(Some(StrBytes::from_static_str(NO_CLIENT_AUTH)));
            let answer = encode_local(start, ResponseKind::SaslAuthenticate(response))?;
            return Ok(Action::Answer(Some(answer)));
        }
        _ => {}
    }
    if let Some(login) = &client.login
        && let Err(reason) = login.admits(context.clock)
    {
        // What a Kafka SASL listener does: no answer, the connection closes.
        let reason = format!("{} request refused: {reason}", api_key_name(api_key));
        return Ok(Action::Close(Close::Unauthenticated { last: None, reason }));
    }

    let mut body = frame.clone();
    let header_version = api_key.request_header_version(start.api_version);
    let header = RequestHeader::decode(&mut body, header_version)
        .map_err(|e| Malformed(format!("{api_key:?} header: {e}")))?;
    let header_len = frame.len() - body.len();
    let request = RequestKind::decode(api_key, &mut body, start.api_version)
        .map_err(|e| Malformed(format!("{api_key:?} v{}: {e}", start.api_version)))?;
    let no_response = matches!(&request, RequestKind::Produce(p) if p.acks == 0);
    let all_topics = matches!(&request, RequestKind::Metadata(m) if m.topics.is_none());

    // The audit event names what the client produced; authorization takes the request.
    let produced = match (&request, event.is_some()) {
        (RequestKind::Produce(produce), true) => Some(produce.clone()),
        _ => None,
    };
    let mut masking = None;
    if let State::Ready(loaded) = context.state {
        if let Some(event) = event.as_mut()
            && matches!(api_key, ApiKey::Produce | ApiKey::Fetch)
        {
            event.set_payload_policy(loaded, &client.identity);
        }
        masking = loaded.masking.prepare(
            &loaded.config,
            &client.identity,
            &request,
            start.api_version,
            context.topics,
        );
    }
    let policy = in_force(context, client, event.is_some());
    let violations = guardrails::violations(&request, policy.guardrails());
    let resolved = context.resolution.map(|resolution| Resolved {
        inner: &policy,
        resolution,
    });
    let in_force: &dyn authorize::Policy = match &resolved {
        Some(resolved) => resolved,
        None => &policy,
    };
    let guarded = Guarded::new(in_force, &violations);
    let inspection = authorize::inspect(
        &header,
        request,
        start.api_version,
        &guarded,
        context.topics,
    );
    log_refusals(start, api_key_name(api_key), &inspection.accesses);
    let mut tally = event.as_mut();
    let (outcome, masking) = match masking {
        Some(masking) => masking.apply_counted(inspection.outcome, context.metrics, &mut tally),
        None => (inspection.outcome, None),
    };
    if let Some(event) = event.as_mut() {
        let refused = matches!(outcome, Outcome::Respond(_) | Outcome::NoResponse);
        event.decide(&inspection.accesses, refused, policy.config_hash());
        match (&outcome, &produced) {
            (
                Outcome::ForwardRewritten {
                    request: RequestKind::Produce(rewritten),
                    ..
                },
                _,
            ) => event.produced(rewritten, start.api_version, context.topics),
            (Outcome::Forward, Some(original)) => {
                event.produced(original, start.api_version, context.topics);
            }
            _ => {}
        }
    }
    let response = |fixup| ResponseFix {
        start,
        fixup,
        all_topics,
        client: client.identity.clone(),
        masking: masking.map(Box::new),
    };
    Ok(match outcome {
        Outcome::Forward => Action::Forward {
            request: frame,
            response: (!no_response).then(|| response(Fixup::None)),
        },
        Outcome::ForwardRewritten { request, fixup } => {
            let mut out = BytesMut::with_capacity(frame.len());
            header
                .encode(&mut out, header_version)
                .and_then(|()| request.encode(&mut out, start.api_version))
                .map_err(|e| Malformed(format!("re-encoding {api_key:?}: {e}")))?;
            Action::Forward {
                request: out.freeze(),
                response: (!no_response).then(|| response(fixup)),
            }
        }
        Outcome::Respond(answer) => {
            let answer = encode_local(start, answer)?;
            refusal(&inspection.accesses, start, frame, header_len, Some(answer))
        }
        Outcome::NoResponse => refusal(&inspection.accesses, start, frame, header_len, None),
    })
}

/// The policy in force for `client`'s request: the config's, or everything refused when there
/// is none or the audit spool is full and the proxy must refuse (`--audit-full=refuse`).
/// `explain`: verdicts name what decided them (for the audit event).
fn in_force<'a>(context: &'a Context<'_>, client: &'a Client, explain: bool) -> InForce<'a> {
    context
        .state
        .policy(&client.identity, context.metrics, context.now, explain)
        .unless_audit_full(client.audit.as_ref().is_some_and(SessionAudit::refuses))
}

/// A refused request's action: held when every refusal in it is a `requireApproval` rule's,
/// else answered with `answer`. `header_len` is where the body starts in `frame`.
fn refusal(
    accesses: &[Access],
    start: RequestStart,
    frame: Bytes,
    header_len: usize,
    answer: Option<Bytes>,
) -> Action {
    let Some((policy, rule)) = approval_rule(accesses) else {
        return Action::Answer(answer);
    };
    let Ok(api_key) = ApiKey::try_from(start.api_key) else {
        return Action::Answer(answer);
    };
    // Decoded once more, rarely: the decision consumed the first decoding.
    let digest = RequestKind::decode(api_key, &mut frame.slice(header_len..), start.api_version)
        .map_err(|e| e.to_string())
        .and_then(|request| held::digest(start.api_key, start.api_version, request));
    let digest = match digest {
        Ok(digest) => digest,
        Err(error) => {
            tracing::warn!(%error, "a held request has no digest: refused");
            return Action::Answer(answer);
        }
    };
    let mut resources: Vec<(ResourceType, String)> = Vec::new();
    for access in accesses.iter().filter(|a| a.requires_approval) {
        let resource = (access.resource_type, access.name.clone());
        if !resources.contains(&resource) {
            resources.push(resource);
        }
    }
    let operation = accesses
        .iter()
        .find(|a| a.requires_approval)
        .map_or(Operation::All, |a| a.operation);
    Action::Hold(Hold {
        request: frame,
        asked: Asked {
            policy,
            rule,
            api: api_key_name(api_key),
            operation,
            resources,
            digest,
        },
    })
}

/// The policy and rule a request is held for: the first refused access's, when every refused
/// access requires approval.
fn approval_rule(accesses: &[Access]) -> Option<(String, String)> {
    let mut refused = accesses.iter().filter(|access| !access.allowed);
    let first = refused.next()?;
    if !first.requires_approval || refused.any(|access| !access.requires_approval) {
        return None;
    }
    Asked::policy_and_rule(first.rule.as_deref()?)
}

const NO_CLIENT_AUTH: &str = "this Streamward proxy does not authenticate clients";

fn refuse_sasl(event: &mut Option<Draft>) {
    if let Some(event) = event.as_mut() {
        event.refuse("client authentication", NO_CLIENT_AUTH.into());
    }
}

fn log_refusals(start: RequestStart, api: &str, accesses: &[Access]) {
    for access in accesses.iter().filter(|a| !a.allowed) {
        tracing::info!(
            correlation_id = start.correlation_id,
            api,
            resource_type = %access.resource_type,
            resource = %access.name,
            operation = %access.operation,
            reason = access.message.as_deref().unwrap_or_default(),
            "refused"
        );
    }
}

/// StreamsGroupHeartbeat and StreamsGroupDescribe, which kafka-protocol does not model: read
/// and answered by `authorize::streams`, forwarded untouched when allowed.
fn decide_streams(
    context: &Context<'_>,
    client: &Client,
    start: RequestStart,
    frame: Bytes,
    event: &mut Option<Draft>,
) -> Result<Action, Malformed> {
    let api = streams::name(start.api_key);
    context.metrics.request(api);
    let _request = tracing::debug_span!(
        "request",
        api,
        version = start.api_version,
        correlation_id = start.correlation_id
    )
    .entered();
    if let Some(login) = &client.login
        && let Err(reason) = login.admits(context.clock)
    {
        let reason = format!("{api} request refused: {reason}");
        return Ok(Action::Close(Close::Unauthenticated { last: None, reason }));
    }
    // Both are flexible versions only: request header v2.
    let mut body = frame.clone();
    RequestHeader::decode(&mut body, 2).map_err(|e| Malformed(format!("{api} header: {e}")))?;
    let policy = in_force(context, client, event.is_some());
    let inspection = streams::inspect(start.api_key, start.api_version, &body, &policy)
        .map_err(|e| Malformed(format!("{api} v{}: {e}", start.api_version)))?;
    log_refusals(start, api, &inspection.accesses);
    if let Some(event) = event.as_mut() {
        let refused = matches!(inspection.outcome, StreamsOutcome::Respond(_));
        event.decide(&inspection.accesses, refused, policy.config_hash());
    }
    Ok(match inspection.outcome {
        StreamsOutcome::Forward => Action::Forward {
            request: frame,
            response: Some(ResponseFix::untouched(start, client.identity.clone())),
        },
        StreamsOutcome::Respond(response) => {
            // Response header v1: the correlation id and no tagged fields.
            let mut out = BytesMut::with_capacity(response.len() + 5);
            out.put_i32(start.correlation_id);
            out.put_u8(0);
            out.put(response);
            // Not held: these APIs are not modelled, so the request has no digest to approve.
            Action::Answer(Some(out.freeze()))
        }
    })
}

/// One SaslHandshake or SaslAuthenticate step of a client authenticating to the proxy: the
/// encoded answer and what it means for the login.
fn sasl_step(
    login: &mut Login,
    start: RequestStart,
    api_key: ApiKey,
    frame: Bytes,
    clock: Instant,
) -> Result<(Bytes, login::Outcome), Malformed> {
    let mut body = frame;
    RequestHeader::decode(&mut body, api_key.request_header_version(start.api_version))
        .map_err(|e| Malformed(format!("{api_key:?} header: {e}")))?;
    let request = RequestKind::decode(api_key, &mut body, start.api_version)
        .map_err(|e| Malformed(format!("{api_key:?} v{}: {e}", start.api_version)))?;
    let (response, outcome) = match request {
        RequestKind::SaslHandshake(request) => {
            let (response, outcome) = login.handshake(start.api_version, &request);
            (ResponseKind::SaslHandshake(response), outcome)
        }
        RequestKind::SaslAuthenticate(request) => {
            let (response, outcome) = login.authenticate(start.api_version, &request, clock);
            (ResponseKind::SaslAuthenticate(response), outcome)
        }
        other => {
            return Err(Malformed(format!("{api_key:?} decoded as {other:?}")));
        }
    };
    Ok((encode_local(start, response)?, outcome))
}

/// With no broker, what a client needs to hear that it is refused: the proxy's own ApiVersions
/// and an empty Metadata; anything else that would be forwarded closes the connection.
fn without_broker(action: Action, client_auth: bool) -> Result<Action, Malformed> {
    let Action::Forward { response, .. } = action else {
        return Ok(action);
    };
    // Nothing comes back for a request without a response: there is nothing to answer.
    let Some(response) = response else {
        return Ok(Action::Answer(None));
    };
    let start = response.start;
    let answer = match ApiKey::try_from(start.api_key) {
        Ok(ApiKey::ApiVersions) => {
            let mut versions = own_api_versions();
            if client_auth {
                versions::add_own(
                    &mut versions,
                    &[ApiKey::SaslHandshake, ApiKey::SaslAuthenticate],
                );
            }
            encode_local(start, ResponseKind::ApiVersions(versions))?
        }
        Ok(ApiKey::Metadata) => {
            encode_local(start, ResponseKind::Metadata(MetadataResponse::default()))?
        }
        _ => return Ok(Action::Close(Close::NoBroker)),
    };
    Ok(Action::Answer(Some(answer)))
}

fn own_api_versions() -> ApiVersionsResponse {
    use kafka_protocol::messages::api_versions_response::ApiVersion;
    ApiVersionsResponse::default().with_api_keys(
        [ApiKey::ApiVersions, ApiKey::Metadata]
            .into_iter()
            .map(|key| {
                let range = key.valid_versions();
                ApiVersion::default()
                    .with_api_key(key as i16)
                    .with_min_version(range.min)
                    .with_max_version(range.max)
            })
            .collect(),
    )
}

/// Encodes a response the proxy makes itself.
fn encode_local(start: RequestStart, response: ResponseKind) -> Result<Bytes, Malformed> {
    let api_key = ApiKey::try_from(start.api_key)
        .map_err(|_| Malformed(format!("API key {}", start.api_key)))?;
    let mut out = BytesMut::new();
    ResponseHeader::default()
        .with_correlation_id(start.correlation_id)
        .encode(&mut out, api_key.response_header_version(start.api_version))
        .and_then(|()| response.encode(&mut out, start.api_version))
        .map_err(|e| {
            Malformed(format!(
                "encoding the proxy's {api_key:?} v{} answer: {e}",
                start.api_version
            ))
        })?;
    Ok(out.freeze())
}

/// A static name for an API key, for metrics and logs.
pub fn api_key_name(key: ApiKey) -> &'static str {
    // Debug names of a fieldless enum are fixed; leak-free via a match on the common ones
    // would be long, so cache them once.
    static NAMES: std::sync::OnceLock<std::collections::HashMap<i16, &'static str>> =
        std::sync::OnceLock::new();
    NAMES
        .get_or_init(|| {
            ApiKey::iter()
                .map(|k| (k as i16, &*Box::leak(format!("{k:?}").into_boxed_str())))
                .collect()
        })
        .get(&(key as i16))
        .copied()
        .unwrap_or("Unknown")
}

/// Reads the client's software name and version from an ApiVersions request (v3+, KIP-511)
/// for the audit events of the session. A request that does not decode is left to the broker.
fn learn_software(client: &mut Client, start: RequestStart, frame: &Bytes) {
    use kafka_protocol::messages::ApiVersionsRequest;
    if start.api_version < 3 {
        return;
    }
    let Some(audit) = client.audit.as_mut() else {
        return;
    };
    let mut body = frame.clone();
    let header_version = ApiKey::ApiVersions.request_header_version(start.api_version);
    if RequestHeader::decode(&mut body, header_version).is_err() {
        return;
    }
    if let Ok(request) = ApiVersionsRequest::decode(&mut body, start.api_version) {
        audit.learn_software(
            request.client_software_name.as_str(),
            request.client_software_version.as_str(),
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::Receiver;

    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{MetadataRequest, ProduceRequest, ProduceResponse, TopicName};
    use streamward_api::audit::{ApprovalStep, AuditEvent, Identity, RequestRecord};
    use streamward_api::compile::{compile, parse_manifests};
    use streamward_api::config::WorkloadIdentity;

    use super::*;
    use crate::audit::Emitter;
    use crate::client_auth::{ClientAuth, Users};
    use crate::masking::MaskingPlans;
    use crate::source::{Loaded, Secrets};
    use crate::topics::TopicIds;
    use crate::upstream::{Connector, UpstreamSettings};

    /// demo/app may write and describe orders.*; payments needs approval; a DryRun policy
    /// would deny writes to orders.eu.
    const POLICIES: &str = "
apiVersion: streamward.io/v1alpha1
kind: StreamPolicy
metadata: {name: orders-team, namespace: demo}
spec:
  subjects: {serviceAccounts: [app]}
  rules:
  - name: orders
    resources: [{resourceType: Topic, name: orders., patternType: Prefixed}]
    operations: [Write, Describe]
    effect: Allow
  - name: payments-approval
    resources: [{resourceType: Topic, name: payments}]
    operations: [Write]
    effect: RequireApproval
---
apiVersion: streamward.io/v1alpha1
kind: StreamPolicy
metadata: {name: trial, namespace: demo}
spec:
  subjects: {serviceAccounts: [app]}
  mode: DryRun
  rules:
  - name: no-orders-eu
    resources: [{resourceType: Topic, name: orders.eu}]
    operations: [Write]
    effect: Deny
";

    const PRODUCE_VERSION: i16 = 9;

    fn ready() -> State {
        let identity = WorkloadIdentity {
            namespace: "demo".into(),
            service_account: "app".into(),
        };
        let config = compile(&parse_manifests(POLICIES).unwrap(), &identity)
            .unwrap_or_else(|e| panic!("{e}"));
        let masking = MaskingPlans::new(&config, &Secrets::new());
        State::Ready(Arc::new(Loaded {
            config,
            target_name: "local-kafka".into(),
            bootstrap: vec!["127.0.0.1:9092".into()],
            connector: Arc::new(Connector::new(UpstreamSettings::default()).unwrap()),
            masking,
        }))
    }

    fn no_config() -> State {
        State::FailClosed {
            reason: "the config has not been loaded yet".into(),
            last_good: None,
        }
    }

    fn settings() -> Settings {
        Settings {
            advertised_host: "127.0.0.1".into(),
            broker_port_base: None,
            max_request_bytes: crate::frame::DEFAULT_MAX_FRAME,
            max_response_bytes: crate::frame::DEFAULT_MAX_FRAME,
            client: ClientIdentity::default(),
            client_auth: None,
            audit: None,
        }
    }

    /// A proxy's worth of state for [`decide`], and the audit events its clients emit.
    struct Proxy {
        state: State,
        metrics: Arc<Metrics>,
        topics: TopicIds,
        broker: bool,
        events: Receiver<Box<AuditEvent>>,
        emitter: Emitter,
    }

    impl Proxy {
        fn new(state: State) -> Proxy {
            let metrics = Arc::new(Metrics::new());
            let (emitter, events) = Emitter::to_queue(Identity::default(), metrics.clone());
            Proxy {
                state,
                metrics,
                topics: TopicIds::default(),
                broker: true,
                events,
                emitter,
            }
        }

        fn without_broker(mut self) -> Proxy {
            self.broker = false;
            self
        }

        /// A client whose requests are audited.
        fn client(&self) -> Client {
            let settings = Settings {
                audit: Some(self.emitter.clone()),
                ..settings()
            };
            Client::new(&settings, "127.0.0.1:50000".parse().unwrap())
        }

        fn decide(&self, client: &mut Client, frame: &Bytes) -> Request {
            self.decide_after(client, frame, None)
        }

        fn decide_after(
            &self,
            client: &mut Client,
            frame: &Bytes,
            resolution: Option<&Resolution>,
        ) -> Request {
            let context = Context {
                state: &self.state,
                metrics: &self.metrics,
                topics: &self.topics,
                broker: self.broker,
                now: Timestamp::now(),
                clock: Instant::now(),
                resolution,
            };
            decide(&context, client, frame.clone())
        }

        /// Decides `frame` for a new audited client, finishes the request, and returns its
        /// action and audit record.
        fn decide_one(&self, frame: &Bytes) -> (Action, RequestRecord) {
            let Request { action, event } = self.decide(&mut self.client(), frame);
            event
                .expect("an audited client's request has an event")
                .finish();
            let event = self.events.try_recv().expect("the event was emitted");
            (action, event.record().cloned().expect("a request record"))
        }
    }

    fn encode(key: ApiKey, version: i16, correlation_id: i32, request: &RequestKind) -> Bytes {
        let mut out = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("test")))
            .encode(&mut out, key.request_header_version(version))
            .unwrap();
        request.encode(&mut out, version).unwrap();
        out.freeze()
    }

    fn produce_request(acks: i16, topics: &[&'static str]) -> ProduceRequest {
        ProduceRequest::default()
            .with_acks(acks)
            .with_timeout_ms(1000)
            .with_topic_data(
                topics
                    .iter()
                    .map(|topic| {
                        TopicProduceData::default()
                            .with_name(TopicName(StrBytes::from_static_str(topic)))
                            .with_partition_data(vec![PartitionProduceData::default()])
                    })
                    .collect(),
            )
    }

    fn produce(topics: &[&'static str]) -> Bytes {
        let request = RequestKind::Produce(produce_request(1, topics));
        encode(ApiKey::Produce, PRODUCE_VERSION, 7, &request)
    }

    fn api_versions() -> Bytes {
        let request = RequestKind::ApiVersions(Default::default());
        encode(ApiKey::ApiVersions, 3, 1, &request)
    }

    fn metadata() -> Bytes {
        let request = RequestKind::Metadata(MetadataRequest::default().with_topics(None));
        encode(ApiKey::Metadata, 12, 2, &request)
    }

    /// Decodes an answer the proxy made to a request of `key` at `version`.
    fn decode_answer(answer: &Bytes, key: ApiKey, version: i16) -> (i32, ResponseKind) {
        let mut body = answer.clone();
        let header = ResponseHeader::decode(&mut body, key.response_header_version(version))
            .unwrap_or_else(|e| panic!("{key:?} answer header: {e}"));
        let response = ResponseKind::decode(key, &mut body, version)
            .unwrap_or_else(|e| panic!("{key:?} answer: {e}"));
        (header.correlation_id, response)
    }

    fn produce_answer(answer: &Bytes) -> ProduceResponse {
        match decode_answer(answer, ApiKey::Produce, PRODUCE_VERSION) {
            (7, ResponseKind::Produce(response)) => response,
            other => panic!("not the Produce answer: {other:?}"),
        }
    }

    /// (topic, error code, error message) of every partition of a Produce answer.
    fn produce_errors(response: &ProduceResponse) -> Vec<(String, i16, String)> {
        response
            .responses
            .iter()
            .flat_map(|topic| {
                topic.partition_responses.iter().map(|partition| {
                    (
                        topic.name.to_string(),
                        partition.error_code,
                        partition
                            .error_message
                            .as_ref()
                            .map(ToString::to_string)
                            .unwrap_or_default(),
                    )
                })
            })
            .collect()
    }

    fn same_bytes(a: &Bytes, b: &Bytes) -> bool {
        a.as_ptr() == b.as_ptr() && a.len() == b.len()
    }

    #[test]
    fn an_allowed_request_is_forwarded_as_the_clients_own_bytes() {
        let proxy = Proxy::new(ready());
        let frame = produce(&["orders.us"]);
        let (action, record) = proxy.decide_one(&frame);
        let Action::Forward {
            request,
            response: Some(response),
        } = action
        else {
            panic!("not forwarded with an answer to wait for: {action:?}");
        };
        assert!(
            same_bytes(&request, &frame),
            "the frame was copied or re-encoded"
        );
        assert_eq!(response.fixup, Fixup::None);
        assert_eq!(response.start.correlation_id, 7);
        assert_eq!(record.decision.effect, "Allow");
        assert_eq!(record.decision.rule, "StreamPolicy/orders-team rule orders");
        assert!(!record.decision.config_hash.is_empty());

        // acks=0: forwarded, and no answer is awaited.
        let request = RequestKind::Produce(produce_request(0, &["orders.us"]));
        let frame = encode(ApiKey::Produce, PRODUCE_VERSION, 8, &request);
        let (action, _) = proxy.decide_one(&frame);
        assert!(
            matches!(&action, Action::Forward { request, response: None } if same_bytes(request, &frame)),
            "{action:?}"
        );
    }

    #[test]
    fn api_versions_is_forwarded_or_answered_by_the_proxy_when_there_is_no_broker() {
        let frame = api_versions();
        let (action, _) = Proxy::new(ready()).decide_one(&frame);
        assert!(
            matches!(&action, Action::Forward { request, response: Some(_) } if same_bytes(request, &frame)),
            "{action:?}"
        );

        let proxy = Proxy::new(no_config()).without_broker();
        let (action, record) = proxy.decide_one(&frame);
        let Action::Answer(Some(answer)) = action else {
            panic!("not answered by the proxy: {action:?}");
        };
        let (correlation_id, ResponseKind::ApiVersions(versions)) =
            decode_answer(&answer, ApiKey::ApiVersions, 3)
        else {
            panic!("not an ApiVersions answer");
        };
        assert_eq!(correlation_id, 1);
        let keys: Vec<i16> = versions.api_keys.iter().map(|k| k.api_key).collect();
        assert_eq!(keys, [ApiKey::ApiVersions as i16, ApiKey::Metadata as i16]);
        assert_eq!(record.request.api_key, "ApiVersions");

        // Metadata: an empty answer. Anything the proxy would forward: the connection closes.
        let (action, _) = proxy.decide_one(&metadata());
        let Action::Answer(Some(answer)) = action else {
            panic!("Metadata not answered by the proxy: {action:?}");
        };
        let (_, ResponseKind::Metadata(metadata)) = decode_answer(&answer, ApiKey::Metadata, 12)
        else {
            panic!("not a Metadata answer");
        };
        assert!(metadata.brokers.is_empty() && metadata.topics.is_empty());
        let ready_without_broker = Proxy::new(ready()).without_broker();
        let (action, _) = ready_without_broker.decide_one(&produce(&["orders.us"]));
        assert!(
            matches!(action, Action::Close(Close::NoBroker)),
            "{action:?}"
        );
    }

    #[test]
    fn a_refused_request_is_answered_by_the_proxy_with_the_kafka_error() {
        let proxy = Proxy::new(ready());
        let (action, record) = proxy.decide_one(&produce(&["secrets"]));
        let Action::Answer(Some(answer)) = action else {
            panic!("not answered by the proxy: {action:?}");
        };
        let errors = produce_errors(&produce_answer(&answer));
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].0, "secrets");
        assert_eq!(
            errors[0].1,
            ResponseError::TopicAuthorizationFailed.code(),
            "{errors:?}"
        );
        assert!(errors[0].2.contains("default deny"), "{errors:?}");
        assert_eq!(record.decision.effect, "Deny");

        // A refused Produce with acks=0 gets no answer.
        let request = RequestKind::Produce(produce_request(0, &["secrets"]));
        let frame = encode(ApiKey::Produce, PRODUCE_VERSION, 8, &request);
        let (action, _) = proxy.decide_one(&frame);
        assert!(matches!(action, Action::Answer(None)), "{action:?}");
    }

    #[test]
    fn a_partly_refused_produce_forwards_the_allowed_topics_and_answers_the_others() {
        let proxy = Proxy::new(ready());
        let frame = produce(&["orders.us", "secrets"]);
        let (action, record) = proxy.decide_one(&frame);
        let Action::Forward {
            request,
            response: Some(response),
        } = action
        else {
            panic!("not forwarded: {action:?}");
        };
        let mut body = request.clone();
        let header =
            RequestHeader::decode(&mut body, ApiKey::Produce.request_header_version(9)).unwrap();
        assert_eq!(header.correlation_id, 7);
        let forwarded = ProduceRequest::decode(&mut body, PRODUCE_VERSION).unwrap();
        let topics: Vec<String> = forwarded
            .topic_data
            .iter()
            .map(|t| t.name.to_string())
            .collect();
        assert_eq!(topics, ["orders.us"]);
        let Fixup::Produce(denied) = response.fixup else {
            panic!("no denied topics to merge: {:?}", response.fixup);
        };
        let denied = produce_errors(&ProduceResponse::default().with_responses(denied));
        assert_eq!(denied.len(), 1);
        assert_eq!(
            (denied[0].0.as_str(), denied[0].1),
            ("secrets", ResponseError::TopicAuthorizationFailed.code())
        );
        assert_eq!(record.decision.effect, "Partial");
    }

    #[test]
    fn a_request_needing_approval_is_held_and_refused_naming_the_rule() {
        let proxy = Proxy::new(ready());
        let frame = produce(&["payments"]);
        let (action, record) = proxy.decide_one(&frame);
        let Action::Hold(hold) = action else {
            panic!("not held: {action:?}");
        };
        assert!(same_bytes(&hold.request, &frame));
        assert_eq!(
            (hold.asked.policy.as_str(), hold.asked.rule.as_str()),
            ("orders-team", "payments-approval")
        );
        assert_eq!(hold.asked.api, "Produce");
        assert_eq!(hold.asked.operation, Operation::Write);
        assert_eq!(
            hold.asked.resources,
            [(ResourceType::Topic, "payments".to_string())]
        );
        assert_eq!(record.decision.effect, "RequireApproval");

        // Without an audit event the rule is named all the same.
        let mut client = Client::new(&settings(), "127.0.0.1:50001".parse().unwrap());
        let Request { action, event } = proxy.decide(&mut client, &frame);
        assert!(event.is_none());
        assert!(
            matches!(&action, Action::Hold(hold) if hold.asked.rule == "payments-approval"),
            "{action:?}"
        );
    }

    #[test]
    fn a_held_request_decided_again_is_forwarded_as_sent_or_refused_with_the_holds_message() {
        let proxy = Proxy::new(ready());
        let frame = produce(&["payments"]);
        let released = Resolution::Release {
            request: "demo/orders-app-produce-x1".into(),
            step: ApprovalStep::Approved,
            approvers: vec!["alice".into()],
        };
        let mut client = proxy.client();
        let Request { action, event } = proxy.decide_after(&mut client, &frame, Some(&released));
        assert!(
            matches!(&action, Action::Forward { request, .. } if same_bytes(request, &frame)),
            "{action:?}"
        );
        event.unwrap().finish();
        let record = proxy.events.try_recv().unwrap().record().cloned().unwrap();
        assert_eq!(record.decision.effect, "Allow");
        let approval = record.approval.expect("the approval is in the event");
        assert_eq!(approval.step, ApprovalStep::Approved);
        assert_eq!(approval.approvers, ["alice"]);

        let pending = Resolution::Refuse {
            request: Some("demo/orders-app-produce-x1".into()),
            step: ApprovalStep::Pending,
            approvers: Vec::new(),
            comment: None,
            message: "held: ApprovalRequest demo/orders-app-produce-x1 not approved".into(),
        };
        let Request { action, event } = proxy.decide_after(&mut client, &frame, Some(&pending));
        let Action::Answer(Some(answer)) = action else {
            panic!("not answered: {action:?}");
        };
        let errors = produce_errors(&produce_answer(&answer));
        assert_eq!(errors[0].1, ResponseError::PolicyViolation.code());
        assert!(errors[0].2.contains("orders-app-produce-x1"), "{errors:?}");
        event.unwrap().finish();
        let record = proxy.events.try_recv().unwrap().record().cloned().unwrap();
        assert_eq!(record.decision.effect, "Deny");
        assert_eq!(record.approval.unwrap().step, ApprovalStep::Pending);
    }

    #[test]
    fn a_dry_run_refusal_is_forwarded_and_recorded_as_would_deny() {
        let proxy = Proxy::new(ready());
        let frame = produce(&["orders.eu"]);
        let (action, record) = proxy.decide_one(&frame);
        assert!(
            matches!(&action, Action::Forward { request, .. } if same_bytes(request, &frame)),
            "{action:?}"
        );
        assert_eq!(record.decision.effect, "Allow");
        assert!(record.decision.dry_run);
        assert!(
            record
                .decision
                .reason
                .as_deref()
                .is_some_and(|r| r.contains("would be denied")),
            "{:?}",
            record.decision
        );
        let metrics = proxy.metrics.encode();
        assert!(
            metrics.contains("streamward_sidecar_decisions_total{effect=\"WouldDeny\"} 1"),
            "{metrics}"
        );
    }

    #[test]
    fn without_a_config_every_request_is_refused_and_counted() {
        let proxy = Proxy::new(no_config());
        let (action, record) = proxy.decide_one(&produce(&["orders.us"]));
        let Action::Answer(Some(answer)) = action else {
            panic!("not refused: {action:?}");
        };
        let errors = produce_errors(&produce_answer(&answer));
        assert_eq!(errors[0].1, ResponseError::TopicAuthorizationFailed.code());
        assert!(
            errors[0].2.contains("fail closed")
                && errors[0].2.contains("the config has not been loaded yet"),
            "{errors:?}"
        );
        assert_eq!(record.decision.effect, "Deny");
        assert_eq!(record.decision.rule, "fail closed");
        let metrics = proxy.metrics.encode();
        assert!(
            metrics.contains("streamward_sidecar_decisions_total{effect=\"Deny\"} 1"),
            "{metrics}"
        );
    }

    #[test]
    fn a_frame_that_is_not_a_request_closes_the_connection() {
        let proxy = Proxy::new(ready());
        let (action, record) = proxy.decide_one(&Bytes::from_static(&[0, 3, 0]));
        assert!(
            matches!(&action, Action::Close(Close::Malformed(reason)) if reason.contains("shorter than a request header")),
            "{action:?}"
        );
        assert_eq!(record.request.api_key, "Unknown");
        assert_eq!(record.decision.effect, "Deny");
        assert_eq!(record.decision.rule, "malformed request");

        // An API key the proxy does not know, and a body that does not decode.
        let mut unknown = BytesMut::new();
        unknown.put_i16(999);
        unknown.put_i16(0);
        unknown.put_i32(5);
        let (action, _) = proxy.decide_one(&unknown.freeze());
        assert!(
            matches!(&action, Action::Close(Close::Malformed(reason)) if reason.contains("999")),
            "{action:?}"
        );
        let frame = produce(&["orders.us"]);
        let cut = frame.slice(..frame.len() - 3);
        let (action, _) = proxy.decide_one(&cut);
        assert!(
            matches!(action, Action::Close(Close::Malformed(_))),
            "{action:?}"
        );
    }

    #[test]
    fn a_client_that_must_log_in_and_has_not_is_disconnected() {
        let proxy = Proxy::new(ready());
        let users = Users::from_yaml("users:\n- {name: alice, password: wonderland}\n").unwrap();
        let auth = ClientAuth::new(Some(users), None, true).unwrap();
        let settings = Settings {
            client_auth: Some(Arc::new(auth)),
            ..settings()
        };
        let mut client = Client::new(&settings, "127.0.0.1:50002".parse().unwrap());

        // ApiVersions is always allowed: the client learns it can authenticate.
        let Request { action, .. } = proxy.decide(&mut client, &api_versions());
        assert!(matches!(action, Action::Forward { .. }), "{action:?}");

        let Request { action, .. } = proxy.decide(&mut client, &metadata());
        let Action::Close(Close::Unauthenticated { last, reason }) = action else {
            panic!("not disconnected: {action:?}");
        };
        assert_eq!(last, None);
        assert!(reason.starts_with("Metadata request refused"), "{reason}");
    }
}

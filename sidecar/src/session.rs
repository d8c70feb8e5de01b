//! One client connection: read a request, decide, forward or answer, and send the responses
//! back in the order the requests came — pipelined clients rely on that order.
//!
//! Two halves run side by side. The request half reads client frames, asks the policy, and
//! either writes the request to the broker (queueing what to expect back) or queues a local
//! answer. The response half takes the queue in order: a local answer is written as is; for a
//! forwarded request it reads the broker's next response, fixes it up where needed (broker
//! addresses, topics the client may not see, denied topics merged back) and writes it. The queue
//! is bounded, so a client that pipelines faster than the broker answers is slowed, not buffered.
//!
//! When clients authenticate to the proxy, the request half also answers their SASL requests
//! (never the broker's business: the broker connection carries the target's own credentials),
//! keeps anything else out until they have, and asks the policy as the user they proved to be.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use jiff::Timestamp;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, MetadataResponse, RequestHeader, RequestKind, ResponseHeader,
    ResponseKind, SaslAuthenticateResponse, SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};
use tracing::Instrument;

use crate::audit::session::{Draft, SessionAudit, audit_level};
use crate::authorize::streams::{self, StreamsOutcome};
use crate::authorize::{self, Fixup, Outcome, Policy, TopicNames};
use crate::brokers::ListenerFactory;
use crate::client_auth::login::{self, Login};
use crate::frame::{self, FrameWriter, RequestStart};
use crate::guardrails::{self, Guarded};
use crate::masking::FetchMasking;
use crate::policy::ClientIdentity;
use crate::shared::{Shared, Upstream};
use crate::source::State;
use crate::versions;

/// How many requests a client may have in flight before the proxy stops reading more.
const PIPELINE_DEPTH: usize = 128;

/// Why a session ended other than by the client closing it.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The client sent something that is not a Kafka request.
    #[error("malformed request from the client: {0}")]
    Malformed(String),
    /// Reading from or writing to the client failed.
    #[error("client connection: {0}")]
    Client(std::io::Error),
    /// Reading from or writing to the broker failed.
    #[error("broker connection: {0}")]
    Broker(std::io::Error),
    /// No broker connection could be made.
    #[error("connecting to the broker: {0}")]
    Connect(String),
    /// The broker answered out of order or unreadably.
    #[error("broker response: {0}")]
    Response(String),
    /// The client did not authenticate to the proxy, or failed to.
    #[error("client authentication: {0}")]
    ClientAuth(String),
}

/// What the response half expects next.
enum Pending {
    /// A response made by the proxy.
    Local(Bytes),
    /// The broker's response to a forwarded request.
    Broker {
        start: RequestStart,
        fixup: Fixup,
        /// For Metadata: whether the client asked for every topic (hidden topics are then left
        /// out rather than reported as unauthorized).
        all_topics: bool,
        /// Who asked, for the fix-ups that ask the policy (Metadata).
        client: Arc<ClientIdentity>,
        /// For Fetch: the records to mask before the client sees them.
        masking: Option<Box<FetchMasking>>,
    },
    /// The last answer, if any, before the proxy closes the connection.
    Close { last: Option<Bytes>, reason: String },
}

/// The client's side of a session: who it is, and its authentication to the proxy.
struct Client {
    identity: Arc<ClientIdentity>,
    /// `None` when clients do not authenticate to the proxy.
    login: Option<Login>,
    /// The session's audit events; `None` when no events are sent.
    audit: Option<SessionAudit>,
}

impl Client {
    fn new(shared: &Shared, peer: SocketAddr) -> Client {
        Client {
            identity: Arc::new(shared.settings.client.clone()),
            login: shared.settings.client_auth.clone().map(Login::new),
            audit: shared
                .settings
                .audit
                .clone()
                .map(|emitter| SessionAudit::new(emitter, peer)),
        }
    }

    /// Starts the audit event of a request.
    fn begin(&mut self, start: RequestStart, api: &str, frame: &[u8]) -> Option<Draft> {
        let identity = &self.identity;
        self.audit
            .as_mut()
            .map(|audit| audit.begin(start, api, frame, identity))
    }
}

/// What to do with one request: what to send to the broker, what the response half should
/// expect, and the request's audit event (finished once it is answered).
type Handled = (Option<Bytes>, Option<Pending>, Option<Draft>);

/// What the response half takes: the next answer and the audit event it completes.
type Queued = (Pending, Option<Draft>);

/// Serves one client until it disconnects, the broker goes away, or the proxy shuts down.
/// `listeners` opens the listener of a broker the first time a response names it.
pub async fn run(
    shared: Arc<Shared>,
    listeners: Arc<dyn ListenerFactory>,
    client: TcpStream,
    peer: SocketAddr,
    upstream: Upstream,
) {
    let _ = client.set_nodelay(true);
    shared.metrics.connections().inc();
    let span = tracing::info_span!("session", %peer, ?upstream);
    match serve(&shared, &*listeners, client, peer, upstream)
        .instrument(span.clone())
        .await
    {
        Ok(()) => tracing::debug!(parent: &span, "client closed the connection"),
        Err(SessionError::Malformed(reason)) => {
            shared.metrics.malformed();
            tracing::warn!(parent: &span, %reason, "closing the connection: malformed request");
        }
        Err(SessionError::ClientAuth(reason)) => {
            tracing::warn!(parent: &span, %reason, "closing the connection: client authentication");
        }
        Err(error) => tracing::info!(parent: &span, %error, "session ended"),
    }
    shared.metrics.connections().dec();
}

async fn serve(
    shared: &Arc<Shared>,
    listeners: &dyn ListenerFactory,
    client: TcpStream,
    peer: SocketAddr,
    upstream: Upstream,
) -> Result<(), SessionError> {
    let state = shared.state.load_full();
    let Some(loaded) = state.connection_config().cloned() else {
        let reason = state.refusal().unwrap_or("no config is loaded");
        return serve_without_config(shared, client, peer, reason).await;
    };
    let addresses: Vec<String> = match upstream {
        Upstream::Bootstrap => loaded.bootstrap.clone(),
        Upstream::Broker(id) => shared.brokers.upstream_of(id).into_iter().collect(),
    };
    let mut last_error = String::from("no broker address is known for this listener");
    let mut broker = None;
    for address in &addresses {
        match loaded.connector.connect(address).await {
            Ok(stream) => {
                broker = Some(stream);
                break;
            }
            Err(error) => {
                shared.metrics.upstream_error();
                tracing::warn!(%address, %error, "broker connection failed");
                last_error = error.to_string();
            }
        }
    }
    let broker = broker.ok_or(SessionError::Connect(last_error))?;
    drop(state);

    let (client_read, client_write) = client.into_split();
    let (broker_read, broker_write) = tokio::io::split(broker);
    let settings = &shared.settings;
    let requests = FramedRead::new(client_read, frame::codec(settings.max_request_bytes));
    let to_broker = FrameWriter::new(broker_write);
    let responses = FramedRead::new(broker_read, frame::codec(settings.max_response_bytes));
    let to_client = FrameWriter::new(client_write);
    let (queue, pending) = mpsc::channel(PIPELINE_DEPTH);

    let request_half = forward_requests(
        shared,
        Client::new(shared, peer),
        requests,
        to_broker,
        queue,
    );
    let response_half = return_responses(shared, listeners, pending, responses, to_client);
    tokio::try_join!(request_half, response_half).map(|_| ())
}

async fn forward_requests<R, W>(
    shared: &Shared,
    mut client: Client,
    mut requests: FramedRead<R, LengthDelimitedCodec>,
    mut to_broker: FrameWriter<W>,
    queue: mpsc::Sender<Queued>,
) -> Result<(), SessionError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        let frame = tokio::select! {
            // On shutdown, stop taking requests; those in flight are still answered.
            _ = shared.shutdown.cancelled() => return Ok(()),
            frame = requests.next() => frame,
        };
        let Some(frame) = frame else { return Ok(()) };
        let frame = frame.map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => SessionError::Malformed(e.to_string()),
            _ => SessionError::Client(e),
        })?;
        let frame = frame.freeze();
        let (to_send, expect, draft) = handle_request(shared, &mut client, frame)?;
        let closing = matches!(expect, Some(Pending::Close { .. }));
        match expect {
            Some(expect) => {
                if queue.send((expect, draft)).await.is_err() {
                    return Ok(()); // the response half has ended and says why
                }
            }
            // No answer is due (Produce with acks=0): the request is done once it is sent.
            None => {
                if let Some(request) = to_send {
                    to_broker
                        .send(request)
                        .await
                        .map_err(SessionError::Broker)?;
                }
                if let Some(draft) = draft {
                    draft.finish();
                }
                continue;
            }
        }
        if closing {
            // Read no more; the response half answers what is queued, then ends the session.
            return Ok(());
        }
        if let Some(request) = to_send {
            to_broker
                .send(request)
                .await
                .map_err(SessionError::Broker)?;
        }
    }
}

/// Decides what to do with one request: what to send to the broker (if anything), what the
/// response half should expect (if anything), and the request's audit event. A request that
/// ends the session (malformed) still has its event, saying why.
fn handle_request(
    shared: &Shared,
    client: &mut Client,
    frame: Bytes,
) -> Result<Handled, SessionError> {
    let mut draft = None;
    match decide_request(shared, client, frame, &mut draft) {
        Ok((to_send, expect)) => {
            if let (Some(draft), Some(Pending::Close { reason, .. })) = (draft.as_mut(), &expect) {
                draft.refuse("client authentication", reason.clone());
            }
            Ok((to_send, expect, draft))
        }
        Err(error) => {
            if let Some(draft) = draft.as_mut() {
                draft.refuse("malformed request", error.to_string());
            }
            if let Some(draft) = draft {
                draft.finish();
            }
            Err(error)
        }
    }
}

fn decide_request(
    shared: &Shared,
    client: &mut Client,
    frame: Bytes,
    draft: &mut Option<Draft>,
) -> Result<(Option<Bytes>, Option<Pending>), SessionError> {
    if let Some(login) = client.login.as_mut()
        && login.expects_raw_token()
    {
        // After a v0 SaslHandshake the client sends bare tokens, not requests.
        let identity = client.identity.clone();
        *draft = client
            .audit
            .as_mut()
            .map(|audit| audit.begin_headerless("SaslAuthenticate", &identity));
        let (reply, outcome) = login.raw_token(&frame, Instant::now());
        return Ok((None, Some(client.after_login(shared, reply, outcome))));
    }
    let start = match RequestStart::parse(&frame) {
        Ok(start) => start,
        Err(error) => {
            let identity = client.identity.clone();
            *draft = client
                .audit
                .as_mut()
                .map(|audit| audit.begin_headerless("Unknown", &identity));
            return Err(SessionError::Malformed(error.to_string()));
        }
    };
    if streams::is_streams_api(start.api_key) {
        *draft = client.begin(start, streams::name(start.api_key), &frame);
        return handle_streams_request(shared, client, start, frame, draft);
    }
    let name = ApiKey::try_from(start.api_key).map_or("Unknown", api_key_name);
    if client.audit.is_some() && start.api_key == ApiKey::ApiVersions as i16 {
        learn_software(client, start, &frame);
    }
    *draft = client.begin(start, name, &frame);
    let Ok(api_key) = ApiKey::try_from(start.api_key) else {
        // Withheld from ApiVersions, so a client that sends it ignored the proxy's ranges; it
        // cannot be authorized, and its response format is unknown.
        return Err(SessionError::Malformed(format!(
            "API key {} is not one the proxy can authorize",
            start.api_key
        )));
    };
    shared.metrics.request(api_key_name(api_key));
    // Debug level: cheap when off (the callsite is disabled once), and with
    // `RUST_LOG=streamward_sidecar=debug` every refusal and fix-up names its request.
    let _request = tracing::debug_span!(
        "request",
        api = api_key_name(api_key),
        version = start.api_version,
        correlation_id = start.correlation_id
    )
    .entered();
    let forward_untouched = |fixup| {
        Ok((
            Some(frame.clone()),
            Some(Pending::Broker {
                start,
                fixup,
                all_topics: false,
                client: client.identity.clone(),
                masking: None,
            }),
        ))
    };
    match api_key {
        ApiKey::ApiVersions => return forward_untouched(Fixup::None),
        ApiKey::SaslHandshake | ApiKey::SaslAuthenticate if client.login.is_some() => {
            return answer_sasl(shared, client, start, api_key, frame);
        }
        ApiKey::SaslHandshake | ApiKey::SaslAuthenticate => {
            if let Some(draft) = draft.as_mut() {
                draft.refuse(
                    "client authentication",
                    "this Streamward proxy does not authenticate clients".into(),
                );
            }
        }
        _ => {}
    }
    match api_key {
        ApiKey::SaslHandshake => {
            let response = SaslHandshakeResponse::default()
                .with_error_code(ResponseError::UnsupportedSaslMechanism.code());
            return Ok((
                None,
                Some(local(start, ResponseKind::SaslHandshake(response))?),
            ));
        }
        ApiKey::SaslAuthenticate => {
            let response = SaslAuthenticateResponse::default()
                .with_error_code(ResponseError::IllegalSaslState.code())
                .with_error_message(Some(StrBytes::from_static_str(
                    "this Streamward proxy does not authenticate clients",
                )));
            return Ok((
                None,
                Some(local(start, ResponseKind::SaslAuthenticate(response))?),
            ));
        }
        _ => {}
    }
    if let Some(login) = &client.login
        && let Err(reason) = login.admits(Instant::now())
    {
        // What a Kafka SASL listener does: no answer, the connection closes.
        let reason = format!("{} request refused: {reason}", api_key_name(api_key));
        return Ok((None, Some(Pending::Close { last: None, reason })));
    }

    let mut body = frame.clone();
    let header_version = api_key.request_header_version(start.api_version);
    let header = RequestHeader::decode(&mut body, header_version)
        .map_err(|e| SessionError::Malformed(format!("{api_key:?} header: {e}")))?;
    let request = RequestKind::decode(api_key, &mut body, start.api_version)
        .map_err(|e| SessionError::Malformed(format!("{api_key:?} v{}: {e}", start.api_version)))?;
    let no_response = matches!(&request, RequestKind::Produce(p) if p.acks == 0);
    let all_topics = matches!(&request, RequestKind::Metadata(m) if m.topics.is_none());

    let state = shared.state.load();
    let ids = SharedTopicIds(shared);
    // The audit event names what the client produced; authorization takes the request.
    let produced = match (&request, draft.is_some()) {
        (RequestKind::Produce(produce), true) => Some(produce.clone()),
        _ => None,
    };
    let mut masking = None;
    if let State::Ready(loaded) = &**state {
        if let Some(draft) = draft.as_mut()
            && matches!(api_key, ApiKey::Produce | ApiKey::Fetch)
        {
            draft.set_level(audit_level(
                &loaded.config,
                &client.identity,
                &loaded.target_name,
            ));
        }
        masking = loaded.masking.prepare(
            &loaded.config,
            &client.identity,
            &request,
            start.api_version,
            &ids,
        );
    }
    let policy = state.policy(
        &client.identity,
        &shared.metrics,
        Timestamp::now(),
        draft.is_some(),
    );
    let config_hash = policy.config_hash();
    let violations = guardrails::violations(&request, policy.guardrails());
    let guarded = Guarded::new(&policy, &violations);
    let inspection = authorize::inspect(&header, request, start.api_version, &guarded, &ids);
    log_refusals(start, api_key_name(api_key), &inspection.accesses);
    let mut tally = draft.as_mut();
    let (outcome, masking) = match masking {
        Some(masking) => masking.apply_counted(inspection.outcome, &shared.metrics, &mut tally),
        None => (inspection.outcome, None),
    };
    if let Some(draft) = draft.as_mut() {
        let refused = matches!(outcome, Outcome::Respond(_) | Outcome::NoResponse);
        draft.decide(&inspection.accesses, refused, config_hash);
        match (&outcome, &produced) {
            (
                Outcome::ForwardRewritten {
                    request: RequestKind::Produce(rewritten),
                    ..
                },
                _,
            ) => draft.produced(rewritten, start.api_version, &ids),
            (Outcome::Forward, Some(original)) => {
                draft.produced(original, start.api_version, &ids);
            }
            _ => {}
        }
    }
    let expect = |fixup| Pending::Broker {
        start,
        fixup,
        all_topics,
        client: client.identity.clone(),
        masking: masking.map(Box::new),
    };
    Ok(match outcome {
        Outcome::Forward => (Some(frame), (!no_response).then(|| expect(Fixup::None))),
        Outcome::ForwardRewritten { request, fixup } => {
            let mut out = BytesMut::with_capacity(frame.len());
            header
                .encode(&mut out, header_version)
                .and_then(|()| request.encode(&mut out, start.api_version))
                .map_err(|e| SessionError::Malformed(format!("re-encoding {api_key:?}: {e}")))?;
            (Some(out.freeze()), (!no_response).then(|| expect(fixup)))
        }
        Outcome::Respond(response) => (None, Some(local(start, response)?)),
        Outcome::NoResponse => (None, None),
    })
}

fn log_refusals(start: RequestStart, api: &str, accesses: &[authorize::Access]) {
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
fn handle_streams_request(
    shared: &Shared,
    client: &Client,
    start: RequestStart,
    frame: Bytes,
    draft: &mut Option<Draft>,
) -> Result<(Option<Bytes>, Option<Pending>), SessionError> {
    let api = streams::name(start.api_key);
    shared.metrics.request(api);
    let _request = tracing::debug_span!(
        "request",
        api,
        version = start.api_version,
        correlation_id = start.correlation_id
    )
    .entered();
    if let Some(login) = &client.login
        && let Err(reason) = login.admits(Instant::now())
    {
        let reason = format!("{api} request refused: {reason}");
        return Ok((None, Some(Pending::Close { last: None, reason })));
    }
    // Both are flexible versions only: request header v2.
    let mut body = frame.clone();
    RequestHeader::decode(&mut body, 2)
        .map_err(|e| SessionError::Malformed(format!("{api} header: {e}")))?;
    let state = shared.state.load();
    let policy = state.policy(
        &client.identity,
        &shared.metrics,
        Timestamp::now(),
        draft.is_some(),
    );
    let config_hash = policy.config_hash();
    let inspection = streams::inspect(start.api_key, start.api_version, &body, &policy)
    .map_err(|e| SessionError::Malformed(format!("{api} v{}: {e}", start.api_version)))?;
    log_refusals(start, api, &inspection.accesses);
    if let Some(draft) = draft.as_mut() {
        let refused = matches!(inspection.outcome, StreamsOutcome::Respond(_));
        draft.decide(&inspection.accesses, refused, config_hash);
    }
    Ok(match inspection.outcome {
        StreamsOutcome::Forward => (
            Some(frame),
            Some(Pending::Broker {
                start,
                fixup: Fixup::None,
                all_topics: false,
                client: client.identity.clone(),
                masking: None,
            }),
        ),
        StreamsOutcome::Respond(response) => {
            // Response header v1: the correlation id and no tagged fields.
            let mut out = BytesMut::with_capacity(response.len() + 5);
            out.put_i32(start.correlation_id);
            out.put_u8(0);
            out.put(response);
            (None, Some(Pending::Local(out.freeze())))
        }
    })
}

/// Answers a SaslHandshake or SaslAuthenticate when clients authenticate to the proxy.
fn answer_sasl(
    shared: &Shared,
    client: &mut Client,
    start: RequestStart,
    api_key: ApiKey,
    frame: Bytes,
) -> Result<(Option<Bytes>, Option<Pending>), SessionError> {
    let Some(login) = client.login.as_mut() else {
        return Err(SessionError::ClientAuth(
            "SASL request while client authentication is off".into(),
        ));
    };
    let mut body = frame;
    RequestHeader::decode(&mut body, api_key.request_header_version(start.api_version))
        .map_err(|e| SessionError::Malformed(format!("{api_key:?} header: {e}")))?;
    let request = RequestKind::decode(api_key, &mut body, start.api_version)
        .map_err(|e| SessionError::Malformed(format!("{api_key:?} v{}: {e}", start.api_version)))?;
    let (response, outcome) = match request {
        RequestKind::SaslHandshake(request) => {
            let (response, outcome) = login.handshake(start.api_version, &request);
            (ResponseKind::SaslHandshake(response), outcome)
        }
        RequestKind::SaslAuthenticate(request) => {
            let (response, outcome) =
                login.authenticate(start.api_version, &request, Instant::now());
            (ResponseKind::SaslAuthenticate(response), outcome)
        }
        other => {
            return Err(SessionError::Malformed(format!(
                "{api_key:?} decoded as {other:?}"
            )));
        }
    };
    let response = encode_local(start, response)?;
    Ok((
        None,
        Some(client.after_login(shared, Some(response), outcome)),
    ))
}

impl Client {
    /// Takes the outcome of a SASL step: the answer to queue, and the identity for what follows.
    fn after_login(
        &mut self,
        shared: &Shared,
        reply: Option<Bytes>,
        outcome: login::Outcome,
    ) -> Pending {
        match outcome {
            login::Outcome::Continue => Pending::Local(reply.unwrap_or_default()),
            login::Outcome::Authenticated { user, groups } => {
                shared.metrics.client_authentication(true);
                self.identity = Arc::new(ClientIdentity {
                    pod_labels: shared.settings.client.pod_labels.clone(),
                    user: Some(user),
                    groups,
                });
                Pending::Local(reply.unwrap_or_default())
            }
            login::Outcome::Close(reason) => {
                shared.metrics.client_authentication(false);
                Pending::Close {
                    last: reply,
                    reason,
                }
            }
        }
    }
}

async fn return_responses<R, W>(
    shared: &Shared,
    listeners: &dyn ListenerFactory,
    mut pending: mpsc::Receiver<Queued>,
    mut responses: FramedRead<R, LengthDelimitedCodec>,
    mut to_client: FrameWriter<W>,
) -> Result<(), SessionError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    while let Some((next, mut draft)) = pending.recv().await {
        let out = match next {
            Pending::Local(bytes) => bytes,
            Pending::Close { last, reason } => {
                if let Some(last) = last {
                    to_client.send(last).await.map_err(SessionError::Client)?;
                }
                if let Some(draft) = draft {
                    draft.finish();
                }
                return Err(SessionError::ClientAuth(reason));
            }
            Pending::Broker {
                start,
                fixup,
                all_topics,
                client,
                masking,
            } => {
                let frame = responses
                    .next()
                    .await
                    .ok_or_else(|| SessionError::Broker(std::io::ErrorKind::UnexpectedEof.into()))?
                    .map_err(SessionError::Broker)?
                    .freeze();
                let correlation_id = frame::response_correlation_id(&frame);
                if correlation_id != Some(start.correlation_id) {
                    return Err(SessionError::Response(format!(
                        "expected correlation id {}, got {correlation_id:?}",
                        start.correlation_id
                    )));
                }
                let _response = tracing::debug_span!(
                    "response",
                    api_key = start.api_key,
                    correlation_id = start.correlation_id
                )
                .entered();
                let fix = ResponseFix {
                    fixup,
                    all_topics,
                    client: &client,
                    masking: masking.as_deref(),
                    draft: draft.as_mut(),
                };
                fix_response(shared, listeners, start, fix, frame)?
            }
        };
        to_client.send(out).await.map_err(SessionError::Client)?;
        if let Some(draft) = draft {
            draft.finish();
        }
    }
    Ok(())
}

/// What the response half must change in a broker response, besides broker addresses.
struct ResponseFix<'a> {
    fixup: Fixup,
    all_topics: bool,
    client: &'a ClientIdentity,
    masking: Option<&'a FetchMasking>,
    /// The request's audit event, which counts what a Fetch returned.
    draft: Option<&'a mut Draft>,
}

/// Applies what the proxy must change in a broker response; returns the original bytes when
/// nothing changes.
fn fix_response(
    shared: &Shared,
    listeners: &dyn ListenerFactory,
    start: RequestStart,
    fix: ResponseFix<'_>,
    frame: Bytes,
) -> Result<Bytes, SessionError> {
    let ResponseFix {
        fixup,
        all_topics,
        client,
        masking,
        mut draft,
    } = fix;
    let Ok(api_key) = ApiKey::try_from(start.api_key) else {
        return Ok(frame);
    };
    let must_decode = matches!(fixup, Fixup::Produce(_) | Fixup::Fetch(_))
        || masking.is_some()
        || (draft.is_some() && api_key == ApiKey::Fetch)
        || api_key == ApiKey::ApiVersions
        || crate::brokers::carries_addresses(start.api_key);
    if !must_decode {
        return Ok(frame);
    }
    let version = start.api_version;
    let header_version = api_key.response_header_version(version);
    let mut body = frame.clone();
    let header = ResponseHeader::decode(&mut body, header_version)
        .map_err(|e| SessionError::Response(format!("{api_key:?} header: {e}")))?;
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
        decoded.map_err(|e| SessionError::Response(format!("{api_key:?} v{version}: {e}")))?;

    let mut changed = false;
    if !matches!(fixup, Fixup::None) {
        authorize::apply_fixup(fixup, &mut response);
        changed = true;
    }
    match &mut response {
        ResponseKind::Fetch(r) => {
            if let Some(masking) = masking {
                let mut tally = draft.as_deref_mut();
                changed |= masking.apply_counted(r, &shared.metrics, &mut tally);
            }
            if let Some(draft) = draft {
                draft.fetched(r, version, &SharedTopicIds(shared));
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
            changed |= hide_topics(shared, r, all_topics, client, draft);
        }
        _ => {}
    }
    changed |= shared
        .brokers
        .rewrite(&mut response, listeners)
        .map_err(|e| SessionError::Response(format!("opening a broker listener: {e}")))?;
    if !changed {
        return Ok(frame);
    }
    let mut out = BytesMut::with_capacity(frame.len());
    header
        .encode(&mut out, header_version)
        .and_then(|()| response.encode(&mut out, version))
        .map_err(|e| SessionError::Response(format!("re-encoding {api_key:?}: {e}")))?;
    Ok(out.freeze())
}

/// Metadata must not reveal topics the client may not Describe: they are left out of an
/// all-topics answer, and reported as TOPIC_AUTHORIZATION_FAILED when asked for by name.
fn hide_topics(
    shared: &Shared,
    response: &mut MetadataResponse,
    all_topics: bool,
    client: &ClientIdentity,
    mut draft: Option<&mut Draft>,
) -> bool {
    use streamward_api::acl::{Operation, ResourceType};
    let state = shared.state.load();
    let policy = state.policy(
        client,
        &shared.metrics,
        Timestamp::now(),
        draft.is_some(),
    );
    let mut describable = |name: &str| -> bool {
        let verdict = policy.check(ResourceType::Topic, name, Operation::Describe);
        if !verdict.allowed
            && let Some(draft) = draft.as_deref_mut()
        {
            draft.hidden(name, verdict.rule, verdict.message);
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
        topic.error_code = ResponseError::TopicAuthorizationFailed.code();
        topic.partitions.clear();
        topic.topic_id = uuid::Uuid::nil();
        topic.is_internal = false;
        changed = true;
        true
    });
    changed || response.topics.len() != before
}

/// With no config there is no broker to talk to: answer what a client needs to hear that it is
/// refused, and close the connection on anything else.
async fn serve_without_config(
    shared: &Shared,
    client: TcpStream,
    peer: SocketAddr,
    reason: &str,
) -> Result<(), SessionError> {
    tracing::warn!(%reason, "client connected while no config is loaded: refusing its requests");
    let mut framed =
        tokio_util::codec::Framed::new(client, frame::codec(shared.settings.max_request_bytes));
    let mut client = Client::new(shared, peer);
    while let Some(frame) = framed.next().await {
        let frame = frame.map_err(SessionError::Client)?.freeze();
        let (_, expect, draft) = handle_request(shared, &mut client, frame.clone())?;
        let response = match expect {
            Some(Pending::Local(bytes)) => bytes,
            None => {
                if let Some(draft) = draft {
                    draft.finish();
                }
                continue;
            }
            Some(Pending::Close { last, reason }) => {
                if let Some(last) = last {
                    framed.send(last).await.map_err(SessionError::Client)?;
                }
                if let Some(draft) = draft {
                    draft.finish();
                }
                return Err(SessionError::ClientAuth(reason));
            }
            Some(Pending::Broker { start, .. }) => match ApiKey::try_from(start.api_key) {
                Ok(ApiKey::ApiVersions) => {
                    let mut versions = own_api_versions();
                    if shared.settings.client_auth.is_some() {
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
                _ => return Ok(()),
            },
        };
        framed.send(response).await.map_err(SessionError::Client)?;
        if let Some(draft) = draft {
            draft.finish();
        }
    }
    Ok(())
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

/// A response the proxy makes itself, queued in order with the broker's.
fn local(start: RequestStart, response: ResponseKind) -> Result<Pending, SessionError> {
    encode_local(start, response).map(Pending::Local)
}

/// Encodes a response the proxy makes itself.
fn encode_local(start: RequestStart, response: ResponseKind) -> Result<Bytes, SessionError> {
    let api_key = ApiKey::try_from(start.api_key)
        .map_err(|_| SessionError::Malformed(format!("API key {}", start.api_key)))?;
    let mut out = BytesMut::new();
    ResponseHeader::default()
        .with_correlation_id(start.correlation_id)
        .encode(&mut out, api_key.response_header_version(start.api_version))
        .and_then(|()| response.encode(&mut out, start.api_version))
        .map_err(|e| {
            SessionError::Malformed(format!(
                "encoding the proxy's {api_key:?} v{} answer: {e}",
                start.api_version
            ))
        })?;
    Ok(out.freeze())
}

struct SharedTopicIds<'a>(&'a Shared);

impl TopicNames for SharedTopicIds<'_> {
    fn name_of(&self, id: &uuid::Uuid) -> Option<kafka_protocol::messages::TopicName> {
        self.0.topic_ids.name_of(id)
    }
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

//! One client connection: read a request, carry out what [`crate::request::decide`] says, and
//! send the responses back in the order the requests came — pipelined clients rely on that
//! order. Nothing here decides anything about a request; this is the connection's I/O.
//!
//! Two halves run side by side. The request half reads client frames and carries out each
//! request's [`Action`]: it writes a forwarded request to the broker (queueing what to do with
//! its answer) or queues the proxy's own answer. The response half takes the queue in order: a
//! local answer is written as is; for a forwarded request it reads the broker's next response,
//! has [`crate::response::fix`] change what the client may not see, and writes it. The queue is
//! bounded, so a client that pipelines faster than the broker answers is slowed, not buffered.
//! Each request's audit event rides along and is finished once the request is done.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use jiff::Timestamp;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};
use tracing::Instrument;

use streamward_api::audit::{Approval as AuditedApproval, ApprovalStep};

use crate::approval::Ticket;
use crate::approval::held::Resolution;
use crate::audit::session::Draft;
use crate::brokers::ListenerFactory;
use crate::frame::{self, FrameWriter};
use crate::request::{self, Action, Client, Close, Context, Hold, Request};
use crate::response::{self, ResponseFix};
use crate::shared::{Shared, Upstream};
use crate::source::State;

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

/// What the response half does next, in request order.
enum Reply {
    /// Write an answer made by the proxy.
    Local(Bytes),
    /// Read the broker's answer to a forwarded request, fix it, and write it.
    Broker(ResponseFix),
    /// Write the last answer, if any, and end the session.
    Close { last: Option<Bytes>, reason: String },
}

/// A request waiting for the response half: its reply and its audit event.
struct Pending {
    reply: Reply,
    event: Option<Draft>,
}

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
        Client::new(&shared.settings, peer),
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
    queue: mpsc::Sender<Pending>,
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
        let mut request = decide(shared, &mut client, frame.freeze(), true, None);
        if let Action::Hold(hold) = request.action {
            request = hold_for_approval(shared, &mut client, hold, request.event).await;
        }
        let Request { action, mut event } = request;
        let (reply, to_send) = match action {
            Action::Forward {
                request,
                response: Some(response),
            } => (Reply::Broker(response), Some(request)),
            // No answer is due (Produce with acks=0): the request is done once it is sent.
            Action::Forward {
                request,
                response: None,
            } => {
                to_broker
                    .send(request)
                    .await
                    .map_err(SessionError::Broker)?;
                finish(event);
                continue;
            }
            Action::Answer(Some(answer)) => (Reply::Local(answer), None),
            Action::Answer(None) => {
                finish(event);
                continue;
            }
            // Decided again with its resolution, a request is never held twice.
            Action::Hold(_) => return Ok(()),
            Action::Close(Close::Unauthenticated { last, reason }) => {
                // Read no more; the response half answers what is queued, then ends the session.
                let _ = queue
                    .send(Pending {
                        reply: Reply::Close { last, reason },
                        event,
                    })
                    .await;
                return Ok(());
            }
            Action::Close(Close::Malformed(reason)) => {
                finish(event);
                return Err(SessionError::Malformed(reason));
            }
            // Only without a broker; here there is one.
            Action::Close(Close::NoBroker) => return Ok(()),
        };
        if let Some(request) = to_send {
            to_broker
                .send(request)
                .await
                .map_err(SessionError::Broker)?;
        }
        // A Produce's records are hashed while the broker writes them, not before it gets them.
        if let Some(event) = &mut event {
            event.read_payload();
        }
        if queue.send(Pending { reply, event }).await.is_err() {
            return Ok(()); // the response half has ended and says why
        }
    }
}

/// Decides one request against the config in force now; `resolution` when deciding a held
/// request again.
fn decide(
    shared: &Shared,
    client: &mut Client,
    frame: Bytes,
    broker: bool,
    resolution: Option<&Resolution>,
) -> Request {
    let state = shared.state.load();
    let context = Context {
        state: &state,
        metrics: &shared.metrics,
        topics: &shared.topic_ids,
        broker,
        now: Timestamp::now(),
        clock: Instant::now(),
        resolution,
    };
    request::decide(&context, client, frame)
}

/// Holds a request for its approval: asks for it (its first audit event, `Requested`, names
/// the ApprovalRequest), waits, and decides the frame again with what the hold came to. The
/// connection reads nothing meanwhile (see [`crate::approval`] on ordering).
async fn hold_for_approval(
    shared: &Shared,
    client: &mut Client,
    hold: Hold,
    event: Option<Draft>,
) -> Request {
    let state = shared.state.load_full();
    let ticket = match &*state {
        State::Ready(loaded) => {
            let approvals = &shared.approvals;
            approvals
                .ask(
                    &hold.asked,
                    &loaded.config,
                    client.identity(),
                    &shared.metrics,
                )
                .await
        }
        State::FailClosed { reason, .. } => Ticket::Decided(Resolution::failed(reason.clone())),
    };
    drop(state);
    if let Some(mut event) = event {
        event.approval(AuditedApproval {
            request: ticket.request().unwrap_or_default(),
            step: ApprovalStep::Requested,
            approvers: Vec::new(),
            comment: None,
        });
        event.finish();
    }
    let resolution = shared
        .approvals
        .wait(ticket, &hold.asked, &shared.shutdown)
        .await;
    shared.metrics.approval(resolution.audited().step);
    decide(shared, client, hold.request, true, Some(&resolution))
}

/// The request is done: its audit event, if any, is emitted.
fn finish(event: Option<Draft>) {
    if let Some(event) = event {
        event.finish();
    }
}

async fn return_responses<R, W>(
    shared: &Shared,
    listeners: &dyn ListenerFactory,
    mut pending: mpsc::Receiver<Pending>,
    mut responses: FramedRead<R, LengthDelimitedCodec>,
    mut to_client: FrameWriter<W>,
) -> Result<(), SessionError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    while let Some(Pending { reply, mut event }) = pending.recv().await {
        let out = match reply {
            Reply::Local(bytes) => bytes,
            Reply::Close { last, reason } => {
                if let Some(last) = last {
                    to_client.send(last).await.map_err(SessionError::Client)?;
                }
                finish(event);
                return Err(SessionError::ClientAuth(reason));
            }
            Reply::Broker(fix) => {
                let start = fix.start;
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
                response::fix(shared, listeners, fix, frame, event.as_mut())
                    .map_err(|e| SessionError::Response(e.0))?
            }
        };
        to_client.send(out).await.map_err(SessionError::Client)?;
        finish(event);
    }
    Ok(())
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
    let mut client = Client::new(&shared.settings, peer);
    while let Some(frame) = framed.next().await {
        let frame = frame.map_err(SessionError::Client)?.freeze();
        let Request { action, event } = decide(shared, &mut client, frame, false, None);
        let answer = match action {
            Action::Answer(answer) => answer,
            // Only a loaded config holds requests, and here none is.
            Action::Hold(_) => return Ok(()),
            Action::Close(Close::Unauthenticated { last, reason }) => {
                if let Some(last) = last {
                    framed.send(last).await.map_err(SessionError::Client)?;
                }
                finish(event);
                return Err(SessionError::ClientAuth(reason));
            }
            Action::Close(Close::Malformed(reason)) => {
                finish(event);
                return Err(SessionError::Malformed(reason));
            }
            // The request's event is emitted unfinished: the session ended before an answer.
            Action::Close(Close::NoBroker) => return Ok(()),
            // Without a broker, `request::decide` answers or closes instead.
            Action::Forward { .. } => return Ok(()),
        };
        if let Some(answer) = answer {
            framed.send(answer).await.map_err(SessionError::Client)?;
        }
        finish(event);
    }
    Ok(())
}

//! Ingest: `POST /v1/events` takes a batch, and the writer appends it durably before the
//! collector answers 200.
//!
//! The writer is one thread that owns the [`Store`]. It takes every batch waiting at that
//! moment, appends them with one write and one fdatasync (group commit), and answers each
//! sender. Checkpoints and retention run on the same thread between groups, so nothing else
//! ever touches the files being written.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use streamward_api::audit::{
    AuditEvent, BATCH_CONTENT_TYPE, DROPPED_EVENT, EventData, REQUEST_EVENT, SPEC_VERSION,
};
use tokio::sync::{mpsc, oneshot};

use crate::auth::AuthError;
use crate::metrics::Refusal;
use crate::server::App;
use crate::store::{self, Appended, Prepared, Retention, Store};

/// The largest batch body the collector reads.
pub const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;
const MAX_ID_LEN: usize = 512;
/// Batches taken into one write and fdatasync at most.
const MAX_GROUP: usize = 256;

/// A batch on its way to the writer.
pub struct Job {
    events: Vec<Arc<AuditEvent>>,
    prepared: Vec<Prepared>,
    reply: oneshot::Sender<Result<Appended, String>>,
}

/// What the writer tells its listeners (alerts).
#[derive(Clone, Debug)]
pub enum Notice {
    /// An event was durably stored.
    Stored(Arc<AuditEvent>),
    /// An event was refused: its identity had stored its id with other content.
    Conflict(Arc<Conflicting>),
}

/// An event refused as a rewrite of a stored one.
#[derive(Clone, Debug)]
pub struct Conflicting {
    /// The identity (`<namespace>/<serviceaccount>`) both came under.
    pub identity: String,
    /// The refused event.
    pub event: AuditEvent,
    /// SHA-256 (hex) of the stored event with the same id.
    pub stored_sha256: String,
    /// SHA-256 (hex) of the refused one.
    pub refused_sha256: String,
}

/// What the writer does besides appending.
pub struct WriterSettings {
    /// How often a checkpoint of the open segment is signed (when records arrived).
    pub checkpoint_every: Duration,
    /// What retention keeps.
    pub retention: Retention,
    /// Who hears about newly stored and refused events (alerts). A full queue loses the
    /// notification, never the event: the store has it.
    pub listeners: Vec<mpsc::Sender<Notice>>,
}

/// Runs the writer on the current thread until every sender of `jobs` is gone, then writes a
/// last checkpoint.
pub fn run_writer(
    mut store: Store,
    mut jobs: mpsc::Receiver<Job>,
    settings: WriterSettings,
    runtime: tokio::runtime::Handle,
) {
    let tick = settings.checkpoint_every.min(Duration::from_secs(1));
    let mut last_checkpoint = Instant::now();
    let mut last_retention = Instant::now();
    let mut sealed = store.sealed_segments();
    let mut open = true;
    while open {
        let mut group = Vec::new();
        match runtime.block_on(async { tokio::time::timeout(tick, jobs.recv()).await }) {
            Ok(Some(job)) => group.push(job),
            Ok(None) => open = false,
            Err(_) => {}
        }
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        if !group.is_empty() {
            append(&mut store, group, &settings.listeners);
        }
        if !open {
            // The last checkpoint of the run says the collector stopped cleanly.
            if let Err(error) = store.stop() {
                tracing::error!(
                    error = format!("{error:#}"),
                    "writing the last checkpoint failed"
                );
            }
            // Nothing may follow it, not even a retention note.
            break;
        } else if last_checkpoint.elapsed() >= settings.checkpoint_every {
            if let Err(error) = store.checkpoint() {
                tracing::error!(error = format!("{error:#}"), "writing a checkpoint failed");
            }
            last_checkpoint = Instant::now();
        }
        // Retention looks again every 10 s, and at once when a segment was sealed.
        if last_retention.elapsed() >= Duration::from_secs(10) || store.sealed_segments() > sealed {
            match store.apply_retention(settings.retention) {
                Ok(removed) if !removed.is_empty() => {
                    tracing::info!(?removed, "retention removed the oldest segments");
                }
                Ok(_) => {}
                Err(error) => tracing::error!(error = format!("{error:#}"), "retention failed"),
            }
            last_retention = Instant::now();
            sealed = store.sealed_segments();
        }
    }
    tracing::info!("the writer stopped after a last checkpoint");
}

fn append(store: &mut Store, group: Vec<Job>, listeners: &[mpsc::Sender<Notice>]) {
    let mut batches = Vec::with_capacity(group.len());
    let mut rest = Vec::with_capacity(group.len());
    for job in group {
        batches.push(job.prepared);
        rest.push((job.events, job.reply));
    }
    let tell = |notice: Notice| {
        for listener in listeners {
            let _ = listener.try_send(notice.clone());
        }
    };
    match store.append(&batches) {
        Ok(results) => {
            for (((events, reply), result), batch) in rest.into_iter().zip(results).zip(&batches) {
                for position in &result.stored {
                    if let Some(event) = events.get(*position) {
                        tell(Notice::Stored(event.clone()));
                    }
                }
                for conflict in &result.conflicts {
                    if let (Some(event), Some(prepared)) =
                        (events.get(conflict.position), batch.get(conflict.position))
                    {
                        tracing::error!(
                            identity = %prepared.identity,
                            event = %prepared.id,
                            stored = %conflict.stored_sha256,
                            refused = %conflict.refused_sha256,
                            "refused an event whose id was stored before with other content"
                        );
                        tell(Notice::Conflict(Arc::new(Conflicting {
                            identity: prepared.identity.clone(),
                            event: (**event).clone(),
                            stored_sha256: conflict.stored_sha256.clone(),
                            refused_sha256: conflict.refused_sha256.clone(),
                        })));
                    }
                }
                let _ = reply.send(Ok(result));
            }
        }
        Err(error) => {
            let message = format!("{error:#}");
            tracing::error!(error = %message, "appending to the store failed");
            for (_, reply) in rest {
                let _ = reply.send(Err(message.clone()));
            }
        }
    }
}

fn refuse(app: &App, status: StatusCode, reason: Refusal, message: String) -> Response {
    app.metrics.refused(reason);
    tracing::warn!(status = status.as_u16(), %message, "refused a batch");
    (status, axum::Json(json!({ "error": message }))).into_response()
}

/// Checks what the contract requires of each event; the message names the first bad one.
pub fn validate(events: &[AuditEvent]) -> Result<(), String> {
    for (position, event) in events.iter().enumerate() {
        let bad = |why: String| Err(format!("event {position} ({:?}): {why}", event.id));
        if event.specversion != SPEC_VERSION {
            return bad(format!("specversion must be {SPEC_VERSION}"));
        }
        if event.id.is_empty() || event.id.len() > MAX_ID_LEN {
            return bad(format!("the id must have 1 to {MAX_ID_LEN} characters"));
        }
        match (&event.data, event.kind.as_str()) {
            (EventData::Request(record), REQUEST_EVENT) => {
                let id = format!("{}:{}", record.session_id, record.sequence);
                if event.id != id {
                    return bad(format!(
                        "the id of a request event is <sessionId>:<sequence> ({id})"
                    ));
                }
            }
            (EventData::Dropped(_), DROPPED_EVENT) => {}
            (_, kind) => {
                return bad(format!(
                    "type {kind:?} does not fit its data (expected {REQUEST_EVENT} or \
                     {DROPPED_EVENT})"
                ));
            }
        }
    }
    Ok(())
}

/// `POST /v1/events`.
pub async fn ingest(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let caller = match app.auth.authenticate(authorization).await {
        Ok(caller) => caller,
        Err(AuthError::Unavailable(why)) => {
            return refuse(&app, StatusCode::SERVICE_UNAVAILABLE, Refusal::Store, why);
        }
        Err(error) => {
            return refuse(
                &app,
                StatusCode::UNAUTHORIZED,
                Refusal::Unauthenticated,
                error.to_string(),
            );
        }
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let media = content_type.split(';').next().unwrap_or_default().trim();
    if !media.eq_ignore_ascii_case(BATCH_CONTENT_TYPE)
        && !media.eq_ignore_ascii_case("application/json")
    {
        return refuse(
            &app,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Refusal::Invalid,
            format!("send Content-Type: {BATCH_CONTENT_TYPE}, not {content_type:?}"),
        );
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let too_large = || format!("a batch may have at most {MAX_BATCH_BYTES} bytes");
    if declared.is_some_and(|n| n > MAX_BATCH_BYTES) {
        return refuse(
            &app,
            StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::TooLarge,
            too_large(),
        );
    }
    let bytes = match axum::body::to_bytes(body, MAX_BATCH_BYTES).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return refuse(
                &app,
                StatusCode::PAYLOAD_TOO_LARGE,
                Refusal::TooLarge,
                too_large(),
            );
        }
    };
    let events: Vec<AuditEvent> = match serde_json::from_slice(&bytes) {
        Ok(events) => events,
        Err(error) => {
            return refuse(
                &app,
                StatusCode::BAD_REQUEST,
                Refusal::Invalid,
                format!("the body is not a JSON array of CloudEvents audit events: {error}"),
            );
        }
    };
    if let Err(why) = validate(&events) {
        return refuse(&app, StatusCode::BAD_REQUEST, Refusal::Invalid, why);
    }
    if let Some(why) = caller.refuses(&events) {
        return refuse(&app, StatusCode::FORBIDDEN, Refusal::Forbidden, why);
    }
    let mut prepared = Vec::with_capacity(events.len());
    for event in &events {
        let identity = match &event.data {
            EventData::Request(record) => &record.identity,
            EventData::Dropped(dropped) => &dropped.identity,
        };
        match serde_json::to_string(event) {
            Ok(json) => prepared.push(Prepared::new(
                store::identity_key(&identity.namespace, &identity.service_account),
                event.id.clone(),
                json,
            )),
            Err(error) => {
                return refuse(
                    &app,
                    StatusCode::BAD_REQUEST,
                    Refusal::Invalid,
                    format!("event {:?} cannot be stored: {error}", event.id),
                );
            }
        }
    }
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    let (reply, answer) = oneshot::channel();
    let job = Job {
        events: events.into_iter().map(Arc::new).collect(),
        prepared,
        reply,
    };
    if app.writer.send(job).await.is_err() {
        return refuse(
            &app,
            StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Store,
            "the collector is shutting down".into(),
        );
    }
    match answer.await {
        Ok(Ok(result)) if !result.conflicts.is_empty() => {
            app.metrics.stored(result.accepted, result.duplicates);
            app.metrics.conflicting(result.conflicts.len());
            let conflicts: Vec<&str> = result
                .conflicts
                .iter()
                .filter_map(|c| ids.get(c.position).map(String::as_str))
                .collect();
            let message = format!(
                "events {conflicts:?} were stored before with other content: an id names one \
                 event of its workload for good, so the new content was refused (the other \
                 events of the batch were stored; resending identical events is harmless)"
            );
            app.metrics.refused(Refusal::Conflict);
            tracing::warn!(status = 409, %message, "refused rewritten events");
            let body = json!({
                "error": message,
                "accepted": result.accepted,
                "duplicates": result.duplicates,
                "conflicts": conflicts,
            });
            (StatusCode::CONFLICT, axum::Json(body)).into_response()
        }
        Ok(Ok(result)) => {
            app.metrics.stored(result.accepted, result.duplicates);
            (StatusCode::OK, axum::Json(result)).into_response()
        }
        Ok(Err(error)) => refuse(
            &app,
            StatusCode::INTERNAL_SERVER_ERROR,
            Refusal::Store,
            format!("the batch was not stored: {error}"),
        ),
        Err(_) => refuse(
            &app,
            StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Store,
            "the writer stopped".into(),
        ),
    }
}

/// Creates the queue between the handlers and the writer.
pub fn queue() -> (mpsc::Sender<Job>, mpsc::Receiver<Job>) {
    mpsc::channel(1024)
}

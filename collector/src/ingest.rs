//! Ingest: `POST /v1/events` takes a batch from a proxy, and the collector answers 200 only
//! once the [`writer`](crate::writer) has appended it durably.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use streamward_api::audit::{
    AuditEvent, BATCH_CONTENT_TYPE, DROPPED_EVENT, EventData, REQUEST_EVENT, SPEC_VERSION,
};

use crate::auth::AuthError;
use crate::http_error::ApiError;
use crate::metrics::Refusal;
use crate::state::App;
use crate::store::{self, Prepared};

/// The largest batch body the collector reads.
pub const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;
const MAX_ID_LEN: usize = 512;

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

/// `POST /v1/events`. Every refusal is counted by its reason and logged.
pub async fn ingest(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    match accept(&app, &headers, body).await {
        Ok(response) => response,
        Err(error) => {
            app.metrics.refused(error.refusal());
            tracing::warn!(status = error.status().as_u16(), message = %error, "refused a batch");
            error.into_response()
        }
    }
}

async fn accept(app: &App, headers: &HeaderMap, body: Body) -> Result<Response, ApiError> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let caller = app
        .auth
        .authenticate(authorization)
        .await
        .map_err(|error| match error {
            AuthError::Unavailable(why) => ApiError::Unavailable(why),
            error => ApiError::Unauthorized(error.to_string()),
        })?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let media = content_type.split(';').next().unwrap_or_default().trim();
    if !media.eq_ignore_ascii_case(BATCH_CONTENT_TYPE)
        && !media.eq_ignore_ascii_case("application/json")
    {
        return Err(ApiError::UnsupportedMediaType(format!(
            "send Content-Type: {BATCH_CONTENT_TYPE}, not {content_type:?}"
        )));
    }
    let too_large =
        || ApiError::PayloadTooLarge(format!("a batch may have at most {MAX_BATCH_BYTES} bytes"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BATCH_BYTES) {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(body, MAX_BATCH_BYTES)
        .await
        .map_err(|_| too_large())?;
    let events: Vec<AuditEvent> = serde_json::from_slice(&bytes).map_err(|error| {
        ApiError::BadRequest(format!(
            "the body is not a JSON array of CloudEvents audit events: {error}"
        ))
    })?;
    validate(&events).map_err(ApiError::BadRequest)?;
    if let Some(why) = caller.refuses(&events) {
        return Err(ApiError::Forbidden(why));
    }
    let mut prepared = Vec::with_capacity(events.len());
    for event in &events {
        let json = serde_json::to_string(event).map_err(|error| {
            ApiError::BadRequest(format!("event {:?} cannot be stored: {error}", event.id))
        })?;
        prepared.push(Prepared::new(
            store::event_identity(event),
            event.id.clone(),
            json,
        ));
    }
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    let result = app
        .append(events.into_iter().map(Arc::new).collect(), prepared)
        .await?;
    app.metrics.stored(result.accepted, result.duplicates);
    if result.conflicts.is_empty() {
        return Ok((StatusCode::OK, axum::Json(result)).into_response());
    }
    // Part of the batch is stored: the answer says which part was refused, so it is built
    // here rather than as an ApiError.
    app.metrics.conflicting(result.conflicts.len());
    let conflicts: Vec<&str> = result
        .conflicts
        .iter()
        .filter_map(|c| ids.get(c.position).map(String::as_str))
        .collect();
    let message = format!(
        "events {conflicts:?} were stored before with other content: an id names one event of \
         its workload for good, so the new content was refused (the other events of the batch \
         were stored; resending identical events is harmless)"
    );
    app.metrics.refused(Refusal::Conflict);
    tracing::warn!(status = 409, %message, "refused rewritten events");
    let body = json!({
        "error": message,
        "accepted": result.accepted,
        "duplicates": result.duplicates,
        "conflicts": conflicts,
    });
    Ok((StatusCode::CONFLICT, axum::Json(body)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamward_api::audit::{QueryRecord, Reader};

    #[test]
    fn a_proxy_cannot_send_a_record_of_a_query() {
        let forged = AuditEvent::query(
            "query:1:1".into(),
            jiff::Timestamp::UNIX_EPOCH,
            QueryRecord {
                reader: Reader {
                    user: "someone-else".into(),
                    ..Reader::default()
                },
                path: "/v1/events".into(),
                status: 200,
                ..QueryRecord::default()
            },
        );
        let refused = validate(&[forged]).unwrap_err();
        assert!(
            refused.contains("io.streamward.audit.query.v1"),
            "{refused}"
        );
    }
}

//! The query API: `GET /v1/events`, `/v1/sessions`, `/v1/sessions/{id}/timeline`,
//! `/v1/aggregate` and `/v1/verify`, for readers the [`access`](crate::access) lets in. Every query is recorded
//! in the trail (who, what, how many results) before it is answered, and so is every reader
//! RBAC refuses.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use streamward_api::audit::{AuditEvent, INGEST_PATH, QueryRecord, Reader};

use crate::access::{Refused, Scope};
use crate::aggregate::{Aggregation, Dimension};
use crate::http_error::ApiError;
use crate::query::{self, Filter, Format};
use crate::sessions::{self, Sessions};
use crate::state::App;
use crate::store::{self, Prepared};
use crate::timeline::{self, TimelineError};
use crate::verify;

/// Where a reader may put `Bearer <token>` when `Authorization` cannot reach the collector
/// (through `kubectl`'s service proxy).
pub const READER_AUTHORIZATION: &str = "x-streamward-authorization";

const DEFAULT_LIMIT: usize = 1_000;
const MAX_LIMIT: usize = 100_000;

/// The decoded query string.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(raw: Option<String>) -> Params {
        let raw = raw.unwrap_or_default();
        Params(
            form_urlencoded::parse(raw.as_bytes())
                .into_owned()
                .collect(),
        )
    }

    fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The filter of every parameter except `skip`.
    fn filter(&self, skip: &[&str]) -> Result<Filter, ApiError> {
        Filter::from_params(self.pairs().filter(|(k, _)| !skip.contains(k)))
            .map_err(ApiError::bad_request)
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.pairs().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    fn limit(&self) -> Result<usize, ApiError> {
        match self.get("limit") {
            None => Ok(DEFAULT_LIMIT),
            Some(value) => match value.parse::<usize>() {
                Ok(n) if n <= MAX_LIMIT => Ok(n),
                _ => Err(ApiError::BadRequest(format!(
                    "limit is a number up to {MAX_LIMIT}"
                ))),
            },
        }
    }
}

/// One query on its way: what was asked, by whom, recorded in the trail before it is answered.
struct Asked {
    path: String,
    params: Params,
    reader: Reader,
}

/// Lets in the caller of `headers` to read what `filter` selects, or refuses them. A reader
/// RBAC refuses is recorded in the trail.
async fn admit(
    app: &App,
    headers: &HeaderMap,
    path: String,
    params: Params,
    filter: &Filter,
) -> Result<Asked, ApiError> {
    // The API server's service proxy strips `Authorization` (it is the API server's own
    // credential), so a reader coming through it shows the token in our own header instead.
    let authorization = headers
        .get(header::AUTHORIZATION)
        .or_else(|| headers.get(READER_AUTHORIZATION))
        .and_then(|v| v.to_str().ok());
    let scope = match &filter.namespace {
        Some(namespace) => Scope::Namespace(namespace.clone()),
        None => Scope::Cluster,
    };
    match app.access.admit(authorization, &scope).await {
        Ok(reader) => Ok(Asked {
            path,
            params,
            reader,
        }),
        Err(Refused::Forbidden { reader, message }) => {
            let asked = Asked {
                path,
                params,
                reader: *reader,
            };
            tracing::warn!(user = %asked.reader.user, path = %asked.path, %message, "refused a query");
            record(app, asked, 403, None, Some(message.clone())).await?;
            Err(ApiError::Forbidden(message))
        }
        Err(Refused::Unauthenticated(message)) => Err(ApiError::Unauthorized(message)),
        Err(Refused::Off(message)) => Err(ApiError::Forbidden(message)),
        Err(Refused::Unavailable(message)) => Err(ApiError::Unavailable(message)),
    }
}

/// Stores the query event of `asked` durably. An answer whose query could not be recorded is
/// not sent.
async fn record(
    app: &App,
    asked: Asked,
    status: u16,
    results: Option<u64>,
    reason: Option<String>,
) -> Result<(), ApiError> {
    let id = app.next_query_id();
    let event = AuditEvent::query(
        id.clone(),
        jiff::Timestamp::now(),
        QueryRecord {
            reader: asked.reader,
            path: asked.path,
            parameters: asked.params.0.into_iter().collect(),
            status,
            results,
            reason,
        },
    );
    let json = serde_json::to_string(&event).map_err(ApiError::internal)?;
    let prepared = Prepared::new(store::QUERIES_IDENTITY.to_string(), id, json);
    app.append(vec![Arc::new(event)], vec![prepared])
        .await
        .map_err(|error| {
            ApiError::Unavailable(format!(
                "the query was not answered because it could not be recorded in the audit \
                 trail: {error}"
            ))
        })?;
    Ok(())
}

/// `GET /v1/sessions?quietAfter=15m&namespace=…&limit=N`: the proxy sessions of the events
/// that match, with missing sequence numbers and whether each went quiet, most recently seen
/// first.
pub async fn sessions(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(raw);
    let filter = params.filter(&["quietAfter"])?;
    let quiet_after = match params.get("quietAfter") {
        Some(value) => sessions::parse_duration(value).map_err(ApiError::bad_request)?,
        None => sessions::DEFAULT_QUIET_AFTER,
    };
    let limit = params.limit()?;
    let asked = admit(&app, &headers, "/v1/sessions".into(), params, &filter).await?;
    let data = app.data.clone();
    let (body, count) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let mut sessions = Sessions::default();
        query::scan(&data, &filter, None, |event| {
            sessions.add_event(event);
            Ok(())
        })?;
        // Counted from the first sequence number seen: the query may not reach back to the
        // session's start (`verify` counts from 1 when the store holds its first record).
        let mut all = sessions.finish(false, jiff::Timestamp::now(), quiet_after);
        all.sort_by_key(|s| std::cmp::Reverse(s.last_seen));
        let total = all.len();
        all.truncate(limit);
        let count = all.len() as u64;
        let body = json!({
            "quietAfterSeconds": quiet_after.as_secs(),
            "total": total,
            "sessions": all,
        });
        Ok((body, count))
    })
    .await?
    .map_err(ApiError::internal)?;
    record(&app, asked, 200, Some(count), None).await?;
    Ok(axum::Json(body).into_response())
}

/// `GET /v1/events?since=…&namespace=…&format=ndjson|csv|table&limit=N`.
pub async fn events(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(raw);
    let filter = params.filter(&[])?;
    let format: Format = match params.get("format") {
        Some(value) => value.parse().map_err(ApiError::bad_request)?,
        None => Format::Ndjson,
    };
    let limit = params.limit()?;
    let asked = admit(&app, &headers, INGEST_PATH.into(), params, &filter).await?;
    let data = app.data.clone();
    let (body, count) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let mut writer = query::Writer::new(Vec::new(), format);
        let count = query::scan(&data, &filter, Some(limit), |event| writer.write(event))?;
        Ok((writer.finish()?, count as u64))
    })
    .await?
    .map_err(ApiError::internal)?;
    record(&app, asked, 200, Some(count), None).await?;
    Ok(([(header::CONTENT_TYPE, format.content_type())], body).into_response())
}

/// `GET /v1/sessions/{session}/timeline[?namespace=…&serviceAccount=…]`: every request of one
/// client session in order (see [`timeline::Timeline`]).
pub async fn timeline(
    State(app): State<Arc<App>>,
    Path(session): Path<String>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(raw);
    let mut filter = Filter::default();
    for (name, value) in params.pairs() {
        match name {
            "namespace" => filter.namespace = Some(value.to_string()),
            "serviceAccount" => filter.service_account = Some(value.to_string()),
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown parameter {other:?}: a timeline takes namespace and serviceAccount"
                )));
            }
        }
    }
    filter.session = Some(session.clone());
    let path = format!("/v1/sessions/{session}/timeline");
    let asked = admit(&app, &headers, path, params, &filter).await?;
    let data = app.data.clone();
    let found = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let mut events = Vec::new();
        query::scan(&data, &filter, None, |event| {
            events.push(event.clone());
            Ok(())
        })?;
        Ok(timeline::build(&session, events))
    })
    .await?
    .map_err(ApiError::internal)?;
    let count = found.as_ref().map_or(0, |t| t.events as u64);
    let status = match &found {
        Ok(_) => 200,
        Err(TimelineError::NotFound(_)) => 404,
        Err(TimelineError::Ambiguous { .. }) => 409,
    };
    record(&app, asked, status, Some(count), None).await?;
    match found {
        Ok(timeline) => Ok(axum::Json(timeline).into_response()),
        Err(error @ TimelineError::NotFound(_)) => Err(ApiError::NotFound(error.to_string())),
        Err(error @ TimelineError::Ambiguous { .. }) => Err(ApiError::Conflict(error.to_string())),
    }
}

/// `GET /v1/aggregate?by=decision|identity|namespace|user|topic|api|rule|hour|day[,…]&<filter>`:
/// counts of the matching events per group (see [`aggregate::Aggregation`]).
pub async fn aggregate(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(raw);
    let filter = params.filter(&["by"])?;
    let by = params.get("by").ok_or_else(|| {
        ApiError::BadRequest("say what to group by: by=decision, by=hour, …".into())
    })?;
    let by = Dimension::parse_list(by).map_err(ApiError::bad_request)?;
    let limit = params.limit()?;
    let asked = admit(&app, &headers, "/v1/aggregate".into(), params, &filter).await?;
    let data = app.data.clone();
    let (body, count) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let mut aggregation = Aggregation::new(by);
        query::scan(&data, &filter, None, |event| {
            aggregation.add(event);
            Ok(())
        })?;
        let body = aggregation.finish(limit);
        let count = body["groups"].as_array().map_or(0, |g| g.len() as u64);
        Ok((body, count))
    })
    .await?
    .map_err(ApiError::internal)?;
    record(&app, asked, 200, Some(count), None).await?;
    Ok(axum::Json(body).into_response())
}

/// `GET /v1/verify[?quietAfter=15m]`: the chain verification of the store (see
/// [`verify::verify`]) as it stood at the moment of the call, with every checkpoint read and
/// whether its signature is the collector key's. The writer keeps appending meanwhile: the
/// files are cut between two of its writes and only what they held then is read.
pub async fn verify(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(raw);
    let mut quiet_after = sessions::DEFAULT_QUIET_AFTER;
    for (name, value) in params.pairs() {
        match name {
            "quietAfter" => {
                quiet_after = sessions::parse_duration(value).map_err(ApiError::bad_request)?;
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown parameter {other:?}: verify takes quietAfter"
                )));
            }
        }
    }
    // The whole store: a cluster-wide read.
    let asked = admit(
        &app,
        &headers,
        "/v1/verify".into(),
        params,
        &Filter::default(),
    )
    .await?;
    let data = app.data.clone();
    let key = app.public_key.clone();
    let files = app.files.clone();
    let (body, problems) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let cut = {
            let _files = files.hold();
            verify::Cut::take(&data)?
        };
        let mut report = verify::verify_cut(&data, &key, quiet_after, &cut)?;
        report.trust("the collector's signing key".into(), false, None);
        let checkpoints: Vec<serde_json::Value> =
            store::read_checkpoints_upto(&data, Some(cut.checkpoints))?
                .into_iter()
                .map(|line| match line.checkpoint {
                    Ok(c) => json!({
                        "line": line.number,
                        "seq": c.seq,
                        "segment": c.segment,
                        "firstIndex": c.first_index,
                        "lastIndex": c.last_index,
                        "sealed": c.sealed,
                        "removed": c.removed,
                        "stopped": c.stopped,
                        "time": c.time,
                        "signature": if c.is_signed_by(&key) { "valid" } else { "invalid" },
                    }),
                    Err(error) => json!({
                        "line": line.number,
                        "signature": "unreadable",
                        "error": error,
                    }),
                })
                .collect();
        let problems = report.problems.len() as u64;
        let mut body = serde_json::to_value(&report)?;
        body["checkpointLines"] = json!(checkpoints);
        body["cut"] = json!({
            "segments": cut.segments.iter().map(|(path, length)| json!({
                "segment": path.file_name().map(|n| n.to_string_lossy().into_owned()),
                "bytes": length,
            })).collect::<Vec<_>>(),
            "checkpointBytes": cut.checkpoints,
        });
        Ok((body, problems))
    })
    .await?
    .map_err(ApiError::internal)?;
    record(&app, asked, 200, Some(problems), None).await?;
    Ok(axum::Json(body).into_response())
}

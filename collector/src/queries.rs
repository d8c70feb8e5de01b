//! The query API: `GET /v1/events` and `GET /v1/sessions`, for callers the query access lets
//! in.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::bearer;
use crate::http_error::ApiError;
use crate::query::{self, Filter, Format};
use crate::sessions::{self, Sessions};
use crate::state::App;

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

/// Lets in a caller with a query token, or says why not.
fn authorize(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(tokens) = &app.query_tokens else {
        return Err(ApiError::Forbidden(
            "the query API is off: start the collector with --query-token-file".into(),
        ));
    };
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if bearer(authorization).is_none_or(|token| !tokens.contains(token)) {
        return Err(ApiError::Unauthorized(
            "a valid query token is required (Authorization: Bearer <token>)".into(),
        ));
    }
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
    authorize(&app, &headers)?;
    let params = Params::parse(raw);
    let filter = params.filter(&["quietAfter"])?;
    let quiet_after = match params.get("quietAfter") {
        Some(value) => sessions::parse_duration(value).map_err(ApiError::bad_request)?,
        None => sessions::DEFAULT_QUIET_AFTER,
    };
    let limit = params.limit()?;
    let data = app.data.clone();
    let body = tokio::task::spawn_blocking(move || -> anyhow::Result<serde_json::Value> {
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
        Ok(json!({
            "quietAfterSeconds": quiet_after.as_secs(),
            "total": total,
            "sessions": all,
        }))
    })
    .await?
    .map_err(ApiError::internal)?;
    Ok(axum::Json(body).into_response())
}

/// `GET /v1/events?since=…&namespace=…&format=ndjson|csv|table&limit=N`.
pub async fn events(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    let params = Params::parse(raw);
    let filter = params.filter(&[])?;
    let format: Format = match params.get("format") {
        Some(value) => value.parse().map_err(ApiError::bad_request)?,
        None => Format::Ndjson,
    };
    let limit = params.limit()?;
    let data = app.data.clone();
    let body = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<u8>> {
        let mut writer = query::Writer::new(Vec::new(), format);
        query::scan(&data, &filter, Some(limit), |event| writer.write(event))?;
        writer.finish()
    })
    .await?
    .map_err(ApiError::internal)?;
    Ok(([(header::CONTENT_TYPE, format.content_type())], body).into_response())
}

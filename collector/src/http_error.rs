//! The collector's HTTP errors: each answers itself with its status and `{"error": "…"}`, so
//! handlers return `Result<_, ApiError>` and use `?`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::metrics::Refusal;

/// Why a request was refused or failed; the message is what the caller reads.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no credentials, or credentials nobody vouches for.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: authenticated, but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// 404: nothing matches.
    #[error("{0}")]
    NotFound(String),
    /// 409: ambiguous, or conflicting with what is stored.
    #[error("{0}")]
    Conflict(String),
    /// 413: the body is too large.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 415: the body is not of a media type the collector reads.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 500: the collector failed.
    #[error("{0}")]
    Internal(String),
    /// 503: the collector cannot answer now (shutting down, the API server unreachable); the
    /// caller should retry.
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    /// A malformed request, from any error (its whole chain is the message).
    pub fn bad_request(error: impl Into<anyhow::Error>) -> ApiError {
        ApiError::BadRequest(format!("{:#}", error.into()))
    }

    /// A failure of the collector, from any error.
    pub fn internal(error: impl Into<anyhow::Error>) -> ApiError {
        ApiError::Internal(format!("{:#}", error.into()))
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// How ingest counts this refusal (`streamward_collector_batches_refused_total{reason}`).
    pub fn refusal(&self) -> Refusal {
        match self {
            ApiError::Unauthorized(_) => Refusal::Unauthenticated,
            ApiError::Forbidden(_) => Refusal::Forbidden,
            ApiError::BadRequest(_) | ApiError::NotFound(_) | ApiError::UnsupportedMediaType(_) => {
                Refusal::Invalid
            }
            ApiError::PayloadTooLarge(_) => Refusal::TooLarge,
            ApiError::Conflict(_) => Refusal::Conflict,
            ApiError::Internal(_) | ApiError::Unavailable(_) => Refusal::Store,
        }
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(error: tokio::task::JoinError) -> ApiError {
        ApiError::Internal(format!("a query task failed: {error}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        (status, axum::Json(json!({ "error": self.to_string() }))).into_response()
    }
}

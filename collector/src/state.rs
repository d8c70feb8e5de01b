//! What the HTTP handlers share: how callers are let in, where the data is, and the queue to
//! the store's writer.

use std::path::PathBuf;
use std::sync::Arc;

use streamward_api::audit::AuditEvent;
use tokio::sync::mpsc;

use crate::auth::{Authenticator, TokenFile};
use crate::checkpoint::PublicKey;
use crate::http_error::ApiError;
use crate::metrics::Metrics;
use crate::store::{Appended, Prepared};
use crate::writer::Job;

/// The collector's shared state.
pub struct App {
    /// How senders authenticate.
    pub auth: Authenticator,
    /// Who may query (`None`: the query API is off).
    pub query_tokens: Option<TokenFile>,
    /// The data folder (queries read it).
    pub data: PathBuf,
    /// The key that verifies the checkpoints (published at `GET /v1/key`).
    pub public_key: PublicKey,
    /// The queue to the writer.
    pub writer: mpsc::Sender<Job>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

impl App {
    /// Hands `events` (and their `prepared` forms, in the same order) to the writer and waits
    /// until they are durable.
    pub async fn append(
        &self,
        events: Vec<Arc<AuditEvent>>,
        prepared: Vec<Prepared>,
    ) -> Result<Appended, ApiError> {
        let (job, answer) = Job::new(events, prepared);
        if self.writer.send(job).await.is_err() {
            return Err(ApiError::Unavailable(
                "the collector is shutting down".into(),
            ));
        }
        match answer.await {
            Ok(Ok(appended)) => Ok(appended),
            Ok(Err(error)) => Err(ApiError::Internal(format!(
                "the events were not stored: {error}"
            ))),
            Err(_) => Err(ApiError::Unavailable("the writer stopped".into())),
        }
    }
}

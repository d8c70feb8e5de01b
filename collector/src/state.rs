//! What the HTTP handlers share: how callers are let in, where the data is, and the queue to
//! the store's writer.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use streamward_api::audit::AuditEvent;
use tokio::sync::mpsc;

use crate::access::QueryAccess;
use crate::auth::Authenticator;
use crate::checkpoint::PublicKey;
use crate::http_error::ApiError;
use crate::metrics::Metrics;
use crate::store::{Appended, Prepared};
use crate::writer::{FilesLock, Job};

/// The collector's shared state.
pub struct App {
    /// How senders authenticate.
    pub auth: Authenticator,
    /// Who may query.
    pub access: QueryAccess,
    /// The data folder (queries read it).
    pub data: PathBuf,
    /// The key that verifies the checkpoints (published at `GET /v1/key`).
    pub public_key: PublicKey,
    /// The queue to the writer.
    pub writer: mpsc::Sender<Job>,
    /// Held by the writer while it changes the files (a verification's cut waits for it).
    pub files: FilesLock,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Ids of the collector's own query events: `query:<start time>:<n>`.
    started: i128,
    queries: AtomicU64,
}

impl App {
    /// The state of a collector that stores into `writer` and reads `data`.
    pub fn new(
        auth: Authenticator,
        access: QueryAccess,
        data: PathBuf,
        public_key: PublicKey,
        writer: mpsc::Sender<Job>,
        files: FilesLock,
        metrics: Arc<Metrics>,
    ) -> App {
        App {
            auth,
            access,
            data,
            public_key,
            writer,
            files,
            metrics,
            started: jiff::Timestamp::now().as_nanosecond(),
            queries: AtomicU64::new(0),
        }
    }

    /// A new id for a query event: unique across restarts (the start time in nanoseconds) and
    /// within a run (a counter).
    pub fn next_query_id(&self) -> String {
        let n = self.queries.fetch_add(1, Ordering::Relaxed) + 1;
        format!("query:{}:{n}", self.started)
    }

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

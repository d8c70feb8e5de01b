//! The store's one writer: it takes every batch waiting at that moment, appends them with one
//! write and one fdatasync (group commit), and answers each sender. Checkpoints and retention
//! run on the same thread between groups, so nothing else ever touches the files being written.

use std::sync::Arc;
use std::time::{Duration, Instant};

use streamward_api::audit::AuditEvent;
use tokio::sync::{mpsc, oneshot};

use crate::store::{Appended, Prepared, Retention, Store};

/// Batches taken into one write and fdatasync at most.
const MAX_GROUP: usize = 256;

/// A batch on its way to the writer.
pub struct Job {
    events: Vec<Arc<AuditEvent>>,
    prepared: Vec<Prepared>,
    reply: oneshot::Sender<Result<Appended, String>>,
}

impl Job {
    /// A batch of `events` (with their `prepared` forms, in the same order), and where the
    /// writer answers once it is durable (or failed).
    pub fn new(
        events: Vec<Arc<AuditEvent>>,
        prepared: Vec<Prepared>,
    ) -> (Job, oneshot::Receiver<Result<Appended, String>>) {
        let (reply, answer) = oneshot::channel();
        (
            Job {
                events,
                prepared,
                reply,
            },
            answer,
        )
    }
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

/// Held by the writer while it changes the store's files (appends, checkpoints, retention),
/// and by a reader for the moment it takes a [`Cut`](crate::verify::Cut): so the cut falls
/// between two writes and is a consistent store.
#[derive(Clone, Default)]
pub struct FilesLock(Arc<std::sync::Mutex<()>>);

impl FilesLock {
    /// Holds the files until the guard is dropped.
    pub fn hold(&self) -> std::sync::MutexGuard<'_, ()> {
        // The lock guards no data: a holder that panicked left nothing half-changed in it.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What the writer does besides appending.
pub struct WriterSettings {
    /// Held while the files change.
    pub files: FilesLock,
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
        let _files = settings.files.hold();
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

/// Creates the queue between the handlers and the writer.
pub fn queue() -> (mpsc::Sender<Job>, mpsc::Receiver<Job>) {
    mpsc::channel(1024)
}

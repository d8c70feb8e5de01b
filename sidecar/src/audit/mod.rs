//! The audit emitter: one event per client request, delivered to the collector at least once,
//! without ever slowing the data path beyond a bounded queue.
//!
//! ```text
//! session ──try_send──▶ bounded queue ──▶ writer thread ──append──▶ spool (files) ──▶ sender ──POST──▶ collector
//! ```
//!
//! - A session builds its events ([`session::SessionAudit`]) and hands each to the [`Emitter`],
//!   which never waits: when the queue is full the event is dropped and counted.
//! - The writer (a thread of its own, so disk writes and fsyncs never run on the data path's
//!   workers) appends events to the [`spool::Spool`] in order, and writes a
//!   [`streamward_api::audit::DroppedEvents`] report of anything lost once there is room.
//! - With `--audit-full=refuse` ([`AuditFull::Refuse`]) the [`AuditGate`] closes while the
//!   spool is at its bound (or the queue half full): new requests are refused with
//!   POLICY_VIOLATION instead of being forwarded unaudited (NIST SP 800-53 AU-5). Events of
//!   requests already forwarded still fit: the spool may pass its bound by an eighth for them.
//! - The sender ([`sender`]) posts batches from the spool's head and forgets a batch only when
//!   the collector answers 200; while the collector is away the spool grows (up to its bound)
//!   and is delivered, in order, when it is back — or by the next run of the proxy.

pub mod payload;
pub mod records;
pub mod sender;
pub mod session;
pub mod spool;

pub use sender::CollectorCa;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use streamward_api::audit::{AuditEvent, Identity};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::{AuditOutcome, Metrics};
use sender::{Collector, SenderError};
use spool::{Spool, SpoolError};

/// Events the in-memory queue holds before new ones are dropped (and counted).
pub const DEFAULT_QUEUE: usize = 65_536;
/// The spool's default bound.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 1 << 30;
/// How often the writer makes appended events durable.
const SYNC_EVERY: Duration = Duration::from_millis(200);

/// What the proxy does while the audit spool is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AuditFull {
    /// Traffic continues; events past the bound are dropped, counted and reported
    /// (availability first).
    #[default]
    Continue,
    /// New requests are refused until the spool drains, so nothing is forwarded unaudited
    /// (AU-5: respond to an audit logging failure).
    Refuse,
}

/// The rule an audit-full refusal names (in the client's error message and the event).
pub const AUDIT_FULL_RULE: &str = "audit spool full";
/// What a client refused because the spool is full is told.
pub const AUDIT_FULL_REASON: &str = "the audit spool of this Streamward proxy is full (the \
     collector is not taking events): requests are refused until it drains (--audit-full=refuse)";

/// Whether the pipeline can take more events: read by every request under
/// [`AuditFull::Refuse`], kept current by the writer and the sender.
pub struct AuditGate {
    refuse: bool,
    /// The spool's bound: at or above it, the gate is closed.
    threshold: u64,
    spool_bytes: AtomicU64,
    /// Events in the queue, not yet taken by the writer.
    queued: AtomicUsize,
    queue_capacity: usize,
    metrics: Arc<Metrics>,
}

impl AuditGate {
    fn new(mode: AuditFull, threshold: u64, queue: usize, metrics: Arc<Metrics>) -> AuditGate {
        AuditGate {
            refuse: mode == AuditFull::Refuse,
            threshold,
            spool_bytes: AtomicU64::new(0),
            queued: AtomicUsize::new(0),
            queue_capacity: queue.max(1),
            metrics,
        }
    }

    /// Whether the spool is at its bound, or the queue half full.
    pub fn full(&self) -> bool {
        self.spool_bytes.load(Ordering::Relaxed) >= self.threshold
            || self.queued.load(Ordering::Relaxed) * 2 >= self.queue_capacity
    }

    /// With `--audit-full=refuse`, whether a new request must be refused now (counted when it
    /// is).
    pub fn refuses(&self) -> bool {
        let refuses = self.refuse && self.full();
        if refuses {
            self.metrics.audit_full_refusal();
        }
        refuses
    }

    /// The spool holds `bytes` now.
    fn spool_bytes(&self, bytes: u64) {
        self.spool_bytes.store(bytes, Ordering::Relaxed);
        self.metrics.audit_full(self.full());
    }
}

/// Where and how to deliver audit events.
#[derive(Clone, Debug)]
pub struct AuditSettings {
    /// The collector's base URL (`http://…` or `https://…`); batches go to its
    /// [`streamward_api::audit::INGEST_PATH`].
    pub url: String,
    /// The file holding the bearer token (read before every delivery, so a rotated projected
    /// service-account token is picked up).
    pub token_file: PathBuf,
    /// The CA certificates the collector's certificate must chain to.
    pub ca: CollectorCa,
    /// The spool folder.
    pub spool_dir: PathBuf,
    /// The spool's bound in bytes.
    pub spool_max_bytes: u64,
    /// The in-memory queue's length, in events.
    pub queue: usize,
    /// What happens to traffic while the spool is full.
    pub full: AuditFull,
    /// The workload this proxy serves (for reports of dropped events).
    pub identity: Identity,
}

/// Starting the audit pipeline failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The spool could not be opened.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The collector's address or TLS settings are unusable.
    #[error(transparent)]
    Collector(#[from] SenderError),
    /// The writer thread could not be started.
    #[error("starting the audit writer thread: {0}")]
    Thread(std::io::Error),
}

/// Hands events to the pipeline without waiting. Cheap to clone; one per session.
#[derive(Clone)]
pub struct Emitter {
    // Boxed: the bounded channel preallocates its slots, and a pointer per slot keeps an idle
    // queue of 65,536 at half a megabyte rather than a dozen.
    queue: SyncSender<Box<AuditEvent>>,
    overflow: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
    identity: Arc<Identity>,
    gate: Arc<AuditGate>,
}

impl std::fmt::Debug for Emitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emitter")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Emitter {
    /// Queues `event`, or drops and counts it when the queue is full (the writer reports the
    /// loss as an event of its own).
    pub fn emit(&self, event: AuditEvent) {
        // A request refused because the pipeline is full has no room: its event is lost and
        // reported as such, so the room left stays for requests already forwarded.
        if self.gate.refuse
            && self.gate.full()
            && event
                .record()
                .is_some_and(|record| record.decision.rule == AUDIT_FULL_RULE)
        {
            self.overflow.fetch_add(1, Ordering::Relaxed);
            self.metrics.audit_events(AuditOutcome::Dropped, 1);
            return;
        }
        match self.queue.try_send(Box::new(event)) {
            Ok(()) => {
                self.gate.queued.fetch_add(1, Ordering::Relaxed);
                self.metrics.audit_events(AuditOutcome::Queued, 1);
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.overflow.fetch_add(1, Ordering::Relaxed);
                self.metrics.audit_events(AuditOutcome::Dropped, 1);
            }
        }
    }

    /// Whether new requests must be refused because the pipeline is full
    /// (`--audit-full=refuse`).
    pub fn refuses(&self) -> bool {
        self.gate.refuses()
    }

    /// The workload identity events name.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// An emitter whose events land in the returned queue (for tests of the data path).
    #[cfg(test)]
    pub(crate) fn to_queue(
        identity: Identity,
        metrics: Arc<Metrics>,
    ) -> (Emitter, Receiver<Box<AuditEvent>>) {
        let (queue, events) = std::sync::mpsc::sync_channel(1024);
        let gate = Arc::new(AuditGate::new(
            AuditFull::Continue,
            u64::MAX,
            1024,
            metrics.clone(),
        ));
        let emitter = Emitter {
            queue,
            overflow: Arc::new(AtomicU64::new(0)),
            metrics,
            identity: Arc::new(identity),
            gate,
        };
        (emitter, events)
    }
}

/// The running pipeline: the writer thread and the sender task.
pub struct Audit {
    emitter: Emitter,
    spool: Arc<Mutex<Spool>>,
    stop_writer: Arc<AtomicBool>,
    writer: std::thread::JoinHandle<()>,
    stop_sender: CancellationToken,
    sender: tokio::task::JoinHandle<()>,
}

impl Audit {
    /// Opens the spool (delivering what a previous run left) and starts the writer and the
    /// sender. Must run inside a tokio runtime.
    pub fn start(settings: AuditSettings, metrics: Arc<Metrics>) -> Result<Audit, AuditError> {
        let collector = Collector::new(&settings.url, settings.token_file.clone(), &settings.ca)?;
        let instance = session::new_uuid();
        // Refusing at the bound, the spool keeps room above it for the events of requests
        // already forwarded when the gate closed (the injected emptyDir allows a quarter more).
        let hard_bound = match settings.full {
            AuditFull::Continue => settings.spool_max_bytes,
            AuditFull::Refuse => settings
                .spool_max_bytes
                .saturating_add(settings.spool_max_bytes / 8),
        };
        let spool = Spool::open(
            &settings.spool_dir,
            hard_bound,
            settings.identity.clone(),
            instance,
        )?;
        metrics.audit_spool_bytes(spool.bytes());
        let gate = Arc::new(AuditGate::new(
            settings.full,
            settings.spool_max_bytes,
            settings.queue,
            metrics.clone(),
        ));
        gate.spool_bytes(spool.bytes());
        if spool.bytes() > 0 {
            tracing::info!(
                bytes = spool.bytes(),
                "audit spool holds events of an earlier run: delivering them first"
            );
        }
        let spool = Arc::new(Mutex::new(spool));
        let (queue, events) = std::sync::mpsc::sync_channel(settings.queue.max(1));
        let overflow = Arc::new(AtomicU64::new(0));
        let notify = Arc::new(Notify::new());
        let stop_writer = Arc::new(AtomicBool::new(false));
        let writer = {
            let spool = spool.clone();
            let overflow = overflow.clone();
            let notify = notify.clone();
            let metrics = metrics.clone();
            let stop = stop_writer.clone();
            let gate = gate.clone();
            std::thread::Builder::new()
                .name("audit-writer".into())
                .spawn(move || {
                    write_loop(events, &spool, &overflow, &notify, &metrics, &gate, &stop)
                })
                .map_err(AuditError::Thread)?
        };
        let stop_sender = CancellationToken::new();
        let sender = tokio::spawn(sender::deliver(
            spool.clone(),
            notify,
            collector,
            metrics.clone(),
            gate.clone(),
            stop_sender.clone(),
        ));
        tracing::info!(collector = %settings.url, spool = %settings.spool_dir.display(), "audit events are sent to the collector");
        Ok(Audit {
            emitter: Emitter {
                queue,
                overflow,
                metrics,
                identity: Arc::new(settings.identity),
                gate,
            },
            spool,
            stop_writer,
            writer,
            stop_sender,
            sender,
        })
    }

    /// A handle for sessions.
    pub fn emitter(&self) -> Emitter {
        self.emitter.clone()
    }

    /// Writes what is queued to the spool, then gives the sender up to `grace` to deliver the
    /// spool; what is left is delivered by the next run.
    pub async fn shutdown(self, grace: Duration) {
        let Audit {
            emitter,
            spool,
            stop_writer,
            writer,
            stop_sender,
            sender,
        } = self;
        drop(emitter);
        stop_writer.store(true, Ordering::Relaxed);
        let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        let deadline = Instant::now() + grace;
        loop {
            let empty = {
                let mut spool = spool.lock().unwrap_or_else(|e| e.into_inner());
                matches!(spool.next_read(), Ok(None))
            };
            if empty {
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    "audit events not yet delivered stay in the spool for the next start"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop_sender.cancel();
        let _ = sender.await;
    }
}

/// The writer: queue → spool, in order, until told to stop and the queue is empty.
fn write_loop(
    events: Receiver<Box<AuditEvent>>,
    spool: &Mutex<Spool>,
    overflow: &AtomicU64,
    notify: &Notify,
    metrics: &Metrics,
    gate: &AuditGate,
    stop: &AtomicBool,
) {
    let mut batch = Vec::with_capacity(1024);
    let mut dirty = false;
    let mut last_sync = Instant::now();
    loop {
        let mut idle = false;
        let mut ended = false;
        match events.recv_timeout(Duration::from_millis(100)) {
            Ok(event) => {
                batch.push(event);
                while batch.len() < 4096 {
                    match events.try_recv() {
                        Ok(event) => batch.push(event),
                        Err(_) => break,
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => idle = true,
            Err(RecvTimeoutError::Disconnected) => ended = true,
        }
        gate.queued.fetch_sub(
            batch.len().min(gate.queued.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        let overflowed = overflow.swap(0, Ordering::Relaxed);
        {
            let mut spool = spool.lock().unwrap_or_else(|e| e.into_inner());
            let now = Timestamp::now();
            spool.note_dropped(overflowed, now);
            if !batch.is_empty() || spool.has_unreported() {
                match spool.append(&batch, now) {
                    Ok(lost) => {
                        if lost > 0 {
                            metrics.audit_events(AuditOutcome::Dropped, lost);
                        }
                    }
                    Err(error) => {
                        tracing::error!(%error, events = batch.len(), "audit events could not be spooled and are lost");
                        metrics.audit_events(AuditOutcome::Dropped, batch.len() as u64);
                        spool.note_dropped(batch.len() as u64, now);
                    }
                }
                metrics.audit_spool_bytes(spool.bytes());
                gate.spool_bytes(spool.bytes());
                dirty = true;
                batch.clear();
                notify.notify_one();
            }
            if dirty && (last_sync.elapsed() >= SYNC_EVERY || ended || idle) {
                if let Err(error) = spool.sync() {
                    tracing::warn!(%error, "audit spool sync failed");
                }
                dirty = false;
                last_sync = Instant::now();
            }
        }
        if ended || (idle && stop.load(Ordering::Relaxed)) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use streamward_api::audit::{BATCH_CONTENT_TYPE, EventData, INGEST_PATH};

    use super::spool::tests::{event, identity};
    use super::*;

    /// A collector stand-in: answers the first `fail.len()` posts with those statuses, then
    /// stores batches whose token is right.
    #[derive(Default)]
    struct Receiver {
        fail: Mutex<Vec<u16>>,
        stored: Mutex<Vec<AuditEvent>>,
        posts: AtomicUsize,
        largest: AtomicUsize,
    }

    async fn ingest(
        State(receiver): State<Arc<Receiver>>,
        headers: HeaderMap,
        body: bytes::Bytes,
    ) -> (StatusCode, String) {
        receiver.posts.fetch_add(1, Ordering::SeqCst);
        if let Some(status) = {
            let mut fail = receiver.fail.lock().unwrap();
            (!fail.is_empty()).then(|| fail.remove(0))
        } {
            return (StatusCode::from_u16(status).unwrap(), "scripted".into());
        }
        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer t0k3n") {
            return (StatusCode::UNAUTHORIZED, "bad token".into());
        }
        assert_eq!(
            headers.get("content-type").unwrap().to_str().unwrap(),
            BATCH_CONTENT_TYPE
        );
        let batch: Vec<AuditEvent> = match serde_json::from_slice(&body) {
            Ok(batch) => batch,
            Err(error) => return (StatusCode::BAD_REQUEST, error.to_string()),
        };
        receiver.largest.fetch_max(batch.len(), Ordering::SeqCst);
        let n = batch.len();
        receiver.stored.lock().unwrap().extend(batch);
        (
            StatusCode::OK,
            format!("{{\"accepted\":{n},\"duplicates\":0}}"),
        )
    }

    async fn serve(receiver: Arc<Receiver>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route(INGEST_PATH, axum::routing::post(ingest))
            .with_state(receiver);
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    fn settings(url: String, dir: &std::path::Path) -> AuditSettings {
        let token = dir.join("token");
        std::fs::write(&token, "t0k3n\n").unwrap();
        AuditSettings {
            url,
            token_file: token,
            ca: CollectorCa::System,
            spool_dir: dir.join("spool"),
            spool_max_bytes: 64 << 20,
            queue: 100_000,
            full: AuditFull::Continue,
            identity: identity(),
        }
    }

    async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..400 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out waiting for {what}");
    }

    fn sequences(events: &[AuditEvent]) -> Vec<u64> {
        events
            .iter()
            .filter_map(|e| e.record())
            .map(|r| r.sequence)
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_reach_a_collector_that_fails_first_in_order_and_in_bounded_batches() {
        let receiver = Arc::new(Receiver::default());
        *receiver.fail.lock().unwrap() = vec![503, 500, 401];
        let url = serve(receiver.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let audit = Audit::start(settings(url, dir.path()), metrics.clone()).unwrap();
        let emitter = audit.emitter();
        for sequence in 1..=2500 {
            emitter.emit(event(sequence));
        }
        // The collector stores a batch before the proxy hears it was stored: wait for both.
        let delivered = "streamward_sidecar_audit_events_total{outcome=\"delivered\"} 2500";
        wait_for("2500 events stored and counted delivered", || {
            receiver.stored.lock().unwrap().len() >= 2500 && metrics.encode().contains(delivered)
        })
        .await;
        let stored = receiver.stored.lock().unwrap().clone();
        assert_eq!(sequences(&stored), (1..=2500).collect::<Vec<_>>());
        assert!(receiver.largest.load(Ordering::SeqCst) <= spool::MAX_BATCH_EVENTS);
        assert!(receiver.posts.load(Ordering::SeqCst) >= 3 + 3);
        let text = metrics.encode();
        assert!(
            text.contains("streamward_sidecar_audit_events_total{outcome=\"queued\"} 2500"),
            "{text}"
        );
        assert!(
            text.contains("streamward_sidecar_audit_events_total{outcome=\"delivered\"} 2500"),
            "{text}"
        );
        assert!(
            text.contains(
                "streamward_sidecar_audit_delivery_errors_total{reason=\"unauthorized\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("streamward_sidecar_audit_delivery_errors_total{reason=\"server\"} 2"),
            "{text}"
        );
        audit.shutdown(Duration::from_secs(5)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_the_collector_cannot_read_is_dropped_once_and_the_loss_reported() {
        let receiver = Arc::new(Receiver::default());
        *receiver.fail.lock().unwrap() = vec![400];
        let url = serve(receiver.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let audit = Audit::start(settings(url, dir.path()), metrics.clone()).unwrap();
        let emitter = audit.emitter();
        for sequence in 1..=10 {
            emitter.emit(event(sequence));
        }
        // The refused batch is not sent again: what arrives is a report and the rest.
        wait_for("the report and the rest", || {
            let stored = receiver.stored.lock().unwrap();
            let reported: u64 = stored
                .iter()
                .map(|e| match &e.data {
                    EventData::Dropped(d) => d.dropped,
                    EventData::Request(_) | EventData::Query(_) => 0,
                })
                .sum();
            reported >= 1 && reported + sequences(&stored).len() as u64 == 10
        })
        .await;
        let stored = receiver.stored.lock().unwrap().clone();
        let lost = 10 - sequences(&stored).len() as u64;
        let rest = sequences(&stored);
        assert_eq!(rest, ((lost + 1)..=10).collect::<Vec<_>>());
        let text = metrics.encode();
        assert!(
            text.contains(&format!(
                "streamward_sidecar_audit_events_total{{outcome=\"dropped\"}} {lost}"
            )),
            "{text}"
        );
        audit.shutdown(Duration::from_secs(5)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_could_not_be_delivered_before_a_restart_is_delivered_after_it() {
        let dir = tempfile::tempdir().unwrap();
        // No collector at first: a port nothing listens on.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let metrics = Arc::new(Metrics::new());
        let audit = Audit::start(settings(url, dir.path()), metrics.clone()).unwrap();
        let emitter = audit.emitter();
        for sequence in 1..=300 {
            emitter.emit(event(sequence));
        }
        drop(emitter);
        audit.shutdown(Duration::from_millis(300)).await;
        assert!(metrics.encode().contains("reason=\"connect\""));

        let receiver = Arc::new(Receiver::default());
        let url = serve(receiver.clone()).await;
        let audit = Audit::start(settings(url, dir.path()), Arc::new(Metrics::new())).unwrap();
        wait_for("the earlier run's events", || {
            receiver.stored.lock().unwrap().len() >= 300
        })
        .await;
        audit.shutdown(Duration::from_secs(5)).await;
        assert_eq!(
            sequences(&receiver.stored.lock().unwrap()),
            (1..=300).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_full_queue_drops_without_waiting_and_counts() {
        let (queue, _events) = std::sync::mpsc::sync_channel(2);
        let metrics = Arc::new(Metrics::new());
        let emitter = Emitter {
            queue,
            overflow: Arc::new(AtomicU64::new(0)),
            metrics: metrics.clone(),
            identity: Arc::new(identity()),
            gate: Arc::new(AuditGate::new(
                AuditFull::Continue,
                u64::MAX,
                2,
                metrics.clone(),
            )),
        };
        for sequence in 1..=5 {
            emitter.emit(event(sequence));
        }
        assert_eq!(emitter.overflow.load(Ordering::Relaxed), 3);
        let text = metrics.encode();
        assert!(text.contains("outcome=\"queued\"} 2"), "{text}");
        assert!(text.contains("outcome=\"dropped\"} 3"), "{text}");
    }
}

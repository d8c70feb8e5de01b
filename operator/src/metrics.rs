//! Prometheus metrics of the operator (`streamward_operator_<what>_<unit>`) and the plain HTTP
//! listener serving `/metrics`, `/healthz` and `/readyz`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// What kind of error a reconcile ended with.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum ErrorKind {
    /// The API server refused a write.
    Write,
    /// Something could not be serialized.
    Serialize,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    kind: ErrorKind,
}

/// The operator's metrics, and whether it is ready and leading.
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    errors: Family<ErrorLabels, Counter>,
    config_maps_written: Counter,
    statuses_written: Counter,
    events_recorded: Counter,
    duration: Histogram,
    leader: Gauge,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("streamward_operator");
        let reconciles = Counter::default();
        registry.register("reconciles", "Namespace reconciles run", reconciles.clone());
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Namespace reconciles that failed, by kind",
            errors.clone(),
        );
        let config_maps_written = Counter::default();
        registry.register(
            "configmaps_written",
            "Proxy ConfigMaps applied because their content changed",
            config_maps_written.clone(),
        );
        let statuses_written = Counter::default();
        registry.register(
            "statuses_written",
            "Status subresources applied because a condition changed",
            statuses_written.clone(),
        );
        let events_recorded = Counter::default();
        registry.register(
            "events_recorded",
            "Kubernetes Events recorded for grant transitions",
            events_recorded.clone(),
        );
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register(
            "reconcile_duration_seconds",
            "How long a namespace reconcile took",
            duration.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        Metrics {
            registry,
            reconciles,
            errors,
            config_maps_written,
            statuses_written,
            events_recorded,
            duration,
            leader,
            ready: AtomicBool::new(false),
        }
    }

    /// Counts a reconcile that took `took`.
    pub fn reconciled(&self, took: Duration) {
        self.reconciles.inc();
        self.duration.observe(took.as_secs_f64());
    }

    /// Counts a failed reconcile.
    pub fn error(&self, kind: ErrorKind) {
        self.errors.get_or_create(&ErrorLabels { kind }).inc();
    }

    /// Counts a ConfigMap write.
    pub fn config_map_written(&self) {
        self.config_maps_written.inc();
    }

    /// Counts a status write.
    pub fn status_written(&self) {
        self.statuses_written.inc();
    }

    /// Counts an Event.
    pub fn event_recorded(&self) {
        self.events_recorded.inc();
    }

    /// Whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Marks the operator ready: it reaches the API server (and, when leading, its caches are
    /// filled).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}

/// The router of the metrics listener.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(metrics)
}

async fn readyz(State(metrics): State<Arc<Metrics>>) -> (StatusCode, String) {
    if !metrics.ready.load(Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the API server has not answered yet\n".into(),
        );
    }
    let role = if metrics.leader.get() == 1 {
        "leader"
    } else {
        "standby"
    };
    (StatusCode::OK, format!("ready ({role})\n"))
}

async fn metrics_text(
    State(metrics): State<Arc<Metrics>>,
) -> ([(axum::http::header::HeaderName, &'static str); 1], String) {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
}

//! Prometheus metrics of the collector, `streamward_collector_<what>_<unit>`.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Why a batch was refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Refusal {
    /// No or an invalid token (401).
    Unauthenticated,
    /// Events about another workload than the token's (403).
    Forbidden,
    /// Not a JSON array of valid events (400).
    Invalid,
    /// Larger than the limit (413).
    TooLarge,
    /// The store failed (500/503).
    Store,
    /// Events whose id the workload stored before with other content (409).
    Conflict,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    reason: Refusal,
}

/// What happened to an alert.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum AlertOutcome {
    /// The sink answered 2xx.
    Delivered,
    /// Every attempt failed, or the sink refused it (4xx).
    Failed,
    /// The sink's rate limit held it back.
    RateLimited,
    /// The alert queue was full.
    Dropped,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AlertLabels {
    sink: String,
    outcome: AlertOutcome,
}

/// The collector's metrics.
pub struct Metrics {
    registry: Registry,
    accepted: Counter,
    duplicates: Counter,
    conflicting: Counter,
    refused: Family<RefusalLabels, Counter>,
    alerts: Family<AlertLabels, Counter>,
    forwarded: Counter,
    forward_failures: Counter,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::with_prefix("streamward_collector");
        let accepted = Counter::default();
        let duplicates = Counter::default();
        let conflicting = Counter::default();
        let refused = Family::<RefusalLabels, Counter>::default();
        let alerts = Family::<AlertLabels, Counter>::default();
        let forwarded = Counter::default();
        let forward_failures = Counter::default();
        registry.register(
            "events_stored",
            "Events durably appended to the store",
            accepted.clone(),
        );
        registry.register(
            "events_duplicate",
            "Events received again and not stored twice",
            duplicates.clone(),
        );
        registry.register(
            "events_conflicting",
            "Events refused because their workload had stored their id with other content",
            conflicting.clone(),
        );
        registry.register(
            "batches_refused",
            "Batches refused, by reason",
            refused.clone(),
        );
        registry.register(
            "alerts",
            "Webhook alerts, by sink and outcome",
            alerts.clone(),
        );
        registry.register(
            "events_forwarded",
            "Events forwarded to the Kafka audit topic",
            forwarded.clone(),
        );
        registry.register(
            "forward_failures",
            "Failed attempts to forward events to Kafka",
            forward_failures.clone(),
        );
        Metrics {
            registry,
            accepted,
            duplicates,
            conflicting,
            refused,
            alerts,
            forwarded,
            forward_failures,
        }
    }
}

impl Metrics {
    /// Counts a stored batch.
    pub fn stored(&self, accepted: usize, duplicates: usize) {
        self.accepted.inc_by(accepted as u64);
        self.duplicates.inc_by(duplicates as u64);
    }

    /// Counts events refused as rewrites of stored ones.
    pub fn conflicting(&self, events: usize) {
        self.conflicting.inc_by(events as u64);
    }

    /// Counts a refused batch.
    pub fn refused(&self, reason: Refusal) {
        self.refused.get_or_create(&RefusalLabels { reason }).inc();
    }

    /// Counts an alert's outcome.
    pub fn alert(&self, sink: &str, outcome: AlertOutcome) {
        self.alerts
            .get_or_create(&AlertLabels {
                sink: sink.to_string(),
                outcome,
            })
            .inc();
    }

    /// Counts events forwarded to Kafka.
    pub fn forwarded(&self, events: usize) {
        self.forwarded.inc_by(events as u64);
    }

    /// Counts a failed forwarding attempt.
    pub fn forward_failed(&self) {
        self.forward_failures.inc();
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

//! Prometheus metrics of the proxy, `streamward_sidecar_<what>_<unit>`.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use streamward_api::config::Effect;

/// The effect label of a decision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum DecisionLabel {
    /// Allowed.
    Allow,
    /// Refused.
    Deny,
    /// Held for (or refused for lack of) approval.
    RequireApproval,
    /// Allowed because a DryRun policy only audits.
    WouldDeny,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    effect: DecisionLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    api: String,
}

/// How a client's authentication to the proxy ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
enum AuthenticationResult {
    Success,
    Failure,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthenticationLabels {
    result: AuthenticationResult,
}

/// Every metric the proxy exports.
pub struct Metrics {
    registry: Registry,
    requests: Family<ApiLabels, Counter>,
    decisions: Family<DecisionLabels, Counter>,
    connections: Gauge,
    malformed: Counter,
    config_loaded: Gauge,
    config_errors: Counter,
    upstream_errors: Counter,
    config_source_errors: Counter,
    client_authentications: Family<AuthenticationLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("streamward_sidecar");
        let requests = Family::<ApiLabels, Counter>::default();
        registry.register("requests", "Client requests by API", requests.clone());
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "Policy decisions on resource accesses, by effect",
            decisions.clone(),
        );
        let connections = Gauge::default();
        registry.register(
            "connections",
            "Open client connections",
            connections.clone(),
        );
        let malformed = Counter::default();
        registry.register(
            "malformed_frames",
            "Client frames that could not be read; each closed its connection",
            malformed.clone(),
        );
        let config_loaded = Gauge::default();
        registry.register(
            "config_loaded",
            "1 when a valid config is loaded, 0 when the proxy fails closed",
            config_loaded.clone(),
        );
        let config_errors = Counter::default();
        registry.register(
            "config_errors",
            "Config loads that failed (the proxy then refuses every request)",
            config_errors.clone(),
        );
        let upstream_errors = Counter::default();
        registry.register(
            "upstream_errors",
            "Connections to brokers that failed",
            upstream_errors.clone(),
        );
        let config_source_errors = Counter::default();
        registry.register(
            "config_source_errors",
            "Failures reaching the config source (the API server); the config in force stays",
            config_source_errors.clone(),
        );
        let client_authentications = Family::<AuthenticationLabels, Counter>::default();
        registry.register(
            "client_authentications",
            "Clients authenticating to the proxy (SASL), by result; a failure closes the connection",
            client_authentications.clone(),
        );
        Metrics {
            registry,
            requests,
            decisions,
            connections,
            malformed,
            config_loaded,
            config_errors,
            upstream_errors,
            config_source_errors,
            client_authentications,
        }
    }

    /// Counts a client request.
    pub fn request(&self, api: &str) {
        self.requests
            .get_or_create(&ApiLabels {
                api: api.to_string(),
            })
            .inc();
    }

    /// Counts a decision.
    pub fn decision(&self, effect: Effect, dry_run: bool) {
        let effect = match (effect, dry_run) {
            (_, true) => DecisionLabel::WouldDeny,
            (Effect::Allow, false) => DecisionLabel::Allow,
            (Effect::Deny, false) => DecisionLabel::Deny,
            (Effect::RequireApproval, false) => DecisionLabel::RequireApproval,
        };
        self.decisions
            .get_or_create(&DecisionLabels { effect })
            .inc();
    }

    /// The open-connections gauge.
    pub fn connections(&self) -> &Gauge {
        &self.connections
    }

    /// Counts a malformed client frame.
    pub fn malformed(&self) {
        self.malformed.inc();
    }

    /// Counts a failed upstream connection.
    pub fn upstream_error(&self) {
        self.upstream_errors.inc();
    }

    /// Counts a failure to reach the config source.
    pub fn config_source_error(&self) {
        self.config_source_errors.inc();
    }

    /// Counts a client's authentication to the proxy (or re-authentication).
    pub fn client_authentication(&self, success: bool) {
        let result = if success {
            AuthenticationResult::Success
        } else {
            AuthenticationResult::Failure
        };
        self.client_authentications
            .get_or_create(&AuthenticationLabels { result })
            .inc();
    }

    /// Records whether a valid config is loaded; a failed load is also counted.
    pub fn config_loaded(&self, loaded: bool) {
        self.config_loaded.set(i64::from(loaded));
        if !loaded {
            self.config_errors.inc();
        }
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

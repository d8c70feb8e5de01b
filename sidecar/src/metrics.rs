//! Prometheus metrics of the proxy, `streamward_sidecar_<what>_<unit>`.

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use streamward_api::config::{Effect, Flow};

use crate::mask::MaskStats;

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

/// The direction records flow, for masking counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
enum FlowLabel {
    Produce,
    Consume,
}

impl From<Flow> for FlowLabel {
    fn from(flow: Flow) -> FlowLabel {
        match flow {
            Flow::Produce => FlowLabel::Produce,
            Flow::Consume => FlowLabel::Consume,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FlowLabels {
    flow: FlowLabel,
}

/// The rules of a masking plan (comma-separated names) and the flow.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    rules: String,
    flow: FlowLabel,
}

/// Why a partition's records could not be masked (and were refused, not forwarded).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum MaskingFailure {
    /// The plan could not be built (a masking key is not mounted).
    Plan,
    /// A batch could not be read (bad CRC, lengths, codec).
    Corrupt,
    /// A batch decompresses to more than the proxy masks at once.
    TooLarge,
    /// Message format v0/v1.
    UnsupportedFormat,
    /// Masking the batch needs more memory than the proxy may use (a poison pill, or the
    /// proxy's budget held by other connections).
    Memory,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    flow: FlowLabel,
    reason: MaskingFailure,
}

/// What became of an audit event.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum AuditOutcome {
    /// Taken into the in-memory queue.
    Queued,
    /// Stored by the collector (it answered 200).
    Delivered,
    /// Lost: the queue or the spool was full, or the collector refused the batch for good.
    Dropped,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuditOutcomeLabels {
    outcome: AuditOutcome,
}

/// Why a batch of audit events was not delivered.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum AuditDeliveryError {
    /// No answer: connection refused, TLS failure, timeout.
    Connect,
    /// 401/403: the token was refused (the batch is kept and retried).
    Unauthorized,
    /// 400/413: the collector refused the batch itself (it is dropped and reported).
    Rejected,
    /// 5xx or any other status (the batch is kept and retried).
    Server,
    /// The token file could not be read (the batch is kept and retried).
    Token,
}

// Lower-case label values, as the metric's documentation names them.
impl EncodeLabelValue for AuditOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(match self {
            AuditOutcome::Queued => "queued",
            AuditOutcome::Delivered => "delivered",
            AuditOutcome::Dropped => "dropped",
        })
    }
}

impl EncodeLabelValue for AuditDeliveryError {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(match self {
            AuditDeliveryError::Connect => "connect",
            AuditDeliveryError::Unauthorized => "unauthorized",
            AuditDeliveryError::Rejected => "rejected",
            AuditDeliveryError::Server => "server",
            AuditDeliveryError::Token => "token",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuditErrorLabels {
    reason: AuditDeliveryError,
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
    config_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    config_stale: Gauge,
    audit_full: Gauge,
    audit_full_refusals: Counter,
    client_authentications: Family<AuthenticationLabels, Counter>,
    masked_records: Family<FlowLabels, Counter>,
    masked_fields: Family<RuleLabels, Counter>,
    masking_unparsable: Family<RuleLabels, Counter>,
    masking_failures: Family<FailureLabels, Counter>,
    audit_events: Family<AuditOutcomeLabels, Counter>,
    audit_spool_bytes: Gauge,
    audit_delivery_errors: Family<AuditErrorLabels, Counter>,
    approvals: Family<ApprovalLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApprovalLabels {
    step: String,
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
        let config_age = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register_with_unit(
            "config_age",
            "Time since the API server last confirmed the config in force (--config-map only)",
            prometheus_client::registry::Unit::Seconds,
            config_age.clone(),
        );
        let config_stale = Gauge::default();
        registry.register(
            "config_stale",
            "1 when the config is older than --max-config-staleness (grants, or everything, refused)",
            config_stale.clone(),
        );
        let audit_full = Gauge::default();
        registry.register(
            "audit_full",
            "1 while the audit spool is full: with --audit-full=refuse, requests are refused",
            audit_full.clone(),
        );
        let audit_full_refusals = Counter::default();
        registry.register(
            "audit_full_refusals",
            "Requests refused because the audit spool was full (--audit-full=refuse)",
            audit_full_refusals.clone(),
        );
        let client_authentications = Family::<AuthenticationLabels, Counter>::default();
        registry.register(
            "client_authentications",
            "Clients authenticating to the proxy (SASL), by result; a failure closes the connection",
            client_authentications.clone(),
        );
        let masked_records = Family::<FlowLabels, Counter>::default();
        registry.register(
            "masked_records",
            "Records whose value or headers the proxy masked, by flow",
            masked_records.clone(),
        );
        let masked_fields = Family::<RuleLabels, Counter>::default();
        registry.register(
            "masked_fields",
            "Fields, detector matches and headers masked, by the rules of the plan and flow",
            masked_fields.clone(),
        );
        let masking_unparsable = Family::<RuleLabels, Counter>::default();
        registry.register(
            "masking_unparsable_values",
            "Values not in their rule's format (replaced whole unless the rule says Pass)",
            masking_unparsable.clone(),
        );
        let masking_failures = Family::<FailureLabels, Counter>::default();
        registry.register(
            "masking_failures",
            "Partitions whose records could not be masked and were refused, by flow and reason",
            masking_failures.clone(),
        );
        let audit_events = Family::<AuditOutcomeLabels, Counter>::default();
        registry.register(
            "audit_events",
            "Audit events by outcome: queued, delivered to the collector, or dropped",
            audit_events.clone(),
        );
        let audit_spool_bytes = Gauge::default();
        registry.register(
            "audit_spool_bytes",
            "Bytes of audit events in the on-disk spool (delivered ones until their file is removed)",
            audit_spool_bytes.clone(),
        );
        let audit_delivery_errors = Family::<AuditErrorLabels, Counter>::default();
        registry.register(
            "audit_delivery_errors",
            "Failed attempts to deliver a batch of audit events to the collector, by reason",
            audit_delivery_errors.clone(),
        );
        let approvals = Family::<ApprovalLabels, Counter>::default();
        registry.register(
            "approvals",
            "Requests held for approval, by step: requested, approved, released, denied, expired, pending (the hold ended undecided), failed",
            approvals.clone(),
        );
        Metrics {
            registry,
            approvals,
            requests,
            decisions,
            connections,
            malformed,
            config_loaded,
            config_errors,
            upstream_errors,
            config_source_errors,
            config_age,
            config_stale,
            audit_full,
            audit_full_refusals,
            client_authentications,
            masked_records,
            masked_fields,
            masking_unparsable,
            masking_failures,
            audit_events,
            audit_spool_bytes,
            audit_delivery_errors,
        }
    }

    /// Counts a held request reaching `step`.
    pub fn approval(&self, step: streamward_api::audit::ApprovalStep) {
        self.approvals
            .get_or_create(&ApprovalLabels {
                step: format!("{step:?}").to_ascii_lowercase(),
            })
            .inc();
    }

    /// Counts `n` audit events with `outcome`.
    pub fn audit_events(&self, outcome: AuditOutcome, n: u64) {
        self.audit_events
            .get_or_create(&AuditOutcomeLabels { outcome })
            .inc_by(n);
    }

    /// The bytes in the audit spool now.
    pub fn audit_spool_bytes(&self, bytes: u64) {
        self.audit_spool_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Counts a failed delivery attempt.
    pub fn audit_delivery_error(&self, reason: AuditDeliveryError) {
        self.audit_delivery_errors
            .get_or_create(&AuditErrorLabels { reason })
            .inc();
    }

    /// Counts what masking one partition's records did, under the plan's `rules`.
    pub fn masked(&self, flow: Flow, rules: &str, stats: &MaskStats) {
        if stats.records_masked > 0 {
            self.masked_records
                .get_or_create(&FlowLabels { flow: flow.into() })
                .inc_by(stats.records_masked);
        }
        let fields = stats.fields_masked + stats.headers_masked;
        if fields == 0 && stats.parse_failures == 0 {
            return;
        }
        let labels = RuleLabels {
            rules: rules.to_owned(),
            flow: flow.into(),
        };
        if fields > 0 {
            self.masked_fields.get_or_create(&labels).inc_by(fields);
        }
        if stats.parse_failures > 0 {
            self.masking_unparsable
                .get_or_create(&labels)
                .inc_by(stats.parse_failures);
        }
    }

    /// Counts a partition refused because its records could not be masked.
    pub fn masking_failure(&self, flow: Flow, reason: MaskingFailure) {
        self.masking_failures
            .get_or_create(&FailureLabels {
                flow: flow.into(),
                reason,
            })
            .inc();
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

    /// How old the config is (since the API server last confirmed it) and whether it is stale.
    pub fn config_staleness(&self, age: std::time::Duration, stale: bool) {
        self.config_age.set(age.as_secs_f64());
        self.config_stale.set(i64::from(stale));
    }

    /// Whether the audit spool is full now.
    pub fn audit_full(&self, full: bool) {
        self.audit_full.set(i64::from(full));
    }

    /// Counts a request refused because the audit spool is full.
    pub fn audit_full_refusal(&self) {
        self.audit_full_refusals.inc();
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

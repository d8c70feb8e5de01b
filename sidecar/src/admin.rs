//! `/metrics`, `/healthz` and `/readyz` on the admin port.

use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::State as Extract;
use axum::http::StatusCode;
use axum::routing::get;

use crate::freshness::Freshness;
use crate::metrics::Metrics;
use crate::source::State;

#[derive(Clone)]
struct Admin {
    state: Arc<ArcSwap<State>>,
    metrics: Arc<Metrics>,
    freshness: Option<Arc<Freshness>>,
}

/// The admin router. Ready means: a valid config is loaded (otherwise the proxy refuses
/// every request, and says so here) and, with `freshness`, the API server has confirmed it
/// within the staleness limit (otherwise grants, or everything, are refused: said here too).
pub fn router(
    state: Arc<ArcSwap<State>>,
    metrics: Arc<Metrics>,
    freshness: Option<Arc<Freshness>>,
) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(Admin {
            state,
            metrics,
            freshness,
        })
}

async fn readyz(Extract(admin): Extract<Admin>) -> (StatusCode, String) {
    if let Some(reason) = admin.freshness.as_ref().and_then(|f| f.stale()) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        );
    }
    match &**admin.state.load() {
        State::Ready(loaded) => (
            StatusCode::OK,
            format!(
                "ready: config {} for target {}\n",
                loaded.config.hash, loaded.target_name
            ),
        ),
        State::FailClosed { reason, .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready, refusing every request: {reason}\n"),
        ),
    }
}

async fn metrics_text(
    Extract(admin): Extract<Admin>,
) -> ([(axum::http::header::HeaderName, &'static str); 1], String) {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        admin.metrics.encode(),
    )
}

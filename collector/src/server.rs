//! The collector's HTTP(S) server: ingest, the query API, health and metrics.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use streamward_api::audit::INGEST_PATH;

use crate::ingest;
use crate::queries;
use crate::state::App;

/// The routes.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route(INGEST_PATH, post(ingest::ingest).get(queries::events))
        .route("/v1/sessions", get(queries::sessions))
        .route("/v1/sessions/{session}/timeline", get(queries::timeline))
        .route("/v1/aggregate", get(queries::aggregate))
        .route("/v1/verify", get(queries::verify))
        .route("/v1/key", get(key))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ready" }))
        .route("/metrics", get(metrics))
        .with_state(app)
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.encode(),
    )
        .into_response()
}

/// `GET /v1/key`: the public key and its fingerprint, for an operator to record out of band.
/// Public information, so no token.
async fn key(State(app): State<Arc<App>>) -> Response {
    axum::Json(json!({
        "algorithm": "Ed25519",
        "publicKey": app.public_key.to_hex(),
        "fingerprint": app.public_key.fingerprint(),
    }))
    .into_response()
}

/// Where and how to listen.
pub struct Listen {
    /// The address.
    pub addr: SocketAddr,
    /// PEM certificate chain and key, for HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// Serves `router` until `shutdown` completes, then lets in-flight requests finish.
pub async fn serve(
    listen: Listen,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    match listen.tls {
        None => {
            let listener = tokio::net::TcpListener::bind(listen.addr)
                .await
                .with_context(|| format!("listening on {}", listen.addr))?;
            tracing::info!(addr = %listener.local_addr()?, "listening (HTTP)");
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
                .context("serving HTTP")
        }
        Some((cert, key)) => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(&cert, &key)
                .await
                .with_context(|| {
                    format!(
                        "loading the TLS certificate {} and key {}",
                        cert.display(),
                        key.display()
                    )
                })?;
            tokio::spawn(reload_certificate(
                config.clone(),
                cert.clone(),
                key.clone(),
            ));
            let handle = axum_server::Handle::new();
            let stopper = handle.clone();
            tokio::spawn(async move {
                shutdown.await;
                stopper.graceful_shutdown(Some(std::time::Duration::from_secs(10)));
            });
            tracing::info!(addr = %listen.addr, "listening (HTTPS)");
            axum_server::bind_rustls(listen.addr, config)
                .handle(handle)
                .serve(router.into_make_service())
                .await
                .context("serving HTTPS")
        }
    }
}

/// Serves the certificate in `cert` and `key` again whenever the files change: in a cluster
/// they are a mounted Secret the operator renews and the kubelet rewrites in place.
async fn reload_certificate(
    config: axum_server::tls_rustls::RustlsConfig,
    cert: PathBuf,
    key: PathBuf,
) {
    let stamp = |path: &PathBuf| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let mut seen = (stamp(&cert), stamp(&key));
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        let now = (stamp(&cert), stamp(&key));
        if now == seen {
            continue;
        }
        match config.reload_from_pem_file(&cert, &key).await {
            Ok(()) => {
                tracing::info!(cert = %cert.display(), "serving a renewed TLS certificate");
                seen = now;
            }
            // A half-written pair is read again on the next round.
            Err(error) => tracing::warn!(%error, "reloading the TLS certificate"),
        }
    }
}

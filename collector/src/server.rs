//! The collector's HTTP(S) server: ingest, the query API, health and metrics.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use streamward_api::audit::INGEST_PATH;
use tokio::sync::mpsc;

use crate::auth::{Authenticator, TokenFile, bearer};
use crate::checkpoint::PublicKey;
use crate::ingest::{self, Job};
use crate::metrics::Metrics;
use crate::query::{self, Filter, Format};
use crate::sessions::{self, Sessions};

/// What the handlers share.
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

/// The routes.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route(INGEST_PATH, post(ingest::ingest).get(query_events))
        .route("/v1/sessions", get(query_sessions))
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

const DEFAULT_LIMIT: usize = 1_000;
const MAX_LIMIT: usize = 100_000;

fn error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

/// The query API's answer to a caller without a query token, if it has none.
fn refuse_query(app: &App, headers: &HeaderMap) -> Option<Response> {
    let Some(tokens) = &app.query_tokens else {
        return Some(error(
            StatusCode::FORBIDDEN,
            "the query API is off: start the collector with --query-token-file".into(),
        ));
    };
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if bearer(authorization).is_none_or(|token| !tokens.contains(token)) {
        return Some(error(
            StatusCode::UNAUTHORIZED,
            "a valid query token is required (Authorization: Bearer <token>)".into(),
        ));
    }
    None
}

/// `GET /v1/sessions?quietAfter=15m&namespace=…&limit=N`: the proxy sessions of the events
/// that match, with missing sequence numbers and whether each went quiet, most recently seen
/// first.
async fn query_sessions(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    if let Some(refused) = refuse_query(&app, &headers) {
        return refused;
    }
    let raw = raw.unwrap_or_default();
    let params: Vec<(String, String)> = form_urlencoded::parse(raw.as_bytes())
        .into_owned()
        .collect();
    let pairs = || params.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    let filter = match Filter::from_params(pairs().filter(|(k, _)| *k != "quietAfter")) {
        Ok(filter) => filter,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("{e:#}")),
    };
    let mut quiet_after = sessions::DEFAULT_QUIET_AFTER;
    let mut limit = DEFAULT_LIMIT;
    for (name, value) in pairs() {
        match name {
            "quietAfter" => match sessions::parse_duration(value) {
                Ok(d) => quiet_after = d,
                Err(e) => return error(StatusCode::BAD_REQUEST, format!("{e:#}")),
            },
            "limit" => match parse_limit(value) {
                Ok(n) => limit = n,
                Err(message) => return error(StatusCode::BAD_REQUEST, message),
            },
            _ => {}
        }
    }
    let data = app.data.clone();
    let result = tokio::task::spawn_blocking(move || -> Result<serde_json::Value> {
        let mut sessions = Sessions::default();
        query::scan(&data, &filter, None, |event| {
            sessions.add_event(event);
            Ok(())
        })?;
        // Counted from the first sequence number seen: the query may not reach back to the
        // session's start (`verify` counts from 1 when the store holds its first record).
        let mut all = sessions.finish(false, jiff::Timestamp::now(), quiet_after);
        all.sort_by_key(|s| std::cmp::Reverse(s.last_seen));
        let total = all.len();
        all.truncate(limit);
        Ok(json!({
            "quietAfterSeconds": quiet_after.as_secs(),
            "total": total,
            "sessions": all,
        }))
    })
    .await;
    match result {
        Ok(Ok(body)) => axum::Json(body).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `GET /v1/events?since=…&namespace=…&format=ndjson|csv|table&limit=N`.
async fn query_events(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    if let Some(refused) = refuse_query(&app, &headers) {
        return refused;
    }
    let raw = raw.unwrap_or_default();
    let params: Vec<(String, String)> = form_urlencoded::parse(raw.as_bytes())
        .into_owned()
        .collect();
    let pairs = || params.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    let filter = match Filter::from_params(pairs()) {
        Ok(filter) => filter,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("{e:#}")),
    };
    let mut format = Format::Ndjson;
    let mut limit = DEFAULT_LIMIT;
    for (name, value) in pairs() {
        match name {
            "format" => match value.parse() {
                Ok(f) => format = f,
                Err(e) => return error(StatusCode::BAD_REQUEST, format!("{e:#}")),
            },
            "limit" => match parse_limit(value) {
                Ok(n) => limit = n,
                Err(message) => return error(StatusCode::BAD_REQUEST, message),
            },
            _ => {}
        }
    }
    let data = app.data.clone();
    let result = tokio::task::spawn_blocking(move || -> Result<Vec<u8>> {
        let mut writer = query::Writer::new(Vec::new(), format);
        query::scan(&data, &filter, Some(limit), |event| writer.write(event))?;
        writer.finish()
    })
    .await;
    match result {
        Ok(Ok(body)) => ([(header::CONTENT_TYPE, format.content_type())], body).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
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

/// The `limit` query parameter, or why it is refused.
fn parse_limit(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if n <= MAX_LIMIT => Ok(n),
        _ => Err(format!("limit is a number up to {MAX_LIMIT}")),
    }
}

//! Delivery: batches from the spool's head, posted to the collector, forgotten only on 200.
//!
//! What the collector's answer means (the contract in `streamward_api::audit`):
//! - 200: the batch is stored durably; the spool moves past it.
//! - 401/403: the token was refused; the batch is kept and retried with backoff (a rotated
//!   token is read again before every attempt).
//! - 400: the batch itself is unreadable to the collector; sending the same bytes again would
//!   fail forever, so it is dropped, counted, and reported as a dropped-events event.
//! - 413: too large for the collector: the batch is halved and tried again; a single event
//!   the collector refuses is dropped and reported like a 400.
//! - anything else, or no answer: retried with backoff (100 ms doubling up to 5 s).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jiff::Timestamp;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use streamward_api::audit::{BATCH_CONTENT_TYPE, INGEST_PATH};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::spool::{self, Batch, MAX_BATCH_EVENTS, Spool};
use crate::metrics::{AuditDeliveryError, AuditOutcome, Metrics};

/// How long one POST may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// How long the sender lets events gather after a batch short of full (or once the spool has
/// new events after being caught up): under load it posts a batch per linger rather than one
/// per few events, which saves the proxy and the collector a round of work per batch (a
/// spool read, a POST, a batch stored, the delivery position written to disk).
const LINGER: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The collector's address or TLS settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum SenderError {
    /// The URL does not parse or is not http(s).
    #[error(
        "--audit-url {url:?}: {reason}; give the collector's base URL, e.g. https://streamward-collector.streamward-system:8443"
    )]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The CA certificates are unreadable or hold no certificate.
    #[error("{origin}: {reason}")]
    Ca {
        /// Where they came from (`--audit-ca FILE` or `--audit-ca-pem`).
        origin: String,
        /// What is wrong.
        reason: String,
    },
}

/// Which CA certificates the collector's TLS certificate must chain to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CollectorCa {
    /// The system's roots.
    #[default]
    System,
    /// The PEM certificates in a file.
    File(PathBuf),
    /// PEM certificates given inline. The injected proxy gets the collector's CA this way: a CA
    /// certificate is public, and no object in the workload's namespace holds it.
    Pem(String),
}

impl CollectorCa {
    /// The trusted roots, or why there are none.
    fn roots(&self) -> Result<rustls::RootCertStore, SenderError> {
        let mut roots = rustls::RootCertStore::empty();
        let (origin, pem) = match self {
            CollectorCa::System => {
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
                return Ok(roots);
            }
            CollectorCa::File(path) => {
                let origin = format!("--audit-ca {}", path.display());
                match std::fs::read(path) {
                    Ok(pem) => (origin, pem),
                    Err(e) => {
                        return Err(SenderError::Ca {
                            origin,
                            reason: e.to_string(),
                        });
                    }
                }
            }
            CollectorCa::Pem(pem) => ("--audit-ca-pem".to_owned(), pem.clone().into_bytes()),
        };
        let ca = |reason: String| SenderError::Ca {
            origin: origin.clone(),
            reason,
        };
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| ca(e.to_string()))?;
            roots.add(cert).map_err(|e| ca(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(ca("no CERTIFICATE block found".into()));
        }
        Ok(roots)
    }
}

/// The collector: where to post, with which token, over which TLS.
pub struct Collector {
    uri: Uri,
    token_file: PathBuf,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Collector {
    /// The collector at base URL `url` (batches go to `url` + [`INGEST_PATH`]), trusting the
    /// CA certificates `ca` for `https`.
    pub fn new(url: &str, token_file: PathBuf, ca: &CollectorCa) -> Result<Collector, SenderError> {
        let bad = |reason: &str| SenderError::Url {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let uri: Uri = format!("{}{INGEST_PATH}", url.trim_end_matches('/'))
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        match uri.scheme_str() {
            Some("http" | "https") => {}
            _ => return Err(bad("the scheme must be http or https")),
        }
        if uri.host().is_none() {
            return Err(bad("no host"));
        }
        let roots = ca.roots()?;
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Collector {
            uri,
            token_file,
            client,
        })
    }

    /// Posts one batch and says what to do with it.
    async fn post(&self, body: Vec<u8>) -> Answer {
        let token = match tokio::fs::read_to_string(&self.token_file).await {
            Ok(text) if !text.trim().is_empty() => text.trim().to_string(),
            Ok(_) => {
                return Answer::Retry(AuditDeliveryError::Token, "the token file is empty".into());
            }
            Err(error) => {
                return Answer::Retry(
                    AuditDeliveryError::Token,
                    format!(
                        "reading the token file {}: {error}",
                        self.token_file.display()
                    ),
                );
            }
        };
        let request = Request::post(self.uri.clone())
            .header(header::CONTENT_TYPE, BATCH_CONTENT_TYPE)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Full::new(Bytes::from(body)));
        let request = match request {
            Ok(request) => request,
            // Only a token with characters a header cannot carry gets here.
            Err(_) => {
                return Answer::Retry(
                    AuditDeliveryError::Token,
                    "the token holds characters an HTTP header cannot carry".into(),
                );
            }
        };
        let response = match tokio::time::timeout(REQUEST_TIMEOUT, self.client.request(request))
            .await
        {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => return Answer::Retry(AuditDeliveryError::Connect, error.to_string()),
            Err(_) => {
                return Answer::Retry(AuditDeliveryError::Connect, "no answer within 30 s".into());
            }
        };
        let status = response.status();
        // The collector's message, for the log (bounded: it is not ours to trust).
        let text = match tokio::time::timeout(
            REQUEST_TIMEOUT,
            Limited::new(response.into_body(), 4096).collect(),
        )
        .await
        {
            Ok(Ok(body)) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
            _ => String::new(),
        };
        answer(status, &text)
    }
}

/// What the collector's answer means for the batch.
fn answer(status: StatusCode, text: &str) -> Answer {
    match status {
        StatusCode::OK => Answer::Stored,
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Answer::Retry(
            AuditDeliveryError::Unauthorized,
            format!("{status}: {text}"),
        ),
        StatusCode::BAD_REQUEST => Answer::Rejected(format!("{status}: {text}")),
        StatusCode::PAYLOAD_TOO_LARGE => Answer::TooLarge,
        // The rest of the batch is stored; the ids it names hold other events there for good,
        // so sending them again can never succeed and would hold up every later event.
        StatusCode::CONFLICT => Answer::Conflict {
            refused: serde_json::from_str::<serde_json::Value>(text)
                .ok()
                .and_then(|body| Some(body.get("conflicts")?.as_array()?.len() as u64))
                .unwrap_or(1)
                .max(1),
            reason: text.chars().take(512).collect(),
        },
        _ => Answer::Retry(AuditDeliveryError::Server, format!("{status}: {text}")),
    }
}

/// What became of one attempt.
#[derive(Debug, PartialEq)]
enum Answer {
    Stored,
    Rejected(String),
    TooLarge,
    /// Stored, except `refused` events whose ids the collector holds with other content.
    Conflict {
        refused: u64,
        reason: String,
    },
    Retry(AuditDeliveryError, String),
}

/// Runs a blocking spool operation off the async workers.
async fn with_spool<T: Send + 'static>(
    spool: &Arc<Mutex<Spool>>,
    f: impl FnOnce(&mut Spool) -> T + Send + 'static,
) -> Option<T> {
    let spool = spool.clone();
    tokio::task::spawn_blocking(move || {
        let mut spool = spool.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut spool)
    })
    .await
    .ok()
}

/// Delivers the spool, in order, until `stop` is cancelled.
pub async fn deliver(
    spool: Arc<Mutex<Spool>>,
    appended: Arc<Notify>,
    collector: Collector,
    metrics: Arc<Metrics>,
    gate: Arc<super::AuditGate>,
    stop: CancellationToken,
) {
    let mut backoff = BACKOFF_MIN;
    let mut max_events = MAX_BATCH_EVENTS;
    let mut failing = false;
    let pause = |delay: Duration| {
        let stop = stop.clone();
        async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(delay) => {}
            }
        }
    };
    while !stop.is_cancelled() {
        let read = with_spool(&spool, move |spool| {
            let Some((path, from, len)) = spool.next_read()? else {
                return Ok(None);
            };
            spool::read_batch(&path, from, len, max_events)
        })
        .await;
        let batch: Batch = match read {
            Some(Ok(Some(batch))) => batch,
            Some(Ok(None)) => {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = appended.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                pause(LINGER).await;
                continue;
            }
            Some(Err(error)) => {
                tracing::error!(%error, "reading the audit spool failed");
                pause(BACKOFF_MAX).await;
                continue;
            }
            None => return, // the blocking pool is shutting down
        };
        let events = batch.events;
        // A batch short of the bounds: the spool had no more to send yet.
        let short = events < max_events && batch.body.len() < spool::MAX_BATCH_BYTES / 2;
        match collector.post(batch.body).await {
            Answer::Stored => {
                if failing {
                    tracing::info!("the audit collector takes events again");
                    failing = false;
                }
                metrics.audit_events(AuditOutcome::Delivered, events as u64);
                acknowledge(&spool, batch.end, 0, &metrics, &gate).await;
                backoff = BACKOFF_MIN;
                max_events = MAX_BATCH_EVENTS;
                if short {
                    pause(LINGER).await;
                }
            }
            Answer::TooLarge if events > 1 => {
                max_events = (events / 2).max(1);
                tracing::warn!(
                    events,
                    retry_with = max_events,
                    "the audit collector refused a batch as too large; halving it"
                );
            }
            Answer::TooLarge => {
                metrics.audit_delivery_error(AuditDeliveryError::Rejected);
                tracing::error!(
                    "the audit collector refused a single event as too large: it is dropped and the loss reported"
                );
                acknowledge(&spool, batch.end, 1, &metrics, &gate).await;
            }
            Answer::Rejected(reason) => {
                metrics.audit_delivery_error(AuditDeliveryError::Rejected);
                tracing::error!(%reason, events, "the audit collector refused a batch as unreadable: it is dropped and the loss reported");
                acknowledge(&spool, batch.end, events as u64, &metrics, &gate).await;
            }
            Answer::Conflict { refused, reason } => {
                metrics.audit_delivery_error(AuditDeliveryError::Rejected);
                let refused = refused.min(events as u64);
                metrics.audit_events(AuditOutcome::Delivered, events as u64 - refused);
                tracing::error!(
                    %reason,
                    refused,
                    "the audit collector already holds other events under some of these ids \
                     (someone else sent events with this proxy's identity): the rest were \
                     stored, those are reported as lost"
                );
                acknowledge(&spool, batch.end, refused, &metrics, &gate).await;
                backoff = BACKOFF_MIN;
            }
            Answer::Retry(kind, reason) => {
                metrics.audit_delivery_error(kind);
                if !failing {
                    tracing::warn!(?kind, %reason, "audit events cannot be delivered now; they stay in the spool and are retried");
                    failing = true;
                } else {
                    tracing::debug!(?kind, %reason, "audit delivery retry failed");
                }
                pause(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Moves the spool past a batch; `dropped` of its events were lost rather than stored.
async fn acknowledge(
    spool: &Arc<Mutex<Spool>>,
    end: spool::Position,
    dropped: u64,
    metrics: &Arc<Metrics>,
    gate: &Arc<super::AuditGate>,
) {
    let metrics = metrics.clone();
    let gate = gate.clone();
    let done = with_spool(spool, move |spool| {
        if dropped > 0 {
            metrics.audit_events(AuditOutcome::Dropped, dropped);
            spool.note_dropped(dropped, Timestamp::now());
        }
        let result = spool.ack(end);
        metrics.audit_spool_bytes(spool.bytes());
        gate.spool_bytes(spool.bytes());
        result
    })
    .await;
    if let Some(Err(error)) = done {
        // The position is only remembered in memory: a restart may deliver this batch again,
        // which the collector stores once.
        tracing::warn!(%error, "recording the audit delivery position failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conflict_is_final_for_the_events_it_names_and_only_those() {
        let body = r#"{"error":"events [\"s:3\",\"s:4\"] were stored before with other content","accepted":6,"duplicates":0,"conflicts":["s:3","s:4"]}"#;
        match answer(StatusCode::CONFLICT, body) {
            Answer::Conflict { refused, reason } => {
                assert_eq!(refused, 2);
                assert!(reason.contains("stored before"));
            }
            other => panic!("{other:?}"),
        }
        // An unreadable conflict still moves on, counting one loss.
        assert!(matches!(
            answer(StatusCode::CONFLICT, "<html>"),
            Answer::Conflict { refused: 1, .. }
        ));
        assert!(matches!(
            answer(StatusCode::BAD_GATEWAY, ""),
            Answer::Retry(AuditDeliveryError::Server, _)
        ));
        assert_eq!(answer(StatusCode::OK, ""), Answer::Stored);
    }
}

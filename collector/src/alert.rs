//! Alerts: webhooks that hear about stored events matching their filter (denials, DryRun
//! refusals, approvals, masking, events the proxies dropped) and about events refused as
//! rewrites of stored ones (conflicts), each body signed with HMAC-SHA-256, retried with
//! backoff, and rate limited per sink.
//!
//! Alerts follow the store: an event alerts only once it is durably stored, and a sink that is
//! down or slow never holds up ingest (its queue is bounded; what does not fit is counted).
//!
//! The alerts file (`--alerts FILE`, YAML):
//!
//! ```yaml
//! sinks:
//!   - name: secops
//!     url: https://hooks.example.com/streamward
//!     secretFile: /etc/streamward/secops-hmac   # the HMAC key (its text, trimmed)
//!     on: [deny, wouldDeny, approval, masking, dropped, conflict]
//!     maxPerMinute: 60        # default 60
//!     retries: 5              # default 5; backoff 0.2 s doubling up to 10 s
//! caFile: /etc/ssl/extra-ca.pem   # optional, trusted besides the system roots
//! ```
//!
//! Each alert is `POST`ed as JSON `{"sink", "reasons", "event"}` (an event of a held request
//! adds `"approval": {"step", "request", "who", "what", "why", "approvers", "comment",
//! "approve"}`, `approve` being the command that approves it while it waits; a conflict adds
//! `"conflict": {"identity", "storedSha256", "refusedSha256"}`, and `event` is the refused one) with
//! `X-Streamward-Signature: sha256=<hex HMAC-SHA-256 of the body with the sink's secret>` and
//! `X-Streamward-Event-Id` (a retried alert may arrive twice; the id tells).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use hmac::{KeyInit, Mac};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use sha2::Sha256;
use streamward_api::audit::{ApprovalStep, AuditEvent, EventData};
use tokio::sync::mpsc;

use crate::metrics::{AlertOutcome, Metrics};
use crate::writer::{Conflicting, Notice};

/// The header carrying the body's signature.
pub const SIGNATURE_HEADER: &str = "x-streamward-signature";

/// What makes an event alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Reason {
    /// The proxy refused (all or part of) the request.
    Deny,
    /// A DryRun policy would have refused it.
    WouldDeny,
    /// The request needed an approval.
    Approval,
    /// Fields were masked.
    Masking,
    /// A proxy reports events it had to drop.
    Dropped,
    /// A workload sent an id it had stored before with other content (refused with 409):
    /// a proxy rewriting history, or someone else holding its token.
    Conflict,
}

/// Why `event` alerts, if it does.
pub fn reasons(event: &AuditEvent) -> Vec<Reason> {
    let mut reasons = Vec::new();
    match &event.data {
        EventData::Dropped(_) => reasons.push(Reason::Dropped),
        // Reads of the audit trail are audited, not alerted on.
        EventData::Query(_) => {}
        EventData::Request(record) => {
            let effect = record.decision.effect.as_str();
            if record.decision.dry_run {
                reasons.push(Reason::WouldDeny);
            } else if effect == "Deny" || effect == "Partial" {
                reasons.push(Reason::Deny);
            }
            if effect == "RequireApproval" || record.approval.is_some() {
                reasons.push(Reason::Approval);
            }
            if !record.masking.is_empty() {
                reasons.push(Reason::Masking);
            }
        }
    }
    reasons
}

/// For an event of a held request, what a person deciding needs in one place: who asked, for
/// what, under which rule, where it stands, and (while it waits) the command that approves it.
pub fn approval_summary(event: &AuditEvent) -> Option<serde_json::Value> {
    let EventData::Request(record) = &event.data else {
        return None;
    };
    let approval = record.approval.as_ref()?;
    let identity = &record.identity;
    let mut who = format!("{}/{}", identity.namespace, identity.service_account);
    if let Some(pod) = &identity.pod {
        who.push_str(&format!(" (pod {pod})"));
    }
    if let Some(user) = &identity.user {
        who.push_str(&format!(" as {user}"));
    }
    let what: Vec<String> = record
        .resources
        .iter()
        .map(|r| format!("{} on {} {}", r.operation, r.resource_type, r.name))
        .collect();
    let mut summary = serde_json::json!({
        "step": approval.step,
        "request": approval.request,
        "who": who,
        "what": format!("{} ({})", what.join(", "), record.request.api_key),
        "why": record.decision.rule,
    });
    if !approval.approvers.is_empty() {
        summary["approvers"] = serde_json::json!(approval.approvers);
    }
    if let Some(comment) = &approval.comment {
        summary["comment"] = serde_json::json!(comment);
    }
    let waiting = matches!(
        approval.step,
        ApprovalStep::Requested | ApprovalStep::Pending
    );
    if waiting && let Some((namespace, name)) = approval.request.split_once('/') {
        summary["approve"] =
            serde_json::json!(streamward_api::approval::approve_command(namespace, name));
    }
    Some(summary)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct File {
    sinks: Vec<SinkConfig>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SinkConfig {
    name: String,
    url: String,
    secret_file: PathBuf,
    on: Vec<Reason>,
    #[serde(default = "default_per_minute")]
    max_per_minute: u32,
    #[serde(default = "default_retries")]
    retries: u32,
}

fn default_per_minute() -> u32 {
    60
}

fn default_retries() -> u32 {
    5
}

/// A checked sink.
struct Sink {
    name: String,
    url: http::Uri,
    secret: Vec<u8>,
    on: Vec<Reason>,
    max_per_minute: u32,
    retries: u32,
}

/// The alert sinks of an alerts file, checked.
pub struct Alerts {
    sinks: Vec<Sink>,
    ca_file: Option<PathBuf>,
}

impl Alerts {
    /// Reads and checks an alerts file (and the secrets it names).
    pub fn read(path: &Path) -> Result<Alerts> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the alerts file {}", path.display()))?;
        let file: File = serde_yaml::from_str(&text)
            .with_context(|| format!("reading the alerts file {}", path.display()))?;
        let mut sinks = Vec::new();
        for sink in file.sinks {
            let what = || format!("alert sink {:?} in {}", sink.name, path.display());
            let url: http::Uri = sink.url.parse().with_context(what)?;
            if !matches!(url.scheme_str(), Some("http" | "https")) || url.host().is_none() {
                bail!("{}: the url must be http(s)://host/…", what());
            }
            if sink.on.is_empty() {
                bail!(
                    "{}: `on` names no reason (deny, wouldDeny, approval, masking, dropped, \
                     conflict)",
                    what()
                );
            }
            if sink.max_per_minute == 0 {
                bail!("{}: maxPerMinute must be at least 1", what());
            }
            let secret = std::fs::read_to_string(&sink.secret_file)
                .with_context(|| format!("{}: reading secretFile", what()))?
                .trim()
                .as_bytes()
                .to_vec();
            if secret.len() < 16 {
                bail!("{}: the HMAC secret must have at least 16 bytes", what());
            }
            sinks.push(Sink {
                name: sink.name,
                url,
                secret,
                on: sink.on,
                max_per_minute: sink.max_per_minute,
                retries: sink.retries,
            });
        }
        Ok(Alerts {
            sinks,
            ca_file: file.ca_file,
        })
    }

    /// Starts a delivery task per sink and returns the queue the writer's notices go to.
    pub fn start(self, metrics: Arc<Metrics>) -> Result<mpsc::Sender<Notice>> {
        let client = http_client(self.ca_file.as_deref())?;
        let mut queues = Vec::new();
        for sink in self.sinks {
            let (tx, rx) = mpsc::channel(1024);
            let bucket = Bucket::new(sink.max_per_minute);
            queues.push((sink.name.clone(), sink.on.clone(), bucket, tx));
            tokio::spawn(deliver(Arc::new(sink), rx, client.clone(), metrics.clone()));
        }
        let (notices, mut received) = mpsc::channel::<Notice>(4096);
        tokio::spawn(async move {
            // A proxy retries a refused batch, so the same conflict comes back until it gives
            // up: alert it once.
            let mut alerted: HashSet<(String, String, String)> = HashSet::new();
            while let Some(notice) = received.recv().await {
                let (event, all, conflict) = match notice {
                    Notice::Stored(event) => {
                        let all = reasons(&event);
                        (event, all, None)
                    }
                    Notice::Conflict(conflict) => {
                        let key = (
                            conflict.identity.clone(),
                            conflict.event.id.clone(),
                            conflict.refused_sha256.clone(),
                        );
                        if alerted.len() >= 10_000 {
                            alerted.clear();
                        }
                        if !alerted.insert(key) {
                            continue;
                        }
                        let event = Arc::new(conflict.event.clone());
                        (event, vec![Reason::Conflict], Some(conflict))
                    }
                };
                if all.is_empty() {
                    continue;
                }
                for (name, on, bucket, queue) in &mut queues {
                    let matched: Vec<Reason> =
                        all.iter().copied().filter(|r| on.contains(r)).collect();
                    if matched.is_empty() {
                        continue;
                    }
                    if !bucket.take() {
                        metrics.alert(name, AlertOutcome::RateLimited);
                        continue;
                    }
                    let alert = (event.clone(), matched, conflict.clone());
                    if queue.try_send(alert).is_err() {
                        metrics.alert(name, AlertOutcome::Dropped);
                    }
                }
            }
        });
        Ok(notices)
    }
}

/// One alert for one sink: the event, why, and for a conflict what it conflicts with.
type Alert = (Arc<AuditEvent>, Vec<Reason>, Option<Arc<Conflicting>>);

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

fn http_client(ca_file: Option<&Path>) -> Result<HttpClient> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .with_context(|| format!("reading the alerts caFile {}", path.display()))?;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            roots
                .add(cert.with_context(|| format!("reading {}", path.display()))?)
                .with_context(|| format!("adding a CA from {}", path.display()))?;
        }
    }
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// A token bucket: `per_minute` alerts a minute, bursts up to the same number.
struct Bucket {
    tokens: f64,
    capacity: f64,
    per_second: f64,
    last: Instant,
}

impl Bucket {
    fn new(per_minute: u32) -> Bucket {
        Bucket {
            tokens: f64::from(per_minute),
            capacity: f64::from(per_minute),
            per_second: f64::from(per_minute) / 60.0,
            last: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The body of an alert and its signature header value.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn deliver(
    sink: Arc<Sink>,
    mut queue: mpsc::Receiver<Alert>,
    client: HttpClient,
    metrics: Arc<Metrics>,
) {
    while let Some((event, reasons, conflict)) = queue.recv().await {
        let mut body = serde_json::json!({
            "sink": sink.name,
            "reasons": reasons,
            "event": &*event,
        });
        if let Some(approval) = approval_summary(&event) {
            body["approval"] = approval;
        }
        if let Some(conflict) = conflict {
            body["conflict"] = serde_json::json!({
                "identity": conflict.identity,
                "storedSha256": conflict.stored_sha256,
                "refusedSha256": conflict.refused_sha256,
            });
        }
        let body = Bytes::from(body.to_string());
        let signature = sign(&sink.secret, &body);
        let mut backoff = Duration::from_millis(200);
        let mut outcome = AlertOutcome::Failed;
        for attempt in 0..=sink.retries {
            if attempt > 0 {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            let request = http::Request::post(sink.url.clone())
                .header(http::header::CONTENT_TYPE, "application/json")
                .header(http::header::USER_AGENT, "streamward-collector")
                .header(SIGNATURE_HEADER, &signature)
                .header("x-streamward-event-id", &event.id)
                .body(Full::new(body.clone()));
            let request = match request {
                Ok(request) => request,
                Err(error) => {
                    tracing::error!(sink = %sink.name, %error, "building an alert failed");
                    break;
                }
            };
            let status = match tokio::time::timeout(
                Duration::from_secs(10),
                client.request(request),
            )
            .await
            {
                Ok(Ok(response)) => response.status(),
                Ok(Err(error)) => {
                    tracing::warn!(sink = %sink.name, attempt, %error, "alert not delivered; retrying");
                    continue;
                }
                Err(_) => {
                    tracing::warn!(sink = %sink.name, attempt, "alert timed out; retrying");
                    continue;
                }
            };
            if status.is_success() {
                outcome = AlertOutcome::Delivered;
                break;
            }
            if status.is_client_error() && status != http::StatusCode::TOO_MANY_REQUESTS {
                tracing::error!(sink = %sink.name, %status, event = %event.id, "the alert sink refused an alert");
                break;
            }
            tracing::warn!(sink = %sink.name, attempt, %status, "alert sink answered an error; retrying");
        }
        if outcome == AlertOutcome::Failed {
            tracing::error!(sink = %sink.name, event = %event.id, "giving up on an alert");
        }
        metrics.alert(&sink.name, outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_lets_a_burst_through_then_holds() {
        let mut bucket = Bucket::new(3);
        assert!(bucket.take() && bucket.take() && bucket.take());
        assert!(!bucket.take());
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}

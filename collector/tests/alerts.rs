//! Webhook alerts from the real collector process to a receiver in the test: signed with
//! HMAC, retried after a 500, chosen by filter, rate limited.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::{About, Collector, event};
use hmac::{KeyInit, Mac};
use streamward_api::audit::{Approval, ApprovalStep, AuditEvent, EventData};
use streamward_e2e::{net, wait_for};

const SECOPS_SECRET: &str = "secops-hmac-secret-0123456789";
const PII_SECRET: &str = "pii-hmac-secret-0123456789abc";

#[derive(Default)]
struct Received {
    /// (path, signature header, event id header, body)
    calls: Vec<(String, String, String, String)>,
    /// Answer 500 to this many more calls on /secops.
    fail_secops: usize,
}

type Shared = Arc<Mutex<Received>>;

async fn hook(
    State(shared): State<Shared>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let mut received = shared.lock().unwrap();
    received.calls.push((
        uri.path().to_string(),
        header("x-streamward-signature"),
        header("x-streamward-event-id"),
        body,
    ));
    if uri.path() == "/secops" && received.fail_secops > 0 {
        received.fail_secops -= 1;
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    StatusCode::NO_CONTENT
}

/// A webhook receiver on 127.0.0.1, in its own runtime thread.
fn receiver(shared: Shared) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let app = axum::Router::new()
                .route("/{sink}", axum::routing::post(hook))
                .with_state(shared);
            axum::serve(listener, app).await.unwrap();
        });
    });
    addr
}

fn hmac_hex(secret: &str, body: &str) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn metric(collector: &Collector, line_start: &str) -> Option<f64> {
    let (_, text) = net::http_get(&collector.addr, "/metrics").ok()?;
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn alerts_reach_the_webhook_signed_retried_filtered_and_rate_limited() {
    let shared: Shared = Arc::new(Mutex::new(Received {
        fail_secops: 1,
        ..Received::default()
    }));
    let hooks = receiver(shared.clone());
    let dir = streamward_e2e::cache::run_dir("collector-alerts").unwrap();
    let secret = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("{text}\n")).unwrap();
        path.display().to_string()
    };
    let alerts = dir.path().join("alerts.yaml");
    std::fs::write(
        &alerts,
        format!(
            "sinks:\n\
             - name: secops\n  url: http://{hooks}/secops\n  secretFile: {}\n  on: [deny]\n\
             - name: pii\n  url: http://{hooks}/pii\n  secretFile: {}\n  on: [masking, wouldDeny]\n  maxPerMinute: 1\n",
            secret("secops.key", SECOPS_SECRET),
            secret("pii.key", PII_SECRET),
        ),
    )
    .unwrap();
    let collector = Collector::start_in(dir.path(), &["--alerts", alerts.to_str().unwrap()]);

    let deny = About {
        effect: "Deny",
        ..About::default()
    };
    let masked = About {
        masked: 3,
        ..About::default()
    };
    let dry_run = About {
        dry_run: true,
        ..About::default()
    };
    collector.send(&[
        event("a", 1, &About::default()),
        event("a", 2, &deny),
        event("b", 1, &masked),
        event("b", 2, &masked),
        event("b", 3, &dry_run),
    ]);

    // secops: the 500, then the retry that lands.
    wait_for("the retried deny alert", Duration::from_secs(20), || {
        Ok(metric(
            &collector,
            "streamward_collector_alerts_total{sink=\"secops\",outcome=\"Delivered\"}",
        )
        .filter(|n| *n >= 1.0))
    })
    .unwrap();
    // pii: one delivered, two held back by the limit of one a minute.
    wait_for("the rate limit", Duration::from_secs(20), || {
        Ok(metric(
            &collector,
            "streamward_collector_alerts_total{sink=\"pii\",outcome=\"RateLimited\"}",
        )
        .filter(|n| *n >= 2.0))
    })
    .unwrap();
    wait_for("the pii alert", Duration::from_secs(20), || {
        Ok(metric(
            &collector,
            "streamward_collector_alerts_total{sink=\"pii\",outcome=\"Delivered\"}",
        )
        .filter(|n| *n >= 1.0))
    })
    .unwrap();

    let received = shared.lock().unwrap();
    let secops: Vec<_> = received.calls.iter().filter(|c| c.0 == "/secops").collect();
    let pii: Vec<_> = received.calls.iter().filter(|c| c.0 == "/pii").collect();
    assert_eq!(secops.len(), 2, "one 500 and one retry: {secops:?}");
    assert_eq!(secops[0].3, secops[1].3, "the retry sends the same body");
    for (_, signature, id, body) in &secops {
        assert_eq!(*signature, hmac_hex(SECOPS_SECRET, body));
        assert_ne!(*signature, hmac_hex(PII_SECRET, body));
        assert_eq!(id, "a:2");
        let alert: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(alert["sink"], "secops");
        assert_eq!(alert["reasons"], serde_json::json!(["deny"]));
        assert_eq!(alert["event"]["data"]["decision"]["effect"], "Deny");
    }
    assert_eq!(pii.len(), 1, "{pii:?}");
    let (_, signature, id, body) = pii[0];
    assert_eq!(*signature, hmac_hex(PII_SECRET, body));
    assert_eq!(id, "b:1");
    // A body changed in transit no longer matches its signature.
    assert_ne!(
        *signature,
        hmac_hex(PII_SECRET, &body.replace("b:1", "b:9"))
    );
}

/// An event of a held request at `step`.
fn held(sequence: u64, step: ApprovalStep, approvers: &[&str]) -> AuditEvent {
    let mut event = event("held", sequence, &About::default());
    let EventData::Request(record) = &mut event.data else {
        unreachable!("a request event")
    };
    record.request.api_key = "DeleteTopics".into();
    record.resources[0].operation = "Delete".into();
    record.decision.effect = "RequireApproval".into();
    record.decision.rule = "StreamPolicy/janitor rule deletes-need-two".into();
    record.approval = Some(Approval {
        request: "shop/orders-app-deletetopics-x7k2p".into(),
        step,
        approvers: approvers.iter().map(|a| (*a).to_string()).collect(),
        comment: (step == ApprovalStep::Denied).then(|| "not during the freeze".into()),
    });
    event
}

#[test]
fn approvers_hear_of_a_held_request_with_the_command_that_approves_it_and_of_its_decision() {
    let shared: Shared = Arc::default();
    let hooks = receiver(shared.clone());
    let dir = streamward_e2e::cache::run_dir("collector-approval-alerts").unwrap();
    let key = dir.path().join("approvers.key");
    std::fs::write(&key, SECOPS_SECRET).unwrap();
    let alerts = dir.path().join("alerts.yaml");
    std::fs::write(
        &alerts,
        format!(
            "sinks:\n- name: approvers\n  url: http://{hooks}/approvers\n  secretFile: {}\n  on: [approval]\n",
            key.display()
        ),
    )
    .unwrap();
    let collector = Collector::start_in(dir.path(), &["--alerts", alerts.to_str().unwrap()]);
    collector.send(&[
        event("held", 1, &About::default()),
        held(2, ApprovalStep::Requested, &[]),
        held(3, ApprovalStep::Denied, &["carol"]),
    ]);
    let bodies = wait_for("both approval alerts", Duration::from_secs(20), || {
        let received = shared.lock().unwrap();
        let bodies: Vec<serde_json::Value> = received
            .calls
            .iter()
            .map(|call| serde_json::from_str(&call.3).unwrap())
            .collect();
        Ok((bodies.len() >= 2).then_some(bodies))
    })
    .unwrap();
    assert_eq!(
        bodies.len(),
        2,
        "only the held request's events: {bodies:?}"
    );
    let requested = &bodies[0]["approval"];
    assert_eq!(requested["step"], "Requested");
    assert_eq!(requested["request"], "shop/orders-app-deletetopics-x7k2p");
    assert_eq!(requested["who"], "shop/orders-app (pod orders-7d9f)");
    assert_eq!(
        requested["what"],
        "Delete on Topic orders.created (DeleteTopics)"
    );
    assert_eq!(
        requested["why"],
        "StreamPolicy/janitor rule deletes-need-two"
    );
    let approve = requested["approve"].as_str().unwrap();
    assert!(
        approve.contains("name: orders-app-deletetopics-x7k2p")
            && approve.ends_with("kubectl -n shop create -f -"),
        "{approve}"
    );
    let denied = &bodies[1]["approval"];
    assert_eq!(denied["step"], "Denied");
    assert_eq!(denied["approvers"], serde_json::json!(["carol"]));
    assert_eq!(denied["comment"], "not during the freeze");
    assert!(denied.get("approve").is_none(), "{denied}");
}

#[test]
fn a_bad_alerts_file_stops_the_collector_with_a_clear_error() {
    let dir = streamward_e2e::cache::run_dir("collector-alerts-bad").unwrap();
    let alerts = dir.path().join("alerts.yaml");
    std::fs::write(
        &alerts,
        "sinks:\n- name: x\n  url: ftp://example.com/\n  secretFile: /nonexistent\n  on: [deny]\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("tokens"), format!("{}\n", common::TOKEN)).unwrap();
    let output = common::cli(&[
        "serve",
        "--data",
        dir.path().join("data").to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--token-file",
        dir.path().join("tokens").to_str().unwrap(),
        "--alerts",
        alerts.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("alert sink \"x\""), "{stderr}");
    assert!(stderr.contains("http(s)"), "{stderr}");
}

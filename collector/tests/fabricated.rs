//! Fabricated events against the real collector process: one workload must not be able to
//! make another's events disappear by posting their ids first, and an id the store already
//! holds with other content is refused and alerted, while an identical retry stays harmless.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::{About, Collector, event, ids, query};
use hmac::{KeyInit, Mac};
use streamward_api::audit::AuditEvent;
use streamward_e2e::{net, wait_for};

/// The victim's proxy token, bound to `shop/orders-app`.
const VICTIM: &str = "victim-proxy-token-0123456789";
/// Another workload's token, bound to `shop/billing`.
const ATTACKER: &str = "attacker-proxy-token-0123456789";
const SINK_SECRET: &str = "integrity-hmac-secret-0123456789";

fn billing() -> About {
    About {
        service_account: "billing",
        ..About::default()
    }
}

/// A collector whose token file binds [`VICTIM`] and [`ATTACKER`] to their workloads.
fn start(dir: &Path, extra: &[&str]) -> Collector {
    let tokens = dir.join("workload-tokens");
    std::fs::write(
        &tokens,
        format!("{VICTIM} shop/orders-app\n{ATTACKER} shop/billing\n"),
    )
    .unwrap();
    let mut args = vec!["--token-file".to_string(), tokens.display().to_string()];
    args.extend(extra.iter().map(|a| a.to_string()));
    Collector::start_with(dir, &args, &[])
}

fn post(collector: &Collector, token: &str, events: &[AuditEvent]) -> (u16, serde_json::Value) {
    let (status, body) = collector.post(Some(token), &serde_json::to_string(events).unwrap());
    let answer = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("answer {status} is not JSON ({e}): {body}"));
    (status, answer)
}

fn counts(answer: &serde_json::Value) -> (u64, u64) {
    (
        answer["accepted"].as_u64().unwrap_or(u64::MAX),
        answer["duplicates"].as_u64().unwrap_or(u64::MAX),
    )
}

#[test]
fn another_workload_cannot_pre_post_a_victims_event_ids_to_get_them_dropped() {
    let run = streamward_e2e::cache::run_dir("collector-prepost").unwrap();
    let collector = start(run.path(), &[]);
    let denied = About {
        effect: "Deny",
        ..About::default()
    };
    let real: Vec<AuditEvent> = (1..=3).map(|n| event("victim", n, &denied)).collect();

    // Posting the victim's events as the victim is refused outright.
    let forged: Vec<AuditEvent> = (1..=3)
        .map(|n| event("victim", n, &About::default()))
        .collect();
    let (status, answer) = post(&collector, ATTACKER, &forged);
    assert_eq!(status, 403, "{answer}");

    // The same ids under the attacker's own identity are its own (attributed) record…
    let squatted: Vec<AuditEvent> = (1..=3).map(|n| event("victim", n, &billing())).collect();
    let (status, answer) = post(&collector, ATTACKER, &squatted);
    assert_eq!(status, 200, "{answer}");

    // …and do not shadow the victim's real events, which are stored when they arrive.
    let (status, answer) = post(&collector, VICTIM, &real);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        counts(&answer),
        (3, 0),
        "the victim's events were taken for duplicates"
    );
    let stored = query(
        &collector.data,
        &["--service-account", "orders-app", "--format", "ndjson"],
    );
    assert_eq!(ids(&stored), ["victim:1", "victim:2", "victim:3"]);
    assert!(
        stored
            .lines()
            .all(|l| l.contains("\"effect\":\"Deny\"") && !l.contains("\"billing\"")),
        "{stored}"
    );
    let output = common::cli(&[
        "verify",
        "--data",
        collector.data.to_str().unwrap(),
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["gaps"], serde_json::json!([]), "{report:#}");
}

#[derive(Default)]
struct Received {
    /// (signature header, event id header, body)
    calls: Vec<(String, String, String)>,
}

type Shared = Arc<Mutex<Received>>;

async fn hook(State(shared): State<Shared>, headers: HeaderMap, body: String) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    shared.lock().unwrap().calls.push((
        header("x-streamward-signature"),
        header("x-streamward-event-id"),
        body,
    ));
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
                .route("/integrity", axum::routing::post(hook))
                .with_state(shared);
            axum::serve(listener, app).await.unwrap();
        });
    });
    addr
}

fn metric(collector: &Collector, name: &str) -> f64 {
    let (_, text) = net::http_get(&collector.addr, "/metrics").unwrap();
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn an_id_stored_with_other_content_is_refused_and_alerted_and_retries_are_stored_once() {
    let shared: Shared = Arc::default();
    let hooks = receiver(shared.clone());
    let run = streamward_e2e::cache::run_dir("collector-conflict").unwrap();
    let dir = run.path();
    let secret = dir.join("integrity.key");
    std::fs::write(&secret, format!("{SINK_SECRET}\n")).unwrap();
    let alerts = dir.join("alerts.yaml");
    std::fs::write(
        &alerts,
        format!(
            "sinks:\n- name: integrity\n  url: http://{hooks}/integrity\n  secretFile: {}\n  on: [conflict]\n",
            secret.display()
        ),
    )
    .unwrap();
    let flags = ["--alerts", alerts.to_str().unwrap()];
    let mut collector = start(dir, &flags);

    let denied = About {
        effect: "Deny",
        ..About::default()
    };
    let first = [event("s", 1, &denied), event("s", 2, &denied)];
    assert_eq!(counts(&post(&collector, VICTIM, &first).1), (2, 0));
    // A retry (the proxy never saw the 200) is idempotent.
    let (status, answer) = post(&collector, VICTIM, &first);
    assert_eq!((status, counts(&answer)), (200, (0, 2)), "{answer}");

    // The same id with a rewritten decision is refused; the rest of the batch is stored.
    let mut rewritten = event("s", 2, &About::default());
    rewritten.time = first[1].time;
    let (status, answer) = post(
        &collector,
        VICTIM,
        &[rewritten.clone(), event("s", 3, &denied)],
    );
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["conflicts"], serde_json::json!(["s:2"]), "{answer}");
    assert_eq!(counts(&answer), (1, 0), "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("other content"),
        "{answer}"
    );

    wait_for("the conflict alert", Duration::from_secs(20), || {
        Ok((!shared.lock().unwrap().calls.is_empty()).then_some(()))
    })
    .unwrap();
    {
        let received = shared.lock().unwrap();
        let (signature, id, body) = &received.calls[0];
        assert_eq!(id, "s:2");
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SINK_SECRET.as_bytes()).unwrap();
        mac.update(body.as_bytes());
        assert_eq!(
            *signature,
            format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
        );
        let alert: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            alert["reasons"],
            serde_json::json!(["conflict"]),
            "{alert:#}"
        );
        assert_eq!(alert["event"]["id"], "s:2", "{alert:#}");
        assert_eq!(
            alert["event"]["data"]["decision"]["effect"], "Allow",
            "the alert carries the refused content: {alert:#}"
        );
        assert_eq!(
            alert["conflict"]["identity"], "shop/orders-app",
            "{alert:#}"
        );
        assert_ne!(
            alert["conflict"]["storedSha256"], alert["conflict"]["refusedSha256"],
            "{alert:#}"
        );
    }
    assert_eq!(
        metric(&collector, "streamward_collector_events_conflicting_total"),
        1.0
    );

    // After a restart the store still tells a retry from a rewrite.
    collector.stop();
    let collector = start(dir, &flags);
    let (status, answer) = post(&collector, VICTIM, &first);
    assert_eq!((status, counts(&answer)), (200, (0, 2)), "{answer}");
    let (status, answer) = post(&collector, VICTIM, &[rewritten]);
    assert_eq!(status, 409, "{answer}");

    let stored = query(&collector.data, &["--format", "ndjson"]);
    assert_eq!(ids(&stored), ["s:1", "s:2", "s:3"]);
    assert!(
        stored.lines().all(|l| l.contains("\"effect\":\"Deny\"")),
        "{stored}"
    );
}

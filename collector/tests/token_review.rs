//! Kubernetes authentication against a real kube-apiserver: projected service-account tokens
//! checked with TokenReview, the audience enforced, and a workload may only send its own events.

mod common;

use common::{About, Collector, event, ids, post, query};
use streamward_e2e::kube::KubeApiServer;
use streamward_e2e::process::run;

fn kubectl(server: &KubeApiServer, args: &[&str]) -> String {
    let output = run(&format!("kubectl {args:?}"), server.kubectl().args(args)).unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[test]
fn service_account_tokens_are_reviewed_and_bound_to_their_own_events() {
    let server = KubeApiServer::start().unwrap();
    kubectl(&server, &["create", "namespace", "shop"]);
    kubectl(
        &server,
        &["create", "serviceaccount", "-n", "shop", "orders-app"],
    );
    kubectl(
        &server,
        &["create", "serviceaccount", "-n", "shop", "billing"],
    );
    let token = |sa: &str, audience: &str| {
        kubectl(
            &server,
            &["create", "token", "-n", "shop", sa, "--audience", audience],
        )
    };
    let orders = token("orders-app", "streamward-collector");
    let wrong_audience = token("orders-app", "some-other-service");
    let billing = token("billing", "streamward-collector");

    let run_dir = streamward_e2e::cache::run_dir("collector-tokenreview").unwrap();
    let collector = Collector::start_with(
        run_dir.path(),
        &["--token-review".to_string()],
        &[("KUBECONFIG", server.kubeconfig())],
    );
    let about = About::default(); // shop/orders-app
    let batch =
        |events: &[streamward_api::audit::AuditEvent]| serde_json::to_string(events).unwrap();

    let (status, body) = post(
        &collector.addr,
        Some(&orders),
        &batch(&[event("s1", 1, &about)]),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"accepted\":1"), "{body}");

    for (what, token) in [
        (
            "a token for another audience",
            Some(wrong_audience.as_str()),
        ),
        ("garbage", Some("eyJhbGciOiJSUzI1NiJ9.garbage.garbage")),
        ("no token", None),
    ] {
        let (status, body) = post(&collector.addr, token, &batch(&[event("s1", 2, &about)]));
        assert_eq!(status, 401, "{what}: {status} {body}");
    }

    // billing's valid token cannot write orders-app's history, not even one event of a batch.
    let (status, body) = post(
        &collector.addr,
        Some(&billing),
        &batch(&[event("s2", 1, &about)]),
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("shop/billing"), "{body}");
    let own = About {
        service_account: "billing",
        ..About::default()
    };
    let (status, _) = post(
        &collector.addr,
        Some(&billing),
        &batch(&[event("s3", 1, &own), event("s2", 1, &about)]),
    );
    assert_eq!(status, 403);
    let (status, body) = post(
        &collector.addr,
        Some(&billing),
        &batch(&[event("s3", 1, &own)]),
    );
    assert_eq!(status, 200, "{body}");

    assert_eq!(
        ids(&query(&collector.data, &["--format", "ndjson"])),
        ["s1:1", "s3:1"]
    );
    // The token never reaches the log.
    let log = collector.log();
    assert!(!log.contains(&orders) && !log.contains(&billing));
}

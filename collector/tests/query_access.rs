//! Who may read the audit trail, decided by Kubernetes RBAC on a real kube-apiserver: the
//! collector runs under the chart's own RBAC, people query with their bearer tokens, and every
//! query (allowed or refused) is found in the trail.

mod common;

use common::{About, Collector, QUERY_TOKEN, event, post, request};
use streamward_api::audit::{AuditEvent, EventData, QueryRecord};
use streamward_e2e::helm::{self, Helm};
use streamward_e2e::kube::{ApiServerOptions, KubeApiServer};
use streamward_e2e::process::run;

const ALICE: &str = "alice-token-0123456789abcdef";
const BOB: &str = "bob-token-0123456789abcdef";
const CAROL: &str = "carol-token-0123456789abcdef";

fn kubectl(server: &KubeApiServer, args: &[&str]) -> String {
    let output = run(&format!("kubectl {args:?}"), server.kubectl().args(args)).unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn apply(server: &KubeApiServer, yaml: &str) {
    let file = server.dir().join(format!(
        "apply-{}.yaml",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::write(&file, yaml).unwrap();
    kubectl(server, &["apply", "-f", &file.display().to_string()]);
}

fn get(collector: &Collector, token: &str, path: &str) -> (u16, String) {
    let bearer = format!("Bearer {token}");
    request(
        &collector.addr,
        "GET",
        path,
        &[("Authorization", bearer.as_str())],
        "",
    )
}

fn events(body: &str) -> Vec<AuditEvent> {
    body.lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn queries(body: &str) -> Vec<QueryRecord> {
    events(body)
        .into_iter()
        .map(|e| match e.data {
            EventData::Query(query) => *query,
            other => panic!("not a query event: {other:?}"),
        })
        .collect()
}

#[test]
fn rbac_decides_who_reads_the_audit_trail_and_every_query_is_audited() {
    // People with bearer tokens, as an OIDC login would give them (the API server's static
    // token file stands in for the identity provider).
    let people = tempfile::tempdir().unwrap();
    let tokens = people.path().join("tokens.csv");
    std::fs::write(
        &tokens,
        format!(
            "{ALICE},alice,alice-uid,\"auditors\"\n{BOB},bob,bob-uid,\"developers\"\n\
             {CAROL},carol,carol-uid,\"shop-team\"\n"
        ),
    )
    .unwrap();
    let server = KubeApiServer::start_with(ApiServerOptions {
        extra_args: vec![format!("--token-auth-file={}", tokens.display())],
        ..ApiServerOptions::default()
    })
    .unwrap();

    // The collector's RBAC and the reader ClusterRole exactly as the chart renders them.
    kubectl(&server, &["create", "namespace", helm::NAMESPACE]);
    let rendered = Helm::offline()
        .unwrap()
        .template_with(
            &[],
            &[
                "--show-only",
                "templates/serviceaccounts.yaml",
                "--show-only",
                "templates/collector-rbac.yaml",
            ],
        )
        .unwrap();
    apply(&server, &rendered);
    let args = helm::container_args(
        &Helm::offline()
            .unwrap()
            .template_with(&[], &["--show-only", "templates/collector.yaml"])
            .unwrap(),
        "StatefulSet",
        "streamward-collector",
        "collector",
    )
    .unwrap();
    assert!(
        args.contains(&"--query-authorization=kubernetes".to_string())
            && args.contains(&"--query-reader-role=streamward-audit-reader".to_string()),
        "the chart authorizes queries by RBAC by default: {args:?}"
    );
    kubectl(
        &server,
        &[
            "create",
            "clusterrolebinding",
            "auditors-read-audit",
            "--clusterrole=streamward-audit-reader",
            "--group=auditors",
        ],
    );
    for namespace in ["shop", "billing"] {
        kubectl(&server, &["create", "namespace", namespace]);
        kubectl(
            &server,
            &["create", "serviceaccount", "-n", namespace, "app"],
        );
    }
    kubectl(
        &server,
        &[
            "create",
            "rolebinding",
            "-n",
            "shop",
            "shop-team-reads-audit",
            "--clusterrole=streamward-audit-reader",
            "--group=shop-team",
        ],
    );

    let collector_kubeconfig = server
        .service_account_kubeconfig(helm::NAMESPACE, "streamward-collector")
        .unwrap();
    let run_dir = streamward_e2e::cache::run_dir("collector-query-access").unwrap();
    let collector = Collector::start_with(
        run_dir.path(),
        &[
            "--token-review".into(),
            "--query-authorization=kubernetes".into(),
        ],
        &[("KUBECONFIG", collector_kubeconfig.as_path())],
    );

    // Two workloads' proxies send an event each, with their own projected tokens.
    for namespace in ["shop", "billing"] {
        let token = kubectl(
            &server,
            &[
                "create",
                "token",
                "-n",
                namespace,
                "app",
                "--audience",
                "streamward-collector",
            ],
        );
        let about = About {
            namespace,
            service_account: "app",
            ..About::default()
        };
        let batch = serde_json::to_string(&[event(namespace, 1, &about)]).unwrap();
        let (status, body) = post(&collector.addr, Some(&token), &batch);
        assert_eq!(status, 200, "{body}");
    }

    // alice's group is bound cluster-wide: she reads both.
    let (status, body) = get(&collector, ALICE, "/v1/events");
    assert_eq!(status, 200, "{body}");
    let read: Vec<String> = events(&body).into_iter().map(|e| e.id).collect();
    assert_eq!(read, ["shop:1", "billing:1"]);

    // Through the API server's service proxy `Authorization` does not arrive; the same token
    // in X-Streamward-Authorization does.
    let (status, body) = request(
        &collector.addr,
        "GET",
        "/v1/events?namespace=billing",
        &[("X-Streamward-Authorization", &format!("Bearer {ALICE}"))],
        "",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(events(&body).len(), 1);

    // bob is authenticated but has no binding: 403 naming him and what he lacks.
    let (status, body) = get(&collector, BOB, "/v1/events?topic=orders.created");
    assert_eq!(status, 403, "{body}");
    for needle in [
        "\\\"bob\\\"",
        "developers",
        "list on auditevents.streamward.io cluster-wide",
        "streamward-audit-reader",
    ] {
        assert!(body.contains(needle), "{needle} in {body}");
    }

    // carol's group is bound in shop only: she reads shop's events when she asks for them,
    // and nothing else.
    let (status, body) = get(&collector, CAROL, "/v1/events?namespace=shop");
    assert_eq!(status, 200, "{body}");
    let read: Vec<String> = events(&body).into_iter().map(|e| e.id).collect();
    assert_eq!(read, ["shop:1"]);
    for path in ["/v1/events", "/v1/events?namespace=billing", "/v1/sessions"] {
        let (status, body) = get(&collector, CAROL, path);
        assert_eq!(status, 403, "{path}: {body}");
    }
    let (status, body) = get(&collector, CAROL, "/v1/events?namespace=billing");
    assert!(
        status == 403 && body.contains("in namespace billing"),
        "{body}"
    );

    // Not a token the API server knows, and no token: 401.
    let (status, _) = get(&collector, "not-a-token-0123456789", "/v1/events");
    assert_eq!(status, 401);
    let (status, _) = request(&collector.addr, "GET", "/v1/events", &[], "");
    assert_eq!(status, 401);
    // A proxy's token (another audience) reads nothing either.
    let proxy = kubectl(
        &server,
        &[
            "create",
            "token",
            "-n",
            "shop",
            "app",
            "--audience",
            "streamward-collector",
        ],
    );
    let (status, _) = get(&collector, &proxy, "/v1/events");
    assert_eq!(status, 401);

    // The static query token still works beside RBAC (automation).
    let (status, body) = get(&collector, QUERY_TOKEN, "/v1/events?namespace=billing");
    assert_eq!(status, 200, "{body}");

    // Every query is in the trail: who, what, the result count, and the refusals with their
    // reason. Reading that record is itself a query alice needs the cluster-wide binding for.
    let (status, body) = get(&collector, ALICE, "/v1/events?type=query");
    assert_eq!(status, 200, "{body}");
    let recorded = queries(&body);
    let find = |user: &str, status: u16, parameter: Option<(&str, &str)>| {
        recorded.iter().find(|q| {
            q.reader.user == user
                && q.status == status
                && parameter.is_none_or(|(k, v)| q.parameters.get(k).map(String::as_str) == Some(v))
        })
    };
    let alice = find("alice", 200, None).expect("alice's query");
    assert_eq!(
        (
            alice.path.as_str(),
            alice.results,
            alice.reader.groups.as_slice()
        ),
        (
            "/v1/events",
            Some(2),
            ["auditors".to_string(), "system:authenticated".to_string()].as_slice()
        )
    );
    assert_eq!(alice.reader.authenticated_by, "TokenReview");
    let bob = find("bob", 403, Some(("topic", "orders.created"))).expect("bob's refusal");
    assert!(
        bob.reason
            .as_deref()
            .is_some_and(|r| r.contains("auditevents"))
    );
    assert_eq!(bob.results, None);
    let carol = find("carol", 200, Some(("namespace", "shop"))).expect("carol's query");
    assert_eq!(carol.results, Some(1));
    assert!(find("carol", 403, Some(("namespace", "billing"))).is_some());
    let automation = recorded
        .iter()
        .find(|q| q.reader.authenticated_by == "QueryToken")
        .expect("the query token's query");
    assert!(automation.reader.user.starts_with("query-token:"));
    assert!(!automation.reader.user.contains(QUERY_TOKEN));
    // Unauthenticated callers have no identity to record; they are not.
    assert!(recorded.iter().all(|q| q.status != 401));

    // carol, bound in one namespace, cannot read the record of queries.
    let (status, _) = get(&collector, CAROL, "/v1/events?type=query");
    assert_eq!(status, 403);

    // The records are in the chain itself: the store on disk holds them, and verify passes.
    let on_disk = common::query(&collector.data, &["--type", "query", "--format", "ndjson"]);
    assert!(queries(&on_disk).len() >= recorded.len());
    let verified = std::process::Command::new(common::binary())
        .args(["verify", "--data"])
        .arg(&collector.data)
        .output()
        .unwrap();
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stdout)
    );
    // Tokens never reach the log.
    let log = collector.log();
    for token in [ALICE, BOB, CAROL, QUERY_TOKEN] {
        assert!(!log.contains(token));
    }
}

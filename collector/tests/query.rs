//! Queries of a store the real collector wrote: every filter, the three formats, and the HTTP
//! query API with its own tokens.

mod common;

use common::{About, Collector, QUERY_TOKEN, TOKEN, event, ids, query};

/// a:1 produce allowed, a:2 fetch denied for alice, b:1 a DryRun refusal in billing, c:30 a
/// denied topic deletion in ops.
fn collector() -> Collector {
    let collector = Collector::start(&[]);
    let events = [
        event("a", 1, &About::default()),
        event(
            "a",
            2,
            &About {
                api: "Fetch",
                effect: "Deny",
                user: Some("alice"),
                ..About::default()
            },
        ),
        event(
            "b",
            1,
            &About {
                service_account: "billing",
                topic: "payments.ledger",
                dry_run: true,
                masked: 2,
                ..About::default()
            },
        ),
        event(
            "c",
            30,
            &About {
                namespace: "ops",
                service_account: "admin",
                api: "DeleteTopics",
                effect: "Deny",
                ..About::default()
            },
        ),
    ];
    assert_eq!(collector.send(&events), (4, 0));
    collector
}

#[test]
fn every_filter_selects_what_it_names() {
    let collector = collector();
    let q = |args: &[&str]| {
        let mut all = vec!["--format", "ndjson"];
        all.extend_from_slice(args);
        ids(&query(&collector.data, &all))
    };
    assert_eq!(q(&[]), ["a:1", "a:2", "b:1", "c:30"]);
    assert_eq!(q(&["--namespace", "shop"]), ["a:1", "a:2", "b:1"]);
    assert_eq!(q(&["--service-account", "billing"]), ["b:1"]);
    assert_eq!(q(&["--user", "alice"]), ["a:2"]);
    assert_eq!(q(&["--topic", "payments.ledger"]), ["b:1"]);
    assert_eq!(q(&["--api-key", "fetch"]), ["a:2"]);
    assert_eq!(q(&["--decision", "Deny"]), ["a:2", "c:30"]);
    assert_eq!(q(&["--decision", "WouldDeny"]), ["b:1"]);
    assert_eq!(q(&["--session", "a"]), ["a:1", "a:2"]);
    assert_eq!(q(&["--since", "2026-12-01T10:00:02Z"]), ["a:2", "c:30"]);
    assert_eq!(q(&["--until", "2026-12-01T10:00:02Z"]), ["a:1", "b:1"]);
    assert_eq!(q(&["--namespace", "shop", "--decision", "deny"]), ["a:2"]);
    assert_eq!(q(&["--limit", "2"]), ["a:1", "a:2"]);
    assert!(q(&["--namespace", "nobody"]).is_empty());

    // A bad time is a clear error, not an empty answer.
    let output = common::cli(&[
        "query",
        "--data",
        collector.data.to_str().unwrap(),
        "--since",
        "yesterday",
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("RFC 3339"));
}

#[test]
fn output_is_a_table_ndjson_or_csv() {
    let collector = collector();
    let ndjson = query(&collector.data, &["--format", "ndjson", "--session", "b"]);
    let event: serde_json::Value = serde_json::from_str(ndjson.trim()).unwrap();
    assert_eq!(event["specversion"], "1.0");
    assert_eq!(event["data"]["decision"]["dryRun"], true);

    let csv = query(&collector.data, &["--format", "csv"]);
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(
        rows[0],
        "time,id,namespace,serviceAccount,user,apiKey,resources,decision,rule,dryRun,masked,session"
    );
    assert_eq!(rows.len(), 5);
    assert_eq!(
        rows[2],
        "2026-12-01T10:00:02Z,a:2,shop,orders-app,alice,Fetch,Topic:orders.created:Read,Deny,StreamPolicy/shop rule r,false,0,a"
    );
    assert!(rows[3].contains(",true,2,b"), "{}", rows[3]);
    let empty = query(&collector.data, &["--format", "csv", "--namespace", "x"]);
    assert_eq!(empty.lines().count(), 1, "the header alone");

    let table = query(&collector.data, &["--format", "table"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("TIME "), "{table}");
    assert!(lines[0].contains("  NAMESPACE  "), "{table}");
    assert_eq!(lines.len(), 5);
    // Columns line up: every row has its id where the header has ID.
    let id_column = lines[0].find("ID ").unwrap();
    assert_eq!(&lines[4][id_column..id_column + 4], "c:30", "{table}");
}

#[test]
fn the_http_query_api_filters_formats_and_needs_a_query_token() {
    let collector = collector();
    let get = |path: &str, token: Option<&str>| {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = bearer
            .as_deref()
            .map(|b| vec![("Authorization", b)])
            .unwrap_or_default();
        common::request(&collector.addr, "GET", path, &headers, "")
    };
    let (status, body) = get("/v1/events?namespace=shop&decision=Deny", Some(QUERY_TOKEN));
    assert_eq!(status, 200, "{body}");
    assert_eq!(ids(&body), ["a:2"]);
    let (status, body) = get(
        "/v1/events?since=2026-12-01T10%3A00%3A02Z&format=csv",
        Some(QUERY_TOKEN),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.lines().count(), 3, "{body}");
    assert!(
        body.lines().nth(2).unwrap().contains(",c:30,ops,admin,"),
        "{body}"
    );

    // Ingest tokens do not query; no token does not either.
    assert_eq!(get("/v1/events", Some(TOKEN)).0, 401);
    assert_eq!(get("/v1/events", None).0, 401);
    let (status, body) = get("/v1/events?colour=red", Some(QUERY_TOKEN));
    assert_eq!(status, 400);
    assert!(body.contains("colour"), "{body}");
    assert_eq!(get("/v1/events?limit=x", Some(QUERY_TOKEN)).0, 400);
}

//! The collector's forensic reads over real ingested events: the timeline of one client
//! session (what `kubectl streamward replay` shows) and aggregations (what an evidence report
//! charts), through the real collector process.

mod common;

use common::{About, Collector, QUERY_TOKEN, event, request};
use serde_json::{Value, json};
use streamward_api::audit::{AuditEvent, EventData, OffsetRange, Payload};

fn get(collector: &Collector, path: &str) -> (u16, Value) {
    let (status, body) = request(
        &collector.addr,
        "GET",
        path,
        &[("Authorization", &format!("Bearer {QUERY_TOKEN}"))],
        "",
    );
    let value = serde_json::from_str(&body).unwrap_or(Value::String(body));
    (status, value)
}

/// A Fetch of `orders.created` at `offsets` whose masked records the audit level kept.
fn fetch(session: &str, sequence: u64, first: i64, records: Vec<Value>) -> AuditEvent {
    let about = About {
        api: "Fetch",
        masked: 1,
        ..About::default()
    };
    let mut event = event(session, sequence, &about);
    let EventData::Request(record) = &mut event.data else {
        unreachable!()
    };
    record.resources[0].records = Some(records.len() as u64);
    record.resources[0].offsets = Some(OffsetRange {
        first,
        last: first + records.len() as i64 - 1,
    });
    record.payload = Some(Payload {
        sha256: Some(format!("{:064x}", sequence)),
        records: Some(records),
    });
    event
}

#[test]
fn a_session_timeline_shows_every_request_in_order_with_what_was_delivered() {
    let collector = Collector::start(&[]);
    let consumer = "7f0c1f2e-consumer";
    // Sent out of order, as a spool replay delivers them, and one lost.
    collector.send(&[
        fetch(consumer, 4, 10, vec![json!({"card": "****-1111"})]),
        event(consumer, 1, &About::default()),
    ]);
    collector.send(&[
        fetch(
            consumer,
            2,
            0,
            vec![json!({"card": "****-4242"}), json!({"card": "****-0005"})],
        ),
        event(
            consumer,
            5,
            &About {
                effect: "Deny",
                topic: "payments.raw",
                ..About::default()
            },
        ),
        event("other-session", 1, &About::default()),
    ]);

    let (status, timeline) = get(&collector, &format!("/v1/sessions/{consumer}/timeline"));
    assert_eq!(status, 200, "{timeline}");
    assert_eq!(timeline["session"], consumer);
    assert_eq!(timeline["identity"], "shop/orders-app");
    assert_eq!(timeline["events"], 4);
    assert_eq!(timeline["missing"], json!([[3, 3]]));
    let steps = timeline["steps"].as_array().unwrap();
    let sequences: Vec<u64> = steps
        .iter()
        .map(|s| s["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(sequences, [1, 2, 4, 5]);
    let second = &steps[1];
    assert_eq!(second["request"]["apiKey"], "Fetch");
    assert_eq!(second["decision"]["effect"], "Allow");
    assert_eq!(second["decision"]["rule"], "StreamPolicy/shop rule r");
    assert_eq!(
        second["resources"][0]["offsets"],
        json!({"first": 0, "last": 1})
    );
    assert_eq!(
        second["payload"]["records"][0],
        json!({"card": "****-4242"})
    );
    assert_eq!(second["payload"]["sha256"], format!("{:064x}", 2));
    assert_eq!(second["masking"][0]["rule"], "pii");
    assert_eq!(steps[3]["decision"]["effect"], "Deny");
    assert_eq!(steps[3]["resources"][0]["name"], "payments.raw");

    let (status, body) = get(&collector, "/v1/sessions/no-such-session/timeline");
    assert_eq!(status, 404, "{body}");
    let (status, _) = get(
        &collector,
        &format!("/v1/sessions/{consumer}/timeline?namespace=billing"),
    );
    assert_eq!(status, 404);
    let (status, _) = get(
        &collector,
        &format!("/v1/sessions/{consumer}/timeline?limit=1"),
    );
    assert_eq!(status, 400);

    // Both reads of the timeline are in the trail, with their outcome.
    let (status, body) = request(
        &collector.addr,
        "GET",
        "/v1/events?type=query",
        &[("Authorization", &format!("Bearer {QUERY_TOKEN}"))],
        "",
    );
    assert_eq!(status, 200);
    let paths: Vec<(String, u64, Option<u64>)> = body
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap();
            (
                v["data"]["path"].as_str().unwrap().to_string(),
                v["data"]["status"].as_u64().unwrap(),
                v["data"]["results"].as_u64(),
            )
        })
        .collect();
    assert!(paths.contains(&(format!("/v1/sessions/{consumer}/timeline"), 200, Some(4))));
    assert!(paths.contains(&("/v1/sessions/no-such-session/timeline".into(), 404, Some(0))));
}

#[test]
fn aggregations_count_decisions_denied_identities_and_decisions_over_time() {
    let collector = Collector::start(&[]);
    let shop = About::default();
    let denied = About {
        effect: "Deny",
        topic: "payments.raw",
        ..About::default()
    };
    let billing_denied = About {
        namespace: "billing",
        service_account: "invoicer",
        effect: "Deny",
        topic: "payments.raw",
        ..About::default()
    };
    let dry = About {
        namespace: "billing",
        service_account: "invoicer",
        dry_run: true,
        ..About::default()
    };
    // Times come from the sequence number: 10:00:01 … 10:01:05 (see common::event), so the
    // second hour is made by hand below.
    let mut events = vec![
        event("a", 1, &shop),
        event("a", 2, &shop),
        event("a", 3, &denied),
        event("b", 1, &billing_denied),
        event("b", 2, &billing_denied),
        event("b", 3, &billing_denied),
        event("b", 4, &dry),
    ];
    let mut late = event("a", 4, &denied);
    late.time = "2026-12-01T11:30:00Z".parse().unwrap();
    events.push(late);
    collector.send(&events);

    let (status, body) = get(&collector, "/v1/aggregate?by=decision");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["total"], 8);
    assert_eq!(
        body["groups"],
        json!([
            {"decision": "Deny", "count": 5},
            {"decision": "Allow", "count": 2},
            {"decision": "WouldDeny", "count": 1},
        ])
    );

    let (_, top) = get(
        &collector,
        "/v1/aggregate?by=identity&decision=Deny&limit=1",
    );
    assert_eq!(
        top["groups"],
        json!([{"identity": "billing/invoicer", "count": 3}])
    );
    assert_eq!(top["truncated"], true);

    let (_, over_time) = get(
        &collector,
        "/v1/aggregate?by=hour,decision&from=2026-12-01T00:00:00Z&to=2026-12-02T00:00:00Z",
    );
    assert_eq!(
        over_time["groups"],
        json!([
            {"hour": "2026-12-01T10:00:00Z", "decision": "Allow", "count": 2},
            {"hour": "2026-12-01T10:00:00Z", "decision": "Deny", "count": 4},
            {"hour": "2026-12-01T10:00:00Z", "decision": "WouldDeny", "count": 1},
            {"hour": "2026-12-01T11:00:00Z", "decision": "Deny", "count": 1},
        ])
    );

    let (_, topics) = get(&collector, "/v1/aggregate?by=topic&namespace=shop");
    assert_eq!(
        topics["groups"],
        json!([
            {"topic": "orders.created", "count": 2},
            {"topic": "payments.raw", "count": 2},
        ])
    );
    let (_, rules) = get(
        &collector,
        "/v1/aggregate?by=rule,api&since=2026-12-01T11:00:00Z",
    );
    assert_eq!(
        rules["groups"],
        json!([{"rule": "StreamPolicy/shop rule r", "api": "Produce", "count": 1}])
    );

    for bad in [
        "/v1/aggregate",
        "/v1/aggregate?by=colour",
        "/v1/aggregate?by=hour&since=yesterday",
    ] {
        let (status, body) = get(&collector, bad);
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    // Aggregations are queries too, and recorded.
    let (_, queries) = get(&collector, "/v1/aggregate?by=user&type=query");
    assert_eq!(queries["groups"][0]["count"], 5);
}

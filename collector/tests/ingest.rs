//! Ingest against the real collector process: authentication, validation, durability and
//! de-duplication.

mod common;

use common::{About, Collector, TOKEN, event, ids, query};

#[test]
fn ingest_without_a_valid_token_is_refused_and_nothing_is_stored() {
    let collector = Collector::start(&[]);
    let batch = serde_json::to_string(&[event("s1", 1, &About::default())]).unwrap();
    for token in [None, Some("not-the-token-0123456789"), Some("")] {
        let (status, body) = collector.post(token, &batch);
        assert_eq!(status, 401, "token {token:?} got {status}: {body}");
    }
    // A Basic header with the right secret is not a bearer token either.
    let (status, _) = common::request(
        &collector.addr,
        "POST",
        "/v1/events",
        &[
            ("Content-Type", "application/cloudevents-batch+json"),
            ("Authorization", &format!("Basic {TOKEN}")),
        ],
        &batch,
    );
    assert_eq!(status, 401);
    assert_eq!(query(&collector.data, &["--format", "ndjson"]), "");
    let segments: u64 = std::fs::read_dir(collector.data.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert_eq!(segments, 0, "refused events reached the store");

    // The same batch with the token is stored.
    assert_eq!(collector.send(&[event("s1", 1, &About::default())]), (1, 0));
    assert_eq!(
        ids(&query(&collector.data, &["--format", "ndjson"])),
        ["s1:1"]
    );
}

#[test]
fn duplicate_ids_are_stored_once_across_batches_and_restarts() {
    let mut first_run = Collector::start(&[]);
    let collector = &first_run;
    let about = About::default();
    let first = [
        event("s1", 1, &about),
        event("s1", 2, &about),
        event("s1", 1, &about),
    ];
    assert_eq!(collector.send(&first), (2, 1));
    assert_eq!(collector.send(&first), (0, 3));
    let dir = collector.dir.clone();
    let data = collector.data.clone();
    first_run.stop();

    // A restarted collector still knows what it stored.
    let collector = Collector::start_in(&dir, &[]);
    assert_eq!(
        collector.send(&[event("s1", 2, &about), event("s1", 3, &about)]),
        (1, 1)
    );
    assert_eq!(
        ids(&query(&data, &["--format", "ndjson"])),
        ["s1:1", "s1:2", "s1:3"]
    );
}

#[test]
fn batches_that_are_not_valid_events_are_refused_whole() {
    let collector = Collector::start(&[]);
    let good = event("s1", 1, &About::default());
    let mut wrong_id = event("s1", 2, &About::default());
    wrong_id.id = "s1:99".into();
    let mut wrong_version = event("s1", 3, &About::default());
    wrong_version.specversion = "0.3".into();
    let cases = [
        "not json".to_string(),
        serde_json::to_string(&good).unwrap(), // an object, not an array
        r#"[{"id":"x"}]"#.to_string(),
        serde_json::to_string(&[good.clone(), wrong_id]).unwrap(),
        serde_json::to_string(&[good.clone(), wrong_version]).unwrap(),
    ];
    for body in &cases {
        let (status, answer) = collector.post(Some(TOKEN), body);
        assert_eq!(status, 400, "{body:.60} got {status}: {answer}");
        assert!(answer.contains("error"), "{answer}");
    }
    assert_eq!(query(&collector.data, &["--format", "ndjson"]), "");
    // The collector is still fine.
    assert_eq!(collector.send(&[good]), (1, 0));
    assert!(!collector.log().contains("panicked"));
}

//! Queries over a store of many sealed segments read only the segments that can hold a match,
//! through the real store (appends, sealing, retention) and the real scan.

use std::path::Path;

use jiff::Timestamp;
use streamward_api::audit::{
    AuditEvent, Client, Decision, Identity, Request, RequestRecord, Resource,
};
use streamward_collector::index::SegmentIndex;
use streamward_collector::query::{self, Filter, Scanned};
use streamward_collector::store::{self, Prepared, Retention, Store};

/// One hour of one workload's events, all in one session.
fn hour(namespace: &str, hour: u32, count: u64) -> Vec<AuditEvent> {
    (1..=count)
        .map(|sequence| {
            let time: Timestamp = format!("2026-12-01T{hour:02}:{:02}:00Z", sequence % 60)
                .parse()
                .unwrap();
            AuditEvent::request(
                time,
                RequestRecord {
                    session_id: format!("{namespace}-{hour}"),
                    sequence,
                    identity: Identity {
                        namespace: namespace.into(),
                        service_account: "app".into(),
                        ..Identity::default()
                    },
                    client: Client::default(),
                    request: Request {
                        api_key: "Produce".into(),
                        ..Request::default()
                    },
                    resources: vec![Resource {
                        resource_type: "Topic".into(),
                        name: format!("{namespace}.events"),
                        operation: "Write".into(),
                        effect: "Allow".into(),
                        ..Resource::default()
                    }],
                    decision: Decision {
                        effect: "Allow".into(),
                        ..Decision::default()
                    },
                    masking: vec![],
                    approval: None,
                    payload: None,
                },
            )
        })
        .collect()
}

fn prepare(events: &[AuditEvent]) -> Vec<Prepared> {
    events
        .iter()
        .map(|e| {
            Prepared::new(
                store::event_identity(e),
                e.id.clone(),
                serde_json::to_string(e).unwrap(),
            )
        })
        .collect()
}

fn scan(dir: &Path, params: &[(&str, &str)]) -> (Vec<String>, Scanned) {
    let filter = Filter::from_params(params.iter().copied()).unwrap();
    let mut ids = Vec::new();
    let scanned = query::scan_segments(dir, &filter, None, |event| {
        ids.push(event.id.clone());
        Ok(())
    })
    .unwrap();
    (ids, scanned)
}

#[test]
fn a_narrow_query_reads_only_the_segments_its_index_cannot_rule_out() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("signing.key");
    // Small segments: each hour of one workload fills about two.
    let mut store = Store::open(dir.path(), &key, 8 * 1024).unwrap();
    let namespaces = ["shop", "billing", "payroll"];
    for h in 0..4 {
        for namespace in namespaces {
            store
                .append(&[prepare(&hour(namespace, 10 + h, 40))])
                .unwrap();
        }
    }
    drop(store);
    let segments = store::segment_files(dir.path()).unwrap().len();
    assert!(segments >= 12, "{segments} segments");

    // The first scan reads everything and leaves an index beside each sealed segment.
    let (all, first) = scan(dir.path(), &[]);
    assert_eq!(all.len(), 4 * 3 * 40);
    assert_eq!((first.read, first.skipped), (segments, 0));
    let sealed = store::segment_files(dir.path()).unwrap();
    let sealed = &sealed[..segments - 1];
    assert!(sealed.iter().all(|s| SegmentIndex::path(s).exists()));

    // One workload in one hour: only the segments that hold it, and the open one.
    let narrow = [
        ("namespace", "billing"),
        ("since", "2026-12-01T12:00:00Z"),
        ("until", "2026-12-01T13:00:00Z"),
    ];
    let (ids, scanned) = scan(dir.path(), &narrow);
    assert_eq!(ids.len(), 40);
    assert!(ids.iter().all(|id| id.starts_with("billing-12:")));
    assert!(
        scanned.read <= 4,
        "read {} of {segments} segments for one workload-hour",
        scanned.read
    );
    assert_eq!(scanned.read + scanned.skipped, segments);
    // The same answer as reading everything without an index.
    let (session, scanned) = scan(dir.path(), &[("session", "payroll-11")]);
    assert_eq!(session.len(), 40);
    assert!(scanned.read <= 4, "read {}", scanned.read);
    let (none, scanned) = scan(dir.path(), &[("topic", "nobody.reads.this")]);
    assert!(none.is_empty());
    assert_eq!(scanned.read, 1, "only the open segment");

    // A damaged index and a stale one (its segment changed length) are rebuilt, not trusted.
    std::fs::write(SegmentIndex::path(&sealed[0]), b"not json").unwrap();
    let stale = std::fs::read(SegmentIndex::path(&sealed[1])).unwrap();
    let mut stale: serde_json::Value = serde_json::from_slice(&stale).unwrap();
    stale["bytes"] = serde_json::json!(1);
    stale["identities"] = serde_json::json!([]);
    stale["minTime"] = serde_json::json!("2000-01-01T00:00:00Z");
    stale["maxTime"] = serde_json::json!("2000-01-01T00:00:00Z");
    std::fs::write(SegmentIndex::path(&sealed[1]), stale.to_string()).unwrap();
    let (ids, scanned) = scan(dir.path(), &[("namespace", "shop")]);
    assert_eq!(ids.len(), 4 * 40);
    assert!(scanned.read >= 3, "both rebuilt, plus the open segment");
    assert!(SegmentIndex::load(&sealed[0], std::fs::metadata(&sealed[0]).unwrap().len()).is_some());
    let (again, _) = scan(dir.path(), &[("namespace", "shop")]);
    assert_eq!(again, ids);

    // Without any index files (a copy of the folder), the same answers.
    for segment in sealed {
        std::fs::remove_file(SegmentIndex::path(segment)).unwrap();
    }
    let (unindexed, scanned) = scan(dir.path(), &narrow);
    assert_eq!(scanned.read, segments);
    assert_eq!(unindexed.len(), 40);

    // Retention takes a segment's index with it.
    let mut store = Store::open(dir.path(), &key, 8 * 1024).unwrap();
    scan(dir.path(), &[]);
    let removed = store
        .apply_retention(Retention {
            max_age: None,
            max_bytes: Some(1),
        })
        .unwrap();
    assert!(!removed.is_empty());
    for name in removed {
        let segment = dir.path().join(store::SEGMENTS).join(name);
        assert!(!SegmentIndex::path(&segment).exists());
    }
}

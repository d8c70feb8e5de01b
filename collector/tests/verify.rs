//! `verify` against stores written by the real collector process: an untouched store passes,
//! and a flipped byte, a deleted event, two swapped events, a rewritten chain and a cut-off
//! tail are each found and named.

mod common;

use std::path::{Path, PathBuf};

use common::{About, Collector, cli, event};
use streamward_collector::chain;

/// A stopped collector's data folder holding one segment with events `s1:1` … `s1:10`
/// (sequence 7 never sent, so there is a gap to report).
fn store() -> (Collector, PathBuf) {
    let mut collector = Collector::start(&[]);
    let about = About::default();
    let events: Vec<_> = (1..=11)
        .filter(|n| *n != 7)
        .map(|n| event("s1", n, &about))
        .collect();
    collector.send(&events[..4]);
    collector.send(&events[4..]);
    collector.stop();
    let segment = std::fs::read_dir(collector.data.join("segments"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    (collector, segment)
}

fn verify(data: &Path) -> (i32, serde_json::Value, String) {
    let output = cli(&["verify", "--data", data.to_str().unwrap(), "--json"]);
    let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "verify printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let text = cli(&["verify", "--data", data.to_str().unwrap()]);
    (
        output.status.code().unwrap_or(-1),
        report,
        String::from_utf8_lossy(&text.stdout).into_owned(),
    )
}

fn lines(segment: &Path) -> Vec<String> {
    std::fs::read_to_string(segment)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn write_lines(segment: &Path, lines: &[String]) {
    std::fs::write(segment, lines.join("\n") + "\n").unwrap();
}

fn segment_name(segment: &Path) -> String {
    segment.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn an_untouched_store_verifies_and_sequence_gaps_are_reported() {
    let (collector, _) = store();
    let (code, report, text) = verify(&collector.data);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["ok"], true);
    assert_eq!(report["records"], 10);
    assert!(report["checkpoints"].as_u64().unwrap() >= 1, "{report:#}");
    assert_eq!(report["gaps"][0]["session"], "s1");
    assert_eq!(report["gaps"][0]["missing"], serde_json::json!([[7, 7]]));
    assert!(text.starts_with("OK: 10 records"), "{text}");
    assert!(
        text.contains("session s1 of shop/orders-app is missing sequence numbers 7"),
        "{text}"
    );
}

#[test]
fn a_flipped_byte_is_found_and_named() {
    let (collector, segment) = store();
    let mut all = lines(&segment);
    // Line 4 holds s1:4; turn its topic "orders.created" into "nrders.created".
    let at = all[3].find("orders.created").unwrap();
    let mut bytes = all[3].clone().into_bytes();
    bytes[at] ^= 0x01;
    all[3] = String::from_utf8(bytes).unwrap();
    write_lines(&segment, &all);

    let (code, report, text) = verify(&collector.data);
    assert_eq!(code, 1, "{report:#}");
    let problem = &report["problems"][0];
    assert_eq!(problem["kind"], "altered", "{report:#}");
    assert_eq!(problem["segment"], segment_name(&segment));
    assert_eq!(problem["line"], 4);
    assert_eq!(problem["index"], 3);
    assert_eq!(problem["eventId"], "s1:4");
    assert!(text.starts_with("FAILED: altered in segment"), "{text}");
    assert!(text.contains("event s1:4"), "{text}");
}

#[test]
fn a_deleted_event_is_found_and_named() {
    let (collector, segment) = store();
    let mut all = lines(&segment);
    all.remove(4); // s1:5, record 4
    write_lines(&segment, &all);

    let (code, report, _) = verify(&collector.data);
    assert_eq!(code, 1, "{report:#}");
    let problem = &report["problems"][0];
    assert_eq!(problem["kind"], "removed", "{report:#}");
    assert_eq!(problem["segment"], segment_name(&segment));
    assert_eq!(problem["index"], 4, "the first missing record");
    assert_eq!(problem["line"], 5, "where it is missing");
    assert!(
        problem["message"]
            .as_str()
            .unwrap()
            .contains("records 4 to 4"),
        "{report:#}"
    );
}

#[test]
fn two_swapped_events_are_found_and_named() {
    let (collector, segment) = store();
    let mut all = lines(&segment);
    all.swap(2, 3); // s1:3 and s1:4
    write_lines(&segment, &all);

    let (code, report, _) = verify(&collector.data);
    assert_eq!(code, 1, "{report:#}");
    let problem = &report["problems"][0];
    assert_eq!(problem["kind"], "reordered", "{report:#}");
    assert_eq!(problem["line"], 3);
    assert_eq!(problem["index"], 3);
    assert_eq!(problem["eventId"], "s1:4");
}

#[test]
fn a_chain_rewritten_with_fresh_hashes_is_caught_by_the_signed_checkpoint() {
    let (collector, segment) = store();
    let all = lines(&segment);
    // Someone who can write the files changes record 6 and recomputes every hash after it.
    let mut forged = all[..6].to_vec();
    let mut prev = chain::decode(all[5].as_bytes()).unwrap().hash;
    for line in &all[6..] {
        let record = chain::decode(line.as_bytes()).unwrap();
        let mut event = record.event.clone();
        if record.index == 6 {
            event["data"]["decision"]["effect"] = "Allow".into();
            event["data"]["client"]["address"] = "10.0.0.66:4242".into();
        }
        let (line, hash) = chain::encode(record.index, &prev, &event.to_string());
        forged.push(line);
        prev = hash;
    }
    write_lines(&segment, &forged);

    let (code, report, _) = verify(&collector.data);
    assert_eq!(code, 1, "{report:#}");
    let problem = &report["problems"][0];
    assert_eq!(problem["kind"], "altered", "{report:#}");
    assert!(
        problem["message"]
            .as_str()
            .unwrap()
            .contains("signed checkpoint"),
        "{report:#}"
    );
}

#[test]
fn events_cut_off_the_end_are_found() {
    let (collector, segment) = store();
    let all = lines(&segment);
    write_lines(&segment, &all[..8]);

    let (code, report, _) = verify(&collector.data);
    assert_eq!(code, 1, "{report:#}");
    let problem = &report["problems"][0];
    assert_eq!(problem["kind"], "removed", "{report:#}");
    assert_eq!(problem["index"], 8);
}

#[test]
fn retention_removes_whole_old_segments_and_the_rest_still_verifies() {
    // Tiny segments, and a store limit that holds about three of them.
    let mut collector =
        Collector::start(&["--segment-max-bytes", "2000", "--retain-bytes", "6000"]);
    let about = About::default();
    for n in 1..=40 {
        collector.send(&[event("s1", n, &about)]);
    }
    collector.stop();
    let segments = std::fs::read_dir(collector.data.join("segments"))
        .unwrap()
        .count();
    assert!(segments <= 4, "{segments} segments left");
    let (code, report, text) = verify(&collector.data);
    assert_eq!(code, 0, "{report:#}");
    assert!(report["firstIndex"].as_u64().unwrap() > 0, "{report:#}");
    assert_eq!(report["lastIndex"], 39);
    assert!(report["gaps"].as_array().unwrap().is_empty(), "{text}");

    // Deleting the oldest segment that is left is not retention: the signed note of what
    // retention removed ends before it, so its records are missing.
    let mut files: Vec<_> = std::fs::read_dir(collector.data.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    std::fs::remove_file(&files[0]).unwrap();
    let (code, report, _) = verify(&collector.data);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["problems"][0]["kind"], "removed", "{report:#}");
}

#[test]
fn a_checkpoint_changed_by_hand_is_not_trusted_and_another_key_proves_nothing() {
    let (collector, _) = store();
    let path = collector.data.join("checkpoints.ndjson");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    first["lastIndex"] = 3.into();
    let forged: Vec<String> = std::iter::once(first.to_string())
        .chain(text.lines().skip(1).map(str::to_string))
        .collect();
    std::fs::write(&path, forged.join("\n") + "\n").unwrap();
    let (code, report, _) = verify(&collector.data);
    assert_eq!(code, 1, "{report:#}");
    assert!(
        report["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["kind"] == "checkpointForged"),
        "{report:#}"
    );

    // Verified against a key that did not sign them, no checkpoint counts.
    std::fs::write(&path, text).unwrap();
    let other = collector.dir.join("other.pub");
    std::fs::write(&other, format!("{}\n", "11".repeat(32))).unwrap();
    let output = cli(&[
        "verify",
        "--data",
        collector.data.to_str().unwrap(),
        "--public-key",
        other.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["checkpoints"], 0, "{report:#}");
}

/// `GET /v1/verify` with `token`: (status, body as JSON).
fn verify_api(collector: &Collector, token: Option<&str>) -> (u16, serde_json::Value) {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .as_deref()
        .map(|b| vec![("Authorization", b)])
        .unwrap_or_default();
    let (status, body) = common::request(&collector.addr, "GET", "/v1/verify", &headers, "");
    let body = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (status, body)
}

#[test]
fn the_running_collector_verifies_its_store_over_http_and_names_a_record_altered_on_disk() {
    let collector = Collector::start(&["--checkpoint-seconds", "1"]);
    let about = About::default();
    let events: Vec<_> = (1..=11)
        .filter(|n| *n != 7)
        .map(|n| event("s1", n, &about))
        .collect();
    collector.send(&events);

    // No token: refused like every other query.
    assert_eq!(verify_api(&collector, None).0, 401);

    // Clean, once a signed checkpoint covers the events.
    let report = streamward_e2e::wait_for(
        "a checkpoint covering the events",
        std::time::Duration::from_secs(30),
        || {
            let (status, report) = verify_api(&collector, Some(common::QUERY_TOKEN));
            assert_eq!(status, 200, "{report:#}");
            Ok((report["lastSignedIndex"].as_u64() >= Some(9)).then_some(report))
        },
    )
    .unwrap();
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["problems"], serde_json::json!([]));
    assert!(report["records"].as_u64().unwrap() >= 10, "{report:#}");
    assert_eq!(
        report["key"]["fingerprint"],
        serde_json::from_str::<serde_json::Value>(
            &common::request(&collector.addr, "GET", "/v1/key", &[], "").1
        )
        .unwrap()["fingerprint"]
    );
    let checkpoints = report["checkpointLines"].as_array().unwrap();
    assert!(!checkpoints.is_empty(), "{report:#}");
    assert!(
        checkpoints.iter().all(|c| c["signature"] == "valid"),
        "{report:#}"
    );
    assert_eq!(report["gaps"][0]["session"], "s1");
    assert_eq!(report["gaps"][0]["missing"], serde_json::json!([[7, 7]]));

    // Each verification is itself in the trail.
    let segment = std::fs::read_dir(collector.data.join("segments"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert!(
        std::fs::read_to_string(&segment)
            .unwrap()
            .contains("\"path\":\"/v1/verify\""),
        "the query event of /v1/verify"
    );

    // One byte of s1:4 (line 4) flipped in place, while the collector keeps appending.
    let text = std::fs::read_to_string(&segment).unwrap();
    let line4: usize = text.lines().take(3).map(|l| l.len() + 1).sum();
    let at = line4 + text.lines().nth(3).unwrap().find("orders.created").unwrap();
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(&segment)
            .unwrap();
        file.seek(SeekFrom::Start(at as u64)).unwrap();
        file.write_all(b"n").unwrap();
    }
    let (status, report) = verify_api(&collector, Some(common::QUERY_TOKEN));
    assert_eq!(status, 200, "{report:#}");
    assert_eq!(report["ok"], false, "{report:#}");
    let problem = &report["problems"][0];
    assert_eq!(problem["kind"], "altered", "{report:#}");
    assert_eq!(problem["segment"], segment_name(&segment));
    assert_eq!(problem["line"], 4);
    assert_eq!(problem["eventId"], "s1:4");
}

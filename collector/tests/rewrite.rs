//! Rewriting the audit store, against the real collector process: a missing or swapped
//! signing key stops the collector instead of being replaced, the key's fingerprint is
//! published so `verify` can be pinned to it, a cut-off tail is found, and a proxy that stops
//! sending shows as a quiet session.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{About, Collector, QUERY_TOKEN, TOKEN, cli, event};
use jiff::{SignedDuration, Timestamp};
use streamward_collector::chain;
use streamward_e2e::net;

/// `serve` on `data` as a one-off process: its exit code and stderr, or `None` when it was
/// still running after 20 s (it started; it is killed).
fn serve_exit(dir: &Path) -> Option<(i32, String)> {
    std::fs::write(dir.join("tokens"), format!("{TOKEN}\n")).unwrap();
    let port = net::free_port().unwrap();
    let mut child = Command::new(common::binary())
        .arg("serve")
        .arg("--data")
        .arg(dir.join("data"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--token-file")
        .arg(dir.join("tokens"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            return Some((status.code().unwrap_or(-1), stderr));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// A stopped collector that stored events `s1:1` … `s1:5`.
fn stopped_store() -> Collector {
    let mut collector = Collector::start(&[]);
    let events: Vec<_> = (1..=5).map(|n| event("s1", n, &About::default())).collect();
    collector.send(&events);
    collector.stop();
    collector
}

fn verify(data: &Path, extra: &[&str]) -> (i32, serde_json::Value) {
    let mut args = vec!["verify", "--data", data.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let output = cli(&args);
    let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "verify printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.code().unwrap_or(-1), report)
}

fn verify_text(data: &Path, extra: &[&str]) -> String {
    let mut args = vec!["verify", "--data", data.to_str().unwrap()];
    args.extend_from_slice(extra);
    String::from_utf8_lossy(&cli(&args).stdout).into_owned()
}

#[test]
fn a_store_whose_signing_key_is_gone_refuses_to_start_and_makes_no_new_key() {
    let collector = stopped_store();
    // Whoever can write the data folder removes the key and the public key beside it.
    std::fs::remove_file(collector.data.join("signing.key")).unwrap();
    std::fs::remove_file(collector.data.join("checkpoint.pub")).unwrap();

    let answer = serve_exit(&collector.dir);
    let (code, stderr) =
        answer.expect("the collector started without the key that signed its store");
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("signing.key"), "{stderr}");
    assert!(stderr.contains("segment"), "{stderr}");
    assert!(stderr.contains("restore"), "{stderr}");
    assert!(
        !collector.data.join("signing.key").exists(),
        "a new signing key was made"
    );
}

#[test]
fn a_signing_key_that_did_not_sign_the_checkpoints_is_refused() {
    let collector = stopped_store();
    // Another store's key, with its public key, put in place of this store's.
    let other = stopped_store();
    for file in ["signing.key", "checkpoint.pub"] {
        std::fs::copy(other.data.join(file), collector.data.join(file)).unwrap();
    }
    let answer = serve_exit(&collector.dir);
    let (code, stderr) =
        answer.expect("the collector started with a key that did not sign its checkpoints");
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("not signed by"), "{stderr}");
}

#[test]
fn the_fingerprint_is_published_and_a_pinned_verify_catches_a_store_re_signed_with_another_key() {
    let mut collector = Collector::start(&[]);
    let (status, body) = net::http_get(&collector.addr, "/v1/key").unwrap();
    assert_eq!(status, 200, "{body}");
    let key: serde_json::Value = serde_json::from_str(&body).unwrap();
    let fingerprint = key["fingerprint"].as_str().unwrap().to_string();
    assert_eq!(fingerprint.len(), 64, "{key}");
    assert!(
        collector.log().contains(&fingerprint),
        "{}",
        collector.log()
    );
    let events: Vec<_> = (1..=5).map(|n| event("s1", n, &About::default())).collect();
    collector.send(&events);
    collector.stop();
    let shown = cli(&["key", "--data", collector.data.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains(&fingerprint),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    let (code, report) = verify(&collector.data, &["--fingerprint", &fingerprint]);
    assert_eq!(code, 0, "{report:#}");

    // The attacker rewrites record 2 with fresh hashes, swaps in a key of their own, drops the
    // checkpoints, and lets the collector sign the forged chain.
    let segment = common_segment(&collector.data);
    let lines: Vec<String> = std::fs::read_to_string(&segment)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let mut forged = lines[..2].to_vec();
    let mut prev = chain::decode(lines[1].as_bytes()).unwrap().hash;
    for line in &lines[2..] {
        let record = chain::decode(line.as_bytes()).unwrap();
        let mut event = record.event.clone();
        if record.index == 2 {
            event["data"]["client"]["address"] = "10.0.0.66:4242".into();
        }
        let (line, hash) = chain::encode(record.index, &prev, &event.to_string());
        forged.push(line);
        prev = hash;
    }
    std::fs::write(&segment, forged.join("\n") + "\n").unwrap();
    let other = stopped_store();
    for file in ["signing.key", "checkpoint.pub"] {
        std::fs::copy(other.data.join(file), collector.data.join(file)).unwrap();
    }
    std::fs::remove_file(collector.data.join("checkpoints.ndjson")).unwrap();
    let mut resigned = Collector::start_in(&collector.dir, &[]);
    resigned.stop();

    // The key beside the data vouches for the forgery; the pinned fingerprint does not.
    let (code, report) = verify(&collector.data, &[]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["key"]["pinned"], false, "{report:#}");
    assert!(
        verify_text(&collector.data, &[]).contains("not pinned"),
        "the unpinned verify says what it proves"
    );
    let (code, report) = verify(&collector.data, &["--fingerprint", &fingerprint]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["problems"][0]["kind"], "untrustedKey", "{report:#}");
    assert_eq!(report["key"]["pinned"], true, "{report:#}");
}

fn common_segment(data: &Path) -> std::path::PathBuf {
    let mut files: Vec<_> = std::fs::read_dir(data.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| std::fs::metadata(p).unwrap().len() > 0)
        .collect();
    files.sort();
    files.remove(0)
}

#[test]
fn the_newest_segment_removed_with_its_checkpoints_is_found() {
    let mut collector = Collector::start(&["--segment-max-bytes", "2000"]);
    for n in 1..=12 {
        collector.send(&[event("s1", n, &About::default())]);
    }
    collector.stop();
    let (code, report) = verify(&collector.data, &[]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["stopped"], true, "{report:#}");

    // Remove the newest segment that holds records, every segment after it, and every
    // checkpoint line about them.
    let mut files: Vec<_> = std::fs::read_dir(collector.data.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let newest = files
        .iter()
        .rposition(|p| std::fs::metadata(p).unwrap().len() > 0)
        .unwrap();
    assert!(newest >= 1, "the test needs two segments: {files:?}");
    let gone: Vec<String> = files[newest..]
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for path in &files[newest..] {
        std::fs::remove_file(path).unwrap();
    }
    let checkpoints = collector.data.join("checkpoints.ndjson");
    let kept: Vec<String> = std::fs::read_to_string(&checkpoints)
        .unwrap()
        .lines()
        .filter(|l| !gone.iter().any(|g| l.contains(g.as_str())))
        .map(str::to_string)
        .collect();
    std::fs::write(&checkpoints, kept.join("\n") + "\n").unwrap();

    let (code, report) = verify(&collector.data, &[]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["problems"][0]["kind"], "removed", "{report:#}");
}

#[test]
fn records_after_the_last_checkpoint_are_reported_unsigned_and_a_cut_tail_shows_as_not_stopped() {
    // Killed before its first checkpoint: every record is present but nothing signed it yet.
    let mut collector = Collector::start(&["--checkpoint-seconds", "3600"]);
    let events: Vec<_> = (1..=4).map(|n| event("s1", n, &About::default())).collect();
    collector.send(&events);
    collector.kill();
    let (code, report) = verify(&collector.data, &[]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["unsignedRecords"], 4, "{report:#}");
    assert_eq!(report["stopped"], false, "{report:#}");
    assert!(
        verify_text(&collector.data, &[]).contains("not yet signed"),
        "{}",
        verify_text(&collector.data, &[])
    );

    // A clean stop signs everything and says so.
    let mut collector = Collector::start_in(&collector.dir, &["--checkpoint-seconds", "3600"]);
    collector.send(&[event("s1", 5, &About::default())]);
    collector.stop();
    let (code, report) = verify(&collector.data, &[]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["unsignedRecords"], 0, "{report:#}");
    assert_eq!(report["stopped"], true, "{report:#}");
}

#[test]
fn a_proxy_that_stops_sending_shows_as_a_quiet_session() {
    let collector = Collector::start(&[]);
    let now = Timestamp::now();
    let mut killed: Vec<_> = (1..=3)
        .map(|n| event("killed", n, &About::default()))
        .collect();
    for (n, e) in killed.iter_mut().enumerate() {
        e.time = now - SignedDuration::from_mins(120 - n as i64);
    }
    let mut live: Vec<_> = (1..=2)
        .map(|n| event("live", n, &About::default()))
        .collect();
    for e in &mut live {
        e.time = now;
    }
    collector.send(&killed);
    collector.send(&live);

    let (code, report) = verify(&collector.data, &["--quiet-after", "30m"]);
    assert_eq!(code, 0, "{report:#}");
    let quiet = report["quietSessions"].as_array().unwrap();
    assert_eq!(quiet.len(), 1, "{report:#}");
    assert_eq!(quiet[0]["session"], "killed");
    assert_eq!(quiet[0]["identity"], "shop/orders-app");
    assert_eq!(quiet[0]["lastSequence"], 3);
    assert_eq!(
        quiet[0]["lastSeen"].as_str().unwrap(),
        killed[2].time.to_string()
    );
    assert!(
        verify_text(&collector.data, &["--quiet-after", "30m"]).contains("session killed"),
        "{}",
        verify_text(&collector.data, &["--quiet-after", "30m"])
    );

    // The query API says the same.
    let (status, body) = common::request(
        &collector.addr,
        "GET",
        "/v1/sessions?quietAfter=30m",
        &[("Authorization", &format!("Bearer {QUERY_TOKEN}"))],
        "",
    );
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let sessions = answer["sessions"].as_array().unwrap();
    let state = |name: &str| {
        sessions
            .iter()
            .find(|s| s["session"] == name)
            .map(|s| s["state"].clone())
    };
    assert_eq!(state("killed"), Some("quiet".into()), "{answer:#}");
    assert_eq!(state("live"), Some("active".into()), "{answer:#}");
}

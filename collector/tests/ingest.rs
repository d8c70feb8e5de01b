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

#[test]
fn ingest_works_over_https() {
    use std::process::Command;
    use std::time::Duration;

    let run = streamward_e2e::cache::run_dir("collector-tls").unwrap();
    let dir = run.path();
    let ca = streamward_e2e::pki::Ca::new("collector-test-ca").unwrap();
    let serving = ca.issue_server(&["127.0.0.1", "localhost"]).unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let ca_file = write("ca.crt", ca.cert_pem());
    let cert = write("tls.crt", &serving.cert_pem);
    let key = write("tls.key", &serving.key_pem);
    let tokens = write("tokens", &format!("{TOKEN}\n"));
    let port = streamward_e2e::net::free_port().unwrap();
    let mut command = Command::new(common::binary());
    command
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(dir.join("data"))
        .arg("--token-file")
        .arg(&tokens)
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key);
    let mut process = streamward_e2e::process::Process::spawn(
        "streamward-collector",
        command,
        &dir.join("collector.log"),
    )
    .unwrap();
    let curl = |args: &[&str]| {
        Command::new("curl")
            .args(["-sS", "--cacert", ca_file.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap()
    };
    let base = format!("https://127.0.0.1:{port}");
    streamward_e2e::wait_for("the HTTPS listener", Duration::from_secs(30), || {
        process.check_running()?;
        Ok(curl(&[&format!("{base}/healthz")])
            .status
            .success()
            .then_some(()))
    })
    .unwrap();
    let batch = serde_json::to_string(&[event("tls", 1, &About::default())]).unwrap();
    let output = curl(&[
        "-w",
        "\n%{http_code}",
        "-H",
        "Content-Type: application/cloudevents-batch+json",
        "-H",
        &format!("Authorization: Bearer {TOKEN}"),
        "--data-binary",
        &batch,
        &format!("{base}/v1/events"),
    ]);
    let answer = String::from_utf8_lossy(&output.stdout);
    assert!(answer.ends_with("\n200"), "{answer}");
    assert!(answer.contains("\"accepted\":1"), "{answer}");
    // Plain HTTP to the TLS port gets nowhere.
    assert!(
        streamward_e2e::net::http_get(&format!("127.0.0.1:{port}"), "/healthz")
            .map(|(status, _)| status != 200)
            .unwrap_or(true)
    );
    assert_eq!(
        ids(&query(&dir.join("data"), &["--format", "ndjson"])),
        ["tls:1"]
    );
}

#[test]
fn every_acknowledged_batch_survives_a_kill_and_the_chain_stays_whole() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let mut collector = Collector::start(&[]);
    let addr = collector.addr.clone();
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..4)
        .map(|sender| {
            let addr = addr.clone();
            let acknowledged = acknowledged.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let session = format!("kill-{sender}");
                let mut sequence = 1;
                while !stop.load(Ordering::Relaxed) {
                    let batch: Vec<_> = (sequence..sequence + 50)
                        .map(|n| event(&session, n, &About::default()))
                        .collect();
                    let body = serde_json::to_string(&batch).unwrap();
                    let answer =
                        std::panic::catch_unwind(|| common::post(&addr, Some(TOKEN), &body));
                    match answer {
                        Ok((200, _)) => {
                            acknowledged
                                .lock()
                                .unwrap()
                                .extend(batch.iter().map(|e| e.id.clone()));
                            sequence += 50;
                        }
                        _ => return,
                    }
                }
            })
        })
        .collect();
    streamward_e2e::wait_for(
        "some batches stored",
        std::time::Duration::from_secs(30),
        || Ok((acknowledged.lock().unwrap().len() >= 2000).then_some(())),
    )
    .unwrap();
    collector.kill();
    stop.store(true, Ordering::Relaxed);
    for sender in senders {
        let _ = sender.join();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();

    let collector = Collector::start_in(&collector.dir.clone(), &[]);
    let stored: std::collections::HashSet<String> =
        ids(&query(&collector.data, &["--format", "ndjson"]))
            .into_iter()
            .collect();
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|id| !stored.contains(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged events lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    let output = common::cli(&["verify", "--data", collector.data.to_str().unwrap()]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    // The restarted collector carries on the same chain.
    assert_eq!(
        collector.send(&[event("after", 1, &About::default())]),
        (1, 0)
    );
}

#[test]
fn a_token_bound_to_a_workload_may_only_send_that_workloads_events() {
    let run = streamward_e2e::cache::run_dir("collector-bound").unwrap();
    let tokens = run.path().join("tokens");
    let bound = "bound-token-for-billing-0123456789";
    std::fs::write(&tokens, format!("{bound} shop/billing\n")).unwrap();
    let collector = Collector::start_with(
        run.path(),
        &["--token-file".to_string(), tokens.display().to_string()],
        &[],
    );
    let billing = About {
        service_account: "billing",
        ..About::default()
    };
    let orders = About::default();
    let body =
        |events: &[streamward_api::audit::AuditEvent]| serde_json::to_string(events).unwrap();
    let (status, answer) = collector.post(
        Some(bound),
        &body(&[event("b", 1, &billing), event("o", 1, &orders)]),
    );
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer.contains("o:1") && answer.contains("shop/billing"),
        "{answer}"
    );
    let (status, answer) = collector.post(Some(bound), &body(&[event("b", 1, &billing)]));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        ids(&query(&collector.data, &["--format", "ndjson"])),
        ["b:1"]
    );
}

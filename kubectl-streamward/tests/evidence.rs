//! `kubectl streamward evidence` against a real collector holding allowed, denied, masked,
//! granted and approved requests: every control section is filled from those events, the JSON
//! parses, the page is self-contained with its SVG charts; then a segment altered on disk makes
//! the report's first section say the chain check failed, naming the record.

use std::io::{Read, Seek, SeekFrom, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use streamward_api::audit::{
    Approval, ApprovalStep, AuditEvent, Client, Decision, Identity, Masked, Request, RequestRecord,
    Resource,
};
use streamward_e2e::process::Process;
use streamward_e2e::{net, wait_for, workspace_binary};

const TOKEN: &str = "proxy-token-0123456789abcdef";
const QUERY_TOKEN: &str = "query-token-0123456789abcdef";

struct Collector {
    addr: String,
    _process: Process,
}

fn start_collector(dir: &Path) -> Collector {
    let binary = workspace_binary("streamward-collector", "streamward-collector").unwrap();
    std::fs::write(dir.join("tokens"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(dir.join("query-tokens"), format!("{QUERY_TOKEN}\n")).unwrap();
    let addr = format!("127.0.0.1:{}", net::free_port().unwrap());
    let mut command = Command::new(binary);
    command
        .arg("serve")
        .arg("--data")
        .arg(dir.join("data"))
        .args(["--listen", &addr, "--checkpoint-seconds", "1"])
        .arg("--token-file")
        .arg(dir.join("tokens"))
        .arg("--query-token-file")
        .arg(dir.join("query-tokens"));
    let mut process =
        Process::spawn("streamward-collector", command, &dir.join("collector.log")).unwrap();
    wait_for("the collector to listen", Duration::from_secs(30), || {
        process.check_running()?;
        Ok(net::http_get(&addr, "/healthz")
            .ok()
            .filter(|(s, _)| *s == 200))
    })
    .unwrap();
    Collector {
        addr,
        _process: process,
    }
}

/// What one request event is.
struct Req {
    /// Seconds after the start.
    at: i64,
    session: &'static str,
    sequence: u64,
    service_account: &'static str,
    user: Option<&'static str>,
    api: &'static str,
    topic: &'static str,
    effect: &'static str,
    rule: &'static str,
    config: &'static str,
    masked: u64,
    approval: Option<(ApprovalStep, &'static [&'static str])>,
}

const BASE: Req = Req {
    at: 0,
    session: "orders-1",
    sequence: 1,
    service_account: "orders-app",
    user: None,
    api: "Produce",
    topic: "orders.created",
    effect: "Allow",
    rule: "StreamPolicy/shop/orders rule producers",
    config: "sha256:1111",
    masked: 0,
    approval: None,
};

fn event(start: Timestamp, req: Req) -> AuditEvent {
    let time = start + SignedDuration::from_secs(req.at);
    AuditEvent::request(
        time,
        RequestRecord {
            session_id: req.session.into(),
            sequence: req.sequence,
            identity: Identity {
                namespace: "shop".into(),
                service_account: req.service_account.into(),
                pod: Some("pod-1".into()),
                user: req.user.map(str::to_owned),
                groups: vec![],
            },
            client: Client {
                client_id: Some("rdkafka".into()),
                software_name: None,
                software_version: None,
                address: "10.0.0.7:50312".into(),
            },
            request: Request {
                api_key: req.api.into(),
                api_key_code: 0,
                api_version: 9,
                correlation_id: req.sequence as i32,
            },
            resources: vec![Resource {
                resource_type: "Topic".into(),
                name: req.topic.into(),
                operation: match req.api {
                    "Fetch" => "Read",
                    "DeleteTopics" => "Delete",
                    _ => "Write",
                }
                .into(),
                effect: req.effect.into(),
                partitions: vec![0],
                records: Some(1),
                bytes: Some(100),
                offsets: None,
                stored: Vec::new(),
            }],
            decision: Decision {
                effect: req.effect.into(),
                rule: req.rule.into(),
                config_hash: req.config.into(),
                reason: (req.effect != "Allow").then(|| "no rule allows it".into()),
                dry_run: false,
            },
            masking: if req.masked > 0 {
                vec![Masked {
                    rule: "shop/pii".into(),
                    fields: req.masked,
                }]
            } else {
                vec![]
            },
            approval: req.approval.map(|(step, approvers)| Approval {
                request: "shop/orders-app-deletetopics-x7k2p".into(),
                step,
                approvers: approvers.iter().map(|a| a.to_string()).collect(),
                comment: None,
            }),
            payload: None,
        },
    )
}

/// Posts events as a proxy does.
fn send(collector: &Collector, events: &[AuditEvent]) {
    let body = serde_json::to_string(events).unwrap();
    let mut stream = TcpStream::connect(&collector.addr).unwrap();
    write!(
        stream,
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: \
         application/cloudevents-batch+json\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: \
         {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// Runs `evidence` into `out`: (exit code, stdout, stderr, JSON, HTML).
fn evidence(
    collector: &Collector,
    from: Timestamp,
    to: Timestamp,
    out: &Path,
) -> (i32, String, serde_json::Value, String) {
    let url = format!("http://{}", collector.addr);
    let output = Command::new(env!("CARGO_BIN_EXE_kubectl-streamward"))
        .args(["evidence", "--collector-url", &url, "--token", QUERY_TOKEN])
        .args(["--from", &from.to_string(), "--to", &to.to_string()])
        .args(["--controls", "nist-800-53,soc2", "-o"])
        .arg(out)
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("evidence.json")).unwrap()).unwrap();
    let html = std::fs::read_to_string(out.join("evidence.html")).unwrap();
    (output.status.code().unwrap(), stdout, json, html)
}

fn control(report: &serde_json::Value, id: &str) -> String {
    let control = report["controls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["control"] == id)
        .unwrap_or_else(|| panic!("no control {id}"));
    let findings: Vec<&str> = control["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(!findings.is_empty(), "{id} has no findings");
    findings.join("\n")
}

#[test]
fn evidence_fills_every_control_from_real_events_and_leads_with_a_failed_chain_check() {
    let dir = tempfile::tempdir().unwrap();
    let collector = start_collector(dir.path());
    let now = Timestamp::now();
    let start = now - SignedDuration::from_mins(10);
    let events = vec![
        event(start, Req { at: 1, ..BASE }),
        event(
            start,
            Req {
                at: 2,
                session: "contractor-1",
                service_account: "contractor",
                user: Some("mallory"),
                topic: "payments.cards",
                effect: "Deny",
                rule: "default deny",
                ..BASE
            },
        ),
        event(
            start,
            Req {
                at: 3,
                session: "analytics-1",
                api: "Fetch",
                service_account: "analytics",
                masked: 3,
                ..BASE
            },
        ),
        event(
            start,
            Req {
                at: 5,
                session: "oncall-1",
                service_account: "oncall",
                user: Some("bob"),
                rule: "AccessGrant/shop/oncall-1",
                config: "sha256:2222",
                ..BASE
            },
        ),
        // Sequence 2 of orders-1 never arrives: a gap.
        event(
            start,
            Req {
                at: 6,
                sequence: 3,
                api: "DeleteTopics",
                effect: "RequireApproval",
                rule: "StreamPolicy/shop/orders rule deletes-need-two",
                config: "sha256:2222",
                approval: Some((ApprovalStep::Requested, &[])),
                ..BASE
            },
        ),
        event(
            start,
            Req {
                at: 7,
                sequence: 4,
                api: "DeleteTopics",
                rule: "StreamPolicy/shop/orders rule deletes-need-two",
                config: "sha256:2222",
                approval: Some((ApprovalStep::Approved, &["alice", "dave"])),
                ..BASE
            },
        ),
    ];
    send(&collector, &events);
    let from = now - SignedDuration::from_hours(1);
    let to = now + SignedDuration::from_hours(1);

    // Once the collector has signed a checkpoint of them.
    let out = dir.path().join("report");
    let (stdout, report, html) = wait_for("a signed checkpoint", Duration::from_secs(60), || {
        let (_, stdout, report, html) = evidence(&collector, from, to, &out);
        let signed = report["evidence"]["chain"]["checkpoints"]
            .as_array()
            .is_some_and(|c| !c.is_empty());
        Ok(signed.then_some((stdout, report, html)))
    })
    .unwrap();
    assert!(stdout.contains("chain verified"), "{stdout}");
    assert_eq!(report["verified"], true, "{report:#}");
    assert_eq!(report["verificationProblem"], serde_json::Value::Null);
    let ids: Vec<&str> = report["controls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["control"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "AU-2", "AU-3", "AU-6", "AU-9", "AU-12", "AC-2", "AC-3", "AC-6", "SC-7", "IR-4",
            "CC6.1", "CC6.2", "CC6.3", "CC7.2", "CC7.3"
        ]
    );
    for id in &ids {
        control(&report, id);
        assert!(html.contains(&format!("id=\"control-{id}\"")), "{id}");
    }
    let au2 = control(&report, "AU-2");
    assert!(au2.contains("Allow 4"), "{au2}");
    assert!(au2.contains("Deny 1"), "{au2}");
    assert!(au2.contains("shop/contractor"), "{au2}");
    assert!(au2.contains("mallory"), "{au2}");
    let au3 = control(&report, "AU-3");
    assert!(au3.contains("1 requests refused"), "{au3}");
    assert_eq!(
        report["evidence"]["denied"]["samples"][0]["id"],
        "contractor-1:1"
    );
    assert!(
        html.contains("href=\"#event-contractor-1_1\"")
            && html.contains("id=\"event-contractor-1_1\""),
        "the denied sample links to its event"
    );
    let au9 = control(&report, "AU-9");
    assert!(au9.contains("chain verified"), "{au9}");
    let key: serde_json::Value =
        serde_json::from_str(&net::http_get(&collector.addr, "/v1/key").unwrap().1).unwrap();
    let fingerprint = key["fingerprint"].as_str().unwrap();
    assert!(au9.contains(fingerprint), "{au9}");
    // The report's own queries are in the trail it reports on.
    assert!(au9.contains("reads of the audit trail recorded"), "{au9}");
    assert!(
        report["evidence"]["auditReads"]["total"].as_u64().unwrap() >= 1,
        "{report:#}"
    );
    let ac6 = control(&report, "AC-6");
    assert!(ac6.contains("AccessGrant/shop/oncall-1 1"), "{ac6}");
    assert!(ac6.contains("Requested 1"), "{ac6}");
    assert!(ac6.contains("Approved 1"), "{ac6}");
    assert!(ac6.contains("approvers: alice, dave"), "{ac6}");
    assert!(
        ac6.contains("3 values masked by 1 MaskingRules (shop/pii) on 1 topics (orders.created)"),
        "{ac6}"
    );
    let sc7 = control(&report, "SC-7");
    assert!(
        sc7.contains("2 policy configurations (config hashes) decided requests in the period, so the policy changed 1 times"),
        "{sc7}"
    );
    assert_eq!(
        report["evidence"]["policyChanges"][0]["configHash"],
        "sha256:1111"
    );
    let cc72 = control(&report, "CC7.2");
    assert!(
        cc72.contains(
            "1 proxy sessions are missing sequence numbers (events never delivered)\n\
             session orders-1 of shop/orders-app: sequence numbers 2 missing"
        ),
        "{cc72}"
    );
    assert!(cc72.contains("with a valid Ed25519 signature"), "{cc72}");
    // Charts: inline SVG with the decisions and the denied identity; nothing fetched online.
    assert!(html.contains("<svg role=\"img\" aria-label=\"Decisions over time\""));
    assert!(html.contains("<svg role=\"img\" aria-label=\"Top denied identities\""));
    assert!(html.contains("<title>"), "bars carry their counts");
    assert!(html.contains(">shop/contractor</text>"), "{html}");
    assert!(html.contains("<style>"));
    for asset in ["src=", "href=\"http", "url(", "@import", "<link", "<script"] {
        assert!(
            !html.contains(asset),
            "an asset reference {asset} in the page"
        );
    }
    let first = html.find("id=\"verification\"").unwrap();
    assert!(html[first..].starts_with("id=\"verification\">Chain verified"));

    // One byte of the denied event's record altered on disk.
    let segment = std::fs::read_dir(dir.path().join("data/segments"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let text = std::fs::read_to_string(&segment).unwrap();
    let line = text
        .lines()
        .position(|l| l.contains("\"id\":\"contractor-1:1\""))
        .unwrap();
    let offset: usize = text.lines().take(line).map(|l| l.len() + 1).sum();
    let at = offset + text.lines().nth(line).unwrap().find("mallory").unwrap();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    file.seek(SeekFrom::Start(at as u64)).unwrap();
    file.write_all(b"n").unwrap();
    drop(file);

    let out = dir.path().join("report-after");
    let (_, stdout, report, html) = evidence(&collector, from, to, &out);
    let segment_name = segment.file_name().unwrap().to_string_lossy().into_owned();
    assert!(stdout.contains("CHAIN VERIFICATION FAILED"), "{stdout}");
    // First in the JSON: verified false, and what failed.
    let text = std::fs::read_to_string(out.join("evidence.json")).unwrap();
    assert!(
        text.starts_with(
            "{\n  \"verified\": false,\n  \"verificationProblem\": \"altered in segment"
        ),
        "{text}"
    );
    let problem = report["verificationProblem"].as_str().unwrap();
    assert!(
        problem.starts_with(&format!(
            "altered in segment {segment_name} line {}",
            line + 1
        )),
        "{problem}"
    );
    assert!(problem.contains("event contractor-1:1"), "{problem}");
    // First on the page: the failure, naming the record.
    let body = html.find("<body>").unwrap() + "<body>".len();
    let failed = &html[body..];
    assert!(
        failed.starts_with(
            "<div class=\"failed\" id=\"verification\"><strong>CHAIN VERIFICATION FAILED.</strong>"
        ),
        "{failed}"
    );
    let first_div = &failed[..failed.find("</div>").unwrap()];
    assert!(first_div.contains(&segment_name), "{first_div}");
    assert!(first_div.contains("event contractor-1:1"), "{first_div}");
    assert!(control(&report, "AU-9").contains("CHAIN VERIFICATION FAILED"));
}

//! `kubectl streamward audit` against a real collector: filters reach the query API, the three
//! output formats, the kubeconfig's bearer token (or `--token`), the collector's refusal, and
//! `--follow` printing events as they arrive.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use jiff::Timestamp;
use streamward_api::audit::{
    AuditEvent, Client, Decision, Identity, Request, RequestRecord, Resource,
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
        .args(["--listen", &addr])
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

fn event(
    session: &str,
    sequence: u64,
    service_account: &str,
    user: Option<&str>,
    api: &str,
    effect: &str,
) -> AuditEvent {
    let time: Timestamp = format!("2026-12-01T10:00:{sequence:02}Z").parse().unwrap();
    AuditEvent::request(
        time,
        RequestRecord {
            session_id: session.into(),
            sequence,
            identity: Identity {
                namespace: "shop".into(),
                service_account: service_account.into(),
                pod: Some("pod-1".into()),
                user: user.map(str::to_owned),
                groups: vec![],
            },
            client: Client {
                client_id: Some("rdkafka".into()),
                software_name: None,
                software_version: None,
                address: "127.0.0.1:50312".into(),
            },
            request: Request {
                api_key: api.into(),
                api_key_code: 0,
                api_version: 9,
                correlation_id: sequence as i32,
            },
            resources: vec![Resource {
                resource_type: "Topic".into(),
                name: "orders.created".into(),
                operation: if api == "Fetch" { "Read" } else { "Write" }.into(),
                effect: effect.into(),
                partitions: vec![0],
                records: Some(1),
                bytes: Some(100),
                offsets: None,
                stored: Vec::new(),
            }],
            decision: Decision {
                effect: effect.into(),
                rule: "StreamPolicy/orders rule r, with a comma".into(),
                config_hash: "sha256:ab12".into(),
                reason: None,
                dry_run: false,
            },
            masking: vec![],
            approval: None,
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

fn plugin(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_kubectl-streamward"))
        .arg("audit")
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    (
        output.status.code().unwrap(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn audit_queries_the_collector_with_filters_formats_and_follow() {
    let dir = tempfile::tempdir().unwrap();
    let collector = start_collector(dir.path());
    send(
        &collector,
        &[
            event("a", 1, "orders-app", None, "Produce", "Allow"),
            event("a", 2, "orders-app", Some("alice"), "Fetch", "Deny"),
            event("b", 3, "billing", None, "Produce", "Allow"),
        ],
    );
    let url = format!("http://{}", collector.addr);
    let base = ["--collector-url", &url, "--token", QUERY_TOKEN];
    let audit = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        plugin(&args)
    };

    let (code, out, err) = audit(&["-o", "csv", "--decision", "Deny"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "time,identity,user,api,resources,decision,rule,session
2026-12-01T10:00:02Z,shop/orders-app,alice,Fetch,Topic:orders.created:Read,Deny,\"StreamPolicy/orders rule r, with a comma\",a#2
"
    );
    let (_, out, _) = audit(&["-o", "csv", "--identity", "shop/billing"]);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(out.contains(",b#3"), "{out}");
    let (_, out, _) = audit(&["-o", "csv", "--user", "alice", "--api", "fetch"]);
    assert!(
        out.lines().nth(1).is_some_and(|l| l.ends_with("a#2")),
        "{out}"
    );
    let (_, out, _) = audit(&[
        "-o",
        "csv",
        "--from",
        "2026-12-01T10:00:02Z",
        "--to",
        "2026-12-01T10:00:03Z",
    ]);
    assert_eq!(out.lines().count(), 2, "{out}");

    let (_, out, _) = audit(&["-o", "json", "--session", "a"]);
    let events: Vec<AuditEvent> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        events.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["a:1", "a:2"]
    );

    let (_, out, _) = audit(&[]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("TIME "), "{out}");
    assert_eq!(lines.len(), 4, "{out}");
    let decision = lines[0].find("DECISION").unwrap();
    assert_eq!(&lines[2][decision..decision + 4], "Deny", "{out}");

    // The token from the kubeconfig, when no --token is given.
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: 'https://127.0.0.1:6443'}}}}]
users: [{{name: u, user: {{token: {QUERY_TOKEN}}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
"
        ),
    )
    .unwrap();
    let (code, out, err) = plugin(&[
        "--collector-url",
        &url,
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "-o",
        "csv",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 4, "{out}");

    // A token the collector does not accept: its refusal, exit 1.
    let (code, _, err) = plugin(&["--collector-url", &url, "--token", "wrong"]);
    assert_eq!(code, 1);
    assert!(
        err.contains(
            "the collector refused the query (401 Unauthorized): the token is not a query token"
        ),
        "{err}"
    );
    // A bad filter: the collector's 400, saying which.
    let (code, _, err) = audit(&["--from", "yesterday"]);
    assert_eq!(code, 1);
    assert!(err.contains("400 Bad Request"), "{err}");

    // --follow prints what is there, then what arrives.
    let mut child = Command::new(env!("CARGO_BIN_EXE_kubectl-streamward"))
        .arg("audit")
        .args(base)
        .args(["-o", "csv", "--follow", "--interval", "200ms"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines_tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let next = || lines.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(next().starts_with("time,"));
    assert!(next().ends_with("a#1"));
    assert!(next().ends_with("a#2"));
    assert!(next().ends_with("b#3"));
    send(
        &collector,
        &[
            event("b", 3, "billing", None, "Produce", "Allow"),
            event("c", 4, "orders-app", None, "DeleteTopics", "Deny"),
        ],
    );
    let line = next();
    assert!(line.ends_with("c#4"), "{line}");
    assert!(line.contains(",DeleteTopics,"), "{line}");
    child.kill().unwrap();
    child.wait().unwrap();
}

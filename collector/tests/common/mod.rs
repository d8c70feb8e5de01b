//! The real collector process, and a small HTTP client for talking to it.
#![allow(dead_code)] // Each test binary uses its own part of this.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use jiff::Timestamp;
use streamward_api::audit::{
    AuditEvent, Client, Decision, Identity, Masked, Request, RequestRecord, Resource,
};
use streamward_e2e::process::Process;
use streamward_e2e::{cache, net, wait_for};

/// The token the tests' proxies send.
pub const TOKEN: &str = "proxy-token-0123456789abcdef";
/// The token that may query.
pub const QUERY_TOKEN: &str = "query-token-0123456789abcdef";

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_streamward-collector")
}

/// A running `streamward-collector serve`.
pub struct Collector {
    pub addr: String,
    pub data: PathBuf,
    pub dir: PathBuf,
    process: Process,
    _run: Option<tempfile::TempDir>,
}

impl Collector {
    /// Starts a collector in local mode with [`TOKEN`] and [`QUERY_TOKEN`], plus `args`.
    pub fn start(args: &[&str]) -> Collector {
        let run = cache::run_dir("collector").unwrap();
        let dir = run.path().to_path_buf();
        let mut collector = Collector::start_in(&dir, args);
        collector._run = Some(run);
        collector
    }

    /// Starts a collector whose data folder is `<dir>/data`; the token files are (re)written.
    pub fn start_in(dir: &Path, args: &[&str]) -> Collector {
        let tokens = dir.join("tokens");
        std::fs::write(&tokens, format!("# the test proxies\n{TOKEN}\n")).unwrap();
        let query_tokens = dir.join("query-tokens");
        std::fs::write(&query_tokens, format!("{QUERY_TOKEN}\n")).unwrap();
        let mut all: Vec<String> = vec!["--token-file".into(), tokens.display().to_string()];
        all.extend(args.iter().map(|a| a.to_string()));
        Collector::start_with(dir, &all, &[])
    }

    /// Starts `serve` with exactly `args` (plus data, listen and the query tokens) and `envs`.
    pub fn start_with(dir: &Path, args: &[String], envs: &[(&str, &Path)]) -> Collector {
        let data = dir.join("data");
        let port = net::free_port().unwrap();
        let addr = format!("127.0.0.1:{port}");
        let mut command = Command::new(binary());
        command
            .arg("serve")
            .arg("--data")
            .arg(&data)
            .arg("--listen")
            .arg(&addr)
            .arg("--query-token-file")
            .arg(dir.join("query-tokens"))
            .args(args)
            .env("RUST_LOG", "info");
        for (name, value) in envs {
            command.env(name, value);
        }
        if !dir.join("query-tokens").exists() {
            std::fs::write(dir.join("query-tokens"), format!("{QUERY_TOKEN}\n")).unwrap();
        }
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
            data,
            dir: dir.to_path_buf(),
            process,
            _run: None,
        }
    }

    /// Posts a batch (JSON text) with `token`.
    pub fn post(&self, token: Option<&str>, body: &str) -> (u16, String) {
        post(&self.addr, token, body)
    }

    /// Posts events with [`TOKEN`], expecting 200; returns (accepted, duplicates).
    pub fn send(&self, events: &[AuditEvent]) -> (u64, u64) {
        let (status, body) = self.post(Some(TOKEN), &serde_json::to_string(events).unwrap());
        assert_eq!(status, 200, "ingest answered {status}: {body}");
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
        (
            answer["accepted"].as_u64().unwrap(),
            answer["duplicates"].as_u64().unwrap(),
        )
    }

    /// Stops the collector with SIGTERM and waits for it to exit.
    pub fn stop(&mut self) {
        // SAFETY: kill(2) on a child this harness started and has not reaped.
        unsafe {
            libc::kill(self.process.pid() as i32, libc::SIGTERM);
        }
        wait_for("the collector to stop", Duration::from_secs(30), || {
            Ok((!self.process.is_running()).then_some(()))
        })
        .unwrap();
    }

    /// Kills the collector with SIGKILL: no chance to finish anything.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("collector.log")).unwrap_or_default()
    }
}

/// One HTTP/1.1 request over a fresh connection: (status, body).
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

pub fn post(addr: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/cloudevents-batch+json")];
    if let Some(bearer) = &bearer {
        headers.push(("Authorization", bearer));
    }
    request(addr, "POST", "/v1/events", &headers, body)
}

/// What an event is about, for [`event`].
#[derive(Clone)]
pub struct About {
    pub namespace: &'static str,
    pub service_account: &'static str,
    pub user: Option<&'static str>,
    pub api: &'static str,
    pub topic: &'static str,
    pub effect: &'static str,
    pub dry_run: bool,
    pub masked: u64,
}

impl Default for About {
    fn default() -> About {
        About {
            namespace: "shop",
            service_account: "orders-app",
            user: None,
            api: "Produce",
            topic: "orders.created",
            effect: "Allow",
            dry_run: false,
            masked: 0,
        }
    }
}

/// A request event of `session` number `sequence`.
pub fn event(session: &str, sequence: u64, about: &About) -> AuditEvent {
    let time: Timestamp = format!(
        "2026-12-01T10:{:02}:{:02}Z",
        (sequence / 60) % 60,
        sequence % 60
    )
    .parse()
    .unwrap();
    let operation = if about.api == "Fetch" {
        "Read"
    } else {
        "Write"
    };
    AuditEvent::request(
        time,
        RequestRecord {
            session_id: session.to_string(),
            sequence,
            identity: Identity {
                namespace: about.namespace.into(),
                service_account: about.service_account.into(),
                pod: Some("orders-7d9f".into()),
                user: about.user.map(str::to_string),
                groups: vec![],
            },
            client: Client {
                client_id: Some("rdkafka".into()),
                software_name: None,
                software_version: None,
                address: "127.0.0.1:50312".into(),
            },
            request: Request {
                api_key: about.api.into(),
                api_key_code: if about.api == "Fetch" { 1 } else { 0 },
                api_version: 9,
                correlation_id: sequence as i32,
            },
            resources: vec![Resource {
                resource_type: "Topic".into(),
                name: about.topic.into(),
                operation: operation.into(),
                effect: about.effect.into(),
                partitions: vec![0],
                records: Some(1),
                bytes: Some(100),
                offsets: None,
                stored: Vec::new(),
            }],
            decision: Decision {
                effect: about.effect.into(),
                rule: format!("StreamPolicy/{} rule r", about.namespace),
                config_hash: "sha256:ab12".into(),
                reason: (about.effect != "Allow").then(|| "not allowed".into()),
                dry_run: about.dry_run,
            },
            masking: if about.masked > 0 {
                vec![Masked {
                    rule: "pii".into(),
                    fields: about.masked,
                }]
            } else {
                vec![]
            },
            approval: None,
            payload: None,
        },
    )
}

/// Runs the collector CLI.
pub fn cli(args: &[&str]) -> Output {
    Command::new(binary()).args(args).output().unwrap()
}

/// `query --data <data> <args>`: stdout, failing on a non-zero exit.
pub fn query(data: &Path, args: &[&str]) -> String {
    let mut all = vec!["query", "--data", data.to_str().unwrap()];
    all.extend_from_slice(args);
    let output = cli(&all);
    assert!(
        output.status.success(),
        "query failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The ids of NDJSON output, in order.
pub fn ids(ndjson: &str) -> Vec<String> {
    ndjson
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["id"].as_str().unwrap().to_string()
        })
        .collect()
}

//! `kubectl streamward audit` against a real collector: filters reach the query API, the three
//! output formats, the kubeconfig's bearer token (or `--token`), the collector's refusal, and
//! `--follow` printing events as they arrive; then, with no `--collector-url`, through a real
//! kube-apiserver's service proxy as the kubectl user, where RBAC (the chart's
//! `streamward-audit-reader`) decides who gets through.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use jiff::Timestamp;
use streamward_api::audit::{
    AuditEvent, Client, Decision, EventData, Identity, Request, RequestRecord, Resource,
};
use streamward_e2e::egress::{self, ClusterEgress};
use streamward_e2e::helm::{self, Helm};
use streamward_e2e::kube::{ApiServerOptions, KubeApiServer};
use streamward_e2e::process::{Process, run};
use streamward_e2e::{collector, net, wait_for, workspace_binary};

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

const ALICE: &str = "alice-token-0123456789abcdef";
const BOB: &str = "bob-token-0123456789abcdef";
const CAROL: &str = "carol-token-0123456789abcdef";
const ERIN: &str = "erin-token-0123456789abcdef";
/// The collector pod's address as the API server sees it (the egress maps it to 127.0.0.1).
const POD_IP: &str = "10.244.0.10";

fn kubectl(server: &KubeApiServer, args: &[&str]) {
    run(&format!("kubectl {args:?}"), server.kubectl().args(args)).unwrap();
}

/// A kubeconfig that authenticates with `token` (as an OIDC login leaves one).
fn token_kubeconfig(server: &KubeApiServer, name: &str, token: &str) -> std::path::PathBuf {
    let file = server.dir().join(format!("{name}.kubeconfig"));
    std::fs::write(
        &file,
        format!(
            "apiVersion: v1
kind: Config
clusters: [{{name: e2e, cluster: {{server: '{}', certificate-authority: '{}'}}}}]
users: [{{name: {name}, user: {{token: {token}}}}}]
contexts: [{{name: {name}, context: {{cluster: e2e, user: {name}}}}}]
current-context: {name}
",
            server.url(),
            server.ca_file().display()
        ),
    )
    .unwrap();
    file
}

fn query_events(json_lines: &str) -> Vec<(String, u16)> {
    json_lines
        .lines()
        .map(|l| serde_json::from_str::<AuditEvent>(l).unwrap())
        .filter_map(|e| match e.data {
            EventData::Query(q) => Some((q.reader.user.clone(), q.status)),
            _ => None,
        })
        .collect()
}

#[test]
fn audit_reaches_the_collector_through_the_api_servers_service_proxy_as_the_kubectl_user() {
    // People with bearer tokens, as an OIDC login would give them.
    let people = tempfile::tempdir().unwrap();
    let tokens = people.path().join("tokens.csv");
    std::fs::write(
        &tokens,
        format!(
            "{ALICE},alice,alice-uid,\"auditors\"\n{BOB},bob,bob-uid,\"developers\"\n\
             {CAROL},carol,carol-uid,\"developers\"\n{ERIN},erin,erin-uid,\"auditors\"\n"
        ),
    )
    .unwrap();
    // The API server reaches pods through the cluster egress, as through konnectivity.
    let cluster_egress = ClusterEgress::start(people.path()).unwrap();
    let server = KubeApiServer::start_with(ApiServerOptions {
        extra_args: vec![
            format!("--token-auth-file={}", tokens.display()),
            cluster_egress.apiserver_arg(),
        ],
        ..ApiServerOptions::default()
    })
    .unwrap();
    let plugins = common::plugin_dir(&server);

    // The collector's RBAC and the reader ClusterRole as the chart renders them.
    kubectl(&server, &["create", "namespace", helm::NAMESPACE]);
    let rendered = Helm::offline()
        .unwrap()
        .template_with(
            &[],
            &[
                "--show-only",
                "templates/serviceaccounts.yaml",
                "--show-only",
                "templates/collector-rbac.yaml",
            ],
        )
        .unwrap();
    let file = server.dir().join("collector-rbac.yaml");
    std::fs::write(&file, rendered).unwrap();
    kubectl(&server, &["apply", "-f", &file.display().to_string()]);
    // alice's group reads the audit trail; carol may reach the collector but not read it.
    kubectl(
        &server,
        &[
            "create",
            "clusterrolebinding",
            "auditors-read-audit",
            "--clusterrole=streamward-audit-reader",
            "--group=auditors",
        ],
    );
    kubectl(
        &server,
        &[
            "create",
            "role",
            "-n",
            helm::NAMESPACE,
            "reach-collector",
            "--verb=get",
            "--resource=services/proxy",
            "--resource-name=https:streamward-collector:8443",
        ],
    );
    kubectl(
        &server,
        &[
            "create",
            "rolebinding",
            "-n",
            helm::NAMESPACE,
            "carol-reaches-collector",
            "--role=reach-collector",
            "--user=carol",
        ],
    );

    // The collector as the chart runs it (HTTPS, TokenReview, RBAC-authorized queries), on
    // 127.0.0.1, playing the pod behind the chart's Service `streamward-collector` (https, 8443).
    let collector_kubeconfig = server
        .service_account_kubeconfig(helm::NAMESPACE, "streamward-collector")
        .unwrap();
    let run_dir = streamward_e2e::cache::run_dir("plugin-service-proxy").unwrap();
    let binary = workspace_binary("streamward-collector", "streamward-collector").unwrap();
    let collector = collector::Collector::start_in_cluster_mode_with(
        &binary,
        run_dir.path(),
        &collector_kubeconfig,
        server.ca(),
        &["--query-authorization=kubernetes"],
    )
    .unwrap();
    egress::serve_as_pod(
        &server,
        helm::NAMESPACE,
        "streamward-collector",
        "https",
        8443,
        POD_IP,
    )
    .unwrap();
    cluster_egress.route(
        format!("{POD_IP}:8443").parse().unwrap(),
        collector.addr().parse().unwrap(),
    );

    let audit_as = |kubeconfig: &Path, extra: &[&str]| {
        let mut args = vec!["audit", "-o", "json"];
        args.extend_from_slice(extra);
        common::plugin_as(&server, &plugins, kubeconfig, &args)
    };
    let alice = token_kubeconfig(&server, "alice", ALICE);
    let bob = token_kubeconfig(&server, "bob", BOB);
    let carol = token_kubeconfig(&server, "carol", CAROL);

    // alice, bound to streamward-audit-reader, gets through: no --collector-url, no
    // port-forward. Her first query is in the trail her second one reads.
    let (code, _, err) = audit_as(&alice, &[]);
    assert_eq!(code, 0, "{err}");

    // bob has no binding: the API server refuses to proxy, and the plugin says what he lacks.
    let (code, _, err) = audit_as(&bob, &[]);
    assert_eq!(code, 1, "{err}");
    for needle in [
        "the API server refused to proxy to the collector (403 Forbidden)",
        "User \"bob\" cannot get resource \"services/proxy\"",
        "needs `get services/proxy` on https:streamward-collector:8443 in streamward-system",
        "streamward-audit-reader",
    ] {
        assert!(err.contains(needle), "{needle:?} in {err}");
    }

    // carol reaches the collector, which asks RBAC whether she may read: no.
    let (code, _, err) = audit_as(&carol, &[]);
    assert_eq!(code, 1, "{err}");
    for needle in [
        "the collector refused the query (403 Forbidden)",
        "user \"carol\"",
        "list on auditevents.streamward.io",
    ] {
        assert!(err.contains(needle), "{needle:?} in {err}");
    }

    // alice reads who queried: her own first query and carol's refused one, as the collector
    // authenticated them from the tokens that came through the service proxy.
    let (code, out, err) = audit_as(&alice, &["--type", "query"]);
    assert_eq!(code, 0, "{err}");
    let queries = query_events(&out);
    assert!(queries.contains(&("alice".to_owned(), 200)), "{queries:?}");
    assert!(queries.contains(&("carol".to_owned(), 403)), "{queries:?}");
    assert!(
        !queries.iter().any(|(user, _)| user == "bob"),
        "{queries:?}"
    );

    // evidence takes the same way in.
    let report = server.dir().join("evidence");
    let (code, _, err) = common::plugin_as(
        &server,
        &plugins,
        &alice,
        &[
            "evidence",
            "--from",
            "-1h",
            "-o",
            &report.display().to_string(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("evidence.json")).unwrap())
            .unwrap();
    assert_eq!(
        json["collector"].as_str().unwrap(),
        format!(
            "service streamward-system/streamward-collector:8443 through the API server {}",
            server.url()
        )
    );

    // A kubeconfig whose exec plugin logs in (as EKS's, GKE's, OIDC helpers do): its token.
    let login = server.dir().join("erin-login.sh");
    std::fs::write(
        &login,
        format!(
            "#!/bin/sh\necho '{{\"apiVersion\":\"client.authentication.k8s.io/v1\",\
             \"kind\":\"ExecCredential\",\"status\":{{\"token\":\"{ERIN}\"}}}}'\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&login, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let erin = server.dir().join("erin.kubeconfig");
    std::fs::write(
        &erin,
        format!(
            "apiVersion: v1
kind: Config
clusters: [{{name: e2e, cluster: {{server: '{}', certificate-authority: '{}'}}}}]
users: [{{name: erin, user: {{exec: {{apiVersion: client.authentication.k8s.io/v1, command: '{}', interactiveMode: Never}}}}}}]
contexts: [{{name: erin, context: {{cluster: e2e, user: erin}}}}]
current-context: erin
",
            server.url(),
            server.ca_file().display(),
            login.display()
        ),
    )
    .unwrap();
    let (code, _, err) = audit_as(&erin, &[]);
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = audit_as(&alice, &["--type", "query"]);
    assert!(
        query_events(&out).contains(&("erin".to_owned(), 200)),
        "{out}"
    );

    // A kubeconfig that logs in with a client certificate has no token for the collector.
    let dave = server.user_kubeconfig("dave", &["auditors"]).unwrap();
    let (code, _, err) = audit_as(&dave, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("the kubeconfig's user has no bearer token")
            && err.contains("--token \"$(kubectl create token"),
        "{err}"
    );
}

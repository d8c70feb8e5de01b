//! `just demo`: a real Kafka, the Streamward proxy serving the policies in `config/samples/`,
//! and real clients showing what it allows and what it refuses, each with the client's own
//! output; then the audit trail of all of it, from the real `streamward-collector`.
//!
//! Usage: `demo --sidecar PATH/TO/streamward-sidecar --collector PATH/TO/streamward-collector`

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use streamward_e2e::collector::Collector;
use streamward_e2e::kafka::KafkaCluster;
use streamward_e2e::sidecar::Sidecar;
use streamward_e2e::{cache, clients, process, wait_for};

/// The proxy's token for the collector (local mode: a token file on each side).
const TOKEN: &str = "demo-orders-app-audit-token";

/// The demo: Kafka, the proxy with `config/samples/`, real clients, then the audit trail.
#[derive(Parser)]
struct Args {
    /// The proxy binary.
    #[arg(long)]
    sidecar: PathBuf,
    /// The collector binary.
    #[arg(long)]
    collector: PathBuf,
}

fn main() -> Result<()> {
    let Args {
        sidecar: sidecar_binary,
        collector: collector_binary,
    } = Args::parse();
    let run = cache::run_dir("demo")?;

    say("Starting Apache Kafka (KRaft, one node) from its Maven Central jars...");
    let kafka = KafkaCluster::start(1)?;
    let direct = kafka.bootstrap();

    // The platform team's topics, created directly on the broker.
    for topic in ["orders.created", "payments.ledger"] {
        process::run(
            "kafka-topics --create",
            kafka
                .dist()
                .tool("org.apache.kafka.tools.TopicCommand")
                .args(["--bootstrap-server", &direct, "--create", "--topic", topic])
                .args(["--partitions", "1", "--replication-factor", "1"]),
        )?;
    }

    let samples = cache::source_root().join("config/samples");
    let mut files = Vec::new();
    for entry in
        std::fs::read_dir(&samples).with_context(|| format!("reading {}", samples.display()))?
    {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("sample.yaml")
                .to_string();
            // The samples point at 127.0.0.1:9092; the demo's broker is on a free port.
            let text = std::fs::read_to_string(&path)?.replace("127.0.0.1:9092", &direct);
            files.push((name, text));
        }
    }
    let files: Vec<(&str, String)> = files.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    say("Starting streamward-collector (local mode: a token file)...");
    let collector = Collector::start(&collector_binary, run.path(), TOKEN, "demo/orders-app")?;
    say("Starting streamward-sidecar with config/samples/ for demo/orders-app, auditing to it...");
    std::fs::write(run.path().join("token"), format!("{TOKEN}\n"))?;
    let url = format!("http://{}", collector.addr());
    let token = run.path().join("token").display().to_string();
    let spool = run.path().join("spool").display().to_string();
    let proxy = Sidecar::start_with_args(
        &sidecar_binary,
        &files,
        "demo",
        "orders-app",
        &[
            "--audit-url",
            &url,
            "--audit-token-file",
            &token,
            "--audit-spool",
            &spool,
        ],
    )?;
    println!(
        "  Kafka is at {direct}; the proxy's bootstrap is {}.\n",
        proxy.bootstrap
    );

    step("1. Produce three orders through the proxy (allowed: rule orders-topics)");
    let mut kcat = clients::kcat()?;
    kcat.args(["-P", "-b", &proxy.bootstrap, "-t", "orders.created"]);
    show(&mut kcat, Some("order-1001\norder-1002\norder-1003\n"))?;

    step("2. Consume them back through the proxy");
    let mut kcat = clients::kcat()?;
    kcat.args([
        "-C",
        "-b",
        &proxy.bootstrap,
        "-t",
        "orders.created",
        "-o",
        "beginning",
        "-e",
    ]);
    show(&mut kcat, None)?;

    step("3. Produce to payments.ledger (denied: the payments. prefix is off limits)");
    let mut kcat = clients::kcat()?;
    kcat.args([
        "-P",
        "-b",
        &proxy.bootstrap,
        "-t",
        "payments.ledger",
        "-X",
        "message.timeout.ms=5000",
    ]);
    show(&mut kcat, Some("steal-1\n"))?;

    step(
        "4. Delete orders.created with Kafka's own topic tool (denied: rule no-destructive-admin)",
    );
    let mut delete = kafka.dist().tool("org.apache.kafka.tools.TopicCommand");
    delete.args([
        "--bootstrap-server",
        &proxy.bootstrap,
        "--delete",
        "--topic",
        "orders.created",
    ]);
    show(&mut delete, None)?;

    step("5. The topic is still there (asked of the broker directly)");
    let mut list = kafka.dist().tool("org.apache.kafka.tools.TopicCommand");
    list.args(["--bootstrap-server", &direct, "--list"]);
    show(&mut list, None)?;

    step("6. The proxy's decisions, from its /metrics");
    let (_, metrics) = streamward_e2e::net::http_get(&proxy.admin, "/metrics")?;
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("streamward_sidecar_decisions_total"))
    {
        println!("  {line}");
    }

    step("7. The audit trail: one event per request the clients sent, from the collector");
    let queued = proxy.metric("streamward_sidecar_audit_events_total{outcome=\"queued\"}")?;
    wait_for(
        "the audit events to reach the collector",
        Duration::from_secs(30),
        || {
            let delivered =
                proxy.metric("streamward_sidecar_audit_events_total{outcome=\"delivered\"}")?;
            Ok((delivered >= queued).then_some(()))
        },
    )?;
    let mut query = Command::new(&collector_binary);
    query
        .arg("query")
        .arg("--data")
        .arg(collector.data())
        .args(["--namespace", "demo", "--format", "table"]);
    println!("$ streamward-collector query --data <data> --namespace demo --format table");
    let output = query.output()?;
    print!("{}", String::from_utf8_lossy(&output.stdout));
    for line in String::from_utf8_lossy(&output.stderr).lines() {
        println!("  {line}");
    }
    Ok(())
}

fn say(text: &str) {
    println!("{text}");
}

fn step(title: &str) {
    println!("\n=== {title}");
}

/// Runs a client, printing the command line and everything it prints.
fn show(command: &mut Command, stdin: Option<&str>) -> Result<()> {
    let program = command
        .get_program()
        .to_string_lossy()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let args: Vec<String> = command
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .skip_while(|a| program == "java" && !a.starts_with("org.apache.kafka"))
        .collect();
    println!("$ {program} {}", args.join(" "));
    let mut child = command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())?;
    }
    let output = child.wait_with_output()?;
    for line in String::from_utf8_lossy(&output.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&output.stderr).lines())
        .filter(|l| !l.trim().is_empty() && !l.starts_with('\t'))
        .take(12)
    {
        println!("  {line}");
    }
    println!("  (exit status: {})", output.status.code().unwrap_or(-1));
    Ok(())
}

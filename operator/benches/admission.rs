//! `just bench-admission`: pod admission latency with the injection webhook, through a real
//! kube-apiserver and directly against the webhook, side by side in one run.
//!
//! Through the API server, each request is a dry-run pod create (`?dryRun=All`: admitted,
//! mutated and validated, never stored) timed at the client; the same create without the
//! opt-in label (the webhook is not called) is the baseline, so the difference is what the
//! webhook adds. Directly, each request is one AdmissionReview POST over a kept-alive TLS
//! connection. The pure patch planning is timed in process as well.
//!
//! Usage: `cargo bench -p streamward-operator --bench admission -- [--requests N]`.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use streamward_e2e::kube::KubeApiServer;
use streamward_e2e::process::{Process, run};
use streamward_e2e::{cache, net, wait_for};
use streamward_operator::webhook::inject::{self, InjectSettings, PodContext};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

fn main() -> Result<()> {
    let mut requests = 1000usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--requests" {
            requests = args
                .next()
                .context("--requests needs a number")?
                .parse()
                .context("--requests needs a number")?;
        }
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(bench(requests))
}

fn kubectl(server: &KubeApiServer, args: &[&str]) -> Result<()> {
    run(&format!("kubectl {args:?}"), server.kubectl().args(args)).map(drop)
}

fn pod(name: &str, opted_in: bool) -> Value {
    let labels = if opted_in {
        json!({"app": "bench", "streamward.io/inject": "true"})
    } else {
        json!({"app": "bench"})
    };
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "bench", "labels": labels},
        "spec": {
            "serviceAccountName": "bench-app",
            "containers": [{
                "name": "app",
                "image": "bench:1",
                "env": [{"name": "LOG_LEVEL", "value": "info"}],
            }],
        },
    })
}

struct Stats {
    what: String,
    sorted: Vec<Duration>,
}

impl Stats {
    fn new(what: &str, mut samples: Vec<Duration>) -> Stats {
        samples.sort();
        Stats {
            what: what.to_owned(),
            sorted: samples,
        }
    }

    fn at(&self, percent: usize) -> Duration {
        let n = self.sorted.len();
        self.sorted[(n * percent / 100).min(n - 1)]
    }

    fn print(&self) {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{:<58} {:>6} {:>9.3} {:>9.3} {:>9.3}",
            self.what,
            self.sorted.len(),
            ms(self.at(50)),
            ms(self.at(99)),
            ms(self.sorted[self.sorted.len() - 1]),
        );
    }
}

/// Times `requests` dry-run creates of `pod(opted_in)`, after 50 unmeasured ones.
async fn through_apiserver(
    api: &Api<Pod>,
    opted_in: bool,
    requests: usize,
) -> Result<Vec<Duration>> {
    let params = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let mut samples = Vec::with_capacity(requests);
    for i in 0..requests + 50 {
        let body: Pod = serde_json::from_value(pod(&format!("bench-{i}"), opted_in))?;
        let started = Instant::now();
        let created = api.create(&params, &body).await?;
        let elapsed = started.elapsed();
        let injected = created
            .spec
            .and_then(|s| s.init_containers)
            .is_some_and(|c| c.iter().any(|c| c.name == inject::PROXY_CONTAINER));
        if injected != opted_in {
            bail!("pod {i}: injected={injected}, expected {opted_in}");
        }
        if i >= 50 {
            samples.push(elapsed);
        }
    }
    Ok(samples)
}

/// Times `requests` AdmissionReview POSTs to the webhook over one kept-alive TLS connection.
async fn direct(address: SocketAddr, ca: &[u8], requests: usize) -> Result<Vec<Duration>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca) {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(address).await?;
    tcp.set_nodelay(true)?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::IpAddress(address.ip().into()), tcp)
        .await?;
    let mut stream = BufReader::new(tls);
    let mut samples = Vec::with_capacity(requests);
    for i in 0..requests + 50 {
        let review = json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": format!("bench-{i}"),
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "bench",
                "operation": "CREATE",
                "userInfo": {"username": "bench"},
                "object": pod("", true),
                "dryRun": true,
            },
        })
        .to_string();
        let request = format!(
            "POST /mutate-pods HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{review}",
            review.len()
        );
        let started = Instant::now();
        stream.get_mut().write_all(request.as_bytes()).await?;
        let mut length = None;
        let mut status = String::new();
        stream.read_line(&mut status).await?;
        loop {
            let mut line = String::new();
            stream.read_line(&mut line).await?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = Some(value.trim().parse::<usize>()?);
            }
        }
        let mut body = vec![0; length.context("no content-length in the webhook's answer")?];
        stream.read_exact(&mut body).await?;
        let elapsed = started.elapsed();
        let answer: Value = serde_json::from_slice(&body)?;
        if !status.contains(" 200 ") || answer["response"]["allowed"] != true {
            bail!("request {i}: {status} {answer}");
        }
        // kube writes the patch as an array of bytes, which the API server reads as well as
        // base64.
        let patch = &answer["response"]["patch"];
        if patch.as_array().is_none_or(Vec::is_empty) && patch.as_str().is_none_or(str::is_empty) {
            bail!("request {i}: no patch: {answer}");
        }
        if i >= 50 {
            samples.push(elapsed);
        }
    }
    Ok(samples)
}

fn in_process(requests: usize) -> Result<Vec<Duration>> {
    let pod: Pod = serde_json::from_value(pod("bench", true))?;
    let ctx = PodContext {
        namespace: "bench".into(),
    };
    let settings = InjectSettings::default();
    let mut samples = Vec::with_capacity(requests);
    for _ in 0..requests {
        let started = Instant::now();
        let patch =
            std::hint::black_box(inject::plan(&pod, &ctx, &settings).map_err(anyhow::Error::msg)?);
        samples.push(started.elapsed());
        if patch.0.is_empty() {
            bail!("no patch");
        }
    }
    Ok(samples)
}

async fn bench(requests: usize) -> Result<()> {
    let server = KubeApiServer::start()?;
    let crds = cache::source_root().join("crds");
    kubectl(&server, &["apply", "-f", &crds.display().to_string()])?;
    kubectl(
        &server,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd",
            "--all",
        ],
    )?;
    kubectl(&server, &["create", "namespace", "bench"])?;
    kubectl(&server, &["create", "namespace", "streamward-system"])?;
    let port = net::free_port()?;
    let log = server.dir().join("operator.log");
    let mut command = Command::new(env!("CARGO_BIN_EXE_streamward-operator"));
    command
        .env("KUBECONFIG", server.kubeconfig())
        .env("RUST_LOG", "warn")
        .args([
            "--webhook-url",
            &format!("https://127.0.0.1:{port}"),
            "--webhook-listen",
            &format!("127.0.0.1:{port}"),
            "--operator-namespace",
            "streamward-system",
            "--metrics-addr",
            &format!("127.0.0.1:{}", net::free_port()?),
            // Injected as installed: proxies audit to the collector the operator certifies.
            "--collector-url",
            "https://streamward-collector.streamward-system.svc:8443",
            "--collector-tls-secret",
            "streamward-collector-tls",
            "--collector-service-name",
            "streamward-collector",
        ]);
    let mut operator = Process::spawn("streamward-operator", command, &log)?;
    let client = server.client().await?;
    let pods = Api::<Pod>::namespaced(client.clone(), "bench");
    let probe: Pod = serde_json::from_value(pod("probe", true))?;
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    // Ready once a dry-run create of an opted-in pod comes back injected.
    let mut ready = false;
    for _ in 0..180 {
        operator.check_running()?;
        if let Ok(created) = pods.create(&dry_run, &probe).await
            && created.spec.and_then(|s| s.init_containers).is_some()
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if !ready {
        bail!("the webhook never injected:\n{}", operator.log_tail(30));
    }
    let ca = wait_for("the caBundle", Duration::from_secs(10), || {
        let output = server
            .kubectl()
            .args([
                "get",
                "mutatingwebhookconfiguration",
                "streamward",
                "-o",
                "json",
            ])
            .output()?;
        let config: k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration =
            serde_json::from_slice(&output.stdout)?;
        Ok(config
            .webhooks
            .and_then(|w| w.into_iter().next())
            .and_then(|w| w.client_config.ca_bundle)
            .map(|b| b.0))
    })?;

    println!(
        "pod admission, {requests} requests each after 50 warm-up (kube-apiserver {}, operator in release)",
        streamward_e2e::kube::KUBERNETES_VERSION
    );
    println!(
        "{:<58} {:>6} {:>9} {:>9} {:>9}",
        "", "n", "p50 ms", "p99 ms", "max ms"
    );
    let baseline = Stats::new(
        "API server, dry-run pod create, not opted in (no webhook)",
        through_apiserver(&pods, false, requests).await?,
    );
    let injected = Stats::new(
        "API server, dry-run pod create, opted in (injected)",
        through_apiserver(&pods, true, requests).await?,
    );
    let webhook = Stats::new(
        "webhook directly, AdmissionReview POST (keep-alive TLS)",
        direct(SocketAddr::from(([127, 0, 0, 1], port)), &ca, requests).await?,
    );
    let pure = Stats::new("inject::plan in process", in_process(requests)?);
    for stats in [&baseline, &injected, &webhook, &pure] {
        stats.print();
    }
    let added = |p| injected.at(p).saturating_sub(baseline.at(p)).as_secs_f64() * 1000.0;
    println!(
        "injection adds {:.3} ms at p50 and {:.3} ms at p99 through the API server (target: p99 <= 5 ms)",
        added(50),
        added(99)
    );
    operator.check_running()?;
    Ok(())
}

//! `streamward-collector serve | verify | query | key`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use streamward_collector::access::{self, QueryAccess};
use streamward_collector::alert::Alerts;
use streamward_collector::auth::{AUDIENCE, Authenticator, TokenFile, TokenReviewer};
use streamward_collector::checkpoint::{self, PublicKey, SigningKey};
use streamward_collector::forward;
use streamward_collector::metrics::Metrics;
use streamward_collector::query::{self, Filter, Format};
use streamward_collector::server::{self, Listen};
use streamward_collector::sessions;
use streamward_collector::state::App;
use streamward_collector::store::{self, Retention, Store};
use streamward_collector::verify;
use streamward_collector::writer::{self, WriterSettings};

#[derive(Parser)]
#[command(
    name = "streamward-collector",
    version,
    about = "The Streamward audit collector"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Take audit events from proxies and store them.
    Serve(Box<ServeArgs>),
    /// Prove a data folder's hash chain and checkpoints intact; exit 1 naming the first damage.
    Verify(VerifyArgs),
    /// Print stored events that match filters.
    Query(Box<QueryArgs>),
    /// Print the checkpoint key's public half and fingerprint, to record out of band.
    Key(KeyArgs),
}

#[derive(clap::Args)]
struct KeyArgs {
    /// The data folder.
    #[arg(long)]
    data: PathBuf,
    /// The signing key, if not `<data>/signing.key`; without a readable key the public key
    /// beside the data (`<data>/checkpoint.pub`) is shown.
    #[arg(long)]
    signing_key: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// The data folder (segments, checkpoints).
    #[arg(long, env = "STREAMWARD_COLLECTOR_DATA")]
    data: PathBuf,
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8480")]
    listen: SocketAddr,
    /// Local mode: proxies' tokens, one per line (optionally followed by
    /// `<namespace>/<serviceaccount>` to bind the token to that workload's events).
    #[arg(long, conflicts_with = "token_review")]
    token_file: Option<PathBuf>,
    /// Kubernetes: check proxies' projected service-account tokens with TokenReview (the
    /// in-cluster config or KUBECONFIG); a token may only send its own workload's events.
    #[arg(long)]
    token_review: bool,
    /// The audience the tokens must be minted for.
    #[arg(long, default_value = AUDIENCE)]
    audience: String,
    /// Static tokens that may use the query API (automation); they read everything.
    #[arg(long)]
    query_token_file: Option<PathBuf>,
    /// `kubernetes`: a Kubernetes user may query when a TokenReview authenticates their bearer
    /// token and RBAC lets them `list` `auditevents.streamward.io` (SubjectAccessReview).
    /// With neither this nor `--query-token-file` the query API is off.
    #[arg(long, value_enum, default_value = "none")]
    query_authorization: QueryAuthorization,
    /// The ClusterRole that grants reading the audit trail, named in the answer to a reader
    /// RBAC refuses.
    #[arg(long, default_value = access::READER_ROLE)]
    query_reader_role: String,
    /// The Ed25519 key that signs checkpoints; default `<data>/signing.key`. It is made only
    /// when the data folder is empty: a store with history and no key (or another key) does
    /// not start. Keep it off the data volume (a read-only Secret) so that whoever can write
    /// the data cannot sign.
    #[arg(long, env = "STREAMWARD_COLLECTOR_SIGNING_KEY")]
    signing_key: Option<PathBuf>,
    /// A segment is sealed (and a new one begun) past this size.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    segment_max_bytes: u64,
    /// How often the open segment gets a signed checkpoint.
    #[arg(long, default_value_t = 10)]
    checkpoint_seconds: u64,
    /// Remove sealed segments older than this many seconds.
    #[arg(long)]
    retain_seconds: Option<u64>,
    /// Remove the oldest sealed segments while the store is larger than this.
    #[arg(long)]
    retain_bytes: Option<u64>,
    /// Webhook alert sinks (YAML; see docs/audit.md).
    #[arg(long)]
    alerts: Option<PathBuf>,
    /// Forward every stored event to Kafka: bootstrap brokers, `host:port[,host:port…]`.
    #[arg(long, requires = "kafka_topic", value_delimiter = ',')]
    kafka_bootstrap: Vec<String>,
    /// The Kafka topic events are forwarded to (it must exist).
    #[arg(long, requires = "kafka_bootstrap")]
    kafka_topic: Option<String>,
    /// HTTPS: the PEM certificate chain.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// HTTPS: the PEM private key.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

/// How Kubernetes users are authorized to query.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum QueryAuthorization {
    /// No Kubernetes users (only query tokens, if any).
    None,
    /// TokenReview, then a SubjectAccessReview for `list` on `auditevents.streamward.io`.
    Kubernetes,
}

#[derive(clap::Args)]
struct VerifyArgs {
    /// The data folder.
    #[arg(long)]
    data: PathBuf,
    /// A trusted copy of the checkpoint public key (64 hex digits); default
    /// `<data>/checkpoint.pub`, which proves less, since it lives beside what it checks.
    #[arg(long, conflicts_with = "fingerprint")]
    public_key: Option<PathBuf>,
    /// The fingerprint (SHA-256 hex) of the public key, recorded at the collector's first
    /// start: `<data>/checkpoint.pub` must be that key.
    #[arg(long)]
    fingerprint: Option<String>,
    /// Sessions whose newest event is older than this are reported quiet (90s, 30m, 2h, 7d).
    #[arg(long, default_value = "15m", value_parser = sessions::parse_duration)]
    quiet_after: Duration,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct QueryArgs {
    /// The data folder.
    #[arg(long)]
    data: PathBuf,
    /// Events at or after (RFC 3339, or relative: -15m, -24h, -7d).
    #[arg(long)]
    since: Option<String>,
    /// Events before (RFC 3339, or relative).
    #[arg(long)]
    until: Option<String>,
    /// The workload's namespace.
    #[arg(long)]
    namespace: Option<String>,
    /// The workload's service account.
    #[arg(long)]
    service_account: Option<String>,
    /// The user the client authenticated as.
    #[arg(long)]
    user: Option<String>,
    /// A topic the request touched.
    #[arg(long)]
    topic: Option<String>,
    /// The Kafka API (Produce, Fetch, DeleteTopics, …).
    #[arg(long)]
    api_key: Option<String>,
    /// Allow, Deny, Partial, RequireApproval, or WouldDeny (DryRun refusals).
    #[arg(long)]
    decision: Option<String>,
    /// The proxy session id.
    #[arg(long)]
    session: Option<String>,
    /// Kinds of event (default: request and dropped; `query` shows who read the audit trail).
    #[arg(long = "type", value_enum, value_delimiter = ',')]
    kinds: Vec<query::Kind>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// At most this many events.
    #[arg(long)]
    limit: Option<usize>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(*args).map(|()| ExitCode::SUCCESS),
        Command::Verify(args) => run_verify(args),
        Command::Query(args) => run_query(*args).map(|()| ExitCode::SUCCESS),
        Command::Key(args) => run_key(args).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("streamward-collector: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run_verify(args: VerifyArgs) -> Result<ExitCode> {
    let pinned_fingerprint = args
        .fingerprint
        .as_deref()
        .map(checkpoint::parse_fingerprint)
        .transpose()?;
    let pinned = args.public_key.is_some() || pinned_fingerprint.is_some();
    let key_path = args
        .public_key
        .unwrap_or_else(|| args.data.join(store::PUBLIC_KEY));
    let key = PublicKey::read(&key_path)?;
    if !args.data.join(store::SEGMENTS).is_dir() {
        bail!(
            "{} is not a collector data folder (no segments/)",
            args.data.display()
        );
    }
    let mut report = verify::verify(&args.data, &key, args.quiet_after)?;
    report.trust(
        key_path.display().to_string(),
        pinned,
        pinned_fingerprint.as_deref(),
    );
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn run_key(args: KeyArgs) -> Result<()> {
    let signing = args
        .signing_key
        .unwrap_or_else(|| args.data.join(store::SIGNING_KEY));
    let (key, source) = if signing.exists() {
        (SigningKey::load(&signing)?.public_key(), signing)
    } else {
        let path = args.data.join(store::PUBLIC_KEY);
        (PublicKey::read(&path)?, path)
    };
    println!("public key:  {}", key.to_hex());
    println!("fingerprint: {}", key.fingerprint());
    println!("from:        {}", source.display());
    Ok(())
}

fn run_query(args: QueryArgs) -> Result<()> {
    let filter = Filter {
        since: args.since.as_deref().map(query::parse_time).transpose()?,
        until: args.until.as_deref().map(query::parse_time).transpose()?,
        namespace: args.namespace,
        service_account: args.service_account,
        user: args.user,
        topic: args.topic,
        api_key: args.api_key,
        decision: args.decision,
        session: args.session,
        kinds: (!args.kinds.is_empty()).then_some(args.kinds),
    };
    if !args.data.join(store::SEGMENTS).is_dir() {
        bail!(
            "{} is not a collector data folder (no segments/)",
            args.data.display()
        );
    }
    let stdout = std::io::stdout().lock();
    let mut writer = query::Writer::new(std::io::BufWriter::new(stdout), args.format);
    query::scan(&args.data, &filter, args.limit, |event| writer.write(event))?;
    writer.finish()?;
    Ok(())
}

fn serve(args: ServeArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve_async(args))
}

async fn serve_async(args: ServeArgs) -> Result<()> {
    let needs_kubernetes =
        args.token_review || args.query_authorization == QueryAuthorization::Kubernetes;
    let kubernetes = if needs_kubernetes {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Some(
            kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API server for TokenReview")?,
        )
    } else {
        None
    };
    let auth = match (&args.token_file, args.token_review, &kubernetes) {
        (Some(path), false, _) => Authenticator::Tokens(TokenFile::read(path)?),
        (None, true, Some(client)) => {
            Authenticator::TokenReview(TokenReviewer::new(client.clone(), args.audience.clone()))
        }
        _ => bail!(
            "say how proxies authenticate: --token-file FILE (local mode) or --token-review \
             (Kubernetes); the collector takes no unauthenticated events"
        ),
    };
    let access = QueryAccess {
        tokens: args
            .query_token_file
            .as_deref()
            .map(TokenFile::read)
            .transpose()?,
        kubernetes: match args.query_authorization {
            QueryAuthorization::Kubernetes => kubernetes,
            QueryAuthorization::None => None,
        },
        reader_role: args.query_reader_role.clone(),
    };
    let signing_key = args
        .signing_key
        .clone()
        .unwrap_or_else(|| args.data.join(store::SIGNING_KEY));
    let store = Store::open(&args.data, &signing_key, args.segment_max_bytes)?;
    let public_key = store.public_key();
    let metrics = Arc::new(Metrics::default());
    let mut listeners = Vec::new();
    if let Some(path) = &args.alerts {
        listeners.push(Alerts::read(path)?.start(metrics.clone())?);
    }

    let (writer, jobs) = writer::queue();
    let files = writer::FilesLock::default();
    let settings = WriterSettings {
        files: files.clone(),
        checkpoint_every: Duration::from_secs(args.checkpoint_seconds.max(1)),
        retention: Retention {
            max_age: args.retain_seconds.map(Duration::from_secs),
            max_bytes: args.retain_bytes,
        },
        listeners,
    };
    let handle = tokio::runtime::Handle::current();
    let writer_thread = std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || writer::run_writer(store, jobs, settings, handle))
        .context("starting the store writer")?;

    let app = Arc::new(App::new(
        auth,
        access,
        args.data.clone(),
        public_key,
        writer,
        files,
        metrics,
    ));
    if let Some(topic) = args.kafka_topic.clone() {
        let target = forward::Target {
            bootstrap: args.kafka_bootstrap.clone(),
            topic,
        };
        tracing::info!(topic = %target.topic, "forwarding stored events to Kafka");
        tokio::spawn(forward::run(args.data.clone(), target, app.metrics.clone()));
    }
    let listen = Listen {
        addr: args.listen,
        tls: args.tls_cert.zip(args.tls_key),
    };
    server::serve(listen, server::router(app), wait_for_signal()).await?;
    // The router (and with it every sender to the writer) is gone: the writer drains, signs a
    // last checkpoint and stops.
    let joined = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || writer_thread.join()),
    )
    .await;
    if joined.is_err() {
        tracing::error!("the store writer did not stop within 30 s; exiting without it");
    }
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping: finishing in-flight batches");
}

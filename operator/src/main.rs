//! `streamward-operator`: runs the config controller against the cluster of the current
//! kubeconfig (or the in-cluster service account), with leader election and `/metrics`, and the
//! admission webhooks when `--webhook-url` or `--webhook-service` says where the API server
//! reaches them. Every replica serves the webhooks; only the leader reconciles.

use anyhow::Context;
use clap::Parser;

/// The Streamward operator.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    controller: streamward_operator::controller::ControllerOptions,
    #[command(flatten)]
    webhook: streamward_operator::webhook::WebhookFlags,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(async {
            let client = kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API (KUBECONFIG or in-cluster)")?;
            tracing::info!("streamward-operator: config controller starting");
            tokio::select! {
                result = streamward_operator::controller::serve(client.clone(), cli.controller) => result,
                result = streamward_operator::webhook::run(client, cli.webhook) => result,
            }
        })
}

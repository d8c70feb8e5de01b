//! `streamward-operator`: runs the config controller against the cluster of the current
//! kubeconfig (or the in-cluster service account), with leader election and `/metrics`, and the
//! admission webhooks when `--webhook-url` or `--webhook-service` says where the API server
//! reaches them. Every replica serves the webhooks; only the leader reconciles.

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use streamward_operator::signing;

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
            let secrets = kube::Api::namespaced(client.clone(), &cli.controller.lease_namespace);
            let signer = loop {
                match signing::load_or_create(&secrets, &cli.controller.config_signing_secret).await {
                    Ok(signer) => break Arc::new(signer),
                    Err(error) => {
                        tracing::warn!(error = %format!("{error:#}"), "the config-signing key is not ready; retrying");
                        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                    }
                }
            };
            tracing::info!(public_key = %signer.public_key_hex(), "configs are signed");
            tokio::select! {
                result = streamward_operator::controller::serve(client.clone(), cli.controller, signer.clone()) => result,
                result = streamward_operator::webhook::run(client, cli.webhook, signer) => result,
            }
        })
}

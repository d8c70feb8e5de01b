//! `just demo-cluster`: Streamward as a user installs it, on a real single-node Kubernetes
//! cluster built here: the chart installed with `helm install`, the samples applied with
//! `kubectl`, and Kafka clients in pods that get the proxy injected. Shows an allowed and a
//! denied produce, masked and exempt consumers, an AccessGrant and its revocation, then the
//! audit trail from the collector. Needs root (the node).
//!
//! Usage: `demo_cluster --binaries <target>/release` (the release binaries of the three
//! programs, from which the images are built).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use streamward_e2e::cluster::{self, Cluster};
use streamward_e2e::node::Node;

#[derive(Parser)]
struct Args {
    /// The folder with the release binaries of streamward-operator, -sidecar and -collector.
    #[arg(long)]
    binaries: PathBuf,
}

fn say(text: &str) {
    println!("\n\x1b[1m▶ {text}\x1b[0m");
}

fn main() -> Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    say("Starting a one-node Kubernetes cluster (kubelet, containerd, CNI, CoreDNS)...");
    let node = Node::start()?;
    let result = demo(&node, &args);
    if let Err(error) = &result {
        eprintln!("{error:?}\n{}", cluster::diagnostics(&node));
    }
    drop(node);
    println!(
        "\nThe cluster is gone, the machine cleaned. {:.0}s in all.",
        started.elapsed().as_secs_f64()
    );
    result
}

fn demo(node: &Node, args: &Args) -> Result<()> {
    say(
        "Importing the Streamward images, starting Kafka (SASL) on the node's bridge, \
         `helm install streamward`, applying config/samples/ in a namespace labelled \
         streamward.io/inject=enabled...",
    );
    let c = Cluster::install(node, &args.binaries)?;

    say(
        "1. The orders service (service account orders-app) runs kcat in a Deployment. The \
         webhook injected the proxy as a native sidecar and pointed KAFKA_BOOTSTRAP_SERVERS at \
         it. Producing to orders.* is allowed; to payments.* it is denied:",
    );
    let logs = cluster::injected_app_produces_to_allowed_topic_and_is_refused_on_denied_topic(&c)?;
    cluster::the_app_cannot_read_the_broker_credentials_nor_use_the_broker_without_them(&c, &logs)?;
    println!(
        "   The app never sees the broker password: no Secret mounted, nothing in its \
         environment, and the broker refuses it without one (above)."
    );

    say(
        "3. MaskingRule orders-pii: orders-app reads card, email and phone masked; billing-app \
         (exempt) reads the record as written:",
    );
    cluster::consumers_read_masked_fields_masked_and_the_exempt_one_raw(&c)?;

    say(
        "4. An AccessGrant lets service account oncall read a payments topic; `kubectl patch` \
         revokes it and the open connection is refused:",
    );
    cluster::an_access_grant_opens_a_topic_and_its_revocation_closes_the_open_connection(&c)?;

    say("2. Every request of the orders pod is in the collector, under the pod's identity:");
    cluster::every_request_is_in_the_collector_under_the_pods_identity(&c, "orders")?;

    say("The audit trail (the collector's query API, GET /v1/events?format=table):");
    print!("{}", cluster::audit_trail(&c, 60)?);

    c.remove()
}

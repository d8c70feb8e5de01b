//! Installs everything the end-to-end tests use, up front, with the time each step took.
//! Every step is a no-op when the cache already has it; tests call the same functions lazily.

use std::time::Instant;

use anyhow::Result;

use crate::{clients, helm, kafka, kroxylicious, kube, node};

/// Installs Kafka, Kroxylicious (a benchmark peer), the Kubernetes binaries, Helm, the clients and the test node's programs and
/// images, printing one line per step.
pub fn all() -> Result<()> {
    step(
        &format!("Apache Kafka {} jars", kafka::KAFKA_VERSION),
        || kafka::install().map(drop),
    )?;
    step(
        &format!(
            "Kroxylicious {} jars (benchmark peer)",
            kroxylicious::KROXYLICIOUS_VERSION
        ),
        || kroxylicious::install().map(drop),
    )?;
    step(
        &format!(
            "kube-apiserver + kubectl {}, etcd {}",
            kube::KUBERNETES_VERSION,
            kube::ETCD_VERSION
        ),
        || kube::install().map(drop),
    )?;
    step(
        &format!(
            "node programs: containerd {}, CoreDNS {}",
            node::install::CONTAINERD_VERSION,
            node::install::COREDNS_VERSION
        ),
        || node::install::install().map(drop),
    )?;
    step(&format!("helm {}", helm::HELM_VERSION), || {
        helm::helm_binary().map(drop)
    })?;
    step("kcat", || clients::kcat().map(drop))?;
    step(
        &format!("confluent-kafka {}", clients::CONFLUENT_KAFKA_VERSION),
        || clients::python().map(drop),
    )?;
    step("node images (pause, CoreDNS, Kafka clients)", || {
        node::images::build_all(&node::install::install()?).map(drop)
    })?;
    Ok(())
}

fn step(what: &str, work: impl FnOnce() -> Result<()>) -> Result<()> {
    let started = Instant::now();
    work()?;
    println!(
        "provisioned {what:<50} {:>7.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

//! Streamward installed with `helm install` on a real node governs Kafka clients in pods: the
//! scenarios of [`streamward_e2e::cluster`], in order, against one node, one Kafka and one
//! release for the whole binary. On failure the node's state, Streamward's resources and its
//! pods' logs are printed.
//!
//! Needs root (the node), like `tests/node.rs`; never run it beside another node test.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::time::Instant;

use anyhow::Result;
use streamward_e2e::cluster::{self, Cluster};
use streamward_e2e::node::Node;

#[test]
fn streamward_installed_with_helm_governs_kafka_clients_in_pods() {
    let started = Instant::now();
    let release = cluster::release_binaries().expect("building the release binaries");
    eprintln!("release binaries: {:.1}s", started.elapsed().as_secs_f64());
    let started = Instant::now();
    let node = Node::start().expect("starting the node");
    eprintln!("node start: {:.1}s", started.elapsed().as_secs_f64());
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let result = Cluster::install(&node, &release).and_then(|c| scenarios(&c));
        if let Err(error) = &result {
            eprintln!("{error:?}\n{}", cluster::diagnostics(&node));
        }
        result.expect("cluster scenarios");
    }));
    drop(node);
    eprintln!(
        "suite (node start to stop): {:.1}s",
        started.elapsed().as_secs_f64()
    );
    if let Err(panic) = outcome {
        resume_unwind(panic);
    }
}

fn scenarios(c: &Cluster) -> Result<()> {
    let section = |name: &str, step: Instant| {
        eprintln!("== {name}: {:.1}s", step.elapsed().as_secs_f64());
    };
    let step = Instant::now();
    let orders_logs =
        cluster::injected_app_produces_to_allowed_topic_and_is_refused_on_denied_topic(c)?;
    section("1 injected app: allowed produce, denied produce", step);
    cluster::the_app_cannot_read_the_broker_credentials_nor_use_the_broker_without_them(
        c,
        &orders_logs,
    )?;
    section("5 credentials out of the app's reach", step);

    let step = Instant::now();
    cluster::consumers_read_masked_fields_masked_and_the_exempt_one_raw(c)?;
    section("3 masked and exempt consumers", step);

    let step = Instant::now();
    cluster::an_access_grant_opens_a_topic_and_its_revocation_closes_the_open_connection(c)?;
    section("4 access grant and revocation", step);

    let step = Instant::now();
    cluster::every_request_is_in_the_collector_under_the_pods_identity(c, "orders")?;
    section("2 every request in the collector", step);

    let step = Instant::now();
    cluster::without_operator_proxies_keep_serving_and_new_pods_wait_for_it(c)?;
    cluster::collector_restart_under_load_loses_no_event(c)?;
    section("6 operator and collector away", step);

    let step = Instant::now();
    cluster::the_audit_store_verifies_with_the_collector_stopped(c)?;
    section("2 streamward-collector verify", step);

    let step = Instant::now();
    cluster::helm_upgrade_changes_a_value_and_uninstall_keeps_the_audit_volume(c)?;
    section("7 helm upgrade and uninstall", step);

    c.remove()
}

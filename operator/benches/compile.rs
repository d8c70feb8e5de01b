//! `just bench-operator`: how long compiling 1,000 StreamPolicies and 10,000 AccessGrants takes
//! with `streamward_api::compile`, and how long the operator's whole plan of such a namespace
//! (every identity compiled, every object checked, every status computed) takes. Prints
//! numbers; the target in DESIGN.md is 2 s.

use std::hint::black_box;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use streamward_api::compile::{Inputs, compile};
use streamward_api::config::WorkloadIdentity;
use streamward_api::crd::{AccessGrant, StreamPolicy, StreamTarget};
use streamward_operator::plan::{Namespace, plan};

const POLICIES: usize = 1_000;
const GRANTS: usize = 10_000;
const IDENTITIES: usize = 100;
const NS: &str = "bench";

fn inputs() -> Inputs {
    let now = Timestamp::now();
    let target: StreamTarget = serde_json::from_value(serde_json::json!({
        "apiVersion": "streamward.io/v1alpha1", "kind": "StreamTarget",
        "metadata": {"name": "kafka", "namespace": NS},
        "spec": {"bootstrapServers": ["kafka-0.kafka:9092", "kafka-1.kafka:9092"]},
    }))
    .expect("a valid StreamTarget");
    let policies = (0..POLICIES)
        .map(|i| {
            serde_json::from_value::<StreamPolicy>(serde_json::json!({
                "apiVersion": "streamward.io/v1alpha1", "kind": "StreamPolicy",
                "metadata": {"name": format!("policy-{i}"), "namespace": NS, "uid": format!("uid-{i}"),
                             "creationTimestamp": now.to_string()},
                "spec": {
                    "subjects": {"serviceAccounts": [format!("app-{}", i % IDENTITIES)]},
                    "rules": [
                        {"name": "produce", "resources": [{"resourceType": "Topic", "name": format!("team-{i}."), "patternType": "Prefixed"}],
                         "operations": ["Write", "Describe"], "effect": "Allow"},
                        {"name": "consume", "resources": [{"resourceType": "Topic", "name": format!("shared.{i}.*"), "patternType": "Glob"}],
                         "operations": ["Read"], "effect": "Allow"},
                        {"name": "groups", "resources": [{"resourceType": "Group", "name": format!("team-{i}-"), "patternType": "Prefixed"}],
                         "operations": ["Read"], "effect": "Allow"},
                        {"name": "no-deletes", "resources": [{"resourceType": "Topic", "name": "*"}],
                         "operations": ["Delete", "Alter"], "effect": "Deny"},
                    ],
                },
            }))
            .expect("a valid StreamPolicy")
        })
        .collect();
    let grants = (0..GRANTS)
        .map(|i| {
            serde_json::from_value::<AccessGrant>(serde_json::json!({
                "apiVersion": "streamward.io/v1alpha1", "kind": "AccessGrant",
                "metadata": {"name": format!("grant-{i}"), "namespace": NS, "creationTimestamp": now.to_string()},
                "spec": {
                    "subjects": {"serviceAccounts": [format!("app-{}", i % IDENTITIES)]},
                    "resources": [{"resourceType": "Topic", "name": format!("incident-{i}")}],
                    "operations": ["Read"],
                    "durationSeconds": 3600,
                    "reason": "benchmark",
                },
            }))
            .expect("a valid AccessGrant")
        })
        .collect();
    Inputs {
        targets: vec![target],
        policies,
        grants,
        ..Inputs::default()
    }
}

/// The median of `runs` timings of `f`.
fn median(runs: usize, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

fn main() {
    let inputs = inputs();
    let identity = |i: usize| WorkloadIdentity {
        namespace: NS.into(),
        service_account: format!("app-{i}"),
    };
    println!(
        "inputs: {POLICIES} StreamPolicies (4 rules each), {GRANTS} AccessGrants, {IDENTITIES} workload identities, one namespace"
    );

    let one = median(7, || {
        black_box(compile(&inputs, &identity(0)).expect("compiles"));
    });
    let config = compile(&inputs, &identity(0)).expect("compiles");
    println!(
        "compile, one identity ({} policies, {} grants in its config): {:.1} ms",
        config.policies.len(),
        config.grants.len(),
        one.as_secs_f64() * 1e3
    );

    let all = median(3, || {
        for i in 0..IDENTITIES {
            black_box(compile(&inputs, &identity(i)).expect("compiles"));
        }
    });
    println!(
        "compile, all {IDENTITIES} identities (every policy and grant compiled into some config): {:.1} ms",
        all.as_secs_f64() * 1e3
    );

    let namespace = Namespace {
        name: NS.into(),
        inputs,
        ..Namespace::default()
    };
    let planned = median(3, || {
        black_box(plan(&namespace, Timestamp::now()).expect("plans"));
    });
    let result = plan(&namespace, Timestamp::now()).expect("plans");
    println!(
        "operator plan of the namespace ({} ConfigMaps/Roles/RoleBindings, {} statuses, per-object acceptance): {:.1} ms",
        result.identities.len(),
        result.statuses.len(),
        planned.as_secs_f64() * 1e3
    );
}

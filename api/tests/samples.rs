//! The examples in config/samples parse, compile and decide what their comments say.

use std::collections::BTreeMap;
use std::path::Path;

use jiff::{SignedDuration, Timestamp};
use streamward_api::acl::{Operation, ResourceType};
use streamward_api::compile::{Inputs, compile, parse_manifests};
use streamward_api::config::{Effect, Flow, WorkloadIdentity};
use streamward_api::decide::{Basis, Principal};

fn samples() -> Inputs {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/samples");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 3, "samples missing in {}", dir.display());
    let mut all = Inputs::default();
    for path in paths {
        let yaml = std::fs::read_to_string(&path).unwrap();
        let manifests =
            parse_manifests(&yaml).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        all.extend(manifests);
    }
    all
}

#[test]
fn samples_compile_for_the_orders_app_and_decide_as_documented() {
    let mut manifests = samples();
    let loaded: Timestamp = "2025-06-01T12:00:00Z".parse().unwrap();
    manifests.default_creation_timestamps(loaded);
    let identity = WorkloadIdentity {
        namespace: "demo".into(),
        service_account: "orders-app".into(),
    };
    let config = compile(&manifests, &identity).unwrap();
    assert_eq!(
        config.targets["local-kafka"].bootstrap_servers,
        ["127.0.0.1:9092"]
    );
    assert_eq!(config.policies.len(), 1);
    assert_eq!(config.grants.len(), 1);
    assert_eq!(config.grants[0].name, "oncall-debug");
    assert_eq!(
        config.grants[0].not_after,
        loaded + SignedDuration::from_hours(1)
    );

    let labels = BTreeMap::new();
    let app = Principal {
        identity: &identity,
        pod_labels: &labels,
        user: None,
        groups: &[],
    };
    let alice = Principal {
        user: Some("alice"),
        ..app
    };
    let at = |principal: &Principal<'_>, rt, name, op, minutes: i64| {
        let now = loaded + SignedDuration::from_mins(minutes);
        let decision = config.decide(principal, "local-kafka", rt, name, op, now);
        (decision.effect, decision.rule_name())
    };
    use Effect::{Allow, Deny};
    use Operation::{Delete, Describe, Read, Write};
    use ResourceType::{Group, Topic};

    let orders = "StreamPolicy/orders-team rule orders-topics".to_owned();
    assert_eq!(
        at(&app, Topic, "orders.created", Write, 0),
        (Allow, orders.clone())
    );
    assert_eq!(
        at(&app, Topic, "orders.created", Read, 0),
        (Allow, orders.clone())
    );
    assert_eq!(
        at(&app, Topic, "orders.created", Describe, 0),
        (Allow, orders)
    );
    assert_eq!(
        at(&app, Group, "orders-billing", Read, 0),
        (
            Allow,
            "StreamPolicy/orders-team rule orders-consumer-groups".into()
        )
    );
    assert_eq!(
        at(&app, Topic, "orders.created", Delete, 0),
        (
            Deny,
            "StreamPolicy/orders-team rule no-destructive-admin".into()
        )
    );
    assert_eq!(
        at(&app, Topic, "payments.audit", Write, 0),
        (
            Deny,
            "StreamPolicy/orders-team rule payments-owned-elsewhere".into()
        )
    );
    assert_eq!(
        at(&app, Topic, "payments.audit", Read, 0),
        (Deny, "default deny".into())
    );
    assert_eq!(
        at(&app, Topic, "inventory", Read, 0),
        (Deny, "default deny".into())
    );

    // Alice reads payments.audit for the hour of her grant, and only reads.
    assert_eq!(
        at(&alice, Topic, "payments.audit", Read, 5),
        (Allow, "AccessGrant/oncall-debug".into())
    );
    assert_eq!(
        at(&alice, Topic, "payments.audit", Write, 5).0,
        Deny,
        "a grant never lifts a deny"
    );
    assert_eq!(
        at(&alice, Topic, "payments.audit", Read, 60),
        (Deny, "default deny".into())
    );

    let decision = config.decide(&app, "local-kafka", Topic, "x", Read, loaded);
    assert_eq!(decision.basis, Basis::Default);

    let (_, guardrails) = config.guardrails_for(&app, "local-kafka").next().unwrap();
    assert_eq!(guardrails.max_partitions, Some(12));

    // Consumers of orders.* get the masking rule; producers and other topics do not.
    let masking = |topic, flow| -> Vec<&str> {
        config
            .masking_rules_for(topic, flow, &app)
            .map(|r| r.name.as_str())
            .collect()
    };
    assert_eq!(masking("orders.created", Flow::Consume), ["orders-pii"]);
    assert!(masking("orders.created", Flow::Produce).is_empty());
    assert!(masking("inventory", Flow::Consume).is_empty());
    let rule = &config.masking[0];
    assert_eq!(rule.fields[0].path, "$.customer.email");
    assert_eq!(rule.placeholder, "[redacted]");
}

#[test]
fn samples_give_other_workloads_nothing_but_request_time_grants() {
    let mut manifests = samples();
    manifests.default_creation_timestamps("2025-06-01T12:00:00Z".parse().unwrap());
    let identity = WorkloadIdentity {
        namespace: "demo".into(),
        service_account: "billing-app".into(),
    };
    let config = compile(&manifests, &identity).unwrap();
    assert!(config.policies.is_empty());
    assert_eq!(
        config.grants.len(),
        1,
        "alice's grant applies wherever she connects"
    );
    assert_eq!(config.targets.len(), 1);
    // The billing service is exempt from orders-pii: the rule is in its config (its audit
    // events record values masked) but does not apply to its records.
    assert_eq!(config.masking.len(), 1);
    let principal = streamward_api::decide::Principal {
        identity: &config.identity,
        pod_labels: &Default::default(),
        user: None,
        groups: &[],
    };
    assert!(!config.masking[0].applies_to(
        "orders.eu",
        streamward_api::config::Flow::Consume,
        &principal
    ));
}

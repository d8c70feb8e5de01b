//! The config controller against a real kube-apiserver: the samples become ConfigMaps, edits
//! recompile them, deletion removes them, and a restart writes nothing.

mod common;

use std::time::Duration;

use common::{Operator, kubectl, log_count};
use streamward_api::config::{Mode, ProxyConfig};
use streamward_e2e::kube::KubeApiServer;
use streamward_e2e::{cache, wait_for};

/// The compiled config in `streamward-config-<sa>` and its resourceVersion, once it exists and
/// satisfies `accept`.
fn wait_config(
    server: &KubeApiServer,
    sa: &str,
    accept: impl Fn(&ProxyConfig) -> bool,
) -> (ProxyConfig, String) {
    let name = format!("streamward-config-{sa}");
    wait_for(
        &format!("the config of {sa}"),
        Duration::from_secs(60),
        || {
            let output = server
                .kubectl()
                .args(["get", "configmap", "-n", "demo", &name, "-o", "json"])
                .output()?;
            if !output.status.success() {
                return Ok(None);
            }
            let map: serde_json::Value = serde_json::from_slice(&output.stdout)?;
            let text = map["data"]["config.json"].as_str().unwrap_or("{}");
            let config: ProxyConfig = serde_json::from_str(text)?;
            let version = map["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            Ok(accept(&config).then_some((config, version)))
        },
    )
    .unwrap()
}

#[test]
fn samples_compile_into_config_maps_that_follow_edits_restarts_and_deletes() {
    let server = common::cluster();
    let root = cache::source_root();
    let path = |p: &str| root.join(p).display().to_string();
    kubectl(&server, &["create", "namespace", "demo"]);
    kubectl(&server, &["apply", "-f", &path("config/samples")]);

    let log = server.dir().join("operator.log");
    let mut operator = Operator::start(&server, &log, "first");

    // The samples name one identity, demo/orders-app.
    let (config, _) = wait_config(&server, "orders-app", |_| true);
    assert_eq!(config.identity.service_account, "orders-app");
    let policies: Vec<&str> = config.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(policies, ["orders-team"]);
    assert!(config.targets.contains_key("local-kafka"));
    let grants: Vec<&str> = config.grants.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(grants, ["oncall-debug"]);
    assert!(config.hash_is_valid());
    let owners = kubectl(
        &server,
        &[
            "get",
            "configmap",
            "-n",
            "demo",
            "streamward-config-orders-app",
            "-o",
            "jsonpath={.metadata.ownerReferences[*].name}",
        ],
    );
    assert_eq!(owners, "orders-team");

    // An edit recompiles.
    kubectl(
        &server,
        &[
            "patch",
            "streampolicy",
            "-n",
            "demo",
            "orders-team",
            "--type=merge",
            "-p",
            r#"{"spec":{"mode":"DryRun"}}"#,
        ],
    );
    let (edited, version) = wait_config(&server, "orders-app", |c| {
        c.policies.first().is_some_and(|p| p.mode == Mode::DryRun)
    });
    assert_ne!(edited.hash, config.hash);

    // A restart with nothing changed writes nothing.
    operator.process.kill();
    let before = log_count(&log, "namespace reconciled");
    let mut operator = Operator::start(&server, &log, "second");
    wait_for(
        "the restarted operator to reconcile",
        Duration::from_secs(60),
        || {
            operator.process.check_running()?;
            Ok((log_count(&log, "namespace reconciled") > before).then_some(()))
        },
    )
    .unwrap();
    let (_, after) = wait_config(&server, "orders-app", |_| true);
    assert_eq!(
        after,
        version,
        "the restart rewrote an unchanged ConfigMap:\n{}",
        operator.process.log_tail(20)
    );

    // The config is signed by the key in the operator's namespace, and a namespace editor's
    // rewrite of it (hash annotation kept) is put back at once.
    let data = |server: &KubeApiServer| -> serde_json::Value {
        let out = kubectl(
            server,
            &[
                "get",
                "configmap",
                "-n",
                "demo",
                "streamward-config-orders-app",
                "-o",
                "jsonpath={.data}",
            ],
        );
        serde_json::from_str(&out).unwrap()
    };
    let pkcs8 = kubectl(
        &server,
        &[
            "get",
            "secret",
            "-n",
            common::LEASE_NAMESPACE,
            "streamward-config-signing",
            "-o",
            "jsonpath={.data.signing\\.pkcs8}",
        ],
    );
    let pkcs8 = {
        use std::io::Write;
        let mut child = std::process::Command::new("base64")
            .arg("-d")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(pkcs8.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap().stdout
    };
    let signer = streamward_operator::signing::ConfigSigner::from_pkcs8(&pkcs8).unwrap();
    let signed = data(&server);
    let json = signed["config.json"].as_str().unwrap().to_owned();
    assert!(streamward_operator::signing::verifies(
        signer.public_key_hex(),
        json.as_bytes(),
        signed["config.json.sig"].as_str().unwrap()
    ));
    let forged = json.replace("\"DryRun\"", "\"Enforce\"");
    assert_ne!(forged, json);
    let patch = serde_json::json!({"data": {"config.json": forged}}).to_string();
    kubectl(
        &server,
        &[
            "patch",
            "configmap",
            "-n",
            "demo",
            "streamward-config-orders-app",
            "--type=merge",
            "-p",
            &patch,
        ],
    );
    wait_for(
        "the forged config to be put back",
        Duration::from_secs(30),
        || Ok((data(&server)["config.json"].as_str() == Some(json.as_str())).then_some(())),
    )
    .unwrap();

    // Deleting the only policy that names the identity removes its config.
    kubectl(
        &server,
        &["delete", "streampolicy", "-n", "demo", "orders-team"],
    );
    wait_for("the config to be removed", Duration::from_secs(60), || {
        let output = server
            .kubectl()
            .args([
                "get",
                "configmap",
                "-n",
                "demo",
                "streamward-config-orders-app",
            ])
            .output()?;
        Ok((!output.status.success()).then_some(()))
    })
    .unwrap();
}

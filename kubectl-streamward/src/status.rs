//! `status`: is the operator up, is the collector up, and which config each workload's proxy
//! is given (the content hash every audit event of that workload names).

use anyhow::Context;
use clap::Args;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams};
use streamward_api::config::{CONFIG_KEY, ProxyConfig};

use crate::cluster::{KubeArgs, api_error};

/// `status` flags.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Where the operator and the collector run.
    #[arg(long, default_value = "streamward-system")]
    pub system_namespace: String,
    /// Workloads of every namespace (default: the namespace of -n or the context).
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    #[command(flatten)]
    pub kube: KubeArgs,
}

/// `ready/wanted`, or why not known.
fn readiness(ready: Option<i32>, wanted: Option<i32>) -> String {
    let (ready, wanted) = (ready.unwrap_or(0), wanted.unwrap_or(0));
    let state = if wanted > 0 && ready >= wanted {
        "Ready"
    } else {
        "NotReady"
    };
    format!("{state} ({ready}/{wanted} replicas ready)")
}

/// Prints the status.
pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let (client, namespace) = args.kube.client().await?;
    let system = &args.system_namespace;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), system);
    let operator = match deployments
        .get_opt("streamward-operator")
        .await
        .map_err(|e| api_error(e, "reading the operator's Deployment"))?
    {
        Some(d) => {
            let status = d.status.unwrap_or_default();
            readiness(status.ready_replicas, d.spec.replicas.or(status.replicas))
        }
        None => format!("not found (no Deployment streamward-operator in {system})"),
    };
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), system);
    let collector = match statefulsets
        .get_opt("streamward-collector")
        .await
        .map_err(|e| api_error(e, "reading the collector's StatefulSet"))?
    {
        Some(s) => {
            let status = s.status.unwrap_or_default();
            readiness(status.ready_replicas, s.spec.replicas)
        }
        None => format!("not found (no StatefulSet streamward-collector in {system})"),
    };
    println!("operator:  {operator}");
    println!("collector: {collector}");

    let maps: Api<ConfigMap> = if args.all_namespaces {
        Api::all(client)
    } else {
        Api::namespaced(client, &namespace)
    };
    let selector = "app.kubernetes.io/managed-by=streamward-operator,\
                    app.kubernetes.io/component=proxy-config";
    let list = maps
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|e| api_error(e, "listing the proxies' ConfigMaps"))?;
    let where_ = if args.all_namespaces {
        "any namespace".to_owned()
    } else {
        format!("namespace {namespace}")
    };
    if list.items.is_empty() {
        println!("no workload in {where_} has a Streamward config");
        return Ok(());
    }
    let mut rows = vec![[
        "NAMESPACE".to_owned(),
        "SERVICE ACCOUNT".to_owned(),
        "CONFIG HASH".to_owned(),
        "POLICIES".to_owned(),
        "GRANTS".to_owned(),
        "MASKING RULES".to_owned(),
    ]];
    for map in &list.items {
        let text = map
            .data
            .as_ref()
            .and_then(|d| d.get(CONFIG_KEY))
            .with_context(|| {
                format!(
                    "ConfigMap {} has no {CONFIG_KEY}",
                    map.metadata.name.as_deref().unwrap_or_default()
                )
            })?;
        let config: ProxyConfig = serde_json::from_str(text).with_context(|| {
            format!(
                "ConfigMap {}: {CONFIG_KEY} is not a Streamward config",
                map.metadata.name.as_deref().unwrap_or_default()
            )
        })?;
        rows.push([
            config.identity.namespace.clone(),
            config.identity.service_account.clone(),
            config.hash.clone(),
            config.policies.len().to_string(),
            config.grants.len().to_string(),
            config.masking.len().to_string(),
        ]);
    }
    let mut widths = [0usize; 6];
    for row in &rows {
        for (width, field) in widths.iter_mut().zip(row) {
            *width = (*width).max(field.len());
        }
    }
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(f, w)| format!("{f:<w$}"))
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
    Ok(())
}

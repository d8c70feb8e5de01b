//! Commands that write to the cluster as the kubectl user: `approve`, `deny` and `grant`.
//!
//! Nothing here decides who may do what: the API server authenticates the user, RBAC decides
//! whether they may create the object, and the operator's admission webhook stamps who they
//! are (and refuses self-approval). The plugin only writes the object kubectl would.

use std::path::PathBuf;

use anyhow::{Context, anyhow};
use clap::Args;
use jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use streamward_api::acl::{CLUSTER_NAME, Operation, PatternType, ResourcePattern, ResourceType};
use streamward_api::crd::{
    AccessGrant, AccessGrantSpec, Approval, ApprovalSpec, ApprovalTarget, Decision, RequestRef,
    SubjectsSpec,
};

use crate::policy::BadInput;

/// Which cluster and namespace, as kubectl's own flags say it.
#[derive(Args, Clone, Debug)]
pub struct KubeArgs {
    /// The kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (default: the current one).
    #[arg(long)]
    pub context: Option<String>,
    /// The namespace (default: the context's).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
}

impl KubeArgs {
    /// The client config for these flags.
    pub async fn config(&self) -> anyhow::Result<kube::Config> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..KubeConfigOptions::default()
        };
        let config = match &self.kubeconfig {
            Some(path) => {
                let file = Kubeconfig::read_from(path)
                    .with_context(|| format!("reading kubeconfig {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(file, &options).await?
            }
            None if self.context.is_some() => kube::Config::from_kubeconfig(&options).await?,
            None => kube::Config::infer()
                .await
                .context("finding a kubeconfig (set KUBECONFIG or pass --kubeconfig)")?,
        };
        Ok(config)
    }

    /// A client as the kubectl user, and the namespace to work in.
    pub async fn client(&self) -> anyhow::Result<(kube::Client, String)> {
        let config = self.config().await?;
        let namespace = self
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = kube::Client::try_from(config).context("building the Kubernetes client")?;
        Ok((client, namespace))
    }
}

/// An API server refusal, worded as kubectl words it.
pub fn api_error(error: kube::Error, doing: &str) -> anyhow::Error {
    match error {
        kube::Error::Api(status) => {
            let reason = if status.reason.is_empty() {
                status.code.to_string()
            } else {
                status.reason.clone()
            };
            anyhow!("{doing}: Error from server ({reason}): {}", status.message)
        }
        other => anyhow!("{doing}: {other}"),
    }
}

/// `approve NAME` / `deny NAME`.
#[derive(Args, Debug)]
pub struct DecideArgs {
    /// The ApprovalRequest's name (as the proxy's error message or `kubectl get areq` shows
    /// it), or `accessgrant/NAME` for an AccessGrant that waits for approval.
    pub name: String,
    /// Why (shown to the requester on a denial, kept on the request).
    #[arg(long, short = 'm')]
    pub comment: Option<String>,
    #[command(flatten)]
    pub kube: KubeArgs,
}

/// `kind/name` or `name` (an ApprovalRequest).
fn request_ref(text: &str) -> Result<(ApprovalTarget, String), BadInput> {
    let (kind, name) = match text.split_once('/') {
        None => (ApprovalTarget::ApprovalRequest, text),
        Some((kind, name)) => {
            let kind = match kind.to_ascii_lowercase().as_str() {
                "approvalrequest" | "approvalrequests" | "areq" => ApprovalTarget::ApprovalRequest,
                "accessgrant" | "accessgrants" | "ag" | "grant" => ApprovalTarget::AccessGrant,
                _ => {
                    return Err(BadInput(format!(
                        "{text:?}: an Approval decides on an approvalrequest/NAME or an \
                         accessgrant/NAME, not a {kind}"
                    )));
                }
            };
            (kind, name)
        }
    };
    if name.is_empty() || name.contains('/') {
        return Err(BadInput(format!("{text:?} is not NAME or KIND/NAME")));
    }
    Ok((kind, name.to_owned()))
}

/// Creates the Approval: the same object `streamward_api::approval::approve_command` writes.
pub async fn decide(args: DecideArgs, approve: bool) -> anyhow::Result<()> {
    let (kind, name) = request_ref(&args.name)?;
    if !approve && args.comment.as_deref().is_none_or(str::is_empty) {
        // A denial reaches the requester as the Kafka error's message: say why.
        eprintln!("note: denying without --comment; the requester will not learn why");
    }
    let (client, namespace) = args.kube.client().await?;
    let mut approval = Approval::new(
        "",
        ApprovalSpec {
            request_ref: RequestRef {
                kind,
                name: name.clone(),
                uid: None,
                generation: None,
            },
            decision: if approve {
                Decision::Approve
            } else {
                Decision::Deny
            },
            comment: args.comment.clone(),
            approver: None,
        },
    );
    approval.metadata.name = None;
    approval.metadata.generate_name = Some(format!("{name}-"));
    let api: Api<Approval> = Api::namespaced(client, &namespace);
    let kind_name = match kind {
        ApprovalTarget::ApprovalRequest => "ApprovalRequest",
        ApprovalTarget::AccessGrant => "AccessGrant",
    };
    let verb = if approve { "approving" } else { "denying" };
    let created = api
        .create(&PostParams::default(), &approval)
        .await
        .map_err(|e| api_error(e, &format!("{verb} {kind_name} {namespace}/{name}")))?;
    let approver = created
        .spec
        .approver
        .as_ref()
        .map_or("(not stamped: is the operator's webhook installed?)", |a| {
            a.user.as_str()
        });
    println!(
        "approval.streamward.io/{} created: {} {kind_name} {namespace}/{name} as {approver}",
        created.metadata.name.as_deref().unwrap_or_default(),
        if approve { "Approve" } else { "Deny" },
    );
    Ok(())
}

/// `grant`.
#[derive(Args, Debug)]
pub struct GrantArgs {
    /// The AccessGrant's name.
    pub name: String,
    /// A service account the grant is for (`name` or `namespace/name`); repeatable.
    #[arg(long = "service-account", value_name = "SA")]
    pub service_accounts: Vec<String>,
    /// A user (authenticated to the proxy) the grant is for; repeatable.
    #[arg(long = "user")]
    pub users: Vec<String>,
    /// A group of users the grant is for; repeatable.
    #[arg(long = "user-group", value_name = "GROUP")]
    pub groups: Vec<String>,
    /// A topic it opens; `NAME*` for every topic starting with NAME. Repeatable.
    #[arg(long = "topic")]
    pub topics: Vec<String>,
    /// A consumer group it opens (`NAME*` for a prefix). Repeatable.
    #[arg(long = "consumer-group", value_name = "GROUP")]
    pub consumer_groups: Vec<String>,
    /// A transactional id it opens (`NAME*` for a prefix). Repeatable.
    #[arg(long = "transactional-id", value_name = "ID")]
    pub transactional_ids: Vec<String>,
    /// Open the cluster resource (for cluster operations such as IdempotentWrite).
    #[arg(long)]
    pub cluster: bool,
    /// The operations it allows, comma-separated (Read, Write, Describe, ...).
    #[arg(long, value_delimiter = ',', required = true)]
    pub operations: Vec<String>,
    /// How long it lasts: `30m`, `2h`, `1h 30m` or seconds.
    #[arg(long)]
    pub duration: String,
    /// Why the access is needed (approvers and the audit trail see it).
    #[arg(long)]
    pub reason: String,
    /// The ticket or incident it is for.
    #[arg(long)]
    pub ticket: Option<String>,
    /// When it starts (RFC 3339; default: when it is created).
    #[arg(long)]
    pub start: Option<Timestamp>,
    /// Ask for an approver's approval before it counts.
    #[arg(long)]
    pub require_approval: bool,
    #[command(flatten)]
    pub kube: KubeArgs,
}

fn pattern(resource_type: ResourceType, text: &str) -> Result<ResourcePattern, BadInput> {
    let (name, pattern_type) = match text.strip_suffix('*') {
        Some(prefix) => (prefix, PatternType::Prefixed),
        None => (text, PatternType::Literal),
    };
    ResourcePattern::new(resource_type, name, pattern_type)
        .map_err(|e| BadInput(format!("{text:?}: {e}")))
}

fn operation(text: &str) -> Result<Operation, BadInput> {
    serde_json::from_value(serde_json::Value::String(text.trim().to_owned())).map_err(|_| {
        BadInput(format!(
            "{text:?} is not an operation (Read, Write, Create, Delete, Alter, Describe, \
             DescribeConfigs, AlterConfigs, IdempotentWrite, All)"
        ))
    })
}

/// A duration as people write it: `30m`, `2h`, `1h 30m`, or seconds.
pub fn duration(text: &str) -> Result<SignedDuration, BadInput> {
    text.trim()
        .parse::<SignedDuration>()
        .or_else(|_| text.trim().parse::<i64>().map(SignedDuration::from_secs))
        .map_err(|_| {
            BadInput(format!(
                "{text:?} is not a duration (`30m`, `2h`, `1h 30m`)"
            ))
        })
}

/// The AccessGrant the flags describe.
pub fn grant_object(args: &GrantArgs) -> Result<AccessGrant, BadInput> {
    if args.service_accounts.is_empty() && args.users.is_empty() && args.groups.is_empty() {
        return Err(BadInput(
            "say whom the grant is for: --service-account, --user or --user-group".into(),
        ));
    }
    let mut resources = Vec::new();
    for topic in &args.topics {
        resources.push(pattern(ResourceType::Topic, topic)?);
    }
    for group in &args.consumer_groups {
        resources.push(pattern(ResourceType::Group, group)?);
    }
    for id in &args.transactional_ids {
        resources.push(pattern(ResourceType::TransactionalId, id)?);
    }
    if args.cluster {
        resources.push(pattern(ResourceType::Cluster, CLUSTER_NAME)?);
    }
    if resources.is_empty() {
        return Err(BadInput(
            "say what the grant opens: --topic, --consumer-group, --transactional-id or --cluster"
                .into(),
        ));
    }
    let operations = args
        .operations
        .iter()
        .map(|o| operation(o))
        .collect::<Result<Vec<_>, _>>()?;
    let seconds = duration(&args.duration)?.as_secs();
    if seconds < 1 {
        return Err(BadInput(format!(
            "--duration {:?}: a grant lasts at least a second",
            args.duration
        )));
    }
    if args.reason.trim().is_empty() {
        return Err(BadInput(
            "--reason must say why the access is needed".into(),
        ));
    }
    Ok(AccessGrant::new(
        &args.name,
        AccessGrantSpec {
            subjects: SubjectsSpec {
                service_accounts: args.service_accounts.clone(),
                pod_selector: None,
                users: args.users.clone(),
                groups: args.groups.clone(),
            },
            resources,
            operations,
            start_time: args.start,
            expiry_time: None,
            duration_seconds: Some(seconds),
            reason: args.reason.clone(),
            ticket_ref: args.ticket.clone(),
            require_approval: args.require_approval,
            revoked: false,
        },
    ))
}

/// Creates the AccessGrant.
pub async fn grant(args: GrantArgs) -> anyhow::Result<()> {
    let grant = grant_object(&args)?;
    let (client, namespace) = args.kube.client().await?;
    let api: Api<AccessGrant> = Api::namespaced(client, &namespace);
    let created = api
        .create(&PostParams::default(), &grant)
        .await
        .map_err(|e| {
            api_error(
                e,
                &format!("creating AccessGrant {namespace}/{}", args.name),
            )
        })?;
    let seconds = created.spec.duration_seconds.unwrap_or_default();
    println!(
        "accessgrant.streamward.io/{} created: {} on {} for {}s{}",
        args.name,
        created
            .spec
            .operations
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
        created
            .spec
            .resources
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        seconds,
        if created.spec.require_approval {
            "; it counts once approved (kubectl streamward approve accessgrant/NAME)"
        } else {
            ""
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approvals_name_what_they_decide_on() {
        assert_eq!(
            request_ref("ledger-deletetopics-x7k2p").unwrap(),
            (
                ApprovalTarget::ApprovalRequest,
                "ledger-deletetopics-x7k2p".into()
            )
        );
        assert_eq!(
            request_ref("accessgrant/break-glass").unwrap(),
            (ApprovalTarget::AccessGrant, "break-glass".into())
        );
        assert!(request_ref("pod/x").is_err());
        assert!(request_ref("ag/").is_err());
    }

    #[test]
    fn grant_flags_become_an_access_grant() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            grant: GrantArgs,
        }
        let cli = Cli::try_parse_from([
            "x",
            "oncall",
            "--user",
            "alice",
            "--topic",
            "payments.*",
            "--topic",
            "audit",
            "--operations",
            "Read,Describe",
            "--duration",
            "1h 30m",
            "--reason",
            "INC-1",
        ])
        .unwrap();
        let grant = grant_object(&cli.grant).unwrap();
        assert_eq!(grant.spec.duration_seconds, Some(5400));
        assert_eq!(
            grant.spec.resources[0].to_string(),
            "Topic:payments. (prefix)"
        );
        assert_eq!(grant.spec.resources[1].to_string(), "Topic:audit");
        assert_eq!(
            grant.spec.operations,
            [Operation::Read, Operation::Describe]
        );
        assert!(
            operation("Raed")
                .unwrap_err()
                .0
                .contains("not an operation")
        );
    }
}

//! Requests held for a person's approval (`RequireApproval` rules).
//!
//! When every refusal of a request comes from a `RequireApproval` rule, the session does not
//! answer it at once: [`Approvals::ask`] finds the ApprovalRequest of the identical request
//! (same workload, same user, same digest, see [`held::digest`]) or creates one through the API
//! server with the proxy's own rights (its Role lets its service account create, read and
//! annotate ApprovalRequests in its namespace; the admission webhook lets a service account
//! create only its own), and [`Approvals::wait`] watches it for up to the rule's `holdSeconds`.
//! What it comes to ([`held::Resolution`]) is handed back to [`crate::request::decide`], which
//! decides the same frame again: released, it is forwarded exactly as the client sent it (the
//! policy in force then still applies: a rule removed meanwhile refuses it); otherwise it is
//! answered with POLICY_VIOLATION and a message naming the ApprovalRequest and what to do.
//!
//! An approval releases the held request, or the identical retry of a request whose hold ended
//! first. With the policy's `releaseWindowSeconds` unset, it releases one request: the proxy
//! marks the ApprovalRequest released (a conditional update, so of two proxies racing only one
//! wins) before forwarding. With a window, every identical request is released until it closes.
//! A denial refuses every identical request until the ApprovalRequest expires, with the
//! approver's comment; after that the next one asks again.
//!
//! While a request is held, its connection takes no new requests (Kafka answers a connection's
//! requests in order, so nothing sent after it could be answered before it anyway); the
//! responses to requests sent before it are still delivered. Other connections are not
//! affected.

pub mod held;

use std::time::Duration;

use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use kube::api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use streamward_api::audit::ApprovalStep;
use streamward_api::config::ProxyConfig;
use streamward_api::crd::{
    ApprovalRequest, ApprovalRequestSpec, RELEASED_ANNOTATION, REQUEST_DIGEST_LABEL,
};
use tokio::sync::{Mutex, OnceCell};
use tokio_util::sync::CancellationToken;

use self::held::{Asked, Resolution, Standing};
use crate::metrics::Metrics;
use crate::policy::ClientIdentity;

/// Asks for approvals through the API server, or says why it cannot.
pub struct Approvals {
    /// `None` in local mode (`--policies`, `--config`): there is no API server to ask.
    api: Option<ApiServer>,
}

struct ApiServer {
    client: OnceCell<Client>,
    /// Finding or creating an ApprovalRequest is one step per proxy, so that two connections
    /// holding the identical request share one ApprovalRequest.
    asking: Mutex<()>,
}

/// A held request's ApprovalRequest, found or created, and what is known of it.
pub enum Ticket {
    /// The hold is decided already: released by an earlier approval, denied, expired, or no
    /// ApprovalRequest could be had.
    Decided(Resolution),
    /// Waiting for approvers.
    Waiting {
        /// The ApprovalRequest.
        name: String,
        /// Its namespace.
        namespace: String,
        /// How long to wait.
        hold: SignedDuration,
        /// The policy's release window.
        window: Option<u32>,
    },
}

impl Ticket {
    /// The ApprovalRequest (`<namespace>/<name>`) the hold is for, if any: the first event of
    /// a held request names it.
    pub fn request(&self) -> Option<String> {
        match self {
            Ticket::Waiting {
                name, namespace, ..
            } => Some(format!("{namespace}/{name}")),
            Ticket::Decided(Resolution::Release { request, .. }) => Some(request.clone()),
            Ticket::Decided(Resolution::Refuse { request, .. }) => request.clone(),
        }
    }
}

impl Approvals {
    /// Approvals through the API server (the in-cluster or kubeconfig client, made when first
    /// needed).
    pub fn through_api_server() -> Approvals {
        Approvals {
            api: Some(ApiServer {
                client: OnceCell::new(),
                asking: Mutex::new(()),
            }),
        }
    }

    /// No API server: every held request is refused, saying so.
    pub fn unavailable() -> Approvals {
        Approvals { api: None }
    }

    /// Finds or creates the ApprovalRequest of `asked`, sent by `client` of the workload in
    /// `config`.
    pub async fn ask(
        &self,
        asked: &Asked,
        config: &ProxyConfig,
        client: &ClientIdentity,
        metrics: &Metrics,
    ) -> Ticket {
        let Some(api) = &self.api else {
            return Ticket::Decided(Resolution::failed(format!(
                "{} on {} requires approval (StreamPolicy/{} rule {}), and this proxy has no \
                 API server to ask it of: approvals need the proxy run with --config-map",
                asked.operation,
                describe(asked),
                asked.policy,
                asked.rule
            )));
        };
        let namespace = config.identity.namespace.clone();
        let (terms, hold) = asked.terms(config);
        let wanted = asked.spec(config, client, &terms, Timestamp::now());
        let ticket = match api.client().await {
            Ok(kube) => {
                let requests: Api<ApprovalRequest> = Api::namespaced(kube, &namespace);
                let _asking = api.asking.lock().await;
                find_or_create(&requests, asked, &wanted, terms.release_window_seconds).await
            }
            Err(error) => Err(error),
        };
        match ticket {
            Ok(Found::Open(name)) => {
                metrics.approval(ApprovalStep::Requested);
                tracing::info!(%namespace, approval_request = %name, "request held for approval");
                Ticket::Waiting {
                    name,
                    namespace,
                    hold,
                    window: terms.release_window_seconds,
                }
            }
            Ok(Found::Decided(request, standing)) => {
                let resolution = self
                    .settle(
                        &namespace,
                        &request,
                        standing,
                        asked,
                        ApprovalStep::Released,
                    )
                    .await;
                Ticket::Decided(resolution)
            }
            Err(error) => {
                tracing::warn!(%error, "could not ask for an approval");
                Ticket::Decided(Resolution::failed(format!(
                    "{} on {} requires approval (StreamPolicy/{} rule {}), but the proxy could \
                     not create its ApprovalRequest: {error}",
                    asked.operation,
                    describe(asked),
                    asked.policy,
                    asked.rule
                )))
            }
        }
    }

    /// Waits for the approvers of a [`Ticket::Waiting`] until its hold ends or the proxy shuts
    /// down.
    pub async fn wait(
        &self,
        ticket: Ticket,
        asked: &Asked,
        shutdown: &CancellationToken,
    ) -> Resolution {
        let (name, namespace, hold, window) = match ticket {
            Ticket::Decided(resolution) => return resolution,
            Ticket::Waiting {
                name,
                namespace,
                hold,
                window,
            } => (name, namespace, hold, window),
        };
        let Some(kube) = self.api.as_ref().and_then(|api| api.client.get().cloned()) else {
            return Resolution::failed("no API server client".into());
        };
        let requests: Api<ApprovalRequest> = Api::namespaced(kube, &namespace);
        let pending = || Resolution::Refuse {
            request: Some(format!("{namespace}/{name}")),
            step: ApprovalStep::Pending,
            approvers: Vec::new(),
            comment: None,
            message: format!(
                "{} on {} is held for approval: ApprovalRequest {namespace}/{name} (StreamPolicy/{} rule {}) was not approved within {}s. Send the identical request again once it is approved; an approver runs: {}",
                asked.operation,
                describe(asked),
                asked.policy,
                asked.rule,
                hold.as_secs(),
                streamward_api::approval::approve_command(&namespace, &name),
            ),
        };
        let decided = async {
            let mut changes = watcher::watch_object(requests.clone(), &name).boxed();
            while let Some(change) = changes.next().await {
                match change {
                    Ok(Some(request)) => {
                        let standing = held::standing(&request, window, Timestamp::now());
                        if standing != Standing::Open {
                            return Some((request, standing));
                        }
                    }
                    Ok(None) => return None, // deleted: nobody will decide it
                    Err(error) => {
                        tracing::debug!(%error, "watching the ApprovalRequest; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
            None
        };
        let hold = hold.unsigned_abs();
        tokio::select! {
            decided = tokio::time::timeout(hold, decided) => match decided {
                Ok(Some((request, standing))) => {
                    self.settle(&namespace, &request, standing, asked, ApprovalStep::Approved).await
                }
                Ok(None) | Err(_) => pending(),
            },
            () = shutdown.cancelled() => pending(),
        }
    }

    /// What an ApprovalRequest that is no longer open comes to: an approval that releases is
    /// used (marked released first when it releases once); anything else refuses.
    async fn settle(
        &self,
        namespace: &str,
        request: &ApprovalRequest,
        standing: Standing,
        asked: &Asked,
        released: ApprovalStep,
    ) -> Resolution {
        let name = request.metadata.name.clone().unwrap_or_default();
        let qualified = format!("{namespace}/{name}");
        let refuse = |step, approvers, comment: Option<String>, why: String| Resolution::Refuse {
            request: Some(qualified.clone()),
            step,
            approvers,
            comment,
            message: format!(
                "{} on {} was held for approval by StreamPolicy/{} rule {}: ApprovalRequest {qualified} {why}",
                asked.operation,
                describe(asked),
                asked.policy,
                asked.rule
            ),
        };
        match standing {
            Standing::Releases { approvers, once } => {
                if once && let Err(why) = self.use_up(namespace, request).await {
                    return refuse(ApprovalStep::Failed, approvers, None, why);
                }
                Resolution::Release {
                    request: qualified,
                    step: released,
                    approvers,
                }
            }
            Standing::UsedUp { approvers } => refuse(
                ApprovalStep::Expired,
                approvers,
                None,
                "was approved, and that approval has released what it may; send the request again to ask anew".into(),
            ),
            Standing::Denied { approvers, comment } => {
                let why = format!(
                    "was denied by {}{}",
                    approvers.join(", "),
                    comment
                        .as_deref()
                        .map(|c| format!(": {c}"))
                        .unwrap_or_default()
                );
                refuse(ApprovalStep::Denied, approvers, comment, why)
            }
            Standing::Expired => refuse(
                ApprovalStep::Expired,
                Vec::new(),
                None,
                format!(
                    "expired at {} without a decision; send the request again to ask anew",
                    request.spec.expiry_time
                ),
            ),
            Standing::Open => refuse(
                ApprovalStep::Pending,
                Vec::new(),
                None,
                "is not decided yet".into(),
            ),
        }
    }

    /// Marks a `once` approval released, on the condition that nobody changed the
    /// ApprovalRequest since it was read: of two proxies releasing it, one wins.
    async fn use_up(&self, namespace: &str, request: &ApprovalRequest) -> Result<(), String> {
        let Some(kube) = self.api.as_ref().and_then(|api| api.client.get().cloned()) else {
            return Err("no API server client".into());
        };
        let name = request.metadata.name.clone().unwrap_or_default();
        let patch = serde_json::json!({
            "metadata": {
                "resourceVersion": request.metadata.resource_version,
                "annotations": { RELEASED_ANNOTATION: Timestamp::now().to_string() },
            }
        });
        Api::<ApprovalRequest>::namespaced(kube, namespace)
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
            .map_err(|error| match error {
                kube::Error::Api(status) if status.code == 409 => {
                    "was approved once, and another request was released by it first".to_owned()
                }
                error => format!("could not be marked released: {error}"),
            })
    }
}

impl ApiServer {
    async fn client(&self) -> Result<Client, String> {
        self.client
            .get_or_try_init(Client::try_default)
            .await
            .cloned()
            .map_err(|error| format!("no Kubernetes API client: {error}"))
    }
}

/// What [`find_or_create`] found.
enum Found {
    /// An open ApprovalRequest (found or just created), by name.
    Open(String),
    /// One that is decided, released or expired.
    Decided(Box<ApprovalRequest>, Standing),
}

/// The ApprovalRequest of the identical request: one whose approval releases it, else one
/// still open, else one denied (a denial stands until it expires), else a new one.
async fn find_or_create(
    requests: &Api<ApprovalRequest>,
    asked: &Asked,
    wanted: &ApprovalRequestSpec,
    window: Option<u32>,
) -> Result<Found, String> {
    let label = format!("{REQUEST_DIGEST_LABEL}={}", &asked.digest[..32]);
    let found = requests
        .list(&ListParams::default().labels(&label))
        .await
        .map_err(|e| format!("listing ApprovalRequests: {e}"))?;
    let now = Timestamp::now();
    let mut best: Option<(u8, ApprovalRequest, Standing)> = None;
    for request in found.items {
        if !held::describes(&request.spec, wanted) {
            tracing::warn!(
                approval_request = ?request.metadata.name,
                "an ApprovalRequest with this request's digest describes another request: ignored"
            );
            continue;
        }
        let standing = held::standing(&request, window, now);
        let rank = match &standing {
            Standing::Releases { .. } => 3,
            Standing::Open => 2,
            Standing::Denied { .. } if now < request.spec.expiry_time => 1,
            _ => continue,
        };
        if best.as_ref().is_none_or(|(b, ..)| rank > *b) {
            best = Some((rank, request, standing));
        }
    }
    match best {
        Some((_, request, Standing::Open)) => Ok(Found::Open(
            request.metadata.name.clone().unwrap_or_default(),
        )),
        Some((_, request, standing)) => Ok(Found::Decided(Box::new(request), standing)),
        None => {
            let mut request = ApprovalRequest::new("", wanted.clone());
            request.metadata = ObjectMeta {
                generate_name: Some(format!(
                    "{}-{}-",
                    truncate(&wanted.requester.service_account, 30),
                    asked.api.to_ascii_lowercase()
                )),
                labels: Some(
                    [(
                        REQUEST_DIGEST_LABEL.to_owned(),
                        asked.digest[..32].to_owned(),
                    )]
                    .into(),
                ),
                ..ObjectMeta::default()
            };
            let created = requests
                .create(&PostParams::default(), &request)
                .await
                .map_err(|e| match e {
                    kube::Error::Api(status) => status.message,
                    e => e.to_string(),
                })?;
            Ok(Found::Open(created.metadata.name.unwrap_or_default()))
        }
    }
}

/// The first `max` bytes of a Kubernetes name (ASCII), without a trailing `-` or `.`.
fn truncate(name: &str, max: usize) -> &str {
    name.get(..max).unwrap_or(name).trim_end_matches(['-', '.'])
}

/// `topic payments` or `topics payments, orders`.
fn describe(asked: &Asked) -> String {
    let names: Vec<&str> = asked.resources.iter().map(|(_, n)| n.as_str()).collect();
    match asked.resources.first() {
        Some((kind, _)) if names.len() == 1 => format!("{} {}", kind_name(*kind), names[0]),
        Some((kind, _)) => format!("{}s {}", kind_name(*kind), names.join(", ")),
        None => "the cluster".into(),
    }
}

fn kind_name(kind: streamward_api::acl::ResourceType) -> String {
    kind.to_string().to_ascii_lowercase()
}

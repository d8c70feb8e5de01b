//! The way to the collector's query API, as the kubectl user, for every command that reads the
//! audit trail (`audit`, `evidence`, `replay`).
//!
//! Two ways in, chosen once in [`Collector::connect`]:
//! - by default, the API server's service proxy
//!   (`/api/v1/namespaces/NS/services/https:NAME:PORT/proxy/...`) with the kubeconfig's
//!   credentials: no port-forward, and RBAC decides who may reach the collector
//!   (`get services/proxy`, granted by the ClusterRole `<release>-audit-reader`);
//! - `--collector-url`, straight to the collector (a port-forward, an ingress, in-cluster DNS).
//!
//! Either way the collector authenticates the caller's bearer token itself (TokenReview) and asks
//! RBAC whether they may read the trail (SubjectAccessReview). Through the service proxy the token
//! travels in `X-Streamward-Authorization`, since the API server drops `Authorization` before
//! proxying.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use clap::Args;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use secrecy::ExposeSecret;
use streamward_api::audit::AuditEvent;

use crate::cluster::KubeArgs;
use crate::policy::BadInput;

/// The header the collector reads a reader's token from when `Authorization` cannot get through.
const READER_AUTHORIZATION: &str = "x-streamward-authorization";

/// Where the collector is and as whom to ask it: the flags of every command that queries it.
#[derive(Args, Clone, Debug)]
pub struct CollectorArgs {
    /// The collector's URL, to reach it directly (`https://127.0.0.1:8443` through `kubectl
    /// port-forward`). Default: through the API server's service proxy (--collector-service).
    #[arg(long, env = "STREAMWARD_COLLECTOR_URL")]
    pub collector_url: Option<String>,
    /// A CA bundle (PEM) the collector's certificate is signed by, with --collector-url
    /// (default: the system's).
    #[arg(long)]
    pub collector_ca: Option<PathBuf>,
    /// The collector's Service, `NAMESPACE/NAME[:PORT]`, reached through the API server's
    /// service proxy when no --collector-url is given.
    #[arg(long, default_value = "streamward-system/streamward-collector:8443")]
    pub collector_service: String,
    /// The bearer token to query with (default: the kubeconfig user's token).
    #[arg(long, env = "STREAMWARD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The kubeconfig (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (default: the current one).
    #[arg(long)]
    pub context: Option<String>,
}

/// `NAMESPACE/NAME[:PORT]` of `--collector-service`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ServiceRef {
    namespace: String,
    name: String,
    port: u16,
}

/// The chart's collector port.
const DEFAULT_PORT: u16 = 8443;

impl ServiceRef {
    fn parse(text: &str) -> Result<ServiceRef, BadInput> {
        let bad = || {
            BadInput(format!(
                "--collector-service {text:?} is not `namespace/name` or `namespace/name:port`"
            ))
        };
        let (namespace, rest) = text.split_once('/').ok_or_else(bad)?;
        let (name, port) = match rest.split_once(':') {
            Some((name, port)) => (name, port.parse().map_err(|_| bad())?),
            None => (rest, DEFAULT_PORT),
        };
        let label = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        if !label(namespace) || !label(name) {
            return Err(bad());
        }
        Ok(ServiceRef {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            port,
        })
    }

    /// The service proxy's path prefix (the collector serves HTTPS only).
    fn proxy_prefix(&self) -> String {
        format!(
            "/api/v1/namespaces/{}/services/https:{}:{}/proxy",
            self.namespace, self.name, self.port
        )
    }
}

/// How requests reach the collector.
enum Transport {
    /// Straight to `base` (`--collector-url`).
    Direct { base: String, client: HttpClient },
    /// Through the API server's service proxy, authenticated as the kubeconfig's user.
    ServiceProxy {
        client: kube::Client,
        service: ServiceRef,
        api_server: String,
    },
}

/// The collector's query API, as one caller.
pub(crate) struct Collector {
    transport: Transport,
    token: String,
}

impl Collector {
    /// Chooses the way in from `args` and finds the caller's token.
    pub(crate) async fn connect(args: &CollectorArgs) -> anyhow::Result<Collector> {
        let kube = KubeArgs {
            kubeconfig: args.kubeconfig.clone(),
            context: args.context.clone(),
            namespace: None,
        };
        let (transport, config) = match &args.collector_url {
            Some(url) => {
                let base = url.trim_end_matches('/').to_owned();
                let client = http_client(args.collector_ca.as_deref())?;
                (Transport::Direct { base, client }, None)
            }
            None => {
                let service = ServiceRef::parse(&args.collector_service)?;
                let config = kube.config().await?;
                let api_server = config.cluster_url.to_string();
                let client = kube::Client::try_from(config.clone())
                    .context("building the Kubernetes client")?;
                let transport = Transport::ServiceProxy {
                    client,
                    service,
                    api_server,
                };
                (transport, Some(config))
            }
        };
        let token = match &args.token {
            Some(token) => token.clone(),
            None => {
                let config = match config {
                    Some(config) => config,
                    None => kube.config().await?,
                };
                kubeconfig_token(&config)?
            }
        };
        Ok(Collector { transport, token })
    }

    /// Where the collector was reached, for reports and errors.
    pub(crate) fn location(&self) -> String {
        match &self.transport {
            Transport::Direct { base, .. } => base.clone(),
            Transport::ServiceProxy {
                service,
                api_server,
                ..
            } => format!(
                "service {}/{}:{} through the API server {}",
                service.namespace,
                service.name,
                service.port,
                api_server.trim_end_matches('/')
            ),
        }
    }

    /// The collector's JSON answer to `GET path_and_query` (`/v1/verify`, `/v1/aggregate?...`).
    pub(crate) async fn get_json(&self, path_and_query: &str) -> anyhow::Result<serde_json::Value> {
        let text = self.get(path_and_query, "application/json").await?;
        serde_json::from_str(&text).with_context(|| {
            format!("the collector's answer to {path_and_query} is not JSON: {text}")
        })
    }

    /// The audit events the collector answers to `GET path_and_query` (asked as NDJSON).
    pub(crate) async fn events(&self, path_and_query: &str) -> anyhow::Result<Vec<AuditEvent>> {
        let text = self.get(path_and_query, "application/x-ndjson").await?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                serde_json::from_str(line).with_context(|| {
                    format!("the collector answered something that is not an audit event: {line}")
                })
            })
            .collect()
    }

    /// The body of a successful GET, or who refused it and why as an error.
    async fn get(&self, path_and_query: &str, accept: &str) -> anyhow::Result<String> {
        let bearer = format!("Bearer {}", self.token);
        match &self.transport {
            Transport::Direct { base, client } => {
                let url = format!("{base}{path_and_query}");
                let request = http::Request::get(&url)
                    .header(http::header::AUTHORIZATION, bearer)
                    .header(http::header::ACCEPT, accept)
                    .body(Empty::new())
                    .map_err(|e| BadInput(format!("--collector-url {base:?}: {e}")))?;
                let response = client
                    .request(request)
                    .await
                    .with_context(|| format!("querying the collector at {url}"))?;
                let status = response.status();
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .context("reading the collector's answer")?
                    .to_bytes();
                collector_answer(status, &body)
            }
            Transport::ServiceProxy {
                client, service, ..
            } => {
                let uri = format!("{}{path_and_query}", service.proxy_prefix());
                let request = http::Request::get(&uri)
                    .header(READER_AUTHORIZATION, bearer)
                    .header(http::header::ACCEPT, accept)
                    .body(kube::client::Body::empty())
                    .map_err(|e| anyhow!("building the request {uri}: {e}"))?;
                let response = client.send(request).await.with_context(|| {
                    format!("querying the collector through the API server ({uri})")
                })?;
                let status = response.status();
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .context("reading the collector's answer through the API server")?
                    .to_bytes();
                proxied_answer(service, status, &body)
            }
        }
    }
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<bytes::Bytes>>;

/// An HTTP(S) client trusting `ca_file`, or the system's CAs.
fn http_client(ca_file: Option<&Path>) -> anyhow::Result<HttpClient> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading --collector-ca {}", path.display()))?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                roots
                    .add(cert.with_context(|| format!("reading {}", path.display()))?)
                    .with_context(|| format!("adding a CA from {}", path.display()))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// The kubeconfig user's bearer token: `token`, the content of `tokenFile`, or the token an
/// exec plugin (EKS, GKE, OIDC login helpers) answers.
fn kubeconfig_token(config: &kube::Config) -> anyhow::Result<String> {
    if let Some(token) = &config.auth_info.token {
        return Ok(token.expose_secret().to_owned());
    }
    if let Some(file) = &config.auth_info.token_file {
        let token = std::fs::read_to_string(file)
            .with_context(|| format!("reading the kubeconfig's tokenFile {file}"))?;
        return Ok(token.trim().to_owned());
    }
    if let Some(exec) = &config.auth_info.exec
        && let Some(token) = exec_token(exec)?
    {
        return Ok(token);
    }
    bail!(
        "the kubeconfig's user has no bearer token (it authenticates with a client certificate), \
         and the collector checks a token itself: pass one with --token, for example \
         --token \"$(kubectl create token NAME -n NAMESPACE)\" for a service account bound to \
         the ClusterRole streamward-audit-reader"
    )
}

/// Runs the kubeconfig's exec plugin as kubectl does (`KUBERNETES_EXEC_INFO`, its env, stdin
/// and stderr the user's unless it is never interactive) for the token of its ExecCredential;
/// `None` when it answers a client certificate instead.
fn exec_token(exec: &kube::config::ExecConfig) -> anyhow::Result<Option<String>> {
    use kube::config::ExecInteractiveMode;
    let command = exec
        .command
        .as_deref()
        .context("the kubeconfig's exec plugin names no command")?;
    let mut run = std::process::Command::new(command);
    run.args(exec.args.iter().flatten());
    for var in exec.env.iter().flatten() {
        if let (Some(name), Some(value)) = (var.get("name"), var.get("value")) {
            run.env(name, value);
        }
    }
    let interactive = exec.interactive_mode != Some(ExecInteractiveMode::Never);
    if interactive {
        run.stdin(std::process::Stdio::inherit())
            .stderr(std::process::Stdio::inherit());
    }
    let mut spec = serde_json::json!({"interactive": interactive});
    if exec.provide_cluster_info
        && let Some(cluster) = &exec.cluster
    {
        spec["cluster"] = serde_json::to_value(cluster)?;
    }
    let info = serde_json::json!({
        "apiVersion": exec.api_version,
        "kind": "ExecCredential",
        "spec": spec,
    });
    run.env("KUBERNETES_EXEC_INFO", info.to_string());
    let output = run
        .output()
        .with_context(|| format!("running the kubeconfig's exec plugin {command}"))?;
    if !output.status.success() {
        bail!(
            "the kubeconfig's exec plugin {command} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let credential: serde_json::Value = serde_json::from_slice(&output.stdout)
        .with_context(|| format!("the exec plugin {command} answered no ExecCredential JSON"))?;
    Ok(credential["status"]["token"].as_str().map(str::to_owned))
}

/// The collector's answer: its body when it succeeded, its `{"error": ...}` otherwise.
fn collector_answer(status: http::StatusCode, body: &[u8]) -> anyhow::Result<String> {
    let text = String::from_utf8_lossy(body);
    if status.is_success() {
        return Ok(text.into_owned());
    }
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| text.trim().to_owned());
    bail!("the collector refused the query ({status}): {message}")
}

/// An answer through the service proxy: the collector's own, or the API server's refusal to
/// proxy (a `Status`: RBAC, no such Service, no ready endpoint).
fn proxied_answer(
    service: &ServiceRef,
    status: http::StatusCode,
    body: &[u8],
) -> anyhow::Result<String> {
    let from_api_server = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .filter(|v| v["kind"] == "Status" && v["apiVersion"] == "v1");
    let Some(refusal) = from_api_server else {
        return collector_answer(status, body);
    };
    let message = refusal["message"].as_str().unwrap_or("").to_owned();
    let ServiceRef {
        namespace,
        name,
        port,
    } = service;
    let hint = match status {
        http::StatusCode::FORBIDDEN => format!(
            "; reaching the collector through the API server needs `get services/proxy` on \
             https:{name}:{port} in {namespace}: the ClusterRole streamward-audit-reader grants \
             it (bind it with a ClusterRoleBinding, or a RoleBinding in {namespace}), or use \
             --collector-url"
        ),
        http::StatusCode::NOT_FOUND | http::StatusCode::SERVICE_UNAVAILABLE => format!(
            "; is the collector installed as Service {namespace}/{name} and ready? Say where it \
             is with --collector-service NAMESPACE/NAME[:PORT] or --collector-url"
        ),
        _ => String::new(),
    };
    bail!("the API server refused to proxy to the collector ({status}): {message}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_refs_parse_with_the_charts_port_by_default() {
        let service = ServiceRef::parse("streamward-system/streamward-collector").unwrap();
        assert_eq!(service.port, 8443);
        assert_eq!(
            service.proxy_prefix(),
            "/api/v1/namespaces/streamward-system/services/https:streamward-collector:8443/proxy"
        );
        assert_eq!(
            ServiceRef::parse("audit/sw-collector:9443").unwrap().port,
            9443
        );
        for bad in [
            "collector",
            "ns/",
            "/name",
            "ns/name:port",
            "ns/Name",
            "a/b/c",
        ] {
            assert!(ServiceRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_api_server_refusal_says_which_permission_is_missing() {
        let service = ServiceRef::parse("streamward-system/streamward-collector").unwrap();
        let status = br#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"services \"streamward-collector\" is forbidden: User \"bob\" cannot get resource \"services/proxy\"","reason":"Forbidden","code":403}"#;
        let error = proxied_answer(&service, http::StatusCode::FORBIDDEN, status)
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("the API server refused to proxy to the collector (403 Forbidden): services \"streamward-collector\" is forbidden"), "{error}");
        assert!(
            error.contains(
                "needs `get services/proxy` on https:streamward-collector:8443 in streamward-system"
            ),
            "{error}"
        );
        let collector = br#"{"error":"user \"bob\" may not read the audit trail"}"#;
        let error = proxied_answer(&service, http::StatusCode::FORBIDDEN, collector)
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "the collector refused the query (403 Forbidden): user \"bob\" may not read the audit trail"
        );
        assert_eq!(
            proxied_answer(&service, http::StatusCode::OK, b"{}").unwrap(),
            "{}"
        );
    }
}

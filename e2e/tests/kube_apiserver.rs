//! Smoke tests: a real kube-apiserver (built from k8s.io/kubernetes) on a real etcd.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::routing::post;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::discovery::ApiResource;
use streamward_e2e::kube::KubeApiServer;
use streamward_e2e::{net, unique_name};

const WIDGET_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.e2e.streamward.io
spec:
  group: e2e.streamward.io
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer}
              colour: {type: string}
"#;

fn widget_resource() -> ApiResource {
    ApiResource {
        group: "e2e.streamward.io".into(),
        version: "v1".into(),
        api_version: "e2e.streamward.io/v1".into(),
        kind: "Widget".into(),
        plural: "widgets".into(),
    }
}

async fn kubectl(server: &KubeApiServer, args: &[&str], stdin: Option<&str>) -> String {
    use tokio::io::AsyncWriteExt;
    let mut command = tokio::process::Command::from(server.kubectl());
    command
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().expect("starting kubectl");
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.unwrap_or_default().as_bytes())
        .await
        .unwrap();
    drop(pipe);
    let output = child.wait_with_output().await.unwrap();
    assert!(
        output.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

async fn apply_widget_crd(server: &KubeApiServer) {
    kubectl(server, &["apply", "-f", "-"], Some(WIDGET_CRD)).await;
    kubectl(
        server,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/widgets.e2e.streamward.io",
        ],
        None,
    )
    .await;
}

async fn create_namespace(server: &KubeApiServer) -> String {
    let ns = unique_name("e2e");
    kubectl(server, &["create", "namespace", &ns], None).await;
    ns
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crd_applied_with_kubectl_serves_objects_the_kube_crate_reads_back() {
    let server = tokio::task::spawn_blocking(KubeApiServer::start)
        .await
        .unwrap()
        .unwrap();
    apply_widget_crd(&server).await;
    let ns = create_namespace(&server).await;

    let widget = format!(
        "apiVersion: e2e.streamward.io/v1\nkind: Widget\nmetadata: {{name: w1, namespace: {ns}}}\nspec: {{size: 3, colour: teal}}\n"
    );
    kubectl(&server, &["apply", "-f", "-"], Some(&widget)).await;

    let client = server.client().await.unwrap();
    let widgets: Api<DynamicObject> = Api::namespaced_with(client, &ns, &widget_resource());
    let read = widgets.get("w1").await.unwrap();
    assert_eq!(read.data["spec"]["size"], 3);
    assert_eq!(read.data["spec"]["colour"], "teal");
    assert!(read.metadata.uid.is_some(), "the API server assigned a uid");
}

#[derive(Clone, Default)]
struct WebhookCalls(Arc<AtomicUsize>);

async fn validate(
    State(calls): State<WebhookCalls>,
    Json(review): Json<AdmissionReview<DynamicObject>>,
) -> Json<AdmissionReview<DynamicObject>> {
    calls.0.fetch_add(1, Ordering::SeqCst);
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(request) => request,
        Err(error) => return Json(AdmissionResponse::invalid(error.to_string()).into_review()),
    };
    let colour = request
        .object
        .as_ref()
        .and_then(|o| o.data["spec"]["colour"].as_str())
        .unwrap_or_default()
        .to_string();
    let response = AdmissionResponse::from(&request);
    let response = if colour == "forbidden" {
        response.deny("the e2e webhook refuses colour forbidden")
    } else {
        response
    };
    Json(response.into_review())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apiserver_calls_a_webhook_registered_by_url_and_ca_bundle() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = tokio::task::spawn_blocking(KubeApiServer::start)
        .await
        .unwrap()
        .unwrap();
    apply_widget_crd(&server).await;
    let ns = create_namespace(&server).await;

    // A TLS webhook server on loopback, with a certificate from the harness's CA.
    let serving = server.ca().issue_server(&["127.0.0.1"]).unwrap();
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem(
        serving.cert_pem.into_bytes(),
        serving.key_pem.into_bytes(),
    )
    .await
    .unwrap();
    let calls = WebhookCalls::default();
    let app = axum::Router::new()
        .route("/validate", post(validate))
        .with_state(calls.clone());
    let addr: SocketAddr = format!("127.0.0.1:{}", net::free_port().unwrap())
        .parse()
        .unwrap();
    tokio::spawn(axum_server::bind_rustls(addr, tls).serve(app.into_make_service()));

    let config: ValidatingWebhookConfiguration = serde_json::from_value(serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": unique_name("e2e-widgets")},
        "webhooks": [{
            "name": "widgets.e2e.streamward.io",
            "clientConfig": {
                "url": format!("https://{addr}/validate"),
                "caBundle": k8s_openapi::ByteString(server.ca().cert_pem().as_bytes().to_vec()),
            },
            "rules": [{
                "apiGroups": ["e2e.streamward.io"], "apiVersions": ["v1"],
                "operations": ["CREATE"], "resources": ["widgets"],
            }],
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "failurePolicy": "Fail",
            "timeoutSeconds": 5,
        }],
    }))
    .unwrap();
    let client = server.client().await.unwrap();
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &config)
        .await
        .unwrap();

    let widgets: Api<DynamicObject> = Api::namespaced_with(client, &ns, &widget_resource());
    let forbidden = |name: &str| -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "e2e.streamward.io/v1", "kind": "Widget",
            "metadata": {"name": name},
            "spec": {"colour": "forbidden"},
        }))
        .unwrap()
    };
    // The API server picks new webhook configurations up from its informer: retry until the
    // webhook answers, which it must within seconds.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut attempt = 0;
    let refusal = loop {
        attempt += 1;
        match widgets
            .create(&PostParams::default(), &forbidden(&format!("w{attempt}")))
            .await
        {
            Err(kube::Error::Api(status)) => break status,
            Err(other) => panic!("unexpected error: {other}"),
            Ok(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(_) => panic!("the webhook was never called:\n{}", server.log_tail(30)),
        }
    };
    assert!(
        refusal
            .message
            .contains("the e2e webhook refuses colour forbidden"),
        "{refusal:?}"
    );
    assert!(calls.0.load(Ordering::SeqCst) >= 1);

    let allowed: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "e2e.streamward.io/v1", "kind": "Widget",
        "metadata": {"name": "fine"}, "spec": {"colour": "teal"},
    }))
    .unwrap();
    widgets
        .create(&PostParams::default(), &allowed)
        .await
        .unwrap();
}

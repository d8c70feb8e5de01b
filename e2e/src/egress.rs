//! The cluster network as the API server's service proxy sees it, for a kube-apiserver without
//! nodes: what konnectivity gives a real control plane.
//!
//! The service proxy (`/api/v1/namespaces/NS/services/NAME/proxy/...`) only goes to an Endpoints
//! address that is a Pod's IP, and Endpoints refuse loopback addresses, while every test server
//! listens on 127.0.0.1. So the API server is started with an egress selector whose `cluster`
//! traffic goes through an HTTP CONNECT proxy on a Unix socket ([`ClusterEgress`]), which maps
//! pod addresses to the local servers playing those pods ([`ClusterEgress::route`]); and
//! [`serve_as_pod`] makes the Pod, Service and Endpoints the API server resolves.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};

use crate::kube::KubeApiServer;
use crate::process::run;

type Routes = Arc<Mutex<HashMap<SocketAddr, SocketAddr>>>;

/// An HTTP CONNECT proxy on a Unix socket, the API server's `cluster` egress. Stops when
/// dropped.
pub struct ClusterEgress {
    socket: PathBuf,
    config: PathBuf,
    routes: Routes,
    stop: Arc<AtomicBool>,
}

impl ClusterEgress {
    /// Listens on `<dir>/egress.sock` and writes the EgressSelectorConfiguration naming it.
    pub fn start(dir: &Path) -> Result<ClusterEgress> {
        let socket = dir.join("egress.sock");
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket)
            .with_context(|| format!("listening on {}", socket.display()))?;
        let config = dir.join("egress-selector.yaml");
        std::fs::write(
            &config,
            format!(
                "apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
- name: cluster
  connection:
    proxyProtocol: HTTPConnect
    transport:
      uds:
        udsName: {}
",
                socket.display()
            ),
        )
        .with_context(|| format!("writing {}", config.display()))?;
        let routes: Routes = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        {
            let routes = routes.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let routes = routes.clone();
                    std::thread::spawn(move || {
                        if let Err(error) = tunnel(conn, &routes) {
                            eprintln!("streamward-e2e: cluster egress: {error:#}");
                        }
                    });
                }
            });
        }
        Ok(ClusterEgress {
            socket,
            config,
            routes,
            stop,
        })
    }

    /// The kube-apiserver flag that sends its `cluster` traffic (service, pod and node proxy)
    /// here.
    pub fn apiserver_arg(&self) -> String {
        format!("--egress-selector-config-file={}", self.config.display())
    }

    /// Connections to `pod` go to `local`; others go where they ask.
    pub fn route(&self, pod: SocketAddr, local: SocketAddr) {
        if let Ok(mut routes) = self.routes.lock() {
            routes.insert(pod, local);
        }
    }
}

impl Drop for ClusterEgress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so it sees `stop`.
        let _ = UnixStream::connect(&self.socket);
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// One `CONNECT host:port HTTP/1.1` from the API server, then bytes both ways.
fn tunnel(conn: UnixStream, routes: &Routes) -> Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let target = line
        .strip_prefix("CONNECT ")
        .and_then(|rest| rest.split_whitespace().next())
        .with_context(|| format!("not a CONNECT request: {line:?}"))?;
    let target: SocketAddr = target
        .parse()
        .with_context(|| format!("CONNECT to {target:?}, not an address"))?;
    // The headers, up to the empty line; the API server sends nothing more before our answer,
    // so the reader holds no tunnelled bytes.
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" {
            break;
        }
    }
    let local = routes
        .lock()
        .ok()
        .and_then(|r| r.get(&target).copied())
        .unwrap_or(target);
    let mut conn = conn;
    let upstream = match TcpStream::connect(local) {
        Ok(upstream) => upstream,
        Err(error) => {
            write!(conn, "HTTP/1.1 503 Service Unavailable\r\n\r\n")?;
            return Err(error).with_context(|| format!("connecting to {local} for {target}"));
        }
    };
    write!(conn, "HTTP/1.1 200 Connection established\r\n\r\n")?;
    let (mut down_from, mut down_to) = (upstream.try_clone()?, conn.try_clone()?);
    let down = std::thread::spawn(move || {
        let _ = std::io::copy(&mut down_from, &mut down_to);
        let _ = down_to.shutdown(Shutdown::Write);
    });
    let (mut up_from, mut up_to) = (conn, upstream);
    let _ = std::io::copy(&mut up_from, &mut up_to);
    let _ = up_to.shutdown(Shutdown::Write);
    let _ = down.join();
    Ok(())
}

/// Makes `namespace/service` (one port named `port_name`) resolve, for the API server's
/// service proxy, to `pod_ip:port`: a Pod `<service>-0` whose status carries that IP (no kubelet
/// runs it), the Service, and the Endpoints an endpoints controller would write. Pair it with
/// [`ClusterEgress::route`] from `pod_ip:port` to the local server.
pub fn serve_as_pod(
    server: &KubeApiServer,
    namespace: &str,
    service: &str,
    port_name: &str,
    port: u16,
    pod_ip: &str,
) -> Result<()> {
    let pod = format!("{service}-0");
    let manifest = format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: {pod}, namespace: {namespace}, labels: {{e2e.streamward.io/pod: {pod}}}}}
spec:
  containers: [{{name: main, image: played-by-a-local-process}}]
---
apiVersion: v1
kind: Service
metadata: {{name: {service}, namespace: {namespace}}}
spec:
  selector: {{e2e.streamward.io/pod: {pod}}}
  ports: [{{name: {port_name}, port: {port}, targetPort: {port}}}]
"
    );
    let file = server
        .dir()
        .join(format!("serve-{namespace}-{service}.yaml"));
    std::fs::write(&file, manifest)?;
    run(
        "kubectl apply (pod and service)",
        server.kubectl().arg("apply").arg("-f").arg(&file),
    )?;
    let status = format!(r#"{{"status":{{"podIP":"{pod_ip}","podIPs":[{{"ip":"{pod_ip}"}}]}}}}"#);
    run(
        "kubectl patch pod status",
        server.kubectl().args([
            "patch",
            "pod",
            &pod,
            "-n",
            namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status,
        ]),
    )?;
    let endpoints = format!(
        "apiVersion: v1
kind: Endpoints
metadata: {{name: {service}, namespace: {namespace}}}
subsets:
- addresses: [{{ip: {pod_ip}, targetRef: {{kind: Pod, name: {pod}, namespace: {namespace}}}}}]
  ports: [{{name: {port_name}, port: {port}}}]
"
    );
    let file = server
        .dir()
        .join(format!("serve-{namespace}-{service}-endpoints.yaml"));
    std::fs::write(&file, endpoints)?;
    run(
        "kubectl apply (endpoints)",
        server.kubectl().arg("apply").arg("-f").arg(&file),
    )?;
    Ok(())
}

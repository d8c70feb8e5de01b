//! A real `streamward-collector`, for tests, benchmarks and the demo: in local mode (a token
//! file), or as in a cluster (TokenReview against a kube-apiserver, HTTPS). Its port and data
//! folder stay the same across [`Collector::restart`], so a test can kill it and start it again
//! where it was.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use crate::pki::Ca;
use crate::process::Process;
use crate::{net, wait_for};

/// A running (or killed) collector.
pub struct Collector {
    binary: PathBuf,
    addr: String,
    dir: PathBuf,
    /// How it authenticates proxies and serves: the flags after `--listen`.
    mode: Vec<OsString>,
    /// Extra environment (KUBECONFIG).
    envs: Vec<(OsString, OsString)>,
    process: Option<Process>,
}

impl Collector {
    /// Starts `binary` with its data, token file and log under `dir`, accepting `token` for the
    /// events of `workload` (`namespace/serviceaccount`), and waits until it answers.
    pub fn start(binary: &Path, dir: &Path, token: &str, workload: &str) -> Result<Collector> {
        std::fs::write(dir.join("tokens"), format!("{token} {workload}\n"))?;
        let mode = vec!["--token-file".into(), dir.join("tokens").into()];
        Collector::start_mode(binary, dir, mode, Vec::new())
    }

    /// Like [`Collector::start`], also answering queries (`GET /v1/…`) that carry
    /// `query_token` (a static token that reads everything, as automation uses).
    pub fn start_with_query_token(
        binary: &Path,
        dir: &Path,
        token: &str,
        workload: &str,
        query_token: &str,
    ) -> Result<Collector> {
        std::fs::write(dir.join("tokens"), format!("{token} {workload}\n"))?;
        std::fs::write(dir.join("query-tokens"), format!("{query_token}\n"))?;
        let mode = vec![
            "--token-file".into(),
            dir.join("tokens").into(),
            "--query-token-file".into(),
            dir.join("query-tokens").into(),
        ];
        Collector::start_mode(binary, dir, mode, Vec::new())
    }

    /// Starts `binary` as it runs in a cluster: proxies' projected tokens checked with
    /// TokenReview through `kubeconfig`, served over HTTPS with a certificate for 127.0.0.1
    /// issued by `ca`.
    pub fn start_in_cluster_mode(
        binary: &Path,
        dir: &Path,
        kubeconfig: &Path,
        ca: &Ca,
    ) -> Result<Collector> {
        Collector::start_in_cluster_mode_with(binary, dir, kubeconfig, ca, &[])
    }

    /// [`Collector::start_in_cluster_mode`] with more flags (`--query-authorization=kubernetes`).
    pub fn start_in_cluster_mode_with(
        binary: &Path,
        dir: &Path,
        kubeconfig: &Path,
        ca: &Ca,
        extra: &[&str],
    ) -> Result<Collector> {
        let serving = ca.issue_server(&["127.0.0.1"])?;
        std::fs::write(dir.join("tls.crt"), &serving.cert_pem)?;
        std::fs::write(dir.join("tls.key"), &serving.key_pem)?;
        let mode = vec![
            "--token-review".into(),
            "--tls-cert".into(),
            dir.join("tls.crt").into(),
            "--tls-key".into(),
            dir.join("tls.key").into(),
        ];
        let mode = mode
            .into_iter()
            .chain(extra.iter().map(OsString::from))
            .collect();
        let envs = vec![("KUBECONFIG".into(), kubeconfig.into())];
        Collector::start_mode(binary, dir, mode, envs)
    }

    fn start_mode(
        binary: &Path,
        dir: &Path,
        mode: Vec<OsString>,
        envs: Vec<(OsString, OsString)>,
    ) -> Result<Collector> {
        let mut collector = Collector {
            binary: binary.to_path_buf(),
            addr: format!("127.0.0.1:{}", net::free_port()?),
            dir: dir.to_path_buf(),
            mode,
            envs,
            process: None,
        };
        collector.restart()?;
        Ok(collector)
    }

    /// Starts the collector again on the same port and data (after [`Collector::kill`]).
    pub fn restart(&mut self) -> Result<()> {
        let mut command = Command::new(&self.binary);
        command
            .arg("serve")
            .arg("--data")
            .arg(self.data())
            .args(["--listen", &self.addr])
            .args(&self.mode)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info");
        let mut process = Process::spawn(
            "streamward-collector",
            command,
            &self.dir.join("collector.log"),
        )?;
        let addr = self.addr.clone();
        let tls = self.mode.iter().any(|flag| flag == "--tls-cert");
        wait_for("the collector to listen", Duration::from_secs(30), || {
            process.check_running()?;
            if tls {
                // Over HTTPS a connection is all this probe can see without a TLS client.
                return Ok(std::net::TcpStream::connect(&addr).ok().map(drop));
            }
            Ok(net::http_get(&addr, "/healthz")
                .ok()
                .filter(|(status, _)| *status == 200)
                .map(drop))
        })?;
        self.process = Some(process);
        Ok(())
    }

    /// Kills the collector (its data stays).
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// `127.0.0.1:<port>`.
    /// The collector's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Process::pid)
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Its data folder, for `streamward-collector query|verify --data`.
    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }
}

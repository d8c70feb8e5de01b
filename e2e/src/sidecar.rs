//! The real `streamward-sidecar` binary in local mode, for end-to-end tests and the demo.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::process::Process;
use crate::{cache, net, wait_for};

/// A running proxy.
pub struct Sidecar {
    /// The bootstrap address clients use.
    pub bootstrap: String,
    /// The admin address (`/metrics`, `/readyz`).
    pub admin: String,
    /// The folder of policies it serves in local mode.
    pub policies: PathBuf,
    process: Process,
    _dir: tempfile::TempDir,
}

impl Sidecar {
    /// Starts the proxy in local mode on `policies` (YAML text per file name) for
    /// `namespace/service_account`, and waits until it is ready.
    pub fn start(
        binary: &Path,
        files: &[(&str, String)],
        namespace: &str,
        service_account: &str,
    ) -> Result<Sidecar> {
        Sidecar::start_with_args(binary, files, namespace, service_account, &[])
    }

    /// Like [`Sidecar::start`], with more flags for the proxy (client authentication, for
    /// example). Files those flags name are the caller's to keep until the proxy has started.
    pub fn start_with_args(
        binary: &Path,
        files: &[(&str, String)],
        namespace: &str,
        service_account: &str,
        args: &[&str],
    ) -> Result<Sidecar> {
        Sidecar::start_local(binary, files, namespace, service_account, args, &[])
    }

    /// Like [`Sidecar::start_with_args`], logging as a deployed proxy does (`info`), for
    /// benchmarks. The tests' proxies log at `debug`, which creates and formats a span per
    /// request: a cost a benchmark must not measure.
    pub fn start_for_benchmark(
        binary: &Path,
        files: &[(&str, String)],
        namespace: &str,
        service_account: &str,
        args: &[&str],
    ) -> Result<Sidecar> {
        let envs = [("RUST_LOG", "info")];
        Sidecar::start_local(binary, files, namespace, service_account, args, &envs)
    }

    fn start_local(
        binary: &Path,
        files: &[(&str, String)],
        namespace: &str,
        service_account: &str,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Result<Sidecar> {
        let dir = cache::run_dir("sidecar")?;
        let policies = dir.path().join("policies");
        std::fs::create_dir_all(&policies)?;
        for (name, text) in files {
            std::fs::write(policies.join(name), text)?;
        }
        let mut all = vec!["--policies", policies.to_str().context("a UTF-8 path")?];
        all.extend_from_slice(args);
        Sidecar::spawn(binary, dir, namespace, service_account, &all, envs)
    }

    /// Starts the proxy on whatever config source `args` name (`--config-map`, `--config`),
    /// with `envs` added to its environment (`KUBECONFIG`, say; a `RUST_LOG` there replaces
    /// the tests' `debug`), and waits until it is ready.
    pub fn start_with_source(
        binary: &Path,
        namespace: &str,
        service_account: &str,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Result<Sidecar> {
        let dir = cache::run_dir("sidecar")?;
        Sidecar::spawn(binary, dir, namespace, service_account, args, envs)
    }

    fn spawn(
        binary: &Path,
        dir: tempfile::TempDir,
        namespace: &str,
        service_account: &str,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Result<Sidecar> {
        let policies = dir.path().join("policies");
        let bootstrap = format!("127.0.0.1:{}", net::free_port()?);
        let admin = format!("127.0.0.1:{}", net::free_port()?);
        let mut command = Command::new(binary);
        command
            .args([
                "--namespace",
                namespace,
                "--service-account",
                service_account,
            ])
            .args(["--listen", &bootstrap, "--admin", &admin])
            .args(["--reload-interval-ms", "200"])
            .args(args)
            .env("RUST_LOG", "info,streamward_sidecar=debug")
            .envs(envs.iter().copied());
        let process = Process::spawn(
            "streamward-sidecar",
            command,
            &dir.path().join("sidecar.log"),
        )?;
        let mut sidecar = Sidecar {
            bootstrap,
            admin,
            policies,
            process,
            _dir: dir,
        };
        sidecar.wait_ready()?;
        Ok(sidecar)
    }

    /// Waits until `/readyz` says a valid config is loaded.
    pub fn wait_ready(&mut self) -> Result<()> {
        let admin = self.admin.clone();
        let process = &mut self.process;
        let mut last = String::new();
        wait_for("the sidecar to be ready", Duration::from_secs(20), || {
            process.check_running()?;
            let (status, body) = net::http_get(&admin, "/readyz")?;
            if status == 200 {
                return Ok(Some(()));
            }
            last = format!("readyz {status}: {body}");
            Ok(None)
        })
        .map_err(|e| anyhow::anyhow!("{e}; last {last}\n{}", self.process.log_tail(20)))
    }

    /// Replaces (or adds) one policy file; the proxy picks it up without a restart.
    pub fn write_policy(&self, name: &str, text: &str) -> Result<()> {
        let tmp = self.policies.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, self.policies.join(name))?;
        Ok(())
    }

    /// The value of a metric line starting with `prefix` (summed over label sets).
    pub fn metric(&self, prefix: &str) -> Result<f64> {
        let (_, body) = net::http_get(&self.admin, "/metrics")?;
        Ok(body
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// The proxy's log so far.
    pub fn log(&self) -> String {
        self.process.log_tail(400)
    }

    /// The proxy's process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Whether the proxy process is still running.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }
}

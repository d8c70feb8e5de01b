//! A real `streamward-collector` in local mode (a token file), for tests, benchmarks and the
//! demo. Its port and data folder stay the same across [`Collector::restart`], so a test can
//! kill it and start it again where it was.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use crate::process::Process;
use crate::{net, wait_for};

/// A running (or killed) collector.
pub struct Collector {
    binary: PathBuf,
    addr: String,
    dir: PathBuf,
    process: Option<Process>,
}

impl Collector {
    /// Starts `binary` with its data, token file and log under `dir`, accepting `token` for the
    /// events of `workload` (`namespace/serviceaccount`), and waits until it answers.
    pub fn start(binary: &Path, dir: &Path, token: &str, workload: &str) -> Result<Collector> {
        std::fs::write(dir.join("tokens"), format!("{token} {workload}\n"))?;
        let mut collector = Collector {
            binary: binary.to_path_buf(),
            addr: format!("127.0.0.1:{}", net::free_port()?),
            dir: dir.to_path_buf(),
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
            .arg("--token-file")
            .arg(self.dir.join("tokens"))
            .env("RUST_LOG", "info");
        let mut process = Process::spawn(
            "streamward-collector",
            command,
            &self.dir.join("collector.log"),
        )?;
        let addr = self.addr.clone();
        wait_for("the collector to listen", Duration::from_secs(30), || {
            process.check_running()?;
            Ok(net::http_get(&addr, "/healthz")
                .ok()
                .filter(|(status, _)| *status == 200))
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
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Its data folder, for `streamward-collector query|verify --data`.
    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }
}

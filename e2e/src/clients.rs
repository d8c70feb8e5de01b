//! The Kafka clients users run, driven by the tests: kcat (librdkafka, Debian's package),
//! confluent-kafka for Python (in a cached virtualenv), and Kafka's own Java tools (see
//! [`crate::kafka::KafkaDist::tool`]).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;

use crate::cache;
use crate::process::run;

/// The pinned confluent-kafka release (its wheel bundles a recent librdkafka).
pub const CONFLUENT_KAFKA_VERSION: &str = "2.16.1";

/// `kcat`, installed from Debian's packages when it is missing.
pub fn kcat() -> Result<Command> {
    if which("kcat").is_none() {
        install_debian_packages(&["kcat"])?;
    }
    let path = which("kcat").context("kcat is not on PATH even after installing it")?;
    Ok(Command::new(path))
}

/// Installs Debian packages with apt-get (as root, or through sudo).
pub fn install_debian_packages(packages: &[&str]) -> Result<()> {
    let sudo: &[&str] = if unsafe { libc::geteuid() } == 0 {
        &[]
    } else if which("sudo").is_some() {
        &["sudo", "-n"]
    } else {
        bail!("{packages:?} must be installed with apt-get, which needs root or sudo");
    };
    let apt = |args: &[&str]| -> Result<()> {
        let mut argv: Vec<&str> = sudo.to_vec();
        argv.push("apt-get");
        argv.extend_from_slice(args);
        run(
            &argv.join(" "),
            Command::new(argv[0])
                .args(&argv[1..])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
        Ok(())
    };
    apt(&["update", "-qq"])?;
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend_from_slice(packages);
    apt(&install)
}

/// The Python interpreter of a cached virtualenv with confluent-kafka installed.
pub fn python() -> Result<PathBuf> {
    let venv = cache::ensure(
        &format!("python-confluent-kafka-{CONFLUENT_KAFKA_VERSION}"),
        |dir| {
            run(
                "python3 -m venv",
                Command::new("python3").args(["-m", "venv"]).arg(dir),
            )?;
            run(
                "pip install confluent-kafka",
                Command::new(dir.join("bin/pip"))
                    .args(["install", "-q", "--disable-pip-version-check"])
                    .arg(format!("confluent-kafka=={CONFLUENT_KAFKA_VERSION}")),
            )?;
            Ok(())
        },
    )?;
    // A venv is not relocatable: it was made in the scratch folder and renamed. Its python
    // symlink still works, and `kafka_client.py` is run by path, so only the interpreter's
    // own site-packages matter, which it finds relative to itself.
    Ok(venv.join("bin/python3"))
}

/// A `python3 e2e/clients/kafka_client.py` command (confluent-kafka).
pub fn confluent_kafka() -> Result<Command> {
    let mut command = Command::new(python()?);
    command.arg(cache::source_root().join("e2e/clients/kafka_client.py"));
    Ok(command)
}

/// Runs a client command whose last stdout line is a JSON report, and parses that report.
/// The command may fail (a client that was refused exits non-zero): the report says why.
pub fn report<T: DeserializeOwned>(command: &mut Command) -> Result<T> {
    let output = command
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {command:?}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).with_context(|| {
        format!(
            "the client printed no JSON report ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| PathBuf::from(dir).join(program))
        .find(|path| path.is_file())
}

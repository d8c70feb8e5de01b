//! Kroxylicious, the Java Kafka proxy, as a peer in the side-by-side benchmark: its runtime from
//! Maven Central, cached like Kafka's jars, launched by a one-file program of ours
//! (`e2e/kroxylicious/Launcher.java`) on a passthrough virtual cluster, optionally with its
//! record-transformation filter on the fetch path (the nearest it has to masking).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use crate::process::{Process, run};
use crate::{cache, net, wait_for};

/// The pinned Kroxylicious release: the newest whose runtime resolves from Maven Central here
/// (0.13.0 is listed but its jar is not served).
pub const KROXYLICIOUS_VERSION: &str = "0.12.0";

/// The installed jars of one Kroxylicious release.
#[derive(Clone, Debug)]
pub struct KroxyliciousDist {
    home: PathBuf,
}

/// Installs (once) and returns the Kroxylicious runtime, its simple-transform filters and a
/// log4j2 backend, collected by `mvn dependency:copy-dependencies` on
/// `e2e/kroxylicious/pom.xml`.
pub fn install() -> Result<KroxyliciousDist> {
    let home = cache::ensure(&format!("kroxylicious-{KROXYLICIOUS_VERSION}"), |dir| {
        let pom = cache::source_root().join("e2e/kroxylicious/pom.xml");
        run(
            "mvn dependency:copy-dependencies (Kroxylicious)",
            Command::new("mvn")
                .args(["-q", "-B", "-f"])
                .arg(&pom)
                .arg(format!("-Dkroxylicious.version={KROXYLICIOUS_VERSION}"))
                .arg(format!("-DoutputDirectory={}", dir.join("lib").display()))
                .arg("dependency:copy-dependencies"),
        )?;
        Ok(())
    })?;
    Ok(KroxyliciousDist { home })
}

/// What the proxy does to the records it passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filters {
    /// Nothing: the proxy only forwards (and rewrites broker addresses).
    Passthrough,
    /// `FetchResponseTransformation` with `UpperCasing`: every record value of every Fetch
    /// response is decoded, rewritten and re-encoded, as masking on consume does.
    UpperCaseOnFetch,
}

/// A running Kroxylicious proxy in front of one Kafka cluster.
pub struct Kroxylicious {
    /// The bootstrap address clients use.
    pub bootstrap: String,
    upstream_ports: Vec<i32>,
    process: Process,
    _dir: tempfile::TempDir,
}

impl Kroxylicious {
    /// Starts a proxy for the cluster at `upstream` whose brokers have node ids
    /// `node_ids.0..=node_ids.1`, and waits until it is ready (see [`Kroxylicious::wait_ready`]).
    pub fn start(upstream: &str, node_ids: (i32, i32), filters: Filters) -> Result<Kroxylicious> {
        let mut proxy = Kroxylicious::spawn(upstream, node_ids, filters)?;
        proxy.wait_ready()?;
        Ok(proxy)
    }

    /// Like [`Kroxylicious::start`] without waiting: a JVM takes seconds to start, and several
    /// can start side by side.
    pub fn spawn(upstream: &str, node_ids: (i32, i32), filters: Filters) -> Result<Kroxylicious> {
        let dist = install()?;
        let dir = cache::run_dir("kroxylicious")?;
        let bootstrap = format!("127.0.0.1:{}", net::free_port()?);
        let config = dir.path().join("config.yaml");
        std::fs::write(
            &config,
            config_yaml(
                upstream,
                &bootstrap,
                (net::free_port()?, net::free_port()?),
                node_ids,
                filters,
            ),
        )?;
        let mut command = Command::new("java");
        command
            .args(["-Xms64m", "-Xmx512m"])
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                cache::source_root().join("e2e/kafka/log4j2.yaml").display()
            ))
            .arg("-cp")
            .arg(format!("{}/*", dist.home.join("lib").display()))
            .arg(cache::source_root().join("e2e/kroxylicious/Launcher.java"))
            .arg(&config);
        let process = Process::spawn("kroxylicious", command, &dir.path().join("proxy.log"))?;
        Ok(Kroxylicious {
            bootstrap,
            upstream_ports: ports_of(upstream),
            process,
            _dir: dir,
        })
    }

    /// Waits until a Metadata request through the proxy is answered with the proxy's own
    /// broker addresses.
    pub fn wait_ready(&mut self) -> Result<()> {
        let (bootstrap, upstream_ports) = (&self.bootstrap, &self.upstream_ports);
        let process = &mut self.process;
        wait_for(
            "Kroxylicious to serve Metadata with its own broker addresses",
            Duration::from_secs(90),
            || {
                process.check_running()?;
                let metadata = crate::kafka::wire::metadata(bootstrap)?;
                Ok((!metadata.brokers.is_empty()
                    && metadata
                        .brokers
                        .iter()
                        .all(|b| !upstream_ports.contains(&b.port)))
                .then_some(()))
            },
        )
    }

    /// The proxy's process id (the JVM's).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The proxy's log so far.
    pub fn log(&self) -> String {
        self.process.log_tail(200)
    }
}

/// The ports of a `host:port,host:port` list.
fn ports_of(list: &str) -> Vec<i32> {
    list.split(',')
        .filter_map(|a| a.rsplit_once(':')?.1.parse().ok())
        .collect()
}

/// A virtual cluster `bench` on `bootstrap` whose broker ports start at `node_port`, in front
/// of `upstream`. Management listens on loopback only (it binds every address by default).
fn config_yaml(
    upstream: &str,
    bootstrap: &str,
    (node_port, management_port): (u16, u16),
    (first, last): (i32, i32),
    filters: Filters,
) -> String {
    let mut yaml = format!(
        "management:\n  bindAddress: 127.0.0.1\n  port: {management_port}\n\
         virtualClusters:\n\
         - name: bench\n  \
           targetCluster:\n    bootstrapServers: \"{upstream}\"\n  \
           gateways:\n  \
           - name: default\n    \
             portIdentifiesNode:\n      \
               bootstrapAddress: \"{bootstrap}\"\n      \
               nodeStartPort: {node_port}\n      \
               nodeIdRanges:\n      \
               - {{name: brokers, start: {first}, end: {last}}}\n"
    );
    // 0.12.0 refuses filter definitions that no virtual cluster uses, so the definition is
    // written only with the cluster's reference to it.
    if filters == Filters::UpperCaseOnFetch {
        yaml.push_str("  filters: [upper-case]\n");
        yaml.push_str(
            "filterDefinitions:\n\
             - name: upper-case\n  \
               type: FetchResponseTransformation\n  \
               config:\n    \
                 transformation: UpperCasing\n    \
                 transformationConfig: {charset: UTF-8}\n",
        );
    }
    yaml
}

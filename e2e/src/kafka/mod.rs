//! Apache Kafka in KRaft mode, run from its Maven Central jars with the machine's Java.

pub mod wire;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::process::{Process, run, wait_for};
use crate::{cache, net};

/// The pinned Apache Kafka release. 4.4.0's broker jar is on Maven Central but its tools
/// (`kafka-tools`, `kafka-tools-api`) are not, so the newest complete release is used.
pub const KAFKA_VERSION: &str = "4.3.1";

/// The installed jars of one Kafka release.
#[derive(Clone, Debug)]
pub struct KafkaDist {
    home: PathBuf,
}

/// Installs (once) and returns the Kafka jars: the broker, its tools and a log4j2 backend,
/// collected from Maven Central by `mvn dependency:copy-dependencies` on `e2e/kafka/pom.xml`.
pub fn install() -> Result<KafkaDist> {
    let home = cache::ensure(&format!("kafka-{KAFKA_VERSION}"), |dir| {
        let pom = cache::source_root().join("e2e/kafka/pom.xml");
        run(
            "mvn dependency:copy-dependencies",
            Command::new("mvn")
                .args(["-q", "-B", "-f"])
                .arg(&pom)
                .arg(format!("-Dkafka.version={KAFKA_VERSION}"))
                .arg(format!("-DoutputDirectory={}", dir.join("lib").display()))
                .arg("dependency:copy-dependencies"),
        )?;
        std::fs::copy(
            cache::source_root().join("e2e/kafka/log4j2.yaml"),
            dir.join("log4j2.yaml"),
        )?;
        Ok(())
    })?;
    Ok(KafkaDist { home })
}

impl KafkaDist {
    /// A `java` command running a broker-sized `main_class` with the Kafka classpath and
    /// logging set up.
    pub fn java(&self, main_class: &str) -> Command {
        self.jvm(main_class, &["-Xms64m", "-Xmx512m"])
    }

    fn jvm(&self, main_class: &str, jvm_args: &[&str]) -> Command {
        let mut command = Command::new("java");
        command
            .args(jvm_args)
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                self.home.join("log4j2.yaml").display()
            ))
            .arg("-cp")
            .arg(format!("{}/*", self.home.join("lib").display()))
            .arg(main_class);
        command
    }

    /// One of Kafka's own command-line tools, e.g. `org.apache.kafka.tools.TopicCommand`.
    pub fn tool(&self, main_class: &str) -> Command {
        // Short-lived clients start faster small and without the optimising compiler.
        self.jvm(main_class, &["-Xmx256m", "-XX:TieredStopAtLevel=1"])
    }
}

/// One broker+controller node of a [`KafkaCluster`].
pub struct KafkaNode {
    /// The node id (1-based).
    pub id: i32,
    /// The client (PLAINTEXT) port on 127.0.0.1.
    pub port: u16,
    process: Option<Process>,
    config: PathBuf,
    log: PathBuf,
}

impl KafkaNode {
    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// A running KRaft cluster of one or more combined broker+controller nodes.
pub struct KafkaCluster {
    dist: KafkaDist,
    nodes: Vec<KafkaNode>,
    dir: tempfile::TempDir,
}

impl KafkaCluster {
    /// Formats and starts `size` nodes, and waits until every broker answers Metadata and sees
    /// all `size` brokers.
    pub fn start(size: usize) -> Result<KafkaCluster> {
        let dist = install()?;
        let dir = cache::run_dir(&format!("kafka{size}"))?;
        let ports: Vec<(u16, u16)> = (0..size)
            .map(|_| Ok((net::free_port()?, net::free_port()?)))
            .collect::<Result<_>>()?;
        let voters = ports
            .iter()
            .enumerate()
            .map(|(i, (_, controller))| format!("{}@127.0.0.1:{controller}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let cluster_id = random_cluster_id(&dist)?;
        let replication = size.min(3);

        let mut nodes = Vec::with_capacity(size);
        let mut formats = Vec::with_capacity(size);
        for (i, (port, controller)) in ports.iter().enumerate() {
            let id = i32::try_from(i + 1)?;
            let node_dir = dir.path().join(format!("node{id}"));
            std::fs::create_dir_all(&node_dir)?;
            let config = node_dir.join("server.properties");
            std::fs::write(
                &config,
                server_properties(id, *port, *controller, &voters, &node_dir, replication),
            )?;
            // Format all nodes at once: each is a JVM start.
            let mut format = dist.tool("kafka.tools.StorageTool");
            format
                .args(["format", "--ignore-formatted", "-t", &cluster_id, "-c"])
                .arg(&config)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            formats.push(
                format
                    .spawn()
                    .context("starting kafka StorageTool format")?,
            );
            nodes.push(KafkaNode {
                id,
                port: *port,
                process: None,
                log: node_dir.join("server.log"),
                config,
            });
        }
        for format in formats {
            let output = format.wait_with_output()?;
            if !output.status.success() {
                bail!(
                    "formatting Kafka storage failed: {}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        }

        let mut cluster = KafkaCluster { dist, nodes, dir };
        for i in 0..cluster.nodes.len() {
            cluster.start_node(i)?;
        }
        cluster.wait_ready(size)?;
        eprintln!(
            "streamward-e2e: Kafka {KAFKA_VERSION}, {size} node(s) at {}, logs in {}",
            cluster.bootstrap(),
            cluster.dir.path().display()
        );
        Ok(cluster)
    }

    fn start_node(&mut self, index: usize) -> Result<()> {
        let node = &mut self.nodes[index];
        let mut command = self.dist.java("kafka.Kafka");
        command.arg(&node.config);
        node.process = Some(Process::spawn(
            &format!("kafka node {}", node.id),
            command,
            &node.log,
        )?);
        Ok(())
    }

    /// Waits until every running broker answers Metadata listing `brokers` brokers.
    pub fn wait_ready(&mut self, brokers: usize) -> Result<()> {
        for index in 0..self.nodes.len() {
            if self.nodes[index].process.is_none() {
                continue;
            }
            let addr = self.nodes[index].addr();
            wait_for(
                &format!("Kafka broker {addr} to see {brokers} broker(s)"),
                Duration::from_secs(90),
                || {
                    if let Some(process) = self.nodes[index].process.as_mut() {
                        process.check_running()?;
                    }
                    let metadata = wire::metadata(&addr)?;
                    Ok((metadata.brokers.len() == brokers).then_some(()))
                },
            )?;
        }
        Ok(())
    }

    /// The bootstrap list of the running brokers, `host:port,host:port`.
    pub fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .filter(|n| n.process.is_some())
            .map(KafkaNode::addr)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The nodes, running or not.
    pub fn nodes(&self) -> &[KafkaNode] {
        &self.nodes
    }

    /// The Kafka jars and tools this cluster runs from.
    pub fn dist(&self) -> &KafkaDist {
        &self.dist
    }

    /// Kills node `id` with SIGKILL (a crash, not a clean shutdown).
    pub fn kill_node(&mut self, id: i32) -> Result<()> {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.id == id)
            .with_context(|| format!("no Kafka node {id}"))?;
        let mut process = node
            .process
            .take()
            .with_context(|| format!("node {id} is not running"))?;
        process.kill();
        Ok(())
    }

    /// Restarts a killed node and waits until the cluster sees every broker again.
    pub fn restart_node(&mut self, id: i32) -> Result<()> {
        let index = self
            .nodes
            .iter()
            .position(|n| n.id == id)
            .with_context(|| format!("no Kafka node {id}"))?;
        self.start_node(index)?;
        self.wait_ready(self.nodes.len())
    }

    /// The leader of `topic`'s partition `partition` as the running brokers see it, once the
    /// topic exists and has a live leader.
    pub fn partition_leader(&self, topic: &str, partition: i32) -> Result<i32> {
        self.leader_where(topic, partition, |_| true)
    }

    /// Waits until `topic`'s partition `partition` is led by a node other than `old` (after
    /// `old` was killed, the controller needs its session timeout to notice) and returns it.
    pub fn leader_change(&self, topic: &str, partition: i32, old: i32) -> Result<i32> {
        self.leader_where(topic, partition, |leader| leader != old)
    }

    fn leader_where(
        &self,
        topic: &str,
        partition: i32,
        accept: impl Fn(i32) -> bool,
    ) -> Result<i32> {
        let bootstrap = self.bootstrap();
        wait_for(
            &format!("a leader for {topic}-{partition}"),
            Duration::from_secs(60),
            || {
                let addr = bootstrap.split(',').next().context("no running broker")?;
                let metadata = wire::metadata(addr)?;
                let leader = metadata
                    .topics
                    .iter()
                    .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic))
                    .and_then(|t| t.partitions.iter().find(|p| p.partition_index == partition))
                    .map(|p| p.leader_id.0)
                    .filter(|leader| *leader >= 0 && accept(*leader));
                Ok(leader)
            },
        )
    }

    /// Log tails of every node, for a failing test's output.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let _ = writeln!(
                out,
                "--- kafka node {} ({}) ---\n{}",
                node.id,
                node.log.display(),
                crate::process::tail(&node.log, 20)
            );
        }
        out
    }
}

fn random_cluster_id(dist: &KafkaDist) -> Result<String> {
    let output = run(
        "kafka StorageTool random-uuid",
        dist.tool("kafka.tools.StorageTool").arg("random-uuid"),
    )?;
    let id = String::from_utf8(output.stdout)?.trim().to_string();
    if id.is_empty() {
        bail!("kafka StorageTool random-uuid printed nothing");
    }
    Ok(id)
}

fn server_properties(
    id: i32,
    port: u16,
    controller: u16,
    voters: &str,
    dir: &Path,
    replication: usize,
) -> String {
    let min_isr = if replication >= 3 { 2 } else { 1 };
    let properties: BTreeMap<&str, String> = BTreeMap::from([
        ("process.roles", "broker,controller".to_string()),
        ("node.id", id.to_string()),
        ("controller.quorum.voters", voters.to_string()),
        (
            "listeners",
            format!("PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}"),
        ),
        (
            "advertised.listeners",
            format!("PLAINTEXT://127.0.0.1:{port}"),
        ),
        ("controller.listener.names", "CONTROLLER".to_string()),
        ("inter.broker.listener.name", "PLAINTEXT".to_string()),
        (
            "listener.security.protocol.map",
            "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT".to_string(),
        ),
        ("log.dirs", dir.join("data").display().to_string()),
        ("num.partitions", "1".to_string()),
        ("default.replication.factor", replication.to_string()),
        ("offsets.topic.replication.factor", replication.to_string()),
        ("offsets.topic.num.partitions", "4".to_string()),
        (
            "transaction.state.log.replication.factor",
            replication.to_string(),
        ),
        ("transaction.state.log.min.isr", min_isr.to_string()),
        (
            "share.coordinator.state.topic.replication.factor",
            replication.to_string(),
        ),
        ("share.coordinator.state.topic.min.isr", min_isr.to_string()),
        ("group.initial.rebalance.delay.ms", "0".to_string()),
        // Small, fast and test-sized: a crashed node is noticed in seconds.
        ("broker.session.timeout.ms", "6000".to_string()),
        ("broker.heartbeat.interval.ms", "1000".to_string()),
        ("controller.quorum.election.timeout.ms", "1000".to_string()),
        ("controller.quorum.fetch.timeout.ms", "2000".to_string()),
        ("log.segment.bytes", "16777216".to_string()),
        ("num.network.threads", "2".to_string()),
        ("num.io.threads", "2".to_string()),
    ]);
    let mut text = String::new();
    for (key, value) in properties {
        let _ = writeln!(text, "{key}={value}");
    }
    text
}

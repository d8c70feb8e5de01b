//! Apache Kafka in KRaft mode, run from its Maven Central jars with the machine's Java, with a
//! PLAINTEXT client listener and, on request, SASL_PLAINTEXT, SSL and SASL_SSL ones beside it.

pub mod wire;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::pki::{Ca, Issued};
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
        Ok(())
    })?;
    Ok(KafkaDist { home })
}

impl KafkaDist {
    /// A `java` command running a broker-sized `main_class` with the Kafka classpath and
    /// logging set up.
    pub fn java(&self, main_class: &str) -> Command {
        self.jvm(main_class, "log4j2.yaml", &["-Xms64m", "-Xmx512m"])
    }

    /// `log_config` is a file of `e2e/kafka/`, read from the source tree so that editing it
    /// needs no reinstall.
    fn jvm(&self, main_class: &str, log_config: &str, jvm_args: &[&str]) -> Command {
        let mut command = Command::new("java");
        command
            .args(jvm_args)
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                cache::source_root()
                    .join("e2e/kafka")
                    .join(log_config)
                    .display()
            ))
            .arg("-cp")
            .arg(format!("{}/*", self.home.join("lib").display()))
            .arg(main_class);
        command
    }

    /// One of Kafka's own command-line tools, e.g. `org.apache.kafka.tools.TopicCommand`.
    pub fn tool(&self, main_class: &str) -> Command {
        // Short-lived clients start faster small and without the optimising compiler.
        // Their INFO chatter would bury what they print for the user: warnings only.
        self.jvm(
            main_class,
            "tools-log4j2.yaml",
            &["-Xmx256m", "-XX:TieredStopAtLevel=1"],
        )
    }
}

/// The security protocol of a secured client listener, in Kafka's vocabulary. The listener's
/// name is the protocol's name (`SASL_PLAINTEXT`, `SSL`, `SASL_SSL`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SecurityProtocol {
    /// SASL without TLS.
    SaslPlaintext,
    /// TLS without SASL (no client certificates asked for).
    Ssl,
    /// SASL over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    /// Kafka's name for the protocol, also the listener's name.
    pub fn name(self) -> &'static str {
        match self {
            SecurityProtocol::SaslPlaintext => "SASL_PLAINTEXT",
            SecurityProtocol::Ssl => "SSL",
            SecurityProtocol::SaslSsl => "SASL_SSL",
        }
    }

    fn sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }

    fn tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }
}

/// The SASL mechanisms every SASL listener of the harness enables. OAUTHBEARER uses Kafka's
/// unsecured validator: it accepts any unsigned JWT (`alg: none`) with a `sub` claim.
pub const SASL_MECHANISMS: &[&str] = &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"];

/// A user of the SASL listeners: known to PLAIN (in the listener's JAAS configuration) and to
/// both SCRAM mechanisms (written into the metadata log when the storage is formatted).
#[derive(Clone, Debug)]
pub struct SaslUser {
    /// The user name.
    pub name: String,
    /// The password.
    pub password: String,
}

/// How to start a [`KafkaCluster`]: its size and the secured client listeners to open beside
/// the PLAINTEXT one every cluster has. The brokers talk to each other and the controllers on
/// PLAINTEXT, and the harness itself (readiness, [`wire`], Kafka's tools) uses the PLAINTEXT
/// client listener, so it never needs credentials.
#[derive(Clone, Debug)]
pub struct KafkaOptions {
    /// The number of combined broker+controller nodes.
    pub size: usize,
    /// The secured client listeners, each on its own port on every node.
    pub secured_listeners: Vec<SecurityProtocol>,
    /// The users of the SASL listeners.
    pub sasl_users: Vec<SaslUser>,
    /// The serving certificate of the TLS listeners; see [`KafkaOptions::tls`].
    pub server_cert: Option<Issued>,
    /// The address the secured listeners bind to and advertise: 127.0.0.1 unless set, e.g. a
    /// test bridge's address for clients in pods (see [`KafkaOptions::secured_host`]).
    pub secured_host: Option<IpAddr>,
}

impl KafkaOptions {
    /// `size` nodes with only the PLAINTEXT listener: what [`KafkaCluster::start`] runs.
    pub fn new(size: usize) -> KafkaOptions {
        KafkaOptions {
            size,
            secured_listeners: Vec::new(),
            sasl_users: Vec::new(),
            server_cert: None,
            secured_host: None,
        }
    }

    /// Also opens a client listener with `protocol`.
    pub fn listener(mut self, protocol: SecurityProtocol) -> KafkaOptions {
        if !self.secured_listeners.contains(&protocol) {
            self.secured_listeners.push(protocol);
        }
        self
    }

    /// Adds a SASL user (PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512). Keep names and passwords to
    /// letters, digits, `-`, `_` and `.`: they are written into JAAS and tool arguments.
    pub fn sasl_user(mut self, name: &str, password: &str) -> KafkaOptions {
        self.sasl_users.push(SaslUser {
            name: name.to_string(),
            password: password.to_string(),
        });
        self
    }

    /// Binds and advertises the secured listeners on `host` instead of 127.0.0.1 (the
    /// PLAINTEXT listener the harness uses stays on loopback). `host` must be a local address.
    pub fn secured_host(mut self, host: IpAddr) -> KafkaOptions {
        self.secured_host = Some(host);
        self
    }

    /// Serves the TLS listeners with a certificate from `ca` for `127.0.0.1` and `localhost`.
    pub fn tls(mut self, ca: &Ca) -> Result<KafkaOptions> {
        self.server_cert = Some(ca.issue_server(&["127.0.0.1", "localhost"])?);
        Ok(self)
    }

    fn check(&self) -> Result<()> {
        if self.size == 0 {
            bail!("a Kafka cluster needs at least one node");
        }
        let plain = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        for user in &self.sasl_users {
            if !plain(&user.name) || !plain(&user.password) {
                bail!(
                    "SASL user {:?}: names and passwords may only use letters, digits, '-', '_' \
                     and '.'",
                    user.name
                );
            }
        }
        if self.secured_listeners.iter().any(|p| p.tls()) && self.server_cert.is_none() {
            bail!("a TLS listener needs a serving certificate: call KafkaOptions::tls");
        }
        Ok(())
    }
}

/// One broker+controller node of a [`KafkaCluster`].
pub struct KafkaNode {
    /// The node id (1-based).
    pub id: i32,
    /// The client (PLAINTEXT) port on 127.0.0.1.
    pub port: u16,
    secured: BTreeMap<SecurityProtocol, u16>,
    secured_host: IpAddr,
    process: Option<Process>,
    config: PathBuf,
    log: PathBuf,
}

impl KafkaNode {
    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Its `log.dirs`: a folder per partition, holding the log segments.
    pub fn log_dir(&self) -> PathBuf {
        self.config.with_file_name("data")
    }

    /// `<host>:<port>` of the secured client listener with `protocol`, if the cluster has one
    /// (the host is 127.0.0.1 unless [`KafkaOptions::secured_host`] said otherwise).
    pub fn secured_addr(&self, protocol: SecurityProtocol) -> Option<String> {
        self.secured
            .get(&protocol)
            .map(|port| std::net::SocketAddr::new(self.secured_host, *port).to_string())
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
        KafkaCluster::start_with(KafkaOptions::new(size))
    }

    /// Formats and starts a cluster as `options` say, and waits until every broker answers
    /// Metadata (on its PLAINTEXT listener) and sees all brokers.
    pub fn start_with(options: KafkaOptions) -> Result<KafkaCluster> {
        options.check()?;
        let size = options.size;
        let dist = install()?;
        let dir = cache::run_dir(&format!("kafka{size}"))?;
        // Every listener of the cluster on its own port: a port free on 127.0.0.1 may also be
        // handed out on the secured host, and Kafka refuses two IPv4 listeners on one port.
        let mut taken = BTreeSet::new();
        let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let ports: Vec<(u16, u16)> = (0..size)
            .map(|_| {
                Ok((
                    distinct_port(&mut taken, localhost)?,
                    distinct_port(&mut taken, localhost)?,
                ))
            })
            .collect::<Result<_>>()?;
        let voters = ports
            .iter()
            .enumerate()
            .map(|(i, (_, controller))| format!("{}@127.0.0.1:{controller}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let cluster_id = random_cluster_id(&dist)?;
        let replication = size.min(3);
        let secured_host = options
            .secured_host
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));

        let mut nodes = Vec::with_capacity(size);
        let mut formats = Vec::with_capacity(size);
        for (i, (port, controller)) in ports.iter().enumerate() {
            let id = i32::try_from(i + 1)?;
            let node_dir = dir.path().join(format!("node{id}"));
            std::fs::create_dir_all(&node_dir)?;
            let config = node_dir.join("server.properties");
            let secured = options
                .secured_listeners
                .iter()
                .map(|protocol| Ok((*protocol, distinct_port(&mut taken, secured_host)?)))
                .collect::<Result<BTreeMap<_, _>>>()?;
            let mut properties =
                server_properties(id, *port, *controller, &voters, &node_dir, replication);
            if !secured.is_empty() {
                secure_listeners(&mut properties, &secured, secured_host, &options, &node_dir)?;
            }
            std::fs::write(&config, render(&properties))?;
            // Format all nodes at once: each is a JVM start.
            let mut format = dist.tool("kafka.tools.StorageTool");
            format
                .args(["format", "--ignore-formatted", "-t", &cluster_id, "-c"])
                .arg(&config);
            for user in &options.sasl_users {
                for mechanism in ["SCRAM-SHA-256", "SCRAM-SHA-512"] {
                    format.arg("--add-scram").arg(format!(
                        "{mechanism}=[name={},password={}]",
                        user.name, user.password
                    ));
                }
            }
            format
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
                secured,
                secured_host,
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

    /// The bootstrap list of the running brokers' secured client listener with `protocol`.
    pub fn secured_bootstrap(&self, protocol: SecurityProtocol) -> Result<String> {
        let addrs = self
            .nodes
            .iter()
            .filter(|n| n.process.is_some())
            .map(|n| n.secured_addr(protocol))
            .collect::<Option<Vec<_>>>()
            .with_context(|| {
                format!(
                    "this cluster has no {} listener: start it with KafkaOptions::listener",
                    protocol.name()
                )
            })?;
        Ok(addrs.join(","))
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

/// A port free on `ip` a moment ago that no other listener of this cluster uses.
fn distinct_port(taken: &mut BTreeSet<u16>, ip: IpAddr) -> Result<u16> {
    for _ in 0..100 {
        let port = net::free_port_on(ip)?;
        if taken.insert(port) {
            return Ok(port);
        }
    }
    bail!("no port on {ip} unused by the cluster's other listeners after 100 tries")
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
) -> BTreeMap<String, String> {
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
    properties
        .into_iter()
        .map(|(key, value)| (key.to_string(), value))
        .collect()
}

/// Adds the secured client listeners to a node's properties. PLAINTEXT stays the inter-broker
/// listener, so the brokers need no credentials of their own.
fn secure_listeners(
    properties: &mut BTreeMap<String, String>,
    secured: &BTreeMap<SecurityProtocol, u16>,
    host: IpAddr,
    options: &KafkaOptions,
    dir: &Path,
) -> Result<()> {
    for key in [
        "listeners",
        "advertised.listeners",
        "listener.security.protocol.map",
    ] {
        let value = properties
            .get_mut(key)
            .with_context(|| format!("{key} missing from the base properties"))?;
        for (protocol, port) in secured {
            let name = protocol.name();
            let _ = if key == "listener.security.protocol.map" {
                write!(value, ",{name}:{name}")
            } else {
                write!(
                    value,
                    ",{name}://{}",
                    std::net::SocketAddr::new(host, *port)
                )
            };
        }
    }
    let mechanisms = SASL_MECHANISMS.join(",");
    properties.insert("sasl.enabled.mechanisms".into(), mechanisms.clone());

    let keystore = dir.join("server-keystore.pem");
    if let Some(cert) = &options.server_cert {
        // Kafka reads a PEM key store (the PKCS#8 key, then the certificate chain) directly.
        std::fs::write(&keystore, format!("{}{}", cert.key_pem, cert.cert_pem))
            .with_context(|| format!("writing {}", keystore.display()))?;
    }

    for protocol in secured.keys() {
        let prefix = format!("listener.name.{}", protocol.name().to_lowercase());
        if protocol.sasl() {
            properties.insert(
                format!("{prefix}.sasl.enabled.mechanisms"),
                mechanisms.clone(),
            );
            let plain_users: String = options
                .sasl_users
                .iter()
                .map(|u| format!(" user_{}=\"{}\"", u.name, u.password))
                .collect();
            properties.insert(
                format!("{prefix}.plain.sasl.jaas.config"),
                format!(
                    "org.apache.kafka.common.security.plain.PlainLoginModule required{plain_users};"
                ),
            );
            for mechanism in ["scram-sha-256", "scram-sha-512"] {
                properties.insert(
                    format!("{prefix}.{mechanism}.sasl.jaas.config"),
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;".into(),
                );
            }
            properties.insert(
                format!("{prefix}.oauthbearer.sasl.jaas.config"),
                "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required \
                 unsecuredLoginStringClaim_sub=\"broker\";"
                    .into(),
            );
        }
        if protocol.tls() {
            properties.insert(format!("{prefix}.ssl.keystore.type"), "PEM".into());
            properties.insert(
                format!("{prefix}.ssl.keystore.location"),
                keystore.display().to_string(),
            );
        }
    }
    Ok(())
}

/// A `.properties` file. Values are the harness's own (paths, JAAS lines without backslashes),
/// so no escaping is needed beyond what `check` refuses.
fn render(properties: &BTreeMap<String, String>) -> String {
    let mut text = String::new();
    for (key, value) in properties {
        let _ = writeln!(text, "{key}={value}");
    }
    text
}

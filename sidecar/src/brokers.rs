//! Keeping clients on the proxy: every broker address a response carries is replaced by a
//! loopback listener of the proxy that forwards to that broker.
//!
//! The [`BrokerMap`] owns the node id → (upstream address, local port) table. The first time a
//! node id is seen, a listener is opened for it (on `port_base + node_id` when a base is set,
//! else on a port the OS picks); its port never changes for the proxy's lifetime, while the
//! upstream address follows what the cluster advertises.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};

use kafka_protocol::messages::ResponseKind;
use kafka_protocol::protocol::StrBytes;

/// Where one broker is, upstream and on the proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// `host:port` of the real broker.
    pub upstream: String,
    /// The proxy's loopback port for it.
    pub local_port: u16,
}

/// Opens the loopback listener for a newly seen broker and returns its port.
pub trait ListenerFactory: Send + Sync {
    /// Starts accepting connections for `node_id` on `port` (0: any free port).
    fn open(&self, node_id: i32, port: u16) -> std::io::Result<SocketAddr>;
}

/// The node id → route table.
pub struct BrokerMap {
    advertised_host: StrBytes,
    port_base: Option<u16>,
    routes: Mutex<HashMap<i32, Route>>,
}

impl BrokerMap {
    /// An empty map; clients are told to connect to `advertised_host`.
    pub fn new(advertised_host: &str, port_base: Option<u16>) -> BrokerMap {
        BrokerMap {
            advertised_host: StrBytes::from_string(advertised_host.to_string()),
            port_base,
            routes: Mutex::new(HashMap::new()),
        }
    }

    /// The upstream address of `node_id`, if it has been seen.
    pub fn upstream_of(&self, node_id: i32) -> Option<String> {
        self.lock().get(&node_id).map(|r| r.upstream.clone())
    }

    /// The route of `node_id`, opening a listener the first time it is seen and updating its
    /// upstream address when the cluster moved it.
    pub fn route(
        &self,
        node_id: i32,
        host: &str,
        port: i32,
        listeners: &dyn ListenerFactory,
    ) -> std::io::Result<Route> {
        let upstream = format!("{host}:{port}");
        let mut routes = self.lock();
        if let Some(route) = routes.get_mut(&node_id) {
            if route.upstream != upstream {
                tracing::info!(node_id, %upstream, "broker moved");
                route.upstream = upstream;
            }
            return Ok(route.clone());
        }
        let port = match self.port_base {
            Some(base) => u16::try_from(i64::from(base) + i64::from(node_id)).map_err(|_| {
                std::io::Error::other(format!(
                    "broker id {node_id} does not fit a port above base {base}"
                ))
            })?,
            None => 0,
        };
        let addr = listeners.open(node_id, port)?;
        tracing::info!(node_id, %upstream, local = %addr, "listening for a new broker");
        let route = Route {
            upstream,
            local_port: addr.port(),
        };
        routes.insert(node_id, route.clone());
        Ok(route)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, Route>> {
        self.routes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Rewrites every broker address in `response` to the proxy's listener for that broker.
    /// Returns whether anything changed (if not, the original bytes can be forwarded).
    pub fn rewrite(
        &self,
        response: &mut ResponseKind,
        listeners: &dyn ListenerFactory,
    ) -> std::io::Result<bool> {
        let mut changed = false;
        let mut fix = |node_id: i32, host: &mut StrBytes, port: &mut i32| -> std::io::Result<()> {
            if node_id < 0 || host.is_empty() {
                return Ok(()); // "no coordinator"/"no node": nothing to point at
            }
            let route = self.route(node_id, host.as_str(), *port, listeners)?;
            *host = self.advertised_host.clone();
            *port = i32::from(route.local_port);
            changed = true;
            Ok(())
        };
        match response {
            ResponseKind::Metadata(r) => {
                for b in &mut r.brokers {
                    fix(b.node_id.0, &mut b.host, &mut b.port)?;
                }
            }
            ResponseKind::FindCoordinator(r) => {
                if r.error_code == 0 && !r.host.is_empty() {
                    fix(r.node_id.0, &mut r.host, &mut r.port)?;
                }
                for c in &mut r.coordinators {
                    if c.error_code == 0 {
                        fix(c.node_id.0, &mut c.host, &mut c.port)?;
                    }
                }
            }
            ResponseKind::DescribeCluster(r) => {
                for b in &mut r.brokers {
                    fix(b.broker_id.0, &mut b.host, &mut b.port)?;
                }
            }
            ResponseKind::Produce(r) => {
                for e in &mut r.node_endpoints {
                    fix(e.node_id.0, &mut e.host, &mut e.port)?;
                }
            }
            ResponseKind::Fetch(r) => {
                for e in &mut r.node_endpoints {
                    fix(e.node_id.0, &mut e.host, &mut e.port)?;
                }
            }
            ResponseKind::ShareFetch(r) => {
                for e in &mut r.node_endpoints {
                    fix(e.node_id.0, &mut e.host, &mut e.port)?;
                }
            }
            ResponseKind::ShareAcknowledge(r) => {
                for e in &mut r.node_endpoints {
                    fix(e.node_id.0, &mut e.host, &mut e.port)?;
                }
            }
            _ => {}
        }
        Ok(changed)
    }
}

/// Whether responses of this API key can carry broker addresses.
pub fn carries_addresses(api_key: i16) -> bool {
    use kafka_protocol::messages::ApiKey;
    matches!(
        ApiKey::try_from(api_key),
        Ok(ApiKey::Metadata
            | ApiKey::FindCoordinator
            | ApiKey::DescribeCluster
            | ApiKey::Produce
            | ApiKey::Fetch
            | ApiKey::ShareFetch
            | ApiKey::ShareAcknowledge)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::BrokerId;
    use kafka_protocol::messages::find_coordinator_response::Coordinator;
    use kafka_protocol::messages::metadata_response::MetadataResponseBroker;
    use kafka_protocol::messages::{FindCoordinatorResponse, MetadataResponse};
    use std::sync::atomic::{AtomicU16, Ordering};

    struct FakePorts(AtomicU16);
    impl ListenerFactory for FakePorts {
        fn open(&self, _node_id: i32, port: u16) -> std::io::Result<SocketAddr> {
            let port = if port == 0 {
                self.0.fetch_add(1, Ordering::SeqCst)
            } else {
                port
            };
            Ok(SocketAddr::from(([127, 0, 0, 1], port)))
        }
    }

    fn broker(id: i32, host: &str, port: i32) -> MetadataResponseBroker {
        MetadataResponseBroker::default()
            .with_node_id(BrokerId(id))
            .with_host(StrBytes::from_string(host.into()))
            .with_port(port)
    }

    #[test]
    fn metadata_brokers_point_at_stable_local_listeners() {
        let map = BrokerMap::new("127.0.0.1", None);
        let ports = FakePorts(AtomicU16::new(40000));
        let mut response = ResponseKind::Metadata(MetadataResponse::default().with_brokers(vec![
            broker(1, "kafka-1.internal", 9092),
            broker(2, "kafka-2.internal", 9092),
        ]));
        assert!(map.rewrite(&mut response, &ports).unwrap());
        let ResponseKind::Metadata(r) = &response else {
            unreachable!()
        };
        assert_eq!(r.brokers[0].host.as_str(), "127.0.0.1");
        assert_eq!((r.brokers[0].port, r.brokers[1].port), (40000, 40001));
        assert_eq!(map.upstream_of(2).as_deref(), Some("kafka-2.internal:9092"));

        // The broker moves; its local port stays.
        let mut again = ResponseKind::Metadata(
            MetadataResponse::default().with_brokers(vec![broker(2, "kafka-2b.internal", 9093)]),
        );
        map.rewrite(&mut again, &ports).unwrap();
        let ResponseKind::Metadata(r) = &again else {
            unreachable!()
        };
        assert_eq!(r.brokers[0].port, 40001);
        assert_eq!(
            map.upstream_of(2).as_deref(),
            Some("kafka-2b.internal:9093")
        );
    }

    #[test]
    fn port_base_gives_predictable_ports() {
        let map = BrokerMap::new("127.0.0.1", Some(19000));
        let ports = FakePorts(AtomicU16::new(1));
        let route = map.route(3, "b3", 9092, &ports).unwrap();
        assert_eq!(route.local_port, 19003);
    }

    #[test]
    fn coordinators_are_rewritten_but_errors_are_left_alone() {
        let map = BrokerMap::new("127.0.0.1", None);
        let ports = FakePorts(AtomicU16::new(41000));
        let mut response = ResponseKind::FindCoordinator(
            FindCoordinatorResponse::default().with_coordinators(vec![
                Coordinator::default()
                    .with_node_id(BrokerId(1))
                    .with_host(StrBytes::from_static_str("b1"))
                    .with_port(9092),
                Coordinator::default()
                    .with_error_code(15)
                    .with_node_id(BrokerId(-1))
                    .with_host(StrBytes::from_static_str(""))
                    .with_port(-1),
            ]),
        );
        assert!(map.rewrite(&mut response, &ports).unwrap());
        let ResponseKind::FindCoordinator(r) = &response else {
            unreachable!()
        };
        assert_eq!(r.coordinators[0].port, 41000);
        assert_eq!(r.coordinators[1].port, -1);
    }
}

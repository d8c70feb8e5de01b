//! What every connection of the proxy shares: the config in force, the broker routes, the topic
//! ids learned so far, the metrics and the data-path settings. Read by sessions; knows nothing
//! of listeners or sessions itself.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::approval::Approvals;
use crate::brokers::BrokerMap;
use crate::client_auth::ClientAuth;
use crate::metrics::Metrics;
use crate::policy::ClientIdentity;
use crate::source::State;
use crate::topics::TopicIds;

/// Which broker a listener stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upstream {
    /// The bootstrap listener: any of the target's bootstrap servers.
    Bootstrap,
    /// The listener of one broker, by node id.
    Broker(i32),
}

/// Settings of the data path.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The host clients are told to connect to (the proxy's own address, loopback in a pod).
    pub advertised_host: String,
    /// Broker listeners on `base + node id` when set, else on ports the OS picks.
    pub broker_port_base: Option<u16>,
    /// The largest client request accepted; larger closes the connection.
    pub max_request_bytes: usize,
    /// The largest broker response accepted.
    pub max_response_bytes: usize,
    /// Who the clients are, beyond the workload identity.
    pub client: ClientIdentity,
    /// How clients authenticate to the proxy, if they do; `None` keeps SASL away from clients.
    pub client_auth: Option<Arc<ClientAuth>>,
    /// Where audit events go; `None` sends none.
    pub audit: Option<crate::audit::Emitter>,
}

/// What every connection shares.
pub struct Shared {
    /// The config in force.
    pub state: Arc<ArcSwap<State>>,
    /// Broker routes.
    pub brokers: BrokerMap,
    /// Topic ids learned from Metadata.
    pub topic_ids: TopicIds,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Data-path settings.
    pub settings: Settings,
    /// Cancelled on shutdown: listeners stop accepting, sessions finish their current request.
    pub shutdown: CancellationToken,
    /// Every session and accept loop, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Where held requests ask for approval.
    pub approvals: Approvals,
}

impl Shared {
    /// The shared state of one proxy.
    pub fn new(
        state: Arc<ArcSwap<State>>,
        metrics: Arc<Metrics>,
        settings: Settings,
        approvals: Approvals,
        shutdown: CancellationToken,
    ) -> Arc<Shared> {
        Arc::new(Shared {
            brokers: BrokerMap::new(&settings.advertised_host, settings.broker_port_base),
            state,
            topic_ids: TopicIds::default(),
            metrics,
            settings,
            shutdown,
            tasks: TaskTracker::new(),
            approvals,
        })
    }
}

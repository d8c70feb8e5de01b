//! Where clients come in: the bootstrap listener and one listener per broker, whose accept loops
//! hand each client to a [`crate::session`].
//!
//! Broker listeners are opened while a session fixes a broker response (the first time it names
//! a broker), so sessions get the listeners as a [`ListenerFactory`]: the session module never
//! depends on this one.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use tokio::net::TcpListener;

use crate::brokers::ListenerFactory;
use crate::shared::{Shared, Upstream};

/// The proxy's listeners.
pub struct Listeners {
    shared: Arc<Shared>,
    this: Weak<Listeners>,
}

impl Listeners {
    /// The listeners of the proxy whose connections share `shared`.
    pub fn new(shared: Arc<Shared>) -> Arc<Listeners> {
        Arc::new_cyclic(|this| Listeners {
            shared,
            this: this.clone(),
        })
    }

    /// Starts accepting clients on `listener` for `upstream`.
    pub fn serve(self: &Arc<Self>, listener: TcpListener, upstream: Upstream) {
        let listeners: Arc<dyn ListenerFactory> = self.clone();
        let shared = self.shared.clone();
        self.shared.tasks.spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = shared.shutdown.cancelled() => break,
                    accepted = listener.accept() => accepted,
                };
                match accepted {
                    Ok((stream, peer)) => {
                        let session = crate::session::run(
                            shared.clone(),
                            listeners.clone(),
                            stream,
                            peer,
                            upstream,
                        );
                        shared.tasks.spawn(session);
                    }
                    Err(error) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                }
            }
        });
    }
}

impl ListenerFactory for Listeners {
    fn open(&self, node_id: i32, port: u16) -> std::io::Result<SocketAddr> {
        let std_listener =
            std::net::TcpListener::bind((self.shared.settings.advertised_host.as_str(), port))?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let listener = TcpListener::from_std(std_listener)?;
        let listeners = self
            .this
            .upgrade()
            .ok_or_else(|| std::io::Error::other("the proxy is shutting down"))?;
        listeners.serve(listener, Upstream::Broker(node_id));
        Ok(addr)
    }
}

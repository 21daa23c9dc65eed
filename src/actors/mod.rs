//! The node's actors (DESIGN.md): `Hub` holds the protocol, `ClientSession`
//! and `PeerConnection` one socket each, `Storage` and `Crypto` are
//! `SyncArbiter` pools for the slow work; `AcmeIssuer` (`acme`) obtains
//! and renews the TLS certificate under `serve --acme`.
pub mod acme;
pub mod client_session;
pub mod crypto;
pub mod dht_channel;
pub mod hub;
pub mod lan;
pub mod peer_connection;
pub mod peer_registry;
pub mod storage;
pub mod tracker_channel;

use std::sync::Arc;

use actix::Addr;

use crate::config::Config;

/// What every connection actor needs: where to send frames and checks.
#[derive(Clone)]
pub struct Services {
    pub hub: Addr<hub::Hub>,
    pub crypto: Addr<crypto::Crypto>,
    pub config: Arc<Config>,
    /// Our own client id (last 20 chars of the node address).
    pub client_id: Arc<str>,
    /// The node's total window of work in flight (flow control).
    pub budget: crate::flow::Budget,
    /// The node's counters.
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Services {
    /// A new connection's window, drawing on the node's budget.
    pub fn window(&self) -> crate::flow::Window {
        self.budget
            .window(self.config.limits.connection_window_bytes)
    }

    /// Our peer record signed afresh, for a ping: newer than the one our
    /// pongs list, as a server refuses a ping whose record is not newer
    /// than one it has seen (so a record copied off a pong cannot pass for
    /// us, and a dial back to verify us does not fail until the re-sign).
    pub fn fresh_self_peer(
        &self,
    ) -> impl std::future::Future<Output = Result<crate::peer::Peer, actix::MailboxError>> + 'static
    {
        let hub = self.hub.clone();
        let crypto = self.crypto.clone();
        async move {
            let current = hub.send(crate::messages::hub::GetSelfPeer).await?;
            crypto
                .send(crate::messages::crypto::SignPeer {
                    topic: current.topic,
                    host: current.host,
                    port: current.port,
                    ssl: current.ssl,
                })
                .await
        }
    }

    /// A new connection's outbox.
    pub fn outbox(&self) -> crate::flow::Outbox {
        crate::flow::Outbox::new(self.config.limits.outbox()).metered(self.metrics.clone())
    }
}

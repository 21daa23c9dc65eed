//! `Crypto`: a `SyncArbiter` pool, one thread per core, that verifies records
//! and peer records and signs our own peer record. Signature checks are the
//! costliest work per record, so they never run on the hub's thread.
//! Owned by the server (`server::start`); the hub and connections hold its
//! address. Stateless but for the node key; stops with the system.

use std::sync::Arc;

use actix::prelude::*;

use crate::crypto::NodeKey;
use crate::messages::crypto::{SignPeer, VerifyPing, VerifyRecord, VerifyServers};
use crate::peer::{Peer, PeerError};
use crate::record::{now_ms, Record, RecordError};

pub struct Crypto {
    key: Arc<NodeKey>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl Crypto {
    pub fn new(key: Arc<NodeKey>) -> Self {
        Crypto { key, metrics: None }
    }

    /// Times each record verification into `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }
}

impl Actor for Crypto {
    type Context = SyncContext<Self>;
}

impl Handler<VerifyRecord> for Crypto {
    type Result = Result<Record, RecordError>;
    fn handle(&mut self, msg: VerifyRecord, _: &mut Self::Context) -> Self::Result {
        let started = std::time::Instant::now();
        let verdict = msg.record.verify_with(now_ms(), msg.pow, msg.crdt_hash);
        if let Some(m) = &self.metrics {
            m.verify_duration.observe(started.elapsed());
        }
        verdict?;
        Ok(msg.record)
    }
}

/// A verified record saying `ssl` is how a dialer learns to use wss for
/// an endpoint found bare (DHT, LAN); a record without it changes nothing
/// (older nodes never say it).
fn learn_scheme(peer: &Peer) {
    if peer.ssl {
        let endpoint = crate::endpoint::Endpoint::new(peer.host.clone(), peer.port);
        crate::transport::remember_scheme(&endpoint, true);
    }
}

impl Handler<VerifyPing> for Crypto {
    type Result = Result<Peer, PeerError>;
    fn handle(&mut self, msg: VerifyPing, _: &mut Self::Context) -> Self::Result {
        let value = msg
            .peer
            .ok_or_else(|| PeerError::Malformed("ping carries no peer record".into()))?;
        let peer = Peer::from_value(&value)?;
        peer.verify_fresh(&msg.topic, now_ms(), msg.window_ms)?;
        learn_scheme(&peer);
        Ok(peer)
    }
}

impl Handler<VerifyServers> for Crypto {
    type Result = Vec<Peer>;
    fn handle(&mut self, msg: VerifyServers, _: &mut Self::Context) -> Self::Result {
        msg.servers
            .iter()
            .filter_map(|v| match Peer::from_value(v) {
                Ok(p) if p.topic == msg.topic && p.verify_signature().is_ok() => {
                    learn_scheme(&p);
                    Some(p)
                }
                Ok(p) => {
                    tracing::debug!(address = %p.address, "dropped a listed server whose record fails");
                    None
                }
                Err(e) => {
                    tracing::debug!(error = %e, "dropped a malformed listed server");
                    None
                }
            })
            .collect()
    }
}

impl Handler<SignPeer> for Crypto {
    type Result = MessageResult<SignPeer>;
    fn handle(&mut self, msg: SignPeer, _: &mut Self::Context) -> Self::Result {
        MessageResult(
            Peer::sign(&self.key, &msg.topic, &msg.host, msg.port, now_ms()).with_ssl(msg.ssl),
        )
    }
}

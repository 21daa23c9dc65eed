//! Messages to the `PeerRegistry`. (It also receives the DHT's
//! `EndpointsFound`, defined with the DHT messages.)

use actix::prelude::*;
use serde::Serialize;

use crate::messages::hub::ConnId;
use crate::peer::Peer;
use crate::registry::{EndpointView, ServerView};

/// A verified server connection is up (from the hub).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct ServerConnected {
    pub conn: ConnId,
    pub outbound: bool,
    /// The endpoint we dialed (outbound only).
    pub endpoint: Option<crate::endpoint::Endpoint>,
    pub peer: Peer,
    /// It offered our extension: a tooldb-node, which resolves duplicate
    /// links as we do.
    pub tooldb_node: bool,
    pub via: crate::messages::hub::Via,
}

/// A verified server connection closed (from the hub).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct ServerDisconnected {
    pub conn: ConnId,
    pub address: String,
}

/// Verified server records a `pong` listed (peer exchange, from the hub).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct ServersListed {
    pub peers: Vec<Peer>,
}

/// A `PeerConnection` stopped trying its endpoint.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct DialGaveUp {
    pub endpoint: crate::endpoint::Endpoint,
    pub reason: GaveUpReason,
}

/// Why a dialer stopped trying.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GaveUpReason {
    #[error("the endpoint answered with our own identity")]
    Myself,
    #[error("{0} dials failed")]
    DialsFailed(u32),
}

/// Every known server with its state, and endpoints not tied to one.
#[derive(Message, Debug)]
#[rtype(result = "RegistryView")]
pub struct GetRegistryView;

#[derive(Debug, Clone, Serialize)]
pub struct RegistryView {
    pub servers: Vec<ServerView>,
    pub endpoints: Vec<EndpointView>,
}

//! Messages to the `Hub`.

use std::sync::atomic::{AtomicU64, Ordering};

use actix::prelude::*;
use serde::Serialize;

use crate::flow::Credit;
use crate::messages::connection::ConnHandle;
use crate::messages::wire::WireMessage;
use crate::peer::Peer;

/// Local id of one socket (inbound or outbound), unique in this process.
pub type ConnId = u64;

pub fn next_conn_id() -> ConnId {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Which transport a connection came over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Via {
    #[default]
    Websocket,
    /// A Hyperswarm connection; `initiator`: our swarm dialed it.
    Hyperswarm { initiator: bool },
}

impl Via {
    pub fn is_hyperswarm(self) -> bool {
        matches!(self, Via::Hyperswarm { .. })
    }
}

/// A connection finished its handshake: its ping (inbound) or pong
/// (outbound) was checked. Frames from it reach the hub only after this.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ConnectionIdentified {
    pub conn: ConnId,
    pub handle: ConnHandle,
    /// Verified (last 20 chars of the peer address) or chosen by us.
    pub client_id: String,
    /// A server whose peer record verified.
    pub is_server: bool,
    pub peer: Option<Peer>,
    /// We dialed it (a `PeerConnection`).
    pub outbound: bool,
    /// The endpoint we dialed (outbound only).
    pub dialed: Option<crate::endpoint::Endpoint>,
    /// The remote offered our anti-entropy extension.
    pub reconcile: bool,
    /// The remote offered signed CRDT lists (`Extensions::crdt`).
    pub crdt_lists: bool,
    /// The remote asked for `missing` answers to its get misses (a client
    /// of ours: `Extensions::client`).
    pub wants_missing: bool,
    /// The ping to answer with a pong (inbound connections).
    pub ping_id: Option<String>,
    /// Servers the remote listed in its pong, already verified.
    pub servers: Vec<Peer>,
    /// A server ping over Hyperswarm counts as verified: the link came
    /// from the topic on the HyperDHT, not from an address it named.
    pub via: Via,
}

/// One parsed frame from an identified connection, with the credit it
/// took from the connection's window: the hub keeps it until the frame's
/// work is done, so a connection with too much in flight is not read.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct FrameReceived {
    pub conn: ConnId,
    pub msg: WireMessage,
    pub credit: Credit,
}

/// A congested connection's output fell back under half its high-water
/// mark (sent by its outbox).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct OutboxDrained {
    pub conn: ConnId,
}

#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ConnectionClosed {
    pub conn: ConnId,
}

/// Our signed peer record, for the ping a `PeerConnection` sends.
#[derive(Message, Debug)]
#[rtype(result = "Peer")]
pub struct GetSelfPeer;

/// What `/peers` and the `peers` server function show.
#[derive(Message, Debug)]
#[rtype(result = "PeersSnapshot")]
pub struct GetPeers;

#[derive(Debug, Clone, Serialize)]
pub struct PeersSnapshot {
    #[serde(rename = "self")]
    pub self_peer: Peer,
    pub servers: Vec<ServerEntry>,
    pub connected: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerEntry {
    pub peer: Peer,
    #[serde(rename = "clientId")]
    pub client_id: String,
    pub state: LinkState,
}

/// Whether the hub has a verified link to a known server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    Connected,
    /// Known from a pong or the peer book; no link right now.
    Discovered,
}

/// Close one connection (the registry's duplicate rule, for inbound links).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct DropConnection {
    pub conn: ConnId,
    pub reason: String,
}

/// Our public host became known (from the DHT): re-sign our record with it.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct SetPublicHost {
    pub host: String,
}

/// Forget the subscriptions and memories of clients gone longer than the
/// grace period (sent by the hub's own timer; tests send it directly).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ForgetGoneClients;

/// Close every connection with a close frame (graceful stop).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct CloseAll {
    pub reason: String,
}

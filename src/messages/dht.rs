//! Messages to the `DhtChannel`, and the one it emits (`EndpointsFound`).

use std::net::{Ipv4Addr, SocketAddrV4};

use actix::prelude::*;

use crate::dht::{DhtError, Reachability};

/// Join a topic: look it up at once and then on the lookup schedule; with
/// `port`, also announce that port (our websocket port) when the DHT
/// reports us reachable. Joining a joined topic updates its port.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct JoinTopic {
    pub topic: String,
    /// The websocket port to announce; `None` = passive lookup only.
    pub port: Option<u16>,
}

/// Stop looking up and announcing a topic. What was announced stays in the
/// DHT until the storage nodes expire it (about 30 minutes).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct LeaveTopic {
    pub topic: String,
}

/// Look a joined topic up now and bring its schedule back to short delays
/// (e.g. when a known server was lost). Ignored for a topic not joined.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct LookupNow {
    pub topic: String,
}

/// Whether a joined topic is searching (no server of it connected: look
/// it up often, at once when this turns on) or not (back off). Topics
/// start searching. Ignored for a topic not joined.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct SetSearching {
    pub topic: String,
    pub searching: bool,
}

/// What the channel knows about the DHT and its topics.
#[derive(Message, Debug, Clone)]
#[rtype(result = "DhtStatus")]
pub struct GetDhtStatus;

/// Endpoints (`IP:port`) a discovery source found for a topic: the DHT
/// (each once per lookup) or the LAN (`LanChannel`). Unfiltered: they may
/// include ourselves, stale or junk entries; the receiver (the peer
/// registry, the client core) decides what to dial and verifies it.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
#[rtype(result = "()")]
pub struct EndpointsFound {
    pub topic: String,
    pub endpoints: Vec<SocketAddrV4>,
    pub via: FoundVia,
}

/// Which discovery source found endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FoundVia {
    Dht,
    /// An mDNS announcement on the local network.
    Lan,
}

/// Reply to `GetDhtStatus`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhtStatus {
    /// The DHT answered our bootstrap and has not failed since.
    pub bootstrapped: bool,
    /// Our UDP socket, once the DHT is built.
    pub local_addr: Option<SocketAddrV4>,
    /// Our address as the DHT's nodes see it (IP and DHT UDP port), once
    /// known. Its IP is what goes in our signed peer record.
    pub public_address: Option<SocketAddrV4>,
    pub reachability: Reachability,
    pub topics: Vec<TopicStatus>,
    /// Failed attempts since the DHT last bootstrapped.
    pub failures: u32,
    /// The last failure, kept after a recovery (for `/health` or logs).
    pub last_error: Option<DhtError>,
}

impl DhtStatus {
    /// The IP the DHT reports as ours.
    pub fn public_ip(&self) -> Option<Ipv4Addr> {
        self.public_address.map(|a| *a.ip())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicStatus {
    pub topic: String,
    /// The port we announce for it, if any.
    pub port: Option<u16>,
    /// At least one announce of this topic succeeded since it was joined.
    pub announced: bool,
    /// No server of it is connected: looked up often.
    pub searching: bool,
    /// Lookups finished since the topic was joined.
    pub lookups: u64,
    /// Distinct endpoints the last finished lookup returned.
    pub last_lookup_endpoints: usize,
}

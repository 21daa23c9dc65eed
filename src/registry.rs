//! The peer registry's decisions as plain state transitions, tested without
//! sockets (the `PeerRegistry` actor only carries out the returned
//! `Action`s). It decides which endpoints to dial, recognises ourselves,
//! keeps one connection per remote server, and quarantines endpoints that
//! never answer as a Tool Db server, with growing delays, so a topic full of
//! junk announcements costs bounded work.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::backoff::backoff_delay;
use crate::messages::hub::{ConnId, Via};
use crate::peer::Peer;

/// `host:port` as dialed.
pub use crate::endpoint::Endpoint;

/// Where an endpoint came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// `--peer` / config: always worth redialing.
    Static,
    /// The persisted peer book: a server we were connected to before.
    Book,
    /// A DHT lookup: may be junk.
    Dht,
    /// An mDNS announcement on the LAN: may be junk too.
    Lan,
    /// A server's `pong` list (verified records).
    Exchange,
    /// The host:port in the record of a server that dialed us.
    Inbound,
}

impl Source {
    /// Anyone may announce it (DHT, LAN): dialed again only when found
    /// again, unless it proved to be a server.
    pub fn may_be_junk(self) -> bool {
        matches!(self, Source::Dht | Source::Lan)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointState {
    /// A `PeerConnection` is trying it.
    Dialing,
    /// Our connection through it is up and verified.
    Connected,
    /// Its server is connected through another link; not dialed meanwhile.
    Alias,
    /// Gave up for now; dialed again after `until`.
    Quarantined,
    /// It is this node: never dialed again.
    Myself,
}

#[derive(Debug, Clone)]
struct EndpointEntry {
    state: EndpointState,
    source: Source,
    /// Consecutive give-ups, for the quarantine delay.
    failures: u32,
    until: Option<Instant>,
    address: Option<String>,
    dials: u64,
}

#[derive(Debug, Clone)]
struct Link {
    conn: ConnId,
    outbound: bool,
    endpoint: Option<Endpoint>,
    /// The peer is a tooldb-node (it offered our extension) and closes the
    /// same duplicate we do. A Tool Db (JS) server keeps its state per
    /// client id, so closing either of two links to it makes it forget us
    /// while the other is alive: both are kept (the hub relays on one).
    resolves_duplicates: bool,
    via: Via,
}

impl Link {
    /// Our side opened it: our dial, or our swarm's.
    fn dialed_by_us(&self) -> bool {
        match self.via {
            Via::Websocket => self.outbound,
            Via::Hyperswarm { initiator } => initiator,
        }
    }
}

#[derive(Debug, Clone)]
struct ServerEntry {
    client_id: String,
    peer: Option<Peer>,
    links: Vec<Link>,
}

/// Why the registry ends a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The endpoint answered with this node's own record.
    ThisNode,
    /// Another link to the same server stays (see `keep_outbound`).
    Duplicate { address: String },
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::ThisNode => f.write_str("this endpoint is this node"),
            StopReason::Duplicate { address } => write!(
                f,
                "duplicate connection to {address}: keeping the one dialed by the smaller address"
            ),
        }
    }
}

/// A server's state as `/peers` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerState {
    /// At least one verified link is up.
    Connected,
    /// No link; a dialer is trying one of its endpoints.
    Dialing,
    /// No link; every endpoint is waiting out its quarantine.
    BackingOff,
}

/// What the actor must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start a supervised `PeerConnection` to it.
    Dial { endpoint: Endpoint },
    /// Stop (and drop) the `PeerConnection` for it; no redial.
    StopDialing {
        endpoint: Endpoint,
        reason: StopReason,
    },
    /// Close an inbound connection (through the hub).
    CloseInbound { conn: ConnId, reason: StopReason },
    /// Save a verified server record in the peer book.
    Remember { peer: Peer },
}

#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// First quarantine delay after a dialer gives up.
    pub quarantine_initial: Duration,
    /// Cap of the growing quarantine delay.
    pub quarantine_max: Duration,
    /// Most endpoints remembered; beyond it new ones are ignored.
    pub max_endpoints: usize,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        RegistrySettings {
            quarantine_initial: Duration::from_secs(5),
            quarantine_max: Duration::from_secs(600),
            max_endpoints: 4096,
        }
    }
}

/// One server as `/peers` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ServerView {
    pub address: String,
    #[serde(rename = "clientId")]
    pub client_id: String,
    pub state: ServerState,
    pub peer: Option<Peer>,
    pub links: usize,
    pub endpoints: Vec<EndpointView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EndpointView {
    pub endpoint: Endpoint,
    pub state: EndpointState,
    pub source: Source,
    pub failures: u32,
    pub dials: u64,
}

pub struct RegistryState {
    self_address: String,
    self_endpoints: Vec<Endpoint>,
    settings: RegistrySettings,
    endpoints: HashMap<Endpoint, EndpointEntry>,
    servers: HashMap<String, ServerEntry>,
    full_logged: bool,
}

/// Which of two links between the same pair of servers stays: the one
/// dialed by the node with the smaller address. Both sides compute the same
/// answer, so a simultaneous dial leaves exactly one connection.
pub fn keep_outbound(self_address: &str, remote_address: &str) -> bool {
    self_address < remote_address
}

impl RegistryState {
    pub fn new(
        self_address: String,
        self_endpoints: Vec<Endpoint>,
        settings: RegistrySettings,
    ) -> Self {
        RegistryState {
            self_address,
            self_endpoints,
            settings,
            endpoints: HashMap::new(),
            servers: HashMap::new(),
            full_logged: false,
        }
    }

    fn quarantine_delay(&self, failures: u32) -> Duration {
        backoff_delay(
            failures,
            self.settings.quarantine_initial,
            self.settings.quarantine_max,
            0.0,
        )
    }

    fn dial(&mut self, endpoint: &Endpoint) -> Vec<Action> {
        let e = self
            .endpoints
            .get_mut(endpoint)
            .expect("dialed endpoints are known");
        e.state = EndpointState::Dialing;
        e.until = None;
        e.dials += 1;
        vec![Action::Dial {
            endpoint: endpoint.clone(),
        }]
    }

    fn server_connected(&self, address: &Option<String>) -> bool {
        address
            .as_ref()
            .and_then(|a| self.servers.get(a))
            .is_some_and(|s| !s.links.is_empty())
    }

    /// An endpoint was announced, listed or configured.
    pub fn found(&mut self, endpoint: Endpoint, source: Source, now: Instant) -> Vec<Action> {
        if self.self_endpoints.contains(&endpoint) {
            return vec![];
        }
        match self.endpoints.get_mut(&endpoint) {
            None => {
                if self.endpoints.len() >= self.settings.max_endpoints {
                    if !self.full_logged {
                        tracing::warn!(
                            max = self.settings.max_endpoints,
                            "peer registry full: ignoring new endpoints"
                        );
                        self.full_logged = true;
                    }
                    return vec![];
                }
                self.endpoints.insert(
                    endpoint.clone(),
                    EndpointEntry {
                        state: EndpointState::Quarantined,
                        source,
                        failures: 0,
                        until: None,
                        address: None,
                        dials: 0,
                    },
                );
                self.dial(&endpoint)
            }
            Some(e) => {
                // A better source upgrades how hard we try it.
                if matches!(source, Source::Static | Source::Book | Source::Exchange)
                    && e.source.may_be_junk()
                {
                    e.source = source;
                }
                let expired = e.until.is_none_or(|u| u <= now);
                let due = e.state == EndpointState::Quarantined && expired;
                let address = e.address.clone();
                if due && !self.server_connected(&address) {
                    self.dial(&endpoint)
                } else {
                    vec![]
                }
            }
        }
    }

    /// A dialer stopped trying: it failed `give_up_after` times, or found us.
    pub fn dial_gave_up(&mut self, endpoint: &Endpoint, myself: bool, now: Instant) -> Vec<Action> {
        let Some(e) = self.endpoints.get_mut(endpoint) else {
            return vec![];
        };
        if myself {
            e.state = EndpointState::Myself;
            e.until = None;
            self.self_endpoints.push(endpoint.clone());
            return vec![];
        }
        if e.state != EndpointState::Dialing {
            return vec![];
        }
        e.failures += 1;
        let failures = e.failures;
        let delay = self.quarantine_delay(failures);
        let e = self.endpoints.get_mut(endpoint).expect("present");
        e.state = EndpointState::Quarantined;
        e.until = Some(now + delay);
        vec![]
    }

    /// A verified server connection is up (outbound: after its pong;
    /// inbound: after its ping).
    pub fn connected(
        &mut self,
        conn: ConnId,
        outbound: bool,
        endpoint: Option<Endpoint>,
        peer: Peer,
        now: Instant,
    ) -> Vec<Action> {
        self.connected_to(conn, outbound, endpoint, peer, true, now)
    }

    /// `connected`, saying whether the peer resolves duplicate links as we
    /// do (a tooldb-node) or not (a Tool Db server).
    pub fn connected_to(
        &mut self,
        conn: ConnId,
        outbound: bool,
        endpoint: Option<Endpoint>,
        peer: Peer,
        resolves_duplicates: bool,
        now: Instant,
    ) -> Vec<Action> {
        self.connected_via(
            conn,
            outbound,
            endpoint,
            peer,
            resolves_duplicates,
            Via::Websocket,
            now,
        )
    }

    /// `connected_to`, saying which transport the link came over. Of two
    /// links to one server, a Hyperswarm link stays over a websocket one:
    /// the swarm redials a link it lost, so closing it would only churn,
    /// while a websocket endpoint marked an alias is not dialed again.
    #[allow(clippy::too_many_arguments)]
    pub fn connected_via(
        &mut self,
        conn: ConnId,
        outbound: bool,
        endpoint: Option<Endpoint>,
        peer: Peer,
        resolves_duplicates: bool,
        via: Via,
        now: Instant,
    ) -> Vec<Action> {
        let _ = now;
        let mut actions = vec![];
        let address = peer.address.clone();
        if address == self.self_address {
            if let Some(ep) = endpoint {
                actions.extend(self.dial_gave_up(&ep, true, now));
                actions.push(Action::StopDialing {
                    endpoint: ep,
                    reason: StopReason::ThisNode,
                });
            }
            return actions;
        }
        // The endpoint its record names is one of its endpoints too.
        let record_ep = Endpoint::new(peer.host.clone(), peer.port);
        let link_ep = endpoint.clone();
        for (ep, source) in [
            (link_ep.clone(), Source::Dht),
            (Some(record_ep), Source::Inbound),
        ] {
            let Some(ep) = ep else { continue };
            if self.self_endpoints.contains(&ep) {
                continue;
            }
            let entry = self.endpoints.entry(ep.clone()).or_insert(EndpointEntry {
                state: EndpointState::Alias,
                source,
                failures: 0,
                until: None,
                address: None,
                dials: 0,
            });
            entry.address = Some(address.clone());
            if Some(&ep) == link_ep.as_ref() {
                entry.state = EndpointState::Connected;
                entry.failures = 0;
                entry.until = None;
            } else if entry.state == EndpointState::Quarantined {
                entry.state = EndpointState::Alias;
                entry.until = None;
            }
        }
        let server = self.servers.entry(address.clone()).or_insert(ServerEntry {
            client_id: peer.client_id().to_owned(),
            peer: None,
            links: vec![],
        });
        server.peer = Some(peer.clone());
        server.links.push(Link {
            conn,
            outbound,
            endpoint,
            resolves_duplicates,
            via,
        });
        actions.push(Action::Remember { peer });
        if server.links.len() > 1 && server.links.iter().all(|l| l.resolves_duplicates) {
            let prefer_outbound = keep_outbound(&self.self_address, &address);
            let hyperswarm = server.links.iter().any(|l| l.via.is_hyperswarm());
            let keep = server
                .links
                .iter()
                .enumerate()
                .filter(|(_, l)| l.via.is_hyperswarm() == hyperswarm)
                .find(|(_, l)| l.dialed_by_us() == prefer_outbound)
                .or_else(|| {
                    (server.links.iter().enumerate())
                        .find(|(_, l)| l.via.is_hyperswarm() == hyperswarm)
                })
                .map_or(0, |(i, _)| i);
            let kept = server.links[keep].clone();
            let extra: Vec<Link> = server
                .links
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != keep)
                .map(|(_, l)| l.clone())
                .collect();
            server.links = vec![kept];
            for link in extra {
                let reason = StopReason::Duplicate {
                    address: address.clone(),
                };
                if let (true, Some(ep)) = (link.outbound, link.endpoint) {
                    if let Some(e) = self.endpoints.get_mut(&ep) {
                        e.state = EndpointState::Alias;
                    }
                    actions.push(Action::StopDialing {
                        endpoint: ep,
                        reason: reason.clone(),
                    });
                } else {
                    actions.push(Action::CloseInbound {
                        conn: link.conn,
                        reason: reason.clone(),
                    });
                }
            }
        }
        actions
    }

    /// A server connection closed.
    pub fn disconnected(&mut self, conn: ConnId, address: &str, now: Instant) -> Vec<Action> {
        let Some(server) = self.servers.get_mut(address) else {
            return vec![];
        };
        let Some(pos) = server.links.iter().position(|l| l.conn == conn) else {
            return vec![];
        };
        let link = server.links.remove(pos);
        if !server.links.is_empty() {
            return vec![];
        }
        // Its dialer (if ours) redials under its supervisor; otherwise dial
        // the endpoints we know for it, so a lost server is sought again.
        if link.outbound {
            if let Some(ep) = &link.endpoint {
                if let Some(e) = self.endpoints.get_mut(ep) {
                    e.state = EndpointState::Dialing;
                }
                return vec![];
            }
        }
        let candidates: Vec<Endpoint> = self
            .endpoints
            .iter()
            .filter(|(_, e)| {
                e.address.as_deref() == Some(address) && e.state == EndpointState::Alias
            })
            .map(|(ep, _)| ep.clone())
            .collect();
        let mut actions = vec![];
        for ep in candidates {
            let _ = now;
            actions.extend(self.dial(&ep));
        }
        actions
    }

    /// Redials quarantined endpoints whose delay is over, when they are
    /// worth it (configured, from the book or a verified list, or a known
    /// server); DHT junk waits until a lookup finds it again.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        let due: Vec<Endpoint> = self
            .endpoints
            .iter()
            .filter(|(_, e)| {
                e.state == EndpointState::Quarantined
                    && e.until.is_some_and(|u| u <= now)
                    && (!e.source.may_be_junk() || e.address.is_some())
            })
            .map(|(ep, _)| ep.clone())
            .collect();
        let mut actions = vec![];
        for ep in due {
            let address = self.endpoints[&ep].address.clone();
            if !self.server_connected(&address) {
                actions.extend(self.dial(&ep));
            }
        }
        actions
    }

    /// Whether any server has a verified link up.
    pub fn any_connected(&self) -> bool {
        self.servers.values().any(|s| !s.links.is_empty())
    }

    pub fn is_connected(&self, address: &str) -> bool {
        self.server_connected(&Some(address.to_owned()))
    }

    pub fn view(&self) -> Vec<ServerView> {
        let mut out: Vec<ServerView> = self
            .servers
            .iter()
            .map(|(address, s)| {
                let endpoints: Vec<EndpointView> = self
                    .endpoints
                    .iter()
                    .filter(|(_, e)| e.address.as_deref() == Some(address))
                    .map(|(ep, e)| endpoint_view(ep, e))
                    .collect();
                let state = if !s.links.is_empty() {
                    ServerState::Connected
                } else if endpoints.iter().any(|e| e.state == EndpointState::Dialing) {
                    ServerState::Dialing
                } else {
                    ServerState::BackingOff
                };
                ServerView {
                    address: address.clone(),
                    client_id: s.client_id.clone(),
                    state,
                    peer: s.peer.clone(),
                    links: s.links.len(),
                    endpoints,
                }
            })
            .collect();
        out.sort_by(|a, b| a.address.cmp(&b.address));
        out
    }

    /// Endpoints not (yet) tied to a verified server: discovered, dialing,
    /// quarantined junk, or ourselves.
    pub fn unidentified(&self) -> Vec<EndpointView> {
        let mut v: Vec<EndpointView> = self
            .endpoints
            .iter()
            .filter(|(_, e)| e.address.is_none())
            .map(|(ep, e)| endpoint_view(ep, e))
            .collect();
        v.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
        v
    }
}

fn endpoint_view(ep: &Endpoint, e: &EndpointEntry) -> EndpointView {
    EndpointView {
        endpoint: ep.clone(),
        state: e.state,
        source: e.source,
        failures: e.failures,
        dials: e.dials,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str) -> Endpoint {
        Endpoint::parse(s).unwrap()
    }
    use crate::crypto::{KeyScheme, NodeKey};

    fn peer(key: &NodeKey, port: u16) -> Peer {
        Peer::sign(key, "t", "127.0.0.1", port, 1)
    }

    fn state(me: &NodeKey) -> RegistryState {
        RegistryState::new(
            me.address().into(),
            vec![ep("127.0.0.1:1")],
            RegistrySettings::default(),
        )
    }

    fn dials(actions: &[Action]) -> usize {
        actions
            .iter()
            .filter(|a| matches!(a, Action::Dial { .. }))
            .count()
    }

    #[test]
    fn new_endpoints_are_dialed_once_and_our_own_never() {
        let me = NodeKey::generate(KeyScheme::Secp256k1);
        let mut r = state(&me);
        let now = Instant::now();
        assert!(
            r.found(ep("127.0.0.1:1"), Source::Dht, now).is_empty(),
            "our own endpoint"
        );
        assert_eq!(dials(&r.found(ep("127.0.0.1:2"), Source::Dht, now)), 1);
        assert_eq!(
            dials(&r.found(ep("127.0.0.1:2"), Source::Dht, now)),
            0,
            "already dialing"
        );
    }

    #[test]
    fn an_endpoint_that_turns_out_to_be_us_is_never_dialed_again() {
        let me = NodeKey::generate(KeyScheme::Secp256k1);
        let mut r = state(&me);
        let now = Instant::now();
        r.found(ep("10.0.0.1:9"), Source::Dht, now);
        let acts = r.connected(1, true, Some(ep("10.0.0.1:9")), peer(&me, 9), now);
        assert!(acts.iter().any(|a| matches!(a, Action::StopDialing { .. })));
        let later = now + Duration::from_secs(3600);
        assert!(r.found(ep("10.0.0.1:9"), Source::Dht, later).is_empty());
        assert!(r.tick(later).is_empty());
        assert_eq!(r.unidentified()[0].state, EndpointState::Myself);
    }

    #[test]
    fn one_server_under_two_endpoints_keeps_one_connection() {
        let me = NodeKey::generate(KeyScheme::Secp256k1);
        let other = NodeKey::generate(KeyScheme::Secp256k1);
        let mut r = state(&me);
        let now = Instant::now();
        r.found(ep("127.0.0.1:7"), Source::Dht, now);
        r.found(ep("192.0.2.1:7"), Source::Dht, now);
        r.connected(1, true, Some(ep("127.0.0.1:7")), peer(&other, 7), now);
        let acts = r.connected(2, true, Some(ep("192.0.2.1:7")), peer(&other, 7), now);
        assert_eq!(
            acts.iter()
                .filter(|a| matches!(a, Action::StopDialing { .. }))
                .count(),
            1
        );
        let v = r.view();
        assert_eq!((v.len(), v[0].links), (1, 1));
        // While it is connected, lookups that list the alias dial nothing.
        assert_eq!(
            dials(&r.found(
                ep("192.0.2.1:7"),
                Source::Dht,
                now + Duration::from_secs(999)
            )),
            0
        );
    }

    #[test]
    fn a_simultaneous_dial_leaves_the_link_dialed_by_the_smaller_address() {
        let a = NodeKey::generate(KeyScheme::Secp256k1);
        let b = NodeKey::generate(KeyScheme::Secp256k1);
        let (small, large) = if a.address() < b.address() {
            (&a, &b)
        } else {
            (&b, &a)
        };
        let now = Instant::now();
        // On the smaller node: its outbound stays, the inbound goes.
        let mut rs = state(small);
        rs.found(ep("127.0.0.1:20"), Source::Dht, now);
        rs.connected(1, true, Some(ep("127.0.0.1:20")), peer(large, 20), now);
        let acts = rs.connected(2, false, None, peer(large, 20), now);
        assert_eq!(
            acts.iter()
                .filter(|a| matches!(a, Action::CloseInbound { conn: 2, .. }))
                .count(),
            1
        );
        // On the larger node, in the other order: its outbound goes.
        let mut rl = state(large);
        rl.connected(3, false, None, peer(small, 10), now);
        rl.found(ep("127.0.0.1:10"), Source::Dht, now);
        let acts = rl.connected(4, true, Some(ep("127.0.0.1:10")), peer(small, 10), now);
        assert!(acts.iter().any(
            |a| matches!(a, Action::StopDialing { endpoint, .. } if *endpoint == ep("127.0.0.1:10"))
        ));
        assert!(!acts
            .iter()
            .any(|a| matches!(a, Action::CloseInbound { .. })));
    }

    #[test]
    fn a_hyperswarm_link_stays_and_the_websocket_one_goes_on_both_sides() {
        let a = NodeKey::generate(KeyScheme::Secp256k1);
        let b = NodeKey::generate(KeyScheme::Secp256k1);
        let now = Instant::now();
        let swarm = |initiator| Via::Hyperswarm { initiator };
        // On a: its dial to b is up, then the swarm link (a initiated).
        let mut ra = state(&a);
        ra.found(ep("127.0.0.1:20"), Source::Dht, now);
        ra.connected(1, true, Some(ep("127.0.0.1:20")), peer(&b, 20), now);
        let acts = ra.connected_via(2, false, None, peer(&b, 20), true, swarm(true), now);
        assert!(acts.iter().any(
            |x| matches!(x, Action::StopDialing { endpoint, .. } if *endpoint == ep("127.0.0.1:20"))
        ));
        assert!(!acts
            .iter()
            .any(|x| matches!(x, Action::CloseInbound { .. })));
        // On b: the swarm link first (b accepted), then a's websocket.
        let mut rb = state(&b);
        rb.connected_via(3, false, None, peer(&a, 10), true, swarm(false), now);
        let acts = rb.connected(4, false, None, peer(&a, 10), now);
        assert!(acts
            .iter()
            .any(|x| matches!(x, Action::CloseInbound { conn: 4, .. })));
        assert_eq!(rb.view()[0].links, 1);
    }

    #[test]
    fn of_two_hyperswarm_links_both_sides_keep_the_same_one() {
        let a = NodeKey::generate(KeyScheme::Secp256k1);
        let b = NodeKey::generate(KeyScheme::Secp256k1);
        let now = Instant::now();
        let swarm = |initiator| Via::Hyperswarm { initiator };
        // Link X: a initiated; link Y: b initiated. Each side closes one.
        let mut ra = state(&a);
        ra.connected_via(1, false, None, peer(&b, 20), true, swarm(true), now);
        let on_a = ra.connected_via(2, false, None, peer(&b, 20), true, swarm(false), now);
        let mut rb = state(&b);
        rb.connected_via(3, false, None, peer(&a, 10), true, swarm(false), now);
        let on_b = rb.connected_via(4, false, None, peer(&a, 10), true, swarm(true), now);
        let closed = |acts: &[Action]| -> Vec<ConnId> {
            acts.iter()
                .filter_map(|x| match x {
                    Action::CloseInbound { conn, .. } => Some(*conn),
                    _ => None,
                })
                .collect()
        };
        // a's conn 1 is b's conn 3 (link X); a's 2 is b's 4 (link Y).
        let x_closed_on_a = closed(&on_a) == vec![1];
        let x_closed_on_b = closed(&on_b) == vec![3];
        assert_eq!(closed(&on_a).len(), 1);
        assert_eq!(closed(&on_b).len(), 1);
        assert_eq!(x_closed_on_a, x_closed_on_b, "both close the same link");
    }

    #[test]
    fn two_links_to_a_tool_db_server_are_both_kept() {
        // A JS Tool Db server dials us and our dial proves it: it keeps its
        // state per client id, so closing either link would make it forget
        // us while the other is up.
        let me = NodeKey::generate(KeyScheme::Secp256k1);
        let js = NodeKey::generate(KeyScheme::P256);
        let now = Instant::now();
        let mut r = state(&me);
        r.connected_to(1, false, None, peer(&js, 30), false, now);
        r.found(ep("127.0.0.1:30"), Source::Exchange, now);
        let acts = r.connected_to(2, true, Some(ep("127.0.0.1:30")), peer(&js, 30), false, now);
        assert!(!acts
            .iter()
            .any(|a| matches!(a, Action::CloseInbound { .. } | Action::StopDialing { .. })));
    }

    #[test]
    fn quarantine_grows_and_is_capped_and_junk_waits_for_a_lookup() {
        let me = NodeKey::generate(KeyScheme::Secp256k1);
        let mut r = state(&me);
        let mut now = Instant::now();
        let ep: Endpoint = ep("127.0.0.1:99");
        r.found(ep.clone(), Source::Dht, now);
        let mut delays = vec![];
        for _ in 0..12 {
            r.dial_gave_up(&ep, false, now);
            let until = r.endpoints[&ep].until.unwrap();
            delays.push(until - now);
            assert!(
                r.tick(until).is_empty(),
                "DHT junk is not redialed by the timer"
            );
            assert_eq!(
                dials(&r.found(ep.clone(), Source::Dht, until - Duration::from_millis(1))),
                0,
                "not before the delay"
            );
            now = until;
            assert_eq!(dials(&r.found(ep.clone(), Source::Dht, now)), 1);
        }
        assert_eq!(delays[0], Duration::from_secs(5));
        assert_eq!(delays[1], Duration::from_secs(10));
        assert!(delays.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*delays.last().unwrap(), Duration::from_secs(600), "capped");
        assert_eq!(r.unidentified()[0].dials, 13);
    }

    #[test]
    fn static_peers_are_redialed_by_the_timer() {
        let me = NodeKey::generate(KeyScheme::Secp256k1);
        let mut r = state(&me);
        let now = Instant::now();
        r.found(ep("h:1"), Source::Static, now);
        r.dial_gave_up(&ep("h:1"), false, now);
        assert!(r.tick(now + Duration::from_secs(4)).is_empty());
        assert_eq!(dials(&r.tick(now + Duration::from_secs(5))), 1);
    }

    #[test]
    fn a_lost_inbound_server_is_dialed_at_its_recorded_endpoint() {
        let me = NodeKey::generate(KeyScheme::Secp256k1);
        let other = NodeKey::generate(KeyScheme::Secp256k1);
        let mut r = state(&me);
        let now = Instant::now();
        r.connected(5, false, None, peer(&other, 30), now);
        assert!(r.is_connected(other.address()));
        let acts = r.disconnected(5, other.address(), now);
        assert_eq!(
            acts,
            vec![Action::Dial {
                endpoint: ep("127.0.0.1:30")
            }]
        );
    }

    #[test]
    fn the_registry_stays_bounded() {
        let me = NodeKey::generate(KeyScheme::Secp256k1);
        let mut r = RegistryState::new(
            me.address().into(),
            vec![],
            RegistrySettings {
                max_endpoints: 3,
                ..Default::default()
            },
        );
        let now = Instant::now();
        let n: usize = (0..10)
            .map(|i| dials(&r.found(Endpoint::new("127.0.0.1", i), Source::Dht, now)))
            .sum();
        assert_eq!(n, 3);
    }
}

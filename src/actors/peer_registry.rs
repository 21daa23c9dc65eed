//! `PeerRegistry`: every server this node knows of, and the one place that
//! decides which endpoints are dialed. One per node, created with the hub
//! (it holds the hub's address; the hub holds its `RegistryLink`); the
//! `DhtChannel` sends it `EndpointsFound`.
//!
//! Receives: `EndpointsFound` (DHT), `ServersListed` (pong peer exchange),
//! `ServerConnected`/`ServerDisconnected` (hub), `DialGaveUp` (dialers),
//! `GetRegistryView`. Carries out the `Action`s of `registry::RegistryState`:
//! starts a supervised `PeerConnection` per endpoint to dial, stops
//! duplicate dialers, asks the hub to close duplicate inbound links, and
//! saves verified servers in the peer book (sled), which it reads at start
//! so known servers are dialed before the DHT answers. It tells the
//! `DhtChannel` (`SetSearching`) whether any server is connected: while
//! none is, the topic is looked up often. Stops with the system.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::actors::dht_channel::DhtChannel;
use crate::actors::peer_connection::PeerConnection;
use crate::actors::storage::Storage;
use crate::actors::Services;
use crate::endpoint::Endpoint;
use crate::messages::connection::CloseConnection;
use crate::messages::dht::{EndpointsFound, FoundVia, LookupNow, SetSearching};
use crate::messages::hub::DropConnection;
use crate::messages::registry::*;
use crate::messages::storage::{LoadPeers, SavePeer};
use crate::metrics::{CloseCause, EndpointSource};
use crate::registry::{Action, RegistrySettings, RegistryState, Source, StopReason};

/// How often quarantined endpoints are checked for a redial.
const TICK_EVERY: Duration = Duration::from_secs(1);

pub struct PeerRegistry {
    state: RegistryState,
    services: Services,
    storage: Addr<Storage>,
    static_peers: Vec<Endpoint>,
    dialers: HashMap<Endpoint, Addr<PeerConnection>>,
    dht: Option<Addr<DhtChannel>>,
    /// What the DHT channel was last told: no server connected.
    searching: bool,
}

/// Tells the registry which DHT channel to ask for a fresh lookup when a
/// server is lost (the channel is created after the registry).
#[derive(Message)]
#[rtype(result = "()")]
pub struct UseDht(pub Addr<DhtChannel>);

impl PeerRegistry {
    pub fn new(
        services: Services,
        storage: Addr<Storage>,
        self_address: String,
        self_endpoints: Vec<Endpoint>,
    ) -> Self {
        let p = &services.config.peering;
        let settings = RegistrySettings {
            quarantine_initial: Duration::from_millis(p.quarantine_initial_ms),
            quarantine_max: Duration::from_millis(p.quarantine_max_ms),
            ..RegistrySettings::default()
        };
        let static_peers = services
            .config
            .peers
            .iter()
            .filter_map(|p| Endpoint::parse(p).ok())
            .collect();
        PeerRegistry {
            state: RegistryState::new(self_address, self_endpoints, settings),
            services,
            storage,
            static_peers,
            dialers: HashMap::new(),
            dht: None,
            searching: true,
        }
    }

    /// Tells the DHT channel when the node goes from no server connected
    /// to some, or back: it looks up often only while searching.
    fn update_searching(&mut self, force: bool) {
        let searching = !self.state.any_connected();
        if searching == self.searching && !force {
            return;
        }
        self.searching = searching;
        if let Some(dht) = &self.dht {
            dht.do_send(SetSearching {
                topic: self.services.config.topic.clone(),
                searching,
            });
        }
    }

    /// An endpoint found: counted by source, then decided on.
    fn found(&mut self, endpoint: Endpoint, source: Source, now: Instant) -> Vec<Action> {
        self.services.metrics.endpoints_found.inc(source.into());
        self.state.found(endpoint, source, now)
    }

    fn apply(&mut self, actions: Vec<Action>, ctx: &mut Context<Self>) {
        for action in actions {
            match action {
                Action::Dial { endpoint } => {
                    let target = endpoint.clone();
                    tracing::debug!(endpoint = %endpoint, "dialing");
                    let services = self.services.clone();
                    let me = ctx.address().recipient();
                    let addr =
                        Supervisor::start(move |_| PeerConnection::new(target, services, Some(me)));
                    if let Some(old) = self.dialers.insert(endpoint, addr) {
                        old.do_send(
                            CloseConnection::going_away("replaced by a new dialer")
                                .because(CloseCause::Duplicate),
                        );
                    }
                }
                Action::StopDialing { endpoint, reason } => {
                    if let Some(addr) = self.dialers.remove(&endpoint) {
                        tracing::info!(endpoint = %endpoint, reason = %reason, "stopped dialing");
                        let cause = match reason {
                            StopReason::ThisNode => CloseCause::Myself,
                            StopReason::Duplicate { .. } => CloseCause::Duplicate,
                        };
                        addr.do_send(
                            CloseConnection::going_away(reason.to_string()).because(cause),
                        );
                    }
                }
                Action::CloseInbound { conn, reason } => {
                    self.services.hub.do_send(DropConnection {
                        conn,
                        reason: reason.to_string(),
                    });
                }
                Action::Remember { peer } => {
                    self.storage.do_send(SavePeer { peer });
                }
            }
        }
    }
}

impl Actor for PeerRegistry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let now = Instant::now();
        for ep in self.static_peers.clone() {
            let actions = self.found(ep, Source::Static, now);
            self.apply(actions, ctx);
        }
        let storage = self.storage.clone();
        ctx.spawn(
            async move { storage.send(LoadPeers).await }
                .into_actor(self)
                .map(|res, act, ctx| match res {
                    Ok(Ok(peers)) => {
                        if !peers.is_empty() {
                            tracing::info!(
                                count = peers.len(),
                                "dialing servers from the peer book"
                            );
                        }
                        let now = Instant::now();
                        for p in peers {
                            let endpoint = Endpoint::new(p.host.clone(), p.port);
                            if p.ssl {
                                crate::transport::remember_scheme(&endpoint, true);
                            }
                            let actions = act.found(endpoint, Source::Book, now);
                            act.apply(actions, ctx);
                        }
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "cannot read the peer book"),
                    Err(e) => tracing::warn!(error = %e, "storage unreachable"),
                }),
        );
        ctx.run_interval(TICK_EVERY, |act, ctx| {
            let actions = act.state.tick(Instant::now());
            act.apply(actions, ctx);
        });
    }
}

impl Handler<UseDht> for PeerRegistry {
    type Result = ();
    fn handle(&mut self, msg: UseDht, _: &mut Self::Context) {
        self.dht = Some(msg.0);
        self.update_searching(true);
    }
}

impl Handler<EndpointsFound> for PeerRegistry {
    type Result = ();
    fn handle(&mut self, msg: EndpointsFound, ctx: &mut Self::Context) {
        if msg.topic != self.services.config.topic {
            return;
        }
        let now = Instant::now();
        let source = match msg.via {
            FoundVia::Dht => Source::Dht,
            FoundVia::Lan => Source::Lan,
        };
        for ep in msg.endpoints {
            let actions = self.found(Endpoint::new(ep.ip().to_string(), ep.port()), source, now);
            self.apply(actions, ctx);
        }
    }
}

impl Handler<ServersListed> for PeerRegistry {
    type Result = ();
    fn handle(&mut self, msg: ServersListed, ctx: &mut Self::Context) {
        let now = Instant::now();
        for p in msg.peers {
            if self.state.is_connected(&p.address) {
                continue;
            }
            let actions = self.found(Endpoint::new(p.host.clone(), p.port), Source::Exchange, now);
            self.apply(actions, ctx);
        }
    }
}

impl Handler<ServerConnected> for PeerRegistry {
    type Result = ();
    fn handle(&mut self, msg: ServerConnected, ctx: &mut Self::Context) {
        if !msg.outbound {
            // The endpoint in the record of a server that dialed us.
            self.services
                .metrics
                .endpoints_found
                .inc(EndpointSource::Inbound);
        }
        let actions = self.state.connected_via(
            msg.conn,
            msg.outbound,
            msg.endpoint,
            msg.peer,
            msg.tooldb_node,
            msg.via,
            Instant::now(),
        );
        self.apply(actions, ctx);
        self.update_searching(false);
    }
}

impl Handler<ServerDisconnected> for PeerRegistry {
    type Result = ();
    fn handle(&mut self, msg: ServerDisconnected, ctx: &mut Self::Context) {
        let actions = self
            .state
            .disconnected(msg.conn, &msg.address, Instant::now());
        self.apply(actions, ctx);
        self.update_searching(false);
        if !self.state.is_connected(&msg.address) {
            if let Some(dht) = &self.dht {
                dht.do_send(LookupNow {
                    topic: self.services.config.topic.clone(),
                });
            }
        }
    }
}

impl Handler<DialGaveUp> for PeerRegistry {
    type Result = ();
    fn handle(&mut self, msg: DialGaveUp, ctx: &mut Self::Context) {
        tracing::debug!(endpoint = %msg.endpoint, reason = %msg.reason, "dialer gave up");
        self.dialers.remove(&msg.endpoint);
        let actions = self.state.dial_gave_up(
            &msg.endpoint,
            msg.reason == GaveUpReason::Myself,
            Instant::now(),
        );
        self.apply(actions, ctx);
    }
}

impl Handler<GetRegistryView> for PeerRegistry {
    type Result = MessageResult<GetRegistryView>;
    fn handle(&mut self, _: GetRegistryView, _: &mut Self::Context) -> Self::Result {
        MessageResult(RegistryView {
            servers: self.state.view(),
            endpoints: self.state.unidentified(),
        })
    }
}

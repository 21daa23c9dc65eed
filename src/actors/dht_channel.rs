//! `DhtChannel`: finds the servers of our topics on the BitTorrent Mainline
//! DHT (the `mainline` crate, async API) and announces our websocket port.
//! One per node, run under `actix::Supervisor` (`DhtChannel::supervised`);
//! the server keeps its `Addr` (so the supervisor keeps restarting it).
//!
//! Owns the `mainline` node, the topics joined (with their lookup and
//! announce timers) and what the DHT reports about us: our public address
//! and whether we are reachable from outside.
//! Receives `JoinTopic`, `LeaveTopic`, `LookupNow`, `SetSearching`,
//! `GetDhtStatus`.
//! Emits `EndpointsFound` to the `Recipient` given at construction (the
//! peer registry): every endpoint a lookup returns, once per lookup,
//! unfiltered (ourselves and junk included).
//!
//! On start it waits out its backoff, resolves the bootstrap nodes and
//! builds the DHT (on the blocking pool: both block). As soon as the socket
//! is up, joined topics are looked up (a lookup with an empty routing table
//! asks the bootstrap nodes) while the routing table bootstraps alongside:
//! first contact costs one lookup, not a bootstrap plus a lookup. Each
//! batch of peers a lookup streams goes out at once. Then lookups follow
//! the topic's `LookupSchedule`: short and bounded while searching (no
//! server of the topic connected, the default; the owner says otherwise
//! with `SetSearching`), backing off once connected.
//! A topic with a port is announced right away and every `announce_every`,
//! but only while the DHT reports us reachable, or our DHT socket is bound
//! to loopback (a node it cannot reach looks up only). Every DHT call runs as a spawned future.
//!
//! A DHT that cannot be built, does not bootstrap, stops reaching any node,
//! or whose thread dies makes the actor stop; the supervisor's restart is
//! the retry, after an exponential, jittered, capped backoff kept in the
//! actor and reset only after a successful bootstrap. Topics survive the
//! restart (fields do; timers do not and are re-armed). The outage is
//! logged once (warn) and the recovery once (info).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, ToSocketAddrs};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::{FutureExt, StreamExt};
use mainline::async_dht::AsyncDht;
use mainline::{Dht, Id};
use rand::Rng;

use crate::backoff::backoff_delay;
use crate::dht::{
    announce_decision, new_endpoints, topic_info_hash, AnnounceDecision, DhtError, LookupSchedule,
    Reachability, ANNOUNCE_EVERY, ANNOUNCE_RETRY, ANNOUNCE_TIMEOUT, BOOTSTRAP_TIMEOUT,
    HEALTH_CHECK_EVERY, INFO_REFRESH_EVERY, LOOKUP_MAX, LOOKUP_TIMEOUT, REACHABILITY_GRACE,
    REACHABILITY_POLL, RETRY_INITIAL, RETRY_MAX,
};
use crate::messages::dht::{
    DhtStatus, EndpointsFound, FoundVia, GetDhtStatus, JoinTopic, LeaveTopic, LookupNow,
    SetSearching, TopicStatus,
};
use crate::metrics::{AnnounceResult, LookupResult, Metrics};

/// How the channel builds and runs its DHT node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhtSettings {
    /// Bootstrap nodes (HOST:PORT); empty = mainline's public bootstrap
    /// nodes (`mainline::DEFAULT_BOOTSTRAP_NODES`).
    pub bootstrap: Vec<String>,
    /// UDP port of our DHT socket. `None` = mainline's default: 6881 if
    /// free, else any; `Some(0)` = any free port.
    pub port: Option<u16>,
    /// Address the DHT socket binds.
    pub bind: Ipv4Addr,
    /// Answer other nodes' queries from the start (a long-running node
    /// with a public address, or a private DHT). Otherwise mainline's
    /// adaptive mode switches to server mode once it finds us reachable.
    pub server_mode: bool,
    /// Cap of the delay between two lookups of a topic.
    pub lookup_max: Duration,
    /// How often a topic is re-announced.
    pub announce_every: Duration,
    /// First delay before rebuilding a failed DHT.
    pub retry_initial: Duration,
    /// Cap of the delay between two rebuilds.
    pub retry_max: Duration,
}

impl Default for DhtSettings {
    fn default() -> Self {
        DhtSettings {
            bootstrap: vec![],
            port: None,
            bind: Ipv4Addr::UNSPECIFIED,
            server_mode: false,
            lookup_max: LOOKUP_MAX,
            announce_every: ANNOUNCE_EVERY,
            retry_initial: RETRY_INITIAL,
            retry_max: RETRY_MAX,
        }
    }
}

/// A plain mainline node in server mode with no bootstrap of its own: the
/// first node of a private DHT (`tooldb-node dht-bootstrap`). Other nodes
/// bootstrap from `bind`; with port 0 ask the node for its address
/// (`dht.as_async().info().await.local_addr()`).
///
/// It serves mainline-family clients only: `mainline` answers only KRPC
/// queries with 4-byte transaction ids, and JS `bittorrent-dht` (so npm
/// `discovery-channel`, what JS Tool Db servers use) and libtorrent send
/// 2-byte ids, so they cannot use it (DHT-NOTES.md).
///
/// Binding blocks briefly (it starts the DHT thread): call it from `main`
/// or a blocking task, not from an actor.
pub fn bootstrap_node(bind: SocketAddr) -> Result<Dht, DhtError> {
    let SocketAddr::V4(v4) = bind else {
        return Err(DhtError::NotIpv4 { addr: bind });
    };
    Dht::builder()
        .server_mode()
        .no_bootstrap()
        .bind_address(*v4.ip())
        .port(v4.port())
        .build()
        .map_err(|e| DhtError::Socket {
            port: Some(v4.port()),
            reason: e.to_string(),
        })
}

/// The bootstrap nodes used: the configured ones, or mainline's public ones.
fn bootstrap_names(bootstrap: &[String]) -> Vec<String> {
    if bootstrap.is_empty() {
        mainline::DEFAULT_BOOTSTRAP_NODES
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        bootstrap.to_vec()
    }
}

/// Resolves bootstrap names to IPv4 addresses (DNS: blocks). Names that do
/// not resolve are skipped; none resolving is an error, because mainline
/// given an empty list would silently become the first node of a new DHT.
pub fn resolve_bootstrap(bootstrap: &[String]) -> Result<Vec<SocketAddrV4>, DhtError> {
    let names = bootstrap_names(bootstrap);
    let mut addrs = Vec::new();
    for name in &names {
        match name.to_socket_addrs() {
            Ok(found) => addrs.extend(found.filter_map(|a| match a {
                SocketAddr::V4(v4) => Some(v4),
                SocketAddr::V6(_) => None,
            })),
            Err(e) => {
                tracing::debug!(node = %name, error = %e, "DHT bootstrap node did not resolve")
            }
        }
    }
    let mut seen = HashSet::new();
    addrs.retain(|a| seen.insert(*a));
    if addrs.is_empty() {
        return Err(DhtError::NoBootstrapResolved { bootstrap: names });
    }
    Ok(addrs)
}

/// Resolves the bootstrap and builds the node (blocks: run on the blocking pool).
fn build_dht(settings: &DhtSettings) -> Result<Dht, DhtError> {
    let bootstrap = resolve_bootstrap(&settings.bootstrap)?;
    let mut builder = Dht::builder();
    builder.bootstrap(&bootstrap).bind_address(settings.bind);
    if let Some(port) = settings.port {
        builder.port(port);
    }
    if settings.server_mode {
        builder.server_mode();
    }
    builder.build().map_err(|e| DhtError::Socket {
        port: settings.port,
        reason: e.to_string(),
    })
}

/// Runs a DHT call, turning a panic into `ThreadGone`: `mainline`'s async
/// API panics when its thread has died, and a panic would kill this actor
/// for good (the supervisor restarts only actors that stop).
fn guarded<F: Future>(fut: F) -> impl Future<Output = Result<F::Output, DhtError>> {
    AssertUnwindSafe(fut)
        .catch_unwind()
        .map(|r| r.map_err(|_| DhtError::ThreadGone))
}

/// What the DHT last told us about ourselves.
#[derive(Debug, Clone, Copy)]
struct NodeInfo {
    id: Id,
    local_addr: SocketAddrV4,
    public_address: Option<SocketAddrV4>,
    firewalled: bool,
}

/// Our node's info (`mainline`'s `Info` type is not exported by name).
async fn fetch_info(dht: &AsyncDht) -> NodeInfo {
    let info = dht.info().await;
    NodeInfo {
        id: *info.id(),
        local_addr: info.local_addr(),
        public_address: info.public_address(),
        firewalled: info.firewalled(),
    }
}

impl NodeInfo {
    fn reachability(&self) -> Reachability {
        Reachability::of_node(self.local_addr, self.public_address, self.firewalled)
    }
}

struct Topic {
    info_hash: Id,
    port: Option<u16>,
    /// Changes on every (re)join and every restart, so callbacks of an
    /// older one are ignored.
    generation: u64,
    schedule: LookupSchedule,
    /// No server of this topic is connected: look up often (bounded).
    searching: bool,
    lookup_timer: Option<SpawnHandle>,
    announce_timer: Option<SpawnHandle>,
    lookup_running: bool,
    announced: bool,
    lookups: u64,
    last_lookup_endpoints: usize,
}

pub struct DhtChannel {
    settings: DhtSettings,
    found: Recipient<EndpointsFound>,
    dht: Option<AsyncDht>,
    /// When the DHT socket came up (lookups and announces start then).
    socket_up: Option<Instant>,
    /// When the routing table bootstrapped.
    up_since: Option<Instant>,
    info: Option<NodeInfo>,
    topics: HashMap<String, Topic>,
    next_generation: u64,
    /// Failed attempts since the last successful bootstrap.
    failures: u32,
    last_error: Option<DhtError>,
    /// The outage was logged; the recovery will be.
    down_logged: bool,
    /// "Not reachable, not announcing" was logged.
    unreachable_logged: bool,
    /// This run already failed and is stopping; later failures of its
    /// other futures are not counted again.
    failing: bool,
    /// Counts lookups and announces.
    metrics: Arc<Metrics>,
}

impl DhtChannel {
    pub fn new(settings: DhtSettings, found: Recipient<EndpointsFound>) -> Self {
        Self::counting(settings, found, Arc::new(Metrics::new()))
    }

    /// A channel that counts its lookups and announces into `metrics`.
    pub fn counting(
        settings: DhtSettings,
        found: Recipient<EndpointsFound>,
        metrics: Arc<Metrics>,
    ) -> Self {
        DhtChannel {
            settings,
            found,
            dht: None,
            socket_up: None,
            up_since: None,
            info: None,
            topics: HashMap::new(),
            next_generation: 1,
            failures: 0,
            last_error: None,
            down_logged: false,
            unreachable_logged: false,
            failing: false,
            metrics,
        }
    }

    /// Starts the channel under `actix::Supervisor` on the current arbiter.
    pub fn supervised(settings: DhtSettings, found: Recipient<EndpointsFound>) -> Addr<Self> {
        Self::supervised_with(settings, found, Arc::new(Metrics::new()))
    }

    /// `supervised`, counting into a node's `metrics`.
    pub fn supervised_with(
        settings: DhtSettings,
        found: Recipient<EndpointsFound>,
        metrics: Arc<Metrics>,
    ) -> Addr<Self> {
        Supervisor::start(move |_| DhtChannel::counting(settings, found, metrics))
    }

    fn generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    /// The topic, if it is still the same join and the DHT is up.
    fn live_topic(&mut self, name: &str, generation: u64) -> Option<&mut Topic> {
        self.dht.as_ref()?;
        self.topics
            .get_mut(name)
            .filter(|t| t.generation == generation)
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        let settings = self.settings.clone();
        let build = actix_rt::task::spawn_blocking(move || build_dht(&settings));
        ctx.spawn(build.into_actor(self).map(|res, act, ctx| {
            let built = res.unwrap_or_else(|e| {
                Err(DhtError::Socket {
                    port: act.settings.port,
                    reason: format!("the DHT thread failed to start: {e}"),
                })
            });
            match built {
                Ok(dht) => {
                    act.dht = Some(dht.as_async());
                    act.on_socket_up(ctx);
                    act.bootstrap(ctx);
                }
                Err(e) => act.fail(e, ctx),
            }
        }));
    }

    fn bootstrap(&mut self, ctx: &mut Context<Self>) {
        let Some(dht) = self.dht.clone() else { return };
        let fut = tokio::time::timeout(
            BOOTSTRAP_TIMEOUT,
            guarded(async move {
                let ok = dht.bootstrapped().await;
                (ok, fetch_info(&dht).await)
            }),
        );
        ctx.spawn(fut.into_actor(self).map(|res, act, ctx| match res {
            Ok(Ok((true, info))) => {
                act.info = Some(info);
                act.on_bootstrapped(ctx);
            }
            Ok(Ok((false, _))) => act.fail(
                DhtError::NotBootstrapped {
                    bootstrap: bootstrap_names(&act.settings.bootstrap),
                },
                ctx,
            ),
            Ok(Err(e)) => act.fail(e, ctx),
            Err(_) => act.fail(
                DhtError::BootstrapTimeout {
                    timeout: BOOTSTRAP_TIMEOUT,
                },
                ctx,
            ),
        }));
    }

    /// The socket is up: topics start now, without waiting for the
    /// routing table (mainline asks the bootstrap nodes while it is empty).
    fn on_socket_up(&mut self, ctx: &mut Context<Self>) {
        self.socket_up = Some(Instant::now());
        self.refresh_info(ctx);
        ctx.run_interval(INFO_REFRESH_EVERY, |act, ctx| act.refresh_info(ctx));
        let names: Vec<String> = self.topics.keys().cloned().collect();
        for name in names {
            self.start_topic(&name, ctx);
        }
    }

    fn on_bootstrapped(&mut self, ctx: &mut Context<Self>) {
        let local = self.info.map(|i| i.local_addr.to_string());
        if self.down_logged {
            tracing::info!(failures = self.failures, local = ?local, "DHT discovery recovered");
        } else {
            tracing::info!(local = ?local, "DHT bootstrapped");
        }
        self.down_logged = false;
        self.failures = 0;
        self.up_since = Some(Instant::now());
        ctx.run_interval(HEALTH_CHECK_EVERY, |act, ctx| act.health_check(ctx));
    }

    /// Records the failure, logs an outage once, and stops: the
    /// supervisor's restart (after backoff) is the retry. Always called
    /// from a future or timer, never directly in `started()`.
    fn fail(&mut self, error: DhtError, ctx: &mut Context<Self>) {
        if self.failing {
            return;
        }
        self.failing = true;
        self.failures = self.failures.saturating_add(1);
        if self.down_logged {
            tracing::debug!(error = %error, failures = self.failures, "DHT still down");
        } else {
            tracing::warn!(error = %error, "DHT discovery is down; retrying with backoff");
            self.down_logged = true;
        }
        self.last_error = Some(error);
        ctx.stop();
    }

    fn refresh_info(&mut self, ctx: &mut Context<Self>) {
        let Some(dht) = self.dht.clone() else { return };
        ctx.spawn(
            guarded(async move { fetch_info(&dht).await })
                .into_actor(self)
                .map(|res, act, ctx| match res {
                    Ok(info) => act.info = Some(info),
                    Err(e) => act.fail(e, ctx),
                }),
        );
    }

    /// Asks the DHT for the nodes closest to us; none answering means it is lost.
    fn health_check(&mut self, ctx: &mut Context<Self>) {
        let (Some(dht), Some(info)) = (self.dht.clone(), self.info) else {
            return;
        };
        let fut = tokio::time::timeout(
            BOOTSTRAP_TIMEOUT,
            guarded(async move { dht.find_node(info.id).await.len() }),
        );
        ctx.spawn(fut.into_actor(self).map(|res, act, ctx| match res {
            Ok(Ok(0)) | Err(_) => act.fail(DhtError::Lost, ctx),
            Ok(Ok(n)) => tracing::trace!(nodes = n, "DHT healthy"),
            Ok(Err(e)) => act.fail(e, ctx),
        }));
    }

    /// Arms a topic's timers: a lookup at once, and an announce at once if
    /// it has a port.
    fn start_topic(&mut self, name: &str, ctx: &mut Context<Self>) {
        let generation = self.generation();
        let lookup_max = self.settings.lookup_max;
        let Some(t) = self.topics.get_mut(name) else {
            return;
        };
        t.generation = generation;
        t.schedule = LookupSchedule::for_state(t.searching, lookup_max);
        t.lookup_running = false;
        let delay = t.schedule.next_delay();
        let announces = t.port.is_some();
        self.schedule_lookup(name, delay, ctx);
        if announces {
            self.schedule_announce(name, Duration::ZERO, ctx);
        }
    }

    fn schedule_lookup(&mut self, name: &str, delay: Duration, ctx: &mut Context<Self>) {
        let Some(t) = self.topics.get_mut(name) else {
            return;
        };
        if let Some(h) = t.lookup_timer.take() {
            ctx.cancel_future(h);
        }
        let (topic, generation) = (name.to_string(), t.generation);
        let handle = ctx.run_later(delay, move |act, ctx| act.lookup(&topic, generation, ctx));
        if let Some(t) = self.topics.get_mut(name) {
            t.lookup_timer = Some(handle);
        }
    }

    fn schedule_announce(&mut self, name: &str, delay: Duration, ctx: &mut Context<Self>) {
        let Some(t) = self.topics.get_mut(name) else {
            return;
        };
        if let Some(h) = t.announce_timer.take() {
            ctx.cancel_future(h);
        }
        let (topic, generation) = (name.to_string(), t.generation);
        let handle = ctx.run_later(delay, move |act, ctx| act.announce(&topic, generation, ctx));
        if let Some(t) = self.topics.get_mut(name) {
            t.announce_timer = Some(handle);
        }
    }

    /// One `get_peers` lookup; every batch of new endpoints goes to the
    /// recipient as it arrives, then the next lookup is scheduled.
    fn lookup(&mut self, name: &str, generation: u64, ctx: &mut Context<Self>) {
        let dht = self.dht.clone();
        let Some(t) = self.live_topic(name, generation) else {
            return;
        };
        let Some(dht) = dht else { return };
        if t.lookup_running {
            return;
        }
        t.lookup_running = true;
        t.lookup_timer = None;
        let info_hash = t.info_hash;
        let found = self.found.clone();
        let topic = name.to_string();
        let started = Instant::now();
        let fut = guarded(async move {
            let mut seen = HashSet::new();
            let mut stream = dht.get_peers(info_hash);
            let deadline = tokio::time::Instant::now() + LOOKUP_TIMEOUT;
            while let Ok(Some(batch)) = tokio::time::timeout_at(deadline, stream.next()).await {
                let endpoints = new_endpoints(&mut seen, &batch);
                if endpoints.is_empty() {
                    continue;
                }
                let msg = EndpointsFound {
                    topic: topic.clone(),
                    endpoints,
                    via: FoundVia::Dht,
                };
                if let Err(e) = found.send(msg).await {
                    tracing::debug!(topic = %topic, error = %e, "nobody took the endpoints found");
                }
            }
            seen.len()
        });
        let topic = name.to_string();
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            act.metrics.dht_lookup_duration.observe(started.elapsed());
            let count = match res {
                Ok(n) => n,
                Err(e) => {
                    act.metrics.dht_lookups.inc(LookupResult::Error);
                    return act.fail(e, ctx);
                }
            };
            act.metrics.dht_lookups.inc(if count > 0 {
                LookupResult::Found
            } else {
                LookupResult::Empty
            });
            let Some(t) = act.live_topic(&topic, generation) else {
                return;
            };
            t.lookup_running = false;
            t.lookups += 1;
            t.last_lookup_endpoints = count;
            let delay = t.schedule.next_delay();
            tracing::debug!(
                topic = %topic,
                endpoints = count,
                took_ms = started.elapsed().as_millis() as u64,
                next_in_ms = delay.as_millis() as u64,
                "DHT lookup done"
            );
            act.schedule_lookup(&topic, delay, ctx);
        }));
    }

    /// Announces the topic's port if the DHT reports us reachable; waits
    /// while that is undecided; skips the round otherwise.
    fn announce(&mut self, name: &str, generation: u64, ctx: &mut Context<Self>) {
        let dht = self.dht.clone();
        let up_for = self.socket_up.map(|t| t.elapsed()).unwrap_or_default();
        let Some(t) = self.live_topic(name, generation) else {
            return;
        };
        let (Some(dht), Some(port)) = (dht, t.port) else {
            return;
        };
        t.announce_timer = None;
        let info_hash = t.info_hash;
        let topic = name.to_string();
        let fut = guarded(async move {
            let info = fetch_info(&dht).await;
            let decision = announce_decision(info.reachability(), up_for, REACHABILITY_GRACE);
            let started = Instant::now();
            let outcome = if decision == AnnounceDecision::Announce {
                let put = dht.announce_peer(info_hash, Some(port));
                Some(tokio::time::timeout(ANNOUNCE_TIMEOUT, put).await)
            } else {
                None
            };
            (info, decision, outcome, started.elapsed())
        });
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            let (info, decision, outcome, took) = match res {
                Ok(r) => r,
                Err(e) => {
                    act.metrics.dht_announces.inc(AnnounceResult::Failed);
                    return act.fail(e, ctx);
                }
            };
            if decision == AnnounceDecision::Announce {
                act.metrics.dht_announce_duration.observe(took);
            }
            act.info = Some(info);
            let every = act.settings.announce_every;
            let next = match (decision, outcome) {
                (AnnounceDecision::WaitForReachability, _) => REACHABILITY_POLL,
                (AnnounceDecision::Skip, _) => {
                    act.metrics.dht_announces.inc(AnnounceResult::Skipped);
                    if !act.unreachable_logged {
                        tracing::warn!(
                            topic = %topic,
                            public = ?info.public_address,
                            "the DHT reports this node unreachable from outside: looking up without announcing"
                        );
                        act.unreachable_logged = true;
                    }
                    every
                }
                (AnnounceDecision::Announce, Some(Ok(Ok(_)))) => {
                    act.metrics.dht_announces.inc(AnnounceResult::Announced);
                    if act.unreachable_logged {
                        tracing::info!(topic = %topic, "the DHT reports this node reachable again: announcing");
                        act.unreachable_logged = false;
                    }
                    if let Some(t) = act.live_topic(&topic, generation) {
                        if !t.announced {
                            tracing::info!(topic = %topic, port, "announced on the DHT");
                        }
                        t.announced = true;
                    }
                    every
                }
                (AnnounceDecision::Announce, failed) => {
                    act.metrics.dht_announces.inc(AnnounceResult::Failed);
                    let reason = match failed {
                        Some(Ok(Err(e))) => e.to_string(),
                        _ => format!("no answer within {ANNOUNCE_TIMEOUT:?}"),
                    };
                    tracing::info!(topic = %topic, port, error = %reason, "DHT announce failed; will retry");
                    act.last_error = Some(DhtError::Announce {
                        topic: topic.clone(),
                        reason,
                    });
                    ANNOUNCE_RETRY.min(every)
                }
            };
            if act.live_topic(&topic, generation).is_some() {
                act.schedule_announce(&topic, next, ctx);
            }
        }));
    }

    fn status(&self) -> DhtStatus {
        let mut topics: Vec<TopicStatus> = self
            .topics
            .iter()
            .map(|(name, t)| TopicStatus {
                topic: name.clone(),
                port: t.port,
                announced: t.announced,
                searching: t.searching,
                lookups: t.lookups,
                last_lookup_endpoints: t.last_lookup_endpoints,
            })
            .collect();
        topics.sort_by(|a, b| a.topic.cmp(&b.topic));
        DhtStatus {
            bootstrapped: self.up_since.is_some(),
            local_addr: self.info.map(|i| i.local_addr),
            public_address: self.info.and_then(|i| i.public_address),
            reachability: self
                .info
                .map(|i| i.reachability())
                .unwrap_or(Reachability::Unknown),
            topics,
            failures: self.failures,
            last_error: self.last_error.clone(),
        }
    }
}

impl Actor for DhtChannel {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let delay = backoff_delay(
            self.failures,
            self.settings.retry_initial,
            self.settings.retry_max,
            rand::thread_rng().gen(),
        );
        if !delay.is_zero() {
            tracing::debug!(
                delay_ms = delay.as_millis() as u64,
                failures = self.failures,
                "rebuilding the DHT after backoff"
            );
        }
        ctx.run_later(delay, |act, ctx| act.connect(ctx));
    }
}

impl Supervised for DhtChannel {
    fn restarting(&mut self, _: &mut Self::Context) {
        // Dropping the handle ends mainline's thread and frees its socket.
        self.dht = None;
        self.failing = false;
        self.socket_up = None;
        self.up_since = None;
        self.info = None;
        for t in self.topics.values_mut() {
            t.lookup_timer = None;
            t.announce_timer = None;
            t.lookup_running = false;
        }
    }
}

impl Handler<JoinTopic> for DhtChannel {
    type Result = ();

    fn handle(&mut self, msg: JoinTopic, ctx: &mut Self::Context) {
        let up = self.socket_up.is_some();
        if let Some(t) = self.topics.get_mut(&msg.topic) {
            if t.port == msg.port {
                return;
            }
            t.port = msg.port;
            t.announced = false;
            tracing::info!(topic = %msg.topic, port = ?msg.port, "DHT topic port changed");
            if up {
                if msg.port.is_some() {
                    self.schedule_announce(&msg.topic, Duration::ZERO, ctx);
                } else if let Some(h) = t.announce_timer.take() {
                    ctx.cancel_future(h);
                }
            }
            return;
        }
        tracing::info!(topic = %msg.topic, port = ?msg.port, "joining DHT topic");
        self.topics.insert(
            msg.topic.clone(),
            Topic {
                info_hash: Id::from(topic_info_hash(&msg.topic)),
                port: msg.port,
                generation: 0,
                schedule: LookupSchedule::searching(),
                searching: true,
                lookup_timer: None,
                announce_timer: None,
                lookup_running: false,
                announced: false,
                lookups: 0,
                last_lookup_endpoints: 0,
            },
        );
        if up {
            self.start_topic(&msg.topic, ctx);
        }
    }
}

impl Handler<LeaveTopic> for DhtChannel {
    type Result = ();

    fn handle(&mut self, msg: LeaveTopic, ctx: &mut Self::Context) {
        if let Some(t) = self.topics.remove(&msg.topic) {
            for h in [t.lookup_timer, t.announce_timer].into_iter().flatten() {
                ctx.cancel_future(h);
            }
            tracing::info!(topic = %msg.topic, "left DHT topic");
        }
    }
}

impl Handler<LookupNow> for DhtChannel {
    type Result = ();

    fn handle(&mut self, msg: LookupNow, ctx: &mut Self::Context) {
        let up = self.socket_up.is_some();
        let Some(t) = self.topics.get_mut(&msg.topic) else {
            return;
        };
        t.schedule.reset();
        // A running lookup counts as "now"; the next one comes after the
        // short first delay.
        if up && !t.lookup_running {
            self.schedule_lookup(&msg.topic, Duration::ZERO, ctx);
        }
    }
}

impl Handler<SetSearching> for DhtChannel {
    type Result = ();

    fn handle(&mut self, msg: SetSearching, ctx: &mut Self::Context) {
        let up = self.socket_up.is_some();
        let lookup_max = self.settings.lookup_max;
        let Some(t) = self.topics.get_mut(&msg.topic) else {
            return;
        };
        if t.searching == msg.searching {
            return;
        }
        tracing::debug!(topic = %msg.topic, searching = msg.searching, "DHT lookup pace changed");
        t.searching = msg.searching;
        t.schedule = LookupSchedule::for_state(msg.searching, lookup_max);
        // A running lookup takes the new schedule when it ends; otherwise
        // the pending timer is replaced (searching: a lookup at once).
        if up && !t.lookup_running {
            let delay = t.schedule.next_delay();
            self.schedule_lookup(&msg.topic, delay, ctx);
        }
    }
}

impl Handler<GetDhtStatus> for DhtChannel {
    type Result = MessageResult<GetDhtStatus>;

    fn handle(&mut self, _: GetDhtStatus, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.status())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_node_refuses_ipv6() {
        let addr: SocketAddr = "[::1]:0".parse().unwrap();
        assert!(matches!(
            bootstrap_node(addr),
            Err(DhtError::NotIpv4 { .. })
        ));
    }

    #[test]
    fn bootstrap_that_resolves_to_nothing_is_an_error() {
        let err = resolve_bootstrap(&["not a host name".into()]).unwrap_err();
        assert!(matches!(err, DhtError::NoBootstrapResolved { .. }));
        let ok = resolve_bootstrap(&["127.0.0.1:7000".into(), "127.0.0.1:7000".into()]).unwrap();
        assert_eq!(ok, vec!["127.0.0.1:7000".parse().unwrap()], "deduplicated");
    }

    #[test]
    fn default_settings_use_the_documented_constants() {
        let s = DhtSettings::default();
        assert!(s.bootstrap.is_empty(), "empty = public bootstrap");
        assert_eq!(s.lookup_max, LOOKUP_MAX);
        assert_eq!(s.announce_every, ANNOUNCE_EVERY);
    }
}

//! `ClientCore`: the client's protocol state. One per `Client`; the
//! `Client` handles (and a `DhtChannel`, when the DHT is used) hold its
//! `Addr`.
//!
//! Owns this instance's peer key (its `clientId` on the wire, fresh per
//! `Client`, apart from the key that signs records), the `ServerBook`
//! (servers known, backoff, bad identities), the
//! connections (`ServerConnection`, one per server identity), the requests
//! in flight keyed by their wire ids, and the subscriptions.
//! Receives from the `Client`: `WaitConnected`, `Publish`, `Request`,
//! `Subscribe`, `GetBadServers`, `GetConnectedServers`, `Shutdown`; from
//! its connections: `ServerIdentified`, `ServerFrame`, `ServerClosed`; from
//! any discovery source: `EndpointsFound`.
//!
//! Every record a server sends is verified (`Record::verify`; for an
//! answer, also that it is of the key asked). A server that sends a record
//! failing its hash or signature is marked bad: reported by
//! `GetBadServers`, logged, disconnected and never dialed again. It keeps
//! `connections` servers connected, dialing what the book picks (on every
//! change and on a short tick, so backed-off endpoints come back).
//! `Shutdown` stops it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::{mpsc, oneshot};

use crate::actors::dht_channel::DhtChannel;
use crate::actors::lan::LanChannel;
use crate::actors::tracker_channel::TrackerChannel;
use crate::client::book::{Backoff, Endpoint, Identified, ServerBook, Source};
use crate::client::connection::ServerConnection;
use crate::client::messages::{
    BadServer, CloseServer, GetBadServers, GetConnectedServers, Publish, Request, RequestKind,
    RequestOutcome, SendText, ServerClosed, ServerFrame, ServerIdentified, Shutdown, Subscribe,
    WaitConnected,
};
use crate::crypto::NodeKey;
use crate::messages::dht::{EndpointsFound, FoundVia, SetSearching};
use crate::messages::hub::{next_conn_id, ConnId};
use crate::messages::tracker::ServersOffered;
use crate::messages::wire::{new_message_id, FunctionCall, KeyRequest, PutData, WireMessage};
use crate::peer::Peer;
use crate::record::{now_ms, wins, Record, RecordError};

/// How often the core checks whether a backed-off server may be redialed.
const FILL_EVERY: Duration = Duration::from_millis(100);

/// Most servers learned from one pong.
const MAX_LISTED_PER_PONG: usize = 64;

/// What the core is configured with.
#[derive(Debug, Clone)]
pub struct CoreSettings {
    pub topic: String,
    /// Servers kept connected.
    pub connections: usize,
    /// Proof of work required of records (leading zeros of `h`).
    pub pow: u32,
    pub backoff: Backoff,
    pub handshake_timeout: Duration,
}

struct Connected {
    handle: Addr<ServerConnection>,
    peer: Peer,
    endpoint: Endpoint,
}

struct Pending {
    kind: RequestKind,
    waiting: HashSet<ConnId>,
    outcome: RequestOutcome,
    keys: BTreeSet<String>,
    reply: oneshot::Sender<RequestOutcome>,
}

#[derive(Default)]
struct SubState {
    updates: Vec<mpsc::Sender<Record>>,
    latest: Option<Record>,
}

pub struct ClientCore {
    settings: CoreSettings,
    /// Our peer identity: signs our pings, names us in `to` lists. Never
    /// the user's record-signing key, so two instances of one user (two
    /// devices, or `watch` beside `put`) are two peers to the servers.
    peer_key: Arc<NodeKey>,
    book: ServerBook,
    handles: HashMap<ConnId, Addr<ServerConnection>>,
    connected: HashMap<ConnId, Connected>,
    requests: HashMap<u64, Pending>,
    /// Wire id of a request frame → (request, the server it went to).
    wire_ids: HashMap<String, (u64, ConnId)>,
    next_request: u64,
    subs: HashMap<String, SubState>,
    waiters: Vec<oneshot::Sender<()>>,
    bad: Vec<BadServer>,
    /// Kept so the DHT channel's supervisor keeps it running.
    dht: Option<Addr<DhtChannel>>,
    /// Kept so the LAN channel's supervisor keeps it running.
    lan: Option<Addr<LanChannel>>,
    /// Kept so the tracker channels' supervisors keep them running.
    trackers: Vec<Addr<TrackerChannel>>,
    /// The Hyperswarm engine, when on (dropped: it leaves the topic).
    hyperswarm: Option<crate::hyperswarm::Engine>,
    /// Connections that came over Hyperswarm (not dialed from the book).
    links: HashSet<ConnId>,
    stopping: bool,
}

/// A Hyperswarm connection to speak to as a server.
#[derive(Message)]
#[rtype(result = "()")]
pub struct HyperswarmLinked(pub crate::hyperswarm::Link);

impl ClientCore {
    /// `peer_key` is this instance's peer identity (see the field).
    pub fn new(
        settings: CoreSettings,
        peer_key: Arc<NodeKey>,
        static_peers: Vec<Endpoint>,
    ) -> Self {
        let mut book = ServerBook::default();
        for ep in static_peers {
            book.add(ep, Source::Static, None);
        }
        ClientCore {
            settings,
            peer_key,
            book,
            handles: HashMap::new(),
            connected: HashMap::new(),
            requests: HashMap::new(),
            wire_ids: HashMap::new(),
            next_request: 1,
            subs: HashMap::new(),
            waiters: Vec::new(),
            bad: Vec::new(),
            dht: None,
            lan: None,
            trackers: Vec::new(),
            hyperswarm: None,
            links: HashSet::new(),
            stopping: false,
        }
    }

    /// Keeps `dht` alive for as long as the core runs.
    pub fn with_dht(mut self, dht: Addr<DhtChannel>) -> Self {
        self.dht = Some(dht);
        self
    }

    /// Keeps the Hyperswarm engine for as long as the core runs.
    pub fn with_hyperswarm(mut self, engine: crate::hyperswarm::Engine) -> Self {
        self.hyperswarm = Some(engine);
        self
    }

    /// Keeps `lan` alive for as long as the core runs.
    pub fn with_lan(mut self, lan: Addr<LanChannel>) -> Self {
        self.lan = Some(lan);
        self
    }

    /// Keeps a tracker channel alive for as long as the core runs.
    pub fn with_tracker(mut self, tracker: Addr<TrackerChannel>) -> Self {
        self.trackers.push(tracker);
        self
    }

    /// Tells the DHT channel whether we have no server (look up often; at
    /// once when this turns on) or some (back off).
    fn set_searching(&self, searching: bool) {
        if let Some(dht) = &self.dht {
            dht.do_send(SetSearching {
                topic: self.settings.topic.clone(),
                searching,
            });
        }
    }

    fn own_to(&self) -> Vec<String> {
        vec![self.peer_key.client_id().to_owned()]
    }

    fn fill(&mut self, ctx: &mut Context<Self>) {
        if self.stopping {
            return;
        }
        for ep in self.book.pick(Instant::now(), self.settings.connections) {
            let conn = next_conn_id();
            self.book.dialing(&ep, conn);
            tracing::debug!(server = %ep, "dialing");
            let handle = ServerConnection::new(
                conn,
                ep,
                ctx.address(),
                self.peer_key.clone(),
                self.settings.topic.clone(),
                self.settings.handshake_timeout,
            )
            .start();
            self.handles.insert(conn, handle);
        }
    }

    fn send_to(&self, conn: ConnId, msg: &WireMessage) {
        if let Some(c) = self.connected.get(&conn) {
            c.handle.do_send(SendText {
                text: msg.to_text(),
            });
        }
    }

    /// Subscribes `key` on one server, and asks for its current record so
    /// a gap left while we were away is filled (the answer, like a push,
    /// reaches the subscription).
    fn subscribe_on(&self, conn: ConnId, key: &str) {
        let to = self.own_to();
        for msg in [
            WireMessage::Subscribe(KeyRequest {
                id: new_message_id(),
                to: to.clone(),
                key: key.to_owned(),
            }),
            WireMessage::Get(KeyRequest {
                id: new_message_id(),
                to: to.clone(),
                key: key.to_owned(),
            }),
        ] {
            self.send_to(conn, &msg);
        }
    }

    /// Marks the server behind `conn` bad for sending `record_key` that
    /// failed with `reason`, and disconnects it.
    fn forged(&mut self, conn: ConnId, record_key: &str, reason: String) {
        let Some(c) = self.connected.get(&conn) else {
            return;
        };
        let address = c.peer.address.clone();
        tracing::warn!(server = %c.endpoint, address = %address, key = %record_key, reason = %reason, "server sent a forged record; marking it bad");
        c.handle.do_send(CloseServer {
            reason: "sent a record that fails verification".into(),
        });
        if !self.book.is_bad(&address) {
            self.book.mark_bad(&address);
            self.bad.push(BadServer {
                address,
                endpoint: c.endpoint.to_string(),
                key: record_key.to_owned(),
                reason,
            });
        }
    }

    /// Verifies a record a server sent. `Ok(true)`: verified; `Ok(false)`:
    /// dropped but not proof of forgery (a clock or proof-of-work
    /// difference); `Err`: forged.
    fn check(&self, record: &Record, expected_key: Option<&str>) -> Result<bool, String> {
        if let Some(k) = expected_key.filter(|k| *k != record.key) {
            return Err(format!("answered {k:?} with a record of {:?}", record.key));
        }
        // CRDT records are checked by signature only: servers replace `v`
        // with the merged change set, so the hash cannot match (also under
        // proof of work).
        let pow = if record.crdt.is_some() {
            0
        } else {
            self.settings.pow
        };
        match record.verify(now_ms(), pow) {
            Ok(()) => Ok(true),
            Err(e @ (RecordError::InvalidTimestamp { .. } | RecordError::NoProofOfWork { .. })) => {
                tracing::info!(key = %record.key, error = %e, "dropped a record");
                Ok(false)
            }
            Err(e) => Err(e.to_string()),
        }
    }

    fn on_record(&mut self, conn: ConnId, id: &str, record: Record, crdt_frame: bool) {
        let pending = self.wire_ids.get(id).copied().filter(|(req, _)| {
            matches!(
                (self.requests.get(req).map(|p| &p.kind), crdt_frame),
                (Some(RequestKind::Get { .. }), false) | (Some(RequestKind::CrdtGet { .. }), true)
            )
        });
        let expected = pending.and_then(|(req, _)| match &self.requests[&req].kind {
            RequestKind::Get { key } | RequestKind::CrdtGet { key } => Some(key.clone()),
            _ => None,
        });
        if pending.is_none() && (crdt_frame || !self.subs.contains_key(&record.key)) {
            tracing::debug!(key = %record.key, "ignored a record nobody asked for");
            return;
        }
        let verified = match self.check(&record, expected.as_deref()) {
            Ok(v) => v,
            Err(reason) => {
                self.forged(conn, &record.key, reason);
                false
            }
        };
        if verified && !crdt_frame && record.crdt.is_none() {
            self.deliver(&record);
        }
        if let Some((req, asked)) = pending {
            self.wire_ids.remove(id);
            if verified {
                if let Some(p) = self.requests.get_mut(&req) {
                    p.outcome.records.push(record);
                }
            }
            self.answered(req, asked);
        }
    }

    /// Sends `record` to the key's subscribers if it wins over the last
    /// one sent (so the same record never goes twice, whichever server
    /// pushed it).
    fn deliver(&mut self, record: &Record) {
        let Some(sub) = self.subs.get_mut(&record.key) else {
            return;
        };
        if sub
            .latest
            .as_ref()
            .is_some_and(|l| !wins(&record.meta(), &l.meta()))
        {
            return;
        }
        sub.latest = Some(record.clone());
        sub.updates.retain(|tx| match tx.try_send(record.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(key = %record.key, "a subscriber is not reading; dropped an update for it");
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        if sub.updates.is_empty() {
            self.subs.remove(&record.key);
        }
    }

    fn answered(&mut self, req: u64, conn: ConnId) {
        let done = self.requests.get_mut(&req).is_some_and(|p| {
            p.waiting.remove(&conn);
            p.waiting.is_empty()
        });
        if done {
            self.finish(req);
        }
    }

    fn finish(&mut self, req: u64) {
        let Some(p) = self.requests.remove(&req) else {
            return;
        };
        self.wire_ids.retain(|_, (r, _)| *r != req);
        let mut outcome = p.outcome;
        outcome.keys = p.keys.into_iter().collect();
        let _ = p.reply.send(outcome);
    }

    fn request_frame(&self, kind: &RequestKind, id: String) -> WireMessage {
        let to = self.own_to();
        match kind {
            RequestKind::Get { key } => WireMessage::Get(KeyRequest {
                id,
                to,
                key: key.clone(),
            }),
            RequestKind::CrdtGet { key } => WireMessage::CrdtGet(KeyRequest {
                id,
                to,
                key: key.clone(),
            }),
            RequestKind::Query { prefix } => WireMessage::Query(KeyRequest {
                id,
                to,
                key: prefix.clone(),
            }),
            RequestKind::Function { name, args } => WireMessage::Function(FunctionCall {
                id,
                to,
                function: name.clone(),
                args: args.clone(),
            }),
        }
    }
}

impl Actor for ClientCore {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.fill(ctx);
        ctx.run_interval(FILL_EVERY, |act, ctx| act.fill(ctx));
    }
}

impl Handler<ServerIdentified> for ClientCore {
    type Result = ();
    fn handle(&mut self, msg: ServerIdentified, ctx: &mut Self::Context) {
        let ServerIdentified {
            conn,
            handle,
            peer,
            servers,
        } = msg;
        let verdict = if self.links.contains(&conn) {
            self.book.identified_unlisted(conn, &peer.address)
        } else {
            self.book.identified(conn, &peer.address)
        };
        if verdict == Identified::Bad {
            handle.do_send(CloseServer {
                reason: "this server sent forged records".into(),
            });
            return;
        }
        for p in servers.iter().take(MAX_LISTED_PER_PONG) {
            if self.book.add(
                Endpoint::new(p.host.clone(), p.port),
                Source::Listed,
                Some(p.address.clone()),
            ) {
                tracing::debug!(address = %p.address, host = %p.host, port = p.port, "learned of a server");
            }
        }
        if let Identified::Duplicate { .. } = verdict {
            tracing::debug!(address = %peer.address, "already connected to this server; closing the second connection");
            handle.do_send(CloseServer {
                reason: "already connected to this server".into(),
            });
            return;
        }
        let endpoint = self
            .book
            .endpoint_of(conn)
            .cloned()
            .unwrap_or_else(|| Endpoint::new(peer.host.clone(), peer.port));
        tracing::info!(server = %endpoint, address = %peer.address, "connected to server");
        self.connected.insert(
            conn,
            Connected {
                handle,
                peer,
                endpoint,
            },
        );
        if self.connected.len() == 1 {
            self.set_searching(false);
        }
        for w in self.waiters.drain(..) {
            let _ = w.send(());
        }
        let keys: Vec<String> = self.subs.keys().cloned().collect();
        for key in keys {
            self.subscribe_on(conn, &key);
        }
        self.fill(ctx);
    }
}

impl Handler<ServerClosed> for ClientCore {
    type Result = ();
    fn handle(&mut self, msg: ServerClosed, ctx: &mut Self::Context) {
        let conn = msg.conn;
        self.handles.remove(&conn);
        self.links.remove(&conn);
        let was = self.connected.remove(&conn);
        let bad = was
            .as_ref()
            .is_some_and(|c| self.book.is_bad(&c.peer.address));
        if let Some(c) = &was {
            tracing::info!(server = %c.endpoint, address = %c.peer.address, "disconnected from server");
        }
        self.book.closed(
            conn,
            !msg.identified || bad,
            Instant::now(),
            self.settings.backoff,
        );
        let reqs: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, p)| p.waiting.contains(&conn))
            .map(|(r, _)| *r)
            .collect();
        for req in reqs {
            self.answered(req, conn);
        }
        if self.connected.is_empty() {
            self.set_searching(true);
        }
        self.fill(ctx);
    }
}

impl Handler<ServerFrame> for ClientCore {
    type Result = ();
    fn handle(&mut self, msg: ServerFrame, _: &mut Self::Context) {
        let conn = msg.conn;
        if !self.connected.contains_key(&conn) {
            return;
        }
        match msg.msg {
            // A server of ours has no record of the key: it has answered.
            WireMessage::Missing(m) => {
                if let Some((req, asked)) = self.wire_ids.remove(&m.id) {
                    if asked == conn {
                        self.answered(req, asked);
                    } else {
                        self.wire_ids.insert(m.id, (req, asked));
                    }
                }
            }
            WireMessage::Put(p) => self.on_record(conn, &p.id, p.data, false),
            WireMessage::CrdtPut(p) => self.on_record(conn, &p.id, p.data, true),
            WireMessage::QueryAck(a) => {
                if let Some((req, asked)) = self.wire_ids.remove(&a.id) {
                    if let Some(p) = self.requests.get_mut(&req) {
                        p.keys.extend(a.keys);
                    }
                    self.answered(req, asked);
                }
            }
            WireMessage::FunctionReturn(f) => {
                if let Some((req, asked)) = self.wire_ids.remove(&f.id) {
                    if let Some(p) = self.requests.get_mut(&req) {
                        p.outcome.function = Some((f.code, f.value));
                    }
                    self.answered(req, asked);
                }
            }
            // We keep no store: requests relayed to us have no answer here.
            other => tracing::debug!(kind = other.kind(), "ignored a server request"),
        }
    }
}

impl Handler<EndpointsFound> for ClientCore {
    type Result = ();
    fn handle(&mut self, msg: EndpointsFound, ctx: &mut Self::Context) {
        if msg.topic != self.settings.topic {
            return;
        }
        let source = match msg.via {
            FoundVia::Dht => Source::Dht,
            FoundVia::Lan => Source::Lan,
        };
        for ep in msg.endpoints {
            if self
                .book
                .add(Endpoint::new(ep.ip().to_string(), ep.port()), source, None)
            {
                tracing::debug!(endpoint = %ep, "found a server endpoint");
            }
        }
        self.fill(ctx);
    }
}

impl Handler<ServersOffered> for ClientCore {
    type Result = ();
    fn handle(&mut self, msg: ServersOffered, ctx: &mut Self::Context) {
        for ep in msg.endpoints {
            if self.book.add(ep.clone(), Source::Tracker, None) {
                tracing::debug!(endpoint = %ep, tracker = %msg.tracker, "a tracker offered a server");
            }
        }
        self.fill(ctx);
    }
}

impl Handler<WaitConnected> for ClientCore {
    type Result = ();
    fn handle(&mut self, msg: WaitConnected, _: &mut Self::Context) {
        if self.connected.is_empty() {
            self.waiters.retain(|w| !w.is_closed());
            self.waiters.push(msg.reply);
        } else {
            let _ = msg.reply.send(());
        }
    }
}

impl Handler<Publish> for ClientCore {
    type Result = usize;
    fn handle(&mut self, msg: Publish, _: &mut Self::Context) -> usize {
        let data = PutData {
            id: new_message_id(),
            to: self.own_to(),
            data: msg.record,
        };
        // One id for every server: servers relay to each other and drop
        // what they have processed, so it is handled once per server.
        let frame = if data.data.crdt.is_some() {
            WireMessage::CrdtPut(data)
        } else {
            WireMessage::Put(data)
        };
        for conn in self.connected.keys() {
            self.send_to(*conn, &frame);
        }
        self.connected.len()
    }
}

impl Handler<Request> for ClientCore {
    type Result = ();
    fn handle(&mut self, msg: Request, ctx: &mut Self::Context) {
        let mut targets: Vec<ConnId> = self.connected.keys().copied().collect();
        targets.sort_unstable();
        if matches!(msg.kind, RequestKind::Function { .. }) {
            targets.truncate(1);
        }
        let req = self.next_request;
        self.next_request += 1;
        for conn in &targets {
            let id = new_message_id();
            self.wire_ids.insert(id.clone(), (req, *conn));
            let frame = self.request_frame(&msg.kind, id);
            self.send_to(*conn, &frame);
        }
        self.requests.insert(
            req,
            Pending {
                kind: msg.kind,
                waiting: targets.iter().copied().collect(),
                outcome: RequestOutcome {
                    asked: targets.len(),
                    ..Default::default()
                },
                keys: BTreeSet::new(),
                reply: msg.reply,
            },
        );
        if targets.is_empty() {
            self.finish(req);
        } else {
            ctx.run_later(msg.timeout, move |act, _| act.finish(req));
        }
    }
}

impl Handler<Subscribe> for ClientCore {
    type Result = ();
    fn handle(&mut self, msg: Subscribe, _: &mut Self::Context) {
        let sub = self.subs.entry(msg.key.clone()).or_default();
        if let Some(latest) = &sub.latest {
            let _ = msg.updates.try_send(latest.clone());
        }
        sub.updates.push(msg.updates);
        let conns: Vec<ConnId> = self.connected.keys().copied().collect();
        for conn in conns {
            self.subscribe_on(conn, &msg.key);
        }
    }
}

impl Handler<GetBadServers> for ClientCore {
    type Result = Vec<BadServer>;
    fn handle(&mut self, _: GetBadServers, _: &mut Self::Context) -> Vec<BadServer> {
        self.bad.clone()
    }
}

impl Handler<GetConnectedServers> for ClientCore {
    type Result = Vec<Peer>;
    fn handle(&mut self, _: GetConnectedServers, _: &mut Self::Context) -> Vec<Peer> {
        self.connected.values().map(|c| c.peer.clone()).collect()
    }
}

impl Handler<HyperswarmLinked> for ClientCore {
    type Result = ();
    fn handle(&mut self, msg: HyperswarmLinked, ctx: &mut Self::Context) {
        if self.stopping {
            return;
        }
        let conn = next_conn_id();
        let short = &msg.0.remote[..msg.0.remote.len().min(16)];
        // For logs only: a link is not an endpoint the book dials.
        let label = Endpoint::new(format!("hyperswarm:{short}"), 0);
        let handle = ServerConnection::new(
            conn,
            label,
            ctx.address(),
            self.peer_key.clone(),
            self.settings.topic.clone(),
            self.settings.handshake_timeout,
        )
        .over(msg.0)
        .start();
        self.links.insert(conn);
        self.handles.insert(conn, handle);
    }
}

impl Handler<Shutdown> for ClientCore {
    type Result = ();
    fn handle(&mut self, _: Shutdown, ctx: &mut Self::Context) {
        self.stopping = true;
        for h in self.handles.values() {
            h.do_send(CloseServer {
                reason: "client closing".into(),
            });
        }
        // Leaves the topic (on its own thread; bounded by its timeouts).
        self.hyperswarm.take();
        ctx.stop();
    }
}

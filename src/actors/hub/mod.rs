//! `Hub`: the protocol. One per node, on the system arbiter; the server
//! creates it and every connection holds its address.
//!
//! Receives `ConnectionIdentified`, `FrameReceived` (each frame with the
//! credit it took from its connection's window), `ConnectionClosed`,
//! `OutboxDrained`, `GetSelfPeer`, `GetPeers` and the rest in
//! `messages::hub`. Sends frames into each connection's byte-bounded
//! outbox; verification goes to `Crypto` and storage to `Storage` as
//! futures, so no handler waits on slow work. Its concerns, one file each:
//! - `connections`: the index of identified connections;
//! - `subscriptions`: who follows which key, bounded per client;
//! - `relay`: the sent-hash memory and `to` lists;
//! - `pending`: relayed requests waiting to pass an answer back;
//! - `servers`: the verified servers known, bounded, and what a pong lists;
//! - `pipeline`: each connection's puts, verified in parallel but stored,
//!   pushed and relayed in arrival order (pure decisions, tested alone);
//! - `anti_entropy`: reconciliation with servers of ours.
//!
//! Flow control: a frame's credit is given back when its work is done; a
//! client's credit is held back while a server link's output is congested,
//! so a burst slows its sender instead of filling memory or closing links.
//! A client whose pending output passes its limit is closed as a slow
//! consumer.

mod anti_entropy;
mod connections;
mod pending;
pub mod pipeline;
mod relay;
mod servers;
mod subscriptions;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_http::ws::CloseCode;
use bytestring::ByteString;
use serde_json::{json, Value};

use crate::actors::crypto::Crypto;
use crate::actors::storage::Storage;
use crate::bounded::{BoundedSet, ExpiringMap};
use crate::config::Limits;
use crate::durability::Durability;
use crate::flow::{Credit, OutboxError, OutputBudget, Reservation};
use crate::messages::connection::CloseConnection;
use crate::messages::crypto::{SignPeer, VerifyRecord, VerifyServers};
use crate::messages::hub::*;
use crate::messages::registry::{ServerConnected, ServerDisconnected, ServersListed};
use crate::messages::storage::*;
use crate::messages::wire::*;
use crate::metrics::{CloseCause, Metrics, Pause};
use crate::peer::Peer;
use crate::record::{Record, RecordError};

use connections::{Claim, Conn, Connections, Left, ListedBudget};
use pending::{Pending, PendingRequests};
use pipeline::{Batched, Fanout, Pipeline, Step};
use relay::{digest, relay_to, SentMemory};
use servers::KnownServers;
use subscriptions::Subscriptions;

/// Work the hub waited for elsewhere (a pool's answer), handed back to it
/// as a message. Waits are not spawned into the hub's context: actix polls
/// every future of a context on each wake, so thousands of verifications
/// in flight made each wake cost thousands of polls (a fifth of the node's
/// CPU in the versus_js bench). A task of its own is polled only when its
/// answer arrives.
struct Resume(Box<dyn ResumeFn>);

trait ResumeFn: FnOnce(&mut Hub, &mut Context<Hub>) + Send {}
impl<F: FnOnce(&mut Hub, &mut Context<Hub>) + Send> ResumeFn for F {}

impl Message for Resume {
    type Result = ();
}

impl Handler<Resume> for Hub {
    type Result = ();

    fn handle(&mut self, msg: Resume, ctx: &mut Self::Context) {
        (msg.0)(self, ctx)
    }
}

/// Awaits `wait` as its own task, then runs `then` on the hub with its
/// output. If the hub has stopped by then, `then` is dropped (and with it
/// any credit it holds).
fn resume_after<T, W, F>(ctx: &Context<Hub>, wait: W, then: F)
where
    W: std::future::Future<Output = T> + 'static,
    T: Send + 'static,
    F: FnOnce(&mut Hub, T, &mut Context<Hub>) + Send + 'static,
{
    let hub = ctx.address();
    actix::spawn(async move {
        let out = wait.await;
        hub.do_send(Resume(Box::new(move |act, ctx| then(act, out, ctx))));
    });
}

/// How long a peer's pending output may go untaken, while answers wait
/// for room in the node's output budget, before it is closed as a slow
/// consumer. An honest peer on a slow link takes a frame every few seconds
/// at worst; 2 s of nothing is a peer that stopped reading.
const OUTPUT_STALL: Duration = Duration::from_secs(2);
/// How often the output budget is checked for stalled holders.
const RECLAIM_EVERY: Duration = Duration::from_millis(250);

/// How often expired requests and long-gone clients are cleaned up.
const CLEANUP_EVERY: Duration = Duration::from_secs(30);

/// What the hub needs to know about its own node.
#[derive(Debug, Clone)]
pub struct HubSettings {
    pub topic: String,
    pub address: String,
    pub client_id: String,
    pub host: String,
    pub port: u16,
    /// We serve TLS: our record says `ssl`.
    pub ssl: bool,
    pub pow: u32,
    pub limits: Limits,
    pub reconcile_every_secs: u64,
    pub reconcile_max_records: usize,
}

/// Where the hub reports server connections (the `PeerRegistry`).
#[derive(Clone)]
pub struct RegistryLink {
    pub connected: Recipient<ServerConnected>,
    pub disconnected: Recipient<ServerDisconnected>,
    pub listed: Recipient<ServersListed>,
}

/// A server function: gets the hub's view and the call's `args`.
pub type ServerFunction = fn(&Hub, &Value) -> Result<Value, String>;

/// What the hub keeps with each job of a connection's pipeline.
#[derive(Debug)]
struct Job {
    sender: String,
    /// Frames from server links are never held back (two congested servers
    /// holding each other's credit would stop both).
    from_server: bool,
    credit: Credit,
    work: Work,
}

#[derive(Debug)]
enum Work {
    Put {
        id: String,
        to: Vec<String>,
    },
    Get {
        req: KeyRequest,
        crdt: bool,
    },
    Subscribe(KeyRequest),
    Query(KeyRequest),
    /// After the lists of a `crdtLists` answer are stored: answer whoever
    /// waits for `id` with the merged set of `key`.
    AnswerPending {
        id: String,
        key: String,
    },
}

/// Client ids whose newest ping is remembered (against replays), ~100 B each.
const PINGS_REMEMBERED: usize = 100_000;

/// The largest answer a Tool Db client accepts (its websocket library's
/// default frame limit), whatever our own `max_frame_bytes` is.
const QUERY_ANSWER_BYTES: usize = 1 << 20;

/// Scans (queries) the storage pool runs at once, node-wide. A `query ""`
/// walks every key (about 100 ms for 50,000 keys here): an attacker's 300
/// of them filled both storage threads, and an honest get waited behind
/// them for seconds (attack bench, query_all). One lane for scans leaves
/// the other threads to gets and puts.
const SCAN_LANES: usize = 1;

pub struct Hub {
    settings: HubSettings,
    storage: Addr<Storage>,
    crypto: Addr<Crypto>,
    self_peer: Peer,
    conns: Connections,
    subs: Subscriptions,
    /// Digests of (type, id) pairs processed: bounded in bytes whatever
    /// the ids look like.
    processed: BoundedSet<u64>,
    sent: SentMemory,
    pending: PendingRequests,
    servers: KnownServers,
    /// The newest peer-record timestamp seen per client id, for replays.
    pings_seen: ExpiringMap<String, u64>,
    /// Each connection's puts in flight; kept past its close until done,
    /// so a verified write is stored even if its sender left.
    pipelines: HashMap<ConnId, Pipeline<Job>>,
    /// Server links whose output is above its high-water mark.
    congested: HashSet<ConnId>,
    /// Client credit held back while a server link is congested.
    deferred: Vec<Credit>,
    /// Answers to reads pending in all outboxes (`reclaim_output`).
    output: OutputBudget,
    /// Records a reconciliation still owes a server link.
    backlog: HashMap<ConnId, VecDeque<Record>>,
    registry: Option<RegistryLink>,
    /// Awaited before a write or a read is exposed (group commit).
    durability: Durability,
    /// Permits to scan storage (`SCAN_LANES`), taken by each query.
    scan_lane: Arc<tokio::sync::Semaphore>,
    functions: HashMap<&'static str, ServerFunction>,
    me: Option<Addr<Hub>>,
    metrics: Arc<Metrics>,
}

impl Hub {
    pub fn new(
        settings: HubSettings,
        storage: Addr<Storage>,
        crypto: Addr<Crypto>,
        self_peer: Peer,
    ) -> Self {
        let l = &settings.limits;
        let processed = BoundedSet::new(l.processed_ids);
        let sent = SentMemory::new(l.sent_hashes_per_client);
        let pending = PendingRequests::new(Duration::from_millis(l.pending_request_ms));
        let subs = Subscriptions::new(
            l.max_subscriptions_per_client,
            l.max_gone_clients,
            l.max_subscription_bytes,
        );
        let servers = KnownServers::new(l.max_known_servers, l.pong_max_servers);
        let mut functions: HashMap<&'static str, ServerFunction> = HashMap::new();
        functions.insert("peers", fn_peers);
        let output = OutputBudget::new(l.total_output_bytes);
        Hub {
            settings,
            storage,
            crypto,
            self_peer,
            conns: Connections::default(),
            subs,
            processed,
            sent,
            pending,
            servers,
            pings_seen: ExpiringMap::new(PINGS_REMEMBERED),
            pipelines: HashMap::new(),
            congested: HashSet::new(),
            deferred: Vec::new(),
            output,
            backlog: HashMap::new(),
            registry: None,
            durability: Durability::off(),
            scan_lane: Arc::new(tokio::sync::Semaphore::new(SCAN_LANES)),
            functions,
            me: None,
            metrics: Arc::new(Metrics::new()),
        }
    }

    /// Counts into the node's `metrics` (a hub of its own otherwise).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.conns.count_into(metrics.connections.clone());
        self.metrics = metrics;
        self
    }

    /// Waits for `durability` before exposing writes and reads.
    pub fn with_durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Reports server connections to the registry from now on.
    pub fn with_registry(mut self, registry: RegistryLink) -> Self {
        self.registry = Some(registry);
        self
    }

    fn resign(&mut self, ctx: &mut Context<Self>) {
        let req = SignPeer {
            topic: self.settings.topic.clone(),
            host: self.settings.host.clone(),
            port: self.settings.port,
            ssl: self.settings.ssl,
        };
        let crypto = self.crypto.clone();
        ctx.spawn(
            async move { crypto.send(req).await }
                .into_actor(self)
                .map(|res, act, _| {
                    if let Ok(peer) = res {
                        act.self_peer = peer;
                    }
                }),
        );
    }

    /// Queues a frame for `conn`. A client past its output limit is closed
    /// as a slow consumer; a server link past its high-water mark is
    /// marked congested (client intake pauses until it drains).
    fn send_to_conn(&mut self, conn: ConnId, text: ByteString) {
        self.send_held(conn, text, None)
    }

    /// `send_to_conn` of an answer holding room in the output budget.
    fn send_held(&mut self, conn: ConnId, text: ByteString, held: Option<Reservation>) {
        if held.as_ref().is_some_and(|h| h.waited()) {
            self.metrics.backpressure_pauses.inc(Pause::OutputBudget);
        }
        let Some(c) = self.conns.get(conn) else {
            return;
        };
        match c.handle.outbox.push_held(text, held) {
            Ok(()) => {
                if c.is_server && c.handle.outbox.is_congested() {
                    self.watch_drain(conn);
                }
            }
            Err(OutboxError::Closed) => {}
            Err(e @ OutboxError::Full { .. }) => {
                crate::remote_log!(warn, client = %c.client_id, server = c.is_server, error = %e, "closing: slow consumer");
                let reason = e.to_string();
                c.handle.outbox.close(CloseCode::Policy, &reason);
                c.handle
                    .close
                    .do_send(CloseConnection::policy(reason).because(CloseCause::SlowConsumer));
            }
        }
    }

    /// While answers wait for room in the output budget, closes the client
    /// peers holding the most of it whose output has made no progress for
    /// `OUTPUT_STALL` (they do not read), until half the budget is free.
    /// Server links are left to their own limits: closing a busy server
    /// would cut the network, and there are few of them.
    fn reclaim_output(&mut self) {
        if self.output.waiting() == 0 {
            return;
        }
        let mut stalled: Vec<(usize, ConnId)> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.is_server)
            .filter(|(_, c)| c.handle.outbox.stalled_for() >= OUTPUT_STALL)
            .map(|(id, c)| (c.handle.outbox.pending_bytes(), *id))
            .collect();
        stalled.sort_unstable_by(|a, b| b.cmp(a));
        let mut excess = self.output.used().saturating_sub(self.output.limit() / 2);
        let reason = format!(
            "slow consumer: no output taken for {} s while the node's output is full (total_output_bytes {})",
            OUTPUT_STALL.as_secs(),
            self.output.limit()
        );
        for (pending, conn) in stalled {
            if excess == 0 {
                break;
            }
            excess = excess.saturating_sub(pending);
            let Some(c) = self.conns.get(conn) else {
                continue;
            };
            let reason = reason.clone();
            crate::remote_log!(warn, client = %c.client_id, pending, "closing: {reason}");
            c.handle.outbox.close(CloseCode::Policy, &reason);
            c.handle
                .close
                .do_send(CloseConnection::policy(reason).because(CloseCause::SlowConsumer));
        }
    }

    /// Marks a server link congested and asks to hear when it drains.
    fn watch_drain(&mut self, conn: ConnId) {
        let (Some(c), Some(me)) = (self.conns.get(conn), self.me.clone()) else {
            return;
        };
        if c.is_server && self.congested.insert(conn) {
            tracing::debug!(client = %c.client_id, "server link congested: pausing client intake");
        }
        c.handle
            .outbox
            .on_drained(Box::new(move || me.do_send(OutboxDrained { conn })));
    }

    fn send_to_client(&mut self, client: &str, text: ByteString) -> bool {
        match self.conns.of_client(client) {
            Some(conn) => {
                self.send_to_conn(conn, text);
                true
            }
            None => false,
        }
    }

    /// Gives a finished job's credit back, or holds it while a server
    /// link is congested (so the client sending the work waits).
    fn release(&mut self, credit: Credit, from_server: bool) {
        if from_server || self.congested.is_empty() {
            drop(credit);
        } else {
            if self.deferred.is_empty() {
                self.metrics
                    .backpressure_pauses
                    .inc(Pause::ServerLinkCongested);
            }
            self.deferred.push(credit);
        }
    }

    fn own_to(&self) -> Vec<String> {
        vec![self.settings.client_id.clone()]
    }

    fn relay_to_servers(&mut self, msg: &WireMessage, sender: &str, dedupe_hash: Option<&str>) {
        self.relay_to_servers_if(msg, sender, dedupe_hash, false)
    }

    /// `relay_to_servers`; with `unproved` (a merged CRDT set, proved by
    /// no signature whole), not to servers that speak signed lists: they
    /// would refuse it as forged.
    fn relay_to_servers_if(
        &mut self,
        msg: &WireMessage,
        sender: &str,
        dedupe_hash: Option<&str>,
        unproved: bool,
    ) {
        let mut relayed = msg.clone();
        relayed.set_to(relay_to(msg.to_list(), sender, &self.settings.client_id));
        let text: ByteString = relayed.to_text().into();
        for server in self.conns.server_clients() {
            if server == sender || msg.to_list().contains(&server) {
                continue;
            }
            if unproved && self.speaks_crdt_lists(&server) {
                continue;
            }
            if let Some(h) = dedupe_hash {
                if !self.sent.mark(&server, h) {
                    continue;
                }
            }
            self.send_to_client(&server, text.clone());
        }
    }

    /// Pushes a winning record to every subscriber of its key, each push
    /// with a fresh id (a Tool Db client drops repeats of one (type, id)).
    fn push_to_subscribers(&mut self, record: &Record, kind: &str, skip: &[String], dedupe: &str) {
        for client in self.subs.subscribers(&record.key) {
            if skip.contains(&client) || !self.conns.is_connected(&client) {
                continue;
            }
            if !self.sent.mark(&client, dedupe) {
                continue;
            }
            let text = record_frame(kind, &new_message_id(), self.own_to(), record);
            self.send_to_client(&client, text.into());
        }
    }

    /// Whether `client`'s current connection is a server of ours that
    /// speaks signed CRDT lists (`Conn::offers_crdt_lists`).
    fn speaks_crdt_lists(&self, client: &str) -> bool {
        self.conns
            .of_client(client)
            .and_then(|c| self.conns.get(c))
            .is_some_and(|c| c.offers_crdt_lists())
    }

    /// Sends `conn` (a server of ours) the signed lists of `key` as the
    /// answer `id` to its crdtGet; a key holding no CRDT here goes as its
    /// record, and a key we lack gets no answer.
    fn send_crdt_lists(&mut self, conn: ConnId, id: String, key: String, ctx: &Context<Self>) {
        let storage = self.storage.clone();
        let durability = self.durability.clone();
        let k = key.clone();
        resume_after(
            ctx,
            async move {
                let lists = storage.send(GetCrdtLists { key: k.clone() }).await;
                let plain = storage.send(GetRecord { key: k }).await;
                durability.synced().await;
                (lists, plain)
            },
            move |act, (lists, plain), _| match (lists, plain) {
                (Ok(Ok(Some(lists))), _) => {
                    let msg = WireMessage::CrdtLists(CrdtLists {
                        id,
                        to: act.own_to(),
                        key,
                        lists,
                    });
                    act.send_to_conn(conn, msg.to_text().into());
                }
                (Ok(Ok(None)), Ok(Ok(Some(record)))) => {
                    let text = record_frame("crdtPut", &id, act.own_to(), &record);
                    act.send_to_conn(conn, text.into());
                }
                (Ok(Ok(None)), Ok(Ok(None))) => {}
                (Ok(Err(e)), _) | (_, Ok(Err(e))) => {
                    tracing::error!(error = %e, "read failed")
                }
                (Err(e), _) | (_, Err(e)) => {
                    tracing::error!(error = %e, "storage pool unreachable")
                }
            },
        );
    }

    fn answer_pending(&mut self, id: &str, record: &Record, ctx: &Context<Self>) {
        let Some(Pending {
            requester,
            answer_kind,
        }) = self.pending.take(id, Instant::now())
        else {
            return;
        };
        // A server of ours refuses a merged set: it gets the lists.
        if answer_kind == "crdtPut" && record.crdt.is_some() && !record.hash_matches() {
            if let Some(conn) = self
                .conns
                .of_client(&requester)
                .filter(|_| self.speaks_crdt_lists(&requester))
            {
                return self.send_crdt_lists(conn, id.to_owned(), record.key.clone(), ctx);
            }
        }
        let text = record_frame(answer_kind, id, self.own_to(), record);
        self.sent.mark(&requester, &record.hash);
        if !self.send_to_client(&requester, text.into()) {
            tracing::debug!(client = %requester, key = %record.key, "asker left before its answer came");
        }
    }

    /// Counts a record refused before storage, and closes a connection
    /// that sends too many.
    fn record_invalid(&mut self, conn: ConnId, err: &RecordError) {
        self.metrics.put_rejected(err);
        let max = self.settings.limits.max_invalid_records;
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        c.invalid_records += 1;
        if c.invalid_records == 1 {
            crate::remote_log!(info, client = %c.client_id, error = %err, "refused a record");
        } else {
            tracing::debug!(client = %c.client_id, error = %err, "refused a record");
        }
        if c.invalid_records == max + 1 {
            crate::remote_log!(warn, client = %c.client_id, count = c.invalid_records, "closing: too many invalid records");
            c.handle.close.do_send(CloseConnection::policy(format!(
                "more than {max} records failed verification"
            )));
        }
    }

    /// Answers a request refused at a limit: a log line, and an `error`
    /// frame naming the limit. It has a fresh id and names the request in
    /// `re`: Tool Db clients ignore unknown types, and a frame with the
    /// request's own id would consume their listener for it.
    fn refuse(&mut self, conn: ConnId, kind: &str, request_id: &str, error: &str) {
        let client = self.conns.get(conn).map(|c| c.client_id.clone());
        crate::remote_log!(info, conn, client = ?client, request = kind, error, "refused a request");
        self.answer_error(conn, kind, request_id, error);
    }

    /// The `error` frame of `refuse`, without its log line.
    fn answer_error(&mut self, conn: ConnId, kind: &str, request_id: &str, error: &str) {
        let frame = error_frame(&self.own_to(), Some((kind, request_id)), error);
        self.send_to_conn(conn, frame.into());
    }

    /// The key a request or record names, if it is longer than allowed.
    fn key_too_long(&self, msg: &WireMessage) -> Option<usize> {
        let key = match msg {
            WireMessage::Get(r)
            | WireMessage::CrdtGet(r)
            | WireMessage::Subscribe(r)
            | WireMessage::Query(r) => &r.key,
            WireMessage::Put(p) | WireMessage::CrdtPut(p) => &p.data.key,
            _ => return None,
        };
        (key.len() > self.settings.limits.max_key_bytes).then_some(key.len())
    }

    fn send_pong(&mut self, conn: ConnId, ping_id: &str) {
        let pong = self.pong_frame(ping_id);
        self.send_to_conn(conn, pong.into());
    }

    fn pong_frame(&self, ping_id: &str) -> String {
        let mut servers = vec![serde_json::to_value(&self.self_peer).expect("peer serialises")];
        servers.extend(
            self.servers
                .pong_list(self.conns.server_set())
                .into_iter()
                .map(|p| serde_json::to_value(p).expect("peer serialises")),
        );
        let pong = WireMessage::Pong(Pong {
            id: ping_id.to_owned(),
            to: self.own_to(),
            client_id: self.settings.client_id.clone(),
            is_server: true,
            servers,
            ext: Some(Extensions::ours()),
        });
        pong.to_text()
    }

    fn learn_server(&mut self, peer: Peer) {
        if peer.address == self.settings.address || peer.topic != self.settings.topic {
            return;
        }
        let (address, host, port) = (peer.address.clone(), peer.host.clone(), peer.port);
        if self.servers.learn(peer, self.conns.server_set()) == servers::Learned::New {
            crate::remote_log!(info, address = %address, host = %host, port, "learned of a server");
        }
    }

    fn report_listed(&self, peers: Vec<Peer>) {
        let peers: Vec<Peer> = peers
            .into_iter()
            .filter(|p| p.address != self.settings.address)
            .collect();
        if let (Some(r), false) = (&self.registry, peers.is_empty()) {
            r.listed.do_send(ServersListed { peers });
        }
    }

    pub fn snapshot(&self) -> PeersSnapshot {
        let mut servers: Vec<ServerEntry> = self
            .servers
            .iter()
            .map(|peer| {
                let cid = peer.client_id().to_owned();
                let state = if self.conns.is_server_client(&cid) {
                    LinkState::Connected
                } else {
                    LinkState::Discovered
                };
                ServerEntry {
                    peer: peer.clone(),
                    client_id: cid,
                    state,
                }
            })
            .collect();
        servers.sort_by(|a, b| a.peer.address.cmp(&b.peer.address));
        let mut connected: Vec<String> = self.conns.client_ids().cloned().collect();
        connected.sort();
        PeersSnapshot {
            self_peer: self.self_peer.clone(),
            servers,
            connected,
        }
    }

    fn cleanup(&mut self) {
        let now = Instant::now();
        self.pending.prune(now);
        let grace = Duration::from_secs(self.settings.limits.subscription_grace_secs);
        for client in self.subs.forget_expired(now, grace) {
            self.sent.forget(&client);
            tracing::debug!(client = %client, "forgot a client gone past the grace period");
        }
    }

    // ---- the put pipeline ----

    /// A frame that does work for its connection: into its pipeline.
    fn enqueue(
        &mut self,
        conn: ConnId,
        job: Job,
        put: Option<(Record, bool)>,
        ctx: &mut Context<Self>,
    ) {
        let p = self.pipelines.entry(conn).or_default();
        let steps = match put {
            Some((record, crdt)) => p.put(record, crdt, job),
            None => p.after(job),
        };
        self.run_steps(conn, steps, ctx);
    }

    fn run_steps(&mut self, conn: ConnId, steps: Vec<Step<Job>>, ctx: &mut Context<Self>) {
        for step in steps {
            match step {
                Step::Verify { seq, record } => self.verify(conn, seq, record, ctx),
                Step::Store(batch) => self.store(conn, batch, ctx),
                Step::Refuse { job, error } => {
                    self.record_invalid(conn, &error);
                    if let Work::Put { id, .. } = &job.work {
                        self.answer_error(conn, "put", id, &error.to_string());
                    }
                    self.release(job.credit, job.from_server);
                }
                Step::Run(job) => self.run_request(conn, job, ctx),
            }
        }
        if self.pipelines.get(&conn).is_some_and(Pipeline::is_idle)
            && self.conns.get(conn).is_none()
        {
            self.pipelines.remove(&conn);
        }
    }

    fn verify(
        &mut self,
        conn: ConnId,
        seq: pipeline::Seq,
        record: Record,
        ctx: &mut Context<Self>,
    ) {
        let crypto = self.crypto.clone();
        let pow = self.settings.pow;
        // A CRDT record must hash to its signature, except from a proved
        // server that does not speak signed lists (a JS Tool Db server, or
        // an older build of ours): it sends merged sets, which hash to
        // nothing, so they are checked by signature alone, as Tool Db does.
        let crdt_hash = !self
            .conns
            .get(conn)
            .is_some_and(|c| c.is_server && !c.crdt_lists);
        resume_after(
            ctx,
            async move {
                crypto
                    .send(VerifyRecord {
                        record,
                        pow,
                        crdt_hash,
                    })
                    .await
            },
            move |act, res, ctx| {
                let verdict = res.unwrap_or_else(|e| {
                    tracing::error!(error = %e, "crypto pool unreachable");
                    Err(RecordError::InvalidData(
                        "the node could not verify it".into(),
                    ))
                });
                let steps = match act.pipelines.get_mut(&conn) {
                    Some(p) => p.verified(seq, verdict),
                    None => return,
                };
                act.run_steps(conn, steps, ctx);
            },
        );
    }

    fn store(&mut self, conn: ConnId, batch: Vec<Batched<Job>>, ctx: &mut Context<Self>) {
        let storage = self.storage.clone();
        let durability = self.durability.clone();
        let mut items = Vec::with_capacity(batch.len());
        let mut jobs = Vec::with_capacity(batch.len());
        for b in batch {
            items.push((b.record, b.crdt));
            jobs.push(b.job);
        }
        resume_after(
            ctx,
            async move { storage.send(StoreBatch { items }).await },
            move |act, res, ctx| {
                let outcomes = match res {
                    Ok(outcomes) => outcomes,
                    Err(e) => {
                        tracing::error!(error = %e, records = jobs.len(), "storage pool unreachable: records not stored");
                        for job in jobs {
                            act.release(job.credit, job.from_server);
                        }
                        return act.batch_done(conn, ctx);
                    }
                };
                // Servers get the winners at once: each stores what it is
                // relayed, so a copy elsewhere only adds to durability, and
                // the relay no longer waits out our fsync (4-13 ms on this
                // machine's disk). Answers and subscriber pushes make a
                // write visible, so they wait for the flush that covers it.
                let mut effects = Vec::with_capacity(jobs.len());
                for (outcome, job) in outcomes.into_iter().zip(jobs) {
                    effects.push(act.relay_now(outcome, job));
                }
                resume_after(
                    ctx,
                    async move { durability.synced().await },
                    move |act, (), ctx| {
                        for (fanout, job) in effects {
                            act.apply(fanout, job, ctx);
                        }
                        act.batch_done(conn, ctx);
                    },
                );
            },
        );
    }

    /// A store batch of `conn` is done: its pipeline goes on.
    fn batch_done(&mut self, conn: ConnId, ctx: &mut Context<Self>) {
        let steps = match self.pipelines.get_mut(&conn) {
            Some(p) => p.stored(),
            None => return,
        };
        self.run_steps(conn, steps, ctx);
    }

    /// Counts a stored outcome and relays it to servers now; returns the
    /// rest of what it means, for once it is flushed.
    fn relay_now(&mut self, outcome: StoredItem, job: Job) -> (Vec<Fanout>, Job) {
        let Work::Put { id, to } = &job.work else {
            return (vec![], job);
        };
        self.count_put(&outcome);
        let mut rest = vec![];
        for effect in pipeline::fanout(outcome) {
            match effect {
                Fanout::Relay {
                    record,
                    kind,
                    dedupe,
                } => {
                    let data = PutData {
                        id: id.clone(),
                        to: to.clone(),
                        data: record,
                    };
                    let unproved = kind == "crdtPut" && !data.data.hash_matches();
                    let msg = if kind == "crdtPut" {
                        WireMessage::CrdtPut(data)
                    } else {
                        WireMessage::Put(data)
                    };
                    self.relay_to_servers_if(&msg, &job.sender, Some(&dedupe), unproved);
                }
                other => rest.push(other),
            }
        }
        (rest, job)
    }

    /// Carries out what storing one record means, in arrival order.
    fn apply(&mut self, effects: Vec<Fanout>, job: Job, ctx: &Context<Self>) {
        let Work::Put { id, to } = &job.work else {
            return self.release(job.credit, job.from_server);
        };
        let sender = &job.sender;
        for effect in effects {
            match effect {
                Fanout::Push {
                    record,
                    kind,
                    dedupe,
                } => {
                    let skip = relay_to(to, sender, &self.settings.client_id);
                    self.push_to_subscribers(&record, kind, &skip, &dedupe);
                }
                Fanout::Answer { record } => self.answer_pending(id, &record, ctx),
                // Relayed before the flush (relay_now).
                Fanout::Relay { .. } => {}
                Fanout::Refused(e) => match self.conns.of_client(sender) {
                    Some(conn) => self.refuse(conn, "put", id, &e.to_string()),
                    None => tracing::debug!(client = %sender, error = %e, "refused a record"),
                },
                Fanout::Failed(e) => {
                    tracing::error!(error = %e, "could not store a verified record")
                }
            }
        }
        self.release(job.credit, job.from_server);
    }

    fn count_put(&self, outcome: &StoredItem) {
        match outcome {
            StoredItem::Plain(Ok(StoreOutcome::Refused(e)))
            | StoredItem::Crdt(Ok(CrdtOutcome::Refused(e)), _) => self.metrics.put_rejected(e),
            StoredItem::Plain(Ok(_)) | StoredItem::Crdt(Ok(_), _) => {
                self.metrics.puts_accepted.inc();
            }
            StoredItem::Plain(Err(_)) | StoredItem::Crdt(Err(_), _) => self
                .metrics
                .puts_rejected
                .inc(crate::metrics::PutRejection::StorageError),
        }
    }

    // ---- requests that read ----

    fn run_request(&mut self, conn: ConnId, job: Job, ctx: &mut Context<Self>) {
        let Job {
            sender,
            from_server,
            credit,
            work,
        } = job;
        match work {
            Work::Put { .. } => self.release(credit, from_server),
            Work::Get { req, crdt } => self.on_get(conn, sender, req, crdt, credit, ctx),
            Work::Subscribe(req) => {
                match self.subs.subscribe(&sender, &req.key) {
                    Ok(forgotten) => {
                        for client in forgotten {
                            self.sent.forget(&client);
                        }
                    }
                    Err(e) => self.refuse(conn, "subscribe", &req.id, &e.to_string()),
                }
                // Tool Db answers a subscribe with a `put` whatever the record.
                self.read_and_answer(conn, sender, &req, "put", |_| {}, credit, ctx);
            }
            Work::Query(req) => self.on_query(conn, sender, req, credit, ctx),
            Work::AnswerPending { id, key } => {
                let storage = self.storage.clone();
                let durability = self.durability.clone();
                resume_after(
                    ctx,
                    async move {
                        let read = storage.send(GetRecord { key }).await;
                        durability.synced().await;
                        read
                    },
                    move |act, res, ctx| {
                        match res {
                            Ok(Ok(Some(record))) => act.answer_pending(&id, &record, ctx),
                            Ok(Ok(None)) => {}
                            Ok(Err(e)) => tracing::error!(error = %e, "read failed"),
                            Err(e) => tracing::error!(error = %e, "storage pool unreachable"),
                        }
                        drop(credit);
                    },
                );
            }
        }
    }

    /// Reads `key` durably (never a record a crash could still lose), then
    /// answers the request `id` directly with a `kind` frame if it is
    /// stored (a direct answer is always sent, even if this hash went
    /// before), or calls `missing` if it is not. The credit is held until
    /// then.
    #[allow(clippy::too_many_arguments)]
    fn read_and_answer(
        &mut self,
        conn: ConnId,
        sender: String,
        req: &KeyRequest,
        kind: &'static str,
        missing: impl FnOnce(&mut Hub) + Send + 'static,
        credit: Credit,
        ctx: &mut Context<Self>,
    ) {
        let storage = self.storage.clone();
        let durability = self.durability.clone();
        let (key, id) = (req.key.clone(), req.id.clone());
        let (output, id_len) = (self.output.clone(), id.len());
        let Some(slots) = self.conns.get(conn).map(|c| c.reads.0.clone()) else {
            return drop(credit);
        };
        resume_after(
            ctx,
            async move {
                // Closed: the asker is gone; nothing to read for it.
                let slot = slots.acquire_owned().await.ok()?;
                let read = storage.send(GetRecord { key }).await;
                durability.synced().await;
                // Room for the answer before it is made (the read holds
                // only the shared parse meanwhile, and its credit).
                let held = match &read {
                    Ok(Ok(Some(r))) => Some(output.reserve(answer_bytes(r, id_len)).await),
                    _ => None,
                };
                Some((read, slot, held))
            },
            move |act, res, ctx| {
                let Some((res, _slot, held)) = res else {
                    return drop(credit);
                };
                match res {
                    // A server of ours refuses a merged set: it gets lists.
                    Ok(Ok(Some(record)))
                        if kind == "crdtPut"
                            && record.crdt.is_some()
                            && act.conns.get(conn).is_some_and(|c| c.offers_crdt_lists()) =>
                    {
                        act.send_crdt_lists(conn, id, record.key.clone(), ctx);
                    }
                    Ok(Ok(Some(record))) => {
                        act.sent.mark(&sender, &record.hash);
                        let text = record_frame(kind, &id, act.own_to(), &record);
                        act.send_held(conn, text.into(), held);
                    }
                    Ok(Ok(None)) => missing(act),
                    Ok(Err(e)) => tracing::error!(error = %e, "read failed"),
                    Err(e) => tracing::error!(error = %e, "storage pool unreachable"),
                }
                drop(credit);
            },
        );
    }

    fn on_get(
        &mut self,
        conn: ConnId,
        sender: String,
        req: KeyRequest,
        crdt: bool,
        credit: Credit,
        ctx: &mut Context<Self>,
    ) {
        // A Tool Db client resolves getData only with a put, getCrdt only
        // with a crdtPut (see `Pending`).
        let kind = if crdt { "crdtPut" } else { "put" };
        let (asked, asker) = (req.clone(), sender.clone());
        let missing = move |act: &mut Hub| {
            // Our client asked to hear of a miss at once rather than wait
            // out its timeout; a relayed answer, if one comes, still goes.
            if act.conns.get(conn).is_some_and(|c| c.wants_missing) {
                let miss = WireMessage::Missing(KeyRequest {
                    id: req.id.clone(),
                    to: act.own_to(),
                    key: req.key.clone(),
                });
                act.send_to_conn(conn, miss.to_text().into());
            }
            let pending = Pending {
                requester: asker.clone(),
                answer_kind: kind,
            };
            act.pending.insert(&req.id, pending, Instant::now());
            let msg = if crdt {
                WireMessage::CrdtGet(req)
            } else {
                WireMessage::Get(req)
            };
            act.relay_to_servers(&msg, &asker, None);
        };
        self.read_and_answer(conn, sender, &asked, kind, missing, credit, ctx);
    }

    fn on_query(
        &mut self,
        conn: ConnId,
        sender: String,
        req: KeyRequest,
        credit: Credit,
        ctx: &mut Context<Self>,
    ) {
        let storage = self.storage.clone();
        let prefix = req.key.clone();
        let limit = self.settings.limits.query_max_keys;
        // Each key costs its JSON text plus a comma; 512 bytes for the rest.
        let max_bytes = self
            .settings
            .limits
            .max_frame_bytes
            .min(QUERY_ANSWER_BYTES)
            .saturating_sub(512 + req.id.len());
        let relay = WireMessage::Query(req.clone());
        self.relay_to_servers(&relay, &sender, None);
        let Some(slots) = self.conns.get(conn).map(|c| c.reads.0.clone()) else {
            return drop(credit);
        };
        let lane = self.scan_lane.clone();
        let output = self.output.clone();
        resume_after(
            ctx,
            async move {
                // A query is a read of its connection's (so a flood of them
                // waits its turn and ends with its asker)...
                let slot = slots.clone().acquire_owned().await.ok()?;
                // ...and a scan of the node's one lane for scans.
                let scan = lane.acquire_owned().await.ok()?;
                if slots.is_closed() {
                    return None;
                }
                let page = storage
                    .send(QueryKeys {
                        prefix,
                        limit,
                        max_bytes,
                    })
                    .await;
                drop(scan);
                let held = match &page {
                    Ok(Ok(p)) => {
                        let keys: usize = p.keys.iter().map(|k| k.len() + 3).sum();
                        Some(output.reserve(keys + 512).await)
                    }
                    _ => None,
                };
                Some((page, slot, held))
            },
            move |act, res, _| {
                let Some((res, _slot, held)) = res else {
                    return drop(credit);
                };
                match res {
                    Ok(Ok(page)) => {
                        let text = act.query_ack(&req, page);
                        act.send_held(conn, text.into(), held);
                    }
                    Ok(Err(e)) => tracing::error!(error = %e, "query failed"),
                    Err(e) => tracing::error!(error = %e, "storage pool unreachable"),
                }
                drop(credit);
            },
        );
    }

    /// A `queryAck` of the keys storage found, which fit in one frame a
    /// client accepts: keys past that were left out, and the answer says
    /// so (`truncated`, ignored by Tool Db clients, which drop a second
    /// answer with the same id, so splitting it would lose the rest anyway).
    fn query_ack(&self, req: &KeyRequest, page: KeyPage) -> String {
        if page.truncated {
            crate::remote_log!(
                info,
                prefix_bytes = req.key.len(),
                sent = page.keys.len(),
                "query answer cut to fit one frame"
            );
        }
        let ack = WireMessage::QueryAck(QueryAck {
            id: req.id.clone(),
            to: self.own_to(),
            keys: page.keys,
        });
        if !page.truncated {
            return ack.to_text();
        }
        let mut v: Value = serde_json::from_str(&ack.to_text()).expect("our own JSON");
        v["truncated"] = Value::Bool(true);
        v.to_string()
    }

    fn on_function(&mut self, conn: ConnId, call: FunctionCall) {
        let (code, value) = match self.functions.get(call.function.as_str()) {
            Some(f) => match f(self, &call.args) {
                Ok(v) => ("OK", v),
                Err(e) => ("ERR", Value::String(e)),
            },
            // Names at most 64 characters of what was asked: an answer
            // never echoes a caller's bytes back (amplification).
            None => (
                "NOT_FOUND",
                Value::String(format!(
                    "no server function {:?}",
                    call.function.chars().take(64).collect::<String>()
                )),
            ),
        };
        let reply = WireMessage::FunctionReturn(FunctionReturn {
            id: call.id,
            to: self.own_to(),
            code: code.into(),
            value,
        });
        self.send_to_conn(conn, reply.to_text().into());
    }

    /// Verifies the servers a pong lists; the pong's credit is held until
    /// then (so a peer flooding pongs waits for its own verification). Only
    /// news is verified (unknown or newer records), at most a pong's worth,
    /// within the connection's per-minute budget: a junk list costs bounded
    /// CPU.
    fn on_pong(&mut self, conn: ConnId, pong: Pong, credit: Credit, ctx: &mut Context<Self>) {
        let cap = self.settings.limits.pong_max_servers + 1;
        let mut news: Vec<Value> = pong
            .servers
            .into_iter()
            .filter(|v| {
                let address = v.get("address").and_then(Value::as_str).unwrap_or("");
                let ts = v.get("timestamp").and_then(Value::as_u64).unwrap_or(0);
                address != self.settings.address && self.servers.is_news(address, ts)
            })
            .take(cap)
            .collect();
        let per_minute = self.settings.limits.listed_verifications_per_minute;
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        let allowed = c.listed.take(news.len(), per_minute, Instant::now());
        if allowed < news.len() {
            tracing::debug!(
                conn,
                listed = news.len(),
                allowed,
                "listed servers over the verification budget"
            );
            news.truncate(allowed);
        }
        if news.is_empty() {
            return;
        }
        let crypto = self.crypto.clone();
        let topic = self.settings.topic.clone();
        ctx.spawn(
            async move {
                crypto
                    .send(VerifyServers {
                        servers: news,
                        topic,
                    })
                    .await
            }
            .into_actor(self)
            .map(|res, act, _| {
                let peers = res.unwrap_or_default();
                for peer in &peers {
                    act.learn_server(peer.clone());
                }
                act.report_listed(peers);
                drop(credit);
            }),
        );
    }
}

/// What an answer carrying `record` will take of the output budget: the
/// record, its request id and the frame around them.
fn answer_bytes(record: &Record, id_len: usize) -> usize {
    record.raw().len() + id_len + 256
}

/// `{"type":kind,"id":id,"to":[..],"data":record}` with the record's raw
/// text, copied once: through `PutData` the record was cloned and then
/// serialised, three passes over it in the hub's one thread, and a crdtGet
/// flood of a 900 KB record kept an honest get waiting behind them (attack
/// bench crdt_get, p99 over 100 ms). Same text as `WireMessage::to_text`.
fn record_frame(kind: &str, id: &str, to: Vec<String>, record: &Record) -> String {
    let kind = if kind == "crdtPut" { "crdtPut" } else { "put" };
    let id = serde_json::to_string(id).expect("strings serialise");
    let to = serde_json::to_string(&to).expect("strings serialise");
    let raw = record.raw();
    let mut text = String::with_capacity(40 + id.len() + to.len() + raw.len());
    text.push_str(r#"{"type":""#);
    text.push_str(kind);
    text.push_str(r#"","id":"#);
    text.push_str(&id);
    text.push_str(r#","to":"#);
    text.push_str(&to);
    text.push_str(r#","data":"#);
    text.push_str(raw);
    text.push('}');
    text
}

/// Server function `peers`: the verified servers this node knows.
fn fn_peers(hub: &Hub, _args: &Value) -> Result<Value, String> {
    let snap = hub.snapshot();
    Ok(json!(snap
        .servers
        .iter()
        .map(|s| json!({"peer": s.peer, "state": s.state}))
        .collect::<Vec<_>>()))
}

impl Actor for Hub {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.me = Some(ctx.address());
        ctx.run_interval(CLEANUP_EVERY, |act, _| act.cleanup());
        ctx.run_interval(RECLAIM_EVERY, |act, _| act.reclaim_output());
        // (ForgetGoneClients runs the same cleanup on demand.)
        let every = Duration::from_secs(self.settings.reconcile_every_secs.max(1));
        ctx.run_interval(every, |act, ctx| {
            for conn in act.conns.ids() {
                act.maybe_reconcile(conn, ctx);
            }
        });
        // Re-sign our record well inside the window peers accept.
        let every = Duration::from_millis((self.settings.limits.ping_window_ms / 4).max(1000));
        ctx.run_interval(every, |act, ctx| act.resign(ctx));
    }
}

impl Handler<ConnectionIdentified> for Hub {
    type Result = ();
    fn handle(&mut self, msg: ConnectionIdentified, ctx: &mut Self::Context) {
        if msg
            .peer
            .as_ref()
            .is_some_and(|p| p.address == self.settings.address)
        {
            tracing::info!(conn = msg.conn, "closing a connection to ourselves");
            // The pong first: it tells our own dialer that this endpoint is us.
            if let Some(ping_id) = &msg.ping_id {
                let _ = msg.handle.outbox.push(self.pong_frame(ping_id).into());
            }
            msg.handle.close.do_send(
                CloseConnection::policy("this is the same node: refusing a connection to itself")
                    .because(CloseCause::Myself)
                    .after_pending(),
            );
            return;
        }
        if let Some(refusal) = self.replayed_identity(&msg) {
            crate::remote_log!(info, conn = msg.conn, client = %msg.client_id, reason = %refusal, "refused a ping");
            msg.handle.close.do_send(CloseConnection::policy(refusal));
            return;
        }
        // A server is trusted as one once its record's endpoint answered a
        // dial of ours; an inbound ping that merely claims `isServer` is
        // served as a client meanwhile, and its endpoint is dialed.
        let verified_server = msg.is_server
            && msg.peer.as_ref().is_some_and(|p| {
                msg.outbound || msg.via.is_hyperswarm() || self.servers.is_verified(&p.address)
            });
        let claim = (msg.is_server && !verified_server)
            .then(|| msg.peer.clone())
            .flatten();
        crate::remote_log!(
            info,
            client = %msg.client_id,
            server = verified_server,
            claims_server = claim.is_some(),
            outbound = msg.outbound,
            "peer identified"
        );
        if verified_server {
            if let Some(peer) = msg.peer.clone() {
                self.learn_server(peer.clone());
                if msg.outbound {
                    self.servers.mark_verified(&peer.address);
                }
            }
        }
        for peer in &msg.servers {
            self.learn_server(peer.clone());
        }
        let mut listed = msg.servers;
        if let Some(peer) = &claim {
            listed.push(peer.clone());
        }
        self.report_listed(listed);
        if let (true, Some(peer), Some(r)) = (verified_server, &msg.peer, &self.registry) {
            r.connected.do_send(ServerConnected {
                conn: msg.conn,
                outbound: msg.outbound,
                endpoint: msg.dialed.clone(),
                peer: peer.clone(),
                tooldb_node: msg.reconcile,
                via: msg.via,
            });
        }
        self.subs.client_back(&msg.client_id);
        // A peer that pings again may have lost what it had (Tool Db resets too).
        self.sent.forget(&msg.client_id);
        let anonymous = msg.peer.is_none();
        let address = msg
            .peer
            .as_ref()
            .filter(|_| verified_server)
            .map(|p| p.address.clone());
        let trusted_address = address.clone();
        // A second link to a server we already hold a link to, of the side
        // the registry drops (it keeps the one the smaller address dialed):
        // the held link stays current, so nothing is relayed onto a link
        // about to close (seen in CI: a relayed get lost that way).
        let doomed = address.as_ref().is_some_and(|a| {
            msg.outbound != crate::registry::keep_outbound(&self.settings.address, a)
        });
        let conn = Conn {
            handle: msg.handle,
            client_id: msg.client_id,
            address,
            reconcile: verified_server && msg.reconcile,
            crdt_lists: verified_server && msg.crdt_lists,
            wants_missing: msg.wants_missing,
            is_server: verified_server,
            outbound: msg.outbound,
            anonymous,
            invalid_records: 0,
            peer_timestamp: msg.peer.as_ref().map(|p| p.timestamp),
            claim: claim.map(|peer| Claim {
                peer,
                reconcile: msg.reconcile,
                crdt_lists: msg.crdt_lists,
            }),
            listed: ListedBudget::default(),
            reads: Default::default(),
        };
        if doomed {
            self.conns.insert_second(msg.conn, conn);
        } else {
            self.conns.insert(msg.conn, conn);
        }
        if let Some(ping_id) = msg.ping_id {
            self.send_pong(msg.conn, &ping_id);
        }
        self.maybe_reconcile(msg.conn, ctx);
        if let (true, Some(address)) = (msg.outbound, trusted_address) {
            self.promote_claims(&address, ctx);
        }
    }
}

impl Hub {
    /// Why an inbound ping must be refused as a replay: its peer record is
    /// not newer than one already seen for its client id (Tool Db clients
    /// sign a fresh record for every ping, as do we), so a record copied
    /// off the wire cannot take over a client's subscriptions.
    fn replayed_identity(&mut self, msg: &ConnectionIdentified) -> Option<String> {
        let peer = msg.peer.as_ref().filter(|_| !msg.outbound)?;
        let now = Instant::now();
        let open = self
            .conns
            .of_client(&msg.client_id)
            .and_then(|id| self.conns.get(id))
            .and_then(|c| c.peer_timestamp);
        let seen = self.pings_seen.get(&msg.client_id, now).copied();
        let newest = open.max(seen);
        if newest.is_some_and(|n| peer.timestamp <= n) {
            return Some(if open.is_some() {
                format!(
                    "client {} is connected: a second connection needs a newer signed peer record",
                    msg.client_id
                )
            } else {
                format!(
                    "replayed peer record: a newer or the same one of client {} was seen",
                    msg.client_id
                )
            });
        }
        // Kept while a record could still pass the ping window.
        let keep = Duration::from_millis(2 * self.settings.limits.ping_window_ms);
        self.pings_seen
            .insert(msg.client_id.clone(), peer.timestamp, now + keep, now);
        None
    }

    /// An outbound link proved `address`: inbound links that claimed to be
    /// it become server links (the registry then keeps one of the pair).
    fn promote_claims(&mut self, address: &str, ctx: &mut Context<Self>) {
        let claims: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.claim
                    .as_ref()
                    .is_some_and(|cl| cl.peer.address == address)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in claims {
            let Some(claim) = self.conns.promote(id) else {
                continue;
            };
            tracing::info!(
                conn = id,
                address,
                "an inbound server link is verified by our dial"
            );
            self.learn_server(claim.peer.clone());
            if let Some(r) = &self.registry {
                r.connected.do_send(ServerConnected {
                    conn: id,
                    outbound: false,
                    endpoint: None,
                    peer: claim.peer,
                    tooldb_node: claim.reconcile,
                    via: Via::Websocket,
                });
            }
            self.reconcile_if(id, true, ctx);
        }
    }
}

impl Handler<FrameReceived> for Hub {
    type Result = ();
    fn handle(&mut self, msg: FrameReceived, ctx: &mut Self::Context) {
        let FrameReceived {
            conn,
            msg: m,
            credit,
        } = msg;
        let Some(c) = self.conns.get(conn) else {
            return;
        };
        let sender = c.client_id.clone();
        let from_server = c.is_server;
        let repeatable = matches!(m, WireMessage::Ping(_) | WireMessage::Pong(_));
        if !repeatable {
            let id = digest(&format!("{}\u{0}{}", m.kind(), m.id()));
            if !self.processed.insert(id) {
                return;
            }
        }
        if let Some(len) = self.key_too_long(&m) {
            let error = format!(
                "key of {len} bytes: longer than max_key_bytes = {}",
                self.settings.limits.max_key_bytes
            );
            self.refuse(conn, m.kind(), m.id(), &error);
            return;
        }
        let job = |work, credit| Job {
            sender,
            from_server,
            credit,
            work,
        };
        match m {
            WireMessage::Ping(p) => self.send_pong(conn, &p.id),
            WireMessage::Pong(p) => self.on_pong(conn, p, credit, ctx),
            WireMessage::Reconcile(r) => self.on_reconcile(conn, r, credit, ctx),
            WireMessage::Function(f) => self.on_function(conn, f),
            WireMessage::Put(p) => self.on_put(conn, p, false, |w| job(w, credit), ctx),
            WireMessage::CrdtPut(p) => self.on_put(conn, p, true, |w| job(w, credit), ctx),
            WireMessage::Get(req) => {
                self.enqueue(conn, job(Work::Get { req, crdt: false }, credit), None, ctx)
            }
            WireMessage::CrdtGet(req) => {
                self.enqueue(conn, job(Work::Get { req, crdt: true }, credit), None, ctx)
            }
            WireMessage::Subscribe(req) => {
                self.enqueue(conn, job(Work::Subscribe(req), credit), None, ctx)
            }
            WireMessage::Query(req) => self.enqueue(conn, job(Work::Query(req), credit), None, ctx),
            // Answers to queries we relayed: our own answer went already.
            WireMessage::QueryAck(_) | WireMessage::FunctionReturn(_) => {}
            // Servers never ask for it; a peer sending one is ignored.
            WireMessage::Missing(_) => {}
            WireMessage::CrdtLists(m) => self.on_crdt_lists(conn, m, credit, ctx),
        }
    }
}

impl Hub {
    fn on_put(
        &mut self,
        conn: ConnId,
        put: PutData,
        crdt: bool,
        job: impl FnOnce(Work) -> Job,
        ctx: &mut Context<Self>,
    ) {
        let PutData { id, to, data } = put;
        if crdt != data.crdt.is_some() {
            let error = RecordError::InvalidData(format!(
                "{} carries a record with c = {:?}",
                if crdt { "crdtPut" } else { "put" },
                data.crdt
            ));
            self.record_invalid(conn, &error);
            return;
        }
        self.enqueue(conn, job(Work::Put { id, to }), Some((data, crdt)), ctx);
    }
}

impl Hub {
    /// A server of ours answered a crdtGet with signed lists: each goes
    /// through the pipeline as a crdtPut (verified whole), then whoever
    /// waits for the answer gets the merged set.
    fn on_crdt_lists(
        &mut self,
        conn: ConnId,
        msg: CrdtLists,
        credit: Credit,
        ctx: &mut Context<Self>,
    ) {
        let Some(c) = self.conns.get(conn) else {
            return;
        };
        // Each list is verified whole, except from a proved server that
        // does not speak lists (its records are checked by signature).
        if c.is_server && !c.crdt_lists {
            tracing::debug!(client = %c.client_id, "ignored crdtLists from a peer that did not offer them");
            return;
        }
        let (sender, from_server) = (c.client_id.clone(), c.is_server);
        let CrdtLists { id, to, key, lists } = msg;
        for list in lists {
            if list.key != key || list.crdt.is_none() {
                let error = RecordError::InvalidData(format!(
                    "crdtLists of {key:?} carries a record of {:?} with c = {:?}",
                    list.key, list.crdt
                ));
                self.record_invalid(conn, &error);
                continue;
            }
            // The frame's credit stays with the answer, queued last.
            let job = Job {
                sender: sender.clone(),
                from_server,
                credit: Credit::none(),
                work: Work::Put {
                    id: new_message_id(),
                    to: to.clone(),
                },
            };
            self.enqueue(conn, job, Some((list, true)), ctx);
        }
        let job = Job {
            sender,
            from_server,
            credit,
            work: Work::AnswerPending { id, key },
        };
        self.enqueue(conn, job, None, ctx);
    }
}

impl Handler<ConnectionClosed> for Hub {
    type Result = ();
    fn handle(&mut self, msg: ConnectionClosed, _: &mut Self::Context) {
        let Some((conn, left)) = self.conns.remove(msg.conn) else {
            return;
        };
        // Frees what is pending; a queued close frame still goes out.
        if conn.handle.outbox.close_reason().is_none() {
            conn.handle.outbox.shut();
        }
        self.backlog.remove(&msg.conn);
        if self.congested.remove(&msg.conn) && self.congested.is_empty() {
            self.deferred.clear();
        }
        if self.pipelines.get(&msg.conn).is_some_and(Pipeline::is_idle) {
            self.pipelines.remove(&msg.conn);
        }
        if left == Left::Gone {
            for client in self
                .subs
                .client_left(&conn.client_id, conn.anonymous, Instant::now())
            {
                self.sent.forget(&client);
            }
            if conn.anonymous {
                self.sent.forget(&conn.client_id);
            }
        }
        crate::remote_log!(info, client = %conn.client_id, server = conn.is_server, outbound = conn.outbound, "connection closed");
        if let (Some(address), Some(r)) = (conn.address, &self.registry) {
            r.disconnected.do_send(ServerDisconnected {
                conn: msg.conn,
                address,
            });
        }
    }
}

impl Handler<OutboxDrained> for Hub {
    type Result = ();
    fn handle(&mut self, msg: OutboxDrained, _: &mut Self::Context) {
        self.congested.remove(&msg.conn);
        if self.backlog.contains_key(&msg.conn) {
            self.pump_backlog(msg.conn);
        }
        if self.congested.is_empty() && !self.deferred.is_empty() {
            tracing::debug!(
                credits = self.deferred.len(),
                "server links drained: resuming client intake"
            );
            self.deferred.clear();
        }
    }
}

impl Handler<ForgetGoneClients> for Hub {
    type Result = ();
    fn handle(&mut self, _: ForgetGoneClients, _: &mut Self::Context) {
        self.cleanup();
    }
}

impl Handler<DropConnection> for Hub {
    type Result = ();
    fn handle(&mut self, msg: DropConnection, _: &mut Self::Context) {
        if let Some(c) = self.conns.get(msg.conn) {
            c.handle
                .close
                // After the pong already queued: the dialer on the other
                // side needs it to trust the link we keep (CI: without it
                // the two never agreed and stayed unconnected).
                .do_send(
                    CloseConnection::policy(msg.reason)
                        .because(CloseCause::Duplicate)
                        .after_pending(),
                );
        }
    }
}

impl Handler<SetPublicHost> for Hub {
    type Result = ();
    fn handle(&mut self, msg: SetPublicHost, ctx: &mut Self::Context) {
        if msg.host != self.settings.host {
            tracing::info!(host = %msg.host, "our public host, as the DHT reports it");
            self.settings.host = msg.host;
            self.resign(ctx);
        }
    }
}

impl Handler<CloseAll> for Hub {
    type Result = ();
    fn handle(&mut self, msg: CloseAll, _: &mut Self::Context) {
        for (_, c) in self.conns.iter() {
            c.handle
                .close
                .do_send(CloseConnection::going_away(msg.reason.clone()));
        }
    }
}

/// A freshly signed record for each dial: a peer refuses a ping whose
/// record is not newer than one it saw (replay protection).
impl Handler<GetSelfPeer> for Hub {
    type Result = ResponseFuture<Peer>;
    fn handle(&mut self, _: GetSelfPeer, _: &mut Self::Context) -> Self::Result {
        let req = SignPeer {
            topic: self.settings.topic.clone(),
            host: self.settings.host.clone(),
            port: self.settings.port,
            ssl: self.settings.ssl,
        };
        let (crypto, fallback) = (self.crypto.clone(), self.self_peer.clone());
        Box::pin(async move { crypto.send(req).await.unwrap_or(fallback) })
    }
}

impl Handler<GetPeers> for Hub {
    type Result = MessageResult<GetPeers>;
    fn handle(&mut self, _: GetPeers, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.snapshot())
    }
}

//! `Hub`: the protocol. One per node, on the system arbiter; the server
//! creates it and every connection holds its address.
//!
//! Holds: identified connections (by local id and by client id), the
//! subscriptions by key (so a put costs the same however many clients are
//! connected), the bounded processed-id and sent-hash memories, pending
//! relayed requests, and the verified servers known.
//! Receives `ConnectionIdentified`, `FrameReceived`, `ConnectionClosed`,
//! `GetSelfPeer`, `GetPeers`. Sends frames to connections through their
//! `ConnHandle`; verification goes to `Crypto` and storage to `Storage`
//! as futures, so no handler waits on slow work.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde_json::{json, Value};

use crate::actors::crypto::Crypto;
use crate::actors::storage::Storage;
use crate::bounded::{BoundedSet, ExpiringMap};
use crate::config::Limits;
use crate::crypto::sha256_hex;
use crate::durability::Durability;
use crate::messages::connection::{CloseConnection, ConnHandle, SendFrame};
use crate::messages::crypto::{SignPeer, VerifyRecord, VerifyServers};
use crate::messages::hub::*;
use crate::messages::registry::{ServerConnected, ServerDisconnected, ServersListed};
use crate::messages::storage::*;
use crate::messages::wire::*;
use crate::peer::Peer;
use crate::record::{Record, RecordError};

/// How often expired requests and long-gone clients are cleaned up.
const CLEANUP_EVERY: Duration = Duration::from_secs(30);
/// Most pending relayed requests remembered at once.
const MAX_PENDING: usize = 100_000;

/// What the hub needs to know about its own node.
#[derive(Debug, Clone)]
pub struct HubSettings {
    pub topic: String,
    pub address: String,
    pub client_id: String,
    pub host: String,
    pub port: u16,
    pub pow: u32,
    pub limits: Limits,
    pub reconcile_every_secs: u64,
    pub reconcile_max_records: usize,
}

struct Conn {
    handle: ConnHandle,
    client_id: String,
    /// The verified server address, for server connections.
    address: Option<String>,
    /// A server of ours: speaks the `reconcile` extension.
    reconcile: bool,
    is_server: bool,
    outbound: bool,
    invalid_records: u32,
}

struct KnownServer {
    peer: Peer,
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

pub struct Hub {
    settings: HubSettings,
    storage: Addr<Storage>,
    crypto: Addr<Crypto>,
    self_peer: Peer,
    conns: HashMap<ConnId, Conn>,
    by_client: HashMap<String, ConnId>,
    subs: HashMap<String, HashSet<String>>,
    subs_by_client: HashMap<String, HashSet<String>>,
    gone_since: HashMap<String, Instant>,
    processed: BoundedSet<(&'static str, String)>,
    sent: HashMap<String, BoundedSet<String>>,
    /// Relayed get/crdtGet id → who asked, and the answer type it awaits.
    pending: ExpiringMap<String, Pending>,
    servers: HashMap<String, KnownServer>,
    /// Client ids whose current connection is a verified server.
    connected_servers: HashSet<String>,
    registry: Option<RegistryLink>,
    /// Awaited before a write or a read is exposed (group commit).
    durability: Durability,
    functions: HashMap<&'static str, ServerFunction>,
}

#[derive(Debug, Clone)]
struct Pending {
    requester: String,
    /// A Tool Db client resolves `getData` only with a `put` and
    /// `getCrdt` only with a `crdtPut`; any other type with the id hangs it.
    answer_kind: &'static str,
}

enum PutResult {
    Invalid(RecordError),
    Stored(StoreOutcome),
    Merged(CrdtOutcome, Record),
    Failed(String),
}

impl Hub {
    pub fn new(
        settings: HubSettings,
        storage: Addr<Storage>,
        crypto: Addr<Crypto>,
        self_peer: Peer,
    ) -> Self {
        let processed = BoundedSet::new(settings.limits.processed_ids);
        let mut functions: HashMap<&'static str, ServerFunction> = HashMap::new();
        functions.insert("peers", fn_peers);
        Hub {
            settings,
            storage,
            crypto,
            self_peer,
            conns: HashMap::new(),
            by_client: HashMap::new(),
            subs: HashMap::new(),
            subs_by_client: HashMap::new(),
            gone_since: HashMap::new(),
            processed,
            sent: HashMap::new(),
            pending: ExpiringMap::new(MAX_PENDING),
            servers: HashMap::new(),
            connected_servers: HashSet::new(),
            registry: None,
            durability: Durability::off(),
            functions,
        }
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

    fn send_to_conn(&self, conn: ConnId, text: Arc<str>) {
        if let Some(c) = self.conns.get(&conn) {
            // Losing a frame to a socket that is closing is acceptable.
            c.handle.send.do_send(SendFrame { text });
        }
    }

    fn send_to_client(&self, client: &str, text: Arc<str>) -> bool {
        match self.by_client.get(client) {
            Some(conn) => {
                self.send_to_conn(*conn, text);
                true
            }
            None => false,
        }
    }

    /// Remembers that `hash` went to `client`; false if it already had.
    fn mark_sent(&mut self, client: &str, hash: &str) -> bool {
        let cap = self.settings.limits.sent_hashes_per_client;
        self.sent
            .entry(client.to_owned())
            .or_insert_with(|| BoundedSet::new(cap))
            .insert(hash.to_owned())
    }

    fn own_to(&self) -> Vec<String> {
        vec![self.settings.client_id.clone()]
    }

    /// Client ids of connected, verified servers (one per server), from an
    /// index kept on connect and close: a put never walks all connections.
    fn server_clients(&self) -> Vec<String> {
        self.connected_servers.iter().cloned().collect()
    }

    /// The `to` list of a relayed message: who saw it, plus the sender and us.
    fn relay_to(&self, to: &[String], sender: &str) -> Vec<String> {
        let mut out = to.to_vec();
        for id in [sender, self.settings.client_id.as_str()] {
            if !out.iter().any(|x| x == id) {
                out.push(id.to_owned());
            }
        }
        out
    }

    fn relay_to_servers(&mut self, msg: &WireMessage, sender: &str, dedupe_hash: Option<&str>) {
        let mut relayed = msg.clone();
        relayed.set_to(self.relay_to(msg.to_list(), sender));
        let text: Arc<str> = relayed.to_text().into();
        for server in self.server_clients() {
            if server == sender || msg.to_list().contains(&server) {
                continue;
            }
            if let Some(h) = dedupe_hash {
                if !self.mark_sent(&server, h) {
                    continue;
                }
            }
            self.send_to_client(&server, text.clone());
        }
    }

    /// Pushes a winning record to every subscriber of its key, each push
    /// with a fresh id (a Tool Db client drops repeats of one (type, id)).
    fn push_to_subscribers(&mut self, record: &Record, kind: &str, skip: &[String], dedupe: &str) {
        let Some(subs) = self.subs.get(&record.key) else {
            return;
        };
        let targets: Vec<String> = subs
            .iter()
            .filter(|c| !skip.contains(c) && self.by_client.contains_key(*c))
            .cloned()
            .collect();
        for client in targets {
            if !self.mark_sent(&client, dedupe) {
                continue;
            }
            let text = record_frame(kind, &new_message_id(), self.own_to(), record);
            self.send_to_client(&client, text.into());
        }
    }

    fn answer_pending(&mut self, id: &str, record: &Record) {
        let now = Instant::now();
        let Some(Pending {
            requester,
            answer_kind,
        }) = self.pending.get(&id.to_owned(), now).cloned()
        else {
            return;
        };
        self.pending.remove(&id.to_owned());
        let text = record_frame(answer_kind, id, self.own_to(), record);
        self.mark_sent(&requester, &record.hash);
        if !self.send_to_client(&requester, text.into()) {
            tracing::debug!(client = %requester, key = %record.key, "asker left before its answer came");
        }
    }

    fn record_invalid(&mut self, conn: ConnId, err: &RecordError) {
        let max = self.settings.limits.max_invalid_records;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.invalid_records += 1;
        if c.invalid_records == 1 {
            tracing::info!(client = %c.client_id, error = %err, "refused a record");
        } else {
            tracing::debug!(client = %c.client_id, error = %err, "refused a record");
        }
        if c.invalid_records > max {
            tracing::warn!(client = %c.client_id, count = c.invalid_records, "closing: too many invalid records");
            c.handle.close.do_send(CloseConnection {
                reason: format!("more than {max} records failed verification"),
            });
        }
    }

    fn send_pong(&self, conn: ConnId, ping_id: &str) {
        self.send_to_conn(conn, self.pong_frame(ping_id).into());
    }

    fn pong_frame(&self, ping_id: &str) -> String {
        let mut servers = vec![serde_json::to_value(&self.self_peer).expect("peer serialises")];
        servers.extend(
            self.servers
                .values()
                .map(|s| serde_json::to_value(&s.peer).expect("peer serialises")),
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
        match self.servers.get_mut(&peer.address) {
            Some(known) if known.peer.timestamp >= peer.timestamp => {}
            Some(known) => known.peer = peer,
            None => {
                tracing::info!(address = %peer.address, host = %peer.host, port = peer.port, "learned of a server");
                self.servers
                    .insert(peer.address.clone(), KnownServer { peer });
            }
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
            .values()
            .map(|s| {
                let cid = s.peer.client_id().to_owned();
                let state = if self.connected_servers.contains(&cid) {
                    "connected"
                } else {
                    "discovered"
                };
                ServerEntry {
                    peer: s.peer.clone(),
                    client_id: cid,
                    state,
                }
            })
            .collect();
        servers.sort_by(|a, b| a.peer.address.cmp(&b.peer.address));
        let mut connected: Vec<String> = self.by_client.keys().cloned().collect();
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
        let expired: Vec<String> = self
            .gone_since
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= grace)
            .map(|(c, _)| c.clone())
            .collect();
        for client in expired {
            self.gone_since.remove(&client);
            self.sent.remove(&client);
            if let Some(keys) = self.subs_by_client.remove(&client) {
                for key in keys {
                    if let Some(set) = self.subs.get_mut(&key) {
                        set.remove(&client);
                        if set.is_empty() {
                            self.subs.remove(&key);
                        }
                    }
                }
            }
            tracing::debug!(client = %client, "forgot a client gone past the grace period");
        }
    }

    fn on_put(
        &mut self,
        conn: ConnId,
        sender: String,
        put: PutData,
        crdt: bool,
        ctx: &mut Context<Self>,
    ) {
        let crypto = self.crypto.clone();
        let storage = self.storage.clone();
        let pow = self.settings.pow;
        let PutData { id, to, data } = put;
        if crdt != data.crdt.is_some() {
            self.record_invalid(
                conn,
                &RecordError::InvalidData(format!(
                    "{} carries a record with c = {:?}",
                    if crdt { "crdtPut" } else { "put" },
                    data.crdt
                )),
            );
            return;
        }
        let durability = self.durability.clone();
        let fut = async move {
            let result = Self::verify_and_store(crypto, storage, data, pow, crdt).await;
            // Group commit: the write (or the stored winner it lost to) is
            // exposed only once a flush covers it.
            durability.synced().await;
            result
        };
        ctx.spawn(
            fut.into_actor(self)
                .map(move |res, act, _| act.after_put(res, conn, sender, id, to)),
        );
    }

    async fn verify_and_store(
        crypto: Addr<Crypto>,
        storage: Addr<Storage>,
        data: Record,
        pow: u32,
        crdt: bool,
    ) -> PutResult {
        {
            let record = match crypto.send(VerifyRecord { record: data, pow }).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => return PutResult::Invalid(e),
                Err(e) => return PutResult::Failed(format!("crypto pool: {e}")),
            };
            if crdt {
                match storage
                    .send(MergeCrdt {
                        record: record.clone(),
                    })
                    .await
                {
                    Ok(Ok(o)) => PutResult::Merged(o, record),
                    Ok(Err(e)) => PutResult::Failed(e.to_string()),
                    Err(e) => PutResult::Failed(format!("storage pool: {e}")),
                }
            } else {
                match storage.send(StoreRecord { record }).await {
                    Ok(Ok(o)) => PutResult::Stored(o),
                    Ok(Err(e)) => PutResult::Failed(e.to_string()),
                    Err(e) => PutResult::Failed(format!("storage pool: {e}")),
                }
            }
        }
    }

    fn after_put(
        &mut self,
        res: PutResult,
        conn: ConnId,
        sender: String,
        id: String,
        to: Vec<String>,
    ) {
        let act = self;
        match res {
            PutResult::Invalid(e) => act.record_invalid(conn, &e),
            PutResult::Stored(StoreOutcome::Won(record)) => {
                let skip = act.relay_to(&to, &sender);
                act.push_to_subscribers(&record, "put", &skip, &record.hash.clone());
                act.answer_pending(&id, &record);
                let relay = WireMessage::Put(PutData {
                    id,
                    to,
                    data: record.clone(),
                });
                act.relay_to_servers(&relay, &sender, Some(&record.hash));
            }
            PutResult::Stored(StoreOutcome::Lost { current }) => {
                act.answer_pending(&id, &current);
            }
            PutResult::Stored(StoreOutcome::Refused(e)) => {
                tracing::debug!(client = %sender, error = %e, "refused a write to a frozen key");
            }
            PutResult::Merged(CrdtOutcome::Merged(merged), incoming) => {
                let skip = act.relay_to(&to, &sender);
                // The merged text changes while its hash may not: dedupe on the text.
                let digest = sha256_hex(merged.raw().as_bytes());
                act.push_to_subscribers(&merged, "crdtPut", &skip, &digest);
                act.answer_pending(&id, &merged);
                let relay = WireMessage::CrdtPut(PutData {
                    id,
                    to,
                    data: incoming,
                });
                let relay_digest = sha256_hex(relay.to_text().as_bytes());
                act.relay_to_servers(&relay, &sender, Some(&relay_digest));
            }
            PutResult::Merged(CrdtOutcome::Unchanged { current }, _) => {
                act.answer_pending(&id, &current);
            }
            PutResult::Failed(e) => {
                tracing::error!(error = %e, "could not store a verified record")
            }
        }
    }

    /// Reads `key` durably (never a record a crash could still lose), then
    /// answers the request `id` directly with a `kind` frame if it is
    /// stored (a direct answer is always sent, even if this hash went
    /// before), or calls `missing` if it is not.
    fn read_and_answer(
        &mut self,
        conn: ConnId,
        sender: String,
        req: &KeyRequest,
        kind: &'static str,
        missing: impl FnOnce(&mut Hub) + 'static,
        ctx: &mut Context<Self>,
    ) {
        let storage = self.storage.clone();
        let durability = self.durability.clone();
        let (key, id) = (req.key.clone(), req.id.clone());
        ctx.spawn(
            async move {
                let read = storage.send(GetRecord { key }).await;
                durability.synced().await;
                read
            }
            .into_actor(self)
            .map(move |res, act, _| match res {
                Ok(Ok(Some(record))) => {
                    act.mark_sent(&sender, &record.hash);
                    let text = record_frame(kind, &id, act.own_to(), &record);
                    act.send_to_conn(conn, text.into());
                }
                Ok(Ok(None)) => missing(act),
                Ok(Err(e)) => tracing::error!(error = %e, "read failed"),
                Err(e) => tracing::error!(error = %e, "storage pool unreachable"),
            }),
        );
    }

    fn on_get(
        &mut self,
        conn: ConnId,
        sender: String,
        req: KeyRequest,
        crdt: bool,
        ctx: &mut Context<Self>,
    ) {
        // A Tool Db client resolves getData only with a put, getCrdt only
        // with a crdtPut (see `Pending`).
        let kind = if crdt { "crdtPut" } else { "put" };
        let (asked, asker) = (req.clone(), sender.clone());
        let missing = move |act: &mut Hub| {
            let now = Instant::now();
            let deadline = now + Duration::from_millis(act.settings.limits.pending_request_ms);
            let pending = Pending {
                requester: asker.clone(),
                answer_kind: kind,
            };
            act.pending.insert(req.id.clone(), pending, deadline, now);
            let msg = if crdt {
                WireMessage::CrdtGet(req)
            } else {
                WireMessage::Get(req)
            };
            act.relay_to_servers(&msg, &asker, None);
        };
        self.read_and_answer(conn, sender, &asked, kind, missing, ctx);
    }

    fn on_subscribe(
        &mut self,
        conn: ConnId,
        sender: String,
        req: KeyRequest,
        ctx: &mut Context<Self>,
    ) {
        self.subs
            .entry(req.key.clone())
            .or_default()
            .insert(sender.clone());
        self.subs_by_client
            .entry(sender.clone())
            .or_default()
            .insert(req.key.clone());
        // Tool Db answers a subscribe with a `put` whatever the record.
        self.read_and_answer(conn, sender, &req, "put", |_| {}, ctx);
    }

    fn on_query(&mut self, conn: ConnId, sender: String, req: KeyRequest, ctx: &mut Context<Self>) {
        let storage = self.storage.clone();
        let prefix = req.key.clone();
        let limit = self.settings.limits.query_max_keys;
        let relay = WireMessage::Query(req.clone());
        self.relay_to_servers(&relay, &sender, None);
        ctx.spawn(
            async move { storage.send(QueryKeys { prefix, limit }).await }
                .into_actor(self)
                .map(move |res, act, _| match res {
                    Ok(Ok(keys)) => {
                        let ack = WireMessage::QueryAck(QueryAck {
                            id: req.id,
                            to: act.own_to(),
                            keys,
                        });
                        act.send_to_conn(conn, ack.to_text().into());
                    }
                    Ok(Err(e)) => tracing::error!(error = %e, "query failed"),
                    Err(e) => tracing::error!(error = %e, "storage pool unreachable"),
                }),
        );
    }

    fn on_function(&mut self, conn: ConnId, call: FunctionCall) {
        let (code, value) = match self.functions.get(call.function.as_str()) {
            Some(f) => match f(self, &call.args) {
                Ok(v) => ("OK", v),
                Err(e) => ("ERR", Value::String(e)),
            },
            None => (
                "NOT_FOUND",
                Value::String(format!("no server function {:?}", call.function)),
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

    /// Starts a reconciliation with a server of ours, if we are the side
    /// that starts (the smaller address, so only one side does).
    fn maybe_reconcile(&mut self, conn: ConnId, ctx: &mut Context<Self>) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let starts = c.reconcile
            && c.address
                .as_deref()
                .is_some_and(|a| self.settings.address.as_str() < a);
        if !starts {
            return;
        }
        let storage = self.storage.clone();
        ctx.spawn(
            async move { storage.send(ReconcileStart).await }
                .into_actor(self)
                .map(move |res, act, _| match res {
                    Ok(Ok(step)) => act.send_reconcile(conn, step),
                    Ok(Err(e)) => tracing::error!(error = %e, "cannot start a reconciliation"),
                    Err(e) => tracing::error!(error = %e, "storage pool unreachable"),
                }),
        );
    }

    fn send_reconcile(&self, conn: ConnId, step: crate::reconcile::Step) {
        let msg = WireMessage::Reconcile(Reconcile {
            id: new_message_id(),
            to: self.own_to(),
            step,
        });
        self.send_to_conn(conn, msg.to_text().into());
    }

    /// Answers a reconciliation step from a server of ours: replies, and the
    /// records it lacks, sent as ordinary puts (it verifies them like any).
    fn on_reconcile(&mut self, conn: ConnId, msg: Reconcile, ctx: &mut Context<Self>) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        if !c.reconcile {
            tracing::debug!(client = %c.client_id, "ignored a reconcile step from a peer that did not offer it");
            return;
        }
        let storage = self.storage.clone();
        let durability = self.durability.clone();
        let max_records = self.settings.reconcile_max_records;
        ctx.spawn(
            async move {
                let answer = storage
                    .send(ReconcileStep {
                        step: msg.step,
                        max_records,
                    })
                    .await;
                durability.synced().await;
                answer
            }
            .into_actor(self)
            .map(move |res, act, _| match res {
                Ok(Ok(answer)) => {
                    if !answer.records.is_empty() {
                        tracing::debug!(
                            conn,
                            records = answer.records.len(),
                            "reconcile: sending records"
                        );
                    }
                    let client = act.conns.get(&conn).map(|c| c.client_id.clone());
                    for record in answer.records {
                        let kind = if record.crdt.is_some() {
                            "crdtPut"
                        } else {
                            "put"
                        };
                        if let Some(client) = &client {
                            act.mark_sent(client, &record.hash);
                        }
                        let text = record_frame(kind, &new_message_id(), act.own_to(), &record);
                        act.send_to_conn(conn, text.into());
                    }
                    for step in answer.reply {
                        act.send_reconcile(conn, step);
                    }
                }
                Ok(Err(e)) => tracing::error!(error = %e, "reconcile step failed"),
                Err(e) => tracing::error!(error = %e, "storage pool unreachable"),
            }),
        );
    }

    fn on_pong(&mut self, pong: Pong, ctx: &mut Context<Self>) {
        let crypto = self.crypto.clone();
        let topic = self.settings.topic.clone();
        ctx.spawn(
            async move {
                crypto
                    .send(VerifyServers {
                        servers: pong.servers,
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
            }),
        );
    }
}

/// `{"type":kind,"id":id,"to":[..],"data":record}` with the record's raw text.
fn record_frame(kind: &str, id: &str, to: Vec<String>, record: &Record) -> String {
    let msg = PutData {
        id: id.to_owned(),
        to,
        data: record.clone(),
    };
    match kind {
        "crdtPut" => WireMessage::CrdtPut(msg),
        _ => WireMessage::Put(msg),
    }
    .to_text()
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
        ctx.run_interval(CLEANUP_EVERY, |act, _| act.cleanup());
        // (ForgetGoneClients runs the same cleanup on demand.)
        let every = Duration::from_secs(self.settings.reconcile_every_secs.max(1));
        ctx.run_interval(every, |act, ctx| {
            let conns: Vec<ConnId> = act.conns.keys().copied().collect();
            for conn in conns {
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
                let pong = self.pong_frame(ping_id);
                msg.handle.send.do_send(SendFrame { text: pong.into() });
            }
            msg.handle.close.do_send(CloseConnection {
                reason: "this is the same node: refusing a connection to itself".into(),
            });
            return;
        }
        tracing::info!(
            client = %msg.client_id,
            server = msg.is_server,
            outbound = msg.outbound,
            "peer identified"
        );
        if msg.is_server {
            if let Some(peer) = msg.peer.clone() {
                self.learn_server(peer);
            }
        }
        for peer in &msg.servers {
            self.learn_server(peer.clone());
        }
        self.report_listed(msg.servers);
        if let (true, Some(peer), Some(r)) = (msg.is_server, &msg.peer, &self.registry) {
            r.connected.do_send(ServerConnected {
                conn: msg.conn,
                outbound: msg.outbound,
                endpoint: msg.dialed.clone(),
                peer: peer.clone(),
            });
        }
        self.gone_since.remove(&msg.client_id);
        // A peer that pings again may have lost what it had (Tool Db resets too).
        self.sent.remove(&msg.client_id);
        self.by_client.insert(msg.client_id.clone(), msg.conn);
        if msg.is_server {
            self.connected_servers.insert(msg.client_id.clone());
        } else {
            self.connected_servers.remove(&msg.client_id);
        }
        self.conns.insert(
            msg.conn,
            Conn {
                handle: msg.handle,
                client_id: msg.client_id,
                address: msg
                    .peer
                    .as_ref()
                    .filter(|_| msg.is_server)
                    .map(|p| p.address.clone()),
                reconcile: msg.is_server && msg.reconcile,
                is_server: msg.is_server,
                outbound: msg.outbound,
                invalid_records: 0,
            },
        );
        if let Some(ping_id) = msg.ping_id {
            self.send_pong(msg.conn, &ping_id);
        }
        self.maybe_reconcile(msg.conn, ctx);
    }
}

impl Handler<FrameReceived> for Hub {
    type Result = ();
    fn handle(&mut self, msg: FrameReceived, ctx: &mut Self::Context) {
        let Some(conn) = self.conns.get(&msg.conn) else {
            return;
        };
        let sender = conn.client_id.clone();
        let m = msg.msg;
        let repeatable = matches!(m, WireMessage::Ping(_) | WireMessage::Pong(_));
        if !repeatable && !self.processed.insert((m.kind(), m.id().to_owned())) {
            return;
        }
        match m {
            WireMessage::Ping(p) => self.send_pong(msg.conn, &p.id),
            WireMessage::Pong(p) => self.on_pong(p, ctx),
            WireMessage::Put(p) => self.on_put(msg.conn, sender, p, false, ctx),
            WireMessage::CrdtPut(p) => self.on_put(msg.conn, sender, p, true, ctx),
            WireMessage::Get(r) => self.on_get(msg.conn, sender, r, false, ctx),
            WireMessage::CrdtGet(r) => self.on_get(msg.conn, sender, r, true, ctx),
            WireMessage::Subscribe(r) => self.on_subscribe(msg.conn, sender, r, ctx),
            WireMessage::Query(r) => self.on_query(msg.conn, sender, r, ctx),
            WireMessage::Function(f) => self.on_function(msg.conn, f),
            WireMessage::Reconcile(r) => self.on_reconcile(msg.conn, r, ctx),
            // Answers to queries we relayed: our own answer went already.
            WireMessage::QueryAck(_) | WireMessage::FunctionReturn(_) => {}
        }
    }
}

impl Handler<ConnectionClosed> for Hub {
    type Result = ();
    fn handle(&mut self, msg: ConnectionClosed, _: &mut Self::Context) {
        let Some(conn) = self.conns.remove(&msg.conn) else {
            return;
        };
        if self.by_client.get(&conn.client_id) == Some(&msg.conn) {
            // The peer may still hold another link: the survivor of a
            // duplicate pair, identified before the one closing now. Point
            // the index at it, or relays stop while /peers says connected
            // (found by the chaos harness). A scan, but only on a close.
            let survivor = self
                .conns
                .iter()
                .find(|(_, c)| c.client_id == conn.client_id)
                .map(|(id, c)| (*id, c.is_server));
            match survivor {
                Some((id, is_server)) => {
                    self.by_client.insert(conn.client_id.clone(), id);
                    if is_server {
                        self.connected_servers.insert(conn.client_id.clone());
                    }
                }
                None => {
                    self.by_client.remove(&conn.client_id);
                    self.connected_servers.remove(&conn.client_id);
                    self.gone_since
                        .insert(conn.client_id.clone(), Instant::now());
                }
            }
        }
        tracing::info!(client = %conn.client_id, server = conn.is_server, outbound = conn.outbound, "connection closed");
        if let (Some(address), Some(r)) = (conn.address, &self.registry) {
            r.disconnected.do_send(ServerDisconnected {
                conn: msg.conn,
                address,
            });
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
        if let Some(c) = self.conns.get(&msg.conn) {
            c.handle
                .close
                .do_send(CloseConnection { reason: msg.reason });
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
        for c in self.conns.values() {
            c.handle.close.do_send(CloseConnection {
                reason: msg.reason.clone(),
            });
        }
    }
}

impl Handler<GetSelfPeer> for Hub {
    type Result = MessageResult<GetSelfPeer>;
    fn handle(&mut self, _: GetSelfPeer, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.self_peer.clone())
    }
}

impl Handler<GetPeers> for Hub {
    type Result = MessageResult<GetPeers>;
    fn handle(&mut self, _: GetPeers, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.snapshot())
    }
}

#[cfg(test)]
mod tests {
    //! The hub driven directly with fake connections: no sockets.
    use super::*;
    use crate::config::Limits;
    use crate::crypto::{KeyScheme, NodeKey};
    use crate::record::{now_ms, sign_record};
    use std::sync::Mutex;

    /// A connection that records what the hub sends it.
    struct FakeConn {
        frames: Arc<Mutex<Vec<Value>>>,
        closed: Arc<Mutex<Option<String>>>,
    }
    impl Actor for FakeConn {
        type Context = Context<Self>;
    }
    impl Handler<SendFrame> for FakeConn {
        type Result = ();
        fn handle(&mut self, m: SendFrame, _: &mut Context<Self>) {
            self.frames
                .lock()
                .unwrap()
                .push(serde_json::from_str(&m.text).unwrap());
        }
    }
    impl Handler<CloseConnection> for FakeConn {
        type Result = ();
        fn handle(&mut self, m: CloseConnection, _: &mut Context<Self>) {
            *self.closed.lock().unwrap() = Some(m.reason);
        }
    }

    struct Fake {
        conn: ConnId,
        frames: Arc<Mutex<Vec<Value>>>,
        closed: Arc<Mutex<Option<String>>>,
        handle: ConnHandle,
    }

    impl Fake {
        fn new() -> Fake {
            let frames = Arc::new(Mutex::new(vec![]));
            let closed = Arc::new(Mutex::new(None));
            let addr = FakeConn {
                frames: frames.clone(),
                closed: closed.clone(),
            }
            .start();
            Fake {
                conn: next_conn_id(),
                frames,
                closed,
                handle: ConnHandle::of(&addr),
            }
        }

        fn identify(&self, hub: &Addr<Hub>, client_id: &str, peer: Option<Peer>) {
            hub.do_send(ConnectionIdentified {
                conn: self.conn,
                handle: self.handle.clone(),
                client_id: client_id.into(),
                is_server: peer.is_some(),
                peer,
                outbound: false,
                dialed: None,
                reconcile: false,
                ping_id: Some("ping".into()),
                servers: vec![],
            });
        }

        async fn wait(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
            for _ in 0..500 {
                if let Some(v) = self.frames.lock().unwrap().iter().find(|v| pred(v)) {
                    return v.clone();
                }
                actix_rt::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("no {what}: got {:?}", self.frames.lock().unwrap());
        }

        fn count(&self, pred: impl Fn(&Value) -> bool) -> usize {
            self.frames
                .lock()
                .unwrap()
                .iter()
                .filter(|v| pred(v))
                .count()
        }
    }

    struct Setup {
        hub: Addr<Hub>,
        key: Arc<NodeKey>,
        _dir: tempfile::TempDir,
    }

    fn setup() -> Setup {
        setup_with(Limits::default())
    }

    fn setup_with(limits: Limits) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let st = Storage::new(db, false).unwrap();
        let storage = SyncArbiter::start(1, move || st.clone());
        let key = Arc::new(NodeKey::generate(KeyScheme::Secp256k1));
        let k = key.clone();
        let crypto = SyncArbiter::start(1, move || Crypto::new(k.clone()));
        let settings = HubSettings {
            topic: "t".into(),
            address: key.address().into(),
            client_id: key.client_id().into(),
            host: "127.0.0.1".into(),
            port: 1,
            pow: 0,
            limits,
            reconcile_every_secs: 60,
            reconcile_max_records: 1000,
        };
        let me = Peer::sign(&key, "t", "127.0.0.1", 1, now_ms());
        let hub = Hub::new(settings, storage, crypto, me).start();
        Setup {
            hub,
            key,
            _dir: dir,
        }
    }

    fn put_frame(id: &str, to: Vec<String>, record: &Record) -> FrameReceived {
        FrameReceived {
            conn: 0,
            msg: WireMessage::Put(PutData {
                id: id.into(),
                to,
                data: record.clone(),
            }),
        }
    }

    #[actix::test]
    async fn a_put_reaches_subscribers_and_servers_not_in_to() {
        let s = setup();
        let writer = Fake::new();
        let sub = Fake::new();
        let server = Fake::new();
        let server_in_to = Fake::new();
        writer.identify(&s.hub, "writer", None);
        sub.identify(&s.hub, "sub", None);
        let k1 = NodeKey::generate(KeyScheme::P256);
        let k2 = NodeKey::generate(KeyScheme::P256);
        server.identify(
            &s.hub,
            k1.client_id(),
            Some(Peer::sign(&k1, "t", "h", 2, now_ms())),
        );
        server_in_to.identify(
            &s.hub,
            k2.client_id(),
            Some(Peer::sign(&k2, "t", "h", 3, now_ms())),
        );
        s.hub.do_send(FrameReceived {
            conn: sub.conn,
            msg: WireMessage::Subscribe(KeyRequest {
                id: "s1".into(),
                to: vec![],
                key: "k".into(),
            }),
        });
        let rec = sign_record(
            &NodeKey::generate(KeyScheme::P256),
            "k",
            &json!(1),
            now_ms(),
        );
        let mut frame = put_frame("p1", vec!["writer".into(), k2.client_id().into()], &rec);
        frame.conn = writer.conn;
        s.hub.do_send(frame);

        let push = sub.wait("push", |v| v["type"] == "put").await;
        assert_ne!(push["id"], "p1", "a push carries a fresh id");
        assert_eq!(push["data"]["h"], rec.hash.as_str());
        let relayed = server.wait("relay", |v| v["type"] == "put").await;
        assert_eq!(relayed["id"], "p1", "a relay keeps the id, for dedupe");
        let to: Vec<String> = serde_json::from_value(relayed["to"].clone()).unwrap();
        assert!(to.contains(&"writer".to_string()) && to.contains(&s.key.client_id().to_string()));
        // The server already in `to` and the writer get nothing.
        server.wait("pong", |v| v["type"] == "pong").await;
        assert_eq!(server_in_to.count(|v| v["type"] == "put"), 0);
        assert_eq!(writer.count(|v| v["type"] == "put"), 0);
    }

    /// Regression (chaos harness, seed 3): a server whose duplicate link
    /// was identified after the surviving one, then closed, dropped out of
    /// the relay index although its first link stayed up.
    #[actix::test]
    async fn closing_a_duplicate_link_keeps_relaying_on_the_survivor() {
        let s = setup();
        let k = NodeKey::generate(KeyScheme::P256);
        let kept = Fake::new();
        let duplicate = Fake::new();
        let peer = || Some(Peer::sign(&k, "t", "h", 2, now_ms()));
        kept.identify(&s.hub, k.client_id(), peer());
        duplicate.identify(&s.hub, k.client_id(), peer());
        duplicate.wait("pong", |v| v["type"] == "pong").await;
        s.hub.do_send(ConnectionClosed {
            conn: duplicate.conn,
        });
        let writer = Fake::new();
        writer.identify(&s.hub, "writer", None);
        let rec = sign_record(
            &NodeKey::generate(KeyScheme::P256),
            "k",
            &json!(1),
            now_ms(),
        );
        let mut frame = put_frame("p1", vec![], &rec);
        frame.conn = writer.conn;
        s.hub.do_send(frame);
        let relayed = kept
            .wait("relay on the survivor", |v| v["type"] == "put")
            .await;
        assert_eq!(relayed["data"]["h"], rec.hash.as_str());
    }

    #[actix::test]
    async fn a_connection_to_ourselves_is_closed() {
        let s = setup();
        let me = Fake::new();
        me.identify(
            &s.hub,
            s.key.client_id(),
            Some(Peer::sign(&s.key, "t", "h", 1, now_ms())),
        );
        for _ in 0..200 {
            if me.closed.lock().unwrap().is_some() {
                break;
            }
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(me
            .closed
            .lock()
            .unwrap()
            .as_deref()
            .unwrap_or("")
            .contains("itself"));
        // The pong went first: our own dialer learns from it that this endpoint is us.
        let pong = me.wait("pong", |v| v["type"] == "pong").await;
        assert_eq!(pong["clientId"], s.key.client_id());
        let snap = s.hub.send(GetPeers).await.unwrap();
        assert!(snap.servers.is_empty() && snap.connected.is_empty());
    }

    #[actix::test]
    async fn a_subscription_follows_the_client_to_its_new_connection() {
        let s = setup();
        let old = Fake::new();
        old.identify(&s.hub, "c", None);
        s.hub.do_send(FrameReceived {
            conn: old.conn,
            msg: WireMessage::Subscribe(KeyRequest {
                id: "s".into(),
                to: vec![],
                key: "k".into(),
            }),
        });
        s.hub.do_send(ConnectionClosed { conn: old.conn });
        let new = Fake::new();
        new.identify(&s.hub, "c", None);
        let writer = Fake::new();
        writer.identify(&s.hub, "w", None);
        let rec = sign_record(
            &NodeKey::generate(KeyScheme::P256),
            "k",
            &json!(2),
            now_ms(),
        );
        let mut frame = put_frame("p", vec![], &rec);
        frame.conn = writer.conn;
        s.hub.do_send(frame);
        new.wait("push on the new connection", |v| v["type"] == "put")
            .await;
        assert_eq!(old.count(|v| v["type"] == "put"), 0);
    }

    #[actix::test]
    async fn subscriptions_of_clients_gone_past_the_grace_period_are_dropped() {
        let s = setup_with(Limits {
            subscription_grace_secs: 0,
            ..Limits::default()
        });
        let old = Fake::new();
        old.identify(&s.hub, "c", None);
        s.hub.do_send(FrameReceived {
            conn: old.conn,
            msg: WireMessage::Subscribe(KeyRequest {
                id: "s".into(),
                to: vec![],
                key: "k".into(),
            }),
        });
        s.hub.do_send(ConnectionClosed { conn: old.conn });
        s.hub.do_send(ForgetGoneClients);
        let new = Fake::new();
        new.identify(&s.hub, "c", None);
        let writer = Fake::new();
        writer.identify(&s.hub, "w", None);
        let rec = sign_record(
            &NodeKey::generate(KeyScheme::P256),
            "k",
            &json!(3),
            now_ms(),
        );
        let mut frame = put_frame("p", vec![], &rec);
        frame.conn = writer.conn;
        s.hub.do_send(frame);
        // The put is stored (a get answers it) but not pushed: the subscription is gone.
        for i in 0..200 {
            if new.count(|v| v["id"].as_str().is_some_and(|id| id.starts_with("get-"))) > 0 {
                break;
            }
            s.hub.do_send(FrameReceived {
                conn: new.conn,
                msg: WireMessage::Get(KeyRequest {
                    id: format!("get-{i}"),
                    to: vec![],
                    key: "k".into(),
                }),
            });
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
        new.wait("a get's answer", |v| {
            v["id"].as_str().is_some_and(|id| id.starts_with("get-"))
        })
        .await;
        let pushes =
            new.count(|v| v["type"] == "put" && !v["id"].as_str().unwrap().starts_with("get-"));
        assert_eq!(pushes, 0);
    }

    #[actix::test]
    async fn a_relayed_get_is_answered_to_the_client_that_asked() {
        let s = setup();
        let client = Fake::new();
        client.identify(&s.hub, "asker", None);
        let k = NodeKey::generate(KeyScheme::P256);
        let server = Fake::new();
        server.identify(
            &s.hub,
            k.client_id(),
            Some(Peer::sign(&k, "t", "h", 2, now_ms())),
        );
        s.hub.do_send(FrameReceived {
            conn: client.conn,
            msg: WireMessage::Get(KeyRequest {
                id: "g1".into(),
                to: vec![],
                key: "far".into(),
            }),
        });
        let relayed = server.wait("relayed get", |v| v["type"] == "get").await;
        assert_eq!(relayed["id"], "g1");
        // The server answers with a put carrying the get's id.
        let rec = sign_record(
            &NodeKey::generate(KeyScheme::P256),
            "far",
            &json!("x"),
            now_ms(),
        );
        let mut answer = put_frame("g1", vec![k.client_id().into()], &rec);
        answer.conn = server.conn;
        s.hub.do_send(answer);
        let got = client.wait("answer", |v| v["id"] == "g1").await;
        assert_eq!(got["type"], "put");
        assert_eq!(got["data"]["v"], "x");
    }
}

//! The client half: a Rust Tool Db client that finds servers, keeps a few
//! of them connected and uses the database through them, verifying every
//! record it receives.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tooldb_node::client::ClientError> {
//! use tooldb_node::client::Client;
//! let client = Client::builder()
//!     .topic("tool-db-default")
//!     .peers(["127.0.0.1:9000"])
//!     .key_file("client-key.json")
//!     .connect()
//!     .await?;
//! client.put("greeting", serde_json::json!("hello")).await?;
//! let record = client.get("greeting").await?;
//! # Ok(()) }
//! ```
//!
//! Map of the module:
//! - `Client` / `ClientBuilder` (here): the handle applications hold;
//! - `core::ClientCore`: the actor holding the protocol state;
//! - `connection::ServerConnection`: one actor per server websocket;
//! - `book::ServerBook`: which servers to dial (plain logic);
//! - `messages`: what those actors exchange.
//!
//! Servers are found from static `peers`, from each server's `pong`
//! (its verified `servers` list), from a passive DHT lookup when
//! `dht_bootstrap`/`public_dht` is set, from mDNS announcements on the LAN
//! when `lan` is set, from WebTorrent trackers' offers when `trackers` is
//! set (by topic, and by `server_name`), and from any other source through
//! `Client::endpoints_recipient` (batches of `EndpointsFound`).
//!
//! Must run inside an actix system (`actix::System`, `#[actix::test]`).

pub mod book;
pub mod connection;
pub mod core;
pub mod messages;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};

use crate::actors::dht_channel::{DhtChannel, DhtSettings};
use crate::actors::lan::{LanChannel, LanSettings};
use crate::actors::tracker_channel::{TrackerChannel, TrackerSettings};
use crate::crdt;
use crate::crypto::{KeyScheme, NodeKey, NodeKeyError};
use crate::messages::dht::{EndpointsFound, JoinTopic};
use crate::peer::Peer;
use crate::record::{check_key, now_ms, sign_record_with, wins, CrdtKind, Record, RecordError};

use self::book::{Backoff, Endpoint};
use self::core::{ClientCore, CoreSettings};
pub use self::messages::BadServer;
use self::messages::{
    GetBadServers, GetConnectedServers, Publish, Request, RequestKind, RequestOutcome, Shutdown,
    Subscribe, WaitConnected,
};

/// Servers kept connected by default.
pub const DEFAULT_CONNECTIONS: usize = 2;
/// How long `connect` (and each operation) waits for a first server.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request waits for servers that have not answered. A get of
/// a key no server holds takes this long (servers do not answer it).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Wait per confirmation get after a put.
const CONFIRM_TRY: Duration = Duration::from_millis(500);
/// Confirmation gets before a put is sent again.
const CONFIRM_TRIES_PER_SEND: u32 = 3;
/// Updates buffered per subscription before new ones are dropped.
pub const SUBSCRIPTION_BUFFER: usize = 1024;
/// First redial delay of a failing server.
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_millis(250);
/// Cap of the redial delay.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Hyperswarm(#[from] crate::hyperswarm::HyperswarmError),
    #[error("no Tool Db server found within {} s (topic {topic:?}, static peers {peers:?}, DHT: {dht}, trackers {trackers:?})", timeout.as_secs_f64())]
    NoServer {
        timeout: Duration,
        topic: String,
        peers: Vec<String>,
        dht: String,
        trackers: Vec<String>,
    },
    #[error("bad server address {0:?}: expected HOST:PORT")]
    BadPeer(String),
    #[error(transparent)]
    BadTracker(#[from] crate::tracker::TrackerError),
    #[error(transparent)]
    Key(#[from] NodeKeyError),
    #[error("key {key:?} cannot be written by this identity: {source}")]
    InvalidKey { key: String, source: RecordError },
    #[error("no server confirmed the write of {key:?} within {} s", timeout.as_secs_f64())]
    NotConfirmed { key: String, timeout: Duration },
    #[error("no server answered the call of {name:?} within {} s", timeout.as_secs_f64())]
    NoAnswer { name: String, timeout: Duration },
    #[error("the client has stopped")]
    Stopped,
}

impl From<MailboxError> for ClientError {
    fn from(_: MailboxError) -> Self {
        ClientError::Stopped
    }
}

enum Identity {
    Generate,
    File(PathBuf),
    Key(Arc<NodeKey>),
}

/// Configures and starts a `Client`.
pub struct ClientBuilder {
    topic: String,
    peers: Vec<String>,
    dht: Option<Vec<String>>,
    lan: bool,
    trackers: Vec<String>,
    server_name: Option<String>,
    /// HyperDHT bootstrap nodes (empty: the public ones), when on.
    hyperswarm: Option<Vec<String>>,
    identity: Identity,
    scheme: KeyScheme,
    connections: usize,
    pow: u32,
    connect_timeout: Duration,
    request_timeout: Duration,
    backoff: Backoff,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            topic: crate::config::Config::default().topic,
            peers: vec![],
            dht: None,
            lan: false,
            trackers: vec![],
            server_name: None,
            hyperswarm: None,
            identity: Identity::Generate,
            scheme: KeyScheme::default(),
            connections: DEFAULT_CONNECTIONS,
            pow: 0,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            backoff: Backoff {
                initial: DEFAULT_BACKOFF_INITIAL,
                max: DEFAULT_BACKOFF_MAX,
            },
        }
    }
}

impl ClientBuilder {
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = topic.into();
        self
    }

    /// Static servers, `HOST:PORT` (also `ws://HOST:PORT`).
    pub fn peers<I: IntoIterator<Item = S>, S: Into<String>>(mut self, peers: I) -> Self {
        self.peers.extend(peers.into_iter().map(Into::into));
        self
    }

    /// Look servers up on the DHT reached through these bootstrap nodes
    /// (`HOST:PORT`), passively: the client never announces.
    pub fn dht_bootstrap<I: IntoIterator<Item = S>, S: Into<String>>(mut self, nodes: I) -> Self {
        self.dht
            .get_or_insert_with(Vec::new)
            .extend(nodes.into_iter().map(Into::into));
        self
    }

    /// Also find the servers of the topic announced on the LAN (mDNS,
    /// `LanChannel`); off unless asked.
    pub fn lan(mut self) -> Self {
        self.lan = true;
        self
    }

    /// Find servers on these WebTorrent websocket trackers (`ws://` or
    /// `wss://`) as Tool Db's hybrid adapter's `findServer` does: under the
    /// topic's name (`tracker::topic_server_name`), and under
    /// `server_name` if set. Offered servers are dialed and verified like
    /// any endpoint.
    pub fn trackers<I: IntoIterator<Item = S>, S: Into<String>>(mut self, urls: I) -> Self {
        self.trackers.extend(urls.into_iter().map(Into::into));
        self
    }

    /// On the trackers, also look for the server announced under `name`.
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Also find servers on Hyperswarm: look `sha256(topic)` up on the
    /// HyperDHT through these bootstrap nodes (none: the public ones),
    /// without announcing, and speak Tool Db over the connections.
    pub fn hyperswarm<I: IntoIterator<Item = S>, S: Into<String>>(mut self, nodes: I) -> Self {
        self.hyperswarm
            .get_or_insert_with(Vec::new)
            .extend(nodes.into_iter().map(Into::into));
        self
    }

    /// Look servers up on the public Mainline DHT.
    pub fn public_dht(mut self) -> Self {
        self.dht.get_or_insert_with(Vec::new);
        self
    }

    /// Sign with this key.
    pub fn identity(mut self, key: NodeKey) -> Self {
        self.scheme = key.scheme();
        self.identity = Identity::Key(Arc::new(key));
        self
    }

    /// Sign with the key in this file, created (mode 0600) if missing.
    pub fn key_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.identity = Identity::File(path.into());
        self
    }

    /// Scheme of a generated or created key (secp256k1 by default).
    pub fn key_scheme(mut self, scheme: KeyScheme) -> Self {
        self.scheme = scheme;
        self
    }

    /// Servers kept connected (default 2, at least 1).
    pub fn connections(mut self, n: usize) -> Self {
        self.connections = n.max(1);
        self
    }

    /// Proof of work: leading zeros of `h` in the records we sign, and
    /// required of the records we receive.
    pub fn pow(mut self, zeros: u32) -> Self {
        self.pow = zeros;
        self
    }

    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    pub fn request_timeout(mut self, t: Duration) -> Self {
        self.request_timeout = t;
        self
    }

    /// Redial delays of a failing server: doubling from `initial`, capped.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff = Backoff { initial, max };
        self
    }

    /// Starts the client without waiting for a server.
    pub fn start(self) -> Result<Client, ClientError> {
        let mut endpoints = Vec::new();
        for p in &self.peers {
            let endpoint = Endpoint::parse(p).map_err(|_| ClientError::BadPeer(p.clone()))?;
            if p.trim().starts_with("wss://") {
                crate::transport::remember_scheme(&endpoint, true);
            }
            endpoints.push(endpoint);
        }
        let key = match self.identity {
            Identity::Generate => Arc::new(NodeKey::generate(self.scheme)),
            Identity::File(path) => Arc::new(NodeKey::load_or_create(&path, self.scheme)?),
            Identity::Key(k) => k,
        };
        let settings = CoreSettings {
            topic: self.topic.clone(),
            connections: self.connections,
            pow: self.pow,
            backoff: self.backoff,
            handshake_timeout: self.connect_timeout.min(Duration::from_secs(10)),
        };
        let topic = self.topic.clone();
        let dht = self.dht.clone();
        let tracker_urls = crate::server::tracker_urls(&self.trackers)?;
        let mut hashes = vec![crate::tracker::info_hash(
            &crate::tracker::topic_server_name(&self.topic),
        )];
        if let Some(name) = &self.server_name {
            hashes.push(crate::tracker::info_hash(name));
        }
        let hyperswarm =
            self.hyperswarm
                .clone()
                .map(|bootstrap| crate::hyperswarm::HyperswarmSettings {
                    bootstrap,
                    host: "0.0.0.0".into(),
                    port: 0,
                    firewalled: true,
                    max_peers: self.connections.max(1) * 4,
                    server: false,
                    client: true,
                    max_message_bytes: connection::MAX_FRAME_BYTES,
                });
        let lan = self.lan.then(|| LanSettings {
            topic: self.topic.clone(),
            announce: None,
        });
        // A fresh peer identity per instance, as Tool Db's clients have:
        // the user's key signs records only. Sharing it made two clients
        // of one key one `clientId`, and a server skips the ids in a put's
        // `to` list when pushing, so a `watch` missed the other's writes.
        let peer_key = Arc::new(NodeKey::generate(KeyScheme::default()));
        let peer_id = crate::tracker::peer_id_of(peer_key.client_id());
        if let Some(hs) = &hyperswarm {
            crate::hyperswarm::check_bootstrap(&hs.bootstrap)?;
        }
        let core = ClientCore::create(move |ctx| {
            let mut core = ClientCore::new(settings, peer_key, endpoints);
            for url in tracker_urls {
                let s = TrackerSettings::new(url, hashes.clone(), peer_id.clone());
                core = core.with_tracker(TrackerChannel::supervised(
                    s,
                    Some(ctx.address().recipient()),
                ));
            }
            if let Some(hs) = hyperswarm {
                let me = ctx.address();
                let started = crate::hyperswarm::Engine::start(hs, &topic, move |link| {
                    me.do_send(self::core::HyperswarmLinked(link))
                });
                match started {
                    Ok(engine) => core = core.with_hyperswarm(engine),
                    Err(e) => tracing::warn!(error = %e, "no Hyperswarm"),
                }
            }
            if let Some(lan) = lan {
                core = core.with_lan(LanChannel::supervised(lan, ctx.address().recipient()));
            }
            match dht {
                Some(bootstrap) => {
                    let ch = DhtChannel::supervised(
                        DhtSettings {
                            bootstrap,
                            port: Some(0),
                            bind: Ipv4Addr::UNSPECIFIED,
                            ..DhtSettings::default()
                        },
                        ctx.address().recipient(),
                    );
                    // Passive: look the topic up, never announce.
                    ch.do_send(JoinTopic { topic, port: None });
                    core.with_dht(ch)
                }
                None => core,
            }
        });
        Ok(Client {
            core,
            key,
            info: Arc::new(ClientInfo {
                topic: self.topic,
                peers: self.peers,
                trackers: self.trackers,
                dht: self.dht,
                pow: self.pow,
                connect_timeout: self.connect_timeout,
                request_timeout: self.request_timeout,
            }),
        })
    }

    /// Starts the client and waits (up to the connect timeout) until a
    /// server is connected.
    pub async fn connect(self) -> Result<Client, ClientError> {
        let client = self.start()?;
        match client.wait_connected(client.info.connect_timeout).await {
            Ok(()) => Ok(client),
            Err(e) => {
                client.close();
                Err(e)
            }
        }
    }
}

struct ClientInfo {
    topic: String,
    peers: Vec<String>,
    trackers: Vec<String>,
    dht: Option<Vec<String>>,
    pow: u32,
    connect_timeout: Duration,
    request_timeout: Duration,
}

/// A MAP CRDT as the servers hold it.
#[derive(Debug, Clone)]
pub struct MapState {
    /// The newest verified record of the key (its `v` as that server had it).
    pub record: Record,
    /// The union of the changes of every server's answer.
    pub changes: Vec<Value>,
    /// The map those changes make (Tool Db's `MapCrdt` rules).
    pub value: Map<String, Value>,
}

/// What a server function returned.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FunctionResult {
    /// `OK`, `ERR` or `NOT_FOUND`.
    pub code: String,
    #[serde(rename = "return")]
    pub value: Value,
}

/// A handle to a running client; cheap to clone. Dropping the handles
/// does not stop it: call `close`.
#[derive(Clone)]
pub struct Client {
    core: Addr<ClientCore>,
    key: Arc<NodeKey>,
    info: Arc<ClientInfo>,
}

impl Client {
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// Our address (the author of what we write). Not our peer identity:
    /// each instance pings with a fresh peer key of its own.
    pub fn address(&self) -> &str {
        self.key.address()
    }

    /// `:ADDRESS.key`, our user namespace for `key`.
    pub fn user_key(&self, key: &str) -> String {
        format!(":{}.{}", self.key.address(), key)
    }

    /// Where endpoint batches from any discovery source can be sent.
    pub fn endpoints_recipient(&self) -> Recipient<EndpointsFound> {
        self.core.clone().recipient()
    }

    /// Waits until at least one server is connected.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), ClientError> {
        let (tx, rx) = oneshot::channel();
        self.core.send(WaitConnected { reply: tx }).await?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(ClientError::Stopped),
            Err(_) => Err(ClientError::NoServer {
                timeout,
                topic: self.info.topic.clone(),
                peers: self.info.peers.clone(),
                dht: match &self.info.dht {
                    None => "off".into(),
                    Some(b) if b.is_empty() => "public bootstrap nodes".into(),
                    Some(b) => format!("bootstrap {b:?}"),
                },
                trackers: self.info.trackers.clone(),
            }),
        }
    }

    /// The servers connected now (their verified peer records).
    pub async fn servers(&self) -> Result<Vec<Peer>, ClientError> {
        Ok(self.core.send(GetConnectedServers).await?)
    }

    /// Servers caught answering with forged records.
    pub async fn bad_servers(&self) -> Result<Vec<BadServer>, ClientError> {
        Ok(self.core.send(GetBadServers).await?)
    }

    /// Closes every connection; the handles then answer `Stopped`.
    pub fn close(&self) {
        self.core.do_send(Shutdown);
    }

    async fn request(
        &self,
        kind: RequestKind,
        timeout: Duration,
    ) -> Result<RequestOutcome, ClientError> {
        self.wait_connected(self.info.connect_timeout).await?;
        let (tx, rx) = oneshot::channel();
        self.core
            .send(Request {
                kind,
                timeout,
                reply: tx,
            })
            .await?;
        rx.await.map_err(|_| ClientError::Stopped)
    }

    async fn sign(&self, key: &str, value: Value, crdt: Option<CrdtKind>) -> Record {
        let pow = self.info.pow;
        if pow == 0 {
            return sign_record_with(&self.key, key, &value, now_ms(), crdt, 0);
        }
        let (signer, key) = (self.key.clone(), key.to_owned());
        actix_rt::task::spawn_blocking(move || {
            sign_record_with(&signer, &key, &value, now_ms(), crdt, pow)
        })
        .await
        .expect("signing does not panic")
    }

    fn check_writable(&self, key: &str) -> Result<(), ClientError> {
        check_key(key, self.key.address()).map_err(|source| ClientError::InvalidKey {
            key: key.to_owned(),
            source,
        })
    }

    /// Signs `value` under `key` and sends it to the connected servers;
    /// returns the record once a server answers a get of `key` with it (or
    /// with a record that beats it), sending it again if none does.
    pub async fn put(&self, key: &str, value: Value) -> Result<Record, ClientError> {
        self.check_writable(key)?;
        let record = self.sign(key, value, None).await;
        self.publish_confirmed(record, |answers, ours| {
            answers
                .iter()
                .any(|r| r.hash == ours.hash || wins(&r.meta(), &ours.meta()))
        })
        .await
    }

    /// `put` under our user namespace (`:ADDRESS.key`).
    pub async fn put_user(&self, key: &str, value: Value) -> Result<Record, ClientError> {
        self.put(&self.user_key(key), value).await
    }

    async fn publish_confirmed(
        &self,
        record: Record,
        confirmed: impl Fn(&[Record], &Record) -> bool,
    ) -> Result<Record, ClientError> {
        let timeout = self.info.request_timeout.max(CONFIRM_TRY * 2);
        let deadline = Instant::now() + timeout;
        let kind = if record.crdt.is_some() {
            RequestKind::CrdtGet {
                key: record.key.clone(),
            }
        } else {
            RequestKind::Get {
                key: record.key.clone(),
            }
        };
        while Instant::now() < deadline {
            self.wait_connected(self.info.connect_timeout).await?;
            self.core
                .send(Publish {
                    record: record.clone(),
                })
                .await?;
            for _ in 0..CONFIRM_TRIES_PER_SEND {
                let out = self.request(kind.clone(), CONFIRM_TRY).await?;
                if confirmed(&out.records, &record) {
                    return Ok(record);
                }
                if Instant::now() >= deadline {
                    break;
                }
            }
        }
        Err(ClientError::NotConfirmed {
            key: record.key.clone(),
            timeout,
        })
    }

    /// Asks every connected server for `key`; returns the winning record
    /// among the answers that verify. A server answering with a forged
    /// record is marked bad (`bad_servers`) and disconnected.
    pub async fn get(&self, key: &str) -> Result<Option<Record>, ClientError> {
        let out = self
            .request(
                RequestKind::Get {
                    key: key.to_owned(),
                },
                self.info.request_timeout,
            )
            .await?;
        Ok(best(out.records))
    }

    /// Follows `key`: every verified record that beats the last one
    /// delivered, from whichever server, starting with the current one.
    /// It continues across reconnects and server changes; after each new
    /// connection the key is read again, so a write missed meanwhile comes.
    pub async fn subscribe(&self, key: &str) -> Result<Subscription, ClientError> {
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_BUFFER);
        self.core
            .send(Subscribe {
                key: key.to_owned(),
                updates: tx,
            })
            .await?;
        Ok(Subscription { rx })
    }

    /// Keys starting with `prefix`, the union of every server's answer.
    pub async fn query(&self, prefix: &str) -> Result<Vec<String>, ClientError> {
        let out = self
            .request(
                RequestKind::Query {
                    prefix: prefix.to_owned(),
                },
                self.info.request_timeout,
            )
            .await?;
        Ok(out.keys)
    }

    /// The MAP CRDT under `key`: the union of every server's changes.
    pub async fn get_map(&self, key: &str) -> Result<Option<MapState>, ClientError> {
        self.get_map_within(key, self.info.request_timeout).await
    }

    async fn get_map_within(
        &self,
        key: &str,
        timeout: Duration,
    ) -> Result<Option<MapState>, ClientError> {
        let out = self
            .request(
                RequestKind::CrdtGet {
                    key: key.to_owned(),
                },
                timeout,
            )
            .await?;
        Ok(map_state(out.records))
    }

    /// Sets `field` of the MAP CRDT under `key`.
    pub async fn map_set(
        &self,
        key: &str,
        field: &str,
        value: Value,
    ) -> Result<Record, ClientError> {
        self.map_change(key, field, Some(value)).await
    }

    /// Deletes `field` of the MAP CRDT under `key`.
    pub async fn map_delete(&self, key: &str, field: &str) -> Result<Record, ClientError> {
        self.map_change(key, field, None).await
    }

    async fn map_change(
        &self,
        key: &str,
        field: &str,
        value: Option<Value>,
    ) -> Result<Record, ClientError> {
        self.check_writable(key)?;
        let mut changes = self
            .get_map(key)
            .await?
            .map(|m| m.changes)
            .unwrap_or_default();
        let change = crdt::map_change(&changes, self.key.address(), field, value);
        changes.push(change.clone());
        let record = self
            .sign(key, Value::Array(changes), Some(CrdtKind::Map))
            .await;
        self.publish_confirmed(record, move |answers, _| {
            map_state(answers.to_vec()).is_some_and(|m| m.changes.contains(&change))
        })
        .await
    }

    /// Calls a server function on one connected server.
    pub async fn call(&self, name: &str, args: Value) -> Result<FunctionResult, ClientError> {
        let out = self
            .request(
                RequestKind::Function {
                    name: name.to_owned(),
                    args,
                },
                self.info.request_timeout,
            )
            .await?;
        let (code, value) = out.function.ok_or_else(|| ClientError::NoAnswer {
            name: name.to_owned(),
            timeout: self.info.request_timeout,
        })?;
        Ok(FunctionResult { code, value })
    }
}

/// The winner among verified records of one key.
fn best(records: Vec<Record>) -> Option<Record> {
    records.into_iter().reduce(|best, r| {
        if wins(&r.meta(), &best.meta()) {
            r
        } else {
            best
        }
    })
}

fn map_state(records: Vec<Record>) -> Option<MapState> {
    let records: Vec<Record> = records
        .into_iter()
        .filter(|r| r.crdt == Some(CrdtKind::Map))
        .collect();
    let mut changes = Vec::new();
    for r in &records {
        if let Ok(c) = crdt::changes(r) {
            crdt::union(CrdtKind::Map, &mut changes, c);
        }
    }
    let record = best(records)?;
    let value = crdt::map_value(&changes);
    Some(MapState {
        record,
        changes,
        value,
    })
}

/// The verified records of a followed key, as they come (see
/// `Client::subscribe`). Ends when the client stops.
pub struct Subscription {
    rx: mpsc::Receiver<Record>,
}

impl Subscription {
    pub async fn next(&mut self) -> Option<Record> {
        self.rx.recv().await
    }
}

impl futures_util::Stream for Subscription {
    type Item = Record;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Record>> {
        self.rx.poll_recv(cx)
    }
}

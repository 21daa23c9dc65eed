//! Wiring: opens the data dir (node key, sled), starts the `Storage` and
//! `Crypto` pools, the `Hub`, a supervised `PeerConnection` per static
//! peer, and the HTTP/websocket listener on an already-bound socket (so
//! tests bind 127.0.0.1:0). Must run inside an actix system.

use std::net::TcpListener;
use std::sync::Arc;

use actix::prelude::*;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use actix_web_actors::ws;

use crate::actors::client_session::ClientSession;
use crate::actors::crypto::Crypto;
use crate::actors::hub::{Hub, HubSettings};
use crate::actors::peer_connection::PeerConnection;
use crate::actors::storage::Storage;
use crate::actors::Services;
use crate::config::Config;
use crate::crypto::NodeKey;
use crate::messages::hub::GetPeers;
use crate::messages::storage::FlushStorage;
use crate::peer::Peer;
use crate::record::now_ms;

pub const KEY_FILE: &str = "node-key.json";
pub const DB_DIR: &str = "db";

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create the data dir {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Key(#[from] crate::crypto::NodeKeyError),
    #[error("cannot open the database in {path}: {source}")]
    Db { path: String, source: sled::Error },
    #[error(transparent)]
    Storage(#[from] crate::messages::storage::StorageError),
    #[error("bad --peer {0:?}: expected HOST:PORT")]
    BadPeer(String),
    #[error("cannot listen: {0}")]
    Listen(std::io::Error),
}

/// A running node.
pub struct Node {
    pub address: String,
    pub client_id: String,
    pub port: u16,
    pub hub: Addr<Hub>,
    pub storage: Addr<Storage>,
    pub http: actix_web::dev::ServerHandle,
    /// Kept so the supervisors keep reconnecting.
    pub peers: Vec<Addr<PeerConnection>>,
    server: Option<actix_web::dev::Server>,
}

impl Node {
    /// Serves until the HTTP server stops (SIGINT/SIGTERM, or `http.stop`),
    /// then flushes storage.
    pub async fn run(mut self) -> std::io::Result<()> {
        let server = self.server.take().expect("run is called once");
        let result = server.await;
        match self.storage.send(FlushStorage).await {
            Ok(Ok(())) => tracing::info!("storage flushed; stopped"),
            Ok(Err(e)) => tracing::error!(error = %e, "final flush failed"),
            Err(e) => tracing::error!(error = %e, "storage unreachable at shutdown"),
        }
        result
    }
}

/// Splits "HOST:PORT" (also "ws://HOST:PORT").
pub fn parse_host_port(s: &str) -> Option<(String, u16)> {
    let s = s
        .trim()
        .trim_start_matches("ws://")
        .trim_start_matches("wss://")
        .trim_end_matches('/');
    let (host, port) = s.rsplit_once(':')?;
    let port = port.parse().ok()?;
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

pub fn start(config: Config, listener: TcpListener) -> Result<Node, StartError> {
    let config = Arc::new(config);
    let data_dir = &config.data_dir;
    std::fs::create_dir_all(data_dir).map_err(|source| StartError::DataDir {
        path: data_dir.display().to_string(),
        source,
    })?;
    let key = Arc::new(NodeKey::load_or_create(
        &data_dir.join(KEY_FILE),
        config.key_scheme,
    )?);
    let db_path = data_dir.join(DB_DIR);
    let db = sled::open(&db_path).map_err(|source| StartError::Db {
        path: db_path.display().to_string(),
        source,
    })?;
    let storage_state = Storage::new(db, config.storage.sync_writes)?;
    let storage = SyncArbiter::start(config.storage.threads.max(1), move || storage_state.clone());
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let crypto_key = key.clone();
    let crypto = SyncArbiter::start(cores, move || Crypto::new(crypto_key.clone()));

    let port = listener.local_addr().map_err(StartError::Listen)?.port();
    let host = config.advertised_host();
    let self_peer = Peer::sign(&key, &config.topic, &host, port, now_ms());
    let settings = HubSettings {
        topic: config.topic.clone(),
        address: key.address().to_owned(),
        client_id: key.client_id().to_owned(),
        host,
        port,
        pow: config.pow,
        limits: config.limits.clone(),
    };
    let hub = Hub::new(settings, storage.clone(), crypto.clone(), self_peer).start();
    let services = Services {
        hub: hub.clone(),
        crypto,
        config: config.clone(),
        client_id: key.client_id().into(),
    };

    let mut peers = Vec::new();
    for p in &config.peers {
        let (h, pt) = parse_host_port(p).ok_or_else(|| StartError::BadPeer(p.clone()))?;
        let s = services.clone();
        peers.push(Supervisor::start(move |_| PeerConnection::new(h, pt, s)));
    }

    let max_frame = config.limits.max_frame_bytes;
    let web_services = services.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(web_services.clone()))
            .route("/health", web::get().to(health))
            .route("/peers", web::get().to(peers_route))
            .route(
                "/",
                web::get().to(move |req, stream| ws_route(req, stream, max_frame)),
            )
    })
    .workers(cores)
    .shutdown_timeout(3)
    .listen(listener)
    .map_err(StartError::Listen)?
    .run();
    tracing::info!(
        port,
        topic = %config.topic,
        address = %key.address(),
        client_id = %key.client_id(),
        data_dir = %config.data_dir.display(),
        "serving"
    );
    Ok(Node {
        address: key.address().to_owned(),
        client_id: key.client_id().to_owned(),
        port,
        hub,
        storage,
        http: server.handle(),
        peers,
        server: Some(server),
    })
}

async fn ws_route(
    req: HttpRequest,
    stream: web::Payload,
    max_frame: usize,
) -> Result<HttpResponse, actix_web::Error> {
    let services = req
        .app_data::<web::Data<Services>>()
        .expect("services are registered")
        .get_ref()
        .clone();
    let is_upgrade = req
        .headers()
        .get("upgrade")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !is_upgrade {
        return Ok(HttpResponse::UpgradeRequired()
            .insert_header(("content-type", "text/plain"))
            .body("tooldb-node: Tool Db peers connect here with a websocket; see /health and /peers\n"));
    }
    let remote = req
        .peer_addr()
        .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
    ws::WsResponseBuilder::new(ClientSession::new(services, remote), &req, stream)
        .frame_size(max_frame)
        .start()
}

async fn health(services: web::Data<Services>) -> HttpResponse {
    match services.hub.send(GetPeers).await {
        Ok(snap) => HttpResponse::Ok().json(serde_json::json!({
            "status": "serving",
            "topic": services.config.topic,
            "address": snap.self_peer.address,
            "clientId": &*services.client_id,
            "connections": snap.connected.len(),
            "servers": snap.servers.len(),
        })),
        Err(e) => HttpResponse::ServiceUnavailable().json(serde_json::json!({
            "status": "unavailable",
            "error": e.to_string(),
        })),
    }
}

async fn peers_route(services: web::Data<Services>) -> HttpResponse {
    match services.hub.send(GetPeers).await {
        Ok(snap) => HttpResponse::Ok()
            .insert_header(("access-control-allow-origin", "*"))
            .json(snap),
        Err(e) => {
            HttpResponse::ServiceUnavailable().json(serde_json::json!({ "error": e.to_string() }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        assert_eq!(
            parse_host_port("127.0.0.1:9000"),
            Some(("127.0.0.1".into(), 9000))
        );
        assert_eq!(parse_host_port("ws://a.b:1/"), Some(("a.b".into(), 1)));
        assert_eq!(parse_host_port("nope"), None);
        assert_eq!(parse_host_port(":1"), None);
        assert_eq!(parse_host_port("h:99999"), None);
    }
}

//! Wiring: opens the data dir (node key, sled), starts the `Storage` and
//! `Crypto` pools, the `Hub`, a supervised `PeerConnection` per static
//! peer, the HTTP/websocket listener on an already-bound socket (so
//! tests bind 127.0.0.1:0), and the `/metrics` listener on its own address
//! (`metrics_listen`). Must run inside an actix system.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_codec::Framed;
use actix_http::h1;
use actix_web::{web, App, HttpResponse};
use futures_util::SinkExt;

use crate::actors::client_session::ClientSession;
use crate::actors::crypto::Crypto;
use crate::actors::dht_channel::{DhtChannel, DhtSettings};
use crate::actors::hub::RegistryLink;
use crate::actors::hub::{Hub, HubSettings};
use crate::actors::lan::{LanAnnounce, LanChannel, LanSettings};
use crate::actors::peer_registry::{PeerRegistry, UseDht};
use crate::actors::storage::Storage;
use crate::actors::tracker_channel::{OfferSource, TrackerChannel, TrackerSettings};
use crate::actors::Services;
use crate::config::Config;
use crate::crypto::NodeKey;
use crate::endpoint::Endpoint;
use crate::messages::dht::{GetDhtStatus, JoinTopic, LeaveTopic};
use crate::messages::hub::{CloseAll, GetPeers, SetPublicHost};
use crate::messages::registry::GetRegistryView;
use crate::messages::storage::FlushStorage;
use crate::metrics::{Metrics, Refused};
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
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsListenError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot start the TLS certificate watcher: {0}")]
    TlsWatcher(std::io::Error),
    #[error(transparent)]
    DialTrust(#[from] crate::transport::TrustError),
    #[error("--acme and --tls-cert/--tls-key (or [acme] enabled and [tls] files) exclude each other: choose one source of certificates")]
    AcmeAndFiles,
    #[error("cannot listen for ACME http-01 on {addr}: {source}")]
    Http01 {
        addr: String,
        source: std::io::Error,
    },
    #[error("bad --tracker: {0}")]
    BadTracker(#[from] crate::tracker::TrackerError),
    #[error(transparent)]
    Hyperswarm(crate::hyperswarm::HyperswarmError),
}

/// A running node.
pub struct Node {
    pub address: String,
    pub client_id: String,
    pub port: u16,
    pub hub: Addr<Hub>,
    pub registry: Addr<PeerRegistry>,
    pub storage: Addr<Storage>,
    /// Kept so the supervisor keeps the DHT channel running.
    pub dht: Option<Addr<DhtChannel>>,
    /// Kept so the supervisor keeps the LAN channel running.
    pub lan: Option<Addr<LanChannel>>,
    /// Kept so the supervisor keeps the ACME issuer running.
    pub acme: Option<Addr<crate::actors::acme::AcmeIssuer>>,
    /// The ACME http-01 listener, when configured.
    acme_http: Option<actix_web::dev::ServerHandle>,
    /// One per tracker, kept so their supervisors keep them running.
    pub trackers: Vec<Addr<TrackerChannel>>,
    /// The Hyperswarm engine, when on; dropped, it leaves the topic.
    pub hyperswarm: Option<Arc<crate::hyperswarm::Engine>>,
    pub http: actix_web::dev::ServerHandle,
    server: Option<actix_web::dev::Server>,
    topic: String,
    /// The node's counters (what `/metrics` serves).
    pub metrics: Arc<Metrics>,
    /// The `/metrics` listener's address, unless `metrics_listen` is off.
    pub metrics_addr: Option<SocketAddr>,
    metrics_http: Option<actix_web::dev::ServerHandle>,
}

/// How long a graceful stop waits for close frames to go out.
const CLOSE_GRACE: Duration = Duration::from_millis(500);

impl Node {
    /// Serves until the HTTP server stops (see `shutdown`), then flushes
    /// storage.
    pub async fn run(mut self) -> std::io::Result<()> {
        let server = self.server.take().expect("run is called once");
        let result = server.await;
        if let Some(m) = &self.metrics_http {
            m.stop(true).await;
        }
        if let Some(h) = &self.acme_http {
            h.stop(true).await;
        }
        match self.storage.send(FlushStorage).await {
            Ok(Ok(())) => tracing::info!("storage flushed; stopped"),
            Ok(Err(e)) => tracing::error!(error = %e, "final flush failed"),
            Err(e) => tracing::error!(error = %e, "storage unreachable at shutdown"),
        }
        result
    }

    /// A handle that stops the node gracefully from anywhere.
    pub fn stopper(&self) -> Stopper {
        Stopper {
            hub: self.hub.clone(),
            dht: self.dht.clone(),
            http: self.http.clone(),
            topic: self.topic.clone(),
            metrics_http: self.metrics_http.clone(),
            acme_http: self.acme_http.clone(),
        }
    }
}

/// Stops a node: leaves the DHT topic (no more announces), closes every
/// socket with a close frame, then stops the HTTP server; `Node::run` then
/// flushes storage and returns.
#[derive(Clone)]
pub struct Stopper {
    hub: Addr<Hub>,
    dht: Option<Addr<DhtChannel>>,
    http: actix_web::dev::ServerHandle,
    topic: String,
    metrics_http: Option<actix_web::dev::ServerHandle>,
    acme_http: Option<actix_web::dev::ServerHandle>,
}

impl Stopper {
    pub async fn stop(&self) {
        tracing::info!("stopping: leaving the DHT topic and closing connections");
        if let Some(dht) = &self.dht {
            let _ = dht
                .send(LeaveTopic {
                    topic: self.topic.clone(),
                })
                .await;
        }
        let _ = self
            .hub
            .send(CloseAll {
                reason: "server shutting down".into(),
            })
            .await;
        // Let the close frames leave before the workers stop.
        actix_rt::time::sleep(CLOSE_GRACE).await;
        self.http.stop(true).await;
        if let Some(m) = &self.metrics_http {
            m.stop(true).await;
        }
        if let Some(h) = &self.acme_http {
            h.stop(true).await;
        }
    }
}

/// The DHT settings a server uses, from its configuration.
pub fn dht_settings(config: &Config) -> DhtSettings {
    DhtSettings {
        bootstrap: config.dht_bootstrap.clone(),
        // 0 = any free port (Some(0)); mainline's own default would take 6881.
        port: Some(config.dht_port),
        bind: config.host.parse().unwrap_or(Ipv4Addr::UNSPECIFIED),
        ..DhtSettings::default()
    }
}

/// The LAN settings a server uses: announce our port on the address we
/// bind (every interface for a wildcard), but not when bound to loopback,
/// where no other host could reach it (it still browses).
pub fn lan_settings(config: &Config, node_id: &str, port: u16) -> LanSettings {
    let bind: Option<std::net::IpAddr> = config.host.parse().ok();
    let announce = match bind {
        Some(ip) if ip.is_loopback() => None,
        Some(std::net::IpAddr::V4(ip)) if !ip.is_unspecified() => Some(Some(ip)),
        Some(std::net::IpAddr::V6(ip)) if !ip.is_unspecified() => None,
        _ => Some(None),
    };
    LanSettings {
        topic: config.topic.clone(),
        announce: announce.map(|ip| LanAnnounce {
            port,
            node_id: node_id.to_owned(),
            ip,
        }),
    }
}

/// The tracker URLs to use, checked, each once (one socket per tracker).
pub fn tracker_urls(urls: &[String]) -> Result<Vec<String>, crate::tracker::TrackerError> {
    let mut out: Vec<String> = Vec::new();
    for u in urls {
        let u = u.trim();
        crate::tracker::check_url(u)?;
        if !out.iter().any(|o| o == u) {
            out.push(u.to_owned());
        }
    }
    Ok(out)
}

/// Starts a supervised `TrackerChannel` per tracker, announcing this
/// server by name and by topic with its record as the offer.
fn start_trackers(
    config: &Config,
    urls: Vec<String>,
    key: &Arc<NodeKey>,
    hub: &Addr<Hub>,
    metrics: &Arc<Metrics>,
) -> Vec<Addr<TrackerChannel>> {
    use crate::tracker::{default_server_name, info_hash, peer_id_of, topic_server_name};
    let t = &config.trackers;
    if urls.is_empty() {
        return vec![];
    }
    let name = if t.server_name.is_empty() {
        default_server_name(key.address())
    } else {
        t.server_name.clone()
    };
    let topic_name = topic_server_name(&config.topic);
    let hashes = vec![info_hash(&name), info_hash(&topic_name)];
    let ssl = config.serves_tls();
    tracing::info!(
        trackers = urls.len(),
        server_name = %name,
        topic_name = %topic_name,
        ssl,
        "announcing on WebTorrent trackers"
    );
    urls.into_iter()
        .map(|url| {
            let mut s = TrackerSettings::new(url, hashes.clone(), peer_id_of(key.client_id()));
            s.announce_every = Duration::from_secs(t.announce_every_secs.max(1));
            s.retry_initial = Duration::from_millis(t.retry_initial_ms.max(1));
            s.retry_max = Duration::from_millis(t.retry_max_ms.max(t.retry_initial_ms));
            s.offer = Some(OfferSource {
                name: name.clone(),
                ssl,
                self_peer: hub.clone().recipient(),
                key: key.clone(),
            });
            TrackerChannel::supervised_with(s, None, metrics.clone())
        })
        .collect()
}

pub fn start(config: Config, listener: TcpListener) -> Result<Node, StartError> {
    let config = Arc::new(config);
    let tracker_urls = tracker_urls(&config.trackers.urls)?;
    // First, so a taken metrics port fails before anything starts. The
    // default port taken (a second node on one machine) is not worth
    // refusing to serve: that node runs without metrics and says so.
    let metrics_listener = match crate::metrics::bind(&config.metrics_listen) {
        Err(crate::metrics::MetricsListenError::Listen { addr, source })
            if config.metrics_listen.trim() == crate::metrics::DEFAULT_LISTEN
                && source.kind() == std::io::ErrorKind::AddrInUse =>
        {
            tracing::warn!(%addr, error = %source, "the default metrics address is taken: serving without /metrics (set --metrics-listen HOST:PORT or off)");
            None
        }
        other => other?,
    };
    let metrics = Arc::new(Metrics::new());
    // Bad certificate files stop the start, before anything else is opened.
    let tls = match (config.tls.files()?, config.acme.enabled) {
        (Some(_), true) => return Err(StartError::AcmeAndFiles),
        (Some(files), false) => {
            let (resolver, watcher) =
                crate::tls::load_watched(files, metrics.tls_certificate_expiry.clone())?;
            Some(TlsSource::Files(
                watcher,
                crate::tls::server_config(resolver, false)?,
            ))
        }
        (None, true) => {
            let settings = acme_settings(&config);
            let stored = crate::acme::load_stored(&settings);
            let resolver = match &stored {
                Some(issued) => {
                    tracing::info!(host = %settings.host, "serving the ACME certificate from the data dir");
                    crate::tls::CertResolver::new(issued.key.clone())
                }
                None => crate::tls::CertResolver::empty(),
            };
            let resolver =
                Arc::new(resolver.with_expiry_gauge(metrics.tls_certificate_expiry.clone()));
            let tokens = crate::acme::Http01Tokens::default();
            // Bound now, so a taken port 80 stops the start with its reason.
            let http01 = if settings.http01 {
                let addr = config.acme.http_listen.trim();
                let listener = TcpListener::bind(addr).map_err(|source| StartError::Http01 {
                    addr: addr.to_owned(),
                    source,
                })?;
                Some((listener, tokens.clone()))
            } else {
                None
            };
            let issuer = crate::actors::acme::AcmeIssuer::new(
                settings,
                resolver.clone(),
                tokens,
                stored.as_ref(),
            )
            .with_metrics(metrics.clone());
            Some(TlsSource::Acme(
                issuer,
                http01,
                crate::tls::server_config(resolver, true)?,
            ))
        }
        (None, false) => None,
    };
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
    let cache_bytes = config.storage.cache_mib.saturating_mul(1 << 20);
    let db =
        crate::durability::open_database_with_cache(&db_path, cache_bytes).map_err(|source| {
            StartError::Db {
                path: db_path.display().to_string(),
                source,
            }
        })?;
    let metrics_db = db.clone();
    let storage_state = Storage::new(db, config.storage.sync_writes)?
        .with_max_record_bytes(config.limits.max_record_bytes);
    let durability = storage_state.durability();
    let storage = SyncArbiter::start(config.storage.threads.max(1), move || storage_state.clone());
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let crypto_key = key.clone();
    let crypto_metrics = metrics.clone();
    let crypto = SyncArbiter::start(cores, move || {
        Crypto::new(crypto_key.clone()).with_metrics(crypto_metrics.clone())
    });
    for p in &config.peers {
        let endpoint = Endpoint::parse(p).map_err(|_| StartError::BadPeer(p.clone()))?;
        if p.trim().starts_with("wss://") {
            crate::transport::remember_scheme(&endpoint, true);
        }
    }
    let dial_roots = config.dial_roots();
    if !dial_roots.is_empty() {
        crate::transport::trust_extra_roots(&dial_roots)?;
    }

    let port = listener.local_addr().map_err(StartError::Listen)?.port();
    let host = record_host_now(&config);
    let self_peer =
        Peer::sign(&key, &config.topic, &host, port, now_ms()).with_ssl(config.serves_tls());
    let settings = HubSettings {
        topic: config.topic.clone(),
        address: key.address().to_owned(),
        client_id: key.client_id().to_owned(),
        host: host.clone(),
        port,
        ssl: config.serves_tls(),
        pow: config.pow,
        limits: config.limits.clone(),
        reconcile_every_secs: config.peering.reconcile_every_secs,
        reconcile_max_records: config.peering.reconcile_max_records,
    };
    let self_endpoints: Vec<Endpoint> = [host.as_str(), "127.0.0.1", "localhost", "0.0.0.0"]
        .iter()
        .map(|h| Endpoint::new(*h, port))
        .collect();
    let budget = crate::flow::Budget::new(config.limits.total_window_bytes);
    // The hub and the registry hold each other's addresses.
    let mut registry_out = None;
    let hub = Hub::create(|hub_ctx| {
        let services = Services {
            hub: hub_ctx.address(),
            crypto: crypto.clone(),
            config: config.clone(),
            client_id: key.client_id().into(),
            budget: budget.clone(),
            metrics: metrics.clone(),
        };
        let registry = PeerRegistry::new(
            services,
            storage.clone(),
            key.address().to_owned(),
            self_endpoints,
        )
        .start();
        let link = RegistryLink {
            connected: registry.clone().recipient(),
            disconnected: registry.clone().recipient(),
            listed: registry.clone().recipient(),
        };
        registry_out = Some(registry);
        Hub::new(settings, storage.clone(), crypto.clone(), self_peer)
            .with_registry(link)
            .with_durability(durability)
            .with_metrics(metrics.clone())
    });
    let registry = registry_out.expect("the hub's constructor ran");
    let services = Services {
        hub: hub.clone(),
        crypto,
        config: config.clone(),
        client_id: key.client_id().into(),
        budget,
        metrics: metrics.clone(),
    };

    let dht = if config.no_dht {
        tracing::info!(
            "DHT discovery is off (--no-dht): servers meet through --peer and pong lists"
        );
        None
    } else {
        let dht = DhtChannel::supervised_with(
            dht_settings(&config),
            registry.clone().recipient(),
            metrics.clone(),
        );
        dht.do_send(JoinTopic {
            topic: config.topic.clone(),
            port: Some(port),
        });
        registry.do_send(UseDht(dht.clone()));
        if crate::host::follows_dht(&config.public_host, &config.host) {
            watch_public_host(dht.clone(), hub.clone(), host.clone());
        }
        Some(dht)
    };

    let lan = config.lan.then(|| {
        LanChannel::supervised(
            lan_settings(&config, key.client_id(), port),
            registry.clone().recipient(),
        )
    });

    let trackers = start_trackers(&config, tracker_urls, &key, &hub, &metrics);
    let hyperswarm = if config.hyperswarm.enabled {
        Some(Arc::new(start_hyperswarm(&config, services.clone())?))
    } else {
        None
    };

    crate::log_limit::configure(config.limits.remote_log_lines_per_sec);
    let open_files = raise_open_file_limit();
    let mut admission_limits = crate::admission::AdmissionLimits::from(&config.limits);
    // Headroom under the open-file limit: sled, the DHT socket, outbound
    // dials and plain HTTP requests such as /health.
    let headroom = FD_HEADROOM.min(open_files / 4);
    let fd_room = usize::try_from(open_files.saturating_sub(headroom)).unwrap_or(usize::MAX);
    // Outbound dials go to known servers only, so at most this many.
    let ws_room = fd_room.saturating_sub(config.limits.max_known_servers);
    if admission_limits.max_connections > ws_room {
        let lowered = ws_room.max(1);
        tracing::warn!(
            configured = admission_limits.max_connections,
            lowered,
            open_files,
            "max_connections lowered to fit the process's open-file limit (raise it with ulimit -n)"
        );
        admission_limits.max_connections = lowered;
    }
    let admission = crate::admission::Admission::new(admission_limits);
    let max_frame = config.limits.max_frame_bytes;
    let web_services = WebState {
        services: services.clone(),
        registry: registry.clone(),
        admission,
        dht: dht.clone(),
    };
    let app_state = web_services.clone();
    let app = move || {
        App::new()
            .app_data(web::Data::new(app_state.clone()))
            .route("/health", web::get().to(health))
            .route("/peers", web::get().to(peers_route))
            .route("/status.json", web::get().to(status_route))
            .route(
                "/status.js",
                web::get().to(|| async { crate::status::script(crate::status::STATUS_JS) }),
            )
            .route(
                "/panel.js",
                web::get().to(|| async { crate::status::script(crate::status::PANEL_JS) }),
            )
            .route(
                "/tool-db.js",
                web::get().to(|| async { crate::status::script(crate::status::TOOL_DB_JS) }),
            )
            .route(
                "/favicon.ico",
                web::get().to(|| async { crate::status::favicon() }),
            )
            // A browser (or curl) gets the status page; websocket upgrades
            // never reach the router (see `ws_upgrade`).
            .route("/", web::get().to(|| async { crate::status::index() }))
    };
    let addr = listener.local_addr().map_err(StartError::Listen)?;
    // After our close frame, what is queued still has to reach a slow
    // reader; actix's default of 1 s dropped it (HTTP answers; websockets
    // are written by their own writer, bounded by write_timeout_secs).
    let disconnect = Duration::from_secs(config.limits.write_timeout_secs);
    // The websocket port is actix-web's App behind an actix-http service
    // whose upgrade handler takes websockets off the HTTP dispatcher (its
    // buffers cost ~16 KiB per idle client): `HttpServer` cannot install
    // one.
    macro_rules! http_service {
        () => {{
            let upgrade_state = web_services.clone();
            actix_http::HttpService::build()
                .keep_alive(Duration::from_secs(5))
                .client_request_timeout(Duration::from_secs(5))
                .client_disconnect_timeout(disconnect)
                // Pushes and relays are small frames written one by one:
                // with Nagle's algorithm a frame waited for the peer's
                // delayed ACK (~40 ms), which was the `load` bench's put ->
                // subscriber p99 at 500 puts/s.
                .tcp_nodelay(true)
                .local_addr(addr)
                .upgrade(actix_service::fn_service(move |(req, framed)| {
                    let upgrade = ws_upgrade(upgrade_state.clone(), max_frame, req, framed);
                    async move {
                        // The socket is ours: a failed answer only ends it.
                        if let Err(e) = upgrade.await {
                            tracing::debug!(error = %e, "an upgrade request failed");
                        }
                        Ok::<(), actix_http::Error>(())
                    }
                }))
                .finish(actix_service::map_config(
                    actix_service::ServiceFactoryExt::map_err(
                        actix_service::IntoServiceFactory::into_factory(app()),
                        |e: actix_web::Error| e.error_response(),
                    ),
                    |_: ()| actix_web::dev::AppConfig::default(),
                ))
        }};
    }
    let server = actix_server::Server::build()
        .workers(cores)
        // Plain TCP connections per worker while their HTTP request is
        // served: what the open-file limit allows beside the headroom.
        // Websockets leave this count once upgraded and are capped by
        // admission (max_connections) below it, so an HTTP request such as
        // /health still gets in when they are full; a socket that sends no
        // request is closed after 5 s (client_request_timeout).
        .max_concurrent_connections((fd_room / cores).max(64))
        // Signals are ours: a stop first closes sockets with a close frame.
        .disable_signals()
        .shutdown_timeout(2);
    let tls_on = tls.is_some();
    let mut acme = None;
    let mut acme_http = None;
    let name = format!("tooldb-{addr}");
    let server = match tls {
        Some(TlsSource::Files(watcher, server_config)) => {
            let server = server
                .listen(&name, listener, move || {
                    http_service!().rustls_0_23(server_config.clone())
                })
                .map_err(StartError::Listen)?;
            // The watcher lives as long as the server's TLS configuration.
            watcher.start().map_err(StartError::TlsWatcher)?;
            server
        }
        Some(TlsSource::Acme(issuer, http01, server_config)) => {
            let server = server
                .listen(&name, listener, move || {
                    http_service!().rustls_0_23(server_config.clone())
                })
                .map_err(StartError::Listen)?;
            if let Some((listener, tokens)) = http01 {
                let addr = listener.local_addr().map_err(StartError::Listen)?;
                let http =
                    crate::acme::serve_http01(listener, tokens).map_err(StartError::Listen)?;
                acme_http = Some(http.handle());
                actix_rt::spawn(http);
                tracing::info!(%addr, "answering ACME http-01 validation");
            }
            // After the listener: the CA's validation connects to it.
            acme = Some(crate::actors::acme::AcmeIssuer::supervised(issuer));
            server
        }
        None => server
            .listen(&name, listener, move || http_service!().tcp())
            .map_err(StartError::Listen)?,
    }
    .run();
    let (metrics_addr, metrics_http) = match metrics_listener {
        Some(l) => {
            let addr = l.local_addr().map_err(StartError::Listen)?;
            let http = crate::metrics::serve(l, metrics.clone(), Some(metrics_db))
                .map_err(StartError::Listen)?;
            let handle = http.handle();
            actix_rt::spawn(http);
            tracing::info!(addr = %addr, "serving Prometheus metrics at /metrics");
            (Some(addr), Some(handle))
        }
        None => (None, None),
    };
    tracing::info!(
        port,
        topic = %config.topic,
        address = %key.address(),
        client_id = %key.client_id(),
        data_dir = %config.data_dir.display(),
        tls = tls_on,
        acme = config.acme.enabled,
        "serving"
    );
    Ok(Node {
        address: key.address().to_owned(),
        client_id: key.client_id().to_owned(),
        port,
        hub,
        registry,
        storage,
        dht,
        lan,
        acme,
        acme_http,
        trackers,
        hyperswarm,
        http: server.handle(),
        server: Some(server),
        topic: config.topic.clone(),
        metrics,
        metrics_addr,
        metrics_http,
    })
}

/// Where the websocket port's certificate comes from.
enum TlsSource {
    /// Files, reloaded by the watcher.
    Files(crate::tls::Watcher, rustls::ServerConfig),
    /// ACME: the issuer (not started) feeds the configuration's resolver;
    /// the http-01 listener and its answers when configured.
    Acme(
        crate::actors::acme::AcmeIssuer,
        Option<(TcpListener, crate::acme::Http01Tokens)>,
        rustls::ServerConfig,
    ),
}

/// The ACME settings: the identifier is the host our record names.
pub fn acme_settings(config: &Config) -> crate::acme::AcmeSettings {
    let host = record_host_now(config);
    if crate::host::follows_dht(&config.public_host, &config.host) {
        tracing::warn!(%host, "--acme without --public-host: ordering for this interface address; set --public-host to the name or address clients use");
    }
    let ca_file = &config.acme.ca_file;
    crate::acme::AcmeSettings {
        directory: config.acme.directory.clone(),
        ca_file: (!ca_file.as_os_str().is_empty()).then(|| ca_file.clone()),
        contact: config.acme.contact.clone(),
        host,
        profile: config.acme.profile.clone(),
        dir: config.data_dir.join(crate::acme::ACME_DIR),
        http01: !config.acme.http_listen.trim().is_empty(),
    }
}

/// Hyperswarm settings from the config (a server announces and looks up).
pub fn hyperswarm_settings(config: &Config) -> crate::hyperswarm::HyperswarmSettings {
    let h = &config.hyperswarm;
    crate::hyperswarm::HyperswarmSettings {
        bootstrap: h.bootstrap.clone(),
        host: h.host.clone(),
        port: h.port,
        firewalled: h.firewalled,
        max_peers: h.max_peers,
        server: true,
        client: true,
        max_message_bytes: config.limits.max_frame_bytes,
    }
}

/// Joins the topic on the HyperDHT; each connection becomes a session on
/// this arbiter, as an upgraded websocket does.
fn start_hyperswarm(
    config: &Config,
    services: Services,
) -> Result<crate::hyperswarm::Engine, StartError> {
    let arbiter = actix::Arbiter::current();
    crate::hyperswarm::Engine::start(hyperswarm_settings(config), &config.topic, move |link| {
        let services = services.clone();
        arbiter.spawn_fn(move || {
            ClientSession::hyperswarm(services, link).start();
        });
    })
    .map_err(StartError::Hyperswarm)
}

/// File descriptors kept free under the open-file limit.
const FD_HEADROOM: u64 = 512;

/// Raises the soft open-file limit to the hard one (a default soft limit
/// of 1024 would cap the node at a few hundred clients); returns the soft
/// limit in force.
pub fn raise_open_file_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let wanted = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
                lim.rlim_cur = lim.rlim_max;
            } else {
                tracing::warn!(
                    soft = lim.rlim_cur,
                    hard = lim.rlim_max,
                    "could not raise the open-file limit"
                );
            }
        }
    }
    tracing::debug!(open_files = lim.rlim_cur, "open-file limit");
    lim.rlim_cur
}

/// How often the DHT is asked for our public address (a local call).
const PUBLIC_HOST_POLL: Duration = Duration::from_secs(2);

/// The host our record carries at start (see `host::record_host`): with
/// nothing configured, our interface address toward the DHT bootstrap
/// nodes or the LAN until the DHT reports our public address.
fn record_host_now(config: &Config) -> String {
    if !crate::host::follows_dht(&config.public_host, &config.host) {
        return crate::host::record_host(&config.public_host, &config.host, None, None);
    }
    // Literal addresses only: no DNS lookup (it may block) before serving.
    let targets: Vec<std::net::SocketAddrV4> = if config.no_dht {
        vec![]
    } else {
        config
            .dht_bootstrap
            .iter()
            .filter_map(|b| b.parse().ok())
            .collect()
    };
    let local = crate::host::local_ipv4_toward(&targets);
    crate::host::record_host(&config.public_host, &config.host, None, local)
}

/// Puts the public IP the DHT reports into our signed record, when no
/// host was configured. Ends with the DHT channel.
fn watch_public_host(dht: Addr<DhtChannel>, hub: Addr<Hub>, mut host: String) {
    actix_rt::spawn(async move {
        let mut every = actix_rt::time::interval(PUBLIC_HOST_POLL);
        loop {
            every.tick().await;
            let Ok(status) = dht.send(GetDhtStatus).await else {
                return;
            };
            let chosen = crate::host::record_host("", "0.0.0.0", status.public_ip(), None);
            if status.public_ip().is_some() && chosen != host {
                host = chosen;
                hub.do_send(SetPublicHost { host: host.clone() });
            }
        }
    });
}

#[derive(Clone)]
struct WebState {
    services: Services,
    registry: Addr<PeerRegistry>,
    admission: crate::admission::Admission,
    dht: Option<Addr<DhtChannel>>,
}

/// A plain-text answer on a socket taken over for an upgrade.
async fn answer_plain<T>(
    mut framed: Framed<T, h1::Codec>,
    status: actix_http::StatusCode,
    extra: &[(&'static str, &'static str)],
    body: String,
) -> std::io::Result<()>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut res = actix_http::Response::with_body(status, ());
    let headers = res.headers_mut();
    headers.insert(
        actix_http::header::CONTENT_TYPE,
        actix_http::header::HeaderValue::from_static("text/plain"),
    );
    for (k, v) in extra {
        headers.insert(
            actix_http::header::HeaderName::from_static(k),
            actix_http::header::HeaderValue::from_static(v),
        );
    }
    let body = bytes::Bytes::from(body);
    // One write: a client may read only what came with the head.
    framed
        .feed(h1::Message::Item((
            res,
            actix_http::body::BodySize::Sized(body.len() as u64),
        )))
        .await?;
    framed.feed(h1::Message::Chunk(Some(body))).await?;
    framed.send(h1::Message::Chunk(None)).await
}

/// An HTTP upgrade on the websocket port: a Tool Db peer's websocket on `/`
/// becomes a `ClientSession` reading and writing the raw socket through
/// `crate::websocket` (no HTTP buffers kept); anything else is refused.
async fn ws_upgrade<T>(
    state: WebState,
    max_frame: usize,
    req: actix_http::Request,
    mut framed: Framed<T, h1::Codec>,
) -> std::io::Result<()>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    use actix_http::StatusCode;
    if req.path() != "/" {
        return answer_plain(framed, StatusCode::NOT_FOUND, &[], "not found\n".into()).await;
    }
    if let Err(e) = actix_http::ws::verify_handshake(req.head()) {
        let body = format!("tooldb-node: not a websocket handshake: {e}\n");
        return answer_plain(framed, StatusCode::BAD_REQUEST, &[], body).await;
    }
    let services = state.services.clone();
    let admission = state.admission.clone();
    let peer_addr = req.peer_addr();
    let remote = peer_addr.map_or_else(|| "unknown".to_owned(), |a| a.to_string());
    let metrics = &state.services.metrics;
    let slot = match admission.admit(peer_addr.map(|a| a.ip())) {
        Ok(slot) => {
            metrics.connections_accepted.inc();
            slot
        }
        Err(refusal) => {
            metrics.connections_refused.inc(match refusal {
                crate::admission::Refusal::Full { .. } => Refused::Full,
                crate::admission::Refusal::PerIp { .. } => Refused::PerIp,
                crate::admission::Refusal::Rate { .. } => Refused::Rate,
            });
            crate::remote_log!(info, remote = %remote, reason = %refusal, "refused a websocket");
            return answer_plain(
                framed,
                StatusCode::SERVICE_UNAVAILABLE,
                &[("retry-after", "10")],
                format!("tooldb-node: {refusal}\n"),
            )
            .await;
        }
    };
    let res = actix_http::ws::handshake_response(req.head())
        .message_body(())
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    framed
        .send(h1::Message::Item((res, actix_http::body::BodySize::None)))
        .await?;
    let parts = framed.into_parts();
    // What the reader takes from TCP counts as unfinished until a whole
    // message comes out (see admission.rs).
    let unfinished = admission.unfinished();
    let (read, write) = tokio::io::split(parts.io);
    // One limit for a frame and for a message assembled from fragments.
    let frames =
        crate::websocket::WsReader::new(read, parts.read_buf, max_frame, Some(unfinished.clone()));
    let sink = crate::websocket::WsWriter::new(write);
    ClientSession::new(services, remote, Box::pin(sink), Box::pin(frames))
        .with_admission(slot, unfinished)
        .start();
    Ok(())
}

async fn health(state: web::Data<WebState>) -> HttpResponse {
    let services = &state.services;
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

/// `self` (our signed record), `servers` (every known server with its
/// state and endpoints), `endpoints` (found but not a verified server:
/// dialing, quarantined junk, ourselves), `connected` (client ids).
async fn peers_route(state: web::Data<WebState>) -> HttpResponse {
    let hub = state.services.hub.send(GetPeers);
    let registry = state.registry.send(GetRegistryView);
    match (hub.await, registry.await) {
        (Ok(snap), Ok(view)) => HttpResponse::Ok()
            .insert_header(("access-control-allow-origin", "*"))
            .json(serde_json::json!({
                "self": snap.self_peer,
                "servers": view.servers,
                "endpoints": view.endpoints,
                "connected": snap.connected,
            })),
        (Err(e), _) | (_, Err(e)) => {
            HttpResponse::ServiceUnavailable().json(serde_json::json!({ "error": e.to_string() }))
        }
    }
}

/// Everything the status page shows: identity, DHT, known servers,
/// connected clients and the node's counters.
async fn status_route(state: web::Data<WebState>) -> HttpResponse {
    let services = &state.services;
    let hub = services.hub.send(GetPeers);
    let registry = state.registry.send(GetRegistryView);
    let dht = match &state.dht {
        Some(d) => d.send(GetDhtStatus).await.ok(),
        None => None,
    };
    match (hub.await, registry.await) {
        (Ok(snap), Ok(view)) => HttpResponse::Ok()
            .insert_header(("cache-control", "no-store"))
            .json(serde_json::json!({
                "address": snap.self_peer.address,
                "clientId": &*services.client_id,
                "topic": services.config.topic,
                "self": snap.self_peer,
                "now": now_ms(),
                "dht_enabled": state.dht.is_some(),
                "dht": crate::status::dht_json(dht.as_ref()),
                "servers": view.servers,
                "endpoints": view.endpoints,
                "connected": snap.connected,
                "metrics": crate::status::metrics_json(&services.metrics),
            })),
        (Err(e), _) | (_, Err(e)) => {
            HttpResponse::ServiceUnavailable().json(serde_json::json!({ "error": e.to_string() }))
        }
    }
}

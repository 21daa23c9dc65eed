//! Configuration: code defaults, then the `--config` TOML file, then
//! `TOOLDB_*` environment variables (nested keys joined by `__`, e.g.
//! `TOOLDB_LIMITS__MAX_FRAME_BYTES`), then command-line flags.
//! `config/default.toml` documents every key; a test keeps it equal to the
//! defaults here.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::crypto::KeyScheme;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// DHT topic, and the topic every peer record must name.
    pub topic: String,
    /// Address the websocket/HTTP listener binds.
    pub host: String,
    pub port: u16,
    /// Host put in our signed peer record; empty = `host` unless that is a
    /// wildcard, then what the DHT reports, else 127.0.0.1.
    pub public_host: String,
    pub data_dir: PathBuf,
    /// Servers dialed at start and kept (HOST:PORT).
    pub peers: Vec<String>,
    /// DHT bootstrap nodes; empty = the public Mainline bootstrap nodes.
    pub dht_bootstrap: Vec<String>,
    pub no_dht: bool,
    /// UDP port of our DHT node; 0 = any free port.
    pub dht_port: u16,
    /// LAN discovery: announce a hash of the topic on mDNS and dial the
    /// servers of the topic announced on the local network.
    pub lan: bool,
    /// Proof of work: leading zeros required in a record's hash (0 = off).
    pub pow: u32,
    /// The node's own key type: "secp256k1" or "p256".
    pub key_scheme: KeyScheme,
    /// Where `/metrics` (Prometheus) is served, HOST:PORT, or "off".
    pub metrics_listen: String,
    /// Log lines: "text" (colour only on a terminal) or "json".
    pub log_format: LogFormat,
    pub limits: Limits,
    pub peering: Peering,
    pub storage: StorageConfig,
    pub tls: TlsConfig,
    pub hyperswarm: HyperswarmConfig,
    pub acme: AcmeConfig,
    pub trackers: TrackersConfig,
}

/// WebTorrent tracker discovery, as Tool Db's hybrid network adapter does
/// it (see `src/tracker.rs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrackersConfig {
    /// Websocket trackers (`ws://` or `wss://`) to announce on; empty = off.
    pub urls: Vec<String>,
    /// The name browsers find this server by (`findServer(name)`); empty
    /// = the node's address.
    pub server_name: String,
    /// How often each tracker is announced on, s (the adapter's 30).
    pub announce_every_secs: u64,
    /// First delay before a lost tracker is dialed again, ms.
    pub retry_initial_ms: u64,
    /// Cap of that growing delay, ms.
    pub retry_max_ms: u64,
}

impl Default for TrackersConfig {
    fn default() -> Self {
        TrackersConfig {
            urls: vec![],
            server_name: String::new(),
            announce_every_secs: 30,
            retry_initial_ms: 1_000,
            retry_max_ms: 120_000,
        }
    }
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// For people: ANSI colours only when stderr is a terminal.
    Text,
    /// For machines: one JSON object per line.
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest websocket frame accepted; bigger ones close the socket.
    pub max_frame_bytes: usize,
    /// Malformed frames (non-JSON, missing fields) tolerated per socket.
    pub max_bad_frames: u32,
    /// Records failing verification tolerated per socket.
    pub max_invalid_records: u32,
    /// How old (or how far ahead) a ping's peer record may be, in ms.
    pub ping_window_ms: u64,
    /// (type, id) pairs remembered to drop repeats.
    pub processed_ids: usize,
    /// Record hashes remembered per client so none is sent to it twice.
    pub sent_hashes_per_client: usize,
    /// How long a relayed get/query waits for answers to pass back, in ms.
    pub pending_request_ms: u64,
    /// How long a disconnected client keeps its subscriptions, in seconds.
    pub subscription_grace_secs: u64,
    /// Most keys one queryAck lists.
    pub query_max_keys: usize,
    /// A socket silent this long (no frame, no pong) is closed, in seconds.
    pub idle_timeout_secs: u64,
    /// Work in flight per connection, in bytes (each frame costs its size
    /// plus a fixed overhead): past it the socket is not read until work
    /// finishes, so TCP slows the sender. Never a reason to close.
    pub connection_window_bytes: usize,
    /// Work in flight over all connections, in bytes, likewise.
    pub total_window_bytes: usize,
    /// Output pending to one peer, in bytes, past which it counts as not
    /// reading and is closed as a slow consumer.
    pub max_pending_output_bytes: usize,
    /// Answers to reads (get, crdtGet, query) pending to all peers
    /// together, in bytes: past it answers wait for room, and peers whose
    /// output makes no progress meanwhile are closed as slow consumers.
    pub total_output_bytes: usize,
    /// Output pending to one peer past which it is congested: its own
    /// frames are not read meanwhile, and a congested server link pauses
    /// the intake of client work until it drains to half of this.
    pub output_high_water_bytes: usize,
    /// A write that makes no progress for this long (a peer frozen at the
    /// TCP level) closes the connection, in seconds.
    pub write_timeout_secs: u64,
    /// Subscriptions one client may hold; more are refused.
    pub max_subscriptions_per_client: usize,
    /// Verified clients gone (within their grace period) whose
    /// subscriptions are kept; past it the oldest are forgotten.
    pub max_gone_clients: usize,
    /// Verified servers remembered; a new one displaces the oldest
    /// unconnected one.
    pub max_known_servers: usize,
    /// Servers a pong lists besides ourselves (connected ones first).
    pub pong_max_servers: usize,
    /// Longest key accepted in a request or record, bytes.
    pub max_key_bytes: usize,
    /// Bytes all subscriptions together may hold (keys and client ids).
    pub max_subscription_bytes: usize,
    /// Listed server records one connection may have verified per minute.
    pub listed_verifications_per_minute: u32,
    /// Websocket connections open at once, all peers together; past it an
    /// upgrade is answered 503 (plain HTTP such as /health still is served).
    pub max_connections: usize,
    /// Websocket connections open at once from one source address (an
    /// IPv4 address or an IPv6 /64).
    pub max_connections_per_ip: usize,
    /// New websocket connections per second from one source address
    /// (sustained; a burst of `connect_burst_per_ip` is allowed).
    pub connects_per_ip_per_sec: u32,
    pub connect_burst_per_ip: u32,
    /// Apply the per-address limits to loopback too (off: a local reverse
    /// proxy shows every client as 127.0.0.1).
    pub limit_loopback: bool,
    /// A websocket that sends no Tool Db `ping` this long is closed, s.
    pub handshake_timeout_secs: u64,
    /// Bytes of messages read in part (a frame or fragments not yet
    /// complete), all sockets together; past it a socket adding to its
    /// unfinished message is closed.
    pub max_unfinished_bytes: usize,
    /// A message begun must be complete within this, s.
    pub message_timeout_secs: u64,
    /// Longest message id, bytes (ids are remembered to drop repeats).
    pub max_id_bytes: usize,
    /// Deepest JSON nesting in a message (records, function arguments,
    /// peer records); Tool Db's JS clients crash past a few thousand.
    pub max_json_depth: usize,
    /// Log lines caused by remote peers, per second for the whole node
    /// (bursts of ten times that); the rest are counted and the count is
    /// logged, so an attacker cannot fill the disk.
    pub remote_log_lines_per_sec: u32,
    /// Largest record stored, bytes, CRDT change sets included (a change
    /// that would pass it is refused); below `max_frame_bytes` so that any
    /// record can be sent.
    pub max_record_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Peering {
    /// First reconnect delay after a peer connection fails, in ms.
    pub backoff_initial_ms: u64,
    /// Cap of the exponential reconnect delay, in ms.
    pub backoff_max_ms: u64,
    /// How long a dial may take before it counts as failed, in ms.
    pub connect_timeout_ms: u64,
    /// Consecutive failed dials after which a dialer hands its endpoint
    /// back to the registry, which quarantines it with growing delays.
    pub give_up_after: u32,
    /// First quarantine delay of an endpoint given back, in ms.
    pub quarantine_initial_ms: u64,
    /// Cap of the growing quarantine delay, in ms.
    pub quarantine_max_ms: u64,
    /// How often two connected servers of ours reconcile their stores
    /// (they also do at once when they connect), in seconds.
    pub reconcile_every_secs: u64,
    /// Most records sent in answer to one reconciliation step.
    pub reconcile_max_records: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Flush to disk before a write is visible to anyone (survives kill -9).
    pub sync_writes: bool,
    /// Storage worker threads sharing the one sled database.
    pub threads: usize,
    /// sled's page cache, MiB. sled's own default is 1 GiB, and the cache
    /// fills with what is written: a 30 MB burst grew the node by ~46 MiB.
    pub cache_mib: u64,
}

/// Hyperswarm: join `sha256(topic)` on the HyperDHT too (`--hyperswarm`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HyperswarmConfig {
    pub enabled: bool,
    /// HyperDHT bootstrap nodes (HOST:PORT); empty = the public ones.
    pub bootstrap: Vec<String>,
    /// Address our HyperDHT node binds.
    pub host: String,
    /// UDP port of our HyperDHT node; 0 = any free port.
    pub port: u16,
    /// Tell peers we cannot be dialed directly (behind a NAT), so they
    /// holepunch; off for a server whose UDP port is reachable.
    pub firewalled: bool,
    /// Most Hyperswarm connections at once (each may hold about 18 MiB
    /// while a message arrives: see `crate::hyperswarm`).
    pub max_peers: usize,
}

impl Default for HyperswarmConfig {
    fn default() -> Self {
        HyperswarmConfig {
            enabled: false,
            bootstrap: vec![],
            host: "0.0.0.0".into(),
            port: 0,
            firewalled: false,
            max_peers: 32,
        }
    }
}

/// TLS on the websocket port; both files or neither.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first; empty = plain ws/http.
    pub cert_file: PathBuf,
    /// PEM private key of the leaf certificate.
    pub key_file: PathBuf,
    /// Extra PEM root CAs trusted when we dial wss servers, besides the
    /// webpki roots (and `[acme] ca_file`); empty = none.
    pub ca_file: PathBuf,
}

impl TlsConfig {
    /// The files to serve TLS with, if any; an error if only one is set.
    pub fn files(&self) -> Result<Option<crate::tls::CertFiles>, crate::tls::TlsError> {
        crate::tls::CertFiles::from_paths(&self.cert_file, &self.key_file)
    }
}

impl Config {
    /// The extra roots our wss dials trust: `[tls] ca_file` and
    /// `[acme] ca_file` (a private CA that issues our certificate likely
    /// issues our peers' too).
    pub fn dial_roots(&self) -> Vec<PathBuf> {
        [&self.tls.ca_file, &self.acme.ca_file]
            .into_iter()
            .filter(|p| !p.as_os_str().is_empty())
            .cloned()
            .collect()
    }

    /// Whether the websocket port speaks TLS (files or ACME).
    pub fn serves_tls(&self) -> bool {
        self.acme.enabled || !self.tls.cert_file.as_os_str().is_empty()
    }
}

/// A certificate obtained and renewed over ACME (`serve --acme`) for the
/// host our peer record names; not with `[tls]` files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AcmeConfig {
    pub enabled: bool,
    /// The ACME directory URL.
    pub directory: String,
    /// An extra PEM root trusted for the directory's HTTPS (and our
    /// outbound wss dials); empty = the webpki roots only.
    pub ca_file: PathBuf,
    /// Contact addresses given to the CA (e-mail); may be empty.
    pub contact: Vec<String>,
    /// ACME profile; empty = "shortlived" for an IP address, none for a name.
    pub profile: String,
    /// HOST:PORT to answer `http-01` on (port 80 for a public CA); empty =
    /// `tls-alpn-01` on the websocket port.
    pub http_listen: String,
}

impl Default for AcmeConfig {
    fn default() -> Self {
        AcmeConfig {
            enabled: false,
            directory: crate::acme::LETS_ENCRYPT_DIRECTORY.into(),
            ca_file: PathBuf::new(),
            contact: vec![],
            profile: String::new(),
            http_listen: String::new(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            topic: "tool-db-default".into(),
            host: "0.0.0.0".into(),
            port: 9000,
            public_host: String::new(),
            data_dir: PathBuf::from("./data"),
            peers: vec![],
            dht_bootstrap: vec![],
            no_dht: false,
            dht_port: 0,
            lan: true,
            pow: 0,
            key_scheme: KeyScheme::Secp256k1,
            metrics_listen: crate::metrics::DEFAULT_LISTEN.into(),
            log_format: LogFormat::Text,
            limits: Limits::default(),
            peering: Peering::default(),
            storage: StorageConfig::default(),
            tls: TlsConfig::default(),
            hyperswarm: HyperswarmConfig::default(),
            acme: AcmeConfig::default(),
            trackers: TrackersConfig::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 1024 * 1024,
            max_bad_frames: 16,
            max_invalid_records: 64,
            ping_window_ms: 10 * 60 * 1000,
            processed_ids: 100_000,
            sent_hashes_per_client: 10_000,
            pending_request_ms: 30_000,
            subscription_grace_secs: 3600,
            query_max_keys: 100_000,
            idle_timeout_secs: 90,
            connection_window_bytes: 2 << 20,
            total_window_bytes: 64 << 20,
            max_pending_output_bytes: 8 << 20,
            total_output_bytes: 64 << 20,
            output_high_water_bytes: 1 << 20,
            write_timeout_secs: 30,
            max_subscriptions_per_client: 10_000,
            max_gone_clients: 10_000,
            max_known_servers: 256,
            pong_max_servers: 32,
            max_key_bytes: 1024,
            max_subscription_bytes: 64 << 20,
            listed_verifications_per_minute: 256,
            max_connections: 10_000,
            max_connections_per_ip: 256,
            connects_per_ip_per_sec: 20,
            connect_burst_per_ip: 200,
            limit_loopback: false,
            handshake_timeout_secs: 10,
            max_unfinished_bytes: 64 << 20,
            message_timeout_secs: 30,
            max_id_bytes: 256,
            max_json_depth: 128,
            remote_log_lines_per_sec: 20,
            max_record_bytes: 1_000_000,
        }
    }
}

impl Limits {
    /// The outbox limits every connection gets.
    pub fn outbox(&self) -> crate::flow::OutboxLimits {
        crate::flow::OutboxLimits {
            high_water: self.output_high_water_bytes,
            limit: self
                .max_pending_output_bytes
                .max(self.output_high_water_bytes),
            write_timeout: std::time::Duration::from_secs(self.write_timeout_secs.max(1)),
        }
    }
}

impl Default for Peering {
    fn default() -> Self {
        Peering {
            backoff_initial_ms: 500,
            backoff_max_ms: 30_000,
            connect_timeout_ms: 5_000,
            give_up_after: 3,
            quarantine_initial_ms: 5_000,
            quarantine_max_ms: 600_000,
            reconcile_every_secs: 60,
            reconcile_max_records: 100_000,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            sync_writes: true,
            threads: 2,
            cache_mib: 16,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(#[from] Box<figment::Error>);

impl Config {
    /// Defaults, then `file`, then `TOOLDB_*` variables. Flags are applied by
    /// the caller on the result.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::figment(file, Env::prefixed("TOOLDB_").split("__"))
            .extract()
            .map_err(|e| ConfigError(Box::new(e)))
    }

    fn figment(file: Option<&Path>, env: Env) -> Figment {
        let mut f = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            f = f.merge(Toml::file_exact(path));
        }
        f.merge(env)
    }

    /// The host to put in our signed peer record.
    pub fn advertised_host(&self) -> String {
        if !self.public_host.is_empty() {
            self.public_host.clone()
        } else if self.host != "0.0.0.0" && self.host != "::" {
            self.host.clone()
        } else {
            "127.0.0.1".into()
        }
    }
}

#[cfg(test)]
// figment's Jail returns its large error type; that is its API, not ours.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn default_toml_documents_exactly_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml");
        let from_file: Config = Figment::from(Toml::file_exact(&path)).extract().unwrap();
        assert_eq!(from_file, Config::default());
    }

    #[test]
    fn file_then_env_override_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "c.toml",
                "port = 7000\ntopic = \"file\"\n[limits]\nmax_frame_bytes = 10\n",
            )?;
            jail.set_env("TOOLDB_TOPIC", "env");
            jail.set_env("TOOLDB_LIMITS__MAX_BAD_FRAMES", "3");
            let c = Config::load(Some(Path::new("c.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.port, 7000);
            assert_eq!(c.topic, "env");
            assert_eq!(c.limits.max_frame_bytes, 10);
            assert_eq!(c.limits.max_bad_frames, 3);
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_an_error() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "prot = 7000\n")?;
            let err = Config::load(Some(Path::new("c.toml"))).unwrap_err();
            assert!(err.to_string().contains("prot"), "{err}");
            Ok(())
        });
    }
}

//! The node's counters, in one `Metrics` shared by `Arc` (the server makes
//! one; the hub, connections, registry, DHT channel and crypto pool count
//! into it; the `/metrics` listener and a status page read it).
//!
//! Counting costs an atomic add: every labelled series is resolved once
//! here (label sets are small fixed enums, never peer ids or addresses), so
//! the put path takes no lock and allocates nothing. Histograms are our own
//! `AtomicHistogram` for the same reason (prometheus-client's takes a lock
//! per observation). Names follow Prometheus conventions: `tooldb_`
//! prefix, base units, `_total` on counters (added by the encoder).
//!
//! `serve` answers `GET /metrics` on its own listener (`metrics_listen`,
//! never the websocket port) in the Prometheus text format 0.0.4, or in
//! OpenMetrics when the scraper asks for it.

use std::marker::PhantomData;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::record::RecordError;

/// `metrics_listen`'s default: loopback only, Prometheus's port range.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";
/// The `metrics_listen` value that turns the listener off.
pub const OFF: &str = "off";
/// Scrapers connected at once; more wait in the accept queue (memory an
/// outsider can grow stays bounded).
const MAX_SCRAPERS: usize = 64;
/// Upper bounds of the verify-time buckets, seconds (a P-256 check takes
/// ~40 µs, secp256k1 ~70 µs; a busy pool queues).
const VERIFY_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.01, 0.1,
];
/// Upper bounds of the DHT call buckets, seconds (a lookup runs up to its
/// timeout, an announce a few seconds).
const DHT_BUCKETS: &[f64] = &[0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// A label enum: one label (`KEY`) whose values are the variants.
pub trait LabelEnum: Copy + 'static {
    const KEY: &'static str;
    const ALL: &'static [Self];
    fn as_str(self) -> &'static str;
    fn index(self) -> usize;
}

/// Declares a fieldless enum and its `LabelEnum` impl.
macro_rules! label_enum {
    ($(#[$m:meta])* pub enum $name:ident ($key:literal) {
        $($(#[$vm:meta])* $var:ident => $s:literal,)+
    }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vm])* $var,)+ }
        impl LabelEnum for $name {
            const KEY: &'static str = $key;
            const ALL: &'static [Self] = &[$($name::$var,)+];
            fn as_str(self) -> &'static str {
                match self { $($name::$var => $s,)+ }
            }
            fn index(self) -> usize {
                self as usize
            }
        }
    };
}

label_enum! {
    /// Why a websocket ended.
    pub enum CloseCause("reason") {
        /// The peer closed it, or the socket went away.
        PeerClosed => "peer_closed",
        /// A websocket protocol error or a failed socket.
        SocketError => "socket_error",
        /// A frame or message over the size limits.
        TooLarge => "too_large",
        /// Malformed frames, failed records or refused identities past the limits.
        BadInput => "bad_input",
        /// Nothing heard within `idle_timeout_secs`.
        Idle => "idle",
        /// No valid handshake: no Tool Db ping in time or one refused; no
        /// verified pong from a server we dialed.
        NoHandshake => "no_handshake",
        /// A message begun and not finished in time, or the node's buffer full.
        UnfinishedMessage => "unfinished_message",
        /// Output pending past `max_pending_output_bytes`.
        SlowConsumer => "slow_consumer",
        /// A write made no progress within `write_timeout_secs`.
        WriteStalled => "write_stalled",
        /// A second link to the same server (the registry's rule).
        Duplicate => "duplicate",
        /// A link to this node itself.
        Myself => "myself",
        /// The node is stopping.
        Shutdown => "shutdown",
    }
}

label_enum! {
    /// Why a websocket upgrade was refused (`admission::Refusal`).
    pub enum Refused("reason") {
        Full => "max_connections",
        PerIp => "max_connections_per_ip",
        Rate => "connects_per_ip_per_sec",
    }
}

label_enum! {
    /// Why reading a connection paused (backpressure, never a close).
    pub enum Pause("reason") {
        /// Its window of work in flight is used up.
        Window => "window",
        /// Its own output is over the high-water mark.
        OutputCongested => "output_congested",
        /// A server link is congested: client work waits.
        ServerLinkCongested => "server_link_congested",
        /// An answer waited for room in the node's output budget.
        OutputBudget => "output_budget",
    }
}

label_enum! {
    /// Why a put (or crdtPut) was refused: Tool Db's verification results
    /// and ours (`RecordError`), or a storage failure.
    pub enum PutRejection("reason") {
        InvalidData => "invalid_data",
        InvalidTimestamp => "invalid_timestamp",
        AddressMismatch => "address_mismatch",
        InvalidKey => "invalid_key",
        CantOverwrite => "cant_overwrite",
        NoProofOfWork => "no_proof_of_work",
        InvalidHashNonce => "invalid_hash_nonce",
        InvalidSignature => "invalid_signature",
        Rekeyed => "rekeyed",
        BackDated => "back_dated",
        TooLarge => "too_large",
        StorageError => "storage_error",
    }
}

impl From<&RecordError> for PutRejection {
    fn from(e: &RecordError) -> Self {
        match e {
            RecordError::InvalidData(_) => PutRejection::InvalidData,
            RecordError::InvalidTimestamp { .. } => PutRejection::InvalidTimestamp,
            RecordError::AddressMismatch { .. } => PutRejection::AddressMismatch,
            RecordError::InvalidKey { .. } => PutRejection::InvalidKey,
            RecordError::CantOverwrite { .. } => PutRejection::CantOverwrite,
            RecordError::NoProofOfWork { .. } => PutRejection::NoProofOfWork,
            RecordError::InvalidHashNonce => PutRejection::InvalidHashNonce,
            RecordError::InvalidSignature(_) => PutRejection::InvalidSignature,
            RecordError::Rekeyed { .. } => PutRejection::Rekeyed,
            RecordError::BackDated { .. } => PutRejection::BackDated,
            // A bound on what one key holds, as TooLarge is.
            RecordError::TooLarge { .. } | RecordError::TooManyLists { .. } => {
                PutRejection::TooLarge
            }
        }
    }
}

label_enum! {
    /// How a DHT lookup ended.
    pub enum LookupResult("result") {
        /// It returned at least one endpoint.
        Found => "found",
        /// It returned none.
        Empty => "empty",
        /// The DHT failed (the channel restarts).
        Error => "error",
    }
}

label_enum! {
    /// How a DHT announce round ended.
    pub enum AnnounceResult("result") {
        Announced => "announced",
        Failed => "failed",
        /// The DHT reports us unreachable: looked up without announcing.
        Skipped => "skipped_unreachable",
    }
}

label_enum! {
    /// What happened on WebTorrent tracker sockets (`TrackerChannel`).
    pub enum TrackerEvent("event") {
        /// A tracker socket opened.
        Connected => "connected",
        /// A dial failed or a socket ended; a redial follows the backoff.
        Failed => "failed",
        /// An announce sent (one per info hash and interval).
        Announced => "announced",
        /// The tracker answered an announce of ours.
        Answered => "answered",
        /// The tracker refused something ("failure reason").
        Refused => "refused",
        /// An offer a server was passed and ignored.
        OfferIgnored => "offer_ignored",
    }
}

label_enum! {
    /// Where a server endpoint was found (`registry::Source`).
    pub enum EndpointSource("source") {
        Static => "static",
        Book => "peer_book",
        Dht => "dht",
        Lan => "lan",
        Exchange => "pong",
        Inbound => "inbound",
    }
}

impl From<crate::registry::Source> for EndpointSource {
    fn from(s: crate::registry::Source) -> Self {
        use crate::registry::Source;
        match s {
            Source::Static => EndpointSource::Static,
            Source::Book => EndpointSource::Book,
            Source::Dht => EndpointSource::Dht,
            Source::Lan => EndpointSource::Lan,
            Source::Exchange => EndpointSource::Exchange,
            Source::Inbound => EndpointSource::Inbound,
        }
    }
}

label_enum! {
    /// Why a dial of a server failed.
    pub enum DialFailure("reason") {
        /// No websocket: refused, unreachable, TLS or HTTP error, timeout.
        Connect => "connect",
        /// A socket, but no verified pong in time.
        Handshake => "handshake",
    }
}

type Labels = [(&'static str, &'static str); 1];

/// One counter per value of `L`, resolved at registration.
#[derive(Debug, Clone)]
pub struct Counters<L> {
    by: Box<[Counter]>,
    _label: PhantomData<L>,
}

impl<L: LabelEnum> Counters<L> {
    fn register(registry: &mut Registry, name: &str, help: &str) -> Self {
        let family = Family::<Labels, Counter>::default();
        let by = L::ALL
            .iter()
            .map(|l| family.get_or_create_owned(&[(L::KEY, l.as_str())]))
            .collect();
        registry.register(name, help, family);
        Counters {
            by,
            _label: PhantomData,
        }
    }

    pub fn inc(&self, label: L) {
        self.by[label.index()].inc();
    }

    pub fn inc_by(&self, label: L, n: u64) {
        self.by[label.index()].inc_by(n);
    }

    pub fn get(&self, label: L) -> u64 {
        self.by[label.index()].get()
    }
}

/// A histogram of durations in seconds over fixed buckets, in atomics:
/// observing takes no lock.
#[derive(Debug)]
pub struct AtomicHistogram {
    bounds: &'static [f64],
    /// One count per bound, plus +Inf (not cumulative).
    counts: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

impl AtomicHistogram {
    fn new(bounds: &'static [f64]) -> Self {
        AtomicHistogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Registered by `Arc`: the registry and the counting code share it.
#[derive(Debug)]
struct Shared<M>(Arc<M>);

impl<M: EncodeMetric> EncodeMetric for Shared<M> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }
    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }
}

/// Open connections by role and direction (inbound servers are those
/// proved by a dial of ours).
#[derive(Debug, Clone)]
pub struct ConnectionGauges {
    pub inbound_client: Gauge,
    pub inbound_server: Gauge,
    pub outbound_server: Gauge,
}

impl ConnectionGauges {
    pub fn of(&self, is_server: bool, outbound: bool) -> &Gauge {
        match (is_server, outbound) {
            (_, true) => &self.outbound_server,
            (true, false) => &self.inbound_server,
            (false, false) => &self.inbound_client,
        }
    }
}

/// Every metric of one node.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub connections: ConnectionGauges,
    pub connections_accepted: Counter,
    pub connections_refused: Counters<Refused>,
    pub connections_closed: Counters<CloseCause>,
    pub backpressure_pauses: Counters<Pause>,
    pub frames_received: Counter,
    pub frames_sent: Counter,
    pub received_bytes: Counter,
    pub sent_bytes: Counter,
    pub puts_accepted: Counter,
    pub puts_rejected: Counters<PutRejection>,
    pub verify_duration: Arc<AtomicHistogram>,
    pub dht_lookups: Counters<LookupResult>,
    pub dht_lookup_duration: Arc<AtomicHistogram>,
    pub dht_announces: Counters<AnnounceResult>,
    pub dht_announce_duration: Arc<AtomicHistogram>,
    pub endpoints_found: Counters<EndpointSource>,
    pub tracker_events: Counters<TrackerEvent>,
    pub dials: Counter,
    pub dial_failures: Counters<DialFailure>,
    pub anti_entropy_rounds: Counter,
    pub anti_entropy_records: Counter,
    pub storage_bytes: Gauge,
    /// When the certificate new TLS handshakes get expires (Unix seconds;
    /// 0 = none: plain ws, or ACME before its first certificate).
    pub tls_certificate_expiry: Gauge,
    pub acme_certificates_issued: Counter,
    pub acme_order_failures: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut root = Registry::default();
        let r = root.sub_registry_with_prefix("tooldb");
        r.register(
            "build",
            "The running tooldb-node's version",
            Info::new([("version", env!("CARGO_PKG_VERSION"))]),
        );
        let open = Family::<[(&'static str, &'static str); 2], Gauge>::default();
        let gauge =
            |role, direction| open.get_or_create_owned(&[("role", role), ("direction", direction)]);
        let connections = ConnectionGauges {
            inbound_client: gauge("client", "inbound"),
            inbound_server: gauge("server", "inbound"),
            outbound_server: gauge("server", "outbound"),
        };
        r.register(
            "connections",
            "Identified websocket connections open, by role and direction",
            open,
        );
        let counter = |r: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            r.register(name, help, c.clone());
            c
        };
        let counter_bytes = |r: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            r.register_with_unit(name, help, Unit::Bytes, c.clone());
            c
        };
        let histogram = |r: &mut Registry, name: &str, help: &str, bounds| {
            let h = Arc::new(AtomicHistogram::new(bounds));
            r.register_with_unit(name, help, Unit::Seconds, Shared(h.clone()));
            h
        };
        let connections_accepted =
            counter(r, "connections_accepted", "Websocket upgrades admitted");
        let connections_refused = Counters::register(
            r,
            "connections_refused",
            "Websocket upgrades refused (HTTP 503), by the limit reached",
        );
        let connections_closed =
            Counters::register(r, "connections_closed", "Websockets ended, by reason");
        let backpressure_pauses = Counters::register(
            r,
            "backpressure_pauses",
            "Times reading a connection paused for backpressure, by reason",
        );
        let frames_received = counter(r, "frames_received", "Websocket messages read");
        let frames_sent = counter(r, "frames_sent", "Websocket text messages written");
        let received_bytes = counter_bytes(r, "received", "Bytes of websocket messages read");
        let sent_bytes = counter_bytes(r, "sent", "Bytes of websocket text messages written");
        let puts_accepted = counter(
            r,
            "puts_accepted",
            "Puts and crdtPuts verified and taken (stored, merged, or older than the stored one)",
        );
        let puts_rejected =
            Counters::register(r, "puts_rejected", "Puts and crdtPuts refused, by reason");
        let verify_duration = histogram(
            r,
            "record_verify_duration",
            "Time to verify one record's hash and signature",
            VERIFY_BUCKETS,
        );
        let dht_lookups =
            Counters::register(r, "dht_lookups", "DHT lookups of our topic, by result");
        let dht_lookup_duration = histogram(
            r,
            "dht_lookup_duration",
            "Duration of DHT lookups",
            DHT_BUCKETS,
        );
        let dht_announces =
            Counters::register(r, "dht_announces", "DHT announce rounds, by result");
        let dht_announce_duration = histogram(
            r,
            "dht_announce_duration",
            "Duration of DHT announces",
            DHT_BUCKETS,
        );
        let tracker_events = Counters::register(
            r,
            "tracker_events",
            "WebTorrent tracker sockets and announces, by event",
        );
        let endpoints_found = Counters::register(
            r,
            "endpoints_found",
            "Server endpoints found, by source (repeats included)",
        );
        let dials = counter(r, "dials", "Dials of servers started");
        let dial_failures = Counters::register(
            r,
            "dial_failures",
            "Dials of servers that failed, by reason",
        );
        let anti_entropy_rounds = counter(
            r,
            "anti_entropy_rounds",
            "Reconciliation rounds started with servers of ours",
        );
        let anti_entropy_records = counter(
            r,
            "anti_entropy_records",
            "Records sent to servers of ours by reconciliation",
        );
        let storage_bytes = Gauge::default();
        r.register_with_unit(
            "storage",
            "Size of the database on disk",
            Unit::Bytes,
            storage_bytes.clone(),
        );
        let tls_certificate_expiry = Gauge::default();
        r.register_with_unit(
            "tls_certificate_expiry_timestamp",
            "When the served TLS certificate expires, Unix time (0: none)",
            Unit::Seconds,
            tls_certificate_expiry.clone(),
        );
        let acme_certificates_issued = counter(
            r,
            "acme_certificates_issued",
            "Certificates obtained over ACME (first and renewals)",
        );
        let acme_order_failures = counter(
            r,
            "acme_order_failures",
            "ACME orders that failed (each is retried with backoff)",
        );
        Metrics {
            registry: root,
            connections,
            connections_accepted,
            connections_refused,
            connections_closed,
            backpressure_pauses,
            frames_received,
            frames_sent,
            received_bytes,
            sent_bytes,
            puts_accepted,
            puts_rejected,
            verify_duration,
            dht_lookups,
            dht_lookup_duration,
            dht_announces,
            dht_announce_duration,
            endpoints_found,
            tracker_events,
            dials,
            dial_failures,
            anti_entropy_rounds,
            anti_entropy_records,
            storage_bytes,
            tls_certificate_expiry,
            acme_certificates_issued,
            acme_order_failures,
        }
    }

    /// The Prometheus text format (0.0.4).
    pub fn encode_prometheus(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// OpenMetrics text.
    pub fn encode_openmetrics(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    pub fn put_rejected(&self, error: &RecordError) {
        self.puts_rejected.inc(PutRejection::from(error));
    }
}

/// `metrics_listen` that is neither `off` nor HOST:PORT.
#[derive(Debug, thiserror::Error)]
pub enum MetricsListenError {
    #[error("bad metrics_listen {0:?}: expected HOST:PORT or \"off\"")]
    Bad(String),
    #[error("cannot listen for metrics on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

/// Binds `metrics_listen`; `None` for `off`.
pub fn bind(listen: &str) -> Result<Option<TcpListener>, MetricsListenError> {
    let listen = listen.trim();
    if listen.eq_ignore_ascii_case(OFF) {
        return Ok(None);
    }
    let addrs: Vec<SocketAddr> = listen
        .to_socket_addrs()
        .map_err(|_| MetricsListenError::Bad(listen.to_owned()))?
        .collect();
    if addrs.is_empty() {
        return Err(MetricsListenError::Bad(listen.to_owned()));
    }
    TcpListener::bind(&addrs[..])
        .map(Some)
        .map_err(|source| MetricsListenError::Listen {
            addr: listen.to_owned(),
            source,
        })
}

/// What the `/metrics` handler needs: the counters, and the database
/// whose size it reads at each scrape.
#[derive(Clone)]
struct Scrape {
    metrics: Arc<Metrics>,
    db: Option<sled::Db>,
}

/// The `/metrics` HTTP server on its own listener (one worker: a scrape
/// every few seconds).
pub fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    db: Option<sled::Db>,
) -> std::io::Result<actix_web::dev::Server> {
    let scrape = Scrape { metrics, db };
    Ok(HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(scrape.clone()))
            .route("/metrics", web::get().to(metrics_route))
            .default_service(web::to(|| async {
                HttpResponse::NotFound()
                    .content_type("text/plain")
                    .body("tooldb-node metrics: see /metrics\n")
            }))
    })
    .workers(1)
    .max_connections(MAX_SCRAPERS)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)?
    .run())
}

async fn metrics_route(req: HttpRequest, scrape: web::Data<Scrape>) -> HttpResponse {
    if let Some(db) = &scrape.db {
        let db = db.clone();
        // sled walks its files: off the arbiter.
        if let Ok(Ok(bytes)) = web::block(move || db.size_on_disk()).await {
            scrape
                .metrics
                .storage_bytes
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
    }
    let openmetrics = req
        .headers()
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    if openmetrics {
        HttpResponse::Ok()
            .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
            .body(scrape.metrics.encode_openmetrics())
    } else {
        HttpResponse::Ok()
            .content_type(prometheus_client::encoding::prometheus_text::CONTENT_TYPE)
            .body(scrape.metrics.encode_prometheus())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_conventions_and_labels_are_resolved_up_front() {
        let m = Metrics::new();
        m.puts_accepted.inc();
        m.put_rejected(&RecordError::InvalidHashNonce);
        m.verify_duration.observe(Duration::from_micros(40));
        let text = m.encode_prometheus();
        assert!(text.contains("tooldb_puts_accepted_total 1\n"), "{text}");
        assert!(
            text.contains("tooldb_puts_rejected_total{reason=\"invalid_hash_nonce\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("tooldb_puts_rejected_total{reason=\"invalid_signature\"} 0\n"),
            "every reason is there from the start: {text}"
        );
        assert!(
            text.contains("tooldb_record_verify_duration_seconds_count 1\n"),
            "{text}"
        );
        assert!(
            text.contains("tooldb_record_verify_duration_seconds_bucket{le=\"5e-05\"} 1\n"),
            "{text}"
        );
        assert!(text.contains(&format!(
            "tooldb_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        )));
        assert!(text.contains("tooldb_received_bytes_total 0\n"), "{text}");
    }

    #[test]
    fn every_record_error_has_its_reason() {
        let reasons: std::collections::HashSet<_> =
            PutRejection::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(reasons.len(), PutRejection::ALL.len());
        assert_eq!(
            PutRejection::from(&RecordError::TooLarge {
                key: "k".into(),
                size: 2,
                limit: 1
            }),
            PutRejection::TooLarge
        );
    }

    #[test]
    fn metrics_listen_off_or_host_port() {
        assert!(bind("off").unwrap().is_none());
        let l = bind("127.0.0.1:0").unwrap().unwrap();
        assert!(l.local_addr().unwrap().ip().is_loopback());
        let err = bind("nonsense").unwrap_err();
        assert!(err.to_string().contains("HOST:PORT"), "{err}");
    }
}

//! `TrackerChannel`: one WebTorrent websocket tracker, used as Tool Db's
//! hybrid network adapter uses it (see `src/tracker.rs`). One per tracker
//! URL, run under `actix::Supervisor` (`TrackerChannel::supervised`); its
//! owner (the server, or a client's core) keeps the `Addr` so the
//! supervisor keeps restarting it. One socket per tracker at most: the
//! actor holds one, and a new one is dialed only after it stopped.
//!
//! Owns the tracker socket (awc, outbound), the info hashes it announces
//! under, and the bounded memory of offers seen (`tracker::OffersSeen`).
//! As a server (`offer` set) it announces every `announce_every` under
//! each info hash with our record as the offer, asking the hub
//! (`GetSelfPeer`) for the host and port in force and signing the host
//! with the node key, as the adapter's servers do; offers from others are
//! ignored (never parsed, never dialed). As a finder (`found` set, no
//! offer) it announces without offers, as the adapter's `findServer`, and
//! sends every plausible offered endpoint to `found` as `ServersOffered`.
//! Receives no messages.
//!
//! A dial that fails, a socket that closes or errs, a frame over
//! `MAX_TRACKER_FRAME_BYTES`, or a tracker that answers none of our
//! announces for `SILENCE_LIMIT` intervals makes the actor stop (frames
//! that do not parse are ignored: a peer's junk offer, passed on by an
//! honest tracker, must not cost us the tracker); the supervisor's restart is the
//! reconnect, after a jittered, capped backoff kept in the actor and reset
//! once the tracker answers an announce. The outage is logged once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::io::{SinkWrite, WriteHandler};
use actix::prelude::*;
use actix_http::ws::{self, Frame, ProtocolError};
use futures_util::stream::{SplitSink, StreamExt};
use rand::Rng;

use crate::backoff::backoff_delay;
use crate::crypto::NodeKey;
use crate::messages::hub::GetSelfPeer;
use crate::messages::tracker::ServersOffered;
use crate::metrics::{Metrics, TrackerEvent};
use crate::tracker::{
    endpoint_of_offer, finder_announce, offered_host, parse_message, server_announce, OffersSeen,
    ServerOffer, TrackerMessage, ANNOUNCE_EVERY, MAX_TRACKER_FRAME_BYTES, OFFERS_PER_ANNOUNCE,
};

/// First delay before a tracker is dialed again after a failure.
pub const RETRY_INITIAL: Duration = Duration::from_secs(1);
/// Cap of the delay between two dials of one tracker.
pub const RETRY_MAX: Duration = Duration::from_secs(120);
/// How long a dial may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Announce periods without any frame from the tracker after which the
/// socket counts as dead (a tracker answers every announce).
pub const SILENCE_LIMIT: u32 = 3;

type Sink = SplitSink<actix_codec::Framed<awc::BoxedSocket, ws::Codec>, ws::Message>;

/// What a server puts in its offer.
#[derive(Clone)]
pub struct OfferSource {
    /// The adapter's `serverName` (the offer's `name`).
    pub name: String,
    /// TLS on our websocket port: the offer says `ssl: true`.
    pub ssl: bool,
    /// Our current signed record (host and port in force).
    pub self_peer: Recipient<GetSelfPeer>,
    /// Signs the host, as the adapter's `peerAccount.signData(host)`.
    pub key: Arc<NodeKey>,
}

/// How a channel runs.
#[derive(Clone)]
pub struct TrackerSettings {
    /// `ws://` or `wss://` (checked by `tracker::check_url`).
    pub url: String,
    /// The info hashes announced under (`tracker::info_hash`).
    pub info_hashes: Vec<String>,
    /// 20 characters (`tracker::peer_id_of`).
    pub peer_id: String,
    pub announce_every: Duration,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// Set: announce as a server. Unset: announce as a finder.
    pub offer: Option<OfferSource>,
}

impl TrackerSettings {
    pub fn new(url: String, info_hashes: Vec<String>, peer_id: String) -> Self {
        TrackerSettings {
            url,
            info_hashes,
            peer_id,
            announce_every: ANNOUNCE_EVERY,
            retry_initial: RETRY_INITIAL,
            retry_max: RETRY_MAX,
            offer: None,
        }
    }
}

pub struct TrackerChannel {
    settings: TrackerSettings,
    found: Option<Recipient<ServersOffered>>,
    sink: Option<SinkWrite<ws::Message, Sink>>,
    seen: OffersSeen,
    failures: u32,
    down_logged: bool,
    last_heard: Instant,
    /// (host, its signature), so the host is signed once while it holds.
    signed_host: Option<(String, String)>,
    /// This run already failed and is stopping.
    failing: bool,
    metrics: Arc<Metrics>,
}

impl TrackerChannel {
    pub fn new(settings: TrackerSettings, found: Option<Recipient<ServersOffered>>) -> Self {
        TrackerChannel {
            settings,
            found,
            sink: None,
            seen: OffersSeen::default(),
            failures: 0,
            down_logged: false,
            last_heard: Instant::now(),
            signed_host: None,
            failing: false,
            metrics: Arc::new(Metrics::new()),
        }
    }

    /// Counts into a node's `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Starts the channel under `actix::Supervisor` on the current arbiter.
    pub fn supervised(
        settings: TrackerSettings,
        found: Option<Recipient<ServersOffered>>,
    ) -> Addr<Self> {
        Self::supervised_with(settings, found, Arc::new(Metrics::new()))
    }

    /// `supervised`, counting into a node's `metrics`.
    pub fn supervised_with(
        settings: TrackerSettings,
        found: Option<Recipient<ServersOffered>>,
        metrics: Arc<Metrics>,
    ) -> Addr<Self> {
        Supervisor::start(move |_| TrackerChannel::new(settings, found).with_metrics(metrics))
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        let url = self.settings.url.clone();
        let connect = awc::Client::builder()
            .timeout(CONNECT_TIMEOUT)
            .finish()
            .ws(url.as_str())
            .max_frame_size(MAX_TRACKER_FRAME_BYTES)
            .connect();
        let fut = tokio::time::timeout(CONNECT_TIMEOUT, connect);
        ctx.spawn(fut.into_actor(self).map(|res, act, ctx| match res {
            Ok(Ok((_resp, framed))) => {
                let (sink, stream) = framed.split();
                act.sink = Some(SinkWrite::new(sink, ctx));
                ctx.add_stream(stream);
                act.last_heard = Instant::now();
                act.metrics.tracker_events.inc(TrackerEvent::Connected);
                tracing::debug!(tracker = %act.settings.url, "tracker connected");
                act.announce(ctx);
                let every = act.settings.announce_every;
                ctx.run_interval(every, |act, ctx| act.tick(ctx));
            }
            Ok(Err(e)) => act.fail(&e.to_string(), ctx),
            Err(_) => act.fail("no answer to the dial", ctx),
        }));
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        let limit = self.settings.announce_every * SILENCE_LIMIT;
        if self.last_heard.elapsed() > limit.max(Duration::from_secs(5)) {
            return self.fail("the tracker stopped answering", ctx);
        }
        self.announce(ctx);
    }

    fn send(&mut self, text: String) {
        if let Some(sink) = &mut self.sink {
            self.metrics.tracker_events.inc(TrackerEvent::Announced);
            // The sink buffers; a dead socket ends the stream, which stops us.
            let _ = sink.write(ws::Message::Text(text.into()));
        }
    }

    fn announce(&mut self, ctx: &mut Context<Self>) {
        let Some(offer) = self.settings.offer.clone() else {
            for h in self.settings.info_hashes.clone() {
                let msg = finder_announce(&h, &self.settings.peer_id);
                self.send(msg);
            }
            return;
        };
        ctx.spawn(
            async move { offer.self_peer.send(GetSelfPeer).await }
                .into_actor(self)
                .map(|res, act, _| {
                    let Ok(me) = res else { return };
                    let Some(offer) = act.settings.offer.clone() else {
                        return;
                    };
                    let host = offered_host(&me.host, me.port, offer.ssl);
                    let signature = match &act.signed_host {
                        Some((h, s)) if *h == host => s.clone(),
                        _ => {
                            let s = offer.key.sign(host.as_bytes());
                            act.signed_host = Some((host.clone(), s.clone()));
                            s
                        }
                    };
                    let record = ServerOffer {
                        host,
                        port: me.port,
                        ssl: offer.ssl,
                        name: offer.name.clone(),
                        pub_key: offer.key.address().to_owned(),
                        signature,
                    };
                    let sdp = serde_json::to_string(&record).expect("a record serialises");
                    for h in act.settings.info_hashes.clone() {
                        let msg =
                            server_announce(&h, &act.settings.peer_id, &sdp, OFFERS_PER_ANNOUNCE);
                        act.send(msg);
                    }
                }),
        );
    }

    fn on_text(&mut self, text: &str) {
        match parse_message(text) {
            Ok(TrackerMessage::Announced { info_hash }) => {
                self.last_heard = Instant::now();
                if self.settings.info_hashes.contains(&info_hash) {
                    self.metrics.tracker_events.inc(TrackerEvent::Answered);
                    self.recovered();
                }
            }
            Ok(TrackerMessage::Failure { reason }) => {
                self.last_heard = Instant::now();
                self.metrics.tracker_events.inc(TrackerEvent::Refused);
                crate::remote_log!(warn, tracker = %self.settings.url, reason = %reason, "the tracker refused an announce");
            }
            Ok(TrackerMessage::Offer {
                info_hash,
                peer_id,
                offer_id,
                sdp,
            }) => {
                // A server acts on no one's offer: it only announces.
                let Some(found) = self.found.clone() else {
                    self.metrics.tracker_events.inc(TrackerEvent::OfferIgnored);
                    return;
                };
                if peer_id == self.settings.peer_id
                    || !self.settings.info_hashes.contains(&info_hash)
                    || !self.seen.admit_offer(&offer_id, Instant::now())
                {
                    return;
                }
                match endpoint_of_offer(&sdp) {
                    Ok((endpoint, offer)) => {
                        if self.seen.admit_endpoint(&endpoint, Instant::now()) {
                            if offer.ssl {
                                // Dialed with wss first, whatever its port.
                                crate::transport::remember_scheme(&endpoint, true);
                            }
                            tracing::debug!(tracker = %self.settings.url, endpoint = %endpoint, name = %offer.name, "a server was offered");
                            // Losing one is acceptable: the server offers again.
                            found.do_send(ServersOffered {
                                tracker: self.settings.url.clone(),
                                endpoints: vec![endpoint],
                            });
                        }
                    }
                    Err(e) => {
                        tracing::debug!(tracker = %self.settings.url, error = %e, "ignored an offer")
                    }
                }
            }
            Ok(TrackerMessage::Other) => {}
            // Ignored, not a reason to leave the tracker: it may be a
            // peer's junk passed on. A tracker that sends nothing else
            // goes silent, and that ends the socket.
            Err(e) => {
                crate::remote_log!(debug, tracker = %self.settings.url, error = %e, "ignored a tracker frame");
            }
        }
    }

    fn recovered(&mut self) {
        if self.down_logged {
            tracing::info!(tracker = %self.settings.url, "tracker reachable again");
            self.down_logged = false;
        }
        self.failures = 0;
    }

    /// Logs an outage once and stops; the supervisor's restart (after the
    /// backoff in `started`) is the retry. Called from futures and
    /// handlers, never directly in `started`.
    fn fail(&mut self, reason: &str, ctx: &mut Context<Self>) {
        if self.failing {
            return;
        }
        self.failing = true;
        self.metrics.tracker_events.inc(TrackerEvent::Failed);
        self.failures = self.failures.saturating_add(1);
        if self.down_logged {
            tracing::debug!(tracker = %self.settings.url, reason, failures = self.failures, "tracker still down");
        } else {
            tracing::warn!(tracker = %self.settings.url, reason, "tracker unreachable; retrying with backoff");
            self.down_logged = true;
        }
        if let Some(mut sink) = self.sink.take() {
            sink.close();
        }
        ctx.stop();
    }
}

impl Actor for TrackerChannel {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.failing = false;
        let jitter = rand::thread_rng().gen::<f64>();
        let delay = backoff_delay(
            self.failures,
            self.settings.retry_initial,
            self.settings.retry_max,
            jitter,
        );
        ctx.run_later(delay, |act, ctx| act.connect(ctx));
    }
}

impl Supervised for TrackerChannel {
    fn restarting(&mut self, _: &mut Self::Context) {
        self.sink = None;
    }
}

impl WriteHandler<ProtocolError> for TrackerChannel {
    fn error(&mut self, err: ProtocolError, ctx: &mut Self::Context) -> Running {
        self.fail(&err.to_string(), ctx);
        Running::Stop
    }
}

impl StreamHandler<Result<Frame, ProtocolError>> for TrackerChannel {
    fn handle(&mut self, item: Result<Frame, ProtocolError>, ctx: &mut Self::Context) {
        match item {
            Ok(Frame::Text(bytes)) => match std::str::from_utf8(&bytes) {
                Ok(text) => self.on_text(text),
                Err(_) => self.fail("the tracker sent a non-UTF-8 text frame", ctx),
            },
            Ok(Frame::Ping(p)) => {
                if let Some(sink) = &mut self.sink {
                    let _ = sink.write(ws::Message::Pong(p));
                }
            }
            Ok(Frame::Close(reason)) => {
                let reason = reason
                    .and_then(|r| r.description)
                    .unwrap_or_else(|| "closed by the tracker".into());
                self.fail(&reason, ctx);
            }
            Ok(_) => {}
            // An oversized frame ends here too (the codec's limit).
            Err(e) => self.fail(&e.to_string(), ctx),
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        self.fail("the tracker socket ended", ctx);
    }
}

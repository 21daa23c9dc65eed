//! `PeerConnection`: one outbound websocket (awc) to a server we dial, run
//! under `actix::Supervisor`. The server keeps its `Addr` (so the
//! supervisor keeps restarting it); the hub holds its `ConnHandle` once the
//! handshake is done.
//!
//! On start it waits out its backoff, dials `ws://HOST:PORT` (`wss://HOST`
//! for port 443, as Tool Db dials), sends our `ping`, and checks the `pong`:
//! the responder must list a verifiable peer record of its own client id.
//! Then every frame goes to the hub as `FrameReceived`. Closing or failing
//! stops the actor; the supervisor's restart is the reconnect, after an
//! exponential, jittered, capped backoff kept in the actor and reset only
//! after a verified `pong`. A connection found to be to ourselves gives up.

use std::time::Duration;

use actix::io::{SinkWrite, WriteHandler};
use actix::prelude::*;
use awc::error::WsProtocolError;
use awc::ws;
use futures_util::stream::{SplitSink, StreamExt};
use rand::Rng;

use crate::actors::Services;
use crate::messages::connection::{CloseConnection, ConnHandle, SendFrame};
use crate::messages::crypto::VerifyServers;
use crate::messages::hub::{
    next_conn_id, ConnId, ConnectionClosed, ConnectionIdentified, FrameReceived, GetSelfPeer,
};
use crate::messages::registry::DialGaveUp;
use crate::messages::wire::{new_message_id, Extensions, Ping, Pong, WireMessage};

type WsSink = SplitSink<actix_codec::Framed<awc::BoxedSocket, ws::Codec>, ws::Message>;

/// Delay before reconnect attempt number `failures` (1-based): doubling
/// from `initial`, capped at `max`, then jittered down by up to half so
/// peers that failed together do not redial together.
pub fn backoff_delay(failures: u32, initial: Duration, max: Duration, jitter: f64) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let exp = initial.saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(31)));
    let capped = exp.min(max);
    capped.mul_f64(1.0 - 0.5 * jitter.clamp(0.0, 1.0))
}

/// The websocket URL Tool Db dials for a server at host:port.
pub fn peer_url(host: &str, port: u16) -> String {
    if port == 443 {
        format!("wss://{host}")
    } else {
        format!("ws://{host}:{port}")
    }
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    Idle,
    Connecting,
    AwaitingPong(String),
    Identified,
    GaveUp,
}

pub struct PeerConnection {
    host: String,
    port: u16,
    services: Services,
    /// Told when this dialer stops trying (the registry decides what next).
    registry: Option<Recipient<DialGaveUp>>,
    conn: ConnId,
    sink: Option<SinkWrite<ws::Message, WsSink>>,
    state: State,
    failures: u32,
    /// Frames that came while the pong was being verified.
    early: Vec<WireMessage>,
}

impl PeerConnection {
    pub fn new(
        host: String,
        port: u16,
        services: Services,
        registry: Option<Recipient<DialGaveUp>>,
    ) -> Self {
        PeerConnection {
            host,
            port,
            services,
            registry,
            conn: next_conn_id(),
            sink: None,
            state: State::Idle,
            failures: 0,
            early: Vec::new(),
        }
    }

    fn target(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        self.state = State::Connecting;
        let p = &self.services.config.peering;
        let timeout = Duration::from_millis(p.connect_timeout_ms);
        let url = peer_url(&self.host, self.port);
        let max_frame = self.services.config.limits.max_frame_bytes;
        let fut = awc::Client::builder()
            .timeout(timeout)
            .finish()
            .ws(url)
            .max_frame_size(max_frame)
            .connect();
        ctx.spawn(fut.into_actor(self).map(|res, act, ctx| match res {
            Ok((_resp, framed)) => {
                let (sink, stream) = framed.split();
                act.sink = Some(SinkWrite::new(sink, ctx));
                ctx.add_stream(stream);
                act.send_ping(ctx);
            }
            Err(e) => {
                tracing::info!(peer = %act.target(), error = %e, failures = act.failures + 1, "dial failed");
                ctx.stop();
            }
        }));
        // A dial or handshake that hangs counts as failed.
        ctx.run_later(timeout * 2, |act, ctx| {
            if act.state != State::Identified && act.state != State::GaveUp {
                tracing::info!(peer = %act.target(), "handshake timed out");
                ctx.stop();
            }
        });
    }

    fn send_ping(&mut self, ctx: &mut Context<Self>) {
        let hub = self.services.hub.clone();
        ctx.spawn(
            async move { hub.send(GetSelfPeer).await }
                .into_actor(self)
                .map(|res, act, ctx| {
                    let Ok(peer) = res else {
                        return ctx.stop();
                    };
                    let id = new_message_id();
                    let ping = WireMessage::Ping(Ping {
                        id: id.clone(),
                        to: vec![act.services.client_id.to_string()],
                        client_id: act.services.client_id.to_string(),
                        is_server: true,
                        peer: Some(serde_json::to_value(peer).expect("peer serialises")),
                        ext: Some(Extensions::ours()),
                    });
                    act.state = State::AwaitingPong(id);
                    act.write(ping.to_text());
                }),
        );
    }

    fn write(&mut self, text: String) {
        if let Some(sink) = self.sink.as_mut() {
            let _ = sink.write(ws::Message::Text(text.into()));
        }
    }

    fn give_up(&mut self, myself: bool, reason: String) {
        self.state = State::GaveUp;
        if let Some(r) = &self.registry {
            r.do_send(DialGaveUp {
                endpoint: self.target(),
                myself,
                reason,
            });
        }
    }

    fn on_pong(&mut self, pong: Pong, ctx: &mut Context<Self>) {
        if pong.client_id == *self.services.client_id {
            tracing::info!(peer = %self.target(), "this endpoint is this node; not dialing it again");
            self.give_up(true, "the endpoint answered with our own identity".into());
            if let Some(sink) = self.sink.as_mut() {
                sink.close();
            }
            return ctx.stop();
        }
        let crypto = self.services.crypto.clone();
        let topic = self.services.config.topic.clone();
        let claimed = pong.client_id.clone();
        let reconcile = Extensions::reconciles(&pong.ext);
        ctx.spawn(
            async move { crypto.send(VerifyServers { servers: pong.servers, topic }).await }
                .into_actor(self)
                .map(move |res, act, ctx| {
                    let servers = res.unwrap_or_default();
                    let Some(own) = servers.iter().find(|p| p.client_id() == claimed).cloned() else {
                        tracing::warn!(peer = %act.target(), client = %claimed, "closing: pong has no verifiable record of its sender");
                        return ctx.stop();
                    };
                    act.failures = 0;
                    act.state = State::Identified;
                    tracing::info!(peer = %act.target(), client = %claimed, "connected to server");
                    act.services.hub.do_send(ConnectionIdentified {
                        conn: act.conn,
                        handle: ConnHandle::of(&ctx.address()),
                        client_id: claimed,
                        is_server: true,
                        peer: Some(own),
                        outbound: true,
                        dialed: Some(act.target()),
                        reconcile,
                        ping_id: None,
                        servers,
                    });
                    for msg in std::mem::take(&mut act.early) {
                        act.services.hub.do_send(FrameReceived { conn: act.conn, msg });
                    }
                }),
        );
    }

    fn on_text(&mut self, text: &str, ctx: &mut Context<Self>) {
        let msg = match WireMessage::parse(text) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(peer = %self.target(), error = %e, "ignored a frame from a server");
                return;
            }
        };
        match (&self.state, msg) {
            (State::AwaitingPong(id), WireMessage::Pong(p)) if *id == p.id => self.on_pong(p, ctx),
            (State::Identified, msg) => self.services.hub.do_send(FrameReceived {
                conn: self.conn,
                msg,
            }),
            // The server may send right after its pong (e.g. a reconcile
            // step) while we still verify that pong: keep it for after.
            (State::AwaitingPong(_), other)
                if self.early.len() < self.services.config.limits.handshake_queue =>
            {
                self.early.push(other);
            }
            (_, other) => {
                tracing::debug!(peer = %self.target(), kind = other.kind(), "ignored a frame before the pong");
            }
        }
    }
}

impl Actor for PeerConnection {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if self.state == State::GaveUp {
            return;
        }
        let p = &self.services.config.peering;
        let delay = backoff_delay(
            self.failures,
            Duration::from_millis(p.backoff_initial_ms),
            Duration::from_millis(p.backoff_max_ms),
            rand::thread_rng().gen(),
        );
        if !delay.is_zero() {
            tracing::debug!(peer = %self.target(), delay_ms = delay.as_millis() as u64, "redialing after backoff");
        }
        ctx.run_later(delay, |act, ctx| act.connect(ctx));
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if self.state == State::Identified {
            self.services
                .hub
                .do_send(ConnectionClosed { conn: self.conn });
        }
    }
}

impl Supervised for PeerConnection {
    fn restarting(&mut self, _: &mut Self::Context) {
        if self.state == State::GaveUp {
            return;
        }
        // A connection that was up redials soon; a failing one backs off more.
        self.failures = if self.state == State::Identified {
            1
        } else {
            self.failures + 1
        };
        self.sink = None;
        self.early.clear();
        self.conn = next_conn_id();
        self.state = State::Idle;
        let limit = self.services.config.peering.give_up_after;
        if self.registry.is_some() && limit > 0 && self.failures > limit {
            tracing::info!(peer = %self.target(), failures = limit, "giving this endpoint back to the registry");
            self.give_up(false, format!("{limit} dials failed"));
        }
    }
}

impl WriteHandler<WsProtocolError> for PeerConnection {}

impl StreamHandler<Result<ws::Frame, WsProtocolError>> for PeerConnection {
    fn handle(&mut self, item: Result<ws::Frame, WsProtocolError>, ctx: &mut Self::Context) {
        match item {
            Ok(ws::Frame::Text(bytes)) => match std::str::from_utf8(&bytes) {
                Ok(text) => self.on_text(text, ctx),
                Err(_) => tracing::debug!(peer = %self.target(), "ignored a non-UTF-8 frame"),
            },
            Ok(ws::Frame::Ping(b)) => {
                if let Some(sink) = self.sink.as_mut() {
                    let _ = sink.write(ws::Message::Pong(b));
                }
            }
            Ok(ws::Frame::Close(reason)) => {
                tracing::info!(peer = %self.target(), reason = ?reason, "server closed the connection");
                ctx.stop();
            }
            Ok(_) => {}
            Err(e) => {
                tracing::info!(peer = %self.target(), error = %e, "connection error");
                ctx.stop();
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Handler<SendFrame> for PeerConnection {
    type Result = ();
    fn handle(&mut self, msg: SendFrame, _: &mut Self::Context) {
        self.write(msg.text.to_string());
    }
}

impl Handler<CloseConnection> for PeerConnection {
    type Result = ();
    fn handle(&mut self, msg: CloseConnection, ctx: &mut Self::Context) {
        tracing::info!(peer = %self.target(), reason = %msg.reason, "giving up on this peer");
        if let Some(sink) = self.sink.as_mut() {
            let _ = sink.write(ws::Message::Close(Some(ws::CloseReason {
                code: ws::CloseCode::Normal,
                description: Some(msg.reason),
            })));
            sink.close();
        }
        self.services
            .hub
            .do_send(ConnectionClosed { conn: self.conn });
        self.state = State::GaveUp;
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_jitters_down() {
        let i = Duration::from_millis(500);
        let m = Duration::from_secs(30);
        assert_eq!(backoff_delay(0, i, m, 0.0), Duration::ZERO);
        assert_eq!(backoff_delay(1, i, m, 0.0), i);
        assert_eq!(backoff_delay(2, i, m, 0.0), i * 2);
        assert_eq!(backoff_delay(4, i, m, 0.0), i * 8);
        assert_eq!(backoff_delay(20, i, m, 0.0), m, "capped");
        assert_eq!(backoff_delay(u32::MAX, i, m, 0.0), m, "no overflow");
        assert_eq!(
            backoff_delay(20, i, m, 1.0),
            m / 2,
            "jitter takes at most half"
        );
    }

    #[test]
    fn port_443_is_dialed_as_wss() {
        assert_eq!(peer_url("example.org", 443), "wss://example.org");
        assert_eq!(peer_url("127.0.0.1", 9000), "ws://127.0.0.1:9000");
    }
}

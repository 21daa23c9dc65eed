//! `ClientSession`: one inbound websocket (actix-web-actors), browser,
//! Node.js client or server. Created by the HTTP route for each upgrade; it
//! alone holds its socket, the hub holds its `ConnHandle`.
//!
//! It enforces the per-socket limits (frame size, message rate, malformed
//! frames), parses frames, and runs the handshake: frames before a `ping`
//! are ignored (as Tool Db does); the ping's peer record is verified on the
//! `Crypto` pool while later frames wait in a bounded queue; then the hub
//! gets `ConnectionIdentified` and every frame as `FrameReceived`.
//! It stops when the socket closes, on hostile input, or when idle; its end
//! is reported to the hub from `stopped()`.
//! (actix-web-actors is deprecated upstream; keep it inside this file so a
//! move to actix-ws touches only here.)

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web_actors::ws;
use bytes::BytesMut;

use crate::actors::Services;
use crate::messages::connection::{CloseConnection, ConnHandle, SendFrame};
use crate::messages::crypto::VerifyPing;
use crate::messages::hub::{
    next_conn_id, ConnId, ConnectionClosed, ConnectionIdentified, FrameReceived,
};
use crate::messages::wire::{new_message_id, Extensions, Ping, WireError, WireMessage};
use crate::peer::PeerError;

/// How often we ping an idle socket to see that it is alive.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(15);
/// Websocket close reasons may hold at most 123 bytes.
const MAX_CLOSE_REASON: usize = 123;

/// A token bucket: `rate` per second sustained, `burst` at once.
#[derive(Debug)]
pub struct RateLimit {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl RateLimit {
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        RateLimit {
            tokens: burst as f64,
            rate: rate as f64,
            burst: burst as f64,
            last: now,
        }
    }

    /// Takes one token; false when the sender is over its rate.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

enum Handshake {
    AwaitingPing,
    Verifying(VecDeque<WireMessage>),
    Identified,
}

pub struct ClientSession {
    conn: ConnId,
    services: Services,
    remote: String,
    state: Handshake,
    rate: RateLimit,
    bad_frames: u32,
    last_heard: Instant,
    fragments: Option<BytesMut>,
}

impl ClientSession {
    pub fn new(services: Services, remote: String) -> Self {
        let l = &services.config.limits;
        let rate = RateLimit::new(l.messages_per_second, l.message_burst, Instant::now());
        ClientSession {
            conn: next_conn_id(),
            services,
            remote,
            state: Handshake::AwaitingPing,
            rate,
            bad_frames: 0,
            last_heard: Instant::now(),
            fragments: None,
        }
    }

    fn close(&mut self, ctx: &mut ws::WebsocketContext<Self>, code: ws::CloseCode, reason: String) {
        let mut description = reason;
        if description.len() > MAX_CLOSE_REASON {
            let mut cut = MAX_CLOSE_REASON;
            while !description.is_char_boundary(cut) {
                cut -= 1;
            }
            description.truncate(cut);
        }
        ctx.close(Some(ws::CloseReason {
            code,
            description: Some(description),
        }));
        ctx.stop();
    }

    fn bad_frame(&mut self, ctx: &mut ws::WebsocketContext<Self>, err: &WireError) {
        self.bad_frames += 1;
        let max = self.services.config.limits.max_bad_frames;
        if self.bad_frames == 1 {
            tracing::info!(conn = self.conn, remote = %self.remote, error = %err, "ignored a malformed frame");
        }
        if self.bad_frames > max {
            tracing::warn!(conn = self.conn, remote = %self.remote, count = self.bad_frames, "closing: too many malformed frames");
            self.close(
                ctx,
                ws::CloseCode::Policy,
                format!("more than {max} malformed frames; last: {err}"),
            );
        }
    }

    fn on_text(&mut self, text: &str, ctx: &mut ws::WebsocketContext<Self>) {
        if !self.rate.take(Instant::now()) {
            let l = &self.services.config.limits;
            tracing::warn!(conn = self.conn, remote = %self.remote, "closing: message flood");
            let reason = format!(
                "rate limit exceeded: more than {}/s (burst {})",
                l.messages_per_second, l.message_burst
            );
            self.close(ctx, ws::CloseCode::Policy, reason);
            return;
        }
        let msg = match WireMessage::parse(text) {
            Ok(m) => m,
            Err(WireError::UnknownType(t)) => {
                tracing::debug!(conn = self.conn, kind = %t, "ignored a message of unknown type");
                return;
            }
            Err(e) => return self.bad_frame(ctx, &e),
        };
        match &mut self.state {
            Handshake::Identified => self.services.hub.do_send(FrameReceived {
                conn: self.conn,
                msg,
            }),
            Handshake::Verifying(queue) => {
                if queue.len() >= self.services.config.limits.handshake_queue {
                    self.close(
                        ctx,
                        ws::CloseCode::Policy,
                        "too many frames before the ping was answered".into(),
                    );
                } else {
                    queue.push_back(msg);
                }
            }
            Handshake::AwaitingPing => match msg {
                WireMessage::Ping(ping) => self.verify_ping(ping, ctx),
                other => {
                    tracing::debug!(
                        conn = self.conn,
                        kind = other.kind(),
                        "ignored a frame sent before ping"
                    );
                }
            },
        }
    }

    fn verify_ping(&mut self, ping: Ping, ctx: &mut ws::WebsocketContext<Self>) {
        self.state = Handshake::Verifying(VecDeque::new());
        let cfg = &self.services.config;
        let req = VerifyPing {
            peer: ping.peer.clone(),
            topic: cfg.topic.clone(),
            window_ms: cfg.limits.ping_window_ms,
        };
        let crypto = self.services.crypto.clone();
        ctx.spawn(
            async move { crypto.send(req).await }
                .into_actor(self)
                .map(move |res, act, ctx| act.finish_handshake(ping, res, ctx)),
        );
    }

    fn finish_handshake(
        &mut self,
        ping: Ping,
        verdict: Result<Result<crate::peer::Peer, PeerError>, MailboxError>,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        let verdict = match verdict {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "crypto pool unreachable");
                return self.close(ctx, ws::CloseCode::Error, "internal error".into());
            }
        };
        let (client_id, peer) = match verdict {
            Ok(peer) if peer.client_id() == ping.client_id => (ping.client_id.clone(), Some(peer)),
            Ok(peer) => {
                if ping.is_server {
                    let reason = format!(
                        "clientId {:?} is not the last 20 characters of the peer address",
                        ping.client_id
                    );
                    tracing::warn!(conn = self.conn, remote = %self.remote, address = %peer.address, "closing: {reason}");
                    return self.close(ctx, ws::CloseCode::Policy, reason);
                }
                (anonymous_id(), None)
            }
            Err(e @ PeerError::WrongTopic { .. }) => {
                tracing::info!(conn = self.conn, remote = %self.remote, error = %e, "closing: other topic");
                return self.close(ctx, ws::CloseCode::Policy, e.to_string());
            }
            Err(e) if ping.is_server => {
                tracing::warn!(conn = self.conn, remote = %self.remote, error = %e, "closing: server ping fails verification");
                return self.close(
                    ctx,
                    ws::CloseCode::Policy,
                    format!("server ping refused: {e}"),
                );
            }
            Err(e) => {
                // Real Tool Db clients ping before their keys are ready; serve
                // them under an id no verified client can hold.
                let id = anonymous_id();
                tracing::debug!(conn = self.conn, error = %e, client = %id, "serving an unverified client");
                (id, None)
            }
        };
        let queued = match std::mem::replace(&mut self.state, Handshake::Identified) {
            Handshake::Verifying(q) => q,
            _ => VecDeque::new(),
        };
        self.services.hub.do_send(ConnectionIdentified {
            conn: self.conn,
            handle: ConnHandle::of(&ctx.address()),
            is_server: ping.is_server && peer.is_some(),
            reconcile: ping.is_server && Extensions::reconciles(&ping.ext),
            client_id,
            peer,
            outbound: false,
            dialed: None,
            ping_id: Some(ping.id),
            servers: vec![],
        });
        for msg in queued {
            self.services.hub.do_send(FrameReceived {
                conn: self.conn,
                msg,
            });
        }
    }
}

/// An id for an unverified client: `~` is in neither address alphabet
/// (base64url, hex), so no verified client id can equal it.
fn anonymous_id() -> String {
    format!("~anon~{}", new_message_id())
}

impl Actor for ClientSession {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        tracing::debug!(conn = self.conn, remote = %self.remote, "socket opened");
        let idle = Duration::from_secs(self.services.config.limits.idle_timeout_secs);
        ctx.run_interval(HEARTBEAT_EVERY.min(idle), move |act, ctx| {
            if act.last_heard.elapsed() > idle {
                tracing::info!(conn = act.conn, remote = %act.remote, "closing: idle");
                act.close(ctx, ws::CloseCode::Away, "idle timeout".into());
            } else {
                ctx.ping(b"");
            }
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.services
            .hub
            .do_send(ConnectionClosed { conn: self.conn });
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for ClientSession {
    fn handle(&mut self, item: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        self.last_heard = Instant::now();
        let max = self.services.config.limits.max_frame_bytes;
        match item {
            Ok(ws::Message::Text(text)) => self.on_text(&text, ctx),
            Ok(ws::Message::Binary(_)) => self.bad_frame(
                ctx,
                &WireError::NotJson("binary frame; Tool Db sends text".into()),
            ),
            Ok(ws::Message::Continuation(item)) => {
                use actix_http::ws::Item;
                let (first, last, bytes) = match item {
                    Item::FirstText(b) => (true, false, b),
                    Item::FirstBinary(b) => (true, false, b),
                    Item::Continue(b) => (false, false, b),
                    Item::Last(b) => (false, true, b),
                };
                let buf = if first {
                    self.fragments.insert(BytesMut::new())
                } else {
                    match self.fragments.as_mut() {
                        Some(b) => b,
                        None => {
                            return self.close(
                                ctx,
                                ws::CloseCode::Protocol,
                                "continuation without a first frame".into(),
                            )
                        }
                    }
                };
                buf.extend_from_slice(&bytes);
                if buf.len() > max {
                    tracing::warn!(conn = self.conn, remote = %self.remote, "closing: message over the size limit");
                    return self.close(
                        ctx,
                        ws::CloseCode::Size,
                        format!("message exceeds the limit of {max} bytes"),
                    );
                }
                if last {
                    let whole = self.fragments.take().unwrap_or_default();
                    match std::str::from_utf8(&whole) {
                        Ok(text) => self.on_text(text, ctx),
                        Err(_) => self.bad_frame(ctx, &WireError::NotJson("not UTF-8".into())),
                    }
                }
            }
            Ok(ws::Message::Ping(b)) => ctx.pong(&b),
            Ok(ws::Message::Pong(_)) | Ok(ws::Message::Nop) => {}
            Ok(ws::Message::Close(reason)) => {
                ctx.close(reason);
                ctx.stop();
            }
            Err(ws::ProtocolError::Overflow) => {
                tracing::warn!(conn = self.conn, remote = %self.remote, limit = max, "closing: frame over the size limit");
                self.close(
                    ctx,
                    ws::CloseCode::Size,
                    format!("frame exceeds the limit of {max} bytes"),
                );
            }
            Err(e) => {
                tracing::info!(conn = self.conn, remote = %self.remote, error = %e, "closing: websocket protocol error");
                self.close(
                    ctx,
                    ws::CloseCode::Protocol,
                    format!("websocket protocol error: {e}"),
                );
            }
        }
    }
}

impl Handler<SendFrame> for ClientSession {
    type Result = ();
    fn handle(&mut self, msg: SendFrame, ctx: &mut Self::Context) {
        ctx.text(&*msg.text);
    }
}

impl Handler<CloseConnection> for ClientSession {
    type Result = ();
    fn handle(&mut self, msg: CloseConnection, ctx: &mut Self::Context) {
        self.close(ctx, ws::CloseCode::Policy, msg.reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_allows_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(10, 5, t0);
        for _ in 0..5 {
            assert!(r.take(t0));
        }
        assert!(!r.take(t0), "burst spent");
        assert!(
            r.take(t0 + Duration::from_millis(100)),
            "one token per 100 ms"
        );
        assert!(!r.take(t0 + Duration::from_millis(100)));
        // Refill never exceeds the burst.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..5 {
            assert!(r.take(later));
        }
        assert!(!r.take(later));
    }

    #[test]
    fn anonymous_ids_cannot_be_verified_ids() {
        // `~` is in neither address alphabet, so no verified id can equal it.
        let id = anonymous_id();
        assert!(id.starts_with('~'));
        assert_eq!(crate::crypto::address_kind(&id), None);
    }
}

//! `ClientSession`: one inbound websocket (actix-ws), browser, Node.js
//! client or server. Created by the HTTP upgrade for each websocket; it alone
//! reads its socket, the hub holds its `ConnHandle` (outbox and close).
//!
//! Reading is gated (`flow::Gated`): every frame takes credit from the
//! connection's window and the node's, and the socket is not read while
//! none is left or while the connection's own output is congested, so a
//! fast sender is slowed by TCP, never closed for volume. A writer task
//! moves the outbox to the socket and ends the session if a write stalls.
//!
//! It enforces the per-socket limits that mark hostile input (frame and
//! message size, malformed frames), parses frames, and runs the
//! handshake: frames before a `ping` are ignored (as Tool Db does); the
//! ping's peer record is verified on the `Crypto` pool while later frames
//! wait (holding their credit); then the hub gets `ConnectionIdentified`
//! and every frame as `FrameReceived`. It stops when the socket closes, on
//! hostile input, when idle, or when its writer ends; its end is reported
//! to the hub from `stopped()`. (Its bytes go through `crate::websocket`.)
//!
//! A Hyperswarm connection (`crate::hyperswarm::Link`) is a session too:
//! the same limits and handshake, its messages as text frames; as both
//! sides of a swarm connection are peers, it also sends our own ping first
//! (`ClientSession::hyperswarm`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_http::ws::{CloseCode, ProtocolError};
use actix_ws::AggregatedMessage;

use crate::actors::Services;
use crate::flow::{self, Credit, Gated, Outbox, WriterEnd};
use crate::messages::connection::{CloseConnection, ConnHandle};
use crate::messages::crypto::VerifyPing;
use crate::messages::hub::{
    next_conn_id, ConnId, ConnectionClosed, ConnectionIdentified, FrameReceived, Via,
};
use crate::messages::wire::{
    error_frame, new_message_id, Extensions, Ping, WireError, WireLimits, WireMessage,
};
use crate::metrics::CloseCause;
use crate::peer::PeerError;

/// How often we ping an idle socket to see that it is alive (and check
/// its deadlines).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(15);

type Item = Result<AggregatedMessage, ProtocolError>;
/// A websocket's frames, size limits applied (`crate::websocket::WsReader`).
pub type Frames = std::pin::Pin<Box<dyn futures_util::Stream<Item = Item>>>;
/// Where a websocket's frames are written (`crate::websocket::WsWriter`).
pub type FrameSink =
    std::pin::Pin<Box<dyn futures_util::Sink<actix_http::ws::Message, Error = std::io::Error>>>;

/// What the session reads and writes.
enum Socket {
    Websocket(FrameSink, Frames),
    Hyperswarm(crate::hyperswarm::Link),
}

enum Handshake {
    AwaitingPing,
    /// Frames that came while the ping is verified, each with its credit.
    Verifying(VecDeque<(WireMessage, Credit)>),
    Identified,
}

/// The writer task ended (the socket is gone or stalled).
#[derive(Message)]
#[rtype(result = "()")]
struct WriterEnded(WriterEnd);

pub struct ClientSession {
    conn: ConnId,
    services: Services,
    remote: String,
    state: Handshake,
    bad_frames: u32,
    last_heard: Instant,
    outbox: Outbox,
    /// A close frame is queued: frames read now are dropped, and the actor
    /// stops once the socket is done (see `close`).
    closing: bool,
    /// The hub was told this connection is gone.
    reported: bool,
    /// Until `started` hands them to the context and the writer.
    socket: Option<Socket>,
    via: Via,
    /// Our place among the node's websockets, given back when we end.
    _slot: Option<crate::admission::Slot>,
    /// Bytes read from the socket not yet a whole message.
    unfinished: Option<crate::admission::Unfinished>,
    /// Why it ends, once known (counted when it stops).
    cause: Option<CloseCause>,
    /// The ping deadline, cancelled once the ping came (a timer held for
    /// a socket's life is memory kept for nothing).
    handshake_timer: Option<SpawnHandle>,
}

impl ClientSession {
    /// A session for an upgraded socket: `frames` already carries the
    /// frame and message size limits.
    pub fn new(services: Services, remote: String, sink: FrameSink, frames: Frames) -> Self {
        Self::on(
            services,
            remote,
            Socket::Websocket(sink, frames),
            Via::Websocket,
        )
    }

    fn on(services: Services, remote: String, socket: Socket, via: Via) -> Self {
        let outbox = services.outbox();
        ClientSession {
            conn: next_conn_id(),
            services,
            remote,
            state: Handshake::AwaitingPing,
            bad_frames: 0,
            last_heard: Instant::now(),
            outbox,
            closing: false,
            reported: false,
            socket: Some(socket),
            via,
            _slot: None,
            unfinished: None,
            cause: None,
            handshake_timer: None,
        }
    }

    /// A session for a Hyperswarm connection: it pings first, as a server.
    pub fn hyperswarm(services: Services, link: crate::hyperswarm::Link) -> Self {
        let remote = format!("hyperswarm:{}", &link.remote[..link.remote.len().min(16)]);
        let via = Via::Hyperswarm {
            initiator: link.initiator,
        };
        Self::on(services, remote, Socket::Hyperswarm(link), via)
    }

    /// Our ping, with our record signed afresh for it.
    fn send_ping(&mut self, ctx: &mut Context<Self>) {
        ctx.spawn(
            self.services
                .fresh_self_peer()
                .into_actor(self)
                .map(|res, act, _| {
                    let Ok(peer) = res else { return };
                    let ping = WireMessage::Ping(Ping {
                        id: new_message_id(),
                        to: vec![act.services.client_id.to_string()],
                        client_id: act.services.client_id.to_string(),
                        is_server: true,
                        peer: Some(serde_json::to_value(peer).expect("peer serialises")),
                        ext: Some(Extensions::ours()),
                    });
                    let _ = act.outbox.push(ping.to_text().into());
                }),
        );
    }

    /// Ties the session to its admission slot and its socket's meter.
    pub fn with_admission(
        mut self,
        slot: crate::admission::Slot,
        unfinished: crate::admission::Unfinished,
    ) -> Self {
        self._slot = Some(slot);
        self.unfinished = Some(unfinished);
        self
    }

    /// Queues a close frame and leaves the hub at once, but keeps reading
    /// (and dropping) frames until the peer answers the close: closing a
    /// socket with unread input makes the kernel send a reset, which can
    /// destroy what is still queued, the close frame included. The frame
    /// stream ends with the peer's close; `write_timeout` bounds the wait
    /// for a peer that reads nothing.
    fn close(
        &mut self,
        cause: CloseCause,
        ctx: &mut Context<Self>,
        code: CloseCode,
        reason: String,
    ) {
        self.close_with(cause, ctx, code, reason, false)
    }

    fn close_with(
        &mut self,
        cause: CloseCause,
        ctx: &mut Context<Self>,
        code: CloseCode,
        reason: String,
        after_pending: bool,
    ) {
        if self.closing {
            return;
        }
        self.closing = true;
        self.cause.get_or_insert(cause);
        if after_pending {
            self.outbox.close_after_pending(code, &reason);
        } else {
            self.outbox.close(code, &reason);
        }
        self.report_closed();
        let wait = Duration::from_secs(self.services.config.limits.write_timeout_secs);
        ctx.run_later(wait, |_, ctx| ctx.stop());
    }

    fn report_closed(&mut self) {
        if !self.reported {
            self.reported = true;
            self.services
                .hub
                .do_send(ConnectionClosed { conn: self.conn });
        }
    }

    fn bad_frame(&mut self, ctx: &mut Context<Self>, err: &WireError) {
        self.bad_frames += 1;
        let max = self.services.config.limits.max_bad_frames;
        if self.bad_frames == 1 {
            crate::remote_log!(info, conn = self.conn, remote = %self.remote, error = %err, "ignored a malformed frame");
        }
        if self.bad_frames > max {
            crate::remote_log!(warn, conn = self.conn, remote = %self.remote, count = self.bad_frames, "closing: too many malformed frames");
            self.close(
                CloseCause::BadInput,
                ctx,
                CloseCode::Policy,
                format!("more than {max} malformed frames; last: {err}"),
            );
        }
    }

    fn on_text(&mut self, text: &str, credit: Credit, ctx: &mut Context<Self>) {
        let msg = match WireMessage::parse_limited(
            text,
            WireLimits::from(&self.services.config.limits),
        ) {
            Ok(m) => m,
            Err(WireError::UnknownType(t)) => {
                tracing::debug!(conn = self.conn, kind = %t, "ignored a message of unknown type");
                return;
            }
            Err(e) => {
                if matches!(e, WireError::TooDeep { .. } | WireError::IdTooLong { .. }) {
                    // A well-formed message over a limit: say which.
                    let to = [self.services.client_id.to_string()];
                    let _ = self
                        .outbox
                        .push(error_frame(&to, None, &e.to_string()).into());
                }
                return self.bad_frame(ctx, &e);
            }
        };
        match &mut self.state {
            Handshake::Identified => self.services.hub.do_send(FrameReceived {
                conn: self.conn,
                msg,
                credit,
            }),
            // Bounded by the window: each queued frame holds its credit.
            Handshake::Verifying(queue) => queue.push_back((msg, credit)),
            Handshake::AwaitingPing => match msg {
                WireMessage::Ping(ping) => self.verify_ping(ping, credit, ctx),
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

    fn verify_ping(&mut self, ping: Ping, credit: Credit, ctx: &mut Context<Self>) {
        self.state = Handshake::Verifying(VecDeque::new());
        let cfg = &self.services.config;
        let req = VerifyPing {
            peer: ping.peer.clone(),
            topic: cfg.topic.clone(),
            window_ms: cfg.limits.ping_window_ms,
        };
        let crypto = self.services.crypto.clone();
        ctx.spawn(async move { crypto.send(req).await }.into_actor(self).map(
            move |res, act, ctx| {
                act.finish_handshake(ping, res, ctx);
                drop(credit);
            },
        ));
    }

    fn finish_handshake(
        &mut self,
        ping: Ping,
        verdict: Result<Result<crate::peer::Peer, PeerError>, MailboxError>,
        ctx: &mut Context<Self>,
    ) {
        let verdict = match verdict {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "crypto pool unreachable");
                return self.close(
                    CloseCause::SocketError,
                    ctx,
                    CloseCode::Error,
                    "internal error".into(),
                );
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
                    crate::remote_log!(warn, conn = self.conn, remote = %self.remote, address = %peer.address, "closing: {reason}");
                    return self.close(CloseCause::NoHandshake, ctx, CloseCode::Policy, reason);
                }
                (anonymous_id(), None)
            }
            Err(e @ PeerError::WrongTopic { .. }) => {
                crate::remote_log!(info, conn = self.conn, remote = %self.remote, error = %e, "closing: other topic");
                return self.close(
                    CloseCause::NoHandshake,
                    ctx,
                    CloseCode::Policy,
                    e.to_string(),
                );
            }
            Err(e) if ping.is_server => {
                crate::remote_log!(warn, conn = self.conn, remote = %self.remote, error = %e, "closing: server ping fails verification");
                return self.close(
                    CloseCause::NoHandshake,
                    ctx,
                    CloseCode::Policy,
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
        if let Some(timer) = self.handshake_timer.take() {
            ctx.cancel_future(timer);
        }
        let queued = match std::mem::replace(&mut self.state, Handshake::Identified) {
            Handshake::Verifying(q) => q,
            _ => VecDeque::new(),
        };
        self.services.hub.do_send(ConnectionIdentified {
            conn: self.conn,
            handle: ConnHandle::of(&ctx.address(), self.outbox.clone()),
            is_server: ping.is_server && peer.is_some(),
            reconcile: ping.is_server && Extensions::reconciles(&ping.ext),
            crdt_lists: ping.is_server && Extensions::signs_crdt_lists(&ping.ext),
            wants_missing: Extensions::wants_missing(&ping.ext),
            client_id,
            peer,
            outbound: false,
            dialed: None,
            ping_id: Some(ping.id),
            servers: vec![],
            via: self.via,
        });
        for (msg, credit) in queued {
            self.services.hub.do_send(FrameReceived {
                conn: self.conn,
                msg,
                credit,
            });
        }
    }
}

/// An id for an unverified client: `~` is in neither address alphabet
/// (base64url, hex), so no verified client id can equal it.
fn anonymous_id() -> String {
    format!("~anon~{}", new_message_id())
}

/// What a frame costs of the window: its payload.
fn frame_cost(item: &Item) -> usize {
    match item {
        Ok(AggregatedMessage::Text(t)) => t.len(),
        Ok(AggregatedMessage::Binary(b)) => b.len(),
        _ => 0,
    }
}

impl Actor for ClientSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        tracing::debug!(conn = self.conn, remote = %self.remote, "socket opened");
        let me = ctx.address();
        let done = move |end| me.do_send(WriterEnded(end));
        match self.socket.take() {
            Some(Socket::Websocket(sink, frames)) => {
                flow::spawn_writer(self.outbox.clone(), sink, done);
                ctx.add_stream(Gated::new(
                    frames,
                    self.services.window(),
                    self.outbox.clone(),
                    frame_cost,
                ));
            }
            Some(Socket::Hyperswarm(link)) => {
                let hs = crate::hyperswarm::sink(link.outbound);
                flow::spawn_writer(self.outbox.clone(), hs, done);
                ctx.add_stream(Gated::new(
                    crate::hyperswarm::frames(link.inbound),
                    self.services.window(),
                    self.outbox.clone(),
                    frame_cost,
                ));
                self.send_ping(ctx);
            }
            None => {}
        }
        let limits = &self.services.config.limits;
        let handshake = Duration::from_secs(limits.handshake_timeout_secs.max(1));
        self.handshake_timer = Some(ctx.run_later(handshake, move |act, ctx| {
            act.handshake_timer = None;
            if matches!(act.state, Handshake::AwaitingPing) && !act.closing {
                crate::remote_log!(info, conn = act.conn, remote = %act.remote, "closing: no Tool Db ping");
                act.close(
                    CloseCause::NoHandshake,
                    ctx,
                    CloseCode::Policy,
                    format!(
                        "no Tool Db ping within {} s of opening (handshake_timeout_secs)",
                        handshake.as_secs()
                    ),
                );
            }
        }));
        // One timer per socket (each costs memory and a wakeup, and a node
        // holds thousands of idle sockets): the unfinished-message deadline
        // and the heartbeat share it, so a late message is found within a
        // tick after its deadline.
        let message_timeout = Duration::from_secs(limits.message_timeout_secs.max(1));
        let idle = Duration::from_secs(limits.idle_timeout_secs);
        let tick = HEARTBEAT_EVERY.min(idle).min(message_timeout);
        ctx.run_interval(tick, move |act, ctx| {
            if act.closing {
                return;
            }
            let late = act
                .unfinished
                .as_ref()
                .and_then(|u| u.waiting())
                .is_some_and(|w| w > message_timeout);
            if late {
                crate::remote_log!(info, conn = act.conn, remote = %act.remote, "closing: a message left unfinished");
                act.close(
                    CloseCause::UnfinishedMessage,
                    ctx,
                    CloseCode::Policy,
                    format!(
                        "a message begun was not complete within {} s (message_timeout_secs)",
                        message_timeout.as_secs()
                    ),
                );
            // A secret stream's keepalives (empty messages) never reach
            // us; a dead Hyperswarm peer is found by UDX, when our
            // keepalive (the ping below) goes unanswered.
            } else if act.last_heard.elapsed() > idle && !act.via.is_hyperswarm() {
                crate::remote_log!(info, conn = act.conn, remote = %act.remote, "closing: idle");
                act.close(
                    CloseCause::Idle,
                    ctx,
                    CloseCode::Away,
                    "idle timeout".into(),
                );
            } else {
                act.outbox.push_ping();
            }
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        // A close frame already queued still goes out; else the writer ends.
        if self.outbox.close_reason().is_none() {
            self.outbox.shut();
        }
        self.report_closed();
        let cause = self.cause.unwrap_or(CloseCause::PeerClosed);
        self.services.metrics.connections_closed.inc(cause);
    }
}

impl StreamHandler<(Item, Credit)> for ClientSession {
    fn handle(&mut self, (item, credit): (Item, Credit), ctx: &mut Self::Context) {
        if self.closing {
            return;
        }
        self.last_heard = Instant::now();
        // Only whole messages release: control frames may come between
        // fragments and must not reset the count.
        if matches!(
            item,
            Ok(AggregatedMessage::Text(_)
                | AggregatedMessage::Binary(_)
                | AggregatedMessage::Close(_))
        ) {
            if let Some(u) = &self.unfinished {
                u.done();
            }
        }
        let max = self.services.config.limits.max_frame_bytes;
        match item {
            Ok(AggregatedMessage::Text(text)) => self.on_text(&text, credit, ctx),
            Ok(AggregatedMessage::Binary(_)) => self.bad_frame(
                ctx,
                &WireError::NotJson("binary frame; Tool Db sends text".into()),
            ),
            Ok(AggregatedMessage::Ping(b)) => self.outbox.push_pong(b),
            Ok(AggregatedMessage::Pong(_)) => {}
            Ok(AggregatedMessage::Close(_)) => {
                self.close(
                    CloseCause::PeerClosed,
                    ctx,
                    CloseCode::Normal,
                    String::new(),
                );
            }
            Err(ProtocolError::Overflow) => {
                crate::remote_log!(warn, conn = self.conn, remote = %self.remote, limit = max, "closing: frame over the size limit");
                self.close(
                    CloseCause::TooLarge,
                    ctx,
                    CloseCode::Size,
                    format!("frame exceeds the limit of {max} bytes"),
                );
            }
            Err(ProtocolError::Io(e)) if e.to_string().contains("continuation size") => {
                crate::remote_log!(warn, conn = self.conn, remote = %self.remote, limit = max, "closing: message over the size limit");
                self.close(
                    CloseCause::TooLarge,
                    ctx,
                    CloseCode::Size,
                    format!("message exceeds the limit of {max} bytes"),
                );
            }
            Err(_) if self.unfinished.as_ref().is_some_and(|u| u.was_over()) => {
                let limit = self.services.config.limits.max_unfinished_bytes;
                crate::remote_log!(warn, conn = self.conn, remote = %self.remote, limit, "closing: the node's buffer for unfinished messages is full");
                self.close(
                    CloseCause::UnfinishedMessage,
                    ctx,
                    CloseCode::Size,
                    format!("the node holds its limit of {limit} bytes of unfinished messages (max_unfinished_bytes); send whole messages"),
                );
            }
            Err(e) => {
                crate::remote_log!(info, conn = self.conn, remote = %self.remote, error = %e, "closing: websocket protocol error");
                self.close(
                    CloseCause::SocketError,
                    ctx,
                    CloseCode::Protocol,
                    format!("websocket protocol error: {e}"),
                );
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        tracing::debug!(conn = self.conn, remote = %self.remote, "socket closed by the peer");
        ctx.stop();
    }
}

impl Handler<WriterEnded> for ClientSession {
    type Result = ();
    fn handle(&mut self, msg: WriterEnded, ctx: &mut Self::Context) {
        if msg.0 == WriterEnd::Stalled {
            self.cause.get_or_insert(CloseCause::WriteStalled);
            let secs = self.services.config.limits.write_timeout_secs;
            tracing::warn!(conn = self.conn, remote = %self.remote, secs, "closing: writes made no progress (peer frozen)");
        }
        // After our close frame the socket still drains; the frame stream
        // ends when it is done.
        if !(self.closing && msg.0 == WriterEnd::Done) {
            ctx.stop();
        }
    }
}

impl Handler<CloseConnection> for ClientSession {
    type Result = ();
    fn handle(&mut self, msg: CloseConnection, ctx: &mut Self::Context) {
        self.close_with(msg.cause, ctx, msg.code, msg.reason, msg.after_pending);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_ids_cannot_be_verified_ids() {
        // `~` is in neither address alphabet, so no verified id can equal it.
        let id = anonymous_id();
        assert!(id.starts_with('~'));
        assert_eq!(crate::crypto::address_kind(&id), None);
    }
}

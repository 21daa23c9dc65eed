//! `PeerConnection`: one outbound websocket to a server we dial, run under
//! `actix::Supervisor`. The registry keeps its `Addr` (so the supervisor
//! keeps restarting it); the hub holds its `ConnHandle` once the handshake
//! is done.
//!
//! On start it waits out its backoff, dials (`transport::dial`), sends our
//! `ping` (with our peer record signed afresh for it), and checks the `pong`: the responder must list a verifiable
//! peer record of its own client id. Then every frame goes to the hub as
//! `FrameReceived`, with the credit it took (`flow::Gated`): the link is
//! slowed down when this node is busy, never closed for volume. A writer
//! task moves the outbox to the socket. Closing or failing stops the
//! actor; the supervisor's restart is the reconnect, after an exponential,
//! jittered, capped backoff kept in the actor and reset only after a
//! verified `pong`. A connection found to be to ourselves gives up.

use std::collections::VecDeque;
use std::time::Duration;

use actix::prelude::*;
use actix_http::ws::CloseCode;
use rand::Rng;

use crate::actors::Services;
use crate::backoff::backoff_delay;
use crate::endpoint::Endpoint;
use crate::flow::{self, Credit, Gated, Outbox, WriterEnd};
use crate::messages::connection::{CloseConnection, ConnHandle};
use crate::messages::crypto::VerifyServers;
use crate::messages::hub::{
    next_conn_id, ConnId, ConnectionClosed, ConnectionIdentified, FrameReceived,
};
use crate::messages::registry::{DialGaveUp, GaveUpReason};
use crate::messages::wire::{new_message_id, Extensions, Ping, Pong, WireLimits, WireMessage};
use crate::metrics::{CloseCause, DialFailure};
use crate::transport::{self, Incoming, WsItem};

#[derive(Debug, PartialEq, Eq)]
enum State {
    Idle,
    Connecting,
    AwaitingPong(String),
    Identified,
    GaveUp,
}

/// The writer task of run `conn` ended (the socket is gone or stalled).
/// It can arrive after that run's supervisor restart: a later run ignores
/// it (it stopped the next dial at once, counting a failure twice).
#[derive(Message)]
#[rtype(result = "()")]
struct WriterEnded(ConnId, WriterEnd);

pub struct PeerConnection {
    target: Endpoint,
    services: Services,
    /// Told when this dialer stops trying (the registry decides what next).
    registry: Option<Recipient<DialGaveUp>>,
    conn: ConnId,
    outbox: Outbox,
    state: State,
    failures: u32,
    /// Frames that came while the pong was being verified, each holding
    /// its credit (so the window bounds them).
    early: VecDeque<(WireMessage, Credit)>,
    /// This run's dial gave a socket (its end is counted as a close).
    socket_up: bool,
    /// Why this run's socket ends, once known.
    cause: Option<CloseCause>,
    /// The pong is being verified.
    verifying: bool,
    /// The socket ended while the pong was being verified: stop once that
    /// is done. The server may answer our ping and close at once (it keeps
    /// another link to us, as duplicates are resolved); its signed pong
    /// still proves its record, which makes its inbound link to us a server
    /// link. Stopping at the close dropped that proof, and the two nodes
    /// stayed one-sided (seen in CI: one listed the other only as a client).
    ended: bool,
}

impl PeerConnection {
    pub fn new(
        target: Endpoint,
        services: Services,
        registry: Option<Recipient<DialGaveUp>>,
    ) -> Self {
        let outbox = Self::new_outbox(&services);
        PeerConnection {
            target,
            services,
            registry,
            conn: next_conn_id(),
            outbox,
            state: State::Idle,
            failures: 0,
            early: VecDeque::new(),
            verifying: false,
            ended: false,
            socket_up: false,
            cause: None,
        }
    }

    fn new_outbox(services: &Services) -> Outbox {
        let outbox = services.outbox();
        outbox.never_pause_reads();
        outbox
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        self.state = State::Connecting;
        let timeout = Duration::from_millis(self.services.config.peering.connect_timeout_ms);
        let max_frame = self.services.config.limits.max_frame_bytes;
        let target = self.target.clone();
        self.services.metrics.dials.inc();
        ctx.spawn(
            async move { transport::dial(&target, timeout, max_frame).await }
                .into_actor(self)
                .map(|res, act, ctx| match res {
                    Ok((sink, stream)) => {
                        act.socket_up = true;
                        let (me, conn) = (ctx.address(), act.conn);
                        flow::spawn_writer(act.outbox.clone(), sink, move |end| {
                            me.do_send(WriterEnded(conn, end))
                        });
                        ctx.add_stream(Gated::new(
                            stream,
                            act.services.window(),
                            act.outbox.clone(),
                            transport::frame_cost,
                        ));
                        act.send_ping(ctx);
                    }
                    Err(e) => {
                        act.services.metrics.dial_failures.inc(DialFailure::Connect);
                        if e.certificate_refused() {
                            // Configuration, not churn: say it louder.
                            tracing::warn!(peer = %act.target, error = %e, failures = act.failures + 1, "dial failed: the server's TLS certificate is not trusted (--tls-ca-file?)");
                        } else {
                            // Endpoints come from what peers list (pongs,
                            // the DHT, the LAN): junk listings made ~1,400
                            // lines in 6 s outside the budget (attack bench,
                            // fake_servers). A configured peer's failures
                            // still show within it, and drops are counted.
                            crate::remote_log!(info, peer = %act.target, error = %e, failures = act.failures + 1, "dial failed");
                        }
                        ctx.stop();
                    }
                }),
        );
        // A dial or handshake that hangs counts as failed.
        ctx.run_later(timeout * 2, |act, ctx| {
            if act.state != State::Identified && act.state != State::GaveUp {
                let failure = if act.socket_up {
                    DialFailure::Handshake
                } else {
                    DialFailure::Connect
                };
                act.services.metrics.dial_failures.inc(failure);
                act.cause.get_or_insert(CloseCause::NoHandshake);
                tracing::info!(peer = %act.target, "handshake timed out");
                ctx.stop();
            }
        });
    }

    fn send_ping(&mut self, ctx: &mut Context<Self>) {
        ctx.spawn(
            self.services
                .fresh_self_peer()
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
                    // The outbox is empty: a ping always fits.
                    let _ = act.outbox.push(ping.to_text().into());
                }),
        );
    }

    fn give_up(&mut self, reason: GaveUpReason) {
        self.state = State::GaveUp;
        if let Some(r) = &self.registry {
            r.do_send(DialGaveUp {
                endpoint: self.target.clone(),
                reason,
            });
        }
    }

    fn on_pong(&mut self, pong: Pong, ctx: &mut Context<Self>) {
        if pong.client_id == *self.services.client_id {
            tracing::info!(peer = %self.target, "this endpoint is this node; not dialing it again");
            self.give_up(GaveUpReason::Myself);
            self.cause.get_or_insert(CloseCause::Myself);
            self.outbox
                .close(CloseCode::Normal, "this is the same node");
            return ctx.stop();
        }
        let crypto = self.services.crypto.clone();
        let topic = self.services.config.topic.clone();
        let claimed = pong.client_id.clone();
        let reconcile = Extensions::reconciles(&pong.ext);
        let crdt_lists = Extensions::signs_crdt_lists(&pong.ext);
        // Its own record, and at most a pong's worth of others: a dialed
        // peer's junk list costs bounded signature checks.
        let cap = self.services.config.limits.pong_max_servers;
        let (own, others): (Vec<_>, Vec<_>) = pong.servers.into_iter().partition(|v| {
            v.get("address")
                .and_then(|a| a.as_str())
                .is_some_and(|a| a.ends_with(claimed.as_str()))
        });
        let servers: Vec<_> = own
            .into_iter()
            .take(1)
            .chain(others.into_iter().take(cap))
            .collect();
        self.verifying = true;
        ctx.spawn(
            async move { crypto.send(VerifyServers { servers, topic }).await }
                .into_actor(self)
                .map(move |res, act, ctx| {
                    act.verifying = false;
                    let servers = res.unwrap_or_default();
                    let Some(own) = servers.iter().find(|p| p.client_id() == claimed).cloned() else {
                        tracing::warn!(peer = %act.target, client = %claimed, "closing: pong has no verifiable record of its sender");
                        act.services.metrics.dial_failures.inc(DialFailure::Handshake);
                        act.cause.get_or_insert(CloseCause::NoHandshake);
                        act.outbox.close(CloseCode::Policy, "pong without a verifiable record of its sender");
                        return ctx.stop();
                    };
                    act.failures = 0;
                    act.state = State::Identified;
                    tracing::info!(peer = %act.target, client = %claimed, "connected to server");
                    act.services.hub.do_send(ConnectionIdentified {
                        conn: act.conn,
                        handle: ConnHandle::of(&ctx.address(), act.outbox.clone()),
                        client_id: claimed,
                        is_server: true,
                        peer: Some(own),
                        outbound: true,
                        dialed: Some(act.target.clone()),
                        reconcile,
                        crdt_lists,
                        wants_missing: false,
                        ping_id: None,
                        servers,
                        via: Default::default(),
                    });
                    for (msg, credit) in std::mem::take(&mut act.early) {
                        act.services.hub.do_send(FrameReceived { conn: act.conn, msg, credit });
                    }
                    if act.ended {
                        ctx.stop();
                    }
                }),
        );
    }

    /// The socket ended: stop, unless the pong is still being verified.
    fn socket_ended(&mut self, ctx: &mut Context<Self>) {
        if self.verifying {
            self.ended = true;
        } else {
            ctx.stop();
        }
    }

    fn on_text(&mut self, text: &str, credit: Credit, ctx: &mut Context<Self>) {
        let msg = match WireMessage::parse_limited(
            text,
            WireLimits::from(&self.services.config.limits),
        ) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(peer = %self.target, error = %e, "ignored a frame from a server");
                return;
            }
        };
        match (&self.state, msg) {
            (State::AwaitingPong(id), WireMessage::Pong(p)) if *id == p.id => self.on_pong(p, ctx),
            (State::Identified, msg) => self.services.hub.do_send(FrameReceived {
                conn: self.conn,
                msg,
                credit,
            }),
            // The server may send right after its pong (e.g. a reconcile
            // step) while we still verify that pong: keep it for after.
            (State::AwaitingPong(_), other) => self.early.push_back((other, credit)),
            (_, other) => {
                tracing::debug!(peer = %self.target, kind = other.kind(), "ignored a frame before the pong");
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
            tracing::debug!(peer = %self.target, delay_ms = delay.as_millis() as u64, "redialing after backoff");
        }
        ctx.run_later(delay, |act, ctx| act.connect(ctx));
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        // A close frame already queued still goes out; else the writer ends.
        if self.outbox.close_reason().is_none() {
            self.outbox.shut();
        }
        if self.state == State::Identified {
            self.services
                .hub
                .do_send(ConnectionClosed { conn: self.conn });
        }
        if self.socket_up {
            let cause = self.cause.unwrap_or(CloseCause::PeerClosed);
            self.services.metrics.connections_closed.inc(cause);
        }
    }
}

impl Supervised for PeerConnection {
    fn restarting(&mut self, _: &mut Self::Context) {
        if self.state == State::GaveUp {
            return;
        }
        // A connection that was up redials soon; a failing one backs off more.
        // `failures` counts failed runs in a row: after `give_up_after` of
        // them (not one more) the endpoint goes back to the registry.
        self.failures = if self.state == State::Identified {
            1
        } else {
            self.failures + 1
        };
        self.outbox = Self::new_outbox(&self.services);
        self.early.clear();
        self.verifying = false;
        self.ended = false;
        self.socket_up = false;
        self.cause = None;
        self.conn = next_conn_id();
        self.state = State::Idle;
        let limit = self.services.config.peering.give_up_after;
        if self.registry.is_some() && limit > 0 && self.failures >= limit {
            // Caused by what peers listed, as "dial failed" is.
            crate::remote_log!(info, peer = %self.target, failures = limit, "giving this endpoint back to the registry");
            self.give_up(GaveUpReason::DialsFailed(limit));
        }
    }
}

impl StreamHandler<(WsItem, Credit)> for PeerConnection {
    fn handle(&mut self, (item, credit): (WsItem, Credit), ctx: &mut Self::Context) {
        match Incoming::from(item) {
            Incoming::Text(text) => self.on_text(&text, credit, ctx),
            Incoming::Ping(b) => self.outbox.push_pong(b),
            Incoming::Close(reason) => {
                tracing::info!(peer = %self.target, reason = ?reason, "server closed the connection");
                self.socket_ended(ctx);
            }
            Incoming::Ignored(what) => {
                tracing::debug!(peer = %self.target, "ignored {what}");
            }
            Incoming::Error(e) => {
                self.cause.get_or_insert(CloseCause::SocketError);
                tracing::info!(peer = %self.target, error = %e, "connection error");
                self.socket_ended(ctx);
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        self.socket_ended(ctx);
    }
}

impl Handler<WriterEnded> for PeerConnection {
    type Result = ();
    fn handle(&mut self, msg: WriterEnded, ctx: &mut Self::Context) {
        if msg.0 != self.conn {
            return;
        }
        if msg.1 == WriterEnd::Stalled {
            self.cause.get_or_insert(CloseCause::WriteStalled);
            let secs = self.services.config.limits.write_timeout_secs;
            tracing::warn!(peer = %self.target, secs, "closing: writes made no progress (server frozen)");
        }
        ctx.stop();
    }
}

impl Handler<CloseConnection> for PeerConnection {
    type Result = ();
    fn handle(&mut self, msg: CloseConnection, ctx: &mut Self::Context) {
        tracing::info!(peer = %self.target, reason = %msg.reason, "giving up on this peer");
        self.outbox.close(msg.code, &msg.reason);
        self.cause.get_or_insert(msg.cause);
        if self.state == State::Identified {
            self.services
                .hub
                .do_send(ConnectionClosed { conn: self.conn });
        }
        self.state = State::GaveUp;
        ctx.stop();
    }
}

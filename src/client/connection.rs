//! `ServerConnection`: one outbound websocket (awc) from a client to one
//! server. Started by `ClientCore`, which holds its `Addr` once identified.
//!
//! On start it dials (`transport::dial`, shared with the server's
//! `PeerConnection`; a writer task owns the socket's sink) and sends
//! a client `ping` (`isServer: false`, a fresh signed peer record, `to:
//! [own id]`), then waits for the `pong`: the pong must list a verifiable
//! record whose client id is the pong's `clientId`, the server's identity.
//! Until then nothing else is sent or passed on. Then every frame goes to
//! the core as `ServerFrame`. Handles `SendText` and `CloseServer`.
//!
//! A failed dial, a handshake past its deadline, a close or a socket error
//! stops it, reported once as `ServerClosed` from `stopped()`. It never
//! redials: the core decides what to dial next, with backoff.
//!
//! Given a Hyperswarm link (`ServerConnection::over`) instead of an
//! endpoint, it does the same over that link's messages, without dialing.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_http::ws::{CloseCode, Frame};
use actix_ws::AggregatedMessage;
use futures_util::StreamExt;

use crate::client::book::Endpoint;
use crate::client::core::ClientCore;
use crate::client::messages::{CloseServer, SendText, ServerClosed, ServerFrame, ServerIdentified};
use crate::crypto::NodeKey;
use crate::flow::{self, Outbox, OutboxLimits, WriterEnd};
use crate::messages::hub::ConnId;
use crate::messages::wire::{new_message_id, Extensions, Ping, Pong, WireMessage};
use crate::peer::Peer;
use crate::record::now_ms;
use crate::transport::{self, Incoming, WsItem};

/// Largest frame accepted from a server.
pub const MAX_FRAME_BYTES: usize = 4 << 20;

/// Host and port a client's ping record carries: Tool Db clients send the
/// library defaults although they listen nowhere (tests/interop/README.md).
const CLIENT_PEER_HOST: &str = "127.0.0.1";
const CLIENT_PEER_PORT: u16 = 8080;

/// A write to a server with no progress for this long ends the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The writer task ended (the socket is gone or stalled).
#[derive(Message)]
#[rtype(result = "()")]
struct WriterEnded(WriterEnd);

#[derive(Debug, PartialEq, Eq)]
enum State {
    Connecting,
    AwaitingPong(String),
    Identified,
}

pub struct ServerConnection {
    conn: ConnId,
    endpoint: Endpoint,
    core: Addr<ClientCore>,
    key: Arc<NodeKey>,
    topic: String,
    handshake_timeout: Duration,
    /// What this process asks is bounded by what its user asks; the
    /// outbox only moves it to the socket.
    outbox: Outbox,
    state: State,
    /// A Hyperswarm connection to use instead of dialing `endpoint`.
    link: Option<crate::hyperswarm::Link>,
}

impl ServerConnection {
    pub fn new(
        conn: ConnId,
        endpoint: Endpoint,
        core: Addr<ClientCore>,
        key: Arc<NodeKey>,
        topic: String,
        handshake_timeout: Duration,
    ) -> Self {
        ServerConnection {
            conn,
            endpoint,
            core,
            key,
            topic,
            handshake_timeout,
            outbox: Outbox::new(OutboxLimits {
                high_water: usize::MAX,
                limit: usize::MAX,
                write_timeout: WRITE_TIMEOUT,
            }),
            state: State::Connecting,
            link: None,
        }
    }

    /// Speaks over a Hyperswarm link instead of dialing.
    pub fn over(mut self, link: crate::hyperswarm::Link) -> Self {
        self.link = Some(link);
        self
    }

    fn write(&mut self, text: String) {
        // Refused only once closing.
        let _ = self.outbox.push(text.into());
    }

    fn send_ping(&mut self) {
        let id = new_message_id();
        let own = self.key.client_id().to_owned();
        let peer = Peer::sign(
            &self.key,
            &self.topic,
            CLIENT_PEER_HOST,
            CLIENT_PEER_PORT,
            now_ms(),
        );
        let ping = WireMessage::Ping(Ping {
            id: id.clone(),
            to: vec![own.clone()],
            client_id: own,
            is_server: false,
            peer: Some(serde_json::to_value(peer).expect("peer serialises")),
            // Ask our servers to answer a get miss at once; Tool Db
            // servers ignore the field, and we wait out the timeout there.
            ext: Some(Extensions::client()),
        });
        self.state = State::AwaitingPong(id);
        self.write(ping.to_text());
    }

    fn on_pong(&mut self, pong: Pong, ctx: &mut Context<Self>) {
        let servers = verified_servers(&pong.servers, &self.topic);
        let Some(own) = servers
            .iter()
            .find(|p| p.client_id() == pong.client_id)
            .cloned()
        else {
            tracing::warn!(server = %self.endpoint, client = %pong.client_id, "closing: the pong has no verifiable record of its sender");
            return self.close("pong without a verifiable record of its sender", ctx);
        };
        self.state = State::Identified;
        tracing::debug!(server = %self.endpoint, address = %own.address, "connected");
        self.core.do_send(ServerIdentified {
            conn: self.conn,
            handle: ctx.address(),
            peer: own,
            servers,
        });
    }

    fn on_text(&mut self, text: &str, ctx: &mut Context<Self>) {
        let msg = match WireMessage::parse(text) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(server = %self.endpoint, error = %e, "ignored a frame");
                return;
            }
        };
        match (&self.state, msg) {
            (State::AwaitingPong(id), WireMessage::Pong(p)) if *id == p.id => self.on_pong(p, ctx),
            (State::Identified, msg) => self.core.do_send(ServerFrame {
                conn: self.conn,
                msg,
            }),
            (_, other) => {
                tracing::debug!(server = %self.endpoint, kind = other.kind(), "ignored a frame before the pong")
            }
        }
    }

    fn close(&mut self, reason: &str, ctx: &mut Context<Self>) {
        self.outbox.close(CloseCode::Normal, reason);
        ctx.stop();
    }
}

/// The listed peer records that are of our topic and whose signature
/// verifies; the others are dropped (and logged).
pub fn verified_servers(servers: &[serde_json::Value], topic: &str) -> Vec<Peer> {
    servers
        .iter()
        .filter_map(|v| match Peer::from_value(v) {
            Ok(p) if p.topic != topic => {
                tracing::debug!(address = %p.address, topic = %p.topic, "dropped a listed server of another topic");
                None
            }
            Ok(p) => match p.verify_signature() {
                Ok(()) => Some(p),
                Err(e) => {
                    tracing::warn!(address = %p.address, error = %e, "dropped a listed server whose record does not verify");
                    None
                }
            },
            Err(e) => {
                tracing::debug!(error = %e, "dropped a malformed listed server");
                None
            }
        })
        .collect()
}

impl Actor for ServerConnection {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(link) = self.link.take() {
            let me = ctx.address();
            let sink = crate::hyperswarm::sink(link.outbound);
            flow::spawn_writer(self.outbox.clone(), sink, move |end| {
                me.do_send(WriterEnded(end))
            });
            ctx.add_stream(crate::hyperswarm::frames(link.inbound).map(|m| {
                m.map(|m| match m {
                    AggregatedMessage::Text(t) => Frame::Text(t.into_bytes()),
                    AggregatedMessage::Binary(b) => Frame::Binary(b),
                    AggregatedMessage::Ping(b) => Frame::Ping(b),
                    AggregatedMessage::Pong(b) => Frame::Pong(b),
                    AggregatedMessage::Close(r) => Frame::Close(r),
                })
            }));
            self.send_ping();
        } else {
            self.dial(ctx);
        }
        // A dial or handshake that hangs counts as failed.
        ctx.run_later(self.handshake_timeout, |act, ctx| {
            if act.state != State::Identified {
                tracing::debug!(server = %act.endpoint, "handshake timed out");
                act.close("handshake timed out", ctx);
            }
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        // A close frame already queued still goes out; else the writer ends.
        if self.outbox.close_reason().is_none() {
            self.outbox.shut();
        }
        self.core.do_send(ServerClosed {
            conn: self.conn,
            identified: self.state == State::Identified,
        });
    }
}

impl ServerConnection {
    fn dial(&mut self, ctx: &mut Context<Self>) {
        let endpoint = self.endpoint.clone();
        let timeout = self.handshake_timeout;
        let fut = async move { transport::dial(&endpoint, timeout, MAX_FRAME_BYTES).await };
        ctx.spawn(fut.into_actor(self).map(|res, act, ctx| match res {
            Ok((sink, stream)) => {
                let me = ctx.address();
                flow::spawn_writer(act.outbox.clone(), sink, move |end| {
                    me.do_send(WriterEnded(end))
                });
                ctx.add_stream(stream);
                act.send_ping();
            }
            Err(e) if e.certificate_refused() => {
                tracing::warn!(server = %act.endpoint, error = %e, "dial failed: the server's TLS certificate is not trusted (--tls-ca-file?)");
                ctx.stop();
            }
            Err(e) => {
                tracing::debug!(server = %act.endpoint, error = %e, "dial failed");
                ctx.stop();
            }
        }));
    }
}

impl StreamHandler<WsItem> for ServerConnection {
    fn handle(&mut self, item: WsItem, ctx: &mut Self::Context) {
        match Incoming::from(item) {
            Incoming::Text(text) => self.on_text(&text, ctx),
            Incoming::Ping(b) => self.outbox.push_pong(b),
            Incoming::Close(reason) => {
                tracing::info!(server = %self.endpoint, reason = ?reason, "server closed the connection");
                ctx.stop();
            }
            Incoming::Ignored(what) => tracing::debug!(server = %self.endpoint, "ignored {what}"),
            Incoming::Error(e) => {
                tracing::info!(server = %self.endpoint, error = %e, "connection error");
                ctx.stop();
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Handler<WriterEnded> for ServerConnection {
    type Result = ();
    fn handle(&mut self, msg: WriterEnded, ctx: &mut Self::Context) {
        if msg.0 == WriterEnd::Stalled {
            tracing::info!(server = %self.endpoint, "closing: writes made no progress (server frozen)");
        }
        ctx.stop();
    }
}

impl Handler<SendText> for ServerConnection {
    type Result = ();
    fn handle(&mut self, msg: SendText, _: &mut Self::Context) {
        self.write(msg.text);
    }
}

impl Handler<CloseServer> for ServerConnection {
    type Result = ();
    fn handle(&mut self, msg: CloseServer, ctx: &mut Self::Context) {
        self.close(&msg.reason, ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::KeyScheme;

    #[test]
    fn listed_servers_that_fail_verification_are_dropped() {
        let good = Peer::sign(&NodeKey::generate(KeyScheme::P256), "t", "h", 1, 5);
        let mut moved = Peer::sign(&NodeKey::generate(KeyScheme::Secp256k1), "t", "h", 2, 5);
        moved.port = 3;
        let other_topic = Peer::sign(&NodeKey::generate(KeyScheme::Secp256k1), "u", "h", 4, 5);
        let listed = vec![
            serde_json::to_value(&good).unwrap(),
            serde_json::to_value(&moved).unwrap(),
            serde_json::to_value(&other_topic).unwrap(),
            serde_json::json!({"topic": "t"}),
        ];
        assert_eq!(verified_servers(&listed, "t"), vec![good]);
    }
}

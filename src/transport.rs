//! The outbound websocket dialer shared by `PeerConnection` (server to
//! server) and the client's `ServerConnection`: awc dial with a deadline
//! and a frame limit, split into the sink a `flow::spawn_writer` task owns
//! and the frame stream the actor reads through `flow::Gated`. (awc stays
//! inside this file.)

use std::time::Duration;

use actix_codec::Framed;
use actix_http::ws::{self, CloseReason, Frame, ProtocolError};
use bytestring::ByteString;
use futures_util::stream::{SplitSink, SplitStream, StreamExt};

use crate::endpoint::Endpoint;

pub type WsSink = SplitSink<Framed<awc::BoxedSocket, ws::Codec>, ws::Message>;
pub type WsStream = SplitStream<Framed<awc::BoxedSocket, ws::Codec>>;
pub type WsItem = Result<Frame, ProtocolError>;

/// Why a dial failed.
#[derive(Debug, thiserror::Error)]
#[error("dialing {url}: {reason}")]
pub struct DialError {
    pub url: String,
    pub reason: String,
}

/// Dials `endpoint`'s websocket; fails after `timeout`.
pub async fn dial(
    endpoint: &Endpoint,
    timeout: Duration,
    max_frame_bytes: usize,
) -> Result<(WsSink, WsStream), DialError> {
    let url = endpoint.url();
    let connect = awc::Client::builder()
        .timeout(timeout)
        .finish()
        .ws(url.as_str())
        .max_frame_size(max_frame_bytes)
        .connect();
    match tokio::time::timeout(timeout, connect).await {
        Ok(Ok((_resp, framed))) => Ok(framed.split()),
        Ok(Err(e)) => Err(DialError {
            url,
            reason: e.to_string(),
        }),
        Err(_) => Err(DialError {
            url,
            reason: format!("no answer within {} ms", timeout.as_millis()),
        }),
    }
}

/// One frame from a dialed server, as the actors act on it.
pub enum Incoming {
    Text(ByteString),
    /// A websocket ping to answer with this payload.
    Ping(bytes::Bytes),
    Close(Option<CloseReason>),
    /// Not for us (pong, binary, continuation, bad UTF-8); logged.
    Ignored(&'static str),
    Error(ProtocolError),
}

impl From<WsItem> for Incoming {
    fn from(item: WsItem) -> Incoming {
        match item {
            Ok(Frame::Text(b)) => match ByteString::try_from(b) {
                Ok(t) => Incoming::Text(t),
                Err(_) => Incoming::Ignored("a non-UTF-8 text frame"),
            },
            Ok(Frame::Ping(b)) => Incoming::Ping(b),
            Ok(Frame::Close(r)) => Incoming::Close(r),
            Ok(Frame::Pong(_)) => Incoming::Ignored("a pong"),
            Ok(Frame::Binary(_)) => Incoming::Ignored("a binary frame"),
            // Tool Db servers (Node.js `ws`) do not fragment messages.
            Ok(Frame::Continuation(_)) => Incoming::Ignored("a fragmented message"),
            Err(e) => Incoming::Error(e),
        }
    }
}

/// What a frame costs of the reading connection's window: its payload.
pub fn frame_cost(item: &WsItem) -> usize {
    match item {
        Ok(Frame::Text(b)) | Ok(Frame::Binary(b)) => b.len(),
        _ => 0,
    }
}

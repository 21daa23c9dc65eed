//! Messages to a connection actor (`ClientSession` or `PeerConnection`).

use std::sync::Arc;

use actix::prelude::*;

/// Send one text frame. Lost if the connection is already gone, which is
/// fine: its client will re-ask after reconnecting.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct SendFrame {
    pub text: Arc<str>,
}

/// Close the socket with a close frame carrying `reason`, then stop.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct CloseConnection {
    pub reason: String,
}

/// How the hub reaches one connection, whatever its actor type.
#[derive(Clone, Debug)]
pub struct ConnHandle {
    pub send: Recipient<SendFrame>,
    pub close: Recipient<CloseConnection>,
}

impl ConnHandle {
    pub fn of<A>(addr: &Addr<A>) -> ConnHandle
    where
        A: Actor + Handler<SendFrame> + Handler<CloseConnection>,
        A::Context:
            actix::dev::ToEnvelope<A, SendFrame> + actix::dev::ToEnvelope<A, CloseConnection>,
    {
        ConnHandle {
            send: addr.clone().recipient(),
            close: addr.clone().recipient(),
        }
    }
}

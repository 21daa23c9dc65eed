//! Messages to a connection actor (`ClientSession` or `PeerConnection`),
//! and the handle the hub keeps of each.

use actix::prelude::*;
use actix_http::ws::CloseCode;

use crate::flow::Outbox;
use crate::metrics::CloseCause;

/// Close the socket with a close frame carrying `code` and `reason`, then
/// stop.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct CloseConnection {
    pub code: CloseCode,
    pub reason: String,
    /// What the close is counted as (`tooldb_connections_closed_total`).
    pub cause: CloseCause,
    /// Send what is already queued first (see `Outbox::close_after_pending`).
    pub after_pending: bool,
}

impl CloseConnection {
    /// Hostile or unwanted input (1008).
    pub fn policy(reason: impl Into<String>) -> Self {
        CloseConnection {
            code: CloseCode::Policy,
            reason: reason.into(),
            cause: CloseCause::BadInput,
            after_pending: false,
        }
    }

    /// The node is stopping (1001).
    pub fn going_away(reason: impl Into<String>) -> Self {
        CloseConnection {
            code: CloseCode::Away,
            reason: reason.into(),
            cause: CloseCause::Shutdown,
            after_pending: false,
        }
    }

    /// Counted as `cause`.
    pub fn because(mut self, cause: CloseCause) -> Self {
        self.cause = cause;
        self
    }

    /// The frames queued before this close (a pong) still go out.
    pub fn after_pending(mut self) -> Self {
        self.after_pending = true;
        self
    }
}

/// How the hub reaches one connection, whatever its actor type: frames go
/// into its byte-bounded outbox, a close through its actor.
#[derive(Clone, Debug)]
pub struct ConnHandle {
    pub outbox: Outbox,
    pub close: Recipient<CloseConnection>,
}

impl ConnHandle {
    pub fn of<A>(addr: &Addr<A>, outbox: Outbox) -> ConnHandle
    where
        A: Actor + Handler<CloseConnection>,
        A::Context: actix::dev::ToEnvelope<A, CloseConnection>,
    {
        ConnHandle {
            outbox,
            close: addr.clone().recipient(),
        }
    }
}

//! What a `TrackerChannel` emits: the servers offered on a tracker.

use actix::prelude::*;

use crate::endpoint::Endpoint;

/// Server endpoints named by offers a tracker forwarded (checked by
/// `tracker::endpoint_of_offer`, de-duplicated and rate-limited by the
/// channel). Only candidates: the receiver (the client core) dials them
/// and verifies each by its signed ping, like any endpoint.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
#[rtype(result = "()")]
pub struct ServersOffered {
    /// The tracker's URL (for logs).
    pub tracker: String,
    pub endpoints: Vec<Endpoint>,
}

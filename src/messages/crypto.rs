//! Messages to the `Crypto` pool.

use actix::prelude::*;
use serde_json::Value;

use crate::peer::{Peer, PeerError};
use crate::record::{Record, RecordError};

/// Verify a record's stateless checks (all but the frozen-key rule).
#[derive(Message, Debug)]
#[rtype(result = "Result<Record, RecordError>")]
pub struct VerifyRecord {
    pub record: Record,
    pub pow: u32,
    /// A CRDT change list must hash to `h` (records from clients).
    pub crdt_hash: bool,
}

/// Verify the peer record a `ping` presents: our topic, fresh, signed.
#[derive(Message, Debug)]
#[rtype(result = "Result<Peer, PeerError>")]
pub struct VerifyPing {
    pub peer: Option<Value>,
    pub topic: String,
    pub window_ms: u64,
}

/// Verify the server records a `pong` lists; bad ones are dropped.
#[derive(Message, Debug)]
#[rtype(result = "Vec<Peer>")]
pub struct VerifyServers {
    pub servers: Vec<Value>,
    pub topic: String,
}

/// Sign our own peer record with the node key, timestamped now.
#[derive(Message, Debug)]
#[rtype(result = "Peer")]
pub struct SignPeer {
    pub topic: String,
    pub host: String,
    pub port: u16,
    /// We serve TLS (the record's `ssl`).
    pub ssl: bool,
}

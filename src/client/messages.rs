//! Messages of the client's actors: to `ClientCore` (from the `Client`
//! handle and from its connections) and to `ServerConnection`.

use std::time::Duration;

use actix::prelude::*;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::client::connection::ServerConnection;
use crate::messages::hub::ConnId;
use crate::messages::wire::WireMessage;
use crate::peer::Peer;
use crate::record::Record;

// ---------------------------------------------------------------- to ServerConnection

/// Send one text frame on the socket.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct SendText {
    pub text: String,
}

/// Close the socket with a reason; the connection then stops.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct CloseServer {
    pub reason: String,
}

// ---------------------------------------------------------------- from ServerConnection

/// A connection's pong verified: `peer` is the server's own record (its
/// client id is the pong's), `servers` every listed record that verified.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ServerIdentified {
    pub conn: ConnId,
    pub handle: Addr<ServerConnection>,
    pub peer: Peer,
    pub servers: Vec<Peer>,
}

/// A frame from an identified server.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ServerFrame {
    pub conn: ConnId,
    pub msg: WireMessage,
}

/// A connection ended (or never completed its handshake).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ServerClosed {
    pub conn: ConnId,
    /// It got as far as a verified pong.
    pub identified: bool,
}

// ---------------------------------------------------------------- from the Client handle

/// Resolve `reply` once at least one server is connected.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct WaitConnected {
    pub reply: oneshot::Sender<()>,
}

/// Send a signed record (`put`, or `crdtPut` for a CRDT) to every
/// connected server; answers how many it went to.
#[derive(Message, Debug)]
#[rtype(result = "usize")]
pub struct Publish {
    pub record: Record,
}

/// What a request asks of the servers.
#[derive(Debug, Clone)]
pub enum RequestKind {
    /// `get`: every connected server; answered by `put`s.
    Get { key: String },
    /// `crdtGet`: every connected server; answered by `crdtPut`s.
    CrdtGet { key: String },
    /// `query`: every connected server; answered by `queryAck`s.
    Query { prefix: String },
    /// `function`: one server; answered by `functionReturn`.
    Function { name: String, args: Value },
}

/// What came back, once every asked server answered or the deadline passed.
#[derive(Debug, Clone, Default)]
pub struct RequestOutcome {
    /// Servers asked.
    pub asked: usize,
    /// Verified records (get, crdtGet), one per answering server.
    pub records: Vec<Record>,
    /// Keys (query): the union of every answer.
    pub keys: Vec<String>,
    /// `(code, return)` of a function call.
    pub function: Option<(String, Value)>,
}

/// Ask the connected servers; the outcome goes to `reply`.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Request {
    pub kind: RequestKind,
    pub timeout: Duration,
    pub reply: oneshot::Sender<RequestOutcome>,
}

/// Follow a key: every verified record that wins over the last one sent
/// goes to `updates`.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Subscribe {
    pub key: String,
    pub updates: mpsc::Sender<Record>,
}

/// Servers that answered with forged records.
#[derive(Message, Debug)]
#[rtype(result = "Vec<BadServer>")]
pub struct GetBadServers;

/// The servers connected now.
#[derive(Message, Debug)]
#[rtype(result = "Vec<Peer>")]
pub struct GetConnectedServers;

/// Close every connection and stop.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Shutdown;

/// A server caught sending a record that failed verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BadServer {
    /// The address of its verified peer record.
    pub address: String,
    pub endpoint: String,
    /// The key of the forged record.
    pub key: String,
    pub reason: String,
}

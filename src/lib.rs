//! tooldb-node: a Tool Db-compatible server.
pub mod acme;
pub mod actors;
pub mod admission;
pub mod backoff;
pub mod bounded;
pub mod client;
pub mod config;
pub mod crdt;
pub mod crypto;
pub mod dht;
pub mod durability;
pub mod endpoint;
pub mod flow;
#[doc(hidden)]
pub mod fuzzing;
pub mod host;
pub mod hyperswarm;
pub mod lan;
pub mod log_limit;
pub mod messages;
pub mod metrics;
#[doc(hidden)]
pub mod netns;
pub mod peer;
pub mod reconcile;
pub mod record;
pub mod registry;
pub mod server;
pub mod status;
pub mod tls;
pub mod tracker;
pub mod transport;
pub mod websocket;

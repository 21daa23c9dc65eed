//! Typed messages: the wire protocol (`wire`), and actor messages grouped by
//! the actor that receives them.
pub mod connection;
pub mod crypto;
pub mod dht;
pub mod hub;
pub mod registry;
pub mod storage;
pub mod tracker;
pub mod wire;

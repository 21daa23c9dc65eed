//! tooldb-node: a Tool Db-compatible server.
pub mod crypto;
